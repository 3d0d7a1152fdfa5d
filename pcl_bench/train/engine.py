"""The pretraining engine: one loop for every method, with PCL's E-step before each post-warm-up epoch.

A run folder ``<out>/<name>/`` holds ``config.json``, ``last.pt`` (every epoch) and ``checkpoint_<epoch>.pt``
(every ``save_every`` epochs), ``metrics.jsonl`` / ``epochs.csv`` / ``tb/``, ``clusters.jsonl`` (per-epoch
clustering statistics), ``clusters.pt`` (the latest clustering) and ``knn.json`` (the final check).

Reproducibility: every epoch reseeds Python, NumPy and torch from (seed, epoch, rank), and the training
sampler shuffles from (seed, epoch). A run resumed from ``last.pt`` therefore continues exactly as the
uninterrupted run would have (model, key encoder, queue, optimizer, augmentations, clusters).

``last.pt`` is also written inside an epoch: every ``--save-every-steps`` steps, and when SIGTERM or SIGINT
arrives (:mod:`.interrupt`). Such a checkpoint holds the epoch's clusters, its metric sums so far and the
generator states of every rank; resuming replays the epoch's first batches through the data loader (its
workers' augmentation generators advance only by augmenting) and continues bit-identically.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from torchvision.transforms import PILToTensor
from tqdm import tqdm

from ..config import (
    PretrainConfig,
    cores_per_process,
    fit_smoke_clusters,
    resolve,
    set_world,
    smoke_config,
    validate,
)
from ..data import balanced_subset, build_dataset, with_transform
from ..data.augment import TwoCropsTransform, eval_crop, eval_transform, pretrain_transform
from ..data.batch_augment import BatchAugment
from ..data.corrupt import skip_unreadable
from ..data.device_decode import DecodedBatches, FileBytes, check_files, collate_bytes
from ..data.subsets import load_or_draw_subset
from ..data.tensor_cache import DeviceBatches, DeviceEvalBatches, cached_images, check_equal_size, check_fits
from ..eval.features import extract_features
from ..eval.knn import knn_accuracy
from ..methods import METHODS, Method, build_method
from ..models import backbone_features, encoder_from_config
from ..models.checkpoints import check_crc
from ..runtime import distributed as D
from ..runtime.atomic import copy_file, save_torch, write_json
from ..runtime.device import resolve_device
from ..runtime.errors import UsageError
from ..runtime.metrics_log import MetricLogger
from ..runtime.provenance import provenance
from ..runtime.seeding import rng_state, seed_epoch, set_rng_state
from .cluster_stats import cluster_statistics
from .e_step import ClusterResult, e_step
from .interrupt import StopSignals, ignore_in_worker

# Flags that may change when a run is resumed; any other flag must match the run's saved config.
RESUMABLE = {"epochs", "workers", "device", "log_every", "save_every", "save_every_steps", "final_knn", "resume",
             "amp", "estep_amp", "channels_last", "kmeans_backend", "fused_updates", "data_on_device",
             "compile"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the run stopped and its last good checkpoint is kept."""


@dataclasses.dataclass
class ResumePoint:
    """Where a run continues: after ``epoch`` epochs and ``step`` steps of the next one (0: an epoch boundary).
    A mid-epoch point also carries that epoch's clusters, its metric sums so far, and per rank the generator
    states after ``step`` steps (``rng``) and torch's state when the epoch's data loader started
    (``loader_rng``: the workers' seeds are drawn from it)."""

    epoch: int = 0
    step: int = 0
    clusters: ClusterResult | None = None
    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    rng: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    loader_rng: list[torch.Tensor] = dataclasses.field(default_factory=list)


