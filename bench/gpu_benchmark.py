"""ConFiner against the baselines it claims to beat, on one GPU, with full-size random-weight experts.

Weights do not change compute, so every model is built from its real config with random weights (fp16, or bf16 in
the ``lean_bf16`` table), directly on the GPU: SD 1.5 UNet (860 M), AnimateDiff UNetMotionModel (SD 1.5 + motion
adapter), ModelScope UNet3D (1.4 B), the SD VAE, CLIP-L (SD) and the 1024-wide OpenCLIP-H text encoder (ModelScope).
At 512x512x16 it times, end to end (text encoding, sampling, VAE decode to uint8 frames on the host):

* ConFiner 4+5 coordinated (control cfg 1.0, refinement cfg 7.5) with ModelScope as temporal expert (the paper's
  set-up) and with an AnimateDiff motion model as temporal expert; all experts resident, and "staged" (only the
  experts in use on the GPU, the others parked in pinned host memory);
* ModelScope T2V at 100 and 50 DDIM steps and AnimateDiff at 25 steps, cfg 7.5;
* optionally ConFiner-Long (``--long``).

Tables (``--settings``, applied in this order on top of each other, to every UNet, text encoder and the VAE
decoder, ConFiner and baselines alike, so all come from one process on one machine): ``eager`` (plain SDPA), ``lean`` (the ``lean``
preset: channels_last end to end, fused GroupNorm+SiLU, fused GEGLU gate, fused QKV, folded upsampling, cuDNN attention first, cuDNN
autotuning; no compiler), ``lean_graphs`` (lean + CUDA graphs, still no compiler; nothing can be applied on top of it, so it
comes last or in a process of its own), ``lean_bf16`` (the same in bfloat16), ``best`` (the ``fast`` preset: lean +
regional torch.compile) and ``max`` (best + CUDA graphs). Each figure is the median of repeated runs after a warm-up
run (excluded; for the baselines a 2-step run of the same sampler at the same shapes, which is what compiles and
autotunes); CUDA is synchronised around every run. Expert, text-encoder and VAE time come from CUDA events around
each module call; "orchestration overhead" is the rest of the wall time. FLOPs are counted per module call on
meta-device copies (``torch.utils.flop_counter``), per kind (convolution, GEMM, attention) too.

``--profile TABLE...`` adds a torch.profiler pass over one ConFiner run (ModelScope temporal) after that table's
runs (``bench/profiling.py``: kernel time by kind, top kernels, idle gaps, achieved TFLOP/s per kind). The first
``best`` ConFiner run is the cold start (compile with empty caches): ``cold_start_s`` = imports + that run.
``--cache-out FILE`` then saves the compiled artifacts (``speed.save_compile_cache``), and a second process
started with ``--start-probe FILE`` loads them and times its first run: ``warm_start_s`` = imports + cache load +
first run (the random-weight build, which real checkpoints replace by a load, is reported apart), with the graphs
dynamo traced again. Run it with fresh inductor/Triton folders for another machine's start, with the first
process's folders for a second run on the same machine.

``--deadline`` keeps the call inside its time limit: a run is skipped when its expected time (``PRIOR_S``) plus
that of the core runs still ahead (ConFiner ModelScope, ModelScope-100 and the profiles of every table) does not
fit; repeats are trimmed (never below one); results are written after every run.

    python bench/gpu_benchmark.py --settings eager lean best --profile eager best --out $OUT     # on the GPU
    python bench/gpu_benchmark.py --tiny --device cpu --settings eager lean best --profile eager --out /tmp/bench
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import functools
import gc
import json
import os
import sys
import time

T0 = time.perf_counter()

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers  # noqa: E402
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel  # noqa: E402
from torch.profiler import record_function  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

import profiling as P  # noqa: E402
from gpu_report import RUN_LABELS, slowest_runs  # noqa: E402  (run names and notes, shared with the report)
from confiner_core.chain import ChainConfig, generate_structure, refine_structure  # noqa: E402
from confiner_core.diffusers_backend import flash4_attention as F4  # noqa: E402
from confiner_core.diffusers_backend import fused_norm as FN  # noqa: E402
from confiner_core.diffusers_backend import speed as S  # noqa: E402
from confiner_core.diffusers_backend.experts import FrameExpert, MotionExpert, UNet3DExpert  # noqa: E402
from confiner_core.diffusers_backend import precompiled  # noqa: E402
from confiner_core.diffusers_backend.precompiled import FLASH4_CACHE_DIR, keep_kernels_in  # noqa: E402
from confiner_core.diffusers_backend.speed import (COMPILE_SCOPES, EAGER, FAST, LEAN, MAX, SpeedSettings,  # noqa: E402
                                                   apply_speed_settings)
from confiner_core.diffusers_backend.text import PromptEncoder  # noqa: E402
from confiner_core.diffusers_backend.vae import DEFAULT_CHUNK_FRAMES, AutoencoderKLCodec  # noqa: E402
from confiner_core.experts import EvaluationLog, in_stage  # noqa: E402
from confiner_core.generate import decode_frames  # noqa: E402
from confiner_core.latent_spaces import SD15  # noqa: E402
from confiner_core.long import LongConfig, generate_long, plan_segments  # noqa: E402
from confiner_core.outputs import write_atomic  # noqa: E402
from confiner_core.sampling import randn, sample_control  # noqa: E402
from confiner_core.timesteps import spaced_timesteps  # noqa: E402
from tiny_diffusers import tiny_tokenizer  # noqa: E402  (an in-code tokenizer: ids only matter for shape)

IMPORT_S = time.perf_counter() - T0
diffusers.utils.logging.set_verbosity_error()  # not the "cast with to()" notice for every random-weight model

PROMPT = "a corgi running on a sunny beach, waves, golden hour"
NEGATIVE = "blurry, low quality"

SD_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
               block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
MS_UNET = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
               block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024, attention_head_dim=64,
               down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
               up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3)
ADAPTER = dict(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_num_attention_heads=8,
               motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
           layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           scaling_factor=0.18215)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              max_position_embeddings=77, hidden_act="quick_gelu", vocab_size=49408)
CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
              max_position_embeddings=77, hidden_act="gelu", vocab_size=49408)
TINY = dict(  # a CPU smoke configuration with the same code paths
    sd=dict(SD_UNET, block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, cross_attention_dim=32,
            norm_num_groups=32),
    ms=dict(MS_UNET, block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, cross_attention_dim=48,
            attention_head_dim=8, norm_num_groups=32),
    adapter=dict(ADAPTER, block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=4),
    vae=dict(VAE, block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=16),
    clip_l=dict(CLIP_L, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
    clip_h=dict(CLIP_H, hidden_size=48, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
)
FULL = dict(sd=SD_UNET, ms=MS_UNET, adapter=ADAPTER, vae=VAE, clip_l=CLIP_L, clip_h=CLIP_H)

SD_SCHED = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False)
AD_SCHED = dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False)


# Tables in the only order they can be applied (each on top of the previous ones): name -> (settings, dtype)
TABLES = {"eager": (EAGER, torch.float16), "lean": (LEAN, torch.float16),
          "lean_graphs": (dataclasses.replace(LEAN, cuda_graphs=True), torch.float16),
          "lean_bf16": (LEAN, torch.bfloat16), "best": (FAST, torch.float16), "max": (MAX, torch.float16)}
# CUDA graphs are applied outermost and never taken back: nothing can be applied on top of lean_graphs.
LAST_ONLY = ("lean_graphs",)
RUNS = ("confiner_4+5_modelscope", "modelscope_100", "confiner_4+5_animatediff", "animatediff_25", "modelscope_50",
        "confiner_4+5_modelscope_staged")
TABLE_RUNS = {"eager": RUNS, "lean": RUNS[:4], "lean_graphs": RUNS[:4], "lean_bf16": RUNS[:2], "best": RUNS,
              "max": RUNS[:2]}
# What --deadline keeps room for: ConFiner (ModelScope temporal) and ModelScope-100 in the eager, lean and best
# tables, ConFiner alone in the others, and every profile.
CORE = {table: ("confiner_4+5_modelscope", "modelscope_100", "profile") for table in ("eager", "lean", "best")}
CORE.update({table: ("confiner_4+5_modelscope", "profile") for table in ("lean_graphs", "lean_bf16", "max")})
# The expert networks: network_forwards (confiner_core.experts.EvaluationLog, one call of a network) must equal the
# calls the module hooks see on these.
EXPERT_MODULES = ("sd", "control", "ad_temporal", "ms")
# Expected seconds, used only to skip what cannot end before --deadline: H200 eager medians (issue 15: ConFiner 2.62 s;
# the rest scaled from the H100 call), a speed factor per table, and the compile of the first compiled runs.
PRIOR_S = {"confiner_4+5_modelscope": 2.7, "confiner_4+5_animatediff": 2.5, "confiner_4+5_modelscope_staged": 3.0,
           "modelscope_100": 21.0, "modelscope_50": 10.6, "animatediff_25": 4.4, "long_per_frame": 0.19}
TABLE_FACTOR = {"eager": 1.0, "lean": 0.85, "lean_graphs": 0.8, "lean_bf16": 0.85, "best": 0.7, "max": 0.68}
# Cold compile of a compiled table, carried by its first job (H200: ~280 s for every expert's shapes on 2026-12-01,
# 162.5 s on 2026-12-02 with the blocks' shapes shared; max runs after best in one process: only the CUDA-graph
# captures are new).
COMPILE_PRIOR_S = {"best": 200.0, "max": 30.0}
PROFILE_PRIOR_S = 15.0
SETTINGS = {name: settings for name, (settings, _) in TABLES.items()}


def elapsed() -> float:
    return time.perf_counter() - T0


# ----------------------------------------------------------------------------------------------------------------
# Timing and counting

def _signature(args, kwargs) -> tuple:
    """The shapes and dtypes of a module call's tensor arguments: what its FLOPs depend on."""
    sig = [(i, tuple(a.shape), a.dtype) for i, a in enumerate(args) if torch.is_tensor(a)]
    sig += [(k, tuple(v.shape), v.dtype) for k, v in sorted(kwargs.items()) if torch.is_tensor(v)]
    return tuple(sig)


