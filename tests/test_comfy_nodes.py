"""The ConFiner node pack inside a real ComfyUI (``$COMFYUI_PATH``; skipped when unset).

Runs in a ComfyUI worker subprocess (see comfy_support/fixtures.py) with a random-weight SD 1.5-layout
checkpoint. Example workflows are read from example_workflows/, converted UI -> API as the frontend does, made
CPU-sized (64x64, few frames) and executed. AnimateDiff-Evolved is not installed in the test host, so its loader
nodes are bypassed (mode 4, as a user would with Ctrl+B): the plain SD model then stands in for the control
and temporal experts, and everything ConFiner does still runs.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from comfy_support.fixtures import assert_error_text, with_checkpoint
from comfy_support.templates import BASIC, COMPARE, LONG_SD

pytestmark = pytest.mark.comfyui
EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"
NODE_IDS = ["ConFinerControlExpert", "ConFinerRefineExperts", "ConFinerCoordinatedSampler", "ConFinerLongSegmenter",
            "ConFinerNoiseRescheduler"]


@pytest.fixture(scope="module")
def comfy_worker(confiner_worker):  # the session's worker with the pack (tests/conftest.py)
    return confiner_worker


def cpu_sized(workflow: dict, worker, frames: int = 4) -> dict:
    """The shipped workflow made small enough for a CPU test: 64x64, ``frames`` frames (a Long Video: 3 segments of
    ``frames``), ADE bypassed if absent. What these tests count (evaluations, progress, refusals, identical reruns) does
    not depend on the frame count; a network call's cost does, about in proportion."""
    wf = with_checkpoint(copy.deepcopy(workflow), worker.checkpoint_name)
    has_ade = has_motion_models(worker)
    for n in wf["nodes"]:
        if n["type"] == "EmptyLatentImage":
            n["widgets_values"] = [64, 64, frames if n["widgets_values"][2] > 1 else 1]
        elif n["type"] == "ConFinerLongSegmenter":
            n["widgets_values"][0:2] = [3 * frames, frames]  # frames, segment length
            prompt = next(i for i, v in enumerate(n["widgets_values"]) if isinstance(v, str) and "|" in v)
            n["widgets_values"][prompt] = f"0: a red ball | {frames}: a blue ball"  # segment_prompts
        elif n["type"] == "ADE_AnimateDiffLoaderGen1" and not has_ade:
            n["mode"] = 4
    return wf


def saved_files(result: dict) -> list:
    return [str(Path(img.get("subfolder", "")) / img["filename"])
            for out in result["outputs"].values() for img in out.get("images", [])]


def test_pack_registers_five_v3_nodes_with_tooltips(comfy_worker):
    types = comfy_worker.input_types(*NODE_IDS)
    for node_id in NODE_IDS:
        spec = types[node_id]
        assert spec is not None, f"{node_id} not registered"
        for group in ("required", "optional"):
            for name, (typ, *opts) in spec.get(group, {}).items():
                assert opts and opts[0].get("tooltip"), f"{node_id}.{name} has no tooltip"
                # an artist reads labels, not ids: an id of several words carries a label in words
                assert "_" not in name or opts[0].get("display_name"), f"{node_id}.{name} has no readable label"


def test_templates_show_every_socket_by_the_label_its_node_declares(comfy_worker):
    """The frontend draws a socket by its ``label`` (a new node's is the input's display_name) and a loaded workflow
    keeps the label saved with it: the templates must carry the nodes' own."""
    types = comfy_worker.input_types(*NODE_IDS)
    checked = 0
    for path in sorted(EXAMPLES.glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] not in types:
                continue
            spec = types[node["type"]]
            declared = {**spec.get("required", {}), **spec.get("optional", {})}
            for slot in node["inputs"]:
                _, *opts = declared[slot["name"]]
                label = (opts[0] if opts else {}).get("display_name") or slot["name"]
                assert slot.get("label", slot["name"]) == label, (path.name, node["type"], slot["name"])
                checked += 1
    assert checked > 50


def test_schedules_equal_comfys_model_sampling(comfy_worker):
    r = comfy_worker.call("comfy_support.confiner_checks:schedule_matches_comfy", comfy_worker.checkpoint_name)
    assert r["max_rel_error"] < 1e-5
    assert abs(r["sigma_max"] - 14.6146) < 1e-3 and r["layout"] == "frames" and r["latent_space"] == "sd15"


#: the paper's experts' beta schedules as ComfyUI's make_beta_schedule takes them: its "linear" is diffusers'
#: scaled_linear, its "sqrt_linear" diffusers' linear
COMFY_BETAS = {"sd15": dict(beta_schedule="linear", linear_start=0.00085, linear_end=0.012),
               "animatediff": dict(beta_schedule="sqrt_linear", linear_start=0.00085, linear_end=0.012),
               "lavie": dict(beta_schedule="sqrt_linear", linear_start=0.0001, linear_end=0.02)}


def test_nearest_matching_picks_the_timestep_comfys_model_sampling_picks(comfy_worker):
    """``nearest`` matching is the entry nearest in log noise level, which ComfyUI's model_sampling.timestep also
    takes: every timestep of SD 1.5 -> LaVie (the paper's pair) and between SD 1.5 and AnimateDiff matches it."""
    from confiner_core.refine import matched_timestep
    from confiner_core.schedules import named

    pairs = [("sd15", "lavie"), ("lavie", "sd15"), ("sd15", "animatediff"), ("animatediff", "sd15")]
    theirs = comfy_worker.call("comfy_support.confiner_checks:comfy_nearest_timesteps",
                               [(f"{a}->{b}", (COMFY_BETAS[a], COMFY_BETAS[b])) for a, b in pairs])
    for a, b in pairs:
        ours = [matched_timestep(named(a), named(b), t, "nearest") for t in range(1000)]
        differ = [(t, ours[t], theirs[f"{a}->{b}"][t]) for t in range(1000) if ours[t] != theirs[f"{a}->{b}"][t]]
        assert not differ, (a, b, differ[:5])
        assert ours != list(range(1000)), (a, b)   # the pair's noise levels differ: matching moves timesteps