def config_for_run(overrides: dict[str, Any]) -> PretrainConfig:
    """The run's config: presets + ``overrides``, or, with ``resume``, the saved config + allowed overrides.

    ``--resume`` on a run folder without a checkpoint (a run stopped before its first epoch ended) starts
    that run afresh from ``overrides``, as a plain start would.
    """
    cfg = resolve(overrides)
    if not cfg.resume:
        return cfg
    saved_path = cfg.run_dir / "config.json"
    if not (cfg.run_dir / "last.pt").exists():
        if not _stopped_before_first_checkpoint(cfg.run_dir):
            raise UsageError(f"--resume: no run in {cfg.run_dir} (expected last.pt and config.json); "
                             f"start the run without --resume")
        return dataclasses.replace(cfg, resume=False)
    if not saved_path.exists():
        raise UsageError(f"--resume: {cfg.run_dir} has last.pt but no config.json; restore config.json or "
                         f"start another run with --name")
    saved = json.loads(saved_path.read_text())
    saved.pop("provenance", None)
    given = {k: v for k, v in overrides.items() if v is not None}
    clash = {k: (saved[k], v) for k, v in given.items() if k not in RESUMABLE and k in saved
             and _as_json(v) != saved[k]}
    if clash:
        key, (old, new) = next(iter(clash.items()))
        raise UsageError(f"--resume: --{key.replace('_', '-')} {new} differs from the run's {old}; "
                         f"only {', '.join(sorted(RESUMABLE))} may change on resume")
    saved.update({k: v for k, v in given.items() if k in RESUMABLE})
    return PretrainConfig(**saved)


# What the engine writes into a run folder before its first checkpoint.
_EARLY_FILES = {"config.json", "metrics.jsonl", "epochs.csv", "tb", "clusters.pt", "label_subset.json",
                "skipped_images.json"}


def _stopped_before_first_checkpoint(run_dir: Path) -> bool:
    """True if ``run_dir`` exists and holds only what a run writes before its first checkpoint (if anything)."""
    if not run_dir.is_dir():
        return False
    names = {p.name for p in run_dir.iterdir() if not p.name.startswith(".")}  # atomic writes' temporaries
    return names <= _EARLY_FILES


def _as_json(v: Any) -> Any:
    return json.loads(json.dumps(list(v) if isinstance(v, tuple) else v))


def prepare_run_dir(cfg: PretrainConfig) -> None:
    """Create the run folder; an existing run is only replaced with ``--overwrite``, except one that stopped
    before its first checkpoint, which holds nothing to lose and is started afresh."""
    run_dir = cfg.run_dir
    if cfg.resume or not run_dir.exists() or not any(run_dir.iterdir()):
        run_dir.mkdir(parents=True, exist_ok=True)
        for partial in run_dir.glob(".*.tmp"):  # a write the previous process was killed in
            partial.unlink()
        return
    if _stopped_before_first_checkpoint(run_dir):
        print(f"{run_dir} holds a run that stopped before its first checkpoint; starting it afresh",
              file=sys.stderr)
    elif not cfg.overwrite:
        raise UsageError(f"run folder {run_dir} already holds a run; pass --resume to continue it, "
                         f"--overwrite to replace it, or --name to start another")
    shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)


