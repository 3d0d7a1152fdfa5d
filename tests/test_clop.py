"""CLOP: orthonormal prototypes, the prototype term, semi-supervised SupCon, and tiny runs through the CLI."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_pretrain import TINY, records

from pcl_bench.cli import main
from pcl_bench.data import shapes
from pcl_bench.data.subsets import load_subset
from pcl_bench.losses import NTXent
from pcl_bench.losses.clop import CLOPLoss, orthonormal_prototypes
from pcl_bench.losses.supcon import SemiSupCon
from pcl_bench.methods import METHODS
from pcl_bench.methods.clop import CLOPTerm, with_clop
from pcl_bench.runtime.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def small_shapes(monkeypatch):
    """Small generated `shapes` splits (12 train, 10 test images per class): every run takes seconds."""
    monkeypatch.setitem(shapes.DEFAULT_PER_CLASS, "train", 12)
    monkeypatch.setitem(shapes.DEFAULT_PER_CLASS, "test", 10)

# ---------------------------------------------------------------------------------------------- prototypes


def test_prototypes_are_orthonormal_and_seeded():
    c = orthonormal_prototypes(10, 32, seed=3)
    assert c.shape == (10, 32) and c.dtype == torch.float32
    torch.testing.assert_close(c @ c.T, torch.eye(10), atol=1e-6, rtol=0)
    assert torch.equal(c, orthonormal_prototypes(10, 32, seed=3))
    assert not torch.allclose(c, orthonormal_prototypes(10, 32, seed=4))
    torch.testing.assert_close(orthonormal_prototypes(5, 5, seed=0) @ orthonormal_prototypes(5, 5, seed=0).T,
                               torch.eye(5), atol=1e-6, rtol=0)  # k = d is a full orthonormal basis


def test_prototypes_identical_across_processes(tmp_path):
    """Another process, with another global RNG state, draws bit-identical prototypes (as DDP ranks must)."""
    code = ("import sys, torch; from pcl_bench.losses.clop import orthonormal_prototypes; "
            "torch.manual_seed(123); torch.rand(7); "
            "torch.save(orthonormal_prototypes(10, 32, seed=3), sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "other.pt")], check=True, timeout=120)
    torch.rand(3)
    assert torch.equal(torch.load(tmp_path / "other.pt"), orthonormal_prototypes(10, 32, seed=3))


def test_more_classes_than_dimensions_is_a_usage_error():
    with pytest.raises(UsageError, match="--dim >= 1000.*--dim 1024"):
        orthonormal_prototypes(1000, 128)


# ---------------------------------------------------------------------------------------------- the term


def test_clop_loss_hand_example():
    """lambda * mean over labelled samples of 1 - (cos(z1, c_y) + cos(z2, c_y)) / 2; unlabelled rows add 0."""
    protos = torch.eye(2, 3)  # c_0 = e_x, c_1 = e_y
    z1 = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    z2 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 2.0, 0.0]])
    labels = torch.tensor([0, 1, -1])
    # sample 0: cos 1 and 0 -> 0.5; sample 1: cos 1/sqrt(2) and 0 -> 1 - 1/(2 sqrt(2))
    expected = 2.0 * (0.5 + 1 - 1 / (2 * math.sqrt(2))) / 2
    assert CLOPLoss(protos, weight=2.0)([z1, z2], labels).item() == pytest.approx(expected, rel=1e-6)


def test_gradient_is_zero_at_the_prototype():
    protos = orthonormal_prototypes(4, 8, seed=0)
    labels = torch.tensor([2, 0, 3])
    z = (protos[labels] * torch.tensor([[1.0], [3.0], [0.5]])).requires_grad_()  # any positive scale
    loss = CLOPLoss(protos)([z, z], labels)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert z.grad.abs().max().item() < 1e-6
    off = torch.randn(3, 8, requires_grad=True)  # away from the prototypes the pull is non-zero
    CLOPLoss(protos)([off], labels).backward()
    assert off.grad.abs().max().item() > 1e-3


def test_unlabelled_samples_contribute_nothing():
    protos = orthonormal_prototypes(3, 6, seed=1)
    labels = torch.tensor([1, -1, 0, -1])
    z = torch.randn(4, 6, requires_grad=True)
    loss = CLOPLoss(protos)([z], labels)
    loss.backward()
    assert torch.equal(z.grad[labels < 0], torch.zeros(2, 6))
    moved = z.detach().clone()
    moved[labels < 0] = torch.randn(2, 6) * 10
    assert CLOPLoss(protos)([moved], labels).item() == pytest.approx(loss.item(), rel=1e-6)
    assert CLOPLoss(protos)([z], torch.full((4,), -1)).item() == 0.0  # a batch without labels


# ---------------------------------------------------------------------------------------------- SupCon


def supcon_by_hand(z1, z2, labels, tau):
    """L_out SupCon over 2B views, anchor by anchor: positives are the other view and, for a labelled anchor,
    both views of every other image of its class."""
    z, y = torch.cat([z1, z2]), labels.repeat(2)
    b, total = z1.shape[0], 0.0
    for a in range(2 * b):
        others = [j for j in range(2 * b) if j != a]
        denom = sum(math.exp(z[a] @ z[j] / tau) for j in others)
        pos = [j for j in others if j == (a + b) % (2 * b) or (y[a] >= 0 and y[j] == y[a])]
        total += -sum(math.log(math.exp(z[a] @ z[p] / tau) / denom) for p in pos) / len(pos)
    return total / (2 * b)


def test_semi_supcon_matches_hand_computation_and_reduces_to_ntxent():
    g = torch.Generator().manual_seed(0)
    z1, z2 = (F.normalize(torch.randn(5, 4, generator=g), dim=1) for _ in range(2))
    labels = torch.tensor([0, 1, 0, -1, 0])
    loss, _, _ = SemiSupCon(0.5)(z1, z2, labels)
    assert loss.item() == pytest.approx(supcon_by_hand(z1, z2, labels, 0.5), rel=1e-5)
    unlabelled = torch.full((5,), -1)
    ntxent = NTXent(0.5)(z1, z2)[0].item()
    assert SemiSupCon(0.5)(z1, z2, unlabelled)[0].item() == pytest.approx(ntxent, rel=1e-6)


def test_with_clop_mixes_the_term_into_any_method():
    assert issubclass(METHODS["clop"], CLOPTerm) and METHODS["clop"].uses_labels
    moco_clop = with_clop(METHODS["moco_v2"])
    assert issubclass(moco_clop, METHODS["moco_v2"]) and with_clop(moco_clop) is moco_clop
    assert with_clop(METHODS["moco_v2"]) is moco_clop  # one class per method


# ---------------------------------------------------------------------------------------------- end to end


def run_cli(tmp_path, *args, name="run"):
    return main(["pretrain", *TINY, "--out", str(tmp_path), "--name", name, "--no-final-knn", *args])


def test_clop_pretraining_saves_subset_and_prototypes(tmp_path):
    assert run_cli(tmp_path, "--method", "clop", "--label-fraction", "0.1", "--epochs", "1") == 0
    run = tmp_path / "run"
    (epoch,) = records(run, "epoch")
    assert epoch["loss_clop"] > 0 and epoch["loss"] > epoch["loss_clop"]
    indices, meta = load_subset(run / "label_subset.json", 120)  # the semi-supervised evaluation's format
    assert len(indices) == 10 and meta["balanced"] is True and meta["fraction"] == 0.1  # 1 of 12 per class
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["state_dict"]["clop_loss.prototypes"].shape == (10, 128)
    assert "labels" not in ckpt["state_dict"]  # rebuilt from label_subset.json on resume
    assert json.loads((run / "config.json").read_text())["label_fraction"] == 0.1


@pytest.mark.parametrize("args", [["--method", "pcl_v2", "--clop", "--epochs", "2"],
                                  ["--method", "supcon_clop", "--no-label-balanced", "--epochs", "1"]])
def test_clop_add_on_and_supcon_train(tmp_path, args):
    """--clop on pcl_v2 trains InfoNCE (+ ProtoNCE after warm-up) + CLOP; supcon_clop on a uniform subset."""
    assert run_cli(tmp_path, "--label-fraction", "0.1", *args) == 0
    epochs = records(tmp_path / "run", "epoch")
    assert all(e["loss_clop"] >= 0 for e in epochs)
    if "pcl_v2" in args:
        assert "acc_proto" in epochs[-1]
    indices, meta = load_subset(tmp_path / "run" / "label_subset.json", 120)
    balanced = "supcon_clop" not in args
    assert meta["balanced"] is balanced
    assert len(indices) == (10 if balanced else 12)  # 1 per class, or 10% of 120


@pytest.mark.parametrize("args, message", [
    (["--method", "clop"], "--method clop trains with labels; pass --label-fraction"),
    (["--method", "moco_v2", "--clop"], "--method moco_v2 --clop trains with labels"),
    (["--method", "simclr", "--label-fraction", "0.1"], "--label-fraction applies only"),
    (["--method", "clop", "--label-fraction", "1.5"], "must be in (0, 1]"),
    (["--method", "clop", "--label-fraction", "0.1", "--dim", "8"], "--dim >= 10"),
])
def test_label_and_dimension_errors(tmp_path, capsys, args, message):
    assert run_cli(tmp_path, "--epochs", "1", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # checked before the run folder is made


def test_resumed_clop_run_is_exact(tmp_path):
    """Labels come back from label_subset.json, prototypes from the checkpoint: 1 + 1 epochs == 2 epochs."""
    args = ["--method", "clop", "--label-fraction", "0.2", "--subset-per-class", "4"]  # 40 images: 2 steps
    assert run_cli(tmp_path, *args, "--epochs", "2", name="straight") == 0
    assert run_cli(tmp_path, *args, "--epochs", "1", name="resumed") == 0
    assert run_cli(tmp_path, *args, "--epochs", "2", "--resume", name="resumed") == 0
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=False)["state_dict"]
            for n in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert np.isclose(records(tmp_path / "straight", "epoch")[1]["loss_clop"],
                      records(tmp_path / "resumed", "epoch")[1]["loss_clop"])
