"""``python -m confiner_core generate ...`` makes a video (:func:`confiner_core.generate.generate`);
``python -m confiner_core evaluate VIDEO`` scores one (:mod:`confiner_core.metrics`).

Exit codes: 0 done; 2 a usage error (one line naming the option and what it accepts; nothing written);
1 a failure while running (one line; no output replaced); 130 interrupted (Ctrl-C; no output replaced); 143 stopped
by SIGTERM (timeout, kill, a batch scheduler, torchrun; no output replaced). After 1, 130 or 143 a ConFiner-Long run
keeps its finished windows for --resume.
``--debug`` or ``CONFINER_DEBUG=1`` adds the full traceback, for bug reports.
"""

from __future__ import annotations

import argparse
import difflib
import re
import os
import signal
import sys
import traceback
import warnings

from . import __version__
from .chain import MATCHINGS, MODES, REFINE_SPACINGS, STRUCTURE_NOISES, ChainConfig
from .embedded.experts import PRESET_HELP as EMBEDDED_PRESETS
from .errors import Interrupted, OutputError, RankFailed, UsageError, meant_choice, one_line, sigterm_as_interrupt
from .latent_spaces import IMAGE_MODES, LATENT_FRAMES
from .long import COHERENCE_MEMORIES, LongConfig
from .timesteps import SPACINGS

DEBUG_ENV = "CONFINER_DEBUG"
PROMPT_HELP = ("text prompt (embedded default: 'a red ball bouncing over green grass'), or a prompt schedule with a "
               "start key on every entry, in frames or seconds at --fps, inside the video: '0: a red ball | 64: a blue "
               "ball' or '0: a red ball | 2.5s: a blue ball' (with --frames 128); text not starting with a key is one "
               "plain prompt")
# runnable as written, on the embedded default (tests/test_embedded_cli.py runs them)
GENERATE_EXAMPLES = """examples (the embedded default: no downloads):
  python -m confiner_core generate --out out
  python -m confiner_core generate --frames 128 --prompt '0: a red ball bouncing over green grass | 64: a blue ball bouncing over snow' --out long
  python -m confiner_core evaluate long

With checkpoints, name one per role (README, 'Real checkpoints'):
  python -m confiner_core generate --control PIPELINE --spatial PIPELINE --temporal PIPELINE --prompt 'a corgi runs' --device cuda"""


class DefaultsFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the help already names it (or there is none to name);
    the examples after the options keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS)
        if nothing or "default" in text or not action.option_strings:   # (0 and 0.0 are defaults worth naming)
            return text
        return f"{text} (default {action.default})" if text else f"default {action.default}"


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the option and what it accepts), exit code 2, and no abbreviated
    options (``--fram 3`` ran 3 frames: an option added later with that prefix would change old command lines)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.argv: list = []

    def parse_known_args(self, args=None, namespace=None):
        self.argv = list(sys.argv[1:] if args is None else args)   # the command, for :meth:`suggestion`
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and os.environ.get("RANK", "0") != "0":
            self.exit(2)   # under torchrun every process parses the same arguments: rank 0 says what is wrong
        # worded as every other refusal ("error: --seed: ..."): argparse's own were "python -m confiner_core
        # generate: error: argument --seed: ..."
        self.exit(2, f"error: {message.removeprefix('argument ')}{self.suggestion(message)} (see --help)\n")

    def suggestion(self, message: str) -> str:
        """For options it does not know, the ones likely meant: ``--refine_steps`` is ``--refine-steps``, ``--seeds``
        ``--seed``, diffusers' ``--num-inference-steps`` ``--refine-steps``, and a word of options is each option of
        it (``--steps``: ``--control-steps`` or ``--refine-steps``); argparse said only "unrecognized arguments". For a
        value not among an option's choices, the choice likely meant (``--mode coordinate``: 'coordinated')."""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:   # (Python 3.12.8+ lists the choices without quotes)
            choices = [c.strip().strip("'") for c in choice.group(2).split(",")]
            meant = meant_choice(choice.group(1), choices)
            return f": did you mean '{meant}'?" if meant else ""
        if not message.startswith("unrecognized arguments: "):
            return ""
        commands = {name: p for a in self._actions if isinstance(a, argparse._SubParsersAction)
                    for name, p in a.choices.items()}
        command = next((word for word in self.argv if word in commands), None)
        options = lambda p: sorted(o for o in p._option_string_actions if o.startswith("--"))  # noqa: E731
        known = options(commands[command]) if command else []
        meant, elsewhere = {}, []
        for word in message.split(": ", 1)[1].split():
            name = word.split("=", 1)[0]
            if not name.startswith("--"):
                continue
            guesses = likely_options(name, known)
            if guesses:
                meant[name] = " or ".join(guesses)
            else:   # an option of another command ("generate --junctions")
                dashed = name.replace("_", "-")
                elsewhere += [f"{dashed} is an option of {other}" for other, p in commands.items()
                              if other != command and dashed in options(p)][:1]
        said = [] if not meant else [f"did you mean {next(iter(meant.values()))}?"] if len(meant) == 1 else \
            [f"did you mean {', '.join(f'{guess} for {name}' for name, guess in meant.items())}?"]
        return "".join(f": {part}" for part in said + elsewhere)


