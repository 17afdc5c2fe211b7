"""Shared pieces for end-to-end tests: real mitmdump, real aiohttp upstreams, real tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest


@dataclass
class Reply:
    """What the client saw."""

    status: int
    text: str
    headers: dict[str, str]

    @property
    def upstream(self) -> str | None:
        """The upstream's own name, from its own answer (None when the proxy answered)."""
        if self.status != 200:
            return None
        try:
            return json.loads(self.text).get("upstream")
        except ValueError:
            return None

    @property
    def seen_headers(self) -> dict[str, str]:
        """The request headers as the upstream received them."""
        return json.loads(self.text)["headers"]


async def send(
    proxy_url: str, url: str, *, token: str | None = None, method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Reply:  # fmt: skip
    """One request through the proxy in regular proxy mode, on a fresh connection."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    timeout = aiohttp.ClientTimeout(total=15)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, headers=all_headers, proxy=proxy_url) as response,
    ):
        text = await response.text()
        return Reply(response.status, text, {k.lower(): v for k, v in response.headers.items()})


def write(path: Path, text: str) -> Path:
    """Write a file and return its path."""
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _quiet_joserfc_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*EdDSA.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield
