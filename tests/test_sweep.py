"""The learning-rate sweep on a tiny setting: table, figure, divergence, reuse of finished points, errors."""
import json

import pandas as pd
import pytest
from test_pretrain import TINY

from pcl_bench.cli import main
from pcl_bench.data import shapes
from pcl_bench.train import sweep
from pcl_bench.train.engine import TrainingDiverged

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def small_shapes(monkeypatch):
    """Small generated `shapes` splits (12 train, 10 test images per class): every run takes seconds."""
    monkeypatch.setitem(shapes.DEFAULT_PER_CLASS, "train", 12)
    monkeypatch.setitem(shapes.DEFAULT_PER_CLASS, "test", 10)


def sweep_args(tmp_path, *extra):
    return ["sweep", "--methods", "simclr,clop", "--lr", "1,0.01", "--label-fraction", "0.1", "--epochs", "1",
            *TINY, "--out", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), *extra]


def test_sweep_writes_table_and_figure_and_reuses_points(tmp_path, capsys, monkeypatch):
    """2 methods x 2 lrs (simclr at lr 1 made to diverge); a second call trains nothing."""
    real = sweep.pretrain

    def pretrain(cfg):
        if cfg.method == "simclr" and cfg.lr == 1.0:
            raise TrainingDiverged("loss became nan at epoch 1, step 1")
        return real(cfg)

    monkeypatch.setattr(sweep, "pretrain", pretrain)
    assert main(sweep_args(tmp_path)) == 0
    out = capsys.readouterr().out
    results, runs = tmp_path / "results", tmp_path / "runs"
    frame = pd.read_csv(results / "sweep_shapes.csv")
    assert list(frame.columns) == sweep.COLUMNS
    assert frame[["method", "lr", "status"]].values.tolist() == [
        ["simclr", 0.01, "ok"], ["simclr", 1.0, "diverged"], ["clop", 0.01, "ok"], ["clop", 1.0, "ok"]]
    ok = frame[frame["status"] == "ok"]
    assert ok["knn_top1"].between(0, 100).all() and (ok["erank_projection"] > 1).all()
    assert (ok["rank95_backbone"] >= 1).all() and ok["total_var_projection"].between(0, 1).all()
    assert frame.loc[1, ["knn_top1", "erank_backbone"]].isna().all()
    md = (results / "sweep_shapes.md").read_text()
    assert "| clop | 0.01 | ok |" in md and "| simclr | 1 | diverged |" in md and md in out
    assert (results / "sweep_shapes.png").read_bytes()[:4] == b"\x89PNG"
    # labels only for the method that uses them; everything else identical
    configs = {m: json.loads((runs / f"sweep_shapes_{m}_lr0.01" / "config.json").read_text())
               for m in ("simclr", "clop")}
    assert configs["simclr"]["label_fraction"] is None and configs["clop"]["label_fraction"] == 0.1
    differ = {k for k in configs["clop"] if configs["clop"][k] != configs["simclr"][k]}
    assert differ == {"method", "name", "label_fraction"}
    assert (runs / "sweep_shapes_clop_lr0.01" / "label_subset.json").exists()
    assert not (runs / "sweep_shapes_simclr_lr0.01" / "label_subset.json").exists()

    monkeypatch.setattr(sweep, "pretrain", lambda cfg: pytest.fail("a finished point was trained again"))
    assert main(sweep_args(tmp_path)) == 0
    assert capsys.readouterr().out.count("sweep: reusing") == 4
    assert pd.read_csv(results / "sweep_shapes.csv").equals(frame)

    assert main(sweep_args(tmp_path, "--weight-decay", "0.001")) == 2
    assert "another recipe; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--methods", "clop", "--lr", "0.1"], "clop trains with labels; pass --label-fraction"),
    (["--methods", "simclr", "--lr", "0,0.1"], "learning rates must be positive"),
])
def test_sweep_errors(tmp_path, capsys, args, message):
    assert main(["sweep", *args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
