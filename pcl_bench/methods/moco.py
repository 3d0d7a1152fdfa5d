"""MoCo v1 / v2 (He et al. 2020; Chen et al. 2020): InfoNCE against a momentum-encoded queue.

v1 and v2 are the same class; they differ only in their presets (head, tau, augmentation, schedule).
"""
from __future__ import annotations

from .base import register
from .momentum import MomentumContrast


@register("moco", head="linear", temperature=0.07, aug="v1", cos=False, queue=65536)
# On shapes a 4096-key queue spans 128 steps of batch 32 and moco_v2's loss rose as the lr decayed (likely: its
# old keys are easy negatives); 512 keys (16 steps) gave +5 kNN.
@register("moco_v2", on={"shapes": {"queue": 512}}, head="mlp", temperature=0.2, aug="v2", cos=True, queue=65536)
class MoCo(MomentumContrast):
    """L = InfoNCE(q, k+, queue) with tau = 0.07 (v1) or 0.2 (v2)."""

    def forward(self, views, index, clusters=None):
        _, loss, metrics = self.contrast(views[0], views[1])
        return {"loss": loss, **metrics}
