"""ComfyUI VAEs as confiner_core codecs: what the bridge between experts of different latent spaces runs on.

A :class:`ComfyVAECodec` binds a ComfyUI ``VAE`` (``comfy.sd.VAE``, e.g. from VAELoader or a checkpoint) to the
latent space of the expert it serves (:func:`nodes.host.space_of`, read off the model's latent format), so the
normalisation is the model's own: ``encode`` = the VAE's raw latent through ``process_in``, exactly what a VAE
Encode node followed by sampling gives the model. The VAE calls are ComfyUI's own ``VAE.encode`` / ``VAE.decode``:
frames are batched as far as free memory allows and a call that runs out of memory is redone tiled (ComfyUI's own
fallback), so the bridge's peak memory is bounded like a VAE Decode node's.

Pixels in the core are ``[B, 3, F, H, W]`` in [-1, 1]; ComfyUI's IMAGE is ``[..., H, W, 3]`` in [0, 1].
Image VAEs (SD, SDXL, Flux) code every frame alone, batched; video VAEs (Wan) code a whole clip causally.

:class:`VAEShelf` gives each expert a VAE: its own input if connected, else any connected VAE of the same latent
space (one VAE serves every expert of its space), so a graph whose experts share one space needs one VAE wire.
Each VAE call is said on the node's text (:meth:`VAEShelf.reporting_to`): a Wan VAE's pass over a clip takes seconds
to minutes, during which an evaluation's step count would stand still.
"""

from __future__ import annotations

import torch
from einops import rearrange

from ..confiner_core.latent_spaces import KNOWN_SPACES, Codec, LatentSpace
from .types import mismatch


#: where an artist finds the VAE of a latent space: the checkpoint's own, or the file ComfyUI's repackaged releases
#: ship (the names the templates' notes give); the messages named only "its family's VAE file"
VAE_FILES = {"sd15": "the SD 1.5 checkpoint loader's VAE output", "sdxl": "the SDXL checkpoint loader's VAE output",
             "flux": "ae.safetensors in Load VAE", "wan2.1": "wan_2.1_vae.safetensors in Load VAE",
             "wan2.2": "wan2.2_vae.safetensors in Load VAE"}


def vae_file(space: LatentSpace) -> str:
    """Where the VAE of ``space`` comes from, in an artist's words (:data:`VAE_FILES`)."""
    return VAE_FILES.get(space.name.partition("/")[0], "its checkpoint loader's VAE output, or its family's VAE file")


def own_vae_file(space: LatentSpace) -> str | None:
    """The file a Load VAE of ``space`` holds ("wan_2.1_vae.safetensors"); None where the VAE comes with the
    checkpoint (SD's)."""
    said = vae_file(space)
    return said.removesuffix(" in Load VAE") if said.endswith(" in Load VAE") else None


def vae_shape(vae) -> tuple[int | None, int, int]:
    """A ComfyUI VAE's latent channels, spatial and temporal compression."""
    return (getattr(vae, "latent_channels", None), vae.spacial_compression_encode(),
            vae.temporal_compression_decode() or 1)


#: a VAE file's keys that tell its family, as ``comfy.sd.VAE`` tells them (the first found decides): Wan's VAEs by
#: their decoder's first norm (Wan 2.2's 5B VAE by an upsampling block 2.1's lacks), image VAEs (SD, SDXL, Flux) by
#: their decoder's 2-D input convolution; their (latent channels, spatial, temporal compression) as ComfyUI sets them
WAN_VAE_KEY, WAN22_VAE_KEY = "decoder.middle.0.residual.0.gamma", "decoder.upsamples.0.upsamples.0.residual.2.weight"
IMAGE_VAE_KEY, VIDEO_DECODER_KEY = "decoder.conv_in.weight", "decoder.mid.block_1.mix_factor"   # (SVD's video decoder)
TAESD_KEY = "taesd_decoder.1.weight"   # the tiny autoencoders of SD, SDXL, SD3 and Flux (TAESD, TAEF1)
IMAGE_VAE_CHANNELS = (4, 16)   # SD 1.5 and SDXL, Flux and SD3 (ComfyUI gives others, e.g. 64, their own strides)


