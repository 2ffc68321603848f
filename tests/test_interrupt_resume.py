"""Nothing lost: Ctrl-C and failures leave the previous outputs byte-identical and no temporary files; an
interrupted ConFiner-Long run resumes from its last finished window to the same bytes as an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
import torch

from confiner_core.cli import main
from confiner_core.embedded.experts import PosteriorMeanExpert
from confiner_core.errors import ConFinerWarning, interrupts_held
from confiner_core.experts import EvaluationLog
from confiner_core.outputs import is_temp
from confiner_core.resume import RESUME_FOLDER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREVIOUS = {"video.mp4": b"previous video bytes", "frames.png": b"previous sheet", "report.json": b'{"previous": 1}'}
LONG = ["--frames", "48", "--segment-length", "8", "--height", "64", "--width", "64", "--seed", "5",
        "--prompt", "0: a red ball bouncing over grass | 24: a blue ball bouncing over snow"]


def previous_outputs(folder) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, data in PREVIOUS.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def outputs(folder, names=tuple(PREVIOUS)) -> dict:
    return {name: open(os.path.join(folder, name), "rb").read() for name in names}


MEDIA = ("video.mp4", "frames.png")  # a resumed run's report differs in timings and says that it resumed


def temp_files(folder) -> list:
    return [os.path.join(r, f) for r, ds, fs in os.walk(folder) for f in fs + ds if is_temp(f)]


class Run:
    """``python -m confiner_core generate ...`` in a subprocess, its stderr collected as it arrives."""

    def __init__(self, args, cwd):
        env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
        env.pop("CONFINER_DEBUG", None)
        # SIGINT handled as in a terminal even when the tests run in a background job, whose children start with
        # it ignored (Python then installs no KeyboardInterrupt handler and the run would not stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "confiner_core", "generate", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.err = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            self.err += chunk

    def wait_for(self, ready, what: str, deadline_s: float = 300) -> None:
        """Poll until ``ready()``; a process that ends first fails the test (it was not interrupted mid-run)."""
        stop = time.monotonic() + deadline_s
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (rc {self.proc.returncode}) before {what}: {self.err.decode()[-2000:]}")
            if time.monotonic() > stop:
                self.proc.kill()
                pytest.fail(f"no {what} within {deadline_s} s")
            time.sleep(0.005)

    def interrupt(self, sig: int = signal.SIGINT) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out = self.proc.stdout.read().decode()
        rc = self.proc.wait(timeout=120)
        self.reader.join(timeout=10)
        return rc, out, self.err.decode()


def test_ctrl_c_mid_run_exits_130_and_keeps_previous_outputs(tmp_path):
    out = tmp_path / "out"
    previous_outputs(out)
    run = Run(["--out", str(out), "--frames", "16", "--prompt", "a yellow diamond circling over sky"], tmp_path)
    # tqdm reports finished expert evaluations ("| 2/19"), the unit of the interrupt's message: interrupt once
    # sampling is under way, before it ends
    run.wait_for(lambda: re.search(rb"\| ([1-9]|1[0-5])/19 ", run.err), "a sampling step")
    rc, stdout, stderr = run.interrupt()
    assert rc == 130, stderr
    last = stderr.replace("\r", "\n").strip().splitlines()[-1]
    m = re.fullmatch(r"interrupted after (\d+) of 19 expert evaluations; nothing written", last)
    assert m and 1 <= int(m.group(1)) < 19, last
    assert "Traceback" not in stderr and "wrote" not in stdout
    assert outputs(out) == PREVIOUS and sorted(os.listdir(out)) == sorted(PREVIOUS)


def test_ctrl_c_while_the_command_imports_torch_is_one_line_and_130(tmp_path):
    """Ctrl-C in the first seconds lands in the imports (torch, the experts' libraries), before ``main``: the same
    one line and exit code as later, no traceback. The interrupt is raised by an import hook at torch's import."""
    hook = ("import sys, runpy\n"
            "class Hook:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Hook())\n"
            "sys.argv = ['confiner_core', 'generate', '--out', sys.argv[1]]\n"
            "runpy.run_module('confiner_core', run_name='__main__', alter_sys=True)\n")
    proc = subprocess.run([sys.executable, "-c", hook, str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "interrupted; nothing written" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                             # timeout, kill, a batch scheduler: it died on the spot, its
                                             # temporary video left in --out for good
                                             (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_a_signal_during_long_run_then_resume_is_bit_identical(tmp_path, sig, code, said):
    full = tmp_path / "full"
    assert main(["generate", "--out", str(full), "--quiet", *LONG]) == 0
    reference = outputs(full, MEDIA)
    part = tmp_path / "part"
    previous_outputs(part)
    state = part / RESUME_FOLDER / "state.json"
    run = Run(["--out", str(part), "--quiet", *LONG], tmp_path)
    run.wait_for(lambda: state.is_file() and json.loads(state.read_text())["next_window"] >= 2, "two finished windows")
    rc, stdout, stderr = run.interrupt(sig)
    assert rc == code, stderr
    last = stderr.strip().splitlines()[-1]
    m = re.fullmatch(said + r" after (\d+) of (\d+) expert evaluations; no video written "
                     r"\((\d) of 6 windows kept, with (\d+) expert evaluations: rerun with --resume\)", last)
    assert m and int(m.group(2)) == 7 * 4 + 6 * 15 and 2 <= int(m.group(3)) < 6, last
    assert "Traceback" not in stderr
    assert outputs(part) == PREVIOUS and temp_files(part) == []
    kept = int(m.group(3))
    # and what a process killed outright leaves (SIGKILL): the next run into the folder removes it
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (part / f".video.{int(ended.stdout)}-0123abcd.partial.mp4").write_bytes(b"half a video")

    assert main(["generate", "--out", str(part), "--quiet", "--resume", *LONG]) == 0
    assert outputs(part, MEDIA) == reference  # byte for byte; the report is compared below
    assert not (part / RESUME_FOLDER).exists() and temp_files(part) == []
    a, b = json.load(open(full / "report.json")), json.load(open(part / "report.json"))
    assert b["resumed_from_window"] == kept
    # the evaluations the interruption said were kept are the ones the resumed report counts before it (an unfinished
    # window's are made again: the two counts disagreed without a word)
    assert b["evaluations_before_resume"] == int(m.group(4)) <= int(m.group(1))
    # the report counts the video's evaluations, and says how many the interrupted process had made
    assert 0 < b["evaluations_before_resume"] < b["total_expert_evaluations"] == a["total_expert_evaluations"]
    assert a["metrics"] == b["metrics"] and a["expert_evaluations"] == b["expert_evaluations"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("long", [False, True])
def test_a_signal_during_the_outputs_commit_is_held_until_every_file_is_this_runs(tmp_path, monkeypatch, capsys,
                                                                                  sig, long):
    """Ctrl-C between two of the commit's moves left a trial's folder with this run's video beside the last run's
    report, said "nothing written", and (ConFiner-Long) kept the resume state of a finished run. The commit and the
    state's removal are held as one step: every file is this run's, no state is left, and the line says so."""
    import confiner_core.outputs as O

    args = ["--quiet", "--seed", "7"] + (LONG[:-4] + ["--prompt", "0: a red ball | 24: a blue ball"] if long else [])
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["generate", "--out", str(full), *args]) == 0
    assert main(["generate", "--out", str(part), *[a if a != "7" else "8" for a in args]]) == 0   # another run's
    real, moves = os.replace, []

    def replace_then_signal(src, dst):
        real(src, dst)
        if os.path.dirname(dst) == str(part):   # (not the resume state's own files)
            moves.append(dst)
            if len(moves) == 1:   # after the first output: the others still the last run's
                signal.raise_signal(sig)

    monkeypatch.setattr(O.os, "replace", replace_then_signal)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(part), *args])
    assert e.value.code == (130 if sig == signal.SIGINT else 143) and len(moves) == 3   # video, sheet, report
    said = "interrupted" if sig == signal.SIGINT else "stopped by SIGTERM"
    assert capsys.readouterr().err.strip().endswith(f"{said} once the run had finished: {part} holds its outputs")
    assert outputs(part, MEDIA) == outputs(full, MEDIA)
    assert json.loads((part / "report.json").read_text())["seed"] == 7
    assert sorted(os.listdir(part)) == sorted(os.listdir(full)) and temp_files(part) == []   # no resume state


def _interrupt_at(monkeypatch, evaluation: int):
    real = EvaluationLog.record

    def record(self, forwards):
        real(self, forwards)
        if sum(self.evaluations.values()) == evaluation:
            raise KeyboardInterrupt

    monkeypatch.setattr(EvaluationLog, "record", record)
    return real


@pytest.mark.parametrize("evaluation,extra", [
    (29, []),  # inside window 1's control pass (4 + 4 + 15 + 4 + 2): coherence guidance memory restored
    (70, ["--noise-init", "freenoise", "--freenoise-window", "8", "--freenoise-stride", "2", "--gamma", "0",
          "--no-stagger"]),  # mid-refinement of window 3 (4 + 15 per window)
    (48, ["--color-anchor"]),  # inside window 2: colour anchoring's reference restored
])
def test_interrupt_inside_a_window_resumes_identically(tmp_path, monkeypatch, capsys, evaluation, extra):
    args = ["--quiet", *LONG, *extra]
    assert main(["generate", "--out", str(tmp_path / "full"), *args]) == 0
    real = _interrupt_at(monkeypatch, evaluation)
    part = tmp_path / "part"
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(part), *args])
    assert e.value.code == 130
    assert f"interrupted after {evaluation} of" in capsys.readouterr().err
    assert sorted(os.listdir(part)) == [RESUME_FOLDER] and temp_files(part) == []
    monkeypatch.setattr(EvaluationLog, "record", real)
    assert main(["generate", "--out", str(part), "--resume", *args]) == 0
    assert outputs(part, MEDIA) == outputs(tmp_path / "full", MEDIA)


