"""The attack corpus, end to end: every applicable case of the JWT conformance and attack
checklist (RFC 7515/7519/8725 and the published JWT attacks; case ids in the table), built by
our own code and sent through ONE real mitmdump in front of an upstream that records what it
receives.

One table, one row per case: the checklist id, a builder (world -> request), the expected
status and reason (exact, or a prefix when the reason quotes a parser message). For every
refusal the test also checks the RFC 6750 challenge that goes with the status and that the
upstream received nothing. Rows with status 200 are the cases the checklist says to ACCEPT, or
decisions docs/security.md explains (ECDSA high-s, `typ`, `iat` in the future); there the
upstream must have received exactly one request, without the token, with exactly one
`x-user` value: the verified claim.

Not here, because they are not about a request: A12-A14 for local keys (load errors, see
tests/test_keys.py and tests/test_policy.py), S20 (no JWE support at all; a 5-part token is
S3), K6 (cache timing, tests/test_remote_jwks.py).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from joserfc import jwk
from yarl import URL

from claimroute import errors as E
from claimroute_tools.lab import (
    EchoUpstream,
    JwksServer,
    LoopbackServer,
    MitmdumpProcess,
    ReceivedRequest,
    TestIssuer,
    b64url,
    b64url_decode,
    build_compact,
)
from claimroute_tools.lab.issuer import hmac_signer, signer_for

from .conftest import Reply, write

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
FETCH_FAILED = E.JWKS_FETCH_FAILED
KID_NOT_FOUND = E.JWT_KID_NOT_FOUND
BAD_FORMAT = E.JWT_BAD_FORMAT
ALG_NOT_ALLOWED = E.JWT_ALG_NOT_ALLOWED
VERIFICATION_FAILS = E.JWT_VERIFICATION_FAILS
UNKNOWN_ISSUER = E.JWT_UNKNOWN_ISSUER
PAYLOAD_JSON = "Jwt payload is not valid JSON: "
HEADER_JSON = "Jwt header is not valid JSON: "


# --------------------------------------------------------------------------- the world


class DocServer(LoopbackServer):
    """Serves fixed documents by name (`GET /<name>`) and counts every request.

    Used for key sets the lab's `JwksServer` does not produce (an `{}` set, a set with
    `use: enc` keys, private keys, duplicate kids, a giant body) and as the attacker's host
    for `jku`/`x5u`, where the point is that nobody ever fetches from it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.docs: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()

    def put(self, name: str, document: Any) -> str:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.docs[name] = body
        return f"{self.url}/{name}"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{name}", self._serve)
        return app

    async def _serve(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits[name] += 1
        if name not in self.docs:
            raise web.HTTPNotFound()
        return web.Response(body=self.docs[name], content_type="application/json")


@dataclass
class Key:
    """A signing key outside any configured provider (attackers, remote test sets)."""

    key: Any  # a joserfc key
    alg: str

    def sign(self, header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes) -> str:
        return build_compact(header, payload, signer_for(self.alg, self.key))


@dataclass
class World:
    rs: TestIssuer  # RS256, JWKS file (JWK alg RS256), audiences [api], x-user and x-roles
    es: TestIssuer  # ES256, PEM file, allowlist [ES256], audiences [api]
    ed: TestIssuer  # EdDSA, JWKS file
    hs: TestIssuer  # HS256, oct key from a JWKS file, allowlist [HS256]
    ck: TestIssuer  # ES256, tokens only in the `x-token` header or the `session` cookie
    remote: dict[str, TestIssuer]  # served by the JwksServer (modes, oct, a good one)
    keys: dict[str, Key]  # attacker and remote-set keys
    jwks: JwksServer
    docs: DocServer
    upstream: EchoUpstream
    folder: Path
    notes: dict[str, int] = field(default_factory=dict)


def _pem_public(private: Any) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _remote_keys(w: World) -> None:
    """The mixed remote set: one good key next to keys a verifier must skip (K4, A13, A15)."""
    good, enc, ops, priv = (jwk.ECKey.generate_key("P-256") for _ in range(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weak = jwk.RSAKey.import_key(rsa.generate_private_key(65537, 1024))
    w.keys |= {"x-sig": Key(good, "ES256"), "x-enc": Key(enc, "ES256"),
               "x-ops": Key(ops, "ES256"), "x-priv": Key(priv, "ES256"),
               "x-weak": Key(weak, "RS256")}  # fmt: skip
    entries = [
        good.as_dict(private=False) | {"kid": "x-sig", "use": "sig"},
        enc.as_dict(private=False) | {"kid": "x-enc", "use": "enc"},
        ops.as_dict(private=False) | {"kid": "x-ops", "key_ops": ["encrypt"]},
        priv.as_dict(private=True) | {"kid": "x-priv"},
        weak.as_dict(private=False) | {"kid": "x-weak"},
    ]
    w.docs.put("mixed", {"keys": entries})
    dup = good.as_dict(private=False)
    w.docs.put("dupkid", {"keys": [dup | {"kid": "d"}, enc.as_dict(private=False) | {"kid": "d"}]})
    w.docs.put("empty", {})
    w.docs.put("keysint", {"keys": 123})
    w.docs.put("nokeys", {"keys": []})
    w.docs.put("giant", {"keys": [dup], "pad": "x" * (600 * 1024)})


REMOTE_MODES = {"k500": "error500", "kgarbage": "garbage", "kslow": "slow",
                "kredirect": "redirect_offsite", "koct": "ok", "kgood": "ok"}  # fmt: skip
DOC_PROVIDERS = ("empty", "keysint", "nokeys", "dupkid", "giant", "mixed")


def policy_text(w: World) -> str:
    remote = "".join(
        f"  {name}:\n    issuer: {issuer.issuer}\n"
        f"    jwks: {{url: '{w.jwks.jwks_url(name)}', timeout: 1s}}\n"
        "    claims_to_headers: [{claim: sub, header: x-user}]\n"
        for name, issuer in w.remote.items()
    )
    docs = "".join(
        f"  d-{name}:\n    issuer: https://d-{name}.test\n"
        f"    jwks: {{url: '{w.docs.url}/{name}', timeout: 1s}}\n"
        "    claims_to_headers: [{claim: sub, header: x-user}]\n"
        for name in DOC_PROVIDERS
    )
    return f"""\
version: 1
providers:
  rs:
    issuer: {w.rs.issuer}
    audiences: [api]
    jwks: {{file: rs.jwks.json}}
    claims_to_headers: [{{claim: sub, header: x-user}}, {{claim: roles, header: x-roles}}]
  rspem:                       # the same RSA key as PEM, no allowlist: every RS*/PS*
    issuer: https://rspem.test
    jwks: {{file: rs.pem}}
    claims_to_headers: [{{claim: sub, header: x-user}}]
  mixed:                       # an allowlist naming HS256 next to an RSA key
    issuer: https://mixed.test
    jwks: {{file: rs.pem}}
    algorithms: [RS256, HS256]
  es:
    issuer: {w.es.issuer}
    audiences: [api]
    algorithms: [ES256]
    jwks: {{file: es.pem}}
    claims_to_headers: [{{claim: sub, header: x-user}}]
  ed:
    issuer: {w.ed.issuer}
    jwks: {{file: ed.jwks.json}}
    claims_to_headers: [{{claim: sub, header: x-user}}]
  hs:
    issuer: {w.hs.issuer}
    algorithms: [HS256]
    jwks: {{file: hs.jwks.json}}
    claims_to_headers: [{{claim: sub, header: x-user}}]
  ck:
    issuer: {w.ck.issuer}
    jwks: {{file: ck.pem}}
    token_source: {{headers: [{{name: x-token}}], cookies: [session]}}
    claims_to_headers: [{{claim: sub, header: x-user}}]
{remote}{docs}"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attacks")
    remote = {name: TestIssuer(name, "HS256" if name == "koct" else "ES256")
              for name in REMOTE_MODES}  # fmt: skip
    jwks = JwksServer(*remote.values())
    jwks.add(TestIssuer("evil", "ES256"), discovery=True)  # A10: an iss-driven discovery host
    async with jwks, DocServer() as docs, EchoUpstream("primary") as upstream:
        for name, mode in REMOTE_MODES.items():
            jwks.set_mode(name, mode, slow_seconds=5)  # type: ignore[arg-type]
        w = World(
            rs=TestIssuer("rs", "RS256", audience="api"),
            es=TestIssuer("es", "ES256", audience="api"),
            ed=TestIssuer("ed", "EdDSA"),
            hs=TestIssuer("hs", "HS256"),
            ck=TestIssuer("ck", "ES256"),
            remote=remote,
            keys={"attacker": Key(jwk.ECKey.generate_key("P-256"), "ES256")},
            jwks=jwks,
            docs=docs,
            upstream=upstream,
            folder=folder,
        )
        _remote_keys(w)
        w.rs.write_jwks(folder / "rs.jwks.json")
        (folder / "rs.pem").write_bytes(w.rs.public_pem())
        (folder / "es.pem").write_bytes(w.es.public_pem())
        (folder / "ck.pem").write_bytes(w.ck.public_pem())
        w.ed.write_jwks(folder / "ed.jwks.json")
        w.hs.write_jwks(folder / "hs.jwks.json")
        yield w


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(world):
    policy = write(world.folder / "policy.yaml", policy_text(world))
    async with MitmdumpProcess(policy) as process:
        yield process


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Req:
    """One request: a bearer token and/or raw headers (duplicates kept), method, raw query."""

    token: str | None = None  # sent as `Authorization: Bearer <token>`
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "GET"
    query: str = ""  # raw, already encoded

    @property
    def all_headers(self) -> list[tuple[str, str]]:
        auth = [("Authorization", f"Bearer {self.token}")] if self.token is not None else []
        return [*auth, *self.headers]


async def send_raw(proxy_url: str, base: str, req: Req) -> Reply:
    """Write the request bytes ourselves: HTTP client libraries merge or drop duplicate
    headers, and the corpus needs them exactly as written (two `x-user`, two `x-token`...)."""
    proxy = URL(proxy_url)
    target = f"{base}/api/orders" + (f"?{req.query}" if req.query else "")
    lines = [f"{req.method} {target} HTTP/1.1", f"Host: {URL(base).authority}"]
    lines += [f"{name}: {value}" for name, value in req.all_headers]
    lines += ["Connection: close", "", ""]
    head = "\r\n".join(lines).encode("utf-8", "surrogateescape")
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(head)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=20)
    finally:
        writer.close()
    status_and_headers, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = status_and_headers.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), body.decode("utf-8", "replace"), headers)


# --------------------------------------------------------------------------- token builders


def seg(token: str) -> list[str]:
    return token.split(".")


def claims(issuer: TestIssuer, sub: str | None = "alice", **extra: Any) -> dict[str, Any]:
    """Valid claims for `issuer` now; `extra` overrides, a None value removes a claim."""
    return issuer.claims(sub, extra)


def good(issuer: TestIssuer, sub: str = "alice", **extra: Any) -> str:
    return issuer.mint(sub, extra)


def with_header(issuer: TestIssuer, **members: Any) -> str:
    """A validly signed token whose header has `members` added (None removes one)."""
    return issuer.sign(issuer.header(members), claims(issuer))


def raw_payload(issuer: TestIssuer, members: str, drop: tuple[str, ...] = ()) -> bytes:
    """Claims JSON text with `members` appended verbatim (NaN, duplicates, huge numbers)."""
    base = {k: v for k, v in claims(issuer).items() if k not in drop}
    return (json.dumps(base, separators=(",", ":"))[:-1] + "," + members + "}").encode()


def signed_raw(issuer: TestIssuer, body: bytes) -> str:
    return issuer.sign(json.dumps(issuer.header()).encode(), body)


def swap_header(token: str, header: dict[str, Any] | bytes) -> str:
    """Replace the header segment, keep the payload and the (now unrelated) signature."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    _, p, s = seg(token)
    return f"{b64url(raw)}.{p}.{s}"


def replace_sig(token: str, signature: bytes) -> str:
    h, p, _ = seg(token)
    return f"{h}.{p}.{b64url(signature)}"


def flip(token: str, index: int) -> str:
    sig = bytearray(b64url_decode(seg(token)[2]))
    sig[index] ^= 0x01
    return replace_sig(token, bytes(sig))


def iss_token(issuer: TestIssuer, iss: Any, **extra: Any) -> str:
    return issuer.sign(issuer.header(), claims(issuer, iss=iss, **extra))


def hs_with_secret(issuer: TestIssuer, secret: bytes, iss: str | None = None) -> str:
    """A4: an HS256 token whose HMAC secret is the issuer's PUBLIC key material."""
    body = claims(issuer) | ({"iss": iss} if iss else {})
    return build_compact(issuer.header({"alg": "HS256"}), body, hmac_signer("sha256", secret))


def public_forms(issuer: TestIssuer) -> dict[str, bytes]:
    public = issuer.key.public_key
    spki = issuer.public_pem()
    forms = {
        "spki-pem": spki,
        "spki-pem-no-newline": spki.rstrip(b"\n"),
        "der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk-json": json.dumps(issuer.key.as_dict(private=False)).encode(),
        "openssh": public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ),
    }
    if isinstance(public, rsa.RSAPublicKey):
        forms["pkcs1-pem"] = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        )
    return forms


def es_raw_sig(issuer: TestIssuer) -> tuple[str, int, int]:
    """A valid ES256 token and its (r, s)."""
    token = good(issuer)
    sig = b64url_decode(seg(token)[2])
    return token, int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


def es_der(issuer: TestIssuer) -> str:
    h = b64url(json.dumps(issuer.header()).encode())
    p = b64url(json.dumps(claims(issuer)).encode())
    der = issuer.private_key.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    decode_dss_signature(der)  # really DER
    return f"{h}.{p}.{b64url(der)}"


def es_high_s(issuer: TestIssuer) -> str:
    token, r, s = es_raw_sig(issuer)
    return replace_sig(token, r.to_bytes(32, "big") + (P256_ORDER - s).to_bytes(32, "big"))


def es_leading_zeros(issuer: TestIssuer) -> str:
    token, r, s = es_raw_sig(issuer)
    return replace_sig(token, b"\x00" + r.to_bytes(32, "big") + b"\x00" + s.to_bytes(32, "big"))


def pkcs1(issuer: TestIssuer, variant: str, **extra: Any) -> str:
    """RS256 signatures made with the private key over a hand-built PKCS#1 v1.5 block.

    "control" is the correct encoding (must verify, which proves the builder right); every
    other variant is one of the lenient-parser forgery classes (Wycheproof ModifiedPadding,
    MissingNull, WrongHash, BER lengths), which a verifier must refuse although the RSA
    operation itself is genuine.
    """

    def signer(signing_input: bytes) -> bytes:
        numbers = issuer.private_key.private_numbers()
        n, d = numbers.public_numbers.n, numbers.d
        size = (n.bit_length() + 7) // 8
        digest = hashlib.sha256(signing_input).digest()
        info = SHA256_DIGEST_INFO + digest
        block_type, filler, tail = b"\x01", b"\xff", b""
        match variant:
            case "control":
                pass
            case "missing-null":
                info = bytes.fromhex("302f300b0609608648016503040201") + b"\x04\x20" + digest
            case "sha1-digest-info":
                sha1 = hashlib.sha1(signing_input).digest()
                info = bytes.fromhex("3021300906052b0e03021a05000414") + sha1
            case "ber-long-length":
                info = bytes.fromhex("308131300d060960864801650304020105000420") + digest
            case "zero-filler":
                filler = b"\x00"
            case "garbage-after-digest":
                tail = b"\x00" * 16
            case "block-type-2":
                block_type = b"\x02"
        body = info + tail
        em = b"\x00" + block_type + filler * (size - 3 - len(body)) + b"\x00" + body
        return pow(int.from_bytes(em, "big"), d, n).to_bytes(size, "big")

    return build_compact(issuer.header(), claims(issuer, **extra), signer)


def misaligned(issuer: TestIssuer) -> str:
    """A valid token whose header, payload and signature all need base64 padding."""
    for pad_h in range(4):
        for pad_p in range(4):
            token = issuer.sign(issuer.header({"x": "h" * pad_h}), claims(issuer, x="p" * pad_p))
            if all(len(part) % 4 for part in seg(token)):
                return token
    raise AssertionError("no misaligned token")


def padded(issuer: TestIssuer, index: int) -> str:
    parts = seg(misaligned(issuer))
    parts[index] += "=" * (-len(parts[index]) % 4)
    return ".".join(parts)


def standard_alphabet_payload(issuer: TestIssuer) -> str:
    body = json.dumps(claims(issuer, x="???>>>~~~")).encode()
    std = base64.b64encode(body).rstrip(b"=").decode()
    assert "+" in std or "/" in std
    h = b64url(json.dumps(issuer.header()).encode())
    return f"{h}.{std}.{b64url(signer_for(issuer.alg, issuer.key)(f'{h}.{std}'.encode()))}"


def trailing_bits(issuer: TestIssuer) -> str:
    h, p, s = seg(misaligned(issuer))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    s2 = s[:-1] + alphabet[alphabet.index(s[-1]) ^ 1]
    assert b64url_decode(s2) == b64url_decode(s)  # the same bytes, non-canonical text
    return f"{h}.{p}.{s2}"


def insert(token: str, index: int, char: str) -> str:
    parts = seg(token)
    parts[index] = parts[index][:5] + char + parts[index][5:]
    return ".".join(parts)


def x5c_token(w: World) -> str:
    attacker = w.keys["attacker"]
    private = attacker.key.private_key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rs.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2100, 1, 1))
        .sign(private, hashes.SHA256())
    )
    der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    return attacker.sign({"alg": "ES256", "x5c": [der]}, claims(w.es))


