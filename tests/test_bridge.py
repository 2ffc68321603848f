"""The bridge between latent spaces: exact codecs round-trip, and a coordinated step across two spaces equals the
same step written out by hand (codecs, noising, re-noising and the DDIM step spelled out here, not called)."""

import io
import math

import pytest

import torch
from diffusers import DDIMScheduler

from confiner_core import schedules as S
from confiner_core.chain import ChainConfig, run_chain
from confiner_core.embedded.codecs import CAUSAL, WORLD, CausalWorldCodec, WorldCodec
from confiner_core.embedded.experts import embedded_experts
from confiner_core.experts import EvaluationLog, Expert
from confiner_core.latent_spaces import Codec, LatentSpace, bridge, check_bridges, per_frame
from confiner_core.layout import FRAMES, VIDEO
from confiner_core.refine import coordinated_step

BRIDGE_TOL = 1e-5  # float32 codecs; the embedded ones are exact up to rounding


def world_latent(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 4, frames, 6, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_embedded_codecs_are_exact_and_the_bridge_round_trips(frames):
    world, causal = WorldCodec(), CausalWorldCodec()
    x0 = world_latent(frames)
    assert (world.encode(world.decode(x0)) - x0).abs().max() < BRIDGE_TOL
    there = bridge(x0, world, causal)
    assert there.shape == (1, 64, CAUSAL.latent_frames(frames), 3, 4)  # 16x spatial, 4k+1 -> k+1 latent frames
    back = bridge(there, causal, world)
    assert (back - x0).abs().max() < BRIDGE_TOL
    frames_space = per_frame(causal)  # the per-pixel-frame space of an image expert
    assert frames_space.space.temporal_factor == 1
    assert (bridge(bridge(there, causal, frames_space), frames_space, causal) - there).abs().max() < BRIDGE_TOL
    assert bridge(x0, world, WorldCodec()) is x0  # one space: the identity, no VAE call


def test_bridge_refuses_without_vaes_and_checks_frames():
    with pytest.raises(ValueError, match="needs both VAEs"):
        bridge(world_latent(5), WORLD, CausalWorldCodec())
    with pytest.raises(ValueError, match="4k\\+1 frames"):
        CausalWorldCodec().encode(WorldCodec().decode(world_latent(6)))


def test_a_codec_refuses_a_numpy_array_in_one_line_naming_the_fix():
    """A NumPy latent passed the VAE's shape check and failed inside each VAE differently ("'numpy.ndarray' object
    has no attribute 'double'" in the embedded one; 'dim', 'split' in diffusers' through LoadedExperts.decode) (a
    researcher's trial)."""
    import numpy as np

    for codec, array in ((WorldCodec(), world_latent(5).numpy()), (CausalWorldCodec(), np.zeros((1, 4, 5, 6, 8)))):
        with pytest.raises(TypeError, match=r"^the embedded(-causal)? VAE takes (latents|pixels) .* as a "
                                            r"torch.Tensor, got ndarray: torch.from_numpy\(x\)$"):
            codec.decode(array) if codec.space is WORLD else codec.encode(array)
    with pytest.raises(TypeError, match=r"^the embedded VAE takes latents \[B, 4, T, h, w\] as a torch.Tensor, got "
                                        r"list$"):
        WorldCodec().decode(world_latent(5).tolist())


def test_only_an_expert_that_kept_the_default_latent_space_is_told_to_declare_one():
    """An expert of one's own keeps Expert's default space (SD 1.5's) unless it declares its own: beside the embedded
    experts it is asked for a VAE, or to declare its space. The library's own experts (here the embedded bridge
    preset's, their codecs taken away) were given that hint too, where following it would skip the bridge."""
    experts = embedded_experts("bridge")

    class Mine(Expert):   # an exact expert of the embedded world, its space left undeclared
        name, schedule, layout = "mine", experts["spatial"].schedule, experts["spatial"].layout

        def encode(self, prompt):
            return experts["spatial"].encode(prompt)

        def forward(self, x, t, conds):
            return experts["spatial"].forward(x, t, conds)

    log = EvaluationLog()
    control, temporal = (experts[r].bind("a red ball", "", 1.0, log) for r in ("control", "temporal"))
    noise = torch.randn(control.expert.latent_space.latent_shape(1, 5, 64, 64), generator=torch.Generator())
    with pytest.raises(ValueError) as e:
        run_chain(control, Mine().bind("a red ball", "", 1.0, log), temporal, noise, ChainConfig(),
                  torch.Generator().manual_seed(0))
    assert "for SD 1.5 (the spatial expert): give it its VAE, or declare its latent_space" in str(e.value)
    for role in ("control", "spatial", "temporal"):
        experts[role].codec = None
    bound = {r: experts[r].bind("a red ball", "", 1.0, log) for r in ("control", "spatial", "temporal")}
    with pytest.raises(ValueError, match="give it its VAE") as e:
        run_chain(bound["control"], bound["spatial"], bound["temporal"], noise, ChainConfig(),
                  torch.Generator().manual_seed(0))
    assert "declare" not in str(e.value)


def test_vaes_of_other_pixels_are_refused_before_any_evaluation():
    """An embedded control expert (toy 4-channel pixels) beside an RGB spatial expert: the bridge refused them only
    once the control stage had run. The chain's check now does, before the first evaluation."""
    class RGB(Codec):   # an RGB VAE of its own space (what SD 1.5's is, without weights)
        space, pixel_channels = LatentSpace("rgb", 4, 8), 3

        def encode_raw(self, pixels):
            raise AssertionError("not reached")

        decode_raw = encode_raw

    with pytest.raises(ValueError, match=rf"^the control expert's {WORLD.title} VAE makes 4-channel pixels and the "
                                         rf"spatial expert's rgb VAE takes 3-channel ones: no bridge joins VAEs of "
                                         rf"other pixels"):
        check_bridges([("control", "spatial"), ("spatial", "control")], {"control": WorldCodec(), "spatial": RGB()})

    class Spatial(Expert):
        schedule, latent_space, codec, name = S.named("sd15"), RGB.space, RGB(), "rgb"

        def encode(self, prompt):
            return prompt

        def forward(self, x, t, conds):
            return [torch.zeros_like(x) for _ in conds]

    log = EvaluationLog()
    control = embedded_experts("sd")["control"].bind("a red ball", "", 1.0, log)
    spatial = Spatial().bind("a red ball", "", 1.0, log)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="no bridge joins VAEs of other pixels"):
        run_chain(control, spatial, spatial, torch.randn(1, 4, 4, 8, 8, generator=g), ChainConfig(mode="standard"), g)
    assert sum(log.evaluations.values()) == 0


