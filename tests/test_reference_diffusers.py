"""A permanent, independent reference for the chain's maths, written on diffusers' own schedulers.

The experts are analytic: each knows a Gaussian data distribution x0 ~ N(mu, std^2) (elementwise, its own mu and
std, so experts disagree as real ones do), and returns the exact posterior mean E[x0 | x_t] for
x_t = alpha x0 + sigma eps, as an eps, v or flow (u = eps - x0) output. The expected values below are built from
diffusers' ``DDIMScheduler``, ``EulerDiscreteScheduler`` and ``FlowMatchEulerDiscreteScheduler`` (their tables,
``step``, ``add_noise``, ``scale_model_input``, ``init_noise_sigma``) and from formulas written out here; none of
them calls the ``confiner_core`` function under test. Everything runs in float64 and must agree to 1e-4.

Covered, for eps, v and flow experts in every combination:
* the control stage (Eq. 5): Euler with trailing, leading (steps_offset 1) and linspace spacing, DDIM (eta 0 and
  0.5), flow experts against FlowMatchEulerDiscreteScheduler with their shift; DPM-Solver++(2M) against
  DPMSolverMultistepScheduler in its three spacings (flow experts: its flow sigmas with their shift); UniPC (bh2)
  against UniPCMultistepScheduler the same way;
* structure extraction on the spatial (Eq. 6) or the control schedule (Algorithm 1, line 4), then coordinated
  refinement (Algorithm 1) from T_e = 100 in 5 steps at 100, 80, 60, 40, 20, with DDIM eta 0 and 0.5 (timesteps
  count as each expert's network sees them: a VP expert's table index, a flow expert's t = N sigma, as diffusers'
  FlowMatch schedulers pass it);
* naive alternation (Eq. 7 as printed: both experts step on the spatial schedule);
* coherence guidance (Eq. 12) over three consecutive segments, guided and unguided memory, flow experts at sigma = 1;
* same seed twice -> bit-identical, in every mode.

The random draws are replayed in the order the core makes them (one ``randn`` of the latent's shape per draw, in
float32 on the generator's device): that is the seeding protocol, not the maths under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, \
    FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.utils import logging as diffusers_logging

from confiner_core import schedules as S
from confiner_core.chain import ChainConfig, generate_structure, refine_structure, run_chain
from confiner_core.experts import EvaluationLog, Expert
from confiner_core.layout import VIDEO
from confiner_core.long import CoherenceGuidance, LongConfig, generate_long, plan_segments
from confiner_core.sampling import sample_control

diffusers_logging.set_verbosity_error()

N = 1000
SHAPE = (1, 4, 3, 4, 4)
LONG_SHAPE = (1, 4, 4, 4, 4)  # ConFiner-Long segments of L = 4 frames
TOL = 1e-4
KINDS = ("epsilon", "v_prediction", "flow")
# VP experts: three different schedules, as in the paper (control AnimateDiff, spatial SD 1.5, temporal LaVie)
VP_CONFIGS = {"control": dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012),
              "spatial": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
              "temporal": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)}
FLOW_SHIFTS = {"control": 3.0, "spatial": 3.0, "temporal": 5.0}
ERRORS: dict[str, float] = {}  # the measured agreement, printed at the end of the module (pytest -s)


def f64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)


def replay(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(SHAPE, generator=generator, dtype=torch.float32).to(torch.float64)


def agree(name: str, ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    assert ours.dtype == torch.float64 and torch.isfinite(ours).all(), name
    err = float((ours - ref).abs().max())
    group = name.split("[")[0]
    ERRORS[group] = max(ERRORS.get(group, 0.0), err)
    assert err <= tol, f"{name}: max abs error {err:.3g} > {tol}"


@pytest.fixture(scope="module", autouse=True)
def report_errors():
    yield
    print("\nmax abs error against diffusers, float64:")
    for k, v in sorted(ERRORS.items()):
        print(f"  {k:<28} {v:.2e}")


# ----------------------------------------------------------------------------------------------------------------
# Noise levels from diffusers' tables, and the analytic experts

def vp_table(role: str) -> torch.Tensor:
    """abar_t for t = 0..N-1 from DDIMScheduler (float32 in diffusers, widened)."""
    return f64(DDIMScheduler(**VP_CONFIGS[role]).alphas_cumprod)


def flow_table(role: str) -> torch.Tensor:
    """s_t for t = 0..N-1 from FlowMatchEulerDiscreteScheduler's training sigmas (stored descending)."""
    return f64(FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFTS[role]).sigmas).flip(0)