class CudaMemory:
    """The allocator's peak-memory counter (host-side bookkeeping: reading or resetting it waits for nothing)."""

    @staticmethod
    def peak() -> int:
        return torch.cuda.max_memory_allocated()

    @staticmethod
    def reset() -> None:
        torch.cuda.reset_peak_memory_stats()


class ModuleTimer:
    """CUDA events around every call of the watched modules, read once after a synchronise; the shapes of each
    call, for FLOP counting; and the peak memory allocated during each group's calls (e.g. the VAE decode against
    the experts), with the run's overall peak kept (:meth:`peak`)."""

    def __init__(self, enabled: bool, memory=None):
        self.enabled = enabled  # CUDA events
        self.memory = memory or (CudaMemory if enabled else None)
        self.events: dict[str, list] = {}
        self.sequence: list[list] = []  # [name, start event, end event] in call order, with the run's two marks
        self.calls: list[tuple[str, tuple]] = []
        self.peaks: dict[str, int] = {}
        self.run_peak = 0
        self.ranges: list = []  # under a profiler: a record_function range per watched call (a profile's phases)

    def _fold(self) -> int:
        """The counter's peak since the last reset, kept in the run's peak; then a fresh counter."""
        peak = self.memory.peak()
        self.run_peak = max(self.run_peak, peak)
        self.memory.reset()
        return peak

    def watch(self, group: str, name: str, module: torch.nn.Module) -> None:
        def pre(mod, args, kwargs):
            self.calls.append((name, _signature(args, kwargs)))
            profiled = torch.autograd.profiler._is_profiler_enabled
            self.ranges.append(record_function(name).__enter__() if profiled else None)
            if self.memory:
                self._fold()
            if self.enabled:
                start = torch.cuda.Event(enable_timing=True)
                start.record()
                self.events.setdefault(group, []).append([start, None])
                self.sequence.append([name, start, None])

        def post(mod, args, out):
            if self.enabled:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self.events[group][-1][1] = end
                self.sequence[-1][2] = end
            if self.memory:
                self.peaks[group] = max(self.peaks.get(group, 0), self._fold())
            rf = self.ranges.pop() if self.ranges else None
            if rf is not None:
                rf.__exit__(None, None, None)

        module.register_forward_pre_hook(pre, with_kwargs=True)
        module.register_forward_hook(post)

    def reset(self) -> None:
        self.events, self.calls, self.peaks, self.run_peak, self.sequence = {}, [], {}, 0, []
        if self.memory:
            self.memory.reset()

    def mark(self, name: str) -> None:
        """An event in the call sequence outside any module (the run's start and end)."""
        if self.enabled:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.sequence.append([name, event, event])

    def seconds(self) -> dict:
        return {k: sum(s.elapsed_time(e) for s, e in v) / 1000 for k, v in self.events.items()}

    def between(self) -> dict:
        """GPU time from the end of one watched call to the start of the next, summed per pair of names
        ("sd -> ms"): the sampler's own kernels there and the GPU's idle time, which together make the
        orchestration overhead. Read after a synchronise."""
        out: dict = {}
        for (a, _, end), (b, start, _) in zip(self.sequence, self.sequence[1:]):
            entry = out.setdefault(f"{a} -> {b}", {"n": 0, "ms": 0.0})
            entry["n"] += 1
            entry["ms"] = round(entry["ms"] + end.elapsed_time(start), 3)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["ms"]))

    def peak_gib(self) -> dict:
        """Per group: the most memory allocated while one of its modules ran (weights resident included)."""
        return {k: v / 2**30 for k, v in self.peaks.items()}

    def peak(self) -> int | None:
        """The run's peak, bytes (None without CUDA)."""
        return max(self.run_peak, self.memory.peak()) if self.memory else None


class GCPauses:
    """The garbage collector's collections during a run, per generation, and the host time they took (a full
    collection walks every Python object: a few hundred ms with diffusers and transformers imported on a slow core)."""

    def __init__(self):
        self.started: float | None = None
        self.counts, self.seconds = [0, 0, 0], [0.0, 0.0, 0.0]
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        elif self.started is not None:
            self.counts[info["generation"]] += 1
            self.seconds[info["generation"]] += time.perf_counter() - self.started
            self.started = None

    def reset(self) -> None:
        self.counts, self.seconds = [0, 0, 0], [0.0, 0.0, 0.0]

    def summary(self) -> dict:
        return {"collections": list(self.counts), "ms": [round(s * 1e3, 3) for s in self.seconds]}


