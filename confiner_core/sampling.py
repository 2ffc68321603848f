"""The diffusion maths of the chain as small pure functions (k-diffusion style).

All latents are canonical ``[B, C, F, h, w]``; all noise comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

from typing import Callable

import math
import numbers

import numpy as np
import torch

from .errors import not_a_choice
from .experts import Denoiser, Prediction, check_finite
from .prediction import from_x0_eps, to_x0_eps
from .schedules import FLOW, VP, NoiseSchedule
from .timesteps import STEPS_OFFSET, dpm_solver_timesteps, euler_timesteps, flow_match_timesteps, spaced_timesteps, \
    unipc_timesteps, with_next

#: the control stage's samplers, by ComfyUI's names for them
SAMPLERS = ("euler", "ddim", "dpmpp_2m", "unipc")


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (in host memory) on ``device`` without making the host wait: a copy from pageable memory to a GPU
    waits until the GPU has drained its queue, which exposes the Python work between expert calls; from pinned
    memory it is queued like a kernel."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)  # pin_memory() of a pinned tensor is the tensor
    return t.to(device)


def device_to_host(t: torch.Tensor) -> torch.Tensor:
    """``t`` in host memory. From a GPU it is copied into pinned memory: a copy into pageable memory goes through the
    driver's staging buffer (the 12.6 MB of 16 decoded 512x512 frames took 8.2 ms in the H200 profile of call U,
    under 2 GB/s; into pinned memory 0.4 ms, call W)."""
    if t.device.type != "cuda":
        return t.cpu()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t)  # a blocking copy: done when it returns
    return host


class ItemGenerators:
    """One seeded generator per item of a batch of clips: item b draws all its noise from its own generator, so it is
    the clip batch size 1 makes with that generator. (One generator for the batch interleaves the items' draws from
    the second draw on: the first item of a batch of two was not the batch-1 clip, as it is with ComfyUI's
    KSampler.) Pass it wherever the chain takes a generator."""

    def __init__(self, generators: list[torch.Generator]):
        if not generators or not all(isinstance(g, torch.Generator) for g in generators):
            raise TypeError(f"ItemGenerators needs one seeded torch.Generator per batch item, got {generators!r}")
        self.generators = list(generators)

    @classmethod
    def seeded(cls, seeds: list[int]) -> ItemGenerators:
        """Item b's generator seeded with ``seeds[b]`` (ComfyUI: the seed plus the item's batch index), each an
        integer in ComfyUI's range (-1 became 2**64 - 1 here, where the chain refuses it)."""
        for seed in seeds:
            check_seed(seed, "ItemGenerators.seeded")
        return cls([torch.Generator().manual_seed(seed) for seed in seeds])

    def __len__(self) -> int:
        return len(self.generators)


MAX_SEED = 2**64 - 1       # ComfyUI's seed range


def check_seed(seed, where: str) -> None:
    """An int seed in ComfyUI's range, 0..2**64 - 1 (a float was torch's "manual_seed expected a long")."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{where}: seed must be an integer in 0..{MAX_SEED} (ComfyUI's range), got {seed!r}")


def check_generator(generator, where: str, batch: int | None = None, seeds: bool = False) -> None:
    """The chain draws fresh noise (Eq. 6, 9, 11, DDIM's eta), so it needs the caller's seeded generator: refused
    here, before any evaluation, rather than deep inside the first draw. ``batch``: the clips of the latent it will
    draw for, which :class:`ItemGenerators` must match (a wrong count was refused after the control stage, as if the
    noise were wrong). ``seeds``: the caller takes an int seed too (:func:`seeded`)."""
    if not isinstance(generator, (torch.Generator, ItemGenerators)):
        raise TypeError(f"{where} needs {'a seed (an int) or ' if seeds else ''}a seeded torch.Generator (e.g. "
                        f"torch.Generator().manual_seed(0)), got {type(generator).__name__}: every random draw of the "
                        "chain comes from it, so one seed gives one video")
    if isinstance(generator, ItemGenerators) and batch is not None and len(generator) != batch:
        raise ValueError(f"{where}: ItemGenerators of {len(generator)} generator(s) for a batch of {batch} clip(s): "
                         f"give one generator per clip, ItemGenerators.seeded([...]) with {batch} seed(s)")


def spawned_seed(seed: int, *key: int) -> int:
    """A seed of its own for the stream ``key`` of ``seed``: the first 64-bit word of numpy's ``SeedSequence(seed,
    spawn_key=key)``, NumPy's construction of independent streams from one seed."""
    return int(np.random.SeedSequence(int(seed), spawn_key=key).generate_state(1, dtype=np.uint64)[0])


