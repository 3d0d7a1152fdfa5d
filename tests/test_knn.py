"""Weighted kNN classifier against a brute-force numpy implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcl_bench.eval.knn import knn_accuracy, knn_predict


def brute_force(train: np.ndarray, labels: np.ndarray, test: np.ndarray, k: int, t: float, c: int) -> np.ndarray:
    """One test point at a time: cosine sims, top-k, weights exp(s/t), class sums, argmax."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    preds = []
    for f in test:
        s = train @ (f / np.linalg.norm(f))
        top = np.argsort(-s)[: min(k, len(train))]
        votes = np.zeros(c)
        for j in top:
            votes[labels[j]] += np.exp(s[j] / t)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


@pytest.mark.parametrize("k,t,chunk", [(1, 0.07, 5), (5, 0.07, 7), (20, 0.5, 4), (60, 0.1, 1000), (7, 1.0, 1)])
def test_knn_predict_matches_brute_force(k, t, chunk):
    """knn_predict equals the loop implementation for several k, t and chunk sizes (k=60 > N clips to N)."""
    rng = np.random.default_rng(k)
    train = rng.normal(size=(50, 6)).astype(np.float32)
    labels = rng.integers(0, 4, size=50)
    test = rng.normal(size=(23, 6)).astype(np.float32)
    expected = brute_force(train.astype(np.float64), labels, test.astype(np.float64), k, t, 4)
    got = knn_predict(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(test), k=k, t=t,
                      num_classes=4, chunk=chunk)
    assert got.shape == (23,)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_knn_predict_unnormalised_inputs():
    """Scaling features does not change predictions (they are L2-normalised inside)."""
    rng = np.random.default_rng(0)
    train, test = torch.randn(30, 4), torch.randn(9, 4)
    labels = torch.from_numpy(rng.integers(0, 3, size=30))
    a = knn_predict(train, labels, test, k=5, t=0.1)
    b = knn_predict(train * 7.0, labels, test * 0.01, k=5, t=0.1)
    assert torch.equal(a, b)


def test_knn_weighted_vote_beats_majority():
    """Two far neighbours of class 0 lose to one very close neighbour of class 1 when t is small."""
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([1, 0, 0])
    test = torch.tensor([[1.0, 0.1]])
    # weights: class 1 exp(0.995/0.1) ~ 2.1e4; class 0 2 exp(0.0995/0.1) ~ 5.4
    assert knn_predict(train, labels, test, k=3, t=0.1).tolist() == [1]
    # with t = 100 the weights are ~1 each: the majority (class 0) wins
    assert knn_predict(train, labels, test, k=3, t=100.0).tolist() == [0]


def test_knn_accuracy_separable():
    """Two well-separated classes: 100 % accuracy; all-wrong labels: 0 %."""
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    train_y, test_y = torch.arange(40) % 2, torch.arange(10) % 2
    train = centers[train_y] + 0.05 * torch.randn(40, 3, generator=g)
    test = centers[test_y] + 0.05 * torch.randn(10, 3, generator=g)
    assert knn_accuracy(train, train_y, test, test_y, k=5, t=0.07) == 100.0
    assert knn_accuracy(train, train_y, test, 1 - test_y, k=5, t=0.07) == 0.0
