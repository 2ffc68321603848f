"""Noise schedules as data: x_t = alpha_t * x0 + sigma_t * eps for t = 0 .. N-1.

Variance-preserving (VP) schedules have alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) (Eq. 1);
flow-matching schedules have alpha_t = 1 - s_t, sigma_t = s_t. Every expert in a ConFiner chain carries its
own schedule; the chain converts between them through x0 (Eq. 9 and 11), so nothing else needs to know the kind.

Two units of time: a *position* t indexes the table (what :meth:`NoiseSchedule.coefficients`, the samplers' steps
and an expert's ``forward`` take), a *network timestep* is what a model is conditioned on and what T_e and the
refinement timesteps are given in. :meth:`NoiseSchedule.index` and :meth:`NoiseSchedule.timestep` convert. On a VP
schedule of N steps they are the same number; on a flow schedule they are not (sigma = timestep / N: Wan's T_e 250
is position 61.5 at shift 5), so a loop written with network timesteps runs a flow expert at other noise levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import not_a_choice

VP = "vp"
FLOW = "flow"
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete schedule of signal and noise coefficients.

    ``alphas[t]`` and ``sigmas[t]`` are float64 tensors of length N. ``final_alpha``/``final_sigma`` describe
    the sample reached after the last step (``t = -1``): diffusers' ``set_alpha_to_one`` picks (1, 0) or
    the coefficients of t = 0.
    """

    alphas: torch.Tensor
    sigmas: torch.Tensor
    kind: str = VP
    final_alpha: float = 1.0
    final_sigma: float = 0.0
    name: str = ""

    def __post_init__(self):
        if self.kind not in (VP, FLOW):
            raise ValueError(f"schedule kind must be 'vp' or 'flow', got {self.kind!r}")
        if self.alphas.shape != self.sigmas.shape or self.alphas.ndim != 1:
            raise ValueError("alphas and sigmas must be 1-D tensors of equal length")
        # the kind's identity, which the v and flow predictions and a flow expert's timesteps assume: a table that
        # breaks it ran and gave a wrong x0 (a VE table declared 'vp': off by 30)
        identity, rule, fix = ((self.alphas**2 + self.sigmas**2, "alpha^2 + sigma^2 = 1 (variance preserving)",
                                "a table of sigma/alpha (k-diffusion's, ComfyUI's) is from_ve_sigmas(sigmas)")
                               if self.kind == VP else
                               (self.alphas + self.sigmas, "alpha + sigma = 1",
                                "a table of sigmas is from_ve_sigmas(sigmas, 'flow'), or use flow_schedule(shift)"))
        final = (self.final_alpha**2 + self.final_sigma**2 if self.kind == VP else self.final_alpha + self.final_sigma)
        off = (identity.double() - 1).abs()
        # the tables' own rounding passes (SD 1.5's in float16 is 1.001 at t=41)
        tolerance = max(1e-4, 8 * torch.finfo(self.alphas.dtype).eps) if self.alphas.is_floating_point() else 1e-4
        if off.numel() and not float(off.max()) <= tolerance:   # (NaN fails too)
            t = int(off.nan_to_num(float("inf")).argmax())
            raise ValueError(f"schedule {self.name or 'unnamed'!r} is declared {self.kind!r}, whose tables hold {rule}, "
                             f"but at t={t} it is {float(identity[t]):.4g}: {fix} (confiner_core.schedules)")
        if not abs(final - 1) <= 1e-4:
            raise ValueError(f"schedule {self.name or 'unnamed'!r} is declared {self.kind!r}, whose tables hold {rule}, "
                             f"but its final_alpha {self.final_alpha:g} and final_sigma {self.final_sigma:g} give "
                             f"{final:.4g}: use (1, 0), the clean sample (diffusers' set_alpha_to_one), or t = 0's")

    def __repr__(self) -> str:   # (the dataclass's printed both 1000-entry tables: 22,000 characters)
        ends = f"alpha {float(self.alphas[0]):.4g}..{float(self.alphas[-1]):.4g}, " \
               f"sigma {float(self.sigmas[0]):.4g}..{float(self.sigmas[-1]):.4g}"
        shift = f", shift {self.flow_shift:g}" if self.flow_shift is not None else ""
        return f"NoiseSchedule({self.name or 'unnamed'!r}, {self.kind}, {self.num_timesteps} timesteps, {ends}{shift})"

    @property
    def num_timesteps(self) -> int:
        return self.alphas.shape[0]

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t for a VP schedule (the quantity diffusers and the paper tabulate)."""
        return self.alphas**2 / (self.alphas**2 + self.sigmas**2)

    @property
    def ve_sigmas(self) -> torch.Tensor:
        """sigma/alpha: the variance-exploding noise level k-diffusion and ComfyUI use (ascending in t)."""
        return self.sigmas / self.alphas

    @property
    def flow_shift(self) -> float | None:
        """For a flow table s_t = shift*u / (1 + (shift-1)*u), u = (t+1)/N (SD3, Wan, FlowMatchEulerDiscreteScheduler,
        ComfyUI's ModelSamplingDiscreteFlow), the shift, read back from the table; None for any other table."""
        if self.kind != FLOW or self.num_timesteps < 3:
            return None
        n = self.num_timesteps
        u = torch.arange(1, n + 1, dtype=torch.float64) / n
        mid = n // 2
        s_mid = float(self.sigmas[mid - 1])
        shift = s_mid * (1 - float(u[mid - 1])) / (float(u[mid - 1]) * (1 - s_mid))
        table = shifted(u, shift)
        return shift if float((table - self.sigmas).abs().max()) <= 1e-6 else None  # float32 tables (ComfyUI, diffusers)

    # -- timesteps as the network sees them ------------------------------------------------------------------------
    # The core indexes every schedule by table position t = 0 .. N-1. What a network is conditioned on, and what the
    # method's T_e and refinement timesteps are counted in, is its *timestep*: for a VP (DDPM) expert the table
    # position itself; for a flow expert T = N sigma, the noise level (what Wan's DiT and diffusers' FlowMatch
    # schedulers use), whatever the shift -- the shift only lays out a sampler's steps. So T_e = 100 is sigma = 0.1
    # on every flow expert, and two flow experts at one timestep sit at one noise level.

    def index(self, timestep: float) -> float:
        """The table position of a network timestep (fractional where it falls between entries)."""
        if self.kind == VP or timestep < 0:
            return timestep
        s = timestep / self.num_timesteps
        if s <= 0:
            return -1
        if s >= 1:
            return float(self.num_timesteps - 1)
        return self.timestep_for_noise_level(s / (1 - s), continuous=True)

    def timestep(self, index: float) -> float:
        """The network timestep at a table position (inverse of :meth:`index`)."""
        if self.kind == VP or index < 0:
            return index
        return self.num_timesteps * self.coefficients(index)[1]

    def check_te(self, te: float, what: str = "te (T_e)", owner: str | None = None) -> None:
        """T_e, the structure's noise level (Eq. 6), as a network timestep of this schedule: 1 .. N-1. At 0 the
        structure has no noise to refine; a flow expert's N is sigma 1, pure noise, where nothing of the structure
        survives (a VP table's last entry keeps a little of it: SD 1.5's sqrt(abar) 0.07). ``owner`` names the
        schedule in the message ("the spatial expert's schedule"); by default its name."""
        top = self.num_timesteps - 1
        owner = owner or f"schedule {self.name or self.kind!r}"
        if self.kind == FLOW and te == self.num_timesteps:
            raise ValueError(f"{what}={te} is sigma 1 on {owner}, pure noise: nothing of the structure would "
                             f"survive; choose a value in 1..{top}")
        if not (1 <= te <= top):
            scale = " (flow: N sigma, the noise level)" if self.kind == FLOW else ""
            raise ValueError(f"{what}={te} lies outside {owner}{scale}: valid 1..{top}; choose a value in that range")

    def check_timestep(self, t: float, what: str = "timestep") -> None:
        if not (-1 <= t <= self.num_timesteps - 1):
            raise ValueError(
                f"{what}={t} lies outside schedule {self.name or self.kind!r} (valid: 0..{self.num_timesteps - 1}, "
                f"or -1 for the clean end); choose a value in that range"
            )

    def coefficients(self, t: float) -> tuple[float, float]:
        """(alpha_t, sigma_t). Integer t reads the table, t = -1 is the end (``final_alpha``, ``final_sigma``: the
        clean sample, or t = 0's level where diffusers does not set alpha to one), fractional t interpolates
        log(sigma/alpha) linearly between neighbours (as ComfyUI's ModelSamplingDiscrete.sigma does)."""
        self.check_timestep(t)
        if t < 0:
            return self.final_alpha, self.final_sigma
        lo = int(math.floor(t))
        if t == lo:
            return float(self.alphas[lo]), float(self.sigmas[lo])
        log_ve = torch.log(self.ve_sigmas)
        hi = min(lo + 1, self.num_timesteps - 1)
        w = t - lo
        if math.isinf(float(log_ve[hi])):   # a flow table's sigma 1 (alpha 0): log-linear is sigma 1 (NaN) at once
            sigma = (1 - w) * float(self.sigmas[lo]) + w * float(self.sigmas[hi])
            return 1.0 - sigma, sigma
        return alpha_sigma_from_ve(math.exp((1 - w) * float(log_ve[lo]) + w * float(log_ve[hi])), self.kind)

    def timestep_for_noise_level(self, ve_sigma: float, continuous: bool = False) -> float:
        """The timestep whose noise level sigma/alpha matches ``ve_sigma``: the nearest table entry in log space,
        or (``continuous``) the exact fractional t on the log-linear interpolation, clamped to the table."""
        log_ve = torch.log(self.ve_sigmas)
        target = math.log(ve_sigma)
        if not continuous:
            return int(torch.argmin((log_ve - target).abs()))
        if target <= float(log_ve[0]):
            return 0.0
        if target >= float(log_ve[-1]):
            return float(self.num_timesteps - 1)
        hi = int(torch.searchsorted(log_ve, torch.tensor(target, dtype=log_ve.dtype)))
        lo = hi - 1
        if math.isinf(float(log_ve[hi])):   # a flow table's top interval, linear in sigma (:meth:`coefficients`)
            sigma = alpha_sigma_from_ve(ve_sigma, self.kind)[1]
            return lo + (sigma - float(self.sigmas[lo])) / (float(self.sigmas[hi]) - float(self.sigmas[lo]))
        return lo + (target - float(log_ve[lo])) / (float(log_ve[hi]) - float(log_ve[lo]))


def alpha_sigma_from_ve(ve_sigma: float, kind: str) -> tuple[float, float]:
    """Invert sigma/alpha for a VP (alpha^2 + sigma^2 = 1) or flow (alpha + sigma = 1) schedule."""
    if kind == VP:
        alpha = 1.0 / math.sqrt(1.0 + ve_sigma**2)
        return alpha, ve_sigma * alpha
    s = ve_sigma / (1.0 + ve_sigma)
    return 1.0 - s, s


def betas_for(beta_schedule: str, beta_start: float, beta_end: float, num_train_timesteps: int) -> torch.Tensor:
    """Betas exactly as diffusers builds them (float32), so alphas_cumprod match its schedulers bit for bit."""
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), 0.999)
                 for i in range(num_train_timesteps)]
        return torch.tensor(betas, dtype=torch.float32)
    raise ValueError(not_a_choice("beta_schedule", beta_schedule, BETA_SCHEDULES))


