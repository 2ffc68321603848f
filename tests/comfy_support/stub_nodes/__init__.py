"""A stand-in for core nodes whose module did not import in the tests' ComfyUI (the harness installs no spandrel, which
needs torchvision). The frontend 1.27 looks every model loader of its own list up when it builds a model combo: with
UpscaleModelLoader unknown it failed on every checkpoint loader of a template, which then went out without its node
type. Defines only what the core lacks, as an input list; it never runs."""
import folder_paths
import nodes


class UpscaleModelLoader:
    CATEGORY = "loaders"
    RETURN_TYPES = ("UPSCALE_MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_name": (folder_paths.get_filename_list("upscale_models"),)}}

    def load(self, model_name):
        raise RuntimeError("the tests' stand-in for UpscaleModelLoader does not load models")


NODE_CLASS_MAPPINGS = {name: node for name, node in {"UpscaleModelLoader": UpscaleModelLoader}.items()
                       if name not in nodes.NODE_CLASS_MAPPINGS}
