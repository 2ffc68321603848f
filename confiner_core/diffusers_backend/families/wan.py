"""Wan 2.1 / Wan 2.2 (diffusers ``WanPipeline`` folders) as ConFiner experts, and the Wan VAE as a codec.

What a Wan folder gives (modern-families.md §3-6):

* **Transformer** (``WanTransformer3DModel``): rectified flow, ``u = eps - x0`` (prediction ``"flow"``), on latent
  videos ``[B, C, T, h, w]``. The core's timestep ``t`` (0..999) indexes :func:`~confiner_core.schedules.
  flow_schedule` with the model's shift, and the DiT is fed ``1000 * sigma`` of that shifted sigma, as diffusers'
  ``FlowMatchEulerDiscreteScheduler`` and ComfyUI feed it (diffusers' UniPC truncates it to an integer).
* **Shift**: the scheduler config's ``flow_shift`` (UniPC, as the Wan-AI repositories ship) or ``shift``
  (FlowMatchEuler), else :data:`DEFAULT_SHIFT`; a user's ``flow_shift`` option wins.
* **Wan 2.2 A14B**: ``transformer`` (high noise) and ``transformer_2`` (low noise) switched where the shifted sigma
  crosses ``boundary_ratio`` (diffusers compares ``t = 1000 sigma`` with ``1000 * boundary_ratio``): an
  :class:`~confiner_core.experts.ExpertPair`, with per-member guidance like ``guidance_scale``/``guidance_scale_2``.
* **Latent space** from ``vae/config.json``: 16 channels, 8x spatial, causal 4x temporal with the config's
  ``latents_mean/std`` (Wan 2.1 and A14B: :data:`~confiner_core.latent_spaces.WAN21`), or the TI2V-5B VAE's 48
  channels at 16x (:func:`~confiner_core.latent_spaces.wan22_space`). Frame counts are ``4k + 1``.
* **Text**: UMT5, padded to 512 tokens with the embeddings past the prompt zeroed (``WanPipeline.encode_prompt``).

As a spatial (image) expert a Wan transformer runs every latent frame as a one-frame video (layout ``frames``):
"latent frames" mode, in the Wan space itself; or "pixel frames" mode, in ``space.per_frame()`` with the codec
:func:`~confiner_core.latent_spaces.per_frame`, where each pixel frame is encoded alone (what the image model saw
in training; the chain bridges to it by decoding and re-encoding).
"""

from __future__ import annotations

import math

import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean

from ... import layout as L
from ...experts import Expert, ExpertPair
from ...latent_spaces import WAN21, Codec, LatentSpace, wan22_space
from ...schedules import NoiseSchedule, flow_schedule

#: shift when a folder's scheduler config names none: the Wan 2.1 / 2.2 reference code's T2V default
#: (``generate.py`` sample_shift 5.0; TI2V-5B and I2V-A14B 5.0). ComfyUI gives every Wan model 8.0, diffusers'
#: docstring 5.0 for 720p and 3.0 for 480p, and T2V-A14B's own config 12.0.
DEFAULT_SHIFT = 5.0
#: ``WanPipeline.__call__`` default ``max_sequence_length``: UMT5 embeddings are padded to this many tokens
MAX_SEQUENCE_LENGTH = 512

LATENT_FRAMES = "latent_frames"
PIXEL_FRAMES = "pixel_frames"
IMAGE_MODES = (LATENT_FRAMES, PIXEL_FRAMES)


# ----------------------------------------------------------------------------------------- latent space

