"""Cluster quality (AMI / NMI / ARI of E-step k-means) on features with known cluster structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score

from pcl_bench.eval.ami import cluster_quality
from pcl_bench.runtime.errors import UsageError
from pcl_bench.train.kmeans import kmeans


def blobs(groups: int, fine_per_group: int, per_blob: int = 40, seed: int = 0):
    """``groups`` coarse groups along axes e_0.., each split into ``fine_per_group`` fine blobs along private
    axes; after L2 normalisation fine blobs of a group are ~0.2 apart and groups ~1.4 apart (noise 0.02).

    Returns features (groups * fine_per_group * per_blob, D) with random norms, and the fine labels
    (coarse = fine // fine_per_group).
    """
    rng = np.random.default_rng(seed)
    n_fine = groups * fine_per_group
    centres = np.zeros((n_fine, groups + n_fine))
    for f in range(n_fine):
        centres[f, f // fine_per_group] = 10.0
        centres[f, groups + f] = 1.5 if fine_per_group > 1 else 0.0
    fine = np.repeat(np.arange(n_fine), per_blob)
    x = centres[fine] / np.linalg.norm(centres[fine], axis=1, keepdims=True)
    x += rng.normal(0, 0.02, x.shape)
    return (x * rng.uniform(0.5, 3.0, (len(fine), 1))).astype(np.float32), fine  # norms are normalised away


def row(rows, k, level):
    (match,) = [r for r in rows if r["K"] == k and r["level"] == level]
    return match


def test_separated_blobs_give_ami_one():
    x, labels = blobs(6, 1)
    (r,) = cluster_quality(x, labels, ks=(6,))
    assert set(r) == {"K", "level", "ami", "nmi", "ari"} and (r["K"], r["level"]) == (6, "label")
    assert r["ami"] > 0.99 and r["nmi"] > 0.99 and r["ari"] > 0.99


def test_fine_and_coarse_levels():
    """K = 2 recovers the 2 coarse groups exactly, so its fine-level AMI is AMI(fine, coarse). Rows come
    K-major, levels in the given order."""
    x, fine = blobs(2, 2)
    rows = cluster_quality(x, {"fine": fine, "coarse": fine // 2}, ks=(2, 3))
    assert [(r["K"], r["level"]) for r in rows] == [(2, "fine"), (2, "coarse"), (3, "fine"), (3, "coarse")]
    assert row(rows, 2, "coarse")["ami"] > 0.99
    assert row(rows, 2, "fine")["ami"] == pytest.approx(adjusted_mutual_info_score(fine, fine // 2), abs=1e-6)
    assert row(rows, 2, "fine")["ami"] < 0.9


def test_random_features_give_ami_near_zero():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(1000, 16)).astype(np.float32), rng.integers(0, 10, size=1000)
    (r,) = cluster_quality(torch.from_numpy(x), y, ks=(10,))
    assert abs(r["ami"]) < 0.03 and abs(r["ari"]) < 0.03


def test_same_clusters_as_the_e_step():
    """Seed = position in ks, as in the E-step: the score equals that of e_step.kmeans on the normalised rows."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 8)).astype(np.float32), rng.integers(0, 5, size=300)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = cluster_quality(x, y, ks=(7, 12))
    for seed, k in enumerate((7, 12)):
        assign = kmeans(np.ascontiguousarray(xn), k, seed)[0]
        assert row(rows, k, "label")["ami"] == pytest.approx(adjusted_mutual_info_score(y, assign), abs=1e-9)


def test_bad_input():
    x, y = np.ones((5, 3), np.float32), np.zeros(5, int)
    with pytest.raises(UsageError, match="K=6 clusters from 5 samples"):
        cluster_quality(x, y, ks=(6,))
    with pytest.raises(UsageError, match="one class id"):
        cluster_quality(x, y[:4], ks=(2,))
    with pytest.raises(UsageError, match="one class id"):
        cluster_quality(x, {"fine": y, "coarse": -np.ones(5, int)}, ks=(2,))
    with pytest.raises(UsageError, match=r"\(N, D\)"):
        cluster_quality(x[0], y, ks=(2,))
