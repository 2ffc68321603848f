"""ConFiner-Long on several processes of one host: ``torchrun --nproc-per-node N -m confiner_core generate ...``.

PyTorch's own engine does the work: torchrun starts the processes and hosts the rendezvous store,
``torch.distributed`` moves the tensors (NCCL between GPUs, gloo on the CPU). This module is the machinery; *what*
runs where is ConFiner-Long's dependency structure, in :func:`confiner_core.long.generate_long`:

* structure i is made by rank i mod N; with coherence guidance (Eq. 12) its control step k needs structure i-1's
  step k, which arrives from rank i-1 over the ring as soon as it is computed, so N ranks run a wavefront one
  control step apart (gamma = 0: no messages, structures are independent);
* window w (Eq. 13: S_w[L/2:] + S_{w+1}[:L/2]) is refined by the rank of S_{w+1}, which receives the finished S_w
  from the previous rank over the same ring; windows are otherwise independent;
* every window is decoded where it was refined and sent to rank 0, which writes the video in order (atomic outputs,
  metrics, resume state) as a single process does.

Every task draws from its own generator (:func:`confiner_core.long.task_generator`), so the result does not depend
on N. With one process (no torchrun) nothing here runs: :data:`SINGLE` is the normal path.

**Failures.** A rank that raises announces it in the rendezvous store before it exits; every rank's watchdog thread
polls the store (and the others' heartbeats) and stops its main thread, which cleans up and exits with one line.
Every wait for a message has a deadline (``CONFINER_DIST_TIMEOUT`` seconds, default 1800, also the process groups'
timeout); a peer whose connection drops is named. SIGTERM (torchrun stops all processes when one fails) is handled
like Ctrl-C: rank 0's outputs are atomic, so nothing is written.

**Message order.** Each direction of each channel (ring r -> r+1, results q -> 0) has its own two-rank process group,
so on every NCCL communicator traffic goes one way and messages are matched in the order they are sent; the groups
are connected one by one in one global order at start (no lazy initialisation mid-run).
"""

from __future__ import annotations

import _thread
import contextlib
import datetime
import json
import os
import queue
import re
import signal
import sys
import threading
import time
import warnings
from typing import Callable

import torch

from .errors import ConFinerWarning, RankFailed, UsageError, one_line
from .long import RESULT, RING, Solo

TIMEOUT_ENV = "CONFINER_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
HEARTBEAT_S = 1.0       # each rank writes its heartbeat this often
STALE_S = 60.0          # a rank whose heartbeat is this old (or the timeout, if shorter) is taken for dead
POLL_S = 0.1            # the watchdog's period
GRACE_S = 10.0          # after a peer failure, the main thread has this long to clean up before a forced exit

MAX_TENSORS, MAX_DIMS = 6, 6
HEADER = 2 + MAX_TENSORS * (2 + MAX_DIMS)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int64, torch.int32,
          torch.bool)


def timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}", TIMEOUT_ENV) from None
    if not value > 0:
        raise UsageError(f"{TIMEOUT_ENV} must be > 0 seconds, got {text!r}", TIMEOUT_ENV)
    return value


