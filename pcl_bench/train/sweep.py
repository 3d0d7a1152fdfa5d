"""Learning-rate sweep: stability of each method across learning rates (the CLOP paper's figure, §3.5).

Every (method, lr) pair is one ordinary pretraining run, ``<out>/sweep_<dataset>_<method>_lr<lr>``, built by
:func:`pcl_bench.train.engine.config_for_run` from the same flags, so only the method and the learning rate vary
(same seed, hence the same initial weights and data order). After training, the sweep scores the run's kNN
top-1 (the engine's final check on backbone features) and the collapse metrics of :mod:`pcl_bench.analysis.collapse`
on the test split, and writes ``sweep_<dataset>.csv`` / ``.md`` and ``sweep_<dataset>.png`` (kNN accuracy and
effective rank against learning rate, one line per method).

A run whose loss becomes NaN is recorded as ``diverged`` (no metrics). Each scored run leaves
``sweep_point.json`` in its folder, so re-running an interrupted sweep reuses finished points (when their
recipe is unchanged) and resumes a partly trained one; ``overwrite`` retrains everything.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis.collapse import measure_checkpoint
from ..config import PretrainConfig, set_world
from ..methods import method_class
from ..runtime.atomic import save_figure, write_json, write_text
from ..runtime.errors import UsageError
from .engine import RESUMABLE, TrainingDiverged, config_for_run, pretrain

COLUMNS = ["method", "lr", "status", "knn_top1", "erank_backbone", "rank95_backbone", "erank_projection",
           "rank95_projection", "rank95_class_projection", "total_var_projection", "train_s"]


def run_overrides(method: str, lr: float, dataset: str, label_fraction: float | None,
                  common: dict[str, Any]) -> dict[str, Any]:
    """Pretraining overrides of one sweep point; ``label_fraction`` goes only to methods that use labels."""
    overrides = {**common, "method": method, "dataset": dataset, "lr": lr, "final_knn": True,
                 "name": f"sweep_{dataset}_{method}{'_clop' if common.get('clop') else ''}_lr{lr:g}"}
    if method_class(config_for_run(overrides)).uses_labels:
        if label_fraction is None:
            raise UsageError(f"sweep: {method} trains with labels; pass --label-fraction, e.g. 0.1")
        overrides["label_fraction"] = label_fraction
    return overrides


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that define a run's result (not how or where it ran)."""
    return {k: v for k, v in config.items() if k not in RESUMABLE | {"overwrite", "provenance"}}


def sweep_point(overrides: dict[str, Any], overwrite: bool = False) -> dict[str, Any]:
    """Train (or reuse, or resume) one run and score it; returns its row of ``COLUMNS`` plus run_dir and
    random_init (the kNN top-1 of the randomly initialised encoder)."""
    cfg = config_for_run(overrides)
    set_world(cfg, 1)  # the sweep trains in this one process; as saved in a run's config.json
    saved = cfg.run_dir / "sweep_point.json"
    if overwrite:
        cfg.overwrite = True
    elif saved.exists():
        point = json.loads(saved.read_text())
        if _recipe(point["config"]) != _recipe(json.loads(cfg.to_json())):
            raise UsageError(f"sweep: {cfg.run_dir} holds a run with another recipe; pass --overwrite to "
                             f"retrain it, or --out for another parent folder")
        print(f"sweep: reusing {cfg.run_dir}", flush=True)
        return point["row"]
    elif (cfg.run_dir / "last.pt").exists():
        cfg = config_for_run({**overrides, "resume": True})
    row = {"method": cfg.method + ("+clop" if cfg.clop and cfg.method not in ("clop", "supcon_clop") else ""),
           "lr": cfg.lr, "run_dir": str(cfg.run_dir)}
    try:
        summary = pretrain(cfg)
    except TrainingDiverged as e:
        print(f"sweep: {e}", flush=True)
        row.update(status="diverged", note=str(e))
    else:
        row.update(score(cfg, summary))
    write_json({"config": json.loads(cfg.to_json()), "row": row}, saved)
    return row


