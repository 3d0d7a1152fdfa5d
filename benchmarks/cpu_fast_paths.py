"""Training-step time with and without the CPU fast paths, in one process.

The fast paths change no result beyond float rounding: convolutions with a 1x1 output as one matrix product
(``models/one_pixel.py``), the stem's max-pool in channels-last (``MaxPool2dNHWC``) and fused SGD. Each
variant below turns one of them off; ``plain`` turns all three off, as the code was before them. Variants run
in alternating rounds of 5 steps, so all see the same machine load; the script prints the median step of each
and its ratio to ``fast``.

    python benchmarks/cpu_fast_paths.py                           # moco_v2, shapes preset, ~3 min on 2 cores
    python benchmarks/cpu_fast_paths.py --method pcl_v2 --set image_size=24
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch
from short_run_probe import parse_set  # this folder is on sys.path when run as a script
from torch import nn

from pcl_bench.config import resolve, set_world
from pcl_bench.data.batch_augment import BatchAugment
from pcl_bench.methods import build_method
from pcl_bench.models.encoders import MaxPool2dNHWC
from pcl_bench.models.one_pixel import OnePixelConv2d
from pcl_bench.runtime.atomic import write_text
from pcl_bench.runtime.provenance import machine, provenance
from pcl_bench.train.engine import make_optimizer

VARIANTS = ("fast", "no_one_pixel", "no_nhwc_pool", "no_fused_sgd", "plain")


def without(net: nn.Module, fast_type: type, plain_type: type) -> None:
    """Swap every ``fast_type`` module of ``net`` for a ``plain_type`` one with the same settings and parameters."""
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if type(child) is fast_type:
                plain = copy.copy(child)  # same attributes and parameters, plain forward
                plain.__class__ = plain_type
                setattr(parent, name, plain)


def variant(base: nn.Module, cfg, name: str):
    """(model, optimizer) of one variant."""
    model = copy.deepcopy(base)
    if name in ("no_one_pixel", "plain"):
        without(model, OnePixelConv2d, nn.Conv2d)
    if name in ("no_nhwc_pool", "plain"):
        without(model, MaxPool2dNHWC, nn.MaxPool2d)
    return model, make_optimizer(model, cfg, fused=name not in ("no_fused_sgd", "plain"))


def step_seconds(model, opt, augment: BatchAugment, images: torch.Tensor) -> float:
    """Wall time of one training step from uint8 images: augmentation, forward, backward, SGD."""
    index = torch.arange(images.shape[0])
    t0 = time.perf_counter()
    views = [augment(images) for _ in range(2)]
    loss = model(views, index)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="moco_v2")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config field, e.g. image_size=24 (repeatable)")
    parser.add_argument("--output", default="benchmarks/results/cpu_fast_paths.json")
    args = parser.parse_args()
    cfg = resolve({"method": args.method, "dataset": "shapes", **parse_set(args.set)})
    set_world(cfg, 1)
    torch.manual_seed(0)
    base = build_method(cfg, 5000)
    augment = BatchAugment(cfg.aug, cfg.image_size, cfg.crop_min_scale)
    images = torch.randint(0, 256, (cfg.batch_size, 3, 64, 64), dtype=torch.uint8)
    runs = {name: (*variant(base, cfg, name), []) for name in VARIANTS}
    for model, opt, _ in runs.values():  # warm-up: allocator, oneDNN kernel choice
        for _ in range(3):
            step_seconds(model, opt, augment, images)
    for _ in range(args.steps // 5):
        for model, opt, times in runs.values():
            times += [step_seconds(model, opt, augment, images) for _ in range(5)]
    median = {name: statistics.median(r[2]) for name, r in runs.items()}
    for name, s in median.items():
        print(f"{name:14s} {s * 1000:6.1f} ms per step  ({s / median['fast']:.2f}x fast)")
    result = {"method": args.method, "dataset": "shapes", "arch": cfg.arch, "image_size": cfg.image_size,
              "batch_size": cfg.batch_size, "bn_splits": cfg.bn_splits, **machine(), "cpus": os.cpu_count(),
              "steps_per_variant": len(runs["fast"][2]), **{f"{n}_step_s": s for n, s in median.items()},
              "speedup_over_plain": median["plain"] / median["fast"], **provenance()}
    write_text(json.dumps(result, indent=2) + "\n", args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
