"""SplitBatchNorm: emulate multi-GPU BatchNorm in one process (as in the MoCo CIFAR-10 demo).

MoCo's ShuffleBN only has an effect when BatchNorm statistics are computed over several sub-batches (one per
GPU). With one process, ``SplitBatchNorm(num_splits=s)`` normalises each of ``s`` interleaved sub-batches
(samples j, j + s, j + 2s, ..., as in the MoCo demo) with its own statistics, so shuffling the key batch before the key encoder changes which samples share
statistics, exactly as across GPUs, and the query/key "cheating" through BN statistics is prevented.
In eval mode it is a plain BatchNorm2d; running statistics are the mean over the splits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are per interleaved sub-batch of ``N / num_splits`` samples.

    Input (N, C, H, W) with N divisible by ``num_splits``.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % self.num_splits:
            raise ValueError(f"SplitBatchNorm: batch {n} is not divisible by num_splits={self.num_splits}")
        s = self.num_splits
        # Fold the splits into channels: one batch_norm call with s*C channels gives per-split statistics.
        mean_split = self.running_mean.repeat(s)
        var_split = self.running_var.repeat(s)
        out = F.batch_norm(
            x.reshape(n // s, c * s, h, w), mean_split, var_split,
            self.weight.repeat(s), self.bias.repeat(s),
            True, self.momentum, self.eps,
        ).reshape(n, c, h, w)
        self.running_mean.copy_(mean_split.view(s, c).mean(0))
        self.running_var.copy_(var_split.view(s, c).mean(0))
        self.num_batches_tracked += 1
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"
