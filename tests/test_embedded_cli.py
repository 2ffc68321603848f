"""The embedded default end to end through the command line: files, report, reproducibility, clear errors."""

import argparse
import json
import os
import re

import cv2
import numpy as np
import pytest
import torch

from confiner_core.cli import main
from confiner_core.embedded.experts import embedded_experts, posterior_mean

SMALL = ["--frames", "8", "--height", "96", "--width", "96", "--quiet"]


def run(tmp_path, name, *args):
    out = str(tmp_path / name)
    assert main(["generate", "--out", out, *SMALL, *args]) == 0
    with open(os.path.join(out, "report.json")) as f:
        return out, json.load(f)


def test_the_help_examples_run_as_written(tmp_path, monkeypatch, capsys):
    """``generate --help`` ends with examples on the embedded default: each runs (at 64 x 64 pixels here, for time;
    the size changes no check they pass), and the travelling prompt's keys fall inside its video."""
    import shlex

    from confiner_core.cli import GENERATE_EXAMPLES

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert GENERATE_EXAMPLES in capsys.readouterr().out
    block = GENERATE_EXAMPLES.split("\n\n")[0]
    commands = [shlex.split(line) for line in block.splitlines()[1:]]
    assert [c[:3] for c in commands] == [["python", "-m", "confiner_core"]] * 3
    monkeypatch.chdir(tmp_path)
    for command in commands:
        extra = ["--height", "64", "--width", "64", "--quiet"] if command[3] == "generate" else []
        assert main(command[3:] + extra) == 0, command
    assert sorted(os.listdir(tmp_path)) == ["long", "out"]
    with open(tmp_path / "long" / "report.json") as f:
        assert json.load(f)["frames"] == 128


