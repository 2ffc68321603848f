"""Algorithm 1 and the chain, checked with recording experts whose predictions are known in closed form."""

import re
import warnings
from dataclasses import replace

import pytest
import torch

from confiner_core import schedules as S
from confiner_core.chain import (ChainConfig, generate_structure, refine_structure, refine_timesteps, run_chain,
                                  validate_chain)
from confiner_core.errors import ConFinerWarning, NonFiniteError
from confiner_core.experts import EvaluationLog, Expert
from confiner_core.latent_spaces import SD15, SDXL
from confiner_core.layout import FRAMES, VIDEO
from confiner_core.prediction import from_x0_eps
from confiner_core.refine import coordinated_step, matched_timestep, refine_coordinated
from confiner_core.sampling import randn_like, seeded

SHAPE = (1, 4, 3, 4, 4)


class OracleExpert(Expert):
    """Always 'knows' the clean sample x0*: returns the eps (or v) consistent with it, and records every call."""

    def __init__(self, x0, schedule, layout=VIDEO, prediction="epsilon", name="oracle"):
        self.x0, self.schedule, self.layout, self.prediction, self.name = x0, schedule, layout, prediction, name
        self.calls = []

    def encode(self, prompt):
        return prompt

    def forward(self, x, t, conds):
        self.calls.append((t, x.clone()))
        a, s = self.schedule.coefficients(t)
        x0 = self.x0 if self.layout == VIDEO else self.x0[0].permute(1, 0, 2, 3)
        eps = (x - a * x0) / s
        return [from_x0_eps(x0, eps, a, s, self.prediction) for _ in conds]


def x0_star():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))


def test_coordinated_step_renoises_on_each_experts_schedule():
    x0 = x0_star()
    sd, lavie = S.named("sd15"), S.named("lavie")
    spatial_e, temporal_e = OracleExpert(x0, sd, FRAMES), OracleExpert(x0, lavie)
    spatial, temporal = spatial_e.bind(), temporal_e.bind()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    t = 600  # SD t=600 ~ LaVie t=422: far apart here (near t=100 the two schedules happen to cross)
    x_back, pred_t = coordinated_step(spatial, temporal, x, t, torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    eps, eps2 = randn_like(x, replay), randn_like(x, replay)
    # Eq. 9: the temporal expert saw x0_s re-noised with the TEMPORAL schedule's coefficients at t
    (t_seen, x_seen), = temporal_e.calls
    a_T, s_T = lavie.coefficients(t)
    assert t_seen == t
    assert torch.allclose(x_seen, a_T * x0 + s_T * eps, atol=1e-6)
    a_S, s_S = sd.coefficients(t)
    assert not torch.allclose(x_seen, a_S * x0 + s_S * eps, atol=1e-3)  # the schedules really differ here
    # Eq. 11: back on the SPATIAL schedule with fresh noise
    assert torch.allclose(x_back, a_S * pred_t.x0 + s_S * eps2, atol=1e-6)
    assert torch.allclose(pred_t.x0, x0, atol=1e-5)


def test_noise_level_matching_picks_equal_noise_timestep():
    x0 = x0_star()
    sd, lavie = S.named("sd15"), S.named("lavie")
    temporal_e = OracleExpert(x0, lavie)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    coordinated_step(OracleExpert(x0, sd).bind(), temporal_e.bind(), x, 600, torch.Generator().manual_seed(5),
                     matching="nearest")
    t_T = temporal_e.calls[0][0]
    assert t_T == matched_timestep(sd, lavie, 600, "nearest")
    assert 415 <= t_T <= 430  # the method notes: SD t=600 ~ LaVie t=422


def test_one_int_seed_to_both_stages_draws_eq6_apart_from_the_control_stage(monkeypatch):
    """generate_structure and refine_structure took an int seed on one stream: with DDIM's eta the control stage's
    first draw was Eq. 6's noise itself (a review). The control stage alone has a stream of its own; run_chain, one
    generator through both stages, is unchanged."""
    import confiner_core.chain as chain_module
    import confiner_core.sampling as sampling_module

    draws = []

    def recording(original):
        def draw(x, generator):
            draws.append(original(x, generator))
            return draws[-1]
        return draw
    monkeypatch.setattr(sampling_module, "randn_like", recording(sampling_module.randn_like))
    monkeypatch.setattr(chain_module, "randn_like", recording(chain_module.randn_like))
    d = OracleExpert(x0_star(), S.named("sd15")).bind()
    config = ChainConfig(control_sampler="ddim", control_eta=1.0)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    structure = generate_structure(d, noise, config, 5)
    control_draws = len(draws)
    refine_structure(d, d, structure, config, 5)
    assert control_draws == config.control_steps and not torch.equal(draws[0], draws[control_draws])   # Eq. 6: next


def test_the_coordinated_loop_takes_an_int_seed_as_the_chains_stages_do():
    """``refine_coordinated`` refused an int, which run_chain and the other stages take (a researcher's trial); its
    draws are the int's own stream, as theirs (:func:`~confiner_core.sampling.seeded`). ``coordinated_step`` still
    takes a generator: called with one int each step it would draw the same noise at every step."""
    d = OracleExpert(x0_star(), S.named("sd15")).bind()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    by_int = refine_coordinated(d, d, x, [100, 60, 20], 4)
    assert torch.equal(by_int, refine_coordinated(d, d, x, [100, 60, 20], seeded(4, "test")))
    assert not torch.equal(by_int, refine_coordinated(d, d, x, [100, 60, 20], 5))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_identical_experts_follow_algorithm_1(prediction):
    """Same expert, same schedule: every refinement step ends at a_prev x0* + s_prev eps', with eps' the
    Eq. 11 noise of that step, and three evaluations per step."""
    x0 = x0_star()
    sd = S.named("sd15")
    log = EvaluationLog()
    expert = OracleExpert(x0, sd, prediction=prediction)
    d = expert.bind(log=log)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ts = [100, 60, 20]
    out = refine_coordinated(d, d, x, ts, torch.Generator().manual_seed(9))
    replay = torch.Generator().manual_seed(9)
    for k, t in enumerate(ts):
        randn_like(x, replay)
        eps2 = randn_like(x, replay)
    t_prev = -1
    a_prev, s_prev = sd.coefficients(t_prev)
    assert torch.allclose(out, a_prev * x0 + s_prev * eps2, atol=1e-5)
    # called on its own, it counts under "refine" (a researcher's direct call was counted "unstaged")
    assert dict(log.evaluations) == {"refine": 3 * len(ts)}
    assert [t for t, _ in expert.calls] == [t for t in ts for _ in range(3)]


def test_run_chain_counts_and_reproduces():
    x0 = x0_star()
    make = lambda sch, lay: OracleExpert(x0, S.named(sch), lay)
    log = EvaluationLog()
    c, s, t = (make("animatediff", VIDEO).bind(log=log), make("sd15", FRAMES).bind(log=log),
               make("lavie", VIDEO).bind(log=log))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    r1 = run_chain(c, s, t, noise, ChainConfig(), torch.Generator().manual_seed(3))
    assert log.evaluations == {"control": 4, "refine": 15}
    r2 = run_chain(c, s, t, noise, ChainConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(r1.latent, r2.latent)
    r3 = run_chain(c, s, t, noise, ChainConfig(), torch.Generator().manual_seed(4))
    assert not torch.equal(r1.latent, r3.latent)
    # Euler control with an exact oracle lands on x0* exactly
    assert torch.allclose(r1.structure, x0, atol=1e-4)
    # an int seed, as generate_long takes one, reproduces its run
    assert torch.equal(run_chain(c, s, t, noise, ChainConfig(), 3).latent, run_chain(c, s, t, noise, ChainConfig(),
                                                                                      3).latent)
    # the config as the run settled it: the refining expert's default T_e, the paper's timestep matching
    assert r1.config == ChainConfig(te=100, matching="same_index")
    # no generator, a seed as text, a seed out of range: refused before any evaluation, saying what to pass
    for wrong, error, said in ((None, TypeError, r"^run_chain needs a seed \(an int\) or a seeded torch\.Generator"),
                               ("3", TypeError, r"^run_chain needs a seed \(an int\) or a seeded torch\.Generator"),
                               (-1, ValueError, r"^run_chain: seed must be an integer in 0\.\.18446744073709551615")):
        with pytest.raises(error, match=said):
            run_chain(c, s, t, noise, ChainConfig(), wrong)
    assert sum(log.evaluations.values()) == 5 * 19


def test_an_int_seed_never_draws_the_noise_its_caller_drew_with_that_seed_again():
    """run_chain(..., noise, config, 0) with noise drawn by torch.Generator().manual_seed(0): an int read as that
    generator drew the same numbers again as Eq. 6's noise (a re-check found the correlation 1.0)."""
    x0 = x0_star()
    c, s, t = (OracleExpert(x0, S.named(name)).bind() for name in ("animatediff", "sd15", "lavie"))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))

    def eq6_noise(generator) -> torch.Tensor:   # Eq. 6: V'_{T_e} = a V_0 + s eps, read back from the callback
        seen = {}
        result = run_chain(c, s, t, noise, ChainConfig(te=100), generator, callback=lambda info: seen.setdefault(
            "noised", info.get("noised_structure")) if info["stage"] == "refine" else None)
        a, sigma = S.named("sd15").coefficients(S.named("sd15").index(100))
        return (seen["noised"] - a * result.structure) / sigma

    assert torch.allclose(eq6_noise(torch.Generator().manual_seed(0)), noise, atol=1e-4)   # the trap, as it was
    assert not torch.allclose(eq6_noise(0), noise, atol=0.5)


def test_steps_beyond_a_default_te_say_where_te_came_from():
    """ChainConfig(refine_steps=500) left T_e to the experts, and the refusal named "T_e=100" as if it were set."""
    x0 = x0_star()
    c, s, t = (OracleExpert(x0, S.named(name)).bind() for name in ("animatediff", "sd15", "lavie"))
    with pytest.raises(ValueError, match=re.escape("500 refinement steps do not fit between T_e=100 and 0; use at most "
                                                   "100 steps or raise T_e (T_e automatic: 100 is the refining expert's "
                                                   "default)")):
        run_chain(c, s, t, torch.randn(SHAPE), ChainConfig(refine_steps=500), 0)
    with pytest.raises(ValueError, match=r"raise T_e$"):   # a T_e set is the user's own
        run_chain(c, s, t, torch.randn(SHAPE), ChainConfig(te=100, refine_steps=500), 0)


