"""The expert interface every backend implements, and the evaluation log.

An :class:`Expert` knows its schedule, prediction type, latent layout and latent space, and returns a raw
network output for a noisy latent at a timestep. Binding it to a prompt and a guidance scale gives a
:class:`Denoiser`, the callable the samplers use: ``denoiser(x_t, t) -> Prediction(x0, eps)`` in the core's
canonical video layout ``[B, C, F, h, w]``.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from . import layout as L
from .latent_spaces import SD15, Codec, LatentSpace
from .prediction import PREDICTION_TYPES, to_x0_eps
from .schedules import NoiseSchedule


class Prediction(NamedTuple):
    x0: torch.Tensor
    eps: torch.Tensor


@dataclass
class EvaluationLog:
    """Counts denoiser calls ("expert evaluations", the paper's unit) and network forwards per stage."""

    evaluations: Counter = field(default_factory=Counter)
    forwards: Counter = field(default_factory=Counter)
    current: str = "unstaged"

    @contextlib.contextmanager
    def stage(self, name: str):
        previous, self.current = self.current, name
        try:
            yield self
        finally:
            self.current = previous

    def record(self, forwards: int) -> None:
        self.evaluations[self.current] += 1
        self.forwards[self.current] += forwards

    def as_dict(self) -> dict:
        return {"evaluations": dict(self.evaluations), "forwards": dict(self.forwards),
                "total_evaluations": sum(self.evaluations.values())}


def in_stage(log: "EvaluationLog | None", name: str):
    """``log.stage(name)``, or nothing when no log is kept."""
    return log.stage(name) if log is not None else contextlib.nullcontext()


class Expert(ABC):
    """A diffusion model used as one link of the chain.

    Subclasses set the attributes and implement :meth:`encode` and :meth:`forward`.
    ``latent_space`` is the space the expert denoises in (:mod:`confiner_core.latent_spaces`); ``codec`` its VAE,
    needed only where the chain bridges it to an expert of another space. ``layout`` says how the expert takes a
    latent video: whole (``video``) or one (latent) frame at a time (``frames``, image models).
    ``max_frames`` is the longest clip (in latent frames) a temporal model accepts (None: any).
    """

    name: str = "expert"
    schedule: NoiseSchedule
    prediction: str = "epsilon"
    layout: str = L.VIDEO
    latent_space: LatentSpace = SD15
    codec: Codec | None = None
    max_frames: int | None = None

    @property
    def latent_channels(self) -> int:
        return self.latent_space.channels

    @abstractmethod
    def encode(self, prompt: str) -> Any:
        """Prompt -> this expert's own conditioning (its text encoder, its width)."""

    @abstractmethod
    def forward(self, x: torch.Tensor, t: float, conds: list) -> list[torch.Tensor]:
        """Raw outputs for latent ``x`` (native layout) at timestep ``t``, one per conditioning in ``conds``.
        Backends may batch the conditionings into one network call."""

    def forwards_per_call(self, n_conds: int) -> int:
        return n_conds

    def guidance_at(self, t: float, default: float) -> float:
        """The classifier-free guidance scale at timestep ``t`` (an expert pair may use one per member)."""
        return default

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float, t: float) -> torch.Tensor:
        """Classifier-free guidance of two raw outputs (native layout). Families whose pipelines combine them
        differently (Qwen-Image rescales to the conditional output's norm) override this."""
        return uncond + scale * (cond - uncond)

    def bind(self, prompt: str = "", negative_prompt: str = "", guidance_scale: float = 1.0,
             log: EvaluationLog | None = None) -> "Denoiser":
        positive = self.encode(prompt)
        negative = self.encode(negative_prompt) if guidance_scale != 1.0 else None
        return Denoiser(self, positive, negative, guidance_scale, log)

    def describe(self) -> dict:
        return {"name": self.name, "class": type(self).__name__, "schedule": self.schedule.name,
                "prediction": self.prediction, "layout": self.layout, "latent_channels": self.latent_channels,
                "latent_space": self.latent_space.name}


