"""Wan 2.1 / Wan 2.2 / Qwen-Image / FLUX.1 experts, codecs and text encoders against diffusers' own pipelines (CPU,
tiny random-weight folders built by tests/tiny_modern.py).

The references are the pipelines themselves: ``WanPipeline`` / ``QwenImagePipeline`` / ``FluxPipeline`` run for one
Euler step from
our noisy latent to sigma 0 with ``output_type="latent"``, which returns ``x_t - sigma * v`` = the x0 estimate of
the pipeline's own transformer call, guidance and prompt encoding. The pipeline is given our noise level through
a ``FlowMatchEulerDiscreteScheduler`` whose ``set_timesteps`` takes a fixed sigma list (diffusers applies the
shift itself for Wan; Qwen-Image and Flux get the shifted sigma through their ``sigmas`` argument).
"""

from __future__ import annotations

import functools
from dataclasses import replace
import json
import re
import warnings

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, QwenImagePipeline, WanPipeline
from diffusers.pipelines.wan.pipeline_wan import prompt_clean

from confiner_core.chain import ChainConfig, ConFinerWarning, run_chain
from confiner_core.diffusers_backend import detect, load_experts
from confiner_core.diffusers_backend.families import flux as F
from confiner_core.diffusers_backend.families import qwen_image as Q
from confiner_core.diffusers_backend.families import registry
from confiner_core.diffusers_backend.families import wan as W
from confiner_core.diffusers_backend.families.base import Context
from confiner_core.experts import EvaluationLog, ExpertPair, bind_chain
from confiner_core.latent_spaces import FLUX, WAN21, PerFrameCodec, per_frame, wan22_space
from confiner_core.schedules import flow_schedule
import tiny_modern as tm
from tiny_modern import modern_dirs  # noqa: F401  (session fixture)

PROMPT, NEGATIVE = "a red cat runs over the grass", "blurry, low quality"
ATOL = 2e-5


class FixedSigmas(FlowMatchEulerDiscreteScheduler):
    """FlowMatchEuler whose ``set_timesteps`` (as WanPipeline calls it, with a step count only) uses ``fixed``
    unshifted sigmas; diffusers shifts them with its ``shift`` config."""

    fixed: list = []

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        super().set_timesteps(sigmas=list(self.fixed), device=device, **kwargs)


def fixed_scheduler(shift: float, t: int) -> FixedSigmas:
    scheduler = FixedSigmas(shift=shift, num_train_timesteps=1000)
    scheduler.fixed = [(t + 1) / 1000]     # the core's table: u = (t + 1) / 1000, shifted
    return scheduler


def latent(shape, seed=1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pipes(modern_dirs):
    """kind -> the pipeline loaded from its tiny folder (once per module)."""
    cls = {"qwen_image": QwenImagePipeline, "flux_dev": FluxPipeline, "flux_schnell": FluxPipeline}
    return functools.lru_cache(lambda kind: cls.get(kind, WanPipeline).from_pretrained(modern_dirs(kind),
                                                                                       local_files_only=True))


def wan_reference_x0(pipe, x, t, shift, guidance=1.0, guidance_2=None, negative=None):
    """x0 of one WanPipeline step at the core's timestep ``t`` (Euler to sigma 0: x - sigma * v)."""
    pipe.scheduler = fixed_scheduler(shift, t)
    _, _, frames, h, w = x.shape
    s = pipe.vae_scale_factor_spatial
    return pipe(PROMPT, negative_prompt=negative, height=h * s, width=w * s, num_frames=4 * (frames - 1) + 1,
                num_inference_steps=1, guidance_scale=guidance, guidance_scale_2=guidance_2, latents=x.clone(),
                output_type="latent").frames


def wan_expert(pipe, cls=W.WanExpert, transformer=None, **kwargs):
    encoder = W.UMT5PromptEncoder(pipe.tokenizer, pipe.text_encoder)
    space = W.wan_latent_space(dict(pipe.vae.config))
    return cls(transformer or pipe.transformer, encoder, W.flow_shift_of(dict(pipe.scheduler.config)), space,
               **kwargs)


# ----------------------------------------------------------------------------------------------- text

def test_umt5_encoding_equals_wan_pipeline(pipes):
    wan21 = pipes("wan21")
    encoder = W.UMT5PromptEncoder(wan21.tokenizer, wan21.text_encoder)
    for prompt in (PROMPT, "", "  A  cat &amp; a dog,\n at night!  "):
        ours = encoder(prompt)
        with torch.no_grad():    # (with autograd on, the encoder takes other kernels: differences of 1e-6)
            theirs, _ = wan21.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=512)
        assert ours.shape == (1, 512, tm.TEXT_WIDTH)
        assert torch.equal(ours, theirs)
        length = int(wan21.tokenizer([prompt_clean(prompt)], return_tensors="pt").attention_mask.sum())
        assert ours[:, length:].abs().max() == 0 and ours[:, :length].abs().min() > 0


def test_umt5_encodes_each_prompt_alone_equal_to_the_pipeline(pipes):
    wan21 = pipes("wan21")
    encoder = W.UMT5PromptEncoder(wan21.tokenizer, wan21.text_encoder)
    calls = []
    hook = wan21.text_encoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    prompts = [PROMPT, "", "a much longer prompt, with several more words than the others"]
    try:
        ours = encoder.encode_all(prompts)
        assert encoder(prompts[2]) is ours[2]              # remembered: no second forward
    finally:
        hook.remove()
    assert calls == [1, 1, 1]
    for prompt, embeds in zip(prompts, ours):
        with torch.no_grad():
            theirs, _ = wan21.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=512)
        assert torch.equal(embeds, theirs)


def test_qwen_encoding_equals_qwen_pipeline(pipes):
    qwen = pipes("qwen_image")
    encoder = Q.QwenPromptEncoder(qwen.tokenizer, qwen.text_encoder)
    for prompt in (PROMPT, "a dog"):
        embeds, mask = encoder(prompt)
        with torch.no_grad():
            theirs, their_mask = qwen.encode_prompt(prompt, max_sequence_length=512)
        assert torch.equal(embeds, theirs)
        assert their_mask is None and bool(mask.all())     # one prompt: nothing padded, the pipeline passes None
        # the dropped 34 tokens are exactly the template: what is kept starts with the prompt's own tokens
        ids = qwen.tokenizer(Q.PROMPT_TEMPLATE.format(prompt)).input_ids
        own = qwen.tokenizer(prompt).input_ids
        assert ids[Q.TEMPLATE_TOKENS:Q.TEMPLATE_TOKENS + len(own)] == own
        assert embeds.shape[1] == len(ids) - Q.TEMPLATE_TOKENS


# --------------------------------------------------------------------------------------------- codecs

