"""CUDA graphs for a network's forward: one captured graph per input signature, replayed for every later call.

A refinement loop calls each expert at fixed shapes (batch, frames, size, cfg), so after a warm-up call per shape
(which compiles and lets cuDNN autotune) the whole forward is captured once and replayed: one launch instead of
thousands, no CPU issue time. Inputs are copied into the graph's static buffers and the output is cloned out of its
static buffer, so callers see ordinary tensors. All graphs of one :class:`GraphPool` share one memory pool (they never
run at the same time and no graph's output outlives the next replay). A parameter that moved (``.to()``, staged
residency) makes the graph of that signature be captured again; a capture that fails leaves that signature eager.
Tensors on other devices, autograd and unhashable arguments run eagerly.
"""

from __future__ import annotations

import functools
import itertools
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten


_is_not_none = functools.partial(operator.is_not, None)


def cuda_capture(fn: Callable[[], Any], pool) -> tuple[Any, Any]:
    """Capture ``fn()`` into a CUDA graph (after one run on a side stream, as PyTorch's docs ask). Returns the graph
    and ``fn``'s output in the graph's memory."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


@dataclass
class GraphPool:
    """The memory pool and counters shared by every graphed forward of one :func:`graph_forwards` call."""

    capture: Callable = cuda_capture
    devices: tuple = ("cuda",)
    warmup_calls: int = 1
    handle: Any = None
    captured: int = 0
    replays: int = 0
    failures: list = field(default_factory=list)

    def pool(self):
        if self.handle is None and self.capture is cuda_capture:
            self.handle = torch.cuda.graph_pool_handle()
        return self.handle


@dataclass
class _Entry:
    graph: Any
    inputs: list
    output: Any
    params: tuple


class GraphedForward:
    """``module.forward`` replaced by graph replays per input signature (see the module docstring)."""

    def __init__(self, forward: Callable, module: torch.nn.Module, pool: GraphPool, warmup_calls: int | None = None):
        self.forward, self.module, self.pool = forward, module, pool
        # eager calls per signature before its capture (0: at the first; None: the pool's)
        self.warmup_calls = pool.warmup_calls if warmup_calls is None else warmup_calls
        self.entries: dict = {}
        self.seen: dict = {}
        self.eager_only: set = set()
        # the dicts of the submodules that hold tensors, walked once: module.parameters() walks the whole tree on
        # every call (6 ms per call for ModelScope's UNet on a slow host core, against 0.3 ms for these dicts)
        self.holders = [d for m in module.modules() for d in (m._parameters, m._buffers) if d]

    def _params(self) -> tuple:
        """Where every weight and buffer lives now (``.to()`` keeps a Parameter but moves its data, and replaces
        buffers in their module's dict). Built by ``map``/``filter`` rather than a generator: 0.35 against 0.77 ms
        for ModelScope's 1480 tensors on a 2-core CPU, at every replay."""
        tensors = filter(_is_not_none, itertools.chain.from_iterable(map(dict.values, self.holders)))
        return tuple(map(torch.Tensor.data_ptr, tensors))

    def _signature(self, leaves: list, spec) -> tuple | None:
        sig = [spec, torch.is_grad_enabled()]
        graphable = False
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                if leaf.device.type not in self.pool.devices or leaf.requires_grad:
                    return None
                graphable = True
                sig.append((tuple(leaf.shape), leaf.stride(), leaf.dtype, str(leaf.device)))
            else:
                try:
                    hash(leaf)
                except TypeError:
                    return None
                sig.append(("value", leaf))
        return tuple(sig) if graphable and not torch.is_grad_enabled() else None

    def __call__(self, *args, **kwargs):
        leaves, spec = tree_flatten((args, kwargs))
        key = self._signature(leaves, spec)
        if key is None or key in self.eager_only:
            return self.forward(*args, **kwargs)
        entry = self.entries.get(key)
        if entry is not None and entry.params != self._params():
            entry = self.entries.pop(key)  # weights moved: capture again
            entry = None
        if entry is None:
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] <= self.warmup_calls:
                return self.forward(*args, **kwargs)
            entry = self._capture(key, leaves, spec)
            if entry is None:
                return self.forward(*args, **kwargs)
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        for static, value in zip(entry.inputs, tensors):
            static.copy_(value)
        entry.graph.replay()
        self.pool.replays += 1
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, entry.output)

    def _capture(self, key, leaves: list, spec) -> _Entry | None:
        statics = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        args, kwargs = tree_unflatten(statics, spec)
        try:
            graph, output = self.pool.capture(lambda: self.forward(*args, **kwargs), self.pool.pool())
        except Exception as e:  # noqa: BLE001 (an uncapturable forward stays eager, and says why)
            self.eager_only.add(key)
            self.pool.failures.append(f"{type(self.module).__name__}: {type(e).__name__}: {e}"[:300])
            return None
        entry = _Entry(graph, [s for s in statics if isinstance(s, torch.Tensor)], output, self._params())
        self.entries[key] = entry
        self.pool.captured += 1
        return entry


def graph_forwards(modules, pool: GraphPool | None = None, first_call: tuple = ()) -> GraphPool:
    """Replace each module's ``forward`` by a :class:`GraphedForward` (outermost: after compilation and attention
    settings); all share ``pool``. Modules whose class is named in ``first_call`` are captured at their first call
    (networks called once a generation), the rest after ``pool.warmup_calls`` eager calls. Returns the pool (counts
    of captures, replays and failures)."""
    pool = pool or GraphPool()
    for module in modules:
        if not isinstance(module.forward, GraphedForward):
            warmup = 0 if type(module).__name__ in first_call else None
            module.forward = GraphedForward(module.forward, module, pool, warmup)
    return pool
