"""Who served a request, by the upstream's own word, and the start-up probe that checks it.

An answer names its upstream in one of three ways, read in this order:

1. `served_by` (the scenario's top-level key, for url upstreams): a response header or a
   field of the JSON body, its value mapped to an upstream name by `served_by.values`;
2. the `x-upstream` header (echo upstreams, and any service that sends it);
3. the echo JSON body's `upstream` field.

Where an answer names nobody (a proxy refusal, an error page without the header), the
decision log decides for url upstreams (traffic.attribute_routes); this module only reads
answers. `probe_upstreams` asks every upstream directly (not through the proxy) before any
traffic: it must answer, and what it says must name itself; `probe_proxy` checks that the
proxy answers as an HTTP proxy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from claimroute.errors import PolicyError
from claimroute_tools.scenario.model import ServedBy, UpstreamSpec, upstream_origin

PROBE_TIMEOUT = 10.0  # seconds per probe request
PROBE_HEADER = "x-claimroute-scenario-probe"  # marks probes in the upstreams' own logs


class ProbeFailed(RuntimeError):
    """An upstream or the proxy did not answer the probe (infrastructure: exit code 3)."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one upstream answered the probe."""

    name: str
    url: str
    status: int
    said: str | None  # the raw word (served_by value, or x-upstream), None: it said nothing
    names: str | None  # the upstream that word names

    @property
    def self_naming(self) -> bool:
        """True when its answers say who it is (attribution needs no decision log)."""
        return self.names == self.name


def _json_field(body: bytes, path: tuple[str, ...]) -> str | None:
    try:
        value: Any = json.loads(body)
    except ValueError:
        return None
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    return None


def served_word(
    headers: Mapping[str, str], content_type: str, body: bytes, served_by: ServedBy | None
) -> tuple[str | None, str | None]:
    """(what the answer says about who served it, the upstream that names) by the order in
    the module docstring; (None, None) when it says nothing. A served_by value that maps to
    no upstream gives (value, None)."""
    if served_by is not None:
        if served_by.header is not None:
            word = headers.get(served_by.header)
        else:
            word = _json_field(body, served_by.json or ()) if "json" in content_type else None
        if word is not None:
            return word, served_by.name_for(word)
    name = headers.get("x-upstream")
    if name:
        return name, name
    if content_type == "application/json":
        found = _json_field(body, ("upstream",))
        if found:
            return found, found
    return None, None


def read_answer(
    response: aiohttp.ClientResponse, body: bytes, served_by: ServedBy | None = None
) -> str | None:
    """The upstream that answered `response`, by its own word, or None."""
    return served_word(response.headers, response.content_type, body, served_by)[1]


def url_key(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an upstream URL, so `http://localhost:80/` matches
    `http://127.0.0.1` as the addon logs it; None for something that is no URL."""
    return upstream_origin(url)


def name_by_url(urls: Mapping[str, str]) -> dict[tuple[str, str, int], str]:
    """Upstream URL -> name, keyed by `url_key`."""
    return {key: name for url, name in urls.items() if (key := url_key(url)) is not None}


def _mismatch(spec: UpstreamSpec, message: str) -> PolicyError:
    if spec.loc is not None:
        return spec.loc.error(message)
    return PolicyError(message, file="<scenario>", key_path=f"upstreams.{spec.name}", line=None)


async def probe_upstreams(
    specs: tuple[UpstreamSpec, ...],
    urls: Mapping[str, str],
    served_by: ServedBy | None,
    timeout: float = PROBE_TIMEOUT,
) -> dict[str, ProbeResult]:
    """GET each upstream's probe path directly; every one must answer, and if it says who
    served it, that must be itself.

    Raises ProbeFailed when one does not answer (exit 3), PolicyError (at the upstream's line
    in the scenario, exit 2) when it names another upstream or a value served_by does not map.
    """
    out: dict[str, ProbeResult] = {}
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout, trust_env=False) as session:
        for spec in specs:
            url = urls[spec.name]
            try:
                async with session.get(url + spec.probe, headers={PROBE_HEADER: "1"}) as response:
                    body = await response.read()
                    said, names = served_word(
                        response.headers, response.content_type, body, served_by
                    )
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise ProbeFailed(
                    f"upstream {spec.name} ({url}) does not answer: {type(exc).__name__}: {exc}"
                ) from None
            if said is not None and names != spec.name:
                where = served_by.source if served_by is not None else "header x-upstream"
                named = f"which names {names}" if names is not None else "which names no upstream"
                mapping = ""
                if served_by is not None and served_by.values is not None:
                    mapping = (
                        " (served_by.values: "
                        + ", ".join(f"{k} -> {v}" for k, v in served_by.values.items())
                        + ")"
                    )
                raise _mismatch(
                    spec,
                    f"upstream {spec.name} ({url}{spec.probe}) answered with {where}: {said}, "
                    f"{named}{mapping}; is the URL or served_by wrong?",
                )
            out[spec.name] = ProbeResult(spec.name, url, status, said, names)
    return out


async def probe_proxy(proxy_url: str, target_url: str, timeout: float = PROBE_TIMEOUT) -> int:
    """One request through the proxy (no token) to `target_url`; returns the HTTP status.
    Raises ProbeFailed when the proxy does not answer."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=client_timeout, trust_env=False) as session,
            session.get(target_url + "/", proxy=proxy_url, headers={PROBE_HEADER: "1"}) as resp,
        ):
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ProbeFailed(
            f"the proxy at {proxy_url} does not answer: {type(exc).__name__}: {exc}"
        ) from None


__all__ = [
    "ProbeFailed",
    "ProbeResult",
    "name_by_url",
    "probe_proxy",
    "probe_upstreams",
    "read_answer",
    "served_word",
    "url_key",
]
