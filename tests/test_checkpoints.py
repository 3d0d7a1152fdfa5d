"""Backbone loading from the three checkpoint formats, the completeness check, and torchvision export."""
import argparse
import hashlib

import pytest
import torch
import torchvision
from torch import nn

from pcl_bench.config import resolve
from pcl_bench.methods import build_method
from pcl_bench.models.checkpoints import (
    export_torchvision,
    file_sha256,
    infer_arch,
    load_backbone,
    read_checkpoint,
)
from pcl_bench.models.encoders import backbone_features, build_encoder
from pcl_bench.runtime.errors import UsageError
from pcl_bench.train.engine import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def randomize_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-default BN running statistics, so that a buffer left at its default changes the features."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def images(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def assert_same_features(loaded: nn.Module, source_fn, size: int) -> None:
    x = images(size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source_fn(x), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A released-MoCo-style ResNet-18 checkpoint (MLP head, imagenet stem) and its query encoder."""
    enc = randomize_bn(build_encoder("resnet18", dim=16, head="mlp", stem="imagenet"))
    state = {**{f"module.encoder_q.{k}": v for k, v in enc.state_dict().items()},
             **{f"module.encoder_k.{k}": v + 1 for k, v in enc.state_dict().items()},
             "module.queue": torch.randn(16, 32), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = tmp_path_factory.mktemp("released") / "moco_v2_200ep.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": {}}, path)
    return path, enc


def test_pcl_bench_checkpoint(tmp_path):
    cfg = resolve({"method": "pcl_v2", "dataset": "shapes", "arch": "resnet18", "stem": "small", "dim": 16,
                   "queue": 32, "out": str(tmp_path), "name": "run"})
    model = build_method(cfg, num_samples=8)
    randomize_bn(model.encoder_q)
    with torch.no_grad():  # a key encoder that differs from the query encoder, to catch loading the wrong one
        for p in model.encoder_k.parameters():
            p.add_(1.0)
    save_checkpoint(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), epoch=0, num_samples=8)
    path = cfg.run_dir / "last.pt"
    net, info = load_backbone(path)
    assert info == {"path": str(path), "sha256": file_sha256(path), "kind": "pcl-bench", "arch": "resnet18",
                    "stem": "small", "method": "pcl_v2"}
    assert isinstance(net.fc, nn.Identity) and not net.training
    assert_same_features(net, lambda x: backbone_features(model.encoder_q.eval(), x), 16)


def test_released_moco_checkpoint(released):
    path, enc = released
    net, info = load_backbone(path, arch="resnet18")
    assert (info["kind"], info["arch"], info["stem"], info["method"]) == (
        "moco", "resnet18", "imagenet", "moco/pcl (released)")
    assert_same_features(net, lambda x: backbone_features(enc, x), 32)


def test_torchvision_state_dict(tmp_path):
    src = randomize_bn(torchvision.models.resnet18(num_classes=1000))
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    net, info = load_backbone(tmp_path / "r18.pth")
    assert (info["kind"], info["arch"], info["stem"], info["method"]) == (
        "torchvision", "resnet18", "imagenet", "supervised")
    src.fc = nn.Identity()
    assert_same_features(net, src, 32)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_infer_arch(arch):
    with torch.device("meta"):  # shapes only, no initialisation
        state = getattr(torchvision.models, arch)().state_dict()
    assert infer_arch(state) == arch


def test_sha256_is_of_the_file_bytes(released):
    path, _ = released
    assert file_sha256(path, chunk=1000) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_wrong_arch_names_both(released):
    path, _ = released
    with pytest.raises(UsageError, match="holds a resnet18 backbone, not the requested resnet50"):
        load_backbone(path, arch="resnet50")


def test_missing_weights_are_counted(released, tmp_path):
    path, _ = released
    ckpt = read_checkpoint(path)
    backbone_keys = [k for k in ckpt["state_dict"] if k.startswith("module.encoder_q.")
                     and ".fc." not in k and not k.endswith("num_batches_tracked")]
    gen = torch.Generator().manual_seed(0)
    dropped = [backbone_keys[i] for i in torch.randperm(len(backbone_keys), generator=gen)[:5]]
    for k in dropped:
        del ckpt["state_dict"][k]
    torch.save(ckpt, tmp_path / "partial.pt")
    with pytest.raises(UsageError, match=f"no ResNet-18 backbone: 5 of {len(backbone_keys)} weights missing"):
        load_backbone(tmp_path / "partial.pt")


def test_no_backbone_at_all(tmp_path):
    torch.save({"state_dict": {"encoder.conv1.weight": torch.zeros(64, 3, 7, 7)}}, tmp_path / "other.pt")
    with pytest.raises(UsageError, match="no ResNet backbone"):
        load_backbone(tmp_path / "other.pt")
    with pytest.raises(UsageError, match=r"no ResNet-50 backbone: (\d+) of \1 weights missing, e.g. conv1.weight"):
        load_backbone(tmp_path / "other.pt", arch="resnet50")


def test_wrong_shape(released, tmp_path):
    path, _ = released
    ckpt = read_checkpoint(path)
    ckpt["state_dict"]["module.encoder_q.layer3.1.bn2.running_var"] = torch.ones(3)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(UsageError, match=r"layer3.1.bn2.running_var is \(3,\), expected \(256,\)"):
        load_backbone(tmp_path / "bad.pt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n" * 10)
    (tmp_path / "empty.pt").touch()
    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": {}}, tmp_path / "objects.pt")
    torch.save({"epoch": 3}, tmp_path / "no_weights.pt")
    for path, message in [(tmp_path / "notes.txt", "is not a PyTorch checkpoint"),
                          (tmp_path / "empty.pt", "is not a PyTorch checkpoint"),
                          (tmp_path / "objects.pt", "objects other than tensors"),
                          (tmp_path / "no_weights.pt", "holds neither a state_dict"),
                          (tmp_path / "absent.pt", "no such file"), (tmp_path, "no such file")]:
        with pytest.raises(UsageError, match=message) as e:
            load_backbone(path)
        assert "\n" not in str(e.value)


def test_export_round_trip(released, tmp_path):
    path, enc = released
    out = tmp_path / "export" / "r18_torchvision.pth"
    export_torchvision(path, out)
    state = torch.load(out, weights_only=True)
    assert not any(k.startswith("fc.") for k in state)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    net.load_state_dict(state, strict=True)
    assert_same_features(net.eval(), lambda x: backbone_features(enc, x), 32)