def likely_options(name: str, known: list[str]) -> list[str]:
    """The options of ``known`` likely meant by the unknown ``name``: its dashed spelling or a close one
    (``--refine_steps``, ``--seeds``), the option of a diffusers pipeline's argument (``--num-frames``, ``--strength``),
    else every option that has its words (``--steps``: ``--control-steps``, ``--refine-steps``), else the longest
    options among its words (``--cfg-scale``: ``--cfg``)."""
    from .generate import DIFFUSERS_NAMES, OPTION_OF

    dashed = name.replace("_", "-")
    guess = dashed if dashed in known else next(iter(difflib.get_close_matches(dashed, known, n=1, cutoff=0.8)), None)
    guess = guess or OPTION_OF.get(DIFFUSERS_NAMES.get(dashed[2:].replace("-", "_"), ""))
    if guess in known:
        return [guess]
    words, parts = dashed[2:].split("-"), {option: option[2:].split("-") for option in known}
    found = [option for option, its in parts.items() if contains(its, words)]
    if found:
        return found
    inside = [option for option, its in parts.items() if contains(words, its)]   # --cfg-scale: --cfg
    most = max((len(parts[option]) for option in inside), default=0)
    return [option for option in inside if len(parts[option]) == most]


def contains(words: list[str], run: list[str]) -> bool:
    """Whether ``run`` stands in ``words`` as consecutive words."""
    return any(words[i:i + len(run)] == run for i in range(len(words)))


