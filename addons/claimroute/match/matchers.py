"""The one matcher engine: claim and header matchers, compiled once at load into immutable objects.

Equality is typed, as in JSON: `true` is not `"true"` and not `1`, while `1` equals `1.0`. A value
that is `MISSING` (the claim path does not resolve, or the header is absent) matches nothing except
`{present: false}`, and whatever `not` turns around.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

from claimroute.config.readers import header_name, type_name
from claimroute.config.source import Loc
from claimroute.match.claimpath import MISSING, ClaimPath, format_claim_path, parse_claim_path, walk

OPERATORS = (
    "exact",
    "prefix",
    "suffix",
    "regex",
    "one_of",
    "contains",
    "has_word",
    "present",
    "gt",
    "gte",
    "lt",
    "lte",
    "not",
    "any_of",
    "all_of",
)

_NUMBER = (int, float)  # a tuple: isinstance with it is cheaper than with int | float


def _same(expected: Any, value: Any) -> bool:
    """JSON equality that keeps types apart: true != 1, "1" != 1, but 1 == 1.0."""
    if isinstance(expected, str):
        return isinstance(value, str) and expected == value
    if isinstance(expected, bool) or isinstance(value, bool):
        return type(expected) is type(value) and expected == value
    if isinstance(expected, _NUMBER):
        return isinstance(value, _NUMBER) and expected == value
    if expected is None:
        return value is None
    if isinstance(expected, list):
        return (
            isinstance(value, list)
            and len(expected) == len(value)
            and all(map(_same, expected, value))
        )
    if isinstance(expected, dict):
        return (
            isinstance(value, dict)
            and expected.keys() == value.keys()
            and all(_same(item, value[key]) for key, item in expected.items())
        )
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _show(value: Any) -> str:
    # JSON spelling, so reprs read like the policy file (true, null, "x")
    return json.dumps(value, ensure_ascii=False)


class Matcher:
    """A compiled matcher: `matches(value)` where value may be `MISSING`."""

    __slots__ = ()

    def matches(self, value: Any) -> bool:
        """True if `value` (a claim value, a header value, or `MISSING`) satisfies the matcher."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True, repr=False)
class _Membership(Matcher):
    """Typed membership in a set of scalars, or of any element when the value is a list.

    The scalars are split by type, so that `true` never finds `1` (they hash alike) and a
    lookup allocates nothing.
    """

    strings: frozenset[str]
    numbers: frozenset[int | float]
    booleans: frozenset[bool]
    null: bool

    def _has(self, value: Any) -> bool:
        if isinstance(value, str):
            return value in self.strings
        if isinstance(value, bool):
            return value in self.booleans
        if isinstance(value, _NUMBER):
            return value in self.numbers
        return value is None and self.null

    def matches(self, value: Any) -> bool:
        if isinstance(value, list):
            for item in value:  # noqa: SIM110 (performance rules)
                if self._has(item):
                    return True
            return False
        return self._has(value)


def _split(values: tuple[Any, ...]) -> tuple[frozenset, frozenset, frozenset, bool]:
    return (
        frozenset(v for v in values if isinstance(v, str)),
        frozenset(v for v in values if _is_number(v)),
        frozenset(v for v in values if isinstance(v, bool)),
        any(v is None for v in values),
    )


@dataclass(frozen=True, slots=True, repr=False)
class Equals(_Membership):
    """A bare scalar: typed equality, or membership when the value is a list."""

    expected: Any

    @classmethod
    def of(cls, expected: Any) -> Equals:
        return cls(*_split((expected,)), expected)

    def __repr__(self) -> str:
        return f"eq({_show(self.expected)})"


@dataclass(frozen=True, slots=True, repr=False)
class Exact(Matcher):
    """`{exact: v}`: typed equality with the whole value (no list membership)."""

    expected: Any

    def matches(self, value: Any) -> bool:
        return _same(self.expected, value)

    def __repr__(self) -> str:
        return f"exact({_show(self.expected)})"


@dataclass(frozen=True, slots=True, repr=False)
class OneOf(_Membership):
    """`{one_of: [..]}`: the value (or, for a list, any element) is one of these scalars."""

    values: tuple[Any, ...]

    @classmethod
    def of(cls, values: tuple[Any, ...]) -> OneOf:
        return cls(*_split(values), values)

    def __repr__(self) -> str:
        return f"one_of({', '.join(map(_show, self.values))})"


