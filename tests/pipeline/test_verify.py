"""Strict JWT verification (verify.py) against the conformance and attack checklist.

Every token here is built by hand (lab `build_compact`) and, unless the test is about the
signature, validly signed, so that a rejection can only come from the defect under test.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import RSAKey

from claimroute import errors as E
from claimroute.config.jsonstrict import MAX_DEPTH, StrictJSONError, loads_strict
from claimroute.errors import Rejection
from claimroute.keys.source import StaticKeySource
from claimroute.pipeline.verify import (
    MAX_TOKEN_CHARS,
    ParsedToken,
    VerifiedToken,
    _b64decode,
    parse_token,
    verify_token,
)
from claimroute.policy.load import load_policy_text
from claimroute.policy.model import Policy
from claimroute_tools.lab import TestIssuer, b64url, build_compact
from claimroute_tools.lab.issuer import b64url_decode, hmac_signer, signer_for

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")

NOW = 1_750_000_000
AUD = "api"
ALGS = ("RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256")
NAMES = {"RS256": "rs", "PS256": "ps", "ES256": "es256", "ES384": "es384", "EdDSA": "ed",
         "HS256": "hs"}  # fmt: skip


@dataclass
class Env:
    policy: Policy
    sources: dict[str, StaticKeySource]
    issuers: dict[str, TestIssuer]  # by alg

    @property
    def rs(self) -> TestIssuer:
        return self.issuers["RS256"]

    @property
    def es(self) -> TestIssuer:
        return self.issuers["ES256"]


@pytest.fixture(scope="module")
def env(make_issuer: Any, tmp_path_factory: pytest.TempPathFactory) -> Env:
    base: Path = tmp_path_factory.mktemp("verify")
    issuers = {alg: make_issuer(NAMES[alg], alg, audience=AUD) for alg in ALGS}
    lines = ["version: 1", "providers:"]
    for alg, issuer in issuers.items():
        issuer.write_jwks(base / f"{issuer.name}.json")
        lines += [
            f"  {issuer.name}:",
            f"    issuer: {issuer.issuer}",
            f"    audiences: [{AUD}]",
            f"    jwks: {{file: {issuer.name}.json}}",
        ]
        assert issuer.alg == alg
    (base / "rs.pem").write_bytes(issuers["RS256"].public_pem())
    lines.append(
        textwrap.indent(
            textwrap.dedent("""\
                pem:                      # PEM: every RSA alg, narrowed by the allowlist
                  issuer: https://pem.test
                  jwks: {file: rs.pem}
                  algorithms: [RS256, PS256]
                mixed:                    # an allowlist naming HS256 next to an RSA key
                  issuer: https://mixed.test
                  jwks: {file: rs.json}
                  algorithms: [RS256, HS256]
                rsapem:                   # PEM without an allowlist: all RSA algs
                  issuer: https://rsapem.test
                  jwks: {file: rs.pem}
                lax:
                  issuer: https://lax.test
                  jwks: {file: rs.json}
                  require_expiration: false
                  clock_skew: 0s
                short:
                  issuer: https://short.test
                  jwks: {file: rs.json}
                  max_lifetime: 1h
                  clock_skew: 30s
                """),
            "  ",
        )
    )
    policy = load_policy_text("\n".join(lines) + "\n", "verify.yaml", base=base)
    sources = {
        name: StaticKeySource(provider.jwks.key_set, name)  # type: ignore[union-attr]
        for name, provider in policy.providers.items()
    }
    return Env(policy, sources, issuers)


async def verify(env: Env, token: str, now: float = NOW) -> VerifiedToken:
    return await verify_token(token, env.policy, env.sources, now)  # type: ignore[arg-type]


async def reject(env: Env, token: str, now: float = NOW) -> Rejection:
    with pytest.raises(Rejection) as info:
        await verify(env, token, now)
    return info.value


async def assert_invalid(
    env: Env, token: str, reason: str | None = None, *, prefix: str = ""
) -> str:
    """401 invalid_token, with exactly `reason` (or a reason starting with `prefix`)."""
    rejection = await reject(env, token)
    assert rejection.status == 401, rejection
    assert rejection.error == "invalid_token", rejection
    assert rejection.challenge is True
    if reason is not None:
        assert rejection.reason == reason
    assert rejection.reason.startswith(prefix), rejection.reason
    return rejection.reason


def payload(issuer: TestIssuer, **claims: Any) -> dict[str, Any]:
    """Valid claims for `issuer` at NOW, overridden by `claims` (None removes one)."""
    return issuer.claims("alice", claims, now=NOW)


def raw_payload(issuer: TestIssuer, **raw: str) -> bytes:
    """Payload JSON text with the given members as raw JSON literals (NaN, 1e400, ...)."""
    base = payload(issuer, **dict.fromkeys(raw))
    text = json.dumps(base, separators=(",", ":"))[:-1]
    return (text + "".join(f',"{k}":{v}' for k, v in raw.items()) + "}").encode()


def mint(issuer: TestIssuer, **claims: Any) -> str:
    return issuer.sign(issuer.header(), payload(issuer, **claims))


def sign_as(issuer: TestIssuer, alg: str, header: dict[str, Any], body: Any) -> str:
    """Sign with `issuer`'s key under another `alg` of the same key type."""
    return build_compact(header, body, signer_for(alg, issuer.key))


def segments(token: str) -> list[str]:
    return token.split(".")


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("alg", ALGS)
async def test_valid_token_accepted(env: Env, alg: str) -> None:
    issuer = env.issuers[alg]
    result = await verify(env, issuer.mint("alice", {"role": "x"}, now=NOW))
    assert result.provider.name == issuer.name
    assert result.claims["sub"] == "alice"
    assert result.claims["role"] == "x"
    assert result.header["alg"] == alg
    assert result.header["kid"] == issuer.kid


