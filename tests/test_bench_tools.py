"""The benchmark's profile summary and report (bench/profiling.py, bench/gpu_report.py) on known inputs: kernel names
as the H200's profiler prints them, intervals with known gaps, a results file with known figures."""

import json
import os
import sys
import textwrap

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import attention_probe as AP  # noqa: E402
import gpu_report as R  # noqa: E402
import layout_audit as A  # noqa: E402
import profiling as P  # noqa: E402

KERNELS = {  # names seen in PyTorch / cuDNN / cuBLAS / inductor profiles on Hopper -> kind
    "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::Half, float>": "norm",
    "void cudnn::ops::nchwToNhwcKernel<__half, __half, float, false, true, (cudnnKernelDataType_t)0>": "layout/copy",
    "cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x64_4x1x1_kernel0_0": "attention",
    "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "convolution",
    "nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NNN": "gemm",
    "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1": "gemm",
    "triton_poi_fused_convolution_silu_3": "elementwise",
    "triton_red_fused_native_group_norm_silu_2": "norm",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::Half>>": "elementwise",
    "void at::native::elementwise_kernel<128, 4, at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)>":
        "layout/copy",
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4>>": "attention",
    "fmha_cutlassF_f16_aligned_64x128_rf_sm80": "attention",
    "Memcpy HtoD (Pageable -> Device)": "memcpy",
    "gn_stats": "norm", "gn_apply": "norm", "gn_rows_stats": "norm", "gn_rows_scale": "norm",
    "gn_rows_apply": "norm", "geglu_kernel": "elementwise",
    "aten::addmm": "gemm", "aten::native_group_norm": "norm", "aten::convolution": "convolution",
    "something_unheard_of": "other",
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_kinds(name):
    assert P.kind_of(name) == KERNELS[name]


def test_summary_shares_gaps_and_rates():
    events = [("nvjet_hsh_gemm", 0.0, 40.0), ("nvjet_hsh_gemm", 30.0, 20.0),      # overlap 30..40
              ("sm90_xmma_fprop_implicit_gemm", 60.0, 30.0), ("gn_apply", 100.0, 10.0)]
    s = P.summarise(events, wall_s=0.001)
    assert s["kernel_s"] == pytest.approx(100e-6) and s["kernels"] == 4
    assert s["span_s"] == pytest.approx(110e-6) and s["busy_s"] == pytest.approx(90e-6)
    assert s["idle_fraction_of_span"] == pytest.approx(20 / 110)
    assert s["kinds"]["gemm"]["share"] == pytest.approx(0.6) and s["kinds"]["norm"]["share"] == pytest.approx(0.1)
    assert s["top"][0]["name"] == "nvjet_hsh_gemm" and s["top"][0]["calls"] == 2
    r = P.rates(s, P.flops_by_kind({"aten.mm.default": 6e9, "aten.convolution.default": 3e9, "aten.bmm.default": 1}))
    assert r["tflops_by_kind"]["gemm"] == pytest.approx(6e9 / 1e12 / 60e-6)
    assert r["tflops_by_kind"]["attention"] is None                  # no attention kernel time
    cpu = P.summarise([("aten::mm", None, 5.0, 3)], wall_s=1.0)       # CPU stand-in: no start times, no gaps
    assert cpu["idle_fraction_of_span"] is None and cpu["kernels"] == 3 and "idle_gaps" not in cpu
    # the idle time by gap length: 10 us (50..60) and 10 us (90..100), both launch-sized; then a 2 ms wait
    gaps = P.summarise(events + [("gn_apply", 2110.0, 10.0)], wall_s=0.003)["idle_gaps"]
    assert gaps["by_length"]["0-50 us"] == {"gaps": 2, "s": pytest.approx(20e-6)}
    assert gaps["by_length"][">= 1000 us"] == {"gaps": 1, "s": pytest.approx(2000e-6)}
    assert gaps["longest"][0] == {"ms": pytest.approx(2.0), "at_ms": pytest.approx(0.11), "after": "gn_apply",
                                  "before": "gn_apply"}
    assert "GPU idle by gap length" in "\n".join(P.markdown({**s, "idle_gaps": gaps, "source": "trace"}, "t"))


def run(wall, tflop, **extra):
    return {"wall_s": wall, "runs_s": [wall], "warmup_s": wall, "tflop": tflop, "achieved_tflops": tflop / wall,
            "evaluations": {"refine": 15, "control": 4}, "network_forwards": {}, "overhead_fraction": 0.01,
            "peak_gpu_gib": 10.0, **extra}


def test_trace_phases_attribute_idle_gaps(tmp_path):
    """Each kernel is tied to the ``record_function`` range its launch came from (chrome trace correlation ids), so
    the idle time before it is booked to that phase; a range nested in another wins."""
    X = {"ph": "X"}
    trace = {"traceEvents": [
        {**X, "cat": "user_annotation", "name": "text", "ts": 0, "dur": 100},
        {**X, "cat": "user_annotation", "name": "refine", "ts": 100, "dur": 900},
        {**X, "cat": "user_annotation", "name": "eval", "ts": 155, "dur": 20},          # nested in refine
        {**X, "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 10, "dur": 2, "args": {"correlation": 1}},
        {**X, "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 150, "dur": 2, "args": {"correlation": 2}},
        {**X, "cat": "cpu_op", "name": "aten::item", "ts": 60, "dur": 80},              # the host, busy
        {**X, "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 160, "dur": 2, "args": {"correlation": 3}},
        {**X, "cat": "kernel", "name": "gn_apply", "ts": 20, "dur": 30, "args": {"correlation": 1}},
        {**X, "cat": "kernel", "name": "nvjet_gemm", "ts": 200, "dur": 50, "args": {"correlation": 2}},
        {**X, "cat": "kernel", "name": "nvjet_gemm", "ts": 260, "dur": 10, "args": {"correlation": 3}},
        {**X, "cat": "gpu_memcpy", "name": "Memcpy DtoH", "ts": 300, "dur": 5, "args": {}},
        {"ph": "i", "cat": "kernel", "name": "not a duration event", "ts": 1}]}
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(trace))
    events, phases, host = P.read_trace(str(path))
    assert [e[0] for e in events] == ["gn_apply", "nvjet_gemm", "nvjet_gemm", "Memcpy DtoH"]
    assert phases == ["text", "refine", "eval", None]
    gaps = P.summarise(events, wall_s=0.001, phases=phases, host=host)["idle_gaps"]
    assert gaps["by_phase_s"] == {"refine": pytest.approx(150e-6), "(none)": pytest.approx(30e-6),
                                  "eval": pytest.approx(10e-6)}
    # the 150 us gap before the first GEMM: launched 100 us after the GPU went idle, the host in aten::item for 80
    longest = gaps["longest"][0]
    assert longest["ms"] == pytest.approx(0.15) and longest["launched_late_ms"] == pytest.approx(0.1)
    assert longest["host"] == [{"op": "aten::item", "ms": pytest.approx(0.08)}]
    # the DtoH copy has no launch in the trace: nothing said about the host
    assert "launched_late_ms" not in next(g for g in gaps["longest"] if g["before"] == "Memcpy DtoH")
    summary = P.summarise(events, 0.001, phases=phases, host=host)
    by_phase = summary["by_phase"]                  # kernel time per phase: a GEMM each in refine and eval
    assert list(by_phase) == ["refine", "text", "eval", "(none)"]
    assert by_phase["refine"]["s"] == pytest.approx(50e-6) and by_phase["refine"]["kinds"]["gemm"] == pytest.approx(50e-6)
    assert by_phase["text"]["kinds"]["norm"] == pytest.approx(30e-6) and by_phase["text"]["top"][0]["name"] == "gn_apply"
    text = "\n".join(P.markdown({**summary, "source": "trace"}, "t"))
    assert "GPU idle by the phase" in text and "| 0.10 | `aten::item` 0.08 |" in text
    assert "| refine | 0.000 | 0.000 | 0.000 | 0.000 |" in text and "`nvjet_gemm` 0.000 |" in text


def test_report_figures_and_targets(tmp_path):
    tables = {}
    for name, factor in (("eager", 1.0), ("best", 0.5)):
        runs = {"confiner_4+5_modelscope": run(2.4 * factor, 577), "modelscope_100": run(20.0 * factor, 4206),
                "animatediff_25": None}
        tables[name] = {"settings": name, "dtype": "float16", "runs": runs,
                        "ratios": {"ratio_confiner_modelscope_to_modelscope_100": 0.12,
                                   "flop_ratio_confiner_modelscope_to_modelscope_100": 577 / 4206}}
    sd = {"device_name": "NVIDIA H200", "torch": "2.11", "diffusers": "0.42.1", "date": "2026-12-01", "size": 512,
          "frames": 16, "params_m": {"sd": 859.5, "control": 1312.7, "ms": 1411.2}, "import_s": 8.0,
          "tables": tables, "cold_start_s": 200.0, "cold_compile_s": 190.0}
    warm = {"warm_start_s": 18.0, "process_s": 30.0, "compile_from_cache_s": 6.0, "cache_loaded": True,
            "import_s": 8.0, "load_cache_s": 1.0, "first_run_s": 9.0, "build_s": 5.0}
    wan = {"figures": {"wan_confiner_s": 15.0, "wan_50_s": 62.0, "wan_ratio_confiner_to_wan_50": 15 / 62,
                       "wan22_a14b_40_s": 260.0}, "attention": "cudnn"}
    raw = tmp_path / "raw"
    raw.mkdir()
    for key, data in (("sd", sd), ("warm", warm), ("wan", None)):
        if data is not None:
            (raw / R.FILES[key]).write_text(json.dumps(data))
    fig = R.figures(sd, {"warm": warm}, wan, None)
    assert fig["best_confiner_modelscope_s"] == 1.2 and fig["best_confiner_tflops"] == pytest.approx(577 / 1.2)
    assert fig["best_ratio_confiner_modelscope_to_modelscope_100"] == 0.12
    assert fig["fastest_table"] == "best" and fig["warm_start_s"] == 18.0 and fig["cold_start_s"] == 200.0
    assert fig["wan_ratio_confiner_to_wan_50"] == pytest.approx(15 / 62) and fig["wan22_a14b_40_s"] == 260.0
    assert "best_animatediff25_s" not in fig                          # a skipped run gives no figure
    lines = "\n".join(R.targets(fig))
    assert "| ConFiner 4+5 ≤ 1.2 s, best settings | 1.200 s (best) | **yes** |" in lines
    assert "| warm start ≤ 20 s | 18.0 s | **yes** |" in lines
    assert "| Wan: ConFiner / Wan-50 ≤ 0.25 | 0.242 eager, — best settings with cuDNN attention, — with flash-attn-4 | **yes** |" in lines
    # the Wan run with the best settings (regional compile) is reported beside the eager one; the target takes the best
    wan_best = {"figures": {"wan_confiner_s": 14.0, "wan_50_s": 50.0, "wan_ratio_confiner_to_wan_50": 0.28}}
    fig_best = R.figures(sd, {"warm": warm}, {"figures": {**wan["figures"], "wan_ratio_confiner_to_wan_50": 0.26}}, None, wan_best)
    assert fig_best["best_wan_ratio_confiner_to_wan_50"] == 0.28 and fig_best["wan_ratio_confiner_to_wan_50"] == 0.26
    assert "| Wan: ConFiner / Wan-50 ≤ 0.25 | 0.260 eager, 0.280 best settings with cuDNN attention, — with " \
           "flash-attn-4 | no |" in "\n".join(R.targets(fig_best))
    # and the one with flash-attn-4 beside them, under keys of its own
    wan_fa4 = {"figures": {"wan_confiner_s": 12.0, "wan_50_s": 50.0, "wan_ratio_confiner_to_wan_50": 0.24}}
    fig_fa4 = R.figures(sd, {"warm": warm}, wan, None, wan_best, wan_fa4)
    assert fig_fa4["fastest_attention_wan_ratio_confiner_to_wan_50"] == 0.24 and fig_fa4["best_wan_confiner_s"] == 14.0
    assert "0.242 eager, 0.280 best settings with cuDNN attention, 0.240 with flash-attn-4 | **yes** |" in \
        "\n".join(R.targets(fig_fa4))
    # the 14B runs measured whole (another process): their figures beside the 1.3B ones, never over them
    wan14 = {"figures": {"wan22_a14b_40_s": 234.0, "wan14_confiner_s": 72.0, "wan_peak_gpu_gib": 71.0,
                         "wan_ratio_confiner_14b_to_wan22_a14b_40": 72 / 234}}
    fig_14b = R.figures(sd, {"warm": warm}, wan, None, {"figures": {**wan_best["figures"], "wan_peak_gpu_gib": 18.0}},
                        None, wan14)
    assert fig_14b["best_wan_peak_gpu_gib"] == 18.0 and fig_14b["best_wan14_peak_gpu_gib"] == 71.0
    assert fig_14b["best_wan22_a14b_40_s"] == 234.0 and fig_14b["wan22_a14b_40_s"] == 260.0   # measured / eager's
    assert fig_14b["best_wan_ratio_confiner_14b_to_wan22_a14b_40"] == pytest.approx(72 / 234)
    assert fig_14b["best_wan_ratio_confiner_to_wan22_a14b_40"] == pytest.approx(14 / 234)
    # all four in one process: its figures take the place of the two files' (the 14B peak apart from the 1.3B's)
    one = {"figures": {"wan_confiner_s": 13.0, "wan_50_s": 52.0, "wan_ratio_confiner_to_wan_50": 0.25,
                       "wan22_a14b_40_s": 230.0, "wan_ratio_confiner_to_wan22_a14b_40": 13 / 230,
                       "wan14_confiner_s": 70.0, "wan_peak_gpu_gib": 17.0, "wan14_peak_gpu_gib": 70.0}}
    fig_one = R.figures(sd, {"warm": warm}, wan, None, {"figures": {**wan_best["figures"], "wan_peak_gpu_gib": 18.0}},
                        None, wan14, one)
    assert fig_one["best_wan_confiner_s"] == 13.0 and fig_one["best_wan22_a14b_40_s"] == 230.0
    assert fig_one["best_wan_ratio_confiner_to_wan22_a14b_40"] == pytest.approx(13 / 230)
    assert fig_one["best_wan_peak_gpu_gib"] == 17.0 and fig_one["best_wan14_peak_gpu_gib"] == 70.0
    assert fig_one["best_wan_ratio_confiner_14b_to_wan22_a14b_40"] == pytest.approx(72 / 234)  # not in the one run
    # a second process on the same machine (its inductor folders kept) and one with the portable cache only: both
    # are reported, and the target takes the faster
    same = {**warm, "warm_start_s": 25.0, "compile_phases": {"unique_graphs": 96}}
    fig_two = R.figures(sd, {"warm": {**warm, "warm_start_s": 40.0}, "warm_dirs": same}, wan, None)
    assert fig_two["warm_start_portable_s"] == 40.0 and fig_two["warm_start_same_machine_s"] == 25.0
    assert fig_two["warm_start_s"] == 25.0 and fig_two["warm_start_same_machine_graphs"] == 96
    # with the compiled blocks kept on disk: its own keys, and the split of its first run in the start table
    blocks = {**warm, "warm_start_s": 19.0, "precompiled": {"loaded": 68, "load_s": 2.5, "first_calls_s": 4.0},
              "first_modules_s": {"experts": 9.0, "vae": 3.0}, "second_modules_s": {"experts": 1.5, "vae": 0.2}}
    fig_three = R.figures(sd, {"warm": warm, "warm_blocks": blocks}, wan, None)
    assert fig_three["warm_start_blocks_s"] == 19.0 and fig_three["warm_start_blocks_blocks_loaded"] == 68
    assert fig_three["warm_start_s"] == 18.0
    # the same machine with and without Python's bytecode caches: the target names which one it took
    bytecode = {"warm_blocks_same": {**blocks, "warm_start_s": 27.5},
                "warm_blocks_same_bytecode": {**blocks, "warm_start_s": 17.5}}
    fig_bytecode = R.figures(sd, {"warm": warm, **bytecode}, wan, None)
    assert (fig_bytecode["warm_start_s"], fig_bytecode["warm_start_from"]) == (17.5, "warm_blocks_same_bytecode")
    assert fig_bytecode["warm_start_blocks_same_machine_bytecode_s"] == 17.5
    assert "| warm start ≤ 20 s | 17.5 s (by host: AI 17.5 s: imports 8.0 s, reading the 68 kept blocks 2.5 s; all " \
           "with Python's bytecode caches, as an installation has them; without, as the lent machine's Python runs: " \
           "27.5 s on AI) | **yes** |" in "\n".join(R.targets(fig_bytecode))
    # the same again on a slower host: both stand in the target, which says where it was met
    slower = {**blocks, "warm_start_s": 22.8, "import_s": 10.1, "precompiled": {**blocks["precompiled"], "load_s": 7.0}}
    fig_hosts = R.figures(sd, {"warm": warm, **bytecode, "warm_blocks_same_bytecode_az": slower}, wan, None)
    assert fig_hosts["warm_start_s"] == 17.5 and fig_hosts["warm_start_blocks_same_machine_bytecode_call_az_s"] == 22.8
    row = next(line for line in R.targets(fig_hosts) if line.startswith("| warm start"))
    assert "AI 17.5 s: imports 8.0 s, reading the 68 kept blocks 2.5 s; AZ 22.8 s: imports 10.1 s, reading the 68 " \
           "kept blocks 7.0 s; all with" in row and row.endswith("| **yes** on 1 of the 2 hosts measured |"), row
    # every further host's probe stands in it, the fastest of them the warm start
    faster = {**blocks, "warm_start_s": 15.5, "import_s": 6.5, "precompiled": {**blocks["precompiled"], "load_s": 4.8}}
    fig_more = R.figures(sd, {"warm": warm, **bytecode, "warm_blocks_same_bytecode_az": slower,
                              "warm_blocks_same_bytecode_bd": faster}, wan, None)
    assert (fig_more["warm_start_s"], fig_more["warm_start_from"]) == (15.5, "warm_blocks_same_bytecode_bd")
    row = next(line for line in R.targets(fig_more) if line.startswith("| warm start"))
    assert row.startswith("| warm start ≤ 20 s | 15.5 s (by host: AI 17.5 s: "), row
    assert "7.0 s; BD 15.5 s: imports 6.5 s, reading the 68 kept blocks 4.8 s; all with" in row, row
    assert row.endswith("| **yes** on 2 of the 3 hosts measured |"), row
    # call BC's in-process probes count as one host, by their mean, in the order of the calls
    fig_mean = {**fig_more, "warm_load_in_process_warm_start_mean_s": 21.0, "warm_load_in_process_probes": 4}
    row = next(line for line in R.targets(fig_mean) if line.startswith("| warm start"))
    assert "7.0 s; BC 21.0 s: the mean of 4 probes; BD 15.5 s" in row, row
    assert row.endswith("| **yes** on 2 of the 4 hosts measured |"), row
    # a probe of the max table's settings (a probe captures no CUDA graphs) is current too
    tables_max = {**tables, "best": {**tables["best"], "settings": "old"},
                  "max": {**tables["best"], "settings": "new + CUDA graphs"}}
    assert R.older_settings({"settings": "new"}, {**sd, "tables": tables_max}) == ""
    assert "settings of then: older" in R.older_settings({"settings": "older"}, {**sd, "tables": tables_max})
    # probes of other settings only (the presets changed since): the latest stands, saying which settings it had
    old = {"warm": {**warm, "settings": "then"}, "warm_blocks": {**blocks, "settings": "later"}}
    fig_old = R.figures({**sd, "tables": {**tables, "best": {**tables["best"], "settings": "now"}}}, old, wan, None)
    assert (fig_old["warm_start_s"], fig_old["warm_start_settings"]) == (19.0, "later")
    assert "| warm start ≤ 20 s | 19.0 s (the latest probe, with the settings of then: later) | **yes** |" in \
        "\n".join(R.targets(fig_old))
    row = next(line for line in R.sd_markdown(sd, fig_three, {"warm_blocks": blocks}) if "kept on disk" in line)
    assert "68 compiled blocks loaded from disk: reading 2.5 s, their first calls 4.0 s" in row
    assert "experts 9.0 vs 1.5 s, vae 3.0 vs 0.2 s" in row
    sys.argv = ["gpu_report.py", "--raw", str(raw), "--out", str(tmp_path)]
    R.main()
    assert json.loads((tmp_path / "RESULTS.json").read_text())["best_confiner_tflops"] == pytest.approx(577 / 1.2)
    assert "skipped (deadline)" in (tmp_path / "RESULTS.md").read_text()


def test_wan_figures_split_the_peaks_and_set_each_confiner_against_a14b_by_time_and_flops():
    import wan_benchmark as W

    runs = {"confiner_wan13": {"wall_s": 13.0, "tflop": 100.0, "peak_gpu_gib": 17.0},
            "wan21_13b_50": {"wall_s": 52.0, "tflop": 478.0, "peak_gpu_gib": 16.0},
            "wan14_probe": {"peak_gpu_gib": 60.0},
            "wan22_a14b_40": {"wall_s": 230.0, "tflop": 4000.0, "peak_gpu_gib": 70.0},
            "confiner_wan14": {"wall_s": 70.0, "tflop": 1230.0, "peak_gpu_gib": 71.0}}
    fig = W.figures({"runs": runs, "long": {}})
    assert fig["wan_peak_gpu_gib"] == 17.0 and fig["wan14_peak_gpu_gib"] == 71.0   # the 14B weights stay loaded
    assert fig["wan_ratio_confiner_to_wan22_a14b_40"] == pytest.approx(13 / 230)
    assert fig["wan_flop_ratio_confiner_to_wan22_a14b_40"] == pytest.approx(100 / 4000)
    assert fig["wan_ratio_confiner_14b_to_wan22_a14b_40"] == pytest.approx(70 / 230)
    # A14B-40 extrapolated from the probe: a time ratio, but no FLOP ratio (nothing ran whole)
    probe_only = {k: v for k, v in runs.items() if k != "wan22_a14b_40"}
    probe_only["wan14_probe"] = {"wan22_a14b_40_s_extrapolated": 240.0}
    fig = W.figures({"runs": probe_only, "long": {}})
    assert fig["wan22_a14b_40_extrapolated"] and fig["wan_ratio_confiner_to_wan22_a14b_40"] == pytest.approx(13 / 240)
    assert "wan_flop_ratio_confiner_to_wan22_a14b_40" not in fig and fig["wan14_peak_gpu_gib"] == 71.0


def test_report_folds_follow_up_calls():
    """A follow-up call's tables (best/max, lean_graphs) join the main call's, its skipped-there runs are filled,
    and its cold start (with that process's imports) is taken when the main call had none."""
    main = {"import_s": 17.0, "tables": {"eager": {"settings": "eager", "runs": {"modelscope_100": None},
                                                   "ratios": {}}}}
    extra = {"import_s": 12.0, "cold_start_s": 199.0, "cold_compile_s": 182.0, "compile_cache": {"bytes": 1},
             "tables": {"eager": {"settings": "eager", "runs": {"modelscope_100": run(20.0, 4206)}, "ratios": {}},
                        "best": {"settings": "best", "runs": {"confiner_4+5_modelscope": run(1.9, 577)},
                                 "ratios": {}}}}
    filled = R.fold_extra(main, extra)
    assert filled == ["eager/modelscope_100", "best/confiner_4+5_modelscope"]
    assert main["cold_start_s"] == 199.0 and main["cold_import_s"] == 12.0 and main["import_s"] == 17.0
    assert R.fold_extra(main, {"cold_start_s": 300.0, "import_s": 9.0, "tables": {}}) == []
    assert main["cold_start_s"] == 199.0                              # the first cold start measured is kept
    other = {"tables": {"best": {"settings": "best + frames", "runs": {"modelscope_100": run(11.0, 4206)}}}}
    assert R.fold_extra(main, other) == [] and "modelscope_100" not in main["tables"]["best"]["runs"]
    lines = "\n".join(R.targets({"eager_confiner_modelscope_s": 3.0, "lean_confiner_modelscope_s": 2.5,
                                  "lean_graphs_confiner_modelscope_s": 2.1}))
    assert "eager 3.000 s, lean 2.500 s, lean + CUDA graphs 2.100 s | **yes** |" in lines


def comfy_run(end_to_end: float, sampling: float, evaluations: int, host_ms: float, calls: int,
              decode: dict | None = None) -> dict:
    """A run as bench/comfy_benchmark.py records it (the median run with its per-run lists); ``decode``: its decode
    node's row."""
    return {"end_to_end_s": end_to_end, "host_overhead_median_ms": host_ms,
            "sampling": {"sampling_s": sampling, "evaluations": evaluations, "peak_gpu_gib": 5.5,
                         "counts": {"sampling_calls": calls, "load_models_gpu": calls + 2}},
            "nodes": {"11": {"class": "VAEDecode", "wall_s": 0.2, "peak_gpu_gib": 12.3, **(decode or {})}}}


def test_report_reads_the_comfy_benchmark_file(tmp_path):
    """The ComfyUI benchmark's figures (computed by its own ``figures``) become the RESULTS keys, next to the
    library's AnimateDiff ratio; a CPU smoke file gives none."""
    import comfy_benchmark as C

    runs = {"confiner_session": comfy_run(2.2, 1.8, 19, 3.0, 3),
            "confiner_per-evaluation": comfy_run(2.4, 2.0, 19, 8.0, 19),
            "animatediff_25": comfy_run(4.4, 4.0, 25, 4.7, 1)}
    comfy = {"device": "cuda:0", "device_name": "NVIDIA H200", "comfy_version": "0.8.0", "torch": "2.11",
             "date": "2026-12-01", "size": 512, "frames": 16, "runs": runs, "figures": C.figures(runs)}
    # the same benchmark as on an 8 GB card: ComfyUI's VAE decoded the 16 frames in 8 calls
    small = {**comfy, "free_gib": 7.0, "runs": {
        **runs, "confiner_per-evaluation": comfy_run(2.6, 2.0, 19, 8.0, 19, decode={
            "wall_s": 0.26, "peak_gpu_gib": 4.7, "vae_decoder_calls": 8, "vae_decoder_frames": 16})}}
    fig, md = R.comfy_figures(comfy, {R.LIBRARY_AD_RATIO: 0.5}, {"h200_comfy_free7.json": small,
                                                                 "cpu.json": {**small, "device": "cpu"}})
    # unsuffixed: the pack's default (stage sessions); _per_evaluation_calls: CONFINER_STAGE_SESSIONS=0
    assert fig["comfy_host_overhead_ms_per_eval"] == 3.0 and fig["comfy_ksampler_overhead_ms_per_step"] == 4.7
    assert fig["comfy_ratio_confiner_to_animatediff_25"] == pytest.approx(2.2 / 4.4)
    assert fig["comfy_host_overhead_ms_per_eval_per_evaluation_calls"] == 8.0
    assert fig["comfy_ratio_confiner_to_animatediff_25_per_evaluation_calls"] == pytest.approx(2.4 / 4.4)
    assert fig["comfy_ratio_off_library"] == pytest.approx(2.2 / 4.4 / 0.5 - 1)
    assert fig["comfy_decode_node"] == "VAEDecode" and fig["comfy_decode_peak_gib"] == 12.3
    assert fig["comfy_decode_VAEDecode_all_free_decode_s"] == 0.2
    # the variant ran its ConFiner prompt with one sampling call per evaluation only (--mechanisms per-evaluation)
    small["runs"].pop("confiner_session")
    fig, md = R.comfy_figures(comfy, {R.LIBRARY_AD_RATIO: 0.5}, {"h200_comfy_free7.json": small,
                                                                 "cpu.json": {**small, "device": "cpu"}})
    assert fig["comfy_decode_VAEDecode_7gib_free_decode_peak_gib"] == 4.7
    assert fig["comfy_decode_VAEDecode_7gib_free_ratio_confiner_to_animatediff_25"] == pytest.approx(2.6 / 4.4)
    assert "\n".join(md).count("| VAEDecode | 7 GiB | 8 for 16 frames | 0.260 | 4.70 | 5.50 |") == 1  # not the CPU run
    assert "| one sampling call per evaluation | 2.600 | 4.400 | 0.591 |" in "\n".join(md)   # the run that decoded
    assert fig["comfy_sampling_ratio_confiner_to_animatediff_25"] == pytest.approx(1.8 / 4.0)
    text = "\n".join(md)
    assert "| host overhead per evaluation ≤ KSampler's per step | 3.00 ms vs 4.70 ms | **yes** |" in text
    assert R.comfy_figures({**comfy, "device": "cpu"}, {}) == ({}, [])


# ------------------------------------------------------------------------------------------- layout audit

def test_strided_reasons():
    out = torch.empty(2, 6, 4, 4)
    assert A.strided_reason(torch.empty(2, 6, 4, 4), out) is None
    assert A.strided_reason(torch.tensor(3.0), out) is None
    assert A.strided_reason(torch.empty(2, 6, 1, 1), out) == "broadcast"
    assert A.strided_reason(torch.empty(2, 6, 4, 8)[..., ::2], out) == "gapped"
    assert A.strided_reason(torch.empty(2, 6, 4, 4).contiguous(memory_format=torch.channels_last), out) == \
        "mixed-layout"


def test_a_tiny_smoke_runs_results_say_its_baselines_ran_a_tenth_of_their_steps():
    """``--tiny`` runs the baselines at a tenth of their steps while the labels and ratio keys name 100, 50 and 25: a
    trial read "ModelScope T2V, 100 steps" and its ratio for a 10-step run. The results say so; a full run does not."""
    import gpu_benchmark as G

    res = {"device_name": "cpu", "torch": "t", "diffusers": "d", "date": "today", "import_s": 1.0, "build_s": 1.0,
           "tables": {}, "long": {}}
    assert "(ModelScope 10 and 5, AnimateDiff 2, where the labels and ratio keys name 100, 50 and 25)" in \
        G.markdown({**res, "tiny": True})
    assert "Smoke run" not in G.markdown({**res, "tiny": False})


def test_layout_audit_finds_what_the_lean_preset_fixes():
    """On the benchmark's tiny models (CPU): diffusers' GEGLU works on gapped halves, and with channels_last
    weights diffusers' temporal transformers return NCHW, so their residual add mixes layouts; the temporal
    rewrite of the lean preset removes those adds."""
    import gpu_benchmark as G
    from confiner_core.diffusers_backend.speed import keep_temporal_layouts, to_channels_last

    models = G.build(G.TINY, torch.float32, None, with_ad_temporal=False)

    def temporal_mixed_adds(rows):
        return [r for r in rows if r["op"] == "add" and r["reason"] == "mixed-layout" and r["network"] in
                ("ms", "control") and ("transformer_temporal.py" in r["where"] or "speed.py" in r["where"]
                                       or "unet_motion_model.py:2" in r["where"].split(" <- ")[0])]

    rows = A.audit(models, "cpu", torch.float32, tiny=True)
    assert any(r["op"] == "gelu" and r["reason"] == "gapped" and "activations.py" in r["where"] for r in rows)
    for name in ("sd", "control", "ms"):
        to_channels_last(models[name], conv3d=True)
    assert temporal_mixed_adds(A.audit(models, "cpu", torch.float32, tiny=True))
    for name in ("control", "ms"):
        assert keep_temporal_layouts(models[name]) > 0
    assert not temporal_mixed_adds(A.audit(models, "cpu", torch.float32, tiny=True))


def test_module_timer_books_peak_memory_to_the_module_that_made_it():
    """Peaks per watched group (a VAE decode against the experts) from the allocator's peak counter, reset around
    every watched call, and the run's overall peak kept across those resets."""
    import gpu_benchmark as G

    class Memory:  # the allocator's counter: allocations raise the peak, a reset brings it to what is allocated
        allocated = top = 0

        @classmethod
        def alloc(cls, n):
            cls.allocated += n
            cls.top = max(cls.top, cls.allocated)

        @classmethod
        def free(cls, n):
            cls.allocated -= n

        @classmethod
        def peak(cls):
            return cls.top

        @classmethod
        def reset(cls):
            cls.top = cls.allocated

    class Net(torch.nn.Module):
        def __init__(self, working):
            super().__init__()
            self.working = working

        def forward(self, x):
            Memory.alloc(self.working)
            Memory.free(self.working)
            return x

    timer = G.ModuleTimer(False, memory=Memory)
    unet, decoder = Net(5), Net(3)
    timer.watch("experts", "unet", unet)
    timer.watch("vae", "decoder", decoder)
    Memory.alloc(10)                      # weights
    timer.reset()
    unet(torch.zeros(1))
    Memory.alloc(7)                       # the core's own tensors between calls: the run's peak, no group's
    Memory.free(7)
    decoder(torch.zeros(1))
    decoder(torch.zeros(1))
    assert timer.peaks == {"experts": 15, "vae": 13}
    assert timer.peak() == 17
    assert timer.peak_gib() == {"experts": 15 / 2**30, "vae": 13 / 2**30}


class FakeEvent:
    """A CUDA event at a known time (ms): elapsed_time as torch.cuda.Event computes it."""

    def __init__(self, ms):
        self.ms = ms

    def elapsed_time(self, later):
        return later.ms - self.ms


def test_time_between_watched_calls_and_its_report_line():
    import gpu_benchmark as G
    timer = G.ModuleTimer(False)
    e = FakeEvent
    timer.sequence = [["start", e(0), e(0)], ["sd", e(1), e(10)], ["ms", e(13), e(20)], ["sd", e(24), e(30)],
                      ["ms", e(31), e(40)], ["end", e(42), e(42)]]
    between = timer.between()
    assert between == {"sd -> ms": {"n": 2, "ms": 4.0}, "ms -> sd": {"n": 1, "ms": 4.0},
                       "ms -> end": {"n": 1, "ms": 2.0}, "start -> sd": {"n": 1, "ms": 1.0}}
    assert list(between)[:2] == ["sd -> ms", "ms -> sd"]          # the largest first
    line = R.between_calls({"between_modules_ms": between,
                                     "gc": {"collections": [3, 1, 0], "ms": [1.0, 0.5, 0.0]}})[1]
    assert line.startswith("GPU time between watched calls in the ConFiner run: 11.0 ms in all; sd -> ms 4.0 (2×)")
    assert "(generations 0/1/2): 3/1/0, 1.5 ms." in line
    assert R.between_calls({"between_modules_ms": None}) == []     # files from before the measurement


def test_timed_runs_keep_their_order_and_the_slowest_says_what_it_captured():
    """The median comes from sorted runs; the order they ran in and the slowest run's breakdown (CUDA graphs it
    captured) are kept, so a one-off cost is found in the run that paid it."""
    import time

    import gpu_benchmark as G
    captured, sleeps = [0], iter([0.0, 0.05, 0.0])

    def run():
        pause = next(sleeps)
        if pause:                      # the run that captures two graphs is the slow one
            captured[0] += 2
            time.sleep(pause)

    class Flops:
        @staticmethod
        def total(calls):
            return 1e12

    res = G.timed(run, torch.device("cpu"), 3, G.ModuleTimer(False), Flops, 1e9, 0.0, warmup=lambda: None,
                  captures=lambda: captured[0])
    assert res["runs_in_order_s"][1] == max(res["runs_in_order_s"]) == res["runs_s"][-1]
    assert res["slowest"]["run"] == 2 and res["slowest"]["graph_captures"] == 2
    assert res["graph_captures"] == 0 and res["wall_s"] < 0.05      # the median run captured nothing


def test_first_timed_run_under_the_host_profiler(tmp_path):
    """--host-profile-first-run: the first timed run (not the warm-up, not the others) runs under cProfile, and its
    functions land in the file."""
    import gpu_benchmark as G
    calls = []

    def second_generation():
        calls.append("run")

    class Flops:
        @staticmethod
        def total(calls):
            return 1.0

    path = tmp_path / "host.txt"
    G.timed(second_generation, torch.device("cpu"), 3, G.ModuleTimer(False), Flops, 1e9, 0.0,
            warmup=lambda: calls.append("warm-up"), first_run=lambda run: G.host_profiled(run, str(path)))
    assert calls == ["warm-up", "run", "run", "run"]
    text = path.read_text()
    assert "second_generation" in text and "warm-up" not in text


def test_watched_calls_are_profile_phases_only_under_a_profiler():
    """Each watched call opens a record_function range named after the network while a profiler runs (a profile's
    phases split the refinement into its experts), and none otherwise."""
    from torch.profiler import ProfilerActivity, profile

    import gpu_benchmark as G
    timer = G.ModuleTimer(False)
    sd, ms = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    timer.watch("experts", "sd", sd)
    timer.watch("experts", "ms", ms)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ms(sd(torch.randn(2, 4)))
    names = [e.key for e in prof.key_averages()]
    assert "sd" in names and "ms" in names and timer.ranges == []
    sd(torch.randn(2, 4))
    assert timer.ranges == []                      # without a profiler: nothing left open either


def test_gc_pauses_count_collections_by_generation():
    import gc

    import gpu_benchmark as G
    G.gc_pauses.reset()
    gc.collect(0)
    gc.collect(2)
    summary = G.gc_pauses.summary()
    assert summary["collections"][0] >= 1 and summary["collections"][2] >= 1
    assert summary["ms"][2] > 0
    G.gc_pauses.reset()
    assert G.gc_pauses.summary() == {"collections": [0, 0, 0], "ms": [0.0, 0.0, 0.0]}


def test_ratio_target_takes_the_fastest_table():
    fig = {"fastest_table": "max", "fastest_confiner_modelscope_s": 1.683,
           "max_ratio_confiner_modelscope_to_modelscope_100": 0.1384,
           "max_flop_ratio_confiner_modelscope_to_modelscope_100": 0.1371,
           "best_ratio_confiner_modelscope_to_modelscope_100": 0.1412,
           "best_flop_ratio_confiner_modelscope_to_modelscope_100": 0.1371}
    row = next(line for line in R.targets(fig) if line.startswith("| best-settings ratio"))
    assert row == "| best-settings ratio to ModelScope-100 ≤ FLOP ratio | 0.1384 vs 0.1371 (max; best 0.141) | no |"


def test_tables_with_attention_over_frames_stand_beside_the_tables_measured_before():
    def table(settings, confiner, ms100):
        return {"settings": settings, "runs": {R.CONFINER: run(confiner, 577.0), "modelscope_100": run(ms100, 4206.0)}}

    assert [R.over_frames(s) for s in ("eager", "fused QKV + attention cudnn", "attention cudnn + efficient attention "
                                       "over frames + torch.compile (blocks)")] == ["default", "cudnn", "efficient"]
    sd = {"tables": {"eager": table("eager", 2.567, 19.890), "lean": table("attention cudnn", 2.0, 14.0)},
          "cold_start_s": 180.0, "import_s": 17.0}
    later = {"tables": {"lean": table("attention cudnn + frames attention over frames", 1.987, 13.272),
                        "max": table("attention cudnn + frames attention over frames", 1.55, 11.3),
                        "lean_graphs": {"settings": "attention cudnn + frames attention over frames",
                                        "runs": {R.CONFINER: run(1.88, 577.0), "modelscope_100": None}}},
             "cold_start_s": 190.0, "import_s": 15.0}
    replaced = R.newer_tables(sd, later)
    assert list(replaced) == ["lean"] and sd["tables"]["max"] is later["tables"]["max"]
    assert (sd["cold_start_s"], sd["cold_import_s"]) == (190.0, 15.0)   # the start figures follow the compiled table
    before = {"eager": table("eager", 2.568, 19.779), "lean": table("attention cudnn + efficient attention over "
                                                                     "frames", 1.933, 13.870),
              "max": table("attention cudnn", 1.650, 12.085),
              "lean_graphs": table("attention cudnn + efficient attention over frames", 1.9, 13.9),
              "best": {"settings": "best", "runs": {R.CONFINER: None, "modelscope_100": None}}}
    out, md = R.temporal_attention_figures(sd, [("`a.json`", replaced), ("`b.json`", before)])
    assert "| lean | **frames** | **1.987** | **13.272** | **0.1497** | the tables above |" in md
    assert "| lean | cudnn | 2.000 | 14.000 | 0.1429 | `a.json` |" in md
    assert "| lean | efficient | 1.933 | 13.870 | 0.1394 | `b.json` |" in md
    assert "| eager | default | 2.568 | 19.779 | 0.1298 | `b.json` |" in md   # the spread between calls
    assert not any(line.startswith("| best") for line in md)          # not measured: no row
    assert "| max | **frames** | **1.550** | **11.300** | **0.1372** | the tables above |" in md
    assert "| lean_graphs | **frames** | **1.880** | — | — | the tables above |" in md   # ConFiner alone measured
    assert not any("fold" in line for line in md)
    sd["tables"]["max"] = table("attention cudnn + folded upsampling + frames attention over frames", 1.5, 11.0)
    _, md_folded = R.temporal_attention_figures(sd, [("`b.json`", before)])
    assert any("Of the tables above, max also folds its upsampling" in line for line in md_folded)
    assert out["lean_graphs_efficient_over_frames_confiner_modelscope_s"] == 1.9
    assert out["max_cudnn_over_frames_ratio_confiner_modelscope_to_modelscope_100"] == pytest.approx(1.650 / 12.085)
    assert out["lean_efficient_over_frames_modelscope100_s"] == 13.870
    assert not any(key.startswith("eager") for key in out)            # the same kernel: a row, no figure
    fig = {"fastest_table": "max", "max_ratio_confiner_modelscope_to_modelscope_100": 1.55 / 11.3,
           "max_flop_ratio_confiner_modelscope_to_modelscope_100": 0.1371, **out}
    row = next(line for line in R.targets(fig) if line.startswith("| best-settings ratio"))
    assert row == ("| best-settings ratio to ModelScope-100 ≤ FLOP ratio | 0.1372 vs 0.1371 (cudnn over frames "
                   "0.1365) | no |")
    assert R.temporal_attention_figures(sd, []) == ({}, [])


def test_two_attention_probes_make_one_table_each_backend_from_one_call():
    def entry(ms):
        return {"median_ms": ms, "tflops": 1.0 / ms, "max_abs_diff": 0.0}

    earlier = {"device": "H200", "torch": "2.11", "dtype": "float16", "backends": ["cudnn", "efficient", "flash4"],
               "shapes": {"frames": {"shape": [1], "reference": "cudnn", "fastest": "efficient", "backends": {
                   "cudnn": entry(1.10), "efficient": entry(0.73), "flash4": entry(2.3)}},
                   "wan": {"shape": [2], "reference": "cudnn", "fastest": "flash4", "backends": {
                       "cudnn": entry(12.1), "flash4": entry(10.4)}}}}
    later = {**earlier, "backends": ["cudnn", "efficient", "frames"],
             "shapes": {"frames": {"shape": [1], "reference": "cudnn", "fastest": "frames", "backends": {
                 "cudnn": entry(1.09), "efficient": entry(0.78), "frames": entry(0.33)}}}}
    merged = R.merge_probes(earlier, later)
    assert merged["backends"] == ["cudnn", "efficient", "frames", "flash4"] and merged["added"] == ["flash4"]
    row = merged["shapes"]["frames"]["backends"]
    assert (row["efficient"]["median_ms"], row["flash4"]["median_ms"]) == (0.78, 2.3)   # the later call's own first
    assert merged["shapes"]["frames"]["fastest"] == "frames"
    assert merged["shapes"]["wan"] is earlier["shapes"]["wan"]       # measured by the earlier call alone
    assert R.merge_probes(earlier, None) is earlier
    _, md = R.attention_figures(merged)
    assert any("The `flash4` column came from an earlier call" in line for line in md)


def test_network_rates_set_each_forward_s_flops_against_its_probed_time():
    flops = {"tflop": {"sd_batch32": 25.7, "control_1x16": 17.75, "vae_decode_4_frames": 10.0}}
    sd = {"frames": 16, "tables": {"max": {
        "decode_chunk": 4, "runs": {R.CONFINER: run(1.6, 577.0, modules_s={"vae": 0.125})},
        "launch_probe": {"sd_batch32": {"as set": {"gpu_s": 0.0647, "cpu_issue_s": 0.002}},
                         "control_1x16": {"as set": {"error": "failed"}},
                         "modelscope_2x16": {"as set": {"gpu_s": 0.11, "cpu_issue_s": 0.004}}}}}}
    fig = R.network_rates(sd, flops)
    assert fig == {"max_tflops_sd_batch32": pytest.approx(25.7 / 0.0647),
                   "max_tflops_confiner_decode": pytest.approx(4 * 10.0 / 0.125)}   # 16 frames: four chunks of 4
    lines = R.probe_table(sd["tables"]["max"]["launch_probe"], "max", fig)
    assert lines[0].startswith("| one forward (GPU s; CPU issue s; TFLOP/s as set)")
    assert "| sd_batch32 | 0.0647; 0.0020; **397** |" in lines
    assert "| modelscope_2x16 | 0.1100; 0.0040 |" in lines                # no FLOP count: no rate
    assert lines[-1] == "The ConFiner run's VAE decode: 320 TFLOP/s."
    assert R.network_rates(sd, None) == {}
    assert R.network_rates({**sd, "size": 512}, {**flops, "size": 256}) == {}   # counted for other shapes


def test_compiled_vae_section_sets_the_probe_beside_the_fastest_tables_decode():
    probe = {"device": "NVIDIA H200", "torch": "2.11", "size": 512, "frames": 16, "chunk_frames": 4,
             "lean": {"median_s": 0.2, "first_call_s": 8.0, "peak_gib": 1.7},
             "fast": {"median_s": 0.1, "first_call_s": 27.0, "peak_gib": 1.6}}
    fig = {"fastest_table": "max", "max_confiner_decode_s": 0.104, "best_confiner_decode_s": 0.3}
    out, md = R.vae_probe_figures(probe, fig)
    assert out == {"vae_decode_lean_s": 0.2, "vae_decode_compiled_s": 0.1, "vae_decode_compile_s": 27.0,
                   "vae_decode_probe_lean_s": 0.2, "vae_decode_probe_fast_s": 0.1}
    assert "| lean | per-group kernels | **0.200** | 8.0 | 1.70 |" in "\n".join(md)
    assert "The decode inside the `max` table's ConFiner run: 0.104 s." in md
    assert R.vae_probe_figures(None, fig) == ({}, [])
    # the variants with the norms as picked now: the figures without a suffix are theirs, each preset's last
    probe["lean_rows"] = {"median_s": 0.15, "first_call_s": 1.0, "peak_gib": 1.7, "max_abs_diff_from_lean": 0.005}
    probe["fast_rows_op"] = {"median_s": 0.09, "first_call_s": 5.0, "peak_gib": 1.6}
    out, md = R.vae_probe_figures(probe, fig)
    assert (out["vae_decode_lean_s"], out["vae_decode_compiled_s"], out["vae_decode_compile_s"]) == (0.15, 0.09, 5.0)
    assert out["vae_decode_probe_fast_s"] == 0.1 and out["vae_decode_probe_fast_rows_op_s"] == 0.09
    assert "| lean | as picked now (row kernels for narrow groups) | **0.150** | 1.0 | 1.70 | — % | 5.0e-03 |" in md
    # with --profile: the share of the decode's kernel time in GroupNorm, and the profiles of the variants of now
    kinds = {k: {"s": 0.0, "share": 0.0} for k in P.KINDS}
    profile = {"source": "CUDA kernels", "kernels": 900, "kernel_s": 0.128, "wall_s": 0.146, "top": [],
               "kinds": {**kinds, "norm": {"s": 0.062, "share": 0.48}, "convolution": {"s": 0.054, "share": 0.42}}}
    probe["fast"]["profile"] = probe["fast_rows_op"]["profile"] = profile
    out, md = R.vae_probe_figures(probe, fig)
    assert out["vae_decode_fast_norm_share"] == 0.48 and "vae_decode_lean_norm_share" not in out
    text = "\n".join(md)
    assert "**Profile of one decode (fast_rows_op)** — CUDA kernels: 900 kernels" in text
    assert "Profile of one decode (fast)**" not in text and "| norm | 0.062 | 48.0 % |  |" in md


def test_norm_section_names_the_way_each_shape_takes():
    probe = {"device": "NVIDIA H200", "torch": "2.11", "dtype": "torch.float16", "groups": 32,
             "shapes": [{"where": "vae", "shape": [4, 128, 64, 64]}, {"where": "unet", "shape": [32, 1280, 32, 32]}],
             "total_ms": {"eager": 3.0, "inductor": 2.0}}
    for row in probe["shapes"]:
        row.update({"eager": {"ms": 1.5, "GB_s": 100.0}, "inductor": {"ms": 1.0, "GB_s": 150.0}})
    out, md = R.norm_probe_figures(probe)
    assert out == {"norm_probe_total_eager_ms": 3.0, "norm_probe_total_inductor_ms": 2.0}
    # 4 channels a group at batch 4: the row kernels, also in a compiled graph (128 of inductor's programs);
    # 40 channels a group at batch 32 and 1024 pixels: per group, and inductor's fusion when compiled
    assert "| vae | [4, 128, 64, 64] | 1.500 (100) | 1.000 (150) | — | — | row kernels | row kernels |" in md
    assert "| unet | [32, 1280, 32, 32] | 1.500 (100) | 1.000 (150) | — | — | per-group kernels | inductor |" in md
    assert R.norm_probe_figures(None) == ({}, [])


def test_attention_probe_times_each_backend_against_a_reference_and_reports_what_a_backend_refuses():
    flop = AP.attention_tflop(32, 8, 4096, 4096, 40)
    assert flop == pytest.approx(4 * 32 * 8 * 4096 * 4096 * 40 / 1e12)

    def scaled(factor):  # a "backend" whose output is off by a known amount
        return lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v) * factor

    def refuses(q, k, v):
        raise RuntimeError("no kernel for this head dim\nsecond line")

    fns = {"math": scaled(1.0), "off": scaled(1.5), "refuses": refuses}
    row = AP.probe_shape(("s", 1, 2, 8, 8, 16), fns, torch.device("cpu"), torch.float32, repeats=2)
    assert row["reference"] == "math" and row["backends"]["math"]["max_abs_diff"] == 0
    # the offset backend's difference is its own output's size, as computed independently here
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g) for n in (8, 8, 8))
    expected = (0.5 * torch.nn.functional.scaled_dot_product_attention(q, k, v)).abs().max().item()
    assert row["backends"]["off"]["max_abs_diff"] == pytest.approx(expected, rel=1e-5)
    assert row["backends"]["refuses"] == {"error": "RuntimeError: no kernel for this head dim"}
    assert row["fastest"] in ("math", "off")