@dataclass(frozen=True, slots=True, repr=False)
class Contains(Matcher):
    """`{contains: v}`: a list value contains v (typed), or a string value contains substring v."""

    needle: Any

    def matches(self, value: Any) -> bool:
        if isinstance(value, list):
            for item in value:  # noqa: SIM110 (performance rules)
                if _same(self.needle, item):
                    return True
            return False
        return isinstance(value, str) and isinstance(self.needle, str) and self.needle in value

    def __repr__(self) -> str:
        return f"contains({_show(self.needle)})"


@dataclass(frozen=True, slots=True, repr=False)
class _StringTest(Matcher):
    """Base of prefix/suffix/regex: a string value, or any string element of a list value."""

    def test(self, text: str) -> bool:
        raise NotImplementedError

    def matches(self, value: Any) -> bool:
        if isinstance(value, str):
            return self.test(value)
        if isinstance(value, list):
            for item in value:
                if isinstance(item, str) and self.test(item):
                    return True
        return False


@dataclass(frozen=True, slots=True, repr=False)
class Prefix(_StringTest):
    """`{prefix: s}`."""

    prefix: str

    def test(self, text: str) -> bool:
        return text.startswith(self.prefix)

    def __repr__(self) -> str:
        return f"prefix({_show(self.prefix)})"


@dataclass(frozen=True, slots=True, repr=False)
class Suffix(_StringTest):
    """`{suffix: s}`."""

    suffix: str

    def test(self, text: str) -> bool:
        return text.endswith(self.suffix)

    def __repr__(self) -> str:
        return f"suffix({_show(self.suffix)})"


# --- regular expressions ------------------------------------------------------------------------
#
# Every regex in a policy (the `regex` matcher on claims and headers, `{regex: r}` path rules) is
# an RE2 full match. RE2 runs in time linear in the input, so no claim, header or path can make
# a request stall the proxy (Python's `re` backtracks: `([a-z0-9]+/?)+` takes seconds on 30
# characters). What RE2 cannot do (backreferences, lookaround, possessive quantifiers, atomic
# groups) is refused at load, never emulated.

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors become policy errors; nothing on stderr
_RE2_OPTIONS.never_capture = True  # only "does it match" is asked: no submatch bookkeeping
# Left at their defaults on purpose: never_nl (it would stop `(?s).*` at a newline, which `re`
# does not), dot_nl (`(?s)` turns it on per pattern), longest_match (a full match is the same
# yes or no either way), posix_syntax (off: Perl classes, \b and inline flags stay available).

# `{,n}` and `{,}` are a repetition ({0,n}, {0,}) in Python `re` but literal text in RE2: a
# pattern written for the old engine would change meaning without a word, so it is refused.
_PYTHON_ONLY_REPEAT = re.compile(r"\{,[0-9]*\}")

_HINTS = (
    ("\\Z", "write \\z (or $) for the end of the text"),
    ("(?x", "RE2 takes the inline flags i, m, s and U only"),
    ("(?a", "RE2 takes the inline flags i, m, s and U only"),
    ("(?u", "RE2 takes the inline flags i, m, s and U only"),
    ("(?#", "RE2 has no (?#...) comments"),
    ("\\u", "write a code point as \\x{hhhh}"),
    ("\\N", "write a code point as \\x{hhhh}"),
)
_SYNTAX = (
    "policy regexes use RE2 syntax: no backreferences, lookaround (?= (?! (?<= (?<!, "
    "possessive quantifiers (*+ ++ ?+) or atomic groups (?>...)"
)


class PolicyRegex:
    """A policy regex compiled with RE2 at load; `fullmatch(text)` says whether the whole
    text matches, as `re.fullmatch` did before.

    The text is matched as UTF-8. A lone surrogate (a JSON escape such as `"\\ud800"` in a
    claim, or a header or path byte that is not UTF-8, which mitmproxy keeps as a surrogate) is
    encoded code point by code point (`surrogatepass`), so it is one character to RE2 as it was
    to `re` (`.` and `[^x]` match it), and a hostile value cannot raise an error.
    """

    __slots__ = ("_fullmatch", "text")

    def __init__(self, text: str, compiled: Any) -> None:
        self.text = text
        self._fullmatch = compiled.fullmatch

    def fullmatch(self, text: str) -> bool:
        """True if all of `text` matches the pattern."""
        return self._fullmatch(text.encode("utf-8", "surrogatepass")) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolicyRegex) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"PolicyRegex({self.text!r})"


