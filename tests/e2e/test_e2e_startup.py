"""mitmdump refuses to start, with a clear message, when the policy is bad or missing."""

from __future__ import annotations

import pytest

from claimroute_tools.lab.mitmdump import run_mitmdump_until_exit

from .conftest import write

pytestmark = pytest.mark.e2e


def test_bad_policy_makes_mitmdump_exit_1_naming_the_key_path(tmp_path):
    policy = write(
        tmp_path / "bad.yaml",
        "version: 1\nproviders:\n  corp:\n    issuer: https://corp.test\n"
        "    jwks: {file: missing.json}\n    clock_skew: soon\n",
    )
    returncode, output = run_mitmdump_until_exit(policy)
    assert returncode == 1
    assert f"{policy}:5: providers.corp.jwks.file: cannot read" in output


def test_policy_without_any_file_refuses_to_start(tmp_path):
    returncode, output = run_mitmdump_until_exit(None)
    assert returncode == 1
    assert "no policy file" in output


@pytest.mark.parametrize("option", ["ignore_hosts", "allow_hosts"])
def test_passthrough_options_are_refused(tmp_path, option):
    """Connections mitmproxy passes through uninspected would never be verified."""
    (tmp_path / "k.json").write_text('{"kty": "oct", "k": "' + "A" * 43 + '"}')
    policy = write(
        tmp_path / "policy.yaml",
        "version: 1\nproviders:\n  p:\n    issuer: https://p.test\n    jwks: {file: k.json}\n",
    )
    returncode, output = run_mitmdump_until_exit(policy, options={option: "example.com"})
    assert returncode == 1
    assert f"{option} makes mitmproxy pass connections through" in output


async def test_the_checkout_entry_script_still_works(tmp_path):
    """`mitmdump -s addons/claimroute_addon.py` (a checkout) loads the same addon as the
    packaged script (`claimroute addon-path`)."""
    from claimroute_tools.lab.mitmdump import CHECKOUT_SCRIPT, MitmdumpProcess

    (tmp_path / "k.json").write_text('{"kty": "oct", "k": "' + "A" * 43 + '"}')
    policy = write(
        tmp_path / "policy.yaml",
        "version: 1\nproviders:\n  p:\n    issuer: https://p.test\n    jwks: {file: k.json}\n",
    )
    async with MitmdumpProcess(policy, script=CHECKOUT_SCRIPT) as proxy:
        assert proxy.port is not None


BASE_POLICY = """\
version: 1
providers:
  p:
    issuer: https://p.test
    jwks: {file: k.json}
"""


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("cors_preflight: sometimes\n", "cors_preflight"),
        (
            "providers:\n  p:\n    issuer: https://p.test\n    jwks: {file: k.json, max_stale: 1m}\n",
            "providers.p.jwks.max_stale",
        ),
        (
            "routes:\n  - {name: r, match: {claims: {scope: {has_word: 'a b'}}}, "
            "upstream: 'http://127.0.0.1:9'}\n",
            "routes[0].match.claims.scope.has_word",
        ),
        (
            "routes:\n  - {name: r, upstream: 'http://127.0.0.1:9', cohort_header: host}\n",
            "routes[0].cohort_header",
        ),
        (
            "routes:\n  - name: r\n    split: {by: sub, fallback_by: sub, to: "
            "[{upstream: 'http://127.0.0.1:9', weight: 1}]}\n",
            "routes[0].split.fallback_by",
        ),
    ],
)
def test_bad_values_of_the_operations_options_stop_mitmdump_naming_the_key(tmp_path, extra, where):
    """Each newer option's bad value, through a real mitmdump: exit 1, file, line and key path."""
    (tmp_path / "k.json").write_text('{"kty": "oct", "k": "' + "A" * 43 + '"}')
    text = BASE_POLICY + extra if not extra.startswith("providers:") else "version: 1\n" + extra
    policy = write(tmp_path / "policy.yaml", text)
    returncode, output = run_mitmdump_until_exit(policy)
    assert returncode == 1
    assert f"{policy}:" in output and f": {where}: " in output, output[-2000:]
