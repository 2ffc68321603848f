"""ConFiner-Long (Section 3.5): many short segments made consistent by three strategies.

* consistency initialization -- every structure's noise is a frame permutation of one base noise
  (:func:`shuffled_noise`), or FreeNoise-style rescheduling (:func:`freenoise`);
* coherence guidance, Eq. 12 -- each control step's eps is pulled towards the previous structure's eps at the same
  step (:func:`coherence_guidance`, :class:`CoherenceGuidance`);
* staggered refinement, Eq. 13 -- refinement windows straddle every structure junction (:func:`plan_segments`).

:func:`generate_long` runs them while holding at most two structures: each window is refined and handed to a
callback (decode, write) as soon as it is final, so memory does not grow with the number of frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .chain import ChainConfig, refining_denoiser, generate_structure, refine_structure, validate_chain
from .experts import Denoiser, in_stage
from .prompts import PromptSchedule

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


@dataclass(frozen=True)
class SegmentPlan:
    frames: int
    segment_length: int
    staggered: bool
    structures: int
    windows: tuple

    def window_frames(self, window: "Window") -> int:
        return window.out_stop - window.out_start

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
    def junctions(self) -> list[int]:
        return sorted(set(self.window_junctions) | set(self.structure_junctions))

    def as_dict(self) -> dict:
        return {"frames": self.frames, "segment_length": self.segment_length, "staggered": self.staggered,
                "structures": self.structures,
                "windows": [{"parts": [list(p) for p in w.parts], "frames": [w.out_start, w.out_stop]}
                            for w in self.windows],
                "window_junctions": self.window_junctions, "structure_junctions": self.structure_junctions}


def plan_segments(frames: int, segment_length: int = 16, staggered: bool = True) -> SegmentPlan:
    """Structures of length L (pixel frames) and the refinement windows over them.

    Staggered (Eq. 13): window w is S_w[L/2:L] + S_{w+1}[0:L/2] (L/2 rounded down, so causal video spaces can use
    4k+1 frames), so every structure junction is refined jointly.
    The plan makes one structure more than windows; the first half of the first structure and the last half of the
    last are never refined or shown (a 4-step control pass is cheap, and this keeps every window at full length L,
    the clip length temporal experts are trained on). Window junctions fall mid-structure, where the control expert
    already made the content continuous. Not staggered: window w is structure w alone.
    In both cases every output frame comes from exactly one window."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if segment_length < 2:
        raise ValueError(f"segment_length must be >= 2, got {segment_length}")
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

