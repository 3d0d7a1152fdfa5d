"""Pretraining methods, one small registered module each: instdisc, simclr, moco / moco_v2, pcl / pcl_v2, and
clop, supcon, supcon_clop (CLOP's term can also be added to any method with ``--clop``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..runtime.errors import UsageError
from . import instdisc, moco, pcl, simclr  # noqa: F401  (registration)
from .base import DATASET_PRESETS, METHODS, PRESETS, Method, register
from .clop import with_clop

if TYPE_CHECKING:
    from ..config import PretrainConfig


def method_class(cfg: PretrainConfig) -> type[Method]:
    """The class of ``--method``, with the CLOP term mixed in when ``--clop`` is set."""
    if cfg.method not in METHODS:
        raise UsageError(f"unknown --method {cfg.method!r}; choose one of {', '.join(sorted(METHODS))}")
    return with_clop(METHODS[cfg.method]) if cfg.clop else METHODS[cfg.method]


def build_method(cfg: PretrainConfig, num_samples: int) -> Method:
    return method_class(cfg).from_config(cfg, num_samples)


__all__ = ["DATASET_PRESETS", "METHODS", "PRESETS", "Method", "build_method", "method_class", "register"]