def _class_end(text: str, start: int) -> int:
    """The index after the character class that opens at `text[start]` (`[`), RE2 syntax."""
    index = start + 1
    if text.startswith("^", index):
        index += 1
    if text.startswith("]", index):  # a `]` first in a class is the character itself
        index += 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
        elif text.startswith("[:", index):  # [:alpha:]
            close = text.find(":]", index + 2)
            index = index + 1 if close < 0 else close + 2
        elif char == "]":
            return index + 1
        else:
            index += 1
    return index


def _python_only_repeat(text: str) -> str | None:
    """The first `{,n}` outside a character class and an escape, if any."""
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            if text.startswith("Q", index + 1):  # \Q...\E: literal text
                end = text.find("\\E", index + 2)
                index = len(text) if end < 0 else end + 2
            else:
                index += 2
        elif char == "[":
            index = _class_end(text, index)
        else:
            if char == "{" and (found := _PYTHON_ONLY_REPEAT.match(text, index)):
                return found.group()
            index += 1
    return None


def _re2_compile(text: str) -> Any:
    compiled = re2.compile(text, _RE2_OPTIONS)
    if isinstance(compiled, re.Pattern):  # a `re2` module that falls back to `re`
        raise RuntimeError(
            "the re2 module fell back to Python re; claimroute needs google-re2, which never does"
        )
    return compiled


def compile_regex(text: str, loc: Loc) -> PolicyRegex:
    """Compile a policy regex found at `loc` with RE2, or raise a policy error that names it."""
    try:
        compiled = _re2_compile(text)
    except (re2.error, UnicodeEncodeError, ValueError, OverflowError) as exc:
        reason = exc.args[0] if exc.args else str(exc)
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        hints = [hint for needle, hint in _HINTS if needle in text]
        raise loc.error(
            f"invalid regular expression {text!r}: {reason} ({'; '.join([*hints, _SYNTAX])})"
        ) from None
    repeat = _python_only_repeat(text)
    if repeat is not None:
        bound = repeat[2:-1]
        raise loc.error(
            f"invalid regular expression {text!r}: {repeat} would be literal text in RE2 "
            f"(it was a repetition in Python re); write {{0,{bound}}} to repeat, or "
            f"\\{repeat} for the text"
        )
    return PolicyRegex(text, compiled)


def _check_engine() -> None:
    # Some packages that install a `re2` module fall back to Python `re` when RE2 refuses a
    # pattern, which would bring backtracking back without a word. google-re2 refuses.
    try:
        re2.compile("(a)\\1", _RE2_OPTIONS)
    except re2.error:
        return
    raise ImportError("the installed re2 module accepts backreferences: it is not google-re2")


_check_engine()


@dataclass(frozen=True, slots=True, repr=False)
class Regex(_StringTest):
    """`{regex: r}`: an RE2 full match, compiled at load (see `compile_regex`)."""

    pattern: PolicyRegex

    def test(self, text: str) -> bool:
        return self.pattern.fullmatch(text)

    def __repr__(self) -> str:
        return f"regex({_show(self.pattern.text)})"


@dataclass(frozen=True, slots=True, repr=False)
class HasWord(_StringTest):
    """`{has_word: w}`: the string, split on spaces (the `scope` syntax of RFC 6749 §3.3), has
    the word w; on a list, any string element does. `"read admin"` has `admin`, `"superadmin"`
    does not."""

    word: str

    def test(self, text: str) -> bool:
        # Splitting on " " only (RFC 6749 §3.3: scope tokens are separated by %x20); doubled,
        # leading or trailing spaces give empty pieces, which never equal a word.
        return self.word in text.split(" ")

    def __repr__(self) -> str:
        return f"has_word({_show(self.word)})"


@dataclass(frozen=True, slots=True, repr=False)
class Present(Matcher):
    """`{present: bool}`: present means the value resolves and is not null."""

    present: bool

    def matches(self, value: Any) -> bool:
        return (value is not MISSING and value is not None) is self.present

    def __repr__(self) -> str:
        return f"present({_show(self.present)})"


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


