"""Exact posterior-mean experts over the procedural world: ConFiner's embedded default, no weights needed.

For data {x0_k} with equal prior mass, the MMSE denoiser of x_t = alpha x0 + sigma eps is closed form:
E[x0 | x_t] = sum_k softmax_k(-||x_t - alpha x0_k||^2 / 2 sigma^2) x0_k, and eps_hat = (x_t - alpha x0_hat)/sigma.
Each expert knows different data and runs on a different schedule, as real ConFiner experts do:

* spatial (SD 1.5 schedule, per frame): sharp frames anywhere in the image, no motion;
* temporal (LaVie's linear 1e-4..0.02 schedule, whole clips): coherent motion, blurred detail;
* control (AnimateDiff-Lightning's linear schedule, Euler trailing): coarse, heavily blurred clips.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .. import layout as L
from .. import schedules as S
from ..experts import Expert
from .world import DEFAULT_PROMPT, World, blur

LATENT_SPACE = "embedded-world"


def posterior_mean(x_t: torch.Tensor, alpha: float, sigma: float, data: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] under a uniform mixture of Diracs at ``data`` [K, D]; ``x_t`` is [N, D]."""
    sq = (x_t**2).sum(1, keepdim=True) - 2 * alpha * x_t @ data.T + alpha**2 * (data**2).sum(1)
    weights = torch.softmax(-sq / (2 * sigma**2), dim=1)
    return weights @ data


@lru_cache(maxsize=8)
def world_for(prompt: str, h: int, w: int) -> World:
    return World(prompt or DEFAULT_PROMPT, h, w)


class PosteriorMeanExpert(Expert):
    """An eps-prediction expert whose 'network' is the exact posterior mean over what it knows."""

    latent_channels = 4
    latent_space = LATENT_SPACE
    prediction = "epsilon"

    def __init__(self, name: str, schedule: S.NoiseSchedule, layout: str, knowledge, detail_blur: float = 0.0):
        self.name, self.schedule, self.layout = name, schedule, layout
        self._knowledge = knowledge  # (world, clip length) -> data [K, ...] matching one native sample
        self.detail_blur = detail_blur

    def encode(self, prompt: str) -> str:
        return prompt or DEFAULT_PROMPT

    def data(self, prompt: str, sample_shape: tuple) -> torch.Tensor:
        return _data(self, prompt, tuple(sample_shape))

    def forward(self, x: torch.Tensor, t: float, conds: list) -> list[torch.Tensor]:
        alpha, sigma = self.schedule.coefficients(t)
        flat = x.reshape(x.shape[0], -1).float()  # one sample per row: a clip [C, F, h, w] or a frame [C, h, w]
        outs = []
        for prompt in conds:  # one posterior-mean "network" call per conditioning (forwards_per_call: n_conds)
            data = self.data(prompt, tuple(x.shape[1:])).to(flat)
            x0 = posterior_mean(flat, alpha, sigma, data.reshape(data.shape[0], -1))
            outs.append(((flat - alpha * x0) / sigma).reshape(x.shape).to(x.dtype))
        return outs


@lru_cache(maxsize=32)
def _data_cached(kind: str, prompt: str, shape: tuple, detail_blur: float) -> torch.Tensor:
    if kind == "frames":
        _, h, w = shape
        return blur(world_for(prompt, h, w).frame_bank(), detail_blur)
    _, f, h, w = shape
    clips = world_for(prompt, h, w).true_clips(f)
    return blur(clips, detail_blur)


def _data(expert: PosteriorMeanExpert, prompt: str, shape: tuple) -> torch.Tensor:
    return _data_cached(expert._knowledge, prompt, shape, expert.detail_blur)


def spatial_expert() -> PosteriorMeanExpert:
    return PosteriorMeanExpert("embedded-spatial (sharp frames, SD 1.5 schedule)", S.named("sd15"), L.FRAMES, "frames")


def temporal_expert() -> PosteriorMeanExpert:
    return PosteriorMeanExpert("embedded-temporal (coherent blurred clips, LaVie schedule)", S.named("lavie"),
                               L.VIDEO, "clips", detail_blur=1.2)


def control_expert() -> PosteriorMeanExpert:
    return PosteriorMeanExpert("embedded-control (coarse clips, AnimateDiff-Lightning schedule)",
                               S.named("animatediff"), L.VIDEO, "clips", detail_blur=2.5)


def embedded_experts() -> dict:
    return {"control": control_expert(), "spatial": spatial_expert(), "temporal": temporal_expert()}


def decode(latent: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """The embedded 'VAE': canonical latent [B, 4, F, h, w] -> uint8 frames [B, F, 8h, 8w, 3] (bicubic upsampling
    of the RGB channels; the mask channel carries no colour)."""
    b, _, f, h, w = latent.shape
    rgb = latent[:, :3].permute(0, 2, 1, 3, 4).reshape(b * f, 3, h, w).float()
    up = torch.nn.functional.interpolate(rgb, scale_factor=scale, mode="bicubic", align_corners=False)
    img = ((up + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return img.reshape(b, f, 3, h * scale, w * scale).permute(0, 1, 3, 4, 2).contiguous()
