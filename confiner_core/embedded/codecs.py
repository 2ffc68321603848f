"""The embedded world's two latent spaces and their exact codecs (no weights).

* :data:`WORLD` -- the SD-like space the embedded default always had: 4 channels (R, G, B, object mask) at 1/8 of
  the output size. Its codec decodes by bicubic upsampling to RGBA pixels and encodes by the exact left inverse of
  that upsampling (least squares), so ``encode(decode(z)) == z`` up to rounding.
* :data:`CAUSAL` -- a Wan-like space: 16x spatial, causal 4x temporal (frame 0 alone, then chunks of 4 pixel frames:
  ``4k + 1`` frames make ``k + 1`` latent frames), 64 channels and per-channel normalisation like Wan's
  ``latents_mean/std``. Each latent frame packs the 2x2 neighbourhood of :data:`WORLD` latents of its (up to) four
  pixel frames; frame 0 is repeated into all four slots, as a causal VAE pads its first chunk. Encoding is a
  rearrangement, decoding its least-squares inverse (the mean over the repeated slots of frame 0), so this codec is
  exact too.

Pixels are RGBA ``[B, 4, F, H, W]`` in [-1, 1]: the alpha (mask) channel keeps the codecs exact; videos show RGB.
Because both codecs are exact, the bridge between the spaces loses nothing: what a test measures across it is the
bridge's plumbing, not a VAE's reconstruction error.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from einops import rearrange

from ..latent_spaces import Codec, LatentSpace, to_uint8  # noqa: F401  (re-exported)

WORLD = LatentSpace("embedded", 4, 8)
_SLOT_SHIFT = (0.0, 0.0, 0.0, -0.7)   # per (R, G, B, mask): the world's typical latent statistics
_SLOT_STD = (0.55, 0.55, 0.55, 0.6)
CAUSAL = LatentSpace("embedded-causal", 64, 16, 4, causal=True, shift=_SLOT_SHIFT * 16, std=_SLOT_STD * 16)


@lru_cache(maxsize=16)
def _upsampling(n: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1-D bicubic upsampling matrix [n*scale, n] (torch's align_corners=False kernel) and its pseudo-inverse."""
    basis = torch.eye(n, dtype=torch.float64).view(n, 1, n, 1)
    up = F.interpolate(basis, scale_factor=(scale, 1), mode="bicubic", align_corners=False)
    matrix = up.view(n, n * scale).T.contiguous()
    return matrix, torch.linalg.pinv(matrix)


class WorldCodec(Codec):
    """The :data:`WORLD` space's exact codec (``scale`` pixels per latent pixel; 8 like SD unless asked)."""

    pixel_channels = 4

    def __init__(self, scale: int = 8):
        super().__init__()
        self.space = WORLD if scale == WORLD.spatial_factor else LatentSpace(WORLD.name, 4, scale)
        self.scale = scale

    def _apply(self, x: torch.Tensor, which: int, sizes: tuple) -> torch.Tensor:
        mh, mw = (_upsampling(n, self.scale)[which].to(x.device) for n in sizes)
        return torch.einsum("Hh,bcfhw,Ww->bcfHW", mh, x.double(), mw).to(x.dtype)

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return self._apply(raw, 0, raw.shape[-2:])

    def encode_raw(self, pixels: torch.Tensor) -> torch.Tensor:
        h, w = (n // self.scale for n in pixels.shape[-2:])
        return self._apply(pixels, 1, (h, w))


def pack_causal(world: torch.Tensor) -> torch.Tensor:
    """:data:`WORLD` latents [B, 4, 4k+1, h, w] -> raw :data:`CAUSAL` latents [B, 64, k+1, h/2, w/2]."""
    first = world[:, :, :1].repeat(1, 1, 4, 1, 1)
    frames = torch.cat([first, world[:, :, 1:]], dim=2)
    return rearrange(frames, "b c (t s) (h i) (w j) -> b (s i j c) t h w", s=4, i=2, j=2)


def unpack_causal(raw: torch.Tensor) -> torch.Tensor:
    """Least-squares inverse of :func:`pack_causal`: frame 0 is the mean of its four repeated slots."""
    frames = rearrange(raw, "b (s i j c) t h w -> b c (t s) (h i) (w j)", s=4, i=2, j=2)
    return torch.cat([frames[:, :, :4].mean(2, keepdim=True), frames[:, :, 4:]], dim=2)


class CausalWorldCodec(Codec):
    """The :data:`CAUSAL` space's exact codec, built on :class:`WorldCodec`."""

    pixel_channels = 4
    space = CAUSAL

    def __init__(self):
        super().__init__()
        self.world = WorldCodec(8)

    def encode_raw(self, pixels: torch.Tensor) -> torch.Tensor:
        return pack_causal(self.world.encode_raw(pixels))

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return self.world.decode_raw(unpack_causal(raw))
