"""In-process headless ComfyUI harness for integration tests.

Boots a ComfyUI checkout (``COMFYUI_PATH``) inside the *current* process, without the
HTTP server, and runs API prompts through ``execution.PromptExecutor``, the same engine
``main.prompt_worker`` uses. Works with ComfyUI 0.3.64 (OLD) and 0.8.0 (NEW).

**Process isolation.** Booting mutates global interpreter state that cannot be undone:
``sys.path`` gets the ComfyUI root and ``<root>/comfy`` at the front (so ``import utils``
etc. resolve to ComfyUI's modules), ``sys.argv`` is parsed into ``comfy.cli_args.args``,
torch and every node module are imported and stay registered in ``nodes.NODE_CLASS_MAPPINGS``,
and a pack loaded through ``nodes.load_custom_node`` lives in ``sys.modules`` under its path.
So only call :func:`boot` in a process that exists for that purpose: the pytest suite does it
in a worker subprocess (:mod:`comfy_support.worker`), one per test module; scripts may call it
directly. Importing this module is cheap and side-effect free (stdlib only at import time).

Typical use (inside the worker or a script)::

    from comfy_support import harness
    harness.boot(harness.comfy_root(), pack_dirs=["/work/main"],
                 checkpoints_dir=ckpt_dir, output_dir=out_dir)
    res = harness.run_prompt(api_prompt, interrupt_at_step=2)
    success, outputs, status_messages = res          # a 3-tuple ...
    res.progress, res.interrupted, res.error          # ... with extra attributes
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import importlib.util
import inspect
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional

__all__ = [
    "ENV_COMFYUI_PATH",
    "comfy_root",
    "is_comfy_root",
    "comfy_version",
    "stubs_dir",
    "ensure_torchvision",
    "boot",
    "is_booted",
    "boot_info",
    "load_pack",
    "StubServer",
    "ProgressRecorder",
    "set_progress_hook",
    "clear_progress_hook",
    "get_executor",
    "reset_executor",
    "validate_prompt",
    "run_prompt",
    "PromptResult",
    "workflow_to_api",
    "run_workflow",
    "input_types",
    "cleanup_models",
    "interrupt",
]

ENV_COMFYUI_PATH = "COMFYUI_PATH"
ENV_TORCHVISION_STUB = "CONFINER_TORCHVISION_STUB"  # "1" force stub, "0" never, unset/auto
_SUPPORT_DIR = Path(__file__).resolve().parent
_log = logging.getLogger("confiner.harness")


# --------------------------------------------------------------------------------------
# Locating a checkout (no ComfyUI import)
# --------------------------------------------------------------------------------------


def is_comfy_root(path: Optional[os.PathLike | str]) -> bool:
    if not path:
        return False
    p = Path(path)
    return (p / "nodes.py").is_file() and (p / "execution.py").is_file() and (p / "comfy").is_dir() and (p / "folder_paths.py").is_file()


def comfy_root(env: Optional[dict] = None) -> Optional[Path]:
    """The ComfyUI checkout named by ``$COMFYUI_PATH``; None if unset or not a checkout."""
    env = os.environ if env is None else env
    value = env.get(ENV_COMFYUI_PATH, "").strip()
    if not value:
        return None
    p = Path(value).expanduser()
    return p.resolve() if is_comfy_root(p) else None


def comfy_version(root: os.PathLike | str) -> Optional[str]:
    """``__version__`` from ``<root>/comfyui_version.py`` without importing ComfyUI."""
    f = Path(root) / "comfyui_version.py"
    try:
        for line in f.read_text().splitlines():
            if line.strip().startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return None


def stubs_dir() -> Path:
    """Directory holding the test-only ``torchvision`` stub package."""
    return _SUPPORT_DIR / "stubs"


def ensure_torchvision(mode: Optional[str] = None) -> str:
    """Make ``import torchvision`` work for ComfyUI core. Returns "real" or "stub".

    mode (default ``$CONFINER_TORCHVISION_STUB``): "1" force the stub, "0" never use it,
    "auto"/unset: use the real torchvision if it imports, else the stub (the CUDA wheel on a
    CPU-only torch fails with "operator torchvision::nms does not exist").
    """
    mode = (mode if mode is not None else os.environ.get(ENV_TORCHVISION_STUB, "auto")).strip().lower()
    stub = str(stubs_dir())

    def use_stub() -> str:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        if stub in sys.path:
            sys.path.remove(stub)
        sys.path.insert(0, stub)
        importlib.invalidate_caches()
        import torchvision  # noqa: F401

        assert getattr(torchvision, "IS_CONFINER_STUB", False), torchvision.__file__
        return "stub"

    mod = sys.modules.get("torchvision")
    if mod is not None:
        return "stub" if getattr(mod, "IS_CONFINER_STUB", False) else "real"
    if mode in ("1", "true", "yes", "stub"):
        return use_stub()
    if mode in ("0", "false", "no", "real"):
        return "real"
    if importlib.util.find_spec("torchvision") is None:
        return use_stub()
    try:
        import torchvision  # noqa: F401
        from torchvision import transforms  # noqa: F401

        return "real"
    except Exception as e:  # noqa: BLE001 - any import failure means "use the stub"
        _log.info("real torchvision unusable (%s); using the test stub", e)
        return use_stub()


# --------------------------------------------------------------------------------------
# Boot
# --------------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


class StubServer:
    """Stands in for ``server.PromptServer`` (no sockets). Records everything sent."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.number = 0
        self.prompt_queue = None
        self.messages: list[tuple[Any, Any]] = []
        try:
            from aiohttp import web

            self.routes = web.RouteTableDef()  # packs may register routes at import time
        except Exception:  # noqa: BLE001
            self.routes = None

    def send_sync(self, event, data, sid=None):
        if event in ("progress_state", "executing", "executed", "progress", "progress_text"):
            self.messages.append((event, data if isinstance(data, dict) else None))

    def send_progress_text(self, text, node_id, sid=None):
        self.messages.append(("progress_text", {"text": text, "node_id": node_id, "sid": sid}))

    def queue_updated(self):
        pass

    def add_on_prompt_handler(self, handler):
        pass


