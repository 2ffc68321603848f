"""Bad inputs to the ConFiner nodes, refused before any expert evaluation, with a message naming the input.

Table-driven: each case changes one value of a small working graph (tiny SD 1.5-layout checkpoint, 64x64, 4 frames)
and asserts that the run is refused either by validation (before the queue runs anything) or by the node before its
first expert evaluation (CFGGuider.sample is counted), and that the message names the input. Runs in a ComfyUI worker
(``$COMFYUI_PATH``; skipped when unset).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
from comfy_support.fixtures import assert_error_text

pytestmark = pytest.mark.comfyui
VALIDATION, EXECUTION = "validation", "execution"


@pytest.fixture(scope="module")
def comfy_worker(confiner_worker):  # the session's worker with the pack (tests/conftest.py)
    return confiner_worker


def chain_prompt(ckpt: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red ball", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
        "5": {"class_type": "ConFinerControlExpert", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["4", 0], "seed": 1,
            "steps": 2, "cfg": 1.0, "sampler": "euler", "latent_is_noise": False}},
        "6": {"class_type": "ConFinerRefineExperts", "inputs": {
            "spatial_model": ["1", 0], "spatial_positive": ["2", 0], "spatial_negative": ["3", 0], "spatial_cfg": 2.0,
            "temporal_model": ["1", 0], "temporal_cfg": 2.0}},
        "7": {"class_type": "ConFinerCoordinatedSampler", "inputs": {
            "experts": ["6", 0], "structure": ["5", 0], "te": 100, "refine_steps": 2, "mode": "coordinated",
            "matching": "same_index", "seed": 2}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "bad_inputs"}},
    }


def long_prompt(ckpt: str) -> dict:
    p = chain_prompt(ckpt)
    for k in ("5", "7"):
        del p[k]
    p["10"] = {"class_type": "ConFinerLongSegmenter", "inputs": {
        "control_model": ["1", 0], "control_positive": ["2", 0], "control_negative": ["3", 0], "experts": ["6", 0],
        "latent": ["4", 0], "frames": 8, "segment_length": 4, "seed": 1, "control_steps": 2, "control_cfg": 1.0,
        "control_sampler": "euler", "te": 100, "refine_steps": 2, "mode": "coordinated", "matching": "same_index",
        "noise_init": "shuffle", "freenoise_stride": 2, "gamma": 0.1, "staggered": True, "segment_prompts": "",
        "clip": ["1", 1]}}
    p["8"]["inputs"]["samples"] = ["10", 0]
    return p


def noise_prompt(ckpt: str) -> dict:
    return {
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 8}},
        "11": {"class_type": "ConFinerNoiseRescheduler", "inputs": {
            "latent": ["4", 0], "seed": 3, "method": "freenoise", "segment_length": 4, "stride": 2}},
        "12": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["11", 1], "upscale_method": "nearest-exact",
                                                           "scale_by": 1.0}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["1", 2]}},
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "14": {"class_type": "PreviewImage", "inputs": {"images": ["13", 0]}},
    }


GRAPHS = {"chain": chain_prompt, "long": long_prompt, "noise": noise_prompt}

# Where a bad value is refused. The host checks the ranges of the widgets a node's validate_inputs does not name,
# and (ComfyUI 0.8.0, not 0.3.64) a V3 combo's value, when the prompt is queued; a node names in validate_inputs
# only the widgets of its one multi-widget check, so that the message is filed under those widgets alone
# (nodes/schema.py); everything else is checked when the node starts, before its first evaluation.
COMBO = "combo"   # validation where the host checks V3 combo values itself, else execution


@pytest.fixture(scope="module")
def host_checks_v3_combos(comfy_path) -> bool:
    # the feature itself, read from the host's validation code (0.8.0 has it, 0.3.64 not)
    return "io.Combo.io_type" in (comfy_path / "execution.py").read_text()


# (case id, graph, node, {input: value} (None removes the input), stage, words the message must contain,
#  [the inputs a validation error is filed under; default: the changed ones])
# what the Long Video's check when queued reads, under each of which ComfyUI files its message (web/confiner.js shows it
# once, under the input it names)
LONG_CHECKED = ["frames", "segment_length", "te", "refine_steps", "segment_prompts"]

CASES = [
    ("control steps 0", "chain", "5", {"steps": 0}, VALIDATION, ["steps"]),
    ("control steps above max", "chain", "5", {"steps": 5000}, VALIDATION, ["steps"]),
    ("control cfg nan", "chain", "5", {"cfg": math.nan}, EXECUTION, ["cfg", "finite"]),
    ("control cfg inf", "chain", "5", {"cfg": math.inf}, VALIDATION, ["cfg", "inf"]),
    ("control cfg negative", "chain", "5", {"cfg": -1.0}, VALIDATION, ["cfg"]),
    ("control sampler unknown", "chain", "5", {"sampler": "heun"}, COMBO, ["sampler"]),
    ("control seed negative", "chain", "5", {"seed": -1}, VALIDATION, ["seed"]),
    # (also what a bypassed Noise Rescheduler passes on: "connect the noise_latent output" was said of one connected)
    ("latent_is_noise on an empty latent", "chain", "5", {"latent_is_noise": True}, EXECUTION,
     ["latent_is_noise", "is empty (all zeros) (it comes from EmptyLatentImage): connect the noise_latent output of "
      "ConFiner Noise Rescheduler, and un-bypass it if it is connected, or switch it off"]),
    ("te below 0", "chain", "7", {"te": -1}, VALIDATION, ["te"], ["te", "refine_steps"]),   # (0: the model's own)
    ("te above the schedule", "chain", "7", {"te": 5000}, VALIDATION, ["te"], ["te", "refine_steps"]),
    # a value the host cannot convert is its own message, filed under that input alone (the queue-time check
    # filed a second one under every input it reads)
    ("te not a number", "chain", "7", {"te": "abc"}, VALIDATION, ["te", "abc"]),
    # both, where a check reads two (it told te's alone)
    ("te and refine steps below 0", "chain", "7", {"te": -5, "refine_steps": -1}, VALIDATION,
     ["2 problems: (1) structure timestep T_e (0: auto) (te) = -5 is below its minimum 0; (2) refine steps "
      "(refine_steps) = -1 is below its minimum 1"]),
    ("refine steps 0", "chain", "7", {"refine_steps": 0}, VALIDATION, ["refine_steps"], ["te", "refine_steps"]),
    ("refine steps do not fit below te", "chain", "7", {"te": 10, "refine_steps": 50}, VALIDATION, ["refine_steps", "te"]),
    ("refine mode unknown", "chain", "7", {"mode": "bogus"}, COMBO, ["mode"]),
    ("matching unknown", "chain", "7", {"matching": "bogus"}, COMBO, ["matching"]),
    ("refine seed above 2**64-1", "chain", "7", {"seed": 2 ** 64}, VALIDATION, ["seed"]),
    ("spatial cfg nan", "chain", "6", {"spatial_cfg": math.nan}, EXECUTION, ["spatial_cfg", "finite"]),
    ("temporal cfg above max", "chain", "6", {"temporal_cfg": 1e9}, VALIDATION, ["temporal_cfg"]),
    # (also what a bypassed Control Expert passes on: "connect the structure output" was said of one connected)
    ("an empty latent as the structure", "chain", "7", {"structure": ["4", 0]}, EXECUTION,
     ["structure latent is empty (all zeros)", "(it comes from EmptyLatentImage)",
      "structure output of ConFiner Control Expert, and un-bypass it if it is connected"]),
    ("coordinated without a temporal expert", "chain", "6", {"temporal_model": None}, EXECUTION,
     ["temporal_model", "coordinated"]),
    ("long frames 0", "long", "10", {"frames": 0}, VALIDATION, ["frames"], LONG_CHECKED),
    ("long frames not a number", "long", "10", {"frames": "many"}, VALIDATION, ["frames", "many"]),
    ("long segment length below 2", "long", "10", {"segment_length": 1}, VALIDATION, ["segment_length"], LONG_CHECKED),
    # typed, these two were refused only when the node ran, after the loaders and text encoders (a trial)
    ("long clip shorter than a segment", "long", "10", {"frames": 3}, VALIDATION, ["segment_length", "frames = 3",
                                                                                   "raise frames to 4"], LONG_CHECKED),
    ("long FreeNoise stride above segment", "long", "10", {"noise_init": "freenoise", "freenoise_stride": 9},
     EXECUTION, ["freenoise_stride"]),
    ("long gamma above 0.5", "long", "10", {"gamma": 0.7}, VALIDATION, ["gamma"]),
    ("long noise init unknown", "long", "10", {"noise_init": "perlin"}, COMBO, ["noise_init"]),
    ("long refine mode unknown", "long", "10", {"mode": "bogus"}, COMBO, ["mode"]),
    ("long control sampler unknown", "long", "10", {"control_sampler": "heun"}, COMBO, ["control_sampler"]),
    ("long gamma nan", "long", "10", {"gamma": math.nan}, EXECUTION, ["gamma", "finite"]),
    ("long control cfg inf", "long", "10", {"control_cfg": math.inf}, VALIDATION, ["control_cfg", "inf"]),
    ("long te above the schedule", "long", "10", {"te": 4000}, VALIDATION, ["te"], LONG_CHECKED),
    ("long refine steps do not fit", "long", "10", {"te": 3, "refine_steps": 9}, VALIDATION, ["refine_steps"],
     LONG_CHECKED),
    ("long refine steps above any automatic T_e", "long", "10", {"te": 0, "refine_steps": 300}, VALIDATION,
     ["refine steps (refine_steps) = 300 do not fit below the automatic T_e"], LONG_CHECKED),
    ("refine steps above any automatic T_e", "chain", "7", {"te": 0, "refine_steps": 300}, VALIDATION,
     ["use at most 100 steps (250 with a flow model), or set the structure timestep T_e (te)"]),
    ("long prompt schedule past the last frame", "long", "10", {"segment_prompts": "0: a red ball | 64: a blue ball"},
     VALIDATION, ["segment_prompts", "64"], LONG_CHECKED),
    # every problem the check sees, at once (a trial's refine steps were named, then a Run later the schedule's typo)
    ("long refine steps and a prompt schedule typo", "long", "10",
     {"te": 3, "refine_steps": 9, "segment_prompts": "0: a red ball | 64: a blue ball"}, VALIDATION,
     ["2 problems: (1) refine steps (refine_steps) = 9 do not fit between T_e = 3 and 0", "; (2) segment prompts",
      "64"], LONG_CHECKED),
    # a seconds key counts at the fps set: at 4 fps '5s' is frame 20 of 32 (checked at 8 fps, the slowest model
    # rate, it was refused when an artist set fps 4); and past the end at the rate set, refused when queued
    ("long seconds key inside the video at the fps set (queued; refused for the clip it lacks)", "long", "10",
     {"frames": 32, "segment_prompts": "0: a red ball | 5s: a blue ball", "fps": 4.0, "clip": None}, EXECUTION,
     ["segment_prompts", "clip"]),
    ("long seconds key past the end at the fps set", "long", "10",
     {"frames": 12, "segment_prompts": "0: a red ball | 2s: a blue ball", "fps": 6.0}, VALIDATION,
     ["segment_prompts", "starts at frame 12 (2s at 6 fps), beyond the video's 12 frames"], [*LONG_CHECKED, "fps"]),
    ("long prompt schedule ambiguous (no key on its first entry)", "long", "10",
     {"segment_prompts": "a red ball | 4: a blue ball"}, VALIDATION, ["segment_prompts", "ambiguous"],
     LONG_CHECKED),
    ("long prompt schedule with a comma for a separator", "long", "10",
     {"segment_prompts": "0: a red ball, 4: a blue ball"}, VALIDATION, ["segment_prompts", "'0: a red ball | 4: a blue "
                                                                        "ball'"], LONG_CHECKED),
    # entries without keys ran as one prompt, the '|' and all
    ("long prompt schedule without keys", "long", "10", {"segment_prompts": "a red ball | a blue ball"}, VALIDATION,
     ["segment_prompts", "separates entries with '|' but gives none a start key"], LONG_CHECKED),
    ("long prompt schedule in FizzNodes' format", "long", "10", {"segment_prompts": '"0": "a red ball", "4": "a dog"'},
     VALIDATION, ["segment_prompts", "FizzNodes", "'0: a red ball | 4: a dog'"], LONG_CHECKED),
    ("long segment prompts without clip", "long", "10", {"segment_prompts": "0: a red ball | 4: a blue ball",
                                                          "clip": None}, EXECUTION, ["segment_prompts", "clip"]),
    ("long coordinated without a temporal expert", "long", "6", {"temporal_model": None}, EXECUTION,
     ["temporal_model"]),
    ("noise segment length 0", "noise", "11", {"segment_length": 0}, VALIDATION, ["segment_length"],
     ["segment_length", "stride", "method"]),
    ("noise FreeNoise stride above segment", "noise", "11", {"stride": 6}, VALIDATION, ["stride"],
     ["segment_length", "stride", "method"]),
    ("noise method unknown", "noise", "11", {"method": "pink"}, VALIDATION, ["method"],
     ["segment_length", "stride", "method"]),
    ("noise stride not a number", "noise", "11", {"stride": "two"}, VALIDATION, ["stride", "two"]),
    ("noise seed negative", "noise", "11", {"seed": -5}, VALIDATION, ["seed"]),
    # an input its queue-time check reads, missing from an API prompt: ComfyUI's own words, not a TypeError of the
    # check (filed under VAE Decode's samples, with a traceback)
    ("sampler te missing", "chain", "7", {"te": None}, VALIDATION, ["Required input is missing te"]),
    ("long frames missing", "long", "10", {"frames": None}, VALIDATION, ["Required input is missing frames"]),
    ("noise method missing", "noise", "11", {"method": None}, VALIDATION, ["Required input is missing method"]),
]


def _messages(result: dict) -> str:
    if result["valid"] is False:
        parts = [json.dumps(result.get("validation_error"))]
        for errs in (result.get("node_errors") or {}).values():
            for e in errs.get("errors", []):
                parts.append(f"{e.get('message')} {e.get('details')} {e.get('extra_info', {}).get('input_name')}")
        return "\n".join(parts)
    return (result.get("error") or {}).get("exception_message", "")


def _filed_under(result: dict) -> set:
    return {e.get("extra_info", {}).get("input_name") for errs in (result.get("node_errors") or {}).values()
            for e in errs.get("errors", [])}


SAMPLING_NODES = ("ConFinerControlExpert", "ConFinerCoordinatedSampler", "ConFinerLongSegmenter")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_any_expert_evaluation(comfy_worker, host_checks_v3_combos, case):
    name, graph, node, change, stage, words, *filed = case
    prompt = copy.deepcopy(GRAPHS[graph](comfy_worker.checkpoint_name))
    for key, value in change.items():
        if value is None:
            prompt[node]["inputs"].pop(key)
        else:
            prompt[node]["inputs"][key] = value
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt)
    assert not r["success"]
    assert r["evaluations"] == 0, f"{name}: {r['evaluations']} expert evaluations ran before the refusal"
    message = _messages(r)
    if stage == COMBO:
        stage = VALIDATION if host_checks_v3_combos else EXECUTION
    assert (r["valid"] is False) == (stage == VALIDATION), message
    for word in words:
        assert word in message, f"{name}: {word!r} not in {message!r}"
    if stage == VALIDATION:   # under the inputs it is about, not under every input the node validates
        assert _filed_under(r) == set(filed[0] if filed else change), message
    else:
        assert "Traceback" not in message and "\n" not in message.strip()
        failed = r["error"]["node_id"]
        if prompt[failed]["class_type"] in SAMPLING_NODES:   # its text says so, not a previous run's "done"
            texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == failed]
            assert texts, name
            assert_error_text(texts[-1], r["error"]["exception_message"])


def test_refine_steps_that_do_not_fit_a_linked_te_are_told_as_when_typed(comfy_worker):
    """T_e driven by an Int node skips the check when queued (it reads typed values): the run failed later in the
    chain's own words ("20 refinement steps do not fit between T_e=10 and 0; ... raise T_e"), naming no widget."""
    prompt = chain_prompt(comfy_worker.checkpoint_name)
    prompt["20"] = {"class_type": "PrimitiveInt", "inputs": {"value": 1}}
    prompt["7"]["inputs"].update(te=["20", 0], refine_steps=20)
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt)
    assert not r["success"] and r["evaluations"] == 0
    assert _messages(r).strip() == "refine steps (refine_steps) = 20 do not fit between T_e = 1 and 0: use at most " \
        "1 step or raise the structure timestep T_e (te)"   # (an artist read "1 steps")


