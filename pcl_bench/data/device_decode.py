"""Image files decoded on the training device (``--decode device``), for JPEG datasets too large to hold there.

The loader processes only read each file's bytes (:class:`FileBytes`); the training process decodes a whole
batch of JPEGs in one call to ``torchvision.io.decode_jpeg`` on the device (nvJPEG on a GPU, libjpeg-turbo on
a CPU), and :class:`~pcl_bench.data.batch_augment.BatchAugment` crops and augments the images, whatever their
sizes, there too. Files that are not JPEGs, and JPEGs the device decoder refuses, are decoded by PIL as the
``pil`` path decodes them; a file that PIL cannot read either is named (:class:`CorruptImage`). The E-step's
centre crops are resized on the device with antialiasing, as PIL's bilinear resize does (to within rounding).
On a CPU the decoded pixels equal PIL's; nvJPEG's may differ from them by a few grey levels.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from ..runtime.errors import CorruptImage, UsageError
from .corrupt import DECODE_ERRORS
from .subsets import reads_image_files
from .tensor_cache import normalized

DECODERS = ("pil", "device")


def check_files(ds: Dataset, name: str) -> None:
    """Raise UsageError unless ``ds`` (dataset ``name``) reads its images from files, one per image."""
    if not reads_image_files(ds):
        raise UsageError(f"--decode device reads image files, and {name} keeps its images in arrays; hold them on "
                         f"the device instead (--decode pil --aug-backend tensor --data-on-device)")


class FileBytes(Dataset):
    """Items ``(encoded bytes, target, index)`` of the image-file dataset ``ds``, undecoded."""

    def __init__(self, ds: Dataset):
        self.ds, self.targets = ds, ds.targets

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[bytes, np.ndarray, int]:
        path = self.ds.path(i)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CorruptImage.at(path, f"{type(e).__name__}: {e}") from None
        return data, np.asarray(self.targets[i]), i  # a class, or a multi-label row (VOC)


def collate_bytes(items: Sequence[tuple[bytes, np.ndarray, int]]) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                         torch.Tensor]:
    """A batch of :class:`FileBytes` items; the files' bytes as uint8 tensors (L_i,), views of one buffer (a
    loader process then hands over one block of shared memory per batch)."""
    data, targets, index = zip(*items)
    flat = torch.frombuffer(bytearray(b"".join(data)), dtype=torch.uint8)
    return list(flat.split([len(d) for d in data])), torch.from_numpy(np.stack(targets)), torch.tensor(index)


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


def decode_images(data: Sequence[torch.Tensor], path_of: Callable[[int], object],
                  device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 images (3, H_i, W_i) on ``device`` of the encoded files ``data``; ``path_of(j)`` names file j
    in an error.

    The JPEGs are decoded in one batched call; if the decoder refuses one of them, each is tried alone.
    """
    out: list[torch.Tensor | None] = [None] * len(data)
    jpegs = [i for i, d in enumerate(data) if _is_jpeg(d)]
    if jpegs:
        try:
            for i, img in zip(jpegs, decode_jpeg([data[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)):
                out[i] = img
        except RuntimeError:
            pass  # decoded one by one below, to find the one refused
    for j, img in enumerate(out):
        if img is None:
            try:
                out[j] = _decode_one(data[j], device)
            except DECODE_ERRORS as e:
                raise CorruptImage.at(path_of(j), f"{type(e).__name__}: {e}") from None
    return out


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One file: the device decoder for a JPEG it accepts, else PIL (which raises one of ``DECODE_ERRORS``)."""
    if _is_jpeg(data):
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass  # e.g. a CMYK JPEG on some decoders: PIL converts it
    with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
        return TF.pil_to_tensor(img.convert("RGB")).to(device)


def centre_crops(images: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """``eval_transform(size)`` of uint8 images (3, H_i, W_i) on their device: shorter side resized to
    ``round(size * 256 / 224)`` (bilinear, antialiased), centre crop ``size``, normalised: (N, 3, size, size)."""
    short = round(size * 256 / 224)
    crops = [TF.center_crop(TF.resize(img, [short], antialias=True), [size]) for img in images]
    return normalized(torch.stack(crops))


class DecodedBatches:
    """The batches of ``loader`` (over :class:`FileBytes` of ``ds``, collated by :func:`collate_bytes`) with their
    files decoded on ``device``: ``(list of uint8 (3, H_i, W_i), targets, index)``, or with ``crop`` the E-step's
    normalised centre crops ``(N, 3, crop, crop)`` in place of the list."""

    def __init__(self, loader: DataLoader, ds: Dataset, device: torch.device, crop: int | None = None):
        self.loader, self.ds, self.device, self.crop = loader, ds, device, crop

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor] | torch.Tensor, torch.Tensor, torch.Tensor]]:
        for data, targets, index in self.loader:
            images = decode_images(data, lambda j, index=index: self.ds.path(int(index[j])), self.device)
            yield (images if self.crop is None else centre_crops(images, self.crop)), targets, index
