"""The one refusal catalogue shared by the broker and the gate: every code, its status and its message.

Each shell needs one handler: catch `Refusal`, answer `refusal.status` with `refusal.to_body()`.
The body copies llama-server's own error shape, so a client that already handles llama-server's
401 handles the lane's refusals unchanged, and adds `reason`, the machine-readable code, which is
what a client should branch on:

    {"error": {"message": "...", "type": "authentication_error", "code": 401, "reason": "token_expired"}}

Messages are fixed sentences written here, never built from the token, a key, a path or exception
text, so a refusal is always safe to show and to log. A few carry a number or a position the gate
computed (`{limit}`, `{where}`); none carries text taken from the request. Where one code is
explained in more than one way, each wording is a named variant of the same entry.

To add a refusal: add one `Reason` below (and, if a shell must catch it by type, a subclass).

    Refusal                       never raised itself; carries one `Reason`
    ├── TokenRefusal (401)        never raised itself; one subclass per cause
    │   ├── MissingToken, MalformedToken, AlgorithmNotAllowed, UnknownKey, BadSignature
    │   ├── TokenExpired, TokenNotYetValid, WrongAudience, WrongIssuer, MissingClaim
    │   └── TokenSpent, TokenRevoked, IssuedBeforeGateStart
    ├── FrameworkError            the broker's framework's own 404, 405 and 500
    ├── RequestRefusal            any other 4xx: RequestRefusal(REASON, variant, **fields)
    │   └── RateLimited (429)     carries retry_after; BudgetExhausted
    └── ServiceRefusal            5xx: the request was fine, something behind it is not
        ├── UpstreamUnavailable, StreamLost, UpstreamTimeout, BrokerUnavailable, GateUnavailable
        ├── Overloaded (503, Retry-After), TooManyPending
        └── VersionNotSupported (505)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

MODEL_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
"""A model's public name: the only request text a refusal may repeat (in `error.param`)."""

_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


