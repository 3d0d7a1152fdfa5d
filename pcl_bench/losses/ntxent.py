"""NT-Xent (SimCLR): end-to-end contrast against the other samples of the batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NTXent(nn.Module):
    """Normalised-temperature cross entropy over 2N views (SimCLR):

        L = -1/(2N) sum_a log( exp(z_a . z_p(a) / tau) / sum_{b != a} exp(z_a . z_b / tau) )

    where p(a) is the other view of the same image and b runs over all 2N - 1 other views of the batch
    (all ranks' views when ``z1_all``/``z2_all`` are gathered).

    Args:
        temperature: tau (0.5 is SimCLR's small-batch value, 0.1 its ImageNet value).

    Shapes: ``z1``, ``z2`` (B, D) L2-normalised local views; ``z1_all``, ``z2_all`` (W*B, D) the views of all
    W ranks (default: the local ones); ``offset`` the position of the local rows inside the gathered ones.
    Returns ``(loss, logits, targets)``: logits (2B, 2WB) for the local anchors, targets (2B,) the positives' columns.
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, z1_all: torch.Tensor | None = None,
                z2_all: torch.Tensor | None = None, offset: int = 0):
        z1_all = z1 if z1_all is None else z1_all
        z2_all = z2 if z2_all is None else z2_all
        b, n = z1.shape[0], z1_all.shape[0]
        anchors = torch.cat([z1, z2])                    # (2B, D)
        candidates = torch.cat([z1_all, z2_all])         # (2N, D)
        logits = anchors @ candidates.T / self.temperature
        rows = torch.arange(2 * b, device=z1.device)
        own = torch.cat([rows[:b] + offset, rows[b:] - b + n + offset])   # each anchor's own column
        positive = torch.cat([own[:b] + n, own[b:] - n])                  # the other view's column
        logits[rows, own] = float("-inf")                                 # a view is not its own negative
        return F.cross_entropy(logits, positive), logits, positive
