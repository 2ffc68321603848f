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
from pathlib import Path

import torch

from ... import layout as L
from ...experts import ROLES, Expert, ExpertPair
from ...latent_spaces import (IMAGE_MODES, LATENT_FRAMES, PIXEL_FRAMES, VIDEO_FPS, WAN21, Codec, LatentSpace,
                              per_frame, wan22_space)
from ...sampling import host_to_device
from ...schedules import NoiseSchedule, flow_schedule
from ..experts import _repeat_rows, placement
from ..text import RecentPrompts, warn_if_truncated
from . import files
from . import unet_folders as U
from .base import Context, Family, Inspection

#: shift when a folder's scheduler config names none: the Wan 2.1 / 2.2 reference code's T2V default
#: (``generate.py`` sample_shift 5.0; TI2V-5B and I2V-A14B 5.0). ComfyUI gives every Wan model 8.0, diffusers'
#: docstring 5.0 for 720p and 3.0 for 480p, and T2V-A14B's own config 12.0.
DEFAULT_SHIFT = 5.0
#: ``WanPipeline.__call__`` default ``max_sequence_length``: UMT5 embeddings are padded to this many tokens
MAX_SEQUENCE_LENGTH = 512

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


DEFAULT_BATCH_CHUNK = 8  # videos (or, per frame, frames) per VAE call


class WanVAECodec(Codec):
    """A Wan-style causal video VAE (``AutoencoderKLWan``; ``AutoencoderKLQwenImage`` has the same calls) as a
    codec: pixels ``[B, 3, F, H, W]`` in [-1, 1] with ``F = 4k + 1`` <-> normalised latents ``[B, C, k + 1, h, w]``.

    The VAE itself is causal and chunked in time (frame 0 alone, then 4 frames at a time, with a feature cache), so
    its memory grows with the frame size, not the length. ``batch_chunk`` videos go through one VAE call (a
    per-frame codec folds every frame into the batch); ``tiling`` switches on diffusers' spatial tiling (256 px
    tiles, 64 px blended overlap: approximate at the seams, for large frames). Encoding takes the posterior's
    mean, as ComfyUI does and diffusers' ``retrieve_latents(sample_mode="argmax")``, so the codec is deterministic."""

    pixel_channels = 3

    def __init__(self, vae, space: LatentSpace | None = None, batch_chunk: int = DEFAULT_BATCH_CHUNK,
                 tiling: bool = False):
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
            raise ValueError(f"the {self.space.title} VAE takes frames whose height and width are multiples of {f}, "
                             f"got {height}x{width}: resize or crop the video")

    @torch.no_grad()
    def encode_raw(self, pixels: torch.Tensor) -> torch.Tensor:
        self._check_size(*pixels.shape[-2:])
        device, dtype = placement(self.vae)
        raw = [self.vae.encode(chunk.to(device, dtype)).latent_dist.mode().float()
               for chunk in pixels.split(self.batch_chunk)]
        return torch.cat(raw).to(pixels.device)

    @torch.no_grad()
    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        device, dtype = placement(self.vae)
        pixels = [self.vae.decode(chunk.to(device, dtype)).sample.float() for chunk in raw.split(self.batch_chunk)]
        return torch.cat(pixels).to(raw.device)


# ---------------------------------------------------------------------------------------------- text

class UMT5PromptEncoder(RecentPrompts):
    """UMT5 as ``WanPipeline._get_t5_prompt_embeds`` runs it: the prompt cleaned (``prompt_clean``), padded and
    truncated to ``max_sequence_length`` tokens, encoded with the attention mask, and every embedding past the
    prompt's length set to zero. ``encoder(prompt)`` -> ``[1, max_sequence_length, d_model]``.

    The two transformers of a Wan 2.2 A14B pair share one encoder, which remembers its last prompts
    (:class:`~..text.RecentPrompts`), so the pair encodes each prompt once."""

    def __init__(self, tokenizer, text_encoder, max_sequence_length: int = MAX_SEQUENCE_LENGTH, keep: int = 8):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval()
        self.max_sequence_length = max_sequence_length
        self.keep = keep

    @property
    def width(self) -> int:
        return int(self.text_encoder.config.d_model)

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        prompts = [prompt_clean(prompt)]
        warn_if_truncated(self.tokenizer, prompts, self.max_sequence_length, self.text_encoder)
        tokens = self.tokenizer(prompts, padding="max_length",
                                max_length=self.max_sequence_length, truncation=True, add_special_tokens=True,
                                return_attention_mask=True, return_tensors="pt")
        device = self.text_encoder.device
        embeds = self.text_encoder(host_to_device(tokens.input_ids, device),
                                   host_to_device(tokens.attention_mask, device)).last_hidden_state
        length = int(tokens.attention_mask.gt(0).sum())  # read on the host: no wait for the GPU
        embeds[:, length:] = 0
        return embeds


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
    step_cache = None  # a step_cache.FirstBlockCache when the refinement stage caches this expert (opt-in)

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

    def encode_all(self, prompts: list[str]) -> list:
        return self.prompt_encoder.encode_all(prompts)

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
        device, dtype = placement(self.transformer)
        sample = x.to(device, dtype).repeat(len(conds), *([1] * (x.ndim - 1)))
        timestep = torch.full((sample.shape[0],), self.model_timestep(t), dtype=torch.float32, device=device)
        if self.step_cache is None:
            out = self.call(sample, timestep, conds)
        else:
            with self.step_cache.active(self.transformer, (id(self.transformer), self.name, tuple(sample.shape)), t):
                out = self.call(sample, timestep, conds)
        return [o.to(x.device, torch.float32) for o in out.chunk(len(conds))]

    def describe(self) -> dict:
        return {**super().describe(), "family": self.family, "source": self.source, "shift": self.shift,
                "transformer": type(self.transformer).__name__,
                "dtype": str(self.transformer.dtype).removeprefix("torch."), "text_width": self.prompt_encoder.width}


