import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llama_direct import lanes
from llama_direct.lanes import ROUTE_AT
from llama_direct.refusals import RequestRefusal
from llama_direct.tokens import Claims, Grant
from llama_launcher.gate.scope import RequestHead, Route, allowed_preflight, check_request

ORIGIN = "http://127.0.0.1:8000"
CHAT = ("POST", "/v1/chat/completions")
RESUME = ("GET", "/v1/stream")
CANCEL = ("DELETE", "/v1/stream")
JSON = (b"content-type", b"application/json")


def claims(
    *routes: tuple[str, str],
    scope: str = "chat",
    origin: str | None = ORIGIN,
    conversation_id: str | None = None,
) -> Claims:
    grant = Grant(
        routes=routes or (CHAT,),
        model="smollm2",
        max_tokens=256,
        origin=origin,
        conversation_id=conversation_id,
    )
    return Claims(iss="broker", aud="gate", sub="alice", iat=100, nbf=100, exp=130, jti="j1", scope=scope, grant=grant)


def head(method: str, target: bytes, *headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(method=method, target=target, headers=list(headers))


def chat_head(target: bytes = b"/direct/v1/chat/completions", *extra: tuple[bytes, bytes]) -> RequestHead:
    return head("POST", target, (b"origin", ORIGIN.encode()), JSON, *extra)


RESUME_CLAIMS = claims(RESUME, scope="resume", conversation_id="abc")
CANCEL_CLAIMS = claims(CANCEL, scope="cancel", conversation_id="abc")


def refused(request: RequestHead, grant_claims: Claims, **kwargs: str) -> RequestRefusal:
    with pytest.raises(RequestRefusal) as caught:
        check_request(request, grant_claims, **kwargs)
    return caught.value


def resume_head(query: bytes, *extra: tuple[bytes, bytes]) -> RequestHead:
    return head("GET", b"/direct/v1/stream" + query, (b"origin", ORIGIN.encode()), *extra)


# --- allowed requests -------------------------------------------------------------------------


def test_chat_route_strips_the_lane_prefix():
    assert check_request(chat_head(), claims()) == Route("POST", "/v1/chat/completions", lanes.CHAT, None)


def test_chat_route_carries_the_grants_conversation_id():
    request = chat_head(b"/direct/v1/chat/completions", (b"x-conversation-id", b"c-1"))
    route = check_request(request, claims(conversation_id="c-1"))
    assert route == Route("POST", "/v1/chat/completions", lanes.CHAT, "c-1")


def test_resume_route_keeps_conv_id_and_from():
    route = check_request(resume_head(b"?conv_id=abc&from=123"), RESUME_CLAIMS)
    assert route == Route("GET", "/v1/stream?conv_id=abc&from=123", lanes.RESUME, "abc")


def test_resume_route_without_from():
    route = check_request(resume_head(b"?conv_id=abc"), RESUME_CLAIMS)
    assert route.upstream_target == "/v1/stream?conv_id=abc"


def test_resume_rebuilds_the_query_in_a_fixed_order_and_form():
    route = check_request(resume_head(b"?from=007&conv_id=abc"), RESUME_CLAIMS)
    assert route.upstream_target == "/v1/stream?conv_id=abc&from=7"


def test_percent_encoded_conv_id_is_decoded_compared_and_reencoded():
    grant_claims = claims(RESUME, scope="resume", conversation_id="a:b c")
    route = check_request(resume_head(b"?conv_id=a%3ab%20c"), grant_claims)
    assert route.upstream_target == "/v1/stream?conv_id=a%3Ab%20c"


def test_cancel_route():
    request = head("DELETE", b"/direct/v1/stream?conv_id=abc", (b"origin", ORIGIN.encode()))
    assert check_request(request, CANCEL_CLAIMS) == Route("DELETE", "/v1/stream?conv_id=abc", lanes.CANCEL, "abc")


def test_scope_may_name_several_kinds():
    grant_claims = claims(CHAT, RESUME, scope="chat resume")
    assert check_request(chat_head(), grant_claims).lane == lanes.CHAT


@pytest.mark.parametrize(("prefix", "target"), [("", b"/v1/chat/completions"), ("/lane", b"/lane/v1/chat/completions")])
def test_other_lane_prefixes(prefix, target):
    route = check_request(chat_head(target), claims(), lane_prefix=prefix)
    assert route.upstream_target == "/v1/chat/completions"


# --- the target -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (b"http://evil.example/direct/v1/chat/completions", "The request target must be a path starting with '/'."),
        (b"127.0.0.1:8000", "The request target must be a path starting with '/'."),
        (b"*", "The request target must be a path starting with '/'."),
        (b"", "The request target must be a path starting with '/'."),
        (b"/direct/v1/chat/completions\x00", "The request target holds control characters or spaces."),
        (b"/direct/v1/chat/\x7fcompletions", "The request target holds control characters or spaces."),
        (b"/direct/v1/chat/completions\r\n", "The request target holds control characters or spaces."),
        (b"/direct/v1/chat/ completions", "The request target holds control characters or spaces."),
        (b"/direct/v1/chat/completions#frag", "The request target must not hold a fragment."),
        (b"/direct/v1/chat/compl\xc3\xa9tions", "The request target must be ASCII."),
    ],
)
def test_malformed_targets_are_400(target, message):
    refusal = refused(chat_head(target), claims())
    assert (refusal.status, refusal.code, refusal.message) == (400, "bad_target", message)


