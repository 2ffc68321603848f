"""Resume state of ConFiner-Long runs, so an interrupted long video continues from its last finished window.

Kept in ``<out>/.confiner-resume/`` while a long run is under way and removed when it completes:

* ``window-NNNNN.safetensors`` -- each finished window's refined latent (re-decoded on resume, so the video and
  its metrics are rebuilt exactly);
* ``state-NNNNN.safetensors`` -- :class:`~confiner_core.long.LongState`'s tensors: the kept structure and
  coherence guidance's memory of it, colour anchoring's reference when on (no generator state: every structure and window draws from its own generator,
  seeded from the run's seed, :func:`~confiner_core.long.task_generator`);
* ``state.json`` -- the next window, the name of its tensors file, the evaluation counts so far and the settings
  the run was started with (a resume with other settings is refused, naming the difference).

The state is the same whatever number of processes made the windows (:mod:`confiner_core.distributed`), so a run
interrupted on N processes may be resumed on any number.

Every file is written to a temporary name and moved into place, so an interrupt never leaves a torn state.
Tensors are stored as safetensors, never pickled: loading a resume folder cannot run code.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections import Counter
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .chain import flatten
from .errors import UsageError, one_line, warn_doubtful
from .experts import COUNTERS
from .long import LongState
from .outputs import alive, process_identity, temp_name, write_atomic, writing

RESUME_FOLDER = ".confiner-resume"
FORMAT = 2  # 2: per-task generators, no generator state (format 1 folders are refused)
OWNER = "owner.json"   # the host and process id of the run working in the folder (ResumeStore.working_process)


class ResumeStore:
    """The resume folder of one output folder; ``settings`` identify the run (every setting that changes the
    result, JSON-serialisable)."""

    def __init__(self, out: str, settings: dict, added: dict | None = None, names: dict | None = None,
                 settled_later: tuple[str, ...] = (), canonical: Callable[[dict], dict] = lambda s: s,
                 outputs: dict | None = None):
        """``added``: settings newer than the folders' :data:`FORMAT`, each with the value that reproduces the runs
        made before it: a state stored without one was made with that value. ``names``: how messages name a
        setting (its flattened key, e.g. ``long.gamma``, by default). ``settled_later``: settings that matter only as
        the loaded experts take them (a guidance scale left to the expert's default, a negative prompt no expert
        reads at cfg 1): :meth:`settle` compares what the experts were given, :meth:`check` leaves them out.
        ``canonical``: flattened settings -> the same run's settings written one way (a default typed out), applied to
        the stored run's settings and to these alike. ``outputs``: what the run writes besides its video (e.g.
        ``{"save_frames": True}``), kept with the state but not compared: a resume may write more or less."""
        self.folder = os.path.join(out, RESUME_FOLDER)
        self.threads = torch.get_num_threads()   # the CPU threads of the run's first process (a resume keeps them)
        self.versions: dict | None = None        # the code of the run's first process (None: a state from before)
        self.processes: int | None = None        # how many processes the run's first start had (None: from before)
        self.canonical = canonical
        self.settings = canonical(flatten(json.loads(json.dumps(settings, default=str))))
        self.added = flatten(added or {})
        self.names = names or {}
        self.settled_later = settled_later
        self.settled: dict = {}
        self.outputs = outputs or {}

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def exists(self) -> bool:
        return os.path.isfile(self._path("state.json"))

    def info(self) -> dict:
        with open(self._path("state.json"), encoding="utf-8") as f:
            return json.load(f)

    def check(self) -> dict:
        """The stored run's info, if it was started with these settings; else a UsageError naming the changes."""
        try:
            info = self.info()
        except (OSError, ValueError) as e:
            raise UsageError(f"--resume: {self._path('state.json')} cannot be read ({e}); delete {self.folder} and "
                             f"start over", "--resume") from None
        if info.get("format") != FORMAT:
            raise UsageError(f"--resume: {self.folder} was written by another version (format "
                             f"{info.get('format')}); delete it and start over", "--resume")
        stored = self.canonical({**self.added, **info.get("settings", {})})
        name = lambda k: self.names.get(k, k)  # noqa: E731
        later = "settled" in info   # the settings the experts settle are compared as settled (:meth:`settle`)
        changed = [f"{name(k)}: {stored.get(k)!r} -> {v!r}" for k, v in self.settings.items()
                   if stored.get(k) != v and not (later and k in self.settled_later)]
        changed += [f"{name(k)}: {v!r} -> (unset)" for k, v in stored.items() if k not in self.settings]
        self._refuse_changes(changed)
        self._check_files(info)
        return info

    def settle(self, values: dict, resuming: bool) -> None:
        """What the loaded experts were given for ``settled_later``'s settings, by the names messages give them
        (e.g. ``{"the spatial expert's cfg": 7.5}``): kept with the state, and for a resumed run compared with the
        interrupted run's, so that a default given explicitly (``--cfg 7.5`` where the run had left it out) or a
        setting no expert reads (a negative prompt at cfg 1) resumes, and a changed one does not. (A state kept
        before these values were had those settings compared as given, by :meth:`check`.)"""
        self.settled = flatten(json.loads(json.dumps(values)))
        if not resuming:
            return
        stored = self.info().get("settled")
        if stored is not None:
            self._refuse_changes([f"{k}: {stored.get(k)!r} -> {v!r}" for k, v in self.settled.items()
                                  if stored.get(k) != v])

    def _refuse_changes(self, changed: list[str]) -> None:
        if changed:
            raise UsageError(f"--resume: the interrupted run in {self.folder} used other settings ("
                             f"{'; '.join(changed)}); resume with its settings, or delete the folder to start over",
                             "--resume")

    def _check_files(self, info: dict) -> None:
        """Every file the state names (its tensors, each finished window's latent) is there and readable, so that
        a damaged folder is refused before any sampling (headers only: no tensor is read)."""
        names = [(str(info.get("tensors")), None)] + [(f"window-{i:05d}.safetensors", "latent")
                                                      for i in range(int(info.get("next_window", 0)))]
        for name, key in names:
            path = self._path(name)
            try:
                with safe_open(path, "pt") as f:
                    if key is not None and key not in f.keys():
                        raise ValueError(f"it holds no {key!r}")
            except (OSError, SafetensorError, ValueError) as e:
                problem = "is missing" if not os.path.exists(path) else f"cannot be read ({one_line(e)})"
                raise UsageError(f"--resume: {path} {problem}: the interrupted run's state is damaged; delete "
                                 f"{self.folder} and start over", "--resume") from None

    def start(self) -> None:
        """A new run: an empty resume folder, this process working in it."""
        self.clear()
        os.makedirs(self.folder)
        self.claim()

    def claim(self) -> None:
        """This process works in the folder now (a new run, or a resumed one): :meth:`working_process`."""
        write_atomic(self.owner_file, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                    "identity": process_identity(os.getpid())}).encode())

    @property
    def owner_file(self) -> str:
        return self._path(OWNER)

    def working_process(self) -> int | None:
        """The process id of another live process of this host that works in the folder (a run in progress: a
        second run must not resume it or start over in it), else None. POSIX only (elsewhere: None)."""
        try:
            with open(self.owner_file, encoding="utf-8") as f:
                owner = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(owner, dict) or os.name != "posix":
            return None
        pid = owner.get("pid")
        if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid() \
                or not alive(pid):
            return None
        identity = owner.get("identity")   # a later process given the same id (after a reboot) is not the run
        if identity is not None and process_identity(pid) not in (None, identity):
            return None
        return pid

    def clear(self) -> None:
        """Removes the folder. One that cannot be removed (its output folder became read-only) gives a warning, never
        an error: the error that ended the run is the one to report, and the next run into the folder removes it."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            os.rmdir(self.folder)   # gone already (FileNotFoundError), else the reason it stays
        except FileNotFoundError:
            pass
        except OSError as e:
            warn_doubtful(f"the resume folder {self.folder} could not be removed ({e.strerror or e}); the next run "
                          f"into {os.path.dirname(self.folder)} removes it")

    # -- windows ------------------------------------------------------------------------------------------------

    def save_window(self, index: int, latent: torch.Tensor) -> None:
        self._save_tensors(f"window-{index:05d}.safetensors", {"latent": latent})

    def window(self, index: int) -> torch.Tensor:
        return load_file(self._path(f"window-{index:05d}.safetensors"))["latent"]

    # -- loop state ---------------------------------------------------------------------------------------------

    def save_state(self, state: LongState, windows: int) -> None:
        tensors = {f"structure.{i}": x for i, x in state.structures.items()}
        tensors.update({f"guidance.{step}": eps for step, eps in state.guidance.items()})
        if state.anchor is not None:
            tensors["anchor"] = state.anchor
        name = f"state-{state.next_window:05d}.safetensors"  # a new name each time: state.json moves in one step
        self._save_tensors(name, tensors)
        info = {"format": FORMAT, "next_window": state.next_window, "windows": windows, "tensors": name,
                **{counter: dict(c) for counter, c in state.counts().items()}, "settings": self.settings,
                "settled": self.settled, "cpu_threads": self.threads, "versions": self.versions,
                "processes": self.processes,
                "outputs": self.outputs}
        write_atomic(self._path("state.json"), json.dumps(info, indent=1).encode())
        for old in os.listdir(self.folder):
            if old.startswith("state-") and old != name:
                os.remove(self._path(old))

    def load_state(self) -> tuple[LongState, dict]:
        info = self.check()
        self.threads = info.get("cpu_threads", self.threads)
        self.versions = info.get("versions")
        self.processes = info.get("processes")
        tensors = load_file(self._path(info["tensors"]))
        state = LongState(info["next_window"],
                          {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("structure.")},
                          {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("guidance.")},
                          tensors.get("anchor"), **{counter: Counter(info.get(counter, {})) for counter in COUNTERS})
        return state, info

    def _save_tensors(self, name: str, tensors: dict) -> None:
        path = self._path(name)
        temp = temp_name(path)
        try:
            with writing(temp, (OSError, SafetensorError)):
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, temp)
            os.replace(temp, path)
        except BaseException:
            if os.path.exists(temp):
                os.remove(temp)
            raise
