"""ComfyUI with its real frontend in headless Chromium, for tests and tools (test-only code).

* :class:`ComfyServer` starts ``main.py`` of a ComfyUI checkout as a subprocess on a free loopback port, with a
  private base directory whose ``custom_nodes`` links the packs to load (the torchvision stub on ``PYTHONPATH``);
* :func:`open_page` opens the frontend in Chromium (Debian's ``chromium``, driven by Playwright by executable path;
  Playwright's own browser downloads are never used) and waits for the app;
* :func:`load_template` loads a template as the template browser does (``app.loadGraphData``) and returns each node's
  drawn bounding box (title bar included) and the frontend's minimum size for it;
* :func:`overlaps` lists node pairs whose drawn boxes intersect.

Needs: a ComfyUI checkout, ``comfyui-frontend-package`` at the version the checkout pins, ``playwright`` (Python
package) and ``/usr/bin/chromium``; :func:`missing` says what is absent. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path

from . import harness

CHROMIUM = os.environ.get("CONFINER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]
VIEWPORT = {"width": 1920, "height": 1080}


def pinned_frontend(comfy_root) -> str | None:
    """The comfyui-frontend-package version the checkout's requirements.txt pins."""
    try:
        text = (Path(comfy_root) / "requirements.txt").read_text()
    except OSError:
        return None
    m = re.search(r"^comfyui-frontend-package==([\w.]+)", text, re.M)
    return m.group(1) if m else None


def missing(comfy_root) -> str | None:
    """Why the browser test cannot run here (None when it can)."""
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        return f"Chromium not found at {CHROMIUM} (Debian: apt-get install -y chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (tests/comfy_support/requirements-browser.txt)"
    want = pinned_frontend(comfy_root)
    try:
        have = metadata.version("comfyui-frontend-package")
    except metadata.PackageNotFoundError:
        return f"comfyui-frontend-package is not installed (this ComfyUI pins {want})"
    if want and have != want:
        return f"comfyui-frontend-package {have} is installed but this ComfyUI pins {want}"
    return None


def checkout_for_tools():
    """The ComfyUI checkout for a tool script, or exit with the reason the browser cannot run."""
    root = harness.comfy_root()
    if root is None:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    why = missing(root)
    if why:
        sys.exit(why)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``python main.py --cpu`` of ``comfy_root`` with ``packs`` [(dir, name)] as its custom nodes."""

    def __init__(self, comfy_root, packs, log_path=None, timeout: float = 240):
        self.root = Path(comfy_root)
        self.base = Path(tempfile.mkdtemp(prefix="confiner-frontend-"))
        (self.base / "custom_nodes").mkdir()
        # (with the stand-ins for the core nodes that did not import here: stub_nodes says why)
        for path, name in [*packs, (Path(__file__).parent / "stub_nodes", "confiner-test-stand-ins")]:
            (self.base / "custom_nodes" / name).symlink_to(Path(path).resolve(), target_is_directory=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else self.base / "server.log"
        env = dict(os.environ)
        if importlib.util.find_spec("torchvision") is None:  # ComfyUI core imports it; the test stub stands in
            env["PYTHONPATH"] = os.pathsep.join([str(harness.stubs_dir())] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("HF_HUB_OFFLINE", "1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--disable-api-nodes", "--base-directory", str(self.base),
             "--listen", "127.0.0.1", "--port", str(self.port)],
            cwd=str(self.root), stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited (rc={self.proc.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/api/object_info/ConFinerControlExpert", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1.0)
        self.close()
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s:\n{self.log_tail()}")

    def get(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of a GET on the server."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), b""

    def get_json(self, path: str):
        status, _, body = self.get(path)
        assert status == 200, f"GET {path}: {status}"
        return json.loads(body)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Browser:
    """Playwright driving Debian's Chromium (by executable path) on one page of the frontend."""

    def __init__(self, url: str):
        from playwright.sync_api import sync_playwright

        # a fresh user profile opens the template browser on first start: mark the tutorial as seen
        request = urllib.request.Request(url + "/api/settings/Comfy.TutorialCompleted", data=b"true", method="POST",
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=30).close()

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file()
                                                else shutil.which("chromium"), args=CHROMIUM_FLAGS)
        self.page = self.browser.new_page(viewport=VIEWPORT)
        self.console: list[str] = []
        self.responses: list[tuple[int, str]] = []
        self.page.on("console", lambda m: self.console.append(m.text))
        self.page.on("response", lambda r: self.responses.append((r.status, r.url)))
        self.page.goto(url)
        self.page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                                    "window.LiteGraph.registered_node_types['ConFinerControlExpert']", timeout=180000)
        self.page.wait_for_timeout(1000)

    def dismiss(self) -> None:
        """Closes open dialogs, as Escape does for an artist."""
        for _ in range(2):
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(200)

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


