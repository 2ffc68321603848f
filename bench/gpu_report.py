"""Writes bench/RESULTS.md and bench/RESULTS.json from the raw figures of bench/gpu_results/.

The tables and every number come from the raw JSON that ``gpu_benchmark.py`` wrote on the GPU machine; the prose
around them is this file's. Run it on any machine: ``python bench/gpu_report.py``.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RAW = os.path.join(HERE, "gpu_results")
sys.path.insert(0, HERE)

import gpu_benchmark as g  # noqa: E402  (the run labels and the FLOP counter)

TABLES = "h100_call1_tables.json"  # both tables, one process
MULTIGPU = "multigpu.json"  # multigpu_benchmark.py on a machine with several GPUs (absent until it has run there)
LONG = {"eager": "h100_call2_long_eager.json", "best": "h100_call3_long_best.json"}
RUNS = list(g.RUN_LABELS.items())  # (key, label) in table order
TARGET_S, TARGET_RATIO, TARGET_OVERHEAD, TARGET_GB = 1.5, 0.10, 0.03, 8.0
MATMUL_PEAK_TFLOPS = 798  # 8192^3 bf16 matrix product on this machine kind (device KINDS.md, 2026-11-13)


def load(name: str) -> dict:
    with open(os.path.join(RAW, name)) as f:
        return json.load(f)


def run_table(runs: dict) -> list[str]:
    lines = ["| run | median s | runs (s) | expert evals | TFLOP | TFLOP/s | overhead | peak GPU GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for key, label in RUNS:
        v = runs[key]
        lines.append(f"| {label} | **{v['wall_s']:.3f}** | {', '.join(f'{r:.3f}' for r in v['runs_s'])} "
                     f"| {sum(v['evaluations'].values())} | {v['tflop']:.0f} | {v['achieved_tflops']:.0f} "
                     f"| {100 * v['overhead_fraction']:.1f} % | {v['peak_gpu_gib']:.2f} |")
    return lines


def figures(tables: dict, longs: dict) -> dict:
    """The plainly named figures of RESULTS.json."""
    out = {"device": tables["device_name"], "torch": tables["torch"], "diffusers": tables["diffusers"],
           "date": tables["date"], "resolution": "512x512x16", "params_m": tables["params_m"]}
    for setting, table in tables["tables"].items():
        r = table["runs"]
        out[f"{setting}_settings"] = table["settings"]
        out[f"{setting}_confiner_modelscope_s"] = r["confiner_4+5_modelscope"]["wall_s"]
        out[f"{setting}_confiner_animatediff_s"] = r["confiner_4+5_animatediff"]["wall_s"]
        out[f"{setting}_confiner_modelscope_staged_s"] = r["confiner_4+5_modelscope_staged"]["wall_s"]
        for base in ("modelscope_100", "modelscope_50", "animatediff_25"):
            out[f"{setting}_{base.replace('_', '')}_s"] = r[base]["wall_s"]
        for k, v in table["ratios"].items():
            out[f"{setting}_{k}"] = v
        out[f"{setting}_orchestration_overhead_fraction"] = r["confiner_4+5_modelscope"]["overhead_fraction"]
        out[f"{setting}_peak_gpu_gib_all_resident"] = r["confiner_4+5_modelscope"]["peak_gpu_gib"]
        out[f"{setting}_peak_gpu_gib_staged"] = r["confiner_4+5_modelscope_staged"]["peak_gpu_gib"]
        out[f"{setting}_confiner_achieved_tflops"] = r["confiner_4+5_modelscope"]["achieved_tflops"]
        out[f"{setting}_warmup_s_first_confiner_run"] = r["confiner_4+5_modelscope"]["warmup_s"]
        out[f"{setting}_launch_probe"] = table.get("launch_probe", {})
    c = tables["tables"]["eager"]["runs"]["confiner_4+5_modelscope"]
    out["expert_evaluations_confiner"] = c["evaluations"]
    out["network_forwards_confiner"] = c.get("network_forwards", c.get("forwards"))  # older result files
    out["confiner_tflop"] = c["tflop"]
    out["modelscope100_tflop"] = tables["tables"]["eager"]["runs"]["modelscope_100"]["tflop"]
    out["confiner_floor_s_at_matmul_peak"] = c["tflop"] / MATMUL_PEAK_TFLOPS
    for setting, data in longs.items():
        for frames, v in data["long"][setting]["runs"].items():
            out[f"{setting}_long_{frames}_s"] = v["wall_s"]
            out[f"{setting}_long_{frames}_peak_gpu_gib"] = v["peak_gpu_gib"]
            out[f"{setting}_long_{frames}_expert_evaluations"] = sum(v["evaluations"].values())
    return out


def multigpu_figures() -> tuple[dict, list[str]]:
    """RESULTS.json keys and a RESULTS.md section from ``multigpu_benchmark.py``'s ``multigpu.json`` (several GPUs of
    one host), when it has been run on GPUs: ``multigpu_speedup_N`` / ``multigpu_peak_gib_per_gpu_N`` for the SD
    600-frame video, ``multigpu_wan_*`` for Wan 1.3B."""
    path = os.path.join(RAW, MULTIGPU)
    if not os.path.isfile(path):
        return {}, []
    data = load(MULTIGPU)
    if data.get("tiny"):   # a CPU smoke run is no measurement
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


def forward_tflop() -> dict:
    """TFLOP of one forward of each expert at the benchmark's shapes, counted on meta-device copies."""
    import torch

    fc = g.FlopCounter(g.build(g.FULL, torch.float16, "meta"))
    h, f16 = 64, torch.float16
    t = (1, (), torch.float32)

    def sig(sample, context):
        return ((0, sample, f16), t, ("encoder_hidden_states", context, f16))

    return {"SD 1.5 UNet, 32 frames": fc.call("sd", sig((32, 4, h, h), (32, 77, 768))) / 1e12,
            "ModelScope UNet3D, 2×16 frames": fc.call("ms", sig((2, 4, 16, h, h), (2, 77, 1024))) / 1e12,
            "AnimateDiff UNetMotionModel, 2×16 frames": fc.call("ad_temporal", sig((2, 4, 16, h, h), (32, 77, 768))) / 1e12}


