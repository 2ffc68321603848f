// The pack's one frontend extension: how its nodes that write text (the sampling nodes, and the Noise Rescheduler's
// warning) show a run.
//
// * The Long Video's prompt-schedule box keeps its height. The frontend shares a node's free height among its
//   growable widgets: before a run the box took all of it (440 px on the template), then gave it up to the progress
//   text and the live preview as they arrived (75 px), and every widget below it jumped up while an artist may have
//   been about to click one. A fixed height (about ten lines) leaves the rest of the node to the text and preview.
// * A run's progress text gets room for every line (textHeight): the frontend gave it two lines, and under a preview
//   the rest was cut on a node added by hand.
// * A run's progress text is not saved with the workflow. The frontend keeps it as a widget value, so a file written
//   by one run carried the text of the run before it ("cancelled after evaluation 3/15" beside a finished video).
// * ... but it survives a switch of workflow tabs: the frontend reloads a tab's graph from its saved state, which
//   holds no text, and every warning and "done" line was gone (the console was the only record). The page keeps
//   each node's last text in memory, by graph and node id (a tab keeps its graph's id; two tabs of one template
//   have two), and shows it again when that graph is loaded; and the node's last preview with it.
//
// * A node of the pack that a run takes from ComfyUI's cache says so: under its last run's "done" line, or where it
//   showed nothing (a workflow opened afresh). There the server's copy of the text that run ended on (its UI output,
//   which ComfyUI sends again for a cached node) takes the place of "from the cache" once it comes: a trial's
//   reopened template showed "done · from the cache" alone, its "AnimateDiff bypassed" warning gone as if fixed.
//   The Refine Experts bundle, blank there, says what it holds the same way.
// * A run's start clears a sampling node's "stopped by an error" or "cancelled" from the run before. A node that runs
//   says how it goes at once; one that does not (an upstream node failed) kept blaming itself for the old error. A
//   "done" stays: a node served from the cache did finish, but not on a node muted or bypassed, which the run leaves
//   out (its last "done" read as if it had run), nor on one a refused Run would have left out.
// * A run's end (finished, failed or cancelled) clears a "waiting for its turn" the Refine Sampler showed from its
//   lazy check: its turn never came (Cancel, or an upstream error), and the text stayed with the queue empty. A run
//   that failed or was cancelled also clears the text of the pack's nodes it neither ran nor took from the cache:
//   after a failure upstream, a Refine Sampler went on showing the warnings of a run with another model. After a
//   failure each of them says which node stopped the run ("not run: ConFiner Refine Experts (bundle) stopped the
//   run (see the error)"): a node without text of its own failed, and once its dialog was closed nothing on the
//   canvas told of it.
// * A Run queued with some of its outputs refused (an input failed its check) runs the others with no dialog: each
//   refused node of the pack says why, and each the Run left out which node was refused (a refused chain kept its
//   last "done" and preview as if this Run had made them); a node whose result reaches no output (its save node
//   muted) says so. A failure names a node by its title, with its id beside another of the same title (two pasted
//   chains). A cancelled run says so on the nodes it never reached.
// * A Refine Sampler "waiting for its turn" shows no preview: the frontend keeps a node's last preview until a new one
//   comes, and through the whole control stage the waiting sampler showed the run before's video as this run's. Nor
//   does a node saying "not run: ...".
// * An input ComfyUI refuses as missing because the node it comes from is bypassed or muted ("Required input is
//   missing: experts", the link there on the canvas) names that node and how to switch it back on.
// * A message of the pack's nodes that ComfyUI files under every input its check reads is shown once, under the input
//   it names: the Long Video's schedule messages came three times in one dialog.
// * A text shown while no run goes on (a refused Run's "not run", a tab switched back to) has no loading bar beside
//   it: the frontend drew one until the next run.
// * A node added fresh is 430 px wide: at the frontend's 210 its labels were cut ("control after genera…"), and a
//   line of its text (at most 60 characters) wrapped inside a word (the frontend breaks its text anywhere).
// * The sockets of a workflow saved before the pack labelled them (the first release's files) read as on a node
//   added fresh ("control model", not "control_model"): the frontend takes a loaded socket's label from the file,
//   which had none, so one node mixed raw ids with worded labels. The frontend 1.27 (ComfyUI 0.3.64) labels neither
//   sockets nor widgets from the definitions: there they read in the same words as on 1.35 ("refine seed", not
//   "seed"; the templates' notes and the help pages name them so).
// * The nodes whose seed lays out the structure keep it when added fresh (control after generate "fixed", where the
//   frontend's default is "randomize"): the Control Expert, the Long Video and the Noise Rescheduler. The templates
//   teach "control seed fixed, refine seed randomize: new detail on the same structure", and in a graph built by
//   hand the structure changed at every Run. The Refine Sampler keeps the frontend's "randomize". A workflow's saved
//   value stays.
//
// * All of it holds for the pack's nodes inside subgraphs: ComfyUI runs them under ids "<subgraph node>:<node>", which
//   the frontend 1.35 could not look up (it threw "Subgraph not found"), so none of their texts ever showed. Such an
//   id now reaches its node where the canvas shows the subgraph, and texts that came while it showed another graph
//   appear when the subgraph is opened. A graph shown again shows its text boxes: the frontend hid them all once a
//   subgraph had been opened, the top graph's too. A failure inside one is named with the subgraph ("ConFiner
//   Control Expert (in New Subgraph)"), where it was the class id.
//
// tests/test_comfy_browser.py checks these with progress text, a preview and a run's start dispatched as the server
// sends them.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

// the nodes that show a progress text: the three sampling nodes and the Noise Rescheduler (a warning; it was saved
// into workflows and output files, and its second line was cut)
const TEXT_NODES = new Set(["ConFinerControlExpert", "ConFinerCoordinatedSampler", "ConFinerLongSegmenter",
                            "ConFinerNoiseRescheduler"]);
