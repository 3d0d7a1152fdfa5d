"""The generic protocol runner: a spec from ``protocols/*.toml``, a checkpoint and a dataset -> result rows.

``pcl-bench eval <protocol> --dataset D --checkpoint C`` picks the one spec of ``<protocol>`` that lists ``D``
in its ``datasets``, applies the chosen ``[variants.<name>]`` table, then the spec's ``[overrides.<D>]``
table, then (with ``--smoke``) its ``[smoke]`` table, then the command-line flags. Facts about the dataset
come from the dataset: its training and test splits (:func:`pcl_bench.data.default_splits`, or
``--train-split`` / ``--test-split``) and its image size (its native size unless the spec or ``--image-size``
sets one). A spec may add a dataset of its own name in a supported layout: ``layout = "imagefolder"`` in
its ``[overrides.<name>]`` table.

Every input is checked before any expensive work: the spec, the splits (each is opened and listed), the
protocol's settings against them, the images with ``--skip-corrupt``, then the checkpoint. The protocol then
runs and appends one row per (setting, metric[, class]) to the results store, only at the end, so a failed
evaluation writes nothing. Smoke runs print their rows and store none.

Every protocol reads frozen features through the content-keyed cache (:mod:`pcl_bench.eval.feature_cache`),
except the full linear probe, semi-supervised fine-tuning and detection transfer, which need images.
"""
from __future__ import annotations

import copy
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..data import InstanceSubset, balanced_subset, build_dataset, default_splits, with_transform
from ..data.augment import eval_transform
from ..data.corrupt import skip_unreadable
from ..data.fingerprint import fingerprint
from ..data.subsets import load_or_draw_subset
from ..models.checkpoints import load_backbone
from ..models.encoders import build_encoder, feature_dim
from ..runtime.atomic import save_npz
from ..runtime.device import resolve_device
from ..runtime.errors import UsageError
from .ami import cluster_quality
from .detection import METRICS, DetectionConfig, detection_split, transfer_runs
from .feature_cache import cached_features
from .knn import knn_accuracy
from .linear import LinearProbeConfig, train_linear, train_linear_on_features, train_transform
from .lowshot import max_k, run_lowshot_places, run_lowshot_voc
from .semisup import SemisupConfig, fine_tune
from .specs import find_spec, resolve_spec, spec_files
from .store import DEFAULT_PATH, append_rows, make_row

# Evaluation-wide settings that are not spec entries: the dataset's splits and image size.
DATASET_FLAGS = ("train_split", "test_split", "image_size")


# ---------------------------------------------------------------------------------------------------
# What is evaluated


