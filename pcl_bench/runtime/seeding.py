"""Reproducible randomness: every epoch of every run reseeds all generators from (seed, epoch, rank), so a
run resumed at an epoch boundary continues exactly as the uninterrupted one; a run resumed mid-epoch restores
the generators' saved states."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed Python, NumPy and torch from (seed, epoch, rank); DataLoader workers derive their seeds from it."""
    s = (seed * 1_000_003 + epoch * 1009 + rank) % 2**32
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def rng_state() -> dict[str, Any]:
    """The state of every generator a training step draws from (Python, NumPy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
