"""Regional compilation kept on disk: each block's compiled graph saved ahead of time and loaded by later processes.

Regional compilation (``compile="blocks"``) compiles every block class at every input shape on its first call. With
PyTorch's portable caches (:func:`~.speed.save_compile_cache`) a second process skips inductor's code generation but
still traces every block again: on an H200 that was 36.9 s of a 52.3 s warm start for 67 graphs. Here each graph is
compiled with ``torch.compile(...).aot_compile`` instead and saved in a folder; a process that finds the file loads
the compiled function and calls it, without tracing. A GPU block's file carries its Triton kernels; C++ kernels (CPU)
stay in inductor's cache folder, which :func:`keep_kernels_in` puts inside the same folder. H200 (68 blocks, empty
inductor/Triton folders): a second process started in 28.3-38.6 s against 52.3 s from the portable cache alone;
2-core CPU (tiny experts, 32 blocks): 6.3-7.1 s for the first run of a second process against 19.3 s.

An artifact is kept only with PyTorch's portable guards (tensor metadata and global state:
``torch.compiler.keep_portable_guards_unsafe``), so everything else the graph was traced against is part of its key:
the block's class and the classes, plain attributes (head counts, scales, flags) and replaced methods of each of its
submodules, its weights' shapes, strides, dtypes and devices, the call's arguments, grad mode, the attention
backends allowed and their priority order, the GroupNorm kernels chosen (:func:`.fused_norm.compiled_norms`), the
PyTorch, Triton and device versions, and the code traced besides PyTorch's (:func:`code_key`: this package's source
and diffusers' version; a kept block is a trace, so after an upgrade it is compiled again rather than run as the old
code, as a test of call BY found it was). Blocks of one class and structure share one artifact,
also across experts, as they share one graph under regional compilation. A block whose graph cannot be captured whole
or saved (a graph break, a guard PyTorch cannot serialise) is compiled the ordinary way for that signature and said so
in :attr:`Store.fallbacks`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
import types

import torch
from torch.utils._pytree import tree_flatten

from .. import source_digest
from . import fused_norm as FN

PLAIN = (bool, int, float, str, type(None))
SUFFIX = ".pt"  # a compiled block's file: <key>.pt


def aot_available() -> bool:
    """Whether this PyTorch has ahead-of-time compilation of a function to a file (2.9 and later)."""
    return hasattr(torch.compiler, "load_compiled_function") and \
        hasattr(torch.compiler, "keep_portable_guards_unsafe") and hasattr(torch._dynamo.config, "enable_aot_compile")


def aot_enabled():
    """Dynamo's switch for ahead-of-time compilation, on for the ``with`` block: off by default before PyTorch 2.13
    (``torch.compile(...)`` then has no ``aot_compile``)."""
    return torch._dynamo.config.patch(enable_aot_compile=True)


#: flash-attn-4's switch and folder for its kernels kept on disk, read when ``flash_attn.cute`` is first imported
FLASH4_CACHE_ENABLED, FLASH4_CACHE_DIR = "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"


def keep_flash4_kernels_in(folder: str) -> str | None:
    """Keep flash-attn-4's kernels in ``folder``/flash4, unless the user set either of its cache variables (then
    they are left alone). FA4 JIT-compiles every kernel variant it runs in each new process; kept on disk, a later
    process loads them instead. The package reads the variables when it is first imported (this module never imports
    it), so this takes effect where no attention ran through FA4 yet in this process. Returns the folder, or None."""
    if FLASH4_CACHE_ENABLED in os.environ or FLASH4_CACHE_DIR in os.environ:
        return None
    target = os.path.join(os.path.abspath(folder), "flash4")
    os.environ[FLASH4_CACHE_ENABLED], os.environ[FLASH4_CACHE_DIR] = "1", target
    return target


def keep_kernels_in(folder: str) -> str | None:
    """Point inductor's cache (its compiled graphs and C++ kernels) at ``folder``/inductor and Triton's at
    ``folder``/inductor/triton, unless ``TORCHINDUCTOR_CACHE_DIR`` chose another place (then both are left alone);
    flash-attn-4's kernels go to ``folder``/flash4 (:func:`keep_flash4_kernels_in`).
    A block read from the folder then finds what its file does not carry beside it (a GPU block's file carries its
    Triton kernels; the CPU's C++ kernels stay in inductor's cache), also after a reboot, instead of compiling it all
    again. Changes the process's environment: inductor's compile workers take both variables with every job.
    Returns the folder now used, None when the user's is kept."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    from torch._inductor.utils import clear_caches

    keep_flash4_kernels_in(folder)

    default = os.path.abspath(default_cache_dir())
    target = os.path.join(os.path.abspath(folder), "inductor")
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is not None and os.path.abspath(current) == target:
        return target
    if current is not None and os.path.abspath(current) != default:
        return None
    triton = os.environ.get("TRITON_CACHE_DIR")
    if triton is None or os.path.abspath(triton).startswith(default + os.sep):  # not the user's: derived from
        os.environ["TRITON_CACHE_DIR"] = os.path.join(target, "triton")          # the default by an earlier compile
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = target
    clear_caches()  # paths inductor derived from the old folder
    return target


