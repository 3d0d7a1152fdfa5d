"""Concentration phi and the k-means E-step (``pcl_reference.md`` §1.6)."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from pcl_bench.train.concentration import concentration
from pcl_bench.train.e_step import run_kmeans

# Six clusters: 0 (distances .3, .5), 1 (.1, .2, .3), 2 (.5 x 4), 3 a singleton, 4 empty, 5 (.05, .05).
DISTANCES = [0.3, 0.5, 0.1, 0.2, 0.3, 0.5, 0.5, 0.5, 0.5, 0.0, 0.05, 0.05]
ASSIGN = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 5, 5])
SQ = np.array(DISTANCES) ** 2  # the input is faiss' squared distances


def hand_phi(alpha: float, tau: float) -> list[float]:
    """The reference formula written out for the example above."""
    raw = [
        (0.3 + 0.5) / (2 * math.log(2 + alpha)),
        (0.1 + 0.2 + 0.3) / (3 * math.log(3 + alpha)),
        (0.5 * 4) / (4 * math.log(4 + alpha)),
        None,  # singleton
        None,  # empty
        (0.05 + 0.05) / (2 * math.log(2 + alpha)),
    ]
    dmax = max(p for p in raw if p is not None)
    raw = [dmax if p is None else p for p in raw]
    s = sorted(raw)
    # numpy linear percentiles over k = 6 values: position q * (k - 1).
    p10 = s[0] + 0.5 * (s[1] - s[0])  # position 0.5
    p90 = s[4] + 0.5 * (s[5] - s[4])  # position 4.5
    clipped = [min(max(p, p10), p90) for p in raw]
    mean = sum(clipped) / 6
    return [tau * p / mean for p in clipped]


def test_phi_hand_example():
    """Mean distance / log(Z+10), singleton and empty get the max, P10 clip, mean rescaled to tau."""
    phi = concentration(SQ, ASSIGN, num_clusters=6, temperature=0.2)
    assert phi.dtype == np.float32 and phi.shape == (6,)
    np.testing.assert_allclose(phi, hand_phi(10.0, 0.2), rtol=1e-6)
    assert phi.mean() == pytest.approx(0.2, rel=1e-6)
    # Cluster 2 has the largest raw phi: the singleton (3) and the empty cluster (4) share its value.
    assert phi[3] == phi[4] == phi[2]
    # Cluster 5 is below P10 and is lifted to it: halfway between raw phi_5 and raw phi_1, times the scale.
    raw1, raw2, raw5 = 0.2 / math.log(13), 0.5 / math.log(14), 0.05 / math.log(12)
    assert phi[5] / phi[2] == pytest.approx((raw5 + raw1) / 2 / raw2, rel=1e-6)


def test_phi_p90_clip():
    """Without singletons the single largest cluster is clipped down to the 90th percentile."""
    dist = np.array([0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5, 2.0, 2.0])
    assign = np.repeat(np.arange(6), 2)
    phi = concentration(dist ** 2, assign, num_clusters=6, temperature=0.1)
    raw = [d / math.log(12) for d in (0.1, 0.2, 0.3, 0.4, 0.5, 2.0)]  # (2 d) / (2 log 12)
    p10 = raw[0] + 0.5 * (raw[1] - raw[0])
    p90 = raw[4] + 0.5 * (raw[5] - raw[4])
    clipped = [min(max(p, p10), p90) for p in raw]
    expected = [0.1 * p / (sum(clipped) / 6) for p in clipped]
    np.testing.assert_allclose(phi, expected, rtol=1e-6)
    assert phi[5] < 0.1 * raw[5] / (sum(raw) / 6)  # the clip did bite


def test_phi_alpha():
    """alpha enters as log(Z + alpha): alpha = 1 gives the hand value for alpha = 1, unlike alpha = 10."""
    phi1 = concentration(SQ, ASSIGN, num_clusters=6, temperature=0.2, alpha=1.0)
    np.testing.assert_allclose(phi1, hand_phi(1.0, 0.2), rtol=1e-6)
    assert not np.allclose(phi1, concentration(SQ, ASSIGN, num_clusters=6, temperature=0.2), rtol=1e-3)


def test_phi_needs_a_cluster_with_two_members():
    """All clusters of size <= 1: ValueError."""
    with pytest.raises(ValueError):
        concentration(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 2]), num_clusters=4, temperature=0.2)


# ---------------------------------------------------------------------------------------------- k-means

@pytest.fixture(autouse=True)
def one_faiss_thread():
    """faiss' OpenMP threads spin on the shared cores: one thread is ~1000x faster on these tiny inputs."""
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(old)


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 well-separated blobs x 50 points in 8-D, unit-normalised; returns (x, blob labels)."""
    rng = np.random.default_rng(seed)
    centers = np.eye(8)[:3] * 10
    x = np.concatenate([c + rng.normal(size=(50, 8)) for c in centers]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, np.repeat(np.arange(3), 50)


def test_run_kmeans_recovers_blobs():
    """k-means finds the 3 blobs; centroids unit norm; shapes and dtypes of the result; phi mean = tau."""
    x, labels = blobs()
    result, timing = run_kmeans(x, [3, 5], temperature=0.2, niter=10, nredo=2)
    assert len(result.im2cluster) == len(result.centroids) == len(result.density) == 2
    assert result.im2cluster[0].shape == (150,) and result.im2cluster[0].dtype == torch.int64
    assert adjusted_rand_score(labels, result.im2cluster[0].numpy()) == 1.0
    for k, cent, phi in zip([3, 5], result.centroids, result.density):
        assert cent.shape == (k, 8) and phi.shape == (k,)
        torch.testing.assert_close(cent.norm(dim=1), torch.ones(k))
        assert phi.mean().item() == pytest.approx(0.2, rel=1e-5)
    # The normalised centroid of each blob points at its centre (axis e_b).
    for b in range(3):
        c = result.im2cluster[0][b * 50].item()
        assert result.centroids[0][c, b].item() > 0.95
    assert set(timing) == {"kmeans_s", "phi_s"}


def test_run_kmeans_fixed_concentration():
    """fixed_concentration=True gives phi = tau for every prototype."""
    x, _ = blobs(1)
    result, _ = run_kmeans(x, [3, 6], temperature=0.3, niter=5, nredo=1, fixed_concentration=True)
    for k, phi in zip([3, 6], result.density):
        torch.testing.assert_close(phi, torch.full((k,), 0.3))


def test_run_kmeans_passes_settings_to_faiss(monkeypatch):
    """niter / nredo reach faiss.Clustering, with seed = granularity position and the reference limits."""
    made = []
    real = faiss.Clustering

    def spy(d, k):
        clus = real(d, k)
        made.append(clus)
        return clus

    monkeypatch.setattr(faiss, "Clustering", spy)
    x, labels = blobs(2)
    for nredo in (1, 5):
        made.clear()
        result, _ = run_kmeans(x, [3, 4], temperature=0.2, niter=7, nredo=nredo)
        assert [(c.k, c.niter, c.nredo, c.seed) for c in made] == [(3, 7, nredo, 0), (4, 7, nredo, 1)]
        assert all((c.max_points_per_centroid, c.min_points_per_centroid) == (1000, 10) for c in made)
        assert adjusted_rand_score(labels, result.im2cluster[0].numpy()) == 1.0
