"""What the UNet families (SD 1.5, SDXL, AnimateDiff, ModelScope) share: a diffusers pipeline folder with ``unet/``,
one or two text encoders with their tokenizers, ``scheduler/`` and usually ``vae/``; read from configs and
headers (:func:`read_unet_folder`), checked (:func:`check_text_width`, :func:`check_latent_channels`) and loaded
(:func:`load_model`, :func:`load_prompt_encoder`, :func:`load_vae_codec`)."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ...latent_spaces import FLUX, SD15, SDXL, LatentSpace
from ..text import PromptEncoder
from ..vae import DEFAULT_CHUNK_FRAMES, AutoencoderKLCodec, latent_space_of_vae
from . import files
from .base import Context, Inspection

#: the image-VAE latent spaces a VAE config is recognised as (by channels, spatial factor and normalisation)
KNOWN_SPACES = (SD15, SDXL, FLUX)
SD_VAE_CONFIG = {"latent_channels": 4, "scaling_factor": 0.18215, "block_out_channels": (128, 256, 512, 512)}


def unet_class_of(folder: Path) -> str | None:
    """``_class_name`` of ``folder/unet/config.json`` (None when absent): the detection key of UNet folders."""
    return files.class_name(Path(folder) / "unet" / "config.json")


def read_unet_folder(folder: Path, who: str, text_encoders: tuple = ("text_encoder",),
                     tokenizers: tuple = ("tokenizer",), scheduler: bool = True, weights: bool = True) -> dict:
    """Configs of a UNet pipeline folder, with every weight file's header checked (``weights=False`` for a
    config-only folder such as the ``base`` of a single file). Returns ``{"unet": config, "text_encoders":
    [configs], "scheduler": config | None, "vae": config | None, "has_vae": bool, "index": model_index}``."""
    folder = Path(folder)
    facts = {"index": {}, "scheduler": None, "vae": None, "has_vae": False}
    if (folder / "model_index.json").is_file():
        facts["index"] = files.read_json(folder / "model_index.json", who)
    facts["unet"] = files.read_json(files.require(folder, "unet/config.json", "the UNet config", who), who)
    if weights:
        files.read_folder_weights(folder / "unet", who, "the UNet weights")
    facts["text_encoders"] = []
    for tokenizer in tokenizers:
        files.require(folder, tokenizer, "the tokenizer files (tokenizer.json, or vocab.json + merges.txt)", who)
    for encoder in text_encoders:
        config = files.require(folder, f"{encoder}/config.json", "the text encoder config", who)
        facts["text_encoders"].append(files.read_json(config, who))
        if weights:
            files.read_folder_weights(folder / encoder, who, "the text encoder weights")
    if (folder / "scheduler" / "scheduler_config.json").is_file():
        facts["scheduler"] = files.read_json(folder / "scheduler" / "scheduler_config.json", who)
    elif scheduler:
        files.require(folder, "scheduler/scheduler_config.json", "the scheduler config", who)
    if (folder / "vae" / "config.json").is_file():
        facts["vae"] = files.read_json(folder / "vae" / "config.json", who)
        if weights and files.has_weights(folder / "vae"):
            files.read_folder_weights(folder / "vae", who, "the VAE weights")
            facts["has_vae"] = True
    return facts


def text_width(config: dict) -> int:
    """Width of a transformers text encoder's hidden states (CLIP ``hidden_size``, T5 ``d_model``)."""
    return int(config.get("hidden_size") or config.get("d_model") or 0)


def check_text_width(who: str, width: int, unet_config: dict, encoders: str = "its text encoder") -> None:
    """The text embeddings' width must equal the UNet's cross-attention width."""
    want = unet_config.get("cross_attention_dim")
    if width != want:
        raise ValueError(
            f"{who}: {encoders} produces {width}-wide embeddings but its UNet's cross_attention_dim is {want}; use "
            f"the text encoder that was trained with this UNet (SD 1.5 and AnimateDiff use CLIP-L, 768 wide; "
            f"ModelScope T2V needs its own 1024-wide encoder; SDXL concatenates CLIP-L and OpenCLIP-bigG, 2048)")


def space_of(who: str, unet_config: dict, vae_config: dict | None, default_vae: dict = SD_VAE_CONFIG) -> LatentSpace:
    """The latent space from the VAE config (the family's usual VAE when the folder has none), after checking
    that the UNet takes that VAE's channels."""
    vae_config = vae_config or default_vae
    space = latent_space_of_vae(vae_config, KNOWN_SPACES)
    channels = unet_config.get("in_channels", 4)
    if channels != space.channels:
        raise ValueError(f"{who}: its UNet takes {channels} latent channels (unet/config.json in_channels) but "
                         f"its VAE makes {space.channels} (vae/config.json latent_channels); use the UNet and VAE "
                         f"of one model")
    return space


