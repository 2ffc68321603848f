"""The ConFiner chain: control stage (Eq. 5) -> structure extraction (Eq. 6) -> refinement (Eq. 8 / Alg. 1).

Configuration is data (:class:`ChainConfig`, defaults from the paper); :func:`validate_chain` rejects bad
combinations before any expert runs; :func:`run_chain` executes the three stages and times them.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import numbers
import time
import warnings
from dataclasses import FrozenInstanceError, asdict, dataclass, field, fields, replace
from typing import Callable

import torch

from . import refine as R
from .errors import ConFinerWarning, NonFiniteError, check_function, not_a_choice, warn_doubtful
from .experts import (Denoiser, bridge_end, check_denoisers, check_expert, declares_latent_space, hand_off,
                      in_stage, own_stage)
from .latent_spaces import LatentSpace, check_bridges, in_space, noted_space
from .layout import VIDEO, check_latent
from .sampling import CONTROL_DRAWS, SAMPLERS, Callback, EpsHook, seeded, control_timesteps as sampler_timesteps, \
    diffuse, randn_like, sample_control
from .schedules import VP, NoiseSchedule
from .schedules import named as _named_schedule
from .timesteps import SPACINGS, STEPS_OFFSET, spaced_timesteps, uniform_timesteps

#: what a researcher scripts the chain with (``help(confiner_core.chain)`` lists these); the checks and warnings
#: the other modules share are importable by name too
__all__ = ["ALTERNATE", "AUTO", "COORDINATED", "DEFAULT_TE", "MATCHINGS", "MODES", "STANDARD", "STRUCTURE_NOISES",
           "TEMPORAL", "ChainConfig", "ChainResult", "auto_matching", "control_timesteps", "default_te",
           "extract_structure", "extraction_schedule", "generate_structure", "refine", "refine_evaluations",
           "refine_structure", "refine_timesteps", "refining_denoiser", "run_chain", "settled", "temporal_timesteps",
           "validate_chain", "validate_refinement"]

COORDINATED = "coordinated"
STANDARD = "standard"
TEMPORAL = "temporal"
ALTERNATE = "alternate"
MODES = (COORDINATED, STANDARD, TEMPORAL, ALTERNATE)
#: mode -> the experts its refinement evaluates (the temporal-only ablation still decodes with the spatial one's VAE)
EVALUATED_IN = {COORDINATED: ("spatial", "temporal"), STANDARD: ("spatial",), TEMPORAL: ("temporal",),
                ALTERNATE: ("spatial", "temporal")}
#: mode -> expert evaluations per refinement step (Algorithm 1: two spatial and one temporal when coordinated)
EVALUATIONS_PER_REFINE_STEP = {COORDINATED: 3, STANDARD: 1, TEMPORAL: 1, ALTERNATE: 1}

# Which schedule noises the structure to T_e: Eq. 6 (the spatial expert's, the paper's equation and our default)
# or Algorithm 1, line 4 (the control expert's scheduler).
SPATIAL = "spatial"
CONTROL = "control"
STRUCTURE_NOISES = (SPATIAL, CONTROL)

# How coordinated refinement picks the temporal expert's timestep (refine.TIMESTEP_MATCHING), or "auto" (the
# default): the paper's same index where both schedules are of one kind and put T_e at one noise level (the paper's
# experts share SD's schedule), the nearest noise level where not (a flow and a VP expert). :func:`settled` decides.
AUTO = "auto"
MATCHINGS = (AUTO, *R.TIMESTEP_MATCHING)

# Refinement timesteps: the paper's uniform intervals from T_e (default), or one of diffusers' spacings over [0, T_e].
UNIFORM = "uniform"
REFINE_SPACINGS = (UNIFORM, *SPACINGS)


@contextlib.contextmanager
def warned_already():
    """run_chain and generate_long validate the chain again, for library callers; a caller whose own check gave
    its warnings (the command line, the ComfyUI nodes, under the node) runs them inside this, so none is said twice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConFinerWarning)
        yield


# T_e by the refining expert's kind. VP: the paper's 100 (SD 1.5: noise-to-signal sigma/alpha 0.34). A flow expert's
# T_e is N sigma, and 100 would be a much cleaner 0.11: 250 (0.33) keeps the paper's noise level. On the embedded
# world the flow experts' results are flat over T_e 50..700 (bench/QUALITY.md), so the noise level decides.
DEFAULT_TE = {"vp": 100, "flow": 250}


def default_te(schedule: NoiseSchedule) -> int:
    """The structure timestep for a refining expert of this schedule kind (:data:`DEFAULT_TE`)."""
    return DEFAULT_TE[schedule.kind]


def table3_warning(control_steps: int, te: int, schedule: NoiseSchedule | None = None) -> str | None:
    """The paper's Table 3 (SD 1.5 spatial expert): with 4 control steps T_e = 200 scores best and T_e >= 300
    collapses image quality (with 8 steps larger T_e only trades temporal for aesthetic scores). Fewer steps give a
    coarser structure still. With the refining expert's ``schedule`` the limit is the noise level (sigma/alpha) of
    SD 1.5's t = 300, so a flow expert's T_e (N sigma) is judged by the same noise, not the same number."""
    if control_steps > 4:
        return None
    if schedule is None or schedule.kind == VP:
        collapses = te >= 300
    else:
        sd_alpha, sd_sigma = _named_schedule("sd15").coefficients(300)
        alpha, sigma = schedule.coefficients(schedule.index(te))
        collapses = sigma / max(alpha, 1e-12) >= sd_sigma / sd_alpha
    if collapses:
        best = table3_best_te(schedule)
        here = "" if best == 200 else f", here {best}: the same noise level on this expert's schedule"
        return (f"T_e={te} with {control_steps} control steps: the paper's Table 3 finds image quality collapses at "
                f"the noise level of T_e >= 300 on SD 1.5 with 4 control steps (best about 200{here}); lower T_e or "
                f"use 8 control steps")
    return None


#: the least share of the structure (alpha in Eq. 6's x = alpha V + sigma eps) a T_e may keep without a warning
STRUCTURE_KEPT_MIN = 0.1


def structure_kept(te: int, schedule: NoiseSchedule) -> float:
    """alpha of Eq. 6 at T_e on the refining expert's ``schedule``: the structure's share of the noised latent."""
    return schedule.coefficients(schedule.index(te))[0]


def structure_lost_warning(te: int, schedule: NoiseSchedule | None) -> str | None:
    """T_e so near the top of the schedule that the noised structure is almost pure noise (alpha below
    :data:`STRUCTURE_KEPT_MIN`): the refinement then samples afresh and the control stage changes little, whatever its
    steps (Table 3's collapse is about 4 steps; this holds at any count)."""
    if schedule is None:
        return None
    alpha, sigma = schedule.coefficients(schedule.index(te))
    if alpha >= STRUCTURE_KEPT_MIN - 1e-9:   # (a flow T_e of 900 keeps 1 - 0.9, rounded below 0.1)
        return None
    return (f"T_e={te} keeps {alpha:.0%} of the structure (Eq. 6: x = {alpha:.2f} structure + {sigma:.2f} noise): the "
            f"refinement starts from almost pure noise and the control stage is lost; use a lower T_e, "
            f"{good_te_range(schedule)} (the default, up to Table 3's best after 4 control steps)")


