"""Frozen-backbone features, extracted once per (checkpoint, dataset, kind) and cached on disk.

Feature kinds, for a ResNet-50 on 224 px images (layer4 output 2048 x 7 x 7):

- ``pool``: global-average-pooled layer4, 2048-d (512-d for ResNet-18/34). The feature of PCL's VOC07 SVM
  and linear probe.
- ``places``: PCL's Places205 linear probe uses "conv5 features average-pooled to about 9000-d"
  (PCL paper, appendix E) without stating the pooling; here layer4 is adaptively average-pooled to
  2 x 2, i.e. 8192-d (four overlapping 4 x 4 windows on a 7 x 7 map).
- ``res5_2x2``: the Goyal et al. benchmark's res5 feature (Goyal et al. 2019): AvgPool(6, stride 1)
  on the 7 x 7 map, 2 x 2 x 2048 = 8192-d. For other map sizes H x W the window is (H-1) x (W-1), which
  keeps the 2 x 2 output and equals Goyal's pooling at 224 px.

Cache files live in ``$PCL_BENCH_CACHE/features`` (default ``~/.cache/pcl-bench/features``), named by a
hash of everything that determines the features; they are written atomically, and processes that need the
same entry at once wait on a lock file while one of them extracts it, so concurrent evaluations may share the
folder. A damaged entry is reported and extracted again.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.models import ResNet

from ..models.encoders import backbone_features
from ..runtime import paths
from ..runtime.atomic import save_npz
from ..runtime.errors import UsageError
from .features import extract_features

# Bump when the extraction changes in a way that changes the features, to invalidate old cache files.
FEATURE_VERSION = 2  # 2: dataset keys hash the data's files, random encoders their weights


def layer4_maps(net: ResNet, x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) images -> (N, C, h, w) layer4 (res5) feature maps."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def places_features(net: ResNet, x: torch.Tensor) -> torch.Tensor:
    """layer4 adaptively average-pooled to 2 x 2: (N, 3, H, W) -> (N, 4C)."""
    return torch.flatten(F.adaptive_avg_pool2d(layer4_maps(net, x), 2), 1)


def res5_2x2_features(net: ResNet, x: torch.Tensor) -> torch.Tensor:
    """layer4 average-pooled with an (h-1) x (w-1) window, stride 1 (Goyal's AvgPool(6, 1) at 7 x 7): (N, 4C)."""
    maps = layer4_maps(net, x)
    h, w = maps.shape[-2:]
    if min(h, w) < 2:
        raise UsageError(f"feature kind res5_2x2 needs layer4 maps of at least 2 x 2, got {h} x {w}; "
                         f"use larger images or the 'pool' feature")
    return torch.flatten(F.avg_pool2d(maps, (h - 1, w - 1), stride=1), 1)


FEATURE_FNS: dict[str, Callable[[ResNet, torch.Tensor], torch.Tensor]] = {
    "pool": backbone_features, "places": places_features, "res5_2x2": res5_2x2_features}


def cache_key(ckpt_sha256: str, dataset_key: str, kind: str, n: int) -> str:
    """File stem ``<kind>-<32 hex>``: a sha256 of the checkpoint hash, dataset key, kind, size and version."""
    fields = {"checkpoint": ckpt_sha256, "dataset": dataset_key, "kind": kind, "n": n,
              "version": FEATURE_VERSION}
    return f"{kind}-{hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]}"


def cached_features(backbone: ResNet, ckpt_sha256: str, dataset: Dataset, dataset_key: str, kind: str,
                    batch_size: int, workers: int, device: torch.device,
                    cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features of every item of ``dataset`` (in order) under ``backbone``, from the cache when present.

    ``dataset_key`` must identify the dataset's content (:func:`pcl_bench.data.fingerprint.fingerprint`) and
    preprocessing (transform repr); ``ckpt_sha256`` the backbone's weights. ``backbone`` is put in eval mode on ``device``.
    Returns (features float32 (N, D), targets as the dataset yields them: (N,) labels or (N, C) multi-label).
    """
    if kind not in FEATURE_FNS:
        raise UsageError(f"unknown feature kind {kind!r}; choose one of {', '.join(FEATURE_FNS)}")
    key = cache_key(ckpt_sha256, dataset_key, kind, len(dataset))
    path = Path(cache_dir or paths.cache_dir("features")) / f"{key}.npz"
    if (hit := _load(path, len(dataset))) is not None:
        print(f"features: cache hit {key}", file=sys.stderr)
        return hit
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process extracts; the others wait for its file
        if (hit := _load(path, len(dataset))) is not None:
            print(f"features: cache hit {key} (extracted by another process)", file=sys.stderr)
            return hit
        backbone = backbone.eval().to(device)
        loader = DataLoader(dataset, batch_size, shuffle=False, num_workers=workers,
                            pin_memory=device.type == "cuda")
        feats, targets = extract_features(lambda x: FEATURE_FNS[kind](backbone, x), loader, device,
                                          desc=f"features ({kind})")
        feats, targets = feats.numpy().astype(np.float32, copy=False), targets.numpy()
        save_npz(path, features=feats, targets=targets)
    print(f"features: extracted {key} {feats.shape[0]} x {feats.shape[1]} -> {path}", file=sys.stderr)
    return feats, targets


def _load(path: Path, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The (features, targets) of cache file ``path``; None if absent or damaged (a warning says which), so
    that a damaged entry is extracted again, never used."""
    if not path.exists():
        return None
    try:
        with np.load(path) as f:
            feats, targets = f["features"], f["targets"]
        if feats.ndim != 2 or len(feats) != n or len(targets) != n:
            raise ValueError(f"{feats.shape} features and {len(targets)} targets for {n} images")
    except Exception as e:  # noqa: BLE001  (BadZipFile, EOFError, ValueError, KeyError, OSError, ...)
        warnings.warn(f"feature cache entry {path} is damaged ({type(e).__name__}: {e}); extracting again",
                      stacklevel=3)
        return None
    return feats, targets
