"""Qwen-Image (diffusers ``QwenImagePipeline`` folders) as a ConFiner spatial expert on Wan 2.1 latents.

Qwen-Image's VAE is Wan 2.1's (decoder fine-tuned on images), so its latent space is
:data:`~confiner_core.latent_spaces.WAN21` and it refines a Wan video's latent frames without a bridge ("latent
frames" mode), or every pixel frame encoded alone ("pixel frames" mode, ``WAN21.per_frame()``). What the pipeline
does, and this expert with it (modern-families.md §3-6):

* latents ``[N, 16, h, w]`` are packed into 2x2 patches, tokens ``[N, h/2 * w/2, 64]``, with ``img_shapes``
  ``(1, h/2, w/2)`` per image for the rotary embedding; the output is unpacked the same way;
* the transformer is fed the flow sigma itself (``timestep / 1000``; it scales by 1000 inside);
* text: Qwen2.5-VL's last hidden state of a chat template whose first 34 tokens (the template) are dropped, with
  a mask over the prompt tokens (``encoder_hidden_states_mask``; ``None`` when nothing is padded);
* classifier-free guidance ("true CFG") rescales the combined output to the conditional output's norm per token;
* shift: the scheduler shifts dynamically with the image's token count (``mu = calculate_shift(seq_len)``,
  exponential: ``sigma' = e^mu sigma / (1 + (e^mu - 1) sigma)``). A ConFiner expert has one schedule, so it takes
  the shift at :data:`REFERENCE_SIZE` (the model's default 1024x1024: shift 2.0 with the released config) unless
  given one; ``shift_terminal`` only stretches the inference step grid and does not change the sigma <-> timestep
  relation. ComfyUI's default for Qwen-Image is 1.15 (its templates put 3.1 on top).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from einops import rearrange

from ... import layout as L
from ...latent_spaces import WAN21, Codec, LatentSpace
from ...sampling import host_to_device
from ..text import RecentPrompts
from . import files
from . import unet_folders as U
from .base import Context, ImagePipelineFamily, Inspection
from .wan import (FlowTransformerExpert, check_shift, image_mode_of, image_space, load_vae, modern_dtype,
                  option_for, read_component, vae_facts, video_codec)

#: ``QwenImagePipeline.prompt_template_encode`` and ``prompt_template_encode_start_idx``
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                   "<|im_end|>\n<|im_start|>assistant\n")
TEMPLATE_TOKENS = 34
TOKENIZER_MAX_LENGTH = 1024
#: ``QwenImagePipeline.__call__`` default ``max_sequence_length``
MAX_SEQUENCE_LENGTH = 512
#: pixel size whose token count sets the default shift (``default_sample_size`` 128 x VAE factor 8)
REFERENCE_SIZE = (1024, 1024)


def image_seq_len(height: int, width: int, spatial_factor: int = 8) -> int:
    """Packed image tokens of a ``height x width`` image (2x2 latent patches)."""
    return (height // spatial_factor // 2) * (width // spatial_factor // 2)


def dynamic_shift(scheduler_config: dict, seq_len: int) -> float:
    """The shift ``QwenImagePipeline`` applies at ``seq_len`` image tokens, as one number ``s`` in
    ``s sigma / (1 + (s - 1) sigma)``: ``e^mu`` (exponential time shift) or ``mu`` (linear), with ``mu`` from
    ``calculate_shift`` and the pipeline's fallbacks for keys the config lacks. Without dynamic shifting the
    config's ``shift``."""
    config = scheduler_config or {}
    if not config.get("use_dynamic_shifting"):
        return float(config.get("shift", 1.0))
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    mu = seq_len * m + (base_shift - m * base_len)
    return math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else float(mu)


