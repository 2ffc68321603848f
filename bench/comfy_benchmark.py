"""ConFiner's basic template against its AnimateDiff-25 KSampler counterpart, inside a real ComfyUI, on one GPU.

ComfyUI (``--comfy``, a checkout) boots headless in this process as the host tests boot it
(``tests/comfy_support/harness.py``), with this repository as the custom node pack and AnimateDiff-Evolved from
``--ade``. The models are full size with random weights, written by this script in the files the template names: an
SD 1.5 checkpoint in ComfyUI's layout (``tests/comfy_support/synthetic_checkpoint.py``, recipe ``sd15-full``) and two
AnimateDiff motion modules in the original key layout, built from ADE's own module classes (a v2-style module with a
mid block, as AnimateDiff-Lightning is, and a v3 module without). Weights do not change compute.

Runs, each through ComfyUI's executor like a queued prompt (the loaders cached, the prompts re-encoded every run):

* ``example_workflows/ConFiner 1 - start here - SD 1.5 and AnimateDiff.json``, converted UI -> API as the frontend does: 4 control evaluations
  (AnimateDiff-Lightning, cfg 1) + 15 refinement evaluations (SD 1.5 and AnimateDiff v3, cfg 7.5), decode, save;
  once per evaluation mechanism of the pack (``session``: one long-lived sampling call per expert and stage, the
  default; ``per-evaluation``: one sampling call per evaluation, ``CONFINER_STAGE_SESSIONS=0``);
* its AnimateDiff-25 counterpart: the same checkpoint, the v3 motion model through ADE's Gen1 loader, ``KSampler``
  25 steps cfg 7.5, the template's decode and save nodes.

Per node: wall time (CUDA synchronised at every node boundary), GPU time inside ``BaseModel.apply_model`` (CUDA
events around every call: the model forward, ADE's motion modules and context windows included) and peak GPU memory.
**Host overhead** of a sampling node is its wall time minus its forward GPU time, i.e. the time the GPU spends on
anything but the model: per expert evaluation for ConFiner's two nodes, per step for KSampler. End to end is the
prompt's wall time without the save node (text encoding, sampling, decode), as ``bench/gpu_benchmark.py`` counts it.
Counts per node: sampling calls (``CFGGuider.sample``), evaluations (``CFGGuider.outer_predict_noise``),
``load_models_gpu``, ``prepare_sampling``, ``ModelPatcher.pre_run`` / ``cleanup`` and ``cleanup_models``, with their
inclusive host times, and per decode node how many decoder calls ComfyUI's VAE made and how many frames they took
(its frame batches, sized from free memory). ``--decode-node`` runs both prompts with another decode node (VAE Decode
or VAE Decode (Tiled)); ``--free-gib`` holds all free GPU memory but that much before the runs, so ComfyUI loads
models and sizes its VAE batches as on a smaller card. Medians of ``--repeats`` runs after one warm-up run each (excluded); results are written after every run
(``comfy_results.json``), so a call cut short still returns what it measured.

    # on the GPU machine (ComfyUI + ADE + wheels carried in the repo's excluded .comfy_bench/, made by
    # bench/prepare_comfy_carry.sh; the whole device command is "Call 4" in bench/README_GPU.md)
    python3 bench/comfy_benchmark.py --comfy .comfy_bench/ComfyUI --ade .comfy_bench/ComfyUI-AnimateDiff-Evolved \\
        --deadline 420 --out $OUT/comfy
    # the same as on an 8 GB card, the template's decode replaced by VAE Decode (Tiled)
    python3 bench/comfy_benchmark.py ... --free-gib 7 --decode-node VAEDecodeTiled --out $OUT/comfy_tiled_8gb
    # CPU smoke (full-size models, tiny clip)
    python bench/comfy_benchmark.py --comfy ~/.cache/confiner/comfyui-0.8.0 --ade ~/.cache/confiner/ade \\
        --device cpu --size 64 --frames 4 --repeats 1 --out /tmp/comfy-bench
    # CPU, tiny models (reduced UNet, TAESD; ADE's evolved sampling without motion models stands in for the loaders)
    python bench/comfy_benchmark.py ... --device cpu --models tiny --size 64 --frames 8 --repeats 3 --out /tmp/comfy-bench
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfy_support import harness  # noqa: E402  (stdlib only until boot)

TEMPLATE = ROOT / "example_workflows" / "ConFiner 1 - start here - SD 1.5 and AnimateDiff.json"
MECHANISMS = ("session", "per-evaluation")
CONFINER_NODES = ("ConFinerControlExpert", "ConFinerCoordinatedSampler")
SAVE_NODES = ("SaveAnimatedWEBP", "SaveImage", "VHS_VideoCombine")
ADE_LOADER = "ADE_AnimateDiffLoaderGen1"
TIMED_CALLS = ("load_models_gpu", "prepare_sampling", "pre_run", "cleanup", "cleanup_models")
AD_STEPS, AD_CFG = 25, 7.5


def elapsed() -> float:
    return time.perf_counter() - T0


def say(text: str) -> None:
    print(f"[{elapsed():6.0f} s] {text}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Models: full-size random weights in the files the template names

def _loaded_module(suffix: str):
    return next(m for name, m in sys.modules.items() if name.endswith(suffix))


def template_model_files(template: dict) -> dict:
    """{file name: kind} of the template's loaders: the checkpoint, and each ADE loader's motion module (a v2-style
    module with mid block for the control expert's loader, AnimateDiff-Lightning's architecture; v3 otherwise)."""
    files = {}
    links = {link[0]: link for link in template["links"]}
    control = next(n for n in template["nodes"] if n["type"] == "ConFinerControlExpert")
    model_link = next(i["link"] for i in control["inputs"] if i["name"] == "model")
    control_loader = links[model_link][1]
    for n in template["nodes"]:
        if n["type"] == "CheckpointLoaderSimple":
            files[n["widgets_values"][0]] = "checkpoint"
        elif n["type"] == ADE_LOADER:
            files[n["widgets_values"][0]] = "motion-v2" if n["id"] == control_loader else "motion-v3"
    return files


def build_motion_module(path: Path, mid_block: bool, seed: int) -> dict:
    """A random-weight AnimateDiff motion module (SD 1.5, 32-frame positional tables) in the original key layout,
    built from ADE's own classes, so every key and shape is what ADE's loader expects."""
    import torch
    from safetensors.torch import save_file

    from comfy_support.synthetic_checkpoint import _randomise

    mm = _loaded_module("animatediff.motion_module_ad")
    # ADE reads a module's structure off its keys: 4 down and 4 up blocks, two attention blocks, 32 positions
    layout = {"down_blocks.3.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1."
              "pos_encoder.pe": torch.zeros(1, 32, 320), "up_blocks.3.motion_modules.0.layout": torch.zeros(1)}
    if mid_block:
        layout["mid_block.motion_modules.0.layout"] = torch.zeros(1)
    version = mm.AnimateDiffVersion.V2 if mid_block else mm.AnimateDiffVersion.V3
    info = mm.AnimateDiffInfo(sd_type=mm.ModelTypeSD.SD1_5, mm_format=mm.AnimateDiffFormat.ANIMATEDIFF,
                              mm_version=version, mm_name=path.name)
    module = mm.AnimateDiffModel(mm_state_dict=layout, mm_info=info).float()
    _randomise(module, torch.Generator().manual_seed(seed))
    state = {k: v.detach().half().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)
    return {"keys": len(state), "params_m": round(sum(v.numel() for v in state.values()) / 1e6, 1)}


def build_models(models_dir: Path, files: dict, tiny: bool) -> dict:
    from comfy_support.synthetic_checkpoint import build_checkpoint

    built = {}
    for name, kind in files.items():
        folder = models_dir / ("checkpoints" if kind == "checkpoint" else "animatediff_models")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        t = time.perf_counter()
        if path.is_file():  # --models-dir from an earlier call
            built[name] = {"reused": str(path)}
            continue
        if kind == "checkpoint":
            stats = build_checkpoint(path, "tiny" if tiny else "sd15-full")
            built[name] = {"params_m": {k: round(v / 1e6, 1) for k, v in stats["params"].items()}}
        elif not tiny:
            built[name] = build_motion_module(path, kind == "motion-v2", seed=len(built))
        else:
            continue
        built[name]["build_s"] = round(time.perf_counter() - t, 1)
        say(f"built {name}: {built[name]}")
    return built


# ----------------------------------------------------------------------------------------------------------------
# Prompts

DECODE_NODES = {"VAEDecode": {}, "VAEDecodeTiled": {"tile_size": 512, "overlap": 64, "temporal_size": 64,
                                                   "temporal_overlap": 8}}  # ComfyUI's defaults


def confiner_prompt(template: dict, size: int, frames: int, tiny: bool, decode_node: str | None = None) -> dict:
    """The template as an API prompt at ``size`` and ``frames``; ``decode_node`` replaces its decode node (and so
    the AnimateDiff-25 counterpart's, which takes it from here)."""
    api = harness.workflow_to_api(template)
    for node in api.values():
        if decode_node and "vae" in node["inputs"] and "samples" in node["inputs"]:
            node["class_type"] = decode_node
            node["inputs"] = {"samples": node["inputs"]["samples"], "vae": node["inputs"]["vae"],
                              **DECODE_NODES[decode_node]}
        elif node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=size, height=size, batch_size=frames)
        elif node["class_type"] == ADE_LOADER and tiny:
            # no motion module fits the reduced UNet: ADE's evolved sampling alone (its wrappers, no motion)
            node["class_type"] = "ADE_UseEvolvedSampling"
            node["inputs"] = {"model": node["inputs"]["model"], "beta_schedule": node["inputs"]["beta_schedule"]}
    return api


