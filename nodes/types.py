"""Socket types the pack adds to ComfyUI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

RefineExpertsType = io.Custom("CONFINER_EXPERTS")


def latent_space(model) -> str:
    return type(model.get_model_object("latent_format")).__name__


@dataclass
class RefineExperts:
    """The spatial and temporal experts with their own conditioning and guidance, carried as one socket so an
    expert can be swapped by hand without rewiring the samplers."""

    spatial_model: Any
    spatial_positive: Any
    spatial_negative: Any
    spatial_cfg: float
    temporal_model: Any = None
    temporal_positive: Any = None
    temporal_negative: Any = None
    temporal_cfg: float = 1.0

    def check_latent_spaces(self, control_model=None) -> None:
        """Every expert of a chain works in one VAE latent space; checked on the models alone (nothing runs)."""
        spaces = {"spatial": latent_space(self.spatial_model)}
        if self.temporal_model is not None:
            spaces["temporal"] = latent_space(self.temporal_model)
        if control_model is not None:
            spaces["control"] = latent_space(control_model)
        if len(set(spaces.values())) > 1:
            found = ", ".join(f"{role} {space}" for role, space in spaces.items())
            raise ValueError(f"the experts work in different latent spaces ({found}): all experts of a chain must "
                             f"share one VAE latent space; pick experts of the same family")

    def check_mode(self, mode: str) -> None:
        """Refine modes other than 'standard' evaluate the temporal expert."""
        if mode != "standard" and self.temporal_model is None:
            raise ValueError(f"refine mode '{mode}' needs a temporal expert, but temporal_model on ConFiner Refine "
                             f"Experts is not connected: connect a text-to-video MODEL (e.g. SD 1.5 + AnimateDiff) "
                             f"or set refine mode to 'standard'")

    def bind(self, seed: int, log=None, clip=None, progress=None):
        from .host import bind

        spatial = bind(self.spatial_model, self.spatial_positive, self.spatial_negative, self.spatial_cfg,
                       "spatial", seed, log, clip, progress)
        temporal = None
        if self.temporal_model is not None:
            temporal = bind(self.temporal_model, self.temporal_positive, self.temporal_negative, self.temporal_cfg,
                            "temporal", seed, log, clip, progress)
        return spatial, temporal
