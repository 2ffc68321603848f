"""ComfyUI glue: a ComfyUI MODEL as a confiner_core Expert, latents in and out, progress with previews.

Every expert evaluation runs inside a ``CFGGuider.sample`` call whose KSAMPLER function evaluates the model, i.e.
through ComfyUI's own sampling machinery: model loading and patching (LoRA, object patches such as
AnimateDiff-Evolved's beta schedule), conditioning processing, ControlNet, hooks, every WrappersMP wrapper
(ADE's motion injection and context windows, native context windows) and CFG. By default one such call per expert
serves a node's whole stage (stage sessions, :mod:`nodes.sessions`); with ``CONFINER_STAGE_SESSIONS=0`` each
evaluation is a call of its own. Every call cleans up after itself when it ends, also on Cancel or an error, so no
model stays patched. Each node shows one progress bar that moves once per expert evaluation. The maths stays in
confiner_core.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import time
from collections import Counter

import torch

import comfy.model_base
import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..confiner_core import layout as L
from ..confiner_core import schedules as S
from ..confiner_core.chain import (AUTO, COORDINATED, TEMPORAL, UNDISTILLED_CONTROL, UNUSED_BECAUSE, ChainConfig,
                                   control_noise_warning, control_timesteps, distilled_control_warning,
                                   extraction_schedule, good_te_range, refine_positions, same_index_warning,
                                   settled, structure_kept, structure_lost_warning, table3_warning,
                                   unused_settings)
from ..confiner_core.experts import Denoiser, EvaluationLog, Expert, ExpertPair, hand_off
from ..confiner_core.latent_spaces import KNOWN_SPACES, Codec, LatentSpace, per_frame, wan22_space
from ..confiner_core.refine import SAME_INDEX, matched_timestep
from ..confiner_core.sampling import MAX_SEED, ItemGenerators, seeded
from . import ade, model_files, sessions
from .codecs import VAEShelf, own_vae_file, shape_family, vae_file, vae_file_shape
from .families import FAMILIES, family_of
from .texts import FILE_FIRST, IF_THIS_ONE, LINE_WIDTH, error_lines, numbered_problems
from .types import mismatch


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
    sigmas = ms.sigmas
    if kind == S.FLOW and len(sigmas) != FLOW_TIMESTEPS:
        # Flux-style samplings (Qwen-Image, Flux: ModelSamplingFlux) tabulate 10000 flow times; the core's tables
        # have 1000 positions like every other family, so read the model's own shifted flow time at
        # u = (t + 1) / 1000, as ModelSamplingDiscreteFlow's table holds it. (A T_e names a noise level, not a
        # position: sigma = T_e / 1000 whatever the shift, NoiseSchedule.index.)
        u = torch.arange(1, FLOW_TIMESTEPS + 1, dtype=torch.float64) / FLOW_TIMESTEPS
        sigmas = torch.tensor([float(ms.percent_to_sigma(1.0 - float(x))) for x in u], dtype=torch.float64)
    return S.from_ve_sigmas(sigmas, kind, name=f"{role}:{type(ms).__name__}")


FLOW_TIMESTEPS = 1000


# Compression of ComfyUI's latent formats, which the formats themselves do not carry (their VAEs do):
# spatial factor, temporal factor, causal (frame 0 encoded alone).
COMPRESSION = {"Wan21": (8, 4, True), "Wan22": (16, 4, True), "HunyuanVideo": (8, 4, True),
               "HunyuanVideo15": (16, 4, True), "Mochi": (8, 6, True), "LTXV": (32, 8, True),
               "LTXAV": (32, 8, True), "Cosmos1CV8x8x8": (8, 8, True), "Flux2": (16, 1, False)}


def _numbers(value, fallback):
    if value is None:
        return fallback
    if isinstance(value, torch.Tensor):
        flat = value.flatten().tolist()
        return flat[0] if len(flat) == 1 else tuple(flat)
    return float(value)


def space_of(model) -> LatentSpace:
    """The core's latent space of a ComfyUI model, read off its ``latent_format`` (normalisation: ``latents_mean``
    or ``shift_factor``, ``scale_factor``, ``latents_std``) and :data:`COMPRESSION`. Formats that match one of the
    core's named spaces take its name, so ComfyUI and diffusers experts of one family agree."""
    fmt = model.get_model_object("latent_format")
    name = type(fmt).__name__
    spatial, temporal, causal = COMPRESSION.get(name, (8, 1, False))
    shift = _numbers(getattr(fmt, "latents_mean", None), _numbers(getattr(fmt, "shift_factor", None), 0.0))
    space = LatentSpace(name, fmt.latent_channels, spatial, temporal, causal, float(fmt.scale_factor), shift,
                        _numbers(getattr(fmt, "latents_std", None), 1.0))
    for known in KNOWN_SPACES:
        renamed = LatentSpace(known.name, *(getattr(space, f) for f in ("channels", "spatial_factor",
                                                                         "temporal_factor", "causal", "scale")),
                              space.shift, space.std)
        if _close(renamed, known):
            return known
    if name == "Wan22" and space.channels == 48:   # the TI2V-5B VAE's: the core's space of its statistics
        return wan22_space(space.shift, space.std)   # (named "Wan22", it missed its title, fps and VAE file)
    return space


def _close(a: LatentSpace, b: LatentSpace) -> bool:
    def vec(v):
        return torch.tensor(v if isinstance(v, tuple) else (v,), dtype=torch.float64)
    same = (a.name, a.channels, a.spatial_factor, a.temporal_factor, a.causal) == \
        (b.name, b.channels, b.spatial_factor, b.temporal_factor, b.causal)
    return same and all(vec(getattr(a, f)).shape == vec(getattr(b, f)).shape and
                        torch.allclose(vec(getattr(a, f)), vec(getattr(b, f)), atol=1e-4)
                        for f in ("scale", "shift", "std"))


# ------------------------------------------------------------------------------------------------------------------
# The text a model reads

# The first layer of a diffusion model that reads the text encoder's output (Wan's text_embedding, Flux's and
# Qwen-Image's txt_in); SD-style UNets name the width in their config (context_dim, their cross-attention's input).
TEXT_INPUT_LAYERS = ("text_embedding.0", "txt_in")


def text_width(model) -> int | None:
    """The width of the text embeddings ``model`` reads, None where the pack cannot tell."""
    base = getattr(model, "model", None)
    net = getattr(base, "diffusion_model", None)
    for path in TEXT_INPUT_LAYERS:
        try:
            width = getattr(net.get_submodule(path), "in_features", None)
        except AttributeError:
            continue
        if width:
            return int(width)
    width = getattr(getattr(base, "model_config", None), "unet_config", {}).get("context_dim")
    return width if isinstance(width, int) else None


def pooled_width(model) -> int | None:
    """The width of the pooled text vector the model reads beside the text tokens (Flux's and HunyuanVideo's
    ``vector_in``: CLIP-L's 768), None where it reads none."""
    net = getattr(getattr(model, "model", None), "diffusion_model", None)
    width = getattr(getattr(getattr(net, "vector_in", None), "in_layer", None), "in_features", None)
    return int(width) if width else None


def config_name(model) -> str:
    """The model's family as ComfyUI's model config names it (``WAN21_T2V``, ``Flux``)."""
    config = getattr(model.model, "model_config", None)
    return type(config if config is not None else model.model).__name__


def family_name(model) -> str:
    """The model's family as artists name it (:data:`~.families.FAMILIES`), with ComfyUI's model config name ("Wan
    2.1 (WAN21_T2V)"); the config name alone for a family the pack names not."""
    name = config_name(model)
    family = family_of(name)
    friendly = family and family.name
    if family and family.by_width:
        friendly = family.by_width.get(getattr(getattr(model.model, "diffusion_model", None), "dim", None), friendly)
    return f"{friendly} ({name})" if friendly else name


def _family(model) -> tuple[str, str]:
    """The model's family (:func:`family_name`), and where an artist gets its text encoder."""
    family = family_of(config_name(model))
    # (otherwise its checkpoint loader's; Load Diffusion Model has no CLIP output: a trial read it so)
    return family_name(model), (family and family.text_encoder) or \
        "the CLIP output of its checkpoint loader; loaded alone, Load CLIP of its type"


def titled_for_another_family(title: str | None, model) -> bool:
    """Whether a loader's title names another family than the model it loaded and not the model's own ("Qwen-Image
    (spatial expert)" holding Wan's file): then the file, not the prompt, is the likely mistake."""
    if not title:
        return False
    name, said = config_name(model), title.lower()
    named = [f.prefix for f in FAMILIES if f.title_word and re.search(f.title_word, said)]
    return bool(named) and not any(name.startswith(prefix) for prefix in named)


