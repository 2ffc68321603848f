"""Input declarations shared by several nodes (one definition, one label, one tooltip) and the checks every node's
``validate_inputs`` runs on its widget values.

Widget ids are the names saved in workflows and API prompts; they never change, so old workflows keep loading
(ComfyUI 0.3.64 and 0.8.0 have no input-alias mechanism). What an artist reads is the ``display_name`` (the
frontend's widget label): the same concept carries the same label on every node, whatever its id.
"""

from __future__ import annotations

import math
import re

from comfy_api.latest import io

from ..confiner_core.chain import AUTO, DEFAULT_TE, MATCHINGS, MODES, STRUCTURE_NOISES, ChainConfig
from ..confiner_core.errors import meant_choice
from ..confiner_core.long import COHERENCE_MEMORIES
from ..confiner_core.sampling import SAMPLERS
from ..confiner_core.timesteps import SPACINGS

CATEGORY = "ConFiner"

# Labels: one per concept, used by every node that has it.
CONTROL_STEPS = "control steps"
CONTROL_CFG = "control cfg"
CONTROL_SAMPLER = "control sampler"
STRUCTURE_TIMESTEP = "structure timestep T_e (0: auto)"   # (0, the default: the model's own; a trial read it as none)
REFINE_STEPS = "refine steps"
REFINE_MODE = "refine mode"
MATCHING = "temporal timestep matching"
CONTROL_SPACING = "control spacing"
CONTROL_ETA = "control eta"
STRUCTURE_NOISE = "structure noise schedule"
COHERENCE_MEMORY = "coherence memory"
LOW_NOISE_MODEL = "low-noise model"   # prefixed with the role on nodes with several roles ("temporal low-noise model")
LOW_NOISE_CFG = "low-noise cfg"
BOUNDARY = "high/low-noise boundary"
SPATIAL_FRAMES = "spatial expert frames"

SEED_TOOLTIPS = {
    "control": "Seed of the structure's initial noise (the control stage). Same seed, same structure. With 'use "
               "latent as noise' the noise is the latent's (the Noise Rescheduler's seed), and this seed serves DDIM's "
               "eta alone.",
    "refine": "Seed of the refinement's noise: noising the structure to T_e (Eq. 6) and the re-noisings between "
              "the experts (Eq. 9, 11). Keep it fixed and change the control seed to try new structures with the "
              "same refinement, or the other way round.",
    "long": "One seed for every random draw of ConFiner-Long: segment noise, re-noising, refinement.",
}


def advanced(widget: io.Input) -> io.Input:
    """Marks a widget hidden until its node's 'Show Advanced' (right-click menu): web/confiner.js hides it (the
    frontend 1.35 keeps the flag in widget.options and hides by widget.advanced, which it never sets; 1.27 keeps a
    row for a hidden widget, so there it stays shown); its tooltip says when it applies. Set after construction: ComfyUI 0.3.64's widget inputs take no extra_dict."""
    widget.extra_dict = {**(widget.extra_dict or {}), "advanced": True}
    return widget


SEED_LABELS = {"control": "control seed", "refine": "refine seed", "long": "seed"}


def seed_input(kind: str) -> io.Int.Input:
    """Id ``seed`` on every node (saved workflows); the label says which seed it is where a graph has two."""
    return io.Int.Input("seed", display_name=SEED_LABELS[kind], default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                        control_after_generate=True, tooltip=SEED_TOOLTIPS[kind])


def control_inputs(prefix: str = "") -> list:
    """Ids differ by node (``steps`` on the Control Expert, ``control_steps`` on the Long Video: saved
    workflows use them), labels do not."""
    return [
        io.Int.Input(f"{prefix}steps", display_name=CONTROL_STEPS, default=4, min=1, max=1000,
                     tooltip="Control-stage steps (paper: 4 or 8, matching an AnimateDiff-Lightning checkpoint). "
                             "One expert evaluation each."),
        io.Float.Input(f"{prefix}cfg", display_name=CONTROL_CFG, default=1.0, min=0.0, max=100.0, step=0.1,
                       round=0.01, tooltip="Guidance of the control expert. 1.0 is our default, right for distilled "
                                           "Lightning models (the paper states no cfg value); undistilled experts "
                                           "want ~7.5. At any cfg other than 1.0 the negative prompt is used too."),
        io.Combo.Input(f"{prefix}sampler", display_name=CONTROL_SAMPLER, options=list(SAMPLERS), default="euler",
                       tooltip="euler: for distilled few-step experts (AnimateDiff-Lightning), what they were trained "
                               "for; ddim: the paper's control sampler, for undistilled experts (AnimateDiff v1-3, "
                               "ModelScope); dpmpp_2m (DPM-Solver++ 2M) and unipc (UniPC, Wan's own sampler): "
                               "second order, for undistilled experts (Wan, AnimateDiff v3) in few steps."),
    ]


