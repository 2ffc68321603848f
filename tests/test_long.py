"""ConFiner-Long: the segment plan, consistency initialization, coherence guidance (Eq. 12), the long loop."""

import json
import os
import re
import warnings
from dataclasses import replace

import pytest
import torch

from confiner_core import schedules as S
from confiner_core.chain import ChainConfig, default_te
from confiner_core.cli import main
from confiner_core.experts import EvaluationLog
from confiner_core.long import (CoherenceGuidance, LongConfig, StructureNoise, coherence_guidance, freenoise,
                                generate_long, plan_segments, shuffled_noise)
from confiner_core.prompts import parse_prompt
from confiner_core.sampling import sample_control
from test_chain import OracleExpert


@pytest.mark.parametrize("frames", [1, 7, 16, 17, 64, 100, 600])
@pytest.mark.parametrize("L", [2, 5, 8, 16, 17])
@pytest.mark.parametrize("staggered", [True, False])
def test_plan_covers_every_frame_once(frames, L, staggered):
    plan = plan_segments(frames, L, staggered)
    covered = [f for w in plan.windows for f in range(w.out_start, w.out_stop)]
    assert covered == list(range(frames))
    for w in plan.windows:
        assert sum(e - a for _, a, e in w.parts) == L  # every window is refined at full length
    used = {i for w in plan.windows for i, _, _ in w.parts}
    assert used == set(range(plan.structures))


@pytest.mark.parametrize("frames,L", [(64, 16), (600, 16), (40, 8), (17, 16), (85, 17), (64, 9)])
def test_staggered_windows_straddle_every_structure_junction(frames, L):
    plan = plan_segments(frames, L, True)
    for w in plan.windows:
        (i, a, e), (j, a2, e2) = w.parts
        assert j == i + 1 and (a, e) == (L // 2, L) and (a2, e2) == (0, L // 2)  # Eq. 13: S_p[L/2:L] + S_n[0:L/2]
    # every junction between consecutive structures lies strictly inside one window
    for i in range(plan.structures - 1):
        assert sum(1 for w in plan.windows if (i, L // 2, L) in w.parts and (i + 1, 0, L // 2) in w.parts) == 1
    assert all(j % L == L - L // 2 for j in plan.structure_junctions)  # S_w[L/2:L] fills the window's start
    assert plan.window_junctions == list(range(L, frames, L))[:len(plan.windows) - 1]


def test_plan_rejects_bad_segment_length():
    with pytest.raises(ValueError, match="segment_length must be >= 2"):
        plan_segments(64, 1, True)
    assert plan_segments(64, 17, True).windows[0].parts == ((0, 8, 17), (1, 0, 8))  # 4k+1 frames: halves 9 + 8


def test_consistency_init_is_deterministic_permutation_of_base():
    shape = (1, 4, 16, 3, 3)
    a = StructureNoise("shuffle", shape, 5, torch.Generator().manual_seed(0))
    b = StructureNoise("shuffle", shape, 5, torch.Generator().manual_seed(0))
    for i in range(5):
        na, nb = a(i), b(i)
        assert torch.equal(na, nb)
        # each frame of the segment noise is exactly one frame of the base noise, each used once
        matches = [[torch.equal(na[:, :, f], a.base[:, :, g]) for g in range(16)] for f in range(16)]
        assert all(sum(row) == 1 for row in matches) and all(sum(col) == 1 for col in zip(*matches))
    assert not torch.equal(a(0), a(1))  # a fresh shuffle per segment


def test_shuffled_noise_is_a_frame_permutation():
    base = torch.randn(1, 2, 10, 2, 2, generator=torch.Generator().manual_seed(1))
    s = shuffled_noise(base, torch.Generator().manual_seed(2))
    assert torch.equal(torch.sort(s.flatten()).values, torch.sort(base.flatten()).values)
    assert not torch.equal(s, base)


def test_freenoise_repeats_shuffled_blocks():
    n = freenoise((1, 1, 40, 2, 2), window=16, stride=4, generator=torch.Generator().manual_seed(0))
    for start in range(0, 40 - 16, 4):
        block = n[:, :, start + 16:start + 20]
        src = n[:, :, start:start + 4]
        for f in range(block.shape[2]):
            assert any(torch.equal(block[:, :, f], src[:, :, g]) for g in range(4))
    m = freenoise((1, 1, 40, 2, 2), window=16, stride=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(n, m)
    with pytest.raises(ValueError, match="stride"):
        freenoise((1, 1, 40, 2, 2), window=4, stride=8, generator=torch.Generator())


def test_coherence_guidance_closed_form():
    g = torch.Generator().manual_seed(0)
    e, p = torch.randn(5, generator=g), torch.randn(5, generator=g)
    # the gradient of ||e - p||^2 by autograd, then Eq. 12
    e_req = e.clone().requires_grad_(True)
    ((e_req - p) ** 2).sum().backward()
    for gamma in [0.0, 0.1, 0.3]:
        expected = e - gamma * e_req.grad
        assert torch.allclose(coherence_guidance(e, p, gamma), expected, atol=1e-6)
        assert torch.allclose(coherence_guidance(e, p, gamma), (1 - 2 * gamma) * e + 2 * gamma * p, atol=1e-6)


def test_gamma_zero_equals_no_guidance_and_gamma_pulls_towards_previous():
    x0 = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    d = OracleExpert(x0, S.named("animatediff")).bind()
    ts = [999, 749, 499, 249]
    noise1 = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    noise2 = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    plain = sample_control(d, noise2, ts)
    hook0 = CoherenceGuidance(0.0)
    sample_control(d, noise1, ts, eps_hook=hook0)
    hook0.next_structure()
    assert torch.equal(sample_control(d, noise2, ts, eps_hook=hook0), plain)
    hook = CoherenceGuidance(0.3, "guided")   # keeps what it stepped with: the pulled eps can be read back
    sample_control(d, noise1, ts, eps_hook=hook)
    prev = dict(hook.current)
    hook.next_structure()
    sample_control(d, noise2, ts, eps_hook=hook)
    # step 0 of the second structure used (1-2g) eps_hat + 2g eps_prev
    x_T = noise2 * S.named("animatediff").coefficients(999)[1]
    a, s = S.named("animatediff").coefficients(999)
    eps_hat = (x_T - a * x0) / s
    assert torch.allclose(hook.current[0], 0.4 * eps_hat + 0.6 * prev[0], atol=1e-5)
    assert (hook.current[0] - prev[0]).norm() < 0.5 * (eps_hat - prev[0]).norm()
    # the default memory is the specification's: the previous segment's eps-hat, not the eps it stepped with
    default = CoherenceGuidance(0.3)
    assert default.memory == "unguided"
    sample_control(d, noise1, ts, eps_hook=default)
    default.next_structure()
    sample_control(d, noise2, ts, eps_hook=default)
    assert torch.allclose(default.current[0], eps_hat, atol=1e-5)


def test_prompt_schedule():
    # the grammar of confiner_core.prompts: a key on every entry (tests/test_prompts.py covers the rest)
    p = parse_prompt("0: a red ball | 64: a blue ball|128: a green ball", frames=501)
    assert [p.at(f) for f in (0, 63, 64, 127, 500)] == ["a red ball", "a red ball", "a blue ball", "a blue ball",
                                                        "a green ball"]
    with pytest.raises(ValueError, match="no start key"):
        parse_prompt("0: a | b", frames=16)


@pytest.mark.parametrize("staggered", [True, False])
@pytest.mark.parametrize("L", [16, 17, 33])   # (Wan's odd segments split 8 + 9, 16 + 17)
def test_structure_centre_is_the_middle_of_the_frames_it_covers(staggered, L):
    from confiner_core.long import structure_centre

    plan = plan_segments(200, L, staggered)
    first_frame = {}  # structure -> output frame its frame 0 would occupy
    for w in plan.windows:
        placed = w.out_start
        for i, a, e in w.parts:
            first_frame.setdefault(i, placed - a)
            placed += e - a
    for i, start in first_frame.items():
        if 0 <= start + L // 2 < plan.frames:
            assert structure_centre(plan, i) == start + L // 2


def test_prompt_travel_encodes_each_prompt_once_per_expert():
    x0 = torch.randn(1, 4, 8, 4, 4, generator=torch.Generator().manual_seed(7))
    experts = [OracleExpert(x0, S.named(n)) for n in ("animatediff", "sd15", "lavie")]
    encoded = []
    for e in experts:
        e.encode = lambda p, _name=e.name: encoded.append(p) or p
    c, s, t = (e.bind() for e in experts)
    encoded.clear()
    generate_long(c, s, t, plan_segments(64, 8, True), (1, 4, 4, 4), ChainConfig(), LongConfig(segment_length=8),
                  torch.Generator().manual_seed(0), lambda lat, w: None, parse_prompt("0: a | 32: b", frames=64))
    assert sorted(encoded) == sorted(["a", "b"] * 3)


@pytest.mark.parametrize("text, staggered, changes", [
    ("0: a | 24: b", True, [16, 24]),    # window 1 (centre 24) is b; structure 2 (centre 32) is b, from frame 24
    ("0: a | 24: b", False, [16]),       # unstaggered, a structure is its window
    ("0: a | 24: a", True, []),          # the same text again is no change
    ("0: a | 16: b | 40: a", True, [8, 16, 32, 40]),   # structure 1 (centre 16) is b: from frame 8
    ("a", True, []),
])
def test_the_junctions_where_the_prompt_changes(text, staggered, changes):
    """Seam scores leave these out (a change the schedule asked for is no seam): the window junctions between
    windows refined with different prompts, and the structure junctions between structures laid out with
    different ones, read here off each output frame's window and structure as the plan lays them out."""
    from confiner_core.long import prompt_change_junctions, structure_entries, window_entries

    plan, schedule = plan_segments(64, 16, staggered), parse_prompt(text, frames=64)
    assert prompt_change_junctions(plan, schedule) == changes
    # the same from the plan's windows directly: the prompt of each output frame's window and structure
    prompts = [e.prompt for e in schedule.entries]
    window_prompt, structure_prompt = [], []
    for w, window in enumerate(plan.windows):
        pieces = [s for s, a, b in window.parts for _ in range(b - a)]
        for k in range(window.out_stop - window.out_start):
            window_prompt.append(prompts[window_entries(plan, schedule)[w]])
            structure_prompt.append(prompts[structure_entries(plan, schedule)[pieces[k]]])
    seen = [t for t in plan.junctions if (window_prompt[t], structure_prompt[t]) !=
            (window_prompt[t - 1], structure_prompt[t - 1])]
    assert seen == changes


@pytest.mark.parametrize("text, starts", [("0: a | 24: b", [(0, "a"), (16, "b")]),     # 24 is window 1's centre
                                          ("0: a | 25: b", [(0, "a"), (32, "b")]),
                                          ("0: a | 20: b | 22: c", [(0, "a"), (16, "c")]),  # b holds no centre
                                          ("0: a | 16: b | 32: c", [(0, "a"), (16, "b"), (32, "c")])])
def test_the_applied_schedule_is_the_prompt_each_window_is_refined_with(text, starts):
    """What the command line prints and reports as applied is what the refinement evaluations were given: each
    window's spatial and temporal evaluations all see the one prompt the applied schedule gives its frames."""
    from confiner_core.long import applied_schedule, render_applied_schedule

    seen = []

    class Recording(OracleExpert):
        def forward(self, x, t, conds):
            seen.append((self.name, conds[0]))
            return super().forward(x, t, conds)

    x0 = torch.randn(1, 4, 16, 4, 4, generator=torch.Generator().manual_seed(7))
    c = OracleExpert(x0, S.named("animatediff")).bind()
    s, t = (Recording(x0, S.named(n), name=n).bind() for n in ("sd15", "lavie"))
    plan, schedule = plan_segments(48, 16, True), parse_prompt(text, frames=48)
    per_window = []
    generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(), LongConfig(segment_length=16),
                  torch.Generator().manual_seed(0), lambda lat, w: per_window.append((w, set(seen))) or seen.clear(),
                  schedule)
    applied = applied_schedule(plan, schedule)
    assert [(e.start, e.prompt) for e in applied.entries] == starts
    for w, used in per_window:
        expected = applied.at(w.out_start)
        assert used == {("sd15", expected), ("lavie", expected)}, (w, used)
        assert all(applied.at(f) == expected for f in range(w.out_start, w.out_stop))
    moved = render_applied_schedule(plan, schedule)
    assert (moved is None) == (starts == [(e.start, e.prompt) for e in schedule.entries])
    if moved:   # the keys it moved, each to its junction
        key = int(re.search(rf"(\d+): {starts[1][1]}\b", text).group(1))
        assert f"nearest window junction: frame {key} → {starts[1][0]}" in moved and f"frames {starts[1][0]}-" in moved


@pytest.mark.parametrize("text, frames, segment, unused, layout", [
    ("0: a | 8: b", 16, 16, [], ["a"]),              # one window, centred at 8: b from frame 0; structure 0 (at 0): a
    ("0: a | 8: b | 40: c", 48, 16, [], ["a"]),      # window 0 is centred at 8 too
    ("0: a | 20: b | 22: c", 48, 16, ["b"], []),     # frames 20-21 hold no structure's centre and no window's
    ("0: a | 16: b | 18: c", 64, 16, [], ["b"]),     # structure 1 (at 16) is laid out with b, no window refines it
    ("0: a | 16: b | 32: c", 48, 16, [], []),
    # structure 3 (frames 40-55, centred at 48: at 39 in the video) is laid out with b and cut away: b never shows
    ("0: a | 39: b", 40, 16, ["b"], [])])
def test_a_prompt_no_window_is_refined_with_is_named_as_unused(text, frames, segment, unused, layout):
    """An entry whose frames hold no window's centre is not refined into the video: the applied schedule names it
    with the fix (a run that dropped it used to say nothing, and a one-window plan listed its junctions as ''); one
    a structure is laid out with still shapes the video's motion, and is named as such, not as unused."""
    from confiner_core.long import (applied_schedule, layout_only_entries, render_applied_schedule,
                                    structure_centre, unused_entries, window_centre)

    plan, schedule = plan_segments(frames, segment, True), parse_prompt(text, frames=frames)
    shown = {e.prompt for e in applied_schedule(plan, schedule).entries}
    # the structures of which some frame is shown: staggered, structure i is output frames [i L - L/2, i L + L/2)
    laid_out = {schedule.at(structure_centre(plan, i)) for i in range(plan.structures) if i * segment - segment // 2 <
                frames}
    refined = {schedule.at(window_centre(w)) for w in plan.windows}
    assert refined == shown
    assert [p for _, _, p in unused_entries(plan, schedule)] == unused == \
        [e.prompt for e in schedule.entries if e.prompt not in refined | laid_out]
    assert [p for _, _, p in layout_only_entries(plan, schedule)] == layout == \
        [e.prompt for e in schedule.entries if e.prompt in laid_out - refined]
    text = render_applied_schedule(plan, schedule)
    if unused:
        assert f"not used, since no refinement window or shown structure of {segment} frames is centred in its frames" \
            in text
        assert all(f"'{p}'" in text for p in unused) and "junction: )" not in text
    if layout:
        assert "only lays out a structure (its motion and composition), since no refinement window of " \
            f"{segment} frames is centred in its frames" in text and all(f"'{p}'" in text for p in layout)
    if len(plan.windows) == 1:
        assert f"the one window of {segment} frames is refined with the prompt at its centre frame, 8" in text


def test_the_applied_schedule_names_the_keys_it_moved_not_every_junction():
    """1000 frames in 16-frame windows have 62 junctions: the console listed them all on one line, then "16, 32, …,
    592" where one key had moved from 500 to 496."""
    from confiner_core.long import render_applied_schedule

    text = render_applied_schedule(plan_segments(1000, 16, True), parse_prompt("0: a | 500: b", frames=1000))
    assert text.split("\n")[0].endswith("so a prompt starts at the nearest window junction: frame 500 → 496):")


def test_generate_long_refuses_bad_arguments_before_any_evaluation():
    """A library caller's mistakes name the argument: a seed outside ComfyUI's range or not an integer (7.9 was
    read as 7, "7" as 7, True as 1, -3 failed in numpy), a schedule parsed for other frames (its late entries were
    never used), a frame shape with a frame axis."""
    x0 = torch.randn(1, 4, 8, 4, 4, generator=torch.Generator().manual_seed(7))
    log = EvaluationLog()
    c, s, t = (OracleExpert(x0, S.named(n)).bind(log=log) for n in ("animatediff", "sd15", "lavie"))
    plan = plan_segments(32, 16, True)

    def run(seed=0, shape=(1, 4, 4, 4), prompts=None):
        generate_long(c, s, t, plan, shape, ChainConfig(), LongConfig(segment_length=16), seed, lambda lat, w: None,
                      prompts)

    for seed in (7.9, "7", True, -3, 2**64):
        with pytest.raises(ValueError, match=r"seed must be an integer in 0\.\.18446744073709551615"):
            run(seed)
    with pytest.raises(ValueError, match=r"prompts cover 48 frames but the plan has 32: .*parse_prompt\(text, 32\)"):
        run(prompts=parse_prompt("0: a | 32: b", frames=48))
    with pytest.raises(ValueError, match=r"frame_shape is \(B, C, h, w\) of one latent frame.*, got \(4, 4, 4\)"):
        run(shape=(4, 4, 4))
    # a batch: its clip 0 was not the video its seed makes alone (a trial); one video a call, as the node takes
    with pytest.raises(ValueError, match=r"^generate_long makes one video, but frame_shape has a batch of 2: use "
                                         r"batch 1 and call it once per seed"):
        run(shape=(2, 4, 4, 4))
    # a latent video's shape, as latent_shape() gives it, stands for its frames' (a researcher sliced it by hand)
    windows = {}
    x16 = torch.randn(1, 4, 16, 4, 4, generator=torch.Generator().manual_seed(7))
    c, s, t = (OracleExpert(x16, S.named(n)).bind() for n in ("animatediff", "sd15", "lavie"))
    for shape in ((1, 4, 4, 4), (1, 4, 16, 4, 4)):
        generate_long(c, s, t, plan, shape, ChainConfig(), LongConfig(segment_length=16), 0,
                      lambda lat, w, shape=shape: windows.setdefault(shape, []).append(lat))
    assert all(torch.equal(a, b) for a, b in zip(*windows.values())) and len(windows[(1, 4, 4, 4)]) == 2
    # settings as dicts, a resume that is no LongState, LongConfig fields of the wrong kind: each was an
    # AttributeError or TypeError from inside (freenoise_window=0 ran with the default window, without a word)
    sink = lambda lat, w: None   # noqa: E731
    for args, message in (((plan, (1, 4, 4, 4), ChainConfig(), {"gamma": 0.1}), "long must be a LongConfig"),
                          ((plan, (1, 4, 4, 4), {"mode": "standard"}, LongConfig()), "chain must be a ChainConfig"),
                          ((40, (1, 4, 4, 4), ChainConfig(), LongConfig()), "plan must be a SegmentPlan, got int")):
        with pytest.raises(TypeError, match=f"^generate_long: {message}"):
            generate_long(c, s, t, *args, 0, sink)
    # a device this machine lacks, or none PyTorch knows: as load_experts says it (torch's "Torch not compiled with
    # CUDA enabled" came from the first noise)
    missing = next(d for d in ("cuda", "mps", "xpu")
                   if not (torch.backends.mps if d == "mps" else getattr(torch, d)).is_available())
    with pytest.raises(ValueError, match=rf"^generate_long: device {missing}: PyTorch sees no {missing} device on "
                                         rf"this machine .*; use device='cpu'"):
        generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(), LongConfig(), 0, sink, device=missing)
    with pytest.raises(ValueError, match=r"^generate_long: device 'gpu' is not a device PyTorch knows; use cpu, cuda"):
        generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(), LongConfig(), 0, sink, device="gpu")
    with pytest.raises(TypeError, match="^generate_long: resume must be the LongState that on_window_done received"):
        generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(), LongConfig(), 0, sink, resume={"next_window": 1})
    with pytest.raises(TypeError, match=r"^LongConfig.staggered must be True or False or None \(the plan's\), got 'no'$"):
        generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(), LongConfig(staggered="no"), 0, sink)
    # a sink, state hook or prompt text the loop cannot use failed after the first window's sampling (TypeError
    # "'NoneType' object is not callable"), or as "'str' object has no attribute 'frames'"
    for fn, kwargs, message in (
            (None, {}, r"sink must be a function called as sink\(latent, window\), got NoneType"),
            (lambda lat: None, {}, r"sink is called as sink\(latent, window\), with 2 arguments, which <lambda> "
                                   r"does not take"),
            (sink, {"on_window_done": lambda: None}, r"on_window_done is called as on_window_done\(state\), with 1 "
                                                     r"argument, which <lambda> does not take"),
            (sink, {"prepare": print}, r"sink is called as sink\(latent, window, prepared\), with 3 arguments"),
            (sink, {"prompts": "0: a | 16: b"}, r"prompts must be a PromptSchedule, e.g. "
                                                r"confiner_core.prompts.parse_prompt\(text, 32\), got str")):
        with pytest.raises(TypeError, match=f"^generate_long: {message}"):
            generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(), LongConfig(), 0, fn, **kwargs)
    with pytest.raises(ValueError, match=r"^LongConfig.segment_length must be a whole number >= 2 frames, or None "
                                         r"for the default, got 1$"):   # (plan_segments' rule; 1 was taken here)
        LongConfig(segment_length=1)
    for window in (0, 4.5):
        with pytest.raises(ValueError, match=rf"^LongConfig.freenoise_window must be a whole number >= 1 .*got "
                                             rf"{window}$"):
            generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(),
                          LongConfig(noise_init="freenoise", freenoise_window=window), 0, sink)
    # a stride above the window: "FreeNoise needs window >= 1 and 1 <= stride <= window" named neither setting,
    # after the chain's checks (a review); a given window at validate(), one segment's by the plan
    for config, window in ((LongConfig(noise_init="freenoise", freenoise_window=4, freenoise_stride=6),
                            "freenoise_window=4"),
                           (LongConfig(noise_init="freenoise", freenoise_stride=20),
                            r"one segment's 16 latent frames \(freenoise_window's default\)")):
        with pytest.raises(ValueError, match=rf"^LongConfig.freenoise_stride=\d+ must be at most the FreeNoise "
                                             rf"window, {window}: use a stride of at most \d+$"):
            generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(), config, 0, sink)
    with pytest.raises(ValueError, match=r"freenoise_stride=6 must be at most the FreeNoise window"):
        LongConfig(noise_init="freenoise", freenoise_window=4, freenoise_stride=6).validate()
    assert sum(log.evaluations.values()) == 0


