"""Linear probe: fast mode on synthetic features, full mode on a tiny image set with a frozen ResNet-18."""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from pcl_bench.eval.linear import (
    LinearProbeConfig,
    new_classifier,
    topk_correct,
    train_linear,
    train_linear_on_features,
)
from pcl_bench.models.encoders import build_encoder
from pcl_bench.runtime.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


class TensorImages(Dataset):
    """Random 32 px image tensors (already "transformed") with given targets, yielding (image, target, index)."""

    def __init__(self, n: int, num_classes: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.targets = np.arange(n) % num_classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], int(self.targets[i]), i


def blobs(n: int, means: np.ndarray, seed: int):
    """n points of unit-variance Gaussian classes centred at ``means`` (C, D); returns (x, y)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(means), size=n)
    return (means[y] + rng.normal(size=(n, means.shape[1]))).astype(np.float32), y


def fast_cfg(**kw) -> LinearProbeConfig:
    return LinearProbeConfig(mode="fast", device="cpu", workers=0, **kw)


def test_topk_correct_hand_case():
    """Targets ranked 1st, 3rd, 6th of 6 classes: top-1 counts 1, top-5 counts 2; with 3 classes top-5 = top-3."""
    logits = torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0, 0.0],
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]])
    assert topk_correct(logits, torch.tensor([0, 2, 5])) == [1, 2]
    assert topk_correct(logits[:, :3], torch.tensor([1, 2, 2]), (1, 5)) == [0, 3]


def test_fast_mode_separable_features_reach_100(tmp_path):
    """Well-separated Gaussian classes: test top-1 ~100%; lr steps x0.1 at the milestones; CSV has every epoch."""
    means = np.random.default_rng(0).normal(size=(6, 16)) * 4.0
    (xtr, ytr), (xte, yte) = blobs(600, means, seed=1), blobs(300, means, seed=2)
    cfg = fast_cfg(epochs=12, milestones=(6, 9))
    out = train_linear_on_features(xtr, ytr, xte, yte, 6, cfg, log_dir=tmp_path)
    assert out["top1"] >= 99.0 and out["top5"] == 100.0
    assert [r["lr_classifier"] for r in out["history"]] == pytest.approx([5.0] * 6 + [0.5] * 3 + [0.05] * 3)
    rows = list(csv.DictReader((tmp_path / "linear.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(12))
    assert float(rows[-1]["test_top1"]) == out["top1"]


def test_fast_mode_random_labels_at_chance():
    """Labels independent of the features: test top-1 near 1/C; top-5 with C = 4 classes is 100%."""
    rng = np.random.default_rng(0)
    xtr, xte = rng.normal(size=(800, 32)).astype(np.float32), rng.normal(size=(2000, 32)).astype(np.float32)
    ytr, yte = rng.integers(0, 4, size=800), rng.integers(0, 4, size=2000)
    out = train_linear_on_features(xtr, ytr, xte, yte, 4, fast_cfg(epochs=20, milestones=(12, 16), lr=0.1))
    assert 19.0 < out["top1"] < 31.0
    assert out["top5"] == 100.0


def test_fast_mode_deterministic_for_a_seed():
    x, y = blobs(300, np.random.default_rng(3).normal(size=(5, 8)), seed=4)
    runs = [train_linear_on_features(x, y, x, y, 5, fast_cfg(epochs=3, seed=s)) for s in (7, 7, 8)]
    assert runs[0]["history"] == runs[1]["history"]
    assert runs[0]["history"] != runs[2]["history"]


def test_new_classifier_init():
    fc = new_classifier(2048, 100, std=0.01, seed=0)
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(fc.weight.mean().item()) < 1e-3
    assert torch.count_nonzero(fc.bias) == 0
    assert torch.equal(fc.weight, new_classifier(2048, 100, 0.01, seed=0).weight)


def test_bad_input_raises_usage_error():
    with pytest.raises(UsageError, match="mode"):
        LinearProbeConfig(mode="quick")
    assert LinearProbeConfig().lr == 5.0
    x = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(UsageError, match="labels"):
        train_linear_on_features(x, np.array([0, 1, 2, -1]), x, np.zeros(4, int), 3, fast_cfg(epochs=1))


def tiny_backbone() -> nn.Module:
    """ResNet-18 with the ImageNet stem: 32 px inputs shrink to 8 px at layer1, which keeps the test fast."""
    torch.manual_seed(0)
    net = build_encoder("resnet18")
    net.fc = nn.Identity()
    return net


def test_full_mode_keeps_backbone_and_bn_frozen(tmp_path):
    """Two epochs of the full protocol: every backbone parameter and BN buffer is unchanged, the backbone's
    train/eval mode is restored, and the history has both epochs with test accuracy."""
    backbone = tiny_backbone().train()
    before = copy.deepcopy(backbone.state_dict())
    cfg = LinearProbeConfig(epochs=2, milestones=(1,), batch_size=8, device="cpu", workers=0)
    out = train_linear(backbone, 512, TensorImages(16, 3, 0), TensorImages(6, 3, 1), 3, cfg, log_dir=tmp_path)
    after = backbone.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "backbone weights or BN buffers changed"
    assert backbone.training
    assert [r["lr_classifier"] for r in out["history"]] == pytest.approx([5.0, 0.5])
    assert all(0.0 <= r["test_top1"] <= r["test_top5"] <= 100.0 for r in out["history"])
    assert len(list(csv.DictReader((tmp_path / "linear.csv").open()))) == 2


def test_train_linear_fast_mode_on_images():
    """``mode="fast"`` through train_linear: features once, backbone untouched, top-5 of 3 classes = 100."""
    backbone = tiny_backbone().eval()
    before = copy.deepcopy(backbone.state_dict())
    cfg = LinearProbeConfig(mode="fast", epochs=3, batch_size=8, device="cpu", workers=0)
    out = train_linear(backbone, 512, TensorImages(16, 3, 0), TensorImages(6, 3, 1), 3, cfg)
    assert len(out["history"]) == 3 and out["top5"] == 100.0
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert not backbone.training
