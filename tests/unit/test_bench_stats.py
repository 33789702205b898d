"""Percentiles, medians and ratios: what every figure in the benchmark's report is made of."""

from __future__ import annotations

import pytest

from llama_launcher.bench.stats import median, paired_ratios, per_thousand, percentile, ratio


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


def test_paired_ratios_divide_round_by_round_not_median_by_median() -> None:
    # Each round ran on a faster or slower moment for both stacks; in every one, after is 10% over before.
    found = paired_ratios([1.1, 2.2, 1.21, 0.55], [1.0, 2.0, 1.1, 0.5])
    assert found is not None
    assert found["median"] == pytest.approx(1.1) and found["p25"] == pytest.approx(1.1)
    assert found["p75"] == pytest.approx(1.1) and found["rounds"] == 4
    spread = paired_ratios([0.9, 1.0, 1.2, 1.5], [1.0, 1.0, 1.0, 1.0])
    assert spread is not None
    assert (spread["median"], spread["p25"], spread["p75"]) == pytest.approx((1.1, 0.975, 1.275))


def test_paired_ratios_skip_an_empty_base_and_refuse_unequal_rounds() -> None:
    found = paired_ratios([1.0, 3.0], [0.0, 2.0])
    assert found is not None and found["median"] == 1.5 and found["rounds"] == 1
    assert paired_ratios([1.0], [0.0]) is None
    assert paired_ratios([], []) is None
    with pytest.raises(ValueError):
        paired_ratios([1.0, 2.0], [1.0])