def vp_schedule(alphas_cumprod: torch.Tensor, set_alpha_to_one: bool = True, name: str = "") -> NoiseSchedule:
    ac = alphas_cumprod.to(torch.float64)
    final = 1.0 if set_alpha_to_one else float(ac[0])
    return NoiseSchedule(ac.sqrt(), (1 - ac).sqrt(), VP, math.sqrt(final), math.sqrt(1 - final), name)


def from_betas(beta_schedule: str = "scaled_linear", beta_start: float = 0.00085, beta_end: float = 0.012,
               num_train_timesteps: int = 1000, set_alpha_to_one: bool = False, name: str = "") -> NoiseSchedule:
    """A VP schedule from a diffusers-style beta schedule (``DDPMScheduler``/``DDIMScheduler`` arguments; the defaults
    are SD 1.5's): abar_t is the cumulative product of 1 - beta."""
    betas = betas_for(beta_schedule, beta_start, beta_end, num_train_timesteps)
    ac = torch.cumprod(1.0 - betas, dim=0)
    return vp_schedule(ac, set_alpha_to_one, name or f"{beta_schedule} {beta_start}->{beta_end}")


def is_flow_config(config: dict) -> bool:
    """A flow-matching scheduler config: FlowMatch* schedulers, or UniPC / DPM-Solver with flow sigmas (Wan)."""
    return (str(config.get("_class_name", "")).startswith("FlowMatch") or bool(config.get("use_flow_sigmas"))
            or config.get("prediction_type") == "flow_prediction")


