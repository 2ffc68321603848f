"""Offline video metrics on constructed clips whose answers are known."""

import json
import math
import os
import re

import cv2
import numpy as np
import pytest

from confiner_core import metrics as m

F, H, W = 16, 64, 96


def texture(h=H, w=W, sigma=2.0, seed=0, lo=0, hi=256):
    """Smooth random RGB texture (blurred noise), uint8 in [lo, hi)."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(lo, hi, (h, w, 3)).astype(np.uint8), (0, 0), sigma)


def pan(step=3, frames=F, seed=0):
    """A window sliding right over a wider texture by `step` px per frame (a steady linear pan)."""
    big = texture(H, W + step * frames, seed=seed)
    return np.stack([big[:, step * i : step * i + W] for i in range(frames)])


def static(seed=0, lo=0, hi=256):
    return np.repeat(texture(seed=seed, lo=lo, hi=hi)[None], F, axis=0)


def srgb_to_lab(rgb):
    """Independent CIE Lab (D65, 2 deg) reference implementation, rgb float in [0, 1], [..., 3]."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m_xyz = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
    xyz = lin @ m_xyz.T / np.array([0.950456, 1.0, 1.088754])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    L = np.where(xyz[..., 1] > 0.008856, 116 * f[..., 1] - 16, 903.3 * xyz[..., 1])
    return np.stack([L, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


# --- static clip -------------------------------------------------------------------------------------------------


def test_static_clip_is_perfect():
    x = static()
    assert m.temporal_flicker(x) == 1.0
    assert m.flicker_index(x) == 0.0
    assert m.subject_consistency(x) == pytest.approx(1.0, abs=1e-12)
    assert m.motion_smoothness(x) > 0.999
    assert m.color_drift(x) == 0.0 and m.color_drift_max(x) == 0.0
    assert m.seam_score(x, [8]) == 1.0  # nothing moves anywhere: (0 + eps) / (0 + eps)


def test_flat_static_clip_has_defined_consistency():
    # A flat frame has no structure (zero centred thumbnail); two flat identical frames must still count as equal.
    x = np.full((4, H, W, 3), 128, np.uint8)
    assert m.subject_consistency(x) == pytest.approx(1.0)
    assert m.sharpness(x) == 0.0


# --- one flicker frame -------------------------------------------------------------------------------------------


def test_flicker_frame_known_values():
    x = static(lo=40, hi=200)  # room for +40 without clipping
    y = x.copy()
    y[8] += 40
    # d_t = 40 at t = 8 and t = 9, 0 elsewhere: mean over 15 transitions = 80 / 15.
    assert m.temporal_flicker(y) == pytest.approx((255 - 80 / 15) / 255, abs=1e-7)
    assert m.temporal_flicker(y) < m.temporal_flicker(x)
    assert m.flicker_index(y) == pytest.approx(80 / 15, abs=1e-6)  # BT.601 weights sum to 1: luma also +40
    assert m.subject_consistency(y) < 0.99 < m.subject_consistency(x)
    assert m.motion_smoothness(y) < m.motion_smoothness(x)
    # frame 8 is a junction: its jump (40) against elsewhere (the jump back at t=9 among 14 transitions: 40/14).
    assert m.seam_score(y, [8]) == pytest.approx((40 + 1e-3) / (40 / 14 + 1e-3))
    assert m.seam_score(y, [8, 9]) > 1e4  # jumps only at the junctions, frozen elsewhere
    assert m.seam_score(y, [3]) < 0.1  # a junction where nothing happens, while the flicker is elsewhere
    de = m.delta_e_from_first(y)
    assert de[8] > 10 and np.all(np.delete(de, 8) == 0)


def test_subject_consistency_known_value():
    # Flat frames A, A, B, B (grey 0 and grey 200). Flat frames carry no structure: structure cosine 1 throughout.
    # Colour: one-hot histograms e_0, e_12 minus uniform u = 1/16 per channel give cos(A, B) = -(1/16) / (15/16)
    # = -1/15, so the feature cosine is (1 - 1/15) / 2 = 7/15. Per frame i = 1, 2, 3 (prev, first):
    # (1, 1) -> 1; (7/15, 7/15) -> 7/15; (1, 7/15) -> 11/15. Mean: 11/15.
    a, b = np.zeros((2, H, W, 3), np.uint8), np.full((2, H, W, 3), 200, np.uint8)
    assert m.subject_consistency(np.concatenate([a, b])) == pytest.approx(11 / 15)


def test_subject_consistency_orders_clips():
    still, slow, fast = static(), pan(step=1), pan(step=4)
    unrelated = np.stack([texture(seed=s) for s in range(F)])
    scores = [m.subject_consistency(v) for v in (still, slow, fast, unrelated)]
    assert scores == sorted(scores, reverse=True) and scores[0] - scores[-1] > 0.4
    # unrelated layouts share only their colour statistics: structure half ~0, colour half ~1
    assert scores[-1] == pytest.approx(0.5, abs=0.1)


# --- seams -------------------------------------------------------------------------------------------------------


def test_seam_score_known_ratio():
    # Flat grey frames stepping by 1 level, with a 10-level jump into frame 5: d = 1 everywhere, 10 at the junction.
    levels = [0, 1, 2, 3, 4, 14, 15, 16, 17, 18]
    x = np.stack([np.full((8, 8, 3), v, np.uint8) for v in levels])
    assert m.seam_score(x, [5]) == pytest.approx((10 + 1e-3) / (1 + 1e-3))
    # an ordinary step as the junction: 1 against the mean of the rest, (7 * 1 + 10) / 8
    assert m.seam_score(x, [2]) == pytest.approx((1 + 1e-3) / (17 / 8 + 1e-3))
    assert m.seam_score(x, np.array([5, 5])) == m.seam_score(x, [5])  # duplicates count once


def test_seam_score_cut_in_pan():
    a, b = pan(step=1, seed=0), pan(step=1, seed=1)
    x = np.concatenate([a[:8], b[8:]])  # segment boundary at frame 8 with unrelated content
    assert m.seam_score(x, [8]) > 3
    assert 0.8 < m.seam_score(a, [8]) < 1.25  # a seamless pan: the junction looks like any other step


def test_seam_score_edge_cases():
    x = static()
    assert math.isnan(m.seam_score(x, []))
    assert math.isnan(m.seam_score(x, None))
    assert math.isnan(m.seam_score(x, range(1, F)))  # nothing left to compare with
    with pytest.raises(ValueError):
        m.seam_score(x, [0])
    with pytest.raises(ValueError):
        m.seam_score(x, [F])


# --- motion ------------------------------------------------------------------------------------------------------


def test_motion_smoothness_pan():
    x = pan(step=3)
    score = m.motion_smoothness(x)
    assert score > 0.99
    shuffled = x[np.random.default_rng(0).permutation(F)]
    assert m.motion_smoothness(shuffled) < score - 0.02
    # flow warping must beat plain averaging of the neighbours (fails if the warp direction were wrong)
    blend = np.mean([np.abs(0.5 * (x[i - 1].astype(float) + x[i + 1]) - x[i]).mean() for i in range(1, F - 1, 2)])
    assert 1 - score < 0.2 * blend / 255


def test_interpolate_midpoint_pan():
    x = pan(step=3, frames=3)
    pred = m.interpolate_midpoint(x[0], x[2])
    inner = (slice(8, -8), slice(8, -8))  # away from borders, where the content enters the window
    assert np.abs(pred[inner] - x[1][inner]).mean() < 1.0
    assert np.abs(x[0][inner].astype(float) - x[1][inner]).mean() > 5.0  # i.e. there was real motion


def test_motion_smoothness_short_clips():
    assert math.isnan(m.motion_smoothness(static()[:2]))
    assert not math.isnan(m.motion_smoothness(static()[:3]))


# --- sharpness ---------------------------------------------------------------------------------------------------


def test_sharpness_blur():
    x = np.stack([texture(sigma=0.8, seed=s) for s in range(3)])
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in x])
    assert m.sharpness(blurred) * 5 < m.sharpness(x)


