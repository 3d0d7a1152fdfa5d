"""Training throughput against the compute ceiling of the device, in one process.

The ceiling is what the device does for the same model without anything else: moco_v2's encoder pair (query
encoder forward and backward, key encoder forward) on random tensors already on the device, at the run's batch
size, image size, memory format and precision. Then moco_v2 and pcl_v2 train for real (``--aug-backend tensor``
with the images held on the device, fused momentum update, no host synchronisation inside a step), and each
one's training images/s is set against the ceiling. pcl_v2 runs with no warm-up, so every epoch has an E-step,
split into feature pass, k-means and concentration; the pcl_v2 / moco_v2 epoch ratio and k-means' share of a
clustering epoch close the table. Epoch figures are the mean over epochs after the first (which also decodes
and caches the images), or the only epoch.

    python benchmarks/gpu_throughput.py --device cpu --quick          # shapes, 1,200 images (~3 min on 2 cores)
    python benchmarks/gpu_throughput.py --dataset imagefolder --data-root ../shared/data/cifar10 \
        --set stem=small --set batch_size=512 --epochs 3                 # CIFAR-10 on a GPU
    (add --set compile=true to measure torch.compile, --set estep_amp=false for a float32 E-step)
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from pretrain_overhead import train_both, training_parser  # this folder is on sys.path when run as a script
from short_run_probe import parse_set

from pcl_bench.config import resolve, set_world
from pcl_bench.methods import build_method
from pcl_bench.runtime.atomic import write_text
from pcl_bench.runtime.device import resolve_device
from pcl_bench.runtime.provenance import machine, provenance
from pcl_bench.train.engine import compile_encoders, memory_format


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ceiling(settings: dict, steps: int) -> float:
    """Images/s of moco_v2's encoder pair alone: median over ``steps`` timed steps after 3 warm-up steps."""
    cfg = resolve({**settings, "method": "moco_v2"})
    set_world(cfg, 1)
    device = resolve_device(cfg.device)
    fmt, amp = memory_format(cfg), cfg.amp and device.type == "cuda"
    model = build_method(cfg, 1000).to(device, memory_format=fmt).train()
    if cfg.compile:  # --set compile=true: the ceiling is compiled too
        compile_encoders(model)
    images = [torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
              .contiguous(memory_format=fmt) for _ in range(2)]
    times = []
    for i in range(steps + 3):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            q = model.encoder_q(images[0])
            with torch.no_grad():
                k = model.encoder_k(images[1])
            loss = (q.float() * k.float()).sum()
        loss.backward()
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return cfg.batch_size / statistics.median(times)


def later_mean(rows: list[dict[str, float]], key: str) -> float:
    rows = rows[1:] or rows
    return sum(r.get(key, 0.0) for r in rows) / len(rows)


def main() -> None:
    parser = training_parser(__doc__, epochs=3)
    parser.add_argument("--quick", action="store_true", help="120 images per class, 2 epochs, 10 ceiling steps")
    parser.add_argument("--ceiling-steps", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="any other config field, e.g. --set batch_size=512 (repeatable)")
    parser.add_argument("--output", help="JSON of the figures [default: benchmarks/results/gpu_throughput_<device>"
                                         ".json; none with --quick]")
    args = parser.parse_args()
    epochs, subset, steps = (2, 120, 10) if args.quick else (args.epochs, args.subset_per_class, args.ceiling_steps)
    settings = {"dataset": args.dataset, "data_root": args.data_root, "device": args.device,
                "subset_per_class": subset, "epochs": epochs, "aug_backend": "tensor", "data_on_device": True,
                **parse_set(args.set)}
    device = resolve_device(args.device)
    cfg = resolve({**settings, "method": "moco_v2"})
    print(f"{args.dataset}: {cfg.arch} ({cfg.stem} stem) at {cfg.image_size} px, batch {cfg.batch_size}, "
          f"{epochs} epochs, on {device}", flush=True)
    top = ceiling(settings, steps)
    rows = train_both(settings)
    moco, pcl = rows["moco_v2"], rows["pcl_v2"]
    f = {"ceiling_images_per_s": top,
         "moco_v2_images_per_s": later_mean(moco, "images_per_s"), "pcl_v2_images_per_s": later_mean(pcl, "images_per_s"),
         "moco_v2_epoch_s": later_mean(moco, "epoch_s"), "pcl_v2_epoch_s": later_mean(pcl, "epoch_s"),
         "estep_feature_s": later_mean(pcl, "feature_s"), "estep_kmeans_s": later_mean(pcl, "kmeans_s"),
         "estep_phi_s": later_mean(pcl, "phi_s")}
    f["moco_v2_of_ceiling"] = f["moco_v2_images_per_s"] / top
    f["pcl_v2_of_ceiling"] = f["pcl_v2_images_per_s"] / top
    f["epoch_ratio"] = f["pcl_v2_epoch_s"] / f["moco_v2_epoch_s"]
    f["kmeans_share"] = f["estep_kmeans_s"] / f["pcl_v2_epoch_s"]
    print(f"\n{'':34}{'images/s':>10}{'of ceiling':>12}")
    print(f"{'ceiling (encoder pair alone)':34}{top:10.0f}{'100%':>12}")
    for m in ("moco_v2", "pcl_v2"):
        print(f"{m + ' training':34}{f[m + '_images_per_s']:10.0f}{f[m + '_of_ceiling']:12.0%}")
    print(f"E-step: features {f['estep_feature_s']:.2f} s, k-means {f['estep_kmeans_s']:.2f} s, concentration "
          f"{f['estep_phi_s']:.3f} s; k-means is {f['kmeans_share']:.1%} of a clustering epoch")
    print(f"epoch: moco_v2 {f['moco_v2_epoch_s']:.1f} s, pcl_v2 {f['pcl_v2_epoch_s']:.1f} s, ratio "
          f"{f['epoch_ratio']:.2f}")
    print(f"moco_v2 trains at {f['moco_v2_of_ceiling']:.0%} of the ceiling on {device}")
    if not args.quick or args.output:
        path = Path(args.output or f"benchmarks/results/gpu_throughput_{device.type}.json")
        write_text(json.dumps({"dataset": args.dataset, "epochs": epochs, "device": str(device), **machine(),
                               "settings": settings, **f, **provenance()}, indent=2, default=str) + "\n", path)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