def error_type(status: int) -> str:
    """The `type` llama-server writes beside a status, so clients can branch on it the same way."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


@dataclass(frozen=True)
class Reason:
    """One refusal code: its HTTP status, its message and any other wordings of the same cause."""

    status: int
    code: str
    message: str
    variants: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def text(self, variant: str | None = None, **fields: object) -> str:
        template = self.message if variant is None else self.variants[variant]
        return template.format_map(fields)


CATALOGUE: dict[str, Reason] = {}
"""code -> Reason: every refusal the broker or the gate can send."""


def _reason(status: int, code: str, message: str, /, **variants: str) -> Reason:
    if code in CATALOGUE:
        raise ValueError(f"refusal code {code!r} is defined twice")
    reason = Reason(status, code, message, MappingProxyType(variants))
    CATALOGUE[code] = reason
    return reason


# 401: the credential.
INVALID_TOKEN = _reason(401, "invalid_token", "The token is not valid.")
MISSING_TOKEN = _reason(401, "missing_token", "A bearer token is required.")
MALFORMED_TOKEN = _reason(401, "malformed_token", "The token is malformed.")
ALGORITHM_NOT_ALLOWED = _reason(401, "algorithm_not_allowed", "The token's signing algorithm is not allowed.")
UNKNOWN_KEY = _reason(401, "unknown_key", "The token was signed with an unknown key.")
BAD_SIGNATURE = _reason(401, "bad_signature", "The token's signature does not match.")
TOKEN_EXPIRED = _reason(401, "token_expired", "The token has expired: ask for a new one.")
TOKEN_NOT_YET_VALID = _reason(401, "token_not_yet_valid", "The token is not valid yet.")
WRONG_AUDIENCE = _reason(401, "wrong_audience", "The token was issued for another server.")
WRONG_ISSUER = _reason(401, "wrong_issuer", "The token was issued by an unknown issuer.")
MISSING_CLAIM = _reason(401, "missing_claim", "The token lacks a required claim.")
TOKEN_SPENT = _reason(401, "token_spent", "The token has already been used: ask for a new one.")
TOKEN_REVOKED = _reason(401, "token_revoked", "The token has been revoked.")
TOKEN_PREDATES_GATE = _reason(
    401, "token_predates_gate", "The token was issued before the server restarted: ask for a new one."
)
LOGIN_REQUIRED = _reason(
    401, "login_required", "Log in first: open the login link that llama-direct printed when it started."
)
BAD_ACCESS_TOKEN = _reason(401, "bad_access_token", "The access token is not valid.")

# 403: who is asking, and for what.
ORIGIN_NOT_ALLOWED = _reason(
    403, "origin_not_allowed", "Requests from this origin may not use this session.",
    lane="This origin may not call the direct lane.",
    token_without_origin="This token was issued for use without an Origin header.",
)
ORIGIN_REQUIRED = _reason(
    403, "origin_required", "This token needs the Origin it was issued for.",
    preflight="A preflight needs an Origin.",
)
ORIGIN_MISMATCH = _reason(403, "origin_mismatch", "The Origin does not match the token's origin.")
SCOPE_MISMATCH = _reason(403, "scope_mismatch", "The token's scope does not cover this route.")
CONVERSATION_NOT_GRANTED = _reason(
    403, "conversation_not_granted", "This token names no conversation.",
    header="This token names no conversation: drop X-Conversation-Id.",
)
CONVERSATION_MISMATCH = _reason(
    403, "conversation_mismatch", "X-Conversation-Id does not match the token's conversation.",
    query="conv_id does not match the token's conversation.",
)
CONVERSATION_NOT_OWNED = _reason(403, "conversation_not_owned", "That conversation is unknown or not yours.")
MODEL_MISMATCH = _reason(403, "model_mismatch", "The model is not the one the token was issued for.")
OWNER_ONLY = _reason(403, "owner_only", "Only the owner may unload a model: it ends every user's replies from it.")
ROUTE_NOT_GRANTED = _reason(403, "route_not_granted", "The token was granted for another lane route.")
BAD_USER_HEADER = _reason(
    403, "bad_user_header", "The user name the proxy sent is not one llama-direct takes: letters, digits and "
    "._-@+, 1 to 64 characters.",
    several="The proxy sent the user header more than once.",
    encoding="The user name the proxy sent is not UTF-8.",
)
TOO_MANY_HEADER_USERS = _reason(
    403, "too_many_header_users", "No more users can be made from the proxy's header ({limit} were): add this "
    "one with llama-direct users add, or raise --max-header-users.",
)

# 404, 405, 408, 413, 415, 429, 431: the request's shape and size.
NOT_FOUND = _reason(404, "not_found", "Nothing is served at this path.", app="Not found.")
NO_SUCH_ROUTE = _reason(404, "no_such_route", "No such route on the direct lane.")
METHOD_NOT_ALLOWED = _reason(
    405, "method_not_allowed", "Method not allowed.",
    connect="CONNECT is not served.",
    lane="The direct lane allows only GET, POST and DELETE.",
    token="This token allows this route only with {allowed}.",
    path="The direct lane does not serve this method on this path.",
)
MODEL_NOT_LOADED = _reason(409, "model_not_loaded", "This model is not loaded, and this request may not load it.")
NOT_A_ROUTER = _reason(409, "not_a_router", "Models unload only in router mode; this server's one model stays loaded.")
REQUEST_TIMEOUT = _reason(408, "request_timeout", "The request did not arrive in time.")
BODY_TOO_LARGE = _reason(
    413, "body_too_large", "The request body is too large.",
    over="The body is larger than {limit} bytes.",
)
IMAGE_TOO_LARGE = _reason(413, "image_too_large", "{part}: the image is larger than {limit} bytes.")
UNSUPPORTED_MEDIA_TYPE = _reason(415, "unsupported_media_type", "The body must be application/json.")
UNSUPPORTED_ENCODING = _reason(415, "unsupported_encoding", "The body must not be content-encoded.")
RATE_LIMITED = _reason(429, "rate_limited", "Too many requests: wait a moment, then try again.")
TOO_MANY_STREAMS = _reason(
    429, "too_many_streams", "Too many streams at once for this user: wait for one to end, then try again."
)
BUDGET_EXHAUSTED = _reason(
    429, "budget_exhausted", "This user's token budget is used up for now: try again when Retry-After says."
)
HEAD_TOO_LARGE = _reason(431, "head_too_large", "The request head is larger than 16 KB.")

# 400: HTTP framing (the gate's own checks, before httptools parses the head).
BAD_REQUEST = _reason(400, "bad_request", "The request is not valid HTTP/1.1.")
BAD_HEADER = _reason(400, "bad_header", "A header line is malformed.", nul="The request head holds a NUL byte.")
BAD_LINE_ENDING = _reason(400, "bad_line_ending", "Lines of the request head must end with CRLF.")
OBS_FOLD = _reason(400, "obs_fold", "Folded header lines are not accepted.")
AMBIGUOUS_FRAMING = _reason(400, "ambiguous_framing", "Content-Length and Transfer-Encoding must not both be sent.")
DUPLICATE_CONTENT_LENGTH = _reason(400, "duplicate_content_length", "Content-Length must appear once.")
BAD_CONTENT_LENGTH = _reason(400, "bad_content_length", "Content-Length must be a non-negative integer.")
BAD_TRANSFER_ENCODING = _reason(
    400, "bad_transfer_encoding", "Transfer-Encoding may only be chunked, once.",
    http10="HTTP/1.0 requests may not use Transfer-Encoding.",
)
BAD_BODY = _reason(400, "bad_body", "The request body's framing is not valid.")
UNEXPECTED_BODY = _reason(400, "unexpected_body", "This route takes no request body.")

# 400: the target, the headers and the query (the gate's scope check).
BAD_TARGET = _reason(
    400, "bad_target", "The request target must be a path.",
    ascii="The request target must be ASCII.",
    slash="The request target must be a path starting with '/'.",
    control="The request target holds control characters or spaces.",
    fragment="The request target must not hold a fragment.",
)
AMBIGUOUS_PATH = _reason(
    400, "ambiguous_path", "The path must not be percent-encoded.",
    backslash="The path must not hold a backslash.",
    encoded_separator="The path must not hold percent-encoded dots, slashes or backslashes.",
    empty_segment="The path must not hold empty segments ('//').",
    dot_segment="The path must not hold '.' or '..' segments.",
    trailing_slash="The path must not end with a slash.",
)
DUPLICATE_HEADER = _reason(400, "duplicate_header", "The {label} header must appear at most once.")
MISSING_CONVERSATION_ID = _reason(400, "missing_conversation_id", "This token needs the X-Conversation-Id it names.")
BAD_PREFLIGHT = _reason(
    400, "bad_preflight", "A preflight needs Access-Control-Request-Method.",
    too_many_headers="A preflight may ask for at most {limit} request headers.",
    header_names="Access-Control-Request-Headers must list header names.",
)
BAD_QUERY = _reason(
    400, "bad_query", "This route takes no query string.",
    only="This route takes only {names} in its query.",
    conv_id="This route needs conv_id in its query.",
    offset="from must be a non-negative integer.",
    pair="Each query parameter must be name=value.",
    repeated="A query parameter must appear at most once.",
    encoding="A query value is not validly encoded.",
)

# 400: the chat body (the gate's shaping).
INVALID_JSON = _reason(
    400, "invalid_json", "The body is not valid UTF-8 JSON.",
    unicode_escape="The body holds an invalid unicode escape.",
)
NOT_AN_OBJECT = _reason(400, "not_an_object", "The body must be a JSON object.")
JSON_TOO_DEEP = _reason(400, "json_too_deep", "The body nests deeper than {limit} levels.")
FIELD_NOT_ALLOWED = _reason(400, "field_not_allowed", "The field '{field}' is not allowed on the direct lane.")
CONFLICTING_FIELDS = _reason(
    400, "conflicting_fields", "repetition_penalty and repeat_penalty differ: send one of them."
)
N_NOT_SUPPORTED = _reason(400, "n_not_supported", "The direct lane generates one choice: n must be 1.")
BAD_FIELD = _reason(400, "bad_field", "logprobs must be true or false.")
TOP_LOGPROBS_OVER_CAP = _reason(400, "top_logprobs_over_cap", "top_logprobs must be an integer from 0 to {limit}.")
BAD_LENGTH = _reason(400, "bad_length", "{name} must be an integer from 1 to {limit}.")
LENGTH_OVER_CAP = _reason(400, "length_over_cap", "{name} may be at most {limit} on this token.")
BAD_MESSAGES = _reason(
    400, "bad_messages", "messages must be a non-empty list.",
    message="{where} must be an object with a string role.",
    content="{where}.content must be a string or a list of parts.",
    legacy_image="image_base64 needs a user message to attach to.",
)
BAD_CONTENT_PART = _reason(400, "bad_content_part", "{where}: only text and image_url parts are accepted.")
VISION_NOT_SUPPORTED = _reason(400, "vision_not_supported", "This model does not accept images.")
TOO_MANY_IMAGES = _reason(400, "too_many_images", "A request may hold at most {limit} images.")
REMOTE_IMAGE = _reason(400, "remote_image", "{part}: only data: image URLs are accepted.")
BAD_IMAGE = _reason(
    400, "bad_image", "{part}: the image could not be decoded.",
    not_a_string="{part}: the image URL must be a string.",
    not_a_base64_string="{part}: the image must be a base64 string.",
    not_a_data_url="{part}: the image must be a base64 data: URL.",
    base64="{part}: the image is not valid base64.",
)
PROMPT_TOO_LARGE = _reason(
    400, "prompt_too_large", "The prompt cannot fit this model's context of {limit} tokens: it holds too much text.",
    messages="The prompt cannot fit this model's context of {limit} tokens: it holds too many messages.",
    special="The prompt cannot fit this model's context of {limit} tokens: it holds too many special-token strings.",
)
FIELD_OUT_OF_BOUNDS = _reason(
    400, "field_out_of_bounds", "A field is over the bound the direct lane allows for it: see error.param."
)
TEMPLATE_KWARG_NOT_ALLOWED = _reason(
    400, "template_kwarg_not_allowed",
    "This chat_template_kwargs key is not allowed on the direct lane: see error.param.",
)
IMAGE_TOO_MANY_PIXELS = _reason(400, "image_too_many_pixels", "{part}: the image has more than {limit} pixels.")
IMAGES_TOO_MANY_PIXELS = _reason(
    400, "images_too_many_pixels", "{part}: the request's images hold more than {limit} pixels in all."
)

# 400: the bodies of the other lane routes (Responses, Messages, completions, embeddings, rerank).
UNSUPPORTED_ITEM = _reason(
    400, "unsupported_item", "{where}: this kind of item is not accepted on the direct lane.",
    block="{where}: this kind of content block is not accepted on the direct lane.",
    part="{where}: this kind of content part is not accepted on the direct lane.",
)
TOOL_NOT_ALLOWED = _reason(
    400, "tool_not_allowed",
    "{where}: only function tools are accepted on the direct lane, not built-in or remote ones.",
)
BAD_INPUT = _reason(
    400, "bad_input", "input must be a string or a non-empty list of items.",
    strings="input must be a string or a non-empty list of at most {limit} strings.",
    prompt="prompt must be a string.",
    query="query must be a string.",
    documents="documents must be a non-empty list of at most {limit} strings.",
    top_n="top_n must lie between 1 and the number of documents.",
    system="system must be a string or a list of text blocks.",
)
INPUTS_TOO_LARGE = _reason(
    400, "inputs_too_large", "The inputs together hold more text than {limit} tokens of context can.",
)

# 400: a grant that pins the system prompt (`Grant.system_prompt`; the gate's `pinned` module).
SYSTEM_PROMPT_PINNED = _reason(
    400, "system_prompt_pinned", "This grant pins the system prompt: {where} may not set one of its own.",
    raw_prompt="This grant pins the system prompt: a route that renders no chat template is not open to it.",
)
SPECIAL_TOKEN_TEXT = _reason(
    400, "special_token_text",
    "{where} spells one of the model's special tokens (such as <|im_start|>), which a grant that pins the "
    "system prompt refuses: llama-server would read it as the token itself.",
)

# 400: the broker's negotiation and its own routes.
INVALID_OPTIONS = _reason(
    400, "invalid_options", "The request body must be a JSON object.",
    repeated="Each option may be given once.",
)
UNKNOWN_OPTION = _reason(
    400, "unknown_option",
    "Unknown option: only route, model, autoload, max_tokens, resumable, resume and cancel are accepted.",
)
INVALID_OPTION = _reason(
    400, "invalid_option", "max_tokens must be a positive integer.",
    resumable="resumable must be true or false.",
    autoload="autoload must be true or false.",
    since="since is one UTC date, YYYY-MM-DD, within the last 400 days.",
    conversation="resume and cancel take a conversation id.",
)
UNKNOWN_MODEL = _reason(400, "unknown_model", "That model is unknown or not offered to you.")
UNKNOWN_ROUTE = _reason(400, "unknown_route", "No lane route has that name.")
CONFLICTING_OPTIONS = _reason(
    400, "conflicting_options", "Ask for resume or cancel, not both.",
    route="That route does not go with resume or cancel.",
)
BAD_HOST = _reason(400, "bad_host", "The request's Host header is not a valid host.")
BAD_LOAD_CHARGE = _reason(400, "bad_load_charge", 'A load charge is {{"user": "...", "model": "..."}}.')
BAD_REVOCATION = _reason(400, "bad_revocation", 'A revocation is {{"user": "...", "not_before": SECONDS}}.')
BAD_USAGE_REPORT = _reason(400, "bad_usage_report", "A usage report is a body of llama_direct.control.usage_batches.")
BAD_UNLOAD = _reason(400, "bad_unload", 'An unload is {{"model": "NAME"}}.')
BAD_TOOL_INPUT = _reason(400, "bad_tool_input", 'The echo tool takes {{"text": "..."}}.')
REFUSED = _reason(400, "refused", "The request was refused.")
"""What the broker's framework refuses for a reason no entry here names (its own status is kept)."""

