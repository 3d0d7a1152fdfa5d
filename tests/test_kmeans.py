"""k-means backends: the PyTorch one runs faiss's algorithm (restarts, subsampling, empty-cluster splits)."""
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from pcl_bench.train import kmeans as km


def blobs(n_blobs: int = 4, per_blob: int = 60, dim: int = 16, seed: int = 0):
    """Well separated Gaussian blobs (N, dim) float32 with their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_blobs, dim)) * 5
    x = np.concatenate([c + rng.normal(scale=0.3, size=(per_blob, dim)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(n_blobs), per_blob)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_both_backends_recover_blobs(backend):
    x, labels = blobs()
    assign, dist, centroids = km.kmeans(x, 4, seed=0, niter=10, nredo=3, backend=backend)
    assert assign.shape == dist.shape == (240,) and assign.dtype == np.int64 and centroids.shape == (4, 16)
    assert adjusted_rand_score(labels, assign) == 1.0


def test_torch_result_is_a_consistent_nearest_centroid_assignment():
    """Every point sits with its nearest returned centroid, at the returned squared distance."""
    x = np.random.default_rng(1).normal(size=(500, 8)).astype(np.float32)
    assign, dist, centroids = km.kmeans(x, 12, seed=3, niter=15, nredo=2, backend="torch")
    d = ((x[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(assign, d.argmin(1))
    np.testing.assert_allclose(dist, d.min(1), rtol=1e-4, atol=1e-5)
    assert np.bincount(assign, minlength=12).min() > 0


def test_torch_reproduces_faiss_without_empty_clusters():
    """Same seeds, same subsample and initial points: the same clustering, restarts and subsampling included."""
    x = np.random.default_rng(5).normal(size=(5000, 16)).astype(np.float32)
    for seed in range(3):
        ref, ours = (km.kmeans(x, 10, seed, niter=20, nredo=2, backend=b, max_points_per_centroid=50)
                     for b in ("faiss", "torch"))
        np.testing.assert_array_equal(ours[0], ref[0])
        np.testing.assert_allclose(ours[2], ref[2], rtol=1e-4, atol=1e-5)


def test_torch_objective_matches_faiss_with_empty_clusters(monkeypatch):
    """Duplicate points make restarts start with equal centroids, hence empty clusters, which each backend
    splits with its own donor draws: the clusterings differ, their objectives agree within a few percent."""
    x = np.repeat(np.random.default_rng(2).normal(size=(300, 16)).astype(np.float32), 10, axis=0)
    ref = km.kmeans(x, 50, seed=0, niter=20, nredo=3, backend="faiss")[1].sum()
    splits, split = [], km._split_empty
    monkeypatch.setattr(km, "_split_empty", lambda c, counts, g: (splits.append(int((counts == 0).sum())),
                                                                  split(c, counts, g)))
    ours = km.kmeans(x, 50, seed=0, niter=20, nredo=3, backend="torch")[1].sum()
    assert sum(splits) > 0
    assert ours == pytest.approx(ref, rel=0.03)


def test_torch_restarts_keep_the_lowest_objective_and_are_seeded():
    x = np.random.default_rng(3).normal(size=(800, 8)).astype(np.float32)
    one = [km.kmeans(x, 30, seed=s, niter=10, nredo=1, backend="torch")[1].sum() for s in range(4)]
    again = km.kmeans(x, 30, seed=0, niter=10, nredo=1, backend="torch")
    np.testing.assert_array_equal(again[0], km.kmeans(x, 30, seed=0, niter=10, nredo=1, backend="torch")[0])
    assert len(set(one)) > 1  # different seeds, different local optima
    best = km.kmeans(x, 30, seed=0, niter=10, nredo=5, backend="torch")[1].sum()
    assert best <= one[0] + 1e-3  # restart 0 of seed 0 is among the five


def test_torch_subsamples_to_max_points_per_centroid():
    """Above k * max_points_per_centroid points, training uses a subsample; every point is still assigned."""
    x, labels = blobs(3, per_blob=100)
    assign, _, _ = km.kmeans(x, 3, seed=0, niter=10, nredo=2, backend="torch", max_points_per_centroid=10)
    assert assign.shape == (300,) and adjusted_rand_score(labels, assign) == 1.0


def test_split_empty_copies_a_populated_cluster_apart():
    """faiss's rule: the empty cluster copies a donor of size > 1, the pair is pushed apart by 1/1024."""
    centroids = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]])
    counts = torch.tensor([1, 0, 9])  # cluster 0 holds one point, so only cluster 2 can donate
    km._split_empty(centroids, counts, torch.Generator().manual_seed(0))
    eps = 1 / 1024
    torch.testing.assert_close(centroids[1], torch.tensor([3 * (1 + eps), 4 * (1 - eps)]))
    torch.testing.assert_close(centroids[2], torch.tensor([3 * (1 - eps), 4 * (1 + eps)]))
    torch.testing.assert_close(centroids[0], torch.tensor([1.0, 2.0]))


def test_torch_handles_duplicate_points():
    """Restarts that start with duplicate centroids leave empty clusters, which are split, not kept at zero."""
    base = np.random.default_rng(4).normal(size=(6, 4)).astype(np.float32)
    x = np.repeat(base, 50, axis=0)
    assign, dist, _ = km.kmeans(x, 6, seed=0, niter=10, nredo=3, backend="torch")
    assert adjusted_rand_score(np.repeat(np.arange(6), 50), assign) == 1.0
    assert np.abs(dist).max() < 1e-4


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(km, "faiss_gpu_available", lambda: False)
    assert km.resolve_backend("auto", "cpu") == "faiss"
    assert km.resolve_backend("auto", "cuda") == "torch"
    assert km.resolve_backend("faiss", "cuda") == "faiss"
    monkeypatch.setattr(km, "faiss_gpu_available", lambda: True)
    assert km.resolve_backend("auto", torch.device("cuda")) == "faiss"
    with pytest.raises(ValueError, match="unknown k-means backend"):
        km.kmeans(np.zeros((4, 2), np.float32), 2, seed=0, backend="sklearn")
    with pytest.raises(ValueError, match="at least k = 5 points"):
        km.kmeans(np.zeros((4, 2), np.float32), 5, seed=0, backend="torch")
