"""In-worker checks of the pack with modern experts: the tiny Wan 2.1 / Wan 2.2 A14B / Qwen-Image / Flux.1 files loaded
by ComfyUI's own loaders (``tiny_modern_files.install()`` first; run through ``ComfyWorker.call``)."""

from __future__ import annotations

from comfy_support.confiner_checks import _CallCounter, _pack_module
from comfy_support.tiny_modern_files import FILES

WAN = "confiner-tiny-wan2.1-t2v.safetensors"
HIGH = "confiner-tiny-wan2.2-t2v-a14b-high-noise.safetensors"
LOW = "confiner-tiny-wan2.2-t2v-a14b-low-noise.safetensors"
QWEN = "confiner-tiny-qwen-image.safetensors"
WAN_VAE = "confiner-tiny-wan2.1-vae.safetensors"
UMT5 = "confiner-tiny-umt5-xxl.safetensors"
QWEN_VL = "confiner-tiny-qwen2.5-vl-7b.safetensors"
FLUX = "confiner-tiny-flux1-dev.safetensors"
FLUX_VAE = "confiner-tiny-flux-ae.safetensors"
T5XXL = "confiner-tiny-t5-xxl.safetensors"
CLIP_L = "confiner-tiny-clip-l.safetensors"
ROLES = ("control", "spatial", "temporal")
assert {WAN, HIGH, LOW, QWEN, WAN_VAE, UMT5, QWEN_VL, FLUX, FLUX_VAE, T5XXL, CLIP_L} == set(FILES)


def _unet(name: str):
    import nodes

    return nodes.UNETLoader().load_unet(name, "default")[0]


def _vae(name: str = WAN_VAE):
    import nodes

    return nodes.VAELoader().load_vae(name)[0]


def _cond(clip_name: str, clip_type: str, text: str = "a red fox runs over the grass"):
    import nodes

    clip = nodes.CLIPLoader().load_clip(clip_name, clip_type)[0]
    return nodes.CLIPTextEncode().encode(clip, text)[0]


def loaders_detect() -> dict:
    """What ComfyUI's UNETLoader / VAELoader / CLIPLoader make of the tiny files, and what the pack makes of the
    models: latent space, image or video model, evaluation layout per role, schedule against ComfyUI's own shift
    formula (time_snr_shift of (t + 1) / 1000, the table its flow samplers use)."""
    import torch

    import comfy.model_sampling

    host = _pack_module(".nodes.host")
    out = {"models": {}}
    for name in (WAN, HIGH, LOW, QWEN):
        model = _unet(name)
        ms = model.get_model_object("model_sampling")
        experts = {role: host.ComfyExpert(model, role) for role in ROLES}
        multiplier = getattr(ms, "multiplier", 1.0)
        worst = max(abs(experts["control"].host_sigma(t) -
                        float(ms.sigma(torch.tensor((t + 1) / 1000 * multiplier)))) for t in (0, 99, 500, 999))
        out["models"][name] = {
            "class": type(model.model).__name__, "latent_format": type(model.model.latent_format).__name__,
            "flow": isinstance(ms, comfy.model_sampling.CONST), "shift": float(ms.shift),
            "sampling": type(ms).__mro__[1].__name__,
            "space": host.space_of(model).name, "image_model": host.is_image_model(model),
            "layouts": {role: e.layout for role, e in experts.items()},
            "one_frame_videos": {role: e.one_frame_videos for role, e in experts.items()},
            "schedule_max_abs_error": worst}
    vae = _vae()
    video = torch.rand(5, 32, 32, 3)
    latent = vae.encode(video)
    out["vae"] = {"latent_channels": vae.latent_channels, "latent_dim": vae.latent_dim,
                  "latent_shape": list(latent.shape), "decoded_shape": list(vae.decode(latent).shape)}
    wan_cond, qwen_cond = _cond(UMT5, "wan"), _cond(QWEN_VL, "qwen_image")
    out["clip"] = {"wan": list(wan_cond[0][0].shape), "qwen_image": list(qwen_cond[0][0].shape),
                   "finite": bool(torch.isfinite(wan_cond[0][0]).all() and torch.isfinite(qwen_cond[0][0]).all())}
    return out


