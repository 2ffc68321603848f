"""Speed settings for diffusers experts, and the presets the command line selects by name (``--speed``).

Each setting is optional and keeps the maths (outputs agree with eager within rounding: ``tests/test_speed.py``
states the tolerances), except ``step_cache``, which approximates and is off in every preset.

* ``channels_last`` / ``channels_last_3d``: 2-D (and 3-D) convolution weights in channels_last, so cuDNN runs NHWC
  (NDHWC) kernels and activations follow, also through the temporal transformers (whose diffusers forwards return
  NCHW);
* ``fused_norm``: GroupNorm + SiLU (+ the time-embedding add) in two Triton kernels that keep the NHWC layout
  (:mod:`.fused_norm`): with channels_last this removes the NCHW<->NHWC round trips around every norm;
* ``fused_geglu``: the gate of the transformer blocks' GEGLU feed-forward (GELU and product of the projection's two
  halves) in one Triton kernel instead of two strided passes (:mod:`.fused_geglu`);
* ``fuse_qkv``: one GEMM for the query, key and value projections (diffusers' ``fuse_qkv_projections``);
* ``fold_upsample``: every nearest ×2 upsampling and the 3×3 convolution after it (diffusers' ``Upsample2D``: UNets
  and VAE decoders) as the one stride-2 transposed convolution they equal (:mod:`.folded_upsample`): 16 instead of
  36 multiply-adds per output, no upsampled copy;
* ``attention``: the scaled-dot-product-attention backend tried first (PyTorch's cuDNN, flash or memory-efficient
  kernels, falling back to the others where a shape is not supported; ``"flash4"``: the ``flash-attn-4`` package's
  CuTe kernels where it is installed, else PyTorch's (cuDNN first); ``"fastest"``: FA4 for long self-attention, the
  shapes where it beats cuDNN, and cuDNN for the rest (:mod:`.flash4_attention`), so exactly ``"cudnn"`` where FA4
  is not installed or the GPU is older than Hopper; ``"frames"``: one Triton kernel for sequences of up to 64
  tokens (:mod:`.frame_attention`), PyTorch's memory-efficient one first for the rest and without Triton);
  ``temporal_attention``: the same for the transformers that attend over the frames of each pixel (16-token
  sequences);
* ``cudnn_benchmark``: cuDNN autotuning on (True) or off (False), a process-wide switch (None: left as it is). It
  tunes every new convolution shape at its first call in each process; the compiled presets leave it off;
* ``quick_placement``: a model's ``.dtype`` and ``.device`` read off its first parameter (:func:`quick_placement`):
  diffusers' properties first walk every submodule for offloading and casting hooks, and the AnimateDiff and
  ModelScope UNets read ``self.dtype`` in every forward;
* ``compile``: ``"blocks"`` is regional compilation (diffusers' advice for short cold starts): every ResNet,
  transformer, temporal and resampling block is compiled on its own, and blocks of one class with the same shapes
  share one compiled graph, also across experts; ``"full"`` compiles each model's forward whole (more fusion, a
  much longer cold start). Shapes are static (``dynamic=False``): a new batch or resolution compiles again. Under
  compilation the fused norm hands inductor the plain ops, which it fuses itself. :func:`save_compile_cache` and
  :func:`load_compile_cache` carry the compiled artifacts to another process or machine; with ``compile_dir`` the
  blocks are compiled ahead of time and kept in that folder, and a later process loads them without tracing
  (:mod:`.precompiled`);
* ``cuda_graphs``: each network's forward captured once per input shape and replayed (:mod:`.cuda_graphs`);
* ``step_cache``: First-Block-Cache threshold for the refinement experts of flow transformers (Wan), 0 = off
  (:mod:`.step_cache`; applied by :func:`~.families.registry.load_experts`).

Presets: ``eager`` (nothing), ``lean`` (everything that needs no compiler: starts in seconds), ``fast`` (lean +
regional compile), ``max`` (fast + CUDA graphs).
"""

from __future__ import annotations

import contextlib
import functools
import os
import types
from dataclasses import dataclass, replace

import torch

from . import fused_norm as FN
from . import flash4_attention as F4
from . import frame_attention as FA
from .folded_upsample import fold_upsamplers
from .fused_geglu import fuse_geglu
from .cuda_graphs import GraphPool, graph_forwards
from .experts import placement
from .precompiled import PrecompiledForward, Store, aot_available, keep_kernels_in

