"""Bad input, table-driven: every row is refused before any weights load, with a message naming the input, and
leaves every output file as it was.

Rows are ``Case``s in ``CLI_CASES`` (``python -m confiner_core generate`` in-process: exit code 2, one line on
stderr, no traceback) and ``API_CASES`` (``generate(GenerateRequest(...))``: the exception type). Add a row to add a
check; ``{name}`` placeholders in arguments are files made by ``make_inputs`` (node cases live in their own module).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import pytest
import torch
from safetensors.torch import save_file

import confiner_core.generate as G
from confiner_core.chain import ChainConfig
from confiner_core.cli import main
from confiner_core.errors import UsageError
from confiner_core.generate import GenerateRequest, generate
from confiner_core.long import LongConfig, LongState
from confiner_core.resume import ResumeStore

SMALL = ["--frames", "8", "--height", "64", "--width", "64", "--quiet"]
PREVIOUS = {"video.mp4": b"previous video bytes", "frames.png": b"previous sheet", "report.json": b'{"previous": 1}'}
HAS_CUDA = torch.cuda.is_available()


@dataclass
class Case:
    id: str
    args: list | dict        # CLI: extra argv; API: GenerateRequest keyword arguments
    names: str               # the message must contain this (the option, field, role or path)
    code: int = 2            # CLI exit code
    error: type = UsageError  # API exception type
    defaults: bool = True    # CLI: prepend SMALL
    marks: list = field(default_factory=list)


def make_inputs(tmp) -> dict:
    """Files the rows refer to: a previous run's outputs in ``prev`` and checkpoint-shaped files that fail."""
    paths = {"tmp": str(tmp)}
    motion = tmp / "motion_module.safetensors"  # detected as an AnimateDiff motion module from its keys alone
    save_file({"down_blocks.0.motion_modules.0.proj_in.weight": torch.zeros(4, 4)}, str(motion))
    sd = tmp / "sd15_single.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1000)}, str(sd))
    data = sd.read_bytes()
    (tmp / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp / "junk.safetensors").write_bytes(b"\x00" * 7)
    (tmp / "model.ckpt").write_bytes(b"pickle bytes")
    (tmp / "empty_folder").mkdir()
    (tmp / "a_file").write_bytes(b"I am a file")
    (tmp / "clash").mkdir()
    (tmp / "clash" / "video.mp4").mkdir()  # an output name taken by a folder
    resumed = tmp / "resumed"  # an interrupted long run's state, started with seed 7
    resumed.mkdir()
    request = GenerateRequest(frames=24, height=64, width=64, seed=7, long=LongConfig(segment_length=8),
                              out=str(resumed))
    request.validate()   # settled as the command line's run is (T_e, fps)
    store = ResumeStore(str(resumed), request.run_settings())
    store.start()
    store.save_state(LongState(1), 3)
    os.symlink(tmp / "gone", tmp / "broken")
    os.symlink(resumed / ".confiner-resume", tmp / "into_state")
    paths.update(broken=str(tmp / "broken"), into_state=str(tmp / "into_state"))
    paths.update(motion=str(motion), sd=str(sd), truncated=str(tmp / "truncated.safetensors"),
                 junk=str(tmp / "junk.safetensors"), ckpt=str(tmp / "model.ckpt"), empty=str(tmp / "empty_folder"),
                 file=str(tmp / "a_file"), clash=str(tmp / "clash"), resumed=str(resumed))
    return paths


LONG = ["--frames", "24", "--segment-length", "8"]
CKPT = ["--control", "{motion}", "--spatial", "{sd}", "--temporal", "{motion}"]