def animatediff_prompt(confiner: dict) -> dict:
    """AnimateDiff-25 with the template's checkpoint, temporal motion model, prompts, size, decode and save."""
    by_class = defaultdict(list)
    for key, node in confiner.items():
        by_class[node["class_type"]].append(key)
    sampler = confiner[by_class["ConFinerCoordinatedSampler"][0]]
    bundle = confiner[sampler["inputs"]["experts"][0]]
    temporal_loader = bundle["inputs"]["temporal_model"][0]
    keep = {temporal_loader, bundle["inputs"]["spatial_positive"][0], bundle["inputs"]["spatial_negative"][0],
            *by_class["CheckpointLoaderSimple"], *by_class["EmptyLatentImage"]}
    api = {k: copy.deepcopy(confiner[k]) for k in keep}
    decode_key = next(k for k, n in confiner.items() if n["inputs"].get("samples") == [by_class[
        "ConFinerCoordinatedSampler"][0], 0])
    save_key = next(k for k, n in confiner.items() if n["class_type"] in SAVE_NODES)
    api["900"] = {"class_type": "KSampler", "inputs": {
        "model": [temporal_loader, 0], "seed": 0, "steps": AD_STEPS, "cfg": AD_CFG, "sampler_name": "ddim",
        "scheduler": "ddim_uniform", "positive": bundle["inputs"]["spatial_positive"],
        "negative": bundle["inputs"]["spatial_negative"], "latent_image": [by_class["EmptyLatentImage"][0], 0],
        "denoise": 1.0}}
    api[decode_key] = copy.deepcopy(confiner[decode_key])
    api[decode_key]["inputs"]["samples"] = ["900", 0]
    api[save_key] = copy.deepcopy(confiner[save_key])
    return api