def wan_latent_space(vae_config: dict) -> LatentSpace:
    """The latent space a Wan-style causal video VAE (``AutoencoderKLWan``, ``AutoencoderKLQwenImage``) makes,
    from its config: channels ``z_dim``, normalisation ``(z - latents_mean) / latents_std``, causal temporal
    factor 4, spatial factor 8 (16 with the Wan 2.2 VAE's 2x2 patchify). Wan 2.1's statistics give
    :data:`~confiner_core.latent_spaces.WAN21` itself, so Wan and Qwen-Image experts meet without a bridge."""
    channels = int(vae_config.get("z_dim", 16))
    mean, std = tuple(vae_config.get("latents_mean") or ()), tuple(vae_config.get("latents_std") or ())
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"the VAE config gives {len(mean)} latents_mean and {len(std)} latents_std values for "
                         f"{channels} channels (z_dim)")
    downsamples = len(vae_config.get("temperal_downsample", (False, True, True)))
    spatial = int(vae_config.get("scale_factor_spatial") or 2 ** downsamples)
    temporal = int(vae_config.get("scale_factor_temporal") or 4)
    if channels == 48 and spatial == 16 and temporal == 4:
        return wan22_space(mean, std)
    space = LatentSpace("wan2.1", channels, spatial, temporal, causal=True, shift=mean, std=std)
    return WAN21 if space == WAN21 else LatentSpace(f"wan-vae-{channels}ch-x{spatial}", channels, spatial,
                                                    temporal, causal=True, shift=mean, std=std)


class WanVAECodec(Codec):
    """A Wan-style causal video VAE (``AutoencoderKLWan``; ``AutoencoderKLQwenImage`` has the same calls) as a
    codec: pixels ``[B, 3, F, H, W]`` in [-1, 1] with ``F = 4k + 1`` <-> normalised latents ``[B, C, k + 1, h, w]``.

    The VAE itself is causal and chunked in time (frame 0 alone, then 4 frames at a time, with a feature cache), so
    its memory grows with the frame size, not the length. ``batch_chunk`` videos go through one VAE call (a
    per-frame codec folds every frame into the batch); ``tiling`` switches on diffusers' spatial tiling (256 px
    tiles, 64 px blended overlap: approximate at the seams, for large frames). Encoding takes the posterior's
    mean, as ComfyUI does and diffusers' ``retrieve_latents(sample_mode="argmax")``, so the codec is deterministic."""

    pixel_channels = 3

    def __init__(self, vae, space: LatentSpace | None = None, batch_chunk: int = 8, tiling: bool = False):
        super().__init__()
        if batch_chunk < 1:
            raise ValueError(f"batch_chunk must be >= 1, got {batch_chunk}")
        self.vae = vae.eval()
        self.space = space or wan_latent_space(dict(vae.config))
        self.batch_chunk = batch_chunk
        if tiling:
            vae.enable_tiling()

    def _check_size(self, height: int, width: int) -> None:
        f = self.space.spatial_factor
        if height % f or width % f:
            raise ValueError(f"the {self.space.name} VAE takes frames whose height and width are multiples of {f}, "
                             f"got {height}x{width}: resize or crop the video")

    @torch.no_grad()
    def encode_raw(self, pixels: torch.Tensor) -> torch.Tensor:
        self._check_size(*pixels.shape[-2:])
        device, dtype = self.vae.device, self.vae.dtype
        raw = [self.vae.encode(chunk.to(device, dtype)).latent_dist.mode().float()
               for chunk in pixels.split(self.batch_chunk)]
        return torch.cat(raw).to(pixels.device)

    @torch.no_grad()
    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        device, dtype = self.vae.device, self.vae.dtype
        pixels = [self.vae.decode(chunk.to(device, dtype)).sample.float() for chunk in raw.split(self.batch_chunk)]
        return torch.cat(pixels).to(raw.device)


# ---------------------------------------------------------------------------------------------- text

