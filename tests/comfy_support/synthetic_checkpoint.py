"""A small random-weight SD1.5-layout checkpoint for host integration tests.

Built from ComfyUI's own module classes (so every key and shape is what ComfyUI's loader
expects), randomised deterministically (``randn/sqrt(fan_in)`` for matrices/kernels,
norm weights = 1, biases = 0), saved as fp16 safetensors with *every* parameter present
(ComfyUI's ops skip weight init, so a missing key would be uninitialised memory).

``CheckpointLoaderSimple`` detects it as ``SD15`` (EPS, ``model_channels=320``,
``context_dim=768``) and returns MODEL, CLIP and VAE.

Recipes (``RECIPES``):

* ``"tiny"`` (default): UNet reduced to one resolution level (``channel_mult=[1]``, one
  res block and one transformer block per level, middle block kept), the **TAESD** VAE
  layout under ``first_stage_model.taesd_*`` (ComfyUI's ``comfy.sd.VAE`` selects TAESD
  from the key ``taesd_decoder.1.weight``; latent 4 channels, 8x down/up-scale, SD1.5
  latent format unchanged) and the full CLIP-L text encoder (its size is fixed by
  ``comfy/sd1_clip_config.json``).
* ``"sd15"``: the recipe from the host doc (§8): UNet ``channel_mult=[1,2]`` and the real
  SD ``AutoencoderKL`` (fixed ``ch=128, ch_mult=[1,2,4,4]``), ~630 MB.
* ``"sd15-full"``: SD 1.5's own UNet layout (860 M parameters), which AnimateDiff motion modules
  inject into, with the real VAE and CLIP: ~2.1 GB (``bench/comfy_benchmark.py``).

The file is cached outside the repository: ``$CONFINER_TEST_CACHE`` or
``~/.cache/confiner-tests`` / ``checkpoints/<name>.safetensors``; building happens once
(file lock + atomic rename, safe with parallel test processes).

CLI (needs a ComfyUI checkout)::

    python tests/comfy_support/synthetic_checkpoint.py --comfy /path/to/ComfyUI [--recipe tiny] [--force]
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ENV_CACHE = "CONFINER_TEST_CACHE"
RECIPE_VERSION = 1

_SD15_UNET_COMMON = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320,
    use_spatial_transformer=True, legacy=False, context_dim=768,
    use_linear_in_transformer=False, num_heads=8, num_head_channels=-1, adm_in_channels=None,
)

RECIPES = {
    "tiny": {
        "unet": dict(num_res_blocks=[1], channel_mult=[1], transformer_depth=[1],
                     transformer_depth_output=[1, 1], transformer_depth_middle=1),
        "vae": "taesd",
        "file": "confiner-tiny-sd15",
    },
    "sd15": {
        "unet": dict(num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1],
                     transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1),
        "vae": "kl",
        "file": "confiner-sd15",
    },
    "sd15-full": {  # SD 1.5 itself (860 M UNet): what AnimateDiff motion modules inject into; bench/comfy_benchmark.py
        "unet": dict(num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                     transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1),
        "vae": "kl",
        "file": "confiner-sd15-full",
    },
}
DEFAULT_RECIPE = "tiny"
_SD_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                    "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def cache_dir() -> Path:
    d = os.environ.get(ENV_CACHE)
    return Path(d).expanduser() if d else Path.home() / ".cache" / "confiner-tests"


def checkpoint_name(recipe: str = DEFAULT_RECIPE) -> str:
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {sorted(RECIPES)}")
    return f"{RECIPES[recipe]['file']}-r{RECIPE_VERSION}.safetensors"


def checkpoint_path(recipe: str = DEFAULT_RECIPE, cache: Optional[os.PathLike | str] = None) -> Path:
    return Path(cache or cache_dir()) / "checkpoints" / checkpoint_name(recipe)


# --------------------------------------------------------------------------------------
# Building (needs ComfyUI importable: call inside a booted harness process)
# --------------------------------------------------------------------------------------


def _randomise(module, generator) -> None:
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) / (fan_in ** 0.5))
            elif leaf == "bias" or name.endswith("vae_shift"):
                p.zero_()
            else:  # norm weights, scales, vae_scale
                p.fill_(1.0)
        for name, b in module.named_buffers():
            if b.is_floating_point():
                b.zero_()


def build_state_dict(recipe: str = DEFAULT_RECIPE, seed: int = 0) -> dict:
    """Build the fp16 state dict (ComfyUI must already be importable with --cpu)."""
    import torch

    import comfy.clip_model
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    spec = RECIPES[recipe]
    g = torch.Generator().manual_seed(seed)
    ops = comfy.ops.disable_weight_init
    sd: dict = {}

    def add(prefix, module):
        _randomise(module, g)
        for k, v in module.state_dict().items():
            sd[prefix + k] = v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()

    unet = UNetModel(**_SD15_UNET_COMMON, **spec["unet"], operations=ops, dtype=torch.float32, device="cpu")
    add("model.diffusion_model.", unet)
    del unet

    if spec["vae"] == "kl":
        from comfy.ldm.models.autoencoder import AutoencoderKL

        vae = AutoencoderKL(ddconfig=dict(_SD_VAE_DDCONFIG), embed_dim=4)
    else:
        from comfy.taesd.taesd import TAESD

        vae = TAESD(latent_channels=4)
    add("first_stage_model.", vae)
    del vae

    import comfy.sd1_clip  # noqa: F401  (location of sd1_clip_config.json)

    cfg_path = Path(comfy.sd1_clip.__file__).with_name("sd1_clip_config.json")
    config = json.loads(cfg_path.read_text())
    clip = comfy.clip_model.CLIPTextModel(config, torch.float32, "cpu", ops)
    add("cond_stage_model.transformer.", clip)
    del clip
    n_pos = config.get("max_position_embeddings", 77)
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n_pos, dtype=torch.int64).unsqueeze(0)
    return sd


def build_checkpoint(path: os.PathLike | str, recipe: str = DEFAULT_RECIPE, seed: int = 0) -> dict:
    """Build and atomically write the checkpoint; returns stats. ComfyUI must be importable."""
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    sd = build_state_dict(recipe, seed)
    t_build = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    n_params = {p: sum(v.numel() for k, v in sd.items() if k.startswith(p) and v.is_floating_point())
                for p in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")}
    meta = {"confiner_recipe": recipe, "confiner_recipe_version": str(RECIPE_VERSION), "confiner_seed": str(seed),
            "description": "random-weight SD1.5-layout test checkpoint (ConFiner tests)"}
    save_file(sd, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    stats = {
        "path": str(path), "recipe": recipe, "keys": len(sd), "bytes": path.stat().st_size,
        "params": {"unet": n_params["model.diffusion_model."], "vae": n_params["first_stage_model."],
                   "clip": n_params["cond_stage_model."]},
        "build_s": round(t_build - t0, 3), "total_s": round(time.perf_counter() - t0, 3),
    }
    path.with_name(path.name + ".json").write_text(json.dumps(stats, indent=1))
    return stats


# --------------------------------------------------------------------------------------
# Cached access (no torch/ComfyUI import in the caller)
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(lock_path: Path):
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_checkpoint(comfy_root: os.PathLike | str, recipe: str = DEFAULT_RECIPE,
                      cache: Optional[os.PathLike | str] = None, *, force: bool = False,
                      in_process: bool = False, timeout: float = 900) -> Path:
    """Path of the cached checkpoint, building it first if needed.

    By default the build runs in a subprocess (it must boot ComfyUI, which the calling
    pytest process must not do). ``in_process=True`` builds here (only inside a process
    where :func:`comfy_support.harness.boot` has run or may run).
    """
    path = checkpoint_path(recipe, cache)
    if path.is_file() and not force:
        return path
    with _file_lock(path.with_name(path.name + ".lock")):
        if path.is_file() and not force:
            return path
        if in_process:
            from comfy_support import harness

            if not harness.is_booted():
                harness.boot(comfy_root)
            build_checkpoint(path, recipe)
        else:
            tests_dir = str(Path(__file__).resolve().parent.parent)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([tests_dir] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
            cmd = [sys.executable, "-m", "comfy_support.synthetic_checkpoint", "--comfy", str(comfy_root),
                   "--recipe", recipe, "--out", str(path), "--no-lock"]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0 or not path.is_file():
                raise RuntimeError(f"building the synthetic checkpoint failed (rc={proc.returncode}):\n"
                                   f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return path


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (default $COMFYUI_PATH)")
    ap.add_argument("--recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES))
    ap.add_argument("--out", default=None, help="output file (default: the cache path)")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--no-lock", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not a.comfy:
        ap.error("--comfy or $COMFYUI_PATH is required")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from comfy_support import harness

    out = Path(a.out) if a.out else checkpoint_path(a.recipe)
    if out.is_file() and not a.force and not a.out:
        print(json.dumps({"path": str(out), "cached": True}))
        return 0
    t0 = time.perf_counter()
    harness.boot(a.comfy)
    t_boot = time.perf_counter() - t0
    lock = contextlib.nullcontext() if a.no_lock else _file_lock(out.with_name(out.name + ".lock"))
    with lock:
        stats = build_checkpoint(out, a.recipe)
    stats["boot_s"] = round(t_boot, 3)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
