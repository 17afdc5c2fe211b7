import re

import pytest

from claimroute.config.source import parse_yaml_text
from claimroute.errors import PolicyError
from claimroute.match.claimpath import MISSING
from claimroute.match.matchers import (
    OPERATORS,
    ClaimsMatcher,
    HeadersMatcher,
    PolicyRegex,
    compile_claims,
    compile_headers,
    compile_matcher,
)


def matcher(spec_yaml: str, *, header: bool = False):
    value, root = parse_yaml_text(f"m: {spec_yaml}\n", "p.yaml")
    return compile_matcher(value["m"], root / "m", header=header)


def check(spec_yaml: str, cases: list[tuple[object, bool]]) -> None:
    compiled = matcher(spec_yaml)
    for value, expected in cases:
        assert compiled.matches(value) is expected, (spec_yaml, value, expected)


# --- bare scalars: typed equality, list membership ---------------------------------------------


def test_bare_true_matches_json_true_only():
    check("true", [(True, True), (False, False), ("true", False), (1, False), (1.0, False)])
    check("true", [([False, True], True), ([1, "true"], False), (MISSING, False), (None, False)])


def test_bare_false_is_not_zero_or_empty():
    check("false", [(False, True), (0, False), ("", False), (None, False), (MISSING, False)])


def test_bare_int_equals_float_but_not_bool_or_string():
    check("1", [(1, True), (1.0, True), (True, False), ("1", False), (2, False), ([3, 1], True)])
    check("1.0", [(1, True), (1.0, True), (True, False), ("1.0", False)])
    check("0", [(0, True), (False, False), ([False], False), ([0.0], True)])


def test_bare_string_is_case_sensitive_and_typed():
    check("admin", [("admin", True), ("Admin", False), ("admin ", False), (["dev", "admin"], True)])
    check("'1'", [("1", True), (1, False), ([1], False), (["1"], True)])
    check("'true'", [("true", True), (True, False)])


def test_bare_null_matches_json_null_not_missing():
    check("null", [(None, True), (MISSING, False), ("", False), (0, False), ([None], True)])


def test_bare_scalar_does_not_match_objects_or_nested_lists():
    check("a", [({"a": 1}, False), ([["a"]], False), ([], False)])


# --- exact -------------------------------------------------------------------------------------


def test_exact_scalar_has_no_list_membership():
    check("{exact: admin}", [("admin", True), (["admin"], False), ("Admin", False)])
    check("{exact: 1}", [(1, True), (1.0, True), (True, False), ([1], False)])
    check("{exact: true}", [(True, True), (1, False), ("true", False)])
    check("{exact: null}", [(None, True), (MISSING, False)])


def test_exact_list_is_ordered_and_typed():
    check(
        "{exact: [a, 1, true]}",
        [
            (["a", 1, True], True),
            (["a", 1.0, True], True),
            (["a", True, 1], False),
            (["a", 1, 1], False),
            (["a", 1], False),
            (["a", 1, True, None], False),
            ("a", False),
        ],
    )


def test_exact_mapping_is_deep_and_typed():
    check(
        "{exact: {tier: gold, level: 2, flags: [x]}}",
        [
            ({"tier": "gold", "level": 2, "flags": ["x"]}, True),
            ({"tier": "gold", "level": 2.0, "flags": ["x"]}, True),
            ({"tier": "gold", "level": "2", "flags": ["x"]}, False),
            ({"tier": "gold", "level": 2}, False),
            ({"tier": "gold", "level": 2, "flags": ["x"], "extra": 1}, False),
            (["tier"], False),
        ],
    )


# --- string operators ---------------------------------------------------------------------------


def test_prefix():
    check(
        "{prefix: /api/}",
        [
            ("/api/pets", True),
            ("/api/", True),
            ("/ap", False),
            ("/API/pets", False),
            (["x", "/api/a"], True),
            (["x", 5], False),
            (5, False),
            (MISSING, False),
            (None, False),
        ],
    )


def test_suffix():
    check(
        "{suffix: '@corp.example'}",
        [
            ("a@corp.example", True),
            ("a@corp.example.evil", False),
            (["b@other", "a@corp.example"], True),
            ([], False),
        ],
    )


def test_regex_is_a_full_match():
    check(
        "{regex: 'team-[a-z]+'}",
        [
            ("team-pets", True),
            ("xteam-pets", False),
            ("team-pets-2", False),
            ("team-", False),
            (["a", "team-b"], True),
            ([1, "nope"], False),
        ],
    )


def test_regex_never_matches_numbers():
    check("{regex: '[0-9]+'}", [("42", True), (42, False), (4.2, False), ([42], False)])


def test_regex_alternation_is_anchored_as_a_whole():
    check("{regex: 'a|b'}", [("a", True), ("b", True), ("ab", False)])


def test_regex_inline_flags_work():
    check("{regex: '(?i)admin'}", [("ADMIN", True), ("admins", False)])