def test_wan_codec_normalisation_equals_pipeline_decode(pipes):
    wan21 = pipes("wan21")
    codec = W.WanVAECodec(wan21.vae)
    assert codec.space is WAN21
    z = latent((1, 16, 3, 4, 4))
    vae = wan21.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        theirs = vae.decode(z / inv_std + mean, return_dict=False)[0]          # WanPipeline's decode
    ours = codec.decode(z)
    assert ours.shape == (1, 3, 9, 32, 32)
    assert (ours - theirs).abs().max() < 1e-6
    # encoding: WanVideoToVideoPipeline's (z - mean) * (1 / std) of the posterior mean
    pixels = torch.rand(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        their_z = (vae.encode(pixels).latent_dist.mode() - mean) * inv_std
    assert (codec.encode(pixels) - their_z).abs().max() < 1e-5


def test_codec_causal_frame_rule(pipes):
    wan21 = pipes("wan21")
    codec = W.WanVAECodec(wan21.vae)
    pixels = torch.rand(2, 3, 9, 16, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1
    z = codec.encode(pixels)
    assert z.shape == (2, 16, 3, 2, 3)                    # 9 <-> 3 latent frames (81 <-> 21 at full size)
    assert codec.decode(z).shape == (2, 3, 9, 16, 24)
    assert codec.encode(pixels[:, :, :1]).shape == (2, 16, 1, 2, 3)
    with pytest.raises(ValueError, match=r"4k\+1 frames.*8 frames.*use 5 or 9"):
        codec.encode(pixels[:, :, :8])
    with pytest.raises(ValueError, match="multiples of 8"):
        codec.encode(pixels[..., :12, :])
    # pixel-frames mode: every pixel frame alone, in the per-frame space; chunks of the batch give the same result
    frames = per_frame(W.WanVAECodec(wan21.vae, batch_chunk=4))
    zf = frames.encode(pixels)
    assert frames.space == WAN21.per_frame() and zf.shape == (2, 16, 9, 2, 3)
    assert frames.decode(zf).shape == (2, 3, 9, 16, 24)
    whole = per_frame(W.WanVAECodec(wan21.vae, batch_chunk=100)).encode(pixels)
    assert (zf - whole).abs().max() < 1e-5
    assert (zf[:, :, :1] - z[:, :, :1]).abs().max() < 1e-5    # frame 0 is encoded alone either way


def test_wan22_codec_space(pipes):
    ti2v = pipes("wan22_ti2v")
    codec = W.WanVAECodec(ti2v.vae)
    assert codec.space == wan22_space(tm.WAN22_MEAN, tm.WAN22_STD)
    assert (codec.space.channels, codec.space.spatial_factor) == (48, 16)
    pixels = torch.rand(1, 3, 5, 64, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    z = codec.encode(pixels)
    assert z.shape == (1, 48, 2, 4, 2)
    assert codec.decode(z).shape == (1, 3, 5, 64, 32)


def test_qwen_vae_is_the_wan21_space(pipes):
    qwen = pipes("qwen_image")
    wan21 = pipes("wan21")
    codec = W.WanVAECodec(qwen.vae)
    assert codec.space is WAN21
    z = latent((1, 16, 1, 4, 4))
    assert (codec.decode(z) - W.WanVAECodec(wan21.vae).decode(z)).abs().max() < 1e-6


# -------------------------------------------------------------------------------------------- experts

@pytest.mark.parametrize("t,guidance", [(999, 1.0), (600, 4.0), (100, 4.0)])
def test_wan_expert_equals_wan_pipeline(pipes, t, guidance):
    wan21 = pipes("wan21")
    expert = wan_expert(wan21)
    assert expert.shift == tm.WAN21_SHIFT and expert.latent_space is WAN21
    x = latent((1, 16, 3, 4, 6))
    negative = NEGATIVE if guidance > 1 else None
    theirs = wan_reference_x0(wan21, x, t, tm.WAN21_SHIFT, guidance, negative=negative)
    ours = expert.bind(PROMPT, negative or "", guidance).__call__(x, t).x0
    assert (ours - theirs).abs().max() < ATOL


def test_wan_image_expert_equals_one_frame_pipeline(pipes):
    wan21 = pipes("wan21")
    """Latent-frames mode: every latent frame is a one-frame video."""
    expert = wan_expert(wan21, W.WanImageExpert)
    x = latent((1, 16, 3, 4, 4))
    ours = expert.bind(PROMPT, NEGATIVE, 3.0)(x, 300).x0
    theirs = torch.cat([wan_reference_x0(wan21, x[:, :, f:f + 1], 300, tm.WAN21_SHIFT, 3.0, negative=NEGATIVE)
                        for f in range(3)], dim=2)
    assert (ours - theirs).abs().max() < ATOL


def test_a14b_pair_switches_at_the_boundary(pipes):
    a14b = pipes("wan22_a14b")
    high = wan_expert(a14b, transformer=a14b.transformer)
    low = wan_expert(a14b, transformer=a14b.transformer_2)
    low.prompt_encoder = high.prompt_encoder
    pair = W.wan_pair(high, low, a14b.config.boundary_ratio, guidance=(5.0, 2.0))
    schedule = flow_schedule(tm.A14B_SHIFT)
    boundary_t = int((schedule.sigmas >= tm.A14B_BOUNDARY).nonzero()[0])   # first t at the boundary
    assert pair.member(boundary_t) == 0 and pair.member(boundary_t - 1) == 1
    x = latent((1, 16, 2, 4, 4))
    denoiser = pair.bind(PROMPT, NEGATIVE, pair.default_guidance)    # the pair's own scales, (5, 2)
    for t in (999, boundary_t + 5, boundary_t - 5, 100):
        theirs = wan_reference_x0(a14b, x, t, tm.A14B_SHIFT, 5.0, 2.0, negative=NEGATIVE)
        assert (denoiser(x, t).x0 - theirs).abs().max() < ATOL, t
    # the members really differ: the wrong one would not match
    wrong = low.bind(PROMPT, NEGATIVE, 5.0)(x, 999).x0
    assert (wrong - wan_reference_x0(a14b, x, 999, tm.A14B_SHIFT, 5.0, 2.0, negative=NEGATIVE)).abs().max() > 1e-3


def test_ti2v_expert_equals_wan_pipeline(pipes):
    ti2v = pipes("wan22_ti2v")
    expert = wan_expert(ti2v, expand_timesteps=True)
    assert expert.latent_space.channels == 48 and expert.latent_space.spatial_factor == 16
    x = latent((1, 48, 2, 4, 4))
    theirs = wan_reference_x0(ti2v, x, 500, tm.TI2V_SHIFT, 4.0, negative=NEGATIVE)
    assert (expert.bind(PROMPT, NEGATIVE, 4.0)(x, 500).x0 - theirs).abs().max() < ATOL


def qwen_reference_x0(pipe, frames, sigma, guidance=1.0, negative=None):
    """x0 of one QwenImagePipeline step per latent frame ``[N, 16, h, w]`` at flow sigma ``sigma``."""
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)          # our sigma passes unchanged
    _, _, h, w = frames.shape
    out = []
    for frame in frames:
        packed = Q.pack(frame[None])
        x0 = pipe(PROMPT, negative_prompt=negative, true_cfg_scale=guidance, height=h * 8, width=w * 8,
                  sigmas=[sigma], num_inference_steps=1, latents=packed, output_type="latent").images
        out.append(Q.unpack(x0, h, w))
    return torch.cat(out)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_qwen_expert_equals_qwen_pipeline(pipes, guidance):
    qwen = pipes("qwen_image")
    encoder = Q.QwenPromptEncoder(qwen.tokenizer, qwen.text_encoder)
    expert = Q.QwenImageExpert(qwen.transformer, encoder, shift=2.0,
                               latent_space=W.wan_latent_space(dict(qwen.vae.config)))
    assert expert.latent_space is WAN21
    x = latent((1, 16, 3, 4, 6))
    t = 250
    negative = NEGATIVE if guidance > 1 else None
    ours = expert.bind(PROMPT, negative or "", guidance)(x, t).x0
    theirs = qwen_reference_x0(qwen, x[0].permute(1, 0, 2, 3), expert.sigma(t), guidance, negative)
    assert (ours - theirs.permute(1, 0, 2, 3)[None]).abs().max() < ATOL


def test_qwen_dynamic_shift():
    config = dict(tm.qwen_scheduler().config)
    assert abs(Q.dynamic_shift(config, Q.image_seq_len(*Q.REFERENCE_SIZE)) - 2.0) < 1e-3
    # the pipeline's own scheduler applies this shift at that token count (its mu, its time_shift)
    scheduler = tm.qwen_scheduler()
    scheduler.config.shift_terminal = None
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift
    seq = Q.image_seq_len(480, 832)
    mu = calculate_shift(seq, 256, 8192, 0.5, 0.9)
    scheduler.set_timesteps(sigmas=[0.3], mu=mu)
    s = Q.dynamic_shift(config, seq)
    assert abs(float(scheduler.sigmas[0]) - s * 0.3 / (1 + (s - 1) * 0.3)) < 1e-6


# ------------------------------------------------------------------------------ families: detect / inspect

def copy_folder(src, dst, edit: dict | None = None, remove: tuple = ()):
    """A copy of a tiny folder with JSON configs edited ({relative path: {key: value}}) and entries removed."""
    import shutil
    shutil.copytree(src, dst)
    for relative, changes in (edit or {}).items():
        config = json.loads((dst / relative).read_text())
        config.update(changes)
        (dst / relative).write_text(json.dumps(config))
    for relative in remove:
        target = dst / relative
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return dst


def test_detection(modern_dirs, tmp_path):
    kinds = {kind: detect(modern_dirs(kind))[1] for kind in tm.BUILDERS}
    assert kinds == {"wan21": W.WAN_FOLDER, "wan22_a14b": W.WAN_FOLDER, "wan22_ti2v": W.WAN_FOLDER,
                     "qwen_image": Q.QWEN_FOLDER, "flux_dev": F.FLUX_FOLDER, "flux_schnell": F.FLUX_FOLDER}
    i2v = copy_folder(modern_dirs("wan21"), tmp_path / "i2v",
                      {"model_index.json": {"_class_name": "WanImageToVideoPipeline"}})
    assert detect(i2v)[1] == W.WAN_UNSUPPORTED
    # a variant no role takes: said once, with what to use ("…, which cannot serve as the control expert" read as
    # if another role could take it)
    with pytest.raises(ValueError, match=r"control expert \(.*i2v\).*image-to-video.*which ConFiner does not use "
                                         r"\(its Wan experts are text-to-video: use a WanPipeline folder\)$"):
        load_experts(control=i2v, spatial=modern_dirs("qwen_image"))


def test_qwen_image_is_refused_as_temporal_expert(modern_dirs):
    qwen = modern_dirs("qwen_image")
    with pytest.raises(ValueError, match=rf"temporal expert \({qwen}\).*spatial expert only.*cannot serve as the "
                                         r"temporal expert; accepted: .*Wan"):
        load_experts(control=modern_dirs("wan21"), spatial=qwen, temporal=qwen)


def test_a_transformer_file_alone_is_named_with_the_folder_its_family_is_read_from(modern_dirs, tmp_path):
    """Wan, FLUX.1 and Qwen-Image are read from diffusers folders; their network alone in one file, as ComfyUI's
    diffusion_models folder holds it (the original layout, ComfyUI's own detection marks) or copied out of its
    folder (diffusers' layout), read "no model recognised in this file" (a trial). Other names still do."""
    from safetensors.torch import save_file

    def lone(name: str, keys) -> str:
        path = tmp_path / f"{name}.safetensors"
        save_file({key: torch.zeros(1) for key in keys}, str(path))
        return str(path)

    original = {"Wan 2.1 / 2.2 T2V": ["model.diffusion_model.head.modulation",
                                      "model.diffusion_model.patch_embedding.weight",
                                      "model.diffusion_model.blocks.0.self_attn.q.weight"],
                "FLUX.1 dev / schnell": ["img_in.weight", "double_blocks.0.img_attn.norm.key_norm.scale",
                                         "single_blocks.0.linear1.weight"]}
    cases = {label: lone(label.split()[0], keys) for label, keys in original.items()}
    for kind, label in (("wan21", "Wan 2.1 / 2.2 T2V"), ("flux_dev", "FLUX.1 dev / schnell"),
                        ("qwen_image", "Qwen-Image")):
        copied = tmp_path / f"{kind}_transformer.safetensors"
        copied.write_bytes(next((modern_dirs(kind) / "transformer").glob("*.safetensors")).read_bytes())
        cases[f"{label} (diffusers)"] = str(copied)
    for label, path in cases.items():
        family = label.removesuffix(" (diffusers)")
        with pytest.raises(ValueError, match=rf"^--spatial: this file is a {re.escape(family)} network on its own "
                                             rf"\(as ComfyUI's diffusion_models folder holds it\); the library reads "
                                             rf"{re.escape(family)} from a diffusers .* folder \(.*\): pass that "
                                             rf"folder \(the transformer with its text encoders and VAE\)$"):
            detect(path, "--spatial", "spatial")
    with pytest.raises(ValueError, match=r"no model recognised in this file"):   # (a Wan mark alone is not Wan)
        detect(lone("other", ["patch_embedding.weight", "blocks.0.attn.weight"]), "--spatial", "spatial")


@pytest.mark.parametrize("case,error,match", [
    ("no transformer config", FileNotFoundError, r"control expert \(.*\): .* lacks transformer/config.json, which "
                                                 r"holds the Wan transformer config"),
    ("text width", ValueError, r"control expert \(.*\): its UMT5 text encoder makes 48-wide embeddings .* text_dim "
                               r"is 32; use the text encoder of the same Wan release"),
    ("no boundary", ValueError, r"has transformer_2/ but model_index.json sets no boundary_ratio.*add "
                                r"\"boundary_ratio\": 0.875"),
    ("image-to-video", ValueError, r"image-to-video Wan transformer .*use a Wan T2V folder"),
    ("vae channels", ValueError, r"transformer takes 16-channel latents but its VAE makes 48 .*one Wan release"),
    ("bad shift", ValueError, r"control expert \(.*\): flow shift must be a positive number"),
])
def test_wan_inspection_errors(modern_dirs, tmp_path, case, error, match):
    wan21, a14b = modern_dirs("wan21"), modern_dirs("wan22_a14b")
    options = {}
    if case == "no transformer config":
        folder = copy_folder(wan21, tmp_path / "w", remove=("transformer/config.json",))
    elif case == "text width":
        folder = copy_folder(wan21, tmp_path / "w", {"text_encoder/config.json": {"d_model": 48}})
    elif case == "no boundary":
        folder = copy_folder(a14b, tmp_path / "w", {"model_index.json": {"boundary_ratio": None}})
    elif case == "image-to-video":
        folder = copy_folder(wan21, tmp_path / "w", {"transformer/config.json": {"in_channels": 36}})
    elif case == "vae channels":
        folder = copy_folder(wan21, tmp_path / "w", {"vae/config.json": json.loads(
            (modern_dirs("wan22_ti2v") / "vae" / "config.json").read_text())})
    else:
        folder, options = wan21, {"flow_shift": -1}
    with pytest.raises(error, match=match):
        registry.inspect_all({"control": folder}, Context(options=options))


def test_qwen_inspection_errors(modern_dirs, tmp_path):
    folder = copy_folder(modern_dirs("qwen_image"), tmp_path / "q",
                         {"text_encoder/config.json": {"text_config": {"hidden_size": 64}}})
    with pytest.raises(ValueError, match=r"spatial expert \(.*\): its Qwen2.5-VL text encoder makes 64-wide .* "
                                         r"joint_attention_dim is 32"):
        registry.inspect_all({"spatial": folder}, Context())
    with pytest.raises(ValueError, match="image_mode='frames': choose one of"):
        registry.inspect_all({"spatial": modern_dirs("qwen_image")}, Context(options={"image_mode": "frames"}))
    # a misspelt option name was ignored: the run was made in latent frames, as if it had not been given
    with pytest.raises(ValueError, match=r"^options: 'imagemode' \(did you mean 'image_mode'\?\) is not a family "
                                         r"option; known: flow_shift, image_mode, pair_guidance, vae_tiling$"):
        registry.load_experts(modern_dirs("wan21"), modern_dirs("qwen_image"), modern_dirs("wan21"),
                              options={"imagemode": "pixel_frames"})


def test_inspection_reads_shift_space_and_boundary(modern_dirs):
    found = registry.inspect_all({"control": modern_dirs("wan22_a14b"), "temporal": modern_dirs("wan21"),
                                  "spatial": modern_dirs("qwen_image")}, Context())
    assert found["control"].facts["boundary"] == tm.A14B_BOUNDARY and found["control"].facts["shift"] == tm.A14B_SHIFT
    assert found["temporal"].facts["shift"] == tm.WAN21_SHIFT
    assert abs(found["spatial"].facts["shift"] - 2.0) < 1e-3          # Qwen-Image's dynamic shift at 1024x1024
    assert {ins.latent_space for ins in found.values()} == {WAN21}
    qwen = {"spatial": modern_dirs("qwen_image")}
    pixel = registry.inspect_all(qwen, Context(options={"image_mode": "pixel_frames"}))["spatial"]
    assert pixel.latent_space == WAN21.per_frame()
    assert registry.inspect_all(qwen, Context(options={"flow_shift": {"spatial": 3.1}}))["spatial"].facts["shift"] == 3.1
    ti2v = registry.inspect_all({"temporal": modern_dirs("wan22_ti2v")}, Context())["temporal"]
    assert ti2v.latent_space == wan22_space(tm.WAN22_MEAN, tm.WAN22_STD) and ti2v.facts["expand_timesteps"]


def test_output_fps_is_the_video_experts_own(modern_dirs, tmp_path):
    """The video's frame rate (video.mp4, seconds keys) defaults to the releases': Wan 2.1 and 2.2 A14B make 81
    frames of 5 s (16 fps), TI2V-5B 121 frames of 5 s (24 fps); an image model has none. It was 8 for every
    expert, so a Wan video played at half speed and '1s:' fell at frame 8."""
    from confiner_core.generate import GenerateRequest

    found = registry.inspect_all({"control": modern_dirs("wan22_a14b"), "temporal": modern_dirs("wan22_ti2v"),
                                  "spatial": modern_dirs("flux_dev")}, Context())
    assert (found["control"].fps, found["temporal"].fps, found["spatial"].fps) == (16.0, 24.0, None)
    wan = str(modern_dirs("wan21"))
    request = GenerateRequest(control=wan, spatial=str(modern_dirs("qwen_image")), temporal=wan, frames=33,
                              height=64, width=64, prompt="0: a fox | 1s: a cat", out=str(tmp_path / "o"))
    request.validate()
    assert request.fps == 16.0 and [e.start for e in request.prompt_schedule().entries] == [0, 16]
    given = replace(request, fps=12.0, prompt="0: a fox | 1s: a cat")
    given.validate()
    assert given.fps == 12.0 and [e.start for e in given.prompt_schedule().entries] == [0, 12]


# ---------------------------------------------------------------------------------- families: loading

@pytest.fixture(scope="module")
def loaded(modern_dirs):
    return load_experts(control=modern_dirs("wan22_a14b"), spatial=modern_dirs("qwen_image"),
                        temporal=modern_dirs("wan21"), options={"pair_guidance": (5.0, 2.0)})


def test_loaded_experts(pipes, loaded):
    a14b = pipes("wan22_a14b")
    wan21 = pipes("wan21")
    control, spatial, temporal = loaded["control"], loaded["spatial"], loaded["temporal"]
    # role -> expert as a mapping is (a trial's "'control' in experts" raised KeyError: 0)
    assert list(loaded) == ["control", "spatial", "temporal"] and len(loaded) == 3 and "control" in loaded
    assert "spacial" not in loaded and loaded.get("spacial") is None and dict(loaded.items())["temporal"] is temporal
    assert isinstance(control, ExpertPair) and control.boundary == tm.A14B_BOUNDARY
    assert control.guidance == (5.0, 2.0) and control.high.shift == tm.A14B_SHIFT
    assert [m["shift"] for m in control.describe()["members"]] == [tm.A14B_SHIFT] * 2
    assert isinstance(temporal, W.WanExpert) and temporal.layout == "video"
    assert isinstance(spatial, Q.QwenImageExpert) and spatial.layout == "frames"
    assert spatial.codec is temporal.codec and isinstance(spatial.codec, W.WanVAECodec)   # one space, one VAE
    # loaded from the folders, they compute what the pipelines compute
    x = latent((1, 16, 2, 4, 4))
    theirs = wan_reference_x0(wan21, x, 400, tm.WAN21_SHIFT, 3.0, negative=NEGATIVE)
    assert (temporal.bind(PROMPT, NEGATIVE, 3.0)(x, 400).x0 - theirs).abs().max() < ATOL
    theirs = wan_reference_x0(a14b, x, 950, tm.A14B_SHIFT, 5.0, 2.0, negative=NEGATIVE)
    assert (control.bind(PROMPT, NEGATIVE, 5.0)(x, 950).x0 - theirs).abs().max() < ATOL
    # pair_guidance is the pair's own default (guidance_scale, guidance_scale_2); a scale given to bind() wins for
    # both members: bound at 3, the low-noise member ran at pair_guidance's 2, without a word
    assert control.default_guidance == (5.0, 2.0)
    theirs = wan_reference_x0(a14b, x, 400, tm.A14B_SHIFT, 5.0, 2.0, negative=NEGATIVE)
    assert (control.bind(PROMPT, NEGATIVE, control.default_guidance)(x, 400).x0 - theirs).abs().max() < ATOL
    theirs = wan_reference_x0(a14b, x, 400, tm.A14B_SHIFT, 3.0, 3.0, negative=NEGATIVE)
    assert (control.bind(PROMPT, NEGATIVE, 3.0)(x, 400).x0 - theirs).abs().max() < ATOL
    with pytest.raises(TypeError, match=r"guidance_scale must be a number, or \(high, low\) for an expert pair"):
        control.bind(PROMPT, NEGATIVE, (5.0, 2.0, 1.0))
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        control.bind(PROMPT, NEGATIVE, (5.0, float("nan")))
    with pytest.raises(TypeError, match=r"guidance_scale must be a number \(1 = no cfg\)"):   # one member alone
        temporal.bind(PROMPT, NEGATIVE, (5.0, 2.0))
    pixels = loaded.decode(latent((1, 16, 3, 4, 4)))
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 9, 32, 32, 3)


def test_pair_guidance_that_the_control_stage_does_not_use_is_said(loaded):
    """A trial's pair_guidance (4, 3) reached the refiners, while the A14B control expert ran both its members at
    bind_chain's control_cfg 1, without a word."""
    from confiner_core.errors import ConFinerWarning

    with pytest.warns(ConFinerWarning, match=r"^the control expert's pair_guidance \(5.0, 2.0\) is not used: the "
                                             r"control stage runs at control_cfg 1.0 \(by default 1, "):
        bound = bind_chain(loaded, PROMPT)
    assert bound["control"].guidance_scale == 1.0 and bound["temporal"].guidance_scale == 5.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bind_chain(loaded, PROMPT, control_cfg=(5.0, 2.0))["control"].guidance_scale == (5.0, 2.0)


def test_pixel_frames_mode(modern_dirs):
    experts = load_experts(control=modern_dirs("wan21"), spatial=modern_dirs("wan21"), temporal=modern_dirs("wan21"),
                           options={"image_mode": "pixel_frames"})
    spatial, temporal = experts["spatial"], experts["temporal"]
    assert isinstance(spatial, W.WanImageExpert) and spatial.latent_space == WAN21.per_frame()
    assert isinstance(spatial.codec, PerFrameCodec) and spatial.codec.space == WAN21.per_frame()
    assert temporal.codec.space is WAN21 and temporal.latent_space is WAN21
    assert spatial.transformer is temporal.transformer           # one folder, loaded once


@pytest.mark.parametrize("spatial_kind", ["qwen_image", "wan21"])
def test_chain_runs_with_tiny_modern_experts(loaded, modern_dirs, spatial_kind):
    """Wan 2.2 A14B control + Wan 2.1 temporal + Qwen-Image (or Wan at one frame) spatial, one latent space."""
    experts = loaded if spatial_kind == "qwen_image" else load_experts(
        control=modern_dirs("wan22_a14b"), spatial=modern_dirs("wan21"), temporal=modern_dirs("wan21"))
    log = EvaluationLog()
    control = experts["control"].bind(PROMPT, NEGATIVE, 4.0, log)
    spatial = experts["spatial"].bind(PROMPT, NEGATIVE, 4.0, log)
    temporal = experts["temporal"].bind(PROMPT, log=log)
    WAN21.check_pixel_frames(9)
    noise = latent(WAN21.latent_shape(1, 9, 32, 48), seed=5)
    config = ChainConfig(control_steps=2, refine_steps=2, te=100)
    result = run_chain(control, spatial, temporal, noise, config, torch.Generator().manual_seed(0))
    assert result.latent.shape == (1, 16, 3, 4, 6) and torch.isfinite(result.latent).all()
    assert torch.isfinite(result.structure).all() and not torch.equal(result.latent, result.structure)
    assert log.as_dict()["evaluations"] == {"control": 2, "refine": 6}
    if spatial_kind == "qwen_image":
        frames = experts.decode(result.latent)
        assert frames.shape == (1, 9, 32, 48, 3)


# ------------------------------------------------------------------------------------------------ FLUX.1

def test_flux_encoding_equals_flux_pipeline(pipes):
    flux = pipes("flux_dev")
    encoder = F.FluxPromptEncoder(flux.tokenizer, flux.text_encoder, flux.tokenizer_2, flux.text_encoder_2)
    prompts = [PROMPT, "", "a dog"]
    ours = encoder.encode_all(prompts)                      # one batch through each encoder
    for prompt, text in zip(prompts, ours):
        with torch.no_grad():
            embeds, pooled, _ = flux.encode_prompt(prompt, prompt_2=None, max_sequence_length=512)
        torch.testing.assert_close(text.embeds, embeds, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(text.pooled, pooled, rtol=1e-5, atol=1e-6)


def flux_reference_x0(pipe, frames, sigma, guidance=3.5, true_cfg=1.0, negative=None):
    """x0 of one FluxPipeline step per latent frame ``[N, 16, h, w]`` at flow sigma ``sigma``, packed and unpacked
    by the pipeline's own static methods."""
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)          # our sigma passes unchanged
    _, c, h, w = frames.shape
    out = []
    for frame in frames:
        packed = FluxPipeline._pack_latents(frame[None], 1, c, h, w)
        x0 = pipe(PROMPT, negative_prompt=negative, guidance_scale=guidance, true_cfg_scale=true_cfg,
                  height=h * 8, width=w * 8, sigmas=[sigma], num_inference_steps=1, latents=packed,
                  output_type="latent").images
        out.append(FluxPipeline._unpack_latents(x0, h * 8, w * 8, 8))
    return torch.cat(out)


@pytest.mark.parametrize("kind,scale", [("flux_dev", 1.0), ("flux_dev", 3.5), ("flux_schnell", 1.0),
                                        ("flux_schnell", 4.0)])
def test_flux_expert_equals_flux_pipeline(pipes, kind, scale):
    """dev: the bound scale is the network's guidance input, one forward (the pipeline's ``guidance_scale``);
    schnell: no guidance input, a scale is classifier-free guidance (the pipeline's ``true_cfg_scale``)."""
    flux = pipes(kind)
    encoder = F.FluxPromptEncoder(flux.tokenizer, flux.text_encoder, flux.tokenizer_2, flux.text_encoder_2)
    expert = F.FluxExpert(flux.transformer, encoder, shift=3.0)
    assert expert.latent_space is FLUX and expert.distilled_guidance == (kind == "flux_dev")
    x = latent((1, 16, 2, 4, 6))
    t = 400
    log = EvaluationLog()
    ours = expert.bind(PROMPT, NEGATIVE, scale, log)(x, t).x0
    if kind == "flux_dev":
        theirs = flux_reference_x0(flux, x[0].permute(1, 0, 2, 3), expert.sigma(t), guidance=scale)
        assert log.forwards["unstaged"] == 1                                  # no negative pass at any scale
    else:
        negative = NEGATIVE if scale > 1 else None
        theirs = flux_reference_x0(flux, x[0].permute(1, 0, 2, 3), expert.sigma(t), true_cfg=scale,
                                   negative=negative)
    assert (ours - theirs.permute(1, 0, 2, 3)[None]).abs().max() < ATOL
    if kind == "flux_dev":      # the guidance reaches the network
        other = expert.bind(PROMPT, NEGATIVE, scale + 2.0)(x, t).x0
        assert (other - ours).abs().max() > 1e-4


def test_flux_shift_is_the_pipelines_at_1024(modern_dirs):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    found = registry.inspect_all({"spatial": modern_dirs("flux_dev")}, Context())["spatial"]
    scheduler = tm.flux_scheduler()
    seq = (1024 // 16) ** 2                              # packed tokens of a 1024x1024 image
    scheduler.set_timesteps(sigmas=[0.3], mu=calculate_shift(seq, 256, 4096, 0.5, 1.15))
    s = found.facts["shift"]
    assert abs(float(scheduler.sigmas[0]) - s * 0.3 / (1 + (s - 1) * 0.3)) < 1e-6
    assert found.latent_space is FLUX and found.has_vae
    schnell = registry.inspect_all({"spatial": modern_dirs("flux_schnell")}, Context())["spatial"]
    assert schnell.facts["shift"] == 1.0


@pytest.mark.parametrize("case,match", [
    ("fill", r"spatial expert \(.*\).*Flux Fill / Control / Kontext / FLUX.2 folder, which ConFiner does not "
             r"use \(use a FLUX.1-dev or schnell FluxPipeline folder as the spatial expert\)$"),
    ("t5 width", r"spatial expert \(.*\): its T5-XXL text encoder is 48 wide but the transformer's "
                 r"joint_attention_dim is 32"),
    ("vae channels", r"its VAE makes 4-channel latents .* FLUX.1 takes 16"),
    ("temporal", r"temporal expert \(.*\).*spatial expert only.*cannot serve as the temporal expert"),
])
def test_flux_inspection_errors(modern_dirs, tmp_path, case, match):
    dev = modern_dirs("flux_dev")
    roles = {"control": modern_dirs("wan21"), "spatial": dev}
    if case == "fill":
        roles["spatial"] = copy_folder(dev, tmp_path / "f", {"model_index.json": {"_class_name": "FluxFillPipeline"}})
    elif case == "t5 width":
        roles["spatial"] = copy_folder(dev, tmp_path / "f", {"text_encoder_2/config.json": {"d_model": 48}})
    elif case == "vae channels":
        roles["spatial"] = copy_folder(dev, tmp_path / "f", {"vae/config.json": {"latent_channels": 4}})
    else:
        roles["temporal"] = dev
    with pytest.raises(ValueError, match=match):
        load_experts(**roles)


def test_chain_bridges_flux_to_wan_through_the_vaes(modern_dirs):
    """Wan 2.1 control and temporal experts with a FLUX.1-dev spatial expert: two latent spaces, each with its VAE;
    every coordinated step crosses between them (decode + encode each way)."""
    experts = load_experts(control=modern_dirs("wan21"), spatial=modern_dirs("flux_dev"),
                           temporal=modern_dirs("wan21"))
    spatial, temporal = experts["spatial"], experts["temporal"]
    assert isinstance(spatial, F.FluxExpert) and spatial.latent_space is FLUX and temporal.latent_space is WAN21
    assert spatial.codec is not temporal.codec and spatial.codec.space is FLUX

    def run(guidance: float):
        log = EvaluationLog()
        bound = {"control": experts["control"].bind(PROMPT, log=log),
                 "spatial": experts["spatial"].bind(PROMPT, NEGATIVE, guidance, log),
                 "temporal": experts["temporal"].bind(PROMPT, log=log)}
        noise = latent(WAN21.latent_shape(1, 5, 32, 32), seed=5)
        result = run_chain(bound["control"], bound["spatial"], bound["temporal"], noise,
                           ChainConfig(control_steps=2, refine_steps=2, te=250), torch.Generator().manual_seed(0))
        return result, log

    result, log = run(3.5)
    assert result.latent.shape == (1, 16, 5, 4, 4) and torch.isfinite(result.latent).all()
    counts = log.as_dict()
    assert counts["evaluations"] == {"control": 2, "refine": 6}
    assert counts["forwards"]["refine"] == 6                   # FLUX.1-dev: one forward per evaluation
    assert counts["vae_calls"]["refine"] > 0
    frames = experts.decode(result.latent)
    assert frames.shape == (1, 5, 32, 32, 3) and frames.dtype == torch.uint8
    assert not torch.equal(run(1.0)[0].latent, result.latent)  # the guidance reaches the refinement


def test_a_size_or_structure_the_flux_expert_cannot_take_is_refused_before_any_evaluation(modern_dirs, tmp_path):
    """A trial: a Flux spatial expert (2x2 latent patches) beside an AnimateDiff control expert at 72x72 pixels was
    refused only after the whole control stage and its VAE calls; and a Wan structure handed to refine_structure
    without source= (Flux's and Wan's latents both have 16 channels) was refused as a frame count, naming nothing of
    source=."""
    import tiny_diffusers as T

    from confiner_core.chain import refine_structure
    from confiner_core.latent_spaces import SD15

    experts = load_experts(control=T.save_animatediff(tmp_path / "ad", T.tiny_motion_adapter()),
                           spatial=modern_dirs("flux_dev"), temporal=modern_dirs("wan21"))
    log = EvaluationLog()
    control, spatial, temporal = (experts[role].bind(PROMPT, log=log) for role in ("control", "spatial", "temporal"))
    with pytest.raises(ValueError, match=r"spatial expert \(.*\): Flux packs 2x2 latent patches, so the latent height "
                                         r"and width must be even \(pixel multiples of 16\), got 9x9"):
        run_chain(control, spatial, temporal, latent(SD15.latent_shape(1, 9, 72, 72)),
                  ChainConfig(control_steps=2, refine_steps=2, te=250), torch.Generator().manual_seed(0))
    assert log.as_dict()["total_evaluations"] == 0 and sum(log.as_dict()["vae_calls"].values()) == 0
    structure = latent(WAN21.latent_shape(1, 9, 32, 32))   # 3 latent frames of Wan: read as 3 Flux frames
    with pytest.raises(ValueError, match=r"3 frames would be cut by its VAE: use 1 or 5; a structure another expert "
                                         r"made \(the control expert's\) is handed over by passing that expert as "
                                         r"source= to refine_structure$"):
        refine_structure(spatial, temporal, structure, ChainConfig(refine_steps=2, te=250), 1)


def test_regional_compile_takes_the_flux_blocks():
    """The ``fast`` preset compiles FLUX.1's double- and single-stream blocks one by one (as Wan's and Qwen-Image's)."""
    from confiner_core.diffusers_backend import speed as S

    transformer = tm.flux_transformer()
    done = S.apply_speed_settings([transformer], S.FAST)
    blocks = len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
    assert done["compiled"] == blocks == 2 and done["fused_qkv"] == 1


@pytest.mark.parametrize("kind", ["flux_dev", "qwen_image"])
def test_packed_image_experts_name_an_odd_latent_size(pipes, kind):
    pipe = pipes(kind)
    if kind == "flux_dev":
        expert = F.FluxExpert(pipe.transformer, F.FluxPromptEncoder(pipe.tokenizer, pipe.text_encoder,
                                                                     pipe.tokenizer_2, pipe.text_encoder_2), 3.0)
    else:
        expert = Q.QwenImageExpert(pipe.transformer, Q.QwenPromptEncoder(pipe.tokenizer, pipe.text_encoder), 2.0)
    with pytest.raises(ValueError, match=r"packs 2x2 latent patches.*pixel multiples of 16\), got 3x4"):
        expert.bind(PROMPT)(latent((1, 16, 1, 3, 4)), 500)


@pytest.mark.parametrize("spatial", ["flux_dev", "qwen_image", "wan21"])
def test_a_size_the_transformers_cannot_patch_is_refused_before_loading(modern_dirs, tmp_path, spatial):
    """Wan, Qwen-Image and FLUX.1 take 2x2 latent patches: at 8x VAEs sizes must be multiples of 16, which the
    request checks from the configs (72 used to reach the first evaluation and fail there with a traceback)."""
    from confiner_core.errors import UsageError
    from confiner_core.generate import GenerateRequest

    wan = str(modern_dirs("wan21"))
    request = GenerateRequest(control=wan, spatial=str(modern_dirs(spatial)), temporal=wan, frames=9, height=72,
                              width=64, out=str(tmp_path / "o"))
    with pytest.raises(UsageError, match=r"height must be a multiple of 16 \(the experts' latent factor and patch\)"):
        request.validate()
    registry_patch = registry.inspect_all({"spatial": modern_dirs(spatial)}, Context())["spatial"]
    assert registry_patch.pixel_multiple == 16


def test_the_report_records_the_temporal_experts_matched_timesteps_and_the_environment(modern_dirs, tmp_path):
    """SD 1.5 refining beside a Wan temporal expert: matching auto chose nearest, but the report held only the SD
    timesteps, so what the matching changed appeared nowhere; nor did the versions and threads a video's last bits
    depend on. The reference is diffusers' own tables: SD's DDIM alphas_cumprod and FlowMatchEuler's shifted sigmas
    at Wan's flow_shift, the Wan entry of the nearest noise-to-signal ratio (its network timestep N sigma)."""
    import json

    import diffusers
    import numpy as np
    import tiny_diffusers as T

    from confiner_core.generate import GenerateRequest, generate

    wan, sd = str(modern_dirs("wan21")), T.save_sd(tmp_path / "sd")
    request = GenerateRequest(control=wan, spatial=str(sd), temporal=wan, frames=5, height=64, width=64,
                              prompt="a red fox", out=str(tmp_path / "o"))
    generate(request, show_progress=False)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["chain"]["matching"] == "nearest"
    abar = T.sd_scheduler().alphas_cumprod.double().numpy()
    sigmas = diffusers.FlowMatchEulerDiscreteScheduler(shift=tm.WAN21_SHIFT).sigmas.double().numpy()[::-1]
    wan_ratio = sigmas / (1 - sigmas)
    expected = [1000 * sigmas[np.abs(wan_ratio - np.sqrt((1 - abar[t]) / abar[t])).argmin()]
                for t in report["refine_timesteps"]]
    assert report["temporal_timesteps"] == pytest.approx(expected, abs=1e-3)
    assert report["environment"]["torch"] == torch.__version__
    assert report["environment"]["diffusers"] == diffusers.__version__
    assert report["environment"]["cpu_threads"] == torch.get_num_threads()
    assert report["settings"]["speed"] == report["speed_used"] == "eager"


def test_a_request_settles_on_the_schedules_its_experts_will_have(modern_dirs, tmp_path):
    """A trial: a Wan folder without scheduler/ next to an SD spatial expert was settled on the SD folder's table
    (same_index matching, and the warning for a same_index asked for), and a Wan spatial folder shipping a DDIM
    config settled T_e 100; run_chain, on the loaded experts, settles nearest and 250. The Wan expert runs the
    reference code's shift 5 there, as diffusers' FlowMatchEuler table at shift 5."""
    import diffusers
    import tiny_diffusers as T

    from confiner_core.generate import GenerateRequest

    wan, sd = modern_dirs("wan21"), str(T.save_sd(tmp_path / "sd"))
    bare = copy_folder(wan, tmp_path / "wan_bare", remove=("scheduler",))
    request = GenerateRequest(control=str(wan), spatial=sd, temporal=str(bare), frames=5, height=64, width=64,
                              out=str(tmp_path / "o"))
    request.validate()
    assert request.chain.matching == "nearest"
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0).sigmas.double().flip(0)
    assert torch.allclose(request._inspections["temporal"].schedule.sigmas, theirs, atol=1e-6)
    ddim = copy_folder(wan, tmp_path / "wan_ddim", remove=("scheduler",))
    (ddim / "scheduler").mkdir()
    (ddim / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}))
    request = GenerateRequest(control=str(wan), spatial=str(ddim), temporal=str(wan), frames=5, height=64, width=64,
                              out=str(tmp_path / "o2"))
    request.validate()
    assert request.chain.te == 250


