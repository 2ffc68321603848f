"""Modern experts in the node pack, inside a real ComfyUI (``$COMFYUI_PATH``; skipped when unset).

Tiny single-file Wan 2.1, Wan 2.2 A14B (high and low noise), Qwen-Image, Wan 2.1 VAE, UMT5, Qwen2.5-VL, Flux.1-dev,
Flux VAE, T5-XXL and CLIP-L models are built once per ComfyUI version (``comfy_support/tiny_modern_files.py``, only
the sizes ComfyUI hard-codes shrunk in the worker) and loaded by ComfyUI's own UNETLoader / VAELoader / CLIPLoader /
DualCLIPLoader; SD 1.5 is the tiny checkpoint of the other host tests. Checked: detection and the pack's reading of
the models (image vs video from the model class), the bridge through ComfyUI VAEs against VAE Decode + VAE Encode,
the A14B pair's switch at its boundary, Flux.1-dev as the spatial expert of Wan experts (bridged through the two
VAEs, its distilled guidance from FluxGuidance), refusals of a missing VAE before any evaluation, every modern
template run headless with the tiny files substituted, and ConFiner-Long with Wan experts.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from comfy_support.modern_checks import CLIP_L, FLUX, FLUX_VAE, HIGH, LOW, QWEN, QWEN_VL, T5XXL, UMT5, WAN, WAN_VAE
from comfy_support.fixtures import assert_error_text
from comfy_support.templates import A14B, LONG_WAN, SD_BRIDGE, WAN_FLUX, WAN_QWEN

pytestmark = pytest.mark.comfyui
EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"
MODERN_TEMPLATES = [WAN_QWEN, SD_BRIDGE, WAN_FLUX,
                    A14B]
BRIDGED_TEMPLATES = (SD_BRIDGE, WAN_FLUX)
REFINE_STEPS = 2
SIZE, LENGTH = 32, 5   # 32x32 pixels, 5 frames: 2 Wan latent frames of 4x4


@pytest.fixture(scope="module")
def comfy_worker(confiner_worker):  # the session's worker with the pack (tests/conftest.py)
    return confiner_worker


@pytest.fixture(scope="module")
def modern(comfy_worker):
    """The tiny modern files, built (once per ComfyUI version) and registered in the worker."""
    return comfy_worker.call("comfy_support.tiny_modern_files:install")


# ------------------------------------------------------------------------------------------------- graphs

def wan_graph(ckpt: str, spatial: str = "qwen", frames: str = "latent frames", guidance: float = 3.5) -> dict:
    """Wan control -> spatial (Qwen-Image, Wan at one frame, SD 1.5 or Flux.1-dev) + Wan temporal; VAE inputs only
    where two latent spaces meet (SD 1.5, Flux: ``guidance`` is FluxGuidance's on the spatial positive)."""
    p = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": WAN, "weight_dtype": "default"}},
        "2": {"class_type": "UNETLoader", "inputs": {"unet_name": QWEN, "weight_dtype": "default"}},
        "3": {"class_type": "CLIPLoader", "inputs": {"clip_name": UMT5, "type": "wan"}},
        "4": {"class_type": "CLIPLoader", "inputs": {"clip_name": QWEN_VL, "type": "qwen_image"}},
        "5": {"class_type": "VAELoader", "inputs": {"vae_name": WAN_VAE}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox runs", "clip": ["3", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox runs", "clip": ["4", 0]}},
        "8": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": SIZE, "height": SIZE, "length": LENGTH,
                                                                  "batch_size": 1}},
        "9": {"class_type": "ConFinerControlExpert", "inputs": {
            "model": ["1", 0], "positive": ["6", 0], "negative": ["6", 0], "latent": ["8", 0], "seed": 1,
            "steps": 2, "cfg": 2.0, "sampler": "euler", "latent_is_noise": False}},
        "10": {"class_type": "ConFinerRefineExperts", "inputs": {
            "spatial_model": ["2", 0], "spatial_positive": ["7", 0], "spatial_negative": ["7", 0], "spatial_cfg": 1.0,
            "temporal_model": ["1", 0], "temporal_positive": ["6", 0], "temporal_negative": ["6", 0],
            "temporal_cfg": 1.0, "spatial_frames": frames}},
        "11": {"class_type": "ConFinerCoordinatedSampler", "inputs": {
            "experts": ["10", 0], "structure": ["9", 0], "te": 100, "refine_steps": REFINE_STEPS,
            "mode": "coordinated", "matching": "same_index", "seed": 2}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["5", 0]}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "modern"}},
    }
    if spatial == "wan":
        p["10"]["inputs"].update(spatial_model=["1", 0], spatial_positive=["6", 0], spatial_negative=["6", 0])
    elif spatial == "sd":
        p["20"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}
        p["21"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["20", 1]}}
        p["10"]["inputs"].update(spatial_model=["20", 0], spatial_positive=["21", 0], spatial_negative=["21", 0],
                                 spatial_vae=["20", 2], temporal_vae=["5", 0])
        p["12"]["inputs"]["vae"] = ["20", 2]   # the refined video is in the spatial expert's (SD) space
    elif spatial == "flux":
        p["30"] = {"class_type": "UNETLoader", "inputs": {"unet_name": FLUX, "weight_dtype": "default"}}
        p["31"] = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": T5XXL, "clip_name2": CLIP_L,
                                                              "type": "flux"}}
        p["32"] = {"class_type": "VAELoader", "inputs": {"vae_name": FLUX_VAE}}
        p["33"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["31", 0]}}
        p["34"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["33", 0], "guidance": guidance}}
        p["10"]["inputs"].update(spatial_model=["30", 0], spatial_positive=["34", 0], spatial_negative=["33", 0],
                                 spatial_vae=["32", 0], temporal_vae=["5", 0])
        p["12"]["inputs"]["vae"] = ["32", 0]   # the refined video is in the spatial expert's (Flux) space
    return p


def long_wan_graph(ckpt: str) -> dict:
    p = wan_graph(ckpt, spatial="wan")
    del p["9"], p["11"]
    p["8"]["inputs"]["length"] = 1
    p["14"] = {"class_type": "ConFinerLongSegmenter", "inputs": {
        "control_model": ["1", 0], "control_positive": ["6", 0], "control_negative": ["6", 0], "experts": ["10", 0],
        "latent": ["8", 0], "frames": 9, "segment_length": 5, "seed": 1, "control_steps": 2, "control_cfg": 2.0,
        "control_sampler": "euler", "te": 100, "refine_steps": REFINE_STEPS, "mode": "coordinated",
        "matching": "same_index", "noise_init": "shuffle", "freenoise_stride": 2, "gamma": 0.1, "staggered": True,
        "segment_prompts": "", "control_vae": ["5", 0]}}
    p["12"]["inputs"]["samples"] = ["14", 0]
    return p


def _cost(result: dict, node: str) -> dict:
    # (the node's cost line: other console lines of the node start with its name too)
    line = next(l for l in result["cost_lines"] if l.startswith(node) and "expert evaluations" in l)
    numbers = dict((k, int(v)) for v, k in re.findall(r"(\d+) (expert evaluations|network forwards|VAE calls)", line))
    return {"evaluations": numbers.get("expert evaluations", 0), "vae_calls": numbers.get("VAE calls", 0)}


def _forwards(result: dict, node: str) -> int:
    line = next(l for l in result["cost_lines"] if l.startswith(node) and "network forwards" in l)
    return int(re.search(r"(\d+) network forwards", line).group(1))


def _message(result: dict) -> str:
    if result["valid"] is False:
        return json.dumps(result.get("node_errors"))
    return (result.get("error") or {}).get("exception_message", "")


def _saved(result: dict) -> list:
    return [img for out in result["outputs"].values() for img in out.get("images", [])]


# ------------------------------------------------------------------------------------------------- tests

def test_tiny_files_are_detected_by_comfys_own_loaders(comfy_worker, modern):
    r = comfy_worker.call("comfy_support.modern_checks:loaders_detect")
    models = r["models"]
    for name in (WAN, HIGH, LOW):
        m = models[name]
        assert (m["class"], m["latent_format"], m["flow"], m["shift"]) == ("WAN21", "Wan21", True, 8.0)
        assert m["space"] == "wan2.1" and not m["image_model"]
        # a video model: the whole clip as control or temporal expert, at one frame as the spatial expert
        assert m["layouts"] == {"control": "video", "spatial": "frames", "temporal": "video"}
        assert m["one_frame_videos"]["spatial"]
        assert m["schedule_max_abs_error"] < 1e-5
    assert {models[n]["sampling"] for n in (WAN, HIGH, LOW)} == {"ModelSamplingDiscreteFlow"}
    q = models[QWEN]
    # Qwen-Image samples as Flux does: exponential shift 1.15 over a 10000-entry table, read at the core's 1000 steps
    assert (q["class"], q["latent_format"], q["shift"], q["sampling"]) == ("QwenImage", "Wan21", 1.15,
                                                                           "ModelSamplingFlux")
    # Qwen-Image: Wan 2.1's latent format (latent_dimensions 3) but an image model, from its model class
    assert q["space"] == "wan2.1" and q["image_model"]
    assert set(q["layouts"].values()) == {"frames"} and all(q["one_frame_videos"].values())
    assert q["schedule_max_abs_error"] < 1e-5
    assert r["vae"] == {"latent_channels": 16, "latent_dim": 3, "latent_shape": [1, 16, 2, 4, 4],
                        "decoded_shape": [1, 5, 32, 32, 3]}
    assert r["clip"]["wan"] == [1, 512, 4096] and r["clip"]["qwen_image"][0] == 1 and r["clip"]["qwen_image"][2] == 64
    assert r["clip"]["finite"]


def test_tiny_flux_files_are_detected_by_comfys_own_loaders(comfy_worker, modern):
    """UNETLoader reads the tiny file as Flux.1-dev (guidance_in: distilled guidance), VAELoader the ae.safetensors
    layout as Flux's 16-channel image VAE, DualCLIPLoader (type flux) the T5-XXL and CLIP-L files; the pack reads
    an image model of the Flux latent space, flow, whose schedule is ComfyUI's."""
    r = comfy_worker.call("comfy_support.modern_checks:flux_detect")
    assert (r["class"], r["config"], r["model_type"], r["latent_format"], r["sampling"]) == \
        ("Flux", "Flux", "FLUX", "Flux", "ModelSamplingFlux")
    assert r["flow"] and r["shift"] == pytest.approx(1.15) and r["guidance_embed"]
    # an image model in every role (a 2-D latent format), of the core's Flux space (shift 0.1159, scale 0.3611)
    assert r["space"] == "flux" and r["image_model"]
    assert set(r["layouts"].values()) == {"frames"} and not any(r["one_frame_videos"].values())
    assert r["text_width"] == 64 and r["schedule_max_abs_error"] < 1e-5
    assert r["vae"] == {"latent_channels": 16, "latent_dim": 2, "latent_shape": [5, 16, 4, 4],
                        "decoded_shape": [5, 32, 32, 3], "fits_flux_space": "flux"}
    assert r["clip"] == {"cond": [1, 256, 64], "pooled": [1, 32], "finite": True}   # T5 tokens, CLIP-L pooled


def _spatial_evaluations(result: dict) -> list:
    return [e for e in result["expert_evaluations"] if e["role"] == "spatial"]


def test_flux_spatial_expert_with_wan_experts_runs_through_the_bridge(comfy_worker, modern):
    """Wan control and temporal experts with Flux.1-dev as the spatial expert, the Flux VAE on *spatial VAE*: two
    latent spaces, so the structure crosses once (2 VAE calls) and every coordinated step twice (4). Flux refines
    every pixel frame as an image, one network forward per evaluation at spatial cfg 1 (the conditional pass only,
    all 5 frames in one batch), with FluxGuidance's value in the model's guidance input. Latent previews are on:
    the Flux expert's x0 is previewed with Flux's latent format."""
    comfy_worker.call("comfy_support.confiner_checks:use_latent2rgb_previews", True)
    try:
        r = comfy_worker.call("comfy_support.modern_checks:run_recording_flux",
                              wan_graph(comfy_worker.checkpoint_name, "flux", guidance=4.0))
    finally:
        comfy_worker.call("comfy_support.confiner_checks:use_latent2rgb_previews", False)
    assert r["success"], r.get("error")
    # a preview at every evaluation (the bar also moves at each of the bridge's VAE calls, without one)
    assert sum(e["has_preview"] for e in r["progress"] if e["node_id"] == "11") == 3 * REFINE_STEPS
    assert all(e["has_preview"] for e in r["progress"] if e["node_id"] == "9")
    assert r["evaluations"] == 2 + 3 * REFINE_STEPS
    assert _cost(r, "ConFiner Refine Sampler") == {"evaluations": 3 * REFINE_STEPS, "vae_calls": 2 + 4 * REFINE_STEPS}
    assert _forwards(r, "ConFiner Refine Sampler") == 3 * REFINE_STEPS   # every expert at cfg 1
    # the console names each node's line by its id (the compare template runs three Refine Samplers)
    assert sorted(line.split(":")[0] for line in r["cost_lines"]) == ["ConFiner Control Expert #9",
                                                                      "ConFiner Refine Sampler #11"]
    spatial = _spatial_evaluations(r)
    assert len(spatial) == 2 * REFINE_STEPS and {e["model"] for e in spatial} == {"Flux"}
    assert [e["forwards"] for e in spatial] == [1] * len(spatial)
    assert r["flux_calls"] == [{"batch": LENGTH, "guidance": [4.0] * LENGTH}] * len(spatial)
    assert len(_saved(r)) == LENGTH   # VAE Decode (Flux VAE) of the refined Flux frames
    assert len(r["latents"][-1]) == LENGTH   # the Refine Sampler's LATENT: a batch of 5 Flux frames
    # until its first evaluation, the node says what its first seconds do (minutes on a CPU at the template's size)
    texts = [m[1]["text"] for m in r["server_messages"] if m[0] == "progress_text" and m[1]["node_id"] == "11"]
    opening = next(t for t in texts if t.startswith("starting"))
    assert opening == f"starting · {3 * REFINE_STEPS} expert evaluations\nfirst: the structure through the VAEs " \
                      f"(Wan 2.1 → FLUX.1)", opening


