"""``shapes``: the embedded default dataset, synthetic 64x64 RGB images of shapes on cluttered scenes.

Classes. Ten fine classes (the shape category) grouped into three coarse classes (the shape family),
so cluster quality (AMI) can be measured at two granularities:

* ``curved``:          circle, ellipse, crescent, heart
* ``convex polygon``:  triangle, square
* ``concave polygon``: l-shape, star, cross, arrow

Every pair of classes differs at the 32 px the ``shapes`` preset trains at, where a shape spans 14-26 px. Up to v3
the convex polygons also had a pentagon and a hexagon, and diameters went down to 35 % of the side: at 11 px those
two are circles, and kNN on trained features confused circle, pentagon and hexagon with each other more often
than it got them right.

Nuisances. Everything except the outline of the shape is drawn independently of the class, so colour,
position, size or background carry no label information and a randomly initialised encoder (whose
features mostly reflect colour and texture statistics) classifies the images poorly, while the shape
stays recognisable, also after random crops of 20-100% of the area:

* shape: rotation (uniform), diameter 45-80% of the image side, position (shape fully inside),
  mild vertex jitter for polygons, filled with a flat colour or a two-colour gradient, or drawn as a
  thick outline only;
* background: a weak linear gradient between two random colours, or (30% of images) one of flat colour,
  gradient, stripes (random angle, frequency, soft or hard), rotated checkerboard or smooth noise.
  Textures are kept rare and weak on purpose: a background pattern is a per-image cue that survives
  crops and colour jitter, so frequent strong textures let instance discrimination ignore the shape;
* clutter: 0-3 small dots, short line segments and arcs in random colours, behind or in front of the shape;
* colours are random HSV with muted saturation (<= 0.5); the background mixes a colour with a weaker
  second one, and the shape colour is resampled until its luminance differs from both (so it survives
  grayscale);
* rendering: drawn at 3x resolution and box-downsampled (antialiasing), then a mild Gaussian blur and
  Gaussian pixel noise.

Sizes. ``per_class`` images per class (default 500 train, 100 test: 5000 / 1000 images), balanced,
in a random class order.

Determinism. Each split is generated from a ``numpy.random.Generator`` seeded with ``(seed, split)``,
so a given (split, seed, per_class, size) always gives byte-identical arrays, and train and test
never share a random stream.

Cache. Generating the default splits takes several seconds, so ``ShapesDataset`` saves each split as
a compressed ``.npz`` in a cache directory (``cache_dir("shapes")``: ``$PCL_BENCH_CACHE/shapes`` or
``~/.cache/pcl-bench/shapes``) and loads it on later use. The file name contains ``GENERATOR_VERSION``
and the parameters; bump the version whenever the generator's output changes.
"""

import functools
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image, ImageDraw, ImageFilter

from ..runtime.errors import UsageError
from ..runtime.paths import cache_dir

GENERATOR_VERSION = 4  # v1: vivid colours, full-contrast textures; v3: pentagon and hexagon, 35-75 % diameters

FINE_CLASSES: list[str] = [
    "circle", "ellipse", "crescent", "heart",
    "triangle", "square",
    "l-shape", "star", "cross", "arrow",
]  # fmt: skip
COARSE_CLASSES: list[str] = ["curved", "convex polygon", "concave polygon"]
FINE_TO_COARSE: list[int] = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]

SPLITS = ("train", "test")
DEFAULT_PER_CLASS = {"train": 500, "test": 100}
SUPERSAMPLE = 3  # draw at 3x resolution, then box-downsample: antialiased edges
# Luminance gap between the shape and every background colour: the shape stays visible in grayscale
# (a standard augmentation), whatever the hues.
MIN_LUMA_GAP = 0.25
TEXTURED = 0.3  # share of images with a textured background; the rest get a weak gradient
DIAMETER = (0.45, 0.8)  # shape diameter range, as a fraction of the image side
OUTLINE_ONLY = 0.25  # share of shapes drawn as a thick outline instead of filled
MAX_CLUTTER = 3  # distractors per image: 0..MAX_CLUTTER
MAX_SATURATION = 0.5  # colours are muted: see _random_colour
LUMA = np.array([0.299, 0.587, 0.114])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"shapes: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