@pytest.mark.parametrize("graph, words", [
    ("chain", "makes at most 2 frames without context windows, but the latent has 4"),
    # the Long Video's segments are the clips: its message names segment length, not frames or another node
    ("long", "segment length (segment_length) = 4 is above the control expert's AnimateDiff motion model's limit of "
             "2 frames: use a segment length of at most 2")])
def test_a_clip_above_the_motion_models_frame_limit_names_the_widget_that_sets_it(comfy_worker, graph, words):
    r = comfy_worker.call("comfy_support.confiner_checks:run_with_motion_frame_limit",
                          GRAPHS[graph](comfy_worker.checkpoint_name), 2)
    assert not r["success"] and r["evaluations"] == 0
    message = _messages(r)
    assert words in message, message
    assert "use ConFiner Long Video" not in message or graph == "chain"


@pytest.mark.parametrize("graph, names, temporal_cfg, said", [
    # AnimateDiff v3 sampling the control stage's 2 steps: on the control stage's node (the Long Video's)
    ("chain", ["mm_sd15_v3.safetensors"], 2.0, {"5": "warning: control motion model not few-step: load Lightning"}),
    ("long", ["mm_sd15_v3.safetensors"], 2.0, {"10": "warning: control motion model not few-step: load Lightning"}),
    # AnimateDiff-Lightning refining at cfg 7.5: on the refining node
    ("chain", ["animatediff_lightning_4step_comfyui.safetensors"], 7.5,
     {"7": "warning: few-step motion model: set temporal cfg 1"}),
    # each in its role, or a few-step one refining at cfg 2 (AnimateLCM's range): nothing said
    ("chain", ["animatediff_lightning_4step_comfyui.safetensors"], 2.0, {}),
    ("long", ["AnimateLCM_sd15_t2v.ckpt"], 2.0, {}),
])
def test_a_motion_model_in_the_other_ones_role_is_said_on_its_node(comfy_worker, graph, names, temporal_cfg, said):
    """Lightning as the temporal expert, v3 as the 4-step control expert: both run, so the video was bad without a
    word. Read off ADE's record of the files it loaded (``mm_info.mm_name``)."""
    prompt = GRAPHS[graph](comfy_worker.checkpoint_name)
    prompt["6"]["inputs"]["temporal_cfg"] = temporal_cfg
    r = comfy_worker.call("comfy_support.confiner_checks:run_with_motion_model_names", prompt, names)
    assert r["success"], r.get("error")
    warned = {node: line for node, text in r["texts"].items() for line in text.split("\n")
              if "motion model" in line}
    assert warned == said, r["texts"]


