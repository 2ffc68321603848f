"""Never a silent wrong result: NaN never becomes a score, reports are strict JSON, the schedule is shown."""

import json
import math
import os

import numpy as np
import pytest

from confiner_core import metrics as m
from confiner_core.cli import main


def strict_load(path):
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant} in {path}")
    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def test_nan_frames_are_refused_not_scored():
    x = np.full((4, 16, 16, 3), 0.5)
    x[2, 3, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        m.evaluate(x)
    with pytest.raises(ValueError, match="NaN or infinite"):
        m.as_uint8_frames(np.full((2, 8, 8, 3), np.inf))


def test_strict_scores_turn_undefined_into_null_with_reason():
    scores = m.evaluate(np.zeros((1, 16, 16, 3), np.uint8))
    strict = m.strict_scores(scores)
    assert strict["subject_consistency"] is None and strict["motion_smoothness"] is None
    assert strict["undefined"]["motion_smoothness"] == "needs at least 3 frames"
    # (no parentheses inside: the command line prints it as "n/a (...)", which read "n/a (... (...))")
    # (it said "only a run on the embedded world knows: its report.json has it", which no report has)
    assert strict["undefined"]["distance_to_nearest"].startswith("needs reference clips, passed to metrics.evaluate "
                                                                 "as references=")
    assert "(" not in "".join(strict["undefined"].values())
    assert strict["sharpness"] == scores["sharpness"] == 0.0  # defined values are kept as they are
    json.dumps(strict, allow_nan=False)


def test_single_frame_report_is_strict_json(tmp_path):
    out = str(tmp_path / "one")
    assert main(["generate", "--out", out, "--frames", "1", "--height", "64", "--width", "64", "--quiet"]) == 0
    report = strict_load(os.path.join(out, "report.json"))
    metrics = report["metrics"]
    assert metrics["subject_consistency"] is None and "2 frames" in metrics["undefined"]["subject_consistency"]
    assert all(v is None or (isinstance(v, float) and math.isfinite(v))
               for k, v in metrics.items() if k != "undefined")


def test_evaluate_json_is_strict(tmp_path, capsys):
    import cv2

    frame = tmp_path / "frames"
    frame.mkdir()
    cv2.imwrite(str(frame / "f0.png"), np.full((16, 16, 3), 100, np.uint8))
    assert main(["evaluate", str(frame), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert scores["seam_score"] is None and "seam_score" in scores["undefined"]
    assert main(["evaluate", str(frame)]) == 0
    assert "n/a  higher (needs at least 3 frames)" in capsys.readouterr().out   # motion_smoothness


def test_cli_prints_the_resolved_schedule_before_sampling(tmp_path, capsys):
    out = str(tmp_path / "s")
    assert main(["generate", "--out", out, "--frames", "24", "--segment-length", "8", "--height", "64", "--width",
                 "64", "--quiet", "--fps", "12", "--prompt", "0: a red ball bouncing | 1s: a blue ball bouncing"]) == 0
    plan, *lines = capsys.readouterr().out.splitlines()
    assert plan == "ConFiner-Long: 24 frames in 3 windows of 8 on 4 structures (61 expert evaluations)"
    assert lines[:3] == ["prompt schedule (24 frames at 12 fps):",
                         "  frames 0-11 (0.00-1.00 s): a red ball bouncing",
                         "  frames 12-23 (1.00-2.00 s): a blue ball bouncing"]
    # frame 12 is the centre of the window of frames 8-15, which therefore refines with the second prompt
    assert lines[3:6] == ["as ConFiner-Long applies it (each window of 8 frames is refined with the prompt at its "
                          "centre frame, so a prompt starts at the nearest window junction: frame 12 → 8):",
                          "  frames 0-7 (0.00-0.67 s): a red ball bouncing",
                          "  frames 8-23 (0.67-2.00 s): a blue ball bouncing"]
    assert lines[6].startswith("wrote ")
    report = strict_load(os.path.join(out, "report.json"))
    assert report["prompt_schedule"] == [{"frames": [0, 12], "prompt": "a red ball bouncing"},
                                         {"frames": [12, 24], "prompt": "a blue ball bouncing"}]
    assert report["prompt_schedule_applied"] == [{"frames": [0, 8], "prompt": "a red ball bouncing"},
                                                 {"frames": [8, 24], "prompt": "a blue ball bouncing"}]


def test_plain_prompt_with_bar_is_one_short_clip(tmp_path, capsys):
    out = str(tmp_path / "p")
    assert main(["generate", "--out", out, "--frames", "8", "--height", "64", "--width", "64", "--quiet",
                 "--prompt", "a red ball | 16:9 widescreen"]) == 0
    report = strict_load(os.path.join(out, "report.json"))
    assert "segment_plan" not in report and report["expert_evaluations"] == {"control": 4, "refine": 15}
    assert "prompt schedule" not in capsys.readouterr().out
