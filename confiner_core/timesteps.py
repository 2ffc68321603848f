"""Timestep lists: diffusers' three spacings over [0, t_max], the paper's evenly spaced refinement timesteps, and
the control stage's timesteps as diffusers' schedulers lay them out for each sampler and schedule kind.

* :func:`spaced_timesteps` -- DDIMScheduler.set_timesteps (integer timesteps, any range [0, t_max]);
* :func:`euler_timesteps` -- EulerDiscreteScheduler.set_timesteps (as DDIM, except that "linspace" keeps its
  fractional timesteps);
* :func:`flow_match_timesteps` -- FlowMatchEulerDiscreteScheduler.set_timesteps with the expert's shift;
* :func:`dpm_solver_timesteps` -- DPMSolverMultistepScheduler.set_timesteps (its own three spacings, and its flow
  sigmas with the expert's shift); :func:`unipc_timesteps` -- UniPCMultistepScheduler's (the same, but for its
  flow sigmas, which start at sigma 1);
* :func:`uniform_timesteps` -- the paper's refinement timesteps, "from T_e to 0 at uniform intervals":
  T_e, T_e - T_e/n, ..., T_e/n (for T_e = 100 and 5 steps: 100, 80, 60, 40, 20).
"""

from __future__ import annotations

import numpy as np

from .errors import not_a_choice
from .schedules import FLOW, NoiseSchedule, shifted

SPACINGS = ("leading", "trailing", "linspace")
# diffusers' steps_offset as every SD-family scheduler config ships it (SD 1.5, AnimateDiff, ModelScope): it only
# moves "leading" timesteps, e.g. 4 steps -> [751, 501, 251, 1].
STEPS_OFFSET = 1


def _check_steps(num_steps: int, t_max: int, room: int) -> None:
    if num_steps < 1:
        raise ValueError(f"number of steps must be >= 1, got {num_steps}")
    if num_steps > room:
        raise ValueError(f"{num_steps} steps do not fit in timesteps 0..{t_max}; use at most {room}")


