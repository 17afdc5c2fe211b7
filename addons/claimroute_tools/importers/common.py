"""Shared pieces of the importers: multi-document YAML with lines, the report, YAML output.

Every value read from a source file comes with its `Loc` (file, key path, line), so whatever an
importer cannot express is reported at its place, and every malformed input is an error naming
file and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claimroute.config.source import Loc, parse_yaml_text
from claimroute.errors import PolicyError
from claimroute.match.claimpath import format_claim_path


class ImportFailure(Exception):
    """Malformed or unusable input: the import stops (exit 2) with this message."""

    def __init__(self, message: str, loc: Loc | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc

    def __str__(self) -> str:
        return f"{where(self.loc)}: {self.message}" if self.loc is not None else self.message


def line_of(loc: Loc) -> int | None:
    """`loc.line`, or for a document's root without a line its first node's."""
    if not loc.path and loc.path not in loc.lines:
        return min(loc.lines.values(), default=None)
    return loc.line


def where(loc: Loc) -> str:
    """`file:line: key.path` (line and key path when known)."""
    line = line_of(loc)
    text = loc.file if line is None else f"{loc.file}:{line}"
    return f"{text}: {loc.key_path}" if loc.key_path else text


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing of the source that the policy does not express (or expresses with a caveat)."""

    loc: Loc
    message: str
    unsupported: bool  # True: meaning lost (fails --strict); False: a note

    def __str__(self) -> str:
        label = "not translated" if self.unsupported else "note"
        return f"{where(self.loc)}: {label}: {self.message}"


@dataclass
class Report:
    """What the import could not express, in source order."""

    findings: list[Finding] = field(default_factory=list)

    def unsupported(self, loc: Loc, message: str) -> None:
        self.findings.append(Finding(loc, message, True))

    def note(self, loc: Loc, message: str) -> None:
        self.findings.append(Finding(loc, message, False))

    @property
    def has_unsupported(self) -> bool:
        return any(f.unsupported for f in self.findings)


# --- reading ---------------------------------------------------------------------------------

_DOC_START = re.compile(r"^---(?=\s|$)")
_DOC_END = re.compile(r"^\.\.\.(?=\s|$)")


def split_documents(text: str) -> list[tuple[int, str]]:
    """The documents of a YAML stream: (index of the first line, text of the document).

    A `---` or `...` at the start of a line always ends a document in YAML (even a block
    scalar), so splitting on them is exact. Content after `---` on its line is kept.
    """
    docs: list[tuple[int, str]] = []
    start, current = 0, []
    for number, line in enumerate(text.splitlines()):
        if _DOC_START.match(line):
            docs.append((start, "\n".join(current)))
            start, current = number, ["   " + line[3:]]
        elif _DOC_END.match(line):
            docs.append((start, "\n".join(current)))
            start, current = number + 1, []
        else:
            current.append(line)
    docs.append((start, "\n".join(current)))
    return docs


