"""Row i of the E-step features and im2cluster[index] both refer to dataset sample i (``pcl_reference.md`` §1.3-1.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pcl_bench.models.encoders import build_encoder
from pcl_bench.runtime import distributed as D
from pcl_bench.runtime.distributed import ShardSampler
from pcl_bench.train.e_step import compute_features

N = 11  # odd: two shards of 6 and 5


class IndexImages(Dataset):
    """Item i is (a constant 3x2x2 image of value i / N, target i % 3, i)."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        return torch.full((3, 2, 2), i / N), i % 3, i


class ValueEncoder(nn.Module):
    """Maps an image of constant value v to (1, v, v^2) (distinct directions for distinct v)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.mean(dim=(1, 2, 3))
        return torch.stack([torch.ones_like(v), v, v * v], dim=1)


def expected_features() -> torch.Tensor:
    v = torch.arange(N) / N
    return F.normalize(torch.stack([torch.ones_like(v), v, v * v], dim=1), dim=1)


def loader(rank: int = 0, world: int = 1, batch_size: int = 4) -> DataLoader:
    return DataLoader(IndexImages(), batch_size=batch_size, sampler=ShardSampler(N, rank, world))


def test_shard_sampler_covers_every_index_once():
    """World of 2: rank 0 and 1 shards are disjoint, unpadded, and together cover 0..N-1."""
    shards = [list(ShardSampler(N, r, 2)) for r in range(2)]
    assert shards == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]
    assert [len(ShardSampler(N, r, 2)) for r in range(2)] == [6, 5]
    assert sorted(shards[0] + shards[1]) == list(range(N))
    assert list(ShardSampler(N, 0, 1)) == list(range(N))


def test_compute_features_one_process():
    """features[i] is the normalised embedding of sample i; the encoder's train flag is restored."""
    enc = ValueEncoder().train()
    feats = compute_features(enc, loader(), N, torch.device("cpu"))
    assert feats.shape == (N, 3) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, expected_features())
    assert enc.training


def test_compute_features_two_simulated_ranks(monkeypatch):
    """Two ranks with shards 6 and 5: gathered by index with the pad row dropped, every row is its sample."""
    device = torch.device("cpu")
    monkeypatch.setattr(D, "world_size", lambda: 2)
    # Rank 1 first: record what it would contribute to each all_gather (features, then indices).
    contributed = []

    def record(x):
        contributed.append(x.clone())
        return torch.cat([x, x])

    monkeypatch.setattr(D, "all_gather", record)
    compute_features(ValueEncoder(), loader(rank=1, world=2, batch_size=2), N, device)
    assert contributed[1].tolist() == [1, 3, 5, 7, 9, -1]  # one pad row, index -1
    # Rank 0: its all_gather returns [rank 0 rows, rank 1 rows] in rank order.
    rank1 = iter(contributed)
    monkeypatch.setattr(D, "all_gather", lambda x: torch.cat([x, next(rank1)]))
    feats = compute_features(ValueEncoder(), loader(rank=0, world=2, batch_size=4), N, device)
    torch.testing.assert_close(feats, expected_features())


def test_training_index_looks_up_own_cluster():
    """A shuffled training loader's index gives im2cluster[index] = the cluster of that very image."""
    k = 4
    im2cluster = torch.arange(N) % k  # cluster of sample i by construction
    train = DataLoader(IndexImages(), batch_size=3, shuffle=True, drop_last=True,
                       generator=torch.Generator().manual_seed(0))
    seen = []
    for images, target, index in train:
        sample_id = (images.mean(dim=(1, 2, 3)) * N).round().long()  # decoded from the pixels
        assert torch.equal(index, sample_id)
        assert torch.equal(target, sample_id % 3)
        assert torch.equal(im2cluster[index], sample_id % k)
        seen += index.tolist()
    assert seen != sorted(seen)  # the loader did shuffle
    # And the E-step feature of im2cluster's row i is the feature of image i, the same image.
    feats = compute_features(ValueEncoder(), loader(), N, torch.device("cpu"))
    for i in seen:
        img = IndexImages()[i][0].unsqueeze(0)
        torch.testing.assert_close(feats[i], F.normalize(ValueEncoder()(img), dim=1)[0])


def test_bfloat16_feature_pass_is_close_to_float32():
    """--estep-amp: the encoder runs under bfloat16 autocast; the normalised features stay close to float32's."""
    torch.manual_seed(0)
    enc = build_encoder("resnet18", 128, stem="small")
    images = torch.randn(12, 3, 16, 16)
    loader = [(images[:8], torch.zeros(8), torch.arange(8)), (images[8:], torch.zeros(4), torch.arange(8, 12))]
    full = compute_features(enc, loader, 12, torch.device("cpu"))
    half = compute_features(enc, loader, 12, torch.device("cpu"), amp=True)
    assert half.dtype == torch.float32 and not torch.equal(full, half)
    assert (full * half).sum(dim=1).min() > 0.99  # cosine similarity of unit rows