#: diffusers block classes compiled one by one under ``compile="blocks"``
BLOCK_CLASSES = ("ResnetBlock2D", "Transformer2DModel", "TransformerTemporalModel", "TemporalConvLayer",
                 "AnimateDiffTransformer3D", "Downsample2D", "Upsample2D", "UNetMidBlock2D",
                 "WanTransformerBlock", "QwenImageTransformerBlock", "FluxTransformerBlock",
                 "FluxSingleTransformerBlock")
COMPILE_SCOPES = ("none", "blocks", "full")
#: networks whose forward is a pure function of its tensor inputs, so CUDA graphs may replay it: the UNets, the
#: image VAE's decoder and the CLIP text encoders (a few hundred launches for a few ms of GPU work) -- not the Wan
#: VAE, whose causal decoder carries a feature cache from call to call, nor transformers, whose forwards are long
#: enough that launches do not matter and whose step cache syncs
GRAPHABLE = ("UNet2DConditionModel", "UNetMotionModel", "UNet3DConditionModel", "Decoder", "CLIPTextModel",
             "CLIPTextModelWithProjection")
#: of those, networks called once a generation: captured at their first call (the capture's own run on a side
#: stream is their warm-up), not their second. Captured in the second generation, the text encoders made it 1.0-1.4
#: s slower in a process that had compiled its blocks (H200, cProfile: PyTorch's scaled_dot_product_attention, 19 ms
#: a call inside the capture), where the first generation already pays for compilation or loading
CAPTURED_AT_FIRST_CALL = ("CLIPTextModel", "CLIPTextModelWithProjection")
ATTENTION_BACKENDS = ("default", "cudnn", "flash", "efficient", "math", "flash4", "fastest", "frames")


@dataclass(frozen=True)
class SpeedSettings:
    channels_last: bool = False
    channels_last_3d: bool = False
    cudnn_benchmark: bool | None = None
    quick_placement: bool = False
    fused_norm: bool = False
    fused_geglu: bool = False
    fuse_qkv: bool = False
    fold_upsample: bool = False
    attention: str = "default"
    # the attention backend inside TEMPORAL_TRANSFORMERS (attention over the frames of each pixel); None: no
    # backend of their own. On an H200 the 16-frame attention of AnimateDiff's top-level motion modules takes
    # 0.33 ms in the frame kernel, 0.73 ms in PyTorch's memory-efficient kernel and 1.08 ms in cuDNN's
    # (bench/RESULTS.md, "Attention backends"), while cuDNN's or flash-attn-4's is the fastest on the spatial shapes
    temporal_attention: str | None = None
    compile: str = "none"
    compile_mode: str | None = None  # torch.compile's mode, e.g. "max-autotune-no-cudagraphs"
    # "blocks" compiled ahead of time and kept here (:mod:`.precompiled`), inductor's cache in compile_dir/inductor
    # (set in the process's environment: :func:`.precompiled.keep_kernels_in`)
    compile_dir: str | None = None
    backend: str = "inductor"
    cuda_graphs: bool = False
    step_cache: float = 0.0

    def __post_init__(self):
        if self.compile not in COMPILE_SCOPES:
            raise ValueError(f"compile={self.compile!r}: choose one of {COMPILE_SCOPES}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention={self.attention!r}: choose one of {ATTENTION_BACKENDS}")
        if self.temporal_attention is not None and self.temporal_attention not in ATTENTION_BACKENDS:
            raise ValueError(f"temporal_attention={self.temporal_attention!r}: None or one of {ATTENTION_BACKENDS}")
        if not self.step_cache >= 0:
            raise ValueError(f"step_cache={self.step_cache!r}: a threshold >= 0 (0 = off)")

    def describe(self) -> str:
        parts = [name for name, on in (("channels_last", self.channels_last),
                                       ("channels_last_3d", self.channels_last_3d),
                                       ("cudnn.benchmark", self.cudnn_benchmark),
                                       ("no cudnn.benchmark", self.cudnn_benchmark is False),
                                       ("quick placement", self.quick_placement),
                                       ("fused GroupNorm+SiLU", self.fused_norm),
                                       ("fused GEGLU", self.fused_geglu),
                                       ("fused QKV", self.fuse_qkv),
                                       ("folded upsampling", self.fold_upsample)) if on]
        if self.attention != "default":
            parts.append(f"attention {self.attention}")
        if self.temporal_attention not in (None, self.attention):
            parts.append(f"{self.temporal_attention} attention over frames")
        if self.compile != "none":
            parts.append(f"torch.compile ({self.compile}{', ' + self.compile_mode if self.compile_mode else ''}"
                         f"{', kept on disk' if self.compile_dir and self.compile == 'blocks' else ''})")
        if self.cuda_graphs:
            parts.append("CUDA graphs")
        if self.step_cache:
            parts.append(f"step cache {self.step_cache:g}")
        return " + ".join(parts) or "eager"


