"""Renders web/docs/<node id>.png, the picture on each node's help page: the node as the real frontend draws it.

Needs what the browser test needs (tests/comfy_support/browser.py). Usage: COMFYUI_PATH=... python tools/render_node_pictures.py
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfy_support import browser  # noqa: E402

NODE_IDS = ["ConFinerControlExpert", "ConFinerRefineExperts", "ConFinerCoordinatedSampler", "ConFinerLongSegmenter",
            "ConFinerNoiseRescheduler"]


def main() -> None:
    root = browser.checkout_for_tools()
    out = ROOT / "web" / "docs"
    out.mkdir(parents=True, exist_ok=True)
    with browser.ComfyServer(root, [(ROOT, "comfyui-confiner")]) as server, browser.Browser(server.url) as b:
        for node_id in NODE_IDS:
            browser.node_picture(b, node_id, out / f"{node_id}.png")
            print("wrote", out / f"{node_id}.png")


if __name__ == "__main__":
    main()