def single_file_base(who: str, context: Context, family: str, parts: dict, is_family) -> Path:
    """The ``base`` folder a single-file checkpoint takes its configs, tokenizers and scheduler from: given, of
    the checkpoint's family (``is_family(folder)``), and holding every part in ``parts`` (relative path -> what)."""
    shared = context.base_used   # an expert inspected before took base= too (a motion module goes on it)
    base = context.take_base()
    if base is None:
        raise ValueError(f"{who}: a single-file {family.split()[0]} checkpoint needs base=<local diffusers {family} "
                         f"folder> for its configs, tokenizer and scheduler (weights may be absent from "
                         f"that folder)")
    if (base / "unet" / "config.json").is_file() and not is_family(base):
        both = (f"; base= serves a motion module of another expert too, which needs SD 1.5, and one base cannot "
                f"serve both: give this expert as a diffusers {family} folder, or the motion module's expert as an "
                f"AnimateDiff pipeline folder") if shared else ""
        raise ValueError(f"{who}: base={base} is not a diffusers {family} folder, which this single-file checkpoint "
                         f"needs for its configs; pass the matching folder{both}")
    for relative, what in parts.items():
        files.require(base, relative, what, who)
    return base


def first_shape(header: dict, prefix: str, suffix: str) -> tuple | None:
    """The shape of the first tensor named ``prefix...suffix`` in a header."""
    return next((info.shape for key, info in header.items() if key.startswith(prefix) and key.endswith(suffix)),
                None)


def check_checkpoint(who: str, header: dict, unet_config: dict, parts: dict, unet_keys: str = "model.diffusion_model.") \
        -> None:
    """An original-layout single file against its base's UNet config: every part present (key prefix -> what),
    latent channels and cross-attention width as the config says."""
    for prefix, what in parts.items():
        if not any(k.startswith(prefix) for k in header):
            raise ValueError(f"{who}: the checkpoint holds no {what} weights ({prefix}*); use a full checkpoint "
                             f"(UNet, VAE and text encoders in one file) or the diffusers folder")
    fix = "pass base= a diffusers folder of this checkpoint's model family"
    conv_in = first_shape(header, unet_keys, "input_blocks.0.0.weight")
    cross = first_shape(header, unet_keys, "attn2.to_k.weight")
    if conv_in is not None and conv_in[1] != unet_config.get("in_channels", 4):
        raise ValueError(f"{who}: the checkpoint's UNet takes {conv_in[1]} latent channels but base's "
                         f"unet/config.json says {unet_config.get('in_channels')}; {fix}")
    if cross is not None and cross[1] != unet_config.get("cross_attention_dim"):
        raise ValueError(f"{who}: the checkpoint's UNet attends to {cross[1]}-wide text but base's unet/config.json "
                         f"has cross_attention_dim {unet_config.get('cross_attention_dim')} (an SD 2.x or SDXL "
                         f"checkpoint with an SD 1.5 base?); {fix}")


def transformers_class(folder: Path, component: str, default: str):
    """The class model_index.json names for a transformers component (CLIPTextModel, CLIPTokenizer, ...)."""
    index = Path(folder) / "model_index.json"
    entry = files.read_json(index, str(folder)).get(component) if index.is_file() else None
    library, name = entry if entry and entry[0] else ("transformers", default)
    return getattr(importlib.import_module(library), name)


def load_model(cls, folder: Path, subfolder: str, device, dtype) -> torch.nn.Module:
    """A model from a local folder, safetensors only, in ``dtype`` on ``device``. diffusers models load straight
    into ``dtype``; transformers models are cast afterwards (transformers renamed ``torch_dtype`` in 4.56)."""
    from diffusers import ModelMixin

    folder = Path(folder)
    variant = files.weights_variant(folder / subfolder)
    if issubclass(cls, ModelMixin):
        model = cls.from_pretrained(folder, subfolder=subfolder, local_files_only=True, variant=variant,
                                    torch_dtype=dtype, use_safetensors=True)
        return model.to(device).eval()
    model = cls.from_pretrained(folder, subfolder=subfolder, local_files_only=True, variant=variant,
                                use_safetensors=True)
    return model.to(device, dtype).eval()


def load_tokenizer(folder: Path, subfolder: str = "tokenizer", default: str = "CLIPTokenizer"):
    return transformers_class(folder, subfolder, default).from_pretrained(folder, subfolder=subfolder,
                                                                          local_files_only=True)


def load_prompt_encoder(folder: Path, context: Context) -> PromptEncoder:
    folder = Path(folder)
    return context.cached(("prompt-encoder", str(folder.resolve())), lambda: PromptEncoder(
        load_tokenizer(folder), load_model(transformers_class(folder, "text_encoder", "CLIPTextModel"), folder,
                                           "text_encoder", context.device, context.dtype)))


def load_vae_codec(folder: Path, inspection: Inspection, context: Context, upcast: bool = False) \
        -> AutoencoderKLCodec:
    """The folder's ``vae/`` as a codec of the inspected latent space (loaded once per folder). ``upcast``: keep
    the VAE in float32 when the experts run in float16 (the SDXL VAE overflows in fp16; its config says
    ``force_upcast``, which ``StableDiffusionXLPipeline`` honours the same way)."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    dtype = torch.float32 if upcast and context.dtype == torch.float16 else context.dtype
    vae = context.cached(("vae", str(folder.resolve()), dtype),
                         lambda: load_model(AutoencoderKL, folder, "vae", context.device, dtype))
    return AutoencoderKLCodec(vae, inspection.latent_space,
                              context.options.get("decode_chunk_frames") or DEFAULT_CHUNK_FRAMES)
