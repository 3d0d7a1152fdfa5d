"""The momentum encoder and queue shared by MoCo v1/v2 and PCL v1/v2 (He et al. 2020).

One class holds the machinery: a query encoder trained by SGD, a key encoder that follows it as an
exponential moving average, ShuffleBN for the keys, and a FIFO queue of past keys as negatives.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..losses import InfoNCE
from ..models import encoder_from_config
from ..runtime import distributed as D
from ..runtime.errors import UsageError
from .base import Method, top1


class MomentumContrast(Method):
    """Query encoder, momentum key encoder, queue and the InfoNCE instance term.

    Args:
        encoder: the query network, (N, 3, H, W) -> (N, dim); the key network is a copy of it.
        dim: embedding size D.
        queue_len: number of queued negative keys (65536 MoCo, r = 16384 PCL).
        momentum: m in theta_k <- m theta_k + (1 - m) theta_q.
        temperature: tau of the InfoNCE term.
        fused: update all key parameters with one ``torch._foreach_lerp_`` (a few kernel launches on a GPU
            instead of one per parameter tensor); False: one ``lerp_`` per tensor. Equal results.

    Buffers: ``queue`` (D, queue_len) unit columns, ``queue_ptr`` (1,). The queue is written at the device-side
    pointer, so a step never waits for the device to report it.
    """

    def __init__(self, encoder, dim: int = 128, queue_len: int = 65536, momentum: float = 0.999,
                 temperature: float = 0.07, fused: bool = True):
        super().__init__()
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.momentum = momentum
        self.fused = fused
        self.instance_loss = InfoNCE(temperature)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_len), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @classmethod
    def from_config(cls, cfg, num_samples: int):
        return cls(encoder_from_config(cfg), cfg.dim, cfg.queue, cfg.moco_m, cfg.temperature,
                   fused=cfg.fused_updates)

    @classmethod
    def check(cls, cfg, num_samples: int, num_classes: int | None, local_batch: int) -> None:
        super().check(cfg, num_samples, num_classes, local_batch)
        if cfg.queue % cfg.batch_size:  # each step replaces one global batch of keys
            raise UsageError(f"--queue {cfg.queue} is not a multiple of the global batch {cfg.batch_size}; "
                             f"use e.g. --queue {cfg.batch_size * max(1, cfg.queue // cfg.batch_size)}")

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q over parameters; BN buffers stay the key encoder's own."""
        keys, queries = list(self.encoder_k.parameters()), list(self.encoder_q.parameters())
        if self.fused:
            torch._foreach_lerp_(keys, queries, 1 - self.momentum)
            return
        for p_k, p_q in zip(keys, queries):
            p_k.lerp_(p_q, 1 - self.momentum)  # = m p_k + (1 - m) p_q, in one pass

    @torch.no_grad()
    def keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """L2-normalised keys (B, D) of this rank's ``im_k``, computed with ShuffleBN.

        The key batch is shuffled across all ranks (or, in one process, across the SplitBatchNorm
        sub-batches) so that BN statistics of keys and queries come from different samples.
        """
        local_b = im_k.shape[0]
        all_k = D.all_gather(im_k)
        perm = D.broadcast_(torch.randperm(all_k.shape[0], device=im_k.device))
        mine = perm.view(D.world_size(), local_b)[D.rank()]
        k = F.normalize(self.encoder_k(all_k[mine]), dim=1)
        # Undo the shuffle: gather every rank's keys, put them back in original order, keep this rank's.
        gathered = D.all_gather(k)  # row j is the key of all_k[perm[j]]
        k_all = torch.empty_like(gathered)
        k_all[perm] = gathered
        return k_all.view(D.world_size(), local_b, -1)[D.rank()]

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """Replace the oldest global-batch of queue columns by the keys of all ranks."""
        k = D.all_gather(k)
        b, length = k.shape[0], self.queue.shape[1]
        assert length % b == 0, "queue length must be a multiple of the global batch"  # so no batch wraps
        columns = self.queue_ptr + torch.arange(b, device=k.device)
        self.queue.index_copy_(1, columns, k.T.to(self.queue.dtype))
        self.queue_ptr.add_(b).remainder_(length)

    def contrast(self, im_q: torch.Tensor, im_k: torch.Tensor):
        """One MoCo step: returns (q (B, D) normalised, InfoNCE loss, metrics). Updates the queue."""
        self.momentum_update()
        k = self.keys(im_k)
        q = F.normalize(self.encoder_q(im_q), dim=1)
        loss, logits = self.instance_loss(q, k, self.queue.clone().detach())
        self.enqueue(k)
        return q, loss, {"acc_inst": top1(logits, torch.zeros_like(logits[:, 0], dtype=torch.long))}
