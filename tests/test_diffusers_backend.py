"""The diffusers backend on tiny random experts of every family (CPU, offline; see tiny_diffusers.py).

Each family's expert evaluation is checked against the family's own diffusers pipeline (its ``encode_prompt`` and
its UNet, loaded independently), and every bad input is refused before any weights load (counted)."""

import json
import os
import logging
import re
import shutil
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import (AnimateDiffPipeline, AutoencoderKL, ModelMixin, MotionAdapter, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, TextToVideoSDPipeline)
from diffusers.loaders.single_file import FromSingleFileMixin
from diffusers.utils import logging as diffusers_logging
from einops import rearrange
from safetensors.torch import save_file
from transformers import PreTrainedModel

import tiny_diffusers as T
from confiner_core import schedules as S
from confiner_core.chain import ChainConfig, run_chain
from confiner_core.diffusers_backend import (FAMILIES, AutoencoderKLCodec, FrameExpert, MotionExpert, PromptEncoder,
                                             SDXLExpert, SpeedSettings, UNet3DExpert, detect_kind,
                                             infer_motion_config, load_experts, load_motion_file, preflight)
from confiner_core.diffusers_backend.families import animatediff as animatediff_family
from confiner_core.diffusers_backend.text import final_layer_norm
from confiner_core.experts import EvaluationLog
from confiner_core.latent_spaces import SD15, SDXL, bridge
from confiner_core.long import LongConfig

diffusers_logging.disable_progress_bar()

B, F, H, W = 2, 4, 8, 8
T_FLOAT = 321.5   # fractional timesteps must reach the UNet unchanged


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP spin-waiting doubles
    this file's run time. Restored for the other test files."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    adapter = T.tiny_motion_adapter()
    p = {"sd": T.save_sd(root / "sd"), "ad": T.save_animatediff(root / "ad", adapter), "t2v": T.save_t2v(root / "t2v"),
         "adapter": T.save_motion_adapter(root / "adapter", adapter),
         "mm_diffusers": T.write_motion_module(adapter, root / "mm_diffusers.safetensors", original_layout=False),
         "mm_original": T.write_motion_module(adapter, root / "mm_original.safetensors", original_layout=True)}
    p["sd_file"] = T.write_sd_checkpoint(p["sd"], root / "sd_single.safetensors")
    p["sd_configs"] = root / "sd_configs"           # configs and tokenizer only: weights must come from the file
    shutil.copytree(p["sd"], p["sd_configs"], ignore=shutil.ignore_patterns("*.safetensors"))
    p["sd_plus_adapter"] = root / "sd_plus_adapter"  # AnimateDiff folder variant: 2D UNet + motion_adapter/
    shutil.copytree(p["sd"], p["sd_plus_adapter"])
    shutil.copytree(p["adapter"], p["sd_plus_adapter"] / "motion_adapter")
    p["sdxl"] = T.save_sdxl(root / "sdxl")
    p["sdxl_file"] = T.write_sdxl_checkpoint(p["sdxl"], root / "sdxl_single.safetensors")
    p["sdxl_configs"] = root / "sdxl_configs"       # configs and tokenizers only
    shutil.copytree(p["sdxl"], p["sdxl_configs"], ignore=shutil.ignore_patterns("*.safetensors"))
    return p


@pytest.fixture(scope="module")
def loaded(paths):
    return load_experts(control=paths["ad"], spatial=paths["sd"], temporal=paths["t2v"])


def native_latent(expert, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B * F, 4, H, W) if isinstance(expert, FrameExpert) else (B, 4, F, H, W)
    return torch.randn(shape, generator=g)


def direct_embeddings(expert, prompt):
    """Prompt embeddings straight from the tokenizer and text encoder, repeated as each UNet family wants them."""
    pe = expert.prompt_encoder
    ids = pe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    emb = pe.text_encoder(ids)[0]
    rows = {FrameExpert: B * F, MotionExpert: B * F, UNet3DExpert: B}[type(expert)]
    return emb.expand(rows, -1, -1)


# ------------------------------------------------------------------------------------------- loading

def test_detects_every_path_kind(paths, tmp_path):
    kinds = {"sd": "sd-folder", "ad": "animatediff", "t2v": "t2v-folder", "adapter": "motion-folder",
             "mm_diffusers": "motion-file", "mm_original": "motion-file", "sd_file": "sd-file",
             "sd_plus_adapter": "animatediff", "sdxl": "sdxl-folder", "sdxl_file": "sdxl-file"}
    assert {k: detect_kind(paths[k]) for k in kinds} == kinds
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"")
    with pytest.raises(ValueError, match="only .safetensors"):
        detect_kind(pickle)


def test_a_family_of_ones_own_is_registered_and_loads(paths, tmp_path):
    """A researcher's family (here: SD 1.5 folders marked by a file, loaded through SD 1.5's code) joins the
    registry through register_family, before the family that would claim its paths too; load_experts then reads
    it. A trial found the registry's docstring saying families add themselves, with no way to do so."""
    from confiner_core.diffusers_backend import register_family
    from confiner_core.diffusers_backend.families.sd15 import SD15, SD_FOLDER

    loads = []

    class MarkedSD(SD15):
        name, label = "marked-sd", "SD 1.5 marked"
        kinds = {"marked-sd-folder": "an SD 1.5 folder holding a MARKED file"}

        def detect(self, path):
            return "marked-sd-folder" if (Path(path) / "MARKED").is_file() else None

        def inspect(self, path, kind, role, context):
            return super().inspect(path, SD_FOLDER, role, context)

        def load(self, inspection, context):
            loads.append(inspection.role)
            return super().load(inspection, context)

    marked = tmp_path / "marked"
    shutil.copytree(paths["sd"], marked)
    (marked / "MARKED").write_text("")
    before = list(FAMILIES)
    try:
        family = register_family(MarkedSD(), before="sd15")
        assert FAMILIES.index(family) == before.index(next(f for f in before if f.name == "sd15"))
        assert detect_kind(marked) == "marked-sd-folder" and detect_kind(paths["sd"]) == "sd-folder"
        experts = load_experts(paths["ad"], marked, paths["t2v"])
        assert loads == ["spatial"] and isinstance(experts["spatial"], FrameExpert)
        for again, said in [(MarkedSD(), r"a family named 'marked-sd' is registered already"),
                            (type("Other", (MarkedSD,), {"name": "other"})(), r"the kind 'marked-sd-folder' is SD "
                                                                               r"1.5 marked's already"),
                            ("sd15", r"give an instance of a Family subclass")]:
            with pytest.raises((ValueError, TypeError), match=said):
                register_family(again)
        with pytest.raises(ValueError, match=r"before='sd1.5' names no family; known: sdxl, marked-sd, sd15, "):
            register_family(type("Third", (MarkedSD,), {"name": "third", "kinds": {"third": "x"}})(), "sd1.5")
    finally:
        FAMILIES[:] = before


def test_loaded_experts_have_their_families_attributes(loaded, paths):
    control, spatial, temporal = (loaded[r] for r in ("control", "spatial", "temporal"))
    assert (type(control), type(spatial), type(temporal)) == (MotionExpert, FrameExpert, UNet3DExpert)
    assert (control.layout, spatial.layout, temporal.layout) == ("video", "frames", "video")
    assert control.max_frames == 32 and spatial.max_frames is None       # motion_max_seq_length
    assert (control.prompt_encoder.width, temporal.prompt_encoder.width) == (T.SD_WIDTH, T.T2V_WIDTH)
    # AnimateDiff on linear betas, SD / ModelScope on scaled_linear (diffusers-notes §2)
    assert float(control.schedule.alphas_cumprod[999]) == pytest.approx(0.00158, abs=1e-5)
    assert float(spatial.schedule.alphas_cumprod[999]) == pytest.approx(0.00466, abs=1e-5)
    assert {e.latent_space.name for e in loaded.experts.values()} == {"sd15"}
    assert control.describe()["source"] == str(paths["ad"])
    # one latent space: one VAE (the spatial expert's) serves every expert and decodes the video
    assert all(e.codec is loaded.codec for e in loaded.experts.values())
    assert isinstance(loaded.codec, AutoencoderKLCodec) and loaded.codec.space == SD15


# ------------------------------------------------------------------------------------- (a), (b): forward

@pytest.mark.parametrize("role", ["control", "spatial", "temporal"])
def test_forward_equals_direct_unet_call(loaded, role):
    expert = loaded[role]
    x = native_latent(expert)
    (out,) = expert.forward(x, T_FLOAT, [expert.encode("a cat")])
    with torch.no_grad():
        ref = expert.unet(x, torch.tensor(T_FLOAT), encoder_hidden_states=direct_embeddings(expert, "a cat")).sample
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("role", ["control", "spatial", "temporal"])
def test_cfg_is_one_batched_call_equal_to_separate_calls(loaded, role):
    expert = loaded[role]
    x, conds = native_latent(expert), [expert.encode(""), expert.encode("the dog")]
    batched = expert.forward(x, 500, conds)
    separate = [expert.forward(x, 500, [c])[0] for c in conds]
    for a, b in zip(batched, separate):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])            # the prompts do reach the UNet
    log = EvaluationLog()
    expert.bind("the dog", "", guidance_scale=5.0, log=log)(torch.randn(B, 4, F, H, W), 500)
    assert log.as_dict()["evaluations"] == {"unstaged": 1} and log.as_dict()["forwards"] == {"unstaged": 1}


def test_speed_settings_at_load_compile_every_expert_without_changing_outputs(paths, loaded):
    from test_speed import CountingBackend

    backend = CountingBackend()
    torch._dynamo.reset()
    fast = load_experts(control=paths["ad"], spatial=paths["sd"], temporal=paths["t2v"],
                        speed=SpeedSettings(channels_last=True, compile="blocks", backend=backend))
    try:
        for role in ("control", "spatial", "temporal"):
            x, cond = native_latent(loaded[role]), [loaded[role].encode("a cat")]
            calls = backend.calls
            torch.testing.assert_close(fast[role].forward(x, T_FLOAT, cond)[0], loaded[role].forward(x, T_FLOAT, cond)[0],
                                       rtol=1e-5, atol=1e-5)
            assert backend.calls > calls, f"the {role} expert did not run through compiled blocks"
        latent, calls = torch.randn(1, 4, 2, H, W), backend.calls
        torch.testing.assert_close(fast.decode(latent), loaded.decode(latent), rtol=0, atol=1)  # uint8 frames
        assert backend.calls > calls, "the VAE decoder did not run through compiled blocks"
    finally:
        torch._dynamo.reset()


