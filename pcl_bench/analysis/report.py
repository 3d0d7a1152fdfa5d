"""``pcl-bench report``: the paper's tables rebuilt from the results store, each measured row next to the
paper's rows, plus three figures.

Tables 1, 2, 3, 4, 5 and 7 go to ``tableN_<protocol>.csv`` and ``.md``: one row per (source, method, arch,
dataset, checkpoint, variant, metric), one column per protocol setting (``k=1`` .. ``k=16``, ``fraction=0.01``,
...), cells ``"mean ± std"``. Paper rows come from ``results/paper/tableN.csv`` (ResNet-50 pretrained on
ImageNet-1M); measured rows show their own dataset and arch, so a ``shapes`` row is never read as an ImageNet one.

Figures: low-shot score vs k (``lowshot_curves.png``), a t-SNE of saved features (``tsne.png``, paper appendix
G) and the cluster-size histogram of fixed vs estimated concentration (``cluster_sizes.png``, paper Figure 3a).
A figure whose inputs are absent is skipped with a note on stderr.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: PNGs render with Agg and no global backend state
from sklearn.manifold import TSNE

from ..eval.specs import paper_setup
from ..eval.store import DEFAULT_PATH, read_rows
from ..runtime.atomic import save_figure, write_text
from ..runtime.errors import UsageError
from ..runtime.paths import package_path
from ..train.cluster_stats import SIZE_BINS

# Rows sharing these fields are one result; the latest (by ``time``) wins.
RESULT_KEY = ["method", "checkpoint_sha256", "dataset", "train_split", "test_split", "protocol", "variant",
              "setting", "metric", "class"]
TEXT_COLUMNS = ["method", "checkpoint", "checkpoint_sha256", "arch", "dataset", "train_split", "test_split",
                "protocol", "variant", "setting", "metric", "class"]
ARCH_NAMES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50"}
CLUSTER_METRICS = ("ami", "nmi", "ari", "acc")  # in [0, 1]: 3 decimals; everything else is a percentage
TSNE_POINTS = 2000


@dataclass(frozen=True)
class Table:
    number: int
    protocol: str
    title: str
    caption: str


TABLES = (
    Table(1, "lowshot", "Table 1: low-shot linear SVM on frozen features",
          "Paper: VOC07 mAP and Places205 top-1 with k labelled images per class, mean of 5 runs."),
    Table(2, "semisup", "Table 2: semi-supervised fine-tuning",
          "Paper: ImageNet top-5 with 1% (fraction=0.01) and 10% (fraction=0.1) of the labels."),
    Table(3, "linear", "Table 3: linear classifiers on frozen features",
          "Paper: ImageNet and Places205 top-1, VOC07 mAP."),
    Table(4, "knn", "Table 4: weighted kNN on frozen features",
          "Paper: ImageNet top-1; PCL with k=20 neighbours, the others with k=200."),
    Table(5, "detection", "Table 5: VOC detection with a frozen conv body",
          "Paper: Faster R-CNN, mAP@0.5 on VOC07 test, 3 runs; its dataset column is the training set."),
    Table(7, "ami", "Table 7: agreement of k-means clusters with the labels",
          "Paper: AMI of k-means (K = 25000) on ImageNet train features."),
)
PER_CLASS = {"lowshot": "AP", "detection": "AP"}  # protocols whose per-class rows get a table of their own
PREAMBLE = ("Paper rows: the PCL paper (ResNet-50 pretrained on ImageNet-1M, 200 epochs).\n"
            "Measured rows: the results store, latest result per checkpoint and setting; cells are mean ± std "
            "over n runs (low-shot 'full' is one fit); split is training -> scored split, size the image size.\n"
            "Compare numbers within a dataset only; † marks a measured row on one of the paper's datasets whose "
            "setup (arch, splits, image size) differs from the paper's, named in its note.")


def _note(message: str) -> None:
    print(f"pcl-bench report: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- tables


def latest_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """For each ``RESULT_KEY``, the row with the latest ``time`` (on a tie, the later line of the store)."""
    rows = rows.astype({c: object for c in TEXT_COLUMNS}).fillna({c: "" for c in TEXT_COLUMNS})
    rows = rows.astype({c: str for c in TEXT_COLUMNS})
    try:
        times = pd.to_datetime(rows["time"], utc=True, format="ISO8601")
    except (ValueError, TypeError) as e:
        raise UsageError(f"results store: a 'time' is not an ISO-8601 timestamp ({e}); fix or remove that row")
    order = np.argsort(times.to_numpy(), kind="stable")
    return rows.iloc[order].drop_duplicates(RESULT_KEY, keep="last")


def format_value(mean: float, std: float | None, metric: str) -> str:
    """``"47.9"`` or ``"47.9 ± 1.2"``; 3 decimals for clustering metrics (AMI in [0, 1]), 1 otherwise."""
    d = 3 if metric.split("_")[0] in CLUSTER_METRICS else 1
    return f"{mean:.{d}f}" if std is None or not np.isfinite(std) else f"{mean:.{d}f} ± {std:.{d}f}"


def load_paper(table: Table, paper_dir: Path) -> pd.DataFrame:
    """``paper_dir/tableN.csv``: columns method, dataset, protocol, setting, metric, value, note."""
    path = Path(paper_dir) / f"table{table.number}.csv"
    if not path.is_file():
        raise UsageError(f"{path}: the paper's reference numbers are missing; reinstall pcl-bench, whose "
                         f"package holds them")
    return pd.read_csv(path, keep_default_na=False, dtype={"value": float})


def _checkpoint_labels(rows: pd.DataFrame) -> pd.Series:
    """``<run folder>/<file stem>`` of each checkpoint, plus ``@<sha256 prefix>`` where one label names several
    checkpoint files (a run trained again in place)."""
    paths = [Path(str(p)) for p in rows["checkpoint"]]
    labels = pd.Series([f"{p.parent.name}/{p.stem}".strip("/") for p in paths], index=rows.index, dtype=str)
    several = rows.groupby(labels)["checkpoint_sha256"].transform("nunique") > 1
    return labels.where(~several, labels + "@" + rows["checkpoint_sha256"].astype(str).str[:8])


def _split(train: str, test: str) -> str:
    return f"{train}→{test}" if test else train


def paper_difference(row: pd.Series) -> str:
    """"" if a measured row follows the paper's setup for its protocol and dataset (or the paper has none),
    else "† <what differs>", e.g. "† ResNet-18 (paper ResNet-50), train→val (paper trainval→test)"."""
    paper = paper_setup(row["protocol"], row["dataset"])
    if not paper:
        return ""
    found = {"arch": ARCH_NAMES.get(row["arch"], row["arch"]), "split": _split(row["train_split"], row["test_split"]),
             "size": f"{row['image_size']} px" if row["image_size"] != "" else ""}
    wanted = {"arch": ARCH_NAMES.get(paper.get("arch", ""), paper.get("arch", "")),
              "split": _split(paper.get("train_split", ""), paper.get("test_split", "")),
              "size": f"{paper['image_size']} px" if "image_size" in paper else ""}
    diffs = [f"{found[k]} (paper {wanted[k]})" for k in found if wanted[k] and found[k] and found[k] != wanted[k]]
    return "† " + ", ".join(diffs) if diffs else ""


def measured_frame(measured: pd.DataFrame) -> pd.DataFrame:
    """Measured rows with the columns the tables show: checkpoint label, split, image size, note."""
    measured = measured.assign(
        checkpoint=_checkpoint_labels(measured),
        split=[_split(a, b) for a, b in zip(measured["train_split"], measured["test_split"])],
        image_size=[str(p.get("image_size", "")) if isinstance(p, dict) and p.get("image_size") else ""
                    for p in measured["params"]])
    measured["note"] = [paper_difference(r) for _, r in measured.iterrows()]
    return measured.sort_values(["dataset", "method", "checkpoint", "variant", "metric"], kind="stable")


def _cells(paper: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    """One formatted value per row: paper rows in the paper's order, then measured rows sorted."""
    paper_cells = pd.DataFrame({
        "source": "paper", "method": paper["method"], "arch": "", "dataset": paper["dataset"], "split": "",
        "image_size": "", "checkpoint": "", "variant": "", "metric": paper["metric"],
        "setting": paper["setting"], "n": "", "note": paper["note"],
        "cell": [format_value(v, None, m) for v, m in zip(paper["value"], paper["metric"])]})
    measured = measured_frame(measured)
    measured_cells = pd.DataFrame({
        "source": "measured", **{c: measured[c] for c in ("method", "arch", "dataset", "split", "image_size",
                                                           "checkpoint", "variant", "metric", "setting")},
        "n": [str(int(n)) if s != "full" else "" for n, s in zip(measured["n_runs"], measured["setting"])],
        "note": measured["note"],
        "cell": [format_value(m, s if n >= 2 else None, metric)  # one run has no spread
                 for m, s, n, metric in zip(measured["mean"], measured["std"], measured["n_runs"],
                                            measured["metric"])]})
    return pd.concat([paper_cells, measured_cells], ignore_index=True)