def good_te_range(schedule: NoiseSchedule) -> str:
    """The T_e to advise on ``schedule``: from the default (:func:`default_te`) to Table 3's best after 4 control
    steps (:func:`table3_best_te`), "100-200" on SD's (advice of 200 alone read as contradicting the default)."""
    low, high = sorted((default_te(schedule), table3_best_te(schedule)))
    return f"{low}-{high}"


#: the control stage ChainConfig and the nodes default to: AnimateDiff-Lightning's, a 4-step distilled model
DISTILLED_CONTROL = (4, 1.0, "euler")
#: the control stage an undistilled model of these latent spaces' families gets in the templates (Wan 2.1, Wan 2.2;
#: diffusers' Wan pipelines sample with UniPC at guidance 5)
UNDISTILLED_CONTROL = {"wan2.1": (8, 5.0, "unipc"), "wan2.2": (8, 5.0, "unipc")}


def distilled_control_warning(space: LatentSpace, steps: int, cfg: float, sampler: str) -> str | None:
    """A control expert of an undistilled family (:data:`UNDISTILLED_CONTROL`) at a distilled model's settings: at
    most the defaults' 4 steps at cfg 1 (whatever the sampler: a graph built by hand for Wan kept them, or changed
    the sampler alone, where the Wan templates set their own) makes a blurred structure that follows the prompt
    weakly. Not said at more steps or another cfg; a step-distilled Wan (a LoRA such as lightx2v) runs at 4 steps
    and cfg 1 on purpose, which the message allows."""
    family = UNDISTILLED_CONTROL.get(space.name)
    distilled_steps, distilled_cfg, _ = DISTILLED_CONTROL
    if family is None or steps > distilled_steps or cfg != distilled_cfg:
        return None
    good_steps, good_cfg, good_sampler = family
    # (named by its latent space, which is all this knows of it: Wan 2.2 A14B works in Wan 2.1's)
    return (f"the control expert ({space.title} latent space) at {steps} control step{'s' * (steps != 1)} and cfg "
            f"{cfg:g} ({sampler} sampler): these "
            f"are a step-distilled model's settings (AnimateDiff-Lightning's, the defaults); an undistilled model "
            f"of that space makes a blurred structure that follows the prompt weakly in so few steps: use "
            f"{good_steps} control steps, cfg {good_cfg:g} and the {good_sampler} sampler (the Wan templates'), or keep "
            f"these with a step-distilled model")


def table3_best_te(schedule: NoiseSchedule | None = None) -> int:
    """The T_e the paper's Table 3 finds best after 4 control steps (200 on SD 1.5), as the network timestep of the
    same noise level on the refining expert's ``schedule`` (a flow expert's N sigma)."""
    if schedule is None or schedule.kind == VP:
        return 200
    sd_alpha, sd_sigma = _named_schedule("sd15").coefficients(200)
    return round(schedule.timestep(schedule.timestep_for_noise_level(sd_sigma / sd_alpha, continuous=True)))


def noise_to_signal(schedule: NoiseSchedule, position: float) -> float:
    """sigma / alpha at a position of ``schedule``'s table (x_t = alpha x0 + sigma eps): the noise level two
    schedules are compared by."""
    alpha, sigma = schedule.coefficients(position)
    return sigma / max(alpha, 1e-12)


def unequal_noise(a: float, b: float) -> bool:
    """Two noise-to-signal ratios apart by more than a factor of 1.5 (SD 1.5 and AnimateDiff's schedules are not)."""
    return max(a, b) > 1.5 * min(a, b)


def same_index_mismatch_warning(spatial: NoiseSchedule, temporal: NoiseSchedule, te: int) -> str | None:
    """Coordinated refinement re-noises the temporal expert at the spatial expert's timestep (``same_index``, the
    paper's, whose experts share SD's schedule). Experts of other schedules (a flow and a VP expert) put that
    timestep at other noise levels (SD 1.5 and Wan at T_e 100: noise-to-signal 0.34 and 0.11): the run goes ahead,
    said, with the fix (``nearest`` matches the noise level). None within a factor of 1.5."""
    t = spatial.index(te)
    here = noise_to_signal(spatial, t)
    there = noise_to_signal(temporal, R.matched_timestep(spatial, temporal, t, R.SAME_INDEX))
    if not unequal_noise(here, there):
        return None
    return (f"matching 'same_index' re-noises the temporal expert at the spatial expert's timestep, but their "
            f"schedules differ: at T_e={te} the spatial expert's noise-to-signal is {here:.2f} and the temporal "
            f"expert's {there:.2f}; matching 'nearest' gives both the same noise level")


def auto_matching(spatial: NoiseSchedule, temporal: NoiseSchedule, te: int) -> str:
    """What matching "auto" is for these refining schedules at ``te``: ``nearest`` for a flow and a VP expert (SD 1.5
    with Wan: 0.34 and 0.11 at T_e 100; at T_e 627..939 close, but 2.8x apart at the later steps) or schedules that
    put T_e at noise levels more than 1.5x apart; else the paper's ``same_index`` (SD 1.5 with AnimateDiff or
    ModelScope, and with LaVie, the paper's own pair, though it parts lower down: 1.74x at t = 20)."""
    if spatial.kind != temporal.kind or same_index_mismatch_warning(spatial, temporal, te) is not None:
        return R.NEAREST
    return R.SAME_INDEX


def same_index_warning(spatial: Denoiser, temporal: Denoiser | None, config: "ChainConfig") -> str | None:
    """:func:`same_index_mismatch_warning` where the run re-noises at the same index (coordinated, ``same_index``):
    what :func:`validate_chain` and the ComfyUI nodes warn of."""
    if temporal is None or config.mode != COORDINATED or config.matching != R.SAME_INDEX:
        return None
    return same_index_mismatch_warning(spatial.schedule, temporal.schedule, config.te)


def moot_matching_warning(spatial: Denoiser, temporal: Denoiser | None, config: "ChainConfig") -> str | None:
    """Matching by noise level asked for where the spatial and temporal experts share one schedule (SD 1.5 and
    ModelScope): it picks the timesteps 'same_index' picks, so a sweep over matchings made one video three times and
    read the option as broken."""
    if temporal is None or config.mode != COORDINATED or config.matching in (AUTO, R.SAME_INDEX):
        return None
    a, b = spatial.schedule, temporal.schedule
    if a.kind == b.kind and torch.equal(a.alphas, b.alphas) and torch.equal(a.sigmas, b.sigmas):
        return (f"matching={config.matching!r} changes nothing here: the spatial and temporal experts share one "
                f"schedule, on which it picks the timesteps 'same_index' picks")
    return None