gc_pauses = GCPauses()


class FlopCounter:
    """FLOPs of a module call, counted once per (module, shapes) on a meta-device copy of the model; in total and
    per operator (for the per-kind rates of a profile)."""

    def __init__(self, meta_models: dict):
        self.meta = meta_models
        self.cache: dict = {}

    def _count(self, name: str, sig: tuple) -> dict:
        key = (name, sig)
        if key not in self.cache:
            from torch.utils.flop_counter import FlopCounterMode
            model = self.meta[name]
            float_dtype = next(model.parameters()).dtype
            args, kwargs = [], {}
            for where, shape, dtype in sig:
                t = torch.zeros(shape, dtype=float_dtype if dtype.is_floating_point else dtype, device="meta")
                if isinstance(where, int):
                    args.append(t)
                else:
                    kwargs[where] = t
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                model(*args, **kwargs)
            self.cache[key] = {str(op): n for op, n in fc.get_flop_counts().get("Global", {}).items()}
        return self.cache[key]

    def call(self, name: str, sig: tuple) -> float:
        return float(sum(self._count(name, sig).values()))

    def total(self, calls) -> float:
        return sum(self.call(name, sig) for name, sig in calls)

    def by_kind(self, calls) -> dict:
        out = {}
        for name, sig in calls:
            for kind, n in P.flops_by_kind(self._count(name, sig)).items():
                out[kind] = out.get(kind, 0.0) + n
        return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def host_profiled(fn, path: str, top: int = 40):
    """``fn`` run under cProfile, its top functions by cumulative time written to ``path`` (what the host did)."""
    import cProfile
    import io
    import pstats

    def run():
        prof = cProfile.Profile()
        try:
            return prof.runcall(fn)
        finally:
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(top)
            write_atomic(path, text.getvalue().encode())
    return run


