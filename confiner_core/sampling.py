"""The diffusion maths of the chain as small pure functions (k-diffusion style).

All latents are canonical ``[B, C, F, h, w]``; all noise comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

from typing import Callable

import torch

from .experts import Denoiser, Prediction
from .schedules import NoiseSchedule
from .timesteps import with_next


def randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device, then moved: the same seed gives the same noise on any device.

    A CPU draw for a GPU latent goes through pinned memory with a non-blocking copy, so it does not make the
    host wait for the GPU to drain its queue (which would expose Python overhead between expert calls)."""
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=generator.device)
    if x.device.type == "cuda" and noise.device.type == "cpu":
        noise = noise.pin_memory().to(x.device, non_blocking=True)
    return noise.to(x)


def diffuse(schedule: NoiseSchedule, x0: torch.Tensor, t: float, eps: torch.Tensor) -> torch.Tensor:
    """Forward process, Eq. 1: x_t = alpha_t x0 + sigma_t eps.

    Structure extraction (Eq. 6) and both re-noisings of coordinated denoising (Eq. 9, 11) are this function
    on the spatial or the temporal expert's schedule."""
    alpha, sigma = schedule.coefficients(t)
    return alpha * x0 + sigma * eps


def ddim_step(schedule: NoiseSchedule, pred: Prediction, t: float, t_prev: float, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM step, Eq. 2-4: x_{t_prev} = alpha_prev x0 + sqrt(sigma_prev^2 - s^2) eps + s z,
    with s = eta * sqrt((1 - abar_prev)/(1 - abar_t)) * sqrt(1 - abar_t/abar_prev) (VP). eta = 0 is deterministic."""
    alpha_prev, sigma_prev = schedule.coefficients(t_prev)
    if eta == 0.0:
        return alpha_prev * pred.x0 + sigma_prev * pred.eps
    alpha_t, sigma_t = schedule.coefficients(t)
    abar_t, abar_prev = alpha_t**2, alpha_prev**2
    s = eta * ((1 - abar_prev) / (1 - abar_t)) ** 0.5 * (1 - abar_t / abar_prev) ** 0.5
    if noise is None:
        raise ValueError("ddim_step with eta > 0 needs noise drawn from the seeded generator")
    return alpha_prev * pred.x0 + max(sigma_prev**2 - s**2, 0.0) ** 0.5 * pred.eps + s * noise


def euler_step(schedule: NoiseSchedule, pred: Prediction, t_prev: float) -> torch.Tensor:
    """One Euler step of the probability-flow ODE in sigma = sigma_t/alpha_t (EulerDiscreteScheduler), the sampler
    distilled few-step experts such as AnimateDiff-Lightning were trained for.

    In VE coordinates the step is x' = x + (s' - s) (x - x0)/s = x0 + s' eps; back in the schedule's own scaling that
    is alpha_prev x0 + sigma_prev eps, computed in that form so it stays finite where alpha_t = 0 (a flow schedule's
    last timestep). Unlike DDIM, the last step goes all the way to sigma = 0 (final_sigmas_type "zero")."""
    alpha_prev, sigma_prev = schedule.coefficients(t_prev) if t_prev >= 0 else (1.0, 0.0)
    return alpha_prev * pred.x0 + sigma_prev * pred.eps


def initial_latent(schedule: NoiseSchedule, noise: torch.Tensor, t: float, sampler: str) -> torch.Tensor:
    """Pure-noise start as the reference schedulers do it: DDIM starts at x_T = noise (init_noise_sigma 1);
    Euler starts at sigma_max * noise in VE form, which is sigma_T * noise in the schedule's own scaling."""
    if sampler == "euler":
        return schedule.coefficients(t)[1] * noise
    return noise


EpsHook = Callable[[int, float, torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], None]


def guided_prediction(denoiser: Denoiser, x_t: torch.Tensor, t: float, step: int, eps_hook: EpsHook | None) -> Prediction:
    """The denoiser's prediction, with eps optionally replaced by a hook (coherence guidance, Eq. 12) and x0
    recomputed from the new eps so the pair stays consistent with x_t."""
    pred = denoiser(x_t, t)
    if eps_hook is None:
        return pred
    eps = eps_hook(step, t, x_t, pred.eps)
    alpha, sigma = denoiser.schedule.coefficients(t)
    return Prediction((x_t - sigma * eps) / alpha, eps)


def sample_control(denoiser: Denoiser, x_T: torch.Tensor, timesteps: list, sampler: str = "euler",
                   eta: float = 0.0, generator: torch.Generator | None = None, eps_hook: EpsHook | None = None,
                   callback: Callback | None = None) -> torch.Tensor:
    """Stage 1, Eq. 5: the control expert lays out structure and motion from noise on its own schedule.

    ``x_T`` is unit Gaussian noise (see :func:`initial_latent`). ``sampler`` is "euler" (distilled experts)
    or "ddim" (with ``eta``). ``eps_hook`` may replace each step's eps (coherence guidance)."""
    schedule = denoiser.schedule
    x = initial_latent(schedule, x_T, timesteps[0], sampler)
    for i, (t, t_prev) in enumerate(with_next(timesteps)):
        pred = guided_prediction(denoiser, x, t, i, eps_hook)
        if sampler == "euler":
            x = euler_step(schedule, pred, t_prev)
        elif sampler == "ddim":
            noise = randn_like(x, generator) if eta > 0 else None
            x = ddim_step(schedule, pred, t, t_prev, eta, noise)
        else:
            raise ValueError(f"control sampler must be 'euler' or 'ddim', got {sampler!r}")
        if callback is not None:
            callback({"stage": "control", "i": i, "t": t, "x": x, "denoised": pred.x0})
    return x
