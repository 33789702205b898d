"""How many examples a property-based test draws: all of them in `make test`, a tenth in `make check`.

`make check` is the quick loop (under 2 minutes on an idle 2-core machine) and sets
`LLAMA_DIRECT_FUZZ=quick`; the full strength runs in `make test`, and so in CI, every time.
"""

from __future__ import annotations

import os

FUZZ_ENV = "LLAMA_DIRECT_FUZZ"


def examples(full: int) -> int:
    """`full`, or a tenth of it (at least 25) when the quick loop asked for less."""
    return max(full // 10, 25) if os.environ.get(FUZZ_ENV) == "quick" else full