def memory_format(cfg: PretrainConfig) -> torch.memory_format:
    """NHWC under ``--channels-last``: the layout the CPU (oneDNN) and GPU (cuDNN) convolutions run fastest in."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def adjust_learning_rate(optimizer: torch.optim.Optimizer, cfg: PretrainConfig, epoch: int) -> float:
    """Per-epoch schedule of the reference: cosine without warm-up, or x0.1 at each milestone passed."""
    if cfg.cos:
        lr = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    else:
        lr = cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.schedule)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def load_split(cfg: PretrainConfig, split: str) -> tuple[Dataset, list[str]]:
    """``split`` as configured (the training split cut to ``--subset-per-class``, also the test split of a
    smoke run) and, with ``--skip-corrupt``, without its unreadable images, whose paths come second."""
    ds = build_dataset(cfg.dataset, cfg.data_root, split, None, download=cfg.download)
    skipped: list[str] = []
    if cfg.skip_corrupt:
        ds, skipped = skip_unreadable(ds, cfg.workers if cfg.workers is not None else 2)
    if cfg.subset_per_class and (split == cfg.train_split or cfg.smoke):
        ds = balanced_subset(ds, cfg.subset_per_class, cfg.seed)
    return ds, skipped


def image_size(cfg: PretrainConfig, ds: Dataset) -> int:
    return cfg.image_size or ds.image_size


def training_set(cfg: PretrainConfig, base: Dataset, size: int, num_views: int) -> tuple[Dataset, BatchAugment | None]:
    """The training dataset and, with ``--aug-backend tensor``, the batched augmentation that the training loop
    applies to its uint8 batches (the dataset then only converts images to tensors)."""
    if cfg.aug_backend == "tensor":
        return with_transform(base, PILToTensor()), BatchAugment(cfg.aug, size, cfg.crop_min_scale)
    aug = pretrain_transform(cfg.aug, size, cfg.crop_min_scale)
    return with_transform(base, TwoCropsTransform(aug) if num_views == 2 else aug), None


def make_loaders(cfg: PretrainConfig, base: Dataset, train_set: Dataset, size: int, device: torch.device):
    """The training batches, the E-step's batches (decoded on the device with ``--decode device``, through
    :func:`on_device` with ``--data-on-device``) and the training sampler, whose ``set_epoch`` reshuffles."""
    local_b = cfg.batch_size // D.world_size()
    sampler = DistributedSampler(train_set, D.world_size(), D.rank(), shuffle=True, seed=cfg.seed, drop_last=True)
    shard = D.ShardSampler(len(base), D.rank(), D.world_size())
    common = {"num_workers": cfg.workers, "pin_memory": device.type == "cuda", "worker_init_fn": _worker_init}
    if cfg.decode == "device":
        files = FileBytes(base)
        train_loader = DataLoader(files, local_b, sampler=sampler, drop_last=True, collate_fn=collate_bytes, **common)
        cluster_loader = DataLoader(files, local_b * 5, sampler=shard, collate_fn=collate_bytes, **common)
        return (DecodedBatches(train_loader, base, device), DecodedBatches(cluster_loader, base, device, size),
                sampler)
    if cfg.aug_backend == "tensor" and cfg.data_on_device:
        return *on_device(cfg, base, size, device, sampler, shard, local_b), sampler
    train_loader = DataLoader(train_set, local_b, sampler=sampler, drop_last=True, **common)
    cluster_loader = DataLoader(with_transform(base, eval_transform(size)), local_b * 5, sampler=shard, **common)
    return train_loader, cluster_loader, sampler


def on_device(cfg: PretrainConfig, base: Dataset, size: int, device: torch.device, sampler, shard, local_b: int):
    """Training and E-step batches of the uint8 images held on ``device`` (:mod:`pcl_bench.data.tensor_cache`);
    the one-time decode uses the loader processes, or this process's share of the cores if training uses none."""
    workers = cfg.workers or cores_per_process(D.world_size())
    targets = torch.as_tensor(np.asarray(base.targets)).to(device)
    images = cached_images(base, None, workers).to(device)
    crops = cached_images(base, eval_crop(size), workers).to(device)
    return DeviceBatches(images, targets, sampler, local_b), DeviceEvalBatches(crops, targets, shard, local_b * 5)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode and augment; the main process owns the cores for compute
    ignore_in_worker()


def compile_encoders(model: Method) -> None:
    """``--compile``: the query encoder and the key encoder (where the method has one), each compiled in place
    by ``torch.compile``, so the modules, their ``state_dict`` keys and the momentum update stay as they are."""
    for name in ("encoder_q", "encoder_k"):
        if hasattr(model, name):
            getattr(model, name).compile()


