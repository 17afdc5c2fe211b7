"""Verification keys: which key may verify which algorithm, and where local keys come from.

A `KeySet` is immutable and built once per load (or per remote fetch). Every key carries the
exact set of algorithms it may verify: those its key type and size allow, narrowed by the JWK's
own `alg` and by the provider's allowlist. The key type decides the primitive, so a public RSA,
EC or OKP key can never become an HMAC secret (RFC 8725 §3.1), and HMAC keys come only from
`oct` JWKs that the operator configured explicitly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from .jsonstrict import StrictJSONError, loads_strict

log = logging.getLogger(__name__)

RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
OKP_ALGORITHMS = {"Ed25519": ("EdDSA", "Ed25519"), "Ed448": ("EdDSA", "Ed448")}
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
SUPPORTED_ALGORITHMS = frozenset(
    [*RSA_ALGORITHMS, *EC_ALGORITHMS.values(), "EdDSA", "Ed25519", "Ed448", *HMAC_MIN_BYTES]
)
MIN_RSA_BITS = 2048


class KeyMaterialError(ValueError):
    """Key material is unusable; the message says which key and why."""


class RemoteOctKeyError(KeyMaterialError):
    """An HMAC key in a remote set: the whole set is refused, never just this key skipped."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public (or configured HMAC) key and the algorithms it may verify."""

    key: RSAKey | ECKey | OKPKey | OctKey
    kid: str | None
    algorithms: frozenset[str]
    description: str
    # The algorithms whose joserfc `check_key` accepts this key (use, key type, JWK alg,
    # curve). The check depends only on the key and the algorithm, so it runs once here
    # instead of before every signature check.
    key_checked: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checked: set[str] = set()
        for alg in self.algorithms:
            try:
                JWSRegistry.algorithms[alg].check_key(self.key)
            except Exception:  # as at verification time: a key that fails is never tried
                continue
            checked.add(alg)
        object.__setattr__(self, "key_checked", frozenset(checked))

    @property
    def key_type(self) -> str:
        return self.key.key_type


@dataclass(frozen=True, slots=True)
class KeySet:
    """An immutable set of verification keys with a kid index built once."""

    keys: tuple[VerificationKey, ...]
    _by_kid: Mapping[str, tuple[VerificationKey, ...]] = field(init=False, repr=False)
    _without_kid: tuple[VerificationKey, ...] = field(init=False, repr=False)
    _algorithms: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_kid: dict[str, list[VerificationKey]] = {}
        algorithms: set[str] = set()
        for key in self.keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
            algorithms |= key.algorithms
        object.__setattr__(self, "_by_kid", {k: tuple(v) for k, v in by_kid.items()})
        object.__setattr__(self, "_without_kid", tuple(k for k in self.keys if k.kid is None))
        object.__setattr__(self, "_algorithms", frozenset(algorithms))

    def candidates(self, kid: str | None, alg: str) -> list[VerificationKey]:
        """Keys that may verify a token with this `kid` and `alg`.

        A kid pins the key: only keys with that kid are tried, or, when none has it, keys that
        have no kid at all (as jwt_verify_lib does). Without a kid every key is tried.
        """
        if kid is None:
            pool: Iterable[VerificationKey] = self.keys
        else:
            pool = self._by_kid.get(kid) or self._without_kid
        return [key for key in pool if alg in key.algorithms]

    def has_kid(self, kid: str) -> bool:
        """Whether some key carries exactly this kid."""
        return kid in self._by_kid

    @property
    def kids(self) -> list[str]:
        """The kids in the set (keys without a kid are shown as `-`)."""
        return [key.kid or "-" for key in self.keys]

    @property
    def algorithms(self) -> frozenset[str]:
        """Every algorithm some key in the set can verify (computed once, as the set is
        immutable)."""
        return self._algorithms