// the nodes whose text is sized to fit and never saved into a workflow (the frontend saves a text widget's value
// with the node's widgets): the text nodes, and the Refine Experts bundle, whose text says what it holds and has no
// run state to keep
const SHOWS_TEXT = new Set([...TEXT_NODES, "ConFinerRefineExperts"]);
const PROGRESS_TEXT = "$$node-text-preview"; // the frontend's name for the widget that shows a node's progress text
const SCHEDULE_BOX = { node: "ConFinerLongSegmenter", widget: "segment_prompts", height: 160 };
// under any warning lines; a bypass note too, said again at the start where it still holds (one kept saying "bypassed
// with its subgraph" after the un-bypass, its node served from the cache)
const ENDED_BADLY = /^(stopped by an error|cancelled|not run: |bypassed)/m;
const WAITING = /^waiting for its turn/m;
// A text saying this Run did not run the node (refused, left out, cancelled before its turn, stopped by another): the
// preview beside it was a run before's video (a trial read it as this Run's).
const NOT_RUN = /^not run:/;
const CANVAS_PREVIEW = "$$canvas-image-preview"; // the frontend's widget that draws a node's preview images
const CACHED = "done · from the cache\n(an earlier run with the same inputs made it)";
// ... under the text of the run that made it (the Control Expert, its seed fixed, kept "done · ... 16.3 s" through
// every later Run as if each had made it)
const REUSED = "reused by this run (from the cache)";
// The prompt this page queued last, until the server's answer files it under its id (QUEUED): a cached node's events
// can come first.
let sending = null;
// The seed a node was queued with, as its own texts end ("seed 926..."): a result ComfyUI's cache serves was made by
// the same inputs, so by that seed, while the widget already shows the next one ("randomize"), and the templates'
// notes say to fix the seed the node's text names (a workflow opened from its WEBP said no seed).
function queuedSeed(promptId, id) {
  const seed = (QUEUED.get(promptId)?.prompt ?? sending)?.[id]?.inputs?.seed;
  return typeof seed === "number" ? `\nseed ${seed}` : "";
}
const DONE = /^done · /m; // (under any warning lines)
// a node added fresh: its width, as the templates' (a line of the pack's text, 60 characters, fits it unbroken)
const FRESH_WIDTH = 430;
// ... and under a sampling node's widgets the room the templates leave for its text and preview
// (tools/build_example_workflows.py PREVIEW_ROOM): added by hand, a Refine Sampler grew by 280 px at its first run,
// over the VAE Decode placed under it (a trial)
const PREVIEW_ROOM = { ConFinerControlExpert: 280, ConFinerCoordinatedSampler: 280, ConFinerLongSegmenter: 400 };
// ... and the bundle's text room (TEXT_ROOM there): a refusal's four lines ran past the node's bottom
const TEXT_ROOM = { ConFinerRefineExperts: 56 };
// A Long Video saved before it had a coherence memory (files of the first release, before 2026-12-01) pulled towards
// the guided prediction; it took today's default, "unguided", and a shared file made another video without a word (a
// trial): such a file loads as "guided" (the node then shows its advanced widgets, this one set)
const FIRST_RELEASE = { node: "ConFinerLongSegmenter", widget: "coherence_memory", value: "guided" };
// the nodes whose seed lays out the structure: "fixed" when added fresh
const STRUCTURE_SEED = new Set(["ConFinerControlExpert", "ConFinerLongSegmenter", "ConFinerNoiseRescheduler"]);
// the widgets each node type declares advanced (nodes/schema.py), name -> default: hidden until the node menu's
// "Show Advanced". The frontend 1.35 copies the declaration into widget.options.advanced but hides by widget.advanced,
// so every one showed on every node (boundary, low-noise cfg, matching, ...)
const ADVANCED = new Map();
// A choice that needs an advanced widget shows the node's advanced widgets when picked: FreeNoise's stride stayed
// hidden after "freenoise" was picked, until a Run was refused over it (a trial). Node -> combo -> value.
const SHOWN_BY_CHOICE = {
  ConFinerNoiseRescheduler: { method: "freenoise" },
  ConFinerLongSegmenter: { noise_init: "freenoise" },
};
// An advanced widget: hidden until its node's "Show Advanced". widget.advanced gives the menu item, the outline and
// the hiding; the frontend 1.35 lays widgets out by widget.hidden alone, so a hidden advanced widget left a gap where
// it would be (the Refine Sampler's matching, between refine mode and refine seed): there it is out of the layout as
// long as its node hides them. A frontend that lays out by visibility (isWidgetRowVisible, 1.4x) needs only the flag.
// The frontend 1.27 (ComfyUI 0.3.64's) keeps a row for every widget, hidden or not: there they all stay shown, as a
// node with blank rows between its widgets read as broken.
function hideUntilShown(node, widgets) {
  for (const widget of widgets) {
    widget.advanced = true;
    if (!node.isWidgetRowVisible) {
      Object.defineProperty(widget, "hidden", { get: () => !node.showAdvanced, set() {}, configurable: true });
    }
  }
  if (node.isWidgetRowVisible || !widgets.length) return;
  try {
    node.arrange?.();   // lays the rows out now: a hidden widget given a row's height keeps one
  } catch {
    // (a node not in a graph yet: the heights are set before the frontend asks for the graph)
  }
  if (widgets.some((widget) => (widget.computedHeight ?? 0) > 0)) {
    for (const widget of widgets) {
      delete widget.hidden;
      widget.advanced = false;
    }
  }
}
const WILL_NOT_RUN = new Set([2, 4]); // LiteGraph's node modes "never" (muted) and bypass: a run leaves them out
const SUBGRAPH_INPUT = -10; // the origin id of a link from a subgraph's inputs (LiteGraph's SUBGRAPH_INPUT_ID)
const NEVER = /$^/;

// The nodes by the ids a run gives them: ComfyUI runs a subgraph's nodes as "<subgraph node id>:<node id>" (nested:
// "a:b:c"), and the frontend, its text among them, knew only the top graph's ids (the pack's texts never showed on
// nodes in a subgraph, and its clean-ups skipped them).
const rootGraph = () => app.rootGraph ?? app.graph;
// The subgraph nodes an id passes through, outermost first, and the node it names (null where there is none).
function nodePath(id) {
  const parts = String(id).split(":");
  const holders = [];
  let graph = rootGraph();
  for (const part of parts.slice(0, -1)) {
    const holder = graph?.getNodeById?.(part);
    if (!holder?.isSubgraphNode?.()) return { holders, node: null };
    holders.push(holder);
    graph = holder.subgraph;
  }
  return { holders, node: graph?.getNodeById?.(parts.at(-1)) ?? null };
}
const nodeById = (id) => nodePath(id).node;
// Every node with its run id, and whether a run leaves it out: 0 where it does not, else the mode that does, its
// own or that of the outermost subgraph node holding it (2 muted, 4 bypassed).
function* allNodes(graph = rootGraph(), prefix = "", out = 0) {
  for (const node of graph?._nodes ?? graph?.nodes ?? []) {
    const id = prefix + String(node.id);
    const left = out || (WILL_NOT_RUN.has(node.mode) ? node.mode : 0);
    yield [id, node, left];
    if (node.isSubgraphNode?.()) yield* allNodes(node.subgraph, `${id}:`, left);
  }
}
// The node an input's link comes from, followed out of subgraphs: a link from a subgraph's input goes on at the input
// of that index on the subgraph node, in the graph around it (a node muted outside a subgraph was "Required input is
// missing: positive" inside, naming no node). Null where no node feeds it.
function inputSource(id, input) {
  const { holders, node } = nodePath(id);
  let current = node;
  let name = input;
  for (let depth = holders.length; current; ) {
    const slot = current.inputs?.findIndex((s) => s.name === name) ?? -1;
    // (the graph's own record: a subgraph node's getInputLink reads its subgraph's outputs instead)
    const linked = slot >= 0 ? current.inputs[slot].link : null;
    const graph = current.graph;   // (1.35 keeps links in a Map; 1.27, without subgraphs, in an object)
    const link = linked != null ? graph?.getLink?.(linked) ?? graph?._links?.get?.(linked) ?? graph?.links?.[linked]
      : null;
    if (!link) return null;
    if (link.origin_id !== SUBGRAPH_INPUT) return current.graph?.getNodeById?.(link.origin_id) ?? null;
    if (!depth) return null;
    current = holders[--depth];
    name = current.inputs?.[link.origin_slot]?.name;
  }
  return null;
}
// A node as an artist finds it: its title, and the subgraph nodes it sits in ("ConFiner Control Expert (in New
// Subgraph)"); ``fallback`` where the id names no node.
function nodeName(id, fallback) {
  const { holders, node } = nodePath(id);
  // (with its id where another node of its graph has the same title: two pasted chains' samplers read the same)
  const twin = node?.title && (node.graph?._nodes ?? []).some((n) => n !== node && n.title === node.title);
  const title = (node?.title || fallback) + (twin ? ` #${node.id}` : "");
  return holders.length ? `${title} (in ${holders.map((h) => h.title).join(" › ")})` : title;
}
// The frontend's id lookup for texts and previews (1.35: executionIdToCurrentId) throws "Subgraph not found" on any
// subgraph node's id: ids it does not resolve are resolved here, to the node's own id where the canvas shows its
// graph.
function resolveSubgraphIds() {
  const workflows = app.extensionManager?.workflow;
  const resolve = workflows?.executionIdToCurrentId;
  if (typeof resolve !== "function" || resolve.confiner) return;
  const patched = function (id) {
    let found;
    try {
      found = resolve.call(this, id);
    } catch {
      found = undefined;
    }
    if (found !== undefined || !String(id).includes(":")) return found;
    const node = nodeById(id);
    return node && node.graph === app.canvas?.graph ? String(node.id) : undefined;
  };
  patched.confiner = true;
  workflows.executionIdToCurrentId = patched;
}
const RAN = new Set(); // the ids of the nodes the current run executed or took from its cache
const LEFT_OUT = new Set(); // ... of the pack's nodes its start said it leaves out (sayLeftOut): their text stays
const WAITED = new Set(); // ... of those whose lazy check said "waiting for its turn" and that have not run since