def test_sharpness_known_value():
    # Single bright pixel (value v) in a flat frame: Laplacian has -4v at the pixel and v at its 4 neighbours.
    v, n = 100, H * W
    x = np.zeros((1, H, W, 3), np.uint8)
    x[0, 20, 30] = v
    lap = np.array([-4 * v] + [v] * 4 + [0] * (n - 5), float)
    assert m.sharpness(x) == pytest.approx(lap.var())


# --- colour drift ------------------------------------------------------------------------------------------------


def test_color_drift_reference_colours():
    black, white, red = (np.full((1, 4, 4, 3), c, np.uint8) for c in ([0, 0, 0], [255, 255, 255], [255, 0, 0]))
    assert m.color_drift(np.concatenate([black, white])) == pytest.approx(100.0, abs=1e-3)
    # published Lab of sRGB red: (53.24, 80.09, 67.20)
    expected = math.dist((100, 0, 0), (53.24, 80.09, 67.20))
    assert m.color_drift(np.concatenate([white, red])) == pytest.approx(expected, abs=0.05)


def test_color_drift_tinted_sequence():
    base = texture(lo=30, hi=200)
    tint = np.array([3, 0, -2])  # per frame: warmer, a steady drift
    x = np.stack([(base.astype(int) + t * tint).astype(np.uint8) for t in range(8)])
    labs = np.stack([srgb_to_lab(f / 255.0).reshape(-1, 3).mean(0) for f in x])
    expected = np.linalg.norm(labs - labs[0], axis=1)
    de = m.delta_e_from_first(x)
    # OpenCV's float Lab tabulates the sRGB gamma: ~0.2 off per channel, ~1% of a Delta E; far below a JND (2.3)
    np.testing.assert_allclose(de, expected, rtol=0.02, atol=0.05)
    assert np.all(np.diff(de) > 0) and de[-1] > 10
    assert m.color_drift(x) == pytest.approx(expected[1:].mean(), rel=0.02)
    assert m.color_drift_max(x) == pytest.approx(expected.max(), rel=0.02)
    assert m.color_drift(x[:1]) == 0.0