class UMT5PromptEncoder:
    """UMT5 as ``WanPipeline._get_t5_prompt_embeds`` runs it: the prompt cleaned (``prompt_clean``), padded and
    truncated to ``max_sequence_length`` tokens, encoded with the attention mask, and every embedding past the
    prompt's length set to zero. ``encoder(prompt)`` -> ``[1, max_sequence_length, d_model]``.

    The two transformers of a Wan 2.2 A14B pair share one encoder; the last few prompts are kept, so the pair
    encodes each prompt once."""

    def __init__(self, tokenizer, text_encoder, max_sequence_length: int = MAX_SEQUENCE_LENGTH, keep: int = 8):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval()
        self.max_sequence_length = max_sequence_length
        self.keep = keep
        self._recent: dict[str, torch.Tensor] = {}

    @property
    def width(self) -> int:
        return int(self.text_encoder.config.d_model)

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        tokens = self.tokenizer([prompt_clean(prompt)], padding="max_length", max_length=self.max_sequence_length,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        device = self.text_encoder.device
        mask = tokens.attention_mask.to(device)
        embeds = self.text_encoder(tokens.input_ids.to(device), mask).last_hidden_state
        length = int(mask.gt(0).sum())
        embeds[:, length:] = 0
        return embeds

    def __call__(self, prompt: str) -> torch.Tensor:
        if prompt not in self._recent:
            if len(self._recent) >= self.keep:
                self._recent.pop(next(iter(self._recent)))
            self._recent[prompt] = self.encode(prompt)
        return self._recent[prompt]


# ------------------------------------------------------------------------------------------ schedule

def flow_shift_of(scheduler_config: dict | None, default: float = DEFAULT_SHIFT) -> float:
    """The shift a Wan folder's scheduler config gives: ``flow_shift`` (UniPC / DPM-Solver with flow sigmas),
    ``shift`` (FlowMatchEulerDiscreteScheduler without dynamic shifting), else ``default``."""
    config = scheduler_config or {}
    if config.get("flow_shift") is not None:
        return float(config["flow_shift"])
    if config.get("shift") is not None and not config.get("use_dynamic_shifting"):
        return float(config["shift"])
    return float(default)


def check_shift(shift: float, who: str) -> float:
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"{who}: flow shift must be a positive number, got {shift!r}")
    return float(shift)


# ------------------------------------------------------------------------------------------- experts

class FlowTransformerExpert(Expert):
    """A diffusers flow-matching transformer with its own text encoder: the shared machinery of the Wan and
    Qwen-Image experts. ``forward`` casts to the network's device and dtype, batches every conditioning into one
    call and returns float32 on the caller's device. Subclasses define :meth:`model_timestep` and :meth:`call`."""

    prediction = "flow"
    family = "flow"

    def __init__(self, transformer, prompt_encoder, shift: float, latent_space: LatentSpace, name: str = "expert",
                 source: str = ""):
        self.transformer = transformer.eval()
        self.prompt_encoder = prompt_encoder
        self.shift = float(shift)
        self.schedule: NoiseSchedule = flow_schedule(self.shift, name=f"{self.family} flow shift {self.shift:g}")
        self.latent_space = latent_space
        self.name = name
        self.source = source

    @property
    def networks(self) -> list:
        """The modules speed settings apply to."""
        return [self.transformer]

    def encode(self, prompt: str):
        return self.prompt_encoder(prompt)

    def forwards_per_call(self, n_conds: int) -> int:
        return 1

    def sigma(self, t: float) -> float:
        """The (shifted) flow sigma of the core's timestep ``t``."""
        return self.schedule.coefficients(t)[1]

    def model_timestep(self, t: float) -> float:
        raise NotImplementedError

    def call(self, sample: torch.Tensor, timestep: torch.Tensor, conds: list) -> torch.Tensor:
        """One network call on ``sample`` (its batch = ``len(conds)`` copies of the latent) -> raw outputs."""
        raise NotImplementedError

    @torch.no_grad()  # not inference_mode: the core may modify the outputs in place
    def forward(self, x: torch.Tensor, t: float, conds: list) -> list[torch.Tensor]:
        device, dtype = self.transformer.device, self.transformer.dtype
        sample = x.to(device, dtype).repeat(len(conds), *([1] * (x.ndim - 1)))
        timestep = torch.full((sample.shape[0],), self.model_timestep(t), dtype=torch.float32, device=device)
        out = self.call(sample, timestep, conds)
        return [o.to(x.device, torch.float32) for o in out.chunk(len(conds))]

    def describe(self) -> dict:
        return {**super().describe(), "family": self.family, "source": self.source, "shift": self.shift,
                "transformer": type(self.transformer).__name__, "text_width": self.prompt_encoder.width}


