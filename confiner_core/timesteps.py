"""Timestep lists at uniform intervals over any range [0, t_max], with diffusers' three spacings.

With t_max = 999 the lists equal DDIMScheduler/EulerDiscreteScheduler.set_timesteps; the refinement stage uses
the same rules over [0, T_e] ("from T_e to 0 with T_i2 steps at uniform intervals"). Trailing spacing is the
default because it starts exactly at t_max, i.e. at the structure's noise level T_e.
"""

from __future__ import annotations

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(num_steps: int, t_max: int = 999, spacing: str = "trailing", steps_offset: int = 0) -> list[int]:
    """Descending integer timesteps in [0, t_max]."""
    if num_steps < 1:
        raise ValueError(f"number of steps must be >= 1, got {num_steps}")
    if num_steps > t_max + 1:
        raise ValueError(f"{num_steps} steps do not fit in timesteps 0..{t_max}; use at most {t_max + 1}")
    n_train = t_max + 1
    if spacing == "leading":
        ts = (np.arange(num_steps) * (n_train // num_steps)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(n_train, 0, -n_train / num_steps)) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, t_max, num_steps).round()[::-1]
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return [int(t) for t in ts]


def with_next(timesteps: list) -> list[tuple]:
    """Pairs (t, t_prev) for stepping; the last step goes to -1, the schedule's clean end."""
    return list(zip(timesteps, list(timesteps[1:]) + [-1]))
