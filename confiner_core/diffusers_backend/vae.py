"""diffusers image VAEs (``AutoencoderKL``: SD 1.5, SDXL, Flux...) as :class:`~confiner_core.latent_spaces.Codec` s.

An image VAE codes every frame alone, so frames are folded into the batch and coded ``chunk_frames`` at a time:
an SD VAE decode of 16 frames at 512x512 holds several GB of activations, and chunking bounds memory without
changing the result. Encoding takes the mean of the latent distribution (deterministic: a bridge draws nothing).
"""

from __future__ import annotations

import torch
from einops import rearrange

from ..latent_spaces import Codec, LatentSpace
from .experts import placement

# 4 frames keep the decode's peak below the sampling's: H200, SD 1.5 at 512x512x16, all experts resident (11.35 GiB):
# sampling peak 13.44 GiB; decode peak 12.89 GiB with 4 frames at a time, 14.38 with 8, 17.35 with 16, in 0.167,
# 0.170 and 0.178 s (bench/gpu_results/h200_decode_chunks.json)
DEFAULT_CHUNK_FRAMES = 4


class AutoencoderKLCodec(Codec):
    """A diffusers ``AutoencoderKL`` bound to its latent space (scaling and shift factor live in ``space``).

    Pixels ``[B, 3, F, H, W]`` and latents ``[B, C, F, h, w]`` come and go on the caller's device in float32;
    the VAE runs on its own device and dtype."""

    def __init__(self, vae, space: LatentSpace, chunk_frames: int = DEFAULT_CHUNK_FRAMES):
        super().__init__()
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.vae = vae.eval()
        self.space = space
        self.pixel_channels = int(vae.config.in_channels)
        self.chunk_frames = chunk_frames

    def _per_frame(self, x: torch.Tensor, code) -> torch.Tensor:
        batch, device = x.shape[0], x.device
        vae_device, vae_dtype = placement(self.vae)
        flat = rearrange(x, "b c f h w -> (b f) c h w")
        out = [code(chunk.to(vae_device, vae_dtype)).to(device, torch.float32)
               for chunk in flat.split(self.chunk_frames)]
        return rearrange(torch.cat(out), "(b f) c h w -> b c f h w", b=batch)

    @torch.no_grad()
    def encode_raw(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._per_frame(pixels, lambda chunk: self.vae.encode(chunk).latent_dist.mode())

    @torch.no_grad()
    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return self._per_frame(raw, lambda chunk: self.vae.decode(chunk).sample)


def latent_space_of_vae(vae_config: dict, known: tuple = ()) -> LatentSpace:
    """The latent space an ``AutoencoderKL`` config describes: one of ``known`` when channels and normalisation
    match (SD 1.5's 0.18215, SDXL's 0.13025...), else a space named after its numbers."""
    channels = int(vae_config.get("latent_channels", 4))
    scale = float(vae_config.get("scaling_factor") or 0.18215)
    shift = float(vae_config.get("shift_factor") or 0.0)
    spatial = 2 ** (len(vae_config.get("block_out_channels", (0,) * 4)) - 1)
    for space in known:
        if (space.channels, space.spatial_factor, space.temporal_factor) == (channels, spatial, 1) and \
                abs(space.scale - scale) < 1e-6 and space.shift == shift and space.std == 1.0:
            return space
    shifted = f"+{shift:g}" if shift else ""
    return LatentSpace(f"vae-{channels}ch-x{scale:g}{shifted}", channels, spatial, scale=scale, shift=shift)