def make_optimizer(model: torch.nn.Module, cfg: PretrainConfig, fused: bool = True) -> torch.optim.SGD:
    """SGD over the trainable parameters, with the fused kernel (``fused``) where this torch has one for their
    device: it reads and writes the weights once per step instead of once per op (about 6 of 110 ms on a CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    hyper = {"lr": cfg.lr, "momentum": cfg.sgd_momentum, "weight_decay": cfg.weight_decay}
    if fused:
        try:
            return torch.optim.SGD(params, **hyper, fused=True)
        except (RuntimeError, TypeError):  # an older torch, or none for this device
            pass
    return torch.optim.SGD(params, **hyper)


def save_checkpoint(cfg: PretrainConfig, model: Method, optimizer, epoch: int, num_samples: int,
                    point: ResumePoint | None = None) -> None:
    """``last.pt`` at the end of ``epoch`` (0-based), kept as ``checkpoint_<epoch>.pt`` every ``save_every``
    epochs, or, with ``point``, inside ``epoch`` after ``point.step`` steps (``"epoch"`` counts finished ones)."""
    state = {"epoch": epoch + 1, "step": 0, "method": cfg.method, "arch": cfg.arch,
             "config": json.loads(cfg.to_json()), "num_samples": num_samples, "state_dict": model.state_dict(),
             "optimizer": optimizer.state_dict(), **provenance()}
    if point is not None:
        clusters = point.clusters.to("cpu").state_dict() if point.clusters is not None else None
        state.update(epoch=epoch, step=point.step, mid_epoch={
            "clusters": clusters, "sums": point.sums, "rng": point.rng, "loader_rng": point.loader_rng})
    save_torch(state, cfg.run_dir / "last.pt")
    if point is None and ((epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.epochs):
        copy_file(cfg.run_dir / "last.pt", cfg.run_dir / f"checkpoint_{epoch:04d}.pt")


def read_last_checkpoint(run_dir: Path) -> dict[str, Any]:
    """``last.pt`` of ``run_dir`` or, if it cannot be read or fails its checksums (a damaged file), the newest
    sound ``checkpoint_<epoch>.pt``, with a warning; a UsageError if there is none."""
    unreadable = []
    for path in [run_dir / "last.pt", *sorted(run_dir.glob("checkpoint_*.pt"), reverse=True)]:
        try:
            check_crc(path)
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            if not (isinstance(ckpt, dict) and {"epoch", "state_dict", "optimizer"} <= ckpt.keys()):
                raise ValueError("not a training checkpoint")
        except Exception as e:  # noqa: BLE001  (truncated zip, flipped bytes, garbage pickle, missing entries)
            unreadable.append(f"{path.name} ({type(e).__name__})")
            continue
        if unreadable:
            print(f"warning: {', '.join(unreadable)} cannot be read; resuming from {path.name} (after epoch "
                  f"{ckpt['epoch']})", file=sys.stderr)
        return ckpt
    raise UsageError(f"--resume: no readable checkpoint in {run_dir}: {', '.join(unreadable)}; restore one "
                     f"from a backup, or start again with --overwrite")


def load_checkpoint(cfg: PretrainConfig, model: Method, optimizer, num_samples: int) -> ResumePoint:
    """Restore the run's checkpoint (:func:`read_last_checkpoint`); the run must continue on the same training
    images (their count is checked: PCL's clusters, InstDisc's memory bank and the label subset are indexed
    by image). Returns where to continue."""
    ckpt = read_last_checkpoint(cfg.run_dir)
    if ckpt.get("num_samples", num_samples) != num_samples:
        raise UsageError(f"--resume: {cfg.run_dir} trained on {ckpt['num_samples']} images but the training "
                         f"split now has {num_samples}; restore the dataset as it was (and --skip-corrupt as "
                         f"it was), or start a new run with --name")
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    mid = ckpt.get("mid_epoch")
    if not ckpt.get("step") or mid is None:
        return ResumePoint(ckpt["epoch"])
    if len(mid["rng"]) != D.world_size():
        raise UsageError(f"--resume: {cfg.run_dir}/last.pt was written inside an epoch by {len(mid['rng'])} "
                         f"processes; resume it with as many (torchrun --nproc-per-node)")
    clusters = ClusterResult(**mid["clusters"]) if mid["clusters"] is not None else None
    return ResumePoint(ckpt["epoch"], ckpt["step"], clusters, mid["sums"], mid["rng"], mid["loader_rng"])


def train_one_epoch(model, loader: DataLoader, optimizer, clusters: ClusterResult | None, epoch: int,
                    cfg: PretrainConfig, logger: MetricLogger | None, device: torch.device,
                    augment: BatchAugment | None = None, resumed: ResumePoint | None = None,
                    signals: StopSignals | None = None,
                    checkpoint: Callable[[ResumePoint], None] | None = None) -> dict[str, float]:
    """One pass over ``loader``; returns the epoch means of every metric the method reports.

    With ``augment``, the loader yields uint8 image batches and each of the method's views is made here.
    ``resumed``: continue this epoch after ``resumed.step`` steps. ``checkpoint`` is called with the point
    reached every ``cfg.save_every_steps`` steps and when ``signals`` holds a stop request (on any rank),
    after which :class:`Interrupted` is raised."""
    model.train()
    first = resumed.step if resumed else 0
    metrics = StepMetrics(resumed.sums if resumed else {})
    read_metrics = partial(metrics.read, f"at epoch {epoch + 1}", cfg.run_dir / "last.pt", epoch)
    steps = len(loader)
    amp, fmt = cfg.amp and device.type == "cuda", memory_format(cfg)
    if resumed:
        torch.set_rng_state(resumed.loader_rng[D.rank()])
    loader_rng = torch.get_rng_state()
    batches = iter(loader)
    for _ in range(first):  # replayed, so that the workers' generators advance as they did
        next(batches)
    if resumed:
        set_rng_state(resumed.rng[D.rank()])
    bar = tqdm(range(first, steps), initial=first, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not D.is_main(), mininterval=2, file=sys.stderr, leave=False)
    num_views = getattr(model, "module", model).num_views
    for step in bar:  # the bar closes (and clears its line) also when a step raises
        views, _, index = next(batches)
        if augment is not None:  # view by view: one call for all views ran 5 % faster but cost moco_v2 1.5 kNN
            images = views.to(device, non_blocking=True) if torch.is_tensor(views) else views  # decoded there
            views = [augment(images) for _ in range(num_views)]
        views = [v.to(device, non_blocking=True, memory_format=fmt) for v in (views if isinstance(views, list) else [views])]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(views, index.to(device, non_blocking=True), clusters)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        metrics.add(out, step)
        logged = step % cfg.log_every == 0
        if logged or step + 1 == steps:  # the only points where a step waits for the device
            values = read_metrics()
            if D.is_main():
                bar.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
            if logged and logger and D.is_main():
                logger.log("step", step=epoch * steps + step, epoch=epoch,
                           lr=optimizer.param_groups[0]["lr"], **values)
        if step + 1 == steps or checkpoint is None:
            continue  # the epoch-end checkpoint follows
        stop = D.any_rank(signals is not None and signals.requested, device)  # a wait only under DDP
        if stop or (cfg.save_every_steps and (step + 1) % cfg.save_every_steps == 0):
            read_metrics()  # never save a diverged state
            checkpoint(ResumePoint(epoch, step + 1, clusters, metrics.sums(), D.gather_objects(rng_state()),
                                   D.gather_objects(loader_rng)))
        if stop:
            raise signals.stop(f" at epoch {epoch + 1}, step {step + 1} of {steps}; {cfg.run_dir / 'last.pt'} "
                               f"holds that step: continue with --resume")
    return {k: v / steps for k, v in metrics.sums().items()}


class StepMetrics:
    """The metrics of each step, summed on the device (float64, all ranks averaged), so that a step only
    launches work: the host reads them (:meth:`read`, :meth:`sums`) at logging and checkpoint steps.

    ``start``: the sums of the steps before a resume. A non-finite loss is remembered with its step and
    raised as :class:`TrainingDiverged` at the next read.
    """

    def __init__(self, start: dict[str, float]):
        self.start, self.names = dict(start), None
        self.total = self.last = self.first_bad = self.bad_loss = None

    def add(self, out: dict[str, torch.Tensor], step: int) -> None:
        if self.names is None:
            self.names = list(out)
        values = D.all_reduce_mean(torch.stack([out[k].detach().float() for k in self.names]))
        if self.total is None:
            self.total = torch.tensor([self.start.get(k, 0.0) for k in self.names], dtype=torch.float64,
                                      device=values.device)
            self.first_bad = torch.full((), -1, dtype=torch.long, device=values.device)
            self.bad_loss = torch.zeros((), device=values.device)
        self.total += values.double()
        self.last = values
        loss = values[self.names.index("loss")]
        bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, step, self.first_bad)
        self.bad_loss = torch.where(bad, loss, self.bad_loss)

    def read(self, where: str, last_pt: Path, epoch: int) -> dict[str, float]:
        """The last step's metrics on the host; raises TrainingDiverged if a loss so far was NaN or Inf."""
        bad = int(self.first_bad)
        if bad >= 0:
            raise TrainingDiverged(
                f"loss became {float(self.bad_loss)} {where}, step {bad + 1}; the run stopped and {last_pt} keeps "
                f"the last good state (epoch {epoch}); lower --lr and --resume")
        return dict(zip(self.names, self.last.tolist()))

    def sums(self) -> dict[str, float]:
        return dict(self.start) if self.total is None else dict(zip(self.names, self.total.tolist()))