def ref_coefficients(role: str, kind: str, t: int) -> tuple[float, float]:
    """(alpha, sigma) at integer t, or the clean end at t = -1 (set_alpha_to_one False: abar_0; flow: sigma 0)."""
    if kind == "flow":
        s = float(flow_table(role)[t]) if t >= 0 else 0.0
        return 1.0 - s, s
    abar = float(vp_table(role)[max(t, 0)])
    return math.sqrt(abar), math.sqrt(1 - abar)


def refine_coefficients(role: str, kind: str, t: int) -> tuple[float, float]:
    """(alpha, sigma) at a refinement timestep. T_e and the refinement timesteps count in each expert's own
    timesteps: a VP expert's table index, a flow expert's timestep as diffusers' FlowMatch schedulers pass it to
    the network, t = N sigma (sigma = t / N, whatever the shift)."""
    if kind == "flow":
        s = t / N if t >= 0 else 0.0
        return 1.0 - s, s
    return ref_coefficients(role, kind, t)


def posterior_x0(x, alpha, sigma, mu, std):
    """E[x0 | x_t = alpha x0 + sigma eps] for x0 ~ N(mu, std^2), eps ~ N(0, 1): finite for alpha = 0 as well."""
    return mu + alpha * std**2 * (x - alpha * mu) / (alpha**2 * std**2 + sigma**2)


def network_output(x, alpha, sigma, kind, mu, std):
    """What an exact expert of this kind returns at noise level (alpha, sigma)."""
    x0 = posterior_x0(x, alpha, sigma, mu, std)
    eps = (x - alpha * x0) / sigma
    return {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "flow": eps - x0}[kind]


def pair(out, x, alpha, sigma, kind):
    """(x0, eps) of a network output, written out per kind."""
    if kind == "epsilon":
        return (x - sigma * out) / alpha, out
    if kind == "v_prediction":
        return alpha * x - sigma * out, sigma * x + alpha * out
    return x - sigma * out, x + alpha * out


class GaussianExpert(Expert):
    """The analytic expert as the core sees it: like every backend, it reads its noise level for timestep t from
    its schedule (ComfyUI experts do exactly this); the reference calls :func:`network_output` with diffusers'
    noise levels instead. It records what it was asked (input, noise level)."""

    layout = VIDEO

    def __init__(self, role: str, kind: str, seed: int, shape: tuple = SHAPE):
        g = torch.Generator().manual_seed(seed)
        self.mu = f64(torch.randn(shape, generator=g))
        self.std = f64(0.5 + torch.rand(shape, generator=g))
        self.name, self.role, self.prediction = f"{role}-{kind}", role, kind
        if kind == "flow":
            self.schedule = S.from_ve_sigmas(flow_table(role), S.FLOW, name=self.name)  # as from a ComfyUI table
        else:
            self.schedule = S.from_diffusers_config(dict(DDIMScheduler(**VP_CONFIGS[role], set_alpha_to_one=False)
                                                         .config), name=self.name)
        self.calls: list[tuple[torch.Tensor, float, float]] = []

    def encode(self, prompt):
        return prompt

    def forward(self, x, t, conds):
        alpha, sigma = self.schedule.coefficients(t)
        self.calls.append((x.clone(), alpha, sigma))
        return [network_output(x, alpha, sigma, self.prediction, self.mu, self.std) for _ in conds]

    def out(self, x, alpha, sigma):
        return network_output(x, alpha, sigma, self.prediction, self.mu, self.std)


def expert(role, kind, log=None, shape=SHAPE):
    e = GaussianExpert(role, kind, {"control": 11, "spatial": 22, "temporal": 33}[role], shape)
    return e, e.bind(log=log)


# ----------------------------------------------------------------------------------------------------------------
# diffusers' schedulers for one expert

def ddim_scheduler(role, prediction="epsilon", spacing="leading", steps=None) -> DDIMScheduler:
    s = DDIMScheduler(**VP_CONFIGS[role], clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                      prediction_type=prediction, timestep_spacing=spacing)
    if steps:
        s.set_timesteps(steps)
    return s