def test_flux_guidance_reaches_the_spatial_expert(comfy_worker, modern):
    """Flux.1-dev's distilled guidance is an input of the model, not CFG: FluxGuidance on the spatial positive
    changes the refinement (same seeds, guidance 1 against 4), not the structure, and costs no extra forward."""
    runs = {g: comfy_worker.call("comfy_support.modern_checks:run_recording_flux",
                                 wan_graph(comfy_worker.checkpoint_name, "flux", guidance=g)) for g in (1.0, 4.0)}
    for g, r in runs.items():
        assert r["success"], r.get("error")
        assert {v for call in r["flux_calls"] for v in call["guidance"]} == {g}
        assert len(r["flux_calls"]) == len(_spatial_evaluations(r)) == sum(e["forwards"] for e in
                                                                          _spatial_evaluations(r))
    (structure_1, *_, refined_1), (structure_4, *_, refined_4) = runs[1.0]["latents"], runs[4.0]["latents"]
    assert structure_1 == structure_4
    assert refined_1 != refined_4


@pytest.mark.parametrize("cfg", [1.0, 3.5])
def test_a_spatial_cfg_on_flux_dev_is_warned_under_the_node(comfy_worker, modern, cfg):
    """FLUX.1-dev takes its guidance as an input (FluxGuidance): a spatial cfg other than 1, as an SD user sets it,
    runs (it may be meant) at twice the spatial cost, and the Refine Sampler says so for the whole run; at 1, nothing."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "flux")
    prompt["10"]["inputs"]["spatial_cfg"] = cfg
    r = comfy_worker.call("comfy_support.modern_checks:run_recording_flux", prompt)
    assert r["success"], r.get("error")
    texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "11"]
    # its lazy check, then its run
    assert texts[0] == "waiting for its turn\n(after the structure and the nodes queued before it)"
    warned = [t.startswith("warning: spatial cfg 3.5 on a distilled model: use 1") for t in texts[1:]]
    assert all(warned) if cfg != 1.0 else not any(warned), texts[:2]
    assert max(len(line) for t in texts for line in t.split("\n")) <= 60
    spatial = _spatial_evaluations(r)
    assert [c["batch"] for c in r["flux_calls"]] == [LENGTH * (2 if cfg != 1.0 else 1)] * len(spatial)


def test_swapping_flux_for_sd15_without_its_vae_names_the_vae_input(comfy_worker, modern):
    """An artist puts SD 1.5 (model and prompts) where Flux was but leaves the Flux VAE on *spatial VAE*."""
    ckpt = comfy_worker.checkpoint_name
    prompt = wan_graph(ckpt, "flux")
    prompt["20"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}
    prompt["21"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["20", 1]}}
    prompt["10"]["inputs"].update(spatial_model=["20", 0], spatial_positive=["21", 0], spatial_negative=["21", 0])
    assert_refused_before_any_evaluation(comfy_worker, prompt, "SD 1.5 with the Flux VAE",
                                         ["spatial VAE (spatial_vae) is a VAE of 16-channel latents, 8x spatial "
                                          "(the FLUX.1 latent space's), not of the SD 1.5", "SD 1.5",
                                          "spatial model (spatial_model) works in",
                                          # where that VAE is: the message said only "its family's VAE file"
                                          "connect its own VAE (the SD 1.5 checkpoint loader's VAE output)"])


def test_another_file_in_a_templates_load_vae_is_told_to_pick_the_right_one(comfy_worker, modern):
    """A trial set the Qwen-Image template's "Wan 2.1 VAE" loader to Flux's ae.safetensors: the message led with
    "connect its own VAE (wan_2.1_vae.safetensors in Load VAE)", a rewiring, where the fix is the file in the loader
    already wired."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "qwen")
    prompt["5"].update(inputs={"vae_name": FLUX_VAE}, _meta={"title": "Wan 2.1 VAE"})
    prompt["10"]["inputs"]["spatial_vae"] = ["5", 0]
    assert_refused_before_any_evaluation(comfy_worker, prompt, "Flux's VAE file in the Wan VAE loader",
                                         ["pick wan_2.1_vae.safetensors in 'Wan 2.1 VAE'"])


def test_the_wan_file_in_the_flux_templates_vae_loader_is_told_to_pick_flux_s(comfy_worker, modern):
    """A trial set the Flux template's "FLUX.1 VAE" loader to the Wan VAE file, its temporal VAE on a loader of its
    own: told to "connect it to temporal VAE (temporal_vae) if that input is free" (it was not) and to "Load VAE",
    a node no title names, the canvas's three lines ended before any fix."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "flux")
    prompt["32"].update(inputs={"vae_name": WAN_VAE}, _meta={"title": "FLUX.1 VAE"})
    message = _message(assert_refused_before_any_evaluation(
        comfy_worker, prompt, "the Wan file in the Flux VAE loader",
        ["pick ae.safetensors in 'FLUX.1 VAE', which feeds spatial VAE (spatial_vae): it holds " + WAN_VAE]))
    assert "if that input is free" not in message and "connect it to temporal VAE" not in message


def test_another_file_in_the_long_videos_control_vae_loader_is_told_to_pick_the_right_one(comfy_worker, modern):
    """The Long Video's control VAE, its loader set to Flux's file, still led with "connect its own VAE (... in Load
    VAE)", naming a loader no node was titled (a re-check)."""
    prompt = long_wan_graph(comfy_worker.checkpoint_name)
    prompt["5"].update(inputs={"vae_name": FLUX_VAE}, _meta={"title": "Wan 2.1 VAE"})
    prompt["12"]["inputs"]["vae"] = ["40", 0]   # (the decode on the right file: the control VAE is the mistake)
    prompt["40"] = {"class_type": "VAELoader", "inputs": {"vae_name": WAN_VAE}}
    assert_refused_before_any_evaluation(comfy_worker, prompt, "Flux's VAE file in the Long Video's VAE loader",
                                         ["pick wan_2.1_vae.safetensors in 'Wan 2.1 VAE', which feeds control VAE "
                                          "(control_vae)"])


def test_a_swap_from_qwen_image_to_flux_is_told_every_fix_at_once(comfy_worker, modern):
    """The Qwen-Image template wires the Wan VAE to *spatial VAE* (Qwen shares Wan's space). An artist who swapped
    the spatial model for Flux met one problem a run: Flux's VAE on spatial VAE, then its text encoder, then the Wan
    VAE missing on *temporal VAE*, where the first message had not said it belonged."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "flux")
    prompt["10"]["inputs"].update(spatial_vae=["5", 0], spatial_positive=["7", 0], spatial_negative=["7", 0])
    del prompt["10"]["inputs"]["temporal_vae"]
    assert_refused_before_any_evaluation(comfy_worker, prompt, "Flux with Qwen's prompts and the Wan VAE",
                                         # the file first: the FLUX file in the Qwen-Image loader was told to
                                         # rewire FLUX's VAE and text encoder, never to pick the Qwen-Image file
                                         ["the spatial model, FLUX.1 (Flux), file 'confiner-tiny-flux1-dev"
                                          ".safetensors' in ", "does not fit what is connected for it: spatial VAE "
                                          "(spatial_vae) holds Wan 2.1's VAE, which belongs on temporal VAE "
                                          "(temporal_vae); its positive prompt (spatial positive, spatial_positive) "
                                          "carries no pooled text vector where it reads a pooled text vector 32 wide "
                                          "(CLIP-L's) beside the text.", "If another model was meant, pick its "
                                          "file there; if this one is, connect its own VAE (ae.safetensors in Load "
                                          "VAE) to spatial VAE (spatial_vae) and decode the video with it; encode "
                                          "the positive prompt with its own text encoder (DualCLIPLoader with type "
                                          "flux). The console says more."])


def test_a_swapped_spatial_model_is_told_its_prompts_and_the_bridges_vaes_at_once(comfy_worker, modern):
    """An artist who put a model of another family in the spatial role, prompts and VAEs as they were, met its text
    encoder on the Refine Experts, then on the next Run the two VAEs its latent space's bridge needs (the Refine
    Sampler's check, which knows the mode). A Run failing on the bundle anyway names those VAEs too."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "sd")
    prompt["10"]["inputs"].update(spatial_positive=["6", 0], spatial_negative=["6", 0])   # the Wan chain's prompt
    del prompt["10"]["inputs"]["spatial_vae"], prompt["10"]["inputs"]["temporal_vae"]
    assert_refused_before_any_evaluation(comfy_worker, prompt, "SD 1.5 with Wan's prompt, no VAEs", [
        "2 problems: (1) ", "(spatial positive, spatial_positive) is 4096 wide", "(2) in refine mode coordinated (the "
        "default), experts of different latent spaces hand the video over (spatial SD 1.5 -> temporal "
        "Wan 2.1): bridging them needs their VAEs, and 2 are missing; for SD 1.5 (the spatial expert): connect one "
        "to spatial VAE (spatial_vae) on ConFiner Refine Experts; for Wan 2.1 (the temporal expert): connect one to "
        "temporal VAE (temporal_vae) on ConFiner Refine Experts"])


def test_an_sd15_file_in_the_qwen_image_loader_is_told_in_short(comfy_worker, modern):
    """An SD 1.5 checkpoint where Qwen-Image was: its VAE and prompts are another family's. The dialog held 7 lines
    (each problem in full); it says each short, and the console has the whole story. Both prompts at once: a trial's
    artist fixed the positive and met the negative on the next Run. A ValueError: the dialog named the pack's own
    exception class by its file path."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "qwen")
    prompt["20"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": comfy_worker.checkpoint_name}}
    prompt["10"]["inputs"].update(spatial_model=["20", 0], spatial_vae=["5", 0], temporal_vae=["5", 0],
                                  spatial_cfg=2.0)   # the negative read too: both prompts named at once
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    message = _message(r)
    assert r["evaluations"] == 0 and message.strip() == (
        "the spatial model, SD 1.5 (SD15), file 'confiner-tiny-sd15-r1.safetensors' in loader "
        "'CheckpointLoaderSimple', does not fit what is connected for it: spatial VAE (spatial_vae) holds Wan 2.1's VAE, which belongs on temporal "
        "VAE (temporal_vae); its positive and negative prompts (spatial positive, spatial_positive; spatial negative, "
        "spatial_negative) are 64 wide where it reads text 768 wide. If another model was meant, pick its file "
        "there; if this one is, connect its own VAE (the SD 1.5 checkpoint loader's VAE output) to spatial VAE "
        "(spatial_vae) and decode the video with it; encode the positive and negative prompts with its own text "
        "encoder (the CLIP output of its checkpoint loader; loaded alone, Load CLIP of its type). The console says "
        "more.")
    assert r["error"]["exception_type"] == "ValueError"
    said = [line for line in r["console"] if "does not fit the prompt or VAE" in line]
    assert len(said) == 1 and len(message) < 0.8 * len(said[0])   # the dialog short, the console whole
    assert len(said) == 1 and "2 problems: (1) spatial VAE (spatial_vae) is a VAE of 16-channel latents, 8x " \
        "spatial, 4x temporal (the Wan 2.1 latent space's), not of the SD 1.5 latent space" in said[0] and \
        "(2) the spatial expert's positive conditioning (spatial positive, spatial_positive) is 64 wide and the " \
        "spatial expert's negative conditioning (spatial negative, spatial_negative) is 64 wide, but its model, SD " \
        "1.5 (SD15), reads text 768 wide" in said[0]


def test_each_clip_of_a_batch_is_the_clip_its_seed_makes_alone(comfy_worker, modern):
    """Batch size 2 on a Wan chain: the first clip is the batch-1 clip, as KSampler's first image is, and the second
    is the clip that Latent From Batch's item 1 makes alone (the seed plus its batch index, in both sampling nodes).
    One generator for the batch had interleaved the items' noise from the second draw on."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "wan")
    prompt["9"]["inputs"].update(steps=4, cfg=1.0)   # the Control Expert's defaults: the next test's warning, shown here
    r = comfy_worker.call("comfy_support.modern_checks:batch_items_against_batch_one", prompt, "11", "8")
    assert r["shapes"] == [[2, 16, 2, 4, 4], [1, 16, 2, 4, 4], [1, 16, 2, 4, 4]]
    assert r["item0_vs_batch1"] <= 1e-5 * r["max_abs"] and r["item1_vs_picked"] <= 1e-5 * r["max_abs"], r
    assert r["item0_vs_item1"] > 0.1 * r["max_abs"], r   # two clips, not one twice
    assert r["endings"]["9"].startswith("warning: 4 steps at cfg 1: try 8 steps, cfg 5, unipc\ndone"), r["endings"]
    assert "· 2 clips of 5 frames\nseed 1" in r["endings"]["9"], r["endings"]
    # the Refine Sampler's too: an artist saw only the Control Expert say so, and one 10-frame video saved
    # ... on a line of its own: the frontend broke the line past the box inside "joins"
    assert "s\n2 clips of 5 frames (a video save joins them)\nseed 2" in r["endings"]["11"], r["endings"]