def cluster_epoch(model: Method, cluster_loader, n: int, cfg: PretrainConfig, device, labels) -> tuple:
    """The E-step, with its statistics; returns (clusters, timings, statistics or None off rank 0)."""
    amp = cfg.amp and cfg.estep_amp and device.type == "cuda"
    clusters, _, timing = e_step(
        model.clustering_encoder, cluster_loader, n, cfg.num_cluster, cfg.temperature, device, amp=amp,
        alpha=cfg.concentration_alpha, niter=cfg.kmeans_iters, nredo=cfg.kmeans_restarts,
        fixed_concentration=cfg.concentration == "fixed", backend=cfg.kmeans_backend)
    stats = cluster_statistics(clusters, labels) if D.is_main() else None
    return clusters, timing, stats


def partial_labels(cfg: PretrainConfig, ds: Dataset) -> torch.Tensor:
    """Class of each training sample (N,) long, -1 outside the labelled subset of ``cfg.label_fraction``.

    The subset is drawn once (seeded; every rank draws the same one) and saved as ``label_subset.json`` in the
    run folder, in the semi-supervised evaluation's subset format; a resumed run reloads it.
    """
    targets = np.asarray(ds.targets)
    keep = load_or_draw_subset(cfg.run_dir / "label_subset.json", targets, cfg.label_fraction, cfg.seed,
                               cfg.label_balanced)
    labels = torch.full((len(targets),), -1, dtype=torch.long)
    labels[keep] = torch.from_numpy(targets[keep]).long()
    return labels


