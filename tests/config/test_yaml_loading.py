"""The libyaml path (`claimroute.config.yamlload`) against the ruamel reference (`source._parse_with_ruamel`).

Every document here goes through both: the plain values (types included) and the line tables must
be identical, or the fast path must hand the document to ruamel (`Unsupported`), in which case
`parse_yaml_text` gives ruamel's answer by construction. Errors the fast path raises itself (shape
bounds) must carry ruamel's message and line.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from claimroute.config import source, yamlload
from claimroute.config.source import MAX_DEPTH, MAX_NODES, parse_yaml_text
from claimroute.errors import PolicyError

NAME = "policy.yaml"


def test_libyaml_is_there() -> None:
    assert yaml.__with_libyaml__
    assert yamlload.AVAILABLE


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types all the way down (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def outcome(load: Any, text: str) -> tuple[str, Any, Any]:
    try:
        value, lines = load(text)
    except PolicyError as exc:
        return ("error", exc.reason, exc.line)
    return ("ok", value, dict(lines))


def reference(text: str) -> tuple[str, Any, Any]:
    return outcome(lambda t: source._parse_with_ruamel(t, NAME), text)


def fast(text: str) -> tuple[str, Any, Any]:
    return outcome(lambda t: yamlload.load(t, NAME, max_nodes=MAX_NODES, max_depth=MAX_DEPTH), text)


def public(text: str) -> tuple[str, Any, Any]:
    def load(t: str) -> tuple[Any, Any]:
        value, loc = parse_yaml_text(t, NAME)
        return value, loc.lines

    return outcome(load, text)


def assert_same(text: str, *, fast_path: bool | None = True) -> None:
    """Fast and reference agree; `fast_path` says whether the fast path must handle the text
    (True: when ruamel loads it), must hand it over (False) or may do either (None)."""
    expected = reference(text)
    if fast_path and expected[0] == "error":
        fast_path = None
    try:
        got = fast(text)
    except yamlload.Unsupported:
        assert fast_path is not True, f"fast path refused {text!r}"
        got = public(text)
    else:
        assert fast_path is not False, f"fast path took {text!r}"
    assert got[0] == expected[0], (text, got, expected)
    if got[0] == "error":
        assert got[1:] == expected[1:], (text, got, expected)
    else:
        assert same(got[1], expected[1]), (text, got[1], expected[1])
        assert got[2] == expected[2], (text, got[2], expected[2])


# --------------------------------------------------------------------------- scalars

PLAIN_SCALARS = [
    # booleans (YAML 1.2: only these spellings) and words that were booleans in YAML 1.1
    *["true", "True", "TRUE", "false", "False", "FALSE", "tRue", "fALSE"],
    *["yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "y", "n"],
    # nulls
    *["~", "null", "Null", "NULL", "nUll", "nil", "None", "none"],
    # integers
    *["0", "-0", "+0", "1", "-1", "+12", "007", "017", "09", "1_000", "1__0", "1_", "_1"],
    *["0o17", "0o0", "-0o17", "+0o7", "0o8", "0O17", "0o_7", "0o7_"],
    *["0x1f", "0x1F", "-0x1f", "0xdead_beef", "0x_1f", "0X1F", "0xg", "0x0f"],
    *["0b101", "-0b1", "0b1_0", "0b2", "0B1", "0b0101"],
    "123456789012345678901234567890",
    # floats
    *["1.5", "-1.5", "+1.5", "1.", "-1.", ".5", "-.5", "+.5", "1e3", "1E3", "1e+3", "1e-3"],
    *["1.5e3", "1.5E-3", ".5e3", ".5e+3", ".5E-3", "1_0.5", "0.1_0", "6.8523015e+5"],
    *["685.230_15e+03", "1_e3", "1._", "._5", "0.0", "-0.0", "00.5", "1.2.3", "1e", "e3"],
    *[".inf", ".Inf", ".INF", "+.inf", "-.inf", "-.Inf", "-.INF", ".iNf", "inf", "-inf"],
    *[".nan", ".NaN", ".NAN", "-.nan", "+.nan", "nan", "NaN"],
    # YAML 1.1 sexagesimals are strings in 1.2
    *["190:20:30", "1:20", "190:20:30.15", "-1:30"],
    # timestamps
    *["2002-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5"],
    *["2001-12-15T02:59:43.1Z", "2001-12-15 2:59:43.10", "2001-12-14T21:59:43"],
    *["2001-12-14T21:59:43+05:30", "2001-12-14T21:59:43 Z", "2001-12-14T21:59:43.1234567"],
    *["2001-12-14T21:59:43.9999999", "2001-12-14T21:59:43.", "2001-1-1 1:00:00"],
    *["2020-1-1", "2020-01-1", "20201-01-01", "2001-12-14T21:59", "2020-02-29"],
    # plain strings that look like something
    *["a", "policy-1", "/api/x", "http://h:80/p", "a b", "x: y"[0:1], "1 2", "-", "--x"],
    *["1-2", "1.2.3.4", "0.0.0.0", "12:30", "1e3x", "+", ".", "-.", "TRUE1", "nullx"],
    *["é", "日本", "a\\nb"],
]


@pytest.mark.parametrize("scalar", PLAIN_SCALARS)
def test_plain_scalars_resolve_as_ruamel_does(scalar: str) -> None:
    assert_same(f"v: {scalar}\n")
    assert_same(f"- {scalar}\n- [{scalar}]\n")


@pytest.mark.parametrize("scalar", PLAIN_SCALARS)
def test_quoted_scalars_are_strings(scalar: str) -> None:
    assert_same(f"v: '{scalar}'\nw: \"{scalar}\"\n")


@pytest.mark.parametrize("scalar", PLAIN_SCALARS)
def test_scalars_as_keys(scalar: str) -> None:
    # string keys are the fast path's; anything else (null, bool, numbers, dates) goes to ruamel
    expected = reference(f"{scalar}: 1\n")
    takes = expected[0] == "ok" and expected[2] == {(scalar,): 1}
    assert_same(f"{scalar}: 1\n", fast_path=True if takes else None)
    assert_same(f"'{scalar}': 1\n")


@pytest.mark.parametrize(
    "text",
    [
        "a: 2020-13-45\n",
        "a: 2020-02-30\n",
        "a: 0b_\n",
        "a: -_\n",
        "a: 0x_\n",
        "a: 0o_\n",
        "a: " + "9" * 5000 + "\n",
    ],
)
def test_scalars_ruamel_cannot_build_are_located_errors(text: str) -> None:
    # ruamel lets ValueError/IndexError escape; both paths now give a PolicyError
    with pytest.raises(PolicyError) as info:
        parse_yaml_text(text, NAME)
    assert info.value.reason.startswith("invalid YAML")
    assert info.value.line == 1
    assert reference(text)[0] == "error"


# --------------------------------------------------------------------------- documents

DOCUMENTS = [
    "",
    "# only a comment\n",
    "~\n",
    "'a string'\n",
    "[1, 2]\n",
    "--- a\n",
    "---\n...\n",
    "---\na: 1\n...\n",
    "%YAML 1.2\n---\na: yes\nb: 0o17\n",
    "a:\n",
    "a:\nb: ~\nc: ''\n",
    "\ufeffa: 1\nb: 2\n",
    "a: 1\r\nb:\r\n  - x\r\n  - y\r\n",
    "a: 1\rb: 2\r",
    "a: 1   # comment\n# another\nb: [1, 2]  # more\n",
    "a:\n  b:\n    c:\n      - 1\n      - - 2\n        - 3\n      - {d: 4}\n",
    "list:\n- a\n- b\n-\n  c: 1\n- - x\n  - y\n",
    "- a: 1\n  b: 2\n- c: 3\n",
    "-\n  a: 1\n-\n\n  b: 2\n",
    "? a\n: b\n? c\n",
    "? |\n  long\n: v\n",
    "{a: 1, b: [x, {c: d}], 'e f': \"g\"}\n",
    "{a: 1,\n b: 2,\n\n c: [\n  3,\n  4\n ]\n}\n",
    "[a, b, ]\n",
    "{a, b: }\n",
    "[a: 1, b]\n",
    "a: 'it''s'\nb: \"tab\\there\\u00e9\\x41\\/\"\nc: \"multi\n  line\n\n  para\"\n",
    "a: plain\n  continued\n\n  after blank\nb: 1\n",
    "a: |\n  line 1\n   line 2\n\n  tail\nb: >\n  folded\n  text\n\n  para\n\n\n",
    "a: |-\n  strip\n\nb: |+\n  keep\n\nc: >2\n    indented\n  x\nd: |1\n  y\n",
    "a: >-\n  x\n\n   more\n  y\nb: 1\n",
    "a: |\n\n\n  late\n",
    "a: &anchor value\nb: *anchor\nc: [*anchor, *anchor]\n",
    "base: &b\n  x: 1\n  y: [1, 2]\nuse:\n  - *b\n  - k: *b\nagain: *b\n",
    "- &a\n  - 1\n  - &b {x: 1}\n- *a\n- *b\n- &c\n  plain\n- *c\n",
    "a: &x\n  b\nc: *x\n",
    "&root\na: 1\n",
    "&a a: 1\nb: *a\n",
    "a: &e\nb: *e\n",
    "a: [&x 1, *x, &y {z: *x}, *y]\n",
    "k: 'a\\b'\nm: \"\"\n",
    "long: " + "x" * 5000 + "\n",
    "unicode: \u00e9\u65e5\u672c\U0001f600\n'\u00e9': 1\n",
    "a: - b\n",
    "a: -b\nc: --- d\n",
    "a: b#c\nd: e #f\n",
    "a: 'x' \nb: \"y\" \n",
    "a:\n\tb\n",
    "a: [1,\n2]\n",
    "!!str a: 1\n",
    "a:\n- b\n-   c\n",
    "a: {b: {c: {d: [[[1]]]}}}\n",
    "empty: {}\nnone: []\n",
    "\n\n\na: 1\n\n\nb:\n\n  - 2\n",
    "'a': 1\n\"b\": 2\n? 'c'\n: 3\n",
    "a: 1\n...\n",
    "--- |\n  text\n",
    "--- >\n folded\n",
    "a: b: c\n",
    '"a\\\n  b": 1\n',
    'a: "\\N\\_\\L\\P"\n',
    "-- a: 1\n",
    "a:\n  - 1\n  -\n  - 3\n",
    "x:\n  - &m {k: v}\n  - {j: *m}\n",
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_documents_load_as_ruamel_loads_them(text: str) -> None:
    assert_same(text, fast_path=None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a: 1\n",
        "\ufeffa: 1\n",
        "a: 1\r\nb:\r\n  - x\r\n",
        "%YAML 1.2\n---\na: yes\n",
        "base: &b\n  x: 1\nuse:\n  - *b\n  - k: *b\n",
        "a: |\n  line 1\n\n  tail\nb: >\n  folded\n  text\n",
        "{a: 1, b: [x, {c: d}], 'e f': \"g\"}\n",
        "? a\n: b\n",
    ],
)
def test_ordinary_documents_take_the_fast_path(text: str) -> None:
    assert_same(text, fast_path=True)


def test_a_generated_policy_is_identical() -> None:
    from claimroute_bench.policyload import policy_text

    assert_same(policy_text(60), fast_path=True)


@pytest.mark.parametrize(
    "text",
    [
        "a:\tb\n",
        "a: b\t\n",
        "a: 'x'\t# comment\n",
        "a: [b]\t\n",
        "a: |\t# comment\n  x\n",
        "? a\t\n: b\n",
    ],
)
def test_tabs_as_separators_are_yaml_1_2(text: str) -> None:
    """The one difference: ruamel refuses a tab anywhere in block context outside scalars;
    YAML 1.2 allows tabs as separating white space (not as indentation), and libyaml reads
    them so (docs/policy.md, file format)."""
    assert reference(text)[0] == "error"
    status, value, lines = fast(text)
    assert status == "ok"
    assert value == reference(text.replace("\t", " "))[1]
    assert lines == reference(text.replace("\t", " "))[2]


def test_a_tab_inside_a_plain_scalar_is_kept() -> None:
    assert reference("a: b \t c\n")[0] == "error"
    assert fast("a: b \t c\n") == ("ok", {"a": "b \t c"}, {("a",): 1})


def test_tab_indentation_is_still_refused() -> None:
    text = "version: 1\nproviders:\n\tcorp: {}\n"
    assert public(text) == reference(text)
    assert public(text)[0] == "error"


# --------------------------------------------------------------------------- handed to ruamel


@pytest.mark.parametrize(
    "text",
    [
        # explicit tags: ruamel refuses most (and lets standard ones such as !!map through)
        "version: !!python/name:os.system ''\n",
        "version: !!python/object/apply:os.system ['true']\n",
        "version: 1\nproviders: !custom {}\n",
        "version: !!binary aGVsbG8=\n",
        "version: !!set {1, 2}\n",
        "a: !!str x\n",
        "a: !!int '3'\n",
        "a: !!float 1\n",
        "a: !!map {b: 1}\n",
        "a: !!seq [1]\n",
        "a: !!omap [b: 1]\n",
        "a: ! x\n",
        "a: !local x\n",
        "%TAG !e! tag:example.com,2000:\n---\na: !e!x 1\n",
        # merge keys and the value indicator
        "a: {<<: {b: 1}, c: 2}\n",
        "b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n",
        "b: &b {x: 1}\nc: &c {z: 2}\nd:\n  <<: [*b, *c]\n",
        "a: <<\n",
        "a: =\n",
        "a: [=]\n",
        # keys that are not strings, or repeated
        "1: a\n",
        "1.5: a\n",
        "0x1f: a\n",
        ".inf: a\n",
        "null: a\n",
        "~: a\n",
        ": a\n",
        "true: a\n",
        "2020-01-01: a\n",
        "{1: a, '1': b}\n",
        "{1: a, 1.0: b}\n",
        "[a, b]: c\n",
        "{a: 1}: c\n",
        "&k a: 1\n*k : 2\n",
        "{a: 1, a: 2}\n",
        "{a: [1], a: [2]}\n",
        "{a: {b: 1}, a: 2}\n",
        "a: 1\nb: 2\na: 3\n",
        # anchors defined twice
        "a: &x 1\nb: &x 2\nc: *x\n",
        "a: &x [&x 1]\n",
        # YAML 1.1 documents, several documents
        "%YAML 1.1\n---\na: yes\nb: 010\nc: 1:20\n",
        "a: 1\n---\nb: 2\n",
        # characters libyaml takes for line breaks and YAML 1.2 does not
        "a: x\u2028y\nb: 1\n",
        "a: 'x\x85y'\nb: 1\n",
        'a: "x\u2029"\nb: 1\n',
        # syntax errors (ruamel's message and line)
        "version: 1\nproviders:\n\tcorp: {}\n",
        "version: 1\nproviders: {corp: {issuer: x}\n",
        "version: 1\nvalidation: 'require_valid\n",
        'version: 1\nvalidation: "a\\qb"\n',
        "version: 1\nvalidation: x\x00y\n",
        "version: 1\nvalidation: \x07\n",
        "version: 1\n  providers: {}\n",
        "version: 1\nproviders:\n  corp:\n    issuer: a: b\n",
        "version: 1\nproviders: [1, 2\nvalidation: x\n",
        "a: *undefined\n",
        "a: &a [1, *a]\n",
        # where libyaml reads the text otherwise than ruamel
        "a: &x: 1\nb: *x:\n",
        "a: &x? 1\nb: *x?\n",
        "a: &x 1\nb: *x:\n",
        "a: |#c\n  x\n",
        "a: >-#c\n  x\n",
        "a: &x |\n  x\nb: *x\n",
        "| #x\n#,\n",
        "a: 1\n\ufeffb: 2\n",
        "k: v\n\ufeff",
        "a: \ud800\n",
        "a: [}\n",
        "- a\nb: c\n",
    ],
)
@pytest.mark.filterwarnings("ignore::ruamel.yaml.error.ReusedAnchorWarning")
def test_the_rest_is_handed_to_ruamel(text: str) -> None:
    assert_same(text, fast_path=False)


# --------------------------------------------------------------------------- shape bounds


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + f"\nversion: *a{levels - 1}\n"


@pytest.mark.parametrize(
    "text",
    [
        billion_laughs(),
        "a: &a [" + ", ".join(["x"] * 2000) + "]\nb: [" + ", ".join(["*a"] * 2000) + "]\n",
        "a: &a [1, *a]\n",
        "a: &a\n  b: [1, *a]\n",
        "d0: &d0 [1]\n"
        + "".join(f"d{i}: &d{i} " + "[" * 10 + f"*d{i - 1}" + "]" * 10 + "\n" for i in range(1, 8)),
        "version: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n",
        "version: " + "{a: " * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1) + "\n",
        "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 1))
        + "  " * (MAX_DEPTH + 1)
        + "v\n",
        "version: " + "[" * 5000 + "\n",
        ("[" * 100 + "\n") * 30,
        "a: &a " + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "\nb: [*a]\n",
        "a: &a " + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "\nb: *a\n",
        "a: &a " + "[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH + "\n",
    ],
    ids=[
        "billion-laughs",
        "quadratic",
        "recursive",
        "recursive-map",
        "deep-through-aliases",
        "flow-list",
        "flow-map",
        "block",
        "long-line",
        "many-lines",
        "alias-one-too-deep",
        "alias-just-fits",
        "exactly-max",
    ],
)
def test_shape_bounds_match_ruamel(text: str) -> None:
    assert_same(text, fast_path=None)


def test_too_many_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "MAX_NODES", 500)
    text = "version: 1\nx:\n" + "  - 1\n" * 600
    with pytest.raises(PolicyError) as fast_info:
        parse_yaml_text(text, NAME)
    with pytest.raises(PolicyError) as reference_info:
        source._parse_with_ruamel(text, NAME)
    assert (fast_info.value.reason, fast_info.value.line) == (
        reference_info.value.reason,
        reference_info.value.line,
    )
    assert fast_info.value.line == 498


@pytest.mark.parametrize("size", [499, 500, 501, 502])
def test_the_node_count_of_aliases_matches(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setattr(source, "MAX_NODES", size)
    text = "a: &a {b: [1, 2, 3], c: {d: e}}\nlist:\n" + "  - *a\n" * 60
    expected = reference(text)
    # yamlload reads no module bound: parse_yaml_text passes source.MAX_NODES
    got = outcome(lambda t: yamlload.load(t, NAME, max_nodes=size, max_depth=MAX_DEPTH), text)
    assert got == expected


def test_aliases_are_copies() -> None:
    value, _ = parse_yaml_text("a: &a {b: [1]}\nc: *a\n", NAME)
    assert value["a"] == value["c"]
    assert value["a"] is not value["c"]
    assert value["a"]["b"] is not value["c"]["b"]


# --------------------------------------------------------------------------- random documents

_KEYS = st.sampled_from(["a", "b", "name", "x-y", "'q'", '"dq"', "k1", "sub"])
_SCALARS = st.sampled_from([*PLAIN_SCALARS[:150], "'s'", '"d"', "''", "|\n  lit\n", ">-\n  f\n"])


def _node(depth: int) -> st.SearchStrategy[Any]:
    if depth <= 0:
        return _SCALARS
    child = _node(depth - 1)
    return st.one_of(
        _SCALARS,
        st.dictionaries(_KEYS, child, max_size=4).map(lambda d: ("map", d)),
        st.lists(child, max_size=4).map(lambda items: ("seq", items)),
    )


def _flow(node: Any) -> str:
    if isinstance(node, tuple) and node[0] == "map":
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in node[1].items()) + "}"
    if isinstance(node, tuple):
        return "[" + ", ".join(_flow(v) for v in node[1]) + "]"
    if "\n" in node:
        return '"block"'
    return node


def _block(node: Any, indent: int) -> str:
    pad = " " * indent
    if isinstance(node, tuple) and node[0] == "map" and node[1]:
        out = ""
        for key, value in node[1].items():
            out += f"{pad}{key}:" + _after(value, indent + 2)
        return out
    if isinstance(node, tuple) and node[0] == "seq" and node[1]:
        return "".join(f"{pad}-" + _after(value, indent + 2) for value in node[1])
    return pad + _flow(node) + "\n"


def _after(value: Any, indent: int) -> str:
    if isinstance(value, tuple) and value[1]:
        return "\n" + _block(value, indent)
    if isinstance(value, str) and "\n" in value:
        return " " + value.replace("\n  ", "\n" + " " * (indent + 2)).rstrip(" ")
    return " " + _flow(value) + "\n"


@settings(max_examples=150, deadline=None)
@given(_node(3))
def test_random_documents_match(node: Any) -> None:
    assert_same(_block(node, 0), fast_path=None)
    assert_same(_flow(node) + "\n", fast_path=None)