def launch_env() -> dict | None:
    """torchrun's environment (WORLD_SIZE > 1), or None for a single process."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise UsageError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start several processes with "
                         f"torchrun --nproc-per-node N -m confiner_core generate ...", "WORLD_SIZE")
    rank = int(env["RANK"])
    local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    if local_world != world:
        raise UsageError(f"this run has {world} processes on several hosts ({local_world} here); ConFiner-Long "
                         f"spreads over the GPUs of one host: use torchrun --nnodes 1", "WORLD_SIZE")
    return {"rank": rank, "world": world, "local_rank": int(env.get("LOCAL_RANK", rank)),
            "host": env["MASTER_ADDR"], "port": int(env["MASTER_PORT"]),
            "agent_store": env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
            "prefix": f"confiner/{env.get('TORCHELASTIC_RUN_ID', 'run')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"}


def rank_device(device: str, local_rank: int) -> str:
    """The device of the process of ``local_rank`` for ``--device``: the GPU of its LOCAL_RANK, or the CPU."""
    d = torch.device(device)
    if d.type == "cpu":
        return "cpu"
    if d.type != "cuda":
        raise UsageError(f"--device {device}: a run over several processes supports cpu (gloo) and cuda (NCCL)",
                         "--device")
    if d.index is not None:
        raise UsageError(f"--device {device}: under torchrun every process takes the GPU of its LOCAL_RANK; "
                         f"give --device cuda", "--device")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UsageError(f"--device cuda: the process of LOCAL_RANK {local_rank} has no GPU of its own (this host "
                         f"has {count}); use torchrun --nproc-per-node {max(count, 1)} or fewer", "--device")
    return f"cuda:{local_rank}"


class Single(Solo):
    """One process: the normal path. The same interface as :class:`Ranks`."""

    failed = False

    def device_for(self, device: str) -> str:
        return device

    def agree(self, check: Callable[[], None]) -> None:
        check()

    def barrier(self) -> None:
        pass

    def connect(self, device: str) -> None:
        pass

    def peer_failure(self) -> RankFailed | None:
        return None

    def stopping(self) -> None:
        pass

    def on_abort(self, cleanup: Callable[[], None]) -> None:
        pass

    def describe(self) -> dict:
        return {"processes": 1}


SINGLE = Single()


# ----------------------------------------------------------------------------------------------------------------
# Messages: a header (sizes, dtypes, shapes), JSON metadata, the tensors

def _header(tensors: list, meta_bytes: int) -> torch.Tensor:
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"a message holds at most {MAX_TENSORS} tensors, got {len(tensors)}")
    h = [len(tensors), meta_bytes]
    for t in tensors:
        if t.ndim > MAX_DIMS:
            raise ValueError(f"a message tensor has at most {MAX_DIMS} dimensions, got {t.ndim}")
        h += [DTYPES.index(t.dtype), t.ndim] + list(t.shape) + [0] * (MAX_DIMS - t.ndim)
    return torch.tensor(h + [0] * (HEADER - len(h)), dtype=torch.int64)


def _specs(header: list) -> tuple[int, list]:
    n, meta_bytes = header[0], header[1]
    specs = []
    for k in range(n):
        at = 2 + k * (2 + MAX_DIMS)
        dtype, ndim = DTYPES[header[at]], header[at + 1]
        specs.append((dtype, tuple(header[at + 2:at + 2 + ndim])))
    return meta_bytes, specs


class Ranks(Solo):
    """This process's place in a multi-process run: rank, world size, its device, the message channels, the
    rendezvous store, the watchdog. Made by :func:`session`."""

    def __init__(self, env: dict):
        self.rank, self.world, self.local_rank = env["rank"], env["world"], env["local_rank"]
        self.timeout = timeout_s()
        self.stale = min(STALE_S, self.timeout)
        delta = datetime.timedelta(seconds=self.timeout)
        import torch.distributed as dist

        self.dist = dist
        master = self.rank == 0 and not env["agent_store"]
        raw = dist.TCPStore(env["host"], env["port"], self.world if master else None, master, timeout=delta,
                            wait_for_workers=False)
        self._raw_store = raw
        self.hosts_store = master
        self.store = dist.PrefixStore(env["prefix"], raw)
        # the process group of the control plane is gloo (CPU) whatever the device: the channels get their own
        dist.init_process_group("gloo", store=dist.PrefixStore(env["prefix"] + "/pg", raw), rank=self.rank,
                                world_size=self.world, timeout=delta)
        self.links: dict[tuple, object] = {}
        self.backend, self.transport = "gloo", torch.device("cpu")
        self.failed = False
        self.reason: RankFailed | None = None    # a peer's failure, as seen by the watchdog or a wait
        self.exiting = False
        self.cleanups: list[Callable[[], None]] = []
        self.in_main = threading.current_thread() is threading.main_thread()
        self._rounds = 0
        self._lock = threading.RLock()  # orders the watchdog's trip against the main thread's waits
        self.waiting = False
        self._sent: queue.Queue = queue.Queue()
        self._send_error: tuple | None = None
        threading.Thread(target=self._reap_sends, name="confiner-sends", daemon=True).start()
        self.store.set(f"beat/{self.rank}", repr(time.time()))
        self.watchdog = Watchdog(self, dist.PrefixStore(env["prefix"], dist.TCPStore(
            env["host"], env["port"], None, False, timeout=delta)))
        self.watchdog.start()

    # -- devices ----------------------------------------------------------------------------------------------
    def device_for(self, device: str) -> str:
        """This rank's device; a GPU becomes the current device at once, so nothing lands on GPU 0 by default."""
        mine = rank_device(device, self.local_rank)
        if mine.startswith("cuda"):
            torch.cuda.set_device(torch.device(mine))
        return mine

    def describe(self) -> dict:
        return {"processes": self.world, "backend": self.backend}

    # -- the control plane (rendezvous store) -------------------------------------------------------------------
    @contextlib.contextmanager
    def _waiting(self):
        """The main thread waits: a peer failure is raised here (not by interrupting the thread)."""
        with self._lock:
            self.waiting = True
        try:
            yield
        finally:
            with self._lock:
                self.waiting = False
                tripped = self.reason
        if tripped is not None:
            raise tripped.copy()

    def _wait_keys(self, keys: list, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        with self._waiting():
            while not self.store.check(keys):
                self._check(deadline, what)
                time.sleep(0.005)

    def agree(self, check: Callable[[], None]) -> None:
        """Run ``check`` on every rank; if it raised a UsageError anywhere, raise the first rank's on every rank
        (only rank 0 prints it)."""
        key = f"agree/{self._rounds}"
        self._rounds += 1
        mine = ""
        try:
            check()
        except UsageError as e:
            mine = json.dumps({"message": str(e), "option": e.option})
        self.store.set(f"{key}/{self.rank}", mine)
        self._wait_keys([f"{key}/{r}" for r in range(self.world)], "the other processes' checks")
        for r in range(self.world):
            value = self.store.get(f"{key}/{r}").decode()
            if value:
                error = json.loads(value)
                raise UsageError(error["message"], error["option"])

    def barrier(self) -> None:
        self.agree(lambda: None)

    # -- channels -----------------------------------------------------------------------------------------------
    def connect(self, device: str) -> None:
        """One two-rank process group per direction of each channel (NCCL for CUDA devices, gloo on the CPU),
        created and warmed up in one global order on every rank."""
        dist = self.dist
        if torch.device(device).type == "cuda":
            self.backend, self.transport = "nccl", torch.device(device)
            torch.cuda.set_device(self.transport)
        order = [(RING, r, (r + 1) % self.world) for r in range(self.world)]
        order += [(RESULT, q, 0) for q in range(1, self.world)]
        # the groups' own timeout (NCCL's watchdog aborts the process) comes after ours, which says what hung
        delta = datetime.timedelta(seconds=2 * self.timeout + 60)
        for key in order:
            self.links[key] = dist.new_group([key[1], key[2]], timeout=delta, backend=self.backend)
        for channel, src, dst in order:  # first use connects a communicator: both ends, in the same order
            if self.rank == src:
                self.send(dst, channel, [])
                self.flush()
            elif self.rank == dst:
                self.recv(src, channel)

    def send(self, dst: int, channel: str, tensors: list, meta: dict | None = None) -> None:
        """Queue a message (non-blocking: a background thread sees each part delivered)."""
        self._raise_send_error()
        group = self.links[(channel, self.rank, dst)]
        data = json.dumps(meta).encode() if meta else b""
        parts = [_header(tensors, len(data))]
        if data:
            parts.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        parts += [t.detach() for t in tensors]
        for part in parts:   # a copy: the caller may reuse its tensor while the message is on its way
            part = part.to(self.transport, copy=True, memory_format=torch.contiguous_format)
            try:
                work = self.dist.isend(part, dst, group=group)
            except RuntimeError as e:   # gloo may see a peer's closed connection when the send is posted
                raise self.lost(dst, f"sending a {channel} message: {one_line(e)}") from None
            self._sent.put((work, part, dst, channel))

    def recv(self, src: int, channel: str) -> tuple[list, dict]:
        """The next message from ``src`` on ``channel``: (tensors on the transport device, metadata)."""
        group = self.links[(channel, src, self.rank)]
        what = f"a {channel} message"
        header = torch.empty(HEADER, dtype=torch.int64, device=self.transport)
        self._wait(self._irecv(header, src, group, what), what, src)
        meta_bytes, specs = _specs(header.tolist())
        meta = {}
        if meta_bytes:
            buf = torch.empty(meta_bytes, dtype=torch.uint8, device=self.transport)
            self._wait(self._irecv(buf, src, group, what), what, src)
            meta = json.loads(bytes(buf.cpu().numpy()).decode())
        tensors = []
        for dtype, shape in specs:
            t = torch.empty(shape, dtype=dtype, device=self.transport)
            self._wait(self._irecv(t, src, group, what), what, src)
            tensors.append(t)
        return tensors, meta

    def _irecv(self, tensor: torch.Tensor, src: int, group, what: str):
        try:
            return self.dist.irecv(tensor, src, group=group)
        except RuntimeError as e:   # gloo may see a peer's closed connection when the receive is posted
            raise self.lost(src, f"receiving {what}: {one_line(e)}") from None

    def flush(self) -> None:
        """Wait until every queued message has been delivered."""
        deadline = time.monotonic() + self.timeout
        with self._waiting():
            while self._sent.unfinished_tasks:
                self._raise_send_error()
                self._check(deadline, "the delivery of sent messages")
                time.sleep(0.002)
        self._raise_send_error()

    def _reap_sends(self) -> None:
        while True:
            work, part, dst, channel = self._sent.get()
            try:
                self._complete(work)
            except Exception as e:  # noqa: BLE001 -- reported by the main thread
                self._send_error = (dst, channel, e)
            finally:
                self._sent.task_done()

    def _complete(self, work) -> None:
        if self.backend == "gloo":   # gloo reports completion only through wait()
            work.wait(datetime.timedelta(seconds=self.timeout))
            return
        deadline = time.monotonic() + self.timeout
        while not work.is_completed():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not delivered within {self.timeout:g} s")
            time.sleep(0.0005)
        work.wait()

    def _raise_send_error(self) -> None:
        if self._send_error is not None:
            dst, channel, e = self._send_error
            raise self.lost(dst, f"sending a {channel} message: {one_line(e)}")

    def _wait(self, work, what: str, peer: int) -> None:
        """Wait for one receive, interruptible (Ctrl-C, the watchdog) and with a deadline."""
        deadline = time.monotonic() + self.timeout
        done, errors = threading.Event(), []

        def complete():
            try:
                self._complete(work)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
            finally:
                done.set()

        threading.Thread(target=complete, name="confiner-wait", daemon=True).start()
        with self._waiting():
            while not done.wait(0.01):
                self._check(deadline, f"{what} from rank {peer}", peer)
        if errors:
            raise self.lost(peer, one_line(errors[0]))

    def _check(self, deadline: float, what: str, peer: int | None = None) -> None:
        if self.reason is not None:
            raise self.reason.copy()
        if time.monotonic() > deadline:
            failure = self.announced()
            raise failure or RankFailed(f"waited {self.timeout:g} s for {what}; a process may hang (raise "
                                        f"{TIMEOUT_ENV} for slower steps)", code=1, resumable=True)

    # -- failures -----------------------------------------------------------------------------------------------
    def announced(self, only: int | None = None) -> RankFailed | None:
        """A failure another rank announced in the store, if any."""
        try:
            if int(self.store.add("failures", 0)) == 0:
                return None
            for r in range(self.world):
                if r != self.rank and (only is None or r == only) and self.store.check([f"failed/{r}"]):
                    return RankFailed.announced(r, json.loads(self.store.get(f"failed/{r}").decode()))
        except Exception:  # noqa: BLE001 -- the store is gone with the process that hosted it
            return None
        return None

    def lost(self, peer: int, detail: str) -> RankFailed:
        """A channel to ``peer`` broke: its announced failure when it made one (it announces before exiting)."""
        detail = re.sub(r"^\[[^\]]*\]\s*", "", detail).split(". ")[0]   # gloo: "[file:line] what. advice"
        return self.announced(peer) or self.announced() or RankFailed(
            f"lost the connection to rank {peer} ({detail}); it was stopped or killed (out of memory?)",
            code=1, resumable=True)

    def peer_failure(self) -> RankFailed | None:
        """The failure of another rank that stopped this one (None: this rank's own error or Ctrl-C)."""
        return self.reason.copy() if self.reason is not None else None

    def announce(self, e: BaseException) -> None:
        """Tell the other ranks that this one failed, and how (best effort: the store may be gone)."""
        kind = "interrupted" if isinstance(e, KeyboardInterrupt) else "usage" if isinstance(e, UsageError) else "error"
        message = one_line(e) if isinstance(e, (UsageError, RankFailed)) else f"{type(e).__name__}: {one_line(e)}"
        resumable = isinstance(e, KeyboardInterrupt) or (isinstance(e, RankFailed) and e.resumable)
        try:
            self.store.set(f"failed/{self.rank}", json.dumps({"kind": kind, "message": message,
                                                              "resumable": resumable}))
            self.store.add("failures", 1)
        except Exception:  # noqa: BLE001
            pass

    def stopping(self) -> None:
        """This rank is failing and cleaning up: from here on the watchdog and SIGTERM leave its main thread alone.
        (Else another rank's failure, seen a moment later, could interrupt the clean-up and replace the line this
        rank is about to print.)"""
        with self._lock:
            self.failed = True

    def on_abort(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` if this process must be ended without its main thread (stuck in a native call)."""
        self.cleanups.append(cleanup)

    def trip(self, failure: RankFailed) -> None:
        """A peer failed: stop the main thread; end the process if it does not stop within GRACE_S."""
        with self._lock:
            if self.reason is not None or self.failed:
                return
            self.reason = failure
            if self.in_main and not self.waiting:   # a waiting main thread raises it itself
                _thread.interrupt_main()
        with contextlib.suppress(Exception):
            self.store.set(f"ack/{self.rank}", "1")
        timer = threading.Timer(GRACE_S, self.force_exit, args=(failure,))
        timer.daemon = True
        timer.start()

    def force_exit(self, failure: RankFailed) -> None:
        if self.exiting:
            return
        for cleanup in self.cleanups:
            with contextlib.suppress(Exception):
                cleanup()
        print(f"{prefix(self)}error: {failure} (forced exit: the main thread did not stop within {GRACE_S:g} s)",
              file=sys.stderr, flush=True)
        os._exit(failure.code)

    def linger(self) -> None:
        """When this rank hosts the store (started without torchrun), it waits after a failure until the others
        have read it (or failed themselves), at most 3 s, so they can name the failure."""
        if not self.hosts_store:
            return
        deadline = time.monotonic() + 3.0
        others = [r for r in range(self.world) if r != self.rank]
        with contextlib.suppress(Exception):
            while time.monotonic() < deadline and not all(
                    self.store.check([f"ack/{r}"]) or self.store.check([f"failed/{r}"]) for r in others):
                time.sleep(0.02)

    def close(self) -> None:
        """After a successful run: every message delivered, every rank done, then the groups go."""
        self.flush()
        self.barrier()
        self.watchdog.stop()
        self.store.set(f"done/{self.rank}", "1")
        if self.rank == 0:   # the others' last store call has to reach the store rank 0 may host
            self._wait_keys([f"done/{r}" for r in range(self.world)], "the other processes to finish")
        self.dist.destroy_process_group()


class Watchdog(threading.Thread):
    """Writes this rank's heartbeat and watches the store for another rank's failure or a silent (dead) rank."""

    def __init__(self, ranks: Ranks, store):
        super().__init__(name="confiner-watchdog", daemon=True)
        self.ranks, self.store = ranks, store
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def run(self) -> None:
        r = self.ranks
        next_beat = next_look = 0.0
        while not self._halt.wait(POLL_S):
            try:
                now = time.monotonic()
                if now >= next_beat:
                    self.store.set(f"beat/{r.rank}", repr(time.time()))
                    next_beat = now + HEARTBEAT_S
                if int(self.store.add("failures", 0)) > 0:
                    for other in range(r.world):
                        if other != r.rank and self.store.check([f"failed/{other}"]):
                            info = json.loads(self.store.get(f"failed/{other}").decode())
                            r.trip(RankFailed.announced(other, info))
                            return
                if now >= next_look:
                    next_look = now + 2 * HEARTBEAT_S
                    for other in range(r.world):
                        if other == r.rank or self.store.check([f"done/{other}"]) or \
                                not self.store.check([f"beat/{other}"]):
                            continue
                        age = time.time() - float(self.store.get(f"beat/{other}").decode())
                        if age > r.stale:
                            r.trip(RankFailed(f"rank {other} stopped responding (no heartbeat for {age:.0f} s); "
                                              f"it may have been killed (out of memory?)", code=1, resumable=True))
                            return
            except Exception as e:  # noqa: BLE001 -- the store went away: its host (rank 0 or torchrun) is gone
                if not self._halt.is_set():
                    r.trip(RankFailed(f"lost the rendezvous store ({one_line(e)}); rank 0 or torchrun stopped",
                                      code=1, resumable=True))
                return


def prefix(ranks) -> str:
    """How a rank other than 0 starts its lines."""
    return f"rank {ranks.rank}: " if ranks.rank else ""


_current: list = [SINGLE]   # the session of this process (for the command line's exit)


def current():
    return _current[0]


@contextlib.contextmanager
def session():
    """The run's place among processes: :data:`SINGLE` without torchrun, else a :class:`Ranks` with its process
    group, store and watchdog. On failure it tells the other ranks; a failure caused by another rank comes out
    as :class:`~confiner_core.errors.RankFailed`."""
    env = launch_env()
    if env is None:
        yield SINGLE
        return
    ranks = Ranks(env)
    _current[0] = ranks
    previous = None
    if ranks.in_main:
        def on_sigterm(signum, frame):
            with ranks._lock:
                if ranks.reason is not None or ranks.failed:
                    return   # already stopping (torchrun stops every process once one has ended)
                ranks.reason = ranks.announced() or RankFailed(   # origin -1: the launcher (nothing to announce)
                    "stopped by SIGTERM: torchrun stops every process once one fails (its report below names "
                    "which) or on Ctrl-C", code=128 + signal.SIGTERM,
                    resumable=True, origin=-1)
            raise KeyboardInterrupt
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    with warnings.catch_warnings():
        if ranks.rank != 0:   # every process checks the same settings: the first alone says what is doubtful
            warnings.simplefilter("ignore", ConFinerWarning)
        try:
            yield ranks
            ranks.close()
        except BaseException as e:
            ranks.stopping()
            # a KeyboardInterrupt may be the watchdog stopping this rank for another's failure: report that one
            failure = ranks.peer_failure() if isinstance(e, KeyboardInterrupt) else None
            relayed = failure is not None or (isinstance(e, RankFailed) and e.origin is not None)
            if not relayed:
                ranks.announce(e)   # this rank's own failure (or a broken channel / timeout it noticed)
            ranks.watchdog.stop()
            ranks.linger()
            ranks.exiting = True
            if failure is not None:
                raise failure from None
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def exit_if_failed(code: int) -> None:
    """After a failed multi-process run the process ends here: a channel may still be blocked in a native call,
    which an orderly interpreter exit could wait on."""
    ranks = current()
    if ranks.failed:
        ranks.exiting = True
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