def test_forward_casts_to_the_unet_dtype_and_returns_float32(paths, loaded):
    expert64 = load_experts(control=paths["ad"], spatial=paths["sd"], dtype=torch.float64)["spatial"]
    assert expert64.unet.dtype == torch.float64
    x = native_latent(expert64)
    out64 = expert64.forward(x, 100, [expert64.encode("a cat")])[0]
    assert out64.dtype == torch.float32
    expert32 = loaded["spatial"]
    torch.testing.assert_close(out64, expert32.forward(x, 100, [expert32.encode("a cat")])[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["bf16", torch.int8, "int8", "Tensor"])
def test_a_dtype_that_is_not_a_float_dtype_is_refused_before_loading(paths, dtype):
    """'bf16' gave transformers' "torch.float32 is not a torch.dtype" warning, then a raw TypeError from a model's
    .to() after a text encoder had loaded."""
    with pytest.raises(ValueError, match=r"dtype must be a floating torch.dtype \(torch.float16, torch.bfloat16, "
                                         r"torch.float32, torch.float64\)"):
        load_experts(control=paths["ad"], spatial=paths["sd"], dtype=dtype)


def test_a_float_dtypes_name_is_taken_as_the_dtype_is(paths):
    """torch.float64 loaded and 'float64' was refused, naming three dtypes (a researcher's trial)."""
    for dtype in ("float64", "torch.float64"):
        assert load_experts(control=paths["ad"], spatial=paths["sd"], dtype=dtype)["spatial"].unet.dtype == \
            torch.float64


def test_a_dtype_is_taken_in_either_entry_points_spelling(paths):
    """GenerateRequest took dtype names ('bfloat16') and load_experts torch dtypes, each refusing the other's (a
    researcher's trial): both take both."""
    from confiner_core.generate import GenerateRequest

    loaded = load_experts(control=paths["ad"], spatial=paths["sd"], dtype="bfloat16", show_progress=False)
    assert {e.unet.dtype for e in loaded.experts.values() if e is not None} == {torch.bfloat16}
    assert GenerateRequest(dtype=torch.bfloat16).dtype == "bfloat16"
    assert replace(GenerateRequest(), dtype=torch.float32).dtype == "float32"


@pytest.mark.parametrize("device, message", [
    ("gpu", r"^load_experts: device 'gpu' is not a device PyTorch knows; use cpu, cuda, cuda:N, mps or xpu$"),
    ("cpu:1", r"^load_experts: device cpu:1: the CPU has one device, cpu \(or cpu:0\); use device='cpu'"),
    pytest.param("cuda", r"^load_experts: device cuda: PyTorch sees no cuda device on this machine \(torch .*\); "
                         r"use device='cpu'", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA"))])
def test_a_device_this_machine_lacks_is_named_before_loading(paths, device, message):
    """torch's own errors named neither the argument nor the fix: "Torch not compiled with CUDA enabled" (an
    AssertionError), or its list of every device type for 'gpu'. The command line's check, in the library's words."""
    with pytest.raises(ValueError, match=message):
        load_experts(control=paths["ad"], spatial=paths["sd"], device=device)


# --------------------------------------------------------------------------- (c): motion vs per-frame 2D

def test_motion_expert_with_identity_motion_modules_equals_per_frame_unet(paths, tmp_path):
    identity = T.tiny_motion_adapter(zero_proj_out=True)
    module = T.write_motion_module(identity, tmp_path / "identity.safetensors", original_layout=False)
    experts = load_experts(control=module, spatial=paths["sd"], motion_config=paths["adapter"]).experts
    x = torch.randn(B, 4, F, H, W, generator=torch.Generator().manual_seed(1))
    # guidance batches negative and positive: a wrong per-frame order of the embeddings would mix them up
    motion = experts["control"].bind("a cat", "the dog", guidance_scale=4.0).raw(x, 250)
    frames = experts["spatial"].bind("a cat", "the dog", guidance_scale=4.0).raw(x, 250)
    torch.testing.assert_close(motion, frames, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- (d): the whole chain

def run_tiny_chain(loaded, seed):
    log = EvaluationLog()
    bound = {role: loaded[role].bind("a cat", "", 1.0 if role == "control" else 2.0, log)
             for role in ("control", "spatial", "temporal")}
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 4, F, H, W, generator=generator)
    config = ChainConfig(control_steps=4, control_sampler="euler", refine_steps=5, mode="coordinated")
    result = run_chain(bound["control"], bound["spatial"], bound["temporal"], noise, config, generator)
    return result, log


def test_chain_end_to_end_with_all_three_families(loaded):
    result, log = run_tiny_chain(loaded, seed=3)
    assert result.latent.shape == (1, 4, F, H, W) and torch.isfinite(result.latent).all()
    assert dict(log.evaluations) == {"control": 4, "refine": 15}
    assert dict(log.forwards) == {"control": 4, "refine": 15}    # guidance is batched into one forward
    again, _ = run_tiny_chain(loaded, seed=3)
    assert torch.equal(result.latent, again.latent)
    frames = loaded.decode(result.latent)
    assert frames.shape == (1, F, 8 * H, 8 * W, 3) and frames.dtype == torch.uint8


def test_the_temporal_only_ablation_loads_and_decodes_without_a_spatial_expert(paths, loaded, tmp_path):
    """Mode 'temporal' evaluates no spatial expert, yet one had to be given, inspected and loaded (--spatial on the
    command line). Left out, the same video comes out, decoded by the temporal expert's VAE; the command line runs
    it with --control and --temporal alone, and the report lists no spatial expert."""
    from confiner_core.generate import GenerateRequest, generate

    alone = load_experts(control=paths["ad"], spatial=None, temporal=paths["t2v"])
    assert alone.experts["spatial"] is None

    def temporal_only(experts, spatial):
        log = EvaluationLog()
        bound = {role: experts[role].bind("a cat", "", 1.0 if role == "control" else 2.0, log)
                 for role in ("control", "temporal")}
        generator = torch.Generator().manual_seed(3)
        noise = torch.randn(1, 4, F, H, W, generator=generator)
        config = ChainConfig(control_steps=4, refine_steps=5, mode="temporal")
        s = experts["spatial"].bind("a cat", "", 2.0, log) if spatial else None
        return run_chain(bound["control"], s, bound["temporal"], noise, config, generator).latent

    latent = temporal_only(alone, spatial=False)
    assert torch.equal(latent, temporal_only(loaded, spatial=True))
    frames = alone.decode(latent)
    assert torch.equal(frames, alone.decode(latent, "temporal"))
    assert torch.equal(frames, loaded.decode(latent, "temporal"))   # the temporal expert's own VAE
    request = GenerateRequest(control=str(paths["ad"]), temporal=str(paths["t2v"]), frames=F, height=8 * H,
                              width=8 * W, out=str(tmp_path / "out"), prompt="a cat")
    request.chain = replace(request.chain, mode="temporal")
    report = generate(request, show_progress=False)
    assert sorted(report["experts"]) == ["control", "temporal"]
    assert report["expert_evaluations"] == {"control": 4, "refine": 5}


def test_a_sweep_loads_its_experts_once_and_makes_the_same_videos(paths, tmp_path, monkeypatch):
    """generate() loaded every expert at every call: 30-60 % of a researcher's sweep over Table 3's settings went on
    reloading the same folders. load_request_experts(request) loads them once; generate(request, experts=...) runs
    any request that loads the same ones, and makes the video it makes when it loads them itself."""
    import confiner_core.diffusers_backend as backend
    from confiner_core.errors import UsageError
    from confiner_core.generate import GenerateRequest, generate, load_request_experts

    base = GenerateRequest(control=str(paths["ad"]), spatial=str(paths["sd"]), temporal=str(paths["t2v"]), frames=F,
                           height=8 * H, width=8 * W, prompt="a cat")
    grid = [replace(base, chain=replace(base.chain, control_steps=steps, te=te), out=str(tmp_path / f"{steps}_{te}"))
            for steps, te in ((4, 100), (8, 200))]
    # ... and over the refinement modes (Table 5's ablation): standard without the temporal expert runs without it
    # (it was refused as loading other experts)
    grid.append(replace(base, chain=replace(base.chain, mode="standard"), temporal=None, out=str(tmp_path / "std")))
    own = [generate(replace(r, out=r.out + "_own"), show_progress=False) for r in grid]
    experts = load_request_experts(base)
    monkeypatch.setattr(backend, "load_experts", lambda **kw: pytest.fail("loaded again"))
    swept = [generate(r, show_progress=False, experts=experts) for r in grid]
    for r, a, b in zip(grid, own, swept):
        assert (Path(r.out) / "frames.png").read_bytes() == (Path(r.out + "_own") / "frames.png").read_bytes()
        assert a["expert_evaluations"] == b["expert_evaluations"] and a["chain"] == b["chain"]
        assert a["experts"] == b["experts"] and sorted(b["experts"]) == sorted(r.roles())
    # experts of another request are refused, naming what differs, before anything runs
    other = replace(grid[0], spatial=str(shutil.copytree(paths["sd"], tmp_path / "sd_copy")),
                    out=str(tmp_path / "other"))
    with pytest.raises(UsageError, match=r"^experts= were loaded with spatial='.*/sd', and this request loads "
                                         r"spatial='.*/sd_copy': load its own with load_request_experts"):
        generate(other, show_progress=False, experts=experts)
    # ... first: the request's own checks judged the checkpoints it names, which never run here (a trial was told of
    # an unloaded Wan expert's frame counts before the mismatch)
    with pytest.raises(UsageError, match=r"^experts= were loaded with spatial='.*/sd', and this request loads "
                                         r"spatial='.*/nowhere'"):
        generate(replace(other, spatial=str(tmp_path / "nowhere")), show_progress=False, experts=experts)
    # the temporal mode without the spatial expert, whose VAE served the SD 1.5 space: its own load takes the
    # temporal expert's VAE, so its video may differ
    with pytest.raises(UsageError, match=r"^experts= decode SD 1.5 latents with the spatial expert's VAE \(.*/sd\), "
                                         r"and this request, without that expert, would load the temporal expert's"):
        generate(replace(base, chain=replace(base.chain, mode="temporal"), spatial=None, out=str(tmp_path / "other")),
                 show_progress=False, experts=experts)
    # (each preset's whole repr was printed; the request's own setting is the simpler way)
    with pytest.raises(UsageError, match=r"^experts= were loaded with speed='eager', and this request loads "
                                         r"speed='lean': ask for speed='eager' in the request, load its own"):
        generate(replace(grid[0], speed="lean", out=str(tmp_path / "other")), show_progress=False, experts=experts)
    with pytest.raises(UsageError, match=r"^experts= are loaded checkpoints, and this request names none"):
        generate(GenerateRequest(frames=8, out=str(tmp_path / "embedded")), show_progress=False, experts=experts)
    assert not (tmp_path / "other").exists() and not (tmp_path / "embedded").exists()


def test_experts_load_experts_loaded_with_its_defaults_serve_a_request_of_the_defaults(paths, loaded, tmp_path):
    """The refusal of experts of another load names load_experts as a way in, yet experts it loaded with its
    defaults were refused as loaded with speed=None (the request's 'eager'), then options={} (its image mode,
    latent frames, which an SD 1.5 spatial expert does not read): they are what the request loads."""
    from confiner_core.generate import GenerateRequest, generate

    request = GenerateRequest(control=str(paths["ad"]), spatial=str(paths["sd"]), temporal=str(paths["t2v"]), frames=F,
                              height=8 * H, width=8 * W, prompt="a cat", out=str(tmp_path / "given"))
    given = generate(request, show_progress=False, experts=loaded)
    own = generate(replace(request, out=str(tmp_path / "own")), show_progress=False)
    assert (tmp_path / "given" / "frames.png").read_bytes() == (tmp_path / "own" / "frames.png").read_bytes()
    assert given["experts"] == own["experts"]


def test_a_request_loads_its_checkpoints_in_the_dtype_it_names(paths, tmp_path):
    """A NaN run's hint said to load the experts in bfloat16, which only load_experts(dtype=) could: the request
    (and --dtype) names it, the report says what each expert ran in, and experts loaded in another are refused."""
    from confiner_core.errors import UsageError
    from confiner_core.generate import GenerateRequest, generate, load_request_experts

    request = GenerateRequest(control=str(paths["ad"]), spatial=str(paths["sd"]), temporal=str(paths["t2v"]), frames=F,
                              height=8 * H, width=8 * W, prompt="a cat", dtype="bfloat16", out=str(tmp_path / "bf16"))
    experts = load_request_experts(request, show_progress=False)
    assert {e.unet.dtype for e in experts.experts.values()} == {torch.bfloat16}
    report = generate(request, show_progress=False, experts=experts)
    assert report["settings"]["dtype"] == "bfloat16"
    assert {e["dtype"] for e in report["experts"].values()} == {"bfloat16"}
    with pytest.raises(UsageError, match=r"^experts= were loaded with dtype='bfloat16', and this request loads "
                                         r"dtype='auto': ask for dtype='bfloat16' in the request, load its own"):
        generate(replace(request, dtype="auto", out=str(tmp_path / "auto")), show_progress=False, experts=experts)
    # auto loads float32 on the CPU: experts loaded either way serve both
    auto = load_request_experts(replace(request, dtype="auto"), show_progress=False)
    report = generate(replace(request, dtype="float32", out=str(tmp_path / "fp32")), show_progress=False, experts=auto)
    assert report["experts"]["spatial"]["dtype"] == "float32"


# --------------------------------------------------------------------------------- (e): single files

def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sd_single_file_loads_the_same_weights_with_a_local_config(paths, loaded):
    from_file = load_experts(control=paths["ad"], spatial=paths["sd_file"], base=paths["sd_configs"])
    assert_same_weights(from_file["spatial"].unet, loaded["spatial"].unet)
    assert_same_weights(from_file["spatial"].prompt_encoder.text_encoder, loaded["spatial"].prompt_encoder.text_encoder)
    assert_same_weights(from_file.decoder.vae, loaded.decoder.vae)
    assert from_file["spatial"].scheduler_config["beta_schedule"] == "scaled_linear"


def test_sd_single_file_needs_a_local_config(paths, tmp_path):
    with pytest.raises(ValueError, match="needs base="):
        load_experts(control=paths["ad"], spatial=paths["sd_file"])
    partial = tmp_path / "partial"
    shutil.copytree(paths["sd_configs"], partial, ignore=shutil.ignore_patterns("tokenizer"))
    with pytest.raises(FileNotFoundError, match=r"partial lacks tokenizer"):
        load_experts(control=paths["ad"], spatial=paths["sd_file"], base=partial)


def test_motion_module_layouts_load_identical_weights(paths):
    reference = T.tiny_motion_adapter()
    for key in ("mm_diffusers", "mm_original"):
        assert_same_weights(load_motion_file(paths[key], motion_config=paths["adapter"]), reference)


def test_motion_config_is_inferred_from_weights(paths):
    from safetensors.torch import load_file

    for key in ("mm_diffusers", "mm_original"):
        inferred = load_motion_file(paths[key]).config   # no motion_config: structure read off the weights
        assert (list(inferred.block_out_channels), inferred.motion_layers_per_block, inferred.use_motion_mid_block,
                inferred.motion_max_seq_length) == ([32, 64], 1, True, 32)
    assert infer_motion_config(load_file(str(paths["mm_diffusers"])))["motion_transformer_layers_per_block"] == 1


@pytest.mark.parametrize("key", ["mm_diffusers", "mm_original", "adapter", "sd_plus_adapter"])
def test_motion_module_on_an_sd_base_equals_the_animatediff_folder(paths, loaded, key):
    control = load_experts(control=paths[key], spatial=paths["sd"], motion_config=paths["adapter"])["control"]
    assert_same_weights(control.unet, loaded["control"].unet)     # the folder was saved from the same parts
    assert control.max_frames == 32
    # the report names the SD 1.5 model a motion module went on (the output depends on it); a pipeline has none
    assert control.describe().get("base") == (None if key == "sd_plus_adapter" else str(paths["sd"]))
    assert "base" not in loaded["control"].describe()
    if key == "sd_plus_adapter":   # a pipeline folder: its own scheduler config (SD's scaled_linear) is respected
        torch.testing.assert_close(control.schedule.alphas, S.from_diffusers_config(T.sd_scheduler().config).alphas)
    else:                          # motion modules ship no scheduler: AnimateDiff's linear betas
        torch.testing.assert_close(control.schedule.alphas, loaded["control"].schedule.alphas)


@pytest.mark.parametrize("control, base", [("mm_diffusers", "sd_configs"), ("ad", "sd"), ("ad", "t2v")])
def test_a_base_no_expert_takes_is_refused(paths, control, base):
    """base serves a motion module (an SD 1.5 folder with UNet weights to go on) or a single-file checkpoint (its
    configs). Where no expert takes it (a configs-only folder under a motion module, which then goes on the spatial
    expert; any base under pipeline folders) it would change nothing, and was accepted without a word."""
    roles = {"control": paths[control], "spatial": paths["sd"], "temporal": paths["t2v"],
             "motion_config": paths["adapter"]}
    taken = preflight(**roles, base=paths["sd"]) if control == "mm_diffusers" else None
    assert taken is None or taken["control"].facts["base"].path == paths["sd"]   # the same module takes a real one
    # beside a motion module, why it does not take this one ("none of these experts takes it" was said there too)
    why = (rf"it holds no SD 1.5 UNet weights \(unet/\), so the control expert's motion module goes on the spatial "
           rf"expert \({paths['sd']}\); give base= an SD 1.5 folder with unet/ weights" if control == "mm_diffusers"
           else r"it serves a motion module .* and none of these experts takes it")
    with pytest.raises(ValueError, match=rf"base=.* would change nothing: {why}") as e:
        preflight(**roles, base=paths[base])
    assert e.value.role == "base"


@pytest.mark.parametrize("frames, option", [
    (["--frames", "40", "--segment-length", "40"], "--frames: the control expert"),          # one clip of 40
    (["--frames", "80", "--segment-length", "40"], "--segment-length: the control expert")])  # segments of 40
def test_too_many_frames_for_a_motion_module_names_the_option(paths, tmp_path, capsys, frames, option):
    """AnimateDiff's motion modules hold 32 frames at once: a longer clip or segment is refused, before any
    evaluation, by the option that sets its length."""
    from confiner_core.cli import main

    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(tmp_path / "x"), "--control", str(paths["ad"]), "--spatial", str(paths["sd"]),
              "--temporal", str(paths["t2v"]), "--height", "64", "--width", "64", "--quiet", *frames])
    err = capsys.readouterr().err   # transformers' loading bars too: in-process, it was imported before --quiet
    assert e.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {option}") and "at most 32 frames at once but 40 were asked" in last, last
    assert "--segment-length 32 or fewer" in last
    assert not (tmp_path / "x" / "video.mp4").exists()


def test_speed_max_off_cuda_says_it_runs_as_fast(paths, tmp_path):
    """max is fast + CUDA graphs: on a CPU the graphs cannot be captured, which the check says before the compile."""
    from confiner_core.chain import ConFinerWarning
    from confiner_core.generate import GenerateRequest

    request = GenerateRequest(control=str(paths["ad"]), spatial=str(paths["sd"]), temporal=str(paths["t2v"]),
                              frames=8, height=64, width=64, out=str(tmp_path / "out"), device="cpu",
                              prompt="a cat")
    with pytest.warns(ConFinerWarning, match="^speed 'max' adds CUDA graphs to 'fast', and cpu has none: this run is 'fast'"):
        replace(request, speed="max").validate()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConFinerWarning)
        replace(request, speed="fast").validate()
    # and report.json's speed_used says what ran (settings.speed stays as asked)
    from confiner_core.generate import speed_used

    assert [speed_used(replace(request, speed=s)) for s in ("eager", "lean", "fast", "max")] == \
        ["eager", "lean", "fast", "fast"]
    assert speed_used(replace(request, speed="max", device="cuda:1")) == "max"


def test_output_fps_of_sd_family_experts_and_the_embedded_ones(paths, tmp_path):
    """AnimateDiff and ModelScope make 16-frame clips of 2 s: 8 fps, as the embedded experts' videos."""
    from confiner_core.generate import GenerateRequest

    request = GenerateRequest(control=str(paths["ad"]), spatial=str(paths["sd"]), temporal=str(paths["t2v"]),
                              frames=8, height=64, width=64, out=str(tmp_path / "out"), prompt="a cat")
    request.validate()
    assert request.fps == 8.0
    standard = replace(request, temporal=None, chain=replace(request.chain, mode="standard"))
    standard.validate()                               # no temporal expert: the control expert's rate
    assert standard.fps == 8.0
    embedded = GenerateRequest(frames=8, height=64, width=64, out=str(tmp_path / "e"))
    embedded.validate()
    assert embedded.fps == 8.0


def test_image_mode_is_refused_where_no_spatial_expert_reads_it(paths):
    """load_experts ignored image_mode for an SD spatial expert, whatever its value ('pixels' too); the command
    line refused it. Refused before any weights load; the default value is harmless anywhere."""
    from confiner_core.diffusers_backend.families.base import Context
    from confiner_core.diffusers_backend.families.registry import check_image_mode, inspect_all

    roles = {"control": paths["ad"], "spatial": paths["sd"], "temporal": paths["t2v"]}
    for mode, message in (("pixel_frames", r"image_mode='pixel_frames' applies to a Wan or Qwen-Image spatial "
                                           r"expert .*: drop the option"),
                          ("pixels", r"image_mode='pixels': choose one of")):
        with pytest.raises(ValueError, match=message):
            load_experts(**roles, options={"image_mode": mode})
    context = Context(options={"image_mode": "latent_frames"})
    check_image_mode(context, inspect_all(roles, context))


def test_a_quiet_run_shows_no_loading_bars_and_leaves_the_libraries_settings(paths, tmp_path, capfd):
    """generate(show_progress=False) still printed transformers' "Loading weights" bars (3 a run): the command
    line's --quiet hid them through environment variables only."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from confiner_core.generate import GenerateRequest, generate

    libraries = (diffusers_logging, transformers_logging)
    was = [lib.is_progress_bar_enabled() for lib in libraries]
    for lib in libraries:   # as a fresh process has them (an in-process --quiet run elsewhere may have set them off)
        lib.enable_progress_bar()
    try:
        generate(GenerateRequest(control=str(paths["ad"]), spatial=str(paths["sd"]), temporal=str(paths["t2v"]),
                                 frames=8, height=64, width=64, prompt="a cat", out=str(tmp_path / "q")),
                 show_progress=False)
        err = capfd.readouterr().err
        assert "Loading" not in err and "%|" not in err, err[-500:]
        assert all(lib.is_progress_bar_enabled() for lib in libraries)   # put back
        # ... and the library's own load, which had no switch (a researcher's sweep printed three bars a point)
        load_experts(control=paths["ad"], spatial=paths["sd"], temporal=paths["t2v"], show_progress=False)
        err = capfd.readouterr().err
        assert "Loading" not in err and "%|" not in err, err[-500:]
        assert all(lib.is_progress_bar_enabled() for lib in libraries)
        load_experts(control=paths["ad"], spatial=paths["sd"], temporal=paths["t2v"])
        assert "Loading weights" in capfd.readouterr().err   # shown by default: the check above can fail
    finally:
        for lib, on in zip(libraries, was):
            lib.enable_progress_bar() if on else lib.disable_progress_bar()


def test_scheduler_overrides_replace_the_animatediff_default(paths):
    # the SD base carries scaled_linear; a motion module on it gets linear unless told otherwise
    kept = load_experts(control=paths["mm_diffusers"], spatial=paths["sd"],
                        scheduler_overrides={"control": {}})["control"]
    torch.testing.assert_close(kept.schedule.alphas, S.from_diffusers_config(T.sd_scheduler().config).alphas)


def test_scheduler_overrides_are_checked_and_named_before_any_weights_load(paths, monkeypatch):
    """A review: an entry that was not a dict failed inside the inspection as "'str' object is not a mapping", and
    a value no schedule takes was refused without naming scheduler_overrides."""
    import confiner_core.diffusers_backend.families.registry as registry

    def loading(*_):
        raise AssertionError("the weights began to load")

    monkeypatch.setattr(registry, "loading_bars", loading)   # (entered where the loading begins)
    with pytest.raises(TypeError, match=r"^scheduler_overrides\['spatial'\] must be a dict of scheduler-config "
                                        r"entries, got str$"):
        load_experts(paths["ad"], paths["sd"], paths["t2v"], scheduler_overrides={"spatial": "beta_end=0.02"})
    with pytest.raises(ValueError, match=r"^scheduler_overrides\['spatial'\]: .*cosine"):
        load_experts(paths["ad"], paths["sd"], paths["t2v"], scheduler_overrides={"spatial": {"beta_schedule":
                                                                                             "cosine"}})


def test_fp16_variant_weights_are_found(paths, tmp_path):
    folder = shutil.copytree(paths["t2v"], tmp_path / "t2v_fp16")
    for weights in folder.glob("*/*.safetensors"):
        weights.rename(weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    temporal = load_experts(control=paths["ad"], spatial=paths["sd"], temporal=folder)["temporal"]
    assert isinstance(temporal, UNet3DExpert) and temporal.prompt_encoder.width == T.T2V_WIDTH


# ------------------------------------------------------------------ (f): bad inputs, refused before loading

def copy_without(src, dst, *patterns):
    return shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*patterns) if patterns else None)


def truncate(file, keep: float = 0.5):
    file = Path(file)
    data = file.read_bytes()
    file.write_bytes(data[:int(len(data) * keep)])
    return file


def edit_json(file, **changes):
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


def sd_with_vae(d, scaling):
    return T.save_sd(d / f"sd_vae_{scaling}", vae_scaling=scaling)


def _pickle_folder(p, d):
    folder = copy_without(p["sd"], d / "sd_pickle")
    for w in (folder / "unet").glob("*.safetensors"):
        w.rename(w.with_suffix(".bin"))
    return {"spatial": folder}


def _truncated_folder(p, d):
    folder = copy_without(p["t2v"], d / "t2v_cut")
    truncate(next((folder / "unet").glob("*.safetensors")))
    return {"temporal": folder}


def _missing_shard(p, d):
    folder = copy_without(p["sd"], d / "sd_shards")
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"conv_in.weight": "diffusion_pytorch_model-00002-of-00002.safetensors"}}))
    return {"spatial": folder}


def _corrupt_header(p, d):
    (d / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + bytes(64))
    return {"control": d / "garbage.safetensors"}


def _unknown_file(p, d):
    save_file({"weight": torch.zeros(2, 2)}, str(d / "unknown.safetensors"))
    return {"control": d / "unknown.safetensors"}


def _bad_config(p, d):
    folder = copy_without(p["sd"], d / "sd_badjson")
    (folder / "text_encoder" / "config.json").write_text("{ truncated")
    return {"spatial": folder}


def _cut_config(p, d, name, component):
    folder = copy_without(p[name], d / f"{name}_cut_{component}")
    config = folder / component / "config.json"
    config.write_text(config.read_text()[:40])   # cut short, as a download stopped part-way leaves it
    return folder


def _refiner(p, d):
    folder = copy_without(p["sdxl"], d / "sdxl_refiner")
    edit_json(folder / "model_index.json", requires_aesthetics_score=True)
    return {"spatial": folder}


def _file_on_a_foreign_base(p, d):
    base = copy_without(p["sd_configs"], d / "configs_48")
    edit_json(base / "unet" / "config.json", cross_attention_dim=48)
    return {"spatial": p["sd_file"], "base": base}


def _motion_config_mismatch(p, d):
    config = T.save_motion_adapter(d / "adapter2", T.tiny_motion_adapter(layers_per_block=2))
    return {"control": p["mm_diffusers"], "motion_config": config}


def _spaces_without_vaes(p, d):
    return {"spatial": sd_with_vae(d, 0.13025), "control": copy_without(p["ad"], d / "ad_novae", "vae"),
            "temporal": copy_without(p["t2v"], d / "t2v_novae", "vae")}


def _nothing_to_decode(p, d):
    spatial = copy_without(p["sd"], d / "sd_novae")
    for w in (spatial / "vae").glob("*.safetensors"):   # vae/config.json stays: the space is known, no weights
        w.unlink()
    return {"spatial": spatial, "control": copy_without(p["ad"], d / "ad_novae", "vae"), "temporal": None}


def write(path, data: bytes):
    path.write_bytes(data)
    return path


# case -> (inputs replacing the valid set {control: ad, spatial: sd, temporal: t2v}, exception, message). Every
# message names the role and the path, says what is wrong and how to fix it.
BAD_INPUTS = {
    "missing path": (lambda p, d: {"spatial": d / "nowhere"}, FileNotFoundError,
                     r"spatial expert \(.*nowhere\): .*does not exist; check the path"),
    "pickle file": (lambda p, d: {"control": write(d / "mm.ckpt", b"\x80\x02")},
                    ValueError, r"control expert \(.*mm\.ckpt\): mm\.ckpt is a pickled checkpoint.* convert it"),
    "pickle-only folder": (_pickle_folder, ValueError,
                           r"spatial expert \(.*sd_pickle\): diffusion_pytorch_model\.bin is a pickled checkpoint"),
    "other file format": (lambda p, d: {"temporal": write(d / "model.onnx", b"x")},
                          ValueError, r"temporal expert \(.*model\.onnx\): only \.safetensors single files"),
    "corrupt header": (_corrupt_header, ValueError,
                       r"control expert \(.*garbage\.safetensors\): .* unreadable safetensors header; .*download"),
    "truncated file": (lambda p, d: {"control": truncate(shutil.copy(p["mm_diffusers"], d / "mm_cut.safetensors"))},
                       ValueError, r"control expert \(.*mm_cut\.safetensors\): .* is truncated: .*download it again"),
    "truncated weights in a folder": (_truncated_folder, ValueError,
                                      r"temporal expert \(.*t2v_cut\): .*unet.* is truncated"),
    "missing shard": (_missing_shard, ValueError, r"spatial expert \(.*sd_shards\): .* lacks the shard .*00002"),
    "empty folder": (lambda p, d: {"spatial": d.joinpath("empty").mkdir() or d / "empty"}, ValueError,
                     # the kinds the spatial role accepts, not the motion modules or text-to-video pipelines
                     r"spatial expert \(.*empty\): no model recognised in this folder.*; accepted: "
                     r"(?!.*(motion-module|text-to-video pipeline)).*SD 1\.5"),
    "component folder": (lambda p, d: {"temporal": p["t2v"] / "unet"}, ValueError,
                         r"temporal expert \(.*t2v/unet\): this is one component of the pipeline folder .*t2v; pass "
                         r"that folder"),
    "component weights file": (lambda p, d: {"temporal": next((p["t2v"] / "unet").glob("*.safetensors"))},
                               ValueError, r"temporal expert \(.*t2v/unet/.*\.safetensors\): this is one component "
                               r"of the pipeline folder .*t2v; pass that folder"),
    "unknown single file": (_unknown_file, ValueError,
                            r"control expert \(.*unknown\.safetensors\): no model recognised in this file"),
    "folder without weights": (lambda p, d: {"temporal": copy_without(p["t2v"], d / "t2v_empty", "*.safetensors")},
                               ValueError, r"temporal expert \(.*t2v_empty\): .* holds no weights \(the UNet"),
    "corrupt config": (_bad_config, ValueError,
                       r"spatial expert \(.*sd_badjson\): .*config\.json is not a readable JSON config.*restore"),
    # the configs detection reads: a cut one was read as missing ("no model recognised in this folder")
    "cut UNet config": (lambda p, d: {"spatial": _cut_config(p, d, "sd", "unet")}, ValueError,
                        r"spatial expert \(.*sd_cut_unet\): .*unet/config\.json is not a readable JSON config "
                        r"\(.*\); restore it"),
    "cut text-to-video UNet config": (lambda p, d: {"temporal": _cut_config(p, d, "t2v", "unet")}, ValueError,
                                      r"temporal expert \(.*t2v_cut_unet\): .*unet/config\.json is not a readable "
                                      r"JSON config"),
    "missing tokenizer": (lambda p, d: {"spatial": copy_without(p["sd"], d / "sd_notok", "tokenizer")},
                          FileNotFoundError, r"spatial expert \(.*sd_notok\): .*sd_notok lacks tokenizer"),
    "8 latent channels": (lambda p, d: {"temporal": T.save_t2v(d / "t2v8", in_channels=8)}, ValueError,
                          r"temporal expert \(.*t2v8\): its UNet takes 8 latent channels"),
    "text width": (lambda p, d: {"temporal": T.save_t2v(d / "t2v_w", text_width=T.SD_WIDTH)}, ValueError,
                   r"temporal expert \(.*t2v_w\): its text encoder produces 32-wide .* cross_attention_dim is 48"),
    "SDXL text widths": (lambda p, d: {"spatial": T.save_sdxl(d / "sdxl_w", second_width=16)}, ValueError,
                         r"spatial expert \(.*sdxl_w\): its pair of text encoders \(32 \+ 16\) produces 48-wide "
                         r".*cross_attention_dim is 56"),
    "SDXL refiner": (_refiner, ValueError, r"spatial expert \(.*sdxl_refiner\): this is an SDXL refiner"),
    "motion layers": (lambda p, d: {"control": T.write_motion_module(T.tiny_motion_adapter(layers_per_block=2),
                                                                     d / "mm2.safetensors", original_layout=False)},
                      ValueError, r"control expert \(.*mm2.safetensors\): the motion module has \[2, 2\] layers per "
                                  r"block"),
    "motion config": (_motion_config_mismatch, ValueError,
                      r"control expert \(.*mm_diffusers\.safetensors\): the motion module does not fit a "
                      r"MotionAdapter .*motion_config="),
    "motion module on SDXL": (lambda p, d: {"control": p["mm_diffusers"], "spatial": p["sdxl"]}, ValueError,
                              r"control expert \(.*mm_diffusers\.safetensors\) is a motion module and goes on "
                              r".*sdxl, which is not an SD 1.5 model; pass base="),
    # the motion module's base is the spatial single file: its refusal named the control expert as if the SD 1.5
    # file were the control expert's
    "motion module on a single SD file": (lambda p, d: {"control": p["mm_diffusers"], "spatial": p["sd_file"]},
                                          ValueError, r"control expert \(.*mm_diffusers\.safetensors\) is a motion "
                                                      r"module and goes on the spatial expert's single-file checkpoint "
                                                      r".*sd_single\.safetensors, which needs base="),
    # one base for a motion module (SD 1.5) and an SDXL single file: each refusal alone pointed at the other's
    "one base for SD 1.5 and SDXL (SDXL)": (lambda p, d: {"control": p["mm_diffusers"], "spatial": p["sdxl_file"],
                                                          "base": p["sdxl_configs"]}, ValueError,
                                            r"control expert .* not an SD 1.5 model; pass base=.*one base cannot "
                                            r"serve both: give the spatial expert as a diffusers folder .* or the "
                                            r"control expert as an AnimateDiff pipeline folder"),
    "one base for SD 1.5 and SDXL (SD 1.5)": (lambda p, d: {"control": p["mm_diffusers"], "spatial": p["sdxl_file"],
                                                            "base": p["sd"]}, ValueError,
                                              r"spatial expert \(.*sdxl_single\.safetensors\): base=.* is not a "
                                              r"diffusers SDXL folder.*one base cannot serve both: give this expert "
                                              r"as a diffusers SDXL folder"),
    "role": (lambda p, d: {"spatial": T.save_t2v(d / "t2v_as_spatial")}, ValueError,
             r"spatial expert \(.*t2v_as_spatial\) is a diffusers ModelScope .* cannot serve as the spatial expert"),
    "spaces without VAEs": (_spaces_without_vaes, ValueError,
                            r"control expert \(.*ad_novae\) works in the SD 1.5 latent space and the spatial "
                            r"expert \(.*sd_vae_0.13025\) in the SDXL one; .* no SD 1.5 expert here has VAE weights"),
    "nothing decodes": (_nothing_to_decode, ValueError,
                        r"spatial expert \(.*sd_novae\): no VAE weights to decode the video"),
    "single file without base": (lambda p, d: {"spatial": p["sd_file"]}, ValueError,
                                 r"spatial expert \(.*sd_single\.safetensors\): a single-file SD checkpoint needs "
                                 r"base="),
    "SDXL file without base": (lambda p, d: {"spatial": p["sdxl_file"]}, ValueError,
                               r"spatial expert \(.*sdxl_single\.safetensors\): a single-file SDXL checkpoint needs "
                               r"base=<local diffusers SDXL folder>"),
    "SDXL file on an SD 1.5 base": (lambda p, d: {"spatial": p["sdxl_file"], "base": p["sd_configs"]}, ValueError,
                                    r"spatial expert \(.*sdxl_single\.safetensors\): base=.*sd_configs is not a "
                                    r"diffusers SDXL folder"),
    "SD file on an SDXL base": (lambda p, d: {"spatial": p["sd_file"], "base": p["sdxl_configs"]}, ValueError,
                                r"spatial expert \(.*sd_single\.safetensors\): base=.*sdxl_configs is not a "
                                r"diffusers SD 1.5 folder"),
    "single file on a foreign base": (_file_on_a_foreign_base, ValueError,
                                      r"spatial expert \(.*sd_single\.safetensors\): the checkpoint's UNet attends "
                                      r"to 32-wide text but base's unet/config.json has cross_attention_dim 48"),
}


@pytest.fixture
def weight_loads(monkeypatch):
    """Counts every way weights can load: diffusers and transformers from_pretrained, single-file loading,
    safetensors files read whole, and the families' own loaders."""
    counts = Counter()

    def count_classmethod(owner, name):
        original = owner.__dict__[name].__func__

        def counted(cls, *args, **kwargs):
            counts[f"{owner.__name__}.{name}"] += 1
            return original(cls, *args, **kwargs)
        monkeypatch.setattr(owner, name, classmethod(counted))

    def count_function(owner, name, label):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            counts[label] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)

    count_classmethod(ModelMixin, "from_pretrained")
    count_classmethod(PreTrainedModel, "from_pretrained")
    count_classmethod(FromSingleFileMixin, "from_single_file")
    count_function(animatediff_family, "load_file", "safetensors.load_file")
    for family in FAMILIES:
        count_function(family, "load", f"{family.name}.load")
        count_function(family, "load_codec", f"{family.name}.load_codec")
    return counts