def _setting_order(setting: str) -> tuple:
    """``""`` first, then ``name=value`` by name and numeric value, then ``full``."""
    if setting in ("", "full"):
        return (0 if setting == "" else 2, "", 0.0)
    name, _, value = setting.partition("=")
    try:
        return (1, name, float(value))
    except ValueError:
        return (1, name, float("inf"))


KEYS = ["source", "method", "arch", "dataset", "split", "image_size", "checkpoint", "variant", "metric"]


def table_frame(paper: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    """The wide table: key columns, one column per setting (``value`` for the empty setting), ``n`` (runs of
    the measured cells) and ``note``; columns empty in every row are dropped."""
    cells = _cells(paper, measured)
    settings = sorted(cells["setting"].unique(), key=_setting_order)
    rows = []
    for key, group in cells.groupby(KEYS, sort=False):
        values = dict(zip(group["setting"], group["cell"]))
        notes = dict.fromkeys(part for note in group["note"] for part in note.split("; ") if part)
        rows.append({**dict(zip(KEYS, key)), **{s or "value": values.get(s, "") for s in settings},
                     "n": "/".join(sorted(set(group["n"]) - {""}, key=int)), "note": "; ".join(notes)})
    frame = pd.DataFrame(rows)
    return frame[[c for c in frame.columns if (frame[c] != "").any()]]


def per_class_frame(measured: pd.DataFrame) -> pd.DataFrame:
    """One row per measured result with per-class rows (checkpoint, setting, ...), one column per class."""
    measured = measured_frame(measured)
    keys = ["method", "arch", "dataset", "split", "image_size", "checkpoint", "variant", "setting", "metric"]
    rows = []
    for key, group in measured.groupby(keys, sort=False):
        rows.append({**dict(zip(keys, key)), **{c: format_value(m, None, metric) for c, m, metric
                                                 in zip(group["class"], group["mean"], group["metric"])}})
    frame = pd.DataFrame(rows, columns=keys) if not rows else pd.DataFrame(rows)
    frame = frame.sort_values(keys[:-2] + ["setting"], key=lambda col: col.map(_setting_order)
                              if col.name == "setting" else col, kind="stable")
    return frame[[c for c in frame.columns if (frame[c] != "").any()]]


def pipe_table(frame: pd.DataFrame) -> str:
    """``frame`` as a markdown pipe table with padded columns, readable as plain text in a terminal."""
    rows = [list(map(str, frame.columns))] + frame.astype(str).values.tolist()
    widths = [max(len(r[i]) for r in rows) for i in range(len(frame.columns))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), rule, *map(line, rows[1:])]) + "\n"


