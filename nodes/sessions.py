"""Stage sessions: the expert evaluations of a stage served by long-lived ComfyUI sampling calls.

ConFiner's core runs its own loops and calls an expert once per evaluation. ComfyUI's sampling machinery (loading
and patching the model, conditioning, every ``WrappersMP`` wrapper such as AnimateDiff-Evolved's, ControlNet, hooks,
clean-up) is built around one sampling call (``CFGGuider.sample``) from inside which a sampler function evaluates
the model. A **session** is such a call held open for one expert across a stage, on a helper thread: its sampler
function waits for the core's requests and answers each with one evaluation, as a sampler at that step would make
it. What a call sets up and tears down (``load_models_gpu``, ``pre_run``, ADE's outer wrapper, conditioning,
``cleanup``) then happens once per expert and stage instead of once per evaluation.

Exactly one thread runs at a time (the node's, or the session serving the current evaluation), so ComfyUI never
sees two things at once. Where sessions meet:

* **One base model.** SD 1.5 and SD 1.5 + AnimateDiff are clones of one ModelPatcher, and ComfyUI keeps one clone
  patched at a time. A session resumed after another one has loaded its clone loads itself again as its sampling call
  did (the recorded ``prepare_sampling`` call: weights, object patches, injections such as ADE's motion modules,
  ControlNets), becomes the model's current patcher again and re-runs ControlNet's ``pre_run`` for its model.
* **Module attributes** that wrappers replace for the length of a call (ADE swaps in its own
  ``comfy.samplers.sampling_function``) belong to the session that replaced them: each session sees its own while it
  runs; the node's thread and the other sessions see theirs.
* Two experts on the very same MODEL share its AnimateDiff state, so their sessions are never open together.
* **Expert pairs** (Wan 2.2 A14B: a high- and a low-noise model in one role) hand over once per stage, at the noise
  boundary: the high-noise member's session ends when the low-noise one's opens, so its model can be evicted.
* **Other models in between.** The node's thread may run other models between evaluations (a bridge's or a pixel
  frame expert's VAE): before every evaluation a session checks that its model is still the loaded, current one and
  loads it again if not.

A session ends with its stage (the node's :func:`stage` block), when an evaluation would move its step backwards
(ConFiner-Long's next segment) or brings other conditioning, sigmas or shape, and on any error or Cancel: its
sampling call then returns through ComfyUI's own clean-up, so no model stays patched and every replaced attribute
is restored. Sessions are on by default (``CONFINER_STAGE_SESSIONS=0`` switches them off, see :data:`ENABLED`);
without them, outside a :func:`stage` block (scripts, tests), for a timestep outside the stage's plan and for an
expert whose session a wrapper ended early (:class:`SessionEnded`), an evaluation is a sampling call of its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading

import torch

import comfy.k_diffusion.sampling
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers

# On by default since 2026-12-02 (fifth session). On an H200 (bench/RESULTS.md, "Inside ComfyUI") the basic template
# takes 3.20 ms of host time per evaluation with sessions against 6.08 ms with one sampling call per evaluation and
# 4.08 ms per KSampler step, end to end 2.323 against 2.369 s (runs 2.307-2.331 against 2.352-2.371 s). Earlier,
# while every evaluation's finiteness check made the host wait for the next forward, the gain stayed inside the runs'
# spread (2.383 against 2.451 s) and sessions were opt-in; on fresh threads per session (torch's per-thread cuDNN
# caches rebuilt every stage) they lost (5.47 against 3.89 s), hence the long-lived workers (_Worker). A wrapper that
# returns from a session's sampling call without running the sampler ends that session: the expert then falls back
# to one sampling call per evaluation (SessionEnded). CONFINER_STAGE_SESSIONS=0 switches sessions off.
ENABLED = os.environ.get("CONFINER_STAGE_SESSIONS", "1").strip().lower() not in ("0", "false", "no", "off")

# Attributes that sampling-call wrappers replace for the length of a call: AnimateDiff-Evolved swaps
# sampling_function (every call), GroupNorm's forwards (v1/v2/PIA motion models) and default_noise_sampler
# (ancestral options); the others are ComfyUI's hook points that packs patch the same way.
SWAPPED = ((comfy.samplers, "sampling_function"), (comfy.samplers, "calc_cond_batch"),
           (comfy.samplers, "cfg_function"), (comfy.k_diffusion.sampling, "default_noise_sampler"),
           (torch.nn.GroupNorm, "forward"), (comfy.ops.disable_weight_init.GroupNorm, "forward_comfy_cast_weights"))
SWAPPED_ON_MODEL = ("memory_required",)  # set on the shared BaseModel by ADE's unlimited-area hack
_MISSING = object()
_CURRENT: contextvars.ContextVar = contextvars.ContextVar("confiner_stage", default=None)
log = logging.getLogger(__name__)


@contextlib.contextmanager
def stage(force: bool = False):
    """Inside, every expert's in-plan evaluations are served by its session (when :data:`ENABLED`, or ``force``); on
    exit all sessions end (last opened first) and leave ComfyUI as finished sampling runs do. Nested blocks share the
    outer one."""
    if not (ENABLED or force) or _CURRENT.get() is not None:
        yield _CURRENT.get()
        return
    current = Stage()
    token = _CURRENT.set(current)
    try:
        yield current
    except BaseException:
        _CURRENT.reset(token)
        current.close(raise_errors=False)  # the error that ended the stage is the one to report
        raise
    _CURRENT.reset(token)
    current.close()


def evaluate(expert, x_host: torch.Tensor, sigmas: list, step: int, conds: tuple, in_plan: bool = True):
    """One evaluation of ``expert`` (a :class:`nodes.host.ComfyExpert`) at ``sigmas[step]`` on ComfyUI's latent
    ``x_host``: (denoised latent on the model's device, network forwards). In a :func:`stage` and in the stage's
    plan it is served by the expert's session, otherwise (and once a wrapper ended the expert's session early,
    :class:`SessionEnded`) by a sampling call of its own."""
    current = _CURRENT.get()
    if current is None or not in_plan:
        return single_evaluation(expert, x_host, sigmas, step, conds)
    return current.evaluate(expert, x_host, sigmas, step, conds)


def single_evaluation(expert, x_host, sigmas, step, conds):
    """A sampling call that makes one evaluation: the stage's sigmas, and as many sampler callbacks before it as a
    sampler at ``step`` would have sent."""
    call = SamplingCall(expert, sigmas, conds)
    out = {}

    def serve(model, x_in, sigmas_in, extra_args=None, callback=None, disable=None):
        out["x0"] = call.evaluate(model, x_in, sigmas_in, extra_args, callback, x_host, step)
        return x_in

    call.run(x_host, serve)
    return out["x0"], call.network_calls


class SamplingCall:
    """One ``CFGGuider.sample`` call of an expert over a stage's sigmas, with ``serve`` as its sampler function.
    Counts the network forwards (``apply_model`` calls) and records its ``prepare_sampling`` call, so a session can
    load its model again the same way."""

    def __init__(self, expert, sigmas: list, conds: tuple):
        positive, negative, cfg = conds
        self.expert, self.sigmas = expert, sigmas
        self.guider = comfy.samplers.CFGGuider(expert.model)
        self.guider.set_conds(positive, negative)
        self.guider.set_cfg(cfg)
        self.guider.model_options = comfy.model_patcher.create_model_options_clone(self.guider.model_options)
        self.network_calls = 0
        self.callbacks_sent = 0
        self.prepare = None
        add = comfy.patcher_extension.add_wrapper_with_key
        WrappersMP = comfy.patcher_extension.WrappersMP
        add(WrappersMP.APPLY_MODEL, "confiner_forwards", self._count, self.guider.model_options, is_model_options=True)
        add(WrappersMP.PREPARE_SAMPLING, "confiner_sessions", self._record_prepare, self.guider.model_options,
            is_model_options=True)

    def _count(self, executor, *args, **kwargs):
        self.network_calls += 1
        return executor(*args, **kwargs)

    def _record_prepare(self, executor, *args, **kwargs):
        self.prepare = (args, kwargs)
        return executor(*args, **kwargs)

    def run(self, x_first: torch.Tensor, serve) -> None:
        latent_image = self.expert.latent_format.process_out(x_first)  # the guider applies process_in again
        self.guider.sample(torch.zeros_like(latent_image), latent_image, comfy.samplers.KSAMPLER(serve),
                           torch.tensor(self.sigmas), disable_pbar=True, seed=self.expert.seed)

    @torch.no_grad()
    def evaluate(self, model, x_in, sigmas, extra_args, callback, x_host, step: int) -> torch.Tensor:
        """Inside the sampler function: the callbacks a sampler sends before step ``step`` (AnimateDiff-Evolved
        advances its step on each; native context windows read the step off ``sample_sigmas``), then the model."""
        if callback is not None:
            while self.callbacks_sent < step:
                i = self.callbacks_sent
                callback({"i": i, "denoised": x_in, "x": x_in, "sigma": sigmas[i], "sigma_hat": sigmas[i]})
                self.callbacks_sent += 1
        return model(x_host.to(x_in), sigmas[step] * x_in.new_ones([x_in.shape[0]]), **(extra_args or {}))

    def reacquire(self) -> None:
        """Make this call's model the loaded, patched, current one again if another call loaded a clone of it or
        another model evicted it (a VAE on the node's thread): the recorded ``prepare_sampling`` call, the current
        patcher, ControlNet's ``pre_run``. Nothing when the model is still in place."""
        patcher = self.guider.model_patcher
        base = patcher.model
        models = [patcher, *getattr(self.guider, "loaded_models", [])]
        loaded = [lm.model for lm in comfy.model_management.current_loaded_models]
        if getattr(base, "current_patcher", patcher) is patcher and all(any(m is l for l in loaded) for m in models):
            return
        args, kwargs = self.prepare
        comfy.sampler_helpers.prepare_sampling(*args, **kwargs)
        if hasattr(base, "current_patcher"):
            base.current_patcher = patcher
        for conds in self.guider.conds.values():
            comfy.samplers.pre_run_control(base, conds)


# ------------------------------------------------------------------------------------------------------------------

def _read(slots) -> dict:
    return {slot: vars(slot[0]).get(slot[1], _MISSING) for slot in slots}


def _write(values: dict) -> None:
    for (owner, name), value in values.items():
        if vars(owner).get(name, _MISSING) is value:
            continue
        if value is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, value)


