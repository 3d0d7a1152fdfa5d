"""Datasets by name: ``build_dataset(name, root, split, transform, download)``.

Every dataset returns ``(transform(img), target, index)`` items and has ``targets``, ``classes`` and
``image_size`` (see ``pcl_bench.data.datasets``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

from torch.utils.data import Dataset

from ..runtime.errors import UsageError
from .datasets import CIFAR10, CIFAR100, STL10, ImageFolderInstance, ImageNet, Transform
from .places205 import Places205
from .subsets import InstanceSubset, balanced_subset
from .voc import VOCClassification, VOCDetection


def _shapes(root: str | None, split: str, transform: Transform = None) -> Dataset:
    # Imported here so the other datasets do not depend on the synthetic generator's module.
    from .shapes import ShapesDataset

    return ShapesDataset(root, split, transform)


def _shapes_voc(root: str | None, split: str, transform: Transform = None) -> Dataset:
    from .shapes_voc import shapes_voc_classification

    return shapes_voc_classification(root, split, transform)


def _voc07(root: str, split: str, transform: Transform = None) -> Dataset:
    return VOCClassification(root, split, transform, year="2007")


def _voc12(root: str, split: str, transform: Transform = None) -> Dataset:
    return VOCClassification(root, split, transform, year="2012")


_voc07.layout = _voc12.layout = VOCClassification.layout  # named in build_dataset's --download error


DATASETS: dict[str, Callable[[str | None, str, Transform], Dataset]] = {
    "shapes": _shapes,
    "imagefolder": ImageFolderInstance,
    "imagenet": ImageNet,
    "cifar10": CIFAR10,
    "cifar100": CIFAR100,
    "stl10": STL10,
    "shapes-voc": _shapes_voc,
    "voc07": _voc07,
    "voc12": _voc12,
    "places205": Places205,
}


# (training split, test split) of each dataset as its release names them; ImageFolder trees are looked at.
SPLITS: dict[str, tuple[str, str]] = {
    "shapes": ("train", "test"), "imagenet": ("train", "val"), "cifar10": ("train", "test"),
    "cifar100": ("train", "test"), "stl10": ("train", "test"), "places205": ("train", "val"),
    "shapes-voc": ("trainval", "test"), "voc07": ("trainval", "test"), "voc07+12": ("trainval", "test"),
    "voc12": ("train", "val"),
}


def default_splits(name: str, root: str | os.PathLike | None) -> tuple[str, str]:
    """The (training, test) splits of dataset ``name``; for ``imagefolder``, ``train`` and whichever of
    ``test`` or ``val`` (in that order) the tree at ``root`` has."""
    if name != "imagefolder":
        if name not in SPLITS:
            raise UsageError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
        return SPLITS[name]
    if root is None:
        raise UsageError("--data-root is required for imagefolder")
    root = os.path.expanduser(os.fspath(root))
    found = sorted(e.name for e in os.scandir(root) if e.is_dir()) if os.path.isdir(root) else []
    test = next((s for s in ("test", "val") if s in found), None)
    if "train" not in found or test is None:
        raise UsageError(f"imagefolder: {root} has sub-folders {', '.join(found) or 'none'}, not train/ and "
                         f"test/ (or val/); expected {ImageFolderInstance.layout}, or pass --train-split and "
                         f"--test-split")
    return "train", test


def with_transform(ds: Dataset, transform) -> Dataset:
    """A shallow copy of ``ds`` (sharing its arrays and file lists) with another transform."""
    if isinstance(ds, InstanceSubset):
        return InstanceSubset(with_transform(ds.dataset, transform), ds.indices)
    ds = copy.copy(ds)
    ds.transform = transform
    return ds


def build_dataset(
    name: str, root: str | os.PathLike | None, split: str, transform: Transform = None, download: bool = False
) -> Dataset:
    """The dataset ``name`` read from ``root``.

    ``shapes`` is generated (``root`` None: its default cache; ``download`` does not apply). The others need
    ``root``; ``download=True`` fetches cifar10, cifar100 and stl10 into ``root`` if absent.
    ``shapes-voc`` is generated too (``root``: its cache, None for the default). ``voc07``, ``voc12`` and
    ``shapes-voc`` are multi-label: targets int8 (N, C) with 1 / -1 / 0 (see ``pcl_bench.data.voc``).
    """
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if name == "shapes":
        return _shapes(root, split, transform)
    if name == "shapes-voc":
        return _shapes_voc(root, split, transform)
    if root is None:
        raise UsageError(f"--data-root is required for {name}")
    root = os.path.expanduser(os.fspath(root))
    factory = DATASETS[name]
    if download:
        if not hasattr(factory, "download"):
            downloadable = ", ".join(n for n, f in DATASETS.items() if hasattr(f, "download"))
            raise UsageError(
                f"--download works for {downloadable} only: obtain {name} manually (ImageNet must be requested "
                f"under its licence at https://image-net.org) and arrange it as {factory.layout}"
            )
        factory.download(root)
    return factory(root, split, transform)


__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DATASETS",
    "STL10",
    "ImageFolderInstance",
    "ImageNet",
    "InstanceSubset",
    "Places205",
    "VOCClassification",
    "VOCDetection",
    "balanced_subset",
    "build_dataset",
    "default_splits",
    "with_transform",
]
