"""The v1 / v2 augmentations of ``augment.py`` applied to a whole batch at once, on the training device.

``--aug-backend tensor`` replaces the per-image PIL pipeline of the loader workers by :class:`BatchAugment`:
the loader only delivers uint8 images, and each view is made from the batch with a handful of tensor ops.
For small images the per-image pipeline is a large share of a step (about a third of a CPU step at 32 px) and
loader workers can starve a GPU; ``benchmarks/aug_backend.py`` measures both backends.

Every random parameter is drawn per image from the distribution of the torchvision transform it replaces
(``pretrain_transform`` at the same ``kind``, ``size`` and ``min_scale``):

- RandomResizedCrop: area fraction U(min_scale, 1) and log aspect ratio U(log 3/4, log 4/3), 10 tries, then
  the whole image cut to the nearest allowed ratio; the crop is resized by ``roi_align``, which averages
  bilinear samples over each output pixel and so antialiases a downscale as PIL's resize does;
- ColorJitter(b, c, s, h): factors U(1 - x, 1 + x) and hue shift U(-h, h), the four in a random order per image;
- RandomGrayscale (ITU-R 601 luma), Gaussian blur with sigma U(lo, hi), horizontal flip, Normalize.

Deliberate differences from PIL: values stay float between ops (PIL rounds to uint8 after each), the blur
is an exact Gaussian with replicated borders (PIL approximates it with box blurs), and resampling differs at
the sub-pixel level. Only datasets of equal-size images can be batched before augmentation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .augment import (
    AUGMENTATIONS,
    BLUR_P,
    GRAYSCALE_P,
    IMAGENET_MEAN,
    IMAGENET_STD,
    JITTER,
    JITTER_P,
    blur_sigma,
)

AUG_BACKENDS = ("pil", "tensor")
FIXED_SIZE_DATASETS = ("shapes", "cifar10", "cifar100", "stl10")  # arrays of one image size: nothing to check
LUMA = (0.299, 0.587, 0.114)
RATIO = (3 / 4, 4 / 3)


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (hi - lo) + lo


def crop_boxes(n: int, height: int | torch.Tensor, width: int | torch.Tensor, min_scale: float,
               device: torch.device, tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop boxes (n, 4) as (x1, y1, x2, y2) pixel edges, drawn as torchvision draws them, in images
    of one size (``height``, ``width`` ints) or each of its own (two (n,) tensors)."""
    height = torch.as_tensor(height, dtype=torch.float32, device=device).expand(n)[:, None]
    width = torch.as_tensor(width, dtype=torch.float32, device=device).expand(n)[:, None]
    area = height * width * _uniform(n * tries, min_scale, 1.0, device).view(n, tries)
    ratio = torch.exp(_uniform(n * tries, math.log(RATIO[0]), math.log(RATIO[1]), device)).view(n, tries)
    w, h = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
    ok = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = ok.float().argmax(dim=1, keepdim=True)  # the first try that fits
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(dim=1)
    # No try fitted: the whole image, cut to the nearest allowed aspect ratio, centred.
    height, width = height[:, 0], width[:, 0]
    in_ratio = width / height
    fw = torch.where(in_ratio <= RATIO[1], width, (height * RATIO[1]).round())
    fh = torch.where(in_ratio >= RATIO[0], height, (width / RATIO[0]).round())
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    x = torch.where(found, (torch.rand(n, device=device) * (width - w + 1)).floor(), (width - w) // 2)
    y = torch.where(found, (torch.rand(n, device=device) * (height - h + 1)).floor(), (height - h) // 2)
    return torch.stack([x, y, x + w, y + h], dim=1)


def resized_crops(images: torch.Tensor | list[torch.Tensor], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Float crops (N, C, size, size) in [0, 1] of uint8 ``images`` (N, C, H, W), or a list of N (C, H_i, W_i),
    at ``boxes`` (N, 4)."""
    if isinstance(images, list):  # one call per image: padding them to one size would cost memory
        return torch.cat([roi_align(img[None].float() / 255, [box[None]], size, aligned=True)
                          for img, box in zip(images, boxes)])
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    return roi_align(images.float() / 255, rois, size, aligned=True)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (N, 1, H, W) of RGB images (N, 3, H, W)."""
    return torch.einsum("nchw,c->nhw", x, x.new_tensor(LUMA)).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1]; ``factor`` (N,)."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB images (N, 3, H, W) in [0, 1] by ``shift`` (N,) turns."""
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    safe = delta.clamp_min(1e-8)
    # Hue in sixths of a turn, from the channel that is largest.
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, h / 6 + shift.view(-1, 1, 1), torch.zeros_like(h)).remainder(1)
    s = delta / maxc.clamp_min(1e-8)
    # Back to RGB: each channel is v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6.
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + 6 * h[:, None]).remainder(6)
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return maxc[:, None] * (1 - s[:, None] * ramp)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image (N, C, H, W) with its own Gaussian of standard deviation ``sigma`` (N,) pixels."""
    n, c, height, width = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N C, 2 radius + 1)
    y = F.pad(x.reshape(1, n * c, height, width), (radius,) * 4, mode="replicate")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, height, width)


class BatchAugment:
    """``pretrain_transform(kind, size, min_scale)`` for a batch: uint8 (N, 3, H, W), or a list of N uint8
    (3, H_i, W_i) of different sizes -> normalised float views (N, 3, size, size), on the device of the input.
    Randomness comes from torch's generator of that device.
    """

    def __init__(self, kind: str = "v2", size: int = 224, min_scale: float = 0.2):
        if kind not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {kind!r}; expected one of {AUGMENTATIONS}")
        self.kind, self.size, self.min_scale = kind, size, min_scale
        self.jitter, self.jitter_p, self.blur_sigma = JITTER[kind], JITTER_P[kind], blur_sigma(size)

    def __call__(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        n, dev = len(images), images[0].device
        if isinstance(images, list):  # decoded files of different sizes
            height, width = (torch.tensor([img.shape[d] for img in images], device=dev) for d in (1, 2))
        else:
            height, width = images.shape[2:]
        x = resized_crops(images, crop_boxes(n, height, width, self.min_scale, dev), self.size)
        if self.kind == "v1":
            x = self.random_grayscale(x)
            x = self.color_jitter(x, torch.ones(n, dtype=torch.bool, device=dev))
        else:
            x = self.color_jitter(x, torch.rand(n, device=dev) < self.jitter_p)
            x = self.random_grayscale(x)
            blur = torch.rand(n, device=dev) < BLUR_P
            if blur.any():
                x[blur] = gaussian_blur(x[blur], _uniform(int(blur.sum()), *self.blur_sigma, dev))
        flip = torch.rand(n, device=dev) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return (x - x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @staticmethod
    def random_grayscale(x: torch.Tensor, p: float = GRAYSCALE_P) -> torch.Tensor:
        gray = torch.rand(x.shape[0], device=x.device) < p
        return torch.where(gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)

    def color_jitter(self, x: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
        """ColorJitter on the images where ``apply`` (N,) is true, each with its own order of the four ops.

        At each of the four positions every op runs on the whole batch, with the identity factor (1, or a hue
        shift of 0) for the images whose op at that position is another one: cheaper than indexing sub-batches.
        """
        n, dev = x.shape[0], x.device
        b, c, s, h = self.jitter
        factors = [_uniform(n, 1 - b, 1 + b, dev), _uniform(n, 1 - c, 1 + c, dev), _uniform(n, 1 - s, 1 + s, dev),
                   _uniform(n, -h, h, dev)]
        identity = [1.0, 1.0, 1.0, 0.0]
        order = torch.rand(n, 4, device=dev).argsort(dim=1)
        for position in range(4):
            for op, (f, same) in enumerate(zip(factors, identity)):
                x = self._jitter_op(op, x, torch.where(apply & (order[:, position] == op), f, same))
        return x

    @staticmethod
    def _jitter_op(op: int, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        if op == 0:  # brightness
            return _blend(x, torch.zeros_like(x), f)
        if op == 1:  # contrast: towards the mean luma of the image
            return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)
        if op == 2:  # saturation: towards the image's own grayscale
            return _blend(x, grayscale(x), f)
        return shift_hue(x, f)

    def __repr__(self) -> str:
        return f"BatchAugment(kind={self.kind!r}, size={self.size}, min_scale={self.min_scale})"
