"""Pretraining configuration: one dataclass, dataset-scale presets, and up-front checks.

A run's configuration is resolved in layers, later ones winning:

1. :class:`PretrainConfig` defaults, which are the PCL paper's ImageNet recipe (ResNet-50, 200 epochs,
   batch 256, lr 0.03, SGD 0.9 / 1e-4, r = 16384, K = 25000/50000/100000, 20 warm-up epochs);
2. the method's reference recipe, declared where the method is registered (:mod:`pcl_bench.methods`);
3. ``SCALE_PRESETS[dataset]``: documented small-scale settings for ``shapes`` and CIFAR (see each entry), then
   the method's own changes to them;
4. command-line flags.

Each field's ``help`` is the ``pcl-bench pretrain --help`` text of its flag.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import default_splits
from .data.augment import AUGMENTATIONS
from .data.batch_augment import AUG_BACKENDS
from .data.device_decode import DECODERS
from .methods import DATASET_PRESETS, PRESETS, method_class
from .models import ARCHS, HEADS, STEMS
from .runtime.errors import UsageError
from .train.concentration import CONCENTRATIONS
from .train.kmeans import KMEANS_BACKENDS


def _f(default: Any, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class PretrainConfig:
    # what to train
    method: str = _f("pcl_v2", "pretraining method")
    dataset: str = _f("shapes", "dataset name; 'shapes' is generated locally and needs no --data-root")
    data_root: str | None = _f(None, "dataset root folder (its expected layout is printed if it is wrong)")
    train_split: str = _f("train", "split used for pretraining and for clustering")
    test_split: str | None = _f(None, "labelled split for the final kNN check (default: the dataset's test split: "
                                      "val for imagenet and places205; test/ or val/ of an imagefolder tree)")
    subset_per_class: int | None = _f(None, "pretrain on a seeded class-balanced subset of this many images per class")
    download: bool = _f(False, "download cifar10/cifar100/stl10 into --data-root if missing (needs internet)")
    skip_corrupt: bool = _f(False, "decode every image of the splits first and leave out (and list, in the run "
                                   "folder) the unreadable ones; without it an unreadable image stops the run")
    # encoder
    arch: str = _f("resnet50", "backbone: resnet18, resnet34 or resnet50")
    stem: str = _f("imagenet", "'imagenet' (7x7/2 conv + max-pool) or 'small' (3x3/1 conv, no pool, for 32 px)")
    head: str = _f("linear", "projection head: 'linear' (v1) or 'mlp' (v2)")
    dim: int = _f(128, "embedding dimension")
    image_size: int | None = _f(None, "training crop size (default: the dataset's native size, 224 for ImageNet)")
    bn_splits: int = _f(0, "SplitBatchNorm sub-batches emulating multi-GPU BN in one process "
                           "(0: 8 in a single process, off under torchrun)")
    aug: str = _f("v1", "augmentation: 'v1' (MoCo v1/InstDisc) or 'v2' (aug+, with Gaussian blur)")
    crop_min_scale: float = _f(0.2, "smallest RandomResizedCrop area fraction (reference: 0.2; larger values "
                                    "ease very short CPU runs)")
    aug_backend: str = _f("pil", "'pil': torchvision transforms image by image in the loader workers (the reference); "
                                 "'tensor': the same augmentations batched on the training device (datasets "
                                 "of equal-size images, checked before training), cheaper for small images")
    decode: str = _f("pil", "'pil': images decoded in the loader processes; 'device' (with --aug-backend tensor): the "
                            "loader processes only read the files and each batch of JPEGs is decoded on the "
                            "training device (nvJPEG on a GPU), for image files too many to hold there (ImageNet)")
    # optimisation
    epochs: int = _f(200, "number of epochs")
    batch_size: int = _f(256, "global batch size, summed over all processes")
    lr: float = _f(0.03, "base learning rate (SGD)")
    sgd_momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(1e-4, "weight decay")
    cos: bool = _f(False, "cosine learning-rate schedule (per epoch, no warm-up); otherwise steps at --schedule")
    schedule: list[int] = _f((120, 160), "epochs at which the step schedule multiplies the lr by 0.1", list=True)
    # contrast
    temperature: float = _f(0.2, "InfoNCE / NT-Xent temperature tau; also the mean of the concentration phi")
    moco_m: float = _f(0.999, "momentum of the key encoder")
    queue: int = _f(16384, "negatives: queue length (moco, pcl: r) or memory-bank negatives per step (instdisc)")
    bank_momentum: float = _f(0.5, "instdisc: momentum of memory-bank updates")
    # PCL E-step and ProtoNCE
    num_cluster: list[int] = _f((25000, 50000, 100000), "pcl: number of prototypes K of each clustering", list=True)
    warmup_epochs: int = _f(20, "pcl: epochs trained with InfoNCE only, before the first E-step")
    proto_negatives: int | None = _f(None, "pcl: negative prototypes r sampled per clustering (default: --queue, "
                                           "as in the reference, where one r sets both)")
    concentration: str = _f("estimated", "pcl: 'estimated' phi per prototype, or 'fixed' phi = tau (ablation)")
    concentration_alpha: float = _f(10.0, "pcl: alpha in phi = mean distance / log(Z + alpha)")
    kmeans_iters: int = _f(20, "pcl: Lloyd iterations of each k-means")
    kmeans_restarts: int = _f(5, "pcl: k-means restarts; the lowest objective is kept")
    kmeans_backend: str = _f("auto", "pcl: k-means implementation: 'faiss' (the reference's; a GPU index with "
                                     "faiss-gpu), 'torch' (the same algorithm on the training device) or 'auto' "
                                     "(torch on a CUDA device without faiss-gpu, else faiss)")
    # labels (CLOP, semi-supervised SupCon)
    label_fraction: float | None = _f(None, "clop, supcon, supcon_clop, --clop: keep the labels of this "
                                            "fraction of the training images (a seeded subset saved as "
                                            "label_subset.json in the run folder); all others are unlabelled")
    label_balanced: bool = _f(True, "draw the labelled subset class-balanced; --no-label-balanced: a uniform "
                                    "draw over all images, as the CLOP code does")
    clop: bool = _f(False, "add the CLOP term (pull labelled projection outputs to fixed orthonormal class "
                           "prototypes; needs --label-fraction and --dim >= classes) to any method")
    clop_weight: float = _f(1.0, "CLOP: weight lambda of the prototype term")
    # run
    out: str = _f("runs", "parent folder of run folders")
    name: str | None = _f(None, "run folder name (default: <method>_<dataset>)")
    resume: bool = _f(False, "continue the run in the run folder from its last.pt")
    overwrite: bool = _f(False, "delete an existing run folder of the same name first")
    save_every: int = _f(5, "also keep checkpoint_<epoch>.pt every this many epochs (last.pt is written every epoch)")
    log_every: int = _f(10, "log step metrics every this many steps")
    save_every_steps: int = _f(0, "also write last.pt every this many training steps inside an epoch (0: at "
                                  "epoch ends only), for long epochs on machines that may be preempted")
    workers: int | None = _f(None, "data-loading processes per training process (default: 0 with "
                                   "--aug-backend tensor, else this node's CPU cores shared among its training "
                                   "processes, at most 8)")
    seed: int = _f(0, "random seed; every epoch's randomness derives from (seed, epoch, rank)")
    device: str = _f("auto", "'auto' (cuda if available), 'cuda' or 'cpu'")
    amp: bool = _f(True, "bfloat16 autocast on GPU (ignored on CPU)")
    estep_amp: bool = _f(True, "with --amp: the E-step's feature pass in bfloat16 autocast too (--no-estep-amp: "
                               "float32 features, as the reference)")
    channels_last: bool = _f(True, "train in the channels-last (NHWC) memory format, which oneDNN and cuDNN "
                                   "convolutions prefer; --no-channels-last keeps PyTorch's default NCHW")
    data_on_device: bool = _f(True, "with --aug-backend tensor and --decode pil: hold the training images (uint8, "
                                    "decoded once and cached on disk) and the E-step's centre crops on the training device; "
                                    "--no-data-on-device reads them through the loader each epoch (equal results)")
    fused_updates: bool = _f(True, "momentum encoder update as one torch._foreach_lerp_ over all parameters "
                                   "(--no-fused-updates: one lerp_ per parameter tensor; equal results)")
    compile: bool = _f(False, "compile the encoders with torch.compile (in place: checkpoints do not change); "
                              "steps get faster after a compilation of a minute or more in the first steps and "
                              "again in the first E-step (on a CPU it needs a C++ compiler)")
    knn_k: int = _f(20, "final check: number of neighbours of the weighted kNN")
    knn_t: float = _f(0.07, "final check: kNN temperature, weights exp(sim / t)")
    final_knn: bool = _f(True, "after training, print kNN accuracy of the backbone next to a random encoder's")
    smoke: bool = _f(False, "try the configured run on a few hundred images first: 2 epochs (1 warm-up), an "
                            "E-step and ProtoNCE steps, a checkpoint and a resume from it, the final kNN; in "
                            "run folder <name>-smoke, about a minute on a CPU at 32 px")

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / (self.name or f"{self.method}_{self.dataset}")

    def __post_init__(self) -> None:
        # The reference uses one r for the queue and the negative prototypes: fill it in here, so that every
        # reader (validation, the method, the saved config) sees the same number.
        if self.proto_negatives is None:
            self.proto_negatives = self.queue

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


# Small-scale settings. 'shapes' is sized so that a run takes 7-9 minutes on 2 CPU cores and the full demo
# (two pretrainings and every protocol) about 20 minutes: ResNet-18 with the ImageNet stem on 32 px crops of
# the 64 px images (4x cheaper than 64 px), 20 epochs of batch 32 with 2 SplitBN sub-batches (3,120 steps: in a
# fixed CPU budget, more small steps beat fewer large ones here), augmented in batches and trained in NCHW (at
# this size both are faster on a CPU: benchmarks/aug_backend.py, memory_format.py), lr 0.015 (0.06 stalls MoCo),
# a 4096-key queue with m = 0.99 (the MoCo CIFAR demo's choices; moco_v2 and pcl_v2 change the queue in their
# own presets), over-clustering of the 5000 images into 250/500/1000 prototypes with r = 96 negative prototypes
# (r <= K_min - batch), 1 warm-up epoch.
# CIFAR follows the MoCo CIFAR-10 demo (small stem, batch 512, lr 0.06, wd 5e-4, K = 4096, m = 0.99) with
# PCL's over-clustering of salesforce/PCL#7 (K = 1000/2000/4000) but r = 256, not #7's 512: a batch of 512 may
# leave only 1000 - 512 = 488 clusters free to draw negatives from.
_SHAPES = {"arch": "resnet18", "stem": "imagenet", "image_size": 32, "epochs": 20, "batch_size": 32,
           "lr": 0.015, "weight_decay": 5e-4, "moco_m": 0.99, "queue": 4096, "num_cluster": (250, 500, 1000),
           "proto_negatives": 96, "warmup_epochs": 1, "schedule": (12, 16), "bn_splits": 2,
           "aug_backend": "tensor", "channels_last": False}
_CIFAR = {"arch": "resnet18", "stem": "small", "epochs": 200, "batch_size": 512, "lr": 0.06, "weight_decay": 5e-4,
          "moco_m": 0.99, "queue": 4096, "num_cluster": (1000, 2000, 4000), "proto_negatives": 256,
          "warmup_epochs": 20, "schedule": (120, 160)}
SCALE_PRESETS: dict[str, dict[str, Any]] = {
    "shapes": _SHAPES,
    "cifar10": _CIFAR,
    "cifar100": _CIFAR,
}
def resolve(overrides: dict[str, Any]) -> PretrainConfig:
    """Build a config from defaults, the method and dataset presets, then ``overrides`` (non-None values)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    method = overrides.get("method", PretrainConfig.method)
    dataset = overrides.get("dataset", PretrainConfig.dataset)
    values: dict[str, Any] = dict(PRESETS.get(method, {}))
    if dataset in SCALE_PRESETS:
        values.update(SCALE_PRESETS[dataset])
        values.update(DATASET_PRESETS.get(method, {}).get(dataset, {}))
    values.update(overrides)
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = set(values) - names
    if unknown:
        raise UsageError(f"unknown config keys {sorted(unknown)}")
    cfg = PretrainConfig(**values)
    cfg.num_cluster, cfg.schedule = list(cfg.num_cluster), list(cfg.schedule)
    return cfg


