"""ConFiner with Wan experts at Wan scale, against Wan 2.1 at 50 steps and Wan 2.2 A14B at 40 steps, on one GPU.

Full-size random-weight models in bf16 (weights do not change compute), built on the GPU from their released
configs: Wan 2.1 T2V 1.3B (30 layers, 12 heads x 128, FFN 8960), Wan 2.1 14B / each Wan 2.2 A14B expert (40 layers,
40 heads x 128, FFN 13824), UMT5-XXL (24 layers, 4096 wide, 64 heads, FFN 10240, 256384-token vocabulary; the
prompt padded to 512 tokens as WanPipeline does), the Wan 2.1 VAE, and for the bridge SD 1.5 (UNet, CLIP-L, VAE).
Every expert is the repo's own (``confiner_core.diffusers_backend.families.wan``: ``WanExpert``, ``WanImageExpert``,
``UMT5PromptEncoder``, ``WanVAECodec``, ``wan_pair``), driven by the core chain, samplers and ConFiner-Long.

At 480x832, 81 frames (21 latent frames, 32,760 tokens), end to end (text encoding, sampling, VAE decode to uint8
frames on the host):

* **ConFiner (Wan 1.3B)**: Wan control 4 steps (Euler, trailing) cfg 1, T_e = 100, 5 coordinated steps with Wan at
  one frame as the spatial (image) expert and Wan as the temporal expert, both cfg 5, in one latent space;
* **Wan 2.1 1.3B, 50 steps** with cfg 5 (flow Euler, FlowMatchEuler timesteps);
* **Wan 2.2 A14B, 40 steps** with cfg (two 14B transformers switched at the boundary 0.875, shift 12): its
  per-step time for each expert is measured and the 40-step run extrapolated (text + steps + decode) unless
  ``--a14b-full`` runs it (~4.5 min);
* **ConFiner with Wan 14B experts**, extrapolated from measured 14B forwards (video at batch 1 and 2, one-frame
  batch 42);
* **the bridge**: SD 1.5 spatial expert bridged to the Wan temporal expert (VAE decode + encode at every hand-off);
* **step caching** (``--step-cache``): the ConFiner run with First-Block-Cache on the refinement experts, its
  time, skipped forwards and output difference from the uncached run (same seed);
* **ConFiner-Long** (``--long 81 321 641``): segments of 81 frames, time and peak memory per length.

Attention: one Wan 1.3B forward is timed under every SDPA backend (and flash-attn-4 where installed) and the
fastest is used for every run, ConFiner and baselines alike (``--attention`` to force one). ``--profile`` adds a
torch.profiler pass over one ConFiner run. ``--deadline`` skips what no longer fits and results are written after
every run.

    python bench/wan_benchmark.py --out $OUT                                              # on the GPU machine
    python bench/wan_benchmark.py --tiny --device cpu --long 9 17 --step-cache 0.05 --out /tmp/wan
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gpu_benchmark as G  # noqa: E402  (timing, FLOP counting, the SD 1.5 configs; imports torch and the repo)
import profiling as P  # noqa: E402

import torch  # noqa: E402
from diffusers import (AutoencoderKL, AutoencoderKLWan, FluxTransformer2DModel, UNet2DConditionModel,  # noqa: E402
                       WanTransformer3DModel)
from torch.profiler import record_function  # noqa: E402
from transformers import (CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, UMT5Config,  # noqa: E402
                          UMT5EncoderModel)

import tiny_modern as tm  # noqa: E402  (the in-code UMT5 tokenizer: ids only matter for shape)
from confiner_core.chain import ChainConfig, run_chain  # noqa: E402
from confiner_core.diffusers_backend import flash4_attention as F4  # noqa: E402
from confiner_core.diffusers_backend import speed as S  # noqa: E402
from confiner_core.diffusers_backend.experts import FrameExpert  # noqa: E402
from confiner_core.diffusers_backend.families import flux as FX  # noqa: E402
from confiner_core.diffusers_backend.families import wan as W  # noqa: E402
from confiner_core.diffusers_backend.step_cache import attach_step_cache  # noqa: E402
from confiner_core.diffusers_backend.text import PromptEncoder  # noqa: E402
from confiner_core.diffusers_backend.vae import AutoencoderKLCodec  # noqa: E402
from confiner_core.experts import EvaluationLog, hand_off  # noqa: E402
from confiner_core.latent_spaces import FLUX, SD15, WAN21, to_uint8  # noqa: E402
from confiner_core.long import LongConfig, generate_long, plan_segments  # noqa: E402
from confiner_core.outputs import write_atomic  # noqa: E402
from confiner_core.sampling import control_timesteps as sampler_timesteps, sample_control  # noqa: E402

PROMPT = "a corgi running on a sunny beach, waves, golden hour, cinematic camera"
NEGATIVE = "blurry, low quality, static"
CFG, SD_CFG, FLUX_GUIDANCE = 5.0, 7.5, 3.5   # FLUX_GUIDANCE: FluxPipeline's default guidance_scale (FLUX.1-dev)
SHIFT_13B, SHIFT_A14B, BOUNDARY_A14B, GUIDANCE_A14B = 3.0, 12.0, 0.875, (4.0, 3.0)

WAN_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
               text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN_14B = dict(WAN_13B, num_attention_heads=40, ffn_dim=13824, num_layers=40)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                dropout_rate=0.0)
WAN_VAE = dict()  # AutoencoderKLWan's defaults are the Wan 2.1 VAE
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))   # black-forest-labs/FLUX.1-dev transformer/config.json
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              dropout_rate=0.0)                # FLUX.1-dev text_encoder_2/config.json (T5 v1.1 XXL)
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=FLUX.scale,
                shift_factor=FLUX.shift, use_quant_conv=False, use_post_quant_conv=False)
FULL = dict(wan13=WAN_13B, wan14=WAN_14B, umt5=UMT5_XXL, wan_vae=WAN_VAE, sd=G.SD_UNET, sd_vae=G.VAE, clip_l=G.CLIP_L,
            flux=FLUX_DEV, t5=T5_XXL, flux_vae=FLUX_VAE, height=480, width=832, frames=81)
TINY = dict(wan13=dict(WAN_13B, num_attention_heads=2, attention_head_dim=12, text_dim=32, ffn_dim=32, num_layers=2,
                       rope_max_seq_len=32),
            wan14=dict(WAN_13B, num_attention_heads=2, attention_head_dim=16, text_dim=32, ffn_dim=48, num_layers=3,
                       rope_max_seq_len=32),
            umt5=dict(UMT5_XXL, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                      relative_attention_max_distance=16),
            wan_vae=dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                         temperal_downsample=[False, True, True]),
            sd=G.TINY["sd"], sd_vae=G.TINY["vae"], clip_l=G.TINY["clip_l"],
            flux=dict(FLUX_DEV, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                      joint_attention_dim=32, pooled_projection_dim=G.TINY["clip_l"]["hidden_size"],
                      axes_dims_rope=(4, 6, 6)),
            t5=dict(T5_XXL, vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16),
            flux_vae=dict(FLUX_VAE, block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=16),
            height=64, width=96, frames=9)

# Expected seconds on the H200 (issue 14 section 7 anchors: 1.3B forward 0.605 s, batch 2 1.215 s; 14B 3.2 s; VAE
# decode of 81 frames 1.83 s), used only to skip what cannot end before --deadline.
PRIOR_S = {"confiner": 17.0, "wan_50": 64.0, "a14b_probe": 60.0, "a14b_full": 270.0, "wan14_probe": 40.0,
           "wan14_full": 90.0,
           "bridge": 60.0, "flux_bridge": 330.0, "step_cache": 17.0, "profile": 35.0, "long_per_window": 19.0, "attention_probe": 12.0}

T0 = G.T0
G.EXPERT_MODULES = ("wan13", "wan14", "wan14_low", "sd", "flux")  # the networks whose calls count as network forwards


def elapsed() -> float:
    return time.perf_counter() - T0


def sync(device):
    G.sync(device)


class FlopCounter(G.FlopCounter):
    """The transformers' and text encoder's FLOPs (the VAEs' chunked causal calls are not counted: 0)."""

    def _count(self, name, sig):
        if name not in self.meta:
            return {}
        try:
            return super()._count(name, sig)
        except Exception:  # noqa: BLE001 (a model the meta device cannot run: not counted)
            self.cache[(name, sig)] = {}
            return {}


def build_on(device, dtype, make):
    """``make()`` under ``device`` in float32 (random init on the GPU), cast to ``dtype``, eval, no grad."""
    torch.manual_seed(0)
    with torch.device(device):
        model = make()
    return model.to(dtype).eval().requires_grad_(False)


class WanBench:
    def __init__(self, a):
        self.a = a
        self.device = torch.device(a.device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.cfg = TINY if a.tiny else FULL
        build_device = self.device if self.device.type == "cuda" else "cpu"
        c = self.cfg
        t0 = time.perf_counter()
        self.models = {
            "umt5": build_on(build_device, self.dtype, lambda: UMT5EncoderModel(UMT5Config(**c["umt5"]))),
            "wan13": build_on(build_device, self.dtype, lambda: WanTransformer3DModel(**c["wan13"])),
            "wan_vae": build_on(build_device, self.dtype, lambda: AutoencoderKLWan(**c["wan_vae"])),
        }
        sync(self.device)
        self.build_s = {"wan13+umt5+vae": time.perf_counter() - t0}
        self.meta = {"umt5": build_on("meta", self.dtype, lambda: UMT5EncoderModel(UMT5Config(**c["umt5"]))),
                     "wan13": build_on("meta", self.dtype, lambda: WanTransformer3DModel(**c["wan13"])),
                     "wan14": build_on("meta", self.dtype, lambda: WanTransformer3DModel(**c["wan14"]))}
        self.meta["wan14_low"] = self.meta["wan14"]
        self.flops = FlopCounter(self.meta)
        self.timer = G.ModuleTimer(self.device.type == "cuda")
        self.timer.watch("text", "umt5", self.models["umt5"])
        self.timer.watch("transformer", "wan13", self.models["wan13"])
        self.timer.watch("vae_decode", "wan_vae_decoder", self.models["wan_vae"].decoder)
        self.timer.watch("vae_encode", "wan_vae_encoder", self.models["wan_vae"].encoder)
        tokenizer = tm.umt5_tokenizer()
        self.encoder = W.UMT5PromptEncoder(tokenizer, self.models["umt5"])
        self.codec = W.WanVAECodec(self.models["wan_vae"], WAN21)
        self.experts = self.wan_experts(self.models["wan13"], SHIFT_13B)
        self.h, self.w = c["height"] // 8, c["width"] // 8
        self.frames = c["frames"]
        self.attention = "default"

    def wan_experts(self, transformer, shift) -> dict:
        """Control, spatial (one frame) and temporal experts over one transformer, each with the Wan VAE."""
        out = {"control": W.WanExpert(transformer, self.encoder, shift, WAN21, name="control"),
               "spatial": W.WanImageExpert(transformer, self.encoder, shift, WAN21, name="spatial"),
               "temporal": W.WanExpert(transformer, self.encoder, shift, WAN21, name="temporal")}
        for e in out.values():
            e.codec = self.codec
        return out

    def forget_prompts(self) -> None:
        """Every run pays its text encoding as a new process would: the encoders remember recent prompts."""
        self.encoder.forget()
        for name in ("sd_expert", "flux_expert"):
            if getattr(self, name, None) is not None:
                getattr(self, name).prompt_encoder.forget()

    def noise(self, frames=None, seed=0) -> torch.Tensor:
        shape = WAN21.latent_shape(1, frames or self.frames, self.h * 8, self.w * 8)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device)

    def decode(self, latent) -> torch.Tensor:
        return to_uint8(self.codec.decode(latent)).cpu()

    def set_attention(self, name: str) -> None:
        self.attention = name
        for key in ("wan13", "wan14", "wan14_low", "sd", "sd_vae_decoder", "flux"):
            module = self.models.get(key)
            if module is not None:
                S.set_attention(module, name)

    # ConFiner -------------------------------------------------------------------------------------------------
    def confiner(self, experts: dict | None = None, keep: str | None = None) -> dict:
        """One ConFiner run; ``keep``: the attribute that keeps its (latent, frames) for output comparisons."""
        experts = experts or self.experts
        self.forget_prompts()
        log = EvaluationLog()
        with record_function("text"):  # the phases a profile splits the GPU's idle time by
            spatial = experts["spatial"].bind(PROMPT, NEGATIVE, CFG, log)  # first, as generate binds them
            control = experts["control"].bind(PROMPT, NEGATIVE, 1.0, log)
            temporal = experts["temporal"].bind(PROMPT, NEGATIVE, CFG, log, deferred=True)  # as generate
        with record_function("chain"):  # the refinement's last check read in the decode stage, as generate does
            latent = run_chain(control, spatial, temporal, self.noise(), ChainConfig(),
                               torch.Generator().manual_seed(0), hand_over=True).latent
        with log.stage("decode"):
            frames = self.decode(latent)
        if keep:
            setattr(self, keep, (latent, frames))
        return {"evaluations": dict(log.evaluations), "network_forwards": dict(log.forwards),
                "vae_calls": dict(log.vae_calls)}

    # Wan 2.1 at 50 steps with cfg -------------------------------------------------------------------------------
    def wan_steps(self, steps: int) -> dict:
        self.forget_prompts()
        log = EvaluationLog()
        d = self.experts["temporal"].bind(PROMPT, NEGATIVE, CFG, log)
        with log.stage("sampling"):
            latent = sample_control(d, self.noise(), sampler_timesteps(d.schedule, steps, "euler", "linspace"),
                                    "euler", spacing="linspace")
        self.decode(latent)
        return {"evaluations": dict(log.evaluations), "network_forwards": dict(log.forwards)}

    # 14B: Wan 2.2 A14B (extrapolated or full) and ConFiner with 14B experts (extrapolated) -------------------------
    def build_14b(self) -> None:
        if "wan14" in self.models:
            return
        c = self.cfg
        t0 = time.perf_counter()
        for key, seed in (("wan14", 1), ("wan14_low", 2)):
            torch.manual_seed(seed)
            self.models[key] = build_on(self.device if self.device.type == "cuda" else "cpu", self.dtype,
                                        lambda: WanTransformer3DModel(**c["wan14"]))
            self.timer.watch("transformer", key, self.models[key])
            S.set_attention(self.models[key], self.attention)
            if self.a.compile != "none":
                S.apply_speed_settings([self.models[key]], S.SpeedSettings(compile=self.a.compile))
        sync(self.device)
        self.build_s["2x14b"] = time.perf_counter() - t0

    def a14b_pair(self):
        high = W.WanExpert(self.models["wan14"], self.encoder, SHIFT_A14B, WAN21, name="a14b")
        low = W.WanExpert(self.models["wan14_low"], self.encoder, SHIFT_A14B, WAN21, name="a14b")
        for e in (high, low):
            e.codec = self.codec
        return W.wan_pair(high, low, BOUNDARY_A14B, GUIDANCE_A14B, name="a14b")

    def a14b_full(self) -> dict:
        self.forget_prompts()
        log = EvaluationLog()
        pair = self.a14b_pair()
        d = pair.bind(PROMPT, NEGATIVE, GUIDANCE_A14B[0], log)
        with log.stage("sampling"):
            latent = sample_control(d, self.noise(), sampler_timesteps(d.schedule, 40, "euler", "linspace"),
                                    "euler", spacing="linspace")
        self.decode(latent)
        return {"evaluations": dict(log.evaluations), "network_forwards": dict(log.forwards)}

    def confiner_14b(self) -> dict:
        """One ConFiner run with every expert on the 14B transformer (the shapes :meth:`probe_14b` warms)."""
        return self.confiner(self.wan_experts(self.models["wan14"], SHIFT_13B))

    def time_call(self, fn, repeats: int = 1) -> float:
        """Seconds of ``fn()`` after one untimed call (median of ``repeats``)."""
        fn()
        times = []
        for _ in range(repeats):
            sync(self.device)
            t0 = time.perf_counter()
            fn()
            sync(self.device)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    def probe_14b(self, text_s: float, decode_s: float, confiner_14b: bool) -> dict:
        """Per-evaluation times of the 14B experts -> Wan 2.2 A14B at 40 steps with cfg and ConFiner with 14B
        experts, extrapolated (text encoding + evaluations + VAE decode, each measured)."""
        self.build_14b()
        pair = self.a14b_pair()
        d = pair.bind(PROMPT, NEGATIVE, GUIDANCE_A14B[0])
        timesteps = sampler_timesteps(d.schedule, 40, "euler", "linspace")
        members = [pair.member(t) for t in timesteps]
        x = self.noise()
        with torch.no_grad():
            t_high = self.time_call(lambda: d(x, timesteps[0]))
            t_low = self.time_call(lambda: d(x, timesteps[-1]))
        out = {"a14b_step_high_s": t_high, "a14b_step_low_s": t_low, "a14b_steps_high": members.count(0),
               "a14b_steps_low": members.count(1), "text_s": text_s, "decode_s": decode_s}
        out["wan22_a14b_40_s_extrapolated"] = text_s + members.count(0) * t_high + members.count(1) * t_low + decode_s
        if confiner_14b:
            experts = self.wan_experts(self.models["wan14"], SHIFT_13B)
            control = experts["control"].bind(PROMPT, NEGATIVE, 1.0)
            spatial = experts["spatial"].bind(PROMPT, NEGATIVE, CFG)
            frames = x.permute(0, 2, 1, 3, 4)[0]  # [T, C, h, w]: the spatial expert's frame batch
            with torch.no_grad():
                out["wan14_video_b1_s"] = self.time_call(lambda: control(x, 900))
                out["wan14_video_b2_s"] = t_high
                out["wan14_frames_b2x_s"] = self.time_call(
                    lambda: spatial.expert.forward(frames, 100.0, [spatial.negative, spatial.positive]))
            config = ChainConfig()
            out["wan14_confiner_s_extrapolated"] = (
                text_s + config.control_steps * out["wan14_video_b1_s"]
                + config.refine_steps * (2 * out["wan14_frames_b2x_s"] + out["wan14_video_b2_s"]) + decode_s)
        return out

    # The bridge: SD 1.5 spatial expert, Wan control and temporal -----------------------------------------------
    def build_sd(self) -> None:
        if "sd" in self.models:
            return
        c = self.cfg
        dev = self.device if self.device.type == "cuda" else "cpu"
        dtype = self.dtype  # bf16 like the Wan models (an fp16 VAE at 480x832 risks overflow with random weights)
        self.models["sd"] = build_on(dev, dtype, lambda: UNet2DConditionModel(**c["sd"]))
        self.models["sd_vae"] = build_on(dev, dtype, lambda: AutoencoderKL(**c["sd_vae"]))
        self.models["sd_vae_decoder"] = self.models["sd_vae"].decoder
        self.models["clip_l"] = build_on(dev, dtype, lambda: CLIPTextModel(CLIPTextConfig(**c["clip_l"])))
        S.apply_speed_settings([self.models["sd"], self.models["sd_vae"].decoder, self.models["sd_vae"].encoder],
                               S.SpeedSettings(**{**S.LEAN.__dict__, "attention": self.attention,
                                                  "compile": self.a.compile}))
        self.timer.watch("transformer", "sd", self.models["sd"])
        self.timer.watch("vae_decode", "sd_vae_decoder", self.models["sd_vae"].decoder)
        self.timer.watch("vae_encode", "sd_vae_encoder", self.models["sd_vae"].encoder)
        self.sd_codec = AutoencoderKLCodec(self.models["sd_vae"], SD15)
        self.sd_expert = FrameExpert(self.models["sd"], PromptEncoder(G.tiny_tokenizer(), self.models["clip_l"]),
                                     dict(G.SD_SCHED), "sd15", latent_space=SD15)
        self.sd_expert.codec = self.sd_codec

    def build_flux(self) -> None:
        """FLUX.1-dev (12B transformer, CLIP-L, T5-XXL, its 16-channel VAE) as the library's Flux expert."""
        if "flux" in self.models:
            return
        c = self.cfg
        dev = self.device if self.device.type == "cuda" else "cpu"
        t0 = time.perf_counter()
        self.models["flux"] = build_on(dev, self.dtype, lambda: FluxTransformer2DModel(**c["flux"]))
        self.models["flux_vae"] = build_on(dev, self.dtype, lambda: AutoencoderKL(**c["flux_vae"]))
        self.models["flux_clip_l"] = build_on(dev, self.dtype, lambda: CLIPTextModel(CLIPTextConfig(**c["clip_l"])))
        self.models["t5"] = build_on(dev, self.dtype, lambda: T5EncoderModel(T5Config(**c["t5"])))
        sync(self.device)
        self.build_s["flux+t5+clip_l+vae"] = time.perf_counter() - t0
        self.meta["flux"] = build_on("meta", self.dtype, lambda: FluxTransformer2DModel(**c["flux"]))
        S.apply_speed_settings([self.models["flux"], self.models["flux_vae"].decoder, self.models["flux_vae"].encoder],
                               S.SpeedSettings(**{**S.LEAN.__dict__, "attention": self.attention,
                                                  "compile": self.a.compile}))
        self.timer.watch("transformer", "flux", self.models["flux"])
        self.timer.watch("text", "t5", self.models["t5"])
        self.timer.watch("vae_decode", "flux_vae_decoder", self.models["flux_vae"].decoder)
        self.timer.watch("vae_encode", "flux_vae_encoder", self.models["flux_vae"].encoder)
        encoder = FX.FluxPromptEncoder(G.tiny_tokenizer(), self.models["flux_clip_l"], tm.umt5_tokenizer(),
                                       self.models["t5"])
        shift = FX.dynamic_shift(FX.RELEASED_SCHEDULER, FX.image_seq_len(*FX.REFERENCE_SIZE))  # the family's default
        self.flux_expert = FX.FluxExpert(self.models["flux"], encoder, shift, FLUX, name="spatial")
        self.flux_expert.codec = AutoencoderKLCodec(self.models["flux_vae"], FLUX)

    def bridge_warmup(self, spatial_expert, guidance: float) -> None:
        """Every new shape of the bridge once (the image expert at every frame, both VAEs both ways)."""
        self.forget_prompts()
        log = EvaluationLog()
        control = self.experts["control"].bind(PROMPT, NEGATIVE, 1.0, log)
        spatial = spatial_expert.bind(PROMPT, NEGATIVE, guidance, log)
        x = hand_off(torch.zeros(WAN21.latent_shape(1, self.frames, self.h * 8, self.w * 8), device=self.device)
                     + 0.1, control, spatial)
        spatial(x, 100)
        hand_off(x, spatial, control)

    def bridge(self, spatial_expert, guidance: float) -> dict:
        """ConFiner with an image expert of another latent space (SD 1.5, FLUX.1) and Wan control and temporal
        experts: every hand-off crosses through both VAEs; the video is decoded by the spatial expert's VAE."""
        self.forget_prompts()
        log = EvaluationLog()
        control = self.experts["control"].bind(PROMPT, NEGATIVE, 1.0, log)
        spatial = spatial_expert.bind(PROMPT, NEGATIVE, guidance, log)
        temporal = self.experts["temporal"].bind(PROMPT, NEGATIVE, CFG, log)
        latent = run_chain(control, spatial, temporal, self.noise(), ChainConfig(), torch.Generator().manual_seed(0)).latent
        to_uint8(spatial_expert.codec.decode(latent)).cpu()
        return {"evaluations": dict(log.evaluations), "network_forwards": dict(log.forwards),
                "vae_calls": dict(log.vae_calls)}

    # Step caching ------------------------------------------------------------------------------------------------
    def cached_experts(self, threshold: float) -> tuple[dict, object]:
        experts = self.wan_experts(self.models["wan13"], SHIFT_13B)
        cache = attach_step_cache(experts["spatial"], threshold)
        attach_step_cache(experts["temporal"], threshold, cache)
        return experts, cache

    # ConFiner-Long -------------------------------------------------------------------------------------------------
    def long(self, frames: int) -> dict:
        self.forget_prompts()
        log = EvaluationLog()
        control = self.experts["control"].bind(PROMPT, NEGATIVE, 1.0, log)
        spatial = self.experts["spatial"].bind(PROMPT, NEGATIVE, CFG, log)
        temporal = self.experts["temporal"].bind(PROMPT, NEGATIVE, CFG, log)
        plan = plan_segments(frames, self.frames, True)
        shape = (1, WAN21.channels, self.h, self.w)

        def sink(latent, window):  # the whole window decoded (causal latents cannot be cut), its frames kept
            self.decode(latent)[:, :window.frames]

        generate_long(control, spatial, temporal, plan, shape, ChainConfig(), LongConfig(segment_length=self.frames),
                      torch.Generator().manual_seed(0), sink, device=self.device)
        return {"evaluations": dict(log.evaluations), "network_forwards": dict(log.forwards),
                "vae_calls": dict(log.vae_calls), "windows": len(plan.windows), "structures": plan.structures}

    # Attention backends ----------------------------------------------------------------------------------------------
    def attention_probe(self) -> dict:
        """One Wan 1.3B forward (batch 1, the full video) under each backend; the fastest."""
        model = self.models["wan13"]
        x = self.noise().to(self.dtype)
        t = torch.full((1,), 500.0, device=self.device)
        context = torch.randn(1, W.MAX_SEQUENCE_LENGTH if not self.a.tiny else 16, self.cfg["wan13"]["text_dim"],
                              device=self.device, dtype=self.dtype)
        installed = F4.flash4_function() is not None
        backends = ["default", "cudnn", "flash", "efficient"] + (["flash4", "fastest"] if installed else [])
        out = {}
        with torch.no_grad():
            for backend in backends:
                S.set_attention(model, backend)
                try:
                    out[backend] = self.time_call(lambda: model(hidden_states=x, timestep=t,
                                                                encoder_hidden_states=context, return_dict=False),
                                                  repeats=2)
                except Exception as e:  # noqa: BLE001 (a backend that cannot run this shape)
                    out[backend] = f"{type(e).__name__}: {e}"[:200]
        S.set_attention(model, "default")
        times = {k: v for k, v in out.items() if isinstance(v, float)}
        return {"forward_s": out, "fastest": min(times, key=times.get) if times else "default"}


def timed(bench: WanBench, fn, repeats: int, prior: float, deadline: float, warmup=None) -> dict | None:
    run = G.timed(fn, bench.device, repeats, bench.timer, bench.flops, deadline, prior, warmup)
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke run)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--attention", default="auto", choices=("auto",) + S.ATTENTION_BACKENDS,
                    help="SDPA backend for every run; auto: the fastest on one Wan forward")
    ap.add_argument("--compile", default="none", choices=S.COMPILE_SCOPES,
                    help="regional torch.compile of every network (same for all runs)")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=("confiner", "wan_50", "a14b", "wan14", "bridge", "flux", "profile"))
    ap.add_argument("--a14b-full", action="store_true", help="run Wan 2.2 A14B's 40 steps instead of extrapolating")
    ap.add_argument("--wan14-full", action="store_true",
                    help="run ConFiner with 14B experts instead of extrapolating")
    ap.add_argument("--step-cache", type=float, nargs="*", default=[0.05, 0.1],
                    help="First-Block-Cache thresholds to measure on the refinement stage")
    ap.add_argument("--long", type=int, nargs="*", default=[], help="ConFiner-Long lengths (frames)")
    ap.add_argument("--deadline", type=float, default=float("inf"))
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    b = WanBench(a)
    dev = b.device
    res = {"device_name": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "date": datetime.date.today().isoformat(), "tiny": a.tiny, "import_s": G.IMPORT_S, "build_s": b.build_s,
           "size": f"{b.cfg['height']}x{b.cfg['width']}x{b.frames}", "dtype": str(b.dtype).replace("torch.", ""),
           "flash_attn_4": F4.flash4_function() is not None, "compile": a.compile, "deadline_s": a.deadline,
           "params_m": {k: round(G.params_m(m), 1) for k, m in b.models.items()}, "runs": {}, "long": {}}
    scale = 0.02 if a.tiny else 1.0

    def save():
        res["elapsed_s"] = elapsed()
        res["figures"] = figures(res)
        for name, text in (("wan_results.json", json.dumps(res, indent=2, default=str)),
                           ("wan_results.md", markdown(res))):
            write_atomic(os.path.join(a.out, name), text.encode())

    def fits(prior: float) -> bool:
        return elapsed() + scale * prior <= a.deadline

    def step(name: str, prior: float, fn):
        """One measured step of the plan: skipped when it does not fit, its failure recorded, saved after."""
        if not fits(prior):
            res["runs"][name] = None
            print(f"[{elapsed():6.0f} s] {name}: skipped (deadline)", flush=True)
            return None
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 (one failure must not lose the other figures)
            import traceback
            traceback.print_exc()
            out = {"error": f"{type(e).__name__}: {e}"[:500]}
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        res["runs"][name] = out
        shown = out and (round(out["wall_s"], 3) if "wall_s" in out else out.get("error", "done"))
        print(f"[{elapsed():6.0f} s] {name}: {shown}", flush=True)
        save()
        return out

    print(f"[{elapsed():6.0f} s] built: {b.build_s}", flush=True)
    if a.compile != "none":
        S.apply_speed_settings([b.models["wan13"]], S.SpeedSettings(compile=a.compile))
    if a.attention == "auto":
        probe = step("attention_probe", PRIOR_S["attention_probe"], b.attention_probe)
        b.set_attention(probe["fastest"] if probe and "fastest" in probe else "default")
    else:
        b.set_attention(a.attention)
    res["attention"] = b.attention
    if "confiner" not in a.skip:
        step("confiner_wan13", PRIOR_S["confiner"] * (1 + a.repeats),
             lambda: timed(b, lambda: b.confiner(keep="uncached"), a.repeats, 0, a.deadline))
    if "wan_50" not in a.skip:
        step("wan21_13b_50", PRIOR_S["wan_50"] * 1.05,
             lambda: timed(b, lambda: b.wan_steps(50), 1, 0, a.deadline, warmup=lambda: b.wan_steps(2)))
    if "profile" not in a.skip:
        def profile():
            b.timer.reset()
            summary = P.profile_run(lambda: b.confiner(), dev)
            summary.update(P.rates(summary, b.flops.by_kind(b.timer.calls)))
            return summary
        step("profile_confiner_wan13", PRIOR_S["profile"], profile)
    for threshold in a.step_cache:
        def cached(threshold=threshold):
            experts, cache = b.cached_experts(threshold)
            run = G.timed(lambda: b.confiner(experts, keep="cached"), dev, 1, b.timer, b.flops, a.deadline, 0,
                          warmup=lambda: None)
            return {**run, **cache.describe(), **difference(b)}
        step(f"confiner_wan13_step_cache_{threshold:g}", PRIOR_S["step_cache"] * 2, cached)
    confiner = res["runs"].get("confiner_wan13") or {}
    text_s = (confiner.get("modules_s") or {}).get("text", 0.0)
    decode_s = (confiner.get("modules_s") or {}).get("vae_decode", 0.0)
    if "a14b" not in a.skip or "wan14" not in a.skip:
        step("wan14_probe", PRIOR_S["a14b_probe"] + PRIOR_S["wan14_probe"],
             lambda: b.probe_14b(text_s, decode_s, "wan14" not in a.skip))
        # both measured whole after the probe, whose calls compiled (or warmed) every shape they use
        if a.a14b_full and "a14b" not in a.skip:
            step("wan22_a14b_40", PRIOR_S["a14b_full"],
                 lambda: timed(b, b.a14b_full, 1, 0, a.deadline, warmup=lambda: None))
        if a.wan14_full and "wan14" not in a.skip:
            step("confiner_wan14", PRIOR_S["wan14_full"],
                 lambda: timed(b, b.confiner_14b, 1, 0, a.deadline, warmup=lambda: None))
    def bridge(build, expert, guidance):
        build()
        t0 = time.perf_counter()
        b.bridge_warmup(expert(), guidance)
        sync(dev)
        warm = time.perf_counter() - t0
        run = G.timed(lambda: b.bridge(expert(), guidance), dev, 1, b.timer, b.flops, a.deadline, 0,
                      warmup=lambda: None)
        return {**run, "bridge_warmup_s": warm}

    if "bridge" not in a.skip:
        step("confiner_bridge_sd15_wan13", PRIOR_S["bridge"],
             lambda: bridge(b.build_sd, lambda: b.sd_expert, SD_CFG))
    if "flux" not in a.skip:
        step("confiner_bridge_flux_wan13", PRIOR_S["flux_bridge"],
             lambda: bridge(b.build_flux, lambda: b.flux_expert, FLUX_GUIDANCE))
    if a.long:
        windows = lambda frames: len(plan_segments(frames, b.frames, True).windows)  # noqa: E731
        for frames in a.long:
            prior = PRIOR_S["long_per_window"] * (windows(frames) + 1)
            run = step(f"long_{frames}", prior,
                       lambda frames=frames: G.timed(lambda: b.long(frames), dev, 1, b.timer, b.flops, a.deadline, 0,
                                                     warmup=lambda: None))
            res["long"][str(frames)] = run
            save()
    save()
    print(markdown(res))