def flow_stepper(role, ts) -> FlowMatchEulerDiscreteScheduler:
    """FlowMatchEulerDiscreteScheduler stepping through the given training-table timesteps (unshifted times
    u = (t + 1)/N passed as custom sigmas, which the scheduler shifts), then to sigma = 0."""
    s = FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFTS[role])
    s.set_timesteps(sigmas=[(t + 1) / N for t in ts])
    return s


def ddim_posterior_step(x0, eps, a_t, s_t, a_p, s_p, eta, z):
    """DDIM for a Gaussian forward process, written from the posterior of x_prev given (x_t, x0): the Markov chain
    with marginals (alpha, sigma) has x_t | x_p ~ N((a_t/a_p) x_p, s_t^2 - (a_t/a_p)^2 s_p^2), so
    Var(x_p | x_t, x0) = s_p^2 - ((a_t/a_p) s_p^2)^2 / s_t^2; DDIM takes eta^2 of it as fresh noise."""
    var = s_p**2 - ((a_t / a_p) * s_p**2) ** 2 / s_t**2
    std = eta * math.sqrt(max(var, 0.0))
    return a_p * x0 + math.sqrt(max(s_p**2 - std**2, 0.0)) * eps + std * z


class SpatialStepper:
    """One DDIM step of the spatial expert on S_s from t to t_prev, given a network output: DDIMScheduler for VP
    experts, FlowMatchEulerDiscreteScheduler (eta 0) or the written-out posterior (eta > 0) for flow experts."""

    def __init__(self, kind, ts, eta):
        self.kind, self.ts, self.eta = kind, ts, eta
        gap = ts[0] - ts[1]
        if kind == "flow":  # FlowMatchEuler stepping through sigma = t / N (explicit sigmas: no shift applied)
            self.fm = FlowMatchEulerDiscreteScheduler(shift=1.0)
            self.fm.set_timesteps(sigmas=[t / N for t in ts])
        else:
            self.ddim = {p: ddim_scheduler("spatial", p, steps=N // gap) for p in ("epsilon", "v_prediction")}

    def step(self, k, out, x, out_kind, z):
        t = self.ts[k]
        t_prev = self.ts[k + 1] if k + 1 < len(self.ts) else -1
        if self.kind != "flow":
            r = self.ddim[out_kind].step(out, t, x, eta=self.eta, variance_noise=z)
            return r.prev_sample
        a_t, s_t = refine_coefficients("spatial", "flow", t)
        a_p, s_p = refine_coefficients("spatial", "flow", t_prev)
        assert out_kind == "flow"
        if self.eta == 0:
            self.fm._step_index = k
            return self.fm.step(out, self.fm.timesteps[k], x).prev_sample
        x0, eps = pair(out, x, a_t, s_t, "flow")
        return ddim_posterior_step(x0, eps, a_t, s_t, a_p, s_p, self.eta, z)


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: the control stage

def euler_loop(sched, x, output):
    """diffusers' Euler sampling loop from x; ``output(k, model_input, alpha, sigma)`` gives what the scheduler steps
    with. VP: the model sees scale_model_input(x) at alpha = 1/sqrt(sigma^2 + 1); flow: x itself at alpha = 1 - s.
    Returns the model inputs with their (alpha, sigma), and the result."""
    inputs = []
    flow = isinstance(sched, FlowMatchEulerDiscreteScheduler)
    for k, t in enumerate(sched.timesteps):
        sv = float(sched.sigmas[k])
        if flow:
            inp, a, s = x, 1 - sv, sv
        else:
            inp, a = sched.scale_model_input(x, t), 1 / math.sqrt(sv**2 + 1)
            s = sv * a
        inputs.append((inp, a, s))
        x = sched.step(output(k, inp, a, s), t, x).prev_sample
    return inputs, x


def euler_reference(e: GaussianExpert, spacing, steps, noise):
    """diffusers' Euler loop (VP: EulerDiscreteScheduler, steps_offset 1; flow: FlowMatchEulerDiscreteScheduler)."""
    if e.prediction == "flow":
        sched = FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFTS[e.role])
        if spacing == "linspace":
            sched.set_timesteps(steps)
        else:
            ts = DDIMScheduler(timestep_spacing=spacing, steps_offset=1)
            ts.set_timesteps(steps)
            sched.set_timesteps(sigmas=[(int(t) + 1) / N for t in ts.timesteps])
        x = noise  # flow pipelines (SD3, Wan) start from the noise itself: the scheduler has no init_noise_sigma
    else:
        sched = EulerDiscreteScheduler(**VP_CONFIGS[e.role], prediction_type=e.prediction, timestep_spacing=spacing,
                                       steps_offset=1)
        sched.set_timesteps(steps)
        x = noise * sched.init_noise_sigma
    return euler_loop(sched, x, lambda k, inp, a, s: e.out(inp, a, s))


def ddim_reference(e: GaussianExpert, spacing, steps, noise, eta, generator):
    """DDIMScheduler's loop from x_T = noise (VP); for flow experts the same steps written out on the table."""
    inputs = []
    if e.prediction == "flow":
        sched = ddim_scheduler("control", spacing=spacing, steps=steps)
        ts = [int(t) for t in sched.timesteps]
        fm = flow_stepper(e.role, ts)  # eta = 0: DDIM on a flow schedule is the flow Euler step
        x = noise
        for k, t in enumerate(ts):
            t_prev = ts[k + 1] if k + 1 < len(ts) else -1
            a_t, s_t = ref_coefficients(e.role, "flow", t)
            a_p, s_p = ref_coefficients(e.role, "flow", t_prev)
            inputs.append((x, a_t, s_t))
            out = e.out(x, a_t, s_t)
            if eta == 0:
                x = fm.step(out, fm.timesteps[k], x).prev_sample
            else:
                x0, eps = pair(out, x, a_t, s_t, "flow")
                x = ddim_posterior_step(x0, eps, a_t, s_t, a_p, s_p, eta, replay(generator))
        return inputs, x
    sched = ddim_scheduler(e.role, e.prediction, spacing, steps)
    x = noise
    for t in sched.timesteps:
        a, s = ref_coefficients(e.role, "vp", int(t))
        inputs.append((x, a, s))
        z = replay(generator) if eta > 0 else None
        x = sched.step(e.out(x, a, s), int(t), x, eta=eta, variance_noise=z).prev_sample
    return inputs, x


def multistep_reference(scheduler, e: GaussianExpert, spacing, steps, noise):
    """The loop of diffusers' multistep ``scheduler`` class (DPMSolverMultistepScheduler: DPM-Solver++, order 2,
    midpoint; UniPCMultistepScheduler: order 2, bh2; both with final sigma 0) from x_T = noise, the model fed x
    itself. VP: the expert's betas; flow, "linspace": the class's flow sigmas with the expert's shift (as diffusers'
    Wan configurations use them); flow, other spacings: the same scheduler stepping through the table's sigmas at
    the timesteps a VP scheduler of that spacing lists."""
    if e.prediction == "flow":
        sched = scheduler(use_flow_sigmas=True, flow_shift=FLOW_SHIFTS[e.role], prediction_type="flow_prediction")
        sched.set_timesteps(steps)
        if scheduler is UniPCMultistepScheduler and spacing == "linspace":   # it moves sigma 1 down by 1e-6, to
            sched.sigmas[0] = 1.0                                            # a point the table cannot hold
        if spacing != "linspace":
            vp = scheduler(timestep_spacing=spacing, steps_offset=1)
            vp.set_timesteps(steps)
            table = flow_table(e.role)
            sched.sigmas = torch.tensor([float(table[int(t)]) for t in vp.timesteps] + [0.0])
    else:
        sched = scheduler(**VP_CONFIGS[e.role], prediction_type=e.prediction, timestep_spacing=spacing,
                          steps_offset=1)
        sched.set_timesteps(steps)
    inputs, x = [], noise
    for k, t in enumerate(sched.timesteps):
        sv = float(sched.sigmas[k])
        if e.prediction == "flow":
            a, s = 1 - sv, sv
        else:
            a = 1 / math.sqrt(sv**2 + 1)
            s = sv * a
        inputs.append((x, a, s))
        x = sched.step(e.out(x, a, s), t, x).prev_sample
    return inputs, x


CONTROL_CASES = [("euler", sp, 0.0, n) for sp in ("trailing", "leading", "linspace") for n in (4, 5, 8)] + \
                [("ddim", sp, eta, 4) for sp in ("trailing", "leading") for eta in (0.0, 0.5)] + \
                [(sampler, sp, 0.0, n) for sampler in ("dpmpp_2m", "unipc")
                 for sp in ("trailing", "leading", "linspace") for n in (2, 3, 4, 8)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sampler,spacing,eta,steps", CONTROL_CASES)
def test_control_stage_matches_diffusers_step_by_step(kind, sampler, spacing, eta, steps):
    e, d = expert("control", kind)
    noise = replay(torch.Generator().manual_seed(5))
    config = ChainConfig(control_steps=steps, control_sampler=sampler, control_spacing=spacing, control_eta=eta)
    ours = generate_structure(d, noise, config, torch.Generator().manual_seed(6))
    if sampler == "euler":
        inputs, ref = euler_reference(e, spacing, steps, noise)
    elif sampler in ("dpmpp_2m", "unipc"):
        scheduler = DPMSolverMultistepScheduler if sampler == "dpmpp_2m" else UniPCMultistepScheduler
        inputs, ref = multistep_reference(scheduler, e, spacing, steps, noise)
    else:
        inputs, ref = ddim_reference(e, spacing, steps, noise, eta, torch.Generator().manual_seed(6))
    name = f"control {sampler}[{kind}-{spacing}-{steps}-{eta}]"
    assert len(e.calls) == len(inputs) == steps
    for k, ((x, a, s), (x_ref, a_ref, s_ref)) in enumerate(zip(e.calls, inputs)):
        # float32 sigmas in diffusers: 1 - s near s = 1 keeps 6e-8 of absolute error
        assert s == pytest.approx(s_ref, rel=1e-5, abs=1e-7) and a == pytest.approx(a_ref, rel=1e-5, abs=1e-7), k
        agree(f"{name} input {k}", x, x_ref)
    agree(name, ours, ref)


def test_control_stage_timesteps_are_diffusers():
    """The lists the issue quotes: leading with steps_offset 1, and flow experts' FlowMatchEuler noise levels."""
    from confiner_core.sampling import control_timesteps

    e, _ = expert("control", "epsilon")
    assert control_timesteps(e.schedule, 4, "euler", "leading") == [751, 501, 251, 1]
    assert control_timesteps(e.schedule, 4, "ddim", "leading") == [751, 501, 251, 1]
    assert control_timesteps(e.schedule, 5, "euler", "linspace") == [999.0, 749.25, 499.5, 249.75, 0.0]
    f, _ = expert("control", "flow")
    fm = FlowMatchEulerDiscreteScheduler(shift=3.0)
    fm.set_timesteps(4)
    got = [f.schedule.coefficients(t)[1] for t in control_timesteps(f.schedule, 4, "euler", "linspace")]
    assert got == pytest.approx([float(s) for s in fm.sigmas[:-1]], rel=1e-6)
    trailing = [f.schedule.coefficients(t)[1] for t in control_timesteps(f.schedule, 4, "euler", "trailing")]
    assert trailing == pytest.approx([1.0, 0.9, 0.75, 0.5], rel=1e-6)  # ComfyUI's "simple" on the shift-3 table


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: structure extraction and refinement

TS = [100, 80, 60, 40, 20]


def extraction_reference(structure, role, kind, noise):
    """Eq. 6 / Algorithm 1 line 4 with diffusers: DDIMScheduler.add_noise, or (1 - s) x0 + s eps for flow."""
    if kind == "flow":
        s = TS[0] / N
        return (1 - s) * structure + s * noise
    return ddim_scheduler(role).add_noise(structure, noise, torch.tensor([TS[0]]))


def renoise(x0, role, kind, t, noise):
    if kind == "flow":
        s = t / N
        return (1 - s) * x0 + s * noise
    return ddim_scheduler(role).add_noise(x0, noise, torch.tensor([t]))


def x0_of(role, kind, out, x, t):
    """The x0 diffusers' schedulers compute: DDIMScheduler.step's pred_original_sample (VP), or
    sample - sigma * model_output (FlowMatchEulerDiscreteScheduler)."""
    if kind == "flow":
        return x - (t / N) * out
    return ddim_scheduler(role, kind, steps=50).step(out, t, x).pred_original_sample


@pytest.mark.parametrize("spatial_kind", KINDS)
@pytest.mark.parametrize("temporal_kind", KINDS)
@pytest.mark.parametrize("structure_noise", ["spatial", "control"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_coordinated_refinement_matches_diffusers(spatial_kind, temporal_kind, structure_noise, eta):
    """Algorithm 1: per step, x0 of the spatial expert re-noised on the temporal schedule (Eq. 9), the temporal
    expert's x0 (Eq. 10) re-noised on the spatial schedule (Eq. 11), one DDIM step of the spatial expert (Eq. 8)."""
    se, sd = expert("spatial", spatial_kind)
    te, td = expert("temporal", temporal_kind)
    ce, _ = expert("control", "flow" if spatial_kind == "flow" else "epsilon")
    structure = f64(torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)))
    config = ChainConfig(te=100, refine_steps=5, mode="coordinated", eta=eta, structure_noise=structure_noise,
                         matching="same_index")   # Algorithm 1 as printed (the default "auto" is below)
    ours = refine_structure(sd, td, structure, config, torch.Generator().manual_seed(9), control_schedule=ce.schedule)

    g = torch.Generator().manual_seed(9)
    noise_role, noise_kind = ("spatial", spatial_kind) if structure_noise == "spatial" else ("control", ce.prediction)
    x = extraction_reference(structure, noise_role, "flow" if noise_kind == "flow" else "vp", replay(g))
    stepper = SpatialStepper(spatial_kind, TS, eta)
    sk = "flow" if spatial_kind == "flow" else "vp"
    tk = "flow" if temporal_kind == "flow" else "vp"
    for k, t in enumerate(TS):
        a, s = refine_coefficients("spatial", sk, t)
        x0_s = x0_of("spatial", spatial_kind, se.out(x, a, s), x, t)                      # line 10
        x_t = renoise(x0_s, "temporal", tk, t, replay(g))                                  # Eq. 9
        a_T, s_T = refine_coefficients("temporal", tk, t)
        x0_t = x0_of("temporal", temporal_kind, te.out(x_t, a_T, s_T), x_t, t)            # Eq. 10
        x = renoise(x0_t, "spatial", sk, t, replay(g))                                     # Eq. 11
        z = replay(g) if eta > 0 else None
        x = stepper.step(k, se.out(x, a, s), x, spatial_kind, z)                           # line 14, Eq. 8
        assert len(se.calls) >= 2 * (k + 1)
    agree(f"coordinated[{spatial_kind}-{temporal_kind}-{structure_noise}-{eta}]", ours, x)
    assert len(se.calls) == 10 and len(te.calls) == 5


@pytest.mark.parametrize("spatial_kind", KINDS)
@pytest.mark.parametrize("temporal_kind", KINDS)
def test_auto_matching_is_the_same_index_where_the_noise_levels_agree(spatial_kind, temporal_kind):
    """The default matching "auto" runs as "same_index" where both experts' schedules are of one kind and put T_e =
    100 at noise levels (sigma/alpha, from diffusers' tables) within a factor of 1.5, else as "nearest"."""
    _, sd = expert("spatial", spatial_kind)
    _, td = expert("temporal", temporal_kind)
    levels = []
    for role, kind in (("spatial", spatial_kind), ("temporal", temporal_kind)):
        a, s = refine_coefficients(role, "flow" if kind == "flow" else "vp", 100)
        levels.append(s / a)
    one_kind = (spatial_kind == "flow") == (temporal_kind == "flow")
    expected = "same_index" if one_kind and max(levels) <= 1.5 * min(levels) else "nearest"
    structure = f64(torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)))
    runs = {m: refine_structure(sd, td, structure, ChainConfig(te=100, matching=m), torch.Generator().manual_seed(9))
            for m in ("auto", "same_index", "nearest")}
    assert torch.equal(runs["auto"], runs[expected])
    if not torch.equal(runs["same_index"], runs["nearest"]):
        assert not torch.equal(runs["auto"], runs["same_index" if expected == "nearest" else "nearest"])


