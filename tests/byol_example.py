"""A method added from outside the package, as a user would: BYOL (Grill et al. 2020) in one module, registered
with :func:`pcl_bench.methods.register`. An online encoder with a predictor regresses the projection of the
other view by a momentum target encoder; no negatives, no queue.

    L = (2 - 2 cos(p(z1), z2')) + (2 - 2 cos(p(z2), z1'))

with z = online projections, z' = target projections (no gradient), p the predictor MLP.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from pcl_bench.methods import Method, register
from pcl_bench.models import encoder_from_config


@register("byol_example", head="mlp", temperature=0.2, aug="v2", cos=True)
class BYOL(Method):
    """Args: encoder (images -> (B, dim) projections), dim, momentum m of the target encoder."""

    def __init__(self, encoder: nn.Module, dim: int = 128, momentum: float = 0.99):
        super().__init__()
        self.encoder_q, self.momentum = encoder, momentum
        self.predictor = nn.Sequential(nn.Linear(dim, 4 * dim), nn.BatchNorm1d(4 * dim), nn.ReLU(),
                                       nn.Linear(4 * dim, dim))
        self.target = copy.deepcopy(encoder).requires_grad_(False)

    @classmethod
    def from_config(cls, cfg, num_samples: int):
        return cls(encoder_from_config(cfg), cfg.dim, cfg.moco_m)

    def forward(self, views, index, clusters=None):
        with torch.no_grad():
            for p_t, p_o in zip(self.target.parameters(), self.encoder_q.parameters()):
                p_t.lerp_(p_o.detach(), 1 - self.momentum)
            targets = [F.normalize(self.target(v), dim=1) for v in views]
        preds = [F.normalize(self.predictor(self.encoder_q(v)), dim=1) for v in views]
        loss = sum((2 - 2 * (p * t).sum(dim=1)).mean() for p, t in zip(preds, reversed(targets)))
        return {"loss": loss}