def test_saved_frames_are_lossless_resume_whole_and_read_by_evaluate(tmp_path, monkeypatch, capsys):
    """``--save-frames`` writes every frame lossless: video.mp4's codec moves pixels by tens of grey levels, so
    two runs compared through it differ where they do not. The file's frames score exactly the report's metrics
    (computed on the frames before the encoder), a run interrupted and resumed adds it as --resume rewrites the
    video, and ``evaluate`` reads it in place of the mp4 where the folder's report says the run saved it."""
    import json

    import numpy as np

    from confiner_core.metrics import evaluate as metrics_of, read_video

    args = ["--quiet", *LONG]
    full = tmp_path / "full"
    assert main(["generate", "--out", str(full), "--save-frames", *args]) == 0
    assert ", frames.png, frames.npy, report.json  (48 frames" in capsys.readouterr().out
    frames = np.load(full / "frames.npy")
    report = json.loads((full / "report.json").read_text())
    assert frames.shape == (48, 64, 64, 3) and frames.dtype == np.uint8 and report["settings"]["save_frames"]
    assert np.abs(read_video(str(full / "video.mp4")).astype(int) - frames).max() > 5   # the codec moved pixels
    assert main(["evaluate", str(full)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{full / 'frames.npy'}: 48 frames (lossless, as the run " \
                                                      f"saved them)"
    assert main(["evaluate", "--json", str(full)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert {k: scores[k] for k in report["metrics"] if k in scores} == \
        {k: v for k, v in report["metrics"].items() if k in scores and k != "undefined"}
    real = _interrupt_at(monkeypatch, 50)
    part = tmp_path / "part"
    with pytest.raises(SystemExit):
        main(["generate", "--out", str(part), *args])
    monkeypatch.setattr(EvaluationLog, "record", real)
    assert main(["generate", "--out", str(part), "--resume", "--save-frames", *args]) == 0
    assert (part / "frames.npy").read_bytes() == (full / "frames.npy").read_bytes()
    # a later run without it removes the old file (it would pass for this run's frames); evaluate reads the video
    assert main(["generate", "--out", str(part), *args, "--seed", "6"]) == 0
    capsys.readouterr()
    assert not (part / "frames.npy").exists()
    assert main(["evaluate", "--json", str(part)]) == 0
    from_mp4 = json.loads(capsys.readouterr().out)
    assert from_mp4["sharpness"] == pytest.approx(metrics_of(read_video(str(part / "video.mp4")))["sharpness"])
    # an interrupted run without it leaves the earlier run's outputs as they were, its frames.npy included
    saved = (full / "frames.npy").read_bytes()
    _interrupt_at(monkeypatch, 5)
    with pytest.raises(SystemExit):
        main(["generate", "--out", str(full), *args, "--seed", "7"])
    assert (full / "frames.npy").read_bytes() == saved


def test_a_resumed_bridged_run_reports_the_whole_videos_counts(tmp_path, monkeypatch, capsys):
    """The report of a resumed run counts the whole video: the finished windows' evaluations, forwards and VAE calls
    between the experts come back from the resume state (the embedded ``bridge`` experts cross latent spaces at
    every window). Their seconds are this process's: the last line says so."""
    args = ["--quiet", "--embedded", "bridge", "--frames", "45", "--segment-length", "9", "--height", "64", "--width",
            "64", "--seed", "5"]
    assert main(["generate", "--out", str(tmp_path / "full"), *args]) == 0
    real = _interrupt_at(monkeypatch, 50)   # in the third of five windows
    with pytest.raises(SystemExit):
        main(["generate", "--out", str(tmp_path / "part"), *args])
    monkeypatch.setattr(EvaluationLog, "record", real)
    capsys.readouterr()
    assert main(["generate", "--out", str(tmp_path / "part"), "--resume", *args]) == 0
    a, b = (json.load(open(tmp_path / run / "report.json")) for run in ("full", "part"))
    assert f"VAE calls between them in {b['vae_seconds']['refine']:.1f} s after the resume, " in \
        capsys.readouterr().out.splitlines()[-1]
    assert b["resumed_from_window"] == 2
    assert b["expert_evaluations"] == a["expert_evaluations"] and b["network_forwards"] == a["network_forwards"]
    # the calls made for the video: the resumed run decodes the structure it continues from once more
    assert b["vae_calls"] == {"refine": a["vae_calls"]["refine"] + 1} and a["vae_calls"]["refine"] > 10


def _interrupted_state(tmp_path, monkeypatch, args: list) -> tuple:
    """A long run of ``args`` interrupted at evaluation 29 into tmp_path/part: the folder, its state.json's path and
    the state read from it (to edit as another version would have written it)."""
    real = _interrupt_at(monkeypatch, 29)
    part = tmp_path / "part"
    with pytest.raises(SystemExit):
        main(["generate", "--out", str(part), *args])
    monkeypatch.setattr(EvaluationLog, "record", real)
    path = part / RESUME_FOLDER / "state.json"
    return part, path, json.loads(path.read_text())


def test_a_resume_without_the_runs_save_frames_says_it_writes_no_frames_npy(tmp_path):
    """--save-frames is an output, not a setting a resume must share: a resume that left it out finished without
    frames.npy and without a word (a trial). It is kept with the state and the resume says so; one that adds it, or
    keeps it, says nothing."""
    import warnings

    from confiner_core.generate import GenerateRequest
    from confiner_core.long import LongConfig, LongState

    def request(**extra) -> GenerateRequest:
        return GenerateRequest(frames=24, height=64, width=64, long=LongConfig(segment_length=8), out=str(tmp_path),
                               **extra)
    started = request(save_frames=True)
    started.validate()
    store = started.resume_store()
    store.start()
    store.save_window(0, torch.zeros(1, 4, 2, 8, 8))
    store.save_state(LongState(1), 3)
    with pytest.warns(ConFinerWarning, match=r"^resume=True: the interrupted run was started with save_frames=True, "
                                             r"and this resume writes no frames\.npy: add save_frames=True to write it"):
        request(resume=True).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConFinerWarning)
        request(resume=True, save_frames=True).validate()


def test_a_resume_naming_the_same_checkpoints_another_way_is_the_same_run(tmp_path, monkeypatch):
    """A run started with relative checkpoint paths resumes with the same folders named absolutely, with a trailing
    slash or through a link (a trial was refused as "other settings" and told to delete its finished windows); another
    folder is still refused, by its option."""
    from confiner_core.errors import UsageError
    from confiner_core.generate import GenerateRequest
    from confiner_core.long import LongConfig, LongState

    for name in ("wan", "sd", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "wan")
    monkeypatch.chdir(tmp_path)

    def request(control, spatial="sd", **extra) -> GenerateRequest:   # (settings only: nothing is loaded)
        return GenerateRequest(control=control, spatial=spatial, temporal=control, frames=24, height=64, width=64,
                               long=LongConfig(segment_length=8), out=str(tmp_path / "out"), **extra)
    store = request("wan").resume_store()
    store.start()
    store.save_window(0, torch.zeros(1, 4, 2, 8, 8))
    store.save_state(LongState(1), 3)
    for control, spatial in ((str(tmp_path / "wan"), str(tmp_path / "sd")), ("wan/", "./sd"), ("link", "sd")):
        request(control, spatial, resume=True).resume_store().check()
    with pytest.raises(UsageError, match=r"used other settings \(--control: '[^']*/wan' -> '[^']*/other'; "
                                         r"--temporal: '[^']*/wan' -> '[^']*/other'\)"):
        request("other", resume=True).resume_store().check()


def test_a_run_interrupted_before_a_setting_existed_resumes_while_it_is_at_its_default(tmp_path, monkeypatch):
    """A setting added later (``image_mode``, this version's) is absent from a state an earlier version stored: at
    the value those runs were made with the run resumes (it was refused as "other settings"); at another, refused."""
    from confiner_core.cli import build_parser, request_from_args
    from confiner_core.errors import UsageError
    from confiner_core.generate import ADDED_SETTINGS
    from confiner_core.resume import ResumeStore

    args = ["--quiet", *LONG]
    part, path, state = _interrupted_state(tmp_path, monkeypatch, args)
    for name in ADDED_SETTINGS:   # as an earlier version wrote it
        del state["settings"][name]
    path.write_text(json.dumps(state))
    other = request_from_args(build_parser().parse_args(["generate", "--out", str(tmp_path / "new"), *args]))
    other.validate()
    other.image_mode = "pixel_frames"   # (which the embedded experts refuse: the stored settings alone are compared)
    with pytest.raises(UsageError, match=r"used other settings \(image_mode: 'latent_frames' -> 'pixel_frames'\)"):
        ResumeStore(str(part), other.run_settings(), ADDED_SETTINGS).check()
    assert main(["generate", "--out", str(part), "--resume", *args]) == 0


def test_a_resumed_run_keeps_the_frame_rate_it_started_with(tmp_path, monkeypatch, capsys):
    """The frame rate's default comes from the experts since 2026-12-05 (a Wan run's was 8, now 16): a run
    interrupted under another default resumes without --fps (it was refused as "other settings"), at its own rate;
    an --fps given is compared as every setting is."""
    args = ["--quiet", *LONG]
    part, path, state = _interrupted_state(tmp_path, monkeypatch, args)
    assert state["settings"]["fps"] == 8.0
    state["settings"]["fps"] = 12.0   # as a run made under another default stored it
    path.write_text(json.dumps(state))
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(part), "--resume", "--fps", "8", *args])
    assert e.value.code == 2 and "(--fps: 12.0 -> 8.0)" in capsys.readouterr().err
    assert main(["generate", "--out", str(part), "--resume", *args]) == 0
    assert json.loads((part / "report.json").read_text())["settings"]["fps"] == 12.0


def _resumed_with_a_changed_state(tmp_path, monkeypatch, args, key, is_this_process, first, warned):
    """An interrupted run whose state holds this process's value under ``key`` (``is_this_process(value)``), changed
    to ``first`` (as a first process of other threads or code kept it), resumed and interrupted again after a window:
    the resume warns (``warned``) and the state keeps the first process's value. Returns the folder, the state's path
    and the state."""
    part, path, state = _interrupted_state(tmp_path, monkeypatch, args)
    assert is_this_process(state[key]), state[key]
    state[key] = first
    path.write_text(json.dumps(state))
    real = _interrupt_at(monkeypatch, 45)
    with pytest.warns(ConFinerWarning, match=warned), pytest.raises(SystemExit):
        main(["generate", "--out", str(part), "--resume", *args])
    monkeypatch.setattr(EvaluationLog, "record", real)
    resumed = json.loads(path.read_text())
    assert resumed["next_window"] > state["next_window"] and resumed[key] == first
    return part, path, resumed


def test_a_run_resumed_on_another_cpu_thread_count_warns(tmp_path, monkeypatch, capsys):
    """A 2-thread run resumed on 1 thread went on without a word (its windows and the new ones may round
    differently); the state keeps the thread count, and a resume on another warns, naming how to match it."""
    args = ["--quiet", *LONG]
    first = torch.get_num_threads() + 3   # as a run on more threads stored it
    warned = rf"used {first} CPU threads and this one uses {torch.get_num_threads()}.*OMP_NUM_THREADS={first}"
    part, path, resumed = _resumed_with_a_changed_state(tmp_path, monkeypatch, args, "cpu_threads",
                                                        lambda threads: threads == torch.get_num_threads(), first,
                                                        warned)
    with pytest.warns(ConFinerWarning, match=warned):
        assert main(["generate", "--out", str(part), "--resume", *args]) == 0
    report = json.loads((part / "report.json").read_text())
    assert report["cpu_threads_before_resume"] == first and report["environment"]["cpu_threads"] != first


def test_a_run_resumed_by_other_code_warns(tmp_path, monkeypatch, capsys):
    """The windows an interrupted run kept were made by its code; a resume after an upgrade (another PyTorch, or
    this library's source changed under one version number) made the rest with other code without a word. The state
    keeps the first process's versions and source digest, and a resume by other code warns, naming the change; a
    state from before versions were kept resumes in silence."""
    import warnings

    from confiner_core import source_digest
    from confiner_core.generate import code_changes, versions

    args = ["--quiet", *LONG]
    first = dict(versions(), torch="2.0.0", **{"confiner_core source": "0123456789abcdef"})
    warned = rf"other code \(torch 2\.0\.0 -> {re.escape(torch.__version__)}; confiner_core source 0123456789abcdef -> "
    part, path, resumed = _resumed_with_a_changed_state(
        tmp_path, monkeypatch, args, "versions",
        lambda kept: kept["torch"] == torch.__version__ and kept["confiner_core source"] == source_digest(), first,
        warned)
    # a package only one process imported (a script around the resume imported diffusers for something else) is no
    # change: it warned "diffusers None -> 0.42.1" for an embedded run that uses none
    same = {"torch": torch.__version__, "confiner_core source": "0123456789abcdef"}
    assert code_changes(same, {**same, "diffusers": "0.42.1"}) == [] == code_changes({**same, "diffusers": "1"}, same)
    del resumed["versions"]   # as a state kept before versions were
    path.write_text(json.dumps(resumed))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConFinerWarning)
        assert main(["generate", "--out", str(part), "--resume", *args]) == 0