SHORT_KEYS_CHECK = textwrap.dedent("""
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path[:0] = [sys.argv[1]]
    import torch
    import attention_probe as AP
    g = torch.Generator().manual_seed(0)
    out = []
    # SD's 77 text tokens (a 128-key tile, 51 masked), queries not a multiple of the query tile, head dims 40 and 80
    for (b, h, nq, nk, d), (m, w) in (((2, 3, 100, 77, 40), (64, 4)), ((1, 2, 33, 16, 80), (32, 4))):
        q, k, v = (torch.randn(b, h, n, d, generator=g) for n in (nq, nk, nk))
        got = AP.short_key_attention(q, k, v, m, w)
        ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
        out.append({"err": (got.double() - ref).abs().max().item(), "shape": list(got.shape),
                    "bshd": got.transpose(1, 2).is_contiguous()})
    try:
        AP.short_key_attention(torch.zeros(1, 1, 8, 40), torch.zeros(1, 1, 129, 40), torch.zeros(1, 1, 129, 40),
                               64, 4)
        out.append("taken")
    except ValueError as e:
        out.append(str(e))
    print(json.dumps(out))
""")


def test_short_key_attention_kernel_under_the_interpreter():
    """The probe's candidate kernel for attention over at most 128 keys, against float64 SDPA: masked keys (77 of a
    128-key tile), a last query tile that is not full, the output in [B, N, H, D] memory; more keys are refused."""
    import subprocess
    bench = os.path.dirname(R.__file__)
    done = subprocess.run([sys.executable, "-c", SHORT_KEYS_CHECK, bench], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    first, second, refused = json.loads(done.stdout.strip().splitlines()[-1])
    assert first["shape"] == [2, 3, 100, 40] and second["shape"] == [1, 2, 33, 80]
    assert first["err"] < 1e-5 and second["err"] < 1e-5 and first["bshd"] and second["bshd"]
    assert refused.startswith("more than 128 keys")


def test_attention_section_names_the_short_key_candidate_only_where_it_ran():
    def data(names):
        return {"device": "NVIDIA H200", "torch": "2.11", "dtype": "float16", "backends": names, "skipped": [],
                "shapes": {"sd cross 64² (d 40)": {
                    "shape": [32, 8, 4096, 77, 40], "tflop": 0.013, "reference": "cudnn", "fastest": names[-1],
                    "backends": {n: {"median_ms": 0.2 - 0.1 * i, "tflops": 60.0, "first_call_s": 0.1,
                                     "max_abs_diff": 1e-3 * i} for i, n in enumerate(names)}}}}

    _, md = R.attention_figures(data(["cudnn", "shortkeys_m64_w4"]))
    assert "candidate kernel for at most 128 keys" in md[2]
    assert "| sd cross 64² (d 40) [32, 8, 4096, 77, 40] | 0.200 (60) | **0.100 (60), Δ 1.0e-03** | " \
        "shortkeys_m64_w4 |" in md
    _, md = R.attention_figures(data(["cudnn", "flash"]))
    assert "at most 128 keys" not in md[2]
    out, md = R.attention_figures(data(["cudnn", "shortkeys_m64_w4"]), "Short keys", "attention_short_keys", "Why.")
    assert md[:4] == ["## Short keys", "", "Why.", ""] and list(out) == ["attention_short_keys"]


def test_attention_section_marks_the_fastest_backend_and_lists_refusals():
    data = {"device": "NVIDIA H200", "torch": "2.11", "dtype": "float16", "backends": ["cudnn", "flash", "flash4"],
            "skipped": ["wan 14B self (d 128)"],
            "shapes": {"sd self 64² (d 40)": {
                "shape": [32, 8, 4096, 4096, 40], "tflop": 0.69, "reference": "flash", "fastest": "flash4",
                "backends": {"cudnn": {"median_ms": 3.5, "tflops": 197.0, "first_call_s": 0.1, "max_abs_diff": 1e-3},
                             "flash": {"median_ms": 4.0, "tflops": 172.0, "first_call_s": 0.1, "max_abs_diff": 0.0},
                             "flash4": {"median_ms": 3.0, "tflops": 230.0, "first_call_s": 12.0,
                                        "max_abs_diff": 2e-3}}},
                "temporal 64² (d 40)": {
                "shape": [8192, 8, 16, 16, 40], "tflop": 0.003, "reference": "cudnn", "fastest": "cudnn",
                "backends": {"cudnn": {"median_ms": 0.2, "tflops": 15.0, "first_call_s": 0.1, "max_abs_diff": 0.0},
                             "flash": {"error": "RuntimeError: batch too large"},
                             "flash4": {"median_ms": 0.3, "tflops": 10.0, "first_call_s": 0.5, "max_abs_diff": 1e-3}}}}}
    out, md = R.attention_figures(data)
    assert out == {"attention_probe": {"attention_fastest sd self 64² (d 40)": {"backend": "flash4", "ms": 3.0},
                                       "attention_fastest temporal 64² (d 40)": {"backend": "cudnn", "ms": 0.2}}}
    assert "| sd self 64² (d 40) [32, 8, 4096, 4096, 40] | 3.500 (197), Δ 1.0e-03 | 4.000 (172) | " \
           "**3.000 (230), first 12.0 s, Δ 2.0e-03** | flash4 |" in md
    assert ("| temporal 64² (d 40) [8192, 8, 16, 16, 40] | **0.200 (15)** | not taken | 0.300 (10), Δ 1.0e-03 | "
            "cudnn |") in md
    assert "Not taken: flash: RuntimeError: batch too large (temporal 64² (d 40))." in md
    assert "Skipped at the deadline: wan 14B self (d 128)." in md
    assert R.attention_figures(None) == ({}, [])


def test_decode_chunk_table_and_library_default():
    """The decode table marks the library's default chunk and says whether each decode stayed under the sampling's
    peak; the measured file names the default the library actually has."""
    from confiner_core.diffusers_backend.vae import DEFAULT_CHUNK_FRAMES
    raw = os.path.join(os.path.dirname(R.__file__), "gpu_results", R.FILES["decode_chunks"])
    with open(raw) as f:
        measured = json.load(f)
    assert measured["library_default"] == DEFAULT_CHUNK_FRAMES
    figures, _ = R.decode_chunk_figures(measured)      # the default was chosen to keep the decode under sampling
    assert figures["library_decode_peak_gib"] <= figures["library_sampling_peak_gib"]

    def chunk(vae_s, vae_peak, experts_peak):
        return {"modules_s": {"vae": vae_s}, "modules_peak_gib": {"vae": vae_peak, "experts": experts_peak}}
    data = {"library_default": 4, "chunks": {"8": chunk(0.17, 14.4, 13.4), "4": chunk(0.167, 12.9, 13.4)}}
    fig, md = R.decode_chunk_figures(data)
    assert fig == {"library_decode_peak_gib": 12.9, "library_sampling_peak_gib": 13.4, "library_decode_s": 0.167,
                   "library_decode_chunk_frames": 4}
    rows = [line for line in md if line.startswith("| 4") or line.startswith("| 8")]
    assert rows == ["| 4 (default) | 0.167 | 12.90 | 13.40 | **yes** |", "| 8 | 0.170 | 14.40 | 13.40 | no |"]
    assert "| library VAE decode peak ≤ sampling peak | 12.90 vs 13.40 GiB | **yes** |" in "\n".join(R.targets(fig))
    assert R.decode_chunk_figures(None) == ({}, [])


def test_geglu_gemm_probe_checks_the_fused_kernel_under_the_interpreter(tmp_path):
    """The probe's CPU smoke run: its fused GEMM + gate kernel (Triton's interpreter) against an fp32 reference,
    next to the ways the presets take, on rows that do not fill the last row tile."""
    import subprocess
    probe = os.path.join(os.path.dirname(R.__file__), "geglu_gemm_probe.py")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, probe, "--device", "cpu", "--tiny", "--repeats", "1", "--out", str(tmp_path)],
                   check=True, env=env, capture_output=True, timeout=300)
    data = json.loads((tmp_path / "geglu_gemm.json").read_text())
    (row,) = data["shapes"]
    ways = {r["way"]: r for r in row["ways"]}
    assert row["rows"] == 200 and row["best_fused"].startswith("fused (64,")
    assert ways[row["best_fused"]]["max_diff"] < 1e-4 and ways["cublas + inductor gate"]["max_diff"] < 1e-4
    assert ways["cublas GEMM alone"]["max_diff"] is None