// The height a node's progress text needs at the node's width: its lines as the frontend wraps them, at most
// TEXT.maxLines (its box scrolls above 200 px). The frontend gives the text 58 px (two lines) whatever it holds, so
// under a preview the lines after the second were cut: the Long Video's applied prompts, a Refine Sampler's "output in
// flux latents: decode with the spatial VAE" under a warning. The frontend's box: 12 px text on 16 px lines, 8 px
// above and below, 16 px each side, in a widget 10 px in from the node's edges.
const TEXT = { lineHeight: 16, vertical: 2 * 8 + 2 * 10, sides: 2 * 16 + 2 * 10, charWidth: 6.2, minLines: 2, maxLines: 10 };
function textHeight(node, value) {
  const perLine = Math.max(20, Math.floor((node.size[0] - TEXT.sides) / TEXT.charWidth));
  const lines = String(value ?? "").split("\n").reduce((n, line) => n + Math.max(1, Math.ceil(line.length / perLine)), 0);
  return TEXT.vertical + TEXT.lineHeight * Math.min(TEXT.maxLines, Math.max(TEXT.minLines, lines));
}

// The worded label of each input socket of the pack's nodes, from their definitions: type -> input id -> label.
const SOCKET_LABELS = new Map();

// Labels a node's sockets that a file left unlabelled (saved before the pack labelled them) and, where the frontend
// labels a widget by its id (1.27 sets its label to its name), its widgets: as the frontend 1.35 labels a node added
// fresh.
function labelInputs(node) {
  const labels = SOCKET_LABELS.get(node.comfyClass);
  if (!labels) return;
  for (const slot of node.inputs ?? []) {
    // (a widget's socket reads by its id on a fresh node too: the widget beside it shows the words)
    if (!slot.label && !slot.widget && labels.has(slot.name)) slot.label = labels.get(slot.name);
  }
  for (const widget of node.widgets ?? []) {
    if ((!widget.label || widget.label === widget.name) && labels.has(widget.name)) {
      widget.label = labels.get(widget.name);
    }
  }
}

function labelOldSockets() {
  for (const [, node] of allNodes()) labelInputs(node);
}

// The frontend's text box draws a loading bar from when it is made until it sees the running nodes change (its watch
// is not immediate): a box made while no run goes on (a refused Run's "not run", a text shown again after a tab
// switch) kept the bar for good beside its text, as if something still worked. An empty progress state, what the
// server sends when no node runs, is such a change; only the execution store listens to it, and it keeps this one
// under an id of its own.
let running = false;
let settling = null;
function settleLoadingBars() {
  if (running || settling) return;
  settling = setTimeout(() => {   // once the boxes just made are mounted
    settling = null;
    if (!running) api.dispatchCustomEvent("progress_state", { prompt_id: "confiner-idle", nodes: {} });
  }, 100);
}

// A node's last progress text in this page, by workflow tab, graph and node id: "<tab> <graph id> <node id>" ->
// text. The tab too: an exported workflow keeps its graph id, and its copy opened in a new tab showed the other
// tab's "done" line before it had run (a trial).
const KEPT = new Map();
const keptKey = (nodeId) =>
  `${app.extensionManager?.workflow?.activeWorkflow?.key ?? ""} ${rootGraph()?.id} ${nodeId}`;

// Takes a node's preview off the canvas (the next preview that arrives shows as ever).
function dropPreview(node) {
  if (node.imgs?.length) node.imgs = [];
  const at = node.widgets?.findIndex((w) => w.name === CANVAS_PREVIEW) ?? -1;
  if (at > -1) {
    node.widgets[at].onRemove?.();
    node.widgets.splice(at, 1);
  }
  node.setDirtyCanvas?.(true, true);
}

// Keeps a node's text as it arrives. An empty text, which the frontend ignores, clears it: the Noise Rescheduler
// sends one when its last run's warning no longer holds.
function keepText(event) {
  const { nodeId, text } = event.detail ?? {};
  const node = nodeId && nodeById(nodeId);
  if (!node || !SHOWS_TEXT.has(node.comfyClass)) return;   // (the bundle's too: it went with a switch of tabs)
  if (TEXT_NODES.has(node.comfyClass) && WAITING.test(text ?? "")) {
    WAITED.add(String(nodeId));
  } else {
    WAITED.delete(String(nodeId));
  }
  if (TEXT_NODES.has(node.comfyClass) && (WAITING.test(text ?? "") || NOT_RUN.test(text ?? ""))) {
    dropPreview(node);
    KEPT_PREVIEWS.delete(keptKey(nodeId));
  }
  if (text) {
    KEPT.set(keptKey(nodeId), text);
    settleLoadingBars();
    // (after the frontend's own handling; a node of a graph not on screen stays as it is: its box would float there)
    setTimeout(() => node.graph === app.canvas?.graph && showTextBox(node), 0);
    return;
  }
  KEPT.delete(keptKey(nodeId));
  const widget = node.widgets?.find((w) => w.name === PROGRESS_TEXT);
  if (widget?.value) {
    widget.value = "";
    node.setDirtyCanvas?.(true, true);
  }
}

// A node's last preview in this page, kept as its text is (same keys): the frontend's previews went with a switch of
// workflow tabs while the texts came back, and a finished video's last frames were gone from its sampler (a trial).
const KEPT_PREVIEWS = new Map();
function keepPreview(event) {
  const { blob, displayNodeId } = event.detail ?? {};
  const node = blob && displayNodeId && nodeById(displayNodeId);
  if (node && TEXT_NODES.has(node.comfyClass)) KEPT_PREVIEWS.set(keptKey(displayNodeId), blob);
}

// The kept texts and previews of the graph just loaded (a tab switched back to, once it is the active tab), sent as
// the server sends them.
function showKeptTexts() {
  const prefix = keptKey("");
  for (const [key, text] of KEPT) {
    const nodeId = key.slice(prefix.length);
    if (key.startsWith(prefix) && nodeById(nodeId)) {
      api.dispatchCustomEvent("progress_text", { nodeId, text });
    }
  }
  for (const [key, blob] of KEPT_PREVIEWS) {
    const nodeId = key.slice(prefix.length);
    if (key.startsWith(prefix) && nodeById(nodeId)) {
      api.dispatchCustomEvent("b_preview_with_metadata", { blob, nodeId, displayNodeId: nodeId, promptId: null });
    }
  }
}