def test_a_video_longer_than_one_segment_says_it_runs_confiner_long_and_what_a_cut_window_costs(tmp_path, capsys):
    """``--frames 17`` at segment length 16 costs 42 expert evaluations against 16 frames' 19: the command line says
    so before the run, with the lengths that would use every refined frame; a whole number of windows needs no
    such note, and one clip gets no line at all."""
    for frames in (16, 17, 48):
        assert main(["generate", "--out", str(tmp_path / str(frames)), "--frames", str(frames), "--height", "64",
                     "--width", "64", "--quiet"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ConFiner-Long")]
    assert lines == ["ConFiner-Long: 17 frames in 2 windows of 16 on 3 structures (42 expert evaluations); the last "
                     "window is refined whole for its 1 frame: --frames 16 or 32 would use every refined frame",
                     "ConFiner-Long: 48 frames in 3 windows of 16 on 4 structures (61 expert evaluations)"]
    with open(tmp_path / "17" / "report.json") as f:
        assert json.load(f)["total_expert_evaluations"] == 42
    # one window, on two structures: a travelling prompt on one segment's frames
    assert main(["generate", "--out", str(tmp_path / "travel"), "--frames", "16", "--height", "64", "--width", "64",
                 "--quiet", "--prompt", "0: a red ball | 8: a blue ball"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == \
        "ConFiner-Long: 16 frames in 1 window of 16 on 2 structures (23 expert evaluations)"


def test_words_the_embedded_world_does_not_read_are_named_and_what_it_draws_is_what_it_renders(tmp_path, capsys):
    """"a purple elephant dancing" was drawn as a purple ball bouncing, without a word: the command line names the
    words not read and the known words unused, and the report keeps them; the scene it names renders as the prompt
    does."""
    from confiner_core.embedded.world import Scene, read_prompt

    # and the known words it leaves unused: it draws the first colour, shape, motion and background, and a background
    # in its own colours ("red grass" was drawn as green grass, without a word)
    out, report = run(tmp_path, "elephant", "--prompt", "a purple elephant dancing over red grass")
    assert "embedded world: 'a purple elephant dancing over red grass' is drawn as a purple ball bouncing over " \
           "grass (elephant, dancing not read; red unused: it draws the first colour, shape, motion and background " \
           "named)" in capsys.readouterr().out
    assert report["embedded_world"] == [{"prompt": "a purple elephant dancing over red grass",
                                         "draws": "a purple ball bouncing over grass",
                                         "unknown_words": ["elephant", "dancing"], "unused_words": ["red"]}]
    run(tmp_path, "default")
    assert "embedded world" not in capsys.readouterr().out
    # a script hears it as a warning (it was said only in report.json: a researcher's trial)
    from confiner_core.errors import ConFinerWarning
    from confiner_core.generate import GenerateRequest, generate

    with pytest.warns(ConFinerWarning, match=r"^embedded world: 'a corgi running' is drawn as a red ball bouncing "
                                             r"over grass \(corgi, running not read\)"):
        generate(GenerateRequest(prompt="a corgi running", frames=4, height=64, width=64, out=str(tmp_path / "lib")),
                 show_progress=False)
    assert capsys.readouterr().out == ""
    for prompt, unused in (("a purple elephant dancing", []), ("", []), ("a red ball bouncing over green grass", []),
                           ("a blue cube sliding left across the snow at night", ["night"]),
                           ("a ball bouncing left", ["left"]), ("a red ball and a red sphere", []),
                           # a background's colour colours the background, not the object (a green ball was drawn)
                           ("a ball over green grass", []), ("a square sliding over white snow", []),
                           ("a red ball over red grass", ["red"]),
                           ("Green kite, drifting over the desert!", []), ("a ball and a box", ["box"]),
                           ("a white ball over blue sky", []), ("一个红色的球", [])):
        drawn, unknown, not_used = read_prompt(prompt)
        assert not_used == unused, prompt
        assert unknown == [] or prompt.strip(), prompt
        a, b = Scene.from_prompt(prompt), Scene.from_prompt(drawn)
        assert (a.colour, a.shape, a.background, a.motion) == (b.colour, b.shape, b.background, b.motion), prompt
    assert read_prompt("a ball over green grass").draws == "a red ball bouncing over grass"
    assert read_prompt("a square sliding over white snow").draws == "a red square sliding over snow"


def test_a_quoted_tilde_is_the_home_folder_and_a_trailing_slash_prints_once(tmp_path, monkeypatch, capsys):
    """``--out "~/videos"`` (quoted: the shell leaves the tilde) made a folder named "~" in the working folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--out", "~/videos/", *SMALL]) == 0
    assert sorted(os.listdir(tmp_path / "home" / "videos")) == ["frames.png", "report.json", "video.mp4"]
    assert not (tmp_path / "~").exists()
    assert "wrote ~/videos/video.mp4, frames.png, report.json" in capsys.readouterr().out
    # and a Path a script writes it in (only a str was expanded: Path("~/videos") made ./~/videos)
    from pathlib import Path

    from confiner_core.generate import GenerateRequest, generate

    report = generate(GenerateRequest(out=Path("~/clips"), frames=8, height=64, width=64), show_progress=False)
    assert sorted(os.listdir(tmp_path / "home" / "clips")) == ["frames.png", "report.json", "video.mp4"]
    assert not (tmp_path / "~").exists() and report["settings"]["out"] == str(tmp_path / "home" / "clips")


def test_generate_writes_video_sheet_and_report(tmp_path):
    out, report = run(tmp_path, "a", "--prompt", "a blue square sliding over snow", "--seed", "3")
    cap = cv2.VideoCapture(os.path.join(out, "video.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    ok, frame = cap.read()
    assert ok and frame.shape == (96, 96, 3)
    sheet = cv2.imread(os.path.join(out, "frames.png"))
    assert sheet.shape == (2 * 96, 4 * 96, 3)
    assert report["expert_evaluations"] == {"control": 4, "refine": 15}
    assert report["seed"] == 3 and report["frames"] == 8 and report["height"] == 96
    assert set(report["seconds"]) >= {"control", "refine", "total"}
    # the prompt chose the content: a blue object over a bright background
    b, g, r = (sheet[..., i].astype(float) for i in range(3))
    assert ((b - r) > 60).mean() > 0.005 and sheet.mean() > 150


def test_same_seed_same_video_other_seed_differs(tmp_path):
    a, _ = run(tmp_path, "a", "--seed", "1")
    b, _ = run(tmp_path, "b", "--seed", "1")
    c, _ = run(tmp_path, "c", "--seed", "2")
    read = lambda d: cv2.imread(os.path.join(d, "frames.png"))
    assert np.array_equal(read(a), read(b))
    assert not np.array_equal(read(a), read(c))


@pytest.mark.parametrize("args,message", [
    (["--frames", "0"], "--frames must be >= 1"),
    (["--height", "70"], "multiple of 8"),
    (["--te", "1000"], "--te=1000 lies outside"),
    (["--te", "3", "--refine-steps", "9"], "do not fit"),
    (["--spatial", "/nonexistent/sd15"], "--spatial: the spatial expert's path /nonexistent/sd15 does not exist"),
    (["--spatial", "."], "need --control and --spatial"),   # a path that exists, without the other roles
    (["--control", "/nope/c", "--spatial", "/nope/s", "--temporal", "/nope/t"], "does not exist"),
])
def test_bad_arguments_fail_clearly(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(tmp_path / "x"), *SMALL, *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x" / "video.mp4")


def test_every_generate_option_is_explained_with_its_default(capsys):
    """--help explains every option and names each default a user would otherwise have to guess."""
    from confiner_core.cli import build_parser

    generate = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["generate"]
    options = [a for a in generate._actions if a.option_strings and a.dest != "help"]
    assert [a.option_strings[0] for a in options if not a.help] == []
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default out)", "(default cpu)", "(default eager)", "(default sd)", "(default 0.1)",
                  "(default shuffle)", "(default coordinated)", "DDIM eta in refinement (default 0.0)"):
        assert shown in text, shown


def test_unknown_speed_preset_fails_before_loading():
    from confiner_core.generate import GenerateRequest

    with pytest.raises(ValueError, match="^speed must be 'eager', 'lean', 'fast' or 'max', got 'FAST'"):
        GenerateRequest(speed="FAST").validate()


def test_a_request_names_a_generator_seed_and_a_dict_config_with_their_fix():
    """A seeded generator where the request's int seed goes says which int to pass (it printed the generator's
    repr); a dict for ``long``/``chain`` names the field and its class (dataclasses' replace() failed inside)."""
    from confiner_core.generate import GenerateRequest

    with pytest.raises(ValueError, match=r"^seed must be an integer, got a torch.Generator: pass its seed, 7 "
                                         r"\(generator.initial_seed\(\)\)"):
        GenerateRequest(out="unused", seed=torch.Generator().manual_seed(7)).validate()
    for name, cls in (("long", "LongConfig"), ("chain", "ChainConfig")):
        with pytest.raises(ValueError, match=f"^{name} must be a {cls} .* got dict"):
            GenerateRequest(out="unused", **{name: {"gamma": 0.2}})


def test_a_numpy_seed_is_a_seed(tmp_path):
    """NumPy's integers pass as numbers (a seed from a NumPy sweep): validation keeps them as Python's, so torch
    takes the seed, the report holds a number, and the video is the int seed's."""
    from confiner_core.chain import ChainConfig
    from confiner_core.generate import GenerateRequest, generate

    request = GenerateRequest(out=str(tmp_path / "np"), frames=8, height=64, width=64, seed=np.int64(5),
                              chain=ChainConfig(refine_steps=np.int32(5)))
    request.validate()
    assert type(request.seed) is int and type(request.chain.refine_steps) is int
    report = generate(request, show_progress=False)
    assert report["seed"] == 5 and type(report["seed"]) is int
    assert main(["generate", "--out", str(tmp_path / "int"), "--frames", "8", "--height", "64", "--width", "64",
                 "--seed", "5", "--quiet"]) == 0
    assert cv2.imread(str(tmp_path / "np" / "frames.png")).tobytes() == \
        cv2.imread(str(tmp_path / "int" / "frames.png")).tobytes()


def test_a_numpy_float32_is_the_decimal_it_shows():
    """np.float32(0.1) widened to Python's float is 0.10000000149: a gamma equal to the default was refused on a
    single clip as set, and a report would carry the widened number. It is taken as the 0.1 it shows."""
    from confiner_core.chain import ChainConfig
    from confiner_core.generate import GenerateRequest
    from confiner_core.long import LongConfig

    request = GenerateRequest(frames=8, height=64, width=64, long=LongConfig(gamma=np.float32(0.1)),
                              chain=ChainConfig(control_eta=np.float32(0.3), control_sampler="ddim"))
    request.validate()
    assert request.long.gamma == 0.1 and type(request.long.gamma) is float and request.chain.control_eta == 0.3


def test_a_script_is_warned_of_a_prompt_the_video_never_shows(tmp_path):
    """The command line prints the unused entry with the applied schedule; a script gets a ConFinerWarning, and
    the report lists it."""
    from confiner_core.chain import ConFinerWarning
    from confiner_core.generate import GenerateRequest, generate
    from confiner_core.long import LongConfig

    request = GenerateRequest(out=str(tmp_path / "o"), frames=32, height=64, width=64, long=LongConfig(8),
                              prompt="0: a red ball | 10: a blue ball | 12: a yellow ball")
    with pytest.warns(ConFinerWarning, match=r"1 prompt of the schedule is not used.*'a blue ball'"):
        report = generate(request, show_progress=False)
    assert report["prompt_schedule_unused"] == [{"frames": [10, 12], "prompt": "a blue ball"}]


def test_a_request_asked_for_its_plan_before_validation_says_to_validate():
    from confiner_core.generate import GenerateRequest

    request = GenerateRequest(out="unused")
    with pytest.raises(ValueError, match=r"frames is not set yet: call validate\(\) first"):
        request.plan()
    request.validate()
    assert request.frames == 16 and request.plan() is None


def test_a_python_request_takes_the_experts_natural_clip_and_leaves_the_configs_passed_in_alone(tmp_path):
    """From Python as from the command line: no frame count gives the experts' natural clip (17 frames in one
    segment for a 4k+1 space), and settling the defaults fills in the request's own copies, so one ChainConfig
    serves an SD-like (T_e 100) and a flow request (T_e 250) alike."""
    from confiner_core.chain import DEFAULT_TE, ChainConfig
    from confiner_core.generate import GenerateRequest
    from confiner_core.long import LongConfig

    chain, long = ChainConfig(), LongConfig(segment_length=None)
    sd = GenerateRequest(chain=chain, long=long, out=str(tmp_path / "sd"))
    wan = GenerateRequest(chain=chain, long=long, embedded_preset="wan", height=64, width=64,
                          out=str(tmp_path / "wan"))
    default_wan = GenerateRequest(embedded_preset="wan", height=64, width=64, out=str(tmp_path / "wan"))
    for request in (sd, wan, default_wan):
        request.validate()
    assert (sd.frames, sd.long.segment_length, sd.chain.te) == (16, 16, DEFAULT_TE["vp"])
    assert (wan.frames, wan.long.segment_length, wan.chain.te) == (17, 17, DEFAULT_TE["flow"])
    assert (default_wan.frames, default_wan.long.segment_length) == (17, 17) and not default_wan.is_long
    assert chain == ChainConfig() and long == LongConfig(segment_length=None)


def test_a_copy_of_a_validated_request_with_other_experts_settles_their_defaults(tmp_path):
    """A notebook validated an SD request, swapped in Wan experts with dataclasses.replace() and ran at SD's T_e 100
    (and its segment length, refused as one the Wan VAE cuts): validate() had settled them in the request, and the
    copy took them as given. A default validate() settled and nobody changed counts as unset; given values stay."""
    from dataclasses import replace

    from confiner_core.chain import DEFAULT_TE
    from confiner_core.generate import GenerateRequest, generate

    sd = GenerateRequest(out=str(tmp_path / "sd"), height=64, width=64)
    sd.validate()
    assert (sd.frames, sd.long.segment_length, sd.chain.te, sd.chain.matching) == (16, 16, DEFAULT_TE["vp"],
                                                                                  "same_index")
    wan = replace(sd, embedded_preset="wan", out=str(tmp_path / "wan"))
    wan.validate()
    assert (wan.frames, wan.long.segment_length, wan.chain.te) == (17, 17, DEFAULT_TE["flow"])
    assert wan.requested("chain.matching") == "auto"
    # given values are kept: a frame count, and a T_e given on the copied chain, also one equal to the SD default
    # (a trial's T_e 100 written in the replace() that swapped the experts ran at 250)
    given = replace(sd, embedded_preset="wan", frames=33, chain=replace(sd.chain, te=120))
    given.validate()
    assert (given.frames, given.long.segment_length, given.chain.te) == (33, 17, 120) and given.is_long
    same = replace(sd, embedded_preset="wan", chain=replace(sd.chain, te=DEFAULT_TE["vp"]), fps=sd.fps)
    same.validate()
    assert (same.chain.te, same.fps, same.frames) == (DEFAULT_TE["vp"], sd.fps, 17)
    # ... and a chain derived for another setting keeps nothing settled for SD
    derived = replace(sd, embedded_preset="wan", chain=replace(sd.chain, refine_steps=3))
    derived.validate()
    assert (derived.chain.te, derived.chain.refine_steps) == (DEFAULT_TE["flow"], 3)
    import pickle
    assert pickle.loads(pickle.dumps(sd)) == sd   # (the settled values' mark pickles as the plain value)
    # the request validated again keeps what it settled; generate() runs the copy as a fresh Wan request
    sd.validate()
    assert (sd.frames, sd.chain.te) == (16, DEFAULT_TE["vp"])
    report = generate(replace(sd, embedded_preset="wan", out=str(tmp_path / "run")), show_progress=False)
    assert (report["frames"], report["chain"]["te"]) == (17, DEFAULT_TE["flow"])
    assert "_defaults" not in report["settings"]


def test_a_config_cannot_change_under_a_request_holding_it(tmp_path):
    """A sweep that set ``config.te`` between generate() calls ran T_e 100 each time (the request had copied the
    config), with no word: the configs are frozen, and a sweep replaces them."""
    import dataclasses

    from confiner_core.chain import ChainConfig
    from confiner_core.generate import GenerateRequest, generate
    from confiner_core.long import LongConfig

    config = ChainConfig()
    request = GenerateRequest(frames=8, height=64, width=64, chain=config, out=str(tmp_path / "a"))
    for frozen, field in ((config, "te"), (request.chain, "te"), (LongConfig(), "gamma")):
        with pytest.raises(dataclasses.FrozenInstanceError,
                           match=rf"^{type(frozen).__name__} is frozen.*dataclasses\.replace\(config, {field}=50\)$"):
            setattr(frozen, field, 50)
    with pytest.raises(AttributeError, match="ChainConfig has no setting 'T_e'; its settings: control_steps, .* te, "):
        config.T_e = 50
    request.chain = dataclasses.replace(config, te=50)
    assert generate(request, show_progress=False)["refine_timesteps"] == [50, 40, 30, 20, 10]


def test_a_latent_shape_is_refused_for_a_video_its_space_cannot_hold():
    """Rounding 16 frames down to a 4k+1 space's 13, or 70 pixels down to 64, would make another video than asked."""
    from confiner_core.latent_spaces import SD15, WAN21

    assert WAN21.latent_shape(1, 17, 64, 48) == (1, 16, 5, 8, 6)
    assert SD15.latent_shape(2, 16, 64, 48) == (2, 4, 16, 8, 6)
    with pytest.raises(ValueError, match="Wan 2.1 latent space holds 4k\\+1 frames .* use 13 or 17"):
        WAN21.latent_shape(1, 16, 64, 64)
    with pytest.raises(ValueError, match="SD 1.5 latent space: height 70 is not a positive multiple of its spatial "
                                         "factor 8; use 64 or 72"):
        SD15.latent_shape(1, 16, 70, 64)
    with pytest.raises(ValueError, match="width 4 .* use 8$"):
        SD15.latent_shape(1, 16, 64, 4)


def test_embedded_experts_use_three_different_schedules():
    ex = embedded_experts()
    names = {k: e.schedule.name for k, e in ex.items()}
    assert len(set(names.values())) == 3
    assert len({e.latent_space for e in ex.values()}) == 1


def test_evaluate_into_a_reader_that_leaves_early_ends_quietly(tmp_path):
    """``evaluate --json | head -2``: the pipe closed before the scores were written printed "error:
    BrokenPipeError" and exited 1. It exits as a piped command does, 141 (128 + SIGPIPE), and says nothing."""
    import subprocess
    import sys

    out, _ = run(tmp_path, "p")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    read, write = os.pipe()
    os.close(read)   # the reader left before the first score
    done = subprocess.run([sys.executable, "-m", "confiner_core", "evaluate", out, "--json"], stdout=write,
                          stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": root}, timeout=300)
    os.close(write)
    assert (done.returncode, done.stderr.decode()) == (141, "")


def test_evaluate_says_frames_are_a_runs_own_only_beside_its_report(tmp_path, capsys):
    """Any .npy was said to hold frames "(lossless, as the run saved them)", also one no run saved."""
    import shutil

    out, _ = run(tmp_path, "npy", "--save-frames")
    elsewhere = shutil.copy(os.path.join(out, "frames.npy"), tmp_path / "mine.npy")
    capsys.readouterr()
    for path, said in ((os.path.join(out, "frames.npy"), "(lossless, as the run saved them)"),
                       (str(elsewhere), "(lossless)")):
        assert main(["evaluate", path]) == 0
        assert capsys.readouterr().out.splitlines()[0].endswith(said)


def test_posterior_mean_is_exact_bayes():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(3, 5, generator=g)
    x = torch.randn(2, 5, generator=g)
    a, s = 0.8, 0.6
    logp = torch.stack([-((x - a * d) ** 2).sum(1) / (2 * s * s) for d in data], 1)
    expected = torch.softmax(logp, 1) @ data
    assert torch.allclose(posterior_mean(x, a, s, data), expected, atol=1e-5)
    # near-zero noise collapses to the nearest datum
    assert torch.allclose(posterior_mean(a * data[1:2], a, 1e-3, data), data[1:2], atol=1e-4)


def test_evaluate_command_on_generated_video(tmp_path, capsys):
    out, report = run(tmp_path, "e")
    capsys.readouterr()
    assert main(["evaluate", os.path.join(out, "video.mp4"), "--json", "--junctions", "4"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) >= {"subject_consistency", "motion_smoothness", "temporal_flicker", "sharpness",
                           "color_drift", "seam_score"}
    assert 0.5 < scores["motion_smoothness"] <= 1.0 and scores["seam_score"] > 0
    # generate's report carries the same metrics, measured on the frames before mp4 compression
    assert report["metrics"]["motion_smoothness"] == pytest.approx(scores["motion_smoothness"], abs=0.02)
    with pytest.raises(SystemExit):
        main(["evaluate", str(tmp_path / "missing.mp4")])
    # the output folder itself stands for its video (not for a folder of frames holding the contact sheet)
    assert main(["evaluate", out, "--json", "--junctions", "4"]) == 0
    assert json.loads(capsys.readouterr().out) == scores
    # its contact sheet is one image, not a video: refused with where the video is
    with pytest.raises(SystemExit) as e:
        main(["evaluate", os.path.join(out, "frames.png")])
    assert e.value.code == 2 and "is a generate output's contact sheet" in capsys.readouterr().err
    # the same without its report (copied elsewhere, or deleted): still the folder's video
    os.remove(os.path.join(out, "report.json"))
    assert main(["evaluate", out, "--json", "--junctions", "4"]) == 0
    assert json.loads(capsys.readouterr().out) == scores
    with pytest.raises(SystemExit) as e:
        main(["evaluate", os.path.join(out, "frames.png")])
    assert e.value.code == 2 and "is a generate output's contact sheet" in capsys.readouterr().err
    # the report says what the experts were given where the settings left it to the backend
    assert report["settings"]["prompt"] == "" and report["settings"]["refine_cfg"] is None
    assert report["prompt_used"] == "a red ball bouncing over green grass"
    assert report["guidance"] == {"control_cfg": 1.0, "spatial_cfg": 1.0, "temporal_cfg": 1.0}


@pytest.mark.parametrize("extra, evaluations", [([], 19),   # 4 control + 5 coordinated steps of 3
                                               (["--frames", "24", "--prompt", "0: a | 12: b"], 3 * 4 + 2 * 15)])
def test_the_progress_bar_counts_expert_evaluations_as_the_report_does(tmp_path, capsys, extra, evaluations):
    """One unit throughout: the bar ends at the report's expert evaluations (it counted steps, 9/9, where the final
    line and an interrupt's message said 19), for a clip and for ConFiner-Long."""
    out = str(tmp_path / "bar")
    assert main(["generate", "--out", out, *[a for a in SMALL if a != "--quiet"], *extra]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n")
    report = json.load(open(os.path.join(out, "report.json")))
    assert sum(report["expert_evaluations"].values()) == evaluations
    assert re.search(rf"\| {evaluations}/{evaluations} \[", bar), bar[-600:]


def test_the_bar_says_when_vae_calls_between_the_experts_run(tmp_path, capsys):
    """Between two steps of a bridged run the VAEs work (a trial's long Wan run: 10.7 of 19.8 s), which the bar
    showed only as slower steps: it says so, with the calls so far, up to the report's count."""
    out = str(tmp_path / "bridge")
    assert main(["generate", "--out", out, "--embedded", "bridge", "--frames", "9", "--height", "64",
                 "--width", "64"]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n")
    report = json.load(open(os.path.join(out, "report.json")))
    said = [(stage, int(n)) for stage, n in re.findall(r"(\w+) · VAE between the experts \((\d+) calls so far\)", bar)]
    assert said and {stage for stage, _ in said} == set(report["vae_calls"]), bar[-600:]
    assert max(n for _, n in said) == sum(report["vae_calls"].values()) > 0


def test_the_bar_and_the_report_count_timesteps_in_te_units_on_a_flow_expert(tmp_path, capsys):
    """On a flow expert T_e = 250 is sigma 0.25: the bar shows the refinement at t=250, 200, ... (it showed the
    shifted table's positions, 94.47, 72.35, ..., as if --te were ignored) and the report lists them."""
    out = str(tmp_path / "flow")
    assert main(["generate", "--out", out, "--embedded", "wan", "--height", "64", "--width", "64"]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n")
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["chain"]["te"] == 250 and report["refine_timesteps"] == [250, 200, 150, 100, 50]
    shown = re.findall(r"refine t=([\d.]+)", bar)
    assert shown and {float(t) for t in shown} <= {250, 200, 150, 100, 50}, bar[-600:]
    assert re.search(r"control t=1000\b", bar), bar[-600:]   # the control stage starts at sigma 1


@pytest.mark.parametrize("mode, guided", [("temporal", {"temporal_cfg": 3.0}), ("standard", {"spatial_cfg": 3.0})])
def test_the_report_names_the_guidance_of_the_experts_the_mode_evaluates(tmp_path, mode, guided):
    """A one-expert refinement guides that expert alone: --cfg (both refiners') is not reported for the other as if
    it had guided (a cfg of the other alone is refused, tests/test_bad_inputs.py)."""
    _, report = run(tmp_path, mode, "--mode", mode, "--cfg", "3")
    assert report["guidance"] == {"control_cfg": 1.0, **guided}


def test_method_options_reach_the_chain_and_the_report(tmp_path):
    read = lambda d: cv2.imread(os.path.join(d, "frames.png"))
    base, r0 = run(tmp_path, "base", "--seed", "5")
    assert {k: r0["chain"][k] for k in ("structure_noise", "control_spacing", "control_eta", "refine_spacing")} == \
        {"structure_noise": "spatial", "control_spacing": "trailing", "control_eta": 0.0, "refine_spacing": "uniform"}
    assert "long" not in r0 and "long" not in r0["settings"]   # a single clip: ConFiner-Long's settings unread
    assert r0["settings"]["embedded_preset"] == "sd" and "image_mode" not in r0["settings"]
    other, r1 = run(tmp_path, "opts", "--seed", "5", "--structure-noise", "control", "--control-sampler", "ddim",
                    "--control-spacing", "leading", "--control-eta", "0.3", "--refine-spacing", "trailing")
    assert {k: r1["chain"][k] for k in ("structure_noise", "control_sampler", "control_spacing", "control_eta",
                                        "refine_spacing")} == \
        {"structure_noise": "control", "control_sampler": "ddim", "control_spacing": "leading", "control_eta": 0.3,
         "refine_spacing": "trailing"}
    assert not np.array_equal(read(base), read(other))
    # a single clip has no segments to join: the Long options are refused there (tests/test_bad_inputs.py), and
    # reach a long run's report
    _, r2 = run(tmp_path, "long", "--seed", "5", "--frames", "24", "--segment-length", "8", "--coherence-memory",
                "unguided")
    assert r2["long"]["coherence_memory"] == "unguided" and "long" not in r2["settings"]


@pytest.mark.parametrize("known", [True, False])
def test_the_report_records_the_matching_auto_chose(tmp_path, monkeypatch, known):
    """``matching auto`` is reported as what it chose: SD-like spatial with Wan-like temporal experts re-noise at
    the nearest noise level. Where the schedules are unknown before loading (single files without a scheduler
    config), it was recorded as "auto"."""
    import confiner_core.generate as G

    if not known:
        monkeypatch.setattr(G, "expert_schedules", lambda req: {})
    out = str(tmp_path / "bridge")
    assert main(["generate", "--out", out, "--embedded", "bridge", "--frames", "5", "--height", "64", "--width",
                 "64", "--quiet"]) == 0
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["chain"]["matching"] == "nearest"
    assert report["chain"]["matching_requested"] == "auto"   # (an explicit same_index read as auto's choice)


def test_a_bridged_run_times_its_vae_calls_apart(tmp_path, monkeypatch):
    """The report timed the VAE calls between the experts only as part of "refine". Each of the 11 hand-offs
    through the VAEs is made 50 ms slower here: the report's ``vae_seconds`` holds them all, within the run's time."""
    import time

    from confiner_core import experts

    real = experts.bridge

    def slow_bridge(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(experts, "bridge", slow_bridge)
    out = str(tmp_path / "bridge")
    assert main(["generate", "--out", out, "--embedded", "bridge", "--frames", "5", "--height", "64", "--width",
                 "64", "--quiet"]) == 0
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["vae_calls"] == {"refine": 22} and set(report["vae_seconds"]) == {"refine"}
    assert 11 * 0.05 <= report["vae_seconds"]["refine"] < report["seconds"]["refine"] < report["seconds"]["total"]


def test_a_bridged_run_says_what_crosses_the_vaes_and_counts_the_calls(tmp_path, capsys):
    """A run of experts in different latent spaces said only "19 expert evaluations": nothing told that the
    structure and every step's clean estimate crossed the VAEs (most of a tiny run's seconds), and the report's 22
    VAE calls had to be worked out. Said before sampling, counted in the last line, and named in the report."""
    out = str(tmp_path / "bridge")
    assert main(["generate", "--out", out, "--embedded", "bridge", "--frames", "5", "--height", "64", "--width",
                 "64", "--quiet"]) == 0
    printed = capsys.readouterr().out.splitlines()
    report = json.load(open(os.path.join(out, "report.json")))
    assert printed[0] == ("bridged through the VAEs: control in embedded-causal latents -> spatial in embedded latents "
                          "(the structure: 2 VAE calls); spatial in embedded latents <-> temporal in embedded-causal "
                          "latents (the clean estimate over and back: 4 "
                          "VAE calls a step)")
    assert report["vae_calls"] == {"refine": 2 + 4 * 5}
    assert printed[-1].endswith(f"(5 frames, 19 expert evaluations, 22 VAE calls between them in "
                                f"{report['vae_seconds']['refine']:.1f} s, {report['seconds']['total']:.1f} s in all)")
    assert report["bridges"] == ["control in embedded-causal latents -> spatial in embedded latents",
                                 "spatial in embedded latents <-> temporal in embedded-causal latents"]
    # one latent space: nothing said, nothing counted
    assert main(["generate", "--out", str(tmp_path / "one"), *SMALL, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "VAE" not in printed and json.load(open(tmp_path / "one" / "report.json"))["bridges"] == []


@pytest.mark.parametrize("mode", ["standard", "temporal", "alternate"])
def test_a_mode_that_matches_no_timesteps_reports_no_matching(tmp_path, mode):
    """Only coordinated refinement evaluates two experts at one step, on matched timesteps: the others reported the
    paper's "same_index" all the same, which a researcher's ablation read as a setting that applied."""
    out = str(tmp_path / mode)
    assert main(["generate", "--out", out, "--frames", "5", "--mode", mode, "--quiet"]) == 0
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["chain"]["matching"] is None and "temporal_timesteps" not in report
    assert report["chain"]["mode"] == mode


def test_table3_setting_warns_but_runs(tmp_path):
    from confiner_core.chain import ConFinerWarning

    with pytest.warns(ConFinerWarning, match="Table 3") as caught:
        run(tmp_path, "te300", "--te", "300")
    assert len([w for w in caught if issubclass(w.category, ConFinerWarning)]) == 1   # once, not per validation
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConFinerWarning)
        run(tmp_path, "te300_8", "--te", "300", "--control-steps", "8")
        run(tmp_path, "te200", "--te", "200")


def test_a_doubtful_setting_is_warned_at_the_scripts_own_line(tmp_path):
    """A script's warnings point at its generate() call, wherever the library checked the setting (they named a
    line of generate.py or chain.py, which a warnings filter by module or a traceback reader cannot use)."""
    import inspect
    import warnings

    from confiner_core.chain import ChainConfig, ConFinerWarning
    from confiner_core.generate import GenerateRequest, generate

    request = GenerateRequest(frames=8, height=64, width=64, out=str(tmp_path / "out"), chain=ChainConfig(te=300),
                              negative_prompt="blurry")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        generate(request, show_progress=False)
    said = [(w.filename, w.lineno, str(w.message)[:30]) for w in caught if w.category is ConFinerWarning]
    # Table 3 (found by chain.validate_chain), a negative prompt no expert reads at cfg 1 (by generate.bind_experts)
    assert len(said) == 2 and all((file, at) == (__file__, line) for file, at, _ in said), said


def test_the_returned_report_is_the_json_written(tmp_path):
    """A caller's Path (out) and torch.device stayed objects in the returned report: json.dumps(generate(...))
    failed where report.json held text."""
    from confiner_core.generate import GenerateRequest, generate

    report = generate(GenerateRequest(frames=4, height=64, width=64, out=tmp_path / "out", device=torch.device("cpu")),
                      show_progress=False)
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert json.loads(json.dumps(report))["settings"] == written["settings"] == report["settings"]
    assert report["settings"]["out"] == str(tmp_path / "out") and report["settings"]["device"] == "cpu"


def test_the_reports_paths_are_absolute(tmp_path, monkeypatch):
    """A trial rebuilt a request from report.json in another folder: its relative paths named nothing there."""
    from confiner_core.generate import GenerateRequest, generate

    monkeypatch.chdir(tmp_path)
    report = generate(GenerateRequest(frames=4, height=64, width=64, out="clips/a"), show_progress=False)
    assert report["settings"]["out"] == str(tmp_path / "clips" / "a")


def test_network_forwards_are_one_per_network_call(tmp_path):
    """The embedded experts evaluate each conditioning separately: with refinement cfg != 1 every refinement
    evaluation makes two calls, the cfg-1 control stage one."""
    _, r = run(tmp_path, "cfg", "--cfg", "2.0")
    assert r["expert_evaluations"] == {"control": 4, "refine": 15}
    assert r["network_forwards"] == {"control": 4, "refine": 30}


def test_the_temporal_expert_encodes_its_prompt_once_the_control_stage_is_queued(tmp_path, monkeypatch):
    """generate encodes the spatial and control experts' prompts before the first evaluation and the temporal
    expert's at its first evaluation, in the refinement (on a GPU the control stage is queued by then, so the GPU
    no longer waits at the start while the host encodes it), once, with its negative."""
    from confiner_core.embedded.experts import PosteriorMeanExpert
    events = []
    encode, forward = PosteriorMeanExpert.encode, PosteriorMeanExpert.forward
    role = lambda expert: expert.name.split()[0].split("-")[1]   # 'embedded-temporal (...)' -> 'temporal'
    monkeypatch.setattr(PosteriorMeanExpert, "encode",
                        lambda self, prompt: events.append(("encode", role(self))) or encode(self, prompt))
    monkeypatch.setattr(PosteriorMeanExpert, "forward",
                        lambda self, x, t, conds: events.append(("forward", role(self))) or forward(self, x, t, conds))
    run(tmp_path, "order", "--cfg", "2.0")
    first_forward = events.index(("forward", "control"))
    assert {e for e in events[:first_forward]} == {("encode", "spatial"), ("encode", "control")}
    temporal = [i for i, e in enumerate(events) if e == ("encode", "temporal")]
    assert len(temporal) == 2                                      # the prompt and its negative
    assert events[temporal[-1] + 1] == ("forward", "temporal")     # right before its first forward
    assert [e for e in events[:temporal[0]] if e[0] == "forward"].count(("forward", "control")) == 4


def test_progress_bar_says_when_the_first_steps_compile(tmp_path):
    """A compiling preset's progress bar says, until the first step is done, that the first steps compile every
    block (and where they are kept), or that they load the blocks kept by an earlier run; other presets say nothing."""
    from confiner_core.generate import GenerateRequest, compile_note
    assert compile_note(GenerateRequest(speed="lean")) is None
    assert "--compile-dir DIR keeps them" in compile_note(GenerateRequest(speed="fast"))
    folder = tmp_path / "blocks"
    assert "kept in --compile-dir" in compile_note(GenerateRequest(speed="max", compile_dir=str(folder)))
    folder.mkdir()
    (folder / "0123abcd.pt").write_bytes(b"")
    assert compile_note(GenerateRequest(speed="fast", compile_dir=str(folder))) == \
        f"the first steps load the blocks kept in {folder}, or compile those it lacks"   # (another code's: compiled)


def test_the_report_says_what_the_compile_folder_did(tmp_path):
    """A run with --compile-dir said nothing of its blocks: a researcher could not tell a warm start from blocks
    compiled again (after an upgrade, whose kept blocks no longer match). The report holds the process's counts for
    the folder, as the preset's compilation files them."""
    import os

    from confiner_core.diffusers_backend import precompiled as P
    from confiner_core.diffusers_backend.speed import PRESETS, block_store
    from confiner_core.generate import GenerateRequest, compiled_blocks

    if not P.aot_available():
        pytest.skip("this PyTorch has no ahead-of-time compilation to a file")
    folder = str(tmp_path / "blocks")
    assert compiled_blocks(GenerateRequest(speed="lean", compile_dir=folder)) is None
    assert compiled_blocks(GenerateRequest(speed="fast")) is None
    block_store.cache_clear()
    try:
        store = block_store(os.path.abspath(folder), PRESETS["max"].compile_mode, PRESETS["max"].backend)
        store.compiled, store.loaded, store.fallbacks, store.unloadable = 2, 39, ["a block"], []
        assert compiled_blocks(GenerateRequest(speed="max", compile_dir=folder)) == \
            {"compiled": 2, "loaded": 39, "compiled_unkept": 1, "unreadable": 0}
    finally:
        block_store.cache_clear()


def test_contact_sheet_numbers_each_frame_with_its_place_in_the_video(tmp_path):
    from confiner_core.video_io import VideoSink, contact_sheet

    frames = np.full((40, 64, 64, 3), 90, np.uint8)
    with VideoSink(str(tmp_path / "v.mp4"), 8.0, 40) as sink:
        sink.write(frames)
    assert sink.sheet_numbers == [0, 6, 11, 17, 22, 28, 33, 39]   # 8 frames evenly spread over 0..39
    plain, numbered = contact_sheet(sink.sheet), contact_sheet(sink.sheet, numbers=sink.sheet_numbers)
    changed = np.argwhere((plain != numbered).any(axis=2))
    assert len(changed) and (changed[:, 0] % 64 < 32).all() and (changed[:, 1] % 64 < 40).all()   # corners only
    tiles = [numbered[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] for r in range(2) for c in range(4)]
    assert len({t.tobytes() for t in tiles}) == 8   # same frames, different numbers
    assert all((f == 90).all() for f in sink.sheet)   # drawn on copies
    assert contact_sheet(sink.sheet[:1]).shape == (64, 64, 3)         # one frame: one tile, no black ones
    assert contact_sheet(sink.sheet[:3]).shape == (64, 192, 3)
    # readable on light frames too: white on a black box (an outline alone was lost on a trial's snow at 64 px)
    for shade in (20, 235):
        corner = contact_sheet([np.full((64, 64, 3), shade, np.uint8)], numbers=[45])[:10, :12].max(axis=2)
        assert (corner[0] < 40).all() and (corner[:, 0] < 40).all(), corner   # the box's edges
        assert (corner > 150).sum() >= 10, corner                              # its white ink


def test_thumbnail_renderer_commands_pass_the_command_lines_checks(tmp_path, monkeypatch):
    """``tools/render_thumbnails.py`` drives the CLI with each template's settings; every command it would run passes
    the CLI's checks (a prompt schedule the grammar refuses stopped the long template's render unnoticed)."""
    import importlib.util

    from confiner_core.cli import build_parser, request_from_args

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "render_thumbnails.py")
    spec = importlib.util.spec_from_file_location("render_thumbnails", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    commands = []

    def checked(out_dir, *args):
        request = request_from_args(build_parser().parse_args(["generate", "--out", str(tmp_path / "o"), *args]))
        request.validate()                                   # raises UsageError with the CLI's message
        commands.append(args)
        return np.zeros((request.frames, 8, 8, 3), np.uint8)

    monkeypatch.setattr(tool, "generate", checked)
    monkeypatch.setattr(tool, "embedded_a14b", lambda prompt, frames, *a: np.zeros((frames, 8, 8, 3), np.uint8))
    monkeypatch.setattr(tool, "thumbnail", lambda *a, **k: None)
    for render in tool.RENDERERS.values():
        render(str(tmp_path))
    assert len(commands) == 9                                # basic, three modes, two long, wan, two bridges


def test_generate_leaves_the_request_as_it_was(tmp_path):
    """generate() settled frames, fps, T_e and the segment length in the caller's request: reused for a flow preset
    it kept the VP run's T_e 100 (its default is 250) or failed on the first run's 16 frames (Wan-like: 4k+1)."""
    from dataclasses import replace

    from confiner_core.errors import UsageError
    from confiner_core.generate import GenerateRequest, generate

    request = GenerateRequest(height=64, width=64, out=str(tmp_path / "sd"))
    first = generate(request, show_progress=False)
    assert (request.frames, request.fps, request.chain.te, request.long.segment_length) == (None, None, None, None)
    assert (first["frames"], first["settings"]["fps"], first["chain"]["te"]) == (16, 8.0, 100)
    flow = generate(replace(request, embedded_preset="wan-pixel", out=str(tmp_path / "w")), show_progress=False)
    assert (flow["frames"], flow["chain"]["te"]) == (17, 250)
    with pytest.raises(UsageError, match=r"^generate\(\) takes a GenerateRequest .*got dict"):
        generate({"frames": 16})


def test_evaluates_table_says_which_way_each_score_is_better(tmp_path, capsys):
    """The table gave numbers alone: a reader had to know that seam scores aim at 1 and color drift at 0. Each row
    says it, as README's metrics table does (and an undefined score says why it is missing)."""
    out, _ = run(tmp_path, "long", "--frames", "24", "--segment-length", "8")
    capsys.readouterr()
    assert main(["evaluate", out]) == 0
    source, junctions, header, *rows = capsys.readouterr().out.splitlines()
    assert source == f"{os.path.join(out, 'video.mp4')}: 24 frames"   # what was read: the run's video
    assert junctions.startswith("junctions: the run's report.json (")
    assert header.split() == ["metric", "value", "better"]
    said = {row.split()[0]: row.split(None, 2)[2] for row in rows}
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    for name, better in re.findall(r"^\| (\w+) \| .* \| (higher|lower|→ 1) \|$", readme, re.M):
        if name in said:
            assert said[name].replace("->", "→") == better, (name, said[name])
    assert said["seam_score"] == "-> 1" and said["color_drift"] == "lower" and len(said) >= 10
    clip, _ = run(tmp_path, "clip")   # one clip: no junctions for a seam score
    capsys.readouterr()
    assert main(["evaluate", clip]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split(None, 2)[1:] == \
        ["n/a", "-> 1 (needs junctions and ordinary frame pairs besides them)"]


def test_evaluates_junctions_outside_the_video_are_refused_by_the_option(tmp_path, capsys):
    """Every other error names its option; junctions past the video said "error: junctions must lie in ..."."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(8):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((16, 16, 3), 20 * i, np.uint8))
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(folder), "--junctions", "4", "9"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: --junctions: junctions must lie in [1, 7] for 8 frames")
    assert main(["evaluate", str(folder), "--junctions", "4", "4", "2", "--json"]) == 0   # any order, repeats once
    assert json.loads(capsys.readouterr().out)["seam_score"] is not None


def test_evaluate_of_a_truncated_video_says_one_line(tmp_path):
    """FFmpeg's own "moov atom not found" came on the terminal before evaluate's one-line error (a process of its
    own: FFmpeg writes to the file descriptor, and reads its log level when OpenCV opens its first video)."""
    import subprocess
    import sys

    out, _ = run(tmp_path, "whole")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(open(os.path.join(out, "video.mp4"), "rb").read()[:3000])
    done = subprocess.run([sys.executable, "-m", "confiner_core", "evaluate", str(cut)], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: cannot read any frames from {str(cut)!r}: it is no video OpenCV or "
                                  f"imageio can decode (not a video, or one cut short") and done.stderr.count("\n") == 1


def test_evaluate_reads_a_long_runs_junctions_from_its_report(tmp_path, capsys):
    """`evaluate OUT` of a ConFiner-Long output gave no seam score unless --junctions was typed: the report holds
    them. Given, --junctions still wins."""
    out = tmp_path / "long"
    assert main(["generate", "--frames", "40", "--height", "64", "--width", "64", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    plan = json.loads((out / "report.json").read_text())["segment_plan"]
    assert main(["evaluate", str(out), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert all(scores[k] is not None for k in ("seam_score", "seam_score_windows", "seam_score_structures"))
    from confiner_core import metrics

    frames = metrics.read_video(str(out / "video.mp4"))
    every = sorted(set(plan["window_junctions"]) | set(plan["structure_junctions"]))
    assert scores["seam_score"] == pytest.approx(metrics.seam_score(frames, every))
    assert main(["evaluate", str(out), "--json", "--junctions", "8"]) == 0
    typed = json.loads(capsys.readouterr().out)
    assert typed["seam_score"] == pytest.approx(metrics.seam_score(frames, [8])) and "seam_score_windows" not in typed
    # the text says where the junctions came from (the video beside the report reads it too; typed ones replace it)
    for args, said in (([str(out)], f"junctions: the run's report.json ({len(plan['window_junctions'])} between "
                                    f"windows, {len(plan['structure_junctions'])} between structures)"),
                       ([str(out / "video.mp4")], "junctions: the run's report.json ("),
                       ([str(out), "--junctions", "8"], "junctions: as given (--junctions), not the run's "
                                                        "report.json's")):
        assert main(["evaluate", *args]) == 0
        assert capsys.readouterr().out.split("\n")[1].startswith(said), args


def test_a_travelling_prompts_changes_are_scored_apart_in_the_report_and_by_evaluate(tmp_path, capsys):
    """The report names the junctions where the prompt changes, and both the report's metrics and `evaluate OUT`
    score the seams without them: the seam scores equal those of the seams alone, computed here from the
    consecutive-frame differences of the frames read back."""
    from confiner_core import metrics

    out = tmp_path / "travel"
    assert main(["generate", "--frames", "64", "--height", "64", "--width", "64", "--quiet", "--out", str(out),
                 "--prompt", "0: a red ball bouncing | 32: a blue ball bouncing"]) == 0
    report = json.loads((out / "report.json").read_text())
    plan = report["segment_plan"]
    assert plan["prompt_change_junctions"] == [24, 32]
    assert report["metrics"]["seam_score_prompt_changes"] is not None
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    frames = metrics.read_video(str(out / "video.mp4"))
    d = np.abs(frames[1:].astype(np.float64) - frames[:-1]).mean(axis=(1, 2, 3))
    changes = {24, 32}
    seams = sorted((set(plan["window_junctions"]) | set(plan["structure_junctions"])) - changes)
    motion = [t for t in range(1, len(frames)) if t not in set(seams) | changes]
    ratio = lambda cuts: (d[[t - 1 for t in cuts]].mean() + 1e-3) / (d[[t - 1 for t in motion]].mean() + 1e-3)
    assert scores["seam_score"] == pytest.approx(ratio(seams))
    assert scores["seam_score_prompt_changes"] == pytest.approx(ratio(sorted(changes)))
    assert set(report["metrics"]) - {"undefined"} == set(scores) - {"undefined"}   # evaluate gives the report's


def test_decode_frames_without_a_codec_says_what_it_needs():
    """An expert of one's own has no VAE unless given one: decode_frames raised a bare AttributeError."""
    import torch

    from confiner_core.generate import decode_frames

    with pytest.raises(TypeError, match=r"^decode_frames needs the VAE of the latent's space, a Codec \(an expert's "
                                        r"\.codec.*got None$"):
        decode_frames(torch.zeros(1, 4, 2, 8, 8), None)


def test_the_reports_expert_paths_are_absolute_as_its_settings_are(tmp_path, monkeypatch):
    """report.json held settings.control absolute beside experts.spatial.source as typed (``../tiny/sd``)."""
    from confiner_core.generate import described

    (tmp_path / "sd").mkdir()
    (tmp_path / "vae").mkdir()
    monkeypatch.chdir(tmp_path)

    class Expert:
        def describe(self):
            return {"class": "X", "source": "sd", "vae": "vae", "name": "spatial"}

    said = described(Expert())
    assert said == {"class": "X", "source": str(tmp_path / "sd"), "vae": str(tmp_path / "vae"), "name": "spatial"}


def test_a_request_given_a_diffusers_or_nested_settings_name_names_the_field_meant():
    """GenerateRequest(num_frames=8) met the dataclass's bare "unexpected keyword argument" (a trial)."""
    import dataclasses

    from confiner_core.generate import GenerateRequest

    for given, meant in (({"num_frames": 8}, "num_frames -> frames"), ({"guidance_scale": 5}, "-> refine_cfg"),
                         ({"te": 250}, "te -> chain.te"), ({"segment_length": 8}, "-> long.segment_length"),
                         ({"framse": 8}, "framse -> frames")):
        with pytest.raises(TypeError, match="GenerateRequest has no setting") as e:
            GenerateRequest(**given)
        assert meant in str(e.value), (given, str(e.value))
    request = GenerateRequest(frames=8)   # the fields themselves, and dataclasses' copies, as before
    assert dataclasses.replace(request, height=64).frames == 8 and request.frames == 8


def test_a_video_wider_than_it_is_tall_keeps_its_height_and_width(tmp_path):
    """Every other test size is square: a swapped height and width in the noise's shape would pass them all."""
    import numpy as np

    from confiner_core.generate import GenerateRequest, generate

    generate(GenerateRequest(out=str(tmp_path / "o"), frames=8, height=64, width=96, save_frames=True),
             show_progress=False)
    assert np.load(tmp_path / "o" / "frames.npy").shape == (8, 64, 96, 3)


@pytest.mark.parametrize("height, width", [(96, 192), (192, 96)])
def test_the_embedded_ball_is_round_in_a_frame_of_any_shape(tmp_path, height, width):
    """The world drew its disc in fractions of the height and of the width: a trial's ball at 128x256 was 30x59 px, at
    256x128 57x28 (61x60 at 256x256). Measured on the lossless frames: the red pixels' extent in each direction."""
    out, _ = run(tmp_path, f"{height}x{width}", "--height", str(height), "--width", str(width), "--save-frames")
    frame = np.load(os.path.join(out, "frames.npy"))[0].astype(int)
    red = (frame[..., 0] > frame[..., 1] + 25) & (frame[..., 0] > frame[..., 2] + 40)   # (over green grass)
    rows, cols = np.nonzero(red)
    tall, wide = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    # (before: 27x53 and 49x26 px; now 22x21 and 24x22, a disc of about 0.28 of the shorter side, blurred)
    assert abs(tall - wide) <= 0.2 * max(tall, wide) and min(tall, wide) >= 0.15 * min(height, width), (tall, wide)
