"""Loading ConFiner experts from local diffusers folders and single ``.safetensors`` files, never from the Hub.

Accepted path kinds (detected from the path itself, see :func:`detect_kind`):

==================  ==========================================================================  ==============
kind                what it is                                                                  roles
==================  ==========================================================================  ==============
``sd-folder``       diffusers SD 1.5 pipeline folder (model_index.json; unet/ is a              spatial
                    UNet2DConditionModel; text_encoder/, tokenizer/, scheduler/, vae/)
``sd-file``         single-file SD 1.5 checkpoint in the original layout (model.diffusion_       spatial
                    model.*, first_stage_model.*, cond_stage_model.*); configs, tokenizer and
                    scheduler come from ``base``
``animatediff``     diffusers AnimateDiff pipeline folder (unet/ is a UNetMotionModel, or a      control,
                    UNet2DConditionModel plus motion_adapter/)                                  temporal
``t2v-folder``      diffusers ModelScope text-to-video folder (unet/ is a UNet3DConditionModel,  control,
                    with its own text encoder)                                                  temporal
``motion-folder``   diffusers MotionAdapter folder (config.json + weights), put on an SD base    control,
                                                                                                temporal
``motion-file``     AnimateDiff motion module ``.safetensors`` (original AnimateDiff key layout  control,
                    or diffusers layout, e.g. animatediff_lightning_4step_*.safetensors), put   temporal
                    on an SD base
==================  ==========================================================================  ==============

``base`` is a local diffusers SD 1.5 pipeline folder. It gives single-file checkpoints their configs,
tokenizer and scheduler (it may be a config-only copy without weights), and it is the SD model that motion
modules are put on when it holds UNet weights; otherwise motion modules go on the spatial expert's SD model.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, ModelMixin, MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel,
                       UNet3DConditionModel, UNetMotionModel)
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from safetensors import safe_open
from safetensors.torch import load_file

from . import checks
from .experts import SD_LATENT_SCALING, DiffusersExpert, expert_for
from .speed import SpeedSettings, apply_speed_settings
from .text import PromptEncoder
from .vae import DEFAULT_CHUNK_FRAMES, VideoDecoder

SD_FOLDER = "sd-folder"
SD_FILE = "sd-file"
ANIMATEDIFF_FOLDER = "animatediff"
T2V_FOLDER = "t2v-folder"
MOTION_FOLDER = "motion-folder"
MOTION_FILE = "motion-file"

KIND_DESCRIPTIONS = {
    SD_FOLDER: "a diffusers SD 1.5 pipeline folder",
    SD_FILE: "a single-file SD 1.5 .safetensors checkpoint (with base=<diffusers SD 1.5 folder> for its configs)",
    ANIMATEDIFF_FOLDER: "a diffusers AnimateDiff pipeline folder",
    T2V_FOLDER: "a diffusers ModelScope text-to-video pipeline folder (UNet3DConditionModel)",
    MOTION_FOLDER: "a diffusers MotionAdapter folder (put on the SD base)",
    MOTION_FILE: "an AnimateDiff motion-module .safetensors, original or diffusers key layout (put on the SD base)",
}
VIDEO_KINDS = (ANIMATEDIFF_FOLDER, T2V_FOLDER, MOTION_FOLDER, MOTION_FILE)
ROLE_KINDS = {"spatial": (SD_FOLDER, SD_FILE), "control": VIDEO_KINDS, "temporal": VIDEO_KINDS}
UNET_CLASSES = {cls.__name__: cls for cls in (UNet2DConditionModel, UNetMotionModel, UNet3DConditionModel)}

# AnimateDiff's motion modules were trained on linear betas (guoyww configs, AnimateDiff-Lightning's model card);
# folders and bases derived from SD 1.5 carry SD's scaled_linear, which diffusers' docs tell users to override.
ANIMATEDIFF_SCHEDULER_OVERRIDES = {"beta_schedule": "linear"}


# ------------------------------------------------------------------------------------------ path kinds

def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _class_name(path: Path) -> str | None:
    return _read_json(path).get("_class_name") if path.is_file() else None


def _safetensors_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def detect_kind(path) -> str:
    """The kind of model at ``path`` (one of :data:`KIND_DESCRIPTIONS`), from its files alone."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        return _detect_file_kind(path)
    unet_class = _class_name(path / "unet" / "config.json")
    if unet_class == "UNetMotionModel":
        return ANIMATEDIFF_FOLDER
    if unet_class == "UNet3DConditionModel":
        return T2V_FOLDER
    if unet_class == "UNet2DConditionModel":
        return ANIMATEDIFF_FOLDER if (path / "motion_adapter" / "config.json").is_file() else SD_FOLDER
    if _class_name(path / "config.json") == "MotionAdapter":
        return MOTION_FOLDER
    raise ValueError(f"{path} is not a recognised diffusers folder (no unet/config.json with a UNet2DCondition"
                     f"Model, UNetMotionModel or UNet3DConditionModel, and no MotionAdapter config.json); "
                     f"accepted: {sorted(KIND_DESCRIPTIONS.values())}")


