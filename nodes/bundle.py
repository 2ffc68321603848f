"""The Refine Experts bundle: the spatial and temporal experts that one socket (``CONFINER_EXPERTS``) carries from
the ConFiner Refine Experts node to the samplers, with the checks that need the experts together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..confiner_core.latent_spaces import SD15, WAN21, check_bridges
from . import host
from .codecs import VAEShelf, vae_file
from .types import REFINE_EXPERTS, VAE_INPUTS, connect_vae


@dataclass
class RefineExperts:
    """The spatial and temporal experts with their own conditioning, guidance and (for a bridge between latent
    spaces) VAEs, carried as one socket so an expert can be swapped by hand without rewiring the samplers.

    ``spatial_frames``: how the spatial (image) expert takes a clip of a video latent space (``host.FRAME_MODES``);
    ``temporal_low_noise_model``: with ``temporal_model`` as the high-noise half, an expert pair switching at
    ``temporal_boundary`` (Wan 2.2 A14B)."""

    spatial_model: Any
    spatial_positive: Any
    spatial_negative: Any
    spatial_cfg: float
    temporal_model: Any = None
    temporal_positive: Any = None
    temporal_negative: Any = None
    temporal_cfg: float = 1.0
    spatial_vae: Any = None
    temporal_vae: Any = None
    spatial_frames: str = "latent frames"
    temporal_low_noise_model: Any = None
    temporal_low_noise_cfg: float = 1.0
    temporal_boundary: float = 0.875
    temporal_files: tuple = (None, None)   # the loaders' file names of temporal_model and its low-noise model
    vae_loaders: dict = field(default_factory=dict)   # VAE input -> (title, file) of the Load VAE wired to it
    summary: str = ""   # the text under the bundle (what it holds), shown again by the nodes that read it

    def warn_halves(self, progress, loaded: tuple = ()) -> None:
        """A Wan 2.2 A14B half in the temporal role where the other belongs (:meth:`~.host.Progress.warn_halves`).
        ``loaded``: the graph's loaders as the sampling node reads them at its run
        (:func:`~.host.loaded_files`): the bundle's result is reused from ComfyUI's cache when only another loader
        changed, and a list it kept named a low-noise file in a loader that no longer held it."""
        progress.warn_halves("temporal", "ConFiner Refine Experts", "temporal model (temporal_model)",
                             "temporal low-noise model (temporal_low_noise_model)", *self.temporal_files, loaded)

    def spatial_role(self) -> dict:
        """The spatial expert's arguments of :func:`~.ade.motion_model_problems` (a motion model on the image model's
        role), where the temporal expert relates frames: beside an image temporal model it is the swap
        :func:`~.host.frames_alone` names already."""
        if self.temporal_model is None or not host.relates_frames(self.temporal_model):
            return {}
        return {"spatial_model": self.spatial_model, "spatial_cfg": self.spatial_cfg}

    @property
    def models(self) -> dict:
        return {"spatial": self.spatial_model, "temporal": self.temporal_model}

    def shelf(self):
        """The bundle's VAEs, each noted with the latent space of the expert it was connected for."""
        shelf = VAEShelf()
        for role, model in self.models.items():
            vae = getattr(self, f"{role}_vae")
            shelf.add(VAE_INPUTS[role][0], vae, host.space_of(model) if model is not None else None,
                      self.vae_loaders.get(VAE_INPUTS[role][0]))
        return shelf

    def check_vaes(self) -> None:
        """Each connected VAE must be one of its expert's latent space; refused naming the input (nothing runs)."""
        shelf = self.shelf()
        for role, model in self.models.items():
            if getattr(self, f"{role}_vae") is not None:
                if model is None:
                    raise ValueError(f"{role} VAE ({role}_vae) on {REFINE_EXPERTS} is connected but {role} model "
                                     f"({role}_model) is not: connect the {role} expert's MODEL, or remove the VAE")
                shelf.codec(host.space_of(model), VAE_INPUTS[role][0])
        space = host.space_of(self.spatial_model)
        if self.spatial_frames == host.PIXEL_FRAMES and space.temporal_factor > 1 and shelf.codec(space) is None:
            raise ValueError(f"spatial expert frames (spatial_frames) 'pixel frames' decodes the clip and encodes "
                             f"every pixel frame with the spatial expert's VAE, but none is connected: connect a VAE "
                             f"of the {space.title} latent space ({vae_file(space)}) to spatial VAE (spatial_vae) on "
                             f"{REFINE_EXPERTS}, or use 'latent frames'")

    def check_bridge(self) -> None:
        """Spatial and temporal experts of different latent spaces hand the video over at every step of the
        coordinated mode, through both VAEs (mode alternate, which steps both on one sample, refuses them). The mode is
        the sampler's (temporal mode needs no spatial VAE), which checks it; the bundle node's ``execute`` asks this
        beside its other problems (an artist who put Wan in the spatial role met its text encoder there, then the VAEs
        on the Refine Sampler, a Run each). The spatial expert on pixel frames works in the temporal expert's pixels:
        the sampler checks that case."""
        if self.temporal_model is None or self.spatial_frames == host.PIXEL_FRAMES:
            return
        shelf = self.shelf()
        ends = {role: shelf.codec(host.space_of(model)) or host.space_of(model) for role, model in self.models.items()}
        try:
            check_bridges([("spatial", "temporal")], ends, self.vae_fixes())
        except ValueError as e:
            raise ValueError(f"in refine mode coordinated (the default), {e}") from None

    def check_mode(self, mode: str) -> None:
        """Refine modes other than 'standard' evaluate the temporal expert."""
        if mode != "standard" and self.temporal_model is None:
            # the video model an artist has at hand: AnimateDiff beside SD 1.5, the Wan of the control stage beside
            # a model of Wan's space (Qwen-Image), else the control stage's
            example = {SD15: "SD 1.5 + AnimateDiff", WAN21: "Wan, e.g. the control expert's model"}.get(
                host.space_of(self.spatial_model), "a video model, e.g. the control expert's")
            raise ValueError(f"refine mode '{mode}' needs a temporal expert, but temporal model (temporal_model) on "
                             f"ConFiner Refine Experts is not connected: connect a text-to-video MODEL ({example}) "
                             f"or set refine mode to 'standard'")

    def vae_fixes(self, control: tuple | None = None) -> dict:
        """Role -> how to give that expert a VAE (for the core's bridge checks); ``control``: (input, node) of the
        control expert's VAE."""
        fixes = {role: connect_vae(*where) for role, where in VAE_INPUTS.items()}
        if control:
            fixes["control"] = connect_vae(*control)
        return fixes

    def bind(self, seed: int, log=None, clip=None, progress=None, vaes=None):
        """The two experts as core denoisers; ``vaes`` (default: the bundle's own) gives them their codecs."""
        vaes = vaes if vaes is not None else self.shelf()
        spatial = host.bind(self.spatial_model, self.spatial_positive, self.spatial_negative, self.spatial_cfg,
                            "spatial", seed, log, clip, progress, frames=self.spatial_frames, vaes=vaes,
                            vae_input=VAE_INPUTS["spatial"][0])
        temporal = None
        if self.temporal_model is not None:
            low = host.LowNoise.of(self.temporal_low_noise_model, self.temporal_low_noise_cfg, self.temporal_boundary,
                                   "temporal_low_noise_model", "temporal_model")
            temporal = host.bind(self.temporal_model, self.temporal_positive, self.temporal_negative,
                                 self.temporal_cfg, "temporal", seed, log, clip, progress, vaes=vaes,
                                 vae_input=VAE_INPUTS["temporal"][0], low_noise=low)
        return spatial, temporal
