"""ConFiner Refine Experts: bundles the spatial and temporal experts (runs nothing)."""

from __future__ import annotations

from comfy_api.latest import io

from .schema import CATEGORY, widget_problem
from .types import RefineExperts, RefineExpertsType


class ConFinerRefineExperts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConFinerRefineExperts",
            display_name="ConFiner Refine Experts (bundle)",
            category=CATEGORY,
            description="Only bundles, runs nothing: the spatial expert (a text-to-image model applied per frame, "
                        "e.g. SD 1.5) and the temporal expert (a text-to-video model, e.g. SD 1.5 + AnimateDiff) "
                        "with their own prompts and guidance, as one socket for ConFiner Refine Sampler and ConFiner "
                        "Long Segmenter. Swap an expert here without rewiring. Both must share the control expert's "
                        "latent space (same VAE family).",
            inputs=[
                io.Model.Input("spatial_model", tooltip="Spatial expert: adds frame detail (text-to-image MODEL)."),
                io.Conditioning.Input("spatial_positive", tooltip="Spatial expert's prompt (its own text encoder)."),
                io.Conditioning.Input("spatial_negative", tooltip="Spatial expert's negative prompt."),
                io.Float.Input("spatial_cfg", display_name="spatial cfg", default=7.5, min=0.0, max=100.0, step=0.1,
                               round=0.01, tooltip="Spatial expert guidance. 7.5 is our default (usual for SD 1.5); "
                                                   "the paper states no cfg value."),
                io.Model.Input("temporal_model", optional=True,
                               tooltip="Temporal expert: keeps frames coherent (text-to-video MODEL, e.g. SD 1.5 + "
                                       "AnimateDiff v3). Needed by refine modes coordinated, temporal and alternate; "
                                       "mode standard works without it."),
                io.Conditioning.Input("temporal_positive", optional=True,
                                      tooltip="Temporal expert's prompt; defaults to the spatial one."),
                io.Conditioning.Input("temporal_negative", optional=True,
                                      tooltip="Temporal expert's negative prompt; defaults to the spatial one."),
                io.Float.Input("temporal_cfg", display_name="temporal cfg", default=7.5, min=0.0, max=100.0,
                               step=0.1, round=0.01, tooltip="Temporal expert guidance. 7.5 is our default; the "
                                                             "paper states no cfg value."),
            ],
            outputs=[RefineExpertsType.Output(display_name="experts",
                                              tooltip="For ConFiner Refine Sampler or ConFiner Long Segmenter.")],
        )

    @classmethod
    def validate_inputs(cls, spatial_cfg, temporal_cfg):
        return widget_problem(cls, spatial_cfg=spatial_cfg, temporal_cfg=temporal_cfg) or True

    @classmethod
    def execute(cls, spatial_model, spatial_positive, spatial_negative, spatial_cfg, temporal_model=None,
                temporal_positive=None, temporal_negative=None, temporal_cfg=7.5) -> io.NodeOutput:
        experts = RefineExperts(
            spatial_model, spatial_positive, spatial_negative, spatial_cfg, temporal_model,
            temporal_positive if temporal_positive is not None else spatial_positive,
            temporal_negative if temporal_negative is not None else spatial_negative, temporal_cfg)
        experts.check_latent_spaces()
        return io.NodeOutput(experts)
