"""Policy-file robustness: whatever the file holds, loading ends quickly in a Policy or in a
PolicyError that names the file, the key path and the line; the proxy never starts on a bad
file, and a bad reload keeps the last good policy.

Unit part: malformed YAML, alias bombs and deep nesting (bounded in time), the 4 MiB cap,
unknown matcher operators, and a sweep that puts every wrong type at every key of a complete
policy. End-to-end part: a real mitmdump refusing two bad files, and a running one rejecting a
series of bad edits, then taking a good one.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claimroute.config import source
from claimroute.config.source import MAX_DEPTH, MAX_FILE_BYTES, Loc, parse_yaml_text
from claimroute.errors import PolicyError
from claimroute.policy.load import load_policy, load_policy_text, parse_policy
from claimroute.policy.model import Policy
from claimroute_tools.lab import EchoUpstream, MitmdumpProcess, TestIssuer
from claimroute_tools.lab.mitmdump import run_mitmdump_until_exit
from tests.e2e.conftest import send

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")

NAME = "policy.yaml"
FAST = 3.0  # seconds; generous for slow CI machines (these take milliseconds)

COMPLETE = """\
version: 1
providers:
  corp:
    issuer: https://idp.corp.example
    audiences: [orders-api]
    jwks: {file: corp.pem}
    algorithms: [ES256]
    token_source:
      headers: [{name: authorization, prefix: "Bearer "}]
      query_params: [access_token]
      cookies: [session]
    keep_token: false
    clock_skew: 60s
    require_expiration: true
    max_lifetime: 24h
    claims_to_headers:
      - {claim: sub, header: x-user}
      - {claim: realm_access.roles, header: x-roles}
  kube:
    issuer: https://kube.example
    jwks:
      url: http://127.0.0.1:9/jwks.json
      cache_duration: 5m
      timeout: 5s
validation: require_valid
rbac:
  mode: enforce
  default_action: deny
  policies:
    - name: pets-readers
      action: allow
      principals:
        - provider: kube
          claims:
            sub: system:serviceaccount:default:svc-a
            groups: {contains: pets-readers}
            email_verified: true
            level: {any_of: [{gte: 3}, {not: {present: true}}]}
      permissions:
        methods: [GET, HEAD]
        paths: [{prefix: /api/pets}]
        hosts: [pets.internal]
