"""ConFiner Refine Experts: bundles the spatial and temporal experts (runs nothing)."""

from __future__ import annotations

from comfy_api.latest import io

from . import ade, host
from .bundle import RefineExperts
from .host import FRAME_MODES, LATENT_FRAMES
from .schema import CATEGORY, SPATIAL_FRAMES, check_widgets, input_place, low_noise_inputs
from .types import RefineExpertsType


class ConFinerRefineExperts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConFinerRefineExperts",
            display_name="ConFiner Refine Experts (bundle)",
            category=CATEGORY,
            description="Collects the two models that refine the video, each with its own prompts and guidance: "
                        "an image model for detail in every frame (the spatial expert, e.g. SD 1.5, Qwen-Image, FLUX.1, or "
                        "Wan at one frame) and a video model for smooth motion (the temporal expert, e.g. SD 1.5 + "
                        "AnimateDiff, Wan 2.1/2.2). Runs nothing itself: connect it to ConFiner Refine Sampler or "
                        "ConFiner Long Video, and swap an expert here without rewiring. Experts of different latent "
                        "spaces (e.g. SD 1.5 with Wan) are bridged through their VAEs: connect each one's VAE; "
                        "experts of one space need none.",
            inputs=[
                io.Model.Input("spatial_model", display_name="spatial model",
                               tooltip="Spatial expert: adds frame detail (text-to-image MODEL)."),
                io.Conditioning.Input("spatial_positive", display_name="spatial positive",
                                      tooltip="Spatial expert's prompt (its own text encoder)."),
                io.Conditioning.Input("spatial_negative", display_name="spatial negative",
                                      tooltip="Spatial expert's negative prompt."),
                io.Float.Input("spatial_cfg", display_name="spatial cfg", default=7.5, min=0.0, max=100.0, step=0.1,
                               round=0.01, tooltip="Spatial expert guidance. 7.5 is our default (usual for SD 1.5); "
                                                   "the paper states no cfg value. FLUX.1-dev: 1, with its guidance "
                                                   "on FluxGuidance (above 1 also runs the negative: twice the cost)."),
                io.Model.Input("temporal_model", display_name="temporal model", optional=True,
                               tooltip="Temporal expert: keeps frames coherent (text-to-video MODEL, e.g. SD 1.5 + "
                                       "AnimateDiff v3). Needed by refine modes coordinated, temporal and alternate; "
                                       "mode standard works without it."),
                io.Conditioning.Input("temporal_positive", display_name="temporal positive",
                                      optional=True,
                                      tooltip="Temporal expert's prompt; defaults to the spatial one."),
                io.Conditioning.Input("temporal_negative", display_name="temporal negative",
                                      optional=True,
                                      tooltip="Temporal expert's negative prompt; defaults to the spatial one."),
                io.Float.Input("temporal_cfg", display_name="temporal cfg", default=7.5, min=0.0, max=100.0,
                               step=0.1, round=0.01, tooltip="Temporal expert guidance. 7.5 is our default; the "
                                                             "paper states no cfg value."),
                io.Vae.Input("spatial_vae", display_name="spatial VAE", optional=True,
                             tooltip="Only for a bridge: the spatial expert's VAE, needed when it works in another "
                                     "latent space than an expert it hands samples to (e.g. SD 1.5 or FLUX.1 with "
                                     "Wan: Flux's space is its own, so it always needs its VAE), and for 'pixel "
                                     "frames'. A VAE serves every expert of its latent space."),
                io.Vae.Input("temporal_vae", display_name="temporal VAE", optional=True,
                             tooltip="Only for a bridge: the temporal expert's VAE (e.g. the Wan 2.1 VAE when the "
                                     "spatial expert is SD 1.5). A VAE serves every expert of its latent space."),
                io.Combo.Input("spatial_frames", display_name=SPATIAL_FRAMES, options=list(FRAME_MODES),
                               default=LATENT_FRAMES, optional=True,
                               tooltip="How the spatial (image) expert refines a clip of a video latent space (Wan, "
                                       "Qwen-Image: 4 pixel frames per latent frame). latent frames: every latent "
                                       "frame as an image, batched; no VAE calls, the cheapest, but latent frames "
                                       "after the first pack 4 pixel frames, which an image model never saw. pixel "
                                       "frames: every pixel frame as an image of its own (decode, refine per frame, "
                                       "encode; needs a VAE): 4x the frames per spatial evaluation (81 instead of "
                                       "21 for an 81-frame clip) and 4 VAE calls per coordinated step plus 2 for the "
                                       "structure. SD-style and Flux spaces are per frame anyway."),
                *low_noise_inputs("temporal_", "temporal", 7.5),
            ],
            outputs=[RefineExpertsType.Output(display_name="experts",
                                              tooltip="For ConFiner Refine Sampler or ConFiner Long Video.")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],   # the temporal models' file names (model_files)
        )

    @classmethod
    @host.shows_refusals   # (else an earlier bundle's text stood under a refused one)
    def execute(cls, spatial_model, spatial_positive, spatial_negative, spatial_cfg, temporal_model=None,
                temporal_positive=None, temporal_negative=None, temporal_cfg=7.5, spatial_vae=None,
                temporal_vae=None, spatial_frames=LATENT_FRAMES, temporal_low_noise_model=None,
                temporal_low_noise_cfg=7.5, temporal_boundary=0.875) -> io.NodeOutput:
        check_widgets(cls, spatial_cfg=spatial_cfg, temporal_cfg=temporal_cfg, spatial_frames=spatial_frames,
                      temporal_low_noise_cfg=temporal_low_noise_cfg, temporal_boundary=temporal_boundary)
        files = {name: host.input_file(cls, name) for name in ("spatial_model", "temporal_model",
                                                                 "temporal_low_noise_model")}
        for video_model, name in ((temporal_model, "temporal_model"),
                                  (temporal_low_noise_model, "temporal_low_noise_model")):
            host.check_video_role(video_model, "temporal", swapped=host.relates_frames(spatial_model),
                                  file=files[name], spatial_file=files["spatial_model"],
                                  shared=host.input_feeds_control(cls, name), where=input_place(cls, name),
                                  loader=host.input_loader(cls, name))
        if temporal_low_noise_model is not None and temporal_model is None:
            raise ValueError("temporal_low_noise_model on ConFiner Refine Experts is connected but temporal_model is "
                             "not: connect the high-noise model to temporal_model")
        experts = RefineExperts(
            spatial_model, spatial_positive, spatial_negative, spatial_cfg, temporal_model,
            temporal_positive if temporal_positive is not None else spatial_positive,
            temporal_negative if temporal_negative is not None else spatial_negative, temporal_cfg,
            spatial_vae, temporal_vae, spatial_frames, temporal_low_noise_model, temporal_low_noise_cfg,
            temporal_boundary, (files["temporal_model"], files["temporal_low_noise_model"]),
            {name: host.input_vae_loader(cls, name) for name in ("spatial_vae", "temporal_vae")})
        # what this node's inputs decide, in one message: an artist who swapped the spatial model's family met its
        # VAE here, then its text encoder on the Refine Sampler, a run each
        problems = [host.problem_of(experts.check_vaes)]
        # an unconnected temporal prompt is the spatial one: named as such
        borrowed = {which: f"spatial {which}, spatial_{which}: temporal {which} is unconnected"
                    for which, given in (("positive", temporal_positive), ("negative", temporal_negative))
                    if given is None}
        for role, model, positive, negative, cfg, which, sources in (
                ("spatial", spatial_model, spatial_positive, spatial_negative, spatial_cfg, "its model", None),
                ("temporal", temporal_model, experts.temporal_positive, experts.temporal_negative, temporal_cfg,
                 "its model", borrowed),
                ("temporal", temporal_low_noise_model, experts.temporal_positive, experts.temporal_negative,
                 temporal_low_noise_cfg, "its low-noise model (temporal_low_noise_model)", borrowed)):
            if model is not None:
                negative = negative if negative is not None else positive
                problems.append(host.problem_of(host.check_text_width, model, role, positive, negative, cfg, which,
                                                sources))
        if any(problems):   # a Run that fails here anyway also names the VAEs the mode will ask for next
            problems.append(host.problem_of(experts.check_bridge) if not problems[0] else None)
        # one model all of them concern, whose file the graph names: the file may be the mistake
        roles = {min(("spatial", "temporal"), key=lambda r: str(problem).find(r) if r in str(problem)
                     else len(str(problem))) for problem in problems if problem}   # each about the expert it names first
        role = next(iter(roles)) if len(roles) == 1 else None
        # an image model with no motion model in the video role, its prompt or VAE unfit: the file is the likely
        # mistake (a trial's SD 1.5 file in the Wan loader was told of the Wan prompt's width and the VAEs)
        alone = "temporal" in roles and temporal_model is not None and not host.relates_frames(temporal_model)
        role = "temporal" if alone else role
        file = files.get(f"{role}_model") if role else None
        loader = host.input_loader(cls, f"{role}_model") if file else None
        host.refuse_all(problems, f"the {role} model, {host.family_name(experts.models[role])}, file '{file}' in "
                                  f"loader '{loader}'" + (", an image model with no motion model attached" if alone
                                                          else "") if file else None,
                        file_first=alone or bool(file) and host.titled_for_another_family(loader, experts.models[role]))
        experts.summary = bundle_text(experts, list(borrowed))
        host.show_text(host.node_id(cls), experts.summary)
        # (also as its UI output, which ComfyUI sends again when it serves the bundle from its cache: a rerun whose
        # every node was cached left the bundle blank in a reopened template, no sampler running to say it)
        return io.NodeOutput(experts, ui={"confiner_text": [experts.summary]})


