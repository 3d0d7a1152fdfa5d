"""The real-data tier: every method and every protocol on real images in the layouts users bring (CIFAR-10 as
an ImageFolder with train/test and with train/val, PASCAL VOC2007, a Places205 tree), then the report.

Each pretraining method runs its paper defaults, changed only by flags a user would pass, through ``--smoke``
(a warm-up epoch, a checkpoint, a resume, an E-step and ProtoNCE steps where the method clusters, the final
kNN). Skipped where ``../shared/data`` is absent (see ``real_data.py``).
"""
from __future__ import annotations

import json

import pytest
from real_data import VOC_MINI, cifar_tree, needs_cifar10, needs_voc, places_tree

from pcl_bench.cli import main
from pcl_bench.eval.store import read_rows

METHODS = ["pcl", "pcl_v2", "moco", "moco_v2", "instdisc", "simclr", "clop", "supcon", "supcon_clop"]
LABELLED = {"clop", "supcon", "supcon_clop"}


@pytest.fixture(scope="module")
def train_test(tmp_path_factory):
    """30 training and 10 test images of each CIFAR-10 class, in train/ and test/."""
    return cifar_tree(tmp_path_factory.mktemp("cifar_train_test"), {"train": 30, "test": 10})


@pytest.fixture(scope="module")
def train_val(tmp_path_factory):
    """The same images with the test split named val/."""
    return cifar_tree(tmp_path_factory.mktemp("cifar_train_val"), {"train": 30, "val": 10})


def records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@needs_cifar10
@pytest.mark.parametrize("method", METHODS)
def test_every_method_smoke_runs_on_real_images(method, train_test, tmp_path, capsys):
    """Paper defaults (queue 16384, K = 25000,50000,100000, r = --queue ...) with the batch, K and r and labels
    a user would pass; --smoke fits what 256 images cannot hold and runs every phase. pcl_v2 keeps the paper's
    ResNet-50; the others train a ResNet-18, as a user of a small machine would (a third of the time). moco_v2
    holds the decoded JPEGs on the device and augments them in batches (--aug-backend tensor)."""
    args = ["pretrain", "--method", method, "--dataset", "imagefolder", "--data-root", str(train_test),
            "--batch-size", "32", "--num-cluster", "100,200,250", "--proto-negatives", "64", "--workers", "0",
            "--out", str(tmp_path), "--smoke", *([] if method == "pcl_v2" else ["--arch", "resnet18"]),
            *(["--label-fraction", "0.5"] if method in LABELLED else []),
            *(["--aug-backend", "tensor"] if method == "moco_v2" else [])]  # JPEG files batched on the device
    assert main(args) == 0, capsys.readouterr().err
    run = tmp_path / f"{method}_imagefolder-smoke"
    epochs = records(run, "epoch")
    assert [e["epoch"] for e in epochs] == [0, 1]
    if method in ("pcl", "pcl_v2"):
        (cluster,) = records(run, "cluster")
        assert cluster["epoch"] == 1 and "acc_proto" in epochs[1] and "acc_proto" not in epochs[0]
    knn = json.loads((run / "knn.json").read_text())["knn"]
    assert knn["split"] == "test" and {"random_init", method} <= set(knn)
    out = capsys.readouterr().out
    assert "smoke run passed" in out


@needs_cifar10
@pytest.mark.parametrize("layout", ["train_test", "train_val"])
def test_eval_all_on_imagefolder_trees(layout, request, tmp_path, capsys):
    """Every protocol of an ImageFolder dataset on both split namings, at the images' own 32 px."""
    tree, store = request.getfixturevalue(layout), tmp_path / "store.jsonl"
    assert main(["eval", "all", "--dataset", "imagefolder", "--data-root", str(tree), "--checkpoint",
                 "random:resnet18", "--results", str(store), "--workers", "0"]) == 0, capsys.readouterr().err
    rows = read_rows(store)
    assert set(rows["protocol"]) == {"lowshot", "linear", "knn", "semisup", "ami"}
    test = layout.split("_")[1]
    assert set(rows[rows["protocol"] != "ami"]["test_split"]) == {test}
    assert {p["image_size"] for p in rows["params"]} == {32}