def retitled(api: dict, take: int) -> dict:
    """The prompt with every text encode's text changed, so text encoding and everything after it run again while
    the loaders stay cached, as when an artist edits the prompt and queues again."""
    out = copy.deepcopy(api)
    for node in out.values():
        if node["class_type"] == "CLIPTextEncode":
            node["inputs"]["text"] = f"{node['inputs']['text']}, take {take}"
    return out


# ----------------------------------------------------------------------------------------------------------------
# Instruments

class Probe:
    """Node boundaries (the executor's "executing" messages), forward GPU time per node (``BaseModel.apply_model``),
    and counts and host times of the calls that set up and tear down a sampling call."""

    def __init__(self, torch, cuda: bool):
        self.torch, self.cuda = torch, cuda
        self.held = 0  # bytes a --free-gib filler holds: left out of every peak
        self.node = None
        self.node_t0 = self.node_cpu0 = 0.0
        self.profiled: set = set()   # node ids whose execution the profiler records (--profile)
        self.profiler = None
        self.reset()

    def reset(self):
        self.nodes: list = []        # (node id, wall s, process CPU s, peak GiB)
        self.forwards: list = []     # (node id, start, end) CUDA events, or (node id, wall s, process CPU s)
        self.counts: Counter = Counter()
        self.times: Counter = Counter()

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def peak_gib(self):
        """The peak GPU memory allocated since the last reset, the filler left out; None on the CPU."""
        return (self.torch.cuda.max_memory_allocated() - self.held) / 2**30 if self.cuda else None

    def hold_all_but(self, free_gib: float) -> float:
        """Take all the GPU's free memory but ``free_gib`` with one filler tensor, so ComfyUI (which sizes model
        loading and VAE batches from the free memory) runs as on a smaller card. Returns the GiB held."""
        free, _ = self.torch.cuda.mem_get_info()
        self.held = max(0, free - int(free_gib * 2**30))
        self.filler = self.torch.empty(self.held, dtype=self.torch.uint8, device="cuda")
        return self.held / 2**30

    def boundary(self, node):
        self.sync()
        now, cpu = time.perf_counter(), time.process_time()
        if self.node is not None:
            peak = self.peak_gib()
            self.nodes.append((self.node, now - self.node_t0, cpu - self.node_cpu0, peak))
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        if self.profiler is not None:
            if self.node in self.profiled:
                self.profiler.disable()
            if node in self.profiled:
                self.profiler.enable()
        self.node, self.node_t0, self.node_cpu0 = node, now, cpu

    def install(self, server):
        import comfy.model_base
        import comfy.model_management
        import comfy.model_patcher
        import comfy.sampler_helpers
        import comfy.samplers

        probe, torch = self, self.torch
        send = server.send_sync

        def send_sync(event, data, sid=None):
            if event == "executing" and isinstance(data, dict):
                probe.boundary(data.get("node"))
            return send(event, data, sid)

        server.send_sync = send_sync
        apply_model = comfy.model_base.BaseModel.apply_model

        def timed_apply_model(model, *args, **kwargs):
            if probe.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = apply_model(model, *args, **kwargs)
                end.record()
                probe.forwards.append((probe.node, start, end))
            else:
                t, cpu = time.perf_counter(), time.process_time()
                out = apply_model(model, *args, **kwargs)
                probe.forwards.append((probe.node, time.perf_counter() - t, time.process_time() - cpu))
            return out

        comfy.model_base.BaseModel.apply_model = timed_apply_model

        def counted(owner, name, label, timed):
            original = getattr(owner, name)

            def call(*args, **kwargs):
                probe.counts[(probe.node, label)] += 1
                t = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    if timed:
                        probe.times[(probe.node, label)] += time.perf_counter() - t
            setattr(owner, name, call)

        import comfy.ldm.models.autoencoder
        import comfy.taesd.taesd

        def count_decoder(cls):  # how many frames ComfyUI's VAE batches hand the decoder at once
            decode = cls.__dict__["decode"]

            def counted_decode(vae, z, *args, **kwargs):
                probe.counts[(probe.node, "vae_decoder_calls")] += 1
                probe.counts[(probe.node, "vae_decoder_frames")] += int(z.shape[0])
                return decode(vae, z, *args, **kwargs)
            cls.decode = counted_decode

        for cls in (comfy.ldm.models.autoencoder.AutoencodingEngine,  # SD 1.5's VAE (and the Legacy subclass's own)
                    comfy.ldm.models.autoencoder.AutoencodingEngineLegacy, comfy.taesd.taesd.TAESD):
            count_decoder(cls)
        counted(comfy.samplers.CFGGuider, "sample", "sampling_calls", False)
        counted(comfy.samplers.CFGGuider, "outer_predict_noise", "evaluations", False)
        counted(comfy.model_management, "load_models_gpu", "load_models_gpu", True)
        counted(comfy.sampler_helpers, "prepare_sampling", "prepare_sampling", True)
        counted(comfy.sampler_helpers, "cleanup_models", "cleanup_models", True)
        counted(comfy.model_patcher.ModelPatcher, "pre_run", "pre_run", True)
        counted(comfy.model_patcher.ModelPatcher, "cleanup", "cleanup", True)

    def forward_seconds(self) -> tuple[Counter, Counter]:
        """Per node: forward time (GPU time on CUDA, wall time on the CPU) and, on the CPU, its process CPU time."""
        self.sync()
        wall: Counter = Counter()
        cpu: Counter = Counter()
        for node, *t in self.forwards:
            if self.cuda:
                wall[node] += t[0].elapsed_time(t[1]) / 1000
            else:
                wall[node] += t[0]
                cpu[node] += t[1]
        return wall, cpu

    def summary(self, api: dict) -> dict:
        forward, forward_cpu = self.forward_seconds()
        calls = Counter(node for node, *_ in self.forwards)
        nodes = {}
        for node, wall, cpu, peak in self.nodes:
            row = nodes.setdefault(node, {"class": api.get(node, {}).get("class_type"), "wall_s": 0.0,
                                          "cpu_s": 0.0, "peak_gpu_gib": peak, "forward_s": forward.get(node, 0.0),
                                          "forward_cpu_s": forward_cpu.get(node, 0.0),
                                          "forwards": calls.get(node, 0)})
            row["wall_s"] += wall
            row["cpu_s"] += cpu
        for (node, label), n in self.counts.items():
            if node in nodes:
                nodes[node][label] = n
        for (node, label), s in self.times.items():
            if node in nodes:
                nodes[node][f"{label}_s"] = s
        return nodes


