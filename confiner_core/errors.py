"""The ways a run can stop early, as exception types: the command line maps them to exit codes, library users catch
them by type.

* :class:`UsageError` (a ``ValueError``) -- a bad argument or input file, found before any weights load or any
  sampling starts. The message names the input (``--frames``, ``spatial expert (path)``) and what is accepted.
  Command line: exit code 2.
* :class:`NonFiniteError` (a ``FloatingPointError``) -- an expert returned NaN or infinity. The message names the
  stage, the step and the expert and suggests the likely cause. Command line: exit code 1.
* :class:`Interrupted` (a ``KeyboardInterrupt``) -- Ctrl-C during a run, with how far it got; no output was
  replaced. Command line: exit code 130.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A bad argument or input; ``option`` names it (``"--frames"``, ``"prompt"``, ``"spatial"``)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


class NonFiniteError(FloatingPointError):
    """NaN or infinity in a latent during sampling: the run stops instead of writing a black or noisy video."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) during a run. ``done`` of ``total`` expert evaluations had finished; ``resume`` says how
    the run can continue (ConFiner-Long keeps its finished windows), or is empty."""

    def __init__(self, done: int, total: int, resume: str = ""):
        super().__init__(done, total, resume)
        self.done, self.total, self.resume = done, total, resume

    def __str__(self) -> str:
        line = f"interrupted after {self.done} of {self.total} expert evaluations; nothing written"
        return f"{line} ({self.resume})" if self.resume else line
