"""Linear classification on frozen backbone features (PCL paper, appendix E; docs/reference.md).

The reference protocol (PCL ``eval_cls_imagenet.py``, MoCo ``main_lincls.py``): a new fc layer on the raw
pooled backbone feature (no normalisation, no extra BN), weight ~ N(0, 0.01), bias 0; the backbone frozen and
kept in ``eval()`` mode while training, so its BN statistics do not move either; SGD (momentum 0.9, weight
decay 0) over the fc only, batch 256, 100 epochs, lr x0.1 at epochs 60 and 80 (stepped per epoch); train
images RandomResizedCrop(224) (scale 0.08-1) + horizontal flip, test images Resize(256) + CenterCrop(224);
top-1 and top-5 on the test split after every epoch. The lr is 5 in the PCL code (the PCL paper, appendix E,
says 10) and 30 in the MoCo code (``--lr 30``).

Two modes:

- ``"full"``: the reference protocol above, on image datasets (:func:`train_linear`).
- ``"fast"`` (a deliberate small-scale change): the same layer, initialisation, optimiser and schedule, trained
  on features computed once from centre-cropped images, i.e. without the RandomResizedCrop + flip
  augmentation (:func:`train_linear_on_features`). Each epoch shuffles all samples and cuts them into
  minibatches of ``batch_size``. Thousands of samples train in seconds.

The reported accuracy is the last epoch's, as in PCL (MoCo's ``best_acc1`` picks the epoch on the test set).
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm import tqdm

from ..data.augment import IMAGENET_MEAN, IMAGENET_STD
from ..runtime.atomic import write_text
from ..runtime.device import resolve_device
from ..runtime.errors import UsageError
from ..runtime.seeding import seed_epoch
from .features import extract_features

MODES = ("full", "fast")
Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class LinearProbeConfig:
    """Settings of the linear probe; the defaults are the PCL reference (lr 5, ``"full"`` mode).

    ``device``: "auto", "cuda" or "cpu". ``workers``: DataLoader worker processes (``"full"`` mode and the
    feature pass of ``"fast"`` mode).
    """

    epochs: int = 100
    milestones: tuple[int, ...] = (60, 80)
    gamma: float = 0.1
    lr: float = 5.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256
    init_std: float = 0.01
    seed: int = 0
    workers: int = 4
    device: str = "auto"
    mode: str = "full"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown linear-probe mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError(f"linear probe needs epochs >= 1, batch size >= 1 and lr > 0; got epochs "
                             f"{self.epochs}, batch size {self.batch_size}, lr {self.lr}")


def train_transform(size: int = 224) -> T.Compose:
    """RandomResizedCrop(``size``) with the default scale (0.08, 1), horizontal flip, ToTensor, Normalize."""
    return T.Compose([
        T.RandomResizedCrop(size),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def new_classifier(feat_dim: int, num_classes: int, std: float = 0.01, seed: int = 0) -> nn.Linear:
    """Linear(feat_dim, num_classes) with weight ~ N(0, std) drawn from ``seed`` and zero bias."""
    fc = nn.Linear(feat_dim, num_classes)
    nn.init.normal_(fc.weight, 0.0, std, generator=torch.Generator().manual_seed(seed))
    nn.init.zeros_(fc.bias)
    return fc


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """For each k, how many rows of ``logits`` (N, C) have their target among the top min(k, C) scores."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == targets.view(-1, 1)
    return [int(hit[:, :k].sum()) for k in ks]


@torch.no_grad()
def evaluate_classifier(net: Callable[[torch.Tensor], torch.Tensor], batches: Iterable) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent of ``net`` over ``(inputs, targets)`` batches already on device."""
    correct, n = np.zeros(2), 0
    for x, y in batches:
        correct += topk_correct(net(x), y)
        n += len(y)
    top1, top5 = correct * 100.0 / max(n, 1)
    return float(top1), float(top5)


def check_labels(labels: np.ndarray | torch.Tensor, num_classes: int, what: str) -> None:
    """UsageError unless every label lies in 0..num_classes-1 (unlabelled samples are -1)."""
    labels = np.asarray(labels)
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise UsageError(f"{what} labels must lie in 0..{num_classes - 1} (got {len(labels)} labels, range "
                         f"{labels.min() if len(labels) else '-'}..{labels.max() if len(labels) else '-'}); "
                         f"use a labelled split and the dataset's number of classes")


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, workers: int, device: torch.device,
                drop_last: bool = False) -> DataLoader:
    """A loader of ``(images, target, index)`` items; shuffling follows the global torch seed."""
    return DataLoader(ds, batch_size, shuffle=shuffle, num_workers=workers, drop_last=drop_last,
                      pin_memory=device.type == "cuda")


def on_device(loader: DataLoader, device: torch.device, desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, targets)`` of every batch of ``loader``, moved to ``device``, with a tqdm bar."""
    for images, target, _ in tqdm(loader, desc=desc, leave=False, mininterval=5):
        yield images.to(device, non_blocking=True), target.to(device, non_blocking=True)


