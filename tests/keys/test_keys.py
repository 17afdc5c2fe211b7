"""Verification keys: what each key type may verify, and what is refused at import."""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey, OKPKey, RSAKey

from claimroute import errors as E
from claimroute.errors import PolicyError, Rejection
from claimroute.keys.keyset import (
    MAX_UNPINNED_KEYS,
    RSA_ALGORITHMS,
    KeyMaterialError,
    KeySet,
    VerificationKey,
    key_set_from_jwks,
    key_set_from_pem,
    key_set_from_text,
    public_jwks_json,
)
from claimroute.keys.source import StaticKeySource
from claimroute.pipeline.verify import verify_token
from claimroute.policy.load import load_policy_text
from claimroute_tools.lab import TestIssuer, b64url

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")

SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
PEM = serialization.Encoding.PEM
RSA_SET = frozenset(RSA_ALGORITHMS)


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def rsa_jwk(rsa_private: rsa.RSAPrivateKey) -> dict[str, Any]:
    return RSAKey.import_key(rsa_private.public_key()).as_dict(private=False)


def ec_public(curve: ec.EllipticCurve) -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(curve).public_key()


def pem_of(public: Any, fmt: serialization.PublicFormat = SPKI) -> bytes:
    return public.public_bytes(PEM, fmt)


def only(key_set: KeySet) -> VerificationKey:
    assert len(key_set.keys) == 1
    return key_set.keys[0]


# --------------------------------------------------------------------------- PEM


@pytest.mark.parametrize(
    ("fmt", "marker"),
    [(SPKI, b"BEGIN PUBLIC KEY"), (serialization.PublicFormat.PKCS1, b"BEGIN RSA PUBLIC KEY")],
)
def test_rsa_pem(rsa_private: rsa.RSAPrivateKey, fmt: Any, marker: bytes) -> None:
    pem = pem_of(rsa_private.public_key(), fmt)
    assert marker in pem
    key = only(key_set_from_text(pem, "rsa.pem"))
    assert key.key_type == "RSA"
    assert key.kid is None
    assert key.algorithms == RSA_SET
    assert key.key.public_key.public_numbers() == rsa_private.public_key().public_numbers()


@pytest.mark.parametrize(
    ("curve", "alg"),
    [(ec.SECP256R1(), "ES256"), (ec.SECP384R1(), "ES384"), (ec.SECP521R1(), "ES512")],
)
def test_ec_pem(curve: ec.EllipticCurve, alg: str) -> None:
    key = only(key_set_from_text(pem_of(ec_public(curve)), "ec.pem"))
    assert key.key_type == "EC"
    assert key.algorithms == {alg}


@pytest.mark.parametrize(
    ("curve", "crv", "alg"),
    [
        (ec.SECP256R1(), "P-256", "ES256"),
        (ec.SECP384R1(), "P-384", "ES384"),
        (ec.SECP521R1(), "P-521", "ES512"),
    ],
)
def test_ec_jwk(curve: ec.EllipticCurve, crv: str, alg: str) -> None:
    jwk = ECKey.import_key(ec_public(curve)).as_dict(private=False) | {"kid": "e"}
    assert jwk["crv"] == crv
    key = only(key_set_from_text(json.dumps(jwk), "ec.json"))
    assert (key.kid, key.algorithms) == ("e", {alg})


def test_ec_curve_mismatch_with_alg() -> None:
    jwk = ECKey.import_key(ec_public(ec.SECP384R1())).as_dict(private=False) | {"alg": "ES256"}
    with pytest.raises(KeyMaterialError, match="does not fit"):
        key_set_from_text(json.dumps(jwk), "ec.json")


def test_ed25519_pem() -> None:
    key = only(key_set_from_text(pem_of(ed25519.Ed25519PrivateKey.generate().public_key()), "x"))
    assert key.key_type == "OKP"
    assert key.algorithms == {"EdDSA", "Ed25519"}


def test_ed25519_jwk() -> None:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    jwk = OKPKey.import_key(public).as_dict(private=False)
    assert jwk["crv"] == "Ed25519"
    assert only(key_set_from_text(json.dumps(jwk), "x")).algorithms == {"EdDSA", "Ed25519"}
    narrowed = only(key_set_from_text(json.dumps(jwk | {"alg": "EdDSA"}), "x"))
    assert narrowed.algorithms == {"EdDSA"}


def test_ed448_pem() -> None:
    key = only(key_set_from_text(pem_of(ed448.Ed448PrivateKey.generate().public_key()), "x"))
    assert key.algorithms == {"EdDSA", "Ed448"}


def test_x25519_cannot_sign() -> None:
    jwk = OKPKey.import_key(x25519.X25519PrivateKey.generate().public_key()).as_dict(private=False)
    with pytest.raises(KeyMaterialError, match="cannot sign"):
        key_set_from_text(json.dumps(jwk), "x")


