"""Per-epoch statistics of PCL's clusterings: sizes, concentration and agreement with the labels."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from .e_step import ClusterResult

SIZE_BINS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, np.inf)


def cluster_statistics(result: ClusterResult, labels: dict[str, np.ndarray]) -> list[dict]:
    """One dict per granularity.

    Keys: ``k``; ``size_hist`` (counts of clusters whose size falls in ``[SIZE_BINS[i], SIZE_BINS[i+1])``),
    ``empty``, ``singletons``, ``size_max``; ``phi_min/p10/mean/p90/max``; and for each ``labels`` entry
    (e.g. ``{"fine": targets, "coarse": coarse_targets}``, -1 = unlabelled and skipped) ``ami_<name>`` and
    ``nmi_<name>``.
    """
    stats = []
    for im2cluster, density in zip(result.im2cluster, result.density):
        assign, phi = im2cluster.cpu().numpy(), density.cpu().numpy()
        sizes = np.bincount(assign, minlength=phi.shape[0])
        row = {
            "k": int(phi.shape[0]),
            "size_hist": np.histogram(sizes, bins=SIZE_BINS)[0].tolist(),
            "empty": int((sizes == 0).sum()),
            "singletons": int((sizes == 1).sum()),
            "size_max": int(sizes.max()),
            "phi_min": float(phi.min()), "phi_p10": float(np.percentile(phi, 10)),
            "phi_mean": float(phi.mean()), "phi_p90": float(np.percentile(phi, 90)), "phi_max": float(phi.max()),
        }
        for name, y in labels.items():
            keep = y >= 0
            if keep.any():
                row[f"ami_{name}"] = float(adjusted_mutual_info_score(y[keep], assign[keep]))
                row[f"nmi_{name}"] = float(normalized_mutual_info_score(y[keep], assign[keep]))
        stats.append(row)
    return stats
