"""Applying a decision to a mitmproxy request with as few header rebuilds as possible.

mitmproxy's `Headers` keeps the fields as a tuple of bytes pairs; every `headers[name] = v`,
`del headers[name]` or `name in headers` encodes the name and lower-cases every field again,
and every write rebuilds the tuple. The request path needs a dozen such steps per request, so
here they are done on one list and written once. Each function says which sequence of
mitmproxy operations it is equivalent to (tests/mitm/test_flowedit.py checks it against them).
"""

from __future__ import annotations

import functools

from mitmproxy import http
from mitmproxy.net.http import url

from claimroute.pipeline.decide import Decision
from claimroute.pipeline.extract import FoundToken
from claimroute.policy.routes import RouteChoice

# Header names and values are bytes in mitmproxy; `Headers` encodes and decodes them so.
_ENCODING = ("utf-8", "surrogateescape")

type Fields = list[tuple[bytes, bytes]]


def header_key(name: str | bytes) -> bytes:
    """A header name as `Headers` compares it: encoded like mitmproxy does, then lower-cased."""
    if isinstance(name, str):
        return _str_key(name)
    return name.lower()


@functools.lru_cache(maxsize=512)
def _str_key(name: str) -> bytes:
    # The names looked up per request come from the code and the policy (a handful), so each
    # is encoded and lower-cased once; the bound only guards against other callers.
    return name.encode(*_ENCODING).lower()


class HeaderSnapshot:
    """`get_all` over a request's header fields, with the names lower-cased once.

    It answers exactly what `Headers.get_all` answers for the same fields, without converting
    every name on every lookup (the stages look up several headers per request). It is a
    snapshot: the addon takes it after stripping identity headers, and the stages only read.
    """

    __slots__ = ("_fields", "_names")

    def __init__(self, fields: tuple[tuple[bytes, bytes], ...]) -> None:
        self._fields = fields
        self._names = [name.lower() for name, _ in fields]

    def get_all(self, name: str | bytes) -> list[str]:
        key = header_key(name)
        names = self._names
        # List scans run in C: most lookups (cookie, optional headers) miss, and most hits are
        # a single field (the Authorization header).
        if key not in names:
            return []
        if names.count(key) == 1:
            return [self._fields[names.index(key)][1].decode(*_ENCODING)]
        fields = self._fields
        return [fields[i][1].decode(*_ENCODING) for i, low in enumerate(names) if low == key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, (str, bytes)):
            return False
        return header_key(name) in self._names


def strip_key(name: str | bytes) -> bytes:
    """The form identity headers are compared in: lower-case, `_` read as `-`.

    CGI/WSGI servers (and others) map `x_user` and `x-user` to the same variable, so a client
    copy spelled with underscores must go too.
    """
    return header_key(name).replace(b"_", b"-")


def strip_headers(request: http.Request, keys: frozenset[bytes]) -> None:
    """Delete every field whose `strip_key` is in `keys`, in one pass.

    The same result as `del request.headers[name]` for each spelling present, and no write at
    all in the usual case where the client sent none of them.
    """
    headers = request.headers
    fields = headers.fields
    for name, _ in fields:
        if name.lower().replace(b"_", b"-") in keys:
            headers.fields = tuple(
                field for field in fields if field[0].lower().replace(b"_", b"-") not in keys
            )
            return


# One `Headers.set_all(name, values)`: the name as given, lower-cased, the new values, and
# whether values left over (more values than fields of that name) are appended. Only the Host
# update does not append: mitmproxy changes a Host header that is there and never adds one.
type _Edit = tuple[bytes, bytes, list[bytes], bool]