def test_bind_chain_binds_the_experts_as_generate_does():
    """A researcher's expert.bind(prompt) ran the refining experts at cfg 1, where generate() binds them at their
    default guidance (7.5 for SD 1.5): bind_chain binds all three as generate() does, which calls it."""
    from confiner_core.experts import bind_chain

    class Guided(OracleExpert):
        default_guidance = 7.5

    x0 = x0_star()
    experts = {role: Guided(x0, S.named(schedule), name=role)
               for role, schedule in (("control", "animatediff"), ("spatial", "sd15"), ("temporal", "lavie"))}
    log = EvaluationLog()
    bound = bind_chain(experts, "a corgi", "blurry", log=log)
    assert {role: d.guidance_scale for role, d in bound.items()} == {"control": 1.0, "spatial": 7.5, "temporal": 7.5}
    assert all(d.log is log and d.expert is experts[role] for role, d in bound.items())
    assert (bound["spatial"].positive, bound["spatial"].negative) == ("a corgi", "blurry")
    # the temporal expert, first called in the refinement, encodes its prompts then
    assert bound["temporal"].encode_later is not None and bound["spatial"].encode_later is None
    assert bound["temporal"].encoded().negative == "blurry"
    bound = bind_chain({**experts, "temporal": None}, "a corgi", control_cfg=2.0, spatial_cfg=3.0)
    assert bound["temporal"] is None and (bound["control"].guidance_scale, bound["spatial"].guidance_scale) == (2, 3)
    # what it cannot bind, said by name (a re-check met 'NoneType' object has no attribute 'bind')
    for wrong, error, said in (({"spatial": experts["spatial"]}, ValueError, "bind_chain: experts has roles 'spatial'; "
                                "it needs 'control' and any of 'spatial', 'temporal'"),
                               ({**experts, "contrl": experts["control"]}, ValueError, "(not 'contrl')"),
                               (list(experts.values()), TypeError, "bind_chain: experts must be role -> Expert"),
                               (bound, TypeError, "bind_chain: the control, spatial expert is bound already"),
                               # (a trial's function met "'function' object has no attribute 'bind'")
                               ({**experts, "temporal": lambda x, t, c: x}, TypeError,
                                "bind_chain: the temporal expert must be an Expert, got function: make it one "
                                "(confiner_core.experts.Expert:"),
                               ({**experts, "temporal": torch.nn.Conv3d(4, 4, 1)}, TypeError,
                                "bind_chain: the temporal expert must be an Expert, got Conv3d")):
        with pytest.raises(error, match=re.escape(said)):
            bind_chain(wrong, "a corgi")