def set_world(cfg: PretrainConfig, world_size: int) -> None:
    """Fill in what depends on the machine, the number of processes and the dataset: ``bn_splits`` 0 means 8
    alone and off under torchrun; ``workers`` None means none with ``aug_backend='tensor'`` and ``decode='pil'``
    (the loader then only wraps in-memory arrays, and starting worker processes every epoch costs more: 1-2 s of an 18 s
    shapes epoch on 2 cores), else the node's CPU cores per training process, between 1 and 8;
    ``test_split`` None means the dataset's own test split."""
    if cfg.test_split is None:
        cfg.test_split = default_splits(cfg.dataset, cfg.data_root)[1]
    if cfg.bn_splits == 0:
        cfg.bn_splits = 8 if world_size == 1 else 1
    if cfg.workers is None and cfg.aug_backend == "tensor" and cfg.decode == "pil":
        cfg.workers = 0
    elif cfg.workers is None:
        cfg.workers = cores_per_process(world_size)


def cores_per_process(world_size: int) -> int:
    """This node's CPU cores shared among its training processes, between 1 and 8."""
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return max(1, min(8, (os.cpu_count() or 1) // processes_here))


def validate(cfg: PretrainConfig, num_samples: int, world_size: int, num_classes: int | None = None) -> None:
    """Check the constraints that would otherwise fail hours into a run; raise UsageError naming the fix.
    The generic ones here, then the method's own (:meth:`pcl_bench.methods.Method.check`); ``num_classes``
    (of the training set) lets CLOP check that its prototypes fit in ``--dim``."""
    choices = {"arch": ARCHS, "stem": STEMS, "head": HEADS, "aug": AUGMENTATIONS, "concentration": CONCENTRATIONS,
               "kmeans_backend": KMEANS_BACKENDS, "aug_backend": AUG_BACKENDS, "decode": DECODERS}
    method = method_class(cfg)  # with the CLOP term mixed in under --clop
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise UsageError(f"unknown --{key.replace('_', '-')} {getattr(cfg, key)!r}; "
                             f"choose one of {', '.join(sorted(allowed))}")
    if cfg.decode == "device" and cfg.aug_backend != "tensor":
        raise UsageError("--decode device leaves the images on the device, where only the batched augmentation "
                         "can reach them; add --aug-backend tensor")
    if cfg.batch_size % world_size:
        raise UsageError(f"--batch-size {cfg.batch_size} is not divisible by the {world_size} processes")
    if cfg.batch_size > num_samples:
        raise UsageError(f"--batch-size {cfg.batch_size} is larger than the {num_samples} training images")
    if cfg.subset_per_class is not None and cfg.subset_per_class < 1:
        raise UsageError("--subset-per-class must be positive")
    if cfg.save_every < 1 or cfg.save_every_steps < 0:
        raise UsageError("--save-every must be positive and --save-every-steps at least 0 (0: epoch ends only)")
    local_batch = cfg.batch_size // world_size
    check_bn_splits(local_batch, cfg.bn_splits, world_size)
    method.check(cfg, num_samples, num_classes, local_batch)


SMOKE_IMAGES = 256  # a smoke run trains on at least this many images, and on at least four batches


def smoke_config(cfg: PretrainConfig, num_samples: int, num_classes: int) -> PretrainConfig:
    """``cfg`` cut down to a smoke run (``--smoke``): two epochs of which the first is the warm-up, on a
    class-balanced subset of about max(256, 4 batches) images, in run folder ``<name>-smoke``."""
    images = min(num_samples, max(SMOKE_IMAGES, 4 * cfg.batch_size))
    per_class = -(-images // num_classes)
    return dataclasses.replace(
        cfg, name=cfg.run_dir.name + "-smoke", epochs=2, warmup_epochs=1, save_every=1, resume=False,
        overwrite=True, subset_per_class=min(per_class, cfg.subset_per_class or per_class))


def fit_smoke_clusters(cfg: PretrainConfig, num_samples: int, world_size: int) -> tuple[PretrainConfig, str]:
    """A smoke config whose K and r fit its ``num_samples`` images, and a note of what changed ("" if
    nothing): the K spread up to ``num_samples / 2`` (clusters of two images on average, so that every
    clustering has concentrations to estimate), r at most a quarter of the clusters a batch leaves free."""
    local_b, ks, r = cfg.batch_size // world_size, cfg.num_cluster, cfg.proto_negatives
    largest = num_samples // 2
    if not method_class(cfg).clusters or (max(ks) <= largest and min(ks) - local_b >= max(r, 1)):
        return cfg, ""
    r = min(r, max(1, (largest - local_b) // 4))
    lowest = local_b + r + 1  # the smallest K that leaves r clusters free of a batch
    if lowest > largest:
        raise UsageError(f"--smoke: {num_samples} training images are too few for twice a batch of {local_b} "
                         f"plus negative prototypes; use a smaller --batch-size")
    fitted = [lowest + round((largest - lowest) * (i + 1) / len(ks)) for i in range(len(ks))]
    note = (f"; K {','.join(map(str, ks))} -> {','.join(map(str, fitted))} and r {cfg.proto_negatives} -> {r} "
            f"to fit {num_samples} images")
    return dataclasses.replace(cfg, num_cluster=fitted, proto_negatives=r), note


def check_bn_splits(local_b: int, splits: int, world_size: int) -> None:
    """SplitBatchNorm normalises each of ``splits`` sub-batches alone: each needs at least 2 images."""
    splits = max(splits, 1)
    if local_b % splits:
        raise UsageError(f"the per-process batch {local_b} is not divisible by --bn-splits {splits}")
    if local_b // splits < 2:
        raise UsageError(f"--batch-size {local_b * world_size} leaves {local_b // splits} image per BatchNorm "
                         f"sub-batch ({local_b} per process / --bn-splits {splits}), and BatchNorm needs at least "
                         f"2; use --bn-splits {max(local_b // 2, 1)} or fewer, or --batch-size "
                         f"{2 * splits * world_size} or more")