def test_a_motion_model_on_the_spatial_expert_is_said_on_the_refine_sampler(comfy_worker):
    """A trial reconnected the Lightning loader's MODEL to the bundle's spatial model: it ran at spatial cfg 7.5
    without a word (the temporal role said its own)."""
    prompt = GRAPHS["chain"](comfy_worker.checkpoint_name)
    prompt["6"]["inputs"]["temporal_cfg"] = 1.0
    r = comfy_worker.call("comfy_support.confiner_checks:run_with_motion_models", prompt,
                          ["animatediff_lightning_4step_comfyui.safetensors"])
    assert r["success"], r.get("error")
    warned = [line for line in r["texts"]["7"].split("\n") if line.startswith("warning:")]
    assert warned == ["warning: spatial model has AnimateDiff: use checkpoint MODEL"], r["texts"]
    assert not any(line.startswith("warning:") and "motion" in line for line in r["texts"]["5"].split("\n"))


def test_a_motion_model_that_does_not_fit_the_checkpoint_is_said_as_such(comfy_worker):
    """An SD 1.5 file whose UNet has fewer blocks than the motion model: AnimateDiff-Evolved's injection failed with
    "index 2 is out of range" alone in the dialog (a trial). The pack names the motion model and the mismatch."""
    r = comfy_worker.call("comfy_support.confiner_checks:run_with_failing_motion_injection",
                          GRAPHS["chain"](comfy_worker.checkpoint_name), "mm_sd15_v3.safetensors")
    assert not r["success"] and r["evaluations"] == 0
    assert _messages(r).strip() == (
        f"AnimateDiff-Evolved could not attach the motion model 'mm_sd15_v3.safetensors' to the UNet of "
        f"'{comfy_worker.checkpoint_name}' (IndexError: list index out of range): they do not fit each other; load a "
        f"checkpoint of the family the motion model was made for (SD 1.5 for AnimateDiff v3 and Lightning), or the "
        f"motion model made for this checkpoint")
    text = r["texts"][r["error"]["node_id"]]   # (under any warning lines)
    # (before any evaluation finished: "after evaluation 0/2" read like a counter's bug)
    assert_error_text(text[text.index("stopped by an error"):], _messages(r),
                      "stopped by an error before the first evaluation:")


def test_the_table_graphs_run_when_nothing_is_wrong(comfy_worker):
    for name, graph in GRAPHS.items():
        r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", graph(comfy_worker.checkpoint_name))
        assert r["success"], (name, r.get("error") or r.get("validation_error"))
        assert r["evaluations"] > 0 or name == "noise"  # the counter sees ConFiner's evaluations


def test_experts_in_different_latent_spaces_without_vaes_are_refused_before_the_structure(comfy_worker):
    r = comfy_worker.call("comfy_support.confiner_checks:mixed_latent_spaces_refused", comfy_worker.checkpoint_name)
    assert r["refused"] and "SD 1.5" in r["message"] and "SDXL" in r["message"]
    # both VAEs asked for in one message, by the inputs' labels on the node
    assert "spatial VAE (spatial_vae) on ConFiner Refine Experts" in r["message"]
    assert "temporal VAE (temporal_vae) on ConFiner Refine Experts" in r["message"]