def test_secp256k1_not_supported() -> None:
    with pytest.raises(KeyMaterialError, match="not supported"):
        key_set_from_text(pem_of(ec_public(ec.SECP256K1())), "k1.pem")


def test_pem_with_leading_whitespace(rsa_private: rsa.RSAPrivateKey) -> None:
    pem = b"\n  " + pem_of(rsa_private.public_key())
    assert only(key_set_from_text(pem, "x")).algorithms == RSA_SET


def test_pem_allowlist_narrows(rsa_private: rsa.RSAPrivateKey) -> None:
    pem = pem_of(rsa_private.public_key())
    key = only(key_set_from_pem(pem, "x", allowed_algorithms={"PS256", "ES256", "HS256"}))
    assert key.algorithms == {"PS256"}


def test_pem_never_becomes_hmac(rsa_private: rsa.RSAPrivateKey) -> None:
    pem = pem_of(rsa_private.public_key())
    with pytest.raises(KeyMaterialError, match="no usable"):
        key_set_from_pem(pem, "x", allowed_algorithms={"HS256"})


@pytest.mark.parametrize(
    "fmt",
    [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL],
)
def test_private_pem_refused(rsa_private: rsa.RSAPrivateKey, fmt: Any) -> None:
    pem = rsa_private.private_bytes(PEM, fmt, serialization.NoEncryption())
    with pytest.raises(KeyMaterialError, match="private key"):
        key_set_from_text(pem, "x")


def test_weak_rsa_pem() -> None:
    pem = pem_of(rsa.generate_private_key(65537, 1024).public_key())
    with pytest.raises(KeyMaterialError, match="1024 bits"):
        key_set_from_text(pem, "x")


