"""Differential attacks at the HTTP layer: what the proxy decided versus what the upstream got.

Every request goes through a REAL mitmdump with the addon to a recording upstream
(`tests/e2e/wiretap.py`): a raw TCP tap that keeps every byte, in front of an aiohttp server
that reports how it parsed each request. The verdict is taken on the upstream side:

1. a request the proxy allowed arrived exactly once (aiohttp served one request and the raw
   bytes frame as one request); a refused one arrived not at all (no byte on the wire);
2. the path, host and cookies the upstream parsed are the ones the decision was made on (a
   request refused by a deny on /admin never has the upstream serve /admin);
3. no client-supplied identity header (`x-user`) and no unverified credential arrived.

The proxy's status code is checked too, after the upstream checks: it says what the fixed
addon should answer. Requests are written as raw bytes (HTTP/1) or with a bare `h2` client
(HTTP/2) so that no client library normalises the attack away.

Proxies (module scope, `connection_strategy=lazy` so a refused request opens no upstream
connection at all):

- `main`: regular mode, require_valid, default allow; deny `GET /secret` (exact), deny the
  prefix `/admin`, deny host admin.internal; a route sends every request to the tap (the h2
  CONNECT target is public.test:443, the tap speaks plain HTTP/1);
- `lenient`: the same policy with validation allow_missing_or_failed;
- `allowhosts` / `rev_allow`: default deny, allow only host public.test (regular / reverse);
- `denyhosts`: regular mode, default allow, deny hosts 127.0.0.1, localhost, admin.internal;
- `rev`: reverse mode (keep_host_header) in front of the tap, the `main` rules without route.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from claimroute_tools.lab import MitmdumpProcess, TestIssuer

from . import h2client
from .conftest import write
from .h2client import H2Reply, request_headers
from .wiretap import Served, Wiretap

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

TIMEOUT = 5.0
LAZY = {"connection_strategy": "lazy"}

# --------------------------------------------------------------------------- the world


@dataclass
class World:
    idp: TestIssuer
    tap: Wiretap
    folder: Path

    @property
    def good(self) -> str:
        return self.idp.mint("alice")

    def forged(self) -> str:
        """A token with a bad signature: an unverified credential."""
        return self.idp.mint("mallory", tamper="signature")


PROVIDER = """\
version: 1
providers:
  idp:
    issuer: {issuer}
    jwks: {{file: idp.pem}}
    token_source:
      headers: [{{name: authorization, prefix: "Bearer "}}]
      cookies: [session]
    claims_to_headers: [{{claim: sub, header: x-user}}]
validation: {validation}
"""

MAIN_RBAC = """\
rbac:
  default_action: allow
  policies:
    - name: no-secret-reads
      action: deny
      permissions: {{methods: [GET], paths: [{{exact: /secret}}]}}
    - name: no-admin
      action: deny
      permissions: {{paths: [{{prefix: /admin}}]}}
    - name: no-admin-host
      action: deny
      permissions: {{hosts: [admin.internal]}}
"""

TUNNEL_ROUTE = """\
routes:
  - name: everything-to-tap    # h2 tunnels name public.test:443; all goes to the tap
    upstream: "{tap}"
"""

ALLOW_HOSTS = """\
rbac:
  default_action: deny
  policies:
    - name: public-only
      action: allow
      permissions: {{hosts: [public.test]}}
"""

DENY_HOSTS = """\
rbac:
  default_action: allow
  policies:
    - name: no-loopback
      action: deny
      permissions: {{hosts: [127.0.0.1, localhost, admin.internal]}}