def test_geglu_gemm_section_sets_each_shape_against_the_presets():
    def shape(where, presets, fused):
        return {"where": where, "rows": 64, "k": 320, "ways": [
            {"way": "cublas + inductor gate", "ms": presets}, {"way": "cublas + gate kernel", "ms": 0.7},
            {"way": "cublas GEMM alone", "ms": 0.4}, {"way": "fused (128, 64, 64, 8, 4, 4)", "error": "out of memory"},
            {"way": "fused (128, 128, 64, 8, 8, 3)", "ms": fused}],
            "best_fused": "fused (128, 128, 64, 8, 8, 3)", "best_fused_vs_inductor": presets / fused}
    probe = {"device": "NVIDIA H200", "torch": "2.11", "dtype": "torch.float16", "timing": "CUDA graph of 10 calls",
             "shapes": [shape("a", 0.6, 0.75), shape("b", 0.5, 0.4), {"where": "c", "skipped": "deadline"}]}
    out, md = R.geglu_gemm_figures(probe)
    assert out == pytest.approx({"geglu_gemm_presets_over_fused_min": 0.8, "geglu_gemm_presets_over_fused_max": 1.25})
    assert "| a | 64 x 320 | 0.600 | 0.700 | 0.400 | 0.750 (`(128, 128, 64, 8, 8, 3)`) | 0.80 |" in md
    assert "| c | — | deadline | | | | |" in md
    assert any("faster on 1 of 2 shapes" in line for line in md)
    assert R.geglu_gemm_figures(None) == ({}, [])


