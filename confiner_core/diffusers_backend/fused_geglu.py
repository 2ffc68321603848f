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


def fused_geglu_forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``diffusers.models.activations.GEGLU.forward`` with the gate fused (its deprecated ``scale`` is ignored
    there too)."""
    return geglu(self.proj(hidden_states))


def fuse_geglu(model: nn.Module) -> int:
    """Rewrite every diffusers ``GEGLU`` of ``model`` in place; returns how many."""
    done = 0
    for module in model.modules():
        if type(module).__name__ == "GEGLU" and isinstance(getattr(module, "proj", None), nn.Linear):
            module.forward = types.MethodType(fused_geglu_forward, module)
            done += 1
    return done