def blockers(tables: dict, fig: dict, runs_file: dict) -> list[str]:
    """What stands between the measurements and the two targets that are not met, from the same figures."""
    e, b = tables["tables"]["eager"]["runs"], tables["tables"]["best"]["runs"]
    conf, ms100 = e["confiner_4+5_modelscope"], e["modelscope_100"]
    flop_ratio = conf["tflop"] / ms100["tflop"]
    probe = {s: tables["tables"][s]["launch_probe"] for s in ("eager", "best")}
    issue = [v["cpu_issue_s"] / v["gpu_s"] for p in probe.values() for v in p.values()]
    tf = forward_tflop()
    sd, ms = tf["SD 1.5 UNet, 32 frames"], tf["ModelScope UNet3D, 2×16 frames"]
    three_steps = (conf["tflop"] - 2 * (2 * sd + ms)) / ms100["tflop"]
    temporal_cfg1 = (conf["tflop"] - 5 * ms / 2) / ms100["tflop"]
    gpu = {"SD 1.5 UNet, 32 frames": "sd_batch32", "ModelScope UNet3D, 2×16 frames": "modelscope_2x16",
           "AnimateDiff UNetMotionModel, 2×16 frames": "animatediff_2x16"}
    call1_compile = b["confiner_4+5_modelscope"]["warmup_s"] + b["confiner_4+5_animatediff"]["warmup_s"]
    call3_compile = runs_file["best"]["long"]["best"]["runs"]["64"]["warmup_s"]
    return [
        "## What blocks the rest", "",
        f"**Ratio ≤ {TARGET_RATIO:.2f}.** The ratio is set by arithmetic, not by orchestration. ConFiner does "
        f"{conf['tflop']:.0f} TFLOP (4 control forwards at 16 frames, then per refinement step 2 SD forwards and "
        f"1 ModelScope forward at 32 frames, cfg 7.5, and one VAE decode); ModelScope-100 does {ms100['tflop']:.0f} "
        f"TFLOP (100 forwards at 32 frames). At equal efficiency the time ratio equals the FLOP ratio, "
        f"{flop_ratio:.3f}; measured it is {fig['eager_ratio_confiner_modelscope_to_modelscope_100']:.3f} eager and "
        f"{fig['best_ratio_confiner_modelscope_to_modelscope_100']:.3f} best, because ConFiner runs at about the "
        "baselines' TFLOP/s with under 1 % overhead. Any setting applied to both sides leaves it there. The "
        "paper's \"under 10 %\" is 9 steps against 100; counted in work, the coordinated step's three evaluations "
        f"and cfg make it {flop_ratio:.3f}. Reaching {TARGET_RATIO:.2f} needs "
        f"{100 * (1 - TARGET_RATIO / flop_ratio):.0f} % fewer ConFiner FLOPs, which changes the method: 3 "
        f"refinement steps instead of 5 would give {three_steps:.3f} in FLOPs, cfg 1.0 in the temporal "
        f"evaluations alone {temporal_cfg1:.3f}. Neither was done.", "",
        f"**{TARGET_S} s end to end.** At the best settings ConFiner takes {b['confiner_4+5_modelscope']['wall_s']:.3f} s "
        f"for {conf['tflop']:.0f} TFLOP, {b['confiner_4+5_modelscope']['achieved_tflops']:.0f} TFLOP/s; {TARGET_S} s "
        f"needs {conf['tflop'] / TARGET_S:.0f} TFLOP/s. The floor at this machine's bf16 matrix-product rate "
        f"({MATMUL_PEAK_TFLOPS} TFLOP/s) is {fig['confiner_floor_s_at_matmul_peak']:.2f} s. One forward reaches:", "",
        "| forward | TFLOP | eager GPU s | eager TFLOP/s | best GPU s | best TFLOP/s |", "|---|---|---|---|---|---|",
        *[f"| {k} | {v:.1f} | {probe['eager'][gpu[k]]['gpu_s']:.4f} | {v / probe['eager'][gpu[k]]['gpu_s']:.0f} "
          f"| {probe['best'][gpu[k]]['gpu_s']:.4f} | {v / probe['best'][gpu[k]]['gpu_s']:.0f} |" for k, v in tf.items()],
        "",
        "No per-kernel profile was taken, so where the remaining gap sits inside the UNets is not measured. "
        "Not tried, each for a stated reason: full-graph compilation and `max-autotune` (cold compiles of "
        f"minutes per UNet; the regional compile alone took {call1_compile:.0f} s of a 10-minute device call); fp8 "
        "or int8 weights (they change the numbers, so they are not a fair \"setting\"); CUDA graphs (the CPU issues "
        f"a forward's kernels in {100 * min(issue):.0f}–{100 * max(issue):.0f} % of its GPU time, so the GPU seldom "
        "waits for launches and graphs could remove little); fused QKV projections.", "",
        "## How it was run", "",
        "```",
        "python3 bench/gpu_benchmark.py --settings eager best --long 64 256 600 --long-settings best --deadline 550 --out $OUT",
        "python3 bench/gpu_benchmark.py --settings eager best --only long --long 64 256 600 --long-settings eager best --deadline 560 --out $OUT",
        "python3 bench/gpu_benchmark.py --settings best --only long --no-probe --long 64 256 600 --long-settings best --deadline 585 --out $OUT",
        "python bench/gpu_report.py   # this file and RESULTS.json from bench/gpu_results/",
        "```", "",
        "Call 1 produced both tables; its long runs past 64 frames were skipped at its deadline. Call 2 produced "
        "the eager long runs; its best long runs were skipped because the compile ran again on a fresh machine "
        "(about 270 s: see `h100_call2_log.txt`). Call 3, on the same still-warm machine, produced the best long "
        f"runs: with inductor's on-disk cache from call 2 its compile warm-up took {call3_compile:.0f} s. "
        "Torch's mega-cache (`torch.compiler.save_cache_artifacts`: 196 MB, 17 MB compressed) saved in call 1 and "
        "loaded in call 2 did not shorten the compile, so the benchmark no longer carries it. Each call had 10 "
        "minutes and the session 30 minutes of device time.", "",
    ]


