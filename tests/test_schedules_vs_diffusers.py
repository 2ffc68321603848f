"""The core's schedule, noising, DDIM and Euler maths against diffusers' own schedulers (to 1e-5)."""

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from confiner_core import schedules as S
from confiner_core.experts import Prediction
from confiner_core.prediction import from_x0_eps, to_x0_eps
from confiner_core.sampling import ddim_step, diffuse, euler_step, initial_latent
from confiner_core.timesteps import spaced_timesteps

EXPERTS = {
    "sd15": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1),
    "animatediff": dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, steps_offset=1),
    "modelscope": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1),
    "lavie": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, steps_offset=1),   # its DDIM sampler
}

#: CompVis/stable-diffusion-v1-4's scheduler/scheduler_config.json, which LaVie's samplers start from
SD14_SCHEDULER_CONFIG = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                         "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
                         "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False}


def ddim(name, **kw):
    return DDIMScheduler(**EXPERTS[name], clip_sample=False, set_alpha_to_one=False, **kw)


@pytest.mark.parametrize("name", EXPERTS)
def test_alphas_cumprod_match(name):
    ours = S.from_diffusers_config(dict(ddim(name).config))
    ref = ddim(name).alphas_cumprod.double()
    assert torch.allclose(ours.alphas_cumprod, ref, atol=1e-7)
    assert ours.final_alpha ** 2 == pytest.approx(float(ref[0]))  # set_alpha_to_one=False
    assert torch.allclose(S.named(name).alphas_cumprod, ref, atol=1e-7)
    assert S.named(name).final_alpha ** 2 == pytest.approx(float(ddim(name).final_alpha_cumprod))   # the last step


def test_lavies_schedule_is_its_ddim_samplers():
    """LaVie (base/sample.py) builds DDIMScheduler.from_pretrained(SD 1.4, subfolder="scheduler", beta_start=0.0001,
    beta_end=0.02, beta_schedule="linear"): SD 1.4's config gives the rest, its last step ending at abar_0."""
    ref = DDIMScheduler.from_config(SD14_SCHEDULER_CONFIG, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    lavie = S.named("lavie")
    assert torch.allclose(lavie.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-7)
    assert lavie.final_alpha ** 2 == pytest.approx(float(ref.final_alpha_cumprod))
    assert float(ref.final_alpha_cumprod) < 1   # (diffusers' DDIM default would end at the clean sample)


def test_known_noise_levels():
    # figures quoted in the method notes: SD t=999 abar .00466, AnimateDiff t=999 .00158
    assert float(S.named("sd15").alphas_cumprod[999]) == pytest.approx(0.00466, abs=1e-5)
    assert float(S.named("animatediff").alphas_cumprod[999]) == pytest.approx(0.00158, abs=1e-5)
    ad, sd = S.named("animatediff"), S.named("sd15")
    t = ad.timestep_for_noise_level(float(sd.ve_sigmas[999]))
    assert 900 <= t <= 910  # SD t=999 ~ AnimateDiff t~905


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 4, 5, 7, 50])
def test_timesteps_match_diffusers(spacing, n):
    sched = DDIMScheduler(**EXPERTS["sd15"], timestep_spacing=spacing)
    sched.set_timesteps(n)
    offset = 1 if spacing == "leading" else 0
    assert spaced_timesteps(n, 999, spacing, steps_offset=offset) == [int(t) for t in sched.timesteps]


@pytest.mark.parametrize("n", [61, 103, 201])
def test_trailing_drops_the_step_diffusers_adds_at_minus_one(n):
    """diffusers' trailing rule takes a float arange that has one element more than asked for these counts; its
    last timestep is -1, outside the schedule. The rest match diffusers, and no count gives a step below 0."""
    sched = DDIMScheduler(**EXPERTS["sd15"], timestep_spacing="trailing")
    sched.set_timesteps(n)
    theirs = [int(t) for t in sched.timesteps]
    assert len(theirs) == n + 1 and theirs[-1] == -1
    assert spaced_timesteps(n, 999, "trailing") == theirs[:n]
    for t_max in range(1, 200):
        for steps in range(1, t_max + 2):
            ts = spaced_timesteps(steps, t_max, "trailing")
            assert len(ts) == steps and ts[-1] >= 0 and ts[0] == t_max, (t_max, steps)


def test_refinement_range_starts_at_te():
    assert spaced_timesteps(5, 100, "trailing") == [100, 80, 60, 39, 19]
    with pytest.raises(ValueError, match="do not fit"):
        spaced_timesteps(200, 100)


