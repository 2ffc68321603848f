"""Measures, in the real ComfyUI frontend, the size each node type of the templates is drawn at (its computed
minimum), and writes tools/frontend_node_sizes.json for tools/build_example_workflows.py.

Needs what the browser test needs (tests/comfy_support/browser.py): COMFYUI_PATH, the pinned
comfyui-frontend-package, playwright and /usr/bin/chromium; AnimateDiff-Evolved from CONFINER_ADE_PATH
(default ~/.cache/confiner/ade).

Usage: COMFYUI_PATH=... python tools/measure_frontend_sizes.py
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfy_support import browser  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
from build_example_workflows import SOCKETS  # noqa: E402


def main() -> None:
    root = browser.checkout_for_tools()
    ade = Path(os.environ.get("CONFINER_ADE_PATH", Path.home() / ".cache/confiner/ade")).expanduser()
    with browser.ComfyServer(root, [(ROOT, "comfyui-confiner"), (ade, "ComfyUI-AnimateDiff-Evolved")]) as server, \
            browser.Browser(server.url) as b:
        sizes = browser.measure_sizes(b, sorted(SOCKETS))
    sizes = {k: [round(v[0], 1), round(v[1], 1)] for k, v in sizes.items() if v}
    out = ROOT / "tools" / "frontend_node_sizes.json"
    out.write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
