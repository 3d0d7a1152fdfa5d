"""Where the checkout's data folders are: ``protocols/`` (the specs) and ``results/paper/`` (the paper's numbers).

They live at the top of the repository, not inside the package. An editable install (``pip install -e .``,
``tox``) finds them next to the package; any other install looks in the current directory, so commands work
from a checkout whichever way the package was installed.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError

_NEXT_TO_PACKAGE = Path(__file__).resolve().parent.parent


def repo_path(*parts: str) -> Path:
    """``<checkout>/<parts...>``; UsageError if neither next to the package nor under the current directory."""
    for base in (_NEXT_TO_PACKAGE, Path.cwd()):
        if (base / Path(*parts)).exists():
            return base / Path(*parts)
    raise UsageError(f"{Path(*parts)} not found next to the package or in {Path.cwd()}; run pcl-bench from "
                     f"the pcl-bench checkout (or install it with pip install -e .)")


def cache_dir(kind: str) -> Path:
    """``$PCL_BENCH_CACHE/<kind>`` if that variable is set, else ``~/.cache/pcl-bench/<kind>``."""
    base = os.environ.get("PCL_BENCH_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "pcl-bench") / kind
