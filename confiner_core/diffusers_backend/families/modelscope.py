"""ModelScope text-to-video (``TextToVideoSDPipeline``, ``UNet3DConditionModel``) for the control and temporal roles.

Kind ``t2v-folder``: a diffusers folder whose ``unet/`` is a ``UNet3DConditionModel``, with its own text encoder
(OpenCLIP-H, 1024 wide, not SD 1.5's 768) and scheduler; it lives in SD's VAE latent space, so a folder shipped
without ``vae/`` weights is fine wherever an SD 1.5 expert of the chain has them. ``fp16`` variant weights
(``*.fp16.safetensors``, as ``variant="fp16"`` downloads leave them) are found. There is no single-file format.
"""

from __future__ import annotations

from pathlib import Path

from ...latent_spaces import VIDEO_FPS
from ..experts import UNet3DExpert
from . import files, unet_folders as U
from .base import Context, Family, Inspection

T2V_FOLDER = "t2v-folder"


class ModelScope(Family):
    name = "modelscope"
    label = "ModelScope T2V"
    fps = VIDEO_FPS["sd15"]
    kinds = {T2V_FOLDER: "a diffusers ModelScope text-to-video pipeline folder (UNet3DConditionModel)"}
    roles = ("control", "temporal")

    def detect(self, path: Path) -> str | None:
        return T2V_FOLDER if path.is_dir() and U.unet_class_of(path) == "UNet3DConditionModel" else None

    def inspect(self, path: Path, kind: str, role: str, context: Context) -> Inspection:
        who = files.who(role, path)
        facts = U.read_unet_folder(path, who)
        U.check_text_width(who, U.text_width(facts["text_encoders"][0]), facts["unet"])
        space = U.space_of(who, facts["unet"], facts["vae"])
        return Inspection(self, kind, role, path, space, facts["has_vae"], facts)

    def load(self, inspection: Inspection, context: Context) -> UNet3DExpert:
        from diffusers import UNet3DConditionModel

        path = inspection.path
        unet = context.cached(("unet", str(Path(path).resolve())),
                              lambda: U.load_model(UNet3DConditionModel, path, "unet", context.device, context.dtype))
        return UNet3DExpert(unet, U.load_prompt_encoder(path, context),
                            self.scheduler_config(inspection, context),
                            name=inspection.role, source=str(path), latent_space=inspection.latent_space)

    def load_codec(self, inspection: Inspection, context: Context):
        return U.load_vae_codec(inspection.path, inspection, context)
