"""`claimroute test POLICY CASES.yaml`: a table of requests and what must come out of each."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLAIMROUTE = Path(sys.executable).parent / "claimroute"

# The cases file shipped beside the quickstart policy (the README shows it).
QUICKSTART_CASES = (ROOT / "examples/quickstart/cases.yaml").read_text()


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLAIMROUTE), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("quickstart")
    shutil.copy(ROOT / "examples/quickstart/policy.yaml", folder / "policy.yaml")
    done = run("keygen", "--out", str(folder / "keys"))
    assert done.returncode == 0, done.stderr
    (folder / "cases.yaml").write_text(QUICKSTART_CASES)
    return folder


def test_the_quickstart_cases_pass(quickstart: Path) -> None:
    junit = quickstart / "junit.xml"
    done = run("test", "policy.yaml", "cases.yaml", "--junit", str(junit), cwd=quickstart)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed, 0 missed" in done.stdout
    xml = junit.read_text()
    assert 'tests="5"' in xml and 'failures="0"' in xml


def test_a_miss_names_its_line_and_explains(quickstart: Path, tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    text = QUICKSTART_CASES.replace(
        "keys/private.jwk.json", str(quickstart / "keys/private.jwk.json")
    )
    cases.write_text(text.replace("route: employees-to-canary", "route: elsewhere"))
    junit = tmp_path / "junit.xml"
    done = run("test", str(quickstart / "policy.yaml"), str(cases), "--junit", str(junit))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{cases}:15: route: expected elsewhere, got employees-to-canary" in done.stdout
    assert "4. routes" in done.stdout  # the explanation of the miss
    assert 'failures="1"' in junit.read_text() and "<failure" in junit.read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("key: local", "key: nope"), ":10: cases[0].request.token.key: no key named 'nope'"),
        (("provider: local", "provider: ghost"), "no provider named 'ghost'"),
        (("outcome: forward\n", "outcome: maybe\n"), "cases[0].expect.outcome"),
        (("path: /api/orders/1", "path: api"), "a path starts with /"),
        (("cases:", "cases: [\n"), "invalid cases file"),
        (("    request: {path: /api/orders}", "    request: {token: abc}"), "not a parsable JWT"),
    ],
)
def test_bad_input_exits_2_naming_where(quickstart: Path, tmp_path: Path, edit, message) -> None:
    cases = tmp_path / "cases.yaml"
    text = QUICKSTART_CASES.replace(
        "keys/private.jwk.json", str(quickstart / "keys/private.jwk.json")
    )
    cases.write_text(text.replace(*edit, 1))
    done = run("test", str(quickstart / "policy.yaml"), str(cases))
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and str(cases) in done.stderr
    assert "Traceback" not in done.stderr


SCENARIO_CASES = """\
cases:
  - name: svc-a views pets
    request: {path: /api/pets, claims: {sub: "system:serviceaccount:default:svc-a"},
              provider: kube}
    expect: {outcome: forward, rbac_policy: viewer}
  - name: svc-a may not post
    request: {method: POST, path: /api/pets, claims: {sub: "system:serviceaccount:default:svc-a"},
              provider: kube}
    expect: {status: 403, rbac_policy: default}
  - name: svc-b edits in default
    request:
      method: PUT
      path: /api/pets/1
      token:
        key: kube
        claims: {iss: https://kube.test, sub: "system:serviceaccount:default:svc-b",
                 kubernetes.io/serviceaccount/namespace: default}
    expect: {outcome: forward, rbac_policy: editor}
  - name: svc-b elsewhere is denied
    request:
      method: PUT
      path: /api/pets/1
      token:
        key: kube
        claims: {iss: https://kube.test, sub: "system:serviceaccount:other:svc-b",
                 kubernetes.io/serviceaccount/namespace: other}
    expect: {status: 403}
"""


def test_a_scenario_policy(tmp_path: Path) -> None:
    run("keygen", "--out", str(tmp_path / "keys"))
    text = (ROOT / "scenarios/policies/gloo-jwt-access-control.yaml").read_text()
    text = text.replace("${issuers.kube.issuer}", "https://kube.test")
    text = text.replace("${issuers.kube.jwks_file}", "keys/jwks.json")
    assert "${" not in text
    (tmp_path / "policy.yaml").write_text(text)
    cases = SCENARIO_CASES.replace("cases:", "keys: {kube: keys/private.jwk.json}\ncases:", 1)
    (tmp_path / "cases.yaml").write_text(cases)
    done = run("test", "policy.yaml", "cases.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed, 0 missed" in done.stdout


def test_in_process(quickstart: Path, capsys: Any) -> None:
    from claimroute_tools import cli

    code = cli.main(["test", str(quickstart / "policy.yaml"), str(quickstart / "cases.yaml")])
    assert code == 0
    assert "5 passed" in capsys.readouterr().out
