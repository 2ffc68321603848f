"""The expert interface every backend implements, and the evaluation log.

An :class:`Expert` knows its schedule, prediction type, latent layout and latent space, and returns a raw
network output for a noisy latent at a timestep. Binding it to a prompt and a guidance scale gives a
:class:`Denoiser`, the callable the samplers use: ``denoiser(x_t, t) -> Prediction(x0, eps)`` in the core's
canonical video layout ``[B, C, F, h, w]``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch

from . import layout as L
from .errors import NonFiniteError, warn_doubtful
from .latent_spaces import KNOWN_SPACES, SD15, Codec, LatentSpace, bridge, in_space
from .prediction import PREDICTION_TYPES, to_x0_eps
from .schedules import FLOW, VP, NoiseSchedule


class Prediction(NamedTuple):
    x0: torch.Tensor
    eps: torch.Tensor


#: where a model a script has already loaded (a diffusers UNet or pipeline) goes instead of a path
ALREADY_LOADED = ("a model already loaded runs as an expert of confiner_core.diffusers_backend (FrameExpert, "
                  "MotionExpert, UNet3DExpert) through run_chain: see the README's 'Models you have already loaded'")


def not_a_path(name: str, value, model: bool = True) -> str:
    """The message for ``name``, a path, given ``value`` of another type; a ``model``'s path says where a model
    already loaded goes instead (:data:`ALREADY_LOADED`)."""
    said = f"{name} must be a path (str or pathlib.Path), not {type(value).__name__}"
    return f"{said}; {ALREADY_LOADED}" if model else said

#: what an :class:`EvaluationLog` counts, per stage (a long run carries these with each window and in its resume state)
COUNTERS = ("evaluations", "forwards", "vae_calls")


def counts_of(holder=None) -> dict[str, Counter]:
    """A copy of the :data:`COUNTERS` of ``holder`` (an :class:`EvaluationLog`, a long run's state), per stage;
    empty ones for None."""
    return {name: Counter(getattr(holder, name) if holder is not None else {}) for name in COUNTERS}


@dataclass
class EvaluationLog:
    """One run's count, per stage, of expert evaluations (denoiser calls, the paper's unit: one (x0, eps) prediction,
    whatever the guidance), network forwards, and the bridge's VAE calls (encodes + decodes of whole clips between
    latent spaces). Give each run its own: a log shared by several runs adds their counts up, also in the
    evaluation numbers its NaN messages give.

    A **network forward** is one call of an expert's network, whatever its batch: classifier-free guidance batched
    with the conditional pass into one call counts 1, computed as two calls counts 2, a context-windowed evaluation
    counts one per window. Every backend reports it through :meth:`Expert.forwards_per_call`; the report
    (``network_forwards``), the ComfyUI nodes and ``bench/gpu_benchmark.py`` all use this count.

    It also holds the finiteness check of the last evaluation, read one evaluation late (:meth:`defer_finite_check`)
    and at the end of every stage and sampling loop (:meth:`check_finite`), except inside a stage that hands its
    last check over to the next stage (``stage(name, hand_over=True)``)."""

    evaluations: Counter = field(default_factory=Counter)
    forwards: Counter = field(default_factory=Counter)
    vae_calls: Counter = field(default_factory=Counter)
    current: str = "unstaged"
    vae_spans: list = field(default_factory=list, repr=False, compare=False)   # (stage, start, end) of VAE calls
    pending: tuple | None = field(default=None, repr=False, compare=False)
    handing_over: bool = field(default=False, repr=False, compare=False)
    #: called as VAE calls between the experts begin, with the stage: the command line's bar says so (a long Wan
    #: run spent 10.7 of its 19.8 s there, shown only as slower steps)
    on_vae: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    @contextlib.contextmanager
    def stage(self, name: str, hand_over: bool = False):
        """Count evaluations under ``name`` (also a ``torch.profiler`` range, so a profile splits by stage) and read
        the last evaluation's finiteness check at the end. With ``hand_over`` that check stays queued until the next
        stage reads it: at its first evaluation, that evaluation's forward already queued, or at its end (a
        ``decode`` stage, the decode queued): for a stage another follows in the same call (the chain's control
        stage; the refinement, where ``generate`` decodes next). Read at the end, the GPU drained between the
        stages while the host drew Eq. 6's noise (H200, call X: 4.3 ms idle a ConFiner run). The message still
        names this stage."""
        previous, self.current = self.current, name
        held, self.handing_over = self.handing_over, hand_over
        try:
            with torch.profiler.record_function(name):
                yield self
            self.check_finite()  # nothing while handing over
        finally:
            self.current, self.handing_over = previous, held

    def defer_finite_check(self, finite: torch.Tensor, message: Callable[[], str]) -> None:
        """Queue an evaluation's finiteness flag (a 0-d bool, on the GPU for GPU experts) and read the previous one.

        Reading a device flag makes the host wait until the GPU has computed it. Read at once, the GPU idles after
        every evaluation while the host issues the next network's kernels (H200 profiles with the flag read at once:
        GPU idle 15 % of an eager ConFiner run, 31 % with the lean preset); read one evaluation late, the next
        forward is already queued when the host waits. The flag is copied to host memory when it is queued, for
        ``bool()`` of a device tensor copies it behind everything queued since, the next forward included: the
        GPU then drained at every evaluation all the same (H200, slow host: 3-4 ms of GPU idle per evaluation)."""
        self._read_pending()
        self.pending = (HostFlag(finite), message)

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteError` if the queued evaluation's output was not finite (the end of a sampling loop
        or stage); inside a stage that hands its check over, nothing: the next stage's first evaluation reads it."""
        if not self.handing_over:
            self._read_pending()

    def _read_pending(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None and not pending[0].read():
            raise NonFiniteError(pending[1]())

    def record(self, forwards: int) -> None:
        self.evaluations[self.current] += 1
        self.forwards[self.current] += forwards

    def record_vae(self, calls: int) -> None:
        self.vae_calls[self.current] += calls

    @contextlib.contextmanager
    def vae(self, calls: int, device: torch.device):
        """Count ``calls`` VAE calls and time them (:meth:`vae_seconds`): on a GPU between two CUDA events, for
        the host only issues the kernels (waiting for them here would drain the GPU between calls)."""
        self.record_vae(calls)
        stage = self.current
        if self.on_vae is not None:
            self.on_vae(stage)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self.vae_spans.append((stage, start, end))

    def vae_seconds(self) -> dict[str, float]:
        """Seconds spent in the VAE calls between experts, per stage (a GPU's are read once its work is done)."""
        out: Counter = Counter()
        for stage, start, end in self.vae_spans:
            if isinstance(start, float):
                out[stage] += end - start
            else:
                end.synchronize()
                out[stage] += start.elapsed_time(end) / 1000
        return {stage: round(seconds, 4) for stage, seconds in out.items()}

    def counts(self) -> dict[str, Counter]:
        return counts_of(self)

    def add_counts(self, counts: dict) -> None:
        """Add counts made elsewhere: by another process, or before a resumed run was interrupted."""
        for name in COUNTERS:
            getattr(self, name).update(counts.get(name, {}))

    def as_dict(self) -> dict:
        return {"evaluations": dict(self.evaluations), "forwards": dict(self.forwards),
                "vae_calls": dict(self.vae_calls), "total_evaluations": sum(self.evaluations.values())}


class HostFlag:
    """A 0-d bool tensor on its way to the host: a CUDA flag is copied into pinned memory as soon as it is queued,
    behind an event, so :meth:`read` waits for the GPU only up to that point of the stream."""

    def __init__(self, flag: torch.Tensor):
        self.event = None
        if flag.device.type == "cuda":
            self.flag = torch.empty((), dtype=flag.dtype, pin_memory=True)
            self.flag.copy_(flag, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(flag.device))  # the flag's GPU, not the current one
        else:
            self.flag = flag

    def read(self) -> bool:
        if self.event is not None:
            self.event.synchronize()
        return bool(self.flag)


def in_stage(log: "EvaluationLog | None", name: str, hand_over: bool = False):
    """``log.stage(name, hand_over)``, or nothing when no log is kept."""
    return log.stage(name, hand_over) if log is not None else contextlib.nullcontext()


def own_stage(denoiser: "Denoiser", name: str):
    """The stage a chain function called on its own counts its evaluations under (its log's, where no caller has
    set one: a script running the chain stage by stage, or calling ``refine_coordinated`` itself, counted them
    "unstaged")."""
    log = denoiser.log
    return in_stage(log, name) if log is not None and log.current == "unstaged" else contextlib.nullcontext()


class Expert(ABC):
    """A diffusion model used as one link of the chain.

    Subclasses set the attributes and implement :meth:`encode` and :meth:`forward`. ``name`` is what messages
    call it; ``schedule`` (required) its :class:`~confiner_core.schedules.NoiseSchedule`, e.g.
    ``schedules.named("sd15")`` or ``schedules.flow_schedule(shift=5.0)``; ``prediction`` what :meth:`forward`
    returns (``epsilon``, ``v_prediction``, ``flow`` or ``sample``, x0 itself; it must fit the schedule's kind).
    ``latent_space`` is the space the expert denoises in (:mod:`confiner_core.latent_spaces`); ``codec`` its VAE, a
    :class:`~confiner_core.latent_spaces.Codec` of that space, needed where the chain bridges it to an expert of
    another space and where ConFiner-Long joins staggered windows of a space that compresses time (Wan's), whose
    latents cannot be cut at any frame. ``layout`` says how the expert takes a
    latent video: whole (``video``) or one (latent) frame at a time (``frames``, image models).
    ``max_frames`` is the longest clip (in latent frames) a temporal model accepts (None: any). The chain calls
    :meth:`forward` under ``torch.no_grad()``.
    """

    name: str = "expert"
    schedule: NoiseSchedule
    prediction: str = "epsilon"
    layout: str = L.VIDEO
    latent_space: LatentSpace = SD15
    codec: Codec | None = None
    #: where ``codec`` was loaded from, where a loader knows (report.json's ``vae``): another expert's folder of
    #: the same latent space serves one without VAE weights
    vae_source: str | None = None
    max_frames: int | None = None
    #: the network takes the guidance scale as an input (guidance-distilled models, FLUX.1-dev: diffusers'
    #: ``guidance_scale``, ComfyUI's FluxGuidance): one forward per evaluation and no negative prompt, and
    #: :meth:`forward` gets ``(conditioning, scale)`` pairs
    distilled_guidance: bool = False
    #: the refinement's guidance scale where the user gives none: SD 1.5's usual 7.5 for the UNet families (ours,
    #: not the paper's: it states none), else the family's own pipeline default in diffusers
    default_guidance: float = 7.5

    @property
    def latent_channels(self) -> int:
        return self.latent_space.channels

    @property
    def relates_frames(self) -> bool:
        """Whether the network relates a clip's frames: a video model; an image model evaluated frame by frame makes
        or refines every frame on its own (backends whose image models carry motion modules say so here)."""
        return self.layout == L.VIDEO

    @abstractmethod
    def encode(self, prompt: str) -> Any:
        """Prompt -> this expert's own conditioning (its text encoder, its width)."""

    def encode_all(self, prompts: list[str]) -> list:
        """The conditionings of several prompts (a prompt and its negative); backends whose text encoders
        remember recent prompts override this."""
        return [self.encode(prompt) for prompt in prompts]

    @abstractmethod
    def forward(self, x: torch.Tensor, t: float, conds: list) -> list[torch.Tensor]:
        """Raw outputs for latent ``x`` (native layout) at timestep ``t``, one per conditioning in ``conds``, each a
        floating-point tensor of ``x``'s shape on ``x``'s device. Backends may batch the conditionings into one
        network call. ``x`` may be the chain's own sample (a view of it in layout ``frames``): leave it unchanged, as
        networks do (an in-place edit, ``x.mul_(...)``, would change the sample the step goes on from).

        ``t`` is the core's timestep: an index into this expert's :class:`~confiner_core.schedules.NoiseSchedule`
        (``schedule.coefficients(t)`` gives its alpha and sigma). For DDPM-trained UNets it is also the network's
        timestep; a flow expert converts it to what its network takes (Wan: ``1000 * sigma(t)`` with the shifted
        sigma; Qwen-Image: ``sigma(t)``), as its ``model_timestep`` does."""

    def check_size(self, height: int, width: int) -> None:
        """Raise (naming the expert and the pixel multiple to use) where the network cannot take latents of
        ``height x width`` (transformers that take 2x2 patches need even sizes). Called by the chain's checks before
        any evaluation, and by backends' forwards. Default: any size."""

    def forwards_per_call(self, n_conds: int) -> int:
        """Network forwards (see :class:`EvaluationLog`) the last :meth:`forward` made for ``n_conds``
        conditionings. Default: one call per conditioning; backends that batch them, or that can count the calls
        where they happen, override it."""
        return n_conds

    def guidance_at(self, t: float, scale: float) -> float:
        """The classifier-free guidance scale at timestep ``t`` of a denoiser bound at ``scale`` (an expert pair's
        may be one per member)."""
        return scale

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float, t: float) -> torch.Tensor:
        """Classifier-free guidance of two raw outputs (native layout). Families whose pipelines combine them
        differently (Qwen-Image rescales to the conditional output's norm) override this."""
        return uncond + scale * (cond - uncond)

    def uses_negative(self, guidance_scale: float | tuple) -> bool:
        """Whether a denoiser bound at ``guidance_scale`` (an expert pair's: one per member) evaluates the negative
        prompt: classifier-free guidance other than 1, on a network that does not take the scale as an input."""
        scales = guidance_scale if isinstance(guidance_scale, tuple) else (guidance_scale,)
        return any(s != 1.0 for s in scales) and not self.distilled_guidance

    def checked_scale(self, guidance_scale, what: str = "a number"):
        """``guidance_scale`` as :meth:`bind` takes it: a finite number (an expert pair's may be a pair, see
        :meth:`ExpertPair.checked_scale`); raises naming it."""
        if isinstance(guidance_scale, EvaluationLog):   # (the whole log's repr was shown as the value)
            raise TypeError("bind: guidance_scale got an EvaluationLog, which goes fourth: bind(prompt, "
                            "negative_prompt, guidance_scale, log), or log=log")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
            raise TypeError(f"bind: guidance_scale must be {what} (1 = no cfg), got {guidance_scale!r}")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:   # (the settings' cfg lies in [0, 100] too)
            raise ValueError(f"bind: guidance_scale must be a finite number >= 0 (1 = no cfg, 0 = the unconditional "
                             f"prediction alone), got {guidance_scale!r}")
        return guidance_scale

    def bind(self, prompt: str = "", negative_prompt: str = "", guidance_scale: float = 1.0,
             log: EvaluationLog | None = None, deferred: bool = False) -> "Denoiser":
        """This expert bound to a prompt, its negative (used where ``guidance_scale`` is not 1 and the expert does
        not take the scale as an input, :attr:`distilled_guidance`) and a log. ``guidance_scale`` is 1 (no cfg)
        unless given, not :attr:`default_guidance`, which is what ``generate`` binds a refining expert at: pass
        ``expert.default_guidance`` for the same. With
        ``deferred`` the prompts are encoded at the denoiser's first evaluation rather than here: an expert first
        called late in a run (the chain's temporal expert, first called in the refinement) then encodes them while
        the GPU runs the stages before, not while it waits at the run's start for the host (H200, call AI: the
        temporal prompt's encode was 2-3 ms of the 8 ms the GPU idled before the control stage)."""
        if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
            raise TypeError(f"bind: prompt and negative_prompt must be text, got {type(prompt).__name__} and "
                            f"{type(negative_prompt).__name__}")
        guidance_scale = self.checked_scale(guidance_scale)

        def encode() -> tuple:
            try:
                if self.uses_negative(guidance_scale):
                    return tuple(self.encode_all([prompt, negative_prompt]))
                return self.encode(prompt), None
            except Exception as e:   # (the text encoder's own error names no expert)
                if hasattr(e, "add_note"):
                    e.add_note(f"raised by expert {self.name!r} ({type(self).__name__}) encoding its prompt "
                               f"{prompt!r}" + (f" and negative prompt {negative_prompt!r}"
                                                 if self.uses_negative(guidance_scale) else ""))
                raise

        if deferred:
            return Denoiser(self, None, None, guidance_scale, log, encode_later=encode)
        return Denoiser(self, *encode(), guidance_scale, log)

    def describe(self) -> dict:
        return {"name": self.name, "class": type(self).__name__, "schedule": self.schedule.name,
                "prediction": self.prediction, "layout": self.layout, "latent_channels": self.latent_channels,
                "latent_space": self.latent_space.name, **({"vae": self.vae_source} if self.vae_source else {})}