#: where a checkpoint keeps its VAE's tensors (ComfyUI's ``vae_key_prefix``: SD's, and that of all-in-one files)
CHECKPOINT_VAE_PREFIXES = ("first_stage_model.", "vae.")


def vae_file_shape(path: str | None, checkpoint: bool = False) -> tuple[int, int, int] | None:
    """The latent channels, spatial and temporal compression of the VAE that ComfyUI's VAE Loader makes of the
    safetensors file at ``path`` (``checkpoint``: the VAE output of a checkpoint loader given that file), read from
    its header alone (the tensors' names and shapes; no weights are read); None for a file it does not tell
    (another format, another family, no VAE, unreadable). A Load VAE left on its first file (Flux's
    ``ae.safetensors``) decoded a Wan clip into one frame, without a word; an SD checkpoint's VAE on a Wan clip's
    decode failed after the whole run."""
    if not path or not path.endswith(".safetensors"):
        return None
    try:
        from safetensors import safe_open   # (ComfyUI's own dependency)
        with safe_open(path, framework="pt") as f:
            names = {k: k for k in f.keys()}
            if checkpoint:
                prefix = next((p for p in CHECKPOINT_VAE_PREFIXES if any(k.startswith(p) for k in names)), None)
                names = {k.removeprefix(prefix): k for k in names if prefix and k.startswith(prefix)}
            keys = set(names)
            conv_in = next((f.get_slice(names[k]).get_shape() for k in (TAESD_KEY, IMAGE_VAE_KEY) if k in keys),
                           None)
    except Exception:   # (a file ComfyUI cannot read either: its own loader says why)
        return None
    if TAESD_KEY in keys:
        return conv_in[1], 8, 1
    if WAN_VAE_KEY in keys:
        return (48, 16, 4) if WAN22_VAE_KEY in keys else (16, 8, 4)
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] in IMAGE_VAE_CHANNELS and VIDEO_DECODER_KEY not in keys:
        # (SD's x4 upscaler VAE has one downsampling less: 4x spatial)
        four = not keys & {"encoder.down.2.downsample.conv.weight", "decoder.up.3.upsample.conv.weight"}
        return conv_in[1], 4 if four else 8, 1
    return None


def likely_spaces(shape: tuple) -> list[str]:
    """The latent spaces a VAE of ``shape`` likely serves (SD 1.5 and SDXL look alike), by title."""
    return [k.title for k in KNOWN_SPACES if (k.channels, k.spatial_factor, k.temporal_factor) == shape]


def shape_said(shape: tuple) -> str:
    channels, spatial, temporal = shape
    return f"{channels}-channel latents, {spatial}x spatial" + (f", {temporal}x temporal" if temporal > 1 else "")


def vae_family(vae) -> str:
    """The VAE as an artist knows it (:func:`shape_family` of its shape)."""
    return shape_family(vae_shape(vae))


def shape_family(shape: tuple) -> str:
    """A VAE of ``shape`` as an artist knows it: its latent space's family where its shape tells ("Wan 2.1's VAE"),
    else its shape ("a VAE of 16-channel latents, 8x spatial")."""
    likely = likely_spaces(shape)
    return f"{' or '.join(likely)}'s VAE" if likely else f"a VAE of {shape_said(shape)}"


def vae_space_problem(vae, space: LatentSpace) -> str | None:
    """Why ``vae`` cannot be the codec of ``space`` (channels, spatial or temporal compression differ); None if it
    can."""
    shape = vae_shape(vae)
    if shape == (space.channels, space.spatial_factor, space.temporal_factor):
        return None
    likely = likely_spaces(shape)
    have = shape_said(shape) + (f" (the {' or '.join(likely)} latent space's)" if likely else "")
    want = f"{space.channels} channels, {space.spatial_factor}x spatial" + \
        (f", {space.temporal_factor}x temporal" if space.temporal_factor > 1 else "")
    return f"a VAE of {have}, not of the {space.title} latent space ({want})"


