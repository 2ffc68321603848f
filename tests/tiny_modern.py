"""Tiny random-weight Wan 2.1, Wan 2.2 (A14B and TI2V-5B style) and Qwen-Image diffusers folders, built offline.

Nothing is downloaded (modern-families.md §1). The tokenizers are made here: a SentencePiece unigram model trained
on a fixed word list (``num_threads=1``, so the model is the same on every machine) becomes the UMT5 ``T5Tokenizer``;
a byte-level BPE whose merges spell out the words of Qwen-Image's prompt template, with Qwen's special tokens, is
the ``Qwen2Tokenizer`` (so the 34 tokens diffusers drops are exactly the template, as with the real tokenizer).
Models are random-initialised under fixed seeds. ``save_*`` write the folders with the pipelines' own
``save_pretrained``; the pytest fixtures at the bottom build each folder once per test session.

Sizes: Wan DiT 2 layers x 2 heads x 12 (text width 32), Wan VAE base_dim 3 (8x spatial, causal 4x temporal, the real
latents_mean/std), Wan 2.2 VAE base_dim 4 (48 channels, 2x2 patchify, 16x spatial, ComfyUI's Wan22 statistics),
UMT5 2 layers x 32, Qwen-Image DiT 2 layers x 2 heads x 16 (text width 32), Qwen2.5-VL 2 layers x 32 with a
one-layer vision tower. The Qwen-Image VAE carries the tiny Wan 2.1 VAE's weights (one latent space, as released).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (AutoencoderKL, AutoencoderKLQwenImage, AutoencoderKLWan, FlowMatchEulerDiscreteScheduler,
                       FluxPipeline, FluxTransformer2DModel, QwenImagePipeline, QwenImageTransformer2DModel,
                       UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel)
from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, T5Config,
                          T5EncoderModel, T5Tokenizer, UMT5Config, UMT5EncoderModel)

from tiny_diffusers import SD_WIDTH, tiny_text_encoder, tiny_tokenizer
from tiny_diffusers import _bytes_to_unicode as bytes_to_unicode
from tiny_tokenizers import WORDS, umt5_spiece_model  # noqa: F401  (re-exported)

SEED = 0
TEXT_WIDTH = 32          # UMT5 d_model = Wan text_dim; Qwen2.5-VL hidden = Qwen-Image joint_attention_dim
WAN21_SHIFT = 3.0        # Wan2.1-T2V-1.3B-Diffusers' scheduler flow_shift
A14B_SHIFT = 12.0        # Wan 2.2 T2V-A14B sample_shift
A14B_BOUNDARY = 0.875    # Wan 2.2 T2V-A14B boundary_ratio
TI2V_SHIFT = 5.0         # Wan 2.2 TI2V-5B sample_shift
FLUX_SCALE, FLUX_SHIFT = 0.3611, 0.1159   # the FLUX.1 VAE config's scaling_factor and shift_factor

# ComfyUI comfy/latent_formats.py Wan22 (the TI2V-5B VAE's per-channel statistics)
WAN22_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
              0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
              -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
              -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
             0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
             0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
             0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)

# ------------------------------------------------------------------------------------------------- UMT5 text

def umt5_tokenizer() -> T5Tokenizer:
    """The SentencePiece model as transformers' (tokenizers-backed) T5Tokenizer: pad 0, eos 1, unk 2."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=umt5_spiece_model())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def umt5_encoder(width: int = TEXT_WIDTH, vocab_size: int | None = None) -> UMT5EncoderModel:
    torch.manual_seed(SEED)
    config = UMT5Config(vocab_size=vocab_size or len(umt5_tokenizer()), d_model=width, d_kv=8, d_ff=2 * width,
                        num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                        relative_attention_max_distance=16, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    return UMT5EncoderModel(config).eval()


# -------------------------------------------------------------------------------------------- Qwen text

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>")
QWEN_TEMPLATE_WORDS = ("system", "user", "assistant", "Describe", " the", " image", " by", " detailing", " color",
                       " shape", " size", " texture", " quantity", " text", " spatial", " relationships", " of",
                       " objects", " and", " background")


def qwen_vocab() -> tuple[dict, list]:
    """256 byte symbols, one token per prefix of every template word and prompt word (merged left to right), then
    Qwen's special tokens."""
    symbols = bytes_to_unicode()
    space = symbols[ord(" ")]
    tokens, merges = list(symbols), []
    words = list(QWEN_TEMPLATE_WORDS) + [" " + w for w in WORDS]
    for word in dict.fromkeys(w.replace(" ", space) for w in words):
        for i in range(2, len(word) + 1):
            if word[:i] not in tokens:
                tokens.append(word[:i])
                merges.append((word[:i - 1], word[i - 1]))
    tokens += QWEN_SPECIALS
    return {tok: i for i, tok in enumerate(tokens)}, merges


def qwen_tokenizer() -> Qwen2Tokenizer:
    vocab, merges = qwen_vocab()
    return Qwen2Tokenizer(vocab=vocab, merges=merges, additional_special_tokens=list(QWEN_SPECIALS[1:]))


def qwen_text_encoder(width: int = TEXT_WIDTH) -> Qwen2_5_VLForConditionalGeneration:
    vocab = qwen_vocab()[0]
    ids = {name: vocab[name] for name in QWEN_SPECIALS}
    text = {"hidden_size": width, "intermediate_size": width, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": len(vocab), "rope_theta": 1e6,
            "rope_scaling": {"mrope_section": [4, 2, 2], "rope_type": "default", "type": "default"},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]}
    config = Qwen2_5_VLConfig(text_config=text, vocab_size=len(vocab),
                              vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                                             "out_hidden_size": width},
                              image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                              vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                              bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    torch.manual_seed(SEED)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


