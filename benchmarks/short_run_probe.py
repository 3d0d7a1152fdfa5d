"""How much does a short CPU run move the kNN accuracy on ``shapes``? A quick probe for presets and data.

Trains one method (or, with ``--supervised``, a ResNet classifier on the labels) for ``--steps`` SGD steps at a
constant learning rate, with the preset's encoder and augmentation, then prints the weighted kNN top-1
(k = 20, t = 0.07) of the backbone features on the test split before and after, with the 5,000 training images
as the bank. No E-step: pcl / pcl_v2 here train as their warm-up (InfoNCE only). The ``--shapes-*`` options
change the generator's nuisance settings (a separate cache per setting), to ask whether a different default
dataset would be learnt faster. Every run appends one JSON line to ``benchmarks/results/short_run_probe.jsonl``.

    python benchmarks/short_run_probe.py --steps 250                                  # moco_v2, ~5 min
    python benchmarks/short_run_probe.py --steps 250 --set lr=0.03
    python benchmarks/short_run_probe.py --steps 500 --set batch_size=64 --set bn_splits=2
    python benchmarks/short_run_probe.py --steps 250 --shapes-diameter 0.6,0.9 --shapes-outline 0 \\
        --shapes-clutter 1 --shapes-textured 0 --shapes-saturation 1
    python benchmarks/short_run_probe.py --steps 100 --supervised
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pcl_bench.config import resolve, set_world
from pcl_bench.data import shapes
from pcl_bench.data.augment import TwoCropsTransform, eval_transform, pretrain_transform
from pcl_bench.eval.features import extract_features
from pcl_bench.eval.knn import knn_accuracy
from pcl_bench.methods import build_method
from pcl_bench.models.encoders import backbone_features, build_encoder
from pcl_bench.runtime.atomic import write_text
from pcl_bench.runtime.provenance import provenance

RESULTS = Path(__file__).parent / "results" / "short_run_probe.jsonl"


def configure_shapes(args: argparse.Namespace) -> dict:
    """Apply the ``--shapes-*`` options to the generator; returns the changed settings."""
    changed = {k: v for k, v in vars(args).items() if k.startswith("shapes_") and v is not None}
    if args.shapes_diameter:
        shapes.DIAMETER = tuple(args.shapes_diameter)
    if args.shapes_outline is not None:
        shapes.OUTLINE_ONLY = args.shapes_outline
    if args.shapes_clutter is not None:
        shapes.MAX_CLUTTER = args.shapes_clutter
    if args.shapes_textured is not None:
        shapes.TEXTURED = args.shapes_textured
    if args.shapes_saturation is not None:
        shapes.MAX_SATURATION = args.shapes_saturation
    if changed:  # a variant gets its own cache files
        shapes.GENERATOR_VERSION = f"{shapes.GENERATOR_VERSION}-" + "-".join(f"{k[7:]}{v}" for k, v in changed.items())
    return changed


def knn(net: torch.nn.Module, bank: DataLoader, test: DataLoader) -> float:
    was_training = net.training
    net.eval()
    (fb, yb), (ft, yt) = (extract_features(lambda x: backbone_features(net, x), d, torch.device("cpu"))
                          for d in (bank, test))
    net.train(was_training)
    return round(knn_accuracy(fb, yb, ft, yt, 20, 0.07), 2)


def parse_set(items: list[str]) -> dict:
    """``["lr=0.03", "aug=v1"]`` -> ``{"lr": 0.03, "aug": "v1"}`` (values parsed as JSON where they can be)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="moco_v2")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--supervised", action="store_true", help="cross-entropy on the labels instead")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="pretraining config field, e.g. lr=0.03 (repeatable)")
    parser.add_argument("--shapes-diameter", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--shapes-outline", type=float, help="share of outline-only shapes")
    parser.add_argument("--shapes-clutter", type=int, help="maximum number of distractors")
    parser.add_argument("--shapes-textured", type=float, help="share of textured backgrounds")
    parser.add_argument("--shapes-saturation", type=float, help="maximum colour saturation")
    parser.add_argument("--cache", default=None, help="shapes cache folder (default: a temporary folder)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    variant = configure_shapes(args)
    overrides = parse_set(args.set)
    cfg = resolve({"method": args.method, "dataset": "shapes", **overrides})
    set_world(cfg, 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.cache or tmp
        base = pretrain_transform(cfg.aug, cfg.image_size, cfg.crop_min_scale)
        train = shapes.ShapesDataset(root, "train", base if args.supervised else TwoCropsTransform(base))
        loader = DataLoader(train, cfg.batch_size, shuffle=True, num_workers=cfg.workers, drop_last=True,
                            persistent_workers=cfg.workers > 0)
        ev = eval_transform(cfg.image_size)
        bank, test = (DataLoader(shapes.ShapesDataset(root, split, ev), 256) for split in ("train", "test"))
        if args.supervised:
            model = build_encoder(cfg.arch, len(shapes.FINE_CLASSES), "linear", cfg.stem, 1)
            net = model
        else:
            model = build_method(cfg, len(train))
            net = model.encoder_q
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
        before, step, t0 = knn(net, bank, test), 0, time.time()
        print(f"kNN before: {before}", flush=True)
        while step < args.steps:
            for views, target, index in loader:
                if args.supervised:
                    out = {"loss": F.cross_entropy(model(views), target)}
                else:
                    out = model(views, index)
                opt.zero_grad()
                out["loss"].backward()
                opt.step()
                step += 1
                if step % 50 == 0:
                    acc = f" instance acc {out['acc_inst'].item():.1f}" if "acc_inst" in out else ""
                    print(f"step {step} loss {out['loss'].item():.3f}{acc} {time.time() - t0:.0f}s", flush=True)
                if step >= args.steps:
                    break
        seconds = time.time() - t0
        after = knn(net, bank, test)
    row = {"method": "supervised" if args.supervised else args.method, "steps": args.steps,
           "overrides": overrides, "shapes": variant, "knn_before": before, "knn_after": after,
           "train_seconds": round(seconds), **provenance()}
    print(f"kNN before {before}, after {args.steps} steps {after} ({seconds:.0f} s)")
    RESULTS.parent.mkdir(exist_ok=True)
    previous = RESULTS.read_text() if RESULTS.exists() else ""
    write_text(previous + json.dumps(row) + "\n", RESULTS)


if __name__ == "__main__":
    main()