# On further versions the basic template stands for all three: the compare-modes template's nodes are the basic
# one's, and the Long Video runs on every version in test_comfy_modern and the bad-input tests.
@pytest.mark.parametrize("name", [BASIC,
                                  pytest.param(COMPARE, marks=pytest.mark.first_version_only),
                                  pytest.param(LONG_SD, marks=pytest.mark.first_version_only)])
def test_example_workflow_executes(comfy_worker, name):
    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    result = comfy_worker.run_workflow(cpu_sized(workflow, comfy_worker), fresh_cache=True)
    assert result["success"], result.get("error") or result["status_messages"]
    saves = [n for n in workflow["nodes"] if n["type"] == "SaveAnimatedWEBP"]
    assert len(saved_files(result)) == len(saves)
    # one progress bar per ConFiner node, advancing once per stage step, ending at its total
    confiner_steps = [e for e in result["progress"] if e.get("total") and e["value"] == e["total"]]
    assert confiner_steps, result["progress"][:5]
    if name == LONG_SD:   # the prompt of each structure and window, then the schedule
        (node,) = _node_ids(workflow, "ConFinerLongSegmenter")
        mine = [m[1]["text"] for m in result["server_messages"] if m[0] == "progress_text" and m[1]["node_id"] == node]
        steps = [t.split("\n")[-3:] for t in mine if "\nstep " in t]
        # 0: a red ball | 4: a blue ball over 12 frames in segments of 4: structures 1-4 centred on frames 0, 4, 8,
        # 11, windows 1-3 on frames 2, 6, 10
        prompts = {s[0].split(" · ")[0]: s[2] for s in steps}
        red, blue = "prompt: a red ball", "prompt: a blue ball"
        assert prompts == {"structure 1/4": red, "structure 2/4": blue, "structure 3/4": blue, "structure 4/4": blue,
                           "window 1/3": red, "window 2/3": blue, "window 3/3": blue}, prompts
        assert all(len(line) <= 60 for s in steps for line in s[:2]), steps
        # the run opens with the schedule, under any warnings (an image model, where AnimateDiff is not installed)
        opening = "prompts:\n0-3: a red ball\n4-11: a blue ball"
        assert re.fullmatch(r"(warning: [^\n]*\n)*" + re.escape(opening), mine[0]), mine[0]
        # 4 structures, 3 windows, and the frames made (which 'frames' sets, whatever the latent's length)
        done = rf"done · {4 * 4 + 3 * 15} expert evaluations in \d+\.\d s · 12 frames\nseed \d+\n"
        assert re.fullmatch(r"(warning: [^\n]*\n)*" + done + re.escape(opening), mine[-1]), mine[-1]


def test_animatediffs_motion_modules_make_sd_a_video_expert_for_the_core_too(comfy_worker):
    """SD 1.5 with AnimateDiff's motion modules takes frame batches but relates them: the core's check, which
    generate_long runs inside the Long Video, said "the control expert takes one frame at a time (an image model)"
    on the console of every first Long Video run of the AnimateDiff template (the node's own check knew better)."""
    r = comfy_worker.call("comfy_support.confiner_checks:motion_models_make_a_video_expert",
                          comfy_worker.checkpoint_name)
    assert r["bare"]["layout"] == r["with_motion_models"]["layout"] == "frames"
    assert r["with_motion_models"]["relates_frames"] and r["with_motion_models"]["warnings"] == []
    assert not r["bare"]["relates_frames"] and len(r["bare"]["warnings"]) == 1
    assert "takes one frame at a time (an image model)" in r["bare"]["warnings"][0]


def _node_ids(workflow: dict, node_type: str) -> list:
    return [str(n["id"]) for n in workflow["nodes"] if n["type"] == node_type]


def test_a_bypassed_refine_sampler_is_said_on_it_and_on_the_control_expert(comfy_worker):
    """A bypassed Refine Sampler passes the structure on: the run saved the control stage's video, decoded, as if
    refined, the sampler's text blank (a trial). The Control Expert, which reads the canvas the frontend queues
    beside the prompt, says so under itself and under the bypassed node; a graph without it says nothing."""
    workflow = cpu_sized(json.loads((EXAMPLES / f"{BASIC}.json").read_text()), comfy_worker)
    (sampler,) = [n for n in workflow["nodes"] if n["type"] == "ConFinerCoordinatedSampler"]
    (control,) = _node_ids(workflow, "ConFinerControlExpert")

    def texts(result, node) -> list:
        return [m[1]["text"] for m in result["server_messages"] if m[0] == "progress_text" and m[1]["node_id"] == node]
    result = comfy_worker.run_workflow(workflow, fresh_cache=True)
    assert result["success"] and not texts(result, str(sampler["id"]))[-1].startswith("bypassed")
    assert not any("Refine Sampler bypassed" in t for t in texts(result, control))   # (AnimateDiff's may be)
    sampler["mode"] = 4
    result = comfy_worker.run_workflow(workflow, fresh_cache=True)
    assert result["success"], result.get("error")
    assert texts(result, str(sampler["id"])) == ["bypassed: the video after it is the Control Expert's\nstructure, "
                                                 "unrefined (Ctrl+B un-bypasses it)"]
    assert "\nwarning: Refine Sampler bypassed: the video is unrefined\ndone · " in "\n" + texts(result, control)[-1]


