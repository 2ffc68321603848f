"""ConFiner-Long (Section 3.5): many short segments made consistent by three strategies.

* consistency initialization -- every structure's noise is a frame permutation of one base noise
  (:func:`shuffled_noise`), or FreeNoise-style rescheduling (:func:`freenoise`);
* coherence guidance, Eq. 12 -- each control step's eps is pulled towards the previous structure's eps at the same
  step (:func:`coherence_guidance`, :class:`CoherenceGuidance`);
* staggered refinement, Eq. 13 -- refinement windows straddle every structure junction (:func:`plan_segments`).

:func:`generate_long` runs them while holding at most two structures: each window is refined and handed to a
callback (decode, write) as soon as it is final, so memory does not grow with the number of frames. Every task
(structure, window) draws from its own generator (:func:`task_generator`), so the loop can also be spread over
several processes (:mod:`confiner_core.distributed`: structures round-robin, each window refined on its last
structure's rank) and make the same video.
"""

from __future__ import annotations

import contextlib
import numbers
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from .chain import (ChainConfig, check_channels, control_stage, evaluated_roles, flatten, frozen_settings,
                    refine_evaluations, refine_structure, refining_denoiser, settled, stand_in_spatial,
                    validate_chain)
from .devices import check_device
from .errors import check_function, not_a_choice, warn_doubtful
from .experts import COUNTERS, Denoiser, check_denoisers, counts_of, in_stage, counted_vae
from .prompts import Entry, PromptSchedule, render_schedule
from .sampling import MAX_SEED, spawned_seed

SHUFFLE = "shuffle"
FREENOISE = "freenoise"
INDEPENDENT = "independent"
NOISE_INITS = (SHUFFLE, FREENOISE, INDEPENDENT)


# ----------------------------------------------------------------------------------------------------------------
# Segment plan (Eq. 13)

@dataclass(frozen=True)
class Window:
    """One refinement pass: ``parts`` are (structure index, first frame, end frame) pieces concatenated in order;
    its refined frames become output frames [out_start, out_stop) (the last window may keep only a prefix)."""

    index: int
    parts: tuple
    out_start: int
    out_stop: int

    @property
    def frames(self) -> int:
        """The output frames the window keeps (fewer than it refines where the video ends inside it)."""
        return self.out_stop - self.out_start


@dataclass(frozen=True)
class SegmentPlan:
    frames: int
    segment_length: int
    staggered: bool
    structures: int
    windows: tuple

    def window_frames(self, window: Window) -> int:
        """``window.frames`` (kept for scripts written before it)."""
        return window.frames

    def whole_window_frames(self, holds=None, reach: int = 8) -> tuple[int, ...]:
        """Where the video ends inside its last window, which is refined whole for fewer frames: the frame counts
        nearest ``frames`` below and above that end on a whole window (windows start every ``segment_length``
        frames), each the nearest that ``holds`` takes (a frame rule: where the windows are joined in Wan's latent
        space, 4k+1, which at 33-frame windows only every fourth count of windows meets), within ``reach`` windows;
        () where nothing is cut. Without ``holds``: one window fewer, and the same windows (the same cost)."""
        L, last = self.segment_length, self.windows[-1].frames
        if last >= L:
            return ()
        whole = len(self.windows) - 1   # windows kept whole now
        below = next((m * L for m in range(whole, max(whole - reach, 0), -1) if holds is None or holds(m * L)),
                     None)
        above = next((m * L for m in range(whole + 1, whole + 1 + reach) if holds is None or holds(m * L)), None)
        return tuple(n for n in (below, above) if n is not None)

    def expected_evaluations(self, chain: ChainConfig) -> int:
        """Expert evaluations of the run: control steps per structure plus refinement evaluations per window."""
        return self.structures * chain.control_steps + len(self.windows) * refine_evaluations(chain)

    @property
    def window_junctions(self) -> list[int]:
        """Output frames where one refinement window hands over to the next."""
        return [w.out_start for w in self.windows[1:]]

    @property
    def structure_junctions(self) -> list[int]:
        """Output frames where one control structure hands over to the next."""
        if not self.staggered:
            return self.window_junctions
        rest = self.segment_length - self.segment_length // 2   # frames of S_w inside window w
        return [w.out_start + rest for w in self.windows if w.out_start + rest < w.out_stop]

    @property
    def shown_structures(self) -> list[int]:
        """The structures some output frame comes from. Staggered, the last structure of a video that ends early in
        its window is laid out and refined with it, then cut away (40 frames of 16: structure 3 is frames 40-55)."""
        shown = set()
        for w in self.windows:
            at = w.out_start
            for s, a, b in w.parts:
                if at < w.out_stop:
                    shown.add(s)
                at += b - a
        return sorted(shown)

    @property
    def junctions(self) -> list[int]:
        return sorted(set(self.window_junctions) | set(self.structure_junctions))

    def as_dict(self) -> dict:
        return {"frames": self.frames, "segment_length": self.segment_length, "staggered": self.staggered,
                "structures": self.structures,
                "windows": [{"parts": [list(p) for p in w.parts], "frames": [w.out_start, w.out_stop]}
                            for w in self.windows],
                "window_junctions": self.window_junctions, "structure_junctions": self.structure_junctions}