async def test_valid_token_without_kid(env: Env) -> None:
    token = env.es.sign(env.es.header({"kid": None}), payload(env.es))
    assert (await verify(env, token)).provider.name == "es256"


async def test_pem_provider_accepts_rs256_and_ps256(env: Env) -> None:
    for alg in ("RS256", "PS256"):
        token = sign_as(env.rs, alg, {"alg": alg}, payload(env.rs, iss="https://pem.test"))
        assert (await verify(env, token)).provider.name == "pem"


async def test_float_numeric_dates_accepted(env: Env) -> None:
    token = mint(env.rs, exp=NOW + 0.5, iat=NOW - 0.25, nbf=NOW - 10.5)
    assert (await verify(env, token)).claims["exp"] == NOW + 0.5


async def test_unknown_non_critical_header_members_ignored(env: Env) -> None:
    token = env.rs.sign(env.rs.header({"x5t": "abc", "foo": 1, "typ": "at+jwt"}), payload(env.rs))
    assert (await verify(env, token)).header["foo"] == 1


async def test_unicode_escaped_claim_names(env: Env) -> None:
    body = json.dumps(payload(env.rs, sub=None))[:-1] + ',"s\\u0075b":"admin"}'
    token = env.rs.sign(env.rs.header(), body.encode())
    assert (await verify(env, token)).claims["sub"] == "admin"


async def test_large_realistic_token_accepted(env: Env) -> None:
    token = mint(env.rs, big="x" * 8000)
    assert 8000 < len(token) <= MAX_TOKEN_CHARS
    assert (await verify(env, token)).claims["big"] == "x" * 8000


async def test_whitespace_around_payload_json_is_fine(env: Env) -> None:
    body = b" \n" + json.dumps(payload(env.rs)).encode() + b"\n "
    assert (await verify(env, env.rs.sign(env.rs.header(), body))).claims["sub"] == "alice"


# --------------------------------------------------------------------------- time claims


async def test_expired(env: Env) -> None:
    await assert_invalid(env, mint(env.rs, exp=NOW - 3600, iat=NOW - 7200), E.JWT_EXPIRED)
    await assert_invalid(env, env.rs.mint("a", tamper="expired", now=NOW), E.JWT_EXPIRED)


async def test_expiry_boundary_with_default_skew(env: Env) -> None:
    # skew 60s: rejected once now >= exp + 60
    assert await verify(env, mint(env.rs, exp=NOW - 59))
    await assert_invalid(env, mint(env.rs, exp=NOW - 60), E.JWT_EXPIRED)
    await assert_invalid(env, mint(env.rs, exp=NOW - 61), E.JWT_EXPIRED)


async def test_now_equal_to_exp_without_skew(env: Env) -> None:
    lax = {"iss": "https://lax.test"}
    assert await verify(env, mint(env.rs, exp=NOW + 1, **lax))
    await assert_invalid(env, mint(env.rs, exp=NOW, **lax), E.JWT_EXPIRED)
    await assert_invalid(env, mint(env.rs, exp=NOW - 0.5, **lax), E.JWT_EXPIRED)


async def test_not_yet_valid(env: Env) -> None:
    await assert_invalid(
        env, env.rs.mint("a", tamper="not_yet_valid", now=NOW), E.JWT_NOT_YET_VALID
    )
    # skew 60s: nbf up to now + 60 passes
    assert await verify(env, mint(env.rs, nbf=NOW + 60))
    await assert_invalid(env, mint(env.rs, nbf=NOW + 61), E.JWT_NOT_YET_VALID)


async def test_nbf_boundary_without_skew(env: Env) -> None:
    lax = {"iss": "https://lax.test"}
    assert await verify(env, mint(env.rs, nbf=NOW, **lax))
    await assert_invalid(env, mint(env.rs, nbf=NOW + 1, **lax), E.JWT_NOT_YET_VALID)


async def test_missing_exp_when_required(env: Env) -> None:
    reason = await assert_invalid(env, mint(env.rs, exp=None))
    assert "exp" in reason
    await assert_invalid(env, env.rs.mint("a", tamper="missing_exp", now=NOW), reason)


async def test_missing_exp_allowed_when_not_required(env: Env) -> None:
    result = await verify(env, mint(env.rs, exp=None, iss="https://lax.test"))
    assert "exp" not in result.claims


async def test_max_lifetime(env: Env) -> None:
    short = {"iss": "https://short.test"}  # max_lifetime 1h, skew 30s
    assert await verify(env, mint(env.rs, exp=NOW + 3600 + 30, **short))
    await assert_invalid(env, mint(env.rs, exp=NOW + 3600 + 31, **short), E.JWT_LIFETIME_TOO_LONG)
    await assert_invalid(env, mint(env.rs, exp=NOW + 86400 * 365, **short), E.JWT_LIFETIME_TOO_LONG)
    # no max_lifetime on the rs provider: a year-long token is fine there
    assert await verify(env, mint(env.rs, exp=NOW + 86400 * 365))


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "literal",
    [
        '"9999999999"',
        '"1"',
        "true",
        "false",
        "null",
        "[1]",
        "{}",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1",
        "-1e-9",
        "1e30",
        str(10**30),
        str(10**50),
        "9" * 5000,
        "253402300800",
    ],
)
async def test_bad_numeric_date(env: Env, claim: str, literal: str) -> None:
    token = env.rs.sign(env.rs.header(), raw_payload(env.rs, **{claim: literal}))
    reason = await assert_invalid(env, token)
    assert claim in reason or reason.startswith("Jwt payload is not valid JSON"), reason


