"""Writes the tiny random-weight model folders the device calls' command-line checks load (``.whl/tiny/``, ignored
by git; bench/README_GPU.md): SD 1.5, AnimateDiff, ModelScope, Wan 2.1, FLUX.1-dev and Qwen-Image, built by the
tests' own builders. Usage, from the repository root: ``HF_HUB_OFFLINE=1 python bench/prepare_tiny_carry.py``."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import tiny_diffusers  # noqa: E402
import tiny_modern  # noqa: E402


def main(out: Path = ROOT / ".whl" / "tiny") -> None:
    out.mkdir(parents=True, exist_ok=True)
    tiny_diffusers.save_sd(out / "sd")
    tiny_diffusers.save_animatediff(out / "ad")
    tiny_diffusers.save_t2v(out / "t2v")
    for kind in ("wan21", "flux_dev", "qwen_image"):
        tiny_modern.save(kind, out / kind)
    print("wrote", ", ".join(sorted(p.name for p in out.iterdir())), "in", out)


if __name__ == "__main__":
    main()