// The frontend's store of the widgets it draws as HTML (1.35: "domWidget"), reached through the page's Vue app; null
// where there is none.
function domWidgetStore() {
  return document.getElementById("vue-app")?.__vue_app__?.config?.globalProperties?.$pinia?._s?.get?.("domWidget") ??
    null;
}

// The text boxes of the pack's nodes in a graph shown again. On a switch of graph the frontend 1.35 keeps active only
// the widgets that are HTML elements (DOMWidgetImpl): a progress text is a component, so once a subgraph had been
// opened every text of the pack's nodes stayed hidden, also on the top graph, until a switch of workflow tabs.
function showTextBoxes(graph) {
  for (const node of graph?._nodes ?? graph?.nodes ?? []) {
    if (SHOWS_TEXT.has(node.comfyClass)) showTextBox(node);
  }
}
// One node's text box shown (the bundle's stayed hidden once its text had been emptied, a re-check: its next text
// came back as a value, never on screen).
function showTextBox(node) {
  const widget = node.widgets?.find((w) => w.name === PROGRESS_TEXT);
  const state = widget && domWidgetStore()?.widgetStates?.get(widget.id);
  if (state && !state.active) state.active = true;
}

// Empties the progress text of every node of the pack whose text matches ``pattern``, or for which
// ``also(id, out)`` (its run id; whether a run leaves it out).
function clearTexts(pattern, also = () => false) {
  for (const [id, node, out] of allNodes()) {
    // (the bundle's text says what it holds, which stays true: only its refusal goes)
    const text = SHOWS_TEXT.has(node.comfyClass) && node.widgets?.find((w) => w.name === PROGRESS_TEXT);
    const sampling = TEXT_NODES.has(node.comfyClass);
    if (text && text.value && (pattern.test(text.value) || (sampling && also(id, out)))) {
      text.value = "";
      KEPT.delete(keptKey(id));
      node.setDirtyCanvas?.(true, true);
    }
  }
}

// After a failed run, each of the pack's nodes it never reached says which node stopped it: a failure in a node
// without text of its own (the Refine Experts bundle, a loader) left the canvas blank once the dialog was closed.
// After a cancelled one, each says it was cancelled: a Refine Sampler "waiting for its turn" went blank.
// Where the failed node has no text of its own (the bundle, a loader, ComfyUI's own nodes), they also give the start
// of its reason: once the dialog was closed, nothing on the canvas said what went wrong there (a trial).
function notRun(detail, cancelled = false) {
  const failed = detail?.node_id != null ? nodeById(detail.node_id) : null;
  const name = detail?.node_id != null ? nodeName(detail.node_id, detail?.node_type) : detail?.node_type;
  if (!name && !cancelled) return;
  const said = !TEXT_NODES.has(failed?.comfyClass) && String(detail?.exception_message ?? "").trim();
  const text = cancelled ? "not run: the run was cancelled before its turn"
    : `not run: ${name} stopped the run` + (said ? `:\n${firstLines(said)}` : " (see the error)");
  sayOnUnreached(text, (node) => node !== failed);
}

// The first ``count`` lines of a message (wrapped), ending "… (see the error)" where it goes on: the server's
// "stopped by an error:" lines by the same rules (nodes/texts.py error_lines; tests/test_node_texts.py runs both). A
// message cut short keeps its fix (fixAt) on its last lines where that leaves a line for its start; a refusal of
// several problems shows its first so, and "(and 1 more: see the error)".
function firstLines(message, count = 3) {
  const lines = wrapped(message).split("\n");
  if (lines.length <= count) return lines.join("\n");
  const [problem, more] = firstProblem(lines.join(" "));
  const [text, tail] = fileFirst(problem, more ? ` (and ${more} more: see the error)` : " (see the error)");
  const first = wrapped(text + tail);
  if (first.split("\n").length <= count) return first;
  const at = fixAt(text);
  const ending = at >= 0 ? wrapped(`${text.slice(at + 2)}${tail}`).split("\n") : [];
  if (at >= 0 && ending.length < count) {
    return [...cut(wrapped(text.slice(0, at + 1)).split("\n"), count - ending.length, " …"), ...ending].join("\n");
  }
  return cut(wrapped(text).split("\n"), count, ` …${tail}`, true).join("\n");
}

// A refusal that leads with a model's file ("... if another model was meant, pick its file there; if this one is,
// ..."): that fix and a tail pointing to the rest (a trial read a VAE's fix for a file in the wrong slot); any other
// text and tail as they are (nodes/texts.py FILE_FIRST).
function fileFirst(text, tail) {
  const at = text.indexOf("; if this one is, ");
  const lead = at >= 0 ? text.slice(0, at) : "";
  return lead.toLowerCase().endsWith("if another model was meant, pick its file there")
    ? [lead, " (if this one is, see the error)"] : [text, tail];
}

// A refusal of several problems ("2 problems: (1) ...; (2) ...") as its first problem alone, and how many more it
// has; any other message as it is, and 0 (nodes/texts.py first_problem).
function firstProblem(text) {
  const sep = text.indexOf(" problems: (1) ");
  const count = sep >= 0 ? text.slice(0, sep) : "";
  const rest = text.slice(sep + " problems: (1) ".length);
  const second = rest.indexOf("; (2) ");
  if (sep < 0 || !/^\d+$/.test(count) || second < 0) return [text, 0];
  return [`${count} problems: (1) ${rest.slice(0, second)}`, Number(count) - 1];
}

// ``lines`` kept to ``count``, the last of them ending ``more`` (within LINE, keeping one word at least) where any
// were left out, or (``force``) where they are just ``count``.
function cut(lines, count, more, force = false) {
  if (lines.length < count || (lines.length === count && !force)) return lines;
  const kept = lines.slice(0, count);
  const words = kept[count - 1].split(" ");
  while (words.length > 1 && (words.join(" ") + more).length > LINE) words.pop();
  kept[count - 1] = words.join(" ") + more;
  return kept;
}

// Where a message's fix begins: the index of its last ": " outside parentheses and quotes ("(e.g. '0: a dog | ...')"
// holds an example's), -1 where it has none; a quote opens after a non-word character and closes before one.
function fixAt(text) {
  const word = (ch) => /[A-Za-z0-9]/.test(ch);
  let depth = 0;
  let quoted = false;
  let at = -1;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    const before = i > 0 ? text[i - 1] : " ";
    const after = i + 1 < text.length ? text[i + 1] : " ";
    if (ch === "'" && !quoted && !word(before)) quoted = true;
    else if (ch === "'" && quoted && !word(after)) quoted = false;
    else if (quoted) continue;
    else if (ch === "(") depth += 1;
    else if (ch === ")") depth = Math.max(0, depth - 1);
    else if (ch === ":" && after === " " && depth === 0) at = i;
  }
  return at;
}

// ``text`` on each of the pack's nodes the run neither reached nor leaves out, where ``also(node, id)``.
function sayOnUnreached(text, also = () => true) {
  for (const [id, node, out] of allNodes()) {
    // (a Refine Sampler whose lazy check ran, "waiting for its turn", never ran its sampling either)
    const reached = RAN.has(id) && !WAITED.has(id);
    if (TEXT_NODES.has(node.comfyClass) && !reached && !out && !LEFT_OUT.has(id) && also(node, id)) {
      api.dispatchCustomEvent("progress_text", { nodeId: id, text });
    }
  }
}

