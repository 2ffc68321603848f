"""Test support for running ConFiner inside a headless ComfyUI (test-only code).

Importing this package is cheap: nothing here imports torch or ComfyUI at import time.
See harness.py (in-process boot), worker.py (per-module subprocess), ui_to_api.py,
synthetic_checkpoint.py and fixtures.py.
"""