@dataclass(frozen=True, slots=True, repr=False)
class Compare(Matcher):
    """`{gt|gte|lt|lte: n}`: numeric values only (int or float, not bool, finite)."""

    op: str
    bound: int | float
    compare: Callable[[Any, Any], bool] = field(compare=False)

    def matches(self, value: Any) -> bool:
        if not isinstance(value, _NUMBER) or isinstance(value, bool):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return self.compare(value, self.bound)

    def __repr__(self) -> str:
        return f"{self.op}({self.bound!r})"


@dataclass(frozen=True, slots=True, repr=False)
class Not(Matcher):
    """`{not: M}`."""

    inner: Matcher

    def matches(self, value: Any) -> bool:
        return not self.inner.matches(value)

    def __repr__(self) -> str:
        return f"not({self.inner!r})"


@dataclass(frozen=True, slots=True, repr=False)
class AnyOf(Matcher):
    """`{any_of: [M..]}`: at least one matches."""

    matchers: tuple[Matcher, ...]

    def matches(self, value: Any) -> bool:
        for matcher in self.matchers:  # noqa: SIM110 (performance rules)
            if matcher.matches(value):
                return True
        return False

    def __repr__(self) -> str:
        return f"any_of({', '.join(map(repr, self.matchers))})"


@dataclass(frozen=True, slots=True, repr=False)
class AllOf(Matcher):
    """`{all_of: [M..]}`, and a mapping with several operators: every one matches."""

    matchers: tuple[Matcher, ...]

    def matches(self, value: Any) -> bool:
        for matcher in self.matchers:  # noqa: SIM110 (performance rules)
            if not matcher.matches(value):
                return False
        return True

    def __repr__(self) -> str:
        return f"all_of({', '.join(map(repr, self.matchers))})"


