"""PASCAL VOC loaders (class lists, annotations, detection targets) on fixtures in the real format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import usage_error
from fixtures_voc import VOC2007_SPLITS, VOC2012_SPLITS, VocObject, colour, image_size, write_voc
from PIL import Image

from pcl_bench.data import DATASETS, build_dataset
from pcl_bench.data.voc import (
    VOC_CLASSES,
    VOCClassification,
    VOCDetection,
    parse_annotation,
    voc0712_trainval,
)


@pytest.fixture
def devkit(tmp_path):
    """A VOCdevkit with the VOC2007 and VOC2012 samples; returns (path, {year: {split: targets}})."""
    path = tmp_path / "VOCdevkit"
    return path, {"2007": write_voc(path, "2007"), "2012": write_voc(path, "2012")}


def test_parse_annotation_reads_objects_not_parts(devkit):
    path, _ = devkit
    ann = parse_annotation(path / "VOC2007" / "Annotations" / "000005.xml")
    assert ann["filename"] == "000005.jpg" and (ann["width"], ann["height"]) == image_size("000005")
    assert ann["names"] == ["chair", "chair", "person"]  # the <part> "head" is not an object
    assert ann["labels"].dtype == np.int64 and ann["labels"].tolist() == [8, 8, 14]
    assert ann["boxes"].dtype == np.float32 and ann["boxes"].shape == (3, 4)
    assert ann["boxes"].tolist() == [[263, 211, 324, 339], [5.5, 244, 67, 374], [48, 240, 195, 371]]
    assert ann["difficult"].dtype == bool and ann["difficult"].tolist() == [False, True, False]
    missing = parse_annotation(path / "VOC2007" / "Annotations" / "000009.xml")
    assert missing["difficult"].tolist() == [False, False]  # no <difficult> element means 0


def test_parse_annotation_errors(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><size><width>3</width>")
    usage_error("not a readable VOC annotation", parse_annotation, bad)
    bad.write_text("<annotation><size><width>3</width><height>2</height></size>"
                   "<object><name>unicorn</name></object></annotation>")  # fmt: skip
    usage_error("'unicorn' is not one of the 20 classes", parse_annotation, bad)


def test_classification_targets_and_items(devkit):
    path, written = devkit
    ds = VOCClassification(path, "trainval")
    assert ds.classes == VOC_CLASSES and ds.image_size is None
    assert ds.image_ids == VOC2007_SPLITS["trainval"]
    assert ds.targets.dtype == np.int8 and ds.targets.shape == (4, 20)
    assert (ds.targets == written["2007"]["trainval"]).all()
    row = dict(zip(VOC_CLASSES, ds.targets[0].tolist()))  # 000005: chairs (one difficult) and a person
    assert row["chair"] == 1 and row["person"] == 1 and row["car"] == -1 and sum(ds.targets[0] == 1) == 2
    car = VOC_CLASSES.index("car")
    assert ds.targets[ds.image_ids.index("000012"), car] == 0  # present only as a difficult object
    listed = (path / "VOC2007" / "ImageSets" / "Main" / "chair_trainval.txt").read_text()
    assert "000005  1\n" in listed and "000009 -1\n" in listed  # the real two-character label field

    img, target, index = ds[1]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == image_size("000009")
    assert np.abs(np.asarray(img, int) - colour("000009")).max() <= 3
    assert target.dtype == torch.int8 and target.tolist() == ds.targets[1].tolist() and index == 1
    tensor, _, _ = VOCClassification(path, "test", transform=lambda im: torch.zeros(im.size))[0]
    assert tensor.shape == image_size("000007")


@pytest.mark.parametrize("where", ["devkit", "year folder", "parent"])
def test_classification_root_may_be_devkit_year_folder_or_parent(devkit, where):
    path, _ = devkit
    root = {"devkit": path, "year folder": path / "VOC2012", "parent": path.parent}[where]
    ds = VOCClassification(root, "val", year="2012")
    assert ds.image_ids == VOC2012_SPLITS["val"] and ds.base == path / "VOC2012"


def test_class_discovery_order_and_choice(tmp_path):
    objects = {
        "000001": [VocObject("dog", ("1", "1", "5", "5"))],
        "000002": [VocObject("bird", ("1", "1", "3", "3"))],
    }
    written = write_voc(
        tmp_path, "2007", objects, {"test": ["000002", "000001"]}, classes=["dog", "cat", "bird"]
    )
    ds = VOCClassification(tmp_path, "test")
    assert ds.classes == ["bird", "cat", "dog"]  # sorted list-file prefixes (VOC's canonical order)
    assert ds.targets.tolist() == [[1, -1, -1], [-1, -1, 1]]
    chosen = VOCClassification(tmp_path, "test", classes=["dog", "bird"])
    assert (
        chosen.classes == ["dog", "bird"] and chosen.targets.tolist() == written["test"][:, [0, 2]].tolist()
    )
    usage_error(
        "has no ImageSets/Main/horse_test.txt", VOCClassification, tmp_path, "test", classes=["horse"]
    )


def test_class_lists_must_agree(devkit):
    path, _ = devkit
    main = path / "VOC2007" / "ImageSets" / "Main"
    lines = (main / "dog_trainval.txt").read_text().splitlines()
    (main / "dog_trainval.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    msg = usage_error("dog_trainval.txt lists other ids (or another order) than aeroplane_trainval.txt",
                      VOCClassification, path, "trainval")  # fmt: skip
    assert "expected <root>/VOC2007/ImageSets/Main/" in msg
    (main / "dog_trainval.txt").write_text("000005 2\n")
    usage_error("dog_trainval.txt:1 is '000005 2', not '<id> <label>'", VOCClassification, path, "trainval")


def test_layout_errors_are_one_line_and_name_the_layout(devkit, tmp_path):
    path, _ = devkit
    layout = "expected <root>/VOC2007/ImageSets/Main/{<split>,<class>_<split>}.txt, JPEGImages/<id>.jpg"
    assert layout in usage_error("does not exist", VOCClassification, tmp_path / "nope", "test")
    (tmp_path / "empty").mkdir()
    assert layout in usage_error(
        "has no VOC2007/ImageSets/Main/ folder", VOCClassification, tmp_path / "empty", "test"
    )
    # A VOC2012 folder is not taken for VOC2007.
    usage_error("has no VOC2007/ImageSets/Main/ folder", VOCClassification, path / "VOC2012", "test")
    usage_error("(splits there: test, train, trainval, val)", VOCClassification, path, "minival")
    usage_error("(splits there: train, trainval, val)", VOCDetection, path, "test", year="2012")
    (path / "VOC2007" / "JPEGImages").rename(path / "VOC2007" / "images")
    usage_error("has no JPEGImages/ folder", VOCClassification, path, "test")


def test_detection_targets_convert_to_zero_based_half_open(devkit):
    path, _ = devkit
    ds = VOCDetection(path, "trainval")
    assert ds.image_ids == VOC2007_SPLITS["trainval"] and len(ds) == 4
    img, target, index = ds[0]
    assert img.size == image_size("000005") and index == 0 and target["image_id"] == "000005"
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[262, 210, 324, 339], [4.5, 243, 67, 374], [47, 239, 195, 371]]
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [9, 9, 15]  # 1..20
    assert target["difficult"].tolist() == [False, True, False]  # kept; the evaluator decides
    assert ds.target(2)["difficult"].tolist() == [True]  # 000012: its only car is difficult

    def flip(img, target):
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = img.width - target["boxes"][:, [2, 0]]
        return img.transpose(Image.FLIP_LEFT_RIGHT), {**target, "boxes": boxes}

    _, flipped, _ = VOCDetection(path, "test", transforms=flip)[0]
    assert flipped["boxes"].tolist() == [
        [image_size("000007")[0] - 500, 49, image_size("000007")[0] - 140, 330]
    ]


def test_voc0712_union(devkit):
    path, _ = devkit
    union = voc0712_trainval(path)
    assert union.image_ids == VOC2007_SPLITS["trainval"] + VOC2012_SPLITS["trainval"]
    img, target, index = union[5]
    assert index == 5 and target["image_id"] == "2008_000003" and img.size == image_size("2008_000003")
    assert target["labels"].tolist() == [VOC_CLASSES.index("train") + 1, VOC_CLASSES.index("person") + 1]
    assert union.target(0)["labels"].tolist() == VOCDetection(path, "trainval").target(0)["labels"].tolist()
    usage_error("has no VOC2012/ImageSets/Main/ folder", voc0712_trainval, path / "VOC2007")


def test_registered_in_build_dataset(devkit):
    path, written = devkit
    assert {"voc07", "voc12", "places205", "shapes-voc"} <= set(DATASETS)
    voc07 = build_dataset("voc07", path, "test")
    assert voc07.image_ids == VOC2007_SPLITS["test"] and (voc07.targets == written["2007"]["test"]).all()
    voc12 = build_dataset("voc12", path / "VOC2012", "val")
    assert voc12.image_ids == VOC2012_SPLITS["val"] and voc12.classes == VOC_CLASSES
    usage_error("--data-root is required for voc07", build_dataset, "voc07", None, "test")
    usage_error("arrange it as <root>/VOC<year>/", build_dataset, "voc12", path, "val", download=True)
