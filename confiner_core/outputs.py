"""Writing outputs so that nothing is lost: every file goes to a temporary name beside its final one and is moved
into place (``os.replace``, atomic on one file system) only when the whole run has finished. A failed or
interrupted run leaves the previous outputs byte-identical and removes its temporary files; the temporary files of a
process that was killed outright (SIGKILL, a power cut) are removed by the next run into the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile

from .errors import OutputError, warn_doubtful

TEMP_MARK = ".partial"
# temp_name's names: ".<stem>.<pid>-<token>.partial<ext>"
TEMP_NAME = re.compile(r"\.(?P<stem>.*)\.(?P<pid>\d+)-[0-9a-f]+" + re.escape(TEMP_MARK) + r"(?P<ext>\.[^.]*)?")


def temp_name(path: str) -> str:
    """A unique temporary path beside ``path`` that keeps its extension (writers such as OpenCV pick the format
    from it): ``out/video.mp4`` -> ``out/.video.<token>.partial.mp4``."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_MARK}{ext}")


def is_temp(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name


def temp_owner(name: str) -> int | None:
    """The process id a temporary name (:func:`temp_name`) was made by, None for another name."""
    m = TEMP_NAME.fullmatch(name)
    return int(m.group("pid")) if m else None


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (POSIX; elsewhere: assumed alive)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)   # signal 0: is it there (no signal is sent)
    except PermissionError:
        return True       # another user's
    except OSError:
        return False
    return True


def process_identity(pid: int) -> str | None:
    """What tells process ``pid`` from a later one given the same id (after it ended, or after a reboot): this boot's
    id and the process's start time (Linux ``/proc``); None where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            started = f.read().rsplit(")", 1)[1].split()[19]   # field 22, after the command name in parentheses
    except (OSError, IndexError):
        return None
    return f"{boot}:{started}"


def remove_orphans(folder: str) -> list[str]:
    """Removes the temporary files in ``folder`` whose process has ended without removing them (killed outright:
    SIGKILL, a power cut). Returns their names."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    orphans = [n for n in names if is_temp(n) and (pid := temp_owner(n)) is not None and pid != os.getpid()
               and not alive(pid)]
    for name in orphans:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, name))
    return orphans


def final_name(name: str) -> str:
    """The output a temporary name (:func:`temp_name`) stands for: ``.video.<token>.partial.mp4`` -> ``video.mp4``."""
    m = TEMP_NAME.fullmatch(name)
    return m.group("stem") + (m.group("ext") or "") if m else name


def free_mb(folder: str) -> float:
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    return shutil.disk_usage(folder or ".").free / 2**20


def write_failure(path: str, cause: BaseException | None = None) -> OutputError:
    """One line for an output that could not be written: the output's own name (not its temporary one), the
    folder, why, and what to do."""
    folder, name = os.path.split(os.path.abspath(path))
    code, text = getattr(cause, "errno", None), str(cause or "")
    # a writer that says nothing of why (OpenCV's): a folder it may not write in, or a device with under a megabyte
    # free taken as full
    if cause is None and not os.path.isdir(folder):   # (a library caller's path: generate makes its folder)
        code = errno.ENOENT
    elif cause is None and not os.access(folder, os.W_OK):
        code = errno.EACCES
    if code == errno.ENOSPC or "No space left" in text or (cause is None and free_mb(folder) < 1.0):
        why, fix = f"no space left on the device ({free_mb(folder):.1f} MB free)", "free some space or choose " \
            "another output folder (--out)"
    elif code == errno.EDQUOT or "quota" in text.lower():
        why, fix = "the disk quota is used up", "free some space or choose another output folder (--out)"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        why, fix = "not allowed to write there", "choose a writable output folder (--out)"
    elif code == errno.ENOENT and not os.path.isdir(folder):
        why, fix = "the folder does not exist", "create it first, or choose an existing folder"
    else:
        why = (getattr(cause, "strerror", None) or " ".join(text.split()) or "the writer failed") + \
            f" ({free_mb(folder):.1f} MB free)"
        fix = "check the folder or choose another output folder (--out)"
    return OutputError(f"cannot write {final_name(name)} in {folder}: {why}; {fix}")