# The inputs below were added after the first release. Nodes append them after their older widgets, as optional
# inputs with defaults, so workflows saved before keep their positional widget values.

def control_sampling_inputs(prefix: str = "") -> list:
    return [
        advanced(io.Combo.Input(f"{prefix}spacing", display_name=CONTROL_SPACING, options=list(SPACINGS),
                                default="trailing", optional=True,
                                tooltip="Control timesteps as diffusers lays them out: trailing (AnimateDiff-"
                                        "Lightning), leading (SD-style configs: 751, 501, 251, 1 for 4 steps) or "
                                        "linspace. Flow models: trailing is ComfyUI's 'simple' schedule when the "
                                        "steps divide 1000 (4, 5, 8...; one timestep apart otherwise), linspace "
                                        "diffusers' FlowMatchEuler.")),
        advanced(io.Float.Input(f"{prefix}eta", display_name=CONTROL_ETA, default=0.0, min=0.0, max=1.0, step=0.05,
                                optional=True,
                                tooltip="Only for control sampler ddim: DDIM eta of the control stage, 0 "
                                        "deterministic, 1 as stochastic as DDPM. Noise comes from the seed.")),
    ]


def structure_noise_input() -> io.Combo.Input:
    return advanced(io.Combo.Input("structure_noise", display_name=STRUCTURE_NOISE, options=list(STRUCTURE_NOISES),
                                   default="spatial", optional=True,
                                   tooltip="Whose noise schedule adds the noise to the structure before refining. "
                                           "spatial (default): the refining expert's (the spatial expert's; the "
                                           "temporal expert's in refine mode temporal), so T_e means the same "
                                           "noise level as on its own sampler; control: the control expert's, which "
                                           "adds more noise on AnimateDiff-style (linear) schedules, so the "
                                           "refiners change more (needs the control model). Paper: Eq. 6 / "
                                           "Algorithm 1, line 4."))


def coherence_memory_input() -> io.Combo.Input:
    return advanced(io.Combo.Input("coherence_memory", display_name=COHERENCE_MEMORY, options=list(COHERENCE_MEMORIES),
                                   default="unguided", optional=True,
                                   tooltip="Only with gamma > 0: what each segment's layout is pulled towards. "
                                           "unguided (default, Section 3.5's reading of Eq. 12): the "
                                           "previous segment's own noise prediction, so the pulls do not add up "
                                           "along a long video; guided: the previous segment as it was really "
                                           "made (after its own pull), so a look carries on from segment to "
                                           "segment."))


def low_noise_inputs(prefix: str, role: str, cfg_default: float) -> list:
    """A second MODEL that shares the role below a noise level (Wan 2.2 A14B's low-noise expert; the role's MODEL
    input is then the high-noise one), its cfg and the boundary. With a ``prefix`` (a node of several roles) the
    labels name the role too."""
    label = (lambda text: f"{role} {text}") if prefix else (lambda text: text)
    return [
        io.Model.Input(f"{prefix}low_noise_model", display_name=label(LOW_NOISE_MODEL), optional=True,
                       tooltip=f"Optional: the low-noise half of a two-expert model (Wan 2.2 A14B low noise). The "
                               f"{role} MODEL input is then the high-noise half: it evaluates where the noise level "
                               f"sigma >= the boundary, this model below it, like diffusers' Wan 2.2 pipeline. Both "
                               f"must share the latent space and schedule (shift)."),
        advanced(io.Float.Input(f"{prefix}low_noise_cfg", display_name=label(LOW_NOISE_CFG), default=cfg_default,
                                min=0.0, max=100.0, step=0.1, round=0.01, optional=True,
                                tooltip="Only with a low-noise model: its guidance (the other cfg is the high-noise "
                                        "model's). Wan 2.2 A14B text-to-video: 3.0 low, 4.0 high; distilled "
                                        "few-step LoRAs: 1.0 both.")),
        advanced(io.Float.Input(f"{prefix}boundary", display_name=label(BOUNDARY), default=0.875, min=0.0, max=1.0,
                                step=0.005, optional=True,
                                tooltip="Only with a low-noise model: the noise level (flow sigma after the shift, "
                                        "0..1) where the high-noise model hands over to the low-noise one. Wan 2.2 "
                                        "A14B: 0.875 text-to-video, 0.9 image-to-video.")),
    ]