def dataset_labels(ds: Dataset) -> dict[str, np.ndarray]:
    labels = {"fine": np.asarray(ds.targets)}
    if getattr(ds, "coarse_targets", None) is not None:
        labels["coarse"] = np.asarray(ds.coarse_targets)
    return labels


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Check ``cfg`` against its training split, then train (:func:`train`) or, with ``--smoke``, run
    :func:`smoke`. Returns the summary of the run (epochs, seconds, kNN accuracies)."""
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(D.local_rank())
    D.init(device.type)
    set_world(cfg, D.world_size())
    base, skipped = load_split(cfg, cfg.train_split)
    if cfg.final_knn:  # checked now, not after days of training
        load_split(cfg, cfg.test_split)
    try:
        validate(cfg, len(base), D.world_size(), num_classes=len(base.classes))
    except UsageError as problem:
        if not cfg.smoke:
            raise
        # A smoke run still runs (with settings that fit its images), then reports what the full run would hit.
        print(f"note: the full run would stop at once: {problem}", file=sys.stderr)
        smoke(cfg, len(base), len(base.classes), device)
        raise UsageError(f"the smoke run passed, but the full run would stop at once: {problem}") from None
    if cfg.smoke:
        return smoke(cfg, len(base), len(base.classes), device)
    return train(cfg, base, skipped, device)


def check_images(cfg: PretrainConfig, base: Dataset, device: torch.device) -> None:
    """``--decode device`` needs image files; ``--aug-backend tensor`` otherwise needs images of one size and,
    with ``--data-on-device``, room for them and their centre crops on ``device``."""
    if cfg.decode == "device":
        check_files(base, cfg.dataset)
    elif cfg.aug_backend == "tensor":
        check_equal_size(base, cfg.dataset)
        if cfg.data_on_device:
            (width, height), size = base[0][0].size, image_size(cfg, base)
            check_fits(len(base), [(3, height, width), (3, size, size)], device)


def smoke(cfg: PretrainConfig, num_samples: int, num_classes: int, device: torch.device) -> dict[str, Any]:
    """The configured recipe on a few hundred images, every phase once: a warm-up epoch, a checkpoint, a
    resume from it, an E-step and ProtoNCE steps (methods that cluster), the final kNN check. The run folder
    is ``<name>-smoke``; the settings a few hundred images cannot hold are printed before it starts."""
    t0 = time.perf_counter()
    small_cfg = smoke_config(cfg, num_samples, num_classes)
    base, skipped = load_split(small_cfg, small_cfg.train_split)
    small_cfg, changes = fit_smoke_clusters(small_cfg, len(base), D.world_size())
    validate(small_cfg, len(base), D.world_size(), num_classes=len(base.classes))
    if D.is_main():
        print(f"smoke run of {cfg.method} in {small_cfg.run_dir}: {len(base)} training images, 2 epochs (1 "
              f"warm-up), resumed after the first; otherwise as configured{changes}", flush=True)
    train(small_cfg, base, skipped, device, stop_after=1)
    summary = train(dataclasses.replace(small_cfg, resume=True, overwrite=False), base, skipped, device)
    if D.is_main():
        print(f"smoke run passed in {time.perf_counter() - t0:.0f} s: every phase ran; drop --smoke for the "
              f"real run", flush=True)
    return summary


def train(cfg: PretrainConfig, base: Dataset, skipped: list[str], device: torch.device,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train ``cfg.method`` on ``base`` (its training split, checked by :func:`validate`); ``skipped``: the
    unreadable images left out of it. ``stop_after``: end after that many epochs, without the final kNN
    check (a run to be resumed)."""
    check_images(cfg, base, device)  # before the run folder is touched
    if D.is_main():
        prepare_run_dir(cfg)
        if skipped:
            write_json({cfg.train_split: skipped}, cfg.run_dir / "skipped_images.json")
    D.barrier()
    size = image_size(cfg, base)
    method_cls = METHODS[cfg.method]
    train_set, augment = training_set(cfg, base, size, method_cls.num_views)

    seed_epoch(cfg.seed, 0, 0)  # identical initial weights and queue on every rank
    model = build_method(cfg, len(base))
    if model.uses_labels:
        model.attach_labels(partial_labels(cfg, base), len(base.classes), cfg)
    model = model.to(device, memory_format=memory_format(cfg))
    if cfg.compile:
        compile_encoders(model)
    optimizer = make_optimizer(model, cfg)
    start = load_checkpoint(cfg, model, optimizer, len(base)) if cfg.resume else ResumePoint()
    ddp = DistributedDataParallel(model, device_ids=[D.local_rank()] if device.type == "cuda" else None) \
        if D.is_dist() else model
    train_loader, cluster_loader, sampler = make_loaders(cfg, base, train_set, size, device)

    logger = MetricLogger(cfg.run_dir) if D.is_main() else None
    if logger:
        write_json({**json.loads(cfg.to_json()), "provenance": provenance()}, cfg.run_dir / "config.json")
        logger.truncate_from(start.epoch, start.epoch * len(train_loader) + start.step if start.step else None)
    labels = dataset_labels(base)

    def checkpoint(point: ResumePoint) -> None:  # inside an epoch; every rank gathered its generator states
        if D.is_main():
            save_checkpoint(cfg, model, optimizer, point.epoch, len(base), point)
        D.barrier()  # no rank exits before the checkpoint is whole

    t_start = time.perf_counter()
    with StopSignals() as signals:
        for epoch in range(start.epoch, cfg.epochs if stop_after is None else min(stop_after, cfg.epochs)):
            seed_epoch(cfg.seed, epoch, D.rank())
            resumed = start if epoch == start.epoch and start.step else None
            t0 = time.perf_counter()
            clusters, timing = (resumed.clusters, {}) if resumed else (None, {})
            if resumed is None and model.clusters and epoch >= cfg.warmup_epochs:
                clusters, timing, stats = cluster_epoch(model, cluster_loader, len(base), cfg, device, labels)
                if logger:
                    logger.log("cluster", epoch=epoch, **timing, granularities=stats)
                    save_torch({"epoch": epoch, **clusters.to("cpu").state_dict()}, cfg.run_dir / "clusters.pt")
            if clusters is not None:
                clusters = clusters.to(device)
            lr = adjust_learning_rate(optimizer, cfg, epoch)
            sampler.set_epoch(epoch)
            t1 = time.perf_counter()
            with signals.deferred():  # a signal now stops the run after the current step, at a checkpoint
                means = train_one_epoch(ddp, train_loader, optimizer, clusters, epoch, cfg, logger, device, augment,
                                        resumed, signals, checkpoint)
                t2 = time.perf_counter()
                if D.is_main():  # logged before the checkpoint: a kill in between retrains and relogs the epoch
                    images = (len(train_loader) - (resumed.step if resumed else 0)) * cfg.batch_size
                    row = {"epoch": epoch, "lr": lr, **means, "epoch_s": t2 - t0, "train_s": t2 - t1,
                           "estep_s": t1 - t0, "images_per_s": images / (t2 - t1), **timing}
                    logger.log("epoch", **row)
                    save_checkpoint(cfg, model, optimizer, epoch, len(base))
                    print(_epoch_line(row, cfg.epochs), flush=True)
                D.barrier()
            if signals.requested:  # it came during the epoch's last step or its checkpoint
                raise signals.stop(f" after epoch {epoch + 1}; continue with --resume")
        summary = {"run_dir": str(cfg.run_dir), "epochs": cfg.epochs,
                   "train_time_s": time.perf_counter() - t_start}
        if D.is_main() and cfg.final_knn and stop_after is None:
            summary.update(final_knn(cfg, model, device))
            write_json(summary, cfg.run_dir / "knn.json")
    if logger:
        logger.close()
    return summary