class QwenPromptEncoder(RecentPrompts):
    """Qwen2.5-VL as ``QwenImagePipeline.encode_prompt`` runs it: the prompt in the chat template, the last hidden
    state, the template's 34 tokens dropped, cut to ``max_sequence_length``. ``encoder(prompt)`` ->
    ``(embeddings [1, L, D], mask [1, L])`` (L = the prompt's own tokens, so the mask is all ones until the
    expert pads prompts of different lengths into one batch). Prompts are encoded one at a time, as the pipeline
    does: in a batch the shorter would be padded, and the template drop assumes no padding."""

    def __init__(self, tokenizer, text_encoder, max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval()
        self.max_sequence_length = max_sequence_length

    @property
    def width(self) -> int:
        config = self.text_encoder.config
        return int(getattr(getattr(config, "text_config", None), "hidden_size", None) or config.hidden_size)

    @torch.no_grad()
    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer([PROMPT_TEMPLATE.format(prompt)], max_length=TOKENIZER_MAX_LENGTH + TEMPLATE_TOKENS,
                                padding=True, truncation=True, return_tensors="pt")
        device = self.text_encoder.device
        out = self.text_encoder(input_ids=host_to_device(tokens.input_ids, device),
                                attention_mask=host_to_device(tokens.attention_mask, device), output_hidden_states=True)
        embeds = out.hidden_states[-1][:, TEMPLATE_TOKENS:][:, :self.max_sequence_length]
        return embeds, torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``[N, C, h, w]`` -> 2x2 patch tokens ``[N, h/2 * w/2, 4C]`` (``QwenImagePipeline._pack_latents``)."""
    return rearrange(latents, "n c (h ph) (w pw) -> n (h w) (c ph pw)", ph=2, pw=2)


def check_packable(expert, height: int, width: int, family: str) -> None:
    """A latent of ``height x width`` packs into 2x2 patches only when both are even: else a message naming the
    expert and the pixel multiple to use."""
    if height % 2 or width % 2:
        f = expert.latent_space.spatial_factor
        raise ValueError(f"{expert.name} expert ({expert.source}): {family} packs 2x2 latent patches, so the latent "
                         f"height and width must be even (pixel multiples of {2 * f}), got {height}x{width}")


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack` (``_unpack_latents``) for a latent of ``height x width``."""
    return rearrange(tokens, "n (h w) (c ph pw) -> n c (h ph) (w pw)", h=height // 2, w=width // 2, ph=2, pw=2)


def pad_conditionings(conds: list, rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings and masks of several prompts, each repeated for ``rows`` images, zero-padded to one length.
    The mask is ``None`` when no token is padded, as the pipeline passes it."""
    length = max(e.shape[1] for e, _ in conds)
    embeds, masks = [], []
    for e, m in conds:
        pad = length - e.shape[1]
        embeds.append(torch.nn.functional.pad(e, (0, 0, 0, pad)).repeat_interleave(rows // e.shape[0], dim=0))
        masks.append(torch.nn.functional.pad(m, (0, pad)).repeat_interleave(rows // m.shape[0], dim=0))
    mask = torch.cat(masks)
    return torch.cat(embeds), (None if bool(mask.all()) else mask)


class QwenImageExpert(FlowTransformerExpert):
    """``QwenImageTransformer2DModel`` on a frame batch ``[N, 16, h, w]`` (spatial expert), ``h`` and ``w`` even.
    ``cfg_renorm``: rescale guided outputs to the conditional norm, as ``QwenImagePipeline`` does (default)."""

    family = "qwen-image"
    layout = L.FRAMES
    default_guidance = 4.0   # QwenImagePipeline's true_cfg_scale

    def __init__(self, transformer, prompt_encoder, shift: float, latent_space: LatentSpace = WAN21,
                 cfg_renorm: bool = True, name: str = "expert", source: str = ""):
        super().__init__(transformer, prompt_encoder, shift, latent_space, name, source)
        self.cfg_renorm = cfg_renorm

    def model_timestep(self, t: float) -> float:
        return self.sigma(t)

    def check_size(self, height: int, width: int) -> None:
        check_packable(self, height, width, "Qwen-Image")

    def call(self, sample: torch.Tensor, timestep: torch.Tensor, conds: list) -> torch.Tensor:
        n, _, height, width = sample.shape
        self.check_size(height, width)
        embeds, mask = pad_conditionings(conds, n // len(conds))
        out = self.transformer(hidden_states=pack(sample), timestep=timestep,
                               encoder_hidden_states=embeds.to(sample.device, sample.dtype),
                               encoder_hidden_states_mask=None if mask is None else mask.to(sample.device),
                               img_shapes=[[(1, height // 2, width // 2)]] * n, return_dict=False)[0]
        return unpack(out, height, width)

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float, t: float) -> torch.Tensor:
        combined = uncond + scale * (cond - uncond)
        if not self.cfg_renorm:
            return combined
        height, width = combined.shape[-2:]
        packed, packed_cond = pack(combined), pack(cond)
        rescaled = packed * (packed_cond.norm(dim=-1, keepdim=True) / packed.norm(dim=-1, keepdim=True))
        return unpack(rescaled, height, width)


# --------------------------------------------------------------------------------------------- family

QWEN_FOLDER = "qwen-image-folder"
QWEN_UNSUPPORTED = "qwen-image-other"
#: the released Qwen-Image scheduler config, for a folder shipped without scheduler/
RELEASED_SCHEDULER = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 0.9, "base_image_seq_len": 256,
                      "max_image_seq_len": 8192, "shift_terminal": 0.02, "time_shift_type": "exponential"}


class QwenImage(ImagePipelineFamily):
    """Qwen-Image text-to-image diffusers folders (``QwenImagePipeline``): spatial expert only (an image model),
    per latent frame in Wan 2.1's latent space, or per pixel frame (option ``image_mode="pixel_frames"``)."""

    name = "qwen-image"
    label = "Qwen-Image"
    kinds = {QWEN_FOLDER: "a diffusers Qwen-Image text-to-image folder (QwenImagePipeline; an image model: spatial "
                          "expert only, use a Wan folder for control and temporal)",
             QWEN_UNSUPPORTED: "a diffusers Qwen-Image edit / control / layered folder, which ConFiner does not use "
                               "(use a text-to-image QwenImagePipeline folder as the spatial expert)"}
    pipelines, transformer_class = ("QwenImagePipeline",), "QwenImageTransformer2DModel"
    lone_network_names = (("txt_norm.weight", "img_in.weight", "txt_in.weight"),)   # (ComfyUI's files: diffusers')
    folder_kind, other_kind = QWEN_FOLDER, QWEN_UNSUPPORTED

    def inspect(self, path: Path, kind: str, role: str, context: Context) -> Inspection:
        who = files.who(role, path)
        transformer = read_component(path, "transformer", "Qwen-Image transformer", who)
        if transformer.get("_class_name") not in (None, "QwenImageTransformer2DModel"):
            raise ValueError(f"{who}: transformer/config.json names {transformer.get('_class_name')}, not a "
                             f"QwenImageTransformer2DModel; use a Qwen-Image text-to-image folder")
        text = read_component(path, "text_encoder", "Qwen2.5-VL text encoder", who)
        files.require(path, "tokenizer", "the Qwen2 tokenizer files", who)
        width = int((text.get("text_config") or {}).get("hidden_size") or text.get("hidden_size") or 0)
        joint = transformer.get("joint_attention_dim", 3584)
        if width != joint:
            raise ValueError(f"{who}: its Qwen2.5-VL text encoder makes {width}-wide hidden states "
                             f"(text_encoder/config.json) but the transformer's joint_attention_dim is {joint}; use "
                             f"the text encoder of the same Qwen-Image release (Qwen2.5-VL-7B, 3584 wide)")
        in_channels = int(transformer.get("in_channels", 64))
        patch = int(transformer.get("patch_size", 2))
        space, vae, has_vae = vae_facts(path, who, in_channels // (patch * patch), "Qwen-Image")
        scheduler_file = path / "scheduler" / "scheduler_config.json"
        scheduler = files.read_json(scheduler_file, who) if scheduler_file.is_file() else dict(RELEASED_SCHEDULER)
        default_shift = dynamic_shift(scheduler, image_seq_len(*REFERENCE_SIZE, space.spatial_factor))
        shift = check_shift(option_for(context, "flow_shift", role, default_shift), who)
        mode = image_mode_of(context, role)
        facts = {"transformer": transformer, "text_encoder": text, "scheduler": scheduler, "vae": vae,
                 "shift": shift, "image_mode": mode, "video_space": space}
        return Inspection(self, kind, role, path, image_space(space, mode), has_vae, facts, patch=patch)

    def load(self, inspection: Inspection, context: Context) -> QwenImageExpert:
        from diffusers import QwenImageTransformer2DModel

        path, dtype = inspection.path, modern_dtype(context)
        transformer = context.cached(("qwen-image-transformer", str(path.resolve())), lambda: U.load_model(
            QwenImageTransformer2DModel, path, "transformer", context.device, dtype))
        encoder = context.cached(("qwen2.5-vl", str(path.resolve())), lambda: QwenPromptEncoder(
            U.load_tokenizer(path, default="Qwen2Tokenizer"),
            U.load_model(U.transformers_class(path, "text_encoder", "Qwen2_5_VLForConditionalGeneration"), path,
                         "text_encoder", context.device, dtype)))
        return QwenImageExpert(transformer, encoder, inspection.facts["shift"], inspection.latent_space,
                               name=inspection.role, source=str(path))

    def load_codec(self, inspection: Inspection, context: Context) -> Codec:
        from diffusers import AutoencoderKLQwenImage

        return video_codec(inspection, load_vae(inspection.path, AutoencoderKLQwenImage, context), context)