def test_the_callback_sees_every_step_and_the_coordinated_hand_over():
    """``callback`` gets each control and refinement step; a coordinated step also its V' (``renoised``: what line
    14's spatial evaluation read, Eq. 11), the temporal expert's input V'' (``temporal_input``, Eq. 9) and its x0
    (Eq. 10), and the spatial x0 of line 10 (``spatial_denoised``), which Eq. 9 re-noises; the first refinement
    step also V'_{T_e} of Eq. 6 (``noised_structure``); the last step's ``x`` is the result, and the callback
    changes nothing. (A researcher found line 14's x0 alone, and the noised structure nowhere.)"""
    x0 = x0_star()
    control_e, spatial_e, temporal_e = (OracleExpert(x0, S.named("animatediff")), OracleExpert(x0, S.named("sd15")),
                                        OracleExpert(x0 * 0.5, S.named("lavie")))
    c, s, t = control_e.bind(), spatial_e.bind(), temporal_e.bind()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    infos = []
    result = run_chain(c, s, t, noise, ChainConfig(), torch.Generator().manual_seed(3), callback=infos.append)
    assert [(i["stage"], i["i"]) for i in infos] == [("control", k) for k in range(4)] + [("refine", k)
                                                                                          for k in range(5)]
    assert [i["timestep"] for i in infos[4:]] == [100, 80, 60, 40, 20]
    refine_calls = spatial_e.calls   # two spatial evaluations per step: line 10, then line 14 on V'
    for k, info in enumerate(infos[4:]):
        assert torch.equal(info["renoised"], refine_calls[2 * k + 1][1])
        assert torch.equal(info["temporal_input"], temporal_e.calls[k][1])      # what the temporal oracle read
        assert info["temporal_t"] == temporal_e.calls[k][0] == info["temporal_timestep"]   # where (VP: one number)
        assert torch.allclose(info["temporal_denoised"], x0 * 0.5, atol=1e-5)   # the temporal oracle's own x0
        assert torch.allclose(info["denoised"], x0, atol=1e-5)                   # line 14: the spatial one's
        assert torch.allclose(info["spatial_denoised"], x0, atol=1e-5)           # line 10: the spatial one's too
        # Eq. 9 on the temporal (LaVie) schedule: V'' = alpha x0 + sigma eps, eps a unit Gaussian draw
        alpha, sigma = temporal_e.schedule.coefficients(temporal_e.calls[k][0])
        eps = (info["temporal_input"] - alpha * info["spatial_denoised"]) / sigma
        assert abs(eps.std().item() - 1) < 0.15 and abs(eps.mean().item()) < 0.15
    assert torch.equal(infos[4]["noised_structure"], refine_calls[0][1])   # line 10's first input: V'_{T_e}
    assert not any("noised_structure" in i for i in infos[:4] + infos[5:])
    assert "renoised" not in infos[0] and torch.equal(infos[-1]["x"], result.latent)
    again = run_chain(c, s, t, noise, ChainConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(again.latent, result.latent)


def test_a_coordinated_step_says_where_on_a_flow_schedule_the_temporal_expert_was_evaluated():
    """``temporal_t`` (a table position) and ``temporal_timestep`` (the network timestep, 1000 sigma for a flow
    expert): SD 1.5 refining beside a flow expert of shift 5 at T_e 400, matched by noise level; the sigma read from
    diffusers' FlowMatchEuler table at shift 5."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    x0 = x0_star()
    spatial_e, temporal_e = OracleExpert(x0, S.named("sd15")), OracleExpert(x0, S.flow_schedule(5.0),
                                                                            prediction="flow")
    seen = {}
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    coordinated_step(spatial_e.bind(), temporal_e.bind(), x, 400, torch.Generator().manual_seed(5), "nearest", seen)
    (t_seen, _), = temporal_e.calls
    assert seen["temporal_t"] == t_seen and float(t_seen).is_integer() and t_seen != 400
    sigmas = FlowMatchEulerDiscreteScheduler(shift=5.0).sigmas.double().flip(0)   # ascending with the position
    assert seen["temporal_timestep"] == pytest.approx(1000 * sigmas[int(t_seen)].item(), abs=1e-4)   # (fp32 table)


def test_a_size_is_checked_against_every_experts_factor_and_a_hosts_placeholder_size_is_not():
    """An SD-space structure (8x) beside a Wan 2.2 5B expert (16x): 8x8 pixels cannot be encoded there, 16x16 can.
    The Refine Sampler checks before its structure exists with a placeholder latent of 1x1 (sizes=False): the size
    check refused every such graph there (a review)."""
    from confiner_core.chain import validate_experts
    from confiner_core.latent_spaces import WAN21, wan22_space

    x0 = x0_star()
    sd = OracleExpert(x0, S.named("sd15")).bind()
    wan22 = OracleExpert(torch.zeros(1, 48, 2, 1, 1), S.flow_schedule(5.0), prediction="flow")
    wan22.latent_space = wan22_space([0.0] * 48, [1.0] * 48)
    roles = {"control": sd, "spatial": sd, "temporal": wan22.bind()}
    with pytest.raises(ValueError, match=r"^the video is 8x8 pixels, but the temporal expert's Wan 2\.2 5B latent "
                                         r"space takes multiples of 16: make both multiples of 16$"):
        validate_experts(roles, (1, 4, 5, 1, 1), "control")
    validate_experts(roles, (1, 4, 5, 2, 2), "control")
    validate_experts(roles, (1, 4, 5, 1, 1), "control", sizes=False)
    # the source= hint only where another space has as many channels (a 16-frame SD structure and a Wan temporal
    # expert: the frame count is the fault, source= would lead away from it)
    wan21 = OracleExpert(torch.zeros(1, 16, 2, 1, 1), S.flow_schedule(3.0), prediction="flow")
    wan21.latent_space = WAN21
    with pytest.raises(ValueError, match=r"16 frames would be cut by its VAE: use 13 or 17$"):
        validate_experts({"control": sd, "spatial": sd, "temporal": wan21.bind()}, (1, 4, 16, 2, 2), "control",
                         "refining")


def test_the_temporal_only_ablation_needs_no_spatial_expert_and_makes_the_same_video():
    """Mode 'temporal' evaluates no spatial expert: left out (None), the video is the one made with a spatial expert
    given (which is never called); every other mode refuses None by name, before any evaluation."""
    x0 = x0_star()
    log = EvaluationLog()
    c, s, t = (OracleExpert(x0, S.named("animatediff")).bind(log=log),
               OracleExpert(x0, S.named("sd15"), FRAMES, name="spatial"),
               OracleExpert(x0, S.named("lavie")).bind(log=log))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    config = ChainConfig(mode="temporal")
    given = run_chain(c, s.bind(log=log), t, noise, config, torch.Generator().manual_seed(3))
    alone = run_chain(c, None, t, noise, config, torch.Generator().manual_seed(3))
    assert torch.equal(given.latent, alone.latent) and s.calls == []
    assert log.evaluations == {"control": 8, "refine": 10}
    g = torch.Generator().manual_seed(3)
    for mode in ("coordinated", "standard", "alternate"):
        with pytest.raises(ValueError, match=rf"^mode '{mode}' needs a spatial expert \(None given\); only mode "
                                             r"'temporal' refines without one$"):
            run_chain(c, None, t, noise, ChainConfig(mode=mode), g)
    assert sum(log.evaluations.values()) == 18


def test_validation_rejects_bad_chains():
    x0 = x0_star()
    sd = S.named("sd15")
    good = OracleExpert(x0, sd).bind()
    with pytest.raises(ValueError, match="T_e"):
        validate_chain(good, good, good, SHAPE, ChainConfig(te=1000))
    with pytest.raises(ValueError, match="do not fit"):
        validate_chain(good, good, good, SHAPE, ChainConfig(te=3, refine_steps=5))
    with pytest.raises(ValueError, match="use at most 1 step or raise T_e"):   # (an artist read "1 steps")
        ChainConfig(te=1, refine_steps=2).validate()
    other = OracleExpert(x0, sd)
    other.latent_space = SDXL
    with pytest.raises(ValueError, match="latent space"):
        validate_chain(good, good, other.bind(), SHAPE, ChainConfig())
    wide = OracleExpert(x0, sd)
    wide.latent_space = replace(SD15, channels=16)
    with pytest.raises(ValueError, match="latent space"):  # 16 channels: another space, and no VAE to bridge
        validate_chain(wide.bind(), good, good, SHAPE, ChainConfig())
    short = OracleExpert(x0, sd)
    short.max_frames = 2
    with pytest.raises(ValueError, match="at most 2 frames"):
        validate_chain(good, good, short.bind(), SHAPE, ChainConfig())
    with pytest.raises(ValueError, match="needs a temporal expert"):
        validate_chain(good, good, None, SHAPE, ChainConfig(mode="coordinated"))
    with pytest.raises(ValueError, match="mode"):
        ChainConfig(mode="fast").validate()
    with pytest.raises(ValueError, match=r"te \(T_e\) must be an integer >= 1, got 100\.5"):
        ChainConfig(te=100.5).validate()   # the library's own check (the command line's --te is an integer)


def test_refine_timesteps_default_paper():
    # issue 12: the paper's uniform intervals (was [100, 80, 60, 39, 19], diffusers' trailing rule over [0, T_e])
    assert refine_timesteps(ChainConfig(te=100)) == [100, 80, 60, 40, 20]
    assert refine_timesteps(ChainConfig(te=200, refine_steps=10)) == list(range(200, 0, -20))
    assert refine_timesteps(ChainConfig(te=100, refine_spacing="trailing")) == [100, 80, 60, 39, 19]  # still there


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_refine_spacings_are_diffusers_schedulers_over_zero_to_te_and_the_structure_is_noised_to_the_first(spacing):
    """A spacing is DDIMScheduler's over T_e + 1 training steps as the SD family configures it (steps offset 1);
    the structure is noised to its first timestep, as diffusers' img2img noises to the first timestep it keeps, so
    the first evaluation is told the noise level it sees (under "leading" that is 81, not T_e = 100)."""
    from diffusers import DDIMScheduler

    from confiner_core.chain import refine_structure

    sched = DDIMScheduler(num_train_timesteps=101, timestep_spacing=spacing, steps_offset=1)
    sched.set_timesteps(5)
    config = ChainConfig(te=100, refine_spacing=spacing, mode="standard")
    ts = refine_timesteps(config)
    assert ts == [int(t) for t in sched.timesteps]
    structure, sd = x0_star(), S.named("sd15")
    expert = OracleExpert(structure, sd)
    refine_structure(expert.bind(), None, structure, config, torch.Generator().manual_seed(3))
    (t_first, x_first) = expert.calls[0]
    a, s = sd.coefficients(ts[0])
    assert t_first == ts[0]
    assert torch.allclose(x_first, a * structure + s * randn_like(structure, torch.Generator().manual_seed(3)),
                          atol=1e-6)


def test_a_flow_expert_is_never_evaluated_at_sigma_zero():
    """linspace ends at timestep 0: a VP expert's t = 0 is a noise level (DDIMScheduler's own last step), a flow
    expert's is sigma 0, the clean sample (the embedded Wan-like experts returned NaN there; checkpoints spent a step
    that changed nothing). Refused before any evaluation, naming the fix."""
    from confiner_core.chain import refine

    structure, g = x0_star(), torch.Generator().manual_seed(0)
    config = ChainConfig(te=250, refine_spacing="linspace", mode="standard")
    flow = OracleExpert(structure, S.flow_schedule(5.0), prediction="flow")
    with pytest.raises(ValueError, match=r"^the refinement's last timestep is 0 \(linspace spacing, 5 steps from "
                                         r"T_e 250\), where the spatial expert's flow noise level is 0.*'uniform'"):
        refine(flow.bind(), None, structure, config, g)
    assert flow.calls == []
    refine(flow.bind(), None, structure, replace(config, refine_spacing="trailing"), g)   # ends at 50
    vp = OracleExpert(structure, S.named("sd15"))
    refine(vp.bind(), None, structure, replace(config, te=100), g)
    assert [t for t, _ in vp.calls] == [100, 75, 50, 25, 0]


def test_a_flow_te_at_pure_noise_is_refused_and_steps_below_the_noise_floor_are_warned():
    """T_e = N is sigma 1 on a flow schedule: Eq. 6 returns pure noise, so 4 and 8 control steps gave the same bytes
    (a VP table's last entry keeps sqrt(abar) 0.07 of the structure). Below a flow table's smallest sigma (shift 5:
    0.00498) every timestep is evaluated at that sigma: T_e 5 spent four of five steps lowering no noise."""
    from confiner_core.chain import ConFinerWarning, refine

    structure, g = x0_star(), torch.Generator().manual_seed(0)
    flow = OracleExpert(structure, S.flow_schedule(5.0), prediction="flow")
    with pytest.raises(ValueError, match=r"^te \(T_e\)=1000 is sigma 1 on schedule 'flow shift 5.0', pure noise: "
                                         r"nothing of the structure would survive; choose a value in 1..999$"):
        refine(flow.bind(), None, structure, ChainConfig(te=1000, mode="standard"), g)
    S.named("sd15").check_te(999)   # VP: its last entry keeps some of the structure
    assert flow.calls == []
    # the table's floor as the schedule's own coefficients show it: sigma(t) stops falling below timestep 4.98
    assert [round(flow.bind().expert.schedule.coefficients(flow.bind().expert.schedule.index(t))[1], 5)
            for t in (5, 4, 2)] == [0.005, 0.00498, 0.00498]
    with pytest.warns(ConFinerWarning, match=r"refinement timesteps \[4, 3, 2, 1\] lie below the spatial expert's "
                                             r"smallest noise level \(sigma 0.00498, timestep 4.98\)"):
        validate_chain(flow.bind(), flow.bind(), None, tuple(structure.shape), ChainConfig(te=5, mode="standard"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConFinerWarning)   # one step below (leading's last, 1): nothing to say
        validate_chain(flow.bind(), flow.bind(), None, tuple(structure.shape),
                       ChainConfig(te=250, mode="standard", refine_spacing="leading"))


def test_a_misspelt_mode_is_named_by_every_stage_function():
    """run_chain, refine and validate_chain looked the mode up before checking it: a bare KeyError: 'coord'. The
    config refuses it when built; one changed behind its back (object.__setattr__) is refused by each function."""
    from confiner_core.chain import refine

    structure, g = x0_star(), torch.Generator().manual_seed(0)
    expert = OracleExpert(structure, S.named("sd15"))
    message = r"^mode must be one of \('coordinated', 'standard', 'temporal', 'alternate'\), got 'coord': did you mean 'coordinated'\?$"
    with pytest.raises(ValueError, match=message):
        ChainConfig(mode="coord")
    config = ChainConfig()
    object.__setattr__(config, "mode", "coord")
    for call in (lambda: refine(expert.bind(), expert.bind(), structure, config, g),
                 lambda: run_chain(expert.bind(), expert.bind(), expert.bind(), structure, config, g),
                 lambda: validate_chain(expert.bind(), expert.bind(), expert.bind(), tuple(structure.shape), config)):
        with pytest.raises(ValueError, match=message):
            call()
    assert expert.calls == []


def test_extract_structure_checks_te_and_its_schedule():
    """Eq. 6's entry point took T_e 0, 100.5 and, on a flow schedule, 1500 (clamped to pure noise: the structure
    discarded), as refine() and ChainConfig refuse them."""
    from confiner_core.chain import extract_structure

    structure, g = x0_star(), torch.Generator().manual_seed(0)
    for schedule, te, error, message in ((S.named("sd15"), 0, ValueError, r"te \(T_e\)=0 lies outside"),
                                         (S.flow_schedule(5.0), 1500, ValueError, r"te \(T_e\)=1500 lies outside"),
                                         (S.named("sd15"), 100.5, TypeError, "must be an integer network timestep"),
                                         ("sd15", 100, TypeError, "schedule must be a NoiseSchedule")):
        with pytest.raises(error, match=message):
            extract_structure(schedule, structure, te, g)
    a, s = S.named("sd15").coefficients(100)
    noised = extract_structure(S.named("sd15"), structure, 100, torch.Generator().manual_seed(1))
    assert torch.allclose(noised, a * structure + s * randn_like(structure, torch.Generator().manual_seed(1)))


def test_structure_noise_on_a_control_schedule_of_another_noise_level_is_warned():
    """structure_noise 'control' across a flow control expert and a VP spatial one noised the structure at
    noise-to-signal 0.11 and refined it as 0.34 without a word (the same_index mismatch was warned)."""
    import warnings as w

    from confiner_core.chain import ConFinerWarning

    structure = x0_star()
    flow = OracleExpert(structure, S.flow_schedule(1.0), prediction="flow")
    sd = OracleExpert(structure, S.named("sd15"))
    config = ChainConfig(te=100, mode="standard", structure_noise="control")
    with pytest.warns(ConFinerWarning, match=r"^structure_noise 'control' noises the structure on the control "
                                             r"expert's schedule, .* noise-to-signal is 0\.11 and the refining "
                                             r"expert's 0\.34; structure_noise 'spatial'"):
        validate_chain(flow.bind(), sd.bind(), None, tuple(structure.shape), config)
    with w.catch_warnings():
        w.simplefilter("error", ConFinerWarning)   # Eq. 6's default, or schedules that agree: nothing to say
        validate_chain(flow.bind(), sd.bind(), None, tuple(structure.shape), replace(config, structure_noise="spatial"))
        validate_chain(sd.bind(), sd.bind(), None, tuple(structure.shape), config)


def test_refine_timesteps_are_evenly_spaced_for_every_te_and_step_count():
    """t_k = T_e k / n for k = n..1, to the nearest integer (halves up): exact whenever n divides T_e."""
    import math
    from fractions import Fraction

    for te in range(1, 1000):
        for n in {1, 2, 3, 4, 5, 7, 8, 10, 16, 25, 50, te // 3 or 1, te // 2 or 1, te}:
            if n > te:
                continue
            ts = refine_timesteps(ChainConfig(te=te, refine_steps=n))
            exact = [Fraction(te * k, n) for k in range(n, 0, -1)]
            assert ts[0] == te and len(set(ts)) == n and ts == sorted(ts, reverse=True)
            assert ts == [math.floor(e + Fraction(1, 2)) for e in exact], (te, n)  # nearest, halves up
            if te % n == 0:
                assert ts == [te * k // n for k in range(n, 0, -1)]
    with pytest.raises(ValueError, match="do not fit"):
        ChainConfig(te=4, refine_steps=5).validate()


@pytest.mark.parametrize("sampler", ["euler", "ddim", "dpmpp_2m", "unipc"])
def test_flow_expert_control_stage_is_finite_and_exact(sampler):
    """A flow schedule reaches alpha = 0 at its last timestep (pure noise); the control stage must stay finite."""
    x0 = x0_star()
    flow = S.flow_schedule(shift=3.0)
    assert flow.coefficients(999)[0] == 0.0
    d = OracleExpert(x0, flow, prediction="flow").bind()
    from confiner_core.sampling import sample_control
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    out = sample_control(d, noise, [999, 749, 499, 249], sampler)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, x0, atol=1e-4)


def test_table3_warning_only_where_the_paper_found_collapse():
    from confiner_core.chain import ConFinerWarning, table3_best_te, table3_warning

    assert table3_warning(4, 300) and table3_warning(2, 999) and "Table 3" in table3_warning(4, 300)
    assert table3_warning(4, 299) is None and table3_warning(8, 600) is None
    # a flow refiner's T_e is N sigma: judged at SD 1.5's t = 300 noise level (sigma/alpha 0.83 -> sigma 0.454)
    flow = S.flow_schedule(5.0)
    assert table3_warning(4, 450, flow) is None and table3_warning(4, 460, flow) is not None
    # the best T_e in the expert's own units only where they differ from SD 1.5's ("here 200" repeated it)
    assert "(best about 200); lower T_e" in table3_warning(4, 300)
    assert f"(best about 200, here {table3_best_te(flow)}: the same noise level on this expert's schedule)" in \
        table3_warning(4, 460, flow)
    x0 = x0_star()
    c, s = OracleExpert(x0, S.named("animatediff")).bind(), OracleExpert(x0, S.named("sd15")).bind()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    with pytest.warns(ConFinerWarning, match="T_e=300 with 4 control steps"):
        run_chain(c, s, s, noise, ChainConfig(te=300), torch.Generator().manual_seed(0))


def test_a_te_that_keeps_almost_none_of_the_structure_is_warned_at_any_control_steps():
    """T_e 999 with 8 control steps ran without a word (Table 3's warning is about 4 steps): Eq. 6 kept 0.1 % of the
    structure on Wan, so the refinement sampled afresh. Judged by alpha, the structure's share, read here from
    diffusers' own table (DDPMScheduler's alphas_cumprod) on SD 1.5, and as 1 - sigma on a flow schedule."""
    from diffusers import DDPMScheduler

    from confiner_core.chain import STRUCTURE_KEPT_MIN, ConFinerWarning, structure_lost_warning

    ddpm = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sd_alpha = ddpm.alphas_cumprod.sqrt()
    first_sd = int((sd_alpha < STRUCTURE_KEPT_MIN).nonzero()[0])   # the first SD 1.5 timestep warned
    assert 900 < first_sd < 999
    sd = S.named("sd15")
    assert structure_lost_warning(first_sd - 1, sd) is None and structure_lost_warning(first_sd, sd) == (
        f"T_e={first_sd} keeps {sd_alpha[first_sd]:.0%} of the structure (Eq. 6: x = {sd_alpha[first_sd]:.2f} "
        f"structure + {(1 - ddpm.alphas_cumprod[first_sd]).sqrt():.2f} noise): the refinement starts from almost pure "
        f"noise and the control stage is lost; use a lower T_e, 100-200 (the default, up to Table 3's best after 4 "
        f"control steps)")
    flow = S.flow_schedule(5.0)   # a flow T_e is N sigma: alpha = 1 - sigma
    assert structure_lost_warning(900, flow) is None and "T_e=950 keeps 5% of the structure" in \
        structure_lost_warning(950, flow)   # (900 keeps 1 - 0.9: not below 10 %)
    x0 = x0_star()
    c, s = OracleExpert(x0, S.named("animatediff")).bind(), OracleExpert(x0, sd).bind()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for steps in (4, 8):   # said instead of Table 3's warning, which also holds at 4 steps
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            validate_chain(c, s, s, tuple(noise.shape), ChainConfig(te=999, control_steps=steps))
        said = [str(w.message) for w in caught if w.category is ConFinerWarning and "T_e=999" in str(w.message)]
        assert [m[:35] for m in said] == ["T_e=999 keeps 7% of the structure ("], said


@pytest.mark.parametrize("matching", ["nearest", "continuous"])
def test_matching_by_noise_level_on_one_shared_schedule_is_said_to_change_nothing(matching):
    """SD 1.5 and ModelScope share one schedule: a sweep over matchings made one video three times, and the option
    read as broken. Said, and true: the video is same_index's, bit for bit."""
    x0 = x0_star()
    c, s, t = (OracleExpert(x0, S.named(name)).bind() for name in ("animatediff", "sd15", "modelscope"))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    with pytest.warns(ConFinerWarning, match=rf"^matching='{matching}' changes nothing here: the spatial and temporal "
                                             r"experts share one schedule"):
        moot = run_chain(c, s, t, noise, ChainConfig(matching=matching), torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConFinerWarning)   # same_index, and schedules of their own: nothing said
        paper = run_chain(c, s, t, noise, ChainConfig(matching="same_index"), torch.Generator().manual_seed(0))
        run_chain(c, s, OracleExpert(x0, S.named("lavie")).bind(), noise, ChainConfig(matching=matching),
                  torch.Generator().manual_seed(0))
    assert torch.equal(moot.latent, paper.latent)