def run_once(api: dict, probe: Probe) -> dict:
    probe.reset()
    probe.boundary(None)
    result = harness.run_prompt(api)
    probe.boundary(None)
    probe.profiler = None
    if not result.success:
        raise RuntimeError(f"prompt failed: {result.error or result.status_messages}")
    nodes = probe.summary(api)
    save = sum(v["wall_s"] for v in nodes.values() if v["class"] in SAVE_NODES)
    return {"wall_s": result.elapsed_s, "end_to_end_s": sum(v["wall_s"] for v in nodes.values()) - save,
            "save_s": save, "nodes": nodes}


def sampling_figures(run: dict, classes: tuple) -> dict:
    """Host overhead of the sampling nodes: wall time outside the model forward, per evaluation (= per step)."""
    rows = [v for v in run["nodes"].values() if v["class"] in classes]
    wall, forward = sum(r["wall_s"] for r in rows), sum(r["forward_s"] for r in rows)
    cpu, forward_cpu = sum(r["cpu_s"] for r in rows), sum(r["forward_cpu_s"] for r in rows)
    evaluations = sum(r.get("evaluations", 0) for r in rows)
    counts = {label: sum(r.get(label, 0) for r in rows) for label in ("sampling_calls", *TIMED_CALLS)}
    times = {f"{label}_ms": 1000 * sum(r.get(f"{label}_s", 0.0) for r in rows) for label in TIMED_CALLS}
    return {"sampling_s": wall, "forward_s": forward, "evaluations": evaluations,
            "forwards": sum(r["forwards"] for r in rows),
            "host_overhead_ms_per_eval": 1000 * (wall - forward) / max(evaluations, 1),
            # on the CPU only: the process's CPU time outside the forwards, which a busy machine does not inflate
            "host_cpu_ms_per_eval": 1000 * (cpu - forward_cpu) / max(evaluations, 1) if forward_cpu else None,
            "peak_gpu_gib": max((r["peak_gpu_gib"] or 0) for r in rows) if rows and rows[0]["peak_gpu_gib"] is not None
            else None, "counts": counts, "host_ms": times}