// A message as lines of at most LINE characters, broken between words, a longer word on a line of its own: the
// frontend breaks a text anywhere, also inside a word (nodes/texts.py wraps the server's lines alike).
const LINE = 60;
function wrapped(message) {
  const lines = [];
  for (const word of String(message).split(/\s+/).filter(Boolean)) {
    if (lines.length && lines.at(-1).length + 1 + word.length <= LINE) lines[lines.length - 1] += ` ${word}`;
    else lines.push(word);
  }
  return lines.join("\n");
}

// What ComfyUI said of a node's first refused input, as the pack words it ("te - T_e ..." filed under the input).
// An input whose node is bypassed or muted is "missing" to ComfyUI while its link is there on the canvas: the node
// says which node to switch back on (a trial's bypassed Refine Experts read "Required input is missing: experts").
function refusal(entry, id) {
  const error = entry?.errors?.[0];
  const input = error?.extra_info?.input_name;
  const details = String(error?.details ?? "");
  if (error?.type === "custom_validation_failed" && input && details.startsWith(`${input} - `)) {
    return details.slice(input.length + 3);
  }
  if (error?.type === "required_input_missing" && input) {
    const node = nodeById(id);
    const source = inputSource(id, input);
    if (source && WILL_NOT_RUN.has(source.mode)) {
      const label = SOCKET_LABELS.get(node?.comfyClass)?.get(input) ?? input;
      return source.mode === 4
        ? `${label}: its node ${source.title} is bypassed, which passes nothing on here: un-bypass it (Ctrl+B)`
        : `${label}: its node ${source.title} is muted: unmute it (Ctrl+M)`;
    }
  }
  return [error?.message, details].filter(Boolean).join(": ") || "an input was refused";
}

// The nodes of the pack a Run leaves out, said when it starts: ComfyUI runs only what its valid outputs need, and a
// node it left out kept its last "done" (and its chain the preview) as if this Run had made them. A Run the server
// queued with some of its outputs refused (an input failed its check) runs the others with no dialog, its reason on
// the console alone: each refused node of the pack says why, and each node whose outputs are all refused (also where
// ComfyUI's cache holds its result) which refused node takes it out; a node whose result reaches no output at all (its
// save node muted, or none connected) says that. By prompt id, until that run ends.
const QUEUED = new Map(); // prompt id -> {response, prompt, workflow} (the queued prompt, API format, and its tab)
const activeWorkflow = () => app.extensionManager?.workflow?.activeWorkflow?.path;
let started = null; // the prompt id of the run started last (the queue's answer may come after the start)
// the prompt ids of the runs that ended, the last few: a run refused in its first node ends before the queue's answer
// comes, and its nodes went on "waiting for its turn" after it (5 of 10 fast failures in a trial)
const ENDED = new Set();
const FEEDS_NO_OUTPUT =
  "not run: this Run left it out: no output node\n(a save or preview, not muted) takes its result";
// A bypassed node passes an input of its output's type on: a bypassed Long Video its frame-size latent, which the
// decode made one blank frame of, the Run "completed" without a word (a trial). Said on it at every Run.
// A bypassed Refine Sampler passes its structure on: the save node saved the rough video, unrefined, without a word.
const BYPASSED = {
  ConFinerLongSegmenter: "no video is made here; its latent input passes on unsampled in the video's place",
  ConFinerCoordinatedSampler: "nothing is refined here; the structure passes on unrefined in the video's place",
};
// ``out``: the mode that leaves it out (allNodes); a node in a bypassed subgraph says which subgraph node to switch on
function bypassNote(node, out, id) {
  // (one muted itself stays muted when its subgraph is un-bypassed: nothing to say of the bypass)
  if (out !== 4 || !BYPASSED[node.comfyClass] || node.mode === 2) return "";
  if (node.mode === 4) return wrapped(`bypassed: ${BYPASSED[node.comfyClass]}: un-bypass it (Ctrl+B)`);
  const holder = nodePath(id).holders.find((h) => h.mode === 4);
  return wrapped(`bypassed with its subgraph: ${BYPASSED[node.comfyClass]}: un-bypass ` +
                 `${holder?.title ?? "its subgraph"} (Ctrl+B)`);
}
// What a subgraph node left out says of the pack's nodes in it, where the artist sees it: a bypassed one whose video
// was not made (a trial: a black video saved, nothing said), a muted one whose nodes the frontend 1.35 queued anyway
// (a trial: it ran and saved a video). Cleared at each Run's start.
const HOLDER_NOTES = new Map(); // run id -> {node, key, size}: the node said on, its kept text's key, its size before
function holderNote(holder, inside, queued) {
  const pack = inside.filter(([, node]) => TEXT_NODES.has(node.comfyClass));
  if (holder.mode === 4) {
    const sampler = pack.find(([, node]) => BYPASSED[node.comfyClass]);
    return sampler ? wrapped(`bypassed: ${sampler[1].title} in it makes no video; its input passes on in the ` +
                             `video's place: un-bypass it (Ctrl+B)`) : "";
  }
  if (holder.mode === 2 && pack.some(([id]) => id in queued)) {
    return wrapped("muted, yet the frontend queued the ConFiner nodes in it, and they run: open it and mute them " +
                   "(Ctrl+M)");
  }
  return "";
}
function sayHolderNotes(prompt) {
  for (const [id, node] of allNodes()) {
    if (!node.isSubgraphNode?.() || !WILL_NOT_RUN.has(node.mode)) continue;
    const text = holderNote(node, [...allNodes(node.subgraph, `${id}:`)], prompt ?? {});
    if (text) sayOnHolder(id, node, text);
  }
}
// At a Run's end, the warnings and failures of the pack's nodes in a subgraph, on the subgraph node: they showed only
// once it was opened (a trial: "warning: temporal is an image model" unseen from the top graph).
const FLAGGED = /^(warning|stopped by an error|cancelled|not run)/;
// ``only``: the run ids to list (a refused Run: its refused nodes; the others' "the Run was refused" says nothing)
function sayInnerWarnings(only = null) {
  for (const [id, node, out] of allNodes()) {
    if (!node.isSubgraphNode?.() || id.includes(":") || out || HOLDER_NOTES.has(id)) continue;   // (outermost)
    const lines = [];
    for (const [innerId, inner] of allNodes(node.subgraph, `${id}:`)) {
      if (!SHOWS_TEXT.has(inner.comfyClass) || (only && !only.has(innerId))) continue;
      const text = inner.widgets?.find((w) => w.name === PROGRESS_TEXT)?.value || KEPT.get(keptKey(innerId)) || "";
      // a failure is its whole text (wrapped over lines); a warning, a line of its own
      const flagged = ENDED_BADLY.test(text) && !/^warning/.test(text) ? [text.split("\n").join(" ")]
        : text.split("\n").filter((line) => FLAGGED.test(line));
      if (flagged.length) lines.push(wrapped(`${inner.title}: ${flagged.join("; ")}`));
    }
    if (lines.length) sayOnHolder(id, node, lines.join("\n"));
  }
}
function sayOnHolder(id, node, text) {
  if (!HOLDER_NOTES.has(id)) HOLDER_NOTES.set(id, { node, key: keptKey(id), size: [...node.size] });
  keepNoteOutOfSaves(node);
  api.dispatchCustomEvent("progress_text", { nodeId: id, text });
  // room for it: a subgraph node is as tall as its promoted widgets, and the note's box showed none of it
  setTimeout(() => {
    const widget = node.widgets?.find((w) => w.name === PROGRESS_TEXT);
    if (widget) widget.serialize = false;   // (as the pack's nodes' texts: never saved into a workflow)
    if (widget?.options) widget.options.getMinHeight = () => textHeight(node, widget.value);
    showTextBox(node);   // (the frontend left it hidden)
    node.setSize?.([Math.max(node.size[0], FRESH_WIDTH), Math.max(node.size[1], node.computeSize?.()[1] ?? 0)]);
    node.setDirtyCanvas?.(true, true);
  }, 0);
}
// A saved or exported workflow has the subgraph node as it was before its note: the frontend lists a subgraph node's
// own widgets among its promoted ones (a trial's export held ["-1", "$$node-text-preview"]) and it was grown to show it
function keepNoteOutOfSaves(node) {
  if (node.confinerSavesClean) return;
  node.confinerSavesClean = true;
  const onSerialize = node.onSerialize;
  node.onSerialize = function (o) {
    onSerialize?.call(this, o);
    const note = [...HOLDER_NOTES.values()].find((n) => n.node === this);
    if (!note) return;
    o.size = [...note.size];
    // its own entry only (an inner node's text promoted on purpose stays); some frontends keep the list as JSON
    const saved = o.properties?.proxyWidgets;
    let promoted = saved;
    try {
      if (typeof saved === "string") promoted = JSON.parse(saved);
    } catch (e) {
      return;
    }
    if (!Array.isArray(promoted)) return;
    const kept = promoted.filter(([id, name]) => !(String(id) === "-1" && name === PROGRESS_TEXT));
    o.properties = { ...o.properties, proxyWidgets: typeof saved === "string" ? JSON.stringify(kept) : kept };
  };
}
function clearHolderNotes() {
  // (the node itself, not its id: after a switch of tabs an id names another workflow's node)
  for (const { node, key, size } of HOLDER_NOTES.values()) {
    const text = node.widgets?.find((w) => w.name === PROGRESS_TEXT);
    if (text) text.value = "";   // (as clearTexts: the frontend keeps a text an empty one would replace)
    KEPT.delete(key);
    node.setSize?.(size);
    node.setDirtyCanvas?.(true, true);
  }
  HOLDER_NOTES.clear();
}
function sayLeftOut({ response, prompt, workflow }) {
  if (workflow !== activeWorkflow()) return;   // (the canvas shows another tab: its nodes have other ids)
  const errors = response.node_errors ?? {};
  const say = (id, text) => {
    LEFT_OUT.add(id);
    api.dispatchCustomEvent("progress_text", { nodeId: id, text });
  };
  // (the Refine Experts bundle too, outlined red: it kept the last Run's "spatial: ..." as if it had run)
  for (const [id, entry] of Object.entries(errors)) {
    if (SHOWS_TEXT.has(entry?.class_type)) say(id, wrapped(`not run: ${refusal(entry, id)}`));
  }
  prompt = prompt ?? {};
  sayHolderNotes(prompt);
  const graph = promptGraph(prompt);
  const refused = new Set(Object.values(errors).flatMap((entry) => (entry?.dependent_outputs ?? []).map(String)));
  for (const [id, node, out] of allNodes()) {
    const bypassed = bypassNote(node, out, id);
    if (bypassed) say(id, bypassed);
    if (!TEXT_NODES.has(node.comfyClass) || out || id in errors || !(id in prompt)) continue;
    const outputs = graph.outputsOf(id);
    if (!outputs.size) {
      say(id, FEEDS_NO_OUTPUT);
      continue;
    }
    if (![...outputs].every((o) => refused.has(o))) continue;
    // the refused node of the same output, the one it feeds first, else one that feeds it
    const ids = Object.keys(errors)
      .filter((e) => (errors[e]?.dependent_outputs ?? []).some((o) => outputs.has(String(o))));
    const fed = ids.find((e) => graph.reaches(id, e));
    const feeding = ids.find((e) => graph.reaches(e, id));
    const by = fed ?? feeding ?? ids[0] ?? Object.keys(errors)[0];
    const how = by === fed ? ", which it feeds," : by === feeding ? ", which feeds it," : "";
    say(id, `not run: this Run left it out, as\n${nodeName(by, errors[by]?.class_type)}${how} was refused`);
  }
}

