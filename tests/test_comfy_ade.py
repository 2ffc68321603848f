"""The pack with ComfyUI-AnimateDiff-Evolved (ADE) installed in the host (``$COMFYUI_PATH``; ADE from
``$CONFINER_ADE_PATH``, default ``~/.cache/confiner/ade``; each skips with its reason when absent).

ADE's context windows need no motion model (``ADE_UseEvolvedSampling`` with context options), so this runs on the
tiny random-weight checkpoint: what is compared is which context windows ADE uses at each evaluation, under ConFiner
and under ADE's own sampler on the same sigmas.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfy_support.fixtures import comfy_path, comfy_worker, confiner_pack_dir, synthetic_checkpoint  # noqa: F401

pytestmark = pytest.mark.comfyui
ADE_PATH = Path(os.environ.get("CONFINER_ADE_PATH", Path.home() / ".cache/confiner/ade")).expanduser()


@pytest.fixture(scope="module")
def comfy_pack_dirs(confiner_pack_dir):
    if not (ADE_PATH / "__init__.py").is_file():
        pytest.skip(f"AnimateDiff-Evolved not found at {ADE_PATH} (set CONFINER_ADE_PATH to a checkout)")
    return [(str(confiner_pack_dir), "confiner"), (str(ADE_PATH), "ComfyUI-AnimateDiff-Evolved")]


@pytest.fixture(scope="module")
def windows(comfy_worker):
    return comfy_worker.call("comfy_support.ade_checks:context_windows_per_evaluation", comfy_worker.checkpoint_name)


def test_context_windows_rotate_as_under_ades_own_sampler_in_the_control_stage(windows):
    ours, theirs = windows["control"], windows["control_reference"]
    assert [c["step"] for c in theirs] == [0, 1, 2, 3]  # one evaluation per step under ADE's sampler
    assert [c["step"] for c in ours] == [0, 1, 2, 3]
    assert [c["windows"] for c in ours] == [c["windows"] for c in theirs]
    assert len({tuple(c["starts"]) for c in ours}) > 1  # uniform windows really move from step to step
    assert windows["control_per_evaluation"] == ours  # the same with one sampling call per evaluation


def test_temporal_expert_windows_rotate_as_under_ades_own_sampler_in_the_refinement(windows):
    ours, theirs = windows["temporal"], windows["temporal_reference"]
    assert [c["step"] for c in ours] == list(range(5)) == [c["step"] for c in theirs]
    assert [c["windows"] for c in ours] == [c["windows"] for c in theirs]
    assert len({tuple(c["starts"]) for c in ours}) > 1
    assert windows["temporal_per_evaluation"] == ours


def test_ade_logs_like_one_sampling_run_per_stage(windows):
    assert windows["control_reference_log"], "ADE logged nothing for its own sampling run"
    assert windows["control_log"] == windows["control_reference_log"]
    assert windows["temporal_log"] == windows["temporal_reference_log"]
    assert windows["control_log_per_evaluation"] == windows["control_log"]
    assert windows["temporal_log_per_evaluation"] == windows["temporal_log"]


def test_stage_sessions_give_bit_identical_outputs_with_ade(windows):
    """ADE's sliding context windows and its sqrt_linear schedule on the control and temporal experts, the plain SD
    model (same base) as spatial expert, so the refinement hands the base model between a plain and an ADE clone at
    every evaluation: stage sessions and one sampling call per evaluation give the same latents, bit for bit; ADE's
    own sampling_function is swapped in only while the ADE expert's session runs."""
    assert windows["structure_equal"] and windows["refined_equal"] and windows["finite"]
    assert abs(windows["schedule_sigma_max"] - 25.1461) < 1e-3  # the ADE schedule was in use
    assert windows["sampling_function"] == "comfy.samplers.sampling_function"


@pytest.mark.parametrize("noise_type", ["FreeNoise", "repeated_context"])
def test_ignored_ade_noise_type_is_warned_once_pointing_to_the_noise_rescheduler(comfy_worker, noise_type):
    r = comfy_worker.call("comfy_support.ade_checks:ignored_noise_warning", comfy_worker.checkpoint_name, noise_type)
    assert len(r["warnings"]) == 1
    assert noise_type in r["warnings"][0] and "ConFiner Noise Rescheduler" in r["warnings"][0]
    # and on the node, above every update of its text (an artist saw only "done")
    assert r["texts"] and all(t.startswith(f"warning: ADE noise_type '{noise_type}' unused: use Noise Rescheduler")
                              for t in r["texts"]), r["texts"][:2]
