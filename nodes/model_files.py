"""The files a queued graph loads its models from, and what their names tell: which half of a two-expert model
(Wan 2.2 A14B) a file is. ComfyUI keeps no file name on a MODEL, and the two halves share one architecture, so their
weights do not say which is which; the queued prompt does, through the loader's file name. (AnimateDiff-Evolved
records its motion model's name itself: :func:`~.ade.motion_model_names`.)"""

from __future__ import annotations

import re
from typing import NamedTuple

#: loaders of diffusion models (ComfyUI's own and ComfyUI-GGUF's) -> the input that names the file
LOADERS = {"UNETLoader": "unet_name", "UnetLoaderGGUF": "unet_name", "CheckpointLoaderSimple": "ckpt_name",
           "CheckpointLoader": "ckpt_name", "ImageOnlyCheckpointLoader": "ckpt_name"}
#: loaders of VAE files -> the input that names the file
VAE_LOADERS = {"VAELoader": "vae_name"}
#: checkpoint loaders -> the input that names the file and their VAE output's slot
CHECKPOINT_VAES = {"CheckpointLoaderSimple": ("ckpt_name", 2), "CheckpointLoader": ("ckpt_name", 2)}
HIGH, LOW = "high-noise", "low-noise"
BOUNDARY_NOTE = "its boundary, sigma 0.875 for text-to-video"


#: the inputs a control expert's model arrives on (node type -> input)
CONTROL_INPUTS = {"ConFinerControlExpert": "model", "ConFinerLongSegmenter": "control_model"}


def model_loader(prompt: dict | None, node_id: str | None, input_name: str) -> tuple[str, str] | None:
    """(loader node id, file) of the model that reaches ``input_name`` of node ``node_id`` in the queued ``prompt``
    (API format), followed back through the nodes that patch a model on its way (LoRA loaders, ModelSampling*, ...:
    their input ``model``); None where the graph does not say (a node with no such input, an unknown loader)."""
    if not prompt or node_id is None:
        return None
    found = link(prompt, node_id, input_name)
    seen = set()
    while found is not None and found[0] not in seen:
        seen.add(found[0])
        node = prompt.get(found[0]) or {}
        if node.get("class_type") in LOADERS:
            name = node.get("inputs", {}).get(LOADERS[node["class_type"]])
            return (found[0], name) if isinstance(name, str) else None
        found = link(prompt, found[0], "model")
    return None


def vae_loader(prompt: dict | None, node_id: str | None, input_name: str = "vae") -> tuple[str, str] | None:
    """(loader node id, file) of the VAE file wired to ``input_name`` of node ``node_id`` in the queued ``prompt``;
    None where it comes from elsewhere (a checkpoint's VAE output) or the graph does not say."""
    found = link(prompt, node_id, input_name)
    node = ((prompt or {}).get(found[0]) or {}) if found else {}
    name = node.get("inputs", {}).get(VAE_LOADERS.get(node.get("class_type"), ""))
    return (found[0], name) if isinstance(name, str) else None


def checkpoint_vae(prompt: dict | None, node_id: str | None, input_name: str = "vae") -> tuple[str, str] | None:
    """(loader node id, checkpoint file) where ``input_name`` of node ``node_id`` takes a checkpoint loader's VAE
    output (an SD checkpoint's VAE wired to a Wan clip's decode); None elsewhere."""
    found = link(prompt, node_id, input_name)
    node = ((prompt or {}).get(found[0]) or {}) if found else {}
    name_input, slot = CHECKPOINT_VAES.get(node.get("class_type"), (None, None))
    name = node.get("inputs", {}).get(name_input) if name_input else None
    return (found[0], name) if isinstance(name, str) and found[1] == slot else None


def model_file(prompt: dict | None, node_id: str | None, input_name: str) -> str | None:
    """The file of :func:`model_loader`."""
    found = model_loader(prompt, node_id, input_name)
    return found[1] if found else None


