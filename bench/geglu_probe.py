"""GEGLU's projection and gate on the shapes of a ConFiner run (fp16), three ways: cuBLAS's GEMM then the gate kernel
(``lean``), inductor's compilation of the same ops (cuBLAS, then its fused gate: what ``fast`` and ``max`` ran
until now), and the projection and gate in one Triton GEMM (``fused_geglu.geglu_linear_triton``) under every tiling
of ``LINEAR_SWEEP``. Per shape: the median time of one call inside a CUDA graph (``norm_probe.graph_timed``), the
GEMM's TFLOP/s, the GEMM alone, and each result's largest difference from an fp32 reference.

Why: in the H200 profile of ``max`` (call AA) the gate kernels take 0.065 s of the 1.449 s of kernels, after GEMMs
that write both halves of the projection; in one GEMM the halves never reach memory.

    python bench/geglu_probe.py --out $OUT/geglu.json      # on the GPU
    python bench/geglu_probe.py --device cpu --tiny         # CPU smoke run (the two unfused ways)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from confiner_core.diffusers_backend import fused_geglu as FG  # noqa: E402
from confiner_core.outputs import write_atomic  # noqa: E402
from norm_probe import graph_timed  # noqa: E402

# (where, rows, width, gated columns): SD's and ModelScope's transformer levels at cfg x 16 frames (spatial and
# temporal blocks alike: one row per pixel and frame), the control expert's 16 frames, 512x512
SHAPES = [(f"{who} {side}x{side}", batch * side * side, k, 4 * k)
          for who, batch in (("cfg", 32), ("control", 16))
          for side, k in ((64, 320), (32, 640), (16, 1280), (8, 1280))]
TINY = [("tiny", 96, 64, 256)]


def probe_shape(m: int, k: int, i: int, device, dtype, repeats: int, sweep) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g).to(device, dtype)
    weight = (torch.randn(2 * i, k, generator=g) / k ** 0.5).to(device, dtype)
    bias = (torch.randn(2 * i, generator=g) * 0.1).to(device, dtype)
    ref = FG.geglu_linear_reference(x.float(), weight.float(), bias.float())
    tflop = 2 * m * k * 2 * i / 1e12

    def row(fn) -> dict:
        s = graph_timed(fn, device, repeats)
        return {"ms": s * 1e3, "tflops": tflop / s, "max_abs_err": float((fn().float() - ref).abs().max())}

    compiled = torch.compile(FG.geglu_linear_reference, dynamic=False)
    out = {"gemm_alone": {"ms": graph_timed(lambda: F.linear(x, weight, bias), device, repeats) * 1e3},
           "cublas_then_gate_kernel": row(lambda: FG.geglu(F.linear(x, weight, bias))),
           "inductor": row(lambda: compiled(x, weight, bias))}
    out["gemm_alone"]["tflops"] = tflop / out["gemm_alone"]["ms"] * 1e3
    tilings = []
    for config in sweep:
        try:
            r = row(lambda: FG.geglu_linear_triton(x, weight, bias, config))
        except Exception as e:  # noqa: BLE001 (a tiling that does not fit: recorded, the others go on)
            r = {"error": f"{type(e).__name__}: {e}"[:200]}
        tilings.append({"config": config._asdict(), **r})
    timed = [t for t in tilings if "ms" in t]
    if timed:
        best = min(timed, key=lambda t: t["ms"])
        out["fused_best"] = best
        out["fused_as_set"] = next((t for t in timed if t["config"] == FG.linear_config(m, k, i)._asdict()), None)
    out["tilings"] = tilings
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    device = torch.device(a.device)
    gpu = device.type == "cuda" and FG.triton_available()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    sweep = FG.LINEAR_SWEEP if gpu else ()
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "timing": "CUDA graph of 10 calls" if device.type == "cuda" else "one call", "dtype": str(dtype),
           "shapes": []}
    for where, m, k, i in (TINY if a.tiny else SHAPES):
        r = {"where": where, "rows": m, "width": k, "gated": i, **probe_shape(m, k, i, device, dtype, a.repeats, sweep)}
        out["shapes"].append(r)
        best = r.get("fused_best", {})
        print(f"{where:>16} [{m}, {k}] -> {i}: GEMM alone {r['gemm_alone']['ms']:.3f} ms, cuBLAS + gate "
              f"{r['cublas_then_gate_kernel']['ms']:.3f}, inductor {r['inductor']['ms']:.3f}, one GEMM "
              f"{best.get('ms', float('nan')):.3f} ({best.get('config')})", flush=True)
        if a.out:
            write_atomic(a.out, json.dumps(out, indent=1).encode())
    if not a.out:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
