"""Offline video quality metrics: model-free proxies for the VBench dimensions ConFiner reports.

VBench's subject consistency (DINO), motion smoothness (AMT-S) and aesthetic/imaging quality (CLIP, MUSIQ) need
weights we cannot download, so this module keeps VBench's *protocols* and swaps the learned parts for OpenCV:

* :func:`subject_consistency` -- VBench's prev/first-frame cosine formula over a thumbnail + colour-histogram feature.
* :func:`motion_smoothness`   -- VBench's drop-odd-frames protocol with Farneback-flow midpoint interpolation.
* :func:`temporal_flicker`    -- VBench's temporal_flickering (already model-free); :func:`flicker_index` on luma.
* :func:`sharpness`           -- variance of the Laplacian (a cheap imaging-quality proxy).
* :func:`color_drift`         -- CIE76 Delta E of each frame's mean Lab colour against frame 0.
* :func:`seam_score`          -- frame difference across segment/window junctions relative to elsewhere.
* :func:`distance_to_nearest` -- RMSE to the closest ground-truth video (synthetic worlds).
* :class:`StreamingMetrics` -- all of the above (but the last) for a video that arrives in chunks, e.g. while a long
  video is written window by window; it equals :func:`evaluate` on the whole video.

Each metric is a per-frame (or per-frame-pair) quantity and a score over those; both the one-shot functions and
:class:`StreamingMetrics` are built from the same two pieces, so every metric has one implementation.

The numbers are proxies: they rank clips the same way as VBench on gross failures (flicker, jumps, blur, drift),
but are not comparable with the values in the ConFiner paper. One difference is by construction: DINO features
barely move under a small translation, the subject feature's thumbnail correlation does, so subject consistency
here scores layout stability: a camera pan lowers it (1 px/frame at 128 px over blurred noise: 0.8 to 0.95 by the
blur) as much as a cut to another scene of the same colours does (0.84). Compare it between clips of similar motion
(the chain's ablations), not across a pan and a static shot.

Frames are ``[F, H, W, 3]`` RGB, uint8 or float in [0, 1]; :func:`as_uint8_frames` converts once, and every
metric is defined on the 8-bit frames (as VBench, which decodes videos to uint8). Differences are in 0-255 units.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterable, Sequence

import cv2
import numpy as np
from numpy.typing import ArrayLike

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

# Farneback parameters of the OpenCV optical-flow tutorial: 3-level pyramid at scale 0.5, 15 px window,
# 3 iterations, 5-pixel polynomial neighbourhood with sigma 1.2. Good for the few-pixel motions between frames.
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


# ---------------------------------------------------------------------------------------------------------------
# Input conversion


#: what the metrics take as frames (:func:`as_uint8_frames`): an array [F, H, W, 3] (or [F, H, W, 1]) in numpy or torch
#: (which numpy reads as an array), or a sequence of frames
Frames = ArrayLike


def as_uint8_frames(frames: Frames) -> np.ndarray:
    """Returns frames as a C-contiguous uint8 array [F, H, W, 3].

    Accepts uint8, or float in [0, 1] (scaled by 255 and rounded), bool (a mask: True is 255), and [F, H, W, 1]
    grey (repeated to RGB). Anything array-like works (lists of frames, torch tensors on any device and in any
    dtype). Float input outside [0, 1] is an error rather than silently clipped: it usually means 0-255 floats or
    [-1, 1] model output that needs converting first.
    """
    if hasattr(frames, "detach") and hasattr(frames, "cpu"):   # a torch tensor (bfloat16: numpy's "unsupported
        frames = frames.detach().cpu()                          # ScalarType", a GPU one: "can't convert cuda")
        frames = frames.float() if frames.is_floating_point() else frames
    x = np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        # (decode and decode_frames return a batch [B, F, H, W, 3]: evaluate(decode(latent)) was told the shape alone)
        batch = (f": {x.shape[0]} clip{'s' if x.shape[0] > 1 else ''} [B, F, H, W, 3], as decode returns them; "
                 f"score one at a time, frames[0]" if x.ndim == 5 and x.shape[-1] in (1, 3) else "")
        raise ValueError(f"frames must have shape [F, H, W, 3] (channels last), got {x.shape}{batch}")
    if x.shape[0] == 0:
        raise ValueError("frames is empty (F = 0)")
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():  # NaN would become 0 (black) and score as a perfect static clip
            raise ValueError(f"float frames hold {int((~np.isfinite(x)).sum())} NaN or infinite values")
        lo, hi = float(np.min(x)), float(np.max(x))
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"float frames must lie in [0, 1], got values in [{lo:g}, {hi:g}]")
        x = np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif x.dtype == np.bool_:   # (read as grey levels 0 and 1: a mask scored as a black video)
        x = x.astype(np.uint8) * 255
    elif np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise ValueError(f"integer frames must lie in [0, 255], got values in [{x.min()}, {x.max()}]")
        x = x.astype(np.uint8)
    else:
        raise TypeError(f"unsupported frame dtype {x.dtype}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x)


def to_gray(frames: Frames) -> np.ndarray:
    """Returns BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B of RGB frames (any :func:`as_uint8_frames` takes) as
    uint8 [F, H, W]."""
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in as_uint8_frames(frames)])


def to_lab(frames: Frames) -> np.ndarray:
    """Returns CIE L*a*b* (D65) of RGB frames (any :func:`as_uint8_frames` takes: float frames in [0, 1] were
    divided by 255 a second time) as float32 [F, H, W, 3]: L in [0, 100], a, b about +-127.

    Converting float32 RGB in [0, 1] (not uint8) makes OpenCV return true Lab values, with the sRGB gamma undone
    (through tables: within ~0.3 per channel of the exact formula, far below a just-noticeable Delta E of ~2.3).
    """
    return np.stack([cv2.cvtColor(f.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab) for f in as_uint8_frames(frames)])


def frame_indices(values, name: str, low: int, high: int) -> list[int]:
    """``values`` (junctions, window starts) as whole frame indices in [low, high]: a float index was truncated
    (4.5 scored as 4), an int alone failed as "'int' object is not iterable"."""
    if values is None:
        return []
    if isinstance(values, (numbers.Number, str)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of frame indices, e.g. [8, 16], got {values!r}")
    indices = list(values)
    for v in indices:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{name} must be whole frame indices, got {v!r} in {indices}")
    if indices and (min(indices) < low or max(indices) > high):
        raise ValueError(f"{name} must lie in [{low}, {high}] for {high + 1} frames, got "
                         f"{[int(v) for v in indices]}")
    return [int(v) for v in indices]


# ---------------------------------------------------------------------------------------------------------------
# Frame differences


def consecutive_mae(frames: Frames) -> np.ndarray:
    """Returns d_t = mean |x_t - x_{t-1}| over pixels and channels, for t = 1 .. F-1 (0-255 units, [F-1])."""
    x = as_uint8_frames(frames).astype(np.float32)
    return np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))


def temporal_flicker(frames: Frames) -> float:
    """VBench temporal_flickering: (255 - mean_t d_t) / 255, with d_t the consecutive-frame MAE.

    Range [0, 1], higher is better; exactly 1.0 for a static clip. It charges any change, motion included, so it is
    meaningful for near-static content (VBench evaluates it on static prompts). NaN for fewer than 2 frames.
    """
    return flicker_from_mae(consecutive_mae(frames))


def flicker_from_mae(d) -> float:
    """:func:`temporal_flicker` from the consecutive-frame MAEs d_t."""
    d = np.asarray(d, dtype=np.float64)
    return float((255.0 - d.mean()) / 255.0) if d.size else math.nan


def mean_luma(frames: Frames) -> np.ndarray:
    """Returns each frame's mean BT.601 luma Y ([F], grey levels)."""
    g = to_gray(frames)
    return g.reshape(g.shape[0], -1).mean(axis=1)


