"""Detection transfer (paper Table 5): Faster R-CNN with an FPN on a frozen pretrained ResNet, VOC07 AP@0.5.

The paper's recipe (appendix E): torchvision's Faster R-CNN on a ResNet-FPN initialised from the checkpoint,
every conv layer and BatchNorm of the ResNet frozen (BatchNorm becomes ``FrozenBatchNorm2d`` with the
checkpoint's statistics), so only the FPN, the RPN and the box head train; SGD batch 8, momentum 0.9, weight
decay 1e-4, lr 0.05, 15 epochs, lr x0.1 at epoch 12. What the paper leaves open follows detectron2's VOC
configs (MoCo's detection code is built on detectron2): the shorter side drawn per batch from 480..800 in
training and 800 at test (the longer one at most 1333), random horizontal flips, a linear warm-up over the
first 1000 iterations from lr / 1000, difficult objects kept as training targets, at most 100 detections
per image above score 0.05. All of it is read from the protocol spec (:class:`DetectionConfig`).

Evaluation is the PASCAL VOC protocol: IoU >= 0.5, difficult objects ignored, per-class AP both as the
VOC2007 11-point AP (the Table 5 number, ``mAP``) and the all-point AP (``mAP_allpoint``).

A run folder (one per seed; ``pcl-bench eval detection`` uses
``<results folder>/logs/detection_<dataset>_<checkpoint sha256[:8]>_<settings digest>/seed<s>/``, next to
``ap_per_class.csv``) holds ``config.json``, ``last.pt`` (after every epoch: the trained heads, the
optimizer and the AMP loss scaler; the frozen backbone is the checkpoint's), ``metrics.jsonl`` /
``epochs.csv`` / ``tb/`` and, once evaluated, ``eval.json``. Every epoch reseeds from (seed, epoch) and
flips are drawn in the main process, so a run started again in its folder resumes exactly; a run with
``eval.json`` is not repeated.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.models import ResNet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.transforms.functional import to_tensor
from tqdm import tqdm

from ..data import InstanceSubset
from ..data.augment import IMAGENET_MEAN, IMAGENET_STD
from ..data.shapes_voc import shapes_voc_detection
from ..data.voc import VOC0712, VOCDetection
from ..models.encoders import feature_dim
from ..runtime.atomic import save_torch, write_json, write_text
from ..runtime.errors import UsageError
from ..runtime.metrics_log import MetricLogger
from ..runtime.provenance import provenance
from ..runtime.seeding import seed_epoch
from .voc_ap import detection_ap

# Dataset -> (training years, test year); shapes-voc is generated in the VOC2007 layout.
VOC_YEARS = {"voc07": ("2007", "2007"), "voc07+12": (VOC0712, "2007")}
DATASETS = (*VOC_YEARS, "shapes-voc")
FROZEN = "backbone.body."  # state_dict prefix of the frozen ResNet inside the detector
METRICS = ("mAP", "mAP_allpoint")  # VOC07 11-point (the paper's number) and all-point mean AP, x100


# ---------------------------------------------------------------------------------------------------
# Settings and data


@dataclass
class DetectionConfig:
    """Settings of one detection transfer; the defaults are the paper's VOC recipe (module docstring).

    ``image_size``: shorter image side at test time; ``train_sizes``: shorter sides drawn per training batch
    (empty: ``image_size``); ``max_size``: cap on the longer side. ``milestones``: epochs at which the lr is
    multiplied by 0.1. ``fpn_channels``: width of the FPN levels (and so of the RPN and RoI features);
    ``fpn_norm``: GroupNorm (32 groups) after every FPN convolution, so that the heads see features of one
    scale whatever the backbone's (detectron2's FPN.NORM "GN"; the paper's FPN has none).
    ``anchor_sizes``: one anchor size per FPN level P2..P6 (aspect ratios 0.5, 1, 2).
    ``proposals_train`` / ``proposals_test``: RPN proposals kept per image after NMS; ``rois_per_image``:
    proposals sampled per image to train the box head. ``amp``: float16 autocast with loss scaling on CUDA
    (ignored on CPU).
    """

    epochs: int = 15
    milestones: tuple[int, ...] = (12,)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 8
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    image_size: int = 800
    train_sizes: tuple[int, ...] = tuple(range(480, 801, 32))
    max_size: int = 1333
    flip: bool = True
    fpn_channels: int = 256
    fpn_norm: bool = False
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    proposals_train: int = 2000
    proposals_test: int = 1000
    rois_per_image: int = 512
    detections_per_image: int = 100
    amp: bool = True
    max_iters: int = 0
    train_subset: int = 0
    test_subset: int = 0
    seed: int = 0
    log_every: int = 20

    def __post_init__(self) -> None:
        self.milestones, self.train_sizes, self.anchor_sizes = (
            tuple(int(v) for v in x) for x in (self.milestones, self.train_sizes, self.anchor_sizes))
        if min(self.max_iters, self.train_subset, self.test_subset) < 0:
            raise UsageError("max_iters, train_subset and test_subset must be 0 (off) or positive")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.image_size < 1:
            raise UsageError(f"detection needs epochs >= 1, batch size >= 1, lr > 0 and image size >= 1; got "
                             f"{self.epochs}, {self.batch_size}, {self.lr}, {self.image_size}")
        if len(self.anchor_sizes) != 5:
            raise UsageError(f"anchor_sizes needs one size per FPN level P2..P6 (5 sizes), got "
                             f"{list(self.anchor_sizes)}")

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> DetectionConfig:
        """The config with every field that the resolved protocol spec sets; the others keep their default."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in spec.items() if k in names})

    def digest(self) -> str:
        """8 hex digits naming the training settings (every field but ``seed`` and ``log_every``)."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("seed", "log_every")}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def _to_tensor(img: Image.Image, target: dict) -> tuple[Tensor, dict]:
    return to_tensor(img), target


def detection_split(name: str, root: str | None, split: str, training: bool) -> VOCDetection:
    """Split ``split`` of detection dataset ``name``, with items ``(image (3, H, W) in [0, 1], target, index)``.

    ``voc07``: VOC2007; ``voc07+12``: VOC2007 + VOC2012 for training (``training``), VOC2007 for testing
    (``root``: the VOCdevkit folder); ``shapes-voc``: generated (``root``: its cache, None for the default).
    Targets as :class:`pcl_bench.data.voc.VOCDetection`.
    """
    if name == "shapes-voc":
        return shapes_voc_detection(root, split, _to_tensor)
    if name not in VOC_YEARS:
        raise UsageError(f"detection runs on {', '.join(DATASETS)}, not {name!r}")
    if root is None:
        raise UsageError(f"--data-root is required for {name}: the VOCdevkit folder holding VOC2007"
                         + (" and VOC2012" if name == "voc07+12" else ""))
    train_year, test_year = VOC_YEARS[name]
    return VOCDetection(root, split, _to_tensor, year=train_year if training else test_year)


def subsets(train_set, test_set, cfg: DetectionConfig) -> tuple:
    """(train, test) cut to ``cfg.train_subset`` / ``cfg.test_subset`` images (0: all), drawn from
    ``cfg.seed`` and kept in index order."""
    rng = np.random.default_rng(cfg.seed)

    def cut(ds, n):
        return ds if not 0 < n < len(ds) else InstanceSubset(ds, np.sort(rng.choice(len(ds), n, replace=False)))

    return cut(train_set, cfg.train_subset), cut(test_set, cfg.test_subset)


def _collate(batch: list) -> tuple[list[Tensor], list[dict]]:
    images, targets, _ = zip(*batch)
    return list(images), list(targets)


def _loader(ds, batch_size: int, shuffle: bool, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(ds, batch_size, shuffle=shuffle, num_workers=workers, collate_fn=_collate,
                      pin_memory=device.type == "cuda")


def hflip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror an image (3, H, W) and its boxes (n, 4) x1, y1, x2, y2 (0-based, x2 exclusive)."""
    flipped = boxes.clone()
    flipped[:, [0, 2]] = image.shape[-1] - boxes[:, [2, 0]]
    return image.flip(-1), flipped


