"""What every pretraining method provides, and the registry that maps ``--method`` names to classes and recipes.

A method is one registered class: ``@register(name, **preset)`` makes it ``--method name`` with the reference
recipe ``preset`` at ImageNet scale (config fields, e.g. ``head="mlp", temperature=0.2``); ``on`` holds its
changes to a small-scale dataset's preset (``on={"shapes": {"queue": 512}}``). The class checks its own options
(:meth:`Method.check`) and builds itself from a config (:meth:`Method.from_config`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..runtime.errors import UsageError

if TYPE_CHECKING:
    from ..config import PretrainConfig
    from ..train.e_step import ClusterResult

METHODS: dict[str, type[Method]] = {}
PRESETS: dict[str, dict[str, Any]] = {}  # name -> reference recipe
DATASET_PRESETS: dict[str, dict[str, dict[str, Any]]] = {}  # name -> dataset -> changes to its small preset


def register(name: str, on: dict[str, dict[str, Any]] | None = None, **preset: Any):
    """Class decorator: ``--method name`` builds this class, with ``preset`` (and ``on[dataset]``) as its
    recipe. Several decorators register one class under several names (e.g. ``moco`` and ``moco_v2``)."""
    def wrap(cls):
        METHODS[name], PRESETS[name], DATASET_PRESETS[name] = cls, preset, on or {}
        return cls
    return wrap


class Method(nn.Module):
    """A pretraining method: ``forward(views, index, clusters)`` returns a dict with ``loss`` and metrics.

    ``views`` is a list of ``num_views`` image batches (B, 3, H, W); ``index`` (B,) the dataset indices.
    ``encoder_q`` is the network whose backbone is evaluated; ``clustering_encoder`` the one whose
    embeddings the E-step clusters (``None`` when the method does not cluster). A method with ``uses_labels``
    gets the training labels from :meth:`attach_labels` before training.
    """

    num_views: int = 2
    uses_labels: bool = False
    clusters: bool = False  # True: the engine runs the E-step before each epoch after the warm-up
    encoder_q: nn.Module

    @classmethod
    def from_config(cls, cfg: PretrainConfig, num_samples: int) -> Method:
        raise NotImplementedError

    @classmethod
    def check(cls, cfg: PretrainConfig, num_samples: int, num_classes: int | None, local_batch: int) -> None:
        """Raise UsageError naming the fix if ``cfg`` cannot train this method on ``num_samples`` images of
        ``num_classes`` classes at ``local_batch`` per process; subclasses extend it (``super().check``)."""
        flags = f"--method {cfg.method}" + (" --clop" if cfg.clop else "")
        if cls.uses_labels and cfg.label_fraction is None:
            raise UsageError(f"{flags} trains with labels; pass --label-fraction, e.g. 0.1 (1 keeps every label)")
        if not cls.uses_labels and cfg.label_fraction is not None:
            raise UsageError(f"--label-fraction applies only to methods that train with labels (clop, supcon, "
                             f"supcon_clop, or any method with --clop); drop it or add --clop to {flags}")
        if cfg.label_fraction is not None and not 0 < cfg.label_fraction <= 1:
            raise UsageError(f"--label-fraction must be in (0, 1], e.g. 0.1; got {cfg.label_fraction}")

    @property
    def clustering_encoder(self) -> nn.Module | None:
        return None

    def attach_labels(self, labels: torch.Tensor, num_classes: int, cfg: PretrainConfig) -> None:
        """Keep ``labels`` (N,) long, the class of each training sample or -1 if unlabelled, as the buffer
        ``labels`` (indexed with the batch ``index``). Not saved in checkpoints: the engine rebuilds it from
        the run's label-subset file, so a resumed run sees the same labels."""
        self.register_buffer("labels", labels.long(), persistent=False)

    def forward(self, views: list[torch.Tensor], index: torch.Tensor,
                clusters: ClusterResult | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def top1(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy in percent, a 0-d tensor (no host sync)."""
    return (logits.argmax(dim=1) == labels).float().mean() * 100