def flicker_index(frames: Frames) -> float:
    """Mean |Y_t - Y_{t-1}| of the frames' mean luma Y, t = 1 .. F-1.

    Range [0, 255] grey levels, lower is better. Unlike :func:`temporal_flicker` it ignores motion that keeps the
    overall brightness (a pan scores ~0) and isolates global brightness pumping. NaN for fewer than 2 frames.
    """
    return flicker_index_from_luma(mean_luma(frames))


def flicker_index_from_luma(y) -> float:
    """:func:`flicker_index` from the frames' mean luma."""
    y = np.asarray(y, dtype=np.float64)
    return float(np.abs(np.diff(y)).mean()) if y.size > 1 else math.nan


def seam_score(frames: Frames, junctions: Iterable[int] | None, eps: float = 1e-3) -> float:
    """Visibility of junctions: (mean_{j in J} d_j + eps) / (mean_{t not in J} d_t + eps).

    Junction j marks the cut between frames j-1 and j (1 <= j <= F-1), e.g. the first frame of a new segment or
    context window; d_t is the consecutive-frame MAE. 1.0 means the cuts change the picture no more than ordinary
    frame-to-frame motion (invisible seams); >1 means visible jumps; lower is better.
    ``eps`` (grey levels) keeps the ratio finite when nothing moves elsewhere: a static clip gives exactly 1.0, and a
    jump over frozen content gives a large finite value (e.g. ~1e4 for a 10-level jump).
    NaN when there is nothing to compare: no junctions, or every transition is a junction.
    """
    return seam_ratio(consecutive_mae(frames), junctions, eps)