@pytest.mark.parametrize("spatial_kind", KINDS)
@pytest.mark.parametrize("temporal_kind", KINDS)
def test_naive_alternation_matches_eq7_as_printed(spatial_kind, temporal_kind):
    """Eq. 7: Denoising(theta_X, V', t, S_s), X = spatial, temporal, spatial, ...: the temporal expert's noise
    prediction (VP spatial schedule: eps; flow: its velocity eps - x0) stepped with the spatial scheduler."""
    se, sd = expert("spatial", spatial_kind)
    te, td = expert("temporal", temporal_kind)
    structure = f64(torch.randn(SHAPE, generator=torch.Generator().manual_seed(4)))
    config = ChainConfig(te=100, refine_steps=5, mode="alternate")
    ours = refine_structure(sd, td, structure, config, torch.Generator().manual_seed(8))

    g = torch.Generator().manual_seed(8)
    sk = "flow" if spatial_kind == "flow" else "vp"
    tk = "flow" if temporal_kind == "flow" else "vp"
    x = extraction_reference(structure, "spatial", sk, replay(g))
    stepper = SpatialStepper(spatial_kind, TS, 0.0)
    for k, t in enumerate(TS):
        if k % 2 == 0:
            a, s = refine_coefficients("spatial", sk, t)
            x = stepper.step(k, se.out(x, a, s), x, spatial_kind, None)
            continue
        a_T, s_T = refine_coefficients("temporal", tk, t)  # the temporal network reads x as if on its own schedule
        x0_T, eps_T = pair(te.out(x, a_T, s_T), x, a_T, s_T, temporal_kind)
        if spatial_kind == "flow":
            x = stepper.step(k, eps_T - x0_T, x, "flow", None)
        else:
            x = stepper.step(k, eps_T, x, "epsilon", None)
    agree(f"alternation[{spatial_kind}-{temporal_kind}]", ours, x)
    assert len(se.calls) == 3 and len(te.calls) == 2  # one evaluation per step, spatial first


