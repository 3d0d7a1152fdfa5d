"""Dimensional-collapse metrics of an encoder's embeddings (docs/reference.md).

For embeddings Z (n, d), L2-normalised row-wise, with covariance C = cov(Z) (d, d):

- **spectrum**: the singular values of C in descending order (C is symmetric PSD, so they are its
  eigenvalues lambda_k), plotted on a log scale as in Jing et al. (2022); collapse is a tail of near-zero
  values;
- **effective rank** (RankMe, Garrido et al. 2023; Roy & Vetterli 2007): exp(-sum_k p_k log p_k) with
  p_k = sigma_k / sum_j sigma_j over the singular values sigma_k = sqrt((n - 1) lambda_k) of the centred Z;
- **rank95**: the fewest sigma_k holding 95% of their sum (the CLOP precursor's rank), over all samples and
  within each class (each class centred on its own mean);
- **total variance**: trace(C), the mean squared distance of the unit embeddings to their mean (the CLOP
  precursor's "embedding variance"), between 0 (all equal) and 1.

A fully collapsed set (zero variance) has effective rank and rank95 0. Metrics are computed for the backbone
feature (fc removed) and, when the checkpoint has one, the projection-head output.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # no pyplot: Agg rendering without global backend state
from torch import nn
from torch.utils.data import DataLoader

from ..data import build_dataset, default_splits
from ..data.augment import eval_transform
from ..eval.features import extract_features
from ..eval.store import append_rows, make_row
from ..models.checkpoints import detect_prefix, load_backbone, read_checkpoint
from ..models.encoders import build_encoder, feature_dim
from ..runtime.atomic import save_figure, write_json
from ..runtime.device import resolve_device

MASS = 0.95
# Covariance eigenvalues below this are rounding noise (unit-norm embeddings have trace <= 1) and count as 0.
NUMERICAL_ZERO = 1e-13


# ---------------------------------------------------------------------------------------------- metrics


def spectrum(z: torch.Tensor) -> torch.Tensor:
    """Singular values (d,) float64, descending, of the covariance of the L2-normalised rows of ``z`` (n, d).

    Computed from the smaller of the d x d covariance and the n x n Gram matrix of the centred rows (their
    non-zero eigenvalues agree), so a class of 50 samples in 2048-d costs a 50 x 50 eigenproblem. Values below
    ``NUMERICAL_ZERO`` are set to 0.
    """
    n, d = z.shape
    if n < 2:
        return torch.zeros(d, dtype=torch.float64)
    z = F.normalize(z.double(), dim=1)
    z = z - z.mean(dim=0)
    small = z @ z.T if n < d else z.T @ z
    eig = torch.linalg.eigvalsh(small / (n - 1)).flip(0)
    eig = torch.where(eig > NUMERICAL_ZERO, eig, torch.zeros_like(eig))
    return F.pad(eig, (0, d - eig.numel()))


def effective_rank(eigenvalues: torch.Tensor) -> float:
    """RankMe of the centred embeddings from their covariance eigenvalues (any order); 0 for zero variance."""
    sigma = eigenvalues.clamp_min(0).sqrt()
    if sigma.sum() <= 0:
        return 0.0
    p = sigma / sigma.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def mass_rank(eigenvalues: torch.Tensor, mass: float = MASS) -> int:
    """The fewest singular values sigma_k = sqrt(lambda_k) of the centred embeddings holding ``mass`` of
    their sum."""
    sigma = eigenvalues.clamp_min(0).sqrt().sort(descending=True).values
    total = sigma.sum()
    if total <= 0:
        return 0
    cumulative = sigma.cumsum(0)
    # The tolerance lets r equal values reach exactly k / r of the sum at k.
    return int((cumulative < mass * total * (1 - 1e-9)).sum()) + 1


def collapse_metrics(z: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
    """Metrics of embeddings ``z`` (n, d); ``labels`` (n,) (-1: unlabelled, ignored) add the per-class rank95.

    Returns {dim, n, effective_rank, rank95, total_variance, spectrum (list, descending)} and, with labels,
    rank95_per_class ({class: rank95} over classes with >= 2 samples) and rank95_class_mean.
    """
    eig = spectrum(z)
    out: dict[str, Any] = {"dim": z.shape[1], "n": z.shape[0], "effective_rank": effective_rank(eig),
                           "rank95": mass_rank(eig), "total_variance": float(eig.sum()),
                           "spectrum": eig.tolist()}
    if labels is not None:
        per_class = {int(c): mass_rank(spectrum(z[labels == c])) for c in labels.unique().tolist()
                     if c >= 0 and int((labels == c).sum()) >= 2}
        out["rank95_per_class"] = per_class
        if per_class:
            out["rank95_class_mean"] = float(np.mean(list(per_class.values())))
    return out


# ---------------------------------------------------------------------------------------------- encoders


def load_encoder(path: str | os.PathLike) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
    """The checkpoint's backbone (fc = Identity, eval), its projection head (eval; None for torchvision
    weights, whose fc is a classifier) and :func:`pcl_bench.models.checkpoints.load_backbone`'s info plus
    ``image_size`` (the training crop size saved in a pcl-bench run's config, else None)."""
    backbone, info = load_backbone(path)
    ckpt = read_checkpoint(path)
    state, prefix = ckpt["state_dict"], detect_prefix(ckpt["state_dict"]) or ""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    info["image_size"] = config.get("image_size")
    fc = {k[len(prefix) + 3:]: v for k, v in state.items() if k.startswith(prefix + "fc.")}
    if info["kind"] == "torchvision" or not fc:
        return backbone, None, info
    mlp = "0.weight" in fc
    dim = fc["2.weight" if mlp else "weight"].shape[0]
    head = build_encoder(info["arch"], dim, "mlp" if mlp else "linear", info["stem"]).fc
    head.load_state_dict(fc)
    return backbone, head.eval(), info


@torch.no_grad()
def embed(backbone: nn.Module, head: nn.Module | None, loader: DataLoader, device: torch.device
          ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({"backbone": (N, F), "projection": (N, d) if ``head``}, targets) over ``loader``, in one pass."""
    backbone, head = backbone.eval().to(device), head.eval().to(device) if head is not None else None

    def both(x: torch.Tensor) -> torch.Tensor:
        h = backbone(x)
        return torch.cat([h, head(h)], dim=1) if head is not None else h

    feats, targets = extract_features(both, loader, device, desc="collapse features")
    width = feature_dim(backbone)
    spaces = {"backbone": feats[:, :width]}
    if head is not None:
        spaces["projection"] = feats[:, width:]
    return spaces, targets


def measure_checkpoint(checkpoint: str | os.PathLike, dataset: str, data_root: str | None = None,
                       split: str | None = None, image_size: int | None = None, device: str = "auto",
                       workers: int = 2, batch_size: int = 256
                       ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Collapse metrics of ``checkpoint`` on ``split`` (default: the dataset's test split) under the centre
    crop of ``image_size`` (default: the run's training crop, else the dataset's native size).

    Returns ({space: :func:`collapse_metrics`} for backbone and, if present, projection; the encoder info plus
    split, image_size and the number of images).
    """
    backbone, head, info = load_encoder(checkpoint)
    split = split or default_splits(dataset, data_root)[1]
    ds = build_dataset(dataset, data_root, split, None)
    size = image_size or info["image_size"] or ds.image_size
    ds.transform = eval_transform(size)
    dev = resolve_device(device)
    loader = DataLoader(ds, batch_size, shuffle=False, num_workers=workers, pin_memory=dev.type == "cuda")
    spaces, targets = embed(backbone, head, loader, dev)
    labels = targets if targets.ndim == 1 else None  # multi-label sets: no per-class rank
    metrics = {space: collapse_metrics(z, labels) for space, z in spaces.items()}
    return metrics, {**info, "split": split, "image_size": size, "images": len(ds)}


# ---------------------------------------------------------------------------------------------- outputs


def plot_spectra(metrics: dict[str, dict[str, Any]], title: str, path: str | os.PathLike) -> Path:
    """One log-scale panel per space of its covariance singular values (zeros drawn at ``NUMERICAL_ZERO``)."""
    fig = Figure(figsize=(5 * len(metrics), 3.6))
    for ax, (space, m) in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics.items()):
        s = np.maximum(np.asarray(m["spectrum"]), NUMERICAL_ZERO)
        ax.semilogy(np.arange(1, len(s) + 1), s)
        ax.set_title(f"{space} ({m['dim']}-d): eff. rank {m['effective_rank']:.1f}, rank95 {m['rank95']}",
                     fontsize=9)
        ax.set_xlabel("singular value index")
        ax.set_ylabel("singular value of the covariance")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def format_metrics(metrics: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one line per space."""
    lines = [f"{'space':<11} {'dim':>5} {'eff.rank':>9} {'rank95':>7} {'rank95/class':>13} {'total var':>10}"]
    for space, m in metrics.items():
        lines.append(f"{space:<11} {m['dim']:>5} {m['effective_rank']:>9.2f} {m['rank95']:>7} "
                     f"{m.get('rank95_class_mean', float('nan')):>13.2f} {m['total_variance']:>10.4f}")
    return "\n".join(lines)


def analyze_collapse(checkpoint: str | os.PathLike, dataset: str, data_root: str | None = None,
                     split: str | None = None, results: str | os.PathLike = "results/store.jsonl",
                     image_size: int | None = None, label: str | None = None, device: str = "auto",
                     workers: int = 2, batch_size: int = 256) -> dict[str, Any]:
    """Measure ``checkpoint`` (:func:`measure_checkpoint`), write the spectrum PNG and a JSON of every metric
    (spectra, per-class ranks) to ``<results folder>/collapse/``, and append one store row per (space, metric)
    under protocol ``collapse``. Returns {metrics, info, png, json, rows}."""
    metrics, info = measure_checkpoint(checkpoint, dataset, data_root, split, image_size, device, workers,
                                       batch_size)
    method = label or info["method"]
    stem = re.sub(r"[^\w.-]+", "_", f"{dataset}_{method}_{info['sha256'][:8]}")
    png, json_path = (Path(results).parent / "collapse" / f"{stem}.{ext}" for ext in ("png", "json"))
    plot_spectra(metrics, f"{method} on {dataset} {info['split']} ({info['images']} images)", png)
    write_json({"checkpoint": str(checkpoint), "dataset": dataset, **info, "metrics": metrics}, json_path)
    params = {"image_size": info["image_size"], "images": info["images"], "mass": MASS}
    rows = [make_row(method=method, checkpoint=str(checkpoint), checkpoint_sha256=info["sha256"],
                     arch=info["arch"], dataset=dataset, train_split="", test_split=info["split"],
                     protocol="collapse", setting=space, metric=metric, mean=m[metric], std=0.0, n_runs=1,
                     seeds=[], params=params)
            for space, m in metrics.items()
            for metric in ("effective_rank", "rank95", "rank95_class_mean", "total_variance") if metric in m]
    append_rows(rows, results)
    return {"metrics": metrics, "info": info, "png": png, "json": json_path, "rows": rows}