def test_a_resume_names_a_changed_flag_with_its_flag(tmp_path, monkeypatch, capsys):
    """A resume with --no-stagger was refused naming "long.staggered", where every other setting has its option."""
    args = ["--quiet", *LONG]
    part, _, _ = _interrupted_state(tmp_path, monkeypatch, args)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(part), "--resume", "--no-stagger", *args])
    assert e.value.code == 2 and "(long.staggered (--no-stagger): True -> False)" in capsys.readouterr().err


def test_a_resume_compares_the_guidance_the_experts_were_given_not_how_it_was_given(tmp_path, monkeypatch, capsys):
    """A run that left --cfg to the experts' default resumes with that default given explicitly (it was refused as
    "refine_cfg: None -> 1.0"), and is refused with another scale, named as the expert's cfg; a state kept before
    the scales were stored compares the options as given."""
    args = ["--quiet", *LONG]
    assert main(["generate", "--out", str(tmp_path / "full"), *args]) == 0
    part, path, state = _interrupted_state(tmp_path, monkeypatch, args)
    # the embedded experts' default cfg, and no negative prompt read (at cfg 1 no expert reads one)
    assert state["settled"] == {"the spatial expert's cfg": 1.0, "the temporal expert's cfg": 1.0,
                                "the negative prompt": None}
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(part), "--resume", "--spatial-cfg", "2", *args])
    assert e.value.code == 2
    assert "used other settings (the spatial expert's cfg: 1.0 -> 2.0" in capsys.readouterr().err
    del state["settled"]   # as the version before wrote it
    path.write_text(json.dumps(state))
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(part), "--resume", "--cfg", "1", *args])
    assert e.value.code == 2 and "(--cfg: None -> 1.0)" in capsys.readouterr().err
    state["settled"] = {"the spatial expert's cfg": 1.0, "the temporal expert's cfg": 1.0}
    path.write_text(json.dumps(state))
    assert main(["generate", "--out", str(part), "--resume", "--cfg", "1", *args]) == 0
    assert outputs(part, MEDIA) == outputs(tmp_path / "full", MEDIA)


