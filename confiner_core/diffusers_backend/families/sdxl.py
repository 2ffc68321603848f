"""Stable Diffusion XL (base, and its fine-tunes such as Illustrious or Pony) as a per-frame spatial expert.

Kinds: ``sdxl-folder``, a diffusers ``StableDiffusionXLPipeline`` folder (``unet/`` with ``addition_embed_type
"text_time"``, ``text_encoder/`` CLIP-L + ``text_encoder_2/`` OpenCLIP-bigG with projection, two tokenizers,
``scheduler/``, ``vae/``); and ``sdxl-file``, a single ``.safetensors`` in the original layout
(``model.diffusion_model.*``, ``first_stage_model.*``, ``conditioner.embedders.{0,1}.*``) whose configs, tokenizers
and scheduler come from ``base``, a local diffusers SDXL folder that may hold no weights. Prompts are encoded as
the pipeline does (penultimate layers concatenated, pooled projection of the second encoder, the empty prompt
zeroed when ``force_zeros_for_empty_prompt``); the UNet gets the pooled embedding and six time ids per frame
(:class:`~..experts.SDXLExpert`). SDXL has its own latent space (its VAE, scaling 0.13025): with SD 1.5 /
AnimateDiff experts the chain bridges through both VAEs. The SDXL VAE overflows in fp16, so it runs in float32
when its config says ``force_upcast`` (as the pipeline does). The refiner (one encoder, aesthetic-score time ids)
is refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...latent_spaces import SDXL as SDXL_SPACE
from ..experts import SDXLExpert
from ..text import SDXLPromptEncoder
from ..vae import DEFAULT_CHUNK_FRAMES, AutoencoderKLCodec
from . import files, unet_folders as U
from .base import Context, Family, Inspection

SDXL_FOLDER = "sdxl-folder"
SDXL_FILE = "sdxl-file"
ENCODERS = ("text_encoder", "text_encoder_2")
TOKENIZERS = ("tokenizer", "tokenizer_2")
TIME_IDS = 6            # original size (2), crop corner (2), target size (2)
SDXL_VAE_CONFIG = {"latent_channels": 4, "scaling_factor": SDXL_SPACE.scale, "block_out_channels": (128, 256, 512, 512)}
FILE_PARTS = {"first_stage_model.": "VAE", "conditioner.embedders.0.": "CLIP-L text encoder",
              "conditioner.embedders.1.": "OpenCLIP text encoder"}
#: what the ``base`` of a single file must hold
CONFIG_PARTS = {"model_index.json": "the pipeline's component list", "unet/config.json": "the UNet config",
                "vae/config.json": "the VAE config", "text_encoder/config.json": "the text encoder config",
                "text_encoder_2/config.json": "the second text encoder config", "tokenizer": "the tokenizer files",
                "tokenizer_2": "the second tokenizer's files", "scheduler/scheduler_config.json": "the scheduler config"}
REFINER = ("this is an SDXL refiner (one text encoder, aesthetic-score conditioning), which is not supported as an "
           "expert; use an SDXL base model")


def is_sdxl_folder(path: Path) -> bool:
    if not path.is_dir() or U.unet_class_of(path) != "UNet2DConditionModel":
        return False
    unet = files.peek_json(path / "unet" / "config.json")
    return (path / "text_encoder_2").is_dir() or unet.get("addition_embed_type") == "text_time"


def check_configs(who: str, unet: dict, te1: dict, te2: dict, what: str = "its") -> None:
    """Text widths against cross-attention, and pooled projection + time ids against the added conditioning."""
    U.check_text_width(who, U.text_width(te1) + U.text_width(te2), unet,
                       f"{what} pair of text encoders ({U.text_width(te1)} + {U.text_width(te2)})")
    if unet.get("addition_embed_type") != "text_time":
        raise ValueError(f"{who}: its UNet has addition_embed_type {unet.get('addition_embed_type')!r}, not SDXL's "
                         f"'text_time'; use an SDXL base model")
    pooled = int(te2.get("projection_dim") or 0)
    added = unet.get("addition_time_embed_dim", 0) * TIME_IDS + pooled
    if added != unet.get("projection_class_embeddings_input_dim"):
        raise ValueError(f"{who}: its UNet expects {unet.get('projection_class_embeddings_input_dim')} added "
                         f"conditioning values but {TIME_IDS} time ids x {unet.get('addition_time_embed_dim')} + "
                         f"the second text encoder's {pooled}-wide projection make {added}; use the text encoders "
                         f"of this SDXL model")


class SDXL(Family):
    name = "sdxl"
    label = "SDXL (a folder, or a single file with a base folder)"
    kinds = {SDXL_FOLDER: "a diffusers SDXL (base) pipeline folder (two text encoders)",
             SDXL_FILE: "a single-file SDXL .safetensors checkpoint, e.g. an Illustrious or Pony model (with "
                        "base=<diffusers SDXL folder> for its configs)"}
    roles = ("spatial",)

    def detect(self, path: Path) -> str | None:
        if path.is_dir():
            return SDXL_FOLDER if is_sdxl_folder(path) else None
        keys = files.peek_header(path)
        if any(k.startswith("model.diffusion_model.") for k in keys) and \
                any(k.startswith("conditioner.embedders.") for k in keys):
            return SDXL_FILE
        return None

    def inspect(self, path: Path, kind: str, role: str, context: Context) -> Inspection:
        who = files.who(role, path)
        if kind == SDXL_FILE:
            return self._inspect_file(path, role, context, who)
        index = files.read_json(path / "model_index.json", who) if (path / "model_index.json").is_file() else {}
        if index.get("requires_aesthetics_score") or (index and not (index.get("text_encoder") or [None])[0]):
            raise ValueError(f"{who}: {REFINER}")
        facts = U.read_unet_folder(path, who, text_encoders=ENCODERS, tokenizers=TOKENIZERS)
        check_configs(who, facts["unet"], *facts["text_encoders"])
        space = U.space_of(who, facts["unet"], facts["vae"], SDXL_VAE_CONFIG)
        facts["zero_empty"] = bool(index.get("force_zeros_for_empty_prompt", True))
        return Inspection(self, kind, role, path, space, facts["has_vae"], facts)

    def _inspect_file(self, path: Path, role: str, context: Context, who: str) -> Inspection:
        header = files.read_header(path, who)
        if not any(k.startswith("conditioner.embedders.1.") for k in header):
            raise ValueError(f"{who}: {REFINER}")
        base = U.single_file_base(who, context, "SDXL", CONFIG_PARTS, is_sdxl_folder)
        facts = U.read_unet_folder(base, f"base ({base})", text_encoders=ENCODERS, tokenizers=TOKENIZERS,
                                   weights=False)
        U.check_checkpoint(who, header, facts["unet"], FILE_PARTS)
        te1, te2 = facts["text_encoders"]
        widths = (U.first_shape(header, "conditioner.embedders.0.", "final_layer_norm.weight"),
                  U.first_shape(header, "conditioner.embedders.1.", "ln_final.weight"))
        for width, config, name in zip(widths, (te1, te2), ENCODERS):
            if width is not None and width[0] != U.text_width(config):
                raise ValueError(f"{who}: the checkpoint's {name} is {width[0]} wide but base's {name}/config.json "
                                 f"says {U.text_width(config)}; pass base= a diffusers folder of this checkpoint's "
                                 f"model family")
        check_configs(who, facts["unet"], te1, te2, "base's")
        index = files.read_json(base / "model_index.json", who)
        space = U.space_of(who, facts["unet"], facts["vae"], SDXL_VAE_CONFIG)
        facts.update(base=base, zero_empty=bool(index.get("force_zeros_for_empty_prompt", True)))
        return Inspection(self, SDXL_FILE, role, path, space, True, facts)

    # ------------------------------------------------------------------------------------------ loading

    def parts(self, inspection: Inspection, context: Context) -> dict:
        """UNet and prompt encoder (and, for a single file, the VAE), loaded once per path."""
        return context.cached(("sdxl-parts", str(Path(inspection.path).resolve())),
                              lambda: self._load_parts(inspection, context))

    def _load_parts(self, inspection: Inspection, context: Context) -> dict:
        from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

        path, facts = inspection.path, inspection.facts
        if inspection.kind == SDXL_FOLDER:
            encoders = [U.load_model(U.transformers_class(path, e, default), path, e, context.device, context.dtype)
                        for e, default in zip(ENCODERS, ("CLIPTextModel", "CLIPTextModelWithProjection"))]
            tokenizers = [U.load_tokenizer(path, t) for t in TOKENIZERS]
            return {"unet": U.load_model(UNet2DConditionModel, path, "unet", context.device, context.dtype),
                    "prompt_encoder": SDXLPromptEncoder(tokenizers, encoders, zero_empty=facts["zero_empty"])}
        pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(facts["base"]), local_files_only=True,
                                                          torch_dtype=context.dtype)
        encoders = [pipe.text_encoder.to(context.device).eval(), pipe.text_encoder_2.to(context.device).eval()]
        return {"unet": pipe.unet.to(context.device).eval(),
                "prompt_encoder": SDXLPromptEncoder([pipe.tokenizer, pipe.tokenizer_2], encoders,
                                                    zero_empty=facts["zero_empty"]),
                "vae": pipe.vae}

    def load(self, inspection: Inspection, context: Context) -> SDXLExpert:
        parts = self.parts(inspection, context)
        return SDXLExpert(parts["unet"], parts["prompt_encoder"],
                          self.scheduler_config(inspection, context), name=inspection.role,
                          source=str(inspection.path), latent_space=inspection.latent_space)

    def load_codec(self, inspection: Inspection, context: Context) -> AutoencoderKLCodec:
        upcast = (inspection.facts["vae"] or {}).get("force_upcast", True)
        if inspection.kind == SDXL_FOLDER:
            return U.load_vae_codec(inspection.path, inspection, context, upcast=upcast)
        vae = self.parts(inspection, context)["vae"]
        dtype = torch.float32 if upcast and context.dtype == torch.float16 else context.dtype
        return AutoencoderKLCodec(vae.to(context.device, dtype).eval(), inspection.latent_space,
                                  context.options.get("decode_chunk_frames") or DEFAULT_CHUNK_FRAMES)
