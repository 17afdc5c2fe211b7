"""A JWKS / OIDC-discovery server for several test issuers, with failure modes on demand."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Literal, get_args

from aiohttp import web

from claimroute_tools.lab.echo import LoopbackServer
from claimroute_tools.lab.issuer import TestIssuer

log = logging.getLogger(__name__)

type Mode = Literal["ok", "error500", "slow", "garbage", "redirect_offsite"]
type Endpoint = Literal["jwks", "discovery"]
MODES: tuple[str, ...] = get_args(Mode.__value__)

GARBAGE = b"<html>this is not JSON {{{"
OFFSITE = "http://offsite.invalid"


@dataclass(slots=True)
class IssuerControl:
    """Live, mutable behaviour of one issuer's endpoints (read on every request)."""

    issuer: TestIssuer
    jwks_mode: Mode = "ok"
    discovery_mode: Mode = "ok"
    slow_seconds: float = 5.0
    issuer_override: str | None = None  # discovery doc's `issuer`, to test a mismatch
    jwks_hits: int = 0
    discovery_hits: int = 0


class JwksServer(LoopbackServer):
    """Serves `GET /<name>/jwks.json` and `GET /<name>/.well-known/openid-configuration`.

    JWKS are rendered from the issuer on every request, so `TestIssuer.rotate()` is visible at
    once. Modes (per issuer, changeable while running): "ok"; "error500"; "slow" (sleep
    `slow_seconds`, then answer normally); "garbage" (200 with a non-JSON body);
    "redirect_offsite" (302 to another host). Discovery issuers must be
    `discovery_issuer(name)`: pass `discovery=True` to `add()` to have it set for you.
    """

    def __init__(self, *issuers: TestIssuer) -> None:
        super().__init__()
        self._controls: dict[str, IssuerControl] = {}
        self._use_discovery_url: set[str] = set()
        for issuer in issuers:
            self.add(issuer)

    def add(self, issuer: TestIssuer, *, discovery: bool = False) -> IssuerControl:
        """Serve `issuer` under `/<issuer.name>/`. With `discovery`, `issuer.issuer` is set to
        `discovery_issuer(name)` (now if started, else at `start()`)."""
        if issuer.name in self._controls:
            raise ValueError(f"issuer {issuer.name!r} already served")
        control = IssuerControl(issuer)
        self._controls[issuer.name] = control
        if discovery:
            self._use_discovery_url.add(issuer.name)
            if self._port is not None:
                issuer.issuer = self.discovery_issuer(issuer.name)
        return control

    async def start(self) -> JwksServer:
        """Start serving (same port after a `stop()`)."""
        await super().start()
        for name in self._use_discovery_url:
            self._controls[name].issuer.issuer = self.discovery_issuer(name)
        return self

    def control(self, name: str) -> IssuerControl:
        """The mutable control record of issuer `name`."""
        try:
            return self._controls[name]
        except KeyError:
            raise KeyError(f"unknown issuer {name!r}; served: {sorted(self._controls)}") from None

    def set_mode(
        self,
        name: str,
        mode: Mode,
        *,
        slow_seconds: float | None = None,
        endpoint: Endpoint | None = None,
    ) -> None:
        """Change how issuer `name` answers: both endpoints, or only `endpoint` if given."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        control = self.control(name)
        if endpoint in (None, "jwks"):
            control.jwks_mode = mode
        if endpoint in (None, "discovery"):
            control.discovery_mode = mode
        if slow_seconds is not None:
            control.slow_seconds = slow_seconds

    def set_issuer_override(self, name: str, issuer: str | None) -> None:
        """Make the discovery document claim `issuer` (None restores the real one)."""
        self.control(name).issuer_override = issuer

    def hits(self, name: str, endpoint: Endpoint = "jwks") -> int:
        """How many requests issuer `name`'s `endpoint` has received (any mode)."""
        control = self.control(name)
        return control.jwks_hits if endpoint == "jwks" else control.discovery_hits

    def reset_hits(self) -> None:
        """Zero every counter."""
        for control in self._controls.values():
            control.jwks_hits = control.discovery_hits = 0

    def jwks_url(self, name: str) -> str:
        """`http://127.0.0.1:PORT/<name>/jwks.json`."""
        return f"{self.url}/{name}/jwks.json"

    def discovery_issuer(self, name: str) -> str:
        """The issuer URL that discovery requires: `http://127.0.0.1:PORT/<name>`."""
        return f"{self.url}/{name}"

    def discovery_url(self, name: str) -> str:
        """`<discovery_issuer>/.well-known/openid-configuration`."""
        return f"{self.discovery_issuer(name)}/.well-known/openid-configuration"

    def build_app(self) -> web.Application:
        """Routes for JWKS and discovery."""
        app = web.Application()
        app.router.add_get("/{name}/jwks.json", self._jwks)
        app.router.add_get("/{name}/.well-known/openid-configuration", self._discovery)
        return app

    def _lookup(self, request: web.Request) -> IssuerControl:
        control = self._controls.get(request.match_info["name"])
        if control is None:
            raise web.HTTPNotFound(text="unknown issuer")
        return control

    async def _jwks(self, request: web.Request) -> web.Response:
        control = self._lookup(request)
        control.jwks_hits += 1
        body = json.dumps(control.issuer.public_jwks()).encode()
        return await self._answer(request, control.jwks_mode, control, body)

    async def _discovery(self, request: web.Request) -> web.Response:
        control = self._lookup(request)
        control.discovery_hits += 1
        name = control.issuer.name
        doc = {
            "issuer": control.issuer_override or self.discovery_issuer(name),
            "jwks_uri": self.jwks_url(name),
            "id_token_signing_alg_values_supported": [control.issuer.alg],
        }
        body = json.dumps(doc).encode()
        return await self._answer(request, control.discovery_mode, control, body)

    async def _answer(
        self, request: web.Request, mode: Mode, control: IssuerControl, body: bytes
    ) -> web.Response:
        log.debug("%s %s -> mode %s", request.method, request.path, mode)
        match mode:
            case "error500":
                return web.Response(status=500, text="injected failure")
            case "garbage":
                return web.Response(body=GARBAGE, content_type="application/json")
            case "redirect_offsite":
                raise web.HTTPFound(f"{OFFSITE}{request.path}")
            case "slow":
                await asyncio.sleep(control.slow_seconds)
        return web.Response(body=body, content_type="application/json")
