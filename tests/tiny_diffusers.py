"""Tiny diffusers experts built in code, for offline CPU tests (diffusers-notes.md §6, "Tiny-expert recipe").

Nothing is downloaded: the tokenizer is a byte-level BPE vocabulary made here, and every model is randomly
initialised under a fixed seed. The ``save_*`` helpers write the folder layouts the diffusers backend loads
(pipeline folders, a MotionAdapter folder) and the ``write_*`` helpers write single ``.safetensors`` files in
the original (LDM / AnimateDiff) key layouts, by inverting diffusers' own single-file converters.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, MotionAdapter,
                       StableDiffusionPipeline, StableDiffusionXLPipeline, TextToVideoSDPipeline, UNet2DConditionModel,
                       UNet3DConditionModel)
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

SEED = 0
SD_WIDTH = 32       # SD-style text width (the real SD 1.5 uses 768)
T2V_WIDTH = 48      # ModelScope-style text width (the real one uses 1024): routing bugs surface as shape errors
SDXL_WIDTHS = (32, 24)   # SDXL's two encoders (the real ones: CLIP-L 768 + OpenCLIP-bigG 1280 = 2048)
SDXL_POOLED = 16         # the second encoder's projection (real: 1280)
SDXL_TIME_DIM = 8        # addition_time_embed_dim (real: 256)
SDXL_SCALING = 0.13025
MERGE_WORDS = ("cat", "dog", "the")


# ----------------------------------------------------------------------------------------------- text

def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 bytes, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def byte_bpe_vocab() -> tuple[dict, list]:
    """520 tokens: 256 bytes, 256 end-of-word bytes, one token per merge, then the two specials (highest ids,
    so CLIP's legacy eos_token_id=2 argmax pooling finds the end token)."""
    symbols = _bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols]
    merges = []
    for word in MERGE_WORDS:
        head = word[:2]
        merges += [(word[0], word[1]), (head, word[2] + "</w>")]
        tokens += [head, word + "</w>"]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def tiny_tokenizer() -> CLIPTokenizer:
    vocab, merges = byte_bpe_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _text_config(width: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(byte_bpe_vocab()[0]), hidden_size=width, intermediate_size=37,
                          num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                          bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_act="quick_gelu", **extra)


def tiny_text_encoder(width: int = SD_WIDTH) -> CLIPTextModel:
    torch.manual_seed(SEED)
    return CLIPTextModel(_text_config(width)).eval()


def tiny_text_encoder_with_projection(width: int = SDXL_WIDTHS[1], projection: int = SDXL_POOLED) \
        -> CLIPTextModelWithProjection:
    """SDXL's second encoder: hidden states plus a pooled, projected ``text_embeds``."""
    torch.manual_seed(SEED + 4)
    return CLIPTextModelWithProjection(_text_config(width, projection_dim=projection)).eval()


# ---------------------------------------------------------------------------------------------- models

def tiny_unet2d(cross_attention_dim: int = SD_WIDTH, in_channels: int = 4) -> UNet2DConditionModel:
    torch.manual_seed(SEED)
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=in_channels, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=32).eval()


def tiny_motion_adapter(layers_per_block: int = 1, zero_proj_out: bool = False) -> MotionAdapter:
    """``zero_proj_out`` makes every motion module an identity, so the motion UNet equals the per-frame 2D UNet."""
    torch.manual_seed(SEED + 1)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=layers_per_block,
                            motion_norm_num_groups=32, motion_num_attention_heads=4, motion_max_seq_length=32,
                            use_motion_mid_block=True).eval()
    if zero_proj_out:
        with torch.no_grad():
            for name, param in adapter.named_parameters():
                if ".proj_out." in name:
                    param.zero_()
    return adapter


def tiny_unet3d(cross_attention_dim: int = T2V_WIDTH, in_channels: int = 4) -> UNet3DConditionModel:
    torch.manual_seed(SEED + 2)
    return UNet3DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=in_channels, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=32).eval()


