"""One call from settings to files: check everything, build the experts, run the chain (or ConFiner-Long), decode,
write.

Used by the command line (``python -m confiner_core generate``) and by scripts. The order is the promise:

1. :meth:`GenerateRequest.validate` checks every argument, device, path and prompt schedule before anything heavy
   (no weights load, no sampling) and raises :class:`~confiner_core.errors.UsageError` naming the input;
2. the experts load and are checked against each other (a mismatch is a ``UsageError`` too);
3. sampling, with every expert evaluation checked for NaN/inf (:class:`~confiner_core.errors.NonFiniteError`);
4. outputs are written to temporary files and moved into place together only when complete
   (:mod:`confiner_core.outputs`); Ctrl-C raises :class:`~confiner_core.errors.Interrupted` and replaces nothing.
   ConFiner-Long keeps its finished windows in ``<out>/.confiner-resume`` (:mod:`confiner_core.resume`) so
   ``resume=True`` continues an interrupted run bit-identically.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import numbers
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from tqdm.auto import tqdm

from . import __version__, distributed, metrics, source_digest
from .chain import (ALTERNATE, AUTO, COORDINATED, DEFAULT_TE, EVALUATED_IN, MATCHINGS, MODES, REFINE_SPACINGS,
                    STRUCTURE_NOISES, TEMPORAL, ChainConfig, TooManyFrames, alternation_problem, clean_end_problem,
                    default_te, named_settings, refine_evaluations, refine_timesteps, refining_denoiser, run_chain,
                    settled, temporal_timesteps, unused_settings, validate_chain, warned_already)
from .devices import check_device
from .errors import Interrupted, NonFiniteError, OutputError, RankFailed, UsageError, interrupts_held, warn_doubtful
from .experts import FP16_OVERFLOW, EvaluationLog, bind_chain, in_stage, not_a_path
from .long import (COHERENCE_MEMORIES, FREENOISE, MAX_SEED, NOISE_INITS, LongConfig, SegmentPlan, applied_schedule,
                   freenoise_span, freenoise_stride_problem, generate_long, given_entries, layout_only_entries,
                   plan_segments, prompt_change_junctions, render_applied_schedule, unused_entries, unused_entries_text,
                   video_frames_window)
from .outputs import AtomicOutputs, check_output_folder, writing
from .prompts import PromptSchedule, parse_prompt, render_schedule
from .refine import SAME_INDEX
from .sampling import SAMPLERS as CONTROL_SAMPLERS, control_timesteps, device_to_host, randn
from .timesteps import SPACINGS
from .video_io import FramesFile, VideoSink, contact_sheet, write_png
from .embedded.experts import PRESET_HELP as EMBEDDED_PRESETS
from .embedded.world import DEFAULT_PROMPT, read_prompt
from .latent_spaces import IMAGE_MODES, LATENT_FRAMES, VIDEO_FPS, Codec, LatentSpace, to_uint8

if TYPE_CHECKING:   # resume's safetensors is imported where a resume folder is used
    from .resume import ResumeStore

OUTPUTS = ("video.mp4", "frames.png", "report.json")
FRAMES_FILE = "frames.npy"   # save_frames: every frame as uint8 [F, H, W, 3], lossless
DEFAULT_FPS = VIDEO_FPS["sd15"]   # the output's frame rate where no expert gives one (the embedded experts' 16-frame
                                  # clips of 2 s, as AnimateDiff's)
NATURAL_FRAMES = 16        # the clip length of SD-family video experts (AnimateDiff, ModelScope); causal video
                           # spaces (Wan: 4k+1) round it up to the next count they hold
MIN_SIZE = 64
SPEEDS = ("eager", "lean", "fast", "max")  # diffusers experts: names of diffusers_backend.speed.PRESETS
COMPILED_SPEEDS = ("fast", "max")  # the presets that compile (regional torch.compile)
#: diffusers experts: the weights' and activations' dtype; auto: fp16 on accelerators, fp32 on the CPU (load_experts)
DTYPES = ("auto", "float16", "bfloat16", "float32")


# ----------------------------------------------------------------------------------------------------------------
# Arguments as data: each number's option, where it lives in the request, its type and accepted range

@dataclass(frozen=True)
class Number:
    option: str
    path: str            # attribute path in GenerateRequest, e.g. "chain.te"
    kind: type           # int or float
    lo: float
    hi: float
    lo_open: bool = False
    optional: bool = False  # None allowed (use the backend's default)
    range_said: str | None = None  # the range in words, where the true limit is another input's (T_e: a schedule's)

    def bound(self, value) -> str:
        """A limit as a user types it: integers whole (a seed's 18446744073709551615, not 1.84467e+19)."""
        return str(int(value)) if self.kind is int else f"{value:g}"

    def accepted(self) -> str:
        if self.range_said:
            return self.range_said
        if self.kind is int:
            return f"an integer in {self.lo}..{self.hi}"
        return f"a number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"

    def check(self, value) -> None:
        if value is None and self.optional:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.kind is int else numbers.Real):
            raise UsageError(f"{self.option} must be {self.accepted()}, got {value!r}", self.option)
        if not math.isfinite(value):
            raise UsageError(f"{self.option} must be a finite number (accepted: {self.accepted()}), got {value}",
                             self.option)
        if value < self.lo or (self.lo_open and value == self.lo):
            bound = f"> {self.bound(self.lo)}" if self.lo_open else f">= {self.bound(self.lo)}"
            raise UsageError(f"{self.option} must be {bound} (accepted: {self.accepted()}), got {value}",
                             self.option)
        if value > self.hi:
            raise UsageError(f"{self.option} must be <= {self.bound(self.hi)} (accepted: {self.accepted()}), got "
                             f"{value}", self.option)


NUMBERS = (
    Number("--frames", "frames", int, 1, 100_000, optional=True),
    Number("--height", "height", int, MIN_SIZE, 8192),
    Number("--width", "width", int, MIN_SIZE, 8192),
    Number("--seed", "seed", int, 0, MAX_SEED),
    Number("--fps", "fps", float, 0.01, 1000, optional=True),   # (OpenCV's mp4v writer fails below 0.002)
    Number("--control-cfg", "control_cfg", float, 0, 100),
    Number("--cfg", "refine_cfg", float, 0, 100, optional=True),
    Number("--spatial-cfg", "spatial_cfg", float, 0, 100, optional=True),
    Number("--temporal-cfg", "temporal_cfg", float, 0, 100, optional=True),
    Number("--control-steps", "chain.control_steps", int, 1, 1000),
    Number("--refine-steps", "chain.refine_steps", int, 1, 1000),
    Number("--te", "chain.te", int, 1, 100_000, optional=True,
           range_said="an integer from 1 to the refining expert's last timestep, 999 for SD-family and flow experts"),
    Number("--eta", "chain.eta", float, 0, 1),
    Number("--control-eta", "chain.control_eta", float, 0, 1),
    Number("--segment-length", "long.segment_length", int, 2, 4096, optional=True),
    Number("--freenoise-window", "long.freenoise_window", int, 1, 100_000, optional=True),
    Number("--freenoise-stride", "long.freenoise_stride", int, 1, 100_000, optional=True),
    Number("--gamma", "long.gamma", float, 0, 0.5),
)
CHOICES = (
    ("--mode", "chain.mode", MODES),
    ("--matching", "chain.matching", MATCHINGS),
    ("--control-sampler", "chain.control_sampler", CONTROL_SAMPLERS),
    ("--control-spacing", "chain.control_spacing", SPACINGS),
    ("--refine-spacing", "chain.refine_spacing", REFINE_SPACINGS),
    ("--structure-noise", "chain.structure_noise", STRUCTURE_NOISES),
    ("--coherence-memory", "long.coherence_memory", COHERENCE_MEMORIES),
    ("--noise-init", "long.noise_init", NOISE_INITS),
    ("--speed", "speed", SPEEDS),
    ("--dtype", "dtype", DTYPES),
    ("--embedded", "embedded_preset", tuple(EMBEDDED_PRESETS)),
    ("--image-mode", "image_mode", IMAGE_MODES),
)
NUMBER_BY_OPTION = {n.option: n for n in NUMBERS}
# what ConFiner-Long alone reads (the segment length decides whether a run is long, so it is not among them)
LONG_ONLY = (("--noise-init", "noise_init"), ("--freenoise-window", "freenoise_window"),
             ("--freenoise-stride", "freenoise_stride"), ("--gamma", "gamma"), ("--no-stagger", "staggered"),
             ("--coherence-memory", "coherence_memory"), ("--color-anchor", "color_anchor"))


# What a Python caller passes for each of the command line's options (GenerateRequest's fields, flags as the value
# that sets them): messages are written with the options, and generate() and validate() name the fields instead
# unless the command line runs them (in_command_line_spelling).
FIELDS = {**{n.option: n.path for n in NUMBERS}, **{option: path for option, path, _ in CHOICES},
          "--prompt": "prompt", "--negative-prompt": "negative_prompt", "--out": "out", "--control": "control",
          "--spatial": "spatial", "--temporal": "temporal", "--base": "base", "--device": "device",
          "--compile-dir": "compile_dir", "--resume": "resume=True", "--save-frames": "save_frames=True",
          "--no-stagger": "long.staggered=False",
          "--color-anchor": "long.color_anchor=True"}
# ... and the other way: a setting's option, to name it in messages (flags set to a value, e.g. --no-stagger, are not)
OPTION_OF = {path: option for option, path in FIELDS.items() if "=" not in path}
#: ... and as a resume's refusal names a changed setting: a flag's setting with its flag (it read "long.staggered")
RESUME_NAMES = {**OPTION_OF, **{path.split("=")[0]: f"{path.split('=')[0]} ({option})"
                                for option, path in FIELDS.items() if "=" in path and path.startswith("long.")}}
_OPTION = re.compile(r"(?<![\w/.-])--[a-z][a-z0-9-]*")
_SPELLING = contextvars.ContextVar("confiner_option_spelling", default="python")
_DROP = re.compile(r"\bdrop (" + "|".join(re.escape(p) for p in sorted(OPTION_OF, key=len, reverse=True)) + r")\b")


@contextlib.contextmanager
def in_command_line_spelling():
    """Messages of the requests run inside name the command line's options (the command line's own runs)."""
    token = _SPELLING.set("cli")
    try:
        yield
    finally:
        _SPELLING.reset(token)


def spelled(text: str) -> str:
    """``text`` with each command-line option as the caller spells it: unchanged for the command line, else the
    GenerateRequest field (``--cfg`` -> ``refine_cfg``, ``--te`` -> ``chain.te``, ``--resume`` -> ``resume=True``)."""
    if text is None or _SPELLING.get() == "cli":
        return text
    text = _OPTION.sub(lambda m: FIELDS.get(m.group(0), m.group(0)), text)
    # "drop --matching" is not something a frozen ChainConfig field can do: its default is what leaves it unset
    return _DROP.sub(lambda m: f"leave {m.group(1)} at {lookup(GenerateRequest(), m.group(1))!r}", text)


#: a chain or long setting as the library's messages name it (``mode``) -> its option, and the setting with its value
#: in a message (``mode 'coordinated'``)
_SETTING_OPTION = {path.split(".")[-1]: option for path, option in OPTION_OF.items()
                   if path.startswith(("chain.", "long."))}
_SETTING_VALUE = re.compile(r"\b(" + "|".join(sorted(_SETTING_OPTION, key=len, reverse=True)) + r") '([^'\s]*)'")