def _key_algorithms(key: RSAKey | ECKey | OKPKey | OctKey, origin: str) -> frozenset[str]:
    """The algorithms a key's type and size allow; raises for weak keys."""
    if isinstance(key, RSAKey):
        bits = key.public_key.key_size
        if bits < MIN_RSA_BITS:
            raise KeyMaterialError(
                f"{origin}: RSA key is {bits} bits; at least {MIN_RSA_BITS} are required"
            )
        return frozenset(RSA_ALGORITHMS)
    if isinstance(key, ECKey):
        alg = EC_ALGORITHMS.get(key.curve_name)
        if alg is None:
            raise KeyMaterialError(f"{origin}: EC curve {key.curve_name} is not supported")
        return frozenset([alg])
    if isinstance(key, OKPKey):
        algs = OKP_ALGORITHMS.get(key.curve_name)
        if algs is None:
            raise KeyMaterialError(f"{origin}: OKP curve {key.curve_name} cannot sign")
        return frozenset(algs)
    if isinstance(key, OctKey):
        size = len(key.raw_value)
        allowed = frozenset(a for a, need in HMAC_MIN_BYTES.items() if size >= need)
        if not allowed:
            raise KeyMaterialError(
                f"{origin}: HMAC key is {size} bytes; HS256 needs at least 32 (RFC 7518 §3.2)"
            )
        return allowed
    raise KeyMaterialError(f"{origin}: unsupported key type")


_PRIVATE_MEMBERS = {"RSA": ("d", "p", "q", "dp", "dq", "qi"), "EC": ("d",), "OKP": ("d",)}


def _import_jwk(
    jwk: Any, origin: str, *, allow_oct: bool
) -> RSAKey | ECKey | OKPKey | OctKey | None:
    """Import one JWK. Returns None for keys that are not for signatures (skipped, logged)."""
    if not isinstance(jwk, dict):
        raise KeyMaterialError(f"{origin}: a JWK must be a JSON object")
    kty = jwk.get("kty")
    if not isinstance(kty, str):
        raise KeyMaterialError(f"{origin}: JWK has no string 'kty'")
    if jwk.get("use", "sig") != "sig":
        log.info("%s: skipped a key with use=%r (not for signatures)", origin, jwk.get("use"))
        return None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        log.info("%s: skipped a key whose key_ops do not include verify", origin)
        return None
    if kty == "oct":
        if not allow_oct:
            raise RemoteOctKeyError(
                f"{origin}: an 'oct' (HMAC) key is not accepted from a remote key set"
            )
        return OctKey.import_key(jwk)
    key_class = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}.get(kty)
    if key_class is None:
        raise KeyMaterialError(f"{origin}: key type {kty!r} is not supported")
    if any(member in jwk for member in _PRIVATE_MEMBERS[kty]):
        raise KeyMaterialError(
            f"{origin}: the JWK holds private key material; give the proxy only the public key"
        )
    return key_class.import_key(jwk)


def _verification_key(
    key: RSAKey | ECKey | OKPKey | OctKey,
    *,
    kid: str | None,
    jwk_alg: Any,
    allowed: Collection[str] | None,
    origin: str,
) -> VerificationKey | None:
    algorithms = _key_algorithms(key, origin)
    if jwk_alg is not None:
        if not isinstance(jwk_alg, str) or jwk_alg not in algorithms:
            raise KeyMaterialError(f"{origin}: JWK alg {jwk_alg!r} does not fit its key")
        algorithms = frozenset([jwk_alg])
    if allowed is not None:
        algorithms = algorithms & frozenset(allowed)
    if not algorithms:
        log.info("%s: no allowed algorithm fits this key; it is not used", origin)
        return None
    return VerificationKey(key=key, kid=kid, algorithms=algorithms, description=origin)


