"""Socket types the pack adds to ComfyUI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

RefineExpertsType = io.Custom("CONFINER_EXPERTS")


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

    def bind(self, seed: int, log=None, clip=None):
        from .host import bind

        spatial = bind(self.spatial_model, self.spatial_positive, self.spatial_negative, self.spatial_cfg,
                       "spatial", seed, log, clip)
        temporal = None
        if self.temporal_model is not None:
            temporal = bind(self.temporal_model, self.temporal_positive, self.temporal_negative, self.temporal_cfg,
                            "temporal", seed, log, clip)
        return spatial, temporal