def test_a_negative_prompt_no_expert_reads_does_not_stop_a_resume(tmp_path, monkeypatch, capsys):
    """At cfg 1 no expert reads the negative prompt (the command line says so): a resume that adds one was refused as
    "--negative-prompt: '' -> 'blurry'". Read (cfg 2), it is the change it is."""
    args = ["--quiet", *LONG]
    assert main(["generate", "--out", str(tmp_path / "full"), *args]) == 0
    part, _, _ = _interrupted_state(tmp_path, monkeypatch, args)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(part), "--resume", "--cfg", "2", "--negative-prompt", "blurry", *args])
    assert e.value.code == 2
    assert "the negative prompt: None -> 'blurry'" in capsys.readouterr().err
    assert main(["generate", "--out", str(part), "--resume", "--negative-prompt", "blurry", *args]) == 0
    assert outputs(part, MEDIA) == outputs(tmp_path / "full", MEDIA)


def test_the_embedded_default_prompt_typed_out_resumes_the_run_made_without_one(tmp_path, monkeypatch, capsys):
    """The embedded experts draw their default scene for an empty prompt: a resume that typed it out was refused as
    "--prompt: '' -> 'a red ball bouncing over green grass'". It is the same run, also for a state an earlier
    version kept with the empty prompt; another prompt is still refused."""
    from confiner_core.embedded.world import DEFAULT_PROMPT

    args = ["--quiet", *LONG[:-2]]   # no --prompt
    assert main(["generate", "--out", str(tmp_path / "full"), *args]) == 0
    part, path, state = _interrupted_state(tmp_path, monkeypatch, args)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(part), "--resume", "--prompt", "a blue ball bouncing over snow", *args])
    assert e.value.code == 2
    assert f"(--prompt: {DEFAULT_PROMPT!r} -> 'a blue ball bouncing over snow')" in capsys.readouterr().err
    state["settings"]["prompt"] = ""   # as the version before wrote it
    path.write_text(json.dumps(state))
    assert main(["generate", "--out", str(part), "--resume", "--prompt", DEFAULT_PROMPT, *args]) == 0
    assert outputs(part, MEDIA) == outputs(tmp_path / "full", MEDIA)


