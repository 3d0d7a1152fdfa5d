"""PCL's overhead over MoCo: epoch time of moco_v2 and pcl_v2 on the same data, in one process.

Both methods train ``--epochs`` epochs with identical settings (the dataset's preset for pcl_v2, whose queue
length moco_v2 also gets where its preset differs, e.g. on shapes); pcl_v2 runs with no warm-up so that every
measured epoch includes the E-step, which is split into feature pass, k-means and concentration. Printed:
seconds per epoch, images per second, and the pcl_v2 / moco_v2 ratio, both per clustering epoch and amortised
over the paper's schedule (20 of 200 epochs without E-step). The paper reports about 1.33 for the latter on
4 V100s with ImageNet.

    python benchmarks/pretrain_overhead.py                      # shapes, 2 epochs each (~5 min on 2 cores)
    python benchmarks/pretrain_overhead.py --dataset cifar10 --data-root ~/data/cifar --epochs 3
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from pcl_bench.config import resolve
from pcl_bench.runtime.metrics_log import read_epochs
from pcl_bench.runtime.provenance import machine, provenance
from pcl_bench.train.engine import pretrain, resolve_device


def mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r.get(key, 0.0) for r in rows) / len(rows)


def train_both(settings: dict) -> dict[str, list[dict[str, float]]]:
    """Train moco_v2 then pcl_v2 with ``settings`` (config fields) in a temporary folder; returns each run's
    epoch records. Both get pcl_v2's queue length, so that the ratio measures only what PCL adds, and pcl_v2
    no warm-up, so that every epoch clusters."""
    queue = resolve({"method": "pcl_v2", **settings}).queue
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        for method in ("moco_v2", "pcl_v2"):
            cfg = resolve({**settings, "method": method, "queue": queue, "warmup_epochs": 0, "out": out,
                           "name": method, "final_knn": False, "save_every": 10**6})
            pretrain(cfg)
            rows[method] = read_epochs(cfg.run_dir)
    return rows


def training_parser(doc: str, epochs: int) -> argparse.ArgumentParser:
    """The options of the benchmarks that pretrain: --dataset, --data-root, --device, --epochs, --subset-per-class."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--data-root")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--subset-per-class", type=int)
    return parser


def main() -> None:
    parser = training_parser(__doc__, epochs=2)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--output", default="benchmarks/results/pretrain_overhead.json")
    args = parser.parse_args()

    rows = train_both({"dataset": args.dataset, "data_root": args.data_root, "epochs": args.epochs,
                       "subset_per_class": args.subset_per_class, "device": args.device, "workers": args.workers})
    moco, pcl = rows["moco_v2"], rows["pcl_v2"]
    t_moco, t_pcl = mean(moco, "epoch_s"), mean(pcl, "epoch_s")
    ratio = t_pcl / t_moco
    amortised = (0.1 * t_moco + 0.9 * t_pcl) / t_moco  # 20 warm-up epochs of 200 have no E-step
    result = {
        "dataset": args.dataset, "epochs": args.epochs, "device": str(resolve_device(args.device)),
        **machine(),
        "moco_v2_epoch_s": t_moco, "moco_v2_images_per_s": mean(moco, "images_per_s"),
        "pcl_v2_epoch_s": t_pcl, "pcl_v2_train_s": mean(pcl, "train_s"),
        "pcl_v2_images_per_s": mean(pcl, "images_per_s"),
        "estep_feature_s": mean(pcl, "feature_s"), "estep_kmeans_s": mean(pcl, "kmeans_s"),
        "estep_phi_s": mean(pcl, "phi_s"),
        "ratio_per_clustering_epoch": ratio, "ratio_amortised_200ep_schedule": amortised,
        **provenance(),
    }
    print(f"\n{'':28}{'moco_v2':>10}{'pcl_v2':>10}")
    print(f"{'seconds / epoch':28}{t_moco:10.1f}{t_pcl:10.1f}")
    print(f"{'training images / s':28}{result['moco_v2_images_per_s']:10.1f}{result['pcl_v2_images_per_s']:10.1f}")
    print(f"E-step: feature pass {result['estep_feature_s']:.1f}s, k-means {result['estep_kmeans_s']:.1f}s, "
          f"concentration {result['estep_phi_s']:.3f}s")
    print(f"ratio pcl_v2 / moco_v2: {ratio:.2f} per clustering epoch, {amortised:.2f} amortised over the "
          f"paper's schedule (paper: about 1.33)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
