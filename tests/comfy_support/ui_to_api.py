"""Convert a UI-format ComfyUI workflow (what the editor saves, and what
``example_workflows/*.json`` contain) into an API prompt, the way the frontend's
``graphToPrompt`` does before it POSTs ``/prompt``.

Pure Python, no ComfyUI import: the node definitions come from a callable
``input_types(class_type) -> INPUT_TYPES dict`` (inside a booted ComfyUI that is
``nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()``; see :func:`input_types_from_mappings`),
so this module can be unit-tested without a ComfyUI checkout.

Rules implemented (ComfyUI_frontend ``graphToPrompt`` + ``ExecutableNodeDTO`` + widget
construction, frontend 1.2x-1.3x as shipped with ComfyUI 0.3.64 / 0.8.0):

* Widgets of a node are the entries of ``INPUT_TYPES()`` in the order ``required`` then
  ``optional`` whose type is ``INT``/``FLOAT``/``STRING``/``BOOLEAN``/``COMBO`` or a list
  (a V1 combo), unless the options set ``forceInput``. ``hidden`` inputs are never widgets.
* ``widgets_values`` is positional over those widgets plus UI-only widgets that are not
  sent to the API:

  - ``control_after_generate`` after an INT widget whose options have
    ``control_after_generate`` truthy, or when that key is absent and the input is named
    ``seed``/``noise_seed``; after a COMBO with ``control_after_generate`` truthy a control
    value and a ``control_filter_list`` value follow;
  - an upload button value after a combo with ``image_upload``/``video_upload``/
    ``audio_upload``/``animated_image_upload`` truthy (e.g. LoadImage ``["x.png", "image"]``).

  A dict ``widgets_values`` (VHS style) is read by widget name.
* Array widget values are wrapped as ``{"__value__": [...]}``.
* Links: version-0.4 lists ``[id, origin_id, origin_slot, target_id, target_slot, type]``
  or schema-1 objects ``{id, origin_id, origin_slot, target_id, target_slot, type}``.
  A linked input (including a widget converted to an input) becomes
  ``[str(origin_id), origin_slot]`` after resolving through:

  - virtual nodes (``Reroute``: follow its input of the same index);
  - bypassed nodes (mode 4): the bypassed node's input with the same slot index if its type
    fits, else the first input with exactly the target type, else the first compatible one;
  - ``PrimitiveNode``: virtual, it writes its ``widgets_values[0]`` into the target widget
    (``applyToGraph``), so the target gets a literal.

  If resolution yields nothing, the input keeps its widget value (or stays absent).
* Virtual nodes (``Reroute``, ``PrimitiveNode``, ``Note``, ``MarkdownNote``) and muted
  (mode 2) / bypassed (mode 4) nodes are not emitted; afterwards every input that points at a
  node that is not in the prompt is removed.
* Subgraphs (``definitions.subgraphs``) and legacy group nodes are not supported: a clear
  :class:`WorkflowConversionError` is raised.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Mapping, Optional

__all__ = [
    "WorkflowConversionError",
    "ui_to_api",
    "widget_names",
    "input_types_from_mappings",
    "is_ui_workflow",
    "DEFAULT_VIRTUAL_TYPES",
    "WIDGET_TYPES",
]

MODE_ALWAYS = 0
MODE_NEVER = 2  # "muted"
MODE_BYPASS = 4

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
DEFAULT_VIRTUAL_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
UPLOAD_KEYS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
SEED_NAMES = ("seed", "noise_seed")

InputTypesFn = Callable[[str], Optional[Mapping[str, Any]]]


class WorkflowConversionError(ValueError):
    """The workflow cannot be converted (unknown node type, bad link, unsupported feature)."""


# --------------------------------------------------------------------------------------
# Node definitions -> widget layout
# --------------------------------------------------------------------------------------


def _spec_type_and_options(spec: Any) -> tuple[Any, dict]:
    if isinstance(spec, (list, tuple)):
        if not spec:
            return None, {}
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
        return spec[0], dict(opts)
    return spec, {}


def _is_widget(type_: Any, options: Mapping, extra_widget_types: Iterable[str] = ()) -> bool:
    if options.get("forceInput"):
        return False
    if isinstance(type_, (list, tuple)):  # V1 combo: list of options
        return True
    return isinstance(type_, str) and (type_ in WIDGET_TYPES or type_ in set(extra_widget_types))


def _widget_layout(input_types: Mapping[str, Any], extra_widget_types: Iterable[str] = ()) -> list[tuple[str, Optional[str]]]:
    """[(name, kind)] for every serialized widget value slot, in ``widgets_values`` order.

    ``kind`` is None for a real widget (sent to the API) or a string naming a UI-only slot
    (``"control"``, ``"control_filter"``, ``"upload"``) whose value is skipped.
    """
    layout: list[tuple[str, Optional[str]]] = []
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            type_, opts = _spec_type_and_options(spec)
            if not _is_widget(type_, opts, extra_widget_types):
                continue
            layout.append((name, None))
            is_combo = isinstance(type_, (list, tuple)) or type_ == "COMBO"
            if type_ == "INT":
                cag = opts.get("control_after_generate")
                if cag is None:
                    cag = name in SEED_NAMES
                if cag:
                    layout.append((name, "control"))
            elif is_combo:
                if opts.get("control_after_generate"):
                    layout.append((name, "control"))
                    layout.append((name, "control_filter"))
                if any(opts.get(k) for k in UPLOAD_KEYS):
                    layout.append((name, "upload"))
    return layout


def widget_names(input_types: Mapping[str, Any], extra_widget_types: Iterable[str] = ()) -> list[str]:
    """Names of the widgets whose values are sent to the API, in order."""
    return [n for n, kind in _widget_layout(input_types, extra_widget_types) if kind is None]


def _widget_values_by_name(node: Mapping, input_types: Mapping[str, Any], extra_widget_types, lenient_control: bool) -> dict:
    values = node.get("widgets_values")
    layout = _widget_layout(input_types, extra_widget_types)
    out: dict[str, Any] = {}
    if values is None:
        return out
    if isinstance(values, Mapping):  # dict-form (e.g. VHS): keyed by widget name
        for name, kind in layout:
            if kind is None and name in values:
                out[name] = values[name]
        return out
    values = list(values)
    i = 0
    for name, kind in layout:
        if i >= len(values):
            break
        v = values[i]
        if kind is None:
            out[name] = v
            i += 1
        elif kind == "control" and lenient_control and not (isinstance(v, str) and v in CONTROL_VALUES):
            # Saved without the UI-only control value (hand-written / old workflow): do not skip.
            continue
        else:
            i += 1
    return out


def _wrap(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


# --------------------------------------------------------------------------------------
# Graph
# --------------------------------------------------------------------------------------


def _normalise_links(workflow: Mapping) -> dict[int, dict]:
    links: dict[int, dict] = {}
    for link in workflow.get("links") or []:
        if link is None:
            continue
        if isinstance(link, Mapping):
            d = {k: link.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")}
        elif isinstance(link, (list, tuple)) and len(link) >= 5:
            d = {
                "id": link[0], "origin_id": link[1], "origin_slot": link[2],
                "target_id": link[3], "target_slot": link[4],
                "type": link[5] if len(link) > 5 else "*",
            }
        else:
            raise WorkflowConversionError(f"malformed link entry: {link!r}")
        links[int(d["id"])] = d
    return links


def _type_str(t: Any) -> str:
    if t is None:
        return ""
    if isinstance(t, (list, tuple)):
        return "COMBO"
    return str(t)


def _valid_connection(a: Any, b: Any) -> bool:
    """LiteGraph.isValidConnection."""
    a, b = _type_str(a), _type_str(b)
    if a in ("", "*") or b in ("", "*") or a == b:
        return True
    a, b = a.lower(), b.lower()
    if "," not in a and "," not in b:
        return a == b
    return any(x == y or x in ("", "*") or y in ("", "*") for x in a.split(",") for y in b.split(","))


def is_ui_workflow(data: Any) -> bool:
    """True for a UI-format workflow (has a ``nodes`` list), False for an API prompt."""
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list)


def ui_to_api(
    workflow: Mapping,
    input_types: InputTypesFn | Mapping[str, Mapping],
    *,
    virtual_types: Iterable[str] = DEFAULT_VIRTUAL_TYPES,
    extra_widget_types: Iterable[str] = (),
    lenient_control: bool = True,
    display_names: Optional[Callable[[str], Optional[str]]] = None,
) -> dict[str, dict]:
    """Convert a UI-format workflow to an API prompt ``{id: {class_type, inputs, _meta}}``.

    ``input_types`` is a callable ``class_type -> INPUT_TYPES dict`` (return None or raise
    KeyError for unknown types) or a mapping ``class_type -> INPUT_TYPES dict``.
    ``lenient_control``: if a control_after_generate slot holds something that is not one of
    fixed/increment/decrement/randomize, assume the workflow was saved without it instead of
    shifting every later widget (the frontend itself always writes it).
    """
    if not is_ui_workflow(workflow):
        raise WorkflowConversionError("not a UI-format workflow (no 'nodes' list)")
    defs = (workflow.get("definitions") or {}).get("subgraphs") or []
    subgraph_ids = {sg.get("id") for sg in defs if isinstance(sg, Mapping)}

    if isinstance(input_types, Mapping):
        mapping = input_types
        get_types: InputTypesFn = lambda ct: mapping.get(ct)  # noqa: E731
    else:
        get_types = input_types

    def lookup(ct: str) -> Optional[Mapping]:
        try:
            return get_types(ct)
        except KeyError:
            return None

    virtual = set(virtual_types)
    nodes: dict[str, dict] = {}
    for n in workflow["nodes"]:
        nid = str(n["id"])
        if nid in nodes:
            raise WorkflowConversionError(f"duplicate node id {nid}")
        nodes[nid] = n
    links = _normalise_links(workflow)

    types_cache: dict[str, Mapping] = {}
    for nid, n in nodes.items():
        ct = n.get("type")
        if ct in virtual:
            continue
        if ct in subgraph_ids:
            raise WorkflowConversionError(f"node {nid}: subgraphs are not supported by this converter")
        if isinstance(ct, str) and (ct.startswith("workflow>") or ct.startswith("workflow/")):
            raise WorkflowConversionError(f"node {nid}: legacy group node {ct!r} is not supported")
        mode = n.get("mode", MODE_ALWAYS)
        it = lookup(ct)
        if it is None:
            if mode in (MODE_NEVER, MODE_BYPASS):
                types_cache[nid] = {}
                continue
            raise WorkflowConversionError(f"node {nid}: unknown node type {ct!r}")
        types_cache[nid] = it

    # Widget values per node, by widget name.
    widget_values: dict[str, dict] = {
        nid: _widget_values_by_name(nodes[nid], it, extra_widget_types, lenient_control)
        for nid, it in types_cache.items()
    }

    def input_by_link(node: Mapping, link_id: int) -> Optional[Mapping]:
        for inp in node.get("inputs") or []:
            if inp.get("link") == link_id:
                return inp
        return None

    # PrimitiveNode.applyToGraph: copy its value onto the target widgets.
    for nid, n in nodes.items():
        if n.get("type") != "PrimitiveNode":
            continue
        vals = n.get("widgets_values")
        if not vals:
            continue
        value = vals[0] if not isinstance(vals, Mapping) else next(iter(vals.values()))
        for out in n.get("outputs") or []:
            for lid in out.get("links") or []:
                link = links.get(int(lid))
                if link is None:
                    continue
                tid = str(link["target_id"])
                target = nodes.get(tid)
                if target is None or tid not in widget_values:
                    continue
                inp = input_by_link(target, link["id"])
                wname = ((inp or {}).get("widget") or {}).get("name") or (inp or {}).get("name")
                if wname is not None:
                    widget_values[tid][wname] = copy.deepcopy(value)

    def resolve_input(node_id: str, inp: Mapping, visited: set, type_: Any = None):
        """-> (origin_id, origin_slot) | None, following reroutes / bypass."""
        key = (node_id, "I", inp.get("name"))
        if key in visited:
            raise WorkflowConversionError(f"circular link resolution at node {node_id} input {inp.get('name')!r}")
        visited.add(key)
        lid = inp.get("link")
        if lid is None:
            return None
        link = links.get(int(lid))
        if link is None:
            raise WorkflowConversionError(f"node {node_id}: input {inp.get('name')!r} references missing link {lid}")
        return resolve_output(str(link["origin_id"]), int(link["origin_slot"]), type_ if type_ is not None else inp.get("type"), visited)

    def resolve_output(node_id: str, slot: int, type_: Any, visited: set):
        key = (node_id, "O", slot)
        if key in visited:
            raise WorkflowConversionError(f"circular link resolution at node {node_id} output {slot}")
        visited.add(key)
        node = nodes.get(node_id)
        if node is None:
            raise WorkflowConversionError(f"link from missing node {node_id}")
        inputs = node.get("inputs") or []
        if node.get("mode", MODE_ALWAYS) == MODE_BYPASS:
            idx = _bypass_slot_index(node, slot, type_)
            if idx == -1:
                return None
            return resolve_input(node_id, inputs[idx], visited)
        if node.get("type") in virtual:
            if slot < len(inputs):
                return resolve_input(node_id, inputs[slot], visited, type_)
            return None  # e.g. PrimitiveNode (its value was applied to the target widget)
        return (node_id, slot)

    def _bypass_slot_index(node: Mapping, slot: int, type_: Any) -> int:
        inputs = node.get("inputs") or []
        outputs = node.get("outputs") or []
        if _type_str(type_) in ("*", ""):
            return slot if len(inputs) > slot else (0 if inputs else -1)
        out_type = outputs[slot].get("type") if slot < len(outputs) else None
        if slot < len(inputs):
            opp = inputs[slot]
            if _valid_connection(opp.get("type"), out_type) and _valid_connection(opp.get("type"), type_):
                return slot
        for i, inp in enumerate(inputs):
            if _type_str(inp.get("type")) == _type_str(type_):
                return i
        for i, inp in enumerate(inputs):
            if _valid_connection(inp.get("type"), out_type) and _valid_connection(inp.get("type"), type_):
                return i
        return -1

    prompt: dict[str, dict] = {}
    for nid, n in nodes.items():
        ct = n.get("type")
        if ct in virtual or n.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
            continue
        inputs: dict[str, Any] = {}
        for name, value in widget_values[nid].items():
            inputs[name] = _wrap(copy.deepcopy(value))
        for inp in n.get("inputs") or []:
            resolved = resolve_input(nid, inp, set())
            if resolved is None:
                continue
            inputs[inp["name"]] = [resolved[0], resolved[1]]
        title = n.get("title") or (display_names(ct) if display_names else None) or ct
        prompt[nid] = {"inputs": inputs, "class_type": ct, "_meta": {"title": title}}

    # Remove inputs connected to nodes that were not emitted (muted, unknown, ...).
    for entry in prompt.values():
        for name in list(entry["inputs"]):
            v = entry["inputs"][name]
            if isinstance(v, list) and len(v) == 2 and str(v[0]) not in prompt:
                del entry["inputs"][name]
    return prompt


def input_types_from_mappings(node_class_mappings: Mapping[str, Any]) -> InputTypesFn:
    """``input_types`` callable backed by ``nodes.NODE_CLASS_MAPPINGS`` (V1 and V3 classes)."""

    cache: dict[str, Mapping] = {}

    def get(class_type: str) -> Optional[Mapping]:
        if class_type in cache:
            return cache[class_type]
        cls = node_class_mappings.get(class_type)
        if cls is None:
            return None
        it = cls.INPUT_TYPES()
        cache[class_type] = it
        return it

    return get