def test_scheduler_overrides_that_would_change_nothing_are_refused(modern_dirs):
    """scheduler_overrides changes a diffusers scheduler config: for a Wan expert (a shift, not a config) or a
    misspelt role it was ignored without a word, where a misspelt option is refused."""
    wan = modern_dirs("wan21")
    with pytest.raises(ValueError, match=r"scheduler_overrides\['control'\]: the control expert \(.*\) is a Wan "
                                         r".* flow model, whose schedule is its shift.*options=\{'flow_shift'"):
        load_experts(wan, wan, wan, scheduler_overrides={"control": {"flow_shift": 7.0}})
    with pytest.raises(ValueError, match=r"scheduler_overrides: 'contrl' is not a role \(did you mean 'control'\?\)"):
        load_experts(wan, wan, wan, scheduler_overrides={"contrl": {"beta_end": 0.02}})
    with pytest.raises(ValueError, match=r"scheduler_overrides\['temporal'\]: this call loads no temporal expert"):
        load_experts(wan, wan, scheduler_overrides={"temporal": {"beta_end": 0.02}})


def test_family_options_that_would_change_nothing_are_refused(modern_dirs):
    """A trial's options={"flow_shift": {"spatail": 7}} loaded with every default shift, and pair_guidance for experts
    that are no A14B pair changed nothing, both without a word (a misspelt option name was refused already)."""
    wan, flux = modern_dirs("wan21"), modern_dirs("flux_dev")
    with pytest.raises(ValueError, match=r"^options: flow_shift: 'spatail' is not a role \(did you "
                                         r"mean 'spatial'\?\); the roles are control, spatial, temporal$"):
        load_experts(wan, wan, wan, options={"flow_shift": {"spatail": 7.0}})
    with pytest.raises(ValueError, match=r"^options: image_mode\['temporal'\]: this call loads no temporal expert"):
        load_experts(wan, wan, options={"image_mode": {"temporal": "pixel_frames"}})
    with pytest.raises(ValueError, match=r"^options: pair_guidance applies to Wan 2.2 A14B expert pairs, and no "
                                         r"expert of this call is one: drop it$"):
        load_experts(wan, flux, wan, options={"pair_guidance": (4.0, 3.0)})
    with pytest.raises(ValueError, match=r"^options: vae_tiling\['spatial'\] applies to experts with Wan's VAE "
                                         r"\(Wan, Qwen-Image\); the spatial expert .* is a FLUX.1 .*model: drop it$"):
        load_experts(wan, flux, wan, options={"vae_tiling": {"spatial": True}})
    # given once, an option reaches the experts that read it (the Wan VAE's tiling; Flux's VAE has none)
    loaded = load_experts(wan, flux, wan, options={"vae_tiling": True, "flow_shift": {"spatial": 2.0}})
    assert loaded["spatial"].schedule.flow_shift == pytest.approx(2.0) and loaded["control"].schedule.flow_shift == 3.0


