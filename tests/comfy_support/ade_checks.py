"""In-worker checks of the pack with ComfyUI-AnimateDiff-Evolved (ADE) loaded (run through ``ComfyWorker.call``).

No motion model is needed to see ADE's context windows: ``ADE_UseEvolvedSampling`` with context options and no
motion model makes ADE split every evaluation into windows (its ``sliding_calc_cond_batch``), and which windows it
uses at which step is ADE's own ``get_context_windows(num_frames, options)``; the test records its calls. With a
uniform schedule the window offsets shift every step (ADE's ``ordered_halving(step)``), so the recorded start
positions show which step ADE believed each evaluation was.
"""

from __future__ import annotations

import logging
import sys


def _ade_sampling_module():
    return next(m for name, m in sys.modules.items()
                if name.endswith("animatediff.sampling") and hasattr(m, "sliding_calc_cond_batch"))


def _pack(suffix: str):
    return next(m for name, m in sys.modules.items() if name.endswith(suffix) and "confiner" in name)


class _Recorder:
    """Wraps ADE's get_context_windows (looked up on its sampling module at call time) and ADE's log."""

    def __init__(self):
        self.module = _ade_sampling_module()
        self.original = self.module.get_context_windows
        self.calls: list = []
        self.lines: list = []
        handler = logging.Handler(logging.INFO)
        handler.emit = lambda record: self.lines.append(record.getMessage())
        self.handler = handler

    def __enter__(self):
        def recording(num_frames, opts):
            windows = self.original(num_frames, opts)
            self.calls.append({"step": int(opts.step), "starts": [int(w[0]) for w in windows],
                               "windows": [list(map(int, w)) for w in windows]})
            return windows
        self.module.get_context_windows = recording
        logging.getLogger("AnimateDiffEvo").addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.module.get_context_windows = self.original
        logging.getLogger("AnimateDiffEvo").removeHandler(self.handler)

    def take(self):
        calls, lines = self.calls, self.lines
        self.calls, self.lines = [], []
        return calls, lines


def _ade_model(ckpt_name: str, context_length: int, overlap: int, stride: int, noise_type: str | None = None,
               beta_schedule: str = "use existing"):
    import comfy.sd
    import folder_paths
    import nodes

    path = folder_paths.get_full_path("checkpoints", ckpt_name)
    model, clip = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=True)[:2]
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a red ball"))
    ctx = nodes.NODE_CLASS_MAPPINGS["ADE_StandardUniformContextOptions"]().create_options(
        context_length=context_length, context_stride=stride, context_overlap=overlap)[0]
    settings = None
    if noise_type is not None:
        settings = nodes.NODE_CLASS_MAPPINGS["ADE_AnimateDiffSamplingSettings"]().create_settings(
            batch_offset=0, noise_type=noise_type, seed_gen="comfy", seed_offset=0)[0]
    ade_model = nodes.NODE_CLASS_MAPPINGS["ADE_UseEvolvedSampling"]().use_evolved_sampling(
        model, beta_schedule, context_options=ctx, sample_settings=settings)[0]
    return model, ade_model, cond


def _ade_ksampler(model, cond, sigmas, frames: int, seed: int = 0):
    """ADE's own sampling path: ComfyUI's custom sampler (euler) over ``sigmas`` on the ADE model."""
    import torch

    import comfy.sample
    import comfy.samplers

    latent = torch.zeros(frames, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.sampler_object("euler"), torch.tensor(sigmas),
                               cond, cond, latent, disable_pbar=True, seed=seed)