async def test_numeric_date_upper_bound_accepted(env: Env) -> None:
    assert await verify(env, mint(env.rs, exp=253402300799, iat=0))


# --------------------------------------------------------------------------- iss, sub, aud


@pytest.mark.parametrize(
    "iss",
    [
        ["https://rs.test"],
        "https://rs.test/",
        "HTTPS://rs.test",
        "https://RS.test",
        "https://rs.tes",
        "https://rs.test.evil",
        " https://rs.test",
        "https://unknown.test",
        "",
        123,
        None,
        {"iss": "https://rs.test"},
    ],
)
async def test_issuer_not_configured(env: Env, iss: Any) -> None:
    body = payload(env.rs) | {"iss": iss}
    await assert_invalid(env, env.rs.sign(env.rs.header(), body), E.JWT_UNKNOWN_ISSUER)


async def test_missing_issuer(env: Env) -> None:
    await assert_invalid(env, mint(env.rs, iss=None), E.JWT_UNKNOWN_ISSUER)


@pytest.mark.parametrize("claim", ["sub", "jti"])
@pytest.mark.parametrize("value", [123, True, ["alice"], {"a": 1}])
async def test_sub_and_jti_must_be_strings(env: Env, claim: str, value: Any) -> None:
    token = env.rs.sign(env.rs.header(), payload(env.rs) | {claim: value})
    await assert_invalid(env, token, f"Jwt {claim} is not a string")


@pytest.mark.parametrize("aud", [1, [1, 2], ["api", 1], {}, {"api": True}, True, None])
async def test_aud_wrong_type(env: Env, aud: Any) -> None:
    token = env.rs.sign(env.rs.header(), payload(env.rs) | {"aud": aud})
    await assert_invalid(env, token, "Jwt aud is not a string or a list of strings")


@pytest.mark.parametrize("aud", ["api", ["api"], ["other", "api"], ["api", "other"]])
async def test_aud_any_of_accepted(env: Env, aud: Any) -> None:
    assert (await verify(env, mint(env.rs, aud=aud))).claims["aud"] == aud


@pytest.mark.parametrize("aud", ["other", "API", "api2", "ap", " api", ["other"], [], ""])
async def test_wrong_audience_is_403(env: Env, aud: Any) -> None:
    rejection = await reject(env, mint(env.rs, aud=aud))
    assert (rejection.status, rejection.reason, rejection.error) == (
        403,
        E.AUDIENCE_NOT_ALLOWED,
        None,
    )
    assert rejection.challenge is False


async def test_wrong_audience_tamper(env: Env) -> None:
    rejection = await reject(env, env.rs.mint("a", tamper="wrong_audience", now=NOW))
    assert (rejection.status, rejection.reason, rejection.error) == (
        403,
        E.AUDIENCE_NOT_ALLOWED,
        None,
    )


async def test_missing_audience_is_403(env: Env) -> None:
    rejection = await reject(env, mint(env.rs, aud=None))
    assert (rejection.status, rejection.reason, rejection.error) == (
        403,
        E.AUDIENCE_NOT_ALLOWED,
        None,
    )


async def test_no_audiences_configured_accepts_any_or_none(env: Env) -> None:
    for aud in ("whatever", None):
        assert await verify(env, mint(env.rs, aud=aud, iss="https://lax.test"))


async def test_audience_checked_only_after_signature(env: Env) -> None:
    token = env.rs.mint("a", {"aud": "other"}, tamper="signature", now=NOW)
    await assert_invalid(env, token, E.JWT_VERIFICATION_FAILS)


# --------------------------------------------------------------------------- algorithms


NONE_SPELLINGS = ["none", "None", "NONE", "nOnE", "none ", " none", "n\u043ene", ""]


@pytest.mark.parametrize("alg", NONE_SPELLINGS)
async def test_alg_none_with_signature(env: Env, alg: str) -> None:
    valid = mint(env.rs)
    header = b64url(json.dumps({"alg": alg, "kid": env.rs.kid}).encode())
    _, body, sig = segments(valid)
    await assert_invalid(env, f"{header}.{body}.{sig}", E.JWT_ALG_NOT_ALLOWED)


@pytest.mark.parametrize("alg", NONE_SPELLINGS)
async def test_alg_none_unsigned(env: Env, alg: str) -> None:
    await assert_invalid(env, build_compact({"alg": alg}, payload(env.rs), None))


async def test_alg_none_tamper(env: Env) -> None:
    await assert_invalid(env, env.rs.mint("a", tamper="alg_none", now=NOW))


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS384"])
async def test_alg_not_in_provider_allowlist(env: Env, alg: str) -> None:
    body = payload(env.rs, iss="https://pem.test")
    await assert_invalid(env, sign_as(env.rs, alg, {"alg": alg}, body), E.JWT_ALG_NOT_ALLOWED)
    # the same key and alg pass where no allowlist narrows the PEM key
    body = payload(env.rs, iss="https://rsapem.test")
    assert await verify(env, sign_as(env.rs, alg, {"alg": alg}, body))


async def test_alg_not_allowed_by_the_jwk(env: Env) -> None:
    # the JWK says alg RS256: a PS256 signature by the very same key is refused
    token = sign_as(env.rs, "PS256", env.rs.header({"alg": "PS256"}), payload(env.rs))
    await assert_invalid(env, token, E.JWT_ALG_NOT_ALLOWED)


@pytest.mark.parametrize("alg", ["ES256", "ES256K", "EdDSA", "HS1024", "RSA-OAEP", "rs256"])
async def test_alg_that_fits_no_key(env: Env, alg: str) -> None:
    valid = mint(env.rs)
    header = b64url(json.dumps({"alg": alg, "kid": env.rs.kid}).encode())
    _, body, sig = segments(valid)
    await assert_invalid(env, f"{header}.{body}.{sig}", E.JWT_ALG_NOT_ALLOWED)