EAGER = SpeedSettings()
LEAN = SpeedSettings(channels_last=True, channels_last_3d=True, cudnn_benchmark=True, quick_placement=True,
                     fused_norm=True, fused_geglu=True, fuse_qkv=True, fold_upsample=True, attention="fastest",
                     temporal_attention="frames")
# Compiled, without cuDNN's autotuning: on the H200 a warm start's first calls of the kept blocks took 3.2 s
# without it against 7.0 s with it (the whole warm start 32.6 against 40.0 s), and the next run 1.587 against 1.611 s
FAST = replace(LEAN, compile="blocks", cudnn_benchmark=False)
MAX = replace(FAST, cuda_graphs=True)
PRESETS = {"eager": EAGER, "lean": LEAN, "fast": FAST, "max": MAX}  # by name, as the command line takes them


# --------------------------------------------------------------------------------------------- placement

def _rebuild_module(cls: type, state: dict) -> torch.nn.Module:
    """A module of ``cls`` with ``state`` (its ``__dict__``): how a model given :func:`quick_placement` pickles."""
    module = cls.__new__(cls)
    module.__setstate__(state)
    return module


@functools.lru_cache(maxsize=None)
def _quick_placement_class(cls: type) -> type:
    """``cls`` with ``dtype`` and ``device`` read as :func:`~.experts.placement` reads them; same name, so
    nothing that goes by the class name (configs, CUDA graphs, compile keys) tells the two apart. A copy or a
    pickle of the model is of ``cls`` itself (this class exists only in the process that made it)."""

    def __reduce_ex__(self, protocol):
        return _rebuild_module, (cls, self.__getstate__())

    return type(cls.__name__, (cls,), {
        "dtype": property(lambda self: placement(self)[1], doc="The first floating parameter's dtype."),
        "device": property(lambda self: placement(self)[0], doc="The first parameter's device."),
        "__reduce_ex__": __reduce_ex__, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__, "_quick_placement": True})


def quick_placement(module: torch.nn.Module) -> int:
    """Give a diffusers model ``.dtype`` / ``.device`` properties that read its first parameter, as its own do
    when no offloading or layerwise-casting hook is attached (then they are left alone; attach such hooks before
    speed settings, which do not look again). Diffusers walks every submodule for such hooks first: 6.6 / 8.0 ms per
    forward of AnimateDiff's / ModelScope's UNet on a 2-core CPU, whose forwards read ``self.dtype``. Returns 1 when
    the class was replaced."""
    from diffusers import ModelMixin
    if not isinstance(module, ModelMixin) or getattr(type(module), "_quick_placement", False):
        return 0
    if any(hasattr(m, "_diffusers_hook") for m in module.modules()):
        return 0
    module.__class__ = _quick_placement_class(type(module))
    return 1


# ----------------------------------------------------------------------------------------------- layouts

def to_channels_last(module: torch.nn.Module, conv3d: bool = False) -> int:
    """Every 4-D weight (2-D convolutions) in channels_last, and with ``conv3d`` every 5-D one (3-D convolutions)
    in channels_last_3d; cuDNN then picks NHWC / NDHWC kernels, and activations follow. Returns the count."""
    n = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
            n += 1
        elif t.dim() == 5 and conv3d:
            t.data = t.data.contiguous(memory_format=torch.channels_last_3d)
            n += 1
    return n


#: diffusers' temporal transformers ([B*F, C, H, W] in and out, attention over frames): ModelScope's and AnimateDiff's
TEMPORAL_TRANSFORMERS = ("TransformerTemporalModel", "AnimateDiffTransformer3D")