# ---------------------------------------------------------------------------------------------------
# Shape outlines: (K, 2) vertex arrays centred at the origin, farthest vertex at distance 1.


def _regular_polygon(n: int, rng: np.random.Generator) -> np.ndarray:
    """Regular n-gon with slightly jittered vertices, so polygons of one class are not all identical."""
    angles = np.arange(n) * 2 * np.pi / n + rng.uniform(-0.08, 0.08, n)
    radii = rng.uniform(0.9, 1.0, n)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _ellipse(aspect: float, k: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return np.stack([np.cos(t), aspect * np.sin(t)], axis=1)


def _crescent(rng: np.random.Generator, k: int = 24) -> np.ndarray:
    """Unit disc minus a disc of radius r centred at (d, 0): outer arc, then inner arc back."""
    d, r = rng.uniform(0.35, 0.5), rng.uniform(0.75, 0.88)
    x = (1 - r**2 + d**2) / (2 * d)  # abscissa of the two circle intersections
    y = np.sqrt(1 - x**2)
    outer = np.linspace(np.arctan2(y, x), 2 * np.pi - np.arctan2(y, x), k)
    inner = np.linspace(2 * np.pi - np.arctan2(y, x - d), np.arctan2(y, x - d), k)
    return np.concatenate(
        [np.stack([np.cos(outer), np.sin(outer)], 1), np.stack([d + r * np.cos(inner), r * np.sin(inner)], 1)]
    )


def _heart(k: int = 48) -> np.ndarray:
    """The classic heart curve x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t."""
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([16 * np.sin(t) ** 3, y], axis=1)


def _l_shape(rng: np.random.Generator) -> np.ndarray:
    """Two arms of width w meeting at a right angle in the unit square."""
    w = rng.uniform(0.35, 0.45)
    return np.array([[0, 0], [1, 0], [1, w], [w, w], [w, 1], [0, 1]])


def _star(rng: np.random.Generator) -> np.ndarray:
    angles = np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(rng: np.random.Generator) -> np.ndarray:
    """Plus sign with arms of half-width w and length 1."""
    w = rng.uniform(0.28, 0.4)
    quarter = np.array([[1, -w], [1, w], [w, w]])
    rot = np.array([[0, -1], [1, 0]])  # 90 degrees
    return np.concatenate([quarter @ np.linalg.matrix_power(rot, q).T for q in range(4)])


def _arrow(rng: np.random.Generator) -> np.ndarray:
    shaft, head, neck = rng.uniform(0.18, 0.26), rng.uniform(0.55, 0.7), rng.uniform(0.0, 0.2)
    return np.array(
        [[-1, -shaft], [neck, -shaft], [neck, -head], [1, 0], [neck, head], [neck, shaft], [-1, shaft]]
    )


_SIDES = {"triangle": 3, "square": 4}


def _outline(label: int, rng: np.random.Generator) -> np.ndarray:
    """Vertices (K, 2) of class ``label``, centred on its bounding box, max radius 1."""
    name = FINE_CLASSES[label]
    if name == "circle":
        pts = _ellipse(1.0)
    elif name == "ellipse":
        pts = _ellipse(rng.uniform(0.42, 0.6))  # stays clearly elongated under aspect-changing crops
    elif name == "crescent":
        pts = _crescent(rng)
    elif name == "heart":
        pts = _heart()
    elif name in _SIDES:
        pts = _regular_polygon(_SIDES[name], rng)
    elif name == "l-shape":
        pts = _l_shape(rng)
    elif name == "star":
        pts = _star(rng)
    elif name == "cross":
        pts = _cross(rng)
    else:
        pts = _arrow(rng)
    pts = pts - (pts.min(0) + pts.max(0)) / 2
    return pts / np.linalg.norm(pts, axis=1).max()


# ---------------------------------------------------------------------------------------------------
# Colours and textures. Fields are float arrays (H, W) in [0, 1]; colours are float RGB in [0, 1].


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """Random RGB (3,) from HSV: any hue, muted saturation, wide value range (greys included).

    Saturation stays <= MAX_SATURATION (0.5) so that the colour jitter of contrastive augmentations can blur colour
    identity: with vivid random hues, colour alone would tell instances apart and be learnt instead
    of shape.
    """
    h, s, v = rng.uniform(), rng.uniform(0, MAX_SATURATION), rng.uniform(0.12, 1.0)
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _rgb8(colour: np.ndarray) -> tuple[int, int, int]:
    """Float RGB (3,) in [0, 1] -> PIL colour tuple."""
    return tuple(int(c * 255 + 0.5) for c in colour)


@functools.lru_cache(maxsize=4)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (n, n) in [0, 1)."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    return np.meshgrid(c, c)


def _rotated(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (n, n) along and across a random direction."""
    x, y = _grid(n)
    a = rng.uniform(0, np.pi)
    return x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)


def _texture_field(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Mixing weights (n, n) in [0, 1] between the two background colours."""
    if kind == "flat":
        return np.zeros((n, n), np.float32)
    if kind == "gradient":
        u, _ = _rotated(n, rng)
        return (u - u.min()) / (u.max() - u.min())
    if kind == "stripes":
        u, _ = _rotated(n, rng)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 9) * u + rng.uniform(0, 2 * np.pi))
        return (wave > 0.5).astype(np.float32) if rng.uniform() < 0.5 else wave
    if kind == "checker":
        u, v = _rotated(n, rng)
        f = rng.uniform(2, 7)
        return ((np.floor(f * u) + np.floor(f * v)) % 2).astype(np.float32)
    # Smooth noise: a coarse random grid upsampled bicubically.
    k = int(rng.integers(2, 8))
    coarse = Image.fromarray((rng.uniform(0, 255, (k, k))).astype(np.uint8))
    return np.asarray(coarse.resize((n, n), Image.BICUBIC), np.float32) / 255


