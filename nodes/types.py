"""Socket types the pack adds to ComfyUI, and how messages name the inputs an artist connects (the bottom of the
node layer: no other module of the pack is imported here)."""

from __future__ import annotations

from comfy_api.latest import io

RefineExpertsType = io.Custom("CONFINER_EXPERTS")

# Where an artist connects each expert's VAE (named in the messages of a bridge that lacks one).
REFINE_EXPERTS = "ConFiner Refine Experts"
VAE_INPUTS = {"spatial": ("spatial_vae", REFINE_EXPERTS), "temporal": ("temporal_vae", REFINE_EXPERTS)}


def connect_vae(node_input: str, node: str) -> str:
    """How to give an expert its VAE, by the input's label on the node and its id (``spatial_vae``: "spatial VAE")."""
    return f"connect one to {node_input.replace('_vae', ' VAE')} ({node_input}) on {node}"


def mismatch(message: str, brief: str, fix: str) -> ValueError:
    """A connected input that does not fit the model it is connected for (another family's VAE or prompt): a
    ValueError (ComfyUI's dialog names a class of the pack by its file path) carrying the same said short for
    :func:`~.host.refuse_all`: ``brief``, what is connected ("spatial VAE (spatial_vae) holds Wan 2.1's VAE"), and
    ``fix``, what to connect instead."""
    error = ValueError(message)
    error.brief, error.fix = brief, fix
    return error
