"""GroupNorm (+ the SiLU after it, + the time-embedding add before it) in Triton kernels that keep the layout.

Why: the profile of an eager ConFiner run on the H200 spends 17.5 % of kernel time in GroupNorm, 29.7 % in
elementwise work and 8.0 % in NCHW<->NHWC transforms. PyTorch's CUDA GroupNorm makes a channels_last input
contiguous (NCHW) first and returns NCHW, so with channels_last convolutions every norm costs two layout copies; the
SiLU after it and the ``x + temb`` before it (diffusers' ``ResnetBlock2D``) are one more read and write each.
:func:`group_norm_act` reads the input twice (statistics, then normalise) and writes once, in the input's own
layout: NCHW-contiguous, or channels-last-like (channel stride 1, the other dims dense: ``channels_last``,
``channels_last_3d``, and the ``[B, C, S]`` transpose diffusers' VAE attention feeds its norm).

The statistics are shifted sums in float32 (the shift is the group's first element, so the variance does not cancel
for activations whose mean is large next to their spread), split over several programs per group and combined by the
normalising kernel.

A channels-last input whose groups are narrow takes a second set of kernels, :func:`group_norm_rows` ("rows"):
every program reads whole pixel rows (all channels, contiguous) instead of one group's few channels at a stride of C,
then one small kernel turns per-channel sums into per-channel scale and offset. A per-group program reading less than
one 32-byte memory sector of each pixel wastes the rest of it: the SD VAE decoder's 128 channels in 32 groups are 8
bytes of every 256. On the H200 (fp16, each norm timed inside a CUDA graph, ``bench/gpu_results/h200_norm_probe.json``)
the rows normalise the decoder's 512x512 layers in 0.22 ms against 1.53 ms per group and 1.07 ms by inductor, and win
up to 40 bytes a group; at 80 bytes (1280 channels) the per-group kernels win. :func:`rows_win` is that rule.

Under ``torch.compile`` inductor fuses the plain ops itself, and that wins where groups are wide at 32 frames
(call X, each norm inside a CUDA graph: the UNets' 32x32 0.058 ms against 0.064 in rows and 0.090 per group, their
16x16 0.029 against 0.040 per group). Where a group is narrower than a sector the row kernels beat it (64x64 at 32
frames: 0.106 against 0.118 ms). Its norm runs one program per (sample, group), too few at the VAE's batch of 4
frames (128 programs for 132 multiprocessors: 1.06 ms against 0.22 ms), at the control expert's 16 (0.068 against
0.057 ms) and at ModelScope's temporal norms over 2 samples (0.148 against 0.102 ms); and on 8x8 the per-group
kernels beat it (0.013 against 0.016 ms). There the graph calls the kernels as one opaque op
(``confiner::group_norm_act``, :func:`compiled_take`): the SD VAE decode of 512x512x16 under ``fast`` took 0.100 s
instead of 0.129 s, and 0.091 s once the VAE's own resnet blocks were fused too (``h200_vae_decode_profile.json``).
On the CPU or without Triton :func:`group_norm_act` is the plain PyTorch composition, so outputs agree with eager
within rounding.

:func:`fuse_group_norms` rewrites a diffusers model in place: ``ResnetBlock2D`` norms take the SiLU and the
time-embedding add, ``nn.Sequential(GroupNorm, SiLU, ...)`` (ModelScope's temporal convolutions, whose norms also
take the previous convolution's bias) and the models' ``conv_norm_out`` + ``conv_act`` pairs become one fused norm,
every other ``nn.GroupNorm`` a layout-keeping one; and
``Transformer2DModel`` returns its NHWC result as a channels_last view instead of copying it to NCHW.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F
from torch import nn

#: programs the statistics kernel aims for (a few per multiprocessor: an H200 has 132)
TARGET_PROGRAMS = 1024
MAX_SPLIT = 256
TILE = 2048  # elements per program and loop iteration (BLOCK_S x BLOCK_C)
ROW_TILE = 4096  # the same for the row kernels (whole pixels, read as rows of channels: :func:`row_blocks`)
# programs the row kernels aim for in all: about one wave (2.7 a multiprocessor of an H200, which holds 2-3 row
# programs at once). H200, each norm timed in a CUDA graph (``norm_probe.py --sweep``, call Y): the 13 shapes 1.546 ms
# with 352, 1.542 with 396, 1.593 with 528, 1.597 with 1024 (the setting until then), 1.628 with 264; the UNets'
# [32, 320, 64, 64] 0.094 against 0.106 ms with 1024 (704 launched, two waves), ModelScope's [2, 320, 1024, 64] 0.096
# against 0.112
ROW_PROGRAMS = 352
MAX_ROW_BLOCKS = 16  # rows a pixel at most in the row kernels (one unrolled reduction each)
# warps of a row program: 4 were faster than 8 on 12 of 13 shapes (H200, ``norm_probe.py --sweep``, e.g. the
# decoder's [4, 128, 512, 512] 0.316 against 0.335 ms)
ROW_WARPS = 4
# loop iterations a row program keeps in flight (Triton's software pipelining of the loads; 1: none). A row program
# holds a few [tile] fp32 tensors, so only two or three fit a multiprocessor, and one tile in flight each is less
# than a multiprocessor needs in flight to draw the H200's bandwidth: 3 stages were the fastest or within the
# probe's spread on 11 of 13 shapes (``norm_probe.py --sweep``, 2026-12-03: the 13 shapes 2.94 ms against 3.21 ms
# without pipelining; the decoder's [4, 256, 512, 512] 0.559 against 0.648 ms)
ROW_STAGES = 3
# tiles a row program reads at least: its statistics end in 2 x M masked sums over a whole tile (M rows a pixel) and
# C partial sums written per program, which cost as much as a few tiles (at 1280 channels one tile holds 3 pixels:
# a 16x16 sample's 256 pixels had been spread over 29 programs of 3 tiles). H200, each norm timed inside a CUDA
# graph (``norm_probe.py --sweep``, call W): the 13 shapes 1.59 ms with 16 tiles, 1.65 with 8, 1.81 with 1; the
# UNet's [32, 1280, 16, 16] 0.056 against 0.123 ms, the control expert's [16, 320, 64, 64] 0.058 against 0.071
ROW_MIN_TILES = 16
# partial sums the row kernels' scale step reads at once (split x channels of a group): all of a norm over 2 samples'
# ~500 splits in two steps instead of sixteen in turn
SCALE_TILE = 4096
SECTOR_BYTES = 32  # the GPU's memory transaction: a per-group program reading less of a pixel wastes the rest
#: the row kernels take a channels-last norm whose group holds fewer bytes of a pixel than this (:func:`rows_win`).
#: H200, each norm timed in a CUDA graph (call W): rows faster at 32 bytes (the VAE's [4, 512, 256, 256] 0.224 against
#: 0.302 ms per group) and at 40 (ModelScope's temporal norms at 640 channels 0.068 against 0.095), per group faster at
#: 80 (the UNet's [32, 1280, 16, 16] 0.043 against 0.056). Timed one call at a time from the host (launch costs
#: included) the rows had lost at 32 bytes, hence a sector until then.
ROWS_BELOW_GROUP_BYTES = 2 * SECTOR_BYTES
#: channels-last inputs take the row kernels: None by :func:`rows_win`, True / False always / never (what
#: ``bench/norm_probe.py`` compares)
ROWS_FOR_CHANNELS_LAST: bool | None = None
#: inside a graph torch.compile traces, norms that :func:`compiled_take` picks call the kernels as one opaque op
#: (``confiner::group_norm_act``) instead of inductor's fusion of the plain ops; False: inductor everywhere
KERNELS_UNDER_COMPILE = True
#: inductor's norm has one program per (sample, group): fewer than this, and the kernels take the norm (H200, call X,
#: in CUDA graphs: the control expert's 16 frames at 64x64, 512 programs: inductor 0.068 ms, the row kernels 0.057)
COMPILED_PROGRAMS_BELOW = 1024
#: and they take it where a sample has at most this many pixels: 8x8 (0.013 against inductor's 0.016 ms at 32
#: frames); at 16x16 inductor won (0.029 against 0.040; 256 until call X, whose probe first timed inductor there)
COMPILED_PIXELS_UP_TO = 64


# ------------------------------------------------------------------------------------------------- kernels

@functools.lru_cache(maxsize=None)
def _kernels():
    """The Triton kernels, defined on first use (so that ``TRITON_INTERPRET=1`` set by a test takes effect)."""
    import triton
    import triton.language as tl

    @triton.jit
    def gn_stats(x_ptr, add_ptr, part_ptr, C, S, G, CG, sN, sC, sS, s_per_prog, SPLIT,
                 HAS_ADD: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0)                     # n * G + g
        split = tl.program_id(1)
        n = pid // G
        g = pid % G
        cj = tl.arange(0, BLOCK_C)
        cmask = cj < CG
        c = g * CG + cj
        base = x_ptr + n.to(tl.int64) * sN
        first = base + (g * CG).to(tl.int64) * sC
        shift = tl.load(first).to(tl.float32)      # the group's first element: the shift of the sums
        if HAS_ADD:
            b = tl.load(add_ptr + n * C + c, mask=cmask, other=0.0).to(tl.float32)
            shift += tl.load(add_ptr + n * C + g * CG).to(tl.float32)
        acc1 = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
        s0 = split * s_per_prog
        for start in range(0, s_per_prog, BLOCK_S):
            s = s0 + start + tl.arange(0, BLOCK_S)
            mask = (s < S)[:, None] & cmask[None, :]
            offs = s[:, None].to(tl.int64) * sS + c[None, :].to(tl.int64) * sC
            x = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_ADD:
                x += b[None, :]
            d = tl.where(mask, x - shift, 0.0)
            acc1 += d
            acc2 += d * d
        out = part_ptr + (pid * SPLIT + split) * 2
        tl.store(out, tl.sum(acc1))
        tl.store(out + 1, tl.sum(acc2))

    @triton.jit
    def gn_apply(x_ptr, add_ptr, w_ptr, b_ptr, y_ptr, part_ptr, C, S, G, CG, sN, sC, sS, s_per_prog, SPLIT,
                 eps, inv_count, HAS_ADD: tl.constexpr, SILU: tl.constexpr, BLOCK_S: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_SPLIT: tl.constexpr):
        pid = tl.program_id(0)
        split = tl.program_id(1)
        n = pid // G
        g = pid % G
        i = tl.arange(0, BLOCK_SPLIT)
        parts = part_ptr + (pid * SPLIT + i) * 2
        s1 = tl.sum(tl.load(parts, mask=i < SPLIT, other=0.0))
        s2 = tl.sum(tl.load(parts + 1, mask=i < SPLIT, other=0.0))
        cj = tl.arange(0, BLOCK_C)
        cmask = cj < CG
        c = g * CG + cj
        base = x_ptr + n.to(tl.int64) * sN
        shift = tl.load(base + (g * CG).to(tl.int64) * sC).to(tl.float32)
        if HAS_ADD:
            shift += tl.load(add_ptr + n * C + g * CG).to(tl.float32)
        mean_d = s1 * inv_count
        var = tl.maximum(s2 * inv_count - mean_d * mean_d, 0.0)
        mean = shift + mean_d
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        scale = w * rstd
        offset = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32) - mean * scale
        if HAS_ADD:
            offset += tl.load(add_ptr + n * C + c, mask=cmask, other=0.0).to(tl.float32) * scale
        out_base = y_ptr + n.to(tl.int64) * sN
        s0 = split * s_per_prog
        for start in range(0, s_per_prog, BLOCK_S):
            s = s0 + start + tl.arange(0, BLOCK_S)
            mask = (s < S)[:, None] & cmask[None, :]
            offs = s[:, None].to(tl.int64) * sS + c[None, :].to(tl.int64) * sC
            x = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)
            y = x * scale[None, :] + offset[None, :]
            if SILU:
                y = y * tl.sigmoid(y)
            tl.store(out_base + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    return gn_stats, gn_apply


@functools.lru_cache(maxsize=None)
def _row_kernels():
    """Kernels for a channels-last input [N, S, C] (channel stride 1, pixel stride C): sums per channel over a
    share of the pixels, per-channel scale and offset from them, then the normalising pass, all over whole rows.

    A tile is a run of whole pixel rows read as [R, B] (each row B channels: B the largest power of two dividing C,
    M = C / B rows a pixel), so it is one contiguous range of memory whatever C is, with no lane masked for rounding
    C up to a power of two (SD's 320 channels in rows of 512 left 37.5 % of the lanes idle). Row r of a tile holds
    channels (r % M) * B ... + B of the tile's pixel r // M; the last R % M rows are unused."""
    import triton
    import triton.language as tl

    @triton.jit
    def gn_rows_stats(x_ptr, add_ptr, part_ptr, C, S, sN, s_per_prog, SPLIT,
                   HAS_ADD: tl.constexpr, BLOCK_R: tl.constexpr, B: tl.constexpr, M: tl.constexpr,
                   STAGES: tl.constexpr):
        n = tl.program_id(0)
        split = tl.program_id(1)
        r = tl.arange(0, BLOCK_R)
        j = tl.arange(0, B)
        K = BLOCK_R // M                                     # whole pixels a tile
        chan = ((r % M) * B)[:, None] + j[None, :]           # [BLOCK_R, B]: each lane's channel, the same every tile
        used = (r < K * M)[:, None] & (chan < C)             # (chan < C: only where one padded row holds a pixel)
        offs = ((r // M) * C)[:, None] + chan                # within a tile: contiguous where B * M = C
        base = x_ptr + n.to(tl.int64) * sN
        shift = tl.load(base + chan, mask=used, other=0.0).to(tl.float32)   # each channel's first pixel
        if HAS_ADD:
            b = tl.load(add_ptr + n * C + chan, mask=used, other=0.0).to(tl.float32)
            shift += b
        acc1 = tl.zeros([BLOCK_R, B], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_R, B], dtype=tl.float32)
        s0 = split * s_per_prog
        for start in tl.range(0, s_per_prog, K, num_stages=STAGES):
            pixel = s0 + start + r // M
            mask = used & (pixel < S)[:, None]
            x = tl.load(base + (s0 + start).to(tl.int64) * C + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_ADD:
                x += b
            d = tl.where(mask, x - shift, 0.0)
            acc1 += d
            acc2 += d * d
        out = part_ptr + ((n * SPLIT + split) * 2).to(tl.int64) * C
        for t in tl.static_range(M):                         # the rows of channel block t
            rows = ((r % M) == t)[:, None]
            kept = t * B + j < C
            tl.store(out + t * B + j, tl.sum(tl.where(rows, acc1, 0.0), axis=0), mask=kept)
            tl.store(out + C + t * B + j, tl.sum(tl.where(rows, acc2, 0.0), axis=0), mask=kept)

    @triton.jit
    def gn_rows_scale(x_ptr, add_ptr, w_ptr, b_ptr, part_ptr, coef_ptr, C, S, G, CG, sN, SPLIT, eps,
                   HAS_ADD: tl.constexpr, BLOCK_CG: tl.constexpr, BLOCK_SPLIT: tl.constexpr):
        pid = tl.program_id(0)                     # n * G + g
        n = pid // G
        g = pid % G
        j = tl.arange(0, BLOCK_CG)
        jmask = j < CG
        c = g * CG + j
        shift = tl.load(x_ptr + n.to(tl.int64) * sN + c, mask=jmask, other=0.0).to(tl.float32)
        if HAS_ADD:
            shift += tl.load(add_ptr + n * C + c, mask=jmask, other=0.0).to(tl.float32)
        s1 = tl.zeros([BLOCK_CG], dtype=tl.float32)   # per channel: the sum of (x - shift_c) over every split
        s2 = tl.zeros([BLOCK_CG], dtype=tl.float32)   # and of its square
        for i0 in range(0, SPLIT, BLOCK_SPLIT):
            i = i0 + tl.arange(0, BLOCK_SPLIT)
            rows = part_ptr + ((n * SPLIT + i) * 2).to(tl.int64)[:, None] * C + c[None, :]
            m = (i < SPLIT)[:, None] & jmask[None, :]
            s1 += tl.sum(tl.load(rows, mask=m, other=0.0), axis=0)
            s2 += tl.sum(tl.load(rows + C, mask=m, other=0.0), axis=0)
        count = S * CG
        mean = tl.sum(tl.where(jmask, s1 + S * shift, 0.0)) / count
        k = tl.where(jmask, shift - mean, 0.0)
        # sum over the group of (x - mean)^2 = s2 + 2 (shift_c - mean) s1 + S (shift_c - mean)^2, channel by channel
        var = tl.maximum(tl.sum(tl.where(jmask, s2 + 2 * k * s1 + S * k * k, 0.0)) / count, 0.0)
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(w_ptr + c, mask=jmask, other=0.0).to(tl.float32)
        scale = w * rstd
        offset = tl.load(b_ptr + c, mask=jmask, other=0.0).to(tl.float32) - mean * scale
        if HAS_ADD:
            offset += tl.load(add_ptr + n * C + c, mask=jmask, other=0.0).to(tl.float32) * scale
        tl.store(coef_ptr + (n * 2 * C + c), scale, mask=jmask)
        tl.store(coef_ptr + (n * 2 * C + C + c), offset, mask=jmask)

    @triton.jit
    def gn_rows_apply(x_ptr, coef_ptr, y_ptr, C, S, sN, s_per_prog, SILU: tl.constexpr, BLOCK_R: tl.constexpr,
                   B: tl.constexpr, M: tl.constexpr, STAGES: tl.constexpr):
        n = tl.program_id(0)
        split = tl.program_id(1)
        r = tl.arange(0, BLOCK_R)
        j = tl.arange(0, B)
        K = BLOCK_R // M
        chan = ((r % M) * B)[:, None] + j[None, :]
        used = (r < K * M)[:, None] & (chan < C)
        offs = ((r // M) * C)[:, None] + chan
        scale = tl.load(coef_ptr + n * 2 * C + chan, mask=used, other=0.0)   # per lane, loaded once
        offset = tl.load(coef_ptr + n * 2 * C + C + chan, mask=used, other=0.0)
        base = n.to(tl.int64) * sN
        s0 = split * s_per_prog
        for start in tl.range(0, s_per_prog, K, num_stages=STAGES):
            pixel = s0 + start + r // M
            mask = used & (pixel < S)[:, None]
            at = base + (s0 + start).to(tl.int64) * C + offs
            x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
            y = x * scale + offset
            if SILU:
                y = y * tl.sigmoid(y)
            tl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=mask)

    return gn_rows_stats, gn_rows_scale, gn_rows_apply


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 (any import failure means: no Triton)
        return False
    return True


def layout_strides(x: torch.Tensor) -> tuple[int, int, int] | None:
    """(batch, channel, spatial) element strides of ``x`` = [N, C, *S] read as [N, C, S]: NCHW-contiguous gives
    (C·S, S, 1), channels-last-like (channel stride 1, spatial dims dense in order) gives (C·S, 1, C); anything
    else None."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    s = 1
    for d in spatial:
        s *= d
    if x.is_contiguous():
        return c * s, s, 1
    if x.stride(1) != 1 and c > 1:
        return None
    expected = c
    for dim in range(x.dim() - 1, 1, -1):
        if x.shape[dim] > 1 and x.stride(dim) != expected:
            return None
        expected *= x.shape[dim]
    if n > 1 and x.stride(0) != c * s:
        return None
    return c * s, 1, c


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def per_sample_channel(add: torch.Tensor, n: int, c: int) -> torch.Tensor:
    """``add`` ([N, C, 1...] or [1, C, 1...]: one value per sample and channel, or per channel) as a dense [N, C]."""
    return add.reshape(-1, c).expand(n, c).contiguous()


def group_norm_triton(x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                      add: torch.Tensor | None = None, silu: bool = False, rows: bool | None = None) -> torch.Tensor:
    """``silu?(group_norm(x + add))`` with the Triton kernels, in ``x``'s layout. ``add``: per (batch, channel) or
    per channel, broadcasting against ``x`` (``temb[:, :, None, None]``, ``conv.bias[None, :, None, None]``).
    ``rows``: a channels-last ``x`` takes the row kernels (:func:`group_norm_rows`); None:
    :data:`ROWS_FOR_CHANNELS_LAST`, else :func:`rows_win`."""
    strides = layout_strides(x)
    if strides is None:
        x = x.contiguous()
        strides = layout_strides(x)
    if rows is None:
        rows = rows_win(x, num_groups) if ROWS_FOR_CHANNELS_LAST is None else ROWS_FOR_CHANNELS_LAST
    if rows and strides[1] == 1 and x.shape[1] > 1:
        return group_norm_rows(x, num_groups, weight, bias, eps, add, silu)
    n, c = x.shape[:2]
    s = x.numel() // max(1, n * c)
    cg = c // num_groups
    block_c = max(2, _next_pow2(cg))
    block_s = max(1, TILE // block_c)
    split = max(1, min(_cdiv(TARGET_PROGRAMS, n * num_groups), _cdiv(s, block_s), MAX_SPLIT))
    s_per_prog = _cdiv(_cdiv(s, split), block_s) * block_s   # a whole number of tiles per program
    split = _cdiv(s, s_per_prog)
    add_flat = per_sample_channel(add, n, c) if add is not None else x  # dummy pointer when unused
    y = torch.empty_like(x)
    part = torch.empty(n * num_groups * split * 2, device=x.device, dtype=torch.float32)
    stats, apply = _kernels()
    grid = (n * num_groups, split)
    stats[grid](x, add_flat, part, c, s, num_groups, cg, *strides, s_per_prog, split,
                HAS_ADD=add is not None, BLOCK_S=block_s, BLOCK_C=block_c, num_warps=4)
    apply[grid](x, add_flat, weight, bias, y, part, c, s, num_groups, cg, *strides, s_per_prog, split,
                float(eps), 1.0 / (cg * s), HAS_ADD=add is not None, SILU=silu, BLOCK_S=block_s,
                BLOCK_C=block_c, BLOCK_SPLIT=max(2, _next_pow2(split)), num_warps=4)
    return y


def row_blocks(c: int) -> tuple[int, int]:
    """(B, M): a pixel's C channels as M rows of B, B the largest power of two dividing C (at least 2 lanes)."""
    b = c & -c
    if b < 2 or c // b > MAX_ROW_BLOCKS:        # odd or nearly odd channel counts: one padded row a pixel
        return max(2, _next_pow2(c)), 1
    return b, c // b


def row_split(n: int, c: int, s: int) -> tuple[int, int, int]:
    """How the row kernels cut a norm of ``n`` samples of ``s`` pixels of ``c`` channels: (rows a tile, programs a
    sample, pixels a program). About :data:`ROW_PROGRAMS` programs in all, each reading at least
    :data:`ROW_MIN_TILES` tiles of whole pixels."""
    blocks, m = row_blocks(c)
    block_r = max(_next_pow2(m), ROW_TILE // blocks)        # at least one whole pixel a tile
    k = block_r // m                                         # whole pixels a tile
    split = max(1, min(_cdiv(ROW_PROGRAMS, n), _cdiv(s, k * ROW_MIN_TILES), MAX_SPLIT))
    s_per_prog = _cdiv(_cdiv(s, split), k) * k
    return block_r, _cdiv(s, s_per_prog), s_per_prog


def group_norm_rows(x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                    add: torch.Tensor | None = None, silu: bool = False) -> torch.Tensor:
    """:func:`group_norm_triton` for a channels-last-like ``x`` (channel stride 1) with the row kernels."""
    sn, sc, ss = layout_strides(x)
    n, c = x.shape[:2]
    assert sc == 1 and ss == c, "the row kernels read channels-last pixel rows"
    s = x.numel() // max(1, n * c)
    cg = c // num_groups
    blocks, m = row_blocks(c)
    block_r, split, s_per_prog = row_split(n, c, s)
    add_flat = per_sample_channel(add, n, c) if add is not None else x
    y = torch.empty_like(x)
    part = torch.empty(n * split * 2 * c, device=x.device, dtype=torch.float32)
    coef = torch.empty(n * 2 * c, device=x.device, dtype=torch.float32)
    stats, scale, apply = _row_kernels()
    stats[(n, split)](x, add_flat, part, c, s, sn, s_per_prog, split, HAS_ADD=add is not None, BLOCK_R=block_r,
                      B=blocks, M=m, STAGES=ROW_STAGES, num_warps=ROW_WARPS)
    block_cg = max(2, _next_pow2(cg))
    scale[(n * num_groups,)](x, add_flat, weight, bias, part, coef, c, s, num_groups, cg, sn, split, float(eps),
                             HAS_ADD=add is not None, BLOCK_CG=block_cg,
                             BLOCK_SPLIT=min(max(32, SCALE_TILE // block_cg), max(2, _next_pow2(split))),
                             num_warps=4)
    apply[(n, split)](x, coef, y, c, s, sn, s_per_prog, SILU=silu, BLOCK_R=block_r, B=blocks, M=m,
                      STAGES=ROW_STAGES, num_warps=ROW_WARPS)
    return y


def group_norm_reference(x, num_groups, weight, bias, eps, add=None, silu=False) -> torch.Tensor:
    """The same function in plain PyTorch ops (what eager diffusers computes)."""
    y = F.group_norm(x if add is None else x + add, num_groups, weight, bias, eps)
    return F.silu(y) if silu else y


#: the kernels as a custom op, registered by :func:`register_op` (None: not registered, or no Triton)
GROUP_NORM_OP = None


def register_op():
    """Register ``confiner::group_norm_act`` once (where Triton is available): an op torch.compile keeps opaque, so
    a compiled graph calls the kernels; its fake implementation gives the output's layout without running them."""
    global GROUP_NORM_OP
    if GROUP_NORM_OP is None and triton_available():
        @torch.library.custom_op("confiner::group_norm_act", mutates_args=())
        def op(x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               add: torch.Tensor | None, silu: bool) -> torch.Tensor:
            return group_norm_triton(x, num_groups, weight, bias, eps, add, silu)

        @op.register_fake
        def _(x, num_groups, weight, bias, eps, add, silu):
            return torch.empty_like(x if layout_strides(x) is not None else x.contiguous())  # as the kernels do

        GROUP_NORM_OP = torch.ops.confiner.group_norm_act
    return GROUP_NORM_OP


def narrow_channels_last(x: torch.Tensor, num_groups: int, below_bytes: int) -> bool:
    """Channels-last (channel stride 1) with a group's channels of a pixel fewer than ``below_bytes`` bytes."""
    strides = layout_strides(x)
    narrow = x.shape[1] // num_groups * x.element_size() < below_bytes
    return strides is not None and strides[1] == 1 and x.shape[1] > 1 and narrow


def rows_win(x: torch.Tensor, num_groups: int) -> bool:
    """Whether the row kernels normalise ``x`` faster than the per-group ones (:data:`ROWS_BELOW_GROUP_BYTES`)."""
    return narrow_channels_last(x, num_groups, ROWS_BELOW_GROUP_BYTES)


def compiled_take(x: torch.Tensor, num_groups: int) -> bool:
    """Whether a compiled graph calls the kernels for this norm rather than fuse the plain ops (module docstring):
    where a group is narrower than a sector (inductor's norm reads it at a stride of C), where inductor's norm would
    run too few programs, and on few pixels. (At 40 bytes a group, the UNet's [32, 640, 32, 32], inductor's 0.058 ms
    beat the rows' 0.065 in call X.)"""
    n, c = x.shape[:2]
    pixels = x.numel() // max(1, n * c)
    return (narrow_channels_last(x, num_groups, SECTOR_BYTES) or n * num_groups < COMPILED_PROGRAMS_BELOW
            or pixels <= COMPILED_PIXELS_UP_TO)


def compiled_norms() -> tuple:
    """What a compiled graph's norms depend on beyond its inputs: part of a kept block's key."""
    return (ROWS_FOR_CHANNELS_LAST, KERNELS_UNDER_COMPILE and GROUP_NORM_OP is not None, SECTOR_BYTES,
            ROWS_BELOW_GROUP_BYTES, ROW_MIN_TILES, COMPILED_PROGRAMS_BELOW, COMPILED_PIXELS_UP_TO)


def kernels_take(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dim() >= 3 and x.dtype in (torch.float16, torch.bfloat16, torch.float32)


def group_norm_act(x, num_groups, weight, bias, eps, add=None, silu=False) -> torch.Tensor:
    if weight is not None and bias is not None and kernels_take(x):
        # is_compiling first: dynamo is never asked to trace into triton_available's lru_cache (it warns on every
        # compiled block); under torch.compile inductor fuses the plain ops unless the op is asked for
        if torch.compiler.is_compiling():
            if KERNELS_UNDER_COMPILE and GROUP_NORM_OP is not None and compiled_take(x, num_groups):
                return GROUP_NORM_OP(x, num_groups, weight, bias, eps, add, silu)
        elif triton_available():
            return group_norm_triton(x, num_groups, weight, bias, eps, add, silu)
    return group_norm_reference(x, num_groups, weight, bias, eps, add, silu)


# ------------------------------------------------------------------------------------------------- modules

class FusedGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state-dict keys) that keeps its input's layout, optionally followed by
    SiLU and preceded by a per-channel add (``forward(x, add)``)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, silu=False, device=None, dtype=None):
        super().__init__(num_groups, num_channels, eps, affine, device, dtype)
        self.silu = silu

    @classmethod
    def replacing(cls, norm: nn.GroupNorm, silu: bool = False) -> "FusedGroupNorm":
        """A fused norm sharing ``norm``'s parameters (no copy)."""
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.num_groups, fused.num_channels, fused.eps, fused.affine = \
            norm.num_groups, norm.num_channels, norm.eps, norm.affine
        fused.weight, fused.bias = norm.weight, norm.bias
        fused.silu = silu
        fused.train(norm.training)
        return fused

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        return group_norm_act(x, self.num_groups, self.weight, self.bias, self.eps, add, self.silu)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", silu" if self.silu else "")


def fused_resnet_forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs):
    """``diffusers.models.resnet.ResnetBlock2D.forward`` for the configurations :func:`fusable_resnet` accepts
    (SiLU, no up/down sampling inside, no scale-shift time embedding): norm1 and norm2 carry the SiLU, norm2 the
    time-embedding add (the "default" norm's; any other ignores ``temb``, as diffusers does) and conv1's bias
    (conv1's output is read by norm2 alone, so the bias is added where norm2 reads it instead of in a pass of its
    own: a compiled graph adds a convolution's bias in a separate kernel where no fusable op follows, and so does
    eager PyTorch with cuDNN), and the division by an ``output_scale_factor`` of 1 is skipped (exact)."""
    conv1 = self.conv1
    bias_to_norm = conv1.bias is not None and bias_foldable(conv1)
    h = self.norm1(input_tensor)
    hidden_states = conv1._conv_forward(h, conv1.weight, None) if bias_to_norm else conv1(h)
    add = conv1.bias[None, :, None, None] if bias_to_norm else None
    if self.time_emb_proj is not None:
        if not self.skip_time_act:
            temb = self.nonlinearity(temb)
        temb = self.time_emb_proj(temb)[:, :, None, None]
    if temb is not None and self.time_embedding_norm == "default":
        add = temb if add is None else add + temb
    hidden_states = self.conv2(self.dropout(self.norm2(hidden_states, add)))
    if self.conv_shortcut is not None:
        input_tensor = self.conv_shortcut(input_tensor)
    output = input_tensor + hidden_states
    return output if self.output_scale_factor == 1 else output / self.output_scale_factor


def bias_foldable(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` / ``nn.Conv3d`` with no hooks: calling its ``_conv_forward`` without the bias skips
    nothing else (a LoRA-wrapped or hooked convolution keeps its own forward)."""
    return type(conv) in (nn.Conv2d, nn.Conv3d) and not (conv._forward_hooks or conv._forward_pre_hooks)


def fused_temporal_conv_forward(self, hidden_states: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
    """``diffusers.models.resnet.TemporalConvLayer.forward`` (ModelScope's four (GroupNorm, SiLU, Conv3d over
    frames) stages) with the bias of each stage's convolution added where the next stage's fused norm reads it, as
    conv1's in :func:`fused_resnet_forward`: inside a compiled block the norms are one opaque op
    (``confiner::group_norm_act``, ModelScope's norms over frames run too few programs for inductor's), so a bias
    left on the convolution is a pass of its own over the activations. The last stage keeps its bias (the residual
    add takes it)."""
    hidden_states = hidden_states[None, :].reshape((-1, num_frames) + hidden_states.shape[1:]).permute(0, 2, 1, 3, 4)
    identity = hidden_states
    stages = (self.conv1, self.conv2, self.conv3, self.conv4)
    pending = None                      # the previous convolution's bias, [1, C, 1, 1, 1], for the next norm
    for i, stage in enumerate(stages):
        for layer in stage:
            if isinstance(layer, FusedGroupNorm):
                hidden_states, pending = layer(hidden_states, pending), None
            elif (layer is stage[-1] and i + 1 < len(stages) and isinstance(stages[i + 1][0], FusedGroupNorm)
                  and layer.bias is not None and bias_foldable(layer)):
                hidden_states = layer._conv_forward(hidden_states, layer.weight, None)
                pending = layer.bias[None, :, None, None, None]
            else:
                hidden_states = layer(hidden_states)
    hidden_states = identity + hidden_states
    return hidden_states.permute(0, 2, 1, 3, 4).reshape(
        (hidden_states.shape[0] * hidden_states.shape[2], -1) + hidden_states.shape[3:])


def fusable_temporal_conv(block: nn.Module) -> bool:
    """diffusers' ``TemporalConvLayer`` as 0.3x-0.4x build it: four ``nn.Sequential`` stages, each a GroupNorm first
    and a Conv3d last (what :func:`fused_temporal_conv_forward` walks)."""
    if type(block).__name__ != "TemporalConvLayer":
        return False
    stages = [getattr(block, f"conv{i}", None) for i in range(1, 5)]
    return all(isinstance(st, nn.Sequential) and isinstance(st[0], nn.GroupNorm) and isinstance(st[-1], nn.Conv3d)
               for st in stages)


def fusable_resnet(block: nn.Module) -> bool:
    if type(block).__name__ != "ResnetBlock2D":
        return False
    # "default" (the UNets) or no time embedding at all: the VAEs' blocks say "group" and have no projection
    time_norm_ok = block.time_embedding_norm == "default" or (block.time_embedding_norm != "scale_shift"
                                                              and block.time_emb_proj is None)
    return (time_norm_ok and block.upsample is None and block.downsample is None
            and isinstance(block.nonlinearity, nn.SiLU) and type(block.norm1) is nn.GroupNorm
            and type(block.norm2) is nn.GroupNorm)


def continuous_output_channels_last(self, hidden_states, residual, batch_size, height, width, inner_dim):
    """``Transformer2DModel._get_output_for_continuous_inputs`` without the ``.contiguous()``: the permuted
    [B, H, W, C] result already is a channels_last [B, C, H, W] tensor, which the next convolution wants."""
    if not self.use_linear_projection:
        hidden_states = self.proj_out(hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2))
    else:
        hidden_states = self.proj_out(hidden_states).reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
    return hidden_states + residual


#: models whose ``conv_act`` follows ``conv_norm_out`` and is used nowhere else (diffusers 0.3x-0.4x)
NORM_ACT_OWNERS = ("UNet2DConditionModel", "UNet3DConditionModel", "UNetMotionModel", "Decoder", "Encoder")


def fuse_group_norms(model: nn.Module) -> dict:
    """Rewrite ``model`` in place (see the module docstring). Returns counts of what was changed."""
    register_op()
    done = {"resnets": 0, "norm_act_pairs": 0, "norms": 0, "transformer_outputs": 0, "temporal_convs": 0}
    for module in list(model.modules()):
        if fusable_temporal_conv(module) and "forward" not in vars(module):
            module.forward = types.MethodType(fused_temporal_conv_forward, module)  # its stages are fused below
            done["temporal_convs"] += 1
        if fusable_resnet(module):
            module.norm1 = FusedGroupNorm.replacing(module.norm1, silu=True)
            module.norm2 = FusedGroupNorm.replacing(module.norm2, silu=True)
            module.forward = types.MethodType(fused_resnet_forward, module)
            done["resnets"] += 1
        elif isinstance(module, nn.Sequential):
            children = list(module)
            for i in range(len(children) - 1):
                if type(children[i]) is nn.GroupNorm and isinstance(children[i + 1], nn.SiLU):
                    module[i] = FusedGroupNorm.replacing(children[i], silu=True)
                    module[i + 1] = nn.Identity()
                    done["norm_act_pairs"] += 1
        elif type(module).__name__ in NORM_ACT_OWNERS and type(getattr(module, "conv_norm_out", None)) is \
                nn.GroupNorm and isinstance(getattr(module, "conv_act", None), nn.SiLU):
            module.conv_norm_out = FusedGroupNorm.replacing(module.conv_norm_out, silu=True)
            module.conv_act = nn.Identity()
            done["norm_act_pairs"] += 1
        if type(module).__name__ == "Transformer2DModel" and getattr(module, "is_input_continuous", False):
            module._get_output_for_continuous_inputs = types.MethodType(continuous_output_channels_last, module)
            done["transformer_outputs"] += 1
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.GroupNorm:
                setattr(parent, name, FusedGroupNorm.replacing(child))
                done["norms"] += 1
    return done