# --------------------------------------------------------------------------------------------- models

def wan_vae() -> AutoencoderKLWan:
    """Wan 2.1 VAE layout (16 channels, 8x spatial, causal 4x temporal) at base_dim 3; real latents_mean/std."""
    torch.manual_seed(SEED)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def wan22_vae() -> AutoencoderKLWan:
    """Wan 2.2 TI2V-5B VAE layout: residual blocks, 2x2 patchify (12 input channels), 48 channels, 16x spatial."""
    torch.manual_seed(SEED)
    return AutoencoderKLWan(base_dim=4, decoder_base_dim=6, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], is_residual=True, patch_size=2, in_channels=12,
                            out_channels=12, scale_factor_spatial=16, latents_mean=list(WAN22_MEAN),
                            latents_std=list(WAN22_STD)).eval()


def qwen_vae() -> AutoencoderKLQwenImage:
    """Qwen-Image's VAE class carrying the tiny Wan 2.1 VAE's weights (same keys and shapes: one latent space)."""
    vae = AutoencoderKLQwenImage(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True]).eval()
    vae.load_state_dict(wan_vae().state_dict(), strict=True)
    return vae


def wan_transformer(seed: int = SEED, channels: int = 16, text_dim: int = TEXT_WIDTH) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 in_channels=channels, out_channels=channels, text_dim=text_dim, freq_dim=256,
                                 ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                 rope_max_seq_len=32).eval()


def qwen_transformer(text_dim: int = TEXT_WIDTH) -> QwenImageTransformer2DModel:
    torch.manual_seed(SEED + 3)
    return QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=text_dim,
                                       axes_dims_rope=(8, 4, 4)).eval()


def wan_scheduler(shift: float) -> UniPCMultistepScheduler:
    """What the Wan-AI diffusers repositories ship: UniPC on flow sigmas with ``flow_shift``."""
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                   num_train_timesteps=1000)


def qwen_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Qwen-Image's scheduler config: resolution-dependent exponential shift, stretched to a 0.02 terminal."""
    return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                           base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                                           time_shift_type="exponential", num_train_timesteps=1000)


def t5_encoder(width: int = TEXT_WIDTH) -> T5EncoderModel:
    """Flux's T5-XXL layout (gated GELU, relative attention) at width 32, on the UMT5 tokenizer's vocabulary."""
    torch.manual_seed(SEED + 5)
    config = T5Config(vocab_size=len(umt5_tokenizer()), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0)
    return T5EncoderModel(config).eval()


