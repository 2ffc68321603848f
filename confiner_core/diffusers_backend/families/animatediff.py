"""AnimateDiff (v1-v3, AnimateDiff-Lightning): ``UNetMotionModel`` video experts for the control and temporal roles.

Kinds:

* ``animatediff`` -- a diffusers AnimateDiff pipeline folder: ``unet/`` is a ``UNetMotionModel``, or a
  ``UNet2DConditionModel`` with ``motion_adapter/``; its text encoder, scheduler and VAE are its own.
* ``motion-folder`` -- a diffusers ``MotionAdapter`` folder (``config.json`` + weights), put on an SD 1.5 base.
* ``motion-file`` -- a motion module ``.safetensors`` in the original AnimateDiff key layout or diffusers' (e.g.
  ``animatediff_lightning_4step_diffusers.safetensors``), put on an SD 1.5 base; its MotionAdapter config is read
  off the header's shapes (or given as ``motion_config``).

The base is ``base`` when that folder holds UNet weights, else the spatial expert's SD 1.5 model; a motion module
takes the base's text encoder, VAE and scheduler config. Scheduler (issue 12 item 8): a scheduler config shipped
in an AnimateDiff folder is used as it is; only a module without one (motion folders and files, which ship none,
or a folder lacking ``scheduler/``) gets AnimateDiff's training schedule, linear betas 0.00085 -> 0.012
(guoyww's inference configs, AnimateDiff-Lightning's model card), in place of the SD base's scaled_linear.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from ... import schedules as S
from ...latent_spaces import VIDEO_FPS
from ..experts import MotionExpert
from . import files, unet_folders as U
from .base import Context, Family, Inspection, with_class_defaults
from .sd15 import SD15, SD_FILE

if TYPE_CHECKING:   # diffusers is imported where weights load: checking a request's files needs none of it
    from diffusers import MotionAdapter

ANIMATEDIFF_FOLDER = "animatediff"
MOTION_FOLDER = "motion-folder"
MOTION_FILE = "motion-file"
#: AnimateDiff's training schedule, for motion modules that ship no scheduler config
ANIMATEDIFF_SCHEDULE = S.ANIMATEDIFF

_SD = SD15()


class _NoEmptyFloat32Notice(logging.Filter):
    """diffusers (0.42) warns that "modules ... should be kept in float32: []" whenever a model is cast to a dtype,
    also when the list is empty, as ``UNetMotionModel.from_unet2d`` does with every motion module: a notice about
    nothing, dropped. A non-empty list still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_NoEmptyFloat32Notice())


# ------------------------------------------------------------------------------------ motion-module configs

def infer_motion_config(state: dict) -> dict:
    """MotionAdapter config read off a diffusers-layout state dict, or a header (name -> anything with a
    ``shape``): channels from shapes, layers from key counts.

    Attention heads and norm groups leave no trace in the weights; MotionAdapter's defaults (8 heads, 32 groups)
    are those of every SD 1.5 AnimateDiff release (v1-v3, Lightning). Pass ``motion_config`` for anything else."""
    def count(prefix: str, field_index: int) -> int:
        return len({k.split(".")[field_index] for k in state if k.startswith(prefix)})

    blocks = count("down_blocks.", 1)
    config = {
        "block_out_channels": [state[f"down_blocks.{i}.motion_modules.0.proj_in.weight"].shape[0]
                               for i in range(blocks)],
        "motion_layers_per_block": count("down_blocks.0.motion_modules.", 3),
        "motion_transformer_layers_per_block": count("down_blocks.0.motion_modules.0.transformer_blocks.", 5),
        "use_motion_mid_block": any(k.startswith("mid_block.") for k in state),
    }
    if config["use_motion_mid_block"]:
        config["motion_mid_block_layers_per_block"] = count("mid_block.motion_modules.", 2)
        config["motion_transformer_layers_per_mid_block"] = count("mid_block.motion_modules.0.transformer_blocks.", 4)
    pe = next((v for k, v in state.items() if k.endswith(".pe")), None)
    if pe is not None:
        config["motion_max_seq_length"] = pe.shape[1]
    return config