def refuse_all(problems: list, model: str | None = None, file_first: bool = False) -> None:
    """Raises every problem found before anything ran in one message ("2 problems: (1) ...; (2) ..."): an artist
    who swapped a model met them one run at a time, each after the fix of the one before. Nothing if none.

    ``model``: the one model they all concern, with its file ("the spatial model, FLUX.1, file 'flux1-dev...'"):
    its prompt and VAE then differ from it because the file may be the mistake, so where several do, that fix
    leads. An artist who picked the FLUX file in the Qwen-Image loader was told to rewire FLUX's VAE and text
    encoder, never to pick the Qwen-Image file. One mismatch alone is more likely the prompt or VAE: it leads, and
    the file comes after, unless ``file_first`` (the loader is titled for another family:
    :func:`titled_for_another_family`)."""
    problems = [p for p in problems if p]
    if not problems:
        return
    said = numbered_problems(problems)
    if model and len(problems) > 1 and all(getattr(p, "brief", None) for p in problems):
        # several inputs of another family (a swapped model): each said short, the whole story on the console
        # (a trial's dialog held 7 lines for an SD 1.5 file in the Wan + Qwen-Image graph's spatial loader)
        logging.warning("ConFiner: %s, does not fit the prompt or VAE connected for it: %s", model, said)
        raise ValueError(f"{model}, does not fit what is connected for it: {'; '.join(p.brief for p in problems)}. "
                         f"{FILE_FIRST.capitalize()}{IF_THIS_ONE}{'; '.join(p.fix for p in problems)}. The console "
                         f"says more.")
    if model and (len(problems) > 1 or file_first):
        said = f"{model}, does not fit the prompt or VAE connected for it: {FILE_FIRST}{IF_THIS_ONE}{said}"
    elif model:   # one mismatch alone: more likely the prompt or VAE than the file, so the problem leads
        said = f"{said}; or, if {model}, is not the model meant, pick the file meant there"
    raise ValueError(said)


def problem_of(check, *args, **kwargs) -> ValueError | None:
    """The ValueError ``check(*args, **kwargs)`` raises, None if it passes (for :func:`refuse_all`)."""
    try:
        check(*args, **kwargs)
    except ValueError as e:
        return e
    return None


def check_text_width(model, role: str, positive, negative, cfg: float, which_model: str = "its model",
                     sources: dict | None = None) -> None:
    """Conditioning from another family's text encoder (an SD 1.5 CLIP's 768-wide prompt for Wan, which reads 4096)
    fails in the model's first layer with a bare shape error; refused here, before any evaluation, naming the
    input. The negative only where it is used: at cfg 1 ComfyUI never evaluates it. A model that also reads a pooled
    vector (Flux: CLIP-L's) gets zeros in its place from ComfyUI when the prompt has none, without a word: a UMT5
    prompt (Wan's, 4096 wide like Flux's T5) would run and ignore half the text encoder, so that is refused too.
    Both prompts in one message (a trial's artist fixed the positive and met the negative on the next Run). A
    wrong file in a loader meets this check first (an SD 1.5 file in the Wan loader): the bundle's
    :func:`refuse_all` then leads with the file. ``sources``: "positive"/"negative" -> the input each came from,
    where not the role's own (an unconnected temporal prompt is the spatial one)."""
    width, pooled = text_width(model), pooled_width(model)
    prompts = (("positive", positive),) + ((("negative", negative),) if not math.isclose(cfg, 1.0) else ())
    found, needs = [], []   # found: (which, " (its input)", what it is); needs: what the model reads
    for which, conditioning in prompts:
        source = (sources or {}).get(which) or \
            (f"{role} {which}, {role}_{which}" if role in ("spatial", "temporal") else None)
        source = f" ({source})" if source else ""
        for entry in conditioning or ():
            got = entry[0].shape[-1] if isinstance(entry[0], torch.Tensor) else None
            vector = entry[1].get("pooled_output") if len(entry) > 1 and isinstance(entry[1], dict) else None
            got_pooled = vector.shape[-1] if isinstance(vector, torch.Tensor) else None
            if width is not None and got is not None and got != width:
                found.append((which, source, "is", f"{got} wide"))
                needs.append(f"text {width} wide")
                break
            if pooled is not None and got_pooled != pooled:
                has = "no pooled text vector" if got_pooled is None else f"a {got_pooled}-wide pooled text vector"
                found.append((which, source, "carries", has))
                needs.append(f"a pooled text vector {pooled} wide (CLIP-L's) beside the text")
                break
    if not found:
        return
    family, loader = _family(model)
    reads = " and ".join(dict.fromkeys(needs))
    said = " and ".join(f"the {role} expert's {which} conditioning{source} {verb} {what}"
                        for which, source, verb, what in found)
    whichs = " and ".join(which for which, *_ in found)
    if len(found) == 2 and found[0][2:] == found[1][2:]:   # both prompts alike: said once
        sources = "; ".join(source.strip(" ()") for _, source, _, _ in found if source)
        verb, what = {"is": "are", "carries": "carry"}[found[0][2]], found[0][3]
        brief = f"its {whichs} prompts{f' ({sources})' if sources else ''} {verb} {what} where it reads {reads}"
    else:
        brief = "; ".join(f"its {which} prompt{source} {verb} {what} where it reads {reads}"
                          for which, source, verb, what in found)
    raise mismatch(f"{said}, but {which_model}, {family}, reads {reads}: encode "
                   f"{'that prompt' if len(found) == 1 else 'those prompts'} with this model's own text encoder "
                   f"({loader})", brief,
                   f"encode the {whichs} prompt{'s' * (len(found) > 1)} with its own text encoder ({loader})")


def check_clip_width(clip, models: dict, node_input: str) -> None:
    """Text that one CLIP input encodes for several experts (per-segment prompts): every expert's model must read
    that encoder's width. ``models``: role -> MODEL (or None). Experts that read text of different widths can never
    share one encoder: said as such (the message for one expert sent the artist to an encoder the next refused)."""
    widths = {role: text_width(model) for role, model in models.items() if model is not None}
    widths = {role: width for role, width in widths.items() if width is not None}
    if len(set(widths.values())) > 1:
        said = "; ".join(f"{role} {width}" for role, width in widths.items())
        raise ValueError(f"{node_input}: the experts read text of different widths ({said}), and every expert takes "
                         f"the segment prompts from this one CLIP, which no single text encoder can serve: clear the "
                         f"segment prompts (each expert then reads its own connected prompts), or use experts of one "
                         f"text-encoder family")
    got = None
    for role, model in models.items():
        width = text_width(model) if model is not None else None
        if width is None:
            continue
        if got is None:   # one short encode, only where there is a width to compare with
            got = clip.encode_from_tokens_scheduled(clip.tokenize(""))[0][0].shape[-1]
        if got != width:
            family, loader = _family(model)
            raise ValueError(f"{node_input} encodes text {got} wide, but the {role} expert's model, {family}, reads "
                             f"{width}: every expert takes the segment prompts from this one CLIP, so connect the "
                             f"text encoder of their family ({loader}), or clear the segment prompts")


# ------------------------------------------------------------------------------------------------------------------
# Image or video model, and how an expert takes its latents

# How an image expert refines a clip of a video latent space (Wan's causal 4x temporal compression):
LATENT_FRAMES = "latent frames"   # every latent frame as an image, batched (no VAE; frames after the first pack 4
                                  # pixel frames, which an image model never saw)
PIXEL_FRAMES = "pixel frames"     # every pixel frame encoded alone (decode -> per-frame expert -> encode, the core's
                                  # per-frame space; needs the VAE)
FRAME_MODES = (LATENT_FRAMES, PIXEL_FRAMES)


def latent_dimensions(model) -> int:
    return getattr(model.get_model_object("latent_format"), "latent_dimensions", 2)


def is_image_model(model) -> bool:
    """Image vs video model, from the model class (a video latent format alone does not tell: Qwen-Image uses
    Wan 2.1's)."""
    if latent_dimensions(model) == 2:
        return True
    classes = tuple(c for c in (getattr(comfy.model_base, f.prefix, None) for f in FAMILIES
                                if f.image_in_video_format) if c)
    return isinstance(getattr(model, "model", None), classes)


# the experts whose role is to relate frames, and where an artist connects them
VIDEO_ROLES = {"control": "model on ConFiner Control Expert", "temporal": "temporal model on ConFiner Refine Experts"}


def relates_frames(model) -> bool:
    """A video model, or an image model with motion models attached (AnimateDiff-Evolved's)."""
    return not is_image_model(model) or bool(ade.motion_models(model))