def _detect_file_kind(path: Path) -> str:
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only .safetensors single files are accepted (pickled .ckpt/.pt/.bin files can "
                         f"run code when loaded); convert it to .safetensors first")
    keys = _safetensors_keys(path)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return SD_FILE
    if any(".motion_modules." in k for k in keys):
        return MOTION_FILE
    raise ValueError(f"{path} is neither an SD 1.5 checkpoint (model.diffusion_model.* keys) nor an AnimateDiff "
                     f"motion module (*.motion_modules.* keys)")


def _check_role_kind(role: str, path, kind: str) -> None:
    if kind not in ROLE_KINDS[role]:
        accepted = "; ".join(KIND_DESCRIPTIONS[k] for k in ROLE_KINDS[role])
        raise ValueError(f"{checks.who(role, path)} is {KIND_DESCRIPTIONS[kind]}, which cannot serve as the "
                         f"{role} expert; accepted: {accepted}")


# ------------------------------------------------------------------------------------- folder parts

@dataclass
class Parts:
    """What an expert is built from: a UNet, its prompt encoder, scheduler config and VAE (or its config)."""

    path: str
    unet: torch.nn.Module
    prompt_encoder: PromptEncoder
    scheduler_config: dict
    vae_config: dict = field(default_factory=dict)
    vae: torch.nn.Module | None = None

    @property
    def latent_scaling(self) -> float:
        return float(self.vae_config.get("scaling_factor", SD_LATENT_SCALING))


def _require(folder: Path, relative: str, what: str) -> Path:
    target = folder / relative
    if not target.exists():
        raise FileNotFoundError(f"{folder} lacks {relative}, which holds {what}; a diffusers folder saved with "
                                f"save_pretrained() has it (nothing is downloaded)")
    return target


def _transformers_class(folder: Path, component: str, default: str):
    """The class model_index.json names for a transformers component (CLIPTextModel, CLIPTokenizer, ...)."""
    index = folder / "model_index.json"
    entry = _read_json(index).get(component) if index.is_file() else None
    library, name = entry if entry and entry[0] else ("transformers", default)
    return getattr(importlib.import_module(library), name)


def weights_variant(folder: Path, subfolder: str) -> str | None:
    """``"fp16"`` when a component holds only fp16-variant weights (``*.fp16.safetensors``, as a ModelScope
    download with ``variant="fp16"`` leaves it), so from_pretrained looks for those files."""
    names = [p.name for p in (folder / subfolder).iterdir() if p.suffix in (".safetensors", ".bin")]
    variants = [n for n in names if ".fp16." in n]
    return "fp16" if variants and len(variants) == len(names) else None


def _load_model(cls, folder: Path, subfolder: str, device, dtype) -> torch.nn.Module:
    """A model from a local folder in ``dtype`` on ``device``. diffusers models load straight into ``dtype``;
    transformers models are cast afterwards, because transformers renamed ``torch_dtype`` to ``dtype`` in 4.56."""
    variant = weights_variant(folder, subfolder)
    if issubclass(cls, ModelMixin):
        model = cls.from_pretrained(folder, subfolder=subfolder, local_files_only=True, variant=variant,
                                    torch_dtype=dtype)
        return model.to(device).eval()
    model = cls.from_pretrained(folder, subfolder=subfolder, local_files_only=True, variant=variant)
    return model.to(device, dtype).eval()


