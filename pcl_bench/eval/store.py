"""The results store: one JSON Lines file of evaluation results that concurrent evaluations append to.

Each line is one row: one metric of one protocol setting for one checkpoint, e.g. VOC07 low-shot k=1 mAP,
mean and std over 5 runs. Appends take an exclusive ``fcntl.flock`` and write all their rows at once, so
concurrent appenders never interleave or lose rows. A crash mid-append can leave at most one partial line,
which the reader skips with a warning and which later appends never run into.
(``flock`` locks are reliable on local file systems; on NFS use one store per machine.)
"""
from __future__ import annotations

import fcntl
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from ..runtime.errors import DiskFull
from ..runtime.provenance import provenance

REQUIRED = ("method", "checkpoint", "checkpoint_sha256", "arch", "dataset", "train_split", "test_split",
            "protocol", "setting", "metric", "mean", "std", "n_runs", "seeds")
OPTIONAL = {"variant": "", "class": "", "params": {}, "skipped": []}
COLUMNS = ("time", "method", "checkpoint", "checkpoint_sha256", "arch", "dataset", "train_split",
           "test_split", "protocol", "variant", "setting", "metric", "class", "mean", "std", "n_runs", "seeds",
           "params", "skipped", "version", "git_commit")
DEFAULT_PATH = Path("runs") / "results.jsonl"  # under runs/, which a checkout ignores


def make_row(**fields: Any) -> dict[str, Any]:
    """A validated row: the ``REQUIRED`` fields, optional ``variant`` (""), ``class`` ("": the row is not one
    class's score), ``params`` ({}) and ``skipped`` (unreadable images left out: []), plus
    ``time`` (ISO-8601 UTC), ``version`` and ``git_commit``. ``checkpoint_sha256`` is cut to 16 hex digits.

    Raises ValueError on a missing or unknown field or an empty protocol name (a bug in the caller).
    """
    missing = [k for k in REQUIRED if k not in fields]
    unknown = [k for k in fields if k not in REQUIRED and k not in OPTIONAL]
    if missing or unknown:
        raise ValueError(f"make_row: missing fields {missing}, unknown fields {unknown}")
    if not isinstance(fields["protocol"], str) or not fields["protocol"]:
        raise ValueError(f"make_row: protocol {fields['protocol']!r} is not a protocol name")
    row = {**OPTIONAL, **fields}
    row.update(time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
               checkpoint=str(row["checkpoint"]), checkpoint_sha256=str(row["checkpoint_sha256"])[:16],
               mean=float(row["mean"]), std=float(row["std"]), n_runs=int(row["n_runs"]),
               seeds=[int(s) for s in row["seeds"]], params=dict(row["params"]),
               skipped=[str(p) for p in row["skipped"]], **provenance())
    return {k: row[k] for k in COLUMNS}


def append_rows(rows: list[dict[str, Any]], path: str | os.PathLike = DEFAULT_PATH) -> None:
    """Append ``rows`` (from :func:`make_row`) to the JSON Lines file ``path``, creating it if needed.

    Under an exclusive lock: one write of all rows, then flush and fsync. If that fails (a full disk: then
    :class:`~pcl_bench.runtime.errors.DiskFull`), the file is cut back to its previous size.
    """
    if not rows:
        return
    data = "".join(json.dumps(r, default=_plain) + "\n" for r in rows).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":  # a crashed append left a partial line: end it so it stays on its own
                data = b"\n" + data
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:  # a full disk: take back what was written, so no partial row stays
            f.truncate(size)
            DiskFull.check(e, path)
            raise


def canonical(value: Any) -> str:
    """``value`` as JSON with sorted keys, values written as the store writes them: equal for a value and the
    same value read back from the store."""
    return json.dumps(value, sort_keys=True, default=_plain)


def _plain(value: Any) -> Any:
    """JSON form of values json does not know: NumPy / torch scalars as numbers, anything else as text."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else str(value)


def read_rows(path: str | os.PathLike = DEFAULT_PATH) -> pd.DataFrame:
    """All rows of the store as a DataFrame with ``COLUMNS`` first (empty, with those columns, if absent).

    Lines that are not valid JSON objects (a partial line left by a crash) are skipped with a warning.
    """
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)  # never read an append half-way
        lines = f.read().decode(errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            warnings.warn(f"{path}:{number}: skipped a line that is not a complete row "
                          f"(left by an interrupted append?)", stacklevel=2)
            continue
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.reindex(columns=list(COLUMNS) + [c for c in df.columns if c not in COLUMNS])