def plan_segments(frames: int, segment_length: int = 16, staggered: bool | None = True) -> SegmentPlan:
    """Structures of length L (pixel frames) and the refinement windows over them.

    Staggered (Eq. 13): window w is S_w[L/2:L] + S_{w+1}[0:L/2] (L/2 rounded down, so causal video spaces can use
    4k+1 frames), so every structure junction is refined jointly.
    The plan makes one structure more than windows; the first half of the first structure and the last half of the
    last are never refined or shown (a 4-step control pass is cheap, and this keeps every window at full length L,
    the clip length temporal experts are trained on). Window junctions fall mid-structure, where the control expert
    already made the content continuous. Not staggered: window w is structure w alone.
    In both cases every output frame comes from exactly one window. ``staggered=None`` (LongConfig's default,
    "the plan's") plans staggered. A video shorter than one segment is one window cut short (a travelling prompt
    on a short clip); without one, ``run_chain`` makes it as one clip with one control pass fewer."""
    for name, value in (("frames", frames), ("segment_length", segment_length)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"plan_segments: {name} must be an integer, got {value!r}")
    if not isinstance(staggered, (bool, np.bool_, type(None))):   # ("yes" failed inside: "unsupported operand")
        raise TypeError(f"plan_segments: staggered must be True or False (None: True), got {staggered!r}")
    staggered = staggered is None or bool(staggered)
    if frames < 1:
        raise ValueError(f"plan_segments: frames must be >= 1, got {frames}")
    if segment_length < 2:
        raise ValueError(f"plan_segments: segment_length must be >= 2, got {segment_length}")
    n_windows = -(-frames // segment_length)
    half = segment_length // 2
    windows = []
    for w in range(n_windows):
        parts = ((w, half, segment_length), (w + 1, 0, half)) if staggered else ((w, 0, segment_length),)
        # (structure, first pixel frame, end pixel frame) of each piece
        windows.append(Window(w, parts, w * segment_length, min((w + 1) * segment_length, frames)))
    return SegmentPlan(frames, segment_length, staggered, n_windows + staggered, tuple(windows))


# ----------------------------------------------------------------------------------------------------------------
# Initial noise

def unused_long_settings(config: LongConfig, structures: int, segment_latent_frames: int) -> list[str]:
    """Settings of ``config`` that change nothing in a run of ``structures`` segments of ``segment_latent_frames``
    latent frames, each as a sentence: the command line refuses them, :func:`generate_long` warns (it ran them
    silently, a FreeNoise window longer than the noise making independent noise)."""
    said = []
    if config.noise_init != FREENOISE:
        for name in ("freenoise_window", "freenoise_stride"):
            if getattr(config, name) is not None:
                said.append(f"{name}={getattr(config, name)} shapes FreeNoise's noise, and noise_init is "
                            f"{config.noise_init!r}, so it changes nothing")
    elif config.freenoise_window is not None and config.freenoise_window >= structures * segment_latent_frames:
        said.append(f"freenoise_window={config.freenoise_window} covers all of this run's noise ({structures} "
                    f"structures of {segment_latent_frames} latent frames), so nothing is rescheduled: every "
                    f"structure's noise is independent; leave it None for one segment's")
    if config.gamma == 0 and config.coherence_memory != LongConfig.coherence_memory:
        said.append(f"coherence_memory={config.coherence_memory!r} chooses what coherence guidance pulls towards, "
                    f"and gamma is 0 (off), so it changes nothing")
    return said


def video_frames_window(config: LongConfig, segment_length: int, segment_latent_frames: int,
                        name: str = "freenoise_window") -> str | None:
    """A FreeNoise window written as one segment's video frames where the latent space compresses time (Wan: 17
    video frames are 5 latent frames): the window counts latent frames, so it spans more than 3 segments, not one.
    A sentence to warn with, naming the setting ``name`` (the value is valid), or None."""
    window = config.freenoise_window
    if config.noise_init != FREENOISE or window is None or segment_latent_frames == segment_length or \
            window != segment_length:
        return None
    return (f"{name} {window} is one segment's video frames, but FreeNoise's window counts latent frames: a segment "
            f"here is {segment_latent_frames} latent frames ({segment_length} video frames), so the window spans "
            f"{window / segment_latent_frames:.1f} segments; leave it out for one segment's")


def shuffled_noise(base: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Consistency initialization: a random permutation of the frame axis (dim 2) of the base noise."""
    perm = torch.randperm(base.shape[2], generator=generator, device=generator.device).to(base.device)
    return base[:, :, perm]


def freenoise_span(config: LongConfig, segment_latent_frames: int) -> tuple[int, int]:
    """FreeNoise's (window, stride) in latent frames: the config's, or its defaults for segments of
    ``segment_latent_frames`` (see :class:`LongConfig`)."""
    window = config.freenoise_window if config.freenoise_window is not None else segment_latent_frames
    return window, config.freenoise_stride if config.freenoise_stride is not None else max(1, window // 4)


def freenoise_stride_problem(stride: int, window: int, stride_said: str, window_said: str) -> str | None:
    """FreeNoise's stride at most its window (:func:`freenoise` said "window >= 1 and 1 <= stride <= window", naming
    neither): the one rule, said with each caller's names of the two and their values as it writes them (a node's
    widgets "FreeNoise stride (stride) = 8", the library's fields "freenoise_stride=8", an option "--freenoise-stride
    8")."""
    if stride <= window:
        return None
    return f"{stride_said} must be at most the FreeNoise window, {window_said}: use a stride of at most {window}"


def check_freenoise_span(config: LongConfig, segment_latent_frames: int | None = None) -> None:
    """:func:`freenoise_stride_problem` for a config's span (:func:`freenoise_span`), naming its fields. Without
    ``segment_latent_frames`` only a window given is checked."""
    if config.noise_init != FREENOISE or config.freenoise_stride is None or \
            (config.freenoise_window is None and segment_latent_frames is None):
        return
    window, stride = freenoise_span(config, segment_latent_frames)
    problem = freenoise_stride_problem(
        stride, window, f"LongConfig.freenoise_stride={stride}",
        f"freenoise_window={window}" if config.freenoise_window is not None else
        f"one segment's {window} latent frames (freenoise_window's default)")
    if problem:
        raise ValueError(problem)


def freenoise(shape: tuple, window: int, stride: int, generator: torch.Generator) -> torch.Tensor:
    """FreeNoise rescheduling over a whole sequence ``shape`` = [B, C, F, h, w]: fresh noise for the first
    ``window`` frames; afterwards each block of ``stride`` frames is a shuffled copy of the block ``window`` frames
    earlier (noise[s+window : s+window+stride] = noise[s : s+stride][perm] for s = 0, stride, ...), so any
    ``window`` consecutive frames share the same noise content."""
    if window < 1 or not (1 <= stride <= window):
        raise ValueError(f"FreeNoise needs window >= 1 and 1 <= stride <= window, got window={window}, stride={stride}")
    noise = torch.randn(shape, generator=generator, device=generator.device)
    frames = shape[2]
    for start in range(0, max(frames - window, 0), stride):
        end = min(start + window + stride, frames)
        n = end - (start + window)
        perm = torch.randperm(stride, generator=generator, device=generator.device)[:n]
        noise[:, :, start + window:end] = noise[:, :, start:start + stride][:, :, perm]
    return noise


class StructureNoise:
    """Initial noise per structure for the chosen initialization; draws only from explicit generators.

    What all structures share (the base noise of consistency initialization, FreeNoise's whole sequence) is drawn
    from ``generator`` when this is made; what is structure i's own (its frame permutation, its independent noise)
    from the generator passed with ``i`` (ConFiner-Long passes structure i's :func:`task_generator`), else from
    ``generator`` in call order."""

    def __init__(self, kind: str, shape: tuple, structures: int, generator: torch.Generator,
                 window: int = 16, stride: int = 4):
        if kind not in NOISE_INITS:
            raise ValueError(not_a_choice("noise init", kind, NOISE_INITS))
        self.kind, self.shape, self.generator = kind, shape, generator
        if kind == SHUFFLE:
            self.base = torch.randn(shape, generator=generator, device=generator.device)
        elif kind == FREENOISE:
            b, c, f, h, w = shape
            self.sequence = freenoise((b, c, f * structures, h, w), window, stride, generator)

    def __call__(self, i: int, generator: torch.Generator | None = None) -> torch.Tensor:
        generator = generator or self.generator
        if self.kind == SHUFFLE:
            return shuffled_noise(self.base, generator)
        if self.kind == FREENOISE:
            f = self.shape[2]
            return self.sequence[:, :, i * f:(i + 1) * f]
        return torch.randn(self.shape, generator=generator, device=generator.device)


# ----------------------------------------------------------------------------------------------------------------
# Random draws per task

# A long run is a set of tasks -- the noise all structures share, each structure (its initial noise, then its control
# stage), each window (Eq. 6, Eq. 9/11 and DDIM noise of its refinement) -- and each task draws from its own
# generator. So the draws of a task do not depend on which tasks ran before it or in which process: one process and
# any number of processes (confiner_core.distributed) make the same video, and a resumed run needs no generator state.
SHARED_NOISE_TASK, STRUCTURE_TASK, WINDOW_TASK = 0, 1, 2


def task_seed(seed: int, kind: int, index: int = 0) -> int:
    """The rule: :func:`~confiner_core.sampling.spawned_seed` of the stream (kind, index) (kind 0 shared noise, 1
    structure ``index``, 2 window ``index``): NumPy's construction of independent streams from one seed."""
    return spawned_seed(seed, kind, index)


def tagged(callback: Callable | None, **tags) -> Callable | None:
    """``callback`` with the structure or window each step belongs to added to its step's dict."""
    return None if callback is None else (lambda info: callback({**info, **tags}))


def task_generator(seed: int, kind: int, index: int = 0) -> torch.Generator:
    """A CPU generator for one task (see :func:`task_seed`); draws are moved to the latents' device, so the
    same seed gives the same noise on any device."""
    return torch.Generator().manual_seed(task_seed(seed, kind, index))


def root_seed(seed) -> int:
    """The run's seed: an int, or a ``torch.Generator`` standing for its initial seed. Every task's generator comes
    from it (:func:`task_generator`, so that a resumed or spread run is identical), never from the generator's state:
    a generator that has drawn since it was seeded is refused rather than quietly read as its seed (``run_chain``
    does continue from a generator's state)."""
    if not isinstance(seed, torch.Generator):
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"generate_long: seed must be an integer in 0..{MAX_SEED} (ComfyUI's range) or a "
                             f"freshly seeded torch.Generator, got {seed!r}")
        return int(seed)
    fresh = torch.Generator(device=seed.device).manual_seed(seed.initial_seed())
    if not torch.equal(seed.get_state(), fresh.get_state()):
        raise ValueError(f"generate_long: ConFiner-Long derives each structure's and window's generator from the "
                         f"run's seed, but this generator has drawn numbers since it was seeded with "
                         f"{seed.initial_seed()}; pass that seed as an int, or a freshly seeded generator")
    return seed.initial_seed()


