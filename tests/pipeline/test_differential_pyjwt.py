"""Differential test against PyJWT (a test-only dependency): where PyJWT rejects, we reject.

Every token is verified twice: by claimroute (`verify_token` with `StaticKeySource`) and by
PyJWT's `jwt.decode`, configured like the provider the token's `iss` selects (same key, the
provider's algorithm, audiences, issuer, 60 s leeway, `exp` required). PyJWT's clock is pinned
to the same instant as ours, so the time edges are exact.

The direction that matters is "PyJWT rejects => claimroute rejects". Where claimroute accepts
what PyJWT rejects, the case must be one of the divergences explained in docs/security.md
("Differential results"); the grid test asserts that list exactly, so a new divergence fails,
and the hypothesis test classifies random claims the same way. The other direction (we reject
what PyJWT accepts: duplicate members, unknown kids, numeric strings for `exp`, `crit`, padded
base64, booleans as dates...) is claimroute being stricter on purpose and is only counted.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from claimroute.errors import Rejection
from claimroute.keys.source import StaticKeySource
from claimroute.pipeline.verify import verify_token
from claimroute.policy.load import load_policy_text
from claimroute.policy.model import Policy
from claimroute_tools.lab import TestIssuer, b64url, b64url_decode, build_compact
from claimroute_tools.lab.issuer import hmac_signer, signer_for

pytestmark = [
    pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning"),
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

NOW = 1_750_000_000
SKEW = 60
AUD = "api"
# name -> (alg, audiences configured?). Two with audiences, two without: PyJWT treats a token
# `aud` differently when the verifier expects none, and that is one of the divergences.
PROVIDERS = {
    "rs": ("RS256", True),
    "es": ("ES256", False),
    "ed": ("EdDSA", True),
    "hs": ("HS256", False),
}

# The divergences docs/security.md explains: (variant, provider) pairs where claimroute
# accepts a token PyJWT rejects. Asserted exactly by test_the_divergences_are_the_documented_ones.
DOCUMENTED_DIVERGENCES = {
    # 1. `iat` in the future is ignored (RFC 7519 does not require rejecting it); PyJWT
    #    rejects iat > now + leeway.
    *(f"iat-future@{p}" for p in PROVIDERS),
    # 2. Fractional NumericDates are compared as numbers (RFC 7519 §2); PyJWT truncates `exp`
    #    to an integer first, so it expires the token up to one second early.
    *(f"exp-fractional-last-second@{p}" for p in PROVIDERS),
    # 3. A provider without `audiences` does not check `aud` (Envoy's rule); PyJWT given no
    #    audience rejects every token that carries a non-empty `aud`.
    *(
        f"{v}@{p}"
        for v in ("valid-with-aud", "aud-other", "aud-list-other", "aud-list-with-api", "aud-case")
        for p in ("es", "hs")
    ),
}


class FrozenDatetime(datetime):
    """PyJWT reads the time with `datetime.now(tz=timezone.utc)`; pin it to NOW."""

    @classmethod
    def now(cls, tz: Any = None) -> FrozenDatetime:  # type: ignore[override]
        return cls.fromtimestamp(NOW, tz or UTC)


@dataclass
class Env:
    policy: Policy
    sources: dict[str, StaticKeySource]
    issuers: dict[str, TestIssuer]
    loop: asyncio.AbstractEventLoop

    def claimroute_accepts(self, token: str) -> bool:
        coro = verify_token(token, self.policy, self.sources, NOW)  # type: ignore[arg-type]
        try:
            self.loop.run_until_complete(coro)
        except Rejection:
            return False
        return True

    def provider_for(self, token: str, fallback: str) -> str:
        """The provider claimroute would pick (by `iss`), or `fallback` if none matches."""
        try:
            iss = json.loads(b64url_decode(token.split(".")[1])).get("iss")
        except Exception:
            return fallback
        for name, issuer in self.issuers.items():
            if isinstance(iss, str) and iss == issuer.issuer:
                return name
        return fallback

    def pyjwt_accepts(self, token: str, provider: str) -> bool:
        issuer = self.issuers[provider]
        alg, has_audiences = PROVIDERS[provider]
        key = issuer.private_key if issuer.symmetric else issuer.key.public_key
        try:
            pyjwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=[AUD] if has_audiences else None,
                issuer=issuer.issuer,
                leeway=SKEW,
                options={"require": ["exp"]},
            )
        except Exception:  # any PyJWT error (or crash) is a rejection by the oracle
            return False
        return True


@pytest.fixture(scope="module")
def env(make_issuer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base: Path = tmp_path_factory.mktemp("differential")
    issuers: dict[str, TestIssuer] = {}
    lines = ["version: 1", "providers:"]
    for name, (alg, has_audiences) in PROVIDERS.items():
        issuer = make_issuer(f"df{name}", alg, audience=AUD if has_audiences else None)
        issuers[name] = issuer
        issuer.write_jwks(base / f"{name}.json")
        lines += [
            f"  {name}:",
            f"    issuer: {issuer.issuer}",
            f"    jwks: {{file: {name}.json}}",
            f"    algorithms: [{alg}]",
            f"    clock_skew: {SKEW}s",
        ]
        if has_audiences:
            lines.append(f"    audiences: [{AUD}]")
    policy = load_policy_text("\n".join(lines) + "\n", "differential.yaml", base=base)
    sources = {
        name: StaticKeySource(provider.jwks.key_set, name)  # type: ignore[union-attr]
        for name, provider in policy.providers.items()
    }
    loop = asyncio.new_event_loop()
    yield Env(policy, sources, issuers, loop)
    loop.close()


@pytest.fixture(autouse=True)
def _pyjwt_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyjwt.api_jwt, "datetime", FrozenDatetime)


# --------------------------------------------------------------------------- the grid

type Build = Callable[[TestIssuer, dict[str, TestIssuer]], str]


def claims(issuer: TestIssuer, **changes: Any) -> dict[str, Any]:
    return issuer.claims("alice", changes, now=NOW)


def signed(**changes: Any) -> Build:
    return lambda issuer, _: issuer.sign(issuer.header(), claims(issuer, **changes))


def raw(members: str, drop: tuple[str, ...] = ()) -> Build:
    """Claims text with `members` appended verbatim (NaN, huge integers, duplicates...)."""

    def build(issuer: TestIssuer, _: dict[str, TestIssuer]) -> str:
        base = {k: v for k, v in claims(issuer).items() if k not in drop}
        text = json.dumps(base, separators=(",", ":"))[:-1] + "," + members + "}"
        return issuer.sign(issuer.header(), text.encode())

    return build


def header(**members: Any) -> Build:
    return lambda issuer, _: issuer.sign(issuer.header(members), claims(issuer))


def mutate_signature(how: str) -> Build:
    def build(issuer: TestIssuer, _: dict[str, TestIssuer]) -> str:
        h, p, s = issuer.mint("alice", now=NOW).split(".")
        sig = bytearray(b64url_decode(s))
        match how:
            case "flip":
                sig[-1] ^= 1
            case "truncate":
                del sig[-1]
            case "extend":
                sig.append(0)
            case "empty":
                return f"{h}.{p}."
            case "padded":
                return f"{h}.{p}.{s}" + "=" * (-len(s) % 4 or 4)
        return f"{h}.{p}.{b64url(bytes(sig))}"

    return build


def relabel(alg: str) -> Build:
    """The issuer's valid signature under another alg label."""

    def build(issuer: TestIssuer, _: dict[str, TestIssuer]) -> str:
        _, p, s = issuer.mint("alice", now=NOW).split(".")
        return f"{b64url(json.dumps(issuer.header({'alg': alg})).encode())}.{p}.{s}"

    return build


