"""Datasets of equal-size images held on the training device as one uint8 tensor, for training and the E-step.

With ``--aug-backend tensor`` the views are made from whole batches on the device; with the images there too
(``--data-on-device``, the default then), a training step reads no file and waits for no loader process. The
uint8 images (N, 3, H, W) are decoded once through the dataset's own reader into
``$PCL_BENCH_CACHE/tensors/<hash>.npy`` (keyed by the data's fingerprint and the transform) and read from there
on later runs: CIFAR-10's 50,000 training images take 150 MB, `shapes` 61 MB. Any dataset qualifies whose
images share one size (CIFAR, STL-10, `shapes`, an ImageFolder such as CIFAR-10 or Tiny-ImageNet stored as
files; :func:`check_equal_size`) and fit in half the device's memory (:func:`check_fits`). The E-step's images
are cached the same way after its PIL resize and centre crop; the conversion to float and the normalisation then run on
the device with the same float operations as ``ToTensor`` and ``Normalize``.

Both iterables below draw from torch's global generator what a ``DataLoader`` draws as its iterator starts
(its workers' base seed), and yield what it yields, in the same order: a run gives bit-identical weights with
and without ``--data-on-device``.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import Compose, PILToTensor
from tqdm import tqdm

from ..runtime.atomic import save_npy
from ..runtime.errors import UsageError
from ..runtime.paths import cache_dir
from . import with_transform
from .augment import IMAGENET_MEAN, IMAGENET_STD
from .batch_augment import FIXED_SIZE_DATASETS
from .corrupt import DECODE_ERRORS
from .fingerprint import fingerprint
from .subsets import reads_image_files


def cached_images(ds: Dataset, transform=None, workers: int = 0) -> torch.Tensor:
    """The images of ``ds`` after the PIL ``transform`` (None: as stored) as a uint8 tensor (N, 3, H, W) on
    the CPU, decoded once and cached; a damaged cache file is decoded again, with a warning."""
    key = hashlib.sha256(f"{fingerprint(ds)}|{transform}".encode()).hexdigest()[:32]
    path = cache_dir("tensors") / f"{key}.npy"
    if path.exists():
        try:
            array = np.load(path)
            if array.dtype == np.uint8 and array.ndim == 4 and len(array) == len(ds):
                return torch.from_numpy(array)
            problem = f"shape {array.shape}, dtype {array.dtype}"
        except (OSError, ValueError, EOFError) as e:
            problem = str(e)
        warnings.warn(f"image cache {path} is damaged ({problem}); decoding the images again", stacklevel=2)
    to_uint8 = PILToTensor() if transform is None else Compose([transform, PILToTensor()])
    loader = DataLoader(with_transform(ds, to_uint8), batch_size=256, num_workers=workers)
    batches = [x for x, _, _ in tqdm(loader, desc="decoding images once", leave=False, mininterval=2)]
    array = torch.cat(batches).numpy()
    save_npy(path, array)
    return torch.from_numpy(array)


def check_equal_size(ds: Dataset, name: str) -> None:
    """Raise UsageError unless every image of ``ds`` (dataset ``name``) has one size, read from the file headers
    (``FIXED_SIZE_DATASETS`` are known to pass). Batched augmentation and the image cache stack the images, so
    they must all be alike; an unreadable header is left to decoding."""
    if name in FIXED_SIZE_DATASETS:
        return
    if not reads_image_files(ds):
        raise UsageError(f"--aug-backend tensor needs images of one size, which {name} does not promise; use "
                         f"--aug-backend pil")
    first = None
    for i in tqdm(range(len(ds)), desc="checking image sizes", leave=False, mininterval=2, delay=2):
        path = ds.path(i)
        try:
            with Image.open(path) as img:  # reads the header only
                size = img.size
        except DECODE_ERRORS:
            continue
        if first is None:
            first = (size, path)
        elif size != first[0]:
            raise UsageError(f"--aug-backend tensor needs images of one size, but {first[1]} is "
                             f"{first[0][0]}x{first[0][1]} and {path} is {size[0]}x{size[1]}; use "
                             f"--aug-backend pil for {name}, or resize the images to one size")


def check_fits(images: int, shapes: Sequence[tuple[int, ...]], device: torch.device) -> None:
    """Raise UsageError if ``images`` uint8 images of each of ``shapes`` (C, H, W) would take more than half of
    ``device``'s memory (a CUDA device's total, or the RAM available now)."""
    need = images * sum(math.prod(s) for s in shapes)
    if device.type == "cuda":
        have, where = torch.cuda.mem_get_info(device)[1], f"the memory of {device}"
    else:
        have, where = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the free RAM"
    if need > have / 2:
        raise UsageError(f"--data-on-device: {images:,} images take {need / 2**30:.1f} GiB, more than half of "
                         f"{where} ({have / 2**30:.1f} GiB); pass --no-data-on-device (the loader then reads "
                         f"them every epoch) or --aug-backend pil")


def _draw_loader_seed() -> None:
    """Advance torch's global generator as a starting DataLoader iterator does."""
    torch.empty((), dtype=torch.int64).random_()


class DeviceBatches:
    """Training batches ``(images uint8 (B, 3, H, W), targets (B,), indices (B,))`` of ``images`` held on the
    device, in the order of ``sampler`` (a ``DistributedSampler``: ``set_epoch`` as for a DataLoader), the last
    incomplete batch dropped."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, sampler, batch_size: int):
        self.images, self.targets, self.sampler, self.batch_size = images, targets, sampler, batch_size

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        _draw_loader_seed()  # when the iterator is made, as a DataLoader does
        return self._batches(torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.images.device))

    def _batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for b in range(len(self)):
            index = order[b * self.batch_size: (b + 1) * self.batch_size]
            yield self.images[index], self.targets[index], index


class DeviceEvalBatches:
    """E-step batches ``(normalised float images, targets, indices)`` of the centre crops ``images`` (uint8,
    on the device) at ``indices`` (this rank's shard), as ``eval_transform``'s ``ToTensor`` + ``Normalize``
    make them."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, indices: Sequence[int], batch_size: int):
        self.images, self.targets, self.batch_size = images, targets, batch_size
        self.indices = torch.as_tensor(list(indices), dtype=torch.long).to(images.device)

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        _draw_loader_seed()
        return self._batches()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for index in self.indices.split(self.batch_size):
            yield normalized(self.images[index]), self.targets[index], index


def normalized(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) as ``ToTensor`` + ``Normalize`` make them: float, / 255, ImageNet mean and std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(-1, 1, 1)
    return images.float().div_(255).sub_(mean).div_(std)