class ComfyVAECodec(Codec):
    """A ComfyUI VAE as the codec of ``space`` (checked to match: channels and compression)."""

    def __init__(self, vae, space: LatentSpace, who: str = "the VAE", progress=None, fits: tuple = (),
                 loader: tuple[str, str] | None = None, taken: tuple = ()):
        """``progress``: told of each call (:meth:`~.host.Progress.coding`), None for none. ``fits``: the other VAE
        inputs of the graph whose experts' space this VAE is of, left free (where it belongs, if it is on the wrong
        one); ``taken``: those with a VAE connected already. ``loader``: (title, file) of the Load VAE it comes from,
        where the graph says and that loader feeds no other of those inputs (else another file there breaks it)."""
        super().__init__()
        problem = vae_space_problem(vae, space)
        if problem and who.endswith("_vae"):   # the VAE, or the model beside it, may be the one swapped by mistake
            model = who.replace("_vae", "_model")
            label = f"{who.replace('_vae', ' VAE')} ({who})"
            held = f"{label} holds {vae_family(vae)}"
            decode_too = f"; the refined video is then in {space.latents}: decode it with that VAE too" \
                if who == "spatial_vae" else ""
            own_vae = f"connect its own VAE ({vae_file(space)}) to {label}" + \
                (" and decode the video with it" if who == "spatial_vae" else "")
            if fits:   # e.g. the Wan VAE a template wired to spatial VAE, after the spatial model became Flux
                other = f"{fits[0].replace('_vae', ' VAE')} ({fits[0]})"
                raise mismatch(f"{label} is {problem} that {model.replace('_', ' ')} ({model}) works in; it is the "
                               f"VAE of {fits[0].replace('_vae', ' model')}'s space: connect it to {other}, and "
                               f"{model.replace('_', ' ')}'s own VAE ({vae_file(space)}) to {label}{decode_too}",
                               f"{held}, which belongs on {other}", own_vae)
            if loader and own_vae_file(space):   # the file in its Load VAE is the likely mistake (a trial changed a
                title, file = loader              # template's, and was told to rewire): said first; so where the
                pick = f"pick {own_vae_file(space)} in '{title}'"   # input it belongs on has its VAE (a trial)
                raise mismatch(f"{pick}, which feeds {label}: it holds {file}, {problem} that "
                               f"{model.replace('_', ' ')} ({model}) works in", f"{label} holds {vae_family(vae)}, "
                               f"{file}", pick)
            if taken:   # one Load VAE wired to both inputs: its file is right for the other one
                other = f"{taken[0].replace('_vae', ' VAE')} ({taken[0]})"
                raise mismatch(f"{label} is {problem} that {model.replace('_', ' ')} ({model}) works in; it is the "
                               f"VAE of {taken[0].replace('_vae', ' model')}'s space, as on {other}: "
                               f"{own_vae}", f"{held}, which belongs on {other}", own_vae)
            raise mismatch(f"{label} is {problem} that {model.replace('_', ' ')} ({model}) works in: if that model "
                           f"is the one meant, connect its own VAE ({vae_file(space)}); else load the model this VAE "
                           f"belongs to", held, own_vae)
        if problem:
            raise ValueError(f"{who} is {problem}: connect that expert's own VAE ({vae_file(space)})")
        self.vae, self.space, self.who, self.progress = vae, space, who, progress
        self.pixel_channels = 3
        self.video = getattr(vae, "latent_dim", 2) == 3

    def _said(self, action: str, frames: int) -> None:
        if self.progress is not None:
            self.progress.coding(action, frames, self.who.replace("_vae", " VAE"))

    def encode_raw(self, pixels: torch.Tensor) -> torch.Tensor:
        self._said("encoding", pixels.shape[0] * pixels.shape[2])
        images = ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        b = images.shape[0]
        if self.video:   # each clip of the batch is one causal video: [F, H, W, 3] -> [1, C, T, h, w]
            raw = torch.cat([self.vae.encode(rearrange(images[i], "p f h w -> f h w p")) for i in range(b)])
        else:            # every frame an image, all frames of all clips in one batched call
            raw = rearrange(self.vae.encode(rearrange(images, "b p f h w -> (b f) h w p")),
                            "(b f) c h w -> b c f h w", b=b)
        return raw.to(pixels.device, pixels.dtype)

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        self._said("decoding", raw.shape[0] * self.space.pixel_frames(raw.shape[2]))
        if self.video:   # [B, C, T, h, w] -> [B, F, H, W, 3]
            images = self.vae.decode(raw)
            images = images.reshape(raw.shape[0], -1, *images.shape[-3:])
        else:
            b = raw.shape[0]
            images = rearrange(self.vae.decode(rearrange(raw, "b c f h w -> (b f) c h w")),
                               "(b f) h w p -> b f h w p", b=b)
        return (rearrange(images, "b f h w p -> b p f h w") * 2.0 - 1.0).to(raw.device, raw.dtype)