def timed(fn, device, repeats: int, timer: ModuleTimer, flops: FlopCounter, deadline: float, prior_s: float,
          warmup=None, captures=lambda: 0, first_run=None) -> dict | None:
    """Median of up to ``repeats`` runs of ``fn`` after one run of ``warmup`` (default ``fn``), excluded.

    Skipped (None) when ``prior_s`` no longer fits before ``deadline``; later repeats are dropped when the last run
    would not fit (at least one run is kept). ``captures()`` counts CUDA graphs captured so far: each run says how
    many it captured, and the slowest run (``slowest``) where its time went. ``first_run(fn)``: what the first timed
    run calls instead of ``fn`` (:func:`host_profiled`)."""
    if elapsed() + prior_s > deadline:
        return None
    t0 = time.perf_counter()
    (warmup or fn)()
    sync(device)
    warmup_s = time.perf_counter() - t0
    rows = []
    for _ in range(repeats):
        if rows and elapsed() + rows[-1]["wall_s"] > deadline:
            break
        timer.reset()
        sync(device)
        gc_pauses.reset()
        captured = captures()
        t0 = time.perf_counter()
        timer.mark("start")
        info = (first_run(fn) if first_run and not rows else fn)() or {}
        timer.mark("end")
        sync(device)
        wall = time.perf_counter() - t0
        peak = timer.peak()
        rows.append({"wall_s": wall, "run": len(rows) + 1, "graph_captures": captures() - captured,
                     "modules_s": timer.seconds(), **info, "gc": gc_pauses.summary(),
                     "between_modules_ms": timer.between() if timer.enabled else None,
                     "peak_gpu_gib": peak / 2**30 if peak is not None else None,
                     "modules_peak_gib": timer.peak_gib()})
    calls = list(timer.calls)
    hooked = sum(1 for name, _ in calls if name in EXPERT_MODULES)  # UNet calls of the last run, seen by hooks
    counted = sum(rows[-1].get("network_forwards", {}).values())
    if counted and counted != hooked:
        print(f"WARNING: network_forwards {counted} != {hooked} hooked UNet calls", flush=True)
    in_order = [round(r["wall_s"], 4) for r in rows]
    rows.sort(key=lambda r: r["wall_s"])
    median = rows[len(rows) // 2]
    inside = sum(median["modules_s"].values())
    tflop = flops.total(calls) / 1e12
    slowest = {k: rows[-1][k] for k in ("run", "wall_s", "graph_captures", "modules_s", "gc", "between_modules_ms")}
    return {**median, "runs_s": [round(r["wall_s"], 4) for r in rows], "runs_in_order_s": in_order,
            "slowest": slowest, "warmup_s": round(warmup_s, 2),
            "module_total_s": inside, "tflop": tflop, "achieved_tflops": tflop / median["wall_s"],
            "module_calls": len(calls), "unet_calls_hooked": hooked,
            "overhead_fraction": (median["wall_s"] - inside) / median["wall_s"] if timer.enabled else None}


# ----------------------------------------------------------------------------------------------------------------
# Models and residency

def build(cfg: dict, dtype, device=None, with_ad_temporal: bool = True):
    """Every model, random weights, built on ``device`` (the GPU: the random initialisation runs there, seconds
    instead of a minute on the CPU; ``"meta"`` for FLOP counting) in float32, then cast to ``dtype``."""
    torch.manual_seed(0)
    with torch.device(device or "cpu"):
        sd = UNet2DConditionModel(**cfg["sd"])
        control = UNetMotionModel.from_unet2d(sd, MotionAdapter(**cfg["adapter"]))  # AnimateDiff-Lightning's
        models = dict(sd=sd, control=control)
        if with_ad_temporal:
            models["ad_temporal"] = UNetMotionModel.from_unet2d(sd, MotionAdapter(**cfg["adapter"]))
        models["ms"] = UNet3DConditionModel(**cfg["ms"])
        models["vae"] = AutoencoderKL(**cfg["vae"])
        models["clip_l"] = CLIPTextModel(CLIPTextConfig(**cfg["clip_l"]))
        models["clip_h"] = CLIPTextModel(CLIPTextConfig(**cfg["clip_h"]))
    for m in models.values():
        m.to(dtype).eval().requires_grad_(False)
    return models


class Residency:
    """Keeps on the GPU only the models a stage uses ("staged"), or everything ("resident").

    Staged: every tensor has a pinned host copy; ``use`` uploads what a stage needs (asynchronously) and drops the
    device copies of the rest, so the host copies stay pinned for the next run."""

    def __init__(self, models: dict, device, staged: bool):
        self.models, self.device, self.staged = models, device, staged
        self.host = {}
        self.on_device: set[str] = set()
        for name, m in models.items():
            if staged:
                m.to("cpu")
                self.host[name] = [t.data.pin_memory() if device.type == "cuda" else t.data for t in _tensors(m)]
                for t, h in zip(_tensors(m), self.host[name]):
                    t.data = h
            else:
                m.to(device)
                self.on_device.add(name)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def use(self, *names: str) -> None:
        if not self.staged:
            return
        for name, m in self.models.items():
            if name in names and name not in self.on_device:
                for t, h in zip(_tensors(m), self.host[name]):
                    t.data = h.to(self.device, non_blocking=True)
                self.on_device.add(name)
            elif name not in names and name in self.on_device:
                for t, h in zip(_tensors(m), self.host[name]):
                    t.data = h
                self.on_device.discard(name)


def _tensors(m: torch.nn.Module) -> list:
    return list(m.parameters()) + list(m.buffers())


def params_m(m) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def dtype_of(m: torch.nn.Module) -> torch.dtype:
    return next(m.parameters()).dtype


def forward_shapes(h: int) -> dict:
    """The launch probe's forwards, as the ConFiner and baseline runs call them: name -> (network, latent shape,
    text-context shape)."""
    return {"sd_batch32": ("sd", (32, 4, h, h), (32, 77)),
            "control_1x16": ("control", (1, 4, 16, h, h), (16, 77)),
            "modelscope_2x16": ("ms", (2, 4, 16, h, h), (2, 77)),
            "animatediff_2x16": ("ad_temporal", (2, 4, 16, h, h), (32, 77))}


def forward_flops(a) -> dict:
    """FLOPs of each launch-probe forward and of one VAE decode chunk, counted on meta-device copies of the
    benchmark's networks (no weights, no GPU): with a probe's GPU seconds they give each network's TFLOP/s."""
    meta = build(TINY if a.tiny else FULL, torch.float16, "meta")
    counter = FlopCounter({**meta, "vae": meta["vae"].decoder})
    h, tflop = a.size // 8, {}
    for name, (key, sample, context) in forward_shapes(h).items():
        width = meta[key].config.cross_attention_dim
        sig = ((0, sample, torch.float16), (1, (), torch.float32),
               ("encoder_hidden_states", (*context, width), torch.float16))
        tflop[name] = counter.call(key, sig) / 1e12
    chunk = ((0, (a.decode_chunk, 4, h, h), torch.float16),)
    tflop[f"vae_decode_{a.decode_chunk}_frames"] = counter.call("vae", chunk) / 1e12
    return {"size": a.size, "tiny": a.tiny, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "tflop": tflop}


# ----------------------------------------------------------------------------------------------------------------
# The runs

class Bench:
    def __init__(self, args, with_ad_temporal: bool = True):
        self.args = args
        self.block_store = None  # speed.SpeedSettings.compile_dir's store, once a setting uses one
        self.device = torch.device(args.device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        cfg = TINY if args.tiny else FULL
        t0 = time.perf_counter()
        self.models = build(cfg, self.dtype, self.device if self.device.type == "cuda" else None, with_ad_temporal)
        sync(self.device)
        self.build_s = time.perf_counter() - t0
        meta = build(cfg, self.dtype, "meta", with_ad_temporal)
        self.flops = FlopCounter({**meta, "vae": meta["vae"].decoder})
        self.timer = ModuleTimer(self.device.type == "cuda")
        m = self.models
        for name in ("sd", "control", "ad_temporal", "ms", "clip_l", "clip_h"):
            if name in m:
                self.timer.watch("text" if name.startswith("clip") else "experts", name, m[name])
        self.timer.watch("vae", "vae", m["vae"].decoder)
        tok = tiny_tokenizer()
        enc_l, enc_h = PromptEncoder(tok, m["clip_l"]), PromptEncoder(tok, m["clip_h"])
        self.experts = {
            "control": MotionExpert(m["control"], enc_l, dict(AD_SCHED), "animatediff-lightning"),
            "spatial": FrameExpert(m["sd"], enc_l, dict(SD_SCHED), "sd15"),
            "ms": UNet3DExpert(m["ms"], enc_h, dict(SD_SCHED), "modelscope"),
        }
        if "ad_temporal" in m:
            self.experts["ad"] = MotionExpert(m["ad_temporal"], enc_l, dict(AD_SCHED), "animatediff-v3")
        self.codec = AutoencoderKLCodec(m["vae"], SD15, chunk_frames=args.decode_chunk)
        self.h = args.size // 8

    def forget_prompts(self) -> None:
        """Every run pays its text encoding as a new process would: the encoders remember recent prompts."""
        for expert in self.experts.values():
            expert.prompt_encoder.forget()

    def networks(self) -> list:
        """What speed settings apply to, as the library applies them: the UNets, the text encoders and the VAE
        decoder."""
        m = self.models
        return [m[k] for k in ("sd", "control", "ad_temporal", "ms", "clip_l", "clip_h") if k in m] + [m["vae"].decoder]

    def decode(self, latent: torch.Tensor, log: EvaluationLog | None = None) -> torch.Tensor:
        """Latent video -> uint8 frames on the CPU, as the CLI decodes (the spatial expert's codec): in a ``decode``
        stage that reads the finiteness check the sampling handed over once the decode is queued."""
        with in_stage(log, "decode"):
            return decode_frames(latent, self.codec)

    def speed_up(self, settings: SpeedSettings) -> dict:
        """The same settings for every UNet, text encoder and the VAE decoder, as ``load_experts(speed=...)`` applies
        them: ConFiner and the baselines alike. (Until 2026-12-02's fourth session the VAE decoder was left
        uncompiled here; compiled, its decode of 16 frames takes 0.133 s against 0.167 s, ``vae_decode_probe.py``.)"""
        done = apply_speed_settings(self.networks(), settings, getattr(self, "graph_pool", None))
        pool = done.pop("graph_pool", None)
        if pool is not None:
            self.graph_pool = pool
        self.block_store = done.pop("block_store", None) or self.block_store
        return done

    def cast(self, dtype) -> None:
        for m in self.models.values():
            m.to(dtype)

    def noise(self, frames: int, seed: int = 0) -> torch.Tensor:
        return randn((1, 4, frames, self.h, self.h), torch.Generator().manual_seed(seed), self.device)

    # ConFiner 4+5 ----------------------------------------------------------------------------------------------
    def confiner(self, temporal: str, residency: Residency, frames: int = 16):
        self.forget_prompts()
        log = EvaluationLog()
        temporal_model = {"ms": "ms", "ad": "ad_temporal"}[temporal]
        temporal_text = "clip_h" if temporal == "ms" else "clip_l"
        residency.use("clip_l", temporal_text)
        with record_function("text"):  # the phases a profile splits the GPU's idle time by
            spatial = self.experts["spatial"].bind(PROMPT, NEGATIVE, 7.5, log)  # first, as generate binds them
            control = self.experts["control"].bind(PROMPT, NEGATIVE, 1.0, log)
            temp = self.experts[temporal].bind(PROMPT, NEGATIVE, 7.5, log, deferred=True)  # encoded at its first call
        generator = torch.Generator().manual_seed(0)
        config = ChainConfig()
        residency.use("control")
        with log.stage("control", hand_over=True):  # as run_chain (a stage is a profiler range)
            structure = generate_structure(control, self.noise(frames), config, generator)
        residency.use("sd", temporal_model, temporal_text)  # its text encoder too: the deferred encode runs here
        with log.stage("refine", hand_over=True):  # as generate: read in the decode stage
            latent = refine_structure(spatial, temp, structure, config, generator)
        residency.use("vae")
        self.decode(latent, log)
        return {"evaluations": dict(log.evaluations), "network_forwards": dict(log.forwards)}

    # Baselines -------------------------------------------------------------------------------------------------
    def baseline(self, expert: str, steps: int, residency: Residency, spacing: str, offset: int, frames: int = 16):
        if self.args.tiny:
            steps = tiny_steps(steps)
        self.forget_prompts()
        log = EvaluationLog()
        model = {"ms": "ms", "ad": "ad_temporal"}[expert]
        residency.use("clip_h" if expert == "ms" else "clip_l")
        d = self.experts[expert].bind(PROMPT, NEGATIVE, 7.5, log)
        residency.use(model)
        with log.stage("sampling", hand_over=True):  # as ConFiner's refinement
            latent = sample_control(d, self.noise(frames), spaced_timesteps(steps, 999, spacing, offset), "ddim")
        residency.use("vae")
        self.decode(latent, log)
        return {"evaluations": dict(log.evaluations), "network_forwards": dict(log.forwards)}

    # ConFiner-Long ---------------------------------------------------------------------------------------------
    def long(self, frames: int, residency: Residency):
        self.forget_prompts()
        log = EvaluationLog()
        residency.use("control", "sd", "ms", "vae", "clip_l", "clip_h")
        control = self.experts["control"].bind(PROMPT, NEGATIVE, 1.0, log)
        spatial = self.experts["spatial"].bind(PROMPT, NEGATIVE, 7.5, log)
        temp = self.experts["ms"].bind(PROMPT, NEGATIVE, 7.5, log, deferred=True)  # as generate binds it
        plan = plan_segments(frames, 16, True)
        generate_long(control, spatial, temp, plan, (1, 4, self.h, self.h), ChainConfig(), LongConfig(),
                      torch.Generator().manual_seed(0), lambda x, w: self.decode(x[:, :, :w.frames]),
                      device=self.device)
        return {"evaluations": dict(log.evaluations), "network_forwards": dict(log.forwards)}

    # One forward of each network: CPU issue time against GPU time, per attention backend -----------------------
    def forward_cases(self) -> dict:
        d, t, m = self.device, torch.tensor(500.0, device=self.device), self.models
        out = {}
        for name, (key, sample, context) in forward_shapes(self.h).items():
            if key not in m:
                continue
            model, dt = m[key], dtype_of(m[key])
            width = model.config.cross_attention_dim
            out[name] = (model, (torch.randn(sample, device=d, dtype=dt), t),
                         {"encoder_hidden_states": torch.randn(*context, width, device=d, dtype=dt)})
        return out

    def launch_probe(self, backends=("as set",), models=None) -> dict:
        """GPU and CPU-issue time of one forward of each network (the third of three calls), under each attention
        backend of ``backends`` ("as set": the table's own setting); only of ``models`` (keys of ``self.models``)
        when given: a compiled table probes the networks its runs used, at shapes already compiled."""
        if self.device.type != "cuda":
            return {}
        out = {}
        with torch.no_grad():
            for name, (model, args, kwargs) in self.forward_cases().items():
                if models is not None and not any(model is self.models[k] for k in models):
                    continue
                previous = model.forward.name if isinstance(model.forward, S.WithAttention) else "default"
                for backend in backends:
                    if backend != "as set":
                        S.set_attention(model, backend)
                    try:
                        for _ in range(3):
                            sync(self.device)
                            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                            t0 = time.perf_counter()
                            start.record()
                            model(*args, **kwargs)
                            end.record()
                            cpu = time.perf_counter() - t0
                            sync(self.device)
                        out.setdefault(name, {})[backend] = {"cpu_issue_s": cpu,
                                                             "gpu_s": start.elapsed_time(end) / 1000}
                    except Exception as e:  # noqa: BLE001 (a backend that cannot run this shape)
                        out.setdefault(name, {})[backend] = {"error": f"{type(e).__name__}: {e}"[:200]}
                    finally:
                        S.set_attention(model, previous)
        return out


# ----------------------------------------------------------------------------------------------------------------
# Plan and deadline

def run_prior(table: str, name: str, args, first: bool = False) -> float:
    """Expected seconds of one job of the plan (warm-up included); the ``first`` job of a compiled table carries
    its cold compile, whichever job it is."""
    scale = 0.02 if args.tiny else 1.0
    compile_s = COMPILE_PRIOR_S.get(table, 0.0) if first else 0.0
    if name == "profile":
        return scale * (PROFILE_PRIOR_S + 2 * PRIOR_S["confiner_4+5_modelscope"] + compile_s)
    one = PRIOR_S[name] * TABLE_FACTOR[table]
    if name.startswith("confiner"):
        total = one * (1 + args.repeats)
    else:
        steps = int(name.split("_")[-1])
        total = one * (2 / steps + args.baseline_repeats)
    return scale * (total + compile_s)


def make_plan(args) -> list[tuple[str, str]]:
    def wanted(name):
        return not args.only or any(name.startswith(p) for p in args.only)

    plan = []
    for table in args.settings:
        plan += [(table, name) for name in TABLE_RUNS[table] if wanted(name)
                 and not (name.endswith("staged") and (args.no_staged or args.device == "cpu"))]
        if table in args.profile:
            plan.append((table, "profile"))
    return plan


def first_of_table(plan: list, index: int) -> bool:
    return index == 0 or plan[index - 1][0] != plan[index][0]


def fits(plan: list, index: int, args, skipped: set) -> bool:
    """Whether job ``index`` can run and still leave time for the core jobs after it. A compiled table whose first
    job was skipped runs nothing more (``skipped``): a later job would carry the compile the deadline left out."""
    table, name = plan[index]
    if table in skipped:
        return False
    need = run_prior(table, name, args, first_of_table(plan, index))
    if name not in CORE[table]:
        need += sum(run_prior(t, n, args, first_of_table(plan, index + 1 + i))
                    for i, (t, n) in enumerate(plan[index + 1:]) if n in CORE[t])
    return elapsed() + need <= args.deadline


# ----------------------------------------------------------------------------------------------------------------
# Tables



def ratios(runs: dict) -> dict:
    out = {}
    for c in ("confiner_4+5_modelscope", "confiner_4+5_animatediff"):
        for base in ("modelscope_100", "modelscope_50", "animatediff_25"):
            if runs.get(c) and runs.get(base):
                short = c.replace("confiner_4+5_", "confiner_")
                out[f"ratio_{short}_to_{base}"] = runs[c]["wall_s"] / runs[base]["wall_s"]
                out[f"flop_ratio_{short}_to_{base}"] = runs[c]["tflop"] / runs[base]["tflop"]
    return out


def tiny_steps(steps: int) -> int:
    """A baseline's steps in a --tiny smoke run (a tenth): the code path, not the figure."""
    return max(2, steps // 10)


def markdown(res: dict) -> str:
    lines = [f"Device {res['device_name']}, torch {res['torch']}, diffusers {res['diffusers']}, {res['date']}. "
             f"Imports {res['import_s']:.1f} s, models built in {res['build_s']:.1f} s.", ""]
    if res.get("tiny"):   # (the labels and ratio keys name the full runs: a trial read "100 steps" for 10)
        lines += [f"**Smoke run (--tiny):** tiny models, and the baselines at a tenth of their steps (ModelScope "
                  f"{tiny_steps(100)} and {tiny_steps(50)}, AnimateDiff {tiny_steps(25)}, where the labels and ratio "
                  f"keys name 100, 50 and 25): the times and ratios check the code path, not the figures.", ""]
    for setting, table in res["tables"].items():
        lines += [f"### {setting}: {table['settings']} ({table['dtype']})", "",
                  "| run | median s | runs (s) | warm-up s | expert evals | network forwards | TFLOP | TFLOP/s | overhead "
                  "| peak GPU GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, v in table["runs"].items():
            if v is None:
                lines.append(f"| {RUN_LABELS.get(name, name)} | skipped (deadline) | | | | | | | | |")
                continue
            if "error" in v:
                lines.append(f"| {RUN_LABELS.get(name, name)} | failed: {v['error'][:80]} | | | | | | | | |")
                continue
            ev = sum(v.get("evaluations", {}).values())
            fw = sum(v.get("network_forwards", v.get("forwards", {})).values())
            oh = f"{100 * v['overhead_fraction']:.1f} %" if v.get("overhead_fraction") is not None else ""
            pk = f"{v['peak_gpu_gib']:.2f}" if v.get("peak_gpu_gib") is not None else ""
            lines.append(f"| {RUN_LABELS.get(name, name)} | {v['wall_s']:.3f} | {', '.join(f'{r:.3f}' for r in v['runs_s'])} "
                         f"| {v['warmup_s']:.1f} | {ev} | {fw} | {v['tflop']:.1f} | {v['achieved_tflops']:.0f} | {oh} | {pk} |")
        lines += slowest_runs(table["runs"])
        lines += ["", "| ratio | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in table["ratios"].items()]
        probe = table.get("launch_probe") or {}
        if probe:
            lines += ["", "| one forward | backend | CPU issue s | GPU s |", "|---|---|---|---|"]
            for k, per in probe.items():
                for backend, v in per.items():
                    lines.append(f"| {k} | {backend} | {v.get('cpu_issue_s', float('nan')):.4f} | "
                                 f"{v.get('gpu_s', float('nan')):.4f} |" if "error" not in v else
                                 f"| {k} | {backend} | failed: {v['error'][:60]} | |")
        if table.get("profile"):
            lines += [""] + P.markdown(table["profile"], f"Profile of one ConFiner run ({setting})")
        if table.get("graph_pool"):
            lines += ["", f"CUDA graphs: {table['graph_pool']}"]
        lines.append("")
    for setting, long in res["long"].items():
        lines += [f"### ConFiner-Long, {setting}: {long['settings']}", "",
                  "| frames | wall s | expert evals | network forwards | s per frame | peak GPU GiB |",
                  "|---|---|---|---|---|---|"]
        for frames, v in long["runs"].items():
            if v is None:
                lines.append(f"| {frames} | skipped (deadline) | | | | |")
                continue
            pk = f"{v['peak_gpu_gib']:.2f}" if v.get("peak_gpu_gib") is not None else ""
            lines.append(f"| {frames} | {v['wall_s']:.2f} | {sum(v['evaluations'].values())} "
                         f"| {sum(v.get('network_forwards', {}).values())} "
                         f"| {v['wall_s'] / int(frames):.3f} | {pk} |")
    starts = {k: res[k] for k in ("cold_start_s", "lean_cold_start_s", "compile_cache") if k in res}
    if starts:
        lines += ["", f"Starts: {json.dumps(starts, default=float)}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Main: the tables, or the warm-start probe

def compile_phases() -> dict:
    """Where this process's compile time went: dynamo's graph count and its timed phases (tracing, AOTAutograd,
    inductor or its caches), seconds summed over every compiled frame; phases nest, so they overlap. The phases
    come from ``torch._dynamo.utils.compile_times``, which torch 2.11 (the GPU image) left empty; torch 2.13 fills
    them."""
    from torch._dynamo.utils import compile_times, counters

    seconds = {}
    for line in compile_times(repr="str", aggregate=True).splitlines():
        name, _, value = line.rpartition(",")
        try:
            seconds[name.strip()] = float(value)
        except ValueError:
            continue  # the header line
    top = dict(sorted(seconds.items(), key=lambda kv: -kv[1])[:15])
    return {"unique_graphs": counters["stats"].get("unique_graphs", 0), "frames_ok": counters["frames"].get("ok", 0),
            "seconds": top}


def start_probe(a) -> None:
    """A second process: load the compiled artifacts, build, apply the best settings, time the first ConFiner run
    (compilation served from the caches) and a second one."""
    out = {"import_s": IMPORT_S, "cache_file": a.start_probe, "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
           "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR"), "settings": SETTINGS["best"].describe(),
           "compile_dir": a.compile_dir}

    def save():  # after every stage: a probe stopped by its time limit still tells how far it got
        out["process_s"] = elapsed()
        write_atomic(os.path.join(a.out, "start_probe.json"), json.dumps(out, indent=2, default=float).encode())

    if a.load_with_compile_workers:   # the A/B of precompiled.LOAD_COMPILE_THREADS
        precompiled.LOAD_COMPILE_THREADS = None
    out["load_compile_threads"] = precompiled.LOAD_COMPILE_THREADS
    if a.compile_dir:  # the settings move inductor's cache into the folder: load the portable cache there
        keep_kernels_in(a.compile_dir)
        out["inductor_cache_dir"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        flash4 = os.environ.get(FLASH4_CACHE_DIR)  # flash-attn-4's kernels kept by the first process, if any
        out["flash4_kernels_kept"] = sum(n.endswith(".o") for _, _, names in os.walk(flash4) for n in names) \
            if flash4 else None
    t0 = time.perf_counter()
    out["cache_loaded"] = S.load_compile_cache(a.start_probe)
    out["load_cache_s"] = time.perf_counter() - t0
    save()
    b = Bench(a, with_ad_temporal=False)
    out["build_s"] = b.build_s
    b.speed_up(SETTINGS["best"])
    resident = Residency(b.models, b.device, staged=False)
    save()
    for key in ("first_run_s", "second_run_s"):
        b.timer.reset()
        run = functools.partial(b.confiner, "ms", resident)
        if key == "first_run_s" and a.host_profile_first_run:  # where the warm start's host time goes
            run = host_profiled(run, f"{a.host_profile_first_run}.start_probe.txt", top=80)
            out["first_run_host_profiled"] = True   # its time, and warm_start_s, then include cProfile's own
        sync(b.device)
        t0 = time.perf_counter()
        run()
        sync(b.device)
        out[key] = time.perf_counter() - t0
        # where a first run's extra time goes (a module's span includes the host work inside it: loading
        # compiled code, JIT-compiling kernels, cuDNN's autotuning)
        out[key.replace("_run_s", "_modules_s")] = b.timer.seconds()
        if b.block_store is not None:  # blocks kept on disk: how many were loaded rather than compiled
            out["precompiled"] = b.block_store.summary()
        save()
    out["warm_start_s"] = out["import_s"] + out["load_cache_s"] + out["first_run_s"]
    out["compile_from_cache_s"] = out["first_run_s"] - out["second_run_s"]
    out["compile_phases"] = compile_phases()
    save()
    print(json.dumps(out, indent=2, default=float))


def set_inductor_config(items: list[str]) -> dict:
    """``KEY=VALUE`` items set on ``torch._inductor.config`` (VALUE a Python literal); returns what was set. Nothing is
    set unless every item is valid (ValueError names the first that is not)."""
    import torch._inductor.config as inductor_config  # torch.compile imports it at its first call; these go first

    values = {}
    for item in items:
        key, _, value = item.partition("=")
        if not hasattr(inductor_config, key):
            raise ValueError(f"torch._inductor.config has no {key!r}")
        try:
            values[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"{item}: the value must be a Python literal (True, 1, 'x')") from None
    for key, value in values.items():
        setattr(inductor_config, key, value)
    return values


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", nargs="+", choices=tuple(TABLES), default=["eager", "lean", "best"])
    ap.add_argument("--profile", nargs="*", choices=tuple(TABLES), default=["eager", "best"],
                    help="tables after which one ConFiner run is profiled")
    ap.add_argument("--host-profile-first-run", default=None, metavar="PREFIX",
                    help="run the first timed ConFiner run of each table under cProfile and write its top functions "
                         "to PREFIX.<table>.txt (under max that run captures the text encoders' CUDA graphs; its "
                         "time then includes cProfile's own); with --start-probe, the probe's first run, to "
                         "PREFIX.start_probe.txt")
    ap.add_argument("--attention-probe", nargs="*", choices=tuple(TABLES), default=["lean"],
                    help="tables in which one forward per network is timed under every attention backend")
    ap.add_argument("--compile", choices=COMPILE_SCOPES, default="blocks",
                    help="torch.compile scope of the 'best' and 'max' settings")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (CPU smoke: 'eager')")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke run)")
    ap.add_argument("--size", type=int, default=None,
                    help="frame size in pixels (default 512; 64 for --tiny on the CPU, where 512 ran past 5 minutes)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-repeats", type=int, default=2)
    ap.add_argument("--long", type=int, nargs="*", default=[])
    ap.add_argument("--long-settings", nargs="*", choices=tuple(TABLES), default=["best"],
                    help="the tables after which the long videos run")
    ap.add_argument("--decode-chunk", type=int, default=DEFAULT_CHUNK_FRAMES, help="frames the VAE decodes at a time")
    ap.add_argument("--only", nargs="*", default=None, help="subset of runs by name prefix")
    ap.add_argument("--no-staged", action="store_true", help="skip the staged-residency runs")
    ap.add_argument("--cache-out", default=None, help="save the compiled artifacts here after the 'best' table")
    ap.add_argument("--start-probe", default=None, metavar="CACHE_FILE",
                    help="the warm-start probe: load this compile cache and time the first best-settings run")
    ap.add_argument("--load-with-compile-workers", action="store_true",
                    help="with --start-probe: load the kept blocks with inductor's pool of compile workers, as "
                         "before precompiled.LOAD_COMPILE_THREADS (its A/B)")
    ap.add_argument("--compile-dir", default=None,
                    help="the 'best' and 'max' settings keep their compiled blocks in this folder (compiled ahead of "
                         "time and saved by the first process, loaded by later ones: speed.SpeedSettings.compile_dir)")
    ap.add_argument("--attention", default=None, choices=S.ATTENTION_BACKENDS,
                    help="the attention backend in every table whose preset sets one (the spatial attention)")
    ap.add_argument("--temporal-attention", default=None, choices=S.ATTENTION_BACKENDS,
                    help="the attention backend over frames in every table whose preset sets one")
    ap.add_argument("--no-cudnn-benchmark", action="store_true",
                    help="no cuDNN autotuning in any table (it tunes every new convolution shape at its first call "
                         "in each process: part of a warm start)")
    ap.add_argument("--no-fold-upsample", action="store_true",
                    help="upsampling as diffusers runs it (nearest x2, then the 3x3 convolution) in every table, not "
                         "as one transposed convolution (the presets until 2026-12-04)")
    ap.add_argument("--norms", choices=("as-set", "before-rows"), default="as-set",
                    help="GroupNorm kernels: as fused_norm picks them, or as before the row kernels (per group "
                         "outside compiled blocks, inductor's inside them; until 2026-12-03)")
    ap.add_argument("--inductor-config", nargs="*", default=[], metavar="KEY=VALUE",
                    help="set torch._inductor.config.KEY to the Python literal VALUE before anything compiles (a "
                         "candidate for the compiled presets, e.g. coordinate_descent_tuning=True)")
    ap.add_argument("--forward-flops", default=None, metavar="JSON",
                    help="only count the FLOPs of each probed forward (meta device, no GPU) and write them here")
    ap.add_argument("--deadline", type=float, default=float("inf"), help="seconds from start to stop starting runs")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.size is None:
        a.size = 64 if a.tiny and a.device == "cpu" else 512
    os.makedirs(a.out, exist_ok=True)
    order = list(TABLES)
    if [order.index(s) for s in a.settings] != sorted(order.index(s) for s in a.settings):
        ap.error(f"--settings are applied on top of each other: give them in the order {order}")
    if any(s in LAST_ONLY for s in a.settings[:-1]):
        ap.error(f"--settings: {', '.join(LAST_ONLY)} captures CUDA graphs, which nothing can be applied on top of: "
                 "give it last")
    for name in ("best", "max"):
        SETTINGS[name] = dataclasses.replace(SETTINGS[name], compile=a.compile, backend=a.backend,
                                             compile_dir=a.compile_dir)
    for name, settings in SETTINGS.items():   # a candidate for the presets' attention backends, in every table
        if a.attention and settings.attention != "default":
            settings = SETTINGS[name] = dataclasses.replace(settings, attention=a.attention)
        if a.temporal_attention and settings.temporal_attention is not None:
            settings = SETTINGS[name] = dataclasses.replace(settings, temporal_attention=a.temporal_attention)
        if a.no_cudnn_benchmark:
            settings = SETTINGS[name] = dataclasses.replace(settings, cudnn_benchmark=False)
        if a.no_fold_upsample:
            SETTINGS[name] = dataclasses.replace(settings, fold_upsample=False)
    try:
        inductor_config = set_inductor_config(a.inductor_config)
    except ValueError as e:
        ap.error(f"--inductor-config: {e}")
    if a.norms == "before-rows":
        FN.ROWS_FOR_CHANNELS_LAST = FN.KERNELS_UNDER_COMPILE = False
    if a.start_probe:
        return start_probe(a)
    if a.forward_flops:
        write_atomic(a.forward_flops, json.dumps(forward_flops(a), indent=2).encode())
        return None

    if a.compile_dir:  # before anything imports flash-attn-4, which reads where to keep its kernels then
        keep_kernels_in(a.compile_dir)
    b = Bench(a)
    dev = b.device
    res = {"device_name": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "diffusers": diffusers.__version__, "date": datetime.date.today().isoformat(), "size": a.size,
           "frames": 16, "tiny": a.tiny, "import_s": IMPORT_S, "build_s": b.build_s, "deadline_s": a.deadline,
           "norm_kernels": {"rows_for_channels_last": FN.ROWS_FOR_CHANNELS_LAST,
                            "kernels_under_compile": FN.KERNELS_UNDER_COMPILE, "row_stages": FN.ROW_STAGES},
           "flash_attn_4": F4.installed(),   # found (imported at the first call it takes)
           "inductor_config": inductor_config,
           "params_m": {k: round(params_m(v), 1) for k, v in b.models.items()}, "tables": {}, "long": {}}

    def save():
        res["elapsed_s"] = elapsed()
        for name, text in (("results.json", json.dumps(res, indent=2, default=str)), ("results.md", markdown(res))):
            write_atomic(os.path.join(a.out, name), text.encode())

    def probe(setting, models=None):
        if setting in a.attention_probe:
            backends = ["default", "cudnn", "flash", "efficient"] + (["flash4", "fastest"] if res["flash_attn_4"]
                                                                      else [])
            return b.launch_probe(backends, models)
        return b.launch_probe(models=models)

    plan = make_plan(a)
    print(f"[{elapsed():6.0f} s] built in {b.build_s:.1f} s; plan: {plan}", flush=True)
    resident = None
    current = None
    skipped: set = set()
    for index, (setting, name) in enumerate(plan):
        if setting != current:
            current = setting
            settings, dtype = TABLES[setting]
            settings = SETTINGS[setting]
            dtype = dtype if dev.type == "cuda" else torch.float32
            if dtype != dtype_of(b.models["sd"]):
                b.cast(dtype)
            table = res["tables"][setting] = {"settings": settings.describe(), "decode_chunk": a.decode_chunk,
                                              "dtype": str(dtype).replace("torch.", ""),
                                              "runs": {}, "ratios": {}}
            t0 = time.perf_counter()
            table["applied"] = b.speed_up(settings)
            used = set()  # the networks this table's runs called
            table["apply_s"] = time.perf_counter() - t0
            resident = Residency(b.models, dev, staged=False)
            if settings.compile == "none":  # compiled tables probe last, so that their first run is the cold start
                table["launch_probe"] = probe(setting)
            save()
        if not fits(plan, index, a, skipped):
            if first_of_table(plan, index) and SETTINGS[setting].compile != "none":
                skipped.add(setting)
            if name != "profile":
                table["runs"][name] = None
            print(f"[{elapsed():6.0f} s] {setting} {name}: skipped (deadline)", flush=True)
            save()
        else:  # a skipped job still ends its table below: the compile cache of what did run is saved
            prior = run_prior(setting, name, a, first_of_table(plan, index))
            try:
                if name == "profile":
                    b.timer.reset()
                    summary = P.profile_run(lambda: b.confiner("ms", resident), dev)
                    kinds = b.flops.by_kind(b.timer.calls)
                    summary.update(P.rates(summary, kinds))
                    try:
                        summary["sync_audit"] = P.sync_audit(lambda: b.confiner("ms", resident), dev)
                    except Exception as e:  # noqa: BLE001 (a diagnostic: the profile stands without it)
                        summary["sync_audit"] = {"error": f"{type(e).__name__}: {e}"[:300]}
                    table["profile"] = summary
                elif name == "confiner_4+5_modelscope_staged":
                    del resident
                    torch.cuda.empty_cache()
                    staged = Residency(b.models, dev, staged=True)
                    table["runs"][name] = timed(lambda: b.confiner("ms", staged), dev, a.repeats, b.timer, b.flops,
                                                a.deadline, prior)
                    del staged
                    resident = Residency(b.models, dev, staged=False)
                else:
                    jobs = {
                        "confiner_4+5_modelscope": (lambda: b.confiner("ms", resident), None),
                        "confiner_4+5_animatediff": (lambda: b.confiner("ad", resident), None),
                        "modelscope_100": (lambda: b.baseline("ms", 100, resident, "leading", 1),
                                           lambda: b.baseline("ms", 2, resident, "leading", 1)),
                        "modelscope_50": (lambda: b.baseline("ms", 50, resident, "leading", 1),
                                          lambda: b.baseline("ms", 2, resident, "leading", 1)),
                        "animatediff_25": (lambda: b.baseline("ad", 25, resident, "linspace", 0),
                                           lambda: b.baseline("ad", 2, resident, "linspace", 0)),
                    }
                    fn, warmup = jobs[name]
                    reps = a.repeats if name.startswith("confiner") else a.baseline_repeats
                    first = None
                    if a.host_profile_first_run and name == "confiner_4+5_modelscope":
                        first = functools.partial(host_profiled, path=f"{a.host_profile_first_run}.{setting}.txt")
                    table["runs"][name] = timed(fn, dev, reps, b.timer, b.flops, a.deadline, prior, warmup,
                                                lambda: getattr(getattr(b, "graph_pool", None), "captured", 0),
                                                first)
            except Exception as e:  # noqa: BLE001 (one failing run must not lose the others: recorded, and on we go)
                import traceback
                traceback.print_exc()
                (table.__setitem__("profile", {"error": f"{type(e).__name__}: {e}"[:500]}) if name == "profile" else
                 table["runs"].__setitem__(name, {"error": f"{type(e).__name__}: {e}"[:500]}))
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            run = table["runs"].get(name) if name != "profile" else table.get("profile")
            if name == "confiner_4+5_modelscope" and run and "warmup_s" in run:
                if setting == "best":
                    res["cold_start_s"] = IMPORT_S + run["warmup_s"]
                    res["cold_compile_s"] = run["warmup_s"] - run["wall_s"]
                elif setting == "lean":
                    res["lean_cold_start_s"] = IMPORT_S + run["warmup_s"]
            table["ratios"] = ratios(table["runs"])
            pool = getattr(b, "graph_pool", None)
            if pool is not None and setting == "max":
                table["graph_pool"] = {"captured": pool.captured, "replays": pool.replays, "failures": pool.failures}
            print(f"[{elapsed():6.0f} s] {setting} {name}: "
                  f"{run and (round(run['wall_s'], 3) if 'wall_s' in run else run.get('error', 'done'))}", flush=True)
            if b.block_store is not None and SETTINGS[setting].compile_dir:
                table["precompiled"] = b.block_store.summary()  # blocks compiled and saved, or loaded, so far
            save()
        last_of_table = index + 1 == len(plan) or plan[index + 1][0] != setting
        used.update(n for n, _ in b.timer.calls)
        if last_of_table and SETTINGS[setting].compile != "none" and setting not in skipped:
            table["launch_probe"] = probe(setting, used)
        if last_of_table and setting == "best" and a.cache_out:
            t0 = time.perf_counter()
            try:
                res["compile_cache"] = {**S.save_compile_cache(a.cache_out), "save_s": time.perf_counter() - t0}
            except Exception as e:  # noqa: BLE001
                res["compile_cache"] = {"error": f"{type(e).__name__}: {e}"[:300]}
            save()
        if last_of_table and setting in a.long_settings and a.long and setting not in skipped:
            # one run each; the warm-up is a 16-frame ConFiner run, which has every shape a long run uses
            long = res["long"][setting] = {"settings": SETTINGS[setting].describe(), "runs": {}}
            warmup = lambda: b.confiner("ms", resident)  # noqa: E731
            for frames in a.long:
                prior = frames * PRIOR_S["long_per_frame"] * (1 if not a.tiny else 0.01)
                run = long["runs"][str(frames)] = timed(lambda: b.long(frames, resident), dev, 1, b.timer, b.flops,
                                                        a.deadline, prior, warmup=warmup)
                warmup = lambda: None  # noqa: E731
                print(f"[{elapsed():6.0f} s] {setting} long {frames}: {run and round(run['wall_s'], 2)}", flush=True)
                save()
    save()
    print(markdown(res))


if __name__ == "__main__":
    main()
