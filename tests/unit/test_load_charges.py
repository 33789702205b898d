"""The load limit counts loads: one charge per model going from unloaded to loading, never a token unused."""

from __future__ import annotations

from broker.models import LoadCharges, ModelInfo
from broker.sessions import RateLimiter

UNLOADED = (ModelInfo("smol", "loaded"), ModelInfo("beta", "unloaded"))
LOADING = (ModelInfo("smol", "loaded"), ModelInfo("beta", "loading"))
LOADED = (ModelInfo("smol", "unloaded"), ModelInfo("beta", "loaded"))


def test_only_an_unloaded_model_is_charged() -> None:
    loads = LoadCharges(window=40)
    assert not loads.should_charge("smol", UNLOADED)
    assert not loads.should_charge("beta", LOADING)
    assert not loads.should_charge("gamma", UNLOADED), "a model not listed is not a load"
    assert loads.should_charge("beta", UNLOADED)


def test_two_requests_for_one_load_charge_once() -> None:
    loads = LoadCharges(window=40)
    loads.record("ann", "beta", 100.0)
    assert not loads.should_charge("beta", UNLOADED), "ann's charge covers this load"
    assert loads.should_charge("smol", (ModelInfo("smol", "unloaded"),)), "another model is another load"


def test_a_load_that_happened_keeps_its_charge_and_the_next_load_is_charged_again() -> None:
    loads = LoadCharges(window=40)
    loads.record("ann", "beta", 100.0)
    assert loads.observe(LOADING, 101.0) == []
    assert loads.observe(UNLOADED, 500.0) == [], "settled: no refund, however long after"
    assert loads.should_charge("beta", UNLOADED), "evicted since: a new load"


def test_a_charge_whose_load_never_came_is_refunded_after_the_window() -> None:
    loads = LoadCharges(window=40)
    loads.record("ann", "beta", 100.0)
    assert loads.observe(UNLOADED, 139.0) == []
    assert not loads.should_charge("beta", UNLOADED)
    assert loads.observe(UNLOADED, 141.0) == ["ann"]
    assert loads.should_charge("beta", UNLOADED)
    assert loads.observe(UNLOADED, 999.0) == [], "refunded once"


def test_a_gate_that_lists_nothing_settles_nothing() -> None:
    loads = LoadCharges(window=40)
    loads.record("ann", "beta", 100.0)
    assert loads.observe((), 110.0) == []
    assert loads.observe(LOADED, 120.0) == [], "the load came while the gate was not answering"


def test_a_refund_gives_back_one_never_past_the_burst() -> None:
    limiter = RateLimiter(per_minute=1, burst=1)
    assert limiter.acquire("ann", 0.0) == 0
    assert limiter.acquire("ann", 1.0) > 0
    limiter.refund("ann")
    assert limiter.acquire("ann", 2.0) == 0
    limiter.refund("ann")
    limiter.refund("ann")
    assert limiter.acquire("ann", 3.0) == 0
    assert limiter.acquire("ann", 4.0) > 0, "two refunds did not lift the bucket past its burst"
    limiter.refund("bob")  # never charged: nothing to give back
    assert limiter.acquire("bob", 5.0) == 0 and limiter.acquire("bob", 6.0) > 0
