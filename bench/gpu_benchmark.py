"""ConFiner against the baselines it claims to beat, on one GPU, with full-size random-weight experts.

Weights do not change compute, so every model is built from its real config with random weights (fp16):
SD 1.5 UNet (860 M), AnimateDiff UNetMotionModel (SD 1.5 + motion adapter), ModelScope UNet3D (1.4 B), the SD
VAE, CLIP-L (SD) and the 1024-wide OpenCLIP-H text encoder (ModelScope). At 512x512x16 it times, end to end
(text encoding, sampling, VAE decode):

* ConFiner 4+5 coordinated (control cfg 1.0, refinement cfg 7.5) with ModelScope as temporal expert (the paper's
  set-up) and with an AnimateDiff motion model as temporal expert; all experts resident, and "staged" (only the
  experts in use on the GPU, the others parked in pinned CPU memory);
* ModelScope T2V at 50 and 100 DDIM steps and AnimateDiff at 25 steps, cfg 7.5;
* ConFiner-Long at 64, 256 and 600 frames.

Each figure is the median of repeated runs after warm-up runs (excluded), CUDA synchronised around every run;
expert, text-encoder and VAE time come from CUDA events around each module call, and "orchestration overhead" is
the rest of the wall time. ``--settings best`` applies channels_last and torch.compile to every UNet and the VAE
decoder, for ConFiner and baselines alike. Writes ``results_<settings>.json`` and a markdown table to ``--out``.

    python bench/gpu_benchmark.py --settings eager --out bench/gpu_eager     # on the GPU machine
    python bench/gpu_benchmark.py --tiny --device cpu --out /tmp/bench        # a CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from confiner_core.chain import ChainConfig, generate_structure, refine_structure  # noqa: E402
from confiner_core.diffusers_backend.experts import FrameExpert, MotionExpert, UNet3DExpert  # noqa: E402
from confiner_core.diffusers_backend.text import PromptEncoder  # noqa: E402
from confiner_core.diffusers_backend.vae import VideoDecoder  # noqa: E402
from confiner_core.experts import EvaluationLog  # noqa: E402
from confiner_core.long import LongConfig, generate_long, plan_segments  # noqa: E402
from confiner_core.sampling import sample_control  # noqa: E402
from confiner_core.timesteps import spaced_timesteps  # noqa: E402
from tiny_diffusers import tiny_tokenizer  # noqa: E402  (an in-code tokenizer: ids only matter for shape)

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


# ----------------------------------------------------------------------------------------------------------------
# Timing

class ModuleTimer:
    """CUDA events around every forward of the registered modules; read once, after a synchronise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.events: dict[str, list] = {}

    def watch(self, name: str, module: torch.nn.Module) -> None:
        if not self.enabled:
            return
        def pre(mod, args, kwargs=None):
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self.events.setdefault(name, []).append([start, None])
        def post(mod, args, out):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events[name][-1][1] = end
        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def reset(self) -> None:
        self.events = {}

    def seconds(self) -> dict:
        return {k: sum(s.elapsed_time(e) for s, e in v) / 1000 for k, v in self.events.items()}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup: int, repeats: int, timer: ModuleTimer) -> dict:
    """Median wall time (and the matching module times) over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    rows = []
    for _ in range(repeats):
        timer.reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t0 = time.perf_counter()
        info = fn() or {}
        sync(device)
        wall = time.perf_counter() - t0
        modules = timer.seconds()
        rows.append({"wall_s": wall, "modules_s": modules, **info,
                     "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None})
    rows.sort(key=lambda r: r["wall_s"])
    median = rows[len(rows) // 2]
    inside = sum(median["modules_s"].values())
    return {**median, "runs_s": [round(r["wall_s"], 4) for r in rows], "warmup_runs": warmup,
            "module_total_s": inside,
            "overhead_fraction": (median["wall_s"] - inside) / median["wall_s"] if timer.enabled else None}


# ----------------------------------------------------------------------------------------------------------------
# Models and residency

def build(cfg: dict, device, dtype):
    """Every model, random weights, parked in (pinned) CPU memory; ``Residency`` moves them in and out."""
    torch.manual_seed(0)
    sd = UNet2DConditionModel(**cfg["sd"])
    adapter = MotionAdapter(**cfg["adapter"])
    control = UNetMotionModel.from_unet2d(sd, adapter)                 # AnimateDiff-Lightning's architecture
    ad_temporal = UNetMotionModel.from_unet2d(sd, MotionAdapter(**cfg["adapter"]))  # a second motion model
    ms = UNet3DConditionModel(**cfg["ms"])
    vae = AutoencoderKL(**cfg["vae"])
    clip_l = CLIPTextModel(CLIPTextConfig(**cfg["clip_l"]))
    clip_h = CLIPTextModel(CLIPTextConfig(**cfg["clip_h"]))
    models = dict(sd=sd, control=control, ad_temporal=ad_temporal, ms=ms, vae=vae, clip_l=clip_l, clip_h=clip_h)
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
                self.host[name] = [t.data.pin_memory() if device.type == "cuda" else t.data for t in _tensors(m)]
                for t, h in zip(_tensors(m), self.host[name]):
                    t.data = h
            else:
                m.to(device)
                self.on_device.add(name)

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


def apply_best_settings(models: dict, device, compile_models: bool) -> None:
    """channels_last (and, optionally, torch.compile) for the UNets and the VAE, for ConFiner and baselines alike."""
    for name in ("sd", "vae"):  # 4-D convolutions; the video UNets reshape to 5-D and back internally
        models[name].to(memory_format=torch.channels_last)
    if compile_models:
        for name in ("sd", "control", "ad_temporal", "ms"):
            models[name].forward = torch.compile(models[name].forward, dynamic=False)
    models["vae"].decoder.forward = torch.compile(models["vae"].decoder.forward, dynamic=False)


# ----------------------------------------------------------------------------------------------------------------
# The runs

class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        cfg = TINY if args.tiny else FULL
        t0 = time.perf_counter()
        self.models = build(cfg, self.device, self.dtype)
        self.build_s = time.perf_counter() - t0
        self.timer = ModuleTimer(self.device.type == "cuda")
        m = self.models
        for name in ("sd", "control", "ad_temporal", "ms", "clip_l", "clip_h"):
            self.timer.watch({"clip_l": "text", "clip_h": "text"}.get(name, "experts"), m[name])
        self.timer.watch("vae", m["vae"].decoder)
        tok = tiny_tokenizer()
        enc_l, enc_h = PromptEncoder(tok, m["clip_l"]), PromptEncoder(tok, m["clip_h"])
        self.experts = {
            "control": MotionExpert(m["control"], enc_l, dict(AD_SCHED), "animatediff-lightning"),
            "spatial": FrameExpert(m["sd"], enc_l, dict(SD_SCHED), "sd15"),
            "ms": UNet3DExpert(m["ms"], enc_h, dict(SD_SCHED), "modelscope"),
            "ad": MotionExpert(m["ad_temporal"], enc_l, dict(AD_SCHED), "animatediff-v3"),
        }
        self.decoder = VideoDecoder(m["vae"], chunk_frames=args.decode_chunk)
        self.h = args.size // 8

    def noise(self, frames: int, seed: int = 0) -> torch.Tensor:
        from confiner_core.sampling import randn_like
        return randn_like(torch.empty(1, 4, frames, self.h, self.h, device=self.device),
                          torch.Generator().manual_seed(seed))

    # ConFiner 4+5 ----------------------------------------------------------------------------------------------
    def confiner(self, temporal: str, residency: Residency, frames: int = 16):
        log = EvaluationLog()
        temporal_model = {"ms": "ms", "ad": "ad_temporal"}[temporal]
        temporal_text = "clip_h" if temporal == "ms" else "clip_l"
        residency.use("clip_l", temporal_text)
        control = self.experts["control"].bind(PROMPT, NEGATIVE, 1.0, log)
        spatial = self.experts["spatial"].bind(PROMPT, NEGATIVE, 7.5, log)
        temp = self.experts[temporal].bind(PROMPT, NEGATIVE, 7.5, log)
        generator = torch.Generator().manual_seed(0)
        config = ChainConfig()
        residency.use("control")
        with log.stage("control"):
            structure = generate_structure(control, self.noise(frames), config, generator)
        residency.use("sd", temporal_model)
        with log.stage("refine"):
            latent = refine_structure(spatial, temp, structure, config, generator)
        residency.use("vae")
        self.decoder.decode(latent)
        return {"evaluations": dict(log.evaluations), "forwards": dict(log.forwards)}

    # Baselines -------------------------------------------------------------------------------------------------
    def baseline(self, expert: str, steps: int, residency: Residency, spacing: str, offset: int, frames: int = 16):
        log = EvaluationLog()
        model = {"ms": "ms", "ad": "ad_temporal"}[expert]
        residency.use("clip_h" if expert == "ms" else "clip_l")
        d = self.experts[expert].bind(PROMPT, NEGATIVE, 7.5, log)
        residency.use(model)
        with log.stage("sampling"):
            latent = sample_control(d, self.noise(frames), spaced_timesteps(steps, 999, spacing, offset), "ddim")
        residency.use("vae")
        self.decoder.decode(latent)
        return {"evaluations": dict(log.evaluations), "forwards": dict(log.forwards)}

    # ConFiner-Long ---------------------------------------------------------------------------------------------
    def long(self, frames: int, residency: Residency):
        log = EvaluationLog()
        residency.use("control", "sd", "ms", "vae", "clip_l", "clip_h")
        control = self.experts["control"].bind(PROMPT, NEGATIVE, 1.0, log)
        spatial = self.experts["spatial"].bind(PROMPT, NEGATIVE, 7.5, log)
        temp = self.experts["ms"].bind(PROMPT, NEGATIVE, 7.5, log)
        plan = plan_segments(frames, 16, True)
        generate_long(control, spatial, temp, plan, (1, 4, self.h, self.h), ChainConfig(), LongConfig(),
                      torch.Generator().manual_seed(0), lambda x, w: self.decoder.decode(x), device=self.device)
        return {"evaluations": dict(log.evaluations)}


def markdown(res: dict) -> str:
    r = res["runs"]
    lines = [f"### Settings: {res['settings']} ({res['device_name']}, torch {res['torch']}, {res['date']})", "",
             "| run | median s | runs (s) | expert evals | network forwards | overhead | peak GPU GiB |",
             "|---|---|---|---|---|---|---|"]
    for name, v in r.items():
        ev = sum(v.get("evaluations", {}).values())
        fw = sum(v.get("forwards", {}).values()) if v.get("forwards") else ""
        oh = f"{100 * v['overhead_fraction']:.1f} %" if v.get("overhead_fraction") is not None else ""
        pk = f"{v['peak_gpu_gib']:.2f}" if v.get("peak_gpu_gib") is not None else ""
        lines.append(f"| {name} | {v['wall_s']:.3f} | {v['runs_s']} | {ev} | {fw} | {oh} | {pk} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in res["ratios"].items()]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", choices=("eager", "best"), default="eager")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke run)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline-repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--long", type=int, nargs="*", default=[64, 256, 600])
    ap.add_argument("--decode-chunk", type=int, default=8)
    ap.add_argument("--only", nargs="*", default=None, help="subset of runs by name prefix")
    ap.add_argument("--compile", action="store_true", help="with --settings best: torch.compile every UNet "
                    "(on an H100 compiling the three UNets took over 6 minutes)")
    ap.add_argument("--no-staged", action="store_true", help="skip the staged-residency run")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    b = Bench(a)
    dev = b.device
    if a.settings == "best":
        apply_best_settings(b.models, dev, a.compile)
    resident = Residency(b.models, dev, staged=False)
    warm = a.warmup + (1 if a.compile else 0)
    jobs = {
        "confiner_4+5_modelscope": lambda: b.confiner("ms", resident),
        "confiner_4+5_animatediff": lambda: b.confiner("ad", resident),
        "modelscope_50": lambda: b.baseline("ms", 50, resident, "leading", 1),
        "modelscope_100": lambda: b.baseline("ms", 100, resident, "leading", 1),
        "animatediff_25": lambda: b.baseline("ad", 25, resident, "linspace", 0),
    }
    runs = {}
    for name, fn in jobs.items():
        if a.only and not any(name.startswith(p) for p in a.only):
            continue
        reps = a.repeats if name.startswith("confiner") else a.baseline_repeats
        runs[name] = timed(fn, dev, warm, reps, b.timer)
        print(f"{name}: {runs[name]['wall_s']:.3f} s", flush=True)
    for frames in a.long:
        name = f"confiner_long_{frames}"
        if a.only and not any(name.startswith(p) for p in a.only):
            continue
        runs[name] = timed(lambda: b.long(frames, resident), dev, 0 if frames > 64 else 1, 1, b.timer)
        print(f"{name}: {runs[name]['wall_s']:.3f} s", flush=True)
    if dev.type == "cuda" and not a.no_staged and (not a.only or any(p.startswith("confiner_4+5_modelscope") for p in a.only)):
        # the memory-lean variant: only the experts in use resident (pinned host copies for the others)
        for m in b.models.values():
            m.to("cpu")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        staged = Residency(b.models, dev, staged=True)
        runs["confiner_4+5_modelscope_staged"] = timed(lambda: b.confiner("ms", staged), dev, warm, a.repeats,
                                                       b.timer)
        print(f"staged: {runs['confiner_4+5_modelscope_staged']['wall_s']:.3f} s", flush=True)
    ratios = {}
    for c in ("confiner_4+5_modelscope", "confiner_4+5_animatediff"):
        for base in ("modelscope_100", "modelscope_50", "animatediff_25"):
            if c in runs and base in runs:
                ratios[f"ratio_{c.replace('confiner_4+5_', 'confiner_')}_to_{base}"] = \
                    runs[c]["wall_s"] / runs[base]["wall_s"]
    res = {"settings": a.settings + (" + torch.compile" if a.compile else " (channels_last)" if a.settings == "best" else ""), "device_name": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "date": datetime.date.today().isoformat(), "size": a.size, "frames": 16,
           "tiny": a.tiny, "build_s": b.build_s,
           "params_m": {k: round(params_m(v), 1) for k, v in b.models.items()}, "runs": runs, "ratios": ratios}
    with open(os.path.join(a.out, f"results_{a.settings}.json"), "w") as f:
        json.dump(res, f, indent=2, default=float)
    md = markdown(res)
    with open(os.path.join(a.out, f"results_{a.settings}.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
