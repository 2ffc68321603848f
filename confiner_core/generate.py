"""One call from settings to files: build the experts, run the chain (or ConFiner-Long), decode, write.

Used by the command line (``python -m confiner_core generate``) and by scripts.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics
from .chain import ChainConfig, run_chain
from .experts import EvaluationLog
from .long import LongConfig, PromptSchedule, generate_long, plan_segments
from .video_io import VideoSink, contact_sheet, write_png


@dataclass
class GenerateRequest:
    prompt: str = ""
    negative_prompt: str = ""
    frames: int = 16
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
    fps: float = 8.0
    device: str = "cpu"
    speed: str = "eager"  # diffusers experts: "eager" or "fast" (channels_last, cuDNN autotuning, torch.compile)
    chain: ChainConfig = field(default_factory=ChainConfig)
    long: LongConfig = field(default_factory=LongConfig)

    @property
    def is_long(self) -> bool:
        """Long mode (ConFiner-Long) as soon as the video is longer than one segment, or prompts travel."""
        return self.frames > self.long.segment_length or "|" in self.prompt

    @property
    def embedded(self) -> bool:
        return not (self.control or self.spatial or self.temporal)

    def validate(self) -> None:
        if self.frames < 1:
            raise ValueError(f"--frames must be >= 1, got {self.frames}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v < 64 or v % 8:
                raise ValueError(f"--{name} must be a multiple of 8 and at least 64, got {v}")
        given = [p for p in (self.control, self.spatial, self.temporal) if p]
        if given and not (self.control and self.spatial and (self.temporal or self.chain.mode == "standard")):
            raise ValueError("real checkpoints need --control and --spatial, and --temporal unless --mode standard; "
                             "give none of them to use the embedded default")
        for p in given + ([self.base] if self.base else []):
            if not os.path.exists(p):
                raise FileNotFoundError(f"checkpoint path {p!r} does not exist")
        if self.speed not in ("eager", "fast"):
            raise ValueError(f"--speed must be 'eager' or 'fast', got {self.speed!r}")
        self.chain.validate()
        self.long.validate()
        if self.is_long:
            PromptSchedule.parse(self.prompt)


@dataclass
class Backend:
    experts: dict
    decode: Callable  # canonical latent -> uint8 [B, F, H, W, 3]
    refine_cfg: float
    description: str


def load_backend(req: GenerateRequest) -> Backend:
    if req.embedded:
        from .embedded.experts import decode, embedded_experts

        return Backend(embedded_experts(), decode, 1.0 if req.refine_cfg is None else req.refine_cfg,
                       "embedded default: exact posterior-mean experts over a procedural video world")
    from .diffusers_backend import load_experts

    from .diffusers_backend.speed import PRESETS

    loaded = load_experts(control=req.control, spatial=req.spatial, temporal=req.temporal, base=req.base,
                          device=req.device, speed=PRESETS[req.speed])
    return Backend(loaded.experts, loaded.decode, 7.5 if req.refine_cfg is None else req.refine_cfg,
                   "diffusers checkpoints")


def bind_experts(backend: Backend, req: GenerateRequest, log: EvaluationLog, prompt: str) -> dict:
    ex = backend.experts
    bound = {"control": ex["control"].bind(prompt, req.negative_prompt, req.control_cfg, log),
             "spatial": ex["spatial"].bind(prompt, req.negative_prompt, backend.refine_cfg, log)}
    bound["temporal"] = (ex["temporal"].bind(prompt, req.negative_prompt, backend.refine_cfg, log)
                         if ex.get("temporal") is not None else None)
    return bound


def latent_shape(req: GenerateRequest, channels: int, frames: int) -> tuple:
    return (1, channels, frames, req.height // 8, req.width // 8)


def progress_callback(bar: tqdm):
    def callback(info: dict) -> None:
        bar.set_postfix_str(f"{info['stage']} t={info['t']}")
        bar.update(1)
    return callback


def generate(req: GenerateRequest, show_progress: bool = True) -> dict:
    """Run the request and write ``video.mp4``, ``frames.png`` and ``report.json`` under ``req.out``.
    Returns the report."""
    req.validate()
    os.makedirs(req.out, exist_ok=True)
    t_start = time.perf_counter()
    backend = load_backend(req)
    log = EvaluationLog()
    prompt = PromptSchedule.parse(req.prompt).at(0) if req.is_long else req.prompt
    d = bind_experts(backend, req, log, prompt)
    seconds = {"load": time.perf_counter() - t_start}
    generator = torch.Generator().manual_seed(req.seed)
    channels = d["spatial"].expert.latent_channels
    stats = StreamStats()
    with VideoSink(os.path.join(req.out, "video.mp4"), req.fps, req.frames) as sink:
        def emit(latent: torch.Tensor, frames_kept: int | None = None) -> None:
            t0 = time.perf_counter()
            frames = backend.decode(latent)[0, :frames_kept].cpu().numpy()
            sink.write(frames)
            stats.add(frames)
            seconds["decode_and_write"] = seconds.get("decode_and_write", 0.0) + time.perf_counter() - t0

        extra = {}
        if req.is_long:
            extra = run_long(req, d, channels, generator, emit, show_progress)
        else:
            noise = torch.randn(latent_shape(req, channels, req.frames), generator=generator).to(req.device)
            steps = req.chain.control_steps + req.chain.refine_steps
            with tqdm(total=steps, desc="ConFiner", disable=not show_progress) as bar:
                result = run_chain(d["control"], d["spatial"], d["temporal"], noise, req.chain, generator,
                                   progress_callback(bar))
            seconds.update(result.seconds)
            emit(result.latent)
    write_png(os.path.join(req.out, "frames.png"), contact_sheet(sink.sheet))
    seconds["total"] = time.perf_counter() - t_start
    extra["metrics"] = stats.summary(extra.get("segment_plan", {}).get("window_junctions"),
                                     extra.get("segment_plan", {}).get("structure_junctions"))
    report = build_report(req, backend, log, seconds, **extra)
    write_report(req.out, report)
    return report


def run_long(req: GenerateRequest, d: dict, channels: int, generator: torch.Generator, emit, show_progress: bool) -> dict:
    """ConFiner-Long: windows are decoded and written as soon as they are final."""
    plan = plan_segments(req.frames, req.long.segment_length, req.long.staggered)
    steps = plan.structures * req.chain.control_steps + len(plan.windows) * req.chain.refine_steps
    frame_shape = (1, channels, req.height // 8, req.width // 8)
    prompts = PromptSchedule.parse(req.prompt) if "|" in req.prompt else None
    t0 = time.perf_counter()
    with tqdm(total=steps, desc="ConFiner-Long", disable=not show_progress) as bar:
        generate_long(d["control"], d["spatial"], d["temporal"], plan, frame_shape, req.chain, req.long, generator,
                      lambda latent, window: emit(latent, plan.window_frames(window)), prompts,
                      progress_callback(bar), req.device)
    return {"segment_plan": plan.as_dict(), "long": asdict(req.long), "long_seconds": time.perf_counter() - t0}


class StreamStats:
    """Quality figures gathered while frames stream past, in memory independent of the video's length:
    consecutive-frame differences for seam scores, per-window metrics averaged, colour drift against frame 0."""

    def __init__(self):
        self.diffs: list[float] = []
        self.last: np.ndarray | None = None
        self.chunks: list[dict] = []
        self.first_lab: np.ndarray | None = None
        self.drift: list[float] = []

    def add(self, frames: np.ndarray) -> None:
        joined = frames if self.last is None else np.concatenate([self.last[None], frames])
        self.diffs.extend(metrics.consecutive_mae(joined).tolist())
        lab = metrics.to_lab(frames).reshape(len(frames), -1, 3).mean(1)
        if self.first_lab is None:
            self.first_lab = lab[0]
        self.drift.extend(np.linalg.norm(lab - self.first_lab, axis=1).tolist())
        self.chunks.append(metrics.evaluate(frames))
        self.last = frames[-1]

    def summary(self, window_junctions=None, structure_junctions=None) -> dict:
        keys = ("subject_consistency", "motion_smoothness", "temporal_flicker", "sharpness")
        out = {k: float(np.nanmean([c[k] for c in self.chunks])) for k in keys}
        out["color_drift"] = float(np.mean(self.drift[1:])) if len(self.drift) > 1 else 0.0
        out["temporal_flicker"] = float((255 - np.mean(self.diffs)) / 255) if self.diffs else 1.0
        if window_junctions is not None:
            junctions = sorted(set(window_junctions) | set(structure_junctions or []))
            out["seam_score"] = metrics.seam_ratio(self.diffs, junctions)
            out["seam_score_windows"] = metrics.seam_ratio(self.diffs, window_junctions)
            out["seam_score_structures"] = metrics.seam_ratio(self.diffs, structure_junctions)
        return out


def build_report(req: GenerateRequest, backend: Backend, log: EvaluationLog, seconds: dict, **extra) -> dict:
    settings = {k: v for k, v in asdict(req).items() if k != "chain"}
    return {"settings": settings, "chain": req.chain.as_dict(), "seed": req.seed, "frames": req.frames,
            "height": req.height, "width": req.width, "backend": backend.description,
            "experts": {k: e.describe() for k, e in backend.experts.items() if e is not None},
            "expert_evaluations": dict(log.evaluations), "network_forwards": dict(log.forwards),
            "total_expert_evaluations": sum(log.evaluations.values()), "seconds": seconds, **extra}


def write_report(out: str, report: dict) -> None:
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