routes:
  - name: employees-to-canary
    match:
      claims: {org: solo.io}
      headers: {x-debug: "1"}
      paths: [{exact: /x}]
      methods: [GET]
      authenticated: true
    upstream: http://127.0.0.1:8082
  - name: ten-percent
    match: {authenticated: true}
    split:
      by: sub
      salt: experiment-7
      to:
        - {upstream: http://127.0.0.1:8082, weight: 10}
        - {upstream: http://127.0.0.1:8081, weight: 90}
    preserve_host: false
"""


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("robust")
    (folder / "corp.pem").write_bytes(TestIssuer("corp", "ES256").public_pem())
    return folder


def load_error(text: str, base: Path) -> PolicyError:
    started = time.monotonic()
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, NAME, base=base)
    assert time.monotonic() - started < FAST, "loading a bad policy took too long"
    return info.value


def line_of(text: str, needle: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if needle in line)


def test_the_complete_policy_loads(keydir: Path) -> None:
    policy = load_policy_text(COMPLETE, NAME, base=keydir)
    assert set(policy.providers) == {"corp", "kube"}


# --------------------------------------------------------------------------- malformed YAML


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("version: 1\nproviders:\n\tcorp: {}\n", 3, "'\\t'"),
        ("version: 1\nproviders: {corp: {issuer: x}\n", 3, "invalid YAML"),
        ("version: 1\nvalidation: 'require_valid\n", 3, "invalid YAML"),
        ('version: 1\nvalidation: "a\\qb"\n', 2, "invalid YAML"),
        ("version: 1\nvalidation: x\x00y\n", None, "invalid YAML"),
        ("version: 1\nvalidation: \x07\n", None, "invalid YAML"),
        ("version: 1\n---\nversion: 1\n", 2, "invalid YAML"),
        ("version: 1\n  providers: {}\n", 2, "invalid YAML"),
        ("? [a, b]\n: c\n", None, "unsupported mapping key"),
        ("version: !!python/name:os.system ''\n", None, "unsupported YAML value"),
        ("version: !!python/object/apply:os.system ['true']\n", None, "unsupported YAML tag"),
        ("version: 1\nproviders: !custom {}\n", None, "unsupported YAML tag"),
        ("version: !!binary aGVsbG8=\n", None, "unsupported YAML value"),
        ("version: !!set {1, 2}\n", None, "unsupported YAML value"),
    ],
    ids=[
        "tab-indent",
        "unclosed-brace",
        "unclosed-quote",
        "bad-escape",
        "nul",
        "bell",
        "two-documents",
        "bad-indent",
        "complex-key",
        "python-name-tag",
        "python-apply-tag",
        "custom-map-tag",
        "binary-tag",
        "set-tag",
    ],
)
def test_malformed_yaml_is_a_located_policy_error(
    tmp_path: Path, text: str, line: int | None, words: str
) -> None:
    exc = load_error(text, tmp_path)
    assert exc.file == NAME
    assert exc.key_path == ""
    if line is not None:
        assert exc.line == line, str(exc)
    assert words in str(exc)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "~\n", "'a string'\n", "[1, 2]\n"])
def test_a_document_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    assert "expected a mapping" in load_error(text, tmp_path).reason


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_bytes(b"version: 1\nproviders:\n  corp: \xff\xfe\x00junk\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert (info.value.file, info.value.reason) == (str(path), "file is not UTF-8")


def test_random_binary_junk(tmp_path: Path) -> None:
    junk = bytes(range(256)) * 64
    path = tmp_path / NAME
    path.write_bytes(junk)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.file == str(path)


def test_a_utf8_bom_is_allowed(keydir: Path) -> None:
    path = keydir / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + COMPLETE.encode())
    assert isinstance(load_policy(path), Policy)


# --------------------------------------------------------------------------- aliases, size, depth


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + f"\nversion: *a{levels - 1}\n"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (billion_laughs(), "alias bomb"),
        # quadratic: one big list, referenced many times from one line
        (
            "a: &a [" + ", ".join(["x"] * 2000) + "]\nb: [" + ", ".join(["*a"] * 2000) + "]\n",
            "alias bomb",
        ),
        # merge keys repeat a mapping too
        (
            "a: &a {"
            + ", ".join(f"k{i}: {i}" for i in range(2000))
            + "}\n"
            + "".join(f"m{i}: {{<<: *a}}\n" for i in range(60)),
            "alias bomb",
        ),
        ("a: &a [1, *a]\n", "inside the node it names"),
        # depth through aliases: each anchor nests the previous one 10 levels deeper
        (
            "d0: &d0 [1]\n"
            + "".join(
                f"d{i}: &d{i} " + "[" * 10 + f"*d{i - 1}" + "]" * 10 + "\n" for i in range(1, 8)
            ),
            "nested deeper",
        ),
    ],
    ids=["billion-laughs", "quadratic", "merge-keys", "recursive", "deep-through-aliases"],
)
def test_alias_bombs_are_refused_fast(tmp_path: Path, text: str, words: str) -> None:
    exc = load_error(text, tmp_path)
    assert words in exc.reason, str(exc)
    assert exc.line is not None


def test_ordinary_aliases_still_work(keydir: Path) -> None:
    text = COMPLETE.replace(
        "            sub: system:serviceaccount:default:svc-a\n",
        "            sub: &svc system:serviceaccount:default:svc-a\n",
    ).replace("claims: {org: solo.io}", "claims: {org: solo.io, sub: *svc}")
    policy = load_policy_text(text, NAME, base=keydir)
    assert policy.routes[0].match.claims is not None


def test_too_many_values_without_aliases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real bound (100 000 values) takes seconds to reach on a slow machine; a lower one
    # exercises the same path.
    monkeypatch.setattr(source, "MAX_NODES", 500)
    text = "version: 1\nx:\n" + "  - 1\n" * 600
    exc = load_error(text, tmp_path)
    assert "more than 500 values" in exc.reason
    # The mapping, `version`, 1, `x` and the list come first: item 496 (line 498) is value 501.
    assert exc.line == 498


def test_a_file_over_the_size_cap(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_bytes(b"version: 1\n# " + b"x" * MAX_FILE_BYTES + b"\n")
    started = time.monotonic()
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert time.monotonic() - started < FAST
    assert info.value.file == str(path)
    assert f"larger than {MAX_FILE_BYTES} bytes" in info.value.reason


@pytest.mark.parametrize(
    "text",
    [
        "version: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n",
        "version: " + "{a: " * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1) + "\n",
        "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 1))
        + "  " * (MAX_DEPTH + 1)
        + "v\n",
        "version: " + "[" * 200_000 + "\n",  # 200 KB of brackets: stops at the bound
        ("[" * 1000 + "\n") * 300,
    ],
    ids=["flow-list", "flow-map", "block", "huge-one-line", "many-lines"],
)
def test_deep_nesting_is_refused_fast(tmp_path: Path, text: str) -> None:
    exc = load_error(text, tmp_path)
    assert f"nested deeper than {MAX_DEPTH} levels" in exc.reason


def test_nesting_within_the_bound_is_fine(keydir: Path) -> None:
    matcher = "{not: " * 20 + "{present: false}" + "}" * 20
    text = COMPLETE.replace("email_verified: true", f"email_verified: {matcher}")
    assert load_policy_text(text, NAME, base=keydir).rbac is not None


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("old", "new", "key_path"),
    [
        (
            "groups: {contains: pets-readers}",
            "groups: {startswith: pets}",
            "rbac.policies[0].principals[0].claims.groups",
        ),
        (
            "level: {any_of: [{gte: 3}, {not: {present: true}}]}",
            "level: {any_of: [{gte: 3}, {nope: 1}]}",
            "rbac.policies[0].principals[0].claims.level.any_of[1]",
        ),
        (
            "groups: {contains: pets-readers}",
            "groups: {regex: '(unclosed'}",
            "rbac.policies[0].principals[0].claims.groups",
        ),
        (
            "groups: {contains: pets-readers}",
            "groups: {gt: ten}",
            "rbac.policies[0].principals[0].claims.groups",
        ),
        (
            "groups: {contains: pets-readers}",
            "groups: {one_of: []}",
            "rbac.policies[0].principals[0].claims.groups",
        ),
        (
            "groups: {contains: pets-readers}",
            "groups: {}",
            "rbac.policies[0].principals[0].claims.groups",
        ),
        (
            'headers: {x-debug: "1"}',
            "headers: {x-debug: {gt: 1}}",
            "routes[0].match.headers.x-debug",
        ),
        (
            "paths: [{prefix: /api/pets}]",
            "paths: [{glob: /api/*}]",
            "rbac.policies[0].permissions.paths[0]",
        ),
        ("paths: [{exact: /x}]", "paths: [{exact: /x, prefix: /y}]", "routes[0].match.paths[0]"),
        ("methods: [GET, HEAD]", "methods: [GET, 7]", "rbac.policies[0].permissions.methods[1]"),
        ("action: allow", "action: maybe", "rbac.policies[0].action"),
        ("mode: enforce", "mode: audit", "rbac.mode"),
        ("weight: 10", "weight: -1", "routes[1].split.to[0].weight"),
        (
            "upstream: http://127.0.0.1:8082\n",
            "upstream: ftp://127.0.0.1:8082\n",
            "routes[0].upstream",
        ),
    ],
)
def test_unknown_or_misused_operators(keydir: Path, old: str, new: str, key_path: str) -> None:
    assert old in COMPLETE
    text = COMPLETE.replace(old, new, 1)
    exc = load_error(text, keydir)
    assert exc.key_path.startswith(key_path), str(exc)
    assert exc.line == line_of(text, new.splitlines()[0]), str(exc)


# --------------------------------------------------------------------------- wrong types everywhere

WRONG_VALUES: list[Any] = [None, True, 7, 2.5, "text", "", [], {}, [{}], {"x": 1}, [[1]]]


def _paths(node: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*path, index)
            yield from _paths(value, (*path, index))


def _set(document: Any, path: tuple[str | int, ...], value: Any) -> None:
    for part in path[:-1]:
        document = document[part]
    document[path[-1]] = value


def test_every_wrong_type_at_every_key_is_a_located_policy_error(keydir: Path) -> None:
    """No TypeError, AttributeError or KeyError can escape the loader, whatever the types;
    the error points at the changed key, below it, or at its parent."""
    document, root = parse_yaml_text(COMPLETE, NAME)
    paths = list(_paths(document))
    assert len(paths) > 80
    outcomes = {"loaded": 0, "refused": 0}
    for path in paths:
        parent = Loc(NAME, path[:-1]).key_path
        for value in WRONG_VALUES:
            mutated = copy.deepcopy(document)
            _set(mutated, path, value)
            try:
                parse_policy(mutated, root, base=keydir, fingerprint="sweep")
            except PolicyError as exc:
                outcomes["refused"] += 1
                where = Loc(NAME, path).key_path
                assert exc.key_path.startswith(parent), (where, value, str(exc))
                assert exc.line is not None, (where, value, str(exc))
            except Exception as exc:  # pragma: no cover - the point of the test
                where = Loc(NAME, path).key_path
                pytest.fail(f"{where} = {value!r}: {type(exc).__name__}: {exc}")
            else:
                outcomes["loaded"] += 1
    assert outcomes["refused"] > outcomes["loaded"]


# --------------------------------------------------------------------------- end to end

GOOD = """\
version: 1
providers:
  corp:
    issuer: {issuer}
    jwks: {{file: corp.pem}}
    claims_to_headers: [{{claim: sub, header: x-user}}]
"""


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("text", "needle", "key_path", "words"),
    [
        # the error names the line where the expansion crossed the bound (the a4 list)
        (billion_laughs(), "a4: &a4", "(top level)", "alias bomb"),
        (
            GOOD.format(issuer="https://corp.test")
            + "rbac:\n  policies:\n    - name: p\n      action: allow\n"
            + "      principals: [{claims: {sub: {startswith: a}}}]\n",
            "startswith",
            "rbac.policies[0].principals[0].claims.sub.startswith",
            "unknown",
        ),
    ],
    ids=["alias-bomb", "unknown-operator"],
)
def test_mitmdump_refuses_to_start_on_a_bad_file(
    tmp_path: Path, text: str, needle: str, key_path: str, words: str
) -> None:
    (tmp_path / "corp.pem").write_bytes(TestIssuer("corp", "ES256").public_pem())
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    returncode, output = run_mitmdump_until_exit(policy)
    assert returncode == 1
    line = line_of(text, needle)
    assert f"{policy}:{line}: {key_path}: " in output, output
    assert words in output
    assert "claimroute ready" not in output


@pytest.mark.e2e
async def test_bad_reloads_keep_the_last_good_policy_then_a_good_one_applies(
    tmp_path: Path,
) -> None:
    corp = TestIssuer("corp", "ES256")
    (tmp_path / "corp.pem").write_bytes(corp.public_pem())
    policy = tmp_path / "policy.yaml"
    good = GOOD.format(issuer=corp.issuer)
    policy.write_text(good)
    bad_edits = [
        ("syntax", good + "rbac: {policies: [\n", "invalid YAML"),
        ("alias bomb", billion_laughs(), "alias bomb"),
        ("too deep", "version: " + "[" * 100 + "]" * 100 + "\n", "nested deeper"),
        ("over the cap", good + "# " + "x" * MAX_FILE_BYTES + "\n", "larger than"),
        ("not UTF-8", good.encode() + b"# \xff\xfe\n", "not UTF-8"),
        (
            "unknown operator",
            good + "rbac:\n  policies:\n    - name: p\n      action: allow\n"
            "      principals: [{claims: {sub: {startswith: a}}}]\n",
            "rbac.policies[0].principals[0].claims.sub",
        ),
        (
            "wrong type",
            good.replace("claims_to_headers: [", "claims_to_headers: {x: ").replace("}]", "}}"),
            "providers.corp.claims_to_headers",
        ),
    ]
    async with EchoUpstream("primary") as upstream, MitmdumpProcess(policy) as proxy:
        url = f"{upstream.url}/orders"
        reply = await send(proxy.proxy_url, url, token=corp.mint("alice"))
        assert reply.status == 200, reply.text
        for name, content, words in bad_edits:
            mark = proxy.mark()
            if isinstance(content, str):
                policy.write_text(content)
            else:
                policy.write_bytes(content)
            match = await proxy.await_output(r"policy change rejected.*", 15, since=mark)
            assert words in match.group(0), (name, match.group(0))
            reply = await send(proxy.proxy_url, url, token=corp.mint("bob"))
            assert reply.status == 200, (name, reply.text)  # the last good policy serves
            assert reply.seen_headers["x-user"] == "bob"
            await asyncio.sleep(0.01)  # a distinct mtime for the next write

        mark = proxy.mark()
        policy.write_text(good + "rbac: {default_action: deny}\n")
        await proxy.await_output(r"policy reloaded", 15, since=mark)
        reply = await send(proxy.proxy_url, url, token=corp.mint("carol"))
        assert (reply.status, reply.text) == (403, "RBAC: access denied")
        assert [r.header("x-user") for r in upstream.received] == [
            "alice",
            *["bob"] * len(bad_edits),
        ]