def test_string_operators_ignore_non_string_list_elements():
    check("{prefix: '1'}", [([1, 10], False), ([True], False), (["10"], True)])


# --- one_of, contains, present ----------------------------------------------------------------


def test_one_of_is_typed_membership():
    check(
        "{one_of: [admin, 1, true, null]}",
        [
            ("admin", True),
            (1, True),
            (1.0, True),
            (True, True),
            (None, True),
            ("1", False),
            ("true", False),
            (2, False),
            (False, False),
            (MISSING, False),
            (["x", "admin"], True),
            (["x", "y"], False),
        ],
    )


def test_one_of_keeps_bools_and_numbers_apart():
    check("{one_of: [1, 0]}", [(True, False), (False, False), (0, True)])
    check("{one_of: [true]}", [(1, False), (1.0, False), (True, True)])


def test_contains_on_lists_is_typed():
    check(
        "{contains: pets-readers}",
        [
            (["a", "pets-readers"], True),
            (["pets-readers-x"], False),
            ([], False),
            (MISSING, False),
        ],
    )
    check("{contains: 1}", [([1], True), ([1.0], True), ([True], False), (["1"], False)])
    check("{contains: {id: 7}}", [([{"id": 7}], True), ([{"id": 8}], False)])


def test_contains_on_strings_is_substring():
    check(
        "{contains: read}",
        [("pets:read", True), ("pets:READ", False), ("rea", False), (5, False)],
    )
    # a non-string needle never matches a string value
    check("{contains: 1}", [("a1b", False)])


def test_present():
    check(
        "{present: true}",
        [("x", True), ("", True), (0, True), (False, True), ([], True), (None, False)],
    )
    check("{present: true}", [(MISSING, False)])
    check("{present: false}", [(MISSING, True), (None, True), ("x", False), (False, False)])


# --- numeric comparisons ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "below", "equal", "above"),
    [
        ("gt", False, False, True),
        ("gte", False, True, True),
        ("lt", True, False, False),
        ("lte", True, True, False),
    ],
)
def test_comparisons(op, below, equal, above):
    compiled = matcher(f"{{{op}: 10}}")
    assert compiled.matches(9) is below
    assert compiled.matches(10) is equal
    assert compiled.matches(10.0) is equal
    assert compiled.matches(11) is above
    assert compiled.matches(9.5) is below


@pytest.mark.parametrize("value", ["11", True, False, None, MISSING, [11], {"a": 11}])
def test_comparisons_need_a_numeric_value(value):
    assert matcher("{gte: 0}").matches(value) is False
    assert matcher("{lte: 100}").matches(value) is False


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_comparisons_ignore_non_finite_values(value):
    assert matcher("{gt: 0}").matches(value) is False
    assert matcher("{lt: 0}").matches(value) is False


def test_comparison_with_a_float_bound_and_big_ints():
    check("{gt: 0.5}", [(1, True), (0, False)])
    check("{lt: 9007199254740993}", [(9007199254740992, True), (9007199254740993, False)])


def test_several_operators_in_one_mapping_are_anded():
    check("{gte: 1, lt: 5}", [(0, False), (1, True), (4.9, True), (5, False)])
    check("{prefix: a, suffix: z}", [("abz", True), ("ab", False), ("bz", False)])
    check("{present: true, not: {exact: ''}}", [("x", True), ("", False), (MISSING, False)])


# --- not, any_of, all_of ----------------------------------------------------------------------


def test_not_turns_around_including_missing():
    check("{not: admin}", [("admin", False), ("dev", True), (["admin"], False), (MISSING, True)])
    check("{not: {present: true}}", [(MISSING, True), ("x", False)])
    check("{not: {not: admin}}", [("admin", True), ("dev", False)])


def test_any_of():
    check(
        "{any_of: [admin, {prefix: 'ops-'}, {gte: 10}]}",
        [("admin", True), ("ops-1", True), (10, True), ("dev", False), (9, False)],
    )
    check("{any_of: [admin, {prefix: 'ops-'}]}", [(["dev", "ops-x"], True), (MISSING, False)])


def test_all_of():
    check(
        "{all_of: [{contains: a}, {contains: b}]}",
        [(["a", "b"], True), (["a"], False), (["b", "c"], False)],
    )


def test_nesting():
    spec = "{any_of: [{all_of: [{gte: 1}, {lt: 3}]}, {not: {any_of: [{gte: 0}, x]}}]}"
    # matches 1..3, or anything that is neither a number >= 0 nor "x"
    check(spec, [(2, True), (5, False), ("x", False), ("y", True), (-1, True), (MISSING, True)])


def test_missing_matches_nothing_positive():
    for spec in [
        "a",
        "null",
        "{exact: null}",
        "{prefix: ''}",
        "{suffix: ''}",
        "{regex: '.*'}",
        "{one_of: [a, null]}",
        "{contains: a}",
        "{present: true}",
        "{gte: 0}",
        "{any_of: [a, {present: true}]}",
        "{all_of: [{not: a}, {present: true}]}",
    ]:
        assert matcher(spec).matches(MISSING) is False, spec


