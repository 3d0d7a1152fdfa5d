"""The ten problems that running every documented command on real data once found, each kept as a regression
test (numbered as in that report). Those that need real images skip without ``../shared/data``; the
multi-protocol ones (2, 6, 7, 9) run in ``test_real_data.py``, with a data-free check here."""
from __future__ import annotations

import json

import pytest
from PIL import Image
from real_data import CIFAR10, cifar_tree, needs_cifar10, truncate_copy

from pcl_bench.cli import main
from pcl_bench.config import resolve
from pcl_bench.data import default_splits
from pcl_bench.eval.store import read_rows
from pcl_bench.methods import build_method

# Tiny real-data settings a user could pass: ResNet-18 on 20 images a class at the images' 32 px.
SMALL = ["--arch", "resnet18", "--subset-per-class", "20", "--batch-size", "16", "--workers", "0"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return cifar_tree(tmp_path_factory.mktemp("cifar"), {"train": 20, "test": 4})


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("pcl-bench: error")]) == 1, err
    return err[-1]


def test_1_r_defaults_to_the_queue_in_the_method():
    cfg = resolve({"method": "pcl_v2", "dataset": "imagefolder", "arch": "resnet18"})
    assert cfg.proto_negatives == cfg.queue == 16384
    assert build_method(cfg, 100).proto_loss.num_negatives == 16384


@needs_cifar10
def test_1_pcl_v2_without_proto_negatives_trains_past_the_warm_up(tree, tmp_path):
    """The paper's recipe without a preset reached ProtoNCE with r = None and crashed after warm-up."""
    assert main(["pretrain", "--method", "pcl_v2", "--dataset", "imagefolder", "--data-root", str(tree), *SMALL,
                 "--queue", "32", "--num-cluster", "60,100", "--warmup-epochs", "1", "--epochs", "2",
                 "--no-final-knn", "--out", str(tmp_path), "--name", "r"]) == 0
    last = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["kind"] == "epoch" and last["epoch"] == 1 and "loss_proto" in last


def test_2_imagefolder_splits_come_from_the_tree(tmp_path):
    for test in ("test", "val"):
        for split in ("train", test):
            (tmp_path / test / split / "a").mkdir(parents=True)
        assert default_splits("imagefolder", tmp_path / test) == ("train", test)
    assert default_splits("imagenet", None) == ("train", "val")


@needs_cifar10
def test_3_a_truncated_jpeg_is_named_or_skipped(tree, tmp_path, capsys):
    bad_tree = cifar_tree(tmp_path / "bad", {"train": 20, "test": 4})
    bad = truncate_copy(CIFAR10 / "train" / "cat" / "0003.jpg", bad_tree / "train" / "cat" / "0003.jpg")
    args = ["pretrain", "--method", "moco_v2", "--dataset", "imagefolder", "--data-root", str(bad_tree), *SMALL,
            "--queue", "32", "--epochs", "1", "--out", str(tmp_path / "runs"), "--name", "m"]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert f"unreadable image {bad}" in err and "--skip-corrupt" in err
    assert main([*args, "--overwrite", "--skip-corrupt", "--no-final-knn"]) == 0
    assert json.loads((tmp_path / "runs" / "m" / "skipped_images.json").read_text()) == {"train": [str(bad)]}
    store = tmp_path / "store.jsonl"
    evaluation = ["eval", "knn", "--dataset", "imagefolder", "--data-root", str(bad_tree), "--checkpoint",
                  "random:resnet18", "--results", str(store), "--workers", "0"]
    assert main(evaluation) == 2 and f"unreadable image {bad}" in one_line_error(capsys)
    assert not store.exists()
    assert main([*evaluation, "--skip-corrupt"]) == 0
    assert all(list(s) == [str(bad)] for s in read_rows(store)["skipped"])


def test_4_one_image_per_split_bn_sub_batch_is_a_usage_error(tmp_path, capsys):
    assert main(["pretrain", "--method", "moco_v2", "--batch-size", "8", "--bn-splits", "8", "--queue", "64",
                 "--out", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert "leaves 1 image per BatchNorm sub-batch" in err and "--bn-splits 4 or fewer" in err
    assert not (tmp_path / "moco_v2_shapes").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_5_a_run_killed_before_its_first_checkpoint_starts_afresh(tmp_path, capsys, resume):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"kind": "step", "epoch": 0, "step": 0}\n')
    args = ["pretrain", "--method", "moco_v2", "--subset-per-class", "8", "--batch-size", "16", "--queue", "32",
            "--bn-splits", "2", "--epochs", "1", "--workers", "0", "--no-final-knn", "--out", str(tmp_path),
            "--name", "run", *(["--resume"] if resume else [])]
    assert main(args) == 0
    assert (run / "last.pt").exists() and "starting it afresh" in capsys.readouterr().err
    (run / "notes.txt").write_text("mine")  # a folder with other files is never cleared
    (run / "last.pt").unlink()
    assert main(args) == 2


def test_8_a_missing_split_stops_before_any_feature_is_extracted(tmp_path, capsys, monkeypatch):
    for split in ("train", "test"):
        (tmp_path / "tree" / split / "a").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "tree" / split / "a" / "0.png")
    monkeypatch.setenv("PCL_BENCH_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "knn", "--dataset", "imagefolder", "--data-root", str(tmp_path / "tree"),
                 "--test-split", "val", "--checkpoint", "random:resnet18", "--results",
                 str(tmp_path / "store.jsonl")]) == 2
    assert "has no val/ folder" in one_line_error(capsys)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("flags, message", [
    (["--num-cluster", "16,32", "--batch-size", "16"], "leaves no cluster free of a batch of 16"),
    (["--proto-negatives", "40", "--num-cluster", "32,64", "--batch-size", "16"], "use --proto-negatives 16 or less"),
])
def test_10_impossible_proto_negatives_name_a_possible_fix(tmp_path, capsys, flags, message):
    assert main(["pretrain", "--method", "pcl_v2", "--subset-per-class", "8", "--queue", "32", "--out",
                 str(tmp_path), *flags]) == 2
    err = one_line_error(capsys)
    assert message in err and "<= -" not in err
