"""Semi-supervised evaluation: fine-tune the whole network on 1% or 10% of the labels (PCL paper, Table 2 and appendix E).

Recipe: the PCL paper's appendix E (:class:`SemisupConfig`): SGD, batch 256, momentum 0.9, weight decay 5e-4,
lr 0.01 for the backbone and 0.1 (10% labels) or 1.0 (1% labels) for the new classifier, 20 epochs, both lrs
x0.2 at epochs 12 and 16. The lrs are the recipe's for batch 256; another batch size scales both by
batch / 256 (the linear scaling rule of Goyal et al. 2017): with the unscaled lrs at batch 64, the
small-scale spec's batch, fine-tuning on ``shapes`` diverged (train loss 7-11) and every encoder, trained or
random, ended at chance. The network is in train mode, so BN statistics are updated. Training images use
RandomResizedCrop + flip (:func:`pcl_bench.eval.linear.train_transform`), test images the centre crop.
The code the PCL author points to (MoPro ``finetune_imagenet.py``) differs: one lr 0.005 for all
parameters, weight decay 0, 40 epochs, x0.2 at 20 and 30; we follow the paper. Deliberate changes, both
unspecified by the paper: the new fc is initialised like the linear probe's (N(0, 0.01), zero bias), and
the test split is scored once, after the last epoch (MoPro scores every epoch and keeps the best, which
selects on the test set).
The labelled subsets are :mod:`pcl_bench.data.subsets`'s, drawn once per seed and saved next to the results.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..runtime.device import resolve_device
from ..runtime.errors import UsageError
from .linear import (
    check_labels,
    evaluate_classifier,
    make_loader,
    new_classifier,
    on_device,
    run_epochs,
)

REFERENCE_BATCH = 256  # the batch of the paper's recipe; its lrs scale linearly with the batch


@dataclass
class SemisupConfig:
    """The PCL paper's fine-tuning recipe (appendix E), as the protocol specs state it (:meth:`from_spec`).

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
        self.milestones = tuple(self.milestones)
        if self.epochs < 1 or self.batch_size < 1 or min(self.lr_backbone, self.lr_classifier) <= 0:
            raise UsageError(f"fine-tuning needs epochs >= 1, batch size >= 1 and lrs > 0; got epochs "
                             f"{self.epochs}, batch size {self.batch_size}, lrs {self.lr_backbone}, "
                             f"{self.lr_classifier}")

    @classmethod
    def from_spec(cls, spec: dict, fraction: float, **settings) -> SemisupConfig:
        """The config of label ``fraction`` from a resolved spec: every field it sets, and the classifier lr
        its ``[lr_classifier]`` table gives that fraction (the paper: 1.0 for 1 %, 0.1 for 10 %)."""
        if not 0 < fraction <= 1:
            raise UsageError(f"label fraction must be in (0, 1], e.g. 0.01 or 0.1; got {fraction}")
        lrs = {float(f): lr for f, lr in spec["lr_classifier"].items()}
        if fraction not in lrs:
            raise UsageError(f"{spec['spec']} gives no classifier lr for label fraction {fraction:g} (it has "
                             f"{', '.join(f'{f:g}' for f in lrs)}); add one to its [lr_classifier] table")
        names = {f.name for f in fields(cls)} - {"lr_classifier"}
        return cls(**{k: v for k, v in spec.items() if k in names}, lr_classifier=lrs[fraction], **settings)


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