def test_every_missing_vae_is_named_in_one_message_once_per_latent_space():
    """Structure from a causal-space control expert, refined by a world-space spatial and a causal-space temporal
    expert, no VAE connected: one message asks for one VAE of each space (an artist used to fix one, run again and
    meet the next). The causal space's is asked of the temporal expert's input, whose VAE also serves the control
    expert, as the host's order of fixes says."""
    fixes = {"spatial": "connect spatial_vae", "temporal": "connect temporal_vae", "control": "connect control_vae"}
    hand_offs = [("control", "spatial"), ("spatial", "temporal")]
    ends = {"control": CAUSAL, "spatial": WORLD, "temporal": CAUSAL}
    with pytest.raises(ValueError) as e:
        check_bridges(hand_offs, ends, fixes=fixes)
    message = str(e.value)
    assert "2 are missing" in message and message.count("connect ") == 2, message
    assert f"for {WORLD.title} (the spatial expert): connect spatial_vae" in message
    assert f"for {CAUSAL.title} (the control and temporal experts): connect temporal_vae" in message
    with pytest.raises(ValueError, match="3 are missing") as e:             # no host fixes: each expert its own
        check_bridges(hand_offs, ends)
    assert str(e.value).count("give it its VAE") == 3
    # ... and what "its VAE" is in code, for one's own experts (the host's fixes name its inputs instead)
    assert str(e.value).endswith("(an expert's VAE is its codec: expert.codec = a Codec of its latent space, such as "
                                 "the .codec of an expert load_experts loaded in that space)")
    ends.update(control=CausalWorldCodec(), temporal=CausalWorldCodec())     # the causal space's VAE, connected
    with pytest.raises(ValueError, match=rf"1 is missing; for {WORLD.title} \(the spatial expert\): connect spatial_vae$"):
        check_bridges(hand_offs, ends, fixes=fixes)
    ends["spatial"] = WorldCodec()
    check_bridges(hand_offs, ends, fixes=fixes)                              # every bridge has its VAEs
    check_bridges(hand_offs, {"control": WORLD, "spatial": WORLD, "temporal": None})  # one space: none needed


# ----------------------------------------------------------------------------------------------------------------
# A coordinated step across two spaces, written out

A = LatentSpace("a", 2, 1, scale=0.5)                   # 2 channels, normalised by 0.5
B = LatentSpace("b", 4, 1, 2, shift=(0.1, -0.2, 0.3, 0.0), std=(1.5, 0.5, 2.0, 1.0))  # 2 frames -> 1 latent frame