"""


def policy(w: World, name: str, validation: str, *parts: str) -> Path:
    text = PROVIDER + "".join(parts)
    body = text.format(issuer=w.idp.issuer, validation=validation, tap=w.tap.url)
    return write(w.folder / f"{name}.yaml", body)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("differential")
    idp = TestIssuer("idp", "ES256")
    (folder / "idp.pem").write_bytes(idp.public_pem())
    async with Wiretap() as tap:
        yield World(idp=idp, tap=tap, folder=folder)


def _proxy(path: Path, mode: str = "regular", **options) -> MitmdumpProcess:
    return MitmdumpProcess(path, mode=mode, options={**LAZY, **options})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def main(world):
    path = policy(world, "main", "require_valid", MAIN_RBAC, TUNNEL_ROUTE)
    async with _proxy(path) as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lenient(world):
    path = policy(world, "lenient", "allow_missing_or_failed", MAIN_RBAC, TUNNEL_ROUTE)
    async with _proxy(path) as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def allowhosts(world):
    path = policy(world, "allowhosts", "require_valid", ALLOW_HOSTS)
    async with _proxy(path) as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def denyhosts(world):
    path = policy(world, "denyhosts", "require_valid", DENY_HOSTS)
    async with _proxy(path) as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rev(world):
    path = policy(world, "rev", "require_valid", MAIN_RBAC)
    async with _proxy(path, f"reverse:{world.tap.url}", keep_host_header=True) as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rev_allow(world):
    path = policy(world, "rev_allow", "require_valid", ALLOW_HOSTS)
    async with _proxy(path, f"reverse:{world.tap.url}", keep_host_header=True) as process:
        yield process


@pytest.fixture(autouse=True)
def _fresh_tap(world):
    world.tap.reset()
    yield


# --------------------------------------------------------------------------- raw HTTP/1


@dataclass
class Raw:
    """The proxy's answer to raw bytes: status (None if it closed without one) and body."""

    status: int | None
    head: bytes
    body: bytes


async def h1(port: int, data: bytes) -> Raw:
    """Write `data` to the proxy as is and read until it closes (send `Connection: close`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        try:
            raw = await asyncio.wait_for(reader.read(), timeout=TIMEOUT)
        except TimeoutError:
            raw = b""
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return Raw(status, head, body)


def request(target: str, host: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    """Raw HTTP/1.1 request bytes; `headers` are full lines, written as given."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def bearer(token: str) -> str:
    return f"Authorization: Bearer {token}"


# --------------------------------------------------------------------------- verdicts


async def nothing_arrived(tap: Wiretap, what: str) -> None:
    """The upstream saw no request and not one byte."""
    await tap.settle(0.2)
    assert tap.served == [], (
        f"{what}: upstream SERVED {[(s.method, s.raw_path, s.path, s.host) for s in tap.served]}"
    )
    assert tap.raw == b"", f"{what}: bytes reached the upstream: {tap.raw!r}"


async def one_arrived(tap: Wiretap, what: str) -> Served:
    """Exactly one request, by aiohttp's parse and by the framing of the raw bytes; no forged
    identity header and no credential in it."""
    await tap.settle(0.1)
    served = [(s.method, s.raw_path, s.host) for s in tap.served]
    assert len(tap.served) == 1, f"{what}: upstream served {served}; raw {tap.raw!r}"
    assert tap.request_line_count() == 1, f"{what}: raw bytes frame as {tap.framed_requests()}"
    seen = tap.served[0]
    assert seen.header_values("x-user") in ([], ["alice"]), f"{what}: x-user {seen.headers}"
    assert seen.header_values("authorization") == [], f"{what}: a credential arrived"
    assert "session" not in seen.cookies, f"{what}: a session cookie arrived: {seen.cookies}"
    return seen


def h2_refused(reply: H2Reply, status: int, what: str) -> None:
    """The proxy answered `status`, or mitmproxy/h2 refused the stream or connection."""
    assert reply.status == status or (reply.status is None and reply.error), (what, reply)


# ====================================================================== 1. h2 -> h1 framing

SMUGGLED = "GET /admin/x HTTP/1.1\r\nHost: {host}\r\nX-User: admin\r\n\r\n"