class ExpertPair(Expert):
    """Two networks sharing one role, schedule and latent space, split at a noise level (Wan 2.2 A14B: the
    high-noise expert where sigma_t >= ``boundary``, the low-noise expert below; diffusers' ``boundary_ratio``
    0.875 for text-to-video compares the shifted flow sigma). ``guidance``: optional (high, low) CFG scales, like
    diffusers' ``guidance_scale`` / ``guidance_scale_2``: the pair's own default (:attr:`default_guidance`, what
    ``generate`` binds a refining expert at without a cfg given). One rule decides: the scale a denoiser is bound
    at, one number for both members or (high, low); it once replaced a bound scale silently."""

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
        self.default_guidance = tuple(guidance) if guidance is not None else high.default_guidance
        self.last = 1  # the member the last forward used (its network forwards are the ones counted)
        self.member_calls = [0, 0]   # evaluations per member (high, low), for the report: which one ran where

    def check_size(self, height: int, width: int) -> None:
        self.high.check_size(height, width)
        self.low.check_size(height, width)

    def member(self, t: float) -> int:
        """0 (high-noise expert) or 1 (low-noise expert) for timestep ``t``."""
        return 0 if self.schedule.coefficients(t)[1] >= self.boundary else 1

    def encode(self, prompt: str):
        return (self.high.encode(prompt), self.low.encode(prompt))

    def encode_all(self, prompts: list[str]) -> list:
        return list(zip(self.high.encode_all(prompts), self.low.encode_all(prompts)))

    def forward(self, x: torch.Tensor, t: float, conds: list) -> list[torch.Tensor]:
        self.last = i = self.member(t)
        self.member_calls[i] += 1
        return (self.high, self.low)[i].forward(x, t, [c[i] for c in conds])

    def forwards_per_call(self, n_conds: int) -> int:
        return (self.high, self.low)[self.last].forwards_per_call(n_conds)

    def guidance_at(self, t: float, scale: float | tuple) -> float:
        return scale[self.member(t)] if isinstance(scale, tuple) else scale

    def checked_scale(self, guidance_scale, what: str = "a number, or (high, low) for an expert pair,"):
        """One number for both members, or (high, low) (a list is taken as a tuple)."""
        if isinstance(guidance_scale, (tuple, list)) and len(guidance_scale) == 2:
            return tuple(super(ExpertPair, self).checked_scale(s, what) for s in guidance_scale)
        return super().checked_scale(guidance_scale, what)

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float, t: float) -> torch.Tensor:
        return (self.high, self.low)[self.member(t)].combine_guidance(uncond, cond, scale, t)

    def describe(self) -> dict:
        return {**super().describe(), "boundary": self.boundary,
                "members": [{"member": member, **expert.describe(), "evaluations": calls} for member, expert, calls
                            in zip(("high-noise", "low-noise"), (self.high, self.low), self.member_calls)]}


