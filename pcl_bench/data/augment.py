"""Augmentations of MoCo v1 / InstDisc ("v1") and MoCo v2 / PCL v2 ("v2", aug+), as in the PCL reference.

At 224 px these are exactly the reference pipelines (PCL and MoCo code; docs/reference.md):

- v1: RandomResizedCrop(224, scale=(0.2, 1)) -> RandomGrayscale(0.2) -> ColorJitter(0.4, 0.4, 0.4, 0.4)
  -> HorizontalFlip -> ToTensor -> Normalize
- v2: RandomResizedCrop(224, scale=(0.2, 1)) -> RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8)
  -> RandomGrayscale(0.2) -> RandomApply(GaussianBlur(sigma in [0.1, 2]), p=0.5) -> HorizontalFlip
  -> ToTensor -> Normalize
- clustering / evaluation features: Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize

Resolution-aware variants for small images (``size`` < 224, e.g. 32 px CIFAR or 64 px ``shapes``): the crop
is ``size`` instead of 224, the blur sigma range is scaled by ``size / 224`` (a 2 px blur at 224 px is a
0.29 px blur at 32 px; an unscaled one would erase a CIFAR image), and the evaluation transform resizes to
``round(size * 256 / 224)`` before the centre crop, keeping the reference's 0.875 crop ratio.
"""
from __future__ import annotations

import random
from collections.abc import Callable

from PIL import Image, ImageFilter
from torchvision import transforms as T

from ..runtime.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATIONS = ("v1", "v2")
# The reference's parameters, shared with the batched version in batch_augment.py.
JITTER = {"v1": (0.4, 0.4, 0.4, 0.4), "v2": (0.4, 0.4, 0.4, 0.1)}  # brightness, contrast, saturation, hue
JITTER_P = {"v1": 1.0, "v2": 0.8}
GRAYSCALE_P = 0.2
BLUR_P = 0.5


def blur_sigma(size: int) -> tuple[float, float]:
    """The v2 blur's sigma range in pixels: the reference's (0.1, 2.0) at 224 px, scaled to ``size``."""
    scale = size / 224
    return 0.1 * scale, 2.0 * scale


class GaussianBlur:
    """PIL Gaussian blur with a standard deviation drawn uniformly from ``sigma`` (in pixels)."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


class TwoCropsTransform:
    """Apply ``base`` twice, independently: returns ``[query_view, key_view]``."""

    def __init__(self, base: Callable):
        self.base = base

    def __call__(self, img: Image.Image) -> list:
        return [self.base(img), self.base(img)]

    def __repr__(self) -> str:
        return f"TwoCropsTransform({self.base!r})"


def pretrain_transform(kind: str, size: int = 224, min_scale: float = 0.2) -> T.Compose:
    """The v1 or v2 training augmentation at crop size ``size`` (224 and ``min_scale`` 0.2: the reference)."""
    if not 0 < min_scale <= 1:
        raise UsageError(f"--crop-min-scale must be in (0, 1], got {min_scale}")
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    crop = T.RandomResizedCrop(size, scale=(min_scale, 1.0))
    if kind == "v1":
        ops = [crop, T.RandomGrayscale(p=GRAYSCALE_P), T.ColorJitter(*JITTER[kind]), T.RandomHorizontalFlip()]
    elif kind == "v2":
        ops = [
            crop,
            T.RandomApply([T.ColorJitter(*JITTER[kind])], p=JITTER_P[kind]),
            T.RandomGrayscale(p=GRAYSCALE_P),
            T.RandomApply([GaussianBlur(blur_sigma(size))], p=BLUR_P),
            T.RandomHorizontalFlip(),
        ]
    else:
        raise ValueError(f"unknown augmentation {kind!r}; expected one of {AUGMENTATIONS}")
    return T.Compose([*ops, T.ToTensor(), normalize])


def eval_crop(size: int = 224) -> T.Compose:
    """Resize to ``size * 256/224`` then centre-crop ``size`` (PIL images in and out)."""
    return T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size)])


def eval_transform(size: int = 224) -> T.Compose:
    """:func:`eval_crop`, then to a normalised float tensor: the clustering and evaluation transform."""
    return T.Compose([*eval_crop(size).transforms, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