async def test_h2_body_without_content_length_is_one_request_regular_mode(world, main):
    """Request smuggling through the h2 -> h1 downgrade (regular mode, CONNECT + TLS): an h2
    POST with a body and no content-length must reach the HTTP/1 upstream as ONE request
    whose body is exactly the DATA bytes, never as a second request to /admin."""
    body = SMUGGLED.format(host=world.tap.authority).encode()
    headers = request_headers(
        "POST", "public.test", "/ok", ("authorization", f"Bearer {world.good}")
    )
    reply = await h2client.via_connect(
        main.port, "public.test:443", headers, body, ca_cert=main.ca_cert
    )
    seen = await one_arrived(world.tap, "h2 POST /ok, no content-length")
    assert (seen.method, seen.path, seen.body) == ("POST", "/ok", body)
    assert seen.header_values("x-user") == ["alice"]
    assert reply.status == 200, reply


async def test_h2_body_without_content_length_is_one_request_reverse_mode(world, rev):
    """Request smuggling through the h2 -> h1 downgrade (reverse mode, TLS straight to the
    proxy): one request upstream, body intact, no smuggled GET /admin/x with X-User."""
    body = SMUGGLED.format(host=world.tap.authority).encode()
    headers = request_headers(
        "POST", "public.test", "/ok", ("authorization", f"Bearer {world.good}")
    )
    reply = await h2client.direct(
        rev.port, headers, body, ca_cert=rev.ca_cert, server_hostname="public.test"
    )
    seen = await one_arrived(world.tap, "reverse h2 POST /ok, no content-length")
    assert (seen.method, seen.path, seen.body) == ("POST", "/ok", body)
    assert reply.status == 200, reply


@pytest.mark.parametrize("mode", ["regular", "reverse"])
async def test_h2_transfer_encoding_is_refused(world, main, rev, mode):
    """h2 -> h1 framing: an h2 request that carries `transfer-encoding: chunked` (forbidden in
    HTTP/2) is refused (400, or h2 itself resets), and nothing reaches the upstream."""
    body = b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED.format(host=world.tap.authority).encode()
    headers = request_headers("POST", "public.test", "/ok", ("authorization", f"Bearer {world.good}"),
                              ("transfer-encoding", "chunked"))  # fmt: skip
    if mode == "regular":
        reply = await h2client.via_connect(
            main.port, "public.test:443", headers, body, ca_cert=main.ca_cert
        )
    else:
        reply = await h2client.direct(
            rev.port, headers, body, ca_cert=rev.ca_cert, server_hostname="public.test"
        )
    await nothing_arrived(world.tap, f"{mode} h2 transfer-encoding")
    h2_refused(reply, 400, mode)


# ====================================================================== 2. targets: fragments

FRAGMENTS = ["/admin#/../x", "/secret#x", "/admin#/../public"]


@pytest.mark.parametrize("path", FRAGMENTS)
async def test_h1_fragment_in_the_target_is_refused(world, main, path):
    """Fragment confusion (HTTP/1, absolute-form): the proxy judges `/admin#/../x` as one path
    (or resolves `..` across the `#`) while the upstream drops the fragment and serves
    /admin or /secret. A request target with `#` is 400 and nothing arrives."""
    target = f"{world.tap.url}{path}"
    reply = await h1(main.port, request(target, world.tap.authority, bearer(world.good)))
    await nothing_arrived(world.tap, f"h1 {target}")
    assert reply.status == 400, reply


@pytest.mark.parametrize("path", FRAGMENTS)
async def test_h2_fragment_in_path_is_refused(world, main, path):
    """Fragment confusion (HTTP/2 `:path`): `:path` with `#` is 400 and nothing arrives."""
    headers = request_headers("GET", "public.test", path, ("authorization", f"Bearer {world.good}"))
    reply = await h2client.via_connect(main.port, "public.test:443", headers, ca_cert=main.ca_cert)
    await nothing_arrived(world.tap, f"h2 :path {path!r}")
    h2_refused(reply, 400, path)


