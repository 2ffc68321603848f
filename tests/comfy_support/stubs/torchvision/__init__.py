"""Test-only stand-in for ``torchvision`` (NOT the real package).

ComfyUI core imports torchvision at import time (``comfy/model_base.py`` ->
``comfy/ldm/cosmos/model.py``: ``from torchvision import transforms``;
``comfy/sd.py`` -> ``comfy/ldm/cascade/stage_c_coder.py``: ``import torchvision``).
On a CPU-only torch the PyPI torchvision wheel fails to load
("operator torchvision::nms does not exist"), so the ComfyUI integration tests put
this directory (``tests/comfy_support/stubs``) on ``PYTHONPATH`` instead.

Only what is needed for importing ComfyUI core plus a few trivial helpers are
provided. Anything touching real torchvision functionality (Cosmos padding masks
beyond nearest resize, Stable Cascade's EfficientNet backbone, ...) raises a clear
error. It is never used outside the ComfyUI host tests.
"""

__version__ = "0.0.0+confiner.stub"
IS_CONFINER_STUB = True

from . import transforms  # noqa: E402,F401


class _MissingModels:
    """``torchvision.models``: not available in the stub."""

    def __getattr__(self, name):
        raise NotImplementedError(
            f"torchvision.models.{name} is not available: this is the ConFiner test-only torchvision stub"
        )


models = _MissingModels()


def __getattr__(name):  # PEP 562: unknown submodules/attributes fail loudly
    raise AttributeError(
        f"module 'torchvision' has no attribute {name!r} (ConFiner test-only torchvision stub)"
    )