def feeds_control(prompt: dict | None, node_id: str | None, input_name: str) -> bool | None:
    """Whether the loader of the model at ``input_name`` of ``node_id`` also feeds a control expert: one file in it
    serves two roles, so a wrong file there is fixed in the loader, not by swapping links. None where the graph does
    not say which loader it is."""
    found = model_loader(prompt, node_id, input_name)
    if found is None:
        return None
    return any(
        (model_loader(prompt, other, CONTROL_INPUTS[node.get("class_type")]) or (None,))[0] == found[0]
        for other, node in (prompt or {}).items() if node.get("class_type") in CONTROL_INPUTS)


def link(prompt: dict | None, node_id: str | None, input_name: str) -> tuple[str, int] | None:
    """(node id, output slot) wired to ``input_name`` of node ``node_id`` in the queued ``prompt``; None where that
    input holds a value or nothing."""
    found = ((prompt or {}).get(str(node_id)) or {}).get("inputs", {}).get(input_name) if node_id is not None else None
    return (str(found[0]), found[1]) if isinstance(found, list) and len(found) == 2 else None


def input_source(prompt: dict | None, node_id: str | None, input_name: str) -> dict | None:
    """The queued ``prompt``'s node whose output reaches ``input_name`` of node ``node_id`` (API format: a node
    bypassed on the canvas is left out, its input wired on in its place); None where the graph does not say."""
    found = link(prompt, node_id, input_name)
    return (prompt or {}).get(found[0]) if found else None


#: ComfyUI's empty latents whose clip length a widget sets, before anything runs: node type -> (widget, temporal
#: factor of the frames it counts: an image batch's size is an SD-style clip's frames; the video node's length
#: is pixel frames, packed 4k+1 as Wan's VAE packs them)
FRAME_WIDGETS = {"EmptyLatentImage": ("batch_size", 1), "EmptyHunyuanLatentVideo": ("length", 4)}
#: nodes a clip's frames pass through unchanged on its way to a structure (node type -> the input they come on)
FRAMES_THROUGH = {"ConFinerControlExpert": "latent", "ConFinerNoiseRescheduler": "latent"}


