"""The feed-forward's first projection and its GEGLU gate on the shapes the SD-family networks run, three ways: cuBLAS's
GEMM and then the gate as inductor fuses it (what the compiled presets run: ``triton_poi_fused_gelu_mul_split_view``
in the profiles), cuBLAS's GEMM and the library's gate kernel (the ``lean`` preset), and :func:`linear_geglu_triton`
(both in one Triton kernel, which writes only the gated half) under each tile setting of CONFIGS. Per shape: the median time of one call inside a CUDA graph, TFLOP/s, and each result's largest
difference from an fp32 reference.

Why: in the ``max`` profile (``bench/RESULTS.md``) the gate is the largest elementwise kernel; it reads the
projection's 2I columns and writes I of them, after the GEMM wrote all 2I. Measured on the H200 (call AO,
2026-12-03, ``gpu_results/h200_geglu_gemm_probe.json``): the fused kernel lost on all eight shapes, by 9-25 % to the
compiled presets' way (SD's top level 0.744 against 0.682 ms): its GEMM, on ``tl.dot`` tiles, is much slower than
cuBLAS's (0.433 ms there for the GEMM alone), more than the gate pass it saves. It stays here, not in the library.

    python bench/geglu_gemm_probe.py --out $OUT/geglu_gemm.json     # on the GPU
    python bench/geglu_gemm_probe.py --device cpu --tiny            # CPU smoke run (under Triton's interpreter)
"""

from __future__ import annotations

import json
import os
import sys
import time

if "--tiny" in sys.argv and "--device" in sys.argv and "cpu" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from confiner_core.diffusers_backend import fused_geglu as FG  # noqa: E402
from confiner_core.outputs import write_atomic  # noqa: E402
from norm_probe import graph_timed, probe_header, probe_parser  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# The projection and the gate in one Triton kernel: the candidate this probe measures (not in the library: it lost)

try:
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 (any import failure means: no Triton)
    triton = None