def test_a_wan_control_expert_at_the_4_step_defaults_is_told_the_templates_settings(comfy_worker, modern):
    """A Control Expert added by hand for Wan kept AnimateDiff-Lightning's defaults (4 euler steps at cfg 1), made for
    a distilled model, without a word; the Wan templates set 8 unipc steps at cfg 5. Changing the sampler alone, or
    fewer steps, left the structure as blurred and is told too; more steps or another cfg, and the defaults on a
    model carrying a LoRA (a step-distilled one runs at them), say nothing."""
    notes = comfy_worker.call("comfy_support.modern_checks:distilled_control_notes",
                              [(4, 1.0, "euler"), (8, 5.0, "unipc"), (4, 1.0, "unipc"), (2, 1.0, "euler"),
                               (8, 1.0, "unipc"), (4, 5.0, "euler")])
    told = "at cfg 1: try 8 steps, cfg 5, unipc"
    assert notes == {"4 1 euler": [f"warning: 4 steps {told}"], "8 5 unipc": [],
                     "4 1 unipc": [f"warning: 4 steps {told}"], "2 1 euler": [f"warning: 2 steps {told}"],
                     "8 1 unipc": [], "4 5 euler": [], "lora": []}
    # (a run's node text: the batch test's Wan run above, at these defaults; the console's sentence: test_chain)


def test_comfys_wan22_latent_format_is_the_cores_wan22_space(comfy_worker):
    """ComfyUI's Wan 2.2 TI2V-5B format kept its class name, "Wan22", as a space of its own: messages called it
    "Wan22", the Long Video counted seconds keys at 8 fps where the model makes 24, and no VAE file was named."""
    assert comfy_worker.call("comfy_support.modern_checks:wan22_space_facts") == {
        "name": "wan2.2", "title": "Wan 2.2 5B", "fps": 24.0, "vae": "wan2.2_vae.safetensors in Load VAE",
        "same_as_diffusers": True}


def test_a_wan21_t2v_model_is_named_by_its_size(comfy_worker, modern):
    """ComfyUI loads Wan 2.1 1.3B, 14B and each Wan 2.2 A14B half as WAN21_T2V: a trial's 1.3B file was called
    "Wan 2.1 / 2.2 A14B". The transformer's width tells them apart; a width of no release is named as neither (a
    trial's tiny 1.3B stand-in was still called A14B)."""
    assert comfy_worker.call("comfy_support.modern_checks:wan21_t2v_names") == {
        "1536": "Wan 2.1 1.3B (WAN21_T2V)", "5120": "Wan 2.1 14B / 2.2 A14B (WAN21_T2V)",
        "64": "Wan 2.1 / 2.2 (WAN21_T2V)"}


@pytest.mark.parametrize("spatial", ["qwen", "sd"])
def test_a_wan_length_off_4k_plus_1_runs_as_comfyuis_latent_node_rounds_it(comfy_worker, modern, spatial):
    """Length 10 on the Wan templates' latent node: ComfyUI makes 3 latent frames of it, 9 frames, as its own Wan
    workflows do (and the README says), but the Refine Sampler refused it ("10 frames would be cut by its VAE: use 9
    or 13"). Through the SD 1.5 bridge too: those 9 frames are every space's."""
    prompt = wan_graph(comfy_worker.checkpoint_name, spatial)
    prompt["8"]["inputs"]["length"] = 10
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["success"], _message(r)
    assert len(_saved(r)) == 9


def test_the_control_vae_of_a_structure_from_another_space_is_taken_without_the_control_model(comfy_worker, modern):
    """Flux refining alone (mode standard) a Wan structure: the bridge needs the Wan VAE, which the node asks for on
    control VAE; connected there, it was refused by the check before the structure exists (which took the
    structure to be in the refining expert's space) as "not of the flux latent space that control model works in",
    with control model unconnected."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "flux")
    for name in ("temporal_model", "temporal_positive", "temporal_negative", "temporal_vae"):
        del prompt["10"]["inputs"][name]
    prompt["11"]["inputs"].update(mode="standard", control_vae=["5", 0])
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["success"], _message(r)
    assert len(_saved(r)) == LENGTH


def test_a_wan_segment_length_it_cannot_hold_is_told_the_lengths_the_widget_takes(comfy_worker, modern):
    """Segment length 4 was told "use 1 or 5", and the widget's minimum is 2."""
    prompt = long_wan_graph(comfy_worker.checkpoint_name)
    prompt["14"]["inputs"].update(segment_length=4, frames=9)
    assert_refused_before_any_evaluation(comfy_worker, prompt, "Wan segment length 4",
                                         ["segment length (segment_length) = 4", "would be cut by its VAE: use 5"])
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert "use 1 or 5" not in _message(r)


def test_a_wan_long_video_shorter_than_a_segment_is_told_only_what_is_possible(comfy_worker, modern):
    """frames 4 below Wan segments of 5: it was told to lower the segment length to at most 4 (4k+1 for Wan), and
    no 4k+1 length from 2 to 4 exists. Typed, it is refused when queued (a trial's ran the loaders first), before the
    model is known: its fix is the frames; a frame count from another node is told the model's segment lengths."""
    prompt = long_wan_graph(comfy_worker.checkpoint_name)
    prompt["14"]["inputs"]["frames"] = 4
    r = assert_refused_before_any_evaluation(comfy_worker, prompt, "Wan long video of 4 frames",
                                             ["frames = 4 is shorter than one segment", "cut to 4: raise frames to 5, "
                                              "or make one clip with ConFiner Control Expert and ConFiner Refine "
                                              "Sampler"])
    assert r["valid"] is False
    prompt["20"] = {"class_type": "PrimitiveInt", "inputs": {"value": 4}}
    prompt["14"]["inputs"]["frames"] = ["20", 0]
    r = assert_refused_before_any_evaluation(comfy_worker, prompt, "Wan long video of 4 linked frames",
                                             ["frames = 4 is shorter than one segment", "cut to 4: make one clip with "
                                              "ConFiner Control Expert and ConFiner Refine Sampler"])
    assert r["valid"] is not False


def test_a_long_video_shorter_than_a_segment_keeps_its_fix_on_the_canvas(comfy_worker, modern):
    """frames 5 (from another node: typed, it is refused when queued) below segments of 9: the node's three lines
    ended "cut to 5; lower … (see the error)" (a trial), the fix after a "; " where the canvas keeps what follows the
    last ": "."""
    prompt = long_wan_graph(comfy_worker.checkpoint_name)
    prompt["20"] = {"class_type": "PrimitiveInt", "inputs": {"value": 5}}
    prompt["14"]["inputs"].update(frames=["20", 0], segment_length=9)
    r = assert_refused_before_any_evaluation(comfy_worker, prompt, "Wan long video of 5 frames",
                                             ["frames = 5 is shorter than one segment", "cut to 5: lower the segment "
                                              "length to 5 (or make one clip: "])
    (text,) = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "14"]
    assert "lower the segment length to 5" in " ".join(text.split()), text
    assert_error_text(text, _message(r))


def test_a_wan_long_video_of_a_frame_count_its_vae_cannot_hold_is_refused_in_one_sentence(comfy_worker, modern):
    prompt = long_wan_graph(comfy_worker.checkpoint_name)
    prompt["14"]["inputs"]["frames"] = 8
    assert_refused_before_any_evaluation(comfy_worker, prompt, "Wan long video of 8 frames",
                                         ["frames = 8: the windows are joined into one clip of the refining expert's "
                                          "latent space, and the Wan 2.1 latent space holds 4k+1 frames (1, 5, 9, ...); "
                                          "8 frames would be cut by its VAE: use 5 or 9"])


@pytest.mark.parametrize("spatial", ["sd", "flux"])
def test_temporal_only_refinement_of_a_bridged_graph_outputs_the_spatial_experts_latents(comfy_worker, modern, spatial):
    """The bridge templates switched to refine mode 'temporal' returned the temporal expert's (Wan) latents, which
    their spatial-VAE decode read as one frame (Flux VAE, no error) or refused with a bare channel error (SD). The
    output goes to the spatial expert's space through the bridge (2 VAE calls), as in every other mode."""
    prompt = wan_graph(comfy_worker.checkpoint_name, spatial)
    prompt["11"]["inputs"]["mode"] = "temporal"
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    assert r["success"], r.get("error")
    assert len(_saved(r)) == LENGTH   # the template's decode (the spatial VAE): every frame
    texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "11"]
    # the VAE calls counted where the time went (a Wan VAE's take minutes on long clips)
    assert texts[-1].split("\n")[-3].startswith(f"done · {REFINE_STEPS} expert evaluations, 2 VAE calls in "), \
        texts[-1]
    # the seed it used, which the widget no longer shows once "randomize" has drawn the next one
    assert texts[-1].split("\n")[-2] == f"seed {prompt['11']['inputs']['seed']}", texts[-1]
    # a graph of two latent spaces has two VAEs: the node says which decodes its output
    assert texts[-1].split("\n")[-1] == f"output in {'SD 1.5' if spatial == 'sd' else 'FLUX.1'} latents: decode with the " \
                                        f"spatial VAE", texts[-1]
    assert _cost(r, "ConFiner Refine Sampler") == {"evaluations": REFINE_STEPS, "vae_calls": 2}