# --- ground truth ------------------------------------------------------------------------------------------------


def test_distance_to_nearest():
    x = static(lo=40, hi=200)
    brighter = [x + 10, x + 20]
    assert m.distance_to_nearest(x, brighter) == pytest.approx(10.0)
    assert m.distance_to_nearest(x, brighter + [x]) == 0.0
    assert m.distance_to_nearest(x, np.stack(brighter)) == pytest.approx(10.0)  # one [N, F, H, W, 3] array
    with pytest.raises(ValueError):
        m.distance_to_nearest(x, [x[:-1]])
    with pytest.raises(ValueError):
        m.distance_to_nearest(x, [])


# --- evaluate and input conversion -------------------------------------------------------------------------------


def test_evaluate_keys_and_json():
    x = pan(step=2)
    out = m.evaluate(x, junctions=[8], references=[x])
    assert tuple(out) == m.METRIC_KEYS
    assert all(type(v) is float for v in out.values())
    assert out["distance_to_nearest"] == 0.0 and out["seam_score"] == pytest.approx(m.seam_score(x, [8]))
    assert json.loads(json.dumps(out)) == out
    bare = m.evaluate(x)
    assert tuple(bare) == m.METRIC_KEYS
    assert math.isnan(bare["seam_score"]) and math.isnan(bare["distance_to_nearest"])


def test_evaluate_single_frame():
    out = m.evaluate(static()[:1], junctions=[])
    assert tuple(out) == m.METRIC_KEYS and out["color_drift"] == 0.0 and out["sharpness"] > 0
    for k in ("subject_consistency", "motion_smoothness", "temporal_flicker", "flicker_index", "seam_score"):
        assert math.isnan(out[k])


def test_float_input_matches_uint8():
    x = pan(step=2, frames=6)
    assert m.evaluate(x / 255.0) == m.evaluate(x)
    assert m.evaluate(x[..., :1]) == m.evaluate(np.repeat(x[..., :1], 3, axis=-1))  # grey [F, H, W, 1]