def test_interrupt_before_the_first_window_leaves_nothing(tmp_path, monkeypatch, capsys):
    _interrupt_at(monkeypatch, 3)
    out = tmp_path / "new"
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(out), "--quiet", *LONG])
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted after 3 of 118 expert evaluations; nothing written"
    assert not out.exists()  # the folder this run created is gone again, resume state included


def test_a_full_disk_mid_long_run_keeps_the_windows_and_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """The resume folder's third window meets a full disk (safetensors' own error, as on a real one): one line
    naming the file, the reason and the fix, exit 1, the earlier outputs untouched, the finished windows kept; once
    there is room, --resume finishes the same bytes as a run that never failed."""
    from safetensors import SafetensorError

    from confiner_core import resume

    assert main(["generate", "--out", str(tmp_path / "full"), "--quiet", *LONG]) == 0
    real, saved = resume.save_file, []

    def save_file(tensors, path):
        if os.path.basename(path).startswith(".window-00002."):
            with open(path, "wb") as f:   # a partial file, as a full disk leaves one
                f.write(b"partial")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        saved.append(path)
        real(tensors, path)

    monkeypatch.setattr(resume, "save_file", save_file)
    part = tmp_path / "part"
    previous_outputs(part)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(part), "--quiet", *LONG])
    assert e.value.code == 1
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(r"error: cannot write window-00002\.safetensors in \S+: no space left on the device "
                        r"\(\d+\.\d MB free\); free some space or choose another output folder \(--out\); "
                        r"2 of 6 windows kept, with \d+ expert evaluations: rerun with --resume once it can write",
                        line), line
    assert outputs(part) == PREVIOUS and temp_files(part) == []
    monkeypatch.setattr(resume, "save_file", real)
    assert main(["generate", "--out", str(part), "--quiet", "--resume", *LONG]) == 0
    assert outputs(part, MEDIA) == outputs(tmp_path / "full", MEDIA)


class Stop(Exception):
    """A script's own way to stop a run from its callback."""


@pytest.mark.parametrize("failure", ["callback", "nan"])
def test_a_failure_mid_long_run_keeps_the_windows_unless_the_settings_would_meet_it_again(tmp_path, monkeypatch,
                                                                                           failure):
    """An exception from a script's callback after two finished windows deleted them and the output folder (a bug in
    a preview, or a script's own stop, cost the work done); they are kept, the exception says so, and --resume
    finishes the same bytes. NaN would come back on a resume with the same settings: its state goes."""
    from confiner_core.errors import NonFiniteError
    from confiner_core.generate import GenerateRequest, generate
    from confiner_core.long import LongConfig

    request = GenerateRequest(frames=48, height=64, width=64, seed=5, prompt="a red ball bouncing over grass",
                              long=LongConfig(segment_length=8))
    generate(replace(request, out=str(tmp_path / "full")), show_progress=False)
    out = tmp_path / "part"
    state = out / RESUME_FOLDER / "state.json"

    def callback(info):
        if state.is_file() and json.loads(state.read_text())["next_window"] >= 2:
            if failure == "callback":
                raise Stop("the script stopped it")
            monkeypatch.setattr(PosteriorMeanExpert, "forward", lambda self, x, t, conds: [x * float("nan")])

    with pytest.raises(Stop if failure == "callback" else NonFiniteError) as e:
        generate(replace(request, out=str(out)), show_progress=False, callback=callback)
    if failure == "nan":
        assert not out.exists()   # the folder this run made, resume state and all
        return
    assert re.fullmatch(r"2 of 6 windows kept, with \d+ expert evaluations in \S+: rerun with resume=True once this "
                        r"is fixed, or delete that folder to start over", e.value.__notes__[-1]), e.value.__notes__
    assert state.is_file() and temp_files(out) == []
    generate(replace(request, out=str(out), resume=True), show_progress=False)
    assert outputs(out, MEDIA) == outputs(tmp_path / "full", MEDIA)