def test_fp8_linear_probe_quantises_within_fp8s_rounding(tmp_path, monkeypatch):
    """The probe's CPU smoke run: the fp32 ways match the reference, the three fp8 ways differ from it by fp8's
    rounding (e4m3 keeps 3 mantissa bits: a few per cent of the largest value), not by a wrong scale (O(1))."""
    import fp8_linear_probe as P
    monkeypatch.setattr(sys, "argv", ["fp8_linear_probe.py", "--device", "cpu", "--tiny", "--repeats", "1",
                                      "--out", str(tmp_path)])
    P.main()
    data = json.loads((tmp_path / "fp8_linear.json").read_text())
    (row,) = data["shapes"]
    diffs = {r["way"]: r["rel_diff"] for r in row["ways"]}
    assert list(diffs) == ["fp16", "fp8 tensor", "fp8 row", "fp8 GEMM alone", "fp16 acc16", "bf16"]
    assert list(data["total_ms"]) == list(diffs)
    assert diffs["fp16"] < 1e-5 and diffs["fp16 acc16"] < 1e-5   # (cuBLAS's setting: none on the CPU)
    assert torch.backends.cuda.matmul.allow_fp16_accumulation is False   # set only around its own calls
    assert all(1e-3 < diffs[w] < 0.1 for w in ("fp8 tensor", "fp8 row", "fp8 GEMM alone")), diffs
    # bf16 keeps 8 significant bits: its rounding (2^-9 = 2e-3 of a value) shows, an order below fp8's
    assert 2e-4 < diffs["bf16"] < 1e-2 and diffs["bf16"] < min(diffs[w] for w in ("fp8 tensor", "fp8 row")) / 3