def test_table3_best_te_is_sd15s_200_at_the_same_noise_level_on_a_flow_schedule():
    """The node's line says how far to lower T_e ("use about 200"); a flow refiner's T_e of that noise level, from
    diffusers' own SD 1.5 table: sigma/alpha at t = 200 is sigma / (1 - sigma) on the flow side, T_e = N sigma."""
    from diffusers import DDIMScheduler

    from confiner_core.chain import table3_best_te

    abar = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod[200]
    ratio = float(((1 - abar) / abar).sqrt())
    assert table3_best_te(S.named("sd15")) == table3_best_te() == 200
    for shift in (3.0, 8.0):   # T_e counts sigma itself, whatever the shift
        assert table3_best_te(S.flow_schedule(shift)) == round(1000 * ratio / (1 + ratio))


def test_same_index_across_schedules_of_other_noise_levels_is_warned_with_its_fix():
    """The paper's same-index re-noising assumes experts of one schedule; SD 1.5 and a flow expert (Wan, shift 3)
    put T_e = 100 at noise-to-signal 0.34 and 0.11. Warned, with 'nearest', which matches the level; not warned for
    SD-family experts (SD 1.5 and AnimateDiff's linear betas differ by less than 1.5x) nor with 'nearest'."""
    from confiner_core.chain import same_index_mismatch_warning

    sd, wan, ad = S.named("sd15"), S.flow_schedule(3.0), S.named("animatediff")
    message = same_index_mismatch_warning(sd, wan, 100)
    assert message and "noise-to-signal is 0.34" in message and "expert's 0.11" in message and "'nearest'" in message
    assert same_index_mismatch_warning(sd, ad, 100) is None and same_index_mismatch_warning(sd, sd, 400) is None
    alpha, sigma = wan.coefficients(matched_timestep(sd, wan, 100, "nearest"))
    sd_alpha, sd_sigma = sd.coefficients(100)
    assert sigma / alpha == pytest.approx(sd_sigma / sd_alpha, rel=0.05)   # what 'nearest' gives instead


@pytest.mark.parametrize("mode, warned", [("coordinated", ["control", "temporal"]), ("standard", ["control"])])
def test_an_image_expert_in_a_role_that_relates_frames_is_warned(mode, warned):
    """Experts passed in another order (the image expert as control, or as temporal expert where the mode evaluates
    it) run, as they may be meant, and say that every frame is made or refined on its own."""
    import warnings

    from confiner_core.chain import ConFinerWarning

    x0 = x0_star()
    image = OracleExpert(x0, S.named("sd15"), layout=FRAMES, name="image").bind()
    video = OracleExpert(x0, S.named("animatediff"), name="video").bind()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_chain(image, image, image, noise, ChainConfig(mode=mode), torch.Generator().manual_seed(0))
        said = [str(w.message) for w in caught if w.category is ConFinerWarning]
        assert [m.split()[1] for m in said] == warned, said
        assert all("takes one frame at a time (an image model)" in m for m in said)
        caught.clear()
        run_chain(video, image, video, noise, ChainConfig(mode=mode), torch.Generator().manual_seed(0))
        assert not [w for w in caught if w.category is ConFinerWarning]   # the roles as meant: nothing to say