# 5xx: the request was fine; something behind it is not.
INTERNAL_ERROR = _reason(500, "internal_error", "Internal error.")
UPSTREAM_UNAVAILABLE = _reason(502, "upstream_unavailable", "The model server is not reachable right now.")
STREAM_LOST = _reason(
    502, "stream_lost",
    "The model server that held this stream is gone, so it cannot be resumed; send the message again.",
)
APP_UNAVAILABLE = _reason(502, "app_unavailable", "The app is not reachable right now; it may be restarting.")
GATE_UNAVAILABLE = _reason(503, "gate_unavailable", "The gate is not answering; try again in a moment.")
TOO_MANY_CONNECTIONS = _reason(
    503, "too_many_connections", "The server holds too many connections; try again in a moment.",
)
TOO_MANY_PENDING = _reason(
    503, "too_many_pending", "Too many requests from your address are still arriving; try again in a moment.",
)
SHARED_STATE_UNAVAILABLE = _reason(
    503, "shared_state_unavailable",
    "The shared state store (Redis) is not reachable, so no credential can be checked; try again in a moment.",
)
UPSTREAM_TIMEOUT = _reason(504, "upstream_timeout", "The model server did not answer in time.")
HTTP_VERSION_NOT_SUPPORTED = _reason(505, "http_version_not_supported", "Only HTTP/1.1 and HTTP/1.0 are supported.")