def _mix(c1: np.ndarray, c2: np.ndarray, t: np.ndarray) -> Image.Image:
    """RGB image (n, n) blending colour c1 (t=0) into c2 (t=1); blended by PIL in uint8 for speed."""
    n = t.shape[0]
    weights = Image.fromarray((t * 255 + 0.5).astype(np.uint8))
    return Image.composite(Image.new("RGB", (n, n), _rgb8(c2)), Image.new("RGB", (n, n), _rgb8(c1)), weights)


# ---------------------------------------------------------------------------------------------------
# Rendering.


def _draw_clutter(draw: ImageDraw.ImageDraw, n: int, rng: np.random.Generator) -> None:
    """One small distractor (dot, short line or arc) on a canvas of side n, at a random place."""
    colour = _rgb8(_random_colour(rng))
    cx, cy = rng.uniform(0, n, 2)
    kind = rng.integers(3)
    if kind == 0:
        r = rng.uniform(0.015, 0.045) * n
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        return
    width = max(1, int(rng.uniform(0.015, 0.035) * n))
    if kind == 1:
        half, a = rng.uniform(0.05, 0.13) * n, rng.uniform(0, np.pi)
        dx, dy = half * np.cos(a), half * np.sin(a)
        draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=colour, width=width)
    else:
        r, start = rng.uniform(0.04, 0.09) * n, rng.uniform(0, 360)
        draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(60, 200), colour, width)


