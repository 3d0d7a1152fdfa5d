"""Shared test set-up: the generated `shapes` cache lives in a per-session temporary folder."""
import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def shapes_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("pcl_bench_cache")
    old = os.environ.get("PCL_BENCH_CACHE")
    os.environ["PCL_BENCH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("PCL_BENCH_CACHE", None)
    else:
        os.environ["PCL_BENCH_CACHE"] = old


@pytest.fixture(scope="module")
def one_thread():
    """Tiny CPU networks: one intra-op thread avoids the overhead (and contention on a busy machine) of two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter):
    """One line on the real-data tier, so that CI logs show whether it ran on real images or skipped."""
    from real_data import SHARED_DATA

    counts = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        reports = terminalreporter.stats.get(outcome, [])
        counts[outcome] = sum(1 for r in reports if "test_real_data" in getattr(r, "nodeid", ""))
    if any(counts.values()):
        found = "found" if SHARED_DATA.is_dir() else "absent"
        terminalreporter.write_line(
            f"real-data tier ({SHARED_DATA}, {found}): " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