# --- compiling ---------------------------------------------------------------------------------


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _header_text(value: Any, loc: Loc) -> str:
    """A header operand as the string the header would carry (YAML `1` is the header "1")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if _is_number(value):
        return str(value)
    if value is None:
        raise loc.error(
            "a header value cannot be null; use {present: false} to require that it is absent"
        )
    raise loc.error(f"a header value is a string, got {type_name(value)}")


def _operand_string(value: Any, loc: Loc, op: str) -> str:
    if not isinstance(value, str):
        raise loc.error(f"{op} needs a string, got {type_name(value)}")
    return value


def _compile_operator(op: str, arg: Any, loc: Loc, header: bool) -> Matcher:
    if op == "exact":
        return Exact(_header_text(arg, loc) if header else arg)
    if op == "prefix":
        return Prefix(_operand_string(arg, loc, op))
    if op == "suffix":
        return Suffix(_operand_string(arg, loc, op))
    if op == "regex":
        return Regex(compile_regex(_operand_string(arg, loc, op), loc))
    if op == "one_of":
        if not isinstance(arg, list):
            raise loc.error(f"one_of needs a list of values, got {type_name(arg)}")
        if not arg:
            raise loc.error("one_of needs at least one value")
        values: list[Any] = []
        for index, item in enumerate(arg):
            if header:
                item = _header_text(item, loc / index)
            elif not _is_scalar(item):
                raise (loc / index).error(
                    f"one_of takes scalars, got {type_name(item)}; "
                    "to compare whole lists or objects use any_of with exact"
                )
            values.append(item)
        return OneOf.of(tuple(values))
    if op == "contains":
        if header:
            return Contains(_header_text(arg, loc))
        return Contains(arg)
    if op == "has_word":
        word = _operand_string(arg, loc, op)
        if not word:
            raise loc.error("has_word needs a word, got an empty string")
        if " " in word:
            raise loc.error(
                f"has_word takes one word (values are split on spaces), got {word!r}; "
                "to require several words use all_of: [{has_word: a}, {has_word: b}]"
            )
        return HasWord(word)
    if op == "present":
        if not isinstance(arg, bool):
            raise loc.error(f"present needs true or false, got {type_name(arg)}")
        return Present(arg)
    if op in ("gt", "gte", "lt", "lte"):
        if header:
            raise loc.error(
                f"{op} compares numbers, but a header value is a string; use regex instead"
            )
        if not _is_number(arg):
            raise loc.error(f"{op} needs a number, got {type_name(arg)}")
        if isinstance(arg, float) and not math.isfinite(arg):
            raise loc.error(f"{op} needs a finite number, got {arg!r}")
        return Compare(op, arg, _COMPARISONS[op])
    if op == "not":
        return Not(_compile(arg, loc, header))
    # any_of / all_of
    if not isinstance(arg, list):
        raise loc.error(f"{op} needs a list of matchers, got {type_name(arg)}")
    if not arg:
        raise loc.error(f"{op} needs at least one matcher")
    inner = tuple(_compile(item, loc / index, header) for index, item in enumerate(arg))
    return AnyOf(inner) if op == "any_of" else AllOf(inner)


def _compile(spec: Any, loc: Loc, header: bool) -> Matcher:
    if isinstance(spec, dict):
        if not spec:
            raise loc.error("empty matcher; give a value or an operator such as {present: true}")
        parts: list[Matcher] = []
        for op, arg in spec.items():
            if op not in OPERATORS:
                raise (loc / op).error(
                    f"unknown matcher operator {op!r} (known: {', '.join(OPERATORS)}); "
                    "to compare a whole object use {exact: {...}}"
                )
            parts.append(_compile_operator(op, arg, loc / op, header))
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))
    if isinstance(spec, list):
        raise loc.error(
            "a bare list is ambiguous as a matcher; write {one_of: [...]} for any of these "
            "values, {exact: [...]} for this exact list, or {contains: v} for a list claim "
            "that contains v"
        )
    if header:
        return Equals.of(_header_text(spec, loc))
    if not _is_scalar(spec):
        raise loc.error(f"a matcher must be a value or a mapping, got {type_name(spec)}")
    return Equals.of(spec)


def compile_matcher(spec: Any, loc: Loc, *, header: bool = False) -> Matcher:
    """Compile a matcher spec (a bare scalar or an operator mapping) found at `loc`.

    With `header=True` the operands of bare values, exact, one_of and contains are turned into
    the strings a header would carry (`1` -> "1", `true` -> "true"), and numeric comparisons are
    refused, since a header value is always a string.
    """
    return _compile(spec, loc, header)


@dataclass(frozen=True, slots=True)
class ClaimsMatcher:
    """AND of `{claim path: matcher}`; an empty one matches every request."""

    entries: tuple[tuple[ClaimPath, Matcher], ...] = ()

    def matches(self, claims: Mapping[str, Any] | None) -> bool:
        """True if every entry matches; with `None` (no verified token) every path is MISSING."""
        for path, matcher in self.entries:  # noqa: SIM110 (performance rules)
            if not matcher.matches(walk(claims, path)):
                return False
        return True

    def __repr__(self) -> str:
        inner = ", ".join(f"{format_claim_path(p)}: {m!r}" for p, m in self.entries)
        return f"claims({inner})"


def compile_claims(spec: Any, loc: Loc) -> ClaimsMatcher:
    """Compile `{claim path: matcher spec}` (AND of the entries) found at `loc`."""
    if not isinstance(spec, dict):
        raise loc.error(f"expected a mapping of claim path to matcher, got {type_name(spec)}")
    entries = tuple(
        (parse_claim_path(key, loc / key), _compile(value, loc / key, False))
        for key, value in spec.items()
    )
    return ClaimsMatcher(entries)


@dataclass(frozen=True, slots=True)
class HeadersMatcher:
    """AND of `{header name: matcher}`; names are stored lower-case."""

    entries: tuple[tuple[str, Matcher], ...] = ()

    def matches(self, get_header: Callable[[str], str | None]) -> bool:
        """True if every entry matches; `get_header(lower_name)` returns None when absent."""
        for name, matcher in self.entries:
            value = get_header(name)
            if not matcher.matches(MISSING if value is None else value):
                return False
        return True

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}: {m!r}" for name, m in self.entries)
        return f"headers({inner})"


def compile_headers(spec: Any, loc: Loc) -> HeadersMatcher:
    """Compile `{header name: matcher spec}` (AND of the entries; names case-insensitive)."""
    if not isinstance(spec, dict):
        raise loc.error(f"expected a mapping of header name to matcher, got {type_name(spec)}")
    entries: list[tuple[str, Matcher]] = []
    seen: dict[str, str] = {}
    for name, value in spec.items():
        lower = header_name(name, loc / name)
        if lower in seen:
            raise (loc / name).error(
                f"header {name!r} is given twice (as {seen[lower]!r}); names are case-insensitive"
            )
        seen[lower] = name
        entries.append((lower, _compile(value, loc / name, True)))
    return HeadersMatcher(tuple(entries))