def test_a_temporal_only_output_the_spatial_experts_space_cannot_hold_is_refused_before_any_evaluation(comfy_worker,
                                                                                                      modern):
    """Mode temporal refines in the temporal expert's space, and the node hands the result to the spatial expert's:
    8 SD frames there would be cut by Wan's VAE. The library checks the experts a mode evaluates, so the node checks
    where its output goes."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "sd")
    prompt["8"] = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 8}}
    prompt["9"]["inputs"].update(model=["20", 0], positive=["21", 0], negative=["21", 0])
    prompt["10"]["inputs"].update(spatial_model=["1", 0], spatial_positive=["6", 0], spatial_negative=["6", 0],
                                  spatial_vae=["5", 0], temporal_model=["20", 0], temporal_positive=["21", 0],
                                  temporal_negative=["21", 0], temporal_vae=["20", 2])
    prompt["11"]["inputs"]["mode"] = "temporal"
    prompt["12"]["inputs"]["vae"] = ["5", 0]
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    # the frames as the graph's Empty Latent Image sets them: refused before the control stage (it had run first)
    assert not r["success"] and r["evaluations"] == 0
    # (naming the widget that sets the frames: the trial's message said what to use, not where)
    assert _message(r).strip() == ("batch_size = 8 on 'EmptyLatentImage': the spatial expert's Wan 2.1 latent space "
                                   "holds 4k+1 frames (1, 5, 9, ...); 8 frames would be cut by its VAE: use 5 or 9"), \
        _message(r)
    # a trial's swap: Wan as the spatial expert of an SD 1.5 chain, refining coordinated, its output decoded with the
    # SD VAE. The frames were refused only after the control stage, and each problem took a Run of its own: now
    # both in one refusal, before any evaluation
    prompt["11"]["inputs"]["mode"] = "coordinated"
    prompt["12"]["inputs"]["vae"] = ["20", 2]
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert not r["success"] and r["evaluations"] == 0
    message = _message(r).strip()
    assert message.startswith("2 problems: (1) batch_size = 8 on 'EmptyLatentImage': the spatial expert's Wan 2.1 "
                              "latent space holds 4k+1 frames"), message
    assert message.endswith("; (2) wire the spatial VAE, from 'VAELoader', to the vae input of 'VAEDecode': it would "
                            "decode this node's output, Wan 2.1 latents, with the temporal VAE (SD 1.5)"), message
    prompt["11"]["inputs"]["mode"] = "temporal"
    prompt["12"]["inputs"]["vae"] = ["5", 0]
    # without a spatial VAE a temporal-only output stays in the temporal expert's space (SD here): the spatial
    # expert's frame rule is no rule of this run (a review: the first version of the early check refused it)
    alone = copy.deepcopy(prompt)
    alone["10"]["inputs"].pop("spatial_vae")
    alone["12"]["inputs"]["vae"] = ["20", 2]
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", alone, fresh_cache=True)
    assert r["success"], _message(r)
    # where the graph does not say (the batch size from another node), the control stage tells them, as before
    prompt["22"] = {"class_type": "PrimitiveInt", "inputs": {"value": 8}}
    prompt["8"]["inputs"]["batch_size"] = ["22", 0]
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert not r["success"] and r["evaluations"] == prompt["9"]["inputs"]["steps"]
    assert "8 frames would be cut by its VAE: use 5 or 9" in _message(r), _message(r)
    prompt["8"]["inputs"]["batch_size"] = 9   # a count both spaces hold: runs
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["success"], r.get("error")


def test_the_long_videos_temporal_only_output_is_the_spatial_experts_latents_too(comfy_worker, modern):
    """The Long Video in mode temporal with an SD 1.5 spatial expert beside Wan: its output, decoded with the SD VAE
    as after every other mode, holds every frame."""
    sd = wan_graph(comfy_worker.checkpoint_name, "sd")
    long = long_wan_graph(comfy_worker.checkpoint_name)
    long["20"], long["21"], long["10"] = sd["20"], sd["21"], sd["10"]
    long["14"]["inputs"]["mode"] = "temporal"
    long["12"]["inputs"]["vae"] = ["20", 2]
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", long, fresh_cache=True)
    assert r["success"], r.get("error")
    assert len(_saved(r)) == long["14"]["inputs"]["frames"]
    texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "14"]
    assert texts[-1].split("\n")[-1] == "output in SD 1.5 latents: decode with the spatial VAE", texts[-1]


def test_temporal_only_refinement_without_a_spatial_vae_says_its_output_is_the_temporal_experts(comfy_worker, modern):
    """Without the spatial expert's VAE (temporal mode needs none) the output stays in the temporal expert's space,
    and the node says which VAE decodes it."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "sd")
    prompt["11"]["inputs"]["mode"] = "temporal"
    del prompt["10"]["inputs"]["spatial_vae"]
    prompt["12"]["inputs"]["vae"] = ["5", 0]   # the Wan VAE: what the note says
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["success"], r.get("error")
    assert len(_saved(r)) == LENGTH
    texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "11"]
    assert texts[-1].split("\n")[-1] == "output in Wan 2.1 latents: decode with the temporal VAE", texts[-1]
    assert texts[-1].split("\n")[-3].startswith(f"done · {REFINE_STEPS} expert evaluations in ")
    assert texts[-1].split("\n")[-2] == f"seed {prompt['11']['inputs']['seed']}", texts[-1]


@pytest.mark.parametrize("matching, warned", [("same_index", True), ("nearest", False), ("auto", False)])
def test_same_index_across_a_vp_and_a_flow_expert_is_warned_under_the_refine_sampler(comfy_worker, modern, matching,
                                                                                     warned):
    """SD 1.5 spatial and Wan temporal put T_e 100 at noise-to-signal 0.34 and 0.11: 'same_index' re-noises the
    temporal expert far below the spatial expert's level. The library and command line warned; the node said
    nothing. 'nearest' is not warned, nor 'auto' (the default), which is nearest here and says so."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "sd")
    prompt["11"]["inputs"]["matching"] = matching
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["success"], r.get("error")
    texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "11"]
    note = "warning: experts at unequal noise: matching nearest"
    steps = [t for t in texts if "\nstep " in t]
    assert steps and all((note in t.split("\n")) == warned for t in steps), texts[:3]
    done = texts[-1].split("\nseed ")[0]   # the summary, its parts on lines of at most 60 characters
    assert ("matching nearest" in done.replace("\n", " · ").split(" · ")) == (matching == "auto"), texts[-1]
    if matching == "same_index":   # the Long Video refines with the same experts, and says so too
        long = long_wan_graph(comfy_worker.checkpoint_name)
        long["20"], long["21"] = prompt["20"], prompt["21"]
        long["10"] = prompt["10"]
        long["12"]["inputs"]["vae"] = ["20", 2]   # the refined video is in the spatial expert's (SD) space
        r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", long, fresh_cache=True)
        assert r["success"], r.get("error")
        texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "14"]
        assert texts and all(note in t.split("\n") for t in texts if "\nstep " in t), texts[:3]


def test_a_long_video_whose_last_window_is_cut_says_which_frame_counts_keep_every_refined_frame(comfy_worker, modern):
    """The Wan template's 161 frames at segment length 33 refined its last window whole for 29 frames, said on the
    command line and not on the node. 9 frames at 5 keep 4 of the last 5; the joined clip holds Wan's 4k+1 frames
    only, so 10 (a whole window more, the same cost) is not offered: the nearest below and above that are, 5 and 25.
    13 frames keep 3 of 5, the same nearest counts; 25 frames keep every frame: no note."""
    for frames, note in ((9, "note: last window keeps 4 of 5; frames 5 or 25 keep all"),
                         (13, "note: last window keeps 3 of 5; frames 5 or 25 keep all"), (25, None)):
        prompt = long_wan_graph(comfy_worker.checkpoint_name)
        prompt["14"]["inputs"]["frames"] = frames
        r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
        assert r["success"], r.get("error")
        texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "14"]
        steps = [t for t in texts if "\nstep " in t]
        assert steps, texts[:3]
        assert all(any(line.startswith("note: last window") for line in t.split("\n")) == (note is not None)
                   for t in steps), steps[0]
        if note:   # (a line of at most 60 characters), and why those counts (a trial asked why not 10 or 15)
            assert note in steps[0].split("\n") and len(note) <= 60, steps[0]
            lines = steps[0].split("\n")
            assert lines[lines.index(note) + 1] == "(whole windows, and 4k+1 frames for Wan 2.1's VAE)", steps[0]


def test_the_long_videos_freenoise_stride_0_is_the_librarys_default(comfy_worker, modern):
    """The widget's fixed default 4 gave Wan segments another FreeNoise than the library's default, a quarter of the
    window (a review): 0 is that default now. Segments of 5 frames are windows of 2 latent frames, whose quarter is
    1 (at least 1): stride 0 makes stride 1's video, and stride 2's differs (the stride shapes the noise)."""
    import cv2   # (the command line's image library: the tests have it; PIL is ComfyUI's)
    import numpy as np

    frames = {}
    for stride in (0, 1, 2):
        prompt = long_wan_graph(comfy_worker.checkpoint_name)
        prompt["14"]["inputs"].update(noise_init="freenoise", freenoise_stride=stride, frames=13)
        r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
        assert r["success"], r.get("error")
        frames[stride] = np.stack([cv2.imread(str(Path(comfy_worker.output_dir) / i["subfolder"] / i["filename"]),
                                              cv2.IMREAD_UNCHANGED) for i in _saved(r)])
    assert frames[0].shape[0] == 13
    assert np.array_equal(frames[0], frames[1])
    assert not np.array_equal(frames[0], frames[2])


def test_structure_noise_on_a_wan_control_schedule_before_an_sd_spatial_expert_is_warned(comfy_worker, modern):
    """structure noise 'control' noises the structure on Wan's schedule (T_e 100: noise-to-signal 0.11) for SD 1.5 to
    read as its own T_e (0.34): said under the Refine Sampler, as the library and command line say it."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "sd")
    prompt["11"]["inputs"].update(matching="nearest", structure_noise="control", control_model=["1", 0])
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["success"], r.get("error")
    texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "11"]
    steps = [t for t in texts if "\nstep " in t]
    assert steps and all("warning: unequal noise: structure noise schedule spatial" in t.split("\n")
                         for t in steps), texts[:3]


def test_an_image_temporal_model_beside_a_video_spatial_one_is_told_to_swap_them(comfy_worker, modern):
    """Qwen-Image on temporal_model and Wan on spatial_model (the two connected the other way round) ran with "the
    temporal expert is an image model: no coherence" and advice to attach a motion model; the fix is the swap, and
    as on the command line a transformer image model is refused in a video role."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "qwen")
    bundle = prompt["10"]["inputs"]
    for suffix in ("model", "positive", "negative"):
        bundle[f"spatial_{suffix}"], bundle[f"temporal_{suffix}"] = bundle[f"temporal_{suffix}"], \
            bundle[f"spatial_{suffix}"]
    assert_refused_before_any_evaluation(comfy_worker, prompt, "Qwen-Image as temporal, Wan as spatial",
                                         ["the temporal expert (temporal model on ConFiner Refine Experts) is "
                                          f"Qwen-Image (QwenImage), file '{QWEN}', an image model",
                                          # the image model's loader feeds no control expert: the links were
                                          # swapped, not the files (the files' advice moved the error there)
                                          "the spatial model is the video model: connect the two the other way "
                                          "round (spatial model <-> temporal model)"])


def test_files_picked_in_each_others_loaders_are_told_to_go_back_in_one_refusal(comfy_worker, modern):
    """An artist picked Qwen-Image's file in the Wan loader and Wan's in Qwen-Image's, was told to swap the two links
    on the bundle, did, and met a second refusal on the Control Expert, which the Wan loader feeds too. The refusal
    names the files to pick in each loader (the Refine Experts bundle runs first: the Control Expert's structure is
    not needed before the Refine Sampler's lazy check)."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "qwen")
    prompt["1"]["inputs"]["unet_name"], prompt["2"]["inputs"]["unet_name"] = QWEN, WAN
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, True)
    assert not r["success"] and r["evaluations"] == 0
    message = _message(r)
    # (the links alone would move the refusal to the Control Expert: not offered)
    assert message.strip().endswith(f"the spatial model is the video model: pick '{WAN}' in the loader of the temporal "
                            f"model (it feeds the Control Expert too) and '{QWEN}' in the spatial model's"), message
    # following it fixes the graph: the files back in their loaders
    prompt["1"]["inputs"]["unet_name"], prompt["2"]["inputs"]["unet_name"] = WAN, QWEN
    assert comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, True)["success"]


@pytest.mark.parametrize("loader", ["1", "2"], ids=["flux_in_the_wan_loader", "qwen_image_in_the_wan_loader"])
def test_an_image_model_in_the_wan_loader_is_named_before_its_text_encoder_or_vae(comfy_worker, modern, loader):
    """An artist picks an image model's file in the Wan loader of a template (control and temporal): the first
    refusal was its text width, its VAE or '[F, C, h, w]', whose fixes led nowhere; now it is the model. It names the
    control expert too: an artist who had changed the control model's file read only of the temporal expert."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "flux" if loader == "1" else "qwen")
    prompt["1"]["inputs"]["unet_name"] = FLUX if loader == "1" else QWEN
    prompt["1"]["_meta"] = {"title": "Wan 2.1 T2V 1.3B (control + temporal)"}   # as the template titles it
    name = f"FLUX.1 (Flux), file '{FLUX}'" if loader == "1" else f"Qwen-Image (QwenImage), file '{QWEN}'"
    assert_refused_before_any_evaluation(comfy_worker, prompt, f"{name} in the Wan loader",
                                         [f"is {name}, an image model: it makes every frame on its own, with no "
                                          "motion", "its loader 'Wan 2.1 T2V 1.3B (control + temporal)' feeds the "
                                          "Control Expert too, so the control expert is this image model as well: "
                                          "pick the video model's file (Wan) in that loader"])


def test_an_sd_model_with_no_motion_model_in_the_wan_loader_leads_with_its_file(comfy_worker, modern):
    """An SD 1.5 file picked in the template's Wan loader (control and temporal): a motion model may attach to an SD
    model, so it is warned, not refused, and the first problems were the Wan prompt's width and a VAE, whose fixes
    led away from the file (a trial). With no motion model attached and its prompt unfit, the file leads."""
    ckpt = comfy_worker.checkpoint_name
    prompt = wan_graph(ckpt, "qwen")
    prompt["20"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt},
                    "_meta": {"title": "Wan 2.1 T2V 1.3B (control + temporal)"}}
    prompt["9"]["inputs"]["model"] = prompt["10"]["inputs"]["temporal_model"] = ["20", 0]
    assert_refused_before_any_evaluation(comfy_worker, prompt, "SD 1.5 in the Wan loader",
                                         [f"the temporal model, SD 1.5 (SD15), file '{ckpt}' in loader 'Wan 2.1 T2V "
                                          f"1.3B (control + temporal)', an image model with no motion model attached, "
                                          f"does not fit the prompt or VAE connected for it: if another model was "
                                          f"meant, pick its file there"])


def test_an_image_model_wired_into_the_control_expert_is_named_by_that_nodes_socket(comfy_worker, modern):
    """Qwen-Image's MODEL into the Control Expert: the refusal named "the control model", which is a socket of the
    Refine Sampler; the Control Expert's socket is "model"."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "qwen")
    prompt["9"]["inputs"]["model"] = ["2", 0]
    assert_refused_before_any_evaluation(comfy_worker, prompt, "Qwen-Image into the Control Expert",
                                         ["the control expert (model on ConFiner Control Expert) is Qwen-Image"])


