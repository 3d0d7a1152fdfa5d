"""Detection transfer: VOC metrics on hand-computed detections, the frozen detector, exact resume, and the CLI
end to end on tiny shapes-voc and VOC07+12 trees, with its one-line errors."""
from __future__ import annotations

import json

import pytest
import torch
from fixtures_voc import VOC2007_SPLITS, VOC2012_SPLITS, write_voc
from torch import nn

from pcl_bench.cli import main
from pcl_bench.data import shapes_voc
from pcl_bench.eval import detection as D
from pcl_bench.eval import specs as S
from pcl_bench.eval.store import read_rows
from pcl_bench.models.encoders import build_encoder
from pcl_bench.runtime.errors import UsageError

# Tiny settings: 64 px, one iteration per epoch on 8 images, few proposals.
TINY = {"epochs": 1, "milestones": [1], "batch_size": 8, "warmup_iters": 2, "image_size": 64,
        "train_sizes": [], "anchor_sizes": [8, 16, 32, 64, 128], "proposals_train": 50, "proposals_test": 20,
        "rois_per_image": 16}


def tiny_spec(tmp_path, datasets: list[str], **settings) -> str:
    """A protocol spec file for ``datasets`` with :data:`TINY` settings (and ``settings``)."""
    values = {"protocol": "detection", "datasets": datasets, "runs": 1, "seed": 0, **TINY, **settings}
    path = tmp_path / "tiny_detection.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return str(path)


@pytest.fixture
def tiny_shapes_voc(monkeypatch):
    monkeypatch.setattr(shapes_voc, "DEFAULT_SIZES", {"trainval": 16, "test": 8})


# ------------------------------------------------------------------------------------------------- metrics


def target(image_id, boxes, labels, difficult):
    return {"image_id": image_id, "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "difficult": torch.tensor(difficult, dtype=torch.bool)}


def prediction(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores), "labels": torch.tensor(labels, dtype=torch.int64)}


def test_metrics_on_hand_computed_detections():
    """Boxes 0-based, x2/y2 exclusive (torchvision), classes 1 circle, 2 square, 3 star.

    circle (2 non-difficult gts): b 0.95 TP (IoU 90/110), c 0.92 FP (no circle in c), a 0.9 TP, a 0.8
    duplicate FP, a 0.7 on a difficult gt (ignored). T F T F: recall 1/2 1/2 1 1, precision 1 1/2 2/3 1/2.
    All-point 1/2 * 1 + 1/2 * 2/3 = 5/6; 11-point (6 * 1 + 5 * 2/3) / 11 = 28/33.
    square (1 gt, 10x10 px): 0.6 covers 10x4.5 px -> IoU 0.45, FP (read as inclusive boxes without the
    conversion it would be 11x5.5 / 121 = 0.5, a TP); 0.5 TP. F T: AP 1/2 either way.
    star: only a difficult gt, so left out.
    """
    targets = [target("a", [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 1, 2],
                      [False, True, False]),
               target("b", [[0, 0, 10, 10], [60, 60, 70, 70]], [1, 3], [False, True]),
               target("c", [], [], [])]
    predictions = [prediction([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 44.5],
                               [40, 40, 50, 50]], [0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 1, 2, 2]),
                   prediction([[1, 0, 11, 10], [60, 60, 70, 70]], [0.95, 0.99], [1, 3]),
                   prediction([[0, 0, 10, 10]], [0.92], [1])]
    m = D.voc_detection_metrics(predictions, targets, ["circle", "square", "star"])
    assert m["ap"] == pytest.approx({"circle": 500 / 6, "square": 50.0})
    assert m["ap11"] == pytest.approx({"circle": 2800 / 33, "square": 50.0})
    assert m["mAP"] == pytest.approx((2800 / 33 + 50) / 2)
    assert m["mAP_allpoint"] == pytest.approx((500 / 6 + 50) / 2)
    assert m["no_objects"] == ["star"]
    with pytest.raises(UsageError, match="no non-difficult object"):
        D.voc_detection_metrics([prediction([], [], [])], [target("d", [[0, 0, 5, 5]], [1], [True])],
                                ["circle"])