def jku_token(w: World, member: str) -> str:
    attacker = w.keys["attacker"]
    public = attacker.key.as_dict(private=False) | {"kid": "evil"}
    url = w.docs.put("attacker-jwks", {"keys": [public]})
    return attacker.sign({"alg": "ES256", "kid": "evil", member: url}, claims(w.es))


def no_attacker_fetch(w: World, reply: Reply, seen: list[ReceivedRequest]) -> None:
    assert w.docs.hits["attacker-jwks"] == 0, "a token header made the proxy fetch a key"


def remote_token(w: World, name: str, **header: Any) -> str:
    issuer = w.remote[name]
    return issuer.mint("alice", header=header or None)


def doc_token(w: World, provider: str, kid: str) -> str:
    key = w.keys[kid]
    return key.sign({"alg": key.alg, "kid": kid}, claims(w.es, iss=f"https://d-{provider}.test"))


def rsa_as(w: World, label: str, scheme: str) -> str:
    """A token for the PEM provider (every RSA alg) signed with `scheme`, labelled `label`."""
    body = claims(w.rs, iss="https://rspem.test")
    return build_compact({"alg": label}, body, signer_for(scheme, w.rs.key))


def polyglot(issuer: TestIssuer) -> str:
    """CVE-2022-39227: JSON whose member name looks like a compact token with forged claims."""
    h, p, s = seg(good(issuer))
    forged = b64url(json.dumps(claims(issuer, sub="admin")).encode())
    return json.dumps({f"{h}.{forged}.": "", "protected": h, "payload": p, "signature": s})


