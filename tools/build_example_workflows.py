"""Writes example_workflows/*.json (ComfyUI UI format) from compact descriptions, so links and widget orders
stay consistent. The tests convert every file back to an API prompt and execute it in a real ComfyUI.

Usage: python tools/build_example_workflows.py
"""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "example_workflows")

SD15 = "v1-5-pruned-emaonly.safetensors"
LIGHTNING = "animatediff_lightning_4step_comfyui.safetensors"
MOTION = "v3_sd15_mm.ckpt"
PROMPT = "a corgi running on a sunny beach, waves, golden hour, highly detailed"
NEGATIVE = "blurry, low quality, watermark, deformed"

# node type -> (socket inputs [(name, type)], outputs [(name, type)])
SOCKETS = {
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "ADE_AnimateDiffLoaderGen1": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "EmptyLatentImage": ([], [("LATENT", "LATENT")]),
    "ConFinerControlExpert": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                               ("latent", "LATENT")], [("structure", "LATENT")]),
    "ConFinerRefineExperts": ([("spatial_model", "MODEL"), ("spatial_positive", "CONDITIONING"),
                               ("spatial_negative", "CONDITIONING"), ("temporal_model", "MODEL"),
                               ("temporal_positive", "CONDITIONING"), ("temporal_negative", "CONDITIONING")],
                              [("experts", "CONFINER_EXPERTS")]),
    "ConFinerCoordinatedSampler": ([("experts", "CONFINER_EXPERTS"), ("structure", "LATENT"),
                                    ("control_model", "MODEL")], [("latent", "LATENT")]),
    "ConFinerLongSegmenter": ([("control_model", "MODEL"), ("control_positive", "CONDITIONING"),
                               ("control_negative", "CONDITIONING"), ("experts", "CONFINER_EXPERTS"),
                               ("latent", "LATENT"), ("clip", "CLIP")], [("latent", "LATENT")]),
    "ConFinerNoiseRescheduler": ([("latent", "LATENT")], [("noise", "NOISE"), ("noise_latent", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveAnimatedWEBP": ([("images", "IMAGE")], []),
    "Note": ([], []),
}


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, type_, widgets, title=None, col=0, row=0, mode=0):
        ins, outs = SOCKETS[type_]
        n = {"id": len(self.nodes) + 1, "type": type_, "pos": [40 + 360 * col, 40 + 260 * row], "size": [320, 200],
             "flags": {}, "order": len(self.nodes), "mode": mode,
             "inputs": [{"name": a, "type": t, "link": None} for a, t in ins],
             "outputs": [{"name": a, "type": t, "links": [], "slot_index": i} for i, (a, t) in enumerate(outs)],
             "properties": {"Node name for S&R": type_}, "widgets_values": widgets}
        if title:
            n["title"] = title
        self.nodes.append(n)
        return n

    def link(self, src, out_name, dst, in_name):
        o = next(i for i, x in enumerate(src["outputs"]) if x["name"] == out_name)
        i = next(i for i, x in enumerate(dst["inputs"]) if x["name"] == in_name)
        lid = len(self.links) + 1
        typ = src["outputs"][o]["type"]
        self.links.append([lid, src["id"], o, dst["id"], i, typ])
        src["outputs"][o]["links"].append(lid)
        dst["inputs"][i]["link"] = lid

    def save(self, name, description):
        wf = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
              "links": self.links, "groups": [], "config": {},
              "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "confiner": {"description": description}},
              "version": 0.4}
        with open(os.path.join(OUT, name + ".json"), "w") as f:
            json.dump(wf, f, indent=1)


def experts_graph(g, note):
    """Loader, prompts, the two AnimateDiff-Evolved motion models and the refine-experts bundle."""
    g.node("Note", [note], "About this workflow", col=0, row=3)
    ckpt = g.node("CheckpointLoaderSimple", [SD15], "SD 1.5 checkpoint (spatial expert)", 0, 0)
    pos = g.node("CLIPTextEncode", [PROMPT], "Positive", 1, 0)
    neg = g.node("CLIPTextEncode", [NEGATIVE], "Negative", 1, 1)
    for n in (pos, neg):
        g.link(ckpt, "CLIP", n, "clip")
    control = g.node("ADE_AnimateDiffLoaderGen1", [LIGHTNING, "sqrt_linear (AnimateDiff)"],
                     "Control expert: AnimateDiff-Lightning 4-step", 0, 1)
    temporal = g.node("ADE_AnimateDiffLoaderGen1", [MOTION, "autoselect"], "Temporal expert: AnimateDiff v3", 0, 2)
    g.link(ckpt, "MODEL", control, "model")
    g.link(ckpt, "MODEL", temporal, "model")
    experts = g.node("ConFinerRefineExperts", [7.5, 7.5], None, 2, 1)
    g.link(ckpt, "MODEL", experts, "spatial_model")
    g.link(temporal, "MODEL", experts, "temporal_model")
    for who in ("spatial", "temporal"):
        g.link(pos, "CONDITIONING", experts, f"{who}_positive")
        g.link(neg, "CONDITIONING", experts, f"{who}_negative")
    return ckpt, pos, neg, control, experts