def test_a_folder_turned_read_only_mid_run_gives_the_write_error_and_warns_of_the_temporary_file_left(
        tmp_path, monkeypatch, capsys):
    """The folder turns read-only after video.mp4's temporary file is written: the contact sheet's write fails, and
    so does removing the video's temporary file on the way out. The line is still the contact sheet's (exit 1, the
    earlier outputs untouched), with a warning naming the file left (the next run into the folder removes it, once this process has ended)."""
    import errno

    from confiner_core import generate as generate_module
    from confiner_core.outputs import write_failure

    real_remove = os.remove

    def write_png(path, *args, **kwargs):
        raise write_failure(path, PermissionError(errno.EACCES, "Permission denied", path))

    def remove(path, *args, **kwargs):
        if is_temp(os.path.basename(path)) and os.path.exists(path):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        real_remove(path, *args, **kwargs)

    monkeypatch.setattr(generate_module, "write_png", write_png)
    monkeypatch.setattr(os, "remove", remove)
    out = tmp_path / "out"
    previous_outputs(out)
    with pytest.warns(ConFinerWarning) as warned, pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(out), "--frames", "4", "--height", "64", "--width", "64", "--quiet"])
    assert e.value.code == 1
    left = temp_files(out)
    assert len(left) == 1 and left[0].endswith(".partial.mp4"), left
    assert [str(w.message) for w in warned] == [f"the temporary file {left[0]} could not be removed (Permission "
                                                f"denied); the next run into {out} removes it"]
    assert capsys.readouterr().err.strip() == f"error: cannot write frames.png in {out}: not allowed to write " \
                                              f"there; choose a writable output folder (--out)"
    assert outputs(out) == PREVIOUS


def test_a_folder_turned_read_only_before_the_first_window_warns_of_the_resume_folder_left(
        tmp_path, monkeypatch, capsys):
    """The output folder turns read-only after the resume folder was made: the first window cannot be kept, and
    the resume folder cannot be removed on the way out. The line is the write's (exit 1, nothing kept to resume),
    with a warning naming the folder left; the next run into the folder removes it."""
    import errno
    import shutil

    from confiner_core import resume
    from confiner_core.outputs import write_failure

    real_rmtree, real_rmdir, real_save = shutil.rmtree, os.rmdir, resume.save_file
    locked = {"on": True}

    def save_file(tensors, path):
        if locked["on"]:
            raise write_failure(path, PermissionError(errno.EACCES, "Permission denied", path))
        real_save(tensors, path)

    def rmtree(path, *args, **kwargs):   # the folder's files go, the folder stays (its parent is read-only)
        if locked["on"] and str(path).endswith(resume.RESUME_FOLDER) and os.path.isdir(path):
            for name in os.listdir(path):
                os.remove(os.path.join(path, name))
            return None
        return real_rmtree(path, *args, **kwargs)

    def rmdir(path, *args, **kwargs):
        if locked["on"] and str(path).endswith(resume.RESUME_FOLDER) and os.path.isdir(path):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(resume, "save_file", save_file)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    monkeypatch.setattr(os, "rmdir", rmdir)
    out = tmp_path / "out"
    previous_outputs(out)
    folder = out / resume.RESUME_FOLDER
    with pytest.warns(ConFinerWarning) as warned, pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(out), "--quiet", *LONG])
    assert e.value.code == 1
    assert [str(w.message) for w in warned] == [f"the resume folder {folder} could not be removed (Permission "
                                                f"denied); the next run into {out} removes it"]
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: cannot write window-00000.safetensors in ") and "not allowed to write there" \
        in line and "windows kept" not in line, line
    assert folder.is_dir() and os.listdir(folder) == [] and outputs(out) == PREVIOUS
    locked["on"] = False   # writable again: the next run removes the folder left
    assert main(["generate", "--out", str(out), "--quiet", *LONG]) == 0
    assert not folder.exists()


def test_a_silent_writer_in_a_folder_it_may_not_write_is_told_so(tmp_path, monkeypatch):
    """OpenCV's writer gives no reason: a folder without write access is named as such, not as a disk question."""
    from confiner_core.outputs import write_failure

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert str(write_failure(str(tmp_path / "video.mp4"))) == \
        f"cannot write video.mp4 in {tmp_path}: not allowed to write there; choose a writable output folder (--out)"
    monkeypatch.undo()
    assert "MB free" in str(write_failure(str(tmp_path / "video.mp4")))
    # a library caller's path in a folder not made yet (generate makes its own): it was "not allowed to write there"
    assert str(write_failure(str(tmp_path / "new" / "v.mp4"))) == \
        f"cannot write v.mp4 in {tmp_path / 'new'}: the folder does not exist; create it first, or choose an " \
        f"existing folder"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full (every write: no space left)")
def test_contact_sheet_and_report_on_a_full_device_name_the_output_and_the_fix():
    import numpy as np

    from confiner_core.errors import OutputError
    from confiner_core.generate import write_report
    from confiner_core.video_io import write_png

    for write in (lambda: write_png("/dev/full", np.zeros((8, 8, 3), np.uint8)),
                  lambda: write_report("/dev/full", {"frames": 8})):
        with pytest.raises(OutputError, match=r"^cannot write full in /dev: no space left on the device \(.* MB "
                                              r"free\); free some space or choose another output folder \(--out\)$"):
            write()


