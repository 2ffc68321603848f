"""GEGLU, the gated feed-forward of every diffusers transformer block, with its gate in one Triton kernel.

Why: diffusers' ``GEGLU`` splits its projection with ``chunk(2, dim=-1)`` into two strided halves, so the GELU of
the gate and the product with the other half run as PyTorch's non-vectorised strided kernels, two passes over
memory. In the H200 profile of a ``lean`` ConFiner run (``bench/RESULTS.md``) they are the second and third
largest elementwise kernels: GELU 0.113 s and the product 0.100 s for 473 calls each, 10 % of the run's kernel time
(``bench/layout_audit.py`` traces such operations back to their source lines). :func:`geglu` reads the projection
once and writes the gated half once: ``value * gelu(gate)``, the exact (erf) GELU diffusers uses, computed in float32
and rounded once. On the H200 the kernel takes 0.274 ms where diffusers' two passes take 0.910 ms (32×4096 rows,
2560 wide), and the two kernels' 0.213 s per run became 0.061 s.

On the CPU, under ``torch.compile`` (inductor fuses the same ops itself) or without Triton, :func:`geglu` is
diffusers' own composition. :func:`fuse_geglu` rewrites a model's ``GEGLU`` modules in place (same parameters and
state-dict keys).
"""

from __future__ import annotations

import functools
import types
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .fused_norm import triton_available

TILE = 4096  # elements per program (BLOCK_R rows x BLOCK_C gated columns)