@needs_voc
@pytest.mark.parametrize("variant", ["pcl", pytest.param("goyal", marks=pytest.mark.slow)])  # goyal: 40 s of CV
def test_voc07_lowshot_on_real_voc(variant, tmp_path, capsys):
    """Both low-shot variants on real VOC2007 train -> val: per-class AP printed and stored, k limited by the
    rarest class."""
    store = tmp_path / "store.jsonl"
    assert main(["eval", "lowshot", "--dataset", "voc07", "--data-root", str(VOC_MINI), "--train-split", "train",
                 "--test-split", "val", "--checkpoint", "random:resnet18", "--variant", variant,
                 "--image-size", "64", "--runs", "1", "--results", str(store), "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "per-class AP" in captured.out and "aeroplane" in captured.out and "mAP" in captured.out
    rows = read_rows(store)
    per_class = rows[rows["class"] != ""]
    assert len(set(per_class["class"])) == 20 and (per_class["metric"] == "AP").all()
    assert set(rows["setting"]) >= {"k=1", "k=2"} and "k=96" not in set(rows["setting"])
    assert "left out" in captured.err


@needs_voc
def test_voc07_detection_short_run(tmp_path, capsys):
    """Detection on real VOC2007 train -> val with an iteration cap, training subset and training size."""
    store = tmp_path / "store.jsonl"
    assert main(["eval", "detection", "--dataset", "voc07", "--data-root", str(VOC_MINI), "--train-split", "train",
                 "--test-split", "val", "--checkpoint", "random:resnet18", "--variant", "short", "--max-iters", "2",
                 "--train-subset", "16", "--test-subset", "8", "--image-size", "96", "--train-sizes", "96",
                 "--results", str(store), "--workers", "0"]) == 0, capsys.readouterr().err
    rows = read_rows(store)
    main_rows = rows[rows["class"] == ""]
    assert set(main_rows["metric"]) == {"mAP", "mAP_allpoint"}
    assert (rows["train_split"] == "train").all() and (rows["test_split"] == "val").all()
    assert rows["params"].iloc[0]["max_iters"] == 2 and rows["params"].iloc[0]["train_sizes"] == [96]
    log = next((tmp_path / "logs").glob("detection_voc07_train-val_*")) / "seed0" / "metrics.jsonl"
    steps = [r for r in map(json.loads, log.read_text().splitlines()) if r["kind"] == "step"]
    assert max(r["step"] for r in steps) <= 1


@needs_cifar10
def test_places205_layout_protocols(tmp_path, capsys):
    """The Places205 layout (split lists, category folders) through every protocol that lists it."""
    root, store = places_tree(tmp_path / "places", train=8, val=4), tmp_path / "store.jsonl"
    assert main(["eval", "all", "--dataset", "places205", "--data-root", str(root), "--checkpoint",
                 "random:resnet18", "--image-size", "32", "--results", str(store), "--workers", "0"]) == 0
    rows = read_rows(store)
    assert set(rows["protocol"]) == {"lowshot", "linear", "knn"}
    assert set(rows["train_split"]) == {"train"} and set(rows["test_split"]) == {"val"}


@needs_cifar10
@needs_voc
def test_report_on_real_rows(train_test, tmp_path, capsys):
    """The report of real rows: split and image-size columns, per-class tables, and the † mark on a VOC07 row
    whose arch, splits and size differ from the paper's."""
    store, out = tmp_path / "store.jsonl", tmp_path / "report"
    assert main(["eval", "lowshot", "--dataset", "voc07", "--data-root", str(VOC_MINI), "--train-split", "train",
                 "--test-split", "val", "--checkpoint", "random:resnet18", "--image-size", "64", "--ks", "1,2",
                 "--runs", "2", "--results", str(store), "--workers", "0"]) == 0
    assert main(["eval", "knn", "--dataset", "imagefolder", "--data-root", str(train_test), "--checkpoint",
                 "random:resnet18", "--results", str(store), "--workers", "0"]) == 0
    assert main(["report", "--results", str(store), "--out", str(out), "--runs", str(tmp_path / "none")]) == 0
    table1 = (out / "table1_lowshot.csv").read_text().splitlines()
    voc = next(line for line in table1 if line.startswith("measured,random init"))
    assert "train→val" in voc and ",64," in voc and "† ResNet-18 (paper ResNet-50)" in voc
    assert ",2," in voc  # n: the k settings' runs; 'full' is one fit and no longer shows as "0/1" or "2/1"
    per_class = (out / "table1_lowshot_per_class.csv").read_text()
    assert "aeroplane" in per_class and "tvmonitor" in per_class
    knn = (out / "table4_knn.csv").read_text()
    assert "train→test" in knn and "†" not in knn  # no paper row on imagefolder to differ from