def _epoch_line(row: dict[str, float], epochs: int) -> str:
    keys = [k for k in ("loss", "acc_inst", "acc_proto") if k in row]
    vals = "  ".join(f"{k} {row[k]:.3f}" for k in keys)
    return (f"epoch {row['epoch'] + 1}/{epochs}  {vals}  lr {row['lr']:.4g}  "
            f"{row['epoch_s']:.0f}s ({row['images_per_s']:.0f} img/s, E-step {row['estep_s']:.0f}s)")


def final_knn(cfg: PretrainConfig, model: Method, device: torch.device) -> dict[str, Any]:
    """kNN top-1 of the trained backbone on the test split, next to a randomly initialised encoder's."""
    (bank, _), (test, skipped) = load_split(cfg, knn_bank_split(cfg)), load_split(cfg, cfg.test_split)
    tf = eval_transform(image_size(cfg, bank))
    loaders = [DataLoader(with_transform(ds, tf), 256, num_workers=cfg.workers, worker_init_fn=_worker_init)
               for ds in (bank, test)]
    torch.manual_seed(cfg.seed)
    random_encoder = encoder_from_config(cfg).to(device).eval()
    encoders = {"random_init": random_encoder, cfg.method: model.encoder_q.eval()}
    results = {}
    for name, net in encoders.items():
        (fb, yb), (ft, yt) = [extract_features(lambda x, n=net: backbone_features(n, x), ld, device, desc=name)
                              for ld in loaders]
        results[name] = knn_accuracy(fb, yb, ft, yt, cfg.knn_k, cfg.knn_t)
    gain = results[cfg.method] - results["random_init"]
    print(f"\nkNN top-1 on {cfg.dataset} {cfg.test_split} (k={cfg.knn_k}, t={cfg.knn_t}, backbone features)\n"
          f"  random init  {results['random_init']:6.2f}\n"
          f"  {cfg.method:<12} {results[cfg.method]:6.2f}  ({gain:+.2f})", flush=True)
    return {"knn": {"k": cfg.knn_k, "t": cfg.knn_t, "split": cfg.test_split, **results,
                    **({"skipped_images": skipped} if skipped else {})}}


def knn_bank_split(cfg: PretrainConfig) -> str:
    """The labelled split the final kNN check uses as its bank: the training split, or ``train`` for STL-10's
    unlabelled ones."""
    return cfg.train_split if "unlabeled" not in cfg.train_split else "train"