def as_options(text: str) -> str:
    """A library message's settings (``use mode 'coordinated'``) as the command line spells them (``use --mode
    coordinated``) where it runs; unchanged for library callers."""
    if _SPELLING.get() != "cli":
        return text
    return _SETTING_VALUE.sub(lambda m: f"{_SETTING_OPTION[m.group(1)]} {m.group(2)}", text)


def with_dtype_option(text: str) -> str:
    """A NaN message's fp16 advice (:data:`~.experts.FP16_OVERFLOW`) with the setting that acts on it."""
    setting = "--dtype bfloat16" if _SPELLING.get() == "cli" else "dtype='bfloat16'"
    return text.replace(FP16_OVERFLOW, f"{FP16_OVERFLOW} ({setting})")


def from_the_backend(text: str) -> str:
    """A diffusers-backend message names its keyword arguments (``base=``); on the command line, the options."""
    return text.replace("base=", "--base ") if _SPELLING.get() == "cli" else text


@contextlib.contextmanager
def caller_spelling():
    """A UsageError raised inside names the inputs as the caller spells them (:func:`spelled`)."""
    try:
        yield
    except UsageError as e:
        if _SPELLING.get() == "cli":
            raise
        raise UsageError(spelled(str(e)), spelled(e.option).split("=")[0] if e.option else e.option) from None


def long_options_set(long: LongConfig) -> list[str]:
    """The options of ``LONG_ONLY`` whose values differ from LongConfig's defaults."""
    default = LongConfig(staggered=True)   # (a settled request's: validate() staggers a None as plan_segments does)
    return [option for option, field_name in LONG_ONLY if getattr(long, field_name) != getattr(default, field_name)]