def key_set_from_jwks(
    document: Mapping[str, Any],
    origin: str,
    *,
    allow_oct: bool,
    allowed_algorithms: Collection[str] | None = None,
    strict: bool = True,
) -> KeySet:
    """Build a KeySet from a parsed JWKS (`{"keys": [...]}`) or a single JWK.

    `strict` (local files): a weak or broken key is an error. Not strict (remote sets): such a
    key is skipped and logged, as RFC 7517 §5 allows. Either way an empty result, a duplicate
    kid, or HMAC keys mixed with public keys are errors.
    """
    if "keys" in document:
        entries = document["keys"]
        if not isinstance(entries, list):
            raise KeyMaterialError(f"{origin}: 'keys' must be a list")
    elif "kty" in document:
        entries = [document]
    else:
        raise KeyMaterialError(f"{origin}: neither a JWKS (with 'keys') nor a JWK (with 'kty')")
    keys: list[VerificationKey] = []
    seen_kids: set[str] = set()
    for index, jwk in enumerate(entries):
        where = f"{origin} key #{index + 1}"
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        if kid is not None and not isinstance(kid, str):
            raise KeyMaterialError(f"{where}: 'kid' must be a string")
        if kid is not None:
            where = f"{origin} key {kid!r}"
            if kid in seen_kids:
                raise KeyMaterialError(f"{where}: two keys share this kid (ambiguous)")
            seen_kids.add(kid)
        try:
            key = _import_jwk(jwk, where, allow_oct=allow_oct)
            if key is None:
                continue
            verification_key = _verification_key(
                key, kid=kid, jwk_alg=jwk.get("alg"), allowed=allowed_algorithms, origin=where
            )
        except (KeyMaterialError, JoseError, ValueError, TypeError) as exc:
            if strict or isinstance(exc, RemoteOctKeyError):
                raise _as_key_error(exc, where) from None
            log.warning("%s", _as_key_error(exc, where))
            continue
        if verification_key is not None:
            keys.append(verification_key)
    return _finish(keys, origin)


def _as_key_error(exc: Exception, where: str) -> KeyMaterialError:
    if isinstance(exc, KeyMaterialError):
        return exc
    return KeyMaterialError(f"{where}: cannot import the key ({exc})")


def _finish(keys: list[VerificationKey], origin: str) -> KeySet:
    if not keys:
        raise KeyMaterialError(f"{origin}: holds no usable verification key")
    kinds = {key.key_type == "oct" for key in keys}
    if len(kinds) > 1:
        raise KeyMaterialError(
            f"{origin}: mixes HMAC ('oct') keys with public keys; use separate providers"
        )
    return KeySet(tuple(keys))


def key_set_from_pem(
    data: bytes, origin: str, *, allowed_algorithms: Collection[str] | None = None
) -> KeySet:
    """Build a KeySet from one PEM public key (SPKI or PKCS#1 RSA). Never an HMAC key."""
    if b"PRIVATE KEY" in data:
        raise KeyMaterialError(f"{origin}: holds a private key; give the proxy only the public key")
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(f"{origin}: not a readable PEM public key ({exc})") from None
    key: RSAKey | ECKey | OKPKey
    if isinstance(public, rsa.RSAPublicKey):
        key = RSAKey.import_key(data)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        key = ECKey.import_key(data)
    elif isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key = OKPKey.import_key(data)
    else:
        raise KeyMaterialError(f"{origin}: PEM key type {type(public).__name__} not supported")
    vkey = _verification_key(key, kid=None, jwk_alg=None, allowed=allowed_algorithms, origin=origin)
    return _finish([vkey] if vkey else [], origin)


def key_set_from_text(
    text: str | bytes, origin: str, *, allowed_algorithms: Collection[str] | None = None
) -> KeySet:
    """Parse configured key material: a JWKS, a single JWK or a PEM public key."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    stripped = data.lstrip()
    if stripped.startswith(b"-----BEGIN"):
        return key_set_from_pem(stripped, origin, allowed_algorithms=allowed_algorithms)
    try:
        document = loads_strict(data)
    except StrictJSONError as exc:
        raise KeyMaterialError(f"{origin}: neither PEM nor valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise KeyMaterialError(f"{origin}: JSON key material must be an object")
    return key_set_from_jwks(
        document, origin, allow_oct=True, allowed_algorithms=allowed_algorithms, strict=True
    )


def public_jwks_json(key_set: KeySet) -> str:
    """The public members of a key set as JWKS JSON (for `claimroute.keys` and logs)."""
    out = []
    for vkey in key_set.keys:
        if vkey.key_type == "oct":
            out.append({"kty": "oct", "kid": vkey.kid, "alg": sorted(vkey.algorithms)})
        else:
            out.append(vkey.key.as_dict(private=False))
    return json.dumps({"keys": out})
