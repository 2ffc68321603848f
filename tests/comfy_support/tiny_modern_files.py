"""Tiny random-weight single files of Wan 2.1, Wan 2.2 A14B (high and low noise), Qwen-Image, the Wan 2.1 VAE, UMT5
and Qwen2.5-VL, and of Flux.1-dev (DiT, VAE, T5-XXL and CLIP-L), for ComfyUI's own UNETLoader / VAELoader /
CLIPLoader / DualCLIPLoader in the host tests (test-only code).

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
* Flux.1 (``model_detection``: 24 heads of 128, whose rotary axes [16, 56, 56] fix the head width at 128): 1 head
  (``supported_models.Flux.unet_extra_config``), so the file's width is 128; ComfyUI 0.3.64 also hard-codes the width
  (3072) and the text width (4096), which 0.8.x reads from ``txt_in``: set there too. The file has ``guidance_in``
  (Flux.1-dev's distilled guidance), 1 double and 1 single block;
* the Flux VAE (``ae.safetensors`` layout: ``encoder.*`` / ``decoder.*``, no quant convs; ``comfy.sd.VAE`` fixes its
  width at 128): width 32 for 16-channel VAEs of that class (``diffusionmodules.model.Encoder`` / ``Decoder``);
* T5-XXL (``t5_config_xxl.json``): 2 layers of width 64 (Flux reads its text width from the file), d_ff 8, 2 heads x
  4, the real 32128-token vocabulary (ComfyUI's bundled tokenizer), block 23's ``wi_1`` as the detection marker;
* CLIP-L inside Flux's text encoder only (``text_encoders.flux.FluxClipModel``; the SD 1.5 checkpoint's CLIP-L keeps
  ``sd1_clip_config.json``): 2 layers of width 32, the real vocabulary; its pooled output is the file's
  ``vector_in`` width.

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

RECIPE_VERSION = 2
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
FLUX_DIT = {"hidden_size": 128, "num_heads": 1, "depth": 1, "depth_single_blocks": 1}
FLUX_VAE_WIDTH = 32      # GroupNorm's 32 groups: a multiple of 32
T5 = {"d_ff": 8, "d_kv": 4, "d_model": 64, "dense_act_fn": "gelu_pytorch_tanh", "is_gated_act": True,
      "layer_norm_epsilon": 1e-6, "model_type": "t5", "num_heads": 2, "num_layers": 2,
      "relative_attention_num_buckets": 32, "vocab_size": 32128}
CLIP_L = {"hidden_size": 32, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2,
          "projection_dim": 32}

# file name -> (models folder, builder name, seed)
FILES = {
    "confiner-tiny-wan2.1-t2v.safetensors": ("diffusion_models", "wan_dit", 1),
    "confiner-tiny-wan2.2-t2v-a14b-high-noise.safetensors": ("diffusion_models", "wan_dit", 2),
    "confiner-tiny-wan2.2-t2v-a14b-low-noise.safetensors": ("diffusion_models", "wan_dit", 3),
    "confiner-tiny-qwen-image.safetensors": ("diffusion_models", "qwen_image", 4),
    "confiner-tiny-wan2.1-vae.safetensors": ("vae", "wan_vae", 5),
    "confiner-tiny-umt5-xxl.safetensors": ("text_encoders", "umt5", 6),
    "confiner-tiny-qwen2.5-vl-7b.safetensors": ("text_encoders", "qwen_vl", 7),
    "confiner-tiny-flux1-dev.safetensors": ("diffusion_models", "flux_dit", 8),
    "confiner-tiny-flux-ae.safetensors": ("vae", "flux_vae", 9),
    "confiner-tiny-t5-xxl.safetensors": ("text_encoders", "t5xxl", 10),
    "confiner-tiny-clip-l.safetensors": ("text_encoders", "clip_l", 11),
}
_UMT5_FILE = "umt5_config_xxl.json"
_T5_FILE = "t5_config_xxl.json"
_IN_FLUX_CLIP = [0]   # > 0 while ComfyUI builds Flux's text encoder (its CLIP-L is then the tiny one)
_SHRUNK = False


def shrink() -> dict:
    """Replace the size constants ComfyUI hard-codes for these families with the tiny ones (idempotent). Returns
    what was changed."""
    global _SHRUNK
    import comfy.ldm.modules.diffusionmodules.model
    import comfy.ldm.wan.vae
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.text_encoders.flux
    import comfy.text_encoders.llama
    import comfy.text_encoders.qwen_vl

    changed = {"umt5": dict(UMT5), "qwen_image": dict(QWEN_IMAGE), "qwen25_vl": dict(QWEN_VL),
               "qwen_vision": dict(QWEN_VISION), "flux": flux_extra_config(), "flux_vae_width": FLUX_VAE_WIDTH,
               "t5xxl": dict(T5), "flux_clip_l": dict(CLIP_L)}
    if not _wan_vae_width_from_file():
        changed["wan_vae_dim"] = WAN_VAE_DIM
    if _SHRUNK:
        return changed

    clip_init = comfy.sd1_clip.SDClipModel.__init__

    def tiny_text_encoders(self, *args, textmodel_json_config=None, **kwargs):
        name = os.path.basename(textmodel_json_config) if isinstance(textmodel_json_config, str) else None
        if name == _UMT5_FILE:
            textmodel_json_config = dict(UMT5)
        elif name == _T5_FILE:
            textmodel_json_config = dict(T5)
        elif textmodel_json_config is None and _IN_FLUX_CLIP[0]:
            textmodel_json_config = clip_l_config()
        clip_init(self, *args, textmodel_json_config=textmodel_json_config, **kwargs)

    comfy.sd1_clip.SDClipModel.__init__ = tiny_text_encoders

    flux_clip_init = comfy.text_encoders.flux.FluxClipModel.__init__

    def tiny_flux_clip(self, *args, **kwargs):
        _IN_FLUX_CLIP[0] += 1
        try:
            flux_clip_init(self, *args, **kwargs)
        finally:
            _IN_FLUX_CLIP[0] -= 1

    comfy.text_encoders.flux.FluxClipModel.__init__ = tiny_flux_clip
    comfy.supported_models.QwenImage.unet_extra_config = dict(QWEN_IMAGE)
    comfy.supported_models.Flux.unet_extra_config = flux_extra_config()

    model = comfy.ldm.modules.diffusionmodules.model
    for cls_name in ("Encoder", "Decoder"):
        base_cls = getattr(model, cls_name)

        def tiny_init(self, *args, ch, z_channels, _base=base_cls, **kwargs):
            # ComfyUI's 16-channel KL VAE (Flux's ae.safetensors, SD3's) at width 128, read nowhere from the file
            ch = FLUX_VAE_WIDTH if (ch, z_channels) == (128, 16) else ch
            _base.__init__(self, *args, ch=ch, z_channels=z_channels, **kwargs)

        setattr(model, cls_name, type(cls_name, (base_cls,), {"__init__": tiny_init}))

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


def flux_extra_config() -> dict:
    """What Flux's model config sets over detection: the head count, and on ComfyUI 0.3.64 (which hard-codes them)
    the width and the text width."""
    import inspect

    import comfy.model_detection

    extra = {"num_heads": FLUX_DIT["num_heads"]}
    if "txt_in.weight" not in inspect.getsource(comfy.model_detection.detect_unet_config):
        extra.update(hidden_size=FLUX_DIT["hidden_size"], context_in_dim=T5["d_model"])
    return extra


def clip_l_config() -> dict:
    """ComfyUI's CLIP-L config (``sd1_clip_config.json``) at the tiny sizes."""
    import json

    import comfy.sd1_clip

    path = Path(comfy.sd1_clip.__file__).with_name("sd1_clip_config.json")
    return {**json.loads(path.read_text()), **CLIP_L}


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


