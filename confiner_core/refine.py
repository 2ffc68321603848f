"""Stage 2: refinement of the noised structure from T_e to 0 (one sampler per function).

* :func:`refine_standard` -- Eq. 8, DDIM steps of the spatial expert only;
* :func:`refine_coordinated` -- Algorithm 1, lines 10-14, built from :func:`coordinated_step`;
* :func:`refine_naive_alternation` -- Eq. 7, the ablation the paper shows to be ineffective;
* :func:`refine_temporal_only` -- the "only temporal expert" row of Table 5.
"""

from __future__ import annotations

import numbers

import torch

from .errors import not_a_choice
from .experts import Denoiser, Prediction, check_denoisers, check_finite, hand_off, own_stage
from .sampling import (Callback, check_generator, ddim_step, diffuse, network_timestep, on_schedule, randn_like, seeded,
                       step_info)
from .schedules import NoiseSchedule
from .timesteps import with_next

SAME_INDEX = "same_index"
NEAREST = "nearest"
CONTINUOUS = "continuous"
TIMESTEP_MATCHING = (SAME_INDEX, NEAREST, CONTINUOUS)


def matched_timestep(source: NoiseSchedule, target: NoiseSchedule, t: float, matching: str = SAME_INDEX) -> float:
    """The target-schedule position used to re-noise a sample that sits at position ``t`` on the source schedule.

    ``same_index`` is the paper as written: the same timestep on both schedules, although their noise levels differ
    (the same table index for two VP experts; a flow expert's timestep is N sigma, see
    :meth:`NoiseSchedule.index`); ``nearest`` picks the target table entry with the closest noise level
    sigma/alpha; ``continuous`` the exact fractional position of equal noise level (for experts that accept
    continuous time). Noise levels compare across VP and flow experts alike (sigma/alpha)."""
    if matching == SAME_INDEX:
        return target.index(source.timestep(t))
    if matching not in TIMESTEP_MATCHING:
        raise ValueError(not_a_choice("timestep matching", matching, TIMESTEP_MATCHING))
    alpha, sigma = source.coefficients(t)
    return target.timestep_for_noise_level(sigma / alpha, continuous=matching == CONTINUOUS)


def _step(denoiser: Denoiser, pred: Prediction, t: float, t_prev: float, eta: float, generator) -> torch.Tensor:
    noise = randn_like(pred.x0, generator) if eta > 0 else None
    return ddim_step(denoiser.schedule, pred, t, t_prev, eta, noise)


