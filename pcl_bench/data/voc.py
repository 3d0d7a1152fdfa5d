"""PASCAL VOC 2007 / 2012 read from the official ``VOCdevkit`` layout, for classification and detection.

Layout (docs/datasets.md)::

    VOCdevkit/VOC2007/JPEGImages/<id>.jpg
                     /Annotations/<id>.xml              one <object> per instance, 1-based inclusive boxes
                     /ImageSets/Main/<split>.txt        one id per line
                     /ImageSets/Main/<class>_<split>.txt  "<id> <label>", label 1 / -1 / 0 (difficult only)

``VOCClassification`` gives the multi-label targets of the SVM protocols (the raw 1 / -1 / 0 codes: the
protocol decides what difficult means); ``VOCDetection`` gives per-object boxes for detection transfer.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..runtime.errors import UsageError
from .corrupt import open_rgb

VOC_CLASSES: list[str] = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
VOC0712 = "2007+2012"  # ``year`` of the VOC07+12 detection union (VOC2007 trainval + VOC2012 trainval)
LAYOUT = (
    "<root>/VOC<year>/ImageSets/Main/{<split>,<class>_<split>}.txt, JPEGImages/<id>.jpg, "
    "Annotations/<id>.xml (root: the VOCdevkit folder, or VOC<year> itself)"
)
_LABELS = (-1, 0, 1)  # absent, present only as difficult objects, present


def _error(year: str, problem: str) -> UsageError:
    return UsageError(f"VOC{year}: {problem}; expected {LAYOUT.replace('<year>', year)}")


def voc_dir(root: str | os.PathLike, year: str) -> Path:
    """The ``VOC<year>`` folder: ``root/VOC<year>``, ``root/VOCdevkit/VOC<year>`` or ``root`` itself."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _error(year, f"{root} does not exist")
    folder = f"VOC{year}"
    # ``root`` itself only if it is not another year's folder: VOC2012 must not pass for VOC2007.
    own = [root] if not re.fullmatch(r"VOC\d{4}", root.name) or root.name == folder else []
    for base in [root / folder, root / "VOCdevkit" / folder, *own]:
        if (base / "ImageSets" / "Main").is_dir():
            return base
    raise _error(year, f"{root} has no {folder}/ImageSets/Main/ folder")


def list_splits(base: Path) -> list[str]:
    """Split names in ``base/ImageSets/Main``: from ``<split>.txt`` and from ``<class>_<split>.txt``."""
    stems = [p.stem for p in (base / "ImageSets" / "Main").glob("*.txt")]
    return sorted({s.rsplit("_", 1)[-1] for s in stems})


def _split_error(year: str, base: Path, missing: str) -> UsageError:
    found = ", ".join(list_splits(base)) or "none"
    return _error(year, f"{base} has no ImageSets/Main/{missing} (splits there: {found})")


def read_image_ids(base: Path, split: str, year: str) -> list[str]:
    """Ids listed in ``base/ImageSets/Main/<split>.txt``, in file order."""
    path = base / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise _split_error(year, base, f"{split}.txt")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def discover_classes(base: Path, split: str, year: str) -> list[str]:
    """Class names with a ``<class>_<split>.txt`` list, sorted (for VOC: the canonical order)."""
    suffix = f"_{split}.txt"
    classes = sorted(p.name[: -len(suffix)] for p in (base / "ImageSets" / "Main").glob(f"*{suffix}"))
    if not classes:
        raise _split_error(year, base, f"<class>_{split}.txt")
    return classes


def _read_class_list(path: Path, year: str) -> tuple[list[str], np.ndarray]:
    """``<id> <label>`` lines (label right-aligned in two characters: split on whitespace) -> ids, labels."""
    ids, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("1", "-1", "0"):
            raise _error(year, f"{path}:{n} is {line.strip()!r}, not '<id> <label>' with label 1, -1 or 0")
        ids.append(fields[0])
        labels.append(int(fields[1]))
    return ids, np.asarray(labels, dtype=np.int8)


def read_class_labels(
    base: Path, split: str, classes: Sequence[str], year: str
) -> tuple[list[str], np.ndarray]:
    """Image ids and targets int8 (N, C) with 1 / -1 / 0 from every ``<class>_<split>.txt``.

    Every class list must name the same ids in the same order (as the official ones do).
    """
    ids, columns = None, []
    for cls in classes:
        path = base / "ImageSets" / "Main" / f"{cls}_{split}.txt"
        if not path.is_file():
            raise _split_error(year, base, f"{cls}_{split}.txt")
        cls_ids, labels = _read_class_list(path, year)
        if ids is None:
            ids = cls_ids
        elif cls_ids != ids:
            raise _error(year, f"{path} lists other ids (or another order) than {classes[0]}_{split}.txt")
        columns.append(labels)
    return ids, np.stack(columns, axis=1)


def _number(obj: ET.Element, tag: str, path: Path) -> float:
    text = obj.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{path}: <{tag}> is {text!r}, not a number; expected a VOC annotation") from None


