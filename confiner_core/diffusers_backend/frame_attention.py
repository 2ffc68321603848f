"""Attention over the frames of each pixel (16-64 tokens per sequence) in one Triton kernel.

Why: the motion modules of AnimateDiff and ModelScope's temporal transformers attend over the 16 frames of every
latent pixel: tens of thousands of sequences of 16 tokens, head dims 40-160. The kernels PyTorch's SDPA offers are
built for long sequences and tile 64-128 query rows, so at 16 tokens they run far from the memory bound: on the H200
the memory-efficient kernel, the fastest of them there, takes 0.73 ms for AnimateDiff's top level with cfg
([8192, 8, 16, 40], 336 MB of reads and writes: 0.1 ms at the memory's rate), and such calls were 4.4 % of a
``fast`` ConFiner run's kernel time (``bench/RESULTS.md``). Here one program computes one (sequence, head) whole:
QKᵀ, a float32 softmax and PV, reading Q, K and V once and writing the output once, in the layout that the
transformer's next reshape reads without a copy ([B, S, H, D] in memory, as SDPA's own kernels write it). On the
H200: 0.325 ms for that shape (2.2x), 0.157 against 0.481 ms for ModelScope's top level (3.1x); in a ``fast``
ConFiner run 338 calls took 0.025 s where PyTorch's kernels took 0.069 s for 210 of them and cuDNN's the rest.

:func:`frame_sdpa` is a drop-in ``scaled_dot_product_attention`` that takes the shapes the kernel covers (no mask,
no dropout, not causal, query and key of one length up to :data:`MAX_TOKENS`, head dims up to :data:`MAX_HEAD_DIM`,
half precision, no gradient) and leaves every other call to PyTorch's SDPA. The kernel is a
``torch.library.triton_op``, so ``torch.compile`` keeps it inside compiled blocks.
"""

from __future__ import annotations

import os

import torch

MAX_TOKENS = 64
MAX_HEAD_DIM = 256
# the largest tile (tokens x head dim, each padded to a power of two) one program holds: Q, K and V of 32 x 256 half
# floats take 48 KB, which consumer GPUs' shared memory also holds; larger tiles go to PyTorch's SDPA
MAX_TILE = 32 * 256
# PyTorch's own, taken at import: the calls the kernel does not cover go there, past any other routing of
# ``scaled_dot_product_attention`` (flash4's), since over frames the kernel choice is the setting's
_SDPA = torch.nn.functional.scaled_dot_product_attention

try:
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 (any import failure means: no Triton, and PyTorch's SDPA throughout)
    triton = None

if triton is not None:
    # at module level: a compiled block kept on disk (:mod:`.precompiled`) names the kernel by module and name
    @triton.jit
    def frame_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, heads, tokens, head_dim, scale,
                               sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos,
                               BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
        pid = tl.program_id(0)
        b = (pid // heads).to(tl.int64)
        h = (pid % heads).to(tl.int64)
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, BLOCK_D)
        mask = (s < tokens)[:, None] & (d < head_dim)[None, :]
        q = tl.load(q_ptr + b * sqb + h * sqh + s[:, None] * sqs + d[None, :], mask=mask, other=0.0)
        k = tl.load(k_ptr + b * skb + h * skh + s[:, None] * sks + d[None, :], mask=mask, other=0.0)
        v = tl.load(v_ptr + b * svb + h * svh + s[:, None] * svs + d[None, :], mask=mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), out_dtype=tl.float32) * scale
        scores = tl.where((s < tokens)[None, :], scores, float("-inf"))
        p = tl.exp(scores - tl.max(scores, axis=1)[:, None])
        weights = p / tl.sum(p, axis=1)[:, None]
        out = tl.dot(weights.to(v.dtype), v, out_dtype=tl.float32)
        tl.store(o_ptr + b * sob + h * soh + s[:, None] * sos + d[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=mask)
else:
    frame_attention_kernel = None


def tile_width(n: int) -> int:
    """The power of two covering ``n``, at least 16 (``tl.dot``'s smallest tile)."""
    return max(16, 1 << (n - 1).bit_length())


def frame_attention_triton(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(Q Kᵀ · scale) V for [B, H, S, D] inputs (any strides with the last one 1); the output is [B, H, S, D]
    over [B, S, H, D] memory."""
    from torch.library import wrap_triton

    batch, heads, tokens, head_dim = query.shape
    out = torch.empty(batch, tokens, heads, head_dim, device=query.device, dtype=query.dtype).transpose(1, 2)
    strides = [*query.stride()[:3], *key.stride()[:3], *value.stride()[:3], *out.stride()[:3]]
    # Triton's interpreter (the tests' CPU runs) makes the kernel a plain Python function, which wrap_triton refuses
    # before PyTorch 2.13; it only ever runs eagerly, where wrap_triton would hand back the kernel itself
    kernel = frame_attention_kernel if _interpreted() else wrap_triton(frame_attention_kernel)
    kernel[(batch * heads,)](query, key, value, out, heads, tokens, head_dim, scale, *strides,
                             BLOCK_S=tile_width(tokens), BLOCK_D=tile_width(head_dim), num_warps=4)
    return out


def _frame_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    # looked up at each call, so the tests can watch the kernel by replacing the module's function
    return frame_attention_triton(query, key, value, scale)


# :func:`frame_attention_triton` as the custom operator ``confiner::frame_attention``, which ``torch.compile`` traces
# as one call and inductor keeps as the user kernel it is; None until :func:`registered_op`.
frame_attention_op = None


def registered_op():
    """The operator, registered on the first call: registering imports inductor (over a second), which checking a
    request and every run without this kernel do without. The speed settings call it where they set attention over
    frames, before any forward (dynamo does not trace a registration). None without Triton, or in PyTorch before 2.6
    (no ``triton_op``): the kernel is not used."""
    global frame_attention_op
    if frame_attention_op is None and frame_attention_kernel is not None and hasattr(torch.library, "triton_op"):
        frame_attention_op = torch.library.triton_op("confiner::frame_attention", _frame_attention, mutates_args=())
    return frame_attention_op


def covers(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, enable_gqa=False) -> bool:
    """Whether the kernel takes this call: self-length attention over a few tokens (a tile of at most
    :data:`MAX_TILE`), no mask, no dropout, no gradient, half precision (its products round as flash attention's
    do)."""
    tensors = (query, key, value)
    return (attn_mask is None and dropout_p == 0.0 and not is_causal and not enable_gqa
            and all(t.dim() == 4 and t.stride(-1) == 1 and t.dtype == query.dtype and t.device == query.device
                    for t in tensors)
            and query.shape == key.shape == value.shape and query.shape[2] <= MAX_TOKENS
            and query.shape[3] <= MAX_HEAD_DIM and tile_width(query.shape[2]) * tile_width(query.shape[3]) <= MAX_TILE
            and query.dtype in (torch.float16, torch.bfloat16)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def frame_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``scaled_dot_product_attention`` through the frame kernel where :func:`covers` holds (once
    :func:`registered_op` registered it), else PyTorch's."""
    if (frame_attention_op is not None and covers(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)
            and (query.is_cuda or _interpreted())):
        return frame_attention_op(query, key, value, query.shape[-1] ** -0.5 if scale is None else float(scale))
    return _SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                 enable_gqa=enable_gqa)


def _interpreted() -> bool:
    """Triton's interpreter (``TRITON_INTERPRET=1``, the tests' way to run the kernel on the CPU)."""
    return os.environ.get("TRITON_INTERPRET") == "1"