def test_the_load_counter_sees_a_real_load(paths, weight_loads):
    load_experts(control=paths["mm_diffusers"], spatial=paths["sd"])
    assert weight_loads["ModelMixin.from_pretrained"] >= 2 and weight_loads["PreTrainedModel.from_pretrained"] >= 1
    assert weight_loads["safetensors.load_file"] == 1 and weight_loads["animatediff.load"] == 1
    assert weight_loads["sd15.load"] == 1 and weight_loads["sd15.load_codec"] == 1
    load_experts(control=paths["ad"], spatial=paths["sd_file"], base=paths["sd_configs"])
    assert weight_loads["FromSingleFileMixin.from_single_file"] == 1


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_are_refused_before_any_weights_load(paths, tmp_path, weight_loads, case):
    build, error, message = BAD_INPUTS[case]
    inputs = {"control": paths["ad"], "spatial": paths["sd"], "temporal": paths["t2v"], **build(paths, tmp_path)}
    with pytest.raises(error, match=message):
        load_experts(**inputs)
    assert sum(weight_loads.values()) == 0, f"weights loaded before the error: {dict(weight_loads)}"


@pytest.mark.parametrize("control", ["ad", "sd_plus_adapter", "adapter", "mm_diffusers", "mm_original"])
def test_a_motion_modules_frame_limit_is_refused_before_any_weights_load(paths, tmp_path, weight_loads, control):
    """Every kind of AnimateDiff expert gives its longest clip (the tiny adapter's motion_max_seq_length, 32) from its
    config or header: a longer clip is refused by validate(), by the field a Python caller set; 32 frames pass."""
    from confiner_core.errors import UsageError
    from confiner_core.generate import GenerateRequest

    request = GenerateRequest(control=str(paths[control]), spatial=str(paths["sd"]), temporal=str(paths["t2v"]),
                              frames=40, height=64, width=64, out=str(tmp_path / "out"),
                              long=LongConfig(segment_length=40))   # one clip of 40 frames
    # named by its path (its role alone, "the control expert 'control'", named no model)
    with pytest.raises(UsageError, match=rf"^frames: the control expert '{re.escape(str(paths[control]))}' handles at "
                                         r"most 32 frames at once "
                                         r"but 40 were asked; use frames 32 or fewer, or long.segment_length 32 or "
                                         r"fewer to make them ConFiner-Long segments$") as e:
        replace(request).validate()
    assert e.value.option == "frames"
    with pytest.raises(UsageError, match=r"^long.segment_length: the control expert '.*' handles at most 32 "):
        replace(request, frames=80).validate()                          # segments of 40
    replace(request, frames=32, long=LongConfig(segment_length=32)).validate()
    assert sum(weight_loads.values()) == 0, f"weights loaded before the error: {dict(weight_loads)}"


