"""Every attention shape of the SD-scale and Wan-scale benchmarks under every attention backend the machine has:
PyTorch's SDPA kernels (cuDNN, flash, memory-efficient; each alone, no fallback), ``flash-attn-4`` through the
library's own ``flash4`` route (``flash4_attention.flash4_sdpa``), the library's Triton kernel for attention over frames
(``frames``: sequences of up to 64 tokens) and SageAttention (``sageattn``, INT8 QK, an approximation) where
installed, and ``shortkeys``: a candidate Triton kernel kept here (not in the library) for attention over at most 128
keys with any number of queries, as SD's cross-attention over 77 text tokens is (cuDNN took 0.215 ms at 60 TFLOP/s
for SD's top level, about a fifth of the rate its self-attention reaches): one program per tile of queries and head
holds every key, so there is no loop over keys to pipeline. Per shape and backend: median milliseconds of a call,
TFLOP/s, the first call's seconds (FA4 and
SageAttention compile their kernels then) and the largest difference from PyTorch's flash kernel's output (cuDNN's
where flash does not take the shape), so a faster backend is also seen to compute the same attention.

    python bench/attention_probe.py --out $OUT/attention.json          # on the GPU
    python bench/attention_probe.py --device cpu --tiny                # CPU smoke run (math backend; the
                                                                       # shortkeys kernel under Triton's interpreter)

Written after every shape, so a call cut short keeps what it measured; ``--deadline`` skips the shapes it would
not finish.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

if "--tiny" in sys.argv and "--device" in sys.argv and "cpu" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")   # before Triton is imported: the shortkeys kernel on the CPU

import torch  # noqa: E402

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
    ("sd cross 32² (d 80)", 32, 8, 1024, 77, 80),
    ("sd cross 16² (d 160)", 32, 8, 256, 77, 160),
    ("control cross 64² (d 40)", 16, 8, 4096, 77, 40),
    ("modelscope cross 64² (5 × d 64)", 32, 5, 4096, 77, 64),
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
    if device.type == "cuda" and FA.registered_op() is not None:
        def frames(q, k, v):
            if not FA.covers(q, k, v):
                raise ValueError(f"more than {FA.MAX_TOKENS} tokens, a head dim over {FA.MAX_HEAD_DIM} or a tile "
                                 f"over {FA.MAX_TILE}")
            return FA.frame_sdpa(q, k, v)
        out["frames"] = frames   # the library's Triton kernel for attention over frames
    sage = sage_function()
    if sage is not None:
        out["sage"] = lambda q, k, v: sage(q, k, v, tensor_layout="HND", is_causal=False)
    out.update(short_key_backends(device))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Attention over a few keys in one pass: the candidate ``shortkeys`` backend (not in the library until it wins here)

try:
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 (any import failure means: no Triton)
    triton = None

SHORT_KEYS = 128                              # keys one program holds (K and V tiles of 128 x head dim)
SHORT_KEY_CONFIGS = ((64, 4), (128, 4), (128, 8))   # (query rows a program, warps)
SHORT_KEY_TILE = 128 * 64                     # query rows x padded head dim a program holds at most

if triton is not None:
    @triton.jit
    def short_key_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, heads, q_len, k_len, head_dim, scale_log2,
                                   sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos,
                                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """softmax(Q Kᵀ · scale) V for one tile of BLOCK_M queries of one (batch, head) against all its keys
        (k_len <= BLOCK_N): QKᵀ and the softmax in float32 (exp2 of log2-scaled scores), PV from the rounded
        weights as flash attention rounds them, the 1 / sum applied to the output."""
        bh = tl.program_id(1)
        b = (bh // heads).to(tl.int64)
        h = (bh % heads).to(tl.int64)
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.arange(0, BLOCK_N)
        d = tl.arange(0, BLOCK_D)
        q_mask = (rm < q_len)[:, None] & (d < head_dim)[None, :]
        kv_mask = (rn < k_len)[:, None] & (d < head_dim)[None, :]
        q = tl.load(q_ptr + b * sqb + h * sqh + rm[:, None].to(tl.int64) * sqs + d[None, :], mask=q_mask, other=0.0)
        k = tl.load(k_ptr + b * skb + h * skh + rn[:, None] * sks + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + b * svb + h * svh + rn[:, None] * svs + d[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), out_dtype=tl.float32) * scale_log2
        scores = tl.where((rn < k_len)[None, :], scores, float("-inf"))
        p = tl.exp2(scores - tl.max(scores, axis=1)[:, None])
        out = tl.dot(p.to(v.dtype), v, out_dtype=tl.float32) / tl.sum(p, axis=1)[:, None]
        tl.store(o_ptr + b * sob + h * soh + rm[:, None].to(tl.int64) * sos + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=q_mask)
else:
    short_key_attention_kernel = None


def short_key_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_m: int,
                        warps: int) -> torch.Tensor:
    """SDPA (no mask, default scale) for [B, H, N, D] inputs with unit last strides and at most SHORT_KEYS keys;
    the output is [B, H, Nq, D] over [B, Nq, H, D] memory, as PyTorch's kernels write it."""
    batch, heads, q_len, head_dim = query.shape
    k_len = key.shape[2]
    block_d = FA.tile_width(head_dim)
    if k_len > SHORT_KEYS or block_m * block_d > SHORT_KEY_TILE:
        raise ValueError(f"more than {SHORT_KEYS} keys or a query tile over {SHORT_KEY_TILE} "
                         f"({block_m} x {block_d})")
    out = torch.empty(batch, q_len, heads, head_dim, device=query.device, dtype=query.dtype).transpose(1, 2)
    strides = [*query.stride()[:3], *key.stride()[:3], *value.stride()[:3], *out.stride()[:3]]
    grid = (-(-q_len // block_m), batch * heads)
    short_key_attention_kernel[grid](query, key, value, out, heads, q_len, k_len, head_dim,
                                     head_dim ** -0.5 * math.log2(math.e), *strides, BLOCK_M=block_m,
                                     BLOCK_N=FA.tile_width(k_len), BLOCK_D=block_d, num_warps=warps)
    return out


def short_key_backends(device: torch.device) -> dict:
    """``shortkeys_m{rows}_w{warps}`` for each of SHORT_KEY_CONFIGS, where Triton runs here (the GPU, or its
    interpreter on the CPU)."""
    if short_key_attention_kernel is None or (device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1"):
        return {}
    return {f"shortkeys_m{m}_w{w}": (lambda q, k, v, m=m, w=w: short_key_attention(q, k, v, m, w))
            for m, w in SHORT_KEY_CONFIGS}


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
    ap.add_argument("--only", nargs="*", default=None, metavar="WORD",
                    help="only the shapes whose name contains one of these words (e.g. cross)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    started = time.perf_counter()
    device = torch.device(a.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    fns = backends(device)
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "dtype": str(dtype).replace("torch.", ""), "backends": list(fns), "shapes": {}, "skipped": []}
    for shape in (TINY if a.tiny else SHAPES):
        if a.only is not None and not any(word in shape[0] for word in a.only):
            continue
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