def _describe(value) -> str:
    """A value as part of a key: plain values by ``repr``, functions and methods by their qualified name, anything
    else by its class (what a traced graph may depend on without a tensor guard)."""
    if isinstance(value, PLAIN):
        return repr(value)
    if isinstance(value, (tuple, list)) and all(isinstance(v, PLAIN) for v in value):
        return repr(tuple(value))
    if isinstance(value, functools.partial):
        return f"partial({_describe(value.func)}, {[_describe(v) for v in value.args]}, " \
               f"{sorted((k, _describe(v)) for k, v in value.keywords.items())})"
    if isinstance(value, types.MethodType):
        value = value.__func__
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        return f"fn:{value.__module__}.{value.__qualname__}"
    return f"obj:{type(value).__module__}.{type(value).__qualname__}"


def structure_key(module: torch.nn.Module, forward) -> str:
    """Everything about ``module`` its compiled graph was traced against besides the weights' values, ``forward``
    being the function compiled. The module's own ``forward`` attribute is left out: settings applied on top of
    earlier ones find there the wrapper an attention setting put around the same function."""
    parts = [("forward", _describe(forward))]
    for name, m in module.named_modules():
        attrs = sorted((k, _describe(v)) for k, v in vars(m).items()
                       if k not in ("_parameters", "_buffers", "_modules") and not k.endswith("hooks")
                       and not isinstance(v, torch.Tensor) and not k.startswith("_forward") and k != "training"
                       and not (m is module and k == "forward"))
        parts.append((name, f"{type(m).__module__}.{type(m).__qualname__}", m.training, tuple(attrs)))
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        parts.append((name, tuple(t.shape), t.stride(), str(t.dtype), t.device.type, t.requires_grad))
    return repr(parts)


def call_key(args: tuple, kwargs: dict) -> str:
    """A call's arguments as the compiled graph sees them: tensors by metadata, other values as :func:`_describe`."""
    leaves, spec = tree_flatten((args, kwargs))
    parts = [str(spec), torch.is_grad_enabled(), torch.is_inference_mode_enabled(), attention_backends(),
             FN.compiled_norms()]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append((tuple(leaf.shape), leaf.stride(), str(leaf.dtype), str(leaf.device), leaf.requires_grad))
        else:
            parts.append(_describe(leaf))
    return repr(parts)


class _Unhashable(Exception):
    pass


def _leaf(value):
    """One argument for :func:`call_signature`: tensors by metadata, plain values as they are, containers element by
    element; anything else raises :class:`_Unhashable` (the full :func:`call_key` then decides)."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.stride(), value.dtype, value.device, value.requires_grad)
    if isinstance(value, float):
        return (float, repr(value))  # as the key writes it: -0.0 and 0.0 apart, nan equal to itself
    if isinstance(value, PLAIN):
        return (type(value), value)
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_leaf(v) for v in value))
    if isinstance(value, dict):
        return (dict, tuple((k, _leaf(v)) for k, v in value.items()))
    raise _Unhashable


def call_signature(args: tuple, kwargs: dict):
    """What :func:`call_key` says of a call, as a cheap hashable tuple (every block call looks its artifact up by
    it: the store's own time per block call fell from 57-74 to 26-30 us on this CPU, against 115-121 us for the
    compiled function itself; ``bench/block_call_overhead.py``); None for arguments it does not describe (the text key
    is computed then)."""
    try:
        return (_leaf(args), _leaf(kwargs), torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                attention_backends(), FN.compiled_norms())
    except _Unhashable:
        return None


def attention_backends() -> tuple:
    """The scaled-dot-product-attention backends allowed now and their order (the attention speed setting's
    context: ``sdpa_kernel(..., set_priority=True)`` enables them all and orders them), and the function
    ``scaled_dot_product_attention`` names now: a compiled graph's choice of kernel depends on them."""
    b = torch.backends.cuda
    order = getattr(torch._C, "_get_sdp_priority_order", lambda: ())()
    sdpa = torch.nn.functional.scaled_dot_product_attention   # another function where a context routes it (flash4,
    routed = f"{sdpa.__module__}.{sdpa.__qualname__}"           # frames): the graph calls that one's kernels
    return (b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled(),
            getattr(b, "cudnn_sdp_enabled", lambda: None)(), tuple(order), routed)


