"""Verification keys: which key may verify which algorithm, and where local keys come from.

A `KeySet` is immutable and built once per load (or per remote fetch). Every key carries the
exact set of algorithms it may verify: those its key type and size allow, narrowed by the JWK's
own `alg` and by the provider's allowlist. The key type decides the primitive, so a public RSA,
EC or OKP key can never become an HMAC secret (RFC 8725 §3.1), and HMAC keys come only from
`oct` JWKs that the operator configured explicitly.

The work one token can cause is bounded: a token whose `kid` does not pin a key is tried against
at most `MAX_UNPINNED_KEYS` keys (a set with more candidates refuses it without trying any), and
callers that take sets from elsewhere cap their size (`max_keys`) before importing anything.

Besides JWKS, a JWK and a PEM public key, a set may be a JSON object mapping each kid to an
X.509 certificate in PEM (the form Google and Firebase publish, and Envoy reads): each
certificate's public key is a key with that kid. The certificate is only a container: its
signature and issuer are not checked (trust comes from where the policy says to read it), but
its validity period (when the set is read) and its key usage are.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from claimroute.config.jsonstrict import StrictJSONError, loads_strict
from claimroute.errors import log_safe

log = logging.getLogger(__name__)

RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
OKP_ALGORITHMS = {"Ed25519": ("EdDSA", "Ed25519"), "Ed448": ("EdDSA", "Ed448")}
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
SUPPORTED_ALGORITHMS = frozenset(
    [*RSA_ALGORITHMS, *EC_ALGORITHMS.values(), "EdDSA", "Ed25519", "Ed448", *HMAC_MIN_BYTES]
)
MIN_RSA_BITS = 2048
# Most keys one token is tried against when its `kid` pins none (no kid, or a kid no key has):
# enough for a provider without kids that publishes its current, next and previous key. With
# more candidates for the token's alg the token is refused at once ("Jwks doesn't have key to
# match kid or alg from Jwt"): a forged token must never cost a signature check per key.
MAX_UNPINNED_KEYS = 4
# Curves whose JWKs are imported; anything else is refused before joserfc sees it (joserfc
# raises KeyError for a curve it does not know).
_OKP_CURVES = frozenset({*OKP_ALGORITHMS, "X25519", "X448"})
_PEM_EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_SHOWN_KID_CHARS = 64
_SHOWN_LOG_CHARS = 500
_CERTIFICATE_BEGIN = "-----BEGIN CERTIFICATE-----"


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
    # Per algorithm, the keys a token that no kid pins may be tried against: every key (token
    # without kid) and the keys without a kid (token whose kid no key has). Built once, so a
    # request never walks a large set.
    _any_by_alg: Mapping[str, tuple[VerificationKey, ...]] = field(init=False, repr=False)
    _kidless_by_alg: Mapping[str, tuple[VerificationKey, ...]] = field(init=False, repr=False)
    _algorithms: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_kid: dict[str, list[VerificationKey]] = {}
        any_by_alg: dict[str, list[VerificationKey]] = {}
        kidless_by_alg: dict[str, list[VerificationKey]] = {}
        for key in self.keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
            for alg in key.algorithms:
                any_by_alg.setdefault(alg, []).append(key)
                if key.kid is None:
                    kidless_by_alg.setdefault(alg, []).append(key)
        object.__setattr__(self, "_by_kid", {k: tuple(v) for k, v in by_kid.items()})
        object.__setattr__(self, "_any_by_alg", {a: tuple(v) for a, v in any_by_alg.items()})
        object.__setattr__(
            self, "_kidless_by_alg", {a: tuple(v) for a, v in kidless_by_alg.items()}
        )
        object.__setattr__(self, "_algorithms", frozenset(any_by_alg))

    def candidates(self, kid: str | None, alg: str) -> list[VerificationKey]:
        """Keys that may verify a token with this `kid` and `alg`, in set order.

        A kid pins the key: only keys with that kid are tried, or, when none has it, keys that
        have no kid at all (as jwt_verify_lib does). Without a kid every key is a candidate.
        A token that no kid pins gets an empty list when more than `MAX_UNPINNED_KEYS` keys
        could verify its alg: it is refused instead of being tried against each of them.
        """
        pinned = self._by_kid.get(kid) if kid is not None else None
        if pinned is not None:
            return [key for key in pinned if alg in key.algorithms]
        pool = (self._any_by_alg if kid is None else self._kidless_by_alg).get(alg, ())
        if len(pool) > MAX_UNPINNED_KEYS:
            return []
        return list(pool)

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


def _check_curve(jwk: dict[str, Any], kty: str, origin: str) -> None:
    """Refuse an EC or OKP curve this module does not import, before joserfc sees it."""
    crv = jwk.get("crv")
    if not isinstance(crv, str):
        raise KeyMaterialError(f"{origin}: {kty} key has no string 'crv'")
    if kty == "EC" and crv not in EC_ALGORITHMS:
        known = ", ".join(EC_ALGORITHMS)
        raise KeyMaterialError(f"{origin}: EC curve {_shown(crv)} is not supported ({known})")
    if kty == "OKP" and crv not in _OKP_CURVES:
        known = ", ".join(OKP_ALGORITHMS)
        raise KeyMaterialError(f"{origin}: OKP curve {_shown(crv)} is not supported ({known})")


def _shown(value: Any, limit: int = _SHOWN_KID_CHARS) -> str:
    """`repr` of a value from a key set, cut to `limit` characters: safe to log (repr escapes
    control characters, so a value can never start a new log line)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}..."
    text = repr(value)
    return text if len(text) <= limit + 2 else f"{text[:limit]}..."


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
        log.info(
            "%s: skipped a key with use=%s (not for signatures)",
            log_safe(origin),
            log_safe(repr(jwk.get("use")), 100),
        )
        return None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        log.info("%s: skipped a key whose key_ops do not include verify", log_safe(origin))
        return None
    if kty == "oct":
        if not allow_oct:
            raise RemoteOctKeyError(
                f"{origin}: an 'oct' (HMAC) key is not accepted from a remote key set"
            )
        return OctKey.import_key(jwk)
    key_class = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}.get(kty)
    if key_class is None:
        raise KeyMaterialError(f"{origin}: key type {_shown(kty)} is not supported")
    if any(member in jwk for member in _PRIVATE_MEMBERS[kty]):
        raise KeyMaterialError(
            f"{origin}: the JWK holds private key material; give the proxy only the public key"
        )
    if kty != "RSA":
        _check_curve(jwk, kty, origin)
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
            raise KeyMaterialError(f"{origin}: JWK alg {_shown(jwk_alg)} does not fit its key")
        algorithms = frozenset([jwk_alg])
    if allowed is not None:
        algorithms = algorithms & frozenset(allowed)
    if not algorithms:
        log.info("%s: no allowed algorithm fits this key; it is not used", log_safe(origin))
        return None
    return VerificationKey(key=key, kid=kid, algorithms=algorithms, description=origin)


