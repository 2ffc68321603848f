"""Speed settings for diffusers experts: channels_last convolutions, cuDNN autotuning and torch.compile.

All optional, none changes the maths. ``compile="blocks"`` is regional compilation (diffusers' advice for short
cold starts): every ResNet, transformer, temporal and resampling block is compiled on its own, and blocks of one
class with the same shapes share one compiled graph, also across experts (SD 1.5, AnimateDiff and ModelScope use
the same ResNet blocks), so each is compiled once. ``"full"`` compiles each model's forward whole: more fusion,
a much longer cold start (minutes per UNet). Shapes are static (``dynamic=False``): a new batch or resolution
compiles again, so keep them fixed for the run that matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: diffusers block classes compiled one by one under ``compile="blocks"``
BLOCK_CLASSES = ("ResnetBlock2D", "Transformer2DModel", "TransformerTemporalModel", "TemporalConvLayer",
                 "AnimateDiffTransformer3D", "Downsample2D", "Upsample2D", "UNetMidBlock2D",
                 "WanTransformerBlock", "QwenImageTransformerBlock")
COMPILE_SCOPES = ("none", "blocks", "full")


@dataclass(frozen=True)
class SpeedSettings:
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: str = "none"
    compile_mode: str | None = None  # torch.compile's mode, e.g. "max-autotune-no-cudagraphs"
    backend: str = "inductor"

    def __post_init__(self):
        if self.compile not in COMPILE_SCOPES:
            raise ValueError(f"compile={self.compile!r}: choose one of {COMPILE_SCOPES}")

    def describe(self) -> str:
        parts = [name for name, on in (("channels_last", self.channels_last),
                                       ("cudnn.benchmark", self.cudnn_benchmark)) if on]
        if self.compile != "none":
            parts.append(f"torch.compile ({self.compile}{', ' + self.compile_mode if self.compile_mode else ''})")
        return " + ".join(parts) or "eager"


EAGER = SpeedSettings()
FAST = SpeedSettings(channels_last=True, cudnn_benchmark=True, compile="blocks")
PRESETS = {"eager": EAGER, "fast": FAST}  # by name, as the command line takes them


def to_channels_last(module: torch.nn.Module) -> int:
    """Every 4-D weight (2-D convolutions) in channels_last; 5-D (3-D convolution) weights stay as they are, so
    video UNets can be converted whole. cuDNN then picks NHWC kernels, and activations follow. Returns the count."""
    n = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
            n += 1
    return n


def compile_forward(module: torch.nn.Module, settings: SpeedSettings) -> None:
    """Replace ``module.forward`` by its compiled version. Hooks stay outside the graph (they run around
    ``forward``), and every instance of a class shares the compiled code of ``Class.forward``."""
    module.forward = torch.compile(module.forward, dynamic=False, mode=settings.compile_mode,
                                   backend=settings.backend)


def compile_blocks(module: torch.nn.Module, settings: SpeedSettings, classes=BLOCK_CLASSES) -> int:
    """Compile each block of ``classes`` inside ``module`` (not descending into a compiled one); returns the count."""
    if type(module).__name__ in classes:
        compile_forward(module, settings)
        return 1
    return sum(compile_blocks(child, settings, classes) for child in module.children())


def allow_recompiles(limit: int = 1024) -> None:
    """Blocks of one class at many shapes (every resolution, batch and channel count) are separate cache entries
    of one code object: raise dynamo's per-code limit above its default (8) so none falls back to eager."""
    import torch._dynamo.config as dynamo_config

    for name, value in (("recompile_limit", limit), ("cache_size_limit", limit),
                        ("accumulated_recompile_limit", 8 * limit), ("accumulated_cache_size_limit", 8 * limit)):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, value)


def apply_speed_settings(modules, settings: SpeedSettings) -> dict:
    """Apply ``settings`` in place to ``modules`` (UNets, a VAE decoder...). Returns what was done."""
    done = {"settings": settings.describe(), "channels_last_tensors": 0, "compiled": 0}
    if settings.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if settings.compile == "blocks":
        allow_recompiles()
    for m in modules:
        if settings.channels_last:
            done["channels_last_tensors"] += to_channels_last(m)
        if settings.compile == "blocks":
            done["compiled"] += compile_blocks(m, settings)
        elif settings.compile == "full":
            compile_forward(m, settings)
            done["compiled"] += 1
    return done