def one_of(choices) -> str:
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def lookup(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


#: fields added after the resume folders' FORMAT 2, with the value that reproduces the runs made before them: a run
#: interrupted by an earlier version (which stored no such setting) resumes while they are at it (ResumeStore)
ADDED_SETTINGS = {"image_mode": LATENT_FRAMES, "dtype": "auto"}
#: fields that matter as the loaded experts take them (a scale left to their default, refine_guidance; a negative
#: prompt only where an expert uses classifier-free guidance): a resume compares what the experts were given
SETTLED_BY_EXPERTS = ("refine_cfg", "spatial_cfg", "temporal_cfg", "negative_prompt")
#: defaults :meth:`GenerateRequest.validate` settles from the experts (None, or matching "auto", as written)
SETTLED_DEFAULTS = ("frames", "fps", "chain.te", "chain.matching", "long.segment_length")


def canonical_settings(settings: dict) -> dict:
    """A run's flattened settings written one way: the embedded experts' empty prompt is their default scene, so a
    resume that types :data:`~confiner_core.embedded.world.DEFAULT_PROMPT` out is the same run; a checkpoint path is
    its real absolute path, so a resume that names the same folder another way (absolute where the run was started
    with a relative path, a trailing slash, a link) is too (a trial was told to delete three finished windows). A
    state kept before this holds the paths as typed: they are read from the folder the resume runs in."""
    settings = {**settings, **{name: os.path.realpath(settings[name]) for name in PATHS
                               if isinstance(settings.get(name), str) and settings[name]}}
    if not any(settings.get(role) for role in ("control", "spatial", "temporal")) and not settings.get("prompt"):
        return {**settings, "prompt": DEFAULT_PROMPT}
    return settings


class Settled:
    """The mark of a value :meth:`GenerateRequest.validate` settled: :func:`marked_settled` makes it a subclass of the
    value's type, equal to it and written as it, so a copy by ``dataclasses.replace`` keeps the mark and a value the
    user writes has none (the same number given in the replace() that swapped the experts is theirs to keep)."""


_SETTLED_KINDS: dict = {}


def marked_settled(value):
    """``value`` marked :class:`Settled` (int, float or str)."""
    kind = type(value)
    if isinstance(value, Settled) or value is None:
        return value
    if kind not in _SETTLED_KINDS:
        _SETTLED_KINDS[kind] = type(f"Settled{kind.__name__.capitalize()}", (Settled, kind),
                                    {"__slots__": (), "__repr__": kind.__repr__, "__str__": kind.__str__,
                                     # pickled and deep-copied as the plain value (the class is made here)
                                     "__reduce__": lambda self: (kind, (kind(self),))})
    return _SETTLED_KINDS[kind](value)


PATHS = ("out", "control", "spatial", "temporal", "base", "compile_dir")   # fields naming files or folders


@dataclass
class GenerateRequest:
    """One run of the command line's ``generate``, as data: each field is the option of the same name, but for
    ``refine_cfg`` (``--cfg``), ``embedded_preset`` (``--embedded``) and ``long.staggered`` (``--no-stagger``); the
    chain's and ConFiner-Long's options are fields of ``chain`` and ``long`` (:data:`FIELDS` maps them all).

    ``prompt``: text or a prompt schedule (:mod:`confiner_core.prompts`); empty on the embedded experts is their
    world's default scene. ``control``/``spatial``/``temporal``/``base``: checkpoint paths (all None: the embedded
    experts of ``embedded_preset``). ``control_cfg`` guides the control expert; ``refine_cfg`` the spatial and
    temporal experts, ``spatial_cfg`` / ``temporal_cfg`` one of them (None: see :func:`refine_guidance`). ``chain``
    holds the method's settings (``chain.te=None``: the refining expert's default, see
    :class:`~confiner_core.chain.ChainConfig`); ``long`` ConFiner-Long's, used once ``frames`` exceeds a segment or
    the prompt travels (``long.segment_length=None``, the default here: the experts' natural clip, 16 frames or 17
    for Wan-like 4k+1 spaces); ``image_mode`` is how a Wan or Qwen-Image spatial expert refines the video
    (``latent_frames`` or ``pixel_frames``, README "Image experts on video latents"). Both configs are frozen:
    :meth:`validate` settles their defaults (``chain.te``, ``long.segment_length``, and ``chain.matching`` "auto"
    where the schedules are known before loading) in new ones it puts in the request, never in the objects passed
    in, so one ``ChainConfig`` can serve several requests; a sweep passes ``dataclasses.replace(chain, te=...)``.
    It raises :class:`~confiner_core.errors.UsageError` naming the input by its field (``refine_cfg``,
    ``chain.te``); the command line's runs name its options instead (``--cfg``, ``--te``)."""

    prompt: str = ""
    negative_prompt: str = ""
    frames: int | None = None   # None: the experts' natural clip (16; 17 for causal 4k+1 video latents)
    height: int = 256
    width: int = 256
    seed: int = 0
    out: str = "out"
    control: str | None = None
    spatial: str | None = None
    temporal: str | None = None
    base: str | None = None
    control_cfg: float = 1.0
    refine_cfg: float | None = None
    spatial_cfg: float | None = None    # each over refine_cfg for its expert (FLUX.1-dev's distilled guidance and
    temporal_cfg: float | None = None   # a Wan expert's cfg want different scales)
    fps: float | None = None   # None: the video experts' own (video_fps: Wan 16, AnimateDiff and ModelScope 8)
    device: str = "cpu"
    speed: str = "eager"  # diffusers experts: a name of diffusers_backend.speed.PRESETS (SPEEDS)
    dtype: str = "auto"   # diffusers experts: a name of DTYPES (auto: fp16 on accelerators, fp32 on the CPU), or a
    #                       torch.dtype of them (load_experts' spelling)
    compile_dir: str | None = None  # --speed fast/max: compiled blocks kept here for later runs (SpeedSettings)
    resume: bool = False  # ConFiner-Long: continue the interrupted run in ``out``
    save_frames: bool = False  # also frames.npy: every frame, lossless (video.mp4's codec moves pixels)
    embedded_preset: str = "sd"  # which embedded experts when no checkpoints are given (embedded.experts.PRESETS)
    image_mode: str = LATENT_FRAMES  # a Wan / Qwen-Image spatial expert: every latent frame, or every pixel frame
    chain: ChainConfig = field(default_factory=ChainConfig)
    long: LongConfig = field(default_factory=LongConfig)
    # the defaults validate() settles, path -> the value as given (the settled values themselves are marked:
    # :func:`marked_settled`). A field, so dataclasses.replace() copies it: a copy with other experts settles those
    # defaults anew (a notebook validated an SD request, swapped in Wan checkpoints by replace() and ran at SD's
    # T_e 100 and 8 fps)
    _defaults: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if isinstance(self.dtype, torch.dtype):   # load_experts' spelling, taken as its name ("bfloat16")
            self.dtype = str(self.dtype).removeprefix("torch.")
        for name, kind in (("chain", ChainConfig), ("long", LongConfig)):
            if not isinstance(getattr(self, name), kind):
                raise UsageError(f"{name} must be a {kind.__name__} (e.g. {kind.__name__}(...) from "
                                 f"{kind.__module__}), "
                                 f"got {type(getattr(self, name)).__name__}", name)

    def _settled(self, *names: str) -> None:
        """Defaults :meth:`validate` settles from the experts, as the helpers below need them."""
        unset = [name for name in names if lookup(self, name) is None]
        if unset:
            owner, _, field_name = unset[0].rpartition(".")
            given = f"request.{owner} = dataclasses.replace(request.{owner}, {field_name}=...)" if owner else \
                f"request.{unset[0]} = ..."
            raise ValueError(f"GenerateRequest.{unset[0]} is not set yet: call validate() first, which settles the "
                             f"defaults from the experts (or give it: {given})")

    def prompt_schedule(self) -> PromptSchedule:
        """The prompt, resolved over the output frames (:mod:`confiner_core.prompts`); seconds keys need ``fps``."""
        self._settled("frames")
        with caller_spelling():
            return parse_prompt(self.prompt, self.frames, self.fps, option="--prompt", frames_option="--frames")

    @property
    def is_long(self) -> bool:
        """Long mode (ConFiner-Long) as soon as the video is longer than one segment, or the prompt travels."""
        self._settled("frames", "long.segment_length")
        return self.frames > self.long.segment_length or self.prompt_schedule().travels

    @property
    def embedded(self) -> bool:
        return not (self.control or self.spatial or self.temporal)

    def plan(self) -> SegmentPlan | None:
        return plan_segments(self.frames, self.long.segment_length, self.long.staggered) if self.is_long else None

    def validate(self) -> None:
        """Every check that needs no weights, in the order a user would fix them. Raises UsageError. Settles the
        defaults the experts decide (:data:`SETTLED_DEFAULTS`) in the request itself (it returns None); one settled
        by an earlier call counts as unset (unless the user wrote a value there since), so a copy by
        ``dataclasses.replace`` with other experts gets theirs."""
        with caller_spelling():
            for path, given in self._defaults.items():
                if isinstance(lookup(self, path), Settled):
                    self._assign(path, given)
            given = {path: lookup(self, path) for path in SETTLED_DEFAULTS}
            try:
                self._validate()
            finally:
                for path in SETTLED_DEFAULTS:
                    if lookup(self, path) != given[path]:
                        self._assign(path, marked_settled(lookup(self, path)))
                self._defaults = given

    def requested(self, path: str):
        """A settled default's value as the request gave it (``chain.matching``: "auto" where validate() chose)."""
        return self._defaults.get(path, lookup(self, path))

    def _assign(self, path: str, value) -> None:
        """Sets a field by its path; a field of the frozen chain or long config gets a new config."""
        owner, _, name = path.rpartition(".")
        if owner:
            setattr(self, owner, replace(getattr(self, owner), **{name: value}))
        else:
            setattr(self, name, value)

    def _validate(self) -> None:
        for name in PATHS:   # "~/videos" quoted in a shell, or written in Python (str or Path), is the home folder's
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                setattr(self, name, os.path.expanduser(value))
            elif value is not None:
                option = f"--{name.replace('_', '-')}"
                raise UsageError(not_a_path(option, value, model=name in ("control", "spatial", "temporal", "base")),
                                 option)
        if isinstance(self.seed, torch.Generator):   # the request is settings (kept for --resume): seeds are ints
            raise UsageError(f"--seed must be an integer, got a torch.Generator: pass its seed, "
                             f"{self.seed.initial_seed()} (generator.initial_seed())", "--seed")
        for number in NUMBERS:
            value = lookup(self, number.path)
            number.check(value)
            if value is not None and type(value) is not number.kind:   # NumPy's numbers: kept as Python's (the seed
                # seeds torch, the report is JSON); a float32 as the decimal it shows: np.float32(0.1) widened is
                # 0.10000000149, a gamma other than the default, refused on a single clip as set
                decimal = number.kind is float and hasattr(value, "dtype")
                self._assign(number.path, number.kind(str(value)) if decimal else number.kind(value))
        for option, path, choices in CHOICES:
            value = lookup(self, path)
            if value not in choices:
                raise UsageError(f"{option} must be {one_of(choices)}, got {value!r}", option)
        for option, value in (("--prompt", self.prompt), ("--negative-prompt", self.negative_prompt)):
            if not isinstance(value, str):   # (which of the two, and what came: a researcher's None)
                raise UsageError(f"{option} must be text, got {type(value).__name__}", option)
        for flag in ("resume", "save_frames"):   # (a "no" string is true: it would have resumed, saved)
            if not isinstance(getattr(self, flag), bool):
                raise UsageError(f"{flag} must be True or False, got {getattr(self, flag)!r}", flag)
        unused = unused_settings(self.chain)   # they would be recorded, not used
        if "control_eta" in unused:
            raise UsageError(f"--control-eta {self.chain.control_eta:g} applies to --control-sampler ddim only (the "
                             f"{self.chain.control_sampler} sampler draws no noise): drop it or use ddim",
                             "--control-eta")
        if "matching" in unused:
            raise UsageError(f"--matching {self.chain.matching} picks the temporal expert's timestep in coordinated "
                             f"refinement only; this run is --mode {self.chain.mode}: drop --matching",
                             "--matching")
        for role in ("spatial", "temporal"):
            if getattr(self, f"{role}_cfg") is not None and role not in EVALUATED_IN[self.chain.mode]:
                raise UsageError(f"--{role}-cfg guides the {role} expert, which --mode {self.chain.mode} does not "
                                 f"evaluate: drop it", f"--{role}-cfg")
        if not self.embedded and self.embedded_preset != GenerateRequest.embedded_preset:
            raise UsageError(f"--embedded {self.embedded_preset} picks weight-free experts for a run without "
                             "checkpoints; this run loads --control/--spatial/--temporal: drop --embedded",
                             "--embedded")
        self._validate_checkpoints()
        self._validate_spaces()
        schedules = expert_schedules(self)
        if self.chain.te is None:  # the refining expert's kind sets the default (chain.DEFAULT_TE)
            self.chain = replace(self.chain, te=default_te(schedules[refining_role(self.chain.mode)])
                                 if refining_role(self.chain.mode) in schedules else DEFAULT_TE["vp"])
        if "spatial" in schedules:   # "auto" matching, where the schedules are known before loading; else run_chain
            self.chain = self.chain.with_matching(schedules["spatial"], schedules.get("temporal"))
        try:
            self.chain.validate()  # cross-field: the refinement steps must fit between T_e and 0
        except ValueError as e:
            raise UsageError(f"--refine-steps: {e} (--te)", "--refine-steps") from None
        self.prompt_schedule()  # its grammar and keys, also where a long video would not read the schedule here
        plan = self.plan()
        if plan is not None:
            self._validate_long(plan)
        elif self.resume:
            # the folder's run first: its stored settings name what differs (a resume with the options left out
            # was told only that it made a single clip)
            self._validate_resume()
            raise UsageError(f"--resume continues an interrupted ConFiner-Long run; this is a single clip "
                             f"({self.frames} frames <= --segment-length {self.long.segment_length}, one prompt)",
                             "--resume")
        else:
            unused = long_options_set(self.long)
            if unused:
                raise UsageError(f"{', '.join(unused)} set{'s' if len(unused) == 1 else ''} how ConFiner-Long joins "
                                 f"segments; this is a single clip ({self.frames} frames <= --segment-length "
                                 f"{self.long.segment_length}, one prompt): drop {'it' if len(unused) == 1 else 'them'}"
                                 " or ask for more --frames", unused[0])
        check_device(self.device)
        self._validate_schedules()
        problem = check_output_folder(self.out, self.outputs())
        if problem:
            raise UsageError(f"--out: {problem}", "--out")
        if self.compile_dir is not None:
            if self.speed not in COMPILED_SPEEDS:
                raise UsageError(f"--compile-dir keeps the blocks that --speed {' or '.join(COMPILED_SPEEDS)} "
                                 f"compiles; this run is --speed {self.speed}", "--compile-dir")
            problem = check_output_folder(self.compile_dir, (), "--compile-dir")
            if problem:
                raise UsageError(f"--compile-dir: {problem}", "--compile-dir")
        if self.embedded and self.speed != "eager":
            raise UsageError(f"--speed {self.speed} speeds up the networks of diffusers checkpoints (--control, "
                             f"--spatial, --temporal); the embedded default has none: leave --speed out", "--speed")
        if self.embedded and self.dtype != "auto":
            raise UsageError(f"--dtype {self.dtype} loads diffusers checkpoints (--control, --spatial, --temporal) in "
                             f"that dtype; the embedded default has no weights (it computes in float32): leave "
                             f"--dtype out", "--dtype")
        self._validate_resume()
        if self.dtype == "float16" and torch.device(self.device).type == "cpu":   # (5x on a trial's CPU)
            warn_doubtful(spelled("--dtype float16 on the CPU runs several times slower than float32 (most CPUs have "
                                  "no fast float16 arithmetic; it saves memory only): leave --dtype out for float32"))
        cpu_note = cpu_size_note(self) if torch.device(self.device).type == "cpu" else None
        if cpu_note:
            warn_doubtful(spelled(cpu_note))
        if not self.embedded and not self.prompt.strip():   # (the embedded world has a default scene)
            warn_doubtful(spelled("no --prompt: the experts are conditioned on the empty prompt (unconditional "
                                  "samples); give --prompt \"...\" to describe the video"))
        if speed_used(self) != self.speed:   # a run that goes ahead, said once
            warn_doubtful(spelled(f"--speed 'max' adds CUDA graphs to 'fast', and {self.device} has none: this run "
                                  "is 'fast' (its compile takes minutes on the first run)"))

    def spaces(self) -> dict[str, LatentSpace]:
        """role -> latent space of each expert, known without loading weights (the embedded preset's experts, or
        the checkpoints' inspection)."""
        if self.embedded:
            from .embedded.experts import embedded_experts

            return {role: e.latent_space for role, e in embedded_experts(self.embedded_preset).items()}
        return {role: ins.latent_space for role, ins in self._inspections.items()}

    def _validate_spaces(self) -> None:
        """Frame counts and sizes every expert's latent space holds; the defaults for --frames and
        --segment-length (the experts' natural clip) are set here."""
        spaces = self.spaces()
        problem = alternation_problem(self.chain.mode, spaces.get("spatial"), spaces.get("temporal"))
        if problem:
            raise UsageError(as_options(problem), "--mode")
        if self.fps is None:   # a resumed run keeps the rate it started with (a default that has changed since)
            self.fps = (self.stored_setting("fps") if self.resume else None) or video_fps(self._inspections)
        natural = natural_frames(spaces.values())
        if self.frames is None:
            self.frames = natural
        if self.long.segment_length is None:
            self.long = replace(self.long, segment_length=natural)
        if self.long.staggered is None:   # (the plan's default, written out: the report and a resume compare it)
            self.long = replace(self.long, staggered=True)
        # the spaces' factors, and where a network packs latent patches (Wan, Qwen-Image, Flux: 2x2) its multiple
        multiple = math.lcm(*(s.spatial_factor for s in spaces.values()),
                            *(ins.pixel_multiple for ins in self._inspections.values()))
        for name in ("height", "width"):
            v = getattr(self, name)
            if v % multiple:
                nearest = [n for n in (v - v % multiple, v - v % multiple + multiple) if n >= MIN_SIZE]
                raise UsageError(f"--{name} must be a multiple of {multiple} (the experts' latent factor and "
                                 f"patch) and at least {MIN_SIZE}, got {v}: use {' or '.join(map(str, nearest))}",
                                 f"--{name}")
        clip = self.long.segment_length if self.is_long else self.frames
        option = "--segment-length" if self.is_long else "--frames"
        # an image model on a video VAE's latents (Qwen-Image, Wan at one frame) between video experts of a per-frame
        # space (SD 1.5): on latent frames it refines 4 of their frames packed in each; pixel frames take each alone
        packs_their_frames = self.image_mode == LATENT_FRAMES and "spatial" in self._inspections and \
            self._inspections["spatial"].facts.get("image_mode") is not None and \
            all(space.temporal_factor == 1 for role, space in spaces.items() if role != "spatial")
        pixel_frames_fix = (", or --image-mode pixel_frames: the spatial expert then refines every frame as an image "
                            "of its own, with no such limit, as the video experts beside it take their frames")
        for role, space in spaces.items():
            try:
                space.check_pixel_frames(clip, f"the {role} expert's {space.title}")
            except ValueError as e:
                fix = pixel_frames_fix if role == "spatial" and packs_their_frames else ""
                raise UsageError(f"{option}: {e}{fix}", option) from None
        if packs_their_frames:
            warn_doubtful(spelled(f"the spatial expert refines {spaces['spatial'].latents} (--image-mode "
                                  f"latent_frames, the default), whose latent frames after the first pack "
                                  f"{spaces['spatial'].temporal_factor} of the video experts' frames each; "
                                  f"--image-mode pixel_frames refines every frame alone"))
        for role, inspection in self._inspections.items():   # a motion module's longest clip
            limit = inspection.max_frames
            if limit is not None and spaces[role].latent_frames(clip) > limit:
                raise too_many_frames(TooManyFrames(role, str(inspection.path), spaces[role].pixel_frames(limit),
                                                    clip), self.is_long)   # (named by its path, as it was given)

    def _validate_long(self, plan: SegmentPlan) -> None:
        L = self.long
        if self.frames < L.segment_length:  # a travelling prompt on a clip shorter than one segment
            raise UsageError(f"--frames {self.frames} is shorter than one segment (--segment-length "
                             f"{L.segment_length}): ConFiner-Long would make and refine {L.segment_length}-frame "
                             f"windows and cut them to {self.frames}; lower --segment-length to at most "
                             f"{self.frames}, or give one prompt for a single clip", "--segment-length")
        if L.color_anchor and L.staggered is False:
            raise UsageError("--color-anchor anchors each window to the rest of the structure its predecessor ended "
                             "in, which only staggered refinement has: drop --no-stagger or --color-anchor",
                             "--color-anchor")
        if L.noise_init != "freenoise":
            unused = [option for option in long_options_set(L) if option.startswith("--freenoise")]
            if unused:
                raise UsageError(f"{' and '.join(unused)} shape{'s' if len(unused) == 1 else ''} FreeNoise's noise; "
                                 f"this run's --noise-init is {L.noise_init}: drop {'it' if len(unused) == 1 else 'them'} "
                                 "or use --noise-init freenoise", unused[0])
        if L.noise_init == "freenoise":   # in latent frames, the noise's (a Wan latent frame holds 4 video frames)
            segment = self.spaces()["control"].latent_frames(L.segment_length)
            window, stride = freenoise_span(L, segment)
            frames = (f"{segment} latent frames = {L.segment_length} video frames" if segment != L.segment_length
                      else f"{segment} frames")
            problem = freenoise_stride_problem(stride, window, f"--freenoise-stride {stride}",
                                               f"--freenoise-window {window}" if L.freenoise_window else
                                               f"one segment's {frames}")
            if problem:
                raise UsageError(problem, "--freenoise-stride")
            doubtful = video_frames_window(L, L.segment_length, segment, "--freenoise-window")
            if doubtful:   # (generate_long's own warning is not said again: warned_already)
                warn_doubtful(spelled(doubtful))
            if window >= plan.structures * segment:
                raise UsageError(f"--freenoise-window ({window}) must be shorter than this run's noise "
                                 f"({plan.structures} structures of {frames}, {plan.structures * segment} in all), "
                                 f"else nothing is rescheduled; leave it out for one segment ({frames})",
                                 "--freenoise-window")
        if L.gamma == 0 and L.coherence_memory != LongConfig.coherence_memory:
            raise UsageError(f"--coherence-memory {L.coherence_memory} chooses what coherence guidance pulls towards; "
                             f"this run's --gamma is 0 (off): drop it or set --gamma above 0", "--coherence-memory")

    def _validate_checkpoints(self) -> None:
        """Path checks before any weights load: each role's path exists and is a model kind that role accepts
        (header and folder inspection by the diffusers backend); messages name the role, the path and the fix."""
        self._inspections = {}
        given = [p for p in (self.control, self.spatial, self.temporal) if p]
        if not given:
            if self.base:
                raise UsageError("--base only applies to checkpoints; give --control and --spatial too, or drop it",
                                 "--base")
            if self.image_mode != LATENT_FRAMES:
                raise UsageError(f"--image-mode {self.image_mode} applies to a Wan or Qwen-Image spatial expert "
                                 f"checkpoint; the embedded experts refine pixel frames with --embedded wan-pixel: "
                                 f"drop --image-mode", "--image-mode")
            return
        absent = [(role, path) for role, path in self.roles().items() if not os.path.exists(path)]
        if absent:   # a wrong path first: it is what the user typed; every one of them, to fix in one go
            said = "; ".join(f"the {role} expert's path {path} does not exist" for role, path in absent)
            raise UsageError(f"--{absent[0][0]}: {said}; give a local diffusers folder or .safetensors file",
                             f"--{absent[0][0]}")
        evaluated = EVALUATED_IN[self.chain.mode]
        missing = [f"--{role}" for role, given in (("control", self.control), ("spatial", self.spatial),
                                                   ("temporal", self.temporal)) if not given and
                   (role == "control" or role in evaluated)]
        if missing:
            raise UsageError(f"{' and '.join(missing)} missing: real checkpoints need --control and --spatial, and "
                             "--temporal unless --mode standard (--mode temporal: --control and --temporal); give "
                             "none of them to use the embedded default", missing[0])
        for role, given, alone in (("temporal", self.temporal, "the spatial expert refines alone"),
                                   ("spatial", self.spatial, "the temporal expert refines alone")):
            if given and role not in evaluated:   # it would be inspected, loaded, unused
                sweep = "" if _SPELLING.get() == "cli" else (" (experts= loaded with it still serve the request "
                                                             "without it: a sweep over modes loads once)")
                raise UsageError(f"--{role} is not evaluated by --mode {self.chain.mode} ({alone}): drop it{sweep}, or "
                                 f"use --mode coordinated", f"--{role}")
        if self.base and not os.path.isdir(self.base):
            what = "does not exist" if not os.path.exists(self.base) else "is not a folder"
            raise UsageError(f"--base: {self.base} {what}; give the local diffusers pipeline folder (SD 1.5, or SDXL "
                             "for an SDXL single file) that supplies the configs, tokenizer and scheduler", "--base")
        try:
            with interrupts_held():   # Ctrl-C while diffusers imports: raised once it is in (errors.py)
                from .diffusers_backend import missing_packages_said, preflight
        except ImportError as e:
            raise UsageError(f"checkpoints need the diffusers extra ({e}): pip install -r "
                             f"requirements-diffusers.txt") from None
        missing = missing_packages_said()
        if missing:   # before the headers are read: whatever they say, nothing loads without these
            option = f"--{next(iter(self.roles()))}"
            raise UsageError(f"{option}: {missing}", option)
        try:  # configs and safetensors headers only: no weights load
            self._inspections = preflight(self.control, self.spatial, self.temporal, self.base,
                                          image_mode=self.image_mode)
        except (ValueError, OSError) as e:
            role = getattr(e, "role", None)
            option = f"--{role}" if role else "--control"
            message = from_the_backend(str(e))
            # an expert's line names its role and path (a role "base" error names base itself)
            if role in ("control", "spatial", "temporal") and not message.startswith(f"{role} expert"):
                message = f"{role} expert: {message}"
            raise UsageError(f"{option}: {message}" if role else message, option) from None
        except Exception as e:  # a header or config that cannot be parsed at all
            role = getattr(e, "role", "")
            raise UsageError(f"--{role}: cannot be read ({type(e).__name__}: {e}); the file may be truncated or "
                             f"corrupt: download or convert it again", f"--{role}") from None
        spatial = self._inspections.get("spatial")
        if self.image_mode != LATENT_FRAMES and (spatial is None or spatial.facts.get("image_mode") is None):
            which = "this run has none" if spatial is None else (f"the spatial expert {self.spatial} is not one (its "
                                                                 f"own latent space holds every frame already)")
            raise UsageError(f"--image-mode {self.image_mode} applies to a Wan or Qwen-Image spatial expert, an image "
                             f"model on Wan's video latents (4 frames in a latent frame); {which}: drop --image-mode",
                             "--image-mode")

    def roles(self) -> dict:
        return {role: path for role, path in
                (("control", self.control), ("spatial", self.spatial), ("temporal", self.temporal)) if path}

    def _validate_schedules(self) -> None:
        """T_e and the control steps against every expert's schedule, from the schedules alone (no weights)."""
        schedules = expert_schedules(self)
        c = self.chain
        extraction = "temporal" if c.mode == TEMPORAL else "spatial"
        same_index = c.mode == ALTERNATE or (c.mode == COORDINATED and c.matching in (AUTO, SAME_INDEX))
        roles = [extraction] + (["temporal"] if same_index else [])
        for role in roles:
            if role in schedules:
                try:   # (named once, as the option: "--te: te (T_e)=5000 lies ..." said it twice)
                    schedules[role].check_te(c.te, "--te", owner=f"the {role} expert's schedule")
                except ValueError as e:
                    raise UsageError(str(e), "--te") from None
        problem = clean_end_problem(c, {role: schedules.get(role) for role in roles})
        if problem:
            option = "--refine-spacing" if c.refine_spacing == "linspace" else "--refine-steps"
            raise UsageError(f"{option}: {problem}", option)
        if "control" in schedules and c.control_steps > schedules["control"].num_timesteps:
            raise UsageError(f"--control-steps ({c.control_steps}) exceeds the control expert's "
                             f"{schedules['control'].num_timesteps} timesteps", "--control-steps")
        if "control" in schedules:
            try:
                control_timesteps(schedules["control"], c.control_steps, c.control_sampler, c.control_spacing)
            except ValueError as e:
                raise UsageError(f"--control-spacing: {e}", "--control-spacing") from None

    def stored_setting(self, name: str):
        """The value of setting ``name`` the interrupted run in ``out`` stored, else None."""
        from .resume import ResumeStore

        try:
            return ResumeStore(self.out, {}).info().get("settings", {}).get(name)
        except (OSError, ValueError, AttributeError):
            return None

    def resume_store(self):
        """The resume folder of ``out``, for this run's settings (named by their options in its messages)."""
        from .resume import ResumeStore

        return ResumeStore(self.out, self.run_settings(), ADDED_SETTINGS, RESUME_NAMES, SETTLED_BY_EXPERTS,
                           canonical_settings, {"save_frames": self.save_frames})

    def _validate_resume(self) -> None:
        """--resume needs the folder's interrupted run and its settings; any other run into that folder (a long
        run or a single clip) is refused, so that the interrupted run's windows are not lost."""
        from .resume import RESUME_FOLDER, ResumeStore

        # (a completed resume removes that folder whole, and a run's files with it; also reached through a link)
        parts = os.path.realpath(self.out).split(os.sep)
        if RESUME_FOLDER in parts:
            run = os.sep.join(parts[:parts.index(RESUME_FOLDER)]) or os.sep
            if not os.path.isdir(os.path.join(run, RESUME_FOLDER)):   # (no run interrupted there: the name alone)
                raise UsageError(f"--out: {self.out} is inside a folder named {RESUME_FOLDER}, where a ConFiner-Long "
                                 f"run in {run} would keep its state and delete it when it completes; choose "
                                 f"another --out", "--out")
            busy = ResumeStore(run, {}).working_process()
            if busy is not None:
                raise UsageError(f"--out: {self.out} is inside the state of the run working in {run} (process "
                                 f"{busy}), which deletes it when it completes; choose another --out", "--out")
            if self.resume:
                raise UsageError(f"--out: {self.out} is inside the kept state of the interrupted run in {run}: "
                                 f"continue that run with --out {run} --resume", "--out")
            raise UsageError(f"--out: {self.out} is inside the kept state of the interrupted run in {run}, which its "
                             f"--resume deletes when it completes; write elsewhere, or continue that run with --out "
                             f"{run} --resume", "--out")
        store = self.resume_store()
        busy = store.working_process()
        if busy is not None:   # its folder is in use: resuming or starting over there would break both runs
            raise UsageError(f"--out: a run is in progress in {self.out} (process {busy}); wait for it to finish, or "
                             f"choose another --out (if process {busy} is no ConFiner run, delete "
                             f"{store.owner_file})", "--out")
        if self.resume and not store.exists():
            held = (f"holds no interrupted ConFiner-Long run (no {os.path.basename(store.folder)} folder in it)"
                    if os.path.isdir(self.out) else "does not exist, so holds no interrupted ConFiner-Long run")
            raise UsageError(f"--resume: {self.out} {held}; run without --resume", "--resume")
        if self.resume:
            info = store.check()
            if info.get("outputs", {}).get("save_frames") and not self.save_frames:   # (an output, not a setting)
                warn_doubtful(spelled("--resume: the interrupted run was started with --save-frames, and this resume "
                                      "writes no frames.npy: add --save-frames to write it"))
        elif store.exists():
            try:
                info = store.info()
                done = f"{info.get('next_window', '?')} of {info.get('windows', '?')}"
            except (OSError, ValueError):
                done = "some"
            raise UsageError(f"--out: {self.out} holds an interrupted ConFiner-Long run ({done} windows done); "
                             f"continue it with --resume (and its settings), write elsewhere, or delete "
                             f"{store.folder} to start over", "--out")

    def outputs(self) -> tuple:
        """The files the run writes in ``out``."""
        return OUTPUTS + ((FRAMES_FILE,) if self.save_frames else ())

    def run_settings(self) -> dict:
        """Every setting that changes the result (what a resumed run must share with the interrupted one)."""
        settings = self.fields()
        for k in ("out", "resume", "compile_dir", "save_frames"):  # where things go, not what they are
            settings.pop(k)
        return settings

    def fields(self) -> dict:
        """The request's fields as a dict (asdict's), without what validate() keeps for itself."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


#: diffusers pipelines' argument names -> this request's field for the same setting (a trial wrote num_frames=8 and
#: met the dataclass's bare "unexpected keyword argument")
DIFFUSERS_NAMES = {"num_frames": "frames", "guidance_scale": "refine_cfg", "num_inference_steps": "chain.refine_steps",
                   "strength": "chain.te", "generator": "seed", "output_dir": "out", "torch_dtype": "dtype"}


#: a ChainConfig's or LongConfig's setting given to the request (``te=100``) -> its path there (``chain.te``)
NESTED_NAMES = {f.name: f"{part}.{f.name}" for part, config in (("long", LongConfig), ("chain", ChainConfig))
                for f in dataclass_fields(config)}
named_settings(GenerateRequest, lambda name: DIFFUSERS_NAMES.get(name) or NESTED_NAMES.get(name))


def too_many_frames(e: TooManyFrames, long: bool) -> UsageError:
    """An expert's longest clip exceeded, as the option that sets the clip (a segment of a long video, or the
    video) and the value to use."""
    option = "--segment-length" if long else "--frames"
    fix = (f"--segment-length {e.limit} or fewer" if long else
           f"--frames {e.limit} or fewer, or --segment-length {e.limit} or fewer to make them ConFiner-Long segments")
    return UsageError(f"{option}: the {e.role} expert {e.name!r} handles at most {e.limit} frames at once but "
                      f"{e.asked} were asked; use {fix}", option)


def refining_role(mode: str) -> str:
    return "temporal" if mode == TEMPORAL else "spatial"


#: what crosses each hand-off between latent spaces, and its VAE calls: the structure once (to the refining expert),
#: the clean estimate at every coordinated step (spatial to temporal and back)
CROSSINGS = {"control": ("->", "the structure: 2 VAE calls"),
             "spatial": ("<->", "the clean estimate over and back: 4 VAE calls a step")}


def bridged_hand_offs(spaces: dict, mode: str) -> list[tuple[str, str]]:
    """The (source, target) roles of this run's hand-offs between experts of different latent spaces (``spaces``:
    role -> LatentSpace), each through the two VAEs."""
    pairs = [("control", refining_role(mode))] + ([("spatial", "temporal")] if mode == COORDINATED else [])
    return [(a, b) for a, b in pairs if a in spaces and b in spaces and spaces[a] != spaces[b]]


def bridges(spaces: dict, mode: str) -> list[str]:
    """The bridged hand-offs in words, as ``report.json`` lists them ("control in Wan 2.1 latents -> spatial in SD 1.5
    latents": the spaces, which are not the experts' models, "temporal SD 1.5" was a ModelScope expert)."""
    return [f"{a} in {spaces[a].latents} {CROSSINGS[a][0]} {b} in {spaces[b].latents}"
            for a, b in bridged_hand_offs(spaces, mode)]


def bridge_line(spaces: dict, mode: str) -> str | None:
    """What crosses between latent spaces, and its VAE calls: the command line says it before sampling (it took
    most of a tiny run's seconds, and a report's 20 or 22 VAE calls had to be worked out)."""
    crossings = [f"{bridge} ({CROSSINGS[a][1]})"
                 for (a, _), bridge in zip(bridged_hand_offs(spaces, mode), bridges(spaces, mode))]
    return "bridged through the VAEs: " + "; ".join(crossings) if crossings else None


def natural_frames(spaces) -> int:
    """The clip length the experts are made for: 16 frames, rounded up to the next count every space holds
    (17 for causal 4k+1 video latents such as Wan's)."""
    for frames in range(NATURAL_FRAMES, NATURAL_FRAMES + 1000):   # (spaces' rules k*n + 1 meet within their lcm:
        if all(s.valid_pixel_frames(frames) for s in spaces):      # bounded, so a broken rule fails, never hangs)
            return frames
    raise ValueError(f"no clip length from {NATURAL_FRAMES} frames on suits every latent space of these experts "
                     f"({', '.join(s.title for s in spaces)}): give the frame count")


def video_fps(inspections: dict) -> float:
    """The output's frame rate: the temporal expert's video rate, else the control expert's (the video experts';
    an image model has none), else :data:`DEFAULT_FPS` (the embedded experts)."""
    for role in ("temporal", "control"):
        fps = inspections[role].fps if role in inspections else None
        if fps is not None:
            return fps
    return DEFAULT_FPS


def expert_schedules(req: GenerateRequest) -> dict:
    """role -> NoiseSchedule, known without loading weights: the embedded experts' own, or the schedules the loaded
    experts will have, from the checkpoints' inspection (:meth:`~.diffusers_backend.families.base.Family.schedule`;
    reading the scheduler configs here settled a Wan folder without one on the spatial folder's SD table)."""
    if req.embedded:
        from .embedded.experts import embedded_experts

        return {role: e.schedule for role, e in embedded_experts(req.embedded_preset).items()}
    return {role: inspection.schedule for role, inspection in req._inspections.items()}


def plan_line(plan: SegmentPlan, chain: ChainConfig) -> str:
    """What a video longer than one segment becomes (ConFiner-Long), and what a last window cut short costs: it is
    refined at full length for the frames it shows."""
    windows, structures = len(plan.windows), plan.structures
    line = (f"ConFiner-Long: {plan.frames} frames in {windows} window{'s' * (windows > 1)} of {plan.segment_length} "
            f"on {structures} structure{'s' * (structures > 1)} ({expected_evaluations(chain, plan)} expert "
            f"evaluations)")
    whole = plan.whole_window_frames()
    if whole:
        last = plan.windows[-1].frames
        line += (f"; the last window is refined whole for its {last} frame{'s' * (last > 1)}: --frames "
                 f"{' or '.join(map(str, whole))} would use every refined frame")
    return line


def expected_evaluations(chain: ChainConfig, plan: SegmentPlan | None = None) -> int:
    """Expert evaluations of a run: a long run's plan's (:meth:`SegmentPlan.expected_evaluations`), or one clip's,
    the control steps plus one refinement's."""
    return plan.expected_evaluations(chain) if plan is not None else chain.control_steps + refine_evaluations(chain)


# ----------------------------------------------------------------------------------------------------------------
# Experts

@dataclass
class Backend:
    experts: dict
    description: str


def decode_frames(latent: torch.Tensor, codec: Codec) -> torch.Tensor:
    """A latent in ``codec``'s space (an expert's VAE) -> uint8 frames [B, F, H, W, 3] in host memory."""
    if not callable(getattr(codec, "decode", None)):
        raise TypeError(f"decode_frames needs the VAE of the latent's space, a Codec (an expert's .codec, e.g. of an "
                        f"expert load_experts loaded), got {codec!r}")
    return device_to_host(to_uint8(codec.decode(latent)))


def load_backend(req: GenerateRequest, experts=None, show_progress: bool = True) -> Backend:
    """The request's experts: the embedded ones, the checkpoints it names loaded now (with diffusers' loading bars
    where ``show_progress``), or ``experts`` loaded before (:func:`load_request_experts`) when they are what the
    request would load."""
    if req.embedded:
        if experts is not None:
            raise UsageError("experts= are loaded checkpoints, and this request names none (the embedded default): "
                             "leave experts out, or give the request control, spatial and temporal", "experts")
        from .embedded.experts import PRESET_HELP, embedded_experts

        return Backend(embedded_experts(req.embedded_preset),
                       f"embedded default ({req.embedded_preset}: {PRESET_HELP[req.embedded_preset]}): exact "
                       f"posterior-mean experts over a procedural video world")
    if experts is None:
        experts = loaded_experts(req, show_progress)
    else:
        check_loaded_for(experts, req)
    return Backend({role: expert if role in req.roles() else None for role, expert in experts.experts.items()},
                   "diffusers checkpoints")


def load_arguments(req: GenerateRequest) -> dict:
    """The arguments of :func:`~.diffusers_backend.load_experts` for a checkpoint request."""
    from .diffusers_backend.speed import PRESETS

    speed = PRESETS[req.speed]
    if req.compile_dir:
        speed = replace(speed, compile_dir=req.compile_dir)
    return {"control": req.control, "spatial": req.spatial, "temporal": req.temporal, "base": req.base,
            "device": req.device, "dtype": None if req.dtype == "auto" else getattr(torch, req.dtype),
            "speed": speed, "options": {"image_mode": req.image_mode}}


def load_request_experts(req: GenerateRequest, show_progress: bool = True):
    """The experts a checkpoint request loads, loaded once: ``generate(request, experts=...)`` then runs any
    request that loads the same ones (the chain's settings, prompt, seed, frames, output may vary) without loading
    them again, as a sweep over settings wants. Checked as :func:`generate` checks the request first.
    ``show_progress``: diffusers' and transformers' loading bars."""
    checked = replace(req)
    with caller_spelling():
        checked.validate()
        if checked.embedded:
            raise UsageError("the request names no checkpoints (the embedded default): there is nothing to load",
                             "req")
        return loaded_experts(checked, show_progress)


def loaded_experts(req: GenerateRequest, show_progress: bool = True):
    """A checkpoint request's experts, loaded (a LoadedExperts)."""
    from .diffusers_backend import load_experts

    try:
        return load_experts(**load_arguments(req), show_progress=show_progress)
    except (ValueError, FileNotFoundError) as e:  # unusable or mismatched checkpoints: named by role and path
        raise UsageError(from_the_backend(str(e)), "--spatial") from e


def check_loaded_first(experts, req: GenerateRequest) -> None:
    """:func:`check_loaded_for` before the request's own checks, which judge the checkpoints it names: experts= loaded
    for another request were refused only after a frame count had been judged by an expert that never runs here (a
    trial's frames=8, told of Wan's 4k+1 frames). Settings too broken to compare are left to ``validate()``."""
    if experts is None or req.embedded:
        return
    try:
        check_loaded_for(experts, req)
    except UsageError:
        raise
    except Exception:   # (e.g. an unknown speed preset: validate() names it)
        return


def check_loaded_for(experts, req: GenerateRequest) -> None:
    """``experts`` (a LoadedExperts) must be what ``req`` loads: the same paths, device, speed and options, as
    :func:`load_experts` recorded them. Another checkpoint or device would run, and be reported, as this one."""
    asked = load_arguments(req)
    had = getattr(experts, "arguments", None)
    if not had:   # (a LoadedExperts built by hand records no load to check against the request)
        raise UsageError(f"experts= must come from load_request_experts(request) or load_experts, got "
                         f"{type(experts).__name__}" + (" built by hand" if had is not None else "") +
                         "; experts of your own run through run_chain or generate_long (README 'Models you have "
                         "already loaded')", "experts")
    for name, value in asked.items():
        if name in ("spatial", "temporal") and value is None:
            continue   # loaded and left unused: a sweep over --mode (standard, the ablation) keeps its experts
        if normalised(name, value, asked["device"]) != normalised(name, had.get(name), had.get("device")):
            # (a setting of the request's own: asking for what they were loaded with is the simpler way)
            named = shown(name, had.get(name))   # (a preset's name or a dtype; not custom settings' repr)
            ask = f"ask for {name}={named} in the request, " if name in ("speed", "dtype") and \
                named.startswith("'") else ""
            raise UsageError(f"experts= were loaded with {name}={named}, and this request loads "
                             f"{name}={shown(name, value)}: {ask}load its own with load_request_experts(request), or "
                             f"leave experts out", "experts")
    # an expert left unused may have lent its VAE to the others (one serves a latent space): this request's own
    # load would take another's, and its video would differ
    from .diffusers_backend.families.registry import vae_providers

    inspections = getattr(experts, "inspections", {})
    kept = {role: ins for role, ins in inspections.items() if role in req.roles()}
    if kept.keys() != inspections.keys():
        own, loaded = vae_providers(kept), vae_providers(inspections)
        for space, provider in own.items():
            if space in loaded and loaded[space].path != provider.path:
                raise UsageError(f"experts= decode {space.latents} with the {loaded[space].role} expert's VAE "
                                 f"({loaded[space].path}), and this request, without that expert, would load the "
                                 f"{provider.role} expert's ({provider.path}): load its own with "
                                 f"load_request_experts(request), or leave experts out", "experts")


def normalised(name: str, value, device):
    """A load argument as compared: a path resolved, a device as torch names it (cuda -> cuda:0 is not done), a
    dtype as it loads (None, the request's 'auto': the device's default, float32 on the CPU), and what
    :func:`load_experts` leaves out as what it then loads (no speed settings: eager; no image mode: latent frames),
    so experts it loaded with its defaults serve a request of the defaults."""
    if name == "dtype":
        from .diffusers_backend.families.registry import default_dtype

        return value if value is not None else default_dtype(device)
    if name == "speed":
        from .diffusers_backend.speed import EAGER

        return EAGER if value is None else value
    if name == "options":
        return {"image_mode": LATENT_FRAMES, **(value or {})}
    if value is None:
        return None
    if name in ("control", "spatial", "temporal", "base"):
        return str(Path(value).resolve())
    if name == "device":
        return str(torch.device(value))
    return value


def shown(name: str, value) -> str:
    """A load argument as a request spells it (``dtype='bfloat16'``, ``dtype='auto'``; torch printed torch.bfloat16)."""
    if name == "dtype":
        return repr("auto" if value is None else str(value).removeprefix("torch."))
    if name == "speed" and hasattr(value, "compile_dir"):   # the preset's name (its repr: 700 characters)
        from .diffusers_backend.speed import PRESETS

        named = next((n for n, preset in PRESETS.items() if replace(preset, compile_dir=value.compile_dir) == value),
                     None)
        if named is not None:
            return repr(named) + (f" (compile_dir={value.compile_dir!r})" if value.compile_dir else "")
    return repr(value)


def refine_guidance(backend: Backend, req: GenerateRequest) -> dict:
    """Each refining expert's guidance scale: its own option (``--spatial-cfg``, ``--temporal-cfg``), else
    ``--cfg``, else the expert's own default (FLUX.1-dev 3.5 as its distilled guidance, Wan 5, SD 1.5 7.5)."""
    def scale(role: str, expert) -> float:
        for given in (getattr(req, f"{role}_cfg"), req.refine_cfg):
            if given is not None:
                return given
        return expert.default_guidance

    return {role: scale(role, expert) for role in ("spatial", "temporal")
            if (expert := backend.experts.get(role)) is not None}


def reads_negative(bound: dict) -> bool:
    """Whether an expert of ``bound`` (role -> Denoiser or None) reads the negative prompt (classifier-free guidance
    above 1; FLUX.1-dev takes its guidance as an input and reads none)."""
    return any(d.expert.uses_negative(d.guidance_scale) for d in bound.values() if d is not None)


def bind_experts(backend: Backend, req: GenerateRequest, log: EvaluationLog, prompt: str) -> dict:
    """The request's experts bound as :func:`~confiner_core.experts.bind_chain` binds them, at the scales of
    :func:`refine_guidance`."""
    cfg = refine_guidance(backend, req)
    bound = bind_chain(backend.experts, prompt, req.negative_prompt, log=log, control_cfg=req.control_cfg,
                       spatial_cfg=cfg.get("spatial"), temporal_cfg=cfg.get("temporal"))
    if req.negative_prompt.strip() and not reads_negative(bound):
        warn_doubtful(spelled("--negative-prompt changes nothing here: no expert of this run uses classifier-free "
                              "guidance (each is at cfg 1, or takes its guidance as an input, as FLUX.1-dev)"))
    return bound


CPU_SIZE_FACTOR = 16   # times the pixels of 256x256 at 16 frames, from which a CPU run is worth a word


def cpu_size_note(req: GenerateRequest) -> str | None:
    """A line for a CPU run far larger than the default one, or None. (A trial's 8192x8192 sat at 0 of 19
    evaluations for minutes with no word of its cost: the progress bar has nothing to say before the first.)"""
    default = GenerateRequest.height * GenerateRequest.width * 16
    factor = req.height * req.width * req.frames / default
    if factor < CPU_SIZE_FACTOR:
        return None
    gpu = "--device cuda" if _SPELLING.get() == "cli" else "device='cuda'"
    # (at least: time grows with the frames and faster than the pixels of a frame, as attention does)
    return (f"{req.width}x{req.height} at {req.frames} frames on the CPU is {factor:.0f} times the pixels of 256x256 "
            f"at 16 frames (the default size): expect at least {factor:.0f} times that run's time; a GPU ({gpu}) "
            f"suits this size, or lower --height, --width or --frames")


def latent_shape(req: GenerateRequest, control, frames: int) -> tuple:
    """The initial noise of a clip of ``frames`` frames, in the control expert's latent space."""
    return control.expert.latent_space.latent_shape(1, frames, req.height, req.width)


def compile_note(req: GenerateRequest) -> str | None:
    """What the progress bar says until the first step is done, for the presets that compile: their first steps
    compile every block at its shapes (minutes: 2-3 on an H200 for SD 1.5 at 512x512x16), or load them from
    --compile-dir."""
    if req.speed not in COMPILED_SPEEDS:
        return None
    from .diffusers_backend.precompiled import kept_blocks  # loaded with the experts already

    if req.compile_dir and kept_blocks(req.compile_dir):   # (those of other code or shapes are compiled again)
        return f"the first steps load the blocks kept in {req.compile_dir}, or compile those it lacks"
    keep = "kept in --compile-dir for later runs" if req.compile_dir else "--compile-dir DIR keeps them for later runs"
    return f"the first steps compile every block (minutes; {keep})"


def compiled_blocks(req: GenerateRequest) -> dict | None:
    """What ``--compile-dir`` did in this process: blocks compiled and kept, loaded from the folder, compiled the
    ordinary way (they could not be saved), and files found there but unreadable (another PyTorch). None where no
    folder was given or nothing is compiled ahead of time."""
    if not req.compile_dir or req.speed not in COMPILED_SPEEDS:
        return None
    from .diffusers_backend.precompiled import aot_available
    from .diffusers_backend.speed import settings_store

    if not aot_available():
        return None
    said = settings_store(load_arguments(req)["speed"]).summary()   # the settings the experts were loaded with
    return {"compiled": said["compiled"], "loaded": said["loaded"], "compiled_unkept": len(said["fallbacks"]),
            "unreadable": len(said["unloadable"])}


def progress_callback(bar: tqdm | None, log: EvaluationLog, user: Callable[[dict], None] | None = None):
    """The bar at the run's expert evaluations after each step (the unit of every other count: the report, the
    final line, an interrupt's message): a control step is one, a coordinated refinement step three; while VAE
    calls between the experts run, it says so in place of the step's timestep. Then the caller's own ``user``
    callback, if any, with the step's dict."""
    def callback(info: dict) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{info['stage']} t={info['timestep']:.4g}")   # in T_e's units (flow: 1000 sigma)
            bar.update(sum(log.evaluations.values()) - bar.n)
        if user is not None:
            user(info)
    if bar is not None and not bar.disable:   # (a closed bar is disabled: the decode after it says nothing there)
        log.on_vae = lambda stage: bar.disable or bar.set_postfix_str(
            f"{stage} · VAE between the experts ({sum(log.vae_calls.values())} calls so far)")
    return callback


# ----------------------------------------------------------------------------------------------------------------
# The run

def generate(req: GenerateRequest, show_progress: bool = True,
             announce: Callable[[str], None] | None = None, experts: Mapping | None = None,
             callback: Callable[[dict], None] | None = None) -> dict | None:
    """Run the request and write ``video.mp4``, ``frames.png`` and ``report.json`` under ``req.out``; returns the
    report. ``announce(text)`` receives the resolved prompt schedule before sampling (the command line prints it).
    ``callback(info)`` is called after every control and refinement step, as :func:`~confiner_core.chain.run_chain`'s
    (intermediate latents: ``info["x"]``, ``info["denoised"]``; in ConFiner-Long also the ``structure`` or
    ``window``).
    ``experts``: the request's checkpoints loaded before, by :func:`load_request_experts` (refused where they are
    not what the request loads): a sweep over the chain's settings loads them once.

    Raises UsageError before any work for bad input, NonFiniteError for NaN/inf during sampling and Interrupted
    on Ctrl-C; in every such case the previous outputs in ``req.out`` are left as they were.

    Under torchrun (``torchrun --nproc-per-node N -m confiner_core generate ...``) every process calls this: a
    ConFiner-Long video is spread over them (:mod:`confiner_core.distributed`), rank 0 writes the files and
    returns the report, the others return None; a failure anywhere stops every process
    (:class:`~confiner_core.errors.RankFailed` on the others). ``req`` itself is left as it was: the run settles
    its defaults (frames, fps, T_e...) in a copy, so one request can be varied for several runs; the report holds
    the settled values, ``req.validate()`` settles them in ``req``."""
    if not isinstance(req, GenerateRequest):
        raise UsageError(f"generate() takes a GenerateRequest (from confiner_core.generate), got "
                         f"{type(req).__name__}: GenerateRequest(frames=16, ...)", "req")
    with distributed.session() as ranks, caller_spelling():
        if experts is not None and ranks.world > 1:
            raise UsageError("experts= are loaded in this process, and a run over several processes loads them in "
                             "each: leave experts out under torchrun", "experts")
        return _generate_on(ranks, replace(req), show_progress and ranks.rank == 0,
                            announce if ranks.rank == 0 else None, experts, callback)


def _generate_on(ranks, req: GenerateRequest, show_progress: bool, announce, experts=None,
                 callback=None) -> dict | None:
    ranks.agree(lambda: (check_loaded_first(experts, req), req.validate(), ranks.device_for(req.device)))
    schedule = req.prompt_schedule()
    plan = req.plan()
    lead = ranks.rank == 0
    if ranks.world > 1 and plan is None:
        if not lead:
            return None
        if announce is not None:
            announce(f"a single clip ({req.frames} frames) is not spread over processes: rank 0 makes it alone")
    bridged = bridge_line(req.spaces(), req.chain.mode) if announce is not None else None
    if bridged:
        announce(bridged)
    if lead and not req.embedded:   # a script gets it as a warning, as the command line as a line
        from .diffusers_backend import borrowed_vaes

        for line in borrowed_vaes(req._inspections):
            (announce or warn_doubtful)(line)
    if announce is not None and plan is not None:
        announce(plan_line(plan, req.chain))
    unread = unread_words_line(req) if lead and req.embedded else None
    if unread:   # (a script's "a corgi running on a beach" drew a red ball, said only in report.json)
        (announce or warn_doubtful)(unread)
    if announce is not None and schedule.scheduled:
        announce(f"prompt schedule ({req.frames} frames at {req.fps:g} fps):\n{render_schedule(schedule)}")
        moved = render_applied_schedule(plan, schedule) if plan is not None and schedule.travels else None
        if moved:
            announce(moved)   # with the entries left unused
    if announce is None and lead and plan is not None and schedule.travels:   # a script: as a warning
        unused = unused_entries_text(plan, schedule)
        if unused:
            warn_doubtful(unused.removeprefix("warning: "))
    log = EvaluationLog()
    store = None
    if plan is not None:
        store = req.resume_store()
    if not lead:   # a worker: its share of the windows, no files
        try:
            _generate(req, schedule, plan, log, store, False, ranks, callback=callback)
        except KeyboardInterrupt:
            raise (ranks.peer_failure() or Interrupted(sum(log.evaluations.values()),
                                                       expected_evaluations(req.chain, plan))) from None
        return None
    created = not os.path.exists(req.out)
    os.makedirs(req.out, exist_ok=True)
    progress = {"done": None}   # expert evaluations of finished windows, when several processes share the work
    try:
        return _generate(req, schedule, plan, log, store, show_progress, ranks, progress, experts, callback)
    except BaseException as e:
        ranks.stopping()
        # another process's failure stopped this one: the watchdog's KeyboardInterrupt, or a broken channel
        failure = ranks.peer_failure() if isinstance(e, KeyboardInterrupt) else e if isinstance(e, RankFailed) \
            else None
        kept = ""
        if isinstance(e, KeyboardInterrupt) and failure is None and progress.get("written"):
            raise Interrupted(sum(log.evaluations.values()), expected_evaluations(req.chain, plan),
                              written=progress["written"]) from None
        if isinstance(e, KeyboardInterrupt) and failure is None:
            if store is not None and store.exists():
                kept = spelled(f"{windows_kept(store, plan)}: rerun with --resume")
            elif store is not None:
                store.clear()
            shared = progress["done"] is not None   # (several processes: the finished windows' evaluations)
            done = progress["done"] if shared else sum(log.evaluations.values())
            raise Interrupted(done, expected_evaluations(req.chain, plan), kept, at_least=shared) from None
        # Finished windows stay resumable after an interrupt (above) and any failure but those of the settings
        # themselves, which a rerun with them would meet again (refused, NaN; another process's likewise): a failure
        # to write (disk full), running out of memory, an exception from a script's callback, a crash
        keep = store is not None and store.exists() and not isinstance(e, (UsageError, NonFiniteError)) and \
            (failure is None or failure.resumable)
        if req.resume and isinstance(e, UsageError):   # refused before a window ran: the state waits for its rerun
            raise
        if store is not None and not keep:
            store.clear()
        if failure is None:
            if isinstance(e, NonFiniteError):   # where it happened and why; here also that the outputs are intact
                raise NonFiniteError(f"{with_dtype_option(str(e))}; nothing was written") from None
            if keep and isinstance(e, OSError):   # a failure to write (e.g. a full disk)
                raise OutputError(spelled(f"{e}; {windows_kept(store, plan)}: rerun with --resume once it can "
                                          f"write")) from e
            if out_of_memory(e) and hasattr(e, "add_note"):   # (Python 3.11+) the options that size the work
                e.add_note(spelled(memory_note(req, plan)))
            if keep and hasattr(e, "add_note"):
                e.add_note(spelled(f"{windows_kept(store, plan)} in {store.folder}: rerun with --resume once "
                                   f"this is fixed, or delete that folder to start over"))
            raise
        if keep:
            kept = spelled(f" ({windows_kept(store, plan)}: rerun with --resume)")
        raise RankFailed(f"{failure}; {'no video' if kept else 'nothing'} written{kept}", failure.code,
                         failure.resumable, failure.origin) from None
    finally:
        if created and not os.listdir(req.out):
            os.rmdir(req.out)


def out_of_memory(e: BaseException) -> bool:
    """torch's out-of-memory error of an accelerator, or a host allocation that failed (a RuntimeError on the CPU:
    "[enforce fail at alloc_cpu.cpp] ... you tried to allocate ...")."""
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and re.search(r"out of memory|tried to allocate|can't allocate memory", str(e),
                                                  re.IGNORECASE) is not None)