@pytest.mark.parametrize("socket", ["long_control_model", "low_noise_model", "temporal_low_noise_model"])
def test_an_image_model_in_a_video_role_is_named_by_the_socket_it_is_wired_into(comfy_worker, modern, socket):
    """The refusal named the Control Expert's "model" also for Qwen-Image on the Long Video's control model (a node
    the graph may not hold), and each role's first socket for a model on its low-noise one."""
    if socket == "long_control_model":
        prompt = long_wan_graph(comfy_worker.checkpoint_name)
        prompt["14"]["inputs"]["control_model"] = ["2", 0]
        place = "the control expert (control model on ConFiner Long Video) is Qwen-Image"
    else:
        prompt = wan_graph(comfy_worker.checkpoint_name, "wan")
        if socket == "low_noise_model":
            prompt["9"]["inputs"]["low_noise_model"] = ["2", 0]
            place = "the control expert (low-noise model on ConFiner Control Expert) is Qwen-Image"
        else:
            prompt["10"]["inputs"]["temporal_low_noise_model"] = ["2", 0]
            place = "the temporal expert (temporal low-noise model on ConFiner Refine Experts) is Qwen-Image"
    assert_refused_before_any_evaluation(comfy_worker, prompt, f"Qwen-Image on {socket}", [place])


def test_a_missing_temporal_model_in_a_wan_graph_suggests_a_wan_model(comfy_worker, modern):
    """The refusal for an unconnected temporal model suggested SD 1.5 + AnimateDiff also inside a Wan graph."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "qwen")
    for suffix in ("model", "positive", "negative"):
        del prompt["10"]["inputs"][f"temporal_{suffix}"]
    assert_refused_before_any_evaluation(comfy_worker, prompt, "no temporal model beside Qwen-Image",
                                         ["needs a temporal expert", "(Wan, e.g. the control expert's model)"])


def test_an_image_batch_into_a_wan_control_expert_is_refused_before_any_evaluation(comfy_worker, modern, comfy_path):
    """Empty Latent Image with batch size = frames (the SD way) into a Wan control expert became 16 one-frame
    videos, each made alone: 16 stills and no warning. It is refused, with the Wan latent to use, named as the
    host's node library lists it (0.3.64 by its id alone: a trial searched for 0.8's name there)."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "wan")
    prompt["8"] = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 16}}
    hunyuan = (comfy_path / "comfy_extras" / "nodes_hunyuan.py").read_text()
    named = 'display_name="Empty HunyuanVideo 1.0 Latent"' in hunyuan
    assert_refused_before_any_evaluation(comfy_worker, prompt, "image batch into Wan",
                                         ["control latent is a batch of 16 images", "one-frame videos",
                                          "use Empty HunyuanVideo 1.0 Latent (EmptyHunyuanLatentVideo) with" if named
                                          else "use EmptyHunyuanLatentVideo with", "length 17"])


def test_a_video_latent_into_an_sd_control_expert_names_the_latent_it_takes(comfy_worker, modern):
    """Wan's video latent into an SD 1.5 Control Expert was told "this model expects [F, C, h, w] (one frame per
    batch entry)": tensor notation an artist cannot act on. The message names the latent node to use."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "sd")
    prompt["9"]["inputs"].update(model=["20", 0], positive=["21", 0], negative=["21", 0])
    assert_refused_before_any_evaluation(comfy_worker, prompt, "a Wan latent into SD 1.5",
                                         ["control latent has shape", "but SD 1.5 (SD15) takes an image-batch latent",
                                          "Empty Latent Image: its batch size is the frame count"])


def test_a_wan_prompt_into_the_flux_spatial_expert_is_refused_before_any_evaluation(comfy_worker, modern):
    """Flux reads its text width off its own txt_in layer; the message names Flux's text encoder loader."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "flux")
    prompt["10"]["inputs"]["spatial_positive"] = ["6", 0]
    assert_refused_before_any_evaluation(comfy_worker, prompt, "Wan prompt into Flux",
                                         ["spatial expert's positive conditioning", "4096 wide", "Flux",
                                          "DualCLIPLoader with type flux"])