def to_markdown(frame: pd.DataFrame, title: str, caption: str) -> str:
    """A titled table of the report: title, caption, the preamble, then :func:`pipe_table`."""
    return "\n".join([f"## {title}", "", caption, PREAMBLE, "", pipe_table(frame)])


# ---------------------------------------------------------------------------------------------- figures


def plot_lowshot(measured: pd.DataFrame, paper: pd.DataFrame, path: Path) -> Path | None:
    """Score vs k (log2 axis), one panel per dataset; measured rows solid with a ±std band, paper dashed.
    ``measured`` holds low-shot store rows with a ``checkpoint`` label column; ``full`` is left out."""
    measured = measured[measured["setting"].str.startswith("k=")]
    if measured.empty:
        _note(f"skipped {path.name}: no measured low-shot rows in the store")
        return None
    paper = paper[paper["setting"].str.startswith("k=")]
    curves = [(ds, f"{m} {v} {metric} ({c})".replace("  ", " "), "-", g) for (ds, m, c, v, metric), g
              in measured.groupby(["dataset", "method", "checkpoint", "variant", "metric"], sort=True)]
    curves += [(ds, f"{m} (paper)", "--", g.rename(columns={"value": "mean"}).assign(std=np.nan, n_runs=1))
               for (ds, m), g in paper.groupby(["dataset", "method"], sort=False)]
    datasets = list(dict.fromkeys(ds for ds, *_ in curves))
    fig = Figure(figsize=(5.5 * len(datasets), 4.2))
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets):
        ks = set()
        for _, label, style, g in (c for c in curves if c[0] == dataset):
            g = g.assign(k=g["setting"].str[2:].astype(int)).sort_values("k")
            ax.plot(g["k"], g["mean"], style, marker="o", ms=3, label=label)
            spread = g["std"].where(g["n_runs"] >= 2)
            ax.fill_between(g["k"], g["mean"] - spread, g["mean"] + spread, alpha=0.2)
            ks.update(g["k"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ks), [str(k) for k in sorted(ks)])
        metrics = "/".join(sorted(set(measured.loc[measured["dataset"] == dataset, "metric"])
                                  | set(paper.loc[paper["dataset"] == dataset, "metric"])))
        ax.set(title=dataset, xlabel="labelled images per class k", ylabel=metrics)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def _load_features(file: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None, str]:
    """``features`` (N, D), ``labels`` (N,), optional ``classes`` (names) and ``title`` of one .npz."""
    with np.load(file, allow_pickle=False) as z:
        for key in ("features", "labels"):
            if key not in z:
                raise UsageError(f"{file}: no '{key}' array; a feature file holds features (N, D) and labels (N,)"
                                 f", optionally classes and title")
        feats, labels = z["features"], z["labels"].astype(int)
        classes = [str(c) for c in z["classes"]] if "classes" in z else None
        title = str(z["title"]) if "title" in z else file.stem
    if feats.ndim != 2 or labels.shape != (len(feats),) or len(feats) < 5:
        raise UsageError(f"{file}: features {feats.shape} and labels {labels.shape} must be (N, D) and (N,) "
                         f"with N >= 5")
    return feats, labels, classes, title


