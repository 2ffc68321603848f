"""The paper's ablations on the embedded default, measured with confiner_core.metrics; writes bench/QUALITY.md.

* Table 5 pattern: refinement mode (coordinated / spatial only / temporal only / naive alternation), 4+5 steps.
* Table 3 pattern: T_e sweep 50..500 with 4 and 8 control steps (coordinated).
* ConFiner-Long: each strategy switched off in turn (64 frames, segment 16).
Every cell is mean +- std over prompts x seeds. The embedded world has ground truth, so each row also gives the
RMSE to the nearest true clip. Usage: python bench/quality_ablation.py [--seeds 0 1 2] [--quick]
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from confiner_core import metrics  # noqa: E402
from confiner_core.chain import ChainConfig, run_chain  # noqa: E402
from confiner_core.embedded.experts import decode, embedded_experts, world_for  # noqa: E402
from confiner_core.long import LongConfig, generate_long, plan_segments  # noqa: E402

PROMPTS = ["a red ball bouncing over green grass", "a blue square sliding over snow",
           "a yellow diamond circling in the night sky"]
SHORT_KEYS = ("subject_consistency", "motion_smoothness", "temporal_flicker", "sharpness", "distance_to_nearest")
LONG_KEYS = ("seam_score", "subject_consistency", "motion_smoothness", "color_drift", "sharpness")
SIZE = 32  # latent grid
SCALE = 4  # decoded frames are 128x128: metrics (optical flow) cost 4x less than at 256x256


def bound(prompt):
    return {k: e.bind(prompt) for k, e in embedded_experts().items()}


def short_run(prompt, seed, config, frames=16):
    d = bound(prompt)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 4, frames, SIZE, SIZE, generator=g)
    out = run_chain(d["control"], d["spatial"], d["temporal"], noise, config, g)
    video = decode(out.latent, SCALE)[0].numpy()
    refs = decode(world_for(prompt, SIZE, SIZE).true_clips(frames), SCALE).numpy()
    return {k: v for k, v in metrics.evaluate(video, references=refs).items() if k in SHORT_KEYS}


def long_run(prompt, seed, long, frames=64):
    d = bound(prompt)
    plan = plan_segments(frames, long.segment_length, long.staggered)
    chunks = []
    generate_long(d["control"], d["spatial"], d["temporal"], plan, (1, 4, SIZE, SIZE), ChainConfig(), long,
                  torch.Generator().manual_seed(seed), lambda x, w: chunks.append(decode(x, SCALE)[0, :plan.window_frames(w)].numpy()))
    video = np.concatenate(chunks)
    scores = metrics.evaluate(video, junctions=plan.junctions)
    return {k: v for k, v in scores.items() if k in LONG_KEYS}


def aggregate(rows):
    return {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))) for k in rows[0]}


def table(title, label, cells, keys, note=""):
    head = f"| {label} | " + " | ".join(keys) + " |"
    lines = [f"### {title}", "", note, "", head, "|" + "---|" * (len(keys) + 1)]
    for name, agg in cells.items():
        lines.append(f"| {name} | " + " | ".join(f"{agg[k][0]:.4f} ± {agg[k][1]:.4f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="one prompt, fewer T_e values (a smoke run)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "QUALITY.md"))
    a = ap.parse_args()
    prompts = PROMPTS[:1] if a.quick else PROMPTS
    samples = [(p, s) for p in prompts for s in a.seeds]
    t0 = time.time()
    results = {"seeds": a.seeds, "prompts": prompts}

    modes = {"coordinated": "coordinated", "spatial only (standard)": "standard", "temporal only": "temporal",
             "naive alternation (Eq. 7)": "alternate"}
    t5 = {name: aggregate([short_run(p, s, ChainConfig(mode=m)) for p, s in samples]) for name, m in modes.items()}
    results["table5"] = t5

    tes = [50, 100, 300, 500] if a.quick else [50, 100, 200, 300, 400, 500]
    t3 = {f"{n} control steps, T_e={te}": aggregate([short_run(p, s, ChainConfig(control_steps=n, te=te))
                                                     for p, s in samples])
          for n in (4, 8) for te in tes}
    results["table3"] = t3

    longs = {"all three strategies": LongConfig(),
             "no consistency init (independent noise)": LongConfig(noise_init="independent"),
             "no coherence guidance (gamma=0)": LongConfig(gamma=0.0),
             "no staggered refinement": LongConfig(staggered=False),
             "none of the three": LongConfig(noise_init="independent", gamma=0.0, staggered=False),
             "FreeNoise init instead of shuffle": LongConfig(noise_init="freenoise")}
    tl = {name: aggregate([long_run(p, s, cfg) for p, s in samples]) for name, cfg in longs.items()}
    results["long"] = tl
    results["seconds"] = round(time.time() - t0, 1)

    n = len(samples)
    doc = [
        "# Quality on the embedded default (offline metrics)",
        "",
        f"Generated by `python bench/quality_ablation.py --seeds {' '.join(map(str, a.seeds))}` in "
        f"{results['seconds']} s on CPU; every cell is mean ± std over {n} runs ({len(prompts)} prompts × "
        f"{len(a.seeds)} seeds), 16 frames, 32×32 latents decoded to 128×128, unless noted. Metrics are defined in `confiner_core/metrics.py` "
        "and the README: subject consistency, motion smoothness and temporal flicker (higher is better), sharpness "
        "(Laplacian variance, higher is sharper), distance_to_nearest (RMSE in 0–255 units to the closest ground-truth "
        "clip of the world, lower is better), seam score (1.0 = invisible seams), colour drift (ΔE, lower is better).",
        "",
        table("Refinement mode (the pattern of the paper's Table 5)", "mode", t5, SHORT_KEYS,
              "4 control steps, T_e = 100, 5 refinement steps."),
        table("T_e sweep (the pattern of the paper's Table 3)", "setting", t3, SHORT_KEYS,
              "Coordinated refinement, 5 steps."),
        table("ConFiner-Long ablation", "setting", tl, LONG_KEYS,
              "64 frames, segment length 16, coordinated 4+5, seam score over all window and structure junctions."),
    ]
    with open(a.out, "w") as f:
        f.write("\n".join(doc))
    with open(os.path.splitext(a.out)[0].replace("QUALITY", "quality_results") + ".json", "w") as f:
        json.dump(results, f, indent=2)
    print("\n".join(doc))


if __name__ == "__main__":
    main()
