"""The synthetic upstream's pure choices: a request's pace and length."""

from __future__ import annotations

from llama_launcher.bench.synthetic import length_of, pace_of


def test_pace_comes_from_the_user_field() -> None:
    assert pace_of({"user": "bench-pace:250"}, 0.0) == 250.0
    assert pace_of({"user": "bench-pace:0.5"}, 0.0) == 0.5


def test_pace_falls_back_to_the_default() -> None:
    assert pace_of({}, 100.0) == 100.0
    assert pace_of({"user": "alice"}, 100.0) == 100.0
    assert pace_of({"user": "bench-pace:fast"}, 100.0) == 100.0
    assert pace_of({"user": 7}, 100.0) == 100.0


def test_negative_pace_means_as_fast_as_possible() -> None:
    assert pace_of({"user": "bench-pace:-3"}, 100.0) == 0.0


def test_length_takes_llama_servers_aliases_in_order() -> None:
    assert length_of({"max_tokens": 5, "n_predict": 9}) == 5
    assert length_of({"max_completion_tokens": 6}) == 6
    assert length_of({"n_predict": 7}) == 7
    assert length_of({"max_tokens": -1, "n_predict": 8}) == 8
    assert length_of({}) == 16
