"""Writes example_workflows/*.json (ComfyUI UI format) from compact descriptions, so links, widget orders and the
layout stay consistent. The tests convert every file back to an API prompt and execute it in a real ComfyUI, and a
browser test loads each into the real frontend and checks that no two nodes overlap at their drawn sizes.

Layout: left to right by stage, one group per stage, nodes stacked in columns: the models over two columns (text
encoders on the left, the loaders of the stages on the right with the prompts below them), then the refine experts
above the control stage in one column, then the refinement and the output. Every link then reaches the next column
or the node below in its own, and no link runs under a node, not even one it joins (the frontend draws links below
nodes, where an artist loses them): ``Graph.layout`` moves nodes down where one would, a loader's links to stages
further on (an SD 1.5 checkpoint's model and VAE, Wan's VAE) run through the frontend's own reroutes above the
groups, and a link to the node below loops
round through reroutes beside its column (``reroutes``); a test checks the files the same way
(tests/test_comfy_browser.py). All nodes of a column are as wide as its widest, and at least as large as the
frontend computes them (``tools/frontend_node_sizes.json``, measured by ``tools/measure_frontend_sizes.py`` in the
real frontend), with room for text and for the previews of the sampling and save nodes. The first view
(``extra.ds``) shows the graph at 100 % below the frontend's toolbars, from the read-me note on the left.

Usage: python tools/build_example_workflows.py
"""

from __future__ import annotations

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "example_workflows")
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "frontend_node_sizes.json")) as sizes:
    MEASURED = json.load(sizes)

TITLE_H = 30        # LiteGraph draws a node's title bar above its position
GAP = 36            # between stacked nodes, below the title bar
COLUMN_GAP = 60     # between stage groups
GROUP_PAD = 18
GROUP_TITLE = 46
GROUP_GAP = 30      # between groups stacked in one column
CLEARANCE = 12      # between a link and a node it passes (the frontend draws links about 3 px wide)
CHANNEL_Y = -24     # the lowest row above every group where rerouted links run (link_past_next_column)
CHANNEL_STEP = 12   # between two lanes of rerouted links, across and along
LANE_OFFSET = 20    # from a column's edge to the lane beside it
STUB = 15           # of a link at its socket: drawn over the node it joins
VIEW_LEFT = 90      # right of the frontend's side bar
VIEW_TOP = 170      # below the frontend's tab bar, workflow menu and run toolbar, with the lanes above the groups


class Model:
    """A model file a template uses: the loader widget value, where to get it, the models folder."""

    def __init__(self, name, url, directory, what):
        self.name, self.url, self.directory, self.what = name, url, directory, what

    def entry(self):
        return {"name": self.name, "url": self.url, "directory": self.directory}


# safetensors releases only: the missing-models dialog offers a download only for huggingface.co / civitai.com
# .safetensors/.sft URLs (a .ckpt motion module never gets a button).
SD15 = Model("v1-5-pruned-emaonly.safetensors",
             "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors",
             "checkpoints", "SD 1.5: the spatial expert, and the base the motion models run on")
LIGHTNING = Model("animatediff_lightning_4step_comfyui.safetensors",
                  "https://huggingface.co/ByteDance/AnimateDiff-Lightning/resolve/main/animatediff_lightning_4step_comfyui.safetensors",
                  "animatediff_models", "AnimateDiff-Lightning 4-step motion model: the control expert")
MOTION_V3 = Model("mm_sd15_v3.safetensors",
                  "https://huggingface.co/conrevo/AnimateDiff-A1111/resolve/main/motion_module/mm_sd15_v3.safetensors",
                  "animatediff_models", "AnimateDiff v3 motion model (fp16 safetensors): the temporal expert")
MODELS = (SD15, LIGHTNING, MOTION_V3)
SD15_SPATIAL = Model(SD15.name, SD15.url, SD15.directory, "SD 1.5: the spatial expert (its CLIP and VAE too)")

# Comfy-Org's repackaged single files of the modern families (ComfyUI's own loaders read them)
WAN_REPO = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
WAN22_REPO = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
QWEN_REPO = "https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files"
WAN21 = Model("wan2.1_t2v_1.3B_fp16.safetensors", f"{WAN_REPO}/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors",
              "diffusion_models", "Wan 2.1 text-to-video 1.3B: the control and the temporal expert")
WAN21_ALL = Model(WAN21.name, WAN21.url, WAN21.directory, "Wan 2.1 text-to-video 1.3B: all three experts")
UMT5 = Model("umt5_xxl_fp8_e4m3fn_scaled.safetensors",
             f"{WAN_REPO}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders",
             "UMT5-XXL, Wan's text encoder (CLIPLoader type wan)")
WAN_VAE = Model("wan_2.1_vae.safetensors", f"{WAN_REPO}/vae/wan_2.1_vae.safetensors", "vae",
                "Wan 2.1 VAE: the latent space of Wan 2.1, Wan 2.2 A14B and Qwen-Image")
QWEN_IMAGE = Model("qwen_image_fp8_e4m3fn.safetensors", f"{QWEN_REPO}/diffusion_models/qwen_image_fp8_e4m3fn.safetensors",
                   "diffusion_models", "Qwen-Image: the spatial (image) expert, in Wan 2.1's latent space")
QWEN_VL = Model("qwen_2.5_vl_7b_fp8_scaled.safetensors",
                f"{QWEN_REPO}/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors", "text_encoders",
                "Qwen2.5-VL 7B, Qwen-Image's text encoder (CLIPLoader type qwen_image)")
WAN22_HIGH = Model("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                   f"{WAN22_REPO}/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                   "diffusion_models", "Wan 2.2 T2V A14B high-noise expert (control stage, sigma >= 0.875)")
WAN22_LOW = Model("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
                  f"{WAN22_REPO}/diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
                  "diffusion_models", "Wan 2.2 T2V A14B low-noise expert (control below 0.875, spatial at one "
                                      "frame, temporal)")
# the files of ComfyUI's own FLUX.1-dev template (comfyui-workflow-templates, flux_dev_full_text_to_image)
FLUX_DEV = Model("flux1-dev.safetensors", "https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors",
                 "diffusion_models", "FLUX.1-dev: the spatial (image) expert, in a latent space of its own")
FLUX_CLIP_L = Model("clip_l.safetensors",
                    "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
                    "text_encoders", "CLIP-L, half of Flux's text encoder (DualCLIPLoader type flux)")
FLUX_T5 = Model("t5xxl_fp16.safetensors",
                "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
                "text_encoders", "T5-XXL, the other half of Flux's text encoder")
FLUX_VAE = Model("ae.safetensors",
                 "https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors",
                 "vae", "the FLUX.1 VAE: Flux's latent space (16 channels per frame)")

PROMPT = "a corgi running on a sunny beach, waves, golden hour, highly detailed"
NEGATIVE = "blurry, low quality, watermark, deformed"
WAN_NEGATIVE = "blurry, low quality, static, still frame, watermark, subtitles, deformed, extra limbs"
WAN_FPS = 16.0

