"""Fuzzing the proxy's reading of a request against a lenient upstream's (aiohttp's).

Hypothesis writes HTTP/1 requests from awkward pieces (dot segments, escapes, fragments,
backslashes, numeric host spellings, cookie headers split with `;` and `,`, quotes). Each is
parsed the way the addon sees it (mitmproxy's HTTP/1 reader, then `hygiene` and
`request_view`) and the way an aiohttp upstream serves it (aiohttp's pure-Python request
parser, then `web.Request`). Whenever the addon would decide on the request (no `hygiene`
refusal), what the rules read must be what the upstream serves:

- the path the rules match is the rule form of the path the upstream routes on;
- the Host name the upstream reads is one of the names host rules read;
- the token cookie the upstream reads is the token the addon extracts (the addon may find one
  where the upstream reads none, never the other way round).
"""

from __future__ import annotations

import asyncio
import re
from unittest import mock

from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mitmproxy.net.http.http1 import read_request_head
from multidict import CIMultiDict

from claimroute.match.hostnames import canonical_host
from claimroute.match.paths import normalize_path
from claimroute.mitm.addon import request_view
from claimroute.mitm.hygiene import request_problem
from claimroute.pipeline.extract import extract_tokens
from claimroute.policy.model import TokenSource

CREDENTIALS = re.compile(
    r"(?<![A-Za-z])(?:GOOD|FORGED|UPPER)(?![A-Za-z])"
)  # the token values the cookie pieces carry
JWT_TEXT = re.compile(r"[A-Za-z0-9_\-.]*")
COOKIE_SOURCE = TokenSource(headers=(), query_params=(), cookies=("session",))

PATH_PIECES = st.sampled_from(
    ["/", "admin", "api", ".", "..", "%2e", "%2E%2e", "%2f", "%2F", "%5c", "\\", "%61", "%25",
     "#", "?", "x=1", "&", ";", "//", "a", "%00", "%ff", "é", "~", "+"]
)  # fmt: skip
HOSTS = st.sampled_from(
    ["public.test", "PUBLIC.test.", "public.test:8080", "127.0.0.1", "127.1", "2130706433",
     "0x7f000001", "0177.0.0.1", "[::ffff:127.0.0.1]", "[::1]:80", "u@admin.internal",
     "admin.internal", "a b", "public.test, admin.internal", "ex%61mple", ""]
)  # fmt: skip
COOKIE_PIECES = st.sampled_from(
    ["session=GOOD", "session=FORGED", "x=1", "theme=dark", ";", "; ", ",", ", ", " ",
     '"', "session", "=", 'session="GOOD"', "Session=UPPER"]
)  # fmt: skip


def parse_upstream(raw: bytes):
    """aiohttp's reading of the request: the message, then its `web.Request`."""
    parser = HttpRequestParserPy(mock.Mock(), asyncio.new_event_loop(), max_line_size=65536)
    messages, _, _ = parser.feed_data(raw)
    message = messages[0][0]
    # `web.Request` reads Host and cookies from the parsed headers (its URL is the parser's).
    request = make_mocked_request(message.method, "/", headers=CIMultiDict(message.headers))
    return message, request


def parse_proxy(raw: bytes):
    head, _, _ = raw.partition(b"\r\n\r\n")
    return read_request_head(head.split(b"\r\n"))


def request_bytes(target: str, hosts: list[str], cookies: list[str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1"]
    lines += [f"Host: {host}" for host in hosts]
    lines += [f"Cookie: {cookie}" for cookie in cookies]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    target=st.lists(PATH_PIECES, min_size=1, max_size=8).map(lambda p: "/" + "".join(p)),
    hosts=st.lists(HOSTS, min_size=1, max_size=2),
    cookies=st.lists(st.lists(COOKIE_PIECES, min_size=1, max_size=6).map("".join), max_size=2),
)
def test_the_addon_decides_on_what_a_lenient_upstream_serves(target, hosts, cookies) -> None:
    raw = request_bytes(target, hosts, cookies)
    try:
        proxy_request = parse_proxy(raw)
        message, upstream = parse_upstream(raw)
    except Exception:
        assume(False)  # one of the two refuses the bytes outright: nothing is served
        return
    if request_problem(proxy_request, COOKIE_SOURCE.cookies, reads_query=False) is not None:
        return  # refused with 400 before any decision
    view = request_view(proxy_request, reads_query=False, reads_cookies=True)

    # Paths: the rules' form of what the upstream routes on (its raw path without the query).
    served_path = message.path.split("?", 1)[0]
    assert view.rule_path == normalize_path(served_path), (target, served_path)

    # Hosts: the name the upstream reads is among the names host rules read.
    if upstream.host:
        assert canonical_host(upstream.host) in view.host_names, (hosts, view.host_names)

    # Cookies: the token the upstream reads is the one the addon extracts.
    found = extract_tokens(view, COOKIE_SOURCE)
    upstream_token = upstream.cookies.get("session")
    if upstream_token:  # a bare `session` (empty value) is no credential
        ours = [f.token for f in found]
        assert len(ours) == 1, (cookies, ours)
        # The two readings may differ in form (aiohttp unquotes `"GOOD"` or keeps `"GOOD",x=1`
        # whole, mitmproxy keeps a trailing space), never in credential: the upstream's value
        # holds no credential but the one the addon verifies. Or the addon's token has a
        # character no JWT has, so it never verifies (refused, or the cookie removed).
        theirs = set(CREDENTIALS.findall(upstream_token))
        assert theirs <= {ours[0]} or not JWT_TEXT.fullmatch(ours[0]), (cookies, ours, theirs)
    # (The addon may find a token where the upstream reads none: several Cookie headers, of
    # which aiohttp reads the first, or a bare `session` that empties the upstream's value.
    # The upstream then acts on no credential at all, which is safe.)
