"""``python -m confiner_core generate ...``: the command line over :func:`confiner_core.generate.generate`."""

from __future__ import annotations

import argparse
import sys

from .chain import MODES, REFINE_SPACINGS, STRUCTURE_NOISES, ChainConfig
from .long import COHERENCE_MEMORIES
from .refine import TIMESTEP_MATCHING
from .timesteps import SPACINGS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m confiner_core", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a video (embedded default unless checkpoints are given)")
    g.add_argument("--prompt", default="", help="text prompt (embedded default: 'a red ball bouncing over green grass'); "
                   "prompt travel: 'a red ball | 64: a blue ball'")
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--frames", type=int, default=16)
    g.add_argument("--height", type=int, default=256)
    g.add_argument("--width", type=int, default=256)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="out", help="output directory (video.mp4, frames.png, report.json)")
    g.add_argument("--control", help="control expert: AnimateDiff(-Lightning) pipeline dir or motion module .safetensors")
    g.add_argument("--spatial", help="spatial expert: SD 1.5 diffusers dir or single-file .safetensors")
    g.add_argument("--temporal", help="temporal expert: ModelScope/AnimateDiff pipeline dir or motion module")
    g.add_argument("--base", help="SD 1.5 diffusers dir that motion modules and single files are built on")
    g.add_argument("--mode", choices=MODES, default="coordinated")
    g.add_argument("--matching", choices=TIMESTEP_MATCHING, default="same_index",
                   help="temporal re-noising timestep: the paper's same index, or matched noise level")
    g.add_argument("--te", type=int, default=100, help="structure noising timestep T_e (with 4 control steps the "
                   "paper's Table 3 finds T_e >= 300 collapses image quality)")
    g.add_argument("--structure-noise", choices=STRUCTURE_NOISES, default="spatial",
                   help="schedule that noises the structure to T_e: the spatial expert's (Eq. 6, default) or the "
                        "control expert's (Algorithm 1, line 4)")
    g.add_argument("--control-steps", type=int, default=4)
    g.add_argument("--refine-steps", type=int, default=5)
    g.add_argument("--refine-spacing", choices=REFINE_SPACINGS, default="uniform",
                   help="refinement timesteps: the paper's uniform intervals from T_e (100, 80, 60, 40, 20) or a "
                        "diffusers spacing over [0, T_e]")
    g.add_argument("--control-sampler", choices=("euler", "ddim"), default="euler",
                   help="euler for distilled few-step control experts (AnimateDiff-Lightning), ddim (the paper's) "
                        "for undistilled ones")
    g.add_argument("--control-spacing", choices=SPACINGS, default="trailing",
                   help="control timesteps as diffusers' schedulers lay them out; flow experts: 'linspace' is "
                        "FlowMatchEulerDiscreteScheduler, 'trailing' ComfyUI's 'simple'")
    g.add_argument("--control-eta", type=float, default=0.0, help="DDIM eta in the control stage (ddim only)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM eta in refinement")
    g.add_argument("--control-cfg", type=float, default=1.0)
    g.add_argument("--cfg", type=float, default=None, help="refinement guidance (default 7.5; 1.0 for the embedded default)")
    g.add_argument("--segment-length", type=int, default=16,
                   help="ConFiner-Long segment length L; longer videos are made of staggered segments")
    g.add_argument("--noise-init", choices=("shuffle", "freenoise", "independent"), default="shuffle",
                   help="long videos: consistency initialization (frame-shuffled base noise), FreeNoise, or none")
    g.add_argument("--freenoise-window", type=int, default=16)
    g.add_argument("--freenoise-stride", type=int, default=4)
    g.add_argument("--gamma", type=float, default=0.1, help="coherence guidance strength (Eq. 12); 0 = off")
    g.add_argument("--coherence-memory", choices=COHERENCE_MEMORIES, default="guided",
                   help="pull towards the previous segment's guided prediction (Eq. 12 as printed) or its raw one")
    g.add_argument("--no-stagger", action="store_true", help="refine each segment alone (ablation)")
    g.add_argument("--fps", type=float, default=8.0)
    g.add_argument("--device", default="cpu")
    g.add_argument("--speed", choices=("eager", "fast"), default="eager",
                   help="checkpoints: 'fast' adds channels_last, cuDNN autotuning and regional torch.compile "
                        "(minutes of compiling on first use, then ~1.5x faster on an H100)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    e = sub.add_parser("evaluate", help="offline quality metrics of a video file or a directory of frames")
    e.add_argument("video", help="an mp4 (or any video OpenCV/imageio reads) or a directory of PNG/JPG frames")
    e.add_argument("--junctions", type=int, nargs="*", default=None,
                   help="frame indices where segments meet, for the seam score (e.g. 16 32 48)")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def evaluate_command(a: argparse.Namespace) -> int:
    import json
    import math

    from . import metrics

    scores = metrics.evaluate(metrics.read_video(a.video), junctions=a.junctions)
    if a.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in scores.items()},
                         indent=2))
    else:
        for k, v in scores.items():
            print(f"{k:>22}  {v:.4f}")
    return 0


def request_from_args(a: argparse.Namespace):
    from .generate import GenerateRequest
    from .long import LongConfig

    chain = ChainConfig(control_steps=a.control_steps, control_sampler=a.control_sampler,
                        control_spacing=a.control_spacing, control_eta=a.control_eta, te=a.te,
                        refine_steps=a.refine_steps, refine_spacing=a.refine_spacing, mode=a.mode,
                        matching=a.matching, eta=a.eta, structure_noise=a.structure_noise)
    return GenerateRequest(prompt=a.prompt, negative_prompt=a.negative_prompt, frames=a.frames, height=a.height,
                           width=a.width, seed=a.seed, out=a.out, control=a.control, spatial=a.spatial,
                           temporal=a.temporal, base=a.base, control_cfg=a.control_cfg, refine_cfg=a.cfg, fps=a.fps,
                           device=a.device, speed=a.speed, chain=chain,
                           long=LongConfig(segment_length=a.segment_length, noise_init=a.noise_init,
                                           freenoise_window=a.freenoise_window, freenoise_stride=a.freenoise_stride,
                                           gamma=a.gamma, staggered=not a.no_stagger,
                                           coherence_memory=a.coherence_memory))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        try:
            return evaluate_command(args)
        except (ValueError, FileNotFoundError) as e:
            parser.exit(2, f"error: {e}\n")
    from .generate import generate

    try:
        req = request_from_args(args)
        report = generate(req, show_progress=not args.quiet)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"error: {e}\n")
    s = report["seconds"]
    print(f"wrote {args.out}/video.mp4, frames.png, report.json  "
          f"({report['frames']} frames, {report['total_expert_evaluations']} expert evaluations, {s['total']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
