"""Metrics of a run, written as they happen: ``metrics.jsonl`` (every record), ``epochs.csv`` (one row per
epoch) and TensorBoard scalars under ``tb/``."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from .atomic import write_text
from .errors import DiskFull


class MetricLogger:
    """Append-only logger for one run folder. Only the main process should create one.

    ``log(kind, **values)`` appends ``{"kind": kind, **values}`` to metrics.jsonl; numeric values also go to
    TensorBoard as ``<kind>/<key>`` at x = ``values["step"]`` (or ``values["epoch"]``). ``kind == "epoch"``
    rows also go to epochs.csv.
    """

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run_dir)
        self.jsonl = self.dir / "metrics.jsonl"
        self.csv = self.dir / "epochs.csv"
        self.tb = SummaryWriter(str(self.dir / "tb"))

    def truncate_from(self, epoch: int, step: int | None = None) -> None:
        """Drop records of ``epoch`` and later (after a resume, the interrupted epoch is trained again). With
        ``step`` (a run resumed inside ``epoch`` at that global step), keep what that epoch logged before it:
        its clustering and its earlier step records."""
        def kept(record: dict | None) -> bool:
            if record is None:  # a line cut short by a kill
                return False
            if record.get("epoch", -1) < epoch:
                return True
            return step is not None and record.get("epoch") == epoch and (
                record["kind"] == "cluster" or (record["kind"] == "step" and record["step"] < step))

        if self.jsonl.exists():
            keep = [line for line in self.jsonl.read_text().splitlines() if kept(_record(line))]
            write_text("".join(line + "\n" for line in keep), self.jsonl)
        if self.csv.exists():
            rows = list(csv.DictReader(self.csv.open()))
            self._write_csv([r for r in rows if int(r["epoch"]) < epoch])

    def log(self, kind: str, **values: Any) -> None:
        try:
            with self.jsonl.open("a") as f:
                f.write(json.dumps({"kind": kind, **values}, default=float) + "\n")
        except OSError as e:  # a partial line left behind is dropped on resume
            DiskFull.check(e, self.jsonl)
            raise
        x = values.get("step", values.get("epoch", 0))
        for key, v in values.items():
            if isinstance(v, (int, float)) and key not in ("step", "epoch"):
                self.tb.add_scalar(f"{kind}/{key}", v, x)
        if kind == "epoch":
            rows = list(csv.DictReader(self.csv.open())) if self.csv.exists() else []
            self._write_csv(rows + [values])
        self.tb.flush()

    def _write_csv(self, rows: list[dict]) -> None:
        """Rewrite the whole CSV (atomically): later epochs may add columns, e.g. PCL's after warm-up."""
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
        write_text(buf.getvalue(), self.csv)

    def close(self) -> None:
        self.tb.close()


def _record(line: str) -> dict | None:
    """The record of a metrics.jsonl line, None for a line that is not complete JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def read_epochs(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``epochs.csv`` as floats; a column a row has no value in (e.g. PCL's before its first
    E-step) is left out of that row."""
    with open(Path(run_dir) / "epochs.csv") as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]
