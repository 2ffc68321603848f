"""ConFiner: training-free video generation by a chain of off-the-shelf diffusion experts.

Backend-agnostic core over raw latent tensors (it never imports ComfyUI).
Equation numbers refer to arXiv 2408.13423:

* Eq. 1 / 6 / 9 / 11 -- :func:`confiner_core.sampling.diffuse`
* Eq. 6 / Alg. 1 l.4 -- :func:`confiner_core.chain.extraction_schedule` (which schedule noises the structure)
* Eq. 2-4 (DDIM)     -- :func:`confiner_core.sampling.ddim_step`
* Eq. 5 (control)    -- :func:`confiner_core.sampling.sample_control`
* Eq. 8 / 7 / Alg. 1 -- :mod:`confiner_core.refine`
* Eq. 12 (coherence) -- :func:`confiner_core.long.coherence_guidance`, on :func:`confiner_core.sampling.derivative`
* Eq. 13 (staggered) -- :func:`confiner_core.long.plan_segments`
"""

__version__ = "0.1.0"


def source_digest(folder: str | None = None) -> str:
    """A digest of the Python source under ``folder`` (default: this library's), its file names and contents in a
    fixed order: what tells two commits apart where the version number does not."""
    import hashlib
    import os

    folder = folder or os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read() + b"\0")
    return digest.hexdigest()[:16]