PICTURE_JS = """(type) => {
  app.graph.clear();
  const n = LiteGraph.createNode(type);
  n.showAdvanced = true;   // the help page lists every input: the picture shows them all, advanced ones outlined
  n.size = [Math.max(n.computeSize()[0], 380), n.computeSize()[1]];
  n.pos = [0, 0];
  app.graph.add(n);
  app.canvas.ds.scale = 1.25;
  app.canvas.ds.offset = [400 / 1.25, 160 / 1.25];
  app.canvas.draw(true, true);
  const s = app.canvas.ds.scale, o = app.canvas.ds.offset;
  const r = app.canvas.canvas.getBoundingClientRect();
  // 34 above the title: the frontend draws the node's source badge ("comfyui-confiner") over its top edge
  return [r.left + (n.pos[0] + o[0] - 10) * s, r.top + (n.pos[1] + o[1] - LiteGraph.NODE_TITLE_HEIGHT - 34) * s,
          (n.size[0] + 20) * s, (n.size[1] + LiteGraph.NODE_TITLE_HEIGHT + 44) * s];
}"""


def node_picture(browser: Browser, node_type: str, path) -> None:
    """A PNG of one freshly created node as the frontend draws it after "Show Advanced"."""
    x, y, w, h = browser.page.evaluate(PICTURE_JS, node_type)
    browser.page.wait_for_timeout(300)
    browser.page.screenshot(path=str(path), clip={"x": x, "y": y, "width": w, "height": h})


MEASURE_JS = """(types) => {
  const out = {};
  for (const t of types) {
    const n = LiteGraph.createNode(t);
    out[t] = n ? Array.from(n.computeSize()) : null;
  }
  return out;
}"""

LOAD_JS = """async ([workflow, name]) => {
  await app.loadGraphData(workflow, true, true, name);
  app.canvas.draw(true, true);
  await new Promise(r => setTimeout(r, 300));
  app.canvas.draw(true, true);
  const titleHeight = LiteGraph.NODE_TITLE_HEIGHT;
  return app.graph._nodes.map(n => ({
    id: n.id, type: n.type, title: n.title,
    registered: !!LiteGraph.registered_node_types[n.type],
    box: [n.pos[0], n.pos[1] - titleHeight, n.size[0], n.size[1] + titleHeight],
    size: Array.from(n.size), min: Array.from(n.computeSize()),
    widgets: (n.widgets || []).map(w => w.label || w.name),
  }));
}"""


# A run's progress text and live preview arriving on a node, as the frontend receives them from the server (the
# progress_text event; a preview image on node.imgs): functions the scripts below begin with.
ARRIVALS_JS = """
  const sendText = async (node, text) => {
    window.comfyAPI.api.api.dispatchCustomEvent("progress_text", {nodeId: String(node.id), text});
    await new Promise((r) => setTimeout(r, 300));
  };
  const sendPreview = async (node, png) => {
    const img = new Image();
    img.src = "data:image/png;base64," + png;
    await new Promise((r) => { img.onload = r; });
    node.imgs = [img];
    node.setDirtyCanvas(true, true);
    await new Promise((r) => setTimeout(r, 300));
  };"""

# The heights of a node's widgets before a run, once its progress text arrived and once a preview did.
PROGRESS_ARRIVES_JS = """async ([type, text, png]) => {""" + ARRIVALS_JS + """
  const node = app.graph._nodes.find((n) => n.type === type);
  const heights = () => {
    app.canvas.draw(true, true);
    return Object.fromEntries(node.widgets.map((w) => [w.name, w.computedHeight ?? null]));
  };
  const saved = () => node.serialize().widgets_values.length;
  const out = {size: Array.from(node.size), before: heights(), saved_before: saved()};
  await sendText(node, text);
  out.text = heights();
  await sendPreview(node, png);
  out.preview = heights();
  out.size_after = Array.from(node.size);
  out.saved_after = saved();
  return out;
}"""


