"""Requests the client, mitmproxy and the upstream could read differently (hygiene.py), and
host names in one spelling (hostnames.py). End to end: tests/e2e/test_e2e_differential.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.test import tutils

from claimroute.errors import MULTIPLE_TOKENS
from claimroute.match.hostnames import canonical_host, host_value_problem
from claimroute.mitm import hygiene


def request(path: str = "/x", *headers: tuple[str, str], method: str = "GET", h2: bool = False):
    req = tutils.treq(method=method.encode(), path=path.encode(), authority=b"")
    req.headers.clear()
    for name, value in headers:
        req.headers.add(name, value)
    if h2:
        req.http_version = "HTTP/2.0"
    return req


def reason(rejection) -> str | None:
    return None if rejection is None else rejection.reason


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/admin#/../x", hygiene.FRAGMENT),
        ("/secret#x", hygiene.FRAGMENT),
        ("http://host/admin", hygiene.BAD_TARGET),
        ("admin", hygiene.BAD_TARGET),
        ("/a b", hygiene.BAD_TARGET),
        ("/a\tb", hygiene.BAD_TARGET),
        ("/a\x7fb", hygiene.BAD_TARGET),
        ("/ok", None),
        ("/ok?q=a%20b&x=/y", None),
        ("/caf\u00e9", None),
    ],
)
def test_request_targets(path: str, expected: str | None) -> None:
    assert reason(hygiene.target_problem("GET", path)) == expected


def test_asterisk_form_only_for_options() -> None:
    assert hygiene.target_problem("OPTIONS", "*") is None
    assert reason(hygiene.target_problem("GET", "*")) == hygiene.BAD_TARGET


@pytest.mark.parametrize("value", [b"a\r\n b", b"a\rb", b"a\nb", b"a\x00b"])
def test_line_breaks_and_nul_in_header_values_are_refused(value: bytes) -> None:
    assert reason(hygiene.header_problem(((b"x-a", value),))) == hygiene.BAD_HEADER
    assert hygiene.header_problem(((b"x-a", b"a\tb c"),)) is None


def test_host_values() -> None:
    assert hygiene.host_problem(request("/", ("Host", "api.test:8080"))) is None
    assert reason(hygiene.host_problem(request("/", ("Host", "u@admin.internal")))) == (
        hygiene.BAD_HOST
    )
    assert reason(hygiene.host_problem(request("/", ("Host", "a"), ("Host", "b")))) == (
        hygiene.MULTIPLE_HOSTS
    )
    absolute = request("/", ("Host", "public.test"))
    absolute.authority = "u@admin.internal:80"
    assert reason(hygiene.host_problem(absolute)) == hygiene.BAD_HOST


def test_every_name_counts_unless_the_operator_chose_the_target() -> None:
    req = request("/", ("Host", "Public.Test."))
    req.data.host = "127.1"
    req.authority = "0x7f000001:80"
    assert hygiene.host_names(req, client_chose_target=True) == ("public.test", "127.0.0.1")
    req.authority = ""
    req.data.host = "10.0.0.1"
    assert hygiene.host_names(req, client_chose_target=False) == ("public.test",)
    no_host = request("/")
    no_host.data.host = "10.0.0.1"
    assert hygiene.host_names(no_host, client_chose_target=False) == ("10.0.0.1",)


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        ("x=1, session=forged", hygiene.AMBIGUOUS_COOKIE),
        ("session=good; y=1, session=forged", hygiene.AMBIGUOUS_COOKIE),
        ("session=a; session=b", MULTIPLE_TOKENS),
        ("session=good session=forged", hygiene.AMBIGUOUS_COOKIE),
        ("x=1 session=forged", hygiene.AMBIGUOUS_COOKIE),
        ('session="good",Session=other', hygiene.AMBIGUOUS_COOKIE),
        ('session="good",x=1', hygiene.AMBIGUOUS_COOKIE),
        ("a=1;session=good;b=2", None),
        ("session=good; theme=dark", None),
        ("theme=dark, other=1", None),
        ('session="good"', None),
    ],
)
def test_token_cookies_are_read_alike_by_strict_and_lenient_parsers(cookie, expected) -> None:
    got = hygiene.cookie_problem(request("/", ("Cookie", cookie)), ("session",))
    assert reason(got) == expected


def test_two_cookie_headers_each_with_the_token_cookie() -> None:
    req = request("/", ("Cookie", "session=a"), ("Cookie", "session=b"))
    assert reason(hygiene.cookie_problem(req, ("session",))) == MULTIPLE_TOKENS


def test_size_limits_on_parsed_locations() -> None:
    huge_cookie = request("/", ("Cookie", "a=" + "x" * hygiene.MAX_COOKIE_CHARS))
    assert hygiene.cookie_problem(huge_cookie, ("session",)).status == 431
    long_query = request("/p?" + "q" * (hygiene.MAX_QUERY_CHARS + 1))
    assert hygiene.request_problem(long_query, (), reads_query=True).status == 414
    assert hygiene.request_problem(long_query, (), reads_query=False) is None


def test_http2_body_gets_exactly_one_framing() -> None:
    req = request("/ok", method="POST", h2=True)
    req.data.content = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
    hygiene.mark_streamable_body(req)
    assert req.headers["transfer-encoding"] == "chunked"
    hygiene.frame_body(req)
    assert "transfer-encoding" not in req.headers
    assert req.headers["content-length"] == str(len(req.data.content))
    empty = request("/ok", h2=True)
    empty.data.content = b""
    hygiene.frame_body(empty)
    assert "content-length" not in empty.headers
    http1 = request("/ok", ("Transfer-Encoding", "chunked"), method="POST")
    http1.data.content = b"abc"
    hygiene.frame_body(http1)  # HTTP/1 framing is mitmproxy's, validated on the way in
    assert "content-length" not in http1.headers


def test_trailers_are_refused() -> None:
    req = request("/ok", method="POST")
    assert hygiene.trailers_problem(req) is None
    req.trailers = [(b"x-user", b"admin")]
    assert reason(hygiene.trailers_problem(req)) == hygiene.TRAILERS


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
        ("[::ffff:7f00:1]:8080", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("[::1]:80", "::1"),
        ("[0:0::1]", "::1"),
        ("Admin.Example.:8080", "admin.example"),
        ("deadbeef", "deadbeef"),
        ("cafe.bad", "cafe.bad"),
    ],
)
def test_canonical_host(spelling: str, canonical: str) -> None:
    assert canonical_host(spelling) == canonical


@pytest.mark.parametrize("value", ["u@admin", "a b", "a,b", "x/y", "ex%61mple", "a\tb"])
def test_invalid_host_values(value: str) -> None:
    assert host_value_problem(value) is not None


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from(["dec", "hex", "oct"]))
def test_every_single_number_spelling_of_an_address_is_that_address(number: int, form: str):
    import ipaddress

    spelled = {"dec": str(number), "hex": hex(number), "oct": "0" + oct(number)[2:]}[form]
    # The "any" address 0.0.0.0 connects to loopback: it is 127.0.0.1 to host rules.
    expected = "127.0.0.1" if number == 0 else str(ipaddress.IPv4Address(number))
    assert canonical_host(spelled) == expected


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        ("session =forged", hygiene.AMBIGUOUS_COOKIE),
        ("session\t= forged", hygiene.AMBIGUOUS_COOKIE),
        ("a=1; session  =  x", hygiene.AMBIGUOUS_COOKIE),
        ("session=good", None),
    ],
)
def test_whitespace_around_the_equals_sign_of_a_token_cookie(cookie, expected) -> None:
    """aiohttp, SimpleCookie and most frameworks read `session =x` as the session cookie;
    mitmproxy reads a cookie named `session ` (review finding F2)."""
    got = hygiene.cookie_problem(request("/", ("Cookie", cookie)), ("session",))
    assert reason(got) == expected


@pytest.mark.parametrize("name", ["X_Auth_Token", "x_auth-token", "X-AUTH_TOKEN"])
def test_underscore_spellings_of_a_token_header_are_refused(name: str) -> None:
    """CGI/WSGI read `x_auth_token` and `x-auth-token` as one variable (review finding F3)."""
    fields = ((name.encode(), b"forged"),)
    got = hygiene.token_header_problem(fields, ["x-auth-token"])
    assert reason(got) == hygiene.AMBIGUOUS_TOKEN_HEADER
    assert hygiene.token_header_problem(((b"x-auth-token", b"t"),), ["x-auth-token"]) is None
    assert hygiene.token_header_problem(((b"x_other", b"t"),), ["x-auth-token"]) is None


@pytest.mark.parametrize("value", [b"\x0bBearer x", b"a\x0cb", b"a\x1bb", b"a\x7fb", b"a\x01b"])
def test_every_control_character_but_tab_is_refused(value: bytes) -> None:
    """Control characters are whitespace to loose parsers (review finding F4)."""
    assert reason(hygiene.header_problem(((b"authorization", value),))) == hygiene.BAD_HEADER


@pytest.mark.parametrize("spelling", ["0.0.0.0", "0", "0x0", "0.0", "[::ffff:0.0.0.0]"])
def test_the_any_address_is_loopback_to_host_rules(spelling: str) -> None:
    """Connecting to 0.0.0.0 (or ::) reaches loopback (review finding F1)."""
    assert canonical_host(spelling) == "127.0.0.1"
    assert canonical_host("[::]") == "::1"