def takes_no_motion_model(model) -> bool:
    """An image model that no motion model attaches to (AnimateDiff-Evolved's go on SD-style UNets): a transformer
    image model such as FLUX.1 or Qwen-Image."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return is_image_model(model) and not isinstance(getattr(getattr(model, "model", None), "diffusion_model", None),
                                                    UNetModel)


def check_video_role(model, role: str, swapped: bool = False, file: str | None = None,
                     spatial_file: str | None = None, shared: bool | None = None, where: str | None = None,
                     loader: str | None = None) -> None:
    """Refuses, before any other check, an image model that cannot relate frames in a video role (control,
    temporal): the command line refuses such a family there, and in a graph the first problem found used to be its
    text encoder, VAE or latent layout, whose fixes led nowhere. An SD-style image model is warned instead
    (:func:`frames_alone`): a motion model may be attached to it. ``swapped``: the spatial model is the video model;
    ``file``, ``spatial_file``: the loaders' file names, where the graph tells them (:func:`input_file`);
    ``shared``: whether this model's loader feeds the control expert too (None: the graph does not say); ``where``:
    the input and node the model is connected to (:func:`~.schema.input_place`; default: the role's usual one);
    ``loader``: that loader's title (:func:`input_loader`), named where it feeds the control expert too.

    Files picked in each other's loaders (the loader feeds the control expert too) are told as such: an artist told
    to swap the two links did, and the Wan loader, which fed the Control Expert too, still held the image model (a
    second refusal, there). Where the graph does not say, both fixes are offered."""
    if model is None or role not in VIDEO_ROLES or not takes_no_motion_model(model):
        return
    name = family_name(model) + (f", file '{file}'" if file else "")
    if swapped and shared is False:   # its loader serves this role alone: the links were swapped, not the files
        fix = ("the spatial model is the video model: connect the two the other way round (spatial model <-> "
               "temporal model)")
    elif swapped and shared and spatial_file:   # swapping the links would move the refusal to the control expert
        fix = (f"the spatial model is the video model: pick '{spatial_file}' in the loader of the temporal model "
               f"(it feeds the Control Expert too) and '{file}' in the spatial model's")
    elif swapped:
        fix = ("the spatial model is the video model: pick each file in the other's loader (the temporal model's "
               "may feed the Control Expert too), or, if the links were swapped rather than the files, connect the "
               "two the other way round (spatial model <-> temporal model)")
    elif shared:   # an artist who changed the control model's file read only of the temporal expert
        fix = (f"its loader{f' {loader!r}' if loader else ''} feeds the Control Expert too, so the control expert is "
               f"this image model as well: pick the video model's file (Wan) in that loader")
    else:
        fix = ("pick the video model's file (Wan) in its loader, or connect a video model there if that loader serves "
               "another expert too")
    raise ValueError(f"the {role} expert ({where or VIDEO_ROLES[role]}) is {name}, an image model: it makes every "
                     f"frame on its own, with no motion, and no motion model attaches to it; {fix}")


def frames_alone(model, role: str, swapped: bool = False, where: str | None = None,
                 bypassed: str | None = None) -> str | None:
    """A warning when the expert of a video role (control, temporal) cannot relate frames: an image model with no
    motion model attached (SD 1.5 whose AnimateDiff loader was bypassed, SDXL, Qwen-Image). Such a graph runs, and
    silently makes frames that do not belong together. None when the expert is a video model. ``swapped``: the
    spatial model beside this temporal one is a video model, so the two were likely connected the other way round.
    ``where``: as :func:`check_video_role`'s. ``bypassed``: the title of a bypassed AnimateDiff node on the canvas
    between the model and this role (:func:`bypassed_motion_nodes`): "attach a motion model" sent a trial's artist
    looking for the one the canvas had."""
    if model is None or role not in VIDEO_ROLES or relates_frames(model):
        return None
    task = "lays out every frame on its own, so the structure has no motion" if role == "control" else \
        "refines every frame on its own, so it cannot keep them coherent"
    if bypassed:
        fix = f"Its AnimateDiff node '{bypassed}' is bypassed on the canvas: un-bypass it (select it, Ctrl+B)"
    elif swapped:
        fix = ("The spatial model is the video model: connect the two the other way round (spatial_model <-> "
               "temporal_model)")
    else:
        fix = "Attach a motion model (AnimateDiff-Evolved's loader) or use a video model (Wan)"
    return (f"the {role} expert ({where or VIDEO_ROLES[role]}) is an image model with no motion model attached: it "
            f"{task}. {fix}")


def frames_alone_note(role: str, swapped: bool = False, bypassed: bool = False) -> str:
    """:func:`frames_alone` as the node's text shows it: one line that fits a node's width, with the fix (the frontend
    neither wraps nor scrolls that text, and with a preview it gives the sampling nodes' text two lines; the console
    has the whole sentence, with the bypassed node's title)."""
    if bypassed:
        return "warning: AnimateDiff bypassed, no motion: un-bypass it" if role == "control" else \
            "warning: temporal's AnimateDiff bypassed: un-bypass it"
    if swapped:
        return "warning: image model as temporal, video as spatial: swap"
    if role == "control":   # the Control Expert has one model: its effect, then the fix
        return "warning: image model, no motion: add AnimateDiff or use Wan"
    return "warning: temporal is an image model: add AnimateDiff or Wan"   # (the sampler refines with two)


def cfg_on_distilled_guidance(model, cfg: float) -> str | None:
    """A warning when a guidance-distilled spatial model (FLUX.1-dev: its guidance is an input, set with FluxGuidance
    on the positive) gets a spatial cfg other than 1: ComfyUI then also evaluates the negative at every step, twice
    the cost, with classifier-free guidance on top of the distilled one (which Flux's pipelines leave off). It runs,
    as it may be meant; None otherwise."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    if model is None or math.isclose(cfg, 1.0) or not (getattr(config, "unet_config", None) or {}).get("guidance_embed"):
        return None
    return (f"the spatial expert ({family_name(model)}) takes its guidance as an input (FluxGuidance on its "
            f"positive), but spatial cfg is {cfg:g}: every spatial evaluation also runs the negative prompt (twice "
            f"the cost) and guides twice. Set spatial cfg to 1 on ConFiner Refine Experts unless that is meant")


def table3_note(te: int, control_steps: int, advice: str) -> str:
    """:func:`~confiner_core.chain.table3_warning` in one line the node's width shows: with a preview the frontend
    gives the Refine Sampler's text two lines, and two lines of this advice hid every step (the console has the
    sentence, with the paper's table, which the line named to artists who do not know it). ``advice``: the T_e to
    use (:func:`~confiner_core.chain.good_te_range`: "use about 200" read as contradicting the default, 100)."""
    return f"warning: T_e {te} too high for {control_steps} control steps: use {advice}"


def cfg_on_distilled_guidance_note(cfg: float) -> str:
    """:func:`cfg_on_distilled_guidance` in one line, as :func:`frames_alone_note` (the console has the sentence)."""
    return f"warning: spatial cfg {cfg:g} on a distilled model: use 1"


def evaluates_per_frame(model, role: str) -> bool:
    """The spatial expert is the chain's image expert: it refines every frame as an image (a video model there runs
    at one frame, e.g. Wan as a text-to-image model). Image models do so in every role; SD-style models take their
    frame batch [F, C, h, w] (AnimateDiff-Evolved's video) as they always do."""
    return role == "spatial" or is_image_model(model)


class ComfyExpert(Expert):
    """A ComfyUI MODEL as an x0-predicting expert ("sample" prediction: ComfyUI returns the denoised latent, already
    converted from eps/v/flow by the model's own model_sampling). Conditioning is (positive, negative, cfg); CFG is
    done by ComfyUI's guider, so the core binds it with guidance 1.

    ComfyUI and its extensions see each evaluation as step k of the stage: ``plan`` holds the timesteps this expert
    is evaluated at in the current stage, its sampling call gets their sigmas (ComfyUI's ``sample_sigmas``) and,
    before evaluating at the k-th, has sent k sampler callbacks, as a sampler at step k would have.
    AnimateDiff-Evolved counts its step from those callbacks and native context windows find theirs in
    ``sample_sigmas``, so uniform context windows rotate from evaluation to evaluation exactly as under their own
    samplers. With stage sessions (the default), one long-lived sampling call serves all of the expert's evaluations in
    the plan (:mod:`nodes.sessions`); a timestep outside the plan is always a one-step sampling call of its own."""

    prediction = "sample"

    def __init__(self, model, role: str, seed: int = 0, clip=None, negative=None, cfg: float = 1.0,
                 progress: "Progress | None" = None, frames: str = LATENT_FRAMES, codec: Codec | None = None,
                 label: str | None = None):
        self.model, self.name, self.seed = model, role, seed
        self.label = label or f"{role} expert"
        self.clip, self.negative, self.cfg = clip, negative, cfg  # for prompts given as text (prompt travel)
        self.progress = progress
        self.schedule = schedule_of(model, role)
        fmt = model.get_model_object("latent_format")
        self.latent_format = fmt
        self.model_space = space_of(model)
        self.layout = L.FRAMES if evaluates_per_frame(model, role) else L.VIDEO
        # per-frame evaluation of a model with a video latent format: each frame goes in as a one-frame video
        self.one_frame_videos = self.layout == L.FRAMES and getattr(fmt, "latent_dimensions", 2) == 3
        pixel = frames == PIXEL_FRAMES and self.layout == L.FRAMES
        self.latent_space = self.model_space.per_frame() if pixel else self.model_space
        self.codec = per_frame(codec) if (pixel and codec is not None) else codec
        self.max_frames = ade.motion_frame_limit(model)
        self.plan: list = []

    @property
    def relates_frames(self) -> bool:
        # an SD frame batch relates its frames through the motion modules AnimateDiff-Evolved attached
        return relates_frames(self.model)

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

    def stage_sigmas(self, t: float) -> tuple[list, int]:
        """The stage's sigmas (descending, ending in 0) and the step this evaluation is; a timestep outside the plan
        is a one-step stage of its own."""
        if t in self.plan:
            return [self.host_sigma(u) for u in self.plan] + [0.0], self.plan.index(t)
        return [self.host_sigma(t), 0.0], 0

    def forward(self, x: torch.Tensor, t: float, conds: list) -> list[torch.Tensor]:
        # Cancel is honoured before every evaluation (ComfyUI 0.3.64 checks nowhere inside one); the node's stage
        # then ends every open sampling call through ComfyUI's clean-up, so no model stays patched.
        comfy.model_management.throw_exception_if_processing_interrupted()
        (positive, negative, cfg), = conds
        frames_in = x
        if self.one_frame_videos:
            x = x.unsqueeze(2)  # [N, C, h, w] frames -> [N, C, 1, h, w] one-frame videos, as the model takes them
        alpha, _ = self.schedule.coefficients(t)
        x_host = x / alpha if self.schedule.kind == S.VP else x  # ComfyUI's EPS latents are x0 + sigma*eps
        sigmas, step = self.stage_sigmas(t)
        with ade.stage_log(f"{STAGE_OF_ROLE.get(self.name, self.name)}:{self.name}"):
            x0, self.last_network_calls = sessions.evaluate(self, x_host, sigmas, step, (positive, negative, cfg),
                                                            in_plan=t in self.plan)
        if self.progress is not None:
            self.progress.evaluated(self, x0, step, len(sigmas) - 1)
        return [x0.reshape(frames_in.shape).to(frames_in.device, frames_in.dtype)]


def bind(model, positive, negative, cfg: float, role: str, seed: int, log: EvaluationLog | None = None,
         clip=None, progress: "Progress | None" = None, frames: str = LATENT_FRAMES, vaes: VAEShelf | None = None,
         vae_input: str | None = None, low_noise: "LowNoise | None" = None) -> Denoiser:
    """An expert bound to its ComfyUI conditioning (CFG happens in ComfyUI's guider, so the core sees guidance 1).

    ``frames``: how a per-frame expert takes a video space's clip (:data:`FRAME_MODES`); ``vaes``: the graph's
    VAEs, of which the one on ``vae_input`` (or another of the expert's space) becomes its codec for the bridge;
    ``low_noise``: a second model sharing the role below a noise boundary (Wan 2.2 A14B: ``model`` is then the
    high-noise expert)."""
    if model is None:
        raise ValueError(f"the {role} expert needs a MODEL input")
    negative = negative if negative is not None else positive
    check_text_width(model, role, positive, negative, cfg)
    codec = vaes.codec(space_of(model), vae_input) if vaes is not None else None
    expert = ComfyExpert(model, role, seed, clip, negative, cfg, progress, frames, codec)
    if low_noise is None:
        return Denoiser(expert, (positive, negative, cfg), None, 1.0, log)
    expert.label = f"{role} expert (high noise)"
    low = ComfyExpert(low_noise.model, role, seed, clip, negative, low_noise.cfg, progress, frames, codec,
                      label=f"{role} expert (low noise)")
    try:
        pair = ExpertPair(expert, low, low_noise.boundary, name=role)
    except ValueError as e:
        raise ValueError(f"the {role} expert's high-noise model ({low_noise.high_input}) and low-noise model "
                         f"({low_noise.input}) {str(e).removeprefix('the experts of a pair ')}: use the two models "
                         f"of one release (e.g. Wan 2.2 A14B high/low noise) with the same shift") from None
    # after the pair's own check: a low-noise model of another family is told to take the pair's two models
    check_text_width(low_noise.model, role, positive, negative, low_noise.cfg,
                     f"its low-noise model ({low_noise.input})")
    return Denoiser(pair, ((positive, negative, cfg), (positive, negative, low_noise.cfg)), None, 1.0, log)


class LowNoise:
    """The low-noise half of an expert pair: its MODEL, its cfg, the boundary (sigma >= boundary: the high-noise
    model), and the node inputs they came from (for messages)."""

    def __init__(self, model, cfg: float, boundary: float, input: str, high_input: str):
        self.model, self.cfg, self.boundary, self.input, self.high_input = model, cfg, boundary, input, high_input

    @classmethod
    def of(cls, model, cfg, boundary, input: str, high_input: str) -> "LowNoise | None":
        return None if model is None else cls(model, cfg, boundary, input, high_input)


def members(expert: Expert) -> list:
    """The ComfyUI experts behind a role: one, or the two of an expert pair."""
    return [expert.high, expert.low] if isinstance(expert, ExpertPair) else [expert]


def model_of(denoiser: Denoiser):
    """The MODEL behind a bound expert (a pair's low-noise one: both share the latent format)."""
    return members(denoiser.expert)[-1].model


def model_space(denoiser: Denoiser) -> LatentSpace:
    """The latent space of the expert's MODEL (its LATENTs), whatever the frames mode it evaluates in."""
    return members(denoiser.expert)[-1].model_space


def model_of_space(space: LatentSpace, *models):
    """The first of ``models`` whose latent space is ``space`` (its latent format normalises such LATENTs)."""
    return next((m for m in models if m is not None and space_of(m) == space), None)


class StructureSource(Expert):
    """The space a structure LATENT is in, as the source of the hand-off to the refining expert when the control
    model itself is not connected to the Refine Sampler: its latent space and, for a bridge, a VAE of that space.
    It is never evaluated, and has no schedule (structure noise schedule 'control' needs the control model)."""

    prediction = "sample"
    layout = L.VIDEO
    schedule = None

    def __init__(self, space: LatentSpace, codec: Codec | None):
        self.name, self.latent_space, self.codec = "control", space, codec

    def encode(self, prompt):
        raise RuntimeError("a structure source is not an expert that can be evaluated")

    def forward(self, x, t, conds):
        raise RuntimeError("a structure source is not an expert that can be evaluated")


# ------------------------------------------------------------------------------------------------------------------
# Stage plans: the timesteps each expert is evaluated at in a stage (what its sampling calls are told).

def _set_plan(denoiser: Denoiser, timesteps: list) -> None:
    for expert in members(denoiser.expert):
        expert.plan = list(timesteps)


def plan_control(control: Denoiser, config: ChainConfig) -> None:
    _set_plan(control, control_timesteps(control, config))


def plan_refinement(spatial: Denoiser, temporal: Denoiser | None, config: ChainConfig) -> None:
    config = settled(config, spatial, temporal)
    if config.mode == TEMPORAL:
        _set_plan(temporal, refine_positions(temporal.schedule, config))
        return
    ts = refine_positions(spatial.schedule, config)
    _set_plan(spatial, ts)
    if temporal is not None:
        matching = config.matching if config.mode == COORDINATED else SAME_INDEX
        _set_plan(temporal, [matched_timestep(spatial.schedule, temporal.schedule, t, matching) for t in ts])


def check_frames(denoiser: Denoiser, frames: int, segment: bool = False) -> None:
    """Refuses, before any evaluation, a clip longer than the expert's motion models can make in one window: the
    latent's frames, or (``segment``) the Long Video's segment length, which sets the clips it makes."""
    limit = denoiser.expert.max_frames
    if limit is None or frames <= limit:
        return
    if segment:
        raise ValueError(f"segment length (segment_length) = {frames} is above the {denoiser.expert.name} expert's "
                         f"AnimateDiff motion model's limit of {limit} frames: use a segment length of at most {limit} "
                         f"(frames sets the video's length)")
    raise ValueError(f"the {denoiser.expert.name} expert's AnimateDiff motion model makes at most {limit} frames "
                     f"without context windows, but the latent has {frames}: use fewer frames, add "
                     f"AnimateDiff-Evolved context options to that model, or use ConFiner Long Video")


def layout_of(model) -> str:
    """How ComfyUI holds this model's LATENTs: SD-style frame batches [F, C, h, w] (FRAMES) or videos
    [B, C, T, h, w] (VIDEO; image models of a video format hold one-frame videos [N, C, 1, h, w], read as frames)."""
    return L.FRAMES if latent_dimensions(model) == 2 else L.VIDEO


def core_node(class_type: str) -> str:
    """A ComfyUI node as this host's node library lists it: its display name, with its id where they differ
    ("Empty HunyuanVideo 1.0 Latent (EmptyHunyuanLatentVideo)" on 0.8; on 0.3.64, which lists it by its id, the id
    alone: a trial searched for the name a message gave and found nothing)."""
    import nodes   # (ComfyUI's)

    shown = getattr(nodes, "NODE_DISPLAY_NAME_MAPPINGS", {}).get(class_type)
    return f"{shown} ({class_type})" if shown and shown != class_type else class_type


def _checked_samples(model, latent: dict, role: str) -> torch.Tensor:
    raw = latent["samples"]
    what = role if role.endswith("latent") else f"{role} latent"
    if raw.ndim == 4 and raw.shape[0] > 1 and latent_dimensions(model) == 3 and not is_image_model(model):
        # ComfyUI would read SD's frame batch as that many one-frame videos, each made alone: stills, no motion
        n = raw.shape[0]
        raise ValueError(f"{what} is a batch of {n} images {list(raw.shape)} (Empty Latent Image's batch size "
                         f"is SD's frame count), but {family_name(model)} is a video model: it would make "
                         f"{n} one-frame videos with no motion between them; use "
                         f"{core_node('EmptyHunyuanLatentVideo')} with length {4 * ((n + 2) // 4) + 1} (4k+1 frames) "
                         f"and batch size 1")
    samples = comfy.sample.fix_empty_latent_channels(model, raw)
    layout = layout_of(model)
    if samples.ndim != (5 if layout == L.VIDEO else 4):
        want = (f"a video latent [B, C, T, h, w] (e.g. {core_node('EmptyHunyuanLatentVideo')}: its length is the "
                f"frame count)" if layout == L.VIDEO else
                "an image-batch latent [F, C, h, w] (Empty Latent Image: its batch size is the frame count)")
        name = family_name(model)
        raise ValueError(f"{what} has shape {tuple(samples.shape)}, but {name} takes {want}; "
                         f"connect a latent made for this model family")
    samples = samples.float()   # a half-precision LATENT (a saved one, another pack's) is read as float32
    L.check_latent(samples, layout, model.get_model_object("latent_format").latent_channels, what)
    return samples.to(sampling_device(model))


def sampling_device(model=None) -> torch.device:
    """Where a node's core loop keeps its latents: on the model's device. ComfyUI hands LATENTs over on the CPU
    (its intermediate device) and :func:`latent_out` returns them there; in between, CPU latents would be copied to
    the GPU for every evaluation and its output copied back, and each copy makes the host wait for the GPU, so the
    next evaluation's set-up could never overlap the running forward."""
    return model.load_device if model is not None else comfy.model_management.get_torch_device()


def _canonical(model, samples: torch.Tensor) -> torch.Tensor:
    """A model's LATENT samples -> canonical [B, C, F, h, w]; an image model's one-frame videos are its frames."""
    if samples.ndim == 5 and samples.shape[2] == 1 and samples.shape[0] > 1 and is_image_model(model):
        return L.to_canonical(samples[:, :, 0], L.FRAMES)
    return L.to_canonical(samples, layout_of(model))


def latent_in(model, latent: dict, role: str) -> torch.Tensor:
    """LATENT dict -> canonical model-space video [B, C, F, h, w] (process_in applies the VAE scale factor)."""
    samples = _checked_samples(model, latent, role)
    return _canonical(model, model.get_model_object("latent_format").process_in(samples))


def noise_in(model, latent: dict) -> torch.Tensor:
    """A noise LATENT (ConFiner Noise Rescheduler) -> canonical unit noise; noise is not VAE-scaled."""
    return _canonical(model, _checked_samples(model, latent, "noise"))


def item_generators(seed: int, batch: int, latent: dict, refine: bool = False) -> ItemGenerators:
    """The generators of a sampling node's ``batch`` clips (the canonical latent's first axis): item b draws all its
    noise from the seed plus its batch index, so the first item of a batch is the batch-1 clip, as with KSampler,
    and every other one is the batch-1 clip of its own seed. A video LATENT's ``batch_index`` (Latent From Batch)
    gives the indices, so an item picked from a batch is made again alone.

    ``refine``: the Refine Sampler's, each seed drawn as the library's refinement draws an int seed (its own stream,
    :func:`~confiner_core.sampling.seeded`), not as ``torch.Generator().manual_seed(seed)``: with the Control
    Expert's seed equal (the templates' 0 and 0), Eq. 6's "fresh" noise was the control stage's starting noise."""
    index = latent.get("batch_index")
    ok = latent["samples"].ndim == 5 and isinstance(index, (list, tuple)) and len(index) == batch
    seeds = [(seed + (int(index[b]) if ok else b)) % (MAX_SEED + 1) for b in range(batch)]
    if refine:
        return ItemGenerators([seeded(s, "refine seed") for s in seeds])
    return ItemGenerators.seeded(seeds)


# The key under which the pack notes in a LATENT dict the latent space its samples are in (a core LatentSpace), so
# the Refine Sampler knows a structure's space without extra wiring.
SPACE_KEY = "confiner_space"
# ... and, on a structure, the control steps that made it (for the paper's Table 3 warning on T_e)
CONTROL_STEPS_KEY = "confiner_control_steps"
# ... and on ConFiner Noise Rescheduler's noise_latent, that it is noise (read for its size only, it was ignored)
NOISE_KEY = "confiner_noise"


def structure_in(latent: dict, space: LatentSpace, model=None, role: str = "structure",
                 source: dict | None = None) -> torch.Tensor:
    """A LATENT in ``space`` (a frame batch [F, C, h, w] or a video [B, C, T, h, w]) -> canonical normalised latent.
    The normalisation is ``model``'s latent format when a model of that space is at hand, else the space's own
    (the same numbers: :func:`space_of` reads them off the format). ``source``: the queued prompt's node it came
    from (:func:`~.model_files.input_source`), named where it is not a Control Expert."""
    samples = latent["samples"].float().to(sampling_device(model))
    if samples.ndim not in (4, 5) or samples.shape[1] != space.channels:
        raise ValueError(f"the {role} latent has shape {tuple(samples.shape)} but is in the {space.title} latent space "
                         f"({space.channels} channels): connect the latent the control expert made")
    if not bool(samples.abs().amax() > 0):   # an empty latent (e.g. the size-and-length one) wired here by mistake
        # a bypassed Control Expert passes its empty latent on: "connect the structure output" was said of one
        # connected (the queued prompt leaves a bypassed node out and wires its input on)
        came = model_files.came_from_other(source, "ConFinerControlExpert")
        raise ValueError(f"the {role} latent is empty (all zeros), so there is no video to refine{came}: connect the "
                         f"structure output of ConFiner Control Expert" + (", and un-bypass it if it is "
                                                                          "connected" if came else ""))
    normalised = model.get_model_object("latent_format").process_in(samples) if model is not None else \
        space.process_in(samples)
    return L.to_canonical(normalised, L.FRAMES if samples.ndim == 4 else L.VIDEO)


def latent_out(model, x: torch.Tensor, template: dict | None = None, space: LatentSpace | None = None) -> dict:
    """Canonical latent in ``space`` (default: the model's) -> LATENT dict as ComfyUI's nodes for that space read
    it: SD-style frame batches [F, C, h, w]; video spaces [B, C, T, h, w]; a per-frame space of a video format
    (pixel frames) as one-frame videos [F, C, 1, h, w], which VAE Decode turns into F images. The space is noted
    under :data:`SPACE_KEY`."""
    fmt = model.get_model_object("latent_format")
    space = space or space_of(model)
    out = dict(template or {})
    out.pop("noise_mask", None)
    index = out.pop("batch_index", None)
    if getattr(fmt, "latent_dimensions", 2) == 2:
        samples = L.from_canonical(x, L.FRAMES)
    elif space.temporal_factor == 1 and space != space_of(model):
        samples = L.from_canonical(x, L.FRAMES).unsqueeze(2)
    else:
        samples = x
        if isinstance(index, (list, tuple)) and len(index) == x.shape[0]:
            out["batch_index"] = index   # the clips' seeds downstream (:func:`item_generators`)
    out["samples"] = fmt.process_out(samples).cpu()
    out[SPACE_KEY] = space
    return out


def output_denoiser(refiner: Denoiser, spatial: Denoiser) -> Denoiser:
    """The expert in whose latent space a refinement's output is (:func:`to_spatial_space`), known before it runs:
    the spatial expert's, but for a temporal-only refinement that no pair of VAEs hands over."""
    if refiner.expert.latent_space == spatial.expert.latent_space or \
            refiner.expert.codec is None or spatial.expert.codec is None:
        return refiner
    return spatial


def check_output_frames(refiner: Denoiser, spatial: Denoiser, frames: int) -> None:
    """Before anything runs: a temporal-only refinement handed to the spatial expert's space (:func:`to_spatial_space`)
    must be a clip that space holds (the library checks the experts a mode evaluates, and the spatial one is not)."""
    output = output_denoiser(refiner, spatial)
    if output is not refiner:
        space = output.expert.latent_space
        space.check_pixel_frames(frames, f"the output goes to the spatial expert's {space.title}, whose")


def to_spatial_space(latent: torch.Tensor, refiner: Denoiser, spatial: Denoiser,
                     log: EvaluationLog) -> tuple[torch.Tensor, Denoiser]:
    """A temporal-only refinement of a graph of two latent spaces, handed to the spatial expert's space through
    the VAEs (2 calls), where every other mode's output is, so the graph's decode reads it (the Flux template's
    Flux VAE made one frame of Wan latents, without an error). Unchanged where a VAE is missing
    (:func:`output_space_note` then says which VAE decodes it)."""
    output = output_denoiser(refiner, spatial)
    if output is refiner:
        return latent, refiner
    with log.stage("refine"):
        return hand_off(latent, refiner, spatial), spatial


def decode_vae_problem(node_cls, output: Denoiser, spatial: Denoiser, temporal: Denoiser | None) -> str | None:
    """A node of the queued graph that decodes this node's output with a VAE of another latent space: the other
    expert's (:func:`other_experts_vae_problem`), or a VAE file of another family (:func:`vae_file_problem`). None
    where none does, or the graph does not say."""
    return other_experts_vae_problem(node_cls, output, spatial, temporal) or vae_file_problem(node_cls, output)


def vae_file_problem(node_cls, output: Denoiser) -> str | None:
    """A node of the queued graph that decodes this node's output with a VAE file (Load VAE) whose latents are not
    its latent space's (:func:`~.codecs.vae_file_shape`), in any graph: a Load VAE left on its first file, Flux's
    ``ae.safetensors``, decoded a trial's Wan clip into one frame, and the run said "done"."""
    space = output.expert.latent_space
    if space.name.partition("/")[2]:   # (a video space's frames one by one: left to the bridge's own checks)
        return None
    prompt = queued_prompt(node_cls)
    for taker, loader, file, shape in decoding_vae_files(prompt, node_id(node_cls)):
        if shape != (space.channels, space.spatial_factor, space.temporal_factor):
            title, decoder = model_files.title(prompt[loader]), model_files.title(prompt[taker])
            own = own_vae_file(space)
            if prompt[loader].get("class_type") in model_files.CHECKPOINT_VAES:   # (its file picks the model too)
                fix = f"wire a Load VAE of {own} to '{decoder}'" if own else f"decode with {vae_file(space)}"
                return (f"{fix}: it decodes this node's output, {space.latents}, with the VAE of {file} from "
                        f"'{title}', {shape_family(shape)}")
            # the fix first, in the loader as the canvas names it ("Load VAE" read as another node's title)
            fix = f"pick {own} in '{title}'" if own else f"decode with {vae_file(space)}"
            return (f"{fix}: '{decoder}' decodes this node's output, {space.latents}, with {file} from '{title}', "
                    f"{shape_family(shape)}")
    return None


def decoding_vae_files(prompt: dict | None, node: str | None):
    """(decoding node id, loader id, file, latent shape) for each node of the queued ``prompt`` that takes
    ``node``'s output with a VAE whose file's header tells its family (:func:`~.codecs.vae_file_shape`): a Load
    VAE's file, or a checkpoint loader's VAE output."""
    import folder_paths   # (ComfyUI's)

    for taker in model_files.takers(prompt, node):
        loader = model_files.vae_loader(prompt, taker)
        shape = loader and vae_file_shape(folder_paths.get_full_path("vae", loader[1]))
        if not loader:
            loader = model_files.checkpoint_vae(prompt, taker)
            shape = loader and vae_file_shape(folder_paths.get_full_path("checkpoints", loader[1]), checkpoint=True)
        if shape:
            yield taker, loader[0], loader[1], shape


#: the nodes whose output a VAE Decode reads, and the input, declared by none, under which a queued prompt gives each
#: the latent shapes of the VAE files that decode it (:func:`key_decode_vaes`)
DECODED_NODES = ("ConFinerCoordinatedSampler", "ConFinerLongSegmenter")
DECODE_VAES = "confiner_decode_vaes"


def key_decode_vaes(json_data: dict) -> dict:
    """ComfyUI's on-prompt hook (``PromptServer.add_on_prompt_handler``, :func:`listen_to_prompts`): each sampling
    node of a queued prompt gets the latent shapes of the VAE files that decode its output (:func:`~.codecs.
    vae_file_shape`) as an input none declares, which ComfyUI's cache key of the node reads like any other. A Load
    VAE changed to another family's file (Flux's on a Wan clip) then runs the node again, whose check refuses it
    before any evaluation (:func:`vae_file_problem`); served from the cache, the node checked nothing and the clip
    decoded into one frame (a trial). A file of the same family keeps the cache."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    for node_id, node in (prompt.items() if isinstance(prompt, dict) else ()):
        if not isinstance(node, dict) or node.get("class_type") not in DECODED_NODES or \
                not isinstance(node.get("inputs"), dict):
            continue
        shapes = sorted({shape for *_, shape in decoding_vae_files(prompt, node_id)})
        if shapes:
            node["inputs"][DECODE_VAES] = " ".join("x".join(map(str, shape)) for shape in shapes)
    return json_data


def listen_to_prompts() -> None:
    """:func:`key_decode_vaes` on every prompt the server queues (once; none without a server: a script)."""
    try:
        from server import PromptServer

        handlers = PromptServer.instance.on_prompt_handlers
        if key_decode_vaes not in handlers:
            PromptServer.instance.add_on_prompt_handler(key_decode_vaes)
    except Exception:  # noqa: BLE001 - the pack's nodes work without it (the decode is then checked when they run)
        pass


def other_experts_vae_problem(node_cls, output: Denoiser, spatial: Denoiser, temporal: Denoiser | None) -> str | None:
    """A node of the queued graph that decodes this node's output with the other expert's VAE, in a graph of two
    latent spaces (its refine experts' VAEs, as wired to the bundle, or another loader of the same file): ComfyUI's
    VAE Decode failed only after the whole run, with "tuple index out of range" (a trial: the Wan VAE of a one-space
    graph left on the decode of an SD 1.5 spatial expert's output). None where none does, or the graph does not say."""
    if temporal is None:
        return None
    spaces = {"spatial": spatial.expert.latent_space, "temporal": temporal.expert.latent_space}
    role = "spatial" if output.expert.latent_space == spaces["spatial"] else "temporal"
    other = "temporal" if role == "spatial" else "spatial"
    if spaces[role] in (spaces[other], spaces[other].per_frame()) or spaces[other] == spaces[role].per_frame():
        return None   # one VAE decodes both
    prompt, here = queued_prompt(node_cls), node_id(node_cls)
    bundle = model_files.link(prompt, here, "experts")
    if bundle is None:
        return None
    wrong, right = (model_files.link(prompt, bundle[0], f"{r}_vae") for r in (other, role))
    for taker in model_files.takers(prompt, here):
        vae = model_files.link(prompt, taker, "vae")
        if vae and wrong and model_files.same_output(prompt, vae, wrong) and \
                not (right and model_files.same_output(prompt, vae, right)):
            # the fix first: the node's text shows the first three lines (a trial's were cut before "to its vae")
            given = f"the {role} VAE, from '{model_files.title(prompt[right[0]])}'," if right else \
                f"the {role} model's VAE"
            return (f"wire {given} to the vae input of '{model_files.title(prompt[taker])}': it would decode this "
                    f"node's output, {spaces[role].latents}, with the {other} VAE ({spaces[other].title})")
    return None


def output_space_note(refiner: Denoiser, spatial: Denoiser, structure_space: LatentSpace) -> str | None:
    """The node's last line in a graph of two latent spaces, which has two VAEs: the one that decodes the output
    (the spatial expert's; the temporal one's where :func:`to_spatial_space` had no VAE). A Wan VAE Decode of a
    Flux spatial expert's output failed with "tuple index out of range"."""
    space = refiner.expert.latent_space
    role = "spatial" if space == spatial.expert.latent_space else "temporal"
    if role == "spatial" and space in (structure_space, structure_space.per_frame()):   # (pixel frames: one VAE)
        return None
    note = f"output in {space.latents}: decode with the {role} VAE"
    return note if len(note) <= LINE_WIDTH else f"output in the {role} expert's latents"


STAGE_OF_ROLE = {"control": "control stage", "spatial": "refinement", "temporal": "refinement"}


#: a node's line for each setting :meth:`Progress.warn_unused` may find unread: what reads it (it said "(console)")
UNUSED_NOTE = {"control_eta": "warning: control eta unused: only ddim reads it",
               "matching": "warning: matching unused: only coordinated mode reads it"}


class Progress:
    """One ComfyUI progress bar per node, advanced once per expert evaluation in every stage, each update with a
    latent preview of that evaluation's x0, and once per VAE call between the experts, which the bar counts as it
    comes (its total grows by one at its start, its value at the next update: a Wan VAE's call takes seconds to
    minutes, and the bar stood still through it).
    Each update is also the real server's interruption check. The node's
    progress text shows the stage and the expert, then the step on a line of its own (the frontend wraps a long line
    anywhere, also inside "42/42"), under any warnings; the frontend's box shows about four lines."""

    def __init__(self, model, total: int, node_id: str | None = None, where=None, detail=None,
                 opening: bool | str = True, seed: int | None = None):
        self.total, self.done, self.node_id = total, 0, node_id
        # said under "done": with the frontend's "randomize" the widget shows the next seed once the run is queued,
        # and an artist who liked a video and switched to "fixed" got another one
        self.seed = seed
        self.previews = {id(model): latent_preview.prepare_callback(model, total)}
        self.bar = comfy.utils.ProgressBar(total)   # the VAE calls' updates (the previews' bars have a preview each)
        self.counts: Counter = Counter()  # evaluations so far per role
        self.where = where    # (role, counts) -> e.g. "structure 2/9 · " (ConFiner-Long)
        self.detail = detail  # (role, counts) -> a line under the step, e.g. "prompt: a dog" (ConFiner-Long)
        self.warnings: list[str] = []  # shown above every update of the node's text
        self.shown = ""                # the text shown last
        self.summary = ""              # how the run ended (:meth:`running`)
        self.about: list[str] = []     # facts of the run ("13 frames", "T_e 250"), after the opening and the summary
        self.vae_calls = 0             # between the experts (:meth:`coding`), said in the summary
        self.cancel_note = ""          # under a Cancel's line: what a rerun does (the Long Video starts over)
        self.files: tuple = ()         # the files of the models the node runs, for its messages (where known)
        # from the warnings or the run's start until the first evaluation: else the previous run's "done" stays up
        # through the seconds before it (a structure crossing the bridge between VAEs). A node may open with text of
        # its own instead (the Long Video's prompt schedule), or with none.
        self.opening = opening if isinstance(opening, str) else \
            (f"starting · {total} expert evaluations" if opening else None)

    def warn_frames_alone(self, models: dict, spatial_model=None, places: dict | None = None,
                          bypassed: dict | None = None) -> None:
        """:func:`frames_alone` for each role's model: logged once, and kept on the node's text for the run. A
        ``spatial_model`` that relates frames beside an image temporal model is named as the swap it likely is;
        ``places``: role -> where its model is connected, where not the role's usual input; ``bypassed``: role ->
        the title of a bypassed AnimateDiff node before it (:func:`bypassed_motion_nodes`)."""
        for role, model in models.items():
            swapped = role == "temporal" and spatial_model is not None and relates_frames(spatial_model)
            title = (bypassed or {}).get(role)
            self.warn(frames_alone(model, role, swapped, (places or {}).get(role), title),
                      frames_alone_note(role, swapped, bool(title)))

    def warn_ignored_noise(self, models: dict) -> None:
        """AnimateDiff-Evolved noise types ConFiner does not draw (:func:`~.ade.warn_ignored_noise`): on the
        console, and one line each on the node (an artist who set FreeNoise there saw only "done")."""
        ade.warn_ignored_noise(models)
        for model in models.values():
            noise_type = ade.ignored_noise_type(model) if model is not None else None
            if noise_type:
                self.note(f"warning: ADE noise_type '{noise_type}' unused: use Noise Rescheduler")

    def settled(self, config: ChainConfig, spatial: Denoiser, temporal: Denoiser | None) -> ChainConfig:
        """``config`` with the defaults the experts decide settled (:func:`~confiner_core.chain.settled`): T_e as
        set, or (None: the widget's 0) the refining expert's own, and matching "auto" as the schedules want it. The
        node's text names what was chosen for it ("· T_e 250", "· matching nearest" where auto is not the paper's
        same index)."""
        done = settled(config, spatial, temporal)
        chosen = [f"T_e {done.te}"] if config.te is None else []
        if config.matching == AUTO and done.matching != SAME_INDEX:
            chosen.append(f"matching {done.matching}")
        self.about += chosen
        return done

    def warn_motion_models(self, **roles) -> None:
        """Motion models in each other's roles (:func:`~.ade.motion_model_problems`; ``roles``: its arguments)."""
        for warning, note in ade.motion_model_problems(**roles):
            self.warn(warning, note)

    def warn_halves(self, role: str, node: str, high_input: str, low_input: str, high_file: str | None,
                    low_file: str | None, loaded: tuple = ()) -> None:
        """A Wan 2.2 A14B half where the other belongs, by the loaders' file names
        (:func:`~.model_files.pair_problems`; ``loaded``: :func:`~.model_files.loaded_files`)."""
        for warning, note in model_files.pair_problems(role, node, high_input, low_input, high_file, low_file,
                                                       loaded):
            self.warn(warning, note)

    def warn_cfg_on_distilled_guidance(self, spatial_model, cfg: float) -> None:
        """:func:`cfg_on_distilled_guidance` for the spatial expert, as :meth:`warn_frames_alone` shows its own."""
        self.warn(cfg_on_distilled_guidance(spatial_model, cfg), cfg_on_distilled_guidance_note(cfg))

    def warn_distilled_control(self, model, steps: int, cfg: float, sampler: str) -> None:
        """:func:`~confiner_core.chain.distilled_control_warning` for a control model that carries no LoRA (a
        step-distilled LoRA such as lightx2v runs at 4 steps and cfg 1 on purpose)."""
        if getattr(model, "patches", None):
            return
        space = space_of(model)
        warning = distilled_control_warning(space, steps, cfg, sampler)
        if warning:
            good_steps, good_cfg, good_sampler = UNDISTILLED_CONTROL[space.name]
            self.warn(warning, f"warning: {steps} steps at cfg {cfg:g}: try {good_steps} steps, cfg {good_cfg:g}, "
                               f"{good_sampler}")

    def warn_table3(self, control_steps: int | None, te: int, spatial: Denoiser, temporal: Denoiser | None,
                    mode: str) -> None:
        """The paper's Table 3 (:func:`~confiner_core.chain.table3_warning`): T_e at a noise level that collapses
        image quality after a structure of few control steps (unknown, e.g. a structure of another node: none); and
        at any steps a T_e that keeps almost nothing of the structure
        (:func:`~confiner_core.chain.structure_lost_warning`)."""
        schedule = extraction_schedule(spatial, temporal, mode)
        lost = structure_lost_warning(te, schedule)   # at any control steps, known or not
        if lost:
            self.warn(lost, f"warning: T_e {te} keeps {structure_kept(te, schedule):.0%} of the structure: use "
                            f"{good_te_range(schedule)}")
        elif control_steps is not None:
            self.warn(table3_warning(control_steps, te, schedule), table3_note(te, control_steps,
                                                                               good_te_range(schedule)))

    def warn_unequal_noise(self, spatial: Denoiser, temporal: Denoiser | None, config: ChainConfig,
                           control_schedule=None) -> None:
        """Experts whose schedules put T_e at different noise levels (SD 1.5 and Wan): matching "same_index"
        (:func:`~confiner_core.chain.same_index_mismatch_warning`), and structure noise "control" when the control
        expert's schedule is another than the refining expert's (:func:`~confiner_core.chain.control_noise_warning`)."""
        self.warn(same_index_warning(spatial, temporal, config), "warning: experts at unequal noise: matching nearest")
        self.warn(control_noise_warning(spatial, temporal, config, control_schedule),
                  "warning: unequal noise: structure noise schedule spatial")

    def warn_unused(self, config: ChainConfig, inputs: dict) -> None:
        """Settings the node's config leaves unread (:func:`~confiner_core.chain.unused_settings`: a control eta
        beside a sampler other than ddim), which the command line refuses; ``inputs``: setting -> the widget's name.
        The node's line says what reads it (:data:`UNUSED_NOTE`), as the console's sentence does."""
        for name in unused_settings(config):
            widget = inputs.get(name, name)
            self.warn(f"{widget} is not used: it {UNUSED_BECAUSE[name](config)}", UNUSED_NOTE[name])

    def warn(self, warning: str | None, note: str) -> None:
        """``warning`` on the console, and its one-line ``note`` above the node's text for the rest of the run."""
        if warning:
            logging.warning("ConFiner: %s", warning)
            self.note(note)

    def note(self, *notes: str) -> None:
        """One-line ``notes`` above the node's text for the rest of the run (the console says why)."""
        if notes:
            self.warnings.extend(notes)
            show_text(self.node_id, "\n".join([*self.warnings, *filter(None, [self.opening])]))

    def preview(self, model):
        """Each model's previews use its own latent format (experts of several latent spaces share one bar)."""
        if id(model) not in self.previews:
            self.previews[id(model)] = latent_preview.prepare_callback(model, self.total)
        return self.previews[id(model)]

    def evaluated(self, expert: ComfyExpert, x0: torch.Tensor, step: int, steps: int) -> None:
        self.preview(expert.model)(self.done + self.vae_calls, x0, x0, self.total + self.vae_calls)
        self.done += 1
        self.counts[expert.name] += 1
        where = self.where(expert.name, self.counts) if self.where else ""
        detail = self.detail(expert.name, self.counts) if self.detail else ""
        self.show(f"{where}{STAGE_OF_ROLE.get(expert.name, expert.name)} · {expert.label}\n"
                  f"step {step + 1}/{steps} · evaluation {self.done}/{self.total}" + (f"\n{detail}" if detail else ""))

    def coding(self, action: str, frames: int, vae: str) -> None:
        """A VAE call between the experts (the bridge between latent spaces, pixel frames for an image expert, a long
        video's joins), said in place of the step: with a Wan VAE it takes seconds to minutes, while the step stood
        still."""
        self.vae_calls += 1
        when = f"after evaluation {self.done}/{self.total}" if self.done else f"before evaluation 1/{self.total}"
        self.show(f"between experts · {action} {frames} frames\nwith the {vae} · {when}")
        # the call joins the total now and counts as done at the next update: counted at its start, the bar read
        # 100 % through a long video's last join (seconds on a Wan VAE; a trial)
        self.bar.update_absolute(self.done + self.vae_calls - 1, self.total + self.vae_calls)

    def show(self, text: str) -> None:
        # warnings first: the frontend cuts what does not fit the node, and they matter more than the step
        self.shown = "\n".join([*self.warnings, text])
        show_text(self.node_id, self.shown)

    def output(self, *values) -> io.NodeOutput:
        """The node's outputs, with the text it ended on as its UI output (``confiner_text``): ComfyUI keeps that in
        the prompt's history, where an API client reads what the run said (the seed it used, its warnings); the
        progress text itself reaches only the websocket of the client that queued the run."""
        return io.NodeOutput(*values, ui={"confiner_text": [self.shown]})

    @contextlib.contextmanager
    def running(self):
        """Around the node's sampling: the node's text ends the run with how it ended, in place of its last step
        (the frontend keeps a node's last text, and a cancelled run's read as if it were paused; it is also saved
        with the workflow). The finished line stays in :attr:`summary` for a node that shows more after the run."""
        start = time.perf_counter()
        if self.opening:   # (a schedule's lines are not followed by it: the summary has it)
            self.show(dotted_lines([self.opening, *self.about]) if "\n" not in self.opening else self.opening)
        try:
            yield
        except comfy.model_management.InterruptProcessingException as e:
            self.show((f"cancelled after evaluation {self.done}/{self.total}" if self.done else
                       f"cancelled before any of {self.total} evaluations finished") + self.cancel_note)
            e.confiner_text_shown = True   # for :func:`shows_refusals`
            raise
        except Exception as e:
            said = ade.injection_failure(e, self.files)
            when = f"after evaluation {self.done}/{self.total}" if self.done else "before the first evaluation"
            self.show(f"stopped by an error {when}:\n{error_lines(said or error_message(e))}")
            e.confiner_text_shown = True
            if said is None:
                raise
            mismatch = ValueError(said)
            mismatch.confiner_text_shown = True
            raise mismatch from e
        vae = f", {self.vae_calls} VAE call{'' if self.vae_calls == 1 else 's'}" if self.vae_calls else ""
        self.summary = (dotted_lines(["done", f"{self.done} expert evaluation{'' if self.done == 1 else 's'}{vae} in "
                                              f"{time.perf_counter() - start:.1f} s", *self.about]) +
                        (f"\nseed {self.seed}" if self.seed is not None else ""))
        self.show(self.summary)


def dotted_lines(parts: list, width: int = LINE_WIDTH) -> str:
    """``parts`` joined by " · ", a new line where the next would run past ``width``: the frontend breaks a node's
    text where the box ends, inside a word (a batch's "... (a video save joins them)" read "jo" / "ins them")."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += f" · {part}"
        else:
            lines.append(part)
    return "\n".join(lines)


def shows_refusals(method):
    """For a node's ``execute`` or ``check_lazy_status`` (under ``@classmethod``): an error outside the sampling (an
    input refused before any evaluation, a cancel while the node prepares, a failed join after it) also replaces the
    node's text. Else the previous run's "done" stays under a node the frontend marks failed. Errors during sampling
    have their own line, with the evaluation they stopped at (:meth:`Progress.running`)."""
    @functools.wraps(method)
    def wrapper(cls, *args, **kwargs):
        try:
            return method(cls, *args, **kwargs)
        except Exception as e:
            if not getattr(e, "confiner_text_shown", False):
                cancelled = isinstance(e, comfy.model_management.InterruptProcessingException)
                show_text(node_id(cls), "cancelled" if cancelled else
                          f"stopped by an error:\n{error_lines(error_message(e))}")
            raise
    return wrapper


def error_message(error: Exception) -> str:
    """An error as ComfyUI's dialog says it: its message, or its type where it has none."""
    return str(error) or type(error).__name__


def node_id(node_cls) -> str | None:
    """The running node's id (V3 hidden input), None when a node class is called outside ComfyUI's executor."""
    return getattr(getattr(node_cls, "hidden", None), "unique_id", None)


def input_loader(node_cls, input_name: str) -> str | None:
    """The title of the loader of the model reaching the running node's ``input_name`` (as the canvas shows it), from
    the queued prompt; None where the graph does not say."""
    prompt = queued_prompt(node_cls)
    found = model_files.model_loader(prompt, node_id(node_cls), input_name)
    if found is None:
        return None
    return model_files.title(prompt.get(found[0], {}))


def input_vae_loader(node_cls, input_name: str) -> tuple[str, str] | None:
    """(title, file) of the Load VAE wired to the running node's ``input_name``, from the queued prompt
    (:func:`~.model_files.vae_loader`); None where the VAE comes from elsewhere or the graph does not say."""
    prompt = queued_prompt(node_cls)
    found = model_files.vae_loader(prompt, node_id(node_cls), input_name)
    return (model_files.title(prompt.get(found[0], {})), found[1]) if found else None


def input_file(node_cls, input_name: str) -> str | None:
    """The file of the model reaching the running node's ``input_name``, from the queued prompt (V3 hidden input;
    :func:`~.model_files.model_file`); None outside ComfyUI's executor or where the graph does not say."""
    return model_files.model_file(queued_prompt(node_cls), node_id(node_cls), input_name)


def input_feeds_control(node_cls, input_name: str) -> bool | None:
    """Whether the loader of the model at the running node's ``input_name`` feeds a control expert too
    (:func:`~.model_files.feeds_control`); None where the graph does not say."""
    return model_files.feeds_control(queued_prompt(node_cls), node_id(node_cls), input_name)


def planned_frames(node_cls, input_name: str) -> model_files.PlannedFrames | None:
    """The frames of the clip that will reach the running node's ``input_name``, as the queued graph's empty latent
    sets them (:func:`~.model_files.planned_frames`); None where the graph does not say."""
    return model_files.planned_frames(queued_prompt(node_cls), node_id(node_cls), input_name)


def planned_structure_frames(node_cls, experts: dict) -> model_files.PlannedFrames | None:
    """:func:`planned_frames` of the running Refine Sampler's structure, but None where the Control Expert making it
    will refuse that latent itself: its model comes from the loader of a refine expert (``experts``: role -> Denoiser
    or None), so its latent space is known, and the latent counts frames as another space does (an image batch for
    a Wan control expert, which it refuses with the fix, another latent node: a frame count for Wan's VAE was the
    wrong fix there)."""
    planned = planned_frames(node_cls, "structure")
    prompt, me = queued_prompt(node_cls), node_id(node_cls)
    source = model_files.link(prompt, me, "structure")
    bundle = model_files.link(prompt, me, "experts")
    if planned is None or source is None or bundle is None or \
            (prompt.get(source[0]) or {}).get("class_type") != "ConFinerControlExpert":
        return planned
    control = model_files.model_loader(prompt, source[0], "model")
    for role, denoiser in experts.items():
        loader = model_files.model_loader(prompt, bundle[0], f"{role}_model")
        if control and denoiser is not None and loader and loader[0] == control[0] and \
                denoiser.expert.latent_space.temporal_factor != planned.factor:
            return None
    return planned


def planned_latent_frames(planned: model_files.PlannedFrames | None, space) -> int | None:
    """``planned``'s latent frames in ``space``; None where the graph does not say, or its latent node counts frames
    as another space does (an image batch for Wan, which a Control Expert refuses)."""
    if planned is None or planned.factor != space.temporal_factor:
        return None
    return space.latent_frames(planned.frames)


def planned_frames_problem(planned: model_files.PlannedFrames | None, experts: dict) -> str | None:
    """A frame count the graph's empty latent sets that an expert's latent space cannot hold (``experts``: role ->
    Denoiser or None), naming the widget that sets it. A clip is the same pixel frames in every space the bridge
    takes it through, so this holds before the structure exists, in whatever space it is made: a trial's SD 1.5
    image batch of 4 for a Wan spatial expert was refused only after the control stage had run."""
    for role, denoiser in experts.items():
        if planned is None or denoiser is None:
            continue
        space = denoiser.expert.latent_space
        try:
            space.check_pixel_frames(planned.made(), f"{planned.said()}: the {role} expert's {space.title}")
        except ValueError as e:
            return str(e)
    return None


def motion_model_files(node_cls) -> tuple:
    """The motion model files of the running node's queued graph (:func:`~.model_files.motion_model_files`)."""
    return model_files.motion_model_files(queued_prompt(node_cls))


def loaded_files(node_cls) -> tuple:
    """(loader title, file) of every diffusion-model loader of the running node's queued graph
    (:func:`~.model_files.loaded_files`); empty outside ComfyUI's executor."""
    return model_files.loaded_files(queued_prompt(node_cls))


def canvas_workflow(node_cls) -> dict | None:
    """The workflow the frontend queued beside the prompt (V3 hidden input ``extra_pnginfo``): the canvas, with the
    nodes the queued prompt leaves out (bypassed, muted); None where the run came over the API without it."""
    extra = getattr(getattr(node_cls, "hidden", None), "extra_pnginfo", None)
    workflow = extra.get("workflow") if isinstance(extra, dict) else None
    return workflow if isinstance(workflow, dict) else None


def bypassed_takers(node_cls, class_type: str) -> list[tuple[str, str]]:
    """(id, title) of the canvas's bypassed nodes of ``class_type`` that take the running node's output
    (:func:`~.model_files.bypassed_takers`)."""
    return model_files.bypassed_takers(canvas_workflow(node_cls), node_id(node_cls), class_type)


def bypassed_motion_nodes(node_cls, paths: dict) -> dict:
    """role -> the title of a bypassed AnimateDiff-Evolved node on the canvas's model links into the running node
    along ``paths`` (role -> input names, one node each: ``("experts", "temporal_model")`` is the bundle's temporal
    model), for the roles that have one (:func:`~.model_files.bypassed_upstream`)."""
    workflow, me = canvas_workflow(node_cls), node_id(node_cls)
    found = {role: model_files.bypassed_upstream(workflow, me, path) for role, path in paths.items()}
    return {role: title for role, title in found.items() if title}


def show_bundle_text(node_cls, experts) -> None:
    """The text of the Refine Experts bundle at the running node's ``experts`` input, under the bundle again: one
    ComfyUI serves from its cache runs nothing, and stood blank (a trial: a workflow opened from its video, its
    bundle made in another tab)."""
    found = model_files.link(queued_prompt(node_cls), node_id(node_cls), "experts")
    if found and getattr(experts, "summary", ""):
        show_text(found[0], experts.summary)


def queued_prompt(node_cls) -> dict | None:
    """The queued prompt (API format) of the running node (V3 hidden input), None outside ComfyUI's executor."""
    return getattr(getattr(node_cls, "hidden", None), "prompt", None)


def show_text(node_id: str | None, text: str) -> None:
    """Text under the node in the frontend (ComfyUI's progress text; both supported versions have it), sent to the
    client that queued the run, as ComfyUI sends its progress: broadcast, it landed on the node of the same id in
    every open workflow tab and was saved with it."""
    if node_id is None:
        return
    try:
        from server import PromptServer

        server = PromptServer.instance
        server.send_progress_text(text, node_id, server.client_id)
    except Exception:  # noqa: BLE001 - a status line must never fail a run (e.g. no server in a script)
        pass


def cost_line(node: str, log: EvaluationLog) -> str:
    """Expert evaluations, network forwards (the definitions of EvaluationLog) and the VAE calls made between the
    experts (whole-clip encodes and decodes: the bridge between latent spaces, pixel frames for an image expert,
    ConFiner-Long's window joins through pixels) with the seconds they took."""
    line = f"{node}: {sum(log.evaluations.values())} expert evaluations, {sum(log.forwards.values())} network forwards"
    vae_calls = sum(log.vae_calls.values())
    seconds = sum(log.vae_seconds().values())
    return line + (f", {vae_calls} VAE calls (encodes and decodes between the experts, {seconds:.1f} s)"
                   if vae_calls else "")


def log_cost(node: str, log: EvaluationLog, node_id: str | None = None) -> str:
    """One console line per node run (:func:`cost_line`), naming the node by its id where several of a kind run (the
    compare template's three Refine Samplers); returned for the node's text."""
    line = cost_line(f"{node} #{node_id}" if node_id is not None else node, log)
    logging.info(line)
    return line