class Refusal(Exception):
    """A request the broker or the gate will not serve; `message` is safe to show to anyone.

    `status`, `code` and `message` come from the `Reason`; `status` may be set apart from it only
    by `status=` for a framework's own error (`REFUSED`).
    """

    reason: ClassVar[Reason]
    headers: ClassVar[tuple[tuple[str, str], ...]] = ()
    """Response headers the refusal needs beside its body (none but `ModelNotLoaded`'s)."""
    status: int
    code: str
    message: str
    param: str | None = None
    """The request field's value the refusal is about, in `error.param`: only a checked model name."""

    def __init_subclass__(cls) -> None:
        """A subclass bound to one reason shows it on the class too: `TokenSpent.message`."""
        super().__init_subclass__()
        bound = cls.__dict__.get("reason")
        if isinstance(bound, Reason):
            cls.status, cls.code, cls.message = bound.status, bound.code, bound.message

    def __init__(self, reason: Reason | None = None, variant: str | None = None,
                 fields: Mapping[str, object] | None = None, *, status: int | None = None) -> None:
        if type(self) in _ABSTRACT:
            raise TypeError(f"{type(self).__name__} is a base class: raise one of its subclasses")
        chosen = reason if reason is not None else type(self).reason
        self.status = chosen.status if status is None else status
        self.code = chosen.code
        self.message = chosen.text(variant, **(fields or {}))
        super().__init__(self.code)

    def __str__(self) -> str:
        return self.message

    def to_body(self) -> bytes:
        """llama-server's error JSON plus the code: `{"error": {"message", "type", "code": <status>, "reason"}}`."""
        error: dict[str, object] = {
            "message": self.message, "type": error_type(self.status), "code": self.status, "reason": self.code,
        }
        if self.param is not None:
            error["param"] = self.param
        return json.dumps({"error": error}, separators=(",", ":")).encode()