@pytest.mark.parametrize(
    "path",
    ["http://public.test/admin", "https://public.test/admin", "admin", "*"],
)
async def test_h2_path_not_in_origin_form_is_refused(world, main, path):
    """Target-form confusion (HTTP/2): a `:path` that is not origin-form (`http://host/admin`)
    is matched by the proxy as written, but the HTTP/1 upstream parses it as absolute-form
    and serves /admin. Anything not starting with a single `/` is 400; nothing arrives."""
    headers = request_headers("GET", "public.test", path, ("authorization", f"Bearer {world.good}"))
    reply = await h2client.via_connect(main.port, "public.test:443", headers, ca_cert=main.ca_cert)
    await nothing_arrived(world.tap, f"h2 :path {path!r}")
    h2_refused(reply, 400, path)


@pytest.mark.parametrize("path", ["/pub lic", "/pub\tlic", "/pub\x01lic", "/pub\x7flic",
                                  "/ok HTTP/1.1\r\nX-User: admin\r\nX: y"])  # fmt: skip
async def test_h2_path_with_spaces_or_controls_is_refused(world, main, path):
    """Request-line injection (HTTP/2 `:path`): spaces and control characters in `:path` end
    up in the HTTP/1 request line; they are 400 and nothing reaches the upstream."""
    headers = request_headers("GET", "public.test", path, ("authorization", f"Bearer {world.good}"))
    reply = await h2client.via_connect(main.port, "public.test:443", headers, ca_cert=main.ca_cert)
    await nothing_arrived(world.tap, f"h2 :path {path!r}")
    h2_refused(reply, 400, path)


# ====================================================================== 3. hosts


async def test_allow_on_host_header_cannot_reach_another_target(world, allowhosts):
    """Host confusion (regular mode): an allow on public.test must not let a request whose
    absolute-form target is the upstream's real address through because its Host header
    says public.test. 403, nothing arrives."""
    target = f"{world.tap.url}/"
    reply = await h1(allowhosts.port, request(target, "public.test", bearer(world.good)))
    await nothing_arrived(world.tap, f"{target} with Host public.test")
    assert reply.status == 403, reply


async def test_reverse_absolute_form_authority_must_agree_with_host(world, rev_allow):
    """Host confusion (reverse mode): `GET http://admin.internal/x` with `Host: public.test`;
    the upstream's parser takes the host from the absolute-form target. An allow on
    public.test must not let it through."""
    data = request("http://admin.internal/x", "public.test", bearer(world.good))
    reply = await h1(rev_allow.port, data)
    await tap_shows_no_other_host(world.tap, "public.test", "reverse absolute-form admin.internal")
    assert reply.status in (400, 403), reply


async def test_reverse_absolute_form_cannot_dodge_a_host_deny(world, rev):
    """Host confusion (reverse mode): a deny on admin.internal holds when the client names it
    only in the absolute-form target (`GET http://admin.internal/x`, `Host: public.test`)."""
    data = request("http://admin.internal/x", "public.test", bearer(world.good))
    reply = await h1(rev.port, data)
    await tap_shows_no_other_host(world.tap, "public.test", "reverse absolute-form admin.internal")
    assert reply.status in (400, 403), reply


async def tap_shows_no_other_host(tap: Wiretap, allowed: str, what: str) -> None:
    """Either nothing arrived, or exactly one request that the upstream parsed as `allowed`."""
    await tap.settle(0.2)
    if tap.served or tap.raw:
        seen = await one_arrived(tap, what)
        assert seen.host.split(":")[0] == allowed, (
            f"{what}: upstream parsed host {seen.host!r} ({seen.raw_path!r})"
        )
        assert "admin.internal" not in seen.raw_path, f"{what}: upstream target {seen.raw_path!r}"


LOOPBACK_ALIASES = ["127.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::ffff:127.0.0.1]",
                    "127.0.0.1.", "LOCALHOST"]  # fmt: skip


