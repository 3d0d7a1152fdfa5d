"""Which ``shapes`` classes does a checkpoint's kNN confuse? Prints the confusion matrix on the test split.

Backbone features of the centre crops at ``--image-size`` (the preset's 32 px by default), bank: the 5,000
training images, weighted kNN (k = 20, t = 0.07, as the end of ``pcl-bench pretrain``). Rows are true classes,
columns predictions, each row sums to the test images of its class (100).

    python benchmarks/knn_confusion.py runs/demo/pcl_v2/last.pt
    python benchmarks/knn_confusion.py random:resnet18
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.data import DataLoader

from pcl_bench.data.augment import eval_transform
from pcl_bench.data.shapes import FINE_CLASSES, ShapesDataset
from pcl_bench.eval.features import extract_features
from pcl_bench.eval.knn import knn_predict
from pcl_bench.eval.runner import load_encoder


def confusion(checkpoint: str, image_size: int, k: int, t: float) -> torch.Tensor:
    """(C, C) counts: row = true class, column = kNN prediction."""
    net, _ = load_encoder(checkpoint)
    data = [DataLoader(ShapesDataset(None, split, eval_transform(image_size)), 256) for split in ("train", "test")]
    (fb, yb), (ft, yt) = (extract_features(net, d, torch.device("cpu")) for d in data)
    pred = knn_predict(fb, yb, ft, k, t, len(FINE_CLASSES))
    return torch.bincount(yt * len(FINE_CLASSES) + pred, minlength=len(FINE_CLASSES) ** 2).view(len(FINE_CLASSES), -1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint path, or random:resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("-t", type=float, default=0.07)
    args = parser.parse_args()
    cm = confusion(args.checkpoint, args.image_size, args.k, args.t)
    names = [c[:8] for c in FINE_CLASSES]
    print(f"{'true/kNN':>10} " + " ".join(f"{n:>8}" for n in names))
    for name, row in zip(FINE_CLASSES, cm.tolist()):
        print(f"{name:>10} " + " ".join(f"{v:8d}" for v in row))
    print(f"top-1 {cm.diag().sum().item() / cm.sum().item() * 100:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
