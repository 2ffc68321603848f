"""GroupNorm + SiLU on the shapes the SD-family networks normalise (channels_last, fp16), four ways: PyTorch eager,
the library's per-group Triton kernels, its row kernels (``fused_norm.group_norm_rows``, which channels-last inputs
with narrow groups take) and inductor's fusion of the plain ops (what the compiled presets run). Per shape: the median
time of one call inside a CUDA graph (:func:`graph_timed`: as the presets run it, without launch costs), the
bandwidth of the one read and one write a norm needs at least, and each result's largest difference from an fp32
reference.

Why: the H200 profile of the VAE decode spends 48 % of its kernel time in GroupNorm, about six times its memory
traffic at full bandwidth (bench/gpu_results/h200_vae_decode_profile.json); the SD UNet's norms are 18 % of a
ConFiner run under ``max``.

    python bench/norm_probe.py --out $OUT/norms.json        # on the GPU
    python bench/norm_probe.py --device cpu --tiny          # CPU smoke run (eager and inductor only)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from confiner_core.diffusers_backend import fused_norm as FN  # noqa: E402
from confiner_core.outputs import write_atomic  # noqa: E402

GROUPS = 32
# (where, N, C, H, W): the SD VAE decoder 4 frames at a time, the SD UNet at cfg x 16 frames, 512x512
SHAPES = [("vae 512x512", 4, 128, 512, 512), ("vae 512x512 in", 4, 256, 512, 512), ("vae 256x256", 4, 256, 256, 256),
          ("vae 256x256 in", 4, 512, 256, 256), ("vae 128x128", 4, 512, 128, 128), ("vae 64x64", 4, 512, 64, 64),
          ("unet 64x64", 32, 320, 64, 64), ("unet 32x32", 32, 640, 32, 32), ("unet 16x16", 32, 1280, 16, 16),
          ("unet 8x8", 32, 1280, 8, 8)]
# the control expert (16 frames, no cfg) and ModelScope's temporal convolutions' norms over (frames, H, W) at cfg 2,
# as [N, C, frames x H, W]: the same memory as the 5-D tensor
MORE_SHAPES = [("control 64x64", 16, 320, 64, 64), ("ms temporal 64x64", 2, 320, 16 * 64, 64),
               ("ms temporal 32x32", 2, 640, 16 * 32, 32)]
# row-kernel settings the sweep tries: (ROW_TILE, ROW_PROGRAMS, ROW_WARPS, ROW_STAGES, ROW_MIN_TILES) (call R,
# 2026-12-03: tiles of 8192 and 2048 programs lost to 4096 and 1024 on nearly every shape; call T: 4 warps beat 8 on
# 11 of 13 shapes, 3 loop stages beat none; call W, in CUDA graphs: of 1 to 16 tiles a program at least, 16 the
# fastest on the 13 shapes, 1.59 against 1.81 ms with 1)
# call X: most shapes ran fastest with about 350 programs in all, whatever the tiles that gave it (the UNet's
# [32, 320, 64, 64] 0.094 ms with 352 against 0.106 with 704): programs in all, at 8 and 16 tiles at least
SWEEP = ([(4096, 1024, 4, 3, tiles) for tiles in (4, 8, 16, 32, 64)]
         + [(4096, programs, 4, 3, tiles) for programs in (264, 352, 396, 528) for tiles in (8, 16)])
ROW_SETTINGS = ("ROW_TILE", "ROW_PROGRAMS", "ROW_WARPS", "ROW_STAGES", "ROW_MIN_TILES")
# calls of a norm one CUDA graph replays: the benchmark's presets replay every network as a CUDA graph, so a norm's
# cost there is its kernels' GPU time alone; one call timed from the host also counts launching three kernels
# (0.1-0.2 ms, more than a small norm's kernels: call T timed [32, 1280, 8, 8] at 0.18-0.20 ms every way)
GRAPH_CALLS = 10
TINY = [("tiny", 2, 64, 16, 16)]


def probe_parser(deadline: bool = True) -> argparse.ArgumentParser:
    """The arguments the kernel probes share: the device, tiny shapes (CPU smoke run), repeats, a deadline in seconds
    after which shapes are skipped, and the folder the results go to."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--repeats", type=int, default=20)
    if deadline:
        ap.add_argument("--deadline", type=float, default=float("inf"), help="seconds; shapes after it are skipped")
    ap.add_argument("--out", default=None)
    return ap


def probe_header(device: torch.device, dtype: torch.dtype) -> dict:
    """What a probe's results begin with: the device, PyTorch, how each call was timed and the dtype."""
    cuda = device.type == "cuda"
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "timing": f"CUDA graph of {GRAPH_CALLS} calls" if cuda else "one call", "dtype": str(dtype)}


def timed(fn, device, repeats: int) -> float:
    """Median seconds of ``fn`` (CUDA events on a GPU)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def captured(fn, calls: int = 1, pool=None):
    """``calls`` calls of ``fn`` captured in one CUDA graph, after two runs on a side stream (a capture needs its
    kernels compiled and its memory settled): the graph and the last call's output."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        for _ in range(calls):
            out = fn()
    return graph, out


