"""Results over seeds: the mean and a 95% confidence interval per checkpoint, and paired tests between
checkpoints.

An evaluation grid scores each checkpoint once per seed (``pcl-bench eval grid --seeds 0,1,2``); a seed's
value is that evaluation's row (for low-shot: the mean of its runs). Over the n seeds of one checkpoint the
interval is the Student-t one, ``mean ± t(0.975, n-1) * s / sqrt(n)``. Two checkpoints scored with the same
seeds (the same data subsets, classifier initialisations and k-means starts) are compared with a two-sided
paired t-test over those seeds, at level ``alpha``, without a correction for the number of comparisons.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..runtime.atomic import write_text
from .report import format_value, pipe_table


def over_seeds(values: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group of ``by``: ``n`` seeds, their ``mean`` and the 95% interval's half-width ``ci95`` (NaN for one
    seed). ``values`` has the columns ``by``, ``seed`` and ``value``."""
    def summary(v: pd.Series) -> pd.Series:
        n = len(v)
        half = stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
        return pd.Series({"n": n, "mean": v.mean(), "ci95": half})
    out = values.groupby(by, sort=False)["value"].apply(summary).unstack()
    return out.astype({"n": int}).reset_index()


def paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value of ``a`` vs ``b`` (same seeds, shape (n,), n >= 2). Equal differences
    (no spread) give 0 if they are not all zero, else 1: the limit of the test as the spread vanishes."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if np.allclose(d, d[0], rtol=0, atol=1e-12):
        return 0.0 if abs(d[0]) > 1e-12 else 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def paired_tests(values: pd.DataFrame, by: list[str], unit: str = "checkpoint",
                 alpha: float = 0.05) -> pd.DataFrame:
    """For each group of ``by`` and each pair of ``unit`` values scored with at least two common seeds: ``a``,
    ``b``, the number of common seeds ``n``, the mean difference ``diff`` (a - b), the paired t-test's ``p`` and
    ``significant`` (p < alpha)."""
    found = []
    for group, rows in values.groupby(by, sort=False):
        per_unit = {u: r.set_index("seed")["value"] for u, r in rows.groupby(unit, sort=False)}
        for a, b in combinations(per_unit, 2):
            common = per_unit[a].index.intersection(per_unit[b].index)
            if len(common) < 2:
                continue
            x, y = per_unit[a][common].to_numpy(), per_unit[b][common].to_numpy()
            p = paired_p(x, y)
            found.append({**dict(zip(by, group if isinstance(group, tuple) else (group,))), "a": a, "b": b,
                          "n": len(common), "diff": float(np.mean(x - y)), "p": p, "significant": p < alpha})
    return pd.DataFrame(found, columns=[*by, "a", "b", "n", "diff", "p", "significant"])


def seed_table(values: pd.DataFrame, by: list[str], unit: str = "checkpoint", alpha: float = 0.05) -> pd.DataFrame:
    """One row per group of ``by``, one column per ``unit`` value with ``"mean ± ci95 (n)"``, and a column
    ``significant`` naming each pair that differs at ``alpha``, e.g. ``"a > b (p=0.012)"``."""
    summary = over_seeds(values, [*by, unit])
    tests = paired_tests(values, by, unit, alpha)
    units = list(dict.fromkeys(values[unit]))
    rows = []
    for group, g in summary.groupby(by, sort=False):
        key = dict(zip(by, group if isinstance(group, tuple) else (group,)))
        cells = {r[unit]: f"{format_value(r['mean'], r['ci95'], key.get('metric', ''))} ({r['n']})"
                 for _, r in g.iterrows()}
        marks = tests.loc[(tests[by] == pd.Series(key)).all(axis=1) & tests["significant"]] if len(tests) else tests
        pairs = [f"{t.a} {'>' if t.diff > 0 else '<'} {t.b} (p={t.p:.3f})" for t in marks.itertuples()]
        rows.append({**key, **{u: cells.get(u, "") for u in units}, "significant": "; ".join(pairs)})
    return pd.DataFrame(rows, columns=[*by, *units, "significant"])


def write_seed_tables(values: pd.DataFrame, by: list[str], stem: Path, unit: str = "checkpoint") -> str:
    """Write ``<stem>.md`` (:func:`seed_table`), ``<stem>.csv`` (:func:`over_seeds`) and ``<stem>_tests.csv``
    (:func:`paired_tests`); returns the markdown table."""
    table = pipe_table(seed_table(values, by, unit))
    write_text(over_seeds(values, [*by, unit]).to_csv(index=False), stem.with_suffix(".csv"))
    write_text(paired_tests(values, by, unit).to_csv(index=False), stem.with_name(stem.name + "_tests.csv"))
    write_text(table, stem.with_suffix(".md"))
    return table
