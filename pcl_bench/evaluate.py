"""The generic protocol runner: a spec from ``protocols/*.toml``, a checkpoint and a dataset -> result rows.

``pcl-bench eval <protocol> --dataset D --checkpoint C`` picks the spec of ``<protocol>`` that lists ``D`` in its
``datasets``, applies the chosen ``[variants.<name>]`` table, then the spec's ``[overrides.<D>]`` table, then the
command-line flags, runs the protocol and appends one row per (setting, metric) to the results store. The rows
are appended only at the end, so a failed evaluation writes nothing.

Every protocol reads frozen features through the content-keyed cache (:mod:`pcl_bench.feature_cache`), except
the full linear probe, semi-supervised fine-tuning and detection transfer, which need images.
"""
from __future__ import annotations

import copy
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .ami import cluster_quality
from .atomic import save_npz
from .checkpoints import load_backbone, require_arch
from .data import build_dataset
from .data.augment import eval_transform
from .detection import METRICS, DetectionConfig, detection_datasets, transfer_runs
from .errors import UsageError
from .feature_cache import cached_features
from .knn import knn_accuracy
from .linear_probe import LinearProbeConfig, train_linear, train_linear_on_features, train_transform
from .lowshot import run_lowshot_places, run_lowshot_voc
from .models.encoders import build_encoder, feature_dim
from .paths import repo_path
from .results_store import append_rows, make_row
from .semisup import SemisupConfig, fine_tune, load_or_draw_subset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROTOCOLS = ("lowshot", "linear", "knn", "semisup", "ami", "detection")


# ---------------------------------------------------------------------------------------------------
# Specs