# --- repr and immutability --------------------------------------------------------------------


def test_repr_reads_like_the_policy():
    compiled = matcher("{any_of: [{prefix: /a}, {gte: 1, lt: 5}, {not: {present: false}}, true]}")
    assert repr(compiled) == (
        'any_of(prefix("/a"), all_of(gte(1), lt(5)), not(present(false)), eq(true))'
    )
    assert repr(matcher("{one_of: [a, 1, null]}")) == 'one_of("a", 1, null)'
    assert repr(matcher("{regex: 'a.*'}")) == 'regex("a.*")'


def test_compiled_matchers_are_frozen_and_compare_by_value():
    first = matcher("{gte: 1, lt: 5}")
    assert first == matcher("{gte: 1, lt: 5}")
    assert first != matcher("{gte: 1, lt: 6}")
    with pytest.raises(AttributeError):
        first.matchers = ()  # type: ignore[misc]


def test_regex_is_compiled_at_load():
    compiled = matcher("{regex: 'a+'}")
    assert isinstance(compiled.pattern, PolicyRegex)  # RE2, compiled once (see the end)


# --- load errors ------------------------------------------------------------------------------

RBAC_DOC = """\
rbac:
  policies:
    - name: p
      principals:
        - claims:
            sub: alice
            groups: {spec}
"""
GROUPS = "rbac.policies[0].principals[0].claims.groups"


def rbac_error(spec: str) -> PolicyError:
    value, root = parse_yaml_text(RBAC_DOC.format(spec=spec), "p.yaml")
    loc = root / "rbac" / "policies" / 0 / "principals" / 0 / "claims"
    with pytest.raises(PolicyError) as info:
        compile_claims(value["rbac"]["policies"][0]["principals"][0]["claims"], loc)
    assert str(info.value).startswith(f"p.yaml:{info.value.line}: {info.value.key_path}: ")
    return info.value


@pytest.mark.parametrize(
    ("spec", "suffix", "fragment"),
    [
        ("{regex: '(unclosed'}", ".regex", "invalid regular expression '(unclosed'"),
        ("{regex: 5}", ".regex", "regex needs a string, got an integer"),
        ("{prefix: 3}", ".prefix", "prefix needs a string, got an integer"),
        ("{suffix: [a]}", ".suffix", "suffix needs a string, got a list"),
        ("{gt: x}", ".gt", "gt needs a number, got a string"),
        ("{lte: true}", ".lte", "lte needs a number, got a boolean"),
        ("{gte: .inf}", ".gte", "finite"),
        ("{lt: .nan}", ".lt", "finite"),
        ("{present: 'yes'}", ".present", "present needs true or false, got a string"),
        ("{present: 1}", ".present", "present needs true or false, got an integer"),
        ("{one_of: a}", ".one_of", "one_of needs a list"),
        ("{one_of: []}", ".one_of", "at least one value"),
        ("{one_of: [a, [b]]}", ".one_of[1]", "one_of takes scalars"),
        ("{any_of: []}", ".any_of", "any_of needs at least one matcher"),
        ("{all_of: []}", ".all_of", "all_of needs at least one matcher"),
        ("{any_of: a}", ".any_of", "any_of needs a list of matchers"),
        ("{all_of: [a, {prefix: 1}]}", ".all_of[1].prefix", "prefix needs a string"),
        ("{not: {regex: '['}}", ".not.regex", "invalid regular expression"),
        ("{not: [a, b]}", ".not", "a bare list is ambiguous"),
        ("{any_of: [{bogus: 1}]}", ".any_of[0].bogus", "unknown matcher operator 'bogus'"),
        ("{}", "", "empty matcher"),
        ("{not: {}}", ".not", "empty matcher"),
    ],
)
def test_load_errors_name_key_path_and_line(spec, suffix, fragment):
    error = rbac_error(spec)
    assert error.key_path == GROUPS + suffix
    assert error.line == 7
    assert fragment in error.reason


def test_unknown_operator_lists_the_known_ones():
    error = rbac_error("{contain: admins}")
    assert error.key_path == GROUPS + ".contain"
    assert error.line == 7
    assert "unknown matcher operator 'contain'" in error.reason
    for op in OPERATORS:
        assert op in error.reason


def test_bare_list_suggests_the_explicit_forms():
    error = rbac_error("[admins, devs]")
    assert error.key_path == GROUPS
    assert error.line == 7
    for hint in ("one_of", "exact", "contains"):
        assert hint in error.reason