def to_diffusers_layout(state: dict) -> tuple[dict, dict]:
    """(state in diffusers key layout, the positional tables) of a motion module in either layout."""
    positional = {k: v for k, v in state.items() if k.endswith(".pe")}   # sequence length of original files
    if any(".temporal_transformer." in k for k in state):
        from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

        state = convert_animatediff_checkpoint_to_diffusers(state)
    return state, positional


def given_motion_config(motion_config) -> dict:
    """A MotionAdapter config from ``motion_config`` (a folder holding config.json, or the json file)."""
    motion_config = Path(motion_config)
    file = motion_config / "config.json" if motion_config.is_dir() else motion_config
    if not file.is_file():
        raise FileNotFoundError(f"motion_config {motion_config} is neither a MotionAdapter config.json nor a folder "
                                f"holding one")
    return files.read_json(file, f"motion_config ({motion_config})")


def motion_file_config(path: Path, header: dict, motion_config, who: str) -> dict:
    """The MotionAdapter config of a motion-module file, checked against the header's names and shapes (an
    adapter built on the meta device, so no memory and no weights)."""
    from diffusers import MotionAdapter

    state, positional = to_diffusers_layout(header)
    config = given_motion_config(motion_config) if motion_config is not None else \
        infer_motion_config({**state, **positional})
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    fix = "pass motion_config=<folder with the module's MotionAdapter config.json>"
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in MotionAdapter.from_config(config).state_dict().items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{who}: no MotionAdapter can be built from config {config} ({e}); {fix}") from None
    missing = [k for k in expected if k not in state and not k.endswith(".pe")]   # positional tables are recomputed
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise ValueError(f"{who}: the motion module does not fit a MotionAdapter with config {config} (missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}, other shapes {wrong[:5]}); {fix}")
    return config


def load_motion_file(path, motion_config=None) -> MotionAdapter:
    """A motion module ``.safetensors`` in either key layout, as a MotionAdapter (on the CPU, float32)."""
    from diffusers import MotionAdapter

    path = Path(path)
    config = motion_file_config(path, files.read_header(path, str(path)), motion_config, str(path))
    state, _ = to_diffusers_layout(load_file(str(path)))
    adapter = MotionAdapter.from_config(config)
    adapter.load_state_dict(state, strict=False)   # checked above: only the recomputed .pe tables are missing
    return adapter.eval()


def motion_max_frames(config: dict, model_class: str) -> int:
    """The most frames a motion module attends over (its positional table), from a MotionAdapter or UNetMotionModel
    config; a config that leaves it out gets diffusers' ``model_class``'s own default, as loading it would."""
    value = config.get("motion_max_seq_length")
    if value is None:
        import diffusers   # only here: checking a request's files needs no diffusers import (seconds) otherwise

        value = inspect.signature(getattr(diffusers, model_class).__init__).parameters["motion_max_seq_length"].default
    return int(value)


def _per_block(value, blocks: int) -> list:
    return [value] * blocks if isinstance(value, int) else list(value)


def check_motion_adapter(who: str, adapter_config: dict, unet_config: dict, base) -> None:
    """A motion module only fits a 2D UNet with the same blocks, channels and layers per block."""
    fix = ("use a motion module made for this base (SD 1.5 AnimateDiff modules need an SD 1.5 base), or "
           "pass motion_config=<folder with the module's MotionAdapter config.json>")
    channels = list(adapter_config.get("block_out_channels", ()))
    unet_channels = list(unet_config.get("block_out_channels", ()))
    if channels != unet_channels:
        raise ValueError(f"{who}: the motion module has blocks with channels {channels} but the base UNet ({base}) "
                         f"has {unet_channels}; {fix}")
    layers = _per_block(adapter_config.get("motion_layers_per_block", 2), len(channels))
    unet_layers = _per_block(unet_config.get("layers_per_block", 2), len(channels))
    if layers != unet_layers:
        raise ValueError(f"{who}: the motion module has {layers} layers per block but the base UNet ({base}) has "
                         f"{unet_layers}; {fix}")