def context_windows_per_evaluation(ckpt_name: str, frames: int = 12, context_length: int = 4, overlap: int = 1,
                                   stride: int = 2, control_steps: int = 4, refine_steps: int = 5) -> dict:
    """Window start positions per evaluation: ConFiner's control stage and its coordinated refinement (ADE model as
    the temporal expert, with ADE's sqrt_linear schedule; the plain SD model on the same base as spatial expert, so
    the base model changes hands at every evaluation) against ADE's own sampler over the same sigmas. ConFiner runs
    twice: each stage in a node's stage block (stage sessions, as the nodes run), then with one sampling call per
    evaluation; both runs' windows, logs and outputs are returned, and what ComfyUI's globals look like after."""
    import contextlib

    import torch

    import comfy.samplers

    host = _pack(".nodes.host")
    chain = _pack("confiner_core.chain")
    sessions = _pack(".nodes.sessions")
    plain, model, cond = _ade_model(ckpt_name, context_length, overlap, stride, beta_schedule="sqrt_linear (AnimateDiff)")
    config = chain.ChainConfig(control_steps=control_steps, refine_steps=refine_steps)
    out = {}
    with _Recorder() as rec:
        for staged, suffix in ((True, ""), (False, "_per_evaluation")):
            block = (lambda: sessions.stage(force=True)) if staged else contextlib.nullcontext
            _pack(".nodes.ade").new_run()  # what every ConFiner node does when it starts
            # control stage: ConFiner, then (first run) ADE's sampler on the same sigmas
            control = host.bind(model, cond, cond, 1.0, "control", 0)
            host.plan_control(control, config)
            sigmas = control.expert.stage_sigmas(control.expert.plan[0])[0]
            noise = torch.randn(1, 4, frames, 8, 8, generator=torch.Generator().manual_seed(0))
            with block():
                structure = chain.generate_structure(control, noise, config, torch.Generator().manual_seed(0))
            out["control" + suffix], out["control_log" + suffix] = rec.take()
            if staged:
                _ade_ksampler(model, cond, sigmas, frames)
                out["control_reference"], out["control_reference_log"] = rec.take()
                out["control_sigmas"] = [float(s) for s in sigmas]

            # coordinated refinement: plain SD spatial expert, the ADE model as temporal expert
            spatial = host.bind(plain, cond, cond, 1.0, "spatial", 0)
            temporal = host.bind(model, cond, cond, 1.0, "temporal", 0)
            host.plan_refinement(spatial, temporal, config)
            with block():
                refined = chain.refine_structure(spatial, temporal, structure, config, torch.Generator().manual_seed(0))
            out["temporal" + suffix], out["temporal_log" + suffix] = rec.take()
            out["outputs" + suffix] = (structure, refined)
            if staged:
                sigmas = temporal.expert.stage_sigmas(temporal.expert.plan[0])[0]
                _ade_ksampler(model, cond, sigmas, frames)
                out["temporal_reference"], out["temporal_reference_log"] = rec.take()
    (s1, r1), (s0, r0) = out.pop("outputs"), out.pop("outputs_per_evaluation")
    out.update(structure_equal=torch.equal(s0, s1), refined_equal=torch.equal(r0, r1),
               finite=bool(torch.isfinite(r1).all()),
               schedule_sigma_max=float(model.get_model_object("model_sampling").sigma_max),
               sampling_function=f"{comfy.samplers.sampling_function.__module__}."
                                 f"{comfy.samplers.sampling_function.__name__}")
    return out


def ignored_noise_warning(ckpt_name: str, noise_type: str) -> dict:
    """The Control Expert node on a model whose ADE Sample Settings ask for ``noise_type``: the warnings it logs."""
    import torch

    control_node = _pack(".nodes.control_expert").ConFinerControlExpert
    _, model, cond = _ade_model(ckpt_name, 4, 1, 1, noise_type)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger(_pack(".nodes.ade").__name__)
    logger.addHandler(handler)
    host = _pack(".nodes.host")
    texts = []
    show_text = host.show_text
    host.show_text = lambda node_id, text: texts.append(text)
    try:
        control_node.execute(model, cond, cond, {"samples": torch.zeros(6, 4, 8, 8)}, 0, 2, 1.0, "euler")
    finally:
        logger.removeHandler(handler)
        host.show_text = show_text
    return {"warnings": records, "texts": texts}