def test_bad_input_raises():
    x = pan(step=2, frames=4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.as_uint8_frames(x.astype(np.float32))  # 0-255 floats
    with pytest.raises(ValueError, match="shape"):
        m.as_uint8_frames(x.transpose(0, 3, 1, 2))  # channels first
    with pytest.raises(ValueError):
        m.as_uint8_frames(x[:0])
    # a batch as decode returns it: told to score one clip (evaluate(decode(latent)) was told the shape alone)
    with pytest.raises(ValueError, match=re.escape("got (1, 4, 64, 96, 3): 1 clip [B, F, H, W, 3], as decode returns "
                                                   "them; score one at a time, frames[0]")):
        m.evaluate(x[None])


def test_the_helpers_take_the_frames_the_metrics_take():
    """A trial's float frames in [0, 1] gave to_lab an L of 0.02 (divided by 255 twice), to_gray float grey levels
    and midpoint_error 0-1 units; a bool mask scored as grey levels 0 and 1; a bfloat16 tensor failed in numpy."""
    torch = pytest.importorskip("torch")
    x = pan(step=2, frames=4)
    f = x / 255.0
    np.testing.assert_array_equal(m.to_lab(f), m.to_lab(x))
    # L of the first pixel by the CIE formula (sRGB gamma undone, D65): the units are Lab's, not a 255th of them
    assert m.to_lab(f)[0, 0, 0, 0] == pytest.approx(srgb_to_lab(x[:1, :1, :1] / 255.0)[0, 0, 0, 0], abs=0.3)
    assert m.to_gray(f).dtype == np.uint8 and np.array_equal(m.to_gray(f), m.to_gray(x))
    a, b, c = (static(seed=k)[0] for k in (1, 2, 3))   # three unrelated frames: an error of tens of grey levels
    assert m.midpoint_error(a / 255.0, b / 255.0, c / 255.0) == m.midpoint_error(a, b, c) > 10
    mask = x > 128
    assert m.evaluate(mask) == m.evaluate(np.where(mask, 255, 0).astype(np.uint8))
    t = torch.from_numpy(f)
    assert m.evaluate(t.to(torch.bfloat16)) == m.evaluate(t.to(torch.bfloat16).float().numpy())


def test_junctions_window_starts_and_references_are_refused_with_what_they_must_be():
    """A float junction was truncated (4.5 scored as 4), an int alone failed as "'int' object is not iterable", a
    window start past the frames left one window and a NaN without a word, and one video as references was read as
    videos of its frames ("frames must have shape ...")."""
    x = pan(step=2, frames=8)
    with pytest.raises(ValueError, match=re.escape("junctions must be whole frame indices, got 4.5 in [4.5]")):
        m.seam_score(x, [4.5])
    with pytest.raises(TypeError, match=re.escape("junctions must be a list of frame indices, e.g. [8, 16], got 4")):
        m.evaluate(x, junctions=4)
    assert m.seam_score(x, np.array([4])) == m.seam_score(x, [4])   # numpy's integers are whole indices
    with pytest.raises(ValueError, match=re.escape("window_starts must lie in [0, 7] for 8 frames, got [20]")):
        m.window_color_drift(x, [20])
    with pytest.raises(ValueError, match=re.escape("references is one video (8, 64, 96, 3); pass a list of videos, "
                                                   "references=[video], or an array [N, F, H, W, 3]")):
        m.evaluate(x, references=x)
    assert m.evaluate(x, references=[x])["distance_to_nearest"] == 0.0


# --- reading videos ----------------------------------------------------------------------------------------------


def test_read_mp4_round_trip(tmp_path):
    import imageio.v3 as iio

    x = pan(step=2, frames=10)  # H, W multiples of 16: the encoder keeps the size
    path = tmp_path / "clip.mp4"
    # H.264 through PyAV, named explicitly: imageio's default mp4 plugin depends on which backends are installed
    # (PyAV or imageio-ffmpeg), and their options differ
    iio.imwrite(path, x, plugin="pyav", codec="libx264", fps=8)
    y = m.read_video(path)
    assert y.shape == x.shape and y.dtype == np.uint8
    assert np.abs(y.astype(float) - x).mean() < 4  # lossy, but the same pictures in the same order
    assert m.read_video(str(path)).shape == x.shape
    # the imageio fallback of read_video decodes it too, whichever plugin imageio picks
    fallback = np.stack(m._read_imageio(str(path)))
    assert fallback.shape == x.shape and np.abs(fallback.astype(float) - x).mean() < 4


def test_read_cv2_mp4v_round_trip(tmp_path):
    x = pan(step=2, frames=10)
    path = str(tmp_path / "clip_mp4v.mp4")  # the codec the project's VideoSink writes
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 8, (W, H))
    for f in x:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    y = m.read_video(path)
    assert y.shape == x.shape
    assert np.abs(y.astype(float) - x).mean() < 8


def test_read_gif_all_frames(tmp_path):
    import imageio

    x = pan(step=2, frames=6)
    path = tmp_path / "clip.gif"
    imageio.mimwrite(path, list(x))  # with imageio's defaults cv2.VideoCapture decodes only the first frame
    y = m.read_video(path)
    assert y.shape == x.shape
    assert np.abs(y.astype(float) - x).mean() < 6  # palette quantisation only; frames in order