def hs256_with_public_key(issuer: TestIssuer, _: dict[str, TestIssuer]) -> str:
    secret = issuer.private_key if issuer.symmetric else issuer.public_pem()
    return build_compact(
        issuer.header({"alg": "HS256"}), claims(issuer), hmac_signer("sha256", secret)
    )


def signed_by_other(issuer: TestIssuer, all_issuers: dict[str, TestIssuer]) -> str:
    """Claims of this issuer, signed with another issuer's key (and alg)."""
    other = next(i for i in all_issuers.values() if i is not issuer and i.alg != issuer.alg)
    return build_compact(
        issuer.header({"alg": other.alg}), claims(issuer), signer_for(other.alg, other.key)
    )


def unsigned_none(issuer: TestIssuer, _: dict[str, TestIssuer]) -> str:
    return build_compact({"alg": "none"}, claims(issuer), None)


def payload_bytes(body: bytes) -> Build:
    return lambda issuer, _: issuer.sign(issuer.header(), body)


VARIANTS: dict[str, Build] = {
    "valid": signed(),
    "valid-with-aud": signed(aud=AUD),
    # exp
    "exp-expired": signed(exp=NOW - SKEW - 1),
    "exp-boundary-rejected": signed(exp=NOW - SKEW),
    "exp-boundary-accepted": signed(exp=NOW - SKEW + 1),
    "exp-fractional-last-second": signed(exp=NOW - SKEW + 0.5),
    "exp-fractional-future": signed(exp=NOW + 600.75),
    "exp-missing": signed(exp=None),
    "exp-null": raw('"exp":null', ("exp",)),
    "exp-numeric-string": signed(exp=str(NOW + 600)),
    "exp-word-string": signed(exp="tomorrow"),
    "exp-true": signed(exp=True),
    "exp-1e30": signed(exp=1e30),
    "exp-negative": signed(exp=-1),
    "exp-51-digits": signed(exp=10**50),
    "exp-nan": raw('"exp":NaN', ("exp",)),
    "exp-infinity": raw('"exp":Infinity', ("exp",)),
    "exp-list": signed(exp=[NOW + 600]),
    # nbf
    "nbf-future": signed(nbf=NOW + SKEW + 1),
    "nbf-boundary": signed(nbf=NOW + SKEW),
    "nbf-fractional": signed(nbf=NOW + SKEW + 0.5),
    "nbf-past": signed(nbf=NOW - 10),
    "nbf-string": signed(nbf="soon"),
    "nbf-false": signed(nbf=False),
    "nbf-nan": raw('"nbf":NaN'),
    # iat
    "iat-future": signed(iat=NOW + 3600),
    "iat-boundary": signed(iat=NOW + SKEW),
    "iat-string": signed(iat="now"),
    "iat-numeric-string": signed(iat=str(NOW)),
    "iat-true": signed(iat=True),
    # aud
    "aud-missing": signed(aud=None),
    "aud-other": signed(aud="other"),
    "aud-list-other": signed(aud=["other"]),
    "aud-list-with-api": signed(aud=["other", AUD]),
    "aud-empty-string": signed(aud=""),
    "aud-empty-list": signed(aud=[]),
    "aud-number": signed(aud=1),
    "aud-list-number": signed(aud=[AUD, 1]),
    "aud-case": signed(aud="API"),
    # iss
    "iss-other": signed(iss="https://other.test"),
    "iss-trailing-slash": lambda issuer, _: issuer.sign(
        issuer.header(), claims(issuer, iss=issuer.issuer + "/")
    ),
    "iss-array": lambda issuer, _: issuer.sign(
        issuer.header(), claims(issuer, iss=[issuer.issuer])
    ),
    "iss-number": signed(iss=7),
    "iss-missing": signed(iss=None),
    # sub / jti
    "sub-number": signed(sub=123),
    "sub-list": signed(sub=["alice"]),
    "jti-number": signed(jti=5),
    "jti-string": signed(jti="abc"),
    # payload shape and JSON
    "payload-array": payload_bytes(b"[1,2]"),
    "payload-bom": lambda issuer, _: issuer.sign(
        issuer.header(), b"\xef\xbb\xbf" + json.dumps(claims(issuer)).encode()
    ),
    "payload-duplicate-sub": raw('"sub":"admin"'),
    "payload-not-utf8": lambda issuer, _: issuer.sign(
        issuer.header(), json.dumps(claims(issuer)).encode()[:-1] + b',"x":"\xff"}'
    ),
    # header and algorithm
    "alg-none-unsigned": unsigned_none,
    "alg-none-with-signature": relabel("none"),
    "alg-relabelled": relabel("RS384"),
    "alg-hs256-with-public-key": hs256_with_public_key,
    "signed-by-another-key": signed_by_other,
    "kid-unknown": header(kid="no-such-kid"),
    "kid-number": header(kid=1),
    "crit-unknown": header(crit=["exp1"], exp1=1),
    "crit-empty": header(crit=[]),
    "b64-true": header(b64=True),
    "jku": header(jku="https://evil.test/jwks.json"),
    "typ-other": header(typ="id+jwt"),
    "header-extra-member": header(foo="bar"),
    # signature and encoding
    "sig-flip": mutate_signature("flip"),
    "sig-truncate": mutate_signature("truncate"),
    "sig-extend": mutate_signature("extend"),
    "sig-empty": mutate_signature("empty"),
    "sig-padded": mutate_signature("padded"),
}