def memory_note(req: GenerateRequest, plan: SegmentPlan | None) -> str:
    """What sizes a run's memory, said with its options (an out-of-memory error named none)."""
    clip = plan.segment_length if plan is not None else req.frames
    return (f"out of memory on {req.device} at --height {req.height} --width {req.width} with {clip} frames at once"
            f"{' (a segment of the long video)' if plan is not None else ''}: lower --height and --width, or "
            f"{'--segment-length' if plan is not None else '--frames'}")


def _generate(req: GenerateRequest, schedule: PromptSchedule, plan: SegmentPlan | None, log: EvaluationLog,
              store, show_progress: bool, ranks=distributed.SINGLE, progress: dict | None = None,
              experts=None, callback=None) -> dict | None:
    t_start = time.perf_counter()
    device = ranks.device_for(req.device)
    backend = load_backend(replace(req, device=device), experts, show_progress)
    d = bind_experts(backend, req, log, schedule.first)
    # "auto" matching decided by the loaded experts where their schedules were unknown before loading (single
    # files without a scheduler config): the report records the choice the run makes
    req.chain = settled(req.chain, d["spatial"], d["temporal"])
    refiner = refining_denoiser(d["spatial"], d["temporal"], req.chain.mode)

    def check_experts():  # the experts against each other and the settings, before the first evaluation
        try:
            validate_chain(d["control"], d["spatial"], d["temporal"],
                           latent_shape(req, d["control"], plan.segment_length if plan else req.frames), req.chain)
        except TooManyFrames as e:
            raise too_many_frames(e, plan is not None) from None
        except ValueError as e:
            raise UsageError(as_options(str(e))) from None
        if store is not None:   # what the experts are given, against the interrupted run's on --resume
            store.settle({**{f"the {role} expert's cfg": scale for role, scale in refine_guidance(backend, req).items()},
                          "the negative prompt": req.negative_prompt if reads_negative(d) else None}, req.resume)

    if plan is not None:
        ranks.agree(check_experts)   # every process that shares the work stops on the same UsageError
    else:
        check_experts()              # a single clip: rank 0 alone
    seconds = {"load": time.perf_counter() - t_start}

    def decode(latent: torch.Tensor, frames_kept: int | None = None) -> torch.Tensor:
        """A finished latent -> uint8 frames [F, H, W, 3] on the CPU (where it was refined). The checks that the
        latent is finite, and for a single clip that the refinement's last evaluation was (handed over to this
        stage), are read once the decode is queued behind them: the GPU goes from the last forward to the decode
        without waiting for the host."""
        t0 = time.perf_counter()
        finite = torch.isfinite(latent).all()
        with in_stage(log, "decode"):
            frames = decode_frames(latent, refiner.expert.codec)[0, :frames_kept]
        if not bool(finite):
            raise NonFiniteError("the final latent holds NaN or infinity")
        seconds["decode"] = seconds.get("decode", 0.0) + time.perf_counter() - t0
        return frames

    if ranks.rank != 0:
        ranks.connect(device)
        run_long(req, d, None, show_progress, plan, schedule, store, log, device, ranks, decode)
        return None
    if ranks.world > 1 and plan is not None:
        ranks.connect(device)
    stats = metrics.StreamingMetrics()
    with AtomicOutputs(req.out) as outputs:
        ranks.on_abort(outputs.discard)
        if not req.save_frames:   # an earlier run's frames.npy would pass for this run's
            outputs.drop(FRAMES_FILE)
        lossless = FramesFile(outputs.path(FRAMES_FILE), req.frames) if req.save_frames else contextlib.nullcontext()
        with VideoSink(outputs.path("video.mp4"), req.fps, req.frames) as sink, lossless as lossless:
            def write(frames: torch.Tensor) -> None:
                t0 = time.perf_counter()
                frames = frames.cpu().numpy()
                sink.write(frames)
                if lossless is not None:
                    lossless.write(frames)
                stats.add(frames)
                seconds["write"] = seconds.get("write", 0.0) + time.perf_counter() - t0

            extra = {}
            if plan is not None:
                extra = run_long(req, d, write, show_progress, plan, schedule, store, log, device, ranks, decode,
                                 progress, callback)
            else:
                generator = torch.Generator().manual_seed(req.seed)
                noise = randn(latent_shape(req, d["control"], req.frames), generator, device)
                with tqdm(total=expected_evaluations(req.chain), desc="ConFiner", unit=" evaluations",
                          disable=not show_progress, postfix=compile_note(req)) as bar, warned_already():
                    result = run_chain(d["control"], d["spatial"], d["temporal"], noise, req.chain, generator,
                                       progress_callback(bar, log, callback), hand_over=True)  # read by decode()
                seconds.update(result.seconds)
                write(decode(result.latent))
        write_png(outputs.path("frames.png"), contact_sheet(sink.sheet, numbers=sink.sheet_numbers))
        seconds["total"] = time.perf_counter() - t_start
        segments = extra.get("segment_plan", {})
        extra["metrics"] = metrics.strict_scores(
            stats.summary(segments.get("window_junctions"), segments.get("structure_junctions"),
                          segments.get("prompt_change_junctions", ())))
        report = build_report(req, backend, log, seconds, **extra)
        write_report(outputs.path("report.json"), report)
        # the files move into place and the resume store goes at once, as Ctrl-C sees it: an interrupt between two
        # moves left a trial's folder with this run's video beside the last run's report, and said "nothing
        # written"; one held until the end says the run finished (:class:`~.errors.Interrupted`)
        with interrupts_held():
            outputs.commit()
            if progress is not None:
                progress["written"] = req.out
            if store is not None:
                store.clear()
    return report