@pytest.mark.parametrize("config, unused", [
    (ChainConfig(control_eta=0.7), "control_eta=0.7 applies to the DDIM control sampler only"),
    (ChainConfig(mode="standard", matching="nearest"), "matching='nearest' picks the temporal expert's timestep in "
                                                       "coordinated refinement only (mode 'standard')"),
    (ChainConfig(mode="alternate", matching="continuous"), "matching='continuous'"),
])
def test_a_setting_the_chain_never_reads_is_warned_and_changes_nothing(config, unused):
    """The command line refuses these; a script is warned, and gets the run without them."""
    from confiner_core.chain import ConFinerWarning

    x0 = x0_star()
    c, s = OracleExpert(x0, S.named("animatediff")).bind(), OracleExpert(x0, S.named("sd15")).bind()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    with pytest.warns(ConFinerWarning, match=re.escape(unused) + ".*so it changes nothing"):
        with_it = run_chain(c, s, s, noise, config, torch.Generator().manual_seed(0)).latent
    without = replace(config, control_eta=0.0, matching="same_index")
    assert torch.equal(with_it, run_chain(c, s, s, noise, without, torch.Generator().manual_seed(0)).latent)


def test_structure_noise_control_needs_a_control_schedule():
    from confiner_core.chain import refine_structure, validate_refinement

    x0 = x0_star()
    s = OracleExpert(x0, S.named("sd15")).bind()
    with pytest.raises(ValueError, match="on the control expert's schedule, which is unknown here"):
        validate_refinement(s, s, SHAPE, ChainConfig(structure_noise="control"))
    with pytest.raises(ValueError, match="structure_noise"):
        ChainConfig(structure_noise="temporal").validate()
    # Algorithm 1 line 4: V'_{T_e} uses the control schedule's coefficients at T_e
    g = torch.Generator().manual_seed(1)
    ad = S.named("animatediff")
    structure = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    seen = OracleExpert(x0, S.named("sd15"))
    refine_structure(seen.bind(), None, structure, ChainConfig(mode="standard", structure_noise="control"), g,
                     control_schedule=ad)
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    a, sig = ad.coefficients(100)
    assert torch.allclose(seen.calls[0][1], a * structure + sig * eps, atol=1e-6)


def test_the_default_te_is_the_refining_experts_in_the_library_as_on_the_command_line():
    """ChainConfig() leaves T_e to the refining expert (chain.DEFAULT_TE: 100 VP, 250 flow): the library's run with
    Wan-like flow experts is the command line's (which resolved it for itself), not T_e = 100 on a flow schedule."""
    from confiner_core.chain import DEFAULT_TE
    from confiner_core.embedded.experts import embedded_experts
    from confiner_core.generate import GenerateRequest

    assert ChainConfig().te is None and DEFAULT_TE == {"vp": 100, "flow": 250}
    for preset, te in (("sd", 100), ("wan", 250)):
        request = GenerateRequest(embedded_preset=preset, frames=9 if preset == "wan" else 8, height=64, width=64)
        request.validate()
        assert request.chain.te == te
    experts = embedded_experts("wan")
    bound = {role: experts[role].bind("a red ball", "", 1.0) for role in ("control", "spatial", "temporal")}
    noise = torch.randn(experts["control"].latent_space.latent_shape(1, 9, 64, 64),
                        generator=torch.Generator().manual_seed(0))

    def run(config):
        return run_chain(bound["control"], bound["spatial"], bound["temporal"], noise, config,
                         torch.Generator().manual_seed(1)).latent

    default = run(ChainConfig())
    assert torch.equal(default, run(ChainConfig(te=250))) and not torch.equal(default, run(ChainConfig(te=100)))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="pinned host memory is for copies from a GPU"))])
def test_device_to_host_copies_into_host_memory(device):
    from confiner_core.sampling import device_to_host
    frames = torch.randint(0, 256, (1, 3, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    host = device_to_host(frames.to(device))
    assert host.device.type == "cpu" and host.dtype == torch.uint8 and torch.equal(host, frames)
    assert host.is_pinned() == (device == "cuda")     # from a GPU: pinned, not the driver's staged pageable copy


def test_a_deferred_binding_encodes_at_its_first_evaluation_to_the_same_output():
    """``bind(deferred=True)`` (generate binds the temporal expert so) encodes the prompt and its negative at the
    denoiser's first evaluation, once, and then predicts what an eager binding predicts."""
    events = []

    class Recording(OracleExpert):
        def encode(self, prompt):
            events.append(("encode", prompt))
            return prompt

        def forward(self, x, t, conds):
            events.append(("forward", tuple(conds)))
            return [o + 0.1 * (c == "a cat") for o, c in zip(super().forward(x, t, conds), conds)]  # cfg shows

    expert = Recording(x0_star(), S.named("lavie"))
    eager = expert.bind("a cat", "the dog", 7.5)
    assert events == [("encode", "a cat"), ("encode", "the dog")]
    events.clear()
    log = EvaluationLog()
    deferred = expert.bind("a cat", "the dog", 7.5, log, deferred=True)
    assert events == [] and deferred.positive is None
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    first, second = deferred(x, 500), deferred(x, 300)
    assert events == [("encode", "a cat"), ("encode", "the dog"), ("forward", ("the dog", "a cat")),
                      ("forward", ("the dog", "a cat"))]
    assert torch.equal(first.x0, eager(x, 500).x0) and torch.equal(second.eps, eager(x, 300).eps)
    assert log.evaluations == {"unstaged": 2}
    # an encode that fails (Ctrl-C, out of memory) is tried again at the next evaluation, never skipped
    failing = expert.bind("a cat", "the dog", 7.5, deferred=True)
    real, calls = Recording.encode, []

    def interrupted_once(self, prompt):
        calls.append(prompt)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(self, prompt)

    Recording.encode = interrupted_once
    try:
        with pytest.raises(KeyboardInterrupt):
            failing(x, 500)
        assert torch.equal(failing(x, 500).x0, eager(x, 500).x0) and failing.negative == "the dog"
    finally:
        Recording.encode = real
    # prompt travel from a binding not yet evaluated keeps its negative
    travelled = expert.bind("a cat", "the dog", 7.5, deferred=True).with_prompt("a bird")
    assert (travelled.positive, travelled.negative) == ("a bird", "the dog")



def test_an_expert_not_bound_to_its_prompt_is_named_with_the_fix():
    """Forgetting .bind() (or passing a plain function) failed inside every chain function with an AttributeError
    ('Toy' object has no attribute 'expert') that named neither the argument nor the fix."""
    from confiner_core.chain import generate_structure, refine

    x0 = x0_star()
    expert = OracleExpert(x0, S.named("sd15"))
    bound = expert.bind()
    g = torch.Generator().manual_seed(0)
    bind = r"must be an expert bound to its prompt \(a Denoiser\), got OracleExpert: bind it first: expert\.bind\("
    plain = (r"must be an expert bound to its prompt \(a Denoiser\), got \w+: make it an Expert "
             r"\(confiner_core\.experts\.Expert: .*\) and bind it")
    calls = {f"run_chain: control {bind}": lambda: run_chain(expert, bound, bound, x0, ChainConfig(), g),
             f"run_chain: temporal {bind}": lambda: run_chain(bound, bound, expert, x0, ChainConfig(), g),
             f"refine: spatial {plain}": lambda: refine(lambda x, t: x, bound, x0, ChainConfig(), g),
             f"generate_structure: control {bind}": lambda: generate_structure(expert, x0, ChainConfig(), g),
             f"validate_chain: control {bind}": lambda: validate_chain(expert, bound, bound, SHAPE, ChainConfig()),
             f"coordinated_step: temporal {plain}": lambda: coordinated_step(bound, print, x0, 100, g)}
    for message, call in calls.items():
        with pytest.raises(TypeError, match="^" + message):
            call()
    assert expert.calls == []


def test_the_stage_functions_name_a_wrong_argument_before_any_evaluation():
    """The stage-by-stage functions (the README's second snippet) refuse what run_chain refuses, by name: a float
    where the generator goes (AttributeError: 'int' object has no attribute 'device' for an int, which is now a
    seed), a NumPy array as noise, T_e
    as text or a float (ChainConfig.validate compared '100' < 1; GenerateRequest refused 100.0, it accepted it), a
    cfg as text (bind evaluated the expert, then failed converting the string)."""

    from confiner_core.chain import extract_structure, generate_structure, refine

    x0 = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(7))
    log = EvaluationLog()
    expert = OracleExpert(x0, S.named("sd15"))
    control = expert.bind(log=log)
    with pytest.raises(TypeError, match=r"extract_structure needs a seed \(an int\) or a seeded torch.Generator"):
        extract_structure(S.named("sd15"), x0, 100, 0.5)
    # an int is a seed: its draws are its own, the same at every call
    assert torch.equal(extract_structure(S.named("sd15"), x0, 100, 0), extract_structure(S.named("sd15"), x0, 100, 0))
    with pytest.raises(TypeError, match=r"generate_structure: noise must be a torch.Tensor \(a video \[B, C, F, h, w\]\), got "
                                         r"ndarray"):
        generate_structure(control, x0.numpy(), ChainConfig(), torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match=r"generate_structure needs a seed \(an int\) or a seeded torch.Generator"):
        generate_structure(control, x0, ChainConfig(), 3.0)
    # no generator is fine where nothing is drawn, and named where DDIM's eta draws (AttributeError on None before)
    ddim_eta = ChainConfig(control_sampler="ddim", control_eta=0.5)
    with pytest.raises(TypeError, match=r"generate_structure \(DDIM with control_eta > 0 draws noise\) needs a "
                                        r"seed \(an int\) or a seeded torch.Generator"):
        generate_structure(control, x0, ddim_eta)
    for generator in (None, "0"):
        with pytest.raises(TypeError, match=r"refine needs a seed \(an int\) or a seeded torch.Generator"):
            refine(control, control, x0, ChainConfig(), generator)
    for te in ("100", 100.0, True, 0):
        with pytest.raises(ValueError, match=re.escape(f"te (T_e) must be an integer >= 1, got {te!r}")):
            ChainConfig(te=te).validate()
    # the small functions of a loop of one's own (a researcher's 20 lines): named, with the fix
    with pytest.raises(TypeError, match=r"^coordinated_step needs a seeded torch.Generator"):
        coordinated_step(control, control, x0, 100, None)
    with pytest.raises(TypeError, match=r"^refine_coordinated needs a seed \(an int\) or a seeded "
                                        r"torch.Generator"):   # (named its step)
        refine_coordinated(control, control, x0, [100, 50], None)
    with pytest.raises(TypeError, match=r"^coordinated_step draws fresh noise at every step \(Eq. 9, 11\), so it "
                                        r"takes one seeded torch.Generator for the whole loop, not a seed \(4\): g = "
                                        r"torch.Generator\(\).manual_seed\(4\) before the loop"):
        coordinated_step(control, control, x0, 100, 4)
    with pytest.raises(TypeError, match=r"^expert 'oracle.*': the sample must be a torch.Tensor, got ndarray: "
                                        r"torch.as_tensor\(x, dtype=torch.float32\)"):
        control(x0.numpy(), 100)
    with pytest.raises(ValueError, match=r"^expert 'oracle.*': the sample must be a latent video \[B, C, F, h, w\], "
                                         r"got shape \(4, 4, 4, 4\): one clip \[C, F, h, w\] is x\[None\]"):
        control(x0[0], 100)
    with pytest.raises(ValueError, match=r"^refine_timesteps: config.te is None, the refining expert's default: "
                                         r"settle it first, config.with_default_te\(expert.schedule\)"):
        refine_timesteps(ChainConfig())
    assert refine_timesteps(ChainConfig().with_default_te(S.named("sd15"))) == [100, 80, 60, 40, 20]
    assert sum(log.evaluations.values()) == 0   # all refused before any evaluation
    with pytest.raises(ValueError, match="refine_steps must be an integer >= 1, got 5.0"):
        ChainConfig(refine_steps=5.0).validate()
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\], got '0'"):
        ChainConfig(eta="0").validate()
    with pytest.raises(TypeError, match="bind: guidance_scale must be a number"):
        expert.bind("x", "", "7.5", log)
    with pytest.raises(TypeError, match=r"^bind: guidance_scale got an EvaluationLog, which goes fourth: bind\(prompt, "
                                        r"negative_prompt, guidance_scale, log\), or log=log$"):
        expert.bind("x", "", log)   # (the message showed the whole log as the scale)
    with pytest.raises(ValueError, match="bind: guidance_scale must be a finite number"):   # a value, not a type
        expert.bind("x", "", float("nan"), log)
    with pytest.raises(ValueError, match=r"bind: guidance_scale must be a finite number >= 0 .*, got -1.0"):
        expert.bind("x", "", -1.0, log)   # (taken; the settings' cfg is refused outside [0, 100])
    with pytest.raises(TypeError, match="bind: prompt and negative_prompt must be text"):
        expert.bind(None, "", 7.5, log)
    # noise that is not float (int64 noise was run, 68 % of it zeros; float16 ran the whole chain in half precision),
    # empty sizes, a dict for the config, a refine input of the wrong layout or channels (an EinopsError, a matmul
    # error), NaN noise (named only after the first evaluation)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(TypeError, match=r"^run_chain: noise is int64; the chain computes in float32 \(float64 also "
                                        r"works\): pass x.float\(\) \(initial noise is Gaussian: torch.randn\(shape, "
                                        r"generator=g\)\)$"):
        run_chain(control, control, control, x0.long(), ChainConfig(), g)
    with pytest.raises(TypeError, match=r"^generate_structure: noise is float16; .*: pass x.float\(\) "):
        generate_structure(control, x0.half(), ChainConfig(), g)
    with pytest.raises(ValueError, match=r"noise has shape \(1, 4, 4, 0, 4\), with no elements along a dimension"):
        run_chain(control, control, control, x0[..., :0, :], ChainConfig(), g)
    with pytest.raises(TypeError, match=r"^run_chain: config must be a ChainConfig .*, got dict$"):
        run_chain(control, control, control, x0, {"te": 100}, g)
    with pytest.raises(ValueError, match=r"^run_chain: noise is on the meta device, which holds no values"):
        run_chain(control, control, control, x0.to("meta"), ChainConfig(), g)
    with pytest.raises(ValueError, match=r"^refine: x has shape \(4, 4, 4, 4\) but must be a video"):
        refine(control, control, x0[0], ChainConfig(), g)
    with pytest.raises(ValueError, match=r"^the latent has 2 channels but the refining expert's latent space .*; "
                                         r"a structure another expert made \(the control expert's\) is handed over by "
                                         r"passing that expert as source= to refine_structure$"):
        refine(control, control, x0[:, :2], ChainConfig(), g)   # (a researcher's left out source=)
    for call in (lambda: refine(control, None, x0, ChainConfig(mode="temporal"), g),   # (an AttributeError on None)
                 lambda: run_chain(control, control, None, x0, ChainConfig(mode="temporal"), g)):
        with pytest.raises(ValueError, match=r"^mode 'temporal' needs a temporal expert"):
            call()
    with pytest.raises(NonFiniteError, match=r"^run_chain: noise holds NaN or infinity"):
        run_chain(control, control, control, x0.clone().fill_(float("nan")), ChainConfig(), g)
    # a callback that cannot take the step's info failed after the first evaluation, in Python's words
    with pytest.raises(TypeError, match=r"^run_chain: callback is called as callback\(info\), with 1 argument, "
                                        r"which <lambda> does not take$"):
        run_chain(control, control, control, x0, ChainConfig(), g, callback=lambda: None)
    with pytest.raises(TypeError, match=r"^run_chain: callback must be a function called as callback\(info\), got "
                                        r"list$"):
        run_chain(control, control, control, x0, ChainConfig(), g, callback=[])
    assert sum(log.evaluations.values()) == 0