def main():
    tables = load(TABLES)
    longs = {s: load(f) for s, f in LONG.items()}
    fig = figures(tables, longs)
    multigpu, multigpu_md = multigpu_figures()
    fig.update(multigpu)
    with open(os.path.join(HERE, "RESULTS.json"), "w") as f:
        json.dump(fig, f, indent=2)
    e, b = tables["tables"]["eager"], tables["tables"]["best"]
    er, br = e["runs"], b["runs"]
    speedup = {k: er[k]["wall_s"] / br[k]["wall_s"] for k, _ in RUNS}
    ratio = lambda t, c="confiner_modelscope", base="modelscope_100": t["ratios"][f"ratio_{c}_to_{base}"]  # noqa
    flop_ratio = e["ratios"]["flop_ratio_confiner_modelscope_to_modelscope_100"]
    md = [f"# GPU benchmark: ConFiner against the baselines ({tables['device_name']})", "",
          f"`bench/gpu_benchmark.py`, torch {tables['torch']}, diffusers {tables['diffusers']}, {tables['date']}. "
          "All models are full size with random weights in fp16 (weights do not change compute): SD 1.5 UNet "
          f"{tables['params_m']['sd']} M, AnimateDiff UNetMotionModel {tables['params_m']['control']} M (twice: the "
          "Lightning-style control expert and an AnimateDiff temporal expert), ModelScope UNet3D "
          f"{tables['params_m']['ms']} M, SD VAE {tables['params_m']['vae']} M, CLIP-L {tables['params_m']['clip_l']} M, "
          f"OpenCLIP-H text {tables['params_m']['clip_h']} M. 512×512×16, end to end: text encoding, sampling, VAE "
          "decode to uint8 frames on the host. ConFiner is 4 control steps (AnimateDiff, Euler trailing, cfg 1.0) + "
          "T_e = 100 + 5 coordinated steps (cfg 7.5): 19 expert evaluations, 19 network forwards (cfg batched). "
          "Baselines are DDIM at cfg 7.5 through the same core samplers and expert classes.", "",
          "**Both tables come from one process on one H100** (`h100_call1_tables.json`): the eager table first, then "
          "the best settings applied in place to every UNet and the VAE decoder, for ConFiner and baselines alike. "
          "Each figure is the median of 3 runs after one warm-up run, excluded (ConFiner: a full run; baselines: a "
          "2-step run of the same sampler at the same shapes, which is what compiles and autotunes); CUDA is "
          "synchronised around every run. \"Overhead\" is wall time outside the UNet, text-encoder and VAE-decoder "
          "calls (CUDA events around each call); in the staged runs it includes the weight uploads. TFLOP are counted per call on meta-device copies of the models "
          "(`torch.utils.flop_counter`); TFLOP/s is that over the wall time.", "",
          f"## Table 1: plain eager fp16 ({e['settings']}: SDPA attention, diffusers defaults)", ""]
    md += run_table(er)
    md += ["", f"## Table 2: best settings ({b['settings']}), applied to both sides", ""]
    md += run_table(br)
    md += ["", "Best settings: every 4-D weight in channels_last, `cudnn.benchmark`, and regional `torch.compile` "
           f"(inductor, default mode, static shapes): {b['applied']['compiled']} ResNet, transformer, temporal and "
           "resampling blocks compiled one by one, blocks of one class and shape sharing a graph across experts "
           "(`confiner_core.diffusers_backend.speed.FAST`). Cold compile: "
           f"{br['confiner_4+5_modelscope']['warmup_s']:.0f} s in the first ConFiner warm-up (SD, control, ModelScope "
           f"and VAE blocks) plus {br['confiner_4+5_animatediff']['warmup_s']:.0f} s for the AnimateDiff temporal "
           "expert's motion blocks; the baselines then reused those graphs.", "",
           "## Ratios", "",
           "| ratio | eager | best |", "|---|---|---|"]
    for c, cl in (("confiner_modelscope", "ConFiner (ModelScope temporal)"),
                  ("confiner_animatediff", "ConFiner (AnimateDiff temporal)")):
        for base, bl in (("modelscope_100", "ModelScope-100"), ("modelscope_50", "ModelScope-50"),
                         ("animatediff_25", "AnimateDiff-25")):
            md.append(f"| {cl} / {bl} | {ratio(e, c, base):.3f} | {ratio(b, c, base):.3f} |")
    md += ["", f"FLOP ratio ConFiner / ModelScope-100: {flop_ratio:.3f} "
           f"({er['confiner_4+5_modelscope']['tflop']:.0f} vs {er['modelscope_100']['tflop']:.0f} TFLOP); with the "
           f"AnimateDiff temporal expert {e['ratios']['flop_ratio_confiner_animatediff_to_modelscope_100']:.3f}.", "",
           "| run | eager s | best s | speed-up |", "|---|---|---|---|"]
    md += [f"| {label} | {er[k]['wall_s']:.3f} | {br[k]['wall_s']:.3f} | {speedup[k]:.2f}× |" for k, label in RUNS]
    md += ["",
           "## CPU issue time against GPU time of one forward (batch 32 frames)", "",
           "| forward | eager CPU issue s | eager GPU s | best CPU issue s | best GPU s |", "|---|---|---|---|---|"]
    for k in e["launch_probe"]:
        pe, pb = e["launch_probe"][k], b["launch_probe"][k]
        md.append(f"| {k} | {pe['cpu_issue_s']:.4f} | {pe['gpu_s']:.4f} | {pb['cpu_issue_s']:.4f} | {pb['gpu_s']:.4f} |")
    md += ["", "## ConFiner-Long at 512×512 (segment 16, all three strategies, all experts resident)", "",
           "| frames | eager s | eager peak GPU GiB | best s | best peak GPU GiB | expert evaluations |",
           "|---|---|---|---|---|---|"]
    le, lb = longs["eager"]["long"]["eager"]["runs"], longs["best"]["long"]["best"]["runs"]
    for frames in le:
        md.append(f"| {frames} | {le[frames]['wall_s']:.2f} | {le[frames]['peak_gpu_gib']:.2f} "
                  f"| {lb[frames]['wall_s']:.2f} | {lb[frames]['peak_gpu_gib']:.2f} "
                  f"| {sum(le[frames]['evaluations'].values())} |")
    md += ["", "Eager from `h100_call2_long_eager.json`, best from `h100_call3_long_best.json` (each one process, "
           "warmed by one 16-frame ConFiner run). Windows are decoded as soon as they are final and only two "
           "structures are held, so peak memory does not grow with length.", ""]
    conf_e, conf_b = er["confiner_4+5_modelscope"], br["confiner_4+5_modelscope"]
    staged_e, staged_b = er["confiner_4+5_modelscope_staged"], br["confiner_4+5_modelscope_staged"]
    long_flat = all(abs(v["peak_gpu_gib"] - le["64"]["peak_gpu_gib"]) < 0.01 for v in le.values()) and \
        all(abs(v["peak_gpu_gib"] - lb["64"]["peak_gpu_gib"]) < 0.01 for v in lb.values())
    yes = lambda ok: "**yes**" if ok else "no"  # noqa: E731
    md += ["## Targets", "", "| target | measured | met |", "|---|---|---|",
           f"| ratio to ModelScope-100 ≤ {TARGET_RATIO:.2f}, both tables | {ratio(e):.3f} eager, {ratio(b):.3f} best "
           f"(AnimateDiff temporal: {ratio(e, 'confiner_animatediff'):.3f} / {ratio(b, 'confiner_animatediff'):.3f}) "
           f"| {yes(max(ratio(e), ratio(b)) <= TARGET_RATIO)} |",
           f"| ConFiner end to end ≤ {TARGET_S} s, best settings | {conf_b['wall_s']:.3f} s "
           f"(AnimateDiff temporal {br['confiner_4+5_animatediff']['wall_s']:.3f} s) | {yes(conf_b['wall_s'] <= TARGET_S)} |",
           f"| orchestration overhead ≤ {100 * TARGET_OVERHEAD:.0f} % | {100 * conf_e['overhead_fraction']:.1f} % eager, "
           f"{100 * conf_b['overhead_fraction']:.1f} % best | "
           f"{yes(max(conf_e['overhead_fraction'], conf_b['overhead_fraction']) <= TARGET_OVERHEAD)} |",
           f"| peak GPU memory ≤ {TARGET_GB:.0f} GB at 512×512×16, only experts in use resident | "
           f"{staged_e['peak_gpu_gib']:.2f} GiB eager, {staged_b['peak_gpu_gib']:.2f} GiB best (staged) | "
           f"{yes(max(staged_e['peak_gpu_gib'], staged_b['peak_gpu_gib']) * 2**30 / 1e9 <= TARGET_GB)} |",
           f"| ConFiner-Long peak memory flat 64 → 600 frames | {le['64']['peak_gpu_gib']:.2f} GiB eager, "
           f"{lb['64']['peak_gpu_gib']:.2f} GiB best, at 64, 256 and 600 | {yes(long_flat)} |", ""]
    md += multigpu_md
    md += blockers(tables, fig, longs)
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
