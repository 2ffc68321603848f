"""Flux.1 (diffusers ``FluxPipeline`` folders: FLUX.1-dev, FLUX.1-schnell) as a ConFiner spatial expert.

Flux is an image model with a 16-channel VAE of its own (:data:`~confiner_core.latent_spaces.FLUX`: scale 0.3611,
shift 0.1159), a space no video model shares, so the chain bridges it to the control and temporal experts through
the VAEs. What the pipeline does, and this expert with it:

* latents ``[N, 16, h, w]`` are packed into 2x2 patches (as Qwen-Image's, :func:`.qwen_image.pack`), with one
  position id ``(0, row, column)`` per token (``_prepare_latent_image_ids``) and zeros for the text tokens;
* the transformer is fed the flow sigma itself (``timestep / 1000``; it scales by 1000 inside);
* text: CLIP-L's pooled output (77 tokens) as ``pooled_projections`` and T5-XXL's last hidden state, padded to
  ``max_sequence_length`` (512) without a mask, as ``encoder_hidden_states``;
* guidance: FLUX.1-dev is guidance-distilled (``guidance_embeds``): the scale is an input of the transformer, one
  forward per step and no negative prompt. That is diffusers' ``guidance_scale`` (default 3.5) and ComfyUI's
  FluxGuidance, so the guidance scale this expert is bound with goes to the network
  (:attr:`~confiner_core.experts.Expert.distilled_guidance`). FLUX.1-schnell has no guidance input: a scale other
  than 1 is classifier-free guidance with the negative prompt, as for any other expert (schnell is distilled for 1);
* shift: the scheduler shifts dynamically with the image's token count (exponential, as Qwen-Image's). A ConFiner
  expert has one schedule, so it takes the shift at :data:`REFERENCE_SIZE` (dev: ``e^1.15`` = 3.16) unless given
  ``flow_shift``; schnell does not shift (1.0).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from ... import layout as L
from ...latent_spaces import FLUX, Codec, LatentSpace
from ...sampling import host_to_device
from ..text import RecentPrompts, warn_if_truncated
from ..vae import latent_space_of_vae
from . import files
from . import unet_folders as U
from .base import Context, ImagePipelineFamily, Inspection
from .qwen_image import check_packable, dynamic_shift, image_seq_len, pack, unpack
from .wan import FlowTransformerExpert, check_shift, modern_dtype, option_for, read_component

#: ``FluxPipeline.__call__`` default ``max_sequence_length`` (schnell's model card uses 256)
MAX_SEQUENCE_LENGTH = 512
#: pixel size whose token count sets the default shift (``default_sample_size`` 128 x VAE factor 8)
REFERENCE_SIZE = (1024, 1024)
#: FLUX.1-dev's scheduler config, for a folder shipped without scheduler/ (schnell's has no dynamic shifting)
RELEASED_SCHEDULER = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                      "max_image_seq_len": 4096, "shift": 3.0, "time_shift_type": "exponential"}


class FluxText(NamedTuple):
    """One prompt's conditioning: CLIP-L's pooled output ``[1, 768]`` and T5-XXL's hidden states ``[1, L, 4096]``."""

    pooled: torch.Tensor
    embeds: torch.Tensor


class FluxPromptEncoder(RecentPrompts):
    """CLIP-L and T5-XXL as ``FluxPipeline.encode_prompt`` runs them (the same prompt to both): CLIP padded to its
    tokenizer's length (77), its pooled output; T5 padded and truncated to ``max_sequence_length`` tokens, its last
    hidden state, unmasked."""

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder.eval()
        self.tokenizer_2, self.text_encoder_2 = tokenizer_2, text_encoder_2.eval()
        self.max_sequence_length = max_sequence_length

    @property
    def width(self) -> int:
        return int(self.text_encoder_2.config.d_model)

    @torch.no_grad()
    def encode(self, prompt: str) -> FluxText:
        prompts = [prompt]
        # (the CLIP encoder gives only the pooled vector: T5 reads the prompt, and its cut is what is lost)
        warn_if_truncated(self.tokenizer_2, prompts, self.max_sequence_length, self.text_encoder_2)
        clip = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt")
        pooled = self.text_encoder(host_to_device(clip.input_ids, self.text_encoder.device)).pooler_output
        t5 = self.tokenizer_2(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                              return_tensors="pt")
        embeds = self.text_encoder_2(host_to_device(t5.input_ids, self.text_encoder_2.device))[0]
        return FluxText(pooled, embeds)


