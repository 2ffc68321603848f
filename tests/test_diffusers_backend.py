"""The diffusers backend on tiny random experts of all three families (CPU, offline; see tiny_diffusers.py)."""

import shutil

import pytest
import torch
from diffusers.utils import logging as diffusers_logging

import tiny_diffusers as T
from confiner_core import schedules as S
from confiner_core.chain import ChainConfig, run_chain
from confiner_core.diffusers_backend import (FrameExpert, MotionExpert, PromptEncoder, SpeedSettings, UNet3DExpert,
                                             detect_kind, infer_motion_config, load_experts, load_motion_file)
from confiner_core.diffusers_backend.text import final_layer_norm
from confiner_core.experts import EvaluationLog

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
             "sd_plus_adapter": "animatediff"}
    assert {k: detect_kind(paths[k]) for k in kinds} == kinds
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"")
    with pytest.raises(ValueError, match="only .safetensors"):
        detect_kind(pickle)


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
    if key == "sd_plus_adapter":   # a pipeline folder: its own scheduler config (SD's scaled_linear) is respected
        torch.testing.assert_close(control.schedule.alphas, S.from_diffusers_config(T.sd_scheduler().config).alphas)
    else:                          # motion modules ship no scheduler: AnimateDiff's linear betas
        torch.testing.assert_close(control.schedule.alphas, loaded["control"].schedule.alphas)


def test_scheduler_overrides_replace_the_animatediff_default(paths):
    # the SD base carries scaled_linear; a motion module on it gets linear unless told otherwise
    kept = load_experts(control=paths["mm_diffusers"], spatial=paths["sd"],
                        scheduler_overrides={"control": {}})["control"]
    torch.testing.assert_close(kept.schedule.alphas, S.from_diffusers_config(T.sd_scheduler().config).alphas)


def test_fp16_variant_weights_are_found(paths, tmp_path):
    folder = shutil.copytree(paths["t2v"], tmp_path / "t2v_fp16")
    for weights in folder.glob("*/*.safetensors"):
        weights.rename(weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    temporal = load_experts(control=paths["ad"], spatial=paths["sd"], temporal=folder)["temporal"]
    assert isinstance(temporal, UNet3DExpert) and temporal.prompt_encoder.width == T.T2V_WIDTH


# ----------------------------------------------------------------------------------- (f): mismatches

MISMATCHES = {
    "8 latent channels": (lambda d: {"temporal": T.save_t2v(d / "t2v8", in_channels=8)},
                          r"temporal expert \(.*t2v8\): its UNet takes 8 latent channels"),
    "text width": (lambda d: {"temporal": T.save_t2v(d / "t2v_w", text_width=T.SD_WIDTH)},
                   r"temporal expert \(.*t2v_w\): its text encoder produces 32-wide .* cross_attention_dim is 48"),
    "vae scaling": (lambda d: {"spatial": T.save_sd(d / "sd_vae", vae_scaling=0.13025)},
                    r"control expert \(.*\): its VAE scales latents by 0.18215 but the decoding VAE by 0.13025"),
    "motion layers": (lambda d: {"control": T.write_motion_module(T.tiny_motion_adapter(layers_per_block=2),
                                                                  d / "mm2.safetensors", original_layout=False)},
                      r"control expert \(.*mm2.safetensors\): the motion module has \[2, 2\] layers per block"),
    "role": (lambda d: {"spatial": T.save_t2v(d / "t2v_as_spatial")},
             r"spatial expert \(.*t2v_as_spatial\) is a diffusers ModelScope .* cannot serve as the spatial expert"),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_mismatched_experts_fail_before_sampling(paths, tmp_path, case):
    build, message = MISMATCHES[case]
    roles = {"control": paths["ad"], "spatial": paths["sd"], "temporal": paths["t2v"], **build(tmp_path)}
    with pytest.raises(ValueError, match=message):
        load_experts(**roles)


# ------------------------------------------------------------------------------------- text and VAE

def test_clip_skip_uses_the_final_layer_norm_of_either_transformers_layout(loaded):
    pe = loaded["spatial"].prompt_encoder
    skipped = PromptEncoder(pe.tokenizer, pe.text_encoder, clip_skip=1)("a cat")
    with torch.no_grad():
        hidden = pe.text_encoder(pe.tokenize("a cat").input_ids, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(skipped, final_layer_norm(pe.text_encoder)(hidden))
    assert not torch.allclose(skipped, pe("a cat"))


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
