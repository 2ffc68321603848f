"""Input declarations shared by several nodes (one definition, one tooltip)."""

from __future__ import annotations

from comfy_api.latest import io

from ..confiner_core.chain import MODES
from ..confiner_core.refine import TIMESTEP_MATCHING

CATEGORY = "ConFiner"


def seed_input(tooltip: str = "Seed of every random draw of this node (noise, re-noising); same seed, same video.") -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=tooltip)


def control_inputs(prefix: str = "") -> list:
    return [
        io.Int.Input(f"{prefix}steps", default=4, min=1, max=1000,
                     tooltip="Control-stage steps (paper: 4 or 8, matching an AnimateDiff-Lightning checkpoint)."),
        io.Float.Input(f"{prefix}cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="Guidance of the control expert (1.0 for distilled Lightning models)."),
        io.Combo.Input(f"{prefix}sampler", options=["euler", "ddim"], default="euler",
                       tooltip="euler: what distilled few-step experts were trained for; ddim: deterministic DDIM."),
    ]


def refine_inputs() -> list:
    return [
        io.Int.Input("te", default=100, min=1, max=999,
                     tooltip="T_e: timestep the structure is noised to on the spatial expert's schedule (Eq. 6). "
                             "Paper default 100; with 4 control steps, 300+ loses image quality."),
        io.Int.Input("refine_steps", default=5, min=1, max=1000,
                     tooltip="Refinement steps from T_e to 0 at uniform intervals (paper: 5; 3 evaluations each)."),
        io.Combo.Input("mode", options=list(MODES), default="coordinated",
                       tooltip="coordinated: Algorithm 1 (spatial + temporal through x0); standard: spatial only "
                               "(Eq. 8); temporal: temporal only; alternate: naive alternation (Eq. 7, ablation)."),
        io.Combo.Input("matching", options=list(TIMESTEP_MATCHING), default="same_index",
                       tooltip="Temporal re-noising timestep: same_index as the paper writes it, or the temporal "
                               "timestep of equal noise level (nearest / continuous)."),
    ]