def test_a_prompt_without_clip_ls_pooled_vector_into_flux_is_refused_before_any_evaluation(comfy_worker, modern):
    """A T5-only prompt is as wide as Flux's text input (so is a real Wan prompt: UMT5-XXL and Flux's T5-XXL are both
    4096 wide), but carries no CLIP-L pooled vector, which ComfyUI would replace with zeros without a word."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "flux")
    prompt["35"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": T5XXL, "type": "ltxv"}}
    prompt["36"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["35", 0]}}
    prompt["10"]["inputs"]["spatial_positive"] = ["36", 0]
    assert_refused_before_any_evaluation(comfy_worker, prompt, "T5-only prompt into Flux",
                                         ["spatial expert's positive conditioning (spatial positive, "
                                          "spatial_positive) carries no pooled text vector",
                                          "reads a pooled text vector 32 wide (CLIP-L's) beside the text", "Flux",
                                          "DualCLIPLoader with type flux"])


def test_bridge_through_comfy_vaes_equals_decode_then_encode(comfy_worker, modern):
    r = comfy_worker.call("comfy_support.modern_checks:bridge_equals_decode_then_encode", comfy_worker.checkpoint_name)
    assert r["shapes"]["wan_to_sd"][0] == [1, 4, 5, 4, 4] and r["shapes"]["sd_to_wan"][0] == [1, 16, 2, 4, 4]
    assert r["shapes"]["wan_to_pixel_frames"][0] == [1, 16, 5, 4, 4]
    for pair, diff in r["max_abs_diff"].items():
        assert r["shapes"][pair][0] == r["shapes"][pair][1]
        assert diff <= 1e-4 * max(1.0, r["scale"][pair]), (pair, diff)
    # one whole-clip decode and one encode per hand-off, whatever the frames inside
    assert r["calls"] == {"sd": {"encode": 1, "decode": 1}, "wan": {"encode": 1, "decode": 2},
                          "pixel_frames": {"encode": 1, "decode": 0}}


def test_a14b_pair_switches_at_its_boundary(comfy_worker, modern):
    r = comfy_worker.call("comfy_support.modern_checks:pair_switches_at_boundary", 4, 0.875)
    assert r["pair"] == "ExpertPair" and r["finite"]
    calls = r["calls"]
    assert len(calls) == r["evaluations"] == r["forwards"] == 4   # cfg 1: one network forward per evaluation
    # the control stage ran at ComfyUI's own 'simple' schedule, the high-noise model exactly where sigma >= 0.875
    assert [s for _, s in calls] == pytest.approx(r["simple_sigmas"], abs=1e-5)
    assert [tag for tag, _ in calls] == ["high" if s >= 0.875 else "low" for s in r["simple_sigmas"]]
    assert {tag for tag, _ in calls} == {"high", "low"}
    # stage sessions (as the node runs it): one sampling call per member, the high-noise one ended at the hand-over,
    # the same evaluations and the same structure, bit for bit, as one sampling call per evaluation
    assert r["sessions_equal"] and r["same_calls"]
    assert r["sampling_calls"] == {"session": 2, "per_evaluation": 4}


def _texts(r: dict) -> dict:
    """node id -> every progress text it showed, in order."""
    texts = {}
    for event, data in r["server_messages"]:
        if event == "progress_text":
            texts.setdefault(data["node_id"], []).append(data["text"])
    return texts


def test_a_wan22_half_where_the_other_belongs_is_warned_by_its_file_name(comfy_worker, modern):
    """An artist picked Wan 2.2 A14B's high-noise file where Wan 2.1's was ("newer, just swap the file"): the
    temporal expert refined from T_e 250, far below the boundary the half was trained above, and the control stage
    sampled across it, without a word (the halves are one architecture: only the loader's file name tells them
    apart). Through a LoRA-like patch node too; the pair wired as the A14B template wires it says nothing."""
    prompt = wan_graph(comfy_worker.checkpoint_name)
    prompt["1"]["inputs"]["unet_name"] = HIGH
    prompt["15"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}}
    prompt["10"]["inputs"]["temporal_model"] = ["15", 0]
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    assert r["success"], r.get("error")
    texts = _texts(r)
    # (the input to connect by its label: the Refine Sampler's warning is about the bundle's input)
    assert texts["9"][-1].startswith("warning: high-noise half alone: add low-noise model\n"), texts["9"][-1]
    assert texts["11"][-1].startswith("warning: high-noise half alone: add temporal low-noise model\n"), \
        texts["11"][-1]
    assert max(len(line) for t in texts["9"] + texts["11"] for line in t.split("\n")) <= 60
    # the pair as the template wires it: high-noise model, low-noise model beside it
    prompt["16"] = {"class_type": "UNETLoader", "inputs": {"unet_name": LOW, "weight_dtype": "default"}}
    prompt["9"]["inputs"]["low_noise_model"] = ["16", 0]
    prompt["10"]["inputs"]["temporal_low_noise_model"] = ["16", 0]
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    assert r["success"], r.get("error")
    assert not any("Wan 2.2" in t or "half" in t for ts in _texts(r).values() for t in ts), _texts(r)
    # ... and swapped
    prompt["9"]["inputs"].update(model=["16", 0], low_noise_model=["1", 0])
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    assert r["success"], r.get("error")
    assert _texts(r)["9"][-1].startswith("warning: control high/low-noise files swapped: swap them\n")
    # the loaders named by their titles, where the files are picked (a trial was sent to the Control Expert)
    prompt["1"]["_meta"], prompt["16"]["_meta"] = {"title": "high noise (control)"}, {"title": "low noise (all roles)"}
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    assert any(f"pick '{HIGH}' in 'low noise (all roles)' and '{LOW}' in 'high noise (control)'" in line
               for line in r["console"]), r["console"]
    # ... as a trial swapped them, in the two loaders of the A14B template ("high noise (control)" feeds the control
    # model, "low noise (all roles)" its low-noise model and the temporal one): the Refine Sampler said "add temporal
    # low-noise model", which wires around the swap instead of undoing it
    prompt["10"]["inputs"]["temporal_model"] = ["1", 0]
    del prompt["10"]["inputs"]["temporal_low_noise_model"]
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    assert _texts(r)["9"][-1].startswith("warning: control high/low-noise files swapped: swap them\n")
    assert _texts(r)["11"][-1].startswith("warning: high/low-noise files swapped in loaders: swap them\n"), \
        _texts(r)["11"][-1]
    # ... then only the control loader fixed to the high-noise file (both loaders now hold it): the bundle, whose
    # inputs did not change, comes from ComfyUI's cache, and the Refine Sampler said "swapped" still, naming a
    # low-noise file in a loader that no longer held it. It reads the graph at its own run.
    # ... and a hand-built graph whose low-noise loader feeds the control's low-noise input, right, and no temporal
    # one: no file is swapped (a re-check was told to swap the loaders' files, which broke the control expert)
    handmade = copy.deepcopy(prompt)
    handmade["9"]["inputs"].update(model=["1", 0], low_noise_model=["16", 0])
    handmade["1"]["inputs"]["unet_name"], handmade["16"]["inputs"]["unet_name"] = HIGH, LOW
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", handmade)
    assert _texts(r)["11"][-1].startswith("warning: high-noise half alone: add temporal low-noise model\n"), \
        _texts(r)["11"][-1]
    assert not any(t.startswith("warning: control") for t in _texts(r)["9"]), _texts(r)["9"]
    partly = copy.deepcopy(prompt)
    partly["16"]["inputs"]["unet_name"] = HIGH
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", partly)   # (cache kept)
    assert r["success"], r.get("error")
    assert "10" not in {d["node"] for e, d in r["server_messages"] if e == "executing" and d and d.get("node")}
    assert _texts(r)["11"][-1].startswith("warning: high-noise half alone: add temporal low-noise model\n"), \
        _texts(r)["11"][-1]
    # one half in both inputs: the control stage ran with no word
    prompt["9"]["inputs"].update(model=["1", 0], low_noise_model=["1", 0])
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    assert _texts(r)["9"][-1].startswith("warning: both halves high-noise: load low-noise file\n")
    # the low-noise half alone as the control model: the input to load the other into, by its label
    prompt["9"]["inputs"]["model"] = ["16", 0]
    del prompt["9"]["inputs"]["low_noise_model"]
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    assert _texts(r)["9"][-1].startswith("warning: low-noise half as model: load high-noise\n")
    assert max(len(line) for ts in _texts(r).values() for t in ts for line in t.split("\n")
               if line.startswith("warning")) <= 60


def test_a_matching_outside_coordinated_refinement_is_said_unused_with_what_reads_it(comfy_worker, modern):
    """The Refine Sampler said "warning: temporal timestep matching not used (console)": now what reads it."""
    prompt = wan_graph(comfy_worker.checkpoint_name)
    prompt["11"]["inputs"].update(mode="standard", matching="nearest")
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    assert r["success"], r.get("error")
    assert _texts(r)["11"][-1].startswith("warning: matching unused: only coordinated mode reads it\n")


def test_same_space_graph_needs_no_vae_and_calls_none(comfy_worker, modern):
    """Wan control -> Qwen-Image spatial (latent frames) + Wan temporal: one latent space, no VAE input, no VAE call."""
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", wan_graph(comfy_worker.checkpoint_name))
    assert r["success"], r.get("error")
    assert r["evaluations"] == 2 + 3 * REFINE_STEPS
    assert _cost(r, "ConFiner Refine Sampler") == {"evaluations": 3 * REFINE_STEPS, "vae_calls": 0}
    assert len(_saved(r)) == LENGTH   # VAE Decode of the refined Wan latent: 5 frames


@pytest.mark.parametrize("spatial, frames", [("sd", "latent frames"), ("qwen", "pixel frames")])
def test_bridged_graph_reports_its_vae_calls(comfy_worker, modern, spatial, frames):
    """SD 1.5 spatial + Wan temporal (two latent spaces), and Qwen-Image on pixel frames (Wan's per-frame space): the
    structure crosses once (2 VAE calls) and every coordinated step twice (4). Latent previews are on: each expert's
    x0 is previewed with its own latent format."""
    prompt = wan_graph(comfy_worker.checkpoint_name, spatial, frames)
    if spatial == "qwen":
        prompt["10"]["inputs"]["spatial_vae"] = ["5", 0]   # one VAE serves both experts of the Wan space
    comfy_worker.call("comfy_support.confiner_checks:use_latent2rgb_previews", True)
    try:
        # the two-space graph also runs with one sampling call per evaluation: the stage sessions, with VAE calls on
        # the node's thread between their evaluations, must give the same latents bit for bit
        r = comfy_worker.call("comfy_support.modern_checks:" + ("run_with_and_without_sessions" if spatial == "sd"
                                                                else "run_logging_cost"), prompt)
    finally:
        comfy_worker.call("comfy_support.confiner_checks:use_latent2rgb_previews", False)
    assert r["success"], r.get("error")
    if spatial == "sd":
        assert r["per_evaluation_success"] and r["latents"] == 2 and r["sessions_equal"]  # structure, refined
    assert all(e["has_preview"] for e in r["progress"] if e["node_id"] == "9")
    assert _cost(r, "ConFiner Refine Sampler") == {"evaluations": 3 * REFINE_STEPS, "vae_calls": 2 + 4 * REFINE_STEPS}
    # the bar moves at every evaluation, with its preview, and at every VAE call, its total growing as they come: it
    # stood still through each VAE call before (seconds to minutes with a Wan VAE). A call joins the total at its
    # start and counts as done at the next update (counted at its start, a long video's last join read 100 %)
    bar = [e for e in r["progress"] if e["node_id"] == "11"]
    assert sum(e["has_preview"] for e in bar) == 3 * REFINE_STEPS and len(bar) == 3 * REFINE_STEPS + 2 + 4 * REFINE_STEPS
    assert bar[-1]["total"] == len(bar) and all(b["total"] - a["total"] == (not b["has_preview"])
                                                 for a, b in zip(bar, bar[1:])), bar
    assert all(e["total"] - e["value"] == 3 * REFINE_STEPS - sum(p["has_preview"] for p in bar[:i + 1])
               + (not e["has_preview"]) for i, e in enumerate(bar)), bar   # the evaluations left, and the VAE call
    assert len(_saved(r)) == LENGTH   # SD frames, or one-frame Wan latents: one image per pixel frame
    # each VAE call is said on the node in place of the step, which stood still meanwhile (seconds to minutes for a
    # Wan VAE): the structure's decode with the Wan VAE first (connected as temporal_vae, or spatial_vae for Qwen)
    texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "11"]
    said = [t.split("\n")[-2:] for t in texts if "between experts · " in t]
    assert len(said) == 2 + 4 * REFINE_STEPS, texts
    assert any(line.startswith(f"done · {3 * REFINE_STEPS} expert evaluations, {len(said)} VAE calls in ")
               for line in texts[-1].split("\n")), texts[-1]
    assert said[0] == ["between experts · decoding 5 frames", f"with the {'temporal' if spatial == 'sd' else 'spatial'} "
                       f"VAE · before evaluation 1/{3 * REFINE_STEPS}"], said[0]
    assert said[2][1].endswith(f"VAE · after evaluation 1/{3 * REFINE_STEPS}"), said[2]   # the first step's hand-off


# (case, graph change, words the message must contain)
MISSING_VAE = [
    ("SD spatial without its VAE", lambda p: p["10"]["inputs"].pop("spatial_vae"), ["spatial_vae", "SD 1.5", "Wan 2.1"]),
    ("Flux spatial without its VAE", "flux", ["spatial_vae", "FLUX.1", "Wan 2.1"]),
    ("Wan temporal without its VAE", lambda p: p["10"]["inputs"].pop("temporal_vae"), ["temporal_vae", "Wan 2.1"]),
    ("pixel frames without a VAE", "pixel", ["spatial_vae", "pixel frames"]),
    ("SD structure into Wan experts without control_vae", "sd-control", ["control_vae", "SD 1.5"]),
    ("Wan windows joined without control_vae", "long", ["control_vae", "ConFiner Long Video"]),
]


@pytest.mark.parametrize("case, change, words", MISSING_VAE, ids=[c[0] for c in MISSING_VAE])
def test_missing_vae_is_refused_before_any_evaluation(comfy_worker, modern, case, change, words):
    ckpt = comfy_worker.checkpoint_name
    if change == "pixel":
        prompt = wan_graph(ckpt, "qwen", "pixel frames")
    elif change == "flux":
        prompt = wan_graph(ckpt, "flux")
        prompt["10"]["inputs"].pop("spatial_vae")
    elif change == "sd-control":
        prompt = wan_graph(ckpt, "wan")
        prompt["20"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}
        prompt["21"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["20", 1]}}
        prompt["22"] = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE,
                                                                     "batch_size": LENGTH}}
        prompt["9"]["inputs"].update(model=["20", 0], positive=["21", 0], negative=["21", 0], latent=["22", 0])
        prompt["11"]["inputs"]["control_model"] = ["20", 0]
        prompt["10"]["inputs"]["spatial_vae"] = ["5", 0]
    elif change == "long":
        prompt = long_wan_graph(ckpt)
        prompt["14"]["inputs"].pop("control_vae")
    else:
        prompt = wan_graph(ckpt, "sd")
        change(prompt)
    assert_refused_before_any_evaluation(comfy_worker, prompt, case, words)


def _sd_long(prompt: dict, ckpt: str) -> dict:
    """The Long Video of the Wan template with an SD 1.5 spatial expert (two latent spaces)."""
    sd = wan_graph(ckpt, "sd")
    prompt.update({k: sd[k] for k in ("20", "21")})
    prompt["10"] = sd["10"]
    return prompt


# (case, graph, words the message must contain): a decode given the other expert's VAE failed in ComfyUI's VAE
# Decode after the whole run ("tuple index out of range")
WRONG_DECODE_VAE = [
    ("the temporal VAE on an SD 1.5 spatial expert's output",
     lambda ckpt: {**(p := wan_graph(ckpt, "sd")), "12": {**p["12"], "inputs": {**p["12"]["inputs"], "vae": ["5", 0]}}},
     ["wire the spatial VAE, from 'CheckpointLoaderSimple', to the vae input of 'VAEDecode': it would decode this "
      "node's output, SD 1.5 latents, with the temporal VAE (Wan 2.1)"]),
    ("another loader of the temporal VAE's file on a Flux spatial expert's output",
     lambda ckpt: {**(p := wan_graph(ckpt, "flux")), "40": {"class_type": "VAELoader", "inputs": {"vae_name": WAN_VAE}},
                   "12": {**p["12"], "inputs": {**p["12"]["inputs"], "vae": ["40", 0]}}},
     ["wire the spatial VAE, from 'VAELoader', to the vae input of 'VAEDecode'", "FLUX.1 latents, with the temporal "
      "VAE (Wan 2.1)"]),
    ("the temporal VAE on a Long Video of an SD 1.5 spatial expert",
     lambda ckpt: _sd_long(long_wan_graph(ckpt), ckpt),
     ["to the vae input of 'VAEDecode': it would decode this node's output, SD 1.5 latents, with the temporal VAE "
      "(Wan 2.1)"]),
    # ... and in a graph of one latent space, a VAE file of another family: a Load VAE left on its first file, Flux's,
    # decoded a trial's Wan clip into one frame, and the run said "done"
    ("the Flux VAE file on a Wan graph's output",
     lambda ckpt: _flux_vae_on_decode(wan_graph(ckpt, "wan")),
     [f"pick wan_2.1_vae.safetensors in 'VAELoader': 'VAEDecode' decodes this node's output, Wan 2.1 latents, "
      f"with {FLUX_VAE} from 'VAELoader', FLUX.1's VAE"]),
    ("the Flux VAE file on a Long Video's output",
     lambda ckpt: _flux_vae_on_decode(long_wan_graph(ckpt)),
     [f"Wan 2.1 latents, with {FLUX_VAE} from 'VAELoader', FLUX.1's VAE"]),
    # ... or an SD checkpoint's VAE output (a trial's run of the Qwen-Image template finished, then its decode failed
    # on "Expected 3D (unbatched) or 4D (batched) input to conv2d")
    ("an SD checkpoint's VAE on a Qwen-Image graph's output",
     lambda ckpt: _checkpoint_vae_on_decode(wan_graph(ckpt, "qwen"), ckpt),
     ["wire a Load VAE of wan_2.1_vae.safetensors to 'VAEDecode': it decodes this node's output, Wan 2.1 latents, "
      "with the VAE of ", " from 'CheckpointLoaderSimple', SD 1.5"]),
    ("an SD checkpoint's VAE on a Flux spatial expert's output",
     lambda ckpt: _checkpoint_vae_on_decode(wan_graph(ckpt, "flux"), ckpt),
     ["wire a Load VAE of ae.safetensors to 'VAEDecode': it decodes this node's output, FLUX.1 latents, with the VAE "
      "of ", " from 'CheckpointLoaderSimple', SD 1.5 or SDXL's VAE"]),
]


def _checkpoint_vae_on_decode(prompt: dict, ckpt: str) -> dict:
    prompt["41"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}
    prompt["12"]["inputs"]["vae"] = ["41", 2]
    return prompt


def _flux_vae_on_decode(prompt: dict) -> dict:
    prompt["40"] = {"class_type": "VAELoader", "inputs": {"vae_name": FLUX_VAE}}
    prompt["12"]["inputs"]["vae"] = ["40", 0]
    return prompt


@pytest.mark.parametrize("case, graph, words", WRONG_DECODE_VAE, ids=[c[0] for c in WRONG_DECODE_VAE])
def test_a_decode_given_a_vae_of_another_latent_space_is_refused_before_any_evaluation(comfy_worker, modern, case,
                                                                                       graph, words):
    assert_refused_before_any_evaluation(comfy_worker, graph(comfy_worker.checkpoint_name), case, words)


def test_a_decode_given_another_familys_vae_is_refused_also_when_the_sampler_is_cached(comfy_worker, modern):
    """A trial's Wan run, then the same graph with only its Load VAE changed to Flux's file: the Refine Sampler came
    from ComfyUI's cache, checked nothing, and the clip decoded into one frame. As the server queues it, the prompt
    gives the sampler the decoding VAE's family (its cache key then changes): refused before any evaluation. Another
    file of the same family keeps the cache."""
    ckpt = comfy_worker.checkpoint_name
    good = comfy_worker.call("comfy_support.modern_checks:run_as_queued", wan_graph(ckpt, "wan"), True)
    assert good["success"] and good["evaluations"] > 0, good.get("error")
    again = comfy_worker.call("comfy_support.modern_checks:run_as_queued", wan_graph(ckpt, "wan"))
    assert again["success"] and again["evaluations"] == 0   # all from the cache
    wrong = comfy_worker.call("comfy_support.modern_checks:run_as_queued", _flux_vae_on_decode(wan_graph(ckpt, "wan")))
    assert not wrong["success"] and wrong["evaluations"] == 0
    assert "pick wan_2.1_vae.safetensors in 'VAELoader': 'VAEDecode' decodes" in _message(wrong), _message(wrong)


def test_a_vae_files_header_reads_as_the_vae_comfys_loader_makes_of_it(comfy_worker, modern, tmp_path):
    """The wrong-VAE check above reads a Load VAE's file before the loader runs (its header alone): what it reads is
    the latent channels and compression of the VAE ComfyUI's own loader makes of the file, for Wan 2.1's VAE, Flux's
    and SD 1.5's (the checkpoint's VAE as a file of its own, and the checkpoint as its loader's VAE output)."""
    shapes = comfy_worker.call("comfy_support.modern_checks:vae_file_shapes", comfy_worker.checkpoint_name,
                               str(tmp_path))
    assert set(shapes) == {WAN_VAE, FLUX_VAE, "sd15", "sd15 checkpoint"}
    for name, (read, loaded) in shapes.items():
        assert read == loaded, (name, read, loaded)
    assert {tuple(read) for read, _ in shapes.values()} == {(16, 8, 4), (16, 8, 1), (4, 8, 1)}


def assert_refused_before_any_evaluation(comfy_worker, prompt: dict, case: str, words: list) -> dict:
    """The run fails with no expert evaluated, and its message is one line holding every word of ``words``: the run
    (its message: ``_message``)."""
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert not r["success"]
    assert r["evaluations"] == 0, f"{case}: {r['evaluations']} expert evaluations ran before the refusal"
    message = _message(r)
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"
    assert "Traceback" not in message and "\n" not in message.strip() and "mat1" not in message
    return r


def _sd_prompt_into_wan_control(prompt: dict, ckpt: str) -> None:
    """What an artist does when swapping the control model of an SD template for Wan: the SD CLIP's prompt stays."""
    prompt["20"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}
    prompt["21"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["20", 1]}}
    prompt["9"]["inputs"].update(positive=["21", 0])