def test_fp8_linear_probe_runs_the_ways_asked(tmp_path, monkeypatch):
    import fp8_linear_probe as P
    monkeypatch.setattr(sys, "argv", ["fp8_linear_probe.py", "--device", "cpu", "--tiny", "--repeats", "1",
                                      "--ways", "bf16", "fp16", "--out", str(tmp_path)])
    P.main()
    data = json.loads((tmp_path / "fp8_linear.json").read_text())
    assert [r["way"] for r in data["shapes"][0]["ways"]] == ["fp16", "bf16"]   # (in the probe's order)
    assert list(data["total_ms"]) == ["fp16", "bf16"]


def test_fp8_linear_section_counts_the_shapes_each_way_wins():
    def shape(where, fp16, tensor, row, alone):
        return {"where": where, "rows": 64, "k": 32, "n": 48, "ways": [
            {"way": w, "ms": ms, "rel_diff": d} for w, ms, d in (("fp16", fp16, 3e-4), ("fp8 tensor", tensor, 4e-2),
                                                                 ("fp8 row", row, 4e-2), ("fp8 GEMM alone", alone, 4e-2))]}
    probe = {"device": "NVIDIA H200", "torch": "2.11", "dtype": "torch.float16", "timing": "CUDA graph of 10 calls",
             "shapes": [shape("a", 0.2, 0.3, 0.4, 0.1), shape("b", 0.2, 0.1, 0.5, 0.15)],
             "total_ms": {"fp16": 0.4, "fp8 tensor": 0.35, "fp8 row": 0.9, "fp8 GEMM alone": 0.25}}
    out, md = R.fp8_linear_figures(probe)
    assert out == {"fp8_linear_total_ms fp16": 0.4, "fp8_linear_total_ms fp8 tensor": 0.35,
                   "fp8_linear_total_ms fp8 row": 0.9, "fp8_linear_total_ms fp8 GEMM alone": 0.25}
    assert "| a | 64 x 32 -> 48 | 0.200 (3.0e-04) | 0.300 (4.0e-02) | 0.400 (4.0e-02) | **0.100 (4.0e-02)** |" in md
    assert "| b | 64 x 32 -> 48 | 0.200 (3.0e-04) | **0.100 (4.0e-02)** | 0.500 (4.0e-02) | 0.150 (4.0e-02) |" in md
    assert any(line.startswith("Faster than fp16 on 1 of 2 shapes (fp8 tensor), 0 of 2 shapes (fp8 row), 2 of 2 "
                               "shapes (fp8 GEMM alone).") for line in md)
    assert "float16 activations" in md[2] and "torch.float16" not in md[2]
    assert any("fp8 wins on the whole" in line and "0.40 ms would go to 0.25 ms, at 133 times" in line for line in md)
    assert R.fp8_linear_figures(None) == ({}, [])