def test_a_bundle_served_from_the_cache_is_said_again_by_the_sampler_that_reads_it(comfy_worker):
    """A bundle ComfyUI serves from its cache runs nothing, and stood blank under a Refine Sampler that ran (a trial:
    a workflow opened from its video, its bundle made in another tab): the sampler says what the bundle holds."""
    workflow = cpu_sized(json.loads((EXAMPLES / f"{BASIC}.json").read_text()), comfy_worker)
    (bundle,) = _node_ids(workflow, "ConFinerRefineExperts")
    (sampler,) = [n for n in workflow["nodes"] if n["type"] == "ConFinerCoordinatedSampler"]

    def said(result) -> list:
        return [m[1]["text"] for m in result["server_messages"]
                if m[0] == "progress_text" and m[1]["node_id"] == bundle]
    first = comfy_worker.run_workflow(workflow, fresh_cache=True)
    sampler["widgets_values"][4] += 1   # another refine seed: the sampler runs again, the bundle is cached
    again = comfy_worker.run_workflow(workflow)
    assert first["success"] and again["success"]
    # the first run's bundle said it and its sampler again; the second's cached bundle nothing, its sampler once
    assert said(first)[0].startswith("spatial: SD 1.5") and said(first) == said(first)[:1] * 2, said(first)
    assert said(again) == said(first)[:1], said(again)
    # and as its UI output, which ComfyUI sends again for a cached bundle (a rerun with every node cached left it
    # blank: no sampler ran to say it); web/confiner.js shows it
    assert first["outputs"][bundle]["confiner_text"] == said(first)[:1], first["outputs"].get(bundle)


def test_eq6_draws_fresh_noise_when_the_control_and_refine_seeds_are_equal(comfy_worker):
    """Eq. 6 noises the structure with fresh noise. Both sampling nodes seeded a torch.Generator with their seed, so
    with equal seeds (the templates' 0 and 0) the Refine Sampler's Eq. 6 noise was the Control Expert's starting
    noise itself (a review): the structure re-noised towards where it came from. The refine seed has its own stream."""
    workflow = cpu_sized(json.loads((EXAMPLES / f"{BASIC}.json").read_text()), comfy_worker)
    (control,) = _node_ids(workflow, "ConFinerControlExpert")
    (sampler,) = _node_ids(workflow, "ConFinerCoordinatedSampler")
    values = {str(n["id"]): n["widgets_values"] for n in workflow["nodes"] if str(n["id"]) in (control, sampler)}
    # the template's seeds, equal: the control seed is the Control Expert's first widget, the refine seed the
    # Refine Sampler's fifth (after T_e, steps, mode and matching)
    assert values[control][0] == values[sampler][4] == 0 and values[sampler][5] == "randomize", values
    r = comfy_worker.call("comfy_support.confiner_checks:eq6_noise_against_control_noise", workflow)
    assert r["shapes"][0] == r["shapes"][1] and not r["equal"] and abs(r["correlation"]) < 0.2, r


def test_progress_moves_once_per_expert_evaluation_with_previews_and_stage_text(comfy_worker):
    workflow = json.loads((EXAMPLES / f"{BASIC}.json").read_text())
    comfy_worker.call("comfy_support.confiner_checks:use_latent2rgb_previews", True)
    try:
        result = comfy_worker.run_workflow(cpu_sized(workflow, comfy_worker), fresh_cache=True)
    finally:
        comfy_worker.call("comfy_support.confiner_checks:use_latent2rgb_previews", False)
    assert result["success"]
    (control,), (sampler,) = _node_ids(workflow, "ConFinerControlExpert"), _node_ids(workflow, "ConFinerCoordinatedSampler")
    by_node = {n: [e for e in result["progress"] if e["node_id"] == n] for n in (control, sampler)}
    # 4 control evaluations, then 5 coordinated steps x 3 evaluations: 19 updates for 19 evaluations
    assert [(e["value"], e["total"]) for e in by_node[control]] == [(i, 4) for i in range(1, 5)]
    assert [(e["value"], e["total"]) for e in by_node[sampler]] == [(i, 15) for i in range(1, 16)]
    assert all(e["has_preview"] for n in by_node for e in by_node[n])
    texts = [m[1] for m in result["server_messages"] if m[0] == "progress_text"]

    def updates(node):   # each update's stage and step lines (without motion models the node's warnings come first)
        return [" · ".join(t["text"].split("\n")[-2:]) for t in texts if t["node_id"] == node and "step" in t["text"]]

    # from the moment the frontend marks it running (its lazy check, before the control stage) to its first
    # evaluation, the run's start in place of the previous run's end
    before = [t["text"] for t in texts if t["node_id"] == sampler][:2]
    assert before[0].endswith("waiting for its turn\n(after the structure and the nodes queued before it)"), before
    assert before[1].endswith("starting · 15 expert evaluations"), before
    sampler_texts = updates(sampler)
    assert len(sampler_texts) == 15 and sampler_texts[0].startswith("refinement · spatial expert · step 1/5")
    assert sampler_texts[1].startswith("refinement · temporal expert · step 1/5")
    assert sampler_texts[-1].endswith("evaluation 15/15")
    # then how the run ended, in place of its last step
    last = [t["text"] for t in texts if t["node_id"] == sampler][-1]
    assert re.fullmatch(r"(.*\n)?done · 15 expert evaluations in \d+\.\d s\nseed \d+", last, re.S), last
    assert updates(control)[0].startswith("control stage · control expert")
    # the bundle says what it holds (it showed nothing): each expert's family, any motion models, its cfg
    (bundle,) = _node_ids(workflow, "ConFinerRefineExperts")
    spatial_cfg, temporal_cfg = next(n for n in workflow["nodes"] if str(n["id"]) == bundle)["widgets_values"][:2]
    said = [t["text"] for t in texts if t["node_id"] == bundle]
    motion = r" \+ \S+\.safetensors" if has_motion_models(comfy_worker) else ""
    # (said by the bundle, and again by the sampler that reads it)
    assert len(said) == 2 and len(set(said)) == 1 and re.fullmatch(
        f"spatial: SD 1\\.5 \\(SD15\\) · cfg {spatial_cfg:g}\ntemporal: SD 1\\.5 \\(SD15\\){motion} · cfg {temporal_cfg:g}",
        said[0]), said
    if has_motion_models(comfy_worker):   # video experts in the video roles: nothing to warn about
        assert not any("warning:" in t["text"] for t in texts), texts


def help_page_inputs(node_id: str) -> set:
    """The labels in the first column of a help page's Inputs table (cells like "a / b" or "a, b" list several)."""
    page = (EXAMPLES.parent / "web" / "docs" / f"{node_id}.md").read_text()
    table = page.split("## Inputs", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:]
    return {label.strip() for cell in cells for part in cell.split(" / ") for label in part.split(", ")}


