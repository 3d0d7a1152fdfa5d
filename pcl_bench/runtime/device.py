"""The compute device of a command: ``--device auto`` (CUDA if there is one), ``cuda`` or ``cpu``."""
from __future__ import annotations

import torch

from .errors import UsageError


def resolve_device(name: str) -> torch.device:
    """The device ``name`` names; a CUDA request without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu")
    if name not in ("cuda", "cpu"):
        raise UsageError(f"unknown --device {name!r}; choose auto, cuda or cpu")
    return torch.device(name)