def test_autotune_section_reads_inductors_printout():
    """Inductor's autotuning printout: PyTorch's kernel against the fastest Triton choice per operation, a library
    kernel missing from the ten printed counted as slower than the last, the benchmarking seconds summed."""
    log = "\n".join([
        "[    30 s] built in 2.3 s", "Autotune Choices Stats:", "AUTOTUNE addmm(16x320, 16x1280, 1280x320)",
        "strides: [0, 1], [1280, 1], [1, 1280]", "  triton_mm_31 0.0202 ms 100.0% BLOCK_K=32",
        "  triton_mm_21 0.0256 ms 78.9% BLOCK_K=128",
        "SingleProcess AUTOTUNE benchmarking takes 0.5 seconds and 2.0 seconds precompiling for 20 choices",
        "AUTOTUNE convolution(16x320x64x64, 320x320x3x3)", "  convolution 0.1905 ms 100.0% ",
        "  triton_convolution2d_1 0.2445 ms 77.9% BLOCK_K=64",
        "SingleProcess AUTOTUNE benchmarking takes 8.0 seconds and 0.5 seconds precompiling for 18 choices",
        "AUTOTUNE mm(4096x1280, 1280x1280)", "  triton_mm_9 0.0271 ms 100.0% x", "  mm 0.0426 ms 63.6% ",
        "SingleProcess AUTOTUNE benchmarking takes 1.5 seconds and 0.0 seconds precompiling for 20 choices"])
    out, md = R.autotune_log_figures(log)
    assert out == {"autotune_operations": 3, "autotune_triton_chosen": 2, "autotune_benchmark_s": 10.0}
    assert "| `addmm(16x320, 16x1280, 1280x320)` | > 0.0256 | 0.0202 | Triton |" in md
    assert "| `convolution(16x320x64x64, 320x320x3x3)` | 0.1905 | 0.2445 | PyTorch |" in md
    assert "| `mm(4096x1280, 1280x1280)` | 0.0426 | 0.0271 | Triton |" in md
    assert any("took 10 s benchmarking their choices and 2 s precompiling" in line for line in md)
    assert any("for 2 of 3 operations, and for 0 of the 1 convolutions" in line
               and "take 0.218 ms against PyTorch's 0.233 ms" in line for line in md)
    assert R.autotune_log_figures(None) == ({}, [])