def median_run(runs: list, key) -> dict:
    ordered = sorted(runs, key=key)
    return ordered[len(ordered) // 2]


# ----------------------------------------------------------------------------------------------------------------

def pack_module(suffix: str):
    return next((m for name, m in sys.modules.items() if name.endswith(suffix) and "confiner" in name), None)


def set_mechanism(name: str) -> None:
    sessions = pack_module(".nodes.sessions")
    if sessions is None:
        if name != "per-evaluation":
            raise RuntimeError("this pack has no stage sessions (nodes/sessions.py); run --mechanisms per-evaluation")
        return
    sessions.ENABLED = name == "session"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy", required=True, help="ComfyUI checkout")
    ap.add_argument("--ade", required=True, help="ComfyUI-AnimateDiff-Evolved checkout")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--models", default="full", choices=("full", "tiny"),
                    help="full: SD 1.5 + two motion modules; tiny: the tests' reduced checkpoint, no motion modules")
    ap.add_argument("--models-dir", default=None, help="where the random-weight files go (default: a temp folder)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mechanisms", nargs="+", default=list(MECHANISMS), choices=MECHANISMS)
    ap.add_argument("--no-animatediff", action="store_true", help="skip the AnimateDiff-25 counterpart")
    ap.add_argument("--decode-node", choices=sorted(DECODE_NODES), default=None,
                    help="run both prompts with this decode node instead of the template's")
    ap.add_argument("--null-forward", action="store_true",
                    help="the UNet forward returns its input: every wrapper, ADE's machinery and ConFiner's maths run, "
                         "the network does not, so what is measured is host work alone (CPU measurements)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs: 1 keeps the host "
                                                                  "CPU-time figures clean of worker-thread spinning)")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the sampling nodes of each job's last run: profile_<job>.pstats in --out and the "
                         "top host functions per evaluation (ms, inclusive and own time) in comfy_results.json; "
                         "best with --null-forward --threads 1, where all that is left is host work")
    ap.add_argument("--free-gib", type=float, default=None,
                    help="GPU: hold all free memory but this many GiB before the runs, so ComfyUI loads models and "
                         "sizes its VAE batches as on a smaller card (peaks are reported without the held memory)")
    ap.add_argument("--deadline", type=float, default=float("inf"), help="seconds from start to stop starting runs")
    a = ap.parse_args()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    models_dir = Path(a.models_dir or tempfile.mkdtemp(prefix="confiner-comfy-models-"))
    template = json.loads(TEMPLATE.read_text())
    files = template_model_files(template)

    info = harness.boot(a.comfy, pack_dirs=[(str(ROOT), "confiner"), (str(Path(a.ade).resolve()),
                                                                    "ComfyUI-AnimateDiff-Evolved")],
                        checkpoints_dir=models_dir / "checkpoints",
                        model_dirs={"animatediff_models": models_dir / "animatediff_models"},
                        cpu=a.device == "cpu")
    import torch

    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    if a.null_forward:
        import comfy.model_base

        comfy.model_base.BaseModel._apply_model = lambda model, x, t, *args, **kwargs: x
    if a.threads:
        torch.set_num_threads(a.threads)
    say(f"ComfyUI {info['comfy_version']} on {device}, torch {torch.__version__}, packs "
        f"{[(p['name'], len(p['node_ids'])) for p in info['packs']]}")
    res = {"date": datetime.date.today().isoformat(), "comfy_version": info["comfy_version"],
           "torch": torch.__version__, "device": str(device),
           "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "models": a.models, "size": a.size, "frames": a.frames, "repeats": a.repeats,
           "null_forward": a.null_forward, "boot": info,
           "built": build_models(models_dir, files, a.models == "tiny"), "runs": {}, "figures": {}}

    def save():   # after every figure: replaced whole, so a stopped benchmark keeps the figures it had
        res["elapsed_s"] = elapsed()
        with open(out_dir / "comfy_results.json.tmp", "w") as f:
            json.dump(res, f, indent=1, default=str)
        os.replace(out_dir / "comfy_results.json.tmp", out_dir / "comfy_results.json")

    save()
    probe = Probe(torch, device.type == "cuda")
    if a.free_gib is not None and probe.cuda:
        res["held_gib"], res["free_gib"] = probe.hold_all_but(a.free_gib), a.free_gib
        say(f"holding {res['held_gib']:.1f} GiB: {a.free_gib} GiB left free for ComfyUI")
    probe.install(harness._STATE["server"])
    confiner = confiner_prompt(template, a.size, a.frames, a.models == "tiny", a.decode_node)
    res["decode_node"] = next(n["class_type"] for n in confiner.values() if "vae" in n["inputs"]
                              and "samples" in n["inputs"])
    jobs = {f"confiner_{m}": (confiner, CONFINER_NODES, m) for m in a.mechanisms}
    if not a.no_animatediff:
        jobs["animatediff_25"] = (animatediff_prompt(confiner), ("KSampler",), a.mechanisms[0])
    take = 0
    for name, (api, classes, mechanism) in jobs.items():
        set_mechanism(mechanism)
        runs = []
        for i in range(a.repeats + 1 + a.profile):  # the first is the warm-up; the profiled one is extra
            profiled = a.profile and i == a.repeats + 1
            if runs and elapsed() + runs[-1]["wall_s"] > a.deadline:
                break
            take += 1
            if profiled:
                import cProfile

                probe.profiler = cProfile.Profile()
                probe.profiled = {k for k, n in api.items() if n["class_type"] in classes}
                session_profiles = profile_sessions()
            profiler = probe.profiler
            run = run_once(retitled(api, take), probe)
            run["sampling"] = sampling_figures(run, classes)
            if profiled:  # timed under the profiler: kept apart from the timed runs
                run["profile"] = profile_summary([profiler, *session_profiles(None)],
                                                 out_dir / f"profile_{name}.pstats", run["sampling"]["evaluations"])
                res["runs"][f"{name}_profile"] = run
                say(f"{name} profile (ms per evaluation, inclusive / own):\n" + "\n".join(
                    f"  {r['cum_ms']:7.3f} {r['own_ms']:7.3f} {r['calls']:6.1f}x  {r['function']}"
                    for r in run["profile"][:40]))
                continue
            say(f"{name} {'warm-up' if i == 0 else f'run {i}'}: {run['wall_s']:.3f} s, end to end "
                f"{run['end_to_end_s']:.3f} s, sampling {run['sampling']['sampling_s']:.3f} s, host "
                f"{run['sampling']['host_overhead_ms_per_eval']:.2f} ms per evaluation (CPU time "
                f"{run['sampling']['host_cpu_ms_per_eval']}), counts {run['sampling']['counts']}")
            if i:
                runs.append(run)
            else:
                res["runs"][f"{name}_warmup"] = run
        if runs:
            res["runs"][name] = {**median_run(runs, lambda r: r["end_to_end_s"]),
                                 "end_to_end_runs_s": [round(r["end_to_end_s"], 4) for r in runs],
                                 "host_overhead_runs_ms": [round(r["sampling"]["host_overhead_ms_per_eval"], 3)
                                                           for r in runs],
                                 "host_overhead_median_ms": statistics.median(
                                     r["sampling"]["host_overhead_ms_per_eval"] for r in runs),
                                 "host_cpu_median_ms": statistics.median(
                                     r["sampling"]["host_cpu_ms_per_eval"] or 0.0 for r in runs)}
        res["figures"] = figures(res["runs"])
        save()
    res["figures"] = figures(res["runs"])
    save()
    print(json.dumps(res["figures"], indent=1))