def tiny_sdxl_unet(cross_attention_dim: int = sum(SDXL_WIDTHS), pooled: int = SDXL_POOLED) -> UNet2DConditionModel:
    """SDXL's UNet layout: text-time added conditioning (pooled text + 6 time ids), two transformer layers in the
    deeper block (diffusers' own SDXL test model, with widths of this file)."""
    torch.manual_seed(SEED + 5)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_DIM, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * SDXL_TIME_DIM + pooled, cross_attention_dim=cross_attention_dim,
        norm_num_groups=32).eval()


def tiny_vae(scaling_factor: float = 0.18215, seed: int = SEED + 3) -> AutoencoderKL:
    """SD's 8x spatial ratio: an 8x8 latent decodes to 64x64 pixels."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=16, sample_size=64, scaling_factor=scaling_factor).eval()


def sd_scheduler() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def lightning_scheduler() -> EulerDiscreteScheduler:
    """AnimateDiff-Lightning's sampler: linear betas, trailing spacing."""
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                                  timestep_spacing="trailing", steps_offset=1)


# ------------------------------------------------------------------------------------ folder layouts

def save_sd(path: Path, vae_scaling: float = 0.18215) -> Path:
    """A StableDiffusionPipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    pipe = StableDiffusionPipeline(vae=tiny_vae(vae_scaling), text_encoder=tiny_text_encoder(),
                                   tokenizer=tiny_tokenizer(), unet=tiny_unet2d(), scheduler=sd_scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return Path(path)


def sdxl_scheduler() -> EulerDiscreteScheduler:
    """The SDXL base release's scheduler config (scaled_linear 0.00085 -> 0.012, leading, steps_offset 1)."""
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  timestep_spacing="leading", steps_offset=1)


def save_sdxl(path: Path, second_width: int = SDXL_WIDTHS[1]) -> Path:
    """A StableDiffusionXLPipeline folder: two CLIP encoders and tokenizers (built here), the text-time UNet and
    a VAE of its own (other weights than SD's, SDXL's scaling factor), so it lives in another latent space."""
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(SDXL_SCALING, seed=SEED + 6), text_encoder=tiny_text_encoder(SDXL_WIDTHS[0]),
        text_encoder_2=tiny_text_encoder_with_projection(second_width), tokenizer=tiny_tokenizer(),
        tokenizer_2=tiny_tokenizer(), unet=tiny_sdxl_unet(), scheduler=sdxl_scheduler())
    pipe.save_pretrained(path)
    return Path(path)


def save_animatediff(path: Path, adapter: MotionAdapter | None = None) -> Path:
    """An AnimateDiffPipeline folder; the pipeline turns the 2D UNet into a UNetMotionModel before saving."""
    pipe = AnimateDiffPipeline(vae=tiny_vae(), text_encoder=tiny_text_encoder(), tokenizer=tiny_tokenizer(),
                               unet=tiny_unet2d(), motion_adapter=adapter or tiny_motion_adapter(),
                               scheduler=lightning_scheduler())
    pipe.save_pretrained(path)
    return Path(path)


def save_t2v(path: Path, text_width: int = T2V_WIDTH, unet_width: int = T2V_WIDTH, in_channels: int = 4) -> Path:
    """A TextToVideoSDPipeline (ModelScope) folder with its own, wider text encoder."""
    pipe = TextToVideoSDPipeline(vae=tiny_vae(), text_encoder=tiny_text_encoder(text_width),
                                 tokenizer=tiny_tokenizer(), unet=tiny_unet3d(unet_width, in_channels),
                                 scheduler=sd_scheduler())
    pipe.save_pretrained(path)
    return Path(path)


def save_motion_adapter(path: Path, adapter: MotionAdapter) -> Path:
    """A MotionAdapter folder (config.json + weights), as guoyww/animatediff-motion-adapter-* ship."""
    adapter.save_pretrained(path)
    return Path(path)