def test_garbage_pem() -> None:
    with pytest.raises(KeyMaterialError, match="not a readable PEM"):
        key_set_from_text(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n", "x")


# --------------------------------------------------------------------------- JWK / JWKS


def test_single_jwk_and_jwks(rsa_jwk: dict[str, Any]) -> None:
    single = only(key_set_from_text(json.dumps(rsa_jwk | {"kid": "a"}), "x"))
    assert (single.kid, single.algorithms) == ("a", RSA_SET)
    in_set = only(key_set_from_text(json.dumps({"keys": [rsa_jwk | {"kid": "a"}]}), "x"))
    assert (in_set.kid, in_set.algorithms) == ("a", RSA_SET)


def test_use_enc_is_skipped(rsa_jwk: dict[str, Any]) -> None:
    doc = {"keys": [rsa_jwk | {"kid": "enc", "use": "enc"}, rsa_jwk | {"kid": "sig", "use": "sig"}]}
    assert key_set_from_text(json.dumps(doc), "x").kids == ["sig"]


def test_only_use_enc_means_no_usable_key(rsa_jwk: dict[str, Any]) -> None:
    with pytest.raises(KeyMaterialError, match="no usable"):
        key_set_from_text(json.dumps({"keys": [rsa_jwk | {"use": "enc"}]}), "x")


def test_key_ops(rsa_jwk: dict[str, Any]) -> None:
    doc = {
        "keys": [
            rsa_jwk | {"kid": "encrypt", "key_ops": ["encrypt"]},
            rsa_jwk | {"kid": "verify", "key_ops": ["verify"]},
        ]
    }
    assert key_set_from_text(json.dumps(doc), "x").kids == ["verify"]


@pytest.mark.parametrize("alg", ["RS256", "PS384", "RS512"])
def test_jwk_alg_narrows(rsa_jwk: dict[str, Any], alg: str) -> None:
    key = only(key_set_from_text(json.dumps(rsa_jwk | {"alg": alg}), "x"))
    assert key.algorithms == {alg}


@pytest.mark.parametrize("alg", ["ES256", "HS256", "none", "EdDSA", "rs256"])
def test_jwk_alg_that_does_not_fit(rsa_jwk: dict[str, Any], alg: Any) -> None:
    with pytest.raises(KeyMaterialError, match="does not fit"):
        key_set_from_text(json.dumps(rsa_jwk | {"alg": alg}), "x")


def test_jwk_alg_not_a_string(rsa_jwk: dict[str, Any]) -> None:
    with pytest.raises(KeyMaterialError, match="'alg'"):
        key_set_from_text(json.dumps(rsa_jwk | {"alg": 5}), "x")


def test_allowlist_narrows(rsa_jwk: dict[str, Any]) -> None:
    key = only(
        key_set_from_jwks(
            {"keys": [rsa_jwk]}, "x", allow_oct=True, allowed_algorithms={"RS256", "ES256"}
        )
    )
    assert key.algorithms == {"RS256"}


def test_allowlist_and_jwk_alg_both_narrow(rsa_jwk: dict[str, Any]) -> None:
    doc = {"keys": [rsa_jwk | {"kid": "a", "alg": "PS256"}, rsa_jwk | {"kid": "b", "alg": "RS256"}]}
    key_set = key_set_from_jwks(doc, "x", allow_oct=True, allowed_algorithms={"RS256"})
    assert key_set.kids == ["b"]
    assert key_set.algorithms == {"RS256"}


def test_allowlist_drops_every_key(rsa_jwk: dict[str, Any]) -> None:
    with pytest.raises(KeyMaterialError, match="no usable"):
        key_set_from_jwks({"keys": [rsa_jwk]}, "x", allow_oct=True, allowed_algorithms={"ES256"})


def test_weak_rsa_jwk() -> None:
    weak = RSAKey.import_key(rsa.generate_private_key(65537, 1024).public_key()).as_dict()
    with pytest.raises(KeyMaterialError, match="1024 bits"):
        key_set_from_text(json.dumps({"keys": [weak]}), "x")


def test_remote_set_skips_weak_key_but_keeps_good(rsa_jwk: dict[str, Any]) -> None:
    weak = RSAKey.import_key(rsa.generate_private_key(65537, 1024).public_key()).as_dict()
    doc = {"keys": [weak | {"kid": "weak"}, rsa_jwk | {"kid": "good"}]}
    assert key_set_from_jwks(doc, "remote", allow_oct=False, strict=False).kids == ["good"]
    with pytest.raises(KeyMaterialError, match="1024 bits"):
        key_set_from_jwks(doc, "local", allow_oct=True, strict=True)


def test_remote_set_refuses_oct() -> None:
    doc = {"keys": [{"kty": "oct", "k": b64url(b"s" * 32), "kid": "h"}]}
    with pytest.raises(KeyMaterialError, match="remote"):
        key_set_from_jwks(doc, "remote", allow_oct=False, strict=False)


@pytest.mark.parametrize(
    ("kty", "member"),
    [("RSA", "d"), ("RSA", "p"), ("RSA", "qi"), ("EC", "d"), ("OKP", "d")],
)
def test_private_jwk_members_refused(rsa_private: Any, kty: str, member: str) -> None:
    private_jwk = {
        "RSA": lambda: RSAKey.import_key(rsa_private).as_dict(private=True),
        "EC": lambda: ECKey.generate_key("P-256").as_dict(private=True),
        "OKP": lambda: OKPKey.generate_key("Ed25519").as_dict(private=True),
    }[kty]()
    public_only = {k: v for k, v in private_jwk.items() if k in ("kty", "n", "e", "crv", "x", "y")}
    jwk = public_only | {member: private_jwk[member]}
    with pytest.raises(KeyMaterialError, match="private key material"):
        key_set_from_text(json.dumps(jwk), "x")
    # the same key without the private member is fine
    assert key_set_from_text(json.dumps(public_only), "x").keys


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (32, {"HS256"}),
        (47, {"HS256"}),
        (48, {"HS256", "HS384"}),
        (64, {"HS256", "HS384", "HS512"}),
    ],
)
def test_hmac_sizes(size: int, expected: set[str]) -> None:
    jwk = {"kty": "oct", "k": b64url(b"k" * size)}
    key = only(key_set_from_text(json.dumps(jwk), "x"))
    assert key.key_type == "oct"
    assert key.algorithms == expected


@pytest.mark.parametrize("size", [1, 16, 31])
def test_hmac_too_short(size: int) -> None:
    with pytest.raises(KeyMaterialError, match=f"HMAC key is {size} bytes"):
        key_set_from_text(json.dumps({"kty": "oct", "k": b64url(b"k" * size)}), "x")


def test_hmac_alg_larger_than_key() -> None:
    jwk = {"kty": "oct", "k": b64url(b"k" * 32), "alg": "HS512"}
    with pytest.raises(KeyMaterialError, match="does not fit"):
        key_set_from_text(json.dumps(jwk), "x")


def test_oct_mixed_with_public_keys(rsa_jwk: dict[str, Any]) -> None:
    doc = {"keys": [{"kty": "oct", "k": b64url(b"k" * 32), "kid": "h"}, rsa_jwk | {"kid": "r"}]}
    with pytest.raises(KeyMaterialError, match="mixes HMAC"):
        key_set_from_text(json.dumps(doc), "x")


def test_duplicate_kid(rsa_jwk: dict[str, Any]) -> None:
    other = ECKey.generate_key("P-256").as_dict(private=False)
    doc = {"keys": [rsa_jwk | {"kid": "k"}, other | {"kid": "k"}]}
    with pytest.raises(KeyMaterialError, match="share this kid"):
        key_set_from_text(json.dumps(doc), "x")


