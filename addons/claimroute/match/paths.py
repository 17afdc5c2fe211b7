"""Request paths as rules match them: escapes decoded as an upstream decodes them, dot
segments resolved."""

from __future__ import annotations

import re

_DOUBLE_SLASH = re.compile(r"/{2,}")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# Escapes decoded before matching: the unreserved characters (RFC 3986 §2.3, whose escaped and
# plain forms are the same path, §6.2.2.2) and the two separators an upstream may decode,
# `/` and `\`. Others (`%25`, `%00`, `%20`, ...) stay as written, so nothing is decoded twice.
_DECODED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/\\")


def _decode_escape(match: re.Match[str]) -> str:
    code = int(match.group(1), 16)
    return chr(code) if code in _DECODED else match.group(0).upper()


def normalize_path(path: str) -> str:
    """The path the rules match on (RFC 3986 §6.2.2): escaped unreserved characters, `%2F` and
    `%5C` decoded, `\\` read as `/`, `//` merged and `.`/`..` segments resolved (§5.2.4).

    Without this, `/api/pets/../admin`, `/%61dmin` or `/api/..%2Fadmin` would dodge a rule on
    `/admin` while an upstream that normalises or decodes the path serves `/admin`. The
    upstream still receives the original path.
    """
    if "%" in path:
        path = _ESCAPE.sub(_decode_escape, path)
    if "\\" in path:
        path = path.replace("\\", "/")
    if "//" not in path and "/." not in path:
        return path
    path = _DOUBLE_SLASH.sub("/", path)
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    trailing = path.endswith(("/.", "/..")) and out
    return "/" + "/".join(out) + ("/" if trailing else "")
