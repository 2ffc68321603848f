"""Latent spaces, the codecs (VAEs) that map pixels into them, and the bridge between two spaces.

A latent space is what one VAE makes of a video, in the spirit of ComfyUI's ``comfy/latent_formats.py``: channels,
spatial and temporal compression, and the normalisation the diffusion model sees (``process_in`` / ``process_out``).
Everything the core holds is a *normalised* latent video ``[B, C, T, h, w]`` of some space, and every expert declares
its space. A :class:`Codec` is a VAE bound to its space: pixels ``[B, P, F, H, W]`` in [-1, 1] <-> normalised
latents. :func:`bridge` hands a clean-sample estimate x0 from one expert's space to another's, by decoding with one
codec and encoding with the other; within one space it is the identity. Noisy latents never cross a bridge: ConFiner
converts between experts through x0 (Eq. 9-11), and so does the bridge.

Causal video VAEs (Wan) encode frame 0 alone and then chunks of ``temporal_factor`` frames, so ``4k + 1`` pixel
frames make ``k + 1`` latent frames. An image model applied to every pixel frame of such a space works in its
:meth:`LatentSpace.per_frame` variant: each pixel frame encoded alone as a one-frame video.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from einops import rearrange
from torch.utils.weak import WeakIdKeyDictionary


#: How an image expert refines a video of a temporally compressed space (Wan's 4 pixel frames per latent frame):
#: every latent frame as an image (the space itself), or every pixel frame encoded alone (:meth:`LatentSpace.per_frame`)
LATENT_FRAMES = "latent_frames"
PIXEL_FRAMES = "pixel_frames"
IMAGE_MODES = (LATENT_FRAMES, PIXEL_FRAMES)


def _per_channel(value, ref: torch.Tensor) -> torch.Tensor | float:
    """A scalar, or a per-channel tuple broadcast over dim 1 of a [B, C, ...] tensor."""
    if isinstance(value, (int, float)):
        return float(value)
    t = torch.tensor(value, dtype=ref.dtype, device=ref.device)
    return t.view(1, -1, *([1] * (ref.ndim - 2)))


@dataclass(frozen=True)
class LatentSpace:
    """One VAE's latent space. ``process_in(raw) = (raw - shift) * scale / std`` is what the diffusion model sees
    (ComfyUI's latent_format: SD ``scale`` 0.18215; Flux ``shift`` 0.1159, ``scale`` 0.3611; Wan per-channel
    ``shift`` = latents_mean and ``std`` = latents_std)."""

    name: str
    channels: int
    spatial_factor: int = 8
    temporal_factor: int = 1
    causal: bool = False
    scale: float = 1.0
    shift: float | tuple = 0.0
    std: float | tuple = 1.0

    @property
    def title(self) -> str:
        """The space as artists name it, by the family whose VAE makes it ("SD 1.5", "Wan 2.1", "Wan 2.1 (pixel
        frames)"); the name for spaces :data:`TITLES` does not list."""
        base, per_frame, _ = self.name.partition("/")
        said = TITLES.get(base, base)
        return f"{said} (pixel frames)" if per_frame else said

    @property
    def latents(self) -> str:
        """Its latents in words: "SD 1.5 latents", "Wan 2.1 latents (pixel frames)" (not "Wan 2.1 (pixel frames)
        latents")."""
        title, pixel_frames, _ = self.title.partition(" (pixel frames)")
        return f"{title} latents" + (" (pixel frames)" if pixel_frames else "")

    # -- frames and sizes -----------------------------------------------------------------------------------------
    def latent_frames(self, pixel_frames: int) -> int:
        if self.causal:
            return (pixel_frames - 1) // self.temporal_factor + 1
        return pixel_frames // self.temporal_factor

    def pixel_frames(self, latent_frames: int) -> int:
        if self.causal:
            return (latent_frames - 1) * self.temporal_factor + 1
        return latent_frames * self.temporal_factor

    def valid_pixel_frames(self, pixel_frames: int) -> bool:
        if pixel_frames < 1:
            return False
        return self.pixel_frames(self.latent_frames(pixel_frames)) == pixel_frames

    def frames_rule(self) -> str:
        tf = self.temporal_factor
        if tf == 1:
            return "any number of frames"
        return f"{tf}k+1 frames (1, {tf + 1}, {2 * tf + 1}, ...)" if self.causal else f"a multiple of {tf} frames"

    def check_pixel_frames(self, pixel_frames: int, who: str = "", least: int = 1) -> None:
        """Refuse a frame count this space cannot hold exactly, naming the nearest counts that work (from
        ``least``: a segment has 2 frames or more)."""
        if self.valid_pixel_frames(pixel_frames):
            return
        if pixel_frames < 1:
            raise ValueError(f"{who or self.title} latent space: {pixel_frames} frames; a video has at least 1 "
                             f"({self.frames_rule()})")
        lower = self.pixel_frames(max(self.latent_frames(pixel_frames), 1))
        lower = lower if lower <= pixel_frames else None
        upper = self.pixel_frames(self.latent_frames(pixel_frames) + 1)
        options = " or ".join(str(n) for n in (lower, upper) if n is not None and n >= least)
        raise ValueError(f"{who or self.title} latent space holds {self.frames_rule()}; {pixel_frames} frames would be "
                         f"cut by its VAE: use {options}")

    def latent_shape(self, batch: int, pixel_frames: int, height: int, width: int) -> tuple:
        """The latent ``[B, C, T, h, w]`` of a video of ``pixel_frames`` frames of ``height`` x ``width`` pixels (e.g.
        the initial noise). Refuses a frame count this space does not hold exactly (Wan: 4k+1) and a size that is not
        a multiple of the spatial factor, rather than round them down to a shorter or smaller video."""
        self.check_pixel_frames(pixel_frames)
        for name, pixels in (("height", height), ("width", width)):
            if pixels % self.spatial_factor or pixels < self.spatial_factor:
                raise ValueError(f"{self.title} latent space: {name} {pixels} is not a positive multiple of its "
                                 f"spatial factor {self.spatial_factor}; use {self.nearest_size(pixels)}")
        return (batch, self.channels, self.latent_frames(pixel_frames),
                height // self.spatial_factor, width // self.spatial_factor)

    def nearest_size(self, pixels: int) -> str:
        """The multiples of the spatial factor around ``pixels`` (for a message)."""
        f = self.spatial_factor
        lower, upper = pixels // f * f, (pixels // f + 1) * f
        return f"{lower} or {upper}" if lower >= f else str(upper)

    def pixel_shape(self, latent_shape: Sequence[int]) -> tuple:
        """(batch, frames, height, width) of the video a latent [B, C, T, h, w] of this space stands for."""
        b, _, t, h, w = latent_shape
        return (b, self.pixel_frames(t), h * self.spatial_factor, w * self.spatial_factor)

    # -- normalisation ----------------------------------------------------------------------------------------------
    def process_in(self, raw: torch.Tensor) -> torch.Tensor:
        """VAE latent -> what the diffusion model sees."""
        return (raw - _per_channel(self.shift, raw)) * (self.scale / _per_channel(self.std, raw))

    def process_out(self, z: torch.Tensor) -> torch.Tensor:
        """What the diffusion model sees -> VAE latent."""
        return z * (_per_channel(self.std, z) / self.scale) + _per_channel(self.shift, z)

    # -- variants ---------------------------------------------------------------------------------------------------
    def per_frame(self) -> "LatentSpace":
        """Every pixel frame encoded alone (a one-frame video): the space of an image model run on each frame of
        a video in this space. For spaces without temporal compression it is the space itself."""
        if self.temporal_factor == 1:
            return self
        return replace(self, name=f"{self.name}/frames", temporal_factor=1, causal=False)


# The spaces of the families the chain supports (numbers as the families' own configs give them). Qwen-Image shares
# Wan 2.1's space; the Wan 2.2 TI2V-5B space's per-channel statistics come with its VAE config.
SD15 = LatentSpace("sd15", 4, 8, scale=0.18215)
SDXL = LatentSpace("sdxl", 4, 8, scale=0.13025)
FLUX = LatentSpace("flux", 16, 8, scale=0.3611, shift=0.1159)
WAN21 = LatentSpace(
    "wan2.1", 16, 8, 4, causal=True,
    shift=(-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
           0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921),
    std=(2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
         3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160))


#: what messages call the named spaces: the family whose VAE makes them (Qwen-Image and Wan 2.2 A14B share Wan 2.1's)
TITLES = {"sd15": "SD 1.5", "sdxl": "SDXL", "flux": "FLUX.1", "wan2.1": "Wan 2.1", "wan2.2": "Wan 2.2 5B"}

#: the named spaces of fixed statistics (Wan 2.2's come with each VAE's config)
KNOWN_SPACES = (SD15, SDXL, FLUX, WAN21)

#: frames per second of the videos the video models of a space make (by space name): AnimateDiff's and ModelScope's
#: 16-frame clips of 2 s in SD 1.5's space, Wan 2.1's and 2.2 A14B's 81 frames of 5 s, TI2V-5B's 121 frames of 5 s in
#: the Wan 2.2 VAE's. The model families read it (``Family.fps``), and the Long Video node for its seconds keys.
VIDEO_FPS = {"sd15": 8.0, "wan2.1": 16.0, "wan2.2": 24.0}


def wan22_space(latents_mean: Sequence[float], latents_std: Sequence[float]) -> LatentSpace:
    """Wan 2.2 TI2V-5B: 48 channels, 16x spatial (8x VAE after a 2x2 patchify), causal 4x temporal."""
    return LatentSpace("wan2.2", 48, 16, 4, causal=True, shift=tuple(latents_mean), std=tuple(latents_std))


# ----------------------------------------------------------------------------------------------------------------
# Codecs

class Codec(ABC):
    """A VAE bound to its latent space. Pixels are ``[B, P, F, H, W]`` floats in [-1, 1] (P = 3 for RGB VAEs);
    latents are normalised ``[B, C, T, h, w]``. Subclasses implement the raw VAE calls; :attr:`calls` counts them
    (one encode or decode of a whole clip each), which the report gives as the bridge's cost."""

    space: LatentSpace
    pixel_channels: int = 3

    def __init__(self):
        self.calls = {"encode": 0, "decode": 0}

    @abstractmethod
    def encode_raw(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> the VAE's own (unnormalised) latent."""

    @abstractmethod
    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """The VAE's own latent -> pixels."""

    def check_tensor(self, x, what: str) -> None:
        """Refuse what is no tensor, naming the VAE and the fix (a NumPy array passed the shape check and failed
        inside each VAE differently: "no attribute 'double'", "... 'split'")."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the {self.space.title} VAE takes {what} as a torch.Tensor, got {type(x).__name__}"
                            + (": torch.from_numpy(x)" if type(x).__module__ == "numpy" else ""))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, P, F, H, W]`` in [-1, 1] -> the normalised latent ``[B, C, T, h, w]`` (``process_in``); F
        must be a count the space holds exactly."""
        self.check_tensor(pixels, "pixels [B, P, F, H, W]")
        self.space.check_pixel_frames(pixels.shape[2], f"the {self.space.title} VAE's")
        self.calls["encode"] += 1
        return self.space.process_in(self.encode_raw(pixels))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """A normalised latent ``[B, C, T, h, w]`` -> pixels ``[B, P, F, H, W]`` in about [-1, 1] (``process_out``, then
        the VAE)."""
        self.check_tensor(latent, f"latents [B, {self.space.channels}, T, h, w]")
        if latent.ndim != 5 or latent.shape[1] != self.space.channels:
            raise ValueError(f"the {self.space.title} VAE decodes latents [B, {self.space.channels}, T, h, w], got "
                             f"shape {tuple(latent.shape)}")
        self.calls["decode"] += 1
        return self.decode_raw(self.space.process_out(latent))


class PerFrameCodec(Codec):
    """A video codec applied to every pixel frame alone (frames folded into the batch as one-frame videos): the
    codec of :meth:`LatentSpace.per_frame`."""

    def __init__(self, video: Codec):
        super().__init__()
        self.video = video
        self.space = video.space.per_frame()
        self.pixel_channels = video.pixel_channels

    def encode_raw(self, pixels):
        b = pixels.shape[0]
        raw = self.video.encode_raw(rearrange(pixels, "b p f h w -> (b f) p 1 h w"))
        return rearrange(raw, "(b f) c 1 h w -> b c f h w", b=b)

    def decode_raw(self, raw):
        b = raw.shape[0]
        pixels = self.video.decode_raw(rearrange(raw, "b c f h w -> (b f) c 1 h w"))
        return rearrange(pixels, "(b f) p 1 h w -> b p f h w", b=b)


#: the attribute that carries a latent's space on the tensors the chain returns (:func:`in_space`)
# The chain's outputs and their spaces, by the tensor's identity: a table beside the tensors, not an attribute on them,
# since torch.save pickles a tensor's attributes and torch.load (weights_only, its default since torch 2.6) refused a
# saved chain output ("Unsupported global: LatentSpace").
_NOTED = WeakIdKeyDictionary()


def in_space(latent: torch.Tensor, space: LatentSpace) -> torch.Tensor:
    """``latent``, noted as ``space``'s: the chain's outputs (a structure, a hand-off, a refined video) carry their
    space for the checks that take them in (:func:`noted_space`). A tensor holds no space, and two spaces of one
    channel count read each other's latents without an error: a trial's Wan structure, refined as FLUX.1 latents
    (16 channels both), made a video of 5 frames for 17. The note is on this tensor object alone (what is computed
    from it, a copy, a slice, a ``detach()``, a saved and loaded file, has none), so a check that finds none checks
    nothing."""
    _NOTED[latent] = space
    return latent


def noted_space(latent) -> LatentSpace | None:
    """The space :func:`in_space` noted on ``latent``; None where none was."""
    return _NOTED.get(latent) if isinstance(latent, torch.Tensor) else None


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Codec pixels [B, P, F, H, W] in [-1, 1] -> uint8 RGB frames [B, F, H, W, 3] (channels after RGB dropped)."""
    rgb = ((pixels[:, :3].float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return rgb.permute(0, 2, 3, 4, 1).contiguous()


def per_frame(codec: Codec) -> Codec:
    """The codec of ``codec.space.per_frame()`` (the codec itself when the space has no temporal compression)."""
    return codec if codec.space.temporal_factor == 1 else PerFrameCodec(codec)


# ----------------------------------------------------------------------------------------------------------------
# The bridge

def bridge(x0: torch.Tensor, source: Codec | LatentSpace, target: Codec | LatentSpace) -> torch.Tensor:
    """Hand a clean-sample estimate from the source expert's latent space to the target's: the identity within
    one space, else decode with the source's VAE and encode with the target's."""
    source_space = source.space if isinstance(source, Codec) else source
    target_space = target.space if isinstance(target, Codec) else target
    if source_space == target_space:
        return x0
    if not (isinstance(source, Codec) and isinstance(target, Codec)):
        missing = source_space.title if not isinstance(source, Codec) else target_space.title
        raise ValueError(f"experts in the {source_space.title} and {target_space.title} latent spaces meet here; the "
                         f"bridge between them needs both VAEs, and the {missing} one is missing: give that expert "
                         f"its VAE")
    pixels = source.decode(x0)
    if pixels.shape[1] != target.pixel_channels:
        raise ValueError(f"the {source_space.title} VAE makes {pixels.shape[1]}-channel pixels but the "
                         f"{target_space.title} VAE encodes {target.pixel_channels}-channel pixels")
    return target.encode(pixels).to(x0.dtype)


def check_bridges(hand_offs: list, ends: dict, fixes: dict | None = None, undeclared: frozenset = frozenset()) -> None:
    """Every hand-off (source role, target role) between experts of different latent spaces needs both sides'
    VAEs; ``ends``: role -> its codec, else its latent space (or None: no such expert). One message names every VAE
    missing. ``fixes``: role -> what the host asks the user to do for that role's VAE; a host that serves every
    expert of a space with one VAE (``nodes.codecs.VAEShelf``) gives them, and is asked one VAE per space: the fix
    of the space's first role in the order of ``fixes``. Without ``fixes`` every role lacking one is asked;
    ``undeclared``: the roles whose expert kept :class:`~confiner_core.experts.Expert`'s default space, which may be
    one of one's own that forgot to declare the space it works in."""
    space = {role: end.space if isinstance(end, Codec) else end for role, end in ends.items() if end is not None}
    meetings, missing = [], {}   # missing: space title -> roles of that space without a VAE, in order
    unjoinable: dict = {}   # VAEs of other pixels: each pair of experts once, as first handed off
    for a, b in hand_offs:
        if a not in space or b not in space or space[a] == space[b]:
            continue
        meetings.append(f"{a} {space[a].title} -> {b} {space[b].title}")
        for role in (a, b):
            if not isinstance(ends[role], Codec) and role not in missing.setdefault(space[role].title, []):
                missing[space[role].title].append(role)
        pixels = [end.pixel_channels if isinstance(end, Codec) else None for end in (ends[a], ends[b])]
        if None not in pixels and pixels[0] != pixels[1]:
            unjoinable.setdefault(frozenset((a, b)), f"the {a} expert's {space[a].title} VAE makes {pixels[0]}-channel "
                                                     f"pixels and the {b} expert's {space[b].title} VAE takes "
                                                     f"{pixels[1]}-channel ones")
    if unjoinable:   # (found by the bridge itself only after the control stage had run)
        raise ValueError(f"{'; '.join(unjoinable.values())}: no bridge joins VAEs of other pixels, so use experts "
                         f"whose VAEs make the same pixels (the embedded experts' VAE makes toy pixels, not RGB: "
                         f"mix them with one another only)")
    if not missing:
        return
    if fixes:
        order = list(fixes)
        asks = [(name, roles, fixes.get(min(roles, key=lambda r: order.index(r) if r in order else len(order)),
                                         "give it its VAE")) for name, roles in missing.items()]
    else:
        asks = [(name, [role], "give it its VAE" + (", or declare its latent_space (it kept the Expert class's "
                                                   "default, SD 1.5's)" if role in undeclared else ""))
                for name, roles in missing.items() for role in roles]
    # the library's own experts: what "its VAE" is in code (a host's fixes say which of its inputs to connect)
    how = "" if fixes else (" (an expert's VAE is its codec: expert.codec = a Codec of its latent space, such as the "
                            ".codec of an expert load_experts loaded in that space)")
    raise ValueError(f"experts of different latent spaces hand the video over ({'; '.join(meetings)}): bridging "
                     f"them needs their VAEs, and {len(asks)} {'is' if len(asks) == 1 else 'are'} missing; "
                     + "; ".join(f"for {name} (the {' and '.join(roles)} expert{'s' if len(roles) > 1 else ''}): "
                                 f"{fix}" for name, roles, fix in asks) + how)