# ----------------------------------------------------------------------------------------------------------------
# Coherence guidance (Eq. 12)

# What the next structure is pulled towards. Section 3.5 pulls towards the previous segment's predicted noise, its
# raw prediction eps_hat^prev_t (unguided, the default), so guidance does not compound along the chain of segments.
# Eq. 12 writes the previous segment's noise without a hat, eps^prev_t, which can also be read as its *guided*
# prediction, the eps_t the previous segment really stepped with (guided).
GUIDED = "guided"
UNGUIDED = "unguided"
COHERENCE_MEMORIES = (GUIDED, UNGUIDED)


def coherence_guidance(eps_hat: torch.Tensor, eps_prev: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 12: eps_t = eps_hat - gamma * grad_{eps_hat} ||eps_hat - eps_prev||^2 = (1 - 2 gamma) eps_hat + 2 gamma eps_prev.

    Applied to the control expert's ODE derivative (:func:`confiner_core.sampling.derivative`): eps for VP experts
    (eps- and v-prediction), exactly as printed; the velocity u = eps - x0 for flow experts, so that x0 and eps are
    recomputed from x_t without dividing by alpha (which is 0 at sigma = 1, where their control stage starts)."""
    return eps_hat - gamma * 2.0 * (eps_hat - eps_prev)


class CoherenceGuidance:
    """An eps hook for :func:`confiner_core.sampling.sample_control` that keeps only the previous structure's
    prediction per control step (all the next structure needs): its raw prediction ε̂ (``memory='unguided'``, the
    previous segment's "predicted noise" of Section 3.5) or the guided one it stepped with (``'guided'``,
    Eq. 12's ε^prev read as the previous segment's final ε)."""

    def __init__(self, gamma: float, memory: str = UNGUIDED):
        if memory not in COHERENCE_MEMORIES:
            raise ValueError(not_a_choice("coherence memory", memory, COHERENCE_MEMORIES))
        self.gamma, self.memory = gamma, memory
        self.previous: dict[int, torch.Tensor] = {}
        self.current: dict[int, torch.Tensor] = {}

    def __call__(self, step: int, t: float, x_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        guided = coherence_guidance(eps, self.previous[step], self.gamma) if step in self.previous else eps
        self.current[step] = guided if self.memory == GUIDED else eps
        return guided

    def next_structure(self) -> None:
        self.previous, self.current = self.current, {}


class RelayedGuidance:
    """Coherence guidance across processes: the previous structure's memory arrives step by step from the process
    that made it (``receive()``, one tensor per control step, awaited only when that step needs it) and this
    structure's leaves step by step for the process making the next one (``send(tensor)``). So structure i's step k
    waits only for structure i-1's step k: a wavefront, and processes making successive structures overlap."""

    def __init__(self, guidance: CoherenceGuidance, receive: Callable | None = None, send: Callable | None = None):
        self.guidance, self.receive, self.send = guidance, receive, send

    def __call__(self, step: int, t: float, x_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        if self.receive is not None and step not in self.guidance.previous:
            self.guidance.previous[step] = self.receive().to(eps)
        guided = self.guidance(step, t, x_t, eps)
        if self.send is not None:
            self.send(self.guidance.current[step])
        return guided


# ----------------------------------------------------------------------------------------------------------------
# The long loop

#: the paper's and FreeNoise's names for LongConfig's settings
LONG_OTHER_NAMES = {"L": "segment_length", "window": "freenoise_window", "stride": "freenoise_stride",
                    "window_stride": "freenoise_stride", "noise": "noise_init"}


@frozen_settings(LONG_OTHER_NAMES)
class LongConfig:
    """Defaults: L = the experts' natural clip (``segment_length=None``: ``GenerateRequest`` picks 16, the clip of
    AnimateDiff/ModelScope, or 17 for 4k+1 latents; :func:`generate_long` takes its plan's), all three strategies
    on, coherence guidance towards the previous segment's noise prediction ε̂ (Section 3.5's "predicted noise").

    FreeNoise's window and stride count the noise's frames, which are latent frames: video frames for SD-family
    experts, while a Wan latent frame holds 4 (a 17-frame segment is 5). By default the window is one segment's
    latent frames (FreeNoise's window is the clip length the model makes: 16 for AnimateDiff) and the stride a
    quarter of it (FreeNoise's 16 and 4 for SD's 16-frame segments).

    Frozen, as :class:`~confiner_core.chain.ChainConfig`: ``dataclasses.replace(config, gamma=0.2)`` for another."""

    segment_length: int | None = None  # None: the experts' natural clip (generate: 16 or 17), or the plan's
    noise_init: str = SHUFFLE
    freenoise_window: int | None = None   # latent frames; None: one segment's
    freenoise_stride: int | None = None   # latent frames; None: a quarter of the window, at least 1
    gamma: float = 0.1
    staggered: bool | None = None   # None: the plan's (plan_segments staggers by default); a bool must match it
    coherence_memory: str = UNGUIDED   # Section 3.5: the previous segment's "predicted noise", ε̂
    color_anchor: bool = False  # opt-in: anchor each window's colour statistics to its predecessor's (colour drift)

    def check_fields(self) -> None:
        """Each setting on its own, checked when the config is built; :meth:`validate` also checks them together."""
        for name, none in (("staggered", " or None (the plan's)"), ("color_anchor", "")):
            value = getattr(self, name)
            if not (isinstance(value, bool) or (none and value is None)):
                raise TypeError(f"LongConfig.{name} must be True or False{none}, got {value!r}")
        # a segment is a clip of 2 frames or more (plan_segments' and GenerateRequest's rule: 1 was taken here)
        for name, least in (("segment_length", 2), ("freenoise_window", 1), ("freenoise_stride", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or
                                      value < least):
                unit = " frames" if name == "segment_length" else " (latent frames)"
                raise ValueError(f"LongConfig.{name} must be a whole number >= {least}{unit}, or None for the default, "
                                 f"got {value!r}")
        if self.noise_init not in NOISE_INITS:
            raise ValueError(not_a_choice("noise_init", self.noise_init, NOISE_INITS))
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, numbers.Real) or not 0.0 <= self.gamma <= 0.5:
            raise ValueError(f"gamma must lie in [0, 0.5] (0.5 copies the previous eps outright), got {self.gamma!r}")
        if self.coherence_memory not in COHERENCE_MEMORIES:
            raise ValueError(not_a_choice("coherence_memory", self.coherence_memory, COHERENCE_MEMORIES))

    def validate(self) -> None:
        self.check_fields()
        check_freenoise_span(self)
        if self.color_anchor and self.staggered is False:
            raise ValueError("color_anchor anchors a window to the rest of the structure its predecessor ended in, "
                             "which only staggered refinement has: switch staggered on or color_anchor off")


# ----------------------------------------------------------------------------------------------------------------
# Colour anchoring (opt-in): context-window joins are where long videos change their tint

def channel_statistics(latent: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and standard deviation of a latent clip [B, C, T, h, w]: a [2, C] tensor."""
    dims = (0, 2, 3, 4)
    return torch.stack([latent.mean(dims), latent.std(dims)])


ANCHOR_FRAMES = 2  # latent frames on either side of a window junction whose statistics are matched


def anchor_window(latent: torch.Tensor, head: int, reference: torch.Tensor) -> torch.Tensor:
    """Shift every channel of a refined window so its first ``head`` latent frames have the mean of ``reference``,
    the statistics of the predecessor's last frames (a shift only: two frames' spread is too noisy to rescale by). Staggered (Eq. 13), a window junction falls inside one structure
    (S_w[:L/2] ends window w-1, S_w[L/2:] starts window w): the frames on both sides are neighbours of one
    structure, so their colours should agree, and what differs is drift the refinements introduced."""
    mean = channel_statistics(latent[:, :, :head])[0]
    return latent + (reference[0].to(latent) - mean).view(1, -1, 1, 1, 1)


def anchor_frames(plan: "SegmentPlan", refiner: Denoiser) -> int:
    """The latent frames at the start of a window, and at the end of the window before, whose statistics colour
    anchoring matches across their junction (:data:`ANCHOR_FRAMES`, fewer for short windows)."""
    total = refiner.expert.latent_space.latent_frames(plan.segment_length)
    return max(1, min(ANCHOR_FRAMES, total // 4))


def joins_in_latent_space(source: Denoiser, target: Denoiser) -> bool:
    """Pieces of clips join by concatenating latent frames only within one space whose latent frames are pixel
    frames (SD-style VAEs encode frames independently); anything else goes through pixels."""
    space = source.expert.latent_space
    return space == target.expert.latent_space and space.temporal_factor == 1


def check_segment_length(segment_length: int, experts: dict, name: str = "segment_length") -> None:
    """Before anything runs: a segment is a clip of ``segment_length`` pixel frames in the control expert's space
    and, refined, in each refining expert's (``experts``: role -> Denoiser or None), so each space must hold that
    count exactly (Wan's 4k+1: a causal space's 16 frames decode to 13, and each window gave 3 frames fewer than
    the plan counted). ``name``: how messages call the setting."""
    checked = []
    for role, d in experts.items():
        if d is None or d.expert.latent_space in checked:
            continue
        space = d.expert.latent_space
        checked.append(space)
        space.check_pixel_frames(segment_length, f"{name} = {segment_length}: the {role} expert's {space.title}",
                                 least=2)


def check_window_join(source: Denoiser, target: Denoiser, vae_fixes: dict | None = None,
                      staggered: bool = True) -> None:
    """Before anything runs: windows that must be joined through pixels need both experts' VAEs. ``vae_fixes``:
    role ("control", "refining") -> how the user gives that expert its VAE, for the message. Without staggering a
    window is one whole structure, which needs no join (:func:`window_latent`) where both experts share a space."""
    if joins_in_latent_space(source, target) or \
            not staggered and source.expert.latent_space == target.expert.latent_space:
        return
    for role, d in (("control", source), ("refining", target)):
        if d.expert.codec is None:
            fix = (vae_fixes or {}).get(role)
            # the fix first: the why is for those who ask (an artist read method words before "connect one")
            raise ValueError(f"the {role} expert needs its VAE" + (f": {fix}" if fix else "") +
                             f" (ConFiner-Long joins pieces of {source.expert.latent_space.title} structures into "
                             f"{target.expert.latent_space.title} windows through pixels: a causal video VAE "
                             f"cannot cut latents at any frame)")


def window_latent(structures: dict, parts: tuple, source: Denoiser, target: Denoiser, pixels: dict) -> torch.Tensor:
    """Eq. 13's window S_w[L/2:] + S_{w+1}[:L/2] as a clip in the refining expert's latent space. ``parts`` are
    (structure, first pixel frame, end pixel frame); ``pixels`` caches decoded structures (each is used by two
    windows). Causal spaces (Wan) cannot be cut in latent frames, so the pieces are decoded, joined as pixel frames
    and encoded as a fresh clip -- which also hands them to another expert's space when the refiner's differs."""
    if joins_in_latent_space(source, target):
        return torch.cat([structures[i][:, :, a:e] for i, a, e in parts], dim=2)
    (first, a, e), space = parts[0], source.expert.latent_space
    if len(parts) == 1 and space == target.expert.latent_space and \
            (a, e) == (0, space.pixel_frames(structures[first].shape[2])):
        return structures[first]   # a whole structure (no staggering): nothing to join, no VAE round trip
    decoded = [i for i, _, _ in parts if i not in pixels]
    with counted_vae(source.log, len(decoded) + 1, structures[first].device):
        for i in decoded:
            pixels[i] = source.expert.codec.decode(structures[i])
        return target.expert.codec.encode(torch.cat([pixels[i][:, :, a:e] for i, a, e in parts], dim=2))


def structure_centre(plan: SegmentPlan, i: int) -> int:
    """Output frame at the middle of structure i (for picking its prompt). Staggered, structure i covers output
    frames [i L - floor(L/2), i L + ceil(L/2)) (its first half closes window i - 1, its second half opens window i;
    Wan's odd segments split 8 + 9 at L = 17); otherwise [i L, (i + 1) L)."""
    L = plan.segment_length
    return max(0, min(plan.frames - 1, i * L + (0 if plan.staggered else L // 2)))


def window_centre(window: Window) -> int:
    """Output frame at the middle of a window's output frames (for picking the prompt it is refined with)."""
    return (window.out_start + window.out_stop) // 2


def window_entries(plan: SegmentPlan, schedule: PromptSchedule) -> list[int]:
    """Per window, the index of the schedule entry it is refined with: the one in force at its centre
    (:func:`window_centre`)."""
    return [schedule.index_at(window_centre(w)) for w in plan.windows]


def applied_schedule(plan: SegmentPlan, schedule: PromptSchedule) -> PromptSchedule:
    """``schedule`` as the windows apply it: each window refines all its output frames with the prompt in force at
    its centre (:func:`window_entries`), so a prompt starts at the window junction nearest its key, up to half a
    window early or late, and an entry whose frames hold no window's centre is not used (:func:`unused_entries`).
    Each structure is made with the prompt at its own centre (:func:`structure_centre`): across a change a window
    may refine a structure made with the prompt before, which makes the change gradual."""
    entries: list[Entry] = []
    written = None
    for window, index in zip(plan.windows, window_entries(plan, schedule)):
        if index != written:
            entries.append(Entry(window.out_start, schedule.entries[index].prompt, schedule.entries[index].key))
            written = index
    return PromptSchedule(tuple(entries), schedule.frames, schedule.fps, scheduled=schedule.scheduled)


def structure_entries(plan: SegmentPlan, schedule: PromptSchedule) -> list[int]:
    """Per structure, the index of the schedule entry its control stage is given: the one in force at its centre
    (:func:`structure_centre`)."""
    return [schedule.index_at(structure_centre(plan, s)) for s in range(plan.structures)]


def shown_structure_entries(plan: SegmentPlan, schedule: PromptSchedule) -> set[int]:
    """The indices of the entries the shown structures (:attr:`SegmentPlan.shown_structures`) are laid out with."""
    entries = structure_entries(plan, schedule)
    return {entries[s] for s in plan.shown_structures}


def given_entries(plan: SegmentPlan, schedule: PromptSchedule) -> list[int]:
    """The indices of the entries that reach the video (a window refined with it, or a structure laid out with it
    whose frames are shown), in schedule order."""
    return sorted(set(window_entries(plan, schedule)) | shown_structure_entries(plan, schedule))


def structure_at(plan: SegmentPlan, frame: int) -> int:
    """The structure output frame ``frame`` comes from (its window's parts, in order)."""
    window = next(w for w in plan.windows if w.out_start <= frame < w.out_stop)
    at = window.out_start
    for structure, first, end in window.parts:
        at += end - first
        if frame < at:
            return structure
    raise ValueError(f"frame {frame} lies past the parts of window {window.index}")


def prompt_change_junctions(plan: SegmentPlan, schedule: PromptSchedule) -> list[int]:
    """The junctions where the prompt changes: between windows refined with different prompts
    (:func:`window_entries`) or structures laid out with different ones (:func:`structure_entries`). The video
    changes there because the schedule asks it to, so seam scores leave them out and score them apart
    (:func:`~confiner_core.metrics.seam_scores_by_kind`)."""
    prompt = [e.prompt for e in schedule.entries]
    by_window = [prompt[i] for i in window_entries(plan, schedule)]
    by_structure = [prompt[i] for i in structure_entries(plan, schedule)]
    changes = {junction for w, junction in enumerate(plan.window_junctions, start=1)
               if by_window[w] != by_window[w - 1]}
    changes |= {junction for junction in plan.structure_junctions
                if by_structure[structure_at(plan, junction)] != by_structure[structure_at(plan, junction - 1)]}
    return sorted(changes)


def unused_entries(plan: SegmentPlan, schedule: PromptSchedule) -> list[tuple[int, int, str]]:
    """The entries that never reach the video, as (first frame, end frame, prompt) as written: their frames hold no
    window's centre and no shown structure's (:func:`applied_schedule`)."""
    used = set(given_entries(plan, schedule))
    return [r for i, r in enumerate(schedule.ranges()) if i not in used]


def layout_only_entries(plan: SegmentPlan, schedule: PromptSchedule) -> list[tuple[int, int, str]]:
    """The entries a shown structure is laid out with but no window is refined with: they shape that structure's
    motion and composition only (staggered, structure 0 is centred at frame 0, so a first entry shorter than half a
    segment is one)."""
    laid_out = shown_structure_entries(plan, schedule) - set(window_entries(plan, schedule))
    return [r for i, r in enumerate(schedule.ranges()) if i in laid_out]


def moved_schedule(plan: SegmentPlan, schedule: PromptSchedule) -> PromptSchedule | None:
    """The schedule as applied (:func:`applied_schedule`) where the windows move a change; None where every prompt
    starts at its key."""
    applied = applied_schedule(plan, schedule)
    same = [(e.start, e.prompt) for e in applied.entries] == [(e.start, e.prompt) for e in schedule.entries]
    return None if same else applied


def unused_entries_text(plan: SegmentPlan, schedule: PromptSchedule) -> str | None:
    """A warning naming the entries the video never shows (:func:`unused_entries`), those that only lay out a
    structure (:func:`layout_only_entries`), and the fix; None if none."""
    listed = lambda entries: "; ".join(f"frames {a}-{b - 1}: {p!r}" for a, b, p in entries)  # noqa: E731
    parts = []
    unused, layout = unused_entries(plan, schedule), layout_only_entries(plan, schedule)
    if unused:
        which = "1 prompt of the schedule is" if len(unused) == 1 else f"{len(unused)} prompts of the schedule are"
        parts.append(f"{which} not used, since no refinement window or shown structure of {plan.segment_length} "
                     f"frames is centred in its frames: {listed(unused)}")
    if layout:
        which = "1 prompt of the schedule" if len(layout) == 1 else f"{len(layout)} prompts of the schedule"
        parts.append(f"{which} only {'lays' if len(layout) == 1 else 'lay'} out a structure (its motion and "
                     f"composition), since no refinement window of {plan.segment_length} frames is centred in "
                     f"{'its' if len(layout) == 1 else 'their'} frames: {listed(layout)}")
    if not parts:
        return None
    return (f"warning: {'; '.join(parts)}. Give each prompt at least {plan.segment_length} frames, or use a shorter "
            f"segment length")


def render_applied_schedule(plan: SegmentPlan, schedule: PromptSchedule) -> str | None:
    """Where the windows move a schedule's changes (:func:`moved_schedule`), the schedule as applied, to show
    beside the one written, and the entries left unused (:func:`unused_entries_text`); None where every prompt
    starts at its key."""
    applied = moved_schedule(plan, schedule)
    if applied is None:
        return None
    if plan.window_junctions:
        # the keys it moved (every junction was listed: "16, 32, …, 592", where one key had moved); the applied
        # entries are the written ones, in order, some left out
        written, moves = iter(schedule.entries), []
        for entry in applied.entries:
            given = next((g for g in written if g.prompt == entry.prompt), entry)
            if given.start != entry.start:
                moves.append((given.start, entry.start))
        how = (f"each window of {plan.segment_length} frames is refined with the prompt at its centre frame, so a "
               f"prompt starts at the nearest window junction"
               + (": " + ", ".join(f"frame {a} → {b}" for a, b in moves) if moves else ""))
    else:
        how = (f"the one window of {plan.segment_length} frames is refined with the prompt at its centre frame, "
               f"{window_centre(plan.windows[0])}")
    unused = unused_entries_text(plan, schedule)
    return f"as ConFiner-Long applies it ({how}):\n{render_schedule(applied)}" + (f"\n{unused}" if unused else "")


@dataclass
class LongState:
    """Everything the long loop carries from one window to the next, taken after a finished window: resuming from
    it continues bit-identically (every task's random draws come from its own :func:`task_generator`, so no
    generator state is needed).

    ``structures``: the control structure the next window starts from (the last one made); ``guidance``: coherence
    guidance's memory of it (its eps per control step; empty when off); ``anchor``: colour anchoring's reference, the
    statistics of the last window's end as delivered (None when off); ``evaluations`` / ``forwards`` /
    ``vae_calls``: the expert evaluations, network forwards and VAE calls between experts (per stage) that the
    finished windows and that structure cost (:meth:`counts`, as :class:`~confiner_core.experts.EvaluationLog`'s).
    ``settings``: what the run was asked (:func:`run_settings`), so that a resume with others is refused; empty in a
    state read back from a resume folder, whose store compares the command's settings itself."""

    next_window: int
    structures: dict = field(default_factory=dict)
    guidance: dict = field(default_factory=dict)
    anchor: torch.Tensor | None = None
    evaluations: Counter = field(default_factory=Counter)
    forwards: Counter = field(default_factory=Counter)
    vae_calls: Counter = field(default_factory=Counter)
    settings: dict = field(default_factory=dict)

    def counts(self) -> dict[str, Counter]:
        return counts_of(self)


def run_settings(seed: int, plan: SegmentPlan, long: LongConfig, chain: ChainConfig,
                 prompts: PromptSchedule | None) -> dict:
    """What a long run was asked that its windows depend on, as flat keys (``"long.gamma": 0.1``). The long config's
    segment length and staggering are the plan's (None, "the plan's", and the plan's own value run alike)."""
    long = replace(long, segment_length=plan.segment_length, staggered=plan.staggered)
    return flatten({"seed": seed, "plan": {"frames": plan.frames, "segment_length": plan.segment_length,
                                           "staggered": plan.staggered},
                    "long": asdict(long), "chain": asdict(chain),
                    "prompts": None if prompts is None else [[e.start, e.prompt] for e in prompts.entries]})


def check_resume(state: LongState, plan: SegmentPlan, structure_shape: tuple, settings: dict) -> None:
    """A state from another plan or other experts would fail deep in the loop (or finish nothing), and one of a run
    with other settings (``settings``: :func:`run_settings`) would go on as another video, joined to the first
    one's windows without a word: refused first."""
    if not isinstance(state, LongState):
        raise TypeError(f"generate_long: resume must be the LongState that on_window_done received, got "
                        f"{type(state).__name__}")
    if not 0 <= state.next_window <= len(plan.windows):
        raise ValueError(f"resume continues at window {state.next_window}, but this plan has {len(plan.windows)} "
                         f"windows: resume with the state of this plan's run")
    for i, x in state.structures.items():
        if tuple(x.shape) != tuple(structure_shape) or not 0 <= i < plan.structures:
            raise ValueError(f"resume holds structure {i} of shape {list(x.shape)}, but this plan makes "
                             f"{plan.structures} structures of shape {list(structure_shape)}: resume with the state "
                             f"of this plan's run (the same frames, segment length and experts)")
    changed = [f"{k} {state.settings.get(k)!r} -> {v!r}" for k, v in settings.items()
               if state.settings and state.settings.get(k) != v]
    if changed:
        raise ValueError(f"resume is the state of a run with other settings ({'; '.join(changed)}): its windows "
                         f"would be joined to another video's; resume with that run's seed, plan, configs and prompts")


class Solo:
    """The place of a single process in a long run: it owns every task and never communicates.
    :class:`confiner_core.distributed.Ranks` is the same interface for several processes."""

    rank, world = 0, 1

    def send(self, dst: int, channel: str, tensors: list, meta: dict | None = None) -> None:
        raise RuntimeError("a single process sends nothing")

    def recv(self, src: int, channel: str) -> tuple[list, dict]:
        raise RuntimeError("a single process receives nothing")

    def flush(self) -> None:
        pass


SOLO = Solo()
# Message channels between processes (confiner_core.distributed gives each direction of each its own queue):
RING = "ring"      # rank r -> r+1 (mod N): coherence memory per control step, then finished structures
RESULT = "result"  # rank q -> 0: finished windows, in window order


def structure_owner(i: int, world: int) -> int:
    """Structures are dealt round-robin: with coherence guidance structure i's step k needs structure i-1's step k,
    so N processes making N consecutive structures run a wavefront one control step apart."""
    return i % world


def window_refiner(plan: SegmentPlan, w: int, world: int) -> int:
    """Window w is refined where its last structure was made (staggered: S_{w+1}, which needs S_w's every step
    first, so S_w is finished by then and arrives from the previous rank along the same ring as the memory)."""
    return structure_owner(plan.windows[w].parts[-1][0], world)


def first_windows(plan: SegmentPlan) -> dict:
    """structure -> the first window that uses it (whose cost the structure's evaluations are counted with)."""
    first: dict = {}
    for window in plan.windows:
        for i, _, _ in window.parts:
            first.setdefault(i, window.index)
    return first


def add_counts(a: dict, b: dict) -> dict[str, Counter]:
    return {name: a[name] + Counter(b.get(name, {})) for name in COUNTERS}


@contextlib.contextmanager
def _tally(log, costs: dict, key: tuple):
    """What the block cost (the log's counts, per stage), kept as ``costs[key]``."""
    before = counts_of(log)
    yield
    after = counts_of(log)
    costs[key] = {name: after[name] - before[name] for name in COUNTERS}


@dataclass
class _Finished:
    latent: torch.Tensor
    prepared: torch.Tensor | None
    structure: int
    kept: torch.Tensor
    memory: dict
    counts: dict   # what the window and the structures counted with it cost: name -> Counter per stage


def generate_long(control: Denoiser, spatial: Denoiser | None, temporal: Denoiser | None, plan: SegmentPlan,
                  frame_shape: tuple, chain: ChainConfig, long: LongConfig, seed: int | torch.Generator,
                  sink: Callable,
                  prompts: PromptSchedule | None = None, callback: Callable | None = None,
                  device: str | torch.device = "cpu", resume: LongState | None = None,
                  on_window_done: Callable[[LongState], None] | None = None, prepare: Callable | None = None,
                  ranks: Solo | None = None) -> LongState | None:
    """Generate ``plan`` window by window. ``sink(latent, window)`` receives each finished window as a whole clip
    in the refining expert's latent space, in window order; the first ``window.out_stop - window.out_start`` frames
    of its decode are output frames (the last window may be cut short). ``frame_shape`` is (B, C, h, w) of one latent
    frame in the control expert's space, or a latent video's (B, C, F, h, w) there, e.g. its latent space's
    ``latent_shape(...)`` (the plan decides the frames). ``seed`` (an int, or a generator standing for its initial
    seed) seeds every task's own generator (:func:`task_generator`).

    ``prompts`` (a schedule, ``parse_prompt("0: a cat | 8: a dog", frames)``): each structure and window is made
    with the entry at its centre frame in place of the prompt the experts were bound to (their negative prompt and
    guidance stay); None keeps the bound prompt throughout.

    ``callback(info)`` is called after every step, as :func:`~confiner_core.chain.run_chain`'s, with the
    ``structure`` or ``window`` the step belongs to added (on the process that made it).

    ``prepare(latent, window)``, if given, runs where the window was refined and its tensor is passed on:
    ``sink(latent, window, prepared)`` (the command line decodes there). With colour anchoring, which shifts each
    window by what its predecessors became, windows are anchored on rank 0 in window order and prepared there. ``on_window_done(state)`` is called after
    each window's sink with the :class:`LongState` to continue from; passing such a state as ``resume`` skips the
    finished windows (with the same seed, plan, configs and prompts: a state remembers its run's, and refuses others).

    ``ranks`` (default: one process) spreads the work over processes (:mod:`confiner_core.distributed`): structure
    i is made by rank i mod N, window w refined by the rank of its last structure, and rank 0 calls ``sink`` and
    ``on_window_done`` in window order. Every rank calls this with the same arguments (``sink`` matters on rank 0
    only). Returns, on rank 0, the state after the last window (its counts are the whole video's)."""
    for name, value, kind in (("plan", plan, SegmentPlan), ("long", long, LongConfig),
                              ("chain", chain, ChainConfig)):
        if not isinstance(value, kind):   # (a dict of settings failed later, inside, without naming the argument)
            raise TypeError(f"generate_long: {name} must be a {kind.__name__}, got {type(value).__name__}")
    long.validate()
    check_device(device, "generate_long: device")   # (torch's "Torch not compiled with CUDA enabled", at the noise)
    check_function(sink, "generate_long", "sink(latent, window, prepared)" if prepare is not None else
                   "sink(latent, window)", optional=False)
    for fn, call in ((prepare, "prepare(latent, window)"), (callback, "callback(info)"),
                     (on_window_done, "on_window_done(state)")):
        check_function(fn, "generate_long", call)
    if prompts is not None and not isinstance(prompts, PromptSchedule):   # (a str failed as "has no attribute")
        raise TypeError(f"generate_long: prompts must be a PromptSchedule, e.g. "
                        f"confiner_core.prompts.parse_prompt(text, {plan.frames}), got {type(prompts).__name__}")
    if long.segment_length is not None and long.segment_length != plan.segment_length:
        raise ValueError(f"long.segment_length is {long.segment_length} but the plan's segments have "
                         f"{plan.segment_length} frames: plan with plan_segments(frames, {long.segment_length}), or "
                         f"leave segment_length None")
    if long.staggered is not None and long.staggered != plan.staggered:   # (the plan's windows ran, without a word)
        said = "staggered" if plan.staggered else "not staggered"
        raise ValueError(f"long.staggered is {long.staggered} but the plan's windows are {said}: generate_long "
                         f"follows its plan, so plan with plan_segments(frames, {plan.segment_length}, "
                         f"staggered={long.staggered}), or leave long.staggered None")
    if long.color_anchor and not plan.staggered:
        raise ValueError("color_anchor anchors a window to the rest of the structure its predecessor ended in, which "
                         "only a staggered plan has: plan with plan_segments(..., staggered=True) or switch "
                         "color_anchor off")
    ranks = ranks or SOLO
    me, world = ranks.rank, ranks.world
    seed = root_seed(seed)
    if len(frame_shape) not in (4, 5):
        raise ValueError(f"frame_shape is (B, C, h, w) of one latent frame in the control expert's space, or "
                         f"(B, C, F, h, w) of a latent video there, got {tuple(frame_shape)}")
    if prompts is not None and prompts.frames != plan.frames:
        raise ValueError(f"prompts cover {prompts.frames} frames but the plan has {plan.frames}: parse the schedule "
                         f"for the plan's frames (parse_prompt(text, {plan.frames}))")
    b, c, h, w = (*frame_shape[:2], *frame_shape[-2:])   # (a video shape's frames: the plan's)
    if b != 1:   # (a batch drew its clips from one task generator each: clip 0 was not its seed's video alone)
        raise ValueError(f"generate_long makes one video, but frame_shape has a batch of {b}: use batch 1 and call it "
                         f"once per seed (as the Long Video node takes one)")
    shape = (b, c, control.expert.latent_space.latent_frames(plan.segment_length), h, w)
    check_denoisers("generate_long", control=control, spatial=spatial, temporal=temporal)
    check_channels(shape, control, "generate_long: frame_shape",
                   "use control.expert.latent_space.latent_shape(batch, frames, height, width)")
    evaluated = evaluated_roles(spatial, temporal, chain.mode)   # (an expert the mode never calls: no rule, no prompt)
    check_segment_length(plan.segment_length, {"control": control, **evaluated}, "the plan's segment_length")
    check_freenoise_span(long, shape[2])
    validate_chain(control, spatial, temporal, shape, chain)
    for sentence in unused_long_settings(long, plan.structures, shape[2]) + \
            [video_frames_window(long, plan.segment_length, shape[2])]:
        if sentence:
            warn_doubtful(sentence)
    unused = unused_entries_text(plan, prompts) if prompts is not None and prompts.travels else None
    if unused:   # (as generate() warns: a script's "20: a blue ball" never reached the video, and nothing said so)
        warn_doubtful(unused.removeprefix("warning: "))
    spatial = stand_in_spatial(spatial, temporal, chain.mode)
    refiner = refining_denoiser(spatial, temporal, chain.mode)
    check_window_join(control, refiner, staggered=plan.staggered)
    anchored = anchor_frames(plan, refiner)
    prepare_where_refined = prepare is not None and not long.color_anchor
    noise = StructureNoise(long.noise_init, shape, plan.structures, task_generator(seed, SHARED_NOISE_TASK),
                           *freenoise_span(long, shape[2]))
    guided = long.gamma > 0
    log = control.log
    first = first_windows(plan)
    # the chain's defaults as the experts settle them: T_e None and 100 (SD's default) make one video, and a resume
    # that gave it was refused as "other settings"
    asked = run_settings(seed, plan, long, settled(chain, spatial, temporal), prompts)
    if resume is not None:
        check_resume(resume, plan, shape, asked)
    start = resume.next_window if resume is not None else 0
    if resume is not None:
        if start == len(plan.windows):   # every window was finished: nothing to do, the state is the whole video's
            return resume if me == 0 else None
    remaining = plan.windows[start:]

    structures: dict[int, torch.Tensor] = {}  # structures this rank holds: made here or received
    memories: dict[int, dict] = {}            # coherence memory of structures made here
    pixels: dict[int, torch.Tensor] = {}
    costs: dict[tuple, dict] = {}              # ("structure", i) / ("window", w) -> what it cost (counts_of())
    finished: dict[int, _Finished] = {}        # rank 0: refined here, waiting for their turn to be sunk
    bound: dict = {}  # (role, prompt) -> denoiser: each prompt is encoded once per expert, not once per window

    def prompted(d: Denoiser | None, frame: int) -> Denoiser | None:
        if d is None or prompts is None:
            return d
        key = (id(d), prompts.at(frame))
        if key not in bound:
            bound[key] = d.with_prompt(key[1])
        return bound[key]

    def owner(i: int) -> int:
        return structure_owner(i, world)

    def hand_on(i: int) -> None:
        """Send structure i to the ranks that refine a remaining window with it (always the next rank)."""
        for window in remaining:
            if any(j == i for j, _, _ in window.parts) and window_refiner(plan, window.index, world) != me:
                ranks.send(window_refiner(plan, window.index, world), RING, [structures[i]])

    def make(i: int) -> None:
        generator = task_generator(seed, STRUCTURE_TASK, i)
        x_T = noise(i, generator).to(device)
        hook = None
        if guided:
            memory = CoherenceGuidance(long.gamma, long.coherence_memory)
            receive = send = None
            if i - 1 in memories:
                memory.previous = memories[i - 1]
            elif i > 0:
                receive = lambda: ranks.recv(owner(i - 1), RING)[0][0]  # noqa: E731
            if i + 1 < plan.structures and owner(i + 1) != me:
                send = lambda eps: ranks.send(owner(i + 1), RING, [eps])  # noqa: E731
            hook = RelayedGuidance(memory, receive, send)
        with _tally(log, costs, ("structure", i)), in_stage(log, "control"):
            structures[i] = control_stage(prompted(control, structure_centre(plan, i)), x_T, chain, generator,
                                          hook, tagged(callback, structure=i))
        if guided:
            memories[i] = hook.guidance.current
        hand_on(i)

    def refine(window: Window) -> _Finished:
        for i, _, _ in window.parts:
            if i not in structures:
                structures[i] = ranks.recv(owner(i), RING)[0][0].to(device)
        generator = task_generator(seed, WINDOW_TASK, window.index)
        centre = window_centre(window)
        with _tally(log, costs, ("window", window.index)), in_stage(log, "refine"):
            latent = window_latent(structures, window.parts, control, refiner, pixels)
            refined = refine_structure(prompted(spatial, centre) if "spatial" in evaluated else spatial,
                                       prompted(temporal, centre) if "temporal" in evaluated else temporal, latent,
                                       chain, generator, tagged(callback, window=window.index),
                                       control_schedule=control.schedule)
        last = window.parts[-1][0]
        counts = costs.pop(("window", window.index))
        for i in [i for i, v in first.items() if v == window.index and owner(i) == me]:
            counts = add_counts(counts, costs.pop(("structure", i)))
        return _Finished(refined, prepare(refined, window) if prepare_where_refined else None, last,
                         structures[last], memories.get(last, {}), counts)

    # -- rank 0: sink the windows in order ------------------------------------------------------------------------
    totals = [counts_of(resume)]
    state = [None]
    next_sink = [start]
    anchor = [resume.anchor if resume is not None else None]
    # the schedule entry each window is refined with: a window whose prompt is not its predecessor's starts a new
    # reference (anchored across the change, a travelling prompt's red ball stayed red where it asked for blue)
    entries = window_entries(plan, prompts) if prompts is not None else [0] * len(plan.windows)

    def receive_finished(w: int) -> _Finished:
        tensors, meta = ranks.recv(window_refiner(plan, w, world), RESULT)
        if meta["window"] != w:
            raise RuntimeError(f"rank 0 expected window {w} but received window {meta['window']}")
        latent, rest = tensors[0].to(device), tensors[1:]
        prepared = rest.pop(0) if meta["prepared"] else None
        kept = rest.pop(0).to(device)
        memory = dict(zip(meta["steps"], rest.pop(0).to(device).unbind(0))) if meta["steps"] else {}
        return _Finished(latent, prepared, meta["structure"], kept, memory, add_counts(counts_of(), meta["counts"]))

    def deliver(limit: int) -> None:
        """Sink windows in order: those refined here as soon as it is their turn, the others' (waiting for them)
        up to ``limit``."""
        while next_sink[0] < len(plan.windows):
            w = next_sink[0]
            if w in finished:
                result = finished.pop(w)
            elif w <= limit and window_refiner(plan, w, world) != me:
                result = receive_finished(w)
                for i in [i for i, v in first.items() if v == w and owner(i) == me]:
                    # structures made here, counted with another's window
                    result.counts = add_counts(result.counts, costs.pop(("structure", i)))
            else:
                return
            window = plan.windows[w]
            if long.color_anchor:  # a scan over the windows in order: each is shifted to what its predecessor became
                if anchor[0] is not None and (w == 0 or entries[w] == entries[w - 1]):
                    result.latent = anchor_window(result.latent, anchored, anchor[0].to(result.latent.device))
                anchor[0] = channel_statistics(result.latent[:, :, result.latent.shape[2] - anchored:])
                if prepare is not None:
                    result.prepared = prepare(result.latent, window)
            if prepare is not None:
                sink(result.latent, window, result.prepared)
            else:
                sink(result.latent, window)
            totals[0] = add_counts(totals[0], result.counts)
            state[0] = LongState(w + 1, {result.structure: result.kept}, dict(result.memory), anchor[0],
                                 **totals[0], settings=asked)
            next_sink[0] = w + 1
            if on_window_done is not None:
                on_window_done(state[0])

    def send_finished(window: Window, result: _Finished) -> None:
        steps = sorted(result.memory)
        tensors = [result.latent] + ([result.prepared] if result.prepared is not None else []) + [result.kept]
        if steps:
            tensors.append(torch.stack([result.memory[k] for k in steps]))
        ranks.send(0, RESULT, tensors, {"window": window.index, "prepared": result.prepared is not None,
                                        "structure": result.structure, "steps": steps,
                                        "counts": {name: dict(c) for name, c in result.counts.items()}})

    # -- resume: the last structure made before the interruption is its owner's again ------------------------------
    made = -1
    if resume is not None and resume.structures:
        made = max(resume.structures)
        if owner(made) == me:
            structures[made] = resume.structures[made].to(device)
            if guided and resume.guidance:
                memories[made] = {k: v.to(device) for k, v in resume.guidance.items()}
                if made + 1 < plan.structures and owner(made + 1) != me:
                    for k in sorted(memories[made]):
                        ranks.send(owner(made + 1), RING, [memories[made][k]])
            hand_on(made)

    # -- the loop: every rank walks the same windows and does its share --------------------------------------------
    for window in remaining:
        for i, _, _ in window.parts:
            if i > made:
                if owner(i) == me:
                    make(i)
                made = i
        if window_refiner(plan, window.index, world) == me:
            result = refine(window)
            if me == 0:
                finished[window.index] = result
            else:
                send_finished(window, result)
        last = window.parts[-1][0]
        for store in (structures, memories, pixels):  # bounded memory: nothing before the last structure survives
            for i in [k for k in store if k < last]:
                del store[i]
        if me == 0:
            # others' windows are awaited a round late (N windows), when they are done: rank 0 never idles for them
            deliver(window.index - (world if world > 1 else 0))
    if me == 0:
        deliver(len(plan.windows))
    ranks.flush()
    return state[0]
