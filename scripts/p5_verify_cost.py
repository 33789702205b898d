"""P5 (issue 18): µs per token check, before (PyJWT) and after (`llama_direct.jws`), in one run.

For each algorithm, rounds interleave four timings on the same minted token: the whole
`tokens.verify` (the core), the same check done the old way (header read, then PyJWT's `decode`
with the same options, then the claims), and the signature primitive alone as `cryptography` does
it. Medians of the rounds are printed, in µs.

    python scripts/p5_verify_cost.py [--rounds 15] [--number 2000]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any

import jwt

from broker.signing_keys import SigningKey
from llama_direct.keys import PublicKeySet
from llama_direct.tokens import REQUIRED_CLAIMS, Grant, _claims_from, mint, verify
from llama_launcher.bench.scenarios import signature_check_alone

_DECODER = jwt.PyJWT({"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                      "require": list(REQUIRED_CLAIMS), "strict_aud": True})


def pyjwt_verify(token: str, keys: PublicKeySet) -> dict[str, Any]:
    """The gate's check before issue 18: `_key_for` and PyJWT's `decode` (the claims built after are equal)."""
    segment = token.partition(".")[0]
    header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    algorithm, public_key = keys.keys[header["kid"]]
    payload: dict[str, Any] = _DECODER.decode(token, public_key, algorithms=(algorithm,), audience="aud",
                                              issuer="iss")
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    grant = Grant(routes=(("POST", "/v1/chat/completions"),), model="bench", max_tokens=64)
    cases: dict[str, dict[str, Callable[[], object]]] = {}
    for algorithm in ("ES256", "EdDSA"):
        key = SigningKey.generate(algorithm)
        keys = PublicKeySet({key.kid: (key.algorithm, key.public_key)})
        now = time.time()
        token = mint(key, issuer="iss", audience="aud", subject="bench", scope="chat", grant=grant, now=now).token
        cases[algorithm] = {
            "after (jws core)": lambda t=token, k=keys, n=now: verify(t, keys=k, audience="aud", issuer="iss", now=n),
            "before (PyJWT)": lambda t=token, k=keys, n=now: verify_before(t, k, n),
            "primitive": signature_check_alone(token, key.public_key),
            "primitive (OpenSSL)": signature_check_alone(token, key.public_key, openssl=True),
        }
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for algorithm, timings in cases.items():
            for name, call in timings.items():
                seconds = timeit.Timer(call, timer=time.thread_time).timeit(number=args.number) / args.number
                samples.setdefault((algorithm, name), []).append(seconds * 1e6)
    for algorithm in cases:
        medians = {name: statistics.median(samples[(algorithm, name)]) for name in cases[algorithm]}
        print(f"{algorithm}: " + "; ".join(f"{name} {value:.1f} µs" for name, value in medians.items())
              + f"; overhead over the primitive: before {medians['before (PyJWT)'] - medians['primitive']:.1f} µs,"
              f" after {medians['after (jws core)'] - medians['primitive']:.1f} µs")


def verify_before(token: str, keys: PublicKeySet, now: float) -> None:
    """PyJWT's decode plus the same claim building `verify` does after it, so both sides do equal work."""
    _claims_from(pyjwt_verify(token, keys))


if __name__ == "__main__":
    main()
