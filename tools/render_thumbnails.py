"""Renders example_workflows/<template>.jpg, the thumbnails ComfyUI's template browser shows, from real ConFiner runs.

The runs use the library's embedded world (``python -m confiner_core generate`` without checkpoints: exact
posterior-mean experts over a small procedural video world, no downloads, a few seconds on a CPU), with each
template's settings: the basic chain, the three refinement modes side by side, and ConFiner-Long with prompt travel.
They show what the template does, not what SD 1.5 + AnimateDiff would paint; each thumbnail says so in its caption.

Usage: python tools/render_thumbnails.py
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


def generate(out_dir: str, *args: str) -> np.ndarray:
    """Runs the CLI on the embedded world and returns the video's frames [F, H, W, 3] (RGB uint8)."""
    subprocess.run([sys.executable, "-m", "confiner_core", "generate", "--out", out_dir, "--quiet", *args],
                   cwd=ROOT, check=True)
    capture = cv2.VideoCapture(os.path.join(out_dir, "video.mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        size = ["--height", "256", "--width", "256", "--seed", "3"]
        basic = generate(os.path.join(tmp, "basic"), "--prompt", "a red ball bouncing over green grass", *size)
        print(thumbnail("confiner_basic", "ConFiner basic: 4 control + 5 coordinated steps",
                        [basic[i] for i in (0, 5, 10, 15)], 2))

        modes = {m: generate(os.path.join(tmp, m), "--prompt", "a yellow diamond sliding over desert sand",
                             "--mode", m, *size) for m in ("coordinated", "standard", "temporal")}
        print(thumbnail("confiner_compare_modes", "One structure, three refinement modes",
                        [modes[m][i] for i in (0, 8) for m in modes], 3, list(modes)))

        long = generate(os.path.join(tmp, "long"), "--frames", "128", "--prompt",
                        "a red ball bouncing over green grass | 64: a red ball bouncing over snow", *size)
        print(thumbnail("confiner_long_128", "ConFiner-Long: 128 frames, grass to snow at 64",
                        [long[i] for i in (0, 42, 85, 127)], 2))


if __name__ == "__main__":
    main()
