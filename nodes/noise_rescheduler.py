"""ConFiner Noise Rescheduler: ConFiner-Long's consistency initialization or FreeNoise, as NOISE and as LATENT."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..confiner_core import layout as L
from ..confiner_core.long import FREENOISE, SHUFFLE, StructureNoise, freenoise_stride_problem
from . import host
from .schema import CATEGORY, advanced, host_converted, widget_problem


def rescheduled_noise(latent: dict, kind: str, segment_length: int, stride: int, seed: int) -> torch.Tensor:
    """Noise shaped like ``latent``'s samples ([F,C,h,w] frame batch or [B,C,T,h,w]): segments of ``segment_length``
    frames that are frame permutations of one base noise (shuffle), or FreeNoise with window/stride. Each clip of a
    batch has its own, from the seed plus its batch index (:func:`host.item_generators`, as the samplers draw)."""
    samples = latent["samples"]
    layout = L.VIDEO if samples.ndim == 5 else L.FRAMES
    b, c, f, h, w = L.to_canonical(torch.empty(samples.shape, device="meta"), layout).shape
    n_segments = -(-f // segment_length)
    clips = []
    for generator in host.item_generators(seed, b, latent).generators:
        source = StructureNoise(kind, (1, c, segment_length, h, w), n_segments, generator, window=segment_length,
                                stride=stride)
        clips.append(torch.cat([source(i) for i in range(n_segments)], dim=2)[:, :, :f])
    return L.from_canonical(torch.cat(clips), layout)


class RescheduledNoise:
    """ComfyUI's NOISE protocol (``seed`` and ``generate_noise(latent)``), so SamplerCustomAdvanced can use it."""

    def __init__(self, seed: int, kind: str, segment_length: int, stride: int):
        self.seed, self.kind, self.segment_length, self.stride = seed, kind, segment_length, stride

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        return rescheduled_noise(input_latent, self.kind, self.segment_length, self.stride,
                                 self.seed).to(input_latent["samples"].dtype)


class ConFinerNoiseRescheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConFinerNoiseRescheduler",
            display_name="ConFiner Noise Rescheduler",
            category=CATEGORY,
            description="Starting noise that keeps the segments of a long video alike: every segment a frame "
                        "shuffle of one base noise (ConFiner-Long's consistency initialization) or FreeNoise "
                        "rescheduling (window/stride). As "
                        "NOISE for SamplerCustomAdvanced, and as a LATENT for ConFiner Control Expert ('use latent as "
                        "noise'). This is also how to get FreeNoise with ConFiner: AnimateDiff-Evolved's Sample "
                        "Settings noise types do not reach ConFiner's samplers.",
            inputs=[
                io.Latent.Input("latent", tooltip="Sets the shape of noise_latent: frame batch [F,C,h,w] or video "
                                                  "[B,C,T,h,w]. The NOISE output takes the shape of the latent its "
                                                  "sampler is given (SamplerCustomAdvanced's latent_image)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the base noise; same seed, same noise."),
                io.Combo.Input("method", options=[SHUFFLE, FREENOISE], default=SHUFFLE,
                               tooltip="shuffle: ConFiner consistency initialization; freenoise: FreeNoise."),
                # not "segment length": the Long Video's counts video frames, this one latent frames
                # at least 2: segments of one frame would all be the same base frame (a frozen video)
                io.Int.Input("segment_length", display_name="segment latent frames", default=16, min=2, max=4096,
                             tooltip="Latent frames per segment (shuffle) or FreeNoise's window (freenoise), "
                                     "counted in the LATENT's frames: video frames for SD latents, while a Wan "
                                     "latent frame holds 4 (21 for 81 video frames)."),
                advanced(io.Int.Input("stride", display_name="FreeNoise stride", default=4, min=1, max=4096,
                                      tooltip="Only for method 'freenoise': latent frames between windows "
                                              "(context_length - overlap), at most segment latent frames.")),
            ],
            outputs=[io.Noise.Output(display_name="noise", tooltip="For SamplerCustomAdvanced."),
                     io.Latent.Output(display_name="noise_latent",
                                      tooltip="The same noise as a LATENT, for ConFiner Control Expert (switch on "
                                              "its 'use latent as noise').")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, segment_length=None, stride=None, method=None):
        values = host_converted(cls, segment_length=segment_length, stride=stride, method=method)
        problem = widget_problem(cls, **values)
        segment_length, stride = values["segment_length"], values["stride"]
        if problem:
            return problem
        return cls.stride_problem(method, segment_length, stride) or True

    @staticmethod
    def stride_problem(method, segment_length, stride) -> str | None:
        if method != FREENOISE or None in (stride, segment_length):
            return None
        return freenoise_stride_problem(stride, segment_length, f"FreeNoise stride (stride) = {stride}",
                                        f"segment latent frames (segment_length) = {segment_length}")

    @classmethod
    def execute(cls, latent, seed, method, segment_length, stride) -> io.NodeOutput:
        problem = cls.stride_problem(method, segment_length, stride)
        if problem:   # (values from links reach validate_inputs as None: the library's message named no input)
            raise ValueError(problem)
        noise = RescheduledNoise(seed, method, segment_length, stride)
        samples = latent["samples"]
        frames = samples.shape[0] if samples.ndim == 4 else samples.shape[2]   # [F,C,h,w] or [B,C,T,h,w]
        if segment_length >= frames:   # one segment of base noise: nothing rescheduled
            logging.warning("ConFiner Noise Rescheduler: segment latent frames = %d covers the latent's %d frames, so "
                            "the noise is one segment of base noise and nothing is rescheduled; use fewer segment "
                            "latent frames (a Wan latent frame holds 4 video frames)", segment_length, frames)
            host.show_text(host.node_id(cls), "warning: nothing rescheduled: lower segment latent frames")
        else:   # what it made, as the sampling nodes end with "done" (it had said nothing)
            segments = -(-frames // segment_length)
            # (the stride too: a trial could not tell from the text what the windows overlapped by)
            made = f"FreeNoise windows, stride {stride}" if method == FREENOISE else "shuffles of one base noise"
            host.show_text(host.node_id(cls), f"done · {segments} segments of {segment_length} latent frames\n"
                                              f"{made} · seed {seed}")
        # a picked clip's batch_index (Latent From Batch) goes on: the samplers draw that clip's noise from it too
        index = {"batch_index": latent["batch_index"]} if "batch_index" in latent else {}
        return io.NodeOutput(noise, {"samples": noise.generate_noise(latent), host.NOISE_KEY: True, **index})
