"""The registry of model families, and loading a chain's experts through it.

:data:`FAMILIES` is the ordered list of families; the first whose :meth:`~.base.Family.detect` claims a path owns
it. :func:`load_experts` runs in three phases so that nothing heavy happens before everything is known to fit:

1. detect every role's path and check that its kind can serve that role;
2. inspect every path (configs and safetensors headers only) and check the experts against each other: experts in
   different latent spaces are bridged by the chain through their VAEs, so every space that meets another needs
   VAE weights, and the spatial expert's space needs them to decode the video;
3. load the experts, then the codecs that are needed (one per latent space, shared by the experts of that space),
   then apply speed settings.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...devices import check_device
from ...library_bars import LIBRARIES, installed, loading_bars, torchvision_fallback_unsaid
from ...experts import ROLES, Expert, ExpertPair, networks, not_a_path
from ...latent_spaces import IMAGE_MODES, LATENT_FRAMES, Codec, noted_space, to_uint8
from ..speed import SpeedSettings, apply_speed_settings
from ..step_cache import attach_step_cache
from . import files
from .animatediff import AnimateDiff
from .base import Context, Family, Inspection
from .flux import Flux
from .modelscope import ModelScope
from .qwen_image import QwenImage
from .sd15 import SD15
from .sdxl import SDXL
from .wan import OPTION_READERS
from .wan import OPTIONS as FAMILY_OPTIONS
from .wan import Wan, option_for

#: every family, in detection order (the package's own here; one of your own through :func:`register_family`)
FAMILIES: list[Family] = [SDXL(), SD15(), AnimateDiff(), ModelScope(), Wan(), QwenImage(), Flux()]


def register_family(family: Family, before: str | None = None) -> Family:
    """Adds a model family of one's own (an instance of a :class:`~.base.Family` subclass) to :data:`FAMILIES`, so
    that :func:`load_experts` and ``generate`` read its paths. It is asked last, or just before the family named
    ``before`` where that one would claim its paths too (e.g. ``"sd15"`` for an SD 1.5 folder of a special kind).
    Its name and kinds must be new: a kind names one loader. Returns the family."""
    if not isinstance(family, Family):
        raise TypeError(f"register_family: give an instance of a Family subclass (confiner_core.diffusers_backend."
                        f"families.base.Family), got {type(family).__name__}")
    if not family.name or not family.kinds:
        raise ValueError(f"register_family: {type(family).__name__} needs a name and at least one kind "
                         f"(kinds = {{'my-kind': 'what such a path is'}})")
    by_name = {f.name: f for f in FAMILIES}
    if family.name in by_name:
        raise ValueError(f"register_family: a family named {family.name!r} is registered already "
                         f"({by_name[family.name].label}); give yours another name")
    taken = {kind: f for f in FAMILIES for kind in f.kinds}
    clash = [kind for kind in family.kinds if kind in taken]
    if clash:
        raise ValueError(f"register_family: the kind {clash[0]!r} is {taken[clash[0]].label}'s already; give "
                         f"{family.name}'s kinds names of their own")
    if before is None:
        FAMILIES.append(family)
    elif before in by_name:
        FAMILIES.insert(FAMILIES.index(by_name[before]), family)
    else:
        raise ValueError(f"register_family: before={before!r} names no family; known: {', '.join(by_name)}")
    return family


def kind_descriptions() -> dict[str, str]:
    """Every path kind -> its description."""
    return {kind: text for family in FAMILIES for kind, text in family.kinds.items()}


def role_kinds() -> dict[str, tuple]:
    """Every role -> the path kinds that can serve it."""
    return {role: tuple(kind for family in FAMILIES for kind in family.kinds if role in family.roles_for(kind))
            for role in ROLES}


def detect(path, who: str | None = None, role: str | None = None) -> tuple[Family, str]:
    """The family and kind of the model at ``path``, from its files alone. A missing path raises
    FileNotFoundError; a pickle, a corrupt or truncated ``.safetensors`` or an unrecognised folder ValueError
    (listing the kinds ``role`` accepts, or every kind without one)."""
    path = Path(path)
    who = who or str(path)
    if not path.exists():
        raise FileNotFoundError(f"{who}: {path} does not exist; check the path")
    if path.is_file():
        files.refuse_pickle(path, who)
        if not path.name.endswith(".safetensors"):
            raise ValueError(f"{who}: only .safetensors single files are accepted, not {path.name}; pass a "
                             f".safetensors checkpoint or a diffusers folder")
        header = files.read_header(path, who)     # readable and complete before any family reads it
        # (before the families: under ComfyUI's prefix SD 1.5 read a Wan file as its own; a pipeline's component
        # is named with its folder, below)
        family = lone_network_family(header)
        if family is not None and not (path.parent.parent / "model_index.json").is_file():
            raise ValueError(f"{who}: this file is a {family.label} network on its own (as ComfyUI's "
                             f"diffusion_models folder holds it); the library reads {family.label} from "
                             f"{next(iter(family.kinds.values()))}: pass that folder (the transformer with its text "
                             f"encoders and VAE)")
    for family in FAMILIES:
        kind = family.detect(path)
        if kind:
            return family, kind
    descriptions = kind_descriptions()
    accepted = "; ".join(descriptions[k] for k in role_kinds()[role]) if role else \
        "; ".join(sorted(descriptions.values()))
    # a component of a pipeline folder (unet/, or a weights file inside it): the folder is what was meant
    pipeline = path.parent.parent if path.is_file() else path.parent
    if (pipeline / "model_index.json").is_file():
        raise ValueError(f"{who}: this is one component of the pipeline folder {pipeline}; pass that folder")
    if path.is_dir():   # a component config detection could not read (families peek, reading a corrupt one as missing)
        for config in (path / "unet" / "config.json", path / "transformer" / "config.json", path / "config.json"):
            if config.is_file():
                files.read_json(config, who)
    if path.is_file():
        raise ValueError(f"{who}: no model recognised in this file (its tensor names match no supported "
                         f"checkpoint layout); accepted: {accepted}")
    raise ValueError(f"{who}: no model recognised in this folder (no component config naming a supported model "
                     f"class, e.g. unet/config.json, and no MotionAdapter config.json); accepted: {accepted}")


def lone_network_family(names) -> Family | None:
    """The family whose network alone a file of these tensor names holds (:attr:`Family.lone_network_names`, also
    under ComfyUI's ``model.diffusion_model.`` prefix), else None."""
    names = {name.removeprefix("model.diffusion_model.") for name in names}
    return next((family for family in FAMILIES for layout in family.lone_network_names if names.issuperset(layout)),
                None)


def detect_kind(path) -> str:
    """The kind of model at ``path`` (a key of :func:`kind_descriptions`)."""
    return detect(path)[1]


def check_role(role: str, path, family: Family, kind: str) -> None:
    if role not in family.roles_for(kind):
        descriptions = kind_descriptions()
        if not family.roles_for(kind):   # a variant no role takes: its description says why and what to use
            raise ValueError(f"{files.who(role, path)} is {descriptions[kind]}")
        accepted = ", ".join(dict.fromkeys(f.label for f in FAMILIES if any(role in f.roles_for(k) for k in f.kinds)))
        raise ValueError(f"{files.who(role, path)} is {descriptions[kind]}, which cannot serve as the {role} "
                         f"expert; accepted: {accepted} (README, 'Real checkpoints', lists each kind)")


def swapped_with(role: str, detected: dict) -> str | None:
    """The other role whose model this role's would fit while this one's fits there (``--spatial`` and
    ``--temporal`` given the other way round), for the refusal's hint; None if no swap makes both fit."""
    def fits(r: str, found) -> bool:
        return r in found[0].roles_for(found[1])

    return next((other for other in detected if other != role and fits(role, detected[other])
                 and fits(other, detected[role])), None)


def check_latent_spaces(inspections: dict[str, Inspection]) -> None:
    """Experts in different latent spaces meet through the bridge, which needs a VAE in each space; the video is
    decoded by a VAE of the spatial expert's space. Raises naming the experts, their spaces and the fix; the error's
    ``role`` is the expert the fix is about."""
    spaces = {ins.latent_space for ins in inspections.values()}
    for space in spaces if len(spaces) > 1 else ():
        members = [ins for ins in inspections.values() if ins.latent_space == space]
        if not any(m.has_vae for m in members):
            other = next(ins for ins in inspections.values() if ins.latent_space != space)
            raise role_error(members[0].role, ValueError(
                f"{members[0].who} works in the {space.title} latent space and the {other.role} expert "
                f"({other.path}) in the {other.latent_space.title} one; the chain bridges different latent spaces "
                f"through their VAEs, but no {space.title} expert here has VAE weights: give the {members[0].role} "
                f"expert a model with its VAE (vae/ with weights), or choose experts of one latent space"))
    refining = inspections.get("spatial") or inspections.get("temporal")
    if refining is not None and not any(i.has_vae for i in inspections.values()
                                        if i.latent_space == refining.latent_space):
        raise role_error(refining.role, ValueError(
            f"{refining.who}: no VAE weights to decode the video (vae/ with weights, or a single file with its "
            f"first_stage_model); give the {refining.role} expert a model with its VAE"))


def role_error(role: str, error: Exception) -> Exception:
    """``error`` marked with the role it is about (callers name that role's input)."""
    error.role = role
    return error


def inspect_all(paths: dict, context: Context) -> dict[str, Inspection]:
    """Detect and inspect every given role's path, then check them against each other; no weights load. An error
    about one expert carries its ``role`` as an attribute (callers name the option it came from)."""
    given = {role: path for role, path in paths.items() if path is not None}
    detected, inspections = {}, {}
    for step in ("detect", "check", "inspect"):   # every path's kind first, so the plainest problem is named first
        for role, path in given.items():
            try:
                if step == "detect":
                    detected[role] = detect(path, files.who(role, path), role)
                elif step == "check":
                    check_role(role, path, *detected[role])
                else:
                    family, kind = detected[role]
                    inspection = family.inspect(Path(path), kind, role, context)
                    inspection.schedule = family.schedule(inspection, context)
                    inspections[role] = inspection
            except ValueError as e:
                other = swapped_with(role, detected) if step == "check" else None
                if other:   # two paths the other way round: the fix is to swap them, not to find other models
                    e = ValueError(f"{files.who(role, path)} is {kind_descriptions()[detected[role][1]]}, a "
                                   f"{other} expert, and the {other} expert ({given[other]}) would serve as the "
                                   f"{role} expert: swap the {role} and {other} experts' paths")
                raise role_error(role, e)
            except OSError as e:
                raise role_error(role, e)
    if context.base is not None and not context.base_used:   # a base that changes nothing is a mistake to name
        motion = next((ins for ins in inspections.values() if "adapter" in ins.facts and "base" in ins.facts), None)
        if motion is not None:   # ("none of these experts takes it" was said beside a motion module, which does)
            raise role_error("base", ValueError(
                f"base={context.base} would change nothing: it holds no SD 1.5 UNet weights (unet/), so the "
                f"{motion.role} expert's motion module goes on the spatial expert ({motion.facts['base'].path}); give "
                f"base= an SD 1.5 folder with unet/ weights, or leave it out"))
        raise role_error("base", ValueError(
            f"base={context.base} would change nothing: it serves a motion module as the SD 1.5 model it goes on (a "
            f"folder with UNet weights) or a single-file SD 1.5 or SDXL checkpoint as its configs, and none of these "
            f"experts takes it; leave it out"))
    check_latent_spaces(inspections)
    return inspections


def make_context(control, spatial, temporal=None, base=None, *, device="cpu", dtype: torch.dtype | None = None,
                 options: dict | None = None) -> tuple[dict, Context]:
    """The role -> path map and the :class:`Context` of one call (shared by :func:`preflight` and
    :func:`load_experts`)."""
    if control is None or (spatial is None and temporal is None):
        raise ValueError("load_experts needs a control and a spatial expert (the spatial expert's VAE decodes), or "
                         "for the temporal-only ablation (mode 'temporal') a control and a temporal expert")
    if base is not None and not Path(base).is_dir():
        raise ValueError(f"base={base} must be a local diffusers pipeline folder (model_index.json, unet/, "
                         f"text_encoder/, tokenizer/, scheduler/, vae/)")
    paths = {"control": control, "spatial": spatial, "temporal": temporal}
    context = Context(device=torch.device(device), dtype=dtype or default_dtype(device),
                      base=Path(base) if base is not None else None,
                      paths={r: Path(p) if p is not None else None for r, p in paths.items()},
                      options=dict(options or {}))
    return paths, context


def preflight(control, spatial, temporal=None, base=None, **options) -> dict[str, Inspection]:
    """Everything :func:`load_experts` checks before loading, from configs and headers alone: for a command line
    to refuse bad checkpoints before it does anything else."""
    paths, context = make_context(control, spatial, temporal, base, options=options)
    return inspect_all(paths, context)


# ------------------------------------------------------------------------------------------------ loading

def attach_codecs(experts: dict[str, Expert], inspections: dict[str, Inspection], context: Context) -> Codec:
    """Load one codec per latent space that needs one (the spatial expert's; every space when there are
    several), from the spatial, temporal or control expert of that space that has VAE weights, and give it to
    every expert of that space. Returns the spatial expert's codec (the temporal expert's where there is no spatial
    expert: the temporal-only ablation)."""
    providers, codecs = vae_providers(inspections), {}
    for space, provider in providers.items():
        key = ("codec", provider.family.name, provider.kind, str(provider.path.resolve()), space)
        codecs[space] = context.cached(key, lambda p=provider: p.family.load_codec(p, context))
    for role, expert in experts.items():
        space = inspections[role].latent_space
        expert.codec = codecs.get(space)
        if space in providers:
            expert.vae_source = str(providers[space].path)
    return codecs[inspections[decoding_role(inspections)].latent_space]


def vae_providers(inspections: dict[str, Inspection]) -> dict:
    """latent space -> the inspection whose VAE serves every expert of that space: the spatial expert's, else the
    temporal or control expert's with VAE weights. Only the spaces that need one: the decoded video's, and every
    space where there are several (the bridge)."""
    spaces = {ins.latent_space for ins in inspections.values()}
    needed = spaces if len(spaces) > 1 else {inspections[decoding_role(inspections)].latent_space}
    return {space: next(inspections[r] for r in ("spatial", "temporal", "control")
                        if r in inspections and inspections[r].latent_space == space and inspections[r].has_vae)
            for space in needed}


def borrowed_vaes(inspections: dict[str, Inspection]) -> list[str]:
    """Each expert without VAE weights of its own, and whose VAE serves it instead (the same latent space): a
    folder missing vae/ was decoded by another model's VAE without a word."""
    providers = vae_providers(inspections)
    return [f"the {role} expert ({ins.path}) has no VAE of its own (its config and weights): the VAE of the "
            f"{provider.role} expert "
            f"({provider.path}), of the same {ins.latent_space.title} latent space, serves it"
            for role, ins in inspections.items() if not ins.has_vae
            for provider in [providers.get(ins.latent_space)] if provider is not None]


def decoding_role(experts: dict) -> str:
    """The role whose latent space the video is in: the spatial expert's, or the temporal expert's where there is
    none (the temporal-only ablation refines without one)."""
    return "spatial" if experts.get("spatial") is not None else "temporal"


def attach_refinement_caches(experts: dict, threshold: float):
    """Step caching (``SpeedSettings.step_cache``) for the refinement roles' flow-transformer experts (Wan); the
    control expert is never cached. Experts without a transformer block list are left as they are."""
    cache = None
    for role in ("spatial", "temporal"):
        expert = experts.get(role)
        members = [expert.high, expert.low] if isinstance(expert, ExpertPair) else [expert]
        if all(hasattr(getattr(m, "transformer", None), "blocks") for m in members if m is not None) and \
                expert is not None:
            cache = attach_step_cache(expert, threshold, cache)
    return cache


@dataclass
class LoadedExperts(Mapping):
    """``experts``: role -> expert (``None`` for an absent temporal expert, or spatial expert: the temporal-only
    ablation); ``codec``: the VAE of the spatial expert's latent space (the temporal expert's without one), which
    decodes the video; ``inspections``: what was read before loading. It is itself that mapping (``ex["control"]``,
    ``"temporal" in ex``, ``ex.items()``)."""

    experts: dict
    codec: Codec
    inspections: dict = field(default_factory=dict)
    #: what load_experts was called with (``generate(request, experts=...)`` checks them against the request's)
    arguments: dict = field(default_factory=dict)

    @property
    def decoder(self) -> Codec:
        """The codec that decodes the video (the spatial expert's, else the temporal expert's)."""
        return self.codec

    def decode(self, latent: torch.Tensor, role: str = "spatial") -> torch.Tensor:
        """Canonical latent [B, C, F, h, w] of ``role``'s expert's latent space -> uint8 frames [B, F, H, W, 3]
        (CPU). The refined video is in the spatial expert's space; a structure (``generate_structure``) in the
        control expert's: ``decode(structure, "control")`` shows the control stage alone. A latent the chain made
        says its space (:func:`~confiner_core.latent_spaces.in_space`), and one of another role's space is refused
        naming that role (the spatial expert's VAE read a structure as its own latents wherever the channels
        agreed); a latent made elsewhere is decoded as given. Without a spatial expert, "spatial" decodes the
        video: the temporal expert's space."""
        if role not in ROLES:   # (it read "the spacial expert is absent")
            meant = difflib.get_close_matches(str(role), ROLES, n=1)
            raise ValueError(f"decode(..., {role!r}): the role is one of {', '.join(map(repr, ROLES))}"
                             + (f" (meant: {meant[0]!r}?)" if meant else ""))
        video = decoding_role(self.experts)   # the role whose space the refined video is in
        own = video if role == "spatial" else role
        space = getattr(self.experts.get(own), "latent_space", None)
        noted = noted_space(latent)   # (the chain's outputs say their space: a trial decoded a Wan structure with
        if space is not None and noted is not None and noted != space:   # the Flux VAE, 16 channels both)
            fits = [r for r, e in self.experts.items() if e is not None and e.latent_space == noted]
            raise ValueError(f"decode(..., {role!r}): the latent is in {noted.latents}, the {own} expert's are "
                             f"{space.latents}: " + (f"decode(latent, {fits[0]!r})" if fits else
                                                     "hand it to this expert's space first (hand_off)"))
        if space is not None and isinstance(latent, torch.Tensor) and latent.dim() == 5 and \
                latent.shape[1] != space.channels:
            # (the VAE's own message named its shape alone, for a structure decoded as the refined video)
            fits = [r for r, e in self.experts.items() if e is not None and r != own and e.codec is not None
                    and e.latent_space.channels == latent.shape[1]]
            if fits:
                raise ValueError(f"decode(..., {role!r}): the latent has {latent.shape[1]} channels, the {own} "
                                 f"expert's {space.latents} have {space.channels}; a latent of the {fits[0]} "
                                 f"expert's space decodes with decode(latent, {fits[0]!r})")
        if own == video:
            return to_uint8(self.codec.decode(latent)).cpu()
        expert = self.experts.get(role)
        if expert is None or expert.codec is None:
            raise ValueError(f"decode(..., {role!r}): the {role} expert " + ("is absent" if expert is None else
                             "has no VAE weights: decode its latent after hand_off to the spatial expert's space"))
        return to_uint8(expert.codec.decode(latent)).cpu()

    def __getitem__(self, role: str) -> Expert | None:
        return self.experts[role]

    def __iter__(self):   # (a trial's "'control' in experts" raised KeyError: 0, iterating by index)
        return iter(self.experts)

    def __len__(self) -> int:
        return len(self.experts)

    def __repr__(self) -> str:
        """Each role's expert class and path (the dataclass's own repr printed every network's config: 10 KB)."""
        roles = ", ".join(f"{role}={type(e).__name__}" + (f" from {self.arguments[role]!r}"
                                                          if self.arguments.get(role) else "")
                          for role, e in self.experts.items() if e is not None)
        return f"LoadedExperts({roles}; video decoded by {type(self.codec).__name__})"


def default_dtype(device) -> torch.dtype:
    """fp16 on accelerators (SD 1.5 family weights are published in fp16), fp32 on the CPU."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.float16


def check_scheduler_overrides(overrides: dict, paths: dict) -> None:
    """``scheduler_overrides`` (role -> scheduler-config entries) changes a VP expert's diffusers config; for a
    misspelt role or an absent one it did nothing, without a word. Before the inspections, which apply it (a flow
    expert's: :func:`check_flow_overrides`)."""
    if not isinstance(overrides, dict):
        raise TypeError(f"scheduler_overrides must be a dict of role -> scheduler-config entries, got "
                        f"{type(overrides).__name__}")
    for role, entries in overrides.items():
        if not isinstance(entries, dict):
            raise TypeError(f"scheduler_overrides[{role!r}] must be a dict of scheduler-config entries, got "
                            f"{type(entries).__name__}")
    check_roles(overrides, "scheduler_overrides", {role for role, path in paths.items() if path is not None})


def check_roles(given, setting: str, loaded) -> None:
    """Each key of a per-role ``setting`` (``given``) is a role this call loads (``loaded``): a misspelt role, or
    one with no expert, did nothing, without a word."""
    for role in given:
        if role not in ROLES:
            close = difflib.get_close_matches(str(role), ROLES, n=1)
            raise ValueError(f"{setting}: {role!r} is not a role" + (f" (did you mean {close[0]!r}?)" if close
                                                                      else "") + f"; the roles are {', '.join(ROLES)}")
        if role not in loaded:
            raise ValueError(f"{setting}[{role!r}]: this call loads no {role} expert: drop it")


def check_flow_overrides(overrides: dict, inspections: dict) -> None:
    """A flow expert's schedule is its shift: ``scheduler_overrides`` for one changed nothing, without a word."""
    for role in overrides:
        inspection = inspections[role]
        if inspection.facts.get("shift") is not None:
            raise ValueError(f"scheduler_overrides[{role!r}]: the {inspection.who} is a {inspection.family.label} "
                             f"flow model, whose schedule is its shift, not a scheduler config: use "
                             f"options={{'flow_shift': {{'{role}': ...}}}}")


def check_option_readers(options: dict, inspections: dict) -> None:
    """Family options given per role name roles this call loads, and each option reaches an expert that reads it
    (:data:`~.wan.OPTION_READERS`): ``{"flow_shift": {"spatail": 7}}``, or ``flow_shift`` for SD-family experts,
    loaded without a word and changed nothing (a trial). Checked from the inspections, before any weights load."""
    for name, value in options.items():
        if isinstance(value, dict):   # per role
            check_roles(value, f"options: {name}", inspections)
        if name not in OPTION_READERS or value is None:
            continue
        fact, readers = OPTION_READERS[name]
        roles = list(value) if isinstance(value, dict) else list(inspections)
        deaf = [role for role in roles if inspections[role].facts.get(fact) is None]
        if isinstance(value, dict) and deaf:
            inspection = inspections[deaf[0]]
            raise ValueError(f"options: {name}[{deaf[0]!r}] applies to {readers}; the {deaf[0]} expert "
                             f"{inspection.path} is a {inspection.family.label} model: drop it")
        if len(deaf) == len(roles):
            raise ValueError(f"options: {name} applies to {readers}, and no expert of this call is one: drop it")


def check_image_mode(context: Context, inspections: dict) -> None:
    """The ``image_mode`` option is read by a Wan or Qwen-Image spatial expert alone (its facts hold the mode):
    given for any other spatial expert, or with a value no family takes, it would be ignored, so it is refused."""
    mode = option_for(context, "image_mode", "spatial")
    if mode is None:
        return
    if mode not in IMAGE_MODES:
        raise ValueError(f"options: image_mode={mode!r}: choose one of {IMAGE_MODES}")
    spatial = inspections.get("spatial")
    if mode != LATENT_FRAMES and (spatial is None or spatial.facts.get("image_mode") is None):
        raise ValueError(f"options: image_mode={mode!r} applies to a Wan or Qwen-Image spatial expert (an image model "
                         f"on Wan's video latents); the spatial expert "
                         f"{spatial.path if spatial is not None else '(none)'} is not one: drop the option")


def missing_packages_said() -> str | None:
    """The packages a checkpoint load needs (:data:`~confiner_core.library_bars.LIBRARIES`; reading configs and
    headers, :func:`preflight`, needs neither) that this Python lacks, with the install that adds them; None if
    none. A quick start with the command line's requirements alone runs the embedded default, and a load would fail
    deep inside a family's ``load`` with a bare ModuleNotFoundError."""
    missing = [name for name in LIBRARIES if not installed(name)]
    if not missing:
        return None
    return (f"checkpoints need {' and '.join(missing)}, which this Python does not have: pip install -r "
            f"requirements-diffusers.txt (or \".[diffusers]\")")


@torchvision_fallback_unsaid()
def load_experts(control: str | os.PathLike, spatial: str | os.PathLike | None,
                 temporal: str | os.PathLike | None = None, base: str | os.PathLike | None = None, *,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                 motion_config: str | os.PathLike | None = None, scheduler_overrides: dict | None = None,
                 decode_chunk_frames: int | None = None, speed: SpeedSettings | None = None,
                 options: dict | None = None, show_progress: bool = True) -> LoadedExperts:
    """Load the chain's experts from local paths, after checking from configs and headers alone that every
    file is sound and that the experts fit together.

    Accepted paths per role: :func:`role_kinds` / :func:`kind_descriptions` (README "accepted paths"); ``spatial``
    None with a ``temporal`` expert: the temporal-only ablation (mode 'temporal'), whose video is decoded by the
    temporal expert's VAE. ``base``:
    a local diffusers folder that gives single-file checkpoints their configs, tokenizer and scheduler (weights
    may be absent), and is the SD 1.5 model motion modules go on when it holds UNet weights (else the spatial
    expert's). ``dtype``: default fp16 on accelerators, fp32 on the CPU. ``motion_config``: MotionAdapter config
    (folder or json) for motion-module files whose heads or norm groups differ from AnimateDiff's.
    ``scheduler_overrides``: role -> scheduler-config entries that replace the family's default override
    (motion modules without a scheduler of their own get AnimateDiff's linear betas), for the UNet (VP) families: a
    flow expert's schedule is its shift (``options={"flow_shift": ...}``), and overrides for one are refused.
    ``decode_chunk_frames``: frames per VAE call (None: each codec's default, :data:`~..vae.DEFAULT_CHUNK_FRAMES` for
    image VAEs).
    ``speed``: speed settings for every network and decoding VAE (``speed.FAST``).
    ``options``: family options by name (the flow families': :data:`.wan.OPTIONS`, e.g. ``flow_shift``,
    ``image_mode``, ``pair_guidance``). ``show_progress``: diffusers' and transformers' own loading bars
    (:func:`~confiner_core.library_bars.loading_bars`).

    Raises FileNotFoundError for missing paths or configs and ValueError for unusable or mismatched experts,
    naming the role, the path and the fix; both before any weights load."""
    check_device(device, "load_experts: device")   # before torch's "Torch not compiled with CUDA enabled"
    missing = missing_packages_said()
    if missing:
        raise ModuleNotFoundError(f"load_experts: {missing}")
    for name, path in (("control", control), ("spatial", spatial), ("temporal", temporal), ("base", base)):
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"load_experts: {not_a_path(name, path)}")
    if decode_chunk_frames is not None and decode_chunk_frames < 1:
        raise ValueError(f"decode_chunk_frames must be >= 1, got {decode_chunk_frames}")
    if isinstance(dtype, str):   # GenerateRequest's spelling, and any floating dtype's name as its object is taken
        named = getattr(torch, dtype.removeprefix("torch."), None)   # ('float64' was refused, torch.float64 taken)
        dtype = None if dtype == "auto" else named if isinstance(named, torch.dtype) else dtype
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype (torch.float16, torch.bfloat16, torch.float32, "
                         f"torch.float64), its name ('float32', ...), or None or 'auto' (fp16 on accelerators, fp32 on "
                         f"the CPU), got {dtype!r}")
    unknown = sorted(set(options or {}) - set(FAMILY_OPTIONS))
    if unknown:   # a misspelt option would be ignored, and the run made without it
        close = {name: difflib.get_close_matches(name, FAMILY_OPTIONS, n=1) for name in unknown}
        hints = "; ".join(f"{name!r}" + (f" (did you mean {close[name][0]!r}?)" if close[name] else "")
                          for name in unknown)
        raise ValueError(f"options: {hints} is not a family option; known: {', '.join(FAMILY_OPTIONS)}")
    paths, context = make_context(control, spatial, temporal, base, device=device, dtype=dtype, options={
        "motion_config": motion_config, "scheduler_overrides": scheduler_overrides or {},
        "decode_chunk_frames": decode_chunk_frames, **(options or {})})
    check_scheduler_overrides(scheduler_overrides or {}, paths)
    inspections = inspect_all(paths, context)
    check_option_readers(options or {}, inspections)
    check_image_mode(context, inspections)
    check_flow_overrides(scheduler_overrides or {}, inspections)
    with loading_bars(show_progress):
        experts = {role: inspections[role].family.load(inspections[role], context) if role in inspections else None
                   for role in ROLES}
        codec = attach_codecs({r: e for r, e in experts.items() if e is not None}, inspections, context)
    if speed is not None:
        modules = {id(m): m for e in experts.values() if e is not None for m in networks(e)}  # shared ones once
        codecs = {id(e.codec): e.codec for e in experts.values() if e is not None and e.codec is not None}
        modules.update({id(c.vae.decoder): c.vae.decoder for c in codecs.values() if hasattr(c, "vae")})
        apply_speed_settings(list(modules.values()), speed)
        if speed.step_cache:
            attach_refinement_caches(experts, speed.step_cache)
    return LoadedExperts(experts, codec, inspections, arguments={
        "control": control, "spatial": spatial, "temporal": temporal, "base": base, "device": device, "dtype": dtype,
        "motion_config": motion_config, "scheduler_overrides": scheduler_overrides,
        "decode_chunk_frames": decode_chunk_frames, "speed": speed, "options": dict(options or {})})
