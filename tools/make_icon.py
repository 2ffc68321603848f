"""Renders docs/icon.png (the Comfy Registry icon named in pyproject.toml) from the embedded default: the middle
frame of a 16-frame ConFiner run, 256x256. Run: python tools/make_icon.py"""

import os
import sys
import tempfile

import cv2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from confiner_core.generate import GenerateRequest, generate  # noqa: E402
from confiner_core.metrics import read_video  # noqa: E402

with tempfile.TemporaryDirectory() as out:
    generate(GenerateRequest(prompt="a red ball bouncing over green grass", out=out, seed=3), show_progress=False)
    frame = read_video(os.path.join(out, "video.mp4"))[8]
os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
cv2.imwrite(os.path.join(ROOT, "docs", "icon.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