def test_every_input_has_a_row_on_its_node_help_page(comfy_worker):
    """The "?" of a node opens web/docs/<node id>.md: an input added to a node without a row there is an input an
    artist cannot look up."""
    labels = comfy_worker.call("comfy_support.confiner_checks:input_labels")
    assert len(labels) == 5, sorted(labels)
    missing = {node: [label for label in mine if label not in help_page_inputs(node)] for node, mine in labels.items()}
    assert not any(missing.values()), missing


SHOW_ADVANCED = "Hidden until **Show Advanced** in the node's right-click menu: "


def test_every_help_page_names_the_inputs_hidden_until_show_advanced(comfy_worker):
    """The frontend hides a node's advanced inputs (web/confiner.js): an artist who reads of *low-noise cfg* on the
    help page and finds no such widget learns there where it is."""
    labels = comfy_worker.call("comfy_support.confiner_checks:advanced_labels")
    said = {}
    for node in labels:
        page = (EXAMPLES.parent / "web" / "docs" / f"{node}.md").read_text()
        line = next((line for line in page.splitlines() if line.startswith(SHOW_ADVANCED)), "")
        said[node] = line[len(SHOW_ADVANCED):].rstrip(".").split(", ") if line else []
    assert said == labels


def test_every_choice_of_a_combo_is_explained_on_its_help_page(comfy_worker):
    """The Control Expert's help listed euler and ddim while the combo (and the Wan templates) offered unipc, and
    the Refine Sampler's never named matching 'auto', its default. A row that defers to another node's page ("as on
    **...**") is checked there."""
    options = comfy_worker.call("comfy_support.confiner_checks:combo_options")
    unexplained = {}
    for node, combos in options.items():
        page = (EXAMPLES.parent / "web" / "docs" / f"{node}.md").read_text()
        rows = [line for line in page.split("## Inputs", 1)[1].split("\n## ", 1)[0].splitlines()
                if line.startswith("| ")]
        for label, choices in combos.items():
            row = next(r for r in rows if label in {p.strip() for c in r.split("|")[1].split(" / ")
                                                    for p in c.split(", ")})
            if "see below" in row:   # a table of its own further down (refine modes), a row per choice
                firsts = {line.split("|")[1].strip().strip("*") for line in page.splitlines() if line.startswith("| ")}
                unexplained.update({(node, label, c): row[:60] for c in choices if c not in firsts})
            elif "as on **" not in row:
                unexplained.update({(node, label, c): row[:60] for c in choices if f"*{c}*" not in row})
    assert not unexplained, unexplained


def has_motion_models(worker) -> bool:
    """Whether AnimateDiff-Evolved is installed: cpu_sized keeps the templates' loaders (and their motion models)
    then, and bypasses them otherwise."""
    return worker.input_types("ADE_AnimateDiffLoaderGen1").get("ADE_AnimateDiffLoaderGen1") is not None


def test_an_image_model_in_a_video_role_is_warned_under_the_node_for_the_whole_run(comfy_worker):
    """The basic template with its AnimateDiff loaders bypassed (what an artist does when the motion models are
    missing) runs SD 1.5 alone as control and temporal expert: every frame on its own. It still runs, and says so."""
    workflow = cpu_sized(json.loads((EXAMPLES / f"{BASIC}.json").read_text()), comfy_worker)
    for n in workflow["nodes"]:
        if n["type"] == "ADE_AnimateDiffLoaderGen1":
            n["mode"] = 4   # bypassed: the checkpoint's MODEL goes straight through
    result = comfy_worker.run_workflow(workflow, fresh_cache=True)
    assert result["success"]
    texts = [m[1] for m in result["server_messages"] if m[0] == "progress_text"]
    # the bypassed loader named: "add AnimateDiff" sent a trial's artist looking for the one on the canvas
    for node_type, warning, last in (
            ("ConFinerControlExpert", "warning: AnimateDiff bypassed, no motion: un-bypass it",
             "done · 4 expert evaluations"),
            ("ConFinerCoordinatedSampler", "warning: temporal's AnimateDiff bypassed: un-bypass it",
             "done · 15 expert evaluations")):
        (node,) = _node_ids(workflow, node_type)
        # (the Refine Sampler's lazy check says it waits for its turn before the node's own run begins)
        mine = [t["text"] for t in texts if t["node_id"] == node and not t["text"].startswith("waiting for its")]
        assert mine[0].startswith(warning), mine[0]              # before its first evaluation
        assert all(t.startswith(warning) for t in mine), mine    # and first in every update until the end
        assert sum(warning in t for t in mine[-1].split("\n")) == 1 and mine[-1].split("\n")[-2].startswith(last)
        assert re.fullmatch(r"seed \d+", mine[-1].split("\n")[-1]), mine[-1]
        # ... and in the prompt's history (a node's UI output), where an API client reads it: the text had reached
        # only the websocket of the client that queued the run
        assert result["outputs"][node]["confiner_text"] == [mine[-1]], result["outputs"].get(node)
        # the frontend neither wraps nor scrolls this text: every line fits a node as the templates draw it
        assert max(len(line) for t in mine for line in t.split("\n")) <= 60, mine[-1]
    # to the client that queued the run (the harness's), as ComfyUI's own progress: broadcast, a text reached the node
    # of the same id in every open tab, and was saved with that workflow
    assert texts and {t["sid"] for t in texts} == {"confiner-harness"}
    # queued over the API, without the canvas: the warning as before (nothing tells the loaders were there)
    api = comfy_worker.run_prompt(comfy_worker.convert(workflow), fresh_cache=True)
    (control,) = _node_ids(workflow, "ConFinerControlExpert")
    said = [m[1]["text"] for m in api["server_messages"] if m[0] == "progress_text" and m[1]["node_id"] == control]
    assert said[-1].startswith("warning: image model, no motion: add AnimateDiff or use Wan"), said[-1]


