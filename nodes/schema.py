"""Input declarations shared by several nodes (one definition, one label, one tooltip) and the checks every node's
``validate_inputs`` runs on its widget values.

Widget ids are the names saved in workflows and API prompts; they never change, so old workflows keep loading
(ComfyUI 0.3.64 and 0.8.0 have no input-alias mechanism). What an artist reads is the ``display_name`` (the
frontend's widget label): the same concept carries the same label on every node, whatever its id.
"""

from __future__ import annotations

import math

from comfy_api.latest import io

from ..confiner_core.chain import MODES
from ..confiner_core.refine import TIMESTEP_MATCHING

CATEGORY = "ConFiner"

# Labels: one per concept, used by every node that has it.
CONTROL_STEPS = "control steps"
CONTROL_CFG = "control cfg"
CONTROL_SAMPLER = "control sampler"
STRUCTURE_TIMESTEP = "structure timestep T_e"
REFINE_STEPS = "refine steps"
REFINE_MODE = "refine mode"
MATCHING = "temporal timestep matching"

SEED_TOOLTIPS = {
    "control": "Seed of the structure's initial noise (the control stage). Same seed, same structure.",
    "refine": "Seed of the refinement's noise: noising the structure to T_e (Eq. 6) and the re-noisings between "
              "the experts (Eq. 9, 11). Keep it fixed and change the control seed to try new structures with the "
              "same refinement, or the other way round.",
    "long": "One seed for every random draw of ConFiner-Long: segment noise, re-noising, refinement.",
}


def advanced(widget: io.Input) -> io.Input:
    """Marks a widget the frontend hides until 'Show Advanced' (frontend 1.3x; older frontends show it, and its
    tooltip says when it applies). Set after construction: ComfyUI 0.3.64's widget inputs take no extra_dict."""
    widget.extra_dict = {**(widget.extra_dict or {}), "advanced": True}
    return widget


def seed_input(kind: str) -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                        tooltip=SEED_TOOLTIPS[kind])


def control_inputs(prefix: str = "") -> list:
    """Ids differ by node (``steps`` on the Control Expert, ``control_steps`` on the Long Segmenter: saved
    workflows use them), labels do not."""
    return [
        io.Int.Input(f"{prefix}steps", display_name=CONTROL_STEPS, default=4, min=1, max=1000,
                     tooltip="Control-stage steps (paper: 4 or 8, matching an AnimateDiff-Lightning checkpoint). "
                             "One expert evaluation each."),
        io.Float.Input(f"{prefix}cfg", display_name=CONTROL_CFG, default=1.0, min=0.0, max=100.0, step=0.1,
                       round=0.01, tooltip="Guidance of the control expert (1.0 for distilled Lightning models; "
                                           "above 1.0 the negative prompt is used too)."),
        io.Combo.Input(f"{prefix}sampler", display_name=CONTROL_SAMPLER, options=["euler", "ddim"], default="euler",
                       tooltip="euler: what distilled few-step experts were trained for; ddim: deterministic DDIM."),
    ]


def refine_inputs() -> list:
    return [
        io.Int.Input("te", display_name=STRUCTURE_TIMESTEP, default=100, min=1, max=999,
                     tooltip="How much of the structure is kept: it is noised to timestep T_e on the spatial "
                             "expert's schedule (Eq. 6) and refined from there. Lower keeps more of the control "
                             "expert's layout and motion; higher lets the refiners change more. Paper: 100 "
                             "(with 4 control steps, 300+ loses image quality)."),
        io.Int.Input("refine_steps", display_name=REFINE_STEPS, default=5, min=1, max=1000,
                     tooltip="Refinement steps from T_e to 0 at uniform intervals (paper: 5). Coordinated mode "
                             "makes 3 expert evaluations per step, the other modes 1."),
        io.Combo.Input("mode", display_name=REFINE_MODE, options=list(MODES), default="coordinated",
                       tooltip="coordinated: Algorithm 1, spatial and temporal experts hand the sample over through "
                               "x0 at every step (needs a temporal expert); standard: spatial expert only (Eq. 8); "
                               "temporal: temporal expert only, on its own schedule; alternate: naive alternation "
                               "(Eq. 7, the paper's ablation)."),
        advanced(io.Combo.Input("matching", display_name=MATCHING, options=list(TIMESTEP_MATCHING),
                                default="same_index",
                                tooltip="Only for modes coordinated and alternate: the timestep at which the "
                                        "temporal expert re-noises. same_index as the paper writes it; nearest / "
                                        "continuous: the temporal timestep of equal noise level.")),
    ]


# ------------------------------------------------------------------------------------------------------------------
# Validation of widget values (ComfyUI skips its own min/max/combo checks for every input a node's validate_inputs
# names, so each node runs these on the inputs it names, and adds what spans several widgets).

def _label(spec) -> str:
    return f"{spec.display_name} ({spec.id})" if spec.display_name and spec.display_name != spec.id else spec.id


def widget_problem(node_cls, **values) -> str | None:
    """The first widget value of ``node_cls`` that is not finite, out of its declared range or not an option, as a
    one-line message naming the input; None if all are fine. Linked values arrive as None and are skipped."""
    specs = {i.id: i for i in node_cls.define_schema().inputs}
    for name, value in values.items():
        spec = specs[name]
        if value is None:
            continue
        if isinstance(spec, (io.Int.Input, io.Float.Input)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{_label(spec)} must be a number, got {value!r}"
            if not math.isfinite(value):
                return f"{_label(spec)} must be a finite number, got {value}"
            if spec.min is not None and value < spec.min:
                return f"{_label(spec)} = {value} is below its minimum {spec.min}"
            if spec.max is not None and value > spec.max:
                return f"{_label(spec)} = {value} is above its maximum {spec.max}"
        elif isinstance(spec, io.Combo.Input) and value not in spec.options:
            return f"{_label(spec)} = {value!r} is not one of {list(spec.options)}"
    return None


def refine_problem(te, refine_steps) -> str | None:
    if te is not None and refine_steps is not None and refine_steps > te + 1:
        return (f"refine steps (refine_steps) = {refine_steps} do not fit between T_e = {te} and 0: use at most "
                f"{te + 1} steps or raise the structure timestep T_e (te)")
    return None
