"""Typed refusals shared by the broker and the gate.

Each shell needs one handler: catch `Refusal`, answer `refusal.status` with `refusal.to_body()`.
The body copies llama-server's own error shape, so a client that already handles llama-server's
401 handles the lane's refusals unchanged. Messages are fixed strings chosen here, never built from
the token, a key, a path or exception text, so a refusal is always safe to show and to log.

    Refusal                       never raised itself
    ├── TokenRefusal (401)        never raised itself; one subclass per cause
    │   ├── MissingToken, MalformedToken, AlgorithmNotAllowed, UnknownKey, BadSignature
    │   ├── TokenExpired, TokenNotYetValid, WrongAudience, WrongIssuer, MissingClaim
    │   └── TokenSpent, TokenRevoked, IssuedBeforeGateStart
    └── RequestRefusal            the gate's own: RequestRefusal(status, code, message)
"""

from __future__ import annotations

import json

_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


def error_type(status: int) -> str:
    """The `type` llama-server writes beside a status, so clients can branch on it the same way."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


class Refusal(Exception):
    """A request the broker or the gate will not serve; `message` is safe to show to anyone."""

    status: int = 500
    code: str = "refused"
    message: str = "The request was refused."

    def __init__(self, *args: object) -> None:
        if type(self) in _ABSTRACT:
            raise TypeError(f"{type(self).__name__} is a base class: raise one of its subclasses")
        super().__init__(*args)

    def __str__(self) -> str:
        return self.message

    def to_body(self) -> bytes:
        """llama-server's error JSON: `{"error": {"message", "type", "code": <status>}}`."""
        error = {"message": self.message, "type": error_type(self.status), "code": self.status}
        return json.dumps({"error": error}, separators=(",", ":")).encode()


class TokenRefusal(Refusal):
    """The bearer token cannot start a request; always 401, whatever the cause."""

    status: int = 401
    code: str = "invalid_token"
    message: str = "The token is not valid."

    def __init__(self) -> None:
        super().__init__()


class MissingToken(TokenRefusal):
    code = "missing_token"
    message = "A bearer token is required."


class MalformedToken(TokenRefusal):
    code = "malformed_token"
    message = "The token is malformed."


class AlgorithmNotAllowed(TokenRefusal):
    code = "algorithm_not_allowed"
    message = "The token's signing algorithm is not allowed."


class UnknownKey(TokenRefusal):
    code = "unknown_key"
    message = "The token was signed with an unknown key."


class BadSignature(TokenRefusal):
    code = "bad_signature"
    message = "The token's signature does not match."


class TokenExpired(TokenRefusal):
    code = "token_expired"
    message = "The token has expired: ask for a new one."


class TokenNotYetValid(TokenRefusal):
    code = "token_not_yet_valid"
    message = "The token is not valid yet."


class WrongAudience(TokenRefusal):
    code = "wrong_audience"
    message = "The token was issued for another server."


class WrongIssuer(TokenRefusal):
    code = "wrong_issuer"
    message = "The token was issued by an unknown issuer."


class MissingClaim(TokenRefusal):
    code = "missing_claim"
    message = "The token lacks a required claim."


class TokenSpent(TokenRefusal):
    code = "token_spent"
    message = "The token has already been used: ask for a new one."


class TokenRevoked(TokenRefusal):
    code = "token_revoked"
    message = "The token has been revoked."


class IssuedBeforeGateStart(TokenRefusal):
    code = "token_predates_gate"
    message = "The token was issued before the server restarted: ask for a new one."


class RequestRefusal(Refusal):
    """A refusal of what the request asks for, made by the gate with its own status and code.

    Unlike token refusals these are built where they happen, e.g.
    `RequestRefusal(403, "route_not_granted", "The token does not allow this route.")`; the message
    must still be a fixed sentence, never text taken from the request.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        if not 400 <= status <= 499 or status == 401:
            raise ValueError("a request refusal needs a 4xx status other than 401")
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message


_ABSTRACT = frozenset({Refusal, TokenRefusal})