def run_long(req: GenerateRequest, d: dict, write, show_progress: bool, plan: SegmentPlan, schedule: PromptSchedule,
             store, log: EvaluationLog, device: str, ranks, decode, progress: dict | None = None,
             callback=None) -> dict:
    """ConFiner-Long: windows are decoded where they were refined and written by rank 0 as soon as they are final,
    and kept in the resume store with the loop state after each one. With ``req.resume`` the stored windows are
    decoded again and the loop continues from the stored state (whatever number of processes made them)."""
    b, c, _, h, w = latent_shape(req, d["control"], 1)
    frame_shape = (b, c, h, w)
    prompts = schedule if schedule.travels else None
    lead = ranks.rank == 0
    t0 = time.perf_counter()
    resume = None
    code = {**versions(), "confiner_core source": source_digest()}
    if req.resume:
        resume, _ = store.load_state()   # every rank reads it; rank 0 changes the folder only after the barrier
        ranks.barrier()
        threads = store.threads   # (the first process's: kept through every resume)
        if lead and threads != torch.get_num_threads() and torch.device(device).type == "cpu":
            # (a trial resumed a 2-thread run on 1 thread without a word; the report then said 1 for the whole video)
            warn_doubtful(spelled(f"--resume: the interrupted run used {threads} CPU threads and this one uses "
                                  f"{torch.get_num_threads()}: on the CPU its windows and this run's may round "
                                  f"differently (README, 'Same result'); set OMP_NUM_THREADS={threads} (or "
                                  f"torch.set_num_threads({threads})) to resume as it ran"))
        changed = code_changes(store.versions, code)
        if lead and changed:   # (the windows kept were made by the code before; this run's by this one)
            warn_doubtful(spelled(f"--resume: the interrupted run ran other code ({'; '.join(changed)}): this run's "
                                  f"windows may differ from the ones an uninterrupted run would have made"))
        if lead:
            store.claim()
            log.add_counts(resume.counts())
            finished = plan.windows[:resume.next_window]
            for window in finished:
                write(decode(store.window(window.index).to(device), window.frames))
    elif lead:
        store.start()

    def sink(latent: torch.Tensor, window, frames: torch.Tensor) -> None:
        write(frames)
        store.save_window(window.index, latent)

    store.versions = store.versions or code   # the first process's, kept through every resume (as its threads)
    store.processes = store.processes or (ranks.world if resume is None else None)   # (unknown for an older state)
    with tqdm(total=expected_evaluations(req.chain, plan), initial=sum(log.evaluations.values()),
              desc="ConFiner-Long", unit=" evaluations", disable=not show_progress, postfix=compile_note(req)) as bar:
        def window_done(state) -> None:
            store.save_state(state, len(plan.windows))
            if ranks.world > 1:  # progress from the finished windows' counts (the work is on other processes)
                done = sum(state.evaluations.values())
                bar.update(done - bar.n)
                progress["done"] = done

        with warned_already():
            final = generate_long(d["control"], d["spatial"], d["temporal"], plan, frame_shape, req.chain,
                                  req.long, req.seed, sink, prompts,
                                  progress_callback(bar if ranks.world == 1 else None, log, callback), device,
                                  resume=resume,
                                  on_window_done=window_done if lead else None,
                                  prepare=lambda latent, window: decode(latent, window.frames),
                                  ranks=ranks)
    if not lead:
        return {}
    if ranks.world > 1:   # the report counts every process's work: what the finished windows cost
        for name, counter in final.counts().items():
            setattr(log, name, counter)
    long = asdict(req.long)
    if req.long.noise_init == FREENOISE:   # the window and stride used, where the settings left them to the segment
        window, stride = freenoise_span(req.long, d["control"].expert.latent_space.latent_frames(plan.segment_length))
        long.update(freenoise_window=window, freenoise_stride=stride)
    extra = {"segment_plan": {**plan.as_dict(), "prompt_change_junctions":
                              prompt_change_junctions(plan, schedule) if prompts is not None else []},
             "long": long, "long_seconds": time.perf_counter() - t0, "processes": ranks.describe()}
    if prompts is not None:
        extra["prompt_schedule"] = [{"frames": [a, b], "prompt": p} for a, b, p in schedule.ranges()]
        extra["prompt_schedule_applied"] = [{"frames": [a, b], "prompt": p}
                                            for a, b, p in applied_schedule(plan, schedule).ranges()]
        extra["prompt_schedule_unused"] = [{"frames": [a, b], "prompt": p}
                                           for a, b, p in unused_entries(plan, schedule)]
        extra["prompt_schedule_layout_only"] = [{"frames": [a, b], "prompt": p}
                                                for a, b, p in layout_only_entries(plan, schedule)]
    if resume is not None:   # the report counts the video's evaluations; these were made before the resume
        extra["resumed_from_window"] = resume.next_window
        extra["evaluations_before_resume"] = sum(resume.evaluations.values())
        extra["cpu_threads_before_resume"] = store.threads   # (environment.cpu_threads is this process's)
        # ("processes" are this start's: a run begun on 2 processes and resumed on 1 said 1, nothing of the 2)
        extra["processes_before_resume"] = store.processes
    return extra