def control_noise_warning(spatial: Denoiser, temporal: Denoiser | None, config: "ChainConfig",
                          control_schedule: NoiseSchedule | None) -> str | None:
    """``structure_noise`` "control" (Algorithm 1, line 4) noises the structure to T_e on the control expert's
    schedule, and the refining expert reads it as its own T_e: where the two schedules put T_e at other noise levels
    (a flow control expert, a VP spatial one: Wan and SD 1.5 at 100, noise-to-signal 0.11 and 0.34) the run goes
    ahead, said, with the fix (Eq. 6's "spatial"). None where they agree within a factor of 1.5."""
    if config.structure_noise != CONTROL or control_schedule is None or config.te is None:
        return None
    refining = refining_denoiser(spatial, temporal, config.mode).schedule
    here, there = noise_to_signal(control_schedule, control_schedule.index(config.te)), \
        noise_to_signal(refining, refining.index(config.te))
    if not unequal_noise(here, there):
        return None
    return (f"structure_noise 'control' noises the structure on the control expert's schedule, but the refining "
            f"expert reads it as its own T_e: at T_e={config.te} the control expert's noise-to-signal is {here:.2f} "
            f"and the refining expert's {there:.2f}; structure_noise 'spatial' (Eq. 6) noises it at the refining "
            f"expert's level")


def flatten(settings: dict, prefix: str = "") -> dict:
    """Nested settings as one level of dotted keys (``{"long": {"gamma": 0.1}}`` -> ``{"long.gamma": 0.1}``): what a
    resume compares, and names when one changed."""
    out = {}
    for k, v in settings.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def named_settings(cls, meant: Callable[[str], str | None] | None = None):
    """``cls.__init__`` refusing a keyword it has no setting for by name, with the setting meant (``meant(name)``:
    another library's name for it, else the closest spelling) and the settings it has, in place of Python's bare
    "unexpected keyword argument"."""
    init = cls.__init__
    known = {f.name for f in fields(cls) if f.init}
    names = [f.name for f in fields(cls) if not f.name.startswith("_")]

    def setting_meant(name: str) -> str | None:
        lowered = {n.lower(): n for n in names}   # (Te, T_E: te)
        ends = [n for n in names if n.endswith(f"_{name.lower()}")]   # (steps: control_steps or refine_steps)
        return (meant(name) if meant else None) or " or ".join(ends) or \
            next((lowered[m] for m in difflib.get_close_matches(name.lower(), lowered, 1)), None)

    @functools.wraps(init)
    def checked(self, *args, **kwargs):
        unknown = [k for k in kwargs if k not in known]
        if unknown:
            said = "; ".join(f"{k} -> {setting_meant(k)}" for k in unknown if setting_meant(k))
            raise TypeError(f"{cls.__name__} has no setting {', '.join(map(repr, unknown))}"
                            + (f" (meant: {said})" if said else "") + f"; its settings: {', '.join(names)}")
        init(self, *args, **kwargs)
    cls.__init__ = checked
    return cls


def frozen_settings(other_names: dict | None = None):
    """A class of settings as a frozen dataclass: each field checked when built (its ``check_fields``: a sweep that
    builds its configs first hears of a misspelt choice there, not at the run), how the fields fit together and with
    the experts left to ``validate`` and the run (``te=None`` is settled by the experts); a setting it lacks refused
    by name (``other_names``: another library's name -> the setting); an assignment says how to change a setting: a
    run keeps the settings it was given, so a sweep makes one per value (``dataclasses.replace``); Python's own
    message says only "cannot assign to field"."""
    def make(cls):
        cls.__post_init__ = lambda self: self.check_fields()
        cls = dataclass(frozen=True)(cls)

        def refuse(self, name, value):
            settings = [f.name for f in fields(cls)]
            if name not in settings:
                raise AttributeError(f"{cls.__name__} has no setting {name!r}; its settings: {', '.join(settings)}")
            raise FrozenInstanceError(f"{type(self).__name__} is frozen, so a run keeps the settings it was given: "
                                      f"make another with dataclasses.replace(config, {name}={value!r})")
        cls.__setattr__ = refuse
        return named_settings(cls, (other_names or {}).get)
    return make


GUIDANCE_PLACE = "not a chain setting: each expert's bind(prompt, negative, guidance_scale)"
#: diffusers' and the paper's names for ChainConfig's settings (a researcher's first guess)
CHAIN_OTHER_NAMES = {"T_e": "te", "t_e": "te", "strength": "te", "num_inference_steps": "refine_steps",
                     "guidance_scale": GUIDANCE_PLACE, "cfg": GUIDANCE_PLACE}


