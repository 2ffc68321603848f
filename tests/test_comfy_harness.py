"""ComfyUI host integration harness: unit tests of the UI->API converter (always run) and
integration tests against a real ComfyUI checkout (``$COMFYUI_PATH``; skipped when unset).

Isolation: the integration tests never import torch or ComfyUI into this pytest process.
The module-scoped ``comfy_worker`` fixture starts one subprocess per test module
(``comfy_support/worker.py``), boots ComfyUI there once (``harness.boot``: ``--cpu
--disable-api-nodes``, ``utils.extra_config`` before ``nodes``, synthetic checkpoint folder,
temp output dir) and sends it JSON requests (run a prompt, load a pack, call an in-process
helper). Booting rewrites ``sys.path`` (ComfyUI root and ``<root>/comfy`` first, so top-level
``nodes``/``utils``/``model_base`` become ComfyUI's), parses argv and registers nodes
globally - none of it can be undone, so it must not happen in the process that also runs the
pack's pure-Python tests, and two ComfyUI versions need two processes anyway. Another test
module that needs the host gets its own worker (~4-6 s boot), or shares the session's
``confiner_worker`` when it needs the ConFiner pack alone (comfy_support/README.md).

Run against both snapshots::

    COMFYUI_PATH=~/.cache/confiner/comfyui-0.3.64 python -m pytest tests/test_comfy_harness.py -q
    COMFYUI_PATH=~/.cache/confiner/comfyui-0.8.0  python -m pytest tests/test_comfy_harness.py -q

The checkpoint is built once into ``$CONFINER_TEST_CACHE`` (default ``~/.cache/confiner-tests``).
"""

from __future__ import annotations

import copy
import json
import textwrap

import pytest

from comfy_support.fixtures import (  # noqa: F401  (pytest fixtures)
    comfy_path,
    comfy_worker,
    confiner_pack_dir,
    load_workflow,
    synthetic_checkpoint,
    with_checkpoint,
)
from comfy_support.ui_to_api import WorkflowConversionError, is_ui_workflow, ui_to_api, widget_names

CKPT = "confiner-tiny-sd15-r1.safetensors"

# ======================================================================================
# Unit tests of ui_to_api (no ComfyUI needed)
# ======================================================================================