def unencoded_payload(issuer: TestIssuer) -> str:
    """RFC 7797 form: `b64: false`, the payload segment is the raw JSON (here without dots)."""
    h = b64url(json.dumps(issuer.header({"b64": False, "crit": ["b64"]})).encode())
    raw = json.dumps({"sub": "alice"})
    return f"{h}.{raw}.{b64url(signer_for(issuer.alg, issuer.key)(f'{h}.{raw}'.encode()))}"


def length_1_mod_4(token: str) -> str:
    h, p, s = seg(token)
    return f"{h}.{p}.{s + 'A' * ((1 - len(s)) % 4 or 4)}"


def non_utf8(issuer: TestIssuer, raw: bytes) -> str:
    return signed_raw(issuer, raw_payload(issuer, '"x":"X"').replace(b'"X"', b'"' + raw + b'"'))


def resize_sig(token: str, *, keep: int | None = None, extra: bytes = b"") -> str:
    signature = b64url_decode(seg(token)[2])
    return replace_sig(token, signature[:keep] + extra)


def unknown_kid(w: World, kid: str) -> str:
    w.notes["kgood"] = w.jwks.hits("kgood")
    return remote_token(w, "kgood", kid=kid)


def no_underscore_spelling(w: World, reply: Reply, seen: list[ReceivedRequest]) -> None:
    [request] = seen
    assert request.header_values("x_user") == [], "x_user: admin reached the upstream"