def shuffled_noise(base: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Consistency initialization: a random permutation of the frame axis (dim 2) of the base noise."""
    perm = torch.randperm(base.shape[2], generator=generator, device=generator.device).to(base.device)
    return base[:, :, perm]


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
    """Initial noise per structure for the chosen initialization; draws only from the explicit generator."""

    def __init__(self, kind: str, shape: tuple, structures: int, generator: torch.Generator,
                 window: int = 16, stride: int = 4):
        if kind not in NOISE_INITS:
            raise ValueError(f"noise init must be one of {NOISE_INITS}, got {kind!r}")
        self.kind, self.shape, self.generator = kind, shape, generator
        if kind == SHUFFLE:
            self.base = torch.randn(shape, generator=generator, device=generator.device)
        elif kind == FREENOISE:
            b, c, f, h, w = shape
            self.sequence = freenoise((b, c, f * structures, h, w), window, stride, generator)

    def __call__(self, i: int) -> torch.Tensor:
        if self.kind == SHUFFLE:
            return shuffled_noise(self.base, self.generator)
        if self.kind == FREENOISE:
            f = self.shape[2]
            return self.sequence[:, :, i * f:(i + 1) * f]
        return torch.randn(self.shape, generator=self.generator, device=self.generator.device)


# ----------------------------------------------------------------------------------------------------------------
# Coherence guidance (Eq. 12)

# What the next structure is pulled towards. Eq. 12 writes the previous segment's noise without a hat, eps^prev_t:
# its *guided* prediction, the eps_t the previous segment really stepped with (the paper's reading, default). The
# alternative keeps its raw prediction eps_hat^prev_t, so guidance does not compound along the chain of segments.
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
    prediction per control step (all the next structure needs): the guided one (``memory='guided'``, Eq. 12 as
    printed) or the unguided one (``'unguided'``)."""

    def __init__(self, gamma: float, memory: str = GUIDED):
        if memory not in COHERENCE_MEMORIES:
            raise ValueError(f"coherence memory must be one of {COHERENCE_MEMORIES}, got {memory!r}")
        self.gamma, self.memory = gamma, memory
        self.previous: dict[int, torch.Tensor] = {}
        self.current: dict[int, torch.Tensor] = {}

    def __call__(self, step: int, t: float, x_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        guided = coherence_guidance(eps, self.previous[step], self.gamma) if step in self.previous else eps
        self.current[step] = guided if self.memory == GUIDED else eps
        return guided

    def next_structure(self) -> None:
        self.previous, self.current = self.current, {}


# ----------------------------------------------------------------------------------------------------------------
# The long loop

@dataclass
class LongConfig:
    """Defaults: L = 16 (the clip length of AnimateDiff/ModelScope), all three strategies on, coherence guidance
    towards the previous segment's guided prediction (Eq. 12 as printed)."""

    segment_length: int | None = 16  # None: the caller picks the experts' natural clip (generate: 16 or 17)
    noise_init: str = SHUFFLE
    freenoise_window: int = 16
    freenoise_stride: int = 4
    gamma: float = 0.1
    staggered: bool = True
    coherence_memory: str = GUIDED
    color_anchor: bool = False  # opt-in: anchor each window's colour statistics to its predecessor's (colour drift)

    def validate(self) -> None:
        if self.noise_init not in NOISE_INITS:
            raise ValueError(f"noise_init must be one of {NOISE_INITS}, got {self.noise_init!r}")
        if not (0.0 <= self.gamma <= 0.5):
            raise ValueError(f"gamma must lie in [0, 0.5] (0.5 copies the previous eps outright), got {self.gamma}")
        if self.coherence_memory not in COHERENCE_MEMORIES:
            raise ValueError(f"coherence_memory must be one of {COHERENCE_MEMORIES}, got {self.coherence_memory!r}")
        if self.color_anchor and not self.staggered:
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


def window_split(plan: "SegmentPlan", refiner: Denoiser) -> tuple[int, int]:
    """(head, tail): the latent frames at the start and at the end of a window whose statistics colour anchoring
    matches across the junction (:data:`ANCHOR_FRAMES`, fewer for short windows)."""
    total = refiner.expert.latent_space.latent_frames(plan.segment_length)
    n = max(1, min(ANCHOR_FRAMES, total // 4))
    return n, n


WindowSink = Callable[[torch.Tensor, Window], None]


def joins_in_latent_space(source: Denoiser, target: Denoiser) -> bool:
    """Pieces of clips join by concatenating latent frames only within one space whose latent frames are pixel
    frames (SD-style VAEs encode frames independently); anything else goes through pixels."""
    space = source.expert.latent_space
    return space == target.expert.latent_space and space.temporal_factor == 1


def check_window_join(source: Denoiser, target: Denoiser, vae_fixes: dict | None = None) -> None:
    """Before anything runs: windows that must be joined through pixels need both experts' VAEs. ``vae_fixes``:
    role ("control", "refining") -> how the user gives that expert its VAE, for the message."""
    if joins_in_latent_space(source, target):
        return
    for role, d in (("control", source), ("refining", target)):
        if d.expert.codec is None:
            fix = (vae_fixes or {}).get(role)
            raise ValueError(f"ConFiner-Long joins pieces of {source.expert.latent_space.name!r} structures into "
                             f"{target.expert.latent_space.name!r} windows through pixels (a causal video VAE "
                             f"cannot cut latents at any frame): the {role} expert needs its VAE"
                             + (f"; {fix}" if fix else ""))


def window_latent(structures: dict, parts: tuple, source: Denoiser, target: Denoiser, pixels: dict) -> torch.Tensor:
    """Eq. 13's window S_w[L/2:] + S_{w+1}[:L/2] as a clip in the refining expert's latent space. ``parts`` are
    (structure, first pixel frame, end pixel frame); ``pixels`` caches decoded structures (each is used by two
    windows). Causal spaces (Wan) cannot be cut in latent frames, so the pieces are decoded, joined as pixel frames
    and encoded as a fresh clip -- which also hands them to another expert's space when the refiner's differs."""
    if joins_in_latent_space(source, target):
        return torch.cat([structures[i][:, :, a:e] for i, a, e in parts], dim=2)
    decoded = [i for i, _, _ in parts if i not in pixels]
    for i in decoded:
        pixels[i] = source.expert.codec.decode(structures[i])
    if source.log is not None:
        source.log.record_vae(len(decoded) + 1)
    return target.expert.codec.encode(torch.cat([pixels[i][:, :, a:e] for i, a, e in parts], dim=2))


def structure_centre(plan: SegmentPlan, i: int) -> int:
    """Output frame at the middle of structure i (for picking its prompt). Staggered, structure i covers output
    frames [i L - L/2, i L + L/2); otherwise [i L, (i + 1) L)."""
    L = plan.segment_length
    return max(0, min(plan.frames - 1, i * L + (0 if plan.staggered else L // 2)))


@dataclass
class LongState:
    """Everything the long loop carries from one window to the next, taken after a finished window: resuming from
    it continues bit-identically (the noise source is redrawn from the same seed before the state is restored).

    ``structures``: the control structures still needed (at most one); ``guidance``: coherence guidance's memory
    (the previous structure's eps per control step; empty when off); ``generator_state``: the seeded generator;
    ``anchor``: colour anchoring's reference statistics (None when off)."""

    next_window: int
    structures: dict = field(default_factory=dict)
    guidance: dict = field(default_factory=dict)
    generator_state: torch.Tensor | None = None
    anchor: torch.Tensor | None = None


def generate_long(control: Denoiser, spatial: Denoiser, temporal: Denoiser | None, plan: SegmentPlan,
                  frame_shape: tuple, chain: ChainConfig, config: LongConfig, generator: torch.Generator,
                  sink: WindowSink, prompts: PromptSchedule | None = None,
                  callback: Callable | None = None, device: str | torch.device = "cpu",
                  resume: LongState | None = None,
                  on_window_done: Callable[[LongState], None] | None = None) -> None:
    """Generate ``plan`` window by window. ``sink(latent, window)`` receives each finished window as a whole clip
    in the refining expert's latent space; the first ``window.out_stop - window.out_start`` frames of its decode are
    output frames (the last window may be cut short). ``frame_shape`` is (B, C, h, w) of one latent frame in the
    control expert's space.

    ``on_window_done(state)`` is called after each window's sink with the :class:`LongState` to continue from;
    passing such a state as ``resume`` (with a generator seeded as for the first run) skips the finished windows."""
    config.validate()
    b, c, h, w = frame_shape
    shape = (b, c, control.expert.latent_space.latent_frames(plan.segment_length), h, w)
    validate_chain(control, spatial, temporal, shape, chain)
    refiner = refining_denoiser(spatial, temporal, chain.mode)
    check_window_join(control, refiner)
    noise = StructureNoise(config.noise_init, shape, plan.structures, generator, config.freenoise_window,
                           config.freenoise_stride)
    guidance = CoherenceGuidance(config.gamma, config.coherence_memory) if config.gamma > 0 else None
    structures: dict[int, torch.Tensor] = {}
    pixels: dict[int, torch.Tensor] = {}
    log = control.log

    bound: dict = {}  # (role, prompt) -> denoiser: each prompt is encoded once per expert, not once per window

    def prompted(d: Denoiser | None, frame: int) -> Denoiser | None:
        if d is None or prompts is None:
            return d
        key = (id(d), prompts.at(frame))
        if key not in bound:
            bound[key] = d.with_prompt(key[1])
        return bound[key]

    head, tail = window_split(plan, refiner)
    anchor = None
    if resume is not None:
        anchor = resume.anchor
        structures = {i: x.to(device) for i, x in resume.structures.items()}
        if guidance is not None:
            guidance.previous = {step: eps.to(device) for step, eps in resume.guidance.items()}
        generator.set_state(resume.generator_state)

    for window in plan.windows[resume.next_window if resume is not None else 0:]:
        for i, _, _ in window.parts:
            if i not in structures:
                with in_stage(log, "control"):
                    structures[i] = generate_structure(prompted(control, structure_centre(plan, i)),
                                                       noise(i).to(device), chain, generator, guidance, callback)
                if guidance is not None:
                    guidance.next_structure()
        centre = (window.out_start + window.out_stop) // 2
        with in_stage(log, "refine"):
            latent = window_latent(structures, window.parts, control, refiner, pixels)
            refined = refine_structure(prompted(spatial, centre), prompted(temporal, centre), latent, chain,
                                       generator, callback, control_schedule=control.schedule)
        if config.color_anchor:
            if anchor is not None:
                refined = anchor_window(refined, head, anchor)
            anchor = channel_statistics(refined[:, :, refined.shape[2] - tail:])
        sink(refined, window)
        last = window.parts[-1][0]
        for i in [k for k in structures if k < last]:
            del structures[i]  # bounded memory: only the structure the next window starts from survives
            pixels.pop(i, None)
        if on_window_done is not None:
            on_window_done(LongState(window.index + 1, dict(structures),
                                     dict(guidance.previous) if guidance is not None else {},
                                     generator.get_state(), anchor))

