"""Every attention shape of the SD-scale and Wan-scale benchmarks under every attention backend the machine has:
PyTorch's SDPA kernels (cuDNN, flash, memory-efficient; each alone, no fallback), ``flash-attn-4`` through the
library's own ``flash4`` route (``flash4_attention.flash4_sdpa``), the library's Triton kernel for attention over frames
(``frames``: sequences of up to 64 tokens) and SageAttention (``sageattn``, INT8 QK, an approximation) where
installed. Per shape and backend: median milliseconds of a call, TFLOP/s, the first call's seconds (FA4 and
SageAttention compile their kernels then) and the largest difference from PyTorch's flash kernel's output (cuDNN's
where flash does not take the shape), so a faster backend is also seen to compute the same attention.

    python bench/attention_probe.py --out $OUT/attention.json          # on the GPU
    python bench/attention_probe.py --device cpu --tiny                # CPU smoke run (math backend only)

Written after every shape, so a call cut short keeps what it measured; ``--deadline`` skips the shapes it would
not finish.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

from confiner_core.diffusers_backend import flash4_attention as F4  # noqa: E402
from confiner_core.outputs import write_atomic  # noqa: E402
from confiner_core.diffusers_backend import frame_attention as FA  # noqa: E402
from confiner_core.diffusers_backend import speed as S  # noqa: E402

# (name, batch, heads, query tokens, key tokens, head dim): the calls one forward of each network makes at the
# benchmarks' sizes. SD 1.5 at 512x512x16 with cfg: 32 frames, 8 heads of 40/80/160 channels at 64²/32²/16² tokens.
# Attention over the 16 frames of every pixel: AnimateDiff's motion modules with 8 heads of 40/80 channels at 64²/32²,
# ModelScope's temporal transformers with 5/10 heads of 64 (diffusers passes channels // 64 as the head count).
# Wan at 480x832x81: 21 latent frames of 30x52 patches = 32,760 tokens, heads of 128; text 512 tokens.
SHAPES = (  # the largest of each model first, so a deadline cuts the least telling ones
    ("sd self 64² (d 40)", 32, 8, 4096, 4096, 40),
    # SD's heads zero-padded to 48 and 64 (what a projection with zero rows would hand the kernel): whether a kernel
    # pads 40 to 64 inside, so that 48 would cost less (compare milliseconds with the row above, not TFLOP/s)
    ("sd self 64² (d 40 as 48)", 32, 8, 4096, 4096, 48),
    ("sd self 64² (d 40 as 64)", 32, 8, 4096, 4096, 64),
    ("wan 1.3B self (d 128)", 1, 12, 32760, 32760, 128),
    ("sd self 32² (d 80)", 32, 8, 1024, 1024, 80),
    ("sd cross 64² (d 40)", 32, 8, 4096, 77, 40),
    ("wan 1.3B cross (d 128)", 1, 12, 32760, 512, 128),
    ("sd self 16² (d 160)", 32, 8, 256, 256, 160),
    ("animatediff frames 64² (8 × d 40)", 2 * 4096, 8, 16, 16, 40),
    ("modelscope frames 64² (5 × d 64)", 2 * 4096, 5, 16, 16, 64),
    ("animatediff frames 32² (8 × d 80)", 2 * 1024, 8, 16, 16, 80),
    ("modelscope frames 32² (10 × d 64)", 2 * 1024, 10, 16, 16, 64),
    ("wan 14B self (d 128)", 1, 40, 32760, 32760, 128),
)
TINY = tuple((name, 2, 2, min(q, 64), min(k, 64), d) for name, _, _, q, k, d in SHAPES)
SDPA_BACKENDS = ("cudnn", "flash", "efficient")   # math (the CPU's) would take seconds and tens of GiB at Wan size


def attention_tflop(batch: int, heads: int, q_len: int, k_len: int, dim: int) -> float:
    """QKᵀ and PV: two matmuls of 2·Nq·Nk·d multiply-adds per head (softmax not counted)."""
    return 4 * batch * heads * q_len * k_len * dim / 1e12


def sage_function():
    """``sageattention.sageattn`` or None when it is not installed."""
    try:
        from sageattention import sageattn
    except Exception:  # noqa: BLE001 (not installed, or Triton missing)
        return None
    return sageattn


def backends(device: torch.device) -> dict:
    """name -> f(q, k, v) in SDPA's [B, H, S, D] layout, for what this machine has."""
    from torch.nn.attention import sdpa_kernel

    sdpa = torch.nn.functional.scaled_dot_product_attention

    def alone(name):
        order = S.sdpa_order(name)[:1]       # this kernel only: a shape it does not take is reported, not rerouted

        def run(q, k, v):
            with sdpa_kernel(order):
                return sdpa(q, k, v)
        return run

    out = {name: alone(name) for name in (SDPA_BACKENDS if device.type == "cuda" else ("math",))}
    if F4.flash4_function() is not None:
        def flash4(q, k, v):
            if not F4.covers(q, k, v):
                raise ValueError("a shape the flash4 route passes on to SDPA")
            return F4.flash4_sdpa(q, k, v)
        out["flash4"] = flash4   # the library's own route, without its SDPA fallback
    if device.type == "cuda" and FA.frame_attention_op is not None:
        def frames(q, k, v):
            if not FA.covers(q, k, v):
                raise ValueError(f"more than {FA.MAX_TOKENS} tokens, a head dim over {FA.MAX_HEAD_DIM} or a tile "
                                 f"over {FA.MAX_TILE}")
            return FA.frame_sdpa(q, k, v)
        out["frames"] = frames   # the library's Triton kernel for attention over frames
    sage = sage_function()
    if sage is not None:
        out["sage"] = lambda q, k, v: sage(q, k, v, tensor_layout="HND", is_causal=False)
    return out


