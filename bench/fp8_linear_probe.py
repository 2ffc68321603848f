"""The SD-family networks' linear layers in fp16 and in fp8 (e4m3), to learn what fp8 matrix multiplies could take off
the ``max`` profile's GEMM line before anything of the kind enters the library.

Why: after twenty sessions the ``max`` preset's kernels are convolution 0.40 s (754 TFLOP/s, near the fp16 peak),
GEMM 0.40 s (502 TFLOP/s), attention 0.27 s, norms and elementwise 0.31 s of 1.41 s (``bench/RESULTS.md``). The H200
does fp8 at twice the fp16 rate; ComfyUI offers the same trade (``--fast fp8_matrix_mult``, ``fp8_e4m3fn_fast``
weights). Per shape (rows = frames x cfg halves x pixels of the level, K -> N as diffusers' ``nn.Linear`` runs it):

- ``fp16``: ``F.linear`` (cuBLAS), what every preset runs now;
- ``fp8 tensor``: one scale for the activations (their absolute maximum, computed each call) and one for the weight,
  ``torch._scaled_mm`` writing fp16, the quantisation compiled with the GEMM (inductor fuses the max and the cast);
- ``fp8 row``: a scale per activation row and per weight row (finer, so closer to fp16), writing bf16 then fp16;
- ``fp8 GEMM alone``: the tensor-scaled GEMM on activations already in fp8, the bound if the cast were fused into
  the norm that produces them.
- ``fp16 acc16``: ``F.linear`` with cuBLAS accumulating in fp16 (``torch.backends.cuda.matmul.
  allow_fp16_accumulation``, ComfyUI's ``--fast fp16_accumulation``): call CA/CB found ``max`` 1.8 % faster with it on
  an H100; what it costs in precision, per layer.
- ``bf16``: ``F.linear`` on the activation, weight and bias rounded to bf16 (fp32 accumulation), for scale: the
  error every bf16 model (Wan) lives with.

``--ways`` runs some of them, e.g. ``--device cpu --ways fp16 bf16`` for bf16's difference at every shape on a CPU.

Each way's largest difference from an fp32 reference is given relative to the reference's largest magnitude.

    python bench/fp8_linear_probe.py --out $OUT/fp8        # on the GPU
    python bench/fp8_linear_probe.py --device cpu --tiny   # CPU smoke run
    python bench/fp8_linear_probe.py --device cpu --ways fp16 bf16 --repeats 1   # bf16's difference, every shape
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from confiner_core.outputs import write_atomic  # noqa: E402
from norm_probe import graph_timed, probe_header, probe_parser  # noqa: E402

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


def _per_tensor(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` in fp8 with one float32 scale (``t ~ q * scale``)."""
    scale = t.abs().amax().float().clamp(min=1e-12) / FP8_MAX
    return (t.float() / scale).to(FP8), scale


