"""ComfyUI entry point of the ConFiner node pack (V3: ComfyUI calls ``comfy_entrypoint``).

The library lives in ``confiner_core`` (no ComfyUI imports); ``nodes`` translates between ComfyUI and it.
"""

if __package__:  # imported as a package: by ComfyUI, or by pytest collecting the repository folder
    try:
        from .nodes import comfy_entrypoint
    except ModuleNotFoundError as e:
        # Imported outside ComfyUI: only the library is usable then.
        if e.name not in ("comfy_api", "comfy", "latent_preview"):
            raise
# else: pytest imported this file as a plain module because the clone's folder name is no identifier
# (e.g. "comfyui-confiner"): there are no nodes to offer then.

# Served at /extensions/<pack folder>/: web/docs/<node id>.md are the nodes' help pages in the frontend's node-help
# panel (with their pictures); web/confiner.js, the one frontend extension, keeps the Long Video's prompt-schedule
# box at one height while progress text and previews arrive, and the progress text out of saved workflows.
WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