def timed_ms(fn, args, device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - t0) * 1000)
    return times


def probe_shape(shape, fns: dict, device, dtype, repeats: int) -> dict:
    name, b, h, nq, nk, d = shape
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=torch.float32).to(device, dtype) for n in (nq, nk, nk))
    tflop = attention_tflop(b, h, nq, nk, d)
    row = {"shape": [b, h, nq, nk, d], "tflop": tflop, "backends": {}}
    outputs = {}
    for backend, fn in fns.items():
        entry = row["backends"][backend] = {}
        try:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outputs[backend] = fn(q, k, v)
            if device.type == "cuda":
                torch.cuda.synchronize()
            entry["first_call_s"] = time.perf_counter() - t0
            timed_ms(fn, (q, k, v), device, 2)
            runs = timed_ms(fn, (q, k, v), device, repeats)
        except Exception as e:  # noqa: BLE001 (a kernel that does not take the shape says why)
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            continue
        entry["median_ms"] = statistics.median(runs)
        entry["tflops"] = tflop / (entry["median_ms"] / 1000)
    reference = next((n for n in ("flash", "cudnn", "math") if n in outputs), None)
    row["reference"] = reference
    for backend, out in outputs.items():
        row["backends"][backend]["max_abs_diff"] = (out.float() - outputs[reference].float()).abs().max().item()
    timed_rows = {n: e for n, e in row["backends"].items() if "median_ms" in e}
    row["fastest"] = min(timed_rows, key=lambda n: timed_rows[n]["median_ms"]) if timed_rows else None
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="small shapes (CPU smoke run)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--deadline", type=float, default=float("inf"), help="seconds: later shapes are skipped")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    started = time.perf_counter()
    device = torch.device(a.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    fns = backends(device)
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "dtype": str(dtype).replace("torch.", ""), "backends": list(fns), "shapes": {}, "skipped": []}
    for shape in (TINY if a.tiny else SHAPES):
        if time.perf_counter() - started > a.deadline:
            res["skipped"].append(shape[0])
            continue
        row = res["shapes"][shape[0]] = probe_shape(shape, fns, device, dtype, a.repeats)
        print(f"[{time.perf_counter() - started:6.0f} s] {shape[0]}: " + ", ".join(
            f"{n} {e['median_ms']:.3f} ms ({e['tflops']:.0f} TFLOP/s, diff {e.get('max_abs_diff', 0):.1e}, "
            f"first {e['first_call_s']:.1f} s)" if "median_ms" in e else f"{n} {e['error']}"
            for n, e in row["backends"].items()), flush=True)
        if a.out:
            write_atomic(a.out, json.dumps(res, indent=1).encode())


if __name__ == "__main__":
    main()