def profile_sessions():
    """Stage sessions serve evaluations on helper threads, which a profiler enabled on the node's thread does not
    see: each session's thread gets a profiler of its own for the run. Returns a function that restores the pack
    and returns those profilers."""
    import cProfile

    sessions = pack_module(".nodes.sessions")
    if sessions is None or not hasattr(sessions, "Session") or sys.version_info >= (3, 12):
        # From Python 3.12 cProfile hooks sys.monitoring, which is process-wide: the node thread's profiler already
        # sees the session threads, and a second profiler cannot be enabled ("Another profiling tool is active").
        return lambda _: []
    original = sessions.Session._thread_main
    profilers = []

    def profiled(self, *args, **kwargs):
        profiler = cProfile.Profile()
        profilers.append(profiler)
        profiler.enable()
        try:
            return original(self, *args, **kwargs)
        finally:
            profiler.disable()

    sessions.Session._thread_main = profiled

    def finish(_):
        sessions.Session._thread_main = original
        return profilers
    return finish


def profile_summary(profilers: list, path: Path, evaluations: int, top: int = 80) -> list:
    """The profiled functions (the sampling nodes' thread and any session threads) by inclusive time, per expert
    evaluation (or KSampler step). With sessions the node's thread shows the helpers' work as lock waits."""
    import pstats

    merged = pstats.Stats(profilers[0])
    for other in profilers[1:]:
        merged.add(other)
    merged.dump_stats(str(path))
    stats = merged.stats
    n = max(evaluations, 1)
    rows = []
    for (file, line, func), (_, calls, own, cum, _) in stats.items():
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        rows.append({"function": f"{func} ({where})", "calls": calls / n, "cum_ms": 1000 * cum / n,
                     "own_ms": 1000 * own / n})
    rows.sort(key=lambda r: -r["cum_ms"])
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows[:top]]


