"""ComfyUI glue: a ComfyUI MODEL as a confiner_core Expert, latents in and out, progress with previews.

Every expert evaluation runs as one ``CFGGuider.sample`` call with a one-evaluation KSAMPLER function, i.e.
through ComfyUI's own sampling machinery: model loading and patching (LoRA, object patches such as
AnimateDiff-Evolved's beta schedule), conditioning processing, ControlNet, hooks, every WrappersMP wrapper
(ADE's motion injection and context windows, native context windows) and CFG. Each call cleans up after itself,
so an interruption between evaluations leaves no model patched. The maths stays in confiner_core.
"""

from __future__ import annotations

import logging

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..confiner_core import layout as L
from ..confiner_core import schedules as S
from ..confiner_core.experts import Denoiser, EvaluationLog, Expert


def model_sampling(model):
    """The schedule object ComfyUI will really use: object patches (ModelSamplingDiscrete, ADE) included."""
    return model.get_model_object("model_sampling")


def schedule_of(model, role: str) -> S.NoiseSchedule:
    ms = model_sampling(model)
    if isinstance(ms, comfy.model_sampling.CONST):
        kind = S.FLOW
    elif isinstance(ms, (comfy.model_sampling.EPS, comfy.model_sampling.V_PREDICTION)) and \
            isinstance(ms, (comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.ModelSamplingDiscreteFlow)):
        kind = S.VP
    else:
        raise ValueError(f"{role} model uses {type(ms).__name__}, a sampling type ConFiner cannot drive yet; "
                         f"use an eps/v-prediction discrete model (SD 1.5, AnimateDiff) or a flow model (Wan, Hunyuan)")
    return S.from_ve_sigmas(ms.sigmas, kind, name=f"{role}:{type(ms).__name__}")


class ComfyExpert(Expert):
    """A ComfyUI MODEL as an x0-predicting expert ("sample" prediction: ComfyUI returns the denoised latent, already
    converted from eps/v/flow by the model's own model_sampling). Conditioning is (positive, negative, cfg); CFG is
    done by ComfyUI's guider, so the core binds it with guidance 1."""

    prediction = "sample"

    def __init__(self, model, role: str, seed: int = 0, clip=None, negative=None, cfg: float = 1.0):
        self.model, self.name, self.seed = model, role, seed
        self.clip, self.negative, self.cfg = clip, negative, cfg  # for prompts given as text (prompt travel)
        self.schedule = schedule_of(model, role)
        fmt = model.get_model_object("latent_format")
        self.latent_format = fmt
        self.latent_channels = fmt.latent_channels
        self.latent_space = type(fmt).__name__
        self.layout = layout_of(model)

    def encode(self, prompt):
        """Conditioning triples pass through; text (per-segment prompts) is encoded with the CLIP input."""
        if not isinstance(prompt, str):
            return prompt
        if self.clip is None:
            raise ValueError(f"per-segment prompts need a CLIP input to encode them for the {self.name} expert")
        cond = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))
        return (cond, self.negative, self.cfg)

    last_network_calls: int = 0

    def forwards_per_call(self, n_conds: int) -> int:
        """Network forwards of the last evaluation, counted where they happen: ComfyUI's ``apply_model`` calls.
        ComfyUI batches cond and uncond into one call when memory allows, skips uncond at cfg 1, and context
        windows (native or AnimateDiff-Evolved) call the network once per window; all of that is counted as is."""
        return self.last_network_calls

    def host_sigma(self, t: float) -> float:
        """ComfyUI's sigma for our timestep: sigma/alpha for VP models, the flow time for flow models."""
        alpha, sigma = self.schedule.coefficients(t)
        return sigma / alpha if self.schedule.kind == S.VP else sigma

    def forward(self, x: torch.Tensor, t: float, conds: list) -> list[torch.Tensor]:
        (positive, negative, cfg), = conds
        alpha, _ = self.schedule.coefficients(t)
        x_host = x / alpha if self.schedule.kind == S.VP else x  # ComfyUI's EPS latents are x0 + sigma*eps
        sigma = self.host_sigma(t)
        guider = comfy.samplers.CFGGuider(self.model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        guider.model_options = comfy.model_patcher.create_model_options_clone(guider.model_options)
        calls = [0]

        def count_network_call(executor, *args, **kwargs):
            calls[0] += 1
            return executor(*args, **kwargs)

        comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "confiner_forwards",
                                                     count_network_call, guider.model_options, is_model_options=True)
        captured = {}

        @torch.no_grad()
        def one_evaluation(model, x_in, sigmas, extra_args=None, callback=None, disable=None):
            captured["x0"] = model(x_host.to(x_in), sigmas[0] * x_in.new_ones([x_in.shape[0]]), **(extra_args or {}))
            return x_in

        latent_image = self.latent_format.process_out(x_host)  # the guider applies process_in again
        guider.sample(torch.zeros_like(latent_image), latent_image, comfy.samplers.KSAMPLER(one_evaluation),
                      torch.tensor([sigma, 0.0]), disable_pbar=True, seed=self.seed)
        self.last_network_calls = calls[0]
        return [captured["x0"].to(x.device, x.dtype)]


