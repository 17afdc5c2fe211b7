"""Test identity providers: key pairs, JWKS, and minting of valid or deliberately broken JWTs.

Tokens are assembled by hand (`build_compact`) and signed with joserfc's raw algorithm
objects, so any header or payload can be produced, including ones a JWT library would refuse
to create. Verification in tests should use an independent path (joserfc's `jwt.decode`, or the
addon itself).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwk
from joserfc.jws import JWSRegistry

type Key = jwk.RSAKey | jwk.ECKey | jwk.OKPKey | jwk.OctKey

RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
HMAC_SIZES = {"HS256": 256, "HS384": 384, "HS512": 512}
SUPPORTED_ALGS: tuple[str, ...] = (*RSA_ALGS, *EC_CURVES, "EdDSA", *HMAC_SIZES)

TAMPERS: tuple[str, ...] = (
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "signature",
    "alg_none",
    "unknown_kid",
    "hs256_public_key",
    "missing_exp",
    "embedded_jwk",
    "payload_swap",
)

WRONG_AUDIENCE = "https://wrong-audience.test"


def b64url(data: bytes) -> str:
    """Base64url-encode without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(data: str) -> bytes:
    """Decode base64url with or without padding."""
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _json_bytes(value: dict[str, Any] | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return json.dumps(value, separators=(",", ":")).encode()


def build_compact(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    signer: Callable[[bytes], bytes] | None,
) -> str:
    """Assemble a compact JWS from raw parts, bypassing every library check.

    `header` and `payload` may be dicts (serialized compactly) or raw JSON bytes (to craft
    duplicate members, odd whitespace, invalid JSON...). `signer` receives the signing input
    (`b64(header).b64(payload)` as bytes) and returns the raw signature; None gives an empty
    signature segment (as for alg "none").
    """
    signing_input = f"{b64url(_json_bytes(header))}.{b64url(_json_bytes(payload))}"
    signature = signer(signing_input.encode("ascii")) if signer is not None else b""
    return f"{signing_input}.{b64url(signature)}"


def split_compact(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """Decode a compact JWS into (header, payload, signature) without verifying anything."""
    header_b64, payload_b64, sig_b64 = token.split(".")
    return (
        json.loads(b64url_decode(header_b64)),
        json.loads(b64url_decode(payload_b64)),
        b64url_decode(sig_b64),
    )


def generate_key(alg: str, kid: str) -> Key:
    """Generate a private joserfc key suitable for `alg`, tagged with `kid`, `alg` and `use`."""
    params: dict[str, Any] = {"kid": kid, "alg": alg, "use": "sig"}
    if alg in RSA_ALGS:
        return jwk.RSAKey.generate_key(2048, parameters=params)
    if alg in EC_CURVES:
        return jwk.ECKey.generate_key(EC_CURVES[alg], parameters=params)
    if alg == "EdDSA":
        return jwk.OKPKey.generate_key("Ed25519", parameters=params)
    if alg in HMAC_SIZES:
        return jwk.OctKey.generate_key(HMAC_SIZES[alg], parameters=params)
    raise ValueError(f"unsupported alg {alg!r}; supported: {', '.join(SUPPORTED_ALGS)}")


def signer_for(alg: str, key: Key) -> Callable[[bytes], bytes]:
    """A `build_compact` signer that signs with joserfc's raw algorithm `alg` and `key`."""
    algorithm = JWSRegistry.algorithms[alg]
    return lambda signing_input: algorithm.sign(signing_input, key)


def hmac_signer(digest: str, secret: bytes) -> Callable[[bytes], bytes]:
    """A `build_compact` signer computing HMAC-`digest` (e.g. "sha256") over the input."""
    return lambda signing_input: hmac.new(secret, signing_input, getattr(hashlib, digest)).digest()


class TestIssuer:
    """An identity provider for tests: a signing key, its JWKS, and a token minter.

    HS* issuers have no public form: `public_jwks()` then contains the secret oct key, so such
    issuers must be given to the addon as a JWKS *file*, never served over HTTP in real setups.
    `issuer` is a plain attribute and may be reassigned (e.g. to a JwksServer discovery URL).
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        name: str,
        alg: str = "RS256",
        *,
        issuer: str | None = None,
        audience: str | list[str] | None = None,
    ) -> None:
        if alg not in SUPPORTED_ALGS:
            raise ValueError(f"unsupported alg {alg!r}; supported: {', '.join(SUPPORTED_ALGS)}")
        self.name = name
        self.alg = alg
        self.issuer = issuer if issuer is not None else f"https://{name}.test"
        self.audience = audience
        self._generation = 1
        self.key: Key = generate_key(alg, f"{name}-1")
        self._published: list[Key] = [self.key]
        self._attacker_keys: dict[str, Key] = {}

    def __repr__(self) -> str:
        return f"TestIssuer({self.name!r}, {self.alg!r}, issuer={self.issuer!r}, kid={self.kid!r})"

    @property
    def symmetric(self) -> bool:
        """True for HS* issuers (shared secret, no public key)."""
        return self.alg in HMAC_SIZES

    @property
    def kid(self) -> str:
        """The kid of the current signing key."""
        return str(self.key.kid)

    @property
    def published_kids(self) -> list[str]:
        """Kids currently listed in `public_jwks()`, newest first."""
        return [str(k.kid) for k in self._published]

    @property
    def private_key(self) -> Any:
        """The current signing key as a `cryptography` private key (raw bytes for HS*)."""
        if isinstance(self.key, jwk.OctKey):
            return self.key.raw_value
        return self.key.private_key

    def public_jwks(self) -> dict[str, Any]:
        """The published JWK Set: public members only (oct keys, having none, in full)."""
        keys = [k.as_dict(private=isinstance(k, jwk.OctKey)) for k in self._published]
        return {"keys": copy.deepcopy(keys)}

    def public_jwks_json(self) -> bytes:
        """`public_jwks()` serialized as JSON bytes."""
        return json.dumps(self.public_jwks(), indent=2).encode()

    def write_jwks(self, path: Path) -> Path:
        """Write `public_jwks()` to `path` (the way to hand HS* issuers to the addon)."""
        path.write_bytes(self.public_jwks_json())
        return path

    def public_pem(self) -> bytes:
        """The current public key as SubjectPublicKeyInfo PEM (asymmetric issuers only)."""
        if isinstance(self.key, jwk.OctKey):
            raise ValueError(f"issuer {self.name!r} uses {self.alg}: no public key exists")
        return self.key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def rotate(self, keep_old: bool = False) -> str:
        """Switch to a fresh key with the next kid; returns it. The old key stays published
        only if `keep_old`."""
        self._generation += 1
        self.key = generate_key(self.alg, f"{self.name}-{self._generation}")
        self._published = [self.key, *self._published] if keep_old else [self.key]
        return self.kid

    def claims(
        self,
        sub: str | None,
        claims: dict[str, Any] | None = None,
        *,
        ttl: float = 600,
        now: float | None = None,
    ) -> dict[str, Any]:
        """The payload `mint` would sign: defaults overridden by `claims`; None values removed."""
        issued = time.time() if now is None else now
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "iat": int(issued),
            "exp": int(issued + ttl),
        }
        if self.audience is not None:
            payload["aud"] = self.audience
        payload.update(claims or {})
        return {k: v for k, v in payload.items() if v is not None}

    def header(self, header: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JOSE header `mint` would use: alg, typ, kid, overridden by `header` (None
        removes a member). It only changes the header bytes; signing always uses `self.alg`."""
        merged: dict[str, Any] = {"alg": self.alg, "typ": "JWT", "kid": self.kid}
        merged.update(header or {})
        return {k: v for k, v in merged.items() if v is not None}

    def sign(self, header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes) -> str:
        """Sign arbitrary header and payload with the current key and `self.alg`."""
        return build_compact(header, payload, signer_for(self.alg, self.key))

    def mint(
        self,
        sub: str | None,
        claims: dict[str, Any] | None = None,
        *,
        tamper: str | None = None,
        ttl: float = 600,
        now: float | None = None,
        header: dict[str, Any] | None = None,
    ) -> str:
        """Mint a compact JWT with iss, sub, iat, exp (now+ttl), aud (if configured) and `claims`.

        `claims` override the defaults and a None value removes a claim. `tamper` (one of
        `TAMPERS`) introduces exactly one defect into an otherwise valid token.
        """
        issued = time.time() if now is None else now
        payload = self.claims(sub, claims, ttl=ttl, now=issued)
        hdr = self.header(header)
        if tamper is None:
            return self.sign(hdr, payload)
        return self._tampered(tamper, hdr, payload, issued, ttl)

    def _attacker_key(self, purpose: str) -> Key:
        # One key per purpose, generated lazily: RSA generation is slow and tests mint many.
        if purpose not in self._attacker_keys:
            kid = f"{self.name}-{purpose}"
            if purpose == "attacker" and self.alg in RSA_ALGS:
                # A 2048-bit JWK in the header exceeds joserfc's 512-byte header limit, and the
                # token would then be refused for its size before the embedded key is considered.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    private = rsa.generate_private_key(65537, 1024)
                    key: Key = jwk.RSAKey.import_key(private, {"kid": kid})
            else:
                key = generate_key(self.alg, kid)
            self._attacker_keys[purpose] = key
        return self._attacker_keys[purpose]

    def _tampered(
        self, tamper: str, hdr: dict[str, Any], payload: dict[str, Any], now: float, ttl: float
    ) -> str:
        match tamper:
            case "expired":
                expired_at = int(now) - 3600
                payload |= {"iat": int(expired_at - ttl), "exp": expired_at}
                return self.sign(hdr, payload)
            case "not_yet_valid":
                return self.sign(hdr, payload | {"nbf": int(now) + 3600})
            case "wrong_audience":
                return self.sign(hdr, payload | {"aud": WRONG_AUDIENCE})
            case "wrong_issuer":
                return self.sign(hdr, payload | {"iss": f"https://impostor-{self.name}.test"})
            case "missing_exp":
                payload.pop("exp", None)
                return self.sign(hdr, payload)
            case "signature":
                header_b64, payload_b64, sig_b64 = self.sign(hdr, payload).split(".")
                sig = bytearray(b64url_decode(sig_b64))
                sig[len(sig) // 2] ^= 0xFF
                return f"{header_b64}.{payload_b64}.{b64url(bytes(sig))}"
            case "alg_none":
                return build_compact({"alg": "none"}, payload, None)
            case "unknown_kid":
                key = self._attacker_key("unpublished")
                return build_compact(hdr | {"kid": key.kid}, payload, signer_for(self.alg, key))
            case "hs256_public_key":
                secret = self.public_pem()
                return build_compact(hdr | {"alg": "HS256"}, payload, hmac_signer("sha256", secret))
            case "embedded_jwk":
                key = self._attacker_key("attacker")
                public = key.as_dict(private=isinstance(key, jwk.OctKey))
                for member in ("kid", "alg", "use"):
                    public.pop(member, None)
                return build_compact(hdr | {"jwk": public}, payload, signer_for(self.alg, key))
            case "payload_swap":
                original = payload | {"sub": f"{payload.get('sub')}-original"}
                header_b64, _, sig_b64 = self.sign(hdr, original).split(".")
                return f"{header_b64}.{b64url(_json_bytes(payload))}.{sig_b64}"
            case _:
                raise ValueError(f"unknown tamper {tamper!r}; known: {', '.join(TAMPERS)}")