#: the stream an int seed gives the chain's own draws (:func:`seeded`), apart from ConFiner-Long's task streams
#: (``long.task_seed``'s kinds 0-2)
CHAIN_DRAWS = 3
#: the stream of an int seed given to the control stage alone (``generate_structure``): its draws (DDIM's eta) were
#: those of Eq. 6's noise where a script passed one int to both stages
CONTROL_DRAWS = 4


def seeded(generator, where: str, batch: int | None = None, stream: int = CHAIN_DRAWS):
    """The generator a stage function draws from: ``generator`` as given (the run continues from its state), or for
    an int a CPU generator of that seed's own ``stream`` (:data:`CHAIN_DRAWS`; :data:`CONTROL_DRAWS` for the control
    stage alone), as ``generate_long`` takes a seed. Not ``torch.Generator().manual_seed(seed)``: noise a caller drew
    with that, passed with the same int, was drawn again as Eq. 6's. Checked by :func:`check_generator`."""
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        check_seed(generator, where)
        generator = torch.Generator().manual_seed(spawned_seed(generator, stream))
    check_generator(generator, where, batch, seeds=True)
    return generator


def randn(shape: tuple, generator: torch.Generator | ItemGenerators, device: torch.device) -> torch.Tensor:
    """float32 Gaussian noise of ``shape`` drawn on the generator's device, then moved to ``device``: the same seed
    gives the same noise on any device. Drawn on the host for a GPU, it is written straight into pinned memory
    (copying a fresh draw there cost 3-4 ms of host time per draw in H200 profiles, with the GPU idle when the
    host was behind). :class:`ItemGenerators` draw item b of the batch (``shape[0]``) from generator b."""
    # (None failed here: "'NoneType' has no attribute 'device'")
    check_generator(generator, "drawing noise", shape[0])
    if isinstance(generator, ItemGenerators):
        return torch.cat([randn((1, *shape[1:]), g, device) for g in generator.generators])
    pin = torch.device(device).type == "cuda" and generator.device.type == "cpu"
    noise = torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device, pin_memory=pin)
    return host_to_device(noise, device)


def randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """:func:`randn` of ``x``'s shape, on its device and in its dtype."""
    return randn(x.shape, generator, x.device).to(x)


def diffuse(schedule: NoiseSchedule, x0: torch.Tensor, t: float, eps: torch.Tensor) -> torch.Tensor:
    """Forward process, Eq. 1: x_t = alpha_t x0 + sigma_t eps, ``t`` a position on ``schedule``
    (``schedule.index(timestep)`` of a network timestep: :mod:`~confiner_core.schedules`).

    Structure extraction (Eq. 6) and both re-noisings of coordinated denoising (Eq. 9, 11) are this function
    on the spatial or the temporal expert's schedule."""
    alpha, sigma = schedule.coefficients(t)
    return alpha * x0 + sigma * eps


# ----------------------------------------------------------------------------------------------------------------
# The ODE derivative: what coherence guidance (Eq. 12) pulls and what naive alternation (Eq. 7) carries across

# The prediction type whose output is the probability-flow ODE's derivative in the schedule's own coordinates:
# VP, in k-diffusion's VE form x/alpha = x0 + (sigma/alpha) eps: dx/d(sigma/alpha) = eps (k-diffusion's to_d);
# flow, x = (1 - s) x0 + s eps: dx/ds = eps - x0 (the velocity flow experts predict).
DERIVATIVE_PREDICTION = {VP: "epsilon", FLOW: "flow"}


def derivative(pred: Prediction, kind: str) -> torch.Tensor:
    """The ODE derivative of a prediction on a schedule of this kind: eps (VP) or u = eps - x0 (flow)."""
    return from_x0_eps(pred.x0, pred.eps, 1.0, 1.0, DERIVATIVE_PREDICTION[kind])  # neither uses alpha, sigma


