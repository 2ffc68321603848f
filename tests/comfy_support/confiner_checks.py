"""In-worker checks for the ConFiner pack (run inside the ComfyUI worker via ``ComfyWorker.call``)."""

from __future__ import annotations

import contextlib


def schedule_matches_comfy(ckpt_name: str) -> dict:
    """The ConFiner expert's schedule against ComfyUI's own model_sampling, timestep by timestep."""
    import sys

    import torch

    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path("checkpoints", ckpt_name)
    model = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]
    pack = next(m for name, m in sys.modules.items() if name.endswith("confiner.nodes.host")
                or (name.endswith(".nodes.host") and hasattr(m, "ComfyExpert")))
    expert = pack.ComfyExpert(model, "spatial")
    ms = model.get_model_object("model_sampling")
    worst = 0.0
    for t in (0, 19, 100, 250, 500, 999):
        ours = expert.host_sigma(t)
        theirs = float(ms.sigma(torch.tensor(float(t))))
        worst = max(worst, abs(ours - theirs) / theirs)
        assert int(ms.timestep(torch.tensor(ours))) == t
    return {"max_rel_error": worst, "sigma_max": float(ms.sigma_max), "schedule": expert.schedule.name,
            "layout": expert.layout, "latent_space": expert.latent_space.name}


def comfy_nearest_timesteps(pairs: list) -> dict:
    """ComfyUI's own noise-level matching, for the core's ``nearest`` (ModelSamplingDiscrete.timestep: the table
    entry nearest in log sigma): for each (source, target) pair of beta schedules, given as ComfyUI's
    make_beta_schedule arguments, the target timestep of each source timestep's sigma."""
    import comfy.model_sampling

    def sampling(schedule: dict):
        ms = comfy.model_sampling.ModelSamplingDiscrete()
        ms._register_schedule(**schedule)
        return ms

    return {name: [int(t) for t in sampling(target).timestep(sampling(source).sigmas)]
            for name, (source, target) in pairs}


def all_models_unpatched() -> dict:
    """After a run (or an interruption) no loaded model may keep patches applied by a sampling call."""
    import comfy.model_management as mm

    states = []
    for lm in mm.current_loaded_models:
        patcher = lm.model
        base = getattr(patcher, "model", None)
        states.append({"current_patcher": getattr(base, "current_patcher", None) is not None})
    return {"models": len(states), "any_current_patcher": any(s["current_patcher"] for s in states)}


def _pack_module(suffix: str):
    import sys

    return next(m for name, m in sys.modules.items() if name.endswith(suffix) and "confiner" in name)


def _load(ckpt_name: str):
    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path("checkpoints", ckpt_name)
    model, clip = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=True)[:2]
    tokens = clip.tokenize("a red ball")
    cond = clip.encode_from_tokens_scheduled(tokens)
    return model, cond


def wrappers_fire_per_evaluation(ckpt_name: str, staged: bool = False) -> dict:
    """Register OUTER_SAMPLE and APPLY_MODEL wrappers on the MODEL (what ADE, hooks and model patches use) and count
    their calls while ConFiner's control stage runs: every expert evaluation must pass through them. ``staged``: in a
    node's stage (one long-lived sampling call serves the stage), else one sampling call per evaluation."""
    import contextlib

    import torch

    import comfy.patcher_extension as pe

    host = _pack_module(".nodes.host")
    chain = _pack_module("confiner_core.chain")
    log_mod = _pack_module("confiner_core.experts")
    model, cond = _load(ckpt_name)
    model = model.clone()
    calls = {"outer_sample": 0, "apply_model": 0}

    def outer(executor, *args, **kwargs):
        calls["outer_sample"] += 1
        return executor(*args, **kwargs)

    def apply(executor, *args, **kwargs):
        calls["apply_model"] += 1
        return executor(*args, **kwargs)

    model.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, "confiner-test", outer)
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "confiner-test", apply)
    log = log_mod.EvaluationLog()
    d = host.bind(model, cond, cond, 3.0, "control", 0, log)
    config = chain.ChainConfig(control_steps=3)
    host.plan_control(d, config)
    noise = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    with _pack_module(".nodes.sessions").stage(force=True) if staged else contextlib.nullcontext():
        out = chain.generate_structure(d, noise, config, torch.Generator().manual_seed(0))
    return {"evaluations": sum(log.evaluations.values()), "forwards": sum(log.forwards.values()), **calls,
            "finite": bool(torch.isfinite(out).all())}