@pytest.mark.parametrize("prediction,schedule", [("v_prediction", "flow"), ("flow", "vp"), ("epsilon", "flow")])
def test_a_prediction_type_of_another_schedule_kind_is_refused(prediction, schedule):
    """v = alpha eps - sigma x0 holds where alpha^2 + sigma^2 = 1, u = eps - x0 where alpha = 1 - sigma: either on the
    other kind of schedule gave a wrong x0 without a word (0.82 off at t = 500 on unit data)."""
    x0 = x0_star()
    sched = S.flow_schedule(shift=3.0) if schedule == "flow" else S.named("sd15")
    good = OracleExpert(x0, S.named("sd15")).bind()
    bad = OracleExpert(x0, sched, prediction=prediction, name="mine").bind()
    said = "predicts epsilon on a flow-matching schedule" if prediction == "epsilon" else \
        f"has prediction type '{prediction}', which holds on a"
    with pytest.raises(ValueError, match=f"expert 'mine' {said}"):
        run_chain(good, bad, good, torch.randn(SHAPE), ChainConfig(), torch.Generator().manual_seed(0))


def test_an_expert_breaking_the_interface_is_named():
    x0 = x0_star()
    sd = S.named("sd15")

    class NoSchedule(OracleExpert):
        schedule = None

    class Cropped(OracleExpert):
        def forward(self, x, t, conds):
            return [out[..., :2] for out in super().forward(x, t, conds)]

    class NoSpace(OracleExpert):
        latent_space = None   # failed with "'NoneType' object has no attribute 'channels'"

    good = OracleExpert(x0, sd).bind()
    blank = NoSpace(x0, sd, name="blank").bind()
    g = torch.Generator().manual_seed(0)
    # in every role, and wherever a chain function takes it (as control it failed on 'channels' and 'title')
    for call in (lambda: run_chain(good, blank, good, torch.randn(SHAPE), ChainConfig(), g),
                 lambda: run_chain(blank, good, good, torch.randn(SHAPE), ChainConfig(), g),
                 lambda: refine_structure(good, good, x0, ChainConfig(), g, source=blank),
                 lambda: generate_structure(blank, torch.randn(SHAPE), ChainConfig(), g)):
        with pytest.raises(ValueError, match="expert 'blank' has latent_space None: set it to a "
                                             "confiner_core.latent_spaces.LatentSpace, one of SD15, SDXL, FLUX, WAN21"):
            call()
    with pytest.raises(ValueError, match="expert 'late' .NoSchedule. has no noise schedule: set its 'schedule'"):
        run_chain(good, NoSchedule(x0, None, name="late").bind(), good, torch.randn(SHAPE), ChainConfig(),
                  torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"expert 'crop' \(Cropped\).forward returned \[\(1, 4, 3, 4, 2\)\] for 1 "
                                         r"conditioning\(s\) and an input of shape \(1, 4, 3, 4, 4\)"):
        run_chain(good, Cropped(x0, sd, name="crop").bind(), good, torch.randn(SHAPE), ChainConfig(),
                  torch.Generator().manual_seed(0))


def test_an_experts_output_dtype_is_held_to_the_latents():
    """``forward``'s dtype was never checked: float64 made the whole chain's result float64, int64 ran to the end.
    Another float dtype is taken in the latent's (the same result as the expert computing in it), an integer one is
    refused before any harm, naming the expert."""
    x0 = x0_star()
    sd = S.named("sd15")

    def returning(dtype):
        class Typed(OracleExpert):
            def forward(self, x, t, conds):
                return [out.to(dtype) for out in super().forward(x, t, conds)]
        return Typed(x0, sd, name=str(dtype)).bind()

    good = OracleExpert(x0, sd).bind()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    plain = run_chain(good, good, good, noise, ChainConfig(), torch.Generator().manual_seed(0)).latent
    wide = run_chain(good, returning(torch.float64), good, noise, ChainConfig(), torch.Generator().manual_seed(0))
    assert wide.latent.dtype == torch.float32 and torch.allclose(wide.latent, plain, atol=1e-5)
    with pytest.raises(ValueError, match=r"^expert 'torch.int64' \(Typed\).forward returned \['torch.int64'\] for an "
                                         r"input of torch.float32: it must return floating-point tensors"):
        run_chain(good, returning(torch.int64), good, noise, ChainConfig(), torch.Generator().manual_seed(0))