# control stage; a coordinated step's 2nd and 3rd evaluation; with stage sessions (the default) and without
@pytest.mark.parametrize("at_evaluation,staged", [(0, True), (2, True), (6, False), (7, True)])
def test_cancel_is_honoured_within_one_expert_evaluation(comfy_worker, at_evaluation, staged):
    """Cancel arrives while evaluation N runs (the flag is set when its model call returns, before any progress
    update, and the progress hook itself does not check): no further evaluation may start, on every version, and
    with stage sessions every long-lived sampling call ends through ComfyUI's clean-up."""
    api = comfy_worker.convert(cpu_sized(json.loads((EXAMPLES / f"{BASIC}.json").read_text()), comfy_worker))
    r = comfy_worker.call("comfy_support.confiner_checks:interrupt_latency", api, at_evaluation, staged)
    # (Cancel inside the first evaluation: ComfyUI 0.8 stops the model call; 0.3.64 lets it finish, and the pack's
    # own check stops the run after it)
    assert r["interrupted"] and r["evaluations"] in ({0, 1} if at_evaluation == 0 else {at_evaluation})
    assert r["evaluations_after_cancel"] == 0
    # the node says the run was cancelled (its last step's text stayed, as if the run were paused): the control
    # stage counts its own 4 evaluations, the refinement its 15
    done = r["evaluations"] if r["evaluations"] <= 4 else r["evaluations"] - 4
    # (Cancel inside the first evaluation said "cancelled before the first of 4", as if it had not started)
    said = f"cancelled after evaluation {done}/{4 if at_evaluation <= 4 else 15}" if done else \
        "cancelled before any of 4 evaluations finished"
    assert r["last_text"].endswith(said), r["last_text"]
    assert not r["any_current_patcher"] and r["session_threads"] == []
    assert r["sampling_function"] == "comfy.samplers.sampling_function"


def test_a_cancelled_long_video_says_a_rerun_starts_over(comfy_worker):
    """The Long Video keeps none of its finished windows when cancelled (ComfyUI caches a node's result alone): its
    text said only "cancelled after evaluation 9/42", and the artist expected the next run to go on."""
    api = comfy_worker.convert(cpu_sized(json.loads((EXAMPLES / f"{LONG_SD}.json").read_text()),
                                         comfy_worker))
    r = comfy_worker.call("comfy_support.confiner_checks:interrupt_latency", api, 3, True)
    assert r["interrupted"] and r["evaluations_after_cancel"] == 0
    last = r["last_text"].split("\n")
    assert last[-2].startswith("cancelled after evaluation 3/") and \
        last[-1] == "queued again, it starts over (no window is kept)", last


@pytest.mark.first_version_only   # Cancel on every version: test_cancel_is_honoured_within_one_expert_evaluation
def test_interruption_ends_cleanly_and_reruns_identically(comfy_worker):
    workflow = cpu_sized(json.loads((EXAMPLES / f"{BASIC}.json").read_text()), comfy_worker)
    first = comfy_worker.run_workflow(workflow, fresh_cache=True)
    assert first["success"]
    stopped = comfy_worker.run_workflow(workflow, fresh_cache=True, interrupt_at_step=2)  # mid control stage (its bar counts 1..4)
    assert stopped["interrupted"] and not stopped["success"]
    state = comfy_worker.call("comfy_support.confiner_checks:all_models_unpatched")
    assert not state["any_current_patcher"]
    again = comfy_worker.run_workflow(workflow)  # queued again as from the UI: what finished is served from the cache
    assert again["success"]
    out = Path(comfy_worker.output_dir)
    a, b = (out / saved_files(r)[0] for r in (first, again))
    assert a.read_bytes() == b.read_bytes()  # same seed, same video, after an interruption


def _noise_prompt(ckpt: str, method: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red ball", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 8}},
        "5": {"class_type": "ConFinerNoiseRescheduler",
              "inputs": {"latent": ["4", 0], "seed": 3, "method": method, "segment_length": 4, "stride": 2}},
        "6": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                    "cfg": 4.0}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "8": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 2,
                                                         "denoise": 1.0}},
        "9": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["5", 0], "guider": ["6", 0],
                                                                "sampler": ["7", 0], "sigmas": ["8", 0],
                                                                "latent_image": ["4", 0]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": f"noise_{method}"}},
    }


@pytest.mark.parametrize("method", ["shuffle", "freenoise"])
def test_noise_rescheduler_drives_sampler_custom_advanced(comfy_worker, method):
    result = comfy_worker.run_prompt(_noise_prompt(comfy_worker.checkpoint_name, method), fresh_cache=True)
    assert result["success"], result.get("error") or result["status_messages"]
    assert len(saved_files(result)) == 8
    # it ends with what it made, as the sampling nodes do (it had said nothing)
    texts = [d["text"] for e, d in result["server_messages"] if e == "progress_text" and d["node_id"] == "5"]
    made = "FreeNoise windows, stride 2" if method == "freenoise" else "shuffles of one base noise"
    assert texts == [f"done · 2 segments of 4 latent frames\n{made} · seed 3"], texts


def test_missing_temporal_expert_fails_early_with_a_clear_message(comfy_worker):
    workflow = cpu_sized(json.loads((EXAMPLES / f"{BASIC}.json").read_text()), comfy_worker)
    refine = next(n for n in workflow["nodes"] if n["type"] == "ConFinerRefineExperts")
    temporal = next(i for i in refine["inputs"] if i["name"] == "temporal_model")
    workflow["links"] = [l for l in workflow["links"] if l[0] != temporal["link"]]
    temporal["link"] = None
    result = comfy_worker.run_workflow(workflow, fresh_cache=True)
    assert not result["success"]
    message = result["error"]["exception_message"]
    assert "needs a temporal expert" in message and "temporal model (temporal_model)" in message
    assert "(SD 1.5 + AnimateDiff)" in message   # beside an SD 1.5 spatial expert (a Wan graph suggests Wan)
    (sampler,) = _node_ids(workflow, "ConFinerCoordinatedSampler")
    assert result["error"]["node_id"] == sampler
    # the node's text says it stopped, in place of a previous run's "done"
    texts = [m[1]["text"] for m in result["server_messages"] if m[0] == "progress_text" and m[1]["node_id"] == sampler]
    assert len(texts) == 1, texts   # and the reason, which said only "(see the error)" once the dialog was closed
    assert_error_text(texts[0], message)
    # refused before the structure was made: the Control Expert never ran, no expert was evaluated
    assert not any(n in result["executed"] for n in _node_ids(workflow, "ConFinerControlExpert"))
    assert result["progress"] == []