// The pack's sampling nodes a Run will run (queued from this tab, neither left out nor served from ComfyUI's cache),
// said as soon as ComfyUI names what its cache serves: "waiting for its turn" until their own text comes. A Refine
// Sampler behind another, its structure from the cache, stood blank (its own check says it only when its turn comes),
// and a Control Expert kept the last Run's "done" (or nothing) while the loaders before it loaded, 30 s in a trial.
const SAYS_WAITING = new Set(["ConFinerControlExpert", "ConFinerCoordinatedSampler", "ConFinerLongSegmenter"]);
const WAITING_TEXT = "waiting for its turn\n(after the nodes queued before it)";
let cachedNow = null; // the ids ComfyUI's cache serves in the run started last (null until it says)
function sayWaiting(promptId) {
  const queued = QUEUED.get(promptId);
  if (!queued || !cachedNow || queued.workflow !== activeWorkflow()) return;
  for (const [id, node, out] of allNodes()) {
    if (SAYS_WAITING.has(node.comfyClass) && !out && id in (queued.prompt ?? {}) && !cachedNow.has(id) &&
        !LEFT_OUT.has(id) && !RAN.has(id)) {
      api.dispatchCustomEvent("progress_text", { nodeId: id, text: WAITING_TEXT });
    }
  }
}

// A queued prompt (API format) as a graph: the output nodes each node's result reaches, and whether one node's
// result reaches another.
function promptGraph(prompt) {
  const takers = new Map(); // id -> the ids taking its output
  for (const [id, node] of Object.entries(prompt)) {
    for (const link of Object.values(node?.inputs ?? {})) {
      if (Array.isArray(link) && link.length === 2) {
        const from = String(link[0]);
        if (!takers.has(from)) takers.set(from, []);
        takers.get(from).push(id);
      }
    }
  }
  // (a node type's own flag; a node no other takes where the frontend does not say)
  const isOutput = (id) => globalThis.LiteGraph?.registered_node_types?.[prompt[id]?.class_type]?.nodeData?.output_node
    ?? !takers.has(id);
  const below = new Map(); // id -> every id its result reaches, itself included
  const reached = (id) => {
    if (!below.has(id)) {
      below.set(id, new Set([id]));
      for (const taker of takers.get(id) ?? []) for (const r of reached(taker)) below.get(id).add(r);
    }
    return below.get(id);
  };
  return {
    outputsOf: (id) => new Set(id in prompt ? [...reached(id)].filter(isOutput) : []),
    reaches: (from, to) => from !== to && reached(from).has(to),
  };
}

// ComfyUI files a node's failed check under every input the check reads: the Long Video's schedule message came three
// times in one dialog (under frames, segment prompts and the hidden fps). Each message of the pack's nodes is kept
// once, under the input it names (else the first it was filed under), before the dialog and the node outlines read it.
function fileOnce(response) {
  for (const entry of Object.values(response?.node_errors ?? {})) {
    if (!entry?.class_type?.startsWith("ConFiner") || !Array.isArray(entry.errors)) continue;
    const kept = new Map(); // message -> the error it is kept as
    const errors = [];
    for (const error of entry.errors) {
      const input = error?.extra_info?.input_name;
      const details = String(error?.details ?? "");
      const said = input && details.startsWith(`${input} - `) ? details.slice(input.length + 3) : null;
      if (error?.type !== "custom_validation_failed" || said == null) {
        errors.push(error);
        continue;
      }
      const first = kept.get(said);
      if (!first) {
        kept.set(said, error);
        errors.push(error);
      } else if (said.includes(`(${input})`) && !said.includes(`(${first.extra_info.input_name})`)) {
        errors[errors.indexOf(first)] = error;   // the input the message names
        kept.set(said, error);
      }
    }
    entry.errors = errors;
  }
}