def flux_detect() -> dict:
    """What ComfyUI's UNETLoader / VAELoader / DualCLIPLoader (type flux) make of the tiny Flux.1-dev files, and what
    the pack makes of the model (as :func:`loaders_detect`)."""
    import torch

    import comfy.model_sampling
    import nodes

    host = _pack_module(".nodes.host")
    model = _unet(FLUX)
    ms = model.get_model_object("model_sampling")
    experts = {role: host.ComfyExpert(model, role) for role in ROLES}
    worst = max(abs(experts["spatial"].host_sigma(t) - float(ms.sigma(torch.tensor((t + 1) / 1000))))
                for t in (0, 99, 500, 999))
    config = model.model.model_config
    out = {"class": type(model.model).__name__, "config": type(config).__name__,
           "model_type": model.model.model_type.name,
           "latent_format": type(model.get_model_object("latent_format")).__name__,
           "sampling": type(ms).__mro__[1].__name__, "flow": isinstance(ms, comfy.model_sampling.CONST),
           "shift": float(ms.shift), "guidance_embed": config.unet_config["guidance_embed"],
           "space": host.space_of(model).name, "image_model": host.is_image_model(model),
           "layouts": {role: e.layout for role, e in experts.items()},
           "one_frame_videos": {role: e.one_frame_videos for role, e in experts.items()},
           "text_width": host.text_width(model), "schedule_max_abs_error": worst}
    vae = _vae(FLUX_VAE)
    latent = vae.encode(torch.rand(5, 32, 32, 3))
    out["vae"] = {"latent_channels": vae.latent_channels, "latent_dim": vae.latent_dim,
                  "latent_shape": list(latent.shape), "decoded_shape": list(vae.decode(latent).shape),
                  "fits_flux_space": host.space_of(model).name if
                  _pack_module(".nodes.codecs").vae_space_problem(vae, host.space_of(model)) is None else None}
    clip = nodes.DualCLIPLoader().load_clip(CLIP_L, T5XXL, "flux")[0]
    cond = nodes.CLIPTextEncode().encode(clip, "a red fox runs over the grass")[0]
    tokens, pooled = cond[0][0], cond[0][1]["pooled_output"]
    out["clip"] = {"cond": list(tokens.shape), "pooled": list(pooled.shape),
                   "finite": bool(torch.isfinite(tokens).all() and torch.isfinite(pooled).all())}
    return out


def run_recording_flux(api_prompt: dict) -> dict:
    """:func:`run_logging_cost` of ``api_prompt``, recording every call of ComfyUI's Flux network (its batch and the
    guidance it got), the pack's reported network forwards per expert evaluation by role (``last_network_calls``),
    and the LATENTs the pack's nodes returned (as lists)."""
    import comfy.ldm.flux.model

    host = _pack_module(".nodes.host")
    flux_forward, expert_forward, latent_out = comfy.ldm.flux.model.Flux.forward, host.ComfyExpert.forward, \
        host.latent_out
    calls, evaluations, latents = [], [], []

    def recording_flux(self, x, timestep, context, y=None, guidance=None, *args, **kwargs):
        calls.append({"batch": int(x.shape[0]),
                      "guidance": None if guidance is None else [float(g) for g in guidance.flatten()]})
        return flux_forward(self, x, timestep, context, y, guidance, *args, **kwargs)

    def recording_expert(self, *args, **kwargs):
        out = expert_forward(self, *args, **kwargs)
        evaluations.append({"role": self.name, "forwards": int(self.last_network_calls),
                            "model": type(self.model.model).__name__})
        return out

    def recording_latent(*args, **kwargs):
        out = latent_out(*args, **kwargs)
        latents.append(out["samples"].tolist())
        return out

    comfy.ldm.flux.model.Flux.forward = recording_flux
    host.ComfyExpert.forward, host.latent_out = recording_expert, recording_latent
    try:
        result = run_logging_cost(api_prompt)
    finally:
        comfy.ldm.flux.model.Flux.forward = flux_forward
        host.ComfyExpert.forward, host.latent_out = expert_forward, latent_out
    return {**result, "flux_calls": calls, "expert_evaluations": evaluations, "latents": latents}


