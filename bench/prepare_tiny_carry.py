"""Writes tiny random-weight model folders: SD 1.5, SDXL, AnimateDiff, ModelScope, Wan 2.1, Wan 2.2 A14B and TI2V-5B,
FLUX.1-dev and schnell, and Qwen-Image (every family the README lists; a researcher had to build the rest),
built by the tests' own builders (local tokenizers included), for trying checkpoint runs without weights (README
"Real checkpoints") and for the device calls' command-line checks (``.whl/tiny/``, the default folder, ignored by
git; bench/README_GPU.md). Usage, from the repository root:
``HF_HUB_OFFLINE=1 python bench/prepare_tiny_carry.py [FOLDER]``."""

import os
import sys
from pathlib import Path

for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                    ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):   # (before the libraries read them: one line of output)
    os.environ.setdefault(name, value)

if {"-h", "--help"} & set(sys.argv[1:]):   # (before the imports it needs: a trial got the missing-module line)
    print(__doc__)
    sys.exit(0)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

try:   # every package the builders use, before a folder is written (a trial's run stopped half-way, at a tokenizer)
    import sentencepiece  # noqa: E402,F401  (the T5 and UMT5 tokenizers)
    import tiny_diffusers  # noqa: E402
    import tiny_modern  # noqa: E402
except ImportError as e:
    sys.exit(f"prepare_tiny_carry.py: no module {e.name!r}: the tests' builders need the tests' packages; install "
             f"them first: pip install torch==2.13.0 -r requirements-test.txt")


def main(out: Path = ROOT / ".whl" / "tiny") -> None:
    out.mkdir(parents=True, exist_ok=True)
    tiny_diffusers.save_sd(out / "sd")
    tiny_diffusers.save_sdxl(out / "sdxl")
    tiny_diffusers.save_animatediff(out / "ad")
    tiny_diffusers.save_t2v(out / "t2v")
    for kind in tiny_modern.BUILDERS:   # wan21, wan22_a14b, wan22_ti2v, qwen_image, flux_dev, flux_schnell
        tiny_modern.save(kind, out / kind)
    print("wrote", ", ".join(sorted(p.name for p in out.iterdir())), "in", out)


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:2]))
