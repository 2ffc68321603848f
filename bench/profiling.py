"""Where the time of one run goes: torch.profiler over it, kernels sorted into kinds, idle gaps measured.

``profile_run(fn, device)`` runs ``fn`` once under ``torch.profiler`` and returns a JSON-able summary: kernel time
per kind (attention, convolution, GEMM, norm, elementwise, layout/copy, memcpy, other) and its share, the top
kernels by time, and the GPU's idle time between the first and last kernel (the union of kernel intervals against
that span), split by gap length and, where the run marks its phases with ``record_function``, by the phase of the
kernel each gap waited for. On the GPU the kernels come from the profiler's trace (``cat`` kernel / gpu_memcpy /
gpu_memset); on the CPU (smoke runs) the operators' self time stands in. ``rates`` turns kind times and ``flops_by_kind`` (from
``torch.utils.flop_counter``) into achieved TFLOP/s for the matrix kinds.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time

import torch

#: kernels the markdown table lists (the summary keeps more: ``profile_run``'s ``top``)
TABLE_TOP = 15
KINDS = ("attention", "convolution", "gemm", "norm", "elementwise", "layout/copy", "memcpy", "other")

# Order matters: the first pattern that matches names the kind (cuDNN's convolution kernels say "gemm" too).
PATTERNS = (
    ("memcpy", r"memcpy|memset"),
    ("layout/copy", r"nchwtonhwc|nhwctonchw|nchw2nhwc|nhwc2nchw"),
    ("norm", r"^triton_(poi|per|red)_.*(group_norm|layer_norm|rms_norm)"),   # inductor's kernels, by fused ops
    ("elementwise", r"^triton_(poi|per|red)_"),
    ("attention", r"flash|fmha|sdpa|attention|_attn|mha_|softmax"),
    ("convolution", r"conv|implicit_gemm|implicit_convolve|fprop|dgrad|wgrad|winograd|cudnn|xmma_fprop"),
    ("gemm", r"gemm|gemv|cutlass|cublas|nvjet|matmul|s16816|s1688|wgmma|(^|[^a-z])(mm|addmm|bmm|baddbmm|linear)"
             r"([^a-z]|$)|triton_tem_fused_mm|tensorop"),
    ("norm", r"norm|rowwisemoments|computefusedparams|welford|gn_stats|gn_apply|gn_rows_|rms"),
    ("layout/copy", r"nchwtonhwc|nhwctonchw|transpose|permute|copy|contiguous|catarray|(^|[^a-z])cat([^a-z]|$)|"
                    r"clone|index"),
    ("elementwise", r"elementwise|vectorized|unrolled|triton_poi|triton_per|triton_red|reduce|silu|gelu|geglu|add|mul|"
                    r"fill|where|sigmoid|exp|div|sub|pow|rsqrt|mean|sum|cast|to_copy|upsample|interp|pad"),
)
_COMPILED = [(kind, re.compile(p)) for kind, p in PATTERNS]


def kind_of(name: str) -> str:
    """The kind of a kernel (GPU) or operator (CPU) from its name."""
    low = name.lower()
    for kind, pattern in _COMPILED:
        if pattern.search(low):
            return kind
    return "other"


def flops_by_kind(op_flops: dict) -> dict:
    """{aten op name: FLOPs} (FlopCounterMode's 'Global' counts) -> FLOPs per kind: convolutions, matrix products
    (mm/addmm) and attention (SDPA; bmm/baddbmm, which only attention's QK^T and PV use in these models)."""
    out = {"convolution": 0.0, "gemm": 0.0, "attention": 0.0}
    for op, flops in op_flops.items():
        parts = str(op).split(".")   # "aten.mm" (FlopCounterMode's packets) or "aten.mm.default"
        name = parts[1] if parts[0] == "aten" and len(parts) > 1 else parts[-1]
        if "convolution" in name:
            out["convolution"] += flops
        elif name in ("mm", "addmm"):
            out["gemm"] += flops
        elif name in ("bmm", "baddbmm") or "scaled_dot_product" in name:
            out["attention"] += flops
    return out


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (microseconds)."""
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


GAP_BUCKETS_US = (50.0, 1000.0)  # launch-sized gaps, short host stalls, long waits (syncs, host-side work)


def host_during(ops: list[tuple], start: float, end: float, top: int = 3) -> list[dict]:
    """The host operators (``ops``: (start, end, name) of the trace's CPU events) that overlap ``[start, end]`` the
    most: what the host was busy with while the GPU waited; an empty list means Python outside every operator."""
    overlap = sorted(((min(e, end) - max(s, start), name) for s, e, name in ops if s < end and e > start),
                     reverse=True)
    return [{"op": name[:60], "ms": o / 1e3} for o, name in overlap[:top]]


def idle_gaps(events: list[tuple], top: int = 8, phases: list | None = None, host: dict | None = None) -> dict:
    """The GPU's idle time split by gap length (many tiny gaps: the host cannot issue kernels fast enough; a few
    long ones: host waits, host-side work, transfers), and the longest gaps with the kernels around them and their
    offset from the first kernel, so each can be placed in the run. ``phases`` (one per event: the part of the run
    the host was in when it launched that kernel, :func:`read_trace`) also splits the idle time by the phase of the
    kernel each gap waited for. ``host`` (:func:`read_trace`: each kernel's launch time and the host's operators)
    says for each of the longest gaps how late the kernel after it was launched (after the gap began: the GPU waited
    for the host) and what the host was doing until then."""
    phases = phases or [None] * len(events)
    launches = (host or {}).get("launches") or [None] * len(events)
    timed = sorted((s, s + d, name, phase, launch)
                   for (name, s, d, *_), phase, launch in zip(events, phases, launches) if s is not None)
    if not timed:
        return {}
    first = timed[0][0]
    gaps, end, before = [], timed[0][1], timed[0][2]
    by_phase: dict = {}
    for s, e, name, phase, launch in timed[1:]:
        if s > end:
            gaps.append((s - end, end, before, name, launch))
            by_phase[phase or "(none)"] = by_phase.get(phase or "(none)", 0.0) + (s - end) / 1e6
        if e > end:
            end, before = e, name
    edges = (0.0,) + GAP_BUCKETS_US + (float("inf"),)
    buckets = {}
    for lo, hi in zip(edges, edges[1:]):
        inside = [g for g, *_ in gaps if lo <= g < hi]
        label = f"{lo:g}-{hi:g} us" if hi != float("inf") else f">= {lo:g} us"
        buckets[label] = {"gaps": len(inside), "s": sum(inside) / 1e6}
    longest = []
    for g, at, a, b, launch in sorted(gaps, key=lambda gap: -gap[0])[:top]:
        row = {"ms": g / 1e3, "at_ms": (at - first) / 1e3, "after": a[:80], "before": b[:80]}
        if launch is not None and host:
            row["launched_late_ms"] = (launch - at) / 1e3
            row["host"] = host_during(host["ops"], at, max(launch, at))
        longest.append(row)
    out = {"by_length": buckets, "longest": longest}
    if any(phases):
        out["by_phase_s"] = dict(sorted(by_phase.items(), key=lambda kv: -kv[1]))
    return out


def summarise(events: list[tuple], wall_s: float, top: int = 60, phases: list | None = None,
              host: dict | None = None) -> dict:
    """``events``: (name, start_us, duration_us[, calls]) of every kernel (start None: unknown, no gaps measured);
    ``phases``: the run's phase each was launched in, ``host``: launches and host operators (both optional,
    :func:`read_trace`). Returns the profile summary."""
    by_kind = {k: 0.0 for k in KINDS}
    by_name: dict[str, list] = {}
    for name, _start, dur, *calls in events:
        by_kind[kind_of(name)] += dur
        entry = by_name.setdefault(name, [0.0, 0])
        entry[0] += dur
        entry[1] += calls[0] if calls else 1
    kernel_us = sum(by_kind.values())
    timed = [(s, d) for _, s, d, *_ in events if s is not None]
    span = busy = 0.0
    if timed:
        span = max(s + d for s, d in timed) - min(s for s, _ in timed)
        busy = busy_time([(s, s + d) for s, d in timed])
    out = {
        "wall_s": wall_s, "kernel_s": kernel_us / 1e6, "kernels": sum(v[1] for v in by_name.values()),
        "span_s": span / 1e6, "busy_s": busy / 1e6, "idle_fraction_of_span": (span - busy) / span if span else None,
        "kinds": {k: {"s": v / 1e6, "share": v / kernel_us if kernel_us else 0.0} for k, v in by_kind.items()},
        "top": [{"name": n[:160], "kind": kind_of(n), "s": v[0] / 1e6, "calls": v[1],
                 "share": v[0] / kernel_us if kernel_us else 0.0}
                for n, v in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]],
    }
    if timed:
        out["idle_gaps"] = idle_gaps(events, phases=phases, host=host)
    if phases and any(phases):
        out["by_phase"] = phase_kinds(events, phases)
    return out


def phase_kinds(events: list[tuple], phases: list, top: int = 6) -> dict:
    """Kernel time per phase of the run (the ``record_function`` range each kernel was launched in): in all, per kind,
    and the phase's top kernels, so one expert's forwards can be set beside another's."""
    out: dict = {}
    for (name, _start, dur, *_), phase in zip(events, phases):
        entry = out.setdefault(phase or "(none)", {"s": 0.0, "kinds": {k: 0.0 for k in KINDS}, "names": {}})
        entry["s"] += dur / 1e6
        entry["kinds"][kind_of(name)] += dur / 1e6
        entry["names"][name] = entry["names"].get(name, 0.0) + dur / 1e6
    for entry in out.values():
        names = entry.pop("names")
        entry["top"] = [{"name": n[:160], "kind": kind_of(n), "s": t}
                        for n, t in sorted(names.items(), key=lambda kv: -kv[1])[:top]]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["s"]))