def test_long_loop_keeps_two_structures_and_counts(monkeypatch):
    import confiner_core.long as long_module

    held = []   # the structures the loop holds when each window is joined (README: two at a time)
    join = long_module.window_latent
    monkeypatch.setattr(long_module, "window_latent",
                        lambda structures, *args: held.append(sorted(structures)) or join(structures, *args))
    x0 = torch.randn(1, 4, 8, 4, 4, generator=torch.Generator().manual_seed(7))
    log = EvaluationLog()
    c, s, t = (OracleExpert(x0, S.named(n)).bind(log=log) for n in ("animatediff", "sd15", "lavie"))
    plan = plan_segments(40, 8, True)
    got = []
    generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(), LongConfig(segment_length=8),
                  torch.Generator().manual_seed(0), lambda lat, w: got.append((w.index, lat.shape[2])))
    assert got == [(0, 8), (1, 8), (2, 8), (3, 8), (4, 8)]
    assert log.evaluations == {"control": 4 * plan.structures, "refine": 15 * len(plan.windows)}
    assert held == [[w, w + 1] for w in range(len(plan.windows))]   # window w's two, and no other


def _control_calls(expert, plan, steps):
    """(timesteps, inputs) of each structure's control steps, from the oracle's record (structures are made in
    order, ``steps`` evaluations each, and only the control expert is this one)."""
    calls = expert.calls
    assert len(calls) == plan.structures * steps
    return [calls[i * steps:(i + 1) * steps] for i in range(plan.structures)]


