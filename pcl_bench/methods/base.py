"""What every pretraining method provides, and the registry that maps ``--method`` names to classes."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import UsageError

if TYPE_CHECKING:
    from ..config import PretrainConfig
    from ..e_step import ClusterResult

METHODS: dict[str, type[Method]] = {}


def register(*names: str):
    """Class decorator: make the method available as ``--method <name>`` for each name."""
    def wrap(cls):
        for name in names:
            METHODS[name] = cls
        return cls
    return wrap


def method_class(cfg: PretrainConfig) -> type[Method]:
    """The class of ``--method``, with the CLOP term mixed in when ``--clop`` is set."""
    if cfg.method not in METHODS:
        raise UsageError(f"unknown --method {cfg.method!r}; choose one of {', '.join(sorted(METHODS))}")
    if not cfg.clop:
        return METHODS[cfg.method]
    from .clop import with_clop  # clop builds on this module
    return with_clop(METHODS[cfg.method])


def build_method(cfg: PretrainConfig, num_samples: int) -> Method:
    return method_class(cfg).from_config(cfg, num_samples)


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
