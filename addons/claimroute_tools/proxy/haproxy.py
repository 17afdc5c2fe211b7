"""HAProxy in front of the proxy workers: its configuration (pure) and where to find it.

HAProxy runs in TCP mode: it passes each client connection, bytes untouched, to one worker, so
every HTTP detail (framing, TLS, h2) is still mitmproxy's and the addon's to judge, exactly as
with one process. A worker is checked by a TCP connect every `check_interval_ms`; one that
fails `fall` checks in a row gets no new connections until it passes `rise` again. With
`option redispatch` and `retries`, a connection whose worker refuses it (just died, restarting)
is retried on another worker instead of failing.

Behind HAProxy every worker sees HAProxy's loopback address as the client, so mitmproxy's Block
addon (`block_global`, on by default, and `block_private`) would let every client through. The
frontend applies the same rule to the real client address before a connection reaches a worker
(`client_acl`): loopback always passes; `block_private` refuses Python's private networks;
`block_global` refuses every address that is neither private nor shared, which is mitmproxy's
`is_global` or, for an address the lists miss, more (failing closed). Python changed its private
networks in 3.12.4 (gh-113171), so both versions' lists are applied: an address is refused if
mitmproxy would refuse it on either.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HAPROXY = Path("/usr/sbin/haproxy")
BALANCES = ("roundrobin", "leastconn")
INSTALL_HINT = "HAProxy not found: apt-get install haproxy (or put haproxy on PATH)"


@dataclass(frozen=True, slots=True)
class Backend:
    """One worker's address."""

    host: str
    port: int


def find_haproxy() -> Path | None:
    """`/usr/sbin/haproxy` (the Debian package), else `haproxy` on PATH, else None."""
    if HAPROXY.is_file():
        return HAPROXY
    found = shutil.which("haproxy")
    return Path(found) if found else None


def _bind_address(host: str, port: int) -> str:
    if ":" in host:  # an IPv6 literal
        return f"[{host}]:{port}"
    return f"{host or '*'}:{port}"


def _frontend_bind(host: str, port: int) -> str:
    """The frontend's bind: every interface, IPv4 and IPv6, for an empty host (as mitmproxy
    listens with `listen_host` empty), else that one address."""
    if not host:
        return f":::{port} v4v6"
    return _bind_address(host, port)


def _with_mapped(networks: tuple[str, ...]) -> tuple[str, ...]:
    """IPv4 networks plus their IPv4-mapped IPv6 spellings (mitmproxy unmaps ::ffff:a.b.c.d)."""
    mapped = []
    for network in networks:
        if ":" not in network:
            address, _, prefix = network.partition("/")
            mapped.append(f"::ffff:{address}/{96 + int(prefix or 32)}")
    return (*networks, *mapped)


# mitmproxy's Block addon (mitmproxy/addons/block.py) lets loopback through whatever the options.
LOCAL_NETWORKS = _with_mapped(("127.0.0.0/8", "::1/128"))
# Python's `is_private` networks, loopback apart, as CPython 3.12.0-3.12.3 has them. (Mapped
# ::ffff:0:0/96 is left out of both lists: mitmproxy unmaps such an address before judging it.)
PRIVATE_NETWORKS_OLD = _with_mapped((
    "0.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/29",
    "192.0.0.170/31", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "100::/64", "2001::/23", "2001:2::/48", "2001:db8::/32", "2001:10::/28",
    "fc00::/7", "fe80::/10",
))  # fmt: skip
# The same since CPython 3.12.4 and in 3.13/3.14 (gh-113171; 3fff::/20 from 3.14), ...
PRIVATE_NETWORKS_NEW = _with_mapped((
    "0.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.0.170/31", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "2002::/16",
    "3fff::/20", "fc00::/7", "fe80::/10",
))  # fmt: skip
# ... minus these exceptions, which those versions deem global (`_private_networks_exceptions`).
PRIVATE_EXCEPTIONS_NEW = _with_mapped((
    "192.0.0.9/32", "192.0.0.10/32",
    "2001:1::1/128", "2001:1::2/128", "2001:3::/32", "2001:4:112::/48", "2001:20::/28",
    "2001:30::/28",
))  # fmt: skip
# Neither private nor global (shared address space, RFC 6598) on every version.
SHARED_NETWORKS = _with_mapped(("100.64.0.0/10",))