@pytest.mark.parametrize("te, note", [(300, "warning: T_e 300 too high for 4 control steps: use 100-200"),
                                      (999, "warning: T_e 999 keeps 7% of the structure: use 100-200")])
def test_a_te_table_3_finds_collapsing_is_warned_under_the_refine_sampler(comfy_worker, te, note):
    """The paper's Table 3: after 4 control steps T_e >= 300 collapses image quality. The library warns; the Refine
    Sampler knows the structure's control steps from the Control Expert and says so under the node for the run. A T_e
    that keeps almost none of the structure is said instead (an artist's T_e 999 ran without a word at 8 steps; the
    library's tests cover any step count, and T_e below either limit)."""
    workflow = cpu_sized(json.loads((EXAMPLES / f"{BASIC}.json").read_text()), comfy_worker)
    sampler = next(n for n in workflow["nodes"] if n["type"] == "ConFinerCoordinatedSampler")
    sampler["widgets_values"][0] = te
    result = comfy_worker.run_workflow(workflow, fresh_cache=True)
    assert result["success"]
    texts = [m[1]["text"] for m in result["server_messages"]
             if m[0] == "progress_text" and m[1]["node_id"] == str(sampler["id"]) and "\nstep " in m[1]["text"]]
    # (no "Table 3", which an artist cannot look up; one warning about T_e)
    assert len(texts) == 15 and all(note in t.split("\n") and t.count("warning: T_e") == 1 for t in texts), texts[:2]
    assert all(len(line) <= 60 for t in texts for line in t.split("\n"))


def test_half_precision_latents_are_read_as_float32(comfy_worker):
    """The core refuses half-precision latents (its arithmetic is float32); a node's LATENT input converts them first:
    a float16 latent into the Control Expert was refused with the library's "pass x.float()"."""
    r = comfy_worker.call("comfy_support.confiner_checks:half_precision_latents_are_read", comfy_worker.checkpoint_name)
    assert r == {d: ["torch.float32", "torch.float32", [1, 4, 4, 8, 8]] for d in ("torch.float16", "torch.bfloat16")}


def test_impossible_te_is_rejected_by_validation(comfy_worker):
    workflow = cpu_sized(json.loads((EXAMPLES / f"{BASIC}.json").read_text()), comfy_worker)
    sampler = next(n for n in workflow["nodes"] if n["type"] == "ConFinerCoordinatedSampler")
    sampler["widgets_values"][0] = 5000
    result = comfy_worker.run_workflow(workflow, fresh_cache=True)
    assert not result["success"] and not result["valid"]


@pytest.mark.parametrize("staged", [False, True], ids=["one call per evaluation", "stage sessions"])
def test_every_evaluation_goes_through_comfys_wrappers(comfy_worker, staged):
    """As the nodes run a stage: one sampling call per evaluation (``CONFINER_STAGE_SESSIONS=0``), or one for the
    stage (stage sessions, the default)."""
    r = comfy_worker.call("comfy_support.confiner_checks:wrappers_fire_per_evaluation", comfy_worker.checkpoint_name,
                          staged)
    assert r["finite"] and r["evaluations"] == 3
    assert r["outer_sample"] == (1 if staged else 3)  # CFGGuider.sample calls serving the three evaluations
    assert r["apply_model"] == 3   # cond and uncond batched into one apply_model call per evaluation
    assert r["forwards"] == r["apply_model"]  # network_forwards: the calls of the network, counted where they happen


@pytest.fixture(scope="module")
def sessions_against_calls(comfy_worker):
    return comfy_worker.call("comfy_support.confiner_checks:stage_sessions_against_single_calls",
                             comfy_worker.checkpoint_name)


@pytest.mark.first_version_only   # on every version Cancel with sessions is tested above, and the templates run with them
def test_stage_sessions_give_the_same_outputs_with_one_sampling_call_per_expert_and_stage(sessions_against_calls):
    """Control stage (3 evaluations) and coordinated refinement (3 steps: 6 spatial + 3 temporal evaluations), the
    temporal expert a clone of the spatial one's base model with a weight patch and a patched schedule (a LoRA'd
    AnimateDiff model): bit-identical to one sampling call per evaluation, with 3 sampling calls instead of 12."""
    r = sessions_against_calls
    assert r["structure_equal"] and r["refined_equal"] and r["finite"]
    assert r["patches_change_output"]  # the swaps between the two clones had something to get wrong
    single, staged = r["single"]["calls"], r["staged"]["calls"]
    assert single["outer_predict_noise"] == staged["outer_predict_noise"] == 12
    assert single["sample"] == single["pre_run"] == single["cleanup"] == single["cleanup_models"] == 12
    assert staged["sample"] == staged["pre_run"] == staged["cleanup"] == staged["cleanup_models"] == 3
    # loading: once per sampling call, plus whenever a session takes the base model back from the other clone (in
    # S T S S T S S T S, 5 evaluations follow one of the other expert after both sessions opened)
    assert staged["load_models_gpu"] == 3 + 5 and single["load_models_gpu"] == 12
    for state in (r["single"], r["staged"]):
        assert not state["any_current_patcher"] and state["session_threads"] == []
        assert state["sampling_function"] == "comfy.samplers.sampling_function"
    # the two experts' sessions ran on two session workers, which serve the later runs (the patches check and the
    # error below) too: torch's per-thread caches (cuDNN plans) stay warm instead of being rebuilt for every stage
    assert len(r["staged"]["idle_workers"]) == 2 and r["error"]["idle_workers"] == r["staged"]["idle_workers"]


