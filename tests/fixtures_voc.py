"""Writers of tiny PASCAL VOC and Places205 trees in the real on-disk formats (``dataset_layouts.md``).

The VOC writer imitates the official files, quirks included: ``<part>`` children with their own boxes
(person layout), ``<occluded>``, objects without ``<difficult>``, float coordinates, and class lists whose
label is right-aligned in two characters (``000005  1``). Each writer returns what it wrote.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from pcl_bench.data.voc import VOC_CLASSES


class VocObject(NamedTuple):
    name: str
    box: tuple[str, str, str, str]  # xmin, ymin, xmax, ymax as written in the file (1-based, inclusive)
    difficult: int | None = 0  # None: no <difficult> element (as in some VOC2012 objects)
    parts: bool = False  # add person-layout <part> children with their own <bndbox>


# VOC2007-like sample: multi-label images, a difficult-only class, a person with parts, float coordinates.
VOC2007_OBJECTS: dict[str, list[VocObject]] = {
    "000005": [
        VocObject("chair", ("263", "211", "324", "339")),
        VocObject("chair", ("5.5", "244", "67", "374.0"), difficult=1),
        VocObject("person", ("48", "240", "195", "371"), parts=True),
    ],
    "000007": [VocObject("car", ("141", "50", "500", "330"))],
    "000009": [
        VocObject("horse", ("69", "172", "270", "330")),
        VocObject("person", ("150", "141", "229", "284"), difficult=None),
    ],
    "000012": [VocObject("car", ("156", "97", "351", "270"), difficult=1)],
    "000016": [VocObject("bicycle", ("92", "72", "305", "473"))],
    "000017": [
        VocObject("person", ("185", "62", "279", "199")),
        VocObject("horse", ("90", "78", "403", "336")),
    ],
}
VOC2007_SPLITS = {
    "train": ["000012", "000017"],
    "val": ["000005", "000009"],
    "trainval": ["000005", "000009", "000012", "000017"],
    "test": ["000007", "000016"],
}
VOC2012_OBJECTS: dict[str, list[VocObject]] = {
    "2008_000002": [VocObject("tvmonitor", ("34", "11", "448", "293"))],
    "2008_000003": [
        VocObject("train", ("46", "11", "500", "333")),
        VocObject("person", ("62", "190", "83", "243"), difficult=None),
    ],
    "2008_000007": [VocObject("bus", ("1", "1", "500", "375"), difficult=1)],
}
VOC2012_SPLITS = {
    "train": ["2008_000002", "2008_000007"],
    "val": ["2008_000003"],
    "trainval": ["2008_000002", "2008_000003", "2008_000007"],
}


def image_size(image_id: str) -> tuple[int, int]:
    """(width, height) of a fixture image: small, and different per image."""
    k = int(image_id[-2:])
    return 20 + k, 12 + k % 5


def class_labels(objects: list[VocObject], classes: list[str]) -> list[int]:
    """VOC image labels: 1 if a non-difficult object of the class, 0 if only difficult ones, else -1."""
    labels = []
    for cls in classes:
        flags = [bool(o.difficult) for o in objects if o.name == cls]
        labels.append(-1 if not flags else 0 if all(flags) else 1)
    return labels


def _object_xml(obj: VocObject) -> str:
    difficult = "" if obj.difficult is None else f"\t\t<difficult>{obj.difficult}</difficult>\n"
    parts = (
        "\t\t<part>\n\t\t\t<name>head</name>\n\t\t\t<bndbox>\n"
        "\t\t\t\t<xmin>1</xmin>\n\t\t\t\t<ymin>2</ymin>\n"
        "\t\t\t\t<xmax>3</xmax>\n\t\t\t\t<ymax>4</ymax>\n\t\t\t</bndbox>\n\t\t</part>\n"
        if obj.parts
        else ""
    )
    xmin, ymin, xmax, ymax = obj.box
    return (
        f"\t<object>\n\t\t<name>{obj.name}</name>\n\t\t<pose>Left</pose>\n\t\t<truncated>1</truncated>\n"
        f"\t\t<occluded>0</occluded>\n{difficult}\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n"
        f"\t\t\t<ymin>{ymin}</ymin>\n\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>\n"
        f"{parts}\t</object>\n"
    )


def annotation_xml(image_id: str, year: str, objects: list[VocObject]) -> str:
    width, height = image_size(image_id)
    return (
        f"<annotation>\n\t<folder>VOC{year}</folder>\n\t<filename>{image_id}.jpg</filename>\n"
        f"\t<source>\n\t\t<database>The VOC{year} Database</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n"
        "\t\t<depth>3</depth>\n\t</size>\n"
        f"\t<segmented>0</segmented>\n" + "".join(_object_xml(o) for o in objects) + "</annotation>\n"
    )


def write_voc(
    devkit: str | os.PathLike,
    year: str = "2007",
    objects: dict[str, list[VocObject]] | None = None,
    splits: dict[str, list[str]] | None = None,
    classes: list[str] = VOC_CLASSES,
) -> dict[str, np.ndarray]:
    """``devkit/VOC<year>`` with images, annotations and lists; returns ``{split: targets int8 (N, C)}``.

    Defaults: the VOC2007 or VOC2012 sample above. Each image is a flat colour keyed by its id.
    """
    default = (VOC2007_OBJECTS, VOC2007_SPLITS) if year == "2007" else (VOC2012_OBJECTS, VOC2012_SPLITS)
    objects = default[0] if objects is None else objects
    splits = default[1] if splits is None else splits
    base = Path(devkit) / f"VOC{year}"
    main = base / "ImageSets" / "Main"
    for folder in (base / "JPEGImages", base / "Annotations", main):
        folder.mkdir(parents=True, exist_ok=True)
    for image_id, objs in objects.items():
        Image.new("RGB", image_size(image_id), colour(image_id)).save(base / "JPEGImages" / f"{image_id}.jpg")
        (base / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, year, objs))
    targets = {}
    for split, ids in splits.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        labels = np.array([class_labels(objects[i], classes) for i in ids], dtype=np.int8).reshape(
            len(ids), -1
        )
        for c, cls in enumerate(classes):
            (main / f"{cls}_{split}.txt").write_text(
                "".join(f"{i} {y:2d}\n" for i, y in zip(ids, labels[:, c]))
            )
        targets[split] = labels
    return targets


def colour(key: str) -> tuple[int, int, int]:
    """A flat colour keyed by a string (survives JPEG compression up to a few levels)."""
    rng = np.random.default_rng(list(key.encode()))
    return tuple(int(v) for v in rng.integers(30, 226, 3))


PLACES_ENTRIES = {
    "train": [("a/abbey/00000000.jpg", 0), ("b/bakery/shop/00000000.jpg", 1), ("a/abbey/00000001.jpg", 0),
              ("c/canyon/00000000.jpg", 2), ("b/bakery/shop/00000001.jpg", 1)],
    "val": [("a/abbey/00000002.jpg", 0), ("b/bakery/shop/00000002.jpg", 1), ("c/canyon/00000001.jpg", 2)],
}  # fmt: skip


def write_places205(
    root: str | os.PathLike, entries: dict[str, list[tuple[str, int]]] = PLACES_ENTRIES
) -> dict[str, list[tuple[str, int]]]:
    """``root/trainvalsplit_places205/<split>_places205.csv`` and its 16x16 images; returns ``entries``."""
    root = Path(root)
    lists = root / "trainvalsplit_places205"
    images = root / "data" / "vision" / "torralba" / "deeplearning" / "images256"
    lists.mkdir(parents=True, exist_ok=True)
    for split, rows in entries.items():
        (lists / f"{split}_places205.csv").write_text("".join(f"{p} {y}\n" for p, y in rows))
        for path, _ in rows:
            (images / path).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), colour(path)).save(images / path)
    return entries
