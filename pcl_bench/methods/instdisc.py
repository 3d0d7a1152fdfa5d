"""Instance discrimination with a memory bank (Wu et al. 2018).

One view per image. Each image has an entry in a memory bank of L2-normalised embeddings; the positive of
a query is its own bank entry and the negatives are ``negatives`` entries drawn uniformly from the bank
(shared by the batch). Bank entries follow the embeddings with momentum:
v_i <- normalize(m v_i + (1 - m) q_i), m = 0.5.

    L = -log( exp(q . v_i / tau) / (exp(q . v_i / tau) + sum_j exp(q . v_j / tau)) )

This is the softmax form with sampled negatives (as in MoCo's memory-bank baseline), not the NCE
approximation of the original paper.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses import InfoNCE
from ..models import encoder_from_config
from ..runtime import distributed as D
from .base import Method, register, top1


@register("instdisc", head="linear", temperature=0.07, aug="v1", cos=False, queue=4096)
class InstDisc(Method):
    """Args: encoder, num_samples N, dim D, negatives K (4096), temperature tau (0.07), bank_momentum m.

    Buffer ``memory`` (N, D), identical on every rank (updated with all ranks' embeddings).
    """

    num_views = 1

    def __init__(self, encoder, num_samples: int, dim: int = 128, negatives: int = 4096,
                 temperature: float = 0.07, bank_momentum: float = 0.5):
        super().__init__()
        self.encoder_q = encoder
        self.negatives = negatives
        self.bank_momentum = bank_momentum
        self.loss_fn = InfoNCE(temperature)
        self.register_buffer("memory", F.normalize(torch.rand(num_samples, dim) - 0.5, dim=1))

    @classmethod
    def from_config(cls, cfg, num_samples: int):
        return cls(encoder_from_config(cfg), num_samples, cfg.dim, cfg.queue, cfg.temperature,
                   cfg.bank_momentum)

    def forward(self, views, index, clusters=None):
        q = F.normalize(self.encoder_q(views[0]), dim=1)
        neg_ids = torch.randint(self.memory.shape[0], (self.negatives,), device=q.device)
        loss, logits = self.loss_fn(q, self.memory[index], self.memory[neg_ids].T)
        self.update_memory(q.detach(), index)
        return {"loss": loss, "acc_inst": top1(logits, torch.zeros_like(index))}

    @torch.no_grad()
    def update_memory(self, q: torch.Tensor, index: torch.Tensor) -> None:
        q, index = D.all_gather(q), D.all_gather(index)
        mixed = self.memory[index] * self.bank_momentum + q * (1 - self.bank_momentum)
        self.memory[index] = F.normalize(mixed, dim=1)