def test_a_video_without_its_index_is_not_taken_as_written(tmp_path):
    """OpenCV's writer reports nothing when the disk fills; the sink reads the finished file's boxes instead."""
    import numpy as np

    from confiner_core.errors import OutputError
    from confiner_core.video_io import VideoSink, mp4_complete

    path = str(tmp_path / "v.mp4")
    with VideoSink(path, 8, 4) as sink:
        sink.write(np.zeros((4, 32, 32, 3), np.uint8))
    data = open(path, "rb").read()
    assert mp4_complete(path) and data[4:8] == b"ftyp"
    for cut in (len(data) - 1, len(data) // 2, 8):
        (tmp_path / "cut.mp4").write_bytes(data[:cut])
        assert not mp4_complete(str(tmp_path / "cut.mp4")), cut

    class Truncating(VideoSink):   # a writer that loses the end of the file, as on a full disk
        def close(self, check=True):
            if self._writer is not None:
                self._writer.release()
                self._writer = None
                with open(self.path, "r+b") as f:
                    f.truncate(os.path.getsize(self.path) - 100)
                self._writer = type("Released", (), {"release": lambda s: None})()
            super().close(check)

    with pytest.raises(OutputError, match=r"^cannot write v2\.mp4 in "):
        with Truncating(str(tmp_path / "v2.mp4"), 8, 4) as sink:
            sink.write(np.zeros((4, 32, 32, 3), np.uint8))


def test_the_non_finite_hint_suggests_another_dtype_only_for_fp16_networks():
    from types import SimpleNamespace

    from confiner_core import schedules as S
    from confiner_core.experts import non_finite_message
    from test_chain import SHAPE, OracleExpert, x0_star

    expert = OracleExpert(x0_star(), S.named("sd15"))
    x = torch.zeros(SHAPE)
    for dtype, hint in ((torch.float16, "fp16 overflow: load the experts in bfloat16 or float32"),
                        (torch.float32, "weights that are not finite: check the checkpoint"),
                        (torch.bfloat16, "weights that are not finite: check the checkpoint")):
        expert.networks = [SimpleNamespace(dtype=torch.float32), SimpleNamespace(dtype=dtype)]   # a text encoder, a UNet
        assert hint in non_finite_message(expert.bind(), x, 500, "refine", 3), dtype
    # an expert of one's own has no checkpoint to check (it was told to): its own arithmetic is named
    del expert.networks
    assert non_finite_message(expert.bind(), x, 500, "refine", 3).endswith(
        "or arithmetic in OracleExpert.forward that is not finite")


def test_the_fp16_hint_names_the_setting_that_loads_another_dtype():
    """The hint said "load the experts in bfloat16", which the command line and GenerateRequest had no way to do."""
    from confiner_core.experts import FP16_OVERFLOW
    from confiner_core.generate import in_command_line_spelling, with_dtype_option

    message = f"expert 'spatial' returned NaN or infinity; likely causes: a cfg too large, or {FP16_OVERFLOW}"
    assert with_dtype_option(message).endswith(f"{FP16_OVERFLOW} (dtype='bfloat16')")
    with in_command_line_spelling():
        assert with_dtype_option(message).endswith(f"{FP16_OVERFLOW} (--dtype bfloat16)")
    assert with_dtype_option("weights that are not finite") == "weights that are not finite"


@pytest.mark.parametrize("args,nan_call,where", [
    (["--frames", "8"], 7, "expert 'embedded-spatial (sharp frames, SD 1.5 schedule)' (PosteriorMeanExpert) at stage "
                           "'refine', step t=100, evaluation 3 of the stage"),  # 4 control + spatial, temporal, spatial
    # the refinement's last evaluation: its check is handed over to the decode, read once the decode is queued
    (["--frames", "8"], 19, "expert 'embedded-spatial (sharp frames, SD 1.5 schedule)' (PosteriorMeanExpert) at "
                            "stage 'refine', step t=20, evaluation 15 of the stage"),
    (LONG, 7, "expert 'embedded-control (coarse clips, AnimateDiff-Lightning schedule)' (PosteriorMeanExpert) at "
              "stage 'control', step t=499, evaluation 7 of the stage"),            # structure 1's third control step
])
def test_nan_mid_run_fails_with_one_line_and_keeps_outputs(tmp_path, monkeypatch, capsys, args, nan_call, where):
    real = PosteriorMeanExpert.forward
    calls = []

    def forward(self, x, t, conds):
        calls.append(1)
        outs = real(self, x, t, conds)
        return [o * float("nan") for o in outs] if len(calls) == nan_call else outs

    monkeypatch.setattr(PosteriorMeanExpert, "forward", forward)
    out = tmp_path / "out"
    previous_outputs(out)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(out), "--quiet", "--height", "64", "--width", "64", *args])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: NonFiniteError:")
    # stage, step and expert named, a cause suggested (these experts have no checkpoint: their own arithmetic)
    assert where in err and "arithmetic in PosteriorMeanExpert.forward that is not finite" in err and "fp16" not in err
    assert outputs(out) == PREVIOUS and sorted(os.listdir(out)) == sorted(PREVIOUS)


def test_a_final_latent_with_nan_is_refused_after_the_decode_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    """The final latent's finiteness is read once its decode is queued (no wait for the GPU before it): NaN there
    still fails the run with its one line, and the previous outputs stay."""
    import confiner_core.chain as C
    refine = C.refine_structure
    monkeypatch.setattr(C, "refine_structure", lambda *a, **k: refine(*a, **k) * float("nan"))
    out = tmp_path / "out"
    previous_outputs(out)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(out), "--quiet", "--height", "64", "--width", "64", "--frames", "8"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the final latent holds NaN or infinity; nothing was written" in err
    assert outputs(out) == PREVIOUS and sorted(os.listdir(out)) == sorted(PREVIOUS)


def test_nan_input_latent_is_named(tmp_path):
    from confiner_core import schedules as S
    from confiner_core.errors import NonFiniteError
    from confiner_core.sampling import sample_control
    from test_chain import OracleExpert

    x0 = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    d = OracleExpert(x0, S.named("animatediff")).bind(log=EvaluationLog())
    noise = torch.full_like(x0, float("nan"))
    with pytest.raises(NonFiniteError, match="initial noise or input latent is not finite"):
        sample_control(d, noise, [999, 749, 499, 249])


def test_nan_at_the_control_stages_end_is_caught_by_the_refinements_first_evaluation():
    """run_chain's control stage hands its last finiteness check over (no GPU drain between the stages): NaN in
    the control expert's last evaluation stops the chain at the refinement's first evaluation, named as the control
    stage's 4th, before any noise beyond Eq. 6's is drawn; a chain whose control stage is finite is unchanged."""
    from confiner_core import schedules as S
    from confiner_core.chain import ChainConfig, run_chain
    from confiner_core.errors import NonFiniteError
    from test_chain import FRAMES, SHAPE, VIDEO, OracleExpert, x0_star

    x0 = x0_star()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))

    def chain(nan_at):
        log = EvaluationLog()
        control, spatial = OracleExpert(x0, S.named("animatediff"), VIDEO), OracleExpert(x0, S.named("sd15"), FRAMES)
        _LastCallNaN(control, nan_at)
        c, s, t = control.bind(log=log), spatial.bind(log=log), OracleExpert(x0, S.named("lavie"), VIDEO).bind(log=log)
        return log, spatial, lambda: run_chain(c, s, t, noise, ChainConfig(), torch.Generator().manual_seed(3))

    log, spatial, run = chain(4)
    with pytest.raises(NonFiniteError, match=r"stage 'control', step t=\S+, evaluation 4 of the stage"):
        run()
    # the spatial expert's first forward ran (queued, on a GPU) and raised before it was counted
    assert len(spatial.calls) == 1 and log.evaluations == {"control": 4} and not log.handing_over
    log, _, run = chain(None)
    assert torch.allclose(run().structure, x0, atol=1e-4) and log.evaluations == {"control": 4, "refine": 15}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the flag on its way from a GPU"))])
