"""The interval arithmetic that tune and the release gate rest on, against textbook values."""

import numpy as np
import pytest

from generator.measure import intervals


def test_wilson_matches_the_textbook_interval():
    # 95 of 100: the Wilson 95% interval is 0.8883 .. 0.9785 (Newcombe 1998's formula).
    iv = intervals.wilson(95, 100)
    assert iv.estimate == pytest.approx(0.95)
    assert iv.low == pytest.approx(0.8883, abs=1e-3)
    assert iv.high == pytest.approx(0.9785, abs=1e-3)
    assert (iv.n, iv.method) == (100, "wilson")


def test_wilson_stays_inside_zero_and_one_and_narrows_with_more_requests():
    assert intervals.wilson(10, 10).high == 1.0
    assert intervals.wilson(0, 10).low == 0.0
    few, many = intervals.wilson(19, 20), intervals.wilson(950, 1000)
    assert many.high - many.low < few.high - few.low
    with pytest.raises(ValueError):
        intervals.wilson(3, 2)


@pytest.mark.parametrize("dof,expected", [(1, 12.706), (4, 2.776), (9, 2.262), (30, 2.042)])
def test_student_t_quantiles(dof, expected):
    assert intervals._t(0.95, dof) == pytest.approx(expected, abs=2e-3)


def test_across_runs_is_the_t_interval_of_the_mean():
    runs = [10.0, 12.0, 11.0, 13.0, 9.0]
    iv = intervals.across_runs(runs)
    half = 2.776 * np.std(runs, ddof=1) / np.sqrt(5)
    assert iv.estimate == pytest.approx(11.0)
    assert (iv.low, iv.high) == pytest.approx((11.0 - half, 11.0 + half), abs=1e-2)
    single = intervals.across_runs([7.0])
    assert (single.low, single.high, single.method) == (7.0, 7.0, "exact")


def test_bootstrap_percentile_is_seeded_and_covers_the_true_value():
    rng = np.random.default_rng(1)
    sample = rng.exponential(10.0, size=2000)
    a, b = intervals.percentile(sample, 95), intervals.percentile(sample, 95)
    assert a == b
    true_p95 = -10.0 * np.log(0.05)  # 29.96 for an exponential of mean 10
    assert a.contains(true_p95)
    assert a.low < a.estimate < a.high


def test_ratio_of_percentiles_finds_a_known_slowdown_and_no_change_on_equal_samples():
    rng = np.random.default_rng(2)
    base = rng.normal(100.0, 10.0, size=1500)
    slower = rng.normal(100.0, 10.0, size=1500) * 1.2
    same = rng.normal(100.0, 10.0, size=1500)
    slow = intervals.ratio_of_percentiles(base, slower, 95)
    assert slow.contains(1.2) and slow.above(1.05)
    equal = intervals.ratio_of_percentiles(base, same, 95)
    assert equal.contains(1.0)


@pytest.mark.parametrize("n,p", [(5, 60), (60, 95), (300, 99)])
def test_percentile_draws_have_the_distribution_of_resampled_percentiles(n, p):
    """The order-statistic shortcut against what it replaces: resampling n values and interpolating each resample."""
    values = np.random.default_rng(n).lognormal(3.0, 1.0, size=n)
    drawn = intervals.percentile_draws(values, p, 40_000, np.random.default_rng(1))
    picks = np.random.default_rng(2).integers(0, n, size=(40_000, n))
    resampled = np.percentile(values[picks], p, axis=-1)
    assert drawn.mean() == pytest.approx(resampled.mean(), rel=0.02)
    for q in (10, 50, 90):
        assert np.percentile(drawn, q) == pytest.approx(np.percentile(resampled, q), rel=0.03)