def test_the_report_names_each_a14b_member_and_counts_its_evaluations(modern_dirs, tmp_path):
    """The report listed an A14B pair's two transformers identically (same name, class and source), with no count
    of which ran where: now each member is named and counted. The refinement from T_e 250 (sigma 0.25) lies below
    the boundary (0.875): only the low-noise member refines; the control stage from sigma 1 crosses it."""
    import json

    from confiner_core.generate import GenerateRequest, generate

    a14b = str(modern_dirs("wan22_a14b"))
    generate(GenerateRequest(control=a14b, spatial=str(modern_dirs("wan21")), temporal=a14b, frames=5, height=64,
                             width=64, prompt="a red fox", out=str(tmp_path / "o")), show_progress=False)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    control, temporal = (report["experts"][role]["members"] for role in ("control", "temporal"))
    assert [m["member"] for m in control] == ["high-noise", "low-noise"]
    assert [m["evaluations"] for m in temporal] == [0, report["expert_evaluations"]["refine"] // 3]
    assert sum(m["evaluations"] for m in control) == report["expert_evaluations"]["control"] == 4
    assert all(m["evaluations"] > 0 for m in control)


@pytest.mark.parametrize("given,scales", [({}, {"spatial": 3.5, "temporal": 5.0}),
                                          ({"refine_cfg": 2.0}, {"spatial": 2.0, "temporal": 2.0}),
                                          ({"refine_cfg": 2.0, "temporal_cfg": 6.0}, {"spatial": 2.0, "temporal": 6.0}),
                                          ({"spatial_cfg": 4.0}, {"spatial": 4.0, "temporal": 5.0})])
def test_refinement_guidance_defaults_to_each_experts_own(modern_dirs, tmp_path, given, scales):
    """Without ``--cfg`` each refining expert takes its own pipeline's default: FluxPipeline's guidance_scale 3.5
    reaches FLUX.1-dev's guidance input, WanPipeline's 5 guides the Wan expert (both used to get SD 1.5's 7.5);
    ``--cfg`` sets both, ``--spatial-cfg`` / ``--temporal-cfg`` one over it."""
    from confiner_core import generate as G

    wan = str(modern_dirs("wan21"))
    request = G.GenerateRequest(control=wan, spatial=str(modern_dirs("flux_dev")), temporal=wan, frames=5,
                                height=32, width=32, out=str(tmp_path / "o"), **given)
    backend = G.load_backend(request)
    assert G.refine_guidance(backend, request) == scales
    bound = G.bind_experts(backend, request, EvaluationLog(), PROMPT)
    assert bound["temporal"].guidance_scale == scales["temporal"]
    seen = []
    backend.experts["spatial"].transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["guidance"].tolist()), with_kwargs=True)
    bound["spatial"](latent((1, 16, 1, 4, 4)), 500)
    assert seen == [[scales["spatial"]]]


