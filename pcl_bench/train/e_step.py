"""The E-step of PCL: cluster momentum-encoder features into prototypes (docs/reference.md).

1. Feature pass: the momentum encoder ``encoder_k`` in eval mode over the centre-cropped *training* set (same
   images, same order as training, so ``im2cluster[index]`` aligns with the training loader), L2-normalised,
   head included. Each rank embeds its shard; rows are gathered by dataset index, with no padding duplicates.
   On a GPU it runs in bfloat16 as training does (``--estep-amp``; the reference: float32).
2. k-means, once on global rank 0 and broadcast: for each granularity m, L2 k-means with 20 iterations,
   5 restarts keeping the lowest objective, random-point initialisation with seed m (the same every epoch),
   at most 1000 points per centroid (:mod:`pcl_bench.train.kmeans`: faiss as in the reference, or the same
   algorithm in PyTorch on the GPU when faiss-gpu is missing).
3. Concentration phi per cluster (:mod:`pcl_bench.train.concentration`), then the centroids are L2-normalised.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..runtime import distributed as D
from .concentration import concentration
from .kmeans import kmeans


@dataclass
class ClusterResult:
    """Prototypes of every granularity. Lists are in ``num_cluster`` order.

    im2cluster: (N,) int64 cluster id per sample; centroids: (k, D) L2-normalised; density: (k,) phi.
    """

    im2cluster: list[torch.Tensor]
    centroids: list[torch.Tensor]
    density: list[torch.Tensor]

    def to(self, device: torch.device | str) -> ClusterResult:
        return ClusterResult(*[[t.to(device) for t in ts] for ts in (self.im2cluster, self.centroids, self.density)])

    def state_dict(self) -> dict:
        return {"im2cluster": self.im2cluster, "centroids": self.centroids, "density": self.density}


@torch.no_grad()
def compute_features(encoder: nn.Module, loader: DataLoader, n: int, device: torch.device,
                     amp: bool = False) -> torch.Tensor:
    """L2-normalised ``encoder`` outputs of all ``n`` samples, (n, D) float32 on CPU, on every rank.

    ``loader`` yields ``(images, target, index)`` over this rank's shard (a :class:`ShardSampler`). ``amp``:
    the encoder runs under bfloat16 autocast (the outputs are normalised in float32).
    """
    was_training = encoder.training
    encoder.eval()
    feats, idxs = [], []
    for images, _, index in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = encoder(images.to(device, non_blocking=True))
        feats.append(nn.functional.normalize(out.float(), dim=1))
        idxs.append(index.to(device))
    encoder.train(was_training)
    local_f, local_i = torch.cat(feats), torch.cat(idxs)
    # Shards differ in length by at most one: pad to equal length for all_gather, drop pads by index -1.
    pad = -(-n // D.world_size()) - local_i.numel()
    local_f = torch.cat([local_f, local_f.new_zeros(pad, local_f.shape[1])])
    local_i = torch.cat([local_i, local_i.new_full((pad,), -1)])
    all_f, all_i = D.all_gather(local_f), D.all_gather(local_i)
    keep = all_i >= 0
    out = torch.zeros(n, all_f.shape[1], device=all_f.device)
    out[all_i[keep]] = all_f[keep]
    return out.cpu()


def run_kmeans(x: np.ndarray, num_cluster: list[int], temperature: float, alpha: float = 10.0,
               niter: int = 20, nredo: int = 5, fixed_concentration: bool = False, backend: str = "auto",
               device: torch.device | str = "cpu") -> tuple[ClusterResult, dict[str, float]]:
    """Cluster ``x`` (N, D) at every granularity; returns the result and seconds spent in k-means and phi.

    ``fixed_concentration`` sets phi = tau for every prototype (the paper's ablation) instead of estimating it.
    ``backend`` and ``device``: see :func:`pcl_bench.train.kmeans.kmeans`.
    """
    result, timing = ClusterResult([], [], []), {"kmeans_s": 0.0, "phi_s": 0.0}
    x = np.ascontiguousarray(x, dtype=np.float32)
    for seed, k in enumerate(num_cluster):
        t0 = time.perf_counter()
        assign, dist, centroids = kmeans(x, k, seed, niter, nredo, backend, device)
        t1 = time.perf_counter()
        if fixed_concentration:
            phi = np.full(k, temperature, dtype=np.float32)
        else:
            phi = concentration(dist, assign, k, temperature, alpha)
        timing["kmeans_s"] += t1 - t0
        timing["phi_s"] += time.perf_counter() - t1
        result.im2cluster.append(torch.from_numpy(assign))
        result.centroids.append(nn.functional.normalize(torch.from_numpy(centroids), dim=1))
        result.density.append(torch.from_numpy(phi))
    return result, timing


def broadcast_result(result: ClusterResult | None, n: int, dim: int, num_cluster: list[int],
                     device: torch.device) -> ClusterResult:
    """Send rank 0's result to every rank (other ranks pass ``None``)."""
    if result is None:
        result = ClusterResult([torch.zeros(n, dtype=torch.long) for _ in num_cluster],
                               [torch.zeros(k, dim) for k in num_cluster],
                               [torch.zeros(k) for k in num_cluster])
    result = result.to(device)
    for ts in (result.im2cluster, result.centroids, result.density):
        for t in ts:
            D.broadcast_(t)
    return result


def e_step(encoder: nn.Module, loader: DataLoader, n: int, num_cluster: list[int], temperature: float,
           device: torch.device, amp: bool = False,
           **kmeans_kwargs) -> tuple[ClusterResult, torch.Tensor, dict[str, float]]:
    """Feature pass on every rank (under bfloat16 autocast with ``amp``), k-means on rank 0, broadcast.
    Returns (result, features, timings).

    ``features`` (n, D) CPU are returned for clustering statistics. Timings: feature_s, kmeans_s, phi_s.
    ``kmeans_kwargs`` go to :func:`run_kmeans`; its torch backend runs on ``device``.
    """
    t0 = time.perf_counter()
    features = compute_features(encoder, loader, n, device, amp)
    timing = {"feature_s": time.perf_counter() - t0}
    result = None
    if D.is_main():
        result, km_timing = run_kmeans(features.numpy(), num_cluster, temperature, device=device, **kmeans_kwargs)
        timing.update(km_timing)
    result = broadcast_result(result, n, features.shape[1], num_cluster, device)
    return result, features, timing
