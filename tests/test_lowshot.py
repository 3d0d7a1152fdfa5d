"""Low-shot SVM protocols on small synthetic features: sampling, seeding, SVM scores, parallel = serial."""
from __future__ import annotations

import numpy as np
import pytest

from pcl_bench.eval.lowshot import (
    fit_linear_svm,
    goyal_costs,
    l2_normalize,
    run_lowshot_places,
    run_lowshot_voc,
    sample_goyal,
    sample_pcl,
    select_cost,
)
from pcl_bench.eval.voc_ap import classification_ap
from pcl_bench.runtime.errors import UsageError

N, D, C = 200, 16, 4


def voc_like(seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label targets (N, C) in {1, -1, 0} and features: one-hot sum of present classes in the first C
    dims (class c present <=> dim c > 0 when noise is 0), noise elsewhere and, scaled, on the first C dims."""
    rng = np.random.default_rng(seed)
    present = rng.random((N, C)) < 0.3
    present[np.arange(N), rng.integers(0, C, N)] = True
    targets = np.where(present, 1, -1)
    targets[~present & (rng.random((N, C)) < 0.1)] = 0  # difficult, without the class in the features
    feats = rng.normal(size=(N, D)) * 0.1
    feats[:, :C] = present + noise * rng.normal(size=(N, C))
    return feats, targets


SEP_X, SEP_T = voc_like(0, noise=0.0)
SEP_X_TEST, SEP_T_TEST = voc_like(1, noise=0.0)
NOISY_X, NOISY_T = voc_like(2, noise=0.8)
NOISY_X_TEST, NOISY_T_TEST = voc_like(3, noise=0.8)


def test_l2_normalize_and_goyal_grid():
    x = l2_normalize(np.array([[3.0, 4.0]]))
    np.testing.assert_allclose(x, [[3 / (5 + 1e-5), 4 / (5 + 1e-5)]])
    grid = goyal_costs((0.5, 0.0625))
    assert len(grid) == 17 and grid[:2] == (0.5, 0.0625) and grid[-1] == 0.5 ** 19


def test_pcl_sampler_k_positives_per_class_reproducible():
    for k in (1, 4):
        idx = sample_pcl(SEP_T, k, np.random.default_rng(7))
        assert idx.shape == (C * k,)
        for c in range(C):
            block = idx[c * k:(c + 1) * k]
            assert len(set(block)) == k and (SEP_T[block, c] == 1).all()
        np.testing.assert_array_equal(idx, sample_pcl(SEP_T, k, np.random.default_rng(7)))
    assert not np.array_equal(sample_pcl(SEP_T, 4, np.random.default_rng(0)),
                              sample_pcl(SEP_T, 4, np.random.default_rng(1)))


def test_goyal_sampler_k_positives_19k_negatives_no_difficult():
    k = 2
    sets = sample_goyal(SEP_T, k, np.random.default_rng(0))
    assert len(sets) == C
    for c, (rows, y) in enumerate(sets):
        assert rows.shape == y.shape == (20 * k,) and len(set(rows)) == 20 * k
        np.testing.assert_array_equal(y, [1] * k + [-1] * 19 * k)
        np.testing.assert_array_equal(SEP_T[rows, c], y)  # never a difficult (0) row
    assert not all(np.array_equal(sets[0][0], s[0]) for s in sets[1:])  # classes draw independently


@pytest.mark.parametrize("variant,full", [("pcl", True), ("goyal", False)])
def test_separable_features_give_ap_100(variant, full):
    runs = 2 if variant == "pcl" else 1  # the Goyal grid makes 17 x 3 CV fits per class
    results = run_lowshot_voc(SEP_X, SEP_T, SEP_X_TEST, SEP_T_TEST, ks=(4,), runs=runs, variant=variant,
                              full=full, n_jobs=1)
    assert [r["setting"] for r in results] == ["k=4", "full"][:len(results)]
    for r in results:
        assert r["mean"] == pytest.approx(100.0) and r["variant"] == variant
    assert results[0]["seeds"] == list(range(runs)) and len(results[0]["per_run_map"]) == runs
    if full:
        assert results[1]["seeds"] == [] and len(results[1]["per_run_map"]) == 1


def test_difficult_is_negative_in_pcl_and_ignored_in_goyal():
    """Test images marked difficult for a class but showing it: PCL ranks them as false positives."""
    test_t = SEP_T_TEST.copy()
    shown = np.flatnonzero(test_t[:, 0] == 1)[:5]
    test_t[shown, 0] = 0
    pcl, goyal = (run_lowshot_voc(SEP_X, SEP_T, SEP_X_TEST, test_t, ks=(), variant=v, n_jobs=1)[0]
                  for v in ("pcl", "goyal"))
    assert pcl["per_class_ap"]["0"][0] < 100 and pcl["per_class_ap"]["1"][0] == pytest.approx(100)
    assert goyal["per_class_ap"]["0"][0] == pytest.approx(100)


def test_result_equals_straightforward_loop():
    """Run 1 of k=2 (seed 3 + 1) rebuilt by hand from the sampler and one fit per class."""
    result = run_lowshot_voc(NOISY_X, NOISY_T, NOISY_X_TEST, NOISY_T_TEST, ks=(2,), runs=2, seed=3,
                             full=False, n_jobs=1, eleven_point=True)[0]
    assert result["seeds"] == [3, 4] and result["ap"] == "11-point"
    idx = sample_pcl(NOISY_T, 2, np.random.default_rng([4, 2]))
    x, x_test = l2_normalize(NOISY_X), l2_normalize(NOISY_X_TEST)
    aps = []
    for c in range(C):
        w, b = fit_linear_svm(x[idx], np.where(NOISY_T[idx, c] == 1, 1, -1), 0.5)
        aps.append(100 * classification_ap(x_test @ w + b, NOISY_T_TEST[:, c], eleven_point=True))
    assert result["per_run_map"][1] == pytest.approx(np.mean(aps), abs=1e-12)
    assert result["per_run_map"][0] != result["per_run_map"][1]


def test_parallel_equals_serial_and_cv_ignores_test_labels():
    kwargs = {"ks": (2,), "runs": 2, "seed": 5, "costs": (0.01, 10.0), "full": False}
    serial = run_lowshot_voc(NOISY_X, NOISY_T, NOISY_X_TEST, NOISY_T_TEST, n_jobs=1, **kwargs)
    parallel = run_lowshot_voc(NOISY_X, NOISY_T, NOISY_X_TEST, NOISY_T_TEST, n_jobs=2, **kwargs)
    assert serial == parallel
    chosen = {cost for r in serial for runs in r["chosen_costs"].values() for cost in runs}
    assert chosen == {0.01, 10.0}  # CV chose per class, not always the first cost
    shuffled = NOISY_T_TEST[np.random.default_rng(0).permutation(N)]
    other = run_lowshot_voc(NOISY_X, NOISY_T, NOISY_X_TEST, shuffled, n_jobs=1, **kwargs)
    assert [r["chosen_costs"] for r in other] == [r["chosen_costs"] for r in serial]
    assert [r["mean"] for r in other] != [r["mean"] for r in serial]


def test_select_cost_falls_back_to_first_cost_with_one_positive():
    y = np.array([1] + [-1] * 19)
    assert select_cost(l2_normalize(NOISY_X[:20]), y, (0.25, 1.0, 4.0)) == 0.25


def test_bad_arguments():
    args = (SEP_X, SEP_T, SEP_X_TEST, SEP_T_TEST)
    with pytest.raises(UsageError, match="variant"):
        run_lowshot_voc(*args, variant="vissl")
    for k in (0, 1.5, int((SEP_T == 1).sum(axis=0).min()) + 1):
        with pytest.raises(UsageError, match="k="):
            run_lowshot_voc(*args, ks=(k,))
    with pytest.raises(UsageError, match="k="):  # 19k negatives do not fit
        run_lowshot_voc(*args, ks=(10,), variant="goyal")
    with pytest.raises(UsageError, match="costs"):
        run_lowshot_voc(*args, costs=())
    with pytest.raises(UsageError, match="labels"):
        run_lowshot_voc(SEP_X, SEP_T[:-1], SEP_X_TEST, SEP_T_TEST)
    with pytest.raises(UsageError, match="VOC labels"):
        run_lowshot_voc(SEP_X, SEP_T + 1, SEP_X_TEST, SEP_T_TEST)


def test_places_top1():
    rng = np.random.default_rng(0)
    train_y, test_y = rng.integers(0, C, N), rng.integers(0, C, 80)
    train_x = np.eye(D)[train_y] + 0.05 * rng.normal(size=(N, D))
    test_x = np.eye(D)[test_y] + 0.05 * rng.normal(size=(80, D))
    results = run_lowshot_places(train_x, train_y, test_x, test_y, ks=(1, 2), runs=2, n_jobs=1)
    assert [r["setting"] for r in results] == ["k=1", "k=2"]
    assert all(r["per_run_top1"] == [100.0, 100.0] and r["seeds"] == [0, 1] for r in results)
    with pytest.raises(UsageError, match="k="):
        run_lowshot_places(train_x, train_y, test_x, test_y, ks=(N,))
    with pytest.raises(UsageError, match="labels"):
        run_lowshot_places(train_x, train_y.astype(float), test_x, test_y)