// A refusal that names an advanced widget, hidden until "Show Advanced": its node shows them, so the input the
// message asks to change is on screen (a trial's "FreeNoise stride (stride) = 8 must not exceed ..." named a widget
// the Noise Rescheduler did not show). ``said``: node id -> the messages about it.
function showNamedAdvanced(said) {
  for (const [id, texts] of Object.entries(said)) {
    const node = nodeById(id);
    const advanced = ADVANCED.get(node?.comfyClass);
    if (!advanced?.size || node.showAdvanced) continue;
    if ([...advanced.keys()].some((name) => texts.some((text) => text.includes(`(${name})`)))) {
      node.toggleAdvanced ? node.toggleAdvanced() : (node.showAdvanced = true);
      node.setDirtyCanvas?.(true, true);
    }
  }
}
const refusalTexts = (response) => Object.fromEntries(Object.entries(response?.node_errors ?? {}).map(([id, entry]) =>
  [id, (entry?.errors ?? []).map((error) => `${error?.details ?? ""} ${error?.message ?? ""}`)]));

// A Run the server refused when queued (an input failed its check): nothing ran, and each of the pack's nodes says so
// where its last run's "done" text stood as if this Run had made it; a refused node says why (it said "see the
// error", and once the dialog was closed the reason was gone from the canvas).
function refused(response) {
  const ids = Object.keys(response?.node_errors ?? {});
  const more = ids.length > 1 ? ` and ${ids.length - 1} more` : "";
  const name = ids.length ? nodeName(ids[0], response?.node_errors?.[ids[0]]?.class_type) + more : "";
  clearHolderNotes();
  sayHolderNotes({});   // (a bypass's: nothing of a muted one runs either)
  for (const [id, node, out] of allNodes()) {
    // the bundle says its own refusal (it kept the last Run's "spatial: ...", outlined red), and keeps what it holds
    // where another node was refused
    if (SHOWS_TEXT.has(node.comfyClass) && !TEXT_NODES.has(node.comfyClass)) {
      const shown = node.widgets?.find((w) => w.name === PROGRESS_TEXT)?.value ?? "";
      if (ids.includes(id)) {
        api.dispatchCustomEvent("progress_text",
                                { nodeId: id, text: wrapped(`not run: ${refusal(response.node_errors[id], id)}`) });
      } else if (NOT_RUN.test(shown)) {   // (its refusal of an earlier Run, no longer true: a run start clears it)
        api.dispatchCustomEvent("progress_text", { nodeId: id, text: "" });
      }
      continue;
    }
    if (!TEXT_NODES.has(node.comfyClass)) continue;
    // one the Run leaves out keeps no text of an earlier Run (a muted sampler went on saying its input was refused)
    // (the node named on a line of its own: the box breaks a line anywhere, also inside a long title's words)
    // (a Run whose every output is muted: ComfyUI's dialog says "Prompt has no outputs:" and no more)
    const text = out ? bypassNote(node, out, id)
      : ids.includes(id) ? wrapped(`not run: ${refusal(response.node_errors[id], id)}`)
      : response?.error?.type === "prompt_no_outputs" ? FEEDS_NO_OUTPUT
      : `not run: the Run was refused (see the error)${ids.length ? `\nat ${name}` : ""}`;
    api.dispatchCustomEvent("progress_text", { nodeId: id, text });
  }
  sayInnerWarnings(new Set(ids));   // (a subgraph node outlined red said nothing: a re-check)
}

