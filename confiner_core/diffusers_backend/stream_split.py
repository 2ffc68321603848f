"""A UNet's forward over the two halves of its batch on two CUDA streams.

The halves of an expert's batch are independent (classifier-free guidance's conditional and unconditional halves;
for the per-frame spatial expert, frames), so one half's memory-bound kernels (norms, elementwise) may run on the GPU
beside the other half's compute-bound ones (convolutions, GEMMs, attention) instead of after them. Under CUDA graphs
(:mod:`.cuda_graphs`, applied outermost) both halves are captured in one graph with two branches. Each half runs the
network's own forward, so outputs equal the halves' forwards; against one batch they agree within rounding (cuDNN
and cuBLAS may pick other kernels for half the rows). ``bench/stream_split_probe.py`` measures whether it pays.

Splits happen only where every tensor argument with a batch dimension has a leading size that is an even multiple
of the sample's (even) batch (the text context has one row per frame for AnimateDiff's UNet); anything else runs the
forward as it is.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

#: networks whose forwards take a batch of independent samples first: the UNets (not the VAE decoder, which the
#: library already feeds a few frames at a time, nor the text encoders)
SPLITTABLE = ("UNet2DConditionModel", "UNet3DConditionModel", "UNetMotionModel")


def split_args(args: tuple, kwargs: dict) -> list | None:
    """``(args, kwargs)`` as two halves along the batch, or None where the call does not split: the first tensor
    (the sample) sets the batch B; every tensor whose leading size is a multiple k·B is cut in two (k rows of each
    sample stay together), 0-dim tensors (a shared timestep) and non-tensors go to both halves."""
    leaves, spec = tree_flatten((args, kwargs))
    tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
    if not tensors or tensors[0].dim() == 0:
        return None
    batch = tensors[0].shape[0]
    if batch < 2 or batch % 2:
        return None
    halves: list[list] = [[], []]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            if leaf.shape[0] % batch:
                return None          # a batched argument that does not follow the sample's batch
            parts = leaf.chunk(2)
        else:
            parts = (leaf, leaf)
        for h, part in zip(halves, parts):
            h.append(part)
    return [tree_unflatten(h, spec) for h in halves]


def join_outputs(first: Any, second: Any) -> Any:
    """The two halves' outputs as one: tensors concatenated along the batch, tuples and diffusers' output classes
    field by field."""
    if isinstance(first, torch.Tensor):
        return torch.cat([first, second])
    if isinstance(first, tuple):
        return type(first)(join_outputs(a, b) for a, b in zip(first, second))
    if hasattr(first, "to_tuple"):   # diffusers' BaseOutput (a dataclass and an OrderedDict)
        return type(first)(**{k: join_outputs(v, second[k]) for k, v in first.items()})
    raise TypeError(f"cannot join two halves' outputs of type {type(first).__name__}")


class SplitForward:
    """``module.forward`` over the halves of its batch, the second half on a side stream (module docstring)."""

    def __init__(self, forward: Callable, module: torch.nn.Module):
        self.forward, self.module = forward, module
        self.streams: dict = {}   # device -> its side stream
        self.splits = 0

    def __call__(self, *args, **kwargs):
        halves = split_args(args, kwargs)
        sample = next((t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)), None)
        if halves is None or sample is None or not sample.is_cuda or torch.is_grad_enabled():
            return self.forward(*args, **kwargs)
        main = torch.cuda.current_stream(sample.device)
        side = self.streams.get(sample.device)
        if side is None:
            side = self.streams[sample.device] = torch.cuda.Stream(sample.device)
        # the side stream starts after everything before (the inputs), and everything after waits for it; it is
        # used by nothing else, so memory it frees is reused only after its next wait on the main stream
        side.wait_stream(main)
        first = self.forward(*halves[0][0], **halves[0][1])
        with torch.cuda.stream(side):
            second = self.forward(*halves[1][0], **halves[1][1])
        main.wait_stream(side)
        self.splits += 1
        return join_outputs(first, second)


def split_forwards(modules) -> int:
    """Give each splittable module (:data:`SPLITTABLE`) a :class:`SplitForward` (before CUDA graphs wrap it).
    Returns how many."""
    done = 0
    for module in modules:
        if type(module).__name__ in SPLITTABLE and not isinstance(module.forward, SplitForward):
            module.forward = SplitForward(module.forward, module)
            done += 1
    return done