async def test_es256_token_for_rsa_issuer(env: Env) -> None:
    # a real ES256 signature, but the iss names the RSA provider
    token = env.es.sign(env.es.header(), payload(env.es, iss=env.rs.issuer))
    await assert_invalid(env, token, E.JWT_ALG_NOT_ALLOWED)


def _public_key_forms(issuer: TestIssuer) -> list[bytes]:
    public = issuer.key.public_key
    spki = issuer.public_pem()
    pkcs1 = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = json.dumps(issuer.public_jwks()["keys"][0]).encode()
    return [spki, spki.rstrip(b"\n"), pkcs1, der, jwk]


@pytest.mark.parametrize("iss", ["https://rs.test", "https://pem.test", "https://mixed.test",
                                 "https://rsapem.test", "https://lax.test"])  # fmt: skip
async def test_hs256_signed_with_the_rsa_public_key(env: Env, iss: str) -> None:
    assert await verify(env, mint(env.rs, iss=iss, aud=AUD))  # the provider works at all
    for secret in _public_key_forms(env.rs):
        for alg, digest in (("HS256", "sha256"), ("HS384", "sha384"), ("HS512", "sha512")):
            header = {"alg": alg, "typ": "JWT", "kid": env.rs.kid}
            token = build_compact(header, payload(env.rs, iss=iss), hmac_signer(digest, secret))
            await assert_invalid(env, token, E.JWT_ALG_NOT_ALLOWED)


async def test_hs256_public_key_tamper(env: Env) -> None:
    await assert_invalid(env, env.rs.mint("a", tamper="hs256_public_key", now=NOW))


# --------------------------------------------------------------------------- keys and kid


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_embedded_jwk_is_ignored(env: Env, alg: str) -> None:
    issuer = env.issuers[alg]
    token = issuer.mint("a", tamper="embedded_jwk", now=NOW)
    assert "jwk" in json.loads(b64url_decode(segments(token)[0]))
    await assert_invalid(env, token, E.JWT_VERIFICATION_FAILS)


async def test_embedded_jwk_without_kid(env: Env) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    from joserfc.jwk import ECKey

    key = ECKey.import_key(attacker)
    header = {"alg": "ES256", "jwk": key.as_dict(private=False)}
    token = build_compact(header, payload(env.es), signer_for("ES256", key))
    await assert_invalid(env, token, E.JWT_VERIFICATION_FAILS)


async def test_jku_and_x5u_are_ignored(env: Env) -> None:
    attacker = RSAKey.import_key(rsa.generate_private_key(65537, 2048))
    header = env.rs.header({"jku": "http://127.0.0.1:1/jwks.json", "x5u": "http://127.0.0.1:1/c"})
    token = build_compact(header, payload(env.rs), signer_for("RS256", attacker))
    await assert_invalid(env, token, E.JWT_VERIFICATION_FAILS)


async def test_unknown_kid(env: Env) -> None:
    await assert_invalid(env, env.rs.mint("a", tamper="unknown_kid", now=NOW), E.JWT_KID_NOT_FOUND)


async def test_forged_kid_with_another_key(env: Env) -> None:
    other = RSAKey.import_key(rsa.generate_private_key(65537, 2048))
    token = build_compact(env.rs.header(), payload(env.rs), signer_for("RS256", other))
    await assert_invalid(env, token, E.JWT_VERIFICATION_FAILS)


@pytest.mark.parametrize("kid", [1, None, ["rs-1"], {"k": 1}])
async def test_kid_not_a_string(env: Env, kid: Any) -> None:
    header = json.dumps({"alg": "RS256", "kid": kid}).encode()
    reason = await assert_invalid(env, env.rs.sign(header, payload(env.rs)))
    assert "kid" in reason


@pytest.mark.parametrize("kid", ["../../../../dev/null", "' OR 1=1 --", "rs-1\u0000", "k" * 2000])
async def test_kid_injection(env: Env, kid: str) -> None:
    token = env.rs.sign(env.rs.header({"kid": kid}), payload(env.rs))
    await assert_invalid(env, token)


async def test_payload_swap(env: Env) -> None:
    await assert_invalid(
        env, env.rs.mint("a", tamper="payload_swap", now=NOW), E.JWT_VERIFICATION_FAILS
    )


# --------------------------------------------------------------------------- header members


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["exp"], "exp": NOW},
        {"crit": []},
        {"crit": ["kid"]},
        {"crit": "b64"},
        {"crit": ["absent"]},
        {"crit": None},
    ],
)
async def test_crit_is_refused(env: Env, extra: dict[str, Any]) -> None:
    header = json.dumps(env.rs.header() | extra).encode()
    await assert_invalid(
        env, env.rs.sign(header, payload(env.rs)), "Jwt header member 'crit' is not supported"
    )


@pytest.mark.parametrize("extra", [{"b64": False, "crit": ["b64"]}, {"b64": False}, {"b64": True}])
async def test_b64_is_refused(env: Env, extra: dict[str, Any]) -> None:
    header = json.dumps(env.rs.header() | extra).encode()
    token = env.rs.sign(header, payload(env.rs))
    await assert_invalid(env, token, "Jwt header member 'b64' is not supported")


async def test_b64_false_with_raw_payload(env: Env) -> None:
    # RFC 7797 form: the payload segment is not base64url at all
    header = b64url(json.dumps(env.rs.header() | {"b64": False, "crit": ["b64"]}).encode())
    raw = json.dumps(payload(env.rs), separators=(",", ":"))
    signature = signer_for("RS256", env.rs.key)(f"{header}.{raw}".encode())
    await assert_invalid(env, f"{header}.{raw}.{b64url(signature)}")


