"""What the pack knows about ComfyUI-AnimateDiff-Evolved (ADE), read by duck typing: ADE is optional and never
imported. ADE keeps its settings on the MODEL (ModelPatcher): motion models as additional models under "ADE",
``InjectionParams`` (context options) and ``SampleSettings`` (noise type, ...) as attachments.

* :func:`motion_frame_limit` -- the longest clip the expert's motion models accept without context windows, so a
  frame count they cannot make is refused before any evaluation;
* :func:`warn_ignored_noise` -- ADE's Sample Settings noise types act on noise ADE draws itself; ConFiner draws its
  own, so they would be silently ignored: say so once per run and point to the ConFiner Noise Rescheduler;
* :func:`stage_log` -- every ConFiner evaluation is a sampling call, and ADE logs two INFO lines per sampling call;
  inside a ConFiner stage each distinct line is shown once, as for one sampling run.
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
