"""The results store: validated rows, concurrent appends without loss, and reads that survive a crash."""
import json
import multiprocessing
from datetime import datetime

import numpy as np
import pytest

from pcl_bench.eval.store import COLUMNS, append_rows, make_row, read_rows


def row(**overrides):
    fields = {"method": "pcl_v2", "checkpoint": "runs/pcl/last.pt", "checkpoint_sha256": "0123456789abcdef" * 4,
              "arch": "resnet50", "dataset": "voc07", "train_split": "trainval", "test_split": "test",
              "protocol": "lowshot", "variant": "pcl", "setting": "k=1", "metric": "mAP", "mean": 47.9,
              "std": 0.6, "n_runs": 5, "seeds": [0, 1, 2, 3, 4], "params": {"cost": 0.5}}
    return make_row(**{**fields, **overrides})


def test_make_row_fills_provenance():
    r = row()
    assert list(r) == list(COLUMNS)
    assert r["checkpoint_sha256"] == "0123456789abcdef"
    assert datetime.fromisoformat(r["time"]).utcoffset().total_seconds() == 0
    assert r["version"] and r["git_commit"]


def test_make_row_defaults_and_errors():
    fields = {k: v for k, v in row().items() if k not in ("time", "version", "git_commit")}
    del fields["variant"], fields["params"]
    r = make_row(**fields)
    assert (r["variant"], r["params"]) == ("", {})
    del fields["metric"]
    with pytest.raises(ValueError, match=r"missing fields \['metric'\]"):
        make_row(**fields)
    with pytest.raises(ValueError, match=r"unknown fields \['top1'\]"):
        row(top1=1.0)
    with pytest.raises(ValueError, match="protocol '' is not a protocol name"):
        row(protocol="")


def test_round_trip_and_absent_file(tmp_path):
    path = tmp_path / "results" / "store.jsonl"
    empty = read_rows(path)
    assert empty.empty and list(empty.columns) == list(COLUMNS)
    append_rows([row(), row(setting="k=2", mean=59.6, params={"cost": np.float32(0.5), "k": np.int64(2)})], path)
    df = read_rows(path)
    assert df["setting"].tolist() == ["k=1", "k=2"]
    assert df.loc[1, "mean"] == 59.6 and df.loc[0, "seeds"] == [0, 1, 2, 3, 4]
    assert df.loc[0, "params"] == {"cost": 0.5} and df.loc[1, "params"] == {"cost": 0.5, "k": 2}


def _append_many(path, worker, barrier):
    barrier.wait()  # start together, to maximise contention
    for i in range(50):
        # Rows larger than a pipe / stdio buffer, so unlocked writes could interleave.
        append_rows([row(setting=f"w{worker}-{i}", params={"pad": "x" * 20000})], path)


def test_concurrent_appends_lose_nothing(tmp_path):
    path = tmp_path / "store.jsonl"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_append_many, args=(path, w, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 4
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    settings = sorted(json.loads(line)["setting"] for line in lines)
    assert settings == sorted(f"w{w}-{i}" for w in range(4) for i in range(50))


def test_truncated_last_line_is_skipped(tmp_path):
    path = tmp_path / "store.jsonl"
    append_rows([row(setting="k=1"), row(setting="k=2")], path)
    half = json.dumps(row(setting="k=4"))[:40]
    with open(path, "a") as f:  # what a crash in the middle of an append leaves
        f.write(half)
    with pytest.warns(UserWarning, match="store.jsonl:3: skipped"):
        assert read_rows(path)["setting"].tolist() == ["k=1", "k=2"]
    append_rows([row(setting="k=8")], path)  # must not be glued to the partial line
    with pytest.warns(UserWarning, match="store.jsonl:3: skipped"):
        assert read_rows(path)["setting"].tolist() == ["k=1", "k=2", "k=8"]
