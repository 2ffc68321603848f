"""Peak memory and wall time of ConFiner-Long on the embedded default (CPU), 64 vs 600 frames.

Each length runs in a fresh process (`python -m confiner_core generate`), so peak RSS is that run's own
(the child's rusage from os.wait4). Usage: python bench/long_memory.py [--frames 64 600] [--json PATH]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def measure(frames: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "confiner_core", "generate", "--frames", str(frames), "--out", out, "--quiet",
               *extra]
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        # this child's own peak (os.wait4's rusage; RUSAGE_CHILDREN would keep the largest of every child so far)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)   # (reaped here: Popen must not wait for it again)
        if child.returncode:
            raise subprocess.CalledProcessError(child.returncode, cmd)
        peak_kib = usage.ru_maxrss
        with open(os.path.join(out, "report.json")) as f:
            report = json.load(f)
    return {"frames": frames, "wall_s": round(wall, 2), "peak_rss_mib": round(peak_kib / 1024, 1),
            "generate_s": round(report["seconds"]["total"], 2), "seam_score": report["metrics"].get("seam_score"),
            "expert_evaluations": report["total_expert_evaluations"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[64, 600])
    ap.add_argument("--json")
    ap.add_argument("extra", nargs="*", help="extra generate arguments after --")
    a = ap.parse_args()
    rows = [measure(f, a.extra) for f in a.frames]   # (each its own child process, and that child's own peak)
    for r in rows:
        print(f"{r['frames']:>5} frames  wall {r['wall_s']:>7.2f} s  peak RSS {r['peak_rss_mib']:>7.1f} MiB  "
              f"seam {'n/a (one clip)' if r['seam_score'] is None else format(r['seam_score'], '.3f')}  "
              f"evaluations {r['expert_evaluations']}")
    if len(rows) >= 2:
        print(f"peak RSS ratio {rows[-1]['frames']}/{rows[0]['frames']} frames: "
              f"{rows[-1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.3f}")
    if a.json:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from confiner_core.outputs import write_atomic

        write_atomic(a.json, json.dumps(rows, indent=2).encode())


if __name__ == "__main__":
    main()
