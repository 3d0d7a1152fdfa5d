"""MoCo v1 / v2 (He et al. 2020; Chen et al. 2020): InfoNCE against a momentum-encoded queue.

v1 and v2 are the same class; they differ only in their presets (head, tau, augmentation, schedule).
"""
from __future__ import annotations

from .base import register
from .momentum import MomentumContrast


@register("moco", "moco_v2")
class MoCo(MomentumContrast):
    """L = InfoNCE(q, k+, queue) with tau = 0.07 (v1) or 0.2 (v2)."""

    def forward(self, views, index, clusters=None):
        _, loss, metrics = self.contrast(views[0], views[1])
        return {"loss": loss, **metrics}
