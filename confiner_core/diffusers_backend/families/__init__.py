"""The diffusers model families, one module each, behind one registry (:mod:`.registry`).

:mod:`.base` defines the interface (:class:`~.base.Family`, :class:`~.base.Inspection`, :class:`~.base.Context`);
:mod:`.files` reads configs and safetensors headers without loading weights; :mod:`.unet_folders` holds what the
UNet families share.
"""
