"""In-worker checks for the ConFiner pack (run inside the ComfyUI worker via ``ComfyWorker.call``)."""

from __future__ import annotations


def schedule_matches_comfy(ckpt_name: str) -> dict:
    """The ConFiner expert's schedule against ComfyUI's own model_sampling, timestep by timestep."""
    import sys

    import torch

    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path("checkpoints", ckpt_name)
    model = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]
    pack = next(m for name, m in sys.modules.items() if name.endswith("confiner.nodes.host")
                or (name.endswith(".nodes.host") and hasattr(m, "ComfyExpert")))
    expert = pack.ComfyExpert(model, "spatial")
    ms = model.get_model_object("model_sampling")
    worst = 0.0
    for t in (0, 19, 100, 250, 500, 999):
        ours = expert.host_sigma(t)
        theirs = float(ms.sigma(torch.tensor(float(t))))
        worst = max(worst, abs(ours - theirs) / theirs)
        assert int(ms.timestep(torch.tensor(ours))) == t
    return {"max_rel_error": worst, "sigma_max": float(ms.sigma_max), "schedule": expert.schedule.name,
            "layout": expert.layout, "latent_space": expert.latent_space}


def all_models_unpatched() -> dict:
    """After a run (or an interruption) no loaded model may keep patches applied by a sampling call."""
    import comfy.model_management as mm

    states = []
    for lm in mm.current_loaded_models:
        patcher = lm.model
        base = getattr(patcher, "model", None)
        states.append({"current_patcher": getattr(base, "current_patcher", None) is not None})
    return {"models": len(states), "any_current_patcher": any(s["current_patcher"] for s in states)}