def difference(b: WanBench) -> dict:
    """Output difference of the last cached run from the uncached one (same seed): latent relative L2 and the
    decoded frames' PSNR."""
    if not hasattr(b, "uncached") or not hasattr(b, "cached"):
        return {}
    (ref_latent, ref_frames), (latent, frames) = b.uncached, b.cached
    err = float((latent.double() - ref_latent.double()).norm() / ref_latent.double().norm())
    mse = float(((frames.double() - ref_frames.double()) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0 ** 2 / mse)).item()
    return {"latent_rel_l2_vs_uncached": err, "frames_psnr_db_vs_uncached": psnr}


#: the runs with 14B networks (their peak is reported apart from the 1.3B runs')
WAN14_RUNS = ("wan14_probe", "wan22_a14b_40", "confiner_wan14")


def figures(res: dict) -> dict:
    """The plainly named figures (RESULTS.json keys)."""
    runs, out = res["runs"], {}

    def wall(name):
        r = runs.get(name)
        return r["wall_s"] if r and "wall_s" in r else None

    out["wan_confiner_s"] = wall("confiner_wan13")
    out["wan_50_s"] = wall("wan21_13b_50")
    if out["wan_confiner_s"] and out["wan_50_s"]:
        out["wan_ratio_confiner_to_wan_50"] = out["wan_confiner_s"] / out["wan_50_s"]
        c, w = runs["confiner_wan13"], runs["wan21_13b_50"]
        if c.get("tflop") and w.get("tflop"):
            out["wan_flop_ratio_confiner_to_wan_50"] = c["tflop"] / w["tflop"]
    probe = runs.get("wan14_probe") or {}
    full = wall("wan22_a14b_40")
    out["wan22_a14b_40_s"] = full if full else probe.get("wan22_a14b_40_s_extrapolated")
    out["wan22_a14b_40_extrapolated"] = not full and "wan22_a14b_40_s_extrapolated" in probe
    if out["wan_confiner_s"] and out["wan22_a14b_40_s"]:
        out["wan_ratio_confiner_to_wan22_a14b_40"] = out["wan_confiner_s"] / out["wan22_a14b_40_s"]
        c, w = runs["confiner_wan13"], runs.get("wan22_a14b_40") or {}
        if full and c.get("tflop") and w.get("tflop"):
            out["wan_flop_ratio_confiner_to_wan22_a14b_40"] = c["tflop"] / w["tflop"]
    out["wan14_confiner_s_extrapolated"] = probe.get("wan14_confiner_s_extrapolated")
    out["wan14_confiner_s"] = wall("confiner_wan14")
    if out["wan14_confiner_s"] and full:
        out["wan_ratio_confiner_14b_to_wan22_a14b_40"] = out["wan14_confiner_s"] / full
        c, w = runs["confiner_wan14"], runs["wan22_a14b_40"]
        if c.get("tflop") and w.get("tflop"):
            out["wan_flop_ratio_confiner_14b_to_wan22_a14b_40"] = c["tflop"] / w["tflop"]
    out["wan_bridge_confiner_s"] = wall("confiner_bridge_sd15_wan13")
    out["wan_bridge_flux_confiner_s"] = wall("confiner_bridge_flux_wan13")
    flux = runs.get("confiner_bridge_flux_wan13") or {}
    out["wan_bridge_flux_peak_gpu_gib"] = flux.get("peak_gpu_gib")
    # the 1.3B runs' peak and the 14B runs' apart: one process may hold both (the 14B weights stay after their runs)
    for key, names in (("wan_peak_gpu_gib", [n for n in runs if n not in WAN14_RUNS]),
                       ("wan14_peak_gpu_gib", WAN14_RUNS)):
        peaks = [runs[n]["peak_gpu_gib"] for n in names if runs.get(n) and runs[n].get("peak_gpu_gib") is not None]
        out[key] = max(peaks) if peaks else None
    for name, r in runs.items():
        if name.startswith("confiner_wan13_step_cache_") and r and "wall_s" in r:
            key = name.replace("confiner_wan13_", "wan_confiner_")
            out[f"{key}_s"] = r["wall_s"]
            out[f"{key}_skipped"] = r.get("skipped")
            out[f"{key}_latent_rel_l2"] = r.get("latent_rel_l2_vs_uncached")
    for frames, r in res["long"].items():
        if r and "wall_s" in r:
            out[f"wan_long_{frames}_s"] = r["wall_s"]
            out[f"wan_long_{frames}_peak_gpu_gib"] = r.get("peak_gpu_gib")
    return out


