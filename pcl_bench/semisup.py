"""Semi-supervised evaluation: fine-tune the whole network on 1% or 10% of the labels (``pcl_reference.md`` §6).

Recipe: the PCL paper's appendix E (:class:`SemisupConfig`): SGD, batch 256, momentum 0.9, weight decay 5e-4,
lr 0.01 for the backbone and 0.1 (10% labels) or 1.0 (1% labels) for the new classifier, 20 epochs, both lrs
x0.2 at epochs 12 and 16. The lrs are the recipe's for batch 256; another batch size scales both by
batch / 256 (the linear scaling rule of Goyal et al. 2017): with the unscaled lrs at batch 64, the
small-scale spec's batch, fine-tuning on ``shapes`` diverged (train loss 7-11) and every encoder, trained or
random, ended at chance. The network is in train mode, so BN statistics are updated. Training images use
RandomResizedCrop + flip (:func:`pcl_bench.linear_probe.train_transform`), test images the centre crop.
The code the PCL author points to (MoPro ``finetune_imagenet.py``) differs: one lr 0.005 for all
parameters, weight decay 0, 40 epochs, x0.2 at 20 and 30; we follow the paper. Deliberate changes, both
unspecified by the paper: the new fc is initialised like the linear probe's (N(0, 0.01), zero bias), and
the test split is scored once, after the last epoch (MoPro scores every epoch and keeps the best, which
selects on the test set).

Label subsets are drawn once per seed, saved, and reused (:func:`load_or_draw_subset`):

- class-balanced (default): round(fraction * n_c) images of each class c (half up, at least 1);
- ``balanced=False``, the reference's draw (MoPro L206-210): shuffle the whole training list with Python's
  ``random`` seeded with ``seed`` and keep the first int(fraction * N), so class counts vary. (The
  reference seeds only its parent process, so under ``mp.spawn`` its subset is not reproducible; this is
  the draw it makes when the seed takes effect.) Neither is the SimCLR 1% / 10% ImageNet list.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .atomic import write_text
from .errors import UsageError
from .linear_probe import (
    check_labels,
    evaluate_classifier,
    make_loader,
    new_classifier,
    on_device,
    run_epochs,
)
from .pretrain import resolve_device

SUBSET_KEYS = ("fraction", "seed", "balanced", "dataset_size")
REFERENCE_BATCH = 256  # the batch of the paper's recipe; its lrs scale linearly with the batch


def label_subset(targets: np.ndarray, fraction: float, seed: int, balanced: bool = True) -> np.ndarray:
    """Sorted indices (int64) of the labelled subset of a training set with ``targets`` (N,) in 0..C-1."""
    targets = np.asarray(targets).reshape(-1)
    if not 0 < fraction <= 1:
        raise UsageError(f"label fraction must be in (0, 1], e.g. 0.01 or 0.1; got {fraction}")
    if len(targets) == 0 or targets.min() < 0:
        raise UsageError("label subsets need a labelled training split (targets >= 0); use e.g. 'train'")
    if not balanced:
        order = list(range(len(targets)))
        random.Random(seed).shuffle(order)
        chosen = np.asarray(order[: int(fraction * len(targets))], dtype=np.int64)
        if len(chosen) == 0:
            raise UsageError(f"fraction {fraction} of {len(targets)} samples selects none; use a larger fraction")
        return np.sort(chosen)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        chosen.append(rng.choice(idx, size=max(1, math.floor(fraction * len(idx) + 0.5)), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def save_subset(indices: np.ndarray, path: str | Path, meta: dict) -> None:
    """Write ``indices`` and ``meta`` (which must hold fraction, seed, balanced and dataset_size) as JSON."""
    missing = [k for k in SUBSET_KEYS if k not in meta]
    if missing:
        raise ValueError(f"subset meta lacks {missing}")
    indices = np.asarray(indices, dtype=np.int64)
    write_text(json.dumps({**meta, "n": len(indices), "indices": indices.tolist()}) + "\n", path)


def load_subset(path: str | Path, dataset_size: int) -> tuple[np.ndarray, dict]:
    """Indices (int64) and meta of a file from :func:`save_subset`, checked against the dataset's size."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read label subset {path} ({e}); pass a file written by pcl-bench or "
                         f"delete it to draw a new subset") from None
    indices = np.asarray(data.pop("indices", []), dtype=np.int64)
    if data.get("dataset_size") != dataset_size:
        raise UsageError(f"label subset {path} was drawn from {data.get('dataset_size')} images but this "
                         f"training set has {dataset_size}; use the same dataset or another subset file")
    if len(indices) != data.get("n") or (len(indices) and not 0 <= indices.min() <= indices.max() < dataset_size):
        raise UsageError(f"label subset {path} is corrupt (index count or range); delete it to draw again")
    return indices, data