def test_flip_and_learning_rate():
    image = torch.arange(30.0).reshape(1, 3, 10)
    flipped, boxes = D.hflip(image, torch.tensor([[2.0, 0, 5, 3]]))
    assert boxes.tolist() == [[5, 0, 8, 3]] and flipped[0, 0].tolist() == list(range(9, -1, -1))
    assert D.hflip(*D.hflip(image, boxes))[1].tolist() == boxes.tolist()
    cfg = D.DetectionConfig(warmup_iters=100, lr=0.05)
    assert D.learning_rate(cfg, 0, 0) == pytest.approx(0.05 * 0.001)
    assert D.learning_rate(cfg, 0, 50) == pytest.approx(0.05 * (0.001 + 0.999 / 2))
    assert D.learning_rate(cfg, 11, 5000) == pytest.approx(0.05)
    assert D.learning_rate(cfg, 12, 5000) == pytest.approx(0.005)


# ------------------------------------------------------------------------------------------------- model


def test_detector_freezes_every_backbone_layer(one_thread):
    torch.manual_seed(0)
    net = build_encoder("resnet18")
    net.fc = nn.Identity()
    for m in net.modules():  # non-trivial statistics, to see that they are carried over
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2)
    net.eval()
    model = D.build_detector(net, 3, D.DetectionConfig(**TINY))
    body = model.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert not any(p.requires_grad for p in body.parameters())
    trainable = {name.split(".")[0] + "." + name.split(".")[1] for name, p in model.named_parameters()
                 if p.requires_grad}
    assert trainable == {"backbone.fpn", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor"}
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        expected = net.layer4(net.layer3(net.layer2(net.layer1(stem))))
        torch.testing.assert_close(body(x)["3"], expected, rtol=1e-4, atol=1e-4)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    assert not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    normed = D.build_detector(net, 3, D.DetectionConfig(**TINY, fpn_norm=True))
    assert sum(isinstance(m, nn.GroupNorm) for m in normed.backbone.fpn.modules()) == 8  # 4 lateral, 4 3x3
    assert not any(isinstance(m, nn.GroupNorm) for m in normed.backbone.body.modules())


def test_resume_is_exact(tmp_path, tiny_shapes_voc, one_thread):
    """Two epochs in one go == one epoch, then a new process-like start that resumes from last.pt."""
    train = D.detection_split("shapes-voc", None, "trainval", training=True)
    net = build_encoder("resnet18")
    net.fc = nn.Identity()
    cfg2 = D.DetectionConfig(**{**TINY, "epochs": 2, "milestones": [1]})
    cfg1 = D.DetectionConfig(**{**TINY, "epochs": 1, "milestones": [1]})

    def trained(cfg, run_dir, seed):
        torch.manual_seed(seed)  # a resumed run starts from other head weights, then loads last.pt
        model = D.build_detector(net.eval(), len(train.classes), cfg)
        D.train_detector(model, train, cfg, run_dir, torch.device("cpu"), workers=0)
        return {k: v for k, v in model.state_dict().items() if not k.startswith(D.FROZEN)}

    straight = trained(cfg2, tmp_path / "straight", 0)
    trained(cfg1, tmp_path / "resumed", 0)
    resumed = trained(cfg2, tmp_path / "resumed", 1)
    assert straight.keys() == resumed.keys()
    for k in straight:
        torch.testing.assert_close(straight[k], resumed[k], rtol=0, atol=0, msg=k)
    epochs = (tmp_path / "resumed" / "epochs.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in epochs[1:]] == ["0", "1"]


# ------------------------------------------------------------------------------------------------- CLI


def test_paper_specs():
    for dataset, name in (("voc07", "detection_voc07.toml"), ("voc07+12", "detection_voc0712.toml")):
        path = S.find_spec("detection", dataset)
        assert path.name == name
        spec = S.resolve_spec(path, dataset, None, {})
        assert D.DetectionConfig.from_spec(spec) == D.DetectionConfig()  # the spec is the paper's recipe
        recipe = ("runs", "epochs", "milestones", "lr", "batch_size", "momentum", "weight_decay")
        assert [spec[k] for k in recipe] == [3, 15, [12], 0.05, 8, 0.9, 1e-4]
        assert S.paper_setup("detection", dataset)["arch"] == "resnet50"
    assert S.find_spec("detection", "shapes-voc").name == "detection_shapes_voc.toml"


def test_datasets():
    with pytest.raises(UsageError, match="--data-root is required for voc07"):
        D.detection_split("voc07", None, "trainval", training=True)
    with pytest.raises(UsageError, match="detection runs on voc07, voc07\\+12, shapes-voc"):
        D.detection_split("shapes", None, "train", training=True)


def test_cli_shapes_voc_end_to_end(tmp_path, tiny_shapes_voc, capsys, one_thread):
    store = tmp_path / "results" / "store.jsonl"
    args = ["eval", "detection", "--dataset", "shapes-voc", "--checkpoint", "random:resnet18", "--results",
            str(store), "--workers", "0", "--epochs", "1", "--runs", "2"]  # the shipped spec, shortened
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = read_rows(store)
    per_class, rows = rows[rows["class"] != ""], rows[rows["class"] == ""]
    assert set(per_class["metric"]) == {"AP"} and set(per_class["class"]) <= set(shapes_voc.CLASSES)
    assert "per-class AP (detection)" in out
    assert list(rows["metric"]) == ["mAP", "mAP_allpoint"] and (rows["protocol"] == "detection").all()
    assert (rows["n_runs"] == 2).all() and [list(s) for s in rows["seeds"]] == [[0, 1], [0, 1]]
    assert ((rows["mean"] >= 0) & (rows["mean"] <= 100)).all()
    assert (rows["train_split"] == "trainval").all() and (rows["test_split"] == "test").all()
    [log_dir] = (tmp_path / "results" / "logs").glob("detection_shapes-voc_*")
    for seed in (0, 1):
        run = log_dir / f"seed{seed}"
        files = {p.name for p in run.iterdir()}
        assert {"config.json", "last.pt", "eval.json", "metrics.jsonl", "epochs.csv"} <= files
        assert json.loads((run / "eval.json").read_text())["seed"] == seed
    per_class = (log_dir / "ap_per_class.csv").read_text().splitlines()
    assert per_class[0].startswith("class,ap11_mean")

    stamp = (log_dir / "seed0" / "last.pt").stat().st_mtime_ns  # run again: the finished runs are reused
    assert main(args) == 0
    again = read_rows(store)
    again = again[again["class"] == ""]
    assert len(again) == 4 and list(again["mean"][2:]) == list(again["mean"][:2])
    assert (log_dir / "seed0" / "last.pt").stat().st_mtime_ns == stamp


def test_cli_voc0712_end_to_end(tmp_path, one_thread):
    """``--dataset voc07+12 --data-root <VOCdevkit>``: both years' trainval for training, VOC2007 test."""
    devkit = tmp_path / "VOCdevkit"
    write_voc(devkit, "2007")
    write_voc(devkit, "2012")
    train = D.detection_split("voc07+12", str(devkit), "trainval", training=True)
    test = D.detection_split("voc07+12", str(devkit), "test", training=False)
    assert train.image_ids == VOC2007_SPLITS["trainval"] + VOC2012_SPLITS["trainval"]
    assert test.image_ids == VOC2007_SPLITS["test"]
    store = tmp_path / "store.jsonl"
    assert main(["eval", "detection", "--dataset", "voc07+12", "--data-root", str(devkit), "--checkpoint",
                 "random:resnet50", "--results", str(store), "--workers", "0", "--spec",
                 tiny_spec(tmp_path, ["voc07+12"], image_size=32)]) == 0
    rows = read_rows(store)
    rows = rows[rows["class"] == ""]
    assert list(rows["dataset"]) == ["voc07+12"] * 2 and list(rows["arch"]) == ["resnet50"] * 2
    [log_dir] = (tmp_path / "logs").glob("detection_voc07+12_*")
    assert json.loads((log_dir / "seed0" / "eval.json").read_text())["ap11"].keys() == {"bicycle", "car"}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_wrong_data_root_fails_and_writes_nothing(tmp_path, capsys):
    store = tmp_path / "store.jsonl"
    code = main(["eval", "detection", "--dataset", "voc07", "--data-root", str(tmp_path / "nowhere"),
                 "--checkpoint", "random:resnet50", "--results", str(store)])
    err = one_line_error(capsys)
    assert code == 2 and "nowhere does not exist" in err and "Annotations" in err
    assert list(tmp_path.iterdir()) == []
