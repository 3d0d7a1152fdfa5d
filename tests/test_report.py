"""`pcl-bench report`: tables from a small golden store equal the checked-in golden files, figures are written
when their inputs exist and skipped otherwise, and the paper's reference CSVs hold the paper's figures.

The golden tables are regenerated only deliberately, after checking the new output by eye:
    python -c "from pcl_bench.analysis.report import build_report; build_report('tests/golden/store.jsonl', '/tmp/g')"
    cp /tmp/g/table*.csv /tmp/g/table*.md tests/golden/
"""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcl_bench.analysis.report import TABLES, build_report, format_value, latest_cluster_stats, latest_rows
from pcl_bench.eval.store import read_rows
from pcl_bench.runtime.errors import UsageError
from pcl_bench.runtime.paths import package_path

GOLDEN = Path(__file__).parent / "golden"
STORE = GOLDEN / "store.jsonl"
TABLE_FILES = [f"table{t.number}_{t.protocol}.{ext}" for t in TABLES for ext in ("csv", "md")]


def _cluster_record(epoch: int, size_hist: list[int]) -> dict:
    stats = {"k": 8, "size_hist": size_hist, "empty": size_hist[0], "singletons": size_hist[1], "size_max": 9,
             "phi_min": 0.1, "phi_p10": 0.15, "phi_mean": 0.2, "phi_p90": 0.25, "phi_max": 0.3}
    return {"kind": "cluster", "epoch": epoch, "granularities": [stats, {**stats, "k": 16}]}