def write_history(rows: list[dict], path: Path) -> None:
    """Rewrite the per-epoch CSV ``path`` atomically (header = union of the rows' keys)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    write_text(buf.getvalue(), path)


def run_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, evaluate: Callable,
               epochs: int, milestones: tuple[int, ...], gamma: float, seed: int, eval_every_epoch: bool,
               csv_path: Path | None) -> dict:
    """SGD on cross-entropy with a per-epoch step schedule; returns ``{top1, top5, history}``.

    ``batches(epoch)`` yields ``(inputs, targets)`` on device; ``evaluate()`` returns (top1, top5) and runs
    after every epoch or only after the last one. Every epoch first reseeds Python, NumPy and torch from
    (seed, epoch), so shuffling and augmentation are reproducible. Optimizer param groups carry a "name";
    each history row records ``lr_<name>``, the train loss and top-1, and the test accuracies when measured.
    """
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma)
    history: list[dict] = []
    top1 = top5 = float("nan")
    for epoch in range(epochs):
        seed_epoch(seed, epoch, 0)
        row: dict = {"epoch": epoch, **{f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups}}
        loss_sum, correct, n = 0.0, 0, 0
        for x, y in batches(epoch):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += topk_correct(logits.detach(), y, (1,))[0]
            n += len(y)
        scheduler.step()
        row.update(train_loss=loss_sum / max(n, 1), train_top1=correct * 100.0 / max(n, 1))
        if eval_every_epoch or epoch == epochs - 1:
            top1, top5 = evaluate()
            row.update(test_top1=top1, test_top5=top5)
        history.append(row)
        if csv_path is not None:
            write_history(history, csv_path)
    return {"top1": top1, "top5": top5, "history": history}


def _probe_optimizer(fc: nn.Linear, cfg: LinearProbeConfig) -> torch.optim.SGD:
    return torch.optim.SGD([{"params": fc.parameters(), "name": "classifier"}], lr=cfg.lr,
                           momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_linear_on_features(train_feats: torch.Tensor | np.ndarray, train_labels: torch.Tensor | np.ndarray,
                             test_feats: torch.Tensor | np.ndarray, test_labels: torch.Tensor | np.ndarray,
                             num_classes: int, cfg: LinearProbeConfig, log_dir: str | Path | None = None) -> dict:
    """``"fast"`` mode: train the linear layer on fixed features (N, D) with labels (N,) in 0..C-1.

    Returns ``{top1, top5, history}`` (percent; top-5 is top-min(5, C)); the history is also written to
    ``log_dir/linear.csv`` if given.
    """
    check_labels(train_labels, num_classes, "train")
    check_labels(test_labels, num_classes, "test")
    device = resolve_device(cfg.device)
    xtr, ytr, xte, yte = (torch.as_tensor(a).to(device) for a in (train_feats, train_labels, test_feats, test_labels))
    xtr, xte, ytr, yte = xtr.float(), xte.float(), ytr.long(), yte.long()
    fc = new_classifier(xtr.shape[1], num_classes, cfg.init_std, cfg.seed).to(device)

    def batches(epoch: int):
        order = torch.randperm(len(ytr)).to(device)  # drawn from the per-epoch seed
        for idx in order.split(cfg.batch_size):
            yield xtr[idx], ytr[idx]

    def evaluate():
        return evaluate_classifier(fc, zip(xte.split(4096), yte.split(4096)))

    return run_epochs(fc, _probe_optimizer(fc, cfg), batches, evaluate, cfg.epochs, cfg.milestones, cfg.gamma,
                      cfg.seed, True, Path(log_dir) / "linear.csv" if log_dir is not None else None)


def train_linear(backbone: nn.Module, feat_dim: int, train_set: Dataset, test_set: Dataset, num_classes: int,
                 cfg: LinearProbeConfig, log_dir: str | Path | None = None) -> dict:
    """Linear probe of ``backbone`` (images (N, 3, H, W) -> pooled features (N, feat_dim), i.e. fc = Identity).

    ``train_set`` / ``test_set`` yield ``(image tensor, target, index)`` with their transforms already set:
    in ``"full"`` mode :func:`train_transform` for train and ``eval_transform`` for test; in ``"fast"`` mode
    ``eval_transform`` for both (features are computed once, then :func:`train_linear_on_features`).
    The backbone is never updated and is returned to its previous train/eval mode.
    Returns ``{top1, top5, history}``; the history is also written to ``log_dir/linear.csv`` if given.
    """
    device = resolve_device(cfg.device)
    was_training = backbone.training
    backbone.to(device).eval()
    try:
        if cfg.mode == "fast":
            feats = [extract_features(backbone, make_loader(ds, cfg.batch_size, False, cfg.workers, device),
                                      device, desc=f"{name} features")
                     for name, ds in (("train", train_set), ("test", test_set))]
            return train_linear_on_features(*feats[0], *feats[1], num_classes, cfg, log_dir)
        for name, ds in (("train", train_set), ("test", test_set)):
            if hasattr(ds, "targets"):
                check_labels(ds.targets, num_classes, name)
        fc = new_classifier(feat_dim, num_classes, cfg.init_std, cfg.seed).to(device)
        train_loader = make_loader(train_set, cfg.batch_size, True, cfg.workers, device)
        test_loader = make_loader(test_set, cfg.batch_size, False, cfg.workers, device)

        def frozen_features(loader: DataLoader, desc: str):
            for images, target in on_device(loader, device, desc):
                with torch.no_grad():  # the backbone is fixed: only the fc needs gradients
                    feats = backbone(images)
                yield feats, target

        def batches(epoch: int):
            return frozen_features(train_loader, f"linear epoch {epoch + 1}/{cfg.epochs}")

        def evaluate():
            return evaluate_classifier(fc, frozen_features(test_loader, "linear test"))

        return run_epochs(fc, _probe_optimizer(fc, cfg), batches, evaluate, cfg.epochs, cfg.milestones,
                          cfg.gamma, cfg.seed, True, Path(log_dir) / "linear.csv" if log_dir is not None else None)
    finally:
        backbone.train(was_training)