class TokenRefusal(Refusal):
    """The bearer token cannot start a request; always 401, whatever the cause."""

    reason = INVALID_TOKEN

    def __init__(self) -> None:
        super().__init__()


class MissingToken(TokenRefusal):
    reason = MISSING_TOKEN


class MalformedToken(TokenRefusal):
    reason = MALFORMED_TOKEN


class AlgorithmNotAllowed(TokenRefusal):
    reason = ALGORITHM_NOT_ALLOWED


class UnknownKey(TokenRefusal):
    reason = UNKNOWN_KEY


class BadSignature(TokenRefusal):
    reason = BAD_SIGNATURE


class TokenExpired(TokenRefusal):
    reason = TOKEN_EXPIRED


class TokenNotYetValid(TokenRefusal):
    reason = TOKEN_NOT_YET_VALID


class WrongAudience(TokenRefusal):
    reason = WRONG_AUDIENCE


class WrongIssuer(TokenRefusal):
    reason = WRONG_ISSUER


class MissingClaim(TokenRefusal):
    reason = MISSING_CLAIM


class TokenSpent(TokenRefusal):
    reason = TOKEN_SPENT


class TokenRevoked(TokenRefusal):
    reason = TOKEN_REVOKED


class IssuedBeforeGateStart(TokenRefusal):
    reason = TOKEN_PREDATES_GATE