def test_kid_must_be_string(rsa_jwk: dict[str, Any]) -> None:
    with pytest.raises(KeyMaterialError, match="'kid' must be a string"):
        key_set_from_text(json.dumps({"keys": [rsa_jwk | {"kid": 7}]}), "x")


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ('{"keys": {}}', "must be a list"),
        ('{"foo": 1}', "neither a JWKS"),
        ("[1, 2]", "must be an object"),
        ('{"keys": [1]}', "JSON object"),
        ('{"keys": [{"kty": "XYZ"}]}', "not supported"),
        ('{"keys": [{"n": "x"}]}', "kty"),
        ('{"keys": [{"kty": "RSA", "n": "@@", "e": "AQAB"}]}', "cannot import"),
        ('{"keys": [], "keys": []}', "duplicate member"),
        ("\ufeff{}", "byte order mark"),
        ("not json", "neither PEM nor valid JSON"),
    ],
)
def test_broken_documents(document: str, words: str) -> None:
    with pytest.raises(KeyMaterialError, match=words):
        key_set_from_text(document, "x")


# --------------------------------------------------------------------------- KeySet


@pytest.fixture(scope="module")
def pinned_set() -> KeySet:
    def vkey(kid: str | None, algs: set[str]) -> VerificationKey:
        key = ECKey.generate_key("P-256")
        return VerificationKey(key, kid, frozenset(algs), f"key {kid}")

    return KeySet(
        (
            vkey("a", {"ES256"}),
            vkey("b", {"ES256"}),
            vkey(None, {"ES256"}),
            vkey(None, {"ES384"}),
        )
    )


def test_candidates_kid_pins(pinned_set: KeySet) -> None:
    assert [k.kid for k in pinned_set.candidates("a", "ES256")] == ["a"]
    assert [k.kid for k in pinned_set.candidates("b", "ES256")] == ["b"]


def test_candidates_kid_and_alg(pinned_set: KeySet) -> None:
    # key "a" is pinned but cannot do ES384; kid-less keys are not tried instead
    assert pinned_set.candidates("a", "ES384") == []


def test_candidates_unknown_kid_falls_back_to_kidless(pinned_set: KeySet) -> None:
    found = pinned_set.candidates("zzz", "ES256")
    assert [k.description for k in found] == ["key None"]
    assert found[0].kid is None
    assert [k.algorithms for k in pinned_set.candidates("zzz", "ES384")] == [{"ES384"}]


def test_candidates_without_kid(pinned_set: KeySet) -> None:
    assert [k.kid for k in pinned_set.candidates(None, "ES256")] == ["a", "b", None]
    assert pinned_set.candidates(None, "RS256") == []


def test_unknown_kid_without_kidless_keys(rsa_jwk: dict[str, Any]) -> None:
    key_set = key_set_from_text(json.dumps({"keys": [rsa_jwk | {"kid": "a"}]}), "x")
    assert key_set.candidates("b", "RS256") == []
    assert len(key_set.candidates("a", "RS256")) == 1
    assert key_set.has_kid("a") and not key_set.has_kid("b")


def test_keyset_properties(pinned_set: KeySet) -> None:
    assert pinned_set.kids == ["a", "b", "-", "-"]
    assert pinned_set.algorithms == {"ES256", "ES384"}


def test_public_jwks_json_hides_secrets(rsa_private: rsa.RSAPrivateKey) -> None:
    secret = b64url(b"k" * 32)
    hmac_set = key_set_from_text(json.dumps({"kty": "oct", "k": secret, "kid": "h"}), "x")
    text = public_jwks_json(hmac_set)
    assert secret not in text
    assert json.loads(text)["keys"][0]["kid"] == "h"
    rsa_set = key_set_from_text(pem_of(rsa_private.public_key()), "x")
    published = json.loads(public_jwks_json(rsa_set))["keys"][0]
    assert published["kty"] == "RSA"
    assert not {"d", "p", "q"} & set(published)


def test_pem_is_never_an_hmac_secret() -> None:
    pem = pem_of(ec_public(ec.SECP256R1()))
    key = only(key_set_from_text(pem, "x"))
    assert key.key_type == "EC"
    assert not any(alg.startswith("HS") for alg in key.algorithms)


def test_remote_set_skips_a_bad_key_even_when_the_origin_mentions_oct(
    rsa_jwk: dict[str, Any],
) -> None:
    # The oct refusal is a type, not a substring of the message (which contains the URL).
    document = {"keys": [{"kty": "XYZ", "kid": "odd"}, rsa_jwk]}
    key_set = key_set_from_jwks(
        document, "https://doctor.example/octet/jwks", allow_oct=False, strict=False
    )
    assert len(key_set.keys) == 1


# --------------------------------------------------------------------------- bounded key work


def ec_jwk(kid: str | None, crv: str = "P-256") -> dict[str, Any]:
    jwk = ECKey.generate_key(crv).as_dict(private=False)
    return jwk if kid is None else jwk | {"kid": kid}