class VAEShelf:
    """The VAEs connected to a graph's VAE inputs, each with its input's name and, where known, the latent space of
    the expert it was connected for; a VAE serves every expert of that space."""

    def __init__(self):
        self.entries: list = []   # (input label, vae, space or None)
        self.spaces: dict = {}    # input label -> the latent space of the expert it is for, connected or not
        self.loaders: dict = {}   # input label -> (title, file) of its Load VAE
        self.progress = None

    def reporting_to(self, progress) -> "VAEShelf":
        """The codecs this shelf gives say each VAE call on ``progress`` (a :class:`~.host.Progress`, or None)."""
        self.progress = progress
        return self

    def add(self, label: str, vae, space: LatentSpace | None = None, loader: tuple | None = None) -> "VAEShelf":
        """``loader``: (title, file) of the Load VAE wired to ``label``, where the graph says."""
        if space is not None:
            self.spaces[label] = space
        if loader is not None:
            self.loaders[label] = loader
        if vae is not None:
            self.entries.append((label, vae, space))
        return self

    def extend(self, other: "VAEShelf | None") -> "VAEShelf":
        for entry in (other.entries if other is not None else ()):
            self.add(*entry)
        self.spaces.update(other.spaces if other is not None else {})
        self.loaders.update(other.loaders if other is not None else {})
        return self

    def _one_loader(self, label: str, other: str, connected: dict) -> bool:
        """Whether one Load VAE feeds both inputs: by the graph's (title, file) where it says, else by the VAE
        (``connected``: input -> VAE; two loaders of one file give one VAE object: ComfyUI caches a node's output by
        its inputs)."""
        mine, theirs = self.loaders.get(label), self.loaders.get(other)
        if mine is not None and theirs is not None:
            return mine == theirs
        return connected.get(label) is connected.get(other)

    def codec(self, space: LatentSpace, own: str | None = None) -> Codec | None:
        """The codec of ``space``: the VAE on the ``own`` input if connected (it must fit, else the error names the
        input), else a VAE connected for another expert of the same space, else one of unknown space that fits;
        None when there is none."""
        connected = {label: vae for label, vae, _ in self.entries}
        for label, vae, _ in self.entries:
            if label == own:
                fits = [other for other, where in self.spaces.items()
                        if other != own and where != space and vae_space_problem(vae, where) is None]
                free = tuple(other for other in fits if other not in connected)
                taken = tuple(other for other in fits if other in connected)
                shared = any(self._one_loader(label, other, connected) for other in taken)
                return ComfyVAECodec(vae, space, label, self.progress, free,
                                     None if shared else self.loaders.get(label), taken)
        for label, vae, where in self.entries:
            if where == space:
                return ComfyVAECodec(vae, space, label, self.progress)
        for label, vae, where in self.entries:
            if where is None and vae_space_problem(vae, space) is None:
                return ComfyVAECodec(vae, space, label, self.progress)
        return None
