"""ConFiner Long Video: ConFiner-Long (Section 3.5) over any number of frames."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..confiner_core.chain import (STANDARD, TEMPORAL, ChainConfig, evaluated_roles, refine_evaluations,
                                   refining_denoiser, validate_refinement, warned_already)
from ..confiner_core.experts import EvaluationLog
from ..confiner_core.latent_spaces import VIDEO_FPS
from ..confiner_core.long import (FREENOISE, NOISE_INITS, LongConfig, check_segment_length, check_window_join,
                                  freenoise_span, freenoise_stride_problem, generate_long, layout_only_entries,
                                  moved_schedule, plan_segments, render_applied_schedule, structure_centre,
                                  unused_entries, window_centre)
from ..confiner_core.prompts import parse_prompt, render_schedule, unkeyed_entries
from . import ade, host, sessions, texts
from .schema import (CATEGORY, CONTROL_ETA, MATCHING, advanced, check_widgets, coherence_memory_input, control_inputs,
                     control_sampling_inputs, host_converted, input_place, low_noise_inputs, refine_inputs,
                     refine_problem, seed_input, structure_noise_input, te_setting, widget_checked)
from .texts import numbered_problems
from .types import RefineExpertsType, connect_vae

NODE = "ConFiner Long Video"

AUTO_FPS = 0.0   # the fps input's default: the control model's video rate (prompt_fps)
SLOWEST_FPS = min(VIDEO_FPS.values())   # an automatic rate before the model is known: no key falls later than at it
#: the video rates by the models that make them, for a seconds key refused before the model (its rate) is known:
#: "33 frames last ... 2.06 s at Wan 2.1 and 2.2 A14B's 16 fps" gives a Wan graph its number (it was told 8 fps)
MODEL_RATES = {"AnimateDiff": VIDEO_FPS["sd15"], "Wan 2.1 and 2.2 A14B": VIDEO_FPS["wan2.1"],
               "Wan 2.2 5B": VIDEO_FPS["wan2.2"]}


def prompt_fps(fps: float, space) -> float:
    """The rate the segment prompts' seconds keys count at: ``fps`` as set, or (0, automatic) the rate of the
    control model's videos (:data:`~confiner_core.latent_spaces.VIDEO_FPS`: Wan 2.1 16, AnimateDiff 8)."""
    return fps or VIDEO_FPS.get(space.name, SLOWEST_FPS)


def segment_schedule(text: str, frames: int, fps: float):
    """The segment prompts parsed over ``frames`` frames, seconds keys ('2.5s:') at ``fps`` (:data:`AUTO_FPS`:
    checked as far as the slowest video rate shows, before the model is known); entries separated by '|' without
    keys are refused (:func:`~confiner_core.prompts.unkeyed_entries`)."""
    option = "segment prompts (segment_prompts)"
    # first: its own messages are the more precise
    schedule = parse_prompt(text, frames, fps or SLOWEST_FPS, option=option, slowest_fps=fps == AUTO_FPS,
                            rates=MODEL_RATES)
    problem = unkeyed_entries(text, option)
    if problem:
        raise ValueError(problem)
    return schedule


def prompt_schedule_problem(text: str | None, frames: int | None, fps: float | None = AUTO_FPS) -> str | None:
    """A per-segment prompt schedule that cannot be parsed, or has entries past the last frame (which a run would
    silently ignore). Linked values (None) are checked when the node runs, and seconds keys at the automatic rate
    as far as the slowest rate shows (the run checks them at the model's)."""
    if not text or not text.strip() or frames is None or fps is None:
        return None
    try:
        segment_schedule(text, frames, fps)
    except ValueError as e:
        return str(e)
    return None


def resolved_schedule_text(text: str | None, frames: int, plan, fps: float) -> str | None:
    """The resolved schedule (frame ranges -> prompt) for the console, and with the segment ``plan``, where its
    windows move a change, the schedule as applied."""
    if not text or not text.strip():
        return None
    schedule = segment_schedule(text, frames, fps)
    moved = render_applied_schedule(plan, schedule) if plan is not None and schedule.travels else None
    return "prompt schedule:\n" + render_schedule(schedule) + (f"\n{moved}" if moved else "")


