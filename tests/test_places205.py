"""Places205 loader on a fixture in the real layout (csv split lists, images under images256/)."""

from __future__ import annotations

import numpy as np
from fixtures import usage_error
from fixtures_voc import PLACES_ENTRIES, colour, write_places205
from PIL import Image

from pcl_bench.data import build_dataset
from pcl_bench.data.places205 import Places205, category

LAYOUT = (
    "expected <root>/trainvalsplit_places205/{train,val}_places205.csv with lines '<relative path> <label>'"
)



def test_category_drops_the_letter_folder_and_file():
    assert category("a/abbey/00000000.jpg") == "abbey"
    assert category("b/bakery/shop/00000123.jpg") == "bakery/shop"
    assert category("abbey.jpg") == ""


def test_items_targets_and_classes(tmp_path):
    write_places205(tmp_path)
    train = Places205(tmp_path, "train")
    assert train.classes == ["abbey", "bakery/shop", "canyon"] and train.image_size == 224
    assert train.targets.dtype == np.int64 and train.targets.tolist() == [
        y for _, y in PLACES_ENTRIES["train"]
    ]
    img, label, index = train[1]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (16, 16)
    assert np.abs(np.asarray(img, int) - colour("b/bakery/shop/00000000.jpg")).max() <= 3
    assert (label, index) == (1, 1)
    val = build_dataset("places205", tmp_path, "val", transform=lambda im: im.size)
    assert len(val) == 3 and val.classes == train.classes and val[2] == ((16, 16), 2, 2)


def test_layout_errors(tmp_path):
    assert LAYOUT in usage_error(
        "has no trainvalsplit_places205/val_places205.csv", Places205, tmp_path, "val"
    )
    usage_error("unknown split 'test'; valid splits: train, val", Places205, tmp_path, "test")
    write_places205(tmp_path)
    csv = tmp_path / "trainvalsplit_places205" / "val_places205.csv"
    csv.write_text("a/abbey/00000002.jpg,0\n")
    assert LAYOUT in usage_error(
        "val_places205.csv:1 is 'a/abbey/00000002.jpg,0'", Places205, tmp_path, "val"
    )
    csv.write_text("a/abbey/00000002.jpg 0\nc/canyon/00000001.jpg 0\n")
    usage_error("val_places205.csv:2: label 0 is both abbey and canyon", Places205, tmp_path, "val")
    csv.write_text("a/abbey/00000002.jpg 0\nc/canyon/00000001.jpg 2\n")
    usage_error("the labels are not 0..C-1 with at least one image each", Places205, tmp_path, "val")
    (tmp_path / "data").rename(tmp_path / "images")
    usage_error("has no data/vision/torralba/deeplearning/images256/ folder", Places205, tmp_path, "train")