# ------------------------------------------------------------------------------------------------ the family

class AnimateDiff(Family):
    name = "animatediff"
    label = "AnimateDiff (pipeline, MotionAdapter or motion module)"
    fps = VIDEO_FPS["sd15"]   # (AnimateDiff-Evolved's and Video Helper Suite's default frame rate too)
    kinds = {ANIMATEDIFF_FOLDER: "a diffusers AnimateDiff pipeline folder",
             MOTION_FOLDER: "a diffusers MotionAdapter folder (put on the SD base)",
             MOTION_FILE: "an AnimateDiff motion-module .safetensors, original or diffusers key layout (put on the "
                          "SD base)"}
    roles = ("control", "temporal")

    def detect(self, path: Path) -> str | None:
        if path.is_dir():
            unet = U.unet_class_of(path)
            if unet == "UNetMotionModel" or (unet == "UNet2DConditionModel"
                                             and (path / "motion_adapter" / "config.json").is_file()):
                return ANIMATEDIFF_FOLDER
            return MOTION_FOLDER if files.class_name(path / "config.json") == "MotionAdapter" else None
        keys = files.peek_header(path)
        if any(".motion_modules." in k for k in keys) and not any(k.startswith("model.diffusion_model.") for k in keys):
            return MOTION_FILE
        return None

    def inspect(self, path: Path, kind: str, role: str, context: Context) -> Inspection:
        who = files.who(role, path)
        if kind == ANIMATEDIFF_FOLDER:
            facts = U.read_unet_folder(path, who, scheduler=False)
            U.check_text_width(who, U.text_width(facts["text_encoders"][0]), facts["unet"])
            if facts["unet"].get("_class_name") == "UNet2DConditionModel":
                adapter = files.read_json(path / "motion_adapter" / "config.json", who)
                files.read_folder_weights(path / "motion_adapter", who, "the motion adapter weights")
                check_motion_adapter(who, adapter, facts["unet"], path)
                facts["adapter"] = adapter
            space = U.space_of(who, facts["unet"], facts["vae"])
            limit = motion_max_frames(facts["adapter"], "MotionAdapter") if "adapter" in facts else \
                motion_max_frames(facts["unet"], "UNetMotionModel")
            return Inspection(self, kind, role, path, space, facts["has_vae"], facts, limit)
        if kind == MOTION_FOLDER:
            adapter = files.read_json(path / "config.json", who)
            files.read_folder_weights(path, who, "the motion adapter weights")
        else:
            adapter = motion_file_config(path, files.read_header(path, who), context.options.get("motion_config"),
                                         who)
        base = self.base_inspection(who, role, context)
        check_motion_adapter(who, adapter, base.facts["unet"], base.path)
        facts = {"adapter": adapter, "base": base}
        return Inspection(self, kind, role, path, base.latent_space, base.has_vae, facts,
                          motion_max_frames(adapter, "MotionAdapter"))

    def base_inspection(self, who: str, role: str, context: Context) -> Inspection:
        """The SD 1.5 model a motion module goes on: ``base`` when it holds UNet weights, else the spatial expert."""
        if context.base is not None and files.has_weights(context.base / "unet"):
            path = context.take_base()
        elif context.paths.get("spatial") is not None:
            path = context.paths["spatial"]
        else:
            raise ValueError(f"{who} is a motion module and needs an SD 1.5 model to go on: pass base=<diffusers SD "
                             f"1.5 folder with weights> or an SD 1.5 spatial expert")
        spatial = context.paths.get("spatial")
        spatial_file = spatial is not None and Path(spatial).is_file()
        kind = _SD.detect(path) if Path(path).exists() else None
        if kind is None:
            # a single-file spatial expert of another family takes base= for its own configs (SDXL), and one base
            # cannot serve both: each refusal alone pointed at the other's
            both = (f"; but the spatial expert's single file {spatial} is not SD 1.5 and takes base= for its own "
                    f"configs, and one base cannot serve both: give the spatial expert as a diffusers folder (base= "
                    f"is then the SD 1.5 folder), or the {role} expert as an AnimateDiff pipeline folder") \
                if spatial_file else ""
            raise ValueError(f"{who} is a motion module and goes on {path}, which is not an SD 1.5 model; pass "
                             f"base=<diffusers SD 1.5 folder with weights>{both}")
        if spatial_file and Path(path) == Path(spatial) and kind == SD_FILE and context.base is None:
            # the spatial file's own refusal, said of the motion module that goes on it (it named the control
            # expert as if the SD 1.5 file were the control expert's)
            raise ValueError(f"{who} is a motion module and goes on the spatial expert's single-file checkpoint "
                             f"{path}, which needs base=<local diffusers SD 1.5 folder> for its configs, tokenizer "
                             f"and scheduler (weights may be absent from that folder)")
        return _SD.inspect(Path(path), kind, role, context)

    def scheduler_config(self, inspection: Inspection, context: Context) -> dict:
        """A pipeline folder's own config, else AnimateDiff's training schedule; a motion module's base's config
        with AnimateDiff's betas over it (both unless the user's ``scheduler_overrides`` say otherwise)."""
        facts = inspection.facts
        if inspection.kind == ANIMATEDIFF_FOLDER:
            return context.scheduler_config(inspection.role, with_class_defaults(facts["scheduler"]) if
                                            facts["scheduler"] else ANIMATEDIFF_SCHEDULE)
        return context.scheduler_config(inspection.role, with_class_defaults(facts["base"].facts["scheduler"]),
                                        ANIMATEDIFF_SCHEDULE)

    # ------------------------------------------------------------------------------------------ loading

    def load(self, inspection: Inspection, context: Context) -> MotionExpert:
        from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

        path, facts = inspection.path, inspection.facts
        key = str(Path(path).resolve())
        if inspection.kind == ANIMATEDIFF_FOLDER:
            def folder_unet():
                unet = U.load_model(UNetMotionModel if "adapter" not in facts else UNet2DConditionModel, path,
                                    "unet", context.device, context.dtype)
                if "adapter" not in facts:
                    return unet
                adapter = MotionAdapter.from_pretrained(path, subfolder="motion_adapter", local_files_only=True,
                                                        use_safetensors=True)
                return UNetMotionModel.from_unet2d(unet, adapter).to(context.device).eval()

            unet = context.cached(("unet", key), folder_unet)
            encoder = U.load_prompt_encoder(path, context)
        else:
            base = _SD.parts(facts["base"], context)

            def motion_unet():
                if inspection.kind == MOTION_FOLDER:
                    adapter = MotionAdapter.from_pretrained(path, local_files_only=True, use_safetensors=True)
                else:
                    adapter = load_motion_file(path, context.options.get("motion_config"))
                # from_unet2d copies the 2D weights; the result is in the base UNet's dtype
                return UNetMotionModel.from_unet2d(base["unet"], adapter.eval()).to(context.device).eval()

            unet = context.cached(("motion-unet", key, str(Path(facts["base"].path).resolve())), motion_unet)
            encoder = base["prompt_encoder"]
        return MotionExpert(unet, encoder, self.scheduler_config(inspection, context), name=inspection.role,
                            source=str(path),
                            latent_space=inspection.latent_space,
                            base=None if inspection.kind == ANIMATEDIFF_FOLDER else str(facts["base"].path))

    def load_codec(self, inspection: Inspection, context: Context):
        if inspection.kind == ANIMATEDIFF_FOLDER:
            return U.load_vae_codec(inspection.path, inspection, context)
        return _SD.load_codec(inspection.facts["base"], context)