class WanExpert(FlowTransformerExpert):
    """``WanTransformer3DModel`` on latent videos ``[B, C, T, h, w]`` (control and temporal expert).

    ``expand_timesteps`` (Wan 2.2 TI2V-5B folders) passes the timestep per token, ``[B, T*h*w/4]``, as
    ``WanPipeline`` does for those models; all tokens share it in text-to-video."""

    family = "wan"
    layout = L.VIDEO
    default_guidance = 5.0   # WanPipeline's guidance_scale

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


# --------------------------------------------------------------------------------------------- family

WAN_FOLDER = "wan-folder"
WAN_UNSUPPORTED = "wan-other"
#: pipelines whose folders hold a text-to-video Wan model (video-to-video reuses the T2V weights)
T2V_PIPELINES = ("WanPipeline", "WanVideoToVideoPipeline")

#: family options (``load_experts(..., options={...})``): name -> what it sets
OPTIONS = {
    "flow_shift": "shift of the flow experts' schedules: a number, or role -> number (default: scheduler config)",
    "image_mode": "spatial Wan / Qwen-Image experts: 'latent_frames' (default) or 'pixel_frames'",
    "pair_guidance": "Wan 2.2 A14B: (guidance_scale, guidance_scale_2) for the high- and low-noise transformers, "
                     "the pair's own default guidance (a scale given to bind(), --cfg / --temporal-cfg, wins)",
    "vae_tiling": "Wan VAE: spatial tiling for large frames (approximate at tile seams; default off)",
}
#: the experts that read a family option: the fact their inspection holds, and who they are in words (an option no
#: expert of a call reads changed nothing, without a word; ``image_mode`` has a check of its own)
OPTION_READERS = {
    "flow_shift": ("shift", "flow experts (Wan, Qwen-Image, FLUX.1)"),
    "pair_guidance": ("boundary", "Wan 2.2 A14B expert pairs"),
    "vae_tiling": ("video_space", "experts with Wan's VAE (Wan, Qwen-Image)"),
}


def modern_dtype(context: Context) -> torch.dtype:
    """Wan, UMT5, Qwen-Image and Qwen2.5-VL are released in bfloat16; T5-style encoders and Qwen-Image overflow in
    float16, so a float16 request (the registry's accelerator default) loads them in bfloat16."""
    return torch.bfloat16 if context.dtype == torch.float16 else context.dtype


def option_for(context: Context, name: str, role: str, default=None):
    """A family option that may be given once or per role (``{"spatial": ...}``)."""
    value = context.options.get(name)
    if isinstance(value, dict):
        value = value.get(role)
    return default if value is None else value


def image_mode_of(context: Context, role: str) -> str | None:
    """The image-expert mode for the spatial role (None for the video roles), checked."""
    if role != "spatial":
        return None
    mode = option_for(context, "image_mode", role, LATENT_FRAMES)
    if mode not in IMAGE_MODES:
        raise ValueError(f"image_mode={mode!r}: choose one of {IMAGE_MODES}")
    return mode


def read_component(path: Path, sub: str, what: str, who: str, weights: bool = True) -> dict:
    """``sub/config.json`` of a pipeline folder, with its weight headers checked."""
    config = files.read_json(files.require(path, f"{sub}/config.json", f"the {what} config", who), who)
    if weights:
        files.read_folder_weights(path / sub, who, f"the {what} weights")
    return config


