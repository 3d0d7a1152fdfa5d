"""Evaluation grids: every (checkpoint, protocol, seed) as one ``pcl-bench eval`` job.

Every job is planned first, in this process: each protocol's spec, splits and settings (:func:`runner.plan`)
and each checkpoint (loaded once, which also gives its sha256), so a bad input stops the grid before any job
starts. A job is known by its checkpoint's sha256 and the row fields that say what was evaluated
(:func:`runner.identity`); jobs whose rows are already in the results store are skipped, so an interrupted
grid, run again, does only what is left. Jobs run as ``pcl-bench eval`` processes (or SLURM jobs) that share
the content-keyed feature cache: a checkpoint's features are extracted by the first job that needs them, and
its other jobs wait for that extraction (the cache's lock) and read it.
"""
from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from ..runtime import launch
from ..runtime.errors import UsageError
from ..runtime.launch import Job, SlurmResources
from .runner import identity, load_encoder, plan
from .store import canonical, read_rows


@dataclass(frozen=True)
class GridJob:
    """One evaluation of the grid: ``job`` is its command, ``key`` its identity in the results store."""

    job: Job
    checkpoint: str
    label: str
    sha256: str
    protocol: str
    seed: int | None
    key: str


def row_key(sha256: str, fields: dict[str, Any]) -> str:
    """The identity of an evaluation: the checkpoint's sha256 (16 hex digits, as stored) and the
    :func:`runner.identity` fields, as canonical JSON."""
    names = ("dataset", "train_split", "test_split", "protocol", "variant", "params")
    return canonical([str(sha256)[:16], *(fields[n] for n in names)])


def expand_checkpoints(patterns: Sequence[str]) -> list[str]:
    """Checkpoint paths from ``patterns`` (paths, globs such as ``runs/a/checkpoint_*.pt``, or
    ``random:<arch>``), in order, each once."""
    found: list[str] = []
    for pattern in patterns:
        if pattern.startswith("random:"):
            found.append(pattern)
            continue
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise UsageError(f"--checkpoints: nothing matches {pattern!r}; give checkpoint files or globs, "
                             f"e.g. runs/pcl_v2/checkpoint_*.pt")
        found += matches
    return list(dict.fromkeys(found))


def labels(checkpoints: Sequence[str]) -> dict[str, str]:
    """A short name per checkpoint for tables: ``<run folder>/<file stem>``, or the path where two share one."""
    short = {c: f"{Path(c).parent.name}/{Path(c).stem}".strip("/") for c in checkpoints}
    return {c: s if list(short.values()).count(s) == 1 else c for c, s in short.items()}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def plan_grid(checkpoints: Sequence[str], protocols: Sequence[str], dataset: str, data_root: str | None,
              seeds: Sequence[int] | None, *, results: str | os.PathLike, log_dir: Path, arch: str | None = None,
              fixed: dict[str, Any] | None = None, device: str = "auto", workers: int = 2, batch_size: int = 256,
              skip_corrupt: bool = False) -> list[GridJob]:
    """Every (checkpoint, protocol, seed) job, checked as :func:`runner.plan` and the checkpoint loader check
    them. ``seeds`` (None: each spec's own seed) apply to the protocols whose spec has a seed; the others (kNN)
    run once per checkpoint. ``fixed``: ``train_split`` / ``test_split`` / ``image_size`` for every protocol."""
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    opened: dict = {}
    settings = {"results": results, "device": device, "workers": workers, "batch_size": batch_size,
                "skip_corrupt": skip_corrupt, "opened": opened}
    shas: dict[tuple[str, int], str] = {}
    names = labels(checkpoints)
    jobs = []
    for protocol in protocols:
        first = plan(protocol, dataset, data_root, overrides=fixed, **settings)
        runs = [None] if seeds is None or "seed" not in first.spec else list(seeds)
        for seed in runs:
            ev = first if seed is None else plan(protocol, dataset, data_root,
                                                 overrides={**fixed, "seed": seed}, **settings)
            fields, spec_seed = identity(ev), ev.spec.get("seed", 0)
            for checkpoint in checkpoints:
                weights_seed = spec_seed if checkpoint.startswith("random:") else 0  # random init is seeded
                if (checkpoint, weights_seed) not in shas:
                    shas[checkpoint, weights_seed] = load_encoder(checkpoint, arch, weights_seed)[1]["sha256"][:16]
                sha = shas[checkpoint, weights_seed]
                argv = ["eval", protocol, "--dataset", dataset, "--checkpoint", checkpoint, "--results",
                        str(results), "--device", device, "--workers", str(workers), "--batch-size", str(batch_size)]
                argv += ["--data-root", data_root] if data_root else []
                argv += ["--arch", arch] if arch else []
                argv += ["--seed", str(seed)] if seed is not None else []
                argv += ["--skip-corrupt"] if skip_corrupt else []
                for name, value in fixed.items():
                    argv += ["--" + name.replace("_", "-"), str(value)]
                name = _slug(f"{names[checkpoint]}_{sha[:8]}_{protocol}" + ("" if seed is None else f"_seed{seed}"))
                jobs.append(GridJob(Job(name, tuple(argv), log_dir / f"{name}.log"), checkpoint,
                                    names[checkpoint], sha, protocol, seed, row_key(sha, fields)))
    return jobs