def key_set_from_jwks(
    document: Mapping[str, Any],
    origin: str,
    *,
    allow_oct: bool,
    allowed_algorithms: Collection[str] | None = None,
    strict: bool = True,
    max_keys: int | None = None,
    now: float | None = None,
) -> KeySet:
    """Build a KeySet from a parsed JWKS (`{"keys": [...]}`), a single JWK, or a map of kid to
    X.509 certificate PEM (every value a PEM certificate; see `key_set_from_certificates`).

    `strict` (local files): a weak, broken or unsupported key (unknown curve, unknown key type)
    is an error. Not strict (remote sets): such a key is skipped and logged with its kid and
    the reason, as RFC 7517 §5 allows, and the other keys stay usable. Either way an empty
    result, a duplicate kid, or HMAC keys mixed with public keys are errors. `max_keys`: a set
    listing more JWKs than this is refused before any key is imported. `now` (default: the
    current time) is when certificates must be valid.
    """
    if "keys" in document:
        entries = document["keys"]
        if not isinstance(entries, list):
            raise KeyMaterialError(f"{origin}: 'keys' must be a list")
    elif "kty" in document:
        entries = [document]
    elif is_certificate_map(document):
        return key_set_from_certificates(
            document, origin, allowed_algorithms=allowed_algorithms, strict=strict,
            max_keys=max_keys, now=now,
        )  # fmt: skip
    else:
        raise KeyMaterialError(
            f"{origin}: neither a JWKS (with 'keys'), a JWK (with 'kty') nor a map of kid to "
            "X.509 certificate PEM"
        )
    if max_keys is not None and len(entries) > max_keys:
        raise KeyMaterialError(
            f"{origin}: lists {len(entries)} keys; at most {max_keys} are accepted"
        )
    keys: list[VerificationKey] = []
    seen_kids: set[str] = set()
    for index, jwk in enumerate(entries):
        where = f"{origin} key #{index + 1}"
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        if kid is not None and not isinstance(kid, str):
            raise KeyMaterialError(f"{where}: 'kid' must be a string")
        if kid is not None:
            where = f"{origin} key {_shown(kid)}"
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
        except Exception as exc:  # untrusted key material: joserfc may raise anything
            _raise_or_skip(exc, where, strict=strict)
            continue
        if verification_key is not None:
            keys.append(verification_key)
    return _finish(keys, origin)


