"""Real images for the real-data tests: small trees in the users' layouts, made of links into the CIFAR-10
(ImageFolder) and VOC2007 copies that development machines and CI keep in ``../shared/data``.

Tests that use them skip cleanly where that folder is absent (a user's clone). ``PCL_BENCH_SHARED_DATA``
points elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("PCL_BENCH_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))
CIFAR10 = SHARED_DATA / "cifar10"
VOC_MINI = SHARED_DATA / "voc2007-mini" / "VOCdevkit"

needs_cifar10 = pytest.mark.skipif(not CIFAR10.is_dir(), reason=f"real CIFAR-10 not found at {CIFAR10}")
needs_voc = pytest.mark.skipif(not VOC_MINI.is_dir(), reason=f"real VOC2007 images not found at {VOC_MINI}")


def _class_images(split: str) -> dict[str, list[Path]]:
    return {c.name: sorted(c.iterdir()) for c in sorted((CIFAR10 / split).iterdir()) if c.is_dir()}


def cifar_tree(root: Path, per_class: dict[str, int]) -> Path:
    """An ImageFolder tree ``root/<split>/<class>/<image>`` of the first ``per_class[split]`` images of each
    class of CIFAR-10 train (split "train") or test (any other split name), as symbolic links."""
    for split, n in per_class.items():
        for cls, files in _class_images("train" if split == "train" else "test").items():
            (root / split / cls).mkdir(parents=True)
            for f in files[:n]:
                (root / split / cls / f.name).symlink_to(f)
    return root


def places_tree(root: Path, train: int, val: int) -> Path:
    """The Places205 layout (split lists + category folders) holding CIFAR-10 images as categories a/airplane,
    b/bird, ...: ``train`` images per category from CIFAR train, ``val`` from CIFAR test."""
    images = root / "data" / "vision" / "torralba" / "deeplearning" / "images256"
    lists = root / "trainvalsplit_places205"
    lists.mkdir(parents=True)
    for split, n, source in (("train", train, "train"), ("val", val, "test")):
        lines = []
        for label, (cls, files) in enumerate(_class_images(source).items()):
            folder = images / cls[0] / cls
            folder.mkdir(parents=True, exist_ok=True)
            for f in files[:n]:
                (folder / f"{split}_{f.name}").symlink_to(f)
                lines.append(f"{cls[0]}/{cls}/{split}_{f.name} {label}\n")
        (lists / f"{split}_places205.csv").write_text("".join(lines))
    return root


def truncate_copy(source: Path, target: Path) -> Path:
    """Replace the link ``target`` by a copy of ``source`` cut to half its bytes (a truncated JPEG)."""
    data = source.read_bytes()
    target.unlink()
    target.write_bytes(data[: len(data) // 2])
    return target
