"""``shapes-voc``: a generated tree in the exact VOC2007 layout; consistent, deterministic, atomic."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from pcl_bench.data import build_dataset, shapes, shapes_voc
from pcl_bench.data.shapes_voc import shapes_voc_detection, shapes_voc_root
from pcl_bench.data.voc import VOCClassification, VOCDetection
from pcl_bench.runtime.errors import UsageError

N_TRAINVAL, N_TEST = 30, 14
CLASSES = shapes.FINE_CLASSES


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shapes_voc_root(tmp_path_factory.mktemp("cache"), 0, N_TRAINVAL, N_TEST) / "VOC2007"


def read_list(path) -> list[str]:
    return path.read_text().splitlines()


def test_layout_is_voc2007(base):
    main = base / "ImageSets" / "Main"
    ids = {s: read_list(main / f"{s}.txt") for s in ("trainval", "test", "train", "val")}
    assert len(ids["trainval"]) == N_TRAINVAL and len(ids["test"]) == N_TEST
    assert sorted(ids["trainval"] + ids["test"]) == [f"{i:06d}" for i in range(1, N_TRAINVAL + N_TEST + 1)]
    assert sorted(ids["train"] + ids["val"]) == ids["trainval"] and len(ids["train"]) == N_TRAINVAL // 2
    assert all(ids[s] == sorted(ids[s]) for s in ids)
    for image_id in ids["trainval"] + ids["test"]:
        assert (base / "JPEGImages" / f"{image_id}.jpg").is_file()
        assert (base / "Annotations" / f"{image_id}.xml").is_file()
    for split, split_ids in ids.items():
        for cls in CLASSES:
            lines = read_list(main / f"{cls}_{split}.txt")
            assert all(re.fullmatch(r"\d{6} (-1| 0| 1)", line) for line in lines)  # VOC's two-character field
            assert [line[:6] for line in lines] == split_ids


def test_lists_agree_with_annotations(base):
    ds = VOCClassification(base, "trainval", classes=CLASSES)
    n_difficult_only = 0
    for image_id, row in zip(ds.image_ids, ds.targets):
        root = ET.parse(base / "Annotations" / f"{image_id}.xml").getroot()
        assert root.findtext("filename") == f"{image_id}.jpg" and root.findtext("segmented") == "0"
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
        assert (width, height, root.findtext("size/depth")) == (128, 128, "3")
        objects = root.findall("object")
        assert 1 <= len(objects) <= 4
        for obj in objects:
            assert obj.findtext("pose") == "Unspecified" and obj.findtext("truncated") in ("0", "1")
            xmin, ymin, xmax, ymax = (
                int(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")
            )
            assert 1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height  # 1-based, inclusive, inside
        for c, cls in enumerate(CLASSES):
            flags = [o.findtext("difficult") == "1" for o in objects if o.findtext("name") == cls]
            assert row[c] == (-1 if not flags else 0 if all(flags) else 1), (image_id, cls)
            n_difficult_only += row[c] == 0
    assert n_difficult_only > 0 and (ds.targets == 1).sum() > 2 * n_difficult_only


def test_detection_reads_the_tree(base):
    ds = VOCDetection(base, "test", classes=CLASSES)
    img = ds[0][0]
    assert img.size == (128, 128) and len(ds) == N_TEST
    labels = torch.cat([ds.target(i)["labels"] for i in range(len(ds))])
    assert labels.min() >= 1 and labels.max() <= len(CLASSES)
    boxes = torch.cat([ds.target(i)["boxes"] for i in range(len(ds))])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all() and (boxes[:, :2] < boxes[:, 2:]).all()


def test_deterministic_from_the_seed(base, tmp_path):
    again = shapes_voc_root(tmp_path, 0, N_TRAINVAL, N_TEST) / "VOC2007"
    for rel in ("ImageSets/Main/star_trainval.txt", "Annotations/000007.xml", "JPEGImages/000007.jpg"):
        assert (again / rel).read_bytes() == (base / rel).read_bytes(), rel
    other = shapes_voc_root(tmp_path, 1, N_TRAINVAL, N_TEST) / "VOC2007"
    assert (other / "Annotations/000007.xml").read_bytes() != (base / "Annotations/000007.xml").read_bytes()


def test_generation_is_atomic(tmp_path, monkeypatch):
    def crash(path, *args):
        (path / "JPEGImages").mkdir(parents=True)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(shapes_voc, "write_shapes_voc", crash)
        with pytest.raises(KeyboardInterrupt):
            shapes_voc_root(tmp_path, 0, 4, 2)
    assert list(tmp_path.iterdir()) == []  # no partial tree, no temporary folder left
    root = shapes_voc_root(tmp_path, 0, 4, 2)
    assert [p.name for p in tmp_path.iterdir()] == [root.parent.name]
    with monkeypatch.context() as m:  # cached: a second call does not generate again
        m.setattr(shapes_voc, "write_shapes_voc", crash)
        assert shapes_voc_root(tmp_path, 0, 4, 2) == root
    with pytest.raises(UsageError, match="need n_trainval >= 2 and n_test >= 1"):
        shapes_voc_root(tmp_path, 0, 1, 2)


def test_build_dataset_needs_no_root(monkeypatch, shapes_cache):
    monkeypatch.setitem(shapes_voc.DEFAULT_SIZES, "trainval", 6)
    monkeypatch.setitem(shapes_voc.DEFAULT_SIZES, "test", 2)
    ds = build_dataset("shapes-voc", None, "trainval", lambda im: np.asarray(im))
    assert ds.base.is_relative_to(shapes_cache / "shapes-voc")  # $PCL_BENCH_CACHE/shapes-voc
    assert ds.classes == CLASSES and ds.image_size == 128 and ds.targets.shape == (6, 10)
    x, target, index = ds[3]
    assert x.shape == (128, 128, 3) and target.tolist() == ds.targets[3].tolist() and index == 3
    assert len(shapes_voc_detection(None, "val")) == 3