DOTS = "The path must not hold '.' or '..' segments."
ENCODED = "The path must not hold percent-encoded dots, slashes or backslashes."


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (b"/direct/v1/../v1/chat/completions", DOTS),
        (b"/direct/./v1/chat/completions", DOTS),
        (b"/direct/v1/chat/completions/..", DOTS),
        (b"/direct/v1/chat/./completions", DOTS),
        (b"/direct/v1/%2e%2e/props", ENCODED),
        (b"/direct/v1/%2E%2E/props", ENCODED),
        (b"/direct/v1%2fchat/completions", ENCODED),
        (b"/direct/v1%2Fchat/completions", ENCODED),
        (b"/direct/v1%5cchat/completions", ENCODED),
        (b"/direct/v1%5Cchat/completions", ENCODED),
        (b"/direct/v1/chat/%63ompletions", "The path must not be percent-encoded."),
        (b"/direct/v1/chat/completions%", "The path must not be percent-encoded."),
        (b"/direct//v1/chat/completions", "The path must not hold empty segments ('//')."),
        (b"//direct/v1/chat/completions", "The path must not hold empty segments ('//')."),
        (b"/direct\\v1/chat/completions", "The path must not hold a backslash."),
        (b"/direct/v1/chat/completions/", "The path must not end with a slash."),
    ],
)
def test_paths_a_normaliser_would_rewrite_are_400(target, message):
    refusal = refused(chat_head(target), claims())
    assert (refusal.status, refusal.code, refusal.message) == (400, "ambiguous_path", message)


@pytest.mark.parametrize(
    "target",
    [
        b"/direct/V1/chat/completions",
        b"/DIRECT/v1/chat/completions",
        b"/direct/v1/Chat/Completions",
        b"/v1/chat/completions",
        b"/directv1/chat/completions",
        b"/direct",
        b"/",
        b"/direct/v1/props",
        b"/direct/v1/chat/completions.json",
        b"/direct/v1/chat",
    ],
)
def test_paths_that_are_not_lane_routes_are_404(target):
    refusal = refused(chat_head(target), claims())
    assert (refusal.status, refusal.code, refusal.message) == (
        404,
        "no_such_route",
        "No such route on the direct lane.",
    )


# --- routes, methods and scope ----------------------------------------------------------------


def test_a_lane_route_missing_from_the_grant_is_403_route_not_granted():
    """A grant names its route: a token for one lane route is refused on every other, with its own code."""
    refusal = refused(resume_head(b"?conv_id=abc"), claims(CHAT, conversation_id="abc"))
    assert (refusal.status, refusal.code) == (403, "route_not_granted")
    refusal = refused(head("POST", b"/direct/v1/chat/completions", (b"origin", ORIGIN.encode()), JSON), RESUME_CLAIMS)
    assert (refusal.status, refusal.code) == (403, "route_not_granted")


