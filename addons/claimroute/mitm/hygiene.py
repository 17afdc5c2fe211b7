"""Requests the client, mitmproxy and the upstream could read differently: refused before any
decision is made, or repaired before they leave.

The decision is made on mitmproxy's parse of a request; the upstream serves its own parse of
the bytes mitmproxy sends on. Wherever the two could differ (a fragment, a target that is not
a path, a header value with a line break, a Host value with userinfo, a cookie header that a
lenient parser splits otherwise, a body without framing after an HTTP/2 to HTTP/1 downgrade),
the request is refused with 400 or repaired, so that the decision is always made on the request
the upstream will serve. docs/security.md lists each case with its reason.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from mitmproxy import http

from claimroute import errors as E
from claimroute.errors import Rejection
from claimroute.match.hostnames import canonical_host, host_value_problem
from claimroute.mitm.flowedit import HeaderSnapshot

FRAGMENT = "Fragment in the request target"
BAD_TARGET = "Invalid request target"
BAD_HEADER = "Invalid character in a header value"
BAD_HOST = "Invalid Host"
MULTIPLE_HOSTS = "Multiple Host headers"
AMBIGUOUS_COOKIE = "Ambiguous Cookie header"
AMBIGUOUS_TOKEN_HEADER = "Ambiguous token header"
TRAILERS = "Request trailers are not supported"
# Limits on the token locations that are parsed per request (only when the policy reads them).
MAX_QUERY_CHARS = 64 * 1024
MAX_COOKIE_CHARS = 64 * 1024
QUERY_TOO_LONG = "Query string too long"
COOKIE_TOO_LONG = "Cookie header too large"

# A request target's characters: none of these may appear (RFC 9112 §3.2, RFC 3986 §3.3): the
# controls and space (a second request line could be written after them), `#` (a fragment is
# never sent: `/admin#/../x` is `/x` to a normaliser and `/admin` to the upstream).
_TARGET_FORBIDDEN = re.compile(r"[\x00-\x20\x7f#]")
# RFC 9110 §5.5: a field value holds no control character but HTAB. CR, LF and NUL would let a
# lenient upstream read a header of its own; the others (VT, FF, ...) are whitespace to
# parsers that split loosely, e.g. `\x0bBearer <token>` read as a bearer token.
_CONTROL_CHARACTER = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# How lenient cookie parsers (aiohttp's, Python's SimpleCookie, many frameworks) find cookie
# names: after `;`, `,` (the old RFC 2109 separator) or whitespace, with whitespace allowed
# before `=`. None of those can be part of a cookie value (RFC 6265 §4.1.1).
_LENIENT_COOKIE_NAME = re.compile(r'(?:^|[;,\s])([^=;,\s"]+)\s*=')
# A token cookie as the only thing between two `;`: a cookie name, `=`, and a value of the
# characters a JWT (or another bearer token) holds, optionally in double quotes.
_PLAIN_TOKEN_COOKIE = re.compile(r'[^=\s;,"]+=("[A-Za-z0-9\-._~+/=]*"|[A-Za-z0-9\-._~+/=]*)')


def _bad(reason: str, status: int = 400) -> Rejection:
    return Rejection(status, reason, None, challenge=False)


def target_problem(method: str, path: str) -> Rejection | None:
    """The request target must be a path (`/...`, or `*` for OPTIONS) without a fragment,
    spaces or control characters.

    An HTTP/2 `:path` such as `http://host/admin` would be judged as a relative path while
    an HTTP/1 upstream reads it as absolute-form and serves `/admin` (RFC 9113 §8.3.1 requires
    `:path` to start with `/`).
    """
    if path == "*" and method == "OPTIONS":
        return None
    match = _TARGET_FORBIDDEN.search(path)
    if match is not None:
        return _bad(FRAGMENT if match.group() == "#" else BAD_TARGET)
    if not path.startswith("/"):
        return _bad(BAD_TARGET)
    return None


def header_problem(fields: tuple[tuple[bytes, bytes], ...]) -> Rejection | None:
    """No header value may hold a control character but tab: an obs-fold continuation
    (`X: a\\r\\n b`) or a bare CR is forwarded as sent, and a lenient upstream reads a header
    of its own out of it."""
    # One search over all values joined (by a space, which is allowed): cheaper than a loop.
    if _CONTROL_CHARACTER.search(b" ".join([value for _, value in fields])):
        return _bad(BAD_HEADER)
    return None


def host_problem(request: http.Request, values: list[str] | None = None) -> Rejection | None:
    """At most one Host header (RFC 9112 §3.2), and it and the authority (absolute-form or
    `:authority`) a plain `host[:port]`: no userinfo, no percent-escapes, no spaces. `values`:
    the Host values when the caller has them already."""
    if values is None:
        values = HeaderSnapshot(request.headers.fields).get_all("host")
    if len(values) > 1:
        return _bad(MULTIPLE_HOSTS)
    authority = request.authority
    for value in (*values, authority) if authority else values:
        if host_value_problem(value) is not None:
            return _bad(BAD_HOST)
    return None


def host_names(
    request: http.Request, *, client_chose_target: bool, values: list[str] | None = None
) -> tuple[str, ...]:
    """Every name the request is addressed to, canonical: the Host value, the authority, and
    the target mitmproxy connects to when the client chose it (regular, transparent and
    upstream modes; in reverse mode the operator chose it). Host rules read all of them.
    `values`: the Host values when the caller has them already."""
    if values is None:
        values = HeaderSnapshot(request.headers.fields).get_all("host")
    names = [canonical_host(value) for value in values]
    if request.authority:
        names.append(canonical_host(request.authority))
    if client_chose_target or not names:
        names.append(canonical_host(request.host))
    return tuple(dict.fromkeys(names))


def cookie_problem(request: http.Request, token_cookies: Collection[str]) -> Rejection | None:
    """A token cookie must be read the same by mitmproxy and by lenient parsers.

    mitmproxy splits a Cookie header at `;` only, lenient parsers at `,` and spaces too, and
    they treat quotes differently: in `x=1, session=<forged>` the proxy sees no `session`
    cookie while the upstream reads the forged one. So a token cookie must stand alone between
    two `;` as `name=value` (the value a plain token, optionally quoted), must appear once, and
    both readings must give it alike; anything else is refused.
    """
    values = request.headers.get_all("cookie")
    if not values:
        return None
    if sum(map(len, values)) > MAX_COOKIE_CHARS:
        return _bad(COOKIE_TOO_LONG, 431)
    lenient = []
    for value in values:
        for segment in value.split(";"):
            # Every `name =` a lenient parser could see in this segment (it splits at `,` and
            # whitespace too, and allows whitespace around `=`).
            for name in _LENIENT_COOKIE_NAME.findall(segment):
                if name in token_cookies:
                    plain = _PLAIN_TOKEN_COOKIE.fullmatch(segment.strip())
                    if plain is None:
                        return _bad(AMBIGUOUS_COOKIE)
                    lenient.append((name, plain.group(1).strip('"')))
    if len(lenient) > 1:
        # As for two tokens anywhere else (RFC 6750 §2): the same refusal and challenge.
        return Rejection(400, E.MULTIPLE_TOKENS, "invalid_request")
    strict = [
        (name, content.strip().strip('"'))
        for name, content in request.cookies.items(multi=True)
        if name in token_cookies
    ]
    if strict != lenient:
        return _bad(AMBIGUOUS_COOKIE)
    return None


def token_header_problem(
    fields: tuple[tuple[bytes, bytes], ...], token_headers: Collection[str]
) -> Rejection | None:
    """A header spelled like a token header with `_` for `-` (`X_Auth_Token` for
    `x-auth-token`) is refused: CGI and WSGI servers read both spellings as one variable
    (`HTTP_X_AUTH_TOKEN`), so the upstream would see a credential the proxy never verified."""
    if b"_" not in b"".join([name for name, _ in fields]):
        return None  # the usual request: one C-level check instead of a loop
    for name, _ in fields:
        if b"_" in name and name.lower().replace(b"_", b"-").decode("latin-1") in token_headers:
            return _bad(AMBIGUOUS_TOKEN_HEADER)
    return None


def request_problem(
    request: http.Request,
    token_cookies: Collection[str],
    reads_query: bool,
    token_headers: Collection[str] = (),
    host_values: list[str] | None = None,
) -> Rejection | None:
    """Why the request must be refused before any decision, or None. `host_values`: the Host
    values when the caller has them already."""
    fields = request.headers.fields
    return (
        target_problem(request.method, request.path)
        or header_problem(fields)
        or (token_header_problem(fields, token_headers) if token_headers else None)
        or host_problem(request, host_values)
        or (_query_problem(request.path) if reads_query else None)
        or (cookie_problem(request, token_cookies) if token_cookies else None)
    )


def _query_problem(path: str) -> Rejection | None:
    query_start = path.find("?")
    if query_start >= 0 and len(path) - query_start > MAX_QUERY_CHARS:
        return _bad(QUERY_TOO_LONG, 414)
    return None


def frame_body(request: http.Request) -> None:
    """Give an HTTP/2 or HTTP/3 request whose body has arrived exactly one framing: a
    `content-length` equal to the body, no `transfer-encoding`.

    Those protocols frame the body themselves and may omit `content-length`; mitmproxy's
    conversion to HTTP/1 then sends the body with no framing at all, and an HTTP/1 upstream
    reads it as the next request (request smuggling past every check).
    """
    if not (request.is_http2 or request.is_http3):
        return
    headers = request.headers
    if "transfer-encoding" in headers:
        del headers["transfer-encoding"]  # only ever set by `mark_streamable_body`
    body = request.raw_content or b""
    if body or "content-length" in headers:
        headers["content-length"] = str(len(body))


def mark_streamable_body(request: http.Request) -> None:
    """An HTTP/2 or HTTP/3 request without `content-length` that mitmproxy might stream
    (`stream_large_bodies`) is marked chunked, so that streamed to an HTTP/1 upstream its body
    is sent in chunks; `frame_body` puts the length back when it was not streamed."""
    if (request.is_http2 or request.is_http3) and "content-length" not in request.headers:
        request.headers["transfer-encoding"] = "chunked"


def body_length_unknown(request: http.Request) -> bool:
    """Whether a body of unknown length may still follow the headers: chunked HTTP/1, or
    HTTP/2 and HTTP/3 without `content-length` (mitmproxy may start streaming it later)."""
    if request.is_http2 or request.is_http3:
        return "content-length" not in request.headers
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def trailers_problem(request: http.Request) -> Rejection | None:
    """Request trailers are refused: mitmproxy cannot send them to an HTTP/1 upstream (the
    connection drops), and an upstream that merges trailers into headers would read identity
    headers the addon never saw."""
    return _bad(TRAILERS) if request.trailers else None
