"""A small procedural video world, described by the prompt, rendered straight into a 4-channel latent.

The world gives the embedded experts their data: sharp single frames (what an image model knows), coherent
but low-detail clips (what a video model knows) and coarse clips (what a few-step control model knows).
Latent channels are (R, G, B, mask) in [-1, 1] at 1/8 of the output resolution, like SD's latent grid.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

COLOURS = {
    "red": (0.9, 0.15, 0.1), "green": (0.2, 0.8, 0.25), "blue": (0.15, 0.35, 0.95), "yellow": (0.95, 0.85, 0.1),
    "orange": (0.95, 0.5, 0.1), "purple": (0.6, 0.2, 0.8), "white": (0.95, 0.95, 0.95), "pink": (0.95, 0.45, 0.7),
    "cyan": (0.1, 0.85, 0.9), "black": (0.08, 0.08, 0.08),
}
BACKGROUNDS = {  # keyword -> (base colour, texture colour)
    "grass": ((0.25, 0.55, 0.2), (0.15, 0.4, 0.1)), "field": ((0.35, 0.6, 0.2), (0.25, 0.45, 0.1)),
    "sky": ((0.45, 0.7, 0.95), (0.8, 0.88, 0.98)), "ocean": ((0.1, 0.3, 0.6), (0.2, 0.5, 0.8)),
    "sea": ((0.1, 0.3, 0.6), (0.2, 0.5, 0.8)), "desert": ((0.85, 0.7, 0.45), (0.75, 0.58, 0.35)),
    "sand": ((0.85, 0.7, 0.45), (0.75, 0.58, 0.35)), "snow": ((0.92, 0.94, 0.98), (0.78, 0.82, 0.9)),
    "night": ((0.05, 0.05, 0.15), (0.2, 0.2, 0.35)), "space": ((0.02, 0.02, 0.06), (0.6, 0.6, 0.7)),
    "floor": ((0.55, 0.4, 0.3), (0.45, 0.3, 0.2)),
}
# the colour words a background is drawn in: "green grass" describes what the world draws, "red grass" does not
BACKGROUND_COLOURS = {"grass": {"green"}, "field": {"green", "yellow"}, "sky": {"blue", "cyan"},
                      "ocean": {"blue", "cyan"}, "sea": {"blue", "cyan"}, "desert": {"yellow", "orange"},
                      "sand": {"yellow", "orange"}, "snow": {"white"}, "night": {"black", "blue"},
                      "space": {"black"}, "floor": {"orange"}}
SHAPES = {"ball": "disc", "circle": "disc", "sphere": "disc", "moon": "disc", "sun": "disc", "square": "square",
          "box": "square", "cube": "square", "block": "square", "diamond": "diamond", "kite": "diamond"}
MOTIONS = {"bouncing": "bounce", "bounces": "bounce", "jumping": "bounce", "rolling": "horizontal",
           "moving": "horizontal", "sliding": "horizontal", "flying": "horizontal", "left": "horizontal",
           "right": "horizontal", "falling": "vertical", "rising": "vertical", "sinking": "vertical",
           "circling": "orbit", "orbiting": "orbit", "spinning": "orbit", "drifting": "diagonal"}
DEFAULT_PROMPT = "a red ball bouncing over green grass"
# words that describe nothing the world could draw differently: not worth telling a user they were not read
FILLER = {"a", "an", "the", "over", "on", "in", "into", "through", "across", "along", "with", "of", "and", "at", "to",
          "from", "under", "above", "by", "around", "is", "its"}


def prompt_words(prompt: str) -> list[str]:
    return [w.strip(".,;:!?") for w in (prompt or DEFAULT_PROMPT).lower().split()]


class PromptReading(NamedTuple):
    """What the world draws for a prompt, in words (``'a purple ball bouncing over grass'``), the words it does not
    know, and the known words it left unused: a second colour, shape, motion or background ("red" in "a blue ball
    over red grass": the world draws the first of each kind, and grass has its own colour)."""

    draws: str
    unknown: list[str]
    unused: list[str]


KINDS = ((COLOURS, "red"), (SHAPES, "ball"), (MOTIONS, "bouncing"), (BACKGROUNDS, "grass"))


def describes_background(words: list[str], i: int) -> bool:
    """Whether word ``i`` is a colour that describes the background named next ("green" in "over green grass"): the
    world draws a background in its own colours, so such a word does not colour the object."""
    return words[i] in COLOURS and i + 1 < len(words) and words[i + 1] in BACKGROUNDS


def firsts(words: list[str]) -> list[str]:
    """The first word of each kind of :data:`KINDS` (the default where there is none), the object's colour among the
    colours that do not describe the background: what the world draws."""
    return [next((w for i, w in enumerate(words) if w in table and not (table is COLOURS and
                                                                         describes_background(words, i))), default)
            for table, default in KINDS]


def read_prompt(prompt: str) -> PromptReading:
    """The first colour, shape, motion and background ``prompt`` names (the default for each it does not), and the
    words that change nothing: a second of a kind, and a background's colour other than its own ("red grass" is
    drawn green)."""
    words = prompt_words(prompt)
    drawn = firsts(words)
    known = FILLER.union(*(table.keys() for table, _ in KINDS))

    def unused(i: int, w: str) -> bool:
        if describes_background(words, i):
            return w not in BACKGROUND_COLOURS.get(words[i + 1], ())
        return any(w in table and table[w] != table.get(first) for (table, _), first in zip(KINDS, drawn))

    colour, shape, motion, background = drawn
    return PromptReading(f"a {colour} {shape} {motion} over {background}",
                         list(dict.fromkeys(w for w in words if w and w not in known)),
                         list(dict.fromkeys(w for i, w in enumerate(words) if unused(i, w))))


@dataclass(frozen=True)
class Scene:
    """What the prompt asks for."""

    colour: tuple
    shape: str
    background: tuple
    motion: str
    seed: int

    @classmethod
    def from_prompt(cls, prompt: str) -> "Scene":
        colour, shape, motion, background = firsts(prompt_words(prompt))
        seed = int.from_bytes(hashlib.sha256((prompt or DEFAULT_PROMPT).encode()).digest()[:4], "little")
        return cls(COLOURS[colour], SHAPES[shape], BACKGROUNDS[background], MOTIONS[motion], seed)


def trajectory(motion: str, frames: int, phase: float, speed: float, offset: float) -> np.ndarray:
    """Object centre (y, x) in [0, 1]^2 per frame: smooth, periodic families so clips can continue each other."""
    s = phase + speed * np.arange(frames) / 16.0  # one period is ~16 frames at speed 1
    if motion == "bounce":
        return np.stack([0.78 - 0.5 * np.abs(np.sin(np.pi * s)), 0.2 + 0.6 * (0.5 + 0.5 * np.sin(0.5 * np.pi * s + offset))], 1)
    if motion == "horizontal":
        return np.stack([np.full(frames, 0.35 + 0.3 * offset / (2 * np.pi)), 0.5 + 0.35 * np.sin(np.pi * s)], 1)
    if motion == "vertical":
        return np.stack([0.5 + 0.35 * np.sin(np.pi * s), np.full(frames, 0.35 + 0.3 * offset / (2 * np.pi))], 1)
    if motion == "orbit":
        return np.stack([0.5 + 0.28 * np.sin(np.pi * s + offset), 0.5 + 0.28 * np.cos(np.pi * s + offset)], 1)
    return np.stack([0.5 + 0.3 * np.sin(np.pi * s), 0.5 + 0.3 * np.sin(np.pi * s + offset)], 1)  # diagonal


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    return torch.meshgrid(ys, xs, indexing="ij")


def _background(scene: Scene, h: int, w: int) -> torch.Tensor:
    """A static textured backdrop [3, h, w]: fine stripes plus seeded speckle, the world's spatial detail."""
    yy, xx = _grid(h, w)
    base, tex = (torch.tensor(c).view(3, 1, 1) for c in scene.background)
    g = torch.Generator().manual_seed(scene.seed)
    speckle = torch.rand(1, h, w, generator=g)
    pattern = (0.5 + 0.5 * torch.sin(2 * math.pi * (yy * h / 3.0 + 0.3 * xx * w / 5.0))).unsqueeze(0)
    mix = (0.6 * pattern + 0.4 * speckle).clamp(0, 1)
    return base * (1 - mix) + tex * mix


SHADES = (1.0, 0.7, 1.25)  # appearance variants of the prompt's colour: what segments must agree on


def _object(scene: Scene, yy, xx, cy: float, cx: float, radius: float, variant: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb [3,h,w], soft mask [h,w]) of the object at (cy, cx) (fractions of the height and width), ``radius`` a
    fraction of the shorter side. ``variant`` picks its appearance: the stripe
    phase (variant % 2) and the shade of its colour (variant // 2), fixed within a clip, free across clips."""
    # distances in units of the frame's shorter side, so a disc stays round in a frame of any shape (a trial's ball
    # at 128x256 was 30x59 px); the same numbers as before in a square frame
    h, w = yy.shape
    side = min(h, w)
    dy, dx = (yy - cy) * (h / side), (xx - cx) * (w / side)
    if scene.shape == "square":
        dist = torch.maximum(dy.abs(), dx.abs())
    elif scene.shape == "diamond":
        dist = (dy.abs() + dx.abs()) / 1.3
    else:
        dist = torch.sqrt(dy**2 + dx**2)
    mask = torch.sigmoid((radius - dist) * side * 2.0)
    stripes = 0.5 + 0.5 * torch.sign(torch.sin(2 * math.pi * ((dy + dx) * side / 4.0 + (variant % 2) / 2.0)))
    colour = (torch.tensor(scene.colour) * SHADES[(variant // 2) % len(SHADES)]).clamp(0, 1).view(3, 1, 1)
    shade = 1.0 - 0.35 * stripes - 0.25 * (dist / radius).clamp(0, 1)
    return colour * shade.unsqueeze(0), mask


def render_frame(scene: Scene, h: int, w: int, cy: float, cx: float, variant: int = 0,
                 background: torch.Tensor | None = None) -> torch.Tensor:
    """One latent frame [4, h, w] in [-1, 1]."""
    yy, xx = _grid(h, w)
    bg = _background(scene, h, w) if background is None else background
    rgb, mask = _object(scene, yy, xx, cy, cx, 0.14, variant)
    img = bg * (1 - mask) + rgb * mask
    return torch.cat([img * 2 - 1, mask.unsqueeze(0) * 2 - 1], 0)


def blur(latents: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over the last two axes (what 'low detail' means in this world)."""
    if sigma <= 0:
        return latents
    radius = max(1, int(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(latents)
    shape = latents.shape
    x = latents.reshape(-1, 1, *shape[-2:])
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(shape)


class World:
    """The data each embedded expert knows, for one prompt at one latent size. Cached per clip length."""

    def __init__(self, prompt: str, h: int, w: int, clips: int = 48, positions: int = 20, variants: int = 6):
        self.scene = Scene.from_prompt(prompt)
        self.h, self.w, self.n_clips, self.positions, self.variants = h, w, clips, positions, variants
        self.background = _background(self.scene, h, w)
        rng = np.random.default_rng(self.scene.seed)
        self.params = [(rng.uniform(0, 2), rng.uniform(0.7, 1.3), rng.uniform(0, 2 * np.pi)) for _ in range(clips)]
        self._clips: dict[int, torch.Tensor] = {}

    def frame_bank(self) -> torch.Tensor:
        """Sharp frames with the object anywhere on a grid, in every texture variant: [N, 4, h, w]. No motion."""
        cs = np.linspace(0.12, 0.88, self.positions)
        return torch.stack([render_frame(self.scene, self.h, self.w, cy, cx, v, self.background)
                            for cy in cs for cx in cs for v in range(self.variants)])

    def true_clips(self, frames: int) -> torch.Tensor:
        """Sharp, coherent clips [K, 4, F, h, w] (texture variant fixed per clip): the world's ground truth."""
        if frames not in self._clips:
            clips = []
            for k, (phase, speed, offset) in enumerate(self.params):
                path = trajectory(self.scene.motion, frames, phase, speed, offset)
                clips.append(torch.stack([render_frame(self.scene, self.h, self.w, cy, cx, k % self.variants,
                                                       self.background) for cy, cx in path], 1))
            self._clips[frames] = torch.stack(clips)
        return self._clips[frames]
