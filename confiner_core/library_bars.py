"""The progress bars diffusers and transformers draw while experts load (a single file's "Loading pipeline
components", a text encoder's "Loading weights"): shown or not as the run's own bar is, by the command line's
``--quiet``, ``generate(show_progress=False)`` and ``load_experts(show_progress=False)``; and transformers' notice
that it lacks torchvision, held back while experts load. Imports neither library where it is absent (the embedded
default needs neither)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging


#: the libraries whose output this module governs, which loading real checkpoints needs (requirements-diffusers.txt)
LIBRARIES = ("diffusers", "transformers")


def installed(package: str) -> bool:
    """Whether ``package`` can be imported here, without importing it."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):   # a broken install (or an import hook that refuses it)
        return False


@contextlib.contextmanager
def loading_bars(shown: bool):
    """diffusers' and transformers' own progress bars while experts load (a single file's "Loading pipeline
    components", a text encoder's "Loading weights"), off with ``--quiet`` (``show_progress=False``) as the run's bar
    is; each library's setting is put back after."""
    libraries = [] if shown else [name for name in LIBRARIES if installed(name)]
    switched = []
    try:
        for name in libraries:
            logging_ = importlib.import_module(f"{name}.utils.logging")
            if logging_.is_progress_bar_enabled():
                logging_.disable_progress_bar()
                switched.append(logging_)
        yield
    finally:
        for logging_ in switched:
            logging_.enable_progress_bar()


@contextlib.contextmanager
def torchvision_fallback_unsaid():
    """diffusers' pipeline modules name transformers' CLIP and SigLIP image processors at import, and transformers
    without torchvision says, once per process, that it falls back to their PIL versions. ConFiner runs no image
    processor, so that notice would be the only thing a library user sees on importing the backend or loading
    experts (diffusers imports its pipeline modules then); it is held back while the backend imports and
    ``load_experts`` runs (the command line quiets transformers' import chatter altogether)."""
    logger = logging.getLogger("transformers.utils.import_utils")
    unsaid = logging.Filter()
    unsaid.filter = lambda record: "requires torchvision (not installed); falling back" not in record.getMessage()
    logger.addFilter(unsaid)
    try:
        yield
    finally:
        logger.removeFilter(unsaid)
