"""What the pack knows about ComfyUI-AnimateDiff-Evolved (ADE), read by duck typing: ADE is optional and never
imported. ADE keeps its settings on the MODEL (ModelPatcher): motion models as additional models under "ADE",
``InjectionParams`` (context options) and ``SampleSettings`` (noise type, ...) as attachments.

* :func:`motion_frame_limit` -- the longest clip the expert's motion models accept without context windows, so a
  frame count they cannot make is refused before any evaluation;
* :func:`warn_ignored_noise` -- ADE's Sample Settings noise types act on noise ADE draws itself; ConFiner draws its
  own, so they would be silently ignored: say so once per run and point to the ConFiner Noise Rescheduler;
* :func:`motion_model_problems` -- a motion model in the other role than the one it was made for (AnimateDiff-Lightning
  as the temporal expert at cfg 7.5, v3 as the 4-step control expert): both run, so the video is bad without a word;
* :func:`stage_log` -- every ConFiner evaluation is a sampling call, and ADE logs two INFO lines per sampling call;
  inside a ConFiner stage each distinct line is shown once, as for one sampling run;
* :func:`injection_failure` -- a motion model that does not fit the checkpoint's UNet fails inside ADE's injection
  with a bare "index 2 is out of range": said as the mismatch it is.
"""

from __future__ import annotations

import contextlib
import logging

ADE_KEY = "ADE"
ADE_LOGGER = "AnimateDiffEvo"
PARAMS = "ADE_params"
SAMPLE_SETTINGS = "ADE_sample_settings"

log = logging.getLogger(__name__)


def _attachment(model, key: str):
    get = getattr(model, "get_attachment", None)
    return get(key) if get is not None else None


def motion_models(model) -> list:
    return list(getattr(model, "additional_models", {}).get(ADE_KEY, []) or [])


def context_length(model) -> int | None:
    """ADE's context window length on this model, None without context options."""
    params = _attachment(model, PARAMS)
    options = getattr(params, "context_options", None)
    return getattr(options, "context_length", None)


def motion_frame_limit(model) -> int | None:
    """Most frames one evaluation may hold: the motion models' position-encoding length, unless ADE context
    options split the clip into windows (then any length works). None: no limit known."""
    if context_length(model):
        return None
    limits = [getattr(getattr(m, "model", None), "encoding_max_len", None) for m in motion_models(model)]
    limits = [n for n in limits if isinstance(n, int)]
    return min(limits) if limits else None


def ignored_noise_type(model) -> str | None:
    """ADE Sample Settings noise type that ConFiner's own noise bypasses (None when default or absent)."""
    settings = _attachment(model, SAMPLE_SETTINGS)
    noise_type = getattr(settings, "noise_type", None)
    return noise_type if noise_type not in (None, "default") else None


def warn_ignored_noise(models: dict) -> list[str]:
    """One warning per run for each expert whose ADE Sample Settings ask for a noise type ConFiner does not draw
    (ConFiner makes its own noise: the structure's initial noise and every re-noising). Returns the warnings."""
    warnings = []
    for role, model in models.items():
        noise_type = ignored_noise_type(model) if model is not None else None
        if noise_type:
            warnings.append(
                f"ConFiner: the {role} expert's AnimateDiff-Evolved Sample Settings ask for noise_type "
                f"'{noise_type}', which applies only to noise ADE draws itself; ConFiner draws its own noise, so it "
                f"is not used. For FreeNoise or frame-shuffled noise use the ConFiner Noise Rescheduler node "
                f"(noise_latent -> Control Expert latent with 'use latent as noise'), or ConFiner Long Video's "
                f"noise_init.")
    for w in warnings:
        log.warning(w)
    return warnings


#: marks of motion models distilled for a few steps at cfg about 1, in the names they are published under
#: (animatediff_lightning_4step_comfyui.safetensors, AnimateLCM_sd15_t2v.ckpt)
FEW_STEP_MARKS = ("lightning", "lcm")
FEW_STEPS = 8       # at most this many control steps is a few-step structure (the paper: 4 or 8)
DISTILLED_CFG = 2.0  # above it, a few-step model's guidance burns (they are distilled for cfg 1; AnimateLCM 1-2)


def motion_model_names(model) -> list[str]:
    """The file names of the motion models ADE applied to ``model`` (its ``mm_info.mm_name``)."""
    infos = (getattr(getattr(m, "model", None), "mm_info", None) for m in motion_models(model))
    return [name for info in infos if isinstance(name := getattr(info, "mm_name", None), str)]


def few_step(name: str) -> bool:
    return any(mark in name.lower() for mark in FEW_STEP_MARKS)