def test_a_bad_request_is_refused_before_diffusers_is_imported(paths, tmp_path):
    """Checking a checkpoint request reads configs and headers, which needs no diffusers: importing it (seconds on
    every run of the command line) waits for the weights to load, so a mistake is answered at once. Nor does it need
    the compiler, which registering the frame-attention kernel imports (another second). Both kinds of AnimateDiff
    expert, a pipeline folder and a motion adapter on the SD base, in one process."""
    import subprocess
    import sys

    probe = ("import sys\nfrom confiner_core.cli import main\nfor control in sys.argv[1:3]:\n    try:\n"
             "        main(['generate', '--control', control, *sys.argv[3:]])\n    except SystemExit as e:\n"
             "        print('exit', e.code, *(name in sys.modules for name in ('diffusers', 'transformers', "
             "'torch._dynamo')))\n")
    args = [str(paths["ad"]), str(paths["adapter"]), "--spatial", str(paths["sd"]), "--temporal", str(paths["t2v"]),
            "--te", "5000", "--out", str(tmp_path / "out")]
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.stderr.count("--te=5000 lies outside the spatial expert's schedule") == 2, done.stderr[-2000:]
    assert done.stdout.splitlines()[-2:] == ["exit 2 False False False"] * 2, done.stdout


def test_float16_on_the_cpu_is_warned_of(paths, tmp_path):
    """A trial's fp16 run on the CPU took 5x as long as fp32, without a word: said before anything loads."""
    from confiner_core.errors import ConFinerWarning
    from confiner_core.generate import GenerateRequest

    request = GenerateRequest(control=str(paths["ad"]), spatial=str(paths["sd"]), temporal=str(paths["t2v"]),
                              prompt="a corgi", height=64, width=64, out=str(tmp_path / "out"))
    with pytest.warns(ConFinerWarning, match=r"^dtype float16 on the CPU runs several times slower than float32 "
                                             r".*: leave dtype out for float32$"):
        replace(request, dtype="float16").validate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replace(request, dtype="bfloat16").validate()
        replace(request).validate()


