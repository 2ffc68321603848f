"""diffusers backend: ConFiner experts from local diffusers folders and single ``.safetensors`` files.

* :func:`load_experts` -- control / spatial / temporal experts plus the VAE decoder, checked against each other;
* :class:`FrameExpert` (SD 1.5 ``UNet2DConditionModel``, per frame), :class:`MotionExpert` (AnimateDiff
  ``UNetMotionModel``) and :class:`UNet3DExpert` (ModelScope ``UNet3DConditionModel``), each with its own text
  encoder, tokenizer and scheduler config;
* :class:`VideoDecoder` -- canonical latent [B, C, F, h, w] -> uint8 frames [B, F, H, W, 3];
* :mod:`~confiner_core.diffusers_backend.speed` -- optional speed settings (channels_last, cuDNN autotuning,
  regional torch.compile): ``load_experts(..., speed=FAST)``.

Accepted path kinds per role are listed in :mod:`confiner_core.diffusers_backend.loading`. Nothing here
touches the Hugging Face Hub: every load is local (``local_files_only=True`` with local configs).
"""

from .checks import validate_experts
from .experts import DiffusersExpert, FrameExpert, MotionExpert, UNet3DExpert, expert_for
from .loading import (KIND_DESCRIPTIONS, ROLE_KINDS, LoadedExperts, detect_kind, infer_motion_config,
                      load_experts, load_motion_file)
from .speed import EAGER, FAST, SpeedSettings, apply_speed_settings
from .text import PromptEncoder
from .vae import VideoDecoder

__all__ = ["EAGER", "FAST", "DiffusersExpert", "FrameExpert", "KIND_DESCRIPTIONS", "LoadedExperts", "MotionExpert", "PromptEncoder",
           "ROLE_KINDS", "SpeedSettings", "UNet3DExpert", "VideoDecoder", "apply_speed_settings", "detect_kind", "expert_for", "infer_motion_config",
           "load_experts", "load_motion_file", "validate_experts"]
