"""Percentiles, medians and ratios: what every figure in the benchmark's report is made of."""

from __future__ import annotations

import pytest

from llama_launcher.bench.stats import median, per_thousand, percentile, ratio


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == 25.0
    assert percentile(values, 99) == pytest.approx(39.7)


def test_percentile_does_not_depend_on_order() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.5], 99) == 7.5


def test_percentile_refuses_nothing_and_bad_q() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_median_of_even_count_is_the_mean_of_the_middle_two() -> None:
    assert median([1.0, 2.0, 4.0, 100.0]) == 3.0


def test_ratio_is_none_rather_than_wrong() -> None:
    assert ratio(99.0, 100.0) == 0.99
    assert ratio(None, 100.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None


def test_per_thousand_chunks() -> None:
    assert per_thousand(0.5, 2000) == 0.25
    assert per_thousand(0.5, 0) is None