# A preview arrives for a node as the server sends it (a binary message the frontend turns into this event), then
# ``text``, then another preview: whether the node draws a preview after each (its images and preview widget).
PREVIEW_THEN_TEXT_JS = """async ([type, text, png]) => {
  const api = window.comfyAPI.api.api;
  const node = app.graph._nodes.find((n) => n.type === type);
  app.canvas.ds.scale = 1;   // in view: the frontend takes a node's previews when it draws the node
  app.canvas.ds.offset = [-node.pos[0] + 100, -node.pos[1] + 100];
  const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
  const preview = async () => {
    const blob = new Blob([bytes], {type: "image/png"});
    api.dispatchCustomEvent("b_preview_with_metadata", {blob, nodeId: String(node.id), displayNodeId: String(node.id),
                                                        promptId: "confiner-test"});
    await new Promise((r) => setTimeout(r, 500));
  };
  const drawn = async () => {   // (a drawn node takes its new preview, whose image then loads, and is drawn again)
    for (let i = 0; i < 2; i++) {
      app.canvas.draw(true, true);
      await new Promise((r) => setTimeout(r, 300));
    }
    return {images: node.imgs?.length ?? 0,
            widget: (node.widgets ?? []).some((w) => w.name === "$$canvas-image-preview")};
  };
  await preview();
  const out = {first: await drawn()};
  api.dispatchCustomEvent("progress_text", {nodeId: String(node.id), text});
  await new Promise((r) => setTimeout(r, 300));
  out.text = await drawn();
  await preview();
  out.next = await drawn();
  return out;
}"""


def preview_then_text(browser: Browser, node_type: str, text: str, png_base64: str) -> dict:
    """What the loaded graph's first ``node_type`` node draws once a preview arrived, then ``text``, then another
    preview (:data:`PREVIEW_THEN_TEXT_JS`)."""
    return browser.page.evaluate(PREVIEW_THEN_TEXT_JS, [node_type, text, png_base64])


# The basic template's ConFiner nodes made a subgraph (as "Convert to Subgraph" does), then texts sent under the ids
# a run gives its nodes ("<subgraph node>:<node>"): what each inner node shows, at the top graph and inside.
# The body's start of a script that puts the loaded template's ConFiner nodes in a subgraph: ``holder`` (the subgraph
# node), ``inner(type)`` (a node in it), ``id(type)`` (its run id "<holder>:<node>"), ``api`` and ``wait(ms)``.
OURS_TO_SUBGRAPH = """
  const api = window.comfyAPI.api.api;
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  const ours = app.rootGraph.nodes.filter((n) => n.type.startsWith("ConFiner"));
  const {node: holder} = app.rootGraph.convertToSubgraph(new Set(ours));
  await wait(300);
  const inner = (type) => holder.subgraph.nodes.find((n) => n.type === type);
  const id = (type) => `${holder.id}:${inner(type).id}`;
"""
SUBGRAPH_TEXTS_JS = """async () => {""" + OURS_TO_SUBGRAPH + """
  const text = (type) => inner(type).widgets?.find((w) => w.name === "$$node-text-preview")?.value ?? null;
  const send = async (type, value) => {
    api.dispatchCustomEvent("progress_text", {nodeId: id(type), text: value});
    await wait(300);
  };
  const out = {holder: holder.title};
  await send("ConFinerCoordinatedSampler", "done · 15 expert evaluations in 1.0 s");   // at the top graph
  out.at_top = text("ConFinerCoordinatedSampler");
  app.canvas.setGraph(holder.subgraph);   // the subgraph opened
  await wait(500);
  out.opened = text("ConFinerCoordinatedSampler");
  await send("ConFinerControlExpert", "step 2/4 · evaluation 2/4");   // while it is open
  out.live = text("ConFinerControlExpert");
  // a run that failed in the Control Expert: the sampler it never reached says who stopped it
  api.dispatchCustomEvent("execution_start", {prompt_id: "confiner-test"});
  await wait(200);
  api.dispatchCustomEvent("execution_error", {prompt_id: "confiner-test", node_id: id("ConFinerControlExpert"),
                                              node_type: "ConFinerControlExpert"});
  await wait(400);
  out.not_run = text("ConFinerCoordinatedSampler");
  return out;   // (the subgraph left open: the caller takes its picture, then leaves it)
}"""