def _make_run(runs: Path, name: str, concentration: str, hists: list[list[int]], mtime: float) -> None:
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"method": "pcl_v2", "concentration": concentration,
                                                 "num_cluster": [8, 16]}))
    records = [{"kind": "epoch", "epoch": 0, "loss": 1.0}]
    records += [_cluster_record(epoch, hist) for epoch, hist in enumerate(hists, start=1)]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"kind": "clus'  # a live run's partial line
    (run / "metrics.jsonl").write_text(text)
    os.utime(run / "metrics.jsonl", (mtime, mtime))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A runs folder (an older and a newer 'estimated' run, one 'fixed' run, one MoCo run without
    clusterings) and a features folder with one 200-point feature file."""
    root = tmp_path_factory.mktemp("inputs")
    runs, features = root / "runs", root / "features"
    _make_run(runs, "pcl_est_old", "estimated", [[0, 5, 3, 0] + [0] * 10], mtime=1_000)
    _make_run(runs, "pcl_est_new", "estimated", [[0, 4, 4, 0] + [0] * 10, [0, 1, 2, 3] + [0] * 10], mtime=2_000)
    _make_run(runs, "pcl_fixed", "fixed", [[2, 3, 1, 1] + [0] * 10], mtime=1_500)
    (runs / "moco").mkdir()
    (runs / "moco" / "config.json").write_text(json.dumps({"method": "moco_v2"}))
    (runs / "moco" / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 0}) + "\n")
    features.mkdir()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    np.savez(features / "pcl.npz", features=rng.normal(size=(200, 16)) + 3 * np.eye(16)[labels],
             labels=labels, classes=np.array(["circle", "square", "triangle", "star"]), title="PCL (shapes)")
    return runs, features


@pytest.fixture(scope="module")
def report(tmp_path_factory, inputs) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    runs, features = inputs
    return out, build_report(STORE, out, runs_dir=runs, features_dir=features)


@pytest.mark.parametrize("name", TABLE_FILES)
def test_tables_equal_golden_files(report, name):
    out, written = report
    assert written[name] == out / name
    assert (out / name).read_text() == (GOLDEN / name).read_text()


def test_latest_row_wins_by_time_not_file_order():
    rows = latest_rows(read_rows(STORE))
    assert len(rows) == 11  # 13 lines, 2 superseded
    pcl_k1 = rows[(rows["method"] == "pcl_v2") & (rows["protocol"] == "lowshot") & (rows["setting"] == "k=1")]
    assert pcl_k1["mean"].tolist() == [41.25]  # the later line of the store is the older result
    moco_linear = rows[(rows["method"] == "moco_v2") & (rows["protocol"] == "linear")]
    assert moco_linear["mean"].tolist() == [66.04]


def test_measured_rows_state_their_dataset_next_to_the_paper_rows(report):
    out, _ = report
    table = pd.read_csv(out / "table1_lowshot.csv", keep_default_na=False)
    measured = table[table["source"] == "measured"]
    assert set(measured["dataset"]) == {"shapes-voc"} and set(measured["arch"]) == {"resnet18"}
    assert measured.set_index("method").loc["pcl_v2", ["k=1", "n"]].tolist() == ["41.2 ± 2.0", "5"]
    assert set(table.loc[table["source"] == "paper", "dataset"]) == {"VOC07", "Places205"}


def test_figures_written_when_inputs_exist(report):
    out, written = report
    for name in ("lowshot_curves.png", "tsne.png", "cluster_sizes.png"):
        assert written[name] == out / name
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 1000
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.png"))  # no temporary files left


def test_cluster_sizes_use_latest_run_last_epoch_first_granularity(inputs):
    runs, _ = inputs
    found = latest_cluster_stats(runs)
    assert list(found) == ["estimated", "fixed"]  # the MoCo run has no clusterings
    assert (found["estimated"]["run"], found["estimated"]["epoch"]) == ("pcl_est_new", 2)
    assert found["estimated"]["stats"]["size_hist"][:4] == [0, 1, 2, 3] and found["estimated"]["stats"]["k"] == 8
    assert found["fixed"]["run"] == "pcl_fixed"


def test_figures_skipped_cleanly_without_inputs(tmp_path, capsys):
    store = tmp_path / "store.jsonl"
    store.write_text(STORE.read_text().splitlines()[6] + "\n")  # one linear row, no low-shot rows
    written = build_report(store, tmp_path / "out", runs_dir=tmp_path / "no_runs")
    assert set(written) == set(TABLE_FILES)
    assert not list((tmp_path / "out").glob("*.png"))
    err = capsys.readouterr().err
    assert "skipped lowshot_curves.png" in err and "skipped tsne.png" in err and "skipped cluster_sizes.png" in err


def test_bad_inputs_raise_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        build_report(tmp_path / "missing.jsonl", tmp_path / "out")
    features = tmp_path / "features"
    features.mkdir()
    np.savez(features / "bad.npz", features=np.zeros((10, 4)))
    with pytest.raises(UsageError, match="no 'labels' array"):
        build_report(STORE, tmp_path / "out", features_dir=features)


def test_format_value():
    assert format_value(41.25, 2.04, "mAP") == "41.2 ± 2.0"
    assert format_value(0.41, None, "ami") == "0.410"
    assert format_value(0.2, 0.01, "ami_coarse") == "0.200 ± 0.010"
    assert format_value(66.04, float("nan"), "top1") == "66.0"


def test_paper_csvs_hold_the_papers_figures():
    for table in TABLES:
        paper = pd.read_csv(package_path("analysis", "paper") / f"table{table.number}.csv", keep_default_na=False)
        assert list(paper.columns) == ["method", "dataset", "protocol", "setting", "metric", "value", "note"]
        assert set(paper["protocol"]) == {table.protocol} and paper["value"].dtype == float
    table1 = pd.read_csv(package_path("analysis", "paper") / "table1.csv", keep_default_na=False)
    pcl_v2 = table1[(table1["method"] == "PCL v2") & table1["setting"].str.startswith("k=")]
    assert pcl_v2[pcl_v2["dataset"] == "VOC07"]["value"].tolist() == [47.9, 59.6, 66.2, 74.5, 78.3]
    assert pcl_v2[pcl_v2["dataset"] == "Places205"]["value"].tolist() == [12.5, 17.5, 23.2, 28.1, 32.3]
    assert set(pcl_v2["setting"]) == {"k=1", "k=2", "k=4", "k=8", "k=16"}
    table7 = pd.read_csv(package_path("analysis", "paper") / "table7.csv", keep_default_na=False)
    assert table7.set_index("method")["value"].to_dict() == {"DeepCluster": 0.281, "MoCo": 0.285, "PCL": 0.410}
