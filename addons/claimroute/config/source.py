"""YAML loading that keeps line numbers, so every load error can point at its line.

Files are parsed by libyaml's C parser (`yamlload`), which builds plain Python values and a side
table of lines keyed by the path of each node; `Loc` walks that table as a parser descends into
the document. The reference is ruamel.yaml's round-trip loader (YAML 1.2, positions, duplicate
keys rejected) followed by `_plain`: the fast path reproduces its values and lines, and hands
every document it does not cover (syntax errors, tags, merge keys, non-string or duplicate keys,
...) to it, so those keep ruamel's results and messages. Without libyaml everything goes the
ruamel way.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer as RoundTripComposer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, NodeEvent
from ruamel.yaml.parser import RoundTripParser
from ruamel.yaml.scanner import Scanner

from claimroute.config import yamlload
from claimroute.errors import PolicyError

PathKey = tuple[str | int, ...]

MAX_FILE_BYTES = 4 * 1024 * 1024  # a policy is hand-written; anything bigger is a mistake
# Bounds checked on the YAML event stream before anything is built. Aliases count as the nodes
# they stand for, so an alias bomb ("billion laughs": ten aliases of ten aliases of ...) is
# refused after reading a few lines instead of expanding into 10**9 values. The depth bound
# also keeps ruamel's scanner (quadratic in the flow nesting level) and its recursive composer
# away from pathological nesting.
MAX_NODES = 100_000
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Loc:
    """Where a value sits in its file: file name, path from the root and the line table."""

    file: str
    path: PathKey = ()
    lines: Mapping[PathKey, int] = field(default_factory=dict, compare=False, repr=False)

    def __truediv__(self, key: str | int) -> Loc:
        return Loc(self.file, (*self.path, key), self.lines)

    @property
    def line(self) -> int | None:
        """1-based line of this node, or of its closest ancestor that has one."""
        path = self.path
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    @property
    def key_path(self) -> str:
        """Dotted key path, e.g. `providers.corp.jwks` or `routes[0].split.to[1]`."""
        out = ""
        for part in self.path:
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                out += f".{part}" if out else str(part)
        return out

    def error(self, message: str) -> PolicyError:
        """A PolicyError for this location (raise it)."""
        return PolicyError(message, file=self.file, key_path=self.key_path, line=self.line)


def _plain(node: Any, path: PathKey, lines: dict[PathKey, int]) -> Any:
    if isinstance(node, CommentedMap | CommentedSeq):
        # Tagged scalars are refused below; a tag on a list or mapping would be dropped
        # silently (`!!python/object/apply:... [..]` would read as a plain list): refuse it too.
        tag = getattr(getattr(node, "tag", None), "value", None)
        if tag is not None:
            raise ValueError(f"unsupported YAML tag {tag!r}")
    if isinstance(node, CommentedMap):
        out = {}
        for key, value in node.items():
            if not isinstance(key, str | int | bool | float) or isinstance(key, bool):
                raise ValueError(f"unsupported mapping key {key!r}")
            key = str(key)
            child = (*path, key)
            with contextlib.suppress(KeyError, TypeError):
                lines[child] = node.lc.key(key)[0] + 1
            out[key] = _plain(value, child, lines)
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for index, value in enumerate(node):
            child = (*path, index)
            with contextlib.suppress(KeyError, TypeError, IndexError):
                lines[child] = node.lc.item(index)[0] + 1
            out_list.append(_plain(value, child, lines))
        return out_list
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, datetime.date):
        return node.isoformat()
    raise ValueError(f"unsupported YAML value {node!r}")


class _ShapeCheck:
    """Refuse documents that are too deep, or too big once aliases are expanded.

    Fed the event stream as the composer consumes it, so a collection is checked before the
    composer descends into it and nothing is expanded yet; every anchor remembers the size and
    height of what it names, and an alias adds exactly those, as `_plain` would expand it.
    """

    __slots__ = ("file", "frames", "nodes", "sizes")

    def __init__(self, file: str) -> None:
        self.file = file
        self.nodes = 0
        # One frame per open collection: [anchor, nodes before it, its level, deepest inside]
        self.frames: list[list[Any]] = []
        self.sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, levels) it stands for

    def _reached(self, level: int, event: Any) -> None:
        if level > MAX_DEPTH:
            raise yamlload.too_deep(_line(event.start_mark), MAX_DEPTH, self.file)
        frames = self.frames
        if frames and level > frames[-1][3]:
            frames[-1][3] = level

    def see(self, event: Any) -> None:
        frames = self.frames
        if isinstance(event, AliasEvent):
            if event.anchor not in self.sizes:
                raise yamlload.yaml_error(
                    _line(event.start_mark),
                    f"alias *{event.anchor} is used inside the node it names",
                    self.file,
                )
            size, height = self.sizes[event.anchor]
            self.nodes += size
            self._reached(len(frames) + height, event)
        elif isinstance(event, CollectionStartEvent):
            self.nodes += 1
            level = len(frames) + 1
            self._reached(level, event)
            frames.append([event.anchor, self.nodes - 1, level, level])
        elif isinstance(event, CollectionEndEvent):
            anchor, before, level, deepest = frames.pop()
            if anchor is not None:
                self.sizes[anchor] = (self.nodes - before, deepest - level + 1)
            if frames and deepest > frames[-1][3]:
                frames[-1][3] = deepest
        elif isinstance(event, NodeEvent):  # a scalar
            self.nodes += 1
            if event.anchor is not None:
                self.sizes[event.anchor] = (1, 0)
        if self.nodes > MAX_NODES:
            raise yamlload.too_many(_line(event.start_mark), MAX_NODES, self.file)


class _CheckedParser(RoundTripParser):
    """The round-trip parser with the shape check on every event the composer takes.

    The document is scanned once: the check runs as the composer consumes events, before it
    descends into a collection, so its bounds still hold before anything deep or big is built.
    The hot properties of ruamel's pure parser are looked up once instead of per token.
    """

    shape: _ShapeCheck | None = None

    @functools.cached_property
    def scanner(self) -> Any:  # type: ignore[override]
        return self.loader.scanner

    def get_event(self) -> Any:
        event = super().get_event()
        if self.shape is not None:
            self.shape.see(event)
        return event


class _Composer(RoundTripComposer):  # type: ignore[misc]
    @functools.cached_property
    def parser(self) -> Any:  # type: ignore[override]
        return self.loader.parser

    @functools.cached_property
    def resolver(self) -> Any:  # type: ignore[override]
        return self.loader.resolver


def _loader(file: str) -> YAML:
    """A YAML loader that keeps positions (round-trip constructor, which also rejects duplicate
    keys) and checks the document's shape on the fly.

    It uses the plain scanner: the round-trip scanner also gathers comments, which nothing here
    reads and which cost more than half of the scan.
    """
    yaml = YAML(typ="rt", pure=True)
    yaml.Scanner = Scanner
    yaml.Parser = _CheckedParser
    yaml.Composer = _Composer
    yaml.parser.shape = _ShapeCheck(file)
    return yaml


def _line(mark: Any) -> int | None:
    """The 1-based line of a ruamel mark, if there is one."""
    return mark.line + 1 if mark is not None else None


def parse_yaml_text(text: str, file: str) -> tuple[Any, Loc]:
    """Parse YAML text into plain values and the root `Loc`; errors name file and line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise PolicyError(
            f"file is larger than {MAX_FILE_BYTES} bytes", file=file, key_path="", line=None
        )
    try:
        value, lines = yamlload.load(text, file, max_nodes=MAX_NODES, max_depth=MAX_DEPTH)
    except yamlload.Unsupported:
        value, lines = _parse_with_ruamel(text, file)
    return value, Loc(file, (), lines)