# The basic template's Control Expert made a subgraph; a text on the top graph's sampler and one on the expert inside:
# whether each is on screen (an element showing it, not hidden) as the canvas goes into the subgraph and out again.
SUBGRAPH_ROUND_TRIP_JS = """async () => {
  const api = window.comfyAPI.api.api;
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  const view = async (graph, node) => {
    if (app.canvas.graph !== graph) app.canvas.setGraph(graph);
    await wait(300);
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [-node.pos[0] + 60, -node.pos[1] + 60];
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    await wait(400);
  };
  const shown = (text) => Array.from(document.querySelectorAll("textarea, div, span, p")).some(
    (e) => e.offsetParent !== null && (e.value ?? e.innerText ?? "").trim() === text && e.getBoundingClientRect().height > 0);
  const sampler = app.rootGraph.nodes.find((n) => n.type === "ConFinerCoordinatedSampler");
  const {node: holder} = app.rootGraph.convertToSubgraph(
    new Set([app.rootGraph.nodes.find((n) => n.type === "ConFinerControlExpert")]));
  const inner = holder.subgraph.nodes.find((n) => n.type === "ConFinerControlExpert");
  await view(app.rootGraph, sampler);
  api.dispatchCustomEvent("progress_text", {nodeId: String(sampler.id), text: "done · on the top graph"});
  await view(app.rootGraph, sampler);
  const out = {top: shown("done · on the top graph")};
  await view(holder.subgraph, inner);
  api.dispatchCustomEvent("progress_text", {nodeId: `${holder.id}:${inner.id}`, text: "done · in the subgraph"});
  await view(holder.subgraph, inner);
  out.inside = shown("done · in the subgraph");
  await view(app.rootGraph, sampler);
  out.top_again = shown("done · on the top graph");
  await view(holder.subgraph, inner);
  out.inside_again = shown("done · in the subgraph");
  await view(app.rootGraph, sampler);
  return out;
}"""


def subgraph_round_trip(browser: Browser) -> dict:
    """:data:`SUBGRAPH_ROUND_TRIP_JS` on the loaded (basic) template."""
    return browser.page.evaluate(SUBGRAPH_ROUND_TRIP_JS)


def subgraph_texts(browser: Browser) -> dict:
    """:data:`SUBGRAPH_TEXTS_JS` on the loaded (basic) template; the subgraph stays open."""
    return browser.page.evaluate(SUBGRAPH_TEXTS_JS)


def leave_subgraph(browser: Browser) -> None:
    browser.page.evaluate("() => app.canvas.setGraph(app.rootGraph)")
    browser.page.wait_for_timeout(300)


# Each node's progress text as the server sends it, then a run's start or end: what each node shows after it.
RUN_STARTS_JS = """async ([texts, event, modes, ran, failed, message]) => {
  const api = window.comfyAPI.api.api;
  for (const [type, text] of Object.entries(texts)) {
    const node = app.graph._nodes.find((n) => n.type === type);
    node.mode = modes[type] ?? 0;
    api.dispatchCustomEvent("progress_text", {nodeId: String(node.id), text});
    if (ran.includes(type)) api.dispatchCustomEvent("executing", String(node.id));
  }
  await new Promise((r) => setTimeout(r, 200));
  const stopper = failed && app.graph._nodes.find((n) => n.type === failed);
  api.dispatchCustomEvent(event, {prompt_id: "confiner-test", timestamp: Date.now(),
                                  ...(stopper ? {node_id: String(stopper.id), node_type: failed} : {}),
                                  ...(message ? {exception_message: message} : {})});
  await new Promise((r) => setTimeout(r, 200));
  return Object.fromEntries(Object.keys(texts).map((type) => {
    const node = app.graph._nodes.find((n) => n.type === type);
    return [type, node.widgets.find((w) => w.name === "$$node-text-preview")?.value ?? null];
  }));
}"""


