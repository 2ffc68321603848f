"""Writes bench/RESULTS.md and bench/RESULTS.json from the raw figures of bench/gpu_results/.

Every number comes from the raw JSON the benchmarks wrote on the GPU machine (``README_GPU.md`` says which call
writes which file); the prose around them is this file's. Sections appear for the files present:

* ``h200_sd.json`` -- ``gpu_benchmark.py``: the SD-scale tables (eager, lean, lean_bf16, best, max), profiles, cold
  start (required);
* ``h200_sd_extra.json``, ``h200_sd_graphs.json``, ``h200_sd_animatediff.json`` -- other SD processes (max,
  lean_graphs, an earlier call's eager/lean tables with the AnimateDiff runs): their tables and the runs the main
  call skipped are folded in; ``h200_sd_later.json``, then ``h200_sd_latest.json``, then ``h200_sd_max_call_x.json``:
  later calls' tables, which replace the main call's (those then stand beside earlier calls' in the comparison of
  kernels over frames);
* ``h200_sd_warm.json`` -- ``gpu_benchmark.py --start-probe`` with empty inductor/Triton folders: the warm start of a
  second process from the portable cache alone; ``h200_sd_warm_dirs.json``: the same with the first process's
  folders (a second run on the same machine); ``h200_sd_warm_blocks.json`` (and ``..._call_1c.json``, another
  machine): the portable cache and the compiled blocks kept on disk (``--compile-dir``);
  ``h200_sd_warm_blocks_same_machine.json``: the same on the first process's machine, with the inductor/Triton
  caches ``--compile-dir`` keeps in its folder; ``..._bytecode.json``: that with Python's bytecode caches;
* ``h200_decode_chunks.json`` -- ``gpu_benchmark.py --decode-chunk N``: the library's VAE decode peak per chunk;
  ``h200_vae_decode_probe.json`` -- ``vae_decode_probe.py``: the decode under ``lean`` and with the decoder compiled;
* ``h200_wan.json`` -- ``wan_benchmark.py``: Wan scale; ``h200_wan_best.json``, ``h200_wan_fastest.json``: the same
  compiled, with cuDNN attention and with flash-attn-4;
* ``h200_wan14_full.json`` -- ``wan_benchmark.py --a14b-full --wan14-full``: Wan 2.2 A14B-40 and ConFiner with 14B
  experts, each measured whole, compiled, cuDNN attention;
* ``h200_wan_one_run.json`` -- ``wan_benchmark.py --a14b-full --wan14-full`` with the 1.3B runs: all four runs in one
  process; where it exists its figures are the report's ``best_wan*`` ones;
* ``h200_wan_long.json`` -- ``wan_benchmark.py --long``: ConFiner-Long with Wan experts;
* ``h200_wan_flux.json`` -- ``wan_benchmark.py`` with the bridges only: a FLUX.1-dev spatial expert bridged to the
  Wan 1.3B experts (and the SD 1.5 bridge again, in the same process);
* ``h200_comfy.json`` -- ``comfy_benchmark.py``: the basic template against AnimateDiff-25 inside ComfyUI;
  ``h200_comfy_*.json``: the same with another decode node or less free GPU memory (the decode table).

Run it on any machine: ``python bench/gpu_report.py`` (``--raw DIR --out DIR`` for other folders).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import comfy_benchmark  # noqa: E402  (its figures: one definition of the comfy_* keys)
import profiling as P  # noqa: E402
from confiner_core.outputs import write_atomic  # noqa: E402

FILES = {"sd": "h200_sd.json", "sd_extra": "h200_sd_extra.json", "sd_graphs": "h200_sd_graphs.json",
         "sd_animatediff": "h200_sd_animatediff.json",  # an earlier call's eager/lean tables with the AnimateDiff runs
         "warm": "h200_sd_warm.json", "warm_dirs": "h200_sd_warm_dirs.json",
         "warm_blocks": "h200_sd_warm_blocks.json", "warm_blocks_1c": "h200_sd_warm_blocks_call_1c.json",
         "warm_blocks_same": "h200_sd_warm_blocks_same_machine.json",
         "warm_blocks_same_bytecode": "h200_sd_warm_blocks_same_machine_bytecode.json",
         "warm_blocks_same_bytecode_az": "h200_sd_warm_blocks_same_machine_bytecode_call_az.json",
         "warm_blocks_same_bytecode_bd": "h200_sd_warm_blocks_same_machine_bytecode_call_bd.json",
         "warm_blocks_same_bytecode_be": "h200_sd_warm_blocks_same_machine_bytecode_call_be.json",
         "wan": "h200_wan.json",
         "wan_best": "h200_wan_best.json",  # wan_benchmark.py --compile blocks: the best settings (absent until run)
         "wan_fastest": "h200_wan_fastest.json",  # the same with flash-attn-4 installed (--attention auto: fastest)
         "wan_long": "h200_wan_long.json",
         # wan_benchmark.py --a14b-full --wan14-full, best settings: Wan 2.2 A14B-40 and ConFiner with 14B experts
         # measured whole in one process
         "wan14_full": "h200_wan14_full.json",
         # the same settings, ConFiner (1.3B and 14B experts), Wan 2.1-50 and A14B-40 all in one process: its
         # figures take the place of the two files' above (one machine, one run)
         "wan_one_run": "h200_wan_one_run.json",
         "wan_flux": "h200_wan_flux.json",  # wan_benchmark.py with the bridges only: FLUX.1-dev (and SD 1.5) spatial
         "decode_chunks": "h200_decode_chunks.json",  # gpu_benchmark.py --decode-chunk N, one process per N
         "vae_probe": "h200_vae_decode_profile.json",  # vae_decode_probe.py --profile: the VAE decode, lean and
                                                       # compiled, each profiled (h200_vae_decode_probe.json: before)
         "norm_probe": "h200_norm_probe.json",  # norm_probe.py: GroupNorm + SiLU on the SD shapes, four ways
         "geglu_gemm": "h200_geglu_gemm_probe.json",  # geglu_gemm_probe.py: the feed-forward's GEMM and gate fused
         "upsample": "h200_upsample_probe.json",  # upsample_probe.py: nearest x2 + 3x3 conv, three ways
         "upsample_bf16": "h200_upsample_probe_bf16.json",  # the same in bfloat16 (--dtype bfloat16)
         "attention": "h200_attention_probe.json",  # attention_probe.py: every attention shape under every backend
         "attention_frames": "h200_attention_probe_frames.json",  # the same with the frame kernel (another call)
         # --only cross frames: a candidate kernel for at most 128 keys (shortkeys) on SD's, the control expert's and
         # ModelScope's cross-attention and attention over frames
         "attention_short_keys": "h200_attention_probe_short_keys.json",
         "fp8_linear": "h200_fp8_linear_probe.json",  # fp8_linear_probe.py: the linear layers in fp16 and fp8
         # earlier calls' tables with other kernels over frames, beside the main tables (the frame kernel): the
         # presets with PyTorch's memory-efficient kernel there, with cuDNN's before that, and another call's
         # memory-efficient ones
         "sd_before_frame_kernel": "h200_sd_before_frame_kernel.json",
         "sd_extra_before_frame_kernel": "h200_sd_extra_before_frame_kernel.json",
         "sd_before_temporal_attention": "h200_sd_before_temporal_attention.json",
         "sd_extra_before_temporal_attention": "h200_sd_extra_before_temporal_attention.json",
         "temporal_attention_other_call": "h200_sd_temporal_attention.json",
         # a later call's lean and best tables (blocks kept also when best is applied on top of lean; flash-attn-4
         # installed, which the presets do not take: lean's per-network probe has its columns): they replace the
         # main call's, and so does its cold start
         "sd_later": "h200_sd_later.json",
         # the latest call's best and max tables (compiled presets without cuDNN autotuning, flash-attn-4 for 8192
         # tokens and more), which replace those of the call before
         "sd_latest": "h200_sd_latest.json",
         # a max table of a call after that (the presets as set now: upsampling folded), which replaces the latest
         # call's
         "sd_latest_max": "h200_sd_max_call_av_fold_1.json",
         # its profile, where that table has none: a process of the same settings in another call (AV profiled none)
         "sd_latest_max_profile": "h200_sd_max_call_at_fold_2.json",
         "forward_flops": "../cpu_results/sd_forward_flops.json",  # gpu_benchmark.py --forward-flops (CPU)
         "comfy": "h200_comfy.json",
         "multigpu": "multigpu.json"}  # multigpu_benchmark.py on several GPUs of one host (absent until run there)
# the max preset with its upsampling folded and not (--no-fold-upsample), process after process on one machine per
# call (README_GPU.md, twentieth session); AT's processes were profiled, AV's ran ModelScope-100 too
FOLD_AB = ("h200_sd_max_call_at_fold_1.json", "h200_sd_max_call_at_nofold_1.json", "h200_sd_max_call_at_fold_2.json",
           "h200_sd_max_call_at_nofold_2.json", "h200_sd_max_call_av_fold_1.json", "h200_sd_max_call_av_nofold.json",
           "h200_sd_max_call_av_fold_2.json")
COMFY_VARIANTS = "h200_comfy_*.json"  # comfy_benchmark.py with --decode-node / --free-gib: the decode table
RUN_LABELS = {
    "confiner_4+5_modelscope": "ConFiner 4+5, ModelScope temporal (paper set-up)",
    "confiner_4+5_animatediff": "ConFiner 4+5, AnimateDiff temporal",
    "confiner_4+5_modelscope_staged": "ConFiner 4+5, ModelScope temporal, staged residency",
    "modelscope_100": "ModelScope T2V, 100 steps",
    "modelscope_50": "ModelScope T2V, 50 steps",
    "animatediff_25": "AnimateDiff, 25 steps",
}
TABLE_LABELS = {"eager": "plain eager fp16 (SDPA, diffusers defaults)", "lean": "lean preset, fp16 (no compiler)",
                "lean_graphs": "lean preset + CUDA graphs, fp16 (no compiler; its own process)",
                "lean_bf16": "lean preset, bf16", "best": "fast preset (lean + regional torch.compile), fp16",
                "max": "max preset (fast + CUDA graphs), fp16"}
# the warm-start probes (a second process's first run): file key -> (RESULTS.json suffix, what it started from)
WARM_PROBES = {"warm": ("_portable", "portable cache only, empty inductor/Triton folders"),
               "warm_dirs": ("_same_machine", "same machine: the first process's inductor/Triton folders"),
               "warm_blocks": ("_blocks", "portable cache and the compiled blocks kept on disk by `--compile-dir`, "
                                          "empty inductor/Triton folders"),
               "warm_blocks_1c": ("_blocks_call_1c", "the same, an earlier call on another machine (README_GPU call "
                                                     "1c′)"),
               "warm_blocks_same": ("_blocks_same_machine", "same machine: the compiled blocks and the inductor/"
                                                            "Triton caches `--compile-dir` keeps in its folder"),
               # the lent machine's Python runs with PYTHONDONTWRITEBYTECODE=1 over packages shipped without
               # bytecode, so each process compiles every module it imports from source; an installation has them
               "warm_blocks_same_bytecode": ("_blocks_same_machine_bytecode",
                                             "same machine, the folder `--compile-dir` keeps, and Python's bytecode "
                                             "caches (written by the first process to `PYTHONPYCACHEPREFIX`, as an "
                                             "installed package has them)"),
               # the same with upsampling folded (call AZ), on a host slower in every host-bound phase (imports,
               # reading the blocks, the cold compile) than call AI's
               "warm_blocks_same_bytecode_az": ("_blocks_same_machine_bytecode_call_az",
                                                "the same, after upsampling was folded (call AZ, another host)"),
               # the same, the kept blocks read in-process (call BD, another host)
               "warm_blocks_same_bytecode_bd": ("_blocks_same_machine_bytecode_call_bd",
                                                "the same, the kept blocks read in-process (call BD, another host)"),
               "warm_blocks_same_bytecode_be": ("_blocks_same_machine_bytecode_call_be",
                                                "the same (call BE, another host)")}
# the same probe (the kept blocks, Python's bytecode caches) on each host it was taken on, by call; the warm target
# counts every host it was met on (call BC's hosts figure is the mean of its in-process probes, WARM_LOAD_MEAN)
WARM_HOSTS = {"warm_blocks_same_bytecode": "AI", "warm_blocks_same_bytecode_az": "AZ",
              "warm_blocks_same_bytecode_bd": "BD", "warm_blocks_same_bytecode_be": "BE"}
WARM_LOAD_MEAN = "warm_load_in_process_warm_start_mean_s"
# gpu_benchmark.py --settings max --inductor-config max_autotune_gemm=True (call AY): its log, inductor's autotuning
AUTOTUNE_LOG = "h200_sd_max_autotune_gemm_call_ay_log.txt"
# warm-start probes reading the kept blocks in-process or with inductor's compile workers (call BC): its log
LOAD_THREADS_LOG = "h200_sd_warm_load_threads_call_bc_log.txt"
TARGET_BEST_S, TARGET_EAGER_S, TARGET_WARM_S, TARGET_WAN_RATIO = 1.2, 2.2, 20.0, 0.25
TARGET_COMFY_RATIO_OFF = 0.05  # ConFiner / AnimateDiff-25 in ComfyUI within 5 % of the library's (eager) ratio
LIBRARY_AD_RATIO = "eager_ratio_confiner_animatediff_to_animatediff_25"
COMFY_RUNS = {"confiner_session":
              "ConFiner basic template, stage sessions (the default: one sampling call per expert and stage)",
              "confiner_per-evaluation":
              "ConFiner basic template, one sampling call per evaluation (`CONFINER_STAGE_SESSIONS=0`)",
              "animatediff_25": "AnimateDiff v3, KSampler 25 steps (DDIM, cfg 7.5)"}
MATMUL_PEAK_TFLOPS = 788  # 8192^3 bf16 matrix product on an H200 of this workplace (device KINDS.md, 2026-10-28)
CONFINER = "confiner_4+5_modelscope"


def load(raw: str, name: str) -> dict | None:
    path = os.path.join(raw, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def ok(run) -> bool:
    return bool(run) and "wall_s" in run and "runs_s" in run


def fmt(value, spec=".3f", none="—") -> str:
    return none if value is None else format(value, spec)


# ------------------------------------------------------------------------------------------------- figures

def older_settings(probe: dict, sd: dict) -> str:
    """A note when a warm-start probe ran with other settings than the compiled tables it stands next to (a probe
    from an earlier call, kept until measured again): the best table's, or the max table's but for the CUDA graphs
    (a probe compiles and loads blocks; it captures no graphs)."""
    current = {t["settings"].removesuffix(" + CUDA graphs") for name, t in sd["tables"].items()
               if name in ("best", "max") and t.get("settings")}
    if current and probe.get("settings") and probe["settings"] not in current:
        return f"; an earlier call, with the settings of then: {probe['settings']}"
    return ""


def first_run_split(probe: dict) -> str:
    """Where a probe's first run spent the time its second did not: blocks loaded from disk (reading them, their
    first calls), and per module group."""
    parts = []
    pre = probe.get("precompiled")
    if pre and pre.get("loaded"):
        timed = f": reading {pre['load_s']:.1f} s, their first calls {pre['first_calls_s']:.1f} s" \
            if "load_s" in pre else ""  # timed since the third session of 2026-12-02
        parts.append(f"{pre['loaded']} compiled blocks loaded from disk{timed}")
    first, second = probe.get("first_modules_s"), probe.get("second_modules_s")
    if first and second:
        parts.append("first vs second run per module group: " + ", ".join(
            f"{k} {first[k]:.1f} vs {second.get(k, 0):.1f} s" for k in first))
    return "".join(f"; {p}" for p in parts)


def fold_extra(sd: dict, extra: dict | None) -> list[str]:
    """Runs of a follow-up SD call (README_GPU.md's call 1b, ``h200_sd_extra.json``) fill the runs and ratios the
    main call skipped, table by table, and its start figures where the main call has none; returns which runs, for
    the report to say."""
    filled = []
    if "cold_start_s" in (extra or {}) and "cold_start_s" not in sd:
        sd["cold_import_s"] = extra["import_s"]  # the cold start counts that process's imports
        for key in ("cold_start_s", "cold_compile_s", "compile_cache"):
            sd[key] = extra.get(key)
    for setting, table in (extra or {}).get("tables", {}).items():
        target = sd["tables"].setdefault(setting, table)
        if target is table:
            filled += [f"{setting}/{name}" for name, run in table["runs"].items() if ok(run)]
            continue
        if target["settings"] != table["settings"]:   # another call's settings: its runs are not this table's
            continue
        for name, run in table["runs"].items():
            if ok(run) and not ok(target["runs"].get(name)):
                target["runs"][name] = run
                filled.append(f"{setting}/{name}")
        for key, value in table.get("ratios", {}).items():
            target["ratios"].setdefault(key, value)
    return filled


def figures(sd: dict, probes: dict, wan: dict | None, wan_long: dict | None, wan_best: dict | None = None,
            wan_fastest: dict | None = None, wan14_full: dict | None = None,
            wan_one_run: dict | None = None, wan_flux: dict | None = None) -> dict:
    """The plainly named figures of RESULTS.json (today's keys kept, new ones added); ``probes``: the warm-start
    probes present, by their :data:`WARM_PROBES` key; the Wan run with the best settings gives its figures again with
    a ``best_`` prefix."""
    out = {"device": sd["device_name"], "torch": sd["torch"], "diffusers": sd["diffusers"], "date": sd["date"],
           "resolution": f"{sd['size']}x{sd['size']}x{sd['frames']}", "params_m": sd["params_m"],
           "import_s": sd.get("import_s"), "flash_attn_4_available": sd.get("flash_attn_4")}
    fastest = None
    for setting, table in sd["tables"].items():
        r = table["runs"]
        out[f"{setting}_settings"] = table["settings"]
        out[f"{setting}_dtype"] = table.get("dtype")
        for key, name in (("confiner_modelscope", CONFINER), ("confiner_animatediff", "confiner_4+5_animatediff"),
                          ("confiner_modelscope_staged", "confiner_4+5_modelscope_staged"),
                          ("modelscope100", "modelscope_100"), ("modelscope50", "modelscope_50"),
                          ("animatediff25", "animatediff_25")):
            if ok(r.get(name)):
                out[f"{setting}_{key}_s"] = r[name]["wall_s"]
        for k, v in table["ratios"].items():
            out[f"{setting}_{k}"] = v
        c = r.get(CONFINER)
        if ok(c):
            out[f"{setting}_orchestration_overhead_fraction"] = c.get("overhead_fraction")
            out[f"{setting}_peak_gpu_gib_all_resident"] = c.get("peak_gpu_gib")
            out[f"{setting}_confiner_achieved_tflops"] = c["achieved_tflops"]
            out[f"{setting}_warmup_s_first_confiner_run"] = c["warmup_s"]
            if "vae" in c.get("modules_s", {}):
                out[f"{setting}_confiner_decode_s"] = c["modules_s"]["vae"]
            if fastest is None or c["wall_s"] < fastest[1]:
                fastest = (setting, c["wall_s"])
        if ok(r.get("confiner_4+5_modelscope_staged")):
            out[f"{setting}_peak_gpu_gib_staged"] = r["confiner_4+5_modelscope_staged"]["peak_gpu_gib"]
        out[f"{setting}_launch_probe"] = table.get("launch_probe", {})
        prof = table.get("profile")
        if prof and "kinds" in prof:
            out[f"{setting}_profile_shares"] = {k: v["share"] for k, v in prof["kinds"].items()}
            out[f"{setting}_profile_idle_fraction"] = prof.get("idle_fraction_of_span")
            out[f"{setting}_profile_tflops_by_kind"] = prof.get("tflops_by_kind")
    if "best_confiner_achieved_tflops" in out:
        out["best_confiner_tflops"] = out["best_confiner_achieved_tflops"]
    if fastest:
        out["fastest_confiner_modelscope_s"], out["fastest_table"] = fastest[1], fastest[0]
    eager = sd["tables"].get("eager", {}).get("runs", {})
    if ok(eager.get(CONFINER)):
        c = eager[CONFINER]
        out["expert_evaluations_confiner"] = c["evaluations"]
        out["network_forwards_confiner"] = c.get("network_forwards")
        out["confiner_tflop"] = c["tflop"]
        out["confiner_floor_s_at_matmul_peak"] = c["tflop"] / MATMUL_PEAK_TFLOPS
        if ok(eager.get("modelscope_100")):
            out["modelscope100_tflop"] = eager["modelscope_100"]["tflop"]
    for key in ("cold_start_s", "cold_compile_s", "lean_cold_start_s"):
        if key in sd:
            out[key] = sd[key]
    if isinstance(sd.get("compile_cache"), dict):
        out["compile_cache_bytes"] = sd["compile_cache"].get("bytes")
    # warm_start_s: the fastest second process (on another machine, or the same one)
    probes = {k: p for k, p in probes.items() if p}
    for key, probe in probes.items():
        suffix = WARM_PROBES[key][0]
        out[f"warm_start{suffix}_s"] = probe["warm_start_s"]
        out[f"warm_start{suffix}_process_s"] = probe["process_s"]
        out[f"warm_start{suffix}_compile_from_cache_s"] = probe["compile_from_cache_s"]
        out[f"warm_start{suffix}_cache_loaded"] = probe["cache_loaded"]
        if "compile_phases" in probe:
            out[f"warm_start{suffix}_graphs"] = probe["compile_phases"]["unique_graphs"]
        out[f"warm_start{suffix}_import_s"] = probe["import_s"]
        if "precompiled" in probe:
            out[f"warm_start{suffix}_blocks_loaded"] = probe["precompiled"]["loaded"]
            if "load_s" in probe["precompiled"]:  # the earliest probes did not time the reading
                out[f"warm_start{suffix}_blocks_load_s"] = probe["precompiled"]["load_s"]
    # a probe of the best table's settings; else the latest probe (WARM_PROBES's last), with the settings of then
    starts = {k: p["warm_start_s"] for k, p in probes.items() if not older_settings(p, sd)}
    if starts:
        out["warm_start_from"] = min(starts, key=starts.get)
        out["warm_start_s"] = starts[out["warm_start_from"]]
    elif probes:
        latest = list(probes.values())[-1]
        out["warm_start_s"], out["warm_start_settings"] = latest["warm_start_s"], latest.get("settings")
    if wan:
        out.update({k: v for k, v in wan.get("figures", {}).items() if v is not None})
        out["wan_attention"] = wan.get("attention")
    for prefix, run in (("best_", wan_best), ("fastest_attention_", wan_fastest)):
        out.update({f"{prefix}{k}": v for k, v in (run or {}).get("figures", {}).items() if v is not None})
    for k, v in (wan14_full or {}).get("figures", {}).items():   # beside the 1.3B figures, never over them
        if v is not None:
            out.setdefault(f"best_{k.replace('wan_peak', 'wan14_peak')}", v)
    if out.get("best_wan_confiner_s") and wan14_full and out.get("best_wan22_a14b_40_s"):
        # ConFiner with 1.3B experts against A14B-40, both under the best settings (two processes)
        out["best_wan_ratio_confiner_to_wan22_a14b_40"] = out["best_wan_confiner_s"] / out["best_wan22_a14b_40_s"]
    # one process for all of them, where it ran: every best_wan* figure it has comes from it
    out.update({f"best_{k}": v for k, v in (wan_one_run or {}).get("figures", {}).items() if v is not None})
    if wan_long:
        out.update({k: v for k, v in wan_long.get("figures", {}).items() if k.startswith("wan_long") and v is not None})
    if wan_flux:   # its own process: only its Flux figures (the SD bridge's stay h200_wan.json's)
        out.update({k: v for k, v in wan_flux.get("figures", {}).items() if k.startswith("wan_bridge_flux")
                    and v is not None})
    return out


def multigpu_figures(data: dict | None) -> tuple[dict, list[str]]:
    """RESULTS.json keys and a RESULTS.md section from ``multigpu_benchmark.py``'s ``multigpu.json`` (several GPUs of
    one host), when it has been run on GPUs: ``multigpu_speedup_N`` / ``multigpu_peak_gib_per_gpu_N`` for the SD
    600-frame video, ``multigpu_wan_*`` for Wan 1.3B."""
    if data is None or data.get("tiny"):   # absent, or a CPU smoke run: no measurement
        return {}, []
    out = {}
    md = ["## ConFiner-Long on several GPUs (`multigpu_benchmark.py`)", "",
          "| model | processes | frames | wall s | speed-up | peak GiB per GPU | same video as 1 process |",
          "|---|---|---|---|---|---|---|"]
    for model, entry in data["models"].items():
        key = "multigpu" if model == "sd" else f"multigpu_{model}"
        for n, run in entry["runs"].items():
            speedup, same = entry.get("speedup", {}).get(n), entry.get("same_video", {}).get(n)
            peak = entry["peak_gib_per_gpu"].get(n)
            out[f"{key}_wall_s_{n}"] = run["wall_s"]
            out[f"{key}_peak_gib_per_gpu_{n}"] = peak
            if n != "1" and speedup is not None:
                out[f"{key}_speedup_{n}"] = speedup
                out[f"{key}_same_video_{n}"] = same
            md.append(f"| {model} | {n} | {run['frames']} | {run['wall_s']:.2f} | "
                      f"{'' if speedup is None else f'{speedup:.2f}×'} | {'' if peak is None else f'{peak:.2f}'} "
                      f"| {'' if same is None else same} |")
    return out, md + [""]


def on_gpu(data: dict | None) -> bool:
    return data is not None and str(data.get("device", "")).startswith("cuda")  # not a CPU smoke run


def decode_variant(data: dict, figures: dict) -> str:
    """A ComfyUI benchmark file's decode set-up (``figures``: its ``comfy_benchmark.figures``), as a key:
    ``VAEDecode_all_free``, ``VAEDecodeTiled_7gib_free``."""
    node = figures.get("comfy_decode_node", "decode")
    free = data.get("free_gib")
    return f"{node}_{'all' if free is None else re.sub(r'[^0-9]+', '_', f'{free:g}') + 'gib'}_free"


def comfy_figures(data: dict | None, library: dict, variants: dict | None = None) -> tuple[dict, list[str]]:
    """RESULTS.json keys and a RESULTS.md section from ``comfy_benchmark.py``'s file, when it ran on a GPU:
    ``comfy_host_overhead_ms_per_eval`` (ConFiner's sampling nodes: wall time outside the model forward per expert
    evaluation), ``comfy_ksampler_overhead_ms_per_step`` (the same for KSampler, per step),
    ``comfy_ratio_confiner_to_animatediff_25`` (end to end), compared with the library's ratio in ``library``.
    ``variants`` (other files of the same benchmark: another decode node, less free memory) fill a decode table and
    ``comfy_decode_<variant>_*`` keys."""
    if not on_gpu(data):
        return {}, []
    out = {k: v for k, v in comfy_benchmark.figures(data.get("runs", {})).items() if v is not None}
    decode_rows = {}
    for d in [data, *(v for v in (variants or {}).values() if on_gpu(v))]:
        f = comfy_benchmark.figures(d.get("runs", {}))
        if "comfy_decode_s" in f:
            decode_rows[decode_variant(d, f)] = (d, f)
    for key, (_, f) in decode_rows.items():
        for name, source in (("decode_s", "decode_s"), ("decode_peak_gib", "decode_peak_gib"),
                             ("sampling_peak_gib", "sampling_peak_gib"),
                             ("ratio_confiner_to_animatediff_25", "decode_prompt_ratio_confiner_to_animatediff_25")):
            if f.get(f"comfy_{source}") is not None:
                out[f"comfy_decode_{key}_{name}"] = f[f"comfy_{source}"]
    ratio, lib = out.get("comfy_ratio_confiner_to_animatediff_25"), library.get(LIBRARY_AD_RATIO)
    if ratio is not None and lib:
        out["comfy_ratio_off_library"] = ratio / lib - 1
    md = ["## Inside ComfyUI (`comfy_benchmark.py`)", "",
          f"ComfyUI {data['comfy_version']}, {data['device_name']}, torch {data['torch']}, {data['date']}: "
          f"`example_workflows/ConFiner 1 - start here - SD 1.5 and AnimateDiff.json` at {data['size']}×{data['size']}×{data['frames']} with full-size "
          "random-weight SD 1.5 and AnimateDiff motion modules through AnimateDiff-Evolved, run by ComfyUI's executor "
          "as a queued prompt, against its AnimateDiff-25 KSampler counterpart (same checkpoint, motion model, "
          "prompts, decode and save nodes). Medians of the runs after one warm-up. Host overhead: a sampling node's "
          "wall time outside the model forward (CUDA events around every `apply_model`), per expert evaluation or "
          "KSampler step. End to end: the prompt without the save node.", "",
          "| run | end to end s | sampling s | evaluations | host ms per evaluation | sampling calls | "
          "load_models_gpu | peak GPU GiB |", "|---|---|---|---|---|---|---|---|"]
    for key, label in COMFY_RUNS.items():
        r = data.get("runs", {}).get(key)
        if r is None:
            continue
        s = r["sampling"]
        md.append(f"| {label} | **{r['end_to_end_s']:.3f}** | {s['sampling_s']:.3f} | {s['evaluations']} | "
                  f"{r['host_overhead_median_ms']:.2f} | {s['counts'].get('sampling_calls', '')} | "
                  f"{s['counts'].get('load_models_gpu', '')} | {fmt(s.get('peak_gpu_gib'), '.2f', '')} |")
    if decode_rows:
        md += ["", "The decode node of the prompts (both prompts use the same one), inside the runs above and in runs "
               "of the same benchmark with another decode node (`--decode-node`) or with all GPU memory but a few "
               "GiB held by a filler tensor (`--free-gib`: ComfyUI loads models and sizes its VAE frame batches as "
               "on a smaller card; peaks leave the filler out). Decoder calls: how ComfyUI's VAE split the 16 "
               "frames. ConFiner s: the ConFiner prompt that ran the decode; the rows after the first come from "
               "earlier calls (README_GPU.md), before the finiteness flag stopped making the host wait.", "",
               "| decode node | GPU memory free | decoder calls | decode s | decode peak GiB | ConFiner "
               "sampling peak GiB | KSampler peak GiB | ConFiner prompt | ConFiner s | AnimateDiff-25 s | ratio |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for d, f in decode_rows.values():
            calls = (f"{f['comfy_decoder_calls']} for {f['comfy_decoder_frames']} frames"
                     if f.get("comfy_decoder_calls") else "—")
            free = "all" if d.get("free_gib") is None else f"{d['free_gib']:g} GiB"
            md.append(f"| {f['comfy_decode_node']} | {free} |"
                      f" {calls} | {fmt(f['comfy_decode_s'])} | {fmt(f['comfy_decode_peak_gib'], '.2f')} | "
                      f"{fmt(f.get('comfy_sampling_peak_gib'), '.2f')} | {fmt(f.get('comfy_ksampler_peak_gib'), '.2f')}"
                      f" | {f.get('comfy_decode_prompt_mechanism', '—')} | "
                      f"{fmt(f.get('comfy_decode_prompt_confiner_s'))} | {fmt(f.get('comfy_animatediff_25_s'))} | "
                      f"{fmt(f.get('comfy_decode_prompt_ratio_confiner_to_animatediff_25'))} |")
    host, step = out.get("comfy_host_overhead_ms_per_eval"), out.get("comfy_ksampler_overhead_ms_per_step")
    off = out.get("comfy_ratio_off_library")
    yes = lambda v: "—" if v is None else ("**yes**" if v else "no")  # noqa: E731
    md += ["", "| target | measured | met |", "|---|---|---|",
           f"| host overhead per evaluation ≤ KSampler's per step | {fmt(host, '.2f')} ms vs {fmt(step, '.2f')} ms | "
           f"{yes(None if host is None or step is None else host <= step)} |",
           f"| ConFiner / AnimateDiff-25 in ComfyUI within {TARGET_COMFY_RATIO_OFF:.0%} of the library's (eager) | "
           f"{fmt(ratio)} vs {fmt(lib)} | {yes(None if off is None else abs(off) <= TARGET_COMFY_RATIO_OFF)} |", ""]
    sampling = out.get("comfy_sampling_ratio_confiner_to_animatediff_25")
    if sampling is not None and ratio is not None:
        md += [f"The sampling nodes alone (`comfy_sampling_ratio_confiner_to_animatediff_25`) stand at "
               f"{sampling:.3f}; the end-to-end ratio is {ratio:.3f} because both prompts also pay the same text "
               "encoding and decode (the template's decode node is in the table above).", ""]
    return out, md


# ------------------------------------------------------------------------------------------------ markdown

def module_peaks(run: dict) -> str:
    """The peak while the experts ran against the peak while the VAE decoded (``gpu_benchmark.py``'s groups)."""
    peaks = run.get("modules_peak_gib") or {}
    if "experts" not in peaks or "vae" not in peaks:
        return ""
    return f"{peaks['experts']:.2f} / {peaks['vae']:.2f}"


def run_table(runs: dict) -> list[str]:
    lines = ["| run | median s | runs (s) | warm-up s | expert evals | TFLOP | TFLOP/s | overhead | peak GPU GiB | "
             "peak in the experts / in the VAE decode GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, label in RUN_LABELS.items():
        if key not in runs:
            continue
        v = runs[key]
        if not ok(v):
            why = "skipped (deadline)" if v is None else f"failed: {v.get('error', '?')[:80]}"
            lines.append(f"| {label} | {why} | | | | | | | | |")
            continue
        oh = fmt(100 * v["overhead_fraction"], ".1f") + " %" if v.get("overhead_fraction") is not None else ""
        lines.append(f"| {label} | **{v['wall_s']:.3f}** | {', '.join(f'{r:.3f}' for r in v['runs_s'])} | "
                     f"{v['warmup_s']:.1f} | {sum(v['evaluations'].values())} | {v['tflop']:.0f} | "
                     f"{v['achieved_tflops']:.0f} | {oh} | {fmt(v.get('peak_gpu_gib'), '.2f', '')} | "
                     f"{module_peaks(v)} |")
    return lines


def slowest_runs(runs: dict) -> list[str]:
    """For each run whose slowest repeat took over 10 % more than its median: which repeat, where its time went and
    what it did once (CUDA graphs it captured, garbage collections); files of 2026-12-03 on."""
    lines = []
    for key, v in runs.items():
        slow = (v or {}).get("slowest")
        if not slow or slow["wall_s"] <= 1.1 * v["wall_s"]:
            continue
        modules = ", ".join(f"{k} {s:.3f}" for k, s in slow["modules_s"].items())
        lines += ["", f"{RUN_LABELS.get(key, key)}: the slowest run (run {slow['run']} of {len(v['runs_s'])}, "
                      f"{slow['wall_s']:.3f} s) spent {modules} s in the watched modules, captured "
                      f"{slow['graph_captures']} CUDA graphs, collected garbage {slow['gc']['collections']} times "
                      f"(generations 0/1/2) in {sum(slow['gc']['ms']):.1f} ms."]
    return lines


def between_calls(run: dict) -> list[str]:
    """Where the ConFiner run's time outside the networks went on the GPU (the sampler's kernels and idle time,
    between consecutive watched calls), and the garbage collector's pauses (files of 2026-12-02's fourth session
    on)."""
    between, gc_ = run.get("between_modules_ms"), run.get("gc")
    if not between:
        return []
    total = sum(v["ms"] for v in between.values())
    top = ", ".join(f"{k} {v['ms']:.1f} ({v['n']}×)" for k, v in list(between.items())[:8])
    line = f"GPU time between watched calls in the ConFiner run: {total:.1f} ms in all; {top}."
    if gc_:
        line += (f" Garbage collections during the run (generations 0/1/2): {'/'.join(map(str, gc_['collections']))}, "
                 f"{sum(gc_['ms']):.1f} ms.")
    return ["", line]


def network_rates(sd: dict, flops: dict | None) -> dict:
    """TFLOP/s of each network's forward in each table (the launch probe's GPU seconds, "as set", against the FLOPs
    ``gpu_benchmark.py --forward-flops`` counts for that forward) and of the ConFiner run's VAE decode: where a
    run's time goes against its FLOPs, network by network."""
    if not flops or (flops.get("size"), flops.get("tiny")) != (sd.get("size"), sd.get("tiny")):
        return {}   # counted for other shapes than the tables ran
    tflop, out = flops["tflop"], {}
    for setting, table in sd["tables"].items():
        for name, per in (table.get("launch_probe") or {}).items():
            v = per.get("as set", {})
            if name in tflop and "gpu_s" in v:
                out[f"{setting}_tflops_{name}"] = tflop[name] / v["gpu_s"]
        run, chunk = table["runs"].get(CONFINER), table.get("decode_chunk")
        per_chunk = tflop.get(f"vae_decode_{chunk}_frames")
        if ok(run) and per_chunk and "vae" in run.get("modules_s", {}):
            out[f"{setting}_tflops_confiner_decode"] = per_chunk * sd["frames"] / chunk / run["modules_s"]["vae"]
    return out


def probe_table(probe: dict, setting: str = "", fig: dict | None = None) -> list[str]:
    """The launch probe's table; with ``fig``'s :func:`network_rates`, the "as set" column's TFLOP/s too."""
    if not probe:
        return []
    fig = fig or {}
    rated = any(f"{setting}_tflops_{name}" in fig for name in probe)
    backends = sorted({b for per in probe.values() for b in per}, key=lambda b: (b != "as set", b))
    lines = [f"| one forward (GPU s; CPU issue s{'; TFLOP/s as set' if rated else ''}) | " + " | ".join(backends)
             + " |", "|---|" + "---|" * len(backends)]
    for name, per in probe.items():
        cells = []
        for backend in backends:
            v = per.get(backend)
            rate = fig.get(f"{setting}_tflops_{name}") if backend == "as set" else None
            cells.append("" if v is None else ("failed" if "error" in v else
                                               f"{v['gpu_s']:.4f}; {v['cpu_issue_s']:.4f}"
                                               + (f"; **{rate:.0f}**" if rate else "")))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    decode = fig.get(f"{setting}_tflops_confiner_decode")
    if decode:
        lines += ["", f"The ConFiner run's VAE decode: {decode:.0f} TFLOP/s."]
    return lines


def sd_markdown(sd: dict, fig: dict, probes: dict) -> list[str]:
    md = [f"# GPU benchmark: ConFiner against the baselines ({sd['device_name']})", "",
          f"`bench/gpu_benchmark.py`, torch {sd['torch']}, diffusers {sd['diffusers']}, {sd['date']}. Full-size "
          f"models with random weights built on the GPU (weights do not change compute): SD 1.5 UNet "
          f"{sd['params_m']['sd']} M, AnimateDiff UNetMotionModel {sd['params_m']['control']} M (the Lightning-style "
          f"control expert, and an AnimateDiff temporal expert), ModelScope UNet3D {sd['params_m']['ms']} M, SD VAE, "
          "CLIP-L, OpenCLIP-H text. 512×512×16 end to end: text encoding, sampling, VAE decode to uint8 frames on the "
          "host. ConFiner is 4 control steps (AnimateDiff, Euler trailing, cfg 1.0) + T_e = 100 + 5 coordinated "
          "steps (cfg 7.5): 19 expert evaluations, 19 network forwards (cfg batched). Baselines are DDIM at cfg 7.5 "
          "through the same core samplers and expert classes.", "",
          "**Every table comes from one process on one GPU** (which process: the Starts section lists the runs of "
          "follow-up calls), its settings applied in place on top of the earlier tables' (every UNet, text encoder and the VAE "
          "decoder, for ConFiner and baselines alike), so a table's ratios compare runs of one process."
          " Each figure is the median of the runs listed after one warm-up run, excluded (ConFiner: a full run; "
          "baselines: a 2-step run at the same shapes); "
          "CUDA is synchronised around every run. \"Overhead\" is wall time outside the UNet, text-encoder and "
          "VAE-decoder calls (CUDA events). TFLOP are counted per call on meta-device copies "
          "(`torch.utils.flop_counter`); TFLOP/s is that over the wall time. A run the deadline skipped says so.", ""]
    for setting, table in sd["tables"].items():
        chunk = table.get("decode_chunk")  # absent from the files of before 2026-12-02's third session: 8 then
        decoded = f"{chunk} frames" if chunk else "8 frames (the default then)"
        md += [f"## {setting}: {TABLE_LABELS.get(setting, setting)}", "",
               f"Settings: {table['settings']}. The VAE decoded {decoded} at a time.", ""]
        md += run_table(table["runs"]) + slowest_runs(table["runs"])
        if table["ratios"]:
            md += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in table["ratios"].items()]
        if ok(table["runs"].get(CONFINER)):
            md += between_calls(table["runs"][CONFINER])
        if table.get("launch_probe"):
            own = " (each column sets the network's backend; its temporal transformers keep their own)" if (
                "attention over frames" in table["settings"]) else ""
            md += ["", f"One forward of each network (third of three calls){own}:", ""] + \
                probe_table(table["launch_probe"], setting, fig)
        if table.get("graph_pool"):
            md += ["", f"CUDA graphs: {table['graph_pool']['captured']} captured, {table['graph_pool']['replays']} "
                   f"replays, failures: {table['graph_pool']['failures'] or 'none'}."]
        pre = table.get("precompiled") or {}
        if pre.get("loaded") and not pre.get("compiled"):
            md += ["", f"Its process read the {pre['loaded']} compiled blocks an earlier process of the call kept "
                   f"(`--compile-dir`): its warm-up run was a warm start, not a compilation."]
        prof = table.get("profile")
        if prof and "kinds" in prof:
            source = (f", from `{table['profile_from']}` (a process of the same settings in another call)"
                      if table.get("profile_from") else "")
            md += [""] + P.markdown(prof, f"Profile of one ConFiner run ({setting}){source}")
        elif prof:
            md += ["", f"Profile failed: {prof.get('error')}"]
        md.append("")
    md += ["## Starts", "",
           "| start | s | what |", "|---|---|---|",
           f"| cold (best settings, empty caches) | {fmt(fig.get('cold_start_s'), '.1f')} | imports "
           f"{fmt(sd.get('cold_import_s', sd.get('import_s')), '.1f')} s + first ConFiner run (compile "
           f"{fmt(fig.get('cold_compile_s'), '.1f')} s"
           " + run) |",
           f"| lean preset, first run | {fmt(fig.get('lean_cold_start_s'), '.1f')} | imports + first run (Triton "
           "GroupNorm and GEGLU kernels JIT-compiled, cuDNN autotuning) |"]
    for key, probe in probes.items():
        if probe:
            graphs = probe.get("compile_phases", {}).get("unique_graphs")
            md.append(f"| warm (best settings, second process, {WARM_PROBES[key][1]}) | {probe['warm_start_s']:.1f} | "
                      f"imports {probe['import_s']:.1f} s + cache load {probe['load_cache_s']:.1f} s + first run "
                      f"{probe['first_run_s']:.1f} s (of which compile from cache {probe['compile_from_cache_s']:.1f} s"
                      f"{f', {graphs} graphs traced' if graphs else ''}{first_run_split(probe)}); random-weight build "
                      f"{probe['build_s']:.1f} s not counted; process {probe['process_s']:.1f} s"
                      f"{older_settings(probe, sd)} |")
    md.append("")
    return md


def wan_markdown(wan: dict, wan_long: dict | None, what: str = "") -> list[str]:
    title = ("## Wan scale" if wan.get("compile", "none") == "none" else
             f"## Wan scale, compiled ({wan['compile']}), attention {wan.get('attention')}")
    title += f": {what}" if what else ""
    probed = "attention_probe" in wan["runs"]
    md = [title, "",
          f"`bench/wan_benchmark.py`, {wan['device_name']}, torch {wan['torch']}, {wan['date']}: {wan['size']}, "
          f"{wan['dtype']}, random weights built on the GPU from the released configs (Wan 2.1 1.3B, 14B / A14B "
          "experts, UMT5-XXL, Wan 2.1 VAE; SD 1.5 and FLUX.1-dev with CLIP-L, T5-XXL and its VAE for the bridges), "
          "the repo's Wan and Flux family experts and codecs, attention "
          f"backend {wan.get('attention')} ({'the fastest on one Wan forward' if probed else 'as set'}), compile "
          f"{wan['compile']}. End to end: "
          "text encoding, sampling, VAE decode to uint8 frames.", "",
          "| run | s | runs | evals | forwards | VAE calls | TFLOP | TFLOP/s | text s | networks s | VAE dec s | "
          "VAE enc s | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in wan["runs"].items():
        if r is None:
            md.append(f"| {name} | skipped (deadline) |" + " |" * 11)
        elif "error" in r:
            md.append(f"| {name} | failed: {r['error'][:80]} |" + " |" * 11)
        elif "runs_s" in r:
            m = r.get("modules_s", {})
            md.append(f"| {name} | **{r['wall_s']:.2f}** | {', '.join(f'{x:.2f}' for x in r['runs_s'])} | "
                      f"{sum(r.get('evaluations', {}).values())} | {sum(r.get('network_forwards', {}).values())} | "
                      f"{sum(r.get('vae_calls', {}).values())} | {r['tflop']:.0f} | {r['achieved_tflops']:.0f} | "
                      f"{m.get('text', 0):.2f} | {m.get('transformer', 0):.2f} | {m.get('vae_decode', 0):.2f} | "
                      f"{m.get('vae_encode', 0):.2f} | {fmt(r.get('peak_gpu_gib'), '.1f', '')} |")
    timed = [r for r in wan["runs"].values() if r and "runs_s" in r]
    if timed and all(r.get("modules_s", {}).get("text", 0) < 0.005 for r in timed):
        md += ["", "Text encoding shows as 0.00 s: in this call the UMT5 encoder remembered the prompts of the warm-up "
               "run, so the timed runs did not encode (since 2026-12-02's fourth session the benchmark clears them "
               "before every run, as a new process would find them; not remeasured)."]
    probe = wan["runs"].get("wan14_probe")
    full = {name: r["wall_s"] for name, r in wan["runs"].items()
            if name in ("wan22_a14b_40", "confiner_wan14") and r and "wall_s" in r}
    if probe and "error" not in probe and full:
        md += ["", f"Both 14B runs measured whole, after the per-evaluation probe (which compiled their shapes): "
               f"Wan 2.2 A14B-40 {full.get('wan22_a14b_40', float('nan')):.1f} s (the probe's "
               f"{probe['a14b_steps_high']} high-noise steps at {probe['a14b_step_high_s']:.2f} s and "
               f"{probe['a14b_steps_low']} low-noise at {probe['a14b_step_low_s']:.2f} s predicted "
               f"{probe['wan22_a14b_40_s_extrapolated']:.1f} s "
               f"{'with' if probe.get('text_s') or probe.get('decode_s') else 'without'} text and decode), ConFiner "
               f"with 14B experts "
               f"{full.get('confiner_wan14', float('nan')):.1f} s (predicted "
               f"{probe.get('wan14_confiner_s_extrapolated', float('nan')):.1f} s): ratio "
               f"{fmt((wan.get('figures') or {}).get('wan_ratio_confiner_14b_to_wan22_a14b_40'), '.4f')} against "
               f"the FLOP ratio "
               f"{fmt((wan.get('figures') or {}).get('wan_flop_ratio_confiner_14b_to_wan22_a14b_40'), '.4f')}."]
        fig = wan.get("figures") or {}
        if fig.get("wan_ratio_confiner_to_wan22_a14b_40") and "wan22_a14b_40" in full:
            md[-1] += (f" ConFiner with 1.3B experts in the same process: "
                       f"{fmt(fig.get('wan_ratio_confiner_to_wan22_a14b_40'), '.4f')} of A14B-40's time (FLOP ratio "
                       f"{fmt(fig.get('wan_flop_ratio_confiner_to_wan22_a14b_40'), '.4f')}: the 1.3B network runs "
                       "at a lower rate than the 14B ones).")
    elif probe and "error" not in probe:
        md += ["", f"Wan 2.2 A14B, 40 steps with cfg: {probe['a14b_steps_high']} high-noise steps at "
               f"{probe['a14b_step_high_s']:.2f} s and {probe['a14b_steps_low']} low-noise steps at "
               f"{probe['a14b_step_low_s']:.2f} s (one cfg-batched evaluation each, measured) + text "
               f"{probe['text_s']:.2f} s + decode {probe['decode_s']:.2f} s = **{probe['wan22_a14b_40_s_extrapolated']:.1f} s, "
               "extrapolated** from those measurements (the full run does not fit the call with the rest)."]
        if "wan14_confiner_s_extrapolated" in probe:
            md += ["", f"ConFiner with Wan 14B experts, extrapolated the same way: control {probe['wan14_video_b1_s']:.2f} s "
                   f"per step (batch 1), spatial one-frame evaluation {probe['wan14_frames_b2x_s']:.2f} s (batch 2×21), "
                   f"temporal {probe['wan14_video_b2_s']:.2f} s (batch 2) → **{probe['wan14_confiner_s_extrapolated']:.1f} s**."]
    attn = wan["runs"].get("attention_probe")
    if attn and "forward_s" in attn:
        md += ["", "One Wan 1.3B forward (batch 1, 32,760 tokens) per attention backend: " +
               ", ".join(f"{k} {v:.3f} s" if isinstance(v, float) else f"{k} failed" for k, v in attn["forward_s"].items())
               + f"; used: {attn['fastest']}."]
    caches = {k: v for k, v in wan["runs"].items() if k.startswith("confiner_wan13_step_cache_") and ok(v)}
    if caches:
        md += ["", "Step caching (First-Block-Cache on the refinement experts, opt-in, off by default):", "",
               "| threshold | s | refinement forwards skipped | latent rel. L2 vs uncached | frames PSNR dB vs uncached |",
               "|---|---|---|---|---|"]
        for k, v in caches.items():
            md.append(f"| {v['threshold']:g} | {v['wall_s']:.2f} | {v['skipped']} of {v['calls']} | "
                      f"{fmt(v.get('latent_rel_l2_vs_uncached'), '.4f')} | {fmt(v.get('frames_psnr_db_vs_uncached'), '.1f')} |")
        md += ["", "Random weights make the first block's residual change between steps unlike a trained model's, so the "
               "skip rate here says little about real checkpoints; the output difference is what a threshold costs."]
    prof = wan["runs"].get("profile_confiner_wan13")
    if prof and "kinds" in prof:
        md += [""] + P.markdown(prof, "Profile of one ConFiner run with Wan 1.3B experts")
    if wan_long:
        md += ["", "### ConFiner-Long with Wan 1.3B experts (segments of 81 frames, all three strategies)", "",
               "| frames | s | windows | s per window | evaluations | VAE calls | peak GPU GiB |",
               "|---|---|---|---|---|---|---|"]
        for frames, r in wan_long.get("long", {}).items():
            if not ok(r):
                md.append(f"| {frames} | {'skipped (deadline)' if r is None else 'failed'} | | | | | |")
                continue
            md.append(f"| {frames} | {r['wall_s']:.1f} | {r.get('windows')} | {r['wall_s'] / r['windows']:.1f} | "
                      f"{sum(r['evaluations'].values())} | {sum(r.get('vae_calls', {}).values())} | "
                      f"{fmt(r.get('peak_gpu_gib'), '.1f')} |")
    return md + [""]


def decode_chunk_figures(data: dict | None) -> tuple[dict, list[str]]:
    """The library's VAE decode, ``chunk`` frames at a time, against the sampling's peak memory: RESULTS.json keys
    for the library's default chunk (``library_default``) and a RESULTS.md table of every chunk measured."""
    if not data:
        return {}, []
    default = data["library_default"]
    md = ["## The library's VAE decode: frames at a time against peak memory", "",
          "`gpu_benchmark.py --settings lean --decode-chunk N` (ConFiner 4+5, ModelScope temporal, all models "
          "resident), one process per N. Peak memory while the experts ran and while the VAE decoded (CUDA "
          "allocator, weights included).", "",
          "| frames at a time | decode s | peak in the VAE decode GiB | peak in the experts GiB | decode under sampling |",
          "|---|---|---|---|---|"]
    out = {}
    for chunk, run in sorted(data["chunks"].items(), key=lambda kv: int(kv[0])):
        peaks = run["modules_peak_gib"]
        under = peaks["vae"] <= peaks["experts"]
        md.append(f"| {chunk}{' (default)' if int(chunk) == default else ''} | {run['modules_s']['vae']:.3f} | "
                  f"{peaks['vae']:.2f} | {peaks['experts']:.2f} | {'**yes**' if under else 'no'} |")
        if int(chunk) == default:
            out = {"library_decode_peak_gib": peaks["vae"], "library_sampling_peak_gib": peaks["experts"],
                   "library_decode_s": run["modules_s"]["vae"], "library_decode_chunk_frames": default}
    return out, md + [""]


#: vae_decode_probe.py's variants: (the name in its JSON, what the norms were)
VAE_VARIANTS = (("lean", "lean", "per-group kernels"), ("lean_rows", "lean", "as picked now (row kernels for narrow groups)"),
                ("fast", "fast", "inductor's fusion in the compiled blocks"),
                ("fast_rows_op", "fast", "as picked now (the kernels as an op in the compiled blocks)"))


def vae_probe_figures(data: dict | None, fig: dict) -> tuple[dict, list[str]]:
    """``vae_decode_probe.py``: the SD VAE decode under ``lean`` and compiled (``fast``), each with the GroupNorm
    kernels as before the row kernels and as picked now, beside the decode time of the fastest table's ConFiner run
    (the benchmark compiles the decoder as ``load_experts`` does)."""
    if not data:
        return {}, []
    now = {preset: name for name, preset, _ in VAE_VARIANTS if name in data}  # the last variant of each preset
    out = {"vae_decode_lean_s": data[now["lean"]]["median_s"], "vae_decode_compiled_s": data[now["fast"]]["median_s"],
           "vae_decode_compile_s": data[now["fast"]]["first_call_s"]}
    md = ["## The VAE decoder compiled", "",
          f"`bench/vae_decode_probe.py`, {data['device']}, torch {data['torch']}: the library's decode of one "
          f"{data['size']}×{data['size']}×{data['frames']} latent video, {data['chunk_frames']} frames at a time, "
          "fp16, under `lean` and with the decoder's blocks compiled as the `fast` preset compiles them; each with the "
          "GroupNorm kernels as before the row kernels and as `fused_norm` picks them now. Differences are from the "
          "first decode's output (pixels in [-1, 1]).", "",
          "| preset | GroupNorm | median s | first call s | peak GiB | norm share of kernel time | max difference |",
          "|---|---|---|---|---|---|---|"]
    for name, preset, norms in VAE_VARIANTS:
        if name not in data:
            continue
        row = data[name]
        share = row.get("profile", {}).get("kinds", {}).get("norm", {}).get("share")
        out[f"vae_decode_probe_{name}_s"] = row["median_s"]
        if share is not None:
            out[f"vae_decode_{name}_norm_share"] = share
        md.append(f"| {preset} | {norms} | **{row['median_s']:.3f}** | {row['first_call_s']:.1f} | "
                  f"{fmt(row.get('peak_gib'), '.2f')} | {fmt(share and 100 * share, '.1f')} % | "
                  f"{fmt(row.get('max_abs_diff_from_lean'), '.1e')} |")
    table = fig.get("fastest_table")
    decode = fig.get(f"{table}_confiner_decode_s")
    if decode is not None:
        md += ["", f"The decode inside the `{table}` table's ConFiner run: {decode:.3f} s."]
    for name, _, _ in VAE_VARIANTS:
        profile = data.get(name, {}).get("profile")
        if profile and name in (now["lean"], now["fast"]):   # --profile: where the decode's kernel time goes now
            md += [""] + P.markdown(profile, f"Profile of one decode ({name})")[:-1]
    return out, md + [""]


NORM_WAYS = (("eager", "PyTorch eager"), ("inductor", "inductor"), ("triton_groups", "per-group kernels"),
             ("triton_rows", "row kernels"))


def norm_probe_figures(data: dict | None) -> tuple[dict, list[str]]:
    """``norm_probe.py``: GroupNorm + SiLU on the SD networks' channels_last shapes, four ways, and the way
    ``fused_norm`` takes now outside and inside compiled blocks (its rules, applied to each shape)."""
    if not data:
        return {}, []
    import torch  # the rules read a tensor's shape, dtype and strides: a meta tensor of each shape

    sys.path.insert(0, os.path.dirname(HERE))
    from confiner_core.diffusers_backend import fused_norm as FN

    setting = (FN.ROW_TILE, FN.ROW_PROGRAMS, FN.ROW_WARPS, FN.ROW_STAGES, FN.ROW_MIN_TILES)
    has_sweep = any("sweep" in row for row in data["shapes"])
    as_set = " | row kernels as set now" if has_sweep else ""
    swept = ""
    if has_sweep:
        swept = (f" The row kernels were also timed under {len(data['shapes'][0]['sweep'])} settings of tile size, "
                 "programs, warps, loop stages and least tiles a program (`--sweep`); the column after the four ways "
                 "is the setting "
                 f"`fused_norm` uses now (tile {setting[0]}, {setting[1]} programs, {setting[2]} warps, {setting[3]} "
                 f"loop stages, at least {setting[4]} tiles a program; at batch 2 the sweep spread "
                 "the pixels over more programs than the kernels do).")
    md = ["## GroupNorm kernels", "",
          f"`bench/norm_probe.py`, {data['device']}, torch {data['torch']}, {data['dtype']}, {data['groups']} groups, "
          f"channels_last, with SiLU: milliseconds (median, {data.get('timing', 'one call timed from the host')}), "
          "and GB/s of the one read and one write a norm needs "
          "at least. The last two columns name the way `fused_norm` takes for that shape in `lean` and inside the "
          "compiled blocks of `fast`/`max` (`rows_win`, `compiled_take`)." + swept, "",
          "| where | [N, C, H, W] | " + " | ".join(label for _, label in NORM_WAYS) + as_set +
          " | lean takes | compiled takes |", "|---|---|" + "---|" * (len(NORM_WAYS) + 2 + bool(as_set))]
    for row in data["shapes"]:
        cells = [f"{row[k]['ms']:.3f} ({row[k]['GB_s']:.0f})" if k in row else "—" for k, _ in NORM_WAYS]
        if as_set:
            now = [r for r in row.get("sweep", [])
                   if (r["tile"], r["programs"], r["warps"], r.get("stages", 1), r.get("min_tiles", 1)) == setting]
            cells.append(f"{now[0]['ms']:.3f}" if now else "—")
        x = torch.empty(row["shape"], dtype=torch.float16, device="meta").contiguous(memory_format=torch.channels_last)
        kernel = "row kernels" if FN.rows_win(x, data["groups"]) else "per-group kernels"
        compiled = kernel if FN.compiled_take(x, data["groups"]) else "inductor"
        md.append(f"| {row['where']} | {row['shape']} | " + " | ".join(cells) + f" | {kernel} | {compiled} |")
    totals = data.get("total_ms", {})
    md += ["", "All shapes once: " + ", ".join(f"{label} {totals[k]:.2f} ms" for k, label in NORM_WAYS if k in totals)
           + ".", ""]
    return {f"norm_probe_total_{k}_ms": v for k, v in totals.items()}, md


def geglu_gemm_figures(data: dict | None) -> tuple[dict, list[str]]:
    """``geglu_gemm_probe.py``: the feed-forward's first GEMM and its GEGLU gate, as the presets run them and in one
    Triton kernel at its fastest tile setting per shape."""
    if not data:
        return {}, []
    md = ["## The feed-forward's GEMM and gate in one kernel", "",
          f"`bench/geglu_gemm_probe.py`, {data['device']}, torch {data['torch']}, {data['dtype']}: milliseconds "
          f"(median, {data['timing']}) of the projection K -> 2 x 4K and the gate, as the compiled presets run them "
          "(cuBLAS, then inductor's fused gate), as `lean` runs them (cuBLAS, then the library's gate kernel), the "
          "GEMM alone, and one Triton kernel that computes both halves' tiles and writes only the gated half (the "
          "fastest of its tile settings); the last column is the compiled presets' time over the fused kernel's.", "",
          "| where | rows x K | compiled presets | lean | GEMM alone | fused (fastest setting) | presets / fused |",
          "|---|---|---|---|---|---|---|"]
    ratios = []
    for row in data["shapes"]:
        if "ways" not in row:
            md.append(f"| {row['where']} | — | {row.get('skipped', '')} | | | | |")
            continue
        ms = {r["way"]: r["ms"] for r in row["ways"] if "ms" in r}
        best = row["best_fused"]
        ratios.append(row["best_fused_vs_inductor"])
        md.append(f"| {row['where']} | {row['rows']} x {row['k']} | {ms['cublas + inductor gate']:.3f} | "
                  f"{ms['cublas + gate kernel']:.3f} | {ms['cublas GEMM alone']:.3f} | {ms[best]:.3f} "
                  f"(`{best[len('fused '):]}`) | {row['best_fused_vs_inductor']:.2f} |")
    md += ["", "Tile settings are (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages). The fused kernel was faster "
           f"on {sum(r > 1 for r in ratios)} of {len(ratios)} shapes.", ""]
    return ({"geglu_gemm_presets_over_fused_min": min(ratios), "geglu_gemm_presets_over_fused_max": max(ratios)}
            if ratios else {}), md


def fp8_linear_figures(data: dict | None) -> tuple[dict, list[str]]:
    """``fp8_linear_probe.py``: SD's and the control expert's linear layers in fp16 against fp8 (one scale per tensor
    or per row, the activation's quantisation compiled in front of the GEMM; the fp8 GEMM alone), each with its
    difference from fp32."""
    if not data:
        return {}, []
    ways = list(data["total_ms"])
    md = ["## fp8 linear layers", "",
          f"`bench/fp8_linear_probe.py`, {data['device']}, torch {data['torch']}, {data['dtype'].replace('torch.', '')} "
          "activations: "
          f"milliseconds ({data['timing']}, per call) of each linear layer of SD's and the control expert's "
          "transformers (rows = tokens x batch), and in brackets the largest difference from the fp32 result "
          "relative to its largest value. `fp8 tensor` and `fp8 row` quantise the fp16 activation (one scale per "
          "tensor, per row) in a compiled kernel and multiply with `torch._scaled_mm` on weights quantised once; "
          "`fp8 GEMM alone` is that multiply on activations already in fp8, the bound if producers wrote fp8."
          + (" `fp16 acc16` is fp16 with cuBLAS accumulating in fp16 (ComfyUI's `--fast fp16_accumulation`)."
             if "fp16 acc16" in ways else "")
          + (" `bf16` rounds the activation, weight and bias to bf16 (fp32 accumulation), for scale." if "bf16" in ways
             else ""), "",
          "| where | rows x K -> N | " + " | ".join(ways) + " |", "|---|---|" + "---|" * len(ways)]
    for row in data["shapes"]:
        by_way = {w["way"]: w for w in row["ways"]}
        fastest = min(ways, key=lambda w: by_way[w]["ms"])
        cells = [f"{by_way[w]['ms']:.3f} ({by_way[w]['rel_diff']:.1e})" for w in ways]
        md.append(f"| {row['where']} | {row['rows']} x {row['k']} -> {row['n']} | "
                  + " | ".join(f"**{c}**" if w == fastest else c for w, c in zip(ways, cells)) + " |")
    total = data["total_ms"]
    verdict = "loses" if min(total["fp8 tensor"], total["fp8 row"]) > total["fp16"] else "wins"
    diff = {w: sum(x["rel_diff"] for row in data["shapes"] for x in row["ways"] if x["way"] == w) for w in ways}
    faster = {w: sum(1 for row in data["shapes"] for x in row["ways"]
                     if x["way"] == w and x["ms"] < next(y["ms"] for y in row["ways"] if y["way"] == "fp16"))
              for w in ways if w != "fp16"}
    md += [f"| all {len(data['shapes'])} once | | " + " | ".join(f"{total[w]:.2f}" for w in ways) + " |", "",
           "Faster than fp16 on " + ", ".join(f"{n} of {len(data['shapes'])} shapes ({w})" for w, n in faster.items())
           + f". With the quantisation, fp8 {verdict} on the whole; where the layer before wrote fp8 itself, the "
           f"GEMMs' {total['fp16']:.2f} ms would go to {total['fp8 GEMM alone']:.2f} ms, at "
           f"{diff['fp8 GEMM alone'] / diff['fp16']:.0f} times fp16's difference from fp32 (mean over the shapes).", ""]
    return {f"fp8_linear_total_ms {w}": total[w] for w in ways}, md


def autotune_log_figures(log: str | None) -> tuple[dict, list[str]]:
    """Inductor's autotuning printout (``--inductor-config max_autotune_gemm=True``, call AY's log): per autotuned
    operation, PyTorch's own kernel (cuBLAS, cuDNN) against the fastest Triton template, and the seconds the
    choices took to benchmark. Inductor prints the ten fastest choices of each; a library kernel not among them was
    slower than the tenth (its time is then unknown)."""
    if not log:
        return {}, []
    rows, seconds = [], [0.0, 0.0]
    for block in log.split("\nAUTOTUNE ")[1:]:
        head, *lines = block.splitlines()
        choices = [(m.group(1), float(m.group(2))) for m in (re.match(r"\s+(\S+) ([\d.]+) ms", line) for line in lines)
                   if m]
        timing = next((re.search(r"takes ([\d.]+) seconds and ([\d.]+) seconds precompiling", line) for line in lines
                       if line.startswith("SingleProcess AUTOTUNE")), None)
        if timing:
            seconds = [seconds[0] + float(timing.group(1)), seconds[1] + float(timing.group(2))]
        library = [t for name, t in choices if not name.startswith("triton")]
        triton = [t for name, t in choices if name.startswith("triton")]
        rows.append((head.split("(")[0], head, library[0] if library else None, triton[0] if triton else None,
                     choices[0][0].startswith("triton"), max(t for _, t in choices)))
    triton_won = [r for r in rows if r[4]]
    convolutions = [r for r in rows if r[0] == "convolution"]
    md = ["## Inductor's GEMM autotuning (`max_autotune_gemm`)", "",
          f"Call AY compiled `max` with `--inductor-config max_autotune_gemm=True`: inductor times Triton templates "
          f"against PyTorch's own kernel for every matrix multiply and convolution it compiles. Its {len(rows)} "
          f"autotuned operations took {seconds[0]:.0f} s benchmarking their choices and {seconds[1]:.0f} s "
          "precompiling them, and the first ConFiner run had not finished compiling when the call's time ran out, "
          "so the preset's speed with it is unmeasured. Milliseconds per call (`>` : PyTorch's kernel was slower "
          "than the tenth choice printed):", "",
          "| operation | PyTorch's kernel | fastest Triton | chosen |", "|---|---|---|---|"]
    for _, head, library, triton, won, slowest in rows:
        lib_cell = f"{library:.4f}" if library is not None else f"> {slowest:.4f}"
        md.append(f"| `{head}` | {lib_cell} | {fmt(triton, '.4f')} | {'Triton' if won else 'PyTorch'} |")
    known = [(r[2], min(r[2], r[3] if r[3] is not None else r[2])) for r in rows if r[2] is not None]
    md += ["", f"Triton's template was chosen for {len(triton_won)} of {len(rows)} operations, and for "
           f"{sum(r[4] for r in convolutions)} of the {len(convolutions)} convolutions (cuDNN's kernel won the "
           f"others). Where PyTorch's time is known ({len(known)} operations, one call each), the chosen kernels "
           f"take {sum(c for _, c in known):.3f} ms against PyTorch's {sum(p for p, _ in known):.3f} ms: the large "
           "feed-forward and attention projections stay with cuBLAS, Triton wins the small and narrow ones.", ""]
    return {"autotune_operations": len(rows), "autotune_triton_chosen": len(triton_won),
            "autotune_benchmark_s": seconds[0]}, md


def load_threads_figures(log: str | None) -> tuple[dict, list[str]]:
    """Call BC's warm-start probes, in the order A B B A B A A B: A reads the kept blocks in-process
    (``precompiled.LOAD_COMPILE_THREADS`` = 1), B with inductor's pool of compile workers
    (``--load-with-compile-workers``), each after the same cold process on one machine. Its log has a line per
    probe: number, arm, warm start, then imports, first run, reading the blocks and their first calls (s)."""
    if not log:
        return {}, []
    line = re.compile(r"^(\d+) ([AB]) ([\d.]+) import ([\d.]+) first ([\d.]+) load ([\d.]+) calls ([\d.]+)", re.M)
    probes = [(int(m[1]), m[2], *map(float, m.groups()[2:])) for m in line.finditer(log)]
    if not probes:
        return {}, []
    names = {"A": "in-process", "B": "compile workers"}
    md = ["## Reading the kept blocks in-process", "",
          "A warm start reads the 78 blocks `--compile-dir` keeps. Their kernels are in the cache they were compiled "
          "into, and inductor would hand each to its pool of compile workers; `precompiled.LOAD_COMPILE_THREADS` = 1 "
          "reads them in the process instead. Call BC, one machine, one cold process, then the warm-start probe "
          "in the order A B B A B A A B (A: in-process, B: `--load-with-compile-workers`); seconds:", "",
          "| probe | reading | warm start | imports | first run | reading the blocks | their first calls |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {n} | {names[arm]} | {w:.2f} | {i:.2f} | {f:.2f} | {r:.2f} | {c:.2f} |"
           for n, arm, w, i, f, r, c in probes]
    fig = {}
    for arm, key in (("A", "in_process"), ("B", "compile_workers")):
        rows = [p for p in probes if p[1] == arm]
        for column, what in ((2, "warm_start"), (4, "first_run"), (5, "blocks_load")):
            fig[f"warm_load_{key}_{what}_mean_s"] = sum(r[column] for r in rows) / len(rows)
        fig[f"warm_load_{key}_probes"] = len(rows)
    spread = max(max(p[2] for p in probes if p[1] == arm) - min(p[2] for p in probes if p[1] == arm) for arm in "AB")
    md += ["", f"Means: warm start {fig['warm_load_in_process_warm_start_mean_s']:.2f} s in-process against "
           f"{fig['warm_load_compile_workers_warm_start_mean_s']:.2f} s with the workers, first run "
           f"{fig['warm_load_in_process_first_run_mean_s']:.2f} against "
           f"{fig['warm_load_compile_workers_first_run_mean_s']:.2f} s. Within one arm the warm start spreads over "
           f"up to {spread:.1f} s (the imports alone {min(p[3] for p in probes):.1f}-{max(p[3] for p in probes):.1f} "
           "s): the gain lies within that spread, not a clear step. In-process stays the default, as it costs "
           "nothing where every kernel is cached.", ""]
    return fig, md


def upsample_speedups(probe: dict) -> tuple[list, list]:
    """Per measured shape of an ``upsample_probe.py`` file: diffusers' block over the folded one, compiled without
    cuDNN autotuning (``fast``/``max``) and eager with it (``lean``)."""
    compiled, lean = [], []
    for row in probe["shapes"]:
        way = {(r["way"], r["compiled"], r["cudnn_benchmark"]): r["ms"] for r in row.get("ways", []) if "ms" in r}
        if way:
            compiled.append(way[("interpolate + conv", True, False)] / way[("transposed conv", True, False)])
            lean.append(way[("interpolate + conv", False, True)] / way[("transposed conv", False, True)])
    return compiled, lean


def upsample_figures(probe: dict | None, ab: dict, bf16: dict | None = None) -> tuple[dict, list[str]]:
    """``upsample_probe.py`` (nearest x2 + 3x3 convolution as diffusers runs it, as one transposed convolution, as
    four phases and a gather; ``bf16``: the same probe in bfloat16) and the ``max`` preset with its upsampling folded
    and not (``ab``: file -> results, process after process on one machine per call)."""
    fig, md = {}, []
    if probe:
        md += ["## Upsampling as one transposed convolution", "",
               f"`bench/upsample_probe.py`, {probe['device']}, torch {probe['torch']}, {probe['dtype']}: milliseconds "
               f"(median, {probe['timing']}) of diffusers' `Upsample2D` (nearest x2, then the 3x3 convolution), the "
               "stride-2 transposed convolution with the folded 4x4 kernel it equals (`fold_upsample`, in every preset "
               "but eager since 2026-12-04) and the same taps as one 2x2 convolution with four output phases and a "
               "gather; compiled as the compiled presets compile the block (no cuDNN autotuning), and eager with "
               "cuDNN's autotuning (`lean`). TFLOP/s count the interpolate-and-convolve maths; the difference is the "
               "largest from an fp32 reference, the transposed convolution's (diffusers' own in brackets).", "",
               "| where | input [N, C, H, W] -> C_out | compiled: Upsample2D | transposed | phases + gather | "
               "lean: Upsample2D | transposed | speed-up compiled / lean | difference |",
               "|---|---|---|---|---|---|---|---|---|"]
        for row in probe["shapes"]:
            if "ways" not in row:
                md.append(f"| {row['where']} | {row.get('skipped', '')} | | | | | | | |")
                continue
            way = {(r["way"], r["compiled"], r["cudnn_benchmark"]): r for r in row["ways"] if "ms" in r}
            up_c, tr_c = way[("interpolate + conv", True, False)], way[("transposed conv", True, False)]
            up_l, tr_l = way[("interpolate + conv", False, True)], way[("transposed conv", False, True)]
            ph_c = way.get(("phases + gather", True, False))
            md.append(f"| {row['where']} | {row['input']} -> {row['out_channels']} | {up_c['ms']:.3f} "
                      f"({up_c['tflops']:.0f}) | **{tr_c['ms']:.3f}** ({tr_c['tflops']:.0f}) | "
                      f"{ph_c['ms']:.3f} | {up_l['ms']:.3f} | **{tr_l['ms']:.3f}** | "
                      f"{up_c['ms'] / tr_c['ms']:.2f} / {up_l['ms'] / tr_l['ms']:.2f} | "
                      f"{tr_c['max_diff']:.1e} ({up_c['max_diff']:.1e}) |")
        for suffix, data in (("", probe), ("_bf16", bf16)):
            compiled, lean = upsample_speedups(data) if data else ([], [])
            if compiled:
                fig.update({f"upsample_folded_speedup_compiled{suffix}_min": min(compiled),
                            f"upsample_folded_speedup_compiled{suffix}_max": max(compiled),
                            f"upsample_folded_speedup_lean{suffix}_min": min(lean),
                            f"upsample_folded_speedup_lean{suffix}_max": max(lean)})
        md.append("")
        if "upsample_folded_speedup_compiled_bf16_min" in fig:
            spans = {way: f"{fig[f'upsample_folded_speedup_{way}_bf16_min']:.2f}-"
                          f"{fig[f'upsample_folded_speedup_{way}_bf16_max']:.2f}x" for way in ("compiled", "lean")}
            md += [f"The same probe in bfloat16 (`{FILES['upsample_bf16']}`, another call): the folded block "
                   f"{spans['compiled']} faster compiled, {spans['lean']} eager.", ""]
    rows, by_way = [], {}
    for name, res in ab.items():
        if not res:
            continue
        table = res["tables"]["max"]
        run, ms = table["runs"].get(CONFINER), table["runs"].get("modelscope_100")
        if not run:
            continue
        folded = "folded upsampling" in table["settings"]
        call = re.search(r"call_([a-z]+)_", name).group(1).upper()
        ratio = run["wall_s"] / ms["wall_s"] if ms else None
        by_way.setdefault(folded, []).append((call, run["wall_s"], ms and ms["wall_s"], ratio))
        kinds = (table.get("profile") or {}).get("kinds", {})
        prof = (f"{table['profile']['kernel_s']:.3f} | {kinds['convolution']['s']:.3f} | "
                f"{kinds['elementwise']['s']:.3f}" if kinds else "— | — | —")
        runs = ", ".join(f"{x:.3f}" for x in run["runs_s"])
        baseline = f"{ms['wall_s']:.3f} | {ratio:.4f}" if ms else "— | —"
        rows.append(f"| {call} | `{name}` | {'folded' if folded else 'interpolate + conv'} | **{run['wall_s']:.3f}** "
                    f"({runs}) | {baseline} | {run['peak_gpu_gib']:.2f} | {prof} |")
    if rows:
        flop = next(res["tables"]["max"]["ratios"]["flop_ratio_confiner_modelscope_to_modelscope_100"]
                    for res in ab.values() if res and res["tables"]["max"].get("ratios"))
        md += ["The `max` preset with its upsampling folded and as diffusers runs it (`gpu_benchmark.py "
               "--no-fold-upsample`), process after process on one machine per call, each reading the compiled "
               "blocks the first process kept (README_GPU.md, twentieth session). Medians of 5 runs; kernel, "
               "convolution and elementwise seconds from the profiled run, where the call profiled. The FLOP ratio "
               f"is {flop:.4f} (FLOPs as diffusers' modules count them, whatever runs them).", "",
               "| call | file | upsampling | ConFiner 4+5 s (runs) | ModelScope-100 s | ratio | peak GPU GiB | "
               "kernel s | convolution s | elementwise s |", "|---|---|---|---|---|---|---|---|---|---|"] + rows + [""]
        for folded, key in ((True, "folded"), (False, "unfolded")):
            entries = by_way.get(folded, [])
            fig[f"upsample_{key}_confiner_s"] = [e[1] for e in entries]
            fig[f"upsample_{key}_ratios"] = [e[3] for e in entries if e[3] is not None]
    return fig, md


def merge_probes(data: dict | None, later: dict | None) -> dict | None:
    """One attention probe from two calls: ``data``'s backends that ``later`` lacks (installed only for that call)
    join each of ``later``'s rows, whose own figures stand (its backends compare within one call), the fastest is
    chosen again, and ``added`` names the joined backends; a shape only ``data`` measured keeps its row."""
    if not (data and later):
        return data or later
    added = [n for n in data["backends"] if n not in later["backends"]]
    merged = {**later, "backends": later["backends"] + added, "added": added, "shapes": {}}
    for shape, row in later["shapes"].items():
        extra = data["shapes"].get(shape, {}).get("backends", {})
        backends = {**row["backends"], **{n: extra[n] for n in added if n in extra}}
        timed = {n: e["median_ms"] for n, e in backends.items() if "median_ms" in e}
        merged["shapes"][shape] = {**row, "backends": backends, "fastest": min(timed, key=timed.get) if timed else None}
    merged["shapes"].update({n: row for n, row in data["shapes"].items() if n not in later["shapes"]})  # its own
    return merged


def attention_figures(data: dict | None, title: str = "Attention backends", key: str = "attention_probe",
                      lead: str = "") -> tuple[dict, list[str]]:
    """``attention_probe.py``: one call of every SD- and Wan-scale attention shape under every backend the machine
    had; RESULTS.json gets each shape's fastest backend and its milliseconds (under ``key``), RESULTS.md a table
    under ``title``, ``lead`` before it."""
    if not data:
        return {}, []
    names = data["backends"]
    added = (f" The `{'`, `'.join(data['added'])}` column{'s' if len(data['added']) > 1 else ''} came from an "
             f"earlier call (`{FILES['attention']}`, where {'they were' if len(data['added']) > 1 else 'it was'} "
             f"installed), the others from one (`{FILES['attention_frames']}`)." if data.get("added") else "")
    md = [f"## {title}", "", *([lead, ""] if lead else []),
          f"`bench/attention_probe.py`, {data['device']}, torch {data['torch']}, {data['dtype']}: one call of each "
          "attention shape of the benchmarks under each backend alone (milliseconds, median; TFLOP/s of QKᵀ and PV; "
          "the first call's seconds where it compiled; the largest difference from the reference backend's output). "
          "`flash4` is `flash-attn-4` through the library's route, `frames` the library's Triton kernel for attention "
          "over frames, `sage` SageAttention (INT8 QKᵀ, an approximation)"
          + ("; `shortkeys_m<rows>_w<warps>` the probe's own candidate kernel for at most 128 keys (not in the "
             "library)" if any(n.startswith("shortkeys") for n in names) else "") +
          f"; installed here: {', '.join(n for n in ('flash4', 'sage') if n in names) or 'neither'}.{added}", "",
          "| shape [B, H, Nq, Nk, d] | " + " | ".join(names) + " | fastest |",
          "|---|" + "---|" * (len(names) + 1)]
    out, notes = {}, {}
    for shape, row in data["shapes"].items():
        cells = []
        for n in names:
            e = row["backends"].get(n, {})
            if "median_ms" not in e:
                cells.append("—" if not e else "not taken")
                if e.get("error"):
                    notes.setdefault(f"{n}: {e['error'].rstrip('.')}", []).append(shape)
                continue
            cell = f"{e['median_ms']:.3f} ({e['tflops']:.0f})"
            if e.get("first_call_s", 0) > 1:
                cell += f", first {e['first_call_s']:.1f} s"
            if n != row["reference"]:
                cell += f", Δ {e['max_abs_diff']:.1e}"
            cells.append(f"**{cell}**" if n == row["fastest"] else cell)
        md.append(f"| {shape} {row['shape']} | " + " | ".join(cells) + f" | {row['fastest'] or '—'} |")
        if row["fastest"]:
            out[f"attention_fastest {shape}"] = {"backend": row["fastest"],
                                                 "ms": row["backends"][row["fastest"]]["median_ms"]}
    md.append("")
    if notes:
        refusals = [f"{why} ({', '.join(shapes)})" for why, shapes in notes.items()]
        md += [f"Not taken: {'; '.join(refusals)}.", ""]
    if data.get("skipped"):
        md += [f"Skipped at the deadline: {', '.join(data['skipped'])}.", ""]
    return {key: out}, md


def over_frames(settings: str) -> str:
    """The kernel a table's settings attend over frames with: the temporal setting's, else the spatial one's."""
    own = re.search(r"(\w+) attention over frames", settings)
    spatial = re.search(r"attention (\w+)", settings)
    return own.group(1) if own else spatial.group(1) if spatial else "default"


def lend_profile(table: dict | None, source: dict | None, name: str) -> bool:
    """Give ``table`` (a ``max`` table without a profile) the ``max`` profile of ``source``, another process of the
    same settings, marked with its file ``name``; False when either has no such thing or ``table`` has its own."""
    prof = ((source or {}).get("tables", {}).get("max") or {}).get("profile")
    if table is None or table.get("profile") or not prof:
        return False
    table["profile"], table["profile_from"] = prof, name
    return True


def newer_tables(sd: dict, newer: dict | None) -> dict:
    """A later call's tables, measured with today's presets, replace ``sd``'s tables of the same names (and its
    start figures where that call has them); returns the tables replaced, for the comparison with earlier presets."""
    replaced = {}
    for setting, table in (newer or {}).get("tables", {}).items():
        if setting in sd["tables"]:
            replaced[setting] = sd["tables"][setting]
        sd["tables"][setting] = table
    if newer and "cold_start_s" in newer and "import_s" in newer:
        sd["cold_import_s"] = newer["import_s"]
    for key in ("cold_start_s", "cold_compile_s", "compile_cache", "lean_cold_start_s"):
        if key in (newer or {}):
            sd[key] = newer[key]
    return replaced


def temporal_attention_figures(sd: dict, earlier: list) -> tuple[dict, list[str]]:
    """The main tables against the same tables of earlier calls (``earlier``: (files, tables) pairs), which ran the
    attention over frames with another kernel (or the same: then a row shows the spread from call to call).
    RESULTS.json gets the earlier kernels' figures as ``{table}_{kernel}_over_frames_...``."""

    def pair(table: dict | None):
        """(ConFiner s, ModelScope-100 s or None), or None without a ConFiner run."""
        runs = (table or {}).get("runs", {})
        if not ok(runs.get(CONFINER)):
            return None
        return runs[CONFINER]["wall_s"], runs["modelscope_100"]["wall_s"] if ok(runs.get("modelscope_100")) else None

    def cells(c, m, bold=""):
        ratio = f"{c / m:.4f}" if m else "—"
        values = (f"{c:.3f}", f"{m:.3f}" if m else "—", ratio)
        return " | ".join(f"{bold}{v}{bold}" if v != "—" else v for v in values)

    rows, out = [], {}
    for setting, table in sd["tables"].items():
        now, kernel_now = pair(table), over_frames(table["settings"])
        seen = [(files, tables[setting]) for files, tables in earlier if pair(tables.get(setting))]
        if not (now and seen):
            continue
        rows.append(f"| {setting} | **{kernel_now}** | {cells(*now, bold='**')} | the tables above |")
        for files, old in seen:
            (c, m), kernel = pair(old), over_frames(old["settings"])
            rows.append(f"| {setting} | {kernel} | {cells(c, m)} | {files} |")
            if kernel != kernel_now:
                key = f"{setting}_{kernel}_over_frames"   # the first call listed (the main one) gives the figure
                out.setdefault(f"{key}_confiner_modelscope_s", c)
                if m:
                    out.setdefault(f"{key}_modelscope100_s", m)
                    out.setdefault(f"{key}_ratio_confiner_modelscope_to_modelscope_100", c / m)
    if not rows:
        return {}, []
    folded = [name for name, table in sd["tables"].items() if "folded upsampling" in table.get("settings", "")]
    verb = "folds its" if len(folded) == 1 else "fold their"
    folded_note = (f" Of the tables above, {', '.join(folded)} also {verb} upsampling into one transposed "
                   "convolution (since 2026-12-04), which the earlier calls did not: those rows differ by more than "
                   "the kernel over frames." if folded else "")
    md = ["## Attention over frames in the presets", "",
          "The motion modules and temporal transformers attend over the 16 frames of each pixel. The tables above "
          "run that attention with the kernel in bold; here they stand beside the same tables from earlier calls "
          "with other kernels (eager, which no setting touches, shows the spread from call to call). A faster "
          "kernel over frames helps ModelScope-100 more than ConFiner: all its forwards run temporal transformers, "
          f"while half of ConFiner's are SD's alone.{folded_note}", "",
          "| table | attention over frames | ConFiner 4+5 s | ModelScope-100 s | ratio | call |",
          "|---|---|---|---|---|---|"] + rows + [""]
    return out, md


def warm_host_keys(fig: dict) -> list[tuple[str, str]]:
    """(call, RESULTS.json key) of the warm-start probe on each host measured, by call (the order they were taken)."""
    keys = {call: "warm_start" + WARM_PROBES[key][0] + "_s" for key, call in WARM_HOSTS.items()}
    keys["BC"] = WARM_LOAD_MEAN
    return [(call, keys[call]) for call in sorted(keys) if fig.get(keys[call]) is not None]


def warm_start_hosts(fig: dict) -> list[str]:
    """One entry a host: its call, warm start, and the two host-bound phases that differ most between hosts."""
    out = []
    for call, key in warm_host_keys(fig):
        if key == WARM_LOAD_MEAN:
            out.append(f"{call} {fig[key]:.1f} s: the mean of {fig['warm_load_in_process_probes']} probes")
            continue
        stem = key[:-len("_s")]
        out.append(f"{call} {fig[key]:.1f} s: imports {fig[stem + '_import_s']:.1f} s, reading the "
                   f"{fig.get(stem + '_blocks_loaded')} kept blocks {fig[stem + '_blocks_load_s']:.1f} s")
    return out


def targets(fig: dict) -> list[str]:
    yes = lambda v: "—" if v is None else ("**yes**" if v else "no")  # noqa: E731

    def le(value, limit):
        return None if value is None else value <= limit

    best = fig.get("fastest_confiner_modelscope_s")
    no_compiler = [fig.get(k) for k in ("eager_confiner_modelscope_s", "lean_confiner_modelscope_s",
                                        "lean_graphs_confiner_modelscope_s") if fig.get(k)]
    # the best settings: the fastest table (max, where its process ran), with the fast preset's figure beside it;
    # the fast preset's alone where the fastest table's ModelScope-100 was not measured
    fastest = fig.get("fastest_table", "best")
    if f"{fastest}_ratio_confiner_modelscope_to_modelscope_100" not in fig:
        fastest = "best"
    ratio = fig.get(f"{fastest}_ratio_confiner_modelscope_to_modelscope_100")
    flop = fig.get(f"{fastest}_flop_ratio_confiner_modelscope_to_modelscope_100")
    fast_ratio = fig.get("best_ratio_confiner_modelscope_to_modelscope_100")
    notes = [f"{fastest}; best {fmt(fast_ratio)}"] if fastest != "best" and fast_ratio is not None else []
    if fastest != fig.get("fastest_table", "best"):
        notes.append(f"best: the {fig['fastest_table']} table's ModelScope-100 was not measured")
    suffix = "_over_frames_ratio_confiner_modelscope_to_modelscope_100"
    notes += [f"{key[len(fastest) + 1:-len(suffix)]} over frames {value:.4f}" for key, value in fig.items()
              if key.startswith(f"{fastest}_") and key.endswith(suffix)]
    also = f" ({'; '.join(notes)})" if notes else ""
    ratio_verdict = yes(None if ratio is None or flop is None else ratio <= flop)
    warm_settings = (f" (the latest probe, with the settings of then: {fig['warm_start_settings']})"
                     if fig.get("warm_start_settings") else "")
    warm_verdict = yes(le(fig.get("warm_start_s"), TARGET_WARM_S))
    hosts = warm_start_hosts(fig)
    if fig.get("warm_start_from") in WARM_HOSTS and hosts:
        without = fig.get("warm_start_blocks_same_machine_s")
        warm_settings = (f" (by host: {'; '.join(hosts)}; all with Python's bytecode caches, as an installation has them"
                         + (f"; without, as the lent machine's Python runs: {without:.1f} s on AI" if without else "")
                         + ")")
        seconds = [fig[key] for _, key in warm_host_keys(fig)]
        met = sum(s <= TARGET_WARM_S for s in seconds)
        if 0 < met < len(seconds):
            warm_verdict = f"**yes** on {met} of the {len(seconds)} hosts measured"
    wan, wan_best = fig.get("wan_ratio_confiner_to_wan_50"), fig.get("best_wan_ratio_confiner_to_wan_50")
    wan_fastest = fig.get("fastest_attention_wan_ratio_confiner_to_wan_50")
    wan_ratios = [r for r in (wan, wan_best, wan_fastest) if r is not None]
    return ["## Targets (H200)", "", "| target | measured | met |", "|---|---|---|",
            f"| ConFiner 4+5 ≤ {TARGET_BEST_S} s, best settings | {fmt(best)} s ({fig.get('fastest_table')}) | "
            f"{yes(le(best, TARGET_BEST_S))} |",
            f"| ConFiner 4+5 ≤ {TARGET_EAGER_S} s without a compiler | eager {fmt(fig.get('eager_confiner_modelscope_s'))} s, "
            f"lean {fmt(fig.get('lean_confiner_modelscope_s'))} s, lean + CUDA graphs "
            f"{fmt(fig.get('lean_graphs_confiner_modelscope_s'))} s | "
            f"{yes(le(min(no_compiler), TARGET_EAGER_S) if no_compiler else None)} |",
            f"| best-settings ratio to ModelScope-100 ≤ FLOP ratio | {fmt(ratio, '.4f')} vs {fmt(flop, '.4f')}"
            f"{also} | {ratio_verdict} |",
            f"| warm start ≤ {TARGET_WARM_S:.0f} s | {fmt(fig.get('warm_start_s'), '.1f')} s{warm_settings} | "
            f"{warm_verdict} |",
            f"| Wan: ConFiner / Wan-50 ≤ {TARGET_WAN_RATIO} | {fmt(wan)} eager, {fmt(wan_best)} best settings with "
            f"cuDNN attention, {fmt(wan_fastest)} with flash-attn-4 | "
            f"{yes(le(min(wan_ratios), TARGET_WAN_RATIO) if wan_ratios else None)} |",
            f"| library VAE decode peak ≤ sampling peak | {fmt(fig.get('library_decode_peak_gib'), '.2f')} vs "
            f"{fmt(fig.get('library_sampling_peak_gib'), '.2f')} GiB | "
            f"{yes(le(fig.get('library_decode_peak_gib'), fig['library_sampling_peak_gib']) if 'library_sampling_peak_gib' in fig else None)} |",
            ""]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", default=os.path.join(HERE, "gpu_results"))
    ap.add_argument("--out", default=HERE)
    a = ap.parse_args()
    data = {k: load(a.raw, f) for k, f in FILES.items()}
    if data["sd"] is None:
        sys.exit(f"no {FILES['sd']} in {a.raw}: copy the SD call's results.json there (README_GPU.md)")
    filled = fold_extra(data["sd"], data["sd_extra"])
    # today's presets' tables, measured after the main call, replace its tables; those go to the comparison
    replaced, later = {}, {}
    for key in ("sd_later", "sd_latest", "sd_latest_max"):
        for setting, table in newer_tables(data["sd"], data[key]).items():
            replaced.setdefault(setting, table)   # the main call's, not an earlier later call's
        later.update({setting: FILES[key] for setting in (data[key] or {}).get("tables", {})})  # the last call's
    later = [f"{setting} (`{file}`)" for setting, file in later.items()]
    lend_profile(data["sd"]["tables"].get("max"), data["sd_latest_max_profile"], FILES["sd_latest_max_profile"])
    filled = [f for f in filled if f.split("/")[0] not in replaced] + fold_extra(data["sd"], data["sd_graphs"]) + \
        fold_extra(data["sd"], data["sd_animatediff"])
    earlier = [("`h200_sd.json`, `h200_sd_extra.json`", replaced)] if replaced else []
    for main_key, extra_key in (("sd_before_frame_kernel", "sd_extra_before_frame_kernel"),
                                ("sd_before_temporal_attention", "sd_extra_before_temporal_attention")):
        if data[main_key]:
            fold_extra(data[main_key], data[extra_key])
            earlier.append((f"`{FILES[main_key]}`, `{FILES[extra_key]}`", data[main_key]["tables"]))
    if data["temporal_attention_other_call"]:
        earlier.append(("`h200_sd_temporal_attention.json`", data["temporal_attention_other_call"]["tables"]))
    probes = {k: data[k] for k in WARM_PROBES}
    fig = figures(data["sd"], probes, data["wan"], data["wan_long"], data["wan_best"], data["wan_fastest"],
                  data["wan14_full"], data["wan_one_run"], data["wan_flux"])
    fig.update(network_rates(data["sd"], data["forward_flops"]))
    multigpu, multigpu_md = multigpu_figures(data["multigpu"])
    fig.update(multigpu)
    variants = {os.path.basename(f): load(a.raw, os.path.basename(f))
                for f in sorted(glob.glob(os.path.join(a.raw, COMFY_VARIANTS)))}
    comfy, comfy_md = comfy_figures(data["comfy"], fig, variants)
    fig.update(comfy)
    decode, decode_md = decode_chunk_figures(data["decode_chunks"])
    vae_probe, vae_probe_md = vae_probe_figures(data["vae_probe"], fig)
    fig.update(vae_probe)
    norms, norms_md = norm_probe_figures(data["norm_probe"])
    fig.update(norms)
    geglu, geglu_md = geglu_gemm_figures(data["geglu_gemm"])
    fig.update(geglu)
    upsample, upsample_md = upsample_figures(data["upsample"], {name: load(a.raw, name) for name in FOLD_AB},
                                             data["upsample_bf16"])
    fig.update(upsample)
    fp8, fp8_md = fp8_linear_figures(data["fp8_linear"])
    fig.update(fp8)
    logs = {}
    for name in (AUTOTUNE_LOG, LOAD_THREADS_LOG):
        path = os.path.join(a.raw, name)
        with open(path) if os.path.isfile(path) else contextlib.nullcontext() as f:
            logs[name] = f.read() if f else None
    autotune, autotune_md = autotune_log_figures(logs[AUTOTUNE_LOG])
    fig.update(autotune)
    load_threads, load_threads_md = load_threads_figures(logs[LOAD_THREADS_LOG])
    fig.update(load_threads)
    decode_md += vae_probe_md + norms_md + geglu_md + upsample_md + fp8_md + autotune_md + load_threads_md
    fig.update(decode)
    md = sd_markdown(data["sd"], fig, probes)
    if later:
        md += [f"Tables from later calls: {', '.join(later)}.", ""]
    if filled:
        md += [f"Runs from other processes (`{FILES['sd_extra']}`, `{FILES['sd_graphs']}`, `{FILES['sd_animatediff']}`): "
               f"{', '.join(filled)}.", ""]
    if data["wan"]:
        md += wan_markdown(data["wan"], data["wan_long"])
    for key, what in (("wan_one_run", "all four runs in one process"), ("wan_best", "the 1.3B runs"),
                      ("wan14_full", "the 14B runs"), ("wan_fastest", "")):
        if data[key]:
            md += wan_markdown(data[key], None, what)
    if data["wan_flux"]:
        md += wan_markdown(data["wan_flux"], None, "a FLUX.1-dev spatial expert bridged to the Wan 1.3B experts")
    attention, attention_md = attention_figures(merge_probes(data["attention"], data["attention_frames"]))
    fig.update(attention)
    short_keys, short_keys_md = attention_figures(
        data["attention_short_keys"], "Attention over at most 128 keys: a candidate kernel", "attention_short_keys",
        "Whether a kernel that holds all of at most 128 keys at once (no loop over keys) beats cuDNN on the "
        "cross-attention over 77 text tokens, and the library's frame kernel over 16 frames. It did not route: "
        "cuDNN stays faster on every cross-attention shape, and over frames the candidate's gains are hundredths of "
        "a millisecond a call, while it fails on AnimateDiff's largest shape (more rows than a grid takes).")
    fig.update(short_keys)
    attention_md += short_keys_md
    remeasured, remeasured_md = temporal_attention_figures(data["sd"], earlier)
    fig.update(remeasured)
    md += attention_md + remeasured_md + decode_md + comfy_md + targets(fig) + multigpu_md
    md += ["## How it was run", "", "The device commands of `bench/README_GPU.md`, then `python bench/gpu_report.py`.", ""]
    for name, text in (("RESULTS.json", json.dumps(fig, indent=2, default=float)), ("RESULTS.md", "\n".join(md) + "\n")):
        write_atomic(os.path.join(a.out, name), text.encode())
    print("\n".join(md))


if __name__ == "__main__":
    main()
