"""Writers of tiny datasets in the real on-disk formats (``protocols/dataset_layouts.md``), for tests.

Each writer returns what it wrote, so tests can compare loaded pixels and labels with the originals.
Images are random, except image 0 of every file or class folder, which is ``marker_image``: a red block
in the top-left corner, wider than tall, so a transposed or flipped decoder is caught.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcl_bench.runtime.errors import UsageError

STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def marker_image(size: int) -> np.ndarray:
    """uint8 (size, size, 3): black, with rows [0, size/4) x columns [0, size/2) pure red."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[: size // 4, : size // 2, 0] = 255
    return img


def _images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    if n:
        images[0] = marker_image(size)
    return images


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the releases were written by Python 2's cPickle


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072): the R, G, B planes of each image, row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10(root: str | os.PathLike, n_per_batch: int = 4, seed: int = 0) -> dict[str, tuple]:
    """``root/cifar-10-batches-py``; returns ``{split: (images (N, 32, 32, 3), labels (N,))}``.

    Train has ``5 * n_per_batch`` images over data_batch_1..5 (image 0 of each batch is the marker), test
    ``n_per_batch``.
    """
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _pickle(
        base / "batches.meta",
        {"num_cases_per_batch": n_per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072},
    )
    out: dict[str, list] = {"train": [], "test": []}
    files = [("train", f"data_batch_{k}") for k in range(1, 6)] + [("test", "test_batch")]
    for split, name in files:
        images = _images(rng, n_per_batch, 32)
        labels = rng.integers(0, 10, size=n_per_batch)
        _pickle(base / name, {
            "batch_label": f"{name} of 5", "labels": labels.tolist(), "data": _cifar_rows(images),
            "filenames": [f"img_{i}.png" for i in range(n_per_batch)],
        })  # fmt: skip
        out[split].append((images, labels))
    return {s: tuple(np.concatenate(arrays) for arrays in zip(*parts)) for s, parts in out.items()}


def write_cifar100(
    root: str | os.PathLike, n_train: int = 20, n_test: int = 10, seed: int = 0
) -> dict[str, tuple]:
    """``root/cifar-100-python``; returns ``{split: (images, fine labels, coarse labels)}``.

    Classes are named ``fine00..fine99`` and ``coarse00..coarse19``; fine class f has coarse class f // 5.
    """
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _pickle(base / "meta", {
        "fine_label_names": [f"fine{i:02d}" for i in range(100)],
        "coarse_label_names": [f"coarse{i:02d}" for i in range(20)],
    })  # fmt: skip
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, fine = _images(rng, n, 32), rng.integers(0, 100, size=n)
        _pickle(base / split, {
            "filenames": [f"img_{i}.png" for i in range(n)], "batch_label": f"{split} batch",
            "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(), "data": _cifar_rows(images),
        })  # fmt: skip
        out[split] = (images, fine, fine // 5)
    return out


def _stl_bytes(images: np.ndarray) -> bytes:
    """(N, 96, 96, 3) -> STL-10 layout: per image, per channel, column-major (column by column)."""
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes()


def write_stl10(
    root: str | os.PathLike, n_train: int = 6, n_test: int = 4, n_unlabeled: int = 5, seed: int = 0
) -> dict[str, tuple]:
    """``root/stl10_binary``; returns ``{split: (images (N, 96, 96, 3), labels 0..9 or -1)}``."""
    base = Path(root) / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (base / "class_names.txt").write_text("".join(f"{c}\n" for c in STL10_CLASSES))
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        images = _images(rng, n, 96)
        (base / f"{split}_X.bin").write_bytes(_stl_bytes(images))
        if split == "unlabeled":
            labels = np.full(n, -1)
        else:
            labels = rng.integers(0, 10, size=n)
            (base / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        out[split] = (images, labels)
    folds = [" ".join(str(i) for i in range(k % 2, n_train, 2)) for k in range(10)]
    (base / "fold_indices.txt").write_text("\n".join(folds) + "\n")
    return out


def write_image(
    path: str | os.PathLike, array: np.ndarray, mode: str = "RGB", format: str | None = None
) -> Path:
    """Save an RGB uint8 array as ``path`` in colour ``mode`` (e.g. "CMYK", "L") and ``format`` (e.g. "PNG")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert(mode).save(path, format=format)
    return path


def write_imagefolder(
    root: str | os.PathLike,
    splits: Sequence[str] = ("train", "val"),
    classes: Sequence[str] = ("cat", "dog"),
    n: int = 3,
    size: int = 32,
    ext: str = "png",
    seed: int = 0,
) -> dict[str, list[tuple[Path, np.ndarray]]]:
    """``root/<split>/<class>/<k:04d>.<ext>``; returns ``{split: [(path, pixels), ...]}`` in write order.

    Use ``ext="png"`` to compare pixels exactly (JPEG is lossy).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for split in splits:
        out[split] = []
        for cls in classes:
            for k, pixels in enumerate(_images(rng, n, size)):
                path = write_image(Path(root) / split / cls / f"{k:04d}.{ext}", pixels)
                out[split].append((path, pixels))
    return out


def usage_error(match: str, fn, *args, **kwargs) -> str:
    """Run ``fn``, expecting a one-line UsageError that contains ``match``."""
    with pytest.raises(UsageError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    return msg
