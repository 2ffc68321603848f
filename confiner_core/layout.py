"""Latent layouts. Inside the core every latent is a video ``[B, C, F, h, w]``.

Per-frame image experts and ComfyUI's SD-style latents use a frame batch ``[F, C, h, w]`` (one video, B = 1);
native video models (diffusers UNetMotionModel/UNet3D, Wan, HunyuanVideo) use ``[B, C, F, h, w]``.
"""

from __future__ import annotations

import torch
from einops import rearrange

from .errors import not_a_choice

FRAMES = "frames"
VIDEO = "video"
LAYOUTS = (FRAMES, VIDEO)


def to_canonical(x: torch.Tensor, layout: str, batch: int = 1) -> torch.Tensor:
    """Native -> canonical. A frame batch holds ``batch`` videos back to back."""
    if layout == VIDEO:
        return x
    if layout == FRAMES:
        return rearrange(x, "(b f) c h w -> b c f h w", b=batch)
    raise ValueError(not_a_choice("layout", layout, LAYOUTS))


def from_canonical(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == VIDEO:
        return x
    if layout == FRAMES:
        return rearrange(x, "b c f h w -> (b f) c h w")
    raise ValueError(not_a_choice("layout", layout, LAYOUTS))


def check_latent(x: torch.Tensor, layout: str, channels: int | None = None, name: str = "latent") -> None:
    """Fail early, naming the input and the fix, when a latent is not a tensor of the expected shape."""
    want = {FRAMES: 4, VIDEO: 5}[layout]
    hint = ("a frame batch [F, C, h, w]" if layout == FRAMES else "a video [B, C, F, h, w]")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor ({hint}), got {type(x).__name__}")
    if x.ndim != want:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but must be {hint}; "
                         f"pass a latent of that layout (got {x.ndim}-D)")
    if x.dtype not in (torch.float32, torch.float64):   # the chain's arithmetic (Eq. 6, 9-11) is float32
        raise TypeError(f"{name} is {str(x.dtype).removeprefix('torch.')}; the chain computes in float32 (float64 "
                        f"also works): pass x.float() (initial noise is Gaussian: torch.randn(shape, generator=g))")
    if 0 in x.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, with no elements along a dimension; every size of "
                         f"{hint} must be at least 1")
    c = x.shape[1]
    if channels is not None and c != channels:
        raise ValueError(f"{name} has {c} latent channels but the experts expect {channels}; "
                         f"use a latent from the experts' own VAE / empty-latent node")
