"""Aggregates and stratified bootstrap intervals, against rliable 1.2.0 (its last release,
frozen: the reference) and against hand-made numbers."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest

from dtmem.stats import iqm, stratified_bootstrap_ci, stratified_resamples


@pytest.fixture(scope="module")
def rliable():
    """rliable's ``library`` and ``metrics`` modules.

    rliable needs ``arch.bootstrap``; importing ``arch`` runs ``arch/__init__.py``, which
    imports ``arch.univariate``, which breaks on pandas 3 (``deprecate_kwarg`` changed its
    signature) though the bootstrap code never uses it. So ``arch`` is registered as a bare
    namespace over its own directory before rliable imports ``arch.bootstrap``; the bootstrap
    modules themselves load unchanged.
    """
    if "arch" not in sys.modules:
        spec = importlib.util.find_spec("arch")
        assert spec is not None and spec.submodule_search_locations is not None
        arch = types.ModuleType("arch")
        arch.__path__ = list(spec.submodule_search_locations)
        sys.modules["arch"] = arch
    from rliable import library, metrics

    return library, metrics


def _rliable_ci(rliable, scores: np.ndarray, statistic: str, seed: int, reps: int):
    """rliable's point estimate and 95% percentile interval of ``scores`` (runs, tasks)."""
    library, metrics = rliable
    func = {"mean": metrics.aggregate_mean, "iqm": metrics.aggregate_iqm}[statistic]
    np.random.seed(seed)  # rliable draws from numpy's global RandomState
    points, intervals = library.get_interval_estimates(
        {"arm": scores}, lambda x: np.array([func(x)]), reps=reps
    )
    return float(points["arm"][0]), float(intervals["arm"][0, 0]), float(intervals["arm"][1, 0])


@pytest.mark.parametrize(
    ("runs", "tasks", "statistic", "seed"),
    [(3, 5, "mean", 0), (3, 5, "iqm", 1), (7, 4, "iqm", 2), (5, 1, "mean", 3), (4, 13, "iqm", 4)],
)
def test_interval_equals_rliable_with_the_same_seed(rliable, runs, tasks, statistic, seed):
    scores = np.random.default_rng(100 + seed).uniform(0, 1, size=(runs, tasks))
    by_task = {f"task{t}": scores[:, t] for t in range(tasks)}
    ours = stratified_bootstrap_ci(by_task, statistic, num_resamples=500, seed=seed)
    point, low, high = _rliable_ci(rliable, scores, statistic, seed, reps=500)
    assert ours.point == pytest.approx(point, abs=1e-12)
    assert (ours.low, ours.high) == pytest.approx((low, high), abs=1e-12)
    assert ours.low < ours.high


def test_point_estimates_are_rliables_aggregates(rliable):
    _, metrics = rliable
    scores = np.random.default_rng(7).normal(size=(5, 9))
    by_task = {str(t): scores[:, t] for t in range(9)}
    assert stratified_bootstrap_ci(by_task, "iqm", num_resamples=10).point == pytest.approx(
        metrics.aggregate_iqm(scores)
    )
    assert stratified_bootstrap_ci(by_task, "mean", num_resamples=10).point == pytest.approx(
        metrics.aggregate_mean(scores)
    )


def test_resamples_stay_within_their_task():
    strata = [np.array([0.0, 1.0, 2.0]), np.array([10.0, 11.0, 12.0])]
    drawn = stratified_resamples(strata, num_resamples=50, seed=0)
    assert [d.shape for d in drawn] == [(50, 3), (50, 3)]
    assert set(np.unique(drawn[0])) <= {0.0, 1.0, 2.0}
    assert set(np.unique(drawn[1])) <= {10.0, 11.0, 12.0}
    ragged = stratified_resamples([np.array([1.0]), np.array([2.0, 3.0])], 40, seed=0)
    assert [d.shape for d in ragged] == [(40, 1), (40, 2)]
    assert (ragged[0] == 1.0).all() and set(np.unique(ragged[1])) == {2.0, 3.0}


def test_tasks_are_strata_not_resampled():
    # Each task's runs agree, so every replicate sees exactly the same task values: the
    # interval collapses to the point. Resampling tasks (or pooling runs) would not.
    by_task = {"a": [0.0, 0.0, 0.0], "b": [1.0, 1.0, 1.0], "c": [0.2, 0.2, 0.2]}
    for statistic in ("mean", "iqm"):
        ci = stratified_bootstrap_ci(by_task, statistic, num_resamples=200)
        assert ci.low == ci.point == ci.high


def test_unequal_run_counts_weight_tasks_equally_for_the_mean():
    # One missing seed: the mean is the mean of task means, not of the pooled runs.
    by_task = {"a": [1.0, 1.0, 1.0], "b": [0.0, 0.0]}
    ci = stratified_bootstrap_ci(by_task, "mean", num_resamples=100)
    assert (ci.point, ci.low, ci.high) == (0.5, 0.5, 0.5)
    pooled = stratified_bootstrap_ci({"a": [4.0, 0.0, 1.0], "b": [2.0, 3.0]}, "iqm")
    assert pooled.point == pytest.approx(iqm([4.0, 0.0, 1.0, 2.0, 3.0]))  # 5 values: 1, 2, 3


def test_seeded_and_narrowing_with_more_runs():
    rng = np.random.default_rng(5)
    few = {t: rng.normal(0, 1, size=3) for t in "ABCDE"}
    many = {t: rng.normal(0, 1, size=200) for t in "ABCDE"}
    ci = stratified_bootstrap_ci(few, "iqm", num_resamples=400, seed=3)
    assert stratified_bootstrap_ci(few, "iqm", num_resamples=400, seed=3) == ci
    assert stratified_bootstrap_ci(few, "iqm", num_resamples=400, seed=4) != ci
    wide = ci.high - ci.low
    narrow = stratified_bootstrap_ci(many, "iqm", num_resamples=400, seed=3)
    assert narrow.high - narrow.low < wide


def test_bad_input():
    with pytest.raises(ValueError, match="no tasks"):
        stratified_bootstrap_ci({})
    with pytest.raises(ValueError, match="b: no scores"):
        stratified_bootstrap_ci({"a": [1.0], "b": []})
    with pytest.raises(ValueError, match="confidence"):
        stratified_bootstrap_ci({"a": [1.0, 2.0]}, confidence=0.0)
    with pytest.raises(ValueError, match="statistic"):
        stratified_bootstrap_ci({"a": [1.0, 2.0]}, "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_resamples"):
        stratified_bootstrap_ci({"a": [1.0, 2.0]}, num_resamples=0)