def test_error_line_in_block_style():
    text = "claims:\n  groups:\n    one_of: [a]\n    regex: '(x'\n"
    value, root = parse_yaml_text(text, "p.yaml")
    with pytest.raises(PolicyError) as info:
        compile_claims(value["claims"], root / "claims")
    assert info.value.key_path == "claims.groups.regex"
    assert info.value.line == 4
    assert str(info.value).startswith("p.yaml:4: claims.groups.regex: invalid regular expression")


# --- claims matcher ---------------------------------------------------------------------------


def claims_matcher(text: str) -> ClaimsMatcher:
    value, root = parse_yaml_text(text, "p.yaml")
    return compile_claims(value["claims"], root / "claims")


KUBE = {
    "sub": "system:serviceaccount:default:svc-a",
    "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "svc-a"}},
    "groups": ["pets-readers", "dev"],
    "email_verified": True,
    "realm_access": {"roles": ["admin"]},
    "level": 3,
}


def test_claims_are_anded():
    compiled = claims_matcher(
        "claims:\n"
        "  sub: system:serviceaccount:default:svc-a\n"
        "  groups: {contains: pets-readers}\n"
        "  email_verified: true\n"
    )
    assert compiled.matches(KUBE)
    assert not compiled.matches({**KUBE, "email_verified": "true"})
    assert not compiled.matches({**KUBE, "groups": ["dev"]})
    assert not compiled.matches({k: v for k, v in KUBE.items() if k != "sub"})


def test_claims_nested_and_bracketed_paths():
    compiled = claims_matcher(
        "claims:\n"
        "  realm_access.roles: admin\n"
        "  '[kubernetes.io].namespace': default\n"
        "  '[kubernetes.io].serviceaccount.name': {prefix: svc-}\n"
    )
    assert compiled.matches(KUBE)
    assert not compiled.matches({**KUBE, "kubernetes.io": {"namespace": "kube-system"}})
    assert not compiled.matches({**KUBE, "realm_access": {"roles": "dev"}})
    # the dotted claim name is not walked as two levels
    assert not claims_matcher("claims: {kubernetes.io.namespace: default}").matches(KUBE)


def test_claims_empty_matches_everything_including_anonymous():
    compiled = claims_matcher("claims: {}")
    assert compiled.matches(KUBE)
    assert compiled.matches({})
    assert compiled.matches(None)


def test_claims_anonymous_only_passes_absence_matchers():
    assert claims_matcher("claims: {sub: {present: false}}").matches(None)
    assert claims_matcher("claims: {sub: {not: alice}}").matches(None)
    assert not claims_matcher("claims: {sub: {present: true}}").matches(None)
    assert not claims_matcher("claims: {sub: {not: {present: false}}}").matches(None)
    assert not claims_matcher("claims: {level: {lt: 10}}").matches(None)


def test_claims_typed_numbers_and_booleans():
    assert claims_matcher("claims: {level: {gte: 1, lt: 5}}").matches(KUBE)
    assert not claims_matcher("claims: {level: {gte: 1, lt: 3}}").matches(KUBE)
    assert not claims_matcher("claims: {level: '3'}").matches(KUBE)
    assert not claims_matcher("claims: {email_verified: 1}").matches(KUBE)


def test_claims_repr():
    compiled = claims_matcher("claims: {'[kubernetes.io].namespace': default, level: {gt: 1}}")
    assert repr(compiled) == 'claims([kubernetes.io].namespace: eq("default"), level: gt(1))'


@pytest.mark.parametrize(
    ("text", "key_path", "fragment"),
    [
        ("claims: [sub]", "claims", "expected a mapping"),
        ("claims:\n", "claims", "got null"),
        ("claims:\n  a..b: x\n", "claims.a..b", "empty segment"),
        ("claims:\n  '[a.b': x\n", "claims.[a.b", "without a matching ']'"),
        ("claims:\n  sub: [a, b]\n", "claims.sub", "a bare list is ambiguous"),
    ],
)
def test_claims_load_errors(text, key_path, fragment):
    value, root = parse_yaml_text(text, "p.yaml")
    with pytest.raises(PolicyError) as info:
        compile_claims(value["claims"], root / "claims")
    assert info.value.key_path == key_path
    assert fragment in info.value.reason
    assert info.value.line is not None


# --- headers matcher --------------------------------------------------------------------------


def headers_matcher(text: str) -> HeadersMatcher:
    value, root = parse_yaml_text(text, "p.yaml")
    return compile_headers(value["headers"], root / "headers")


def getter(headers: dict[str, str]):
    lowered = {k.lower(): v for k, v in headers.items()}
    return lowered.get


def test_header_names_are_case_insensitive():
    compiled = headers_matcher("headers: {X-Debug: on}")
    assert compiled.entries[0][0] == "x-debug"
    assert compiled.matches(getter({"X-DEBUG": "on"}))
    assert not compiled.matches(getter({"X-DEBUG": "ON"}))


