"""pytest fixtures for ComfyUI host integration tests.

Import the ones you need into a test module (``from comfy_support.fixtures import
comfy_worker, ...``); nothing here imports torch or ComfyUI into the pytest process.

* ``comfy_path`` (session): the checkout from ``$COMFYUI_PATH``; the test is **skipped**
  when the variable is unset (``SKIP_REASON``) and **fails** when it names no checkout.
* ``synthetic_checkpoint`` (session): cached tiny SD1.5-layout checkpoint (built once, in a
  subprocess, under ``$CONFINER_TEST_CACHE`` or ``~/.cache/confiner-tests``). The recipe
  can be chosen with ``$CONFINER_TEST_CKPT_RECIPE`` (``tiny`` default, ``sd15``).
* ``comfy_pack_dirs`` (module): packs to load at boot, default none. Override it in a test
  module, e.g. ``return [(confiner_pack_dir, "confiner")]``.
* ``comfy_worker`` (module): a :class:`~comfy_support.worker.ComfyWorker` subprocess booted
  with ``--cpu --disable-api-nodes``, the checkpoint directory and a temp output directory.
  Attributes added: ``output_dir``, ``checkpoint_name``, ``comfy_root``.
* ``confiner_worker`` (session): the same, booted with the ConFiner pack only, once per session and
  shared by the modules that need nothing else (each boot costs seconds per module and ComfyUI
  version): such a module overrides ``comfy_worker`` to return it. Their tests run prompts with
  ``fresh_cache`` where cached outputs matter and restore what they switch.
* ``confiner_pack_dir`` (session): the repository root, which is the ConFiner pack.

Data files (UI-format workflows) live in the sibling directory ``fixtures/`` (a plain data
directory, not a package; ``comfy_support.fixtures`` is this module). Use
:func:`load_workflow` / :func:`with_checkpoint`.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest

from . import harness
from .synthetic_checkpoint import DEFAULT_RECIPE, ensure_checkpoint
from .worker import ComfyWorker

SKIP_REASON = ("COMFYUI_PATH not set: point it at a ComfyUI checkout to run host integration tests (made by "
               "tests/comfy_support/extract_snapshot.sh in ${XDG_CACHE_HOME:-~/.cache}/confiner/comfyui-<version>, "
               "which .ci/run uses when present)")
REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_DIR = Path(__file__).resolve().parent / "fixtures"
ENV_RECIPE = "CONFINER_TEST_CKPT_RECIPE"
ENV_TIMEOUT = "CONFINER_COMFY_TIMEOUT"

__all__ = [
    "SKIP_REASON", "REPO_ROOT", "WORKFLOW_DIR", "load_workflow", "with_checkpoint", "require_comfy_path",
    "comfy_path", "synthetic_checkpoint", "comfy_pack_dirs", "comfy_worker", "confiner_worker", "confiner_pack_dir",
]


def load_workflow(name: str) -> dict:
    """Load ``fixtures/<name>`` (``.ui.json``/``.json`` suffix optional)."""
    for cand in (name, f"{name}.ui.json", f"{name}.json"):
        p = WORKFLOW_DIR / cand
        if p.is_file():
            return json.loads(p.read_text())
    raise FileNotFoundError(f"no workflow fixture {name!r} in {WORKFLOW_DIR}")


def with_checkpoint(workflow: dict, ckpt_name: str) -> dict:
    """Copy of a UI workflow with every ``CheckpointLoaderSimple`` set to ``ckpt_name``."""
    wf = copy.deepcopy(workflow)
    for n in wf["nodes"]:
        if n.get("type") == "CheckpointLoaderSimple":
            vals = n.get("widgets_values")
            if isinstance(vals, dict):
                vals["ckpt_name"] = ckpt_name
            else:
                n["widgets_values"] = [ckpt_name] + list(vals or [])[1:]
    return wf


def assert_error_text(text: str, message: str, header: str = "stopped by an error:") -> None:
    """A failed node's text: ``header``, then the error's ``message`` (the dialog's) on at most three lines of 60
    characters broken between words: whole, or its start ending "…" and, where it leaves a line for the start, its
    fix (its last clause, after ": "), then "(see the error)"; of a refusal of several problems ("2 problems: (1)
    ...; (2) ..."), the first problem so, then "(and 1 more: see the error)"."""
    assert text.startswith(header + "\n"), text
    lines = text[len(header) + 1:].split("\n")
    # (a line starting with a long word, a path, runs longer: the frontend breaks it where its box ends)
    assert 1 <= len(lines) <= 3 and all(len(line) <= 60 or len(line.split()[0]) > 40 for line in lines), text
    shown, whole = " ".join(lines), " ".join(message.split())
    tail = re.search(r" \((?:and (\d+) more: )?see the error\)$", shown)
    if tail is None:
        assert shown == whole, (text, message)
        return
    if tail.group(1):   # the first problem alone
        assert whole.startswith(f"{int(tail.group(1)) + 1} problems: (1) "), (text, message)
        whole = whole[:whole.index("; (2) ")]
    shown = shown[:tail.start()]
    cut = next((i for i, line in enumerate(lines) if line.endswith(" …")), None)
    if shown.endswith(" …"):
        assert whole.startswith(shown.removesuffix(" …")), (text, message)
    elif cut is None:
        assert shown == whole, (text, message)
    else:   # its start, then its fix
        start, fix = " ".join(lines[:cut + 1]), shown[len(" ".join(lines[:cut + 1])) + 1:]
        assert whole.startswith(start.removesuffix(" …")) and whole.endswith(": " + fix), (text, message)


def require_comfy_path() -> Path:
    """The checkout, or skip (unset) / fail (invalid). Usable outside fixtures."""
    value = os.environ.get(harness.ENV_COMFYUI_PATH, "").strip()
    if not value:
        pytest.skip(SKIP_REASON)
    root = harness.comfy_root()
    if root is None:
        pytest.fail(f"COMFYUI_PATH={value!r} is not a ComfyUI checkout (expected nodes.py, execution.py, comfy/)")
    return root


@pytest.fixture(scope="session")
def comfy_path() -> Path:
    return require_comfy_path()


@pytest.fixture(scope="session")
def synthetic_checkpoint(comfy_path) -> Path:
    recipe = os.environ.get(ENV_RECIPE, DEFAULT_RECIPE)
    return ensure_checkpoint(comfy_path, recipe)


@pytest.fixture(scope="session")
def confiner_pack_dir() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="module")
def comfy_pack_dirs() -> list:
    return []


def _booted_worker(comfy_path, checkpoint, pack_dirs, base):
    """A worker booted on ``comfy_path`` with ``pack_dirs``, its files under ``base``; closed when the generator ends."""
    timeout = float(os.environ.get(ENV_TIMEOUT, "600"))
    worker = ComfyWorker(log_path=base / "worker.log", default_timeout=timeout)
    try:
        worker.boot(comfy_path, pack_dirs=pack_dirs, checkpoints_dir=checkpoint.parent, output_dir=base / "output")
    except BaseException:
        worker.close()
        raise
    worker.output_dir = base / "output"
    worker.checkpoint_name = checkpoint.name
    worker.comfy_root = comfy_path
    try:
        yield worker
    finally:
        worker.close()


@pytest.fixture(scope="module")
def comfy_worker(comfy_path, synthetic_checkpoint, comfy_pack_dirs, tmp_path_factory):
    yield from _booted_worker(comfy_path, synthetic_checkpoint, comfy_pack_dirs, tmp_path_factory.mktemp("comfy"))


@pytest.fixture(scope="session")
def confiner_worker(comfy_path, synthetic_checkpoint, confiner_pack_dir, tmp_path_factory):
    yield from _booted_worker(comfy_path, synthetic_checkpoint, [(str(confiner_pack_dir), "confiner")],
                              tmp_path_factory.mktemp("comfy-confiner"))
