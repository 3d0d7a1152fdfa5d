"""Training-step time in the NCHW and the channels-last (NHWC) memory format, in one process.

Times ``--steps`` SGD steps of one method with its ``--dataset`` preset (encoder, batch, image size, SplitBN)
on random images in each layout, alternating the layouts in rounds so that both see the same machine load,
and prints the median step time of each and their ratio. Under bfloat16 autocast on a GPU, as in training.
PCL methods step without clusters (their warm-up step). The crop size is the preset's ``image_size``, else 224:
pass ``--set image_size=32`` for CIFAR.
``pcl-bench pretrain`` uses channels-last unless ``--no-channels-last``.

    python benchmarks/memory_format.py                         # moco_v2, shapes preset, ~2 min on 2 cores
    python benchmarks/memory_format.py --method pcl_v2 --device cuda --set arch=resnet50 --set image_size=224
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

from pcl_bench.config import resolve, set_world
from pcl_bench.methods import build_method
from pcl_bench.runtime.atomic import write_text
from pcl_bench.runtime.provenance import machine, provenance
from pcl_bench.train.engine import resolve_device

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def step_seconds(model, optimizer, views, device: torch.device) -> float:
    """Wall time of one forward, backward and SGD step (synchronised on a GPU)."""
    index = torch.arange(views[0].shape[0], device=device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = model(views, index)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="moco_v2")
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per layout")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config field, e.g. arch=resnet50 (repeatable)")
    parser.add_argument("--output", default="benchmarks/results/memory_format.json")
    args = parser.parse_args()
    cfg = resolve({"method": args.method, "dataset": args.dataset, **parse_set(args.set)})
    set_world(cfg, 1)
    device = resolve_device(args.device)
    size = cfg.image_size or 224
    torch.manual_seed(0)
    base = build_method(cfg, 50_000).to(device)
    views = [torch.randn(cfg.batch_size, 3, size, size, device=device) for _ in range(2)]
    runs = {}
    for name, fmt in LAYOUTS.items():
        model = copy.deepcopy(base).to(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.sgd_momentum,
                              weight_decay=cfg.weight_decay)
        runs[name] = (model, opt, [v.contiguous(memory_format=fmt) for v in views], [])
    for model, opt, x, _ in runs.values():  # warm-up: allocator, oneDNN / cuDNN algorithm choice
        for _ in range(3):
            step_seconds(model, opt, x, device)
    for _ in range(args.steps // 5):  # rounds of 5 steps per layout
        for model, opt, x, times in runs.values():
            times += [step_seconds(model, opt, x, device) for _ in range(5)]
    median = {name: statistics.median(r[3]) for name, r in runs.items()}
    result = {"method": args.method, "dataset": args.dataset, "arch": cfg.arch, "image_size": size,
              "batch_size": cfg.batch_size, "bn_splits": cfg.bn_splits, "device": device.type, **machine(),
              "cpus": os.cpu_count(),
              "steps_per_layout": len(runs["nchw"][3]),
              **{f"{name}_step_s": s for name, s in median.items()},
              "speedup_channels_last": median["nchw"] / median["channels_last"], **provenance()}
    print(f"{args.method} on {args.dataset} preset ({cfg.arch}, {size} px, batch {cfg.batch_size}, {device.type}):"
          f" median step NCHW {median['nchw']:.3f} s, channels-last {median['channels_last']:.3f} s, "
          f"speed-up {result['speedup_channels_last']:.2f}x")
    write_text(json.dumps(result, indent=2) + "\n", args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