@pytest.mark.parametrize("alias", LOOPBACK_ALIASES)
async def test_host_deny_cannot_be_dodged_by_an_address_alias_in_the_target(
    world, denyhosts, alias
):
    """Host aliasing (regular mode, absolute-form target): a deny on 127.0.0.1 holds for every
    other spelling of the same address that the resolver maps to it. 403, nothing arrives."""
    authority = f"{alias}:{world.tap.port}"
    reply = await h1(denyhosts.port, request(f"http://{authority}/", authority, bearer(world.good)))
    await nothing_arrived(world.tap, f"target http://{authority}/")
    assert reply.status in (400, 403), reply


@pytest.mark.parametrize("alias", LOOPBACK_ALIASES)
async def test_host_deny_cannot_be_dodged_by_an_address_alias_in_the_host_header(
    world, denyhosts, alias
):
    """Host aliasing (regular mode, origin-form: mitmproxy takes the destination from the
    Host header): `Host: 127.1:PORT` and friends are 127.0.0.1. 403, nothing arrives."""
    authority = f"{alias}:{world.tap.port}"
    reply = await h1(denyhosts.port, request("/", authority, bearer(world.good)))
    await nothing_arrived(world.tap, f"Host {authority}")
    assert reply.status in (400, 403), reply


@pytest.mark.parametrize(
    "host", ["u@admin.internal", "public.test@admin.internal", "u:p@admin.internal"]
)
async def test_host_with_userinfo_is_refused(world, rev, host):
    """Host confusion (userinfo): a Host value `u@admin.internal` is not a host name; a deny on
    admin.internal must not be dodged by it. 400, nothing arrives."""
    reply = await h1(rev.port, request("/x", host, bearer(world.good)))
    await nothing_arrived(world.tap, f"Host {host}")
    assert reply.status == 400, reply


# ====================================================================== 4. cookies


@pytest.mark.parametrize(
    "cookie_lines",
    [
        ["Cookie: x=1, session={forged}"],
        ["Cookie: session={good}; y=1, session={forged}"],
        ["Cookie: session={good}", "Cookie: session={forged}"],
        ["Cookie: session={good}; session={forged}"],
    ],
    ids=["comma", "comma-after-good", "two-headers", "twice"],
)
async def test_ambiguous_cookies_never_deliver_a_forged_session(world, main, cookie_lines):
    """Cookie parser differential: cookie strings that the proxy and the upstream split
    differently (`,` as a separator, two Cookie headers, quotes) carry a second `session`.
    400, and the upstream never receives a forged session cookie."""
    lines = [c.format(good=world.good, forged=world.forged()) for c in cookie_lines]
    reply = await h1(
        main.port, request(f"{world.tap.url}/ok", world.tap.authority, bearer(world.good), *lines)
    )
    await nothing_arrived(world.tap, f"{lines}")
    assert reply.status == 400, reply


async def test_quoted_cookie_never_carries_a_forged_session(world, main):
    """Cookie parser differential (quotes): `x="1; session=<forged>"` is one quoted value to
    aiohttp but `x="1` and `session=<forged>"` to parsers that ignore quotes. Stricter than
    aiohttp: the forged token never reaches the upstream at all (400, or removed)."""
    forged = world.forged()
    line = f'Cookie: x="1; session={forged}"'
    reply = await h1(
        main.port, request(f"{world.tap.url}/ok", world.tap.authority, bearer(world.good), line)
    )
    await world.tap.settle(0.2)
    assert forged.encode() not in world.tap.raw, f"forged token on the wire: {world.tap.raw!r}"
    assert reply.status in (200, 400), reply


async def test_forged_session_cookie_never_reaches_the_upstream_in_lenient_mode(world, lenient):
    """Cookie parser differential (allow_missing_or_failed): `Cookie: x=1, session=<forged>`
    must not reach the upstream, where it would parse as a session cookie."""
    line = f"Cookie: x=1, session={world.forged()}"
    reply = await h1(lenient.port, request(f"{world.tap.url}/ok", world.tap.authority, line))
    await world.tap.settle(0.2)
    for seen in world.tap.served:
        assert "session" not in seen.cookies, f"forged session parsed upstream: {seen.cookies}"
    assert b"session=" not in world.tap.raw, f"forged session on the wire: {world.tap.raw!r}"
    assert reply.status in (200, 400), reply