def _shape_colour(palette: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A random colour whose luminance differs from both background colours by >= MIN_LUMA_GAP."""
    bg_luma = [LUMA @ p for p in palette]
    for _ in range(50):
        c = _random_colour(rng)
        if min(abs(LUMA @ c - b) for b in bg_luma) >= MIN_LUMA_GAP:
            return c
    return np.zeros(3) if min(bg_luma) > 0.5 else np.ones(3)  # rare fallback: black or white


def _render(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of class ``label``: uint8 array (size, size, 3)."""
    n = size * SUPERSAMPLE
    # The second background colour is pulled towards the first: textures stay visible but weaker than
    # the shape's edges, so the shape is the most salient structure in the image.
    base = _random_colour(rng)
    palette = (base, base + rng.uniform(0.15, 0.4) * (_random_colour(rng) - base))
    kind = ("flat", "gradient", "stripes", "checker", "noise")[rng.integers(5)] if rng.uniform() < TEXTURED else "gradient"
    canvas = _mix(*palette, _texture_field(kind, n, rng))
    draw = ImageDraw.Draw(canvas)
    n_clutter = int(rng.integers(0, MAX_CLUTTER + 1))
    in_front = rng.uniform(size=n_clutter) < 0.5
    for _ in range(int((~in_front).sum())):
        _draw_clutter(draw, n, rng)

    # Shape: rotate, scale (diameter 45-80% of the side) and place it fully inside the image.
    radius = rng.uniform(*DIAMETER) / 2 * n
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = rng.uniform(radius, n - radius, 2)
    pts = [tuple(p) for p in _outline(label, rng) @ rot.T * radius + centre]
    mask = Image.new("L", (n, n), 0)
    mask_draw = ImageDraw.Draw(mask)
    style = rng.uniform()
    if style < OUTLINE_ONLY:  # outline only, thick enough to survive downsampling and blur
        mask_draw.line(pts + pts[:1], fill=255, width=int(rng.uniform(0.12, 0.22) * radius), joint="curve")
    else:
        mask_draw.polygon(pts, fill=255)
    colour = _shape_colour(palette, rng)
    if style < 0.6:
        canvas.paste(_rgb8(colour), mask=mask)
    else:  # two-colour gradient fill, shaded like a lit object
        second = np.clip(colour * rng.uniform(0.3, 0.8) + rng.uniform(0, 0.15), 0, 1)
        canvas.paste(_mix(colour, second, _texture_field("gradient", n, rng)), mask=mask)

    for _ in range(int(in_front.sum())):
        _draw_clutter(draw, n, rng)

    # Box downsampling antialiases; blur and sensor-like noise make the images less synthetic.
    img = canvas.reduce(SUPERSAMPLE).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    noisy = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 8), (size, size, 3))
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


def generate_shapes(
    split: str, seed: int = 0, per_class: int | None = None, size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one split: images uint8 (N, size, size, 3) and fine labels int64 (N,), N = 10 * per_class.

    ``per_class`` None means 500 for train and 100 for test. The class order is shuffled.
    """
    _check_split(split)
    per_class = DEFAULT_PER_CLASS[split] if per_class is None else per_class
    if per_class < 1:
        raise UsageError(f"shapes: per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    labels = rng.permutation(np.repeat(np.arange(len(FINE_CLASSES), dtype=np.int64), per_class))
    images = np.stack([_render(int(y), size, rng) for y in labels])
    return images, labels


def _load_or_generate(
    root: pathlib.Path, split: str, seed: int, per_class: int | None, size: int
) -> tuple[np.ndarray, np.ndarray, pathlib.Path]:
    """Load a split from the cache in ``root``, generating and saving it (atomically) on a miss; returns the
    images, the labels and the cache file."""
    per_class = DEFAULT_PER_CLASS[split] if per_class is None else per_class
    path = root / f"shapes-v{GENERATOR_VERSION}-{split}-seed{seed}-n{per_class}-s{size}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["images"], f["labels"], path
    images, labels = generate_shapes(split, seed, per_class, size)
    root.mkdir(parents=True, exist_ok=True)
    # Temp file + os.replace: concurrent runs or an interrupted write never leave a truncated cache file.
    fd, tmp = tempfile.mkstemp(dir=root, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, images=images, labels=labels)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a shared $PCL_BENCH_CACHE must stay readable
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return images, labels, path


class ShapesDataset(torch.utils.data.Dataset):
    """The ``shapes`` split as a dataset of ``(transform(PIL image), fine label, index)``.

    ``root`` is the cache directory (None: ``cache_dir("shapes")``). Attributes: ``images`` uint8
    (N, 64, 64, 3), ``targets`` int64 (N,), ``classes``, ``coarse_targets`` int64 (N,), ``coarse_classes``.
    """

    image_size = 64

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str,
        transform: Callable | None = None,
        seed: int = 0,
        per_class: int | None = None,
    ):
        _check_split(split)
        root = cache_dir("shapes") if root is None else pathlib.Path(root)
        self.images, self.targets, self._file = _load_or_generate(root, split, seed, per_class, self.image_size)
        self.classes = FINE_CLASSES
        self.coarse_classes = COARSE_CLASSES
        self.coarse_targets = np.asarray(FINE_TO_COARSE, dtype=np.int64)[self.targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def files(self) -> list[pathlib.Path]:
        """The generated cache file (its name holds the generator version, seed and sizes)."""
        return [self._file]

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        img = Image.fromarray(self.images[i])
        return (img if self.transform is None else self.transform(img)), int(self.targets[i]), i