def score(cfg: PretrainConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """kNN top-1 from the engine's summary and collapse metrics of the run's last.pt on the test split."""
    metrics, _ = measure_checkpoint(cfg.run_dir / "last.pt", cfg.dataset, cfg.data_root, cfg.test_split,
                                    cfg.image_size, cfg.device, cfg.workers)
    back, proj = metrics["backbone"], metrics.get("projection", {})
    knn = summary["knn"]
    return {"status": "ok", "knn_top1": knn[cfg.method], "random_init": knn["random_init"],
            "erank_backbone": back["effective_rank"], "rank95_backbone": back["rank95"],
            "erank_projection": proj.get("effective_rank"), "rank95_projection": proj.get("rank95"),
            "rank95_class_projection": proj.get("rank95_class_mean"),
            "total_var_projection": proj.get("total_variance"), "train_s": summary["train_time_s"]}


def run_sweep(methods: list[str], lrs: list[float], dataset: str, label_fraction: float | None = None,
              common: dict[str, Any] | None = None, results_dir: str | Path = "runs/sweep",
              overwrite: bool = False) -> pd.DataFrame:
    """Train and score every (method, lr); write ``sweep_<dataset>.csv``, ``.md`` and ``.png`` to
    ``results_dir``. ``common`` holds the pretraining overrides shared by every run (e.g. epochs,
    subset_per_class, out, device).
    Returns the table (one row per run, ``COLUMNS``).
    """
    common = {k: v for k, v in (common or {}).items() if v is not None}
    if not methods or not lrs:
        raise UsageError("sweep needs at least one method and one learning rate, e.g. --methods simclr,clop "
                         "--lr 0.01,0.1,1")
    if min(lrs) <= 0:
        raise UsageError(f"sweep learning rates must be positive; got {min(lrs)}")
    points = [run_overrides(m, lr, dataset, label_fraction, common) for m in methods for lr in sorted(lrs)]
    rows = [sweep_point(p, overwrite) for p in points]
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS + ["random_init", "run_dir"])
    results_dir = Path(results_dir)
    write_text(frame[COLUMNS].to_csv(index=False), results_dir / f"sweep_{dataset}.csv")
    write_text(sweep_markdown(frame, dataset, points[0], label_fraction), results_dir / f"sweep_{dataset}.md")
    plot_sweep(frame, dataset, results_dir / f"sweep_{dataset}.png")
    return frame


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "lr":
        return f"{value:g}"
    if column.startswith("rank95") and column != "rank95_class_projection":
        return f"{value:.0f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def sweep_markdown(frame: pd.DataFrame, dataset: str, example: dict[str, Any],
                   label_fraction: float | None) -> str:
    """A Markdown table of the sweep with the fixed setting in its caption."""
    cfg = config_for_run(example)
    fixed = (f"{cfg.arch} ({cfg.stem} stem), {cfg.epochs} epoch{'s' * (cfg.epochs != 1)}, "
             f"batch {cfg.batch_size}, {cfg.image_size or 'native'} px crops, "
             f"SGD momentum {cfg.sgd_momentum}, weight decay {cfg.weight_decay}, "
             f"{'cosine' if cfg.cos else 'step'} schedule, tau {cfg.temperature}, seed {cfg.seed}"
             + (f", {cfg.subset_per_class} images per class" if cfg.subset_per_class else "")
             + (f", labels of {label_fraction:g} of the images for the methods that use labels"
                if label_fraction else ""))
    header = ["method", "lr", "status", "kNN top-1", "eff. rank (backbone)", "rank95 (backbone)",
              "eff. rank (proj.)", "rank95 (proj.)", "rank95 per class (proj.)", "total var. (proj.)",
              "train s"]
    random_init = frame["random_init"].dropna()
    baseline = f" (random init: {random_init.mean():.2f})" if len(random_init) else ""
    lines = [f"## Learning-rate sweep on {dataset}", "",
             (f"Fixed: {fixed}. kNN top-1: k={cfg.knn_k}, t={cfg.knn_t} on backbone features of the "
              f"{cfg.test_split} split{baseline}; collapse metrics on the same split."), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c, v) for c, v in zip(COLUMNS, r)) + " |"
              for r in frame[COLUMNS].itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot_sweep(frame: pd.DataFrame, dataset: str, path: str | Path) -> Path:
    """kNN top-1 and effective rank (backbone, projection) against lr (log axis), one line per method;
    diverged runs are crosses on the x axis."""
    panels = [("knn_top1", "kNN top-1 (%)"), ("erank_backbone", "effective rank, backbone"),
              ("erank_projection", "effective rank, projection")]
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, len(panels))
    for (col, title), ax in zip(panels, axes):
        for i, (method, runs) in enumerate(frame.groupby("method", sort=False)):
            color = f"C{i}"
            ok = runs[runs["status"] == "ok"]
            ax.plot(ok["lr"], ok[col].astype(float), "o-", color=color, label=method)
            bad = runs[runs["status"] != "ok"]
            ax.plot(bad["lr"], np.zeros(len(bad)), "x", color=color, markersize=9,
                    label=f"{method} diverged" if len(bad) else None)
        if col == "knn_top1" and frame["random_init"].notna().any():
            ax.axhline(frame["random_init"].dropna().mean(), color="gray", ls="--", label="random init")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Learning-rate sweep on {dataset}", fontsize=11)
    return save_figure(fig, path)