def from_diffusers_config(config: dict, name: str = "") -> NoiseSchedule:
    """Schedule of a diffusers scheduler config (``scheduler_config.json`` or ``scheduler.config``): beta schedules,
    or a flow schedule with the config's ``flow_shift`` / ``shift``."""
    if is_flow_config(config):
        shift = config.get("flow_shift") or (config.get("shift") if not config.get("use_dynamic_shifting") else None)
        return flow_schedule(float(shift or 1.0), config.get("num_train_timesteps", 1000), name)
    if config.get("trained_betas") is not None:
        ac = torch.cumprod(1.0 - torch.tensor(config["trained_betas"], dtype=torch.float32), dim=0)
        return vp_schedule(ac, config.get("set_alpha_to_one", True), name)
    if config.get("rescale_betas_zero_snr"):
        raise NotImplementedError("its schedule is zero-terminal-SNR (rescale_betas_zero_snr), which ConFiner does "
                                  "not support yet")
    return from_betas(config.get("beta_schedule", "linear"), config.get("beta_start", 0.0001),
                      config.get("beta_end", 0.02), config.get("num_train_timesteps", 1000),
                      config.get("set_alpha_to_one", True), name)


def from_ve_sigmas(sigmas: torch.Tensor, kind: str = VP, name: str = "") -> NoiseSchedule:
    """Schedule from an ascending table of noise levels, as a ComfyUI model exposes (``model_sampling.sigmas``).

    For ``kind='vp'`` the table holds sigma/alpha (ComfyUI's discrete EPS/V sigmas, abar = 1/(1+sigma^2));
    for ``kind='flow'`` it holds the flow time s in (0, 1] (ComfyUI's ModelSamplingDiscreteFlow sigmas).
    """
    sig = sigmas.detach().to("cpu", torch.float64)
    if kind == VP:
        alphas = 1.0 / torch.sqrt(1.0 + sig**2)
        return NoiseSchedule(alphas, sig * alphas, VP, 1.0, 0.0, name)
    if kind == FLOW:
        return NoiseSchedule(1.0 - sig, sig.clone(), FLOW, 1.0, 0.0, name)
    raise ValueError(f"kind must be 'vp' or 'flow', got {kind!r}")