# ----------------------------------------------------------------------------------------------------------------
# ConFiner-Long: coherence guidance (Eq. 12)

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("memory", ["guided", "unguided"])
def test_coherence_guided_segments_match_diffusers(kind, memory):
    """Three consecutive control stages (Euler, trailing, 4 steps) with gamma = 0.1. At each step the expert's
    noise prediction eps (VP; v experts converted to eps) or velocity u (flow) is replaced by
    (1 - 2 gamma) d + 2 gamma d_prev and handed to the scheduler's step; d_prev is the previous segment's unguided
    value (the specification's stored eps-hat) or its guided one. Flow experts start at sigma = 1, where alpha = 0."""
    gamma, steps = 0.1, 4
    e, d = expert("control", kind)
    noises = [replay(torch.Generator().manual_seed(40 + i)) for i in range(3)]
    hook = CoherenceGuidance(gamma, memory)
    ours = []
    for n in noises:
        ours.append(sample_control(d, n, [999, 749, 499, 249], "euler", eps_hook=hook))
        hook.next_structure()

    previous: dict[int, torch.Tensor] = {}
    for i, n in enumerate(noises):
        current = {}

        def guided_output(k, inp, a, s):
            out = e.out(inp, a, s)
            d = out if kind == "flow" else pair(out, inp, a, s, kind)[1]  # velocity u, or eps (v converted)
            guided = (1 - 2 * gamma) * d + 2 * gamma * previous[k] if k in previous else d
            current[k] = guided if memory == "guided" else d
            return guided

        if kind == "flow":
            sched = FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFTS["control"])
            sched.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])
            _, x = euler_loop(sched, n, guided_output)
        else:
            sched = EulerDiscreteScheduler(**VP_CONFIGS["control"], prediction_type="epsilon",
                                           timestep_spacing="trailing", steps_offset=1)
            sched.set_timesteps(steps)
            _, x = euler_loop(sched, n * sched.init_noise_sigma, guided_output)
        previous = current
        agree(f"coherence[{kind}-{memory}] segment {i}", ours[i], x)
    assert not torch.allclose(ours[1], sample_control(d, noises[1], [999, 749, 499, 249], "euler"), atol=1e-3)