def test_read_png_directory_natural_order(tmp_path):
    n = 12
    for i in range(n):  # frame_0 .. frame_11, unpadded: lexical order would put frame_10 before frame_2
        cv2.imwrite(str(tmp_path / f"frame_{i}.png"), np.full((H, W, 3), (10 * i, 0, 255 - 10 * i), np.uint8))
    (tmp_path / "notes.txt").write_text("not a frame")
    y = m.read_video(tmp_path)
    assert y.shape == (n, H, W, 3)
    np.testing.assert_array_equal(y[:, 0, 0, 2], 10 * np.arange(n))  # BGR on disk -> RGB in memory
    np.testing.assert_array_equal(y[:, 0, 0, 0], 255 - 10 * np.arange(n))
    assert sorted(["frame_10", "frame_2", "frame_1"], key=m.natural_key) == ["frame_1", "frame_2", "frame_10"]


def test_read_video_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        m.read_video(missing)
    empty = tmp_path / "empty_dir"
    os.mkdir(empty)
    with pytest.raises(ValueError, match="empty_dir"):
        m.read_video(empty)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video")
    with pytest.raises(ValueError, match="junk.mp4"):
        m.read_video(junk)


@pytest.mark.parametrize("chunks", [[16], [1] * 16, [3, 5, 8], [2, 1, 7, 6], [8, 8]])
def test_streaming_metrics_equal_evaluate_on_the_whole_video(chunks):
    """One implementation per metric: the streaming accumulator gives evaluate()'s values however the video is cut."""
    rng = np.random.default_rng(3)
    video = np.concatenate([pan(step=2, frames=8), static(seed=4)[:8]])  # a pan, then a cut to a static shot
    video[5] = np.clip(video[5].astype(int) + rng.integers(-30, 30, video[5].shape), 0, 255).astype(np.uint8)
    stream = m.StreamingMetrics()
    start = 0
    for n in chunks:
        stream.add(video[start:start + n])
        start += n
    junctions = [8]
    whole = m.evaluate(video, junctions=junctions)
    got = stream.summary(window_junctions=junctions, structure_junctions=[4, 12])
    for key in m.METRIC_KEYS:
        if key not in ("distance_to_nearest", "seam_score"):
            assert got[key] == pytest.approx(whole[key], rel=1e-9, abs=1e-12), key
    d = np.abs(np.diff(video.astype(np.float64), axis=0)).mean(axis=(1, 2, 3))   # d[t-1]: frames t-1 -> t
    ordinary = np.delete(d, [3, 7, 11]).mean()                    # no junction of either kind
    assert got["seam_score_windows"] == pytest.approx((d[7] + 1e-3) / (ordinary + 1e-3), rel=1e-6)   # (the
    assert got["seam_score_structures"] == pytest.approx((d[[3, 11]].mean() + 1e-3) / (ordinary + 1e-3),  # metric
                                                         rel=1e-6)                     # averages in float32)
    assert got["seam_score"] == pytest.approx(m.seam_score(video, [4, 8, 12]), rel=1e-9)  # every junction
    assert "seam_score" not in stream.summary() and "distance_to_nearest" not in stream.summary()
    drift = m.window_color_drift(video, junctions)  # one implementation, streamed or whole
    for key, value in drift.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key


def test_window_color_drift_against_hand_computed_lab_means():
    """Two windows, the second a uniformly brighter copy: the drift is the Delta E of the windows' mean Lab colours,
    computed here with OpenCV's Lab conversion directly (not through the metrics module)."""
    import cv2

    first = static(seed=1)[:6]
    second = np.clip(first.astype(int) + 40, 0, 255).astype(np.uint8)
    video = np.concatenate([first, second])

    def lab_mean(frames):
        lab = np.stack([cv2.cvtColor(f.astype(np.float32) / 255, cv2.COLOR_RGB2Lab) for f in frames])
        return lab.reshape(-1, 3).mean(0)

    expected = float(np.linalg.norm(lab_mean(second) - lab_mean(first)))
    got = m.window_color_drift(video, [6])
    assert got["window_color_drift"] == pytest.approx(expected, rel=1e-3)
    assert got["window_color_drift_max"] == got["window_color_drift"] > 2.3  # well above a noticeable difference
    assert math.isnan(m.window_color_drift(video, [])["window_color_drift"])  # one window: undefined