def _raise_or_skip(exc: Exception, where: str, *, strict: bool) -> None:
    """One key failed to import: raise when `strict` (or for an HMAC key in a remote set,
    which refuses the whole set); otherwise log why, and the caller skips the key."""
    error = _as_key_error(exc, where)
    if strict or isinstance(exc, RemoteOctKeyError):
        raise error from None
    log.warning("%s; the key is skipped", log_safe(error, _SHOWN_LOG_CHARS))


def _as_key_error(exc: Exception, where: str) -> KeyMaterialError:
    if isinstance(exc, KeyMaterialError):
        return exc
    if isinstance(exc, JoseError | ValueError | TypeError):
        reason = log_safe(exc, _SHOWN_KID_CHARS * 2)
    else:  # e.g. a KeyError from joserfc: its text alone says little
        reason = log_safe(f"{type(exc).__name__}: {exc}", _SHOWN_KID_CHARS * 2)
    return KeyMaterialError(f"{where}: cannot import the key ({reason})")


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
    key = _import_public_key(public, data, origin)
    vkey = _verification_key(key, kid=None, jwk_alg=None, allowed=allowed_algorithms, origin=origin)
    return _finish([vkey] if vkey else [], origin)


def _import_public_key(public: Any, pem: bytes, origin: str) -> RSAKey | ECKey | OKPKey:
    """The joserfc key for `public`, a `cryptography` public key read from `pem`."""
    key: RSAKey | ECKey | OKPKey
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name not in _PEM_EC_CURVES:
        # joserfc raises KeyError for the curves it does not know
        raise KeyMaterialError(f"{origin}: EC curve {public.curve.name} is not supported")
    try:
        if isinstance(public, rsa.RSAPublicKey):
            key = RSAKey.import_key(pem)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            key = ECKey.import_key(pem)
        elif isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key = OKPKey.import_key(pem)
        else:
            raise KeyMaterialError(f"{origin}: PEM key type {type(public).__name__} not supported")
    except Exception as exc:  # a policy load error, never a traceback
        raise _as_key_error(exc, origin) from None
    return key


def is_certificate_map(document: Mapping[str, Any]) -> bool:
    """Whether a JSON object is a map of kid to X.509 certificate PEM: not empty, and every
    value a string that starts (after whitespace) with a PEM certificate header."""
    if not document or "keys" in document or "kty" in document:
        return False
    for value in document.values():
        if not isinstance(value, str) or not value.lstrip().startswith(_CERTIFICATE_BEGIN):
            return False
    return True


