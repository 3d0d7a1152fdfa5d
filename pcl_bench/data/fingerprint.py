"""What a dataset's items are made of, as a hash: each file they are read from (path, size, modification time)
and, for a subset, which items it keeps. Caches key their entries with it, so that a changed, added or
removed file (or a regenerated dataset) never serves stale features or image checks."""
from __future__ import annotations

import hashlib
import os
import weakref
from collections.abc import Iterable

from torch.utils.data import Dataset

from .subsets import InstanceSubset


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """32 hex digits of sha256 over (path, size, modification time) of each file; a missing file counts too."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.fspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.fspath(p)}|missing\n".encode())
    return h.hexdigest()[:32]


_SEEN: weakref.WeakKeyDictionary[Dataset, str] = weakref.WeakKeyDictionary()  # a dataset's files, hashed once


def fingerprint(ds: Dataset) -> str:
    """32 hex digits identifying the content of ``ds`` (its ``files()``, and the indices of any subset). The
    files of one dataset object are looked at once per process (ImageNet has 1.3M of them)."""
    h = hashlib.sha256()
    while isinstance(ds, InstanceSubset):
        h.update(ds.indices.tobytes())
        ds = ds.dataset
    if ds not in _SEEN:
        _SEEN[ds] = files_fingerprint(ds.files())
    h.update(_SEEN[ds].encode())
    return h.hexdigest()[:32]
