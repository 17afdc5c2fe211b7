"""The fast YAML path: libyaml's C parser (through PyYAML), values built here from its events.

`source.parse_yaml_text` tries this first. It reproduces what the ruamel.yaml round-trip loader
plus `source._plain` give (YAML 1.2 core schema as ruamel resolves it, the same line table, the
same shape bounds checked on the same events), and it covers every document a policy is made of:
one document of mappings with string keys, sequences, scalars, anchors and aliases. For anything
else it raises `Unsupported` and the caller loads the text with ruamel, so the rare cases (syntax
errors, explicit tags, merge keys, non-string or duplicate keys, directives other than
`%YAML 1.2`, NEL/LS/PS characters that libyaml counts as line breaks and YAML 1.2 does not) keep
ruamel's exact results and messages.

Shape errors (alias bombs, nesting deeper than the bound) are raised here, as a located
PolicyError, from the event stream before anything big or deep is built.
"""

from __future__ import annotations

import datetime
import logging
import re
from typing import Any

from claimroute.errors import PolicyError

try:
    import yaml
    from yaml.events import (
        AliasEvent,
        DocumentEndEvent,
        DocumentStartEvent,
        MappingEndEvent,
        MappingStartEvent,
        ScalarEvent,
        SequenceEndEvent,
        SequenceStartEvent,
        StreamEndEvent,
    )

    AVAILABLE = bool(getattr(yaml, "__with_libyaml__", False))
except ImportError:  # pragma: no cover - PyYAML is a dependency
    AVAILABLE = False

if not AVAILABLE:  # pragma: no cover - the PyYAML wheels bundle libyaml
    logging.getLogger("claimroute").warning(
        "PyYAML without libyaml: policy files load with the slower pure-Python parser"
    )

PathKey = tuple[str | int, ...]


class Unsupported(Exception):
    """The document needs the ruamel path (it is valid or not; ruamel will say which)."""


# --------------------------------------------------------------------------- scalars
# The implicit resolvers of ruamel.yaml's VersionedResolver for YAML 1.2, verbatim, tried in
# ruamel's order for the scalar's first character: float, int, timestamp for digits; float, int
# for signs; float for a dot. Booleans, nulls and the special floats are exact words.

