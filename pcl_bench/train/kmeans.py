"""k-means as PCL's E-step runs it (docs/reference.md), with two interchangeable backends.

The reference clusters with ``faiss.Clustering`` (L2, 20 iterations, 5 restarts keeping the lowest objective,
seed m for granularity m, at most 1000 and at least 10 points per centroid) on a faiss GPU index. pip's faiss
is CPU-only, and on a GPU machine its k-means then dominates each epoch (CIFAR-10, 30,000 points, K = 1000 /
2000 / 4000 on 16 cores: 28 s, against 6 s of training; docs/measurements.md).

- ``faiss``: the reference implementation, with a GPU index where faiss-gpu sees a GPU.
- ``torch``: the same algorithm in PyTorch on any device: subsample to ``max_points_per_centroid * k`` points,
  initialise each restart with k distinct random points, then Lloyd iterations (exact nearest centroid,
  objective = sum of squared distances before the update, centroid = mean of its points), and faiss's
  empty-cluster rule (an empty cluster takes a copy of a cluster chosen with probability proportional to its
  size - 1, and the two are pushed apart by a relative 1/1024). ``torch.randperm`` on a CPU generator draws
  the same permutations as faiss's ``rand_perm`` for the same seed, so the subsample and every restart's
  initial points are faiss's, and without empty clusters the result is faiss's up to float rounding.
  Deliberate difference: the donor of an empty cluster is drawn from torch's generator, not faiss's.
- ``auto``: faiss, except torch on a CUDA device when faiss-gpu is missing.
"""
from __future__ import annotations

import numpy as np
import torch

KMEANS_BACKENDS = ("auto", "faiss", "torch")
_SPLIT_EPS = 1.0 / 1024.0  # faiss's relative perturbation of a split centroid pair
_DIST_BLOCK = 1 << 26  # distance-matrix elements computed at once (256 MB in float32)


def faiss_gpu_available() -> bool:
    import faiss
    return torch.cuda.is_available() and hasattr(faiss, "GpuIndexFlatL2") and faiss.get_num_gpus() > 0


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """'auto' -> 'torch' on a CUDA device without faiss-gpu, else 'faiss'; other values unchanged."""
    if backend != "auto":
        return backend
    return "torch" if torch.device(device).type == "cuda" and not faiss_gpu_available() else "faiss"


def kmeans(x: np.ndarray, k: int, seed: int, niter: int = 20, nredo: int = 5, backend: str = "auto",
           device: torch.device | str = "cpu", max_points_per_centroid: int = 1000,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L2 k-means of ``x`` (N, D) float32 into ``k`` clusters, keeping the best of ``nredo`` restarts.

    ``backend`` 'auto', 'faiss' or 'torch' (see :func:`resolve_backend`); ``device`` is where the torch
    backend runs and whether faiss may use a GPU index. Returns (assignments (N,) int64, squared
    distances to the assigned centroid (N,) float32, raw centroids (k, D) float32), all NumPy on the CPU.
    """
    backend = resolve_backend(backend, device)
    if backend == "torch":
        return _kmeans_torch(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), k, seed, niter, nredo,
                             torch.device(device), max_points_per_centroid)
    if backend == "faiss":
        use_gpu = torch.device(device).type == "cuda" and faiss_gpu_available()
        return _kmeans_faiss(x, k, seed, niter, nredo, use_gpu, max_points_per_centroid)
    raise ValueError(f"unknown k-means backend {backend!r}; choose one of {', '.join(KMEANS_BACKENDS)}")


def _kmeans_faiss(x: np.ndarray, k: int, seed: int, niter: int, nredo: int, use_gpu: bool,
                  max_points_per_centroid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import faiss
    clus = faiss.Clustering(x.shape[1], k)
    clus.verbose = False
    clus.niter, clus.nredo, clus.seed = niter, nredo, seed
    clus.max_points_per_centroid, clus.min_points_per_centroid = max_points_per_centroid, 10
    if use_gpu:
        cfg = faiss.GpuIndexFlatConfig()
        cfg.useFloat16 = False
        cfg.device = torch.cuda.current_device()
        index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), x.shape[1], cfg)
    else:
        index = faiss.IndexFlatL2(x.shape[1])
    clus.train(x, index)
    dist, assign = index.search(x, 1)  # the index holds the best restart's centroids
    centroids = faiss.vector_to_array(clus.centroids).reshape(k, x.shape[1])
    return assign[:, 0].astype(np.int64), dist[:, 0], centroids


@torch.no_grad()
def _kmeans_torch(x: torch.Tensor, k: int, seed: int, niter: int, nredo: int, device: torch.device,
                  max_points_per_centroid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k = {k} points, got {n}")
    gen = torch.Generator().manual_seed(seed)
    x = x.to(device)
    train = x[torch.randperm(n, generator=gen)[: k * max_points_per_centroid].to(device)] \
        if n > k * max_points_per_centroid else x
    best_obj, best = float("inf"), None
    for redo in range(nredo):
        gen.manual_seed(seed + 1 + redo * 15486557)  # faiss's per-restart seed
        centroids = train[torch.randperm(train.shape[0], generator=gen)[:k].to(device)].clone()
        for _ in range(niter):
            assign, dist = _nearest(train, centroids)
            centroids, counts = _means(train, assign, k)
            _split_empty(centroids, counts, gen)
        obj = dist.sum().item()  # the last assignment's objective, as faiss keeps it; one sync per restart
        if obj < best_obj:
            best_obj, best = obj, centroids
    assign, dist = _nearest(x, best)
    return assign.cpu().numpy(), dist.cpu().numpy(), best.cpu().numpy()


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (N,) and squared L2 distance (N,) of each row's nearest centroid, in float32 blocks of rows."""
    c_sq = (centroids * centroids).sum(1)
    rows = max(1, _DIST_BLOCK // centroids.shape[0])
    assign, dist = [], []
    for xb in x.split(rows):
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the matmul in full float32 (no TF32 or autocast)
        with torch.autocast(xb.device.type, enabled=False):
            d = torch.addmm(c_sq, xb, centroids.T, alpha=-2.0)
        val, idx = d.min(1)
        assign.append(idx)
        dist.append((val + (xb * xb).sum(1)).clamp_(min=0))
    return torch.cat(assign), torch.cat(dist)


def _means(x: torch.Tensor, assign: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of each cluster's points (k, D), zero for empty clusters, and the cluster sizes (k,)."""
    counts = torch.bincount(assign, minlength=k)
    sums = torch.zeros(k, x.shape[1], device=x.device, dtype=x.dtype).index_add_(0, assign, x)
    return sums / counts.clamp(min=1).unsqueeze(1).to(x.dtype), counts


def _split_empty(centroids: torch.Tensor, counts: torch.Tensor, gen: torch.Generator) -> None:
    """faiss's rule, in place: each empty cluster copies a donor drawn with probability ~ (size - 1)."""
    empty = (counts == 0).nonzero().flatten().tolist()
    if not empty:
        return
    sizes = counts.cpu().double()  # faiss halves sizes as floats
    sign = torch.ones(centroids.shape[1], device=centroids.device)
    sign[1::2] = -1.0  # faiss pushes even dimensions one way and odd dimensions the other
    for ci in empty:
        cj = int(torch.multinomial((sizes - 1).clamp(min=0), 1, generator=gen))
        centroids[ci] = centroids[cj] * (1 + _SPLIT_EPS * sign)
        centroids[cj] = centroids[cj] * (1 - _SPLIT_EPS * sign)
        sizes[ci] = sizes[cj] / 2
        sizes[cj] -= sizes[ci]