AUTO_TE = 0   # the te widgets' default: the refining expert's own T_e (chain.DEFAULT_TE: 100 SD-family, 250 flow)


def te_setting(te: int) -> int | None:
    """A te widget's value as ChainConfig takes it: 0 (automatic) is None, the refining expert's default."""
    return te or None


def refine_inputs() -> list:
    return [
        io.Int.Input("te", display_name=STRUCTURE_TIMESTEP, default=AUTO_TE, min=0, max=999,
                     tooltip="How much of the control expert's video is kept. Lower keeps more of its layout "
                             "and motion; higher lets the refiners change more. The video is noised to timestep "
                             "T_e and refined from there. 0 (default): the refining model's own, 100 for SD-family "
                             "models (the paper's; with 4 control steps, 300 and more loses image quality) and 250 "
                             "for flow models (Wan, Qwen-Image, Flux), whose T_e is the noise level sigma x 1000: "
                             "250 there is about SD's 100."),
        io.Int.Input("refine_steps", display_name=REFINE_STEPS, default=5, min=1, max=999,   # at most T_e
                     tooltip="Refinement steps from T_e to 0 at uniform intervals (paper: 5), at most T_e. "
                             "Coordinated mode makes 3 expert evaluations per step, the other modes 1."),
        io.Combo.Input("mode", display_name=REFINE_MODE, options=list(MODES), default="coordinated",
                       tooltip="Who refines. coordinated (default): the image expert adds frame detail and the "
                               "video expert keeps the frames coherent, both at every step (needs a temporal "
                               "expert); standard: the image expert alone (sharp frames, may flicker); temporal: "
                               "the video expert alone; alternate: the two take turns (the paper's weaker "
                               "baseline). Paper: Algorithm 1, Eq. 8, Eq. 7."),
        advanced(io.Combo.Input("matching", display_name=MATCHING, options=list(MATCHINGS), default=AUTO,
                                tooltip="Only for mode coordinated: how much noise the video expert sees at each "
                                        "step. same_index (the paper's): the same timestep number as the image "
                                        "expert, which is more noise on AnimateDiff-style (linear) schedules; "
                                        "nearest / continuous: the same noise level (an alternative reading of the "
                                        "paper, for comparing the two). auto (default): same_index, or nearest "
                                        "where one expert is a flow model (Wan, Qwen-Image, Flux) and the other is "
                                        "not (SD 1.5), or where their schedules put T_e at noise levels more than "
                                        "1.5x apart: there one timestep number is a very different noise level; "
                                        "the node's text then says 'matching nearest'.")),
    ]


# ------------------------------------------------------------------------------------------------------------------
# Validation of widget values.
#
# ComfyUI files a node's ``validate_inputs`` message once under every input that function names (the frontend lists
# "te - ...", "mode - ...": five entries for one problem), and skips its own min/max/combo checks for those inputs.
# So a node's ``validate_inputs`` names exactly the widgets of its one check that spans several widgets, and checks
# their ranges itself: the message is filed under the widgets it is about. Every other widget is left to the host's
# own checks when the prompt is queued, and :func:`check_widgets` runs on all of them when the node starts (before
# any evaluation): what the host does not check (a NaN or infinite float from an API prompt, a V3 combo's value on
# ComfyUI 0.3.64) and the other multi-widget checks.

