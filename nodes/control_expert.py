"""ConFiner Control Expert: stage 1 (Eq. 5), the coarse structure video."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..confiner_core.chain import ChainConfig, generate_structure
from ..confiner_core.experts import EvaluationLog
from ..confiner_core.sampling import randn_like
from . import host
from .schema import CATEGORY, control_inputs, control_sampling_inputs, seed_input


class ConFinerControlExpert(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConFinerControlExpert",
            display_name="ConFiner Control Expert",
            category=CATEGORY,
            description="Lays out structure and motion with a text-to-video model in a few steps on its own "
                        "schedule (ConFiner Eq. 5), e.g. AnimateDiff-Lightning through AnimateDiff-Evolved.",
            inputs=[
                io.Model.Input("model", tooltip="The control expert: a text-to-video MODEL (e.g. SD 1.5 + "
                                                "AnimateDiff-Lightning motion model)."),
                io.Conditioning.Input("positive", tooltip="What the video shows."),
                io.Conditioning.Input("negative", tooltip="What to avoid (only used when cfg > 1)."),
                io.Latent.Input("latent", tooltip="Sets size and frame count: an SD-style frame batch [F,4,h,w] "
                                                  "or a native video latent [B,C,T,h,w]. Its content is ignored "
                                                  "unless it is a noise latent from ConFiner Noise Rescheduler."),
                seed_input(),
                *control_inputs(),
                io.Boolean.Input("latent_is_noise", default=False,
                                 tooltip="Use the latent as the initial noise (from ConFiner Noise Rescheduler) "
                                         "instead of drawing fresh noise from the seed."),
                *control_sampling_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="structure", tooltip="The coarse video V_0.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, cfg, sampler, latent_is_noise=False,
                spacing="trailing", eta=0.0) -> io.NodeOutput:
        config = ChainConfig(control_steps=steps, control_sampler=sampler, control_spacing=spacing, control_eta=eta)
        config.validate()
        log = EvaluationLog()
        control = host.bind(model, positive, negative, cfg, "control", seed, log)
        generator = torch.Generator().manual_seed(seed)
        if latent_is_noise:
            noise = host.noise_in(model, latent)
        else:
            noise = randn_like(host.latent_in(model, latent, "control"), generator)
        progress = host.Progress(model, steps)
        structure = generate_structure(control, noise, config, generator, callback=progress)
        host.log_cost("ConFiner Control Expert", log)
        return io.NodeOutput(host.latent_out(model, structure, latent))