def test_granted_path_with_another_method_is_405():
    request = head("POST", b"/direct/v1/stream?conv_id=abc", (b"origin", ORIGIN.encode()), JSON)
    refusal = refused(request, RESUME_CLAIMS)
    assert (refusal.status, refusal.code, refusal.message) == (
        405,
        "method_not_allowed",
        "This token allows this route only with GET.",
    )


def test_405_names_every_granted_method():
    grant_claims = claims(RESUME, CANCEL, scope="resume cancel", conversation_id="abc")
    refusal = refused(head("PUT", b"/direct/v1/stream"), grant_claims)
    assert (refusal.status, refusal.message) == (405, "This token allows this route only with DELETE or GET.")


def test_chat_with_get_is_405():
    refusal = refused(head("GET", b"/direct/v1/chat/completions"), claims())
    assert (refusal.status, refusal.message) == (405, "This token allows this route only with POST.")


def test_streams_lookup_is_never_routed_even_when_granted():
    grant_claims = claims(CHAT, ("POST", "/v1/streams/lookup"))
    refusal = refused(chat_head(b"/direct/v1/streams/lookup"), grant_claims)
    assert (refusal.status, refusal.code) == (404, "no_such_route")


def test_a_grant_cannot_open_a_path_outside_the_lane_routes():
    grant_claims = claims(CHAT, ("GET", "/props"), ("GET", "/v1/models"))
    for target in (b"/direct/props", b"/direct/v1/models"):
        refusal = refused(head("GET", target, (b"origin", ORIGIN.encode())), grant_claims)
        assert (refusal.status, refusal.code) == (404, "no_such_route")


def test_scope_must_cover_the_route():
    refusal = refused(chat_head(), claims(CHAT, scope="resume"))
    assert (refusal.status, refusal.code, refusal.message) == (
        403,
        "scope_mismatch",
        "The token's scope does not cover this route.",
    )


# --- the query --------------------------------------------------------------------------------


@pytest.mark.parametrize("query", [b"?", b"?stream=true", b"?conv_id=abc"])
def test_chat_takes_no_query(query):
    refusal = refused(chat_head(b"/direct/v1/chat/completions" + query), claims())
    assert (refusal.status, refusal.code, refusal.message) == (400, "bad_query", "This route takes no query string.")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (b"", "This route needs conv_id in its query."),
        (b"?", "This route needs conv_id in its query."),
        (b"?from=3", "This route needs conv_id in its query."),
        (b"?conv_id=abc&limit=3", "This route takes only conv_id and from in its query."),
        (b"?conv_id=abc&conv_id=abc", "A query parameter must appear at most once."),
        (b"?conv_id=abc&", "Each query parameter must be name=value."),
        (b"?conv_id", "Each query parameter must be name=value."),
        (b"?=abc", "Each query parameter must be name=value."),
        (b"?conv_id=abc&from=-1", "from must be a non-negative integer."),
        (b"?conv_id=abc&from=%2B1", "from must be a non-negative integer."),
        (b"?conv_id=abc&from=1.5", "from must be a non-negative integer."),
        (b"?conv_id=abc&from=", "from must be a non-negative integer."),
        (b"?conv_id=abc&from=x", "from must be a non-negative integer."),
        (b"?conv_id=abc&from=1234567890123456789", "from must be a non-negative integer."),
        (b"?conv_id=a+c", "A query value is not validly encoded."),
        (b"?conv_id=a%zzc", "A query value is not validly encoded."),
        (b"?conv_id=a%2", "A query value is not validly encoded."),
        (b"?conv_id=a%ffc", "A query value is not validly encoded."),
    ],
)
def test_bad_resume_queries_are_400(query, message):
    refusal = refused(resume_head(query), RESUME_CLAIMS)
    assert (refusal.status, refusal.code, refusal.message) == (400, "bad_query", message)


def test_cancel_takes_no_from():
    request = head("DELETE", b"/direct/v1/stream?conv_id=abc&from=1", (b"origin", ORIGIN.encode()))
    refusal = refused(request, CANCEL_CLAIMS)
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "bad_query",
        "This route takes only conv_id in its query.",
    )


@pytest.mark.parametrize("query", [b"?conv_id=abd", b"?conv_id=ABC", b"?conv_id=abc%20", b"?conv_id="])
def test_conv_id_must_equal_the_grants(query):
    refusal = refused(resume_head(query), RESUME_CLAIMS)
    assert (refusal.status, refusal.code) == (403, "conversation_mismatch")