def tsne_embedding(features: np.ndarray, labels: np.ndarray, max_points: int = TSNE_POINTS,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE of at most ``max_points`` rows (a seeded random subset), L2-normalised first as in the kNN
    and clustering protocols. Returns (embedding (M, 2), labels (M,))."""
    if len(features) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(features), max_points, replace=False))
        features, labels = features[keep], labels[keep]
    x = features / np.linalg.norm(features, axis=1, keepdims=True).clip(min=1e-12)
    tsne = TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(x.astype(np.float32)), labels


def plot_tsne(features_dir: Path | None, path: Path, max_points: int = TSNE_POINTS) -> Path | None:
    """One t-SNE panel per ``features_dir/*.npz`` (e.g. MoCo next to PCL), points coloured by class."""
    files = sorted(Path(features_dir).glob("*.npz")) if features_dir and Path(features_dir).is_dir() else []
    if not files:
        _note(f"skipped {path.name}: no feature files (*.npz) " + (f"in {features_dir}" if features_dir else
                                                                    "(no features folder given)"))
        return None
    fig = Figure(figsize=(5 * len(files), 5))
    for ax, file in zip(fig.subplots(1, len(files), squeeze=False)[0], files):
        feats, labels, classes, title = _load_features(file)
        emb, labels = tsne_embedding(feats, labels, max_points)
        for c in np.unique(labels):
            name = classes[c] if classes and 0 <= c < len(classes) else str(c)
            ax.scatter(*emb[labels == c].T, s=4, label=name)
        ax.set(title=title, xticks=[], yticks=[])
        if len(np.unique(labels)) <= 20:  # beyond that a legend hides the plot
            ax.legend(fontsize=6, markerscale=2)
    return save_figure(fig, path)


def _cluster_rows(metrics: Path) -> list[dict]:
    """The ``"kind": "cluster"`` records of a metrics.jsonl; a partial last line (a live run) is skipped."""
    rows = []
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("kind") == "cluster" and row.get("granularities"):
            rows.append(row)
    return rows


def latest_cluster_stats(runs_dir: Path) -> dict[str, dict]:
    """Per concentration setting ("estimated", "fixed"): ``{run, epoch, stats}`` of its latest run (by the
    modification time of metrics.jsonl) that logged clusterings; ``stats`` is the last epoch's first
    granularity, a dict from :func:`pcl_bench.train.cluster_stats.cluster_statistics`."""
    found: dict[str, tuple[float, dict]] = {}
    for config_path in sorted(Path(runs_dir).glob("*/config.json")):
        metrics = config_path.parent / "metrics.jsonl"
        rows = _cluster_rows(metrics) if metrics.is_file() else []
        concentration = json.loads(config_path.read_text()).get("concentration")
        if not rows or not concentration:
            continue
        last = max(rows, key=lambda r: r["epoch"])
        mtime = metrics.stat().st_mtime
        if concentration not in found or mtime > found[concentration][0]:
            found[concentration] = (mtime, {"run": config_path.parent.name, "epoch": last["epoch"],
                                            "stats": last["granularities"][0]})
    return {c: found[c][1] for c in sorted(found)}


def _size_bin_labels() -> list[str]:
    """``0``, ``1``, ``2-3``, ``4-7``, ..., ``≥4096``: the half-open bins ``[SIZE_BINS[i], SIZE_BINS[i+1])``."""
    return [f"≥{lo}" if np.isinf(hi) else str(lo) if hi - lo == 1 else f"{lo}-{int(hi) - 1}"
            for lo, hi in pairwise(SIZE_BINS)]


def plot_cluster_sizes(runs_dir: Path | None, path: Path) -> Path | None:
    """Histogram of cluster sizes, fixed vs estimated concentration side by side (paper Figure 3a)."""
    runs = latest_cluster_stats(runs_dir) if runs_dir and Path(runs_dir).is_dir() else {}
    if not runs:
        _note(f"skipped {path.name}: no PCL run with clusterings (config.json + metrics.jsonl) "
              + (f"in {runs_dir}" if runs_dir else "(no runs folder given)"))
        return None
    if len(runs) == 1:
        _note(f"{path.name}: only '{next(iter(runs))}' concentration runs found in {runs_dir}")
    hists = np.array([r["stats"]["size_hist"] for r in runs.values()])
    used = int(np.flatnonzero(hists.any(axis=0)).max()) + 1  # drop empty bins of large sizes
    x, width = np.arange(used), 0.8 / len(runs)
    fig = Figure(figsize=(max(6.0, 0.6 * used), 4))
    ax = fig.subplots()
    for i, (concentration, run) in enumerate(runs.items()):
        s = run["stats"]
        label = (f"{concentration}: {run['run']}, epoch {run['epoch']}, K={s['k']}; phi p10-p90 "
                 f"{s['phi_p10']:.3f}-{s['phi_p90']:.3f}; {s['empty']} empty, {s['singletons']} singletons")
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, s["size_hist"][:used], width, label=label)
    ax.set_xticks(x, _size_bin_labels()[:used])
    ax.set(xlabel="cluster size (images)", ylabel="number of clusters",
           title="Cluster sizes with fixed vs estimated concentration")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))  # below: the bars fill the axes
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------- report