def test_header_scalars_are_compared_as_strings():
    assert headers_matcher("headers: {x-debug: 1}").matches(getter({"x-debug": "1"}))
    assert not headers_matcher("headers: {x-debug: 1}").matches(getter({"x-debug": "1.0"}))
    assert headers_matcher("headers: {x-flag: true}").matches(getter({"x-flag": "true"}))
    assert not headers_matcher("headers: {x-flag: true}").matches(getter({"x-flag": "True"}))
    assert headers_matcher("headers: {x-v: {exact: 2}}").matches(getter({"x-v": "2"}))
    assert headers_matcher("headers: {x-v: {one_of: [1, false]}}").matches(getter({"x-v": "false"}))
    assert headers_matcher("headers: {x-v: {contains: 7}}").matches(getter({"x-v": "a7b"}))


def test_header_absent_is_missing():
    assert headers_matcher("headers: {x-debug: {present: false}}").matches(getter({}))
    assert headers_matcher("headers: {x-debug: {not: '1'}}").matches(getter({}))
    assert not headers_matcher("headers: {x-debug: {present: true}}").matches(getter({}))
    assert not headers_matcher("headers: {x-debug: {regex: '.*'}}").matches(getter({}))
    # an empty header is present
    assert headers_matcher("headers: {x-debug: {present: true}}").matches(getter({"x-debug": ""}))


def test_headers_are_anded_and_string_operators_work():
    compiled = headers_matcher(
        "headers:\n  x-canary: {regex: 'yes|1'}\n  user-agent: {prefix: 'curl/'}\n"
    )
    assert compiled.matches(getter({"x-canary": "yes", "user-agent": "curl/8.0"}))
    assert not compiled.matches(getter({"x-canary": "yes", "user-agent": "wget"}))
    assert not compiled.matches(getter({"user-agent": "curl/8.0"}))
    assert headers_matcher("headers: {}").matches(getter({}))


def test_header_getter_receives_lower_case_names():
    asked: list[str] = []

    def get(name: str) -> str | None:
        asked.append(name)
        return None

    headers_matcher("headers: {X-A: {present: false}, x-B: {present: false}}").matches(get)
    assert asked == ["x-a", "x-b"]


@pytest.mark.parametrize(
    ("text", "key_path", "fragment"),
    [
        ("headers: {x-a: null}", "headers.x-a", "cannot be null"),
        ("headers: {x-a: {exact: [1]}}", "headers.x-a.exact", "a header value is a string"),
        ("headers: {x-a: {one_of: [a, null]}}", "headers.x-a.one_of[1]", "cannot be null"),
        ("headers: {x-a: {gt: 1}}", "headers.x-a.gt", "use regex"),
        ("headers: {x-a: {prefix: 1}}", "headers.x-a.prefix", "prefix needs a string"),
        ("headers: {x-a: [a]}", "headers.x-a", "a bare list is ambiguous"),
        ("headers: {'bad name': a}", "headers.bad name", "not a valid header name"),
        ("headers: {':method': GET}", "headers.:method", "not a valid header name"),
        ("headers: {X-A: a, x-a: b}", "headers.x-a", "given twice"),
        ("headers: [x-a]", "headers", "expected a mapping"),
    ],
)
def test_header_load_errors(text, key_path, fragment):
    value, root = parse_yaml_text(text, "p.yaml")
    with pytest.raises(PolicyError) as info:
        compile_headers(value["headers"], root / "headers")
    assert info.value.key_path == key_path
    assert info.value.line == 1
    assert fragment in info.value.reason


# --- regular expressions are RE2 (linear time; docs/policy.md, "Claim paths and matchers") ---

# Patterns that Python `re` and RE2 both take, with the same meaning on the inputs below.
SHARED_PATTERNS = [
    r"team-[a-z]+",
    r"a|b",
    r"a|ab",
    r"(a|ab)(c|bcd)(d*)",
    r"[0-9]+",
    r"/api/v[0-9]+/pets(/.*)?",
    r"(?i)admin",
    r"(?i)straße",
    r"(?i)k",
    r"(?i)s+",
    r"(?i:a)b",
    r"(?s)a.*b",
    r"a.*b",
    r"(?m)^a$",
    r"^a$",
    r"a$",
    r"\Aa",
    r"[^a]*",
    r"[]a]+",
    r"[^]a]",
    r"a{2,3}",
    r"a{2,}",
    r"a{0,2}?b",
    r"(?:ab)+?c*",
    r"x*",
    r"",
    r"\.",
    r".",
    r"..",
    r"[^x]",
    r"\\",
    r"a\|b",
    r"\$\^",
    r"[-a]+",
    r"é+",
    "[\u03b1-\u03c9]+",  # Greek small letters
    r"[\x00-\x1f]+",
    r"\t\n\r\f\v",
    r"(?P<name>[a-z]+)=(?P<value>[0-9]+)",
    r"(a+)+b",
    r"([a-zA-Z0-9]+[._-]?)+@([a-zA-Z0-9-]+\.)+[a-zA-Z]{2,}",
    # ASCII classes: compared on ASCII inputs only (see ASCII_CLASSES)
    r"[\w.-]+@[\w-]+\.[a-z]{2,}",
    r"\d{3}-\d{4}",
    r"\s*x\s*",
    r"\bfoo\b.*",
    r"\W+",
]
SHARED_INPUTS = [
    "", "a", "b", "ab", "abc", "abcd", "aaa", "aab", "ADMIN", "admin", "Admin!", "team-x",
    "team-", "/api/v2/pets", "/api/v2/pets/1", "/api/vx/pets", "a\nb", "a\n", "\na", "x",
    " x ", "\tx\n", "foo", "foo bar", "foobar", "a@b.io", "ann.lee@corp.test", "123-4567",
    "12-34", "name=42", "]", "]]a", "\t\n\r\x0c\x0b", "\\", "a|b", "$^", "é", "ééé", "αβγ",
    "straße", "STRASSE", "STRAẞE", "K", "\u212a", "\u017f", "\x00", "\x01\x1f", "\ud800",
    "a\udcffb", "-a-", "aaaaaaaaaaaab", "aaaaaaaaaaaa", "ab@cd.ef", "!?",
]  # fmt: skip
ASCII_CLASSES = re.compile(r"\\[dwsbDWSB]")