def seam_ratio(d: np.ndarray, junctions: Iterable[int] | None, eps: float = 1e-3,
               other_junctions: Iterable[int] = ()) -> float:
    """:func:`seam_score` from precomputed consecutive-frame MAEs ``d`` (d[t-1] between frames t-1 and t), so a
    long video can be scored while it streams to disk without holding its frames. ``other_junctions``: cuts of
    another kind, left out of the ordinary transitions, so a score of one kind compares its cuts with motion alone
    (:func:`seam_scores_by_kind`)."""
    d = np.asarray(d, dtype=np.float64)
    j = np.unique(np.asarray(frame_indices(junctions, "junctions", 1, d.size), dtype=np.int64))
    other = np.unique(np.asarray(frame_indices(other_junctions, "junctions", 1, d.size), dtype=np.int64))
    elsewhere = np.ones(d.size, dtype=bool)
    elsewhere[j - 1] = False
    elsewhere[other - 1] = False
    if j.size == 0 or not elsewhere.any():
        return math.nan
    return float((d[j - 1].mean() + eps) / (d[elsewhere].mean() + eps))


def seam_scores_by_kind(d: np.ndarray, window_junctions: Iterable[int], structure_junctions: Iterable[int],
                        prompt_changes: Iterable[int] = ()) -> dict:
    """A ConFiner-Long video's seam scores (:func:`seam_ratio` of its consecutive-frame MAEs ``d``): ``seam_score``
    over every junction, ``seam_score_windows`` where separately refined windows meet and ``seam_score_structures``
    between structures (inside a window when refinement is staggered), each against the transitions that are no
    junction of either kind (the other kind's cuts are no ordinary motion). Junctions in ``prompt_changes``
    (:func:`~confiner_core.long.prompt_change_junctions`), where a travelling prompt asks the video to change, are
    left out of all three and scored apart as ``seam_score_prompt_changes`` (a key only where there are some)."""
    changes = sorted(set(prompt_changes))
    windows = sorted(set(window_junctions) - set(changes))
    structures = sorted(set(structure_junctions) - set(changes))
    scores = {"seam_score": seam_ratio(d, sorted(set(windows) | set(structures)), other_junctions=changes),
              "seam_score_windows": seam_ratio(d, windows, other_junctions=[*structures, *changes]),
              "seam_score_structures": seam_ratio(d, structures, other_junctions=[*windows, *changes])}
    if changes:
        scores["seam_score_prompt_changes"] = seam_ratio(d, changes, other_junctions=[*windows, *structures])
    return scores


# ---------------------------------------------------------------------------------------------------------------
# Subject consistency


