"""From the chain's canonical latent video to RGB frames with a diffusers ``AutoencoderKL``."""

from __future__ import annotations

import torch
from einops import rearrange

DEFAULT_CHUNK_FRAMES = 8


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """VAE output in [-1, 1] -> uint8 in [0, 255]."""
    return ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


class VideoDecoder:
    """``decoder(latent [B, C, F, h, w])`` -> frames ``uint8 [B, F, H, W, 3]``.

    Frames are decoded ``chunk_frames`` at a time: an SD VAE decode of 16 frames at 512x512 holds several GB
    of activations, and frames are independent for an image VAE, so chunking bounds memory without changing
    the result."""

    def __init__(self, vae, chunk_frames: int = DEFAULT_CHUNK_FRAMES):
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.vae = vae
        self.chunk_frames = chunk_frames

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.ndim != 5 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"the decoder expects a latent video [B, {self.latent_channels}, F, h, w], "
                             f"got shape {tuple(latent.shape)}")
        batch = latent.shape[0]
        flat = rearrange(latent, "b c f h w -> (b f) c h w")
        flat = (flat / self.scaling_factor + self.shift_factor).to(self.vae.device, self.vae.dtype)
        images = [to_uint8(self.vae.decode(chunk).sample).cpu() for chunk in flat.split(self.chunk_frames)]
        return rearrange(torch.cat(images), "(b f) c h w -> b f h w c", b=batch)

    __call__ = decode