def test_stream_route_needs_a_grant_with_a_conversation():
    refusal = refused(resume_head(b"?conv_id=abc"), claims(RESUME, scope="resume"))
    assert (refusal.status, refusal.code) == (403, "conversation_not_granted")


# --- Origin -----------------------------------------------------------------------------------


def test_post_without_origin_is_403():
    refusal = refused(head("POST", b"/direct/v1/chat/completions", JSON), claims())
    assert (refusal.status, refusal.code, refusal.message) == (
        403,
        "origin_required",
        "This token needs the Origin it was issued for.",
    )


@pytest.mark.parametrize(
    "origin", [b"http://evil.example", b"null", b"http://127.0.0.1:8000/", b"HTTP://127.0.0.1:8000"]
)
def test_origin_must_equal_the_grants(origin):
    refusal = refused(head("POST", b"/direct/v1/chat/completions", (b"origin", origin), JSON), claims())
    assert (refusal.status, refusal.code, refusal.message) == (
        403,
        "origin_mismatch",
        "The Origin does not match the token's origin.",
    )


def test_same_origin_get_may_omit_origin():
    request = head("GET", b"/direct/v1/stream?conv_id=abc", (b"sec-fetch-site", b"same-origin"))
    assert check_request(request, RESUME_CLAIMS).lane == lanes.RESUME


@pytest.mark.parametrize("sites", [[], [b"cross-site"], [b"same-site"], [b"none"], [b"same-origin", b"cross-site"]])
def test_get_without_origin_needs_sec_fetch_site_same_origin(sites):
    request = head("GET", b"/direct/v1/stream?conv_id=abc", *[(b"sec-fetch-site", s) for s in sites])
    refusal = refused(request, RESUME_CLAIMS)
    assert (refusal.status, refusal.code) == (403, "origin_required")


def test_delete_without_origin_is_403_even_same_origin():
    request = head("DELETE", b"/direct/v1/stream?conv_id=abc", (b"sec-fetch-site", b"same-origin"))
    refusal = refused(request, CANCEL_CLAIMS)
    assert (refusal.status, refusal.code) == (403, "origin_required")


def test_grant_without_origin_refuses_any_origin():
    refusal = refused(chat_head(), claims(origin=None))
    assert (refusal.status, refusal.code, refusal.message) == (
        403,
        "origin_not_allowed",
        "This token was issued for use without an Origin header.",
    )


def test_grant_without_origin_serves_a_request_without_one():
    request = head("POST", b"/direct/v1/chat/completions", JSON)
    assert check_request(request, claims(origin=None)).lane == lanes.CHAT


@pytest.mark.parametrize(
    ("extra", "label"),
    [
        ([(b"origin", ORIGIN.encode()), (b"x-conversation-id", b"c")], "Origin"),
        ([(b"x-conversation-id", b"c"), (b"x-conversation-id", b"c")], "X-Conversation-Id"),
        ([(b"x-conversation-id", b"c"), JSON], "Content-Type"),
    ],
)
def test_duplicate_checked_headers_are_400(extra, label):
    refusal = refused(chat_head(b"/direct/v1/chat/completions", *extra), claims(conversation_id="c"))
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "duplicate_header",
        f"The {label} header must appear at most once.",
    )


# --- X-Conversation-Id ------------------------------------------------------------------------


def test_chat_needs_the_grants_conversation_header():
    refusal = refused(chat_head(), claims(conversation_id="c-1"))
    assert (refusal.status, refusal.code) == (400, "missing_conversation_id")


@pytest.mark.parametrize("value", [b"c-2", b"C-1", b"c-1 ", b""])
def test_conversation_header_must_equal_the_grants(value):
    request = chat_head(b"/direct/v1/chat/completions", (b"x-conversation-id", value))
    refusal = refused(request, claims(conversation_id="c-1"))
    assert (refusal.status, refusal.code, refusal.message) == (
        403,
        "conversation_mismatch",
        "X-Conversation-Id does not match the token's conversation.",
    )


