"""Stable Diffusion 1.x: a per-frame spatial expert (``UNet2DConditionModel`` on a frame batch), and the base that
AnimateDiff motion modules go on.

Kinds: ``sd-folder`` (a diffusers pipeline folder) and ``sd-file`` (a single ``.safetensors`` in the original
LDM layout: ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*``; its configs,
tokenizer and scheduler come from ``base``, a local diffusers SD folder that may hold no weights). Passing that
config keeps diffusers off the Hub: without it ``from_single_file`` infers a Hub repo and downloads configs.
"""

from __future__ import annotations

from pathlib import Path

from ..experts import FrameExpert
from ..text import PromptEncoder
from ..vae import DEFAULT_CHUNK_FRAMES, AutoencoderKLCodec
from . import files, unet_folders as U
from .base import Context, Family, Inspection

SD_FOLDER = "sd-folder"
SD_FILE = "sd-file"
UNET_KEYS = "model.diffusion_model."
VAE_KEYS = "first_stage_model."
TEXT_KEYS = "cond_stage_model."
SDXL_FILE_KEYS = "conditioner.embedders."

#: what the ``base`` of a single file must hold
CONFIG_PARTS = {"model_index.json": "the pipeline's component list", "unet/config.json": "the UNet config",
                "vae/config.json": "the VAE config", "text_encoder/config.json": "the text encoder config",
                "tokenizer": "the tokenizer files", "scheduler/scheduler_config.json": "the scheduler config"}


def is_sdxl_folder(folder: Path) -> bool:
    unet = files.peek_json(folder / "unet" / "config.json")
    return (folder / "text_encoder_2").is_dir() or unet.get("addition_embed_type") == "text_time"


def is_sd_folder(folder: Path) -> bool:
    """A UNet2DConditionModel pipeline folder that is neither SDXL nor an AnimateDiff folder (motion_adapter/)."""
    return (folder.is_dir() and U.unet_class_of(folder) == "UNet2DConditionModel" and not is_sdxl_folder(folder)
            and not (folder / "motion_adapter" / "config.json").is_file())


class SD15(Family):
    name = "sd15"
    label = "SD 1.5 (a folder, or a single file with a base folder)"
    kinds = {SD_FOLDER: "a diffusers SD 1.5 pipeline folder",
             SD_FILE: "a single-file SD 1.5 .safetensors checkpoint (with base=<diffusers SD 1.5 folder> for its "
                      "configs)"}
    roles = ("spatial",)

    def detect(self, path: Path) -> str | None:
        if path.is_dir():
            return SD_FOLDER if is_sd_folder(path) else None
        keys = files.peek_header(path)
        if any(k.startswith(UNET_KEYS) for k in keys) and not any(k.startswith(SDXL_FILE_KEYS) for k in keys):
            return SD_FILE
        return None

    def inspect(self, path: Path, kind: str, role: str, context: Context) -> Inspection:
        who = files.who(role, path)
        if kind == SD_FOLDER:
            facts = U.read_unet_folder(path, who)
            U.check_text_width(who, U.text_width(facts["text_encoders"][0]), facts["unet"])
            space = U.space_of(who, facts["unet"], facts["vae"])
            return Inspection(self, kind, role, path, space, facts["has_vae"], facts)
        return self._inspect_file(path, role, context, who)

    def _inspect_file(self, path: Path, role: str, context: Context, who: str) -> Inspection:
        base = U.single_file_base(who, context, "SD 1.5", CONFIG_PARTS, is_sd_folder)
        facts = U.read_unet_folder(base, f"base ({base})", weights=False)
        header = files.read_header(path, who)
        U.check_checkpoint(who, header, facts["unet"], {VAE_KEYS: "VAE", TEXT_KEYS: "text encoder"})
        text = U.first_shape(header, TEXT_KEYS, "final_layer_norm.weight") or \
            U.first_shape(header, TEXT_KEYS, "ln_final.weight")
        if text is not None:
            U.check_text_width(who, text[0], facts["unet"], "the checkpoint's text encoder")
        space = U.space_of(who, facts["unet"], facts["vae"])
        return Inspection(self, SD_FILE, role, path, space, True, {**facts, "base": base})

    # ------------------------------------------------------------------------------------------ loading

    def parts(self, inspection: Inspection, context: Context) -> dict:
        """The UNet and prompt encoder (and, for a single file, the VAE), loaded once per
        path however many roles use them (motion modules go on these)."""
        key = ("sd15-parts", str(Path(inspection.path).resolve()))
        return context.cached(key, lambda: self._load_parts(inspection, context))

    def _load_parts(self, inspection: Inspection, context: Context) -> dict:
        from diffusers import StableDiffusionPipeline, UNet2DConditionModel

        path = inspection.path
        if inspection.kind == SD_FOLDER:
            return {"unet": U.load_model(UNet2DConditionModel, path, "unet", context.device, context.dtype),
                    "prompt_encoder": U.load_prompt_encoder(path, context)}
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=str(inspection.facts["base"]), local_files_only=True, torch_dtype=context.dtype,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return {"unet": pipe.unet.to(context.device).eval(),
                "prompt_encoder": PromptEncoder(pipe.tokenizer, pipe.text_encoder.to(context.device).eval()),
                "vae": pipe.vae.to(context.device).eval()}

    def load(self, inspection: Inspection, context: Context) -> FrameExpert:
        parts = self.parts(inspection, context)
        return FrameExpert(parts["unet"], parts["prompt_encoder"],
                           self.scheduler_config(inspection, context), name=inspection.role,
                           source=str(inspection.path), latent_space=inspection.latent_space)

    def load_codec(self, inspection: Inspection, context: Context) -> AutoencoderKLCodec:
        if inspection.kind == SD_FOLDER:
            return U.load_vae_codec(inspection.path, inspection, context)
        return AutoencoderKLCodec(self.parts(inspection, context)["vae"], inspection.latent_space,
                                  context.options.get("decode_chunk_frames") or DEFAULT_CHUNK_FRAMES)