@dataclass
class Denoiser:
    """An expert bound to its conditioning: ``denoiser(x_t, t)`` -> (x0_hat, eps_hat) with classifier-free guidance."""

    expert: Expert
    positive: Any = field(repr=False)   # (encoded prompts: a print showed the text embedding's numbers)
    negative: Any = field(default=None, repr=False)
    guidance_scale: float = 1.0
    log: EvaluationLog | None = None
    #: the prompts' encoding still to be done (``Expert.bind(deferred=True)``): (positive, negative) at first use
    encode_later: Callable[[], tuple] | None = field(default=None, repr=False, compare=False)

    @property
    def schedule(self) -> NoiseSchedule:
        return self.expert.schedule

    def encoded(self) -> "Denoiser":
        """This denoiser with its conditionings computed (a deferred encoding runs now, once)."""
        if self.encode_later is not None:  # cleared only once it succeeded: a failed encode is tried again
            self.positive, self.negative = self.encode_later()
            self.encode_later = None
        return self

    def raw(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """CFG-combined network output in canonical layout."""
        self.encoded()
        native = L.from_canonical(x_t, self.expert.layout)
        if self.expert.distilled_guidance:
            (out,) = self._forward(native, t, [(self.positive, self.guidance_scale)])
            n = 1
        elif self.negative is None:
            (out,) = self._forward(native, t, [self.positive])
            n = 1
        else:
            uncond, cond = self._forward(native, t, [self.negative, self.positive])
            out = self.expert.combine_guidance(uncond, cond, self.expert.guidance_at(t, self.guidance_scale), t)
            n = 2
        finite = torch.isfinite(out).all()  # one reduction per evaluation, cheap next to a network forward
        if self.log is None:
            if not bool(finite):
                raise NonFiniteError(non_finite_message(self, x_t, t, "unstaged", None))
        else:
            stage, number = self.log.current, self.log.evaluations[self.log.current] + 1
            self.log.defer_finite_check(finite, lambda: non_finite_message(self, x_t, t, stage, number))
            self.log.record(self.expert.forwards_per_call(n))
        return L.to_canonical(out, self.expert.layout, batch=x_t.shape[0])

    def _forward(self, native: torch.Tensor, t: float, conds: list) -> list:
        """:meth:`Expert.forward`, held to its contract: one output per conditioning, each of the input's shape.
        Without autograd, as diffusers' pipelines run: a custom expert's module with trainable weights kept one
        graph over every evaluation of the chain (a UNet's activations: out of memory)."""
        # an edit in place of the input changed the sample the prediction is read against (and, as a view, the
        # chain's own): a silently different video (a trial's x.clamp_). Inference tensors (ComfyUI's executor)
        # keep no version counter.
        version = None if native.is_inference() else native._version
        try:
            with torch.no_grad():
                outs = self.expert.forward(native, t, conds)
        except Exception as e:
            if hasattr(e, "add_note"):   # (Python 3.11+) which expert and call failed: the network's own error
                e.add_note(self.failed_call(native, t))   # names neither (e.g. a conv of the wrong channels)
            raise
        if version is not None and native._version != version:
            raise ValueError(f"expert {self.expert.name!r} ({type(self.expert).__name__}).forward changed its input x "
                             f"in place: x may be the chain's own sample, which the prediction is read against; "
                             f"work on a copy (x = x.clone()) or with out-of-place operations")
        if not isinstance(outs, (list, tuple)) or len(outs) != len(conds) or \
                any(not isinstance(o, torch.Tensor) or o.shape != native.shape for o in outs):
            got = [tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__ for o in outs] \
                if isinstance(outs, (list, tuple)) else type(outs).__name__
            raise ValueError(f"expert {self.expert.name!r} ({type(self.expert).__name__}).forward returned {got} for "
                             f"{len(conds)} conditioning(s) and an input of shape {tuple(native.shape)}: it must "
                             f"return a list of one tensor of the input's shape per conditioning")
        if any(o.device != native.device for o in outs):   # (torch's own error came later and named no expert)
            raise ValueError(f"expert {self.expert.name!r} ({type(self.expert).__name__}).forward returned tensors on "
                             f"{[str(o.device) for o in outs]} for an input on {native.device}: return them on the "
                             f"input's device (x.device)")
        if any(not o.is_floating_point() for o in outs):
            raise ValueError(f"expert {self.expert.name!r} ({type(self.expert).__name__}).forward returned "
                             f"{[str(o.dtype) for o in outs]} for an input of {native.dtype}: it must return "
                             f"floating-point tensors (the input's dtype)")
        # another float dtype is taken in the input's: a float64 output made the whole chain float64
        return [o.to(native.dtype) for o in outs]

    def failed_call(self, native: torch.Tensor, t: float) -> str:
        """Which expert and call raised (a note on the network's own error)."""
        stage = at_stage(self.log.current if self.log is not None else "unstaged")
        space = self.expert.latent_space
        return (f"raised by expert {self.expert.name!r} ({type(self.expert).__name__}) {stage}step "
                f"t={self.schedule.timestep(t):.4g}, on an input of shape {tuple(native.shape)} ({native.dtype}, "
                f"layout {self.expert.layout}): it declares latent space {space.name!r} ({space.channels} channels)")

    def __call__(self, x_t: torch.Tensor, t: float) -> Prediction:
        if not isinstance(x_t, torch.Tensor):   # (a NumPy array failed inside with "'float' has no attribute ...")
            raise TypeError(f"expert {self.expert.name!r}: the sample must be a torch.Tensor, got "
                            f"{type(x_t).__name__}: torch.as_tensor(x, dtype=torch.float32)")
        if x_t.ndim != 5:   # (4 dims failed inside, in einops: "expected 5 dims")
            raise ValueError(f"expert {self.expert.name!r}: the sample must be a latent video [B, C, F, h, w], got "
                             f"shape {tuple(x_t.shape)}: one clip [C, F, h, w] is x[None], a batch of images "
                             f"[B, C, h, w] is x[:, :, None]")
        alpha, sigma = self.schedule.coefficients(t)
        return Prediction(*to_x0_eps(self.raw(x_t, t), x_t, alpha, sigma, self.expert.prediction))

    def with_prompt(self, prompt: str) -> "Denoiser":
        """The same expert and guidance with another positive prompt (prompt travel)."""
        return Denoiser(self.expert, self.expert.encode(prompt), self.encoded().negative, self.guidance_scale,
                        self.log)


#: the chain's roles, as load_experts and embedded_experts name them
ROLES = ("control", "spatial", "temporal")


def bind_chain(experts: Mapping, prompt: str = "", negative_prompt: str = "", *, log: EvaluationLog | None = None,
               control_cfg: float | tuple = 1.0, spatial_cfg: float | None = None,
               temporal_cfg: float | None = None) -> dict:
    """The chain's experts (role -> Expert: ``load_experts(...)`` or ``embedded_experts(...)``) bound as ``generate``
    binds them, role -> Denoiser (None for a role absent): the control expert at ``control_cfg`` (1, what the
    step-distilled AnimateDiff-Lightning takes), each refining expert at its own cfg or, None, its
    :attr:`~Expert.default_guidance` (SD 1.5 7.5, Wan 5, FLUX.1-dev 3.5), all on one ``log``. The spatial expert is
    bound first, so a control expert on the same text encoder finds the prompt encoded; the temporal expert, first
    called in the refinement, encodes its prompts then (``bind(deferred=True)``)."""
    given = getattr(experts, "experts", experts)   # (load_experts' LoadedExperts holds them in .experts)
    if not isinstance(given, Mapping):
        raise TypeError(f"bind_chain: experts must be role -> Expert (load_experts(...) or embedded_experts(...)), "
                        f"got {type(experts).__name__}")
    unknown = sorted(set(given) - set(ROLES))
    if unknown or given.get("control") is None:
        raise ValueError(f"bind_chain: experts has roles {', '.join(map(repr, given)) or 'none'}; it needs 'control' "
                         f"and any of 'spatial', 'temporal'" + (f" (not {', '.join(map(repr, unknown))})" if unknown
                                                                else ""))
    already = [role for role, e in given.items() if isinstance(e, Denoiser)]
    if already:
        raise TypeError(f"bind_chain: the {', '.join(already)} expert is bound already (a Denoiser): pass the "
                        f"experts themselves, or use the Denoisers as they are")
    for role, e in given.items():   # (a plain function failed with "'function' object has no attribute 'bind'")
        if e is not None and not isinstance(e, Expert):
            raise TypeError(f"bind_chain: the {role} expert must be an Expert, got {type(e).__name__}: make it one "
                            f"(confiner_core.experts.Expert: encode, forward, schedule, latent_space; README, \"An "
                            f"expert of your own\")")

    def bound(role: str, cfg: float | None, deferred: bool = False) -> Denoiser | None:
        expert = given.get(role)
        if expert is None:
            return None
        return expert.bind(prompt, negative_prompt, expert.default_guidance if cfg is None else cfg, log, deferred)

    control = given["control"]   # (a trial's pair_guidance never reached the control stage, and nothing said so)
    pair = control_cfg if isinstance(control_cfg, (tuple, list)) else (control_cfg, control_cfg)
    if isinstance(control, ExpertPair) and control.guidance is not None and control_cfg is not None and \
            tuple(pair) != tuple(control.guidance):
        warn_doubtful(f"the control expert's pair_guidance {tuple(control.guidance)} is not used: the control stage "
                      f"runs at control_cfg {control_cfg} (by default 1, a step-distilled model's); set control_cfg "
                      f"(a number, or (high, low)) to guide it, or give pair_guidance per role "
                      f"({{'spatial': ..., 'temporal': ...}})")
    spatial = bound("spatial", spatial_cfg)
    return {"control": bound("control", control_cfg), "spatial": spatial,
            "temporal": bound("temporal", temporal_cfg, deferred=True)}


def networks(expert: Expert) -> list:
    """The modules of an expert with weights (its ``networks``: the UNet or transformer and text encoders of a
    loaded one; both members of a pair), which speed settings apply to; none for an expert of one's own."""
    if isinstance(expert, ExpertPair):
        return networks(expert.high) + networks(expert.low)
    return list(getattr(expert, "networks", ()))


#: the likely cause of NaN from fp16 weights (load_experts(dtype=...); generate() names its own setting)
FP16_OVERFLOW = "fp16 overflow: load the experts in bfloat16 or float32"


def at_stage(stage: str) -> str:
    """Where in the chain a message's step is: "at stage 'refine', " where a log names the stage, else "at " (an
    expert bound without a log said "at stage 'unstaged'" of a step of the refinement)."""
    return f"at stage {stage!r}, " if stage != "unstaged" else "at "


def non_finite_message(denoiser: "Denoiser", x_t: torch.Tensor, t: float, stage: str, number: int | None) -> str:
    """Where NaN/inf appeared (expert, stage, step, the evaluation's number in its stage) and the likely cause."""
    evaluation = f", evaluation {number} of the stage" if number is not None else ""
    where = (f"expert {denoiser.expert.name!r} ({denoiser.expert.describe().get('class')}) {at_stage(stage)}"
             f"step t={denoiser.schedule.timestep(t):.4g}{evaluation}")
    if not bool(torch.isfinite(x_t).all()):
        return (f"the latent given to {where} holds NaN or infinity: the initial noise or input latent is not finite "
                f"(or the previous step overflowed)")
    loaded = networks(denoiser.expert)   # (none for the embedded experts and one's own)
    if any(getattr(network, "dtype", None) == torch.float16 for network in loaded):
        weights = FP16_OVERFLOW
    elif loaded:   # float32 and bfloat16 do not overflow at these scales: the weights themselves, then
        weights = "weights that are not finite: check the checkpoint"
    else:   # no checkpoint to blame: an expert of one's own said "check the checkpoint"
        weights = f"arithmetic in {type(denoiser.expert).__name__}.forward that is not finite"
    scale = denoiser.guidance_scale
    scale = "/".join(f"{s:g}" for s in scale) if isinstance(scale, tuple) else f"{scale:g}"
    return (f"{where} returned NaN or infinity (guidance scale {scale}); likely causes: a cfg "
            f"that is not finite or far too large, or {weights}")


def check_finite(*denoisers: "Denoiser | None") -> None:
    """Read the finiteness checks still queued on the denoisers' logs: the end of a sampling loop."""
    for denoiser in denoisers:
        if denoiser is not None and denoiser.log is not None:
            denoiser.log.check_finite()


#: prediction types that hold on one kind of schedule only: v = alpha eps - sigma x0 assumes alpha^2 + sigma^2 = 1,
#: the velocity u = eps - x0 assumes alpha = 1 - sigma (eps and x0 hold on any Gaussian schedule)
PREDICTION_KIND = {"v_prediction": VP, "flow": FLOW}


def check_denoisers(where: str, **denoisers) -> None:
    """The experts a chain function is given (name -> value; None where the role is absent) as it evaluates them:
    bound to their prompts (:class:`Denoiser`). An Expert not yet bound, or a plain function, failed inside with an
    AttributeError ('Toy' object has no attribute 'expert') that named neither the argument nor the fix."""
    for name, d in denoisers.items():
        if d is None:
            continue
        if isinstance(d, Denoiser):
            check_latent_space(d.expert)
            continue
        how = ("bind it first: expert.bind(prompt, negative_prompt, guidance_scale, log)" if isinstance(d, Expert)
               else "make it an Expert (confiner_core.experts.Expert: encode, forward, schedule, latent_space) and "
                    "bind it: expert.bind(prompt, negative_prompt, guidance_scale, log)")
        raise TypeError(f"{where}: {name} must be an expert bound to its prompt (a Denoiser), got "
                        f"{type(d).__name__}: {how}")


def check_latent_space(expert: Expert) -> None:
    """An expert's ``latent_space`` is a :class:`LatentSpace` (None failed later, in any role, with "no attribute
    'channels'" or "'title'"), and its ``codec`` one of that space: another's failed after the control stage, or
    encoded the bridge's result into a space the expert does not declare."""
    if not isinstance(expert.latent_space, LatentSpace):
        raise ValueError(f"expert {expert.name!r} has latent_space {expert.latent_space!r}: set it to a "
                         f"confiner_core.latent_spaces.LatentSpace, one of "
                         f"{', '.join(s.name.upper().replace('.', '') for s in KNOWN_SPACES)} or your own "
                         f"LatentSpace(name, channels, spatial factor, scale=...)")
    if isinstance(expert, ExpertPair):   # (the member whose codec it is: the pair takes one member's)
        for member in (expert.high, expert.low):
            check_latent_space(member)
    space = getattr(expert.codec, "space", None)
    if expert.codec is not None and space != expert.latent_space:
        named = space.name if isinstance(space, LatentSpace) else space
        raise ValueError(f"expert {expert.name!r} declares latent space {expert.latent_space.name!r} but its codec "
                         f"(VAE) belongs to latent space {named!r}: give it a codec of its own space, or set its "
                         f"latent_space to the codec's (expert.latent_space = expert.codec.space)")


def check_expert(expert: Expert, evaluated: bool = True) -> None:
    """What the chain needs of an expert: a known prediction type and layout, and of one it evaluates
    (``evaluated``; not the source a structure is handed off from) a :class:`NoiseSchedule` on which that prediction
    type holds. Raises ValueError naming the expert and the fix."""
    if expert.prediction not in PREDICTION_TYPES:
        raise ValueError(f"expert {expert.name!r} has prediction type {expert.prediction!r}; "
                         f"supported: {PREDICTION_TYPES}")
    if expert.layout not in L.LAYOUTS:
        raise ValueError(f"expert {expert.name!r} has layout {expert.layout!r}; supported: {L.LAYOUTS}")
    check_latent_space(expert)
    if not evaluated:
        return
    schedule = getattr(expert, "schedule", None)
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"expert {expert.name!r} ({type(expert).__name__}) has no noise schedule: set its "
                         f"'schedule' attribute to a NoiseSchedule (schedules.from_diffusers_config, flow_schedule, "
                         f"named), got {type(schedule).__name__}")
    kind = PREDICTION_KIND.get(expert.prediction)
    if kind is not None and schedule.kind != kind:
        names = {VP: "VP (variance-preserving)", FLOW: "flow-matching"}
        raise ValueError(f"expert {expert.name!r} has prediction type {expert.prediction!r}, which holds on a "
                         f"{names[kind]} schedule only, but its schedule is {names[schedule.kind]}: give it a "
                         f"{names[kind]} schedule, or the prediction type its network was trained for")
    if expert.prediction == "epsilon" and schedule.kind == FLOW:   # NaN at the control stage's first step
        raise ValueError(f"expert {expert.name!r} predicts epsilon on a flow-matching schedule, where x0 = (x - sigma "
                         f"eps) / alpha is undefined at sigma 1 (alpha 0), the top a flow expert's control stage "
                         f"starts at: flow models predict the velocity (prediction type 'flow')")


