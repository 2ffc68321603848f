"""Renders example_workflows/<template>.jpg, the thumbnails ComfyUI's template browser shows, from real ConFiner runs.

The runs use the library's embedded world (``python -m confiner_core generate`` without checkpoints: exact
posterior-mean experts over a small procedural video world, no downloads, a few seconds on a CPU), with each
template's settings: the basic chain, the three refinement modes side by side, ConFiner-Long with prompt travel, and
the modern templates on the embedded Wan-like experts (``--embedded wan``: a causal 4k+1 latent space with an image
expert on latent frames; ``--embedded bridge``: an SD-like spatial expert bridged to them; for Wan 2.2 A14B the two
Wan-like experts as a high/low-noise pair in the control role, through the library's ExpertPair and run_chain).
They show what the template does, not what the real models would paint; each thumbnail says so in its caption.

Usage: python tools/render_thumbnails.py [template ...]   (default: every template)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "example_workflows")
SIZE = 512
CAPTION = 56


def read_video(path: str) -> np.ndarray:
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


def generate(out_dir: str, *args: str) -> np.ndarray:
    """Runs the CLI on the embedded world and returns the video's frames [F, H, W, 3] (RGB uint8)."""
    subprocess.run([sys.executable, "-m", "confiner_core", "generate", "--out", out_dir, "--quiet", *args],
                   cwd=ROOT, check=True)
    return read_video(os.path.join(out_dir, "video.mp4"))


def embedded_a14b(prompt: str, frames: int, size: int, seed: int) -> np.ndarray:
    """The Wan 2.2 A14B template's chain on the embedded world: the coarse Wan-like control expert (high noise) and
    the finer one (low noise) as one control expert switching at sigma 0.875, the image expert on latent frames as
    the spatial expert, the finer one as the temporal expert; 8 control steps, T_e 100, 5 coordinated steps."""
    sys.path.insert(0, ROOT)
    import torch

    from confiner_core.chain import ChainConfig, run_chain
    from confiner_core.embedded.experts import image_expert, wan_control, wan_temporal
    from confiner_core.experts import EvaluationLog, ExpertPair
    from confiner_core.latent_spaces import to_uint8

    log = EvaluationLog()
    pair = ExpertPair(wan_control(), wan_temporal(), 0.875, name="embedded Wan-like high/low-noise pair")
    control = pair.bind(prompt, "", 1.0, log)
    spatial, temporal = image_expert().bind(prompt, "", 1.0, log), wan_temporal().bind(prompt, "", 1.0, log)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(pair.latent_space.latent_shape(1, frames, size, size), generator=generator)
    result = run_chain(control, spatial, temporal, noise, ChainConfig(control_steps=8, te=250, refine_steps=5),
                       generator)
    return to_uint8(result.refiner.expert.codec.decode(result.latent))[0].numpy()


