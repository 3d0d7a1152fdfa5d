"""PCL v1 / v2 (Li et al. 2021): MoCo's instance term plus ProtoNCE over M clusterings.

    L = InfoNCE(q, k+, queue) + 1/M sum_m ProtoNCE_m(q)

During the warm-up epochs (no clusters yet) only the InfoNCE term is trained. The E-step clusters the
momentum encoder's embeddings (:attr:`clustering_encoder`), see :mod:`pcl_bench.train.e_step`.
"""
from __future__ import annotations

import torch

from ..losses import ProtoNCE
from ..losses.protonce import check_proto_negatives
from ..models import encoder_from_config
from ..runtime.errors import UsageError
from .base import register, top1
from .momentum import MomentumContrast


@register("pcl", head="linear", temperature=0.2, aug="v1", cos=False, queue=16384)
# On shapes pcl_v2 did best with 1024 queued keys (+1 kNN on two seeds; 512 gained nothing).
@register("pcl_v2", on={"shapes": {"queue": 1024}}, head="mlp", temperature=0.2, aug="v2", cos=True, queue=16384)
class PCL(MomentumContrast):
    """MomentumContrast with a ProtoNCE term; ``proto_negatives`` is r, the sampled negative prototypes."""

    clusters = True

    def __init__(self, encoder, dim: int = 128, queue_len: int = 16384, momentum: float = 0.999,
                 temperature: float = 0.2, proto_negatives: int = 16384, fused: bool = True):
        super().__init__(encoder, dim, queue_len, momentum, temperature, fused)
        self.proto_loss = ProtoNCE(proto_negatives)

    @classmethod
    def from_config(cls, cfg, num_samples: int):
        return cls(encoder_from_config(cfg), cfg.dim, cfg.queue, cfg.moco_m, cfg.temperature,
                   cfg.proto_negatives, cfg.fused_updates)

    @classmethod
    def check(cls, cfg, num_samples: int, num_classes: int | None, local_batch: int) -> None:
        super().check(cfg, num_samples, num_classes, local_batch)
        if not cfg.num_cluster:
            raise UsageError("--num-cluster is empty; give at least one K, e.g. --num-cluster 250,500,1000")
        if max(cfg.num_cluster) > num_samples:
            raise UsageError(f"--num-cluster {max(cfg.num_cluster)} is larger than the {num_samples} training "
                             f"images; use at most {num_samples} prototypes")
        if cfg.kmeans_iters < 1 or cfg.kmeans_restarts < 1:
            raise UsageError("--kmeans-iters and --kmeans-restarts must be at least 1")
        check_proto_negatives(cfg.proto_negatives, min(cfg.num_cluster), local_batch)

    @property
    def clustering_encoder(self):
        return self.encoder_k

    def forward(self, views, index, clusters=None):
        q, loss, metrics = self.contrast(views[0], views[1])
        if clusters is None:
            return {"loss": loss, "loss_inst": loss.detach(), **metrics}
        proto_losses, proto_accs = [], []
        for im2cluster, prototypes, density in zip(clusters.im2cluster, clusters.centroids, clusters.density):
            l_proto, logits = self.proto_loss(q, index, im2cluster, prototypes, density)
            proto_losses.append(l_proto)
            proto_accs.append(top1(logits, torch.arange(q.shape[0], device=q.device)))
        l_proto = torch.stack(proto_losses).mean()
        return {"loss": loss + l_proto, "loss_inst": loss.detach(), "loss_proto": l_proto.detach(),
                "acc_proto": torch.stack(proto_accs).mean(), **metrics}
