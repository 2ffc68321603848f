"""ConFiner Refine Sampler (node id ConFinerCoordinatedSampler): structure extraction (Eq. 6) and refinement in
every mode (Eq. 8 / Algorithm 1 / Eq. 7)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..confiner_core.chain import ChainConfig, refine_structure, validate_refinement
from ..confiner_core.experts import EvaluationLog
from . import ade, host, sessions
from .schema import CATEGORY, refine_inputs, refine_problem, seed_input, structure_noise_input, widget_problem
from .types import RefineExpertsType


class ConFinerCoordinatedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConFinerCoordinatedSampler",
            display_name="ConFiner Refine Sampler",
            category=CATEGORY,
            description="Stage 2: noises the structure to T_e on the spatial expert's schedule and refines it in "
                        "the chosen mode. coordinated (the paper's method) hands the sample between the spatial "
                        "and temporal experts through the predicted clean latent at every step (3 evaluations per "
                        "step); standard, temporal and alternate are the paper's ablations. The experts are checked "
                        "before the structure is made, so a wrong combination fails with no model evaluated.",
            inputs=[
                RefineExpertsType.Input("experts", tooltip="From ConFiner Refine Experts (bundle)."),
                io.Latent.Input("structure", lazy=True,
                                tooltip="The coarse video from ConFiner Control Expert (or any video latent of the "
                                        "experts' family, e.g. a VAE-encoded clip). Made only after the experts "
                                        "passed their checks."),
                *refine_inputs(),
                seed_input("refine"),
                structure_noise_input(),
                io.Model.Input("control_model", optional=True,
                               tooltip="Only for structure noise schedule 'control': the control expert, whose "
                                       "schedule noises the structure (Algorithm 1, line 4); not evaluated."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The refined video (decode with VAE Decode).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, te, refine_steps, mode, matching, structure_noise="spatial"):
        # combos are named too: ComfyUI 0.3.64 does not check a V3 combo's value itself
        return (widget_problem(cls, te=te, refine_steps=refine_steps, mode=mode, matching=matching,
                               structure_noise=structure_noise)
                or refine_problem(te, refine_steps) or True)

    @classmethod
    def check_lazy_status(cls, experts, te, refine_steps, mode, matching, seed, structure=None,
                          structure_noise="spatial", control_model=None, **kwargs):
        """Runs once the experts are bundled and before the structure is computed: a wrong combination (a mode
        without its temporal expert, mixed latent spaces, T_e outside a schedule) fails here, with 0 evaluations."""
        if structure is None:
            cls.check_experts(experts, cls.config(te, refine_steps, mode, matching, structure_noise), seed,
                              control_model)
            return ["structure"]
        return []

    @staticmethod
    def config(te, refine_steps, mode, matching, structure_noise) -> ChainConfig:
        return ChainConfig(te=te, refine_steps=refine_steps, mode=mode, matching=matching,
                           structure_noise=structure_noise)

    @classmethod
    def check_experts(cls, experts, config: ChainConfig, seed, control_model=None):
        experts.check_mode(config.mode)
        experts.check_latent_spaces()
        spatial, temporal = experts.bind(seed)
        # the frame count is not known yet: check everything else on a one-frame shape of the experts' channels
        validate_refinement(spatial, temporal, (1, spatial.expert.latent_channels, 1, 1, 1), config,
                            control_schedule=cls.control_schedule(control_model))

    @staticmethod
    def control_schedule(control_model):
        return host.schedule_of(control_model, "control") if control_model is not None else None

    @classmethod
    def execute(cls, experts, structure, te, refine_steps, mode, matching, seed, structure_noise="spatial",
                control_model=None) -> io.NodeOutput:
        config = cls.config(te, refine_steps, mode, matching, structure_noise)
        control_schedule = cls.control_schedule(control_model)
        experts.check_mode(mode)
        ade.new_run()
        log = EvaluationLog()
        progress = host.Progress(experts.spatial_model, host.refine_evaluations(config), host.node_id(cls))
        spatial, temporal = experts.bind(seed, log, progress=progress)
        x = host.latent_in(experts.spatial_model, structure, "structure")
        validate_refinement(spatial, temporal, tuple(x.shape), config, control_schedule=control_schedule)
        host.plan_refinement(spatial, temporal, config)
        with sessions.stage():  # one sampling call per expert for the stage's evaluations
            latent = refine_structure(spatial, temporal, x, config, torch.Generator().manual_seed(seed),
                                      control_schedule=control_schedule)
        host.log_cost("ConFiner Refine Sampler", log)
        return io.NodeOutput(host.latent_out(experts.spatial_model, latent, structure))