def _per_row(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` [R, K] in fp8 with a float32 scale per row ([R, 1])."""
    scale = t.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (t.float() / scale).to(FP8), scale


def fp8_tensor_linear(x: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    x8, x_scale = _per_tensor(x)
    return torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, bias=bias, out_dtype=x.dtype)


def fp16_accumulating_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    matmul = torch.backends.cuda.matmul
    before, matmul.allow_fp16_accumulation = matmul.allow_fp16_accumulation, True
    try:
        return F.linear(x, w, bias)
    finally:
        matmul.allow_fp16_accumulation = before


def fp8_row_linear(x: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # row-wise scales need a bf16 result in cuBLAS; the bias is added (and the cast to fp16 done) after
    x8, x_scale = _per_row(x)
    out = torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale.t(), out_dtype=torch.bfloat16)
    return (out + bias).to(x.dtype)


# (where, rows, K, N): the attention block's fused q/k/v and output projections, the feed-forward's two GEMMs, at each
# level of SD (batch 32) and the control expert (batch 16); ModelScope's temporal layers have SD's shapes
def level_shapes(prefix: str, batch: int) -> list[tuple[str, int, int, int]]:
    shapes = []
    for side, k in ((64, 320), (32, 640), (16, 1280), (8, 1280)):
        rows = batch * side * side
        shapes += [(f"{prefix} {side}² qkv", rows, k, 3 * k), (f"{prefix} {side}² out", rows, k, k),
                   (f"{prefix} {side}² ff in", rows, k, 8 * k), (f"{prefix} {side}² ff out", rows, 4 * k, k)]
    return shapes


SHAPES = level_shapes("sd", 32) + level_shapes("control", 16)
TINY = [("tiny", 64, 32, 48)]
WAYS = ("fp16", "fp8 tensor", "fp8 row", "fp8 GEMM alone", "fp16 acc16", "bf16")


def main():
    ap = probe_parser()
    ap.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS), help="the ways to run (default: all)")
    a = ap.parse_args()
    t_start = time.perf_counter()
    device = torch.device(a.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    out = {**probe_header(device, dtype), "shapes": []}
    g = torch.Generator().manual_seed(0)
    compile_ = (lambda fn: torch.compile(fn, dynamic=False)) if device.type == "cuda" else (lambda fn: fn)
    tensor_fn, row_fn = compile_(fp8_tensor_linear), compile_(fp8_row_linear)
    totals: dict[str, float] = {}
    for where, rows, k, n in (TINY if a.tiny else SHAPES):
        if time.perf_counter() - t_start > a.deadline:
            out["shapes"].append({"where": where, "skipped": "deadline"})
            continue
        x = torch.randn(rows, k, generator=g).to(device, dtype)
        w = (torch.randn(n, k, generator=g) / k ** 0.5).to(device, dtype)
        b = (torch.randn(n, generator=g) * 0.1).to(device, dtype)
        ref = F.linear(x.float(), w.float(), b.float())
        peak = ref.abs().max().item()
        w8_t, ws_t = _per_tensor(w)
        w8_r, ws_r = _per_row(w)
        x8, xs = _per_tensor(x)
        flop = 2 * rows * k * n

        def row(name, fn):
            got = fn()
            s = graph_timed(fn, device, a.repeats)
            totals[name] = totals.get(name, 0.0) + s
            return {"way": name, "ms": s * 1e3, "tflops": flop / s / 1e12,
                    "rel_diff": (got.float() - ref).abs().max().item() / peak}

        xb, wb, bb = (t.to(torch.bfloat16) for t in (x, w, b))
        calls = {"fp16": lambda: F.linear(x, w, b),
                 "fp8 tensor": lambda: tensor_fn(x, w8_t, ws_t, b),
                 "fp8 row": lambda: row_fn(x, w8_r, ws_r, b),
                 "fp8 GEMM alone": lambda: torch._scaled_mm(x8, w8_t.t(), scale_a=xs, scale_b=ws_t, bias=b,
                                                            out_dtype=dtype),
                 "fp16 acc16": lambda: fp16_accumulating_linear(x, w, b),
                 "bf16": lambda: F.linear(xb, wb, bb)}
        ways = [row(name, calls[name]) for name in WAYS if name in a.ways]
        out["shapes"].append({"where": where, "rows": rows, "k": k, "n": n, "ways": ways})
        print(f"[{where}] {rows}x{k}->{n}: " + ", ".join(
            f"{r['way']} {r['ms']:.3f} ms ({r['tflops']:.0f}, {r['rel_diff']:.1e})" for r in ways), flush=True)
        out["total_ms"] = {name: s * 1e3 for name, s in totals.items()}
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            write_atomic(os.path.join(a.out, "fp8_linear.json"), json.dumps(out, indent=1).encode())
    print("all shapes once (ms):", {name: round(s * 1e3, 3) for name, s in totals.items()}, flush=True)
    if not a.out:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
