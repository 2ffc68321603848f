"""Minimal ``torchvision.transforms.functional`` for the ConFiner test-only stub."""

import enum

import numpy as np
import torch
import torch.nn.functional as F


class InterpolationMode(enum.Enum):
    """torchvision's interpolation names (spandrel, behind ComfyUI's upscale-model loader, imports them)."""
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def rotate(*args, **kwargs):
    raise NotImplementedError("rotate() is not part of the torchvision test stub")


def _mode(interpolation):
    value = getattr(interpolation, "value", interpolation)
    if value in ("nearest", "nearest-exact", "bilinear", "bicubic"):
        return value
    raise NotImplementedError(f"interpolation {value!r} not supported by the torchvision test stub")


def resize(img, size, interpolation="bilinear", max_size=None, antialias=True):
    if not isinstance(img, torch.Tensor):
        raise NotImplementedError("torchvision test stub: resize() only supports tensors")
    if isinstance(size, int):
        h, w = img.shape[-2:]
        short = min(h, w)
        size = [size, int(size * w / h)] if h == short else [int(size * h / w), size]
    size = [int(s) for s in size]
    mode = _mode(interpolation)
    shape = img.shape
    x = img.reshape(-1, 1, *shape[-2:]) if img.ndim != 4 else img
    orig_dtype = x.dtype
    if not x.is_floating_point():
        x = x.float()
    kwargs = {}
    if mode in ("bilinear", "bicubic"):
        kwargs = {"align_corners": False, "antialias": bool(antialias)}
    y = F.interpolate(x, size=size, mode=mode, **kwargs)
    if not orig_dtype.is_floating_point:
        y = y.round().to(orig_dtype) if orig_dtype != torch.bool else (y > 0.5)
    return y.reshape(*shape[:-2], *size)


def normalize(tensor, mean, std, inplace=False):
    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device)
    if mean.ndim == 1:
        mean = mean.view(-1, 1, 1)
    if std.ndim == 1:
        std = std.view(-1, 1, 1)
    if inplace:
        return tensor.sub_(mean).div_(std)
    return (tensor - mean) / std


def to_tensor(pic):
    if isinstance(pic, torch.Tensor):
        return pic
    arr = np.asarray(pic)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    if arr.dtype == np.uint8:
        return t.float().div(255.0)
    return t.float()