def from_derivative(x_t: torch.Tensor, d: torch.Tensor, alpha: float, sigma: float, kind: str) -> Prediction:
    """The (x0, eps) pair with derivative ``d`` that stays consistent with x_t = alpha x0 + sigma eps.

    VP: eps = d, x0 = (x_t - sigma d)/alpha (alpha > 0 on every VP schedule). Flow: x0 = x_t - sigma u,
    eps = x_t + alpha u, which never divides by alpha, so it stays finite at sigma = 1 (alpha = 0), where
    a flow expert's control stage starts."""
    return Prediction(*to_x0_eps(d, x_t, alpha, sigma, DERIVATIVE_PREDICTION[kind]))


def on_schedule(pred: Prediction, x_t: torch.Tensor, schedule: NoiseSchedule, t: float) -> Prediction:
    """An expert's prediction read on another expert's schedule at the same t (Eq. 7): its derivative (its noise
    prediction eps for a VP schedule) is kept, and x0 recomputed from x_t with that schedule's coefficients."""
    alpha, sigma = schedule.coefficients(t)
    return from_derivative(x_t, derivative(pred, schedule.kind), alpha, sigma, schedule.kind)


# ----------------------------------------------------------------------------------------------------------------
# Steps

def ddim_sigma(alpha_t: float, sigma_t: float, alpha_prev: float, sigma_prev: float, eta: float) -> float:
    """DDIM's noise scale s (Song et al. Eq. 16) for any Gaussian forward process x_t = alpha_t x0 + sigma_t eps:
    s = eta * (sigma_prev/sigma_t) * sqrt(sigma_t^2 - (alpha_t/alpha_prev)^2 sigma_prev^2), i.e. eta times the std of
    the posterior q(x_prev | x_t, x0) of the Markov chain with these marginals. For VP schedules this is
    eta * sqrt((1 - abar_prev)/(1 - abar_t)) * sqrt(1 - abar_t/abar_prev) (diffusers' DDIMScheduler); for flow
    schedules it is the same posterior for alpha = 1 - s, sigma = s, finite at alpha_t = 0 (there s = eta sigma_prev)."""
    if eta == 0.0 or sigma_prev == 0.0:
        return 0.0
    variance = sigma_t**2 - (alpha_t / alpha_prev * sigma_prev) ** 2
    return eta * sigma_prev / sigma_t * max(variance, 0.0) ** 0.5