def checkpoint_is_flow(ckpt_name: str) -> bool:
    """Whether ComfyUI samples the checkpoint's model as a flow model (CONST model sampling)."""
    import comfy.model_sampling
    import nodes

    model = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt_name)[0]
    return isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.CONST)


def bridge_equals_decode_then_encode(ckpt_name: str) -> dict:
    """The bridge through ComfyUI VAEs against VAE Decode then VAE Encode done directly with ComfyUI's nodes (and
    the models' latent formats): Wan -> SD 1.5, SD 1.5 -> Wan, and Wan -> the per-frame Wan space (pixel frames: each
    decoded frame encoded alone by VAE Encode). Returns the largest differences and the codecs' call counts."""
    import torch

    import comfy.sd
    import folder_paths
    import nodes

    host = _pack_module(".nodes.host")
    codecs = _pack_module(".nodes.codecs")
    spaces = _pack_module("confiner_core.latent_spaces")
    sd_model, _, sd_vae = comfy.sd.load_checkpoint_guess_config(folder_paths.get_full_path("checkpoints", ckpt_name),
                                                                output_clip=False)[:3]
    wan_model, wan_vae = _unet(WAN), _vae()
    sd_fmt, wan_fmt = sd_model.get_model_object("latent_format"), wan_model.get_model_object("latent_format")
    sd_codec = codecs.ComfyVAECodec(sd_vae, host.space_of(sd_model), "spatial_vae")
    wan_codec = codecs.ComfyVAECodec(wan_vae, host.space_of(wan_model), "temporal_vae")
    g = torch.Generator().manual_seed(0)
    x_wan = torch.randn(1, 16, 2, 4, 4, generator=g)     # 5 pixel frames of 32x32, normalised
    x_sd = torch.randn(1, 4, 5, 4, 4, generator=g)
    decode, encode = nodes.VAEDecode(), nodes.VAEEncode()

    def direct(x, src_fmt, src_vae, dst_fmt, dst_vae, src_frames: bool, dst_frames: bool, alone: bool = False):
        samples = src_fmt.process_out(x[0].movedim(1, 0) if src_frames else x)
        images = decode.decode(src_vae, {"samples": samples})[0]           # [F, H, W, 3] in [0, 1]
        if alone:   # every frame its own one-frame video
            raw = torch.cat([encode.encode(dst_vae, images[i:i + 1])[0]["samples"] for i in range(len(images))], 2)
        else:
            raw = encode.encode(dst_vae, images)[0]["samples"]
        z = dst_fmt.process_in(raw)
        return z.movedim(0, 1).unsqueeze(0) if dst_frames else z

    pixel = spaces.per_frame(wan_codec)
    pairs = {
        "wan_to_sd": (spaces.bridge(x_wan, wan_codec, sd_codec), direct(x_wan, wan_fmt, wan_vae, sd_fmt, sd_vae,
                                                                         False, True)),
        "sd_to_wan": (spaces.bridge(x_sd, sd_codec, wan_codec), direct(x_sd, sd_fmt, sd_vae, wan_fmt, wan_vae,
                                                                       True, False)),
        "wan_to_pixel_frames": (spaces.bridge(x_wan, wan_codec, pixel),
                                direct(x_wan, wan_fmt, wan_vae, wan_fmt, wan_vae, False, False, alone=True)),
    }
    return {"max_abs_diff": {k: float((a - b).abs().max()) for k, (a, b) in pairs.items()},
            "scale": {k: float(b.abs().max()) for k, (a, b) in pairs.items()},
            "shapes": {k: [list(a.shape), list(b.shape)] for k, (a, b) in pairs.items()},
            "calls": {"sd": sd_codec.calls, "wan": wan_codec.calls, "pixel_frames": pixel.calls}}


