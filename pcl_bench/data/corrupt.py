"""Unreadable image files. Every file-based dataset opens its images with :func:`open_rgb`, which names an
unreadable file in one line (:class:`CorruptImage`); ``--skip-corrupt`` calls :func:`skip_unreadable` before
any training or feature extraction, which finds every unreadable image of a split and leaves it out.

The scan decodes each image once, in ``workers`` processes, and its verdict is cached in
``$PCL_BENCH_CACHE/corrupt`` (default ``~/.cache/pcl-bench/corrupt``), keyed by every file's path, size and
modification time, so a split is scanned again only when one of its files changed.
"""
from __future__ import annotations

import json
import os
import sys

from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..runtime.atomic import write_json
from ..runtime.errors import CorruptImage
from ..runtime.paths import cache_dir
from .fingerprint import files_fingerprint
from .subsets import InstanceSubset, reads_image_files

# Decoding errors PIL raises for bad files (UnidentifiedImageError and truncation are OSErrors).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` decoded and converted to RGB; :class:`CorruptImage` naming it if that fails."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except DECODE_ERRORS as e:
        raise CorruptImage.at(path, f"{type(e).__name__}: {e}") from None


class _Probe(Dataset):
    """Item i: "" if image i decodes, else the reason it does not."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        try:
            open_rgb(self.paths[i])
        except CorruptImage as e:
            return e.reason
        return ""


def find_unreadable(paths: list[str], workers: int = 2) -> dict[str, str]:
    """``{path: reason}`` of every file in ``paths`` that does not decode (missing files included)."""
    cache = cache_dir("corrupt") / f"{files_fingerprint(paths)}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    loader = DataLoader(_Probe(paths), batch_size=64, num_workers=workers, collate_fn=list)
    reasons = [r for batch in tqdm(loader, desc="checking images", leave=False, mininterval=5,
                                   file=sys.stderr) for r in batch]
    bad = {p: r for p, r in zip(paths, reasons) if r}
    write_json(bad, cache)
    return bad


def skip_unreadable(ds: Dataset, workers: int = 2) -> tuple[Dataset, list[str]]:
    """``ds`` without its unreadable images (an :class:`InstanceSubset` if any) and their paths, sorted.

    Datasets without image files (arrays in memory: shapes, CIFAR, STL-10) are returned as they are.
    """
    if not reads_image_files(ds):
        return ds, []
    paths = [os.fspath(ds.path(i)) for i in range(len(ds))]
    bad = find_unreadable(paths, workers)
    if not bad:
        return ds, []
    for path, reason in sorted(bad.items()):
        print(f"skipped unreadable image {path} ({reason})", file=sys.stderr)
    keep = [i for i, p in enumerate(paths) if p not in bad]
    return InstanceSubset(ds, keep), sorted(bad)