def _specs(spec_dir: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``(path, parsed spec)`` in ``spec_dir`` (default: the repository's ``protocols/``), by name."""
    return [(p, tomllib.loads(p.read_text())) for p in sorted((spec_dir or repo_path("protocols")).glob("*.toml"))]


def find_spec(protocol: str, dataset: str, spec_dir: Path | None = None) -> Path:
    """The spec file of ``protocol`` whose ``datasets`` list contains ``dataset``."""
    candidates = [(path, spec) for path, spec in _specs(spec_dir) if spec.get("protocol") == protocol]
    for path, spec in candidates:
        if dataset in spec.get("datasets", []):
            return path
    raise UsageError(f"no {protocol} protocol spec lists dataset {dataset!r} "
                     f"(specs: {', '.join(p.name for p, _ in candidates)}); "
                     f"add it to a spec's datasets or pass --spec FILE")


def resolve_spec(path: Path, dataset: str, variant: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Spec ``path`` with its ``[variants.<variant>]``, ``[overrides.<dataset>]`` and ``overrides`` applied."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"cannot read protocol spec {path}: {e}") from None
    variants = raw.pop("variants", {})
    per_dataset = raw.pop("overrides", {})
    spec = {**raw, "spec": Path(path).name}
    default = spec.get("variant", "")
    variant = variant or default
    if variant not in (default, *variants):
        known = [v for v in (default, *variants) if v]
        raise UsageError(f"unknown --variant {variant!r} for {spec['spec']}; "
                         + (f"choose one of {', '.join(known)}" if known else "it has no variants"))
    spec.update(variants.get(variant, {}), variant=variant)
    spec.update(per_dataset.get(dataset, {}))
    for key, value in overrides.items():
        if key not in spec:
            raise UsageError(f"--{key.replace('_', '-')} does not apply to the {spec['protocol']} protocol "
                             f"({spec['spec']} has no {key!r})")
        spec[key] = value
    return spec


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
    sha = hashlib.sha256(f"{checkpoint}:{stem}:seed{seed}".encode()).hexdigest()
    return net.eval(), {"path": checkpoint, "sha256": sha, "kind": "random", "arch": arch, "stem": stem,
                        "method": "random init"}


@dataclass
class Evaluation:
    """Everything a protocol runner needs: the encoder, the resolved spec and where data and results are."""

    net: torch.nn.Module
    info: dict[str, Any]
    spec: dict[str, Any]
    dataset: str
    data_root: str | None
    device: torch.device
    workers: int
    batch_size: int
    results_dir: Path

    def split(self, which: str, transform=None) -> Dataset:
        return build_dataset(self.dataset, self.data_root, self.spec[which], transform)

    def features(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """Cached (features, targets) of the ``train_split`` or ``test_split`` under the centre crop."""
        tf = eval_transform(self.spec["image_size"])
        ds = self.split(which, tf)
        root = os.path.abspath(os.path.expanduser(self.data_root)) if self.data_root else "-"
        key = f"{self.dataset}|{root}|{self.spec[which]}|{tf}"
        return cached_features(self.net, self.info["sha256"], ds, key, self.spec.get("feature", "pool"),
                               self.batch_size, self.workers, self.device)


Result = dict[str, Any]  # setting, metric, mean, std, n_runs, seeds


# ---------------------------------------------------------------------------------------------------
# Protocol runners: Evaluation -> results


def run_lowshot(ev: Evaluation) -> list[Result]:
    s = ev.spec
    (xtr, ytr), (xte, yte) = ev.features("train_split"), ev.features("test_split")
    if s["task"] == "multilabel":
        if ytr.ndim != 2:
            raise UsageError(f"{ev.dataset} is single-label; VOC-style low-shot needs VOC-style 1/-1/0 labels")
        out = run_lowshot_voc(xtr, ytr, xte, yte, ks=s["ks"], runs=s["runs"], seed=s["seed"], variant=s["variant"],
                              costs=s["costs"], full=s["full"])
        metric = "mAP"
    else:
        out = run_lowshot_places(xtr, ytr, xte, yte, ks=s["ks"], runs=s["runs"], seed=s["seed"], costs=s["costs"])
        metric = "top1"
    return [{"setting": r["setting"], "metric": metric, "mean": r["mean"], "std": r["std"],
             "n_runs": len(r["seeds"]), "seeds": r["seeds"]} for r in out]


def _num_classes(ds: Dataset) -> int:
    return len(ds.classes)


def run_linear(ev: Evaluation) -> list[Result]:
    s = ev.spec
    cfg = LinearProbeConfig(epochs=s["epochs"], milestones=tuple(s["milestones"]), lr=s["lr"], mode=s["mode"],
                            batch_size=s["batch_size"], seed=s["seed"], workers=ev.workers, device=ev.device.type)
    log_dir = ev.results_dir / "logs" / f"linear_{ev.dataset}_{ev.info['sha256'][:8]}"
    if s["mode"] == "fast":
        (xtr, ytr), (xte, yte) = ev.features("train_split"), ev.features("test_split")
        res = train_linear_on_features(xtr, ytr, xte, yte, int(ytr.max()) + 1, cfg, log_dir)
    else:
        train = ev.split("train_split", train_transform(s["image_size"]))
        test = ev.split("test_split", eval_transform(s["image_size"]))
        res = train_linear(ev.net, feature_dim(ev.net), train, test, _num_classes(train),
                           cfg, log_dir)
    return [{"setting": "", "metric": m, "mean": res[m], "std": 0.0, "n_runs": 1, "seeds": [s["seed"]]}
            for m in ("top1", "top5")]


def run_knn(ev: Evaluation) -> list[Result]:
    s = ev.spec
    (xtr, ytr), (xte, yte) = ev.features("train_split"), ev.features("test_split")
    xtr, ytr, xte, yte = map(torch.as_tensor, (xtr, ytr, xte, yte))
    save_tsne_sample(ev, xte.numpy(), yte.numpy())
    return [{"setting": f"k={k}", "metric": "top1", "mean": knn_accuracy(xtr, ytr, xte, yte, k, s["t"]),
             "std": 0.0, "n_runs": 1, "seeds": []} for k in s["ks"]]


def save_tsne_sample(ev: Evaluation, feats: np.ndarray, labels: np.ndarray, n: int = 2000) -> None:
    """Keep up to ``n`` test features for the report's t-SNE figure (paper appendix G)."""
    idx = np.random.default_rng(0).permutation(len(labels))[:n]
    classes = getattr(ev.split("test_split"), "classes", None)
    path = ev.results_dir / "features" / f"{ev.dataset}_{ev.info['method']}_{ev.info['sha256'][:8]}.npz"
    save_npz(path, features=feats[idx], labels=labels[idx], classes=np.array(classes or []),
             title=np.array(f"{ev.info['method']} on {ev.dataset}"))


def run_semisup(ev: Evaluation) -> list[Result]:
    s = ev.spec
    train = ev.split("train_split", train_transform(s["image_size"]))
    test = ev.split("test_split", eval_transform(s["image_size"]))
    rows = []
    for fraction in s["fractions"]:
        subset_file = (ev.results_dir / "subsets" /
                       f"{ev.dataset}_{s['train_split']}_{fraction:g}_seed{s['seed']}.json")
        idx = load_or_draw_subset(subset_file, np.asarray(train.targets), fraction, s["seed"], s["balanced"])
        cfg = SemisupConfig.for_fraction(fraction, epochs=s["epochs"], milestones=tuple(s["milestones"]),
                                         batch_size=s["batch_size"], seed=s["seed"], workers=ev.workers,
                                         device=ev.device.type)
        log_dir = ev.results_dir / "logs" / f"semisup_{ev.dataset}_{fraction:g}_{ev.info['sha256'][:8]}"
        res = fine_tune(copy.deepcopy(ev.net), feature_dim(ev.net), Subset(train, idx),
                        test, _num_classes(train), cfg, log_dir)
        rows += [{"setting": f"fraction={fraction:g}", "metric": m, "mean": res[m], "std": 0.0, "n_runs": 1,
                  "seeds": [s["seed"]]} for m in ("top1", "top5")]
    return rows


def run_ami(ev: Evaluation) -> list[Result]:
    s = ev.spec
    feats, targets = ev.features("train_split")
    coarse = getattr(ev.split("train_split"), "coarse_targets", None)
    labels = {"fine": targets, **({"coarse": np.asarray(coarse)} if coarse is not None else {})}
    rows = []
    for r in cluster_quality(feats, labels, ks=s["clusters"], seed=s["seed"], device=ev.device):
        suffix = "" if r["level"] == "fine" else f"_{r['level']}"
        rows += [{"setting": f"K={r['K']}", "metric": m + suffix, "mean": r[m], "std": 0.0, "n_runs": 1,
                  "seeds": [s["seed"]]} for m in ("ami", "nmi", "ari")]
    return rows


def run_detection(ev: Evaluation) -> list[Result]:
    """Faster R-CNN transfer (:mod:`pcl_bench.detection`); the spec's ``arch``, if set, is required."""
    s = ev.spec
    if s.get("arch"):
        require_arch(ev.info, s["arch"], f"detection on {ev.dataset} (the paper's R50-FPN recipe)")
    train, test = detection_datasets(ev.dataset, ev.data_root, s["train_split"], s["test_split"])
    cfg = DetectionConfig.from_spec(s)
    log_dir = ev.results_dir / "logs" / f"detection_{ev.dataset}_{ev.info['sha256'][:8]}_{cfg.digest()}"
    out = transfer_runs(ev.net, train, test, cfg, s["runs"], log_dir, ev.device, ev.workers)
    return [{"setting": "", "metric": m, "mean": out[m][0], "std": out[m][1], "n_runs": len(out["seeds"]),
             "seeds": out["seeds"]} for m in METRICS]


RUNNERS: dict[str, Callable[[Evaluation], list[Result]]] = {
    "lowshot": run_lowshot, "linear": run_linear, "knn": run_knn, "semisup": run_semisup, "ami": run_ami,
    "detection": run_detection}


def evaluate(protocol: str, dataset: str, checkpoint: str, data_root: str | None = None, *,
             spec_file: str | None = None, variant: str | None = None, overrides: dict[str, Any] | None = None,
             arch: str | None = None, label: str | None = None, results: str | os.PathLike = "results/store.jsonl",
             device: str = "auto", workers: int = 2, batch_size: int = 256) -> list[dict[str, Any]]:
    """Run ``protocol`` on ``dataset`` for ``checkpoint`` and append its rows to the store ``results``."""
    if protocol not in RUNNERS:
        raise UsageError(f"unknown protocol {protocol!r}; choose one of {', '.join(RUNNERS)}")
    spec_path = Path(spec_file) if spec_file else find_spec(protocol, dataset)
    spec = resolve_spec(spec_path, dataset, variant, overrides or {})
    if dataset not in spec["datasets"] and not spec_file:
        raise UsageError(f"{spec['spec']} does not cover dataset {dataset!r}")
    net, info = load_encoder(checkpoint, arch, spec.get("seed", 0))
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    results = Path(results)
    ev = Evaluation(net.to(dev), info, spec, dataset, data_root, dev, workers, batch_size, results.parent)
    found = RUNNERS[protocol](ev)
    params = {k: v for k, v in spec.items() if k not in ("datasets", "protocol", "variant")}
    rows = [make_row(method=label or info["method"], checkpoint=str(checkpoint),
                     checkpoint_sha256=info["sha256"], arch=info["arch"], dataset=dataset,
                     train_split=spec["train_split"], test_split=spec.get("test_split", ""), protocol=protocol,
                     variant=str(spec.get("variant", "")), params=params, **r) for r in found]
    append_rows(rows, results)
    return rows


def protocols_for(dataset: str) -> list[str]:
    """Every protocol with a spec that lists ``dataset``, in the order of ``PROTOCOLS``."""
    specs = [spec for _, spec in _specs()]
    found = [p for p in PROTOCOLS if any(s.get("protocol") == p and dataset in s.get("datasets", []) for s in specs)]
    if not found:
        raise UsageError(f"no protocol spec lists dataset {dataset!r}")
    return found


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A short plain-text table of ``rows`` for the terminal."""
    lines = [f"{'method':<14} {'dataset':<11} {'protocol':<8} {'setting':<14} {'metric':<10} {'value':>14}"]
    for r in rows:
        value = f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["n_runs"] > 1 else "")
        lines.append(f"{r['method']:<14} {r['dataset']:<11} {r['protocol']:<8} {r['setting']:<14} "
                     f"{r['metric']:<10} {value:>14}")
    return "\n".join(lines)
