"""ConFiner Control Expert: stage 1 (Eq. 5), the coarse structure video."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..confiner_core.chain import ChainConfig, control_stage
from ..confiner_core.experts import EvaluationLog
from ..confiner_core.sampling import randn_like
from . import ade, host, model_files, sessions
from .schema import (CATEGORY, CONTROL_ETA, check_widgets, control_inputs, control_sampling_inputs, input_place,
                     low_noise_inputs, seed_input)


class ConFinerControlExpert(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConFinerControlExpert",
            display_name="ConFiner Control Expert",
            category=CATEGORY,
            description="Makes a rough first version of the video, its layout and motion, in a few quick steps "
                        "with a text-to-video model: e.g. SD 1.5 + AnimateDiff-Lightning through AnimateDiff-Evolved, "
                        "or Wan 2.1 / Wan 2.2 A14B (high- and low-noise models as one expert). Connect its output, "
                        "the structure, to ConFiner Refine Sampler, which turns it into the finished video. "
                        "(ConFiner's stage 1, Eq. 5.)",
            inputs=[
                io.Model.Input("model", tooltip="The control expert: a text-to-video MODEL (e.g. SD 1.5 + "
                                                "AnimateDiff-Lightning motion model, Wan 2.1); with a low-noise "
                                                "model connected, the high-noise half (Wan 2.2 A14B high noise)."),
                io.Conditioning.Input("positive", tooltip="What the video shows."),
                io.Conditioning.Input("negative", tooltip="What to avoid (only used when control cfg is not 1)."),
                io.Latent.Input("latent", tooltip="Sets size and frame count: an SD-style frame batch [F,4,h,w] "
                                                  "(Empty Latent Image, batch size = frames) or a native video "
                                                  "latent [B,C,T,h,w] (Wan: Empty HunyuanVideo 1.0 Latent, "
                                                  "length 4k+1, e.g. 81). Its content is ignored unless 'use latent "
                                                  "as noise' is on."),
                seed_input("control"),
                *control_inputs(),
                io.Boolean.Input("latent_is_noise", display_name="use latent as noise", default=False,
                                 tooltip="Use the latent as the initial noise (the noise_latent output of ConFiner "
                                         "Noise Rescheduler) instead of drawing fresh noise from the seed. An empty "
                                         "(all-zero) latent is refused."),
                *control_sampling_inputs(),
                *low_noise_inputs("", "model", 1.0),
            ],
            outputs=[io.Latent.Output(display_name="structure", tooltip="The coarse video (layout and motion) for "
                                                                        "ConFiner Refine Sampler's structure input.")],
            # prompt: the models' file names (model_files); extra_pnginfo: the canvas, for a bypassed Refine Sampler
            hidden=[io.Hidden.unique_id, io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    @host.shows_refusals
    def execute(cls, model, positive, negative, latent, seed, steps, cfg, sampler, latent_is_noise=False,
                spacing="trailing", eta=0.0, low_noise_model=None, low_noise_cfg=1.0,
                boundary=0.875) -> io.NodeOutput:
        check_widgets(cls, seed=seed, steps=steps, cfg=cfg, sampler=sampler, spacing=spacing, eta=eta,
                      low_noise_cfg=low_noise_cfg, boundary=boundary)
        for video_model, name in ((model, "model"), (low_noise_model, "low_noise_model")):
            host.check_video_role(video_model, "control", file=host.input_file(cls, name),
                                  where=input_place(cls, name))
        # what the inputs show, in one message, the model's prompt first: a trial's Wan model on the SD template was
        # told of its prompt, then (a Run later) of its latent
        negative_used = negative if negative is not None else positive
        try:   # (read once: the noise itself, or the latent whose size the noise takes)
            given, latent_problem = (host.noise_in(model, latent) if latent_is_noise else
                                     host.latent_in(model, latent, "control")), None
        except ValueError as e:
            given, latent_problem = None, e
        host.refuse_all([host.problem_of(host.check_text_width, model, "control", positive, negative_used, cfg),
                         latent_problem])
        config = ChainConfig(control_steps=steps, control_sampler=sampler, control_spacing=spacing, control_eta=eta)
        config.validate()
        ade.new_run()
        log = EvaluationLog()
        progress = host.Progress(model, steps, host.node_id(cls), seed=seed)
        progress.files = (host.input_file(cls, "model"),)
        progress.warn_ignored_noise({"control": model})
        progress.warn_frames_alone({"control": model},
                                   bypassed=host.bypassed_motion_nodes(cls, {"control": ("model",)}))
        progress.warn_motion_models(control_model=model, control_steps=steps, loaded=host.motion_model_files(cls))
        progress.warn_halves("control", "ConFiner Control Expert", "model", "low-noise model (low_noise_model)",
                             host.input_file(cls, "model"), host.input_file(cls, "low_noise_model"),
                             host.loaded_files(cls))
        progress.warn_unused(config, {"control_eta": CONTROL_ETA})
        for sampler_id, title in host.bypassed_takers(cls, "ConFinerCoordinatedSampler"):
            # the run saved the structure, decoded, as if refined, and said nothing: a bypassed node never runs, so
            # its text is set from here
            progress.warn(f"'{title}' takes this structure but is bypassed: the video made from it is the control "
                          f"expert's structure, unrefined; un-bypass it (Ctrl+B) to refine it",
                          "warning: Refine Sampler bypassed: the video is unrefined")
            host.show_text(sampler_id, "bypassed: the video after it is the Control Expert's\nstructure, unrefined "
                                       "(Ctrl+B un-bypasses it)")
        progress.warn_distilled_control(model, steps, cfg, sampler)
        if latent.get(host.NOISE_KEY) and not latent_is_noise:   # read for its size alone: the noise is drawn anew
            progress.warn("the latent is ConFiner Noise Rescheduler's noise_latent, but 'use latent as noise' "
                          "(latent_is_noise) is off: only its size is used and the noise is drawn from the seed; "
                          "switch it on", "warning: noise latent read for its size only")
        control = host.bind(model, positive, negative, cfg, "control", seed, log, progress=progress,
                            low_noise=host.LowNoise.of(low_noise_model, low_noise_cfg, boundary, "low_noise_model",
                                                       "model"))
        if latent_is_noise:
            noise = given
            if not bool(torch.isfinite(noise).all()):
                raise ValueError("'use latent as noise' (latent_is_noise) is on but the latent holds NaN or infinity: "
                                 "connect the noise_latent output of ConFiner Noise Rescheduler, or switch it off")
            if not bool(noise.abs().amax() > 0):
                # a bypassed Noise Rescheduler passes its empty latent on: "connect the noise_latent output" was said
                # of one connected
                came = model_files.came_from_other(
                    model_files.input_source(host.queued_prompt(cls), host.node_id(cls), "latent"),
                    "ConFinerNoiseRescheduler")
                raise ValueError(f"'use latent as noise' (latent_is_noise) is on but the latent is empty (all "
                                 f"zeros){came}: connect the noise_latent output of ConFiner Noise Rescheduler"
                                 + (", and un-bypass it if it is connected" if came else "") + ", or switch it off")
            generator = host.item_generators(seed, noise.shape[0], latent)
            if not (sampler == "ddim" and eta > 0):   # the only draw the seed serves here is DDIM's eta noise
                progress.seed = None
                progress.note("control seed unused: the noise is the latent's")
        else:
            generator = host.item_generators(seed, given.shape[0], latent)
            noise = randn_like(given, generator)
        host.check_frames(control, noise.shape[2])
        # the frames the clip holds: a video latent's length rounds down to the space's (Wan: 4k+1, 16 -> 13)
        n = control.expert.latent_space.pixel_frames(noise.shape[2])
        frames = f"{n} frame{'s' if n != 1 else ''}"
        progress.about = [f"{noise.shape[0]} clips of {frames}" if noise.shape[0] > 1 else frames]
        host.plan_control(control, config)
        # one sampling call per expert for the stage (CONFINER_STAGE_SESSIONS); the node's text says if it stops early
        with progress.running(), sessions.stage():
            structure = control_stage(control, noise, config, generator)   # (warned above, under the node)
        host.log_cost("ConFiner Control Expert", log, host.node_id(cls))
        return progress.output({**host.latent_out(model, structure, latent), host.CONTROL_STEPS_KEY: steps})