def pair_switches_at_boundary(steps: int = 4, boundary: float = 0.875) -> dict:
    """The Wan 2.2 A14B pair in the control role: which model ComfyUI ran at each evaluation (an APPLY_MODEL wrapper
    on each model records the sigma it was called with), the evaluation log's forwards, and the sigmas of
    ComfyUI's own 'simple' schedule for the same steps (what 'trailing' spacing is for flow models). The stage runs
    in a node's stage block (stage sessions) and again with one sampling call per evaluation: both structures, and
    the sampling calls each made."""
    import contextlib

    import torch

    import comfy.patcher_extension as pe
    import comfy.samplers

    host = _pack_module(".nodes.host")
    chain = _pack_module("confiner_core.chain")
    experts = _pack_module("confiner_core.experts")
    cond = _cond(UMT5, "wan")
    calls = []

    def recorder(tag):
        def wrapper(executor, x, t, *args, **kwargs):
            calls.append((tag, float(t.flatten()[0])))
            return executor(x, t, *args, **kwargs)
        return wrapper

    models = {}
    for tag, name in (("high", HIGH), ("low", LOW)):
        models[tag] = _unet(name).clone()
        models[tag].add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "confiner-test", recorder(tag))
    log = experts.EvaluationLog()
    control = host.bind(models["high"], cond, cond, 1.0, "control", 0, log,
                        low_noise=host.LowNoise(models["low"], 1.0, boundary, "low_noise_model", "model"))
    config = chain.ChainConfig(control_steps=steps)
    host.plan_control(control, config)
    noise = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    sessions = _pack_module(".nodes.sessions")
    runs = {}
    for staged in (True, False):
        calls.clear()
        with _CallCounter() as counter, sessions.stage(force=True) if staged else contextlib.nullcontext():
            out = chain.generate_structure(control, noise, config, torch.Generator().manual_seed(0))
        runs[staged] = (out, list(calls), counter.take()["sample"], sum(log.evaluations.values()),
                        sum(log.forwards.values()))
        log.evaluations.clear()
        log.forwards.clear()
    (out, calls, staged_calls, evaluations, forwards), (single_out, single_calls, per_evaluation_calls, *_) = \
        runs[True], runs[False]
    ms = models["high"].get_model_object("model_sampling")
    simple = [float(s) for s in comfy.samplers.calculate_sigmas(ms, "simple", steps)[:-1]]
    return {"calls": calls, "simple_sigmas": simple, "evaluations": evaluations, "forwards": forwards,
            "finite": bool(torch.isfinite(out).all()),
            "pair": type(control.expert).__name__, "sessions_equal": torch.equal(out, single_out),
            "same_calls": calls == single_calls,
            "sampling_calls": {"session": staged_calls, "per_evaluation": per_evaluation_calls}}


def run_logging_cost(api_prompt: dict) -> dict:
    """Run ``api_prompt`` (fresh cache), counting expert evaluations (CFGGuider.sample calls) and capturing the
    ConFiner nodes' cost lines (``cost_lines``) and every console line of the pack (``console``)."""
    import logging

    from comfy_support import confiner_checks

    lines, console = [], []

    class Capture(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("ConFiner "):
                lines.append(message)
            if message.startswith("ConFiner"):
                console.append(message)

    handler = Capture(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))
    try:
        result = confiner_checks.run_counting_evaluations(api_prompt, fresh_cache=True)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return {**result, "cost_lines": lines, "console": console}


def run_with_and_without_sessions(api_prompt: dict) -> dict:
    """:func:`run_logging_cost` of ``api_prompt`` as the nodes run it (stage sessions), then again with one sampling
    call per evaluation (``sessions.ENABLED`` off, as ``CONFINER_STAGE_SESSIONS=0`` sets it): the first run's result,
    and whether every LATENT the pack's nodes returned was the same, bit for bit."""
    import torch

    host = _pack_module(".nodes.host")
    sessions = _pack_module(".nodes.sessions")
    original, enabled = host.latent_out, sessions.ENABLED
    latents = {True: [], False: []}
    results = {}
    try:
        for staged in (True, False):
            def recording(*args, _into=latents[staged], **kwargs):
                out = original(*args, **kwargs)
                _into.append(out["samples"].clone())
                return out

            host.latent_out, sessions.ENABLED = recording, staged
            results[staged] = run_logging_cost(api_prompt)
    finally:
        host.latent_out, sessions.ENABLED = original, enabled
    same = len(latents[True]) == len(latents[False]) > 0 and all(
        torch.equal(a, b) for a, b in zip(latents[True], latents[False]))
    return {**results[True], "latents": len(latents[True]), "sessions_equal": same,
            "per_evaluation_success": results[False]["success"]}