# ---------------------------------------------------------------------------------------------------
# Model


def frozen_backbone(net: ResNet) -> ResNet:
    """A copy of ``net`` with every BatchNorm2d replaced by a FrozenBatchNorm2d holding its statistics and
    affine parameters, and no parameter that requires grad."""
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, child.eps)
                frozen.load_state_dict(child.state_dict())  # drops num_batches_tracked
                setattr(module, name, frozen.to(child.weight.device))
    return net.requires_grad_(False)


def build_detector(backbone: ResNet, num_classes: int, cfg: DetectionConfig) -> FasterRCNN:
    """Faster R-CNN for ``num_classes`` (+ background) on an FPN over layer1..layer4 of a frozen copy of
    ``backbone`` (any torchvision ResNet; ``fc`` and ``avgpool`` are not used). New layers are initialised
    from the global torch seed. The model normalises [0, 1] images with the ImageNet mean and std."""
    width = feature_dim(backbone)  # 512 (ResNet-18/34) or 2048 (ResNet-50)
    body = BackboneWithFPN(frozen_backbone(backbone), {f"layer{i}": str(i - 1) for i in range(1, 5)},
                           [width // 8, width // 4, width // 2, width], out_channels=cfg.fpn_channels,
                           norm_layer=partial(nn.GroupNorm, 32) if cfg.fpn_norm else None)
    anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    return FasterRCNN(body, num_classes + 1, min_size=cfg.train_sizes or (cfg.image_size,),
                      max_size=cfg.max_size, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
                      rpn_anchor_generator=anchors, rpn_post_nms_top_n_train=cfg.proposals_train,
                      rpn_post_nms_top_n_test=cfg.proposals_test, box_batch_size_per_image=cfg.rois_per_image,
                      box_detections_per_img=cfg.detections_per_image)


# ---------------------------------------------------------------------------------------------------
# Training


def learning_rate(cfg: DetectionConfig, epoch: int, iteration: int) -> float:
    """``cfg.lr`` x0.1 per milestone reached, times a linear warm-up from ``warmup_factor`` to 1 over the
    first ``warmup_iters`` iterations (``iteration`` counts from the start of training)."""
    t = min(iteration / cfg.warmup_iters, 1.0) if cfg.warmup_iters > 0 else 1.0
    warm = cfg.warmup_factor + (1.0 - cfg.warmup_factor) * t
    return cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.milestones) * warm


