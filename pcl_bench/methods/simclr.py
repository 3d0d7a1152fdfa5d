"""SimCLR (Chen et al. 2020), end to end: NT-Xent over the two views of every image in the global batch."""
from __future__ import annotations

import torch.nn.functional as F

from ..losses import NTXent
from ..models import encoder_from_config
from ..runtime import distributed as D
from .base import Method, register, top1

# Small batches need a softer NT-Xent temperature.
SMALL_BATCH_TEMPERATURE = {d: {"temperature": 0.5} for d in ("shapes", "cifar10", "cifar100")}


@register("simclr", on=SMALL_BATCH_TEMPERATURE, head="mlp", temperature=0.1, aug="v2", cos=True)
class SimCLR(Method):
    """One encoder for both views; negatives are the other 2N - 2 views of the batch (all ranks)."""

    loss_cls = NTXent

    def __init__(self, encoder, temperature: float = 0.5):
        super().__init__()
        self.encoder_q = encoder
        self.loss_fn = self.loss_cls(temperature)

    @classmethod
    def from_config(cls, cfg, num_samples: int):
        return cls(encoder_from_config(cfg), cfg.temperature)

    def forward(self, views, index, clusters=None):
        z1, z2 = (F.normalize(self.encoder_q(v), dim=1) for v in views)
        b = z1.shape[0]
        loss, logits, target = self.loss_fn(z1, z2, D.all_gather_with_grad(z1), D.all_gather_with_grad(z2),
                                            offset=D.rank() * b)
        return {"loss": loss, "acc_inst": top1(logits, target)}