# ---------------------------------------------------------------------------------- single files

def write_motion_module(adapter: MotionAdapter, path: Path, original_layout: bool) -> Path:
    """The adapter's weights as one .safetensors file, in diffusers key layout or the original AnimateDiff one
    (the inverse of ``convert_animatediff_checkpoint_to_diffusers``)."""
    state = {k: v.contiguous() for k, v in adapter.state_dict().items()}
    if original_layout:
        state = {_animatediff_original_key(k): v for k, v in state.items()}
        # original modules carry a positional table in both attention blocks; diffusers keeps one
        state.update({k.replace(".attention_blocks.0.", ".attention_blocks.1."): v.clone()
                      for k, v in state.items() if k.endswith("pos_encoder.pe")})
    save_file(state, str(path))
    return Path(path)


def _animatediff_original_key(key: str) -> str:
    prefix, sep, rest = key.partition(".motion_modules.")
    index, _, tail = rest.partition(".")
    tail = (tail.replace("pos_embed.pe", "attention_blocks.0.pos_encoder.pe")
            .replace(".attn1.", ".attention_blocks.0.").replace(".attn2.", ".attention_blocks.1.")
            .replace(".norm1.", ".norms.0.").replace(".norm2.", ".norms.1.").replace(".norm3.", ".ff_norm."))
    return f"{prefix}{sep}{index}.temporal_transformer.{tail}"


def write_sd_checkpoint(sd_dir: Path, path: Path) -> Path:
    """The SD pipeline at ``sd_dir`` as one original-layout checkpoint (model.diffusion_model.*,
    first_stage_model.*, cond_stage_model.transformer.text_model.*), like v1-5-pruned-emaonly.safetensors."""
    text = CLIPTextModel.from_pretrained(sd_dir, subfolder="text_encoder", local_files_only=True)
    return _write_ldm_checkpoint(sd_dir, path, {"cond_stage_model.transformer.text_model.": text.state_dict()})


def write_sdxl_checkpoint(sdxl_dir: Path, path: Path) -> Path:
    """The SDXL pipeline at ``sdxl_dir`` as one original-layout checkpoint (model.diffusion_model.* with
    label_emb, first_stage_model.*, conditioner.embedders.0.transformer.text_model.* for CLIP-L and
    conditioner.embedders.1.model.* in OpenCLIP's layout for the second encoder), like sd_xl_base_1.0.safetensors
    or an Illustrious checkpoint."""
    text = CLIPTextModel.from_pretrained(sdxl_dir, subfolder="text_encoder", local_files_only=True)
    text_2 = CLIPTextModelWithProjection.from_pretrained(sdxl_dir, subfolder="text_encoder_2", local_files_only=True)
    return _write_ldm_checkpoint(sdxl_dir, path, {"conditioner.embedders.0.transformer.text_model.": text.state_dict(),
                                                  "conditioner.embedders.1.model.": open_clip_to_ldm(text_2)})