def load_or_draw_subset(path: str | Path, targets: np.ndarray, fraction: float, seed: int,
                        balanced: bool = True) -> np.ndarray:
    """The subset saved at ``path`` if it exists (it must match fraction, seed and balanced), else a new
    :func:`label_subset`, saved there first."""
    targets = np.asarray(targets).reshape(-1)
    wanted = {"fraction": fraction, "seed": seed, "balanced": balanced, "dataset_size": len(targets)}
    if Path(path).exists():
        indices, meta = load_subset(path, len(targets))
        got = {k: meta.get(k) for k in SUBSET_KEYS}
        if got != wanted:
            raise UsageError(f"label subset {path} holds {got}, not the requested {wanted}; pass another "
                             f"subset path or delete this one")
        return indices
    indices = label_subset(targets, fraction, seed, balanced)
    save_subset(indices, path, wanted)
    return indices


@dataclass
class SemisupConfig:
    """The PCL paper's fine-tuning recipe (appendix E); ``for_fraction`` sets the classifier lr.

    ``lr_backbone`` and ``lr_classifier`` are for batch ``REFERENCE_BATCH`` (256); :func:`make_optimizer`
    scales them by ``batch_size / 256``.

    ``device``: "auto", "cuda" or "cpu"; ``workers``: DataLoader worker processes.
    """

    epochs: int = 20
    milestones: tuple[int, ...] = (12, 16)
    gamma: float = 0.2
    lr_backbone: float = 0.01
    lr_classifier: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    init_std: float = 0.01
    seed: int = 0
    workers: int = 4
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or min(self.lr_backbone, self.lr_classifier) <= 0:
            raise UsageError(f"fine-tuning needs epochs >= 1, batch size >= 1 and lrs > 0; got epochs "
                             f"{self.epochs}, batch size {self.batch_size}, lrs {self.lr_backbone}, "
                             f"{self.lr_classifier}")

    @classmethod
    def for_fraction(cls, fraction: float, **overrides) -> SemisupConfig:
        """Classifier lr 1.0 for 1% labels and 0.1 for 10%; other fractions take the rate of the nearer of
        the two on a log scale (the paper gives only these two)."""
        if not 0 < fraction <= 1:
            raise UsageError(f"label fraction must be in (0, 1], e.g. 0.01 or 0.1; got {fraction}")
        lr = 1.0 if fraction < math.sqrt(0.01 * 0.1) else 0.1
        return cls(**{"lr_classifier": lr, **overrides})


def make_optimizer(backbone: nn.Module, fc: nn.Linear, cfg: SemisupConfig) -> torch.optim.SGD:
    """SGD with param groups "backbone" (lr_backbone) and "classifier" (lr_classifier), both x batch / 256."""
    scale = cfg.batch_size / REFERENCE_BATCH
    lr_backbone = cfg.lr_backbone * scale
    return torch.optim.SGD([
        {"params": backbone.parameters(), "lr": lr_backbone, "name": "backbone"},
        {"params": fc.parameters(), "lr": cfg.lr_classifier * scale, "name": "classifier"},
    ], lr=lr_backbone, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def fine_tune(backbone: nn.Module, feat_dim: int, train_set: Dataset, test_set: Dataset, num_classes: int,
              cfg: SemisupConfig, log_dir: str | Path | None = None) -> dict:
    """Fine-tune ``backbone`` (images -> (N, feat_dim) pooled features, fc = Identity) with a new fc, in place.

    ``train_set`` is the labelled subset with the training augmentation, ``test_set`` the test split with the
    centre crop; both yield ``(image tensor, target, index)``. Returns ``{top1, top5, history}`` (percent,
    after the last epoch); the history is also written to ``log_dir/semisup.csv`` if given.
    """
    for name, ds in (("train", train_set), ("test", test_set)):
        if hasattr(ds, "targets"):
            check_labels(ds.targets, num_classes, name)
    device = resolve_device(cfg.device)
    fc = new_classifier(feat_dim, num_classes, cfg.init_std, cfg.seed)
    net = nn.Sequential(backbone, fc).to(device).train()
    # A last batch of one image would make train-mode BatchNorm fail: drop it then.
    train_loader = make_loader(train_set, cfg.batch_size, True, cfg.workers, device,
                               drop_last=len(train_set) % cfg.batch_size == 1)
    test_loader = make_loader(test_set, cfg.batch_size, False, cfg.workers, device)

    def batches(epoch: int):
        return on_device(train_loader, device, f"fine-tune epoch {epoch + 1}/{cfg.epochs}")

    def evaluate():
        net.eval()
        try:
            return evaluate_classifier(net, on_device(test_loader, device, "fine-tune test"))
        finally:
            net.train()

    return run_epochs(net, make_optimizer(backbone, fc, cfg), batches, evaluate, cfg.epochs, cfg.milestones,
                      cfg.gamma, cfg.seed, False, Path(log_dir) / "semisup.csv" if log_dir is not None else None)