def test_a_motion_module_loads_without_a_notice_about_no_modules(paths):
    """diffusers warns of float32 modules on every cast of a UNetMotionModel, also when the list is empty: dropped
    (diffusers' warnings are let through here: other test files silence them)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library, verbosity = logging.getLogger("diffusers"), diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()
    library.addHandler(handler)
    try:
        load_experts(control=paths["adapter"], spatial=paths["sd"])
    finally:
        library.removeHandler(handler)
        diffusers_logging.set_verbosity(verbosity)
    assert not any("kept in float32" in r.getMessage() for r in records), records


def test_a_missing_vae_is_refused_by_the_role_that_needs_it(paths, tmp_path):
    """The expert to give a VAE is the input the error names (the spatial expert, whose VAE decodes the video; none
    of the experts here has one)."""
    from confiner_core.errors import UsageError
    from confiner_core.generate import GenerateRequest

    inputs = _nothing_to_decode(paths, tmp_path)
    request = GenerateRequest(control=str(inputs["control"]), spatial=str(inputs["spatial"]), frames=8, height=64,
                              width=64, out=str(tmp_path / "out"), chain=ChainConfig(mode="standard"))
    with pytest.raises(UsageError, match=r"^spatial: spatial expert \(.*sd_novae\): no VAE weights") as e:
        request.validate()
    assert e.value.option == "spatial"


# ------------------------------------------------------------------------- (g): bridged latent spaces

@pytest.fixture(scope="module")
def bridged(paths):
    """SDXL spatial expert (its own latent space and VAE) with SD-space AnimateDiff and ModelScope experts."""
    return load_experts(control=paths["ad"], spatial=paths["sdxl"], temporal=paths["t2v"])


def test_experts_in_two_latent_spaces_get_one_codec_per_space(bridged):
    control, spatial, temporal = (bridged[r] for r in ("control", "spatial", "temporal"))
    assert (control.latent_space, spatial.latent_space, temporal.latent_space) == (SD15, SDXL, SD15)
    assert spatial.codec is bridged.codec and bridged.codec.space == SDXL
    assert control.codec is temporal.codec and temporal.codec.space == SD15   # one VAE per space, shared
    assert bridged.inspections["spatial"].describe()["family"] == "sdxl"


def test_bridge_through_the_families_vaes_equals_the_vaes_called_directly(paths, bridged):
    sd_vae = AutoencoderKL.from_pretrained(paths["t2v"], subfolder="vae", local_files_only=True)
    sdxl_vae = AutoencoderKL.from_pretrained(paths["sdxl"], subfolder="vae", local_files_only=True)
    x0 = torch.randn(1, 4, 3, H, W, generator=torch.Generator().manual_seed(4))
    crossed = bridge(x0, bridged["control"].codec, bridged["spatial"].codec)
    with torch.no_grad():
        pixels = sd_vae.decode(rearrange(x0, "b c f h w -> (b f) c h w") / 0.18215).sample
        ref = sdxl_vae.encode(pixels).latent_dist.mode() * T.SDXL_SCALING
    assert crossed.shape == x0.shape
    torch.testing.assert_close(crossed, rearrange(ref, "(b f) c h w -> b c f h w", b=1), rtol=1e-4, atol=1e-4)
    frames = bridged.decode(crossed)                        # the video is decoded by the SDXL VAE
    with torch.no_grad():
        own = sdxl_vae.decode(rearrange(crossed, "b c f h w -> (b f) c h w") / T.SDXL_SCALING).sample
    own = ((own / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert frames.shape == (1, 3, 8 * H, 8 * W, 3) and (frames[0].int() - own.int()).abs().max() <= 1
    # a structure (the control expert's space) is decoded by its own VAE with decode(..., "control"): the
    # researcher's control-only baseline decoded it with the SDXL VAE, 4 channels alike, without a word
    structure = bridged.decode(x0, "control")
    with torch.no_grad():
        sd_own = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert (structure[0].int() - sd_own.int()).abs().max() <= 1
    assert (bridged.decode(x0)[0].int() - sd_own.int()).abs().max() > 1   # the SDXL VAE reads it as another video


def test_a_latent_of_another_experts_space_is_told_which_role_decodes_it():
    """A researcher decoded a Wan structure of a Wan -> SD chain as the video: the SD VAE's message named the shape
    alone. The message now says whose space the latent's channels are, and the call that decodes it."""
    from confiner_core.diffusers_backend.families.registry import LoadedExperts
    from confiner_core.embedded.experts import embedded_experts

    wan, sd = embedded_experts("wan"), embedded_experts("sd")
    loaded = LoadedExperts({"control": wan["control"], "spatial": sd["spatial"], "temporal": wan["temporal"]},
                           sd["spatial"].codec)
    structure = torch.randn(wan["control"].latent_space.latent_shape(1, 9, 64, 64),
                            generator=torch.Generator().manual_seed(0))
    own, other = sd["spatial"].latent_space, wan["control"].latent_space
    assert own.channels != other.channels
    with pytest.raises(ValueError, match=rf"^decode\(\.\.\., 'spatial'\): the latent has {other.channels} channels, "
                                         rf"the spatial expert's {re.escape(own.latents)} have {own.channels}; a "
                                         rf"latent of the control expert's space decodes with "
                                         rf"decode\(latent, 'control'\)$"):
        loaded.decode(structure)
    assert loaded.decode(structure, "control").shape == (1, 9, 64, 64, 3)
    # a misspelt role is named as one, with the role meant (it read "the spacial expert is absent")
    with pytest.raises(ValueError, match=r"^decode\(\.\.\., 'spacial'\): the role is one of 'control', 'spatial', "
                                         r"'temporal' \(meant: 'spatial'\?\)$"):
        loaded.decode(structure, "spacial")