def vae_facts(path: Path, who: str, channels: int, family: str) -> tuple[LatentSpace, dict, bool]:
    """(latent space, VAE config, VAE weights at hand) of a Wan-style folder, the transformer's channels checked."""
    file = path / "vae" / "config.json"
    if not file.is_file():
        if channels == 16:   # the Wan 2.1 VAE, which Wan 2.1, Wan 2.2 A14B and Qwen-Image share
            return WAN21, {}, False
        files.require(path, "vae/config.json", f"the {channels}-channel VAE's config (its latent statistics)", who)
    config = files.read_json(file, who)
    try:
        space = wan_latent_space(config)
    except ValueError as e:
        raise ValueError(f"{who}: {path / 'vae' / 'config.json'}: {e}; restore the {family} VAE config") from None
    if space.channels != channels:
        raise ValueError(f"{who}: its transformer takes {channels}-channel latents but its VAE makes "
                         f"{space.channels} (vae/config.json z_dim); use the transformer and VAE of one {family} "
                         f"release (Wan 2.2 TI2V-5B has the 48-channel VAE, Wan 2.1 / A14B / Qwen-Image the "
                         f"16-channel one)")
    has_vae = files.has_weights(path / "vae")
    if has_vae:
        files.read_folder_weights(path / "vae", who, "the VAE weights")
    return space, config, has_vae


def load_vae(path: Path, cls, context: Context):
    return context.cached(("vae", str(path.resolve()), modern_dtype(context)),
                          lambda: U.load_model(cls, path, "vae", context.device, modern_dtype(context)))


def video_codec(inspection: Inspection, vae, context: Context) -> Codec:
    """The folder's VAE as the codec of the inspected space: the causal video codec, or its per-frame variant
    for an image expert in "pixel frames" mode."""
    video = WanVAECodec(vae, inspection.facts["video_space"],
                        batch_chunk=context.options.get("decode_chunk_frames") or DEFAULT_BATCH_CHUNK,
                        tiling=bool(context.options.get("vae_tiling")))
    return per_frame(video) if inspection.facts.get("image_mode") == PIXEL_FRAMES else video


