"""Input declarations shared by several nodes (one definition, one tooltip)."""

from __future__ import annotations

from comfy_api.latest import io

from ..confiner_core.chain import MODES, STRUCTURE_NOISES
from ..confiner_core.long import COHERENCE_MEMORIES
from ..confiner_core.refine import TIMESTEP_MATCHING
from ..confiner_core.timesteps import SPACINGS

CATEGORY = "ConFiner"


def seed_input(tooltip: str = "Seed of every random draw of this node (noise, re-noising); same seed, same video.") -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=tooltip)


def control_inputs(prefix: str = "") -> list:
    return [
        io.Int.Input(f"{prefix}steps", default=4, min=1, max=1000,
                     tooltip="Control-stage steps (paper: 4 or 8, matching an AnimateDiff-Lightning checkpoint)."),
        io.Float.Input(f"{prefix}cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="Guidance of the control expert. 1.0 is our default, right for distilled Lightning "
                               "models (the paper states no cfg value); undistilled experts want ~7.5."),
        io.Combo.Input(f"{prefix}sampler", options=["euler", "ddim"], default="euler",
                       tooltip="euler: for distilled few-step experts (AnimateDiff-Lightning), what they were trained "
                               "for; ddim: the paper's control sampler, for undistilled experts (AnimateDiff v1-3, "
                               "ModelScope)."),
    ]


# The inputs below were added after the first release. Nodes append them after their older widgets, as optional
# inputs with defaults, so workflows saved before keep their positional widget values.

def control_sampling_inputs(prefix: str = "") -> list:
    return [
        io.Combo.Input(f"{prefix}spacing", options=list(SPACINGS), default="trailing", optional=True,
                       tooltip="Control timesteps as diffusers lays them out: trailing (AnimateDiff-Lightning), "
                               "leading (SD-style configs: 751, 501, 251, 1 for 4 steps) or linspace. Flow models: "
                               "trailing is ComfyUI's 'simple' schedule, linspace diffusers' FlowMatchEuler."),
        io.Float.Input(f"{prefix}eta", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                       tooltip="DDIM eta of the control stage (sampler ddim only): 0 deterministic, 1 as stochastic "
                               "as DDPM. Noise comes from the seed."),
    ]


def structure_noise_input() -> io.Combo.Input:
    return io.Combo.Input("structure_noise", options=list(STRUCTURE_NOISES), default="spatial", optional=True,
                          tooltip="Schedule that noises the structure to T_e: spatial = the spatial expert's "
                                  "(Eq. 6, paper default); control = the control expert's (Algorithm 1, line 4; "
                                  "needs the control model).")


def coherence_memory_input() -> io.Combo.Input:
    return io.Combo.Input("coherence_memory", options=list(COHERENCE_MEMORIES), default="guided", optional=True,
                          tooltip="Coherence guidance pulls towards the previous segment's guided noise prediction "
                                  "(Eq. 12 as printed, default) or its unguided one (pulls do not compound).")


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