def tile(images: list, columns: int, width: int, height: int) -> Image.Image:
    rows = -(-len(images) // columns)
    w, h = width // columns, height // rows
    sheet = Image.new("RGB", (width, height), (18, 18, 18))
    for i, image in enumerate(images):
        cell = Image.fromarray(image).resize((w - 4, h - 4), Image.LANCZOS)
        sheet.paste(cell, ((i % columns) * w + 2, (i // columns) * h + 2))
    return sheet


def font(size: int):
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default()


def thumbnail(name: str, title: str, images: list, columns: int, labels: list | None = None) -> str:
    canvas = Image.new("RGB", (SIZE, SIZE), (18, 18, 18))
    canvas.paste(tile(images, columns, SIZE, SIZE - CAPTION), (0, 0))
    draw = ImageDraw.Draw(canvas)
    if labels:
        w = SIZE // columns
        for i, label in enumerate(labels):
            draw.rectangle([i * w + 2, 2, i * w + 6 + 9 * len(label), 22], fill=(0, 0, 0))
            draw.text((i * w + 5, 4), label, fill=(255, 255, 255), font=font(15))
    draw.text((12, SIZE - CAPTION + 6), title, fill=(240, 240, 240), font=font(20))
    draw.text((12, SIZE - CAPTION + 32), "rendered by ConFiner's embedded test world (no checkpoints)",
              fill=(150, 150, 150), font=font(14))
    path = os.path.join(OUT, name + ".jpg")
    canvas.save(path, "JPEG", quality=88, optimize=True)
    return path


SIZE_ARGS = ["--height", "256", "--width", "256", "--seed", "3"]
BALL = "a red ball bouncing over green grass"
WAN_ARGS = ["--frames", "33", "--segment-length", "33", "--control-steps", "8", "--te", "100", "--refine-steps", "5",
            *SIZE_ARGS]
WAN_PICKS = (0, 11, 22, 32)


def basic(tmp: str) -> str:
    video = generate(os.path.join(tmp, "basic"), "--prompt", BALL, *SIZE_ARGS)
    return thumbnail("ConFiner 1 - start here - SD 1.5 and AnimateDiff", "ConFiner basic: 4 control + 5 coordinated steps",
                     [video[i] for i in (0, 5, 10, 15)], 2)


def compare_modes(tmp: str) -> str:
    modes = {m: generate(os.path.join(tmp, m), "--prompt", "a yellow diamond sliding over desert sand",
                         "--mode", m, *SIZE_ARGS) for m in ("coordinated", "standard", "temporal")}
    return thumbnail("ConFiner 3 - compare refine modes - SD 1.5", "One structure, three refinement modes",
                     [modes[m][i] for i in (0, 8) for m in modes], 3, list(modes))


def long_128(tmp: str) -> str:
    # sand to snow, as the template's prompt travels from a beach to snow
    video = generate(os.path.join(tmp, "long"), "--frames", "128", "--prompt",
                     "0: a red ball bouncing over desert sand | 64: a red ball bouncing over snow", *SIZE_ARGS)
    return thumbnail("ConFiner 2 - long video - SD 1.5 and AnimateDiff", "ConFiner-Long: 128 frames, sand to snow at 64",
                     [video[i] for i in (0, 42, 85, 127)], 2)


def wan_qwen_image(tmp: str) -> str:
    video = generate(os.path.join(tmp, "wan"), "--embedded", "wan", "--prompt", BALL, *WAN_ARGS)
    return thumbnail("ConFiner 4 - Wan 2.1 and Qwen-Image", "Wan control, image expert, Wan temporal",
                     [video[i] for i in WAN_PICKS], 2)


def sd15_bridge_wan(tmp: str) -> str:
    video = generate(os.path.join(tmp, "bridge"), "--embedded", "bridge", "--prompt",
                     "a yellow diamond sliding over desert sand", *WAN_ARGS)   # matching auto: nearest
    return thumbnail("ConFiner 6 - SD 1.5 and Wan 2.1 bridged", "SD-like spatial bridged to Wan-like experts",
                     [video[i] for i in WAN_PICKS], 2)


def wan21_flux1_dev(tmp: str) -> str:
    video = generate(os.path.join(tmp, "flux"), "--embedded", "bridge", "--prompt",
                     "a red ball rolling across green grass", "--seed", "4", *WAN_ARGS)
    return thumbnail("ConFiner 5 - Wan 2.1 and FLUX.1-dev", "Image expert bridged to Wan-like experts",
                     [video[i] for i in WAN_PICKS], 2)


def wan22_a14b(tmp: str) -> str:
    video = embedded_a14b("a red ball bouncing over snow", 33, 256, 3)
    return thumbnail("ConFiner 8 - Wan 2.2 A14B", "High/low-noise pair as control, low noise refines",
                     [video[i] for i in WAN_PICKS], 2)


def long_wan21(tmp: str) -> str:
    # sand to snow at 5 s of 16 fps, as the template's prompt travels from a beach to snow
    video = generate(os.path.join(tmp, "long_wan"), "--embedded", "wan", "--frames", "165", "--segment-length", "33",
                     "--control-steps", "8", "--fps", "16", "--prompt",
                     "0: a red ball bouncing over desert sand | 5s: a red ball bouncing over snow", *SIZE_ARGS)
    return thumbnail("ConFiner 7 - long video - Wan 2.1", "Long, Wan-like: 165 frames, sand to snow at 5 s",
                     [video[i] for i in (0, 55, 109, 164)], 2)


RENDERERS = {f.__name__: f for f in (basic, compare_modes, long_128, wan_qwen_image, sd15_bridge_wan, wan21_flux1_dev,
                                      wan22_a14b, long_wan21)}


def main() -> None:
    """Usage: python tools/render_thumbnails.py [template ...] (default: all; names without the confiner_ prefix)."""
    names = [n.removeprefix("confiner_") for n in sys.argv[1:]] or list(RENDERERS)
    unknown = sorted(set(names) - set(RENDERERS))
    if unknown:
        sys.exit(f"unknown template(s) {unknown}; choose from {sorted(RENDERERS)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(RENDERERS[name](tmp))


if __name__ == "__main__":
    main()
