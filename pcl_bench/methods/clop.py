"""CLOP and semi-supervised SupCon: contrastive learning with partial labels (Li, Nguyen and Pimentel-Alarcón
2025; Khosla et al. 2020).

- ``supcon``: :class:`SemiSupCon` over the two views of every image in the global batch;
- ``clop``: SimCLR's NT-Xent + lambda * CLOP; ``supcon_clop``: semi-supervised SupCon + lambda * CLOP;
- ``--clop`` adds the CLOP term to any other method (moco_v2, pcl, pcl_v2, ...) through :func:`with_clop`.

Labels come from the engine (:meth:`Method.attach_labels`): a seeded subset of ``--label-fraction`` of the
training images keeps its class, every other image is unlabelled (-1) and sees only the method's own loss.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..losses.clop import CLOPLoss, check_prototypes_fit, orthonormal_prototypes
from ..losses.supcon import SemiSupCon
from ..runtime import distributed as D
from .base import Method, register, top1
from .simclr import SMALL_BATCH_TEMPERATURE, SimCLR


class CLOPTerm(Method):
    """Mixin adding lambda * :class:`CLOPLoss` on the query encoder's projection outputs to a method's loss.

    The term needs the projection outputs ``encoder_q`` computes during the method's own forward (both views
    for SimCLR / SupCon, the query view for MoCo / PCL, whose key view has no gradient). A forward hook on
    ``encoder_q``, active only during this forward, collects them, so no method has to be changed to expose
    them. The prototypes (buffer ``clop_loss.prototypes``, (k, dim)) are drawn from ``--seed`` once the number
    of classes is known (:meth:`attach_labels`) and saved in checkpoints.
    """

    uses_labels = True
    clop_loss: CLOPLoss

    @classmethod
    def check(cls, cfg, num_samples: int, num_classes: int | None, local_batch: int) -> None:
        super().check(cfg, num_samples, num_classes, local_batch)
        if num_classes is not None:
            check_prototypes_fit(num_classes, cfg.dim)

    def attach_labels(self, labels: torch.Tensor, num_classes: int, cfg) -> None:
        super().attach_labels(labels, num_classes, cfg)
        self.clop_loss = CLOPLoss(orthonormal_prototypes(num_classes, cfg.dim, cfg.seed), cfg.clop_weight)

    def forward(self, views, index, clusters=None):
        embeddings: list[torch.Tensor] = []
        hook = self.encoder_q.register_forward_hook(lambda _module, _inputs, z: embeddings.append(z))
        try:
            out = super().forward(views, index, clusters)
        finally:
            hook.remove()
        l_clop = self.clop_loss(embeddings, self.labels[index])
        return {**out, "loss": out["loss"] + l_clop, "loss_clop": l_clop.detach()}


@functools.cache
def with_clop(method: type[Method]) -> type[Method]:
    """``method`` with :class:`CLOPTerm` mixed in (``method`` itself if it already has it)."""
    if issubclass(method, CLOPTerm):
        return method
    return type(f"{method.__name__}CLOP", (CLOPTerm, method), {"__doc__": f"{method.__name__} + CLOP."})


@register("supcon", on=SMALL_BATCH_TEMPERATURE, head="mlp", temperature=0.1, aug="v2", cos=True)
class SupCon(SimCLR):
    """Semi-supervised SupCon on one encoder: labelled images of a class are each other's positives."""

    uses_labels = True
    loss_cls = SemiSupCon

    def forward(self, views, index, clusters=None):
        z1, z2 = (F.normalize(self.encoder_q(v), dim=1) for v in views)
        y = self.labels[index]
        loss, logits, target = self.loss_fn(z1, z2, y, D.all_gather_with_grad(z1), D.all_gather_with_grad(z2),
                                            D.all_gather(y), offset=D.rank() * z1.shape[0])
        return {"loss": loss, "acc_inst": top1(logits, target)}


register("clop", on=SMALL_BATCH_TEMPERATURE, head="mlp", temperature=0.1, aug="v2", cos=True)(with_clop(SimCLR))
register("supcon_clop", on=SMALL_BATCH_TEMPERATURE, head="mlp", temperature=0.1, aug="v2", cos=True)(
    with_clop(SupCon))