def build_report(store_path: str | os.PathLike, out_dir: str | os.PathLike,
                 runs_dir: str | os.PathLike | None = None, features_dir: str | os.PathLike | None = None,
                 *, paper_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write the tables (CSV + Markdown) and figures to ``out_dir``; returns file name -> path of each file
    written. ``runs_dir`` holds pretraining run folders (for ``cluster_sizes.png``), ``features_dir`` the
    ``*.npz`` feature files (for ``tsne.png``); either may be None, which skips its figure."""
    store_path, out = Path(store_path), Path(out_dir)
    paper_dir = Path(paper_dir) if paper_dir else package_path("analysis", "paper")
    if not store_path.is_file():
        raise UsageError(f"results store {store_path} does not exist; run an evaluation first (pcl-bench eval "
                         f"appends to {DEFAULT_PATH} unless given --results) or pass the store's path")
    measured = latest_rows(read_rows(store_path))
    per_class = measured[measured["class"] != ""]
    measured = measured[measured["class"] == ""]
    written: dict[str, Path] = {}
    papers = {}
    for table in TABLES:
        papers[table.protocol] = load_paper(table, paper_dir)
        stem = f"table{table.number}_{table.protocol}"
        frames = {stem: (table_frame(papers[table.protocol], measured[measured["protocol"] == table.protocol]),
                         table.title, table.caption)}
        classes = per_class[per_class["protocol"] == table.protocol]
        if table.protocol in PER_CLASS and not classes.empty:
            frames[f"{stem}_per_class"] = (per_class_frame(classes), f"{table.title}, per class",
                                           f"Measured {PER_CLASS[table.protocol]} of each class.")
        for name, (frame, title, caption) in frames.items():
            for file, text in ((f"{name}.csv", frame.to_csv(index=False)),
                               (f"{name}.md", to_markdown(frame, title, caption))):
                write_text(text, out / file)
                written[file] = out / file
    lowshot = measured[measured["protocol"] == "lowshot"]
    figures = {
        "lowshot_curves.png": lambda p: plot_lowshot(lowshot.assign(checkpoint=_checkpoint_labels(lowshot)),
                                                     papers["lowshot"], p),
        "tsne.png": lambda p: plot_tsne(features_dir, p),
        "cluster_sizes.png": lambda p: plot_cluster_sizes(runs_dir, p),
    }
    for name, plot in figures.items():
        if plot(out / name) is not None:
            written[name] = out / name
    return written
