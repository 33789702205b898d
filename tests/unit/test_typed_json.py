"""The one checker of JSON against a TypedDict: each type it understands, and the field it names."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

import pytest

from llama_direct.typed_json import MalformedDocument, check_document, parse_document


class Inner(TypedDict):
    flag: bool


class Sample(TypedDict):
    count: int
    ratio: float
    kind: Literal["a", 1]
    name: str | None
    pairs: list[tuple[str, int]]
    table: dict[str, Inner]
    anything: object
    later: NotRequired[list[str]]


GOOD: dict[str, Any] = {"count": 1, "ratio": 2, "kind": "a", "name": None, "pairs": [["x", 1]],
                        "table": {"k": {"flag": False}}, "anything": {"free": [1]}}


def test_a_document_of_its_definition_comes_back_as_it_is() -> None:
    assert check_document(GOOD, Sample, name="sample") == GOOD
    assert parse_document(b'{"flag": true}', Inner, name="inner") == {"flag": True}
    assert check_document({**GOOD, "later": ["y"], "kind": 1}, Sample, name="s")["later"] == ["y"]


@pytest.mark.parametrize(("change", "message"), [
    ({"count": True}, "sample: count must be an integer"),
    ({"count": 1.0}, "sample: count must be an integer"),
    ({"ratio": False}, "sample: ratio must be a number"),
    ({"kind": True}, 'sample: kind must be "a" or 1'),
    ({"kind": "b"}, 'sample: kind must be "a" or 1'),
    ({"name": 3}, "sample: name must be a string or null"),
    ({"pairs": [["x", "1"]]}, "sample: pairs[0][1] must be an integer"),
    ({"pairs": [["x", 1, 2]]}, "sample: pairs[0] must hold 2 items"),
    ({"pairs": {"x": 1}}, "sample: pairs must be an array"),
    ({"table": {"k": {"flag": "no"}}}, "sample: table.k.flag must be true or false"),
    ({"table": {"k": {}}}, "sample: table.k lacks flag"),
    ({"table": []}, "sample: table must be an object"),
    ({"later": [1]}, "sample: later[0] must be a string"),
    ({"extra": 1, "more": 2}, "sample has unknown fields: extra, more"),
])
def test_each_wrong_field_is_named_never_its_value(change: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedDocument) as caught:
        check_document({**GOOD, **change}, Sample, name="sample")
    assert str(caught.value) == message


@pytest.mark.parametrize("body", [b"", b"{", b"\xff", b"[" * 100_000])
def test_bytes_that_are_no_json_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedDocument, match=r"^inner is not JSON$"):
        parse_document(body, Inner, name="inner")
