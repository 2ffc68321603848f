"""The model families ComfyUI loads, as the pack speaks of them: one record per family, found by the start of
ComfyUI's model config class name (``comfy/supported_models.py``: ``WAN21_T2V``, ``Flux``, ``SD15``).

What the pack says of a model comes from its record: the name artists call it by, where they get its text encoder,
the words by which a loader's title names it, and whether it is an image model with a video latent format. First
match wins, so a longer prefix comes before a shorter one (``WAN22_T2V`` before ``WAN22``, ``Flux2`` before
``Flux``). The core's families (``confiner_core.diffusers_backend.families``) are the same idea for diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ComfyFamily:
    prefix: str                       # ComfyUI's model config class name starts with it
    name: str | None = None           # as artists name it (None: ComfyUI's config name alone)
    text_encoder: str | None = None   # where an artist gets its text encoder (None: its checkpoint loader's CLIP)
    title_word: str | None = None     # a regular expression by which a loader's title names the family
    # image models whose latent format is a video one (latent_dimensions 3): they take one-frame latents
    # [N, C, 1, h, w]; also the class name in comfy.model_base (Qwen-Image shares Wan 2.1's format)
    image_in_video_format: bool = False
    # releases told apart by their transformer's width (a 1.3B Wan 2.1 file was called "Wan 2.1 / 2.2 A14B"); a
    # width not listed keeps ``name``
    by_width: dict = field(default_factory=dict)


WAN_TEXT = "Load CLIP with type wan"
WAN_WORD = r"\bwan"
FLUX1_TEXT = "DualCLIPLoader with type flux"
FLUX_WORD = r"\bflux"

FAMILIES = (
    ComfyFamily("WAN22_T2V", "Wan 2.2 5B", WAN_TEXT, WAN_WORD),   # Wan 2.2's 5B; its A14B halves load as WAN21_T2V
    ComfyFamily("WAN22", "Wan 2.2", WAN_TEXT, WAN_WORD),
    ComfyFamily("WAN21_T2V", "Wan 2.1 / 2.2", WAN_TEXT, WAN_WORD,
                by_width={1536: "Wan 2.1 1.3B", 5120: "Wan 2.1 14B / 2.2 A14B"}),
    ComfyFamily("WAN21", "Wan 2.1", WAN_TEXT, WAN_WORD),
    ComfyFamily("WAN", None, WAN_TEXT, WAN_WORD),   # (any other Wan config ComfyUI adds)
    ComfyFamily("QwenImage", "Qwen-Image", "Load CLIP with type qwen_image", r"\bqwen", image_in_video_format=True),
    ComfyFamily("FluxSchnell", "FLUX.1-schnell", FLUX1_TEXT, FLUX_WORD),
    ComfyFamily("Flux2", "FLUX.2", "Load CLIP with type flux2", FLUX_WORD),
    ComfyFamily("Flux", "FLUX.1", FLUX1_TEXT, FLUX_WORD),
    ComfyFamily("Chroma", None, "Load CLIP with type chroma"),
    ComfyFamily("SDXLRefiner", "SDXL refiner", title_word=r"\bsdxl"),
    ComfyFamily("SDXL", "SDXL", title_word=r"\bsdxl"),
    ComfyFamily("SD15", "SD 1.5", title_word=r"\bsd ?1\.?5\b"),
    ComfyFamily("SD20", "SD 2"),
    ComfyFamily("SD3", "SD 3", title_word=r"\bsd ?3\b"),
    ComfyFamily("HunyuanVideo", "HunyuanVideo", title_word=r"\bhunyuan"),
)


def family_of(config_name: str) -> ComfyFamily | None:
    """The record of a model config class name, None for a family the pack has none of."""
    return next((f for f in FAMILIES if config_name.startswith(f.prefix)), None)