def _ascii_safe(text: str) -> bool:
    # where RE2's ASCII \d \w \s \b agree with Python's Unicode ones
    return all(" " <= c <= "~" or c in "\t\n\r\x0c" for c in text)


def test_re2_answers_as_python_re_did_on_shared_syntax():
    # The full-match semantics are kept: the same yes or no as re.fullmatch before.
    compared = 0
    for pattern in SHARED_PATTERNS:
        compiled = compile_matcher({"regex": pattern}, parse_yaml_text("m: 1\n", "p.yaml")[1])
        old = re.compile(pattern)
        for text in SHARED_INPUTS:
            if ASCII_CLASSES.search(pattern) and not _ascii_safe(text):
                continue
            expected = old.fullmatch(text) is not None
            assert compiled.matches(text) is expected, (pattern, text, expected)
            compared += 1
    assert compared > 2000


def test_regex_is_a_full_match_not_a_search():
    check("{regex: 'b'}", [("b", True), ("abc", False), ("ab", False), ("bc", False)])
    check("{regex: 'a|ab'}", [("ab", True), ("a", True), ("abab", False)])
    check("{regex: '(?m)^a$'}", [("a", True), ("a\nb", False), ("a\n", False)])


@pytest.mark.parametrize(
    ("spec", "cases"),
    [
        ("{regex: '(?i)admin'}", [("ADMIN", True), ("aDmIn", True), ("admins", False)]),
        ("{regex: '(?i:a)b'}", [("Ab", True), ("AB", False)]),
        ("{regex: '(?i)a(?-i)b'}", [("Ab", True), ("AB", False)]),
        ("{regex: 'a(?i)b'}", [("aB", True), ("AB", False)]),
        ("{regex: '(?s)a.b'}", [("a\nb", True), ("axb", True)]),
        ("{regex: 'a.b'}", [("a\nb", False), ("axb", True)]),
        ("{regex: '(?m)a$\\n^b'}", [("a\nb", True)]),
        ("{regex: '(?U)a+'}", [("aaa", True)]),
        ("{regex: '(?i)é'}", [("É", True)]),
    ],
)
def test_inline_flags(spec, cases):
    check(spec, cases)


def test_re2_only_syntax_works():
    check("{regex: '\\pL+'}", [("Ωmega", True), ("a1", False)])
    check("{regex: '\\p{Greek}+'}", [("αβ", True), ("ab", False)])
    check("{regex: 'caf\\x{e9}'}", [("café", True)])
    check("{regex: '\\Qa.b\\E'}", [("a.b", True), ("axb", False)])
    check("{regex: 'a\\z'}", [("a", True), ("a\n", False)])
    check("{regex: '[[:digit:]]+'}", [("42", True), ("4a", False)])


def test_ascii_classes_are_ascii():
    # RE2's \d \w \s \b are ASCII (docs/policy.md); write \pN or \pL for Unicode classes
    check("{regex: '\\d+'}", [("42", True), ("\u0663", False)])
    check("{regex: '\\w+'}", [("a_1", True), ("é", False)])
    check("{regex: '\\s'}", [(" ", True), ("\t", True), ("\x0b", False), ("\u00a0", False)])
    check("{regex: '\\pN+'}", [("\u0663", True)])


def test_lone_surrogates_are_one_character_and_never_an_error():
    # `"\ud800"` is a legal JSON escape in a claim; mitmproxy keeps a header or path byte that
    # is not UTF-8 as a surrogate (\udc80-\udcff). Both must match as `re` did, and not raise.
    check("{regex: 'a.b'}", [("a\ud800b", True), ("a\udcffb", True), ("a\ud800\udcffb", False)])
    check("{regex: '[^x]+'}", [("\ud800", True)])
    check("{regex: '[a-z]+'}", [("ab\udc80", False)])
    check("{regex: '.*admin'}", [("\ud800admin", True)])


