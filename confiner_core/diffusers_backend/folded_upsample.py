"""Nearest-neighbour ×2 upsampling followed by a 3×3 convolution, as the one stride-2 transposed convolution it
equals.

Why: every UNet and VAE decoder of the SD family grows its feature maps with diffusers' ``Upsample2D``: a nearest
×2 interpolation (a pass that writes four copies of every input pixel) and a 3×3 convolution over the copies. Each
output pixel of the pair sees only 2×2 distinct input pixels, so the pair is exactly a transposed convolution with
stride 2 and a 4×4 kernel whose taps are sums of the 3×3 kernel's (:func:`nearest_conv3x3_as_transposed`): 16 instead
of 36 multiply-adds per output pixel and channel pair, and no upsampled copy in memory. In one ConFiner run the
upsampling convolutions of the VAE decoder are 28 % of its multiply-adds, those of the UNets about 8 % of theirs.

The folded kernel is computed once (in float32, rounded once to the weight's dtype) and kept beside the original
convolution, which still serves any call whose output size is not twice the input (UNets pass explicit sizes when
the latent's sides are not multiples of their total downsampling) and any convolution wrapped after the fold (a
LoRA layer, say). :func:`fold_upsamplers` rewrites a model's ``Upsample2D`` modules in place; state-dict keys are
unchanged (the folded kernel is a non-persistent buffer, folded again in place whenever ``load_state_dict`` loads
the module, so CUDA graphs that captured it stay valid).

On an H200 (``bench/upsample_probe.py``, ``bench/RESULTS.md``) the transposed convolution ran each SD upsampling
shape 1.9-2.2 times faster than the pair, compiled or not, fp16 or bf16; the ``max`` preset's ConFiner run went from
1.491 to 1.450 s.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

# _TAPS[k, d]: whether tap d of the 3×3 kernel (offsets -1, 0, +1 along one axis) falls on tap k of the 4-tap
# stride-2 transposed kernel. Output row 2m reads input rows m-1 (tap d=0) and m (taps d=1, 2); output row 2m+1
# reads rows m (d=0, 1) and m+1 (d=2); conv_transpose2d(stride 2, padding 1) puts input row i on output row
# 2i + k - 1, so k = 3 carries d=0 to 2m, k = 1 carries d=1, 2 to 2m, k = 2 carries d=0, 1 to 2m+1, k = 0 carries
# d=2 to 2m+1. Zero padding of the 3×3 convolution at the border is the transposed convolution's missing rows.
_TAPS = ((0, 0, 1), (0, 1, 1), (1, 1, 0), (1, 0, 0))


def nearest_conv3x3_as_transposed(weight: torch.Tensor) -> torch.Tensor:
    """The kernel [C_in, C_out, 4, 4] of ``conv_transpose2d(x, ., stride=2, padding=1)`` that equals
    ``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)`` for a 3×3 ``weight``
    [C_out, C_in, 3, 3]: each tap the sum of the 3×3 taps that land on it, summed in float32 (or the weight's wider
    dtype), rounded once."""
    if weight.dim() != 4 or tuple(weight.shape[-2:]) != (3, 3):
        raise ValueError(f"a 3x3 convolution kernel [C_out, C_in, 3, 3] is needed, not {tuple(weight.shape)}")
    wide = torch.promote_types(weight.dtype, torch.float32)
    taps = torch.tensor(_TAPS, dtype=wide, device=weight.device)
    folded = torch.einsum("ky,lx,oiyx->iokl", taps, taps, weight.to(wide))
    return folded.to(weight.dtype)


def upsample_nearest_conv3x3(x: torch.Tensor, folded: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Nearest ×2 upsampling and a 3×3 convolution (padding 1) of ``x`` [N, C_in, H, W], from the kernel
    :func:`nearest_conv3x3_as_transposed` folded: [N, C_out, 2H, 2W], in ``x``'s memory format."""
    return F.conv_transpose2d(x, folded, bias, stride=2, padding=1)


def _conv(module: nn.Module):
    """An ``Upsample2D``'s convolution (diffusers names it after an old weight layout)."""
    return getattr(module, "conv" if getattr(module, "name", "conv") == "conv" else "Conv2d_0", None)


def foldable(module: nn.Module) -> bool:
    """Whether ``module`` is a diffusers ``Upsample2D`` that interpolates ×2 and then runs a plain 3×3 convolution
    with padding 1 (no norm before it, no transposed convolution of its own)."""
    if type(module).__name__ != "Upsample2D" or not getattr(module, "use_conv", False):
        return False
    if getattr(module, "use_conv_transpose", False) or getattr(module, "norm", None) is not None:
        return False
    if not getattr(module, "interpolate", True):
        return False
    conv = _conv(module)
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def folded_upsample_forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
    """``forward`` of a foldable ``Upsample2D``: the transposed convolution where the output is twice the input,
    diffusers' own forward for any other requested size."""
    doubled = tuple(2 * s for s in hidden_states.shape[-2:])
    conv = _conv(self)
    if (output_size is not None and tuple(output_size) != doubled) or type(conv) is not nn.Conv2d:
        return type(self).forward(self, hidden_states, output_size, *args, **kwargs)
    return upsample_nearest_conv3x3(hidden_states, self.folded_weight, conv.bias)


def _fold_again(module: nn.Module, incompatible_keys) -> None:
    """``load_state_dict`` post-hook: the folded kernel from the weights just loaded, in place."""
    with torch.no_grad():
        module.folded_weight.copy_(nearest_conv3x3_as_transposed(_conv(module).weight))


def fold_upsamplers(model: nn.Module) -> int:
    """Give every foldable ``Upsample2D`` of ``model`` :func:`folded_upsample_forward` and its folded kernel (laid
    out as the convolution's weight is: channels_last stays channels_last); returns how many. Modules already folded
    are skipped. Apply before anything that replaces ``forward`` again (compilation, attention contexts)."""
    done = 0
    for m in model.modules():
        if not foldable(m) or "forward" in vars(m):
            continue
        weight = _conv(m).weight.detach()
        folded = nearest_conv3x3_as_transposed(weight)
        if weight.is_contiguous(memory_format=torch.channels_last):
            folded = folded.contiguous(memory_format=torch.channels_last)
        m.register_buffer("folded_weight", folded, persistent=False)
        m.register_load_state_dict_post_hook(_fold_again)
        m.forward = types.MethodType(folded_upsample_forward, m)
        done += 1
    return done