def run_starts(browser: Browser, texts: dict, event: str = "execution_start", modes: dict | None = None,
               ran: tuple = (), failed: str | None = None, message: str | None = None) -> dict:
    """node type -> its text after ``texts`` arrived and then the server's ``event`` (a run's start, or its end:
    execution_success / _error / _interrupted), each node in LiteGraph mode ``modes[type]`` (0 always, 2 never, 4
    bypass; default 0), the types in ``ran`` executed by the run (the server's "executing"), an error's event naming
    the first node of type ``failed`` as the server names the node that raised, with its ``message``
    (:data:`RUN_STARTS_JS`)."""
    return browser.page.evaluate(RUN_STARTS_JS, [texts, event, modes or {}, list(ran), failed, message])


# A fresh node of each type (as an artist adds one), its progress text then a preview as a run sends them: the height
# the text's box needs (its scroll height) and the height it is shown at.
FRESH_TEXT_JS = """async ([types, text, png]) => {""" + ARRIVALS_JS + """
  app.graph.clear();
  const out = {};
  let x = 80;
  for (const type of types) {
    const node = LiteGraph.createNode(type);
    node.pos = [x, 10];
    x += node.size[0] + 30;
    app.graph.add(node);
    const created = Array.from(node.size);
    await sendText(node, text);
    if (png) await sendPreview(node, png);
    app.canvas.draw(true, true);
    const last = text.split("\\n").at(-1);
    const box = Array.from(document.querySelectorAll(".dom-widget .overflow-y-auto"))
      .find((e) => (e.innerText || "").includes(last));
    out[type] = {needed: box?.scrollHeight ?? null, shown: box?.clientHeight ?? null, preview: !!node.imgs?.length,
                 size: Array.from(node.size), created, saved: JSON.stringify(node.serialize()).includes(last)};
  }
  return out;
}"""


def fresh_nodes_show_text(browser: Browser, types: list, text: str, png_base64: str) -> dict:
    """node type -> the height its progress text needs and is shown at, on a fresh node under a preview, its size
    once added (``created``) and after (``size``), and whether the text is in the node as a workflow saves it
    (:data:`FRESH_TEXT_JS`)."""
    return browser.page.evaluate(FRESH_TEXT_JS, [types, text, png_base64])


def progress_arrives(browser: Browser, node_type: str, text: str, png_base64: str) -> dict:
    """Widget heights of the loaded graph's first ``node_type`` node before a run, once its progress text arrived,
    and once a preview arrived too (:data:`PROGRESS_ARRIVES_JS`)."""
    return browser.page.evaluate(PROGRESS_ARRIVES_JS, [node_type, text, png_base64])


def measure_sizes(browser: Browser, types: list) -> dict:
    """The frontend's computed (minimum) size of a fresh node of each type."""
    return browser.page.evaluate(MEASURE_JS, types)


def load_template(browser: Browser, workflow: dict, name: str) -> list:
    return browser.page.evaluate(LOAD_JS, [workflow, name])


# The progress text of the loaded graph's nodes of the pack, by node id; ``send``: type -> text to send first.
TEXTS_JS = """async (send) => {""" + ARRIVALS_JS + """
  for (const [type, text] of Object.entries(send)) {
    await sendText(app.graph._nodes.find((n) => n.type === type), text);
  }
  const out = {};
  for (const node of app.graph._nodes.filter((n) => n.type.startsWith("ConFiner"))) {
    out[node.id] = node.widgets?.find((w) => w.name === "$$node-text-preview")?.value ?? "";
  }
  return out;
}"""


def node_texts(browser: Browser, send: dict | None = None) -> dict:
    """The loaded graph's ConFiner nodes' progress texts by node id, after sending ``send`` (type -> text)."""
    return browser.page.evaluate(TEXTS_JS, send or {})