async def test_plain_session_cookie_still_works(world, main):
    """Regression (cookies): `Cookie: session=<good>; theme=dark` is allowed; the token is
    taken out of the cookie and the rest arrives."""
    line = f"Cookie: session={world.good}; theme=dark"
    reply = await h1(main.port, request(f"{world.tap.url}/ok", world.tap.authority, line))
    seen = await one_arrived(world.tap, "session cookie")
    assert seen.cookies == {"theme": "dark"}
    assert seen.header_values("x-user") == ["alice"]
    assert reply.status == 200, reply


# ====================================================================== 5. Authorization


async def test_bearer_with_tab_is_no_token_in_require_valid(world, main):
    """Credential parser differential: `Bearer<TAB><token>` is not the configured `Bearer `
    prefix. require_valid: 401, nothing arrives."""
    reply = await h1(main.port, request(f"{world.tap.url}/ok", world.tap.authority,
                                        f"Authorization: Bearer\t{world.good}"))  # fmt: skip
    await nothing_arrived(world.tap, "Bearer<TAB>")
    assert reply.status == 401, reply


@pytest.mark.parametrize("token", ["good", "forged"])
async def test_bearer_with_tab_is_never_forwarded_in_lenient_mode(world, lenient, token):
    """Credential parser differential (allow_missing_or_failed): an `Authorization: Bearer<TAB>`
    the proxy did not verify must not reach the upstream, which may accept it."""
    value = world.good if token == "good" else world.forged()
    reply = await h1(lenient.port, request(f"{world.tap.url}/ok", world.tap.authority,
                                           f"Authorization: Bearer\t{value}"))  # fmt: skip
    seen = await one_arrived(world.tap, "lenient Bearer<TAB>")
    assert seen.header_values("x-user") == []
    assert reply.status == 200, reply


@pytest.mark.parametrize("second", ["Bearer\t{t}", "bearer  {t}", "Bearer {t} ", "BEARER {t}"])
async def test_second_authorization_beside_a_valid_one_is_multiple_tokens(world, main, second):
    """Credential smuggling: two Authorization headers, one valid and one in another
    spelling, are `400 Multiple tokens`; nothing arrives."""
    value = second.format(t=world.forged())
    reply = await h1(main.port, request(f"{world.tap.url}/ok", world.tap.authority,
                                        bearer(world.good), f"Authorization: {value}"))  # fmt: skip
    await nothing_arrived(world.tap, f"second Authorization {value[:12]!r}")
    assert reply.status == 400, reply


# ====================================================================== 6. header syntax


@pytest.mark.parametrize("line", [b"X-A: a\r\n b", b"X-A: a\r\n\tX-User: admin", b"X-A: a\rX-User: admin",
                                  b"X-A: a\rb", b" X-User: admin"])  # fmt: skip
async def test_obs_fold_and_bare_cr_are_refused(world, main, line):
    """Header-line differential: an obs-fold continuation or a bare CR is read as part of a
    value by one parser and as a new header (X-User!) by another. 400, nothing arrives."""
    auth = world.tap.authority.encode()
    data = (b"GET " + world.tap.url.encode() + b"/ok HTTP/1.1\r\nHost: " + auth + b"\r\n"
            + line + b"\r\n" + bearer(world.good).encode() + b"\r\nConnection: close\r\n\r\n")  # fmt: skip
    reply = await h1(main.port, data)
    await nothing_arrived(world.tap, f"header line {line!r}")
    assert reply.status == 400, reply


# ====================================================================== 7. HEAD