def key_set_from_certificates(
    document: Mapping[str, Any],
    origin: str,
    *,
    allowed_algorithms: Collection[str] | None = None,
    strict: bool = True,
    max_keys: int | None = None,
    now: float | None = None,
) -> KeySet:
    """Build a KeySet from a map of kid to X.509 certificate PEM (Google's and Firebase's form).

    Each certificate's public key becomes a key with that kid, under the rules for PEM keys
    (type, size, curve, `allowed_algorithms`). A certificate whose key usage excludes digital
    signatures is skipped and logged, like a JWK with `use: enc`. One outside its validity
    period at `now`, or unreadable, or with an unusable key, is an error when `strict` (local
    sets) and skipped with a warning otherwise (remote sets). Each value must hold exactly one
    certificate and no private key.
    """
    if max_keys is not None and len(document) > max_keys:
        raise KeyMaterialError(
            f"{origin}: lists {len(document)} certificates; at most {max_keys} are accepted"
        )
    when = time.time() if now is None else now
    keys: list[VerificationKey] = []
    for kid, pem in document.items():
        where = f"{origin} certificate {_shown(kid)}"
        try:
            key = _certificate_key(pem, where, when)
            if key is None:
                continue
            verification_key = _verification_key(
                key, kid=kid, jwk_alg=None, allowed=allowed_algorithms, origin=where
            )
        except Exception as exc:  # untrusted key material: cryptography may raise anything
            _raise_or_skip(exc, where, strict=strict)
            continue
        if verification_key is not None:
            keys.append(verification_key)
    return _finish(keys, origin)


def _certificate_key(pem: str, where: str, now: float) -> RSAKey | ECKey | OKPKey | None:
    """The public key of one PEM certificate; None (logged) when its key usage excludes
    digital signatures. Raises KeyMaterialError for anything unusable."""
    if not pem.isascii():
        raise KeyMaterialError(f"{where}: a PEM certificate is ASCII text")
    data = pem.encode("ascii")
    if b"PRIVATE KEY" in data:
        raise KeyMaterialError(f"{where}: holds a private key; give the proxy only certificates")
    if data.count(b"-----BEGIN") != 1:
        raise KeyMaterialError(f"{where}: give exactly one certificate per kid")
    try:
        certificate = x509.load_pem_x509_certificate(data)
        not_before = certificate.not_valid_before_utc
        not_after = certificate.not_valid_after_utc
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    except ValueError as exc:
        raise KeyMaterialError(f"{where}: not a readable X.509 certificate ({exc})") from None
    if now < not_before.timestamp():
        raise KeyMaterialError(
            f"{where}: the certificate is not valid before {not_before:%Y-%m-%dT%H:%M:%SZ}"
        )
    if now > not_after.timestamp():
        raise KeyMaterialError(
            f"{where}: the certificate expired at {not_after:%Y-%m-%dT%H:%M:%SZ}"
        )
    if usage is not None and not usage.digital_signature:
        log.info(
            "%s: skipped a certificate whose key usage excludes digital signatures",
            log_safe(where),
        )
        return None
    public = certificate.public_key()
    spki = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _import_public_key(public, spki, where)


def key_set_from_text(
    text: str | bytes,
    origin: str,
    *,
    allowed_algorithms: Collection[str] | None = None,
    now: float | None = None,
) -> KeySet:
    """Parse configured key material: a JWKS, a single JWK, a PEM public key, or a map of kid
    to X.509 certificate PEM (its certificates valid at `now`, default the current time)."""
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
        document, origin, allow_oct=True, allowed_algorithms=allowed_algorithms, strict=True,
        now=now,
    )  # fmt: skip


def public_jwks_json(key_set: KeySet) -> str:
    """The public members of a key set as JWKS JSON (for `claimroute.keys.keyset` and logs)."""
    out = []
    for vkey in key_set.keys:
        if vkey.key_type == "oct":
            out.append({"kty": "oct", "kid": vkey.kid, "alg": sorted(vkey.algorithms)})
        else:
            jwk = vkey.key.as_dict(private=False)
            if vkey.kid is not None:  # keys from a PEM certificate carry their kid only here
                jwk.setdefault("kid", vkey.kid)
            out.append(jwk)
    return json.dumps({"keys": out})