# The loaded graph's ConFiner nodes that hold a preview (the frontend's previews by node), after a preview sent as the
# server sends one to the first node of each type in ``types``.
PREVIEWS_JS = """async ([types, png]) => {
  const api = window.comfyAPI.api.api;
  const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
  for (const type of types) {
    const id = String(app.graph._nodes.find((n) => n.type === type).id);
    api.dispatchCustomEvent("b_preview_with_metadata", {blob: new Blob([bytes], {type: "image/png"}), nodeId: id,
                                                        displayNodeId: id, promptId: "confiner-test"});
  }
  await new Promise((r) => setTimeout(r, 300));
  return app.graph._nodes.filter((n) => n.type.startsWith("ConFiner") && app.nodePreviewImages?.[String(n.id)]?.length)
    .map((n) => n.type).sort();
}"""


def node_previews(browser: Browser, png_base64: str, send: tuple = ()) -> list:
    """The types of the loaded graph's ConFiner nodes that hold a preview, after sending one to the first node of each
    type in ``send`` (:data:`PREVIEWS_JS`)."""
    return browser.page.evaluate(PREVIEWS_JS, [list(send), png_base64])


def switch_tab(browser: Browser, name: str) -> None:
    """Clicks the workflow tab ``name`` (as an artist switches between open workflows)."""
    browser.page.get_by_text(name, exact=True).first.click()
    browser.page.wait_for_timeout(800)


SOCKET_LABELS_JS = """(prefix) => {
  const drawn = (slot) => slot.label || slot.localized_name || slot.name;
  const unlike = [];
  for (const node of app.graph._nodes.filter((n) => n.type.startsWith(prefix))) {
    const fresh = LiteGraph.createNode(node.type);
    for (const slot of node.inputs) {
      const twin = fresh.inputs.find((s) => s.name === slot.name);
      if (twin && drawn(twin) !== drawn(slot)) unlike.push([node.type, slot.name, drawn(slot), drawn(twin)]);
    }
  }
  return unlike;
}"""


def socket_labels_unlike_new_nodes(browser: Browser, prefix: str) -> list:
    """[node type, input, label drawn, label on a new node] for every loaded node of types starting with ``prefix``
    whose input socket reads otherwise than on a node of that type added fresh."""
    return browser.page.evaluate(SOCKET_LABELS_JS, prefix)


NOTES_CUT_JS = """() => app.graph._nodes.filter((n) => n.type === 'MarkdownNote').map((n) => {
  const box = n.widgets[0].element;                      // the note's markdown, drawn by the frontend as HTML
  const text = box.querySelector('.ProseMirror') || box;
  return [n.title, text.scrollHeight, box.clientHeight];
}).filter(([, needed, shown]) => needed > shown)"""


def notes_cut(browser: Browser) -> list:
    """[title, height its text needs, height shown] of every markdown note whose text the frontend cuts."""
    return browser.page.evaluate(NOTES_CUT_JS)


def missing_nodes_dialog(browser: Browser) -> str | None:
    """Text of the frontend's missing-nodes dialog if it is shown ("This workflow has missing nodes")."""
    for locator in (browser.page.locator(".comfy-missing-nodes"),
                    browser.page.get_by_text("This workflow has missing nodes")):
        if locator.count() and locator.first.is_visible():
            return locator.first.inner_text()[:500]
    return None


def missing_models_offered(browser: Browser) -> str:
    """Text of the frontend's missing-models dialog ('' when not shown): one entry per model, 'folder / file', with
    a Download button for the links the frontend accepts."""
    dialog = browser.page.locator(".p-dialog").filter(has=browser.page.locator(".comfy-missing-models"))
    return dialog.first.inner_text() if dialog.count() and dialog.first.is_visible() else ""


def close_dialogs(browser: Browser) -> None:
    browser.dismiss()


def overlaps(nodes: list) -> list:
    """Pairs of nodes whose drawn boxes (title bar included) intersect with positive area."""
    found = []
    for i, a in enumerate(nodes):
        ax, ay, aw, ah = a["box"]
        for b in nodes[i + 1:]:
            bx, by, bw, bh = b["box"]
            if min(ax + aw, bx + bw) - max(ax, bx) > 0 and min(ay + ah, by + bh) - max(ay, by) > 0:
                found.append((f"{a['id']}:{a['title']}", f"{b['id']}:{b['title']}"))
    return found