class Wan(Family):
    """Wan 2.1 / Wan 2.2 text-to-video diffusers folders (``WanPipeline``) for every role: video expert for
    control and temporal, one-frame image expert for spatial. A14B folders (``transformer_2/`` and
    ``boundary_ratio``) give an expert pair; TI2V-5B folders the 48-channel Wan 2.2 latent space."""

    name = "wan"
    label = "Wan 2.1 / 2.2 T2V"
    kinds = {WAN_FOLDER: "a diffusers Wan 2.1 / 2.2 text-to-video folder (WanPipeline; transformer_2/ for Wan 2.2 "
                         "A14B)",
             WAN_UNSUPPORTED: "a diffusers Wan image-to-video / VACE / animation folder, which ConFiner does not "
                              "use (its Wan experts are text-to-video: use a WanPipeline folder)"}
    roles = ROLES
    fps = VIDEO_FPS[WAN21.name]   # Wan 2.1 and 2.2 A14B; a release of another VAE's space (TI2V-5B) has its own
    # the original layout (Wan-AI's, ComfyUI's diffusion_models files: comfy/model_detection.py's marks), diffusers'
    lone_network_names = (("head.modulation", "patch_embedding.weight"),
                          ("scale_shift_table", "patch_embedding.weight", "condition_embedder.time_proj.weight"))

    def roles_for(self, kind: str) -> tuple[str, ...]:
        return ROLES if kind == WAN_FOLDER else ()

    def detect(self, path: Path) -> str | None:
        return files.pipeline_kind(path, T2V_PIPELINES, "WanTransformer3DModel", WAN_FOLDER, WAN_UNSUPPORTED)

    def inspect(self, path: Path, kind: str, role: str, context: Context) -> Inspection:
        who = files.who(role, path)
        index = files.read_json(path / "model_index.json", who) if (path / "model_index.json").is_file() else {}
        transformer = read_component(path, "transformer", "Wan transformer", who)
        self._check_t2v(who, transformer, "transformer")
        boundary = index.get("boundary_ratio")
        transformer_2 = None
        if boundary is not None:
            if not (isinstance(boundary, (int, float)) and 0 < boundary < 1):
                raise ValueError(f"{who}: model_index.json boundary_ratio is {boundary!r}; it must lie between 0 "
                                 f"and 1 (Wan 2.2 T2V-A14B: 0.875); restore the folder's model_index.json")
            transformer_2 = read_component(path, "transformer_2", "low-noise Wan transformer (Wan 2.2 A14B)", who)
            self._check_t2v(who, transformer_2, "transformer_2")
            for key in ("in_channels", "out_channels", "text_dim", "patch_size"):
                if transformer_2.get(key) != transformer.get(key):
                    raise ValueError(f"{who}: transformer/ and transformer_2/ differ in {key} ({transformer.get(key)} "
                                     f"vs {transformer_2.get(key)}); both must come from one Wan 2.2 A14B release")
        elif (path / "transformer_2").is_dir():
            raise ValueError(f"{who}: the folder has transformer_2/ but model_index.json sets no boundary_ratio, so "
                             f"the low-noise transformer would never run; add \"boundary_ratio\": 0.875 (Wan 2.2 "
                             f"T2V-A14B) to model_index.json or remove transformer_2/")
        text = read_component(path, "text_encoder", "UMT5 text encoder", who)
        files.require(path, "tokenizer", "the UMT5 tokenizer files", who)
        width, text_dim = U.text_width(text), transformer.get("text_dim", 4096)
        if width != text_dim:
            raise ValueError(f"{who}: its UMT5 text encoder makes {width}-wide embeddings (text_encoder/config.json "
                             f"d_model) but the transformer's text_dim is {text_dim}; use the text encoder of the "
                             f"same Wan release (UMT5-XXL, 4096 wide)")
        scheduler_file = path / "scheduler" / "scheduler_config.json"
        scheduler = files.read_json(scheduler_file, who) if scheduler_file.is_file() else None
        shift = check_shift(option_for(context, "flow_shift", role, flow_shift_of(scheduler)), who)
        video_space, vae, has_vae = vae_facts(path, who, int(transformer.get("in_channels", 16)), "Wan")
        mode = image_mode_of(context, role)
        space = image_space(video_space, mode) if mode else video_space
        facts = {"index": index, "transformer": transformer, "transformer_2": transformer_2, "text_encoder": text,
                 "scheduler": scheduler, "vae": vae, "shift": shift, "boundary": boundary, "image_mode": mode,
                 "video_space": video_space, "expand_timesteps": bool(index.get("expand_timesteps"))}
        if video_space.name in VIDEO_FPS:   # the TI2V-5B release: 24 in the Wan 2.2 VAE's space
            facts["fps"] = VIDEO_FPS[video_space.name]
        return Inspection(self, kind, role, path, space, has_vae, facts,
                          patch=int((transformer.get("patch_size") or (1, 2, 2))[1]))

    @staticmethod
    def _check_t2v(who: str, config: dict, sub: str) -> None:
        if config.get("_class_name") not in (None, "WanTransformer3DModel"):
            raise ValueError(f"{who}: {sub}/config.json names {config.get('_class_name')}, not a "
                             f"WanTransformer3DModel; use a Wan text-to-video folder")
        if config.get("image_dim") is not None or config.get("in_channels") != config.get("out_channels", 16):
            raise ValueError(f"{who}: {sub}/ is an image-to-video Wan transformer (image_dim / in_channels "
                             f"{config.get('in_channels')}); ConFiner's Wan experts are text-to-video: use a Wan "
                             f"T2V folder (Wan2.1-T2V-*, Wan2.2-T2V-A14B, Wan2.2-TI2V-5B)")

    def load(self, inspection: Inspection, context: Context) -> Expert:
        from diffusers import WanTransformer3DModel

        path, facts, role = inspection.path, inspection.facts, inspection.role
        dtype = modern_dtype(context)
        encoder = context.cached(("umt5", str(path.resolve())), lambda: UMT5PromptEncoder(
            U.load_tokenizer(path, default="AutoTokenizer"),
            U.load_model(U.transformers_class(path, "text_encoder", "UMT5EncoderModel"), path, "text_encoder",
                         context.device, dtype)))
        cls = WanExpert if facts["image_mode"] is None else WanImageExpert

        def expert(sub: str) -> WanExpert:
            transformer = context.cached(("wan-transformer", str(path.resolve()), sub), lambda: U.load_model(
                WanTransformer3DModel, path, sub, context.device, dtype))
            return cls(transformer, encoder, facts["shift"], inspection.latent_space, facts["expand_timesteps"],
                       name=role, source=str(path))

        if facts["boundary"] is None:
            return expert("transformer")
        guidance = option_for(context, "pair_guidance", role)
        return wan_pair(expert("transformer"), expert("transformer_2"), facts["boundary"],
                        tuple(guidance) if guidance is not None else None, name=role)

    def load_codec(self, inspection: Inspection, context: Context) -> Codec:
        from diffusers import AutoencoderKLWan

        return video_codec(inspection, load_vae(inspection.path, AutoencoderKLWan, context), context)
