"""Exact posterior-mean experts over the procedural world: ConFiner's embedded default, no weights needed.

For data {x0_k} with equal prior mass, the MMSE denoiser of x_t = alpha x0 + sigma eps is closed form:
E[x0 | x_t] = sum_k softmax_k(-||x_t - alpha x0_k||^2 / 2 sigma^2) x0_k, and eps_hat = (x_t - alpha x0_hat)/sigma.
Each expert knows different data and runs on a different schedule, as real ConFiner experts do. Two families
live in two latent spaces (:mod:`confiner_core.embedded.codecs`), selected by name (:data:`PRESETS`):

* ``sd`` (the default): SD-like experts in the :data:`~.codecs.WORLD` space, eps prediction --
  control (AnimateDiff-Lightning's linear schedule): coarse, heavily blurred clips; spatial (SD 1.5 schedule, per
  frame): sharp frames anywhere in the image, no motion; temporal (LaVie's schedule): coherent clips, blurred detail;
* ``wan``: Wan-like flow-matching experts in the causal :data:`~.codecs.CAUSAL` space (4k+1 frames) -- control and
  temporal as above on flow schedules with shift, and an image expert (Qwen-Image / Wan-at-one-frame style) that knows
  single frames encoded alone and refines every *latent* frame as an image;
* ``wan-pixel``: as ``wan`` but the image expert refines every *pixel* frame (decode, refine each frame as its own
  one-frame latent, encode), through the bridge to the per-frame space;
* ``bridge``: the SD-like spatial expert with the Wan-like control and temporal experts: two latent spaces joined by
  the bridge at every coordinated step.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .. import layout as L
from .. import schedules as S
from ..experts import Expert
from ..latent_spaces import Codec, per_frame
from .codecs import CAUSAL, WORLD, CausalWorldCodec, WorldCodec, pack_causal, to_uint8
from .world import DEFAULT_PROMPT, World, blur

WAN_LIKE_SHIFT = 5.0   # diffusers' Wan example uses 5.0 (720p) / 3.0 (480p); ComfyUI gives Wan 8.0
IMAGE_SHIFT = 1.15     # Qwen-Image's default shift in ComfyUI


def posterior_mean(x_t: torch.Tensor, alpha: float, sigma: float, data: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] under a uniform mixture of Diracs at ``data`` [K, D]; ``x_t`` is [N, D]."""
    sq = (x_t**2).sum(1, keepdim=True) - 2 * alpha * x_t @ data.T + alpha**2 * (data**2).sum(1)
    weights = torch.softmax(-sq / (2 * sigma**2), dim=1)
    return weights @ data


@lru_cache(maxsize=8)
def world_for(prompt: str, h: int, w: int) -> World:
    return World(prompt or DEFAULT_PROMPT, h, w)


class PosteriorMeanExpert(Expert):
    """An expert whose 'network' is the exact posterior mean over what it knows, returned in its prediction type.

    ``knowledge`` is "frames" (sharp single frames) or "clips" (the world's clips, blurred by ``detail_blur``);
    the data is encoded into the expert's latent space, so the same world serves every space."""

    default_guidance = 1.0   # the exact posterior mean needs no guidance

    def __init__(self, name: str, schedule: S.NoiseSchedule, layout: str, knowledge: str, detail_blur: float = 0.0,
                 codec: Codec | None = None, prediction: str = "epsilon"):
        self.name, self.schedule, self.layout, self.prediction = name, schedule, layout, prediction
        self.codec = codec or WorldCodec()
        self.latent_space = self.codec.space
        self.knowledge = knowledge
        self.detail_blur = detail_blur

    def encode(self, prompt: str) -> str:
        return prompt or DEFAULT_PROMPT

    def data(self, prompt: str, sample_shape: tuple) -> torch.Tensor:
        """What the expert knows, shaped like one native sample: [K, *sample_shape]."""
        return _data(self.knowledge, self.latent_space.name, prompt, tuple(sample_shape), self.detail_blur)

    def forward(self, x: torch.Tensor, t: float, conds: list) -> list[torch.Tensor]:
        alpha, sigma = self.schedule.coefficients(t)
        flat = x.reshape(x.shape[0], -1).float()  # one sample per row: a clip [C, F, h, w] or a frame [C, h, w]
        outs = []
        for prompt in conds:  # one posterior-mean "network" call per conditioning (forwards_per_call: n_conds)
            data = self.data(prompt, tuple(x.shape[1:])).to(flat)
            x0 = posterior_mean(flat, alpha, sigma, data.reshape(data.shape[0], -1))
            eps = (flat - alpha * x0) / sigma
            out = {"epsilon": eps, "flow": eps - x0}[self.prediction]
            outs.append(out.reshape(x.shape).to(x.dtype))
        return outs