class ExpertPair(Expert):
    """Two networks sharing one role, schedule and latent space, split at a noise level (Wan 2.2 A14B: the
    high-noise expert where sigma_t >= ``boundary``, the low-noise expert below; diffusers' ``boundary_ratio``
    0.875 for text-to-video compares the shifted flow sigma). ``guidance``: optional (high, low) CFG scales, like
    diffusers' ``guidance_scale`` / ``guidance_scale_2``."""

    def __init__(self, high: Expert, low: Expert, boundary: float, guidance: tuple | None = None,
                 name: str | None = None):
        for attr in ("prediction", "layout", "latent_space"):
            if getattr(high, attr) != getattr(low, attr):
                raise ValueError(f"the experts of a pair must share their {attr}: {getattr(high, attr)!r} vs "
                                 f"{getattr(low, attr)!r}")
        if high.schedule.num_timesteps != low.schedule.num_timesteps or \
                not torch.allclose(high.schedule.sigmas, low.schedule.sigmas):
            raise ValueError("the experts of a pair must share one noise schedule (same shift)")
        self.high, self.low, self.boundary, self.guidance = high, low, float(boundary), guidance
        self.name = name or f"{high.name} + {low.name}"
        self.schedule, self.prediction, self.layout = low.schedule, low.prediction, low.layout
        self.latent_space, self.codec = low.latent_space, low.codec or high.codec
        self.max_frames = low.max_frames

    def member(self, t: float) -> int:
        """0 (high-noise expert) or 1 (low-noise expert) for timestep ``t``."""
        return 0 if self.schedule.coefficients(t)[1] >= self.boundary else 1

    def encode(self, prompt: str):
        return (self.high.encode(prompt), self.low.encode(prompt))

    def forward(self, x: torch.Tensor, t: float, conds: list) -> list[torch.Tensor]:
        i = self.member(t)
        return (self.high, self.low)[i].forward(x, t, [c[i] for c in conds])

    def forwards_per_call(self, n_conds: int) -> int:
        return self.low.forwards_per_call(n_conds)

    def guidance_at(self, t: float, default: float) -> float:
        return default if self.guidance is None else self.guidance[self.member(t)]

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float, t: float) -> torch.Tensor:
        return (self.high, self.low)[self.member(t)].combine_guidance(uncond, cond, scale, t)

    def describe(self) -> dict:
        return {**super().describe(), "boundary": self.boundary, "members": [self.high.describe(), self.low.describe()]}


@dataclass
class Denoiser:
    """An expert bound to its conditioning: ``denoiser(x_t, t)`` -> (x0_hat, eps_hat) with classifier-free guidance."""

    expert: Expert
    positive: Any
    negative: Any = None
    guidance_scale: float = 1.0
    log: EvaluationLog | None = None

    @property
    def schedule(self) -> NoiseSchedule:
        return self.expert.schedule

    def raw(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """CFG-combined network output in canonical layout."""
        native = L.from_canonical(x_t, self.expert.layout)
        if self.negative is None:
            (out,) = self.expert.forward(native, t, [self.positive])
            n = 1
        else:
            uncond, cond = self.expert.forward(native, t, [self.negative, self.positive])
            out = self.expert.combine_guidance(uncond, cond, self.expert.guidance_at(t, self.guidance_scale), t)
            n = 2
        if self.log is not None:
            self.log.record(self.expert.forwards_per_call(n))
        return L.to_canonical(out, self.expert.layout, batch=x_t.shape[0])

    def __call__(self, x_t: torch.Tensor, t: float) -> Prediction:
        alpha, sigma = self.schedule.coefficients(t)
        return Prediction(*to_x0_eps(self.raw(x_t, t), x_t, alpha, sigma, self.expert.prediction))

    def with_prompt(self, prompt: str) -> "Denoiser":
        """The same expert and guidance with another positive prompt (prompt travel)."""
        return Denoiser(self.expert, self.expert.encode(prompt), self.negative, self.guidance_scale, self.log)


def check_expert(expert: Expert) -> None:
    if expert.prediction not in PREDICTION_TYPES:
        raise ValueError(f"expert {expert.name!r} has prediction type {expert.prediction!r}; "
                         f"supported: {PREDICTION_TYPES}")
    if expert.layout not in L.LAYOUTS:
        raise ValueError(f"expert {expert.name!r} has layout {expert.layout!r}; supported: {L.LAYOUTS}")