# node type -> (socket inputs [(name, type[, label])], outputs [(name, type)]). The label is the input's
# display_name where the node declares one (tests/test_comfy_nodes.py checks them against the nodes): the frontend
# (1.35) draws a socket by its ``label`` and saves it with the workflow, and a loaded workflow keeps the saved one.
SOCKETS = {
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "UNETLoader": ([], [("MODEL", "MODEL")]),
    "CLIPLoader": ([], [("CLIP", "CLIP")]),
    "DualCLIPLoader": ([], [("CLIP", "CLIP")]),
    "VAELoader": ([], [("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "FluxGuidance": ([("conditioning", "CONDITIONING")], [("CONDITIONING", "CONDITIONING")]),
    "ADE_AnimateDiffLoaderGen1": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "EmptyLatentImage": ([], [("LATENT", "LATENT")]),
    "EmptyHunyuanLatentVideo": ([], [("LATENT", "LATENT")]),
    "ConFinerControlExpert": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                               ("latent", "LATENT"), ("low_noise_model", "MODEL", "low-noise model")],
                              [("structure", "LATENT")]),
    "ConFinerRefineExperts": ([("spatial_model", "MODEL", "spatial model"),
                               ("spatial_positive", "CONDITIONING", "spatial positive"),
                               ("spatial_negative", "CONDITIONING", "spatial negative"),
                               ("temporal_model", "MODEL", "temporal model"),
                               ("temporal_positive", "CONDITIONING", "temporal positive"),
                               ("temporal_negative", "CONDITIONING", "temporal negative"),
                               ("spatial_vae", "VAE", "spatial VAE"), ("temporal_vae", "VAE", "temporal VAE"),
                               ("temporal_low_noise_model", "MODEL", "temporal low-noise model")],
                              [("experts", "CONFINER_EXPERTS")]),
    "ConFinerCoordinatedSampler": ([("experts", "CONFINER_EXPERTS"), ("structure", "LATENT"),
                                    ("control_model", "MODEL", "control model"),
                                    ("control_vae", "VAE", "control VAE")], [("latent", "LATENT")]),
    "ConFinerLongSegmenter": ([("control_model", "MODEL", "control model"),
                               ("control_positive", "CONDITIONING", "control positive"),
                               ("control_negative", "CONDITIONING", "control negative"),
                               ("experts", "CONFINER_EXPERTS"), ("latent", "LATENT"), ("clip", "CLIP"),
                               ("control_vae", "VAE", "control VAE"),
                               ("control_low_noise_model", "MODEL", "control low-noise model")],
                              [("latent", "LATENT")]),
    "ConFinerNoiseRescheduler": ([("latent", "LATENT")], [("noise", "NOISE"), ("noise_latent", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "VAEDecodeTiled": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveAnimatedWEBP": ([("images", "IMAGE")], []),
    "MarkdownNote": ([], []),
}

# the size an artist needs (text, previews); never below what the frontend computes
# The pack's nodes: 430 px, where a 60-character line of their text (nodes/host.py LINE_WIDTH) fits the frontend's
# box unbroken (at 380 "load Lightning" broke inside the word)
WANTED = {
    "MarkdownNote": (470, 740),
    "CheckpointLoaderSimple": (380, 100),
    "UNETLoader": (380, 82),
    "CLIPLoader": (380, 106),
    "DualCLIPLoader": (380, 130),
    "FluxGuidance": (420, 60),
    "VAELoader": (380, 58),
    "EmptyHunyuanLatentVideo": (380, 130),
    "ADE_AnimateDiffLoaderGen1": (380, 250),
    "CLIPTextEncode": (420, 190),
    "EmptyLatentImage": (380, 110),
    "ConFinerControlExpert": (430, 240),
    "ConFinerRefineExperts": (430, 190),
    "ConFinerCoordinatedSampler": (430, 210),
    "ConFinerLongSegmenter": (430, 640),
    "VAEDecode": (260, 50),
    "VAEDecodeTiled": (260, 130),
    "SaveAnimatedWEBP": (470, 560),  # room for the animated preview of a 512x512 clip
}
STAGE_COLOURS = {"models": "#3f789e", "prompts": "#8a8a3f", "control": "#a1309b", "refine": "#b58b2a",
                 "output": "#3f8a5a", "readme": "#444444"}


# below their widgets, the sampling nodes draw their progress text (two lines; three on the Long Video, whose
# prompt schedule shows there before and after a run) and each evaluation's live preview: a node without that room
# draws them over the node below it (and the frontend then grows it by 30 px, out of its group)
PREVIEW_ROOM = {"ConFinerControlExpert": 280, "ConFinerCoordinatedSampler": 280, "ConFinerLongSegmenter": 400}
# ... and the Refine Experts bundle its text: what it holds (two lines) or a refusal, "stopped by an error:" and three
# lines of the message, which ran past the node's bottom over its group's border (a trial; the frontend drew the
# template's bundle 44 px taller than its measured size, with its advanced inputs and the text's two lines, and the
# refusal needed 12 more)
TEXT_ROOM = {"ConFinerRefineExperts": 56}


def size_of(type_: str) -> list:
    measured = MEASURED.get(type_) or [0, 0]
    wanted = WANTED.get(type_, (0, 0))
    return [int(max(measured[0], wanted[0]) + 0.999),
            int(max(measured[1], wanted[1]) + PREVIEW_ROOM.get(type_, 0) + TEXT_ROOM.get(type_, 0) + 0.999)]


# Where the frontend (1.35) draws a link: from the output socket (9 left of the node's right edge, rows 20 apart
# from 14 below its top) to the input socket (10 right of the left edge), as a cubic spline whose control points lie
# max(30, length / 4) right of the output and left of the input (LinkConnector's calculateControlPoints).
def socket(node, slot: int, output: bool) -> tuple:
    x = node["pos"][0] + (node["size"][0] - 9 if output else 10)
    return x, node["pos"][1] + 14 + 20 * slot


def link_path(a: tuple, b: tuple) -> list:
    """Points along the link from output ``a`` to input ``b``, every 2 px or closer."""
    length = ((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2) ** 0.5
    reach, steps = max(30.0, length / 4), max(32, int(length / 2))
    p1, p2 = (a[0] + reach, a[1]), (b[0] - reach, b[1])
    return [tuple((1 - t) ** 3 * a[k] + 3 * (1 - t) ** 2 * t * p1[k] + 3 * (1 - t) * t * t * p2[k] + t ** 3 * b[k]
                  for k in (0, 1)) for t in (i / steps for i in range(steps + 1))]


def link_past_next_column(link, by_id: dict, column: dict) -> bool:
    """A link into a column past the next: a loader's model or VAE for a stage further on (an SD 1.5 checkpoint is
    also its prompts' text encoder, in the column left of them), which would cross the columns between (an artist
    trial read the VAE as plugged into the control expert's motion_lora; Wan's VAE ran across a group's title).
    ``column``: a node's x -> its column's number."""
    return column[by_id[link[3]]["pos"][0]] > column[by_id[link[1]]["pos"][0]] + 1


def back_loop(link, by_id: dict, column: dict) -> bool:
    """A link to a node stacked below its source in one column: from the source's right edge back to the left edge
    below, which the frontend draws behind the two nodes it joins."""
    return column[by_id[link[1]]["pos"][0]] == column[by_id[link[3]]["pos"][0]]


def rerouted(link, by_id: dict, column: dict) -> bool:
    """The links drawn through the frontend's own reroutes (:func:`reroutes`) rather than as one spline."""
    return link_past_next_column(link, by_id, column) or back_loop(link, by_id, column)


def reroutes(nodes: list, links: list) -> tuple[list, list]:
    """The frontend's own link reroutes (``extra.reroutes``, ``extra.linkExtensions`` of a 0.4 workflow):

    * links past the next column (one lane per output and target column, its links branching at the end): out of
      the socket, up in the gap right of the source, along a row above every group, down the gap left of the target
      column and into each target. The lane of a higher socket turns up nearer and runs higher, so two lanes leaving
      one loader do not cross;
    * a back-loop (:func:`back_loop`): out to the right of the column, across the gap just below the source, down
      the left of the column and into the target."""
    by_id = {n["id"]: n for n in nodes}
    column = {x: i for i, x in enumerate(sorted({n["pos"][0] for n in nodes}))}
    points, parent_of = [], {}

    def add(x, y, link_ids, parent=None) -> int:
        points.append({"id": len(points) + 1, "pos": [x, y], "linkIds": list(link_ids),
                       **({"parentId": parent} if parent else {})})
        return len(points)

    lanes = {}
    for link in links:
        if link_past_next_column(link, by_id, column):
            lanes.setdefault((link[1], link[2], column[by_id[link[3]]["pos"][0]]), []).append(link)
    order = sorted(lanes)   # by source, then socket (the higher first), then target column
    for k, key in enumerate(order):
        group = lanes[key]
        src, first = by_id[key[0]], by_id[group[0][3]]
        ids = [link[0] for link in group]
        turn = src["pos"][0] + src["size"][0] + LANE_OFFSET + CHANNEL_STEP * k
        row = CHANNEL_Y - CHANNEL_STEP * (len(order) - 1 - k)
        down = first["pos"][0] - LANE_OFFSET - CHANNEL_STEP * k
        last = add(down, row, ids, add(turn, row, ids, add(turn, socket(src, key[1], True)[1], ids)))
        for link in group:
            parent_of[link[0]] = add(down, socket(by_id[link[3]], link[4], False)[1], [link[0]], last)
    for link in links:
        if back_loop(link, by_id, column):
            src, dst = by_id[link[1]], by_id[link[3]]
            right, left = src["pos"][0] + src["size"][0] + LANE_OFFSET, dst["pos"][0] - LANE_OFFSET
            # just clear of the source: the frontend draws a node's badges in the gap above the next one's title
            below = src["pos"][1] + src["size"][1] + CLEARANCE + 1
            chain = [(right, socket(src, link[2], True)[1]), (right, below), (left, below),
                     (left, socket(dst, link[4], False)[1])]
            parent = None
            for x, y in chain:
                parent = add(x, y, [link[0]], parent)
            parent_of[link[0]] = parent
    return points, [{"id": lid, "parentId": rid} for lid, rid in sorted(parent_of.items())]


def link_points(link, by_id: dict, extra: dict | None = None) -> list:
    """Points along a link where the frontend draws it: a spline from socket to socket, or through its reroutes
    (``extra``: a workflow's) as straight runs between them."""
    a, b = socket(by_id[link[1]], link[2], True), socket(by_id[link[3]], link[4], False)
    parent = {e["id"]: e["parentId"] for e in (extra or {}).get("linkExtensions") or []}.get(link[0])
    if parent is None:
        return link_path(a, b)
    reroute = {r["id"]: r for r in (extra or {}).get("reroutes") or []}
    via = []
    while parent is not None:
        via.insert(0, tuple(reroute[parent]["pos"]))
        parent = reroute[parent].get("parentId")
    corners, path = [a, *via, b], []
    for (x0, y0), (x1, y1) in zip(corners, corners[1:]):
        steps = max(1, int(max(abs(x1 - x0), abs(y1 - y0)) / 2))
        path += [(x0 + (x1 - x0) * t / steps, y0 + (y1 - y0) * t / steps) for t in range(steps + 1)]
    return path


def link_crossings(nodes: list, links: list, clearance: float = 0.0, extra: dict | None = None,
                   rerouted_later: bool = False) -> list:
    """(link, node, highest and lowest y of the link over the node's width) for every link that passes over a node,
    or within ``clearance`` above or below it (the node's title bar included): the frontend draws links below nodes,
    so an artist loses the link there. The nodes a link joins count too, but for its stub at their socket
    (``STUB`` wide). Nodes of one column share their x (``Graph.stack``). Links go through their reroutes in
    ``extra`` (a workflow's); ``rerouted_later`` leaves out the links :func:`reroutes` will route (while the layout
    is still moving nodes). The tests check the saved files with this too."""
    by_id = {n["id"]: n for n in nodes}
    column = {x: i for i, x in enumerate(sorted({n["pos"][0] for n in nodes}))}
    found = []
    for link in links:
        _, src, out, dst, inp, _ = link
        if rerouted_later and rerouted(link, by_id, column):
            continue
        path = link_points(link, by_id, extra)
        ends = (path[0][0], path[-1][0])
        for n in nodes:
            x0, x1 = n["pos"][0], n["pos"][0] + n["size"][0]
            y0, y1 = n["pos"][1] - TITLE_H - clearance, n["pos"][1] + n["size"][1] + clearance
            stub = [end for end, joined in zip(ends, (n["id"] == src, n["id"] == dst)) if joined]
            over = [y for x, y in path if x0 <= x <= x1 and all(abs(x - end) > STUB for end in stub)]
            if any(y0 < y < y1 for y in over):
                found.append((link, n, min(over), max(over)))
    return found


class Graph:
    def __init__(self):
        self.nodes, self.links, self.groups = [], [], []
        self.columns: list = []       # per column: [(node, group index)]
        self.group_specs: list = []   # (stage, title)
        self.min_y: dict = {}         # node id -> lowest y the layout may start it at (pushed down to clear links)

    def column(self, stage: str | None = None, title: str | None = None):
        """A new column to the right; with a title, a new group in it, else the current group goes on into it (a
        group over several columns, its nodes side by side)."""
        self.columns.append([])
        if title:
            self.group(stage, title)

    def group(self, stage: str, title: str):
        """A new group in the current column, below the one before."""
        self.group_specs.append((stage, title))

    def node(self, type_, widgets, title=None, models=(), show_advanced=False):
        """A node in the current column and group, below the one before. ``show_advanced``: whether a ConFiner
        node opens with its advanced widgets shown (a template whose note names one); said either way, so the
        frontend does not guess from the values (web/confiner.js)."""
        ins, outs = SOCKETS[type_]
        props = {"Node name for S&R": type_}
        if models:
            props["models"] = [m.entry() for m in models]
        n = {"id": len(self.nodes) + 1, "type": type_, "pos": [0, 0], "size": size_of(type_), "flags": {},
             "order": len(self.nodes), "mode": 0,
             "inputs": [{"name": a, "type": t, "localized_name": a, **({"label": label[0]} if label else {}),
                         "link": None} for a, t, *label in ins],
             "outputs": [{"name": a, "type": t, "links": [], "slot_index": i} for i, (a, t) in enumerate(outs)],
             "properties": props, "widgets_values": widgets}
        if title:
            n["title"] = title
        if type_.startswith("ConFiner"):
            n["showAdvanced"] = show_advanced
        self.nodes.append(n)
        self.columns[-1].append((n, len(self.group_specs) - 1))
        return n

    def link(self, src, out_name, dst, in_name):
        o = next(i for i, x in enumerate(src["outputs"]) if x["name"] == out_name)
        i = next(i for i, x in enumerate(dst["inputs"]) if x["name"] == in_name)
        lid = len(self.links) + 1
        typ = src["outputs"][o]["type"]
        self.links.append([lid, src["id"], o, dst["id"], i, typ])
        src["outputs"][o]["links"].append(lid)
        dst["inputs"][i]["link"] = lid

    def stack(self):
        """Columns left to right, nodes stacked top-down in each (title bars included), a group's title above its
        first node; a node no higher than ``min_y``. A group that goes on into the next column starts there at its
        top; a group that starts below another starts below every column of that one."""
        x, bottoms, tops = 0, {}, {}
        for column in self.columns:
            width = max(n["size"][0] for n, _ in column)
            y, previous = None, None
            for row, (n, gi) in enumerate(column):
                if gi == previous:
                    y = y + GAP + TITLE_H
                elif gi in tops:        # a group from the column before, going on here
                    y = tops[gi] + GROUP_TITLE + TITLE_H
                else:                   # a new group: below the groups above it in this column, in all their columns
                    above = [bottoms[g] for _, g in column[:row]]
                    top = max(above) + GROUP_PAD + GROUP_GAP if above else 0
                    y = top + GROUP_TITLE + TITLE_H
                y = max(y, self.min_y.get(n["id"], 0))
                if gi not in tops:
                    tops[gi] = y - TITLE_H - GROUP_TITLE
                n["pos"] = [x + GROUP_PAD, y]
                n["size"][0] = width    # one width per column: a link leaves every node at the column's edge
                y += n["size"][1]
                bottoms[gi] = max(bottoms.get(gi, 0), y)
                previous = gi
            x += width + 2 * GROUP_PAD + COLUMN_GAP

    def layout(self):
        """Stacks the columns; where a link would pass under a node (the frontend draws links under nodes), moves
        down that node, or the link's two ends where the link needs to come down less than the node would, and
        stacks again, until every link runs clear of the nodes it does not join."""
        by_id = {n["id"]: n for n in self.nodes}
        for _ in range(50):
            self.stack()
            crossings = link_crossings(self.nodes, self.links, CLEARANCE, rerouted_later=True)
            if not crossings:
                break
            link, node, highest, lowest = crossings[0]
            node_down = lowest + CLEARANCE + TITLE_H - node["pos"][1]
            link_down = node["pos"][1] + node["size"][1] + CLEARANCE - highest
            for n, down in ([(by_id[link[1]], link_down), (by_id[link[3]], link_down)] if link_down < node_down
                            else [(node, node_down)]):
                self.min_y[n["id"]] = n["pos"][1] + int(down) + 1
        else:
            raise AssertionError(f"no layout clears the links: "
                                 f"{link_crossings(self.nodes, self.links, rerouted_later=True)[:3]}")
        members = {}
        for column in self.columns:
            for n, gi in column:
                members.setdefault(gi, []).append(n)
        for gi, (stage, title) in enumerate(self.group_specs):
            ns = members[gi]
            left = min(n["pos"][0] for n in ns) - GROUP_PAD
            right = max(n["pos"][0] + n["size"][0] for n in ns) + GROUP_PAD
            top = min(n["pos"][1] for n in ns) - TITLE_H - GROUP_TITLE
            bottom = max(n["pos"][1] + n["size"][1] for n in ns) + GROUP_PAD
            self.groups.append({"title": title, "bounding": [left, top, right - left, bottom - top],
                                "color": STAGE_COLOURS[stage], "font_size": 22, "flags": {}})

    @staticmethod
    def first_view() -> dict:
        """Scale and offset of the first view below the toolbars (screen = (pos + offset) * scale): 100 %, from the
        read-me note and the models it names on the left. No template fits a window whole at a scale whose text
        reads: at the 0.65 that showed them whole, the note's text was 7 px high (an artist trial, 2026-12-04)."""
        return {"scale": 1.0, "offset": [VIEW_LEFT, VIEW_TOP]}

    def save(self, name, description):
        self.layout()
        points, extensions = reroutes(self.nodes, self.links)
        extra = {"ds": self.first_view(), "confiner": {"description": description}}
        if points:
            extra.update(reroutes=points, linkExtensions=extensions)
        crossings = link_crossings(self.nodes, self.links, CLEARANCE, extra)
        assert not crossings, f"{name}: links under nodes: {[(c[0], c[1]['type']) for c in crossings]}"
        wf = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
              "links": self.links, "groups": self.groups, "config": {}, "extra": extra, "version": 0.4}
        path = os.path.join(OUT, name + ".json")
        with open(path + ".tmp", "w") as f:   # the shipped template is replaced whole, never left half-written
            json.dump(wf, f, indent=1)
        os.replace(path + ".tmp", path)


ADE_NODES = ["- **ComfyUI-AnimateDiff-Evolved** (required): the two motion-model loaders.",
             "- **ComfyUI-VideoHelperSuite** (optional): replace *Save Animated WEBP* with *Video Combine* for MP4."]
NATIVE_NODES = ["- None besides this pack: the models load with ComfyUI's own loaders.",
                "- **ComfyUI-VideoHelperSuite** (optional): replace *Save Animated WEBP* with *Video Combine* for MP4."]


#: the templates' file names, which the template browser shows as their titles (and each note's heading)
BASIC = "ConFiner 1 - start here - SD 1.5 and AnimateDiff"
LONG_SD = "ConFiner 2 - long video - SD 1.5 and AnimateDiff"
COMPARE = "ConFiner 3 - compare refine modes - SD 1.5"
WAN_QWEN = "ConFiner 4 - Wan 2.1 and Qwen-Image"
WAN_FLUX = "ConFiner 5 - Wan 2.1 and FLUX.1-dev"
SD_BRIDGE = "ConFiner 6 - SD 1.5 and Wan 2.1 bridged"
LONG_WAN = "ConFiner 7 - long video - Wan 2.1"
A14B = "ConFiner 8 - Wan 2.2 A14B"


def note_text(title: str, what: str, change_first: list, models=MODELS, custom_nodes=ADE_NODES) -> str:
    lines = [f"# {title}", "", what, "", "## Models (file -> folder)"]
    lines += [f"- `{m.name}` -> `ComfyUI/models/{m.directory}/` ({m.what})" for m in models]
    lines += ["", "Missing files are offered for download when the template opens (each loader carries its link).",
              "", "## Custom nodes", *custom_nodes, "", "## Change first"]
    lines += [f"{i}. {c}" for i, c in enumerate(change_first, 1)]
    lines += ["", "The template opens at 100 % on this note and the models; press **.** on the canvas to see the "
                  "whole graph.",
              "The thumbnail is a run of this template's settings on ConFiner's embedded test world.",
              "Every ConFiner node has a help page: the **?** beside it in the **Nodes** library (search \"ConFiner\")."]
    return "\n".join(lines)


# the refine seed draws again on every Run (new detail on the kept, cached structure), as ComfyUI's own templates do;
# the control seed stays until changed (a Run with nothing changed would otherwise give a new video's structure)
SEEDS = ("The seeds: **control** seed (fixed) = a new structure when changed; **refine** seed (randomize) = new "
         "detail on the same structure at every Run; to keep a video, fix it at the seed its node's text names. To "
         "share one, share its output file: it holds the seed that made it.")
LONG_SEED = ("The seed on ConFiner Long Video: fixed, so a Run with nothing changed returns the video made before; "
             "set its *control after generate* to randomize for a new one at every Run.")
CHANGE_FIRST = ["**Positive** prompt (and Negative).",
                "Frames and size on **Size and frame count** (batch size = frames; AnimateDiff is trained on 16).",
                SEEDS]


# Every template has the same columns: the read-me; "1 · Models" over two columns, the text encoders on the left
# (an SD 1.5 checkpoint is one: its CLIP encodes the prompts) and the loaders of the stages on the right, with "2 ·
# Prompts" below them; the refine experts above the control stage; the refinement and the output. Each link of a
# loader, a prompt or a stage then reaches the next column, or the node below in its own, with nothing in between.
# The exception: a loader's links to stages two or more columns on (the SD 1.5 checkpoint's MODEL and VAE, Wan's
# VAE): rerouted above the groups; a link to the node below in its own column loops through reroutes too (rerouted,
# reroutes).

def experts_graph(g, note, prompts_title="2 · Prompts"):
    """Read-me, the checkpoint (text encoder) beside the two motion-model loaders, the prompts below those."""
    g.column("readme", "Read me")
    g.node("MarkdownNote", [note], "About this workflow")
    g.column("models", "1 · Models")
    ckpt = g.node("CheckpointLoaderSimple", [SD15.name], "SD 1.5 checkpoint (spatial expert)", models=[SD15])
    g.column()
    control = g.node("ADE_AnimateDiffLoaderGen1", [LIGHTNING.name, "sqrt_linear (AnimateDiff)"],
                     "Control expert: AnimateDiff-Lightning 4-step", models=[LIGHTNING])
    # both loaders name the schedule autoselect would pick for SD 1.5 motion models, so neither looks set apart
    temporal = g.node("ADE_AnimateDiffLoaderGen1", [MOTION_V3.name, "sqrt_linear (AnimateDiff)"],
                      "Temporal expert: AnimateDiff v3", models=[MOTION_V3])
    g.link(ckpt, "MODEL", control, "model")
    g.link(ckpt, "MODEL", temporal, "model")
    g.group("prompts", prompts_title)
    pos = g.node("CLIPTextEncode", [PROMPT], "Positive")
    neg = g.node("CLIPTextEncode", [NEGATIVE], "Negative")
    for n in (pos, neg):
        g.link(ckpt, "CLIP", n, "clip")
    return ckpt, pos, neg, control, temporal


def refine_experts(g, widgets: list, links: dict, title: str = "3 · Refine experts"):
    """The Refine Experts bundle's group in the current column (``links``: input -> (node, output))."""
    g.group("refine", title)
    experts = g.node("ConFinerRefineExperts", widgets, None)
    for name, (node, out) in links.items():
        g.link(node, out, experts, name)
    return experts


def bundle(g, ckpt, temporal, pos, neg):
    return refine_experts(g, [7.5, 7.5, "latent frames", 7.5, 0.875],
                          {"spatial_model": (ckpt, "MODEL"), "spatial_positive": (pos, "CONDITIONING"),
                           "spatial_negative": (neg, "CONDITIONING"), "temporal_model": (temporal, "MODEL"),
                           "temporal_positive": (pos, "CONDITIONING"), "temporal_negative": (neg, "CONDITIONING")})


def control_group(g, latent_node, model, pos, neg, widgets: list, low_noise=None,
                  title: str = "4 · Control stage: size and structure"):
    """The control stage's group in the current column: the size and frame count over the Control Expert."""
    g.group("control", title)
    latent = g.node(*latent_node, "Size and frame count")
    # a low-noise model's cfg is an advanced widget the A14B note names
    ctrl = g.node("ConFinerControlExpert", widgets, None, show_advanced=low_noise is not None)
    g.link(model, "MODEL", ctrl, "model")
    if low_noise is not None:
        g.link(low_noise, "MODEL", ctrl, "low_noise_model")
    g.link(pos, "CONDITIONING", ctrl, "positive")
    g.link(neg, "CONDITIONING", ctrl, "negative")
    g.link(latent, "LATENT", ctrl, "latent")
    return ctrl


def control_stage(g, control, pos, neg):
    """A 512x512x16 empty latent into the ConFiner Control Expert (4 Euler steps, cfg 1.0)."""
    return control_group(g, ("EmptyLatentImage", [512, 512, 16]), control, pos, neg,
                         [0, "fixed", 4, 1.0, "euler", False, "trailing", 0.0, 1.0, 0.875])


# How the templates decode (issue 15, bench/RESULTS.md). Image VAEs (SD 1.5: a clip is a batch of frames): plain
# VAE Decode, which decodes as many frames at once as fit in free memory by ComfyUI's estimate (2.9 GiB per 512x512
# SD frame, about five times the 0.54 GiB measured) and retries tiled when a batch runs out of memory. With 7 GiB
# free (an 8 GB card) it decodes 16 frames two at a time and peaks with the sampling (4.76 against 4.72 GiB); with
# a whole H200 free, all at once in 0.17 s. VAE Decode (Tiled) would hold the peak down everywhere but decodes every
# frame three times (three tile layouts, blended): 1.77 s, the clip's largest cost after sampling. Video VAEs
# (Wan): VAE Decode (Tiled), ComfyUI's defaults (512-pixel tiles, 64 overlap, 64 frames at a time with 8 of
# overlap), since a video latent is one batch item that a plain decode would take whole.
IMAGE_DECODE = ("VAEDecode", [])
VIDEO_DECODE = ("VAEDecodeTiled", [512, 64, 64, 8])


def refine_sampler(g, ctrl, experts, te: int = 100, mode: str = "coordinated", title=None, matching="auto",
                   seed_after="randomize"):
    """The Refine Sampler on the structure, from T_e = ``te`` on the spatial expert's schedule (a flow expert's 1000
    sigma: 250 is the paper's noise level, chain.DEFAULT_TE); ``matching`` "auto": the paper's same index, or the
    nearest noise level where the experts' schedules put one timestep at different noise levels (a VP and a flow
    expert)."""
    sampler = g.node("ConFinerCoordinatedSampler", [te, 5, mode, matching, 0, seed_after, "spatial"], title)
    g.link(experts, "experts", sampler, "experts")
    g.link(ctrl, "structure", sampler, "structure")
    return sampler


def outputs(g, vae, latents, prefixes, fps=8.0, vae_output="VAE", title=None, decode=IMAGE_DECODE, titles=None,
            save_titles=None):
    """A decode node (``decode``: class and widgets) and a Save Animated WEBP per latent, in the current group: one
    decode over its save; several decodes stacked, their saves in the next column (a link from a decode to its save
    would otherwise pass the nodes between them). ``titles`` / ``save_titles``: one per decode / save, where several
    need telling apart."""
    decodes = []
    for i, latent in enumerate(latents):
        dec = g.node(decode[0], list(decode[1]), titles[i] if titles else title)
        g.link(latent, "latent", dec, "samples")
        g.link(vae, vae_output, dec, "vae")
        decodes.append(dec)
    if len(decodes) > 1:
        g.column()
    for i, (dec, prefix) in enumerate(zip(decodes, prefixes)):
        # (titled as the notes name it: untitled, four templates showed its class name, "SaveAnimatedWEBP")
        save = g.node("SaveAnimatedWEBP", [prefix, fps, False, 90, "default"],
                      save_titles[i] if save_titles else "Save Animated WEBP")
        g.link(dec, "IMAGE", save, "images")


def basic():
    g = Graph()
    ckpt, pos, neg, control, temporal = experts_graph(g, note_text(
        BASIC,
        "AnimateDiff-Lightning lays out a 16-frame structure in 4 steps (control stage); it is noised to T_e = 100 "
        "and refined in 5 coordinated steps by SD 1.5 (spatial expert) and AnimateDiff v3 (temporal expert): "
        "19 expert evaluations in all, the paper's default.", CHANGE_FIRST))
    g.column()
    experts = bundle(g, ckpt, temporal, pos, neg)
    ctrl = control_stage(g, control, pos, neg)
    g.column("output", "5 · Refine, decode and save")
    sampler = refine_sampler(g, ctrl, experts)
    outputs(g, ckpt, [sampler], ["ConFiner/basic"])
    g.save(BASIC, "AnimateDiff-Lightning control, SD 1.5 spatial, AnimateDiff v3 temporal, coordinated.")


def compare_modes():
    g = Graph()
    ckpt, pos, neg, control, temporal = experts_graph(g, note_text(
        COMPARE,
        "One structure, refined three ways side by side with the same seeds: coordinated (the paper's Algorithm 1), "
        "standard (spatial expert only, Eq. 8) and temporal expert only.",
        CHANGE_FIRST[:2] + ["The seeds: **control** seed = a new structure; each Refine Sampler has its own **refine** "
                            "seed (all 0 here): keep them equal to compare the modes on the same noise."]))
    g.column()
    experts = bundle(g, ckpt, temporal, pos, neg)
    ctrl = control_stage(g, control, pos, neg)
    g.column("output", "5 · Refinement, three modes")
    samplers = [refine_sampler(g, ctrl, experts, mode=mode, title=f"Refine: {mode}", seed_after="fixed")
                for mode in ("coordinated", "standard", "temporal")]
    g.column("output", "6 · Decode and save")
    modes = ("coordinated", "standard", "temporal")
    outputs(g, ckpt, samplers, [f"ConFiner/compare_{m}" for m in modes], titles=[f"VAE Decode ({m})" for m in modes],
            save_titles=[f"Save ({m})" for m in modes])
    g.save(COMPARE, "Coordinated vs standard vs temporal-only refinement of one structure.")


def long_video_node(g, frames: int, segment_length: int, control_steps: int, control_cfg: float, te: int,
                    segment_prompts: str, links: dict, sampler: str = "euler"):
    """The ConFiner Long Video node in its group (``links``: input -> (node, output)): all three strategies, 5
    coordinated steps, a fixed seed, seconds keys at the control model's video rate (fps 0)."""
    g.group("control", "4 · ConFiner-Long (segments)")
    seg = g.node("ConFinerLongSegmenter",
                 [frames, segment_length, 0, "fixed", control_steps, control_cfg, sampler, te, 5, "coordinated",
                  "auto", "shuffle", 0, 0.1, True, segment_prompts, "trailing", 0.0, "spatial", "unguided", 1.0,
                  0.875, 0.0],
                 None)
    for name, (node, out) in links.items():
        g.link(node, out, seg, name)
    return seg


def long_video():
    g = Graph()
    ckpt, pos, neg, control, temporal = experts_graph(g, note_text(
        LONG_SD,
        "128 frames as staggered 16-frame segments with consistency initialization, coherence guidance (gamma 0.1) "
        "and staggered refinement; the prompt travels from the beach to the snow at frame 64. The schedule's start "
        "frames must stay below **frames** (the node refuses one past the end).",
        ["**segment prompts** on ConFiner Long Video (prompt travel: `0: prompt | 64: prompt from frame 64`), or "
         "Positive/Negative when segment prompts is empty.",
         "**frames** on ConFiner Long Video (the latent sets only the frame size).",
         LONG_SEED]), "2 · Prompts and frame size")
    empty = g.node("EmptyLatentImage", [512, 512, 1], "Frame size (frames: on Long Video)")
    g.column()
    experts = bundle(g, ckpt, temporal, pos, neg)
    seg = long_video_node(g, 128, 16, 4, 1.0, 100, "0: a corgi running on a sunny beach, golden hour | 64: a corgi "
                          "running through deep snow, winter",
                          dict(control_model=(control, "MODEL"), control_positive=(pos, "CONDITIONING"),
                               control_negative=(neg, "CONDITIONING"), experts=(experts, "experts"),
                               latent=(empty, "LATENT"), clip=(ckpt, "CLIP")))
    g.column("output", "5 · Decode and save")
    outputs(g, ckpt, [seg], ["ConFiner/long"])
    g.save(LONG_SD, "ConFiner-Long, 128 frames, all three strategies, per-segment prompts.")


# ------------------------------------------------------------------------------------------------------------------
# Modern experts: Wan 2.1 / 2.2, Qwen-Image, and SD 1.5 bridged to Wan, through ComfyUI's own loaders

# the control stage of the Wan templates: the undistilled base model with UniPC, Wan's own sampler
WAN_CONTROL = ("Control steps/cfg/sampler: 8 steps at cfg 5 with unipc (UniPC, Wan's own sampler) for the base model; "
               "with a distilled 4-step LoRA (LightX2V) on the control model use 4 steps, cfg 1, euler.")


def wan_change_first(made_for: str = "Wan 2.1 1.3B is made for 832x480.", encoders: int = 2) -> list:
    """``encoders``: the text encoders whose prompts an artist changes (Wan's beside the image expert's; one where
    Wan is every expert: the A14B note spoke of an encoder it does not have)."""
    prompts = ("**Positive** prompts (and Negative): each text encoder gets its own (same words)." if encoders > 1
               else "**Positive** prompt (and Negative).")
    return [prompts,
            "Size and **length** on *Size and frame count*: length 4k+1 (33, 81); width and height multiples of 16 "
            f"(ComfyUI rounds other values to the nearest one without a word). {made_for}",
            SEEDS,
            WAN_CONTROL]


MODERN_SHAPE = [832, 480, 33, 1]


def loader(g, model: Model, title: str, kind: str = "UNETLoader", clip_type: str | None = None):
    widgets = {"UNETLoader": [model.name, "default"], "CLIPLoader": [model.name, clip_type, "default"],
               "VAELoader": [model.name], "CheckpointLoaderSimple": [model.name]}[kind]
    return g.node(kind, widgets, title, models=[model])


def dual_clip_loader(g, first: Model, second: Model, clip_type: str, title: str):
    return g.node("DualCLIPLoader", [first.name, second.name, clip_type, "default"], title, models=[first, second])


def prompts(g, clip, label: str, output: str = "CLIP", negative: str = WAN_NEGATIVE):
    pos = g.node("CLIPTextEncode", [PROMPT], f"Positive ({label})")
    neg = g.node("CLIPTextEncode", [negative], f"Negative ({label})")
    for n in (pos, neg):
        g.link(clip, output, n, "clip")
    return pos, neg


def wan_control(g, model, pos, neg, shape, steps=8, cfg=5.0, low_noise=None, low_cfg=1.0, **title):
    """The control stage: a ``shape`` (width, height, length, batch) empty video latent into the Control Expert."""
    return control_group(g, ("EmptyHunyuanLatentVideo", list(shape)), model, pos, neg,
                         [0, "fixed", steps, cfg, "unipc", False, "trailing", 0.0, low_cfg, 0.875], low_noise, **title)


def modern_readme(g, title: str, what: str, change_first: list, models: tuple) -> None:
    g.column("readme", "Read me")
    g.node("MarkdownNote", [note_text(title, what, change_first, models, NATIVE_NODES)], "About this workflow")


def bundle_links(spatial, spatial_prompts, temporal, temporal_prompts, **vaes) -> dict:
    """The bundle's inputs -> (node, output): each expert's MODEL and prompts, and VAEs (``spatial_vae=(node,
    output)``)."""
    links = {}
    for role, model, (pos, neg) in (("spatial", spatial, spatial_prompts), ("temporal", temporal, temporal_prompts)):
        links.update({f"{role}_model": (model, "MODEL"), f"{role}_positive": (pos, "CONDITIONING"),
                      f"{role}_negative": (neg, "CONDITIONING")})
    return {**links, **vaes}


def refinement(g, ctrl, experts, vae, prefix: str, te: int = 100, vae_output="VAE", title=None,
               decode=VIDEO_DECODE, matching="auto"):
    """The last column: the Refine Sampler, the decode and the save."""
    g.column("output", "5 · Refine, decode and save")
    sampler = refine_sampler(g, ctrl, experts, te, matching=matching)
    outputs(g, vae, [sampler], [prefix], WAN_FPS, vae_output, title, decode)


def wan_qwen_image():
    g = Graph()
    modern_readme(
        g, WAN_QWEN,
        "Wan 2.1 1.3B lays out a 33-frame structure (control stage); it is noised to T_e = 250 (sigma 0.25, the "
        "paper's noise level for a flow model) and refined in 5 coordinated steps by Qwen-Image (spatial expert, "
        "every frame as an image) and Wan 2.1 (temporal expert). "
        "Qwen-Image shares Wan 2.1's latent space, so no VAE runs between the experts. *spatial expert frames*: "
        "**latent frames** (default) refines each of the 9 latent frames as an image, batched, no VAE calls; "
        "**pixel frames** refines each of the 33 pixel frames on its own (decode, per-frame Qwen-Image, encode "
        "through the Wan VAE on *spatial VAE*): 4x the image work and 4 VAE calls per step, closer to what an image "
        "model was trained on.",
        wan_change_first() + ["Qwen-Image's cfg (*spatial cfg*, 2.5) and Wan's (*temporal cfg*, 5) on the bundle."],
        (WAN21, QWEN_IMAGE, UMT5, QWEN_VL, WAN_VAE))
    g.column("models", "1 · Models")
    umt5 = loader(g, UMT5, "UMT5 text encoder (Wan)", "CLIPLoader", "wan")
    qwen_vl = loader(g, QWEN_VL, "Qwen2.5-VL text encoder (Qwen-Image)", "CLIPLoader", "qwen_image")
    g.column()
    wan = loader(g, WAN21, "Wan 2.1 T2V 1.3B (control + temporal)")
    qwen = loader(g, QWEN_IMAGE, "Qwen-Image (spatial expert)")
    vae = loader(g, WAN_VAE, "Wan 2.1 VAE", "VAELoader")
    g.group("prompts", "2 · Prompts")
    wan_pos, wan_neg = prompts(g, umt5, "Wan")
    qwen_pos, qwen_neg = prompts(g, qwen_vl, "Qwen-Image")
    g.column()
    experts = refine_experts(g, [2.5, 5.0, "latent frames", 5.0, 0.875],
                             bundle_links(qwen, (qwen_pos, qwen_neg), wan, (wan_pos, wan_neg),
                                          spatial_vae=(vae, "VAE")))
    ctrl = wan_control(g, wan, wan_pos, wan_neg, MODERN_SHAPE)
    refinement(g, ctrl, experts, vae, "ConFiner/wan_qwen_image", te=250, title="VAE Decode tiled (Wan 2.1 VAE)")
    g.save(WAN_QWEN, "Wan 2.1 control, Qwen-Image spatial, Wan 2.1 temporal: one latent space.")


def sd15_bridge_wan():
    g = Graph()
    modern_readme(
        g, SD_BRIDGE,
        "Wan 2.1 1.3B makes the 33-frame structure and is the temporal expert; SD 1.5 is the spatial expert. They "
        "work in different latent spaces (SD: 4 channels per frame; Wan: 16 channels, 4 frames per latent frame), "
        "so ConFiner bridges them through their VAEs: the structure is decoded with the Wan VAE and encoded with "
        "SD's (2 VAE calls), and every coordinated step hands the clean estimate over and back (4 VAE calls). The "
        "refined video is in SD 1.5's space: decode it with SD 1.5's VAE. At one timestep SD 1.5 and Wan are at "
        "different noise levels (T_e 100: noise-to-signal 0.34 and 0.11), so the Refine Sampler's *temporal timestep matching* "
        "(**auto**; an advanced input: *Show Advanced* in the node's menu) re-noises the temporal expert at the level of the spatial expert's step, not at its index: its "
        "text says \"matching nearest\".",
        wan_change_first()[:2] + ["SD 1.5 checkpoint: any SD 1.5 fine-tune works as the spatial expert (its own "
                                  "VAE goes to *spatial VAE*; decode with that VAE too)."] + wan_change_first()[2:],
        (SD15_SPATIAL, WAN21, UMT5, WAN_VAE))
    g.column("models", "1 · Models")
    ckpt = loader(g, SD15_SPATIAL, "SD 1.5 (spatial expert, CLIP, VAE)", "CheckpointLoaderSimple")
    umt5 = loader(g, UMT5, "UMT5 text encoder (Wan)", "CLIPLoader", "wan")
    g.column()
    wan = loader(g, WAN21, "Wan 2.1 T2V 1.3B (control + temporal)")
    vae = loader(g, WAN_VAE, "Wan 2.1 VAE", "VAELoader")
    g.group("prompts", "2 · Prompts")
    sd_pos, sd_neg = prompts(g, ckpt, "SD 1.5", negative=NEGATIVE)
    wan_pos, wan_neg = prompts(g, umt5, "Wan")
    g.column()
    experts = refine_experts(g, [7.5, 5.0, "latent frames", 5.0, 0.875],
                             bundle_links(ckpt, (sd_pos, sd_neg), wan, (wan_pos, wan_neg), spatial_vae=(ckpt, "VAE"),
                                          temporal_vae=(vae, "VAE")))
    ctrl = wan_control(g, wan, wan_pos, wan_neg, [512, 512, 33, 1])
    refinement(g, ctrl, experts, ckpt, "ConFiner/sd15_bridge_wan", title="VAE Decode (SD 1.5 VAE)",
               decode=IMAGE_DECODE)
    g.save(SD_BRIDGE, "Wan 2.1 control and temporal, SD 1.5 spatial: two latent spaces bridged.")


def wan21_flux_dev():
    g = Graph()
    modern_readme(
        g, WAN_FLUX,
        "Wan 2.1 1.3B makes the 33-frame structure and is the temporal expert; FLUX.1-dev, the spatial expert, "
        "refines each of the 33 frames as an image. Flux has a latent space of its own, so ConFiner bridges the "
        "experts through their VAEs (2 VAE calls for the structure, 4 per step); decode with the Flux VAE. "
        "Refinement starts at T_e = 250 (sigma 0.25). Flux-dev's guidance is an input of the model "
        "(*FluxGuidance*, 3.5), so *spatial cfg* stays 1: one Flux pass per step. Flux is most of the cost (91 s "
        "for 81 frames on an H200).",
        wan_change_first()[:3] + ["*FluxGuidance* 3.5 is Flux-dev's usual value. With 24 GB or less, the fp8 files "
                                  "(flux1-dev-fp8, t5xxl_fp8_e4m3fn) work on the same loaders.",
                                  "Another spatial expert (SD 1.5...) comes with its own VAE: on *spatial VAE* and "
                                  "on the decode."] +
        wan_change_first()[3:],
        (FLUX_DEV, FLUX_CLIP_L, FLUX_T5, FLUX_VAE, WAN21, UMT5, WAN_VAE))
    g.column("models", "1 · Models")
    wan = loader(g, WAN21, "Wan 2.1 T2V 1.3B (control + temporal)")
    flux = loader(g, FLUX_DEV, "FLUX.1-dev (spatial expert)")
    vae = loader(g, WAN_VAE, "Wan 2.1 VAE", "VAELoader")
    flux_vae = loader(g, FLUX_VAE, "FLUX.1 VAE", "VAELoader")
    g.column()
    umt5 = loader(g, UMT5, "UMT5 text encoder (Wan)", "CLIPLoader", "wan")
    flux_text = dual_clip_loader(g, FLUX_CLIP_L, FLUX_T5, "flux", "CLIP-L + T5-XXL text encoder (Flux)")
    g.group("prompts", "2 · Prompts")
    wan_pos, wan_neg = prompts(g, umt5, "Wan")
    flux_pos, flux_neg = prompts(g, flux_text, "Flux", negative="")
    flux_neg["title"] = "Negative (Flux: used only if spatial cfg > 1)"
    guided = g.node("FluxGuidance", [3.5], "FluxGuidance (Flux-dev's guidance)")
    g.link(flux_pos, "CONDITIONING", guided, "conditioning")
    g.column()   # the control stage above the bundle: every link into this column then runs clear of the nodes
    ctrl = wan_control(g, wan, wan_pos, wan_neg, MODERN_SHAPE, title="3 · Control stage: size and structure")
    experts = refine_experts(g, [1.0, 5.0, "latent frames", 5.0, 0.875],
                             bundle_links(flux, (guided, flux_neg), wan, (wan_pos, wan_neg),
                                          spatial_vae=(flux_vae, "VAE"), temporal_vae=(vae, "VAE")),
                             title="4 · Refine experts")
    refinement(g, ctrl, experts, flux_vae, "ConFiner/wan_flux_dev", te=250, title="VAE Decode (FLUX.1 VAE)",
               decode=IMAGE_DECODE)
    g.save(WAN_FLUX, "Wan 2.1 control and temporal, FLUX.1-dev spatial: two latent spaces bridged.")


def wan22_a14b():
    g = Graph()
    modern_readme(
        g, A14B,
        "Wan 2.2 A14B is two experts: the high-noise model up to the boundary (sigma 0.875), the low-noise model "
        "below. Both make the structure as one control expert (8 steps, the switch inside); refinement starts at "
        "T_e = 250 (sigma 0.25, the paper's noise level for a flow model; 100 keeps more of the structure), where "
        "only the low-noise model works: it refines as the spatial expert at one frame "
        "(each latent frame an image, 1/9 of the attention of the clip) and as the temporal expert on the whole clip.",
        wan_change_first("Wan 2.2 A14B is made for 1280x720 and 832x480.", encoders=1)[:3] +
        ["Control cfg 4 (high noise) and *low-noise cfg* 3, Wan 2.2's own; with LightX2V 4-step LoRAs on both "
         "models: 4 steps, cfg 1 and 1.",
         "Keep each file on its loader: **high noise** on *high noise (control)*, **low noise** on *low noise (all "
         "roles)*. The two models have one architecture, so swapped files still run: the nodes warn when the file "
         "names say high and low noise are swapped."],
        (WAN22_HIGH, WAN22_LOW, UMT5, WAN_VAE))
    g.column("models", "1 · Models")
    umt5 = loader(g, UMT5, "UMT5 text encoder (Wan)", "CLIPLoader", "wan")
    g.column()
    high = loader(g, WAN22_HIGH, "Wan 2.2 A14B high noise (control)")
    low = loader(g, WAN22_LOW, "Wan 2.2 A14B low noise (all roles)")
    vae = loader(g, WAN_VAE, "Wan 2.1 VAE (A14B's)", "VAELoader")
    g.group("prompts", "2 · Prompts")
    pos, neg = prompts(g, umt5, "Wan")
    g.column()
    experts = refine_experts(g, [3.0, 3.0, "latent frames", 3.0, 0.875],
                             bundle_links(low, (pos, neg), low, (pos, neg)))
    ctrl = wan_control(g, high, pos, neg, MODERN_SHAPE, steps=8, cfg=4.0, low_noise=low, low_cfg=3.0)
    refinement(g, ctrl, experts, vae, "ConFiner/wan22_a14b", te=250, title="VAE Decode tiled (Wan 2.1 VAE)")
    g.save(A14B, "Wan 2.2 A14B: the high/low-noise pair as the control expert, low noise refining.")


def long_wan21():
    g = Graph()
    modern_readme(
        g, LONG_WAN,
        "165 frames (10.3 s at 16 fps) as staggered 33-frame segments of Wan 2.1 1.3B, which is all three experts "
        "(control; spatial at one frame, each latent frame an image; temporal), with consistency initialization, "
        "coherence guidance (gamma 0.1) and staggered refinement from T_e = 250 (sigma 0.25, a flow model's "
        "default). The prompt travels from the beach to the snow at 5 s: seconds keys count at the node's *fps*, "
        "0 for the control model's rate (Wan's 16, as the save node's), and each prompt is refined from the window "
        "junction nearest its key (frame 66, 4.1 s here: the node's text lists the prompts as applied). One text "
        "encoder serves every expert, so the segment prompts need one CLIP; with an "
        "image model of another text encoder as the spatial expert (Qwen-Image, FLUX.1) leave them empty.",
        ["**segment prompts** on ConFiner Long Video (`0: prompt | 5s: prompt from 5 s`), or Positive/Negative when "
         "segment prompts is empty.",
         "**frames** (4k+1; at segment length 33, 165 and 297 refine no frame that is cut; under 81 move the prompts' `5s` key inside them) and **segment length** (4k+1: "
         "33, 81) on ConFiner Long Video; the latent sets only the frame size (width and height multiples of 16; Wan "
         "2.1 1.3B is made for 832x480).",
         "**fps** on the save node (Wan makes 16); ConFiner Long Video's fps (0: the model's rate; *Show Advanced* in "
         "its menu) only if the save node's differs.",
         LONG_SEED,
         WAN_CONTROL],
        (WAN21_ALL, UMT5, WAN_VAE))
    g.column("models", "1 · Models")
    umt5 = loader(g, UMT5, "UMT5 text encoder (Wan)", "CLIPLoader", "wan")
    g.column()
    wan = loader(g, WAN21_ALL, "Wan 2.1 T2V 1.3B (all three experts)")
    vae = loader(g, WAN_VAE, "Wan 2.1 VAE", "VAELoader")
    g.group("prompts", "2 · Prompts and frame size")
    pos, neg = prompts(g, umt5, "Wan")
    size = g.node("EmptyHunyuanLatentVideo", [MODERN_SHAPE[0], MODERN_SHAPE[1], 1, 1],
                  "Frame size (frames: on Long Video)")
    g.column()
    experts = refine_experts(g, [5.0, 5.0, "latent frames", 5.0, 0.875],
                             bundle_links(wan, (pos, neg), wan, (pos, neg)))
    seg = long_video_node(g, 165, 33, 8, 5.0, 250, "0: a corgi running on a sunny beach, golden hour | 5s: a corgi "
                          "running through deep snow, winter",
                          dict(control_model=(wan, "MODEL"), control_positive=(pos, "CONDITIONING"),
                               control_negative=(neg, "CONDITIONING"), experts=(experts, "experts"),
                               latent=(size, "LATENT"), clip=(umt5, "CLIP"), control_vae=(vae, "VAE")),
                          sampler="unipc")
    g.column("output", "5 · Decode and save")
    outputs(g, vae, [seg], ["ConFiner/long_wan21"], WAN_FPS, "VAE", "VAE Decode tiled (Wan 2.1 VAE)", VIDEO_DECODE)
    g.save(LONG_WAN, "ConFiner-Long with Wan 2.1: 165 frames, all three strategies, prompt travel.")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    basic()
    compare_modes()
    long_video()
    wan_qwen_image()
    sd15_bridge_wan()
    wan21_flux_dev()
    wan22_a14b()
    long_wan21()
    print("wrote", sorted(f for f in os.listdir(OUT) if f.endswith(".json")))
