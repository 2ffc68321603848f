"""Host time of one compiled-block call, by the way it is served: eager, regional ``torch.compile``, the compiled
blocks kept on disk (``--compile-dir``: through :class:`~confiner_core.diffusers_backend.precompiled.PrecompiledForward`
and the store's function called directly), and the pieces of the store's lookup (``call_key``, ``call_signature``).

Why: a ConFiner forward makes 100-200 block calls, and with ``--speed fast`` a ModelScope forward was issued in 103 ms
of host time against 125 ms of GPU time on an H200 (README_GPU call P), so a block call's host overhead decides whether
the GPU waits. The block is one small SD ResNet (tiny tensors), so the time is almost all host work.

    python bench/block_call_overhead.py [--device cuda] [--out bench/cpu_results/block_call_overhead.json]

(about a minute on a 2-core CPU: two inductor compiles of one block).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
from diffusers.models.resnet import ResnetBlock2D  # noqa: E402

from confiner_core.diffusers_backend import precompiled as P  # noqa: E402
from confiner_core.diffusers_backend import speed as S  # noqa: E402


def per_call_us(fn, device, calls: int) -> float:
    """Mean wall time of ``fn()`` over ``calls`` calls after 50 warm-up calls, synchronised at both ends."""
    with torch.no_grad():
        for _ in range(50):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--out", default=None, help="write the figures here (JSON)")
    a = ap.parse_args()
    device = torch.device(a.device)

    def block():
        torch.manual_seed(0)
        return ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=16, groups=4).eval().to(device)

    g = torch.Generator().manual_seed(0)
    x, temb = torch.randn(1, 8, 4, 4, generator=g).to(device), torch.randn(1, 16, generator=g).to(device)
    out = {"device": str(device), "torch": torch.__version__, "calls": a.calls, "us_per_call": {}}
    us = out["us_per_call"]
    eager = block()
    us["eager"] = per_call_us(lambda: eager(x, temb), device, a.calls)
    regional = block()
    compiled = torch.compile(regional.forward, dynamic=False)
    us["regional torch.compile"] = per_call_us(lambda: compiled(x, temb), device, a.calls)
    with tempfile.TemporaryDirectory() as folder:
        store = P.Store(folder)
        kept = block()
        S.compile_forward(kept, S.FAST, store)
        us["kept on disk, through PrecompiledForward"] = per_call_us(lambda: kept(x, temb), device, a.calls)
        fn = next(f for f in store.functions.values() if f is not None)
        us["kept on disk, the store's function called directly"] = per_call_us(lambda: fn(kept, x, temb), device,
                                                                                a.calls)
    us["call_key (text key of an artifact)"] = per_call_us(lambda: P.call_key((x, temb), {}), device, a.calls)
    us["call_signature (its in-memory lookup)"] = per_call_us(lambda: P.call_signature((x, temb), {}), device,
                                                              a.calls)
    out["us_per_call"] = {k: round(v, 1) for k, v in us.items()}
    print(json.dumps(out, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