@frozen_settings(CHAIN_OTHER_NAMES)
class ChainConfig:
    """Defaults are the paper's "9 steps": 4 control steps, T_e = 100 on the spatial expert's schedule (Eq. 6), 5
    coordinated refinement steps at uniform intervals (100, 80, 60, 40, 20). One is not the paper's: the control
    stage samples with Euler at trailing spacing, what its control expert AnimateDiff-Lightning was distilled for,
    where the paper writes DDIM (``control_sampler="ddim"``).

    ``te=None`` (the default) is the refining expert's default T_e (:data:`DEFAULT_TE`: 100 for VP experts, 250 for
    flow experts such as Wan, about the same noise level), and ``matching="auto"`` (the default) the paper's
    ``same_index`` unless the spatial and temporal schedules are of two kinds or put T_e at other noise levels
    (:func:`auto_matching`);
    both are settled by :func:`settled` where the experts are known (:func:`run_chain`, :func:`validate_refinement`,
    :func:`refine_structure`, :func:`refine`).

    ``control_eta`` is DDIM's eta in the control stage (sampler "ddim" only); ``eta`` the same in refinement.

    Frozen, so that a request or a run never sees it change after it was passed: a sweep makes one per setting
    (``dataclasses.replace(config, te=50)``)."""

    control_steps: int = 4
    control_sampler: str = "euler"
    control_spacing: str = "trailing"
    control_eta: float = 0.0
    te: int | None = None
    refine_steps: int = 5
    refine_spacing: str = UNIFORM
    mode: str = COORDINATED
    matching: str = AUTO
    eta: float = 0.0
    structure_noise: str = SPATIAL

    def check_fields(self) -> None:
        """Each setting on its own (choices, step counts, T_e, eta), checked when the config is built; raises
        ValueError naming the field."""
        if self.mode not in MODES:
            raise ValueError(not_a_choice("mode", self.mode, MODES))
        if self.matching not in MATCHINGS:
            raise ValueError(not_a_choice("matching", self.matching, MATCHINGS))
        if self.control_spacing not in SPACINGS:
            raise ValueError(not_a_choice("control_spacing", self.control_spacing, SPACINGS))
        if self.refine_spacing not in REFINE_SPACINGS:
            raise ValueError(not_a_choice("refine_spacing", self.refine_spacing, REFINE_SPACINGS))
        if self.control_sampler not in SAMPLERS:
            raise ValueError(not_a_choice("control_sampler", self.control_sampler, SAMPLERS))
        if self.structure_noise not in STRUCTURE_NOISES:
            raise ValueError(not_a_choice("structure_noise", self.structure_noise, STRUCTURE_NOISES))
        for name in ("control_steps", "refine_steps", "te"):
            value = getattr(self, name)
            if (value is not None or name != "te") and \
                    (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
                raise ValueError(f"{'te (T_e)' if name == 'te' else name} must be an integer >= 1, got {value!r}")
        for name in ("eta", "control_eta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")

    def validate(self) -> None:
        """The settings on their own and together (the refinement steps fit under T_e), no expert needed; raises
        ValueError naming the field. :func:`validate_chain` checks them against the experts' schedules."""
        self.check_fields()
        room = self.refine_room()
        if room is not None and self.refine_steps > room:
            raise ValueError(f"{self.refine_steps} refinement steps do not fit between T_e={self.te} and 0; "
                             f"use at most {room} step{'s' if room > 1 else ''} or raise T_e")

    def refine_room(self) -> int | None:
        """The most refinement steps that fit under T_e at this spacing (None: T_e not settled yet): uniform,
        distinct timesteps in (0, T_e]; leading, its steps offset must keep the first within T_e."""
        return None if self.te is None else self.te + (self.refine_spacing in ("trailing", "linspace"))

    def as_dict(self) -> dict:
        return asdict(self)

    def with_default_te(self, schedule: NoiseSchedule) -> "ChainConfig":
        """This config with ``te=None`` made the default T_e of a refining expert on ``schedule``."""
        return self if self.te is not None else replace(self, te=default_te(schedule))

    def with_matching(self, spatial: NoiseSchedule, temporal: NoiseSchedule | None) -> "ChainConfig":
        """This config (T_e settled) with ``matching="auto"`` made :func:`auto_matching`'s choice for these
        schedules; without a temporal expert, or outside coordinated refinement, where nothing is matched, the
        paper's ``same_index``."""
        if self.matching != AUTO:
            return self
        if temporal is None or self.mode != COORDINATED:
            return replace(self, matching=R.SAME_INDEX)
        try:
            return replace(self, matching=auto_matching(spatial, temporal, self.te))
        except ValueError:   # T_e outside a schedule: left undecided, for the validation to name
            return self


def settled(config: ChainConfig, spatial: Denoiser | None, temporal: Denoiser | None) -> ChainConfig:
    """``config`` with the defaults the experts decide made concrete: T_e (``None``: the refining expert's
    :func:`default_te`) and the timestep matching ("auto": :meth:`ChainConfig.with_matching`)."""
    spatial = stand_in_spatial(spatial, temporal, config.mode)
    config = config.with_default_te(refining_denoiser(spatial, temporal, config.mode).schedule)
    return config.with_matching(spatial.schedule, temporal.schedule if temporal is not None else None)


def refining_denoiser(spatial: Denoiser, temporal: Denoiser | None, mode: str) -> Denoiser:
    """Who refines the structure, and so whose latent space the result is in: the spatial expert, or the temporal
    expert for the temporal-only ablation."""
    return temporal if mode == TEMPORAL else spatial


def evaluated_roles(spatial: Denoiser | None, temporal: Denoiser | None, mode: str) -> dict:
    """The refining experts ``mode`` evaluates (role -> Denoiser): the ones whose clip rules a run must meet."""
    return {role: d for role, d in (("spatial", spatial), ("temporal", temporal)) if role in EVALUATED_IN[mode]}


def stand_in_spatial(spatial: Denoiser | None, temporal: Denoiser | None, mode: str) -> Denoiser:
    """The spatial expert, or for the temporal-only ablation, which evaluates none, the temporal expert in its place
    when it is left out (``None``): it then refines in its own space on its own schedule, as it does with one given.
    Any other mode needs a spatial expert."""
    if spatial is not None:
        return spatial
    if mode == TEMPORAL and temporal is not None:
        return temporal
    raise ValueError(f"mode {mode!r} needs a spatial expert (None given); only mode 'temporal' refines without one")


def extraction_schedule(spatial: Denoiser, temporal: Denoiser | None, mode: str, structure_noise: str = SPATIAL,
                        control_schedule: NoiseSchedule | None = None) -> NoiseSchedule:
    """The schedule the structure is noised on to T_e. ``spatial`` (Eq. 6): the refining expert's -- the spatial
    expert's, or the temporal expert's for the temporal-only ablation, which refines on its own schedule.
    ``control`` (Algorithm 1, line 4): the control expert's."""
    if structure_noise == CONTROL:
        if control_schedule is None:
            raise ValueError("structure_noise 'control' noises the structure on the control expert's schedule, "
                             "which is unknown here: pass it (control_schedule=control.schedule), or use "
                             "structure_noise 'spatial' (the refining expert's, the default)")
        return control_schedule
    return refining_denoiser(spatial, temporal, mode).schedule


def validate_experts(roles: dict, shape: tuple, source: str, source_label: str | None = None,
                     sizes: bool = True) -> None:
    """Every expert must hold the clip that a latent of ``shape`` in the ``source`` role's space stands for (frame
    count rules of causal spaces, its size, longest clip), and experts that hand samples to each other must share a
    latent space or have the VAEs that bridge them. ``roles``: role -> Denoiser (or None); ``source_label``: how
    messages name the source expert (default its role); ``sizes=False``: ``shape``'s height and width are
    placeholders (a host's check before the structure exists), not checked."""
    src = roles[source].expert.latent_space
    if len(shape) != 5:
        raise ValueError(f"latent shape {tuple(shape)} is not a canonical video [B, C, F, h, w]")
    # a structure made by an expert of another space, given without it: refine_structure hands it over
    made_elsewhere = "; a structure another expert made (the control expert's) is handed over by passing that " \
        "expert as source= to refine_structure" if source_label == "refining" else ""
    if shape[1] != src.channels:
        raise ValueError(f"the latent has {shape[1]} channels but the {source_label or source} expert's latent space "
                         f"{src.name!r} has {src.channels}; use a latent of the experts' family{made_elsewhere}")
    # where another expert's space has as many channels (Flux's and Wan's 16), a forgotten source= showed as a frame
    # count the experts cannot hold; elsewhere the hint would lead away from the frame count itself
    alike = any(d is not None and d.expert.latent_space != src and d.expert.latent_space.channels == src.channels
                for d in roles.values())
    _, frames, height, width = src.pixel_shape(shape)
    for role, d in roles.items():
        if d is None:
            continue
        e = d.expert
        check_expert(e, evaluated=False)   # schedules: validate_refinement, validate_chain (a source has none)
        try:
            e.latent_space.check_pixel_frames(frames, f"the {role} expert's {e.latent_space.title}")
        except ValueError as error:
            if not (made_elsewhere and alike):
                raise
            raise ValueError(f"{error}{made_elsewhere}") from None
        if sizes:   # (a Flux spatial expert's odd latent size was refused after the whole control stage)
            factor = e.latent_space.spatial_factor
            if height % factor or width % factor:
                raise ValueError(f"the video is {width}x{height} pixels, but the {role} expert's "
                                 f"{e.latent_space.title} latent space takes multiples of {factor}: make both "
                                 f"multiples of {factor}")
            e.check_size(height // factor, width // factor)
        latent_frames = e.latent_space.latent_frames(frames) if e.layout == VIDEO else None
        if e.max_frames is not None and latent_frames is not None and latent_frames > e.max_frames:
            raise TooManyFrames(role, e.name, e.latent_space.pixel_frames(e.max_frames), frames)


class TooManyFrames(ValueError):
    """An expert asked for more (pixel) frames at once than it handles (``max_frames`` latent frames); callers name
    their own option."""

    def __init__(self, role: str, name: str, limit: int, asked: int):
        self.role, self.name, self.limit, self.asked = role, name, limit, asked
        super().__init__(f"{role} expert {name!r} handles at most {limit} frames but {asked} were asked; use fewer "
                         f"frames or ConFiner-Long segments")


def check_hand_offs(roles: dict, hand_offs: list, vae_fixes: dict | None = None) -> None:
    """Experts that hand x0 to each other share a latent space, or have the VAEs that bridge them; every missing
    VAE is named in one message. ``vae_fixes``: role -> how to give that expert its VAE (the host's input names)."""
    check_bridges(hand_offs, {role: bridge_end(d.expert) if d is not None else None for role, d in roles.items()},
                  fixes=vae_fixes, undeclared=frozenset(role for role, d in roles.items()
                                                        if d is not None and not declares_latent_space(d.expert)))


def validate_refinement(spatial: Denoiser | None, temporal: Denoiser | None, shape: tuple, config: ChainConfig,
                        source: Denoiser | None = None, control_schedule: NoiseSchedule | None = None,
                        vae_fixes: dict | None = None, sizes: bool = True) -> None:
    """Checks for stage 2 alone (Eq. 6 onwards), before any expert is evaluated. ``shape`` is the structure's
    latent shape in the ``source`` (control) expert's space, or the spatial expert's when there is no source.
    ``vae_fixes``: role -> how the user gives that expert its VAE, named when a bridge lacks one; ``sizes``: as
    :func:`validate_experts`."""
    config.validate()   # its choices first: a misspelt mode is named, not a KeyError below
    check_denoisers("validate_refinement", spatial=spatial, temporal=temporal, source=source)
    if "temporal" in EVALUATED_IN[config.mode] and temporal is None:
        raise ValueError(f"mode {config.mode!r} needs a temporal expert; pass one or use mode 'standard'")
    spatial = stand_in_spatial(spatial, temporal, config.mode)
    for d in (spatial, temporal):   # the refinement's experts, before their schedules are read
        if d is not None:
            check_expert(d.expert)
    asked, config = config, settled(config, spatial, temporal)
    try:
        config.validate()
    except ValueError as e:   # (a T_e the user never set was named as if set)
        if asked.te is None:
            # ("te=None" is the library's name of it, where the nodes' widget reads 0 and the command line's --te is
            # left out)
            raise ValueError(f"{e} (T_e automatic: {config.te} is the refining expert's default)") from None
        raise
    # the frame rules of the experts the mode evaluates: SD refining alone (standard) beside an unused Wan temporal
    # expert was refused 16 frames for Wan's 4k+1
    roles = {"control": source or spatial, "spatial": None, "temporal": None,
             **evaluated_roles(spatial, temporal, config.mode)}
    source_is_refiner = source is None or source is spatial or source is temporal   # refine(): x in its space
    hand_offs = [("control", "temporal" if config.mode == TEMPORAL else "spatial")]
    if config.mode == COORDINATED:
        hand_offs.append(("spatial", "temporal"))
    # experts of spaces no VAE bridges first: a frame count one of them cannot hold ("use 5 or 9") hid that they
    # could never work together
    check_hand_offs(roles, hand_offs, vae_fixes)
    validate_experts(roles, shape, "control", "refining" if source_is_refiner else "control", sizes)
    problem = alternation_problem(config.mode, spatial.expert.latent_space,
                                  temporal.expert.latent_space if temporal is not None else None)
    if problem:
        raise ValueError(problem)
    refining = extraction_schedule(spatial, temporal, config.mode)
    refining.check_te(config.te)
    if config.structure_noise == CONTROL:
        control_schedule = control_schedule or (source.schedule if source is not None else None)
        extraction_schedule(spatial, temporal, config.mode, CONTROL, control_schedule).check_te(
            config.te, "te (T_e) on the control schedule")
    if "temporal" in evaluated_schedules(spatial, temporal, config):   # re-noised at the refiner's timesteps
        temporal.schedule.check_te(config.te, "te (T_e) on the temporal schedule")
    problem = clean_end_problem(config, evaluated_schedules(spatial, temporal, config))
    if problem:
        raise ValueError(problem)


def alternation_problem(mode: str, spatial_space, temporal_space) -> str | None:
    """Naive alternation (Eq. 7) across latent spaces: it steps both experts on one sample, so there is no bridge."""
    if mode != ALTERNATE or temporal_space is None or temporal_space == spatial_space:
        return None
    if spatial_space == temporal_space.per_frame():   # one model, its image expert on pixel frames
        return ("naive alternation (Eq. 7) steps both experts on one sample, and an image expert on pixel frames "
                f"refines each frame encoded alone, another latent space than the temporal expert's "
                f"{temporal_space.title}: use latent frames for the image expert, or mode 'coordinated'")
    return ("naive alternation (Eq. 7) steps both experts on one sample: they must share a latent space; use "
            "mode 'coordinated' to bridge experts of different spaces")


def evaluated_schedules(spatial: Denoiser, temporal: Denoiser | None, config: ChainConfig) -> dict:
    """Who is evaluated at the refinement's own timesteps (role -> schedule): the refining expert, and the temporal
    expert where it is re-noised at the same index (alternation, coordinated with matching 'same_index')."""
    same_t = config.mode == ALTERNATE or (config.mode == COORDINATED and config.matching == R.SAME_INDEX)
    evaluated = {"temporal": temporal.schedule} if temporal is not None and same_t else {}
    evaluated["temporal" if config.mode == TEMPORAL else "spatial"] = refining_denoiser(spatial, temporal,
                                                                                        config.mode).schedule
    return evaluated


def validate_chain(control: Denoiser, spatial: Denoiser | None, temporal: Denoiser | None, shape: tuple,
                   config: ChainConfig) -> None:
    """Every check that can fail, before any expert is evaluated. ``shape`` is the initial noise's canonical
    [B, C, F, h, w] in the control expert's latent space. Settings the paper found to fail (Table 3) give a
    :class:`ConFinerWarning`, not an error."""
    check_denoisers("validate_chain", control=control)
    validate_refinement(spatial, temporal, shape, config, source=control)   # first: a missing temporal expert
    spatial = stand_in_spatial(spatial, temporal, config.mode)
    check_expert(control.expert)
    config = settled(config, spatial, temporal)
    if config.control_steps > control.schedule.num_timesteps:
        raise ValueError(f"control_steps={config.control_steps} exceeds the control schedule's "
                         f"{control.schedule.num_timesteps} timesteps")
    control_timesteps(control, config)  # e.g. flow-match spacing on a table that has no shift
    refined_on = extraction_schedule(spatial, temporal, config.mode)
    lost = structure_lost_warning(config.te, refined_on)   # (said in place of Table 3's, which it covers)
    for message in (lost or table3_warning(config.control_steps, config.te, refined_on),
                    distilled_control_warning(control.expert.latent_space, config.control_steps,
                                              control.guidance_scale, config.control_sampler)):
        if message:
            warn_doubtful(message)
    for message in (same_index_warning(spatial, temporal, config), moot_matching_warning(spatial, temporal, config),
                    control_noise_warning(spatial, temporal, config, control.schedule),
                    noise_floor_warning(config, evaluated_schedules(spatial, temporal, config))):
        if message:
            warn_doubtful(message)
    for message in frames_alone_warnings(control, temporal if "temporal" in EVALUATED_IN[config.mode] else None):
        warn_doubtful(message)
    for name in unused_settings(config):
        warn_doubtful(f"{name}={getattr(config, name)!r} {UNUSED_BECAUSE[name](config)}, so it changes nothing")


#: setting -> why a config leaves it unread (:func:`unused_settings`)
UNUSED_BECAUSE = {
    "control_eta": lambda c: f"applies to the DDIM control sampler only (control_sampler {c.control_sampler!r} "
                             f"draws no noise)",
    "matching": lambda c: f"picks the temporal expert's timestep in coordinated refinement only (mode {c.mode!r})",
}


def unused_settings(config: ChainConfig) -> list[str]:
    """Settings ``config`` holds that its sampler or mode never reads: the command line refuses them, the library
    warns (:func:`validate_chain`); a run with them is the run without them."""
    unused = []
    if config.control_eta and config.control_sampler != "ddim":
        unused.append("control_eta")
    if config.matching not in (AUTO, R.SAME_INDEX) and config.mode != COORDINATED:
        unused.append("matching")
    return unused


def frames_alone_warnings(control: Denoiser, temporal: Denoiser | None) -> list[str]:
    """An image expert (``layout`` frames) in a role that relates frames runs, since it may be meant, but makes or
    refines every frame on its own (also what experts passed to :func:`run_chain` in another order give)."""
    tasks = {"control": "lays out every frame on its own, so the structure has no motion",
             "temporal": "refines every frame on its own, so it cannot keep them coherent"}
    return [f"the {role} expert {denoiser.expert.name!r} takes one frame at a time (an image model): it {tasks[role]}; "
            f"give it a video expert (run_chain takes control, spatial, temporal in that order)"
            for role, denoiser in (("control", control), ("temporal", temporal))
            if denoiser is not None and not denoiser.expert.relates_frames]


@dataclass
class ChainResult:
    """``latent`` is in the refining expert's latent space (``refiner``: decode it with that expert's codec);
    ``structure`` in the control expert's; both in the noise's dtype (float32, or float64 where the noise is: the
    chain computes in it, whatever the experts' networks run in). ``seconds`` holds each stage's host time: on a GPU
    the control stage's last forward, still running when the stage hands over, counts to the refinement. ``config``
    is the run's, its defaults settled as the experts decided them (T_e, matching): ``refine_timesteps(
    result.config)`` gives the refinement's timesteps, :func:`temporal_timesteps` the temporal expert's."""

    latent: torch.Tensor
    structure: torch.Tensor
    refiner: Denoiser
    seconds: dict = field(default_factory=dict)
    config: ChainConfig | None = None


def control_timesteps(control: Denoiser, config: ChainConfig) -> list:
    """The control stage's timesteps for ``config``'s steps, sampler and spacing
    (:func:`~confiner_core.sampling.control_timesteps`, as diffusers' schedulers lay them out), as positions on the
    control expert's schedule table: the ``t`` of ``control(x, t)`` and of the steps of :mod:`~confiner_core.sampling`.
    On a VP schedule they are its network timesteps; on a flow schedule the network timestep of position t is
    ``control.schedule.timestep(t)`` (Wan's 999 is 1000, sigma 1), where :func:`refine_timesteps` gives network
    timesteps (:func:`refine_positions` gives them as positions)."""
    return sampler_timesteps(control.schedule, config.control_steps, config.control_sampler, config.control_spacing)


def refine_timesteps(config: ChainConfig) -> list[int]:
    """From T_e towards 0, as network timesteps (:meth:`NoiseSchedule.timestep`; what :func:`extract_structure`
    takes; a denoiser is evaluated at their positions, :func:`refine_positions`, which differ on a flow schedule):
    the paper's uniform intervals (T_e = 100, 5 steps: 100, 80, 60, 40, 20) or one of diffusers' spacings over
    [0, T_e] as the SD family's scheduler configs set them (steps offset 1: "leading" gives 81, 61, 41, 21, 1;
    "trailing" 100, 80, 60, 39, 19; "linspace" 100, 75, 50, 25, 0, its last step at the clean end as in diffusers).
    The structure is noised to the first of them (:func:`refine_structure`). ``config.te`` must be set
    (:func:`refine_positions` settles a default one on its schedule)."""
    if config.te is None:   # (it failed with "'>' not supported between ... 'NoneType'")
        raise ValueError("refine_timesteps: config.te is None, the refining expert's default: settle it first, "
                         "config.with_default_te(expert.schedule), or set ChainConfig(te=...)")
    if config.refine_spacing == UNIFORM:
        return uniform_timesteps(config.refine_steps, config.te)
    return spaced_timesteps(config.refine_steps, config.te, config.refine_spacing, STEPS_OFFSET)


def clean_end_problem(config: ChainConfig, schedules: dict) -> str | None:
    """Where the refinement's last timestep is 0 (``linspace``, or few timesteps for many steps) and an expert
    evaluated at it is a flow expert: there its sigma is 0, the clean sample itself, which a flow model was never
    trained at (an evaluation that changes nothing, or divides by zero). ``schedules``: who is evaluated at the
    refinement's own timesteps (role -> schedule): the refining expert, and the temporal expert where it is
    re-noised at the same index. A VP schedule's t = 0 is a noise level (SD 1.5: sigma 0.03)."""
    last = refine_timesteps(config)[-1]
    flow = [role for role, schedule in schedules.items() if schedule is not None and schedule.kind != VP]
    if last >= 1 or not flow:
        return None
    fix = ("use refine spacing 'uniform' or 'trailing'" if config.refine_spacing == "linspace" else
           f"use fewer than {config.refine_steps} refinement steps or a larger T_e")
    whose = f"{' and '.join(flow)} experts'" if len(flow) > 1 else f"{flow[0]} expert's"
    return (f"the refinement's last timestep is 0 ({config.refine_spacing} spacing, {config.refine_steps} steps from "
            f"T_e {config.te}), where the {whose} flow noise level is 0: the clean sample, at which a flow model is "
            f"never evaluated; {fix}")


def noise_floor_warning(config: ChainConfig, schedules: dict) -> str | None:
    """Refinement timesteps below a flow expert's smallest trained noise level (its table's first sigma: 0.003 for
    Wan 2.1's shift 3, 0.005 at shift 5), where it is evaluated at that level instead: two or more of them repeat one
    noise level, steps that lower nothing (a tiny T_e for its steps). ``schedules`` as :func:`clean_end_problem`."""
    timesteps = refine_timesteps(config)
    for role, schedule in schedules.items():
        if schedule is None or schedule.kind == VP:
            continue
        floor = float(schedule.sigmas[0]) * schedule.num_timesteps   # the timestep of the smallest sigma
        below = [t for t in timesteps if 0 < t < floor]              # (0: clean_end_problem)
        if len(below) >= 2:
            return (f"refinement timesteps {below} lie below the {role} expert's smallest noise level (sigma "
                    f"{float(schedule.sigmas[0]):.3g}, timestep {floor:.3g}): it is evaluated at that level for "
                    f"each, so those steps lower no noise; raise T_e or use fewer refinement steps")
    return None


def refine_positions(schedule: NoiseSchedule, config: ChainConfig) -> list[float]:
    """The refinement timesteps as positions on the refining expert's schedule table, the ``t`` a denoiser is
    evaluated at (the same numbers for VP experts; for flow experts where sigma = T / N)."""
    return [schedule.index(t) for t in refine_timesteps(config.with_default_te(schedule))]


def temporal_timesteps(spatial: NoiseSchedule, temporal: NoiseSchedule, config: ChainConfig) -> list[float]:
    """The temporal expert's network timesteps at each coordinated step (Algorithm 1, line 6): the refinement's on
    the spatial expert's schedule, matched by ``config.matching`` (settled), as :func:`~confiner_core.refine
    .coordinated_step` evaluates it."""
    return [temporal.timestep(R.matched_timestep(spatial, temporal, t, config.matching))
            for t in refine_positions(spatial, config)]


def generate_structure(control: Denoiser, noise: torch.Tensor, config: ChainConfig,
                       generator: torch.Generator | int | None = None, eps_hook: EpsHook | None = None,
                       callback: Callback | None = None) -> torch.Tensor:
    """Stage 1 (Eq. 5): the coarse video V_0. ``generator`` feeds DDIM's eta noise (Euler and eta 0 draw none). An
    undistilled control expert at a distilled model's settings is warned, as :func:`run_chain` warns it (a trial's
    stage-by-stage Wan run at 4 steps and cfg 1 was not)."""
    check_config(config, "generate_structure")
    check_denoisers("generate_structure", control=control)
    check_expert(control.expert)
    message = distilled_control_warning(control.expert.latent_space, config.control_steps, control.guidance_scale,
                                        config.control_sampler)
    if message:
        warn_doubtful(message)
    return control_stage(control, noise, config, generator, eps_hook, callback)


def control_stage(control: Denoiser, noise: torch.Tensor, config: ChainConfig,
                  generator: torch.Generator | int | None = None, eps_hook: EpsHook | None = None,
                  callback: Callback | None = None) -> torch.Tensor:
    """:func:`generate_structure` less its warning, for the runs whose :func:`validate_chain` gave it (run_chain,
    generate_long)."""
    check_input(noise, "generate_structure: noise")
    check_config(config, "generate_structure")
    check_denoisers("generate_structure", control=control)
    if generator is not None or (config.control_sampler == "ddim" and config.control_eta):
        generator = seeded(generator, "generate_structure (DDIM with control_eta > 0 draws noise)"
                           if generator is None else "generate_structure", noise.shape[0], CONTROL_DRAWS)
    with own_stage(control, "control"):
        return in_space(sample_control(control, noise, control_timesteps(control, config), config.control_sampler,
                                       config.control_eta, generator, eps_hook, callback, config.control_spacing),
                        control.expert.latent_space)


def extract_structure(schedule: NoiseSchedule, structure: torch.Tensor, te: int,
                      generator: torch.Generator | int) -> torch.Tensor:
    """Eq. 6: V'_{T_e} = sqrt(abar_{T_e}) V_0 + sqrt(1 - abar_{T_e}) eps on the given schedule
    (:func:`extraction_schedule`); T_e is a network timestep (for a flow schedule: sigma = T_e / N)."""
    check_input(structure, "extract_structure: structure")
    generator = seeded(generator, "extract_structure", structure.shape[0])
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"extract_structure: schedule must be a NoiseSchedule (an expert's, e.g. spatial.schedule, "
                        f"or extraction_schedule(...)), got {type(schedule).__name__}")
    if isinstance(te, bool) or not isinstance(te, numbers.Integral):
        raise TypeError(f"extract_structure: te (T_e) must be an integer network timestep, got {te!r}")
    schedule.check_te(te)
    return diffuse(schedule, structure, schedule.index(te), randn_like(structure, generator))


def refine(spatial: Denoiser | None, temporal: Denoiser | None, x: torch.Tensor, config: ChainConfig,
           generator: torch.Generator | int, callback: Callback | None = None) -> torch.Tensor:
    """Stage 2 in the configured mode, from the structure noised to the first refinement timestep (T_e, or 81 for
    T_e 100 at ``refine_spacing`` "leading": ``refine_timesteps(config)[0]``) to the refined video (``x`` in the
    refining expert's space)."""
    check_input(x, "refine: x")
    check_config(config, "refine")
    generator = seeded(generator, "refine", x.shape[0])
    check_denoisers("refine", spatial=spatial, temporal=temporal)
    refiner = refining_denoiser(spatial, temporal, config.mode)
    validate_refinement(spatial, temporal, tuple(x.shape), config, source=refiner)
    spatial = stand_in_spatial(spatial, temporal, config.mode)
    config = settled(config, spatial, temporal)
    ts = refine_positions(refiner.schedule, config)
    with own_stage(refiner, "refine"):
        if config.mode == COORDINATED:
            out = R.refine_coordinated(spatial, temporal, x, ts, generator, config.matching, config.eta, callback)
        elif config.mode == STANDARD:
            out = R.refine_standard(spatial, x, ts, config.eta, generator, callback)
        elif config.mode == TEMPORAL:
            out = R.refine_temporal_only(temporal, x, ts, config.eta, generator, callback)
        else:
            out = R.refine_naive_alternation(spatial, temporal, x, ts, config.eta, generator, callback)
    return in_space(out, refiner.expert.latent_space)


def refine_evaluations(config: ChainConfig) -> int:
    """Expert evaluations one refinement (one window) makes: what progress bars and reports count."""
    return EVALUATIONS_PER_REFINE_STEP[config.mode] * config.refine_steps


def refine_structure(spatial: Denoiser | None, temporal: Denoiser | None, structure: torch.Tensor, config: ChainConfig,
                     generator: torch.Generator | int, callback: Callback | None = None,
                     source: Denoiser | None = None, control_schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """Eq. 6 (or Algorithm 1, line 4) then stage 2: what the chain does with a finished structure (also used by
    ConFiner-Long). A structure in the ``source`` (control) expert's latent space is handed to the refining expert's
    first (:func:`~confiner_core.experts.hand_off`); without a source it is already in the refining expert's space,
    where the result is. With ``structure_noise='control'`` the control expert's schedule (``control_schedule``,
    default the source's) gives the T_e coefficients."""
    check_input(structure, "refine_structure: structure")
    check_config(config, "refine_structure")
    generator = seeded(generator, "refine_structure", structure.shape[0])
    check_denoisers("refine_structure", spatial=spatial, temporal=temporal, source=source)
    spatial = stand_in_spatial(spatial, temporal, config.mode)
    refiner = refining_denoiser(spatial, temporal, config.mode)
    check_structure_space(structure, source, refiner)
    config = config.with_default_te(refiner.schedule)
    if source is not None:
        structure = hand_off(structure, source, refiner)
        control_schedule = control_schedule or source.schedule
    schedule = extraction_schedule(spatial, temporal, config.mode, config.structure_noise, control_schedule)
    # to the first refinement timestep, as diffusers' img2img noises to the first timestep it keeps: T_e itself
    # except under "leading" spacing, whose timesteps start below it
    x = extract_structure(schedule, structure, refine_timesteps(config)[0], generator)
    return refine(spatial, temporal, x, config, generator, with_noised_structure(callback, x))


def check_structure_space(structure: torch.Tensor, source: Denoiser | None, refiner: Denoiser) -> None:
    """A structure the chain made (:func:`generate_structure`: noted in the control expert's space) must be in the
    space :func:`refine_structure` takes it in: the ``source`` expert's, else the refining expert's. Two spaces of
    one channel count read each other's latents without an error (a trial's Wan structure, refined without
    ``source`` by FLUX.1, made 5 frames of 17); a tensor with no note is taken as it is."""
    noted, meant = noted_space(structure), (source or refiner).expert.latent_space
    if noted is None or noted == meant:
        return
    if source is None:
        raise ValueError(f"refine_structure: structure is in {noted.latents} (generate_structure made it with the "
                         f"control expert), and the refining expert works in {meant.latents}: pass "
                         f"source=<the control Denoiser> to hand it over through their VAEs")
    raise ValueError(f"refine_structure: structure is in {noted.latents}, not in the source expert's {meant.latents}: "
                     f"pass as source the expert whose space it is in (the one that made it)")


def with_noised_structure(callback: Callback | None, noised: torch.Tensor) -> Callback | None:
    """``callback`` whose first call also carries ``noised_structure``, V'_{T_e} of Eq. 6: the refinement's start,
    which no step's sample shows."""
    if callback is None:
        return None
    pending = [noised]

    def call(info: dict) -> None:
        callback({**info, "noised_structure": pending.pop()} if pending else info)

    return call


def check_input(x, name: str) -> None:
    """A latent video given to the chain: its shape (:func:`~confiner_core.layout.check_latent`), and no autograd
    graph. The experts are evaluated without one (as diffusers' pipelines run), so a gradient of the output would
    leave every expert out: refused rather than silently wrong (noise optimisation, say)."""
    check_latent(x, VIDEO, name=name)
    if x.device.type == "meta":   # (it failed deep inside the first step, in torch's meta registrations)
        raise ValueError(f"{name} is on the meta device, which holds no values: make it on the experts' device")
    if x.requires_grad:
        raise ValueError(f"{name} requires grad, but the chain evaluates its experts without autograd: a gradient "
                         f"through it would leave them out; pass it detached (.detach()), or take gradients inside "
                         f"an expert's forward (torch.enable_grad())")


def check_config(config, where: str) -> None:
    """The method's settings as a :class:`ChainConfig` (a dict of them fails later, inside, without naming this)."""
    if not isinstance(config, ChainConfig):
        raise TypeError(f"{where}: config must be a ChainConfig (e.g. ChainConfig(te=100) from "
                        f"confiner_core.chain), got {type(config).__name__}")


def check_channels(shape: tuple, control: Denoiser, what: str, fix: str) -> None:
    """A latent given in the control expert's space (the initial noise, a frame shape) has that space's channels:
    the check inside named neither the argument nor how to make one."""
    space = control.expert.latent_space
    if len(shape) > 1 and shape[1] != space.channels:
        raise ValueError(f"{what} has {shape[1]} channels but the control expert {control.expert.name!r} denoises in "
                         f"latent space {space.name!r} ({space.channels} channels): {fix}")


def run_chain(control: Denoiser, spatial: Denoiser | None, temporal: Denoiser | None, noise: torch.Tensor,
              config: ChainConfig, generator: torch.Generator | int, callback: Callback | None = None,
              hand_over: bool = False) -> ChainResult:
    """The whole chain on one clip. ``noise`` is the canonical initial noise [B, C, F, h, w] in the control expert's
    latent space. ``generator`` feeds every fresh draw of the chain (Eq. 6, 9, 11, eta): a seeded torch.Generator,
    which the run continues from (the noise drawn from it first, as ``generate`` and the README's example do), or
    an int seed, whose draws are its own stream, never those of ``torch.Generator().manual_seed(seed)``, so noise
    drawn with that is not drawn again (:func:`~confiner_core.sampling.seeded`). Stages are marked on
    the control denoiser's EvaluationLog: bind all three experts to one log to count every evaluation per stage.
    ``callback(info)`` is called after every control and refinement step with
    :func:`~confiner_core.sampling.step_info`'s dict (``stage``, ``i``, ``t``, ``timestep``, the new sample ``x``,
    the step's x0 ``denoised``; in coordinated refinement also ``spatial_denoised``, ``temporal_input`` (at
    ``temporal_t``, ``temporal_timestep``), ``temporal_denoised`` and ``renoised``; the first refinement step also
    ``noised_structure``, Eq. 6's V'_{T_e}).
    With ``hand_over`` the refinement's last finiteness check stays queued on that log for the caller's next stage
    to read (``generate`` decodes in a ``decode`` stage: the decode is queued before the host waits for the GPU)."""
    check_input(noise, "run_chain: noise")
    check_config(config, "run_chain")
    generator = seeded(generator, "run_chain", noise.shape[0])
    check_denoisers("run_chain", control=control, spatial=spatial, temporal=temporal)
    check_function(callback, "run_chain", "callback(info)")
    if not torch.isfinite(noise).all():   # once per clip; inside, the first evaluation would say it
        raise NonFiniteError("run_chain: noise holds NaN or infinity; draw it with torch.randn(shape, generator=g)")
    check_channels(tuple(noise.shape), control, "run_chain: noise",
                   "draw it there, torch.randn(control.expert.latent_space.latent_shape(batch, frames, height, "
                   "width), generator=g)")
    validate_chain(control, spatial, temporal, tuple(noise.shape), config)
    spatial = stand_in_spatial(spatial, temporal, config.mode)
    log = control.log
    t0 = time.perf_counter()
    # the control stage's last finiteness check is read once the refinement's first forward is queued
    with in_stage(log, "control", hand_over=True):
        structure = control_stage(control, noise, config, generator, callback=callback)
    t1 = time.perf_counter()
    with in_stage(log, "refine", hand_over=hand_over):
        latent = refine_structure(spatial, temporal, structure, config, generator, callback, source=control)
    t2 = time.perf_counter()
    return ChainResult(latent, structure, refining_denoiser(spatial, temporal, config.mode),
                       {"control": t1 - t0, "refine": t2 - t1}, settled(config, spatial, temporal))

