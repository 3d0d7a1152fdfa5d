"""Where things are: the data files shipped inside the package (protocol specs, the paper's numbers) and the
cache folders (generated datasets, features, image checks)."""
from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def package_path(*parts: str) -> Path:
    """A file or folder shipped inside the installed ``pcl_bench`` package, e.g. ``("eval", "protocols")``."""
    return Path(str(files("pcl_bench").joinpath(*parts)))


def cache_dir(kind: str) -> Path:
    """``$PCL_BENCH_CACHE/<kind>`` if that variable is set, else ``~/.cache/pcl-bench/<kind>``."""
    base = os.environ.get("PCL_BENCH_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "pcl-bench") / kind
