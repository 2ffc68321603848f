"""The templates in the real ComfyUI frontend (0.8.x and the comfyui-frontend-package it pins) in headless Chromium.

Starts ComfyUI (``$COMFYUI_PATH``) with this pack, AnimateDiff-Evolved and VideoHelperSuite as custom nodes, opens the
frontend, loads every template as the template browser does and checks what an artist sees: no missing-nodes dialog,
no two nodes overlapping at the sizes the frontend draws them (title bars included), every node at least its computed
size, every template listed with its thumbnail served, every node's help page served. Saves a screenshot per
template (``$CONFINER_SCREENSHOT_DIR``, default a pytest temp folder; the path is printed).

Skips with its reason when ComfyUI, Chromium, playwright, the pinned frontend package or the two custom-node packs
are absent. Needs: tests/comfy_support/requirements-browser.txt and Debian's chromium. One test needs none of it: that
no link passes under a node it does not join, with the links where the frontend draws them (pure Python).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import textwrap
from pathlib import Path
from urllib.parse import quote

import pytest

from comfy_support.fixtures import comfy_path  # noqa: F401  (pytest fixture)
from comfy_support.templates import A14B, BASIC, LONG_SD, LONG_WAN, WAN_QWEN

pytestmark = pytest.mark.comfyui
REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "example_workflows"
TEMPLATES = sorted(p.stem for p in EXAMPLES.glob("*.json"))
PACK = "comfyui-confiner"
CACHE = Path.home() / ".cache" / "confiner"
ADE = Path(os.environ.get("CONFINER_ADE_PATH", CACHE / "ade")).expanduser()
VHS = Path(os.environ.get("CONFINER_VHS_PATH", CACHE / "vhs")).expanduser()
NODE_IDS = ["ConFinerControlExpert", "ConFinerRefineExperts", "ConFinerCoordinatedSampler", "ConFinerLongSegmenter",
            "ConFinerNoiseRescheduler"]


def template_builder():
    """tools/build_example_workflows.py as a module: the frontend's link geometry lives there, once."""
    spec = importlib.util.spec_from_file_location("build_example_workflows", REPO / "tools" / "build_example_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.first_version_only  # no ComfyUI: the same on every version
@pytest.mark.parametrize("name", TEMPLATES)
def test_no_link_passes_under_a_node_it_does_not_join(name):
    """An artist follows the links: one that runs under a node (the Wan templates' prompts once went to the
    refinement under the Control Expert; the SD 1.5 checkpoint's VAE looked plugged into the control expert's
    motion_lora) is lost there. The files are checked as saved (a hand edit included), every link, with the links
    where the frontend 1.35 draws them: sockets measured with getInputPos/getOutputPos on the templates,
    LinkConnector's spline, or straight runs through the link's reroutes."""
    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    label = lambda n: n.get("title") or n["type"]  # noqa: E731
    by_id = {n["id"]: n for n in workflow["nodes"]}
    under = [(label(by_id[link[1]]), f"{label(by_id[link[3]])}.{by_id[link[3]]['inputs'][link[4]]['name']}",
              label(node)) for link, node, _, _ in template_builder().link_crossings(workflow["nodes"], workflow["links"],
                                                                                       extra=workflow["extra"])]
    assert under == []


def installed_frontend() -> tuple:
    """The installed comfyui-frontend-package's version, (0,) where there is none (the tests skip then anyway)."""
    from importlib import metadata

    try:
        return tuple(int(part) for part in metadata.version("comfyui-frontend-package").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return (0,)


def needs_frontend_1_35(why: str):
    """A check of what the frontend 1.35 (ComfyUI 0.8) has and 1.27 (ComfyUI 0.3.64, whose pinned frontend these
    tests then run on) lacks: skipped there, saying what."""
    return pytest.mark.skipif((0,) < installed_frontend() < (1, 35), reason=f"frontend {installed_frontend()}: {why}")


NO_SHOW_ADVANCED = needs_frontend_1_35("has no Show Advanced: every input is shown (ComfyUI 0.3.x)")
SUBGRAPH_API = needs_frontend_1_35("these checks drive the frontend 1.35's subgraph API (app.rootGraph)")


@pytest.fixture(scope="module")
def frontend(comfy_path):
    from comfy_support import browser

    why = browser.missing(comfy_path)
    if why:
        pytest.skip(why)
    packs = [(REPO, PACK)]
    for path, name in ((ADE, "ComfyUI-AnimateDiff-Evolved"), (VHS, "ComfyUI-VideoHelperSuite")):
        if not (path / "__init__.py").is_file():
            pytest.skip(f"{name} not found at {path}: the templates need it (set CONFINER_ADE_PATH / CONFINER_VHS_PATH)")
        packs.append((path, name))
    with browser.ComfyServer(comfy_path, packs) as server, browser.Browser(server.url) as b:
        yield server, b


def gray_png(size: int, value: int) -> str:
    """A uniform gray PNG of ``size`` x ``size`` pixels, base64: a preview as the server sends one."""
    import base64

    import cv2
    import numpy as np

    return base64.b64encode(cv2.imencode(".png", np.full((size, size, 3), value, np.uint8))[1].tobytes()).decode()


def open_template(frontend, name: str, tab: str | None = None) -> dict:
    """Loads template ``name`` into a tab (``tab``, default its name) as the template browser does and closes the
    missing-models dialog; returns the workflow as served."""
    from comfy_support import browser

    server, b = frontend
    workflow = server.get_json(f"/api/workflow_templates/{PACK}/{quote(name)}.json")
    browser.load_template(b, workflow, tab or name)
    browser.close_dialogs(b)
    return workflow


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory):
    d = Path(os.environ.get("CONFINER_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_templates_are_listed_with_their_thumbnails(frontend):
    server, _ = frontend
    assert sorted(server.get_json("/api/workflow_templates")[PACK]) == TEMPLATES
    for name in TEMPLATES:
        status, kind, body = server.get(f"/api/workflow_templates/{PACK}/{quote(name)}.jpg")
        assert status == 200 and kind == "image/jpeg" and body[:3] == b"\xff\xd8\xff", (name, status, kind)


def test_every_node_has_a_help_page_with_a_picture(frontend):
    server, _ = frontend
    for node_id in NODE_IDS:
        # the frontend looks for a custom node's help at /extensions/<pack from python_module>/docs/<node id>.md
        assert server.get_json(f"/api/object_info/{node_id}")[node_id]["python_module"] == f"custom_nodes.{PACK}"
        status, _, body = server.get(f"/extensions/{PACK}/docs/{node_id}.md")
        assert status == 200, node_id
        text = body.decode()
        pictures = [line.split("](", 1)[1].split(")", 1)[0] for line in text.splitlines() if line.startswith("![")]
        assert pictures, f"{node_id}.md has no picture"
        for picture in pictures:
            assert server.get(f"/extensions/{PACK}/docs/{picture}")[0] == 200, (node_id, picture)


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_loads_cleanly_in_the_frontend(frontend, screenshot_dir, name):
    from comfy_support import browser

    server, b = frontend
    workflow = server.get_json(f"/api/workflow_templates/{PACK}/{quote(name)}.json")
    nodes = browser.load_template(b, workflow, name)
    b.page.screenshot(path=str(screenshot_dir / f"{name}_missing_models.png"))
    dialog = browser.missing_nodes_dialog(b)
    offered = browser.missing_models_offered(b)
    browser.close_dialogs(b)
    shot = screenshot_dir / f"{name}.png"
    b.page.screenshot(path=str(shot))  # the first view an artist gets
    print(f"screenshot: {shot}")
    assert dialog is None, dialog
    # the server has no model files: every model the template uses is offered for download, folder and file named
    used = {(m["directory"], m["name"]) for n in workflow["nodes"] for m in n.get("properties", {}).get("models", [])}
    assert used and all(f"{folder} / {file}" in offered for folder, file in used), offered
    assert offered.count("Download") == len(used), offered
    assert len(nodes) == len(workflow["nodes"]) and all(n["registered"] for n in nodes), \
        [n["type"] for n in nodes if not n["registered"]]
    assert browser.overlaps(nodes) == []
    assert browser.notes_cut(b) == []   # the read-me's last lines were cut on two templates
    # every socket of this pack's nodes reads as on a node the artist adds fresh (not by its id)
    assert browser.socket_labels_unlike_new_nodes(b, "ConFiner") == []
    too_small = [(n["title"], n["size"], n["min"]) for n in nodes
                 if n["size"][0] + 0.5 < n["min"][0] or n["size"][1] + 0.5 < n["min"][1]]
    assert too_small == []


@pytest.mark.parametrize("name", [BASIC, LONG_SD])
def test_a_file_saved_before_sockets_were_labelled_reads_as_fresh_nodes(frontend, name):
    """Files of the first release carry no socket labels: their nodes showed raw ids (control_model) beside the
    worded labels of sockets added since (control VAE)."""
    import copy

    from comfy_support import browser

    server, b = frontend
    old = copy.deepcopy(server.get_json(f"/api/workflow_templates/{PACK}/{quote(name)}.json"))
    for node in old["nodes"]:
        for slot in node.get("inputs", []):
            slot.pop("label", None)
    browser.load_template(b, old, f"{name}_old")
    browser.close_dialogs(b)
    assert browser.socket_labels_unlike_new_nodes(b, "ConFiner") == []


def test_a_long_video_of_the_first_release_keeps_its_coherence_memory(frontend):
    """A first-release file's Long Video has no coherence memory value: it pulled towards the guided prediction and
    took today's default "unguided", so a shared file made another video without a word (a trial). It loads as
    "guided"; a file that holds the value keeps it."""
    import copy

    from comfy_support import browser

    server, b = frontend
    template = server.get_json(f"/api/workflow_templates/{PACK}/{quote(LONG_SD)}.json")
    old = copy.deepcopy(template)
    (node,) = [n for n in old["nodes"] if n["type"] == "ConFinerLongSegmenter"]
    del node["widgets_values"][16:]   # the first release's 16 values (the inputs added since come after them)
    values = {}
    for name, workflow in (("first_release", old), ("today", template)):
        browser.load_template(b, workflow, name)
        browser.close_dialogs(b)
        values[name] = b.page.evaluate("""() => app.graph._nodes.find((n) => n.type === "ConFinerLongSegmenter")
          .widgets.find((w) => w.name === "coherence_memory").value""")
    assert values == {"first_release": "guided", "today": "unguided"}, values


def test_the_long_videos_schedule_box_keeps_its_height_when_progress_and_preview_arrive(frontend, screenshot_dir):
    """The frontend shares a node's free height among its growable widgets: the Long Video's segment-prompts box took
    all of it before a run (442 px on the template), then shrank to 207 px when the progress text arrived and to
    75 px with the first preview, and every widget below it jumped up. web/confiner.js holds it at one height, and
    keeps the progress text out of the saved workflow."""
    from comfy_support import browser

    server, b = frontend
    open_template(frontend, LONG_SD, "long")
    png = gray_png(64, 128)
    text = "structure 1/3 · control stage · control expert\nstep 1/4 · evaluation 1/42\nprompt: a corgi"
    h = browser.progress_arrives(b, "ConFinerLongSegmenter", text, png)
    b.page.screenshot(path=str(screenshot_dir / "long_progress_arrived.png"))
    box = [h[when]["segment_prompts"] for when in ("before", "text", "preview")]
    assert box[0] >= 150 and box == [box[0]] * 3, box   # about ten lines, before and during the run
    assert h["text"]["$$node-text-preview"] > 0 and h["preview"]["$$canvas-image-preview"] > 0, h["preview"]
    assert h["size_after"] == h["size"]   # the text and the preview fit the room the template leaves them
    # and the progress text is not saved with the workflow (a file kept the run before's "cancelled ..." text)
    assert h["saved_after"] == h["saved_before"], (h["saved_before"], h["saved_after"])


def test_a_run_start_clears_the_last_runs_error_text_and_its_end_a_wait_that_never_ended(frontend):
    """A Refine Sampler refused in one run kept "stopped by an error (see the error)" through the next run, in which
    an upstream node failed and it never ran. web/confiner.js clears such an ending when a run starts; a node that
    runs says how it goes at once, and a "done" stays (a node served from the cache did finish)."""
    from comfy_support import browser

    server, b = frontend
    open_template(frontend, BASIC, "basic")
    done = "done · 4 expert evaluations in 1.2 s"
    after = browser.run_starts(b, {"ConFinerControlExpert": done,
                                   "ConFinerCoordinatedSampler": "warning: the temporal expert is an image model: no "
                                                                 "coherence\nstopped by an error (see the error)"})
    assert after == {"ConFinerControlExpert": done, "ConFinerCoordinatedSampler": ""}, after
    after = browser.run_starts(b, {"ConFinerCoordinatedSampler": "cancelled after evaluation 3/15"})
    assert after == {"ConFinerCoordinatedSampler": ""}, after
    # a sampler whose turn never came (Cancel during another node, an upstream error): its lazy check's "waiting"
    # goes when the run ends, whichever way; a cancelled run says so (the waiting sampler went blank)
    waiting = "waiting for its turn\n(after the structure and the nodes queued before it)"
    cancelled = "not run: the run was cancelled before its turn"
    for end, said in (("execution_interrupted", cancelled), ("execution_error", ""), ("execution_success", "")):
        browser.run_starts(b, {}, "execution_start")
        after = browser.run_starts(b, {"ConFinerControlExpert": done, "ConFinerCoordinatedSampler": waiting}, end,
                                   ran=("ConFinerControlExpert",))
        assert after == {"ConFinerControlExpert": done, "ConFinerCoordinatedSampler": said}, (end, after)
    # a run that failed or was cancelled before a node ran: that node's text was of another run (the warnings of
    # another model, after the artist switched back), so it goes; a finished run leaves a node it did not need
    warned = "warning: spatial cfg 2.5 on a distilled model: use 1\ndone · 6 expert evaluations in 0.5 s"
    for end, kept in (("execution_error", ""), ("execution_interrupted", cancelled), ("execution_success", warned)):
        browser.run_starts(b, {}, "execution_start")
        after = browser.run_starts(b, {"ConFinerControlExpert": done, "ConFinerCoordinatedSampler": warned}, end,
                                   ran=("ConFinerControlExpert",))
        assert after == {"ConFinerControlExpert": done, "ConFinerCoordinatedSampler": kept}, (end, after)
    # ... and where the error's node is known (the server names it), each node the run never reached says who
    # stopped it: the bundle has no text of its own, and once the dialog closed the canvas told nothing of it
    browser.run_starts(b, {}, "execution_start")
    after = browser.run_starts(b, {"ConFinerControlExpert": done, "ConFinerCoordinatedSampler": warned},
                               "execution_error", ran=("ConFinerControlExpert",), failed="ConFinerRefineExperts")
    assert after == {"ConFinerControlExpert": done, "ConFinerCoordinatedSampler": "not run: ConFiner Refine Experts "
                     "(bundle) stopped the run (see the error)"}, after
    # ... with the start of the reason the server gave, which the bundle cannot show (a trial closed the dialog and
    # found nothing on the canvas saying what was wrong)
    browser.run_starts(b, {}, "execution_start")
    reason = ("the temporal expert's positive conditioning (temporal positive, temporal_positive) is 64 wide, but its "
              "model, Wan 2.1 / 2.2 (WAN21_T2V), reads text 4096 wide: encode that prompt with this model's own text "
              "encoder (Load CLIP with type wan)")
    after = browser.run_starts(b, {"ConFinerCoordinatedSampler": warned}, "execution_error",
                               failed="ConFinerRefineExperts", message=reason)
    shown = after["ConFinerCoordinatedSampler"].split("\n")
    assert shown[0] == "not run: ConFiner Refine Experts (bundle) stopped the run:", after
    # its start, then its fix, the clause after its last ": " (as the server's "stopped by an error:" lines)
    assert shown[1:] == ["the temporal expert's positive conditioning (temporal …",
                         "encode that prompt with this model's own text encoder (Load",
                         "CLIP with type wan) (see the error)"], after
    # ... also a Refine Sampler whose lazy check ran ("waiting for its turn") when the Control Expert failed: its
    # sampling never ran, and its text was left blank
    browser.run_starts(b, {}, "execution_start")
    after = browser.run_starts(b, {"ConFinerCoordinatedSampler": waiting}, "execution_error",
                               ran=("ConFinerCoordinatedSampler",), failed="ConFinerControlExpert")
    assert after == {"ConFinerCoordinatedSampler": "not run: ConFiner Control Expert stopped the run (see the "
                     "error)"}, after
    # the next run's start clears it, as an error's own line
    assert browser.run_starts(b, {"ConFinerCoordinatedSampler": "not run: X stopped the run (see the error)"}) == \
        {"ConFinerCoordinatedSampler": ""}
    assert browser.run_starts(b, {"ConFinerCoordinatedSampler": waiting}) == {"ConFinerCoordinatedSampler": waiting}
    # a node muted or bypassed is left out of the run: its last "done" read as if it had run
    for mode in (2, 4):
        after = browser.run_starts(b, {"ConFinerControlExpert": done, "ConFinerCoordinatedSampler": done},
                                   modes={"ConFinerCoordinatedSampler": mode})
        assert after == {"ConFinerControlExpert": done, "ConFinerCoordinatedSampler": ""}, (mode, after)


def test_a_sampler_waiting_for_its_turn_or_not_run_shows_no_preview_of_the_run_before(frontend, screenshot_dir):
    """The frontend keeps a node's last preview until a new one comes: through the whole control stage the Refine
    Sampler, "waiting for its turn", showed the run before's video as this run's, and beside "not run: ..." too. A
    preview of its own shows again."""
    from comfy_support import browser

    server, b = frontend
    open_template(frontend, BASIC, "basic")
    png = gray_png(64, 200)
    waiting = "waiting for its turn\n(after the structure and the nodes queued before it)"
    seen = browser.preview_then_text(b, "ConFinerCoordinatedSampler", waiting, png)
    assert seen["first"] == {"images": 1, "widget": True}, seen   # the preview as the server sends it
    assert seen["text"] == {"images": 0, "widget": False}, seen
    assert seen["next"] == {"images": 1, "widget": True}, seen
    # nor beside a text saying this Run did not run it: the preview was a run before's (a trial on 0.3.64)
    for not_run in ("not run: the run was cancelled before its turn", "not run: refine steps (refine_steps) = 5 do not "
                    "fit between T_e = 3 and 0"):
        assert browser.preview_then_text(b, "ConFinerCoordinatedSampler", not_run, png)["text"] == \
            {"images": 0, "widget": False}
    # any other text leaves the preview where it is
    assert browser.preview_then_text(b, "ConFinerCoordinatedSampler", "step 2/5 · evaluation 3/15", png)["text"] == \
        {"images": 1, "widget": True}
    browser.node_texts(b, {"ConFinerCoordinatedSampler": waiting})
    b.page.screenshot(path=str(screenshot_dir / "waiting_without_preview.png"))


def test_a_nodes_text_in_its_ui_output_leaves_its_preview_and_text_as_they_were(frontend):
    """The sampling nodes return the text they ended on as their UI output (``confiner_text``, kept in the prompt's
    history for API clients): the frontend stores a node's UI output as its outputs when the node finishes; the
    Refine Sampler's preview and text must stay as the run left them."""
    from comfy_support import browser

    server, b = frontend
    open_template(frontend, BASIC, "basic")
    png = gray_png(64, 200)
    done = "done · 15 expert evaluations in 1.0 s\nseed 3"
    assert browser.preview_then_text(b, "ConFinerCoordinatedSampler", done, png)["text"] == {"images": 1,
                                                                                             "widget": True}
    after = b.page.evaluate("""async (done) => {
      const api = window.comfyAPI.api.api;
      const node = app.graph._nodes.find((n) => n.type === "ConFinerCoordinatedSampler");
      api.dispatchCustomEvent("executed", {node: String(node.id), display_node: String(node.id),
                                           output: {confiner_text: [done]}, prompt_id: "confiner-test"});
      for (let i = 0; i < 2; i++) { app.canvas.draw(true, true); await new Promise((r) => setTimeout(r, 300)); }
      return {images: node.imgs?.length ?? 0, text: node.widgets.find((w) => w.name === "$$node-text-preview")?.value,
              widgets: node.widgets.map((w) => w.name).filter((n) => !n.startsWith("$$") && !/^[a-z_]+$/.test(n))};
    }""", done)
    assert after == {"images": 1, "text": done, "widgets": []}, after


@SUBGRAPH_API
def test_the_texts_of_nodes_in_a_subgraph_show_when_it_is_opened(frontend, screenshot_dir):
    """ComfyUI runs a subgraph's nodes under ids "<subgraph node>:<node>": no text of the pack's nodes in a subgraph
    ever showed (the frontend's lookup of such an id throws), and after a failure the sampler named the class id
    ("ConFinerControlExpert"), not the node nor the subgraph, the one node an artist sees."""
    from comfy_support import browser

    server, b = frontend
    open_template(frontend, BASIC, "subgraph")
    seen = browser.subgraph_texts(b)
    b.page.evaluate("() => { app.canvas.ds.scale = 0.6; app.canvas.ds.offset = [0, 0]; app.canvas.fitViewToSelectionAnimated?.(); app.canvas.setDirty(true, true); }")
    b.page.wait_for_timeout(600)
    b.page.screenshot(path=str(screenshot_dir / "subgraph_texts.png"))
    browser.leave_subgraph(b)
    assert seen["opened"] == "done · 15 expert evaluations in 1.0 s", seen   # came at the top, shown once opened
    assert seen["live"] == "step 2/4 · evaluation 2/4", seen
    assert seen["not_run"] == f"not run: ConFiner Control Expert (in {seen['holder']}) stopped the run (see the " \
        "error)", seen


@SUBGRAPH_API
def test_the_packs_texts_stay_on_screen_after_a_subgraph_was_opened(frontend, screenshot_dir):
    """On a switch of graph the frontend 1.35 keeps only its HTML-element widgets active: once a subgraph had been
    opened, every text of the pack's nodes stayed hidden, on the top graph and in the subgraph opened again, until a
    switch of workflow tabs (a trial)."""
    from comfy_support import browser

    server, b = frontend
    open_template(frontend, BASIC, "round trip")
    seen = browser.subgraph_round_trip(b)
    b.page.screenshot(path=str(screenshot_dir / "subgraph_round_trip.png"))
    assert seen == {"top": True, "inside": True, "top_again": True, "inside_again": True}, seen


def test_a_runs_text_survives_a_switch_of_workflow_tabs_and_stays_out_of_files(frontend, screenshot_dir):
    """A tab switch reloads the graph from its saved state, which holds no progress text: every warning and "done"
    line of the tab's last run was gone. web/confiner.js keeps each node's text in the page by graph and node id; and
    its last preview, which went with the switch while the texts came back (a trial)."""
    from comfy_support import browser

    server, b = frontend
    texts = {"ConFinerControlExpert": "done · 2 expert evaluations in 0.2 s · 5 frames",
             "ConFinerCoordinatedSampler": "warning: spatial cfg 2.5 on a distilled model: use 1\ndone · 6 expert "
                                           "evaluations in 0.5 s",
             # (what the bundle holds went too, and a bundle served from the cache does not say it again)
             "ConFinerRefineExperts": "spatial: SD 1.5 (SD15) · cfg 7.5\ntemporal: SD 1.5 (SD15) · cfg 7.5"}
    queue_empty(b)
    for tab in ("switch_a", "switch_b"):   # the same template twice: the same node ids in two graphs
        open_template(frontend, BASIC, tab)
    shown_b = browser.node_texts(b)
    browser.switch_tab(b, "switch_a")
    shown_a = browser.node_texts(b, texts)
    assert sorted(t for t in shown_a.values() if t) == sorted(texts.values()), shown_a
    assert browser.node_previews(b, gray_png(64, 128), ("ConFinerCoordinatedSampler",)) == ["ConFinerCoordinatedSampler"]
    browser.switch_tab(b, "switch_b")
    assert browser.node_texts(b) == shown_b, "a text of another tab's node of the same id"
    assert browser.node_previews(b, gray_png(64, 128)) == [], "a preview of another tab's node of the same id"
    browser.switch_tab(b, "switch_a")
    back = browser.node_texts(b)
    b.page.screenshot(path=str(screenshot_dir / "tab_switched_back.png"))
    assert back == shown_a, (back, shown_a)
    assert browser.node_previews(b, gray_png(64, 128)) == ["ConFinerCoordinatedSampler"], "the sampler's preview went with the switch"
    assert loading_bars(b) == 0, "loading bars beside the texts shown again"
    saved = b.page.evaluate("() => JSON.stringify(app.graph.serialize())")
    assert not any(line in saved for text in texts.values() for line in text.split("\n")), "text saved"


def test_a_shared_copy_of_a_workflow_opens_without_the_originals_texts(frontend, screenshot_dir):
    """An exported workflow keeps its graph id: opened in a new tab, its Long Video node read the other tab's "done ·
    77 expert evaluations" before it had run there (a trial). The texts are kept by workflow tab, not graph id."""
    from comfy_support import browser

    server, b = frontend
    queue_empty(b)
    open_template(frontend, BASIC, "share_original")
    shown = browser.node_texts(b, {"ConFinerControlExpert": "done · 2 expert evaluations in 0.2 s · 5 frames"})
    assert "done · 2 expert evaluations in 0.2 s · 5 frames" in shown.values(), shown
    exported = json.loads(b.page.evaluate("() => JSON.stringify(app.graph.serialize())"))   # as Export writes it
    assert exported.get("id"), "the export carries the graph id (what made the two tabs share texts)"
    browser.load_template(b, exported, "share_copy.json")
    browser.close_dialogs(b)
    copy = browser.node_texts(b)
    b.page.screenshot(path=str(screenshot_dir / "shared_copy.png"))
    assert b.page.evaluate("() => app.graph.id") == exported["id"]
    assert not any(copy.values()), copy
    browser.switch_tab(b, "share_original")
    assert browser.node_texts(b) == shown   # the original tab keeps its own


def test_template_browser_shows_the_pack_with_thumbnails(frontend, screenshot_dir):
    from comfy_support import browser

    server, b = frontend
    b.responses.clear()
    b.page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    b.page.get_by_text(PACK, exact=False).first.click(timeout=30000)
    b.page.wait_for_timeout(4000)
    b.page.screenshot(path=str(screenshot_dir / "template_browser.png"))
    print(f"screenshot: {screenshot_dir / 'template_browser.png'}")
    # closed, as an artist closes it (left open, it covered the later tests' screenshots): its close button (1.35's,
    # 1.27's), else Escape
    close = b.page.locator("[role=dialog] button:has(i.pi-times), [role=dialog] button.p-dialog-close-button")
    if close.count():
        close.first.click(timeout=10000)
    else:
        browser.close_dialogs(b)
    b.page.locator("[role=dialog]").first.wait_for(state="hidden", timeout=10000)
    ours = [(status, url) for status, url in b.responses if f"/{PACK}/" in url]
    assert [r for r in ours if r[0] >= 400] == []
    for name in TEMPLATES:
        assert any(status == 200 and url.endswith(f"/{PACK}/{quote(name)}.jpg") for status, url in ours), name



def test_a_fresh_nodes_progress_text_shows_every_line_under_a_preview(frontend, screenshot_dir):
    """The frontend gives a node's progress text two lines' room whatever it holds: under a preview, on a node added
    by hand, the Long Video's applied prompts and a Refine Sampler's third line were cut. web/confiner.js asks room
    for every line (up to ten), and the node grows to hold them."""
    from comfy_support import browser

    server, b = frontend
    png = gray_png(512, 128)
    text = ("warning: prompt not used: a blue ball\ndone · 61 expert evaluations in 12.8 s\nprompts as applied (each from "
            "a window junction):\n0-8: a red fox runs\n9-16: a grey fox runs")
    boxes = browser.fresh_nodes_show_text(b, ["ConFinerLongSegmenter", "ConFinerCoordinatedSampler",
                                              "ConFinerControlExpert"], text, png)
    b.page.screenshot(path=str(screenshot_dir / "fresh_nodes_text.png"))
    assert all(box["preview"] for box in boxes.values()), boxes   # under a preview
    assert {t: box["needed"] <= box["shown"] for t, box in boxes.items()} == dict.fromkeys(boxes, True), boxes
    assert not any(box["saved"] for box in boxes.values()), boxes


def test_a_sampling_node_added_by_hand_has_room_for_its_first_runs_text_and_preview(frontend):
    """A Refine Sampler added from the Node Library grew from 214 to 494 px at its first run, when its text and
    preview came, over the VAE Decode an artist had placed under it. A fresh sampling node leaves the room the
    templates leave (tools/build_example_workflows.py PREVIEW_ROOM) under its widgets, and a run's usual text and a
    512x512 preview fit it."""
    from comfy_support import browser

    spec = importlib.util.spec_from_file_location("build_example_workflows",
                                                  REPO / "tools" / "build_example_workflows.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    server, b = frontend
    png = gray_png(512, 128)
    boxes = browser.fresh_nodes_show_text(b, list(tool.PREVIEW_ROOM), "refinement · spatial expert\nstep 2/5 · "
                                          "evaluation 4/15 · 1.2 s", png)
    bare = b.page.evaluate("""(types) => Object.fromEntries(types.map((t) => {
      const node = LiteGraph.createNode(t);
      return [t, node.computeSize()[1]];
    }))""", list(tool.PREVIEW_ROOM))
    for type_, box in boxes.items():
        assert box["created"][1] >= bare[type_] + tool.PREVIEW_ROOM[type_], (type_, box, bare)
        assert box["size"][1] == box["created"][1], (type_, box)   # the run's text and preview did not grow it
        assert box["needed"] <= box["shown"], (type_, box)


def test_the_noise_reschedulers_warning_is_shown_whole_and_never_saved(frontend):
    """The Noise Rescheduler's warning was written into exported workflows and the next output's embedded one (the
    pack kept only the sampling nodes' text out of files), and its second line was cut at the node's size."""
    from comfy_support import browser

    server, b = frontend
    text = "warning: nothing rescheduled (console)\nsecond line"
    (box,) = browser.fresh_nodes_show_text(b, ["ConFinerNoiseRescheduler"], text, None).values()
    assert box["needed"] is not None and box["needed"] <= box["shown"], box
    assert not box["saved"], box
    # its next run, whose segments fit, sends an empty text: the frontend ignored it and the warning stayed
    assert list(browser.node_texts(b, {"ConFinerNoiseRescheduler": ""}).values()) == [""]

def test_the_bundles_text_is_shown_whole_and_never_saved(frontend, screenshot_dir):
    """The Refine Experts bundle says what it holds (it showed nothing); the frontend saves a text widget's value
    with the node's widgets, where the bundle's own values would then be read shifted."""
    from comfy_support import browser

    server, b = frontend
    text = "spatial: SD 1.5 (SD15) · cfg 7.5\ntemporal: SD 1.5 (SD15) + mm_sd15_v3.safetensors · cfg 7.5"
    (box,) = browser.fresh_nodes_show_text(b, ["ConFinerRefineExperts"], text, None).values()
    b.page.screenshot(path=str(screenshot_dir / "bundle_text.png"))
    assert box["needed"] is not None and box["needed"] <= box["shown"], box
    assert not box["saved"], box


@needs_frontend_1_35("keeps a row for each hidden widget (README): the templates' room is sized for the 1.35's rows")
def test_the_bundles_refusal_fits_the_node_in_a_template(frontend, screenshot_dir):
    """A refused bundle's text ("stopped by an error:" and three lines of the message) ran past the bottom of its
    node in a template, over the group's border (a trial): the templates leave it room (TEXT_ROOM)."""
    from comfy_support import browser

    _, b = frontend
    open_template(frontend, WAN_QWEN, "bundle_refused")
    text = ("stopped by an error:\nthe temporal expert (temporal model on ConFiner Refine\nExperts) is FLUX.1 (Flux), "
            "file 'flux1-dev.safetensors', an\nimage model: it makes every frame on its ... (see the error)")
    browser.node_texts(b, {"ConFinerRefineExperts": text})
    fit = b.page.evaluate("""() => {
      const node = app.graph._nodes.find((n) => n.type === "ConFinerRefineExperts");
      app.canvas.centerOnNode?.(node);   // (the screenshot shows it whole)
      app.canvas.draw(true, true);
      const box = Array.from(document.querySelectorAll(".dom-widget .overflow-y-auto"))
        .find((e) => (e.innerText || "").includes("(see the error)"));
      return {size: node.size[1], needed: node.computeSize()[1], box: [box?.scrollHeight, box?.clientHeight]};
    }""")
    b.page.screenshot(path=str(screenshot_dir / "bundle_refused.png"))
    assert fit["size"] >= fit["needed"] and fit["box"][0] <= fit["box"][1], fit


def test_the_nodes_whose_seed_lays_out_the_structure_keep_it_when_added_fresh(frontend):
    """A Control Expert added by hand redrew its seed at every Run (the frontend's "randomize"): the structure changed
    each time, where the templates teach "control seed fixed, refine seed randomize". So do the Long Video and the
    Noise Rescheduler, whose noise is the control stage's; the Refine Sampler keeps "randomize". A saved workflow's
    value stays."""
    _, b = frontend
    after = b.page.evaluate("""async (types) => {
      const value = (n) => n.widgets.find((w) => w.name === "control_after_generate").value;
      const out = {};
      for (const type of types) {
        const fresh = LiteGraph.createNode(type);
        app.graph.add(fresh);
        const saved = fresh.serialize();
        saved.widgets_values = saved.widgets_values.map((v) => (v === "fixed" ? "increment" : v));
        const loaded = LiteGraph.createNode(type);
        loaded.configure(saved);
        out[type] = [value(fresh), value(loaded)];
        app.graph.remove(fresh);
      }
      return out;
    }""", ["ConFinerControlExpert", "ConFinerLongSegmenter", "ConFinerNoiseRescheduler", "ConFinerCoordinatedSampler"])
    assert after == {"ConFinerControlExpert": ["fixed", "increment"], "ConFinerLongSegmenter": ["fixed", "increment"],
                     "ConFinerNoiseRescheduler": ["fixed", "increment"],
                     "ConFinerCoordinatedSampler": ["randomize", "randomize"]}, after



def test_a_fresh_node_holds_all_its_widgets(frontend):
    """A Long Video added fresh was sized before web/confiner.js fixed its schedule box's height, and ended above its
    last widgets (fps and the low-noise inputs drawn below the node, 12 px short)."""
    server, b = frontend
    sizes = b.page.evaluate("""(types) => { app.graph.clear(); return Object.fromEntries(types.map((t) => {
        const n = LiteGraph.createNode(t); app.graph.add(n); app.canvas.draw(true, true);
        return [t, [n.size[1], n.computeSize()[1]]]; })); }""", NODE_IDS)
    assert {t: size >= needed for t, (size, needed) in sizes.items()} == dict.fromkeys(NODE_IDS, True), sizes
    # and wide enough for its labels (at the frontend's 210 px: "control after genera…"), where a loaded node keeps
    # the width its file gives it
    widths = b.page.evaluate("""(types) => { app.graph.clear(); return Object.fromEntries(types.map((t) => {
        const fresh = LiteGraph.createNode(t); app.graph.add(fresh);
        const saved = fresh.serialize(); saved.size = [250, saved.size[1]];
        const loaded = LiteGraph.createNode(t); loaded.configure(saved);
        return [t, [fresh.size[0], loaded.size[0]]]; })); }""", NODE_IDS)
    assert {t: fresh >= 430 and loaded == 250 for t, (fresh, loaded) in widths.items()} == \
        dict.fromkeys(NODE_IDS, True), widths


def test_the_packs_inputs_read_in_words_on_fresh_and_loaded_nodes(frontend):
    """The frontend 1.27 (ComfyUI 0.3.64) labelled inputs by their ids: a trial's Refine Sampler read "seed" and "te"
    where the template's note spoke of the *refine seed* and the *structure timestep*, and a fresh node's sockets read
    "low_noise_model". web/confiner.js labels them from the definitions where the frontend did not (1.35 does it
    itself): every input whose definition has a display name reads it, on a node added fresh and after a load."""
    server, b = frontend
    info = server.get_json("/object_info")
    worded = {t: {name: spec[1]["display_name"] for part in ("required", "optional")
                  for name, spec in info[t]["input"].get(part, {}).items()
                  if isinstance(spec, list) and len(spec) > 1 and spec[1].get("display_name", name) != name}
              for t in NODE_IDS}
    assert all(worded.values()), worded
    drawn = b.page.evaluate("""async (types) => {
        const read = (n) => Object.fromEntries([
            ...n.inputs.filter((s) => !s.widget).map((s) => [s.name, s.label || s.localized_name || s.name]),
            ...(n.widgets ?? []).map((w) => [w.name, w.label || w.name])]);
        app.graph.clear();
        const fresh = Object.fromEntries(types.map((t) => { const n = LiteGraph.createNode(t); app.graph.add(n);
                                                           return [t, read(n)]; }));
        await app.loadGraphData(app.graph.serialize());
        const loaded = Object.fromEntries(app.graph._nodes.map((n) => [n.type, read(n)]));
        return [fresh, loaded]; }""", NODE_IDS)
    for nodes in drawn:
        assert {t: {name: nodes[t][name] for name in worded[t]} for t in NODE_IDS} == worded


@NO_SHOW_ADVANCED
def test_advanced_widgets_are_hidden_until_asked_for_unless_a_file_sets_one(frontend):
    """The frontend 1.35 read the pack's "advanced" flag into widget.options but hides by widget.advanced: every
    node showed every advanced widget (low-noise cfg, boundary, matching, eta, ...). A fresh node now hides them until
    its menu's "Show Advanced"; a loaded node shows them where its file does not say and one differs from its default
    (a value someone set), and keeps what its file says."""
    server, b = frontend
    info = server.get_json("/object_info")
    declared = {t: sorted(name for part in ("required", "optional")
                          for name, spec in info[t]["input"].get(part, {}).items()
                          if isinstance(spec, list) and len(spec) > 1 and spec[1].get("advanced"))
                for t in NODE_IDS}
    assert all(declared.values()), declared
    fresh = b.page.evaluate("""(types) => { app.graph.clear(); return Object.fromEntries(types.map((t) => {
        const n = LiteGraph.createNode(t); app.graph.add(n);
        const hidden = n.widgets.filter((w) => !n.isWidgetVisible(w)).map((w) => w.name).sort();
        const height = n.size[1]; n.toggleAdvanced();
        return [t, [hidden, n.widgets.every((w) => n.isWidgetVisible(w)), height < n.size[1]]]; })); }""", NODE_IDS)
    assert fresh == {t: [declared[t], True, True] for t in NODE_IDS}, fresh
    # "Hide Advanced" gives the room back: the node kept its grown height, empty under the widgets
    heights = b.page.evaluate("""(types) => { app.graph.clear(); return Object.fromEntries(types.map((t) => {
        const n = LiteGraph.createNode(t); app.graph.add(n); const h = n.size[1];
        n.toggleAdvanced(); const shown = n.size[1]; n.toggleAdvanced();
        return [t, [shown > h, n.size[1] === h && n.size[1] >= n.computeSize()[1]]]; })); }""", NODE_IDS)
    assert heights == {t: [True, True] for t in NODE_IDS}, heights
    # from a file: boundary set (shown), boundary set but the file says hidden, defaults only (hidden)
    shown = b.page.evaluate("""async () => {
        app.graph.clear();
        const nodes = [0, 1, 2].map(() => { const n = LiteGraph.createNode("ConFinerControlExpert"); app.graph.add(n); return n; });
        nodes[0].widgets.find((w) => w.name === "boundary").value = 0.9;
        nodes[1].widgets.find((w) => w.name === "boundary").value = 0.9;
        const saved = app.graph.serialize();
        for (const n of saved.nodes) delete n.showAdvanced;
        saved.nodes[1].showAdvanced = false;
        await app.loadGraphData(saved);
        return app.graph._nodes.map((n) => [n.id, !!n.showAdvanced, n.isWidgetVisible(n.widgets.find((w) => w.name === "boundary"))]);
      }""")
    assert [s[1:] for s in sorted(shown)] == [[True, True], [False, False], [False, False]], shown
    # the A14B template's Control Expert, whose note names its low-noise cfg, shows it; its other nodes do not
    open_template(frontend, A14B)
    a14b = b.page.evaluate("""() => Object.fromEntries(app.graph._nodes.filter((n) => n.comfyClass?.startsWith("ConFiner"))
        .map((n) => [n.comfyClass, n.widgets.filter((w) => w.advanced && n.isWidgetVisible(w)).map((w) => w.name)]))""")
    assert a14b == {"ConFinerControlExpert": ["spacing", "eta", "low_noise_cfg", "boundary"],
                    "ConFinerRefineExperts": [], "ConFinerCoordinatedSampler": []}, a14b


@NO_SHOW_ADVANCED
def test_a_refusal_naming_an_advanced_widget_shows_it(frontend, screenshot_dir):
    """The Noise Rescheduler's "FreeNoise stride (stride) = 8 must not exceed segment latent frames" named a widget the
    node did not show (advanced): a trial looked for it. The node now shows its advanced widgets; a refusal naming
    none leaves them hidden. Queued through the frontend for real."""
    from comfy_support import browser

    server, b = frontend
    shown = {}
    for stride in (8, 4):   # refused naming the stride; refused naming the segment latent frames alone
        shown[stride] = b.page.evaluate("""async (stride) => {
          app.graph.clear();
          const latent = LiteGraph.createNode("EmptyLatentImage"); app.graph.add(latent);
          const node = LiteGraph.createNode("ConFinerNoiseRescheduler"); app.graph.add(node);
          const save = LiteGraph.createNode("SaveLatent"); app.graph.add(save);
          latent.connect(0, node, 0); node.connect(1, save, 0);
          const set = (name, value) => { node.widgets.find((w) => w.name === name).value = value; };
          set("method", "freenoise"); set("segment_length", stride === 8 ? 4 : 1); set("stride", stride);
          const widget = node.widgets.find((w) => w.name === "stride");
          const before = node.isWidgetVisible(widget);
          try { await app.queuePrompt(0); } catch (e) {}
          await new Promise((r) => setTimeout(r, 500));
          const text = node.widgets.find((w) => w.name === "$$node-text-preview")?.value;
          return [before, node.isWidgetVisible(widget), !!node.showAdvanced, text];
        }""", stride)
        if stride == 8:
            b.page.screenshot(path=str(screenshot_dir / "refusal_shows_advanced.png"))
        browser.close_dialogs(b)
    # ... and the node says why where it stands (it said "see the error": the reason left with the dialog)
    said = {stride: shown[stride].pop() for stride in shown}
    assert shown == {8: [False, True, True], 4: [False, False, False]}, shown
    assert " ".join(said[8].split()) == ("not run: FreeNoise stride (stride) = 8 must be at most the FreeNoise window, "
                                         "segment latent frames (segment_length) = 4: use a stride of at most 4"), \
        said[8]
    assert max(len(line) for line in said[8].split("\n")) <= 60, said[8]
    assert said[4].startswith("not run: ") and "segment_length" in said[4], said[4]


def test_an_input_from_a_bypassed_or_muted_node_says_which_node_to_switch_on(frontend):
    """A bypassed Refine Experts passes nothing on (it has no input of its output's type): ComfyUI refuses the Run with
    "Required input is missing: experts" while the link is there on the canvas (a trial). The Refine Sampler names
    the node to switch back on, and how. Queued through the frontend for real."""
    from comfy_support import browser

    server, b = frontend
    said = {}
    for mode in (4, 2):   # LiteGraph's bypass, "never" (muted)
        open_template(frontend, BASIC, f"bundle mode {mode}")
        said[mode] = b.page.evaluate("""async (mode) => {
            const bundle = app.graph._nodes.find((n) => n.type === "ConFinerRefineExperts");
            bundle.mode = mode;
            try { await app.queuePrompt(0); } catch (e) {}
            await new Promise((r) => setTimeout(r, 500));
            const sampler = app.graph._nodes.find((n) => n.type === "ConFinerCoordinatedSampler");
            return [bundle.title, sampler.widgets.find((w) => w.name === "$$node-text-preview")?.value]; }""", mode)
        browser.close_dialogs(b)
    title = said[4][0]
    assert " ".join(said[4][1].split()) == f"not run: experts: its node {title} is bypassed, which passes nothing on " \
                                           f"here: un-bypass it (Ctrl+B)", said
    assert " ".join(said[2][1].split()) == f"not run: experts: its node {title} is muted: unmute it (Ctrl+M)", said
    assert max(len(line) for text in (said[4][1], said[2][1]) for line in text.split("\n")) <= 60, said


@pytest.mark.parametrize("template,node_type,note", [
    (LONG_SD, "ConFinerLongSegmenter",
     "bypassed: no video is made here; its latent input passes on unsampled in the video's place: un-bypass it "
     "(Ctrl+B)"),
    (BASIC, "ConFinerCoordinatedSampler",
     "bypassed: nothing is refined here; the structure passes on unrefined in the video's place: un-bypass it "
     "(Ctrl+B)")])
def test_a_bypassed_sampling_node_says_what_passes_on_in_the_videos_place(frontend, screenshot_dir, template, node_type,
                                                                          note):
    """A bypassed Long Video passes its frame-size latent on (the decode made one blank frame of it), a bypassed
    Refine Sampler its structure (the save node saved the rough video, unrefined), and the Run "completed" without a
    word (trials). The node says so at the Run, queued through the frontend for real."""
    from comfy_support import browser

    server, b = frontend
    open_template(frontend, template, f"{node_type} bypassed")
    said = b.page.evaluate("""async (type) => {
        const node = app.graph._nodes.find((n) => n.type === type);
        node.mode = 4;
        try { await app.queuePrompt(0); } catch (e) {}
        await new Promise((r) => setTimeout(r, 500));
        app.canvas.ds.offset = [40 - node.pos[0], 60 - node.pos[1]];
        app.canvas.setDirty(true, true);
        return node.widgets.find((w) => w.name === "$$node-text-preview")?.value; }""", node_type)
    browser.close_dialogs(b)
    b.page.screenshot(path=str(screenshot_dir / f"{node_type}_bypassed.png"))
    b.page.evaluate("(type) => { app.graph._nodes.find((n) => n.type === type).mode = 0; }", node_type)
    assert " ".join(said.split()) == note, said
    assert max(len(line) for line in said.split("\n")) <= 60, said


@SUBGRAPH_API
def test_a_subgraph_of_the_packs_nodes_says_what_bypassing_or_muting_around_it_does(frontend, screenshot_dir):
    """A trial put the basic template's ConFiner nodes into a subgraph. Bypassed, the subgraph node saved a black video
    and nothing said why; with the Positive prompt outside it muted, the Control Expert inside said only "Required
    input is missing: positive", and the Refine Experts bundle, outlined red, kept its last Run's text. Now the
    subgraph node says what its bypass leaves out, and the nodes inside name the muted node outside."""
    from comfy_support import browser

    server, b = frontend
    open_template(frontend, BASIC, "subgraph modes")
    said = b.page.evaluate("""async () => {
        const control = app.rootGraph.nodes.find((n) => n.type === "ConFinerControlExpert");
        const positive = control.getInputNode(control.inputs.findIndex((s) => s.name === "positive"));""" +
                           browser.OURS_TO_SUBGRAPH + """
        const text = (node) => node.widgets?.find((w) => w.name === "$$node-text-preview")?.value ?? null;
        const out = {holder: holder.title, positive: positive.title, sampler: inner("ConFinerCoordinatedSampler").title};
        // (the texts of the nodes inside show once it is opened)
        const opened = async (read) => {
            app.canvas.setGraph(holder.subgraph);
            await wait(400);
            const got = await read();
            app.canvas.setGraph(app.rootGraph);
            await wait(300);
            return got;
        };
        holder.mode = 4;
        const size = [...holder.size];
        try { await app.queuePrompt(0); } catch (e) {}
        await wait(500);
        out.bypassed = [text(holder), await opened(() => text(inner("ConFinerCoordinatedSampler")))];
        // saved meanwhile: as before the note (a re-check's export held the note's widget among the promoted ones)
        const saved = app.rootGraph.serialize().nodes.find((n) => n.id === holder.id);
        out.saved = {size: [size, saved.size, [...holder.size]], promoted: saved.properties.proxyWidgets};
        holder.mode = 0;
        positive.mode = 2;
        try { await app.queuePrompt(0); } catch (e) {}
        await wait(500);
        out.muted = [text(holder), ...await opened(() => [text(inner("ConFinerControlExpert")),
                                                          text(inner("ConFinerRefineExperts"))])];
        positive.mode = 0;
        // the next Run's start: the bypass note inside, of a Run before, goes (its node from the cache kept it), and
        // the bundle's own text, emptied, is on screen again when it comes
        api.dispatchCustomEvent("execution_start", {prompt_id: "next", timestamp: Date.now()});
        await wait(200);
        out.next = await opened(async () => {
            api.dispatchCustomEvent("progress_text", {nodeId: id("ConFinerRefineExperts"), text: ""});
            await wait(100);
            api.dispatchCustomEvent("progress_text", {nodeId: id("ConFinerRefineExperts"), text: "spatial: SD 1.5"});
            await wait(200);
            const bundle = inner("ConFinerRefineExperts").widgets.find((w) => w.name === "$$node-text-preview");
            const store = document.getElementById("vue-app").__vue_app__.config.globalProperties.$pinia._s
                .get("domWidget");
            return [text(inner("ConFinerCoordinatedSampler")), store.widgetStates.get(bundle.id)?.active ?? null];
        });
        holder.mode = 4;   // (again, for the picture, where no node covers it: the frontend put it over two)
        holder.pos = [Math.max(...app.rootGraph.nodes.map((n) => n.pos[0] + n.size[0])) + 80, holder.pos[1]];
        try { await app.queuePrompt(0); } catch (e) {}
        await wait(500);
        app.canvas.ds.scale = 1;
        app.canvas.ds.offset = [300 - holder.pos[0], 200 - holder.pos[1]];
        app.canvas.setDirty(true, true);
        return out; }""")
    browser.close_dialogs(b)
    b.page.wait_for_timeout(300)
    b.page.screenshot(path=str(screenshot_dir / "subgraph_bypassed.png"))
    flat = lambda text: " ".join((text or "").split())   # noqa: E731
    holder_said, sampler_said = said["bypassed"]
    assert flat(holder_said) == (f"bypassed: {said['sampler']} in it makes no video; its input passes on in the "
                                 f"video's place: un-bypass it (Ctrl+B)"), said
    assert flat(sampler_said) == (f"bypassed with its subgraph: nothing is refined here; the structure passes on "
                                  f"unrefined in the video's place: un-bypass {said['holder']} (Ctrl+B)"), said
    before, saved_size, shown_size = said["saved"]["size"]
    assert saved_size == before and shown_size != before, said["saved"]   # grown for the note on screen only
    assert said["saved"]["promoted"] and all(name != "$$node-text-preview" for _, name in said["saved"]["promoted"])
    holder_said, control_said, bundle_said = said["muted"]
    # (the bypass note went with the bypass; the subgraph node, outlined red, says what was refused in it)
    assert f"ConFiner Control Expert: not run: positive: its node {said['positive']} is muted: unmute it (Ctrl+M)" \
        in flat(holder_said), said
    assert "ConFiner Refine Experts (bundle): not run: spatial positive:" in flat(holder_said), said
    assert not said["next"][0], said   # no "bypassed with its subgraph" left inside
    assert said["next"][1] is True, said   # the bundle's text box shown
    assert flat(control_said) == f"not run: positive: its node {said['positive']} is muted: unmute it (Ctrl+M)", said
    assert flat(bundle_said).startswith("not run: spatial positive: its node ") and \
        flat(bundle_said).endswith("is muted: unmute it (Ctrl+M)"), said
    assert max(len(line) for text in (*said["bypassed"], control_said, bundle_said) for line in text.split("\n")) <= 60


def test_a_run_with_every_output_muted_says_so_on_the_packs_nodes(frontend):
    """With the only save node muted ComfyUI refuses the Run with "Prompt has no outputs:" and no more, and the
    pack's nodes said "the Run was refused (see the error)": they say that no output takes their result."""
    from comfy_support import browser

    server, b = frontend
    open_template(frontend, BASIC, "no outputs")
    texts = b.page.evaluate("""async () => {
        app.graph._nodes.find((n) => n.type === "SaveAnimatedWEBP").mode = 2;
        try { await app.queuePrompt(0); } catch (e) {}
        await new Promise((r) => setTimeout(r, 500));
        return [...new Set(app.graph._nodes.filter((n) => n.type.startsWith("ConFiner") && n.type !== "ConFinerRefineExperts")
          .map((n) => n.widgets.find((w) => w.name === "$$node-text-preview")?.value))]; }""")
    browser.close_dialogs(b)
    assert texts == ["not run: this Run left it out: no output node\n(a save or preview, not muted) takes its result"], \
        texts


@NO_SHOW_ADVANCED
def test_picking_freenoise_shows_its_stride(frontend):
    """FreeNoise's stride is an advanced widget: picking "freenoise" left it hidden until a Run was refused over it (a
    trial). The pick shows the node's advanced widgets, on the Noise Rescheduler and the Long Video; another pick
    leaves them hidden. Picked as the canvas picks a combo's option (its value, then its callback)."""
    server, b = frontend
    shown = b.page.evaluate("""() => { app.graph.clear();
        const pick = (type, name, value) => {
          const node = LiteGraph.createNode(type); app.graph.add(node);
          const combo = node.widgets.find((w) => w.name === name);
          combo.value = value; combo.callback?.(value, app.canvas, node);
          return !!node.showAdvanced; };
        return [pick("ConFinerNoiseRescheduler", "method", "freenoise"), pick("ConFinerNoiseRescheduler", "method",
                "shuffle"), pick("ConFinerLongSegmenter", "noise_init", "freenoise"),
                pick("ConFinerLongSegmenter", "noise_init", "shuffle")]; }""")
    assert shown == [True, False, True, False], shown


def queue_empty(b) -> None:
    """The server's status as it sends it when its queue empties (earlier tests here sent runs' starts alone)."""
    b.page.evaluate("""() => window.comfyAPI.api.api.dispatchCustomEvent("status",
                                                                     {exec_info: {queue_remaining: 0}})""")


def loading_bars(b) -> int:
    """The loading bars shown (PrimeVue skeletons), a moment after the last text came: the frontend's text box draws
    one until it sees the running nodes change, so a box made while nothing runs kept it for good."""
    return b.page.evaluate("""async () => {
      await new Promise((r) => setTimeout(r, 600));
      return [...document.querySelectorAll(".p-skeleton")].filter((e) => e.offsetParent !== null).length;
    }""")


def test_a_run_refused_when_queued_says_so_under_each_node(frontend):
    """A Run the server refuses when queued (here: the template's checkpoint is not on the server) starts nothing,
    and the nodes kept the last run's "done" as if this Run had made it. Queued through the frontend for real."""
    from comfy_support import browser

    server, b = frontend
    queue_empty(b)
    workflow = open_template(frontend, BASIC, "basic")
    done = "done · 4 expert evaluations in 1.2 s"
    texts = b.page.evaluate("""async (done) => {
      const api = window.comfyAPI.api.api;
      const ours = app.graph._nodes.filter((n) => ["ConFinerControlExpert", "ConFinerCoordinatedSampler"].includes(n.type));
      for (const n of ours) api.dispatchCustomEvent("progress_text", {nodeId: String(n.id), text: done});
      await app.queuePrompt(0);
      await new Promise((r) => setTimeout(r, 300));
      return Object.fromEntries(ours.map((n) => [n.type, n.widgets.find((w) => w.name === "$$node-text-preview")?.value]));
    }""", done)
    browser.close_dialogs(b)
    # the server names each loader whose file it lacks; the text names one of them and counts the others
    loaders = {n.get("title") or n["type"] for n in workflow["nodes"] if n.get("properties", {}).get("models")}
    said = re.fullmatch(r"not run: the Run was refused \(see the error\)\nat (.+?)(?: and (\d+) more)?",
                        texts["ConFinerControlExpert"])
    assert said and said[1] in loaders and int(said[2] or 0) + 1 == len(loaders), (texts, loaders)
    assert texts["ConFinerCoordinatedSampler"] == texts["ConFinerControlExpert"]
    # a node the next Run leaves out (muted) keeps no text of this one: a muted sampler went on saying its input was
    # refused when another node's was
    muted = b.page.evaluate("""async () => {
      const sampler = app.graph._nodes.find((n) => n.type === "ConFinerCoordinatedSampler");
      sampler.mode = 2;
      await app.queuePrompt(0);
      await new Promise((r) => setTimeout(r, 300));
      sampler.mode = 0;
      return sampler.widgets.find((w) => w.name === "$$node-text-preview")?.value;
    }""")
    browser.close_dialogs(b)
    assert muted == "", muted
    # the frontend's text box draws a loading bar until it sees the running nodes change: a box made while nothing
    # runs (these texts came with the queue idle) kept it for good beside its text
    assert loading_bars(b) == 0, "loading bars beside the texts of a Run that never started"


def test_a_run_whose_chain_was_refused_while_another_output_ran_says_so_on_the_chain(frontend, screenshot_dir):
    """A trial's two chains in one graph, one refused when queued (T_e 3 under 5 refine steps): ComfyUI ran the other
    and showed no dialog, and the refused chain kept its last "done" (the reason on the console alone). Here the
    template's chain is refused beside an image preview that runs, then left out by muting its save node. Queued
    through the frontend for real."""
    server, b = frontend
    queue_empty(b)
    open_template(frontend, BASIC, "partly")
    done = "done · 4 expert evaluations in 1.2 s"
    texts = b.page.evaluate("""async (done) => {
      const api = window.comfyAPI.api.api;
      const image = LiteGraph.createNode("EmptyImage"), preview = LiteGraph.createNode("PreviewImage");
      const twin = LiteGraph.createNode("ConFinerCoordinatedSampler");   // a second sampler, feeding nothing
      for (const n of [image, preview, twin]) app.graph.add(n);
      image.connect(0, preview, 0);
      const ours = app.graph._nodes.filter((n) => ["ConFinerControlExpert", "ConFinerCoordinatedSampler"].includes(n.type)
                                                  && n !== twin);
      const sampler = ours.find((n) => n.type === "ConFinerCoordinatedSampler");
      sampler.widgets.find((w) => w.name === "te").value = 3;
      sampler.widgets.find((w) => w.name === "refine_steps").value = 5;
      const text = (n) => n.widgets.find((w) => w.name === "$$node-text-preview")?.value;
      const run = async () => {
        for (const n of ours) api.dispatchCustomEvent("progress_text", {nodeId: String(n.id), text: done});
        let ended = false;
        const end = () => { ended = true; };
        api.addEventListener("execution_success", end);
        await app.queuePrompt(0);
        for (let i = 0; i < 100 && !ended; i++) await new Promise((r) => setTimeout(r, 100));
        await new Promise((r) => setTimeout(r, 300));
        api.removeEventListener("execution_success", end);
        return {ended, ...Object.fromEntries(ours.map((n) => [n.type, text(n)])), twin: text(twin)};
      };
      const partly = await run();
      const refused = Object.keys(app.lastNodeErrors ?? {}).map((id) => app.graph.getNodeById(id)?.title);
      // the valid output failing in that run keeps the refusal's texts (it cleared them for "... stopped the run")
      api.dispatchCustomEvent("execution_error", {prompt_id: "partly", node_id: String(preview.id),
                                                  node_type: "PreviewImage"});
      await new Promise((r) => setTimeout(r, 200));
      partly.afterError = Object.fromEntries(ours.map((n) => [n.type, text(n)]));
      // then the chain's save node muted: the Run leaves it out, and nothing is refused
      app.graph._nodes.find((n) => n.type === "SaveAnimatedWEBP").mode = 2;
      const muted = await run();
      return {partly, refused, muted, sampler: `${sampler.title} #${sampler.id}`};
    }""", done)
    b.page.evaluate("""() => { const n = app.graph._nodes.find((n) => n.type === "ConFinerControlExpert");
      app.canvas.ds.scale = 0.8; app.canvas.ds.offset = [-n.pos[0] + 60, -n.pos[1] + 60]; app.canvas.draw(true, true); }""")
    b.page.wait_for_timeout(300)
    b.page.screenshot(path=str(screenshot_dir / "partly_refused.png"))
    partly, muted = texts["partly"], texts["muted"]
    assert partly["ended"] and muted["ended"], texts   # the preview's output ran
    # the server's message, at most 60 characters a line, broken between words (the box breaks a line anywhere)
    assert partly["ConFinerCoordinatedSampler"] == "\n".join(textwrap.wrap(
        "not run: refine steps (refine_steps) = 5 do not fit between T_e = 3 and 0: use at most 3 steps or raise the "
        "structure timestep T_e (te)", 60)), texts
    # the node left out names the refused node it feeds, with its id beside another of the same title, before those
    # that feed it (the server refused the loaders too: the template's files are not on it)
    assert partly["ConFinerControlExpert"] == f"not run: this Run left it out, as\n{texts['sampler']}, which it " \
                                              f"feeds, was refused", texts
    assert texts["sampler"].split(" #")[0] in texts["refused"] and len(texts["refused"]) > 1, texts
    assert partly["afterError"] == {k: partly[k] for k in ("ConFinerControlExpert", "ConFinerCoordinatedSampler")}
    feeds_nothing = "not run: this Run left it out: no output node\n(a save or preview, not muted) takes its result"
    assert partly["twin"] == feeds_nothing, texts
    assert muted == {"ended": True, "ConFinerControlExpert": feeds_nothing, "ConFinerCoordinatedSampler": feeds_nothing,
                     "twin": feeds_nothing}, texts


def test_a_check_filed_under_every_input_it_reads_is_shown_once(frontend, screenshot_dir):
    """ComfyUI files a failed check under each input the check reads: the Long Video's schedule message came three
    times in the dialog (under frames, segment prompts and the hidden fps). Queued through the frontend for real."""
    from comfy_support import browser

    server, b = frontend
    open_template(frontend, LONG_SD, "long_refused")
    browser.close_dialogs(b)
    filed = b.page.evaluate("""async () => {
      const node = app.graph._nodes.find((n) => n.type === "ConFinerLongSegmenter");
      node.widgets.find((w) => w.name === "segment_prompts").value = "0: a corgi on a beach | abc: a corgi in snow";
      await app.queuePrompt(0);
      await new Promise((r) => setTimeout(r, 500));
      const dialogs = [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText);
      return {dialog: dialogs.find((text) => text.includes("failed validation")) ?? dialogs.join("\\n")};
    }""")
    b.page.screenshot(path=str(screenshot_dir / "long_video_refused_once.png"))
    browser.close_dialogs(b)
    assert filed["dialog"].count("has no start key") == 1, filed["dialog"]
    assert "segment_prompts - " in filed["dialog"] and "frames - segment prompts" not in filed["dialog"], \
        filed["dialog"]


@needs_frontend_1_35("its text box wraps a line of 60 characters on the pack's nodes (ComfyUI 0.3.x)")
@pytest.mark.parametrize("name", [BASIC, LONG_WAN])
def test_a_line_of_the_packs_text_is_shown_unbroken_on_the_templates_nodes(frontend, name):
    """The nodes' lines are at most 60 characters (nodes/host.py LINE_WIDTH) so that each fits one line of the box:
    on the templates' 380 px nodes, a trial read "load Lightnin / g" and "stopped the ru / n". A node added fresh is
    as wide (web/confiner.js)."""
    server, b = frontend
    open_template(frontend, name)
    line = "warning: control motion model not few-step: load Lightning.."   # 60 characters, as the longest
    assert len(line) == 60
    lines = b.page.evaluate("""async ([line, types]) => {
      const api = window.comfyAPI.api.api;
      const fresh = types.map((t) => { const n = LiteGraph.createNode(t); n.pos = [5000, 5000]; app.graph.add(n); return n; });
      const ours = app.graph._nodes.filter((n) => types.includes(n.type));
      const out = [];
      for (const n of ours) {
        app.canvas.ds.scale = 1;   // the node in view: the frontend hides the boxes of nodes out of it
        app.canvas.ds.offset = [300 - n.pos[0], 300 - n.pos[1]];
        api.dispatchCustomEvent("progress_text", {nodeId: String(n.id), text: line});
        await new Promise((r) => setTimeout(r, 300));
        app.canvas.draw(true, true);
        await new Promise((r) => setTimeout(r, 100));
        const box = Array.from(document.querySelectorAll(".dom-widget .overflow-y-auto"))
          .find((e) => (e.innerText || "").includes(line.slice(0, 40)) && !e.dataset.measured);
        if (!box) { out.push([n.type, fresh.includes(n), null]); continue; }
        box.dataset.measured = "1";
        const range = document.createRange(); range.selectNodeContents(box);
        out.push([n.type, fresh.includes(n), new Set(Array.from(range.getClientRects()).map((r) => Math.round(r.top))).size]);
      }
      for (const n of fresh) app.graph.remove(n);
      return out;
    }""", [line, NODE_IDS[:4]])
    assert lines and all(count == 1 for _, _, count in lines), lines


def test_a_node_served_from_the_cache_says_so(frontend):
    """A workflow opened afresh whose result ComfyUI had cached ran in 0.01 s, and the pack's nodes stayed blank (a
    cached node sends no text). A node that shows the text of its own last run keeps it, and says this run reused it
    (the Control Expert, its seed fixed, showed its "done" line through every later Run as if each had made it)."""
    server, b = frontend
    open_template(frontend, BASIC, "basic")
    done = "done · 4 expert evaluations in 1.2 s"
    warned = "warning: AnimateDiff bypassed, no motion: un-bypass it"
    texts = b.page.evaluate("""async ([done, warned]) => {
      const api = window.comfyAPI.api.api;
      const node = (type) => app.graph._nodes.find((n) => n.type === type);
      api.dispatchCustomEvent("progress_text", {nodeId: String(node("ConFinerControlExpert").id), text: done});
      api.dispatchCustomEvent("execution_start", {prompt_id: "cached", timestamp: Date.now()});
      api.dispatchCustomEvent("execution_cached", {prompt_id: "cached", timestamp: Date.now(),
        nodes: app.graph._nodes.map((n) => String(n.id))});
      await new Promise((r) => setTimeout(r, 300));
      const text = (type) => node(type).widgets.find((w) => w.name === "$$node-text-preview")?.value ?? null;
      const first = [text("ConFinerControlExpert"), text("ConFinerCoordinatedSampler"), text("ConFinerRefineExperts")];
      // then ComfyUI sends the cached node's UI output: the text its run ended on, warnings and all; the bundle's,
      // what it holds
      api.dispatchCustomEvent("executed", {node: String(node("ConFinerCoordinatedSampler").id), prompt_id: "cached",
        output: {confiner_text: [warned + "\\n" + done + "\\nseed 7"]}});
      api.dispatchCustomEvent("executed", {node: String(node("ConFinerRefineExperts").id), prompt_id: "cached",
        output: {confiner_text: ["spatial: SD 1.5 · cfg 7.5"]}});
      await new Promise((r) => setTimeout(r, 300));
      first.push(text("ConFinerCoordinatedSampler"), text("ConFinerRefineExperts"));
      api.dispatchCustomEvent("execution_start", {prompt_id: "cached again", timestamp: Date.now()});
      api.dispatchCustomEvent("execution_cached", {prompt_id: "cached again", timestamp: Date.now(),
        nodes: app.graph._nodes.map((n) => String(n.id))});
      api.dispatchCustomEvent("executed", {node: String(node("ConFinerCoordinatedSampler").id),
        prompt_id: "cached again", output: {confiner_text: [warned + "\\n" + done + "\\nseed 7"]}});
      await new Promise((r) => setTimeout(r, 300));
      return [...first, text("ConFinerControlExpert"), text("ConFinerCoordinatedSampler")];
    }""", [done, warned])
    reused = f"{done}\nreused by this run (from the cache)"
    cached = "done · from the cache\n(an earlier run with the same inputs made it)"
    # a trial's reopened template showed the sampler's "from the cache" alone, its warning gone as if fixed
    kept = f"{warned}\n{done}\nseed 7\nreused by this run (from the cache)"
    assert texts == [reused, cached, None, kept, "spatial: SD 1.5 · cfg 7.5", reused, kept], texts   # said once


@SUBGRAPH_API
def test_the_warnings_of_the_packs_nodes_in_a_subgraph_show_on_the_subgraph_node(frontend, screenshot_dir):
    """A trial's warnings ("temporal is an image model") showed only once the subgraph was opened. At a Run's end
    the subgraph node lists each of the pack's nodes in it that warned or failed, and a new Run clears it."""
    from comfy_support import browser

    server, b = frontend
    open_template(frontend, BASIC, "warnings in subgraph")
    warned = "warning: temporal is an image model: add AnimateDiff or Wan"
    said = b.page.evaluate("""async (warned) => {""" + browser.OURS_TO_SUBGRAPH + """
      const text = () => holder.widgets?.find((w) => w.name === "$$node-text-preview")?.value ?? null;
      api.dispatchCustomEvent("execution_start", {prompt_id: "run", timestamp: Date.now()});
      await wait(100);
      api.dispatchCustomEvent("progress_text", {nodeId: id("ConFinerControlExpert"),
                                                text: "done · 4 expert evaluations in 1.2 s"});
      api.dispatchCustomEvent("progress_text", {nodeId: id("ConFinerCoordinatedSampler"),
                                                text: `${warned}\ndone · 15 expert evaluations in 3.0 s`});
      await wait(200);
      api.dispatchCustomEvent("execution_success", {prompt_id: "run", timestamp: Date.now()});
      await wait(300);
      const after = text();
      holder.pos = [Math.max(...app.rootGraph.nodes.map((n) => n.pos[0] + n.size[0])) + 80, holder.pos[1]];
      app.canvas.ds.scale = 1;
      app.canvas.ds.offset = [300 - holder.pos[0], 200 - holder.pos[1]];
      app.canvas.setDirty(true, true);
      await wait(300);
      return {after, title: inner("ConFinerCoordinatedSampler").title}; }""", warned)
    b.page.screenshot(path=str(screenshot_dir / "subgraph_warnings.png"))
    cleared = b.page.evaluate("""async () => {
      window.comfyAPI.api.api.dispatchCustomEvent("execution_start", {prompt_id: "next", timestamp: Date.now()});
      await new Promise((r) => setTimeout(r, 200));
      const holder = app.rootGraph.nodes.find((n) => n.isSubgraphNode?.());
      return holder.widgets?.find((w) => w.name === "$$node-text-preview")?.value ?? null; }""")
    assert " ".join(said["after"].split()) == f"{said['title']}: {warned}", said   # the one that warned, only
    assert max(len(line) for line in said["after"].split("\n")) <= 60, said
    assert not cleared, cleared


@SUBGRAPH_API
def test_a_node_in_a_closed_subgraph_served_from_the_cache_keeps_its_warning(frontend):
    """A trial's Control Expert in a subgraph, its run served from the cache, read "done · from the cache" once the
    subgraph was opened: its text is kept, not shown, while the subgraph is closed, and was read as blank, so its
    warning went. It keeps its text, and says this run reused it."""
    from comfy_support import browser

    server, b = frontend
    open_template(frontend, BASIC, "cached in subgraph")
    said = "warning: image model, no motion: add AnimateDiff or use Wan\ndone · 4 expert evaluations in 1.2 s"
    text = b.page.evaluate("""async (said) => {""" + browser.OURS_TO_SUBGRAPH + """
      const control = inner("ConFinerControlExpert");
      api.dispatchCustomEvent("progress_text", {nodeId: id("ConFinerControlExpert"), text: said});
      await wait(200);
      api.dispatchCustomEvent("execution_start", {prompt_id: "cached", timestamp: Date.now()});
      api.dispatchCustomEvent("execution_cached", {prompt_id: "cached", timestamp: Date.now(),
                                                   nodes: [id("ConFinerControlExpert")]});
      await wait(300);
      app.canvas.setGraph(holder.subgraph);
      await wait(400);
      const text = control.widgets.find((w) => w.name === "$$node-text-preview")?.value ?? null;
      app.canvas.setGraph(app.rootGraph);
      await wait(200);
      return text; }""", said)
    assert text == f"{said}\nreused by this run (from the cache)", text


def test_a_result_from_the_cache_names_the_seed_it_was_queued_with(frontend):
    """A workflow opened from its WEBP, run again: ComfyUI's cache served both nodes, whose text said only "from the
    cache", while the refine seed's widget already showed the next random seed; the note says to fix the seed the
    node's text names (a trial). A cached result was made by the inputs queued, so by the seed queued: its text names
    it. The queue's answer is the server's as it would send it (the template's files are not on this server)."""
    server, b = frontend
    queue_empty(b)
    open_template(frontend, BASIC, "cached seed")
    b.page.route("**/api/prompt", lambda route: route.fulfill(
        status=200, content_type="application/json",
        body=json.dumps({"prompt_id": "cached seed", "number": 1, "node_errors": {}}))
        if route.request.method == "POST" else route.continue_())
    try:
        seen = b.page.evaluate("""async () => {
          const api = window.comfyAPI.api.api;
          const node = (type) => app.graph._nodes.find((n) => n.type === type);
          const seed = (type) => node(type).widgets.find((w) => w.name === "seed");
          seed("ConFinerControlExpert").value = 7;
          seed("ConFinerCoordinatedSampler").value = 926422842002767;   // "randomize": the next one after the queue
          await app.queuePrompt(0);
          api.dispatchCustomEvent("execution_start", {prompt_id: "cached seed", timestamp: Date.now()});
          api.dispatchCustomEvent("execution_cached", {prompt_id: "cached seed", timestamp: Date.now(),
            nodes: app.graph._nodes.map((n) => String(n.id))});
          await new Promise((r) => setTimeout(r, 300));
          const text = (type) => node(type).widgets.find((w) => w.name === "$$node-text-preview")?.value ?? null;
          api.dispatchCustomEvent("execution_success", {prompt_id: "cached seed", timestamp: Date.now()});
          return [text("ConFinerControlExpert"), text("ConFinerCoordinatedSampler"),
                  seed("ConFinerCoordinatedSampler").value]; }""")
    finally:
        b.page.unroute("**/api/prompt")
    cached = "done · from the cache\n(an earlier run with the same inputs made it)"
    assert seen[:2] == [f"{cached}\nseed 7", f"{cached}\nseed 926422842002767"], seen
    assert seen[2] != 926422842002767, seen   # the widget moved on: the text is where the seed that made it is read


def test_the_nodes_a_run_will_run_say_they_wait_until_their_turn(frontend, screenshot_dir):
    """A Refine Sampler behind another, its structure from ComfyUI's cache, stood blank until its turn came (its own
    check says "waiting" only then), and a Control Expert kept the last Run's "done" while the loaders before it
    loaded (30 s in a trial). Once ComfyUI names what its cache serves, each sampling node the Run will run says it
    waits; one the cache serves says it reused its result, and a cancel before a node's turn says so. The queue's
    answer is the server's as it would send it (the template's files are not on this server)."""
    server, b = frontend
    queue_empty(b)
    open_template(frontend, BASIC, "waiting")
    ids = iter(["waits", "waits again"])   # (the server's prompt ids: one a Run)
    b.page.route("**/api/prompt", lambda route: route.fulfill(
        status=200, content_type="application/json",
        body=json.dumps({"prompt_id": next(ids), "number": 1, "node_errors": {}})) if route.request.method == "POST"
        else route.continue_())
    try:
        b.page.evaluate("""() => { window.confinerRun = (async () => {
          const api = window.comfyAPI.api.api;
          const node = (type) => app.graph._nodes.find((n) => n.type === type);
          const ids = (...types) => app.graph._nodes.filter((n) => !types.includes(n.type)).map((n) => String(n.id));
          const text = (type) => node(type).widgets.find((w) => w.name === "$$node-text-preview")?.value ?? null;
          const wait = () => new Promise((r) => setTimeout(r, 300));
          const done = "done · 4 expert evaluations in 1.2 s";
          const seen = {};
          for (const type of ["ConFinerControlExpert", "ConFinerCoordinatedSampler"]) {
            api.dispatchCustomEvent("progress_text", {nodeId: String(node(type).id), text: done});
          }
          await app.queuePrompt(0);
          // the structure from the cache, the sampler to run
          api.dispatchCustomEvent("execution_start", {prompt_id: "waits", timestamp: Date.now()});
          api.dispatchCustomEvent("execution_cached", {prompt_id: "waits", timestamp: Date.now(),
            nodes: ids("ConFinerCoordinatedSampler", "VAEDecode", "SaveAnimatedWEBP")});
          await wait();
          seen.structureCached = [text("ConFinerControlExpert"), text("ConFinerCoordinatedSampler")];
          const sampler = node("ConFinerCoordinatedSampler");
          app.canvas.ds.scale = 0.8;
          app.canvas.ds.offset = [-sampler.pos[0] + 900, -sampler.pos[1] + 80];
          app.canvas.draw(true, true);
          window.confinerShot = true;
          for (let i = 0; i < 100 && window.confinerShot; i++) await new Promise((r) => setTimeout(r, 100));
          api.dispatchCustomEvent("execution_interrupted", {prompt_id: "waits", timestamp: Date.now()});
          await wait();
          seen.cancelled = text("ConFinerCoordinatedSampler");
          // nothing from the cache: both wait, and the one whose turn comes says how it goes
          await app.queuePrompt(0);
          api.dispatchCustomEvent("execution_start", {prompt_id: "waits again", timestamp: Date.now()});
          api.dispatchCustomEvent("execution_cached", {prompt_id: "waits again", timestamp: Date.now(), nodes: []});
          await wait();
          seen.nothingCached = [text("ConFinerControlExpert"), text("ConFinerCoordinatedSampler")];
          const control = String(node("ConFinerControlExpert").id);
          api.dispatchCustomEvent("executing", {node: control, display_node: control, prompt_id: "waits again"});
          api.dispatchCustomEvent("progress_text", {nodeId: control, text: "control stage · step 1/4"});
          await wait();
          seen.controlRuns = [text("ConFinerControlExpert"), text("ConFinerCoordinatedSampler")];
          api.dispatchCustomEvent("execution_success", {prompt_id: "waits again", timestamp: Date.now()});
          await wait();
          seen.ended = text("ConFinerCoordinatedSampler");
          return seen;
        })(); }""")
        # what an artist sees while the structure comes from the cache: the Control Expert reused, the sampler waits
        b.page.wait_for_function("() => window.confinerShot === true", timeout=20000)
        b.page.wait_for_timeout(300)
        b.page.screenshot(path=str(screenshot_dir / "waiting_for_its_turn.png"))
        b.page.evaluate("() => { window.confinerShot = false; }")
        texts = b.page.evaluate("() => window.confinerRun")
    finally:
        b.page.unroute("**/api/prompt")
    waiting = "waiting for its turn\n(after the nodes queued before it)"
    assert texts["structureCached"] == ["done · 4 expert evaluations in 1.2 s\nreused by this run (from the cache)",
                                        waiting], texts
    assert texts["cancelled"] == "not run: the run was cancelled before its turn", texts
    assert texts["nothingCached"] == [waiting, waiting], texts
    assert texts["controlRuns"] == ["control stage · step 1/4", waiting], texts
    assert texts["ended"] == "", texts   # a wait that never ended is not left behind


def test_a_run_that_ended_before_the_queues_answer_leaves_no_node_waiting(frontend):
    """A run refused in its first node (a bundle given no VAE) can end before the server's answer to the Run is read:
    in a trial, 5 of 10 such runs left the Refine Sampler "waiting for its turn" long after the run had ended, the
    queue empty. Here the run starts and fails inside the Run's request, before its answer comes back."""
    server, b = frontend
    queue_empty(b)
    open_template(frontend, BASIC, "fast failure")
    b.page.route("**/api/prompt", lambda route: route.fulfill(
        status=200, content_type="application/json",
        body='{"prompt_id": "fast", "number": 1, "node_errors": {}}') if route.request.method == "POST"
        else route.continue_())
    try:
        texts = b.page.evaluate("""async () => {
          const api = window.comfyAPI.api.api;
          const node = (type) => app.graph._nodes.find((n) => n.type === type);
          const text = (type) => node(type).widgets.find((w) => w.name === "$$node-text-preview")?.value ?? null;
          const fetchApi = api.fetchApi;
          api.fetchApi = async function (route, options) {
            const response = await fetchApi.call(this, route, options);
            if (route === "/prompt" && options?.method === "POST") {   // the whole run, before the answer is read
              const bundle = String(node("ConFinerRefineExperts").id);
              api.dispatchCustomEvent("execution_start", {prompt_id: "fast", timestamp: Date.now()});
              api.dispatchCustomEvent("execution_cached", {prompt_id: "fast", timestamp: Date.now(), nodes: []});
              api.dispatchCustomEvent("executing", {node: bundle, display_node: bundle, prompt_id: "fast"});
              api.dispatchCustomEvent("execution_error", {prompt_id: "fast", timestamp: Date.now(), node_id: bundle,
                node_type: "ConFinerRefineExperts", exception_message: "connect the temporal VAE"});
            }
            return response;
          };
          try {
            await app.queuePrompt(0);
          } finally {
            api.fetchApi = fetchApi;
          }
          await new Promise((r) => setTimeout(r, 300));
          return [text("ConFinerControlExpert"), text("ConFinerCoordinatedSampler")];
        }""")
    finally:
        b.page.unroute("**/api/prompt")
    stopped = "not run: ConFiner Refine Experts (bundle) stopped the run:\nconnect the temporal VAE"
    assert texts == [stopped, stopped], texts