CLI_CASES = [
    # numbers
    Case("frames-zero", ["--frames", "0"], "--frames must be >= 1"),
    Case("frames-negative", ["--frames", "-5"], "--frames"),
    Case("frames-huge", ["--frames", "100001"], "--frames"),
    Case("frames-text", ["--frames", "abc"], "--frames"),
    Case("frames-float", ["--frames", "1.5"], "--frames"),
    Case("height-not-multiple", ["--height", "70"], "--height must be a multiple of 8 (the experts' latent factor and "
         "patch) and at least 64, got 70: use 64 or 72"),
    Case("height-small", ["--height", "32"], "--height"),
    Case("width-not-multiple", ["--width", "100"], "--width"),
    Case("width-zero", ["--width", "0"], "--width"),
    Case("seed-negative", ["--seed", "-1"], "--seed"),
    Case("seed-too-big", ["--seed", str(2**64)], "--seed"),
    Case("seed-text", ["--seed", "x"], "--seed"),
    # the folder it said held no run was the resume folder inside --out, which does not exist
    Case("resume-nothing", ["--frames", "24", "--segment-length", "8", "--resume"],
         "--resume: {prev} holds no interrupted ConFiner-Long run (no .confiner-resume folder in it)"),
    Case("resume-nowhere", ["--frames", "24", "--segment-length", "8", "--resume", "--out", "{prev}/nowhere"],
         "--resume: {prev}/nowhere does not exist, so holds no interrupted ConFiner-Long run"),
    # --resume without the run's options: the stored run names them (it said only "this is a single clip")
    Case("resume-without-the-runs-options", ["--resume", "--out", "{resumed}"],
         "--resume: the interrupted run in {resumed}/.confiner-resume used other settings (--frames: 24 -> 8; --seed: 7 "
         "-> 0; --segment-length: 8 -> 16); resume with its settings"),
    # a run into an interrupted run's kept state: its --resume, completed, deleted that folder with the run's video
    Case("out-inside-resume-state", ["--out", "{resumed}/.confiner-resume"],
         "--out: {resumed}/.confiner-resume is inside the kept state of the interrupted run in {resumed}, which its "
         "--resume deletes when it completes; write elsewhere, or continue that run with --out {resumed} --resume"),
    Case("resume-inside-resume-state", [*LONG, "--resume", "--out", "{resumed}/.confiner-resume/x"],
         "--out: {resumed}/.confiner-resume/x is inside the kept state of the interrupted run in {resumed}: continue "
         "that run with --out {resumed} --resume"),
    Case("out-inside-a-resume-folders-name", ["--out", "{prev}/.confiner-resume/x"],   # no run interrupted there
         "--out: {prev}/.confiner-resume/x is inside a folder named .confiner-resume, where a ConFiner-Long run in "
         "{prev} would keep its state and delete it when it completes; choose another --out"),
    Case("out-through-a-link-into-resume-state", ["--out", "{into_state}/sub"],   # (it wrote there, and lost it)
         "--out: {into_state}/sub is inside the kept state of the interrupted run in {resumed}, which its --resume "
         "deletes when it completes"),
    Case("out-through-a-broken-link", ["--out", "{broken}/c2"],   # it failed with a bare FileExistsError
         "--out: {broken} is a link to {tmp}/gone, which does not exist; choose another --out"),
    # a library message's setting in the command line's spelling (it said "use mode 'coordinated'"), and an image
    # expert on pixel frames named as the other space (it read "they must share a latent space" for one model)
    Case("alternate-across-spaces", ["--embedded", "bridge", "--frames", "9", "--mode", "alternate"],
         "they must share a latent space; use --mode coordinated to bridge experts of different spaces"),
    Case("alternate-on-pixel-frames", ["--embedded", "wan-pixel", "--frames", "9", "--mode", "alternate"],
         "an image expert on pixel frames refines each frame encoded alone, another latent space than the temporal "
         "expert's embedded-causal: use latent frames for the image expert, or --mode coordinated"),
    Case("abbreviated-option", ["--fram", "3"], "unrecognized arguments: --fram 3: did you mean --frames? (see "
                                                "--help)"),   # it ran 3 frames
    # a word of several options, a diffusers pipeline's argument: argparse named none (a trial)
    Case("option-word", ["--steps", "8"], "unrecognized arguments: --steps 8: did you mean --control-steps or "
                                          "--refine-steps? (see --help)"),
    Case("option-among-its-words", ["--cfg-scale", "3"], "unrecognized arguments: --cfg-scale 3: did you mean --cfg? "
                                                         "(see --help)"),
    Case("diffusers-argument", ["--num-inference-steps", "8"], "unrecognized arguments: --num-inference-steps 8: did "
                                                               "you mean --refine-steps? (see --help)"),
    # a Python keyword's spelling, a plural: argparse named no option
    Case("underscored-option", ["--refine_steps", "3", "--seeds", "4"], "unrecognized arguments: --refine_steps 3 "
         "--seeds 4: did you mean --refine-steps for --refine_steps, --seed for --seeds?"),
    Case("unknown-option", ["--banana", "3"], "unrecognized arguments: --banana 3 (see --help)"),
    # another command's option: said so (it was "did you mean --junctions for --junctions?")
    Case("evaluate-option", ["--junctions", "8"], "unrecognized arguments: --junctions 8: --junctions is an option "
                                                  "of evaluate (see --help)"),
    Case("device-cpu-with-index", ["--device", "cpu:1"], "--device cpu:1: the CPU has one device, cpu (or cpu:0)"),
    Case("fps-zero", ["--fps", "0"], "--fps must be >= 0.01"),
    Case("fps-too-slow-for-the-writer", ["--fps", "0.001"], "--fps must be >= 0.01"),   # it failed after sampling
    Case("fps-negative", ["--fps", "-8"], "--fps"),
    Case("fps-nan", ["--fps", "nan"], "--fps"),
    Case("fps-inf", ["--fps", "inf"], "--fps"),
    Case("cfg-nan", ["--cfg", "nan"], "--cfg must be a finite number"),
    Case("cfg-inf", ["--cfg", "inf"], "--cfg"),
    Case("cfg-negative", ["--cfg", "-1"], "--cfg"),
    Case("cfg-huge", ["--cfg", "1000"], "--cfg"),
    Case("control-cfg-nan", ["--control-cfg", "nan"], "--control-cfg"),
    Case("spatial-cfg-negative", ["--spatial-cfg", "-2"], "--spatial-cfg must be >= 0"),
    Case("temporal-cfg-nan", ["--temporal-cfg", "nan"], "--temporal-cfg must be a finite number"),
    Case("control-steps-zero", ["--control-steps", "0"], "--control-steps"),
    Case("control-steps-huge", ["--control-steps", "1001"], "--control-steps"),
    Case("refine-steps-zero", ["--refine-steps", "0"], "--refine-steps"),
    Case("te-zero", ["--te", "0"], "--te"),
    Case("te-outside-schedule", ["--te", "1000"],   # the expert by its role (it said "schedule 'sd15'" too)
         "--te=1000 lies outside the spatial expert's schedule: valid 1..999; choose a value in that range"),
    Case("steps-do-not-fit", ["--te", "3", "--refine-steps", "9"], "--refine-steps: 9 refinement steps do not fit"),
    # flow experts are never evaluated at sigma 0 (linspace ended there: NaN from the embedded Wan-like experts)
    Case("linspace-ends-at-flow-sigma-0", ["--embedded", "wan", "--frames", "9", "--refine-spacing", "linspace"],
         "--refine-spacing: the refinement's last timestep is 0 (linspace spacing, 5 steps from T_e 250), where the "
         "spatial and temporal experts' flow noise level is 0"),
    Case("trailing-ends-at-flow-sigma-0", ["--embedded", "bridge", "--frames", "9", "--te", "4", "--refine-steps", "5",
                                           "--refine-spacing", "trailing", "--matching", "same_index"],
         "--refine-steps: the refinement's last timestep is 0 (trailing spacing, 5 steps from T_e 4), where the "
         "temporal expert's flow noise level is 0"),
    Case("one-control-step-at-timestep-0", ["--control-steps", "1", "--control-spacing", "linspace",
                                            "--control-sampler", "ddim"],
         "--control-spacing: 1 control step with 'linspace' spacing starts at timestep 0, where the sample counts as "
         "nearly clean"),
    Case("one-control-step-at-timestep-1", ["--control-steps", "1", "--control-spacing", "leading"],
         "--control-spacing: 1 control step with 'leading' spacing starts at timestep 1, where"),
    Case("eta-above-one", ["--eta", "2"], "--eta"),
    Case("control-eta-without-ddim", ["--control-eta", "0.5"], "--control-sampler ddim"),   # Euler draws no noise
    # options the run would not read: refused as --control-eta above, rather than recorded and ignored
    Case("matching-without-coordinated", ["--matching", "nearest", "--mode", "standard"], "--mode standard"),
    # a temporal expert standard mode never evaluates: its frame rule refused valid runs (a Wan one, 8 frames)
    Case("temporal-without-its-mode", [*CKPT, "--mode", "standard"], "--temporal is not evaluated by --mode standard"),
    # ... and the spatial expert the temporal-only ablation never evaluates (it once had to be given)
    Case("spatial-without-its-mode", [*CKPT, "--mode", "temporal"], "--spatial is not evaluated by --mode temporal "
         "(the temporal expert refines alone): drop it"),
    Case("spatial-cfg-without-its-mode", ["--mode", "temporal", "--spatial-cfg", "3"],
         "--spatial-cfg guides the spatial expert, which --mode temporal does not evaluate: drop it"),
    Case("temporal-cfg-without-its-mode", ["--mode", "standard", "--temporal-cfg", "3"],
         "--temporal-cfg guides the temporal expert, which --mode standard does not evaluate: drop it"),
    Case("temporal-mode-without-temporal", ["--mode", "temporal", "--control", "{motion}", "--spatial", "{sd}"],
         "--temporal missing: real checkpoints need --control and --spatial, and --temporal unless --mode standard "
         "(--mode temporal: --control and --temporal)"),
    Case("embedded-with-checkpoints", ["--embedded", "wan", "--control", "{motion}", "--spatial", "{sd}",
                                       "--temporal", "{motion}"], "--embedded wan"),
    Case("long-option-on-a-clip", ["--gamma", "0.3", "--coherence-memory", "guided"],
         "--gamma, --coherence-memory set how ConFiner-Long joins segments; this is a single clip (8 frames"),
    Case("no-stagger-on-a-clip", ["--no-stagger"], "--no-stagger sets how ConFiner-Long"),
    Case("freenoise-window-with-shuffle", ["--frames", "24", "--freenoise-window", "8"],
         "--freenoise-window shapes FreeNoise's noise; this run's --noise-init is shuffle"),
    Case("eta-nan", ["--eta", "nan"], "--eta"),
    Case("gamma-above-half", ["--gamma", "0.6"], "--gamma"),
    Case("gamma-nan", ["--gamma", "nan"], "--gamma"),
    Case("segment-length-one", ["--segment-length", "1"], "--segment-length"),
    Case("frames-not-4k+1-causal", ["--embedded", "wan", "--frames", "16"], "use 13 or 17"),
    Case("segment-length-not-4k+1-causal", ["--embedded", "wan", "--frames", "40", "--segment-length", "16"],
         "--segment-length: the control expert's embedded-causal latent space holds 4k+1 frames"),
    Case("size-not-multiple-of-16-causal", ["--embedded", "bridge", "--frames", "9", "--height", "72"],
         "--height must be a multiple of 16"),
    Case("embedded-preset-unknown", ["--embedded", "flux"], "--embedded"),
    Case("freenoise-stride-over-window", [*LONG, "--noise-init", "freenoise", "--freenoise-stride", "20"],
         "--freenoise-stride"),
    Case("freenoise-window-over-frames", [*LONG, "--noise-init", "freenoise", "--freenoise-window", "40"],
         "--freenoise-window"),
    Case("freenoise-window-zero", ["--freenoise-window", "0"], "--freenoise-window"),
    Case("travel-shorter-than-a-segment", ["--frames", "8", "--segment-length", "16", "--prompt", "0: a | 4: b"],
         "--frames 8 is shorter than one segment (--segment-length 16)"),
    Case("freenoise-stride-zero", ["--freenoise-stride", "0"], "--freenoise-stride"),
    # choices
    Case("mode-unknown", ["--mode", "bogus"], "--mode"),
    # a misspelt value is told the choice likely meant, as a misspelt option is (a trial's "coordinate")
    Case("mode-misspelt", ["--mode", "coordinate"], "did you mean 'coordinated'? (see --help)"),
    Case("sampler-in-capitals", ["--control-sampler", "DDIM"], "did you mean 'ddim'? (see --help)"),
    Case("matching-unknown", ["--matching", "bogus"], "--matching"),
    Case("noise-init-unknown", ["--noise-init", "bogus"], "--noise-init"),
    Case("speed-unknown", ["--speed", "FAST"], "--speed"),
    Case("speed-on-the-embedded-default", ["--speed", "fast"], "the embedded default has none: leave --speed out"),
    Case("dtype-unknown", ["--dtype", "fp8"], "--dtype"),
    Case("dtype-on-the-embedded-default", ["--dtype", "bfloat16"],
         "the embedded default has no weights (it computes in float32): leave --dtype out"),
    Case("compile-dir-without-compiling", ["--compile-dir", "{tmp}/compiled"], "--compile-dir"),
    Case("compile-dir-is-a-file", ["--speed", "fast", "--compile-dir", "{file}"], "--compile-dir"),
    Case("compile-dir-below-a-file", ["--speed", "max", "--compile-dir", "{file}/sub"], "choose another --compile-dir"),
    Case("control-sampler-unknown", ["--control-sampler", "heun"], "--control-sampler"),
    # devices
    Case("device-cuda-without-gpu", ["--device", "cuda"], "--device cuda",
         marks=[pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")]),
    Case("device-cuda-index", ["--device", "cuda:7"], "--device cuda:7",
         marks=[pytest.mark.skipif(HAS_CUDA and torch.cuda.device_count() > 7, reason="has 8 GPUs")]),
    Case("device-unknown", ["--device", "foo"], "--device 'foo'"),
    Case("device-meta", ["--device", "meta"], "--device 'meta'"),
    Case("device-empty", ["--device", ""], "--device"),
    # files
    Case("out-is-a-file", ["--out", "{file}"], "--out"),
    Case("out-below-a-file", ["--out", "{file}/sub"], "--out"),
    # (it once read "cannot write in /proc (No such file or directory)", where /proc exists)
    Case("out-not-writable", ["--out", "/proc/confiner-out"],
         "--out: cannot write in /proc (it takes no new files), so /proc/confiner-out cannot be created"),
    Case("out-name-taken-by-folder", ["--out", "{clash}"], "video.mp4"),
    Case("spatial-without-control", ["--spatial", "{sd}"], "--control and --temporal missing: real checkpoints need"),
    Case("control-without-temporal", ["--control", "{motion}", "--spatial", "{sd}"], "--temporal missing"),
    Case("control-alone-missing", ["--control", "/nope/c"], "the control expert's path /nope/c does not exist"),
    Case("paths-missing", ["--control", "/nope/c", "--spatial", "/nope/s", "--temporal", "/nope/t"],
         "the control expert's path /nope/c does not exist; the spatial expert's path /nope/s does not exist; the "
         "temporal expert's path /nope/t does not exist"),
    Case("temporal-missing", ["--control", "{motion}", "--spatial", "{sd}", "--temporal", "/nope/t"],
         "--temporal: the temporal expert's path /nope/t"),
    Case("control-pickle", ["--control", "{ckpt}", "--spatial", "{sd}", "--temporal", "{motion}"],
         "--control: control expert ("),
    Case("spatial-pickle", ["--control", "{motion}", "--spatial", "{ckpt}", "--temporal", "{motion}"],
         "--spatial: spatial expert ("),
    Case("control-empty-folder", ["--control", "{empty}", "--spatial", "{sd}", "--temporal", "{motion}"],
         "no model recognised in this folder"),
    Case("spatial-truncated", ["--control", "{motion}", "--spatial", "{truncated}", "--temporal", "{motion}"],
         "truncated.safetensors"),
    Case("spatial-junk", ["--control", "{motion}", "--spatial", "{junk}", "--temporal", "{motion}"],
         "--spatial: spatial expert"),
    Case("temporal-is-an-image-model", ["--control", "{motion}", "--spatial", "{sd}", "--temporal", "{sd}"],
         "cannot serve as the temporal expert"),
    Case("spatial-is-a-motion-module", ["--control", "{motion}", "--spatial", "{motion}", "--temporal", "{motion}"],
         "cannot serve as the spatial expert"),
    Case("base-is-a-file", [*CKPT, "--base", "{file}"], "--base"),
    Case("base-missing", [*CKPT, "--base", "/nope/base"], "--base: /nope/base does not exist"),
    Case("base-without-checkpoints", ["--base", "{empty}"], "--base"),
    # prompt schedules
    Case("prompt-ambiguous", ["--prompt", "a red ball | 4: a blue ball"], "0: a red ball | 64: a blue ball"),
    Case("prompt-duplicate", ["--prompt", "0: a | 0: b"], "'0: b'"),
    Case("prompt-beyond-video", ["--prompt", "0: a | 99: b"], "'99: b'"),
    Case("prompt-unsorted", [*LONG, "--prompt", "0: a | 12: b | 8: c"], "'8: c'"),
    Case("prompt-empty-entry-prompt", ["--prompt", "0: a | 4:"], "'4:'"),
    Case("prompt-empty-entry", ["--prompt", "0: a || 4: b"], "empty entry"),
    Case("prompt-not-from-zero", ["--prompt", "4: a"], "'4: a'"),
    Case("prompt-seconds-duplicate", [*LONG, "--prompt", "0: a | 1s: b | 8: c"], "'8: c'"),
    Case("prompt-seconds-beyond-video", ["--prompt", "0: a | 5s: b"], "'5s: b'"),
    Case("prompt-entry-without-key", ["--prompt", "0: a | b"], "'b'"),
    # resume
    Case("resume-single-clip", ["--resume"], "--resume"),
    Case("resume-nothing-to-resume", [*LONG, "--resume"], "--resume"),
    Case("resume-other-settings", [*LONG, "--out", "{resumed}", "--resume", "--seed", "8"], "used other settings (--seed: 7 -> 8"),
    # the state names a finished window whose file is gone: refused before sampling, naming it (it failed mid-run)
    Case("resume-damaged-state", [*LONG, "--out", "{resumed}", "--resume", "--seed", "7"],
         "window-00000.safetensors is missing: the interrupted run's state is damaged; delete"),
    Case("interrupted-run-in-out", [*LONG, "--out", "{resumed}", "--seed", "7"], "continue it with --resume"),
    Case("single-clip-into-interrupted-run", ["--out", "{resumed}"], "holds an interrupted ConFiner-Long run (1 of 3"),
]

API_CASES = [
    Case("api-frames-zero", {"frames": 0}, "frames must be >= 1"),
    Case("api-frames-float", {"frames": 16.5}, "frames must be an integer"),
    Case("api-frames-bool", {"frames": True}, "frames must be an integer"),
    Case("api-height", {"height": 70}, "height must be a multiple of 8"),
    Case("api-seed-too-big", {"seed": 2**64}, "seed must be <="),
    Case("api-fps-nan", {"fps": math.nan}, "fps must be a finite number"),
    Case("api-resume-single-clip", {"resume": True}, "holds no interrupted ConFiner-Long run (no .confiner-resume "
         "folder in it); run without resume=True"),
    Case("api-cfg-nan", {"refine_cfg": math.nan}, "refine_cfg must be a finite number"),
    Case("api-temporal-cfg-inf", {"temporal_cfg": math.inf}, "temporal_cfg must be a finite number"),
    Case("api-control-cfg-inf", {"control_cfg": math.inf}, "control_cfg must be"),
    Case("api-te-outside", {"chain": ChainConfig(te=5000)}, "chain.te=5000 lies outside"),
    Case("api-matching-unread", {"chain": ChainConfig(mode="standard", matching="nearest")},
         "this run is chain.mode standard: leave chain.matching at 'auto'"),
    Case("api-device", {"device": "tpu"}, "device 'tpu' is not"),
    Case("api-speed", {"speed": "FAST"}, "speed must be 'eager', 'lean', 'fast' or 'max', got 'FAST'"),
    Case("api-save-frames-text", {"save_frames": "no"}, "save_frames must be True or False, got 'no'"),
    Case("api-resume-number", {"resume": 1}, "resume must be True or False, got 1"),
    Case("api-prompt-duplicate", {"prompt": "0: a | 0: b"}, "'0: b'"),
    Case("api-prompt-not-text", {"prompt": 42}, "prompt must be text, got int"),
    Case("api-negative-prompt-none", {"negative_prompt": None}, "negative_prompt must be text, got NoneType"),
    Case("api-out-file", {"out": "{file}"}, "out: "),
    Case("api-missing-spatial", {"control": "{motion}", "spatial": "/nope/s", "temporal": "{motion}"}, "/nope/s"),
    Case("api-pickle-temporal", {"control": "{motion}", "spatial": "{sd}", "temporal": "{ckpt}"}, "model.ckpt"),
    # a sweep over modes: the loaded experts serve the request without the expert it drops
    Case("api-temporal-without-its-mode", {"control": "{motion}", "spatial": "{sd}", "temporal": "{motion}",
                                           "chain": ChainConfig(mode="standard")},
         "temporal is not evaluated by chain.mode standard (the spatial expert refines alone): drop it (experts= "
         "loaded with it still serve the request without it: a sweep over modes loads once), or use chain.mode "
         "coordinated"),
    # a model already loaded, given where its path goes (it failed in os.stat, a TypeError naming no field)
    Case("api-model-for-path", {"control": "{motion}", "spatial": torch.nn.Linear(1, 1), "temporal": "{motion}"},
         "spatial must be a path (str or pathlib.Path), not Linear; a model already loaded runs as an expert of "
         "confiner_core.diffusers_backend"),
    Case("api-out-number", {"out": 7}, "out must be a path (str or pathlib.Path), not int"),
]


def snapshot(folder) -> dict:
    """Every file below ``folder``: relative path -> bytes."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p):   # (a link to nothing: its target)
                out[os.path.relpath(p, folder)] = os.readlink(p)
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


@pytest.fixture
def world(tmp_path, monkeypatch):
    """The inputs, a previous run's outputs in ``prev`` and a counter of weight loads (every load goes through
    generate.load_backend)."""
    paths = make_inputs(tmp_path)
    prev = tmp_path / "prev"
    prev.mkdir()
    for name, data in PREVIOUS.items():
        (prev / name).write_bytes(data)
    loads = []
    real = G.load_backend
    monkeypatch.setattr(G, "load_backend", lambda req: loads.append(req) or real(req))
    before = snapshot(tmp_path)
    yield paths, str(prev), loads
    assert loads == [], "weights were loaded before the input was refused"
    assert snapshot(tmp_path) == before, "a refused run changed files"


def fill(value, paths):
    return value.format(**paths) if isinstance(value, str) else value


def case_params(cases):
    return [pytest.param(c, id=c.id, marks=c.marks) for c in cases]


#: a config's setting refused when the config is built (a sweep that builds its configs first heard of a misspelt
#: mode at the run): its class, the setting, the message
CONFIG_CASES = [
    (ChainConfig, {"te": 0}, "te (T_e) must be an integer >= 1, got 0"),
    (ChainConfig, {"mode": "diagonal"}, "mode must be one of ('coordinated', 'standard', 'temporal', 'alternate'), "
                                        "got 'diagonal'"),
    (ChainConfig, {"refine_steps": "5"}, "refine_steps must be an integer >= 1, got '5'"),
    (ChainConfig, {"eta": float("nan")}, "eta must be a number in [0, 1], got nan"),
    (LongConfig, {"gamma": 1.0}, "gamma must lie in [0, 0.5] (0.5 copies the previous eps outright), got 1.0"),
    (LongConfig, {"gamma": "0.1"}, "gamma must lie in [0, 0.5] (0.5 copies the previous eps outright), got '0.1'"),
    (LongConfig, {"noise_init": "pink"}, "noise_init must be one of ('shuffle', 'freenoise', 'independent'), got "
                                         "'pink'"),
    (LongConfig, {"staggered": "yes"}, "LongConfig.staggered must be True or False or None (the plan's), got 'yes'"),
    # the option likely meant, as the command line says it (a trial's library calls got none)
    (ChainConfig, {"mode": "coordinate"}, "mode must be one of ('coordinated', 'standard', 'temporal', 'alternate'), "
                                          "got 'coordinate': did you mean 'coordinated'?"),
    (ChainConfig, {"control_sampler": "DDIM"}, "control_sampler must be one of ('euler', 'ddim', 'dpmpp_2m', "
                                               "'unipc'), got 'DDIM': did you mean 'ddim'?"),
    (LongConfig, {"noise_init": "FreeNoise"}, "noise_init must be one of ('shuffle', 'freenoise', 'independent'), got "
                                              "'FreeNoise': did you mean 'freenoise'?"),
]


@pytest.mark.parametrize("config, setting, said", CONFIG_CASES)
def test_a_config_refuses_a_bad_setting_when_built_and_when_replaced(config, setting, said):
    from dataclasses import replace

    for build in (lambda: config(**setting), lambda: replace(config(), **setting)):
        with pytest.raises((ValueError, TypeError)) as e:
            build()
        assert str(e.value) == said


@pytest.mark.parametrize("config, name, meant", [
    (ChainConfig, "tee", "tee -> te"), (ChainConfig, "num_inference_steps", "num_inference_steps -> refine_steps"),
    (ChainConfig, "guidance_scale", "guidance_scale -> not a chain setting: each expert's bind(prompt, negative, "
                                    "guidance_scale)"),
    (LongConfig, "gama", "gama -> gamma"), (LongConfig, "window", "window -> freenoise_window"),
    (GenerateRequest, "te", "te -> chain.te"), (GenerateRequest, "num_frames", "num_frames -> frames"),
    (ChainConfig, "Te", "Te -> te"), (ChainConfig, "xyzzy", None),
    (ChainConfig, "steps", "steps -> control_steps or refine_steps")])
def test_a_setting_a_config_lacks_is_refused_with_the_one_meant(config, name, meant):
    """Python's own "__init__() got an unexpected keyword argument 'tee'" named no setting it has (and where no
    setting is close, none is guessed: it said "xyzzy -> ?")."""
    said = f" \\(meant: {re.escape(meant)}\\)" if meant else ""
    with pytest.raises(TypeError, match=f"^{config.__name__} has no setting '{name}'{said}; its settings: "):
        config(**{name: 1})


def test_how_the_settings_fit_together_is_checked_by_validate_and_the_run():
    """Each field is checked when built; steps that do not fit under T_e wait for validate(), since T_e=None is
    settled by the experts (and replace() sets one field at a time in a sweep)."""
    config = ChainConfig(te=1, refine_steps=5)
    with pytest.raises(ValueError, match="5 refinement steps do not fit between T_e=1 and 0; use at most 1 step"):
        config.validate()
    with pytest.raises(UsageError, match="^chain.refine_steps: 5 refinement steps do not fit"):
        generate(GenerateRequest(frames=8, height=64, width=64, chain=config))


def test_table_is_large_enough():
    assert len(CLI_CASES) + len(API_CASES) >= 55
    assert len({c.id for c in CLI_CASES + API_CASES}) == len(CLI_CASES) + len(API_CASES)


@pytest.mark.parametrize("case", case_params(CLI_CASES))
def test_cli_refuses_bad_input(case, world, capsys):
    paths, prev, _ = world
    paths = {**paths, "prev": prev}
    args = [fill(a, paths) for a in case.args]
    argv = ["generate", "--out", prev, *(SMALL if case.defaults else []), *args]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == case.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert fill(case.names, paths) in err, err
    assert err.startswith("error: "), err   # argparse's own said "python -m confiner_core generate: error: argument"
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.err
    assert "wrote" not in captured.out


@pytest.mark.parametrize("case", case_params(API_CASES))
def test_api_refuses_bad_input(case, world):
    paths, prev, _ = world
    kwargs = {"out": prev, "frames": 8, "height": 64, "width": 64,
              **{k: fill(v, paths) for k, v in case.args.items()}}
    with pytest.raises(case.error) as e:
        generate(GenerateRequest(**kwargs), show_progress=False)
    assert case.names in str(e.value)
    assert isinstance(e.value, ValueError)  # UsageError is a ValueError: older callers catching that still work
    # named as a Python caller set it (GenerateRequest's fields), not by the command line's options
    assert "--" not in str(e.value) and not (e.value.option or "").startswith("--"), (str(e.value), e.value.option)
    # a setting of a frozen config is not dropped: its default leaves it unset ("drop chain.matching" could not be
    # done to a ChainConfig)
    assert not re.search(r"\bdrop (chain|long)\.", str(e.value)), str(e.value)
    # and .option is the field itself, for a caller that keys on it (it read 'resume=True')
    assert e.value.option is None or "=" not in e.value.option, e.value.option


def test_debug_switch_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONFINER_DEBUG", "1")
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(tmp_path / "x"), *SMALL, "--frames", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "UsageError" in err and err.strip().splitlines()[-1].startswith("error: --frames")
    monkeypatch.delenv("CONFINER_DEBUG")
    with pytest.raises(SystemExit):
        main(["generate", "--debug", "--out", str(tmp_path / "x"), *SMALL, "--frames", "0"])
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes need Python 3.11")
def test_a_failure_inside_an_experts_network_names_the_expert_on_the_command_line(tmp_path, capsys, monkeypatch):
    """The library notes which expert and call raised (a network's own error names neither); the one-line error
    dropped that note."""
    from confiner_core.embedded import experts as embedded

    def forward(self, x, t, conds):
        raise RuntimeError("expected input to have 16 channels")

    monkeypatch.setattr(embedded.PosteriorMeanExpert, "forward", forward)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(tmp_path / "x"), *SMALL])
    assert e.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: RuntimeError: expected input to have 16 channels \(raised by expert '[^']+' "
                        r"\(PosteriorMeanExpert\) at stage 'control', step t=\d+, on an input of shape \(.*\) "
                        r"\(torch.float32, layout video\): it declares latent space 'embedded' \(4 channels\)\) "
                        r"\(for the traceback: --debug or CONFINER_DEBUG=1\)", line), line


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes need Python 3.11")
@pytest.mark.parametrize("error, frames, fix", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory: you tried to "
                  "allocate 268435456 bytes."), [], "with 8 frames at once: lower --height and --width, or --frames"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), ["--frames", "24"],
     "with 8 frames at once (a segment of the long video): lower --height and --width, or --segment-length")])
def test_out_of_memory_names_the_options_that_size_the_run(tmp_path, capsys, monkeypatch, error, frames, fix):
    """An out-of-memory error at an accepted size ("you tried to allocate 268435456 bytes") named no option."""
    from confiner_core.embedded import experts as embedded

    def forward(self, x, t, conds):
        raise error

    monkeypatch.setattr(embedded.PosteriorMeanExpert, "forward", forward)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(tmp_path / "x"), *SMALL, *frames, "--segment-length", "8"])
    assert e.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"(out of memory on cpu at --height 64 --width 64 {fix}) (for the traceback" in line, line


def test_the_command_line_says_its_version(capsys):
    """There was no --version: a bug report could not say which library made a video (report.json's environment
    holds it, but only of a run)."""
    from pathlib import Path

    from confiner_core import __version__

    tomllib = pytest.importorskip("tomllib")   # (Python 3.11+)

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"confiner_core {__version__}\n"
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__


def test_main_puts_back_the_environment_it_quietened(tmp_path, monkeypatch):
    """main(["generate", ..., "--quiet"]) called from a notebook left the libraries' verbosity and loading bars
    switched off for the rest of the session; a value the user had set stays."""
    import os

    from confiner_core.cli import QUIETING

    for name in QUIETING:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DIFFUSERS_VERBOSITY", "info")
    assert main(["generate", "--out", str(tmp_path / "x"), *SMALL]) == 0
    assert {name: os.environ.get(name) for name in QUIETING} == \
        {"TRANSFORMERS_VERBOSITY": None, "DIFFUSERS_VERBOSITY": "info"}
    with pytest.raises(SystemExit):   # and after a refused run
        main(["generate", "--out", str(tmp_path / "y"), *SMALL, "--frames", "0"])
    assert os.environ.get("TRANSFORMERS_VERBOSITY") is None


def test_cpu_0_is_the_cpu():
    """torch.device("cpu:0") is the CPU as scripts spell it (f"{type}:{index}"); cpu:1 is refused above."""
    from confiner_core.devices import check_device

    check_device("cpu:0")
    check_device("cpu")


def test_a_cpu_run_far_larger_than_the_default_is_warned_of_before_it_starts(tmp_path):
    """A trial's 8192x8192 run sat at 0 of 19 evaluations for minutes with no word of its cost (the progress bar has
    nothing to say before the first evaluation): a CPU run of 16 or more times the default's pixels is warned of at
    validation, in the caller's spelling; the default, 4 times it and a GPU run are not."""
    import warnings

    from confiner_core.errors import ConFinerWarning

    def said(**sizes):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            GenerateRequest(out=str(tmp_path / "out"), **sizes).validate()
        return [str(w.message) for w in caught if issubclass(w.category, ConFinerWarning)]

    assert said() == [] and said(height=512, width=512) == [] and said(frames=255) == []
    assert said(height=8192, width=8192) == [
        "8192x8192 at 16 frames on the CPU is 1024 times the pixels of 256x256 at 16 frames (the default size): "
        "expect at least 1024 times that run's time; a GPU (device='cuda') suits this size, or lower height, width or "
        "frames"]
    assert said(frames=257)[0].startswith("256x256 at 257 frames on the CPU is 16 times the pixels of 256x256 at 16 "
                                          "frames")
    with G.in_command_line_spelling():
        assert "; a GPU (--device cuda) suits this size, or lower --height, --width or --frames" in \
            said(height=1024, width=1024)[0]
    if torch.cuda.is_available():
        assert said(height=1024, width=1024, device="cuda") == []
