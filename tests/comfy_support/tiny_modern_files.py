"""Tiny random-weight single files of Wan 2.1, Wan 2.2 A14B (high and low noise), Qwen-Image, the Wan 2.1 VAE, UMT5
and Qwen2.5-VL, for ComfyUI's own UNETLoader / VAELoader / CLIPLoader in the host tests (test-only code).

ComfyUI detects every file from its keys, unmodified (modern-families.md §2): the Wan DiT and (in 0.8.x) the Wan VAE
read their sizes from the state dict, so those files are simply small. A few sizes are fixed in ComfyUI's code;
:func:`shrink` changes exactly those constants in the process that loads the files (detection, model classes, latent
formats, samplers and nodes stay ComfyUI's own):

* UMT5-XXL (``umt5_config_xxl.json``): 2 layers of width 4096 (the Wan DiT's text width is not read from its file),
  d_ff 8, 2 heads x 4, a 256-piece vocabulary (the file carries its SentencePiece model, as real UMT5 files do for
  ComfyUI) and block 23's ``wi_1`` as the detection marker (ignored on load);
* the Qwen-Image DiT's width (``supported_models.QwenImage``): 1 head x 128, text width 64;
* Qwen2.5-VL-7B (``llama.Qwen25_7BVLI_Config`` and its vision tower): hidden 64, 2 layers, 4 (KV) heads x 128 (the
  detection key's 512 rows), the real 152064-token vocabulary (ComfyUI's bundled tokenizer); vision 1 layer x 32;
* ComfyUI 0.3.64 only: the Wan 2.1 VAE's width (96 in its code; 0.8.x reads it from the file).

Files are built inside a booted worker (ComfyUI's own module classes, so keys and shapes are what its loaders expect),
randomised deterministically like ``synthetic_checkpoint`` (``randn / sqrt(fan_in)``, norms 1, biases 0), saved
fp32 once per ComfyUI version under ``$CONFINER_TEST_CACHE`` (default ``~/.cache/confiner-tests``) ``/modern-r<N>/
<version>/<models folder>/``, and registered with ``folder_paths``. Use :func:`install` (through
``ComfyWorker.call``) from a test module's fixture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

RECIPE_VERSION = 1
UMT5_VOCAB = 256         # >= the SentencePiece model's pieces (tiny_tokenizers.umt5_spiece_model)
UMT5 = {"d_ff": 8, "d_kv": 4, "d_model": 4096, "dense_act_fn": "gelu_pytorch_tanh", "is_gated_act": True,
        "layer_norm_epsilon": 1e-6, "model_type": "umt5", "num_heads": 2, "num_layers": 2,
        "relative_attention_num_buckets": 32, "vocab_size": UMT5_VOCAB}
WAN_DIT = {"dim": 128, "ffn_dim": 128, "num_heads": 1, "num_layers": 2, "in_dim": 16, "out_dim": 16}
WAN_VAE_DIM = 8
QWEN_IMAGE = {"num_attention_heads": 1, "joint_attention_dim": 64}
QWEN_IMAGE_LAYERS = 1
QWEN_VL = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 4}
QWEN_VISION = {"hidden_size": 32, "intermediate_size": 32, "num_heads": 1, "num_layers": 1}

# file name -> (models folder, builder name, seed)
FILES = {
    "confiner-tiny-wan2.1-t2v.safetensors": ("diffusion_models", "wan_dit", 1),
    "confiner-tiny-wan2.2-t2v-a14b-high-noise.safetensors": ("diffusion_models", "wan_dit", 2),
    "confiner-tiny-wan2.2-t2v-a14b-low-noise.safetensors": ("diffusion_models", "wan_dit", 3),
    "confiner-tiny-qwen-image.safetensors": ("diffusion_models", "qwen_image", 4),
    "confiner-tiny-wan2.1-vae.safetensors": ("vae", "wan_vae", 5),
    "confiner-tiny-umt5-xxl.safetensors": ("text_encoders", "umt5", 6),
    "confiner-tiny-qwen2.5-vl-7b.safetensors": ("text_encoders", "qwen_vl", 7),
}
_UMT5_FILE = "umt5_config_xxl.json"
_SHRUNK = False


def shrink() -> dict:
    """Replace the size constants ComfyUI hard-codes for these families with the tiny ones (idempotent). Returns
    what was changed."""
    global _SHRUNK
    import comfy.ldm.wan.vae
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.text_encoders.llama
    import comfy.text_encoders.qwen_vl

    changed = {"umt5": dict(UMT5), "qwen_image": dict(QWEN_IMAGE), "qwen25_vl": dict(QWEN_VL),
               "qwen_vision": dict(QWEN_VISION)}
    if not _wan_vae_width_from_file():
        changed["wan_vae_dim"] = WAN_VAE_DIM
    if _SHRUNK:
        return changed

    clip_init = comfy.sd1_clip.SDClipModel.__init__

    def tiny_umt5(self, *args, textmodel_json_config=None, **kwargs):
        if isinstance(textmodel_json_config, str) and os.path.basename(textmodel_json_config) == _UMT5_FILE:
            textmodel_json_config = dict(UMT5)
        clip_init(self, *args, textmodel_json_config=textmodel_json_config, **kwargs)

    comfy.sd1_clip.SDClipModel.__init__ = tiny_umt5
    comfy.supported_models.QwenImage.unet_extra_config = dict(QWEN_IMAGE)

    base = comfy.text_encoders.llama.Qwen25_7BVLI_Config
    TinyConfig = dataclass(type("Qwen25_7BVLI_Config", (base,), {
        "__annotations__": {k: int for k in QWEN_VL}, **QWEN_VL}))
    comfy.text_encoders.llama.Qwen25_7BVLI_Config = TinyConfig

    vision = comfy.text_encoders.qwen_vl.Qwen2VLVisionTransformer

    class TinyVision(vision):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, **QWEN_VISION})

    comfy.text_encoders.qwen_vl.Qwen2VLVisionTransformer = TinyVision

    if "wan_vae_dim" in changed:
        wan_vae = comfy.ldm.wan.vae.WanVAE

        class TinyWanVAE(wan_vae):
            def __init__(self, dim=128, *args, **kwargs):
                super().__init__(WAN_VAE_DIM if dim == 96 else dim, *args, **kwargs)

        comfy.ldm.wan.vae.WanVAE = TinyWanVAE
    _SHRUNK = True
    return changed


def _wan_vae_width_from_file() -> bool:
    import inspect

    import comfy.sd

    return 'sd["decoder.head.0.gamma"]' in inspect.getsource(comfy.sd.VAE.__init__)


# --------------------------------------------------------------------------------------------------------------
# Builders (ComfyUI's module classes, after shrink)

def _randomise(module, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5))
            elif leaf == "bias":
                p.zero_()
            else:
                p.fill_(1.0)
    return {k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
            for k, v in module.state_dict().items()}


def _ops():
    import comfy.ops

    return comfy.ops.disable_weight_init


def wan_dit(seed: int) -> dict:
    import torch
    from comfy.ldm.wan.model import WanModel

    return _randomise(WanModel(model_type="t2v", text_dim=4096, device="cpu", dtype=torch.float32,
                               operations=_ops(), **WAN_DIT), seed)


def qwen_image(seed: int) -> dict:
    import torch
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    return _randomise(QwenImageTransformer2DModel(in_channels=64, num_layers=QWEN_IMAGE_LAYERS, image_model="qwen_image",
                                                  device="cpu", dtype=torch.float32, operations=_ops(),
                                                  **QWEN_IMAGE), seed)


def wan_vae(seed: int) -> dict:
    import comfy.ldm.wan.vae

    return _randomise(comfy.ldm.wan.vae.WanVAE(dim=WAN_VAE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                               attn_scales=[], temperal_downsample=[False, True, True]), seed)


def umt5(seed: int) -> dict:
    import torch
    from comfy.text_encoders.t5 import T5

    from tiny_tokenizers import umt5_spiece_model

    sd = _randomise(T5(dict(UMT5), torch.float32, "cpu", _ops()), seed)
    sd["encoder.block.23.layer.1.DenseReluDense.wi_1.weight"] = torch.zeros(UMT5["d_ff"], 4096)  # detection marker
    sd["spiece_model"] = torch.frombuffer(bytearray(umt5_spiece_model()), dtype=torch.uint8)
    return sd


def qwen_vl(seed: int) -> dict:
    import torch
    import comfy.text_encoders.llama

    return _randomise(comfy.text_encoders.llama.Qwen25_7BVLI({}, torch.float32, "cpu", _ops()), seed)


# --------------------------------------------------------------------------------------------------------------
# Cache and registration

def cache_dir() -> Path:
    import comfyui_version

    root = os.environ.get("CONFINER_TEST_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "confiner-tests"
    return base / f"modern-r{RECIPE_VERSION}" / comfyui_version.__version__


def build(directory: Path) -> None:
    from safetensors.torch import save_file

    for name, (folder, builder, seed) in FILES.items():
        path = directory / folder / name
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{name}.tmp{os.getpid()}")
        save_file(globals()[builder](seed), str(tmp), metadata={"description": "ConFiner tiny random-weight test model"})
        os.replace(tmp, path)


def install() -> dict:
    """Inside a booted worker: shrink, build the files if this ComfyUI version has none yet (file lock), register
    their folders. Returns {file name: models folder} and the constants changed."""
    import fcntl

    import folder_paths

    changed = shrink()
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            build(directory)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    for folder in {f for f, _, _ in FILES.values()}:
        folder_paths.add_model_folder_path(folder, str(directory / folder))
    return {"files": {name: folder for name, (folder, _, _) in FILES.items()}, "shrunk": changed,
            "directory": str(directory)}