@functools.lru_cache(maxsize=None)
def _kernel():
    """The Triton kernel, defined on first use (so that ``TRITON_INTERPRET=1`` set by a test takes effect)."""
    import triton
    import triton.language as tl

    @triton.jit
    def geglu_kernel(y_ptr, out_ptr, R, I, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (r < R)[:, None] & (c < I)[None, :]
        row = r[:, None].to(tl.int64)
        src = y_ptr + row * (2 * I) + c[None, :]
        value = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        gate = tl.load(src + I, mask=mask, other=0.0).to(tl.float32)
        out = value * (0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476)))
        tl.store(out_ptr + row * I + c[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)

    return geglu_kernel


@functools.lru_cache(maxsize=None)
def _linear_kernel():
    """The projection and the gate in one Triton GEMM: each program computes a tile of the value half and the same
    tile of the gate half (two accumulators over one read of the input rows), then writes ``value * gelu(gate)``."""
    import triton
    import triton.language as tl

    @triton.jit
    def geglu_linear_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, I, K, sxm, swn, som,
                            HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        # programs in groups of GROUP_M row tiles that walk the column tiles together: a group's weight tiles stay
        # in L2 while its rows are read
        pid = tl.program_id(0)
        tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(I, BLOCK_N)
        in_group = GROUP_M * tiles_n
        first_m = (pid // in_group) * GROUP_M
        rows_here = min(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % in_group) % rows_here
        pid_n = (pid % in_group) // rows_here
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        x_at = x_ptr + rm[:, None].to(tl.int64) * sxm + rk[None, :]
        v_at = w_ptr + rn[None, :].to(tl.int64) * swn + rk[:, None]  # [BLOCK_K, BLOCK_N] of W's value rows
        g_at = v_at + I * swn                                         # and of its gate rows
        m_ok, n_ok = (rm < M)[:, None], (rn < I)[None, :]
        value = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                a = tl.load(x_at, mask=m_ok, other=0.0)
                wv = tl.load(v_at, mask=n_ok, other=0.0)
                wg = tl.load(g_at, mask=n_ok, other=0.0)
            else:
                k_ok = rk < K - k * BLOCK_K
                a = tl.load(x_at, mask=m_ok & k_ok[None, :], other=0.0)
                wv = tl.load(v_at, mask=n_ok & k_ok[:, None], other=0.0)
                wg = tl.load(g_at, mask=n_ok & k_ok[:, None], other=0.0)
            value = tl.dot(a, wv, value)
            gate = tl.dot(a, wg, gate)
            x_at += BLOCK_K
            v_at += BLOCK_K
            g_at += BLOCK_K
        if HAS_BIAS:
            value += tl.load(b_ptr + rn, mask=rn < I, other=0.0).to(tl.float32)[None, :]
            gate += tl.load(b_ptr + I + rn, mask=rn < I, other=0.0).to(tl.float32)[None, :]
        out = value * (0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476)))
        tl.store(out_ptr + rm[:, None].to(tl.int64) * som + rn[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=m_ok & n_ok)

    return geglu_linear_kernel


@functools.lru_cache(maxsize=None)
def _persistent_kernel():
    """:func:`_linear_kernel` as a persistent kernel: one program per multiprocessor walks the tiles, reading
    through tensor descriptors (TMA on Hopper), so one tile's epilogue overlaps the next tile's loads."""
    import triton
    import triton.language as tl

    @triton.jit
    def geglu_linear_persistent_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, I, K,
                                       HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                       BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SUBTILE: tl.constexpr,
                                       WARP_SPECIALIZE: tl.constexpr, FLATTEN: tl.constexpr):
        dtype = out_ptr.dtype.element_ty
        x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[2 * I, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
        o_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, I], strides=[I, 1],
                                           block_shape=[BLOCK_M, BLOCK_N // 2 if SUBTILE else BLOCK_N])
        tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(I, BLOCK_N)
        in_group = GROUP_M * tiles_n
        for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, tl.num_programs(0), flatten=FLATTEN,
                             warp_specialize=WARP_SPECIALIZE):
            first_m = (tile // in_group) * GROUP_M
            rows_here = min(tiles_m - first_m, GROUP_M)
            om = (first_m + (tile % in_group) % rows_here) * BLOCK_M
            on = ((tile % in_group) // rows_here) * BLOCK_N
            value = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k in range(tl.cdiv(K, BLOCK_K)):
                a = x_desc.load([om, k * BLOCK_K])
                # a value tile past column I reads gate rows: its outputs fall outside the output and are not stored
                value = tl.dot(a, w_desc.load([on, k * BLOCK_K]).T, value)
                gate = tl.dot(a, w_desc.load([I + on, k * BLOCK_K]).T, gate)
            if HAS_BIAS:
                rn = on + tl.arange(0, BLOCK_N)
                value += tl.load(b_ptr + rn, mask=rn < I, other=0.0).to(tl.float32)[None, :]
                gate += tl.load(b_ptr + I + rn, mask=rn < I, other=0.0).to(tl.float32)[None, :]
            out = value * (0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476)))
            if SUBTILE:  # two half-width stores: half the staging memory
                left, right = tl.split(tl.permute(tl.reshape(out, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
                o_desc.store([om, on], left.to(dtype))
                o_desc.store([om, on + BLOCK_N // 2], right.to(dtype))
            else:
                o_desc.store([om, on], out.to(dtype))

    return geglu_linear_persistent_kernel


class LinearConfig(NamedTuple):
    """One tiling of :func:`geglu_linear_triton`: the tile (rows, gated columns, reduction step), the row tiles a
    group walks together, warps and pipelined loop stages; persistent (tensor descriptors, ``per_sm`` programs a
    multiprocessor, the store in two halves with ``subtile``, Triton's warp specialisation) or one program a
    tile."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    warps: int = 8
    stages: int = 3
    persistent: bool = False
    per_sm: int = 1
    subtile: bool = False
    warp_specialize: bool = False


#: the tilings ``bench/geglu_probe.py`` sweeps (H200, call AB: one program a tile lost to cuBLAS + the gate kernel on
#: all eight shapes, 128x64x64 with 4 warps or 128x128x64 with 8 the fastest)
LINEAR_SWEEP = (tuple(LinearConfig(bm, bn, bk, 8, warps, 3) for bm, bn, bk, warps in ((128, 64, 64, 4),
                                                                                    (128, 128, 64, 8),
                                                                                    (128, 128, 32, 8)))
                + tuple(LinearConfig(bm, bn, bk, 8, warps, stages, True, per_sm, subtile, ws)
                        for bm, bn, bk, warps, per_sm in ((128, 128, 64, 8, 1), (128, 64, 64, 4, 1),
                                                          (128, 64, 64, 4, 2), (128, 128, 32, 8, 1),
                                                          (128, 64, 64, 8, 1), (64, 128, 64, 4, 2))
                        for stages in (3, 4) for subtile, ws in ((False, False), (True, False), (True, True))))
LINEAR_CONFIG = LinearConfig(128, 128, 64, 8, 3, True, 1, True, False)


def linear_config(m: int, k: int, i: int) -> LinearConfig:
    """The tiling for ``m`` rows of width ``k`` into ``i`` gated columns."""
    return LINEAR_CONFIG


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


@functools.lru_cache(maxsize=None)
def _descriptor_scratch() -> None:
    """Tensor descriptors made inside a kernel need scratch memory: from PyTorch's allocator (also inside a CUDA
    graph's capture), on the current GPU."""
    import triton

    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")

    triton.set_allocator(alloc)


def geglu_linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        config: LinearConfig | None = None) -> torch.Tensor:
    """``value * gelu(gate)`` of ``F.linear(x, weight, bias)`` = [..., 2I] in one kernel: float32 accumulation,
    bias and gate, rounded once to ``x``'s dtype. ``weight`` is [2I, K] (value rows first, as diffusers' GEGLU
    splits its projection)."""
    k = x.shape[-1]
    i = weight.shape[0] // 2
    rows = x.reshape(-1, k)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    m = rows.shape[0]
    out = torch.empty(*x.shape[:-1], i, device=x.device, dtype=x.dtype)
    c = config or linear_config(m, k, i)
    tiles = -(-m // c.block_m) * -(-i // c.block_n)
    b = bias if bias is not None else weight
    if c.persistent:
        rows, weight = rows.contiguous(), weight.contiguous()   # descriptors: rows of exactly K elements
        _descriptor_scratch()
        grid = (min(tiles, c.per_sm * _multiprocessors(x.device)),)
        _persistent_kernel()[grid](rows, weight, b, out, m, i, k, HAS_BIAS=bias is not None, BLOCK_M=c.block_m,
                                   BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m, SUBTILE=c.subtile,
                                   WARP_SPECIALIZE=c.warp_specialize, FLATTEN=c.warp_specialize,
                                   num_warps=c.warps, num_stages=c.stages)
    else:
        _linear_kernel()[(tiles,)](rows, weight, b, out, m, i, k, rows.stride(0), weight.stride(0), i,
                                   HAS_BIAS=bias is not None, EVEN_K=k % c.block_k == 0, BLOCK_M=c.block_m,
                                   BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m, num_warps=c.warps,
                                   num_stages=c.stages)
    return out


def geglu_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """diffusers' ``GEGLU``: its projection, then the gate."""
    return geglu_reference(F.linear(x, weight, bias))


def column_block(i: int) -> int:
    """The widest power of two up to 1024 that divides ``i`` (no masked lanes: the feed-forwards of SD-family
    blocks are 1280, 2560 or 5120 wide), else the power of two that covers ``i``, up to 1024."""
    block = 1024
    while block > 16 and i % block:
        block //= 2
    return block if i % block == 0 else min(1024, 1 << max(0, (i - 1).bit_length()))


def geglu_triton(projected: torch.Tensor) -> torch.Tensor:
    """``value * gelu(gate)`` for ``projected`` = [..., 2I] (contiguous: a linear layer's output)."""
    projected = projected.contiguous()
    i = projected.shape[-1] // 2
    rows = projected.numel() // (2 * i)
    out = torch.empty(*projected.shape[:-1], i, device=projected.device, dtype=projected.dtype)
    block_c = column_block(i)
    block_r = max(1, TILE // block_c)
    grid = (-(-rows // block_r), -(-i // block_c))
    _kernel()[grid](projected, out, rows, i, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)
    return out


def geglu_reference(projected: torch.Tensor) -> torch.Tensor:
    """diffusers' ``GEGLU`` after its projection, in plain PyTorch ops."""
    value, gate = projected.chunk(2, dim=-1)
    return value * F.gelu(gate)


def use_triton(x: torch.Tensor) -> bool:
    # is_compiling first: under torch.compile dynamo never traces triton_available's lru_cache (a warning per block)
    return (not torch.compiler.is_compiling() and x.is_cuda
            and x.dtype in (torch.float16, torch.bfloat16, torch.float32) and x.shape[-1] % 2 == 0
            and triton_available())


def geglu(projected: torch.Tensor) -> torch.Tensor:
    return geglu_triton(projected) if use_triton(projected) else geglu_reference(projected)


#: the projection and the gate in one GEMM (:func:`geglu_linear_triton`) wherever the gate kernel would run; inside
#: compiled blocks too (as ``confiner::geglu_linear``, which inductor keeps whole), else inductor fuses the gate
#: after its own GEMM
GATE_IN_GEMM = True
GEGLU_LINEAR_OP = None


def register_op():
    """Register ``confiner::geglu_linear`` once (where Triton is available): an op torch.compile keeps opaque, so a
    compiled graph calls the kernel."""
    global GEGLU_LINEAR_OP
    if GEGLU_LINEAR_OP is None and triton_available():
        @torch.library.custom_op("confiner::geglu_linear", mutates_args=())
        def op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            return geglu_linear_triton(x, weight, bias)

        @op.register_fake
        def _(x, weight, bias):
            return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)

        GEGLU_LINEAR_OP = torch.ops.confiner.geglu_linear
    return GEGLU_LINEAR_OP


def compiled_geglu() -> tuple:
    """What a compiled graph's GEGLUs depend on beyond its inputs: part of a kept block's key."""
    return (GATE_IN_GEMM and GEGLU_LINEAR_OP is not None, LINEAR_CONFIG)


def gemm_takes(x: torch.Tensor, proj: nn.Module) -> bool:
    """Whether :func:`geglu_linear_triton` computes this GEGLU: a plain linear projection (not one wrapped by an
    adapter), half precision on a GPU."""
    return (GATE_IN_GEMM and type(proj) is nn.Linear and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and proj.weight.dtype == x.dtype and proj.weight.shape[0] % 4 == 0 and x.shape[-1] % 8 == 0)
    # (rows of the input, the weight and the output 16-byte aligned, as tensor descriptors need)


def fused_geglu_forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``diffusers.models.activations.GEGLU.forward`` with the gate fused into the projection's GEMM where
    :func:`gemm_takes`, else after it (its deprecated ``scale`` is ignored there too)."""
    proj = self.proj
    if gemm_takes(hidden_states, proj):
        if torch.compiler.is_compiling():
            if GEGLU_LINEAR_OP is not None:
                return GEGLU_LINEAR_OP(hidden_states, proj.weight, proj.bias)
        elif triton_available():
            return geglu_linear_triton(hidden_states, proj.weight, proj.bias)
    return geglu(proj(hidden_states))


def fuse_geglu(model: nn.Module) -> int:
    """Rewrite every diffusers ``GEGLU`` of ``model`` in place; returns how many."""
    register_op()
    done = 0
    for module in model.modules():
        if type(module).__name__ == "GEGLU" and isinstance(getattr(module, "proj", None), nn.Linear):
            module.forward = types.MethodType(fused_geglu_forward, module)
            done += 1
    return done
