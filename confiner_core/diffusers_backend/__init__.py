"""diffusers backend: ConFiner experts from local diffusers folders and single ``.safetensors`` files.

* :func:`load_experts` -- control / spatial / temporal experts, checked from configs and headers before any
  weights load, each with the codec (VAE) of its latent space where the chain needs one;
  :meth:`LoadedExperts.decode` turns the spatial expert's latents into uint8 frames;
* one module per model family behind one registry (:mod:`.families`): SD 1.5 and SDXL per-frame image experts
  (:class:`FrameExpert`, :class:`SDXLExpert`), AnimateDiff (:class:`MotionExpert`) and ModelScope
  (:class:`UNet3DExpert`) video experts, each with its own text encoder, tokenizer and scheduler config;
* flow-matching families: Wan 2.1 / 2.2 (:class:`WanExpert` for video roles, :class:`WanImageExpert` at one frame
  for the spatial role, A14B folders as an :class:`~confiner_core.experts.ExpertPair`) and Qwen-Image
  (:class:`QwenImageExpert`, spatial), with their prompt encoders (:class:`UMT5PromptEncoder`,
  :class:`QwenPromptEncoder`); family options in :data:`FLOW_OPTIONS` (``load_experts(..., options=...)``);
* :class:`AutoencoderKLCodec` -- an image VAE as a :class:`~confiner_core.latent_spaces.Codec`;
  :class:`WanVAECodec` -- the causal Wan / Qwen-Image video VAE;
* :mod:`~confiner_core.diffusers_backend.speed` -- optional speed settings and the presets ``--speed`` names
  (``LEAN``: channels_last, fused GroupNorm+SiLU, fused GEGLU, fused QKV, folded upsampling, attention backends (spatial and over frames), cuDNN
  autotuning; ``FAST``: + regional torch.compile; ``MAX``: + CUDA graphs): ``load_experts(..., speed=FAST)``;
  opt-in step caching for Wan refinement experts (``SpeedSettings(step_cache=...)``).

Accepted path kinds per role: :func:`role_kinds` and :func:`kind_descriptions`. Nothing here touches the Hugging
Face Hub: every load is local (``local_files_only=True`` with local configs).
"""

from ..library_bars import torchvision_fallback_unsaid

with torchvision_fallback_unsaid():
    from .experts import DiffusersExpert, FrameExpert, MotionExpert, SDXLExpert, UNet3DExpert
    from .families.animatediff import infer_motion_config, load_motion_file
    from .families.qwen_image import QwenImageExpert, QwenPromptEncoder
    from .families.wan import OPTIONS as FLOW_OPTIONS
    from .families.wan import UMT5PromptEncoder, WanExpert, WanImageExpert, WanVAECodec
    from .families.registry import (FAMILIES, LoadedExperts, borrowed_vaes, detect, detect_kind, inspect_all,
                                    kind_descriptions, load_experts, missing_packages_said, preflight,
                                    register_family, role_kinds)
    from .speed import EAGER, FAST, LEAN, MAX, PRESETS, SpeedSettings, apply_speed_settings
    from .text import PromptEncoder, SDXLPromptEncoder
    from .vae import AutoencoderKLCodec

__all__ = ["EAGER", "FAMILIES", "FAST", "FLOW_OPTIONS", "LEAN", "MAX", "PRESETS", "AutoencoderKLCodec",
           "DiffusersExpert", "FrameExpert", "LoadedExperts", "MotionExpert", "PromptEncoder", "QwenImageExpert",
           "QwenPromptEncoder", "SDXLExpert", "SDXLPromptEncoder", "SpeedSettings", "UMT5PromptEncoder",
           "UNet3DExpert", "WanExpert", "WanImageExpert", "WanVAECodec", "apply_speed_settings", "borrowed_vaes",
           "detect", "detect_kind", "infer_motion_config", "inspect_all", "kind_descriptions", "load_experts",
           "load_motion_file", "missing_packages_said", "preflight", "register_family", "role_kinds"]
