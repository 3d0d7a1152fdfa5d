"""Atomic file writes: write a temporary file in the target's folder, then rename it over the target.

A crash (or kill) mid-write leaves the previous file intact, never a truncated one; so does a full disk, which
raises :class:`~pcl_bench.runtime.errors.DiskFull` naming the file.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DiskFull


def _replace_with(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shared caches and results must stay readable
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        DiskFull.check(e, path)
        raise


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    _replace_with(Path(path), lambda f: torch.save(obj, f))


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` atomically (a kept checkpoint is whole or absent)."""
    with open(src, "rb") as f:
        _replace_with(Path(dst), lambda out: shutil.copyfileobj(f, out, 1 << 20))


def write_text(text: str, path: str | os.PathLike) -> None:
    _replace_with(Path(path), lambda f: f.write(text.encode()))


def write_json(obj: Any, path: str | os.PathLike) -> None:
    write_text(json.dumps(obj, indent=2, default=str) + "\n", path)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    _replace_with(Path(path), lambda f: np.save(f, array))


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """An uncompressed ``.npz`` of ``arrays``."""
    _replace_with(Path(path), lambda f: np.savez(f, **arrays))


def save_figure(fig, path: str | os.PathLike) -> Path:
    """A matplotlib figure as a PNG (120 dpi, tight bounding box); returns ``path``."""
    _replace_with(Path(path), lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    return Path(path)
