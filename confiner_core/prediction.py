"""Every expert's output converted to the pair (x0_hat, eps_hat) for x_t = alpha*x0 + sigma*eps.

eps-prediction (SD, AnimateDiff, ModelScope), v-prediction (v = alpha*eps - sigma*x0, VP only), flow/velocity
(u = eps - x0, flow schedules) and x0 ("sample") prediction. With both halves known, any schedule can re-noise
the sample (Eq. 9 and 11) or take a DDIM step (Eq. 2-4).
"""

from __future__ import annotations

import torch

from .errors import not_a_choice

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow", "sample")


def to_x0_eps(output: torch.Tensor, x_t: torch.Tensor, alpha: float, sigma: float,
              prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A network's ``output`` at ``x_t = alpha x0 + sigma eps`` as the pair (x0, eps) every step and hand-off of the
    chain works with: ``prediction`` "epsilon" (eps = output), "v_prediction" (v = alpha eps - sigma x0), "sample"
    (x0 = output) or "flow" (velocity u = eps - x0, on alpha = 1 - sigma)."""
    if prediction == "epsilon":
        eps = output
        return (x_t - sigma * eps) / alpha, eps
    if prediction == "v_prediction":
        # valid for VP schedules, where alpha^2 + sigma^2 = 1
        return alpha * x_t - sigma * output, sigma * x_t + alpha * output
    if prediction == "flow":
        # x_t = (1-s) x0 + s eps with alpha = 1-s, sigma = s and u = eps - x0
        return x_t - sigma * output, x_t + alpha * output
    if prediction == "sample":
        return output, (x_t - alpha * output) / sigma
    raise ValueError(not_a_choice("prediction type", prediction, PREDICTION_TYPES))


def from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha: float, sigma: float, prediction: str) -> torch.Tensor:
    """The raw output an expert of this prediction type would give for (x0, eps): the inverse of to_x0_eps."""
    if prediction == "epsilon":
        return eps
    if prediction == "v_prediction":
        return alpha * eps - sigma * x0
    if prediction == "flow":
        return eps - x0
    if prediction == "sample":
        return x0
    raise ValueError(not_a_choice("prediction type", prediction, PREDICTION_TYPES))