def load_prompt_encoder(folder: Path, device, dtype) -> PromptEncoder:
    _require(folder, "tokenizer", "the tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    _require(folder, "text_encoder/config.json", "the text encoder config")
    tokenizer = _transformers_class(folder, "tokenizer", "CLIPTokenizer").from_pretrained(
        folder, subfolder="tokenizer", local_files_only=True)
    text_encoder = _load_model(_transformers_class(folder, "text_encoder", "CLIPTextModel"), folder, "text_encoder",
                               device, dtype)
    return PromptEncoder(tokenizer, text_encoder)


def load_folder(path, device, dtype, with_vae: bool) -> Parts:
    """A pipeline folder's parts; the VAE weights only when ``with_vae`` (the decoder), else its config."""
    folder = Path(path)
    unet_class = UNET_CLASSES[_class_name(_require(folder, "unet/config.json", "the UNet config"))]
    scheduler_config = _read_json(_require(folder, "scheduler/scheduler_config.json", "the scheduler config"))
    vae_config_path = folder / "vae" / "config.json"
    vae_config = _read_json(vae_config_path) if vae_config_path.is_file() else {}
    if with_vae:
        _require(folder, "vae/config.json", "the VAE config")
    vae = _load_model(AutoencoderKL, folder, "vae", device, dtype) if with_vae else None
    return Parts(str(folder), _load_model(unet_class, folder, "unet", device, dtype),
                 load_prompt_encoder(folder, device, dtype), scheduler_config, vae_config, vae)


SD_CONFIG_PARTS = {"model_index.json": "the pipeline's component list", "unet/config.json": "the UNet config",
                   "vae/config.json": "the VAE config", "text_encoder/config.json": "the text encoder config",
                   "tokenizer": "the tokenizer files", "scheduler/scheduler_config.json": "the scheduler config"}


def load_sd_file(path, config_dir, device, dtype) -> Parts:
    """A single-file SD 1.5 checkpoint. Its weights come from the file; configs, tokenizer and scheduler from
    ``config_dir`` (a local diffusers SD 1.5 folder). Passing ``config`` keeps diffusers off the Hub: without it,
    ``from_single_file`` infers a Hub repo id and downloads configs (diffusers-notes §4)."""
    if config_dir is None:
        raise ValueError(f"{path} is a single-file SD checkpoint and needs base=<local diffusers SD 1.5 folder> "
                         f"for its configs, tokenizer and scheduler (weights may be absent from that folder)")
    config_dir = Path(config_dir)
    for relative, what in SD_CONFIG_PARTS.items():
        _require(config_dir, relative, what)
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(config_dir), local_files_only=True, torch_dtype=dtype, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    prompt_encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder.to(device).eval())
    return Parts(str(path), pipe.unet.to(device).eval(), prompt_encoder, dict(pipe.scheduler.config),
                 dict(pipe.vae.config), pipe.vae.to(device).eval())


# ------------------------------------------------------------------------------------ motion modules

def infer_motion_config(state: dict) -> dict:
    """MotionAdapter config read off a diffusers-layout state dict (shapes and key counts).

    Attention heads and norm groups leave no trace in the weights; MotionAdapter's defaults (8 heads, 32 groups)
    are those of every SD 1.5 AnimateDiff release (v1-v3, Lightning). Pass ``motion_config`` for anything else."""
    def count(prefix: str, field_index: int) -> int:
        return len({k.split(".")[field_index] for k in state if k.startswith(prefix)})

    blocks = count("down_blocks.", 1)
    config = {
        "block_out_channels": [state[f"down_blocks.{i}.motion_modules.0.proj_in.weight"].shape[0]
                               for i in range(blocks)],
        "motion_layers_per_block": count("down_blocks.0.motion_modules.", 3),
        "motion_transformer_layers_per_block": count("down_blocks.0.motion_modules.0.transformer_blocks.", 5),
        "use_motion_mid_block": any(k.startswith("mid_block.") for k in state),
    }
    if config["use_motion_mid_block"]:
        config["motion_mid_block_layers_per_block"] = count("mid_block.motion_modules.", 2)
        config["motion_transformer_layers_per_mid_block"] = count("mid_block.motion_modules.0.transformer_blocks.", 4)
    pe = next((v for k, v in state.items() if k.endswith(".pe")), None)
    if pe is not None:
        config["motion_max_seq_length"] = pe.shape[1]
    return config