def _repeat_rows(cond: torch.Tensor, rows: int) -> torch.Tensor:
    """[b, ...] -> [rows, ...], each of the b prompts repeated for its consecutive rows (its videos or frames)."""
    if rows % cond.shape[0]:
        raise ValueError(f"a conditioning batch of {cond.shape[0]} does not divide the {rows} rows the model needs")
    return cond.repeat_interleave(rows // cond.shape[0], dim=0)


class WanExpert(FlowTransformerExpert):
    """``WanTransformer3DModel`` on latent videos ``[B, C, T, h, w]`` (control and temporal expert).

    ``expand_timesteps`` (Wan 2.2 TI2V-5B folders) passes the timestep per token, ``[B, T*h*w/4]``, as
    ``WanPipeline`` does for those models; all tokens share it in text-to-video."""

    family = "wan"
    layout = L.VIDEO

    def __init__(self, transformer, prompt_encoder, shift: float, latent_space: LatentSpace = WAN21,
                 expand_timesteps: bool = False, name: str = "expert", source: str = ""):
        super().__init__(transformer, prompt_encoder, shift, latent_space, name, source)
        self.expand_timesteps = bool(expand_timesteps)
        self.patch = tuple(transformer.config.patch_size)

    def model_timestep(self, t: float) -> float:
        return 1000.0 * self.sigma(t)

    def check_size(self, height: int, width: int) -> None:
        ph, pw = self.patch[1:]
        if height % ph or width % pw:
            f = self.latent_space.spatial_factor
            raise ValueError(f"{self.name} expert ({self.source}): Wan takes latents whose height and width are "
                             f"multiples of {ph}x{pw} (pixel multiples of {ph * f}x{pw * f}), got {height}x{width}")

    def call(self, sample: torch.Tensor, timestep: torch.Tensor, conds: list) -> torch.Tensor:
        self.check_size(*sample.shape[-2:])
        rows = sample.shape[0] // len(conds)
        context = torch.cat([_repeat_rows(c, rows) for c in conds]).to(sample.device, sample.dtype)
        if self.expand_timesteps:
            pt, ph, pw = self.patch
            tokens = (sample.shape[2] // pt) * (sample.shape[3] // ph) * (sample.shape[4] // pw)
            timestep = timestep[:, None].expand(-1, tokens)
        return self.transformer(hidden_states=sample, timestep=timestep, encoder_hidden_states=context,
                                return_dict=False)[0]


class WanImageExpert(WanExpert):
    """A Wan transformer as an image model (spatial expert): every latent frame of a frame batch ``[N, C, h, w]``
    is a one-frame video ``[N, C, 1, h, w]``. Attention stays within a frame, so it costs 1/T of the video's
    attention. In "pixel frames" mode the expert works in ``space.per_frame()`` (see the module docstring)."""

    layout = L.FRAMES

    def call(self, sample: torch.Tensor, timestep: torch.Tensor, conds: list) -> torch.Tensor:
        return super().call(sample[:, :, None], timestep, conds)[:, :, 0]


def image_space(space: LatentSpace, mode: str) -> LatentSpace:
    """The latent space of an image expert over a video space: the space itself ("latent frames") or every pixel
    frame encoded alone ("pixel frames")."""
    if mode not in IMAGE_MODES:
        raise ValueError(f"image expert mode must be one of {IMAGE_MODES}, got {mode!r}")
    return space if mode == LATENT_FRAMES else space.per_frame()


def wan_pair(high: WanExpert, low: WanExpert, boundary: float, guidance: tuple | None = None,
             name: str | None = None) -> ExpertPair:
    """Wan 2.2 A14B: ``high`` (``transformer``) where the shifted sigma is at or above ``boundary``
    (``boundary_ratio``), ``low`` (``transformer_2``) below; ``guidance`` = (guidance_scale, guidance_scale_2)."""
    if not 0.0 < boundary < 1.0:
        raise ValueError(f"boundary_ratio must lie strictly between 0 and 1, got {boundary}")
    return ExpertPair(high, low, boundary, guidance, name=name or high.name)