def number(option: str):
    """An argparse type that parses the option's number and names what it accepts when it cannot."""
    from .generate import NUMBER_BY_OPTION

    spec = NUMBER_BY_OPTION[option]

    def parse(text: str):
        try:
            return spec.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {spec.accepted()}, got {text!r}") from None
    parse.__name__ = spec.kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    from .generate import CONTROL_SAMPLERS, DTYPES, SPEEDS
    from .long import NOISE_INITS

    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error (also: {DEBUG_ENV}=1)")
    description = re.sub(r":\w+:`~?([^`]+)`", r"\1", __doc__).replace("``", "")   # the docstring less its markup
    p = Parser(prog="python -m confiner_core", description=description,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"confiner_core {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", parents=[common], formatter_class=DefaultsFormatter, epilog=GENERATE_EXAMPLES,
                       help="generate a video (embedded default unless checkpoints are given)")
    g.add_argument("--prompt", default="", help=PROMPT_HELP)
    g.add_argument("--negative-prompt", default="", help="what cfg steers away from, in every expert that uses cfg "
                   "(none by default)")
    g.add_argument("--frames", type=number("--frames"), default=None,
                   help="frames of the video (default: the experts' clip, 16; 17 for causal 4k+1 latents)")
    g.add_argument("--height", type=number("--height"), default=256,
                   help="pixels, at least 64, a multiple of 8 (16 for Wan 2.1 and 2.2 A14B, Qwen-Image, FLUX.1; 32 "
                        "for Wan 2.2 TI2V-5B; default 256)")
    g.add_argument("--width", type=number("--width"), default=256, help="pixels, as --height (default 256)")
    g.add_argument("--seed", type=number("--seed"), default=0, help="0 .. 2**64-1 (ComfyUI's range; default 0)")
    g.add_argument("--out", default="out", help="output directory (video.mp4, frames.png, report.json); outputs "
                   "are replaced only when a run completes")
    g.add_argument("--control", help="control expert (text-to-video), a local diffusers folder or .safetensors: "
                   "AnimateDiff(-Lightning) pipeline, MotionAdapter or motion module (on the SD 1.5 base), ModelScope "
                   "T2V, Wan 2.1 / 2.2 (README, 'Real checkpoints', lists every kind)")
    g.add_argument("--spatial", help="spatial expert (text-to-image): SD 1.5 or SDXL diffusers folder or single-file "
                   ".safetensors (a single file with --base), Qwen-Image, FLUX.1-dev / schnell (bridged through "
                   "the VAEs; --cfg is dev's distilled guidance), or Wan 2.1 / 2.2 as an image model; left out with "
                   "--mode temporal")
    g.add_argument("--temporal", help="temporal expert (text-to-video): any kind --control takes; left out with "
                   "--mode standard")
    g.add_argument("--base", help="local diffusers pipeline folder that supplies configs, tokenizer and scheduler to "
                   "motion modules and single files: SD 1.5, or SDXL for an SDXL single file")
    g.add_argument("--image-mode", choices=IMAGE_MODES, default=LATENT_FRAMES,
                   help="a Wan or Qwen-Image --spatial (an image model on Wan's video latents) refines every latent "
                        "frame as an image (latent_frames: fast; a latent frame after the first packs 4 video frames) "
                        "or every video frame encoded alone (pixel_frames: 2 VAE passes per step, keeps the motion "
                        "inside each 4 frames)")
    g.add_argument("--embedded", choices=list(EMBEDDED_PRESETS), default="sd",
                   help="without checkpoints: which weight-free embedded experts -- " +
                        "; ".join(f"{k}: {v}" for k, v in EMBEDDED_PRESETS.items()))
    g.add_argument("--mode", choices=MODES, default="coordinated",
                   help="refinement: coordinated (Algorithm 1: spatial, temporal, spatial each step), standard (the "
                        "spatial expert alone, Eq. 8; no --temporal), temporal (the temporal expert alone; no "
                        "--spatial) or alternate (the experts in turn on the spatial schedule, Eq. 7, an ablation)")
    g.add_argument("--matching", choices=MATCHINGS, default="auto",
                   help="temporal re-noising timestep: the paper's same index, or matched noise level (nearest, "
                        "continuous); auto (default): same_index, unless the spatial and temporal experts are a flow "
                        "and a VP one (SD 1.5 and Wan) or put T_e at noise levels more than 1.5x apart, then nearest")
    g.add_argument("--te", type=number("--te"), default=None,
                   help="structure noising timestep T_e, in the refining expert's own timesteps (default 100, the "
                        "paper's; 250 for flow experts such as Wan and Qwen-Image, whose timestep is 1000 sigma: the "
                        "same noise level). With 4 control steps the paper's Table 3 finds T_e >= 300 collapses image "
                        "quality")
    g.add_argument("--structure-noise", choices=STRUCTURE_NOISES, default="spatial",
                   help="schedule that noises the structure to T_e: spatial, the refining expert's (Eq. 6, default: "
                        "the spatial expert's, the temporal expert's with --mode temporal) or control, the control "
                        "expert's (Algorithm 1, line 4)")
    g.add_argument("--control-steps", type=number("--control-steps"), default=4,
                   help="control expert steps (default 4, the paper's)")
    g.add_argument("--refine-steps", type=number("--refine-steps"), default=5,
                   help="refinement steps from T_e (default 5, the paper's)")
    g.add_argument("--refine-spacing", choices=REFINE_SPACINGS, default="uniform",
                   help="refinement timesteps: the paper's uniform intervals from T_e (100, 80, 60, 40, 20) or a "
                        "diffusers spacing over [0, T_e]")
    g.add_argument("--control-sampler", choices=CONTROL_SAMPLERS, default="euler",
                   help="euler for distilled few-step control experts (AnimateDiff-Lightning), ddim (the paper's) "
                        "for undistilled ones, dpmpp_2m (DPM-Solver++ 2M) or unipc (UniPC, Wan's own), second "
                        "order, for undistilled ones in few steps (Wan, AnimateDiff v3)")
    g.add_argument("--control-spacing", choices=SPACINGS, default="trailing",
                   help="control timesteps as diffusers' schedulers lay them out; flow experts: 'linspace' is "
                        "FlowMatchEulerDiscreteScheduler (dpmpp_2m: DPMSolverMultistepScheduler's flow sigmas), "
                        "'trailing' diffusers' trailing (ComfyUI's 'simple' when the steps divide 1000)")
    g.add_argument("--control-eta", type=number("--control-eta"), default=0.0,
                   help="DDIM eta in the control stage, --control-sampler ddim only")
    g.add_argument("--eta", type=number("--eta"), default=0.0, help="DDIM eta in refinement")
    g.add_argument("--control-cfg", type=number("--control-cfg"), default=1.0,
                   help="control-stage guidance (1.0: none, as distilled few-step experts want)")
    g.add_argument("--cfg", type=number("--cfg"), default=None,
                   help="refinement guidance for the spatial and temporal experts (default: each its own: SD 1.5, "
                        "AnimateDiff and ModelScope 7.5, SDXL and Wan 5, Qwen-Image 4, FLUX.1-dev 3.5 as its distilled "
                        "guidance, schnell and the embedded default 1)")
    g.add_argument("--spatial-cfg", type=number("--spatial-cfg"), default=None,
                   help="the spatial expert's guidance alone, over --cfg (FLUX.1-dev: its distilled guidance)")
    g.add_argument("--temporal-cfg", type=number("--temporal-cfg"), default=None,
                   help="the temporal expert's guidance alone, over --cfg")
    g.add_argument("--segment-length", type=number("--segment-length"), default=None,
                   help="ConFiner-Long segment length L in frames (default: the experts' clip, 16; 17 for causal "
                        "4k+1 latents); longer videos are made of staggered segments")
    g.add_argument("--noise-init", choices=NOISE_INITS, default="shuffle",
                   help="long videos: consistency initialization (frame-shuffled base noise), FreeNoise, or none")
    g.add_argument("--freenoise-window", type=number("--freenoise-window"), default=None,
                   help="--noise-init freenoise: latent frames of the noise window that is rescheduled (default: one "
                        "segment's, 16 for SD's 16-frame segments; a Wan latent frame holds 4 video frames)")
    g.add_argument("--freenoise-stride", type=number("--freenoise-stride"), default=None,
                   help="--noise-init freenoise: latent frames between shuffled noise windows (default: a quarter of "
                        "the window)")
    g.add_argument("--gamma", type=number("--gamma"), default=0.1,
                   help="coherence guidance strength γ (Eq. 12; the paper gives no value: 0.1 is ours); 0 = off")
    g.add_argument("--coherence-memory", choices=COHERENCE_MEMORIES, default=LongConfig.coherence_memory,
                   help="unguided (default): pull towards the previous segment's own noise prediction (Section 3.5's "
                        "predicted noise, eps-hat); guided: towards the guided prediction it stepped with")
    g.add_argument("--no-stagger", action="store_true", help="refine each segment alone (ablation)")
    g.add_argument("--color-anchor", action="store_true",
                   help="long videos, opt-in: anchor each window's latent colour statistics to its predecessor's in "
                        "the staggered overlap (against colour drift across windows; see report metrics "
                        "window_color_drift)")
    g.add_argument("--fps", type=number("--fps"), default=None, help="frames per second of video.mp4 and of "
                   "seconds keys in --prompt (default: the video experts' own: 16 for Wan 2.1 and 2.2 A14B, 24 for "
                   "Wan 2.2 TI2V-5B, 8 for AnimateDiff, ModelScope and the embedded experts)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or xpu")
    g.add_argument("--speed", choices=SPEEDS, default="eager",
                   help="checkpoints: 'lean' = channels_last, fused GroupNorm+SiLU, GEGLU and QKV, the fastest "
                        "attention (flash-attn-4 for long self-attention where installed, else cuDNN; a Triton "
                        "kernel over frames) and cuDNN autotuning (no compiler, starts in seconds); 'fast' = lean + "
                        "regional torch.compile, without autotuning (minutes of compiling on first use); 'max' = "
                        "fast + CUDA graphs")
    g.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="checkpoints: the dtype their weights load and compute in (default auto: float16 on a GPU, "
                        "float32 on the CPU); bfloat16 where float16 overflows (a run stopped by NaN says so)")
    g.add_argument("--compile-dir", default=None,
                   help="with --speed fast or max: keep the compiled blocks (and inductor's kernel cache, in "
                        "DIR/inductor) in this folder; a later run with the same checkpoints and sizes loads them "
                        "instead of compiling (an H200 started in 15-18 s instead of about 100 s)")
    g.add_argument("--resume", action="store_true",
                   help="ConFiner-Long: continue the interrupted run in --out from its last finished window "
                        "(same settings; the result is byte-identical to an uninterrupted run at the same CPU "
                        "thread count)")
    g.add_argument("--save-frames", action="store_true",
                   help="also write frames.npy: every frame as uint8 [frames, height, width, 3], lossless "
                        "(numpy.load reads it; video.mp4's codec moves pixels by tens of grey levels), for comparing "
                        "runs; evaluate reads it in place of video.mp4")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    e = sub.add_parser("evaluate", parents=[common], help="offline quality metrics of a video file or a directory of frames")
    e.add_argument("video", help="an mp4 (or any video OpenCV/imageio reads), a directory of PNG/JPG frames, or a "
                                 "generate output folder (its lossless frames.npy where --save-frames wrote one, "
                                 "else its video.mp4)")
    e.add_argument("--junctions", type=int, nargs="*", default=None,
                   help="frame indices where segments meet, for the seam score (e.g. 16 32 48; any order, a repeat "
                        "counts once); by default a ConFiner-Long output folder's own, from its report.json (with a "
                        "seam score per kind, the prompt changes of a travelling prompt apart); junctions given "
                        "here are scored as one kind; --junctions alone: none, and no seam score")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def evaluate_command(a: argparse.Namespace) -> int:
    import json

    from . import metrics

    # FFmpeg's own lines ("moov atom not found") came before the one-line error; read when OpenCV opens its first video
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    video, report = a.video, None
    if os.path.isdir(video) and os.path.isfile(os.path.join(video, "video.mp4")):
        # a generate output folder: its lossless frames where its run saved them, else its video (not its contact
        # sheet); a frames.npy its report does not name is an earlier run's
        report = read_report(video) or {}
        video = os.path.join(video, "frames.npy" if report.get("settings", {}).get("save_frames") else "video.mp4")
    try:
        folder = os.path.dirname(os.path.abspath(video))
        if os.path.basename(video) == "frames.png" and any(os.path.isfile(os.path.join(folder, name))
                                                           for name in ("video.mp4", "report.json")):
            raise ValueError(f"{video!r} is a generate output's contact sheet, one image of a few frames side by side: "
                             f"pass its folder or its video.mp4")
        frames = metrics.read_video(video)
        own = plan_of(report if report is not None else read_report(folder) or {})   # a long run's junctions
        if own is not None and own.get("frames") != len(frames):   # another video beside that run's report
            own = None
        plan = own if a.junctions is None else None
        if plan is not None:   # a long run's own metrics, as generate scores them: each kind of junction, where a
            # travelling prompt changes apart, and the windows' colour drift
            stats = metrics.StreamingMetrics()
            stats.add(frames)
            scores = stats.summary(plan["window_junctions"], plan["structure_junctions"],
                                   plan.get("prompt_change_junctions", []))
        else:
            try:
                scores = metrics.evaluate(frames, junctions=a.junctions)
            except ValueError as e:   # (the option, as every other error names its own)
                raise ValueError(f"--junctions: {e}" if str(e).startswith("junctions") else str(e)) from None
            del scores["distance_to_nearest"]   # (needs reference clips, which a video file has none of)
        scores = metrics.strict_scores(scores)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e), "video") from None
    if a.json:
        print(json.dumps(scores, indent=2, allow_nan=False))
    else:
        undefined = scores.pop("undefined", {})
        width = max(map(len, scores))
        saved = os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(video)), "report.json"))
        print(f"{video}: {len(frames)} frame{'s' * (len(frames) != 1)}"   # (a run's frames.npy, or its video)
              + ((" (lossless, as the run saved them)" if saved else " (lossless)") if video.endswith(".npy")
                 else ""))
        # where the seam score's junctions come from: evaluate OUT/video.mp4 reads the report beside it too, and
        # --junctions replaces the report's without a word (a trial)
        if plan is not None:
            print(f"junctions: the run's report.json ({len(plan['window_junctions'])} between windows, "
                  f"{len(plan['structure_junctions'])} between structures)")
        elif a.junctions:
            print("junctions: as given (--junctions)" + (", not the run's report.json's" if own is not None else ""))
        print(f"{'metric':>{width}}  {'value':>9}  better")
        for k, v in scores.items():
            print(f"{k:>{width}}  {v:9.4f}  {metrics.BETTER[k]}" if v is not None else
                  f"{k:>{width}}  {'n/a':>9}  {metrics.BETTER[k]} ({undefined[k]})")
    return 0


