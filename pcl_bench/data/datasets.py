"""Loaders for image datasets in their official on-disk layouts (docs/datasets.md).

Every dataset here is a ``torch.utils.data.Dataset`` whose ``__getitem__(i)`` returns
``(transform(img), target, i)``: ``img`` a PIL RGB image (returned as is when ``transform`` is None),
``target`` an int (-1 for unlabelled samples) and ``i`` the sample index, which lets PCL match the
features of its clustering pass to the samples of the training pass. Attributes:

* ``targets``: int64 array (N,), -1 for unlabelled samples;
* ``classes``: list of class names, ``classes[t]`` is the name of target ``t``;
* ``image_size``: native resolution, used to scale the augmentations (CIFAR 32, STL-10 96, ImageNet 224);
* CIFAR-100 only: ``coarse_targets`` (N,) and ``coarse_classes`` (the 20 superclasses).

A missing or malformed root raises ``UsageError`` with one line naming the path, the problem and the
expected layout.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..runtime.errors import CorruptImage, UsageError
from .corrupt import DECODE_ERRORS, open_rgb

Transform = Callable[[Image.Image], Any] | None
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")
DOWNLOAD_TIMEOUT_S = 20


def _apply(transform: Transform, img: Image.Image) -> Any:
    return img if transform is None else transform(img)


def _check_split(name: str, split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise UsageError(f"{name}: unknown split {split!r}; valid splits: {', '.join(valid)}")


def _layout_error(name: str, problem: str, layout: str) -> UsageError:
    return UsageError(f"{name}: {problem}; expected {layout}")


def _locate(name: str, root: str, folder: str, probe: str, layout: str) -> str:
    """The directory holding the dataset's files: ``root/folder``, or ``root`` itself if it is that folder."""
    if not os.path.isdir(root):
        raise _layout_error(name, f"{root} does not exist", layout)
    for base in (os.path.join(root, folder), root):
        if os.path.isfile(os.path.join(base, probe)):
            return base
    raise _layout_error(name, f"{root} has no {folder}/{probe}", layout)


# ---------------------------------------------------------------------------------------------------------
# ImageFolder / ImageNet