def test_a_run_warns_of_an_empty_prompt_and_a_negative_prompt_nothing_reads(modern_dirs, tmp_path, recwarn):
    """With real experts an empty prompt samples unconditionally, and a negative prompt is read only under
    classifier-free guidance: FLUX.1-dev's guidance is an input and the Wan expert here is at cfg 1. Both used to
    pass without a word (the video was byte-identical to the run without the negative)."""
    from confiner_core.cli import main

    wan = str(modern_dirs("wan21"))
    args = ["generate", "--control", wan, "--spatial", str(modern_dirs("flux_dev")), "--temporal", wan,
            "--frames", "5", "--height", "64", "--width", "64", "--control-steps", "1", "--refine-steps", "1",
            "--quiet", "--out"]
    def warned() -> list[str]:   # (but the one control step at cfg 1, which is told too)
        said = [str(w.message) for w in recwarn if w.category is ConFinerWarning
                and "step-distilled model's settings" not in str(w.message)]
        recwarn.clear()
        return said

    assert main([*args, str(tmp_path / "a"), "--negative-prompt", "blurry", "--temporal-cfg", "1"]) == 0
    said = warned()
    assert len(said) == 2 and said[0].startswith("no --prompt: the experts are conditioned on the empty prompt")
    assert said[1].startswith("--negative-prompt changes nothing here")
    assert main([*args, str(tmp_path / "b"), "--negative-prompt", "blurry", "--prompt", "a cat"]) == 0
    assert warned() == []   # Wan at its cfg 5 reads the negative