def shifted(u, shift: float):
    """The timestep shift of rectified-flow schedules (SD3 / Wan / HunyuanVideo, diffusers' flow_shift): the noise
    level s = shift*u / (1 + (shift-1)*u) of an unshifted u in [0, 1] (a float or a tensor)."""
    return shift * u / (1 + (shift - 1) * u)


def flow_schedule(shift: float = 1.0, num_train_timesteps: int = 1000, name: str = "") -> NoiseSchedule:
    """Rectified-flow schedule with timestep shift (:func:`shifted`) over u = (t+1)/N."""
    u = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    return from_ve_sigmas(shifted(u, shift), FLOW, name or f"flow shift {shift}")


# The experts of the paper, as data (diffusers names; ComfyUI calls scaled_linear "linear", linear "sqrt_linear").
SD15 = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False)
ANIMATEDIFF = dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False)
MODELSCOPE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False)
# LaVie's DDIM sampler is SD 1.4's scheduler config with its betas overridden (base/sample.py: DDIMScheduler
# .from_pretrained(sd_path, subfolder="scheduler", beta_start=..., beta_end=..., beta_schedule=...)), so SD's
# set_alpha_to_one false stays: the chain steps its experts with DDIM (LaVie's default, DDPM, ends at the clean sample)
LAVIE = dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, set_alpha_to_one=False)
KNOWN_SCHEDULES = {"sd15": SD15, "animatediff": ANIMATEDIFF, "modelscope": MODELSCOPE, "lavie": LAVIE}


def named(name: str) -> NoiseSchedule:
    """A known model family's beta schedule by name (:data:`KNOWN_SCHEDULES`: ``sd15``, ``animatediff``,
    ``modelscope``, ``lavie``); flow-matching experts take :func:`flow_schedule` instead."""
    if name not in KNOWN_SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {sorted(KNOWN_SCHEDULES)}")
    return from_betas(**KNOWN_SCHEDULES[name], name=name)
