"""Step caching for the refinement stage (opt-in): First-Block-Cache on flow transformers (Wan).

The rule is First Block Cache's (ParaAttention; ``diffusers.FirstBlockCacheConfig``, a simpler TeaCache): run the
first transformer block; if its residual (output - input) changed by less than ``threshold`` (mean absolute change
relative to the mean absolute residual of the last fully computed call) since the last call of the same expert at
the same shape, skip the other blocks and add the residual those blocks made last time. Each expert of a role keeps
its own state (the spatial and temporal roles often share one Wan transformer, and their calls interleave in a
coordinated step); a call at a higher timestep than the last one starts afresh (a new video). The control stage
is never cached: only experts given a cache are (:func:`attach_step_cache`, for the refinement roles).

Why not diffusers' hooks as they are: they need a cache context around every call of the transformer, also the
control expert's (which shares it), and keep one state per context name; here an unmarked call simply computes.
The output difference a threshold costs is measured by ``bench/wan_benchmark.py`` (off by default everywhere).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch


@dataclass
class _State:
    last_t: float | None = None
    head_residual: torch.Tensor | None = None   # the first block's residual at the last fully computed call
    head_output: torch.Tensor | None = None
    tail_residual: torch.Tensor | None = None   # what blocks 1..N-1 added at the last fully computed call
    skip: bool = False


@dataclass
class FirstBlockCache:
    """State and counters of step caching for one or more experts (keyed per expert and input shape)."""

    threshold: float
    states: dict = field(default_factory=dict)
    calls: int = 0
    skipped: int = 0

    def __post_init__(self):
        if not self.threshold >= 0:
            raise ValueError(f"step cache threshold must be >= 0, got {self.threshold}")

    @contextlib.contextmanager
    def active(self, transformer: torch.nn.Module, key, t: float):
        """Mark the calls of ``transformer`` inside the block as belonging to ``key`` at timestep ``t``."""
        state = self.states.setdefault(key, _State())
        if state.last_t is not None and t > state.last_t:
            self.states[key] = state = _State()  # a new denoising pass
        state.last_t = t
        previous = transformer._confiner_step_cache
        transformer._confiner_step_cache = (self, state)
        try:
            yield state
        finally:
            transformer._confiner_step_cache = previous

    def reset(self) -> None:
        self.states.clear()

    def describe(self) -> dict:
        return {"threshold": self.threshold, "calls": self.calls, "skipped": self.skipped}


def _relative_change(residual: torch.Tensor, previous: torch.Tensor) -> float:
    return float((residual - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12))


def install(transformer: torch.nn.Module) -> None:
    """Wrap the transformer's blocks once (``transformer.blocks``, Wan's block list; blocks take the hidden states
    first and return them). Calls made outside :meth:`FirstBlockCache.active` run unchanged."""
    if hasattr(transformer, "_confiner_step_cache"):
        return
    blocks = getattr(transformer, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) < 2:
        raise ValueError(f"step caching needs a transformer with a list of blocks (Wan); "
                         f"{type(transformer).__name__} has none")
    transformer._confiner_step_cache = None
    last = len(blocks) - 1
    for index, block in enumerate(blocks):
        block.forward = _wrapped(block.forward, transformer, index, last)


def _wrapped(forward, owner, index: int, last: int):
    def head(hidden_states, *args, **kwargs):
        out = forward(hidden_states, *args, **kwargs)
        active = owner._confiner_step_cache
        if active is None:
            return out
        cache, state = active
        residual = out - hidden_states
        cache.calls += 1
        state.skip = (state.head_residual is not None and state.tail_residual is not None
                      and state.head_residual.shape == residual.shape
                      and _relative_change(residual, state.head_residual) < cache.threshold)
        if state.skip:
            cache.skipped += 1
            return out + state.tail_residual
        state.head_residual, state.head_output = residual, out
        return out

    def rest(hidden_states, *args, **kwargs):
        active = owner._confiner_step_cache
        if active is not None and active[1].skip:
            return hidden_states
        out = forward(hidden_states, *args, **kwargs)
        if active is not None and index == last:
            state = active[1]
            state.tail_residual = out - state.head_output
            state.head_output = None
        return out

    return head if index == 0 else rest


def attach_step_cache(expert, threshold: float, cache: FirstBlockCache | None = None) -> FirstBlockCache:
    """Give a flow-transformer expert (or both members of a Wan 2.2 pair) step caching; returns the cache."""
    cache = cache or FirstBlockCache(threshold)
    members = [expert.high, expert.low] if hasattr(expert, "high") else [expert]
    for member in members:
        install(member.transformer)
        member.step_cache = cache
    return cache