def bind(model, positive, negative, cfg: float, role: str, seed: int, log: EvaluationLog | None = None,
         clip=None) -> Denoiser:
    """An expert bound to its ComfyUI conditioning (CFG happens in ComfyUI's guider, so the core sees guidance 1)."""
    if model is None:
        raise ValueError(f"the {role} expert needs a MODEL input")
    negative = negative if negative is not None else positive
    expert = ComfyExpert(model, role, seed, clip, negative, cfg)
    return Denoiser(expert, (positive, negative, cfg), None, 1.0, log)


def layout_of(model) -> str:
    """SD-style models take a frame batch [F, C, h, w]; native video models [B, C, T, h, w]."""
    return L.VIDEO if getattr(model.get_model_object("latent_format"), "latent_dimensions", 2) == 3 else L.FRAMES


def _checked_samples(model, latent: dict, role: str) -> torch.Tensor:
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    layout = layout_of(model)
    if samples.ndim != (5 if layout == L.VIDEO else 4):
        want = "[B, C, T, h, w]" if layout == L.VIDEO else "[F, C, h, w] (one frame per batch entry)"
        raise ValueError(f"{role} latent has shape {tuple(samples.shape)} but this model expects {want}; "
                         f"connect a latent made for this model family")
    L.check_latent(samples, layout, model.get_model_object("latent_format").latent_channels, f"{role} latent")
    return samples.float()


def latent_in(model, latent: dict, role: str) -> torch.Tensor:
    """LATENT dict -> canonical model-space video [B, C, F, h, w] (process_in applies the VAE scale factor)."""
    samples = _checked_samples(model, latent, role)
    return L.to_canonical(model.get_model_object("latent_format").process_in(samples), layout_of(model))


def noise_in(model, latent: dict) -> torch.Tensor:
    """A noise LATENT (ConFiner Noise Rescheduler) -> canonical unit noise; noise is not VAE-scaled."""
    return L.to_canonical(_checked_samples(model, latent, "noise"), layout_of(model))


def latent_out(model, x: torch.Tensor, template: dict | None = None) -> dict:
    """Canonical model-space video -> LATENT dict in the model's layout."""
    fmt = model.get_model_object("latent_format")
    layout = layout_of(model)
    out = dict(template or {})
    out.pop("noise_mask", None)
    out.pop("batch_index", None)
    out["samples"] = fmt.process_out(L.from_canonical(x, layout)).cpu()
    return out


class Progress:
    """One ComfyUI progress bar across every stage, with latent previews; each update is an interruption check."""

    def __init__(self, model, total: int):
        self.total, self.step = total, 0
        self.preview = latent_preview.prepare_callback(model, total)
        self.layout = layout_of(model)

    def __call__(self, info: dict) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        x0 = L.from_canonical(info["denoised"], self.layout)
        x = L.from_canonical(info["x"], self.layout)
        self.preview(self.step, x0, x, self.total)
        self.step += 1


def log_cost(node: str, log: EvaluationLog) -> None:
    """One console line per node run: expert evaluations and network forwards (the definition of EvaluationLog)."""
    logging.info("%s: %d expert evaluations, %d network forwards", node, sum(log.evaluations.values()),
                 sum(log.forwards.values()))