@dataclass(frozen=True)
class Outcome:
    case: str
    claimroute: bool
    pyjwt: bool


def run_grid(env: Env) -> list[Outcome]:
    outcomes = []
    for name, build in VARIANTS.items():
        for provider, issuer in env.issuers.items():
            token = build(issuer, env.issuers)
            target = env.provider_for(token, provider)
            outcomes.append(
                Outcome(
                    f"{name}@{provider}",
                    env.claimroute_accepts(token),
                    env.pyjwt_accepts(token, target),
                )
            )
    return outcomes


@pytest.fixture(scope="module")
def grid(env: Env) -> list[Outcome]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pyjwt.api_jwt, "datetime", FrozenDatetime)
        return run_grid(env)


def test_the_divergences_are_the_documented_ones(grid: list[Outcome]) -> None:
    """claimroute accepts what PyJWT rejects only in the cases docs/security.md explains."""
    divergent = {o.case for o in grid if o.claimroute and not o.pyjwt}
    assert divergent == DOCUMENTED_DIVERGENCES


def test_both_accept_the_valid_tokens(grid: list[Outcome]) -> None:
    """So the agreement on rejections is not an artefact of a broken setup."""
    by_case = {o.case: o for o in grid}
    for provider in PROVIDERS:
        for variant in (
            "valid",
            "exp-boundary-accepted",
            "nbf-boundary",
            "iat-boundary",
            "jti-string",
        ):
            assert by_case[f"{variant}@{provider}"] == Outcome(f"{variant}@{provider}", True, True)


