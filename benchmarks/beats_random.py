"""Does every pretrained encoder beat a randomly initialised one on every score of a results store?

Reads a store (default: the demo's ``runs/demo/results.jsonl``), takes its latest rows as the report
does (:func:`pcl_bench.analysis.report.latest_rows`), and compares each method's mean with the ``random init`` row of
the same score. Prints one line per score and a summary; exits 1 if some method is not above random init.
Detection is skipped: the demo does not run it, so its rows may come from other checkpoints.

    python benchmarks/beats_random.py                           # the demo's store
    python benchmarks/beats_random.py results/shapes_demo.jsonl  # the committed example
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcl_bench.analysis.report import latest_rows
from pcl_bench.eval.store import read_rows

DEFAULT_STORE = Path(__file__).resolve().parent.parent / "runs" / "demo" / "results.jsonl"
SCORE = ["protocol", "dataset", "setting", "metric"]


def newest_scores(store: Path) -> dict[tuple, dict[str, float]]:
    """{(protocol, dataset, setting, metric): {method: mean}} from the store's latest rows; detection and
    per-class rows left out."""
    rows = latest_rows(read_rows(store))
    rows = rows[(rows["protocol"] != "detection") & (rows["class"] == "")]
    scores: dict[tuple, dict[str, float]] = {}
    for key, group in rows.groupby(SCORE, sort=True):
        scores[key] = dict(zip(group["method"], group["mean"].astype(float)))
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", nargs="?", type=Path, default=DEFAULT_STORE)
    parser.add_argument("--baseline", default="random init", help="method name of the baseline rows")
    args = parser.parse_args()
    compared = failed = 0
    for key, by_method in sorted(newest_scores(args.store).items()):
        base = by_method.get(args.baseline)
        if base is None:
            continue
        others = {m: v for m, v in sorted(by_method.items()) if m != args.baseline}
        below = [m for m, v in others.items() if not v > base]
        compared, failed = compared + len(others), failed + len(below)
        cells = "  ".join(f"{m} {v:.4g}" for m, v in others.items())
        print(f"{' '.join(filter(None, key)):<40} {args.baseline} {base:.4g}  {cells}"
              + (f"  NOT ABOVE: {', '.join(below)}" if below else ""))
    print(f"{compared - failed} of {compared} method scores are above {args.baseline}")
    return 1 if failed or not compared else 0


if __name__ == "__main__":
    sys.exit(main())
