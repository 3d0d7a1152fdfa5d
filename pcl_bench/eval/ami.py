"""Cluster quality: how well k-means clusters of the features agree with the labels (PCL paper, Table 7).

The PCL paper (table 7, figure 4) reports the adjusted mutual information (AMI) between ImageNet labels and
the k-means assignments (K = 25000) of momentum-encoder features of the centre-cropped training images.
The reference code has no evaluation for it; we cluster exactly as the E-step does (:func:`pcl_bench.train.kmeans.
kmeans`: L2-normalised features, faiss L2 k-means, 20 iterations, 5 restarts keeping the lowest objective,
seed = position of K in ``ks`` plus ``seed``, so the default seed reproduces the E-step's clusters) and score
the assignments with scikit-learn's AMI, NMI (both with the default arithmetic-mean normalisation) and
adjusted Rand index, against each label level (e.g. CIFAR-100 fine and coarse classes).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

from ..runtime.errors import UsageError
from ..train.kmeans import kmeans


def cluster_quality(features: np.ndarray | torch.Tensor, labels: np.ndarray | Mapping[str, np.ndarray],
                    ks: Sequence[int] = (25000,), seed: int = 0, niter: int = 20, nredo: int = 5,
                    device: torch.device | str = "cpu", backend: str = "auto") -> list[dict]:
    """AMI, NMI and ARI of k-means on ``features`` (N, D) for each K in ``ks`` against each label level.

    ``labels``: (N,) class ids (reported as level "label"), or ``{level: (N,) ids}``. ``device`` and
    ``backend``: where and how k-means runs (:mod:`pcl_bench.train.kmeans`). Returns one dict
    ``{K, level, ami, nmi, ari}`` per (K, level), K-major.
    """
    x = torch.as_tensor(features).float()
    if x.ndim != 2:
        raise UsageError(f"features must be an (N, D) array, got shape {tuple(x.shape)}")
    n = x.shape[0]
    levels = dict(labels) if isinstance(labels, Mapping) else {"label": labels}
    levels = {name: np.asarray(y).reshape(-1) for name, y in levels.items()}
    for name, y in levels.items():
        if len(y) != n or (n and y.min() < 0):
            raise UsageError(f"labels {name!r} must hold one class id >= 0 per feature row ({n}); got {len(y)} "
                             f"labels with minimum {y.min() if len(y) else '-'}; use a labelled split")
    for k in ks:
        if not 1 <= k <= n:
            raise UsageError(f"cannot form K={k} clusters from {n} samples; pass K between 1 and {n}")
    # Normalise exactly as the E-step's feature pass does (F.normalize, eps 1e-12).
    x = np.ascontiguousarray(F.normalize(x, dim=1).numpy())
    rows = []
    for i, k in enumerate(ks):
        assign, _, _ = kmeans(x, k, seed + i, niter, nredo, backend, device)
        for name, y in levels.items():
            rows.append({"K": k, "level": name, "ami": float(adjusted_mutual_info_score(y, assign)),
                         "nmi": float(normalized_mutual_info_score(y, assign)),
                         "ari": float(adjusted_rand_score(y, assign))})
    return rows
