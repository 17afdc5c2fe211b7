import copy
import pickle
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claimroute.config.source import parse_yaml_text
from claimroute.errors import PolicyError
from claimroute.match.claimpath import MISSING, format_claim_path, parse_claim_path, walk


def parse(text: str):
    """Parse the YAML value of `by:` in a small split document."""
    value, root = parse_yaml_text(f"split:\n  by: {text}\n", "p.yaml")
    return parse_claim_path(value["split"]["by"], root / "split" / "by")


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sub", ("sub",)),
        ("realm_access.roles", ("realm_access", "roles")),
        ("a.b.c", ("a", "b", "c")),
        ("'[kubernetes.io].namespace'", ("kubernetes.io", "namespace")),
        ("'a.[b.c].d'", ("a", "b.c", "d")),
        ("'[x.y]'", ("x.y",)),
        ("'[a].[b.c]'", ("a", "b.c")),
        ("'a.[b]'", ("a", "b")),
        ("'[https://corp.example/claims.v1].tier'", ("https://corp.example/claims.v1", "tier")),
        ("'[kubernetes.io].serviceaccount.name'", ("kubernetes.io", "serviceaccount", "name")),
        ("'system:serviceaccount'", ("system:serviceaccount",)),
        ("Groups", ("Groups",)),  # case is kept
    ],
)
def test_parse_string(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[kubernetes.io, namespace]", ("kubernetes.io", "namespace")),
        ("[sub]", ("sub",)),
        ("['a.b', '[c]']", ("a.b", "[c]")),  # list segments are literal, brackets included
    ],
)
def test_parse_list(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("''", "must not be empty"),
        ("a..b", "empty segment"),
        ("'.a'", "empty segment"),
        ("'a.'", "empty segment"),
        ("'[a.b'", "'[' without a matching ']'"),
        ("'a]b'", "']' without a matching '['"),
        ("'a.b]'", "']' without a matching '['"),
        ("'a[b]'", "'[' may only start a segment"),
        ("'[a]b'", "']' must be followed by '.'"),
        ("'[a][b]'", "']' must be followed by '.'"),
        ("'[]'", "empty segment '[]'"),
        ("'[[a]]'", "cannot be nested"),
        ("3", "must be a string"),
        ("true", "must be a string"),
        ("null", "got null"),
        ("{a: b}", "must be a string"),
        ("[]", "must not be an empty list"),
    ],
)
def test_parse_errors_name_file_key_path_and_line(text, fragment):
    with pytest.raises(PolicyError) as info:
        parse(text)
    assert fragment in info.value.reason
    assert info.value.key_path == "split.by"
    assert info.value.line == 2
    assert str(info.value).startswith("p.yaml:2: split.by: ")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("[a, '']", "must not be empty"), ("[a, 3]", "must be a string")],
)
def test_parse_list_segment_errors_point_at_the_segment(text, fragment):
    with pytest.raises(PolicyError) as info:
        parse(text)
    assert fragment in info.value.reason
    assert info.value.key_path == "split.by[1]"
    assert info.value.line == 2


# --- walking -----------------------------------------------------------------------------------

CLAIMS = {
    "sub": "alice",
    "realm_access": {"roles": ["admin", "dev"]},
    "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "svc-a"}},
    "kubernetes": {"io": "not this one"},
    "nothing": None,
    "flag": False,
    "zero": 0,
    "list": [{"a": 1}],
    "text": "abc",
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("sub",), "alice"),
        (("realm_access", "roles"), ["admin", "dev"]),
        (("kubernetes.io", "namespace"), "default"),
        (("kubernetes.io", "serviceaccount", "name"), "svc-a"),
        (("kubernetes", "io"), "not this one"),
        (("nothing",), None),  # a JSON null is a value, not MISSING
        (("flag",), False),
        (("zero",), 0),
    ],
)
def test_walk_resolves(path, expected):
    assert walk(CLAIMS, path) == expected
    assert walk(CLAIMS, path) is not MISSING


@pytest.mark.parametrize(
    "path",
    [
        ("absent",),
        ("realm_access", "groups"),
        ("realm_access", "roles", "0"),  # no list indexing
        ("list", "0"),
        ("list", "a"),
        ("sub", "x"),  # a string is not an object
        ("text", "0"),
        ("zero", "x"),
        ("flag", "x"),
        ("nothing", "x"),
        ("kubernetes", "io", "x"),
        ("kubernetes.io.namespace",),  # a dotted key is one literal segment
    ],
)
def test_walk_missing(path):
    assert walk(CLAIMS, path) is MISSING


def test_walk_without_claims_is_missing():
    assert walk(None, ("sub",)) is MISSING


def test_walk_accepts_any_mapping_at_the_top():
    frozen = MappingProxyType({"a": {"b": 1}})
    assert walk(frozen, ("a", "b")) == 1
    assert walk(frozen, ("a", "c")) is MISSING


def test_walk_follows_a_parsed_bracket_path():
    assert walk(CLAIMS, parse("'[kubernetes.io].namespace'")) == "default"
    assert walk(CLAIMS, parse("kubernetes.io")) == "not this one"


# --- MISSING -----------------------------------------------------------------------------------


def test_missing_is_a_falsy_singleton():
    assert not MISSING
    assert repr(MISSING) == "<missing>"
    assert MISSING is not None
    assert type(MISSING)() is MISSING
    assert copy.copy(MISSING) is MISSING
    assert copy.deepcopy({"v": MISSING})["v"] is MISSING
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING


# --- formatting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (("sub",), "sub"),
        (("realm_access", "roles"), "realm_access.roles"),
        (("kubernetes.io", "namespace"), "[kubernetes.io].namespace"),
        (("a", "b.c", "d"), "a.[b.c].d"),
        (("x.y",), "[x.y]"),
    ],
)
def test_format(path, text):
    assert format_claim_path(path) == text


_SEGMENT = st.text(
    alphabet=st.characters(blacklist_characters="[]", blacklist_categories=("Cs",)), min_size=1
)


@given(st.lists(_SEGMENT, min_size=1, max_size=5).map(tuple))
def test_format_then_parse_round_trips(path):
    _, root = parse_yaml_text("by: x\n", "p.yaml")
    assert parse_claim_path(format_claim_path(path), root / "by") == path