app.registerExtension({
  name: "ConFiner.SamplingNodes",
  setup() {
    const queuePrompt = api.queuePrompt;
    api.queuePrompt = async function (...args) {
      sending = args[1]?.output ?? null;
      try {
        const response = await queuePrompt.apply(this, args);
        fileOnce(response);
        showNamedAdvanced(refusalTexts(response));
        if (response?.prompt_id != null && args[1]?.output) {
          const queued = { response, prompt: args[1].output, workflow: activeWorkflow() };
          if (ENDED.has(response.prompt_id)) {
            sayLeftOut(queued);   // (its run is over: no node of it waits)
          } else {
            QUEUED.set(response.prompt_id, queued);
            if (started === response.prompt_id) {   // (its run started before the answer came)
              sayLeftOut(queued);
              sayWaiting(started);
            }
          }
        }
        return response;
      } catch (error) {
        if (error?.response) {
          fileOnce(error.response);
          refused(error.response);
          showNamedAdvanced(refusalTexts(error.response));
        }
        throw error;
      } finally {   // (filed under its id, or refused: a later run's cached nodes named a refused prompt's seed)
        sending = null;
      }
    };
    api.addEventListener("progress_text", keepText);
    api.addEventListener("b_preview_with_metadata", keepPreview);
    resolveSubgraphIds();
    // a subgraph opened (or left): its nodes' text boxes, and their kept texts, which came while the canvas showed
    // another graph (after the frontend's own handling of the switch)
    app.canvas?.canvas?.addEventListener("litegraph:set-graph", (event) => setTimeout(() => {
      showTextBoxes(event.detail?.newGraph ?? app.canvas.graph);
      showKeptTexts();
    }, 0));
    // the kept texts of a graph come back once it is loaded: only then is its tab the active one (afterConfigureGraph
    // runs before the switch, under the tab left)
    const loadGraphData = app.loadGraphData;
    app.loadGraphData = async function (...args) {
      const loaded = await loadGraphData.apply(this, args);
      showKeptTexts();
      return loaded;
    };
    // (the server's queue status also says it, on connecting and whenever the queue changes: a run whose end this
    // page missed, a lost connection, does not leave it "running")
    api.addEventListener("status", (event) => {
      const remaining = event.detail?.exec_info?.queue_remaining;
      if (remaining != null) running = remaining > 0;
    });
    api.addEventListener("execution_start", (event) => {
      running = true;
      RAN.clear();
      WAITED.clear();
      LEFT_OUT.clear();
      clearHolderNotes();
      cachedNow = null;
      clearTexts(ENDED_BADLY, (id, out) => out);
      started = event.detail?.prompt_id;
      if (QUEUED.has(started)) sayLeftOut(QUEUED.get(started));
    });
    api.addEventListener("execution_cached", (event) => {
      cachedNow = new Set((event.detail?.nodes ?? []).map(String));
      for (const id of event.detail?.nodes ?? []) {
        RAN.add(String(id));
        // a node served from ComfyUI's cache sends no text: in a page that never ran it (a workflow opened afresh,
        // its result cached), the pack's nodes stayed blank while the video appeared in 0.01 s
        const node = nodeById(id);
        const text = node && TEXT_NODES.has(node.comfyClass) && node.widgets?.find((w) => w.name === PROGRESS_TEXT);
        // (a node in a closed subgraph holds its text as kept, not shown: read as blank, its warnings were replaced)
        const inside = String(id).includes(":") && node && TEXT_NODES.has(node.comfyClass);
        const said = text?.value || (inside && KEPT.get(keptKey(String(id)))) || "";
        if (node && TEXT_NODES.has(node.comfyClass) && !said) {
          api.dispatchCustomEvent("progress_text",
                                  { nodeId: String(id), text: CACHED + queuedSeed(event.detail?.prompt_id, String(id)) });
        } else if (DONE.test(said) && !said.includes(CACHED) && !said.includes(REUSED)) {
          api.dispatchCustomEvent("progress_text", { nodeId: String(id), text: `${said}\n${REUSED}` });
        }
      }
      if (event.detail?.prompt_id === started) sayWaiting(started);
    });
    api.addEventListener("executed", (event) => {
      // a cached node's UI output, sent after "execution_cached": the text its run ended on (warnings, seed), or
      // what the Refine Experts bundle holds (no run state: said as it is, where the bundle stood blank)
      const id = String(event.detail?.node ?? "");
      const kept = event.detail?.output?.confiner_text?.[0];
      const node = kept && cachedNow?.has(id) && nodeById(id);
      if (!node || !SHOWS_TEXT.has(node.comfyClass)) return;
      const said = node.widgets?.find((w) => w.name === PROGRESS_TEXT)?.value ?? "";
      if (TEXT_NODES.has(node.comfyClass) ? said.startsWith(CACHED) : !said) {
        const text = TEXT_NODES.has(node.comfyClass) ? `${kept}\n${REUSED}` : kept;
        api.dispatchCustomEvent("progress_text", { nodeId: id, text });
      }
    });
    api.addEventListener("executing", (event) => {
      if (event.detail != null) RAN.add(String(event.detail?.node ?? event.detail));
    });
    for (const end of ["execution_success", "execution_error", "execution_interrupted"]) {
      api.addEventListener(end, (event) => {
        running = false;
        clearTexts(WAITING);
        QUEUED.delete(event.detail?.prompt_id);
        ENDED.add(event.detail?.prompt_id);
        if (ENDED.size > 32) ENDED.delete(ENDED.values().next().value);
      });
    }
    api.addEventListener("execution_interrupted", (event) => {
      clearTexts(NEVER, (id) => !RAN.has(id) && !LEFT_OUT.has(id));
      notRun(event.detail, true);
      sayInnerWarnings();
    });
    api.addEventListener("execution_success", () => sayInnerWarnings());
    api.addEventListener("execution_error", (event) => {
      clearTexts(NEVER, (id) => !RAN.has(id) && !LEFT_OUT.has(id));
      notRun(event.detail);
      sayInnerWarnings();
      if (event.detail?.node_id != null) {
        showNamedAdvanced({ [event.detail.node_id]: [String(event.detail.exception_message ?? "")] });
      }
    });
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("ConFiner")) return;
    const labels = new Map();
    const advanced = new Map();
    for (const inputs of [nodeData.input?.required, nodeData.input?.optional]) {
      for (const [name, spec] of Object.entries(inputs ?? {})) {
        const label = spec?.[1]?.display_name;
        if (label && label !== name) labels.set(name, label);
        if (spec?.[1]?.advanced) advanced.set(name, spec[1].default);
      }
    }
    SOCKET_LABELS.set(nodeData.name, labels);
    ADVANCED.set(nodeData.name, advanced);
    if (nodeData.name === FIRST_RELEASE.node) {
      const configure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function (info, ...rest) {
        const result = configure?.apply(this, [info, ...rest]);
        const at = this.widgets?.findIndex((w) => w.name === FIRST_RELEASE.widget) ?? -1;
        if (at > -1 && Array.isArray(info?.widgets_values) && info.widgets_values.length <= at) {
          this.widgets[at].value = FIRST_RELEASE.value;
        }
        return result;
      };
    }
  },
  loadedGraphNode(node) {
    // a value someone set is not hidden: a node from a file that does not say whether to show them (saved before
    // the frontend had the toggle, or by hand) opens with its advanced widgets shown where one differs from its
    // default. The templates say (tools/build_example_workflows.py).
    const advanced = ADVANCED.get(node.comfyClass);
    if (advanced?.size && node.showAdvanced === undefined &&
        node.widgets?.some((w) => advanced.has(w.name) && w.value !== advanced.get(w.name))) {
      node.showAdvanced = true;
      node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
    }
  },
  afterConfigureGraph() {
    labelOldSockets();
  },
  nodeCreated(node) {
    if (!node.comfyClass?.startsWith("ConFiner")) return;
    labelInputs(node);
    const advanced = ADVANCED.get(node.comfyClass);
    hideUntilShown(node, (node.widgets ?? []).filter((widget) => advanced?.has(widget.name)));
    for (const [name, value] of Object.entries(SHOWN_BY_CHOICE[node.comfyClass] ?? {})) {
      const combo = node.widgets?.find((w) => w.name === name);
      if (!combo) continue;
      const picked = combo.callback;
      combo.callback = function (chosen, ...rest) {
        const result = picked?.apply(this, [chosen, ...rest]);
        if (chosen === value && !node.showAdvanced) {
          node.toggleAdvanced ? node.toggleAdvanced() : (node.showAdvanced = true);
          node.setDirtyCanvas?.(true, true);
        }
        return result;
      };
    }
    // "Hide Advanced" gives back the room "Show Advanced" took (the frontend grows the node and never shrinks it: a
    // trial found 50-200 px of empty node under the widgets); the room under them (preview, text) stays, also when
    // they are shown (the frontend grows a node only past its widgets: they took the room of a fresh node's preview)
    const toggleAdvanced = node.toggleAdvanced;
    if (advanced?.size && toggleAdvanced) {
      node.toggleAdvanced = function (...args) {
        const before = this.computeSize()[1];
        const height = this.size[1];
        const result = toggleAdvanced.apply(this, args);
        const after = this.computeSize()[1];
        if (!this.showAdvanced && after < before) {
          this.setSize([this.size[0], Math.max(after, this.size[1] - (before - after))]);
        } else if (this.showAdvanced && after > before) {
          this.setSize([this.size[0], Math.max(this.size[1], height + (after - before))]);
        }
        return result;
      };
    }
    // wide enough for its labels: the frontend's 210 px cut "control after genera…" and "temporal timestep
    // matchi…" on a node added by hand (the templates' are 430 px; a loaded node keeps its saved size)
    // and as tall as its shown widgets (it was sized with the advanced ones), with room for its text and preview
    if (node.computeSize) {
      const room = PREVIEW_ROOM[node.comfyClass] ?? TEXT_ROOM[node.comfyClass] ?? 0;
      node.setSize?.([Math.max(FRESH_WIDTH, node.size[0]), node.computeSize()[1] + room]);
    }
    if (!SHOWS_TEXT.has(node.comfyClass)) return;
    if (STRUCTURE_SEED.has(node.comfyClass)) {
      const after = node.widgets?.find((w) => w.name === "control_after_generate");
      if (after) after.value = "fixed";
    }
    const addCustomWidget = node.addCustomWidget;
    node.addCustomWidget = function (widget, ...rest) {
      if (widget?.name === PROGRESS_TEXT) {
        widget.serialize = false;
        if (widget.options) widget.options.getMinHeight = () => textHeight(node, widget.value);
      }
      return addCustomWidget.call(this, widget, ...rest);
    };
    if (node.comfyClass !== SCHEDULE_BOX.node) return;
    const box = node.widgets?.find((w) => w.name === SCHEDULE_BOX.widget);
    if (!box?.options) return;
    box.options.getMinHeight = () => SCHEDULE_BOX.height;
    box.options.getMaxHeight = () => SCHEDULE_BOX.height;
    // the node was sized with the box's own minimum: a node added fresh ended above its last widgets
    node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1] + PREVIEW_ROOM[node.comfyClass])]);
  },
});