@pytest.mark.parametrize("name", EXPERTS)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_diffusers(name, prediction, eta):
    sched = ddim(name, prediction_type=prediction)
    sched.set_timesteps(10)
    ours = S.from_diffusers_config(dict(sched.config))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 8, 8, generator=g)
    out = torch.randn(2, 4, 3, 8, 8, generator=g)
    z = torch.randn(2, 4, 3, 8, 8, generator=g)
    for t in [int(v) for v in sched.timesteps]:
        t_prev = t - 1000 // 10
        t_prev = t_prev if t_prev >= 0 else -1  # diffusers: prev_t < 0 means final_alpha_cumprod
        ref = sched.step(out, t, x, eta=eta, variance_noise=z if eta else None)
        alpha, sigma = ours.coefficients(t)
        pred = Prediction(*to_x0_eps(out, x, alpha, sigma, prediction))
        assert torch.allclose(pred.x0, ref.pred_original_sample, atol=1e-5)
        mine = ddim_step(ours, pred, t, t_prev, eta, z if eta else None)
        assert torch.allclose(mine, ref.prev_sample, atol=1e-5), (t, (mine - ref.prev_sample).abs().max())


@pytest.mark.parametrize("name", EXPERTS)
def test_add_noise_matches_diffusers(name):
    sched, ours = ddim(name), S.named(name)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    for t in [0, 100, 500, 999]:
        ref = sched.add_noise(x0, eps, torch.tensor([t]))
        assert torch.allclose(diffuse(ours, x0, t, eps), ref, atol=1e-5)


@pytest.mark.parametrize("name", ["animatediff", "sd15"])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_euler_trailing_matches_diffusers(name, n):
    cfg = EXPERTS[name]
    sched = EulerDiscreteScheduler(**cfg, timestep_spacing="trailing")
    sched.set_timesteps(n)
    ours = S.from_betas(cfg["beta_schedule"], cfg["beta_start"], cfg["beta_end"])
    ts = spaced_timesteps(n, 999, "trailing")
    assert ts == [int(t) for t in sched.timesteps]
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(1, 4, 2, 8, 8, generator=g)
    x_ve = noise * sched.init_noise_sigma
    x_vp = initial_latent(ours, noise, ts[0], "euler")
    for k, t in enumerate(ts):
        t_prev = ts[k + 1] if k + 1 < n else -1
        eps = torch.randn(1, 4, 2, 8, 8, generator=g)
        alpha, sigma = ours.coefficients(t)
        # the model sees the same VP input in both worlds
        assert torch.allclose(sched.scale_model_input(x_ve, sched.timesteps[k]), x_vp, atol=1e-5)
        x_ve = sched.step(eps, sched.timesteps[k], x_ve).prev_sample
        x_vp = euler_step(ours, Prediction(*to_x0_eps(eps, x_vp, alpha, sigma, "epsilon")), t_prev)
        a_prev = ours.coefficients(t_prev)[0] if t_prev >= 0 else 1.0
        assert torch.allclose(x_vp / a_prev, x_ve, atol=1e-4 * max(1.0, float(x_ve.abs().max())))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_prediction_round_trip_vp(prediction):
    sch = S.named("sd15")
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in [10, 400, 999]:
        a, s = sch.coefficients(t)
        x_t = a * x0 + s * eps
        out = from_x0_eps(x0, eps, a, s, prediction)
        x0_hat, eps_hat = to_x0_eps(out, x_t, a, s, prediction)
        assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, eps, atol=1e-4)


def test_flow_schedule_and_prediction():
    sch = S.flow_schedule(shift=3.0)
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 16, 2, 4, 4, generator=g)
    a, s = sch.coefficients(700)
    assert a + s == pytest.approx(1.0)
    x_t = a * x0 + s * eps
    x0_hat, eps_hat = to_x0_eps(eps - x0, x_t, a, s, "flow")
    assert torch.allclose(x0_hat, x0, atol=1e-5) and torch.allclose(eps_hat, eps, atol=1e-5)


def test_ve_sigma_table_round_trip():
    sd = S.named("sd15")
    back = S.from_ve_sigmas(sd.ve_sigmas.float())
    assert torch.allclose(back.alphas_cumprod, sd.alphas_cumprod, atol=1e-6)
    assert float(sd.ve_sigmas[-1]) == pytest.approx(14.6146, abs=1e-3)
    assert float(S.named("animatediff").ve_sigmas[-1]) == pytest.approx(25.1461, abs=1e-3)


def test_continuous_noise_level_match_is_exact():
    sd, ad = S.named("sd15"), S.named("animatediff")
    for t in [20, 100, 600, 999]:
        a, s = sd.coefficients(t)
        tc = ad.timestep_for_noise_level(s / a, continuous=True)
        a2, s2 = ad.coefficients(tc)
        assert s2 / a2 == pytest.approx(s / a, rel=1e-6)


def test_a_flow_tables_top_interval_is_finite_and_its_inverse_exact():
    """Between a flow table's last two entries (sigma 1 on top, alpha 0) log-linear interpolation gave NaN for every
    fractional t, and the continuous inverse put every noise level in it at the lower entry (a review). There sigma is
    interpolated linearly, finite up to sigma 1, and the inverse reads it back."""
    flow = S.flow_schedule(shift=3.0)
    low, top = flow.coefficients(998)[1], flow.coefficients(999)[1]
    a, s = flow.coefficients(998.25)
    assert a + s == pytest.approx(1.0) and s == pytest.approx(0.75 * low + 0.25 * top) and low < s < top == 1.0
    assert flow.timestep_for_noise_level(s / a, continuous=True) == pytest.approx(998.25)
    assert flow.timestep_for_noise_level(0.9999 / 0.0001, continuous=True) == pytest.approx(
        998 + (0.9999 - low) / (1 - low))


