"""Extract features of a whole dataset with any network function, in eval mode and without gradients."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm


@torch.no_grad()
def extract_features(fn: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, device: torch.device,
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``fn`` to every batch of ``loader`` (yielding ``(images, target, index)``).

    Returns (features (N, D) float32 on CPU, targets (N,) int64) in dataset order.
    """
    feats, targets = [], []
    for images, target, _ in tqdm(loader, desc=desc, leave=False, mininterval=5):
        feats.append(fn(images.to(device, non_blocking=True)).float().cpu())
        targets.append(target)
    return torch.cat(feats), torch.cat(targets)
