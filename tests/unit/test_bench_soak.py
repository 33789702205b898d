"""The soak's verdict: no error, and the gate's RSS at the end within 10% of its post-warm-up level."""

from __future__ import annotations

from llama_launcher.bench.soak import SoakResult, judge, render, warmup_seconds


def _result(samples: list[int], *, errors: int = 0, completed: int = 100) -> SoakResult:
    result = SoakResult(streams=32, seconds=30.0, completed=completed, errors=errors, chunks=1000,
                        samples=[(float(t), rss) for t, rss in enumerate(samples)])
    judge(result, warmup=5.0)
    return result


def test_warmup_is_a_tenth_of_the_run_within_5_and_60_seconds() -> None:
    assert (warmup_seconds(30), warmup_seconds(300), warmup_seconds(6000)) == (5.0, 30.0, 60.0)


def test_levels_are_medians_of_three_after_warmup() -> None:
    result = _result([10, 20, 30, 40, 50, 1000, 1010, 990, 1005, 1020, 1030, 1040])
    assert (result.rss_warm_kib, result.rss_end_kib, result.rss_max_kib) == (1000, 1030, 1040)
    assert result.passed


def test_growth_past_ten_percent_fails() -> None:
    result = _result([0, 0, 0, 0, 0, 1000, 1000, 1000, 1050, 1111, 1120, 1130])
    assert not result.passed
    assert "(+12.0%, max 1130 KiB): FAIL" in render(result)


def test_any_error_fails() -> None:
    assert not _result([1000] * 12, errors=1).passed


def test_a_run_too_short_to_judge_fails() -> None:
    result = _result([1000] * 6)
    assert result.rss_growth is None
    assert not result.passed