def test_the_long_loop_pulls_each_structure_towards_the_previous_ones_predicted_noise():
    """Eq. 12 inside generate_long: structure i steps with (1 - 2 gamma) eps_hat_i + 2 gamma eps_hat_(i-1) at each
    step k, eps_hat_(i-1) the previous structure's prediction at the same step (the unguided memory, the
    specification's). Read back from what the control expert saw: its predictions are the oracle's (x - a x0) / s,
    and the eps a step used follows from two consecutive inputs, x_k / a_k + (sigma_(k+1) - sigma_k) eps = x_(k+1) /
    a_(k+1) (a DDIM / Euler step, sigma = s / a). Turning the hand-over off in the loop (a review's mutation) passed
    every test of this file."""
    gamma, steps = 0.2, 4
    x0 = torch.randn(1, 4, 8, 4, 4, generator=torch.Generator().manual_seed(7))
    schedule = S.named("animatediff")
    oracle = OracleExpert(x0, schedule)
    c = oracle.bind()
    s, t = (OracleExpert(x0, S.named(n)).bind() for n in ("sd15", "lavie"))
    plan = plan_segments(24, 8, True)
    generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(control_steps=steps), LongConfig(segment_length=8,
                  gamma=gamma), 3, lambda lat, w: None)

    def eps_hat(t, x):
        a, sigma = schedule.coefficients(t)
        return (x - a * x0) / sigma

    def stepped(call, following):
        (t0, x0_), (t1, x1) = call, following
        (a0, s0), (a1, s1) = schedule.coefficients(t0), schedule.coefficients(t1)
        return (x1 / a1 - x0_ / a0) / (s1 / a1 - s0 / a0)

    structures = _control_calls(oracle, plan, steps)
    assert plan.structures == 4
    for i in range(plan.structures):
        for k in range(steps - 1):   # (the last step's result is no expert's input)
            used = stepped(structures[i][k], structures[i][k + 1])
            own = eps_hat(*structures[i][k])
            if i == 0:   # nothing to pull towards
                assert torch.allclose(used, own, atol=2e-4, rtol=1e-4), (i, k)
                continue
            previous = eps_hat(*structures[i - 1][k])
            assert torch.allclose(used, (1 - 2 * gamma) * own + 2 * gamma * previous, atol=2e-4, rtol=1e-4), (i, k)
            assert not torch.allclose(used, own, atol=1e-2)   # (the pull is there to see)


def test_each_structure_starts_from_its_own_frame_shuffle_of_one_base_noise():
    """Consistency initialization inside generate_long: every structure's starting noise is a permutation of the
    frames of one base noise, and no two structures share a permutation. A review's mutation (every structure
    reusing structure 0's noise) passed every test of this file."""
    steps = 2
    x0 = torch.randn(1, 4, 8, 4, 4, generator=torch.Generator().manual_seed(7))
    oracle = OracleExpert(x0, S.named("animatediff"))
    s, t = (OracleExpert(x0, S.named(n)).bind() for n in ("sd15", "lavie"))
    plan = plan_segments(40, 8, True)
    generate_long(oracle.bind(), s, t, plan, (1, 4, 4, 4), ChainConfig(control_steps=steps),
                  LongConfig(segment_length=8, gamma=0.0), 11, lambda lat, w: None)
    starts = [calls[0][1] for calls in _control_calls(oracle, plan, steps)]   # the same scale at the same timestep
    base = sorted(starts[0][0, :, f].flatten().tolist() for f in range(8))
    for i, x in enumerate(starts):
        assert sorted(x[0, :, f].flatten().tolist() for f in range(8)) == base, i   # the base's frames, reordered
    assert len({tuple(x.flatten().tolist()) for x in starts}) == plan.structures   # each its own order


