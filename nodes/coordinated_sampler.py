"""ConFiner Refine Sampler (node id ConFinerCoordinatedSampler): structure extraction (Eq. 6) and refinement in
every mode (Eq. 8 / Algorithm 1 / Eq. 7)."""

from __future__ import annotations

from comfy_api.latest import io

from ..confiner_core.chain import (CONTROL, STANDARD, TEMPORAL, ChainConfig, evaluated_roles, refine_evaluations,
                                   refine_structure, refining_denoiser, validate_refinement)
from ..confiner_core.experts import Denoiser, EvaluationLog
from . import ade, host, model_files, sessions
from .schema import (CATEGORY, MATCHING, STRUCTURE_NOISE, check_widgets, host_converted, refine_inputs, refine_problem,
                     seed_input, structure_noise_input, te_setting, widget_checked)
from .texts import numbered_problems
from .types import RefineExpertsType

NODE = "ConFiner Refine Sampler"


class ConFinerCoordinatedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConFinerCoordinatedSampler",
            display_name="ConFiner Refine Sampler",
            category=CATEGORY,
            description="Turns the rough structure into the finished video: adds some noise back to it (how much: "
                        "structure timestep T_e) and removes it again with the refine experts. In mode coordinated "
                        "(the paper's method) the image expert adds detail and the video expert keeps the motion "
                        "smooth, taking turns at every step (3 model runs a step); standard, temporal and alternate "
                        "are the paper's comparisons. The experts are checked before the structure is made, so a "
                        "wrong combination fails before any model runs. (ConFiner's stage 2: Eq. 6, Algorithm 1.)",
            inputs=[
                RefineExpertsType.Input("experts", tooltip="From ConFiner Refine Experts (bundle)."),
                io.Latent.Input("structure", lazy=True,
                                tooltip="The coarse video from ConFiner Control Expert (or any video latent of the "
                                        "experts' family, e.g. a VAE-encoded clip). Made only after the experts "
                                        "passed their checks."),
                *refine_inputs(),
                seed_input("refine"),
                structure_noise_input(),
                io.Model.Input("control_model", display_name="control model", optional=True,
                               tooltip="The control expert's MODEL (never evaluated here). Needed for structure "
                                       "noise schedule 'control' (Algorithm 1, line 4: its schedule noises the "
                                       "structure); when connected, its latent space is checked against the refine "
                                       "experts' before the structure is made. Without it the structure's space is "
                                       "the one ConFiner Control Expert noted on its output."),
                io.Vae.Input("control_vae", display_name="control VAE", optional=True,
                             tooltip="Only for a bridge: the control expert's VAE, needed when the structure is in a "
                                     "latent space none of the refine experts' VAEs belongs to (e.g. an SD 1.5 "
                                     "structure refined by Wan experts)."),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="The refined video in the spatial expert's latent space: decode it "
                                              "with that expert's VAE (VAE Decode). Mode temporal in a graph of two "
                                              "latent spaces converts its output there through the VAEs (without a "
                                              "spatial VAE it stays in the temporal expert's, and the node says so). "
                                              "Swapping the spatial expert for one of another family (Flux for SD "
                                              "1.5) changes the VAE to decode with.")],
            # prompt: the graph's model files (model_files); extra_pnginfo: the canvas, for a bypassed AnimateDiff loader
            hidden=[io.Hidden.unique_id, io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def validate_inputs(cls, te=None, refine_steps=None):   # (None: missing from an API prompt, which ComfyUI names)
        problems, ok = widget_checked(cls, **host_converted(cls, te=te, refine_steps=refine_steps))
        return numbered_problems([*problems, refine_problem(**ok)]) or True

    @classmethod
    @host.shows_refusals
    def check_lazy_status(cls, experts, te, refine_steps, mode, matching, seed, structure=None,
                          structure_noise="spatial", control_model=None, control_vae=None, **kwargs):
        """Runs once the experts are bundled and before the structure is computed: a wrong combination (a mode
        without its temporal expert, experts of different latent spaces without the VAEs that bridge them, T_e
        outside a schedule) fails here, with 0 evaluations."""
        if structure is None:
            # te and refine steps too: validate_inputs reads typed values only, and one driven by another node (an
            # Int node on T_e) met the chain's own check in other words, naming no widget
            check_widgets(cls, mode=mode, matching=matching, seed=seed, structure_noise=structure_noise, te=te,
                          refine_steps=refine_steps)
            host.refuse_all([refine_problem(te, refine_steps)])
            if structure_noise == CONTROL and control_model is None:
                raise ValueError(f"{STRUCTURE_NOISE} (structure_noise) 'control' noises the structure on the control "
                                 f"expert's schedule: connect the control model (control_model) on {NODE}, or use "
                                 f"'spatial' (the refining expert's, the default)")
            config = cls.config(te, refine_steps, mode, matching, structure_noise)
            experts.check_mode(config.mode)
            spatial, temporal, source, fixes = cls.prepare(experts, config, seed, control_model, control_vae)
            # the frames as the graph's empty latent sets them: a count the experts the mode evaluates, or the one
            # its output goes to, cannot take was refused only after the control stage had run; where the graph
            # does not say, the rest on one frame. The frames, the bridge and the decode's VAE in one refusal: a
            # trial's hand-made swap took a Run for each
            space = source.expert.latent_space
            refiner = refining_denoiser(spatial, temporal, config.mode)
            output = host.output_denoiser(refiner, spatial)
            held = {**evaluated_roles(spatial, temporal, config.mode), **({"spatial": output} if output is spatial
                                                                          else {})}
            planned = host.planned_structure_frames(cls, {"spatial": spatial, "temporal": temporal})
            problems = [host.planned_frames_problem(planned, held)]
            frames = None if problems[0] else host.planned_latent_frames(planned, space)
            try:
                validate_refinement(spatial, temporal, (1, space.channels, frames or 1, 1, 1), config,
                                    source=source, control_schedule=cls.control_schedule(control_model),
                                    vae_fixes=fixes, sizes=False)   # (its size is not known here)
            except ValueError as e:   # (said with the rest: a TypeError, a bug's, still raises alone)
                problems.insert(0, str(e))
            problems.append(host.decode_vae_problem(cls, output, spatial, temporal))
            host.refuse_all(problems)
            # the frontend marks this node running from here, through the control stage and any node the queue runs
            # before this one (the other samplers of the compare template, after the structure is done: a reason
            # naming the control stage alone went stale there): not the last run's "done"
            host.show_text(host.node_id(cls),
                           "waiting for its turn\n(after the structure and the nodes queued before it)")
            return ["structure"]
        return []

    @staticmethod
    def config(te, refine_steps, mode, matching, structure_noise) -> ChainConfig:
        return ChainConfig(te=te_setting(te), refine_steps=refine_steps, mode=mode, matching=matching,
                           structure_noise=structure_noise)

    @staticmethod
    def control_schedule(control_model):
        return host.schedule_of(control_model, "control") if control_model is not None else None

    @classmethod
    def prepare(cls, experts, config: ChainConfig, seed, control_model=None, control_vae=None, structure_space=None,
                log=None, progress=None):
        """The refine experts and the structure's source as core denoisers, each with the codec the bridge needs
        (its own VAE input, or another of its latent space): the control model when connected (not evaluated),
        else the structure's space (``structure_space``; before the structure exists: the refining expert's)."""
        vaes = experts.shelf().reporting_to(progress).add("control_vae", control_vae,
                                   host.space_of(control_model) if control_model is not None else None,
                                   host.input_vae_loader(cls, "control_vae"))
        spatial, temporal = experts.bind(seed, log, progress=progress, vaes=vaes)
        if control_model is not None:
            source = host.bind(control_model, None, None, 1.0, "control", seed, log, vaes=vaes,
                               vae_input="control_vae")
        else:   # before the structure exists (lazy check) its space is unknown: control_vae is checked against it once
            space = structure_space or host.model_space(refining_denoiser(spatial, temporal, config.mode))
            own = "control_vae" if structure_space is not None else None   # it does (it was refused as the refiner's)
            source = Denoiser(host.StructureSource(space, vaes.codec(space, own)), None, None, 1.0, log)
        return spatial, temporal, source, experts.vae_fixes(control=("control_vae", NODE))

    @staticmethod
    def structure_space(structure: dict, control_model):
        """The structure's latent space: the control model's when connected (and the structure must be in it), else
        what ConFiner Control Expert noted on the LATENT, else None (the refining expert's)."""
        noted = structure.get(host.SPACE_KEY)
        if control_model is None:
            return noted
        space = host.space_of(control_model)
        if noted is not None and noted != space:
            raise ValueError(f"the structure is in the {noted.title} latent space but control_model on {NODE} works in "
                             f"{space.title}: connect the model that made the structure (the Control Expert's)")
        return space

    @classmethod
    @host.shows_refusals
    def execute(cls, experts, structure, te, refine_steps, mode, matching, seed, structure_noise="spatial",
                control_model=None, control_vae=None) -> io.NodeOutput:
        config = cls.config(te, refine_steps, mode, matching, structure_noise)
        control_schedule = cls.control_schedule(control_model)
        experts.check_mode(mode)
        host.show_bundle_text(cls, experts)
        ade.new_run()
        log = EvaluationLog()
        progress = host.Progress(experts.spatial_model, refine_evaluations(config), host.node_id(cls), seed=seed)
        progress.files = experts.temporal_files
        progress.warn_frames_alone({"temporal": experts.temporal_model if mode != STANDARD else None},
                                   experts.spatial_model, bypassed=host.bypassed_motion_nodes(
                                       cls, {"temporal": ("experts", "temporal_model")}))
        progress.warn_cfg_on_distilled_guidance(experts.spatial_model, experts.spatial_cfg)
        progress.warn_unused(config, {"matching": MATCHING})
        if mode != STANDARD:
            progress.warn_motion_models(temporal_model=experts.temporal_model, temporal_cfg=experts.temporal_cfg,
                                        loaded=host.motion_model_files(cls), **experts.spatial_role())
            experts.warn_halves(progress, host.loaded_files(cls))
        spatial, temporal, source, fixes = cls.prepare(experts, config, seed, control_model, control_vae,
                                                       cls.structure_space(structure, control_model), log, progress)
        config = progress.settled(config, spatial, temporal)
        progress.warn_table3(structure.get(host.CONTROL_STEPS_KEY), config.te, spatial, temporal, mode)
        progress.warn_unequal_noise(spatial, temporal, config, control_schedule)
        space = source.expert.latent_space
        x = host.structure_in(structure, space, host.model_of_space(space, control_model, *experts.models.values()),
                              source=model_files.input_source(host.queued_prompt(cls), host.node_id(cls), "structure"))
        validate_refinement(spatial, temporal, tuple(x.shape), config, source=source,
                            control_schedule=control_schedule, vae_fixes=fixes)
        if x.shape[0] > 1:   # as the Control Expert says it: an artist saw one video of both, back to back, saved
            n = space.pixel_frames(x.shape[2])
            progress.about.insert(0, f"{x.shape[0]} clips of {n} frame{'s' if n != 1 else ''} (a video save joins "
                                     f"them)")
        host.check_output_frames(refining_denoiser(spatial, temporal, mode), spatial, space.pixel_shape(x.shape)[1])
        # also here: ComfyUI 0.3.64 skips the lazy check where the structure comes from its cache
        host.refuse_all([host.decode_vae_problem(cls, host.output_denoiser(refining_denoiser(spatial, temporal, mode),
                                                                           spatial), spatial, temporal)])
        host.plan_refinement(spatial, temporal, config)
        first = (temporal if mode == TEMPORAL else spatial).expert.latent_space
        if first != space:   # the seconds (minutes on a CPU) of decoding and encoding before the first evaluation
            line = "first: the structure through the VAEs"
            named = f"{line} ({space.title} → {first.title})"
            progress.opening += "\n" + (named if len(named) <= host.LINE_WIDTH else line)
        # one sampling call per expert for the stage (CONFINER_STAGE_SESSIONS); the node's text says if it stops early
        with progress.running(), sessions.stage():
            generators = host.item_generators(seed, x.shape[0], structure, refine=True)
            latent = refine_structure(spatial, temporal, x, config, generators, source=source,
                                      control_schedule=control_schedule)
            latent, refiner = host.to_spatial_space(latent, refining_denoiser(spatial, temporal, mode), spatial, log)
        host.log_cost(NODE, log, host.node_id(cls))
        note = host.output_space_note(refiner, spatial, source.expert.latent_space)
        if note:
            progress.show(f"{progress.summary}\n{note}")
        return progress.output(host.latent_out(host.model_of(refiner), latent, structure, refiner.expert.latent_space))