@contextlib.contextmanager
def writing(path: str, failures: tuple = (OSError,)):
    """Turns a failure to write ``path`` (``failures``: OSError, or a writer's own error type) into an
    :class:`~confiner_core.errors.OutputError` that names the output and the fix."""
    try:
        yield
    except OutputError:
        raise
    except failures as e:
        raise write_failure(path, e) from e


class AtomicOutputs:
    """A set of output files in one folder, committed together.

    ``path(name)`` gives the temporary path to write ``name`` to; :meth:`commit` moves every file into place;
    leaving the ``with`` block without a commit (an exception, Ctrl-C) removes the temporary files."""

    def __init__(self, folder: str):
        self.folder = folder
        self.pending: dict[str, str] = {}  # final path -> temporary path
        self.dropped: list[str] = []       # earlier outputs the commit removes (another run's, which this one lacks)
        remove_orphans(folder)

    def drop(self, name: str) -> None:
        """On :meth:`commit`, remove ``name`` if an earlier run left it: the folder's files are then one run's."""
        self.dropped.append(os.path.join(self.folder, name))

    def path(self, name: str) -> str:
        final = os.path.join(self.folder, name)
        self.pending[final] = temp_name(final)
        return self.pending[final]

    def commit(self) -> None:
        for final, temp in self.pending.items():
            if not os.path.isfile(temp):
                raise OSError(f"output {final} was never written (expected {temp})")
        for final, temp in self.pending.items():
            os.replace(temp, final)
        self.pending.clear()
        for final in self.dropped:
            try:
                os.remove(final)
            except FileNotFoundError:
                pass
            except OSError as e:   # the run's own outputs are in place: said, not raised
                warn_doubtful(f"{final} of an earlier run could not be removed ({e.strerror or e}); it is not "
                              f"this run's")

    def discard(self) -> None:
        for temp in self.pending.values():
            remove_temp(temp)
        self.pending.clear()

    def __enter__(self) -> "AtomicOutputs":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def write_atomic(path: str, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file beside it (never a half-written file at ``path``)."""
    temp = temp_name(path)
    try:
        with writing(temp), open(temp, "wb") as f:
            f.write(data)
        os.replace(temp, path)
    except BaseException:
        remove_temp(temp)
        raise


def remove_temp(temp: str) -> None:
    """Removes a temporary file on the way out of a failed write. A file that cannot be removed (the folder became
    read-only) gives a warning, never an error: the error that ended the write is the one to report, and the next
    run into the folder removes the file (:func:`remove_orphans`)."""
    try:
        os.remove(temp)
    except FileNotFoundError:
        pass
    except OSError as e:
        warn_doubtful(f"the temporary file {temp} could not be removed ({e.strerror or e}); the next run into "
                      f"{os.path.dirname(temp) or '.'} removes it")


def check_output_folder(folder: str, names: tuple, option: str = "--out") -> str | None:
    """Why ``folder`` cannot take the outputs ``names`` (None when it can), found without creating anything:
    it must be a folder or not exist yet, the nearest existing parent must be a writable folder (tried by
    creating and removing a temporary file, which also catches read-only file systems), and no output name may
    be taken by a folder."""
    if not isinstance(folder, (str, os.PathLike)) or not str(folder).strip():
        return f"give a folder name (got {folder!r}); it is created if missing"
    folder = os.path.abspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"{folder} is an existing file, not a folder; give a folder (it is created if missing)"
    for name in names:
        target = os.path.join(folder, name)
        if os.path.isdir(target):
            return f"{target} is a folder, so {name} cannot be written there; move it away or choose another {option}"
    parent = folder
    while not os.path.exists(parent):
        if os.path.islink(parent):   # (creating the folder through it failed with a bare FileExistsError)
            return f"{parent} is a link to {os.readlink(parent)}, which does not exist; choose another {option}"
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is a file, so the folder {folder} cannot be created; choose another {option}"
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".confiner-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        # (ENOENT from a folder that exists: a file system that takes no new files, such as /proc)
        why = "it takes no new files" if e.errno == errno.ENOENT else e.strerror or e
        made = "" if parent == folder else f", so {folder} cannot be created"
        return f"cannot write in {parent} ({why}){made}; choose a writable folder"
    return None
