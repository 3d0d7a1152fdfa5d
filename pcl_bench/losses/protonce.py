"""ProtoNCE: the prototype term of PCL, one granularity at a time (PCL paper, Eq. 6; docs/reference.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.errors import UsageError


class ProtoNCE(nn.Module):
    """Contrast each embedding with its own cluster's prototype, scaled by per-prototype concentration:

        L = -1/B sum_i log( exp(q_i . c_{s_i} / phi_{s_i}) / sum_{j in P u N} exp(q_i . c_j / phi_j) )

    where s_i = im2cluster[index_i], P = (s_1 .. s_B) are the batch's own prototypes (duplicates kept: the
    other samples' prototypes are extra negatives, as in the reference) and N are ``num_negatives``
    prototypes drawn uniformly without replacement from the clusters that no sample of the batch belongs to.

    Deliberate differences from the reference code, both fixes of its defects:
    negatives are drawn with ``torch.randperm`` (the reference's ``random.sample(set)`` is a TypeError on
    Python 3.11) and from all k clusters (the reference drew from ``0..max(im2cluster)``, first without the
    largest id at all).

    Args:
        num_negatives: r, the number of sampled negative prototypes (16384 in the paper).

    Shapes: ``q`` (B, D) L2-normalised; ``index`` (B,) dataset indices; ``im2cluster`` (N,) cluster ids;
    ``prototypes`` (k, D) L2-normalised centroids; ``density`` (k,) concentrations phi.
    Returns ``(loss, logits)`` with logits (B, B + r) and the positive of row i in column i.
    """

    def __init__(self, num_negatives: int = 16384):
        super().__init__()
        self.num_negatives = num_negatives

    def forward(self, q: torch.Tensor, index: torch.Tensor, im2cluster: torch.Tensor,
                prototypes: torch.Tensor, density: torch.Tensor, generator: torch.Generator | None = None):
        pos_ids = im2cluster[index]
        free = torch.ones(prototypes.shape[0], dtype=torch.bool, device=q.device)
        free[pos_ids] = False
        candidates = free.nonzero().squeeze(1)
        if candidates.numel() < self.num_negatives:
            raise ValueError(f"ProtoNCE needs {self.num_negatives} negative prototypes but only "
                             f"{candidates.numel()} clusters are absent from the batch")
        perm = torch.randperm(candidates.numel(), generator=generator, device=candidates.device)
        neg_ids = candidates[perm[: self.num_negatives]]
        ids = torch.cat([pos_ids, neg_ids])
        logits = (q @ prototypes[ids].T) / density[ids]
        labels = torch.arange(q.shape[0], device=q.device)
        return F.cross_entropy(logits, labels), logits


def check_proto_negatives(r: int, k_min: int, local_b: int) -> None:
    """ProtoNCE draws r negatives from the clusters no sample of the batch is in: at least k_min - local_b."""
    if r < 0:
        raise UsageError(f"--proto-negatives {r} is negative; use a count of prototypes, e.g. 16")
    free = k_min - local_b
    if free < 1:
        raise UsageError(f"the smallest --num-cluster {k_min} leaves no cluster free of a batch of {local_b}, "
                         f"so ProtoNCE has no negative prototypes to draw; use K above {local_b + max(r, 1)} "
                         f"(K > batch per process + r) or a smaller --batch-size")
    if r > free:
        raise UsageError(f"--proto-negatives {r} (r; it defaults to --queue) is more than the {k_min} - {local_b}"
                         f" = {free} clusters that a batch of {local_b} may leave free; use --proto-negatives "
                         f"{free} or less, or a larger smallest --num-cluster")
