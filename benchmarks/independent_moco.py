"""Is the short-run kNN dip on ``shapes`` a pcl-bench bug? A cross-check with an independent MoCo v2 and SimCLR.

``benchmarks/short_run_probe.py`` finds that 250 steps of the package's moco_v2 lower the kNN accuracy on
``shapes`` (20.0 -> 17.5) while SimCLR raises it (20.0 -> 26.8). This script trains the same recipe with
none of the package's training code: torchvision's ResNet-18 (ImageNet stem) with a 512-512-128 MLP head,
the v2 augmentation written out with torchvision transforms on 32 px crops, MoCo's key encoder (m = 0.99),
4096-key queue and per-"GPU" BatchNorm over 4 sub-batches of 32 with shuffled keys (ShuffleBN), tau 0.2,
SGD lr 0.015 (constant), momentum 0.9, wd 5e-4, batch 128; or SimCLR's in-batch NT-Xent (tau 0.5) on the
same encoder. kNN (k = 20, t = 0.07, cosine) on the pooled 512-d features, bank: the 5,000 training images.
Only the dataset comes from pcl-bench. If these numbers match the probe's, the dip comes from the method and
the step budget, not from the package. Every run appends a JSON line to
``benchmarks/results/independent_moco.jsonl``.

    python benchmarks/independent_moco.py --steps 250                     # ~6 min on 2 cores
    python benchmarks/independent_moco.py --steps 250 --method simclr     # ~9 min
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image, ImageFilter
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pcl_bench.data import shapes
from pcl_bench.runtime.atomic import write_text
from pcl_bench.runtime.provenance import provenance

RESULTS = Path(__file__).parent / "results" / "independent_moco.jsonl"
SIZE, BATCH, SUB_BATCHES = 32, 128, 4
NORMALIZE = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class RandomBlur:
    """PIL Gaussian blur with sigma ~ U(0.1, 2.0), scaled from 224 px to the crop size."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(np.random.uniform(0.1, 2.0) * SIZE / 224))


AUGMENT = T.Compose([
    T.RandomResizedCrop(SIZE, scale=(0.2, 1.0)),
    T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
    T.RandomGrayscale(0.2),
    T.RandomApply([RandomBlur()], p=0.5),
    T.RandomHorizontalFlip(),
    T.ToTensor(),
    NORMALIZE,
])
EVALUATE = T.Compose([T.Resize(round(SIZE * 256 / 224)), T.CenterCrop(SIZE), T.ToTensor(), NORMALIZE])


class Images(Dataset):
    """uint8 images (N, H, W, 3) -> one transformed view, or two independent ones."""

    def __init__(self, images: np.ndarray, transform: T.Compose, two_views: bool):
        self.images, self.transform, self.two_views = images, transform, two_views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])
        return (self.transform(img), self.transform(img)) if self.two_views else self.transform(img)


def encoder() -> nn.Module:
    net = torchvision.models.resnet18(num_classes=128)
    net.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), net.fc)
    return net


def per_gpu_bn(net: nn.Module, x: torch.Tensor, parts: int = SUB_BATCHES) -> torch.Tensor:
    """Forward in sub-batches, each with its own BatchNorm statistics, as on ``parts`` GPUs."""
    return torch.cat([net(chunk) for chunk in x.chunk(parts)])


@torch.no_grad()
def knn_top1(net: nn.Module, bank: np.ndarray, bank_labels: np.ndarray, test: np.ndarray,
             test_labels: np.ndarray) -> float:
    """Weighted kNN top-1 (k = 20, t = 0.07) of the pooled backbone features, in percent."""
    body = nn.Sequential(*list(net.children())[:-1]).eval()

    def features(images: np.ndarray) -> torch.Tensor:
        out = [body(x).flatten(1) for x in DataLoader(Images(images, EVALUATE, False), 256)]
        return F.normalize(torch.cat(out), dim=1)

    fb, ft = features(bank), features(test)
    sims, idx = (ft @ fb.T).topk(20, dim=1)
    votes = torch.zeros(len(ft), 10).scatter_add_(1, torch.as_tensor(bank_labels)[idx], (sims / 0.07).exp())
    net.train()
    return round(float((votes.argmax(1).numpy() == test_labels).mean() * 100), 2)


class MoCo:
    """Query encoder, momentum key encoder and queue; ``loss(x1, x2)`` is one step's InfoNCE."""

    def __init__(self, m: float = 0.99, queue: int = 4096, tau: float = 0.2):
        self.net, self.m, self.tau = encoder(), m, tau
        self.key_net = copy.deepcopy(self.net).requires_grad_(False)
        self.queue, self.ptr = F.normalize(torch.randn(queue, 128), dim=1), 0

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        q = F.normalize(per_gpu_bn(self.net, x1), dim=1)
        with torch.no_grad():
            for p, pk in zip(self.net.parameters(), self.key_net.parameters()):
                pk.mul_(self.m).add_(p.detach(), alpha=1 - self.m)
            perm = torch.randperm(len(x2))  # ShuffleBN: keys normalised with other sub-batches than queries
            k = F.normalize(per_gpu_bn(self.key_net, x2[perm]), dim=1)[perm.argsort()]
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ self.queue.T.clone()], dim=1) / self.tau
        self.queue[self.ptr: self.ptr + len(k)] = k
        self.ptr = (self.ptr + len(k)) % len(self.queue)
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


class SimCLR:
    """NT-Xent over the 2N views of a batch; gradients flow through both views and every negative."""

    def __init__(self, tau: float = 0.5):
        self.net, self.tau = encoder(), tau

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        n = len(x1)
        z = F.normalize(per_gpu_bn(self.net, torch.cat([x1, x2]), 2 * SUB_BATCHES), dim=1)
        sim = (z @ z.T / self.tau).fill_diagonal_(float("-inf"))
        return F.cross_entropy(sim, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("moco_v2", "simclr"), default="moco_v2")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    train, test = (shapes.ShapesDataset(None, split) for split in ("train", "test"))
    model = MoCo() if args.method == "moco_v2" else SimCLR()
    opt = torch.optim.SGD(model.net.parameters(), lr=0.015, momentum=0.9, weight_decay=5e-4)
    score = functools.partial(knn_top1, model.net, train.images, train.targets, test.images, test.targets)
    before = score()
    print(f"kNN before: {before}", flush=True)
    loader = DataLoader(Images(train.images, AUGMENT, True), BATCH, shuffle=True, drop_last=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)
    step, t0 = 0, time.time()
    while step < args.steps:
        for x1, x2 in loader:
            loss = model.loss(x1, x2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0:
                print(f"step {step} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
            if step == args.steps:
                break
    seconds = time.time() - t0
    after = score()
    print(f"kNN before {before}, after {args.steps} steps {after} ({seconds:.0f} s)")
    row = {"method": args.method, "steps": args.steps, "seed": args.seed, "knn_before": before,
           "knn_after": after, "train_seconds": round(seconds), **provenance()}
    previous = RESULTS.read_text() if RESULTS.exists() else ""
    write_text(previous + json.dumps(row) + "\n", RESULTS)


if __name__ == "__main__":
    main()