def stored_keys(results: str | os.PathLike) -> set[str]:
    """The evaluations (:func:`row_key`) that have rows in the results store."""
    rows = read_rows(results)
    return {row_key(r["checkpoint_sha256"], r) for r in rows.to_dict("records")} if len(rows) else set()


def run_grid(jobs: Sequence[GridJob], executor: str = "local", max_parallel: int = 1,
             slurm: SlurmResources | None = None, slurm_dir: Path | None = None) -> dict[str, int]:
    """Run ``jobs`` (those not yet in the store: see :func:`stored_keys`) with a progress bar of jobs done and
    failed; returns {job name: exit code} (SLURM: 0 or 1). A failed job is reported with its log and the
    others go on."""
    failed = 0
    with tqdm(total=len(jobs), desc="grid", unit="job", dynamic_ncols=True) as bar, launch.exit_on_sigterm():
        def finished(job: Job, code: int) -> None:
            nonlocal failed
            if code:
                failed += 1
                lines = job.log.read_text(errors="replace").strip().splitlines() if job.log.exists() else []
                bar.write(f"failed: {job.name} (exit code {code}): {lines[-1] if lines else 'no output'}; "
                          f"log: {job.log}")
            bar.set_postfix(failed=failed)
            bar.update()

        if executor == "local":
            return launch.run_local([j.job for j in jobs], max_parallel, finished)
        ex = launch.slurm_executor(slurm_dir, slurm or SlurmResources())
        handles = {j.job: ex.submit(launch.CommandJob(j.job.argv)) for j in jobs}
        bar.write(f"submitted {len(handles)} SLURM jobs ({', '.join(h.job_id for h in handles.values())}); "
                  f"their scripts and logs: {slurm_dir}")
        return launch.wait_slurm(handles, finished)


def grid_rows(jobs: Sequence[GridJob], results: str | os.PathLike) -> pd.DataFrame:
    """The store's rows of ``jobs`` (the latest of each result), with columns ``seed`` (-1: the protocol has no
    seed) and ``label`` (the checkpoint's name in tables, see :func:`labels`)."""
    by_key = {j.key: j for j in jobs}
    rows = read_rows(results)
    if not len(rows):
        return rows.assign(seed=[], label=[])
    keys = [row_key(r["checkpoint_sha256"], r) for r in rows.to_dict("records")]
    rows = rows.assign(key=keys)
    rows = rows[rows["key"].isin(by_key)]
    rows = rows.drop_duplicates(["key", "setting", "metric", "class"], keep="last")
    seeds = [by_key[k].seed if by_key[k].seed is not None else -1 for k in rows["key"]]
    return rows.assign(seed=seeds, label=[by_key[k].label for k in rows["key"]]).drop(columns="key")
