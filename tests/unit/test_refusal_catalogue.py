"""The refusal catalogue seen from its two readers: the error body and the page's `errors.ts`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from llama_direct import refusals

ERRORS_TS = Path(__file__).resolve().parents[2] / "frontend" / "src" / "errors.ts"


def test_every_body_names_its_code_beside_llama_servers_status() -> None:
    plain = [r for r in refusals.CATALOGUE.values() if "{" not in r.message.replace("{{", "")]
    assert len(plain) > 50
    for reason in plain:
        refusal = refusals.FrameworkError(reason)
        error = json.loads(refusal.to_body())["error"]
        assert error == {"message": refusal.message, "type": refusals.error_type(reason.status),
                         "code": reason.status, "reason": reason.code}


def test_the_page_maps_only_codes_the_catalogue_has() -> None:
    text = ERRORS_TS.read_text()
    lists = re.findall(r"const (?:TOKEN|IMAGE|UNAVAILABLE)_REASONS = \[(.*?)\] as const;", text, re.S)
    table = re.search(r"export const REASONS.*?\n\]\);", text, re.S)
    assert len(lists) == 3 and table is not None
    named = {code for block in lists for code in re.findall(r'"(\w+)"', block)}
    named |= set(re.findall(r'^\s+\["(\w+)", "\w+"\],$', table.group(0), re.M))
    assert named, "no code found in errors.ts"
    assert named <= set(refusals.CATALOGUE), sorted(named - set(refusals.CATALOGUE))
    assert {code for code, r in refusals.CATALOGUE.items() if r.status == 401} <= named
