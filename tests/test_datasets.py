"""Dataset loaders on tiny fixtures in the real on-disk formats, and on the real CIFAR-10 JPEGs if present."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import (
    CIFAR10_CLASSES,
    STL10_CLASSES,
    marker_image,
    usage_error,
    write_cifar10,
    write_cifar100,
    write_image,
    write_imagefolder,
    write_stl10,
)
from PIL import Image
from torchvision import transforms as T

from pcl_bench.data import CIFAR10, DATASETS, InstanceSubset, balanced_subset, build_dataset

REAL_CIFAR10 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10"


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)



# ---------------------------------------------------------------- CIFAR


def test_cifar10_items_pixels_and_labels(tmp_path):
    written = write_cifar10(tmp_path, n_per_batch=3)
    train = build_dataset("cifar10", tmp_path, "train")
    images, labels = written["train"]
    assert len(train) == 15 and train.classes == CIFAR10_CLASSES and train.image_size == 32
    assert train.targets.dtype == np.int64 and train.targets.tolist() == labels.tolist()
    img, target, index = train[7]
    assert (pixels(img) == images[7]).all() and target == labels[7] and index == 7
    assert (pixels(train[0][0]) == marker_image(32)).all()  # red top-left: planes decoded row-major

    test = build_dataset("cifar10", tmp_path / "cifar-10-batches-py", "test", transform=T.ToTensor())
    x, target, index = test[2]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32) and index == 2
    assert target == written["test"][1][2]


def test_cifar100_fine_and_coarse(tmp_path):
    written = write_cifar100(tmp_path, n_train=12, n_test=6)
    ds = build_dataset("cifar100", tmp_path, "test")
    images, fine, coarse = written["test"]
    assert len(ds) == 6 and len(ds.classes) == 100 and len(ds.coarse_classes) == 20
    assert ds.targets.tolist() == fine.tolist() and ds.coarse_targets.tolist() == coarse.tolist()
    assert ds.coarse_targets.dtype == np.int64
    assert (pixels(ds[4][0]) == images[4]).all() and ds[4][1:] == (fine[4], 4)


def test_cifar_errors(tmp_path):
    usage_error("does not exist", CIFAR10, tmp_path / "missing", "train")
    msg = usage_error("has no cifar-10-batches-py/batches.meta", build_dataset, "cifar10", tmp_path, "train")
    assert str(tmp_path) in msg and "data_batch_1..5" in msg
    write_cifar10(tmp_path, n_per_batch=2)
    usage_error("valid splits: train, test", build_dataset, "cifar10", tmp_path, "val")
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    usage_error("has no data_batch_3", build_dataset, "cifar10", tmp_path, "train")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    usage_error("not a readable CIFAR pickle", build_dataset, "cifar10", tmp_path, "test")
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8)}, f)
    usage_error("lacks the field(s) labels", build_dataset, "cifar10", tmp_path, "test")


# ---------------------------------------------------------------- STL-10


def test_stl10_column_major_decoding(tmp_path):
    written = write_stl10(tmp_path)
    ds = build_dataset("stl10", tmp_path, "train")
    assert len(ds) == 6 and ds.classes == STL10_CLASSES and ds.image_size == 96
    img = pixels(ds[0][0])
    assert (img[: 96 // 4, : 96 // 2] == [255, 0, 0]).all()  # the red block is wide, in the top-left corner
    assert (img[96 // 4 :] == 0).all() and (img[:, 96 // 2 :] == 0).all()
    images, labels = written["train"]
    for i in range(len(ds)):
        img, target, index = ds[i]
        assert (pixels(img) == images[i]).all() and target == labels[i] and index == i


def test_stl10_unlabeled_and_concatenation(tmp_path):
    written = write_stl10(tmp_path, n_train=4, n_unlabeled=3)
    unlabeled = build_dataset("stl10", tmp_path / "stl10_binary", "unlabeled")
    assert unlabeled.targets.tolist() == [-1, -1, -1] and unlabeled[2][1] == -1
    assert len(pickle.dumps(unlabeled)) < 10_000  # pickled for DataLoader workers without the images
    both = build_dataset("stl10", tmp_path, "train+unlabeled", transform=T.ToTensor())
    assert len(both) == 7
    assert both.targets.tolist() == written["train"][1].tolist() + [-1] * 3
    x, target, index = both[5]
    assert x.shape == (3, 96, 96) and target == -1 and index == 5
    expected = torch.from_numpy(written["unlabeled"][0][1]).permute(2, 0, 1).float() / 255
    assert torch.allclose(x, expected)


def test_stl10_errors(tmp_path):
    usage_error("has no stl10_binary/class_names.txt", build_dataset, "stl10", tmp_path, "train")
    write_stl10(tmp_path)
    usage_error(
        "valid splits: train, test, unlabeled, train+unlabeled", build_dataset, "stl10", tmp_path, "val"
    )
    with open(tmp_path / "stl10_binary" / "test_X.bin", "ab") as f:
        f.write(b"\0")
    usage_error("not a multiple of 3x96x96", build_dataset, "stl10", tmp_path, "test")
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes(b"\x01")
    usage_error("one label in 1..10 per image", build_dataset, "stl10", tmp_path, "train")


# ---------------------------------------------------------------- ImageFolder / ImageNet


def test_imagefolder_order_and_pixels(tmp_path):
    written = write_imagefolder(tmp_path, splits=("train", "val"), classes=("zebra", "ant", "moose"), n=2)
    ds = build_dataset("imagefolder", tmp_path, "val")
    assert ds.classes == ["ant", "moose", "zebra"] and ds.image_size == 32
    assert ds.targets.tolist() == [0, 0, 1, 1, 2, 2]
    by_path = {str(p): px for p, px in written["val"]}
    for i in range(len(ds)):
        img, target, index = ds[i]
        assert (pixels(img) == by_path[ds.path(i)]).all() and index == i
        assert Path(ds.path(i)).parent.name == ds.classes[target]


def test_imagefolder_extensions_png_and_cmyk_become_rgb(tmp_path):
    red = marker_image(40)
    write_image(tmp_path / "train" / "a" / "0_cmyk.JPG", red, mode="CMYK")
    write_image(tmp_path / "train" / "a" / "1_png_named_jpeg.JPEG", red, format="PNG")
    write_image(tmp_path / "train" / "a" / "2_grey.png", red, mode="L")
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".cache").mkdir()
    ds = build_dataset("imagefolder", tmp_path, "train")
    assert ds.classes == ["a"] and len(ds) == 3
    assert [Path(ds.path(i)).name for i in range(3)] == ["0_cmyk.JPG", "1_png_named_jpeg.JPEG", "2_grey.png"]
    images = [ds[i][0] for i in range(3)]
    assert all(img.mode == "RGB" and img.size == (40, 40) for img in images)
    cmyk, png = np.asarray(images[0]).astype(int), np.asarray(images[1])
    assert (png == red).all()
    assert (np.abs(cmyk - red) < 40).all()  # JPEG-compressed CMYK, converted back to RGB
    ds.transform = T.ToTensor()
    assert ds[2][0].shape == (3, 40, 40)


def test_imagenet_and_imagefolder_errors(tmp_path):
    msg = usage_error("does not exist", build_dataset, "imagenet", tmp_path / "nope", "train")
    assert "train/<wnid>/*.JPEG" in msg and "val/<wnid>/*.JPEG" in msg
    usage_error("valid splits: train, val", build_dataset, "imagenet", tmp_path, "test")
    write_imagefolder(tmp_path, splits=("train", "test"), n=1)
    usage_error(
        "has no val/ folder (sub-folders: test, train)", build_dataset, "imagefolder", tmp_path, "val"
    )
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    usage_error("has no images", build_dataset, "imagefolder", tmp_path, "empty")
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "x.png", marker_image(8))
    usage_error("has no class folders", build_dataset, "imagefolder", tmp_path, "flat")
    imagenet = build_dataset("imagenet", tmp_path, "train")
    assert imagenet.image_size == 224 and len(imagenet) == 2


# ---------------------------------------------------------------- registry and download


def test_registry_errors(tmp_path):
    assert set(DATASETS) == {"shapes", "imagefolder", "imagenet", "cifar10", "cifar100", "stl10",
                             "shapes-voc", "voc07", "voc12", "places205"}
    msg = usage_error("unknown dataset 'mnist'", build_dataset, "mnist", tmp_path, "train")
    assert "cifar100" in msg and "imagenet" in msg
    usage_error("--data-root is required for cifar10", build_dataset, "cifar10", None, "train")
    usage_error("obtain imagenet manually", build_dataset, "imagenet", tmp_path, "train", download=True)


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_download_offline_is_a_clear_error(tmp_path, monkeypatch, name):
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    msg = usage_error("seems offline", build_dataset, name, tmp_path / "data", "train", download=True)
    assert "could not download http" in msg and "name resolution" in msg and str(tmp_path / "data") in msg
    assert os.listdir(tmp_path / "data") == []  # no partial download left behind


def test_download_extracts_the_archive_and_skips_present_data(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "src", n_per_batch=2)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return io.BytesIO(archive.getvalue())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    ds = build_dataset("cifar10", tmp_path / "data", "train", download=True)
    assert len(ds) == 10 and urls == [CIFAR10.url]
    assert os.listdir(tmp_path / "data") == ["cifar-10-batches-py"]  # archive and temporary files removed
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    assert len(build_dataset("cifar10", tmp_path / "data", "test", download=True)) == 2


# ---------------------------------------------------------------- subsets


def test_instance_subset_remaps_indices(tmp_path):
    written = write_cifar100(tmp_path, n_train=12)
    ds = build_dataset("cifar100", tmp_path, "train")
    sub = InstanceSubset(ds, [9, 2, 5])
    assert len(sub) == 3 and sub.classes is ds.classes and sub.image_size == 32
    assert sub.targets.tolist() == ds.targets[[9, 2, 5]].tolist()
    assert sub.coarse_targets.tolist() == ds.coarse_targets[[9, 2, 5]].tolist()
    img, target, index = sub[1]
    assert index == 1 and target == ds.targets[2] and (pixels(img) == written["train"][0][2]).all()
    with pytest.raises(IndexError):
        InstanceSubset(ds, [12])


def test_balanced_subset(tmp_path):
    write_stl10(tmp_path, n_train=30, n_test=0, n_unlabeled=4)
    ds = build_dataset("stl10", tmp_path, "train+unlabeled")
    a, b = balanced_subset(ds, 2, seed=1), balanced_subset(ds, 2, seed=1)
    assert a.indices.tolist() == b.indices.tolist() == sorted(a.indices.tolist())
    assert a.indices.tolist() != balanced_subset(ds, 2, seed=2).indices.tolist()
    counts = {t: int((ds.targets == t).sum()) for t in np.unique(ds.targets)}
    for t, n in counts.items():
        assert (a.targets == t).sum() == min(2, n)
    assert not hasattr(a, "coarse_targets") and a[0][2] == 0
    usage_error("per_class must be >= 1", balanced_subset, ds, 0, seed=0)


# ---------------------------------------------------------------- real data


@pytest.mark.skipif(not REAL_CIFAR10.is_dir(), reason="../shared/data/cifar10 is absent")
def test_real_cifar10_jpegs_as_imagefolder():
    ds = build_dataset("imagefolder", REAL_CIFAR10, "train")
    assert len(ds) == 50_000 and ds.classes == CIFAR10_CLASSES and ds.image_size == 32
    assert np.bincount(ds.targets).tolist() == [5000] * 10
    img, target, index = ds[0]
    assert img.mode == "RGB" and img.size == (32, 32) and target == 0 and index == 0