def test_bad_timestep_is_rejected():
    with pytest.raises(ValueError, match="outside schedule"):
        S.named("sd15").coefficients(1000)


def test_a_schedule_prints_in_one_line_with_its_name_kind_ends_and_shift():
    """print(expert.schedule) showed both 1000-entry tables (22,377 characters, a trial)."""
    from confiner_core.schedules import flow_schedule, named

    vp, flow = repr(named("sd15")), repr(flow_schedule(shift=3.0, name="wan"))
    assert len(vp) < 120 and "\n" not in vp and vp.startswith("NoiseSchedule('sd15', vp, 1000 timesteps")
    assert flow.startswith("NoiseSchedule('wan', flow, 1000 timesteps") and flow.endswith("shift 3)")


@pytest.mark.parametrize("kind,alphas,sigmas,fix", [
    # a k-diffusion/ComfyUI table of sigma/alpha given as sigmas of a 'vp' schedule: v's x0 was off by up to 30
    ("vp", torch.ones(1000), torch.linspace(0.03, 80, 1000), r"from_ve_sigmas\(sigmas\)"),
    ("flow", torch.linspace(1, 0.5, 1000), torch.linspace(0.001, 1, 1000), r"flow_schedule\(shift\)"),
    ("vp", torch.full((10,), float("nan")), torch.zeros(10), r"from_ve_sigmas"),
])
def test_a_schedule_that_breaks_its_kinds_identity_is_refused(kind, alphas, sigmas, fix):
    """The v and flow predictions and a flow expert's timesteps assume alpha^2 + sigma^2 = 1 (vp) or alpha + sigma = 1
    (flow); a hand-made table that broke it was taken silently."""
    with pytest.raises(ValueError, match=rf"^schedule 'mine' is declared '{kind}', whose tables hold .+ = 1.*, but at "
                                         rf"t=\d+ it is .+: .*{fix}"):
        S.NoiseSchedule(alphas.double(), sigmas.double(), kind, name="mine")
    for named in ("sd15", "animatediff", "modelscope", "lavie"):   # (every built-in table holds its identity)
        S.named(named)
    S.flow_schedule(shift=5.0)
    S.from_ve_sigmas(torch.linspace(0.03, 14.6, 1000))
    S.from_ve_sigmas(torch.linspace(0.001, 1, 1000), "flow")
    sd = S.named("sd15")
    for dtype in (torch.float16, torch.bfloat16):   # a table's own rounding is no contradiction (1.001 in float16)
        S.NoiseSchedule(sd.alphas.to(dtype), sd.sigmas.to(dtype), "vp")
    with pytest.raises(ValueError, match=r"final_alpha 0.5 and final_sigma 0 give 0.25: use \(1, 0\)"):
        S.NoiseSchedule(sd.alphas, sd.sigmas, "vp", final_alpha=0.5, final_sigma=0.0)


#: schedulers of models no family loads, whose tables take more than betas (CogVideoX's SNR shift, unCLIP's cosine)
NOT_OURS = ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler", "UnCLIPScheduler")


def test_a_config_that_leaves_keys_out_takes_its_scheduler_classs_defaults():
    """A scheduler config that leaves a key out takes its class's default in diffusers (PNDM: set_alpha_to_one
    False). For every diffusers scheduler of a beta schedule, a config naming the class alone gives the schedule and
    the end the class itself gives with its defaults (alphas_cumprod, final_alpha_cumprod where it has one)."""
    import inspect

    import diffusers

    from confiner_core.diffusers_backend.families.base import with_class_defaults

    checked = []
    for name in dir(diffusers):
        cls = getattr(diffusers, name)
        if not (name.endswith("Scheduler") and isinstance(cls, type) and hasattr(cls, "from_config")):
            continue
        parameters = inspect.signature(cls.__init__).parameters
        if "beta_schedule" not in parameters or "FlowMatch" in name or name in NOT_OURS:
            continue
        try:
            scheduler = cls()
        except Exception:   # noqa: BLE001 - a scheduler that needs arguments (none of the beta ones here)
            continue
        ours = S.from_diffusers_config(with_class_defaults({"_class_name": name}))
        assert torch.allclose(ours.alphas ** 2, scheduler.alphas_cumprod.double(), rtol=1e-6, atol=0), name
        final = getattr(scheduler, "final_alpha_cumprod", None)
        if final is not None:
            assert ours.final_alpha ** 2 == pytest.approx(float(final), rel=1e-6), name
        checked.append(name)
    assert {"DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler"} <= set(checked), checked
