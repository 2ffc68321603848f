"""Minimal ``torchvision.transforms`` for the ConFiner test-only stub (see ``torchvision/__init__.py``)."""

import enum

import torch

from . import functional  # noqa: F401


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class Normalize(torch.nn.Module):
    def __init__(self, mean, std, inplace=False):
        super().__init__()
        self.mean, self.std, self.inplace = mean, std, inplace

    def forward(self, tensor):
        return functional.normalize(tensor, self.mean, self.std, self.inplace)


class ToTensor:
    def __call__(self, pic):
        return functional.to_tensor(pic)


class Resize(torch.nn.Module):
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR, antialias=True):
        super().__init__()
        self.size, self.interpolation, self.antialias = size, interpolation, antialias

    def forward(self, img):
        return functional.resize(img, self.size, self.interpolation, antialias=self.antialias)
