"""The README's Python blocks run as written: their assertions hold and they print what their comments give."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_block(heading: str) -> str:
    """The first Python block of the README after ``heading``."""
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S).group(1)


def run_block(code: str, folder: Path) -> str:
    """``code`` run in a fresh interpreter in ``folder`` with the clone's root importable; its printed output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_the_readmes_library_example_runs(tmp_path):
    code = readme_block("## The library in Python")
    printed = run_block(code, tmp_path).strip().splitlines()[-1]
    assert printed == re.search(r"print\(dict\(log\.evaluations\)\)\s*# (\{.*?\})", code).group(1)
    assert sorted(os.listdir(tmp_path / "out_lib")) == ["frames.png", "report.json", "video.mp4"]


def test_the_readmes_long_video_example_runs(tmp_path):
    """Section "ConFiner-Long in Python" (a researcher had no example and found sink's cut by trying): the block
    runs as written and prints the video's shape and the evaluations per stage its comment gives."""
    code = readme_block("**ConFiner-Long in Python**")
    printed = run_block(code, tmp_path).strip().splitlines()[-1]
    assert printed == re.search(r"print\(tuple\(video\.shape\), dict\(state\.evaluations\)\)\s*# (.*)", code).group(1)


def test_the_readmes_own_expert_example_runs(tmp_path):
    """Section "An expert of your own": the block runs as written, writes its video and prints the frames' shape and
    a flicker score that matches the metric computed here on the frames it decoded (read back from nothing else:
    the block is run again in this process)."""
    printed = run_block(readme_block("**An expert of your own**") + "\nimport numpy; numpy.save('frames.npy', frames)",
                        tmp_path)
    import numpy as np

    from confiner_core.metrics import evaluate

    frames = np.load(tmp_path / "frames.npy")
    assert printed.strip().splitlines()[-1] == f"(16, 64, 64, 3) {round(evaluate(frames)['temporal_flicker'], 3)}"
    assert (tmp_path / "mine.mp4").stat().st_size > 0 and frames.std() > 10   # a picture, not a flat frame


def test_the_readmes_checkpoint_table_lists_every_kind_with_its_roles():
    """Section "Real checkpoints": one row per path kind the registry accepts for some role, with those roles."""
    from confiner_core.diffusers_backend import role_kinds

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Real checkpoints"):text.index("### Speed settings")]
    rows = {kind: set(roles.split(", ")) for roles, kind in re.findall(r"^\| ([a-z, ]+) \| `([a-z0-9-]+)` \|", section,
                                                                        re.M)}
    expected: dict = {}
    for role, kinds in role_kinds().items():
        for kind in kinds:
            expected.setdefault(kind, set()).add(role)
    assert rows == expected


def test_the_readmes_loaded_models_example_makes_the_video_generate_makes(tmp_path):
    """Section "Models you have already loaded": the block, on tiny checkpoints at 64x64, decodes the frames
    ``generate`` makes of the same folders and seed, bit for bit."""
    import numpy as np

    import tiny_diffusers as T
    from confiner_core.generate import GenerateRequest, generate

    folders = {"animatediff-lightning": T.save_animatediff(tmp_path / "ad", T.tiny_motion_adapter()),
               "sd15": T.save_sd(tmp_path / "sd"), "modelscope-t2v": T.save_t2v(tmp_path / "t2v")}
    code = readme_block("**Models you have already loaded**")
    for name, folder in folders.items():
        code = code.replace(f'"path/to/{name}"', repr(str(folder)))
    run_block(code.replace("512, 512", "64, 64") + "\nimport numpy; numpy.save('frames.npy', frames[0].numpy())",
              tmp_path)
    generate(GenerateRequest(control=str(folders["animatediff-lightning"]), spatial=str(folders["sd15"]),
                             temporal=str(folders["modelscope-t2v"]), prompt="a corgi running on a beach",
                             frames=16, height=64, width=64, seed=0, save_frames=True, out=str(tmp_path / "out")),
             show_progress=False)
    ours = np.load(tmp_path / "out" / "frames.npy")
    assert ours.shape == (16, 64, 64, 3) and np.array_equal(np.load(tmp_path / "frames.npy"), ours)