def test_an_error_inside_a_served_evaluation_ends_every_session_cleanly(sessions_against_calls):
    r = sessions_against_calls["error"]
    assert r["raised"] == "InterruptProcessingException"  # the same exception reaches the node's thread
    assert r["temporal_calls"] == 2  # raised in the 2nd temporal evaluation, both experts' sessions open
    assert r["session_threads"] == [] and not r["any_current_patcher"]
    assert r["sampling_function"] == "comfy.samplers.sampling_function"


def test_a_session_a_wrapper_ends_early_falls_back_to_one_sampling_call_per_evaluation(comfy_worker):
    r = comfy_worker.call("comfy_support.confiner_checks:session_ended_by_a_wrapper_falls_back",
                          comfy_worker.checkpoint_name)
    assert r["refined_equal"]   # bit-identical to a run without sessions (and without the wrapper)
    assert r["temporal_sampling_calls"] == 1 + 3   # the session's call, then one per temporal evaluation
    assert len(r["warnings"]) == 1 and "temporal expert's sampling call ended before its evaluation" in r["warnings"][0]
    assert r["session_threads"] == [] and not r["any_current_patcher"]
    assert r["sampling_function"] == "comfy.samplers.sampling_function"


def test_object_patched_schedule_is_used(comfy_worker):
    r = comfy_worker.call("comfy_support.confiner_checks:patched_schedule_is_respected", comfy_worker.checkpoint_name)
    assert abs(r["plain"] - 14.6146) < 1e-3
    assert abs(r["patched"] - 25.1461) < 1e-3


@pytest.mark.first_version_only   # an APPLY_MODEL wrapper, as ADE's are on every version
def test_comfys_torch_compile_node_composes(comfy_worker):
    r = comfy_worker.call("comfy_support.confiner_checks:torch_compile_node_composes", comfy_worker.checkpoint_name)
    if not r["available"]:
        pytest.skip(r["reason"])
    assert r["finite"] and r["evaluations"] == 3 and r["graphs"] >= 1
    # one apply_model per evaluation, each running compiled graphs: the same number every time (more than one per
    # evaluation, as Dynamo splits the UNet at graph breaks in ComfyUI's own code, e.g. its wrapper executors and the
    # CPU sub-quadratic attention's free-memory query)
    per_evaluation = [a["calls"] for a in r["per_apply_model"]]
    assert len(per_evaluation) == r["evaluations"] and per_evaluation[0] >= 1
    assert per_evaluation == [per_evaluation[0]] * r["evaluations"] and r["calls"] == sum(per_evaluation)
    assert r["max_abs_diff"] == 0.0  # the backend runs the captured graphs with the eager kernels: bit-identical


@pytest.mark.first_version_only   # the sampler's inputs and model_sampling, as the other host tests use them
def test_structure_noise_control_needs_and_uses_the_control_model(comfy_worker):
    """Algorithm 1, line 4 as an option: without a control model the sampler says what to connect; with one it noises
    the structure on that model's schedule (here SD 1.5 rescaled to zero terminal SNR, so it differs from Eq. 6)."""
    workflow = cpu_sized(json.loads((EXAMPLES / f"{BASIC}.json").read_text()), comfy_worker)
    prompt = comfy_worker.convert(workflow)
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "ConFinerCoordinatedSampler")
    ckpt = next(k for k, n in prompt.items() if n["class_type"] == "CheckpointLoaderSimple")
    prompt[sampler]["inputs"]["structure_noise"] = "control"
    missing = comfy_worker.run_prompt(prompt, fresh_cache=True)
    assert not missing["success"]
    assert "structure noise schedule (structure_noise) 'control' noises the structure on the control expert's " \
           "schedule: connect the control model (control_model) on ConFiner Refine Sampler" in \
        missing["error"]["exception_message"]
    prompt["900"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": [ckpt, 0], "sampling": "eps",
                                                                       "zsnr": True}}
    prompt[sampler]["inputs"]["control_model"] = ["900", 0]
    # the later runs as from the UI: ComfyUI re-executes what changed (the sampler and what follows it) and serves the
    # loader, the prompts and the structure from its cache, so both outputs refine the same structure
    control = comfy_worker.run_prompt(prompt)
    assert control["success"], control.get("error") or control["status_messages"]
    prompt[sampler]["inputs"]["structure_noise"] = "spatial"
    spatial = comfy_worker.run_prompt(prompt)
    assert spatial["success"]
    assert all(any(e["node_id"] == sampler for e in r["progress"]) for r in (control, spatial))
    out = Path(comfy_worker.output_dir)
    a, b = (out / saved_files(r)[0] for r in (control, spatial))
    assert a.read_bytes() != b.read_bytes()


@pytest.mark.first_version_only   # the pack's widget ids, the same on every version
def test_workflow_saved_before_the_widget_relabelling_still_loads_and_runs(comfy_worker):
    """Widgets got readable labels (display names) but kept their ids, which saved workflows and API prompts use:
    the basic template as shipped before (pack 0.1.0) converts to the same inputs and runs unchanged."""
    from comfy_support.fixtures import load_workflow

    old = load_workflow("confiner_basic_v0.1")
    new = json.loads((EXAMPLES / f"{BASIC}.json").read_text())
    api_old, api_new = (comfy_worker.convert(cpu_sized(w, comfy_worker)) for w in (old, new))
    inputs = lambda api, t: next(v["inputs"] for v in api.values() if v["class_type"] == t)  # noqa: E731
    for node_type in NODE_IDS:
        if any(v["class_type"] == node_type for v in api_old.values()):
            old_inputs, new_inputs = inputs(api_old, node_type), inputs(api_new, node_type)
            # inputs added since (issue 12's options) are optional and trail the old widgets
            assert old_inputs.keys() <= new_inputs.keys(), node_type
            # matching: the template's "auto" since 2026-12-05, which is same_index for SD 1.5 + AnimateDiff
            literals = lambda d: {k: v for k, v in d.items() if not isinstance(v, list) and k != "matching"}  # noqa
            assert literals(old_inputs) == {k: v for k, v in literals(new_inputs).items() if k in old_inputs}, \
                node_type
    result = comfy_worker.run_workflow(cpu_sized(old, comfy_worker), fresh_cache=True)
    assert result["success"], result.get("error") or result["status_messages"]