def flux_dit(seed: int) -> dict:
    """Flux.1-dev's DiT (``comfy.ldm.flux.model.Flux``) as ComfyUI's detection configures it, at the tiny sizes."""
    import dataclasses

    import torch
    from comfy.ldm.flux.model import Flux, FluxParams

    config = {"in_channels": 16, "out_channels": 16, "vec_in_dim": CLIP_L["hidden_size"],
              "context_in_dim": T5["d_model"], "mlp_ratio": 4.0, "axes_dim": [16, 56, 56], "theta": 10000,
              "patch_size": 2, "qkv_bias": True, "guidance_embed": True, "txt_ids_dims": [], **FLUX_DIT}
    fields = {f.name for f in dataclasses.fields(FluxParams)}
    return _randomise(Flux(image_model="flux", device="cpu", dtype=torch.float32, operations=_ops(),
                           **{k: v for k, v in config.items() if k in fields}), seed)


def flux_vae(seed: int) -> dict:
    """Flux's VAE as ``comfy.sd.VAE`` builds it for an ``ae.safetensors`` (16 latent channels, no quant convs)."""
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": FLUX_VAE_WIDTH, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                "dropout": 0.0}
    model = "comfy.ldm.modules.diffusionmodules.model."
    return _randomise(AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": model + "Encoder", "params": ddconfig},
        decoder_config={"target": model + "Decoder", "params": ddconfig}), seed)


def t5xxl(seed: int) -> dict:
    import torch
    from comfy.text_encoders.t5 import T5 as T5Model

    sd = _randomise(T5Model(dict(T5), torch.float32, "cpu", _ops()), seed)
    sd["encoder.block.23.layer.1.DenseReluDense.wi_1.weight"] = torch.zeros(T5["d_ff"], 4096)  # detection marker
    return sd


def clip_l(seed: int) -> dict:
    """CLIP-L as ``synthetic_checkpoint`` builds it (ComfyUI's ``CLIPTextModel`` from its config), at the tiny
    sizes; keys as in a ``clip_l.safetensors`` (``text_model.*``, ``text_projection.weight``)."""
    import torch

    import comfy.clip_model

    return _randomise(comfy.clip_model.CLIPTextModel(clip_l_config(), torch.float32, "cpu", _ops()), seed)


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
