"""Pretraining methods, registered by name: instdisc, simclr, moco, moco_v2, pcl, pcl_v2, clop, supcon,
supcon_clop."""
from . import clop, instdisc, moco, pcl, simclr  # noqa: F401  (registration)
from .base import METHODS, Method, build_method, method_class, register

__all__ = ["METHODS", "Method", "build_method", "method_class", "register"]