def node_schedule_text(schedule, plan) -> str:
    """The schedule the video follows, as the node shows it before and after a run (its box holds about four
    lines): the frames each prompt covers as the windows apply it."""
    moved = moved_schedule(plan, schedule)
    shown, title = (schedule, "prompts") if moved is None else (moved, "prompts as applied (each from a window junction)")
    return f"{title}:\n" + "\n".join(f"{a}-{b - 1}: {p}" for a, b, p in shown.ranges())


def unused_prompt_notes(schedule, plan) -> list[str]:
    """A line per prompt the video never shows (:func:`~confiner_core.long.unused_entries`) or shows in a structure's
    layout alone (:func:`~confiner_core.long.layout_only_entries`: its motion and composition), for the top of the
    node's text: under a preview the frontend shows its first two lines only, and below the schedule they were
    hidden. Each fits a line (the frontend neither wraps nor scrolls it), with its fix: a prompt needs a segment's
    frames (the console says it whole, and that a shorter segment length also does). Named by its text, cut to the
    room the fix leaves: by its frames alone ("prompt 8-8 only lays out"), an artist could not tell which prompt
    it was, as the schedule under it lists the prompts the video follows, which leave it out."""
    fix = f": give it {plan.segment_length}+ frames"
    said = [(p, "never shows") for _, _, p in unused_entries(plan, schedule)]
    said += [(p, "only shapes motion") for _, _, p in layout_only_entries(plan, schedule)]
    lines = []
    for prompt, what in said:
        room = max(texts.LINE_WIDTH - len(f"warning: '' {what}{fix}"), 8)
        shown = prompt if len(prompt) <= room else prompt[:room - 1].rstrip() + "…"
        lines.append(f"warning: '{shown}' {what}{fix}")
    return lines


def short_video_problem(frames: int | None, segment_length: int | None, space=None) -> str | None:
    """A video shorter than one segment, whose windows would be made at full length and cut. Its fix: the segment
    length the control model's ``space`` holds (Wan: 4k+1), where it is known; when queued, before the model is,
    the frames (one segment's: no lower segment length may be the model's, as none below 5 is Wan's)."""
    if frames is None or segment_length is None or frames >= segment_length:
        return None
    one_clip = "ConFiner Control Expert and ConFiner Refine Sampler"
    if space is None:
        fix = f"raise frames to {segment_length}, or make one clip with {one_clip}"
    else:
        fits = next((n for n in range(frames, 1, -1) if space.valid_pixel_frames(n)), None)  # (segments >= 2)
        fix = (f"lower the segment length to {fits} (or make one clip: {one_clip})" if fits else
               f"make one clip with {one_clip}")
    # (the fix after the last ": ": the canvas keeps a cut message's fix, :func:`~.texts.error_lines`)
    return (f"frames = {frames} is shorter than one segment (segment length (segment_length) = {segment_length}), "
            f"whose windows would be made and refined at {segment_length} frames and cut to {frames}: {fix}")


def cut_window_notes(plan, joined_space) -> list[str]:
    """Lines where the video ends inside its last window, which is refined whole for fewer frames, with the nearest
    frame counts that keep every refined frame (:meth:`~confiner_core.long.SegmentPlan.whole_window_frames`; the
    command line says it before a run, the node said nothing: the Wan template's 161 frames kept 29 of its last 33).
    Counts the joined clip's space holds (``joined_space``: Wan's 4k+1), where the windows are joined in one."""
    whole = plan.whole_window_frames(joined_space.valid_pixel_frames if joined_space is not None else None)
    last, length = plan.windows[-1].frames, plan.segment_length
    if last >= length:
        return []
    counts = " or ".join(map(str, whole))
    logging.info("%s: the last window is refined whole (%d frames) for its %d%s", NODE, length, last,
                 f"; frames {counts} would use every refined frame" if whole else "")
    same = len(plan.windows) * length in whole   # (the same windows: the same cost)
    # ("frames": the counts are the frames widget's; "18 or 24 keep all" did not say what they counted)
    lines = texts.wrapped(f"note: last window keeps {last} of {length}" + (
        f"; frames {counts} keep all" + (f" ({whole[-1]}: same cost)" if same else "") if whole else " frames"))
    if whole and whole != plan.whole_window_frames(None):   # (a trial asked why not 18 or 27 for Wan's 9)
        lines += texts.wrapped(f"(whole windows, and {joined_space.temporal_factor}k+1 frames for "
                               f"{joined_space.title}'s VAE)")
    return lines


