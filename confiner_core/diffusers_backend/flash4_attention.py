"""flash-attn-4 (``flash_attn.cute``: CuTe-DSL kernels JIT-compiled for Hopper and Blackwell), where it is installed,
for the attention shapes where it beats PyTorch's kernels.

Why: on the H200 (``bench/gpu_results/h200_attention_probe.json``) FA4 runs Wan 1.3B's self-attention (32760 tokens,
d 128) at 636 TFLOP/s against cuDNN's 544, Wan 14B's at 623 against 547, and SD's 64² self-attention (4096 tokens,
d 40) in 2.14 against 2.36 ms; it is slower at 1024 tokens and below, on cross-attention (77 or 512 keys) and over
frames (16 tokens). Self-attention is 58 % of a Wan forward. So the ``fastest`` route takes self-attention of at
least :data:`MIN_TOKENS` query and key tokens and leaves the rest to PyTorch's SDPA (cuDNN first); the ``flash4``
route takes every shape FA4 supports (the attention probe's way to time it alone).

FA4 is called through the custom operator ``confiner::flash4_attention``, so ``torch.compile`` keeps it inside
compiled blocks as one opaque call (dynamo cannot trace the CuTe DSL) and a block kept on disk names it by that
operator, registered when this module is imported. The package itself is imported at the first call it takes, not
before: importing it (CUTLASS's DSL, quack) took 1.2 s of a process start on the H200's host with bytecode caches,
5.1 s without, so a process whose shapes all stay with PyTorch (SD's) never pays it. Its kernels, JIT-compiled at
their first call (2.6 s for Wan's shape), are kept on disk where the settings name a compile folder
(:func:`~.precompiled.keep_flash4_kernels_in`: 0.01 s in the next process).
"""

from __future__ import annotations

import functools
import importlib.util

import torch

#: the fewest query and key tokens the ``fastest`` route hands to FA4. Wan's 32760-token self-attention: 636 against
#: cuDNN's 544 TFLOP/s, 10.6 % off its forward (528.8 -> 472.6 ms). SD's 4096 tokens (d 40): 2.14 against 2.36 ms a
#: call, 3 ms off a 77 ms batch-32 forward, and no difference in a ConFiner run (best 1.627 s with, 1.622 s without;
#: max 1.578 against 1.577 s), against 1.2-5.1 s of import at every start: left to cuDNN. Slower at 1024 tokens.
MIN_TOKENS = 8192
MAX_HEAD_DIM = 256
# PyTorch's own, taken at import: the calls the routes do not take go there (inside the SDPA backend order in force)
_SDPA = torch.nn.functional.scaled_dot_product_attention


@functools.lru_cache(maxsize=None)
def installed() -> bool:
    """Whether the ``flash-attn-4`` package is installed (found, not imported: :func:`flash4_function` imports it)."""
    try:
        return importlib.util.find_spec("flash_attn.cute") is not None
    except Exception:  # noqa: BLE001 (a ``flash_attn`` of another kind, broken on import)
        return False


@functools.lru_cache(maxsize=None)
def flash4_function():
    """``flash_attn.cute.flash_attn_func`` (the ``flash-attn-4`` package), imported at the first call, or None when
    it is not installed or does not import."""
    try:
        from flash_attn.cute import flash_attn_func
    except Exception:  # noqa: BLE001 (not installed, or its CUDA libraries are missing)
        return None
    return flash_attn_func


@functools.lru_cache(maxsize=None)
def gpu_supported() -> bool:
    """Whether this machine's GPU is one FA4 is built for: Hopper (sm 90) or Blackwell (sm 100, 120). On older
    GPUs the package may import but its kernels do not run; the routes then leave every call to PyTorch."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


def usable() -> bool:
    """Whether the routes may hand calls to FA4: the package is installed and the GPU is one it is built for."""
    return installed() and gpu_supported()


@torch.library.custom_op("confiner::flash4_attention", mutates_args=())
def flash4_bshd(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(Q Kᵀ · scale) V by FA4, in its own layout: [B, S, H, D] in, a contiguous [B, S, H, D] out; by
    PyTorch's SDPA where the package, found installed, does not import."""
    fa4 = flash4_function()
    if fa4 is None:
        return _SDPA(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                     scale=scale).transpose(1, 2).contiguous()
    out = fa4(query, key, value, softmax_scale=scale, causal=False)
    out = out[0] if isinstance(out, tuple) else out  # (out, lse) in some releases
    return out.contiguous()


@flash4_bshd.register_fake
def _(query, key, value, scale):
    return query.new_empty(query.shape)


def covers(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, enable_gqa=False,
           min_tokens: int = 0) -> bool:
    """Whether FA4 takes this call: no mask, no dropout, not causal, one head count and head dim throughout (a
    multiple of 8 up to :data:`MAX_HEAD_DIM`), half precision on CUDA, no gradient, and at least ``min_tokens``
    query and key tokens."""
    tensors = (query, key, value)
    d = query.shape[-1]
    return (attn_mask is None and dropout_p == 0.0 and not is_causal and not enable_gqa
            and all(t.dim() == 4 and t.is_cuda and t.dtype == query.dtype and t.shape[-1] == d
                    and t.shape[1] == query.shape[1] for t in tensors)
            and query.dtype in (torch.float16, torch.bfloat16) and d % 8 == 0 and d <= MAX_HEAD_DIM
            and key.shape[2] == value.shape[2] and min(query.shape[2], key.shape[2]) >= min_tokens
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def _route(min_tokens, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    if covers(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa, min_tokens):
        # SDPA's [B, H, S, D] as transposed views of FA4's [B, S, H, D] (diffusers' processors make them so: no
        # copies), and the output back the same way
        out = flash4_bshd(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                          query.shape[-1] ** -0.5 if scale is None else float(scale))
        return out.transpose(1, 2)
    return _SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                 enable_gqa=enable_gqa)


def flash4_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``scaled_dot_product_attention`` through FA4 wherever :func:`covers` holds, else PyTorch's."""
    return _route(0, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def long_flash4_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                     enable_gqa=False):
    """``scaled_dot_product_attention`` through FA4 for the long shapes where it is the fastest (at least
    :data:`MIN_TOKENS` query and key tokens), else PyTorch's."""
    return _route(MIN_TOKENS, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
