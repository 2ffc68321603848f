"""The ways a run can stop early, as exception types: the command line maps them to exit codes, library users catch
them by type.

* :class:`UsageError` (a ``ValueError``) -- a bad argument or input file, found before any weights load or any
  sampling starts. The message names the input (``--frames``, ``spatial expert (path)``) and what is accepted.
  Command line: exit code 2.
* :class:`NonFiniteError` (a ``FloatingPointError``) -- an expert returned NaN or infinity. The message names the
  stage, the step and the expert and suggests the likely cause. Command line: exit code 1.
* :class:`OutputError` (an ``OSError``) -- an output or ConFiner-Long's resume folder could not be written (a full
  disk, a read-only folder). The message names the file, why and the fix. Command line: exit code 1.
* :class:`Interrupted` (a ``KeyboardInterrupt``) -- Ctrl-C during a run, with how far it got; no output was
  replaced. Command line: exit code 130.
* :class:`RankFailed` -- in a run over several processes, another process failed; this one stopped (exit code 1,
  or 130 when that process was interrupted).

A valid but doubtful setting is no error: :func:`warn_doubtful` gives a :class:`ConFinerWarning` at the caller's
line (the command line prints it as one line).

:func:`interrupts_held` keeps Ctrl-C out of third-party imports, so that it always arrives as a KeyboardInterrupt;
:func:`sigterm_as_interrupt` stops a run on SIGTERM (``timeout``, ``kill``, a batch scheduler) as Ctrl-C does.
"""

from __future__ import annotations

import difflib
import inspect
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class ConFinerWarning(UserWarning):
    """A valid but doubtful setting (e.g. outside what the paper found to work), or what a user should know that
    stops nothing (a temporary file a read-only folder keeps)."""


#: the decorators' and context managers' frames between the library's code and its caller (a warning from a
#: torch.no_grad() method was attributed to torch/utils/_contextlib.py)
PASSED_THROUGH = (os.path.join("torch", "utils", "_contextlib.py"), f"{os.sep}contextlib.py")


def warn_doubtful(message: str) -> None:
    """A :class:`ConFinerWarning`, attributed to the first line outside this package that led to it (a script's
    ``generate(...)`` or ``run_chain(...)`` call), however deep in the library the setting was checked."""
    frame, level = sys._getframe(1), 2   # stacklevel 2: this function's caller
    while frame is not None and (frame.f_code.co_filename.startswith(PACKAGE) or
                                 frame.f_code.co_filename.endswith(PASSED_THROUGH)):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, ConFinerWarning, stacklevel=level)


def meant_choice(value, options) -> str | None:
    """The option of ``options`` likely meant by ``value``, which is none of them: the same but for case ('DDIM':
    'ddim'), else the closest spelling ('coordinate': 'coordinated'); None where none is close. One reading for the
    command line, the library's settings and the nodes' widgets."""
    if not isinstance(value, str):
        return None
    lowered, said = {str(o).lower(): str(o) for o in options}, value.strip().lower()
    if said in lowered:
        return lowered[said]
    close = difflib.get_close_matches(said, lowered, n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def not_a_choice(name: str, value, options) -> str:
    """"``name`` must be one of ``options``, got ``value``", with the option likely meant (:func:`meant_choice`)."""
    meant = meant_choice(value, options)
    return f"{name} must be one of {options}, got {value!r}" + (f": did you mean {meant!r}?" if meant else "")


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none), as the command line prints it."""
    return " ".join(str(e).split()) or type(e).__name__


def check_function(fn, where: str, call: str, optional: bool = True) -> None:
    """Refuse, before any work, a ``fn`` that cannot be called as ``call`` (e.g. ``"sink(latent, window)"``): its
    first call comes after minutes of sampling, and Python's message there names neither the argument nor how it is
    called. None passes where ``optional``; a callable whose signature Python cannot read passes."""
    name = call.split("(")[0]
    if fn is None and optional:
        return
    if not callable(fn):
        raise TypeError(f"{where}: {name} must be a function called as {call}, got {type(fn).__name__}")
    arguments = call[len(name) + 1:-1].split(", ")
    try:
        inspect.signature(fn).bind(*arguments)
    except ValueError:   # (no signature to read: a builtin of some C extensions)
        return
    except TypeError:
        raise TypeError(f"{where}: {name} is called as {call}, with {len(arguments)} "
                        f"argument{'s' if len(arguments) > 1 else ''}, which {getattr(fn, '__name__', 'it')} does "
                        f"not take") from None


class UsageError(ValueError):
    """A bad argument or input; ``option`` names it (``"--frames"``, ``"prompt"``, ``"spatial"``)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


