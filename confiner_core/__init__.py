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