def declares_latent_space(expert: Expert) -> bool:
    """Whether the expert, or a class of it below :class:`Expert`, sets ``latent_space`` (an expert of one's own
    may keep the base class's default, SD 1.5's, beside experts of another space)."""
    return "latent_space" in vars(expert) or any("latent_space" in vars(k) for k in type(expert).__mro__
                                                  if k not in (Expert, object))


def bridge_end(expert: Expert) -> Codec | LatentSpace:
    """What the bridge needs of an expert: its codec when it has one, else just its latent space."""
    return expert.codec if expert.codec is not None else expert.latent_space


def counted_vae(log: EvaluationLog | None, calls: int, device: torch.device):
    """``log.vae(calls, device)`` (counted and timed), or nothing without a log."""
    return log.vae(calls, device) if log is not None else contextlib.nullcontext()


def hand_off(x0: torch.Tensor, source: Denoiser, target: Denoiser) -> torch.Tensor:
    """The x0 hand-off between two experts (structure -> refinement, and both ways in every coordinated step):
    the identity when they share a latent space, else the bridge through their VAEs (counted on the log)."""
    if source.expert.latent_space == target.expert.latent_space:
        return x0
    # one decode with the source's VAE, one encode with the target's
    with counted_vae(source.log or target.log, 2, x0.device):
        return in_space(bridge(x0, bridge_end(source.expert), bridge_end(target.expert)), target.expert.latent_space)
