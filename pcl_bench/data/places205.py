"""Places205 read from its official layout: split lists in csv files, 256x256 images in category folders.

Layout (docs/datasets.md)::

    <root>/trainvalsplit_places205/{train,val}_places205.csv   lines "<relative path> <label>", labels 0..204
    <root>/data/vision/torralba/deeplearning/images256/<relative path>, e.g. a/abbey/00000000.jpg

About 2.45M train and 20,500 val images (100 per class).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..runtime.errors import UsageError
from .corrupt import open_rgb

LISTS = "trainvalsplit_places205"
IMAGES = "data/vision/torralba/deeplearning/images256"


def category(relpath: str) -> str:
    """The class name of an image path: its folder without the initial letter (``b/bakery/shop/x.jpg`` ->
    ``bakery/shop``), or "" if the path has no such folder."""
    parts = relpath.split("/")
    return "/".join(parts[1:-1])


class Places205(Dataset):
    """Places205 split ``train`` or ``val``: items ``(transform(PIL RGB image), label, index)``.

    Attributes: ``targets`` int64 (N,); ``classes`` (``classes[t]`` is the category folder of label ``t``,
    e.g. ``abbey`` or ``bakery/shop``); ``image_size`` 224, the crop used on the 256x256 images.
    """

    name = "places205"
    splits = ("train", "val")
    layout = (
        f"<root>/{LISTS}/{{train,val}}_places205.csv with lines '<relative path> <label>' "
        f"and the images under <root>/{IMAGES}/<relative path>"
    )
    image_size = 224

    def __init__(
        self, root: str | os.PathLike, split: str, transform: Callable[[Image.Image], Any] | None = None
    ):
        if split not in self.splits:
            raise UsageError(f"{self.name}: unknown split {split!r}; valid splits: {', '.join(self.splits)}")
        root = Path(root).expanduser()
        self.csv = csv = root / LISTS / f"{split}_places205.csv"
        self.image_dir = root / IMAGES
        if not csv.is_file():
            raise self._error(f"{root} has no {LISTS}/{split}_places205.csv")
        if not self.image_dir.is_dir():
            raise self._error(f"{root} has no {IMAGES}/ folder")
        files, targets, names = self._read(csv)
        # Paths in one bytes array, not 2.45M str objects: DataLoader workers would copy those page by page.
        self._files = np.array([f.encode() for f in files])
        self.targets = np.asarray(targets, dtype=np.int64)
        if sorted(names) != list(range(len(names))):
            raise self._error(f"{csv}: the labels are not 0..C-1 with at least one image each")
        self.classes = [names[t] for t in range(len(names))]
        self.transform = transform

    def _error(self, problem: str) -> UsageError:
        return UsageError(f"{self.name}: {problem}; expected {self.layout}")

    def _read(self, csv: Path) -> tuple[list[str], list[int], dict[int, str]]:
        """Relative paths, labels and the category of each label, checked to be one per label."""
        files, targets, names = [], [], {}
        with open(csv) as f:
            for n, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                rel = fields[0].lstrip("/")
                cat = category(rel)
                if len(fields) != 2 or not fields[1].isdigit() or not cat:
                    raise self._error(
                        f"{csv}:{n} is {line.strip()!r}, not '<letter>/<category>/<file> <label>'"
                    )
                label = int(fields[1])
                if names.setdefault(label, cat) != cat:
                    raise self._error(f"{csv}:{n}: label {label} is both {names[label]} and {cat}")
                files.append(rel)
                targets.append(label)
        if not files:
            raise self._error(f"{csv} lists no images")
        return files, targets, names

    def path(self, i: int) -> Path:
        return self.image_dir / self._files[i].decode()

    def files(self) -> list[Path]:
        """The split list and every image (for :func:`pcl_bench.data.fingerprint`)."""
        return [self.csv, *(self.path(i) for i in range(len(self)))]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        rgb = open_rgb(self.path(i))
        return (rgb if self.transform is None else self.transform(rgb)), int(self.targets[i]), i