def motion_model_problems(control_model=None, control_steps: int | None = None, temporal_model=None,
                          temporal_cfg: float | None = None, loaded: tuple = (), spatial_model=None,
                          spatial_cfg: float | None = None) -> list[tuple[str, str]]:
    """Motion models in the role the other one is made for, as (console warning, one-line note) pairs: an undistilled
    one sampling the control stage's few steps (its structure stays a blur), a few-step one refining at a cfg it
    burns at; both at once as the swapped pair they likely are. Names ADE did not record say nothing. ``loaded``:
    the motion model files of the graph's loaders (:func:`~.model_files.motion_model_files`): a node that sees one
    role (the Control Expert, the Refine Sampler) tells a swap from the other loader's file, where it said "load
    Lightning" and "set cfg 1", and the second kept the wrong model. A motion model on the ``spatial_model``, the
    image model's role (a link reconnected to the wrong loader), is named too: it ran without a word, and a few-step
    one at the spatial cfg burnt its colours."""
    slow = [n for n in motion_model_names(control_model) if not few_step(n)] \
        if control_model is not None and control_steps is not None and control_steps <= FEW_STEPS else []
    fast = [n for n in motion_model_names(temporal_model) if few_step(n)] \
        if temporal_model is not None and temporal_cfg is not None and temporal_cfg > DISTILLED_CFG else []
    if slow and not fast and temporal_model is None:   # the temporal role's file, from the graph
        fast = [n for n in loaded if few_step(n) and n not in slow]
    if fast and not slow and control_model is None:
        slow = [n for n in loaded if not few_step(n) and n not in fast]
    if slow and fast:
        return [(f"the control expert's motion model '{slow[0]}' is not distilled for few steps and the temporal "
                 f"expert's '{fast[0]}' is: the two motion model loaders look swapped (the control expert samples "
                 f"{control_steps or 'few'} steps, the temporal one refines at "
                 f"{'cfg above 1' if temporal_cfg is None else f'cfg {temporal_cfg:g}'}); swap the files",
                 "warning: motion models look swapped: swap the two files")]
    problems = []
    moving = motion_model_names(spatial_model) if spatial_model is not None else []
    if moving:
        burns = few_step(moving[0]) and spatial_cfg is not None and spatial_cfg > DISTILLED_CFG
        problems.append((f"the spatial expert has the motion model '{moving[0]}' attached: the spatial expert is the "
                         f"image model that adds each frame's detail (the temporal expert keeps the frames together)"
                         + (f", and this few-step one burns its colours at spatial cfg {spatial_cfg:g}" if burns
                            else "")
                         + "; connect the checkpoint's own MODEL (before AnimateDiff's loader) to spatial model on "
                           "ConFiner Refine Experts",
                         "warning: spatial model has AnimateDiff: use checkpoint MODEL"))
    if slow:
        problems.append((f"the control expert's motion model '{slow[0]}' is not distilled for few steps "
                         f"(AnimateDiff-Lightning, AnimateLCM) and samples {control_steps}: its structure stays "
                         f"blurred; load a few-step motion model for the control expert, or give it 20 steps or more",
                         "warning: control motion model not few-step: load Lightning"))
    if fast:
        problems.append((f"the temporal expert's motion model '{fast[0]}' is distilled for a few steps at cfg 1 and "
                         f"refines at cfg {temporal_cfg:g}, where its colours burn: load an undistilled motion model "
                         f"(e.g. AnimateDiff v3) for the temporal expert, or set temporal cfg to 1 on ConFiner Refine "
                         f"Experts",
                         "warning: few-step motion model: set temporal cfg 1"))
    return problems


class _OncePerStage(logging.Filter):
    """Drops ADE INFO records already shown in the current stage."""

    def __init__(self):
        super().__init__()
        self.key = None
        self.seen: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.key is None or record.levelno > logging.INFO:
            return True
        entry = (self.key, record.getMessage())
        if entry in self.seen:
            return False
        self.seen.add(entry)
        return True


_FILTER = _OncePerStage()


@contextlib.contextmanager
def stage_log(key: str):
    """Inside, ADE's INFO lines are shown once per ``key`` (a stage and expert) until :func:`new_run`."""
    logger = logging.getLogger(ADE_LOGGER)
    installed = _FILTER not in logger.filters
    if installed:
        logger.addFilter(_FILTER)
    previous, _FILTER.key = _FILTER.key, key
    try:
        yield
    finally:
        _FILTER.key = previous
        if installed:
            logger.removeFilter(_FILTER)


def new_run() -> None:
    """A node run starts: every ADE line may be shown once again."""
    _FILTER.seen.clear()


def injection_failure(error: BaseException, checkpoints: tuple = ()) -> str | None:
    """What to say where ``error`` was raised while ADE attached a motion model to the UNet (its ``inject``
    methods, found in the traceback): the motion model does not fit the checkpoint. A trial's artist who picked
    another SD 1.5 file got only "index 2 is out of range". ``checkpoints``: the files of the models the node ran
    (named where known). None for any other error."""
    tb, inside, name = error.__traceback__, False, None
    while tb is not None:
        code = tb.tb_frame.f_code
        if "inject" in code.co_name and "animatediff" in code.co_filename.lower():
            inside = True
            info = getattr(tb.tb_frame.f_locals.get("self"), "mm_info", None)
            name = getattr(info, "mm_name", None) or name
        tb = tb.tb_next
    if not inside:
        return None
    which = f"the motion model '{name}'" if isinstance(name, str) else "a motion model"
    files = [f"'{f}'" for f in dict.fromkeys(checkpoints) if f]
    unet = f"the UNet of {' or '.join(files)}" if files else "the checkpoint's UNet"
    return (f"AnimateDiff-Evolved could not attach {which} to {unet} ({type(error).__name__}: "
            f"{error}): they do not fit each other; load a checkpoint of the family the motion model was made for "
            f"(SD 1.5 for AnimateDiff v3 and Lightning), or the motion model made for this checkpoint")
