import os
import sys

# Offline before diffusers/transformers are imported anywhere (they read it once, at import).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# --- ComfyUI host integration tests (tests/comfy_support; see tests/test_comfy_harness.py) ---
# Tests marked `comfyui` need a ComfyUI checkout in $COMFYUI_PATH (skipped when unset). They
# drive ComfyUI in a worker subprocess, never inside this pytest process: one per module, or the
# session's `confiner_worker`, defined here once (imported into each module, a session fixture
# would be one per module).
from comfy_support.fixtures import comfy_path, confiner_pack_dir, confiner_worker, synthetic_checkpoint  # noqa: E402,F401


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "comfyui: needs a ComfyUI checkout in $COMFYUI_PATH (host integration test; skipped when unset)"
    )
    config.addinivalue_line(
        "markers", "first_version_only: a host test whose ComfyUI calls other host tests already make on every "
                   "version; CI runs it on the first ComfyUI checkout only (.ci/run)"
    )