def test_nan_in_the_refinements_last_evaluation_is_read_where_the_caller_says(device):
    """run_chain reads the refinement's last finiteness check before it returns, unless told to hand it over: then
    it is still queued on the log, and the caller's next stage (generate's decode) raises it, naming the refinement's
    last evaluation."""
    from confiner_core import schedules as S
    from confiner_core.chain import ChainConfig, run_chain
    from confiner_core.errors import NonFiniteError
    from test_chain import FRAMES, SHAPE, VIDEO, OracleExpert, x0_star

    x0 = x0_star().to(device)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    last = r"stage 'refine', step t=\S+, evaluation 15 of the stage"

    def chain(**kwargs):
        log = EvaluationLog()
        spatial = OracleExpert(x0, S.named("sd15"), FRAMES)
        _LastCallNaN(spatial, 10)  # 5 steps of spatial, temporal, spatial: its 10th call is the last evaluation
        c = OracleExpert(x0, S.named("animatediff"), VIDEO).bind(log=log)
        s, t = spatial.bind(log=log), OracleExpert(x0, S.named("lavie"), VIDEO).bind(log=log)
        return log, lambda: run_chain(c, s, t, noise, ChainConfig(), torch.Generator().manual_seed(3), **kwargs)

    log, run = chain()
    with pytest.raises(NonFiniteError, match=last):
        run()
    log, run = chain(hand_over=True)
    result = run()
    assert log.evaluations == {"control": 4, "refine": 15} and log.pending is not None and not log.handing_over
    with pytest.raises(NonFiniteError, match=last), log.stage("decode"):
        result.latent.clone()  # the caller's next stage: the check is read at its end


class _LastCallNaN:
    """An oracle expert whose ``nan_at``-th call (1-based) returns NaN."""

    def __init__(self, expert, nan_at):
        self.expert, self.nan_at, self.n = expert, nan_at, 0
        self.real = expert.forward
        expert.forward = self.forward

    def forward(self, x, t, conds):
        self.n += 1
        outs = self.real(x, t, conds)
        return [o * float("nan") for o in outs] if self.n == self.nan_at else outs


def test_nan_in_a_loops_last_evaluation_is_caught_at_the_loops_end():
    """The finiteness flag is read one evaluation late (no host wait per evaluation on a GPU): the last evaluation
    of a sampling loop is still checked before the loop returns, and named as itself."""
    from confiner_core import schedules as S
    from confiner_core.errors import NonFiniteError
    from confiner_core.refine import refine_coordinated
    from confiner_core.sampling import sample_control
    from test_chain import OracleExpert

    x0 = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    control = OracleExpert(x0, S.named("animatediff"))
    _LastCallNaN(control, 4)
    log = EvaluationLog()
    with pytest.raises(NonFiniteError, match="evaluation 4 of the stage"):
        sample_control(control.bind(log=log), noise, [999, 749, 499, 249])
    assert sum(log.evaluations.values()) == 4  # raised at the loop's end, after no further evaluation

    spatial, temporal = OracleExpert(x0, S.named("sd15")), OracleExpert(x0, S.named("sd15"), name="temporal")
    _LastCallNaN(spatial, 4)  # two steps of spatial, temporal, spatial: the spatial expert's 4th call is the last
    log = EvaluationLog()
    with log.stage("refine"), pytest.raises(NonFiniteError, match=r"'oracle' .* step t=100, evaluation 6 of"):
        refine_coordinated(spatial.bind(log=log), temporal.bind(log=log), noise, [300, 100],
                           torch.Generator().manual_seed(2))
    _LastCallNaN(temporal, 2)  # the temporal expert's second call: the last but one evaluation
    spatial.nan_at = None
    log = EvaluationLog()
    with pytest.raises(NonFiniteError, match=r"'temporal' .* evaluation 5 of"):
        refine_coordinated(spatial.bind(log=log), temporal.bind(log=log), noise, [300, 100],
                           torch.Generator().manual_seed(2))


def test_ctrl_c_during_held_imports_arrives_after_them():
    """The command line imports torch and diffusers under interrupts_held: Ctrl-C there had left numpy half-imported
    (AttributeError), aborted the process from C++ or printed a traceback, in 6 of 40 tries in the first 2.5 s."""
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)   # an interrupt not held is raised here
            reached.append("the rest of the block")
    assert reached == ["the rest of the block"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)   # a process that ignores Ctrl-C still does
    try:
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, ignored)


def test_a_run_into_the_folder_of_a_run_in_progress_is_refused(tmp_path, capsys):
    """A second run into the --out of a long run in progress was told the folder held an interrupted run and to
    --resume it, which set two processes on one resume state (the second failed when the first cleared it)."""
    import socket

    from confiner_core.outputs import process_identity
    from confiner_core.resume import OWNER, ResumeStore

    folder = tmp_path / "busy" / RESUME_FOLDER
    folder.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        for extra in ([], ["--resume"]):
            with pytest.raises(SystemExit) as e:
                main(["generate", "--frames", "24", "--segment-length", "8", "--height", "64", "--width", "64",
                      "--quiet", "--out", str(tmp_path / "busy"), *extra])
            assert e.value.code == 2
            assert capsys.readouterr().err.strip() == (f"error: --out: a run is in progress in {tmp_path / 'busy'} "
                                                       f"(process {other.pid}); wait for it to finish, or choose "
                                                       f"another --out (if process {other.pid} is no ConFiner run, "
                                                       f"delete {folder / OWNER})")
        # the owner's start time and boot: a later process given the same id (a reboot) is not the run
        store = ResumeStore(str(tmp_path / "busy"), {})
        for identity, busy in ((process_identity(other.pid), other.pid), ("another-boot:1", None)):
            (folder / OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                                    "identity": identity}))
            assert store.working_process() == busy, identity
    finally:
        other.kill()
        other.wait()
    assert ResumeStore(str(tmp_path / "busy"), {}).working_process() is None   # it ended: an interrupted run's folder