class ImageFolderInstance(Dataset):
    """Images in ``<root>/<split>/<class>/<image>``; classes and images sorted by name.

    Extensions: jpg, jpeg, png, bmp, webp, ppm (any case); hidden entries are skipped. Files are opened
    with PIL and converted to RGB, since some ImageNet "JPEGs" are CMYK or PNG data.
    ``image_size`` None means the shorter side of the first image, capped at 224: 32 for CIFAR-10 stored
    as JPEGs, 224 for photos.
    """

    name = "imagefolder"
    splits: tuple[str, ...] | None = None  # None: any sub-folder of root is a split
    layout = "<root>/<split>/<class>/<image> (image: .jpg, .jpeg, .png, .bmp, .webp or .ppm)"

    def __init__(self, root: str, split: str, transform: Transform = None, image_size: int | None = None):
        root = os.fspath(root)
        if self.splits is not None:
            _check_split(self.name, split, self.splits)
        self.split_dir = os.path.join(root, split)
        self._check_split_dir(root, split)
        self.classes, files, targets = self._scan(self.split_dir)
        # Relative paths in one bytes array instead of a list of str: DataLoader workers touching
        # millions of Python objects would copy them page by page (copy-on-write of refcounts).
        self._files = np.array([os.fsencode(f) for f in files])
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform
        self.image_size = self._native_size() if image_size is None else image_size

    def _check_split_dir(self, root: str, split: str) -> None:
        if not os.path.isdir(root):
            raise _layout_error(self.name, f"{root} does not exist", self.layout)
        if not os.path.isdir(self.split_dir):
            found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
            raise _layout_error(
                self.name,
                f"{root} has no {split}/ folder (sub-folders: {', '.join(found) or 'none'})",
                self.layout,
            )

    def _scan(self, split_dir: str) -> tuple[list[str], list[str], list[int]]:
        classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise _layout_error(self.name, f"{split_dir} has no class folders", self.layout)
        files, targets = [], []
        for target, cls in enumerate(classes):
            names = sorted(
                e.name
                for e in os.scandir(os.path.join(split_dir, cls))
                if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()
            )
            files += [os.path.join(cls, n) for n in names]
            targets += [target] * len(names)
        if not files:
            raise _layout_error(self.name, f"{split_dir} has no images in its class folders", self.layout)
        return classes, files, targets

    def _native_size(self, tries: int = 16) -> int:
        """The shorter side of the first image whose header reads (capped at 224). Unreadable images before it
        are left to decoding, which names them, or to ``--skip-corrupt``, which leaves them out; only if the
        first ``tries`` all fail is the first one named here."""
        first_error = None
        for i in range(min(tries, len(self))):
            try:
                with Image.open(self.path(i)) as img:  # reads the header only
                    return min(224, *img.size)
            except DECODE_ERRORS as e:
                first_error = first_error or CorruptImage.at(self.path(i), f"{type(e).__name__}: {e}")
        raise first_error

    def path(self, i: int) -> str:
        return os.path.join(self.split_dir, os.fsdecode(self._files[i]))

    def files(self) -> list[str]:
        """Every file the items are read from (for :func:`pcl_bench.data.fingerprint`)."""
        return [self.path(i) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        return _apply(self.transform, open_rgb(self.path(i))), int(self.targets[i]), i


class ImageNet(ImageFolderInstance):
    """ILSVRC-2012: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG`` (val regrouped by class).

    1,281,167 train and 50,000 val images in 1,000 classes; ``classes`` are the wnids.
    """

    name = "imagenet"
    splits = ("train", "val")
    layout = (
        "the ImageNet layout <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG "
        "(val images moved into one folder per class)"
    )

    def __init__(self, root: str, split: str, transform: Transform = None, image_size: int = 224):
        super().__init__(root, split, transform, image_size)


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100


def _unpickle(name: str, path: str, keys: Sequence[str], layout: str) -> dict[str, Any]:
    """A CIFAR pickle (written by Python 2, hence latin1), checked to hold ``keys``."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise _layout_error(name, f"{path} is not a readable CIFAR pickle ({e})", layout) from None
    missing = [k for k in keys if not isinstance(d, dict) or k not in d]
    if missing:
        raise _layout_error(name, f"{path} lacks the field(s) {', '.join(missing)}", layout)
    return d


class CIFAR10(Dataset):
    """CIFAR-10, python version: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``.

    Each batch is a pickled dict with ``data`` uint8 (N, 3072), a row being the R, G and B 32x32 planes in
    row-major order, and ``labels``. Splits: train (50,000) and test (10,000). ``root`` may also be the
    ``cifar-10-batches-py`` folder itself. Images are kept in memory: ``data`` uint8 (N, 32, 32, 3).
    """

    name = "cifar10"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    folder = "cifar-10-batches-py"
    split_files: ClassVar[dict[str, list[str]]] = {
        "train": [f"data_batch_{k}" for k in range(1, 6)],
        "test": ["test_batch"],
    }
    meta_file = "batches.meta"
    meta_keys, batch_keys = ("label_names",), ("data", "labels")
    layout = (
        "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} "
        "(the python version from https://www.cs.toronto.edu/~kriz/cifar.html)"
    )
    image_size = 32

    def __init__(self, root: str, split: str, transform: Transform = None):
        root = os.fspath(root)
        _check_split(self.name, split, list(self.split_files))
        base = _locate(self.name, root, self.folder, self.meta_file, self.layout)
        for f in self.split_files[split]:
            if not os.path.isfile(os.path.join(base, f)):
                raise _layout_error(self.name, f"{base} has no {f}", self.layout)
        meta = _unpickle(self.name, os.path.join(base, self.meta_file), self.meta_keys, self.layout)
        batches = [
            _unpickle(self.name, os.path.join(base, f), self.batch_keys, self.layout)
            for f in self.split_files[split]
        ]
        self.data = np.concatenate([self._images(b["data"]) for b in batches])
        self._sources = [os.path.join(base, f) for f in (self.meta_file, *self.split_files[split])]
        self._set_labels(meta, batches)
        if len(self.targets) != len(self.data):
            raise _layout_error(
                self.name, f"{base}: {split} has more or fewer labels than images", self.layout
            )
        self.transform = transform

    def _images(self, data: Any) -> np.ndarray:
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise _layout_error(self.name, f"batch data has shape {data.shape}, not (N, 3072)", self.layout)
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)

    def _set_labels(self, meta: dict[str, Any], batches: list[dict[str, Any]]) -> None:
        self.classes = list(meta["label_names"])
        self.targets = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])

    def files(self) -> list[str]:
        """The pickles the split was read from."""
        return list(self._sources)

    @classmethod
    def download(cls, root: str) -> None:
        """Fetch and unpack the official archive into ``root`` unless the data is already there."""
        download_and_extract(cls.name, cls.url, os.fspath(root), cls.folder, cls.meta_file)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        return _apply(self.transform, Image.fromarray(self.data[i])), int(self.targets[i]), i


class CIFAR100(CIFAR10):
    """CIFAR-100, python version: ``<root>/cifar-100-python/{train,test,meta}``.

    As CIFAR-10, with ``fine_labels`` (100 classes, the ``targets``) and ``coarse_labels`` (20 superclasses,
    ``coarse_targets`` / ``coarse_classes``). Splits: train (50,000) and test (10,000).
    """

    name = "cifar100"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    folder = "cifar-100-python"
    split_files: ClassVar[dict[str, list[str]]] = {"train": ["train"], "test": ["test"]}
    meta_file = "meta"
    meta_keys = ("fine_label_names", "coarse_label_names")
    batch_keys = ("data", "fine_labels", "coarse_labels")
    layout = (
        "<root>/cifar-100-python/{train,test,meta} "
        "(the python version from https://www.cs.toronto.edu/~kriz/cifar.html)"
    )

    def _set_labels(self, meta: dict[str, Any], batches: list[dict[str, Any]]) -> None:
        self.classes = list(meta["fine_label_names"])
        self.targets = np.concatenate([np.asarray(b["fine_labels"], dtype=np.int64) for b in batches])
        self.coarse_classes = list(meta["coarse_label_names"])
        self.coarse_targets = np.concatenate(
            [np.asarray(b["coarse_labels"], dtype=np.int64) for b in batches]
        )


# ---------------------------------------------------------------------------------------------------------
# STL-10


class STL10(Dataset):
    """STL-10, binary version: ``<root>/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt``.

    X files hold uint8 images of 3x96x96, each channel stored column-major; y files uint8 labels 1..10
    (``targets`` are 0..9). Splits: train (5,000), test (8,000), unlabeled (100,000, targets -1) and
    train+unlabeled (train first). X files are memory-mapped on first access, not loaded: unlabeled_X.bin
    is 2.7 GB. ``root`` may also be the ``stl10_binary`` folder itself.
    """

    name = "stl10"
    url = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
    folder = "stl10_binary"
    meta_file = "class_names.txt"
    split_parts: ClassVar[dict[str, list[str]]] = {
        "train": ["train"],
        "test": ["test"],
        "unlabeled": ["unlabeled"],
        "train+unlabeled": ["train", "unlabeled"],
    }
    layout = (
        "<root>/stl10_binary/{train_X.bin,train_y.bin,test_X.bin,test_y.bin,unlabeled_X.bin,class_names.txt} "
        "(the binary version from https://cs.stanford.edu/~acoates/stl10/)"
    )
    image_size = 96
    _image_bytes = 3 * 96 * 96

    def __init__(self, root: str, split: str, transform: Transform = None):
        root = os.fspath(root)
        _check_split(self.name, split, list(self.split_parts))
        base = _locate(self.name, root, self.folder, self.meta_file, self.layout)
        with open(os.path.join(base, self.meta_file)) as f:
            self.classes = [line.strip() for line in f if line.strip()]
        self._x_paths, targets = [], []
        self._sources = [os.path.join(base, self.meta_file)] + [
            os.path.join(base, f"{part}_{kind}.bin") for part in self.split_parts[split] for kind in "Xy"
            if part != "unlabeled" or kind == "X"]
        for part in self.split_parts[split]:
            x_path = os.path.join(base, f"{part}_X.bin")
            n = self._count_images(x_path)
            targets.append(self._read_targets(base, part, n))
            self._x_paths.append(x_path)
        self.targets = np.concatenate(targets)
        self._offsets = np.cumsum([0] + [len(t) for t in targets])
        self._arrays: list[np.ndarray] | None = None
        self.transform = transform

    def _count_images(self, x_path: str) -> int:
        if not os.path.isfile(x_path):
            raise _layout_error(
                self.name, f"{os.path.dirname(x_path)} has no {os.path.basename(x_path)}", self.layout
            )
        size = os.path.getsize(x_path)
        if size % self._image_bytes:
            raise _layout_error(
                self.name,
                f"{x_path} has {size} bytes, not a multiple of 3x96x96={self._image_bytes}",
                self.layout,
            )
        return size // self._image_bytes

    def _read_targets(self, base: str, part: str, n: int) -> np.ndarray:
        if part == "unlabeled":
            return np.full(n, -1, dtype=np.int64)
        y_path = os.path.join(base, f"{part}_y.bin")
        if not os.path.isfile(y_path):
            raise _layout_error(self.name, f"{base} has no {part}_y.bin", self.layout)
        y = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
        if len(y) != n or (n and not 0 <= y.min() <= y.max() < len(self.classes)):
            raise _layout_error(
                self.name,
                f"{y_path} does not hold one label in 1..{len(self.classes)} per image of {part}_X.bin",
                self.layout,
            )
        return y

    def _images(self) -> list[np.ndarray]:
        # Mapped lazily, in each process that reads: a pickled memmap would be copied in full.
        if self._arrays is None:
            self._arrays = [
                np.memmap(p, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96) for p in self._x_paths
            ]
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def files(self) -> list[str]:
        """The binary files the split is read from."""
        return list(self._sources)

    @classmethod
    def download(cls, root: str) -> None:
        """Fetch and unpack the official archive (2.6 GB) into ``root`` unless the data is already there."""
        download_and_extract(cls.name, cls.url, os.fspath(root), cls.folder, cls.meta_file)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        part = int(np.searchsorted(self._offsets, i, side="right")) - 1
        chw = self._images()[part][i - self._offsets[part]]
        # Column-major channels: chw[c, x, y] is the pixel in column x, row y, so (2, 1, 0) gives (row, col, c).
        img = Image.fromarray(np.ascontiguousarray(chw.transpose(2, 1, 0)))
        return _apply(self.transform, img), int(self.targets[i]), i


# ---------------------------------------------------------------------------------------------------------
# Download


def download_and_extract(name: str, url: str, root: str, folder: str, probe: str) -> None:
    """Make ``root/folder`` from the archive at ``url``, unless ``root/folder/probe`` or ``root/probe`` exists.

    The archive is downloaded to a temporary file renamed once complete (an archive already in ``root``,
    e.g. fetched by hand, is used as is), unpacked into a temporary folder whose ``folder`` is moved into
    place only when present, then deleted.
    """
    if any(os.path.isfile(os.path.join(base, probe)) for base in (os.path.join(root, folder), root)):
        return
    os.makedirs(root, exist_ok=True)
    archive = os.path.join(root, os.path.basename(url))
    if not os.path.isfile(archive):
        _fetch(url, archive, root)
    _extract(name, archive, root, folder)
    os.remove(archive)


def _fetch(url: str, archive: str, root: str) -> None:
    fd, part = tempfile.mkstemp(dir=root, prefix=".download-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(part, archive)
    except urllib.error.HTTPError as e:
        raise UsageError(
            f"could not download {url} (HTTP {e.code} {e.reason}); download it elsewhere and unpack it into {root}"
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", None) or e
        raise UsageError(
            f"could not download {url} ({reason}); this machine seems offline: "
            f"download it elsewhere and unpack it into {root}"
        ) from None
    finally:
        if os.path.exists(part):
            os.remove(part)


def _extract(name: str, archive: str, root: str, folder: str) -> None:
    with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # The "data" filter (Python >= 3.10.12 / 3.11.4) refuses paths escaping ``tmp``.
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:
                    tar.extractall(tmp)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise UsageError(f"{name}: could not unpack {archive} ({e}); delete it and retry") from None
        if not os.path.isdir(os.path.join(tmp, folder)):
            raise UsageError(f"{name}: {archive} has no {folder}/ folder; delete it and retry")
        os.replace(os.path.join(tmp, folder), os.path.join(root, folder))