def parse_annotation(path: str | os.PathLike, classes: Sequence[str] = VOC_CLASSES) -> dict[str, Any]:
    """Read one ``Annotations/<id>.xml``.

    Returns ``filename``, ``width``, ``height`` and per object: ``boxes`` float32 (n, 4) xmin, ymin, xmax,
    ymax as in the file (1-based, inclusive), ``labels`` int64 (n,) indices into ``classes``, ``names``,
    ``difficult`` bool (n,) (a missing ``<difficult>`` means 0). ``<part>`` children (person layout) and
    ``<occluded>`` are ignored: only the direct children of ``<object>`` are read.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise UsageError(f"{path}: not a readable VOC annotation ({e})") from None
    size = root.find("size")
    if size is None:
        raise UsageError(f"{path}: no <size>; expected a VOC annotation with <size><width><height>")
    boxes, labels, names, difficult = [], [], [], []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            raise UsageError(f"{path}: object class {name!r} is not one of the {len(classes)} classes")
        box = obj.find("bndbox")
        if box is None:
            raise UsageError(f"{path}: an object {name!r} has no <bndbox>")
        boxes.append([_number(box, t, path) for t in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(list(classes).index(name))
        names.append(name)
        difficult.append((obj.findtext("difficult") or "0").strip() not in ("0", ""))
    return {
        "filename": (root.findtext("filename") or "").strip(),
        "width": int(_number(size, "width", path)),
        "height": int(_number(size, "height", path)),
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "names": names,
        "difficult": np.asarray(difficult, dtype=bool),
    }


def _check_images(base: Path, year: str, *folders: str) -> None:
    for folder in folders:
        if not (base / folder).is_dir():
            raise _error(year, f"{base} has no {folder}/ folder")


class VOCClassification(Dataset):
    """VOC image classification: items ``(transform(PIL RGB image), target int8 tensor (C,), index)``.

    ``root``: the VOCdevkit folder or ``VOC<year>`` itself. ``split``: any list in ``ImageSets/Main``
    (trainval, test, train, val). ``classes`` None: every class with a ``<class>_<split>.txt``, sorted.
    Attributes: ``targets`` int8 (N, C) with 1 (present), -1 (absent), 0 (only difficult objects);
    ``image_ids``; ``classes``; ``image_size`` (None: photos of varying size; the protocol picks one).
    """

    layout = LAYOUT

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Callable[[Image.Image], Any] | None = None,
        year: str = "2007",
        classes: Sequence[str] | None = None,
        image_size: int | None = None,
    ):
        self.base = voc_dir(root, year)
        self.classes = list(classes) if classes is not None else discover_classes(self.base, split, year)
        self.image_ids, self.targets = read_class_labels(self.base, split, self.classes, year)
        self.label_files = [self.base / "ImageSets" / "Main" / f"{c}_{split}.txt" for c in self.classes]
        _check_images(self.base, year, "JPEGImages")
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.image_ids)

    def path(self, i: int) -> Path:
        return self.base / "JPEGImages" / f"{self.image_ids[i]}.jpg"

    def files(self) -> list[Path]:
        """The class lists and every image (for :func:`pcl_bench.data.fingerprint`)."""
        return [*self.label_files, *(self.path(i) for i in range(len(self)))]

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor, int]:
        img = open_rgb(self.path(i))
        target = torch.tensor(self.targets[i])
        return (img if self.transform is None else self.transform(img)), target, i


class VOCDetection(Dataset):
    """VOC object detection: items ``(image, target, index)``.

    ``target``: ``boxes`` float32 tensor (n, 4) x1, y1, x2, y2 in 0-based pixel coordinates with x2, y2
    exclusive (the file's 1-based inclusive xmin, ymin minus 1; xmax, ymax unchanged), ``labels`` int64
    (n,) in 1..C (0 is the background, as in torchvision), ``difficult`` bool (n,) (kept: the trainer and
    the evaluator decide), ``image_id`` str. ``transforms(img, target) -> (img, target)`` if given, else the
    PIL RGB image. Ids come from ``ImageSets/Main/<split>.txt``; ``year`` ``"2007+2012"`` (``VOC0712``)
    concatenates both years' lists (``root`` must then be the VOCdevkit folder).
    """

    layout = LAYOUT

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transforms: Callable[[Image.Image, dict], tuple[Any, dict]] | None = None,
        year: str = "2007",
        classes: Sequence[str] = VOC_CLASSES,
    ):
        self.classes = list(classes)
        self.bases: list[Path] = []
        self.image_ids: list[str] = []
        self._base_of: list[int] = []  # index into ``bases`` of each image
        for y in year.split("+"):
            base = voc_dir(root, y)
            _check_images(base, y, "JPEGImages", "Annotations")
            ids = read_image_ids(base, split, y)
            self._base_of += [len(self.bases)] * len(ids)
            self.image_ids += ids
            self.bases.append(base)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.image_ids)

    def target(self, i: int) -> dict[str, Any]:
        """The target of image ``i`` (see the class docstring), read from its annotation."""
        base, image_id = self.bases[self._base_of[i]], self.image_ids[i]
        ann = parse_annotation(base / "Annotations" / f"{image_id}.xml", self.classes)
        boxes = torch.from_numpy(ann["boxes"])
        boxes[:, :2] -= 1  # 1-based inclusive -> 0-based, [x1, x2) half-open
        return {
            "boxes": boxes,
            "labels": torch.from_numpy(ann["labels"]) + 1,
            "difficult": torch.from_numpy(ann["difficult"]),
            "image_id": image_id,
        }

    def path(self, i: int) -> Path:
        return self.bases[self._base_of[i]] / "JPEGImages" / f"{self.image_ids[i]}.jpg"

    def files(self) -> list[Path]:
        """Every image and its annotation (for :func:`pcl_bench.data.fingerprint`)."""
        return [p for i in range(len(self)) for p in
                (self.path(i), self.bases[self._base_of[i]] / "Annotations" / f"{self.image_ids[i]}.xml")]

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any], int]:
        img = open_rgb(self.path(i))
        target = self.target(i)
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return img, target, i


def voc0712_trainval(
    root: str | os.PathLike, transforms: Callable[[Image.Image, dict], tuple[Any, dict]] | None = None
) -> VOCDetection:
    """The VOC07+12 detection training set: VOC2007 trainval + VOC2012 trainval (16,551 images)."""
    return VOCDetection(root, "trainval", transforms, year=VOC0712)
