"""Low-shot linear-SVM evaluation on frozen features: VOC07 (mAP) and Places205 (top-1 accuracy).

Two VOC07 variants (docs/reference.md), features in, scores out:

- ``"pcl"`` (PCL / MoPro ``eval_svm_voc.py``): per class, k images with label 1 are drawn; the 20 draws are
  pooled (an image drawn for two classes appears twice) and every class's SVM trains on all C*k rows, label
  1 -> positive, anything else (absent or difficult) -> negative. Test AP counts difficult as negative.
- ``"goyal"`` (Goyal et al. 2019, VISSL, MMSelfSup): per class, independently, k rows with label 1 and 19*k
  rows with label -1; difficult rows are never drawn and are dropped from the test AP. Costs: the given ones
  plus 0.5^4 ... 0.5^19, chosen per class by 3-fold cross-validation on the training rows. (The original
  low-shot code picks one cost per k by *test* mAP; that selection is deliberately not offered here.)

"full" trains on all trainval rows, difficult as negative, in both variants (Goyal's full-data SVM does the
same); the variants then differ in the cost grid and the test AP. Settings shared by both (and the PCL
code): features L2-normalised as ``x / (||x|| + 1e-5)`` in float64; one binary SVM per class with C = cost,
class weight {1: 2, -1: 1}, squared hinge (L2-loss), L2 penalty, dual coordinate descent, tol 1e-4, at most
2000 iterations, score = decision value; all-point AP x100 (11-point on request).

Solver: scikit-learn's ``LinearSVC``, which wraps liblinear's dual coordinate descent and is what both
references call. ``liblinear-official`` was not used: its options have no iteration limit, and its
coordinate order comes from an unseeded libc ``rand()``, so refitting the same data in one process gives
different weights (~1e-6) and results would depend on the order of fits in a worker.
``LinearSVC(random_state=0)`` reseeds per fit, so each fit is a pure function of its inputs.

Seeds: run r of k uses ``numpy.random.default_rng([seed + r, k])``; the k settings and the runs are
independent draws, reproducible from the recorded ``seed + r``. Cost selection never sees test data.
Parallelism: every (setting, run, class) fit is one joblib task returning (w, b, cost); test scores and APs
are computed afterwards in the calling process, so ``n_jobs=1`` and ``n_jobs>1`` give identical numbers.
Workers are processes (joblib's default), not threads: scikit-learn's liblinear RNG is process-global.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from joblib import Parallel, delayed
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from ..runtime.errors import UsageError
from .voc_ap import classification_ap

VOC_CLASS_WEIGHT = {1: 2, -1: 1}
VARIANTS = ("pcl", "goyal")
GOYAL_NEG_PER_POS = 19
CV_FOLDS = 3


def l2_normalize(feats: np.ndarray) -> np.ndarray:
    """Rows of ``feats`` (N, D) divided by their L2 norm + 1e-5, as float64 (both references)."""
    feats = np.asarray(feats, dtype=np.float64)
    return feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-5)


def goyal_costs(costs: Sequence[float]) -> tuple[float, ...]:
    """The Goyal cost grid: ``costs`` followed by 0.5^4 ... 0.5^19 (``svm_helper.parse_cost_list``)."""
    return tuple(dict.fromkeys([*map(float, costs), *(0.5 ** p for p in range(4, 20))]))


def fit_linear_svm(x: np.ndarray, y: np.ndarray, cost: float,
                   class_weight: dict[int, int] | None = VOC_CLASS_WEIGHT) -> tuple[np.ndarray, float]:
    """Fit one binary linear SVM on x (n, D), y (n,) in {1, -1}; returns weights (D,) and bias.

    The score of a feature f is ``f @ w + b``. Settings as in PCL ``eval_svm_voc.py``.
    """
    svm = LinearSVC(C=cost, class_weight=class_weight, penalty="l2", loss="squared_hinge", dual=True,
                    tol=1e-4, max_iter=2000, intercept_scaling=1.0, random_state=0)
    svm.fit(x, y)
    return svm.coef_[0].copy(), float(svm.intercept_[0])


def select_cost(x: np.ndarray, y: np.ndarray, costs: Sequence[float],
                class_weight: dict[int, int] | None = VOC_CLASS_WEIGHT) -> float:
    """The cost with the best mean AP over stratified folds of (x, y); the first one on ties.

    As Goyal's ``train_svm_kfold.py``: 3 unshuffled stratified folds, sklearn's (uninterpolated) AP. With
    fewer than 3 positives (or negatives) the folds shrink to that count; with 1 no split can hold a
    positive on both sides, and the first cost is returned.
    """
    folds = min(CV_FOLDS, int((y == 1).sum()), int((y != 1).sum()))
    if len(costs) == 1 or folds < 2:
        return float(costs[0])
    split = list(StratifiedKFold(n_splits=folds).split(x, y))
    # One BLAS thread, so fold scores do not depend on how many workers share the machine.
    with threadpool_limits(limits=1):
        mean_ap = [np.mean([_fold_ap(x, y, train, held_out, cost, class_weight) for train, held_out in split])
                   for cost in costs]
    return float(costs[int(np.argmax(mean_ap))])


def _fold_ap(x: np.ndarray, y: np.ndarray, train: np.ndarray, held_out: np.ndarray, cost: float,
             class_weight: dict[int, int] | None) -> float:
    """sklearn AP on the held-out rows of an SVM fitted on the train rows."""
    w, b = fit_linear_svm(x[train], y[train], cost, class_weight)
    return float(average_precision_score(y[held_out] == 1, x[held_out] @ w + b))


def fit_class_svm(x: np.ndarray, y: np.ndarray, costs: Sequence[float],
                  class_weight: dict[int, int] | None = VOC_CLASS_WEIGHT) -> tuple[np.ndarray, float, float]:
    """Choose the cost on (x, y) with :func:`select_cost`, then fit on all of it: (w (D,), b, cost)."""
    cost = select_cost(x, y, costs, class_weight)
    return (*fit_linear_svm(x, y, cost, class_weight), cost)


def sample_pcl(targets: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices (C*k,): for each class in order, k distinct rows with label 1 (PCL ``voc.py``)."""
    return np.concatenate([rng.choice(np.flatnonzero(targets[:, c] == 1), k, replace=False)
                           for c in range(targets.shape[1])])