@pytest.mark.parametrize("method", ["HEAD", "head", "GET"])
async def test_head_is_denied_where_get_is(world, main, method):
    """Method aliasing: HEAD is a GET without the body (upstreams route it to the GET
    handler), so a deny on `methods: [GET]` for /secret denies HEAD /secret too."""
    reply = await h1(main.port, request(f"{world.tap.url}/secret", world.tap.authority,
                                        bearer(world.good), method=method))  # fmt: skip
    await nothing_arrived(world.tap, f"{method} /secret")
    assert reply.status == 403, reply


# ====================================================================== 8. regressions


@pytest.mark.parametrize(
    ("method", "extra", "body", "expected"),
    [
        ("GET", [], b"", b""),
        ("POST", ["Content-Length: 11"], b"hello world", b"hello world"),
        (
            "POST",
            ["Transfer-Encoding: chunked"],
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"hello world",
        ),
        ("POST", ["Content-Length: 0"], b"", b""),
    ],
    ids=["get", "post-cl", "post-chunked", "post-empty"],
)
async def test_h1_ordinary_requests_are_served_once(world, main, method, extra, body, expected):
    """Regression (HTTP/1): ordinary requests with a valid token are served exactly once, at
    the path the proxy judged, body intact, the client's x-user replaced by the claim."""
    data = request(f"{world.tap.url}/api/orders?x=1", world.tap.authority, bearer(world.good),
                   "X-User: admin", *extra, method=method, body=body)  # fmt: skip
    reply = await h1(main.port, data)
    seen = await one_arrived(world.tap, f"h1 {method}")
    assert (seen.method, seen.path, seen.query, seen.body) == (
        method,
        "/api/orders",
        "x=1",
        expected,
    )
    assert seen.header_values("x-user") == ["alice"]
    assert reply.status == 200, reply


@pytest.mark.parametrize(
    ("method", "body", "with_length"),
    [("GET", None, False), ("POST", b"hello world", True), ("POST", b"hello world", False),
     ("POST", b"x" * 70000, True), ("POST", b"", True)],
    ids=["get", "post-cl", "post-no-cl", "post-large", "post-empty"],
)  # fmt: skip
@pytest.mark.parametrize("mode", ["regular", "reverse"])
async def test_h2_ordinary_requests_are_served_once(
    world, main, rev, mode, method, body, with_length
):
    """Regression (HTTP/2 -> HTTP/1): ordinary h2 requests with a valid token, with and
    without content-length, are served exactly once with the body intact."""
    extra = [("authorization", f"Bearer {world.good}"), ("x-user", "admin")]
    if with_length and body is not None:
        extra.append(("content-length", str(len(body))))
    headers = request_headers(method, "public.test", "/api/orders?x=1", *extra)
    if mode == "regular":
        reply = await h2client.via_connect(
            main.port, "public.test:443", headers, body, ca_cert=main.ca_cert
        )
    else:
        reply = await h2client.direct(
            rev.port, headers, body, ca_cert=rev.ca_cert, server_hostname="public.test"
        )
    seen = await one_arrived(world.tap, f"{mode} h2 {method}")
    assert (seen.method, seen.path, seen.query, seen.body) == (
        method,
        "/api/orders",
        "x=1",
        body or b"",
    )
    assert seen.header_values("x-user") == ["alice"]
    assert reply.status == 200, reply


async def test_wiretap_frames_a_smuggled_request(world):
    """The harness itself: two requests in one unframed stream count as two, a request line
    inside a Content-Length body does not."""
    from .wiretap import frame_requests, scan_request_lines

    inner = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
    smuggled = b"POST /ok HTTP/1.1\r\nHost: x\r\n\r\n" + inner
    framed = b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner
    chunked = (
        b"POST /ok HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + inner
    )
    assert [r.line for r in frame_requests(smuggled)] == [
        b"POST /ok HTTP/1.1",
        b"GET /admin HTTP/1.1",
    ]
    assert [(r.line, r.body) for r in frame_requests(framed)] == [(b"POST /ok HTTP/1.1", inner)]
    assert [r.body for r in frame_requests(chunked)] == [b"hello", b""]
    assert len(scan_request_lines(framed)) == 2
