"""Subsets of a dataset: :class:`InstanceSubset` (a view with its own indices), a seeded class-balanced
:func:`balanced_subset`, and the labelled subsets of semi-supervised training and evaluation, drawn once and
saved as JSON (:func:`load_or_draw_subset`) so that every later use, a resumed run included, sees the same one.

Label subsets:

- class-balanced (default): round(fraction * n_c) images of each class c (half up, at least 1);
- ``balanced=False``, the draw of the fine-tuning code the PCL author points to (MoPro): shuffle the whole
  training list with Python's ``random`` seeded with ``seed`` and keep the first int(fraction * N), so class
  counts vary. (That code seeds only its parent process, so under ``mp.spawn`` its subset is not
  reproducible; this is the draw it makes when the seed takes effect.) Neither is the SimCLR 1% / 10%
  ImageNet list.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..runtime.atomic import write_text
from ..runtime.errors import UsageError

SUBSET_KEYS = ("fraction", "seed", "balanced", "dataset_size")


def reads_image_files(ds: Dataset) -> bool:
    """True if the items of ``ds`` (through any subsets) are read from image files, one each, named by
    ``ds.path(i)``; False for arrays in memory (shapes, CIFAR, STL-10)."""
    while isinstance(ds, InstanceSubset):
        ds = ds.dataset
    return hasattr(ds, "path")


class InstanceSubset(Dataset):
    """``dataset`` restricted to ``indices``; item ``j`` is ``(x, target, j)`` with its own index ``j``.

    ``targets`` and ``coarse_targets`` (where the parent has them) are sliced; ``classes``, ``image_size``,
    ``coarse_classes`` and ``path(j)`` are the parent's.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int] | np.ndarray):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(self.indices) and not 0 <= self.indices.min() <= self.indices.max() < len(dataset):
            raise IndexError(f"subset indices must lie in [0, {len(dataset)})")
        for name in ("targets", "coarse_targets"):
            if getattr(dataset, name, None) is not None:
                setattr(self, name, np.asarray(getattr(dataset, name))[self.indices])
        for name in ("classes", "image_size", "coarse_classes"):
            if hasattr(dataset, name):
                setattr(self, name, getattr(dataset, name))

    def path(self, j: int) -> Any:
        """The file of item ``j`` (datasets of image files only)."""
        return self.dataset.path(int(self.indices[j]))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[Any, Any, int]:
        x, target, _ = self.dataset[int(self.indices[j])]
        return x, target, j


def balanced_subset(dataset: Dataset, per_class: int, seed: int) -> InstanceSubset:
    """A seeded choice of at most ``per_class`` samples of each target value, in index order.

    Unlabelled samples (target -1) count as one more class.
    """
    if per_class < 1:
        raise UsageError(f"per_class must be >= 1, got {per_class}")
    targets = np.asarray(dataset.targets)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(idx, size=min(per_class, len(idx)), replace=False)
        for idx in (np.flatnonzero(targets == t) for t in np.unique(targets))
    ]
    return InstanceSubset(dataset, np.sort(np.concatenate(chosen)) if chosen else [])


def label_subset(targets: np.ndarray, fraction: float, seed: int, balanced: bool = True) -> np.ndarray:
    """Sorted indices (int64) of the labelled subset of a training set with ``targets`` (N,) in 0..C-1."""
    targets = np.asarray(targets).reshape(-1)
    if not 0 < fraction <= 1:
        raise UsageError(f"label fraction must be in (0, 1], e.g. 0.01 or 0.1; got {fraction}")
    if len(targets) == 0 or targets.min() < 0:
        raise UsageError("label subsets need a labelled training split (targets >= 0); use e.g. 'train'")
    if not balanced:
        order = list(range(len(targets)))
        random.Random(seed).shuffle(order)
        chosen = np.asarray(order[: int(fraction * len(targets))], dtype=np.int64)
        if len(chosen) == 0:
            raise UsageError(f"fraction {fraction} of {len(targets)} samples selects none; use a larger fraction")
        return np.sort(chosen)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        chosen.append(rng.choice(idx, size=max(1, math.floor(fraction * len(idx) + 0.5)), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def save_subset(indices: np.ndarray, path: str | Path, meta: dict) -> None:
    """Write ``indices`` and ``meta`` (which must hold fraction, seed, balanced and dataset_size) as JSON."""
    missing = [k for k in SUBSET_KEYS if k not in meta]
    if missing:
        raise ValueError(f"subset meta lacks {missing}")
    indices = np.asarray(indices, dtype=np.int64)
    write_text(json.dumps({**meta, "n": len(indices), "indices": indices.tolist()}) + "\n", path)


def load_subset(path: str | Path, dataset_size: int) -> tuple[np.ndarray, dict]:
    """Indices (int64) and meta of a file from :func:`save_subset`, checked against the dataset's size."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read label subset {path} ({e}); pass a file written by pcl-bench or "
                         f"delete it to draw a new subset") from None
    indices = np.asarray(data.pop("indices", []), dtype=np.int64)
    if data.get("dataset_size") != dataset_size:
        raise UsageError(f"label subset {path} was drawn from {data.get('dataset_size')} images but this "
                         f"training set has {dataset_size}; use the same dataset or another subset file")
    if len(indices) != data.get("n") or (len(indices) and not 0 <= indices.min() <= indices.max() < dataset_size):
        raise UsageError(f"label subset {path} is corrupt (index count or range); delete it to draw again")
    return indices, data


def load_or_draw_subset(path: str | Path, targets: np.ndarray, fraction: float, seed: int,
                        balanced: bool = True) -> np.ndarray:
    """The subset saved at ``path`` if it exists (it must match fraction, seed and balanced), else a new
    :func:`label_subset`, saved there first."""
    targets = np.asarray(targets).reshape(-1)
    wanted = {"fraction": fraction, "seed": seed, "balanced": balanced, "dataset_size": len(targets)}
    if Path(path).exists():
        indices, meta = load_subset(path, len(targets))
        got = {k: meta.get(k) for k in SUBSET_KEYS}
        if got != wanted:
            raise UsageError(f"label subset {path} holds {got}, not the requested {wanted}; pass another "
                             f"subset path or delete this one")
        return indices
    indices = label_subset(targets, fraction, seed, balanced)
    save_subset(indices, path, wanted)
    return indices