def torch_compile_node_composes(ckpt_name: str) -> dict:
    """ComfyUI's own TorchCompileModel node (an APPLY_MODEL wrapper that swaps in the torch.compile'd diffusion_model)
    on the control expert: every evaluation must run compiled graphs and give the eager result. The backend is a
    counting callable that runs Dynamo's captured FX graphs as they are (no inductor), so this stays fast on CPU."""
    import torch

    import comfy.patcher_extension as pe
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS.get("TorchCompileModel")
    if node is None:
        return {"available": False, "reason": "this ComfyUI has no TorchCompileModel node (comfy_extras/nodes_torch_compile.py)"}
    host = _pack_module(".nodes.host")
    chain = _pack_module("confiner_core.chain")
    log_mod = _pack_module("confiner_core.experts")
    model, cond = _load(ckpt_name)
    counts = {"graphs": 0, "calls": 0}
    per_apply = []

    def counting_backend(gm, example_inputs):
        counts["graphs"] += 1

        def run(*args):
            counts["calls"] += 1
            return gm.forward(*args)
        return run

    def per_evaluation(executor, *args, **kwargs):  # added after the node's wrapper, so it runs inside its swap
        before = dict(counts)
        out = executor(*args, **kwargs)
        per_apply.append({k: counts[k] - before[k] for k in counts})
        return out

    def control_stage(m):
        log = log_mod.EvaluationLog()
        d = host.bind(m, cond, cond, 3.0, "control", 0, log)
        noise = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
        out = chain.generate_structure(d, noise, chain.ChainConfig(control_steps=3), torch.Generator().manual_seed(0))
        return out, sum(log.evaluations.values())

    torch._dynamo.reset()
    try:
        plain, _ = control_stage(model.clone())
        # the node itself, our callable as its backend: 0.8.x also passes options={"guard_filter_fn": ...}, which
        # torch.compile pops before building the backend, so a plain (gm, example_inputs) callable works
        compiled_model = node.execute(model, backend=counting_backend).result[0]
        options = compiled_model.model_options["torch_compile_kwargs"]["options"]
        compiled_model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "confiner-test", per_evaluation)
        compiled, evaluations = control_stage(compiled_model)
    finally:
        torch._dynamo.reset()  # drop the compiled code cached on ComfyUI's module code objects for the rest of the worker
    return {"available": True, "evaluations": evaluations, **counts, "per_apply_model": per_apply,
            "options_passed": options is not None, "finite": bool(torch.isfinite(compiled).all()),
            "max_abs_diff": float((plain - compiled).abs().max()), "scale": float(plain.abs().max())}


def patched_schedule_is_respected(ckpt_name: str) -> dict:
    """An object-patched model_sampling (what ADE's 'sqrt_linear (AnimateDiff)' beta schedule does) must become the
    expert's schedule: sigma_max 25.146 instead of SD's 14.615."""
    host = _pack_module(".nodes.host")
    model, _ = _load(ckpt_name)
    patched = _sqrt_linear_clone(model)
    return {"plain": float(host.schedule_of(model, "x").ve_sigmas[-1]),
            "patched": float(host.schedule_of(patched, "x").ve_sigmas[-1])}


