"""diffusers UNets as :class:`confiner_core.experts.Expert` s.

The families differ in the layout the UNet takes, in how many rows of text embeddings it wants per conditioning
(diffusers-notes §3) and in extra conditioning (SDXL):

=====================  ====================  =========  =============================================
UNet class             family                layout     conditioning
=====================  ====================  =========  =============================================
UNet2DConditionModel   SD 1.5, per frame     frames     [B·F, L, D] (one row per frame)
UNet2DConditionModel   SDXL, per frame       frames     [B·F, L, D] + pooled text embeds and time ids
UNetMotionModel        AnimateDiff(-Light.)  video      [B·F, L, D] (repeated per frame)
UNet3DConditionModel   ModelScope T2V        video      [B, L, D] (repeated inside)
=====================  ====================  =========  =============================================

Which class a model gets is decided once, by its family (:mod:`.families`). Classifier-free guidance batches all
conditionings into one UNet call, so one evaluation costs one forward.
"""

from __future__ import annotations

import torch

from .. import layout as L
from ..experts import Expert
from ..latent_spaces import SD15, SDXL, LatentSpace
from ..sampling import host_to_device
from ..schedules import NoiseSchedule, from_diffusers_config


def placement(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """A network's device and compute dtype as diffusers' ``ModelMixin.device`` and ``.dtype`` define them: the
    first parameter's device, and the dtype of the first floating-point parameter outside the model's
    ``_keep_in_fp32_modules``. Those properties first walk every submodule for offloading and layerwise-casting
    hooks (the pack uses neither): 3.9 / 9.3 / 11.6 ms to read both off a full-size SD / AnimateDiff / ModelScope
    UNet on a 2-core CPU, and every evaluation read them twice."""
    keep = getattr(module, "_keep_in_fp32_modules", None) or ()
    device = last = None
    for name, param in module.named_parameters():
        if device is None:
            device = param.device
        last = param.dtype
        if param.is_floating_point() and not any(k in name for k in keep):
            return device, param.dtype
    return device, last


class DiffusersExpert(Expert):
    """A diffusers UNet with its own text encoder and scheduler config, in ``latent_space``.

    ``forward`` casts the latent to the UNet's device and dtype and returns float32 on the caller's device, so
    fp16 experts on a GPU slot into the core's float32 maths. ``source`` records where the weights came from."""

    family = "diffusers"

    def __init__(self, unet, prompt_encoder, scheduler_config: dict, name: str = "expert", source: str = "",
                 latent_space: LatentSpace = SD15):
        self.unet = unet.eval()
        self.prompt_encoder = prompt_encoder
        self.scheduler_config = dict(scheduler_config)
        self.name = name
        self.source = source
        self.schedule: NoiseSchedule = from_diffusers_config(self.scheduler_config, name=f"{name} ({self.family})")
        self.prediction = self.scheduler_config.get("prediction_type", "epsilon")
        self.latent_space = latent_space

    @property
    def networks(self) -> list:
        """The modules speed settings apply to: the UNet and the prompt encoder's (CLIP) text encoders."""
        return [self.unet, *getattr(self.prompt_encoder, "networks", ())]

    def encode(self, prompt: str):
        return self.prompt_encoder(prompt)

    def encode_all(self, prompts: list[str]) -> list:
        return self.prompt_encoder.encode_all(prompts)

    def context_rows(self, x: torch.Tensor) -> int:
        """Rows of ``encoder_hidden_states`` the UNet expects for one conditioning of latent ``x``."""
        return x.shape[0]

    def unet_inputs(self, conds: list, rows: int, x: torch.Tensor) -> dict:
        """The UNet's conditioning keywords for ``conds`` batched, each repeated to ``rows`` rows."""
        device, dtype = placement(self.unet)
        return {"encoder_hidden_states": torch.cat([_repeat_rows(c, rows) for c in conds]).to(device, dtype)}

    def forwards_per_call(self, n_conds: int) -> int:
        return 1

    @torch.no_grad()  # not inference_mode: its tensors cannot be modified in place by the core afterwards
    def forward(self, x: torch.Tensor, t: float, conds: list) -> list[torch.Tensor]:
        device, dtype = placement(self.unet)
        sample = x.to(device, dtype).repeat(len(conds), *([1] * (x.ndim - 1)))
        inputs = self.unet_inputs(conds, self.context_rows(x), x)
        timestep = host_to_device(torch.tensor(float(t), dtype=torch.float32), device)
        out = self.unet(sample, timestep, **inputs, return_dict=False)[0]
        return [o.to(x.device, torch.float32) for o in out.chunk(len(conds))]

    def describe(self) -> dict:
        return {**super().describe(), "family": self.family, "source": self.source,
                "unet": type(self.unet).__name__, "dtype": str(self.unet.dtype).removeprefix("torch."),
                "text_width": self.prompt_encoder.width}


def _repeat_rows(cond: torch.Tensor, rows: int) -> torch.Tensor:
    """[b, ...] -> [rows, ...], each of the b prompts repeated for its consecutive rows (its frames)."""
    if rows % cond.shape[0]:
        raise ValueError(f"a conditioning batch of {cond.shape[0]} does not divide the {rows} rows the UNet needs")
    return cond.repeat_interleave(rows // cond.shape[0], dim=0)


class FrameExpert(DiffusersExpert):
    """SD 1.5 ``UNet2DConditionModel`` applied to every frame: a frame batch [B·F, C, h, w]."""

    family = "sd15-frames"
    layout = L.FRAMES


class SDXLExpert(FrameExpert):
    """SDXL ``UNet2DConditionModel`` per frame. Besides the text embeddings it takes the pooled text embedding
    and six "time ids" (original size, crop corner, target size; ``StableDiffusionXLPipeline`` defaults: the
    output size, no crop), so the output size is read off the latent through the space's spatial factor."""

    family = "sdxl-frames"
    default_guidance = 5.0   # StableDiffusionXLPipeline's guidance_scale

    def __init__(self, unet, prompt_encoder, scheduler_config: dict, name: str = "expert", source: str = "",
                 latent_space: LatentSpace = SDXL):   # (one built by hand took SD 1.5's space, the base default)
        super().__init__(unet, prompt_encoder, scheduler_config, name, source, latent_space)

    def unet_inputs(self, conds: list, rows: int, x: torch.Tensor) -> dict:
        device, dtype = placement(self.unet)
        height, width = (n * self.latent_space.spatial_factor for n in x.shape[-2:])
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device)
        return {"encoder_hidden_states": torch.cat([_repeat_rows(c.embeds, rows) for c in conds]).to(device, dtype),
                "added_cond_kwargs": {
                    "text_embeds": torch.cat([_repeat_rows(c.pooled, rows) for c in conds]).to(device, dtype),
                    "time_ids": time_ids.expand(rows * len(conds), -1)}}


class MotionExpert(DiffusersExpert):
    """AnimateDiff ``UNetMotionModel``: [B, C, F, h, w], embeddings repeated per frame; at most
    ``motion_max_seq_length`` frames (the length of its positional encodings)."""

    family = "animatediff"
    layout = L.VIDEO

    def __init__(self, unet, *args, base: str | None = None, **kwargs):
        super().__init__(unet, *args, **kwargs)
        self.max_frames = int(unet.config.motion_max_seq_length)
        self.base = base   # a motion module's SD 1.5 model (its 2-D weights, text encoder and VAE); None: a pipeline

    def describe(self) -> dict:
        return {**super().describe(), **({"base": self.base} if self.base else {})}

    def context_rows(self, x: torch.Tensor) -> int:
        return x.shape[0] * x.shape[2]


class UNet3DExpert(DiffusersExpert):
    """ModelScope ``UNet3DConditionModel``: [B, C, F, h, w], one embedding row per video."""

    family = "modelscope-t2v"
    layout = L.VIDEO
