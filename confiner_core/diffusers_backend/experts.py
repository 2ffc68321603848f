"""diffusers UNets as :class:`confiner_core.experts.Expert` s.

The three families differ only in the layout the UNet takes and in how many rows of text embeddings it wants
per conditioning (diffusers-notes §3):

=====================  ====================  =========  ================================
UNet class             family                layout     encoder_hidden_states
=====================  ====================  =========  ================================
UNet2DConditionModel   SD 1.5, per frame     frames     [B·F, L, D] (one row per frame)
UNetMotionModel        AnimateDiff(-Light.)  video      [B·F, L, D] (repeated per frame)
UNet3DConditionModel   ModelScope T2V        video      [B, L, D] (repeated inside)
=====================  ====================  =========  ================================

Classifier-free guidance batches all conditionings into one UNet call, so one evaluation costs one forward.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel

from .. import layout as L
from ..experts import Expert
from ..latent_spaces import SD15, LatentSpace
from ..schedules import NoiseSchedule, from_diffusers_config
from .text import PromptEncoder

SD_LATENT_SCALING = 0.18215


def latent_space_of(channels: int, scaling_factor: float) -> LatentSpace:
    """The core's latent space: SD 1.5, AnimateDiff and ModelScope all live in SD's VAE latent space."""
    if channels == 4 and abs(scaling_factor - SD_LATENT_SCALING) < 1e-6:
        return SD15
    return LatentSpace(f"vae-{channels}ch-x{scaling_factor:g}", channels, 8, scale=scaling_factor)


class DiffusersExpert(Expert):
    """A diffusers UNet with its own text encoder and scheduler config.

    ``forward`` casts the latent to the UNet's device and dtype and returns float32 on the caller's device, so
    fp16 experts on a GPU slot into the core's float32 maths. ``source`` records where the weights came from."""

    family = "diffusers"
    unet_class: type = torch.nn.Module

    def __init__(self, unet, prompt_encoder: PromptEncoder, scheduler_config: dict, name: str = "expert",
                 source: str = "", latent_scaling: float = SD_LATENT_SCALING):
        self.unet = unet.eval()
        self.prompt_encoder = prompt_encoder
        self.scheduler_config = dict(scheduler_config)
        self.name = name
        self.source = source
        self.schedule: NoiseSchedule = from_diffusers_config(self.scheduler_config, name=f"{name} ({self.family})")
        self.prediction = self.scheduler_config.get("prediction_type", "epsilon")
        self.latent_scaling = float(latent_scaling)
        self.latent_space = latent_space_of(int(unet.config.in_channels), self.latent_scaling)

    def encode(self, prompt: str) -> torch.Tensor:
        return self.prompt_encoder(prompt)

    def context_rows(self, x: torch.Tensor) -> int:
        """Rows of ``encoder_hidden_states`` the UNet expects for one conditioning of latent ``x``."""
        return x.shape[0]

    def forwards_per_call(self, n_conds: int) -> int:
        return 1

    @torch.no_grad()  # not inference_mode: its tensors cannot be modified in place by the core afterwards
    def forward(self, x: torch.Tensor, t: float, conds: list) -> list[torch.Tensor]:
        device, dtype = self.unet.device, self.unet.dtype
        rows = self.context_rows(x)
        sample = x.to(device, dtype).repeat(len(conds), *([1] * (x.ndim - 1)))
        context = torch.cat([_repeat_rows(c, rows) for c in conds]).to(device, dtype)
        timestep = torch.tensor(float(t), dtype=torch.float32)
        if device.type == "cuda":  # a pageable scalar copy would stall the host until the GPU is idle
            timestep = timestep.pin_memory()
        timestep = timestep.to(device, non_blocking=True)
        out = self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]
        return [o.to(x.device, torch.float32) for o in out.chunk(len(conds))]

    def describe(self) -> dict:
        return {**super().describe(), "family": self.family, "source": self.source,
                "unet": type(self.unet).__name__, "text_width": self.prompt_encoder.width}


def _repeat_rows(cond: torch.Tensor, rows: int) -> torch.Tensor:
    """[b, L, D] -> [rows, L, D], each of the b prompts repeated for its consecutive rows (its frames)."""
    if rows % cond.shape[0]:
        raise ValueError(f"a conditioning batch of {cond.shape[0]} does not divide the {rows} rows the UNet needs")
    return cond.repeat_interleave(rows // cond.shape[0], dim=0)


class FrameExpert(DiffusersExpert):
    """SD 1.5 ``UNet2DConditionModel`` applied to every frame: a frame batch [B·F, C, h, w]."""

    family = "sd15-frames"
    unet_class = UNet2DConditionModel
    layout = L.FRAMES


class MotionExpert(DiffusersExpert):
    """AnimateDiff ``UNetMotionModel``: [B, C, F, h, w], embeddings repeated per frame; at most
    ``motion_max_seq_length`` frames (the length of its positional encodings)."""

    family = "animatediff"
    unet_class = UNetMotionModel
    layout = L.VIDEO

    def __init__(self, unet, *args, **kwargs):
        super().__init__(unet, *args, **kwargs)
        self.max_frames = int(unet.config.motion_max_seq_length)

    def context_rows(self, x: torch.Tensor) -> int:
        return x.shape[0] * x.shape[2]


class UNet3DExpert(DiffusersExpert):
    """ModelScope ``UNet3DConditionModel``: [B, C, F, h, w], one embedding row per video."""

    family = "modelscope-t2v"
    unet_class = UNet3DConditionModel
    layout = L.VIDEO


EXPERT_CLASSES = (FrameExpert, MotionExpert, UNet3DExpert)


def expert_for(unet, *args, **kwargs) -> DiffusersExpert:
    """The expert class that matches the UNet's class."""
    for cls in EXPERT_CLASSES:
        if isinstance(unet, cls.unet_class):
            return cls(unet, *args, **kwargs)
    raise TypeError(f"{type(unet).__name__} is not a supported UNet; supported: "
                    f"{[c.unet_class.__name__ for c in EXPERT_CLASSES]}")