def test_load_threads_section_sets_the_two_arms_side_by_side():
    log = "\n".join(["[    34 s] built in 1.5 s", "[   165 s] max confiner_4+5_modelscope: 1.453",
                     "1 A 15.0 import 7.0 first 8.0 load 4.0 calls 2.0 1",
                     "2 B 17.0 import 7.5 first 9.5 load 5.0 calls 3.0 None",
                     "3 B 16.0 import 6.5 first 9.0 load 4.5 calls 2.5 None",
                     "4 A 14.0 import 6.0 first 7.0 load 3.0 calls 2.0 1"])
    fig, md = R.load_threads_figures(log)
    assert fig == pytest.approx({"warm_load_in_process_warm_start_mean_s": 14.5, "warm_load_in_process_first_run_mean_s": 7.5,
                                 "warm_load_in_process_blocks_load_mean_s": 3.5, "warm_load_in_process_probes": 2,
                                 "warm_load_compile_workers_warm_start_mean_s": 16.5,
                                 "warm_load_compile_workers_first_run_mean_s": 9.25,
                                 "warm_load_compile_workers_blocks_load_mean_s": 4.75, "warm_load_compile_workers_probes": 2})
    assert "| 2 | compile workers | 17.00 | 7.50 | 9.50 | 5.00 | 3.00 |" in md
    assert any("spreads over up to 1.0 s (the imports alone 6.0-7.5 s)" in line for line in md)
    assert R.load_threads_figures(None) == ({}, []) and R.load_threads_figures("no probes") == ({}, [])