def refine_standard(spatial: Denoiser, x: torch.Tensor, timesteps: list, eta: float = 0.0,
                    generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Eq. 8: V'_{t_{k-1}} = Denoising(theta_s, V'_{t_k}, t_k, S_s)."""
    check_denoisers("refine_standard", spatial=spatial)
    with own_stage(spatial, "refine"):
        for i, (t, t_prev) in enumerate(with_next(timesteps)):
            pred = spatial(x, t)
            x = _step(spatial, pred, t, t_prev, eta, generator)
            if callback is not None:
                callback(step_info("refine", i, t, spatial, x, pred.x0))
        check_finite(spatial)
    return x


def coordinated_step(spatial: Denoiser, temporal: Denoiser, x: torch.Tensor, t: float, generator: torch.Generator,
                     matching: str = SAME_INDEX, seen: dict | None = None) -> tuple[torch.Tensor, Prediction]:
    """Algorithm 1, lines 10-13 (Eq. 9-11): hand the sample from the spatial to the temporal expert and back through
    x0: the spatial expert's x0 re-noised on the temporal schedule (Eq. 9), the temporal expert's x0 there (Eq. 10),
    re-noised on the spatial schedule (Eq. 11).

    Experts in different latent spaces meet through :func:`~confiner_core.experts.hand_off` (the bridge through
    their VAEs); within one space it is the identity. Returns the new V'_{t_k} (on the spatial schedule) and the
    temporal expert's prediction (in its own space); ``seen`` (a dict), where given, also receives the spatial
    expert's x0 of line 10 (in its own space, before any hand-off) as ``spatial_denoised``, the temporal expert's
    input V''_{t_k} (Eq. 9) as ``temporal_input``, and where on its schedule that is: ``temporal_t`` (a position)
    and ``temporal_timestep`` (its network timestep, as ``timestep``). ``t`` is a position on the spatial expert's
    schedule (:func:`~confiner_core.chain.refine_positions` gives the chain's; ``schedule.index(timestep)`` converts
    a network timestep, the same number only on VP schedules)."""
    check_denoisers("coordinated_step", spatial=spatial, temporal=temporal)
    # (before the spatial evaluation it would follow)
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        # (the loops take an int: a step called with one int each time would draw the same noise at every step)
        raise TypeError(f"coordinated_step draws fresh noise at every step (Eq. 9, 11), so it takes one seeded "
                        f"torch.Generator for the whole loop, not a seed ({generator}): g = "
                        f"torch.Generator().manual_seed({generator}) before the loop (refine_coordinated takes an int)")
    check_generator(generator, "coordinated_step", x.shape[0] if torch.is_tensor(x) else None)
    with own_stage(spatial, "refine"):
        pred_spatial = spatial(x, t)                                               # line 10
        x0_spatial = hand_off(pred_spatial.x0, spatial, temporal)
        t_temporal = matched_timestep(spatial.schedule, temporal.schedule, t, matching)
        x_temporal = diffuse(temporal.schedule, x0_spatial, t_temporal, randn_like(x0_spatial, generator))  # Eq. 9
        if seen is not None:   # (the matched timestep too: a researcher regressed it out of the tensors)
            seen.update(spatial_denoised=pred_spatial.x0, temporal_input=x_temporal, temporal_t=t_temporal,
                        temporal_timestep=network_timestep(temporal.schedule, t_temporal))
        pred_temporal = temporal(x_temporal, t_temporal)                           # Eq. 10
        x0_back = hand_off(pred_temporal.x0, temporal, spatial)
        x_back = diffuse(spatial.schedule, x0_back, t, randn_like(x, generator))                           # Eq. 11
    return x_back, pred_temporal


def refine_coordinated(spatial: Denoiser, temporal: Denoiser, x: torch.Tensor, timesteps: list,
                       generator: torch.Generator | int, matching: str = SAME_INDEX, eta: float = 0.0,
                       callback: Callback | None = None) -> torch.Tensor:
    """Algorithm 1, lines 9-14: per refinement step, the coordinated hand-over then one spatial DDIM step (Eq. 8).
    Three expert evaluations per step (two spatial, one temporal). ``callback`` gets, besides :func:`step_info`'s
    keys (``denoised``: the spatial x0 of line 14), the spatial x0 of line 10 ``spatial_denoised``, which Eq. 9
    re-noises, the temporal expert's x0 ``temporal_denoised`` (Eq. 10, in its own latent space), its input
    ``temporal_input``, V''_{t_k}: the spatial x0 re-noised on the temporal schedule (Eq. 9, in the temporal
    expert's space) at ``temporal_t`` (``temporal_timestep``), and ``renoised``, V'_{t_k}: the temporal x0 re-noised
    on the spatial schedule (Eq. 11), the input of line 14. ``timesteps``: positions on the spatial expert's
    schedule, as :func:`coordinated_step` takes them."""
    check_denoisers("refine_coordinated", spatial=spatial, temporal=temporal)
    generator = seeded(generator, "refine_coordinated", x.shape[0] if torch.is_tensor(x) else None)
    with own_stage(spatial, "refine"):
        for i, (t, t_prev) in enumerate(with_next(timesteps)):
            seen = {} if callback is not None else None
            renoised, pred_temporal = coordinated_step(spatial, temporal, x, t, generator, matching, seen)
            pred = spatial(renoised, t)                                            # line 14
            x = _step(spatial, pred, t, t_prev, eta, generator)
            if callback is not None:
                callback(step_info("refine", i, t, spatial, x, pred.x0, temporal_denoised=pred_temporal.x0,
                                   renoised=renoised, **seen))
        check_finite(spatial, temporal)
    return x


def refine_naive_alternation(spatial: Denoiser, temporal: Denoiser, x: torch.Tensor, timesteps: list,
                             eta: float = 0.0, generator: torch.Generator | None = None,
                             callback: Callback | None = None) -> torch.Tensor:
    """Eq. 7 (ablation), as printed: V'_{t_{k-1}} = Denoising(theta_X, V'_{t_k}, t_k, S_s), X alternating between
    the spatial and the temporal expert, starting with the spatial one. Both step on the spatial schedule S_s: the
    temporal expert's noise prediction (its ODE derivative, :func:`confiner_core.sampling.on_schedule`) is read with
    S_s's coefficients at t_k, although the temporal expert was never trained on S_s's noise levels -- that mismatch
    is why the paper finds this ineffective. One evaluation per step."""
    check_denoisers("refine_naive_alternation", spatial=spatial, temporal=temporal)
    with own_stage(spatial, "refine"):
        for i, (t, t_prev) in enumerate(with_next(timesteps)):
            if i % 2 == 0:
                pred = spatial(x, t)
            else:
                pred = on_schedule(temporal(x, matched_timestep(spatial.schedule, temporal.schedule, t)), x,
                                   spatial.schedule, t)
            x = _step(spatial, pred, t, t_prev, eta, generator)
            if callback is not None:
                callback(step_info("refine", i, t, spatial, x, pred.x0))
        check_finite(spatial, temporal)
    return x


def refine_temporal_only(temporal: Denoiser, x: torch.Tensor, timesteps: list, eta: float = 0.0,
                         generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Table 5 "only temporal expert": standard denoising (Eq. 8) with the temporal expert on its own schedule.
    The structure must have been noised on the temporal schedule (the chain does this)."""
    return refine_standard(temporal, x, timesteps, eta, generator, callback)