def test_an_experts_output_on_another_device_is_refused_naming_the_expert():
    """Shape and dtype were held to the contract, the device was not: torch's own "Tensor on device meta is not on
    the expected device cpu!" came later and named no expert (a researcher's trial; meta stands for another GPU)."""
    x0 = x0_star()
    sd = S.named("sd15")

    class Elsewhere(OracleExpert):
        def forward(self, x, t, conds):
            return [out.to("meta") for out in super().forward(x, t, conds)]

    good, far = OracleExpert(x0, sd).bind(), Elsewhere(x0, sd, name="far")
    with pytest.raises(ValueError, match=r"^expert 'far' \(Elsewhere\).forward returned tensors on \['meta'\] for an "
                                         r"input on cpu: return them on the input's device \(x.device\)$"):
        run_chain(far.bind(), good, good, torch.randn(SHAPE), ChainConfig(), torch.Generator().manual_seed(0))
    assert len(far.calls) == 1   # at its first call, as every contract broken at forward


def test_an_expert_that_edits_its_input_in_place_is_refused_at_that_call():
    """An expert whose forward ended with ``x.clamp_(...)`` made another video without a word (a researcher's trial:
    up to 0.84 off): the prediction is read against the sample it changed, in the frames layout a view of the chain's
    own. Refused at its first call, naming the expert, in either role; out of place the same clamp runs."""
    x0 = x0_star()
    sd = S.named("sd15")

    def clamping(in_place, layout):
        class Clamping(OracleExpert):
            def forward(self, x, t, conds):
                outs = super().forward(x, t, conds)
                x.clamp_(-0.5, 0.5) if in_place else x.clamp(-0.5, 0.5)
                return outs
        return Clamping(x0, sd, layout=layout, name="clamp")

    good = OracleExpert(x0, sd).bind()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    for layout in (VIDEO, FRAMES):
        edits = clamping(True, layout)
        with pytest.raises(ValueError, match=r"^expert 'clamp' \(Clamping\).forward changed its input x in place: "
                                             r".*work on a copy \(x = x.clone\(\)\)"):
            run_chain(good, edits.bind(), good, noise, ChainConfig(), torch.Generator().manual_seed(0))
        assert len(edits.calls) == 1
        run_chain(good, clamping(False, layout).bind(), good, noise, ChainConfig(), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"forward changed its input x in place"):
        run_chain(good, good, clamping(True, VIDEO).bind(), noise, ChainConfig(), torch.Generator().manual_seed(0))


def test_an_experts_codec_of_another_space_is_refused_before_any_evaluation():
    """A VAE of another space on an expert failed after the control stage (6 channels against 4), or, on an expert
    keeping the default space, encoded the bridge's result into a space the expert does not declare, silently."""
    from confiner_core.latent_spaces import FLUX, Codec

    class FluxVAE(Codec):
        space = FLUX

        def encode_raw(self, pixels):
            raise AssertionError("never called")

        def decode_raw(self, raw):
            raise AssertionError("never called")

    x0 = x0_star()
    sd = S.named("sd15")
    log = EvaluationLog()
    good = OracleExpert(x0, sd).bind(log=log)
    mine = OracleExpert(x0, sd, name="mine")
    mine.codec = FluxVAE()
    with pytest.raises(ValueError, match=r"^expert 'mine' declares latent space 'sd15' but its codec \(VAE\) belongs "
                                         r"to latent space 'flux': give it a codec of its own space, or set its "
                                         r"latent_space to the codec's \(expert.latent_space = expert.codec.space\)$"):
        run_chain(good, mine.bind(log=log), good, torch.randn(SHAPE), ChainConfig(), torch.Generator().manual_seed(0))
    assert sum(log.evaluations.values()) == 0
    # in a pair (Wan 2.2 A14B's two halves), the member whose codec it is: the pair takes one member's codec, and
    # "set its latent_space" named the pair, which has no space of its own to set
    from confiner_core.experts import ExpertPair

    other = OracleExpert(x0, sd, name="other")
    with pytest.raises(ValueError, match=r"^expert 'mine' declares latent space 'sd15' but its codec"):
        run_chain(good, ExpertPair(mine, other, 0.875, name="pair").bind(log=log), good, torch.randn(SHAPE),
                  ChainConfig(), torch.Generator().manual_seed(0))
    mine.latent_space = FLUX   # as the message says: then it is an expert of that space (bridged, or refused so)
    with pytest.raises(ValueError) as e:
        run_chain(good, mine.bind(log=log), good, torch.randn(SHAPE), ChainConfig(), torch.Generator().manual_seed(0))
    assert "codec (VAE)" not in str(e.value) and sum(log.evaluations.values()) == 0


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes need Python 3.11")
def test_an_error_encoding_a_prompt_is_noted_with_the_expert():
    """The text encoder's own error ("tokenizer missing") named no expert; ``bind`` encodes, deferred or not."""
    class NoTokenizer(OracleExpert):
        def encode(self, prompt):
            raise RuntimeError("tokenizer missing")

    expert = NoTokenizer(x0_star(), S.named("sd15"), name="mine")
    for deferred in (False, True):
        with pytest.raises(RuntimeError, match="^tokenizer missing") as e:
            expert.bind("a cat", "blurry", 7.5, deferred=deferred).encoded()
        assert e.value.__notes__ == ["raised by expert 'mine' (NoTokenizer) encoding its prompt 'a cat' and "
                                     "negative prompt 'blurry'"]


def test_noise_of_other_channels_is_named_with_how_to_draw_it():
    """The message said "the latent has 6 channels", naming neither run_chain's argument nor how to make one."""
    x0 = x0_star()
    good = OracleExpert(x0, S.named("sd15"), name="ctrl").bind()
    with pytest.raises(ValueError, match=r"^run_chain: noise has 6 channels but the control expert 'ctrl' denoises in "
                                         r"latent space 'sd15' \(4 channels\): draw it there, torch.randn\("
                                         r"control.expert.latent_space.latent_shape\(batch, frames, height, width\), "
                                         r"generator=g\)$"):
        run_chain(good, good, good, torch.randn(1, 6, 3, 4, 4), ChainConfig(), torch.Generator().manual_seed(0))


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes need Python 3.11")
def test_an_error_inside_an_experts_network_is_noted_with_the_expert_and_call():
    """A network of other channels than the latent space its expert declares failed with PyTorch's bare "expected
    input[1, 4, 8, 8, 8] to have 16 channels", naming no expert, role or step."""
    x0 = x0_star()
    sd = S.named("sd15")

    class WrongNet(OracleExpert):
        net = torch.nn.Conv3d(16, 16, 1)

        def forward(self, x, t, conds):
            return [self.net(x) for _ in conds]

    log = EvaluationLog()
    good = OracleExpert(x0, sd).bind(log=log)
    with pytest.raises(RuntimeError, match="channels") as e:
        run_chain(good, good, WrongNet(x0, sd, name="mine").bind(log=log), torch.randn(SHAPE), ChainConfig(),
                  torch.Generator().manual_seed(0))
    assert e.value.__notes__ == ["raised by expert 'mine' (WrongNet) at stage 'refine', step t=100, on an input of "
                                 "shape (1, 4, 3, 4, 4) (torch.float32, layout video): it declares latent space "
                                 "'sd15' (4 channels)"]


def test_nan_from_an_expert_bound_without_a_log_names_no_stage():
    """Experts bound without a log know no stage: their NaN was said to come "at stage 'unstaged'" of a refinement
    step (a researcher's run_chain); with a log the stage is named."""
    x0 = x0_star()
    sd = S.named("sd15")

    class NaNNet(OracleExpert):
        def forward(self, x, t, conds):
            return [torch.full_like(x, float("nan")) for _ in conds]

    good = OracleExpert(x0, sd).bind()
    with pytest.raises(NonFiniteError) as e:
        run_chain(good, good, NaNNet(x0, sd, name="mine").bind(), torch.randn(SHAPE), ChainConfig(),
                  torch.Generator().manual_seed(0))
    assert str(e.value).startswith("expert 'mine' (NaNNet) at step t=100 returned NaN or infinity"), str(e.value)
    log = EvaluationLog()
    with pytest.raises(NonFiniteError, match=r"^expert 'mine' \(NaNNet\) at stage 'refine', step t=100, evaluation 2 "
                                             r"of the stage returned NaN"):
        logged = OracleExpert(x0, sd).bind(log=log)
        run_chain(logged, logged, NaNNet(x0, sd, name="mine").bind(log=log), torch.randn(SHAPE), ChainConfig(),
                  torch.Generator().manual_seed(0))


def test_experts_no_vae_bridges_are_told_so_before_a_frame_count_one_of_them_cannot_hold():
    """A temporal expert declaring Wan 2.1's space beside SD 1.5 experts, at 3 frames: it was refused for the frame
    count ("4k+1 frames ... use 1 or 5"), and only at a count Wan holds was the real cause named."""
    from confiner_core.latent_spaces import WAN21

    x0 = x0_star()
    sd = S.named("sd15")

    class WanLike(OracleExpert):
        latent_space = WAN21

    good = OracleExpert(x0, sd).bind()
    with pytest.raises(ValueError, match=r"^experts of different latent spaces hand the video over \(spatial SD 1.5 "
                                         r"-> temporal Wan 2.1\): bridging them needs their VAEs"):
        run_chain(good, good, WanLike(x0, sd, name="wan").bind(), torch.randn(SHAPE), ChainConfig(),
                  torch.Generator().manual_seed(0))


def test_experts_are_evaluated_without_autograd():
    """A custom expert calling a module with trainable weights: the chain kept one autograd graph over all 19
    evaluations (a real UNet's activations: out of memory). Experts are evaluated under no_grad, as diffusers'
    pipelines run."""
    x0 = x0_star()
    weight = torch.nn.Parameter(torch.ones(()))
    kept = []

    class Trainable(OracleExpert):
        def forward(self, x, t, conds):
            outs = [out * weight for out in super().forward(x, t, conds)]
            kept.extend(out.requires_grad for out in outs)
            return outs

    sd = S.named("sd15")
    experts = [Trainable(x0, sd).bind() for _ in range(3)]
    result = run_chain(*experts, torch.randn(SHAPE), ChainConfig(), torch.Generator().manual_seed(0))
    assert len(kept) == 19 and not any(kept) and not result.latent.requires_grad
    assert torch.is_grad_enabled()   # and left on for the caller
    # noise that requires grad (noise optimisation) got a gradient through the sampler's algebra alone, every
    # expert left out: refused, before any evaluation
    noise = torch.randn(SHAPE).requires_grad_()
    with pytest.raises(ValueError, match=r"run_chain: noise requires grad, .* pass it detached"):
        run_chain(*experts, noise, ChainConfig(), torch.Generator().manual_seed(0))
    assert len(kept) == 19


