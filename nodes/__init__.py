"""The ConFiner node pack: five V3 nodes, thin layers over confiner_core."""

from comfy_api.latest import ComfyExtension, io

from .control_expert import ConFinerControlExpert
from .coordinated_sampler import ConFinerCoordinatedSampler
from .long_segmenter import ConFinerLongSegmenter
from .noise_rescheduler import ConFinerNoiseRescheduler
from .refine_experts import ConFinerRefineExperts

NODES = [ConFinerControlExpert, ConFinerRefineExperts, ConFinerCoordinatedSampler, ConFinerLongSegmenter,
         ConFinerNoiseRescheduler]


class ConFinerExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> ConFinerExtension:
    # (ComfyExtension.on_load is not called by ComfyUI 0.3.64 or 0.8.0; the server exists before packs load)
    from .host import listen_to_prompts

    listen_to_prompts()
    return ConFinerExtension()