@pytest.mark.parametrize(
    "header", [b'{"typ":"JWT"}', b'{"alg":256}', b'{"alg":null}', b'{"alg":["RS256"]}']
)
async def test_alg_missing_or_not_a_string(env: Env, header: bytes) -> None:
    await assert_invalid(env, env.rs.sign(header, payload(env.rs)), "Jwt header has no alg")


# --------------------------------------------------------------------------- structure


def misaligned(env: Env) -> str:
    """A valid RS256 token whose three segments all need base64 padding."""
    for pad_h in range(4):
        for pad_p in range(4):
            header = env.rs.header({"x": "h" * pad_h})
            token = env.rs.sign(header, payload(env.rs, x="p" * pad_p))
            if all(len(s) % 4 for s in segments(token)):
                return token
    raise AssertionError("could not build a misaligned token")


@pytest.mark.parametrize(("index", "what"), [(0, "header"), (1, "payload"), (2, "signature")])
async def test_padded_segments(env: Env, index: int, what: str) -> None:
    token = misaligned(env)
    assert await verify(env, token)
    parts = segments(token)
    parts[index] += "=" * (-len(parts[index]) % 4)
    assert parts[index].endswith("=")
    await assert_invalid(env, ".".join(parts), f"Jwt {what} is not valid base64url")


async def test_padded_signing_input_signed(env: Env) -> None:
    # padded segments, validly signed over the padded bytes: still refused
    token = misaligned(env)
    h, p, _ = segments(token)
    h += "=" * (-len(h) % 4)
    p += "=" * (-len(p) % 4)
    signature = signer_for("RS256", env.rs.key)(f"{h}.{p}".encode())
    await assert_invalid(env, f"{h}.{p}.{b64url(signature)}", "Jwt header is not valid base64url")


async def test_standard_alphabet_payload(env: Env) -> None:
    body = json.dumps(payload(env.rs, x="???>>>~~~ÿÿ")).encode()
    std = base64.b64encode(body).rstrip(b"=").decode()
    assert "+" in std or "/" in std
    header = b64url(json.dumps(env.rs.header()).encode())
    signature = signer_for("RS256", env.rs.key)(f"{header}.{std}".encode())
    await assert_invalid(
        env, f"{header}.{std}.{b64url(signature)}", "Jwt payload is not valid base64url"
    )


async def test_standard_alphabet_signature(env: Env) -> None:
    for n in range(20):
        token = mint(env.rs, n=n)
        h, p, s = segments(token)
        if "-" in s or "_" in s:
            break
    std = s.replace("-", "+").replace("_", "/")
    assert std != s
    await assert_invalid(env, f"{h}.{p}.{std}", "Jwt signature is not valid base64url")


async def test_non_canonical_trailing_bits(env: Env) -> None:
    token = misaligned(env)
    h, p, s = segments(token)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(s[-1])
    s2 = s[:-1] + alphabet[last ^ 1]  # flip the lowest, unused bit
    assert b64url_decode(s2) == b64url_decode(s)
    await assert_invalid(env, f"{h}.{p}.{s2}", "Jwt signature is not valid base64url")