def test_flow_long_video_with_coherence_guidance_is_finite():
    """The issue's case: a flow control and temporal expert in ConFiner-Long with gamma = 0.1 (was all NaN)."""
    c, s, t = (expert(r, "flow", shape=LONG_SHAPE)[1] for r in ("control", "spatial", "temporal"))
    out = []
    generate_long(c, s, t, plan_segments(12, 4, True), (1, 4, 4, 4), ChainConfig(), LongConfig(segment_length=4),
                  torch.Generator().manual_seed(0), lambda x, w: out.append(x))
    video = torch.cat(out, dim=2)
    assert video.shape[2] == 12 and torch.isfinite(video).all()


# ----------------------------------------------------------------------------------------------------------------
# Same seed, same output: every mode, bit for bit

DETERMINISM = [dict(mode=m) for m in ("coordinated", "standard", "temporal", "alternate")] + [
    dict(control_sampler="ddim", control_eta=0.5, eta=0.5), dict(structure_noise="control"),
    dict(matching="nearest"), dict(matching="continuous"), dict(control_spacing="linspace"),
    dict(control_spacing="leading", control_sampler="ddim")]


@pytest.mark.parametrize("kind", ["epsilon", "flow"])
@pytest.mark.parametrize("overrides", DETERMINISM, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_same_seed_is_bit_identical_in_every_mode(kind, overrides):
    config = ChainConfig(**overrides)
    runs = []
    for seed in (1, 1, 2):
        c, s, t = (expert(r, kind)[1] for r in ("control", "spatial", "temporal"))
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        runs.append(run_chain(c, s, t, noise, config, torch.Generator().manual_seed(seed)).latent)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("memory", ["guided", "unguided"])
@pytest.mark.parametrize("noise_init", ["shuffle", "freenoise", "independent"])
def test_same_seed_is_bit_identical_long(memory, noise_init):
    def video(seed):
        log = EvaluationLog()
        c, s, t = (expert(r, "epsilon", log, LONG_SHAPE)[1] for r in ("control", "spatial", "temporal"))
        out = []
        generate_long(c, s, t, plan_segments(12, 4, True), (1, 4, 4, 4), ChainConfig(),
                      LongConfig(segment_length=4, freenoise_window=4, freenoise_stride=2, noise_init=noise_init,
                                 coherence_memory=memory),
                      torch.Generator().manual_seed(seed), lambda x, w: out.append(x))
        return torch.cat(out, dim=2)

    a, b, c = video(3), video(3), video(4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def exact_ode_solution(e: GaussianExpert, x_start: torch.Tensor, t: float) -> torch.Tensor:
    """Where the probability-flow ODE takes x_start (at the schedule's t) at the clean end, for Gaussian data: the
    flow keeps each element's standardized value z = (x - alpha mu) / sqrt(alpha^2 std^2 + sigma^2), so it lands at
    mu + std z."""
    alpha, sigma = e.schedule.coefficients(t)
    return e.mu + e.std * (x_start - alpha * e.mu) / torch.sqrt(alpha**2 * e.std**2 + sigma**2)


@pytest.mark.parametrize("kind", ["epsilon", "flow"])
@pytest.mark.parametrize("steps", [8, 16])
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc"])
def test_second_order_samplers_land_nearer_the_exact_ode_solution_than_euler(kind, steps, sampler):
    """The point of a second-order control sampler: at the same step count it ends nearer the ODE's own endpoint
    (measured, DPM-Solver++ 2M / UniPC / Euler: 8 steps 0.35 / 0.33 / 0.52 for eps, 0.33 / 0.31 / 0.58 for flow;
    16 steps 0.13 / 0.13 / 0.28 and 0.05 / 0.05 / 0.30). What remains is the last step's jump to sigma 0, first
    order in every diffusers sampler."""
    from confiner_core.sampling import control_timesteps, initial_latent

    e, d = expert("control", kind)
    noise = replay(torch.Generator().manual_seed(5))
    errors = {}
    for name in ("euler", sampler):
        ts = control_timesteps(e.schedule, steps, name, "trailing")
        out = sample_control(d, noise, ts, name)
        exact = exact_ode_solution(e, initial_latent(e.schedule, noise, ts[0], name), ts[0])
        errors[name] = float((out - exact).abs().max())
    assert errors[sampler] < 0.75 * errors["euler"], errors