def rates(summary: dict, flops: dict) -> dict:
    """TFLOP per kind (``flops_by_kind``) and the TFLOP/s its kernels achieved in the profiled run."""
    kinds = summary["kinds"]
    return {"tflop_by_kind": {k: v / 1e12 for k, v in flops.items()},
            "tflops_by_kind": {k: (v / 1e12) / kinds[k]["s"] if kinds.get(k, {}).get("s") else None
                               for k, v in flops.items()}}


def read_trace(path: str) -> tuple[list[tuple[str, float, float]], list[str | None], dict]:
    """Kernel, memcpy and memset events of a chrome trace written by ``torch.profiler``; for each the innermost
    ``record_function`` range the host was in when it launched it (found through the launch's correlation id;
    None outside every range); and the host side: each event's launch time (``launches``) and the host's operators
    and runtime calls as (start, end, name) (``ops``)."""
    with open(path) as f:
        trace = json.load(f)
    events = [e for e in (trace["traceEvents"] if isinstance(trace, dict) else trace) if e.get("ph") == "X"]
    launches = {e["args"]["correlation"]: float(e["ts"]) for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    ranges = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), e.get("name", ""))
                    for e in events if e.get("cat") == "user_annotation")
    kernels, phases, launched = [], [], []
    for e in events:
        if e.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        kernels.append((e.get("name", ""), float(e["ts"]), float(e.get("dur", 0.0))))
        at = launches.get(e.get("args", {}).get("correlation"))
        launched.append(at)
        inside = [r for r in ranges if at is not None and r[0] <= at <= r[1]]
        phases.append(max(inside)[2] if inside else None)  # innermost: the latest start among those holding it
    ops = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), e.get("name", "")) for e in events
           if e.get("cat") in ("cpu_op", "cuda_runtime", "cuda_driver")]
    return kernels, phases, {"launches": launched, "ops": ops}