def latent_image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """Position ids ``(0, row, column)`` of the packed tokens of a ``height x width`` latent
    (``FluxPipeline._prepare_latent_image_ids`` at half the latent size)."""
    rows, cols = torch.meshgrid(torch.arange(height // 2, device=device, dtype=dtype),
                                torch.arange(width // 2, device=device, dtype=dtype), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)


class FluxExpert(FlowTransformerExpert):
    """``FluxTransformer2DModel`` on a frame batch ``[N, 16, h, w]`` (spatial expert), ``h`` and ``w`` even. With
    ``guidance_embeds`` (FLUX.1-dev) the bound guidance scale is the network's guidance input."""

    family = "flux"
    layout = L.FRAMES

    def __init__(self, transformer, prompt_encoder, shift: float, latent_space: LatentSpace = FLUX,
                 name: str = "expert", source: str = ""):
        super().__init__(transformer, prompt_encoder, shift, latent_space, name, source)
        self.distilled_guidance = bool(transformer.config.guidance_embeds)
        # FluxPipeline's guidance_scale for dev; schnell is distilled to sample without guidance
        self.default_guidance = 3.5 if self.distilled_guidance else 1.0

    def model_timestep(self, t: float) -> float:
        return self.sigma(t)

    def check_size(self, height: int, width: int) -> None:
        check_packable(self, height, width, "Flux")

    def call(self, sample: torch.Tensor, timestep: torch.Tensor, conds: list) -> torch.Tensor:
        n, _, height, width = sample.shape
        self.check_size(height, width)
        guidance = None
        if self.distilled_guidance:   # (conditioning, scale) pairs: the scale is the network's guidance input
            conds, scales = zip(*conds)
            guidance = host_to_device(torch.tensor(scales, dtype=torch.float32).repeat_interleave(n // len(conds)),
                                      sample.device)
        rows = n // len(conds)
        pooled = torch.cat([c.pooled.repeat_interleave(rows, dim=0) for c in conds])
        embeds = torch.cat([c.embeds.repeat_interleave(rows, dim=0) for c in conds])
        out = self.transformer(hidden_states=pack(sample), timestep=timestep, guidance=guidance,
                               pooled_projections=pooled.to(sample.device, sample.dtype),
                               encoder_hidden_states=embeds.to(sample.device, sample.dtype),
                               txt_ids=torch.zeros(embeds.shape[1], 3, device=sample.device, dtype=sample.dtype),
                               img_ids=latent_image_ids(height, width, sample.device, sample.dtype),
                               return_dict=False)[0]
        return unpack(out, height, width)

    def describe(self) -> dict:
        return {**super().describe(), "distilled_guidance": self.distilled_guidance}


# --------------------------------------------------------------------------------------------- family

FLUX_FOLDER = "flux-folder"
FLUX_UNSUPPORTED = "flux-other"
#: pipelines whose folders hold Flux.1 text-to-image weights (image-to-image reuses them)
T2I_PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline")
PACKED_CHANNELS = 64    # 16 latent channels x 2x2 patch: text-to-image (Fill and Control transformers take more)


class Flux(ImagePipelineFamily):
    """Flux.1 text-to-image diffusers folders (``FluxPipeline``: dev, schnell): spatial expert only (an image model)
    in its own latent space, bridged to the video experts through the VAEs."""

    name = "flux"
    label = "FLUX.1 dev / schnell"
    kinds = {FLUX_FOLDER: "a diffusers FLUX.1 text-to-image folder (FluxPipeline, dev or schnell; an image model: "
                          "spatial expert only, bridged to the video experts through the VAEs)",
             FLUX_UNSUPPORTED: "a diffusers Flux Fill / Control / Kontext / FLUX.2 folder, which ConFiner does not use "
                               "(use a FLUX.1-dev or schnell FluxPipeline folder as the spatial expert)"}
    pipelines, transformer_class = T2I_PIPELINES, "FluxTransformer2DModel"
    # Black Forest Labs' layout (flux1-dev.safetensors, ComfyUI's), diffusers'
    lone_network_names = (("double_blocks.0.img_attn.norm.key_norm.scale", "img_in.weight"),
                          ("x_embedder.weight", "context_embedder.weight", "single_transformer_blocks.0.proj_out.weight"))
    folder_kind, other_kind = FLUX_FOLDER, FLUX_UNSUPPORTED

    def inspect(self, path: Path, kind: str, role: str, context: Context) -> Inspection:
        who = files.who(role, path)
        transformer = read_component(path, "transformer", "Flux transformer", who)
        if transformer.get("_class_name") not in (None, "FluxTransformer2DModel") or \
                int(transformer.get("in_channels", PACKED_CHANNELS)) != PACKED_CHANNELS:
            raise ValueError(f"{who}: transformer/config.json is not a FLUX.1 text-to-image transformer "
                             f"({transformer.get('_class_name')}, in_channels {transformer.get('in_channels')}; "
                             f"text-to-image takes {PACKED_CHANNELS}); use a FLUX.1-dev or schnell folder")
        clip = read_component(path, "text_encoder", "CLIP-L text encoder", who)
        t5 = read_component(path, "text_encoder_2", "T5-XXL text encoder", who)
        for sub in ("tokenizer", "tokenizer_2"):
            files.require(path, sub, f"the {'CLIP' if sub == 'tokenizer' else 'T5'} tokenizer files", who)
        for what, width, want, key in (("CLIP-L", U.text_width(clip), transformer.get("pooled_projection_dim", 768),
                                        "pooled_projection_dim"),
                                       ("T5-XXL", U.text_width(t5), transformer.get("joint_attention_dim", 4096),
                                        "joint_attention_dim")):
            if width != want:
                raise ValueError(f"{who}: its {what} text encoder is {width} wide but the transformer's {key} is "
                                 f"{want}; use the text encoders of the same FLUX.1 release")
        vae = files.read_json(files.require(path, "vae/config.json", "the Flux VAE config (its latent statistics)",
                                            who), who)
        space = latent_space_of_vae(vae, U.KNOWN_SPACES)
        if space.channels != PACKED_CHANNELS // 4:
            raise ValueError(f"{who}: its VAE makes {space.channels}-channel latents (vae/config.json latent_channels) "
                             f"but FLUX.1 takes {PACKED_CHANNELS // 4}; use the VAE of the same FLUX.1 release")
        has_vae = files.has_weights(path / "vae")
        if has_vae:
            files.read_folder_weights(path / "vae", who, "the VAE weights")
        scheduler_file = path / "scheduler" / "scheduler_config.json"
        scheduler = files.read_json(scheduler_file, who) if scheduler_file.is_file() else dict(RELEASED_SCHEDULER)
        default_shift = dynamic_shift(scheduler, image_seq_len(*REFERENCE_SIZE, space.spatial_factor))
        shift = check_shift(option_for(context, "flow_shift", role, default_shift), who)
        facts = {"transformer": transformer, "vae": vae, "scheduler": scheduler, "shift": shift}
        return Inspection(self, kind, role, path, space, has_vae, facts, patch=2)   # FluxPipeline packs 2x2

    def load(self, inspection: Inspection, context: Context) -> FluxExpert:
        from diffusers import FluxTransformer2DModel

        path, dtype = inspection.path, modern_dtype(context)
        transformer = context.cached(("flux-transformer", str(path.resolve())), lambda: U.load_model(
            FluxTransformer2DModel, path, "transformer", context.device, dtype))
        encoder = context.cached(("flux-text", str(path.resolve())), lambda: FluxPromptEncoder(
            U.load_tokenizer(path, "tokenizer", default="CLIPTokenizer"),
            U.load_model(U.transformers_class(path, "text_encoder", "CLIPTextModel"), path, "text_encoder",
                         context.device, dtype),
            U.load_tokenizer(path, "tokenizer_2", default="T5TokenizerFast"),
            U.load_model(U.transformers_class(path, "text_encoder_2", "T5EncoderModel"), path, "text_encoder_2",
                         context.device, dtype)))
        return FluxExpert(transformer, encoder, inspection.facts["shift"], inspection.latent_space,
                          name=inspection.role, source=str(path))

    def load_codec(self, inspection: Inspection, context: Context) -> Codec:
        return U.load_vae_codec(inspection.path, inspection, context,
                                upcast=inspection.facts["vae"].get("force_upcast", True))
