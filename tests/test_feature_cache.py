"""Feature kinds and the on-disk feature cache: reuse, keys, atomic files, multi-label targets."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pcl_bench.data import build_dataset
from pcl_bench.data.fingerprint import fingerprint
from pcl_bench.eval import feature_cache
from pcl_bench.eval.feature_cache import cache_key, cached_features, places_features, res5_2x2_features
from pcl_bench.eval.runner import load_encoder, weights_sha256
from pcl_bench.models.encoders import backbone_features, build_encoder
from pcl_bench.runtime.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


class Images(torch.utils.data.Dataset):
    """Random 24 px images with the given targets, yielding (image, target, index) like every dataset."""

    def __init__(self, targets: np.ndarray, seed: int = 0):
        self.targets = targets
        self.images = torch.randn(len(targets), 3, 24, 24, generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i], i


class MapsOnly(nn.Module):
    """A stand-in ResNet whose layers are identities, so that its layer4 maps are the input itself."""

    def __init__(self):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, nn.Identity())


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = build_encoder("resnet18", stem="small")  # 24 px -> 3 x 3 layer4 maps
    net.fc = nn.Identity()
    return net.eval()


@pytest.fixture
def counted(monkeypatch):
    """Count the extractions that cached_features runs."""
    calls = []
    real = feature_cache.extract_features

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(feature_cache, "extract_features", counting)
    return calls


def features(net, ds, kind="pool", sha="a" * 64, key="toy:train", cache_dir=None):
    return cached_features(net, sha, ds, key, kind, batch_size=4, workers=0, device=torch.device("cpu"),
                           cache_dir=cache_dir)


def test_second_call_is_a_hit(net, tmp_path, counted, capsys):
    ds = Images(np.arange(6) % 3)
    feats, _ = features(net, ds, cache_dir=tmp_path)
    again, targets_again = features(net, ds, cache_dir=tmp_path)
    assert len(counted) == 1
    assert f"features: cache hit {cache_key('a' * 64, 'toy:train', 'pool', 6)}" in capsys.readouterr().err
    assert feats.dtype == np.float32 and feats.shape == (6, 512)
    np.testing.assert_array_equal(again, feats)
    np.testing.assert_array_equal(targets_again, ds.targets)
    with torch.no_grad():
        np.testing.assert_allclose(feats, backbone_features(net, ds.images).numpy(), rtol=1e-4, atol=1e-5)


def test_what_changes_the_key(net, tmp_path, counted):
    ds = Images(np.zeros(4, dtype=np.int64))
    for kind, sha, key in [("pool", "a" * 64, "toy:train"), ("places", "a" * 64, "toy:train"),
                           ("pool", "b" * 64, "toy:train"), ("pool", "a" * 64, "toy:test")]:
        features(net, ds, kind, sha, key, cache_dir=tmp_path)
    assert len(counted) == 4
    assert len(list(tmp_path.glob("*.npz"))) == 4
    assert cache_key("a", "toy:train", "pool", 4) != cache_key("a", "toy:train", "pool", 5)


def test_files_are_complete_npz_only(net, tmp_path):
    ds = Images(np.zeros(4, dtype=np.int64))
    features(net, ds, "res5_2x2", cache_dir=tmp_path)
    [path] = [p for p in tmp_path.iterdir() if p.suffix != ".lock"]  # no temporary file left behind
    assert path.name == f"{cache_key('a' * 64, 'toy:train', 'res5_2x2', 4)}.npz"
    with np.load(path) as f:
        assert f["features"].shape == (4, 4 * 512)


def test_default_cache_dir(net, tmp_path, monkeypatch):
    monkeypatch.setenv("PCL_BENCH_CACHE", str(tmp_path))
    features(net, Images(np.zeros(2, dtype=np.int64)))
    assert sorted(p.suffix for p in (tmp_path / "features").iterdir()) == [".lock", ".npz"]


def test_multi_label_targets_are_kept(net, tmp_path):
    voc = np.random.default_rng(0).choice([1, -1, 0], size=(5, 20)).astype(np.int64)
    for _ in range(2):  # extracted, then read back from the cache
        _, targets = features(net, Images(voc), cache_dir=tmp_path)
        assert targets.dtype == np.int64
        np.testing.assert_array_equal(targets, voc)


def test_places_is_the_mean_of_each_quadrant():
    maps = torch.randn(2, 8, 4, 4)
    quadrants = maps.reshape(2, 8, 2, 2, 2, 2).mean(dim=(3, 5))  # (N, C, row block, column block)
    torch.testing.assert_close(places_features(MapsOnly(), maps), quadrants.flatten(1))


def test_res5_2x2_is_goyal_avgpool_6_stride_1_at_7x7():
    maps = torch.randn(2, 8, 7, 7)
    expected = torch.stack([maps[:, :, i:i + 6, j:j + 6].mean(dim=(2, 3)) for i in (0, 1) for j in (0, 1)], -1)
    torch.testing.assert_close(res5_2x2_features(MapsOnly(), maps), expected.flatten(1))
    with pytest.raises(UsageError, match="at least 2 x 2"):
        res5_2x2_features(MapsOnly(), torch.randn(1, 8, 1, 1))


def test_unknown_kind(net, tmp_path):
    with pytest.raises(UsageError, match="unknown feature kind 'conv4'"):
        features(net, Images(np.zeros(2, dtype=np.int64)), "conv4", cache_dir=tmp_path)


def test_changed_data_or_weights_are_never_served_from_the_cache(tmp_path):
    """The runner's keys hash the data's files and a random encoder's weights: a regenerated or edited dataset,
    or another initialisation under the same name, gets its own entry."""
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "train" / cls / "0.png")
    before = fingerprint(build_dataset("imagefolder", tmp_path, "train"))
    Image.new("RGB", (8, 8), (200, 20, 30)).save(tmp_path / "train" / "a" / "0.png")
    os.utime(tmp_path / "train" / "a" / "0.png", ns=(1, 1))  # same size, another time: another key
    assert fingerprint(build_dataset("imagefolder", tmp_path, "train")) != before
    net, info = load_encoder("random:resnet18")
    assert info["sha256"] == weights_sha256(net)
    torch.nn.init.zeros_(net.conv1.weight)
    assert weights_sha256(net) != info["sha256"]