class NonFiniteError(FloatingPointError):
    """NaN or infinity in a latent during sampling: the run stops instead of writing a black or noisy video."""


class OutputError(OSError):
    """An output could not be written (:func:`confiner_core.outputs.writing`); the message names the output, the
    folder, why (e.g. no space left, with the space free) and the fix."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) during a run. ``done`` of ``total`` expert evaluations had finished (``at_least``: those of
    the finished windows only, where several processes shared the work and the others' windows in progress are not
    counted); ``resume`` says how the run can continue (ConFiner-Long keeps its finished windows), or is empty."""

    def __init__(self, done: int, total: int, resume: str = "", at_least: bool = False, written: str = ""):
        super().__init__(done, total, resume)
        self.done, self.total, self.resume, self.at_least = done, total, resume, at_least
        self.written = written   # the folder, where the run's outputs were in place when the interrupt came

    def __str__(self) -> str:
        if self.written:   # (after the commit: "nothing written" sent a trial's script to rerun a finished run)
            return f"interrupted once the run had finished: {self.written} holds its outputs"
        # (with a resume state kept in the folder, "nothing written" was not so: no video is)
        line = (f"interrupted after {'at least ' if self.at_least else ''}{self.done} of {self.total} expert "
                f"evaluations; {'no video' if self.resume else 'nothing'} written")
        return f"{line} ({self.resume})" if self.resume else line


class RankFailed(RuntimeError):
    """In a run over several processes (:mod:`confiner_core.distributed`): another process failed, was interrupted
    or could not be reached, so this one stopped. ``code`` is the exit code (130 when the other process was
    interrupted), ``resumable`` whether ConFiner-Long's finished windows stay resumable (the cause is not in the
    settings), ``origin`` the rank whose announced failure this relays (None: noticed here, e.g. a lost
    connection or a timeout)."""

    def __init__(self, message: str, code: int = 1, resumable: bool = False, origin: int | None = None):
        super().__init__(message)
        self.code, self.resumable, self.origin = code, resumable, origin

    @classmethod
    def announced(cls, rank: int, info: dict) -> "RankFailed":
        """The failure a rank announced: ``{"kind": "interrupted" | "usage" | "error", "message", "resumable"}``."""
        kind, message = info.get("kind"), info.get("message", "")
        if kind == "interrupted":
            return cls(f"rank {rank} was interrupted", 130, True, rank)
        if kind == "usage":
            return cls(message, 2, False, rank)
        return cls(f"rank {rank} failed: {message}", 1, bool(info.get("resumable")), rank)

    def copy(self) -> "RankFailed":
        return RankFailed(str(self), self.code, self.resumable, self.origin)


@contextmanager
def interrupts_held():
    """Ctrl-C held back while the block runs and raised again when it ends, for the handler in place before
    (Python's raises KeyboardInterrupt there). For imports of third-party libraries: an interrupt inside one left
    numpy half-imported (an AttributeError later), aborted the process from torch's C++ (pybind11's ``terminate
    called``) or printed a traceback, in 6 of 40 tries in the first seconds of a run. A Python-level handler runs
    in the main thread whichever thread the signal reached, so it only notes the key press. Off the main thread, or
    where the handler in place was set outside Python, the block runs as it is. SIGTERM is held too where a Python
    handler takes it (:func:`sigterm_as_interrupt`): the outputs' commit is held so (:mod:`.outputs`)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    pressed = []
    held = [signal.SIGINT] + [signal.SIGTERM] * callable(signal.getsignal(signal.SIGTERM))
    before = {signum: signal.signal(signum, lambda signum, frame: pressed.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    if pressed:   # once more, to the handler in place again (Python's raises KeyboardInterrupt from this call)
        signal.raise_signal(pressed[0])


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread while inside, so that a run stopped by ``timeout``, ``kill``
    or a batch scheduler cleans up as after Ctrl-C (temporary files removed, ConFiner-Long's finished windows kept)
    instead of dying on the spot. Yields a list that holds the signal once it came (the command line then exits 143).
    Elsewhere than in the main thread: nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_sigterm(signum, frame):
        if not received:   # once: a second SIGTERM while cleaning up waits for the cleanup
            received.append(signum)
            raise KeyboardInterrupt
    before = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, before)
