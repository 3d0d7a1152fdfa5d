"""Concentration phi of each prototype, exactly as the PCL reference estimates it (PCL paper, Eq. 12; docs/reference.md).

For cluster c with Z_c members at Euclidean distances ||v_z - c|| from its (unnormalised) centroid:

    phi_c = (sum_z ||v_z - c||) / (Z_c log(Z_c + alpha))        if Z_c >= 2
    phi_c = max_c' phi_c'                                       if Z_c <= 1 (singletons and empty clusters)

then phi is clipped to its [10th, 90th] percentile over clusters and rescaled so that its unweighted mean
over clusters equals the temperature tau. A loose cluster gets a large phi, which flattens its similarity
distribution and pulls its members tighter; the clip keeps a few extreme clusters from dominating.
"""
from __future__ import annotations

import numpy as np

CONCENTRATIONS = ("estimated", "fixed")


def concentration(sq_distances: np.ndarray, assignments: np.ndarray, num_clusters: int,
                  temperature: float, alpha: float = 10.0) -> np.ndarray:
    """phi per cluster, shape (k,), float32.

    Args:
        sq_distances: (N,) squared L2 distance of each sample to its assigned centroid (faiss' ``D``).
        assignments: (N,) cluster id of each sample.
        num_clusters: k.
        temperature: the target mean tau of phi.
        alpha: smoothing constant in log(Z + alpha); 10 in the reference, where it is hard-coded.
    """
    sizes = np.bincount(assignments, minlength=num_clusters)
    dist_sum = np.bincount(assignments, weights=np.sqrt(sq_distances), minlength=num_clusters)
    big = sizes >= 2
    if not big.any():
        raise ValueError("concentration: no cluster has two or more members; use fewer clusters")
    phi = np.zeros(num_clusters)
    phi[big] = dist_sum[big] / (sizes[big] * np.log(sizes[big] + alpha))
    phi[~big] = phi[big].max()
    phi = np.clip(phi, np.percentile(phi, 10), np.percentile(phi, 90))
    return (temperature * phi / phi.mean()).astype(np.float32)