def flux_vae() -> AutoencoderKL:
    """The Flux VAE's layout (16 channels, 8x spatial, no quant convs) with its scaling and shift factors."""
    torch.manual_seed(SEED + 6)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 16, 32, 32),
                         layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=16, sample_size=64,
                         scaling_factor=FLUX_SCALE, shift_factor=FLUX_SHIFT, use_quant_conv=False,
                         use_post_quant_conv=False).eval()


def flux_transformer(guidance_embeds: bool = True) -> FluxTransformer2DModel:
    torch.manual_seed(SEED + 7)
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_WIDTH,
                                  pooled_projection_dim=SD_WIDTH, guidance_embeds=guidance_embeds,
                                  axes_dims_rope=(4, 6, 6)).eval()


def flux_scheduler(dynamic: bool = True) -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1-dev's scheduler config (exponential dynamic shift); schnell's does not shift."""
    if not dynamic:
        return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False, num_train_timesteps=1000)
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                           base_image_seq_len=256, max_image_seq_len=4096, num_train_timesteps=1000)


# --------------------------------------------------------------------------------------------- pipelines

def wan21_pipeline(shift: float = WAN21_SHIFT) -> WanPipeline:
    return WanPipeline(tokenizer=umt5_tokenizer(), text_encoder=umt5_encoder(), vae=wan_vae(),
                       scheduler=wan_scheduler(shift), transformer=wan_transformer())


def wan22_a14b_pipeline() -> WanPipeline:
    """Two transformers (high noise: ``transformer``, low noise: ``transformer_2``) split at ``boundary_ratio``."""
    return WanPipeline(tokenizer=umt5_tokenizer(), text_encoder=umt5_encoder(), vae=wan_vae(),
                       scheduler=wan_scheduler(A14B_SHIFT), transformer=wan_transformer(SEED),
                       transformer_2=wan_transformer(SEED + 1), boundary_ratio=A14B_BOUNDARY)


def wan22_ti2v_pipeline() -> WanPipeline:
    """TI2V-5B style: the 48-channel Wan 2.2 VAE and a 48-channel DiT, ``expand_timesteps`` (per-token t)."""
    return WanPipeline(tokenizer=umt5_tokenizer(), text_encoder=umt5_encoder(), vae=wan22_vae(),
                       scheduler=wan_scheduler(TI2V_SHIFT), transformer=wan_transformer(SEED + 2, channels=48),
                       expand_timesteps=True)


def qwen_image_pipeline() -> QwenImagePipeline:
    return QwenImagePipeline(scheduler=qwen_scheduler(), vae=qwen_vae(), text_encoder=qwen_text_encoder(),
                             tokenizer=qwen_tokenizer(), transformer=qwen_transformer())


def flux_pipeline(dev: bool = True) -> FluxPipeline:
    """FLUX.1-dev (guidance-distilled: ``guidance_embeds``) or, with ``dev=False``, schnell."""
    return FluxPipeline(scheduler=flux_scheduler(dev), vae=flux_vae(), text_encoder=tiny_text_encoder(),
                        tokenizer=tiny_tokenizer(), text_encoder_2=t5_encoder(), tokenizer_2=umt5_tokenizer(),
                        transformer=flux_transformer(dev))


BUILDERS = {"wan21": wan21_pipeline, "wan22_a14b": wan22_a14b_pipeline, "wan22_ti2v": wan22_ti2v_pipeline,
            "qwen_image": qwen_image_pipeline, "flux_dev": flux_pipeline,
            "flux_schnell": lambda: flux_pipeline(dev=False)}


def save(kind: str, path: Path) -> Path:
    """Write the ``kind`` folder (one of BUILDERS) with the pipeline's own ``save_pretrained``."""
    BUILDERS[kind]().save_pretrained(path)
    return Path(path)


# ------------------------------------------------------------------------------- pytest fixtures (session)

@pytest.fixture(scope="session")
def modern_dirs(tmp_path_factory):
    """kind -> folder, each built on first use and kept for the session."""
    root = tmp_path_factory.mktemp("tiny_modern")
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = save(kind, root / kind)
        return built[kind]

    return get
