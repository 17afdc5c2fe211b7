"""Host names as host rules compare them: one spelling per host, numeric ones included.

A rule compares text, but the operating system resolves a name: `127.1`, `2130706433`,
`0x7f000001`, `0177.0.0.1` and `[::ffff:127.0.0.1]` all connect to 127.0.0.1. So rules and
requests are both brought to one canonical form before they are compared: lower case, no port,
no final dot, and a numeric address in the form `ipaddress` prints (IPv4-mapped IPv6 as the
IPv4 address it maps).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket

# What `inet_aton` might read as an IPv4 address: digits, dots and hexadecimal with `0x`.
# Only such names are handed to it (it also accepts trailing whitespace and garbage).
_IPV4_LIKE = re.compile(r"[0-9a-fx.]+")
# A Host value (RFC 9110 §7.2: uri-host [":" port]): reg-name, IPv4 or a bracketed IP literal.
# Userinfo (`u@host`), whitespace, commas, paths and anything else are refused with 400.
# Percent-escapes are refused too: an upstream that decodes them would see another name.
_HOST_VALUE = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+;=]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")


def _address(name: str) -> str | None:
    """The canonical text of a numeric host, or None when `name` is not one."""
    if _IPV4_LIKE.fullmatch(name) and any(ch.isdigit() for ch in name):
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(
                socket.inet_aton(name)
            )
        except OSError:
            return None
    elif ":" in name:
        try:
            address = ipaddress.IPv6Address(name)
        except ValueError:
            return None
        address = address.ipv4_mapped or address
    else:
        return None
    # A connection to the "any" address (0.0.0.0, ::) reaches this machine's loopback.
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "::1"
    return str(address) if address.version == 4 else address.compressed


# Host names repeat from request to request: each spelling is worked out once (a client sending
# many distinct names only evicts entries, which costs speed, never correctness).
@functools.lru_cache(maxsize=4096)
def canonical_host(value: str) -> str:
    """A host (with or without port, brackets or final dot) as rules compare it.

    `Admin.Example.:8080` -> `admin.example`; `127.1`, `2130706433`, `0x7f000001` and
    `[::ffff:127.0.0.1]` -> `127.0.0.1`; `[::1]:80` -> `::1`.
    """
    name = value.strip()
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    name = name.lower().rstrip(".")
    return _address(name) or name


@functools.lru_cache(maxsize=4096)
def host_value_problem(value: str) -> str | None:
    """Why a Host value (or authority) is not a valid `host[:port]`, or None when it is."""
    if "@" in value:
        return "userinfo in the host"
    if not _HOST_VALUE.fullmatch(value):
        return "invalid host"
    return None
