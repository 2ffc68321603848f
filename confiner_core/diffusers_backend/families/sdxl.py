"""Stable Diffusion XL (base) as a per-frame spatial expert.

Kind ``sdxl-folder``: a diffusers ``StableDiffusionXLPipeline`` folder (``unet/`` with ``addition_embed_type
"text_time"``, ``text_encoder/`` CLIP-L + ``text_encoder_2/`` OpenCLIP-bigG with projection, two tokenizers,
``scheduler/``, ``vae/``). Prompts are encoded as the pipeline does (penultimate layers concatenated, pooled
projection of the second encoder, the empty prompt zeroed when ``force_zeros_for_empty_prompt``); the UNet
gets the pooled embedding and six time ids per frame (:class:`~..experts.SDXLExpert`). SDXL has its own latent
space (the SDXL VAE, scaling 0.13025): with SD 1.5 / AnimateDiff experts the chain bridges through both VAEs.
The refiner (one encoder, aesthetic-score time ids) is refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import UNet2DConditionModel

from ...latent_spaces import SDXL as SDXL_SPACE
from ..experts import SDXLExpert
from ..text import SDXLPromptEncoder
from . import files, unet_folders as U
from .base import Context, Family, Inspection

SDXL_FOLDER = "sdxl-folder"
ENCODERS = ("text_encoder", "text_encoder_2")
TOKENIZERS = ("tokenizer", "tokenizer_2")
TIME_IDS = 6            # original size (2), crop corner (2), target size (2)
SDXL_VAE_CONFIG = {"latent_channels": 4, "scaling_factor": SDXL_SPACE.scale, "block_out_channels": (128, 256, 512, 512)}


class SDXL(Family):
    name = "sdxl"
    kinds = {SDXL_FOLDER: "a diffusers SDXL (base) pipeline folder (two text encoders)"}
    roles = ("spatial",)

    def detect(self, path: Path) -> str | None:
        if not path.is_dir() or U.unet_class_of(path) != "UNet2DConditionModel":
            return None
        unet = files.peek_json(path / "unet" / "config.json")
        if (path / "text_encoder_2").is_dir() or unet.get("addition_embed_type") == "text_time":
            return SDXL_FOLDER
        return None

    def inspect(self, path: Path, kind: str, role: str, context: Context) -> Inspection:
        who = files.who(role, path)
        index = files.read_json(path / "model_index.json", who) if (path / "model_index.json").is_file() else {}
        if index.get("requires_aesthetics_score") or (index and not (index.get("text_encoder") or [None])[0]):
            raise ValueError(f"{who}: this is an SDXL refiner (one text encoder, aesthetic-score conditioning), "
                             f"which is not supported as an expert; use the SDXL base pipeline folder")
        facts = U.read_unet_folder(path, who, text_encoders=ENCODERS, tokenizers=TOKENIZERS)
        unet, (te1, te2) = facts["unet"], facts["text_encoders"]
        U.check_text_width(who, U.text_width(te1) + U.text_width(te2), unet,
                           f"its pair of text encoders ({U.text_width(te1)} + {U.text_width(te2)})")
        if unet.get("addition_embed_type") != "text_time":
            raise ValueError(f"{who}: its UNet has addition_embed_type {unet.get('addition_embed_type')!r}, not SDXL's "
                             f"'text_time'; use an SDXL base pipeline folder")
        pooled = int(te2.get("projection_dim") or 0)
        added = unet.get("addition_time_embed_dim", 0) * TIME_IDS + pooled
        if added != unet.get("projection_class_embeddings_input_dim"):
            raise ValueError(f"{who}: its UNet expects {unet.get('projection_class_embeddings_input_dim')} added "
                             f"conditioning values but {TIME_IDS} time ids x {unet.get('addition_time_embed_dim')} + "
                             f"the second text encoder's {pooled}-wide projection make {added}; use the text "
                             f"encoders of this SDXL model")
        space = U.space_of(who, unet, facts["vae"], SDXL_VAE_CONFIG)
        facts["zero_empty"] = bool(index.get("force_zeros_for_empty_prompt", True))
        return Inspection(self, kind, role, path, space, facts["has_vae"], facts)

    def load(self, inspection: Inspection, context: Context) -> SDXLExpert:
        path = inspection.path

        def prompt_encoder():
            tokenizers = [U.load_tokenizer(path, t) for t in TOKENIZERS]
            encoders = [U.load_model(U.transformers_class(path, e, default), path, e, context.device, context.dtype)
                        for e, default in zip(ENCODERS, ("CLIPTextModel", "CLIPTextModelWithProjection"))]
            return SDXLPromptEncoder(tokenizers, encoders, zero_empty=inspection.facts["zero_empty"])

        key = str(Path(path).resolve())
        unet = context.cached(("unet", key),
                              lambda: U.load_model(UNet2DConditionModel, path, "unet", context.device, context.dtype))
        encoder = context.cached(("sdxl-prompt-encoder", key), prompt_encoder)
        return SDXLExpert(unet, encoder, context.scheduler_config(inspection.role, inspection.facts["scheduler"]),
                          name=inspection.role, source=str(path), latent_space=inspection.latent_space)

    def load_codec(self, inspection: Inspection, context: Context):
        vae = inspection.facts["vae"] or {}
        return U.load_vae_codec(inspection.path, inspection, context, upcast=vae.get("force_upcast", True))