def _motion_config(motion_config, state: dict) -> dict:
    if motion_config is None:
        return infer_motion_config(state)
    motion_config = Path(motion_config)
    file = motion_config / "config.json" if motion_config.is_dir() else motion_config
    if not file.is_file():
        raise FileNotFoundError(f"motion_config {motion_config} is neither a MotionAdapter config.json nor a folder "
                                f"holding one")
    return _read_json(file)


def load_motion_file(path, motion_config=None) -> MotionAdapter:
    """A motion module ``.safetensors`` in either key layout, as a MotionAdapter (on the CPU, float32)."""
    state = load_file(str(path))
    positional = {k: v for k, v in state.items() if k.endswith(".pe")}   # sequence length of original files
    if any(".temporal_transformer." in k for k in state):
        state = convert_animatediff_checkpoint_to_diffusers(state)
    config = _motion_config(motion_config, {**state, **positional})
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    adapter = MotionAdapter.from_config(config)
    try:
        result = adapter.load_state_dict(state, strict=False)
    except RuntimeError as e:   # shape mismatches
        raise ValueError(f"{path}: the motion module's weights do not fit a MotionAdapter with config {config}; "
                         f"pass motion_config=<folder with the module's config.json>\n{e}") from None
    missing = [k for k in result.missing_keys if not k.endswith(".pe")]   # positional tables are recomputed
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: the motion module does not fit a MotionAdapter with config {config} (missing "
                         f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}); pass motion_config=<folder "
                         f"with the module's config.json>")
    return adapter.eval()


def load_adapter(path, kind: str, motion_config=None) -> MotionAdapter:
    if kind == MOTION_FOLDER:
        return MotionAdapter.from_pretrained(path, local_files_only=True).eval()
    if kind == ANIMATEDIFF_FOLDER:
        return MotionAdapter.from_pretrained(path, subfolder="motion_adapter", local_files_only=True).eval()
    return load_motion_file(path, motion_config)


def motion_unet(role: str, path, adapter: MotionAdapter, base: Parts, device) -> UNetMotionModel:
    """The base's 2D UNet with the motion modules inserted (diffusers copies the 2D weights)."""
    checks.check_motion_adapter(role, path, adapter.config, base.unet.config, base.path)
    return UNetMotionModel.from_unet2d(base.unet, adapter).to(device).eval()   # already in base.unet's dtype


# ---------------------------------------------------------------------------------------- the entry

@dataclass
class LoadedExperts:
    """``experts``: role -> expert (``None`` for an absent temporal expert); ``decoder``: the spatial model's VAE."""

    experts: dict
    decoder: VideoDecoder

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Canonical latent [B, C, F, h, w] -> uint8 frames [B, F, H, W, 3]."""
        return self.decoder(latent)

    def __getitem__(self, role: str) -> DiffusersExpert | None:
        return self.experts[role]


def default_dtype(device) -> torch.dtype:
    """fp16 on accelerators (SD 1.5 family weights are published in fp16), fp32 on the CPU."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.float16


def _has_unet_weights(folder) -> bool:
    unet = Path(folder) / "unet"
    return unet.is_dir() and any(p.suffix in (".safetensors", ".bin") for p in unet.iterdir())