def test_a_staggered_window_is_the_second_half_of_one_structure_then_the_first_half_of_the_next():
    """Eq. 13's S_w[L/2:L] + S_(w+1)[0:L/2] as window_latent builds it, read from structures whose every frame holds
    its (structure, frame) number: the plan tests check the window's parts, not the clip made of them (a review's
    mutation joining them in reverse passed every test of this file)."""
    from confiner_core.long import window_latent

    L = 9
    d = OracleExpert(torch.zeros(1, 4, L, 2, 2), S.named("sd15")).bind()
    plan = plan_segments(3 * L, L, True)
    structures = {i: torch.arange(L, dtype=torch.float32).add(100 * i).view(1, 1, L, 1, 1).expand(1, 4, L, 2, 2)
                  for i in range(plan.structures)}
    for w in plan.windows:
        clip = window_latent(structures, w.parts, d, d, {})
        i = w.index
        expected = [100 * i + f for f in range(L // 2, L)] + [100 * (i + 1) + f for f in range(L // 2)]
        assert clip[0, 0, :, 0, 0].tolist() == expected, w


def test_every_task_of_a_run_draws_from_a_stream_of_its_own(monkeypatch):
    """The shared noise, each structure and each window have their own generator seed (the docstring's rule), and a
    run asks for exactly those streams, each once: a review's mutation drawing window w from structure w's stream
    passed every test of this file."""
    from confiner_core import long as long_module

    kinds = (long_module.SHARED_NOISE_TASK, long_module.STRUCTURE_TASK, long_module.WINDOW_TASK)
    seeds = [long_module.task_seed(5, kind, index) for kind in kinds for index in range(50)]
    assert len(set(seeds)) == len(seeds)
    assert long_module.task_seed(5, long_module.STRUCTURE_TASK, 0) != long_module.task_seed(6, long_module.STRUCTURE_TASK, 0)
    asked = []
    make = long_module.task_generator
    monkeypatch.setattr(long_module, "task_generator",
                        lambda seed, kind, index=0: asked.append((kind, index)) or make(seed, kind, index))
    x0 = torch.randn(1, 4, 8, 4, 4, generator=torch.Generator().manual_seed(7))
    c, s, t = (OracleExpert(x0, S.named(n)).bind() for n in ("animatediff", "sd15", "lavie"))
    plan = plan_segments(24, 8, True)
    generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(control_steps=2, eta=0.5), LongConfig(segment_length=8),
                  5, lambda lat, w: None)
    assert sorted(asked) == sorted([(long_module.SHARED_NOISE_TASK, 0)]
                                   + [(long_module.STRUCTURE_TASK, i) for i in range(plan.structures)]
                                   + [(long_module.WINDOW_TASK, w) for w in range(len(plan.windows))])


@pytest.mark.parametrize("config,said", [
    (LongConfig(noise_init="shuffle", freenoise_window=8), "freenoise_window=8 shapes FreeNoise's noise, and "
                                                           "noise_init is 'shuffle', so it changes nothing"),
    (LongConfig(noise_init="freenoise", freenoise_window=100), "freenoise_window=100 covers all of this run's noise "
                                                               "(3 structures of 8 latent frames), so nothing is "
                                                               "rescheduled"),
    (LongConfig(gamma=0.0, coherence_memory="guided"), "coherence_memory='guided' chooses what coherence guidance "
                                                       "pulls towards, and gamma is 0 (off), so it changes nothing"),
    (LongConfig(noise_init="freenoise", freenoise_window=8), None)])
def test_generate_long_warns_of_settings_that_change_nothing(config, said):
    """The command line refuses them; the library ran them silently (a FreeNoise window longer than the run's noise
    made independent noise, a window beside shuffle was ignored)."""
    from confiner_core.errors import ConFinerWarning

    x0 = torch.randn(1, 4, 8, 4, 4, generator=torch.Generator().manual_seed(7))
    c, s, t = (OracleExpert(x0, S.named(n)).bind() for n in ("animatediff", "sd15", "lavie"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate_long(c, s, t, plan_segments(16, 8, True), (1, 4, 4, 4), ChainConfig(), config,
                      torch.Generator().manual_seed(0), lambda lat, w: None)
    mine = [str(w.message) for w in caught if issubclass(w.category, ConFinerWarning) and
            ("changes nothing" in str(w.message) or "nothing is rescheduled" in str(w.message))]
    if said is None:
        assert mine == [], mine
    else:
        assert len(mine) == 1 and mine[0].startswith(said), mine


def test_generate_long_warns_of_prompts_no_window_is_refined_with():
    """generate() warned of a schedule's entries the video never shows; generate_long, called by a script, made the
    video without them and said nothing (a trial's "20: a blue ball" over 32 frames in segments of 16)."""
    from confiner_core.embedded.experts import embedded_experts
    from confiner_core.errors import ConFinerWarning

    experts = embedded_experts("sd")
    denoisers = [experts[role].bind("a red ball") for role in ("control", "spatial", "temporal")]
    for text, unused in (("0: a red ball | 20: a blue ball | 24: a cat", "1 prompt of the schedule is not used"),
                         ("0: a red ball | 16: a cat", None)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generate_long(*denoisers, plan_segments(32, 16), (1, 4, 8, 8), ChainConfig(control_steps=1, refine_steps=1,
                          te=20), LongConfig(), 0, lambda lat, w: None, prompts=parse_prompt(text, 32))
        said = [str(w.message) for w in caught if issubclass(w.category, ConFinerWarning) and "schedule" in
                str(w.message)]
        if unused is None:
            assert said == [], said
        else:
            assert len(said) == 1 and said[0].startswith(unused) and "frames 20-23: 'a blue ball'" in said[0], said


def test_a_seed_generator_stands_for_its_seed_and_one_that_has_drawn_is_refused():
    """Every task's generator comes from the run's seed (so a resumed run is identical): a freshly seeded generator
    gives the int seed's video; one that has drawn since would be read as its seed all the same, so it is refused."""
    x0 = torch.randn(1, 4, 8, 4, 4, generator=torch.Generator().manual_seed(7))
    c, s, t = (OracleExpert(x0, S.named(n)).bind() for n in ("animatediff", "sd15", "lavie"))
    plan = plan_segments(16, 8, True)

    def video(seed):
        got = []
        generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(), LongConfig(segment_length=8), seed,
                      lambda lat, w: got.append(lat))
        return torch.cat(got, dim=2)

    assert torch.equal(video(5), video(torch.Generator().manual_seed(5)))
    assert not torch.equal(video(5), video(6))
    drawn = torch.Generator().manual_seed(5)
    torch.randn(1, generator=drawn)
    with pytest.raises(ValueError, match="has drawn numbers since it was seeded with 5; pass that seed as an int"):
        video(drawn)


def test_generate_long_refuses_a_config_or_a_resume_state_of_another_plan():
    """A segment length that disagrees with the plan was ignored; a state from another plan failed deep in the
    loop (a tensor size mismatch) or finished nothing. Both are refused before any evaluation; a state whose every
    window is done is the whole video's, returned as it is."""
    x0 = torch.randn(1, 4, 8, 4, 4, generator=torch.Generator().manual_seed(7))
    log = EvaluationLog()
    c, s, t = (OracleExpert(x0, S.named(n)).bind(log=log) for n in ("animatediff", "sd15", "lavie"))
    plan, states = plan_segments(24, 8, True), []

    def run(long=LongConfig(), plan=plan, resume=None, seed=0, chain=ChainConfig()):
        return generate_long(c, s, t, plan, (1, 4, 4, 4), chain, long, seed, lambda lat, w: None,
                             resume=resume, on_window_done=states.append)

    with pytest.raises(ValueError, match=r"long.segment_length is 16 but the plan's segments have 8 frames: plan "
                                         r"with plan_segments\(frames, 16\)"):
        run(LongConfig(segment_length=16))
    final = run()   # segment_length None: the plan's
    assert final.next_window == 3 and states[-1] is final and sum(final.evaluations.values()) == 4 * 4 + 3 * 15
    assert run(resume=final) is final   # nothing left to do
    evaluated = sum(log.evaluations.values())
    with pytest.raises(ValueError, match="resume continues at window 3, but this plan has 2 windows"):
        run(plan=plan_segments(16, 8, True), resume=final)
    with pytest.raises(ValueError, match=r"resume holds structure 1 of shape \[1, 4, 8, 4, 4\], but this plan makes "
                                         r"5 structures of shape \[1, 4, 16, 4, 4\]"):
        generate_long(c, s, t, plan_segments(64, 16, True), (1, 4, 4, 4), ChainConfig(), LongConfig(), 0,
                      lambda lat, w: None, resume=states[0])
    # a state of a run with another seed or other settings went on as another video, joined to the first one's
    # windows without a word (found by a researcher's trial)
    for kwargs, said in (({"seed": 5}, "seed 0 -> 5"), ({"long": LongConfig(gamma=0.3)}, "long.gamma 0.1 -> 0.3"),
                         ({"chain": ChainConfig(refine_steps=4)}, "chain.refine_steps 5 -> 4"),
                         ({"plan": plan_segments(32, 8, True)}, "plan.frames 24 -> 32")):
        with pytest.raises(ValueError, match=rf"^resume is the state of a run with other settings \({said}\): its "
                                             rf"windows would be joined to another video's; resume with that run's "
                                             rf"seed, plan, configs and prompts$"):
            run(resume=states[0], **kwargs)
    assert sum(log.evaluations.values()) == evaluated
    # the plan's own values written out are the same run's, and so are the chain's defaults the experts settle
    # (T_e None is SD's 100; a trial's resume with ChainConfig(te=100) was refused as "chain.te None -> 100")
    resumed = run(resume=states[0], long=LongConfig(segment_length=8, staggered=True))
    assert resumed.next_window == 3 and resumed.counts() == final.counts()
    written_out = ChainConfig(te=default_te(s.schedule)).with_matching(s.schedule, t.schedule)
    assert (written_out.te, written_out.matching) != (ChainConfig().te, ChainConfig().matching) == (None, "auto")
    resumed = run(resume=states[0], chain=written_out)
    assert resumed.next_window == 3 and resumed.counts() == final.counts()


def test_long_cli_reports_plan_and_seams(tmp_path):
    out = str(tmp_path / "long")
    assert main(["generate", "--out", out, "--frames", "40", "--segment-length", "8", "--height", "64",
                 "--width", "64", "--quiet", "--prompt", "0: a red ball bouncing | 16: a blue ball bouncing"]) == 0
    r = json.load(open(os.path.join(out, "report.json")))
    assert r["segment_plan"]["structures"] == 6 and len(r["segment_plan"]["windows"]) == 5
    assert r["metrics"]["seam_score"] > 0
    assert r["expert_evaluations"] == {"control": 24, "refine": 75}
    # what the experts were given: the schedule's prompts (the schedule's text was reported as a prompt)
    assert r["prompt_used"] == ["a red ball bouncing", "a blue ball bouncing"]
    out = str(tmp_path / "freenoise")
    assert main(["generate", "--out", out, "--frames", "40", "--segment-length", "8", "--height", "64", "--width",
                 "64", "--quiet", "--noise-init", "freenoise", "--prompt", "0: a red ball"]) == 0
    r = json.load(open(os.path.join(out, "report.json")))
    assert r["prompt_used"] == "a red ball"
    # FreeNoise's window and stride as used: one segment's latent frames and a quarter of it (None in the settings)
    assert (r["long"]["freenoise_window"], r["long"]["freenoise_stride"]) == (8, 2)


def test_unstaggered_windows_of_a_causal_space_need_no_vae(tmp_path):
    """Without staggering a window is one whole structure, already in the refiner's space: in a causal (Wan-like)
    space each went through a decode and an encode it did not need (10 VAE calls for 5 windows); staggered windows
    join two half-structures through pixels (one decode per structure, one encode per window)."""
    reports = {}
    for name, extra in (("staggered", []), ("unstaggered", ["--no-stagger"])):
        out = str(tmp_path / name)
        assert main(["generate", "--out", out, "--embedded", "wan", "--frames", "85", "--height", "64", "--width",
                     "64", "--quiet", *extra]) == 0
        reports[name] = json.load(open(os.path.join(out, "report.json")))
    assert reports["staggered"]["vae_calls"] == {"refine": 6 + 5}
    assert reports["unstaggered"]["vae_calls"] == {}


def test_coherence_guidance_is_finite_for_flow_experts_at_sigma_one():
    """Eq. 12 on a flow expert guides the velocity u = eps - x0; at sigma = 1 (alpha = 0) x0 = x_t - u_guided and
    eps = x_t, with no division by alpha (the old eps-guidance divided by alpha = 0: all NaN)."""
    from confiner_core.sampling import guided_prediction

    x0 = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    flow = S.flow_schedule(shift=3.0)
    assert flow.coefficients(999) == (0.0, 1.0)
    d = OracleExpert(x0, flow, prediction="flow").bind()
    ts = [999, 749, 499, 249]
    n1, n2 = (torch.randn(x0.shape, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    hook = CoherenceGuidance(0.1)
    first = sample_control(d, n1, ts, eps_hook=hook)
    u_prev = hook.current[0]
    assert torch.allclose(u_prev, n1 - x0, atol=1e-6)  # the oracle's velocity at sigma = 1
    hook.next_structure()
    pred = guided_prediction(d, n2, 999, 0, hook)
    u_guided = 0.8 * (n2 - x0) + 0.2 * u_prev
    assert torch.allclose(pred.x0, n2 - u_guided, atol=1e-6) and torch.allclose(pred.eps, n2, atol=1e-6)
    second = sample_control(d, n2, ts, eps_hook=hook)
    assert torch.isfinite(first).all() and torch.isfinite(second).all()


def test_color_anchor_matches_the_junction_frames_and_is_opt_in():
    """Colour anchoring shifts each window so its first latent frames have the mean of its predecessor's last ones;
    off by default, and refused without staggering."""
    from confiner_core.long import anchor_window, channel_statistics

    g = torch.Generator().manual_seed(0)
    window = torch.randn(1, 4, 8, 3, 3, generator=g) + torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 4, 1, 1, 1)
    reference = channel_statistics(torch.randn(1, 4, 2, 3, 3, generator=g))
    anchored = anchor_window(window, 2, reference)
    assert torch.allclose(channel_statistics(anchored[:, :, :2])[0], reference[0], atol=1e-5)
    assert torch.allclose(anchored - window, (anchored - window)[:, :, :1].expand_as(window), atol=1e-6)  # a shift
    assert LongConfig().color_anchor is False
    with pytest.raises(ValueError, match="staggered"):
        LongConfig(color_anchor=True, staggered=False).validate()

    x0 = torch.randn(1, 4, 8, 4, 4, generator=torch.Generator().manual_seed(7))
    c, s, t = (OracleExpert(x0, S.named(n)).bind() for n in ("animatediff", "sd15", "lavie"))
    plan = plan_segments(32, 8, True)
    runs = {}
    for anchor in (False, True):
        got = []
        generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(), LongConfig(segment_length=8, color_anchor=anchor),
                      torch.Generator().manual_seed(0), lambda lat, w: got.append(lat))
        runs[anchor] = got
    assert torch.equal(runs[False][0], runs[True][0])  # the first window is the reference
    for prev, cur in zip(runs[True], runs[True][1:]):
        assert torch.allclose(channel_statistics(cur[:, :, :2])[0], channel_statistics(prev[:, :, -2:])[0], atol=1e-5)


def test_color_anchor_keeps_the_change_a_travelling_prompt_asks_for():
    """Anchored across a prompt change, a travelling prompt's red ball stayed red where the prompt asked for blue (a
    trial): the first window of a new prompt is not shifted (it is the unanchored run's) and the next windows follow
    it; before the change, windows are anchored as ever."""
    from confiner_core.long import channel_statistics, window_entries
    from confiner_core.prompts import parse_prompt

    x0 = torch.randn(1, 4, 8, 4, 4, generator=torch.Generator().manual_seed(7))
    c, s, t = (OracleExpert(x0, S.named(n)).bind() for n in ("animatediff", "sd15", "lavie"))
    plan = plan_segments(48, 8, True)
    prompts = parse_prompt("0: a red ball | 24: a blue ball", 48)
    entries = window_entries(plan, prompts)
    change = entries.index(1)
    assert 1 < change < len(plan.windows) - 1, entries
    runs = {}
    for anchor in (False, True):
        got = []
        generate_long(c, s, t, plan, (1, 4, 4, 4), ChainConfig(), LongConfig(segment_length=8, color_anchor=anchor),
                      torch.Generator().manual_seed(0), lambda lat, w: got.append(lat), prompts)
        runs[anchor] = got
    assert torch.equal(runs[True][change], runs[False][change])   # a new reference, not shifted
    assert not torch.equal(runs[True][change - 1], runs[False][change - 1])
    for w in [w for w in range(1, len(plan.windows)) if w != change]:   # each other window follows its predecessor
        assert torch.allclose(channel_statistics(runs[True][w][:, :, :2])[0],
                              channel_statistics(runs[True][w - 1][:, :, -2:])[0], atol=1e-5), w


def test_plan_segments_names_a_count_of_the_wrong_type():
    """plan_segments("40", 16) and plan_segments(40, 16.0) raised Python's own TypeError from a comparison."""
    for frames, segment, name in (("40", 16, "frames"), (40, 16.0, "segment_length"), (True, 16, "frames")):
        with pytest.raises(TypeError, match=f"^plan_segments: {name} must be an integer, got "):
            plan_segments(frames, segment)


def test_generate_passes_each_step_to_a_callback_with_its_structure_or_window(tmp_path):
    """``generate(request, callback=f)`` on a ConFiner-Long run: 4 control steps per structure, tagged with it, and
    5 refinement steps per window, tagged with it; the files are those of a run without a callback."""
    from confiner_core.generate import GenerateRequest, generate

    request = GenerateRequest(frames=40, height=64, width=64, seed=2, out=str(tmp_path / "a"))
    infos = []
    report = generate(request, show_progress=False, callback=infos.append)
    plan = report["segment_plan"]
    structures, windows = 1 + max(p[0] for w in plan["windows"] for p in w["parts"]), len(plan["windows"])
    control = [i["structure"] for i in infos if i["stage"] == "control"]
    refine = [i["window"] for i in infos if i["stage"] == "refine"]
    assert sorted(control) == [s for s in range(structures) for _ in range(4)]
    assert refine == [w for w in range(windows) for _ in range(5)]
    generate(replace(request, out=str(tmp_path / "b")), show_progress=False)
    for name in ("video.mp4", "frames.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_window_join_without_a_vae_says_the_fix_first():
    """Staggered windows of a causal space join through pixels: an expert without its VAE is refused with what to
    connect first, then why (an artist read "ConFiner-Long joins pieces of ... structures" before the fix)."""
    from confiner_core.embedded.experts import embedded_experts
    from confiner_core.long import check_window_join

    experts = embedded_experts("wan")
    control, refiner = experts["control"].bind(), experts["temporal"].bind()
    check_window_join(control, refiner)   # both VAEs: joined
    control.expert.codec = None
    with pytest.raises(ValueError, match=r"^the control expert needs its VAE: connect one to control VAE \(ConFiner-Long "
                                         r"joins pieces of .+ structures into .+ windows through pixels: a causal "
                                         r"video VAE cannot cut latents at any frame\)$"):
        check_window_join(control, refiner, {"control": "connect one to control VAE"})


def test_a_segment_length_a_causal_space_cannot_hold_is_refused_before_any_evaluation():
    """generate_long took 16-frame segments in a 4k+1 space: each window promised 16 frames and decoded to 13. Both
    experts' spaces are checked: a 4k+1 refiner of SD-family structures too."""
    from confiner_core.embedded.experts import embedded_experts

    wan, sd = embedded_experts("wan"), embedded_experts("sd")
    log = EvaluationLog()
    for control, refiner, role in ((wan, wan, "control"), (sd, wan, "spatial")):
        denoisers = [control["control"].bind(log=log), refiner["spatial"].bind(log=log),
                     refiner["temporal"].bind(log=log)]
        with pytest.raises(ValueError, match=rf"^the plan's segment_length = 16: the {role} expert's .+ latent space "
                                             r"holds 4k\+1 frames .+: use 13 or 17$"):
            generate_long(*denoisers, plan_segments(32, 16), (1, control["control"].latent_space.channels, 8, 8),
                          ChainConfig(), LongConfig(), 0, sink=lambda *a: None)
    assert sum(log.evaluations.values()) == 0


@pytest.mark.parametrize("mode, unused", [("standard", "temporal"), ("temporal", "spatial")])
def test_an_expert_the_mode_does_not_evaluate_sets_no_frame_rule(mode, unused):
    """SD-like experts refining alone (mode standard: the spatial one; temporal: the temporal one) beside a 4k+1
    expert the mode never calls: 16 frames were refused for that expert's space, in run_chain and generate_long. The
    video is the one made without it, which is never evaluated."""
    from confiner_core.chain import run_chain
    from confiner_core.embedded.experts import embedded_experts
    from confiner_core.sampling import randn

    wan, sd = embedded_experts("wan"), embedded_experts("sd")
    log = EvaluationLog()
    roles = {role: sd[role].bind(log=log) for role in ("control", "spatial", "temporal")}
    never = EvaluationLog()   # the unused expert's evaluations
    with_unused = {**roles, unused: wan[unused].bind(log=never)}
    without = {**roles, unused: None} if mode == "temporal" else roles
    config = ChainConfig(mode=mode)

    def chain(experts):
        g = torch.Generator().manual_seed(1)
        return run_chain(*experts.values(), randn((1, 4, 16, 8, 8), g, torch.device("cpu")), config, g).latent

    assert torch.equal(chain(with_unused), chain(without))
    windows, encoded = [], []
    unused_expert = with_unused[unused].expert
    encode = unused_expert.encode
    unused_expert.encode = lambda prompt: encoded.append(prompt) or encode(prompt)
    generate_long(*with_unused.values(), plan_segments(32, 16), (1, 4, 8, 8), config, LongConfig(), 0,
                  sink=lambda latent, window: windows.append(latent.shape[2]),
                  prompts=parse_prompt("0: a red ball | 16: a blue ball", 32))
    assert windows == [16, 16]
    assert encoded == []   # its text encoder ran for every prompt of a travelling schedule (a UMT5-XXL forward)
    assert log.evaluations.get("refine", 0) > 0 and sum(never.evaluations.values()) == 0
    with pytest.raises(ValueError, match="the spatial expert's .+ holds 4k\\+1 frames"):   # evaluated: refused
        run_chain(roles["control"], wan["spatial"].bind(), roles["temporal"], torch.zeros(1, 4, 16, 8, 8),
                  ChainConfig(mode="coordinated"), torch.Generator().manual_seed(1))


def test_an_unstaggered_plan_needs_no_vae_where_the_experts_share_a_space():
    """Without staggering a window is one whole structure (no join), as the README says; generate_long refused the
    missing VAE all the same. Staggered halves of a causal space still need it."""
    from confiner_core.embedded.experts import embedded_experts

    experts = embedded_experts("wan")
    for expert in experts.values():
        expert.codec = None
    denoisers = [experts[role].bind() for role in ("control", "spatial", "temporal")]
    shape = (1, experts["control"].latent_space.channels, 8, 8)
    windows = []
    generate_long(*denoisers, plan_segments(34, 17, staggered=False), shape, ChainConfig(),
                  LongConfig(staggered=False), 0, sink=lambda latent, window: windows.append(latent.shape[2]))
    assert windows == [5, 5]   # 17 frames each, 4k+1 latents
    with pytest.raises(ValueError, match="^the control expert needs its VAE"):
        generate_long(*denoisers, plan_segments(34, 17), shape, ChainConfig(), LongConfig(), 0, sink=print)


def test_settings_that_disagree_with_the_plan_are_refused():
    """LongConfig(staggered=False) ran a staggered plan's windows without a word; plan_segments took "yes"."""
    from confiner_core.embedded.experts import embedded_experts

    experts = embedded_experts("sd")
    denoisers = [experts[role].bind() for role in ("control", "spatial", "temporal")]
    with pytest.raises(ValueError, match=r"^long.staggered is False but the plan's windows are staggered: "
                                         r"generate_long follows its plan, so plan with plan_segments\(frames, 8, "
                                         r"staggered=False\), or leave long.staggered None$"):
        generate_long(*denoisers, plan_segments(16, 8), (1, 4, 8, 8), ChainConfig(), LongConfig(staggered=False), 0,
                      sink=print)
    # and the other way: an explicit staggered=True (Eq. 13 asked for) beside an unstaggered plan
    with pytest.raises(ValueError, match=r"^long.staggered is True but the plan's windows are not staggered: .+ "
                                         r"staggered=True\), or leave long.staggered None$"):
        generate_long(*denoisers, plan_segments(16, 8, False), (1, 4, 8, 8), ChainConfig(),
                      LongConfig(staggered=True), 0, sink=print)
    with pytest.raises(ValueError, match="^color_anchor anchors a window .+ only a staggered plan has"):
        generate_long(*denoisers, plan_segments(16, 8, False), (1, 4, 8, 8), ChainConfig(),
                      LongConfig(color_anchor=True), 0, sink=print)
    with pytest.raises(TypeError, match=r"^plan_segments: staggered must be True or False \(None: True\), got 'yes'$"):
        plan_segments(24, 8, "yes")


def test_a_freenoise_window_of_one_segments_video_frames_is_warned_where_latents_pack_frames(tmp_path):
    """FreeNoise's window counts latent frames; a researcher on Wan gave one segment's 17 video frames (5 latent
    frames), a window more than 3 segments long, without a word. Warned by generate_long and, once, on the command
    line; one segment's latent frames are not."""
    from confiner_core.chain import ConFinerWarning
    from confiner_core.embedded.experts import embedded_experts

    said = (r" 17 is one segment's video frames, but FreeNoise's window counts latent frames: a segment here is 5 "
            r"latent frames \(17 video frames\), so the window spans 3\.4 segments; leave it out for one segment's$")
    experts = embedded_experts("wan")
    denoisers = [experts[role].bind() for role in ("control", "spatial", "temporal")]
    shape = experts["control"].latent_space.latent_shape(1, 1, 64, 64)
    plan = plan_segments(85, 17)

    def run(window):
        generate_long(*denoisers, plan, shape, ChainConfig(), LongConfig(noise_init="freenoise",
                                                                        freenoise_window=window), 0, sink=lambda x, w: None)

    with pytest.warns(ConFinerWarning, match="^freenoise_window" + said):
        run(17)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConFinerWarning)
        run(5)
    with pytest.warns(ConFinerWarning, match="^--freenoise-window" + said) as said_once:
        assert main(["generate", "--embedded", "wan", "--frames", "85", "--segment-length", "17", "--noise-init",
                     "freenoise", "--freenoise-window", "17", "--height", "64", "--width", "64", "--quiet",
                     "--out", str(tmp_path / "v")]) == 0
    assert len(said_once) == 1   # (not by generate_long again)


def test_whole_window_frames_are_the_counts_that_end_on_a_whole_window():
    """The counts nearest a video that ends inside its last window (refined whole for fewer frames) that end on a
    whole one: one window fewer, and the same windows. The Wan template's 161 frames at 33 kept 29 of its last 33:
    132 or 165, of which Wan's 4k+1 joined clip holds 165 only; a whole number of windows needs none."""
    plan = plan_segments(161, 33, True)
    assert [w.frames for w in plan.windows] == [33, 33, 33, 33, 29]
    assert plan.whole_window_frames() == (132, 165)
    assert plan.whole_window_frames(lambda n: n % 4 == 1) == (33, 165)   # the nearest 4k+1 counts
    for frames in (132, 165):   # each is as promised: every window whole, the same windows for 165
        assert all(w.frames == 33 for w in plan_segments(frames, 33, True).windows)
    assert len(plan_segments(165, 33, True).windows) == len(plan.windows)
    assert plan_segments(165, 33, True).whole_window_frames() == ()
    assert plan_segments(40, 16, False).whole_window_frames() == (32, 48)   # unstaggered: 16 + 16 + 8
    # 81 frames keep 15 of their last 33, and neither 66 nor 99 is 4k+1: the nearest that are, 33 and 165 (33 m is
    # 4k+1 for m = 1, 5, 9, ...); a review found the note silent there
    assert plan_segments(81, 33, True).whole_window_frames() == (66, 99)
    assert plan_segments(81, 33, True).whole_window_frames(lambda n: n % 4 == 1) == (33, 165)