class RequestRefusal(Refusal):
    """A refusal of what the request asks for: `RequestRefusal(BAD_QUERY, "only", names="conv_id")`."""

    def __init__(self, reason: Reason, variant: str | None = None, **fields: object) -> None:
        if not 400 <= reason.status <= 499:
            raise ValueError("a request refusal needs a 4xx status")
        super().__init__(reason, variant, fields)


class RateLimited(RequestRefusal):
    """Too many negotiations from one session; `retry_after` seconds until the next is allowed."""

    def __init__(self, retry_after: int, reason: Reason = RATE_LIMITED) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class BudgetExhausted(RateLimited):
    """Under 16 tokens left in the user's day or minute (`llama_direct.budgets`); `retry_after` seconds
    until that window turns over."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after, BUDGET_EXHAUSTED)


class FieldOutOfBounds(RequestRefusal):
    """400: a body field over the bound the lane allows; `error.param` names it when the name is plain."""

    def __init__(self, param: str, reason: Reason = FIELD_OUT_OF_BOUNDS) -> None:
        super().__init__(reason)
        self.param = param if MODEL_NAME.fullmatch(param) else None


class TemplateKwargNotAllowed(FieldOutOfBounds):
    """400: a `chat_template_kwargs` key that is not allow-listed, or a value of the wrong kind."""

    def __init__(self, key: str) -> None:
        super().__init__(key, TEMPLATE_KWARG_NOT_ALLOWED)


class UnknownModel(RequestRefusal):
    """A model the user may not use, or none of that name: `param` names it when it is a safe name."""

    def __init__(self, name: object) -> None:
        super().__init__(UNKNOWN_MODEL)
        self.param = name if isinstance(name, str) and MODEL_NAME.fullmatch(name) else None


class ModelNotLoaded(RequestRefusal):
    """409 for a grant that may not load its model; both OpenAI SDKs retry a 409 unless told not to."""

    headers = (("x-should-retry", "false"),)

    def __init__(self) -> None:
        super().__init__(MODEL_NOT_LOADED)


class ServiceRefusal(Refusal):
    """The request was fine but cannot be served now (5xx); one subclass per cause, caught by type."""

    def __init__(self) -> None:
        super().__init__()


class UpstreamUnavailable(ServiceRefusal):
    reason = UPSTREAM_UNAVAILABLE


class StreamLost(ServiceRefusal):
    """A resume or cancel whose stream's upstream is gone: no other upstream holds the stream."""

    reason = STREAM_LOST


class UpstreamTimeout(ServiceRefusal):
    reason = UPSTREAM_TIMEOUT


class BrokerUnavailable(ServiceRefusal):
    """The app behind the gate (the broker), not the model server, is what is missing."""

    reason = APP_UNAVAILABLE


class GateUnavailable(ServiceRefusal):
    reason = GATE_UNAVAILABLE


class Overloaded(ServiceRefusal):
    """The gate holds as many connections as it may, in all; answered with `Retry-After`."""

    reason = TOO_MANY_CONNECTIONS
    retry_after: ClassVar[int] = 2


class TooManyPending(Overloaded):
    """One client address has as many requests still arriving as it may."""

    reason = TOO_MANY_PENDING


class SharedStateUnavailable(ServiceRefusal):
    """Redis, which several gates and brokers share, cannot be reached: refuse rather than skip a check."""

    reason = SHARED_STATE_UNAVAILABLE


class VersionNotSupported(ServiceRefusal):
    reason = HTTP_VERSION_NOT_SUPPORTED


class FrameworkError(Refusal):
    """An answer the broker's web framework makes itself (an unknown path, a wrong method, a crash)."""

    def __init__(self, reason: Reason, variant: str | None = None, *, status: int | None = None) -> None:
        super().__init__(reason, variant, None, status=status)


_ABSTRACT = frozenset({Refusal, TokenRefusal, ServiceRefusal})