def ec_set(count: int, *, kids: bool, crv: str = "P-256", prefix: str = "k") -> KeySet:
    entries = [ec_jwk(f"{prefix}{i}" if kids else None, crv) for i in range(count)]
    return key_set_from_jwks({"keys": entries}, "x", allow_oct=False, strict=False)


def test_a_token_without_kid_tries_at_most_the_bound() -> None:
    assert MAX_UNPINNED_KEYS == 4  # documented in docs/policy.md and docs/security.md
    at_bound = ec_set(MAX_UNPINNED_KEYS, kids=True)
    assert len(at_bound.candidates(None, "ES256")) == MAX_UNPINNED_KEYS
    over = ec_set(MAX_UNPINNED_KEYS + 1, kids=True)
    assert over.candidates(None, "ES256") == []
    # A kid still pins exactly one key, however large the set.
    assert [k.kid for k in over.candidates("k3", "ES256")] == ["k3"]


def test_an_unknown_kid_falls_back_to_at_most_the_bound_of_kidless_keys() -> None:
    few = ec_set(MAX_UNPINNED_KEYS, kids=False)
    assert len(few.candidates("nobody", "ES256")) == MAX_UNPINNED_KEYS
    many = ec_set(MAX_UNPINNED_KEYS + 1, kids=False)
    assert many.candidates("nobody", "ES256") == []
    assert many.candidates(None, "ES256") == []


def test_the_bound_counts_only_keys_that_can_verify_the_alg() -> None:
    # Many ES384 keys do not crowd out the two ES256 keys of a kid-less ES256 token.
    entries = [ec_jwk(f"p384-{i}", "P-384") for i in range(20)]
    entries += [ec_jwk("a"), ec_jwk("b")]
    key_set = key_set_from_jwks({"keys": entries}, "x", allow_oct=False, strict=False)
    assert [k.kid for k in key_set.candidates(None, "ES256")] == ["a", "b"]
    assert key_set.candidates(None, "ES384") == []
    assert key_set.candidates(None, "RS256") == []


def _policy_for(issuer: str, tmp_path: Path) -> Any:
    return load_policy_text(
        f"version: 1\nproviders:\n  corp:\n    issuer: {issuer}\n"
        f"    jwks: {{inline: '{json.dumps(ec_jwk('placeholder'))}'}}\n",
        "policy.yaml",
        tmp_path,
    )


async def test_a_kidless_forgery_against_a_big_set_is_refused_without_signature_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corp = TestIssuer("corp", "ES256")
    policy = _policy_for(corp.issuer, tmp_path)
    big = ec_set(500, kids=True)
    sources: dict[str, Any] = {"corp": StaticKeySource(big, "test")}
    checked: list[Any] = []
    from claimroute.pipeline import verify

    real = verify._signature_verifies
    monkeypatch.setattr(
        verify, "_signature_verifies", lambda p, c: checked.append(len(c)) or real(p, c)
    )
    forged = corp.mint("mallory", header={"kid": None})
    started = time.perf_counter()
    with pytest.raises(Rejection) as caught:
        await verify_token(forged, policy, sources, time.time())
    elapsed = time.perf_counter() - started
    assert (caught.value.status, caught.value.reason) == (401, E.JWT_KID_NOT_FOUND)
    assert checked == []  # refused before any signature check
    assert elapsed < 0.05  # trying 500 keys took ~40 ms here, the 2,834 of the report ~200 ms


async def test_a_kidless_token_verifies_against_a_small_set(tmp_path: Path) -> None:
    corp = TestIssuer("corp", "ES256")
    policy = _policy_for(corp.issuer, tmp_path)
    others = [ec_jwk(None) for _ in range(MAX_UNPINNED_KEYS - 1)]
    entries = [*others, corp.public_jwks()["keys"][0] | {"kid": None}]
    entries = [{k: v for k, v in e.items() if v is not None} for e in entries]
    key_set = key_set_from_jwks({"keys": entries}, "x", allow_oct=False, strict=False)
    sources: dict[str, Any] = {"corp": StaticKeySource(key_set, "test")}
    token = corp.mint("alice", header={"kid": None})
    verified = await verify_token(token, policy, sources, time.time())
    assert verified.claims["sub"] == "alice"


def test_max_keys_refuses_a_set_before_importing_anything() -> None:
    # The entries are junk: the count alone refuses the set, no key is looked at.
    with pytest.raises(KeyMaterialError, match="lists 101 keys; at most 100 are accepted"):
        key_set_from_jwks({"keys": [{}] * 101}, "x", allow_oct=False, strict=False, max_keys=100)
    at_cap = [ec_jwk(f"k{i}") for i in range(3)]
    key_set = key_set_from_jwks({"keys": at_cap}, "x", allow_oct=False, strict=False, max_keys=3)
    assert len(key_set.keys) == 3


# --------------------------------------------------------------------------- unusable keys