def test_regex_on_list_claims_and_headers_is_re2_too():
    check("{regex: 'team-[a-z]+'}", [(["x", 1, "team-a"], True), (["x", "team-1"], False)])
    compiled = headers_matcher("headers: {x-email: {regex: '[a-z.]+@corp\\.test'}}")
    assert compiled.matches(getter({"x-email": "ann.lee@corp.test"}))
    assert not compiled.matches(getter({"x-email": "ann.lee@corp.test.evil"}))


EVIL_EMAIL_REGEX = r"([a-zA-Z0-9]+[._-]?)+@([a-zA-Z0-9-]+\.)+[a-zA-Z]{2,}"


@pytest.mark.parametrize("length", [30, 1_000, 100_000])
def test_catastrophic_patterns_take_linear_time(length):
    # With `re` the 30-character e-mail case alone takes about a minute (twice as long for
    # every character more: 2^n ways to split the run of letters).
    import time

    email = compile_matcher({"regex": EVIL_EMAIL_REGEX}, parse_yaml_text("m: 1\n", "p.yaml")[1])
    nested = compile_matcher({"regex": "(a+)+b"}, parse_yaml_text("m: 1\n", "p.yaml")[1])
    started = time.perf_counter()
    assert not email.matches("a" * length + "!")
    assert not nested.matches("a" * length)
    assert not email.matches(["x", "a" * length + "!"])
    assert time.perf_counter() - started < 1.0


def test_claims_matcher_with_an_evil_claim_is_fast():
    import time

    compiled = claims_matcher(f"claims: {{email: {{regex: '{EVIL_EMAIL_REGEX}'}}}}")
    started = time.perf_counter()
    assert not compiled.matches({"email": "a" * 5_000 + "!"})
    assert compiled.matches({"email": "ann.lee@corp.test"})
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("pattern", "fragments"),
    [
        ("(a)\\1", ["invalid escape sequence: \\1", "backreferences"]),
        ("(?P<n>a)(?P=n)", ["invalid perl operator: (?P"]),
        ("a(?=b)", ["invalid perl operator: (?=", "lookaround"]),
        ("a(?!b)", ["invalid perl operator: (?!"]),
        ("(?<=a)b", ["invalid perl operator: (?<="]),
        ("(?<!a)b", ["invalid perl operator: (?<!"]),
        ("a*+", ["bad repetition operator: *+", "possessive"]),
        ("a++", ["bad repetition operator: ++"]),
        ("a?+", ["bad repetition operator: ?+"]),
        ("(?>a)", ["invalid perl operator: (?>", "atomic groups"]),
        ("a\\Z", ["invalid escape sequence: \\Z", "write \\z (or $)"]),
        ("(?x)a b", ["(?x", "inline flags i, m, s and U only"]),
        ("(?a)\\w", ["inline flags i, m, s and U only"]),
        ("(?#note)a", ["(?#...) comments"]),
        ("caf\\u00e9", ["invalid escape sequence: \\u", "\\x{hhhh}"]),
        ("a{1001}", ["invalid repetition size"]),
        ("(unclosed", ["missing ): (unclosed"]),
        ("a{,3}", ["{,3} would be literal text in RE2", "write {0,3}", "\\{,3}"]),
        ("x(ab){,}", ["{,} would be literal text in RE2", "write {0,}"]),
        ("[[:alpha:]]{,2}", ["{,2} would be literal text"]),
    ],
)
def test_unsupported_regex_syntax_is_refused_at_load(pattern, fragments):
    error = rbac_error(f"{{regex: '{pattern}'}}")
    assert error.key_path == GROUPS + ".regex"
    assert error.line == 7
    assert error.reason.startswith(f"invalid regular expression {pattern!r}: ")
    for fragment in fragments:
        assert fragment in error.reason


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("a\\{,3}", "a{,3}"),
        ("a[{,3}]", "a,"),
        ("[]{,3}]+", "]{,3}"),
        ("[^]{,3}]", "x"),
        ("[[:alpha:]{,3}]+", "a{,3}"),
        ("\\Q{,3}\\E", "{,3}"),
        ("a{0,3}", "aaa"),
        ("a{2,}", "aaaa"),
    ],
)
def test_literal_braces_are_not_taken_for_a_python_repetition(pattern, text):
    check(f"{{regex: '{pattern}'}}", [(text, True)])


def test_regex_error_names_file_key_path_and_line_in_block_style():
    text = "claims:\n  email:\n    regex: '(?<=@)corp'\n"
    value, root = parse_yaml_text(text, "p.yaml")
    with pytest.raises(PolicyError) as info:
        compile_claims(value["claims"], root / "claims")
    assert str(info.value).startswith(
        "p.yaml:3: claims.email.regex: invalid regular expression '(?<=@)corp': "
    )