_FLOAT = re.compile(
    """^(?:
     [-+]?(?:[0-9][0-9_]*)\\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\\.(?:inf|Inf|INF)
    |\\.(?:nan|NaN|NAN))$""",
    re.X,
)
_INT = re.compile(
    """^(?:[-+]?0b[0-1_]+
    |[-+]?0o?[0-7_]+
    |[-+]?[0-9_]+
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_TIMESTAMP = re.compile(
    """^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
    |[0-9][0-9][0-9][0-9] -[0-9][0-9]? -[0-9][0-9]?
    (?:[Tt]|[ \\t]+)[0-9][0-9]?
    :[0-9][0-9] :[0-9][0-9] (?:\\.[0-9]*)?
    (?:[ \\t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$""",
    re.X,
)
# ruamel.yaml.util.timestamp_regexp: how a resolved timestamp is taken apart
_TIMESTAMP_PARTS = re.compile(
    """^(?P<year>[0-9][0-9][0-9][0-9])
       -(?P<month>[0-9][0-9]?)
       -(?P<day>[0-9][0-9]?)
       (?:((?P<t>[Tt])|[ \\t]+)
       (?P<hour>[0-9][0-9]?)
       :(?P<minute>[0-9][0-9])
       :(?P<second>[0-9][0-9])
       (?:\\.(?P<fraction>[0-9]*))?
        (?:[ \\t]*(?P<tz>Z|(?P<tz_sign>[-+])(?P<tz_hour>[0-9][0-9]?)
       (?::(?P<tz_minute>[0-9][0-9]))?))?)?$""",
    re.X,
)

_INF = float("inf")
_WORDS: dict[str, Any] = {
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), None),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), _INF),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -_INF),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), float("nan")),
}
_NUMERIC_FIRST = frozenset("-+.0123456789")
_RUAMEL_ONLY = frozenset(("<<", "="))  # merge key and value indicator: ruamel's business


class _BadScalar(Exception):
    """A plain scalar resolved to a type but cannot be built (e.g. month 13)."""


def _int(text: str) -> int:
    # RoundTripConstructor.construct_yaml_int, YAML 1.2: underscores dropped, 0b/0x/0o bases,
    # leading zeros are decimal.
    digits = text.replace("_", "")
    sign = -1 if digits[0] == "-" else 1
    if digits[0] in "+-":
        digits = digits[1:]
    if digits.startswith("0b"):
        return sign * int(digits[2:], 2)
    if digits.startswith("0x"):
        return sign * int(digits[2:], 16)
    if digits.startswith("0o"):
        return sign * int(digits[2:], 8)
    return sign * int(digits)


def _float(text: str) -> float:
    # RoundTripConstructor.construct_yaml_float, YAML 1.2 (the special words are in _WORDS)
    digits = text.replace("_", "").lower()
    sign = -1 if digits[0] == "-" else 1
    if digits[0] in "+-":
        digits = digits[1:]
    return sign * float(digits)


def _timestamp(text: str) -> str:
    # ruamel.yaml.util.create_timestamp, then `_plain`'s isoformat()
    match = _TIMESTAMP_PARTS.match(text)
    if match is None:
        raise ValueError("not a timestamp")
    parts = match.groupdict()
    year, month, day = int(parts["year"]), int(parts["month"]), int(parts["day"])
    if parts["hour"] is None:
        return datetime.date(year, month, day).isoformat()
    frac = 0
    fraction = parts["fraction"]
    if fraction:
        frac = int(fraction[:6].ljust(6, "0"))
        if len(fraction) > 6 and int(fraction[6]) > 4:
            frac += 1
    tzinfo = None
    tz = parts["tz"]
    if parts["tz_sign"]:
        minutes = parts["tz_minute"]
        offset = datetime.timedelta(
            hours=int(parts["tz_hour"]), minutes=int(minutes) if minutes else 0
        )
        if parts["tz_sign"] == "-":
            offset = -offset
        tzinfo = datetime.timezone(offset, name=tz)
    elif tz == "Z":
        tzinfo = datetime.timezone(datetime.timedelta(hours=0), name=tz)
    hour, minute, second = int(parts["hour"]), int(parts["minute"]), int(parts["second"])
    if frac > 999_999:  # .9999995 and up rounds into the next second, as ruamel does
        stamp = datetime.datetime(year, month, day, hour, minute, second, 0, tzinfo)
        stamp += datetime.timedelta(seconds=1)
    else:
        stamp = datetime.datetime(year, month, day, hour, minute, second, frac, tzinfo)
    return stamp.isoformat()


def resolve_plain(text: str) -> Any:
    """The value of an untagged plain scalar, as ruamel's YAML 1.2 round-trip loader and
    `_plain` give it. A string result is `text` itself (a timestamp gives a new string)."""
    if text in _WORDS:
        return _WORDS[text]
    first = text[0]
    if first in _NUMERIC_FIRST:
        try:
            if _FLOAT.match(text):
                return _float(text)
            if first != "." and _INT.match(text):
                return _int(text)
            if first.isdigit() and _TIMESTAMP.match(text):
                return _timestamp(text)
        except (ValueError, IndexError) as exc:
            raise _BadScalar(str(exc)) from None
    elif text in _RUAMEL_ONLY:
        raise Unsupported(text)
    return text


# --------------------------------------------------------------------------- documents

_LINE_BREAKS_11 = ("\x85", "\u2028", "\u2029")  # line breaks for libyaml, not for YAML 1.2


# libyaml and ruamel read a few things differently where the source is unusual; the events that
# could be affected are checked against the text, and the document goes to ruamel if they are.
_NAME_END = frozenset(" \t\r\n,[]{}")
_BLOCK_HEADER = re.compile(r"[|>](?:[1-9][-+]?|[-+][1-9]?)?(?:[ \t]+(?:#[^\r\n]*)?)?(?:[\r\n]|$)")


class _Source:
    """The text as libyaml's marks count it (a leading BOM is not counted)."""

    __slots__ = ("base", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.base = 1 if text.startswith("\ufeff") else 0

    def name_ends(self, index: int) -> bool:
        """An anchor or alias name that libyaml ended at `index` is ruamel's name too: libyaml
        takes only letters, digits, `-` and `_`; ruamel takes any character up to a space or a
        flow indicator."""
        index += self.base
        return index >= len(self.text) or self.text[index] in _NAME_END

    def anchor_at(self, index: int, name: str) -> bool:
        index += self.base
        return self.text.startswith(f"&{name}", index) and self.name_ends(
            index - self.base + len(name) + 1
        )

    def block_header_at(self, index: int) -> bool:
        """The header of a block scalar reads the same: ruamel wants a space between the
        indicators and a comment, libyaml does not."""
        return _BLOCK_HEADER.match(self.text, index + self.base) is not None


def _copy(value: Any) -> Any:
    if type(value) is dict:
        return {key: _copy(item) for key, item in value.items()}
    if type(value) is list:
        return [_copy(item) for item in value]
    return value


def yaml_error(line: int | None, message: str, file: str) -> PolicyError:
    """The PolicyError for a document that cannot be read (both paths raise these)."""
    return PolicyError(f"invalid YAML: {message}", file=file, key_path="", line=line)


def too_deep(line: int | None, max_depth: int, file: str) -> PolicyError:
    return yaml_error(line, f"nested deeper than {max_depth} levels", file)


def too_many(line: int | None, max_nodes: int, file: str) -> PolicyError:
    return yaml_error(
        line,
        f"more than {max_nodes} values (an alias counts as every value it repeats); "
        "a policy this large is a mistake or an alias bomb",
        file,
    )


_NO_KEY = object()

# Frame slots: one frame per open collection
_CONT, _PATH, _KEY, _KEY_LINE, _ANCHOR, _BEFORE, _LEVEL, _DEEPEST, _FIRST, _LINE = range(10)


def load(text: str, file: str, *, max_nodes: int, max_depth: int) -> tuple[Any, dict]:
    """Plain values and the line table of a one-document YAML text.

    Raises PolicyError for a shape beyond the bounds or a scalar that cannot be built, and
    `Unsupported` when the text needs the ruamel path.
    """
    if not AVAILABLE:
        raise Unsupported("no libyaml")
    for char in _LINE_BREAKS_11:
        if char in text:
            raise Unsupported("NEL, LS or PS in the text")
    if text.find("\ufeff", 1) >= 0:  # libyaml drops a BOM anywhere, ruamel only at the start
        raise Unsupported("a BOM after the start")
    try:
        loader = yaml.CSafeLoader(text)
    except (UnicodeError, ValueError) as exc:  # lone surrogates
        raise Unsupported(str(exc)) from None
    try:
        return _build(loader.get_event, _Source(text), file, max_nodes, max_depth)
    except yaml.YAMLError as exc:
        raise Unsupported(str(exc)) from None
    finally:
        loader.dispose()


def _build(
    get: Any, source: _Source, file: str, max_nodes: int, max_depth: int
) -> tuple[Any, dict]:
    get()  # StreamStartEvent
    event = get()
    if type(event) is StreamEndEvent:
        return None, {}
    assert type(event) is DocumentStartEvent
    if event.tags or event.version not in (None, (1, 2)):
        raise Unsupported("directives")

    nodes = 0
    frames: list[list[Any]] = []  # see the slot names above
    entries: list[tuple[PathKey, int]] = []  # (path, line), in the order `_plain` records them
    # anchor -> (value, its entries as entries[first:end] below a path of length cut,
    #            values, levels, line of its node)
    anchors: dict[str, tuple[Any, int, int, int, int, int, int]] = {}
    named: set[str] = set()  # every anchor seen, open collections included
    root: Any = None
    has_root = False

    while True:
        event = get()
        kind = type(event)
        if kind is ScalarEvent:
            nodes += 1
            if event.tag is not None:
                raise Unsupported("tag")
            value = event.value
            line = event.start_mark.line + 1
            style = event.style
            anchor = event.anchor
            if anchor is not None:
                if anchor in named or not source.anchor_at(event.start_mark.index, anchor):
                    raise Unsupported("anchor defined twice, or read differently")  # ruamel warns
                named.add(anchor)
                if style == "|" or style == ">":
                    raise Unsupported("anchored block scalar")
            elif (style == "|" or style == ">") and not source.block_header_at(
                event.start_mark.index
            ):
                raise Unsupported("block scalar header")
            if not style:  # plain
                try:
                    value = resolve_plain(value)
                except _BadScalar as exc:
                    raise yaml_error(line, f"cannot read {event.value!r}: {exc}", file) from None
            if anchor is not None:
                anchors[anchor] = (value, 0, 0, 0, 1, 0, line)
            if frames:
                frame = frames[-1]
                container = frame[_CONT]
                if type(container) is list:
                    entries.append(((*frame[_PATH], len(container)), line))
                    container.append(value)
                elif frame[_KEY] is _NO_KEY:
                    if value is not event.value or value in container:
                        raise Unsupported("a key that is not a string, or a duplicate key")
                    frame[_KEY] = value
                    frame[_KEY_LINE] = line
                else:
                    key = frame[_KEY]
                    entries.append(((*frame[_PATH], key), frame[_KEY_LINE]))
                    container[key] = value
                    frame[_KEY] = _NO_KEY
            else:
                if style == "|" or style == ">":
                    raise Unsupported("a block scalar as the document")  # `#` lines differ
                root, has_root = value, True
            if nodes > max_nodes:
                raise too_many(line, max_nodes, file)

        elif kind is MappingStartEvent or kind is SequenceStartEvent:
            nodes += 1
            line = event.start_mark.line + 1
            level = len(frames) + 1
            if level > max_depth:
                raise too_deep(line, max_depth, file)
            if event.tag is not None:
                raise Unsupported("tag")
            container = {} if kind is MappingStartEvent else []
            if frames:
                frame = frames[-1]
                if level > frame[_DEEPEST]:
                    frame[_DEEPEST] = level
                path = _attach(frame, container, line, entries, "a collection")
            else:
                path = ()
                root, has_root = container, True
            anchor = event.anchor
            if anchor is not None:
                if anchor in named or not source.anchor_at(event.start_mark.index, anchor):
                    raise Unsupported("anchor defined twice, or read differently")  # ruamel warns
                named.add(anchor)
            frames.append(
                [container, path, _NO_KEY, 0, anchor, nodes - 1, level, level, len(entries), line]
            )
            if nodes > max_nodes:
                raise too_many(line, max_nodes, file)

        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            frame = frames.pop()
            anchor = frame[_ANCHOR]
            deepest = frame[_DEEPEST]
            if anchor is not None:
                anchors[anchor] = (
                    frame[_CONT],
                    frame[_FIRST],
                    len(entries),
                    len(frame[_PATH]),
                    nodes - frame[_BEFORE],
                    deepest - frame[_LEVEL] + 1,
                    frame[_LINE],
                )
            if frames and deepest > frames[-1][_DEEPEST]:
                frames[-1][_DEEPEST] = deepest

        elif kind is AliasEvent:
            name = event.anchor
            line = event.start_mark.line + 1
            if not source.name_ends(event.end_mark.index):
                raise Unsupported("alias read differently")
            if name not in anchors:
                # ruamel's message (it may also find a syntax error first)
                raise Unsupported("alias to an unknown or open anchor")
            value, first, end, cut, size, height, node_line = anchors[name]
            nodes += size
            level = len(frames) + height
            if level > max_depth:
                raise too_deep(line, max_depth, file)
            if frames and level > frames[-1][_DEEPEST]:
                frames[-1][_DEEPEST] = level
            if nodes > max_nodes:
                raise too_many(line, max_nodes, file)
            value = _copy(value)
            if frames:
                # ruamel's composer hands the anchored node itself: as a list item, its line
                path = _attach(frames[-1], value, node_line, entries, "an alias")
            else:
                path = ()
                root, has_root = value, True
            if end > first:  # the lines below the anchored node, moved to this path
                entries.extend(
                    ((*path, *sub[cut:]), sub_line) for sub, sub_line in entries[first:end]
                )

        elif kind is DocumentEndEvent:
            break
        else:  # pragma: no cover - libyaml sends nothing else inside a document
            raise Unsupported(f"unexpected {kind.__name__}")

    if type(get()) is not StreamEndEvent:
        raise Unsupported("more than one document")
    assert has_root
    return root, dict(entries)


def _attach(frame: list[Any], value: Any, item_line: int, entries: list, what: str) -> PathKey:
    """Put a collection or an alias's copy into the open collection `frame`; its path.

    In a list it is the next item, on `item_line`; in a mapping it is the value of the pending
    key, on the key's line. Where a key is due it cannot go (`what` names it for ruamel).
    """
    parent = frame[_CONT]
    if type(parent) is list:
        path = (*frame[_PATH], len(parent))
        entries.append((path, item_line))
        parent.append(value)
        return path
    key = frame[_KEY]
    if key is _NO_KEY:
        raise Unsupported(f"{what} as a key")
    path = (*frame[_PATH], key)
    entries.append((path, frame[_KEY_LINE]))
    parent[key] = value
    frame[_KEY] = _NO_KEY
    return path
