"""--aug-backend pil against tensor, in one process: the augmentation alone, then whole training epochs.

1. Making the two views of one training batch (the dataset preset's batch and crop size) from the first images of
   the training set: torchvision/PIL image by image on one thread (what one loader worker does) against
   ``BatchAugment`` on the training device; ``--rounds`` alternating rounds, the median of each is printed.
2. ``--epochs`` epochs of moco_v2 with each backend (the preset otherwise unchanged): training images per second
   from the run's epochs.csv, and their ratio.

    python benchmarks/aug_backend.py                      # shapes on this machine, ~2 min on 2 cores
    python benchmarks/aug_backend.py --dataset cifar10 --data-root ~/data/cifar --epochs 1
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torchvision.transforms import PILToTensor

from pcl_bench.config import resolve
from pcl_bench.data.augment import pretrain_transform
from pcl_bench.data.batch_augment import BatchAugment
from pcl_bench.runtime.atomic import write_json
from pcl_bench.runtime.metrics_log import read_epochs
from pcl_bench.runtime.provenance import machine, provenance
from pcl_bench.train.engine import image_size, load_split, pretrain, resolve_device


def time_augmentations(cfg, device: torch.device, rounds: int) -> tuple[float, float]:
    """Median seconds to make two views of one batch: (PIL on one thread, BatchAugment on ``device``)."""
    ds, _ = load_split(cfg, cfg.train_split)
    size = image_size(cfg, ds)
    pil_images = [ds[i][0] for i in range(cfg.batch_size)]  # no transform: PIL images
    batch = torch.stack([PILToTensor()(im) for im in pil_images]).to(device)
    pil, tensor = pretrain_transform(cfg.aug, size, cfg.crop_min_scale), BatchAugment(cfg.aug, size, cfg.crop_min_scale)
    threads = torch.get_num_threads()
    times: dict[str, list[float]] = {"pil": [], "tensor": []}
    for _ in range(rounds):
        torch.set_num_threads(1)  # a loader worker's setting
        t = time.perf_counter()
        [torch.stack([pil(im) for im in pil_images]) for _ in range(2)]
        times["pil"].append(time.perf_counter() - t)
        torch.set_num_threads(threads)
        t = time.perf_counter()
        [tensor(batch) for _ in range(2)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        times["tensor"].append(time.perf_counter() - t)
    return statistics.median(times["pil"]), statistics.median(times["tensor"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default="benchmarks/results/aug_backend.json")
    args = parser.parse_args()
    device = resolve_device(args.device)

    base = {"method": "moco_v2", "dataset": args.dataset, "data_root": args.data_root, "epochs": args.epochs,
            "device": args.device, "final_knn": False, "save_every": 10**6}
    cfg = resolve(base)
    pil_s, tensor_s = time_augmentations(cfg, device, args.rounds)
    speed = {}
    with tempfile.TemporaryDirectory() as out:
        for backend in ("pil", "tensor"):
            run = resolve({**base, "aug_backend": backend, "out": out, "name": backend})
            pretrain(run)
            speed[backend] = statistics.mean(r["images_per_s"] for r in read_epochs(run.run_dir))

    result = {"dataset": args.dataset, "batch_size": cfg.batch_size, "image_size": cfg.image_size,
              "device": str(device), **machine(), "rounds": args.rounds, "epochs": args.epochs,
              "two_views_pil_one_thread_s": pil_s, "two_views_tensor_s": tensor_s, "augment_speedup": pil_s / tensor_s,
              "train_images_per_s_pil": speed["pil"], "train_images_per_s_tensor": speed["tensor"],
              "train_speedup": speed["tensor"] / speed["pil"], **provenance()}
    write_json(result, args.output)
    print(f"\ntwo views of a batch of {cfg.batch_size}: PIL (one thread) {pil_s * 1e3:.1f} ms, "
          f"tensor ({device}) {tensor_s * 1e3:.1f} ms: {result['augment_speedup']:.2f}x\n"
          f"moco_v2 training: {speed['pil']:.0f} img/s with pil, {speed['tensor']:.0f} with tensor: "
          f"{result['train_speedup']:.2f}x\nwrote {args.output}")


if __name__ == "__main__":
    main()