def markdown(res: dict) -> str:
    lines = [f"Device {res['device_name']}, torch {res['torch']}, {res['date']}, {res['size']}, {res['dtype']}, "
             f"attention {res.get('attention')}, compile {res['compile']}.", "",
             "| run | s | runs | warm-up s | evals | forwards | VAE calls | TFLOP | TFLOP/s | text s | transformer s "
             "| VAE dec s | VAE enc s | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["runs"].items():
        if r is None:
            lines.append(f"| {name} | skipped (deadline) |" + " |" * 12)
            continue
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} |" + " |" * 12)
            continue
        if "runs_s" not in r:
            continue
        m = r.get("modules_s", {})
        pk = f"{r['peak_gpu_gib']:.1f}" if r.get("peak_gpu_gib") is not None else ""
        lines.append(f"| {name} | {r['wall_s']:.2f} | {', '.join(f'{x:.2f}' for x in r['runs_s'])} | "
                     f"{r['warmup_s']:.1f} | {sum(r.get('evaluations', {}).values())} | "
                     f"{sum(r.get('network_forwards', {}).values())} | {sum(r.get('vae_calls', {}).values())} | "
                     f"{r['tflop']:.0f} | {r['achieved_tflops']:.0f} | {m.get('text', 0):.2f} | "
                     f"{m.get('transformer', 0):.2f} | {m.get('vae_decode', 0):.2f} | {m.get('vae_encode', 0):.2f} "
                     f"| {pk} |")
    extra = {k: v for k, v in res["runs"].items() if v and "runs_s" not in v and "error" not in v
             and not k.startswith("profile")}
    for k, v in extra.items():
        lines += ["", f"**{k}**: `{json.dumps(v, default=float)}`"]
    for k, v in res["runs"].items():
        if k.startswith("profile") and v and "kinds" in v:
            lines += [""] + P.markdown(v, "Profile of one ConFiner run with Wan 1.3B experts")
    lines += ["", "Figures: `" + json.dumps(res.get("figures", {}), default=float) + "`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