def _thread_state() -> dict:
    """What a helper thread must share with the node's thread (torch keeps these per thread)."""
    state = {"inference": torch.is_inference_mode_enabled(), "grad": torch.is_grad_enabled(),
             "threads": torch.get_num_threads()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["device"], state["stream"] = torch.cuda.current_device(), torch.cuda.current_stream()
    return state


@contextlib.contextmanager
def _entered(state: dict):
    torch.set_num_threads(state["threads"])
    with torch.inference_mode(state["inference"]), torch.set_grad_enabled(state["grad"]):
        if "device" in state:
            torch.cuda.set_device(state["device"])
            with torch.cuda.stream(state["stream"]):
                yield
        else:
            yield


class _Worker(threading.Thread):
    """A helper thread that serves sessions one after another, kept for the life of the process.

    PyTorch keeps some caches per thread: cuDNN's convolution plans and its attention graphs (SDPA's cuDNN backend)
    are ``thread_local``. A fresh thread per session started each stage with empty caches and rebuilt every plan on
    its first forwards, host work that left the GPU idle; workers that live on keep theirs warm from run to run. Idle
    workers wait in :attr:`idle` (last in, first out, so the same few threads serve every run)."""

    IDLE_NAME = "ConFiner session worker (idle)"
    idle: list = []
    lock = threading.Lock()

    def __init__(self):
        super().__init__(name=self.IDLE_NAME, daemon=True)
        self.job = None
        self.ready = threading.Semaphore(0)
        self.start()

    @classmethod
    def take(cls) -> "_Worker":
        with cls.lock:
            return cls.idle.pop() if cls.idle else cls()

    def serve(self, name: str, context: contextvars.Context, fn, *args) -> None:
        self.name = name
        self.job = (context, fn, args)
        self.ready.release()

    def done(self) -> None:
        """Called by the job, on this thread, just before it hands its last answer to the node's thread: from then
        on this worker serves no session and may be taken again (its next job waits for :meth:`serve`)."""
        self.name = self.IDLE_NAME
        with self.lock:
            self.idle.append(self)

    def run(self):
        while True:
            self.ready.acquire()
            context, fn, args = self.job
            self.job = None
            context.run(fn, *args)  # fn catches everything and hands it to the node's thread
            # while it waits, this thread's frame must hold nothing of the session it served: its bound method
            # keeps the session, and through it the expert's models, alive after ComfyUI has let them go
            del context, fn, args


class Session:
    """One expert's sampling call held open on a helper thread (a :class:`_Worker`). The node's thread hands it a
    request and waits; the helper answers and waits for the next: exactly one of them runs at a time."""

    def __init__(self, expert, sigmas: list, conds: tuple, x_host: torch.Tensor):
        self.expert, self.sigmas, self.conds = expert, list(sigmas), conds
        self.shape = (tuple(x_host.shape), x_host.dtype, x_host.device)
        self.call = SamplingCall(expert, sigmas, conds)
        self.last_step = -1
        self.thread = None    # the worker serving this session once it started
        self.finished = threading.Event()  # the worker is done with this session (answered its last message)
        self.ended = False
        self.saved = None  # this session's values of the swapped attributes while it waits
        self.message = None
        self._to_helper = threading.Semaphore(0)
        self._to_main = threading.Semaphore(0)

    @property
    def patcher(self):
        return self.expert.model

    def serves(self, sigmas: list, conds: tuple, x_host: torch.Tensor, step: int) -> bool:
        same_conds = all(a is b for a, b in zip(conds[:2], self.conds[:2])) and conds[2] == self.conds[2]
        return (not self.ended and same_conds and list(sigmas) == self.sigmas and step >= self.last_step
                and (tuple(x_host.shape), x_host.dtype, x_host.device) == self.shape)

    # -- node's thread -------------------------------------------------------------------------------------------
    def evaluate(self, x_host, step: int, slots) -> tuple:
        reply = self._turn(("evaluate", x_host, step), slots)
        if reply[0] == "result":
            self.last_step = step
            return reply[1], reply[2]
        self._join()
        if reply[0] == "error":
            raise reply[1]
        raise SessionEnded(f"the {self.expert.name} expert's sampling call ended before its evaluation (a sampling "
                           f"wrapper returned without running the sampler)")

    def close(self, slots) -> None:
        if self.thread is None or self.ended:
            return
        reply = self._turn(("close",), slots)
        self._join()
        if reply[0] == "error":
            raise reply[1]

    def _turn(self, message, slots):
        outside = _read(slots)
        if self.saved is not None:
            _write({slot: value for slot, value in self.saved.items() if slot in outside})
        try:
            self.message = message
            if self.thread is None:
                self.thread = _Worker.take()
                self.thread.serve(f"ConFiner {self.expert.name} expert session", contextvars.copy_context(),
                                  self._thread_main, message[1], _thread_state())
            else:
                self._to_helper.release()
            while not self._to_main.acquire(timeout=1.0):
                if (self.finished.is_set() or not self.thread.is_alive()) and not self._to_main.acquire(timeout=0.1):
                    self.ended = True
                    raise RuntimeError(f"ConFiner: the {self.expert.name} expert's sampling thread ended without "
                                       f"an answer")
            return self.message
        finally:
            self.saved = _read(slots)
            _write(outside)

    def _join(self):
        self.ended = True
        while not self.finished.wait(timeout=1.0) and self.thread.is_alive():
            pass

    # -- helper thread -------------------------------------------------------------------------------------------
    def _thread_main(self, x_first, state):
        try:
            with _entered(state):
                self.call.run(x_first, self._serve)
            reply = ("closed",)
        except BaseException as e:  # noqa: BLE001 - handed to the node's thread, which raises it
            reply = ("error", e)
        self.ended = True
        self.message = reply
        self.thread.done()
        self.finished.set()
        self._to_main.release()

    def _serve(self, model, x_in, sigmas, extra_args=None, callback=None, disable=None):
        while self.message[0] == "evaluate":
            _, x_host, step = self.message
            self.call.reacquire()
            before = self.call.network_calls
            x0 = self.call.evaluate(model, x_in, sigmas, extra_args, callback, x_host, step)
            self.message = ("result", x0, self.call.network_calls - before)
            self._to_main.release()
            self._to_helper.acquire()
        return x_in  # closing: the sampling call returns through ComfyUI's clean-up


class SessionEnded(RuntimeError):
    """A session's sampling call returned before serving the evaluation it was asked for: a wrapper returned from
    the sampling call without running the sampler. The stage then evaluates that expert by sampling calls of its own
    (the outputs are the same, only slower)."""


class Stage:
    """The open sessions of a node's stage, one per expert."""

    def __init__(self):
        self.sessions: dict = {}  # expert -> Session, in opening order
        self.single_call_experts: set = set()  # experts whose session ended early: one sampling call an evaluation

    def slots(self) -> list:
        bases = {id(s.patcher.model): s.patcher.model for s in self.sessions.values()}
        return [*SWAPPED, *((base, name) for base in bases.values() for name in SWAPPED_ON_MODEL)]

    def evaluate(self, expert, x_host, sigmas, step, conds) -> tuple:
        if expert in self.single_call_experts:
            self.end_sharing(expert)
            return single_evaluation(expert, x_host, sigmas, step, conds)
        session = self.sessions.get(expert)
        if session is not None and not session.serves(sigmas, conds, x_host, step):
            self.end(session)
            session = None
        if session is None:
            self.end_sharing(expert)
            session = self.sessions[expert] = Session(expert, sigmas, conds, x_host)
        try:
            return session.evaluate(x_host, step, self.slots())
        except SessionEnded as e:
            self.sessions.pop(expert, None)
            self.single_call_experts.add(expert)
            log.warning("ConFiner: %s; its evaluations in this stage are sampling calls of their own "
                        "(CONFINER_STAGE_SESSIONS=0 does this for every expert)", e)
            self.end_sharing(expert)
            return single_evaluation(expert, x_host, sigmas, step, conds)
        except BaseException:
            self.sessions.pop(expert, None)
            raise

    def end_sharing(self, expert) -> None:
        """End the sessions that must not be open while ``expert`` evaluates: those on the same MODEL (shared
        AnimateDiff state) and the other member of the expert's pair (same role)."""
        for other in [s for s in self.sessions.values()
                      if s.expert is not expert and (s.patcher is expert.model or s.expert.name == expert.name)]:
            self.end(other)

    def end(self, session: Session) -> None:
        self.sessions.pop(session.expert, None)
        session.close(self.slots() + [(session.patcher.model, n) for n in SWAPPED_ON_MODEL])

    def close(self, raise_errors: bool = True) -> None:
        first = None
        for session in reversed(list(self.sessions.values())):
            try:
                self.end(session)
            except BaseException as e:  # noqa: BLE001 - every session must end; the first error is reported
                log.debug("ConFiner: ending the %s expert's session failed: %s", session.expert.name, e)
                first = first or e
        if first is not None and raise_errors:
            raise first
