"""``--decode device``: the loader reads file bytes, the training process decodes them (on the CPU here, as on a
GPU) into the pixels PIL gives, augments images of different sizes in batches, and trains and resumes exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import write_image
from real_data import VOC_MINI, needs_voc
from test_pretrain import _state
from torch.utils.data import TensorDataset

from pcl_bench.cli import main
from pcl_bench.data import build_dataset
from pcl_bench.data.augment import eval_transform
from pcl_bench.data.batch_augment import BatchAugment
from pcl_bench.data.corrupt import open_rgb
from pcl_bench.data.device_decode import FileBytes, centre_crops, check_files, collate_bytes, decode_images
from pcl_bench.runtime.errors import CorruptImage, UsageError

CPU = torch.device("cpu")
SIZES = [(40, 30), (24, 36), (32, 32)]  # (width, height)


@pytest.fixture
def mixed(tmp_path):
    """Two classes of JPEGs in three sizes (one grayscale, one CMYK), and a PNG, in train/ and test/."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c in ("a", "b"):
            for k in range(n):
                w, h = SIZES[k % 3]
                mode = {1: "L", 2: "CMYK"}.get(k, "RGB")
                ext = "png" if k == 3 else "jpg"
                write_image(tmp_path / "data" / split / c / f"{k:02d}.{ext}",
                            rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode=mode)
    return tmp_path / "data"


def test_decoded_files_equal_pils_pixels(mixed):
    ds = build_dataset("imagefolder", mixed, "train")
    files = FileBytes(ds)
    data, _, index = collate_bytes([files[i] for i in range(8)])
    assert index.tolist() == list(range(8))
    images = decode_images(data, ds.path, CPU)
    for i, img in enumerate(images):
        expected = torch.from_numpy(np.array(open_rgb(ds.path(i)))).permute(2, 0, 1)
        assert img.dtype == torch.uint8 and torch.equal(img, expected), ds.path(i)


def test_a_corrupt_file_is_named(mixed):
    ds = build_dataset("imagefolder", mixed, "train")
    bad = ds.path(4)
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8 not really a jpeg")
    files = FileBytes(ds)
    with pytest.raises(CorruptImage, match=str(bad)):
        decode_images(collate_bytes([files[i] for i in range(6)])[0], ds.path, CPU)


def test_centre_crops_are_close_to_the_pil_transform(mixed):
    ds = build_dataset("imagefolder", mixed, "train")
    images = [torch.from_numpy(np.array(open_rgb(ds.path(i)))).permute(2, 0, 1) for i in range(6)]
    got = centre_crops(images, 16)
    expected = torch.stack([eval_transform(16)(open_rgb(ds.path(i))) for i in range(6)])
    assert got.shape == expected.shape == (6, 3, 16, 16)
    diff = (got - expected).abs() * 0.225 * 255  # in grey levels
    assert diff.mean() < 1.5 and diff.max() < 24


def test_a_list_of_images_is_augmented_as_the_batch_of_them():
    """Images of one size give the same views as a list as they do stacked; sizes may differ in a list."""
    images = torch.randint(0, 256, (5, 3, 20, 24), dtype=torch.uint8)
    aug = BatchAugment("v2", 16)
    torch.manual_seed(3)
    stacked = aug(images)
    torch.manual_seed(3)
    assert torch.equal(aug(list(images)), stacked)
    mixed = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in ((20, 24), (50, 31), (16, 16))]
    assert aug(mixed).shape == (3, 3, 16, 16)


def test_decode_device_needs_files_and_the_tensor_backend(mixed, tmp_path, capsys):
    with pytest.raises(UsageError, match="cifar10 keeps its images in arrays"):
        check_files(TensorDataset(torch.zeros(4, 3, 8, 8)), "cifar10")
    assert main(["pretrain", "--dataset", "imagefolder", "--data-root", str(mixed), "--decode", "device",
                 "--aug-backend", "pil", "--out", str(tmp_path)]) == 2
    assert "add --aug-backend tensor" in capsys.readouterr().err
    assert not (tmp_path / "pcl_v2_imagefolder").exists()


def test_training_on_decoded_files_resumes_exactly(mixed, tmp_path):
    """pcl_v2 on JPEGs of three sizes, a warm-up epoch then an E-step epoch; stopped after the first epoch and
    resumed, it ends with the same weights as straight through."""
    def run(name: str, *extra: str) -> int:
        return main(["pretrain", "--dataset", "imagefolder", "--data-root", str(mixed), "--decode", "device",
                     "--aug-backend", "tensor", "--arch", "resnet18", "--image-size", "16", "--batch-size", "8",
                     "--queue", "16", "--num-cluster", "10,12", "--proto-negatives", "2", "--warmup-epochs", "1",
                     "--bn-splits", "2", "--workers", "1", "--no-final-knn", "--out", str(tmp_path / "runs"),
                     "--name", name, *extra])
    assert run("straight", "--epochs", "2") == 0
    assert run("resumed", "--epochs", "1") == 0
    assert run("resumed", "--epochs", "2", "--resume") == 0
    (sd_a, _), (sd_b, _) = (_state(tmp_path / "runs" / n / "last.pt") for n in ("straight", "resumed"))
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    clusters = torch.load(tmp_path / "runs" / "straight" / "clusters.pt", weights_only=False)
    assert [t.numel() for t in clusters["im2cluster"]] == [24, 24]


@needs_voc
def test_real_voc_jpegs_decode_to_pils_pixels():
    ds = build_dataset("voc07", VOC_MINI, "val")
    files = FileBytes(ds)
    picks = range(0, len(ds), len(ds) // 16)
    images = decode_images(collate_bytes([files[i] for i in picks])[0], lambda j: ds.path(picks[j]), CPU)
    assert len({tuple(img.shape) for img in images}) > 1  # photos of several sizes
    for i, img in zip(picks, images):
        assert torch.equal(img, torch.from_numpy(np.array(open_rgb(ds.path(i)))).permute(2, 0, 1)), ds.path(i)