# INPUT_TYPES as the backends declare them (trimmed to what matters for widgets).
FAKE_TYPES = {
    "CheckpointLoaderSimple": {"required": {"ckpt_name": ([CKPT, "other.safetensors"], {"tooltip": "x"})}},
    "CLIPTextEncode": {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP",)}},
    "EmptyLatentImage": {"required": {"width": ("INT", {"default": 512}), "height": ("INT", {"default": 512}),
                                      "batch_size": ("INT", {"default": 1})}},
    "KSampler": {"required": {
        "model": ("MODEL",),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
        "steps": ("INT", {"default": 20}),
        "cfg": ("FLOAT", {"default": 8.0}),
        "sampler_name": (["euler", "ddim"],),
        "scheduler": (["normal", "karras"],),
        "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
        "denoise": ("FLOAT", {"default": 1.0}),
    }},
    "VAEDecode": {"required": {"samples": ("LATENT",), "vae": ("VAE",)}},
    "SaveImage": {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                  "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}},
    "PreviewImage": {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT"}},
    "LatentUpscaleBy": {"required": {"samples": ("LATENT",), "upscale_method": (["nearest-exact", "bilinear"],),
                                     "scale_by": ("FLOAT", {"default": 1.5})}},
    # V3 io.Int.Input(..., control_after_generate=True) as INPUT_TYPES() shows it
    "PrimitiveInt": {"required": {"value": ("INT", {"min": -(2 ** 63) + 1, "max": 2 ** 63 - 1, "control_after_generate": True})}},
}

EXPECTED_BASIC = {
    "3": {"class_type": "KSampler", "_meta": {"title": "KSampler"}, "inputs": {
        "seed": 156680208700286, "steps": 2, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "_meta": {"title": "CheckpointLoaderSimple"}, "inputs": {"ckpt_name": CKPT}},
    "5": {"class_type": "EmptyLatentImage", "_meta": {"title": "EmptyLatentImage"},
          "inputs": {"width": 64, "height": 64, "batch_size": 2}},
    "6": {"class_type": "CLIPTextEncode", "_meta": {"title": "CLIPTextEncode"}, "inputs": {
        "text": "beautiful scenery nature glass bottle landscape, purple galaxy bottle", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "_meta": {"title": "CLIPTextEncode"}, "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "_meta": {"title": "VAEDecode"}, "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "_meta": {"title": "SaveImage"}, "inputs": {"filename_prefix": "ConfinerTest", "images": ["8", 0]}},
}

EXPECTED_FEATURES = {
    "15": {"class_type": "PrimitiveInt", "_meta": {"title": "PrimitiveInt"}, "inputs": {"value": 1234}},
    "3": {"class_type": "KSampler", "_meta": {"title": "KSampler"}, "inputs": {
        "seed": ["15", 0],  # widget converted to input, linked to a real node
        "steps": 2,  # from the PrimitiveNode (widgets_values said 20)
        "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "_meta": {"title": "CheckpointLoaderSimple"}, "inputs": {"ckpt_name": CKPT}},
    "5": {"class_type": "EmptyLatentImage", "_meta": {"title": "EmptyLatentImage"},
          "inputs": {"width": 64, "height": 64, "batch_size": 2}},
    "6": {"class_type": "CLIPTextEncode", "_meta": {"title": "Positive"}, "inputs": {"text": "a glass bottle", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "_meta": {"title": "Negative"}, "inputs": {"text": "blurry", "clip": ["4", 1]}},
    # LatentUpscaleBy (bypassed) and the Reroute are resolved away
    "8": {"class_type": "VAEDecode", "_meta": {"title": "VAEDecode"}, "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "_meta": {"title": "SaveImage"}, "inputs": {"filename_prefix": "ConfinerFeatures", "images": ["8", 0]}},
    # PreviewImage (muted), Note, PrimitiveNode, Reroute: not emitted
}


def _mini(nodes, links, version=0.4):
    return {"nodes": nodes, "links": links, "version": version}


def test_basic_default_graph_converts_exactly():
    api = ui_to_api(load_workflow("ksampler_basic"), FAKE_TYPES)
    assert api == EXPECTED_BASIC


def test_features_graph_converts_exactly():
    wf = load_workflow("ksampler_features")
    assert wf["version"] == 1 and isinstance(wf["links"][0], dict)
    assert ui_to_api(wf, FAKE_TYPES) == EXPECTED_FEATURES


def test_link_lists_and_link_objects_are_equivalent():
    wf = load_workflow("ksampler_basic")
    as_objects = copy.deepcopy(wf)
    as_objects["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), l))
                           for l in wf["links"]]
    as_objects["version"] = 1
    assert ui_to_api(as_objects, FAKE_TYPES) == ui_to_api(wf, FAKE_TYPES)


def test_callable_input_types_and_unknown_type():
    wf = load_workflow("ksampler_basic")
    assert ui_to_api(wf, lambda ct: FAKE_TYPES[ct]) == EXPECTED_BASIC  # KeyError = unknown
    wf["nodes"][0]["type"] = "NoSuchNode"
    with pytest.raises(WorkflowConversionError, match="unknown node type 'NoSuchNode'"):
        ui_to_api(wf, FAKE_TYPES)


@pytest.mark.parametrize(
    "spec, name, values, expected",
    [
        # seed/noise_seed without the key: control value follows
        (("INT", {}), "seed", [5, "fixed", 7], {"seed": 5, "other": 7}),
        (("INT", {}), "noise_seed", [5, "increment", 7], {"noise_seed": 5, "other": 7}),
        # explicit False suppresses it even for "seed"
        (("INT", {"control_after_generate": False}), "seed", [5, 7], {"seed": 5, "other": 7}),
        # explicit True on another name
        (("INT", {"control_after_generate": True}), "frames", [5, "randomize", 7], {"frames": 5, "other": 7}),
        # plain INT: nothing extra
        (("INT", {}), "steps", [5, 7], {"steps": 5, "other": 7}),
        # combo with control_after_generate: control value + filter-list value
        ((["a", "b"], {"control_after_generate": True}), "choice", ["b", "fixed", "", 7], {"choice": "b", "other": 7}),
        # upload combo: the "image" button value
        ((["x.png"], {"image_upload": True}), "image", ["x.png", "image", 7], {"image": "x.png", "other": 7}),
        # V3 combo
        (("COMBO", {"options": ["a", "b"]}), "mode", ["a", 7], {"mode": "a", "other": 7}),
        # forceInput: no widget at all
        (("INT", {"forceInput": True}), "count", [7], {"other": 7}),
    ],
)
def test_widget_layout_rules(spec, name, values, expected):
    types = {"N": {"required": {name: spec}, "optional": {"other": ("INT", {})}}}
    wf = _mini([{"id": 1, "type": "N", "mode": 0, "inputs": [], "outputs": [], "widgets_values": values}], [])
    assert ui_to_api(wf, types)["1"]["inputs"] == expected


def test_widget_order_required_then_optional_and_hidden_never():
    types = {"N": {"optional": {"b": ("FLOAT", {})}, "required": {"a": ("STRING", {}), "m": ("MODEL",)},
                   "hidden": {"unique_id": "UNIQUE_ID"}}}
    assert widget_names(types["N"]) == ["a", "b"]
    wf = _mini([{"id": 1, "type": "N", "inputs": [], "outputs": [], "widgets_values": ["s", 0.5]}], [])
    assert ui_to_api(wf, types)["1"]["inputs"] == {"a": "s", "b": 0.5}


def test_dict_widgets_values_and_array_values_are_wrapped():
    types = {"N": {"required": {"a": ("INT", {}), "lst": ("STRING", {})}}}
    wf = _mini([{"id": 1, "type": "N", "inputs": [], "outputs": [],
                 "widgets_values": {"a": 3, "lst": [1, 2], "videopreview": {"hidden": False}}}], [])
    assert ui_to_api(wf, types)["1"]["inputs"] == {"a": 3, "lst": {"__value__": [1, 2]}}


def test_lenient_control_value_missing():
    wf = _mini([{"id": 1, "type": "N", "inputs": [], "outputs": [], "widgets_values": [5, 7]}], [])
    types = {"N": {"required": {"seed": ("INT", {}), "steps": ("INT", {})}}}
    assert ui_to_api(wf, types)["1"]["inputs"] == {"seed": 5, "steps": 7}
    assert ui_to_api(wf, types, lenient_control=False)["1"]["inputs"] == {"seed": 5}


def test_muted_producer_removes_input_even_for_widgets():
    types = {"Src": {"required": {}}, "Dst": {"required": {"x": ("INT", {}), "img": ("IMAGE",)}}}
    nodes = [
        {"id": 1, "type": "Src", "mode": 2, "inputs": [], "outputs": [{"name": "INT", "type": "INT", "links": [1]}]},
        {"id": 2, "type": "Src", "mode": 0, "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}]},
        {"id": 3, "type": "Dst", "mode": 0, "widgets_values": [9],
         "inputs": [{"name": "img", "type": "IMAGE", "link": 2}, {"name": "x", "type": "INT", "link": 1, "widget": {"name": "x"}}],
         "outputs": []},
    ]
    api = ui_to_api(_mini(nodes, [[1, 1, 0, 3, 1, "INT"], [2, 2, 0, 3, 0, "IMAGE"]]), types)
    assert set(api) == {"2", "3"}
    assert api["3"]["inputs"] == {"img": ["2", 0]}  # frontend drops the input, widget value included


def test_bypass_picks_input_by_type_and_chains_through_reroutes():
    types = {
        "Src": {"required": {}},
        "Mix": {"required": {"image": ("IMAGE",), "latent": ("LATENT",), "strength": ("FLOAT", {})}},
        "Dst": {"required": {"samples": ("LATENT",)}},
    }
    nodes = [
        {"id": 1, "type": "Src", "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]},
                                                           {"name": "LATENT", "type": "LATENT", "links": [2]}]},
        {"id": 2, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 2}],
         "outputs": [{"name": "", "type": "LATENT", "links": [3]}]},
        {"id": 3, "type": "Mix", "mode": 4, "widgets_values": [0.5],
         "inputs": [{"name": "image", "type": "IMAGE", "link": 1}, {"name": "latent", "type": "LATENT", "link": 3}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [4]}]},
        {"id": 4, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 4}],
         "outputs": [{"name": "", "type": "LATENT", "links": [5]}]},
        {"id": 5, "type": "Dst", "inputs": [{"name": "samples", "type": "LATENT", "link": 5}], "outputs": []},
        {"id": 6, "type": "MarkdownNote", "inputs": [], "outputs": [], "widgets_values": ["# hi"]},
    ]
    links = [[1, 1, 0, 3, 0, "IMAGE"], [2, 1, 1, 2, 0, "*"], [3, 2, 0, 3, 1, "LATENT"], [4, 3, 0, 4, 0, "*"],
             [5, 4, 0, 5, 0, "LATENT"]]
    api = ui_to_api(_mini(nodes, links), types)
    assert set(api) == {"1", "5"}
    assert api["5"]["inputs"] == {"samples": ["1", 1]}


def test_bypass_without_matching_input_leaves_input_unset():
    types = {"Src": {"required": {}}, "Conv": {"required": {"image": ("IMAGE",)}}, "Dst": {"required": {"samples": ("LATENT",)}}}
    nodes = [
        {"id": 1, "type": "Src", "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}]},
        {"id": 2, "type": "Conv", "mode": 4, "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [2]}]},
        {"id": 3, "type": "Dst", "inputs": [{"name": "samples", "type": "LATENT", "link": 2}], "outputs": []},
    ]
    api = ui_to_api(_mini(nodes, [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "LATENT"]]), types)
    assert api["3"]["inputs"] == {}


def test_subgraphs_are_rejected_clearly():
    wf = _mini([{"id": 1, "type": "0b6a-uuid", "inputs": [], "outputs": []}], [], version=1)
    wf["definitions"] = {"subgraphs": [{"id": "0b6a-uuid", "nodes": [], "links": []}]}
    with pytest.raises(WorkflowConversionError, match="subgraphs"):
        ui_to_api(wf, {})


def test_is_ui_workflow():
    assert is_ui_workflow(load_workflow("ksampler_basic"))
    assert not is_ui_workflow(EXPECTED_BASIC)


# ======================================================================================
# Integration tests (need $COMFYUI_PATH)
# ======================================================================================

PROBE_PACK_INIT = '''
from .probe_nodes import comfy_entrypoint  # relative import: the pack is a package
'''
PROBE_PACK_NODES = '''
import comfy.utils
from comfy_api.latest import ComfyExtension, io


class HarnessProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ConfinerHarnessProbe", display_name="Harness Probe", category="testing",
            inputs=[io.Int.Input("value", default=0, min=-1000, max=1000),
                    io.Boolean.Input("fail", default=False),
                    io.Latent.Input("latent", optional=True)],
            outputs=[io.Int.Output()], is_output_node=True)

    @classmethod
    def execute(cls, value, fail, latent=None):
        if fail:
            raise ValueError("probe asked to fail")
        pbar = comfy.utils.ProgressBar(3)
        for _ in range(3):
            pbar.update(1)
        frames = None if latent is None else int(latent["samples"].shape[0])
        return io.NodeOutput(value + 1, ui={"value": [value + 1], "frames": [frames]})


class ProbeExtension(ComfyExtension):
    async def get_node_list(self):
        return [HarnessProbe]


def comfy_entrypoint():
    return ProbeExtension()
'''


@pytest.fixture(scope="module")
def probe_pack(tmp_path_factory):
    d = tmp_path_factory.mktemp("packs") / "harness_probe_pack"
    d.mkdir()
    (d / "__init__.py").write_text(textwrap.dedent(PROBE_PACK_INIT))
    (d / "probe_nodes.py").write_text(textwrap.dedent(PROBE_PACK_NODES))
    return d


@pytest.fixture(scope="module")
def comfy_pack_dirs(probe_pack):  # overrides comfy_support.fixtures' default (no packs)
    return [(str(probe_pack), "harness_probe")]


def _ui_workflow(name, worker):
    return with_checkpoint(load_workflow(name), worker.checkpoint_name)


def _convert_with_backend_types(wf, worker):
    class_types = sorted({n["type"] for n in wf["nodes"]} - {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
    types = worker.input_types(*class_types)  # INPUT_TYPES from the live backend (JSON round-tripped)
    return ui_to_api(wf, types)


def _events(result):
    return [e for e, _ in result["status_messages"]]


@pytest.mark.comfyui
def test_boot_reports_versions(comfy_worker):
    info = comfy_worker.boot_info
    from comfy_support.harness import comfy_version

    assert info["comfy_version"] == comfy_version(comfy_worker.comfy_root)
    version = tuple(int(x) for x in info["comfy_version"].split(".")[:3])
    assert info["executor_api"].startswith("NEW" if version >= (0, 4) else "OLD")  # cache_args vs cache_size
    assert info["builtin_node_count"] > 300
    assert info["torchvision"] in ("stub", "real")
    assert [p["name"] for p in info["packs"]] == ["harness_probe"]
    assert info["packs"][0]["node_ids"] == ["ConfinerHarnessProbe"]


@pytest.mark.comfyui
def test_synthetic_checkpoint_is_detected_as_sd15(comfy_worker):
    s = comfy_worker.call("comfy_support.inproc:checkpoint_summary", comfy_worker.checkpoint_name)
    assert s["model_config"] == "SD15" and s["model_type"] == "EPS"
    assert s["unet_config"]["model_channels"] == 320 and s["unet_config"]["context_dim"] == 768
    assert s["latent_format"] == "SD15"
    assert abs(s["sigma_max"] - 14.6146) < 1e-3
    assert s["clip"] and s["cond_shape"] == [1, 77, 768] and s["cond_finite"]
    assert s["vae"] in ("TAESD", "AutoencoderKL")
    assert s["vae_latent_shape"] == [1, 4, 8, 8] and s["vae_decoded_shape"][1:] == [64, 64, 3] and s["vae_finite"]


@pytest.mark.comfyui
def test_ksampler_graph_from_ui_workflow_executes(comfy_worker):
    wf = _ui_workflow("ksampler_basic", comfy_worker)
    api = _convert_with_backend_types(wf, comfy_worker)
    in_worker = comfy_worker.convert(wf)  # same converter in the worker (adds display-name titles)
    assert {k: {**v, "_meta": None} for k, v in api.items()} == {k: {**v, "_meta": None} for k, v in in_worker.items()}
    assert in_worker["8"]["_meta"]["title"] == "VAE Decode"
    assert api["3"]["inputs"]["steps"] == 2 and api["3"]["inputs"]["seed"] == 156680208700286
    assert api["5"]["inputs"] == {"width": 64, "height": 64, "batch_size": 2}

    res = comfy_worker.run_prompt(api, extra_data={"extra_pnginfo": {"workflow": wf}})
    assert res["success"], json.dumps(res["status_messages"], indent=1)[-4000:]
    assert _events(res)[0] == "execution_start" and _events(res)[-1] == "execution_success"
    images = res["outputs"]["9"]["images"]
    assert len(images) == 2
    files = comfy_worker.call("comfy_support.inproc:output_files", res["outputs"])
    assert all(f["exists"] and f["size"] == [64, 64] for f in files)
    ks = [p for p in res["progress"] if p["node_id"] == "3"]
    assert [(p["value"], p["total"]) for p in ks] == [(1, 2), (2, 2)]


@pytest.mark.comfyui
def test_ui_features_workflow_executes(comfy_worker):
    wf = _ui_workflow("ksampler_features", comfy_worker)
    api = comfy_worker.convert(wf)
    assert set(api) == {"3", "4", "5", "6", "7", "8", "9", "15"}
    assert api["3"]["inputs"]["steps"] == 2 and api["3"]["inputs"]["seed"] == ["15", 0]
    res = comfy_worker.run_workflow(wf)
    assert res["success"], json.dumps(res["status_messages"], indent=1)[-4000:]
    assert len(res["outputs"]["9"]["images"]) == 2


@pytest.mark.comfyui
def test_interrupt_at_step(comfy_worker):
    api = comfy_worker.convert(_ui_workflow("ksampler_basic", comfy_worker))
    api["3"]["inputs"]["seed"] = 77  # not cached
    res = comfy_worker.run_prompt(api, interrupt_at_step=1)
    assert not res["success"] and res["interrupted"] and res["error"] is None
    assert "execution_interrupted" in _events(res)
    assert [(p["value"], p["node_id"]) for p in res["progress"]] == [(1, "3")]
    assert "9" not in res["outputs"]
    # the next run is not affected by the interruption flag
    api["3"]["inputs"]["seed"] = 78
    assert comfy_worker.run_prompt(api)["success"]


@pytest.mark.comfyui
def test_validation_error_is_reported(comfy_worker):
    api = comfy_worker.convert(_ui_workflow("ksampler_basic", comfy_worker))
    api["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    res = comfy_worker.run_prompt(api)
    assert not res["success"] and res["valid"] is False
    assert _events(res) == ["validation_error"]
    assert "4" in res["node_errors"]


@pytest.mark.comfyui
def test_custom_pack_node_runs_and_reports_errors(comfy_worker):
    nodes = comfy_worker.call("comfy_support.inproc:registered_nodes", "ConfinerHarnessProbe")
    assert nodes["ConfinerHarnessProbe"]["is_v3"]
    assert nodes["ConfinerHarnessProbe"]["display_name"] == "Harness Probe"
    assert nodes["ConfinerHarnessProbe"]["module"] == "custom_nodes.harness_probe"
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 3}},
        "2": {"class_type": "ConfinerHarnessProbe", "inputs": {"value": 41, "fail": False, "latent": ["1", 0]}},
    }
    res = comfy_worker.run_prompt(prompt)
    assert res["success"], res["status_messages"]
    assert res["outputs"]["2"] == {"value": [42], "frames": [3]}
    assert [(p["value"], p["total"], p["node_id"]) for p in res["progress"]] == [(1, 3, "2"), (2, 3, "2"), (3, 3, "2")]
    # cached re-run still reports the UI output (harness acts as a connected client)
    assert comfy_worker.run_prompt(prompt)["outputs"]["2"] == {"value": [42], "frames": [3]}

    prompt["2"]["inputs"]["fail"] = True
    res = comfy_worker.run_prompt(prompt)
    assert not res["success"] and not res["interrupted"]
    assert res["error"]["node_id"] == "2" and res["error"]["exception_type"].endswith("ValueError")
    assert "probe asked to fail" in res["error"]["exception_message"]


@pytest.mark.comfyui
def test_confiner_pack_loads(comfy_worker, confiner_pack_dir):
    if not (confiner_pack_dir / "__init__.py").is_file():
        pytest.skip("the ConFiner pack (repo-root __init__.py) does not exist yet")
    rec = comfy_worker.load_pack(confiner_pack_dir, "confiner")
    assert rec["node_ids"], "the pack registered no nodes; log:\n" + "\n".join(rec.get("log", []))
    nodes = comfy_worker.call("comfy_support.inproc:registered_nodes")
    for nid in rec["node_ids"]:
        assert nodes[nid]["module"] == "custom_nodes.confiner"
