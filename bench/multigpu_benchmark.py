"""ConFiner-Long on 1, 2 and 4 GPUs of one host (torchrun + torch.distributed): speed-up and peak memory per GPU.

Two workloads with full-size random-weight experts (weights do not change compute):

* ``sd``: 600 frames at 512x512, segments of 16 -- the models of ``gpu_benchmark.py`` (AnimateDiff-style control,
  SD 1.5 spatial, ModelScope temporal, SD VAE, CLIP-L and OpenCLIP-H text encoders), fp16, all three strategies on:
  39 structures, 38 windows;
* ``wan``: 161 frames at 480x832, segments of 21 (4k+1) -- Wan 2.1 T2V 1.3B as control, temporal and (one latent
  frame at a time) spatial expert, the Wan VAE (windows are joined through pixels, as for every causal space) and
  UMT5-XXL, bf16: 9 structures, 8 windows.

One run = one torchrun launch (``--nproc-per-node 1`` is the ordinary single-process path: no process group). Every
rank builds every model on its own GPU (so the memory per GPU of N processes is about one process's), runs a
two-window warm-up (cuDNN/cuBLAS choices, NCCL channels), then the timed video: from a barrier to the last window
sunk on rank 0, windows decoded to uint8 on the rank that refined them, as the command line does. Rank 0 hashes the
frames in order: equal hashes across process counts mean the same video (eager kernels are deterministic per shape;
``--speed fast`` autotunes per process and is not used here). Peak memory is ``torch.cuda.max_memory_allocated``
of each rank during the timed run (PyTorch's allocator); ``device_used_gib_per_gpu`` is the device's used memory
after it (``mem_get_info``: with the CUDA context and NCCL's buffers).

    python bench/multigpu_benchmark.py --nproc 1 2 4 --out $OUT                      # GPU machine, both models
    python bench/multigpu_benchmark.py --tiny --device cpu --nproc 1 2 --out /tmp/mg  # CPU smoke (gloo)
    cp $OUT/multigpu.json bench/gpu_results/ && python bench/gpu_report.py            # RESULTS.json keys

The launcher starts ``python -m torch.distributed.run --standalone --nproc-per-node N`` for each count and model,
writes ``multigpu_<model>_<N>.json`` per run and ``multigpu.json`` (all runs, speed-ups against 1 process) after
each run, and skips what cannot finish before ``--deadline``. Every run gets ``OMP_NUM_THREADS=1`` unless it is
set (torchrun's choice for N > 1, so one process computes with the same CPU kernels); NCCL environment variables are
left as they are.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
import time

T0 = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from confiner_core.outputs import write_atomic  # noqa: E402

WORKLOADS = {  # frames, segment length, height, width (tiny: the CPU smoke's)
    "sd": {"frames": 600, "segment": 16, "size": (512, 512), "tiny": {"frames": 48, "size": (64, 64)}},
    "wan": {"frames": 161, "segment": 21, "size": (480, 832), "tiny": {"frames": 41, "segment": 9,
                                                                      "size": (64, 64)}},
}
PRIOR_S = {"sd": 110.0, "wan": 150.0}   # rough one-GPU minutes of a run, to skip what cannot end before --deadline

WAN_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
               text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)  # Wan2.1-T2V-1.3B transformer
WAN_SHIFT = 3.0   # Wan2.1-T2V-1.3B-Diffusers' scheduler flow_shift
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", dropout_rate=0.0)
WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
TINY_WAN = dict(
    transformer=dict(WAN_13B, num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2, text_dim=32,
                     rope_max_seq_len=32),
    umt5=dict(UMT5_XXL, vocab_size=1024, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
              relative_attention_num_buckets=8, relative_attention_max_distance=16),
    vae=dict(WAN_VAE, base_dim=3, dim_mult=[1, 1, 1, 1], num_res_blocks=1))
FULL_WAN = dict(transformer=WAN_13B, umt5=UMT5_XXL, vae=WAN_VAE)
PROMPT = "a corgi running on a sunny beach, waves, golden hour"
NEGATIVE = "blurry, low quality"


def elapsed() -> float:
    return time.perf_counter() - T0


# ----------------------------------------------------------------------------------------------------------------
# Experts

def sd_experts(tiny: bool, dtype, device) -> tuple[dict, object, dict]:
    """gpu_benchmark.py's models on ``device``: (experts by role, codec, guidance by role)."""
    import gpu_benchmark as g
    from confiner_core.diffusers_backend.experts import FrameExpert, MotionExpert, UNet3DExpert
    from confiner_core.diffusers_backend.text import PromptEncoder
    from confiner_core.diffusers_backend.vae import AutoencoderKLCodec
    from confiner_core.latent_spaces import SD15
    from tiny_diffusers import tiny_tokenizer

    cfg = dict(g.TINY if tiny else g.FULL)
    models = g.build(cfg, dtype, device)
    del models["ad_temporal"]   # gpu_benchmark's second motion model: not an expert of this chain
    tok = tiny_tokenizer()
    enc_l, enc_h = PromptEncoder(tok, models["clip_l"]), PromptEncoder(tok, models["clip_h"])
    experts = {"control": MotionExpert(models["control"], enc_l, dict(g.AD_SCHED), "animatediff-lightning"),
               "spatial": FrameExpert(models["sd"], enc_l, dict(g.SD_SCHED), "sd15"),
               "temporal": UNet3DExpert(models["ms"], enc_h, dict(g.SD_SCHED), "modelscope")}
    codec = AutoencoderKLCodec(models["vae"], SD15)
    return experts, codec, {"control": 1.0, "spatial": 7.5, "temporal": 7.5}