def models_left_alive(class_name: str) -> dict:
    """After a full garbage collection: how many of ComfyUI's models of class ``class_name`` are still alive, and
    the loaded models whose patcher is gone while the model lives on (what ComfyUI's ``cleanup_models_gc`` calls a
    memory leak, and answers with a full collection before every prompt)."""
    import gc

    import comfy.model_base
    import comfy.model_management

    gc.collect()
    alive = sum(1 for o in gc.get_objects()
                if isinstance(o, comfy.model_base.BaseModel) and type(o).__name__ == class_name)
    return {"alive": alive, "patcher_gone": [type(m.real_model()).__name__
                                             for m in comfy.model_management.current_loaded_models if m.is_dead()]}


def wan21_t2v_names() -> dict:
    """How the pack names a model ComfyUI loads as WAN21_T2V, by its transformer's width (Wan 2.1 1.3B: 1536; 14B
    and each Wan 2.2 A14B half: 5120; the tiny test file's)."""
    from types import SimpleNamespace

    host = _pack_module(".nodes.host")
    config = type("WAN21_T2V", (), {})()
    return {width: host.family_name(SimpleNamespace(model=SimpleNamespace(
        model_config=config, diffusion_model=SimpleNamespace(dim=width)))) for width in (1536, 5120, 64)}


def vae_file_shapes(ckpt_name: str, folder: str) -> dict:
    """file -> [the pack's reading of its header (codecs.vae_file_shape), the shape of the VAE ComfyUI's VAE Loader
    makes of it (codecs.vae_shape)], for the tiny Wan 2.1 and Flux VAE files and the SD 1.5 checkpoint's VAE saved
    as a file of its own in ``folder`` (as repackaged VAE files hold it: no prefix)."""
    import os

    import comfy.utils
    import folder_paths
    import nodes
    from safetensors.torch import save_file

    codecs = _pack_module(".nodes.codecs")
    sd = comfy.utils.load_torch_file(folder_paths.get_full_path("checkpoints", ckpt_name))
    sd15 = os.path.join(folder, "sd15-vae.safetensors")
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in sd.items()
               if k.startswith("first_stage_model.")}, sd15)
    paths = {name: folder_paths.get_full_path("vae", name) for name in (WAN_VAE, FLUX_VAE)}
    paths["sd15"] = sd15
    shapes = {name: [codecs.vae_file_shape(path), list(codecs.vae_shape(nodes.VAELoader().load_vae(name)[0] if
                                                                        name != "sd15" else _vae_of_file(path)))]
              for name, path in paths.items()}
    # and the checkpoint itself, as a checkpoint loader's VAE output
    checkpoint = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt_name)[2]
    shapes["sd15 checkpoint"] = [codecs.vae_file_shape(folder_paths.get_full_path("checkpoints", ckpt_name),
                                                       checkpoint=True), list(codecs.vae_shape(checkpoint))]
    return shapes


def _vae_of_file(path: str):
    import comfy.sd
    import comfy.utils

    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(path))


def run_as_queued(api_prompt: dict, fresh_cache: bool = False) -> dict:
    """``api_prompt`` through the pack's on-prompt hook, as the server queues it (``host.key_decode_vaes``), then
    run (with ComfyUI's cache kept from the run before unless ``fresh_cache``)."""
    from comfy_support.confiner_checks import run_counting_evaluations

    host = _pack_module(".nodes.host")
    return run_counting_evaluations(host.key_decode_vaes({"prompt": api_prompt})["prompt"], fresh_cache)