def at_most_one_refetch(w: World, reply: Reply, seen: list[ReceivedRequest]) -> None:
    assert w.jwks.hits("kgood") - w.notes["kgood"] <= 1


def no_discovery(w: World, reply: Reply, seen: list[ReceivedRequest]) -> None:
    assert w.jwks.hits("evil", "discovery") == 0
    assert w.jwks.hits("evil") == 0


def cookie(name_value: str) -> tuple[tuple[str, str], ...]:
    return (("Cookie", name_value),)


def ck_token(w: World, **extra: Any) -> str:
    return good(w.ck, **extra)


def deep(kind: str, depth: int) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


# --------------------------------------------------------------------------- checks


def token_not_forwarded(w: World, reply: Reply, seen: list[ReceivedRequest]) -> None:
    [request] = seen
    assert request.header_values("cookie") in ([], ["other=1"])
    assert request.header_values("x-token") == []


def only_claim_headers(w: World, reply: Reply, seen: list[ReceivedRequest]) -> None:
    [request] = seen
    assert request.header_values("x-roles") == []  # forged, and no roles claim to set it
    assert request.header_values("x-admin") == []


def head_no_body(w: World, reply: Reply, seen: list[ReceivedRequest]) -> None:
    assert reply.text == ""


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[World], Req | str]
    status: int
    reason: str | None = None  # the body; None for 200
    prefix: bool = False  # `reason` is a prefix of the body
    user: str | None = "alice"  # for 200: the single x-user value the upstream must see
    check: Callable[[World, Reply, list[ReceivedRequest]], None] | None = None


def reject(id: str, build: Callable[[World], Req | str], reason: str, status: int = 401, **kw: Any):
    return pytest.param(Case(id, build, status, reason, **kw), id=id)


def accept(id: str, build: Callable[[World], Req | str], **kw: Any):
    return pytest.param(Case(id, build, 200, None, **kw), id=id)


# The table is laid out one case per line; the formatter would scatter it.
# fmt: off
NONE_SPELLINGS = {"None": "None", "NONE": "NONE", "nOnE": "nOnE", "trailing-space": "none ",
                  "cyrillic-o": "n\u043ene", "empty": ""}

