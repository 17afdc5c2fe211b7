"""`claimroute-dev`: make a key pair and mint tokens for local experiments and the README.

    claimroute-dev keygen --alg RS256 --out keys/
    claimroute-dev mint --key keys/private.jwk.json --iss https://idp.local --sub alice \\
        --aud orders-api --claim org=solo.io --claim roles='["reader"]'
    claimroute-dev echo --name primary --port 9001

Development only: the private key is written to disk in the clear.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import JWKRegistry

from claimroute_tools.lab.issuer import generate_key


def _keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = generate_key(args.alg, args.kid)
    private = key.as_dict(private=True)
    private["alg"] = args.alg
    (out / "private.jwk.json").write_text(json.dumps(private, indent=2) + "\n")
    public = key.as_dict(private=args.alg.startswith("HS"))
    public["alg"] = args.alg
    (out / "jwks.json").write_text(json.dumps({"keys": [public]}, indent=2) + "\n")
    print(f"wrote {out / 'jwks.json'} (give this to the proxy) and {out / 'private.jwk.json'}")
    return 0


def _claim_value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def sign_with_jwk(data: dict[str, Any], alg: str, claims: dict[str, Any], ttl: int) -> str:
    """A JWT signed with the private JWK `data` (as `keygen` writes it): `iat` now, `exp` in
    `ttl` seconds (unless `claims` give them), the key's `kid` in the header."""
    key = JWKRegistry.import_key(data)
    now = int(time.time())
    payload = {"iat": now, "exp": now + ttl, **claims}
    header = {"alg": alg, "typ": "JWT"}
    if data.get("kid"):
        header["kid"] = data["kid"]
    return jwt.encode(header, payload, key, algorithms=[alg])


def _mint(args: argparse.Namespace) -> int:
    data = json.loads(Path(args.key).read_text())
    claims: dict[str, Any] = {"iss": args.iss}
    if args.sub:
        claims["sub"] = args.sub
    if args.aud:
        claims["aud"] = args.aud
    for item in args.claim:
        name, _, value = item.partition("=")
        claims[name] = _claim_value(value)
    print(sign_with_jwk(data, data.get("alg") or args.alg, claims, args.ttl))
    return 0


def _echo(args: argparse.Namespace) -> int:
    import asyncio

    from claimroute_tools.lab.echo import EchoUpstream

    async def serve() -> None:
        server = EchoUpstream(args.name, port=args.port)
        await server.start()
        print(f"echo upstream {args.name!r} on {server.url} (Ctrl-C stops it)", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


def main(argv: list[str] | None = None, prog: str = "claimroute-dev") -> int:
    """Entry point of `claimroute-dev` (and of `claimroute keygen|mint|echo`)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="make a key pair and its public JWKS")
    keygen.add_argument("--alg", default="RS256")
    keygen.add_argument("--kid", default="dev-1")
    keygen.add_argument("--out", default="keys")
    keygen.set_defaults(run=_keygen)
    mint = commands.add_parser("mint", help="mint a signed JWT")
    mint.add_argument("--key", required=True, help="private JWK written by keygen")
    mint.add_argument("--alg", default="RS256")
    mint.add_argument("--iss", required=True)
    mint.add_argument("--sub")
    mint.add_argument("--aud")
    mint.add_argument("--ttl", type=int, default=600, help="seconds until exp")
    mint.add_argument("--claim", action="append", default=[], help="NAME=VALUE (JSON or text)")
    mint.set_defaults(run=_mint)
    echo = commands.add_parser("echo", help="an upstream that answers with what it received")
    echo.add_argument("--name", default="primary")
    echo.add_argument("--port", type=int, default=0)
    echo.set_defaults(run=_echo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
