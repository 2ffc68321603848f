"""ConFiner Long Segmenter: ConFiner-Long (Section 3.5) over any number of frames."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..confiner_core.chain import ChainConfig
from ..confiner_core.experts import EvaluationLog
from ..confiner_core.long import NOISE_INITS, LongConfig, generate_long, plan_segments
from ..confiner_core.prompts import parse_prompt
from . import host
from .schema import (CATEGORY, coherence_memory_input, control_inputs, control_sampling_inputs, refine_inputs,
                     seed_input, structure_noise_input)
from .types import RefineExpertsType


class ConFinerLongSegmenter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConFinerLongSegmenter",
            display_name="ConFiner Long Segmenter",
            category=CATEGORY,
            description="ConFiner-Long: generates segments of L frames one after another and keeps them "
                        "consistent with consistency initialization, coherence guidance (Eq. 12) and staggered "
                        "refinement (Eq. 13, every seam refined jointly). Each strategy can be switched off.",
            inputs=[
                io.Model.Input("control_model", tooltip="The control expert (text-to-video MODEL)."),
                io.Conditioning.Input("control_positive", tooltip="Control expert's prompt."),
                io.Conditioning.Input("control_negative", tooltip="Control expert's negative prompt."),
                RefineExpertsType.Input("experts", tooltip="From ConFiner Refine Experts."),
                io.Latent.Input("latent", tooltip="Sets the frame size and channels (e.g. Empty Latent Image, any "
                                                  "batch size); the frame count comes from 'frames'."),
                io.Int.Input("frames", default=128, min=1, max=100000, tooltip="Frames to generate."),
                io.Int.Input("segment_length", default=16, min=2, max=256, step=2,
                             tooltip="Frames per segment L (16 for AnimateDiff / ModelScope); even when staggered."),
                seed_input(),
                *control_inputs("control_"),
                *refine_inputs(),
                io.Combo.Input("noise_init", options=list(NOISE_INITS), default="shuffle",
                               tooltip="shuffle: consistency initialization (frame-shuffled base noise); freenoise: "
                                       "FreeNoise rescheduling; independent: fresh noise per segment (off)."),
                io.Int.Input("freenoise_stride", default=4, min=1, max=256,
                             tooltip="FreeNoise stride (window = segment_length)."),
                io.Float.Input("gamma", default=0.1, min=0.0, max=0.5, step=0.01,
                               tooltip="Coherence guidance strength (Eq. 12): pulls each control step's noise "
                                       "prediction towards the previous segment's. 0 switches it off."),
                io.Boolean.Input("staggered", default=True,
                                 tooltip="Staggered refinement: refine the second half of each segment together "
                                         "with the first half of the next, so seams are refined jointly."),
                io.String.Input("segment_prompts", default="", multiline=True, optional=True,
                                tooltip="Prompt travel: '0: prompt | 64: prompt from frame 64 | 128: ...', a key on "
                                        "every entry. Needs "
                                        "'clip'. Empty: the connected conditioning everywhere."),
                io.Clip.Input("clip", optional=True, tooltip="Text encoder for segment_prompts (SD 1.5 family)."),
                *control_sampling_inputs("control_"),
                structure_noise_input(),
                coherence_memory_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="All frames.")],
        )

    @classmethod
    def execute(cls, control_model, control_positive, control_negative, experts, latent, frames, segment_length,
                seed, control_steps, control_cfg, control_sampler, te, refine_steps, mode, matching, noise_init,
                freenoise_stride, gamma, staggered, segment_prompts="", clip=None, control_spacing="trailing",
                control_eta=0.0, structure_noise="spatial", coherence_memory="guided") -> io.NodeOutput:
        chain = ChainConfig(control_steps=control_steps, control_sampler=control_sampler,
                            control_spacing=control_spacing, control_eta=control_eta, te=te,
                            refine_steps=refine_steps, mode=mode, matching=matching, structure_noise=structure_noise)
        long = LongConfig(segment_length=segment_length, noise_init=noise_init, freenoise_window=segment_length,
                          freenoise_stride=freenoise_stride, gamma=gamma, staggered=staggered,
                          coherence_memory=coherence_memory)
        long.validate()
        plan = plan_segments(frames, segment_length, staggered)
        prompts = (parse_prompt(segment_prompts, frames, option="segment_prompts")
                   if segment_prompts and segment_prompts.strip() else None)
        if prompts is not None and clip is None:
            raise ValueError("segment_prompts need the 'clip' input to encode them; connect a CLIP or clear the prompts")
        log = EvaluationLog()
        control = host.bind(control_model, control_positive, control_negative, control_cfg, "control", seed, log, clip)
        spatial, temporal = experts.bind(seed, log, clip)
        frame = host.latent_in(control_model, latent, "latent")[:, :, :1]
        b, c, _, h, w = frame.shape
        total = plan.structures * control_steps + len(plan.windows) * refine_steps
        progress = host.Progress(control_model, total)
        windows = []
        generate_long(control, spatial, temporal, plan, (b, c, h, w), chain, long, torch.Generator().manual_seed(seed),
                      lambda x, window: windows.append(x[:, :, :plan.window_frames(window)].cpu()), prompts, progress,
                      frame.device)
        host.log_cost("ConFiner Long Segmenter", log)
        return io.NodeOutput(host.latent_out(control_model, torch.cat(windows, dim=2), latent))