UNKNOWN_CURVE_JWKS = [
    pytest.param({"kty": "EC", "crv": "BP-256"}, "EC curve 'BP-256' is not supported", id="BP-256"),
    pytest.param({"kty": "EC", "crv": "P-192"}, "EC curve 'P-192' is not supported", id="P-192"),
    pytest.param(
        {"kty": "EC", "crv": "brainpoolP256r1"},
        "EC curve 'brainpoolP256r1' is not supported",
        id="brainpool",
    ),
    pytest.param(
        {"kty": "EC", "crv": "secp256k1"}, "EC curve 'secp256k1' is not supported", id="k1"
    ),
    pytest.param(
        {"kty": "OKP", "crv": "Ed9999"}, "OKP curve 'Ed9999' is not supported", id="Ed9999"
    ),
    pytest.param({"kty": "OKP", "crv": "X448"}, "OKP curve X448 cannot sign", id="X448"),
    pytest.param({"kty": "EC"}, "EC key has no string 'crv'", id="no-crv"),
    pytest.param({"kty": "EC", "crv": ["P-256"]}, "EC key has no string 'crv'", id="crv-list"),
]


def odd_jwk(template: dict[str, Any], kid: str) -> dict[str, Any]:
    """A JWK with the template's kty/crv and coordinates borrowed from a real key."""
    if template.get("crv") == "X448":
        from cryptography.hazmat.primitives.asymmetric import x448

        return OKPKey.import_key(x448.X448PrivateKey.generate().public_key()).as_dict(
            private=False
        ) | {"kid": kid}
    borrowed = ec_jwk(None)
    names = ("x",) if template["kty"] == "OKP" else ("x", "y")
    coordinates = {name: borrowed[name] for name in names}
    return coordinates | template | {"kid": kid}