def test_documentation_lists_the_divergences() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    for marker in ("iat-future", "exp-fractional-last-second", "aud-other", "valid-with-aud"):
        assert marker in text, f"docs/security.md does not explain {marker}"


def test_stricter_than_pyjwt_on_purpose(grid: list[Outcome]) -> None:
    """The other direction is allowed, and expected for these (documented as stricter)."""
    stricter = {o.case.split("@")[0] for o in grid if o.pyjwt and not o.claimroute}
    assert {
        "payload-duplicate-sub",
        "kid-unknown",
        "exp-numeric-string",
        "b64-true",
        "sig-padded",
        "payload-bom",
        "iat-true",
        "nbf-false",
    } <= stricter


# --------------------------------------------------------------------------- random claims


def documented_reason(claims_: dict[str, Any], provider: str) -> str | None:
    """Which documented divergence explains PyJWT rejecting claims that claimroute accepts."""
    iat = claims_.get("iat")
    numeric_iat = isinstance(iat, int | float) and not isinstance(iat, bool)
    if numeric_iat and math.isfinite(iat) and int(iat) > NOW + SKEW:
        return "iat-future"
    exp = claims_.get("exp")
    if isinstance(exp, float) and math.isfinite(exp) and int(exp) <= NOW - SKEW < exp:
        return "exp-fractional-last-second"
    if not PROVIDERS[provider][1] and claims_.get("aud"):
        return "aud-without-audiences"
    return None


NUMERIC_DATE = st.one_of(
    st.integers(NOW - 7200, NOW + 7200),
    st.floats(NOW - 7200, NOW + 7200),
    st.sampled_from([NOW - SKEW, NOW - SKEW + 0.5, NOW + SKEW, NOW + SKEW + 0.5, 0, -1, 10**20]),
    st.booleans(),
    st.text(max_size=4),
    st.just(str(NOW + 600)),
    st.none(),
)
AUDIENCE = st.one_of(
    st.sampled_from([AUD, "other", "", "API"]),
    st.lists(st.sampled_from([AUD, "other", ""]), max_size=3),
    st.integers(0, 3),
    st.none(),
)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    provider=st.sampled_from(sorted(PROVIDERS)),
    exp=NUMERIC_DATE,
    nbf=NUMERIC_DATE,
    iat=NUMERIC_DATE,
    aud=AUDIENCE,
    sub=st.one_of(st.text(max_size=5), st.integers(), st.none()),
    jti=st.one_of(st.text(max_size=5), st.integers(), st.none()),
    iss_ok=st.booleans(),
)
def test_random_claims_pyjwt_rejects_implies_claimroute_rejects(
    env: Env,
    provider: str,
    exp: Any,
    nbf: Any,
    iat: Any,
    aud: Any,
    sub: Any,
    jti: Any,
    iss_ok: bool,
) -> None:
    issuer = env.issuers[provider]
    body = {
        "iss": issuer.issuer if iss_ok else "https://elsewhere.test",
        "exp": exp,
        "nbf": nbf,
        "iat": iat,
        "aud": aud,
        "sub": sub,
        "jti": jti,
    }
    body = {k: v for k, v in body.items() if v is not None}
    token = issuer.sign(issuer.header(), body)
    ours, theirs = env.claimroute_accepts(token), env.pyjwt_accepts(token, provider)
    if ours and not theirs:
        assert documented_reason(body, provider) is not None, f"undocumented divergence: {body}"
