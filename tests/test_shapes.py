"""Tests for the embedded ``shapes`` dataset: determinism, layout, hierarchy, cache and the Dataset API."""

import numpy as np
import pytest
import torch
from PIL import Image

from pcl_bench.data import shapes
from pcl_bench.runtime.errors import UsageError
from pcl_bench.runtime.paths import cache_dir

PER_CLASS = 4


def test_generate_is_deterministic_and_seeded():
    x1, y1 = shapes.generate_shapes("train", seed=0, per_class=PER_CLASS)
    x2, y2 = shapes.generate_shapes("train", seed=0, per_class=PER_CLASS)
    x3, _ = shapes.generate_shapes("train", seed=1, per_class=PER_CLASS)
    xt, _ = shapes.generate_shapes("test", seed=0, per_class=PER_CLASS)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert not np.array_equal(x1, xt)  # train and test use different random streams


def test_generate_shapes_dtypes_and_balance():
    x, y = shapes.generate_shapes("test", per_class=PER_CLASS, size=32)
    n = PER_CLASS * len(shapes.FINE_CLASSES)
    assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (n,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [PER_CLASS] * len(shapes.FINE_CLASSES)
    assert x.std() > 10  # not blank images


@pytest.mark.parametrize("label", range(len(shapes.FINE_CLASSES)))
def test_outlines_are_centred_unit_polygons(label):
    pts = shapes._outline(label, np.random.default_rng(label))
    assert pts.ndim == 2 and pts.shape[1] == 2 and len(pts) >= 3
    assert np.isclose(np.linalg.norm(pts, axis=1).max(), 1.0)
    assert np.allclose(pts.min(0) + pts.max(0), 0.0)  # bounding box centred on the origin
    x, y = pts.T
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # shoelace
    assert 0.15 < area <= np.pi  # a solid shape inside the unit disc, not a sliver


def test_hierarchy_is_consistent():
    assert len(shapes.FINE_TO_COARSE) == len(shapes.FINE_CLASSES)
    assert sorted(set(shapes.FINE_TO_COARSE)) == list(range(len(shapes.COARSE_CLASSES)))


def test_dataset_attributes_and_items(tmp_path):
    ds = shapes.ShapesDataset(tmp_path, "train", per_class=PER_CLASS)
    assert len(ds) == PER_CLASS * len(shapes.FINE_CLASSES)
    assert ds.images.shape == (len(ds), 64, 64, 3) and ds.images.dtype == np.uint8
    assert ds.targets.dtype == np.int64 and ds.coarse_targets.dtype == np.int64
    assert ds.classes == shapes.FINE_CLASSES and ds.coarse_classes == shapes.COARSE_CLASSES
    assert ds.coarse_targets.tolist() == [shapes.FINE_TO_COARSE[t] for t in ds.targets]

    img, label, index = ds[5]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 64)
    assert label == ds.targets[5] and index == 5

    ds.transform = lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1)
    tensor, _, _ = ds[5]
    assert tensor.shape == (3, 64, 64)
    assert torch.equal(tensor.permute(1, 2, 0), torch.from_numpy(ds.images[5]))


def test_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    first = shapes.ShapesDataset(tmp_path, "test", per_class=PER_CLASS)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and f"v{shapes.GENERATOR_VERSION}" in files[0].name
    assert not list(tmp_path.glob("*.tmp"))

    def fail(*args, **kwargs):
        raise AssertionError("cache miss: generate_shapes called again")

    monkeypatch.setattr(shapes, "generate_shapes", fail)
    second = shapes.ShapesDataset(tmp_path, "test", per_class=PER_CLASS)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.targets, second.targets)


def test_default_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PCL_BENCH_CACHE", str(tmp_path))
    assert cache_dir("shapes") == tmp_path / "shapes"
    monkeypatch.delenv("PCL_BENCH_CACHE")
    assert cache_dir("shapes").parts[-2:] == ("pcl-bench", "shapes")


def test_bad_split_raises_usage_error(tmp_path):
    with pytest.raises(UsageError, match="train, test"):
        shapes.ShapesDataset(tmp_path, "val")
