"""Semi-supervised SupCon: SupCon's positives for labelled samples, SimCLR's for unlabelled ones."""
from __future__ import annotations

import torch
from torch import nn


class SemiSupCon(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020, the L_out form) over 2N views with partial labels:

        L = -1/(2B) sum_a 1/|P(a)| sum_{p in P(a)} log( exp(z_a.z_p / tau) / sum_{b != a} exp(z_a.z_b / tau) )

    P(a) holds the other view of a's image and, when a's image is labelled (y >= 0), every view of the other
    labelled images of its class; an unlabelled image (y = -1) has only its own other view, so with no labels
    the loss is NT-Xent exactly. The CLOP code's SupCon differs: cross-view logits only, one direction, and
    the log of the summed positives (L_in), which Khosla et al. found worse.

    Args:
        temperature: tau.

    Shapes: ``z1``, ``z2`` (B, D) L2-normalised local views with ``labels`` (B,); ``z1_all``, ``z2_all``
    (W*B, D) and ``labels_all`` (W*B,) those of all W ranks (default: the local ones); ``offset`` the
    position of the local rows inside the gathered ones. Returns ``(loss, logits, targets)`` as
    :class:`NTXent` does: logits (2B, 2WB), targets (2B,) the other views' columns.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor,
                z1_all: torch.Tensor | None = None, z2_all: torch.Tensor | None = None,
                labels_all: torch.Tensor | None = None, offset: int = 0):
        z1_all = z1 if z1_all is None else z1_all
        z2_all = z2 if z2_all is None else z2_all
        labels_all = labels if labels_all is None else labels_all
        b, n = z1.shape[0], z1_all.shape[0]
        logits = torch.cat([z1, z2]) @ torch.cat([z1_all, z2_all]).T / self.temperature      # (2B, 2N)
        rows = torch.arange(2 * b, device=z1.device)
        own = torch.cat([rows[:b] + offset, rows[b:] - b + n + offset])
        other_view = torch.cat([own[:b] + n, own[b:] - n])
        y_anchor, y_cand = labels.repeat(2), labels_all.repeat(2)
        positive = (y_anchor[:, None] == y_cand[None, :]) & (y_anchor[:, None] >= 0)
        positive[rows, other_view] = True
        positive[rows, own] = False
        logits[rows, own] = float("-inf")                                 # a view is not its own negative
        log_prob = logits.log_softmax(dim=1).masked_fill(~positive, 0.0)  # -inf * 0 would be NaN
        loss = -(log_prob.sum(dim=1) / positive.sum(dim=1)).mean()
        return loss, logits, other_view
