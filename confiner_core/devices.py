"""The devices a run may name, checked before anything loads: the command line's ``--device`` and the library's
``device=`` (torch's own errors named neither, and read "Torch not compiled with CUDA enabled")."""

from __future__ import annotations

import torch

from .errors import UsageError

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
ACCEPTED = "cpu, cuda, cuda:N, mps or xpu"


def check_device(device, option: str = "--device") -> None:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu`` (or a torch.device) and present on this machine, else a
    UsageError (a ValueError) naming ``option``: ``--device`` on the command line, e.g. ``load_experts: device`` in
    the library, whose fixes then read ``device='cpu'``."""
    flag = option.startswith("--")
    use = (lambda value: f"{option} {value}") if flag else (lambda value: f"{option.split(': ')[-1]}={value!r}")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"{option} {device!r} is not a device PyTorch knows; use {ACCEPTED}", option) from None
    if d.type not in DEVICE_TYPES:
        raise UsageError(f"{option} {device!r} is not supported; use {ACCEPTED}", option)
    if d.type == "cpu":
        # torch takes cpu:1 as the one CPU device: a typo for cuda:1, most likely; cpu:0 is the CPU as a script's
        # f"{type}:{index}" spells it
        if d.index:
            raise UsageError(f"{option} {device}: the CPU has one device, cpu (or cpu:0); use {use('cpu')} (or "
                             f"cuda:{d.index} for a GPU)", option)
        return
    backend = torch.backends.mps if d.type == "mps" else getattr(torch, d.type, None)
    if backend is None or not backend.is_available():
        raise UsageError(f"{option} {device}: PyTorch sees no {d.type} device on this machine "
                         f"(torch {torch.__version__}); use {use('cpu')}, or install a PyTorch build for it", option)
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise UsageError(f"{option} {device}: there are {torch.cuda.device_count()} CUDA devices "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})", option)
