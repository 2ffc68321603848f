"""Nearest ×2 upsampling + 3×3 convolution on the shapes the SD-family networks grow their feature maps at, three
ways: diffusers' ``Upsample2D`` as it is (interpolation, then the convolution), the stride-2 transposed convolution
it equals (:mod:`confiner_core.diffusers_backend.folded_upsample`: 16 multiply-adds per output pixel and channel pair
instead of 36, no upsampled copy), and the same 2×2 taps as one ordinary convolution with four output phases
followed by a gather that interleaves them. Each eager and compiled (as the compiled presets compile the block), with
cuDNN's autotuning off (the compiled presets) and on (``lean``). Per shape: the median time of one call inside a
CUDA graph, the TFLOP/s of the interpolate-and-convolve maths, and each result's largest difference from an fp32
reference.

    python bench/upsample_probe.py --out $OUT/upsample      # on the GPU
    python bench/upsample_probe.py --device cpu --tiny      # CPU smoke run (eager only)
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from confiner_core.diffusers_backend import folded_upsample as FU  # noqa: E402
from confiner_core.outputs import write_atomic  # noqa: E402
from norm_probe import graph_timed, probe_header, probe_parser  # noqa: E402

# (where, N, C_in, C_out, H, W of the input): the SD VAE decoder 4 frames at a time, the UNets at cfg x 16 frames
# (SD, ModelScope) and 16 frames (the control expert), 512x512
SHAPES = [("vae 64->128", 4, 512, 512, 64, 64), ("vae 128->256", 4, 512, 512, 128, 128),
          ("vae 256->512", 4, 256, 256, 256, 256), ("unet 8->16", 32, 1280, 1280, 8, 8),
          ("unet 16->32", 32, 1280, 1280, 16, 16), ("unet 32->64", 32, 640, 640, 32, 32),
          ("control 16->32", 16, 1280, 1280, 16, 16), ("control 32->64", 16, 640, 640, 32, 32)]
TINY = [("tiny", 2, 16, 8, 8, 6)]

# the phases' 2x2 taps along one axis, as rows of folded_upsample's 4-tap kernel: output row 2i (phase 0) reads
# input rows i-1, i through taps 3, 1; row 2i+1 (phase 1) reads rows i, i+1 through taps 2, 0
PHASE_TAPS = ((3, 1), (2, 0))


def phase_weight(folded: torch.Tensor) -> torch.Tensor:
    """[4 C_out, C_in, 2, 2] for one padding-1 convolution whose output channels are the four phases (a, b, c_out)."""
    phases = [folded[:, :, list(PHASE_TAPS[a])][:, :, :, list(PHASE_TAPS[b])] for a in (0, 1) for b in (0, 1)]
    return torch.cat([p.transpose(0, 1) for p in phases]).contiguous()


def upsample_by_phases(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Phase (a, b) of the output at [2i + a, 2j + b] is the 2x2 convolution's [i + a, j + b] (padding 1)."""
    n, _, h, w = x.shape
    c = weight.shape[0] // 4
    out = F.conv2d(x, weight, None if bias is None else bias.repeat(4), padding=1)
    phases = torch.stack([out[:, k * c:(k + 1) * c, a:a + h, b:b + w]
                          for k, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1)))])
    y = phases.reshape(2, 2, n, c, h, w).permute(2, 3, 4, 0, 5, 1).reshape(n, c, 2 * h, 2 * w)
    return y.contiguous(memory_format=torch.channels_last)


def main():
    ap = probe_parser()
    ap.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16", help="on the GPU (the CPU: float32)")
    a = ap.parse_args()
    t_start = time.perf_counter()
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype) if device.type == "cuda" else torch.float32
    out = {**probe_header(device, dtype), "shapes": []}
    # cuDNN's autotuning and inductor, each off and on, on the GPU; on the CPU neither says anything about the GPU
    both = (False, True) if device.type == "cuda" else (False,)
    autotuning_before = torch.backends.cudnn.benchmark   # a process-wide switch: set back after the probe
    try:
        probe_shapes(a, device, dtype, both, out, t_start)
    finally:
        torch.backends.cudnn.benchmark = autotuning_before
    if not a.out:
        print(json.dumps(out, indent=1))


def probe_shapes(a, device, dtype, both: tuple, out: dict, t_start: float) -> None:
    """Each shape of the run (``a``: the parsed arguments) every way, under each setting in ``both`` of cuDNN's
    autotuning and of compilation, into ``out["shapes"]``; ``out`` written to ``a.out`` after every shape."""
    from diffusers.models.upsampling import Upsample2D

    g = torch.Generator().manual_seed(0)
    for where, n, cin, cout, h, w in (TINY if a.tiny else SHAPES):
        if time.perf_counter() - t_start > a.deadline:
            out["shapes"].append({"where": where, "skipped": "deadline"})
            continue
        plain = Upsample2D(cin, use_conv=True, out_channels=cout)
        with torch.no_grad():
            plain.conv.weight.copy_(torch.randn(plain.conv.weight.shape, generator=g) / (9 * cin) ** 0.5)
            plain.conv.bias.copy_(torch.randn(cout, generator=g) * 0.1)
        x32 = torch.randn(n, cin, h, w, generator=g)
        ref = plain(x32).to(device)
        plain = plain.to(device, dtype).to(memory_format=torch.channels_last)
        folded = copy.deepcopy(plain)
        FU.fold_upsamplers(folded)
        pw, bias = phase_weight(folded.folded_weight).to(memory_format=torch.channels_last), plain.conv.bias
        x = x32.to(device, dtype).contiguous(memory_format=torch.channels_last)
        flop = 2 * n * cout * cin * 9 * (2 * h) * (2 * w)
        ways = {"interpolate + conv": plain, "transposed conv": folded,
                "phases + gather": lambda t: upsample_by_phases(t, pw, bias)}
        rows = []
        for benchmark in both:
            torch.backends.cudnn.benchmark = benchmark
            for name, fn in ways.items():
                for compiled in both:
                    call = torch.compile(fn, dynamic=False) if compiled else fn
                    with torch.no_grad():
                        try:
                            got = call(x)
                            s = graph_timed(lambda: call(x), device, a.repeats)
                        except Exception as e:  # noqa: BLE001 (a way this GPU or PyTorch cannot run)
                            rows.append({"way": name, "compiled": compiled, "cudnn_benchmark": benchmark,
                                         "error": f"{type(e).__name__}: {str(e)[:200]}"})
                            continue
                    rows.append({"way": name, "compiled": compiled, "cudnn_benchmark": benchmark, "ms": s * 1e3,
                                 "tflops": flop / s / 1e12, "max_diff": (got.float() - ref).abs().max().item(),
                                 "channels_last": got.is_contiguous(memory_format=torch.channels_last)})
        torch._dynamo.reset()
        entry = {"where": where, "input": [n, cin, h, w], "out_channels": cout, "ways": rows}
        out["shapes"].append(entry)
        timed = [r for r in rows if "ms" in r]
        for benchmark in both:
            line = ", ".join(f"{r['way']}{' compiled' if r['compiled'] else ''} {r['ms']:.3f}"
                             for r in timed if r["cudnn_benchmark"] is benchmark)
            print(f"[{where}] benchmark {benchmark}: {line}", flush=True)
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            name = "upsample.json" if dtype != torch.bfloat16 else "upsample_bf16.json"
            write_atomic(os.path.join(a.out, name), json.dumps(out, indent=1).encode())


if __name__ == "__main__":
    main()
