"""The processes of tests/test_distributed.py.

* :func:`library` -- one rank of a ``torch.multiprocessing`` group that sets torchrun's environment variables and
  runs :func:`confiner_core.long.generate_long` for each case on the embedded experts, in one session; rank 0 saves
  the windows' latents, one file per case.
* run as a script under torchrun: ``python -m torch.distributed.run ... tests/distributed_worker.py
  [--inject KIND@RANK:EVALUATION] generate ...`` -- the command line, with a failure injected into one rank at its
  N-th expert evaluation: ``raise`` (a RuntimeError), ``die`` (the process vanishes, ``os._exit``), ``sigterm`` or
  ``sigint`` (the signal, sent to itself).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch

CASES = {
    # the defaults: staggered windows, consistency initialization, coherence guidance towards the unguided memory
    "default": {},
    # every random draw of the chain: DDIM control and refinement with eta, FreeNoise, the guided memory
    "ddim-eta-freenoise": {"chain": {"control_sampler": "ddim", "control_eta": 0.5, "eta": 0.5},
                           "long": {"noise_init": "freenoise", "freenoise_window": 8, "freenoise_stride": 2,
                                    "coherence_memory": "guided"}},
    # no dependency between structures, windows of one structure each
    "independent": {"long": {"gamma": 0.0, "staggered": False, "noise_init": "independent"}},
    # colour anchoring: a scan over the windows in order, on rank 0, whoever refined them
    "color-anchor": {"long": {"color_anchor": True}},
    # a causal (Wan-like) latent space: windows joined through pixels, flow experts
    "wan": {"preset": "wan", "frames": 27, "segment_length": 9},
}
# One prompt: building a prompt's world is most of these runs' time (prompt travel over processes is tested on the
# command line, tests/test_distributed.py).
FRAMES, SEGMENT, SIZE = 24, 8, 4   # 4 structures, 3 windows of 8 latent frames at 4x4: with 3 ranks, one each


def run_case(name: str, ranks=None):
    """The case's windows (rank 0; None on the others), on one process or on ``ranks``."""
    from confiner_core.chain import ChainConfig
    from confiner_core.embedded.experts import embedded_experts
    from confiner_core.experts import EvaluationLog
    from confiner_core.long import LongConfig, generate_long, plan_segments

    case = CASES[name]
    frames, segment = case.get("frames", FRAMES), case.get("segment_length", SEGMENT)
    log = EvaluationLog()
    experts = embedded_experts(case.get("preset", "sd"))
    c, s, t = (experts[r].bind("a red ball bouncing over grass", "", 1.0, log)
               for r in ("control", "spatial", "temporal"))
    long = LongConfig(segment_length=segment, **case.get("long", {}))
    plan = plan_segments(frames, segment, long.staggered)
    space = c.expert.latent_space
    windows = []
    chain = ChainConfig(**{"refine_steps": 2, **case.get("chain", {})})
    generate_long(c, s, t, plan, (1, space.channels, SIZE, SIZE), chain, long, 11,
                  lambda latent, window: windows.append(latent.clone()), ranks=ranks)
    return (windows, dict(log.evaluations)) if ranks is None or ranks.rank == 0 else (None, dict(log.evaluations))


def torchrun_env(rank: int, world: int, port: int) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def library(rank: int, world: int, port: int, out: str, cases: list) -> None:
    torchrun_env(rank, world, port)
    from confiner_core import distributed

    with distributed.session() as ranks:
        ranks.connect("cpu")
        for name in cases:
            windows, evaluations = run_case(name, ranks)
            torch.save({"windows": windows, "evaluations": evaluations}, os.path.join(out, f"{name}-rank{rank}.pt"))


def inject(spec: str) -> None:
    """``KIND@RANK:EVALUATION``: make this process fail that way at its N-th expert evaluation if it is RANK."""
    kind, where = spec.split("@")
    rank, at = (int(v) for v in where.split(":"))
    if int(os.environ.get("RANK", "0")) != rank:
        return
    from confiner_core.experts import EvaluationLog

    real = EvaluationLog.record

    def record(self, forwards):
        real(self, forwards)
        if sum(self.evaluations.values()) == at:
            if os.environ.get("INJECTED_AT"):   # when it happened, for the test's report of the time to exit
                with open(os.environ["INJECTED_AT"], "w") as f:
                    f.write(repr(time.time()))
            if kind == "raise":
                raise RuntimeError(f"injected failure at evaluation {at}")
            if kind == "die":
                os._exit(9)
            os.kill(os.getpid(), {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT}[kind])

    EvaluationLog.record = record


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--inject":
        inject(args[1])
        args = args[2:]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from confiner_core.cli import main

    sys.exit(main(args))