def _world_grid(space_name: str, h: int, w: int) -> tuple[int, int]:
    """The WORLD latent grid behind a latent of size h x w in the named space (CAUSAL packs 2x2 of it)."""
    return (h, w) if space_name == WORLD.name else (2 * h, 2 * w)


@lru_cache(maxsize=32)
def _data(knowledge: str, space_name: str, prompt: str, shape: tuple, detail_blur: float) -> torch.Tensor:
    causal = space_name != WORLD.name
    if knowledge == "frames":   # one native sample is a single (latent) frame [C, h, w]
        gh, gw = _world_grid(space_name, *shape[-2:])
        frames = blur(world_for(prompt, gh, gw).frame_bank(), detail_blur)     # [N, 4, h, w]
        if not causal:
            return frames
        return CAUSAL.process_in(pack_causal(frames.unsqueeze(2)))[:, :, 0]   # each frame encoded alone
    _, t, h, w = shape                        # one native sample is a clip [C, T, h, w]
    gh, gw = _world_grid(space_name, h, w)
    pixel_frames = CAUSAL.pixel_frames(t) if causal else t
    clips = blur(world_for(prompt, gh, gw).true_clips(pixel_frames), detail_blur)
    return CAUSAL.process_in(pack_causal(clips)) if causal else clips


# ----------------------------------------------------------------------------------------------------------------
# The experts and their presets

def sd_control() -> PosteriorMeanExpert:
    return PosteriorMeanExpert("embedded-control (coarse clips, AnimateDiff-Lightning schedule)",
                               S.named("animatediff"), L.VIDEO, "clips", detail_blur=2.5)


def sd_spatial() -> PosteriorMeanExpert:
    return PosteriorMeanExpert("embedded-spatial (sharp frames, SD 1.5 schedule)", S.named("sd15"), L.FRAMES,
                               "frames")


def sd_temporal() -> PosteriorMeanExpert:
    return PosteriorMeanExpert("embedded-temporal (coherent blurred clips, LaVie schedule)", S.named("lavie"),
                               L.VIDEO, "clips", detail_blur=1.2)


def wan_control() -> PosteriorMeanExpert:
    return PosteriorMeanExpert("embedded-wan-control (coarse clips, causal latents, flow shift 5)",
                               S.flow_schedule(WAN_LIKE_SHIFT), L.VIDEO, "clips", detail_blur=2.5,
                               codec=CausalWorldCodec(), prediction="flow")


def wan_temporal() -> PosteriorMeanExpert:
    return PosteriorMeanExpert("embedded-wan-temporal (coherent blurred clips, causal latents, flow shift 5)",
                               S.flow_schedule(WAN_LIKE_SHIFT), L.VIDEO, "clips", detail_blur=1.2,
                               codec=CausalWorldCodec(), prediction="flow")


def image_expert(pixel_frames: bool = False) -> PosteriorMeanExpert:
    """A flow image model in the causal space that knows single frames encoded alone (frame-0-type latents).
    ``pixel_frames=False`` refines every latent frame as an image (fast; latent frames after the first pack four
    pixel frames, which the image model never saw); ``True`` works in the per-frame space through the bridge."""
    codec = per_frame(CausalWorldCodec()) if pixel_frames else CausalWorldCodec()
    mode = "pixel frames" if pixel_frames else "latent frames"
    return PosteriorMeanExpert(f"embedded-image (sharp frames, {mode}, flow shift {IMAGE_SHIFT})",
                               S.flow_schedule(IMAGE_SHIFT), L.FRAMES, "frames", codec=codec, prediction="flow")


PRESETS = {
    "sd": lambda: {"control": sd_control(), "spatial": sd_spatial(), "temporal": sd_temporal()},
    "wan": lambda: {"control": wan_control(), "spatial": image_expert(), "temporal": wan_temporal()},
    "wan-pixel": lambda: {"control": wan_control(), "spatial": image_expert(pixel_frames=True),
                          "temporal": wan_temporal()},
    "bridge": lambda: {"control": wan_control(), "spatial": sd_spatial(), "temporal": wan_temporal()},
}
PRESET_HELP = {
    "sd": "SD-like experts in one 4-channel latent space (the paper's setting)",
    "wan": "Wan-like flow experts in a causal latent space (4k+1 frames); image expert on latent frames",
    "wan-pixel": "as wan, image expert on pixel frames (decode, refine per frame, encode)",
    "bridge": "SD-like spatial expert bridged to Wan-like control and temporal experts (two latent spaces)",
}


def embedded_experts(preset: str = "sd") -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown embedded preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]()


# Compatibility names used by scripts and tests
spatial_expert, temporal_expert, control_expert = sd_spatial, sd_temporal, sd_control


def decode(latent: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """The :data:`~.codecs.WORLD` space's 'VAE' to video frames: canonical latent [B, 4, F, h, w] -> uint8
    [B, F, scale*h, scale*w, 3]."""
    return to_uint8(WorldCodec(scale).decode(latent))