# (case, graph change, words the message must contain)
OTHER_TEXT_ENCODER = [
    ("SD 1.5 prompt into the Wan control expert", _sd_prompt_into_wan_control,
     ["control expert's positive conditioning", "768 wide", "WAN21", "Load CLIP with type wan"]),
    # ... with an image latent too: both in one message, the prompt first (a trial was told of the prompt, then a Run
    # later of the latent)
    ("SD 1.5 prompt and image latent into the Wan control expert",
     lambda p, ckpt: (_sd_prompt_into_wan_control(p, ckpt), p.update({"8": {
         "class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 4}}})),
     ["2 problems: (1) the control expert's positive conditioning", "768 wide", "; (2) control latent is a batch of 4 "
      "images"]),
    # one mismatch: the prompt more likely than the file, so it leads (the file's way out comes after)
    ("Wan prompt into the SD 1.5 spatial expert",
     lambda p, ckpt: p["10"]["inputs"].update(spatial_positive=["6", 0]),
     ["the spatial expert's positive conditioning", "SD15", "checkpoint loader", "; or, if the spatial model, SD 1.5 "
      "(SD15), file 'confiner-tiny-sd15-r1.safetensors' in loader 'CheckpointLoaderSimple', is not the model meant, "
      "pick the file meant there"]),
    ("Wan negative into the SD 1.5 spatial expert at cfg 2",
     lambda p, ckpt: p["10"]["inputs"].update(spatial_negative=["6", 0], spatial_cfg=2.0),
     ["spatial expert's negative conditioning (spatial negative, spatial_negative)", "4096 wide", "SD15"]),
    # the temporal prompts unconnected: the spatial (Qwen) ones go to Wan, and the message says where they came from
    ("Unconnected temporal prompts take the spatial ones",
     lambda p, ckpt: [p["10"]["inputs"].pop(k) for k in ("temporal_positive", "temporal_negative")],
     ["temporal expert's positive conditioning (spatial positive, spatial_positive: temporal positive is "
      "unconnected) is", "WAN21"]),
]


@pytest.mark.parametrize("case, change, words", OTHER_TEXT_ENCODER, ids=[c[0] for c in OTHER_TEXT_ENCODER])
def test_a_prompt_from_another_familys_text_encoder_is_refused_before_any_evaluation(comfy_worker, modern, case,
                                                                                     change, words):
    """A conditioning as wide as another family's text encoder makes (SD 1.5's CLIP for Wan) used to fail inside
    the first evaluation with the model's bare shape error; it is now refused first, naming the input."""
    ckpt = comfy_worker.checkpoint_name
    prompt = wan_graph(ckpt, "sd")
    change(prompt, ckpt)
    assert_refused_before_any_evaluation(comfy_worker, prompt, case, words)


def test_a_long_video_names_its_control_models_prompt_with_its_segment_length_in_one_message(comfy_worker, modern):
    """A trial's Wan control model on the Long SD template was told of the segment length Wan cannot hold, then, a
    Run (and a model load) later, of the SD prompt it cannot read: both now, the prompt first."""
    prompt = long_wan_graph(comfy_worker.checkpoint_name)
    prompt["20"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": comfy_worker.checkpoint_name}}
    prompt["21"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["20", 1]}}
    prompt["14"]["inputs"].update(control_positive=["21", 0], control_negative=["21", 0], segment_length=4)
    assert_refused_before_any_evaluation(comfy_worker, prompt, "long", [
        "2 problems: (1) the control expert's positive conditioning is 768 wide",
        "; (2) segment length (segment_length) = 4: the control expert's Wan 2.1"])


def test_one_prompt_of_another_family_leads_its_message_before_the_file(comfy_worker, modern):
    """One mismatch alone (a Wan prompt on the SD 1.5 spatial expert) is more likely the prompt than the file: the
    message led with "if another model was meant, pick its file there" all the same."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "sd")
    prompt["10"]["inputs"].update(spatial_positive=["6", 0])
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    message = _message(r).strip()
    assert r["evaluations"] == 0 and message.startswith("the spatial expert's positive conditioning (spatial "
                                                        "positive, spatial_positive) is 4096 wide"), message
    assert message.endswith("is not the model meant, pick the file meant there"), message


def test_a_file_in_a_loader_titled_for_another_family_leads_with_the_file(comfy_worker, modern):
    """Wan's file in the template's loader titled "Qwen-Image (spatial expert)": its one mismatch (the Qwen prompts'
    width) led, and the file, the likely mistake, came second, as "file ... in Qwen-Image (spatial expert)"."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "qwen")
    prompt["2"]["inputs"]["unet_name"] = WAN
    prompt["2"]["_meta"] = {"title": "Qwen-Image (spatial expert)"}
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    message = _message(r).strip()
    assert r["evaluations"] == 0 and message.startswith("the spatial model, Wan"), message
    assert f"file '{WAN}' in loader 'Qwen-Image (spatial expert)', does not fit the prompt or VAE connected for it: " \
           "if another model was meant, pick its file there; if this one is, the spatial expert's positive " \
           "conditioning" in message, message


def test_a_batch_of_videos_into_the_long_video_is_refused(comfy_worker, modern):
    """Empty HunyuanVideo Latent with batch size 2 made two videos, joined back to back as one."""
    prompt = long_wan_graph(comfy_worker.checkpoint_name)
    prompt["8"]["inputs"]["batch_size"] = 2
    assert_refused_before_any_evaluation(comfy_worker, prompt, "Long Video of a batch of 2",
                                         ["latent is a batch of 2 videos", "use batch size 1"])


def test_segment_prompts_for_experts_of_two_text_encoders_are_refused_as_such(comfy_worker, modern):
    """Qwen-Image spatial beside Wan experts: no one CLIP serves both, and each refusal named the other's encoder
    (the Wan CLIP was refused for Qwen-Image, the Qwen CLIP then for Wan)."""
    prompt = long_wan_graph(comfy_worker.checkpoint_name)
    prompt["10"]["inputs"].update(spatial_model=["2", 0], spatial_positive=["7", 0], spatial_negative=["7", 0])
    prompt["14"]["inputs"].update(segment_prompts="0: a red fox | 5: a grey fox", clip=["3", 0])
    assert_refused_before_any_evaluation(comfy_worker, prompt, "Qwen-Image with Wan, segment prompts",
                                         ["the experts read text of different widths", "clear the segment prompts"])


def test_segment_prompts_through_another_familys_clip_are_refused_before_any_evaluation(comfy_worker, modern):
    """The Long Video node encodes its segment prompts for every expert with its one clip input: an SD 1.5 CLIP there
    for Wan experts used to fail inside the first evaluation; it is refused first, naming the input."""
    ckpt = comfy_worker.checkpoint_name
    prompt = long_wan_graph(ckpt)
    prompt["20"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}
    prompt["14"]["inputs"].update(segment_prompts="0: a red fox | 5: a grey fox", clip=["20", 1])
    assert_refused_before_any_evaluation(comfy_worker, prompt, "SD 1.5 CLIP for Wan segment prompts",
                                         ["the clip input (segment prompts)", "768", "WAN21", "Load CLIP with type wan"])
    prompt["14"]["inputs"]["clip"] = ["3", 0]                    # the Wan text encoder: runs
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["success"], _message(r)


def test_a_segment_prompt_the_video_never_shows_is_warned_at_the_top_of_the_long_videos_text(comfy_worker, modern):
    """A prompt no window is centred in was named on the last line of the node's text, under the schedule, where a
    preview hides it (the frontend shows the first two lines then). It leads the text from the start of the run to
    its summary. Frame 0 is structure 0's centre: its prompt lays out that structure, which the line says."""
    prompt = long_wan_graph(comfy_worker.checkpoint_name)
    prompt["14"]["inputs"].update(segment_prompts="0: a red fox | 1: a grey fox | 6: a white fox", clip=["3", 0])
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["success"], _message(r)
    texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "14"]
    # (named by its text, with the fix, in one line of the node's width: by its frames alone, "prompt 0-0 only lays
    # out", an artist could not tell which prompt it was)
    assert texts and all(t.split("\n")[0] == "warning: 'a red fox' only shapes motion: give it 5+ frames"
                         for t in texts), texts[:2]
    last = [line for line in texts[-1].split("\n")   # (9 frames at 5: the cut-window note and why its counts)
            if not line.startswith(("note: last window", "(whole windows"))]
    assert last[1].startswith("done · ") and "not used" not in "\n".join(last[2:]), last


def test_seconds_keys_in_segment_prompts_count_at_the_models_rate_or_the_fps_input(comfy_worker, modern):
    """Seconds keys counted at a fixed 8 fps, while the Wan templates save at 16: '1s:' began at frame 8, half a
    second into the saved video. The Long Video's fps input: 0 (its default) counts at the control model's video
    rate, Wan's 16; a rate set is used, and where it is not the model's, said on the node."""
    prompt = long_wan_graph(comfy_worker.checkpoint_name)
    prompt["14"]["inputs"].update(segment_prompts="0: a red fox | 1s: a grey fox", clip=["3", 0])
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert not r["success"] and r["evaluations"] == 0   # the default: Wan's 16 fps
    assert "starts at frame 16 (1s at 16 fps), beyond the video's 9 frames" in _message(r), _message(r)
    # past the end at every rate, it is refused when queued, before the model (its rate) is known: in seconds at
    # each model's rate (it said "frame 40 or later (5s at 8 fps ...)" on a 16 fps Wan graph, where 5s is frame 80)
    prompt["14"]["inputs"].update(segment_prompts="0: a red fox | 5s: a grey fox")
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["valid"] is False and r["evaluations"] == 0
    assert "entry '5s: a grey fox' starts at 5 s, after the video's end: 9 frames last 1.12 s at AnimateDiff's 8 " \
           "fps, 0.562 s at Wan 2.1 and 2.2 A14B's 16 fps, 0.375 s at Wan 2.2 5B's 24 fps; use a smaller key or " \
           "more frames" in _message(r), _message(r)
    prompt["14"]["inputs"].update(segment_prompts="0: a red fox | 1s: a grey fox",
                                  fps=8.0)   # as a workflow saved when the widget's default was 8
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["success"], _message(r)                  # 1 s at 8 fps: frame 8 of 9
    texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "14"]
    assert texts and all("warning: seconds at fps 8; Wan 2.1 video is 16 fps" in t.split("\n") for t in texts), \
        texts[:2]


def test_te_0_is_the_refining_models_own_and_the_node_says_which(comfy_worker, modern):
    """A Wan graph built from new nodes ran at T_e 100 (sigma 0.1, a third of the paper's noise level), the SD
    default, without a word. T_e 0 (the widgets' default) is the refining model's own: 250 for flow models."""
    import cv2

    prompt = wan_graph(comfy_worker.checkpoint_name, spatial="wan")
    prompt["11"]["inputs"]["te"] = 0
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    assert r["success"], _message(r)
    texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "11"]
    assert re.fullmatch(rf"done · {3 * REFINE_STEPS} expert evaluations in \d+\.\d s · T_e 250\n"
                        rf"seed {prompt['11']['inputs']['seed']}", texts[-1]), texts[-1]
    prompt["11"]["inputs"]["te"] = 250   # the same run, byte for byte
    again = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    assert again["success"], again.get("error")
    pixels = lambda result: [cv2.imread(str(Path(comfy_worker.output_dir) / i.get("subfolder", "") / i["filename"]))
                             .tobytes() for i in _saved(result)]   # (the PNGs' metadata holds the te widget)
    assert pixels(r) == pixels(again) and len(pixels(r)) == LENGTH
    prompt["11"]["inputs"]["te"] = 100   # and another T_e is another run
    assert pixels(comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)) != pixels(r)