def windows_kept(store: ResumeStore, plan: SegmentPlan) -> str:
    """What an interrupted or failed ConFiner-Long run leaves for ``--resume``: its finished windows and the expert
    evaluations they hold (an unfinished window's or structure's are made again, so a resumed run counts fewer
    before the resume than the interruption said were done)."""
    info = store.info()
    return (f"{info.get('next_window')} of {len(plan.windows)} windows kept, with "
            f"{sum(info.get('evaluations', {}).values())} expert evaluations")


def report_elsewhere(req: GenerateRequest) -> tuple:
    """The request's fields a report's ``settings`` leave out: given top-level (``chain``; ``long``, for long runs
    only), or not read by this run (the embedded preset of a checkpoint run, the image mode and dtype of an embedded
    one)."""
    return ("chain", "long", *(("image_mode", "dtype") if req.embedded else ("embedded_preset",)))


def prompt_used(req: GenerateRequest) -> str | list:
    """The text the experts were given: the prompt (keys of a one-entry schedule dropped; the embedded world's
    default scene for an empty prompt), or the prompts of a travelling schedule some structure or window was given,
    in order (:func:`~confiner_core.long.given_entries`)."""
    schedule, plan = req.prompt_schedule(), req.plan()
    prompts = [entry.prompt for entry in schedule.entries]
    if len(prompts) > 1:
        return [prompts[i] for i in given_entries(plan, schedule)] if plan is not None else prompts
    return prompts[0] if prompts and prompts[0] else (DEFAULT_PROMPT if req.embedded else "")


