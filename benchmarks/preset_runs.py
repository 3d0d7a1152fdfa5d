"""Run ``pcl-bench pretrain`` on the ``shapes`` preset for several methods and seeds and keep one row per run.

Each run is the plain command (``pcl-bench pretrain --method M --seed S`` plus any extra options), timed from
outside, so a row's ``wall_s`` is what a user waits for: data loading, training, E-steps and the final kNN.
The row joins the run's ``config.json`` (settings and provenance) and ``knn.json`` (the final check: trained
encoder against a randomly initialised one) with the ``shapes`` generator version and is appended to
``--results``.

    python benchmarks/preset_runs.py --methods pcl_v2 moco_v2 --seeds 0 1 2
    python benchmarks/preset_runs.py --methods moco_v2 --seeds 0 --results benchmarks/results/x.jsonl -- --epochs 40
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pcl_bench.data.shapes import GENERATOR_VERSION

RESULTS = Path(__file__).parent / "results" / "shapes_preset_runs.jsonl"
SETTINGS = ["method", "seed", "epochs", "batch_size", "lr", "temperature", "queue", "moco_m", "num_cluster",
            "crop_min_scale", "image_size", "bn_splits", "warmup_epochs"]


def run_row(method: str, seed: int, extra: list[str], out: Path) -> dict[str, Any]:
    """Run one pretraining in a subprocess; returns its result row."""
    name = f"{method}_seed{seed}"
    cmd = ["pcl-bench", "pretrain", "--method", method, "--seed", str(seed), *extra]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pcl_bench", *cmd[1:], "--out", str(out), "--name", name, "--overwrite"],
                   check=True)
    wall = time.perf_counter() - start
    run = out / name
    cfg = json.loads((run / "config.json").read_text())
    knn = json.loads((run / "knn.json").read_text())
    return {"command": " ".join(cmd), **{k: cfg[k] for k in SETTINGS}, "shapes_version": GENERATOR_VERSION,
            "wall_s": round(wall),
            "train_time_s": round(knn["train_time_s"]), "knn": knn["knn"],
            "gain": round(knn["knn"][method] - knn["knn"]["random_init"], 2),
            "version": cfg["provenance"]["version"], "git_commit": cfg["provenance"]["git_commit"],
            "date": datetime.date.today().isoformat()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["pcl_v2", "moco_v2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/preset_runs"), help="parent folder of the runs")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSONL file the rows are appended to")
    parser.add_argument("extra", nargs="*", help="more pretrain options, after --")
    args = parser.parse_args()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        for seed in args.seeds:
            row = run_row(method, seed, args.extra, args.out)
            with args.results.open("a") as f:  # one short line per run: an append is enough
                f.write(json.dumps(row) + "\n")
            print(f"{method} seed {seed}: {row['knn'][method]:.1f} against random init "
                  f"{row['knn']['random_init']:.1f} ({row['gain']:+.1f}) in {row['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