@pytest.mark.parametrize("method", ["shuffle", "freenoise"])
def test_each_clip_of_a_batch_gets_the_rescheduled_noise_of_its_own_seed(comfy_worker, method):
    """As the samplers draw (a clip per seed plus batch index): the first clip of a batch has the batch-1 noise,
    and Latent From Batch's item 1 has the second clip's."""
    assert comfy_worker.call("comfy_support.confiner_checks:rescheduled_noise_items", method) == {
        "item0_is_batch1": True, "item1_is_picked": True, "items_differ": True, "shape": [2, 16, 6, 4, 4],
        "node_keeps_index": True}


def test_a_rescheduled_noise_read_for_its_size_only_is_said_on_both_nodes(comfy_worker):
    """The Noise Rescheduler's noise_latent into a Control Expert whose 'use latent as noise' is off was read for its
    size alone, silently; one segment covering the whole latent was said on the console only."""
    prompt = {**_noise_prompt(comfy_worker.checkpoint_name, "shuffle")}
    for k in ("6", "7", "8", "9", "10", "11"):
        del prompt[k]
    prompt["5"]["inputs"]["segment_length"] = 16   # the 8 frames in one segment: nothing rescheduled
    prompt["12"] = {"class_type": "ConFinerControlExpert", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["5", 1], "seed": 1, "steps": 2,
        "cfg": 1.0, "sampler": "euler", "latent_is_noise": False}}
    prompt["13"] = {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["1", 2]}}
    prompt["14"] = {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "noise_size"}}
    texts = {}
    for is_noise in (False, True):
        prompt["12"]["inputs"]["latent_is_noise"] = is_noise
        r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
        assert r["success"], r.get("error")
        texts[is_noise] = {d["node_id"]: d["text"] for e, d in r["server_messages"] if e == "progress_text"}
    assert texts[False]["5"] == "warning: nothing rescheduled: lower segment latent frames"
    assert "\nwarning: noise latent read for its size only\ndone · 2 expert" in texts[False]["12"], texts[False]
    assert "noise latent" not in texts[True]["12"], texts[True]["12"]
    # with it on, the seed draws nothing for Euler: said, and no "seed 1" under "done" (a trial changed it in vain)
    assert "\ncontrol seed unused: the noise is the latent's\ndone" in texts[True]["12"], texts[True]["12"]
    assert "seed 1" not in texts[True]["12"] and texts[False]["12"].endswith("\nseed 1"), texts


def test_noise_rescheduler_says_when_one_segment_covers_the_latent(comfy_worker):
    """Its default 16 segment latent frames on a 9-latent-frame Wan clip made one segment of base noise, silently
    (the node has no text of its own: the console says it)."""
    (warning,) = comfy_worker.call("comfy_support.confiner_checks:noise_rescheduler_warnings", 9, 16)
    assert "segment latent frames = 16 covers the latent's 9 frames" in warning and "nothing is rescheduled" in warning
    assert comfy_worker.call("comfy_support.confiner_checks:noise_rescheduler_warnings", 32, 16) == []


def test_noise_rescheduler_refuses_a_linked_stride_above_its_window_naming_its_inputs(comfy_worker):
    """Values from links reach validate_inputs as None, and the run failed with the library's "FreeNoise needs window
    >= 1 and 1 <= stride <= window", which names no input of the node (a review)."""
    assert comfy_worker.call("comfy_support.confiner_checks:noise_rescheduler_refusal", 4, 8) == (
        "FreeNoise stride (stride) = 8 must be at most the FreeNoise window, segment latent frames (segment_length) = "
        "4: use a stride of at most 4")
    assert comfy_worker.call("comfy_support.confiner_checks:noise_rescheduler_refusal", 8, 4) is None


@pytest.mark.parametrize("sampler,steps", [("dpmpp_2m", 4), ("dpmpp_2m", 7)])
def test_control_expert_equals_comfys_own_sampler_of_that_name(comfy_worker, sampler, steps):
    """The Control Expert's dpmpp_2m against ComfyUI's (k-diffusion's sample_dpmpp_2m) over the same sigmas, on an
    SD expert. Not the others: its unipc is diffusers' UniPCMultistepScheduler, order 2, where ComfyUI's uni_pc_bh2
    is of order 3 from 5 steps and ends at sigma 0.001; its euler is diffusers' EulerDiscreteScheduler, which starts
    from sigma_max times the noise where ComfyUI starts from sqrt(1 + sigma_max^2) times it (0.2 % apart on SD)."""
    r = comfy_worker.call("comfy_support.confiner_checks:control_expert_against_comfys_sampler",
                          comfy_worker.checkpoint_name, sampler, steps)
    assert r["shape"] == [4, 4, 8, 8]
    assert r["max_abs_diff"] <= 1e-4 * max(1.0, r["max_abs"]), r


def test_a_control_eta_beside_another_sampler_than_ddim_is_said_unused(comfy_worker):
    """The command line refuses --control-eta without ddim; the node ran it silently with dpmpp_2m or unipc."""
    prompt = {**_noise_prompt(comfy_worker.checkpoint_name, "shuffle")}
    for k in ("5", "6", "7", "8", "9", "10", "11"):
        del prompt[k]
    prompt["12"] = {"class_type": "ConFinerControlExpert", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["4", 0], "seed": 1, "steps": 2,
        "cfg": 1.0, "sampler": "unipc", "latent_is_noise": False, "eta": 0.5}}
    prompt["13"] = {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": "eta_unused"}}
    r = comfy_worker.call("comfy_support.confiner_checks:run_counting_evaluations", prompt, fresh_cache=True)
    assert r["success"], r.get("error")
    last = [d["text"] for e, d in r["server_messages"] if e == "progress_text" and d["node_id"] == "12"][-1]
    assert "\nwarning: control eta unused: only ddim reads it\ndone · 2 expert evaluations" in last, last