def speed_used(req: GenerateRequest) -> str:
    """The speed preset the run takes: ``max`` without a CUDA device is ``fast`` (CUDA graphs need one)."""
    return "fast" if req.speed == "max" and not str(req.device).startswith("cuda") else req.speed


def versions() -> dict:
    """The versions of the code a run uses: this library, Python, PyTorch, and diffusers and transformers where the
    run imported them."""
    said = {"confiner_core": __version__, "python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("diffusers", "transformers"):
        module = sys.modules.get(name)   # the backend imported it, or the run did not need it
        if module is not None:
            said[name] = getattr(module, "__version__", None)
    return said


def environment(req: GenerateRequest) -> dict:
    """What a video's last bits depend on beyond its settings: the versions, the device and the CPU threads (the
    same request at another thread count differs by a few values of 1 in 255, README "Reproducibility")."""
    return {**versions(), "device": str(req.device), "cpu_threads": torch.get_num_threads()}


def code_changes(before: dict | None, now: dict) -> list[str]:
    """What differs between the code of an interrupted long run (:func:`versions` and the library's source digest,
    as its resume state keeps them) and a resume's: each as ``name before -> now``; nothing where ``before`` is None
    (a state kept before versions were). A package only one side imported is no change: whether diffusers was
    imported says more about the process (a script that imported it for something else) than about the run."""
    return [f"{k} {before[k]} -> {v}" for k, v in now.items() if before is not None and k in before and before[k] != v]


def described(expert) -> dict:
    """An expert's :meth:`describe` as the report holds it: its paths (source, vae) absolute, as the settings' are
    (a report held ``/tmp/tiny/ad`` in its settings beside ``../tiny/sd`` in its experts)."""
    said = expert.describe()
    for key in ("source", "vae"):
        if isinstance(said.get(key), str) and said[key] and os.path.exists(said[key]):
            said[key] = os.path.abspath(said[key])
    return said


def build_report(req: GenerateRequest, backend: Backend, log: EvaluationLog, seconds: dict, **extra) -> dict:
    # as report.json holds them: a caller's Path (out) or torch.device (device) as text, so the returned report
    # goes through json.dumps as the file's does
    settings = json.loads(json.dumps({k: v for k, v in req.fields().items() if k not in report_elsewhere(req)},
                                     default=str))
    for name in PATHS:   # absolute: a request rebuilt from the report elsewhere than the run's folder reads the same
        if settings.get(name):
            settings[name] = os.path.abspath(settings[name])
    chain = req.chain.as_dict()
    spatial, temporal = backend.experts.get("spatial"), backend.experts.get("temporal")
    matched = {}
    if req.chain.mode == COORDINATED and temporal is not None:   # what the matching chose for the temporal expert
        chain["matching_requested"] = req.requested("chain.matching")
        # (whole ones as integers, as refine_timesteps holds them: a Wan report read [250, ...] beside [250.0, ...])
        matched["temporal_timesteps"] = [int(t) if t.is_integer() else t for t in (
            round(float(t), 3) for t in temporal_timesteps(spatial.schedule, temporal.schedule, req.chain))]
    else:
        chain["matching"] = None   # no mode but coordinated matches timesteps between two experts
    return {"settings": settings, "chain": chain, "seed": req.seed, "frames": req.frames,
            "refine_timesteps": refine_timesteps(req.chain),   # the network timesteps T_e counts in
            **matched, "environment": environment(req),
            # what the experts were given where the settings leave it to the backend (an empty prompt, --cfg)
            "prompt_used": prompt_used(req),
            "guidance": {"control_cfg": req.control_cfg,   # the experts the refinement evaluates in this mode
                         **{f"{role}_cfg": scale for role, scale in refine_guidance(backend, req).items()
                            if role in EVALUATED_IN[req.chain.mode]}},
            "height": req.height, "width": req.width, "backend": backend.description,
            "speed_used": speed_used(req),   # settings.speed as asked; max without CUDA runs as fast
            **({"compiled_blocks": blocks} if (blocks := compiled_blocks(req)) is not None else {}),
            # the experts that ran (the embedded presets hold all three whatever the mode, as checkpoints do not)
            "experts": {k: described(e) for k, e in backend.experts.items()
                        if e is not None and (k == "control" or k in EVALUATED_IN[req.chain.mode])},
            "expert_evaluations": dict(log.evaluations), "network_forwards": dict(log.forwards),
            "vae_calls": dict(log.vae_calls), "vae_seconds": log.vae_seconds(),   # this process's (of several)
            "bridges": bridges(req.spaces(), req.chain.mode),
            "total_expert_evaluations": sum(log.evaluations.values()), "seconds": seconds,
            **({"embedded_world": embedded_world(req)} if req.embedded else {}), **extra}


def embedded_world(req: GenerateRequest) -> list[dict]:
    """Per prompt of the run, what the embedded world draws for it, the words it does not know and the known words
    it left unused (a second colour, shape, motion or background)."""
    return [{"prompt": entry.prompt or DEFAULT_PROMPT, "draws": reading.draws, "unknown_words": reading.unknown,
             "unused_words": reading.unused}
            for entry in req.prompt_schedule().entries for reading in [read_prompt(entry.prompt)]]


def unread_words_line(req: GenerateRequest) -> str | None:
    """The command line's note where the embedded world met words it does not know (it drew a red ball for "a
    purple elephant dancing", without a word) or left known words unused (a blue ball for "a blue ball over red
    grass": one colour, the first)."""

    def unread(world: dict) -> str:
        parts = [f"{', '.join(world['unknown_words'])} not read"] if world["unknown_words"] else []
        if world["unused_words"]:
            parts.append(f"{', '.join(world['unused_words'])} unused: it draws the first colour, shape, motion and "
                         f"background named")
        return f"'{world['prompt']}' is drawn as {world['draws']} ({'; '.join(parts)})"
    lines = [unread(w) for w in embedded_world(req) if w["unknown_words"] or w["unused_words"]]
    if not lines:
        return None
    return (f"embedded world: {'; '.join(lines)}. It knows a few colours, shapes, motions and backgrounds (README, "
            f"'The embedded default'); checkpoints read any prompt")


def write_report(path: str, report: dict) -> None:
    """Strict JSON (no NaN/Infinity: undefined metrics are null with a reason, see metrics.strict_scores)."""
    with writing(path), open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=str, allow_nan=False)