@functools.lru_cache(maxsize=None)
def code_key() -> str:
    """The code a kept block traced besides PyTorch's: this package's source (the forwards the speed settings put in,
    the fused kernels, the attention routes) and diffusers' version (its blocks' forwards). A block's key holds it, so
    a changed library or diffusers compiles its blocks again: its key held neither, and a block kept before a change
    ran the code from before it (call BY: the temporal transformers' new forward loaded the old one's blocks)."""
    import diffusers

    return repr((diffusers.__version__, source_digest(os.path.dirname(os.path.abspath(__file__)))))


@functools.lru_cache(maxsize=None)
def system_key() -> str:
    """The versions an artifact's code depends on: PyTorch, Triton, the GPU, and the traced code (:func:`code_key`)."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return repr((torch.__version__, triton_version, device, code_key()))


# inductor's compile_threads while a kept block loads (None: inductor's own setting, a pool of compile workers)
LOAD_COMPILE_THREADS: int | None = 1


class Store:
    """A folder of compiled blocks (one file per block structure and call signature) and what this process did
    with it: ``compiled`` (traced, compiled and saved), ``loaded`` (read from the folder), ``fallbacks``."""

    def __init__(self, folder: str, mode: str | None = None, backend: str = "inductor"):
        self.folder, self.mode, self.backend = folder, mode, backend
        self.kernels: str | None = None  # inductor's cache folder when kept inside this one (keep_kernels_in)
        self.functions: dict = {}  # key -> compiled function, or None where the block compiles the ordinary way
        self.compiled = self.loaded = 0
        self.fallbacks: list[str] = []
        self.unloadable: list[str] = []  # artifacts found but not loadable (another PyTorch, a broken file)
        # host seconds reading artifacts, and in the first call of each function (where a loaded one's kernels are
        # loaded, or compiled when no cache has them): what a warm start spends here rather than elsewhere
        self.load_s = self.first_calls_s = 0.0
        self.first_called: set = set()  # keys whose function has been called once

    def summary(self) -> dict:
        return {"folder": self.folder, "kernels": self.kernels, "compiled": self.compiled, "loaded": self.loaded,
                "load_s": round(self.load_s, 3), "first_calls_s": round(self.first_calls_s, 3),
                "fallbacks": list(self.fallbacks), "unloadable": list(self.unloadable)}

    def path(self, key: str) -> str:
        return os.path.join(self.folder, f"{key}{SUFFIX}")

    def key(self, structure: str, call: str) -> str:
        tag = repr((structure, call, system_key(), self.mode, self.backend))
        return hashlib.sha256(tag.encode()).hexdigest()[:32]

    def _options(self) -> dict:
        options = dict(torch._inductor.list_mode_options(self.mode)) if self.mode else {}
        options["guard_filter_fn"] = torch.compiler.keep_portable_guards_unsafe
        return options

    def function(self, key: str, forward, module: torch.nn.Module, args: tuple, kwargs: dict):
        """The compiled function for ``key`` (called as ``fn(module, *args, **kwargs)``): in memory, else from the
        folder, else compiled now from ``forward`` and saved; None when it cannot be compiled ahead of time."""
        if key in self.functions:
            return self.functions[key]
        fn = None
        path = self.path(key)
        if os.path.isfile(path):
            t0 = time.perf_counter()
            try:
                # its kernels are in the cache it was compiled into: read in this process rather than handed to
                # inductor's pool of compile workers (LOAD_COMPILE_THREADS; bench/RESULTS.md, "Starts")
                threads = {} if LOAD_COMPILE_THREADS is None else {"compile_threads": LOAD_COMPILE_THREADS}
                with open(path, "rb") as f, aot_enabled(), torch._inductor.config.patch(**threads):
                    fn = torch.compiler.load_compiled_function(f)
                self.loaded += 1
                self.load_s += time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 - a stale or foreign artifact is compiled again and overwritten
                self.unloadable.append(f"{os.path.basename(path)}: {type(e).__name__}: {e}"[:300])
        if fn is None:
            fn = self._compile(forward, module, args, kwargs, path)
        self.functions[key] = fn
        return fn

    def _compile(self, forward, module, args, kwargs, path: str):
        served = module.forward
        module.forward = forward  # what the artifact holds: the block's own forward, not this module's wrapper
        try:
            if not (isinstance(forward, types.MethodType) and forward.__self__ is module):
                raise TypeError(f"its forward is a {type(forward).__name__}, not a method of the block")
            # the function, with the block as its first argument: saved by its importable name, not as a method
            # looked up on the block
            with aot_enabled():
                fn = torch.compile(forward.__func__, fullgraph=True, dynamic=False, backend=self.backend,
                                   options=self._options()).aot_compile(((module, *args), kwargs))
            os.makedirs(self.folder, exist_ok=True)
            # whole or not at all (not every PyTorch writes it atomically): an interrupted save leaves no torn file
            tmp = f"{path}.{os.getpid()}.tmp"
            try:
                fn.save_compiled_function(tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            self.compiled += 1
            return fn
        except Exception as e:  # noqa: BLE001 - compiled the ordinary way instead (PrecompiledForward), and said so
            self.fallbacks.append(f"{type(module).__name__}: {type(e).__name__}: {e}"[:300])
            return None
        finally:
            module.forward = served


def kept_blocks(folder: str) -> int:
    """How many compiled blocks ``folder`` holds (0 when it does not exist)."""
    return sum(name.endswith(SUFFIX) for name in os.listdir(folder)) if os.path.isdir(folder) else 0


def name_instance_methods(module: torch.nn.Module) -> None:
    """PyTorch saves a method it inlined as its name, to look up on the object when the artifact is loaded; a method
    a speed setting put on one instance (``block.forward = types.MethodType(fused_resnet_forward, block)``) is then
    also made findable under that name on the instance's class (a new name: nothing of the class changes)."""
    for m in module.modules():
        for value in vars(m).values():
            name_method(value)


