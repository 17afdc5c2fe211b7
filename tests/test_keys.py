"""Verification keys: what each key type may verify, and what is refused at import."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519
from joserfc.jwk import ECKey, OKPKey, RSAKey

from claimroute.keys import (
    RSA_ALGORITHMS,
    KeyMaterialError,
    KeySet,
    VerificationKey,
    key_set_from_jwks,
    key_set_from_pem,
    key_set_from_text,
    public_jwks_json,
)
from claimroute.lab import b64url

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