class PlannedFrames(NamedTuple):
    """A clip's frames as a queued graph's empty latent sets them: ``frames`` (pixel frames), ``factor`` (the
    temporal factor of the space the node counts them for: :data:`FRAME_WIDGETS`), and the ``widget`` that sets them
    on the node the canvas titles ``node``."""
    frames: int
    factor: int
    widget: str
    node: str

    def made(self) -> int:
        """The pixel frames the node's latent holds: a video latent node packs ``factor`` frames into each latent
        frame after the first (EmptyHunyuanLatentVideo makes ``(length - 1) // 4 + 1``), so length 10 makes 9, as
        in ComfyUI's own Wan workflows (a trial's 10 was refused, "10 frames would be cut by its VAE")."""
        return self.frames if self.factor == 1 else self.factor * ((self.frames - 1) // self.factor) + 1

    def said(self) -> str:
        """The widget and its value as an artist finds them: "batch_size = 4 on 'Size and frame count'"."""
        return f"{self.widget} = {self.frames} on '{self.node}'"


def planned_frames(prompt: dict | None, node_id: str | None, input_name: str) -> PlannedFrames | None:
    """The :class:`PlannedFrames` of the clip reaching ``input_name``, as the queued graph sets them before anything
    runs: back through the Control Expert (and a Noise Rescheduler) to an empty latent's frame widget
    (:data:`FRAME_WIDGETS`). None where the graph does not say (a linked widget, a clip from elsewhere)."""
    for _ in range(len(FRAMES_THROUGH) + 1):
        source_id = (link(prompt, node_id, input_name) or (None,))[0]
        node = (prompt or {}).get(source_id) or {}
        kind = node.get("class_type")
        if kind in FRAMES_THROUGH:
            node_id, input_name = source_id, FRAMES_THROUGH[kind]
            continue
        widget, factor = FRAME_WIDGETS.get(kind, (None, None))
        value = node.get("inputs", {}).get(widget) if widget else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return PlannedFrames(value, factor, widget, title(node))
        return None
    return None


def takers(prompt: dict | None, node_id: str | None, slot: int = 0) -> list[str]:
    """The ids of the queued ``prompt``'s nodes that take output ``slot`` of node ``node_id``."""
    return [taker for taker, node in (prompt or {}).items()
            if any(link(prompt, taker, name) == (str(node_id), slot) for name in node.get("inputs", {}))]


def same_output(prompt: dict | None, a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two links carry the same thing: one output of one node, or that output of two nodes of one type
    given the same values and no links (two loaders of one file)."""
    if a == b:
        return True
    first, second = ((prompt or {}).get(node_id) or {} for node_id, _ in (a, b))
    values = [node.get("inputs", {}) for node in (first, second)]
    return a[1] == b[1] and first.get("class_type") is not None and \
        first.get("class_type") == second.get("class_type") and values[0] == values[1] and \
        not any(isinstance(value, list) for value in values[0].values())


def title(node: dict) -> str:
    """A queued prompt's node as the canvas names it: its title, else its type."""
    return node.get("_meta", {}).get("title") or node.get("class_type")


def came_from_other(source: dict | None, meant: str) -> str:
    """" (it comes from <title>)" where an input's ``source`` node is not of the class ``meant`` to feed it, else "":
    a bypassed node is left out of the queued prompt and its input wired on, so an empty latent from it names the
    node before it (the fix is then to un-bypass, not to connect)."""
    return f" (it comes from {title(source)})" if source and source.get("class_type") != meant else ""


#: a canvas node's mode when bypassed (Ctrl+B): the queued prompt leaves it out and wires its input on
BYPASSED = 4


def bypassed_takers(workflow: dict | None, node: str | None, class_type: str) -> list[tuple[str, str]]:
    """(id, title) of each bypassed node of ``class_type`` on the canvas that takes ``node``'s output, from the
    workflow the frontend queues beside the prompt (``extra_pnginfo``; links as lists or as objects); [] where it is
    not there (a prompt queued over the API). The queued prompt says nothing of them: it leaves them out."""
    if not isinstance(workflow, dict) or node is None:
        return []
    origin = {}
    for link in workflow.get("links") or []:
        if isinstance(link, (list, tuple)) and len(link) >= 2:
            origin[link[0]] = link[1]
        elif isinstance(link, dict):
            origin[link.get("id")] = link.get("origin_id")
    return [(str(n.get("id")), n.get("title") or class_type) for n in workflow.get("nodes") or []
            if isinstance(n, dict) and n.get("type") == class_type and n.get("mode") == BYPASSED
            and any(isinstance(i, dict) and str(origin.get(i.get("link"))) == str(node) for i in n.get("inputs") or [])]


#: the links a motion model reaches a model by: AnimateDiff-Evolved's loaders take and give MODEL, its evolved
#: sampling takes its motion models as M_MODELS
MOTION_LINK_TYPES = ("MODEL", "M_MODELS", "MOTION_MODEL_ADE")


def bypassed_upstream(workflow: dict | None, node: str | None, path: tuple, prefix: str = "ADE_") -> str | None:
    """The title of a bypassed canvas node whose type starts with ``prefix`` (AnimateDiff-Evolved's) on the model
    links into ``node``: ``path``'s inputs followed one node each (``("experts", "temporal_model")``: the bundle's
    temporal model), then every model link (:data:`MOTION_LINK_TYPES`) up from there. From the workflow the frontend
    queues (:func:`bypassed_takers`); None where it is not there, or no such node is."""
    if not isinstance(workflow, dict) or node is None or not path:
        return None
    nodes = {str(n.get("id")): n for n in workflow.get("nodes") or [] if isinstance(n, dict)}
    links = {}   # link id -> (origin node id, type)
    for link in workflow.get("links") or []:
        if isinstance(link, (list, tuple)) and len(link) >= 6:
            links[link[0]] = (str(link[1]), link[5])
        elif isinstance(link, dict):
            links[link.get("id")] = (str(link.get("origin_id")), link.get("type"))

    def origins(node_id: str, names=None, types=None) -> list[str]:
        return [links[i["link"]][0] for i in (nodes.get(node_id) or {}).get("inputs") or []
                if isinstance(i, dict) and i.get("link") in links and (names is None or i.get("name") in names)
                and (types is None or i.get("type") in types)]

    here = [str(node)]
    for name in path:
        here = [up for n in here for up in origins(n, names=(name,))]
    seen: set = set()
    while here:
        current = here.pop(0)
        if current in seen:
            continue
        seen.add(current)
        entry = nodes.get(current) or {}
        if entry.get("mode") == BYPASSED and str(entry.get("type", "")).startswith(prefix):
            return entry.get("title") or entry.get("type")
        here += origins(current, types=MOTION_LINK_TYPES)
    return None


def used_nodes(prompt: dict | None) -> dict:
    """The queued ``prompt``'s nodes whose output some node takes: a loader left unconnected loads nothing (one beside
    the loader feeding both roles was read as the other role's model, and the pair was told to swap)."""
    taken = {found[0] for node_id, node in (prompt or {}).items() for name in node.get("inputs", {})
             if (found := link(prompt, node_id, name))}
    return {node_id: node for node_id, node in (prompt or {}).items() if str(node_id) in taken}


def loaded_files(prompt: dict | None) -> tuple[tuple[str, str, bool], ...]:
    """(loader title, file, whether it feeds a low-noise input) of every diffusion-model loader in the queued
    ``prompt`` that feeds a node: where a file two nodes need went instead (the other half of a pair in another
    loader), and whether it serves as a low-noise half there already (then no file is swapped)."""
    low = {found[0] for node_id, node in (prompt or {}).items() for name in node.get("inputs", {})
           if name.endswith("low_noise_model") and (found := model_loader(prompt, node_id, name))}
    return tuple((title(node), node["inputs"][LOADERS[node["class_type"]]], node_id in low)
                 for node_id, node in used_nodes(prompt).items() if node.get("class_type") in LOADERS and
                 isinstance(node.get("inputs", {}).get(LOADERS[node["class_type"]]), str))


def motion_model_files(prompt: dict | None) -> tuple[str, ...]:
    """The motion model files of the queued ``prompt``'s AnimateDiff-Evolved loaders (their ``model_name``) that
    feed a node."""
    return tuple(node["inputs"]["model_name"] for node in used_nodes(prompt).values()
                 if str(node.get("class_type", "")).startswith("ADE_")
                 and isinstance(node.get("inputs", {}).get("model_name"), str))


def noise_half(name: str | None) -> str | None:
    """HIGH or LOW for a file named as one half of a two-expert model ("wan2.2_t2v_high_noise_14B_fp16",
    "Wan2.2-T2V-A14B-LowNoise-Q8_0.gguf"), else None."""
    letters = re.sub(r"[^a-z]", "", (name or "").lower())
    return HIGH if "highnoise" in letters else LOW if "lownoise" in letters else None


def pair_problems(role: str, node: str, high_input: str, low_input: str, high_file: str | None,
                  low_file: str | None, loaded: tuple = ()) -> list[tuple[str, str]]:
    """A Wan 2.2 A14B half where its other half belongs, as (console warning, one-line note) pairs, from the file
    names of the role's MODEL input (``high_input``: the high-noise half, or the only model) and its low-noise input;
    ``loaded``: (loader title, file, feeds a low-noise input) of the graph's loaders (:func:`loaded_files`), where
    the other half may be.

    * temporal, the high-noise half alone: the refinement runs from T_e (sigma 0.25) down, far below the boundary it
      was trained above (an artist swapped Wan 2.1's file for it; the run said nothing); with the low-noise file in
      another loader, the two loaders' files were swapped (a trial was told to add a low-noise model instead);
    * control, one half alone: the control stage runs from pure noise to clean, across the boundary;
    * either role, the two halves in each other's inputs, or one half in both."""
    high, low = noise_half(high_file), noise_half(low_file)
    high_label, low_label = (name.split(" (")[0] for name in (high_input, low_input))   # as the node shows them
    if low_file is not None:
        if high == LOW and low == HIGH:
            # the files are picked in loaders, which the canvas names by their titles: a trial's artist was sent to
            # the Control Expert, where no file is picked
            holders = [next((title for title, name, _ in loaded if name == file), None)
                       for file in (high_file, low_file)]
            where = (f"pick '{low_file}' in '{holders[0]}' and '{high_file}' in '{holders[1]}'"
                     if None not in holders and holders[0] != holders[1] else
                     f"swap the files of the loaders of {high_input} and {low_input} on {node}")
            return [(f"the {role} model '{high_file}' is Wan 2.2 A14B's low-noise half and its low-noise model "
                     f"'{low_file}' the high-noise one: {where}",
                     f"warning: {role} high/low-noise files swapped: swap them")]
        if high is not None and high == low:   # one half in both inputs: the other side of the boundary has none
            other, fix = (LOW, low_input) if high == HIGH else (HIGH, high_input)
            return [(f"the {role} model '{high_file}' and its low-noise model '{low_file}' are both Wan 2.2 A14B's "
                     f"{high} half: load the {other} file as {fix} on {node}",
                     f"warning: both halves {high}: load {other} file")]
        return []
    if role == "temporal" and high == HIGH:
        elsewhere = [(title, name, as_low) for title, name, as_low in loaded if noise_half(name) == LOW]
        if elsewhere and elsewhere[0][2]:   # it is a low-noise half elsewhere already (the control's): none swapped
            title, name, _ = elsewhere[0]   # (a re-check's hand-built graph was told to swap two loaders' files)
            return [(f"the temporal model '{high_file}' is Wan 2.2 A14B's high-noise half, trained for noise above "
                     f"{BOUNDARY_NOTE}, and refines alone far below it: connect '{title}', which holds its low-noise "
                     f"half '{name}', to {low_input} on {node} too (the refinement then runs on it)",
                     f"warning: high-noise half alone: add {low_label}")]
        if elsewhere:
            title, name, _ = elsewhere[0]
            return [(f"the temporal model '{high_file}' is Wan 2.2 A14B's high-noise half, trained for noise above "
                     f"{BOUNDARY_NOTE}, and the low-noise file '{name}' is in {title}: the two loaders' files look "
                     f"swapped; swap them (the refinement runs below the boundary, on the low-noise half)",
                     "warning: high/low-noise files swapped in loaders: swap them")]
        return [(f"the temporal model '{high_file}' is Wan 2.2 A14B's high-noise half, trained for noise above "
                 f"{BOUNDARY_NOTE}, and refines alone far below it: connect its low-noise half to {low_input} on "
                 f"{node} (the refinement then runs on it), or load the low-noise file as {high_input}",
                 f"warning: high-noise half alone: add {low_label}")]
    if role == "control" and high in (HIGH, LOW):
        fix = (f"connect its low-noise half to {low_input}" if high == HIGH else
               f"load the high-noise half as {high_input} and this file as {low_input}")
        other = LOW if high == HIGH else HIGH
        return [(f"the control model '{high_file}' is Wan 2.2 A14B's {high} half alone: the control stage samples "
                 f"from pure noise to clean, across {BOUNDARY_NOTE}, and the {other} half is trained for the other "
                 f"side: {fix} on {node}", f"warning: high-noise half alone: add {low_label}" if high == HIGH
                 else f"warning: low-noise half as {high_label}: load high-noise")]
    return []