def is_booted() -> bool:
    return bool(_STATE.get("booted"))


def boot_info() -> dict:
    """JSON-able summary of the boot (versions, dirs, timings, loaded packs)."""
    info = dict(_STATE.get("info", {}))
    info["packs"] = list(_STATE.get("packs", []))
    return info


def boot(
    comfy_root: os.PathLike | str,
    pack_dirs: Iterable[os.PathLike | str | tuple | list] = (),
    checkpoints_dir: Optional[os.PathLike | str] = None,
    output_dir: Optional[os.PathLike | str] = None,
    *,
    input_dir: Optional[os.PathLike | str] = None,
    temp_dir: Optional[os.PathLike | str] = None,
    user_dir: Optional[os.PathLike | str] = None,
    model_dirs: Optional[dict] = None,
    extra_argv: Iterable[str] = (),
    real_server: bool = False,
    torchvision_stub: Optional[str] = None,
    cpu: bool = True,
) -> dict:
    """Boot ComfyUI headless in this process (once); load packs. Returns :func:`boot_info`.

    * ``comfy_root``: the checkout. A second call with the same root only loads further packs;
      another root raises (ComfyUI cannot be unloaded; use a new process).
    * ``pack_dirs``: custom node pack directories; an item may be ``(path, name)``. Each is
      symlinked as ``<name>`` (default: the directory name; an item may be ``(path, name)``) into a private ``custom_nodes``
      directory and loaded with ``nodes.load_custom_node(path, ignore=<built-in ids>,
      module_parent="custom_nodes")``, i.e. like ComfyUI's own scan (packs cannot override
      built-in node ids). A pack that fails to import raises ``RuntimeError``.
    * ``checkpoints_dir``: registered first (``is_default``) for "checkpoints";
      ``model_dirs`` maps other folder names ("loras", "vae", ...) to a dir or list of dirs.
    * ``output_dir``/``input_dir``/``temp_dir``/``user_dir``: default to fresh temp dirs, so
      nothing is written into the checkout.
    * argv is ``--cpu --disable-api-nodes`` plus ``extra_argv``; ``cpu=False`` leaves ``--cpu`` out (the GPU
      benchmark, ``bench/comfy_benchmark.py``).
    * ``real_server``: build a real ``server.PromptServer`` on an unstarted event loop (for
      packs that need ``PromptServer.instance.routes``/``prompt_queue``...); otherwise a
      :class:`StubServer` is installed as ``PromptServer.instance``.
    """
    root = Path(comfy_root).resolve()
    if not is_comfy_root(root):
        raise ValueError(f"{root} is not a ComfyUI checkout (nodes.py, execution.py, comfy/ expected)")
    if _STATE.get("booted"):
        if Path(_STATE["info"]["comfy_root"]) != root:
            raise RuntimeError(f"ComfyUI already booted from {_STATE['info']['comfy_root']}; use a new process for {root}")
        for item in pack_dirs:
            load_pack(*item) if isinstance(item, (tuple, list)) else load_pack(item)
        return boot_info()

    t0 = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="confiner-comfy-"))
    # The process keeps ComfyUI booted until it exits; its scratch folders go with it.
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    dirs = {
        "output": Path(output_dir) if output_dir else tmp / "output",
        "input": Path(input_dir) if input_dir else tmp / "input",
        "temp": Path(temp_dir) if temp_dir else tmp / "temp",
        "user": Path(user_dir) if user_dir else tmp / "user",
        "custom_nodes": tmp / "custom_nodes",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    front_end_root = tmp / "frontend"
    front_end_root.mkdir(exist_ok=True)

    tv = ensure_torchvision(torchvision_stub)

    # 1. sys.path and argv before anything of ComfyUI is imported.
    root_s = str(root)
    if root_s in sys.path:
        sys.path.remove(root_s)
    sys.path.insert(0, root_s)
    argv = [str(root / "main.py"), *(["--cpu"] if cpu else []), "--disable-api-nodes", "--front-end-root",
            str(front_end_root), *extra_argv]
    saved_argv = sys.argv
    sys.argv = argv
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import utils.extra_config  # noqa: F401  MUST precede nodes/server (nodes.py puts <root>/comfy first on sys.path)
        import folder_paths
        from comfy.cli_args import args
    finally:
        sys.argv = saved_argv
    if cpu and not args.cpu:
        raise RuntimeError("comfy.cli_args was parsed before boot() without --cpu; boot in a fresh process")

    folder_paths.set_output_directory(str(dirs["output"]))
    folder_paths.set_input_directory(str(dirs["input"]))
    folder_paths.set_temp_directory(str(dirs["temp"]))
    if hasattr(folder_paths, "set_user_directory"):
        folder_paths.set_user_directory(str(dirs["user"]))
    if checkpoints_dir:
        folder_paths.add_model_folder_path("checkpoints", str(Path(checkpoints_dir).resolve()), is_default=True)
    for folder, paths in (model_dirs or {}).items():
        for p in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
            folder_paths.add_model_folder_path(folder, str(Path(p).resolve()), is_default=True)
    t_paths = time.perf_counter()

    import comfy.model_management  # noqa: F401  (asserts the CPU device works)
    import execution
    import nodes
    import server

    if real_server:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        srv = server.PromptServer(loop)
    else:
        loop = None
        srv = StubServer()
        server.PromptServer.instance = srv
    t_import = time.perf_counter()

    hook_breaker = None
    try:
        import hook_breaker_ac10a0 as hook_breaker  # type: ignore
    except ImportError:
        pass
    if hook_breaker:
        hook_breaker.save_functions()
    try:
        coro = nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)
        import_failed = loop.run_until_complete(coro) if loop else asyncio.run(coro)
    finally:
        if hook_breaker:
            hook_breaker.restore_functions()
    t_nodes = time.perf_counter()

    new_executor = "cache_args" in inspect.signature(execution.PromptExecutor.__init__).parameters
    _STATE.update(
        booted=True,
        loop=loop,
        server=srv,
        executor=None,
        new_executor=new_executor,
        packs=[],
        builtin_ids=set(nodes.NODE_CLASS_MAPPINGS),
        dirs=dirs,
        hook=None,
    )
    _STATE["info"] = {
        "comfy_root": root_s,
        "comfy_version": comfy_version(root),
        "executor_api": "NEW(cache_args)" if new_executor else "OLD(cache_size)",
        "torchvision": tv,
        "torch": __import__("torch").__version__,
        "python": sys.version.split()[0],
        "dirs": {k: str(v) for k, v in dirs.items()},
        "builtin_node_count": len(nodes.NODE_CLASS_MAPPINGS),
        "extras_import_failed": [str(x) for x in (import_failed or [])],
        "real_server": bool(real_server),
        "timings_s": {
            "paths": round(t_paths - t0, 3),
            "import_core": round(t_import - t_paths, 3),
            "init_builtin_nodes": round(t_nodes - t_import, 3),
        },
    }
    t_packs = time.perf_counter()
    for item in pack_dirs:
        load_pack(*item) if isinstance(item, (tuple, list)) else load_pack(item)
    _STATE["info"]["timings_s"]["load_packs"] = round(time.perf_counter() - t_packs, 3)
    _STATE["info"]["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    return boot_info()


def _require_boot():
    if not _STATE.get("booted"):
        raise RuntimeError("ComfyUI is not booted in this process; call harness.boot() first")


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        try:
            self.lines.append(f"{record.levelname}: {record.getMessage()}")
        except Exception:  # noqa: BLE001
            pass


def load_pack(path: os.PathLike | str, name: Optional[str] = None) -> dict:
    """Load one custom node pack directory the way ComfyUI's startup scan does.

    The directory is symlinked as ``<custom_nodes>/<name>`` (so the module name, the
    ``LOADED_MODULE_DIRS`` key and ``RELATIVE_PYTHON_MODULE`` use ``name``), then
    ``nodes.load_custom_node`` imports it. Raises RuntimeError (with ComfyUI's log lines)
    if the import or registration fails. Returns ``{name, path, link, node_ids}``.
    """
    _require_boot()
    import nodes

    src = Path(path).resolve()
    if not (src / "__init__.py").is_file():
        raise ValueError(f"{src} is not a custom node pack (no __init__.py)")
    name = name or src.name
    link = _STATE["dirs"]["custom_nodes"] / name
    if link.is_symlink() or link.exists():
        if link.resolve() != src:
            raise RuntimeError(f"a different pack is already linked as {name!r}: {link.resolve()}")
    else:
        link.symlink_to(src, target_is_directory=True)

    before = set(nodes.NODE_CLASS_MAPPINGS)
    cap = _LogCapture()
    root_logger = logging.getLogger()
    root_logger.addHandler(cap)
    try:
        coro = nodes.load_custom_node(str(link), ignore=set(_STATE["builtin_ids"]), module_parent="custom_nodes")
        loop = _STATE.get("loop")
        ok = loop.run_until_complete(coro) if loop else asyncio.run(coro)
    finally:
        root_logger.removeHandler(cap)
    added = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
    if not ok:
        raise RuntimeError(f"custom node pack {src} (as {name!r}) failed to load:\n" + "\n".join(cap.lines[-60:]))
    rec = {"name": name, "path": str(src), "link": str(link), "node_ids": added, "log": cap.lines[-60:]}
    _STATE["packs"].append({k: v for k, v in rec.items() if k != "log"})
    return rec


# --------------------------------------------------------------------------------------
# Progress hook
# --------------------------------------------------------------------------------------


class ProgressRecorder:
    """Global progress-bar hook that mirrors ``main.hijack_progress`` without the websocket.

    On every ``ProgressBar`` update it records ``{value, total, node_id, prompt_id,
    has_preview}``, updates ``comfy_execution.progress`` and, like the real server, checks
    for interruption (``throw_exception_if_processing_interrupted``). With ``interrupt_at``
    = N it calls ``comfy.model_management.interrupt_current_processing()`` on the first
    update whose value reaches N, so the run stops at that step. ``callback(event_dict)`` is
    called for every update (before the interruption check) and may itself interrupt.
    """

    def __init__(self, interrupt_at: Optional[int] = None, callback: Optional[Callable[[dict], Any]] = None,
                 check_interrupt: bool = True):
        self.events: list[dict] = []
        self.interrupt_at = interrupt_at
        self.callback = callback
        self.check_interrupt = check_interrupt
        self.interrupt_requested = False

    def __call__(self, value, total, preview=None, prompt_id=None, node_id=None):
        import comfy.model_management as mm

        try:
            from comfy_execution.utils import get_executing_context

            ctx = get_executing_context()
        except Exception:  # noqa: BLE001
            ctx = None
        if prompt_id is None and ctx is not None:
            prompt_id = ctx.prompt_id
        if node_id is None and ctx is not None:
            node_id = ctx.node_id
        srv = _STATE.get("server")
        if prompt_id is None and srv is not None:
            prompt_id = getattr(srv, "last_prompt_id", None)
        if node_id is None and srv is not None:
            node_id = getattr(srv, "last_node_id", None)
        ev = {"value": value, "total": total, "node_id": node_id, "prompt_id": prompt_id, "has_preview": preview is not None}
        self.events.append(ev)
        if self.callback is not None:
            self.callback(ev)
        if self.interrupt_at is not None and not self.interrupt_requested and value >= self.interrupt_at:
            self.interrupt_requested = True
            mm.interrupt_current_processing(True)
        if self.check_interrupt:
            mm.throw_exception_if_processing_interrupted()
        try:
            from comfy_execution.progress import get_progress_state

            get_progress_state().update_progress(node_id, value, total, preview)
        except Exception:  # noqa: BLE001 - progress registry is best effort
            pass


def set_progress_hook(hook: Optional[Callable]) -> None:
    """Install ``hook(value, total, preview, prompt_id=None, node_id=None)`` globally
    (``comfy.utils.set_progress_bar_global_hook``). Note ``ProgressBar`` captures the hook
    when it is constructed."""
    _require_boot()
    import comfy.utils

    comfy.utils.set_progress_bar_global_hook(hook)
    _STATE["hook"] = hook


def clear_progress_hook() -> None:
    set_progress_hook(None)


def interrupt(value: bool = True) -> None:
    """``comfy.model_management.interrupt_current_processing(value)``."""
    import comfy.model_management as mm

    mm.interrupt_current_processing(value)


# --------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------


def get_executor(new: bool = False):
    """The harness' ``PromptExecutor`` (created lazily; output cache persists across runs
    like in the real server). ``new=True`` replaces it."""
    _require_boot()
    import execution

    if new or _STATE.get("executor") is None:
        if _STATE["new_executor"]:
            ex = execution.PromptExecutor(_STATE["server"], cache_type=False, cache_args={"lru": 0, "ram": 0})
        else:
            ex = execution.PromptExecutor(_STATE["server"], cache_type=False, cache_size=0)
        _STATE["executor"] = ex
    return _STATE["executor"]


def reset_executor() -> None:
    """Drop all cached node outputs (``PromptExecutor.reset()``)."""
    get_executor().reset()


def _run_async(coro):
    loop = _STATE.get("loop")
    return loop.run_until_complete(coro) if loop else asyncio.run(coro)


def validate_prompt(api_prompt: dict, prompt_id: Optional[str] = None, partial_execution_list=None):
    """``execution.validate_prompt`` -> (valid, error, outputs_to_execute, node_errors)."""
    _require_boot()
    import execution

    return _run_async(execution.validate_prompt(prompt_id or str(uuid.uuid4()), api_prompt, partial_execution_list))


class _PromptResultBase(NamedTuple):
    success: bool
    outputs: dict
    status_messages: list


class PromptResult(_PromptResultBase):
    """``(success, outputs, status_messages)`` plus attributes: ``prompt_id``,
    ``valid``, ``validation_error``, ``node_errors``, ``error`` (execution_error data or
    None), ``interrupted``, ``progress`` (list of events), ``elapsed_s``, ``executed``."""

    def to_json(self) -> dict:
        return {
            "success": self.success,
            "outputs": self.outputs,
            "status_messages": [[e, d] for e, d in self.status_messages],
            **{k: getattr(self, k, None) for k in (
                "prompt_id", "valid", "validation_error", "node_errors", "error", "interrupted",
                "progress", "elapsed_s", "executed", "server_messages")},
        }


def _make_result(success, outputs, status_messages, **attrs) -> PromptResult:
    r = PromptResult(success, outputs, status_messages)
    for k, v in attrs.items():
        setattr(r, k, v)
    return r


def run_prompt(
    api_prompt: dict,
    *,
    prompt_id: Optional[str] = None,
    extra_data: Optional[dict] = None,
    progress: Optional[ProgressRecorder | Callable] = None,
    interrupt_at_step: Optional[int] = None,
    fresh_cache: bool = False,
    validate: bool = True,
    execute_outputs: Optional[list] = None,
) -> PromptResult:
    """Validate and execute an API prompt. Returns :class:`PromptResult`.

    * Validation failure: ``success=False``, nothing executed, ``status_messages`` holds one
      synthetic ``("validation_error", {"error", "node_errors"})`` entry.
    * ``progress``: a :class:`ProgressRecorder` (or any hook callable) installed for this run;
      by default a fresh recorder (with ``interrupt_at=interrupt_at_step``) is used. The
      previous global hook is restored afterwards.
    * ``fresh_cache``: reset the executor's output cache first (otherwise unchanged nodes are
      served from cache, as in the real server).
    """
    _require_boot()
    import comfy.utils

    prompt_id = prompt_id or str(uuid.uuid4())
    extra_data = dict(extra_data or {})
    # Act like a connected frontend client: NEW (0.8.0) only reports the UI output of nodes
    # served from cache when server.client_id is set.
    extra_data.setdefault("client_id", "confiner-harness")
    if validate:
        valid, err, outputs_to_execute, node_errors = validate_prompt(api_prompt, prompt_id)
        if not valid:
            msg = ("validation_error", {"prompt_id": prompt_id, "error": err, "node_errors": node_errors})
            return _make_result(False, {}, [msg], prompt_id=prompt_id, valid=False, validation_error=err,
                                node_errors=node_errors, error=None, interrupted=False, progress=[],
                                elapsed_s=0.0, executed=[], server_messages=[])
    else:
        outputs_to_execute, node_errors = list(execute_outputs or []), {}
    if execute_outputs is not None:
        outputs_to_execute = list(execute_outputs)

    recorder = progress if progress is not None else ProgressRecorder(interrupt_at=interrupt_at_step)
    if isinstance(recorder, ProgressRecorder) and interrupt_at_step is not None and recorder.interrupt_at is None:
        recorder.interrupt_at = interrupt_at_step
    prev_hook = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(recorder)
    ex = get_executor()
    if fresh_cache:
        ex.reset()
    srv = _STATE["server"]
    srv_log = srv.messages if isinstance(srv, StubServer) else []
    n_srv = len(srv_log)
    srv.last_prompt_id = prompt_id
    t0 = time.perf_counter()
    try:
        loop = _STATE.get("loop")
        if loop is not None:
            loop.run_until_complete(ex.execute_async(api_prompt, prompt_id, extra_data, outputs_to_execute))
        else:
            ex.execute(api_prompt, prompt_id, extra_data, outputs_to_execute)
    finally:
        comfy.utils.set_progress_bar_global_hook(prev_hook)
    elapsed = time.perf_counter() - t0

    status = list(ex.status_messages)
    error = next((d for e, d in status if e == "execution_error"), None)
    interrupted = any(e == "execution_interrupted" for e, _ in status)
    success = bool(ex.success) and error is None and not interrupted
    outputs = dict(getattr(ex, "history_result", {}) or {}).get("outputs", {})
    executed = []
    for e, d in status:
        if e in ("execution_error", "execution_interrupted"):
            executed = list(d.get("executed", []))
    return _make_result(
        success, outputs, status, prompt_id=prompt_id, valid=True, validation_error=None,
        node_errors=node_errors, error=error, interrupted=interrupted,
        progress=list(getattr(recorder, "events", [])), elapsed_s=round(elapsed, 3), executed=executed,
        server_messages=list(srv_log[n_srv:]),
    )


def input_types(class_type: str) -> Optional[dict]:
    """``NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()`` (None if unknown)."""
    _require_boot()
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS.get(class_type)
    return None if cls is None else cls.INPUT_TYPES()


def workflow_to_api(workflow: dict, **kwargs) -> dict:
    """Convert a UI-format workflow with the booted backend's node definitions."""
    _require_boot()
    import nodes

    from .ui_to_api import input_types_from_mappings, ui_to_api

    kwargs.setdefault("display_names", lambda ct: nodes.NODE_DISPLAY_NAME_MAPPINGS.get(ct))
    return ui_to_api(workflow, input_types_from_mappings(nodes.NODE_CLASS_MAPPINGS), **kwargs)


def run_workflow(workflow: dict, **run_kwargs) -> PromptResult:
    """``run_prompt(workflow_to_api(workflow))``; the UI workflow goes into
    ``extra_pnginfo.workflow`` like the frontend does."""
    api = workflow_to_api(workflow)
    extra = dict(run_kwargs.pop("extra_data", None) or {})
    extra.setdefault("extra_pnginfo", {"workflow": workflow})
    return run_prompt(api, extra_data=extra, **run_kwargs)


def cleanup_models() -> None:
    """Between tests: unload models and empty caches."""
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.soft_empty_cache()