def _set_all(fields: Fields, lowers: list[bytes], edit: _Edit) -> None:
    """`Headers.set_all(name, values)` applied in place to a list of fields and the list of
    their lower-cased names (see `MultiDict.set_all`): matching fields keep their place and
    spelling and take the new values in order, surplus matches go, and values left over are
    appended under `name`."""
    key, lowered, values, append = edit
    pending = list(values)
    if lowered in lowers:
        kept: Fields = []
        kept_lowers: list[bytes] = []
        for field, field_lower in zip(fields, lowers, strict=True):
            if field_lower == lowered:
                if not pending:
                    continue
                field = (field[0], pending.pop(0))
            kept.append(field)
            kept_lowers.append(field_lower)
        fields[:] = kept
        lowers[:] = kept_lowers
    if append:
        for value in pending:
            fields.append((key, value))
            lowers.append(lowered)


def _apply_edits(fields: tuple[tuple[bytes, bytes], ...], edits: list[_Edit]) -> Fields:
    """The fields after the edits, one after the other."""
    names = {edit[1] for edit in edits}
    if len(names) < len(edits):
        # Two edits of one name (say a token header named `host`): apply them in turn.
        out = list(fields)
        lowers = [name.lower() for name, _ in out]
        for edit in edits:
            _set_all(out, lowers, edit)
        return out
    # Edits of distinct names commute with each other's field updates: each touches only the
    # fields of its own name, in place, and appends after the fields that were there. So one
    # pass over the fields applies them all, then the values left over are appended in order.
    values = {lowered: new for _, lowered, new, _ in edits}
    placed = dict.fromkeys(names, 0)
    out = []
    for field in fields:
        lowered = field[0].lower()
        new = values.get(lowered)
        if new is None:
            out.append(field)
            continue
        count = placed[lowered]
        if count < len(new):
            out.append((field[0], new[count]))
            placed[lowered] = count + 1
        # else: a surplus field of an edited name goes
    for key, lowered, new, append in edits:
        if append:
            for value in new[placed[lowered] :]:
                out.append((key, value))
    return out


def _rewrite_headers(
    request: http.Request, decision: Decision, host_value: str | None = None
) -> None:
    """Remove the token (unless kept), set the claim headers and, with `host_value`, update
    an existing Host header, writing the fields once.

    The same result as removing the token (`headers.set_all(name, values other than the token)`,
    or the query/cookie setters), then `request.headers[name] = value` for each claim
    header, then the Host update of mitmproxy's host/port setters (`headers["Host"] = value`
    if a Host header is present), each of which would rebuild the whole field tuple.
    """
    token = decision.token if not decision.keep_token else None
    if token is not None and token.kind != "header":
        _remove_query_or_cookie_token(request, token)
        token = None
    if token is None and not decision.set_headers and host_value is None:
        return
    fields = request.headers.fields
    claim_fields = [
        (name.encode(*_ENCODING), value.encode(*_ENCODING)) for name, value in decision.set_headers
    ]
    rewritten = _one_pass(fields, token, claim_fields, host_value)
    if rewritten is None:
        rewritten = _apply_edits(fields, _edits(fields, token, claim_fields, host_value))
    request.headers.fields = tuple(rewritten)


def _other_token_values(fields: tuple[tuple[bytes, bytes], ...], token: FoundToken) -> list[bytes]:
    """The values of the token's header other than the token, as raw bytes, in order.

    A value is the token when it equals prefix + token compared case-insensitively (what
    `headers.get_all(name)` filtered with `v.lower() != (prefix + token).lower()` keeps);
    decoding and encoding with surrogateescape gives the other values back unchanged.
    """
    wanted = (token.prefix.lower() + token.token).lower()
    key = header_key(token.name)
    return [
        value
        for name, value in fields
        if name.lower() == key and value.decode(*_ENCODING).lower() != wanted
    ]


def _edits(
    fields: tuple[tuple[bytes, bytes], ...],
    token: FoundToken | None,
    claim_fields: list[tuple[bytes, bytes]],
    host_value: str | None,
) -> list[_Edit]:
    """The `Headers.set_all` steps of `_rewrite_headers`, in order."""
    edits: list[_Edit] = []
    if token is not None:
        kept = _other_token_values(fields, token)
        edits.append((token.name.encode(*_ENCODING), header_key(token.name), kept, True))
    for raw, value in claim_fields:
        edits.append((raw, raw.lower(), [value], True))
    if host_value is not None:
        edits.append((b"Host", b"host", [host_value.encode(*_ENCODING)], False))
    return edits


