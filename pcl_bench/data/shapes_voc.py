"""``shapes-voc``: a generated multi-object dataset written in the exact PASCAL VOC2007 layout.

It exercises the VOC protocols (multi-label SVM, detection) end to end on a laptop, through the same
loaders (``pcl_bench.data.voc``) that read the real VOC:

* images: 128x128 JPEGs with 1-4 objects of the ten ``shapes`` classes (``shapes.FINE_CLASSES``) on the
  scenes of ``shapes`` (same backgrounds, clutter, colours, rendering, drawn by its helpers); objects may
  be truncated at the border and overlap little (at most 30% of the smaller box);
* annotations: VOC XML (filename, size, segmented, object/name/pose/truncated/difficult/bndbox, boxes
  1-based inclusive, clipped to the image); an object is difficult if its diameter is under 14 px or less
  than half of its box lies inside the image;
* lists: ``ImageSets/Main/{trainval,test,train,val}.txt`` and ``<class>_<split>.txt`` with labels 1
  (a non-difficult object of the class), 0 (only difficult ones) or -1, right-aligned in two characters.

Ids are six digits, 000001..N, shuffled into trainval / test (and trainval into train / val halves) as in
VOC2007. Image ``i`` is drawn from a generator seeded with ``(seed, i)`` and the split assignment from
``(seed,)``, so a given (seed, sizes) gives identical files.

Cache: ``shapes_voc_root()`` generates the tree once (about 15 ms of CPU per image, on up to 8 threads;
15 MB for the default 1500 images) under ``$PCL_BENCH_CACHE/shapes-voc`` or ``~/.cache/pcl-bench/shapes-voc``,
in a temporary folder renamed into place when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..runtime.errors import UsageError
from ..runtime.paths import cache_dir
from . import shapes
from .voc import VOCClassification, VOCDetection

GENERATOR_VERSION = 1  # bump whenever the output changes; shapes.GENERATOR_VERSION is part of the cache key
CLASSES = shapes.FINE_CLASSES
IMAGE_SIZE = 128
DEFAULT_SIZES = {"trainval": 1000, "test": 500}
MAX_OBJECTS = 4
DIAMETER = (0.07, 0.5)  # object diameter, as a fraction of the image side
MIN_DIAMETER = 14  # px; smaller objects are difficult
MIN_VISIBLE = 0.5  # share of an object's box inside the image; less is heavily truncated, so difficult
MAX_OVERLAP = 0.3  # intersection / smaller box area allowed between two objects
PLACEMENT_TRIES = 20
JPEG_QUALITY = 90


class _Object(NamedTuple):
    label: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, 0-based, unclipped
    diameter: float  # px


# ---------------------------------------------------------------------------------------------------
# Rendering (helpers of ``shapes``, called through the module so that its changes apply here too).


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection area of boxes a, b (x0, y0, x1, y1) over the smaller one's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return max(w, 0) * max(h, 0) / smaller


def _draw_object(
    canvas: Image.Image, label: int, palette: tuple, placed: list[_Object], rng: np.random.Generator
) -> _Object | None:
    """Draw one shape of class ``label`` where it overlaps the ``placed`` ones little; None if no room."""
    n = canvas.size[0]
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    unit = shapes._outline(label, rng) @ rot.T
    outline_only = rng.uniform() < 0.25
    for _ in range(PLACEMENT_TRIES):
        radius = rng.uniform(*DIAMETER) / 2 * n
        centre = rng.uniform(0, n, 2)  # centre inside the image, shape possibly truncated
        width = int(rng.uniform(0.12, 0.22) * radius) if outline_only else 0
        pts = unit * radius + centre
        box = np.concatenate([pts.min(0) - width / 2, pts.max(0) + width / 2]) / shapes.SUPERSAMPLE
        if all(_overlap(box, np.asarray(o.box)) <= MAX_OVERLAP for o in placed):
            break
    else:
        return None
    # Drawn in a square patch around the shape rather than on a full-canvas mask (several times faster);
    # PIL clips the part of the patch that falls outside the canvas.
    corner = np.floor(pts.min(0) - width).astype(int)
    side = int(np.ceil((pts.max(0) - corner).max() + width)) + 1
    poly = [tuple(p) for p in pts - corner]
    mask = Image.new("L", (side, side), 0)
    if outline_only:  # thick enough to survive downsampling and blur
        ImageDraw.Draw(mask).line(poly + poly[:1], fill=255, width=width, joint="curve")
    else:
        ImageDraw.Draw(mask).polygon(poly, fill=255)
    colour = shapes._shape_colour(palette, rng)
    if outline_only or rng.uniform() < 0.45:
        fill = Image.new("RGB", (side, side), shapes._rgb8(colour))
    else:  # two-colour gradient fill
        second = np.clip(colour * rng.uniform(0.3, 0.8) + rng.uniform(0, 0.15), 0, 1)
        fill = shapes._mix(colour, second, shapes._texture_field("gradient", side, rng))
    canvas.paste(fill, tuple(int(c) for c in corner), mask=mask)
    return _Object(label, tuple(float(v) for v in box), 2 * radius / shapes.SUPERSAMPLE)


def render_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[_Object]]:
    """One scene: uint8 image (size, size, 3) and its 1..MAX_OBJECTS objects, in drawing order."""
    n = size * shapes.SUPERSAMPLE
    base = shapes._random_colour(rng)
    palette = (base, base + rng.uniform(0.15, 0.4) * (shapes._random_colour(rng) - base))
    textured = rng.uniform() < shapes.TEXTURED
    kind = ("flat", "gradient", "stripes", "checker", "noise")[rng.integers(5)] if textured else "gradient"
    canvas = shapes._mix(*palette, shapes._texture_field(kind, n, rng))
    draw = ImageDraw.Draw(canvas)
    in_front = rng.uniform(size=int(rng.integers(0, 4))) < 0.5
    for _ in range(int((~in_front).sum())):
        shapes._draw_clutter(draw, n, rng)
    objects: list[_Object] = []
    for label in rng.integers(len(CLASSES), size=int(rng.integers(1, MAX_OBJECTS + 1))):
        obj = _draw_object(canvas, int(label), palette, objects, rng)
        if obj is not None:
            objects.append(obj)
    for _ in range(int(in_front.sum())):
        shapes._draw_clutter(draw, n, rng)
    img = canvas.reduce(shapes.SUPERSAMPLE).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    noisy = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 8), (size, size, 3))
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8), objects


# ---------------------------------------------------------------------------------------------------
# VOC files.


def _voc_box(box: tuple[float, ...], size: int) -> tuple[list[int], bool, float]:
    """A float box -> (1-based inclusive pixel box clipped to the image, truncated, visible share)."""
    x0, y0, x1, y1 = box
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    visible = (cx1 - cx0) * (cy1 - cy0) / ((x1 - x0) * (y1 - y0))
    pixels = [int(np.floor(cx0)) + 1, int(np.floor(cy0)) + 1, int(np.ceil(cx1)), int(np.ceil(cy1))]
    return pixels, visible < 1, visible


def _annotation_xml(image_id: str, objects: list[_Object], size: int) -> tuple[bytes, list[tuple[int, bool]]]:
    """The VOC XML of one image, and (label, difficult) of each object."""
    root = ET.Element("annotation")
    for tag, text in (("folder", "VOC2007"), ("filename", f"{image_id}.jpg")):
        ET.SubElement(root, tag).text = text
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "shapes-voc"
    size_el = ET.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(size_el, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    flags = []
    for obj in objects:
        pixels, truncated, visible = _voc_box(obj.box, size)
        difficult = obj.diameter < MIN_DIAMETER or visible < MIN_VISIBLE
        el = ET.SubElement(root, "object")
        fields = (("name", CLASSES[obj.label]), ("pose", "Unspecified"),
                  ("truncated", str(int(truncated))), ("difficult", str(int(difficult))))  # fmt: skip
        for tag, text in fields:
            ET.SubElement(el, tag).text = text
        bndbox = ET.SubElement(el, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), pixels):
            ET.SubElement(bndbox, tag).text = str(value)
        flags.append((obj.label, difficult))
    ET.indent(root, space="\t")
    return ET.tostring(root) + b"\n", flags


def _class_labels(flags: list[tuple[int, bool]]) -> np.ndarray:
    """VOC labels int8 (C,): 1 if a non-difficult object of the class, 0 if only difficult ones, else -1."""
    labels = np.full(len(CLASSES), -1, dtype=np.int8)
    for label, difficult in flags:
        labels[label] = max(labels[label], 0 if difficult else 1)
    return labels


def _split_ids(seed: int, n_trainval: int, n_test: int) -> dict[str, list[int]]:
    """Image numbers 1..N shuffled into test / trainval, trainval into train / val halves; each sorted."""
    rng = np.random.default_rng([seed])
    perm = rng.permutation(np.arange(1, n_trainval + n_test + 1))
    trainval = perm[n_test:]
    half = rng.permutation(trainval)
    splits = {"trainval": trainval, "test": perm[:n_test], "train": half[: len(half) // 2],
              "val": half[len(half) // 2 :]}  # fmt: skip
    return {name: sorted(int(i) for i in ids) for name, ids in splits.items()}


def _write_image(base: Path, seed: int, i: int, size: int) -> np.ndarray:
    """Render image number ``i``, write its JPEG and XML; return its class labels (C,)."""
    image, objects = render_scene(np.random.default_rng([seed, i]), size)
    image_id = f"{i:06d}"
    Image.fromarray(image).save(base / "JPEGImages" / f"{image_id}.jpg", quality=JPEG_QUALITY)
    xml, flags = _annotation_xml(image_id, objects, size)
    (base / "Annotations" / f"{image_id}.xml").write_bytes(xml)
    return _class_labels(flags)


def write_shapes_voc(base: Path, seed: int, n_trainval: int, n_test: int, size: int = IMAGE_SIZE) -> None:
    """Write the ``VOC2007`` folder ``base``: JPEGImages, Annotations and ImageSets/Main."""
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / folder).mkdir(parents=True)
    # Threads: PIL and numpy release the GIL in the heavy calls, and every image has its own generator,
    # so the output does not depend on the number of threads.
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        rows = pool.map(lambda i: _write_image(base, seed, i, size), range(1, n_trainval + n_test + 1))
        labels = np.stack([np.full(len(CLASSES), -1, np.int8), *rows])  # row = image number (row 0 unused)
    main = base / "ImageSets" / "Main"
    for split, ids in _split_ids(seed, n_trainval, n_test).items():
        (main / f"{split}.txt").write_text("".join(f"{i:06d}\n" for i in ids))
        for c, cls in enumerate(CLASSES):
            (main / f"{cls}_{split}.txt").write_text("".join(f"{i:06d} {labels[i, c]:2d}\n" for i in ids))


def shapes_voc_root(
    cache: str | os.PathLike | None = None,
    seed: int = 0,
    n_trainval: int | None = None,
    n_test: int | None = None,
) -> Path:
    """The shapes-voc ``VOCdevkit`` folder in ``cache`` (None: ``cache_dir("shapes-voc")``), made on first use.

    ``n_trainval`` / ``n_test`` None: ``DEFAULT_SIZES`` (1000 / 500 images). The tree is built in a
    temporary folder next to its final place and renamed when complete, so an interrupted or concurrent
    generation never leaves a partial tree (a concurrent one's result is kept).
    """
    n_trainval = DEFAULT_SIZES["trainval"] if n_trainval is None else n_trainval
    n_test = DEFAULT_SIZES["test"] if n_test is None else n_test
    if n_trainval < 2 or n_test < 1:
        raise UsageError(f"shapes-voc: need n_trainval >= 2 and n_test >= 1, got {n_trainval} and {n_test}")
    cache = cache_dir("shapes-voc") if cache is None else Path(cache).expanduser()
    version = f"v{GENERATOR_VERSION}.{shapes.GENERATOR_VERSION}"
    target = cache / f"shapes-voc-{version}-seed{seed}-{n_trainval}-{n_test}"
    devkit = target / "VOCdevkit"
    if devkit.is_dir():
        return devkit
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write_shapes_voc(tmp / "VOCdevkit" / "VOC2007", seed, n_trainval, n_test)
        tmp.chmod(0o755)  # mkdtemp creates 0700; a shared $PCL_BENCH_CACHE must stay readable
        try:
            os.rename(tmp, target)
        except OSError:
            if not devkit.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return devkit


def shapes_voc_classification(
    cache: str | os.PathLike | None,
    split: str,
    transform: Callable[[Image.Image], Any] | None = None,
    seed: int = 0,
) -> VOCClassification:
    """Split ``trainval``, ``test``, ``train`` or ``val`` of shapes-voc (default sizes), multi-label."""
    return VOCClassification(
        shapes_voc_root(cache, seed), split, transform, classes=CLASSES, image_size=IMAGE_SIZE
    )


def shapes_voc_detection(
    cache: str | os.PathLike | None,
    split: str,
    transforms: Callable[[Image.Image, dict], tuple[Any, dict]] | None = None,
    seed: int = 0,
) -> VOCDetection:
    """Split ``trainval``, ``test``, ``train`` or ``val`` of shapes-voc (default sizes) for detection."""
    return VOCDetection(shapes_voc_root(cache, seed), split, transforms, classes=CLASSES)