def bundle_text(experts: RefineExperts, borrowed: list) -> str:
    """What the bundle holds, under the node: each expert's family (with its motion models), cfg, how it takes its
    frames and the spatial prompts it reads where its own are unconnected (``borrowed``: "positive", "negative"), so
    that an artist sees the bundle is the one meant before a Run spends minutes (it showed nothing)."""
    def model(m) -> str:
        motion = ade.motion_model_names(m)
        return host.family_name(m) + (f" + {', '.join(motion)}" if motion else "")

    lines = [host.dotted_lines([f"spatial: {model(experts.spatial_model)}", f"cfg {experts.spatial_cfg:g}",
                                *(["each pixel frame"] if experts.spatial_frames != LATENT_FRAMES else [])])]
    if experts.temporal_model is None:
        lines.append("temporal: none (the Refine Sampler's standard mode)")
    else:
        lines.append(host.dotted_lines([f"temporal: {model(experts.temporal_model)}", f"cfg {experts.temporal_cfg:g}",
                                        *([f"spatial {', '.join(borrowed)} prompt"] if borrowed else [])]))
    if experts.temporal_low_noise_model is not None:
        lines.append(host.dotted_lines([f"temporal low-noise: {model(experts.temporal_low_noise_model)}",
                                        f"cfg {experts.temporal_low_noise_cfg:g}",
                                        f"boundary {experts.temporal_boundary:g}"]))
    return "\n".join(lines)