class PlainA(Codec):
    """Pixels [B, 2, F, H, W] are A's raw latents."""
    space = A
    pixel_channels = 2

    def encode_raw(self, pixels):
        return pixels.clone()

    def decode_raw(self, raw):
        return raw.clone()


class PairsB(Codec):
    """B packs two consecutive frames' 2 channels into 4."""
    space = B
    pixel_channels = 2

    def encode_raw(self, pixels):
        b, p, f, h, w = pixels.shape
        return pixels.reshape(b, p, f // 2, 2, h, w).permute(0, 3, 1, 2, 4, 5).reshape(b, 2 * p, f // 2, h, w)

    def decode_raw(self, raw):
        b, c, t, h, w = raw.shape
        return raw.reshape(b, 2, c // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c // 2, 2 * t, h, w)


class Oracle(Expert):
    """Knows x0* (in its own space) exactly; eps prediction on a VP schedule, flow prediction on a flow one."""

    def __init__(self, x0, schedule, codec, prediction):
        self.x0, self.schedule, self.codec, self.prediction = x0, schedule, codec, prediction
        self.latent_space, self.layout, self.name = codec.space, VIDEO, codec.space.name
        self.seen = []

    def encode(self, prompt):
        return prompt

    def forward(self, x, t, conds):
        a, s = self.schedule.coefficients(t)
        self.seen.append((x.clone(), t))
        eps = (x - a * self.x0) / s
        return [eps if self.prediction == "epsilon" else eps - self.x0 for _ in conds]


def test_one_coordinated_step_across_two_spaces_matches_the_hand_written_step():
    g = torch.Generator().manual_seed(1)
    x0_a = torch.randn(1, 2, 4, 3, 3, generator=g, dtype=torch.float64)      # the spatial expert's belief (space A)
    x0_b = torch.randn(1, 4, 2, 3, 3, generator=g, dtype=torch.float64)      # the temporal expert's (space B)
    sd = S.from_betas("scaled_linear", 0.00085, 0.012, set_alpha_to_one=False)
    flow = S.flow_schedule(5.0)
    spatial = Oracle(x0_a, sd, PlainA(), "epsilon").bind(log=EvaluationLog())
    temporal = Oracle(x0_b, flow, PairsB(), "flow").bind()
    x = torch.randn(1, 2, 4, 3, 3, generator=g, dtype=torch.float64)
    t = 100
    ours, pred_t = coordinated_step(spatial, temporal, x, t, torch.Generator().manual_seed(5))

    # by hand: SD's abar from diffusers, the flow timestep t is sigma = t / 1000, the codecs spelled out
    abar = float(DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod[t])
    a_s, s_s = math.sqrt(abar), math.sqrt(1 - abar)
    sigma_t = t / 1000
    replay = torch.Generator().manual_seed(5)
    raw_a = x0_a / 0.5                                                     # A.process_out: / scale
    frames = raw_a                                                         # PlainA decode
    pairs = torch.stack([frames[:, :, 0::2], frames[:, :, 1::2]], dim=1)   # [B, 2 (pair slot), C, T, h, w]
    raw_b = pairs.reshape(1, 4, 2, 3, 3)
    shift = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64).view(1, 4, 1, 1, 1)
    std = torch.tensor([1.5, 0.5, 2.0, 1.0], dtype=torch.float64).view(1, 4, 1, 1, 1)
    x0_in_b = (raw_b - shift) / std                                        # B.process_in
    eps1 = torch.randn((1, 4, 2, 3, 3), generator=replay, dtype=torch.float32).double()
    x_t = (1 - sigma_t) * x0_in_b + sigma_t * eps1                         # Eq. 9 on the flow schedule
    assert torch.allclose(temporal.expert.seen[0][0], x_t, atol=1e-6)
    back_raw = x0_b * std + shift                                          # B.process_out, then unpack the pairs
    back = torch.empty(1, 2, 4, 3, 3, dtype=torch.float64)
    back[:, :, 0::2], back[:, :, 1::2] = back_raw[:, 0:2], back_raw[:, 2:4]
    x0_back = back * 0.5                                                   # A.process_in
    eps2 = torch.randn((1, 2, 4, 3, 3), generator=replay, dtype=torch.float32).double()
    expected = a_s * x0_back + s_s * eps2                                  # Eq. 11 on SD's schedule
    assert (ours - expected).abs().max() < 1e-6
    assert torch.allclose(pred_t.x0, x0_b, atol=1e-6)
    assert spatial.log.vae_calls == {"refine": 4}      # decode + encode, both ways; a step is refinement


@pytest.mark.parametrize("preset", ["bridge", "wan-pixel"])
def test_embedded_bridged_chain_runs_and_counts_vae_calls(preset):
    experts = embedded_experts(preset)
    log = EvaluationLog()
    d = {k: e.bind("a red ball bouncing over green grass", log=log) for k, e in experts.items()}
    shape = experts["control"].latent_space.latent_shape(1, 9, 64, 64)
    g = torch.Generator().manual_seed(0)
    result = run_chain(d["control"], d["spatial"], d["temporal"], torch.randn(shape, generator=g), ChainConfig(), g)
    assert result.latent.shape == experts["spatial"].latent_space.latent_shape(1, 9, 64, 64)
    assert torch.isfinite(result.latent).all()
    # 2 for the structure, 2 x 2 per coordinated step (5 steps)
    assert log.vae_calls == {"refine": 2 + 4 * 5}
    assert log.evaluations == {"control": 4, "refine": 15}


def test_a_structure_in_another_space_of_its_channels_is_refused_where_it_would_be_misread():
    """A trial's Wan structure, refined by FLUX.1 without ``source`` (16 channels both), made a video of 5 frames for
    17; decoded as the video, the Flux VAE read it without a word. The chain's outputs now say their space: the
    embedded Wan-like control expert beside the image expert on its pixel frames (64 channels both, 4x temporal
    against none)."""
    from confiner_core.chain import generate_structure, refine_structure
    from confiner_core.diffusers_backend.families.registry import LoadedExperts

    experts = embedded_experts("wan-pixel")
    log = EvaluationLog()
    d = {k: e.bind("a red ball bouncing over green grass", log=log) for k, e in experts.items()}
    control, spatial = experts["control"].latent_space, experts["spatial"].latent_space
    assert control.channels == spatial.channels and control != spatial
    config = ChainConfig(control_steps=2, refine_steps=2)
    g = torch.Generator().manual_seed(0)
    structure = generate_structure(d["control"], torch.randn(control.latent_shape(1, 17, 64, 64), generator=g),
                                   config, g)
    with pytest.raises(ValueError, match=r"^refine_structure: structure is in embedded-causal latents \(generate_"
                                         r"structure made it with the control expert\), and the refining expert "
                                         r"works in embedded-causal latents \(pixel frames\): pass source="):
        refine_structure(d["spatial"], d["temporal"], structure, config, 1)
    with pytest.raises(ValueError, match=r"not in the source expert's embedded-causal latents \(pixel frames\)"):
        refine_structure(d["spatial"], d["temporal"], structure, config, 1, source=d["spatial"])
    assert log.evaluations == {"control": 2}   # both refused before any evaluation
    video = refine_structure(d["spatial"], d["temporal"], structure, config, 1, source=d["control"])
    assert video.shape[2] == 17   # pixel frames: the 5 latent frames' 17
    loaded = LoadedExperts(dict(experts), experts["spatial"].codec)
    with pytest.raises(ValueError, match=r"^decode\(\.\.\., 'spatial'\): the latent is in embedded-causal latents, the "
                                         r"spatial expert's are embedded-causal latents \(pixel frames\): "
                                         r"decode\(latent, 'control'\)$"):
        loaded.decode(structure)
    assert loaded.decode(structure, "control").shape == (1, 17, 64, 64, 3)
    assert loaded.decode(video).shape == (1, 17, 64, 64, 3)
    with pytest.raises(ValueError, match=r"decode\(latent, 'spatial'\)$"):
        loaded.decode(video, "control")
    # the note is beside the tensor, not in it: a saved chain output loads with torch.load's defaults (weights only;
    # the trial's note as an attribute made it "Unsupported global: LatentSpace"), as the plain tensor it is
    buffer = io.BytesIO()
    torch.save(structure, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer)
    assert torch.equal(reloaded, structure) and type(reloaded) is torch.Tensor and not vars(reloaded)


def test_image_expert_latent_frames_vs_pixel_frames_differ_only_in_their_space():
    """The same image expert refines latent frames (fast) or pixel frames (through the bridge): different spaces,
    both decode to the same frame count."""
    lat, pix = embedded_experts("wan")["spatial"], embedded_experts("wan-pixel")["spatial"]
    assert lat.layout == pix.layout == FRAMES
    assert lat.latent_space == CAUSAL and pix.latent_space == CAUSAL.per_frame()
    assert pix.latent_space.latent_frames(9) == 9 and lat.latent_space.latent_frames(9) == 3


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: a GPU's VAE calls are timed by CUDA events"))])
def test_the_log_times_vae_calls_per_stage_without_waiting_on_the_device(device):
    """``EvaluationLog.vae`` counts the calls and their seconds under the stage they ran in; on a GPU the host does
    not wait inside the call (the kernels' time is read from events at the end)."""
    import time

    log = EvaluationLog()
    x = torch.randn(512, 512, device=device)
    with log.stage("refine"):
        with log.vae(2, x.device):
            for _ in range(20):
                x = x @ x / 512
            if device == "cpu":
                time.sleep(0.05)
    with log.stage("control"), log.vae(1, x.device):
        pass
    seconds = log.vae_seconds()
    assert log.vae_calls == {"refine": 2, "control": 1} and set(seconds) == {"refine", "control"}
    assert seconds["refine"] > seconds["control"] >= 0 and (device == "cuda" or seconds["refine"] >= 0.05)


def test_frames_to_uint8_as_diffusers_image_processor():
    """Decoded pixels outside [-1, 1] are clamped (a VAE overshoots: white wrapped to black without it), and the
    rest mapped as diffusers' VaeImageProcessor (denormalize, then numpy_to_pil's (x * 255).round())."""
    from diffusers.image_processor import VaeImageProcessor

    from confiner_core.latent_spaces import to_uint8

    row = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    pixels = row.view(1, 1, 1, 1, 7).expand(1, 3, 1, 1, 7)               # [B, P, F, H, W]
    theirs = (VaeImageProcessor.pt_to_numpy(VaeImageProcessor.denormalize(pixels[:, :, 0])) * 255).round()
    ours = to_uint8(pixels)
    assert ours.dtype == torch.uint8 and ours.shape == (1, 1, 1, 7, 3)
    assert ours[0, 0].numpy().tolist() == theirs.astype("uint8")[0].tolist()
    assert ours[0, 0, 0, :, 0].tolist() == [0, 0, 64, 128, 191, 255, 255]


class PoolingVideoCodec(Codec):
    """A toy video codec of the CAUSAL space: each latent frame from its own frames only, so a frame encoded in a
    batch must equal it encoded alone."""

    space = CAUSAL

    def __init__(self):
        super().__init__()
        self.mix = torch.randn(CAUSAL.channels, 3, generator=torch.Generator().manual_seed(0))

    def encode_raw(self, pixels):
        f = CAUSAL.spatial_factor
        pooled = torch.nn.functional.avg_pool3d(pixels, (1, f, f))
        return torch.einsum("cp,bpthw->bcthw", self.mix, pooled)[:, :, :1]

    def decode_raw(self, raw):
        f = CAUSAL.spatial_factor
        return raw[:, :3].repeat_interleave(f, -1).repeat_interleave(f, -2)


def test_a_per_frame_codec_keeps_each_clip_of_a_batch_its_own_frames():
    """The per-frame codec folds a batch's frames into one batch of one-frame videos and back: two clips encoded
    (and decoded) together equal each frame of each clip alone, in order (the tests had batch 1 only)."""
    video = PoolingVideoCodec()
    codec = per_frame(video)
    f = CAUSAL.spatial_factor
    pixels = torch.randn(2, 3, 3, 2 * f, 2 * f, generator=torch.Generator().manual_seed(1))
    raw = codec.encode_raw(pixels)
    for b in range(2):
        for k in range(3):
            alone = video.encode_raw(pixels[b:b + 1, :, k:k + 1])[0, :, 0]
            assert torch.equal(raw[b, :, k], alone), (b, k)
    back = codec.decode_raw(raw)
    for b in range(2):
        for k in range(3):
            assert torch.equal(back[b, :, k], video.decode_raw(raw[b:b + 1, :, k:k + 1])[0, :, 0]), (b, k)


def test_the_natural_clip_length_is_16_frames_or_the_next_count_wan_holds():
    """Wan's VAE compresses time 4x causally: 4k + 1 frames (WanPipeline's 81 make 21 latent frames). The command
    line's default clip, 16 frames, becomes 17 beside a Wan expert; a broken rule fails here (it hung the suite)."""
    from confiner_core.generate import natural_frames
    from confiner_core.latent_spaces import SD15, WAN21

    assert WAN21.latent_frames(81) == 21 and WAN21.pixel_frames(21) == 81
    assert (natural_frames([SD15]), natural_frames([WAN21]), natural_frames([SD15, WAN21])) == (16, 17, 17)