def sample_goyal(targets: np.ndarray, k: int,
                 rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class: (rows (20k,), labels (20k,)): k rows with label 1, then 19k with label -1, labels +-1."""
    sets = []
    for c in range(targets.shape[1]):
        pos = rng.choice(np.flatnonzero(targets[:, c] == 1), k, replace=False)
        neg = rng.choice(np.flatnonzero(targets[:, c] == -1), GOYAL_NEG_PER_POS * k, replace=False)
        sets.append((np.concatenate([pos, neg]), np.repeat([1, -1], [k, GOYAL_NEG_PER_POS * k])))
    return sets


def _voc_training_sets(targets: np.ndarray, k: int | None, rng: np.random.Generator | None,
                       variant: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class (rows, labels +-1) for one run; ``k=None`` is the full set, difficult as negative."""
    if variant == "goyal" and k is not None:
        return sample_goyal(targets, k, rng)
    rows = np.arange(len(targets)) if k is None else sample_pcl(targets, k, rng)
    return [(rows, np.where(targets[rows, c] == 1, 1, -1)) for c in range(targets.shape[1])]


def max_k(targets: np.ndarray, variant: str, classes: Sequence[str] | None = None) -> tuple[int, str]:
    """The largest k that training ``targets`` allow, and why: (N, C) VOC labels (variant "pcl" or "goyal")
    or (N,) class labels; ``classes`` names the classes in the reason."""
    targets = np.asarray(targets)
    if targets.ndim == 2:
        n_pos = (targets == 1).sum(axis=0)
        limits = n_pos if variant != "goyal" else np.minimum(n_pos, (targets == -1).sum(axis=0) // GOYAL_NEG_PER_POS)
        what = "training positives" if variant != "goyal" else "training positives (or 19 x that in negatives)"
    else:
        limits = np.bincount(targets, minlength=int(targets.max()) + 1)
        what = "training images"
    c = int(np.argmin(limits))
    name = classes[c] if classes is not None else str(c)
    return int(limits[c]), f"class {name!r} has {int(limits[c])} {what}"


def _check_ks(ks: Sequence[int], runs: int, seed: int, costs: Sequence[float], n_max: int,
              what: str) -> None:
    """Raise UsageError unless 1 <= k <= n_max for every k, runs >= 1, seed >= 0 and costs are positive."""
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_max:
            raise UsageError(f"k={k!r}: k must be an integer from 1 to {n_max} ({what}); pass smaller ks")
    if runs < 1 or seed < 0:
        raise UsageError(f"runs={runs}, seed={seed}: need runs >= 1 and seed >= 0")
    if not costs or min(costs) <= 0:
        raise UsageError(f"costs={tuple(costs)}: pass one or more positive SVM costs, e.g. (0.5,)")


def _check_features(train_feats: np.ndarray, train_y: np.ndarray, test_feats: np.ndarray,
                    test_y: np.ndarray) -> None:
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise UsageError(f"features {train_feats.shape} (train) and {test_feats.shape} (test) must be (N, D) "
                         "with one D; extract both with the same model")
    if len(train_y) != len(train_feats) or len(test_y) != len(test_feats):
        raise UsageError(f"{len(train_feats)}/{len(test_feats)} train/test features but {len(train_y)}/"
                         f"{len(test_y)} labels; pass one label row per feature row")


def _summary(per_run: list[float], seeds: list[int], setting: str, costs: Sequence[float]) -> dict:
    return {"setting": setting, "seeds": seeds, "mean": float(np.mean(per_run)),
            "std": float(np.std(per_run)), "costs": list(costs)}


def run_lowshot_voc(train_feats: np.ndarray, train_targets: np.ndarray, test_feats: np.ndarray,
                    test_targets: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8, 16), runs: int = 5,
                    seed: int = 0, variant: str = "pcl", costs: Sequence[float] = (0.5,), full: bool = True,
                    n_jobs: int = -1, classes: Sequence[str] | None = None,
                    eleven_point: bool = False) -> list[dict]:
    """VOC07 low-shot (and full) SVM mAP, one result dict per k in ``ks`` and then "full".

    Args:
        train_feats, test_feats: (N, D) and (M, D) features (normalised here).
        train_targets, test_targets: (N, C) and (M, C) VOC labels in {1, -1, 0} (0 = difficult).
        ks: images per class; runs: draws per k (the full setting has one run and no draw).
        variant: "pcl" or "goyal" (module docstring). costs: SVM costs; the Goyal variant extends them with
            :func:`goyal_costs`; with several, each class picks by CV on its training rows.
        n_jobs: joblib workers (-1 = all cores); results do not depend on it.
        classes: C class names (default "0".."C-1"). eleven_point: VOC07 11-point AP instead of all-point.

    Returns:
        ``{"setting": "k=1" | "full", "per_run_map": [mAP x100 per run], "seeds": [seed + r], "per_class_ap":
        {class: (AP x100 mean, std over runs)}, "chosen_costs": {class: [cost per run]}, "mean", "std" (ddof 0),
        "variant", "costs": grid searched, "ap": "all-point" | "11-point"}``.
    """
    if variant not in VARIANTS:
        raise UsageError(f"variant={variant!r}: choose one of {', '.join(VARIANTS)}")
    train_targets, test_targets = np.asarray(train_targets), np.asarray(test_targets)
    train_x, test_x = l2_normalize(train_feats), l2_normalize(test_feats)
    _check_features(train_x, train_targets, test_x, test_targets)
    if train_targets.ndim != 2 or test_targets.shape[1:] != train_targets.shape[1:] or not all(
            np.isin(t, (-1, 0, 1)).all() for t in (train_targets, test_targets)):
        raise UsageError("targets must be (N, C) VOC labels in {1, -1, 0} with the same C for train and test")
    n_classes = train_targets.shape[1]
    classes = [str(c) for c in range(n_classes)] if classes is None else list(classes)
    if len(classes) != n_classes:
        raise UsageError(f"{len(classes)} class names for {n_classes} target columns")
    n_pos = int((train_targets == 1).sum(axis=0).min())
    n_neg = int((train_targets == -1).sum(axis=0).min())
    n_max = n_pos if variant == "pcl" else min(n_pos, n_neg // GOYAL_NEG_PER_POS)
    _check_ks(ks, runs, seed, costs, n_max, f"{variant} variant, fewest training positives/negatives")
    grid = goyal_costs(costs) if variant == "goyal" else tuple(map(float, costs))

    plan = [(f"k={k}", k, [seed + r for r in range(runs)]) for k in ks]
    plan += [("full", None, [])] if full else []
    jobs = []  # (setting index, per-class training sets of one run)
    for s, (_, k, seeds) in enumerate(plan):
        for run_seed in seeds or [None]:
            rng = None if k is None else np.random.default_rng([run_seed, k])
            jobs.append((s, _voc_training_sets(train_targets, k, rng, variant)))
    fits = Parallel(n_jobs=n_jobs)(delayed(fit_class_svm)(train_x[rows], y, grid)
                                   for _, sets in jobs for rows, y in sets)

    results = []
    for s, (setting, _, seeds) in enumerate(plan):
        per_run_ap, chosen = [], []
        for j, (js, _) in enumerate(jobs):
            if js != s:
                continue
            w, b, cost = zip(*fits[j * n_classes:(j + 1) * n_classes])
            scores = test_x @ np.stack(w, axis=1) + np.array(b)
            per_run_ap.append([100 * classification_ap(scores[:, c], test_targets[:, c],
                                                       ignore_difficult=variant == "goyal",
                                                       eleven_point=eleven_point)
                               for c in range(n_classes)])
            chosen.append(cost)
        per_run_ap = np.array(per_run_ap)
        per_run_map = [float(m) for m in per_run_ap.mean(axis=1)]
        results.append(_summary(per_run_map, seeds, setting, grid) | {
            "per_run_map": per_run_map, "variant": variant,
            "per_class_ap": {name: (float(m), float(sd)) for name, m, sd in
                             zip(classes, per_run_ap.mean(axis=0), per_run_ap.std(axis=0))},
            "chosen_costs": {name: [float(run[c]) for run in chosen] for c, name in enumerate(classes)},
            "ap": "11-point" if eleven_point else "all-point"})
    return results


def run_lowshot_places(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                       test_labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8, 16), runs: int = 5,
                       seed: int = 0, costs: Sequence[float] = (0.5,), n_jobs: int = -1) -> list[dict]:
    """Places205 low-shot top-1 accuracy (MoPro ``lowshot_svm.py``), one result dict per k.

    Args:
        train_feats, test_feats: (N, D) and (M, D) features; train_labels, test_labels: (N,), (M,) in 0..C-1.
        ks, runs, seed, n_jobs: as :func:`run_lowshot_voc`; run r of k draws k images per class with
            ``default_rng([seed + r, k])``.
        costs: SVM costs; with several, each class's SVM picks by CV AP on the sampled images.

    One-vs-rest linear SVMs (one per class, no class weights, otherwise the VOC settings); the prediction
    is the class of highest score. MoPro fits one multi-class ``LinearSVC``, which liblinear also solves
    one-vs-rest; the per-class fits here agree with it up to the solver tolerance.

    Returns:
        ``{"setting": "k=1", "per_run_top1": [accuracy x100 per run], "seeds", "mean", "std" (ddof 0),
        "costs", "chosen_costs": [[cost per class] per run]}``.
    """
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    train_x, test_x = l2_normalize(train_feats), l2_normalize(test_feats)
    _check_features(train_x, train_labels, test_x, test_labels)
    n_classes = int(train_labels.max()) + 1
    if not all(np.issubdtype(t.dtype, np.integer) for t in (train_labels, test_labels)) or \
            train_labels.min() < 0 or not np.isin(test_labels, np.arange(n_classes)).all():
        raise UsageError(f"labels must be integers in 0..{n_classes - 1} and every test label a train class")
    counts = np.bincount(train_labels, minlength=n_classes)
    _check_ks(ks, runs, seed, costs, int(counts.min()), "fewest training images in a class")
    costs = tuple(map(float, costs))

    jobs = []  # (k index, sampled rows)
    for i, k in enumerate(ks):
        for r in range(runs):
            rng = np.random.default_rng([seed + r, k])
            rows = np.concatenate([rng.choice(np.flatnonzero(train_labels == c), k, replace=False)
                                   for c in range(n_classes)])
            jobs.append((i, rows))
    fits = Parallel(n_jobs=n_jobs)(
        delayed(fit_class_svm)(train_x[rows], np.where(train_labels[rows] == c, 1, -1), costs, None)
        for _, rows in jobs for c in range(n_classes))

    results = []
    for i, k in enumerate(ks):
        accuracy, chosen = [], []
        for j, (ji, _) in enumerate(jobs):
            if ji != i:
                continue
            w, b, cost = zip(*fits[j * n_classes:(j + 1) * n_classes])
            pred = np.argmax(test_x @ np.stack(w, axis=1) + np.array(b), axis=1)
            accuracy.append(float(100 * np.mean(pred == test_labels)))
            chosen.append([float(c) for c in cost])
        seeds = [seed + r for r in range(runs)]
        results.append(_summary(accuracy, seeds, f"k={k}", costs) | {"per_run_top1": accuracy,
                                                                       "chosen_costs": chosen})
    return results