def spaced_timesteps(num_steps: int, t_max: int = 999, spacing: str = "trailing", steps_offset: int = 0) -> list[int]:
    """Descending integer timesteps in [0, t_max], as DDIMScheduler.set_timesteps with t_max + 1 training steps,
    except that "trailing" never has a step more than asked: diffusers' float ``arange`` yields one for some counts
    (61 steps over 1000: a 62nd at timestep -1), which is dropped here."""
    _check_steps(num_steps, t_max, t_max + 1)
    n_train = t_max + 1
    if spacing == "leading":
        ts = (np.arange(num_steps) * (n_train // num_steps)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(n_train, 0, -n_train / num_steps))[:num_steps] - 1
    elif spacing == "linspace":
        ts = np.linspace(0, t_max, num_steps).round()[::-1]
    else:
        raise ValueError(not_a_choice("spacing", spacing, SPACINGS))
    return [int(t) for t in ts]


def euler_timesteps(num_steps: int, t_max: int = 999, spacing: str = "trailing", steps_offset: int = 0) -> list:
    """EulerDiscreteScheduler.set_timesteps: DDIM's integer lists for "leading" and "trailing"; "linspace" keeps the
    unrounded float32 values (5 steps: 999, 749.25, 499.5, 249.75, 0), which the expert then sees as fractional
    timesteps."""
    if spacing != "linspace":
        return spaced_timesteps(num_steps, t_max, spacing, steps_offset)
    _check_steps(num_steps, t_max, t_max + 1)
    return [float(t) for t in np.linspace(0, t_max, num_steps, dtype=np.float32)[::-1]]


def uniform_timesteps(num_steps: int, t_max: int) -> list[int]:
    """The paper's refinement timesteps, t_k = t_max * k / n for k = n .. 1 (the step from t_max/n goes to the clean
    end). Exact whenever n divides t_max; otherwise each is the nearest integer (halves round up), computed in
    integer arithmetic. At most t_max steps, so the timesteps stay distinct."""
    _check_steps(num_steps, t_max, t_max)
    return [(2 * t_max * k + num_steps) // (2 * num_steps) for k in range(num_steps, 0, -1)]


def flow_positions(schedule: NoiseSchedule, us) -> list[float]:
    """The (fractional) table positions of the noise levels shifted(u) for each unshifted ``u``, with the schedule's
    own shift; sigma 1 is the table's top. Refused for a flow table that has no shift to read back."""
    shift = schedule.flow_shift
    if shift is None:
        raise ValueError(f"schedule {schedule.name!r} is not a shifted rectified-flow table "
                         f"(s = shift*u / (1 + (shift-1)*u)); use 'trailing' spacing for it")
    top = float(schedule.num_timesteps - 1)
    return [schedule.timestep_for_noise_level(s / (1 - s), continuous=True) if s < 1 else top
            for s in (shifted(float(u), shift) for u in us)]


def flow_match_timesteps(schedule: NoiseSchedule, num_steps: int) -> list[float]:
    """FlowMatchEulerDiscreteScheduler.set_timesteps(num_steps) for a flow expert with the schedule's shift, as
    (fractional) timesteps of ``schedule``: sigma_k = shift(linspace(sigma_max, sigma_min, n)) with sigma_max, sigma_min
    the ends of the shifted training table. (diffusers shifts sigma_min a second time: the last step starts at
    shift(shift(1/N)), not at the table's smallest sigma; reproduced here on purpose.)"""
    if schedule.kind != FLOW:
        raise ValueError(f"flow-match timesteps need a flow schedule, got {schedule.kind!r} ({schedule.name})")
    _check_steps(num_steps, schedule.num_timesteps - 1, schedule.num_timesteps)
    s_max, s_min = float(schedule.sigmas[-1]), float(schedule.sigmas[0])
    return flow_positions(schedule, np.linspace(s_max, s_min, num_steps))


def dpm_solver_timesteps(schedule: NoiseSchedule, num_steps: int, spacing: str = "linspace",
                         steps_offset: int = 0) -> list:
    """DPMSolverMultistepScheduler.set_timesteps, which lays out n + 1 points and drops the last (the clean end is
    sigma 0, final_sigmas_type "zero"): "linspace" rounds linspace(0, N-1, n+1) (4 steps: 999, 749, 500, 250),
    "leading" steps by N // (n+1) from 0 plus ``steps_offset`` (801, 601, 401, 201), "trailing" is DDIM's list.
    On a flow schedule "linspace" is its flow sigmas (``use_flow_sigmas``, as diffusers' Wan configurations run
    it): shift(1 - u) for u = linspace(1, 1/N, n+1), the first just below sigma 1, as (fractional) timesteps of
    ``schedule``. (diffusers passes the network int(N sigma); the core passes N sigma itself, as FlowMatchEuler
    does.)"""
    t_max = schedule.num_timesteps - 1
    _check_steps(num_steps, t_max, t_max)
    n_train = t_max + 1
    if schedule.kind == FLOW and spacing == "linspace":
        return flow_positions(schedule, 1 - np.linspace(1.0, 1.0 / n_train, num_steps + 1)[1:][::-1])
    if spacing == "linspace":
        ts = np.linspace(0, t_max, num_steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(num_steps + 1) * (n_train // (num_steps + 1))).round()[::-1][:-1] + steps_offset
    else:
        return spaced_timesteps(num_steps, t_max, spacing, steps_offset)
    return [int(t) for t in ts]


def unipc_timesteps(schedule: NoiseSchedule, num_steps: int, spacing: str = "linspace",
                    steps_offset: int = 0) -> list:
    """UniPCMultistepScheduler.set_timesteps: DPM-Solver's lists (:func:`dpm_solver_timesteps`), except that its flow
    sigmas ("linspace" on a flow schedule, as diffusers' Wan pipelines run it) are shift(u) for u = linspace(1, 1/N,
    n+1) without the last, starting at sigma 1 (4 steps, shift 3: 1, .938, .858, .750). (diffusers moves that
    sigma 1 down by 1e-6, to keep its log(alpha) finite: a point the table, whose top is sigma 1, cannot hold, and
    the core's update is finite at sigma 1 itself.)"""
    if schedule.kind != FLOW or spacing != "linspace":
        return dpm_solver_timesteps(schedule, num_steps, spacing, steps_offset)
    t_max = schedule.num_timesteps - 1
    _check_steps(num_steps, t_max, t_max)
    return flow_positions(schedule, np.linspace(1.0, 1.0 / schedule.num_timesteps, num_steps + 1)[:-1])


def with_next(timesteps: list) -> list[tuple]:
    """Pairs (t, t_prev) for stepping; the last step goes to -1, the schedule's clean end."""
    return list(zip(timesteps, list(timesteps[1:]) + [-1]))
