"""CLOP (Li, Nguyen & Pimentel-Alarcón 2025): pull labelled embeddings toward fixed orthonormal class
prototypes.

The prototypes are one unit vector per class, orthonormal (C C^T = I_k), drawn once from a seed and never
trained (the CLOP code). The term has no softmax, temperature or repulsion: orthogonality between
classes comes from the fixed targets alone (§1.2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.errors import UsageError


def check_prototypes_fit(num_classes: int, dim: int) -> None:
    """Raise UsageError unless ``num_classes`` orthonormal prototypes fit in a ``dim``-d projection."""
    if num_classes > dim:
        raise UsageError(f"CLOP needs one orthonormal prototype per class, but {num_classes} classes do not "
                         f"fit in the {dim}-d projection output; set --dim >= {num_classes} "
                         f"(e.g. --dim 1024 for ImageNet's 1000 classes, as the CLOP code does)")


def orthonormal_prototypes(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """(k, d) float32 prototypes: the first k right singular vectors of a seeded N(0, 1) k x d matrix.

    Computed in float64 on the CPU from a private generator (the global RNG is untouched), so every process
    with the same (k, d, seed) gets the same frame. Each row's sign is fixed so that its largest-magnitude
    entry is positive: SVD leaves singular-vector signs to the LAPACK build.
    """
    check_prototypes_fit(num_classes, dim)
    a = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    vh = torch.linalg.svd(a, full_matrices=False).Vh                       # (k, d), orthonormal rows
    rows = torch.arange(num_classes)
    vh = vh * vh[rows, vh.abs().argmax(dim=1)].sign().unsqueeze(1)
    return vh.float()


class CLOPLoss(nn.Module):
    """The CLOP prototype term, averaged over views and over the labelled samples of the batch:

        L = lambda / |S| sum_{i in S} (1 - 1/V sum_v cos(z_i^v, c_{y_i})),   S = {i : y_i >= 0}

    z_i^v is the projection output of view v of sample i (normalised here, so raw outputs may be passed),
    c_y the prototype of class y. Unlabelled samples (y = -1) contribute nothing; a batch without labelled
    samples gives 0. The mean over S is per process, as in the reference code.

    Args:
        prototypes: (k, d) orthonormal rows (:func:`orthonormal_prototypes`), a buffer: saved, not trained.
        weight: lambda (1.0 in the CLOP code).

    Shapes: ``views`` a list of V tensors (B, d); ``labels`` (B,) long in -1..k-1. Returns a 0-d tensor.
    """

    def __init__(self, prototypes: torch.Tensor, weight: float = 1.0):
        super().__init__()
        self.weight = weight
        self.register_buffer("prototypes", prototypes)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        labelled = labels >= 0
        targets = self.prototypes[labels[labelled]]                          # (|S|, d)
        cos = torch.stack([(F.normalize(z[labelled].float(), dim=1) * targets).sum(dim=1) for z in views])
        if cos.shape[1] == 0:
            return cos.sum()  # 0, still attached to the graph
        return self.weight * (1 - cos.mean(dim=0)).mean()
