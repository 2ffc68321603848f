"""Run the in-process harness in a dedicated subprocess and drive it from pytest.

Why a subprocess: :func:`comfy_support.harness.boot` permanently rewires the interpreter
(``sys.path`` starts with the ComfyUI root and ``<root>/comfy``, so ``import utils`` /
``import nodes`` / ``import model_base`` mean ComfyUI's modules; argv is parsed into
``comfy.cli_args``; torch and all node modules are loaded; packs are registered globally).
Doing that inside the pytest process would leak into every other test (e.g. the pack's
pure-Python tests importing a module called ``nodes`` or ``utils``), and a second ComfyUI
version cannot be booted next to the first. So the host tests run in a :class:`ComfyWorker`,
booted once (~4-6 s) per test module or, with the pack alone, once per session, and send it
requests; the pytest process itself never imports torch or ComfyUI for these tests.

Protocol: one JSON object per line. Requests go to the worker's stdin; replies come back on
a private pipe (``--reply-fd``), because ComfyUI, tqdm and packs print freely to
stdout/stderr: both are redirected to a log file whose tail is attached to errors.

Requests: ``{"cmd": ..., ...}`` with cmd in ``ping``, ``boot``, ``load_pack``,
``run_prompt``, ``run_workflow``, ``convert``, ``input_types``, ``call``, ``cleanup``,
``reset``, ``shutdown``. Replies: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": str, "traceback": str}``.

``call`` runs ``module:function(*args, **kwargs)`` inside the booted worker (the module is
imported normally, ``tests/`` is on ``sys.path``); use it for in-process assertions that need
live ComfyUI objects (return something JSON-serialisable).

The worker runs ``python -m comfy_support.worker`` with cwd ``tests/`` (so ``tests/`` is on
``sys.path``, behind the ComfyUI root once booted) and never has the repository root on
``sys.path``: the pack's own ``nodes`` package must not shadow ComfyUI's ``nodes.py``; the
pack is loaded only through ``nodes.load_custom_node`` (symlinked as ``custom_nodes/<name>``).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

TESTS_DIR = Path(__file__).resolve().parent.parent


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: repr(o)))


# --------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------


def _serve(reply_fd: int) -> int:
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    import importlib

    from comfy_support import harness

    out = os.fdopen(reply_fd, "w", buffering=1)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "ping":
                result: Any = {"pid": os.getpid(), "booted": harness.is_booted()}
            elif cmd == "boot":
                result = harness.boot(**req.get("kwargs", {}))
            elif cmd == "load_pack":
                result = harness.load_pack(req["path"], req.get("name"))
            elif cmd == "run_prompt":
                result = harness.run_prompt(req["prompt"], **req.get("kwargs", {})).to_json()
            elif cmd == "run_workflow":
                result = harness.run_workflow(req["workflow"], **req.get("kwargs", {})).to_json()
            elif cmd == "convert":
                result = harness.workflow_to_api(req["workflow"])
            elif cmd == "input_types":
                result = {ct: harness.input_types(ct) for ct in req["class_types"]}
            elif cmd == "call":
                mod_name, _, fn_name = req["target"].partition(":")
                fn = importlib.import_module(mod_name)
                for part in fn_name.split("."):
                    fn = getattr(fn, part)
                result = fn(*req.get("args", []), **req.get("kwargs", {}))
            elif cmd == "cleanup":
                harness.cleanup_models()
                result = True
            elif cmd == "reset":
                harness.reset_executor()
                result = True
            elif cmd == "shutdown":
                out.write(json.dumps({"ok": True, "result": True}) + "\n")
                out.flush()
                return 0
            else:
                raise ValueError(f"unknown command {cmd!r}")
            reply = {"ok": True, "result": _jsonable(result)}
        except BaseException as e:  # noqa: BLE001 - report everything to the client
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                out.write(json.dumps(reply) + "\n")
                raise
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


# --------------------------------------------------------------------------------------
# Client side (no torch / ComfyUI import)
# --------------------------------------------------------------------------------------


class WorkerError(RuntimeError):
    pass


class ComfyWorker:
    """A subprocess running the harness. Use as a context manager or call :meth:`close`.

    ``log_path``: where the worker's stdout/stderr go (default: a temp file); the last
    lines are included in :class:`WorkerError` messages.
    """

    def __init__(self, env: Optional[dict] = None, log_path: Optional[os.PathLike | str] = None,
                 default_timeout: float = 600.0):
        self.default_timeout = default_timeout
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="confiner-comfy-worker-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        full_env = dict(os.environ if env is None else env)
        full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR)] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []))
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        full_env.setdefault("HF_HUB_OFFLINE", "1")
        full_env.setdefault("TRANSFORMERS_OFFLINE", "1")
        r, w = os.pipe()
        self._log_fh = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-u", "-m", "comfy_support.worker", "--reply-fd", str(w)],
                stdin=subprocess.PIPE, stdout=self._log_fh, stderr=subprocess.STDOUT,
                pass_fds=(w,), env=full_env, cwd=str(TESTS_DIR), text=True,
            )
        finally:
            os.close(w)
        self._reply_fd = r
        self._buf = b""
        self.boot_info: Optional[dict] = None

    # -- plumbing ---------------------------------------------------------------------
    def log_tail(self, n: int = 80) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def _read_line(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self._reply_fd], [], [], min(remaining, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise EOFError
                continue
            chunk = os.read(self._reply_fd, 1 << 20)
            if not chunk:
                raise EOFError
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def request(self, cmd: str, timeout: Optional[float] = None, **payload) -> Any:
        if self.proc.poll() is not None:
            raise WorkerError(f"ComfyUI worker exited (rc={self.proc.returncode}); log tail:\n{self.log_tail()}")
        msg = json.dumps({"cmd": cmd, **payload}) + "\n"
        try:
            self.proc.stdin.write(msg)
            self.proc.stdin.flush()
            line = self._read_line(timeout or self.default_timeout)
        except TimeoutError:
            self.kill()
            raise WorkerError(f"ComfyUI worker timed out on {cmd!r} after {timeout or self.default_timeout}s; log tail:\n{self.log_tail()}") from None
        except (EOFError, BrokenPipeError):
            rc = self.proc.wait(timeout=10)
            raise WorkerError(f"ComfyUI worker died during {cmd!r} (rc={rc}); log tail:\n{self.log_tail()}") from None
        reply = json.loads(line)
        if not reply.get("ok"):
            raise WorkerError(f"{cmd} failed in the ComfyUI worker: {reply.get('error')}\n{reply.get('traceback', '')}\n"
                              f"--- worker log tail ---\n{self.log_tail(40)}")
        return reply.get("result")

    # -- API --------------------------------------------------------------------------
    def boot(self, comfy_root, pack_dirs=(), checkpoints_dir=None, output_dir=None, **kwargs) -> dict:
        packs = [[str(p[0]), p[1]] if isinstance(p, (tuple, list)) else str(p) for p in pack_dirs]
        kw = dict(comfy_root=str(comfy_root), pack_dirs=packs,
                  checkpoints_dir=str(checkpoints_dir) if checkpoints_dir else None,
                  output_dir=str(output_dir) if output_dir else None, **kwargs)
        self.boot_info = self.request("boot", kwargs=kw)
        return self.boot_info

    def load_pack(self, path, name: Optional[str] = None) -> dict:
        return self.request("load_pack", path=str(path), name=name)

    def run_prompt(self, prompt: dict, **kwargs) -> dict:
        """Returns the JSON form of :class:`harness.PromptResult` (a dict)."""
        return self.request("run_prompt", prompt=prompt, kwargs=kwargs)

    def run_workflow(self, workflow: dict, **kwargs) -> dict:
        return self.request("run_workflow", workflow=workflow, kwargs=kwargs)

    def convert(self, workflow: dict) -> dict:
        return self.request("convert", workflow=workflow)

    def input_types(self, *class_types: str) -> dict:
        return self.request("input_types", class_types=list(class_types))

    def call(self, target: str, *args, timeout: Optional[float] = None, **kwargs) -> Any:
        return self.request("call", timeout=timeout, target=target, args=list(args), kwargs=kwargs)

    def cleanup(self) -> None:
        self.request("cleanup")

    def ping(self) -> dict:
        return self.request("ping", timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def close(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            try:
                self.request("shutdown", timeout=timeout)
                self.proc.wait(timeout=timeout)
            except Exception:  # noqa: BLE001
                self.kill()
        try:
            self.proc.stdin.close()
        except Exception:  # noqa: BLE001
            pass
        os.close(self._reply_fd) if self._reply_fd is not None else None
        self._reply_fd = None
        self._log_fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--reply-fd", type=int, required=True)
    a = ap.parse_args()
    sys.exit(_serve(a.reply_fd))