class _Loader:
    """One ``load_experts`` call: loads every SD model once, however many roles use it."""

    def __init__(self, base, device, dtype, motion_config, scheduler_overrides, spatial):
        self.base, self.device, self.dtype = base, device, dtype
        self.motion_config = motion_config
        self.scheduler_overrides = scheduler_overrides
        self.spatial = spatial
        self._sd: dict[str, Parts] = {}

    def sd(self, path) -> Parts:
        key = str(Path(path).resolve())
        if key not in self._sd:
            if detect_kind(path) == SD_FILE:
                self._sd[key] = load_sd_file(path, self.base, self.device, self.dtype)
            else:
                self._sd[key] = load_folder(path, self.device, self.dtype, with_vae=True)
        return self._sd[key]

    def motion_base(self, role: str, path) -> Parts:
        """``base`` when it holds weights, else the spatial expert's SD model."""
        if self.base is not None and _has_unet_weights(self.base):
            return self.sd(self.base)
        if self.spatial is not None:
            return self.sd(self.spatial)
        raise ValueError(f"{checks.who(role, path)} is a motion module and needs an SD 1.5 model to go on: pass "
                         f"base=<diffusers SD 1.5 folder with weights> or a spatial expert")

    def parts(self, role: str, path, kind: str) -> Parts:
        if kind in (SD_FOLDER, SD_FILE):
            return self.sd(path)
        if kind in (MOTION_FOLDER, MOTION_FILE):
            return self.with_motion(role, path, kind, self.motion_base(role, path))
        folder = load_folder(path, self.device, self.dtype, with_vae=False)
        if isinstance(folder.unet, UNet2DConditionModel):   # an AnimateDiff folder: 2D UNet + motion_adapter/
            return self.with_motion(role, path, kind, folder)
        return folder

    def with_motion(self, role: str, path, kind: str, base: Parts) -> Parts:
        """The base's parts with the motion module's UNet (text encoder, scheduler and VAE stay the base's)."""
        adapter = load_adapter(path, kind, self.motion_config)
        return replace(base, path=str(path), unet=motion_unet(role, path, adapter, base, self.device), vae=None)

    def expert(self, role: str, path) -> DiffusersExpert:
        parts = self.parts(role, path, detect_kind(path))
        checks.check_text_width(role, path, parts.prompt_encoder.width, parts.unet.config)
        scheduler_config = {**parts.scheduler_config, **self._overrides(role, parts.unet)}
        return expert_for(parts.unet, parts.prompt_encoder, scheduler_config, name=role, source=str(path),
                          latent_scaling=parts.latent_scaling)

    def _overrides(self, role: str, unet) -> dict:
        if role in self.scheduler_overrides:
            return self.scheduler_overrides[role]
        return ANIMATEDIFF_SCHEDULER_OVERRIDES if isinstance(unet, UNetMotionModel) else {}


def load_experts(control, spatial, temporal=None, base=None, *, device="cpu", dtype: torch.dtype | None = None,
                 motion_config=None, scheduler_overrides: dict | None = None,
                 decode_chunk_frames: int = DEFAULT_CHUNK_FRAMES, speed: SpeedSettings | None = None) -> LoadedExperts:
    """Load the chain's experts from local paths and check that they fit together, before any sampling.

    ``control`` and ``temporal`` (optional: ``None`` for the spatial-only mode) accept an AnimateDiff folder, a
    ModelScope T2V folder, a MotionAdapter folder or a motion-module ``.safetensors``; ``spatial`` an SD 1.5
    folder or single-file checkpoint (see the module docstring). ``base``: local diffusers SD 1.5 folder for
    single-file configs and as the motion modules' SD model. ``dtype``: default fp16 on accelerators, fp32 on
    the CPU. ``speed``: speed settings (``speed.FAST``: channels_last, cuDNN autotuning, regional
    torch.compile) for every UNet and the VAE decoder, applied after the checks; default none. ``motion_config``: MotionAdapter config (folder or json) for motion-module files whose heads or norm
    groups differ from AnimateDiff's. ``scheduler_overrides``: role -> scheduler-config entries that replace the
    default override (AnimateDiff experts get linear betas). The decoder is the spatial model's VAE.

    Raises FileNotFoundError for missing paths or configs and ValueError for unusable or mismatched experts,
    naming the role and path."""
    if control is None or spatial is None:
        raise ValueError("load_experts needs a control and a spatial expert (the spatial model's VAE decodes)")
    if base is not None and not Path(base).is_dir():
        raise ValueError(f"base={base} must be a local diffusers SD 1.5 pipeline folder (model_index.json, unet/, "
                         f"text_encoder/, tokenizer/, scheduler/, vae/)")
    dtype = dtype or default_dtype(device)
    loader = _Loader(base, device, dtype, motion_config, scheduler_overrides or {}, spatial)
    roles = {"control": control, "spatial": spatial, "temporal": temporal}
    for role, path in roles.items():
        if path is not None:
            _check_role_kind(role, path, detect_kind(path))
    experts = {role: loader.expert(role, path) if path is not None else None for role, path in roles.items()}
    decoder = VideoDecoder(loader.sd(spatial).vae, decode_chunk_frames)
    checks.validate_experts(experts, decoder)
    if speed is not None:
        unets = {id(e.unet): e.unet for e in experts.values() if e is not None}  # a UNet shared by roles once
        apply_speed_settings([*unets.values(), decoder.vae.decoder], speed)
    return LoadedExperts(experts, decoder)