if triton is not None:
    @triton.jit
    def linear_geglu_kernel(x_ptr, w_ptr, b_ptr, o_ptr, M, K, I, sxm, swn, som,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr):
        """out[m, n] = (x W_v^T + b_v)[m, n] * gelu((x W_g^T + b_g)[m, n]) with W = [W_v; W_g] ([2I, K], nn.Linear's
        layout): one program computes a BLOCK_M x BLOCK_N tile of both halves from the same loads of x, in float32,
        and writes only the gated tile. K is a multiple of BLOCK_K (the caller checks)."""
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(I, BLOCK_N)
        # programs in groups of GROUP_M row tiles that sweep the columns together (x's rows stay in L2)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        rows_in_group = min(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % rows_in_group
        pid_n = (pid % per_group) // rows_in_group
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        # rows and columns past the end read row 0 / column 0 (their results are not stored): no masks in the loop
        xs = x_ptr + ((rm % M).to(tl.int64) * sxm)[:, None] + rk[None, :]
        wv = w_ptr + ((rn % I).to(tl.int64) * swn)[None, :] + rk[:, None]
        wg = wv + I * swn
        acc_v = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for _ in range(0, K // BLOCK_K):
            a = tl.load(xs)
            acc_v = tl.dot(a, tl.load(wv), acc_v)
            acc_g = tl.dot(a, tl.load(wg), acc_g)
            xs += BLOCK_K
            wv += BLOCK_K
            wg += BLOCK_K
        if HAS_BIAS:
            acc_v += tl.load(b_ptr + (rn % I)).to(tl.float32)[None, :]
            acc_g += tl.load(b_ptr + I + (rn % I)).to(tl.float32)[None, :]
        out = acc_v * (0.5 * acc_g * (1.0 + tl.math.erf(acc_g * 0.7071067811865476)))
        mask = (rm < M)[:, None] & (rn < I)[None, :]
        tl.store(o_ptr + (rm.to(tl.int64) * som)[:, None] + rn[None, :], out.to(o_ptr.dtype.element_ty),
                  mask=mask)
else:
    linear_geglu_kernel = None


def linear_geglu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        config: tuple) -> torch.Tensor:
    """``geglu(F.linear(x, weight, bias))`` in one kernel, for ``x`` [..., K] and ``weight`` [2I, K] with unit
    last strides and K a multiple of the config's BLOCK_K."""
    from torch.library import wrap_triton

    block_m, block_n, block_k, group_m, warps, stages = config
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, k = x2.shape
    i = weight.shape[0] // 2
    out = torch.empty(m, i, device=x.device, dtype=x.dtype)
    grid = (-(-m // block_m) * -(-i // block_n),)
    kernel = linear_geglu_kernel if os.environ.get("TRITON_INTERPRET") == "1" else wrap_triton(linear_geglu_kernel)
    kernel[grid](x2, weight, bias if bias is not None else weight, out, m, k, i, x2.stride(0), weight.stride(0),
                 out.stride(0), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
                 HAS_BIAS=bias is not None, num_warps=warps, num_stages=stages)
    return out.reshape(*x.shape[:-1], i)


# (where, rows, K): rows = frames x cfg halves x pixels of the level; the feed-forward is K -> 2 x 4K -> K
SHAPES = [("sd/ms 64x64", 32 * 4096, 320), ("sd/ms 32x32", 32 * 1024, 640), ("sd/ms 16x16", 32 * 256, 1280),
          ("sd/ms 8x8", 32 * 64, 1280), ("control 64x64", 16 * 4096, 320), ("control 32x32", 16 * 1024, 640),
          ("control 16x16", 16 * 256, 1280), ("control 8x8", 16 * 64, 1280)]
TINY = [("tiny", 200, 64)]
# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages)
CONFIGS = [(128, 64, 64, 8, 4, 4), (128, 64, 64, 8, 8, 4), (128, 128, 64, 8, 8, 3), (128, 128, 64, 8, 8, 4),
           (256, 64, 64, 8, 8, 3), (64, 128, 64, 8, 4, 4), (128, 64, 32, 8, 4, 5), (128, 128, 32, 8, 8, 4),
           (128, 32, 64, 8, 4, 4)]
TINY_CONFIGS = [(64, 32, 64, 2, 4, 2)]


def main():
    a = probe_parser().parse_args()
    t_start = time.perf_counter()
    device = torch.device(a.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    out = {**probe_header(device, dtype), "configs": ["BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages"],
           "shapes": []}
    g = torch.Generator().manual_seed(0)
    compiled = torch.compile(lambda x, w, b: FG.geglu_reference(F.linear(x, w, b)), dynamic=False)
    for where, rows, k in (TINY if a.tiny else SHAPES):
        if time.perf_counter() - t_start > a.deadline:
            out["shapes"].append({"where": where, "skipped": "deadline"})
            continue
        i = 4 * k
        x = torch.randn(rows, k, generator=g).to(device, dtype)
        w = (torch.randn(2 * i, k, generator=g) / k ** 0.5).to(device, dtype)
        b = (torch.randn(2 * i, generator=g) * 0.1).to(device, dtype)
        ref = FG.geglu_reference(F.linear(x.float(), w.float(), b.float()))
        flop = 2 * rows * k * 2 * i

        def row(name, fn, checked=True):
            got = fn()
            s = graph_timed(fn, device, a.repeats)
            return {"way": name, "ms": s * 1e3, "tflops": flop / s / 1e12,
                    "max_diff": (got.float() - ref).abs().max().item() if checked else None}

        ways = [row("cublas + inductor gate", lambda: compiled(x, w, b)),
                row("cublas + gate kernel", lambda: FG.geglu(F.linear(x, w, b))),
                row("cublas GEMM alone", lambda: F.linear(x, w, b), checked=False)]
        for config in (TINY_CONFIGS if a.tiny else CONFIGS):
            try:
                ways.append(row(f"fused {config}", lambda: linear_geglu_triton(x, w, b, config)))
            except Exception as e:  # noqa: BLE001 (a setting the GPU cannot compile: shared memory, registers)
                ways.append({"way": f"fused {config}", "error": f"{type(e).__name__}: {str(e)[:200]}"})
        best = min((r for r in ways if "ms" in r and r["way"].startswith("fused")), key=lambda r: r["ms"],
                   default=None)
        entry = {"where": where, "rows": rows, "k": k, "gated": i, "ways": ways,
                 "best_fused": best and best["way"],
                 "best_fused_vs_inductor": best and ways[0]["ms"] / best["ms"]}
        out["shapes"].append(entry)
        print(f"[{where}] {rows}x{k}->{2 * i}: inductor {ways[0]['ms']:.3f} ms, gate kernel {ways[1]['ms']:.3f}, "
              f"GEMM alone {ways[2]['ms']:.3f}, best fused {best and best['ms']:.3f} ({best and best['way']})",
              flush=True)
        for r in ways[3:]:
            print("    ", r.get("way"), f"{r['ms']:.3f} ms" if "ms" in r else r.get("error"), flush=True)
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            write_atomic(os.path.join(a.out, "geglu_gemm.json"), json.dumps(out, indent=1).encode())
    if not a.out:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