def _reference_b64decode(segment: str) -> bytes | None:
    """The definition of strict base64url that `verify._b64decode` implements: the alphabet
    only, no padding, length not 1 mod 4, and re-encoding gives the segment back."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", segment) or len(segment) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    return data if base64.urlsafe_b64encode(data).rstrip(b"=").decode() == segment else None


def _fast_b64decode(segment: str) -> bytes | None:
    try:
        return _b64decode(segment, "segment")
    except Rejection as exc:
        assert exc.reason == "Jwt segment is not valid base64url"
        return None


def test_b64decode_matches_the_definition_exhaustively() -> None:
    # Every string up to 4 characters over canonical and non-canonical last characters, the
    # url-safe and standard specials, padding, separators, whitespace, NUL and non-ASCII.
    chars = "AQgwBbz09-_+/=. \n\x00\x80é\u0660\ud800"
    for length in range(5):
        for combo in itertools.product(chars, repeat=length):
            segment = "".join(combo)
            assert _fast_b64decode(segment) == _reference_b64decode(segment), repr(segment)


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=200), st.text(max_size=3))
@settings(max_examples=500, deadline=None)
def test_b64decode_matches_the_definition(data: bytes, where: int, insert: str) -> None:
    segment = b64url(data)
    assert _fast_b64decode(segment) == (data or None)  # an empty segment is refused
    where = min(where, len(segment))
    for mutated in (segment[:where] + insert + segment[where:], segment[:where] + "=="):
        assert _fast_b64decode(mutated) == _reference_b64decode(mutated), repr(mutated)


@pytest.mark.parametrize("where", ["payload", "header"])
async def test_bom_before_json(env: Env, where: str) -> None:
    header = json.dumps(env.rs.header()).encode()
    body = json.dumps(payload(env.rs)).encode()
    if where == "payload":
        body = b"\xef\xbb\xbf" + body
    else:
        header = b"\xef\xbb\xbf" + header
    reason = await assert_invalid(
        env, env.rs.sign(header, body), prefix=f"Jwt {where} is not valid JSON"
    )
    assert "byte order mark" in reason


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf"])
async def test_invalid_utf8(env: Env, bad: bytes) -> None:
    body = json.dumps(payload(env.rs)).encode()[:-1] + b',"x":"' + bad + b'"}'
    await assert_invalid(
        env, env.rs.sign(env.rs.header(), body), prefix="Jwt payload is not valid JSON"
    )


@pytest.mark.parametrize("body", [b"[1,2]", b'"str"', b"123", b"null", b"true", b"[]"])
async def test_payload_not_an_object(env: Env, body: bytes) -> None:
    await assert_invalid(
        env, env.rs.sign(env.rs.header(), body), "Jwt payload is not a JSON object"
    )


@pytest.mark.parametrize("header", [b'["RS256"]', b'"RS256"', b"null"])
async def test_header_not_an_object(env: Env, header: bytes) -> None:
    await assert_invalid(
        env, env.rs.sign(header, payload(env.rs)), "Jwt header is not a JSON object"
    )


@pytest.mark.parametrize("body", [b"", b"{", b'{"a":1}x', b"{'a':1}", b'{"a":1,}'])
async def test_payload_not_json(env: Env, body: bytes) -> None:
    if not body:
        token = env.rs.sign(env.rs.header(), b"")
        await assert_invalid(env, token, E.JWT_BAD_FORMAT)  # empty segment
        return
    await assert_invalid(
        env, env.rs.sign(env.rs.header(), body), prefix="Jwt payload is not valid JSON"
    )


async def test_duplicate_header_member(env: Env) -> None:
    header = f'{{"alg":"none","alg":"RS256","kid":"{env.rs.kid}"}}'.encode()
    reason = await assert_invalid(
        env, env.rs.sign(header, payload(env.rs)), prefix="Jwt header is not valid JSON"
    )
    assert "duplicate" in reason


@pytest.mark.parametrize(
    "dup", ['"sub":"user","sub":"admin"', '"sub":"user","s\\u0075b":"admin"', '"exp":1,"exp":1']
)
async def test_duplicate_payload_member(env: Env, dup: str) -> None:
    base = payload(env.rs, sub=None, exp=None)
    text = json.dumps(base)[:-1] + f',"exp":{NOW + 60},{dup}' + "}"
    if dup.startswith('"exp"'):
        text = json.dumps(base)[:-1] + f",{dup}" + "}"
    reason = await assert_invalid(
        env, env.rs.sign(env.rs.header(), text.encode()), prefix="Jwt payload is not valid JSON"
    )
    assert "duplicate" in reason


async def test_duplicate_member_nested(env: Env) -> None:
    text = json.dumps(payload(env.rs))[:-1] + ',"realm":{"role":"a","role":"b"}}'
    await assert_invalid(
        env, env.rs.sign(env.rs.header(), text.encode()), prefix="Jwt payload is not valid JSON"
    )


def _shapes(token: str) -> list[str]:
    h, p, s = segments(token)
    return [
        f"{h}.{p}",
        f"{h}.{p}.{s}.{s}",
        f"{h}.{p}.{s}.",
        f".{h}.{p}.{s}",
        f"{h}..{p}.{s}",
        f"{h}..{s}",
        f".{p}.{s}",
        "..",
        "",
        ".",
        h,
        f"{h}.{p}.{s}.{h}.{p}",  # five parts, JWE-like
    ]


async def test_wrong_segment_counts(env: Env) -> None:
    for shape in _shapes(mint(env.rs)):
        await assert_invalid(env, shape, E.JWT_BAD_FORMAT)


@pytest.mark.parametrize("alg", ALGS)
async def test_empty_signature(env: Env, alg: str) -> None:
    h, p, _ = segments(env.issuers[alg].mint("a", now=NOW))
    await assert_invalid(env, f"{h}.{p}.", E.JWT_BAD_FORMAT)


@pytest.mark.parametrize(
    "noise", [" {t}", "{t} ", "{t}\n", "\t{t}", '"{t}"', "{h}. {p}.{s}", "{h}.{p}\n.{s}"]
)
async def test_whitespace_and_quotes(env: Env, noise: str) -> None:
    token = mint(env.rs)
    h, p, s = segments(token)
    await assert_invalid(env, noise.format(t=token, h=h, p=p, s=s))


async def test_json_serialization_refused(env: Env) -> None:
    h, p, s = segments(mint(env.rs))
    document = json.dumps({"protected": h, "payload": p, "signature": s})
    await assert_invalid(env, document)


async def test_polyglot_token_refused(env: Env) -> None:
    # CVE-2022-39227: a JSON document whose member name looks like a compact token
    h, p, s = segments(mint(env.rs))
    forged = b64url(json.dumps(payload(env.rs, sub="admin")).encode())
    document = json.dumps({f"{h}.{forged}.": "", "protected": h, "payload": p, "signature": s})
    await assert_invalid(env, document)


# --------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("alg", ALGS)
async def test_signature_bit_flips(env: Env, alg: str) -> None:
    token = env.issuers[alg].mint("a", now=NOW)
    h, p, s = segments(token)
    signature = b64url_decode(s)
    for byte in range(4):
        for bit in range(8):
            flipped = bytearray(signature)
            flipped[byte] ^= 1 << bit
            await assert_invalid(env, f"{h}.{p}.{b64url(bytes(flipped))}", E.JWT_VERIFICATION_FAILS)
    # and the last byte
    flipped = bytearray(signature)
    flipped[-1] ^= 0x01
    await assert_invalid(env, f"{h}.{p}.{b64url(bytes(flipped))}", E.JWT_VERIFICATION_FAILS)


@pytest.mark.parametrize("alg", ALGS)
async def test_signature_truncated_or_extended(env: Env, alg: str) -> None:
    token = env.issuers[alg].mint("a", now=NOW)
    h, p, s = segments(token)
    signature = b64url_decode(s)
    lengths = sorted(
        {1, 2, len(signature) // 2, *range(max(1, len(signature) - 5), len(signature))}
    )
    for n in lengths:
        await assert_invalid(env, f"{h}.{p}.{b64url(signature[:n])}", E.JWT_VERIFICATION_FAILS)
    for extra in (b"\x00", b"\x01\x02"):
        await assert_invalid(env, f"{h}.{p}.{b64url(signature + extra)}", E.JWT_VERIFICATION_FAILS)
    await assert_invalid(env, f"{h}.{p}.{b64url(b'\x00' + signature)}", E.JWT_VERIFICATION_FAILS)


async def test_signature_of_another_token(env: Env) -> None:
    h, p, _ = segments(mint(env.rs, sub="admin"))
    _, _, s = segments(mint(env.rs, sub="alice"))
    await assert_invalid(env, f"{h}.{p}.{s}", E.JWT_VERIFICATION_FAILS)


async def test_es256_der_signature(env: Env) -> None:
    h, p, _ = segments(mint(env.es))
    der = env.es.private_key.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    await assert_invalid(env, f"{h}.{p}.{b64url(der)}", E.JWT_VERIFICATION_FAILS)
    # the same signature as R||S verifies (so only the encoding was wrong)
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert await verify(env, f"{h}.{p}.{b64url(raw)}")


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA"])
async def test_all_zero_signature(env: Env, alg: str) -> None:
    h, p, s = segments(env.issuers[alg].mint("a", now=NOW))
    zero = bytes(len(b64url_decode(s)))
    await assert_invalid(env, f"{h}.{p}.{b64url(zero)}", E.JWT_VERIFICATION_FAILS)


async def test_huge_signature(env: Env) -> None:
    h, p, _ = segments(mint(env.es))
    reason = await assert_invalid(env, f"{h}.{p}.{b64url(bytes(10_000))}")
    assert reason in (E.JWT_TOO_LARGE, E.JWT_VERIFICATION_FAILS)


# --------------------------------------------------------------------------- size and depth


async def test_token_too_large(env: Env) -> None:
    token = mint(env.rs, big="x" * MAX_TOKEN_CHARS)
    assert len(token) > MAX_TOKEN_CHARS
    await assert_invalid(env, token, E.JWT_TOO_LARGE)


async def test_header_too_large(env: Env) -> None:
    token = env.rs.sign(env.rs.header({"x": "h" * 5000}), payload(env.rs))
    assert len(token) <= MAX_TOKEN_CHARS
    await assert_invalid(env, token, E.JWT_TOO_LARGE)


async def test_a_million_dots(env: Env) -> None:
    await assert_invalid(env, "." * 1_000_000)
    await assert_invalid(env, "a." * 5000 + "a")


def nested_token(env: Env, depth: int, kind: str = "list") -> str:
    base = json.dumps(payload(env.es), separators=(",", ":"))[:-1].encode()
    if kind == "list":
        inner = b"[" * depth + b"]" * depth
    else:
        inner = b'{"a":' * depth + b"1" + b"}" * depth
    return env.es.sign(env.es.header(), base + b',"deep":' + inner + b"}")


async def test_moderately_nested_claims_accepted(env: Env) -> None:
    for depth in (10, 98):
        node = (await verify(env, nested_token(env, depth, "object"))).claims["deep"]
        for _ in range(depth):
            node = node["a"]
        assert node == 1


@pytest.mark.parametrize("kind", ["list", "object"])
@pytest.mark.parametrize("depth", [200, 999, 1200, 1600, 3000, 5000])
async def test_deeply_nested_payload_is_401(env: Env, depth: int, kind: str) -> None:
    token = nested_token(env, depth, kind)
    await assert_invalid(env, token)


# --------------------------------------------------------------------------- parse_token


def test_parse_token_returns_the_verified_bytes(env: Env) -> None:
    token = mint(env.rs)
    h, p, s = segments(token)
    parsed = parse_token(token)
    assert isinstance(parsed, ParsedToken)
    assert parsed.signing_input == f"{h}.{p}".encode()
    assert parsed.signature == b64url_decode(s)
    assert (parsed.alg, parsed.kid) == ("RS256", env.rs.kid)
    assert parsed.claims == payload(env.rs)
    assert parsed.header == env.rs.header()


def test_parse_token_does_not_check_signature_or_issuer(env: Env) -> None:
    h, p, _ = segments(mint(env.rs, iss="https://nobody.test"))
    parsed = parse_token(f"{h}.{p}.AAAA")
    assert parsed.claims["iss"] == "https://nobody.test"
    assert parsed.signature == b"\x00\x00\x00"


@pytest.mark.parametrize("token", ["", "a", "a.b", "a.b.c.d", "a..c", "!.b.c", "a.b.c="])
def test_parse_token_rejects_shapes(token: str) -> None:
    with pytest.raises(Rejection) as info:
        parse_token(token)
    assert (info.value.status, info.value.error) == (401, "invalid_token")


async def test_depth_limit_boundary(env: Env) -> None:
    # the payload object is level 1, so MAX_DEPTH - 1 nested lists reach exactly MAX_DEPTH
    assert await verify(env, nested_token(env, MAX_DEPTH - 1, "list"))
    reason = await assert_invalid(
        env, nested_token(env, MAX_DEPTH, "list"), prefix="Jwt payload is not valid JSON"
    )
    assert "nested" in reason


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('{"a": "' + "[{" * 300 + '"}', True),  # brackets inside a string are not nesting
        ("[" + ",".join(["[{}]"] * 300) + "]", True),  # many containers, depth 3
        ("[" * MAX_DEPTH + "]" * MAX_DEPTH, True),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), False),
        ('{"a": "' + "[" * 300 + '", "b": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}", False),
    ],
)
def test_depth_limit_counts_nesting_not_brackets(text: str, ok: bool) -> None:
    if ok:
        loads_strict(text)
    else:
        with pytest.raises(StrictJSONError, match=f"nested deeper than {MAX_DEPTH} levels"):
            loads_strict(text)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
async def test_non_finite_numbers_anywhere_in_the_payload(env: Env, literal: str) -> None:
    token = env.rs.sign(env.rs.header(), raw_payload(env.rs, score=literal))
    await assert_invalid(env, token, prefix="Jwt payload is not valid JSON")


# --------------------------------------------------------------------------- key sources


class CountingSource:
    """A remote-like key source: nothing loaded until asked, and every ask is recorded."""

    def __init__(self, key_set: Any, loaded: bool = False) -> None:
        self.key_set = key_set
        self.loaded = loaded
        self.asked: list[str | None] = []

    def current(self) -> Any:
        return self.key_set if self.loaded else None

    async def keys_for_kid(self, kid: str | None) -> Any:
        self.asked.append(kid)
        return self.key_set

    def state(self) -> dict[str, Any]:
        return {}


def counting_sources(env: Env, **kwargs: Any) -> tuple[dict[str, Any], CountingSource]:
    source = CountingSource(env.sources["rs"].current(), **kwargs)
    return env.sources | {"rs": source}, source


async def test_keys_fetched_when_none_loaded(env: Env) -> None:
    sources, source = counting_sources(env)
    result = await verify_token(mint(env.rs), env.policy, sources, NOW)
    assert result.provider.name == "rs"
    assert source.asked == [env.rs.kid]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(
            lambda env: env.rs.mint("a", tamper="alg_none", now=NOW), id="alg-none-unsigned"
        ),
        pytest.param(
            lambda env: build_compact({"alg": "none"}, payload(env.rs), lambda _: b"sig"),
            id="alg-none-signed",
        ),
        pytest.param(lambda env: mint(env.rs, exp=NOW - 3600), id="expired"),
        pytest.param(lambda env: mint(env.rs, exp=None), id="no-exp"),
        pytest.param(lambda env: mint(env.rs, sub=5), id="sub-not-string"),
        pytest.param(lambda env: mint(env.rs, iss="https://evil.test"), id="unknown-issuer"),
        pytest.param(
            lambda env: env.rs.sign(env.rs.header({"crit": []}), payload(env.rs)), id="crit"
        ),
        pytest.param(  # joserfc knows ES256K; this verifier does not
            lambda env: build_compact(
                {"alg": "ES256K", "kid": "x"}, payload(env.rs), lambda _: b"sig"
            ),
            id="alg-es256k",
        ),
    ],
)
async def test_junk_tokens_trigger_no_key_fetch(env: Env, token: Any) -> None:
    sources, source = counting_sources(env)
    with pytest.raises(Rejection) as info:
        await verify_token(token(env), env.policy, sources, NOW)
    assert info.value.status == 401
    assert source.asked == []


async def test_fetch_failure_is_401(env: Env) -> None:
    sources, source = counting_sources(env)
    source.key_set = None
    with pytest.raises(Rejection) as info:
        await verify_token(mint(env.rs), env.policy, sources, NOW)
    assert (info.value.status, info.value.error, info.value.reason) == (
        401,
        "invalid_token",
        E.JWKS_FETCH_FAILED,
    )


async def test_unknown_kid_asks_the_source_again(env: Env) -> None:
    sources, source = counting_sources(env, loaded=True)
    assert await verify_token(mint(env.rs), env.policy, sources, NOW)
    assert source.asked == []  # a known kid needs no refetch
    token = env.rs.mint("a", tamper="unknown_kid", now=NOW)
    with pytest.raises(Rejection) as info:
        await verify_token(token, env.policy, sources, NOW)
    assert info.value.reason == E.JWT_KID_NOT_FOUND
    assert source.asked == [split_kid(token)]


def split_kid(token: str) -> str:
    return json.loads(b64url_decode(segments(token)[0]))["kid"]


# -- the parsed-header memo ---------------------------------------------------------------------


def test_a_repeated_header_segment_is_parsed_once(env: Env, monkeypatch) -> None:
    from claimroute.pipeline import verify

    calls: list[str] = []
    real = verify._parse_header

    def counting(segment: str) -> Any:
        calls.append(segment)
        return real(segment)

    monkeypatch.setattr(verify, "_HEADERS", {})
    monkeypatch.setattr(verify, "_parse_header", counting)
    first = parse_token(env.rs.mint("ann", now=NOW))
    second = parse_token(env.rs.mint("bob", now=NOW))
    assert len(calls) == 1
    assert (first.alg, first.kid) == (second.alg, second.kid) and first.header == second.header
    assert (first.claims["sub"], second.claims["sub"]) == ("ann", "bob")


def test_a_refused_header_is_never_remembered(monkeypatch) -> None:
    from claimroute.pipeline import verify

    monkeypatch.setattr(verify, "_HEADERS", {})
    bad = b64url(b'{"alg":"RS256","crit":["exp"]}')
    token = f"{bad}.{b64url(b'{}')}.{b64url(b'sig')}"
    for _ in range(2):  # refused every time, with the same reason
        with pytest.raises(Rejection, match="crit"):
            parse_token(token)
    assert verify._HEADERS == {}


def test_the_header_memo_is_bounded(monkeypatch) -> None:
    from claimroute.pipeline import verify

    monkeypatch.setattr(verify, "_HEADERS", {})
    for index in range(3 * verify._HEADERS_MAX):
        header = b64url(json.dumps({"alg": "RS256", "kid": f"k{index}"}).encode())
        parsed = parse_token(f"{header}.{b64url(b'{}')}.{b64url(b'sig')}")
        assert parsed.kid == f"k{index}"
        assert len(verify._HEADERS) <= verify._HEADERS_MAX
