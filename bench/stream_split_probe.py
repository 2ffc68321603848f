"""Would a forward split in two halves on two CUDA streams beat the same forward as one batch?

Why: under ``max`` 0.37 s of a ConFiner run's 1.51 s of kernels are memory-bound (GroupNorm, elementwise, layout
copies) and run between the compute-bound convolutions, GEMMs and attention. The two halves of a batch (cfg's
conditional and unconditional halves, or two groups of frames for the per-frame spatial expert) are independent, so
in two streams one half's norms could run beside the other half's GEMMs. Whether the GPU does overlap them, and
whether that beats the larger kernels of one batch, is measured here: per network (as the launch probe of
``gpu_benchmark.py`` calls it), one CUDA graph of each way, replayed, median GPU time.

Measured (H200, ``lean`` settings, 2026-12-03, ``gpu_results/h200_stream_split_lean.json``): SD at batch 32 72.07 ms
as one batch, 72.89 ms in halves one after the other, 70.82 ms in halves on two streams (-1.7 %); ModelScope at cfg 2
117.02, 122.58 and 117.97 ms (+0.8 %). The GPU barely overlaps the halves (the convolution and GEMM kernels fill
every multiprocessor), so the library has no such setting.

    python bench/stream_split_probe.py --settings lean --out $OUT/split.json     # on the GPU
    python bench/stream_split_probe.py --device cpu --tiny --out /tmp/split.json  # CPU smoke run (no streams)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import gpu_benchmark as GB  # noqa: E402  (the benchmark's models, shapes and settings tables)
from norm_probe import captured, timed  # noqa: E402  (a CUDA graph of calls; median seconds after three warm-ups)
from confiner_core.diffusers_backend.speed import apply_speed_settings  # noqa: E402
from confiner_core.outputs import write_atomic  # noqa: E402

# networks whose batch halves are independent: SD's frames x cfg, ModelScope's cfg halves (not the control expert,
# one sample whose motion modules mix its frames)
CASES = ("sd_batch32", "modelscope_2x16")
WAYS = ("one batch", "halves in turn", "halves on two streams")


def halves(args: tuple, kwargs: dict) -> list[tuple[tuple, dict]]:
    """The forward's batch (dim 0 of the latent and of the text context, one row per sample at these shapes; the
    timestep is shared) cut in two."""
    sample, t = args
    context = kwargs["encoder_hidden_states"]
    return [((s, t), {"encoder_hidden_states": c}) for s, c in zip(sample.chunk(2), context.chunk(2))]


def way_fn(model, args, kwargs, way: str):
    """A callable running the forward one ``way``; returns the output sample (halves concatenated)."""
    parts = halves(args, kwargs)

    def one():
        return model(*args, **kwargs).sample

    def in_turn():
        return torch.cat([model(*a, **k).sample for a, k in parts])

    def two_streams():
        # the side stream starts after the inputs and the main stream waits for it before the join
        main, side = torch.cuda.current_stream(), SIDE.setdefault("stream", torch.cuda.Stream())
        side.wait_stream(main)
        first = model(*parts[0][0], **parts[0][1]).sample
        with torch.cuda.stream(side):
            second = model(*parts[1][0], **parts[1][1]).sample
        main.wait_stream(side)
        return torch.cat([first, second])

    return {"one batch": one, "halves in turn": in_turn, "halves on two streams": two_streams}[way]


SIDE: dict = {}


#: every captured graph, alive as long as the process: graphs sharing a memory pool must outlive the next capture
#: into it (PyTorch asserts when a capture starts in a pool whose graphs are gone)
GRAPHS: list = []


def graphed(fn, pool):
    """``fn`` captured in a CUDA graph: a callable that replays it, and its output."""
    graph, out = captured(fn, pool=pool)
    GRAPHS.append(graph)
    return graph.replay, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default="lean", choices=tuple(GB.TABLES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    device = torch.device(a.device)
    settings, dtype = GB.TABLES[a.settings]
    dtype = dtype if device.type == "cuda" else torch.float32
    models = GB.build(GB.TINY if a.tiny else GB.FULL, dtype, device if device.type == "cuda" else None,
                      with_ad_temporal=False)
    apply_speed_settings([models["sd"], models["ms"]], settings)
    h = a.size // 8
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "settings": a.settings, "size": a.size, "cases": {}}
    pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None
    t = torch.tensor(500.0, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name in CASES:
            key, sample, context = GB.forward_shapes(h)[name]
            model = models[key]
            args = (torch.randn(sample, device=device, dtype=dtype, generator=gen), t)
            kwargs = {"encoder_hidden_states": torch.randn(*context, model.config.cross_attention_dim,
                                                           device=device, dtype=dtype, generator=gen)}
            case, reference = {}, None
            for way in WAYS:
                if way == "halves on two streams" and device.type != "cuda":
                    continue
                fn = way_fn(model, args, kwargs, way)
                if device.type == "cuda":
                    fn, out = graphed(fn, pool)
                    fn()
                else:
                    out = fn()
                reference = out.clone() if reference is None else reference
                case[way] = {"s": timed(fn, device, a.repeats),
                             "max_abs_diff": float((out.float() - reference.float()).abs().max())}
                print(f"[{name}] {way}: {case[way]['s'] * 1e3:.2f} ms, differs by {case[way]['max_abs_diff']:.1e}",
                      flush=True)
            res["cases"][name] = case
            del args, kwargs
    write_atomic(a.out, json.dumps(res, indent=1).encode())


if __name__ == "__main__":
    main()