def temporal_transformer_forward(self, hidden_states: torch.Tensor, encoder_hidden_states=None, timestep=None,
                                 class_labels=None, num_frames: int = 1, cross_attention_kwargs=None,
                                 return_dict: bool = True):
    """``forward`` of diffusers' ``TransformerTemporalModel`` and ``AnimateDiffTransformer3D`` (the same maths), with
    its output in its input's layout. diffusers writes the output NCHW-contiguous whatever the input, so behind a
    channels_last input the residual add mixes layouts (PyTorch's slow strided kernel) and every block after it,
    up to the next convolution, works on NCHW or mixed tensors (found by ``bench/layout_audit.py``). Here a
    channels_last input gives a channels_last output, from the same one copy; any other input gives diffusers'
    layout. On the H200 this cut a ``lean`` ConFiner run's kernel time from 1.94 to 1.86 s (strided adds 0.202 ->
    0.136 s, layout copies 0.132 -> 0.062 s) and its wall time from 2.26 to 1.99 s."""
    batch_frames, channel, height, width = hidden_states.shape
    batch_size = batch_frames // num_frames
    residual = hidden_states
    hidden_states = hidden_states.reshape(batch_size, num_frames, channel, height, width).permute(0, 2, 1, 3, 4)
    hidden_states = self.norm(hidden_states)
    # contiguous: behind a channels_last input (the fused norm keeps it) a single sample's reshape is a strided view,
    # and a linear layer over a strided 3-D input whose weight needs no gradient runs as a batched multiply of
    # [frames, C] tiles with the weight broadcast (PyTorch's matmul and inductor's both refuse to fold it into one
    # matrix without a copy): 0.136 against 0.031 ms at AnimateDiff's [1024, 16, 640] on the H200 (call AY's
    # autotuning). Two or more samples are copied by the reshape already; so is every input where it is not needed.
    hidden_states = hidden_states.permute(0, 3, 4, 2, 1).reshape(batch_size * height * width, num_frames, channel)
    hidden_states = self.proj_in(hidden_states.contiguous())
    for block in self.transformer_blocks:
        hidden_states = block(hidden_states, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                              cross_attention_kwargs=cross_attention_kwargs, class_labels=class_labels)
    hidden_states = self.proj_out(hidden_states).reshape(batch_size, height, width, num_frames, channel)
    if channel > 1 and residual.is_contiguous(memory_format=torch.channels_last):
        # [B, H, W, F, C] -> [B, F, H, W, C] in memory, which is [B*F, C, H, W] in channels_last
        hidden_states = hidden_states.permute(0, 3, 1, 2, 4).contiguous()
        hidden_states = hidden_states.reshape(batch_frames, height, width, channel).permute(0, 3, 1, 2)
    else:
        hidden_states = hidden_states.permute(0, 3, 4, 1, 2).contiguous().reshape(batch_frames, channel, height, width)
    output = hidden_states + residual
    if type(self).__name__ == "AnimateDiffTransformer3D":
        return output
    if not return_dict:
        return (output,)
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput
    return TransformerTemporalModelOutput(sample=output)


def keep_temporal_layouts(module: torch.nn.Module) -> int:
    """Give every temporal transformer of ``module`` :func:`temporal_transformer_forward`; returns how many. A forward
    already replaced (by this, or wrapped by an attention context or compiled when settings are applied on top of
    earlier ones) is left as it is: it already runs :func:`temporal_transformer_forward` inside."""
    done = 0
    for m in module.modules():
        if (type(m).__name__ in TEMPORAL_TRANSFORMERS and "forward" not in vars(m)
                and all(hasattr(m, a) for a in ("norm", "proj_in", "proj_out", "transformer_blocks"))):
            m.forward = types.MethodType(temporal_transformer_forward, m)
            done += 1
    return done


def fuse_qkv(module: torch.nn.Module) -> int:
    """diffusers' ``fuse_qkv_projections`` where the model has it (UNets); returns 1 if fused."""
    fuse = getattr(module, "fuse_qkv_projections", None)
    if fuse is None:
        return 0
    try:
        fuse()
    except ValueError:  # e.g. models with added KV projections
        return 0
    return 1


# --------------------------------------------------------------------------------------------- attention

_SDPA = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


def sdpa_order(first: str) -> list:
    """PyTorch SDPA backends, ``first`` first and the others as fallbacks (math last)."""
    from torch.nn.attention import SDPBackend

    names = [first] + [n for n in ("cudnn", "flash", "efficient", "math") if n != first]
    return [getattr(SDPBackend, _SDPA[n]) for n in names]