def test_auto_matching_matches_noise_levels_across_schedule_kinds_even_where_they_meet_at_te():
    """SD 1.5 and a Wan-like flow schedule (shift 5) are at about one noise level at T_e 700, but 2.8x apart lower
    down the refinement: "auto" compared them at T_e alone and chose same_index there."""
    from confiner_core.chain import auto_matching, noise_to_signal

    sd, flow = S.named("sd15"), S.flow_schedule(shift=5.0)
    here, there = noise_to_signal(sd, 700), noise_to_signal(flow, flow.index(700))
    assert max(here, there) < 1.5 * min(here, there)   # they meet at T_e
    assert auto_matching(sd, flow, 700) == "nearest"
    assert auto_matching(sd, S.named("lavie"), 100) == "same_index"   # the paper's own pair, as printed


def test_auto_matching_turns_to_nearest_where_the_noise_levels_at_te_part_by_more_than_one_and_a_half():
    """SD 1.5 and LaVie (the paper's pair) at T_e: "auto" keeps the paper's same_index up to noise-to-signal ratios
    1.5x apart and matches by noise level beyond (a threshold of 2 went unnoticed). The ratios from diffusers'
    DDIMScheduler tables: 1.49x at T_e 300, 1.61x at 350."""
    from diffusers import DDIMScheduler

    from confiner_core.chain import auto_matching

    sd = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod.double()
    lavie = DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02).alphas_cumprod.double()
    chosen = {}
    for te in (100, 200, 300, 350, 400, 500):
        ratios = [((1 - abar[te]) / abar[te]).sqrt().item() for abar in (sd, lavie)]
        expected = "nearest" if max(ratios) > 1.5 * min(ratios) else "same_index"
        chosen[te] = auto_matching(S.named("sd15"), S.named("lavie"), te)
        assert chosen[te] == expected, (te, ratios)
    assert chosen[300] == "same_index" and chosen[350] == "nearest"


def test_the_chain_run_stage_by_stage_counts_its_evaluations_by_stage():
    """generate_structure and refine called on their own counted their evaluations "unstaged" (a researcher's
    control-only baseline read as none spent on the control stage); run_chain's stages are unchanged."""
    from confiner_core.chain import extract_structure, generate_structure, refine

    x0, log = x0_star(), EvaluationLog()
    control = OracleExpert(x0, S.named("animatediff")).bind(log=log)
    spatial, temporal = (OracleExpert(x0, S.named("sd15"), layout).bind(log=log) for layout in (FRAMES, VIDEO))
    noise, config = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)), ChainConfig()
    structure = generate_structure(control, noise, config)
    assert dict(log.evaluations) == {"control": 4}
    x = extract_structure(spatial.expert.schedule, structure, 100, torch.Generator().manual_seed(1))
    refine(spatial, temporal, x, config, torch.Generator().manual_seed(2))
    assert dict(log.evaluations) == {"control": 4, "refine": 15}
    run_chain(control, spatial, temporal, noise, config, torch.Generator().manual_seed(3))
    assert dict(log.evaluations) == {"control": 8, "refine": 30}


def test_a_callbacks_timestep_on_a_flow_schedule_is_the_timestep_asked_for():
    """A Wan run's callback gave timestep 200.00000000000003 for the step at T = 200 (the table position's round
    trip through sigma)."""
    from types import SimpleNamespace

    from confiner_core.sampling import step_info
    from confiner_core.schedules import flow_schedule

    schedule = flow_schedule(shift=3.0)
    timesteps = [step_info("refine", 0, schedule.index(T), SimpleNamespace(schedule=schedule), None, None)["timestep"]
                 for T in (250, 200, 150, 100, 50)]
    assert timesteps == [250, 200, 150, 100, 50]


def test_item_generators_make_each_clip_of_a_batch_the_clip_its_generator_makes_alone():
    """One generator for a batch interleaves the items' draws from the second draw on (Eq. 6, 9, 11 each draw), so
    the first clip of a batch of two was not the batch-1 clip. With one generator per item every clip is."""
    from confiner_core.sampling import ItemGenerators, randn

    class Shrink(Expert):   # an expert whose x0 follows its input, so every draw reaches the result
        schedule, name = S.named("sd15"), "shrink"

        def encode(self, prompt):
            return prompt

        def forward(self, x, t, conds):
            return [0.5 * x + 0.1 for _ in conds]

    def clips(seeds):
        expert = Shrink().bind()
        generator = ItemGenerators.seeded(seeds)
        noise = randn((len(seeds), *SHAPE[1:]), generator, torch.device("cpu"))
        return run_chain(expert, expert, expert, noise, ChainConfig(), generator).latent

    batch, first, second = clips([3, 4]), clips([3]), clips([4])
    assert torch.equal(batch[:1], first) and torch.equal(batch[1:], second)
    assert not torch.allclose(first, second)
    one = torch.Generator().manual_seed(3)   # a single generator draws the same for a batch of one
    assert torch.equal(run_chain(Shrink().bind(), Shrink().bind(), Shrink().bind(), torch.randn(SHAPE, generator=one),
                                 ChainConfig(), one).latent, first)
    with pytest.raises(ValueError, match=r"^drawing noise: ItemGenerators of 1 generator\(s\) for a batch of 2 "
                                         r"clip\(s\): give one generator per clip"):
        randn((2, *SHAPE[1:]), ItemGenerators.seeded([3]), torch.device("cpu"))
    # ... and a chain given a count its noise does not have, before any evaluation (it was refused after the control
    # stage, blaming the noise)
    log = EvaluationLog()
    expert = Shrink().bind(log=log)
    with pytest.raises(ValueError, match=r"^run_chain: ItemGenerators of 3 generator\(s\) for a batch of 2 clip"):
        run_chain(expert, expert, expert, torch.randn(2, *SHAPE[1:]), ChainConfig(), ItemGenerators.seeded([1, 2, 3]))
    assert sum(log.evaluations.values()) == 0
    # seeds as the chain takes them: -1 became 2**64 - 1 here (run_chain refuses it), 0.5 failed in torch
    for seed in (-1, 0.5, 2 ** 64):
        with pytest.raises(ValueError, match=rf"^ItemGenerators.seeded: seed must be an integer in 0..{2 ** 64 - 1} "
                                             rf"\(ComfyUI's range\), got {seed}$"):
            ItemGenerators.seeded([3, seed])
    assert torch.equal(torch.randn(3, generator=ItemGenerators.seeded([2 ** 64 - 1]).generators[0]),
                       torch.randn(3, generator=torch.Generator().manual_seed(2 ** 64 - 1)))


def test_a_wan_control_expert_at_the_distilled_defaults_is_warned_with_the_templates_settings():
    """ChainConfig's control stage is AnimateDiff-Lightning's (4 Euler steps, cfg 1); a Wan control expert left at it
    makes a blurred structure, which the library now says, naming the Wan templates' 8 UniPC steps at cfg 5; as it
    does with the sampler changed alone, or fewer steps. More steps or another cfg, or a control expert of another
    family, say nothing."""
    from confiner_core.latent_spaces import WAN21

    x0 = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(7))

    class Wan(OracleExpert):
        latent_space = WAN21

    def warnings_of(expert, config, cfg):
        control, refiner = expert.bind("", "", cfg), expert.bind()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            validate_chain(control, refiner, refiner, tuple(expert.x0.shape), config)
        return [str(w.message) for w in caught if "distilled" in str(w.message)]

    wan = Wan(x0, S.flow_schedule(shift=3.0), prediction="flow")
    assert warnings_of(wan, ChainConfig(), 1.0) == [
        "the control expert (Wan 2.1 latent space) at 4 control steps and cfg 1 (euler sampler): these are a "
        "step-distilled model's settings (AnimateDiff-Lightning's, the defaults); an undistilled model of that space "
        "makes a blurred structure that follows the prompt weakly in so few steps: use 8 control steps, cfg 5 and the "
        "unipc sampler (the Wan templates'), or keep these with a step-distilled model"]
    assert [w[:76] for w in warnings_of(wan, ChainConfig(control_sampler="unipc"), 1.0)] == [
        "the control expert (Wan 2.1 latent space) at 4 control steps and cfg 1 (unip"]
    assert len(warnings_of(wan, ChainConfig(control_steps=2), 1.0)) == 1
    assert warnings_of(wan, ChainConfig(control_steps=8, control_sampler="unipc"), 5.0) == []
    assert warnings_of(wan, ChainConfig(control_steps=8), 1.0) == []
    assert warnings_of(wan, ChainConfig(), 5.0) == []
    assert warnings_of(OracleExpert(x0[:, :4], S.named("sd15")), ChainConfig(), 1.0) == []


def test_the_stage_by_stage_control_stage_warns_a_wan_control_expert_as_run_chain_does_once():
    """The README's stage-by-stage example starts with generate_structure: a Wan control expert at the distilled
    defaults was warned by run_chain and not there (a trial). Each says it once (run_chain's own control stage does
    not say it again)."""
    from confiner_core.chain import generate_structure
    from confiner_core.latent_spaces import WAN21

    x0 = torch.randn(1, 16, 5, 4, 4, generator=torch.Generator().manual_seed(7))

    class Wan(OracleExpert):
        latent_space = WAN21

    wan = Wan(x0, S.flow_schedule(shift=3.0), prediction="flow")
    control, refiner = wan.bind("", "", 1.0), wan.bind()

    def distilled_warnings(run) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
        return sum("step-distilled model's settings" in str(w.message) for w in caught)

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    assert distilled_warnings(lambda: generate_structure(control, noise, ChainConfig())) == 1
    assert distilled_warnings(lambda: run_chain(control, refiner, refiner, noise, ChainConfig(te=250), 3)) == 1
    assert distilled_warnings(lambda: generate_structure(wan.bind("", "", 5.0), noise, ChainConfig())) == 0