@pytest.mark.parametrize(("template", "reason"), UNKNOWN_CURVE_JWKS)
def test_remote_set_skips_a_key_on_an_unknown_curve_and_keeps_the_good_one(
    template: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = ec_jwk("good")
    document = {"keys": [odd_jwk(template, "odd"), good]}
    with caplog.at_level(logging.WARNING, logger="claimroute.keys"):
        key_set = key_set_from_jwks(document, "https://idp/jwks", allow_oct=False, strict=False)
    assert key_set.kids == ["good"]
    [message] = [r.getMessage() for r in caplog.records]
    assert f"https://idp/jwks key 'odd': {reason}" in message
    assert message.endswith("the key is skipped")


@pytest.mark.parametrize(("template", "reason"), UNKNOWN_CURVE_JWKS)
def test_local_key_on_an_unknown_curve_is_a_load_error(
    template: dict[str, Any], reason: str
) -> None:
    document = {"keys": [ec_jwk("good"), odd_jwk(template, "odd")]}
    with pytest.raises(KeyMaterialError) as caught:
        key_set_from_text(json.dumps(document), "keys.json")
    assert str(caught.value).startswith(f"keys.json key 'odd': {reason}")


def test_local_key_on_an_unknown_curve_is_a_policy_error_naming_file_and_key(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "corp.jwks.json"
    keys.write_text(json.dumps({"keys": [ec_jwk("good"), ec_jwk("bp") | {"crv": "BP-256"}]}))
    text = (
        "version: 1\nproviders:\n  corp:\n    issuer: https://corp.test\n"
        "    jwks: {file: corp.jwks.json}\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "policy.yaml", tmp_path)
    assert (caught.value.key_path, caught.value.line) == ("providers.corp.jwks.file", 5)
    assert f"{keys} key 'bp': EC curve 'BP-256' is not supported" in str(caught.value)


@pytest.mark.parametrize("curve", [ec.SECP192R1(), ec.BrainpoolP256R1()], ids=lambda c: c.name)
def test_pem_on_an_unknown_curve_is_a_load_error(curve: ec.EllipticCurve) -> None:
    with pytest.raises(KeyMaterialError, match=f"EC curve {curve.name} is not supported"):
        key_set_from_text(pem_of(ec_public(curve)), "odd.pem")


def test_skipped_key_log_line_escapes_kid_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    hostile_kid = "evil\n2024-01-01 INFO forged line\x1b[31m\u202e" + "k" * 500
    document = {"keys": [ec_jwk(hostile_kid) | {"crv": "P-1\n92"}, ec_jwk("good")]}
    with caplog.at_level(logging.WARNING, logger="claimroute.keys"):
        key_set = key_set_from_jwks(document, "https://idp/jwks", allow_oct=False, strict=False)
    assert key_set.kids == ["good"]
    [message] = [r.getMessage() for r in caplog.records]
    assert message.isprintable()  # no newline, escape or bidi override reaches the log
    assert "'evil\\n2024-01-01 INFO forged line\\x1b[31m\\u202e" in message
    assert "'P-1\\n92'" in message
    assert len(message) < 300  # a 500-character kid is cut


def test_an_import_failure_of_any_kind_skips_only_that_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Whatever joserfc raises for one key (here a KeyError, as for unknown curves before the
    # curve check), the other keys stay usable in a remote set, and a local set names the key.
    real = ECKey.import_key

    def flaky(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, dict) and value.get("kid") == "broken":
            raise KeyError("surprise")
        return real(value, *args, **kwargs)

    monkeypatch.setattr(ECKey, "import_key", flaky)
    document = {"keys": [ec_jwk("broken"), ec_jwk("good")]}
    with caplog.at_level(logging.WARNING, logger="claimroute.keys"):
        key_set = key_set_from_jwks(document, "u", allow_oct=False, strict=False)
    assert key_set.kids == ["good"]
    assert "u key 'broken': cannot import the key (KeyError: 'surprise')" in caplog.text
    with pytest.raises(KeyMaterialError, match="key 'broken': cannot import the key"):
        key_set_from_text(json.dumps(document), "keys.json")


# --------------------------------------------------------------------------- X.509 certificate maps
# {"kid": "-----BEGIN CERTIFICATE-----...", ...}: what Google and Firebase publish (e.g.
# https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com).

DAY = datetime.timedelta(days=1)
SIGNING = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
ENCIPHERING = x509.KeyUsage(False, False, True, False, False, False, False, False, False)


def certificate_pem(
    private: Any,
    *,
    valid_from: datetime.timedelta = -DAY,
    valid_to: datetime.timedelta = 14 * DAY,
    key_usage: x509.KeyUsage | None = None,
) -> str:
    """A self-signed certificate of `private`'s public key, valid from now+valid_from to
    now+valid_to, as PEM text."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + valid_from)
        .not_valid_after(now + valid_to)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    plain = isinstance(private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    certificate = builder.sign(private, None if plain else hashes.SHA256())
    return certificate.public_bytes(PEM).decode("ascii")


def test_a_certificate_map_gives_each_certificate_key_its_kid(
    rsa_private: rsa.RSAPrivateKey,
) -> None:
    ec_private = ec.generate_private_key(ec.SECP384R1())
    ed_private = ed25519.Ed25519PrivateKey.generate()
    document = {
        "rsa-kid": certificate_pem(rsa_private),
        "ec-kid": certificate_pem(ec_private, key_usage=SIGNING),
        "ed-kid": certificate_pem(ed_private),
    }
    key_set = key_set_from_text(json.dumps(document), "google.json")
    assert key_set.kids == ["rsa-kid", "ec-kid", "ed-kid"]
    by_kid = {key.kid: key for key in key_set.keys}
    assert by_kid["rsa-kid"].algorithms == RSA_SET
    assert by_kid["ec-kid"].algorithms == {"ES384"}
    assert by_kid["ed-kid"].algorithms == {"EdDSA", "Ed25519"}
    rsa_key = by_kid["rsa-kid"].key.public_key
    assert rsa_key.public_numbers() == rsa_private.public_key().public_numbers()
    # The provider's allowlist narrows them like any other key.
    narrowed = key_set_from_text(json.dumps(document), "g", allowed_algorithms=["RS256"])
    assert narrowed.kids == ["rsa-kid"] and narrowed.keys[0].algorithms == {"RS256"}
    # A parsed document (a remote body) is detected the same way.
    remote = key_set_from_jwks(document, "https://idp/x509", allow_oct=False, strict=False)
    assert remote.kids == key_set.kids
    # The public form of such a set is a JWKS (for claimroute.keys).
    assert [k["kid"] for k in json.loads(public_jwks_json(key_set))["keys"]] == key_set.kids


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_tokens_signed_by_a_certificate_key_verify(alg: str, tmp_path: Path) -> None:
    corp = TestIssuer("corp", alg)
    (tmp_path / "certs.json").write_text(
        json.dumps({corp.kid: certificate_pem(corp.private_key), "other": certificate_pem(
            ec.generate_private_key(ec.SECP256R1())
        )})
    )  # fmt: skip
    policy = load_policy_text(
        f"version: 1\nproviders:\n  corp:\n    issuer: {corp.issuer}\n"
        "    jwks: {file: certs.json}\n",
        "policy.yaml",
        tmp_path,
    )
    sources: dict[str, Any] = {"corp": StaticKeySource(policy.providers["corp"].jwks.key_set, "t")}
    verified = await verify_token(corp.mint("alice"), policy, sources, time.time())
    assert verified.claims["sub"] == "alice"
    # The kid pins the certificate: the same token under the other kid fails.
    with pytest.raises(Rejection) as caught:
        await verify_token(corp.mint("a", header={"kid": "other"}), policy, sources, time.time())
    assert caught.value.status == 401


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ((-30 * DAY, -DAY), "the certificate expired at"),
        ((DAY, 30 * DAY), "the certificate is not valid before"),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_a_certificate_out_of_its_validity_is_a_load_error_in_a_local_set(
    window: tuple[datetime.timedelta, datetime.timedelta], reason: str, tmp_path: Path
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    document = {
        "good": certificate_pem(private),
        "stale": certificate_pem(private, valid_from=window[0], valid_to=window[1]),
    }
    (tmp_path / "certs.json").write_text(json.dumps(document))
    text = "version: 1\nproviders:\n  corp:\n    issuer: https://corp.test\n    jwks:\n"
    text += "      file: certs.json\n"
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "policy.yaml", tmp_path)
    error = caught.value
    assert (error.key_path, error.line) == ("providers.corp.jwks.file", 6)
    assert f"certs.json certificate 'stale': {reason}" in error.reason
    # Inline too: local sets are strict.
    inline = text.replace("      file: certs.json\n", f"      inline: {json.dumps(document)}\n")
    with pytest.raises(PolicyError, match=f"inline key certificate 'stale': {reason}"):
        load_policy_text(inline, "policy.yaml", tmp_path)
    # Read at a time inside its window, the same set is fine.
    inside = time.time() + (window[0] + window[1]).total_seconds() / 2
    assert key_set_from_text(json.dumps({"stale": document["stale"]}), "x", now=inside).kids == [
        "stale"
    ]


def test_a_remote_set_skips_an_out_of_date_certificate_with_an_escaped_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    hostile_kid = "old\n2024-01-01 INFO forged\x1b[31m"
    document = {
        hostile_kid: certificate_pem(private, valid_from=-30 * DAY, valid_to=-DAY),
        "future": certificate_pem(private, valid_from=DAY, valid_to=2 * DAY),
        "good": certificate_pem(private),
    }
    with caplog.at_level(logging.INFO, logger="claimroute.keys"):
        key_set = key_set_from_jwks(document, "https://idp/x509", allow_oct=False, strict=False)
    assert key_set.kids == ["good"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all(m.isprintable() for m in messages)
    assert (
        "certificate 'old\\n2024-01-01 INFO forged\\x1b[31m': the certificate expired"
        in (messages[0])
    )
    assert messages[0].endswith("; the key is skipped")
    assert "certificate 'future': the certificate is not valid before" in messages[1]


def test_a_certificate_whose_key_usage_excludes_signatures_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    document = {
        "enc": certificate_pem(private, key_usage=ENCIPHERING),
        "sig": certificate_pem(private, key_usage=SIGNING),
    }
    # Like a JWK with use: enc, in local and remote sets alike: skipped and logged, no error.
    with caplog.at_level(logging.INFO, logger="claimroute.keys"):
        assert key_set_from_text(json.dumps(document), "local.json").kids == ["sig"]
    assert "local.json certificate 'enc': skipped a certificate whose key usage" in caplog.text
    remote = key_set_from_jwks(document, "u", allow_oct=False, strict=False)
    assert remote.kids == ["sig"]
    with pytest.raises(KeyMaterialError, match="holds no usable verification key"):
        key_set_from_text(json.dumps({"enc": document["enc"]}), "local.json")


def test_malformed_certificate_maps(rsa_private: rsa.RSAPrivateKey) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    good = certificate_pem(private)
    small = certificate_pem(rsa.generate_private_key(65537, 1024))
    private_pem = private.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    cases = {
        "two certificates": (good + good, "give exactly one certificate per kid"),
        "a private key with it": (good + private_pem, "holds a private key"),
        "not DER inside": (broken, "not a readable X.509 certificate"),
        "a weak key": (small, "RSA key is 1024 bits"),
        "not ASCII": (good.replace("CERTIFICATE-----\n", "CERTIFICATE-----\né", 1), "ASCII"),
    }
    for name, (value, message) in cases.items():
        document = {"bad": value, "good": good}
        with pytest.raises(KeyMaterialError, match=message):
            key_set_from_text(json.dumps(document), "local.json")
        # A remote set skips only that certificate.
        remote = key_set_from_jwks(document, "u", allow_oct=False, strict=False)
        assert remote.kids == ["good"], name
    # An object that is not entirely certificates is no certificate map, nor anything else.
    for document in ({"good": good, "other": "text"}, {"good": good, "n": 1}, {}):
        with pytest.raises(KeyMaterialError, match=r"nor a map of kid to X\.509 certificate PEM"):
            key_set_from_jwks(document, "u", allow_oct=False, strict=False)
    # The key cap counts certificates before any is read.
    many = {f"k{i}": "-----BEGIN CERTIFICATE-----junk" for i in range(101)}
    with pytest.raises(KeyMaterialError, match="lists 101 certificates; at most 100"):
        key_set_from_jwks(many, "u", allow_oct=False, strict=False, max_keys=100)