def test_the_control_expert_says_how_many_frames_its_clip_holds(comfy_worker, modern):
    """A Wan latent's length is 4k+1 frames: EmptyHunyuanLatentVideo's length 16 makes 13, which passed silently in a
    single-clip graph. The Control Expert's text says the frames, from the start to "done"."""
    prompt = wan_graph(comfy_worker.checkpoint_name)
    prompt["8"]["inputs"]["length"] = 8   # 2 latent frames: 5 video frames
    del prompt["11"], prompt["12"], prompt["13"]
    prompt["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["5", 0]}}
    prompt["13"] = {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "frames"}}
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["success"], _message(r)
    texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "9"]
    assert texts[0] == "starting · 2 expert evaluations · 5 frames", texts
    assert re.fullmatch(rf"done · 2 expert evaluations in \d+\.\d s · 5 frames\nseed {prompt['9']['inputs']['seed']}",
                        texts[-1]), texts[-1]
    assert len(_saved(r)) == 5


def test_the_long_videos_problems_come_in_one_message_before_any_model_runs(comfy_worker, modern):
    """An artist's 48 frames in segments of 16 with a '5s:' key on Wan met three refusals in three runs (the key
    past the video at 16 fps, then the segment length, then the frame count), each after the models loaded."""
    prompt = long_wan_graph(comfy_worker.checkpoint_name)
    prompt["14"]["inputs"].update(frames=48, segment_length=16, segment_prompts="0: a red fox | 5s: a grey fox",
                                  clip=["3", 0])
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert not r["success"] and r["evaluations"] == 0
    message = _message(r)
    assert message.startswith("3 problems: (1) segment length (segment_length) = 16: the control expert's Wan 2.1 "
                              "latent space holds"), message
    assert "use 13 or 17; (2) frames = 48: the windows are joined into one clip" in message and "use 45 or 49" in \
        message and "(3) segment prompts (segment_prompts): entry '5s: a grey fox' starts at frame 80 (5s at 16 fps)" \
        in message, message


def test_a_negative_of_another_family_runs_at_cfg_1_where_comfyui_never_evaluates_it(comfy_worker, modern):
    """At cfg 1 ComfyUI skips the negative prompt, so one left over from another family's template is no error."""
    prompt = wan_graph(comfy_worker.checkpoint_name, "sd")
    prompt["10"]["inputs"].update(spatial_negative=["6", 0], spatial_cfg=1.0)
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["success"], _message(r)
    assert r["evaluations"] > 0


def test_long_segmenter_joins_wan_windows_through_the_vae(comfy_worker, modern):
    """ConFiner-Long with Wan experts: 9 frames as 5-frame segments (3 structures, 2 staggered windows joined as
    pixels and encoded as one clip); the VAE calls are the joins (3 structure decodes + 2 window encodes), the
    windows' decodes (2) and the final clip's encode (1)."""
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", long_wan_graph(comfy_worker.checkpoint_name))
    assert r["success"], r.get("error")
    assert _cost(r, "ConFiner Long Video") == {"evaluations": 3 * 2 + 2 * 3 * REFINE_STEPS, "vae_calls": 8}
    last = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "14"][-1]
    done = last[last.index("done · "):].split("\n")
    assert done[0].startswith(f"done · {3 * 2 + 2 * 3 * REFINE_STEPS} expert evaluations, 8 VAE calls in "), \
        last   # the console's count: the node's missed the final encode
    # the frames made, on the next line: the two parts run past the 60 characters of a line
    assert done[0].endswith(" s") and done[1] == "9 frames", last
    assert len(_saved(r)) == 9
    bad = long_wan_graph(comfy_worker.checkpoint_name)
    bad["14"]["inputs"]["segment_length"] = 6
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", bad, fresh_cache=True)
    assert not r["success"] and r["evaluations"] == 0
    assert "segment_length" in _message(r) and "5 or 9" in _message(r)


def test_unstaggered_wan_windows_need_no_control_vae_but_a_vae_to_join(comfy_worker, modern):
    """Unstaggered, a window is one whole structure of the refiner's own space: no structure is cut or round-tripped
    (with the bundle's Wan VAE alone: 2 window decodes and 1 encode). The refined windows are still joined through
    pixels, so with no VAE at all the run is refused before any evaluation, for that reason (the node's message was
    the staggered one, about pieces of structures)."""
    prompt = long_wan_graph(comfy_worker.checkpoint_name)
    prompt["14"]["inputs"].update(staggered=False)
    prompt["14"]["inputs"].pop("control_vae")
    prompt["10"]["inputs"]["spatial_vae"] = ["5", 0]
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", prompt)
    assert r["success"], r.get("error")
    assert _cost(r, "ConFiner Long Video") == {"evaluations": 2 * 2 + 2 * 3 * REFINE_STEPS, "vae_calls": 3}
    assert len(_saved(r)) == 9
    prompt["10"]["inputs"].pop("spatial_vae")
    assert_refused_before_any_evaluation(comfy_worker, prompt, "unstaggered Wan windows without a VAE",
                                         ["refining expert needs its VAE", "spatial_vae", "control_vae"])


# ------------------------------------------------------------------------------------------------- templates

TINY = {"wan2.2_t2v_high": HIGH, "wan2.2_t2v_low": LOW, "wan2.1_t2v": WAN, "qwen_image_vae": WAN_VAE, "qwen_image": QWEN,
        "umt5": UMT5, "qwen_2.5_vl": QWEN_VL, "wan_2.1_vae": WAN_VAE, "flux1-dev": FLUX, "ae.safetensors": FLUX_VAE,
        "clip_l": CLIP_L, "t5xxl": T5XXL}


def tiny_sized(workflow: dict, ckpt: str) -> dict:
    """A shipped template with the tiny files substituted and CPU-sized: 32x32, 5 frames."""
    wf = copy.deepcopy(workflow)
    for n in wf["nodes"]:
        values = n.get("widgets_values")
        if n["type"] in ("UNETLoader", "CLIPLoader", "VAELoader", "DualCLIPLoader"):
            for i in range(2 if n["type"] == "DualCLIPLoader" else 1):
                values[i] = next(tiny for real, tiny in TINY.items() if values[i].startswith(real))
        elif n["type"] == "CheckpointLoaderSimple":
            values[0] = ckpt
        elif n["type"] == "EmptyHunyuanLatentVideo":
            n["widgets_values"] = [SIZE, SIZE, LENGTH, 1]
        elif n["type"] == "ConFinerCoordinatedSampler":
            values[1] = REFINE_STEPS
    return wf


@pytest.mark.parametrize("name", MODERN_TEMPLATES)
def test_modern_template_runs_headless_with_tiny_models(comfy_worker, modern, name):
    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    assert all(m["url"].startswith("https://huggingface.co/") and m["url"].endswith(".safetensors")
               for n in workflow["nodes"] for m in n.get("properties", {}).get("models", []))
    api = comfy_worker.convert(tiny_sized(workflow, comfy_worker.checkpoint_name))
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", api)
    assert r["success"], r.get("error") or r.get("validation_error")
    control = next(n for n in workflow["nodes"] if n["type"] == "ConFinerControlExpert")
    assert r["evaluations"] == control["widgets_values"][2] + 3 * REFINE_STEPS
    saves = [n for n in workflow["nodes"] if n["type"] == "SaveAnimatedWEBP"]
    assert len(_saved(r)) == len(saves)
    bridged = name in BRIDGED_TEMPLATES
    assert _cost(r, "ConFiner Refine Sampler")["vae_calls"] == (2 + 4 * REFINE_STEPS if bridged else 0)


def test_the_wan_long_video_template_runs_headless_with_tiny_models(comfy_worker, modern):
    """The Wan ConFiner-Long template (an artist built it by hand and met the SD defaults: segment 16, 128 frames,
    T_e 100, fps 8): Wan lengths, T_e 250, and seconds keys at the model's rate (fps 0), the save node's 16 fps. Run
    CPU-sized: 17 frames in segments of 9, 2 control and 2 refinement steps, the prompt travelling at 0.5 s (frame
    8)."""
    workflow = json.loads((EXAMPLES / f"{LONG_WAN}.json").read_text())
    long = next(n for n in workflow["nodes"] if n["type"] == "ConFinerLongSegmenter")
    values = long["widgets_values"]
    (save,) = [n for n in workflow["nodes"] if n["type"] == "SaveAnimatedWEBP"]
    assert (values[0], values[1], values[7], values[-1], save["widgets_values"][1]) == (165, 33, 250, 0.0, 16.0)
    assert "| 5s: " in values[15]
    values[0], values[1], values[4], values[8] = 17, 9, 2, REFINE_STEPS
    values[15] = "0: a red fox runs | 0.5s: a grey fox runs"
    r = comfy_worker.call("comfy_support.modern_checks:run_logging_cost", comfy_worker.convert(
        tiny_sized(workflow, comfy_worker.checkpoint_name)))
    assert r["success"], r.get("error") or r.get("validation_error")
    assert len(_saved(r)) == 1
    texts = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == str(long["id"])]
    # 0.5 s is frame 8 at Wan 2.1's 16 fps (4 at 8), applied at the window junction after it
    assert "prompts as applied (each from a window junction):\n0-8: a red fox runs\n9-16: a grey fox runs" \
        in texts[0], texts[0]


def _linked_node(workflow: dict, node: dict, input_name: str) -> dict:
    """The node whose output feeds ``input_name`` of ``node`` (UI-format links: id, from, slot, to, slot, type)."""
    link = next(i["link"] for i in node["inputs"] if i["name"] == input_name)
    source = next(l[1] for l in workflow["links"] if l[0] == link)
    return next(n for n in workflow["nodes"] if n["id"] == source)


@pytest.mark.parametrize("name", MODERN_TEMPLATES)
def test_modern_templates_refine_from_the_default_te_of_their_spatial_experts_kind(comfy_worker, modern, name):
    """T_e counts a flow expert's noise level (sigma = T_e / 1000), so a template refining with a flow spatial expert
    starts at the flow default (250, sigma 0.25) and one with SD 1.5 at 100 (chain.DEFAULT_TE). The Qwen-Image
    template refined from 100, sigma 0.1: a third of the paper's noise level. The kind is ComfyUI's model sampling
    of the loaded tiny file."""
    from confiner_core.chain import DEFAULT_TE

    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    bundle = next(n for n in workflow["nodes"] if n["type"] == "ConFinerRefineExperts")
    sampler = next(n for n in workflow["nodes"] if n["type"] == "ConFinerCoordinatedSampler")
    loader = _linked_node(workflow, bundle, "spatial_model")
    if loader["type"] == "CheckpointLoaderSimple":
        kind = "vp" if not comfy_worker.call("comfy_support.modern_checks:checkpoint_is_flow",
                                             comfy_worker.checkpoint_name) else "flow"
    else:
        tiny = next(t for real, t in TINY.items() if loader["widgets_values"][0].startswith(real))
        detected = comfy_worker.call("comfy_support.modern_checks:flux_detect") if tiny == FLUX else \
            comfy_worker.call("comfy_support.modern_checks:loaders_detect")["models"][tiny]
        kind = "flow" if detected["flow"] else "vp"
    assert sampler["widgets_values"][0] == DEFAULT_TE[kind], (loader["widgets_values"][0], kind)


def test_a_templates_models_are_freed_once_comfyui_lets_them_go(comfy_worker, modern):
    """After a prompt with Qwen-Image, the next prompt without it leaves no Qwen-Image model alive: the session
    workers, which live on between prompts, hold nothing of the sessions they served. (They held the last one, and
    through it the models: an artist switching templates read "WARNING, memory leak with model QwenImage" before
    every prompt, each after a full garbage collection.)"""
    for name in (WAN_QWEN, A14B):
        workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
        api = comfy_worker.convert(tiny_sized(workflow, comfy_worker.checkpoint_name))
        assert comfy_worker.call("comfy_support.modern_checks:run_logging_cost", api)["success"]
    assert comfy_worker.call("comfy_support.modern_checks:models_left_alive", "QwenImage") == \
        {"alive": 0, "patcher_gone": []}
