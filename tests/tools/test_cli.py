"""The `claimroute` command: its subcommands as a user types them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from claimroute_tools import cli

CLAIMROUTE = Path(sys.executable).parent / "claimroute"
HMAC_KEY = '{"kty": "oct", "k": "' + "A" * 43 + '"}'
POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {file: k.json}
    claims_to_headers: [{claim: sub, header: x-user}]
rbac:
  default_action: deny
  policies:
    - {name: readers, action: allow, principals: [{provider: corp}], permissions: {methods: [GET]}}
routes:
  - {name: canary, match: {claims: {team: canary}}, upstream: "http://127.0.0.1:9"}
"""


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLAIMROUTE), *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    (tmp_path / "k.json").write_text(HMAC_KEY)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def test_help_lists_every_subcommand() -> None:
    done = run("--help")
    assert done.returncode == 0
    for command in ("proxy", "check", "scenario", "keygen", "mint", "echo", "addon-path", "schema"):
        assert re.search(rf"^\s+{command}\b", done.stdout, re.MULTILINE), command


def test_check_summarises_a_valid_policy(policy: Path) -> None:
    done = run("check", str(policy))
    assert done.returncode == 0, done.stderr
    for text in ("valid", "corp", "https://corp.test", "sub -> x-user", "readers", "canary"):
        assert text in done.stdout


def test_check_names_file_key_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nproviders:\n  corp:\n    issuer: 5\n    jwks: {file: k.json}\n")
    done = run("check", str(bad))
    assert done.returncode == 1
    assert f"{bad}:4: providers.corp.issuer" in done.stderr
    assert "Traceback" not in done.stderr


def test_addon_path_is_the_packaged_script() -> None:
    done = run("addon-path")
    assert done.returncode == 0
    path = Path(done.stdout.strip())
    assert path == cli.addon_path() and path.is_file()
    assert "ClaimRoute()" in path.read_text()


def test_dev_tools_mint_a_token_with_a_generated_key(tmp_path: Path) -> None:
    assert run("keygen", "--out", "keys", cwd=tmp_path).returncode == 0
    done = run("mint", "--key", "keys/private.jwk.json", "--iss", "https://i.test",
               "--sub", "alice", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().count(".") == 2


def test_unknown_arguments_are_refused_outside_proxy(policy: Path) -> None:
    done = run("check", str(policy), "--mode", "reverse:http://x")
    assert done.returncode == 2
    assert "unrecognized arguments" in done.stderr


@pytest.mark.e2e
def test_proxy_runs_mitmdump_with_the_addon_and_passes_mitmdump_options(
    policy: Path, tmp_path: Path
) -> None:
    """`claimroute proxy POLICY [mitmdump options]` is mitmdump with the addon loaded."""
    command = [str(CLAIMROUTE), "proxy", str(policy), "--listen-host", "127.0.0.1", "-p", "0",
               "--set", f"confdir={tmp_path}", "--set", "termlog_verbosity=info"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        lines = []
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "claimroute ready: listening on 127.0.0.1:" in line:
                break
        assert any("claimroute ready" in line for line in lines), "".join(lines)
        assert any(str(policy) in line for line in lines)
    finally:
        process.terminate()
        process.wait(10)


def test_schema_prints_each_json_schema() -> None:
    for kind in cli.SCHEMAS:
        done = run("schema", kind)
        assert done.returncode == 0
        assert json.loads(done.stdout)["$schema"].startswith("https://json-schema.org/")