def test_conversation_header_without_a_granted_conversation_is_403():
    request = chat_head(b"/direct/v1/chat/completions", (b"x-conversation-id", b"someone-elses"))
    refusal = refused(request, claims())
    assert (refusal.status, refusal.code) == (403, "conversation_not_granted")


def test_resume_may_repeat_the_conversation_header():
    request = resume_head(b"?conv_id=abc", (b"x-conversation-id", b"abc"))
    assert check_request(request, RESUME_CLAIMS).upstream_target == "/v1/stream?conv_id=abc"


def test_resume_with_another_conversation_header_is_403():
    request = resume_head(b"?conv_id=abc", (b"x-conversation-id", b"xyz"))
    refusal = refused(request, RESUME_CLAIMS)
    assert (refusal.status, refusal.code) == (403, "conversation_mismatch")


# --- the body's headers -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"application/json", b"application/json; charset=utf-8", b"Application/JSON"])
def test_json_content_types_pass(value):
    request = head("POST", b"/direct/v1/chat/completions", (b"origin", ORIGIN.encode()), (b"content-type", value))
    assert check_request(request, claims()).lane == lanes.CHAT


@pytest.mark.parametrize(
    "headers", [[], [(b"content-type", b"text/plain;charset=UTF-8")], [(b"content-type", b"application/jsonx")]]
)
def test_chat_body_must_be_json(headers):
    request = head("POST", b"/direct/v1/chat/completions", (b"origin", ORIGIN.encode()), *headers)
    refusal = refused(request, claims())
    assert (refusal.status, refusal.code) == (415, "unsupported_media_type")


def test_content_encoded_chat_body_is_415():
    refusal = refused(chat_head(b"/direct/v1/chat/completions", (b"content-encoding", b"gzip")), claims())
    assert (refusal.status, refusal.code) == (415, "unsupported_encoding")


# --- properties -------------------------------------------------------------------------------

EVERYTHING = claims(CHAT, RESUME, CANCEL, scope="chat resume cancel", origin=None, conversation_id="abc")
UPSTREAM = re.compile(r"/v1/chat/completions|/v1/stream\?conv_id=abc(&from=(0|[1-9][0-9]*))?")
PIECES = st.sampled_from(
    [
        "/",
        ".",
        "..",
        "%",
        "2e",
        "2E",
        "2f",
        "5c",
        "\\",
        "direct",
        "DIRECT",
        "v1",
        "V1",
        "chat",
        "completions",
        "stream",
        "streams",
        "lookup",
        "?",
        "&",
        "=",
        "conv_id",
        "abc",
        "from",
        "12",
        "-",
        "+",
        "#",
        "\x00",
        "props",
    ]
)


def _check_upstream(method: str, target: bytes) -> None:
    request = RequestHead(method, target, [JSON])
    try:
        route = check_request(request, EVERYTHING)
    except RequestRefusal as refusal:
        assert refusal.status in (400, 403, 404, 405, 415)
        return
    assert UPSTREAM.fullmatch(route.upstream_target)
    assert (route.method, route.upstream_target.partition("?")[0]) in ROUTE_AT


@given(st.sampled_from(["GET", "POST", "DELETE", "PUT", "get"]), st.lists(PIECES, max_size=14))
def test_assembled_paths_never_leave_the_three_routes(method, pieces):
    _check_upstream(method, "".join(pieces).encode())


@given(st.sampled_from(["GET", "POST", "DELETE"]), st.binary(max_size=60))
def test_random_targets_never_leave_the_three_routes(method, suffix):
    _check_upstream(method, b"/direct/v1/" + suffix)


# --- preflight --------------------------------------------------------------------------------

APP = "https://app.example"


CHAT_TARGET = b"/direct/v1/chat/completions"


def _preflight(origin: str, method: str | None, headers: str | None, target: bytes = CHAT_TARGET) -> object:
    return allowed_preflight(origin, frozenset({APP}), method, headers, target=target)


def test_preflight_for_an_allowed_origin():
    headers = _preflight(APP, "POST", "authorization, content-type, X-Conversation-Id")
    assert headers == [
        (b"access-control-allow-origin", b"https://app.example"),
        (b"access-control-allow-methods", b"GET, POST, DELETE"),
        (b"access-control-allow-headers", b"authorization, content-type, X-Conversation-Id"),
        (b"access-control-max-age", b"600"),
        (b"vary", b"Origin, Access-Control-Request-Headers"),
    ]


