"""Property-based tests of the token parser and verifier (hypothesis).

Properties, for arbitrary text and for mutations of valid tokens of every key type:
- `parse_token` and `verify_token` raise nothing but `Rejection` (never a 500 in the proxy);
- a mutated token is never accepted: only the byte-identical original verifies;
- a mutation whose segments still decode (leniently) to the original bytes is refused as
  non-canonical base64url, so one token has exactly one spelling;
- and, so that "never accepts" is not vacuous, valid tokens with arbitrary JSON claims are
  accepted with exactly those claims.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from claimroute.errors import Rejection
from claimroute.keys.source import StaticKeySource
from claimroute.pipeline.verify import VerifiedToken, parse_token, verify_token
from claimroute.policy.load import load_policy_text
from claimroute.policy.model import Policy
from claimroute_tools.lab import TestIssuer, b64url

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")

NOW = 1_750_000_000
AUD = "api"
ALGS = ("RS256", "PS256", "ES256", "EdDSA", "HS256")
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Characters a mutation may put into a token: the alphabet, its neighbours in standard
# base64, padding, separators, whitespace, quotes, and a few non-ASCII look-alikes.
NOISE = B64URL + "+/=. \t\n\r\"'?#%\x00\u00e9\u0430\u2024\uff0e\ufeff"

SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a failure is reproducible in CI
)


@dataclass
class Env:
    policy: Policy
    sources: dict[str, StaticKeySource]
    tokens: list[str]  # one valid token per algorithm
    issuers: dict[str, TestIssuer]
    loop: asyncio.AbstractEventLoop

    def verify(self, token: str) -> VerifiedToken:
        coro = verify_token(token, self.policy, self.sources, NOW)  # type: ignore[arg-type]
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def env(make_issuer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base: Path = tmp_path_factory.mktemp("fuzz")
    issuers = {alg: make_issuer(f"fz{alg.lower()}", alg, audience=AUD) for alg in ALGS}
    lines = ["version: 1", "providers:"]
    for issuer in issuers.values():
        issuer.write_jwks(base / f"{issuer.name}.json")
        lines += [
            f"  {issuer.name}:",
            f"    issuer: {issuer.issuer}",
            f"    audiences: [{AUD}]",
            f"    jwks: {{file: {issuer.name}.json}}",
        ]
    policy = load_policy_text("\n".join(lines) + "\n", "fuzz.yaml", base=base)
    sources = {
        name: StaticKeySource(provider.jwks.key_set, name)  # type: ignore[union-attr]
        for name, provider in policy.providers.items()
    }
    tokens = [
        issuer.mint("alice", {"roles": ["a", "b"], "n": 1.5}, now=NOW)
        for issuer in issuers.values()
    ]
    loop = asyncio.new_event_loop()
    environment = Env(policy, sources, tokens, issuers, loop)
    for token in tokens:  # the originals verify: every property below starts from them
        assert environment.verify(token).claims["sub"] == "alice"
    yield environment
    loop.close()


def outcome(env: Env, token: str) -> VerifiedToken | Rejection:
    """The verifier's answer; any exception other than Rejection fails the test."""
    try:
        return env.verify(token)
    except Rejection as rejection:
        return rejection


def lenient_decode(segment: str) -> bytes | None:
    """What a lax decoder makes of a segment (ignores junk characters, padding optional)."""
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


# --------------------------------------------------------------------------- arbitrary text


@SETTINGS
@given(text=st.text(max_size=300))
def test_parse_token_on_arbitrary_text_only_rejects(text: str) -> None:
    try:
        parse_token(text)
    except Rejection as rejection:
        assert rejection.status == 401
        assert rejection.error == "invalid_token"


@SETTINGS
@given(
    text=st.one_of(
        st.text(alphabet=NOISE, max_size=400),
        st.from_regex(
            r"\A[A-Za-z0-9_=+/-]{0,60}\.[A-Za-z0-9_=+/-]{0,60}\.[A-Za-z0-9_=+/-]{0,90}\Z"
        ),
        st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
    )
)
def test_verify_token_on_arbitrary_text_never_accepts(env: Env, text: str) -> None:
    result = outcome(env, text)
    assert isinstance(result, Rejection), f"accepted arbitrary text {text!r}"
    assert result.status == 401


@SETTINGS
@given(
    header=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4),
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=12,
    ),
    signature=st.binary(max_size=80),
)
def test_structured_junk_never_accepts(env: Env, header: dict, body: Any, signature: bytes) -> None:
    """Well-formed base64url around arbitrary JSON (NaN included): parsing goes deeper."""
    assume(signature)
    token = ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(body).encode()), b64url(signature)]
    )
    assert isinstance(outcome(env, token), Rejection)


# --------------------------------------------------------------------------- mutations


def substitute(token: str, index: int, char: str) -> str:
    index %= len(token)
    return token[:index] + char + token[index + 1 :]


def insert(token: str, index: int, char: str) -> str:
    index %= len(token) + 1
    return token[:index] + char + token[index:]


def delete(token: str, index: int, _: str) -> str:
    index %= len(token)
    return token[:index] + token[index + 1 :]


MUTATIONS: dict[str, Callable[[str, int, str], str]] = {
    "substitute": substitute,
    "insert": insert,
    "delete": delete,
}