def test_command_line_refines_pixel_frames(modern_dirs, tmp_path):
    """``--image-mode pixel_frames`` (README: "Use pixel frames" for an image expert) reached only the library's
    ``options`` before: the command line and ``GenerateRequest`` now choose it. The spatial Qwen-Image expert then
    works in the per-frame space, and each coordinated step's two hand-offs cross the bridge (README: 22 VAE calls for
    4+5 steps); an image expert of its own latent space, or the embedded experts, refuse it before loading."""
    import json

    from confiner_core.cli import main
    from confiner_core.errors import UsageError
    from confiner_core.generate import GenerateRequest

    wan, qwen = str(modern_dirs("wan21")), str(modern_dirs("qwen_image"))
    args = ["generate", "--control", wan, "--spatial", qwen, "--temporal", wan, "--frames", "5", "--height", "64",
            "--width", "64", "--quiet", "--out"]
    reports = {}
    for mode in ("latent_frames", "pixel_frames"):
        assert main([*args, str(tmp_path / mode), "--image-mode", mode]) == 0
        reports[mode] = json.loads((tmp_path / mode / "report.json").read_text())
    assert reports["latent_frames"]["vae_calls"] == {}
    assert reports["pixel_frames"]["vae_calls"] == {"refine": 22}
    assert reports["pixel_frames"]["experts"]["spatial"]["latent_space"] == "wan2.1/frames"
    assert reports["pixel_frames"]["settings"]["image_mode"] == "pixel_frames"
    assert "embedded_preset" not in reports["pixel_frames"]["settings"]   # read by embedded runs alone
    with pytest.raises(UsageError, match=r"^image_mode pixel_frames applies to a Wan or Qwen-Image spatial expert, "
                                         r".* the spatial expert .*flux_dev is not one .*: leave image_mode at "
                                         r"'latent_frames'$"):
        GenerateRequest(control=wan, spatial=str(modern_dirs("flux_dev")), temporal=wan, frames=5, height=64,
                        width=64, image_mode="pixel_frames", out=str(tmp_path / "flux")).validate()
    with pytest.raises(UsageError, match=r"^image_mode must be 'latent_frames' or 'pixel_frames', got 'pixel'$"):
        GenerateRequest(image_mode="pixel").validate()
    with pytest.raises(UsageError, match=r"embedded experts refine pixel frames with embedded_preset wan-pixel"):
        GenerateRequest(image_mode="pixel_frames", out=str(tmp_path / "e")).validate()