def seconds_at_another_rate(schedule, fps: float, space) -> tuple[str | None, str]:
    """Seconds keys counted at an ``fps`` set to other than the rate of the control model's videos (a workflow saved
    when the widget's default was 8, AnimateDiff's, on Wan, which makes 16): an artist's "1s:" then started at half a
    second of a 16 fps save. A warning and its one-line note (no warning: None), for :meth:`~.host.Progress.warn`."""
    native = VIDEO_FPS.get(space.name)
    if native is None or native == fps or not any(e.key.endswith("s") for e in schedule.entries):
        return None, ""
    return (f"the segment prompts' seconds keys count at fps {fps:g}, but {space.title} video models make {native:g} "
            f"frames a second: set fps on ConFiner Long Video to your save node's rate"), \
        f"warning: seconds at fps {fps:g}; {space.title} video is {native:g} fps"


class ConFinerLongSegmenter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConFinerLongSegmenter",
            display_name="ConFiner Long Video",
            category=CATEGORY,
            description="Makes long videos, any number of frames, as a chain of short segments, each made and "
                        "refined as ConFiner makes a clip, and keeps them consistent: the segments share one base "
                        "noise (noise init), each segment's layout is pulled towards the previous one's (coherence "
                        "gamma) and every seam is refined across both segments (staggered). Each can be switched "
                        "off; the prompt can change from segment to segment. (ConFiner-Long: consistency "
                        "initialization, Eq. 12 and Eq. 13.)",
            inputs=[
                io.Model.Input("control_model", display_name="control model",
                               tooltip="The control expert (text-to-video MODEL); with a low-noise model connected, "
                                       "the high-noise half (Wan 2.2 A14B)."),
                io.Conditioning.Input("control_positive", display_name="control positive",
                                      tooltip="Control expert's prompt."),
                io.Conditioning.Input("control_negative", display_name="control negative",
                                      tooltip="Control expert's negative prompt."),
                RefineExpertsType.Input("experts", tooltip="From ConFiner Refine Experts (bundle)."),
                io.Latent.Input("latent", tooltip="Sets the frame size and channels (e.g. Empty Latent Image, any "
                                                  "batch size; for Wan an Empty HunyuanVideo 1.0 Latent of length "
                                                  "1); "
                                                  "the frame count comes from 'frames'."),
                io.Int.Input("frames", default=128, min=1, max=100000,
                             tooltip="Frames to generate (pixel frames). Refiners in a causal video latent space "
                                     "(Wan) need 4k+1 (e.g. 165, 297 at 33-frame segments): the windows are "
                                     "joined as one clip."),
                io.Int.Input("segment_length", display_name="segment length", default=16, min=2, max=256,
                             tooltip="Pixel frames per segment L (16 for AnimateDiff / ModelScope; 4k+1 for Wan, "
                                     "e.g. 33 or 81). Staggered windows join its halves (L/2 rounded down); with Wan "
                                     "the halves are joined through the VAE (connect control VAE)."),
                seed_input("long"),
                *control_inputs("control_"),
                *refine_inputs(),
                io.Combo.Input("noise_init", display_name="noise init", options=list(NOISE_INITS), default="shuffle",
                               tooltip="shuffle: consistency initialization (frame-shuffled base noise); freenoise: "
                                       "FreeNoise rescheduling; independent: fresh noise per segment (off)."),
                advanced(io.Int.Input("freenoise_stride", display_name="FreeNoise stride", default=0, min=0, max=256,
                                      tooltip="Only for noise init 'freenoise': latent frames between FreeNoise "
                                              "windows (window = one segment's latent frames; a Wan latent frame "
                                              "holds 4 video frames, so an 81-frame segment is 21). 0: a quarter "
                                              "of the window, as the library and command line default (4 for a "
                                              "16-frame segment, 2 for Wan's 33, 5 for its 81).")),
                io.Float.Input("gamma", display_name="coherence gamma", default=0.1, min=0.0, max=0.5, step=0.01,
                               tooltip="Coherence guidance strength (Eq. 12): pulls each control step's noise "
                                       "prediction towards the previous segment's. 0 switches it off."),
                io.Boolean.Input("staggered", default=True,
                                 tooltip="Staggered refinement: refine the second half of each segment together "
                                         "with the first half of the next, so seams are refined jointly. It lays out "
                                         "one structure more than segments (the node counts 'structure 1/3' for "
                                         "2 segments): the last window reaches into it."),
                io.String.Input("segment_prompts", display_name="segment prompts", default="", multiline=True,
                                optional=True, placeholder="segment prompts, e.g. 0: a red ball | 64: a blue ball",
                                tooltip="Prompt travel: '0: prompt | 64: prompt from frame 64 | 128: ...', a start "
                                        "frame (or '2.5s:' seconds, at the 'fps' input's rate) on every entry, each "
                                        "below 'frames'. Needs 'clip'. Empty: the connected conditioning everywhere."),
                io.Clip.Input("clip", optional=True, tooltip="Text encoder for segment prompts: every expert reads what it "
                                                          "encodes, so it must be their family's (SD 1.5's CLIP, "
                                                          "Wan's umt5)."),
                *control_sampling_inputs("control_"),
                structure_noise_input(),
                coherence_memory_input(),
                io.Vae.Input("control_vae", display_name="control VAE", optional=True,
                             tooltip="The control expert's VAE: needed when windows are joined through pixels (Wan "
                                     "and other causal video spaces, whose latents cannot be cut at any frame) or "
                                     "when the refine experts work in another latent space. It also serves every "
                                     "refine expert of its latent space that has no VAE of its own."),
                *low_noise_inputs("control_", "control", 1.0),
                # last: a workflow saved before it existed keeps its widget values in place
                # optional: API-format prompts written before it existed lack it
                advanced(io.Float.Input("fps", default=AUTO_FPS, min=0.0, max=240.0, step=1.0, optional=True,
                                        tooltip="Only for seconds keys ('2.5s:') in segment prompts: the frame rate "
                                                "they count at. 0: the control model's video rate (16 for Wan 2.1, "
                                                "24 for Wan 2.2 5B, 8 for AnimateDiff); set your save node's rate "
                                                "if it differs.")),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="All frames (decode with VAE Decode).")],
            # prompt: the control models' file names; extra_pnginfo: the canvas, for a bypassed AnimateDiff loader
            hidden=[io.Hidden.unique_id, io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def validate_inputs(cls, frames=None, segment_prompts=None, fps=AUTO_FPS, segment_length=None, te=None,
                        refine_steps=None):
        # fps is read (ComfyUI then files the message under it too, hidden as it is; web/confiner.js keeps it once,
        # under the input it names): seconds keys count at it, and checked at the slowest model rate instead, '5s:'
        # on 32 frames was refused at fps 4, where it is frame 20. The widgets' own problems too, as the Refine
        # Sampler's: T_e 1 with 5 steps, or 12 frames in segments of 16, ran the loaders first and then stopped.
        # Every problem at once (a trial's refine steps were named, then a Run later the schedule's typo).
        problems, ok = widget_checked(cls, **host_converted(cls, frames=frames, fps=fps, segment_length=segment_length,
                                                            te=te, refine_steps=refine_steps))
        return numbered_problems([*problems, refine_problem(ok["te"], ok["refine_steps"]),
                                  short_video_problem(ok["frames"], ok["segment_length"]),
                                  prompt_schedule_problem(segment_prompts, ok["frames"], ok["fps"])]) or True

    @classmethod
    @host.shows_refusals
    def execute(cls, control_model, control_positive, control_negative, experts, latent, frames, segment_length,
                seed, control_steps, control_cfg, control_sampler, te, refine_steps, mode, matching, noise_init,
                freenoise_stride, gamma, staggered, segment_prompts="", clip=None, control_spacing="trailing",
                control_eta=0.0, structure_noise="spatial", coherence_memory="unguided", control_vae=None,
                control_low_noise_model=None, control_low_noise_cfg=1.0, control_boundary=0.875,
                fps=AUTO_FPS) -> io.NodeOutput:
        check_widgets(cls, segment_length=segment_length, seed=seed, control_steps=control_steps,
                      control_cfg=control_cfg, control_sampler=control_sampler, te=te, refine_steps=refine_steps,
                      mode=mode, matching=matching, noise_init=noise_init, freenoise_stride=freenoise_stride,
                      gamma=gamma, control_spacing=control_spacing, control_eta=control_eta,
                      structure_noise=structure_noise, coherence_memory=coherence_memory,
                      control_low_noise_cfg=control_low_noise_cfg, control_boundary=control_boundary, fps=fps)
        for video_model, name in ((control_model, "control_model"),
                                  (control_low_noise_model, "control_low_noise_model")):
            host.check_video_role(video_model, "control", file=host.input_file(cls, name),
                                  where=input_place(cls, name))
        space = host.space_of(control_model)
        fps = prompt_fps(fps, space)
        # every problem the widgets alone show, in one message: one per run cost a model load each; the control
        # model's prompt first (a trial's Wan model on the SD template was told of the segment length, then of the
        # prompt, a Run each)
        problems = [host.problem_of(host.check_text_width, control_model, "control", control_positive,
                                    control_negative if control_negative is not None else control_positive,
                                    control_cfg),
                    refine_problem(te, refine_steps)]
        try:
            space.check_pixel_frames(segment_length, f"segment length (segment_length) = {segment_length}: the "
                                                     f"control expert's {space.title}", least=2)
        except ValueError as e:
            problems.append(str(e))
        problems.append(short_video_problem(frames, segment_length, space))
        refining = experts.temporal_model if mode == TEMPORAL else experts.spatial_model
        # the windows are joined into one clip of the refining expert's space (pixel frames: any count)
        joined_space = host.space_of(refining) if refining is not None and (
            mode == TEMPORAL or experts.spatial_frames != host.PIXEL_FRAMES) else None
        if joined_space is not None:
            problems.append(cls.joined_frames_problem(frames, joined_space))
        # FreeNoise's settings only where it runs (on every other run the library built a warning of them unused,
        # only ever suppressed); the window one segment's latent frames, the stride 0 the library's default (a
        # quarter of the window: the widget's fixed 4 gave Wan's 33-frame segments another noise than the library)
        freenoise = dict(freenoise_window=space.latent_frames(segment_length),
                         freenoise_stride=freenoise_stride or None) if noise_init == FREENOISE else {}
        if freenoise:
            window, stride = freenoise_span(LongConfig(**freenoise), freenoise["freenoise_window"])
            problems.append(freenoise_stride_problem(
                stride, window, f"FreeNoise stride (freenoise_stride) = {stride}",
                f"one segment's {window} latent frames" + (f" ({segment_length} frames)" if window != segment_length
                                                           else "")))
        try:
            prompts = (segment_schedule(segment_prompts, frames, fps)
                       if segment_prompts and segment_prompts.strip() else None)
        except ValueError as e:
            problems.append(str(e))
        host.refuse_all(problems)
        chain = ChainConfig(control_steps=control_steps, control_sampler=control_sampler,
                            control_spacing=control_spacing, control_eta=control_eta, te=te_setting(te),
                            refine_steps=refine_steps, mode=mode, matching=matching, structure_noise=structure_noise)
        long = LongConfig(segment_length=segment_length, noise_init=noise_init, gamma=gamma, staggered=staggered,
                          coherence_memory=coherence_memory, **freenoise)
        long.validate()
        experts.check_mode(mode)
        host.show_bundle_text(cls, experts)
        plan = plan_segments(frames, segment_length, staggered)
        if prompts is not None and clip is None:
            raise ValueError("segment prompts (segment_prompts) need the 'clip' input to encode them; connect a CLIP "
                             "or clear the prompts")
        if prompts is not None:
            host.check_clip_width(clip, {"control": control_model, "control low-noise": control_low_noise_model,
                                         **experts.models, "temporal low-noise": experts.temporal_low_noise_model},
                                  "the clip input (segment prompts)")
        if prompts is not None:   # the whole schedule on the console (the node opens its run with it)
            logging.info("%s: %s", NODE, resolved_schedule_text(segment_prompts, frames, plan, fps))
        ade.new_run()
        per_window = refine_evaluations(chain)
        total = plan.expected_evaluations(chain)

        def index(role, counts) -> int:   # the structure (control stage) or window this evaluation is in
            if role == "control":
                return (counts["control"] - 1) // control_steps
            return (counts["spatial"] + counts["temporal"] - 1) // per_window

        def where(role, counts):
            if role == "control":
                return f"structure {index(role, counts) + 1}/{plan.structures} · "
            return f"window {index(role, counts) + 1}/{len(plan.windows)} · "

        def prompt_now(role, counts):   # the prompt generate_long gives this structure or window (its centre's)
            i = index(role, counts)
            centre = structure_centre(plan, i) if role == "control" else window_centre(plan.windows[i])
            return f"prompt: {prompts.at(centre)}"

        progress = host.Progress(control_model, total, host.node_id(cls), where,
                                 prompt_now if prompts is not None and prompts.travels else None,
                                 opening=True if prompts is None else node_schedule_text(prompts, plan), seed=seed)
        # ComfyUI caches a node's result, not its finished windows: an artist who cancelled expected a rerun to go on
        progress.cancel_note = "\nqueued again, it starts over (no window is kept)"
        progress.files = (host.input_file(cls, "control_model"), *experts.temporal_files)
        if prompts is not None:   # above the schedule, every step and the summary (the console's schedule says why)
            progress.warn(*seconds_at_another_rate(prompts, fps, space))   # first: it may be why a prompt is unused
            progress.note(*unused_prompt_notes(prompts, plan))
        progress.warn_ignored_noise({"control": control_model, "temporal": experts.temporal_model})
        progress.warn_unused(chain, {"control_eta": CONTROL_ETA, "matching": MATCHING})
        progress.warn_frames_alone({"control": control_model,
                                    "temporal": experts.temporal_model if mode != STANDARD else None},
                                   experts.spatial_model, {"control": input_place(cls, "control_model")},
                                   host.bypassed_motion_nodes(cls, {"control": ("control_model",),
                                                                    "temporal": ("experts", "temporal_model")}))
        progress.warn_cfg_on_distilled_guidance(experts.spatial_model, experts.spatial_cfg)
        progress.warn_distilled_control(control_model, control_steps, control_cfg, control_sampler)
        progress.warn_motion_models(control_model=control_model, control_steps=control_steps,
                                    **(dict(temporal_model=experts.temporal_model, temporal_cfg=experts.temporal_cfg,
                                            **experts.spatial_role()) if mode != STANDARD else {}))
        progress.warn_halves("control", "ConFiner Long Video", "control model (control_model)",
                             "control low-noise model (control_low_noise_model)",
                             host.input_file(cls, "control_model"), host.input_file(cls, "control_low_noise_model"),
                             host.loaded_files(cls))
        if mode != STANDARD:
            experts.warn_halves(progress, host.loaded_files(cls))
        log = EvaluationLog()
        vaes = experts.shelf().reporting_to(progress).add("control_vae", control_vae, host.space_of(control_model),
                                                          host.input_vae_loader(cls, "control_vae"))
        control = host.bind(control_model, control_positive, control_negative, control_cfg, "control", seed, log,
                            clip, progress, vaes=vaes, vae_input="control_vae",
                            low_noise=host.LowNoise.of(control_low_noise_model, control_low_noise_cfg,
                                                       control_boundary, "control_low_noise_model", "control_model"))
        spatial, temporal = experts.bind(seed, log, clip, progress, vaes=vaes)
        chain = progress.settled(chain, spatial, temporal)
        # the frames made, which 'frames' sets whatever the latent's length (a trial's 65 made 33, said nowhere)
        progress.about.insert(0, f"{frames} frame{'s' if frames != 1 else ''}")
        progress.warn_table3(control_steps, chain.te, spatial, temporal, mode)
        progress.warn_unequal_noise(spatial, temporal, chain, control.schedule)
        progress.note(*cut_window_notes(plan, joined_space))   # (under the warnings: a cost, not a fault)
        refiner = refining_denoiser(spatial, temporal, mode)
        host.refuse_all([host.decode_vae_problem(cls, host.output_denoiser(refiner, spatial), spatial, temporal)])
        frame = host.latent_in(control_model, latent, "latent")[:, :, :1]
        b, c, _, h, w = frame.shape
        if b != 1:   # the windows of b videos were joined into one: b videos back to back, one after the other
            raise ValueError(f"latent is a batch of {b} videos; the Long Video makes one (its frames come from "
                             f"'frames'): use batch size 1")
        joined_as_pixels = cls.check_spaces(control, spatial, temporal, refiner, chain, experts, frames, segment_length,
                                      (b, c, h, w), plan.staggered)
        host.check_frames(control, segment_length, segment=True)
        host.plan_control(control, chain)
        host.plan_refinement(spatial, temporal, chain)
        windows = []
        codec = refiner.expert.codec if joined_as_pixels else None  # windows of a causal space are joined as pixels

        def sink(x, window):
            n = window.frames
            if codec is None:
                windows.append(x[:, :, :n].cpu())
            else:
                with log.stage("refine"), log.vae(1, x.device):
                    windows.append(codec.decode(x)[:, :, :n].cpu())

        # one sampling call per expert and segment stage (CONFINER_STAGE_SESSIONS); the text says if it stops early;
        # the chain's warnings were given under the node and on the console above
        with progress.running(), sessions.stage(), warned_already():
            generate_long(control, spatial, temporal, plan, (b, c, h, w), chain, long,
                          torch.Generator().manual_seed(seed), sink, prompts, None, frame.device)
            # inside the run's text: its "done" line counted the VAE calls before this encode (7 where the console
            # said 8), and the node showed "done" while it ran
            out = torch.cat(windows, dim=2)
            if codec is not None:
                with log.stage("refine"), log.vae(1, out.device):
                    out = codec.encode(out)
            out, refiner = host.to_spatial_space(out, refiner, spatial, log)
        host.log_cost(NODE, log, host.node_id(cls))
        lines = [progress.summary, host.output_space_note(refiner, spatial, control.expert.latent_space),
                 node_schedule_text(prompts, plan) if prompts is not None else None]
        if lines[1] or lines[2]:   # what the video followed and where its output is, once the progress is over
            progress.show("\n".join(filter(None, lines)))
        return progress.output(host.latent_out(host.model_of(refiner), out, latent, refiner.expert.latent_space))

    @staticmethod
    def check_spaces(control, spatial, temporal, refiner, chain, experts, frames, segment_length, frame_shape,
                     staggered: bool) -> bool:
        """Before any evaluation: segments and the whole clip fit the experts' latent spaces, and every bridge and
        pixel join has its VAEs (naming the input to connect). True when the refined windows are joined as pixels
        (the refiner's space compresses time, e.g. Wan), False when their latents are concatenated. ``staggered``: the
        plan's (unstaggered windows are whole structures, which need no VAE to be made)."""
        fixes = experts.vae_fixes(control=("control_vae", NODE))
        fixes["refining"] = fixes["temporal" if chain.mode == "temporal" else "spatial"]
        check_segment_length(segment_length, {"control": control, **evaluated_roles(spatial, temporal, chain.mode)},
                             "segment length (segment_length)")
        b, c, h, w = frame_shape
        shape = (b, c, control.expert.latent_space.latent_frames(segment_length), h, w)
        validate_refinement(spatial, temporal, shape, chain, source=control, vae_fixes=fixes)
        host.check_output_frames(refiner, spatial, frames)
        check_window_join(control, refiner, {"control": connect_vae("control_vae", NODE),
                                             "refining": fixes["refining"]}, staggered=staggered)
        space = refiner.expert.latent_space
        if space.temporal_factor == 1:
            return False
        problem = ConFinerLongSegmenter.joined_frames_problem(frames, space)
        if problem:
            raise ValueError(problem)
        if refiner.expert.codec is None:   # (unstaggered, check_window_join asks none: a window is a whole structure)
            raise ValueError(f"the refining expert needs its VAE: {fixes['refining']}, or to control VAE "
                             f"(control_vae) on {NODE} (the refined windows are joined into one {space.title} clip "
                             f"through pixels: a causal video VAE cannot cut latents at any frame)")
        return True

    @staticmethod
    def joined_frames_problem(frames: int, refining_space) -> str | None:
        """Windows joined into one clip of a refining space that compresses time (Wan) need a frame count it holds."""
        try:
            refining_space.check_pixel_frames(frames)
        except ValueError as e:   # "<space> latent space holds 4k+1 frames ...; use 37 or 41"
            return (f"frames = {frames}: the windows are joined into one clip of the refining expert's latent space, "
                    f"and the {e}")
        return None
