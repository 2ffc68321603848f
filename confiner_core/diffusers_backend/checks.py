"""Compatibility checks that run while loading, before any sampling.

A mismatched combination otherwise fails deep inside a UNet with a bare shape error (or, worse, runs and
produces noise). Every check raises ``ValueError`` naming the expert (role and path) and the fix.
"""

from __future__ import annotations


def who(role: str, path) -> str:
    return f"{role} expert ({path})"


def check_text_width(role: str, path, text_width: int, unet_config) -> None:
    """The text encoder's hidden size must equal the UNet's cross-attention width."""
    want = unet_config.cross_attention_dim
    if text_width != want:
        raise ValueError(
            f"{who(role, path)}: its text encoder produces {text_width}-wide embeddings but its UNet's "
            f"cross_attention_dim is {want}; use the text encoder that was trained with this UNet (SD 1.5 and "
            f"AnimateDiff use CLIP-L, 768 wide; ModelScope T2V needs its own 1024-wide encoder)")


def _per_block(value, blocks: int) -> list:
    return [value] * blocks if isinstance(value, int) else list(value)


def check_motion_adapter(role: str, path, adapter_config, unet_config, base) -> None:
    """A motion module only fits a 2D UNet with the same blocks, channels and layers per block."""
    fix = ("use a motion module made for this base (SD 1.5 AnimateDiff modules need an SD 1.5 base), or "
           "pass motion_config=<folder with the module's MotionAdapter config.json>")
    channels, unet_channels = list(adapter_config.block_out_channels), list(unet_config.block_out_channels)
    if channels != unet_channels:
        raise ValueError(f"{who(role, path)}: the motion module has blocks with channels {channels} but the base "
                         f"UNet ({base}) has {unet_channels}; {fix}")
    blocks = len(channels)
    layers = _per_block(adapter_config.motion_layers_per_block, blocks)
    unet_layers = _per_block(unet_config.layers_per_block, blocks)
    if layers != unet_layers:
        raise ValueError(f"{who(role, path)}: the motion module has {layers} layers per block but the base UNet "
                         f"({base}) has {unet_layers}; {fix}")


def check_against_decoder(expert, decoder) -> None:
    """Every expert must denoise latents of the decoder's VAE: same channel count, same scaling factor."""
    name = who(expert.name, expert.source)
    if expert.latent_channels != decoder.latent_channels:
        raise ValueError(
            f"{name}: its UNet takes {expert.latent_channels} latent channels (unet.config.in_channels) but the "
            f"VAE that decodes the video has {decoder.latent_channels}; all experts must share the SD 1.5 "
            f"4-channel latent space: use a model of that family for this role")
    if abs(expert.latent_scaling - decoder.scaling_factor) > 1e-6:
        raise ValueError(
            f"{name}: its VAE scales latents by {expert.latent_scaling} but the decoding VAE by "
            f"{decoder.scaling_factor}; the experts then see latents of different magnitude: use experts whose "
            f"vae/config.json scaling_factor agree (SD 1.5 family: 0.18215)")


def validate_experts(experts: dict, decoder) -> None:
    """Cross-expert checks for a loaded set (``None`` entries, e.g. no temporal expert, are skipped)."""
    for expert in experts.values():
        if expert is not None:
            check_against_decoder(expert, decoder)
