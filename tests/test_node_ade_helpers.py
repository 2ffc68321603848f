"""nodes/ade.py reads AnimateDiff-Evolved's settings off a MODEL by duck typing and never imports ADE or ComfyUI, so
it is tested here on stand-ins shaped like ADE's objects (attribute names as in ADE's model_injection.py)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from comfy_support.templates import BASIC

_spec = importlib.util.spec_from_file_location("confiner_nodes_ade", Path(__file__).resolve().parents[1] / "nodes" / "ade.py")
ade = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ade)


class FakePatcher:
    """The two things ADE keeps on a ModelPatcher: additional models under "ADE" and attachments."""

    def __init__(self, motion_lengths=(), context_length=None, noise_type=None):
        self.additional_models = {"ADE": [SimpleNamespace(model=SimpleNamespace(encoding_max_len=n))
                                          for n in motion_lengths]} if motion_lengths else {}
        self.attachments = {
            "ADE_params": SimpleNamespace(context_options=SimpleNamespace(context_length=context_length)),
            "ADE_sample_settings": SimpleNamespace(noise_type=noise_type or "default"),
        }

    def get_attachment(self, key):
        return self.attachments.get(key)


def test_frame_limit_is_the_shortest_motion_model_without_context_windows():
    assert ade.motion_frame_limit(FakePatcher(motion_lengths=(32, 24))) == 24
    assert ade.motion_frame_limit(FakePatcher(motion_lengths=(32,), context_length=16)) is None
    assert ade.motion_frame_limit(FakePatcher()) is None
    assert ade.motion_frame_limit(SimpleNamespace()) is None  # a MODEL ADE never touched


def test_ignored_noise_types_are_warned_once_per_expert():
    assert ade.ignored_noise_type(FakePatcher()) is None
    models = {"control": FakePatcher(noise_type="FreeNoise"), "temporal": FakePatcher(), "spatial": None}
    warnings = ade.warn_ignored_noise(models)
    assert len(warnings) == 1 and "control" in warnings[0] and "'FreeNoise'" in warnings[0]
    assert "ConFiner Noise Rescheduler" in warnings[0]


def test_ade_info_lines_show_once_per_stage_and_run():
    logger = logging.getLogger(ade.ADE_LOGGER)
    seen = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: seen.append((record.levelname, record.getMessage()))
    logger.addHandler(handler)
    old_level, logger.level = logger.level, logging.DEBUG
    try:
        ade.new_run()
        for _ in range(3):  # three evaluations of the control stage
            with ade.stage_log("control stage:control"):
                logger.info("Sliding context window sampling activated")
                logger.warning("a warning is never dropped")
        with ade.stage_log("refinement:temporal"):
            logger.info("Sliding context window sampling activated")
        logger.info("outside a stage: untouched")
        logger.info("outside a stage: untouched")
        ade.new_run()
        with ade.stage_log("control stage:control"):
            logger.info("Sliding context window sampling activated")
    finally:
        logger.removeHandler(handler)
        logger.level = old_level
    infos = [m for level, m in seen if level == "INFO"]
    assert infos == ["Sliding context window sampling activated"] * 2 + ["outside a stage: untouched"] * 2 + \
        ["Sliding context window sampling activated"]
    assert [m for level, m in seen if level == "WARNING"] == ["a warning is never dropped"] * 3
    assert ade._FILTER not in logger.filters  # removed after each stage


@pytest.mark.parametrize("noise_type", [None, "default"])
def test_default_noise_is_not_warned(noise_type):
    assert ade.warn_ignored_noise({"control": FakePatcher(noise_type=noise_type)}) == []


def _with_motion_models(*names):
    """A MODEL with ADE motion models loaded from files of these names (ADE keeps them as ``mm_info.mm_name``)."""
    model = FakePatcher()
    model.additional_models = {"ADE": [SimpleNamespace(model=SimpleNamespace(mm_info=SimpleNamespace(mm_name=n)))
                                       for n in names]}
    return model


def test_motion_models_in_each_others_roles_are_named_with_the_fix():
    v3, lightning = _with_motion_models("mm_sd15_v3.safetensors"), \
        _with_motion_models("animatediff_lightning_4step_comfyui.safetensors")
    assert ade.motion_model_names(lightning) == ["animatediff_lightning_4step_comfyui.safetensors"]
    assert ade.motion_model_names(SimpleNamespace()) == []   # a MODEL ADE never touched
    # the basic template with its two loaders swapped: one message, naming both files
    (swapped,) = ade.motion_model_problems(v3, 4, lightning, 7.5)
    assert "'mm_sd15_v3.safetensors' is not distilled for few steps" in swapped[0]
    assert "'animatediff_lightning_4step_comfyui.safetensors' is" in swapped[0] and "swap the files" in swapped[0]
    assert swapped[1] == "warning: motion models look swapped: swap the two files"
    # one of them alone
    assert [n for _, n in ade.motion_model_problems(v3, 4, v3, 7.5)] == [
        "warning: control motion model not few-step: load Lightning"]
    assert [n for _, n in ade.motion_model_problems(lightning, 4, lightning, 7.5)] == [
        "warning: few-step motion model: set temporal cfg 1"]
    # each in its role; v3 given a full structure's steps; Lightning refining at cfg 1
    assert ade.motion_model_problems(lightning, 4, v3, 7.5) == []
    assert ade.motion_model_problems(v3, 25, lightning, 1.0) == []
    assert ade.motion_model_problems(_with_motion_models("AnimateLCM_sd15_t2v.ckpt"), 8) == []
    assert ade.motion_model_problems(FakePatcher(), 4, FakePatcher(), 7.5) == []   # no names recorded: nothing
    # a node that sees one role (the Control Expert, the Refine Sampler) tells the swap from the other loader's file
    # in the graph, where it said "load Lightning" and "set cfg 1", and the second kept the wrong model
    loaded = ("mm_sd15_v3.safetensors", "animatediff_lightning_4step_comfyui.safetensors")
    for one_role in (dict(control_model=v3, control_steps=4), dict(temporal_model=lightning, temporal_cfg=7.5)):
        (swapped,) = ade.motion_model_problems(**one_role, loaded=loaded)
        assert swapped[1] == "warning: motion models look swapped: swap the two files", one_role
        assert "'mm_sd15_v3.safetensors'" in swapped[0] and "'animatediff_lightning_4step_comfyui" in swapped[0]
    # ... and only then: the graph's other motion model of the same kind, or none, is not a swap
    assert [n for _, n in ade.motion_model_problems(v3, 4, loaded=("mm_sd15_v3.safetensors",))] == [
        "warning: control motion model not few-step: load Lightning"]
    assert [n for _, n in ade.motion_model_problems(temporal_model=lightning, temporal_cfg=7.5,
                                                    loaded=loaded[1:])] == [
        "warning: few-step motion model: set temporal cfg 1"]
    # a motion model on the spatial expert, the image model's role (a trial's link reconnected to the Lightning
    # loader ran without a word): named, and a few-step one at the spatial cfg also burns
    (spatial,) = ade.motion_model_problems(spatial_model=lightning, spatial_cfg=7.5)
    assert spatial[1] == "warning: spatial model has AnimateDiff: use checkpoint MODEL"
    assert "'animatediff_lightning_4step_comfyui.safetensors' attached" in spatial[0] and \
        "burns its colours at spatial cfg 7.5" in spatial[0], spatial[0]
    (spatial,) = ade.motion_model_problems(spatial_model=v3, spatial_cfg=7.5)
    assert "burns" not in spatial[0] and "connect the checkpoint's own MODEL" in spatial[0]
    assert ade.motion_model_problems(spatial_model=FakePatcher(), spatial_cfg=7.5) == []
    assert all(len(note) <= 60 for _, note in ade.motion_model_problems(v3, 4, lightning, 7.5) +
               ade.motion_model_problems(spatial_model=v3) +
               ade.motion_model_problems(v3, 4, v3, 7.5) + ade.motion_model_problems(lightning, 4, lightning, 7.5))


def test_the_queued_graph_names_its_loaders_files():
    """nodes/model_files.py reads a queued prompt (API format): the motion model files of ADE's loaders (the swap a
    node that sees one role tells), and (title, file) of the model loaders (the other half of a Wan 2.2 pair)."""
    spec = importlib.util.spec_from_file_location("confiner_nodes_model_files",
                                                  Path(__file__).resolve().parents[1] / "nodes" / "model_files.py")
    model_files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_files)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5.safetensors"}},
        "2": {"class_type": "ADE_AnimateDiffLoaderGen1", "inputs": {"model": ["1", 0], "model_name": "mm_v3.ckpt"},
              "_meta": {"title": "Temporal expert"}},
        "3": {"class_type": "ADE_AnimateDiffLoaderGen1", "inputs": {"model": ["1", 0], "model_name": ["9", 0]}},
        "4": {"class_type": "UNETLoader", "inputs": {"unet_name": "wan2.2_low_noise.safetensors"},
              "_meta": {"title": "low noise (all roles)"}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0], "x": ["4", 0]}},
        "6": {"class_type": "ADE_AnimateDiffLoaderGen1", "inputs": {"model": ["1", 0], "model_name": "lightning.ckpt"}}}
    # a name from a link is not a file name; a loader whose output no node takes loads nothing (a trial's unconnected
    # v3 loader was read as the control expert's, beside Lightning feeding both roles)
    assert model_files.motion_model_files(prompt) == ("mm_v3.ckpt",)
    assert model_files.loaded_files(prompt) == (("CheckpointLoaderSimple", "v1-5.safetensors", False),
                                                ("low noise (all roles)", "wan2.2_low_noise.safetensors", False))
    # ... and whether a loader serves a low-noise input already (through a node patching the model on its way)
    prompt["7"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["4", 0], "shift": 8.0}}
    prompt["8"] = {"class_type": "ConFinerControlExpert", "inputs": {"model": ["1", 0], "low_noise_model": ["7", 0]}}
    assert [entry[2] for entry in model_files.loaded_files(prompt)] == [False, True]
    assert model_files.motion_model_files(None) == model_files.loaded_files(None) == ()


def test_the_queued_graph_says_the_frames_a_structure_will_hold():
    """The Refine Sampler's lazy check reads the frames the graph's empty latent sets, back through the Control
    Expert and a Noise Rescheduler; a linked widget or another source says nothing."""
    spec = importlib.util.spec_from_file_location("confiner_nodes_model_files",
                                                  Path(__file__).resolve().parents[1] / "nodes" / "model_files.py")
    model_files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_files)
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 16}},
        "2": {"class_type": "ConFinerNoiseRescheduler", "inputs": {"latent": ["1", 0]}},
        "3": {"class_type": "ConFinerControlExpert", "inputs": {"latent": ["2", 1]}},
        "4": {"class_type": "ConFinerCoordinatedSampler", "inputs": {"structure": ["3", 0]}},
        "5": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"length": 33, "batch_size": 1}},
        "6": {"class_type": "ConFinerControlExpert", "inputs": {"latent": ["5", 0]}},
        "7": {"class_type": "ConFinerCoordinatedSampler", "inputs": {"structure": ["6", 0]}}}
    prompt["1"]["_meta"] = {"title": "Size and frame count"}
    # an image batch: SD's frames; the widget as the canvas names it, for a refusal to say what to change
    planned = model_files.planned_frames(prompt, "4", "structure")
    assert planned == (16, 1, "batch_size", "Size and frame count")
    assert planned.said() == "batch_size = 16 on 'Size and frame count'"
    # pixel frames, packed 4k+1 (a node without a title goes by its type)
    assert model_files.planned_frames(prompt, "7", "structure") == (33, 4, "length", "EmptyHunyuanLatentVideo")
    # what the latent holds: ComfyUI's own count, ((length - 1) // 4 + 1) latent frames (10 makes 9)
    assert [model_files.PlannedFrames(n, 4, "length", "x").made() for n in (1, 4, 5, 9, 10, 12, 13)] == \
        [1, 1, 5, 9, 9, 9, 13]
    assert model_files.PlannedFrames(10, 1, "batch_size", "x").made() == 10   # an image batch: each its frame
    prompt["5"]["inputs"]["length"] = ["9", 0]                                # set by another node: not known
    assert model_files.planned_frames(prompt, "7", "structure") is None
    prompt["6"]["inputs"]["latent"] = ["8", 0]                               # a latent from elsewhere (VAE Encode)
    prompt["8"] = {"class_type": "VAEEncode", "inputs": {}}
    assert model_files.planned_frames(prompt, "7", "structure") is None
    assert model_files.planned_frames(None, "4", "structure") is None
    assert model_files.planned_frames(prompt, "4", "experts") is None


def test_a_motion_model_that_does_not_fit_the_unet_is_said_as_such(tmp_path):
    """A motion model of 4 blocks injected into a UNet of 2 fails inside ADE's ``_inject`` with "index 2 is out of
    range" (a trial's dialog said only that): the traceback's ADE frames give the mismatch and the motion model's
    name. The stand-in module sits where ADE's does and fails as ADE's code does (indexing the UNet's blocks)."""
    folder = tmp_path / "ComfyUI-AnimateDiff-Evolved" / "animatediff"
    folder.mkdir(parents=True)
    (folder / "motion_module_ad.py").write_text(
        "class AnimateDiffModel:\n"
        "    def __init__(self, name, blocks):\n"
        "        self.mm_info = type('Info', (), {'mm_name': name})()\n"
        "        self.blocks = blocks\n"
        "    def inject(self, unet_blocks):\n"
        "        self._inject(unet_blocks, self.blocks)\n"
        "    def _inject(self, unet_blocks, mm_blocks):\n"
        "        for i in range(len(mm_blocks)):\n"
        "            unet_blocks[i].append(mm_blocks[i])\n")
    spec = importlib.util.spec_from_file_location("motion_module_ad", folder / "motion_module_ad.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mm = module.AnimateDiffModel("mm_sd15_v3.safetensors", ["a", "b", "c", "d"])
    with pytest.raises(IndexError) as e:
        mm.inject([[], []])
    assert ade.injection_failure(e.value) == (
        "AnimateDiff-Evolved could not attach the motion model 'mm_sd15_v3.safetensors' to the checkpoint's UNet "
        "(IndexError: list index out of range): they do not fit each other; load a checkpoint of the family the "
        "motion model was made for (SD 1.5 for AnimateDiff v3 and Lightning), or the motion model made for this "
        "checkpoint")
    assert "to the UNet of 'tiny.safetensors' (IndexError" in ade.injection_failure(e.value, (None, "tiny.safetensors"))
    with pytest.raises(IndexError) as other:   # the same error anywhere else is not ADE's injection
        [][2]
    assert ade.injection_failure(other.value) is None


def test_a_bypassed_animatediff_loader_is_found_on_the_model_links_into_a_node():
    """The basic template with its AnimateDiff loaders bypassed: the Control Expert's model and the bundle's temporal
    model each come through one, which the warning names (its "add AnimateDiff" sent a trial's artist looking for
    the loader the canvas had); the spatial model comes through none."""
    spec = importlib.util.spec_from_file_location("confiner_model_files",
                                                  Path(__file__).resolve().parents[1] / "nodes" / "model_files.py")
    model_files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_files)
    workflow = json.loads((Path(__file__).resolve().parents[1] / "example_workflows" /
                           f"{BASIC}.json").read_text())
    ids = {n["type"]: str(n["id"]) for n in workflow["nodes"]}
    loaders = {n["title"]: n for n in workflow["nodes"] if n["type"] == "ADE_AnimateDiffLoaderGen1"}
    control, temporal = "Control expert: AnimateDiff-Lightning 4-step", "Temporal expert: AnimateDiff v3"
    assert set(loaders) == {control, temporal}
    find = model_files.bypassed_upstream
    sampler = ids["ConFinerCoordinatedSampler"]
    assert find(workflow, ids["ConFinerControlExpert"], ("model",)) is None   # switched on: nothing to say
    loaders[control]["mode"] = 4
    assert find(workflow, ids["ConFinerControlExpert"], ("model",)) == control
    assert find(workflow, sampler, ("experts", "temporal_model")) is None     # the other loader is on
    loaders[temporal]["mode"] = 4
    assert find(workflow, sampler, ("experts", "temporal_model")) == temporal
    assert find(workflow, sampler, ("experts", "spatial_model")) is None
    loaders[control]["mode"] = 2   # muted: the prompt cannot run at all (ComfyUI says which input is missing)
    assert find(workflow, ids["ConFinerControlExpert"], ("model",)) is None
    # links as objects (the frontend's newer workflow format), and no workflow at all (a prompt over the API)
    objects = {**workflow, "links": [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"),
                                              link)) for link in workflow["links"]]}
    assert find(objects, sampler, ("experts", "temporal_model")) == temporal
    assert find(None, sampler, ("experts", "temporal_model")) is None