def name_method(value) -> None:
    """One method of :func:`name_instance_methods`: a method bound to a module, made findable on its class."""
    if (isinstance(value, types.MethodType) and isinstance(value.__self__, torch.nn.Module)
            and not hasattr(type(value.__self__), value.__name__)):
        setattr(type(value.__self__), value.__name__, value.__func__)


class PrecompiledForward:
    """``module.forward`` served by the :class:`Store`'s compiled function for its call signature, or compiled the
    ordinary way (per instance) where the store has none."""

    def __init__(self, module: torch.nn.Module, store: Store, forward=None):
        self.module, self.store = module, store
        # what the artifact compiles: the class's forward or a speed setting's
        self.forward = module.forward if forward is None else forward
        self.structure = structure_key(module, self.forward)
        name_instance_methods(module)  # before any artifact is loaded
        # and the forward compiled, also where the module no longer holds it itself (settings applied on top of
        # earlier ones: inside the attention wrapper an earlier setting put around it)
        name_method(self.forward)
        self.keys: dict = {}  # call_signature -> store key
        self.fallback = None

    def __call__(self, *args, **kwargs):
        signature = call_signature(args, kwargs)
        key = self.keys.get(signature) if signature is not None else None
        if key is None:
            key = self.store.key(self.structure, call_key(args, kwargs))
            if signature is not None:
                self.keys[signature] = key
        fn = self.store.function(key, self.forward, self.module, args, kwargs)
        if fn is not None:
            if key in self.store.first_called:
                return fn(self.module, *args, **kwargs)
            t0 = time.perf_counter()
            out = fn(self.module, *args, **kwargs)
            self.store.first_called.add(key)
            self.store.first_calls_s += time.perf_counter() - t0
            return out
        if self.fallback is None:
            self.fallback = torch.compile(self.forward, dynamic=False, mode=self.store.mode,
                                          backend=self.store.backend)
        return self.fallback(*args, **kwargs)