def _parse_with_ruamel(text: str, file: str) -> tuple[Any, dict[PathKey, int]]:
    """The reference path: ruamel's round-trip loader with the shape check, then `_plain`."""
    try:
        raw = _loader(file).load(text)
    except MarkedYAMLError as exc:
        problem = exc.problem or exc.context or "invalid YAML"
        raise yamlload.yaml_error(
            _line(exc.problem_mark or exc.context_mark), problem, file
        ) from None
    except PolicyError:  # from the shape check
        raise
    # ValueError, IndexError, TypeError: e.g. a date ruamel cannot build
    except (YAMLError, RecursionError, ValueError, IndexError, TypeError) as exc:
        raise yamlload.yaml_error(None, str(exc), file) from None
    lines: dict[PathKey, int] = {}
    try:
        value = _plain(raw, (), lines)
    except (ValueError, RecursionError) as exc:
        raise PolicyError(str(exc), file=file, key_path="", line=None) from None
    return value, lines


# What a reload compares: (mtime, size, inode, ctime) of a file, or None when it cannot be read.
# The inode catches an atomic replacement (rename) that keeps mtime and size.
Stamp = tuple[int, int, int, int] | None


def file_stamp(path: str | Path) -> Stamp:
    """The file's stamp now (see `Stamp`)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns)


def read_file(path: str | Path) -> tuple[bytes, Stamp]:
    """The file's bytes and its stamp taken just before reading them.

    A change that lands during or after the read gives the file another stamp, so a watcher
    that records this one sees the change at its next look. Raises OSError.
    """
    stamp = file_stamp(path)
    return Path(path).read_bytes(), stamp


def read_document_file(path: str | Path) -> tuple[bytes, Stamp]:
    """`read_file`, with a missing or unreadable file as a PolicyError naming it."""
    try:
        return read_file(path)
    except OSError as exc:
        raise PolicyError(
            f"cannot read file: {exc.strerror}", file=str(path), key_path="", line=None
        ) from None


def parse_yaml_bytes(data: bytes, file: str) -> tuple[Any, Loc]:
    """Decode (UTF-8) and parse a file's bytes; errors name `file`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("file is not UTF-8", file=file, key_path="", line=None) from None
    return parse_yaml_text(text, file)


def load_yaml_file(path: str | Path) -> tuple[Any, Loc]:
    """Read and parse a YAML file; a missing or unreadable file is a PolicyError too."""
    data, _ = read_document_file(path)
    return parse_yaml_bytes(data, str(path))