def load_encoder(checkpoint: str, arch: str | None = None, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """The backbone (fc = Identity, eval mode) of ``checkpoint`` and its info (path, sha256, arch, method, ...).

    ``random:<arch>[:<stem>]`` (e.g. ``random:resnet18``) is a randomly initialised encoder seeded by ``seed``,
    the baseline every trained encoder should beat.
    """
    if not checkpoint.startswith("random:"):
        return load_backbone(checkpoint, arch)
    _, arch, *stem = checkpoint.split(":")
    stem = stem[0] if stem else "imagenet"
    torch.manual_seed(seed)
    net = build_encoder(arch, stem=stem)
    net.fc = torch.nn.Identity()
    sha = weights_sha256(net)
    return net.eval(), {"path": checkpoint, "sha256": sha, "kind": "random", "arch": arch, "stem": stem,
                        "method": "random init"}


def weights_sha256(net: torch.nn.Module) -> str:
    """sha256 of a network's weights and buffers: what a random encoder's cached features depend on (its
    seed string alone would not notice another torch initialising differently)."""
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def smoke_subset(ds: Dataset, per_class: int, seed: int = 0) -> Dataset:
    """A few images of each class: ``per_class`` per label (single-label), the union of ``per_class``
    positives per class (multi-label), or ``per_class`` x classes images (detection sets)."""
    targets = getattr(ds, "targets", None)
    if targets is not None and np.asarray(targets).ndim == 1:
        return balanced_subset(ds, per_class, seed)
    rng = np.random.default_rng(seed)
    if targets is None:
        n = min(len(ds), per_class * len(ds.classes))
        return InstanceSubset(ds, np.sort(rng.choice(len(ds), n, replace=False)))
    targets = np.asarray(targets)
    chosen = [rng.choice(pos, min(per_class, len(pos)), replace=False)
              for pos in (np.flatnonzero(targets[:, c] == 1) for c in range(targets.shape[1])) if len(pos)]
    return InstanceSubset(ds, np.unique(np.concatenate(chosen)))


@dataclass
class Evaluation:
    """Everything a protocol runner needs: the encoder, the resolved spec, the dataset's splits and image size,
    and where results go. ``split("train")`` / ``split("test")`` are opened once (and checked) by
    :meth:`open_splits`, before any expensive work."""

    protocol: str
    spec: dict[str, Any]
    dataset: str
    data_root: str | None
    splits: dict[str, str]  # "train" / "test" -> split name
    image_size: int | None
    device: torch.device
    workers: int
    batch_size: int
    results_dir: Path
    smoke: bool = False
    skip_corrupt: bool = False
    shared: dict[tuple, Any] = field(default_factory=dict)  # splits opened (and scanned) for other evaluations too
    net: torch.nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    _opened: dict[str, Dataset] = field(default_factory=dict)

    def open_splits(self, which: tuple[str, ...]) -> None:
        """Open (and list) the ``which`` splits, leave out unreadable images with ``skip_corrupt`` and keep a
        few images per class with ``smoke``; fix the image size from the training split if still open."""
        for w in which:
            key = (self.protocol == "detection", self.layout, self.data_root, self.splits[w], w == "train")
            if key not in self.shared:
                self.shared[key] = (detection_split(self.dataset, self.data_root, self.splits[w], w == "train")
                                    if key[0] else build_dataset(self.layout, self.data_root, self.splits[w]))
            ds = self.shared[key]
            if self.skip_corrupt:  # scanned once per split, also in eval all
                if key + ("skip-corrupt",) not in self.shared:
                    self.shared[key + ("skip-corrupt",)] = skip_unreadable(ds, self.workers)
                ds, self.skipped[self.splits[w]] = self.shared[key + ("skip-corrupt",)]
            self._opened[w] = smoke_subset(ds, self.spec.get("per_class", 8)) if self.smoke else ds
        if self.image_size is None and self.protocol != "detection":
            self.image_size = getattr(self._opened[which[0]], "image_size", None)
            if not self.image_size:
                raise UsageError(f"{self.dataset} images have no single size; pass --image-size, e.g. 224")

    @property
    def layout(self) -> str:
        """The on-disk layout (a dataset name of :mod:`pcl_bench.data`): the spec's ``layout`` for a dataset
        that a spec adds under a name of its own, else the dataset itself."""
        return self.spec.get("layout", self.dataset)

    def split(self, which: str, transform=None) -> Dataset:
        ds = self._opened[which]
        return ds if transform is None else with_transform(ds, transform)

    def features(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """Cached (features, targets) of the ``train`` or ``test`` split under the centre crop."""
        tf = eval_transform(self.image_size)
        key = f"{self.layout}|{fingerprint(self.split(which))}|{tf}"  # the data's content, not its name
        ds = self.split(which, tf)
        return cached_features(self.net, self.info["sha256"], ds, key, self.spec.get("feature", "pool"),
                               self.batch_size, self.workers, self.device)


Result = dict[str, Any]  # setting, metric, mean, std, n_runs, seeds[, class]


# ---------------------------------------------------------------------------------------------------
# Protocol runners: Evaluation -> results


def run_lowshot(ev: Evaluation) -> list[Result]:
    s = ev.spec
    (xtr, ytr), (xte, yte) = ev.features("train"), ev.features("test")
    if s["task"] != "multilabel":
        out = run_lowshot_places(xtr, ytr, xte, yte, ks=s["ks"], runs=s["runs"], seed=s["seed"], costs=s["costs"])
        return [_row(r["setting"], "top1", r["mean"], r["std"], r["seeds"]) for r in out]
    if ytr.ndim != 2:
        raise UsageError(f"{ev.dataset} is single-label; VOC-style low-shot needs VOC-style 1/-1/0 labels")
    out = run_lowshot_voc(xtr, ytr, xte, yte, ks=s["ks"], runs=s["runs"], seed=s["seed"], variant=s["variant"],
                          costs=s["costs"], full=s["full"], classes=ev.split("train").classes)
    rows = []
    for r in out:
        rows.append(_row(r["setting"], "mAP", r["mean"], r["std"], r["seeds"]))
        rows += [_row(r["setting"], "AP", mean, std, r["seeds"], name)
                 for name, (mean, std) in r["per_class_ap"].items()]
    return rows


def _row(setting: str, metric: str, mean: float, std: float, seeds: list[int], class_name: str = "") -> Result:
    """A result; a setting without seeds (one fit on everything, e.g. low-shot ``full``) is one run."""
    return {"setting": setting, "metric": metric, "mean": mean, "std": std, "n_runs": max(1, len(seeds)),
            "seeds": seeds, "class": class_name}


def run_linear(ev: Evaluation) -> list[Result]:
    s = ev.spec
    cfg = LinearProbeConfig(epochs=s["epochs"], milestones=tuple(s["milestones"]), lr=s["lr"], mode=s["mode"],
                            batch_size=s["batch_size"], seed=s["seed"], workers=ev.workers, device=ev.device.type)
    log_dir = ev.results_dir / "logs" / f"linear_{ev.dataset}_{ev.info['sha256'][:8]}"
    if s["mode"] == "fast":
        (xtr, ytr), (xte, yte) = ev.features("train"), ev.features("test")
        res = train_linear_on_features(xtr, ytr, xte, yte, int(ytr.max()) + 1, cfg, log_dir)
    else:
        train = ev.split("train", train_transform(ev.image_size))
        test = ev.split("test", eval_transform(ev.image_size))
        res = train_linear(ev.net, feature_dim(ev.net), train, test, len(train.classes), cfg, log_dir)
    return [_row("", m, res[m], 0.0, [s["seed"]]) for m in ("top1", "top5")]


def run_knn(ev: Evaluation) -> list[Result]:
    s = ev.spec
    (xtr, ytr), (xte, yte) = ev.features("train"), ev.features("test")
    xtr, ytr, xte, yte = map(torch.as_tensor, (xtr, ytr, xte, yte))
    if not ev.smoke:
        save_tsne_sample(ev, xte.numpy(), yte.numpy())
    return [_row(f"k={k}", "top1", knn_accuracy(xtr, ytr, xte, yte, k, s["t"]), 0.0, []) for k in s["ks"]]


def save_tsne_sample(ev: Evaluation, feats: np.ndarray, labels: np.ndarray, n: int = 2000) -> None:
    """Keep up to ``n`` test features for the report's t-SNE figure (paper appendix G)."""
    idx = np.random.default_rng(0).permutation(len(labels))[:n]
    classes = getattr(ev.split("test"), "classes", None)
    path = ev.results_dir / "features" / f"{ev.dataset}_{ev.info['method']}_{ev.info['sha256'][:8]}.npz"
    save_npz(path, features=feats[idx], labels=labels[idx], classes=np.array(classes or []),
             title=np.array(f"{ev.info['method']} on {ev.dataset}"))


def run_semisup(ev: Evaluation) -> list[Result]:
    s = ev.spec
    train = ev.split("train", train_transform(ev.image_size))
    test = ev.split("test", eval_transform(ev.image_size))
    rows = []
    for fraction in s["fractions"]:
        name = f"{ev.dataset}_{ev.splits['train']}_{fraction:g}_seed{s['seed']}" + ("_smoke" if ev.smoke else "")
        idx = load_or_draw_subset(ev.results_dir / "subsets" / f"{name}.json", np.asarray(train.targets),
                                  fraction, s["seed"], s["balanced"])
        cfg = SemisupConfig.from_spec(s, fraction, workers=ev.workers, device=ev.device.type)
        log_dir = ev.results_dir / "logs" / f"semisup_{ev.dataset}_{fraction:g}_{ev.info['sha256'][:8]}"
        res = fine_tune(copy.deepcopy(ev.net), feature_dim(ev.net), Subset(train, idx), test, len(train.classes),
                        cfg, log_dir)
        rows += [_row(f"fraction={fraction:g}", m, res[m], 0.0, [s["seed"]]) for m in ("top1", "top5")]
    return rows


def run_ami(ev: Evaluation) -> list[Result]:
    s = ev.spec
    feats, targets = ev.features("train")
    coarse = getattr(ev.split("train"), "coarse_targets", None)
    labels = {"fine": targets, **({"coarse": np.asarray(coarse)} if coarse is not None else {})}
    rows = []
    for r in cluster_quality(feats, labels, ks=s["clusters"], seed=s["seed"], device=ev.device):
        suffix = "" if r["level"] == "fine" else f"_{r['level']}"
        rows += [_row(f"K={r['K']}", m + suffix, r[m], 0.0, [s["seed"]]) for m in ("ami", "nmi", "ari")]
    return rows


def run_detection(ev: Evaluation) -> list[Result]:
    """Faster R-CNN transfer (:mod:`pcl_bench.eval.detection`)."""
    s = ev.spec
    cfg = DetectionConfig.from_spec(s)
    name = f"detection_{ev.dataset}_{ev.splits['train']}-{ev.splits['test']}_{ev.info['sha256'][:8]}_{cfg.digest()}"
    log_dir = ev.results_dir / "logs" / (name + ("_smoke" if ev.smoke else ""))
    out = transfer_runs(ev.net, ev.split("train"), ev.split("test"), cfg, s["runs"], log_dir, ev.device, ev.workers)
    rows = [_row("", m, *out[m], out["seeds"]) for m in METRICS]
    return rows + [_row("", "AP", *v["ap11"], out["seeds"], name) for name, v in out["per_class"].items()]


# ---------------------------------------------------------------------------------------------------
# Checks of a protocol's settings against its opened splits, before any feature is extracted


def check_lowshot(ev: Evaluation) -> None:
    """Keep the ks the training split allows (a note names what limits the others); none left is an error."""
    train = ev.split("train")
    limit, why = max_k(train.targets, ev.spec["variant"], train.classes)
    kept = [k for k in ev.spec["ks"] if k <= limit]
    if not kept:
        raise UsageError(f"low-shot k={ev.spec['ks'][0]} and up need more images: {why} in "
                         f"{ev.splits['train']}; pass --ks {limit} or a larger training split")
    if len(kept) < len(ev.spec["ks"]):
        left_out = ", ".join(f"k={k}" for k in ev.spec["ks"] if k > limit)
        print(f"note: low-shot {left_out} left out: {why} in {ev.splits['train']}", file=sys.stderr)
        ev.spec["ks"] = kept


def check_ami(ev: Evaluation) -> None:
    n = len(ev.split("train"))
    if max(ev.spec["clusters"]) > n:
        raise UsageError(f"AMI with K={max(ev.spec['clusters'])} clusters needs as many images, but "
                         f"{ev.splits['train']} has {n}; pass --clusters with K <= {n}")


def check_detection(ev: Evaluation) -> None:
    DetectionConfig.from_spec(ev.spec)  # raises on impossible settings
    if ev.split("train").classes != ev.split("test").classes:
        raise UsageError("the detection train and test sets name different classes")


@dataclass(frozen=True)
class Protocol:
    """A protocol runner, the splits it reads and the check of its settings against them."""

    run: Callable[[Evaluation], list[Result]]
    splits: tuple[str, ...] = ("train", "test")
    check: Callable[[Evaluation], None] = lambda ev: None


PROTOCOLS: dict[str, Protocol] = {
    "lowshot": Protocol(run_lowshot, check=check_lowshot), "linear": Protocol(run_linear),
    "knn": Protocol(run_knn), "semisup": Protocol(run_semisup), "ami": Protocol(run_ami, ("train",), check_ami),
    "detection": Protocol(run_detection, check=check_detection)}


# ---------------------------------------------------------------------------------------------------
# Planning and running


def plan(protocol: str, dataset: str, data_root: str | None = None, *, spec_file: str | None = None,
         variant: str | None = None, overrides: dict[str, Any] | None = None, smoke: bool = False,
         skip_corrupt: bool = False, results: str | os.PathLike = DEFAULT_PATH, device: str = "auto",
         workers: int = 2, batch_size: int = 256, opened: dict[tuple, Any] | None = None) -> Evaluation:
    """Resolve the spec, the splits and the image size of one evaluation and open its splits: every check that
    needs no encoder. ``overrides`` may hold spec entries and ``train_split`` / ``test_split`` / ``image_size``.
    Evaluations planned with one ``opened`` dict open each split once (``eval all``: listing ImageNet takes a
    while)."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    overrides = dict(overrides or {})
    fixed = {k: overrides.pop(k) for k in DATASET_FLAGS if overrides.get(k) is not None}
    spec_path = Path(spec_file) if spec_file else find_spec(protocol, dataset)
    spec = resolve_spec(spec_path, dataset, variant, overrides, smoke)
    if dataset not in spec["datasets"] and not spec_file:
        raise UsageError(f"{spec['spec']} does not cover dataset {dataset!r}")
    if {"train_split", "test_split"} <= set(fixed):
        splits = {"train": fixed["train_split"], "test": fixed["test_split"]}
    else:
        splits = dict(zip(("train", "test"), default_splits(spec.get("layout", dataset), data_root)))
        splits.update({w: fixed[f"{w}_split"] for w in ("train", "test") if f"{w}_split" in fixed})
    image_size = fixed.get("image_size", spec.get("image_size"))
    if protocol == "detection":
        spec["image_size"] = image_size  # the detector's test size
    ev = Evaluation(protocol, spec, dataset, data_root, splits, image_size, resolve_device(device), workers,
                    batch_size, Path(results).parent, smoke, skip_corrupt, {} if opened is None else opened)
    ev.open_splits(PROTOCOLS[protocol].splits)
    PROTOCOLS[protocol].check(ev)
    return ev


def run(ev: Evaluation, checkpoint: str, arch: str | None = None, label: str | None = None,
        results: str | os.PathLike = DEFAULT_PATH) -> list[dict[str, Any]]:
    """Load ``checkpoint``, run the planned evaluation and append its rows to ``results`` (not for smoke runs).
    Returns the rows."""
    net, ev.info = load_encoder(checkpoint, arch, ev.spec.get("seed", 0))
    ev.net = net.to(ev.device)
    found = PROTOCOLS[ev.protocol].run(ev)
    rows = [make_row(method=label or ev.info["method"], checkpoint=str(checkpoint),
                     checkpoint_sha256=ev.info["sha256"], arch=ev.info["arch"], **identity(ev),
                     skipped=sorted(p for paths in ev.skipped.values() for p in paths), **r) for r in found]
    if not ev.smoke:
        append_rows(rows, results)
    return rows


def identity(ev: Evaluation) -> dict[str, Any]:
    """The row fields that say what was evaluated, besides the checkpoint: dataset, splits, protocol, variant and
    every setting (``params``: the resolved spec and the image size). Equal for every run of the same
    evaluation, so ``eval grid`` finds the jobs already in the store by them."""
    params = {k: v for k, v in ev.spec.items() if k not in ("datasets", "protocol", "variant", "paper")}
    params["image_size"] = ev.image_size
    return {"dataset": ev.dataset, "train_split": ev.splits["train"],
            "test_split": ev.splits["test"] if "test" in ev._opened else "", "protocol": ev.protocol,
            "variant": str(ev.spec.get("variant", "")), "params": params}


def evaluate(protocol: str, dataset: str, checkpoint: str, data_root: str | None = None, *,
             arch: str | None = None, label: str | None = None, **settings: Any) -> list[dict[str, Any]]:
    """Plan and run one evaluation (``settings``: see :func:`plan`); returns the rows it stored."""
    ev = plan(protocol, dataset, data_root, **settings)
    return run(ev, checkpoint, arch, label, settings.get("results", DEFAULT_PATH))


def protocols_for(dataset: str) -> list[str]:
    """Every protocol with a spec that lists ``dataset``, in the order of ``PROTOCOLS``."""
    specs = [spec for _, spec in spec_files()]
    found = [p for p in PROTOCOLS if any(s.get("protocol") == p and dataset in s.get("datasets", []) for s in specs)]
    if not found:
        raise UsageError(f"no protocol spec lists dataset {dataset!r}")
    return found


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A short plain-text table of ``rows`` for the terminal; per-class rows as one table of class x setting."""
    lines = [f"{'method':<14} {'dataset':<11} {'protocol':<9} {'setting':<14} {'metric':<12} {'value':>14}"]
    for r in rows:
        if r["class"]:
            continue
        value = f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["n_runs"] > 1 else "")
        lines.append(f"{r['method']:<14} {r['dataset']:<11} {r['protocol']:<9} {r['setting'] or '-':<14} "
                     f"{r['metric']:<12} {value:>14}")
    per_class = [r for r in rows if r["class"]]
    if per_class:
        settings = list(dict.fromkeys(r["setting"] for r in per_class))
        table = {(r["class"], r["setting"]): r["mean"] for r in per_class}
        lines += ["", f"per-class {per_class[0]['metric']} ({per_class[0]['protocol']})",
                  f"{'class':<14}" + "".join(f"{s or 'AP':>9}" for s in settings)]
        for name in dict.fromkeys(r["class"] for r in per_class):
            lines.append(f"{name:<14}" + "".join(f"{table[name, s]:>9.1f}" for s in settings))
    return "\n".join(lines)