def _sqrt_linear_clone(model):
    """A clone of ``model`` with an object-patched model_sampling on the sqrt_linear beta schedule, as ADE's
    'sqrt_linear (AnimateDiff)' patches it."""
    import comfy.model_sampling

    class SqrtLinear(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    ms = SqrtLinear(model.model.model_config)
    ms._register_schedule(beta_schedule="sqrt_linear", linear_start=0.00085, linear_end=0.012)
    clone = model.clone()
    clone.add_object_patch("model_sampling", ms)
    return clone


def use_latent2rgb_previews(enabled: bool = True) -> str:
    """Turn latent previews on (latent2rgb needs no decoder weights) or back to none, in both ComfyUI versions."""
    import latent_preview
    from comfy.cli_args import LatentPreviewMethod, args

    method = LatentPreviewMethod.Latent2RGB if enabled else LatentPreviewMethod.NoPreviews
    args.preview_method = method
    if hasattr(latent_preview, "default_preview_method"):  # 0.8.x resets it per prompt from this default
        latent_preview.default_preview_method = method
    return str(method)


def interrupt_latency(api_prompt: dict, at_evaluation: int, staged: bool = False) -> dict:
    """Run ``api_prompt`` and press Cancel while expert evaluation ``at_evaluation`` runs: the flag is set as that
    evaluation's model call (``CFGGuider.outer_predict_noise``, the same in a stage's long-lived sampling call and in
    a sampling call of its own) returns. Progress updates do not check the flag here, so only the pack's own checks
    can stop the run. Counts the evaluations that started after Cancel and the sampling calls still open after.
    ``staged``: with stage sessions (the default) or without (as ``CONFINER_STAGE_SESSIONS=0`` sets it)."""
    import comfy.model_management as mm
    import comfy.samplers

    from comfy_support import harness

    sessions = _pack_module(".nodes.sessions")
    enabled, sessions.ENABLED = sessions.ENABLED, staged

    original = comfy.samplers.CFGGuider.outer_predict_noise
    calls = {"done": 0, "after": 0}

    def predict(self, *args, **kwargs):
        if at_evaluation == 0 and calls["done"] == 0:   # (0: while the first evaluation runs, none finished)
            mm.interrupt_current_processing(True)
        elif calls["done"] >= at_evaluation:
            calls["after"] += 1
        out = original(self, *args, **kwargs)
        calls["done"] += 1
        if calls["done"] == at_evaluation:
            mm.interrupt_current_processing(True)
        return out

    comfy.samplers.CFGGuider.outer_predict_noise = predict
    try:
        res = harness.run_prompt(api_prompt, fresh_cache=True, progress=harness.ProgressRecorder(check_interrupt=False))
    finally:
        comfy.samplers.CFGGuider.outer_predict_noise = original
        mm.interrupt_current_processing(False)
        sessions.ENABLED = enabled
    texts = [d["text"] for e, d in res.server_messages if e == "progress_text"]
    return {"interrupted": bool(res.interrupted), "success": bool(res.success), "evaluations": calls["done"],
            "evaluations_after_cancel": calls["after"], "error": res.error, "last_text": texts[-1] if texts else None,
            **sessions_state()}


def run_counting_evaluations(api_prompt: dict, fresh_cache: bool = False) -> dict:
    """Run ``api_prompt`` and count expert evaluations (``CFGGuider.outer_predict_noise`` calls: one per ConFiner
    evaluation, one per step of an ordinary sampler)."""
    import comfy.samplers

    from comfy_support import harness

    original = comfy.samplers.CFGGuider.outer_predict_noise
    calls = {"n": 0}

    def predict(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    comfy.samplers.CFGGuider.outer_predict_noise = predict
    try:
        res = harness.run_prompt(api_prompt, fresh_cache=fresh_cache)
    finally:
        comfy.samplers.CFGGuider.outer_predict_noise = original
    return {**res.to_json(), "evaluations": calls["n"]}


def eq6_noise_against_control_noise(workflow: dict) -> dict:
    """Run a UI ``workflow`` and compare the Control Expert's starting noise V_T with the Refine Sampler's first draw,
    Eq. 6's fresh noise (``extract_structure``'s): with equal seeds on the two nodes they were the same tensor."""
    import torch

    from comfy_support import harness

    chain, control = _pack_module("confiner_core.chain"), _pack_module(".nodes.control_expert")
    draws = {"control": [], "eq6": []}

    def recording(name, original):
        def draw(*args, **kwargs):
            out = original(*args, **kwargs)
            draws[name].append(out.clone())
            return out
        return draw

    with _replaced(control, "randn_like", recording("control", control.randn_like)), \
            _replaced(chain, "randn_like", recording("eq6", chain.randn_like)):
        res = harness.run_workflow(workflow, fresh_cache=True)
    assert res.success, res.to_json()
    v_t, eps = draws["control"][0], draws["eq6"][0]
    return {"shapes": [list(v_t.shape), list(eps.shape)], "equal": bool(torch.equal(v_t, eps)),
            "correlation": float(torch.corrcoef(torch.stack([v_t.flatten(), eps.flatten()]))[0, 1])}


def motion_models_make_a_video_expert(ckpt_name: str) -> dict:
    """SD 1.5 takes frame batches; with AnimateDiff's motion modules attached (where AnimateDiff-Evolved keeps them:
    the patcher's additional models under "ADE"; a stand-in here, as no tiny motion model exists) it relates them.
    What the core's image-expert check (``chain.frames_alone_warnings``) says of each, as control expert."""
    from types import SimpleNamespace

    host, chain = _pack_module(".nodes.host"), _pack_module(".confiner_core.chain")
    model, _ = _load(ckpt_name)
    animated = model.clone()
    animated.additional_models = {**animated.additional_models, "ADE": [SimpleNamespace(model=None)]}
    said = {}
    for name, m in (("bare", model), ("with_motion_models", animated)):
        expert = host.ComfyExpert(m, "control")
        said[name] = {"layout": expert.layout, "relates_frames": expert.relates_frames,
                      "warnings": chain.frames_alone_warnings(SimpleNamespace(expert=expert), None)}
    return said


def run_with_motion_frame_limit(api_prompt: dict, limit: int) -> dict:
    """:func:`run_counting_evaluations` with every model's motion frame limit read as ``limit``, as an AnimateDiff
    motion model of that context length would give it (AnimateDiff-Evolved is not loaded in these tests)."""
    ade = _pack_module(".nodes.ade")
    original = ade.motion_frame_limit
    ade.motion_frame_limit = lambda model: limit
    try:
        return run_counting_evaluations(api_prompt, fresh_cache=True)
    finally:
        ade.motion_frame_limit = original


def run_with_motion_model_names(api_prompt: dict, names: list) -> dict:
    """:func:`run_counting_evaluations` with every model's ADE motion models named ``names`` (as ADE records the
    files it loaded; AnimateDiff-Evolved is not loaded in these tests), and each node's last progress text."""
    ade = _pack_module(".nodes.ade")
    with _replaced(ade, "motion_model_names", lambda model: list(names)):
        return _with_texts(run_counting_evaluations(api_prompt, fresh_cache=True))


def run_with_motion_models(api_prompt: dict, names: list) -> dict:
    """:func:`run_counting_evaluations` with ADE motion models of these file names attached to every model (as ADE
    keeps them: ``additional_models``, each with its ``mm_info.mm_name``; their UNets stay as they are), and each
    node's last progress text."""
    from types import SimpleNamespace

    ade = _pack_module(".nodes.ade")
    attached = [SimpleNamespace(model=SimpleNamespace(mm_info=SimpleNamespace(mm_name=n))) for n in names]
    with _replaced(ade, "motion_models", lambda model: list(attached)):
        return _with_texts(run_counting_evaluations(api_prompt, fresh_cache=True))


# AnimateDiff-Evolved's injection as it fails on a UNet of fewer blocks than its motion model (compiled under ADE's
# file name: the pack recognises ADE's frames in a traceback by their file and function names)
_ADE_INJECT = """
class AnimateDiffModel:
    def __init__(self, name):
        self.mm_info = type("Info", (), {"mm_name": name})()
    def inject(self, model):
        self._inject([[], []], ["down 0", "down 1", "down 2", "down 3"])
    def _inject(self, unet_blocks, mm_blocks):
        for i, block in enumerate(mm_blocks):
            unet_blocks[i].append(block)
"""


def run_with_failing_motion_injection(api_prompt: dict, name: str) -> dict:
    """:func:`run_counting_evaluations` where loading a model for sampling fails inside ADE's motion-model injection
    (a motion model that does not fit the checkpoint's UNet; AnimateDiff-Evolved is not loaded in these tests), and
    each node's last progress text."""
    import comfy.model_base
    import comfy.model_management as mm

    space: dict = {}
    exec(compile(_ADE_INJECT, "custom_nodes/ComfyUI-AnimateDiff-Evolved/animatediff/motion_module_ad.py", "exec"),
         space)
    original = mm.load_models_gpu

    def load_models_gpu(models, *args, **kwargs):   # a diffusion model loaded for sampling (not a text encoder)
        if any(isinstance(getattr(m, "model", None), comfy.model_base.BaseModel) for m in models):
            space["AnimateDiffModel"](name).inject(None)
        return original(models, *args, **kwargs)

    with _replaced(mm, "load_models_gpu", load_models_gpu):
        return _with_texts(run_counting_evaluations(api_prompt, fresh_cache=True))


@contextlib.contextmanager
def _replaced(owner, name: str, value):
    """``owner.name`` is ``value`` inside, what it was after."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _with_texts(result: dict) -> dict:
    """A run's result with each node's last progress text (``texts``, by node id)."""
    return {**result, "texts": {d["node_id"]: d["text"] for e, d in result["server_messages"]
                                if e == "progress_text"}}


def sessions_state() -> dict:
    """What an ended stage must leave: no thread serving a session (the pack's session workers live on, idle, so
    their per-thread caches stay warm: they are named "ConFiner <role> expert session" only while they serve one),
    no model with a current patcher, ComfyUI's own sampling_function in place (AnimateDiff-Evolved swaps its own in
    for the length of a sampling call)."""
    import threading

    import comfy.samplers

    return {"session_threads": [t.name for t in threading.enumerate() if t.name.startswith("ConFiner ")
                                and t.name.endswith(" expert session")],
            "sampling_function": f"{comfy.samplers.sampling_function.__module__}."
                                 f"{comfy.samplers.sampling_function.__name__}",
            "idle_workers": sorted(t.ident for t in _pack_module(".nodes.sessions")._Worker.idle),
            **all_models_unpatched()}


class _CallCounter:
    """Counts calls of ComfyUI functions by name while active (module attributes and methods, looked up at call
    time by ComfyUI, so replacing them here sees every call)."""

    TARGETS = (("comfy.samplers", "CFGGuider", "sample"), ("comfy.samplers", "CFGGuider", "outer_predict_noise"),
               ("comfy.model_management", None, "load_models_gpu"), ("comfy.sampler_helpers", None, "cleanup_models"),
               ("comfy.model_patcher", "ModelPatcher", "pre_run"), ("comfy.model_patcher", "ModelPatcher", "cleanup"))

    def __init__(self):
        import importlib

        self.counts = {name: 0 for *_, name in self.TARGETS}
        self.saved = []
        for module, cls, name in self.TARGETS:
            owner = importlib.import_module(module)
            owner = getattr(owner, cls) if cls else owner
            self.saved.append((owner, name, getattr(owner, name)))

    def __enter__(self):
        for owner, name, original in self.saved:
            setattr(owner, name, self._counting(name, original))
        return self

    def _counting(self, name, original):
        def counting(*args, **kwargs):
            self.counts[name] += 1
            return original(*args, **kwargs)
        return counting

    def __exit__(self, *exc):
        for owner, name, original in self.saved:
            setattr(owner, name, original)

    def take(self) -> dict:
        counts, self.counts = self.counts, {k: 0 for k in self.counts}
        return counts


def _patched_clone(model):
    """A clone of ``model`` with what a LoRA'd AnimateDiff model carries: a weight patch and an object-patched
    schedule (sqrt_linear, ADE's beta schedule). Sharing the base model with ``model``, it makes ComfyUI swap weights,
    object patches and the current patcher whenever the two alternate."""
    import torch

    clone = _sqrt_linear_clone(model)
    key = "diffusion_model.out.2.weight"
    weight = model.model_state_dict()[key]
    clone.add_patches({key: (torch.full_like(weight, 0.01),)}, strength_patch=1.0)
    return clone


def _chain_run(host, chain, control_model, spatial_model, temporal_model, cond, staged: bool, frames: int = 3):
    """The control stage and a coordinated refinement of a few frames (no refinement without ``spatial_model``), each
    stage in a node's stage block (sessions) or with one sampling call per evaluation."""
    import contextlib

    import torch

    sessions = _pack_module(".nodes.sessions")
    block = (lambda: sessions.stage(force=True)) if staged else contextlib.nullcontext
    config = chain.ChainConfig(control_steps=3, refine_steps=3)
    control = host.bind(control_model, cond, cond, 1.0, "control", 0)
    host.plan_control(control, config)
    noise = torch.randn(1, 4, frames, 8, 8, generator=torch.Generator().manual_seed(0))
    with block():
        structure = chain.generate_structure(control, noise, config, torch.Generator().manual_seed(0))
    if spatial_model is None:  # the control stage alone
        return structure, None
    spatial = host.bind(spatial_model, cond, cond, 3.0, "spatial", 0)
    temporal = host.bind(temporal_model, cond, cond, 3.0, "temporal", 0)
    host.plan_refinement(spatial, temporal, config)
    with block():
        refined = chain.refine_structure(spatial, temporal, structure, config, torch.Generator().manual_seed(0))
    return structure, refined


def stage_sessions_against_single_calls(ckpt_name: str, at_call: int = 2) -> dict:
    """ConFiner's control stage and coordinated refinement with stage sessions and with one sampling call per
    evaluation: the outputs, and how often ComfyUI set up and tore down a sampling call. The temporal expert shares
    the base model with the spatial one but carries a weight patch and a patched schedule, as a LoRA'd AnimateDiff
    model does, so every hand-over between the two swaps them.

    Then an error raised inside an evaluation that a session serves (as ComfyUI 0.8's Cancel check inside the model
    does, here in the ``at_call``-th temporal evaluation): it must reach the node's thread as the same exception and
    every session must end through ComfyUI's clean-up (that a run after a Cancel gives what a clean run gives is
    ``test_interruption_ends_cleanly_and_reruns_identically``, through the nodes)."""
    import torch

    import comfy.model_management as mm
    import comfy.patcher_extension as pe

    host = _pack_module(".nodes.host")
    chain = _pack_module("confiner_core.chain")
    model, cond = _load(ckpt_name)
    patched = _patched_clone(model)
    out = {}
    with _CallCounter() as counter:
        runs = {}
        for staged in (False, True):
            runs[staged] = _chain_run(host, chain, patched, model, patched, cond, staged)
            out["staged" if staged else "single"] = {"calls": counter.take(), **sessions_state()}
    (s0, r0), (s1, r1) = runs[False], runs[True]
    out.update(structure_equal=torch.equal(s0, s1), refined_equal=torch.equal(r0, r1),
               finite=bool(torch.isfinite(r1).all()),
               # the patches matter: without them the control stage alone already gives another structure
               patches_change_output=not torch.equal(s1, _chain_run(host, chain, model.clone(), None, None, cond,
                                                                    True)[0]))

    failing = patched.clone()
    calls = {"n": 0}

    def interrupt_at(executor, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise mm.InterruptProcessingException()
        return executor(*args, **kwargs)

    failing.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "confiner-test", interrupt_at)
    raised = None
    try:
        _chain_run(host, chain, patched, model, failing, cond, True)
    except mm.InterruptProcessingException as e:
        raised = type(e).__name__
    out["error"] = {"raised": raised, "temporal_calls": calls["n"], **sessions_state()}
    return out


def session_ended_by_a_wrapper_falls_back(ckpt_name: str) -> dict:
    """A wrapper that returns from the temporal expert's first sampling call without running the sampler (as a pack
    whose wrapper skips or splits the sampling would): that call is the expert's stage session, which so ends before
    its evaluation. The stage must evaluate the expert by sampling calls of their own from then on, warn once, and
    give what a run without sessions and without the wrapper gives."""
    import logging

    import torch

    import comfy.patcher_extension as pe

    host = _pack_module(".nodes.host")
    chain = _pack_module("confiner_core.chain")
    sessions = _pack_module(".nodes.sessions")
    model, cond = _load(ckpt_name)
    patched = _patched_clone(model)
    _, reference = _chain_run(host, chain, patched, model, patched, cond, False)
    skipping = patched.clone()
    calls = {"outer_sample": 0}

    def skip_first(executor, *args, **kwargs):
        calls["outer_sample"] += 1
        if calls["outer_sample"] == 1:
            return args[1]  # the latent image, untouched: the sampler never ran
        return executor(*args, **kwargs)

    skipping.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, "confiner-test", skip_first)
    warnings = []

    class Recorder(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    handler = Recorder(level=logging.WARNING)
    sessions.log.addHandler(handler)
    try:
        _, refined = _chain_run(host, chain, patched, model, skipping, cond, True)
    finally:
        sessions.log.removeHandler(handler)
    return {"refined_equal": torch.equal(refined, reference), "temporal_sampling_calls": calls["outer_sample"],
            "warnings": warnings, **sessions_state()}


def mixed_latent_spaces_refused(ckpt_name: str) -> dict:
    """ConFiner Refine Experts given a temporal model in another latent space (an SDXL latent format object-patched
    onto the model, as a different family would have) and no VAEs: the bundle takes it (a bridge is possible), the
    Refine Sampler's check before the structure refuses it, naming the VAE input to connect."""
    import comfy.latent_formats

    bundle = _pack_module(".nodes.refine_experts").ConFinerRefineExperts
    sampler = _pack_module(".nodes.coordinated_sampler").ConFinerCoordinatedSampler
    model, cond = _load(ckpt_name)
    other = model.clone()
    other.add_object_patch("latent_format", comfy.latent_formats.SDXL())
    experts = bundle.execute(model, cond, cond, 7.5, other, cond, cond, 7.5).result[0]
    try:
        sampler.check_lazy_status(experts, 100, 5, "coordinated", "same_index", 0)
    except ValueError as e:
        return {"refused": True, "message": str(e)}
    return {"refused": False, "message": ""}


def input_labels(prefix: str = "ConFiner") -> dict:
    """``{node_id: [label, ...]}``: every input of the pack's nodes as the frontend labels it (display name, else id)."""
    import nodes

    return {nid: [i.display_name or i.id for i in cls.define_schema().inputs]
            for nid, cls in nodes.NODE_CLASS_MAPPINGS.items() if nid.startswith(prefix)}


def advanced_labels(prefix: str = "ConFiner") -> dict:
    """``{node_id: [label, ...]}``: the inputs the pack's nodes flag advanced (hidden until "Show Advanced")."""
    import nodes

    return {nid: [i.display_name or i.id for i in cls.define_schema().inputs if (i.extra_dict or {}).get("advanced")]
            for nid, cls in nodes.NODE_CLASS_MAPPINGS.items() if nid.startswith(prefix)}


def combo_options(prefix: str = "ConFiner") -> dict:
    """``{node_id: {label: [option, ...]}}``: the choices of every combo input of the pack's nodes."""
    import nodes

    return {nid: {i.display_name or i.id: list(i.options) for i in cls.define_schema().inputs
                  if getattr(i, "options", None) is not None}
            for nid, cls in nodes.NODE_CLASS_MAPPINGS.items() if nid.startswith(prefix)}


def half_precision_latents_are_read(ckpt_name: str) -> dict:
    """A float16 / bfloat16 LATENT (a saved one, another pack's) into the nodes' latent inputs: read as float32."""
    import torch

    host = _pack_module(".nodes.host")
    model, _ = _load(ckpt_name)
    out = {}
    for dtype in (torch.float16, torch.bfloat16):
        samples = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
        x = host.latent_in(model, {"samples": samples}, "control")
        noise = host.noise_in(model, {"samples": samples})
        out[str(dtype)] = [str(x.dtype), str(noise.dtype), list(x.shape)]
    return out


def noise_rescheduler_warnings(frames: int, segment_length: int) -> list:
    """The Noise Rescheduler on an SD latent of ``frames`` frames: the warnings it logs."""
    import logging

    import torch

    node = _pack_module(".nodes.noise_rescheduler").ConFinerNoiseRescheduler
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    try:
        node.execute({"samples": torch.zeros(frames, 4, 8, 8)}, 0, "shuffle", segment_length, 2)
    finally:
        logging.getLogger().removeHandler(handler)
    return [r for r in records if "Noise Rescheduler" in r]


def noise_rescheduler_refusal(segment_length: int, stride: int) -> str | None:
    """The Noise Rescheduler run with these values (as links give them: queue-time validation sees None): its
    refusal, or None."""
    import torch

    node = _pack_module(".nodes.noise_rescheduler").ConFinerNoiseRescheduler
    try:
        node.execute({"samples": torch.zeros(16, 4, 8, 8)}, 0, "freenoise", segment_length, stride)
    except ValueError as e:
        return str(e)
    return None


def rescheduled_noise_items(method: str) -> dict:
    """The Noise Rescheduler's noise for a Wan-shaped video latent of batch 2, of batch 1, and of batch 1 as item 1
    picked by Latent From Batch (``batch_index`` [1]): whether each clip's noise is its own seed's batch-1 noise."""
    import torch

    module = _pack_module(".nodes.noise_rescheduler")
    noise = module.rescheduled_noise
    shape = (16, 6, 4, 4)
    two = noise({"samples": torch.zeros(2, *shape)}, method, 3, 2, 7)
    one = noise({"samples": torch.zeros(1, *shape)}, method, 3, 2, 7)
    picked = noise({"samples": torch.zeros(1, *shape), "batch_index": [1]}, method, 3, 2, 7)
    # the node's noise_latent keeps the picked clip's index, which the samplers draw that clip's noise from
    out = module.ConFinerNoiseRescheduler.execute({"samples": torch.zeros(1, *shape), "batch_index": [1]}, 7, method,
                                                  3, 2).args[1]
    return {"item0_is_batch1": bool(torch.equal(two[:1], one)), "item1_is_picked": bool(torch.equal(two[1:], picked)),
            "items_differ": not torch.allclose(two[0], two[1]), "shape": list(two.shape),
            "node_keeps_index": out.get("batch_index") == [1] and bool(torch.equal(out["samples"], picked))}


def control_expert_against_comfys_sampler(ckpt_name: str, sampler: str, steps: int, seed: int = 4) -> dict:
    """The Control Expert (cfg 1, trailing) against ComfyUI's own sampler of that name (``comfy.sample.sample_custom``,
    k-diffusion's code) over the same sigmas: ComfyUI's model_sampling at DPMSolverMultistepScheduler's trailing
    timesteps, then 0. The noise is the seed's draw in the core's layout ([1, C, F, h, w], float32), replayed here."""
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    import comfy.sample
    import comfy.samplers
    import folder_paths

    from comfy_support import harness

    frames, size = 4, 64
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red ball", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": frames}},
        "5": {"class_type": "ConFinerControlExpert", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["4", 0], "seed": seed,
            "steps": steps, "cfg": 1.0, "sampler": sampler, "latent_is_noise": False}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"against_{sampler}"}},
    }
    res = harness.run_prompt(prompt, fresh_cache=True)
    assert res.success, res.to_json()
    saved = res.outputs["6"]["latents"][0]
    ours = load_file(str(Path(folder_paths.get_output_directory()) / saved["subfolder"] / saved["filename"]))
    ours = ours["latent_tensor"].to(torch.float64)

    model, cond = _load(ckpt_name)
    timesteps = torch.arange(1000, 0, -1000 / steps).round() - 1          # diffusers' "trailing"
    ms = model.get_model_object("model_sampling")
    sigmas = torch.cat([ms.sigma(timesteps), torch.zeros(1)])
    noise = torch.randn(1, 4, frames, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
    noise = noise[0].transpose(0, 1).contiguous()                         # [F, C, h, w], ComfyUI's frame batch
    ref = comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.sampler_object(sampler), sigmas, cond, cond,
                                     torch.zeros_like(noise), disable_pbar=True, seed=seed).to(torch.float64)
    return {"max_abs_diff": float((ours - ref).abs().max()), "max_abs": float(ref.abs().max()),
            "sigmas": [float(s) for s in sigmas], "shape": list(ours.shape)}