def test_preflight_answers_exactly_the_names_an_sdk_asks_for():
    asked = (
        "authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,"
        "x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,"
        "x-stainless-runtime-version,x-stainless-timeout"
    )
    answer = dict(_preflight(APP, "POST", asked))
    assert answer[b"access-control-allow-headers"] == asked.replace(",", ", ").encode()


def test_preflight_allows_any_token_name_and_skips_empty_elements():
    answer = dict(_preflight(APP, "POST", " x-api-key ,\tcookie,, !#$%&'*+.^_`|~09azAZ- "))
    assert answer[b"access-control-allow-headers"] == b"x-api-key, cookie, !#$%&'*+.^_`|~09azAZ-"


def test_preflight_without_requested_headers_names_none():
    for asked in (None, "", " , "):
        answer = _preflight(APP, "DELETE", asked, target=b"/direct/v1/stream?conv_id=c1")
        assert isinstance(answer, list)
        assert b"access-control-allow-headers" not in dict(answer)


def test_preflight_takes_32_names_and_refuses_33():
    names = [f"x-h{i}" for i in range(33)]
    assert isinstance(_preflight(APP, "POST", ", ".join(names[:32])), list)
    refusal = _preflight(APP, "POST", ", ".join(names))
    assert isinstance(refusal, RequestRefusal)
    assert (refusal.status, refusal.code) == (400, "bad_preflight")
    assert "32" in refusal.message


@pytest.mark.parametrize(
    ("origin", "method", "headers", "target", "expected"),
    [
        ("https://evil.example", "POST", None, CHAT_TARGET, (403, "origin_not_allowed")),
        ("https://app.example.evil", "POST", None, CHAT_TARGET, (403, "origin_not_allowed")),
        ("https://evil.example", "POST", "x-a" + ", x-a" * 40, CHAT_TARGET, (403, "origin_not_allowed")),
        (APP, None, None, CHAT_TARGET, (400, "bad_preflight")),
        (APP, "PUT", None, CHAT_TARGET, (405, "method_not_allowed")),
        (APP, "post", None, CHAT_TARGET, (405, "method_not_allowed")),
        (APP, "GET", None, CHAT_TARGET, (405, "method_not_allowed")),
        (APP, "POST", None, b"/direct/v1/stream", (405, "method_not_allowed")),
        (APP, "POST", None, b"/direct/v1/props", (404, "no_such_route")),
        (APP, "GET", None, b"/direct/v1/streams/lookup", (404, "no_such_route")),
        (APP, "POST", None, b"/v1/chat/completions", (404, "no_such_route")),
        (APP, "POST", None, b"/direct/v1/%2e%2e/props", (400, "ambiguous_path")),
        (APP, "POST", ", ".join(f"x-h{i}" for i in range(40)), CHAT_TARGET, (400, "bad_preflight")),
        (APP, "POST", "authorization, x api key", CHAT_TARGET, (400, "bad_preflight")),
        (APP, "POST", "authorization, x-a:b", CHAT_TARGET, (400, "bad_preflight")),
        (APP, "POST", "x-a\r\nset-cookie", CHAT_TARGET, (400, "bad_preflight")),
        (APP, "POST", "x-\u00e9", CHAT_TARGET, (400, "bad_preflight")),
        (APP, "POST", "(x)", CHAT_TARGET, (400, "bad_preflight")),
    ],
)
def test_preflight_refusals_are_returned(origin, method, headers, target, expected):
    refusal = allowed_preflight(origin, frozenset({APP}), method, headers, target=target)
    assert isinstance(refusal, RequestRefusal)
    assert (refusal.status, refusal.code) == expected


@given(st.text(max_size=200))
def test_any_requested_header_list_is_echoed_only_as_tokens(asked):
    answer = _preflight(APP, "POST", asked)
    if isinstance(answer, RequestRefusal):
        assert (answer.status, answer.code) == (400, "bad_preflight")
        return
    echoed = dict(answer).get(b"access-control-allow-headers", b"").decode("ascii")
    names = [name for name in echoed.split(", ") if name]
    assert len(names) <= 32
    assert all(re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) for name in names)
