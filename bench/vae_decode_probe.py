"""The library's SD VAE decode of one 512x512x16 latent video (4 frames at a time) under ``lean`` and then ``fast``
(the decoder's blocks compiled, as ``load_experts(speed=FAST)`` does; ``gpu_benchmark.py`` left the decoder
uncompiled until this probe measured what compiling gives): median seconds, peak memory and the compile time.
Each preset runs twice where Triton is available: with the GroupNorm kernels as before the row kernels (``lean``:
per group; ``fast``: inductor's fusion inside the compiled blocks) and as ``fused_norm`` picks them now (the row
kernels for narrow groups; the kernels as an op inside the compiled blocks); every decode is compared with the first.
With ``--profile``, one decode per setting under torch.profiler: kernel time by kind (convolution, norm, ...) and
the TFLOP/s the convolutions reached (the decode's FLOPs counted by FlopCounterMode), as for the benchmark's runs.

    python bench/vae_decode_probe.py --profile --out $OUT/vae.json   # on the GPU
    python bench/vae_decode_probe.py --device cpu --tiny --profile   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

from diffusers import AutoencoderKL  # noqa: E402

import profiling as P  # noqa: E402
from confiner_core.diffusers_backend import fused_norm as FN  # noqa: E402
from confiner_core.diffusers_backend import speed as S  # noqa: E402
from confiner_core.diffusers_backend.vae import AutoencoderKLCodec  # noqa: E402
from confiner_core.latent_spaces import SD15  # noqa: E402
from gpu_benchmark import TINY, VAE  # noqa: E402  (the benchmark's VAE config: one definition)


def timed(codec, latent, device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        codec.decode(latent)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", action="store_true", help="also one profiled decode per setting")
    a = ap.parse_args()
    device = torch.device(a.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    vae = AutoencoderKL(**(TINY["vae"] if a.tiny else VAE)).to(device, dtype).eval()
    codec = AutoencoderKLCodec(vae, SD15)
    size = 64 if a.tiny else 512
    latent = torch.randn(1, 4, 16, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).to(device)
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "size": size, "frames": 16, "chunk_frames": codec.chunk_frames}
    flops = None
    if a.profile:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            codec.decode(latent)
        flops = P.flops_by_kind(counter.get_flop_counts()["Global"])
        out["tflop_by_kind"] = {k: v / 1e12 for k, v in flops.items()}
    # (name, settings, fused_norm's ROWS_FOR_CHANNELS_LAST, KERNELS_UNDER_COMPILE)
    variants = [("lean", S.LEAN, False, False), ("fast", S.FAST, False, False)]
    if device.type == "cuda" and FN.triton_available():
        variants[1:1] = [("lean_rows", S.LEAN, None, False)]
        variants.append(("fast_rows_op", S.FAST, None, True))
    first_video = None
    for name, settings, rows, under_compile in variants:
        FN.ROWS_FOR_CHANNELS_LAST, FN.KERNELS_UNDER_COMPILE = rows, under_compile  # compiled blocks guard on these
        S.apply_speed_settings([vae.decoder], settings)
        t0 = time.perf_counter()
        timed(codec, latent, device, 1)                     # compiles (fast) or autotunes (lean)
        first = time.perf_counter() - t0
        timed(codec, latent, device, 2)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runs = timed(codec, latent, device, a.repeats)
        video = codec.decode(latent).float()
        first_video = video if first_video is None else first_video
        out[name] = {"median_s": statistics.median(runs), "runs_s": [round(r, 4) for r in runs],
                     "first_call_s": first, "rows_for_channels_last": rows, "kernels_under_compile": under_compile,
                     "max_abs_diff_from_lean": float((video - first_video).abs().max()),
                     "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
        if flops is not None:
            summary = P.profile_run(lambda: codec.decode(latent), device)
            summary.update(P.rates(summary, flops))
            out[name]["profile"] = summary
            print("\n".join(P.markdown(summary, f"VAE decode profile ({name})")), flush=True)
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "profile"}), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