@SETTINGS
@given(
    which=st.integers(0, len(ALGS) - 1),
    edits=st.lists(
        st.tuples(
            st.sampled_from(sorted(MUTATIONS)), st.integers(0, 10_000), st.sampled_from(NOISE)
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_character_mutations_are_never_accepted(env: Env, which: int, edits: list) -> None:
    original = env.tokens[which]
    token = original
    for name, index, char in edits:
        token = MUTATIONS[name](token, index, char)
    assume(token != original)
    result = outcome(env, token)
    assert isinstance(result, Rejection), f"accepted a mutation of a valid token: {token!r}"
    assert (result.status, result.error) == (401, "invalid_token")
    parts, original_parts = token.split("."), original.split(".")
    if len(parts) == 3 and all(parts) and parts != original_parts:
        decoded = [lenient_decode(p) for p in parts]
        if decoded == [lenient_decode(p) for p in original_parts]:
            # The same bytes spelled differently (padding, junk, unused bits): refused for
            # the spelling, before anything else.
            assert result.reason.endswith("is not valid base64url"), result.reason


@SETTINGS
@given(which=st.integers(0, len(ALGS) - 1), segment=st.integers(0, 2), index=st.integers(0, 2000))
def test_unused_trailing_bits_are_refused(env: Env, which: int, segment: int, index: int) -> None:
    """Flipping any bit a lax decoder ignores (the unused low bits of the last character)."""
    parts = env.tokens[which].split(".")
    text = parts[segment]
    unused = {2: 4, 3: 2}.get(len(text) % 4, 0)  # bits the last character does not carry
    assume(unused)
    last = B64URL.index(text[-1])
    flipped = last ^ (1 + index % ((1 << unused) - 1))
    parts[segment] = text[:-1] + B64URL[flipped]
    token = ".".join(parts)
    assert lenient_decode(parts[segment]) == lenient_decode(text)
    result = outcome(env, token)
    assert isinstance(result, Rejection)
    what = ("header", "payload", "signature")[segment]
    assert result.reason == f"Jwt {what} is not valid base64url"


@SETTINGS
@given(
    picks=st.tuples(*(st.integers(0, len(ALGS) - 1) for _ in range(3))),
    order=st.permutations([0, 1, 2]),
)
def test_spliced_and_swapped_segments_are_never_accepted(
    env: Env, picks: tuple, order: list
) -> None:
    """Header, payload and signature taken from different valid tokens, in any order."""
    pieces = [env.tokens[pick].split(".")[i] for i, pick in enumerate(picks)]
    token = ".".join(pieces[i] for i in order)
    assume(token not in env.tokens)
    assert isinstance(outcome(env, token), Rejection)


JSON_EDITS = st.sampled_from(
    [
        "indent",  # the same JSON, other whitespace
        "reorder",  # the same members, other order
        "ascii-escape",  # \\u escapes for every non-ASCII and, here, for 'a'
        "sub-admin",
        "exp-later",
        "aud-list",
        "alg-none",
        "alg-hs256",
        "drop-kid",
        "add-member",
        "duplicate-member",
        "float-exp",
    ]
)


def edit_json(value: dict[str, Any], edit: str, is_header: bool) -> bytes:
    value = dict(value)
    match edit:
        case "indent":
            return json.dumps(value, indent=1).encode()
        case "reorder":
            return json.dumps(dict(reversed(list(value.items())))).encode()
        case "ascii-escape":
            return json.dumps(value, separators=(",", ":")).replace("a", "\\u0061").encode()
        case "sub-admin" if not is_header:
            value["sub"] = "admin"
        case "exp-later" if not is_header:
            value["exp"] = value["exp"] + 3600
        case "aud-list" if not is_header:
            value["aud"] = [value["aud"]]
        case "float-exp" if not is_header:
            value["exp"] = float(value["exp"])
        case "alg-none" if is_header:
            value["alg"] = "none"
        case "alg-hs256" if is_header:
            value["alg"] = "HS256"
        case "drop-kid" if is_header:
            value.pop("kid", None)
        case "add-member":
            value["x"] = 1
        case "duplicate-member":
            text = json.dumps(value, separators=(",", ":"))
            first = next(iter(value))
            return (text[:-1] + f",{json.dumps(first)}:{json.dumps(value[first])}}}").encode()
    return json.dumps(value, separators=(",", ":")).encode()


@SETTINGS
@given(which=st.integers(0, len(ALGS) - 1), in_header=st.booleans(), edit=JSON_EDITS)
def test_reencoded_json_keeps_no_signature(
    env: Env, which: int, in_header: bool, edit: str
) -> None:
    """Decode header or payload, change it (or only its spelling), re-encode, keep the old
    signature: the signature covers bytes, so even an equivalent JSON text is refused."""
    original = env.tokens[which]
    parts = original.split(".")
    index = 0 if in_header else 1
    decoded = json.loads(base64.urlsafe_b64decode(parts[index] + "=="))
    parts[index] = b64url(edit_json(decoded, edit, in_header))
    token = ".".join(parts)
    assume(token != original)
    result = outcome(env, token)
    assert isinstance(result, Rejection), f"accepted re-encoded {edit} token"
    assert result.status == 401


# --------------------------------------------------------------------------- valid tokens


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(SETTINGS, max_examples=100)
@given(
    which=st.integers(0, len(ALGS) - 1),
    extra=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5),
)
def test_valid_tokens_with_arbitrary_claims_are_accepted(env: Env, which: int, extra: dict) -> None:
    reserved = {"iss", "sub", "aud", "exp", "nbf", "iat", "jti"}
    extra = {k: v for k, v in extra.items() if k not in reserved}
    issuer = list(env.issuers.values())[which]
    token = issuer.mint("alice", extra, now=NOW)
    result = outcome(env, token)
    assert isinstance(result, VerifiedToken), result
    assert result.claims == json.loads(json.dumps(issuer.claims("alice", extra, now=NOW)))