def test_qwen_image_between_sd_video_experts_is_pointed_to_pixel_frames(modern_dirs, tmp_path):
    """Qwen-Image as the spatial expert beside AnimateDiff and ModelScope: on latent frames (the default) it refined
    Wan latents packing 4 of their frames each, and a frame count its VAE cannot hold was refused with no word of
    pixel frames, the mode that takes every frame alone and has no 4k+1 limit."""
    import tiny_diffusers as T

    from confiner_core.errors import UsageError
    from confiner_core.generate import GenerateRequest

    ad, t2v = T.save_animatediff(tmp_path / "ad"), T.save_t2v(tmp_path / "t2v")
    request = dict(control=str(ad), spatial=str(modern_dirs("qwen_image")), temporal=str(t2v), height=64, width=64,
                   prompt="a red fox runs", out=str(tmp_path / "out"))
    with pytest.raises(UsageError, match=r"^frames: the spatial expert's Wan 2.1 latent space holds 4k\+1 frames .* "
                                         r"use 5 or 9, or image_mode pixel_frames: the spatial expert then refines "
                                         r"every frame as an image of its own"):
        GenerateRequest(frames=8, **request).validate()
    with pytest.warns(ConFinerWarning, match=r"the spatial expert refines Wan 2.1 latents \(image_mode "
                                             r"latent_frames, the default\), whose latent frames after the first "
                                             r"pack 4 of the video experts' frames each"):
        GenerateRequest(frames=9, **request).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GenerateRequest(frames=8, image_mode="pixel_frames", **request).validate()


def test_two_experts_given_the_other_way_round_are_told_to_swap(modern_dirs):
    """An image model as the temporal expert beside a video model as the spatial one was refused with the seven kinds
    the role accepts; the fix is to swap the two paths, which the refusal now says (no model loads)."""
    wan, qwen = modern_dirs("wan21"), modern_dirs("qwen_image")
    with pytest.raises(ValueError, match=r"^temporal expert \(.*qwen_image\) is a diffusers Qwen-Image .*, a spatial "
                                         r"expert, and the spatial expert \(.*wan21\) would serve as the temporal "
                                         r"expert: swap the temporal and spatial experts' paths$") as e:
        registry.preflight(control=wan, spatial=wan, temporal=qwen)
    assert e.value.role == "temporal"
    # no swap makes these fit: the families the role takes, by name (each family's kinds filled half a screen)
    with pytest.raises(ValueError, match=r"cannot serve as the temporal expert; accepted: AnimateDiff \(pipeline, "
                                         r"MotionAdapter or motion module\), ModelScope T2V, Wan 2.1 / 2.2 T2V "
                                         r"\(README, 'Real checkpoints', lists each kind\)$"):
        registry.preflight(control=wan, spatial=qwen, temporal=qwen)