def _save_state(path: Path, model: FasterRCNN, optimizer, scaler, epoch: int) -> None:
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith(FROZEN)}
    save_torch({"epoch": epoch, "heads": heads, "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), **provenance()}, path)


def _load_state(path: Path, model: FasterRCNN, optimizer, scaler) -> int:
    """Restore the heads, optimizer and scaler from ``path``; the number of epochs done (0 if absent)."""
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state["heads"], strict=False)
    if unexpected or any(not k.startswith(FROZEN) for k in missing):
        raise UsageError(f"{path} holds another detector's weights; delete its run folder to start over")
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return int(state["epoch"])


def _batch_to(images: list[Tensor], targets: list[dict], device: torch.device, flip: bool
              ) -> tuple[list[Tensor], list[dict]]:
    """Images and ``{boxes, labels}`` targets on ``device``, each mirrored with probability 1/2 if ``flip``
    (drawn from the main process's torch generator, so independent of the number of loader workers)."""
    mirror = (torch.rand(len(images)) < 0.5).tolist() if flip else [False] * len(images)
    out_images, out_targets = [], []
    for image, target, m in zip(images, targets, mirror):
        boxes = target["boxes"]
        if m:
            image, boxes = hflip(image, boxes)
        out_images.append(image.to(device, non_blocking=True))
        out_targets.append({"boxes": boxes.to(device), "labels": target["labels"].to(device)})
    return out_images, out_targets


def train_detector(model: FasterRCNN, train_set, cfg: DetectionConfig, run_dir: Path, device: torch.device,
                   workers: int = 2) -> None:
    """Train the heads of ``model`` (on ``device``) for ``cfg.epochs``, resuming from ``run_dir/last.pt``.

    SGD over the parameters that require grad, lr from :func:`learning_rate` set every iteration.
    Writes ``last.pt`` after every epoch and metrics through :class:`MetricLogger`.
    """
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = _load_state(run_dir / "last.pt", model, optimizer, scaler)
    loader = _loader(train_set, cfg.batch_size, True, workers, device)
    logger = MetricLogger(run_dir)
    logger.truncate_from(start)
    try:
        for epoch in range(start, cfg.epochs):
            seed_epoch(cfg.seed, epoch, 0)
            model.train()
            sums: dict[str, float] = defaultdict(float)
            t0 = time.perf_counter()
            bar = tqdm(loader, desc=f"detection epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=5,
                       file=sys.stderr)
            for step, (images, targets) in enumerate(bar):
                iteration = epoch * len(loader) + step
                if 0 < cfg.max_iters <= iteration:
                    break
                lr = learning_rate(cfg, epoch, iteration)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images, targets = _batch_to(images, targets, device, cfg.flip)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    losses = model(images, targets)
                loss = sum(losses.values())
                values = {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}
                if not math.isfinite(values["loss"]):
                    raise UsageError(f"detection training diverged (loss {values['loss']} at epoch "
                                     f"{epoch + 1}, iteration {step + 1}); lower --lr or set fpn_norm = true "
                                     f"in the spec")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                for k, v in values.items():
                    sums[k] += v
                bar.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
                if step % cfg.log_every == 0:
                    logger.log("step", step=iteration, epoch=epoch, lr=lr, **values)
            capped = 0 < cfg.max_iters <= (epoch + 1) * len(loader)
            _save_state(run_dir / "last.pt", model, optimizer, scaler, cfg.epochs if capped else epoch + 1)
            seconds = time.perf_counter() - t0
            steps = step + 1 - (0 < cfg.max_iters <= iteration)
            means = {k: v / steps for k, v in sums.items()}
            logger.log("epoch", epoch=epoch, lr=lr, **means, epoch_s=seconds,
                       images_per_s=steps * cfg.batch_size / seconds)
            print(f"detection epoch {epoch + 1}/{cfg.epochs}  loss {means['loss']:.3f}  lr {lr:.4g}  "
                  f"{seconds:.0f}s" + (f" (stopped at --max-iters {cfg.max_iters})" if capped else ""), flush=True)
            if capped:
                break
    finally:
        logger.close()


# ---------------------------------------------------------------------------------------------------
# Evaluation


def _numpy(record: dict) -> dict:
    """A prediction or target with its tensors as NumPy arrays; boxes (n, 4) as inclusive pixel boxes
    (0-based, x2 and y2 exclusive as in torchvision -> minus 1, the VOC devkit's convention)."""
    out = {k: v.numpy() if isinstance(v, Tensor) else v for k, v in record.items()}
    boxes = np.array(out["boxes"], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] -= 1
    return {**out, "boxes": boxes}


def voc_detection_metrics(predictions: Sequence[dict], targets: Sequence[dict], classes: Sequence[str]
                          ) -> dict[str, Any]:
    """VOC detection metrics at IoU 0.5 of per-image ``predictions`` against ``targets`` (same order).

    ``predictions[i]``: ``{"boxes" (n, 4), "scores" (n,), "labels" (n,) in 1..C}`` as torchvision's
    detectors return them; ``targets[i]``: a :class:`VOCDetection` target (``boxes``, ``labels`` in 1..C,
    ``difficult``, ``image_id``). Boxes in both are 0-based with x2, y2 exclusive.
    Returns ``ap11`` and ``ap`` ({class: AP x100}, 11-point and all-point), ``mAP`` and ``mAP_allpoint``
    (their means) and ``no_objects``: the classes without a non-difficult object, left out (AP undefined).
    """
    predictions, targets = [_numpy(p) for p in predictions], [_numpy(t) for t in targets]
    ap11, ap, no_objects = {}, {}, []
    for c, name in enumerate(classes, start=1):
        truth = {}
        for t in targets:
            keep = t["labels"] == c
            if keep.any():
                truth[t["image_id"]] = (t["boxes"][keep], t["difficult"][keep])
        if not any((~difficult).any() for _, difficult in truth.values()):
            no_objects.append(name)
            continue
        ids, scores, boxes = [], [], []
        for p, t in zip(predictions, targets):
            keep = p["labels"] == c
            ids += [t["image_id"]] * int(keep.sum())
            scores.append(p["scores"][keep])
            boxes.append(p["boxes"][keep])
        detections = (ids, np.concatenate(scores), np.concatenate(boxes))
        ap11[name] = 100 * detection_ap(detections, truth, 0.5, eleven_point=True)
        ap[name] = 100 * detection_ap(detections, truth, 0.5, eleven_point=False)
    if not ap:
        raise UsageError("the test split has no non-difficult object of any class; detection AP is undefined")
    return {"ap11": ap11, "ap": ap, "mAP": float(np.mean(list(ap11.values()))),
            "mAP_allpoint": float(np.mean(list(ap.values()))), "no_objects": no_objects}


@torch.no_grad()
def predict(model: FasterRCNN, test_set, cfg: DetectionConfig, device: torch.device, workers: int = 2
            ) -> tuple[list[dict], list[dict]]:
    """(predictions on CPU, targets) for every image of ``test_set``, at shorter side ``cfg.image_size``."""
    model.eval()
    train_sizes, model.transform.min_size = model.transform.min_size, (cfg.image_size,)
    amp = cfg.amp and device.type == "cuda"
    predictions, targets = [], []
    try:
        for images, batch in tqdm(_loader(test_set, cfg.batch_size, False, workers, device),
                                  desc="detection test", leave=False, mininterval=5, file=sys.stderr):
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                out = model([im.to(device, non_blocking=True) for im in images])
            predictions += [{"boxes": o["boxes"].float().cpu(), "scores": o["scores"].float().cpu(),
                             "labels": o["labels"].cpu()} for o in out]
            targets += batch
    finally:
        model.transform.min_size = train_sizes
    return predictions, targets


# ---------------------------------------------------------------------------------------------------
# Runs


def transfer(backbone: ResNet, train_set, test_set, cfg: DetectionConfig, run_dir: str | Path,
             device: torch.device, workers: int = 2) -> dict[str, Any]:
    """Train a detector on a frozen copy of ``backbone`` and score it on ``test_set``, in ``run_dir``.

    Returns (and writes to ``run_dir/eval.json``) the metrics of :func:`voc_detection_metrics` with the
    ``seed``; a folder that already has ``eval.json`` is returned as is, one with ``last.pt`` resumes.
    """
    run_dir = Path(run_dir)
    if (run_dir / "eval.json").exists():
        return json.loads((run_dir / "eval.json").read_text())
    if train_set.classes != test_set.classes:
        raise UsageError("the detection train and test sets name different classes")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json({**asdict(cfg), "provenance": provenance()}, run_dir / "config.json")
    torch.manual_seed(cfg.seed)
    model = build_detector(backbone, len(train_set.classes), cfg).to(device)
    train_detector(model, train_set, cfg, run_dir, device, workers)
    metrics = {"seed": cfg.seed,
               **voc_detection_metrics(*predict(model, test_set, cfg, device, workers), test_set.classes)}
    write_json(metrics, run_dir / "eval.json")
    return metrics


def transfer_runs(backbone: ResNet, train_set, test_set, cfg: DetectionConfig, runs: int, log_dir: str | Path,
                  device: torch.device, workers: int = 2) -> dict[str, Any]:
    """``runs`` transfers with seeds ``cfg.seed + r``, in ``log_dir/seed<s>/``.

    Returns ``{"seeds", "mAP": (mean, std), "mAP_allpoint": (mean, std), "per_class"}`` (std with ddof 0);
    also writes ``log_dir/ap_per_class.csv`` (per class: mean and std over runs of both APs).
    """
    if runs < 1:
        raise UsageError(f"detection needs runs >= 1, got {runs}")
    log_dir = Path(log_dir)
    seeds = [cfg.seed + r for r in range(runs)]
    train_set, test_set = subsets(train_set, test_set, cfg)
    results = [transfer(backbone, train_set, test_set, replace(cfg, seed=s),
                        log_dir / f"seed{s}", device, workers) for s in seeds]
    per_class = {name: {key: _mean_std([r[key][name] for r in results]) for key in ("ap11", "ap")}
                 for name in results[0]["ap11"]}
    write_text(_per_class_csv(per_class, runs), log_dir / "ap_per_class.csv")
    summary = {metric: _mean_std([r[metric] for r in results]) for metric in METRICS}
    return {"seeds": seeds, **summary, "per_class": per_class}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def _per_class_csv(per_class: dict[str, dict[str, tuple[float, float]]], runs: int) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["class", "ap11_mean", "ap11_std", "ap_mean", "ap_std", "n_runs"])
    for name, v in per_class.items():
        writer.writerow([name, *(f"{x:.4f}" for x in (*v["ap11"], *v["ap"])), runs])
    return buf.getvalue()
