"""Which elementwise operations of a forward take PyTorch's slow strided path, and which source lines issue them.

PyTorch runs an elementwise operation (add, mul, GELU, a copy) with its vectorised CUDA kernel only when every operand
is dense and laid out like the output; a broadcast operand, a gapped view (``chunk`` of the last dimension) or two
layouts mixed (an NCHW tensor added to a channels_last one) send it to the strided ``elementwise_kernel``, several
times slower per byte. A GPU profile shows that kernel's total; this audit finds where it comes from: one forward of
each SD-scale network (the spatial UNet at batch 32, the AnimateDiff control UNet at 1×16 frames, ModelScope at 2×16)
runs under a ``TorchDispatchMode`` that flags every such operation and charges it, with the elements it moves, to
the last diffusers / confiner_core source lines on the Python stack.

On the GPU the layouts are the real ones (this is how the lean preset's fused GEGLU and channels_last temporal
transformers were found, ``README_GPU.md``); on the CPU (``--device meta``: shapes only, nothing computed) the
attention and GroupNorm kernels differ, so their lines are not to be trusted, the rest is.

    python bench/layout_audit.py --settings lean                     # on the GPU: full-size models
    python bench/layout_audit.py --device meta --settings eager lean  # anywhere
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch._prims_common import is_non_overlapping_and_dense_or_false as dense  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import gpu_benchmark as G  # noqa: E402  (the models' configs and the tables' settings)
from confiner_core.diffusers_backend.speed import apply_speed_settings  # noqa: E402

ELEMENTWISE = {"add", "add_", "sub", "mul", "mul_", "div", "gelu", "silu", "where", "clone", "copy_", "_to_copy"}
COPIES = {"clone", "copy_", "_to_copy"}
SOURCES = ("diffusers", "confiner_core")


def strided_reason(operand: torch.Tensor, out: torch.Tensor) -> str | None:
    """Why ``operand`` keeps ``out``'s elementwise operation off the vectorised kernel, or None."""
    if operand.dim() == 0 or operand.numel() == 1:
        return None  # scalars are passed by value
    if tuple(operand.shape) != tuple(out.shape):
        return "broadcast"
    if not dense(operand):
        return "gapped"
    if operand.stride() != out.stride():
        return "mixed-layout"
    return None


class StridedAudit(TorchDispatchMode):
    """Counts strided elementwise operations by (network, operation, reason, source lines)."""

    def __init__(self, depth: int = 2):
        super().__init__()
        self.depth, self.network = depth, "?"
        self.calls, self.elements = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name not in ELEMENTWISE or not isinstance(out, torch.Tensor) or out.numel() <= 1:
            return out
        operands = [a for a in args if isinstance(a, torch.Tensor)]
        reasons = {r for r in (strided_reason(a, out) for a in operands) if r}
        if not dense(out):
            reasons.add("gapped output")
        if reasons:
            frames = [f for f in traceback.extract_stack()[:-2] if any(s in f.filename for s in SOURCES)]
            where = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in frames[::-1][:self.depth])
            key = (self.network, ("copy " if name in COPIES else "") + name, ", ".join(sorted(reasons)), where)
            self.calls[key] += 1
            self.elements[key] += out.numel() * (1 + len(operands))
        return out

    def rows(self) -> list[dict]:
        total = sum(self.elements.values()) or 1
        return [{"network": k[0], "op": k[1], "reason": k[2], "where": k[3], "calls": self.calls[k],
                 "elements": n, "share": n / total} for k, n in self.elements.most_common()]


def audit(models: dict, device: str, dtype, depth: int = 2, tiny: bool = False) -> list[dict]:
    """One forward of the spatial, control and ModelScope networks under :class:`StridedAudit`."""
    h = 8 if tiny else 64
    width = {name: models[name].config.cross_attention_dim for name in ("sd", "control", "ms")}
    x = lambda *shape: torch.randn(*shape, device=device, dtype=dtype)  # noqa: E731
    t = torch.tensor(500.0, device=device)
    calls = {"sd": lambda: models["sd"](x(32, 4, h, h), t, x(32, 77, width["sd"])),
             "control": lambda: models["control"](x(1, 4, 16, h, h), t, x(16, 77, width["control"])),
             "ms": lambda: models["ms"](x(2, 4, 16, h, h), t, x(2, 77, width["ms"]))}
    mode = StridedAudit(depth)
    with torch.no_grad(), mode:
        for name, call in calls.items():
            mode.network = name
            call()
    return mode.rows()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, or meta (shapes only: no GPU needed)")
    ap.add_argument("--settings", nargs="+", default=["lean"], choices=("eager", "lean"),
                    help="tables of gpu_benchmark.py, applied in order (an audit after each)")
    ap.add_argument("--tiny", action="store_true", help="the benchmark's tiny models (tests)")
    ap.add_argument("--depth", type=int, default=2, help="source lines per entry, innermost first")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    a = ap.parse_args()
    dtype = torch.float16 if a.device != "cpu" else torch.float32
    models = G.build(G.TINY if a.tiny else G.FULL, dtype, a.device, with_ad_temporal=False)
    result = {}
    for setting in a.settings:
        settings = G.TABLES[setting][0]
        if a.device != "cuda":  # cuDNN attention and autotuning are CUDA-only
            settings = dataclasses.replace(settings, attention="default", cudnn_benchmark=False)
        apply_speed_settings([models[k] for k in ("sd", "control", "ms")], settings)
        rows = audit(models, a.device, dtype, a.depth, a.tiny)
        result[setting] = rows
        print(f"\n{setting}: {sum(r['calls'] for r in rows)} strided elementwise operations, "
              f"{sum(r['elements'] for r in rows) / 1e9:.2f} G elements moved")
        for r in rows[:a.top]:
            print(f"  {100 * r['share']:5.1f} %  {r['calls']:4d}x  {r['network']:7s} {r['op']:12s} "
                  f"{r['reason']:22s} {r['where']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
