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