def wan_experts(tiny: bool, dtype, device) -> tuple[dict, object, dict]:
    """Wan 2.1 T2V 1.3B (random weights) in every role, its VAE as the codec of every expert."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from confiner_core.diffusers_backend.families.wan import UMT5PromptEncoder, WanExpert, WanImageExpert, \
        WanVAECodec
    from confiner_core.latent_spaces import WAN21
    from tiny_diffusers import tiny_tokenizer   # ids only matter for shape (UMT5's vocabulary is larger)

    cfg = TINY_WAN if tiny else FULL_WAN
    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(**cfg["transformer"])
        text = UMT5EncoderModel(UMT5Config(**cfg["umt5"]))
        vae = AutoencoderKLWan(**cfg["vae"])
    for m in (transformer, text, vae):
        m.to(dtype).eval().requires_grad_(False)
    encoder = UMT5PromptEncoder(tiny_tokenizer(), text)
    experts = {"control": WanExpert(transformer, encoder, WAN_SHIFT, WAN21, name="control", source="wan 1.3B"),
               "spatial": WanImageExpert(transformer, encoder, WAN_SHIFT, WAN21, name="spatial", source="wan 1.3B"),
               "temporal": WanExpert(transformer, encoder, WAN_SHIFT, WAN21, name="temporal", source="wan 1.3B")}
    codec = WanVAECodec(vae, WAN21)
    for e in experts.values():
        e.codec = codec
    return experts, codec, {"control": 1.0, "spatial": 5.0, "temporal": 5.0}


# ----------------------------------------------------------------------------------------------------------------
# One run (a torchrun worker)

def video(experts: dict, codec, guidance: dict, frames: int, segment: int, size: tuple, device: str, ranks) -> dict:
    """ConFiner-Long (paper defaults, all three strategies) over ``frames``; rank 0 returns the frames' hash."""
    import torch

    from confiner_core.chain import ChainConfig
    from confiner_core.experts import EvaluationLog
    from confiner_core.latent_spaces import to_uint8
    from confiner_core.long import LongConfig, generate_long, plan_segments

    log = EvaluationLog()
    bound = {r: e.bind(PROMPT, NEGATIVE, guidance[r], log) for r, e in experts.items()}
    plan = plan_segments(frames, segment, True)
    space = experts["control"].latent_space
    frame_shape = (1, space.channels, size[0] // space.spatial_factor, size[1] // space.spatial_factor)
    digest, written = hashlib.sha256(), [0]

    def prepare(latent, window):   # on the rank that refined the window, as the command line decodes
        return to_uint8(codec.decode(latent))[0, :window.frames].cpu()

    def sink(latent, window, frames):
        digest.update(frames.numpy().tobytes())
        written[0] += frames.shape[0]

    generate_long(bound["control"], bound["spatial"], bound["temporal"], plan, frame_shape, ChainConfig(),
                  LongConfig(segment_length=segment), 0, sink, device=device, prepare=prepare, ranks=ranks)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return {"frames_written": written[0], "frames_sha256": digest.hexdigest() if ranks.rank == 0 else None,
            "evaluations": dict(log.evaluations), "network_forwards": dict(log.forwards),
            "structures": plan.structures, "windows": len(plan.windows)}


def gather(ranks, value) -> list:
    """Every rank's ``value`` on every rank (the control plane's gloo group; one process: itself)."""
    if ranks.world == 1:
        return [value]
    import torch.distributed as dist

    out = [None] * ranks.world
    dist.all_gather_object(out, value)
    return out


def worker(a) -> None:
    import diffusers
    import torch

    from confiner_core import distributed

    w = WORKLOADS[a.model]
    spec = {**w, **(w["tiny"] if a.tiny else {})}
    frames, segment, size = a.frames or spec["frames"], spec["segment"], tuple(spec["size"])
    with distributed.session() as ranks:
        device = ranks.device_for(a.device)
        cuda = torch.device(device).type == "cuda"
        dtype = (torch.float16 if a.model == "sd" else torch.bfloat16) if cuda else torch.float32
        t0 = time.perf_counter()
        experts, codec, guidance = (sd_experts if a.model == "sd" else wan_experts)(a.tiny, dtype, device)
        build_s = time.perf_counter() - t0
        ranks.connect(device)
        t0 = time.perf_counter()
        video(experts, codec, guidance, 2 * segment, segment, size, device, ranks)   # warm-up: two windows
        warmup_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        ranks.barrier()
        t0 = time.perf_counter()
        result = video(experts, codec, guidance, frames, segment, size, device, ranks)
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        # the whole device as the driver sees it: PyTorch's pool plus the CUDA context and NCCL's buffers
        used = (lambda free, total: (total - free) / 2**30)(*torch.cuda.mem_get_info()) if cuda else None
        per_rank = gather(ranks, {"peak_gib": peak, "device_used_gib": used, "evaluations": result["evaluations"],
                                  "network_forwards": result["network_forwards"], "wall_s": wall})
        if ranks.rank != 0:
            return
        total = {}
        for r in per_rank:
            for k, v in r["evaluations"].items():
                total[k] = total.get(k, 0) + v
        out = {"model": a.model, "processes": ranks.world, "backend": getattr(ranks, "backend", None),
               "device": a.device, "device_name": torch.cuda.get_device_name() if cuda else "cpu",
               "torch": torch.__version__, "diffusers": diffusers.__version__,
               "date": datetime.date.today().isoformat(), "tiny": a.tiny, "frames": frames, "segment": segment,
               "size": list(size), "dtype": str(dtype), "wall_s": wall, "build_s": build_s, "warmup_s": warmup_s,
               "peak_gib_per_gpu": [r["peak_gib"] for r in per_rank],
               "device_used_gib_per_gpu": [r["device_used_gib"] for r in per_rank], "evaluations": total,
               "evaluations_per_rank": [r["evaluations"] for r in per_rank],
               **{k: result[k] for k in ("frames_written", "frames_sha256", "structures", "windows")}}
        write_atomic(os.path.join(a.out, f"multigpu_{a.model}_{ranks.world}.json"), json.dumps(out, indent=2).encode())
        print(f"[{a.model} x{ranks.world}] {frames} frames: {wall:.2f} s, peak "
              f"{', '.join(f'{p:.2f}' for p in out['peak_gib_per_gpu'] if p is not None) or '-'} GiB per GPU, "
              f"sha256 {out['frames_sha256'][:16]}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# The launcher

def summary(runs: dict) -> dict:
    """Speed-ups against one process and whether every count made the same video."""
    out = {}
    for model, by_n in runs.items():
        one = by_n.get("1")
        entry = {"runs": by_n}
        if one:
            entry["speedup"] = {n: one["wall_s"] / r["wall_s"] for n, r in by_n.items()}
            entry["same_video"] = {n: r["frames_sha256"] == one["frames_sha256"] for n, r in by_n.items()}
        entry["peak_gib_per_gpu"] = {n: max(p for p in r["peak_gib_per_gpu"] if p is not None)
                                     if any(p is not None for p in r["peak_gib_per_gpu"]) else None
                                     for n, r in by_n.items()}
        out[model] = entry
    return out


def markdown(summary_: dict) -> str:
    lines = ["| model | processes | frames | wall s | speed-up | peak GiB per GPU | same video as 1 |",
             "|---|---|---|---|---|---|---|"]
    for model, entry in summary_.items():
        for n, r in entry["runs"].items():
            pk = entry["peak_gib_per_gpu"][n]
            lines.append(f"| {model} | {n} | {r['frames']} | {r['wall_s']:.2f} | "
                         f"{entry.get('speedup', {}).get(n, float('nan')):.2f}x | "
                         f"{'' if pk is None else f'{pk:.2f}'} | {entry.get('same_video', {}).get(n, '')} |")
    return "\n".join(lines) + "\n"


def launch(a) -> None:
    os.makedirs(a.out, exist_ok=True)
    runs: dict = {}
    for model in a.models:
        for n in a.nproc:
            prior = PRIOR_S[model] / n * (0.02 if a.tiny else 1.0) + 60
            if elapsed() + prior > a.deadline:
                print(f"[{elapsed():5.0f} s] {model} x{n}: skipped (deadline)", flush=True)
                continue
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                   os.path.abspath(__file__), "--worker", "--model", model, "--device", a.device, "--out", a.out]
            cmd += ["--tiny"] if a.tiny else []
            cmd += ["--frames", str(a.frames)] if a.frames else []
            print(f"[{elapsed():5.0f} s] {' '.join(cmd[3:7])} ... {model}", flush=True)
            # torchrun gives each of N > 1 processes one CPU thread; the same for one process, so CPU kernels
            # (thread-count dependent) compute the same numbers and nobody oversubscribes the host's cores
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            try:
                run = subprocess.run(cmd, timeout=max(a.deadline - elapsed(), 1), env=env)
            except subprocess.TimeoutExpired:
                print(f"{model} x{n}: stopped at the deadline", flush=True)
                continue
            path = os.path.join(a.out, f"multigpu_{model}_{n}.json")
            if run.returncode != 0 or not os.path.isfile(path):
                print(f"{model} x{n}: failed (exit {run.returncode})", flush=True)
                continue
            with open(path) as f:
                runs.setdefault(model, {})[str(n)] = json.load(f)
            result = {"date": datetime.date.today().isoformat(), "tiny": a.tiny, "models": summary(runs)}
            write_atomic(os.path.join(a.out, "multigpu.json"), json.dumps(result, indent=2).encode())
    if runs:
        print(markdown(summary(runs)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", choices=tuple(WORKLOADS), default=list(WORKLOADS))
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2, 4], help="processes (GPUs) per run")
    ap.add_argument("--device", default="cuda", help="cuda (one GPU per process, NCCL) or cpu (gloo)")
    ap.add_argument("--tiny", action="store_true", help="tiny models and videos (CPU smoke run)")
    ap.add_argument("--frames", type=int, default=None, help="override the workload's frame count")
    ap.add_argument("--deadline", type=float, default=float("inf"), help="seconds from start to stop starting runs")
    ap.add_argument("--out", required=True)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=tuple(WORKLOADS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
    else:
        launch(a)


if __name__ == "__main__":
    main()
