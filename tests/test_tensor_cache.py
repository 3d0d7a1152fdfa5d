"""Images held on the training device (``--data-on-device``): the cache decodes exactly what the loader
delivers, and a run trains bit-identically with and without it, E-step included."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import write_imagefolder
from PIL import Image
from test_pretrain import _state, run_cli
from torch.utils.data import DataLoader
from torchvision.transforms import PILToTensor

from pcl_bench.cli import main
from pcl_bench.data import build_dataset
from pcl_bench.data.augment import eval_crop, eval_transform
from pcl_bench.data.tensor_cache import DeviceBatches, DeviceEvalBatches, cached_images, check_fits
from pcl_bench.runtime.errors import UsageError
from pcl_bench.runtime.paths import cache_dir


@pytest.fixture
def folder(tmp_path):
    write_imagefolder(tmp_path, splits=("train",), classes=("a", "b", "c"), n=5, size=20)
    return build_dataset("imagefolder", tmp_path, "train")


def test_cache_holds_the_decoded_images_and_is_read_back(folder):
    images = cached_images(folder)
    expected = torch.stack([PILToTensor()(folder[i][0]) for i in range(len(folder))])
    assert images.dtype == torch.uint8 and torch.equal(images, expected)
    crops = cached_images(folder, eval_crop(16))
    assert crops.shape == (15, 3, 16, 16)
    files = sorted(cache_dir("tensors").glob("*.npy"))
    assert len(files) >= 2
    stored = next(f for f in files if np.load(f).shape == (15, 3, 20, 20))
    stored.write_bytes(stored.read_bytes()[:100])  # a truncated cache file is decoded again
    with pytest.warns(UserWarning, match="is damaged"):
        assert torch.equal(cached_images(folder), expected)
    assert torch.equal(torch.from_numpy(np.load(stored)), expected)


def test_device_batches_are_the_loaders_batches(folder):
    crops = cached_images(folder, eval_crop(16))
    targets = torch.as_tensor(folder.targets)
    batches = list(DeviceEvalBatches(crops, targets, range(1, 15, 2), 3))
    tf = eval_transform(16)
    index = torch.cat([i for _, _, i in batches])
    assert index.tolist() == list(range(1, 15, 2)) and [len(i) for _, _, i in batches] == [3, 3, 1]
    expected = torch.stack([tf(folder[i][0]) for i in index.tolist()])
    assert torch.equal(torch.cat([x for x, _, _ in batches]), expected)  # ToTensor + Normalize, bit for bit
    train = DeviceBatches(cached_images(folder), targets, list(range(15))[::-1], 4)
    torch.manual_seed(0)
    got = [i.tolist() for _, _, i in train]
    after_device = torch.get_rng_state()
    torch.manual_seed(0)
    list(DataLoader(range(15), 4))
    assert torch.equal(after_device, torch.get_rng_state())  # the generator advances as with a DataLoader
    assert got == [[14, 13, 12, 11], [10, 9, 8, 7], [6, 5, 4, 3]]


def test_training_on_device_equals_the_loader_path(tmp_path):
    """pcl_v2 with the tensor backend, a warm-up epoch then an E-step epoch: the same weights, optimizer state
    and clusters with the images on the device as through the loader."""
    args = ["--method", "pcl_v2", "--aug-backend", "tensor", "--epochs", "2", "--no-final-knn"]
    assert run_cli(tmp_path, *args, "--data-on-device", name="device") == 0
    assert run_cli(tmp_path, *args, "--no-data-on-device", name="loader") == 0
    (sd_a, opt_a), (sd_b, opt_b) = _state(tmp_path / "device" / "last.pt"), _state(tmp_path / "loader" / "last.pt")
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"]) for k in opt_a)
    ca, cb = (torch.load(tmp_path / n / "clusters.pt", weights_only=False) for n in ("device", "loader"))
    assert all(torch.equal(a, b) for a, b in zip(ca["im2cluster"], cb["im2cluster"]))


def test_an_imagefolder_of_mixed_sizes_is_refused_before_training(tmp_path, capsys):
    """--aug-backend tensor stacks the images: a tree with two sizes stops at once, naming one file of each."""
    written = write_imagefolder(tmp_path / "data", splits=("train", "test"), classes=("a", "b"), n=8, size=24)
    odd = written["train"][-1][0]
    Image.new("RGB", (30, 24)).save(odd)
    args = ["pretrain", "--dataset", "imagefolder", "--data-root", str(tmp_path / "data"), "--aug-backend",
            "tensor", "--method", "moco_v2", "--arch", "resnet18", "--batch-size", "8", "--bn-splits", "2", "--out",
            str(tmp_path / "runs")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "24x24" in err and f"{odd} is 30x24" in err, err
    assert not (tmp_path / "runs").exists()


def test_data_that_cannot_fit_on_the_device_is_refused():
    check_fits(10, [(3, 32, 32)], torch.device("cpu"))
    with pytest.raises(UsageError, match="--no-data-on-device"):
        check_fits(10**9, [(3, 256, 256), (3, 224, 224)], torch.device("cpu"))