def test_a_prompt_longer_than_its_text_encoder_reads_is_warned(paths):
    """CLIP reads 77 tokens: a longer prompt was cut without a word (diffusers' pipelines log the part cut). The
    warning is the caller's line's (it was torch's no_grad decorator's), and transformers' own line on the length
    (once per expert) is not said beside it."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from confiner_core.chain import ConFinerWarning
    from confiner_core.diffusers_backend.text import PromptEncoder

    tokenizer = CLIPTokenizer.from_pretrained(paths["sd"], subfolder="tokenizer", local_files_only=True)
    encoder = PromptEncoder(tokenizer, CLIPTextModel.from_pretrained(paths["sd"], subfolder="text_encoder",
                                                                    local_files_only=True))
    short, long = "a red ball", " ".join(["a red ball bouncing"] * 30)
    assert tokenizer.model_max_length > len(tokenizer(short).input_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConFinerWarning)
        encoder(short)
    # (counted on a tokenizer of its own: transformers says its line once per tokenizer)
    count = len(CLIPTokenizer.from_pretrained(paths["sd"], subfolder="tokenizer", local_files_only=True)(long).input_ids)
    said_by_transformers = []   # (its logger does not propagate to the root's)
    listener = logging.Handler()
    listener.emit = lambda record: said_by_transformers.append(record.getMessage())
    logging.getLogger("transformers").addHandler(listener)
    # the end as words (it read 'd</w>word</w>...' through transformers 5's CLIP tokenizer)
    try:
        with pytest.warns(ConFinerWarning, match=rf"^a prompt is {count} tokens and CLIPTextModel "
                                                 r"reads 77: the end is not read \('[a-z]* ?a red ball bouncing a red "
                                                 r"ball") as said:   # (the cut falls between tokens, inside a word)
            encoder(long)
    finally:
        logging.getLogger("transformers").removeHandler(listener)
    assert count > tokenizer.model_max_length and said[0].filename == __file__, said[0].filename
    assert not [m for m in said_by_transformers if "Token indices sequence length" in m], said_by_transformers


def test_a_zero_terminal_snr_scheduler_is_refused_before_the_weights_load(paths, tmp_path, capsys, monkeypatch):
    """v-prediction SD 1.5 fine-tunes ship rescale_betas_zero_snr, which ConFiner does not support yet: it failed
    after the weights loaded, exit 1, naming neither the role, the path nor a fix."""
    import confiner_core.diffusers_backend as backend
    from confiner_core.cli import main

    zsnr = copy_without(paths["sd"], tmp_path / "sd_zsnr")
    edit_json(zsnr / "scheduler" / "scheduler_config.json", prediction_type="v_prediction",
              rescale_betas_zero_snr=True)
    monkeypatch.setattr(backend, "load_experts", None)   # the refusal must come before any loading
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(tmp_path / "x"), "--control", str(paths["ad"]), "--spatial", str(zsnr),
              "--temporal", str(paths["t2v"]), "--height", "64", "--width", "64", "--quiet"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and last == (
        f"error: --spatial: spatial expert ({zsnr}): its schedule is zero-terminal-SNR (rescale_betas_zero_snr), "
        f"which ConFiner does not support yet; use another checkpoint for the spatial expert"), last
    # the library's too: a ValueError, as load_experts promises for an unusable expert (it was NotImplementedError)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"^spatial expert \(.*zero-terminal-SNR.*use another checkpoint"):
        backend.load_experts(paths["ad"], zsnr, paths["t2v"])


def test_an_expert_without_vae_weights_is_told_whose_vae_serves_it(paths, tmp_path, capsys):
    """A spatial folder missing vae/ was decoded by the temporal expert's VAE (one VAE serves a latent space) without
    a word, and the report said nothing of it either."""
    from confiner_core.cli import main

    novae = copy_without(paths["sd"], tmp_path / "sd_novae", "vae")
    out = tmp_path / "x"
    assert main(["generate", "--out", str(out), "--control", str(paths["ad"]), "--spatial", str(novae),
                 "--temporal", str(paths["t2v"]), "--height", "64", "--width", "64", "--frames", "8", "--quiet"]) == 0
    assert f"the spatial expert ({novae}) has no VAE of its own (its config and weights): the VAE of the temporal " \
        f"expert ({paths['t2v']}), of the same SD 1.5 latent space, serves it\n" in capsys.readouterr().out
    experts = json.loads((out / "report.json").read_text())["experts"]
    assert experts["spatial"]["vae"] == experts["temporal"]["vae"] == str(paths["t2v"])
    # a script is told by a warning at its own generate() line
    from confiner_core.errors import ConFinerWarning
    from confiner_core.generate import GenerateRequest, generate

    request = GenerateRequest(control=str(paths["ad"]), spatial=str(novae), temporal=str(paths["t2v"]), height=64,
                              width=64, frames=8, out=str(out))
    with pytest.warns(ConFinerWarning, match=r"the spatial expert \(.*sd_novae\) has no VAE of its own") as caught:
        generate(request, show_progress=False)
    assert [w.filename for w in caught if "no VAE" in str(w.message)] == [__file__]
    # an expert with its own VAE: nothing said, its own folder reported
    assert main(["generate", "--out", str(out), "--control", str(paths["ad"]), "--spatial", str(paths["sd"]),
                 "--temporal", str(paths["t2v"]), "--height", "64", "--width", "64", "--frames", "8", "--quiet"]) == 0
    assert "no VAE of its own" not in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["experts"]["spatial"]["vae"] == str(paths["sd"])


def test_a_quiet_run_leaves_the_libraries_it_imported_at_their_default_verbosity(paths, tmp_path):
    """main([..., "--quiet"]) as a notebook's first call imported transformers and diffusers under the variables
    that quieten them, which they read at import and kept: they logged errors only for the rest of the session."""
    import os
    import subprocess
    import sys

    argv = ["generate", "--quiet", "--height", "64", "--width", "64", "--frames", "8", "--control", str(paths["ad"]),
            "--spatial", str(paths["sd"]), "--temporal", str(paths["t2v"]), "--out", str(tmp_path / "x")]
    code = (f"import sys\nfrom confiner_core.cli import main\nassert 'transformers' not in sys.modules\n"
            f"assert main({argv!r}) == 0\nimport diffusers, transformers\n"
            f"print(transformers.utils.logging.get_verbosity(), diffusers.utils.logging.get_verbosity())")
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == [str(logging.WARNING)] * 2, done.stdout


# --------------------------------------------------------------- (h): AnimateDiff scheduler (issue 12 item 8)

def test_a_scheduler_shipped_with_an_animatediff_folder_is_respected(paths, tmp_path):
    shipped = copy_without(paths["ad"], tmp_path / "ad_scaled")
    edit_json(shipped / "scheduler" / "scheduler_config.json", beta_schedule="scaled_linear")
    none = copy_without(paths["ad"], tmp_path / "ad_noscheduler", "scheduler")
    experts = load_experts(control=shipped, spatial=paths["sd"], temporal=none)
    sd_schedule = S.from_diffusers_config(T.sd_scheduler().config)
    torch.testing.assert_close(experts["control"].schedule.alphas, sd_schedule.alphas)
    animatediff = S.from_diffusers_config(T.lightning_scheduler().config)   # linear 0.00085 -> 0.012
    torch.testing.assert_close(experts["temporal"].schedule.alphas, animatediff.alphas)
    assert float(experts["temporal"].schedule.alphas_cumprod[999]) == pytest.approx(0.00158, abs=1e-5)


# ----------------------------------------------- (i): one evaluation per family against its diffusers pipeline

CFG = 3.0


def cfg_combine(out: torch.Tensor, scale: float) -> torch.Tensor:
    uncond, cond = out.chunk(2)
    return uncond + scale * (cond - uncond)


def canonical(seed=5):
    return torch.randn(B, 4, F, H, W, generator=torch.Generator().manual_seed(seed))


def frames_of(x):
    return rearrange(x, "b c f h w -> (b f) c h w")


@pytest.fixture(scope="module")
def motion_on_base(paths):
    # the tiny adapter has 4 heads, which leave no trace in the weights (real AnimateDiff releases have the default 8)
    return load_experts(control=paths["mm_original"], spatial=paths["sd"], motion_config=paths["adapter"])["control"]


@torch.no_grad()
def reference_sd(paths, x):
    pipe = StableDiffusionPipeline.from_pretrained(paths["sd"], safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)
    pos, neg = pipe.encode_prompt("a cat", "cpu", 1, True, negative_prompt="the dog")
    n = B * F
    out = pipe.unet(torch.cat([frames_of(x)] * 2), T_FLOAT,
                    encoder_hidden_states=torch.cat([neg.expand(n, -1, -1), pos.expand(n, -1, -1)])).sample
    return rearrange(cfg_combine(out, CFG), "(b f) c h w -> b c f h w", b=B)


@torch.no_grad()
def reference_animatediff(pipe, x):
    pos, neg = pipe.encode_prompt("a cat", "cpu", 1, True, negative_prompt="the dog")
    context = torch.cat([neg.expand(B, -1, -1), pos.expand(B, -1, -1)]).repeat_interleave(F, dim=0)
    return cfg_combine(pipe.unet(torch.cat([x, x]), T_FLOAT, encoder_hidden_states=context).sample, CFG)


@torch.no_grad()
def reference_modelscope(paths, x):
    pipe = TextToVideoSDPipeline.from_pretrained(paths["t2v"], local_files_only=True)
    pos, neg = pipe.encode_prompt("a cat", "cpu", 1, True, negative_prompt="the dog")
    context = torch.cat([neg.expand(B, -1, -1), pos.expand(B, -1, -1)])
    return cfg_combine(pipe.unet(torch.cat([x, x]), T_FLOAT, encoder_hidden_states=context).sample, CFG)


FAMILY_REFERENCES = {
    "sd15 folder": (lambda loaded, motion, paths: loaded["spatial"], reference_sd),
    "animatediff folder": (lambda loaded, motion, paths: loaded["control"],
                           lambda paths, x: reference_animatediff(
                               AnimateDiffPipeline.from_pretrained(paths["ad"], local_files_only=True), x)),
    "motion module on sd15": (lambda loaded, motion, paths: motion,
                              lambda paths, x: reference_animatediff(AnimateDiffPipeline.from_pretrained(
                                  paths["sd"], local_files_only=True,
                                  motion_adapter=MotionAdapter.from_pretrained(paths["adapter"],
                                                                               local_files_only=True)), x)),
    "modelscope": (lambda loaded, motion, paths: loaded["temporal"], reference_modelscope),
}


@pytest.mark.parametrize("family", FAMILY_REFERENCES)
def test_one_evaluation_equals_the_familys_diffusers_pipeline(paths, loaded, motion_on_base, family):
    pick, reference = FAMILY_REFERENCES[family]
    x = canonical()
    ours = pick(loaded, motion_on_base, paths).bind("a cat", "the dog", CFG).raw(x, T_FLOAT)
    torch.testing.assert_close(ours, reference(paths, x), rtol=1e-5, atol=1e-5)


def test_sdxl_single_file_loads_the_same_weights_and_evaluates_the_same(paths, bridged):
    from_file = load_experts(control=paths["ad"], spatial=paths["sdxl_file"], base=paths["sdxl_configs"])
    ours, folder = from_file["spatial"], bridged["spatial"]
    assert isinstance(ours, SDXLExpert) and ours.latent_space == SDXL
    assert_same_weights(ours.unet, folder.unet)
    for a, b in zip(ours.prompt_encoder.text_encoders, folder.prompt_encoder.text_encoders):
        assert_same_weights(a, b)   # the OpenCLIP layout of the second encoder converted back exactly
    assert_same_weights(from_file.codec.vae, bridged.codec.vae)
    x = canonical()
    # Equal weights, yet not bit-equal outputs on every CPU: a tensor read from the single file can sit at an address
    # that is not 64-byte aligned, and BLAS then takes another path (seen on AMD EPYC: the projection of the pooled
    # text, 2e-7 apart). The weights are compared exactly above; the evaluation within float32 rounding.
    torch.testing.assert_close(ours.bind("a cat", "the dog", CFG).raw(x, 500),
                               folder.bind("a cat", "the dog", CFG).raw(x, 500), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("negative", [None, "the dog"])
def test_one_sdxl_evaluation_equals_the_sdxl_pipeline(paths, bridged, negative):
    """SDXL: both encoders' penultimate layers, the pooled projection, six time ids; with no negative prompt the
    pipeline zeroes the unconditional embeddings (force_zeros_for_empty_prompt), as the expert does for ""."""
    spatial = bridged["spatial"]
    assert isinstance(spatial, SDXLExpert) and spatial.prompt_encoder.width == sum(T.SDXL_WIDTHS)
    # built by hand from its parts, as the README shows, it is in SDXL's space (it took SD 1.5's, the base default)
    by_hand = SDXLExpert(spatial.unet, spatial.prompt_encoder, spatial.scheduler_config)
    assert by_hand.latent_space == SDXL
    x = canonical()
    ours = spatial.bind("a cat", negative or "", CFG).raw(x, T_FLOAT)
    pipe = StableDiffusionXLPipeline.from_pretrained(paths["sdxl"], local_files_only=True)
    with torch.no_grad():
        pos, neg, pooled, neg_pooled = pipe.encode_prompt("a cat", device="cpu", num_images_per_prompt=1,
                                                          do_classifier_free_guidance=True, negative_prompt=negative)
        time_ids = pipe._get_add_time_ids((8 * H, 8 * W), (0, 0), (8 * H, 8 * W), pos.dtype,
                                          text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        n = B * F
        out = pipe.unet(torch.cat([frames_of(x)] * 2), T_FLOAT,
                        encoder_hidden_states=torch.cat([neg.expand(n, -1, -1), pos.expand(n, -1, -1)]),
                        added_cond_kwargs={"text_embeds": torch.cat([neg_pooled.expand(n, -1), pooled.expand(n, -1)]),
                                           "time_ids": time_ids.repeat(2 * n, 1)}).sample
    if negative is None:
        assert neg.abs().sum() == 0
    ref = rearrange(cfg_combine(out, CFG), "(b f) c h w -> b c f h w", b=B)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- text and VAE

def test_clip_skip_uses_the_final_layer_norm_of_either_transformers_layout(loaded):
    pe = loaded["spatial"].prompt_encoder
    skipped = PromptEncoder(pe.tokenizer, pe.text_encoder, clip_skip=1)("a cat")
    with torch.no_grad():
        hidden = pe.text_encoder(pe.tokenize("a cat").input_ids, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(skipped, final_layer_norm(pe.text_encoder)(hidden))
    assert not torch.allclose(skipped, pe("a cat"))


def count_calls(module) -> list:
    """A list that grows by one at every forward of ``module``, and the batch it took."""
    calls = []
    module.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    return calls


def test_prompt_and_negative_are_encoded_as_the_pipeline_encodes_them(paths):
    """The pipeline encodes a prompt and its negative one at a time, and so do we: the same embeddings, bit for bit
    (the batch of both, as before, differed in the last bits)."""
    pipe = StableDiffusionPipeline.from_pretrained(paths["sd"], safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)
    with torch.no_grad():
        pos, neg = pipe.encode_prompt("a cat", "cpu", 1, True, negative_prompt="the dog")
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
    calls = count_calls(pipe.text_encoder)
    ours = encoder.encode_all(["a cat", "the dog"])
    assert calls == [1, 1]
    assert torch.equal(ours[0], pos) and torch.equal(ours[1], neg)


def test_an_embedding_depends_on_its_text_alone_not_on_what_was_encoded_before(paths):
    """A prompt and its negative went through the encoder as one batch unless the prompt was remembered, when the
    negative went alone: in one process the same seed then gave another latent (2.3e-5 apart) after a cfg-1 call
    had encoded the prompt first. Each text is encoded alone, as diffusers' pipelines encode them."""
    pipe = StableDiffusionPipeline.from_pretrained(paths["sd"], safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
    fresh = encoder.encode_all(["a red ball bouncing over green grass", ""])
    encoder.forget()
    encoder("a red ball bouncing over green grass")          # e.g. a cfg-1 evaluation first
    after = encoder.encode_all(["a red ball bouncing over green grass", ""])
    assert all(torch.equal(a, b) for a, b in zip(fresh, after))


def test_experts_sharing_an_encoder_encode_each_prompt_once(paths):
    loaded = load_experts(control=paths["mm_original"], spatial=paths["sd"], motion_config=paths["adapter"])
    control, spatial = loaded["control"], loaded["spatial"]
    encoder = spatial.prompt_encoder
    assert control.prompt_encoder is encoder           # a motion module on the SD 1.5 base: one text encoder
    calls = count_calls(encoder.text_encoder)
    control.bind("a cat", "the dog", 1.0)              # no guidance: the prompt only
    spatial.bind("a cat", "the dog", 7.5)              # the prompt is remembered: the negative alone
    assert calls == [1, 1]
    spatial.bind("a dog", "the dog", 7.5)
    assert calls == [1, 1, 1]
    encoder.forget()
    spatial.bind("a cat", "the dog", 7.5)              # bound first, as generate does: both encoded, one at a time
    control.bind("a cat", "the dog", 1.0)              # the prompt remembered
    assert calls == [1, 1, 1, 1, 1]


def test_remembered_prompts_keep_the_ones_used_last():
    encoder = PromptEncoder(T.tiny_tokenizer(), T.tiny_text_encoder())
    encoder.keep = 2
    calls = count_calls(encoder.text_encoder)
    first = encoder.encode_all(["a", "b", "a"])
    assert calls == [1, 1] and first[0] is first[2]
    encoder("c")                                       # "a", used longest ago, makes room: b, c
    encoder("b")                                       # held; now the newest: c, b
    assert calls == [1, 1, 1]
    encoder("a")                                       # c makes room: b, a
    encoder("b")                                       # held (first in, but used since): a, b
    encoder("d")                                       # a makes room: b, d
    encoder("b")
    assert calls == [1, 1, 1, 1, 1]
    encoder.keep = 0                                   # nothing held, every call encodes
    encoder.encode_all(["e", "e"])
    encoder("e")
    assert calls == [1, 1, 1, 1, 1, 1, 1]


def test_decoder_chunks_frames_without_changing_them(loaded):
    latent = torch.randn(2, 4, 3, H, W, generator=torch.Generator().manual_seed(2))
    loaded.decoder.chunk_frames = 1
    chunked = loaded.decode(latent)
    loaded.decoder.chunk_frames = 8
    whole = loaded.decode(latent)
    assert chunked.shape == (2, 3, 64, 64, 3) and chunked.dtype == torch.uint8
    assert (chunked.int() - whole.int()).abs().max() <= 1   # batch size may move a value across a rounding edge
    with torch.no_grad():
        first = loaded.decoder.vae.decode(latent[1, :, 2][None] / 0.18215).sample[0]
    ref = ((first / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    assert (chunked[1, 2].int() - ref.int()).abs().max() <= 1


def test_placement_agrees_with_diffusers_device_and_dtype():
    """``placement`` (read on every evaluation instead of diffusers' properties, which walk every submodule) gives
    what ``ModelMixin.device`` / ``.dtype`` give: the compute dtype skips a model's fp32-kept modules (Wan keeps its
    norms and time embedder in float32 when loaded in bfloat16)."""
    import tiny_modern as M
    from confiner_core.diffusers_backend.experts import placement

    wan = M.wan_transformer().to(torch.bfloat16)
    keep = wan._keep_in_fp32_modules
    assert keep, "the reference needs a model with fp32-kept modules"
    for name, param in wan.named_parameters():  # as from_pretrained loads it in bfloat16
        if any(k in name for k in keep):
            param.data = param.data.float()
    first_kept = next(n for n, _ in wan.named_parameters() if any(k in n for k in keep))
    assert wan.get_parameter(first_kept).dtype == torch.float32
    for model in (T.tiny_unet2d().half(), T.tiny_unet3d().to(torch.bfloat16), T.tiny_vae(), wan):
        assert placement(model) == (model.device, model.dtype), type(model).__name__
    # a model whose first parameters are fp32-kept: the compute dtype is still the first non-kept one's
    for param in wan.patch_embedding.parameters():
        param.data = param.data.float()
    wan._keep_in_fp32_modules = [*keep, "patch_embedding"]
    assert placement(wan) == (wan.device, wan.dtype) == (torch.device("cpu"), torch.bfloat16)


@pytest.mark.parametrize("case", ["folders", "motion module on the spatial file", "sdxl file", "pndm base"])
def test_the_schedules_settled_before_loading_are_the_loaded_experts_and_diffusers(paths, tmp_path, case):
    """The settings that hang on the schedules (T_e's default, 'auto' matching, the checks of T_e and the steps) are
    settled before any weights load, on each inspection's schedule; a command line that read the scheduler configs
    itself settled otherwise than the loaded experts (a trial). Each inspection's schedule is the loaded expert's,
    and what diffusers makes of the same files: the folder's scheduler class from its config, a single file's
    pipeline scheduler, a PNDM base that leaves set_alpha_to_one out (diffusers' default False: the last step ends at
    alpha_cumprod[0], not 1), and a motion module without a scheduler of its own on AnimateDiff's linear betas."""
    import diffusers
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from confiner_core.diffusers_backend import load_experts

    def pipeline_scheduler(folder):
        config = json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text())
        return getattr(diffusers, config["_class_name"]).from_pretrained(folder, subfolder="scheduler")

    if case == "pndm base":
        base = copy_without(paths["sd_configs"], tmp_path / "pndm_base")
        config = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
        config.pop("set_alpha_to_one")
        (base / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config,
                                                                              "_class_name": "PNDMScheduler"}))
        edit_json(base / "model_index.json", scheduler=["diffusers", "PNDMScheduler"])   # (as SD 1.5's own base)
    else:
        base = paths["sdxl_configs"] if case == "sdxl file" else paths["sd_configs"]
    roles = {"folders": dict(control=paths["ad"], spatial=paths["sd"], temporal=paths["t2v"]),
             "motion module on the spatial file": dict(control=paths["adapter"], spatial=paths["sd_file"],
                                                       temporal=paths["adapter"], base=base),
             "sdxl file": dict(control=paths["ad"], spatial=paths["sdxl_file"], temporal=paths["t2v"], base=base),
             "pndm base": dict(control=paths["ad"], spatial=paths["sd_file"], temporal=paths["t2v"], base=base)}[case]
    experts = load_experts(**roles)
    for role, inspection in experts.inspections.items():
        loaded = experts[role].schedule
        assert torch.equal(inspection.schedule.alphas, loaded.alphas), role
        assert torch.equal(inspection.schedule.sigmas, loaded.sigmas), role
        assert (inspection.schedule.final_alpha, inspection.schedule.kind) == (loaded.final_alpha, loaded.kind), role
    theirs = {"control": None if "adapter" in str(roles["control"]) else pipeline_scheduler(roles["control"]),
              "temporal": None if "adapter" in str(roles["temporal"]) else pipeline_scheduler(roles["temporal"])}
    if case == "folders":
        theirs["spatial"] = pipeline_scheduler(paths["sd"])
    else:
        pipeline = StableDiffusionXLPipeline if case == "sdxl file" else StableDiffusionPipeline
        theirs["spatial"] = pipeline.from_single_file(str(roles["spatial"]), config=str(base),
                                                      local_files_only=True).scheduler
    if case == "motion module on the spatial file":
        theirs["control"] = theirs["temporal"] = DDIMScheduler(beta_schedule="linear", beta_start=0.00085,
                                                               beta_end=0.012, set_alpha_to_one=False)
    for role, scheduler in theirs.items():
        if scheduler is None:
            continue
        ours = experts.inspections[role].schedule
        assert torch.allclose(ours.alphas ** 2, scheduler.alphas_cumprod.double(), rtol=1e-6, atol=0), role
        final = getattr(scheduler, "final_alpha_cumprod", None)
        if final is not None:
            assert ours.final_alpha ** 2 == pytest.approx(float(final), rel=1e-6), (role, case)
    if case == "pndm base":
        assert experts.inspections["spatial"].schedule.final_alpha < 1
