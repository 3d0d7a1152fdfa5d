"""This suite's moco_v2 next to lightly's MoCo v2 on the same data, batch, image size, epochs and device.

lightly (``pip install lightly==1.6.0``; a benchmark-only extra, never a dependency of pcl-bench) is used as its
documentation shows: a torchvision ResNet-18 without its classifier, ``MoCoProjectionHead``, a momentum copy
updated with ``update_momentum``, ``NTXentLoss`` with a memory bank, ``MoCoV2Transform`` in DataLoader worker
processes, driven here by a plain PyTorch loop. Both sides share the settings of this suite's moco_v2 preset for
the dataset (batch, learning rate and cosine schedule, weight decay, momentum m, queue length, temperature,
crop scale, the ImageNet stem); lightly keeps its own augmentation, key encoder (no shuffled BatchNorm) and
data path. Printed: training images/s (data loading and augmentation included) and the weighted kNN top-1 of
each backbone after the same epochs, through this suite's kNN (k = 20, t = 0.07) on the test split.

    python benchmarks/peer_lightly.py --quick                     # shapes, 1,200 images, 2 epochs (~4 min, 2 cores)
    python benchmarks/peer_lightly.py --epochs 5 --device cuda
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from pretrain_overhead import training_parser  # this folder is on sys.path when run as a script
from torch.utils.data import DataLoader

from pcl_bench.config import resolve, set_world
from pcl_bench.data import with_transform
from pcl_bench.data.augment import eval_transform
from pcl_bench.eval.features import extract_features
from pcl_bench.eval.knn import knn_accuracy
from pcl_bench.methods import build_method
from pcl_bench.models import backbone_features
from pcl_bench.runtime.atomic import write_text
from pcl_bench.runtime.device import resolve_device
from pcl_bench.runtime.metrics_log import read_epochs
from pcl_bench.runtime.provenance import machine, provenance
from pcl_bench.train.engine import load_split, pretrain


def knn(backbone, cfg, device) -> float:
    """Weighted kNN top-1 (k = 20, t = 0.07) of ``backbone``'s pooled features, train bank -> test split."""
    tf = eval_transform(cfg.image_size)
    loaders = [DataLoader(with_transform(load_split(cfg, s)[0], tf), 256) for s in (cfg.train_split, cfg.test_split)]
    backbone.eval()
    (fb, yb), (ft, yt) = [extract_features(lambda x: backbone_features(backbone, x), ld, device) for ld in loaders]
    return knn_accuracy(fb, yb, ft, yt, 20, 0.07)


def train_lightly(cfg, device: torch.device, workers: int) -> tuple[torch.nn.Module, float]:
    """lightly's MoCo v2 for ``cfg.epochs`` epochs; returns (backbone, training images/s)."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import MoCoV2Transform

    torch.manual_seed(cfg.seed)
    resnet = torchvision.models.resnet18()
    resnet.fc = torch.nn.Identity()
    backbone, head = resnet, MoCoProjectionHead(512, 512, cfg.dim)  # this suite's MLP head at ResNet-18's width
    backbone_k, head_k = copy.deepcopy(backbone), copy.deepcopy(head)
    for net in (backbone_k, head_k):
        deactivate_requires_grad(net)
    nets = torch.nn.ModuleList([backbone, head, backbone_k, head_k]).to(device)
    criterion = NTXentLoss(temperature=cfg.temperature, memory_bank_size=(cfg.queue, cfg.dim))
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
    train = with_transform(load_split(cfg, cfg.train_split)[0],
                           MoCoV2Transform(input_size=cfg.image_size, min_scale=cfg.crop_min_scale))
    loader = DataLoader(train, cfg.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0)
    seconds, images = 0.0, 0
    nets.train()
    for epoch in range(cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
        t0 = time.perf_counter()
        for (x_q, x_k), _, _ in loader:
            x_q, x_k = x_q.to(device), x_k.to(device)
            update_momentum(backbone, backbone_k, cfg.moco_m)
            update_momentum(head, head_k, cfg.moco_m)
            q = head(backbone(x_q))
            with torch.no_grad():
                k = head_k(backbone_k(x_k))
            loss = criterion(q, k)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            images += x_q.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        print(f"lightly epoch {epoch + 1}/{cfg.epochs}: loss {loss.item():.3f}", flush=True)
    return backbone, images / seconds


def main() -> None:
    parser = training_parser(__doc__, epochs=5)
    parser.add_argument("--quick", action="store_true", help="120 images per class, 2 epochs")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="lightly's loader processes")
    parser.add_argument("--output", help="JSON of the figures [default: benchmarks/results/peer_lightly_<device>"
                                         ".json; none with --quick]")
    args = parser.parse_args()
    epochs, subset = (2, 120) if args.quick else (args.epochs, args.subset_per_class)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as out:
        cfg = resolve({"method": "moco_v2", "dataset": args.dataset, "data_root": args.data_root,
                       "device": args.device, "epochs": epochs, "subset_per_class": subset, "out": out,
                       "name": "moco_v2", "final_knn": False, "save_every": 10**6})
        set_world(cfg, 1)
        print(f"{args.dataset}: resnet18 at {cfg.image_size} px, batch {cfg.batch_size}, {epochs} epochs, "
              f"on {device}", flush=True)
        backbone, lightly_rate = train_lightly(cfg, device, args.workers)
        lightly_knn = knn(backbone, cfg, device)
        pretrain(cfg)
        rows = read_epochs(cfg.run_dir)
        ours_rate = sum(r["images_per_s"] * r["train_s"] for r in rows) / sum(r["train_s"] for r in rows)
        ckpt = torch.load(cfg.run_dir / "last.pt", map_location=device, weights_only=False)
    model = build_method(cfg, len(load_split(cfg, cfg.train_split)[0])).to(device)
    model.load_state_dict(ckpt["state_dict"])
    ours_knn = knn(model.encoder_q, cfg, device)
    f = {"pcl_bench_images_per_s": ours_rate, "lightly_images_per_s": lightly_rate,
         "pcl_bench_knn": ours_knn, "lightly_knn": lightly_knn, "speedup": ours_rate / lightly_rate}
    print(f"\n{'':24}{'images/s':>10}{'kNN top-1':>11}")
    print(f"{'pcl-bench moco_v2':24}{ours_rate:10.1f}{ours_knn:11.2f}")
    print(f"{'lightly 1.6.0 MoCo v2':24}{lightly_rate:10.1f}{lightly_knn:11.2f}")
    print(f"pcl-bench trains {f['speedup']:.2f}x as fast as lightly on {device} ({epochs} epochs of {args.dataset})")
    if not args.quick or args.output:
        path = Path(args.output or f"benchmarks/results/peer_lightly_{device.type}.json")
        write_text(json.dumps({"dataset": args.dataset, "epochs": epochs, "subset_per_class": subset,
                               "device": str(device), **machine(), **f, **provenance()}, indent=2) + "\n", path)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