def batch_items_against_batch_one(api_prompt: dict, sampler: str, empty: str) -> dict:
    """``api_prompt`` with its empty latent (node ``empty``) at batch size 2, at 1, and at 1 as item 1 of a batch of
    two picked by ComfyUI's Latent From Batch (``batch_index`` [1]): the latent node ``sampler`` outputs in each
    (SaveLatent), as float64 tensors; the max abs difference of item 0 against batch 1 and of item 1 against the
    picked item, and between the two items."""
    import copy
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    import folder_paths

    from comfy_support import harness

    endings = {}   # node id -> its last text in the batch run

    def saved_latent(prompt: dict, prefix: str) -> torch.Tensor:
        prompt = copy.deepcopy(prompt)
        prompt["90"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": prefix}}
        res = harness.run_prompt(prompt, fresh_cache=True)
        assert res.success, res.to_json()
        if prefix == "batch_two":
            for event, data in res.server_messages:
                if event == "progress_text":
                    endings[data["node_id"]] = data["text"]
        saved = res.outputs["90"]["latents"][0]
        path = Path(folder_paths.get_output_directory()) / saved["subfolder"] / saved["filename"]
        return load_file(str(path))["latent_tensor"].to(torch.float64)

    two = copy.deepcopy(api_prompt)
    two[empty]["inputs"]["batch_size"] = 2
    picked = copy.deepcopy(two)
    picked["91"] = {"class_type": "LatentFromBatch", "inputs": {"samples": [empty, 0], "batch_index": 1, "length": 1}}
    for node in picked.values():   # whatever read the empty latent reads the picked item
        for name, value in node["inputs"].items():
            if value == [empty, 0] and node is not picked["91"]:
                node["inputs"][name] = ["91", 0]
    batch, one, item1 = (saved_latent(p, f"batch_{n}") for n, p in (("two", two), ("one", api_prompt),
                                                                       ("picked", picked)))
    return {"shapes": [list(t.shape) for t in (batch, one, item1)],
            "item0_vs_batch1": float((batch[:1] - one).abs().max()),
            "item1_vs_picked": float((batch[1:] - item1).abs().max()),
            "item0_vs_item1": float((batch[0] - batch[1]).abs().max()), "max_abs": float(batch.abs().max()),
            "endings": endings}


def distilled_control_notes(settings: list) -> dict:
    """The Control Expert's warning on the tiny Wan 2.1 model for each (steps, cfg, sampler) of ``settings``, and at
    the defaults for the model carrying a LoRA's patch (a step-distilled LoRA runs at them on purpose): the node's
    one-line notes per case."""
    import torch

    host = _pack_module(".nodes.host")
    model = _unet(WAN)
    patched = model.clone()
    key = next(k for k, v in patched.model.state_dict().items() if v.ndim == 2)
    patched.add_patches({key: (torch.zeros_like(patched.model.state_dict()[key]),)}, 1.0)
    notes = {}
    for name, m, (steps, cfg, sampler) in [*((f"{s[0]} {s[1]:g} {s[2]}", model, s) for s in settings),
                                           ("lora", patched, (4, 1.0, "euler"))]:
        progress = host.Progress(m, steps, None)
        progress.warn_distilled_control(m, steps, cfg, sampler)
        notes[name] = progress.warnings
    return notes


def wan22_space_facts() -> dict:
    """What the pack makes of ComfyUI's Wan 2.2 TI2V-5B latent format (``latent_formats.Wan22``): the space's name and
    title, the Long Video's frame rate for seconds keys, the VAE file it names, and whether it equals the diffusers
    backend's space of the same statistics."""
    import comfy.latent_formats

    host = _pack_module(".nodes.host")
    wan22_space = _pack_module(".confiner_core.latent_spaces").wan22_space
    long_video = _pack_module(".nodes.long_segmenter")
    codecs = _pack_module(".nodes.codecs")
    fmt = comfy.latent_formats.Wan22()

    class Model:   # the one thing space_of reads of a model
        def get_model_object(self, name):
            assert name == "latent_format"
            return fmt

    space = host.space_of(Model())
    return {"name": space.name, "title": space.title, "fps": long_video.prompt_fps(0, space),
            "vae": codecs.vae_file(space),
            "same_as_diffusers": space == wan22_space(tuple(fmt.latents_mean.flatten().tolist()),
                                                      tuple(fmt.latents_std.flatten().tolist()))}