def load_documents(path: str | Path) -> list[tuple[Any, Loc]]:
    """Every non-empty document of a (multi-document) YAML file with its root `Loc`.

    Each document is parsed by the project's loader with blank lines in front, so its line
    numbers are those of the file. A Kubernetes `List` contributes its items.
    """
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImportFailure(f"cannot read file: {exc.strerror}", Loc(name)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ImportFailure("file is not UTF-8", Loc(name)) from None
    out: list[tuple[Any, Loc]] = []
    for first_line, chunk in split_documents(text):
        if not chunk.strip() or all(
            not ln.strip() or ln.lstrip().startswith("#") for ln in chunk.splitlines()
        ):
            continue
        try:
            value, loc = parse_yaml_text("\n" * first_line + chunk, name)
        except PolicyError as exc:
            raise ImportFailure(str(exc)) from None
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ImportFailure(
                f"expected a Kubernetes resource (a mapping), got {kind_of(value)}", loc
            )
        if value.get("kind") == "List" and isinstance(value.get("items"), list):
            for index, item in enumerate(value["items"]):
                item_loc = loc / "items" / index
                if not isinstance(item, dict):
                    raise ImportFailure("a List item must be a mapping", item_loc)
                out.append((item, item_loc))
        else:
            out.append((value, loc))
    return out


def kind_of(value: Any) -> str:
    """A type name for messages."""
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def mapping(value: Any, loc: Loc, what: str = "") -> dict[str, Any]:
    """`value` as a mapping (None counts as empty), else an ImportFailure."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ImportFailure(f"{what or 'this'} must be a mapping, got {kind_of(value)}", loc)
    return value


def sequence(value: Any, loc: Loc, what: str = "") -> list[Any]:
    """`value` as a list (None counts as empty), else an ImportFailure."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ImportFailure(f"{what or 'this'} must be a list, got {kind_of(value)}", loc)
    return value


def string(value: Any, loc: Loc, what: str = "") -> str:
    """`value` as a non-empty string, else an ImportFailure."""
    if not isinstance(value, str) or not value:
        raise ImportFailure(
            f"{what or 'this'} must be a non-empty string, got {kind_of(value)}", loc
        )
    return value


def string_list(value: Any, loc: Loc, what: str = "") -> list[str]:
    """A list of non-empty strings."""
    items = sequence(value, loc, what)
    return [string(item, loc / index, what) for index, item in enumerate(items)]


def resource_kind(doc: dict[str, Any], loc: Loc) -> tuple[str, str, str]:
    """(group of apiVersion, kind, metadata.name) of a Kubernetes resource."""
    api = doc.get("apiVersion")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ImportFailure("not a Kubernetes resource: no kind", loc)
    if not isinstance(api, str) or not api:
        raise ImportFailure(f"{kind} has no apiVersion", loc)
    meta = mapping(doc.get("metadata"), loc / "metadata", "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        name = kind.lower()
    return api.split("/")[0], kind, name


# --- claim paths and durations ---------------------------------------------------------------


def claim_path(segments: list[str], loc: Loc) -> str:
    """A claimroute claim path (`a.b`, `[kubernetes.io].namespace`) for these segments."""
    for segment in segments:
        if not segment or "[" in segment or "]" in segment:
            raise ImportFailure(f"claim name {segment!r} cannot be written as a claim path", loc)
    return format_claim_path(tuple(segments))


def duration(value: Any, loc: Loc) -> str:
    """A protobuf Duration (`"300s"`, `{seconds: 300}`) or a Go duration as claimroute text."""
    if isinstance(value, dict):
        seconds = value.get("seconds", 0)
        nanos = value.get("nanos", 0)
        if isinstance(seconds, str) and seconds.isdigit():
            seconds = int(seconds)
        if not isinstance(seconds, int) or not isinstance(nanos, int):
            raise ImportFailure("a duration needs integer seconds and nanos", loc)
        return f"{seconds * 1000 + nanos // 1_000_000}ms" if nanos else f"{seconds}s"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value}s"
    if isinstance(value, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?(ms|s|m|h)", value.strip()):
        return value.strip()
    raise ImportFailure(f"cannot read duration {value!r} (expected e.g. 300s or 5m)", loc)


# --- YAML output -----------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@:+-]*")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n"}


def scalar(value: Any) -> str:
    """A YAML 1.2 scalar: plain where unambiguous, else a JSON (double-quoted) string."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED and not text.endswith(":"):
        return text
    return json.dumps(text, ensure_ascii=False)


def _block_text(text: str) -> bool:
    return (
        "\n" in text
        and not text.startswith((" ", "\n"))
        and all(ch == "\n" or ch.isprintable() for ch in text)
        and not any(line.endswith(" ") for line in text.split("\n"))
    )


def _lines(value: Any, indent: int) -> list[str]:
    """Block-style lines of a non-empty mapping or list, at `indent` spaces."""
    pad = " " * indent
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            head = f"{pad}{scalar(key)}:"
            if isinstance(item, dict | list) and item:
                out.append(head)
                out.extend(_lines(item, indent + 2))
            elif isinstance(item, str) and _block_text(item) and not item.endswith("\n\n"):
                out.append(f"{head} |" + ("" if item.endswith("\n") else "-"))
                out.extend(
                    (" " * (indent + 2) + line) if line else ""
                    for line in item.rstrip("\n").split("\n")
                )
            else:
                out.append(f"{head} {_inline(item)}")
        return out
    for item in value:
        if isinstance(item, dict) and item:
            inner = _lines(item, indent + 2)
            out.append(pad + "- " + inner[0][indent + 2 :])
            out.extend(inner[1:])
        else:
            out.append(pad + "- " + _inline(item))
    return out


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}" if not value else json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[]" if not value else json.dumps(value, ensure_ascii=False)
    return scalar(value)


def to_yaml(document: dict[str, Any], header: list[str] = ()) -> str:  # type: ignore[assignment]
    """The policy as block-style YAML text, with `header` lines as comments on top."""
    out = [f"# {line}".rstrip() for line in header]
    out.extend(_lines(document, 0))
    return "\n".join(out) + "\n"


# --- upstreams -------------------------------------------------------------------------------

_URL = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[^\s/?#@\[\]:]+)(:[0-9]{1,5})?/?", re.I)


def parse_upstreams(items: list[str]) -> dict[str, str]:
    """`--upstream NAME=URL` arguments; ImportFailure on a malformed one."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, url = item.partition("=")
        # A subset name holds `=` inside brackets: split at the first `=` after a `]`.
        if "[" in name and "]" not in name:
            close = item.find("]")
            if close != -1 and item[close + 1 : close + 2] == "=":
                name, sep, url = item[: close + 1], "=", item[close + 2 :]
        name, url = name.strip(), url.strip()
        if not sep or not name or not url:
            raise ImportFailure(f"--upstream {item!r}: expected NAME=URL")
        if not _URL.fullmatch(url):
            raise ImportFailure(f"--upstream {item!r}: the URL must be http(s)://host[:port]")
        out[name] = url.rstrip("/")
    return out