def test_seam_scores_of_each_kind_compare_their_cuts_with_motion_alone():
    """Every junction a 10-level jump, every other transition 1 level: each kind's score is the same 10/1 as the
    whole. Counting the other kind's cuts as ordinary motion gave 6.25 (windows) and 7.09 (structures) against
    9.99 for the whole, a trial found."""
    d = np.ones(47)
    windows, structures = [16, 32], [8, 24, 40]
    d[[j - 1 for j in windows + structures]] = 10.0
    scores = m.seam_scores_by_kind(d, windows, structures)
    expected = (10 + 1e-3) / (1 + 1e-3)
    assert scores == pytest.approx({"seam_score": expected, "seam_score_windows": expected,
                                    "seam_score_structures": expected}, rel=1e-12)
    with pytest.raises(ValueError, match="junctions must lie in"):
        m.seam_ratio(d, windows, other_junctions=[48])


def test_junctions_where_the_prompt_changes_are_scored_apart():
    """A researcher's three-prompt run scored seam_score_windows 18.9 against 1.5 with one prompt: every change the
    schedule asked for counted as a seam. Seams: a 3-level jump; prompt changes: a 30-level jump; motion: 1 level.
    The three seam scores stay 3/1, and the changes are scored apart, each against motion alone."""
    d = np.ones(63)
    windows, structures, changes = [16, 32, 48], [8, 24, 40, 56], [24, 32]
    d[[j - 1 for j in windows + structures]] = 3.0
    d[[j - 1 for j in changes]] = 30.0
    scores = m.seam_scores_by_kind(d, windows, structures, changes)
    seam, change = (3 + 1e-3) / (1 + 1e-3), (30 + 1e-3) / (1 + 1e-3)
    assert scores == pytest.approx({"seam_score": seam, "seam_score_windows": seam, "seam_score_structures": seam,
                                    "seam_score_prompt_changes": change}, rel=1e-12)
    assert "seam_score_prompt_changes" not in m.seam_scores_by_kind(d, windows, structures)   # one prompt


def test_window_color_drift_restarts_at_each_prompt():
    """Each window against the first window of its prompt: a travelling prompt's new colour is not drift. Windows
    of 4 frames; prompt a: grey 100, 100, 104; prompt b (from frame 12): grey 200, 200."""
    levels = [100, 100, 104, 200, 200]
    video = np.concatenate([np.full((4, 8, 8, 3), v, np.uint8) for v in levels])
    starts = [4, 8, 12, 16]

    def lab(v):
        import cv2
        return cv2.cvtColor(np.full((1, 1, 3), v / 255, np.float32), cv2.COLOR_RGB2Lab)[0, 0]

    got = m.window_color_drift(video, starts, prompt_changes=[12])
    expected = [0.0, float(np.linalg.norm(lab(104) - lab(100))), 0.0]   # windows 1, 2 against 0; window 4 against 3
    assert got["window_color_drift"] == pytest.approx(np.mean(expected), rel=1e-4)
    assert got["window_color_drift_max"] == pytest.approx(max(expected), rel=1e-4)
    across = m.window_color_drift(video, starts)["window_color_drift_max"]
    assert across > 10 * got["window_color_drift_max"]   # across the change, grey 200 against 100
    only_firsts = m.window_color_drift(video[:16], [4, 8, 12], prompt_changes=[4, 8, 12])
    assert math.isnan(only_firsts["window_color_drift"])   # every window is its prompt's first


def test_frames_files_are_read_and_anything_else_in_one_is_named(tmp_path):
    """A generate --save-frames file reads back as it was written; an array of objects (numpy's own message was all
    the command line said) or of other shape names the file and what a frames file holds."""
    import numpy as np

    from confiner_core.metrics import read_video

    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    assert np.array_equal(read_video(str(tmp_path / "frames.npy")), frames)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects\.npy' holds no frames \(uint8 \[F, H, W, 3\]\): "):
        read_video(str(tmp_path / "objects.npy"))
    np.save(tmp_path / "flat.npy", np.zeros((3, 8), np.uint8))
    with pytest.raises(ValueError, match=r"flat\.npy' holds uint8 \(3, 8\), not frames"):
        read_video(str(tmp_path / "flat.npy"))