def _label(spec) -> str:
    return f"{spec.display_name} ({spec.id})" if spec.display_name and spec.display_name != spec.id else spec.id


def input_place(node_cls, name: str) -> str:
    """Where an artist finds input ``name``: its label on the node, by the node's title without a trailing remark
    ("ConFiner Refine Experts (bundle)" is ConFiner Refine Experts, as every message names it)."""
    schema = node_cls.define_schema()
    spec = next(i for i in schema.inputs if i.id == name)
    return f"{spec.display_name or spec.id} on {re.sub(r' [(][^()]*[)]$', '', schema.display_name)}"


def widget_problems(node_cls, **values) -> dict:
    """Input -> the problem of its widget value (not finite, out of its declared range, not an option), for each
    value with one. Linked values arrive as None and are skipped."""
    specs = {i.id: i for i in node_cls.define_schema().inputs}

    def problem(spec, value) -> str | None:
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
            meant = meant_choice(value, spec.options)   # (a workflow edited by hand: 'Coordinated', 'DDIM')
            return f"{_label(spec)} = {value!r} is not one of {list(spec.options)}" + \
                (f": did you mean {meant!r}?" if meant else "")
        return None

    return {name: p for name, value in values.items() if value is not None for p in [problem(specs[name], value)]
            if p}


def widget_problem(node_cls, **values) -> str | None:
    """Every problem of :func:`widget_problems` in one line naming each input (an API prompt's te -5 and refine steps
    -1 told only te's); None if all are fine."""
    return "; ".join(widget_problems(node_cls, **values).values()) or None


def widget_checked(node_cls, **values) -> tuple[list, dict]:
    """For a ``validate_inputs`` that names every problem at once: each widget's own problem
    (:func:`widget_problems`), and the values with those in a problem set to None, which the checks of several
    widgets then skip (T_e -5 made no refine-steps check, only an error of its own)."""
    problems = widget_problems(node_cls, **values)
    return list(problems.values()), {name: None if name in problems else v for name, v in values.items()}


def host_converted(node_cls, **values) -> dict:
    """The values a ``validate_inputs`` should judge: a number input the host could not convert (``te`` = "abc" from an
    API prompt, a NaN integer) becomes None, since the host files its own message under that input alone, and the
    validation's would be filed again under every input the function names."""
    specs = {i.id: i for i in node_cls.define_schema().inputs}

    def converted(spec, value) -> bool:
        if isinstance(spec, io.Int.Input):
            return isinstance(value, int) and not isinstance(value, bool)
        return not isinstance(spec, io.Float.Input) or isinstance(value, (int, float)) and not isinstance(value, bool)

    return {name: value if converted(specs[name], value) else None for name, value in values.items()}


def check_widgets(node_cls, **values) -> None:
    """:func:`widget_problem` at the start of ``execute`` (or ``check_lazy_status``): a ValueError naming the input."""
    problem = widget_problem(node_cls, **values)
    if problem:
        raise ValueError(problem)


def refine_problem(te, refine_steps) -> str | None:
    """Steps that do not fit below a T_e set, by the library's rule at the nodes' spacing
    (:meth:`~confiner_core.chain.ChainConfig.refine_room`); below T_e 0, automatic, where they fit under no model's
    default (between the defaults, once the refining model is known: 999 steps were refused only then)."""
    if refine_steps is None or te is None:
        return None
    if te:
        room = ChainConfig(te=te).refine_room()
        if refine_steps > room:
            return (f"refine steps (refine_steps) = {refine_steps} do not fit between T_e = {te} and 0: use at most "
                    f"{room} step{'s' if room > 1 else ''} or raise the structure timestep T_e (te)")
        return None
    rooms = {kind: ChainConfig(te=t).refine_room() for kind, t in DEFAULT_TE.items()}
    if refine_steps > max(rooms.values()):
        return (f"refine steps (refine_steps) = {refine_steps} do not fit below the automatic T_e (0: "
                f"{DEFAULT_TE['vp']} for SD models, {DEFAULT_TE['flow']} for flow models such as Wan): use at most "
                f"{rooms['vp']} steps ({rooms['flow']} with a flow model), or set the structure timestep T_e (te)")
    return None