def _write_ldm_checkpoint(folder: Path, path: Path, text_parts: dict) -> Path:
    """The folder's UNet and VAE in the original layout plus ``text_parts`` (key prefix -> state), as one file."""
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    state = {"model.diffusion_model." + k: v for k, v in unet_to_ldm(unet).items()}
    state.update({"first_stage_model." + k: v for k, v in vae_to_ldm(vae).items()})
    for prefix, part in text_parts.items():
        state.update({prefix + k: v for k, v in part.items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return Path(path)


_OPEN_CLIP_LAYER = {"self_attn.out_proj.": "attn.out_proj.", "layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.",
                    "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}


def open_clip_to_ldm(text_encoder: CLIPTextModelWithProjection) -> dict:
    """Inverse of diffusers' ``convert_open_clip_checkpoint``: q/k/v fused into ``in_proj``, the projection
    transposed, OpenCLIP names."""
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {"positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           "ln_final.weight": sd.pop("final_layer_norm.weight"), "ln_final.bias": sd.pop("final_layer_norm.bias"),
           "text_projection": sd.pop("text_projection.weight").T}
    sd.pop("embeddings.position_ids", None)
    for i in range(text_encoder.config.num_hidden_layers):
        pre = f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                [sd.pop(f"{pre}self_attn.{p}_proj.{kind}") for p in "qkv"])
        for key in [k for k in sd if k.startswith(pre)]:
            rest = key[len(pre):]
            for new, old in _OPEN_CLIP_LAYER.items():
                rest = rest.replace(new, old)
            out[f"transformer.resblocks.{i}.{rest}"] = sd.pop(key)
    if sd:
        raise KeyError(f"no OpenCLIP name for {sorted(sd)}")
    return out


_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_part(rest: str, table: dict) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_to_ldm(unet: UNet2DConditionModel) -> dict:
    """Inverse of ``convert_ldm_unet_checkpoint`` for any number of blocks and layers per block."""
    per = unet.config.layers_per_block + 1
    fixed = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}
    out = {}
    for key, value in unet.state_dict().items():
        parts = key.split(".")
        if key in fixed:
            out[fixed[key]] = value
        elif parts[0] in ("down_blocks", "up_blocks"):
            out[_unet_block_key(parts, per, unet)] = value
        elif parts[0] == "mid_block":
            kind, i, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                out[f"middle_block.{2 * i}.{_rename_part(rest, _UNET_RESNET)}"] = value
            else:
                out[f"middle_block.1.{rest}"] = value
        else:
            raise KeyError(f"no original-layout name for UNet key {key}")
    return out


def _unet_block_key(parts: list, per: int, unet: UNet2DConditionModel) -> str:
    side, b, kind = parts[0], int(parts[1]), parts[2]
    ldm_side = "input_blocks" if side == "down_blocks" else "output_blocks"
    first = 1 + b * per if side == "down_blocks" else b * per
    if kind in ("resnets", "attentions"):
        layer, rest = int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"{ldm_side}.{first + layer}.0.{_rename_part(rest, _UNET_RESNET)}"
        return f"{ldm_side}.{first + layer}.1.{rest}"
    rest = ".".join(parts[5:])        # downsamplers.0.conv.* / upsamplers.0.conv.*
    if side == "down_blocks":
        return f"input_blocks.{first + per - 1}.0.op.{rest}"
    has_attention = hasattr(unet.up_blocks[b], "attentions")
    return f"output_blocks.{first + per - 1}.{2 if has_attention else 1}.conv.{rest}"


def vae_to_ldm(vae: AutoencoderKL) -> dict:
    """Inverse of ``convert_ldm_vae_checkpoint`` (attention projections back to 1x1 convolutions)."""
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    n_up = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        coder, block, *rest = key.split(".")
        if block == "mid_block":
            kind, i, tail = rest[0], int(rest[1]), ".".join(rest[2:])
            if kind == "resnets":
                out[f"{coder}.mid.block_{i + 1}.{tail.replace('conv_shortcut', 'nin_shortcut')}"] = value
            else:
                out[f"{coder}.mid.attn_1.{_rename_part(tail, _VAE_ATTENTION)}"] = \
                    value[:, :, None, None] if value.ndim == 2 else value
            continue
        i, kind, tail = int(rest[0]), rest[1], ".".join(rest[2:])
        level, ldm_block = (i, "down") if block == "down_blocks" else (n_up - 1 - i, "up")
        if kind == "resnets":
            out[f"{coder}.{ldm_block}.{level}.block.{tail.replace('conv_shortcut', 'nin_shortcut')}"] = value
        else:                           # downsamplers.0.conv.* / upsamplers.0.conv.*
            sampler = "downsample" if ldm_block == "down" else "upsample"
            out[f"{coder}.{ldm_block}.{level}.{sampler}.{'.'.join(rest[3:])}"] = value
    return out