CASES = [
    # ---- controls: one valid token per provider kind, so refusals below mean something
    accept("OK-rs256-jwks", lambda w: good(w.rs)),
    accept("OK-es256-pem", lambda w: good(w.es)),
    accept("OK-eddsa-jwks", lambda w: good(w.ed)),
    accept("OK-hs256-oct-file", lambda w: good(w.hs)),
    accept("OK-ps256-pem-provider", lambda w: rsa_as(w, "PS256", "PS256")),
    accept("OK-remote-jwks", lambda w: remote_token(w, "kgood")),
    # ---- §3.1 algorithm and key confusion
    reject("A1-none-unsigned", lambda w: build_compact({"alg": "none"}, claims(w.rs), None), BAD_FORMAT),
    reject("A1-none-unsigned-hs", lambda w: build_compact({"alg": "none"}, claims(w.hs), None), BAD_FORMAT),
    *(
        reject(f"A2-none-{name}", lambda w, a=alg: swap_header(good(w.rs), {"alg": a}), ALG_NOT_ALLOWED)
        for name, alg in NONE_SPELLINGS.items()
    ),
    reject("A3-none-with-signature", lambda w: swap_header(good(w.rs), {"alg": "none", "kid": w.rs.kid}), ALG_NOT_ALLOWED),
    *(
        reject(f"A4-hs256-rsa-{form}", lambda w, f=form: hs_with_secret(w.rs, public_forms(w.rs)[f]), ALG_NOT_ALLOWED)
        for form in ("spki-pem", "spki-pem-no-newline", "pkcs1-pem", "der", "jwk-json", "openssh")
    ),
    reject("A4-hs256-rsa-pem-allowlist-names-hs256", lambda w: hs_with_secret(w.rs, w.rs.public_pem(), "https://mixed.test"), ALG_NOT_ALLOWED),
    reject("A4-hs256-ec-pem", lambda w: hs_with_secret(w.es, w.es.public_pem()), ALG_NOT_ALLOWED),
    reject("A4-hs256-ed25519-jwk", lambda w: hs_with_secret(w.ed, public_forms(w.ed)["jwk-json"]), ALG_NOT_ALLOWED),
    reject("A4-tamper-hs256-public-key", lambda w: w.rs.mint("alice", tamper="hs256_public_key"), ALG_NOT_ALLOWED),
    reject("A5-rs256-label-on-es256-signature", lambda w: swap_header(good(w.es), {"alg": "RS256"}), ALG_NOT_ALLOWED),
    reject("A5-ps256-with-jwk-alg-rs256", lambda w: build_compact({"alg": "PS256", "kid": w.rs.kid}, claims(w.rs), signer_for("PS256", w.rs.key)), ALG_NOT_ALLOWED),
    reject("A5-es256-token-for-eddsa-issuer", lambda w: w.es.sign({"alg": "ES256"}, claims(w.ed)), ALG_NOT_ALLOWED),
    reject("A5-rs256-token-for-hs256-issuer", lambda w: w.rs.sign({"alg": "RS256"}, claims(w.hs)), ALG_NOT_ALLOWED),
    reject("A6-pkcs1-signature-labelled-ps256", lambda w: rsa_as(w, "PS256", "RS256"), VERIFICATION_FAILS),
    reject("A6-pss-signature-labelled-rs256", lambda w: rsa_as(w, "RS256", "PS256"), VERIFICATION_FAILS),
    reject("A7-embedded-jwk-rs", lambda w: w.rs.mint("alice", tamper="embedded_jwk"), VERIFICATION_FAILS),
    reject("A7-embedded-jwk-es", lambda w: w.es.mint("alice", tamper="embedded_jwk"), VERIFICATION_FAILS),
    reject("A8-jku-attacker-jwks", lambda w: jku_token(w, "jku"), VERIFICATION_FAILS, check=no_attacker_fetch),
    reject("A8-x5u-attacker-url", lambda w: jku_token(w, "x5u"), VERIFICATION_FAILS, check=no_attacker_fetch),
    reject("A9-x5c-self-signed", x5c_token, VERIFICATION_FAILS),
    reject("A10-iss-driven-discovery", lambda w: w.jwks.control("evil").issuer.mint("alice"), UNKNOWN_ISSUER, check=no_discovery),
    *(
        reject(f"A11-kid-{name}", lambda w, k=kid: with_header(w.rs, kid=k), KID_NOT_FOUND)
        for name, kid in {"path-traversal": "../../../../dev/null", "sql": "' UNION SELECT 'k' --",
                          "command": "x; rm -rf /", "nul-suffix": "rs-1\u0000",
                          "empty": ""}.items()
    ),
    reject("A11-kid-10kb", lambda w: with_header(w.rs, kid="k" * 10_000), E.JWT_TOO_LARGE),
    reject("A11-kid-not-a-string", lambda w: with_header(w.rs, kid=1), "Jwt header kid is not a string"),
    reject("A13-weak-rsa-in-remote-set", lambda w: doc_token(w, "mixed", "x-weak"), ALG_NOT_ALLOWED),
    reject("A14-oct-key-in-remote-set", lambda w: remote_token(w, "koct"), FETCH_FAILED),
    reject("A14-duplicate-kid-in-remote-set", lambda w: doc_token(w, "dupkid", "x-sig"), FETCH_FAILED),
    reject("A15-use-enc", lambda w: doc_token(w, "mixed", "x-enc"), KID_NOT_FOUND),
    reject("A15-key-ops-encrypt", lambda w: doc_token(w, "mixed", "x-ops"), KID_NOT_FOUND),
    # ---- §3.2 structure, encoding and parsing
    *(
        reject(f"S1-empty-signature-{alg}", lambda w, a=alg: ".".join(seg(good(getattr(w, a)))[:2]) + ".", BAD_FORMAT)
        for alg in ("rs", "es", "ed", "hs")
    ),
    *(
        reject(f"S2-{name}", lambda w, f=fmt: f.format(*seg(good(w.rs))), BAD_FORMAT)
        for name, fmt in {"two-segments": "{0}.{1}", "empty-payload": "{0}..{2}",
                          "empty-header": ".{1}.{2}", "dots-only": "..", "trailing-dot": "{0}.{1}.{2}.",
                          "leading-dot": ".{0}.{1}.{2}", "double-dot": "{0}..{1}.{2}",
                          "four-segments": "{0}.{1}.{2}.{2}"}.items()
    ),
    reject("S3-jwe-five-segments", lambda w: "{0}.{1}.{2}.{0}.{1}".format(*seg(good(w.rs))), BAD_FORMAT),
    reject("S3-jws-json-serialization", lambda w: json.dumps(dict(zip(("protected", "payload", "signature"), seg(good(w.rs)), strict=True))), BAD_FORMAT),
    reject("S4-polyglot-cve-2022-39227", lambda w: polyglot(w.rs), "Jwt header is not valid base64url"),
    reject("S5-crit-unknown-extension", lambda w: with_header(w.rs, crit=["exp1"], exp1=1), "Jwt header member 'crit' is not supported"),
    *(
        reject(f"S6-crit-{name}", lambda w, c=crit: with_header(w.rs, crit=c), "Jwt header member 'crit' is not supported")
        for name, crit in {"empty": [], "kid": ["kid"], "string": "b64", "absent-member": ["absent"]}.items()
    ),
    reject("S7-b64-false-with-crit", lambda w: with_header(w.rs, b64=False, crit=["b64"]), "Jwt header member 'b64' is not supported"),
    reject("S7-b64-false-without-crit", lambda w: with_header(w.rs, b64=False), "Jwt header member 'b64' is not supported"),
    reject("S7-b64-false-raw-payload", lambda w: unencoded_payload(w.rs), "Jwt header member 'b64' is not supported"),
    accept("S8-unknown-header-members-ignored", lambda w: with_header(w.rs, foo=1, x5t="abc", cty="JWT")),
    reject("S9-duplicate-alg", lambda w: w.rs.sign(b'{"alg":"none","alg":"RS256"}', claims(w.rs)), HEADER_JSON + "duplicate member 'alg'"),
    reject("S9-duplicate-sub", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"sub":"admin"')), PAYLOAD_JSON + "duplicate member 'sub'"),
    reject("S9-duplicate-sub-escaped", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"s\\u0075b":"admin"')), PAYLOAD_JSON + "duplicate member 'sub'"),
    reject("S9-duplicate-nested", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"roles":{"a":1,"a":2}')), PAYLOAD_JSON + "duplicate member 'a'"),
    *(
        reject(f"S10-padding-{what}", lambda w, i=i: padded(w.rs, i), f"Jwt {what} is not valid base64url")
        for i, what in enumerate(("header", "payload", "signature"))
    ),
    reject("S10-standard-alphabet", lambda w: standard_alphabet_payload(w.rs), "Jwt payload is not valid base64url"),
    reject("S10-non-canonical-trailing-bits", lambda w: trailing_bits(w.rs), "Jwt signature is not valid base64url"),
    reject("S10-length-1-mod-4", lambda w: length_1_mod_4(good(w.rs)), "Jwt signature is not valid base64url"),
    reject("S10-question-mark-in-header", lambda w: insert(good(w.rs), 0, "?"), "Jwt header is not valid base64url"),
    reject("S10-question-mark-in-payload", lambda w: insert(good(w.rs), 1, "?"), "Jwt payload is not valid base64url"),
    reject("S10-hash-in-signature", lambda w: insert(good(w.rs), 2, "#"), "Jwt signature is not valid base64url"),
    reject("S10-space-inside-header", lambda w: insert(good(w.rs), 0, " "), "Jwt header is not valid base64url"),
    reject("S10-non-ascii-in-signature", lambda w: insert(good(w.rs), 2, "\u00e9"), "Jwt signature is not valid base64url"),
    reject("S11-payload-bom", lambda w: signed_raw(w.rs, b"\xef\xbb\xbf" + json.dumps(claims(w.rs)).encode()), PAYLOAD_JSON + "starts with a byte order mark"),
    reject("S11-header-bom", lambda w: w.rs.sign(b"\xef\xbb\xbf" + json.dumps(w.rs.header()).encode(), claims(w.rs)), HEADER_JSON + "starts with a byte order mark"),
    *(
        reject(f"S11-non-utf8-{name}", lambda w, b=raw: non_utf8(w.rs, b), PAYLOAD_JSON + "not UTF-8")
        for name, raw in {"ff": b"\xff", "truncated": b"\xc3\x28", "surrogate": b"\xed\xa0\x80",
                          "overlong": b"\xc0\xaf"}.items()
    ),
    reject("S11-utf16-payload", lambda w: signed_raw(w.rs, json.dumps(claims(w.rs)).encode("utf-16")), PAYLOAD_JSON + "not UTF-8"),
    accept("S11-lone-surrogate-escape-in-claim", lambda w: good(w.rs, sub="\ud800"), user="\\ud800"),
    *(
        reject(f"S12-payload-{name}", lambda w, b=body: signed_raw(w.rs, b), "Jwt payload is not a JSON object")
        for name, body in {"array": b"[1,2]", "string": b'"str"', "number": b"123", "null": b"null"}.items()
    ),
    reject("S13-exp-infinity", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"exp":Infinity', ("exp",))), PAYLOAD_JSON + "non-standard JSON literal Infinity"),
    reject("S13-nbf-nan", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"nbf":NaN')), PAYLOAD_JSON + "non-standard JSON literal NaN"),
    reject("S13-exp-1e400", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"exp":1e400', ("exp",))), PAYLOAD_JSON + "number 1e400 is out of range"),
    reject("S14-es256-der-signature", lambda w: es_der(w.es), VERIFICATION_FAILS),
    reject("S14-es256-extra-zero-byte", lambda w: resize_sig(good(w.es), extra=b"\x00"), VERIFICATION_FAILS),
    reject("S14-es256-leading-zero-per-half", lambda w: es_leading_zeros(w.es), VERIFICATION_FAILS),
    reject("S14-es256-12k-signature", lambda w: replace_sig(good(w.es), b"\x01" * 9000), VERIFICATION_FAILS),
    reject("S14-es256-22k-char-signature", lambda w: replace_sig(good(w.es), b"\x01" * 16400), E.JWT_TOO_LARGE),
    reject("S15-psychic-zero-signature-es256", lambda w: replace_sig(good(w.es), bytes(64)), VERIFICATION_FAILS),
    reject("S15-psychic-r-s-equal-n", lambda w: replace_sig(good(w.es), P256_ORDER.to_bytes(32, "big") * 2), VERIFICATION_FAILS),
    reject("S15-zero-signature-eddsa", lambda w: replace_sig(good(w.ed), bytes(64)), VERIFICATION_FAILS),
    accept("S16-ecdsa-high-s-is-accepted", lambda w: es_high_s(w.es)),
    *(
        reject(f"S17-bit-flip-{alg}-{where}", lambda w, a=alg, i=i: flip(good(getattr(w, a)), i), VERIFICATION_FAILS)
        for alg in ("rs", "es", "ed", "hs")
        for where, i in (("first", 0), ("last", -1))
    ),
    reject("S17-truncated-eddsa", lambda w: resize_sig(good(w.ed), keep=63), VERIFICATION_FAILS),
    reject("S17-truncated-hs256", lambda w: resize_sig(good(w.hs), keep=31), VERIFICATION_FAILS),
    reject("S17-truncated-rs256", lambda w: resize_sig(good(w.rs), keep=255), VERIFICATION_FAILS),
    reject("S17-signature-of-another-token", lambda w: ".".join(seg(good(w.rs, sub="admin"))[:2] + seg(good(w.rs))[2:]), VERIFICATION_FAILS),
    reject("S17-payload-swap", lambda w: w.rs.mint("alice", tamper="payload_swap"), VERIFICATION_FAILS),
    accept("S18-control-handmade-pkcs1", lambda w: pkcs1(w.rs, "control")),
    *(
        reject(f"S18-{variant}", lambda w, v=variant: pkcs1(w.rs, v), VERIFICATION_FAILS)
        for variant in ("missing-null", "sha1-digest-info", "ber-long-length", "zero-filler", "garbage-after-digest", "block-type-2")
    ),
    reject("S19-token-over-16k", lambda w: good(w.rs, pad="x" * 13_000), E.JWT_TOO_LARGE),
    reject("S19-token-1mb", lambda w: good(w.rs, pad="x" * 800_000), E.JWT_TOO_LARGE),
    reject("S19-a-million-dots", lambda w: "." * 1_000_000, E.JWT_TOO_LARGE),
    reject("S19-header-over-4k", lambda w: with_header(w.rs, pad="x" * 3500), E.JWT_TOO_LARGE),
    reject("S19-deeply-nested-list-payload", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"deep":' + deep("list", 5000))), PAYLOAD_JSON, prefix=True),
    reject("S19-deeply-nested-object-payload", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"deep":' + deep("object", 1200))), PAYLOAD_JSON, prefix=True),
    reject("S19-nested-101-levels", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"deep":' + deep("list", 100))), PAYLOAD_JSON + "nested deeper than 100 levels"),
    accept("S19-large-realistic-token-accepted", lambda w: good(w.rs, scope=" ".join(f"scope:{i}" for i in range(1000)))),
    accept("S21-trailing-ows-is-http-whitespace", lambda w: Req(headers=(("Authorization", f"Bearer {good(w.rs)}  "),))),
    reject("S21-tab-after-scheme", lambda w: Req(headers=(("Authorization", f"Bearer \t{good(w.rs)}"),)), "Jwt header is not valid base64url"),
    reject("S21-quoted-token", lambda w: f'"{good(w.rs)}"', "Jwt header is not valid base64url"),
    reject("S21-space-junk-after-token", lambda w: good(w.rs) + " .junk", BAD_FORMAT),
    reject("S21-query-token-trailing-space", lambda w: Req(query=f"access_token={good(w.rs)}%20"), "Jwt signature is not valid base64url"),
    reject("S21-query-token-leading-plus", lambda w: Req(query=f"access_token=+{good(w.rs)}"), "Jwt header is not valid base64url"),
    # ---- §3.3 claims
    reject("C1-expired", lambda w: good(w.rs, exp=int(time.time()) - 120), E.JWT_EXPIRED),
    reject("C1-tamper-expired", lambda w: w.rs.mint("alice", tamper="expired"), E.JWT_EXPIRED),
    reject("C2-exp-missing", lambda w: good(w.rs, exp=None), "Jwt has no exp and the provider requires one"),
    reject("C3-exp-string", lambda w: good(w.rs, exp=str(int(time.time()) + 600)), "Jwt exp is not a number"),
    accept("C4-float-numeric-dates", lambda w: good(w.rs, exp=time.time() + 600.5, nbf=time.time() - 0.25, iat=time.time() - 0.5)),
    reject("C5-exp-true", lambda w: good(w.rs, exp=True), "Jwt exp is not a number"),
    reject("C5-nbf-false", lambda w: good(w.rs, nbf=False), "Jwt nbf is not a number"),
    reject("C5-iat-string", lambda w: good(w.rs, iat="now"), "Jwt iat is not a number"),
    reject("C6-exp-1e30", lambda w: good(w.rs, exp=1e30), "Jwt exp is out of range"),
    reject("C6-exp-negative", lambda w: good(w.rs, exp=-1), "Jwt exp is out of range"),
    reject("C6-exp-2.001e206", lambda w: good(w.rs, exp=2.001e206), "Jwt exp is out of range"),
    reject("C6-exp-51-digit-int", lambda w: good(w.rs, exp=10**50), PAYLOAD_JSON + "integer is out of range"),
    reject("C6-exp-null", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"exp":null', ("exp",))), "Jwt exp is not a number"),
    reject("C7-nbf-in-the-future", lambda w: good(w.rs, nbf=int(time.time()) + 3600), E.JWT_NOT_YET_VALID),
    accept("C8-iat-in-the-future-is-ignored", lambda w: good(w.rs, iat=int(time.time()) + 3600)),
    *(
        reject(f"C9-iss-{name}", lambda w, i=iss: iss_token(w.rs, i), UNKNOWN_ISSUER)
        for name, iss in {"trailing-slash": "https://rs.test/", "upper-case-scheme": "HTTPS://rs.test",
                          "substring": "https://rs.tes", "superstring": "https://rs.test.evil",
                          "cyrillic-look-alike": "https://r\u0455.test", "array": ["https://rs.test"],
                          "number": 1, "object": {"iss": "https://rs.test"}}.items()
    ),
    reject("C9-iss-null", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"iss":null', ("iss",))), UNKNOWN_ISSUER),
    reject("C9-iss-missing", lambda w: good(w.rs, iss=None), UNKNOWN_ISSUER),
    accept("C10-aud-array-any-of", lambda w: good(w.rs, aud=["other", "api"])),
    reject("C11-aud-missing", lambda w: good(w.rs, aud=None), E.AUDIENCE_NOT_ALLOWED, status=403),
    reject("C12-aud-number", lambda w: good(w.rs, aud=1), "Jwt aud is not a string or a list of strings"),
    reject("C12-aud-mixed-list", lambda w: good(w.rs, aud=["api", 1]), "Jwt aud is not a string or a list of strings"),
    *(
        reject(f"C12-aud-{name}", lambda w, a=aud: good(w.rs, aud=a), E.AUDIENCE_NOT_ALLOWED, status=403)
        for name, aud in {"empty-string": "", "empty-list": [], "superstring": "api2", "prefix": "ap",
                          "case": "API", "url-form": "https://api", "trailing-slash": "api/"}.items()
    ),
    reject("C13-sub-number", lambda w: good(w.rs, sub=123), "Jwt sub is not a string"),
    reject("C14-jti-number", lambda w: good(w.rs, jti=1), "Jwt jti is not a string"),
    accept("C15-typ-is-not-checked", lambda w: with_header(w.rs, typ="id+jwt")),
    reject("C16-token-for-another-audience", lambda w: w.rs.mint("alice", tamper="wrong_audience"), E.AUDIENCE_NOT_ALLOWED, status=403),
    accept("C17-unicode-escaped-claim-name", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"s\\u0075b":"admin"', ("sub",))), user="admin"),
    reject("C18-nested-jwt-payload", lambda w: w.rs.sign(w.rs.header({"cty": "JWT"}), good(w.rs).encode()), PAYLOAD_JSON, prefix=True),
    # ---- §4 JWKS retrieval (remote providers that fail, or hold unusable keys)
    reject("K1-jwks-http-500", lambda w: remote_token(w, "k500"), FETCH_FAILED),
    reject("K1-jwks-not-json", lambda w: remote_token(w, "kgarbage"), FETCH_FAILED),
    reject("K1-jwks-timeout", lambda w: remote_token(w, "kslow"), FETCH_FAILED),
    reject("K1-jwks-empty-object", lambda w: doc_token(w, "empty", "x-sig"), FETCH_FAILED),
    reject("K1-jwks-keys-not-a-list", lambda w: doc_token(w, "keysint", "x-sig"), FETCH_FAILED),
    reject("K1-jwks-no-keys", lambda w: doc_token(w, "nokeys", "x-sig"), FETCH_FAILED),
    reject("K2-unknown-kid-one-refetch", lambda w: unknown_kid(w, "random-1"), KID_NOT_FOUND, check=at_most_one_refetch),
    reject("K2-unknown-kid-again", lambda w: unknown_kid(w, "random-2"), KID_NOT_FOUND, check=at_most_one_refetch),
    accept("K3-no-kid-tries-the-keys", lambda w: remote_token(w, "kgood", kid=None)),
    accept("K4-good-key-next-to-skipped-ones", lambda w: doc_token(w, "mixed", "x-sig")),
    reject("K4-private-key-in-remote-set", lambda w: doc_token(w, "mixed", "x-priv"), KID_NOT_FOUND),
    reject("K5-redirect-offsite", lambda w: remote_token(w, "kredirect"), FETCH_FAILED),
    reject("K5-giant-jwks-body", lambda w: doc_token(w, "giant", "x-sig"), FETCH_FAILED),
    # ---- §5 HTTP surface
    reject("H1-no-credentials", lambda w: Req(), E.JWT_MISSING),
    reject("H1-basic-scheme-is-no-token", lambda w: Req(headers=(("Authorization", "Basic YWxpY2U6cHc="),)), E.JWT_MISSING),
    reject("H1-bearer-without-space", lambda w: Req(headers=(("Authorization", f"Bearer-{good(w.rs)}"),)), E.JWT_MISSING),
    reject("H1-empty-bearer", lambda w: Req(headers=(("Authorization", "Bearer "),)), E.JWT_MISSING),
    reject("H1-prefix-not-at-start", lambda w: Req(headers=(("Authorization", f"preamble Bearer {good(w.rs)}"),)), E.JWT_MISSING),
    reject("H2-garbage-token", lambda w: "invalidToken", BAD_FORMAT),
    reject("H3-wrong-audience-is-403", lambda w: good(w.rs, aud="other"), E.AUDIENCE_NOT_ALLOWED, status=403),
    reject("H4-two-authorization-headers", lambda w: Req(token=good(w.rs), headers=(("Authorization", f"Bearer {good(w.rs)}"),)), E.MULTIPLE_TOKENS, status=400),
    reject("H4-header-and-query", lambda w: Req(token=good(w.rs), query=f"access_token={good(w.rs)}"), E.MULTIPLE_TOKENS, status=400),
    reject("H4-query-twice", lambda w: Req(query=f"access_token={good(w.rs)}&access_token={good(w.rs)}"), E.MULTIPLE_TOKENS, status=400),
    reject("H4-header-and-cookie", lambda w: Req(token=good(w.rs), headers=cookie(f"session={ck_token(w)}")), E.MULTIPLE_TOKENS, status=400),
    reject("H4-two-session-cookies", lambda w: Req(headers=cookie(f"session={ck_token(w)}; session={ck_token(w)}")), E.MULTIPLE_TOKENS, status=400),
    reject("H4-two-x-token-headers", lambda w: Req(headers=(("x-token", ck_token(w)), ("X-Token", ck_token(w)))), E.MULTIPLE_TOKENS, status=400),
    reject("H4-junk-first-valid-second", lambda w: Req(token="junk", query=f"access_token={good(w.rs)}"), E.MULTIPLE_TOKENS, status=400),
    accept("H5-query-token", lambda w: Req(query=f"access_token={good(w.rs)}&page=2")),
    accept("H5-cookie-location", lambda w: Req(headers=cookie(f"other=1; session={ck_token(w)}")), check=token_not_forwarded),
    accept("H5-custom-header-location", lambda w: Req(headers=(("x-token", ck_token(w)),)), check=token_not_forwarded),
    reject("H5-token-in-a-location-its-provider-does-not-list", lambda w: Req(headers=cookie(f"session={good(w.rs)}")), UNKNOWN_ISSUER),
    reject("H5-cookie-provider-token-in-authorization", lambda w: ck_token(w), UNKNOWN_ISSUER),
    accept("H6-lower-case-scheme", lambda w: Req(headers=(("Authorization", f"bearer {good(w.rs)}"),))),
    accept("H6-upper-case-scheme", lambda w: Req(headers=(("Authorization", f"BEARER {good(w.rs)}"),))),
    reject("H6-two-spaces-after-scheme", lambda w: Req(headers=(("Authorization", f"Bearer  {good(w.rs)}"),)), "Jwt header is not valid base64url"),
    reject("H7-X-User-without-token", lambda w: Req(headers=(("X-User", "admin"),)), E.JWT_MISSING),
    reject("H7-x-user-with-expired-token", lambda w: Req(token=w.rs.mint("alice", tamper="expired"), headers=(("x-user", "admin"),)), E.JWT_EXPIRED),
    accept("H7-x-user-with-valid-token", lambda w: Req(token=good(w.rs), headers=(("x-user", "admin"),))),
    accept("H7-X-USER-and-x-user-with-valid-token", lambda w: Req(token=good(w.rs), headers=(("X-USER", "admin"), ("x-user", "root"), ("X-User", "admin")))),
    accept("H7-forged-x-roles-without-roles-claim", lambda w: Req(token=good(w.rs), headers=(("x-roles", "admin"),)), check=only_claim_headers),
    accept("H7-crlf-in-claim-cannot-add-a-header", lambda w: good(w.rs, sub="alice\r\nx-admin: true"), user="alice\\r\\nx-admin: true", check=only_claim_headers),
    accept("H7-underscore-spelling-x_user", lambda w: Req(token=good(w.rs), headers=(("x_user", "admin"),)), check=no_underscore_spelling),
    reject("H8-cors-preflight-is-not-bypassed", lambda w: Req(method="OPTIONS", headers=(("Origin", "https://app.test"), ("Access-Control-Request-Method", "GET"))), E.JWT_MISSING),
    accept("H8-options-with-a-token-is-a-normal-request", lambda w: Req(method="OPTIONS", token=good(w.rs), headers=(("Origin", "https://app.test"), ("Access-Control-Request-Method", "GET")))),
    reject("H9-head-without-token", lambda w: Req(method="HEAD"), E.JWT_MISSING, check=head_no_body),
    reject("H9-head-with-expired-token", lambda w: Req(method="HEAD", token=w.rs.mint("alice", tamper="expired")), E.JWT_EXPIRED, check=head_no_body),
    reject("H10-recursion-in-a-signed-payload-is-401", lambda w: signed_raw(w.rs, raw_payload(w.rs, '"deep":' + deep("list", 3000))), PAYLOAD_JSON, prefix=True),
]
# fmt: on


@pytest.mark.parametrize("case", CASES)
async def test_attack_corpus(proxy, world, case: Case) -> None:
    built = case.build(world)
    req = Req(token=built) if isinstance(built, str) else built
    world.upstream.clear()
    reply = await send_raw(proxy.proxy_url, world.upstream.url, req)
    seen = list(world.upstream.received)
    assert reply.status == case.status, (reply.status, reply.text)
    if case.status == 200:
        assert len(seen) == 1
        assert reply.upstream == "primary"
        [request] = seen
        assert request.header_values("x-user") == [case.user]
        assert request.header_values("authorization") == []
        assert "access_token" not in request.query
    else:
        assert seen == [], "a refused request reached the upstream"
        check_refusal(req, reply, case, world.upstream.url)
    if case.check is not None:
        case.check(world, reply, seen)


def check_refusal(req: Req, reply: Reply, case: Case, base: str) -> None:
    assert case.reason is not None
    if req.method == "HEAD":
        assert reply.text == ""
        if not case.prefix:
            assert reply.headers["content-length"] == str(len(case.reason.encode()))
    elif case.prefix:
        assert reply.text.startswith(case.reason), reply.text
    else:
        assert reply.text == case.reason
    challenge = reply.headers.get("www-authenticate")
    realm = f'Bearer realm="{base}/api/orders"'
    if case.status == 403:
        assert challenge is None
    elif case.status == 400:
        assert challenge is not None and challenge.startswith(f'{realm}, error="invalid_request"')
    elif case.reason == E.JWT_MISSING:
        assert challenge == realm  # RFC 6750 §3.1: no error code without credentials
    else:
        assert challenge is not None and challenge.startswith(f'{realm}, error="invalid_token"')


async def test_the_table_has_unique_ids_and_covers_every_section() -> None:
    ids = [param.values[0].id for param in CASES]
    assert len(ids) == len(set(ids))
    sections = {case_id.split("-")[0].rstrip("0123456789") for case_id in ids}
    assert {"A", "S", "C", "K", "H"} <= sections