@contextlib.contextmanager
def routed_sdpa(route, fallback):
    """``torch.nn.functional.scaled_dot_product_attention`` routed through ``route`` (a drop-in that takes the calls
    its kernel covers: :func:`~.flash4_attention.long_flash4_sdpa`, :func:`~.frame_attention.frame_sdpa`) for the
    duration, inside ``fallback`` (the SDPA backends for the calls it leaves to PyTorch); ``route`` None: ``fallback``
    alone. diffusers' processors and its "native" dispatch look the function up at every call. One function object
    per route, so a compiled block traced under it does not recompile. The swap is global: one thread at a time (as
    ComfyUI and the library run the networks)."""
    functional = torch.nn.functional
    with fallback:
        if route is None or functional.scaled_dot_product_attention is route:
            yield
            return
        previous = functional.scaled_dot_product_attention
        functional.scaled_dot_product_attention = route
        try:
            yield
        finally:
            functional.scaled_dot_product_attention = previous


def attention_context(name: str):
    """The context under which a network runs for attention backend ``name``."""
    if name == "default":
        return contextlib.nullcontext()
    if name in ("flash4", "fastest"):  # FA4 (everywhere it applies, or where it is the fastest), cuDNN first elsewhere
        route = (F4.flash4_sdpa if name == "flash4" else F4.long_flash4_sdpa) if F4.usable() else None
        return routed_sdpa(route, attention_context("cudnn"))
    if name == "frames":  # PyTorch's memory-efficient kernel, the fastest of its own over frames, where it falls back
        return routed_sdpa(FA.frame_sdpa if FA.registered_op() is not None else None,
                           attention_context("efficient"))
    from torch.nn.attention import sdpa_kernel

    try:
        return sdpa_kernel(sdpa_order(name), set_priority=True)
    except TypeError:  # PyTorch before set_priority: the chosen backend with math as the fallback
        return sdpa_kernel(sdpa_order(name)[:1] + sdpa_order(name)[-1:])


class WithAttention:
    """``module.forward`` run inside :func:`attention_context` (kept as an object so it can be re-set)."""

    def __init__(self, forward, name: str):
        self.forward, self.name = forward, name

    def __call__(self, *args, **kwargs):
        with attention_context(self.name):
            return self.forward(*args, **kwargs)


def set_attention(module: torch.nn.Module, name: str) -> None:
    if name == "frames":
        FA.registered_op()   # now, before a forward traces or a kept block that calls it loads
    forward = module.forward
    if isinstance(forward, WithAttention):
        forward.name = name
    elif name != "default":
        module.forward = WithAttention(forward, name)


# ---------------------------------------------------------------------------------------------- compile

def compile_forward(module: torch.nn.Module, settings: SpeedSettings, store: Store | None = None) -> bool:
    """Replace ``module.forward`` by its compiled version (served from ``store``'s kept graphs where given); False
    when it already was (settings applied on top of earlier ones compile nothing twice). Hooks stay outside the graph
    (they run around ``forward``), every instance of a class shares the compiled code of ``Class.forward``, and an
    attention setting's context (:class:`WithAttention`) stays outside too, so it is in force when the graph is
    traced: the kernel it picks is compiled in."""
    if getattr(module, "_confiner_compiled", False) or isinstance(module.forward, PrecompiledForward):
        return False

    def compiled(forward):
        if store is not None:
            return PrecompiledForward(module, store, forward)
        return torch.compile(forward, dynamic=False, mode=settings.compile_mode, backend=settings.backend)

    if isinstance(module.forward, WithAttention):
        module.forward.forward = compiled(module.forward.forward)
    else:
        module.forward = compiled(module.forward)
    module._confiner_compiled = True
    return True


def compile_blocks(module: torch.nn.Module, settings: SpeedSettings, classes=BLOCK_CLASSES, store=None) -> int:
    """Compile each block of ``classes`` inside ``module`` (not descending into one); returns how many were compiled
    now (a block compiled by earlier settings is not compiled again).
    With a :class:`~.precompiled.Store` the blocks' compiled graphs come from (and go to) its folder."""
    if type(module).__name__ in classes:
        return int(compile_forward(module, settings, store))
    return sum(compile_blocks(child, settings, classes, store) for child in module.children())


@functools.lru_cache(maxsize=None)
def block_store(folder: str, mode: str | None, backend: str) -> Store:
    """One :class:`~.precompiled.Store` per folder and compiler settings in a process, shared by every expert."""
    return Store(folder, mode, backend)