def read_report(folder: str) -> dict | None:
    """``folder``'s report.json (a generate output's), None where there is none or it cannot be read."""
    import json

    try:
        with open(os.path.join(folder, "report.json"), encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def plan_of(report: dict) -> dict | None:
    """The segment plan a ConFiner-Long run wrote to its report (its junctions), else None."""
    plan = report.get("segment_plan")
    ok = isinstance(plan, dict) and all(isinstance(plan.get(k), list) for k in ("window_junctions",
                                                                              "structure_junctions"))
    return plan if ok else None


def request_from_args(a: argparse.Namespace):
    from .generate import NUMBERS, GenerateRequest

    for number in NUMBERS:   # as the options (the configs check their own fields when built, in the library's words)
        number.check(getattr(a, number.option.removeprefix("--").replace("-", "_")))
    chain = ChainConfig(control_steps=a.control_steps, control_sampler=a.control_sampler,
                        control_spacing=a.control_spacing, control_eta=a.control_eta, te=a.te,
                        refine_steps=a.refine_steps, refine_spacing=a.refine_spacing, mode=a.mode,
                        matching=a.matching, eta=a.eta, structure_noise=a.structure_noise)
    return GenerateRequest(prompt=a.prompt, negative_prompt=a.negative_prompt, frames=a.frames, height=a.height,
                           width=a.width, seed=a.seed, out=a.out, control=a.control, spatial=a.spatial,
                           temporal=a.temporal, base=a.base, control_cfg=a.control_cfg, refine_cfg=a.cfg,
                           spatial_cfg=a.spatial_cfg, temporal_cfg=a.temporal_cfg, fps=a.fps,
                           device=a.device, speed=a.speed, dtype=a.dtype, compile_dir=a.compile_dir, resume=a.resume,
                           save_frames=a.save_frames,
                           embedded_preset=a.embedded, image_mode=a.image_mode, chain=chain,
                           long=LongConfig(segment_length=a.segment_length, noise_init=a.noise_init,
                                           freenoise_window=a.freenoise_window, freenoise_stride=a.freenoise_stride,
                                           gamma=a.gamma, staggered=not a.no_stagger,
                                           coherence_memory=a.coherence_memory, color_anchor=a.color_anchor))


def generate_command(a: argparse.Namespace) -> int:
    from .generate import generate, in_command_line_spelling

    with in_command_line_spelling():   # messages name the options typed, not GenerateRequest's fields
        report = generate(request_from_args(a), show_progress=not a.quiet, announce=print)
    if report is None:   # a worker process of a torchrun run: rank 0 reports
        return 0
    s = report["seconds"]
    before = report.get("evaluations_before_resume")
    resumed = f" ({before} of them before the resume)" if before is not None else ""
    frames = f"{report['frames']} frame{'s' * (report['frames'] != 1)}"
    vae_calls = sum(report["vae_calls"].values())   # between the experts: bridges, pixel frames, window joins
    timed = f"{sum(report['vae_seconds'].values()):.1f} s" + (" after the resume" if before is not None else "")
    vae = f", {vae_calls} VAE call{'s' * (vae_calls != 1)} between them in {timed}" if vae_calls else ""
    blocks = report.get("compiled_blocks")   # (a compile folder's blocks: were they read, or compiled now?)
    kept = f"; --compile-dir: {blocks['loaded']} blocks loaded, {blocks['compiled']} compiled" if blocks else ""
    print(f"wrote {os.path.join(a.out, 'video.mp4')}, frames.png, {'frames.npy, ' * a.save_frames}report.json  "
          f"({frames}, "
          f"{report['total_expert_evaluations']} expert evaluations{resumed}{vae}, {s['total']:.1f} s"
          f"{' in all' * bool(vae)}{kept})")
    return 0


#: the environment variables main() sets for its run where they are unset: the libraries' notices (their loading
#: bars are switched off and on again around the loading: library_bars.loading_bars)
QUIETING = ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")
#: the libraries that read them at import: library -> its variable (their default level: WARNING)
QUIETED_LIBRARIES = {"transformers": "TRANSFORMERS_VERBOSITY", "diffusers": "DIFFUSERS_VERBOSITY"}


def main(argv: list[str] | None = None) -> int:
    """Returns 0 on success; raises SystemExit with 2 (usage), 1 (runtime failure), 130 (interrupted) or 143
    (SIGTERM)."""
    # what main() sets for the run is put back at its end: it may run inside a notebook or a test (a notebook kept
    # the libraries' verbosity and loading bars switched off after one call with --quiet)
    python_format, unset = warnings.formatwarning, [name for name in QUIETING if name not in os.environ]
    imported = {name for name in QUIETED_LIBRARIES if name in sys.modules}
    # Library chatter at import (e.g. transformers on optional image processors) would bury the one-line result.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
        except KeyboardInterrupt:   # Ctrl-C while the arguments are read: nothing has started
            sys.stderr.write("interrupted; nothing written\n")
            raise SystemExit(130) from None
        if getattr(args, "quiet", False):   # nor do the libraries' notices (read when they load)
            os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        debug = args.debug or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
        if not debug:  # a doubtful setting (ConFinerWarning) is one line, like an error, not Python's warning format
            warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
        return run_command(args, parser, debug)
    finally:
        warnings.formatwarning = python_format
        for name in unset:
            os.environ.pop(name, None)
        libraries_as_by_default(unset, imported)


def libraries_as_by_default(unset: list, imported: set) -> None:
    """A library first imported during main() read its quieting at import, and kept it (a notebook's first call with
    --quiet left transformers and diffusers logging errors only): put back at its default, where main() set the
    variable. ``unset``: the variables main() set; ``imported``: the libraries imported before it."""
    for library, variable in QUIETED_LIBRARIES.items():
        if library not in imported and library in sys.modules and variable in unset:
            sys.modules[library].utils.logging.set_verbosity_warning()


def run_command(args, parser, debug: bool) -> int:
    """The command, its failures as one line and an exit code (:func:`main`)."""
    command = generate_command if args.command == "generate" else evaluate_command
    from . import distributed

    try:
        with sigterm_as_interrupt() as terminated:
            return command(args)
    except UsageError as e:
        error, code, message = e, 2, f"error: {one_line(e)}"
    except Interrupted as e:
        error, code, message = e, 130, str(e)
    except KeyboardInterrupt as e:
        error, code, message = e, 130, "interrupted; nothing written"
    except OutputError as e:  # the disk or the folder, not a bug: the line says what to do, no traceback hint
        error, code, message = e, 1, f"error: {one_line(e)}"
    except BrokenPipeError:   # the reader of the output left (``evaluate --json | head``): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # (Python's flush at exit would fail too)
        parser.exit(128 + signal.SIGPIPE)
    except RankFailed as e:  # another process of a torchrun run failed: its line says what and where
        error, code, message = e, e.code, f"error: {one_line(e)}"
    except Exception as e:  # a failure while running: one line, the traceback only on request
        hint = "" if debug else f" (for the traceback: --debug or {DEBUG_ENV}=1)"
        notes = "".join(f" ({' '.join(note.split())})" for note in getattr(e, "__notes__", ()))   # which expert
        error, code, message = e, 1, f"error: {type(e).__name__}: {one_line(e)}{notes}{hint}"
    if terminated and isinstance(error, KeyboardInterrupt):   # stopped by SIGTERM, cleaned up as after Ctrl-C
        code, message = 128 + signal.SIGTERM, "stopped by SIGTERM" + message.removeprefix("interrupted")
    if debug:
        traceback.print_exception(error)
    ranks = distributed.current()
    # Under torchrun each process prints one line; rank 0 alone prints what all share (a usage error, Ctrl-C).
    quiet = ranks.rank != 0 and (isinstance(error, (UsageError, KeyboardInterrupt)) or
                                 (isinstance(error, RankFailed) and error.code in (2, 130, 128 + signal.SIGTERM)))
    if not quiet:
        sys.stderr.write(distributed.prefix(ranks) + message + "\n")
    distributed.exit_if_failed(code)
    parser.exit(code)

if __name__ == "__main__":
    sys.exit(main())
