"""VOC-style low-shot SVMs through the feature cache and parallel fits, against the reference script's way.

The reference (``eval_svm_voc.py``) is run once per low-shot setting: each invocation extracts the features
again and fits the per-class SVMs one after another. Here the features are extracted once into the cache and
every (k, run, class) fit is solved in parallel. Both paths draw the same samples, so the scores must match
exactly; the script checks that and prints the speed ratio measured in this one process.

    python benchmarks/lowshot_speed.py                          # shapes-voc, a random ResNet-18
    python benchmarks/lowshot_speed.py --checkpoint runs/demo/pcl_v2/last.pt
    python benchmarks/lowshot_speed.py --dataset voc07 --data-root ~/data/VOCdevkit --checkpoint x.pt
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pcl_bench.data import build_dataset
from pcl_bench.data.augment import eval_transform
from pcl_bench.eval.features import extract_features
from pcl_bench.eval.lowshot import run_lowshot_voc
from pcl_bench.eval.runner import Evaluation, find_spec, load_encoder, resolve_spec
from pcl_bench.runtime.atomic import write_json
from pcl_bench.runtime.provenance import provenance


def plain_features(ev: Evaluation, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Features of one split without the cache, as the reference extracts them on every invocation."""
    ds = build_dataset(ev.dataset, ev.data_root, ev.spec[split], eval_transform(ev.spec["image_size"]))
    loader = DataLoader(ds, ev.batch_size, num_workers=ev.workers)
    feats, _ = extract_features(ev.net, loader, ev.device, desc=f"re-extract {split}")
    return feats.numpy(), np.asarray(ds.targets)


def reference_loop(ev: Evaluation) -> tuple[float, dict[str, float]]:
    """Per setting: extract train and test features again, then fit every SVM in sequence."""
    s, scores = ev.spec, {}
    t0 = time.perf_counter()
    for k in [*s["ks"], None]:
        (xtr, ytr), (xte, yte) = plain_features(ev, "train_split"), plain_features(ev, "test_split")
        ks, full = ([k], False) if k is not None else ([], True)
        for r in run_lowshot_voc(xtr, ytr, xte, yte, ks=ks, runs=s["runs"], seed=s["seed"], variant=s["variant"],
                                 costs=s["costs"], full=full, n_jobs=1):
            scores[r["setting"]] = r["mean"]
    return time.perf_counter() - t0, scores


def cached_parallel(ev: Evaluation) -> tuple[float, dict[str, float]]:
    """Features from the cache (extracted on the first call), all fits at once in parallel."""
    s = ev.spec
    t0 = time.perf_counter()
    (xtr, ytr), (xte, yte) = ev.features("train_split"), ev.features("test_split")
    out = run_lowshot_voc(xtr, ytr, xte, yte, ks=s["ks"], runs=s["runs"], seed=s["seed"], variant=s["variant"],
                          costs=s["costs"], full=s["full"], n_jobs=-1)
    return time.perf_counter() - t0, {r["setting"]: r["mean"] for r in out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="shapes-voc")
    parser.add_argument("--data-root")
    parser.add_argument("--checkpoint", default="random:resnet18")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/lowshot_speed.json")
    args = parser.parse_args()
    spec = resolve_spec(find_spec("lowshot", args.dataset), args.dataset, None, {})
    net, info = load_encoder(args.checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PCL_BENCH_CACHE"] = cache  # an empty feature cache, so the first cached call is cold
        ev = Evaluation(net.to(device), info, spec, args.dataset, args.data_root, device, args.workers, 256,
                        Path(cache))
        ev.split("train_split")  # generate / open the dataset before timing
        t_ref, ref = reference_loop(ev)
        t_cold, ours = cached_parallel(ev)
        t_warm, again = cached_parallel(ev)
    assert ref == ours == again, f"scores differ: {ref} vs {ours} vs {again}"
    result = {"dataset": args.dataset, "checkpoint": args.checkpoint, "settings": list(ref), "mAP": ref,
              "runs": spec["runs"], "reference_loop_s": t_ref, "cached_parallel_cold_s": t_cold,
              "cached_parallel_warm_s": t_warm, "speedup_cold": t_ref / t_cold, "speedup_warm": t_ref / t_warm,
              "cpu_count": os.cpu_count(), "device": device.type, **provenance()}
    write_json(result, args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "mAP"}, indent=1))
    print(f"identical scores; reference loop {t_ref:.1f} s, cached + parallel {t_cold:.1f} s on the first call "
          f"(features extracted) and {t_warm:.1f} s once cached: {t_ref / t_cold:.1f}x / {t_ref / t_warm:.1f}x")


if __name__ == "__main__":
    main()