def _one_pass(
    fields: tuple[tuple[bytes, bytes], ...],
    token: FoundToken | None,
    claim_fields: list[tuple[bytes, bytes]],
    host_value: str | None,
) -> list[tuple[bytes, bytes]] | None:
    """`_apply_edits(fields, _edits(...))` for the usual request, in one pass; None when the
    request is not the usual one and the general edits must run.

    Usual: no field carries a claim header's name (the addon strips client copies of them
    before deciding), and the token header is neither Host nor a claim header. Then the claim
    headers are simply appended, the first Host field takes the new value (surplus ones go),
    and the token header's fields take, in order, its values other than the token.
    """
    claim_keys = {name.lower() for name, _ in claim_fields}
    if len(claim_keys) < len(claim_fields):
        return None  # two claim headers of one name (the policy refuses it): general edits
    token_key = header_key(token.name) if token is not None else None
    if token_key is not None and (token_key == b"host" or token_key in claim_keys):
        return None
    if b"host" in claim_keys:
        return None
    kept = _other_token_values(fields, token) if token is not None else []
    host = host_value.encode(*_ENCODING) if host_value is not None else None
    host_taken = False
    out: list[tuple[bytes, bytes]] = []
    for field in fields:
        lowered = field[0].lower()
        if lowered == token_key:
            if kept:  # this field takes the next value that is not the token
                out.append((field[0], kept.pop(0)))
        elif host is not None and lowered == b"host":
            if not host_taken:  # the first Host field takes the value; surplus ones go
                out.append((field[0], host))
                host_taken = True
        elif lowered in claim_keys:
            return None  # a claim header is already there: the general edits handle it
        else:
            out.append(field)
    out.extend(claim_fields)
    return out


def _route_to(request: http.Request, route: RouteChoice) -> str:
    """Point the request at the route's upstream and return the new Host value.

    What `request.scheme = ...; request.host = ...; request.port = ...` does (mitmproxy 12.3,
    `Request._update_host_and_authority`), except that the Host header is left to
    `_rewrite_headers`, so the fields are rebuilt once instead of twice more.
    """
    request.scheme = route.scheme  # scheme first: the Host value depends on it
    data = request.data
    data.host = route.host  # what the host setter stores for a str
    data.port = route.port
    value = url.hostport(route.scheme, route.host, route.port)
    if data.authority:
        request.authority = value
    return value


def apply_decision(request: http.Request, decision: Decision) -> None:
    """Rewrite an allowed request for its upstream: token removed (unless kept), claim
    headers set, then the route's scheme, host and port.

    The same result as removing the token, `request.headers[name] = value` per claim header, then
    `request.scheme/host/port = ...` (restoring the Host header read just before, with
    `preserve_host`).
    """
    route = decision.route
    if route is None:
        _rewrite_headers(request, decision)
    elif not route.preserve_host:
        host_value = _route_to(request, route)
        _rewrite_headers(request, decision, host_value)
    else:
        # Rare: mitmproxy's own steps, in that order (the Host header to restore is the one
        # left after the token is removed).
        _rewrite_headers(request, decision)
        original_host = request.host_header
        request.scheme = route.scheme
        request.host = route.host
        request.port = route.port
        if original_host is not None:
            request.host_header = original_host


def _remove_query_or_cookie_token(request: http.Request, token: FoundToken) -> None:
    """Remove a token found in the query or in a cookie, with mitmproxy's own setters."""
    if token.kind == "query":
        request.query = [(k, v) for k, v in request.query.items(multi=True) if k != token.name]
    else:
        request.cookies = [(k, v) for k, v in request.cookies.items(multi=True) if k != token.name]