def client_acl(*, block_global: bool, block_private: bool) -> str:
    """The frontend lines that refuse a client the way mitmproxy's Block addon would on ANY
    supported Python (the project allows >= 3.12, whose versions disagree on some networks):
    HAProxy refuses an address if mitmproxy refuses it on one of them (failing closed)."""
    lines = [
        f"    acl local_client src {' '.join(LOCAL_NETWORKS)}",
        f"    acl private_old src {' '.join(PRIVATE_NETWORKS_OLD)}",
        f"    acl private_new src {' '.join(PRIVATE_NETWORKS_NEW)}",
        f"    acl private_exception src {' '.join(PRIVATE_EXCEPTIONS_NEW)}",
        f"    acl shared_client src {' '.join(SHARED_NETWORKS)}",
    ]
    # Lines of one option are ORed: each is one Python version's reason to refuse.
    if block_private:
        lines += [
            "    tcp-request connection reject if !local_client private_old",
            "    tcp-request connection reject if !local_client private_new !private_exception",
        ]
    if block_global:
        lines += [
            "    tcp-request connection reject if !local_client !shared_client !private_old",
            "    tcp-request connection reject if !local_client !shared_client !private_new",
            "    tcp-request connection reject if !local_client !shared_client private_exception",
        ]
    return "\n".join(lines)


def render_config(
    listen_host: str,
    listen_port: int,
    backends: Sequence[Backend],
    *,
    balance: str = "roundrobin",
    check_interval_ms: int = 1000,
    fall: int = 2,
    rise: int = 1,
    retries: int = 3,
    maxconn: int = 4096,
    connect_timeout_ms: int = 5000,
    idle_timeout_s: int = 3600,
    block_global: bool = True,
    block_private: bool = False,
) -> str:
    """The HAProxy configuration: one TCP frontend on the listen address (refusing the clients
    mitmproxy's `block_global`/`block_private` would), one backend with a health-checked server
    per worker. Raises ValueError on an empty or odd input."""
    if not backends:
        raise ValueError("at least one backend is needed")
    if balance not in BALANCES:
        raise ValueError(f"balance {balance!r}: expected one of {', '.join(BALANCES)}")
    if not 0 <= listen_port <= 65535:
        raise ValueError(f"listen port {listen_port} out of range")
    for backend in backends:
        if not 0 < backend.port <= 65535:
            raise ValueError(f"backend port {backend.port} out of range")
        if any(c.isspace() for c in backend.host) or not backend.host:
            raise ValueError(f"backend host {backend.host!r} is not a plain address")
    if any(c.isspace() for c in listen_host):
        raise ValueError(f"listen host {listen_host!r} is not a plain address")
    servers = "\n".join(
        f"    server worker{index} {_bind_address(b.host, b.port)} "
        f"check inter {check_interval_ms} fall {fall} rise {rise}"
        for index, b in enumerate(backends, 1)
    )
    # Idle timeouts are long: a keep-alive client connection is one TCP session through
    # HAProxy, and mitmproxy closes idle connections itself.
    return f"""\
# Generated by claimroute proxy --workers; regenerated at every start.
global
    maxconn {maxconn}

defaults
    mode tcp
    option redispatch
    retries {retries}
    timeout connect {connect_timeout_ms}ms
    timeout client {idle_timeout_s}s
    timeout server {idle_timeout_s}s

frontend claimroute
    bind {_frontend_bind(listen_host, listen_port)}
{client_acl(block_global=block_global, block_private=block_private)}
    default_backend workers

backend workers
    balance {balance}
{servers}
"""