def cpu_operators(prof) -> list[tuple[str, float, float]]:
    """CPU stand-in: every leaf-level operator's self time (no start times: gaps are not measured)."""
    return [(e.key, None, e.self_cpu_time_total, e.count) for e in prof.key_averages()
            if e.self_cpu_time_total > 0 and e.key.startswith("aten::")]


def profile_run(fn, device: torch.device, top: int = 60) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    if device.type == "cuda":
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "trace.json")
            prof.export_chrome_trace(path)
            events, phases, host = read_trace(path)
        source = "CUDA kernels (chrome trace)"
    else:
        events, phases, host = cpu_operators(prof), None, None
        source = "CPU operators' self time (no GPU)"
    summary = summarise(events, wall, top, phases, host)
    summary["source"] = source
    summary["analysis_s"] = time.perf_counter() - t1
    return summary


def fmt_late(gap: dict) -> str:
    return f"{gap['launched_late_ms']:.2f}" if gap.get("launched_late_ms") is not None else ""


def fmt_host(gap: dict) -> str:
    if "host" not in gap:
        return ""
    return ", ".join(f"`{h['op']}` {h['ms']:.2f}" for h in gap["host"]) or "Python (no operator)"


def markdown(summary: dict, title: str) -> list[str]:
    """A profile summary as Markdown tables."""
    k = summary["kinds"]
    idle = summary.get("idle_fraction_of_span")
    lines = [f"**{title}** — {summary['source']}: {summary['kernels']} kernels, {summary['kernel_s']:.3f} s of kernel "
             f"time in {summary['wall_s']:.3f} s wall" +
             (f"; GPU idle {100 * idle:.1f} % of the {summary['span_s']:.3f} s between first and last kernel"
              if idle is not None else ""), "",
             "| kind | s | share | TFLOP/s |", "|---|---|---|---|"]
    rates = summary.get("tflops_by_kind", {})
    for kind in KINDS:
        rate = rates.get(kind)
        lines.append(f"| {kind} | {k[kind]['s']:.3f} | {100 * k[kind]['share']:.1f} % | "
                     f"{'' if rate is None else f'{rate:.0f}'} |")
    lines += ["", "| top kernel | kind | calls | s | share |", "|---|---|---|---|---|"]
    for t in summary["top"][:TABLE_TOP]:
        name = t["name"].replace("|", "/")
        lines.append(f"| `{name[:90]}` | {t['kind']} | {t['calls']} | {t['s']:.3f} | {100 * t['share']:.1f} % |")
    gaps = summary.get("idle_gaps")
    if gaps:
        lines += ["", "GPU idle by gap length: " + "; ".join(f"{label}: {b['gaps']} gaps, {b['s']:.3f} s"
                                                              for label, b in gaps["by_length"].items()),
                  "", "| longest gaps ms | at ms | after kernel | before kernel | launched late ms | host busy with |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {g['ms']:.2f} | {g['at_ms']:.1f} | `{g['after'][:50]}` | `{g['before'][:50]}` | "
                  f"{fmt_late(g)} | {fmt_host(g)} |" for g in gaps["longest"]]
        if gaps.get("by_phase_s"):
            lines += ["", "GPU idle by the phase of the kernel it waited for: " +
                      "; ".join(f"{phase} {s:.3f} s" for phase, s in gaps["by_phase_s"].items())]
    phases = summary.get("by_phase")
    if phases:
        lines += ["", "| phase | kernel s | " + " | ".join(KINDS) + " | top kernels (s) |",
                  "|---|---|" + "---|" * len(KINDS) + "---|"]
        for phase, e in phases.items():
            tops = "; ".join(f"`{t['name'][:40]}` {t['s']:.3f}" for t in e["top"][:3]).replace("|", "/")
            lines.append(f"| {phase} | {e['s']:.3f} | " + " | ".join(f"{e['kinds'][k]:.3f}" for k in KINDS) +
                         f" | {tops} |")
    audit = summary.get("sync_audit")
    if audit and "error" not in audit:
        lines += ["", f"Host waits for the GPU in one run (sync debug mode): {audit['syncs']}" +
                  "".join(f"; `{where}` ×{n}" for where, n in audit["by_line"].items())]
    return lines + [""]


def sync_audit(fn, device) -> dict:
    """The operations that made the host wait for the GPU during one run of ``fn``: PyTorch's sync debug mode warns
    on each (``.item()``, ``bool(tensor)``, pageable copies, ...); counted by the Python line that called them, so a
    wait inside the sampling loop shows up next to the line to move. Empty off the GPU."""
    import warnings
    if device.type != "cuda":
        return {}
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where: dict = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            key = f"{os.path.relpath(w.filename)}:{w.lineno}"
            where[key] = where.get(key, 0) + 1
    return {"syncs": sum(where.values()), "by_line": dict(sorted(where.items(), key=lambda kv: -kv[1])[:15])}
