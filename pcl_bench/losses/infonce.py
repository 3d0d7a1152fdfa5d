"""InfoNCE with a queue of negatives: the instance term of MoCo and PCL."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCE(nn.Module):
    """Instance-discrimination InfoNCE against a queue (MoCo):

        L = -1/B sum_i log( exp(q_i . k_i / tau) / (exp(q_i . k_i / tau) + sum_j exp(q_i . n_j / tau)) )

    Args:
        temperature: tau (0.07 MoCo v1, 0.2 MoCo v2 / PCL).

    Shapes: ``q`` (B, D) and ``k`` (B, D) L2-normalised, ``negatives`` (D, R) L2-normalised columns.
    Returns ``(loss, logits)``; ``logits`` is (B, 1 + R) with the positive in column 0.
    """

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor):
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ negatives
        logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels), logits