def ddim_step(schedule: NoiseSchedule, pred: Prediction, t: float, t_prev: float, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM step, Eq. 2-4: x_{t_prev} = alpha_prev x0 + sqrt(sigma_prev^2 - s^2) eps + s z, with s from
    :func:`ddim_sigma`; ``t``, ``t_prev``: positions on ``schedule`` (-1: its end, ``final_alpha`` and
    ``final_sigma``: sigma 0 where diffusers sets alpha to one, else t = 0's level, as SD 1.5's DDIM ends at alpha-bar
    0.99915, not at x0 itself). eta = 0 is deterministic; on a flow schedule it is exactly a flow Euler step,
    x + (s_prev - s_t) u."""
    alpha_prev, sigma_prev = schedule.coefficients(t_prev)
    if eta == 0.0:
        return alpha_prev * pred.x0 + sigma_prev * pred.eps
    if noise is None:
        raise ValueError("ddim_step with eta > 0 needs noise drawn from the seeded generator")
    alpha_t, sigma_t = schedule.coefficients(t)
    s = ddim_sigma(alpha_t, sigma_t, alpha_prev, sigma_prev, eta)
    return alpha_prev * pred.x0 + max(sigma_prev**2 - s**2, 0.0) ** 0.5 * pred.eps + s * noise


def euler_step(schedule: NoiseSchedule, pred: Prediction, t_prev: float) -> torch.Tensor:
    """One Euler step of the probability-flow ODE in sigma = sigma_t/alpha_t (EulerDiscreteScheduler), the sampler
    distilled few-step experts such as AnimateDiff-Lightning were trained for.

    In VE coordinates the step is x' = x + (s' - s) (x - x0)/s = x0 + s' eps; back in the schedule's own scaling that
    is alpha_prev x0 + sigma_prev eps, computed in that form so it stays finite where alpha_t = 0 (a flow schedule's
    last timestep). Unlike DDIM, the last step goes all the way to sigma = 0 (final_sigmas_type "zero")."""
    alpha_prev, sigma_prev = schedule.coefficients(t_prev) if t_prev >= 0 else (1.0, 0.0)
    return alpha_prev * pred.x0 + sigma_prev * pred.eps


def log_snr(alpha: float, sigma: float) -> float:
    """lambda = log(alpha/sigma), DPM-Solver's time variable: -inf at pure noise (alpha = 0, a flow schedule's
    top), +inf at the clean end."""
    if alpha == 0.0:
        return -math.inf
    if sigma == 0.0:
        return math.inf
    return math.log(alpha / sigma)


def dpmpp_2m_step(schedule: NoiseSchedule, pred: Prediction, t: float, t_prev: float,
                  previous: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """One step of DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2; diffusers' DPMSolverMultistepScheduler with
    solver_order 2 and the midpoint solver, k-diffusion's sample_dpmpp_2m), ``previous`` the (x0, t) of the step
    before.

    Its first-order update, (sigma_prev/sigma_t) x_t - alpha_prev (e^-h - 1) x0 with h = lambda_prev - lambda_t, is
    exactly the deterministic DDIM step alpha_prev x0 + sigma_prev eps; the second order adds
    alpha_prev (1 - e^-h) (x0 - x0_last) / 2r, r = h_last / h. Written that way it stays finite where alpha_t = 0
    (a flow schedule's sigma 1: there h is infinite, e^-h = 0, and the next step's r too, so it is first order).
    The first step has no ``previous`` and the last, to sigma 0 (final_sigmas_type "zero"), is first order."""
    alpha_t, sigma_t = schedule.coefficients(t)
    alpha_prev, sigma_prev = schedule.coefficients(t_prev) if t_prev >= 0 else (1.0, 0.0)
    x = alpha_prev * pred.x0 + sigma_prev * pred.eps
    if previous is None or sigma_prev == 0.0:
        return x
    x0_last, t_last = previous
    h = log_snr(alpha_prev, sigma_prev) - log_snr(alpha_t, sigma_t)
    r = (log_snr(alpha_t, sigma_t) - log_snr(*schedule.coefficients(t_last))) / h
    if not math.isfinite(r):
        return x
    return x + alpha_prev * -math.expm1(-h) / (2 * r) * (pred.x0 - x0_last)


def unipc_b(hh: float, order: int) -> list[float]:
    """UniPC's b_i, i = 1..order, for B(h) = e^h - 1 (its "bh2" variant) at hh = -h (data prediction): phi_1 =
    e^hh - 1, phi_{k+1} = phi_k / hh - 1/(k+1)!, b_i = i! phi_{i+1} / B(h), as UniPCMultistepScheduler computes them
    (finite at hh = -inf, a step from sigma 1)."""
    b_h = math.expm1(hh)
    phi, factorial, out = b_h / hh - 1, 1, []
    for i in range(1, order + 1):
        out.append(phi * factorial / b_h)
        factorial *= i + 1
        phi = phi / hh - 1 / factorial
    return out


def unipc_correct(schedule: NoiseSchedule, x_last: torch.Tensor, x0_last: torch.Tensor, t_last: float,
                  x0: torch.Tensor, t: float, before: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """UniC, UniPC's corrector (Zhao et al. 2023; UniPCMultistepScheduler's ``multistep_uni_c_bh_update``, bh2):
    the sample at t predicted from ``x_last`` (the sample the step from ``t_last`` started at) made again with the
    x0 estimate at t itself, ``x0``, which that sample's evaluation gave; no extra evaluation. Order 1 without
    ``before`` (x0, t) of the step before ``t_last``, else order 2."""
    alpha_t, sigma_t = schedule.coefficients(t)
    alpha_s, sigma_s = schedule.coefficients(t_last)
    lam_s = log_snr(alpha_s, sigma_s)
    h = log_snr(alpha_t, sigma_t) - lam_s
    b_h = math.expm1(-h)
    x = sigma_t / sigma_s * x_last - alpha_t * b_h * x0_last   # the first-order step from x_last
    if before is None:
        return x - alpha_t * b_h * 0.5 * (x0 - x0_last)
    x0_before, t_before = before
    rk = (log_snr(*schedule.coefficients(t_before)) - lam_s) / h
    b1, b2 = unipc_b(-h, 2)
    rho1 = (b1 - b2) / (1 - rk)   # [[1, 1], [rk, 1]] rho = b; rk = -inf (a step from sigma 1): rho1 = 0
    rho2 = b1 - rho1
    d1 = (x0_before - x0_last) / rk if math.isfinite(rk) else torch.zeros_like(x0)
    return x - alpha_t * b_h * (rho1 * d1 + rho2 * (x0 - x0_last))


# ----------------------------------------------------------------------------------------------------------------
# Stage 1 (Eq. 5)

def control_timesteps(schedule: NoiseSchedule, num_steps: int, sampler: str = "euler",
                      spacing: str = "trailing") -> list:
    """The control stage's timesteps as diffusers lays them out for this sampler and schedule, as positions on the
    schedule's table (the ``t`` a denoiser and the steps below take; on a flow schedule the network timestep is
    ``schedule.timestep(t)``):

    * ddim: DDIMScheduler (integer timesteps, steps_offset 1 for "leading");
    * euler on a VP schedule: EulerDiscreteScheduler ("linspace" keeps fractional timesteps);
    * euler on a flow schedule: "linspace" is FlowMatchEulerDiscreteScheduler with the expert's shift; "trailing"
      takes every (N/n)-th entry of the shifted table from the top, rounded as diffusers rounds (ComfyUI's "simple"
      scheduler truncates: the same where n divides N, e.g. sigma = 1, .9, .75, .5 for shift 3 and 4 steps),
      "leading" is DDIM's list on that table;
    * dpmpp_2m: DPMSolverMultistepScheduler (:func:`dpm_solver_timesteps`; on a flow schedule "linspace" is its flow
      sigmas with the expert's shift, the others its lists on the shifted table);
    * unipc: UniPCMultistepScheduler (:func:`unipc_timesteps`: DPM-Solver's, but its flow sigmas start at 1)."""
    t_max = schedule.num_timesteps - 1
    if sampler not in SAMPLERS:
        raise ValueError(not_a_choice("control sampler", sampler, SAMPLERS))
    if sampler == "ddim":
        ts = spaced_timesteps(num_steps, t_max, spacing, STEPS_OFFSET)
    elif sampler == "dpmpp_2m":
        ts = dpm_solver_timesteps(schedule, num_steps, spacing, STEPS_OFFSET)
    elif sampler == "unipc":
        ts = unipc_timesteps(schedule, num_steps, spacing, STEPS_OFFSET)
    elif schedule.kind == FLOW and spacing == "linspace":
        ts = flow_match_timesteps(schedule, num_steps)
    else:
        ts = euler_timesteps(num_steps, t_max, spacing, STEPS_OFFSET)
    # diffusers' one step: linspace's np.linspace(0, t_max, 1) = [0], leading's [0 + steps_offset]
    if schedule.timestep(ts[0]) <= schedule.num_timesteps // 100:
        raise ValueError(f"{num_steps} control step{'s' * (num_steps != 1)} with {spacing!r} spacing start"
                         f"{'s' * (num_steps == 1)} at timestep {schedule.timestep(ts[0]):g}, where the sample counts "
                         f"as nearly clean: the control expert would lay out nothing and the structure would be the "
                         f"noise; use 'trailing' spacing or more steps")
    return ts


def initial_latent(schedule: NoiseSchedule, noise: torch.Tensor, t: float, sampler: str,
                   spacing: str = "trailing") -> torch.Tensor:
    """Pure-noise start as diffusers' schedulers do it, in the schedule's own scaling (what the expert is fed after
    ``scale_model_input``). DDIM: x_T = noise (init_noise_sigma 1). Euler: init_noise_sigma * noise in VE form with
    init_noise_sigma = sigma_max for "trailing"/"linspace", i.e. sigma_T * noise here; for "leading" diffusers uses
    sqrt(sigma_max^2 + 1), which is unit-variance noise here. DPM-Solver and UniPC: x_T = noise, as DDIM. On a flow
    schedule at sigma = 1 all of these are the noise itself, where flow pipelines (SD3, Wan with
    FlowMatchEulerDiscreteScheduler) start."""
    if sampler == "euler" and spacing != "leading":
        return schedule.coefficients(t)[1] * noise
    return noise


EpsHook = Callable[[int, float, torch.Tensor, torch.Tensor], torch.Tensor]
#: called after each step with :func:`step_info`'s dict
Callback = Callable[[dict], None]


def network_timestep(schedule: NoiseSchedule, t: float) -> float:
    """The network timestep the user's T_e counts in at table position ``t`` (:meth:`NoiseSchedule.timestep`),
    rounded to 9 decimals: a flow expert's 200 read 200.00000000000003."""
    return round(schedule.timestep(t), 9)


def step_info(stage: str, i: int, t: float, denoiser: Denoiser, x: torch.Tensor, denoised: torch.Tensor,
              **extra) -> dict:
    """What a :data:`Callback` gets after step ``i`` of ``stage``: ``t`` the table position, ``timestep`` the
    network timestep the user's T_e counts in (a flow expert's 1000 sigma, :meth:`NoiseSchedule.timestep`), the new
    sample ``x`` and the step's x0 estimate ``denoised``. A coordinated refinement step adds the hand-over's
    tensors (:func:`~confiner_core.refine.refine_coordinated`); ConFiner-Long adds the ``structure`` or ``window``
    the step belongs to (``timestep``: :func:`network_timestep`)."""
    return {"stage": stage, "i": i, "t": t, "timestep": network_timestep(denoiser.schedule, t), "x": x,
            "denoised": denoised, **extra}


def guided_prediction(denoiser: Denoiser, x_t: torch.Tensor, t: float, step: int, eps_hook: EpsHook | None) -> Prediction:
    """The denoiser's prediction with its ODE derivative (:func:`derivative`: eps for VP schedules, as Eq. 12 prints
    it; the velocity u = eps - x0 for flow schedules) replaced by a hook (coherence guidance, Eq. 12), and the pair
    recomputed so it stays consistent with x_t (:func:`from_derivative`, finite at sigma = 1)."""
    pred = denoiser(x_t, t)
    if eps_hook is None:
        return pred
    schedule = denoiser.schedule
    alpha, sigma = schedule.coefficients(t)
    d = eps_hook(step, t, x_t, derivative(pred, schedule.kind))
    return from_derivative(x_t, d, alpha, sigma, schedule.kind)


def sample_control(denoiser: Denoiser, x_T: torch.Tensor, timesteps: list, sampler: str = "euler",
                   eta: float = 0.0, generator: torch.Generator | None = None, eps_hook: EpsHook | None = None,
                   callback: Callback | None = None, spacing: str = "trailing") -> torch.Tensor:
    """Stage 1, Eq. 5: the control expert lays out structure and motion from noise on its own schedule.

    ``x_T`` is unit Gaussian noise, scaled as diffusers does for ``sampler`` and ``spacing`` (see
    :func:`initial_latent`; ``timesteps`` from :func:`control_timesteps`). ``sampler`` is "euler" (distilled
    experts), "ddim" (with ``eta``), "dpmpp_2m" or "unipc" (second order: undistilled experts in few steps; UniPC,
    Wan's own sampler, is DPM-Solver++ 2M corrected by UniC at every step after the first).
    ``eps_hook`` may replace each step's derivative (coherence guidance)."""
    if sampler not in SAMPLERS:
        raise ValueError(not_a_choice("control sampler", sampler, SAMPLERS))
    schedule = denoiser.schedule
    x = initial_latent(schedule, x_T, timesteps[0], sampler, spacing)
    previous, history, x_last = None, [], None
    for i, (t, t_prev) in enumerate(with_next(timesteps)):
        pred = guided_prediction(denoiser, x, t, i, eps_hook)
        if sampler == "euler":
            x = euler_step(schedule, pred, t_prev)
        elif sampler == "dpmpp_2m":
            x = dpmpp_2m_step(schedule, pred, t, t_prev, previous)
            previous = (pred.x0, t)
        elif sampler == "unipc":
            if history:   # UniC with this evaluation, of the order the step here was predicted at
                before = history[-2] if len(history) > 1 else None
                x = unipc_correct(schedule, x_last, *history[-1], pred.x0, t, before)
                alpha, sigma = schedule.coefficients(t)
                pred = Prediction(pred.x0, (x - alpha * pred.x0) / sigma)   # the corrected sample's
            x_last = x
            x = dpmpp_2m_step(schedule, pred, t, t_prev, history[-1] if history else None)   # the predictor, UniP
            history = [*history[-1:], (pred.x0, t)]
        else:
            noise = randn_like(x, generator) if eta > 0 else None
            x = ddim_step(schedule, pred, t, t_prev, eta, noise)
        if callback is not None:
            callback(step_info("control", i, t, denoiser, x, pred.x0))
    check_finite(denoiser)
    return x