def graph_timed(fn, device, repeats: int, calls: int = GRAPH_CALLS) -> float:
    """Median seconds of one call of ``fn`` as a CUDA graph runs it: ``calls`` calls captured in one graph, the graph
    replayed ``repeats`` times between CUDA events. Elsewhere :func:`timed`."""
    if device.type != "cuda":
        return timed(fn, device, repeats)
    graph, _ = captured(fn, calls)
    return timed(graph.replay, device, repeats) / calls


def sweep_rows(x, weight, bias, device, repeats: int) -> list[dict]:
    """The row kernels' time under each setting of SWEEP (module settings restored after)."""
    saved = [getattr(FN, name) for name in ROW_SETTINGS] + [FN.MAX_SPLIT]
    rows = []
    try:
        for setting in SWEEP:
            for name, value in zip(ROW_SETTINGS, setting):
                setattr(FN, name, value)
            FN.MAX_SPLIT = max(256, FN.ROW_PROGRAMS)
            s = graph_timed(lambda: FN.group_norm_rows(x, GROUPS, weight, bias, 1e-6, silu=True), device, repeats)
            tile, programs, warps, stages, tiles = setting
            n, c = x.shape[:2]
            launched = n * FN.row_split(n, c, x.numel() // (n * c))[1]
            rows.append({"tile": tile, "programs": programs, "warps": warps, "stages": stages, "min_tiles": tiles,
                         "launched": launched, "ms": s * 1e3})
    finally:
        for name, value in zip(ROW_SETTINGS + ("MAX_SPLIT",), saved):
            setattr(FN, name, value)
    return rows


def main():
    ap = probe_parser(deadline=False)
    ap.add_argument("--sweep", action="store_true",
                    help="also time the row kernels under every setting of SWEEP, on every shape (GPU)")
    a = ap.parse_args()
    device = torch.device(a.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    gpu = device.type == "cuda" and FN.triton_available()
    out = {**probe_header(device, dtype), "groups": GROUPS, "layout": "channels_last", "silu": True, "shapes": []}
    g = torch.Generator().manual_seed(0)
    for where, n, c, h, w in (TINY if a.tiny else SHAPES + MORE_SHAPES):
        x = (torch.randn(n, c, h, w, generator=g) * 2 + 1).to(device, dtype).contiguous(
            memory_format=torch.channels_last)
        weight, bias = (torch.randn(c, generator=g).to(device, dtype) for _ in range(2))
        ref = FN.group_norm_reference(x.float(), GROUPS, weight.float(), bias.float(), 1e-6, silu=True)
        # dynamo's caches emptied for every shape: compiled functions of one code object share their cache, and
        # past dynamo's recompile limit (8 shapes) the rest ran eagerly (until call W, 2026-12-03, the last five
        # shapes' "inductor" column was eager's time)
        torch._dynamo.reset()
        compiled = torch.compile(lambda *args, **kw: FN.group_norm_reference(*args, **kw), dynamic=False)
        ways = {"eager": lambda: FN.group_norm_reference(x, GROUPS, weight, bias, 1e-6, silu=True),
                "inductor": lambda: compiled(x, GROUPS, weight, bias, 1e-6, silu=True)}
        if gpu:
            ways["triton_groups"] = lambda: FN.group_norm_triton(x, GROUPS, weight, bias, 1e-6, silu=True, rows=False)
            ways["triton_rows"] = lambda: FN.group_norm_triton(x, GROUPS, weight, bias, 1e-6, silu=True, rows=True)
        least_bytes = 2 * x.numel() * x.element_size()   # read once, write once
        row = {"where": where, "shape": [n, c, h, w], "MB": least_bytes / 2 / 1e6}
        for name, fn in ways.items():
            s = graph_timed(fn, device, a.repeats)
            err = float((fn().float() - ref).abs().max())
            row[name] = {"ms": s * 1e3, "GB_s": least_bytes / s / 1e9, "max_abs_err": err}
        if gpu and a.sweep:
            row["sweep"] = sweep_rows(x, weight, bias, device, a.repeats)
            best = min(row["sweep"], key=lambda r: r["ms"])
            print(f"  rows best {best}", flush=True)
        out["shapes"].append(row)
        names = [k for k in ("eager", "inductor", "triton_groups", "triton_rows") if k in out["shapes"][0]]
        out["total_ms"] = {k: sum(r[k]["ms"] for r in out["shapes"]) for k in names}
        if a.out:  # after every shape: a run cut short keeps what it measured
            write_atomic(a.out, json.dumps(out, indent=1).encode())
        print(where, json.dumps({k: v for k, v in row.items() if isinstance(v, dict)}), flush=True)
        del x, ref
    print("total ms", json.dumps(out["total_ms"]))


if __name__ == "__main__":
    main()