def settings_store(settings: SpeedSettings) -> Store:
    """The :func:`block_store` of ``settings``' ``compile_dir``: where its blocks are kept, and what a run did there."""
    return block_store(os.path.abspath(settings.compile_dir), settings.compile_mode, settings.backend)


def allow_recompiles(limit: int = 1024) -> None:
    """Blocks of one class at many shapes (every resolution, batch and channel count) are separate cache entries
    of one code object: raise dynamo's per-code limit above its default (8) so none falls back to eager."""
    import torch._dynamo.config as dynamo_config

    for name, value in (("recompile_limit", limit), ("cache_size_limit", limit),
                        ("accumulated_recompile_limit", 8 * limit), ("accumulated_cache_size_limit", 8 * limit)):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, value)


def save_compile_cache(path: str) -> dict:
    """Write this process's compiled artifacts (inductor, AOTAutograd, autotuning and Triton kernels: PyTorch's
    ``torch.compiler.save_cache_artifacts``) to ``path``, atomically. Another process that loads them with
    :func:`load_compile_cache` before its first compile skips inductor's code generation and autotuning."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return {"path": path, "bytes": 0}
    data, _info = artifacts
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return {"path": path, "bytes": len(data)}


def load_compile_cache(path: str) -> bool:
    """Load artifacts written by :func:`save_compile_cache` into inductor's current cache folder; False when the file
    is absent. With ``compile_dir`` call it after :func:`~.precompiled.keep_kernels_in` (settings applied), which
    moves that folder."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        torch.compiler.load_cache_artifacts(f.read())
    return True


# ------------------------------------------------------------------------------------------------ apply

def apply_speed_settings(modules, settings: SpeedSettings, graph_pool: GraphPool | None = None) -> dict:
    """Apply ``settings`` in place to ``modules`` (UNets, transformers, a VAE decoder...), in this order: fused
    norms and GEGLUs, layouts, fused QKV, folded upsampling, compilation, attention backend, CUDA graphs
    (outermost). Settings can be applied on top of earlier ones (eager -> lean -> fast -> max), never taken back,
    except the process-wide cuDNN autotuning switch, which the last settings that name it set. ``step_cache`` is not applied here (it belongs to
    experts: :func:`~.step_cache.attach_step_cache`). Returns what was done."""
    done = {"settings": settings.describe(), "channels_last_tensors": 0, "compiled": 0, "fused_norms": 0,
            "fused_geglu": 0, "temporal_layouts": 0, "fused_qkv": 0, "folded_upsamplers": 0, "quick_placement": 0,
            "temporal_attention": 0, "graphed": 0}
    if settings.cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    if settings.compile == "blocks":
        allow_recompiles()
    modules = list(modules)
    for m in modules:
        if settings.quick_placement:
            done["quick_placement"] += quick_placement(m)
        if settings.fused_norm:
            done["fused_norms"] += sum(FN.fuse_group_norms(m).values())
        if settings.fused_geglu:
            done["fused_geglu"] += fuse_geglu(m)
        if settings.channels_last:
            done["channels_last_tensors"] += to_channels_last(m, conv3d=settings.channels_last_3d)
            done["temporal_layouts"] += keep_temporal_layouts(m)
        if settings.fuse_qkv:
            done["fused_qkv"] += fuse_qkv(m)
        if settings.fold_upsample:
            done["folded_upsamplers"] += fold_upsamplers(m)
        if settings.compile == "blocks":
            store = None
            if settings.compile_dir:
                kernels = keep_kernels_in(settings.compile_dir)  # also for blocks compiled the ordinary way
                if aot_available():
                    store = done["block_store"] = settings_store(settings)
                    store.kernels = kernels
            done["compiled"] += compile_blocks(m, settings, store=store)
        elif settings.compile == "full":
            done["compiled"] += compile_forward(m, settings)
        set_attention(m, settings.attention)
        if settings.temporal_attention not in (None, settings.attention):
            for sub in m.modules():
                if type(sub).__name__ in TEMPORAL_TRANSFORMERS:
                    set_attention(sub, settings.temporal_attention)
                    done["temporal_attention"] += 1
    if settings.cuda_graphs:
        graphable = [m for m in modules if type(m).__name__ in GRAPHABLE]
        done["graph_pool"] = graph_forwards(graphable, graph_pool, first_call=CAPTURED_AT_FIRST_CALL)
        done["graphed"] = len(graphable)
    return done