def test_google_re2_never_falls_back_to_python_re():
    # google-re2 refuses what RE2 cannot do (some other `re2` modules silently use `re`)
    import re2

    for pattern in ["(a)\\1", "a(?=b)", "a*+", "(?>a)"]:
        with pytest.raises(re2.error):
            re2.compile(pattern)
    compiled = matcher("{regex: 'a+'}").pattern
    assert not isinstance(compiled._fullmatch.__self__, re.Pattern)
    assert type(compiled._fullmatch.__self__).__module__ == "re2"


def test_a_falling_back_engine_is_refused(monkeypatch):
    import re2

    from claimroute.match import matchers

    def fallback(pattern, options=None):  # what a falling-back `re2` module returns
        return re.compile(pattern)

    monkeypatch.setattr(re2, "compile", fallback)
    with pytest.raises(RuntimeError, match="fell back to Python re"):
        matcher("{regex: 'a+'}")
    with pytest.raises(ImportError, match="not google-re2"):
        matchers._check_engine()


def test_policy_regexes_compare_by_text():
    assert matcher("{regex: 'a+'}") == matcher("{regex: 'a+'}")
    assert matcher("{regex: 'a+'}") != matcher("{regex: 'a*'}")
    assert repr(matcher("{regex: 'a+'}").pattern) == "PolicyRegex('a+')"


# --- has_word: space-delimited claims (RFC 6749 §3.3 scope) ------------------------------------


def test_has_word_splits_a_string_on_spaces():
    check(
        "{has_word: admin}",
        [
            ("read admin", True),
            ("admin", True),
            ("admin read", True),
            ("read  admin ", True),  # doubled and trailing spaces are no words
            ("superadmin", False),  # `contains` would match: a substring test
            ("admins read", False),
            ("read:admin", False),
            ("Admin", False),  # case-sensitive, as scope tokens are
            ("read\tadmin", False),  # only U+0020 separates scope tokens
            ("", False),
        ],
    )
    assert matcher("{contains: admin}").matches("superadmin")  # what the docs warn about


def test_has_word_on_a_list_claim_looks_at_every_string_element():
    check(
        "{has_word: admin}",
        [
            (["read", "admin"], True),
            (["read admin"], True),  # a list of space-delimited strings
            (["read", "superadmin"], False),
            ([["admin"]], False),  # nested lists are not looked into
            ([1, True, None], False),
            ([], False),
        ],
    )


@pytest.mark.parametrize("value", [MISSING, None, 1, True, {"admin": 1}, {"scope": "admin"}])
def test_has_word_never_matches_other_values(value):
    assert not matcher("{has_word: admin}").matches(value)
    assert matcher("{not: {has_word: admin}}").matches(value)


def test_has_word_composes_and_reads_like_the_policy():
    both = matcher("{all_of: [{has_word: read}, {has_word: write}]}")
    assert both.matches("write read") and not both.matches("read")
    assert repr(matcher("{has_word: admin}")) == 'has_word("admin")'
    assert matcher("{has_word: a}") == matcher("{has_word: a}") != matcher("{has_word: b}")
    assert "has_word" in OPERATORS


def test_has_word_on_headers_and_claims_matchers():
    compiled = headers_matcher("headers: {x-scopes: {has_word: admin}}")
    assert compiled.matches(getter({"x-scopes": "read admin"}))
    assert not compiled.matches(getter({"x-scopes": "superadmin"}))
    assert not compiled.matches(getter({}))
    claims = claims_matcher("claims: {scope: {has_word: 'pets:write'}, scp: {has_word: x}}")
    assert claims.matches({"scope": "pets:read pets:write", "scp": ["y", "x"]})
    assert not claims.matches({"scope": "pets:read", "scp": ["x"]})
    assert not claims.matches(None)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("{has_word: ''}", "has_word needs a word, got an empty string"),
        ("{has_word: 'read admin'}", "has_word takes one word"),
        ("{has_word: ' admin'}", "has_word takes one word"),
        ("{has_word: 3}", "has_word needs a string, got an integer"),
        ("{has_word: [admin]}", "has_word needs a string, got a list"),
        ("{has_word: null}", "has_word needs a string"),
    ],
)
def test_has_word_load_errors_name_key_path_and_line(spec, fragment):
    error = rbac_error(spec)
    assert error.key_path == GROUPS + ".has_word"
    assert error.line == 7
    assert fragment in error.reason


def test_has_word_header_load_error():
    value, root = parse_yaml_text("headers:\n  x-scopes: {has_word: 'a b'}\n", "p.yaml")
    with pytest.raises(PolicyError) as info:
        compile_headers(value["headers"], root / "headers")
    assert (info.value.key_path, info.value.line) == ("headers.x-scopes.has_word", 2)
