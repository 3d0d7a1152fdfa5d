"""Encoders (torchvision ResNets with the projection head in ``fc``) and SplitBatchNorm."""
from __future__ import annotations

from .encoders import ARCHS, HEADS, STEMS, backbone_features, build_encoder, feature_dim
from .split_bn import SplitBatchNorm


def encoder_from_config(cfg):
    """The encoder described by a :class:`~pcl_bench.config.PretrainConfig`."""
    return build_encoder(cfg.arch, cfg.dim, cfg.head, cfg.stem, cfg.bn_splits)


__all__ = ["ARCHS", "HEADS", "STEMS", "SplitBatchNorm", "backbone_features", "build_encoder",
           "encoder_from_config", "feature_dim"]
