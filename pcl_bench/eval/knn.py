"""Weighted k-nearest-neighbour classification on L2-normalised features (Wu et al. 2018 / InstDisc).

For a test feature f, take the k training features of highest cosine similarity s_j, weight each by
exp(s_j / t), and predict the class with the largest total weight. Test features are processed in chunks so
that an ImageNet-size bank (1.28M x 2048) needs only chunk x N similarities in memory at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                k: int = 20, t: float = 0.07, num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Predicted labels (M,) for ``test_features`` (M, D) given the bank (N, D) with labels (N,).

    Features are L2-normalised here; labels must be in 0..C-1.
    """
    bank = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, test.shape[0], chunk):
        sims, idx = (test[start: start + chunk] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(sims.shape[0], num_classes, device=sims.device)
        votes.scatter_add_(1, train_labels[idx], (sims / t).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, t: float = 0.07) -> float:
    """Top-1 accuracy in percent of :func:`knn_predict`."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    preds = knn_predict(train_features, train_labels, test_features, k, t, num_classes)
    return (preds == test_labels).float().mean().item() * 100