def figures(runs: dict) -> dict:
    """The plainly named figures (bench/gpu_report.py puts them into RESULTS.json). The unsuffixed keys are the
    pack's default, stage sessions (one sampling call per expert and stage; before 2026-12-02's fifth session they
    were opt-in and these keys were the other mechanism's); ``*_per_evaluation_calls`` are one sampling call per
    evaluation (``CONFINER_STAGE_SESSIONS=0``)."""
    fig = {}
    ad = runs.get("animatediff_25")
    for run, suffix in (("confiner_session", ""), ("confiner_per-evaluation", "_per_evaluation_calls")):
        r = runs.get(run)
        if not r:
            continue
        fig[f"comfy_host_overhead_ms_per_eval{suffix}"] = r["host_overhead_median_ms"]
        fig[f"comfy_confiner_s{suffix}"] = r["end_to_end_s"]
        fig[f"comfy_confiner_sampling_s{suffix}"] = r["sampling"]["sampling_s"]
        fig[f"comfy_confiner_counts{suffix}"] = r["sampling"]["counts"]
        if ad:
            fig[f"comfy_ratio_confiner_to_animatediff_25{suffix}"] = r["end_to_end_s"] / ad["end_to_end_s"]
            # the sampling nodes alone: what is left of the end-to-end ratio once text encoding and the decode,
            # the same work on both sides, are taken out
            fig[f"comfy_sampling_ratio_confiner_to_animatediff_25{suffix}"] = (r["sampling"]["sampling_s"]
                                                                               / ad["sampling"]["sampling_s"])
    if ad:
        fig["comfy_ksampler_overhead_ms_per_step"] = ad["host_overhead_median_ms"]
        fig["comfy_animatediff_25_s"] = ad["end_to_end_s"]
        fig["comfy_animatediff_25_counts"] = ad["sampling"]["counts"]
        fig["comfy_ksampler_peak_gib"] = ad["sampling"]["peak_gpu_gib"]
    confiner = runs.get("confiner_session") or runs.get("confiner_per-evaluation")
    if confiner:  # the decode node of the ConFiner prompt against its sampling nodes' peak, and that prompt's times
        fig["comfy_sampling_peak_gib"] = confiner["sampling"]["peak_gpu_gib"]
        fig["comfy_decode_prompt_confiner_s"] = confiner["end_to_end_s"]
        fig["comfy_decode_prompt_mechanism"] = ("stage sessions" if confiner is runs.get("confiner_session")
                                                else "one sampling call per evaluation")
        if ad:
            fig["comfy_decode_prompt_ratio_confiner_to_animatediff_25"] = confiner["end_to_end_s"] / ad["end_to_end_s"]
        decode = next((n for n in confiner["nodes"].values() if n["class"] in DECODE_NODES), None)
        if decode:
            fig["comfy_decode_node"] = decode["class"]
            fig["comfy_decode_s"], fig["comfy_decode_peak_gib"] = decode["wall_s"], decode["peak_gpu_gib"]
            if decode.get("vae_decoder_calls"):
                fig["comfy_decoder_calls"] = decode["vae_decoder_calls"]
                fig["comfy_decoder_frames"] = decode["vae_decoder_frames"]
    return fig


if __name__ == "__main__":
    main()
