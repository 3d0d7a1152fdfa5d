"""Where a result came from: package version and git commit of the code that produced it, and, for timings,
the machine it ran on."""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

from .. import __version__


@functools.cache
def git_commit() -> str:
    """The commit of the checkout this package runs from (with ``+dirty`` if modified), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def provenance() -> dict[str, str]:
    return {"version": __version__, "git_commit": git_commit()}


def machine() -> dict[str, str | int | None]:
    """The hardware a timing ran on: CPU, torch's CPU threads and the GPU's name (None without CUDA)."""
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
