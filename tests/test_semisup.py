"""Label subsets (balanced and the reference's uniform draw), their files, and whole-network fine-tuning."""

from __future__ import annotations

import copy
import csv
import json
import random

import numpy as np
import pytest
import torch
from test_linear_probe import TensorImages, tiny_backbone
from torch import nn

from pcl_bench.data.subsets import label_subset, load_or_draw_subset, load_subset, save_subset
from pcl_bench.eval.semisup import SemisupConfig, fine_tune, make_optimizer
from pcl_bench.eval.specs import find_spec, resolve_spec
from pcl_bench.runtime.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")

# class sizes 100, 50, 7, 1 in a shuffled order
TARGETS = np.random.default_rng(0).permutation(np.repeat([0, 1, 2, 3], [100, 50, 7, 1]))


def test_balanced_subset_counts_per_class():
    """round(0.1 n_c) per class, half up and at least 1: 100 -> 10, 50 -> 5, 7 -> 1 (0.7), 1 -> 1 (0.1)."""
    idx = label_subset(TARGETS, 0.1, seed=0)
    assert np.bincount(TARGETS[idx], minlength=4).tolist() == [10, 5, 1, 1]
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert np.bincount(TARGETS[label_subset(TARGETS, 0.05, seed=0)]).tolist() == [5, 3, 1, 1]  # 2.5 -> 3


def test_subsets_reproducible_per_seed():
    for balanced in (True, False):
        a, b = label_subset(TARGETS, 0.2, 3, balanced), label_subset(TARGETS, 0.2, 3, balanced)
        assert np.array_equal(a, b)
        assert not np.array_equal(a, label_subset(TARGETS, 0.2, 4, balanced))


def test_uniform_subset_is_the_reference_draw():
    """balanced=False keeps the first int(fraction N) images after random.seed(seed); random.shuffle(samples)
    (MoPro finetune_imagenet.py), as a set: 158 images at 10% -> 15 (int, not round), any class counts."""
    samples = [(f"img{i}.jpg", int(t)) for i, t in enumerate(TARGETS)]
    random.seed(5)
    random.shuffle(samples)
    expected = sorted(int(path[3:-4]) for path, _ in samples[: int(0.1 * len(samples))])
    assert label_subset(TARGETS, 0.1, 5, balanced=False).tolist() == expected
    assert len(expected) == 15


def test_bad_fractions_and_unlabelled_targets():
    for fraction in (0.0, 1.5):
        with pytest.raises(UsageError, match="fraction"):
            label_subset(TARGETS, fraction, 0)
    with pytest.raises(UsageError, match="selects none"):
        label_subset(TARGETS, 0.001, 0, balanced=False)
    with pytest.raises(UsageError, match="labelled"):
        label_subset(np.array([0, 1, -1]), 0.5, 0)


def test_save_load_round_trip_and_size_check(tmp_path):
    path = tmp_path / "subsets" / "cifar10_10pct_seed0.json"
    idx = label_subset(TARGETS, 0.1, 0)
    meta = {"fraction": 0.1, "seed": 0, "balanced": True, "dataset_size": len(TARGETS), "dataset": "toy"}
    save_subset(idx, path, meta)
    loaded, got = load_subset(path, len(TARGETS))
    assert np.array_equal(loaded, idx) and loaded.dtype == np.int64
    assert got == {**meta, "n": len(idx)}
    with pytest.raises(UsageError, match="158 images but this training set has 157"):
        load_subset(path, len(TARGETS) - 1)
    with pytest.raises(UsageError, match="cannot read"):
        load_subset(tmp_path / "missing.json", len(TARGETS))
    data = json.loads(path.read_text())
    data["indices"][0] = 10_000
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="corrupt"):
        load_subset(path, len(TARGETS))


def test_load_or_draw_reuses_the_saved_subset(tmp_path):
    """The first call draws and saves; later calls read the file (not a new draw), and mismatches are refused."""
    path = tmp_path / "subset.json"
    first = load_or_draw_subset(path, TARGETS, 0.2, seed=1)
    data = json.loads(path.read_text())
    data["indices"] = data["indices"][::-1]  # a marker that only a read (not a redraw) returns
    path.write_text(json.dumps(data))
    assert load_or_draw_subset(path, TARGETS, 0.2, seed=1).tolist() == first.tolist()[::-1]
    with pytest.raises(UsageError, match="requested"):
        load_or_draw_subset(path, TARGETS, 0.2, seed=2)
    with pytest.raises(UsageError, match="requested"):
        load_or_draw_subset(path, TARGETS, 0.2, seed=1, balanced=False)


def test_config_recipe_and_classifier_lr():
    """The paper's recipe comes from the shipped spec; the classifier lr from its per-fraction table."""
    spec = resolve_spec(find_spec("semisup", "imagenet"), "imagenet", None, {})
    cfg = SemisupConfig.from_spec(spec, 0.01)
    assert (cfg.lr_backbone, cfg.lr_classifier, cfg.epochs, cfg.milestones, cfg.gamma) == (0.01, 1.0, 20, (12, 16), 0.2)
    assert (cfg.momentum, cfg.weight_decay, cfg.batch_size) == (0.9, 5e-4, 256)
    assert SemisupConfig.from_spec(spec, 0.1).lr_classifier == 0.1
    with pytest.raises(UsageError, match="no classifier lr for label fraction 0.02"):
        SemisupConfig.from_spec(spec, 0.02)
    with pytest.raises(UsageError):
        SemisupConfig.from_spec(spec, 0)


def test_optimizer_groups():
    backbone, fc = tiny_backbone(), nn.Linear(512, 10)
    opt = make_optimizer(backbone, fc, SemisupConfig(lr_classifier=1.0))
    g_backbone, g_fc = opt.param_groups
    params = list(backbone.parameters())
    assert len(g_backbone["params"]) == len(params) and all(p is q for p, q in zip(g_backbone["params"], params))
    assert g_fc["params"] == [fc.weight, fc.bias]
    assert (g_backbone["lr"], g_fc["lr"]) == (0.01, 1.0)
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 5e-4 for g in opt.param_groups)
    small = make_optimizer(backbone, fc, SemisupConfig(lr_classifier=0.1, batch_size=64))
    assert [g["lr"] for g in small.param_groups] == pytest.approx([0.0025, 0.025])


def test_fine_tune_updates_backbone_and_steps_both_lrs(tmp_path):
    """Two epochs with a milestone at 1: both lrs x0.2 after epoch 0; weights and BN statistics change."""
    backbone = tiny_backbone()
    before = copy.deepcopy(backbone.state_dict())
    cfg = SemisupConfig(lr_classifier=1.0, epochs=2, milestones=(1,), batch_size=8, device="cpu", workers=0)
    out = fine_tune(backbone, 512, TensorImages(17, 3, 0), TensorImages(6, 3, 1), 3, cfg, log_dir=tmp_path)
    after = backbone.state_dict()
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    hist = out["history"]
    lrs = [lr for r in hist for lr in (r["lr_backbone"], r["lr_classifier"])]
    assert lrs == pytest.approx([x * 8 / 256 for x in (0.01, 1.0, 0.002, 0.2)])  # linear scaling to batch 8
    assert "test_top1" not in hist[0] and 0.0 <= out["top1"] <= out["top5"] == 100.0
    assert len(list(csv.DictReader((tmp_path / "semisup.csv").open()))) == 2