def control_stage(g, control, pos, neg):
    """A 512x512x16 empty latent into the ConFiner Control Expert (4 Euler steps, cfg 1.0)."""
    empty = g.node("EmptyLatentImage", [512, 512, 16], "Size and frame count", 1, 2)
    ctrl = g.node("ConFinerControlExpert", [0, "fixed", 4, 1.0, "euler", False, "trailing", 0.0], None, 2, 0)
    g.link(control, "MODEL", ctrl, "model")
    g.link(pos, "CONDITIONING", ctrl, "positive")
    g.link(neg, "CONDITIONING", ctrl, "negative")
    g.link(empty, "LATENT", ctrl, "latent")
    return ctrl


def save_video(g, ckpt, latent, prefix, col, row):
    dec = g.node("VAEDecode", [], None, col, row)
    g.link(latent, "latent", dec, "samples")
    g.link(ckpt, "VAE", dec, "vae")
    save = g.node("SaveAnimatedWEBP", [prefix, 8.0, False, 90, "default"], None, col + 1, row)
    g.link(dec, "IMAGE", save, "images")


def basic():
    g = Graph()
    ckpt, pos, neg, control, experts = experts_graph(
        g, "ConFiner basic: AnimateDiff-Lightning lays out a 16-frame structure in 4 steps; it is noised to T_e=100 "
           "and refined in 5 coordinated steps by SD 1.5 (spatial) and AnimateDiff v3 (temporal): 19 evaluations.")
    ctrl = control_stage(g, control, pos, neg)
    sampler = g.node("ConFinerCoordinatedSampler", [100, 5, "coordinated", "same_index", 0, "fixed", "spatial"],
                     None, 3, 0)
    g.link(experts, "experts", sampler, "experts")
    g.link(ctrl, "structure", sampler, "structure")
    save_video(g, ckpt, sampler, "ConFiner/basic", 3, 1)
    g.save("confiner_basic", "AnimateDiff-Lightning control, SD 1.5 spatial, AnimateDiff v3 temporal, coordinated.")


def compare_modes():
    g = Graph()
    ckpt, pos, neg, control, experts = experts_graph(
        g, "One structure, three refinements side by side: coordinated (Algorithm 1), standard (spatial expert "
           "only, Eq. 8) and temporal expert only. Same seed for all three.")
    ctrl = control_stage(g, control, pos, neg)
    for row, mode in enumerate(("coordinated", "standard", "temporal")):
        s = g.node("ConFinerCoordinatedSampler", [100, 5, mode, "same_index", 0, "fixed", "spatial"],
                   f"Refine: {mode}", 3, row)
        g.link(experts, "experts", s, "experts")
        g.link(ctrl, "structure", s, "structure")
        save_video(g, ckpt, s, f"ConFiner/compare_{mode}", 4, row)
    g.save("confiner_compare_modes", "Coordinated vs standard vs temporal-only refinement of one structure.")


def long_video():
    g = Graph()
    ckpt, pos, neg, control, experts = experts_graph(
        g, "ConFiner-Long: 128 frames as staggered 16-frame segments with consistency initialization, coherence "
           "guidance (gamma 0.1) and staggered refinement; the prompt travels from the beach to the snow at frame 64.")
    empty = g.node("EmptyLatentImage", [512, 512, 1], "Frame size (frame count is set on the segmenter)", 1, 2)
    seg = g.node("ConFinerLongSegmenter",
                 [128, 16, 0, "fixed", 4, 1.0, "euler", 100, 5, "coordinated", "same_index", "shuffle", 4, 0.1, True,
                  "0: a corgi running on a sunny beach, golden hour | 64: a corgi running through deep snow, winter",
                  "trailing", 0.0, "spatial", "guided"],
                 None, 2, 0)
    g.link(control, "MODEL", seg, "control_model")
    g.link(pos, "CONDITIONING", seg, "control_positive")
    g.link(neg, "CONDITIONING", seg, "control_negative")
    g.link(experts, "experts", seg, "experts")
    g.link(empty, "LATENT", seg, "latent")
    g.link(ckpt, "CLIP", seg, "clip")
    save_video(g, ckpt, seg, "ConFiner/long", 3, 0)
    g.save("confiner_long_128", "ConFiner-Long, 128 frames, all three strategies, per-segment prompts.")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    basic()
    compare_modes()
    long_video()
    print("wrote", sorted(os.listdir(OUT)))
