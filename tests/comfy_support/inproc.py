"""Helpers that run *inside* a booted harness process (call them through
``ComfyWorker.call("comfy_support.inproc:<name>", ...)``). They return JSON-able data."""

from __future__ import annotations

from typing import Optional


def registered_nodes(prefix: Optional[str] = None) -> dict:
    """``{node_id: {"display_name", "module", "is_v3"}}`` of registered nodes (optionally
    only ids starting with ``prefix``)."""
    import nodes

    try:
        from comfy_api.internal import _ComfyNodeInternal  # type: ignore
    except Exception:  # noqa: BLE001
        _ComfyNodeInternal = None
    out = {}
    for nid, cls in nodes.NODE_CLASS_MAPPINGS.items():
        if prefix and not nid.startswith(prefix):
            continue
        out[nid] = {
            "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(nid),
            "module": getattr(cls, "RELATIVE_PYTHON_MODULE", None),
            "is_v3": bool(_ComfyNodeInternal and isinstance(cls, type) and issubclass(cls, _ComfyNodeInternal)),
        }
    return out


def checkpoint_summary(ckpt_name: str) -> dict:
    """Load a checkpoint with ``CheckpointLoaderSimple`` and describe what ComfyUI detected;
    also runs CLIPTextEncode and a VAE encode/decode round trip on a 64x64 image."""
    import torch

    import comfy.model_management as mm
    import nodes

    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt_name)[:3]
    base = model.model
    ms = model.get_model_object("model_sampling")
    info = {
        "model_config": type(base.model_config).__name__,
        "model_type": getattr(base.model_type, "name", str(base.model_type)),
        "unet_config": {k: v for k, v in base.model_config.unet_config.items() if isinstance(v, (int, float, str, bool, list, type(None)))},
        "latent_format": type(base.latent_format).__name__,
        "sampling_class": [c.__name__ for c in type(ms).__mro__[1:3]],
        "sigma_max": float(ms.sigma_max),
        "sigma_min": float(ms.sigma_min),
        "clip": clip is not None,
        "vae": type(vae.first_stage_model).__name__ if vae is not None else None,
        "vae_latent_channels": getattr(vae, "latent_channels", None),
        "vae_downscale_ratio": getattr(vae, "downscale_ratio", None),
    }
    if clip is not None:
        cond = nodes.CLIPTextEncode().encode(clip, "a test prompt")[0]
        info["cond_shape"] = list(cond[0][0].shape)
        info["cond_finite"] = bool(torch.isfinite(cond[0][0]).all())
    if vae is not None:
        img = torch.rand(1, 64, 64, 3)
        lat = vae.encode(img)
        dec = vae.decode(lat)
        info["vae_latent_shape"] = list(lat.shape)
        info["vae_decoded_shape"] = list(dec.shape)
        info["vae_finite"] = bool(torch.isfinite(dec).all())
    del model, clip, vae
    mm.unload_all_models()
    return info


def output_files(result_outputs: dict) -> list:
    """Absolute paths (and PIL sizes) of the image files listed in a run's ``outputs``."""
    import os

    import folder_paths
    from PIL import Image

    files = []
    for node_out in result_outputs.values():
        for img in node_out.get("images", []):
            base = {"output": folder_paths.get_output_directory(), "temp": folder_paths.get_temp_directory(),
                    "input": folder_paths.get_input_directory()}[img.get("type", "output")]
            path = os.path.join(base, img.get("subfolder", ""), img["filename"])
            size = None
            if os.path.isfile(path):
                with Image.open(path) as im:
                    size = list(im.size)
            files.append({"path": path, "exists": os.path.isfile(path), "size": size})
    return files
