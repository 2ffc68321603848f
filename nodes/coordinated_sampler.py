"""ConFiner Coordinated Sampler: structure extraction (Eq. 6) and refinement (Eq. 8 / Algorithm 1)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..confiner_core.chain import ChainConfig, refine_structure, validate_refinement
from ..confiner_core.experts import EvaluationLog
from . import host
from .schema import CATEGORY, refine_inputs, seed_input, structure_noise_input
from .types import RefineExpertsType


class ConFinerCoordinatedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConFinerCoordinatedSampler",
            display_name="ConFiner Coordinated Sampler",
            category=CATEGORY,
            description="Noises the structure to T_e on the spatial expert's schedule and refines it: coordinated "
                        "denoising hands the sample between the spatial and temporal experts through the predicted "
                        "clean latent at every step (3 evaluations per step).",
            inputs=[
                RefineExpertsType.Input("experts", tooltip="From ConFiner Refine Experts."),
                io.Latent.Input("structure", tooltip="The coarse video from ConFiner Control Expert (or any video "
                                                     "latent of the experts' family, e.g. a VAE-encoded clip)."),
                *refine_inputs(),
                seed_input(),
                structure_noise_input(),
                io.Model.Input("control_model", optional=True,
                               tooltip="The control expert, for structure_noise 'control' (its schedule noises the "
                                       "structure); not evaluated."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The refined video.")],
        )

    @classmethod
    def execute(cls, experts, structure, te, refine_steps, mode, matching, seed, structure_noise="spatial",
                control_model=None) -> io.NodeOutput:
        config = ChainConfig(te=te, refine_steps=refine_steps, mode=mode, matching=matching,
                             structure_noise=structure_noise)
        control_schedule = host.schedule_of(control_model, "control") if control_model is not None else None
        log = EvaluationLog()
        spatial, temporal = experts.bind(seed, log)
        x = host.latent_in(experts.spatial_model, structure, "structure")
        validate_refinement(spatial, temporal, tuple(x.shape), config, control_schedule=control_schedule)
        progress = host.Progress(experts.spatial_model, refine_steps)
        latent = refine_structure(spatial, temporal, x, config, torch.Generator().manual_seed(seed), progress,
                                  control_schedule=control_schedule)
        host.log_cost("ConFiner Coordinated Sampler", log)
        return io.NodeOutput(host.latent_out(experts.spatial_model, latent, structure))
