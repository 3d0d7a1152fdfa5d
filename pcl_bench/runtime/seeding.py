"""Reproducible randomness: every epoch of every run reseeds all generators from (seed, epoch, rank), so a
resumed run continues exactly as the uninterrupted one."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed Python, NumPy and torch from (seed, epoch, rank); DataLoader workers derive their seeds from it."""
    s = (seed * 1_000_003 + epoch * 1009 + rank) % 2**32
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