def test_upsample_probe_checks_each_way_against_diffusers_in_fp32(tmp_path, monkeypatch):
    """The probe's CPU smoke run: diffusers' Upsample2D, the folded transposed convolution and the four phases with
    their gather, each against the fp32 reference (a wrong tap or phase would be off by O(1))."""
    import upsample_probe as U
    monkeypatch.setattr(sys, "argv", ["upsample_probe.py", "--device", "cpu", "--tiny", "--repeats", "1",
                                      "--out", str(tmp_path)])
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    U.main()
    assert torch.backends.cudnn.benchmark is True   # the process-wide switch set back as it was
    (row,) = json.loads((tmp_path / "upsample.json").read_text())["shapes"]
    assert [r["way"] for r in row["ways"]] == ["interpolate + conv", "transposed conv", "phases + gather"]
    assert all(r["max_diff"] < 1e-5 and r["channels_last"] for r in row["ways"]), row["ways"]


def test_upsample_section_sets_the_folded_convolution_against_diffusers_and_the_ab_runs():
    def way(name, compiled, benchmark, ms):
        return {"way": name, "compiled": compiled, "cudnn_benchmark": benchmark, "ms": ms, "tflops": 100 / ms,
                "max_diff": 4e-3}

    shape = {"where": "unet 32->64", "input": [32, 640, 32, 32], "out_channels": 640, "ways": [
        way("interpolate + conv", True, False, 1.6), way("transposed conv", True, False, 0.8),
        way("phases + gather", True, False, 1.2), way("interpolate + conv", False, True, 2.0),
        way("transposed conv", False, True, 0.8)]}
    probe = {"device": "NVIDIA H200", "torch": "2.11", "dtype": "torch.float16", "timing": "CUDA graph of 10 calls",
             "shapes": [shape, {"where": "vae", "skipped": "deadline"}]}

    def run(settings, confiner, ms100=None):
        runs = {"confiner_4+5_modelscope": {"wall_s": confiner, "runs_s": [confiner], "peak_gpu_gib": 12.0}}
        if ms100:
            runs["modelscope_100"] = {"wall_s": ms100}
        return {"tables": {"max": {"settings": settings, "runs": runs, "ratios": {
            "flop_ratio_confiner_modelscope_to_modelscope_100": 0.137}} if ms100 else {"settings": settings,
                                                                                      "runs": runs}}}

    ab = {"h200_sd_max_call_zz_fold_1.json": run("fused QKV + folded upsampling + CUDA graphs", 1.45, 10.6),
          "h200_sd_max_call_zz_nofold.json": run("fused QKV + CUDA graphs", 1.49, 10.8),
          "h200_sd_max_call_zz_fold_2.json": run("fused QKV + folded upsampling + CUDA graphs", 1.46),
          "h200_sd_max_call_zz_absent.json": None}
    out, md = R.upsample_figures(probe, ab)
    assert out["upsample_folded_speedup_compiled_min"] == pytest.approx(2.0)
    assert out["upsample_folded_speedup_lean_max"] == pytest.approx(2.5)
    assert out["upsample_folded_confiner_s"] == [1.45, 1.46] and out["upsample_unfolded_confiner_s"] == [1.49]
    assert out["upsample_folded_ratios"] == pytest.approx([1.45 / 10.6])
    assert "| unet 32->64 | [32, 640, 32, 32] -> 640 | 1.600 (62) | **0.800** (125) | 1.200 | 2.000 | **0.800** | " \
        "2.00 / 2.50 | 4.0e-03 (4.0e-03) |" in md
    assert "| vae | deadline | | | | | | | |" in md
    assert any(line.startswith("| ZZ | `h200_sd_max_call_zz_nofold.json` | interpolate + conv | **1.490**")
               and "| 10.800 | 0.1380 |" in line for line in md)
    assert any("The FLOP ratio is 0.1370" in line for line in md)
    assert not any("bfloat16" in line for line in md)
    out, md = R.upsample_figures(probe, {}, bf16=probe)
    assert out["upsample_folded_speedup_compiled_bf16_max"] == pytest.approx(2.0)
    assert any("in bfloat16" in line and "2.00-2.00x faster compiled, 2.50-2.50x eager" in line for line in md)
    assert R.upsample_figures(None, {}) == ({}, [])


def test_a_max_table_without_a_profile_borrows_one_from_its_settings_other_process():
    prof = {"kinds": {"convolution": {"s": 0.4}}, "kernel_s": 1.4}
    source = {"tables": {"max": {"profile": prof}}}
    table = {"runs": {}}
    assert R.lend_profile(table, source, "other.json")
    assert table["profile"] is prof and table["profile_from"] == "other.json"
    own = {"profile": {"kinds": {}}}
    assert not R.lend_profile(own, source, "other.json") and "profile_from" not in own
    assert not R.lend_profile(None, source, "x") and not R.lend_profile({"runs": {}}, None, "x")
    assert not R.lend_profile({"runs": {}}, {"tables": {"best": {"profile": prof}}}, "x")


def test_inductor_config_items_are_set_only_when_all_are_valid():
    import torch._inductor.config as C

    import gpu_benchmark as G
    saved = C.coordinate_descent_tuning, C.epilogue_fusion
    try:
        with pytest.raises(ValueError, match="no 'not_a_setting'"):
            G.set_inductor_config(["coordinate_descent_tuning=True", "not_a_setting=1"])
        with pytest.raises(ValueError, match="Python literal"):
            G.set_inductor_config(["coordinate_descent_tuning=True", "epilogue_fusion=yes"])
        assert (C.coordinate_descent_tuning, C.epilogue_fusion) == saved
        assert G.set_inductor_config(["coordinate_descent_tuning=True", "epilogue_fusion=False"]) == \
            {"coordinate_descent_tuning": True, "epilogue_fusion": False}
        assert C.coordinate_descent_tuning is True and C.epilogue_fusion is False
    finally:
        C.coordinate_descent_tuning, C.epilogue_fusion = saved


def test_the_quality_ablation_runs_long_videos_at_the_presets_clip():
    """bench/quality_ablation.py regenerates bench/QUALITY.md; its long runs took ``LongConfig().segment_length``
    as a number, and crashed once that default became None (the experts' clip, settled by the request)."""
    import quality_ablation as Q
    from confiner_core.long import LongConfig

    assert (Q.natural("sd"), Q.natural("wan")) == (16, 17)
    scores = Q.long_run("a red ball bouncing over green grass", 0, LongConfig(), frames=34, preset="wan")
    assert set(scores) == set(Q.LONG_KEYS) and all(v == v for v in scores.values())


def test_the_quality_ablations_json_goes_beside_its_markdown_and_a_bad_out_is_refused_before_the_run(
        tmp_path, monkeypatch, capsys):
    """The JSON's name was made by replacing "QUALITY" in the whole path (a folder QUALITY_runs became
    quality_results_runs, missing, after minutes of sampling), and --out x/results.json had the markdown overwritten
    by the JSON."""
    import quality_ablation as Q

    assert Q.results_path("bench/QUALITY.md") == os.path.join("bench", "quality_results.json")
    assert Q.results_path("bench/QUALITY_quick.md") == os.path.join("bench", "quality_results_quick.json")
    assert Q.results_path("/tmp/QUALITY_runs/a.md") == "/tmp/QUALITY_runs/a.json"
    monkeypatch.setattr(Q, "short_run", lambda *a, **k: pytest.fail("sampled before refusing --out"))
    for out, said in ((tmp_path / "results.json", "give the markdown file"),
                      (tmp_path / "missing" / "a.md", "its folder does not exist")):
        monkeypatch.setattr(sys, "argv", ["quality_ablation.py", "--quick", "--out", str(out)])
        with pytest.raises(SystemExit) as e:
            Q.main()
        assert e.value.code == 2 and said in capsys.readouterr().err