def frame_features(frames: Frames, size: int = 32, bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Returns the two unit-norm halves of the subject feature: structure [F, size*size] and colour [F, 3*bins].

    structure: the grey thumbnail (INTER_AREA, i.e. anti-aliased) minus its own mean, L2-normalised. Centering is
        what makes the cosine informative: raw non-negative pixel vectors have cosines of ~0.7-0.9 even for
        unrelated images, so every clip would score near 1; centred, the cosine is the Pearson correlation of the
        thumbnails, ~0 for unrelated layouts. It is blind to global brightness/contrast, hence the colour half.
    colour: per-channel RGB histograms (``bins`` bins, each summing to 1) minus the uniform histogram 1/bins,
        L2-normalised. Centering again removes the shared positive offset; disjoint colours get cosine <= 0.
    A flat frame has no structure: its structure half is the zero vector (see :func:`feature_cosine`).
    The structure half moves with the layout: a shift by a few thumbnail pixels decorrelates it (module docstring).
    """
    x = as_uint8_frames(frames)
    thumbs = np.stack([cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA) for g in to_gray(x)])
    s = thumbs.reshape(len(x), -1).astype(np.float64)
    s -= s.mean(axis=1, keepdims=True)
    hists = [
        np.concatenate([cv2.calcHist([f], [c], None, [bins], [0, 256]).ravel() for c in range(3)]) for f in x
    ]
    h = np.stack(hists).astype(np.float64) / (x.shape[1] * x.shape[2]) - 1.0 / bins
    return _unit_rows(s), _unit_rows(h)


def _unit_rows(v: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    # Rows with (numerically) zero norm stay zero instead of becoming NaN; feature_cosine gives them a meaning.
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return np.where(n > tol, v / np.maximum(n, tol), 0.0)


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Cosine of unit-or-zero rows; two zero rows (e.g. two flat frames) are identical (1), zero vs non-zero is 0.
    zero_a, zero_b = ~a.any(axis=-1), ~b.any(axis=-1)
    return np.where(zero_a & zero_b, 1.0, np.sum(a * b, axis=-1))


def feature_cosine(fa: tuple[np.ndarray, np.ndarray], fb: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Returns (cos(structure) + cos(colour)) / 2: the cosine of both unit halves concatenated at weight 1/sqrt(2)."""
    return 0.5 * (_row_cosine(fa[0], fb[0]) + _row_cosine(fa[1], fb[1]))


def subject_consistency(frames: Frames) -> float:
    """VBench subject consistency with a cheap feature f (:func:`frame_features`) instead of DINO:

        mean_{i=1..F-1} (max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2.

    Range [0, 1], higher is better; exactly 1.0 for a static clip. NaN for fewer than 2 frames.
    """
    s, h = frame_features(frames)
    prev = feature_cosine((s[:-1], h[:-1]), (s[1:], h[1:]))
    first = feature_cosine((s[:1], h[:1]), (s[1:], h[1:]))
    return consistency_from_cosines(prev, first)


def consistency_from_cosines(prev, first) -> float:
    """:func:`subject_consistency` from cos(f_{i-1}, f_i) and cos(f_0, f_i), i = 1 .. F-1 (NaN if none)."""
    prev, first = np.asarray(prev, dtype=np.float64), np.asarray(first, dtype=np.float64)
    if prev.size == 0:
        return math.nan
    return float(np.mean((np.maximum(prev, 0.0) + np.maximum(first, 0.0)) / 2.0))


# ---------------------------------------------------------------------------------------------------------------
# Motion smoothness


def farneback_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Returns dense flow F_{a->b} [H, W, 2] (x, y) between uint8 grey frames: a(p) ~ b(p + F(p))."""
    return cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK)


def backward_warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Returns out(p) = image(p + flow(p)), bilinear, borders replicated (float32)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(
        image.astype(np.float32), gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def interpolate_midpoint(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Predicts the frame halfway between uint8 RGB frames x0 and x1 by flow warping (float32 [H, W, 3]).

    With bidirectional Farneback flows F01, F10, the flows from the midpoint t = 1/2 are approximated as in
    Super SloMo (Jiang et al. 2018, Eq. 4): F_{t->0} = (F10 - F01) / 4, F_{t->1} = (F01 - F10) / 4 (for consistent
    flows, -F01/2 and +F01/2). Both neighbours are backward-warped to t and averaged.
    """
    g0, g1 = cv2.cvtColor(x0, cv2.COLOR_RGB2GRAY), cv2.cvtColor(x1, cv2.COLOR_RGB2GRAY)
    f01, f10 = farneback_flow(g0, g1), farneback_flow(g1, g0)
    ft0, ft1 = 0.25 * (f10 - f01), 0.25 * (f01 - f10)
    return 0.5 * (backward_warp(x0, ft0) + backward_warp(x1, ft1))


def motion_smoothness(frames: Frames) -> float:
    """VBench motion smoothness with Farneback midpoint interpolation (:func:`interpolate_midpoint`) for AMT-S:
    keep the even frames, predict each odd frame i from frames i-1 and i+1, and score

        (255 - mean |pred_i - x_i|) / 255   (mean over odd i with i+1 < F, pixels and channels).

    Range [0, 1], higher is better; ~1 for static or steadily moving content (the odd frames are predictable),
    lower for jerky or random motion. NaN for fewer than 3 frames.
    """
    x = as_uint8_frames(frames)
    return smoothness_from_errors([midpoint_error(x[i - 1], x[i], x[i + 1]) for i in range(1, x.shape[0] - 1, 2)])


def midpoint_error(x_prev: np.ndarray, x: np.ndarray, x_next: np.ndarray) -> float:
    """Mean |interpolate_midpoint(x_prev, x_next) - x| over pixels and channels (0-255 units) of three RGB frames
    [H, W, 3] (as :func:`as_uint8_frames` takes frames)."""
    x_prev, x, x_next = as_uint8_frames([x_prev, x, x_next])
    return float(np.abs(interpolate_midpoint(x_prev, x_next) - x.astype(np.float32)).mean())


def smoothness_from_errors(errors) -> float:
    """:func:`motion_smoothness` from the odd frames' :func:`midpoint_error` s (NaN if none)."""
    return float((255.0 - np.mean(errors)) / 255.0) if len(errors) else math.nan


# ---------------------------------------------------------------------------------------------------------------
# Imaging quality and colour


def laplacian_variance(gray: np.ndarray) -> float:
    """Returns Var(lap(gray)) with the 3x3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]] on a uint8 grey image."""
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def sharpness(frames: Frames) -> float:
    """Mean over frames of the variance of the Laplacian of the luma (grey levels squared).

    Higher is sharper. Unbounded and resolution-dependent (downscaling sharpens, upscaling blurs), so compare only
    clips of the same size: a flat frame gives 0, blur lowers it, noise raises it.
    """
    return float(np.mean(frame_sharpness(frames)))


def frame_sharpness(frames: Frames) -> np.ndarray:
    """Returns :func:`laplacian_variance` of every frame's luma ([F])."""
    return np.array([laplacian_variance(g) for g in to_gray(frames)])


def delta_e_from_first(frames: Frames) -> np.ndarray:
    """Returns CIE76 Delta E_t = ||mean Lab(x_t) - mean Lab(x_0)||_2 for every frame t ([F], first entry 0).

    The mean is over the per-pixel Lab values, i.e. the average perceived colour, not the Lab of the mean RGB.
    """
    means = mean_lab(frames)
    return delta_e(means, means[0])


def mean_lab(frames: Frames) -> np.ndarray:
    """Returns each frame's mean CIE Lab colour ([F, 3], float64): the mean of the per-pixel Lab values."""
    x = as_uint8_frames(frames)
    return to_lab(x).reshape(len(x), -1, 3).mean(axis=1, dtype=np.float64)


def delta_e(means: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """CIE76 Delta E of mean Lab colours [F, 3] against one reference colour [3] (or one per row, [F, 3])."""
    return np.linalg.norm(means - reference, axis=1)


def color_drift(frames: Frames) -> float:
    """Mean over t = 1 .. F-1 of Delta E_t (:func:`delta_e_from_first`). Lower is better; 0 for a static clip
    (or a single frame). A Delta E76 of ~2.3 is a just-noticeable difference."""
    return color_drift_from_delta_e(delta_e_from_first(frames))


def color_drift_from_delta_e(de) -> float:
    """:func:`color_drift` from Delta E_t, t = 0 .. F-1."""
    de = np.asarray(de, dtype=np.float64)
    return float(de[1:].mean()) if de.size > 1 else 0.0


def lab_contrast(frames: Frames) -> np.ndarray:
    """Returns each frame's per-channel standard deviation of its Lab pixels ([F, 3], float64): its contrast."""
    x = as_uint8_frames(frames)
    return to_lab(x).reshape(len(x), -1, 3).std(axis=1, dtype=np.float64)


def window_color_drift(frames: Frames, window_starts: Iterable[int], prompt_changes: Iterable[int] = ()) -> dict:
    """Colour drift across refinement windows (what users of long videos see as a tint that changes at every
    context-window join): :func:`window_color_from_stats` of the frames' mean Lab colours and contrasts."""
    return window_color_from_stats(mean_lab(frames), lab_contrast(frames), window_starts, prompt_changes)


def window_color_from_stats(means, contrasts, window_starts: Iterable[int],
                            prompt_changes: Iterable[int] = ()) -> dict:
    """Per window (frames split at ``window_starts``): its colour = mean Lab of its frames, its contrast = mean
    per-channel Lab std. Returns ``window_color_drift`` (mean over windows w >= 1 of the CIE76 Delta E of window w's
    colour to window 0's), ``window_color_drift_max`` (the largest) and ``window_contrast_change`` (mean over
    w >= 1 of | |c_w| - |c_0| | / |c_0|). NaN with a single window. Window starts in ``prompt_changes`` (a travelling
    prompt's, :func:`~confiner_core.long.prompt_change_junctions`) begin a new reference: each window is compared with
    the first window of its prompt, and those first windows are not scored (NaN where every window is one)."""
    means, contrasts = np.asarray(means, np.float64), np.asarray(contrasts, np.float64)
    # (a start past the frames was dropped, and the one window left scored NaN without a word)
    bounds = [0, *sorted(b for b in frame_indices(window_starts, "window_starts", 0, len(means) - 1) if b > 0),
              len(means)]
    spans = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    colour = np.stack([means[a:b].mean(0) for a, b in spans])
    contrast = np.array([np.linalg.norm(contrasts[a:b].mean(0)) for a, b in spans])
    changes = set(prompt_changes)
    reference: list[int] = []   # per window, the window it is compared with: the first of its prompt
    for w, (start, _) in enumerate(spans):
        reference.append(w if w == 0 or start in changes else reference[-1])
    scored = [w for w in range(len(spans)) if reference[w] != w]
    if not scored:
        return {"window_color_drift": math.nan, "window_color_drift_max": math.nan,
                "window_contrast_change": math.nan}
    first = [reference[w] for w in scored]
    de = delta_e(colour[scored], colour[first])
    change = np.abs(contrast[scored] - contrast[first]) / np.maximum(contrast[first], 1e-9)
    return {"window_color_drift": float(de.mean()), "window_color_drift_max": float(de.max()),
            "window_contrast_change": float(change.mean())}


def color_drift_max(frames: Frames) -> float:
    """Max over t of Delta E_t (:func:`delta_e_from_first`): the worst departure from frame 0's colour.
    Lower is better."""
    return float(delta_e_from_first(frames).max())


# ---------------------------------------------------------------------------------------------------------------
# Ground truth


def rmse(a, b) -> float:
    """Returns sqrt(mean (a - b)^2) of two same-shaped videos, in 0-255 units."""
    a, b = as_uint8_frames(a).astype(np.float64), as_uint8_frames(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def distance_to_nearest(frames: Frames, references: Sequence) -> float:
    """min over reference videos r of RMSE(frames, r), in 0-255 units; lower is better, 0 for an exact match.

    For synthetic worlds whose possible ground-truth videos are known; every reference must have the frames' shape.
    ``references`` is a sequence of videos or one array [N, F, H, W, 3].
    """
    if len(references) == 0:
        raise ValueError("references is empty")
    if getattr(references, "ndim", None) == 4:   # (its frames were read as videos: "frames must have shape ...")
        raise ValueError(f"references is one video {tuple(references.shape)}; pass a list of videos, references="
                         f"[video], or an array [N, F, H, W, 3]")
    return min(rmse(frames, r) for r in references)


# ---------------------------------------------------------------------------------------------------------------
# Everything at once

METRIC_KEYS = (
    "subject_consistency",
    "motion_smoothness",
    "temporal_flicker",
    "flicker_index",
    "sharpness",
    "color_drift",
    "color_drift_max",
    "seam_score",
    "distance_to_nearest",
)


def evaluate(frames: Frames, junctions: Iterable[int] | None = None, references: Sequence | None = None) -> dict:
    """Returns {key: float} for every key in METRIC_KEYS, always all of them and in that order.

    Undefined values are NaN (seam_score without junctions, distance_to_nearest without references, frame-pair
    metrics on a single frame); :func:`strict_scores` turns them into null with a reason for JSON.
    """
    x = as_uint8_frames(frames)
    de = delta_e_from_first(x)   # (both colour drifts read it)
    out = {
        "subject_consistency": subject_consistency(x),
        "motion_smoothness": motion_smoothness(x),
        "temporal_flicker": temporal_flicker(x),
        "flicker_index": flicker_index(x),
        "sharpness": sharpness(x),
        "color_drift": color_drift_from_delta_e(de),
        "color_drift_max": float(de.max()),
        "seam_score": seam_score(x, junctions) if junctions is not None else math.nan,
        "distance_to_nearest": distance_to_nearest(x, references) if references is not None else math.nan,
    }
    return {k: float(out[k]) for k in METRIC_KEYS}


# which way each score is better (README, "Quality metrics and evaluation"): evaluate's table prints it
BETTER = {
    "subject_consistency": "higher", "motion_smoothness": "higher", "temporal_flicker": "higher",
    "flicker_index": "lower", "sharpness": "higher", "color_drift": "lower", "color_drift_max": "lower",
    "seam_score": "-> 1", "seam_score_windows": "-> 1", "seam_score_structures": "-> 1",
    "seam_score_prompt_changes": "-> 1", "window_color_drift": "lower", "window_color_drift_max": "lower",
    "window_contrast_change": "lower", "distance_to_nearest": "lower",
}


UNDEFINED_REASONS = {
    "subject_consistency": "needs at least 2 frames",
    "motion_smoothness": "needs at least 3 frames",
    "temporal_flicker": "needs at least 2 frames",
    "flicker_index": "needs at least 2 frames",
    "seam_score": "needs junctions and ordinary frame pairs besides them",
    "seam_score_windows": "needs window junctions and ordinary frame pairs besides them",
    "seam_score_structures": "needs structure junctions and ordinary frame pairs besides them",
    "seam_score_prompt_changes": "needs junctions where the prompt changes and ordinary frame pairs besides them",
    "window_color_drift": "needs at least two refinement windows of one prompt",
    "window_color_drift_max": "needs at least two refinement windows of one prompt",
    "window_contrast_change": "needs at least two refinement windows of one prompt",
    "distance_to_nearest": "needs reference clips, passed to metrics.evaluate as references=: the embedded "
                           "world's true clips, as bench/quality_ablation.py passes them",
}


def strict_scores(scores: dict) -> dict:
    """Scores for strict JSON: an undefined (NaN or infinite) score is never passed off as a number; it becomes
    None, and ``"undefined"`` maps its key to the reason."""
    out, undefined = {}, {}
    for k, v in scores.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
            undefined[k] = UNDEFINED_REASONS.get(k, "not defined for this clip")
        else:
            out[k] = v
    if undefined:
        out["undefined"] = undefined
    return out


# ---------------------------------------------------------------------------------------------------------------
# Streaming


class StreamingMetrics:
    """:func:`evaluate` of a video that arrives in chunks (``add`` each, in order), without holding its frames:
    it keeps the last two frames and the per-frame quantities each metric scores (a few floats per frame), and
    gives the same values as :func:`evaluate` on the whole video. ``generate`` scores ConFiner-Long videos with it
    while their windows stream to disk."""

    def __init__(self):
        self.frames = 0
        self.mae: list[float] = []        # d_t, t = 1 .. F-1 (consecutive_mae)
        self.luma: list[float] = []       # mean_luma
        self.sharpness: list[float] = []  # frame_sharpness
        self.delta_e: list[float] = []    # Delta E_t against frame 0
        self.lab_means: list[np.ndarray] = []     # mean_lab, per chunk
        self.lab_contrasts: list[np.ndarray] = []  # lab_contrast, per chunk
        self.prev_cos: list[float] = []   # cos(f_{i-1}, f_i), i >= 1
        self.first_cos: list[float] = []  # cos(f_0, f_i), i >= 1
        self.midpoint_errors: list[float] = []  # odd frames i with a frame i + 1
        self._tail: np.ndarray | None = None    # the last two frames
        self._first_lab: np.ndarray | None = None
        self._first_features: tuple | None = None
        self._last_features: tuple | None = None

    def add(self, frames) -> None:
        x = as_uint8_frames(frames)
        tail = self._tail if self._tail is not None else x[:0]
        joined, k = np.concatenate([tail, x]), len(tail)
        self.mae.extend(consecutive_mae(joined[max(k - 1, 0):]).tolist())
        self.luma.extend(mean_luma(x).tolist())
        self.sharpness.extend(frame_sharpness(x).tolist())
        lab = mean_lab(x)
        self.lab_means.append(lab)
        self.lab_contrasts.append(lab_contrast(x))
        if self._first_lab is None:
            self._first_lab = lab[0]
        self.delta_e.extend(delta_e(lab, self._first_lab).tolist())
        s, h = frame_features(x)
        if self._first_features is None:
            self._first_features, s_new, h_new = (s[:1], h[:1]), s[1:], h[1:]
        else:
            s_new, h_new = s, h
        ps, ph = (s, h) if self._last_features is None else (np.concatenate([self._last_features[0], s]),
                                                              np.concatenate([self._last_features[1], h]))
        self.prev_cos.extend(feature_cosine((ps[:-1], ph[:-1]), (ps[1:], ph[1:])).tolist())
        self.first_cos.extend(feature_cosine(self._first_features, (s_new, h_new)).tolist())
        first_index = self.frames - k  # frame number of joined[0]
        for j in range(max(1, k - 1), len(joined) - 1):  # triples not scored with the previous chunk
            if (first_index + j) % 2 == 1:
                self.midpoint_errors.append(midpoint_error(joined[j - 1], joined[j], joined[j + 1]))
        self._tail = joined[-2:].copy()
        self._last_features = (s[-1:], h[-1:])
        self.frames += len(x)

    def summary(self, window_junctions=None, structure_junctions=None, prompt_changes=()) -> dict:
        """The :data:`METRIC_KEYS` that are defined here (not distance_to_nearest; seam scores only with junctions):
        ``seam_score`` over all junctions, ``seam_score_windows`` and ``seam_score_structures`` over each kind, the
        junctions where a travelling prompt changes apart (:func:`seam_scores_by_kind`)."""
        out = {
            "subject_consistency": consistency_from_cosines(self.prev_cos, self.first_cos),
            "motion_smoothness": smoothness_from_errors(self.midpoint_errors),
            "temporal_flicker": flicker_from_mae(self.mae),
            "flicker_index": flicker_index_from_luma(self.luma),
            "sharpness": float(np.mean(self.sharpness)) if self.sharpness else math.nan,
            "color_drift": color_drift_from_delta_e(self.delta_e),
            "color_drift_max": float(max(self.delta_e)) if self.delta_e else math.nan,
        }
        if window_junctions is not None:
            out.update(seam_scores_by_kind(self.mae, window_junctions, structure_junctions or [], prompt_changes))
            out.update(window_color_from_stats(np.concatenate(self.lab_means), np.concatenate(self.lab_contrasts),
                                               window_junctions, prompt_changes))
        return out


# ---------------------------------------------------------------------------------------------------------------
# Reading videos


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically: frame_2 < frame_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _rgb3(image: np.ndarray) -> np.ndarray:
    # Decoders hand back grey [H, W], grey-alpha, RGB or RGBA; keep colour, drop alpha.
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] in (2, 4):
        image = image[..., :-1]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def _read_frame_dir(path: str) -> np.ndarray:
    names = sorted((n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS)), key=natural_key)
    if not names:
        raise ValueError(f"no image frames ({', '.join(IMAGE_EXTENSIONS)}) in directory {path!r}")
    frames = []
    for n in names:
        bgr = cv2.imread(os.path.join(path, n), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read image {os.path.join(path, n)!r}")
        if frames and bgr.shape != frames[0].shape:
            raise ValueError(f"frame {os.path.join(path, n)!r} has shape {bgr.shape}, expected {frames[0].shape}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def _read_cv2(path: str) -> list[np.ndarray]:
    cap = cv2.VideoCapture(path)
    frames = []
    try:
        while cap.isOpened():
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    return frames


def _read_imageio(path: str) -> list[np.ndarray]:
    try:
        import imageio.v3 as iio

        arr = np.asarray(iio.imread(path, index=None))
    except Exception:
        return []
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 2, 3, 4) and arr.shape[-1] < arr.shape[0]):
        arr = arr[None]  # a still image: [H, W(, C)] -> one frame
    return [_rgb3(f) for f in arr]


def read_video(path_or_dir) -> np.ndarray:
    """Reads a video file (mp4, gif, webm, ...), a directory of image frames or a ``frames.npy`` (generate
    ``--save-frames``) into uint8 RGB [F, H, W, 3].

    Files go through cv2.VideoCapture (FFmpeg); when that yields at most one frame -- it cannot open the file, or
    it decodes animated GIFs as a single frame -- imageio is tried too and the longer result kept. A directory is
    read as its .png/.jpg/... files in natural order (frame_2 before frame_10). Raises FileNotFoundError for a
    missing path and ValueError naming the path when nothing decodable is found.
    """
    path = os.fspath(path_or_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such video file or frame directory: {path!r}")
    if os.path.isdir(path):
        return np.ascontiguousarray(_read_frame_dir(path), dtype=np.uint8)
    if path.endswith(".npy"):   # generate --save-frames: every frame, lossless
        try:
            frames = np.load(path, allow_pickle=False)
        except ValueError as e:   # (an array of Python objects: numpy's own words)
            raise ValueError(f"{path!r} holds no frames (uint8 [F, H, W, 3]): {e}") from None
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{path!r} holds {frames.dtype} {frames.shape}, not frames: uint8 [F, H, W, 3]")
        return frames
    frames = _read_cv2(path)
    if len(frames) <= 1:
        fallback = _read_imageio(path)
        frames = fallback if len(fallback) > len(frames) else frames
    if not frames:
        raise ValueError(f"cannot read any frames from {path!r}: it is no video OpenCV or imageio can decode (not "
                         f"a video, or one cut short: an mp4 whose writing stopped has no index)")
    if any(f.shape != frames[0].shape for f in frames):
        raise ValueError(f"frames of {path!r} differ in size")
    return as_uint8_frames(np.stack(frames))
