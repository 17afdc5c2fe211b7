"""Key sources across policy reloads: unchanged remote sources keep their fetched keys."""

from __future__ import annotations

from pathlib import Path

from claimroute.keys.source import StaticKeySource
from claimroute.pipeline.keysources import build_key_sources, retired_sources
from claimroute.policy.load import load_policy_text
from claimroute.policy.model import Policy
from claimroute_tools.lab import TestIssuer

POLICY = """\
version: 1
providers:
  local:
    issuer: https://local.test
    jwks: {file: local.jwks.json}
  remote:
    issuer: https://remote.test
    jwks: {url: "http://127.0.0.1:9/jwks.json", cache_duration: CACHE}
"""


def load(folder: Path, cache: str = "5m") -> Policy:
    return load_policy_text(POLICY.replace("CACHE", cache), str(folder / "p.yaml"), folder)


def test_unchanged_remote_sources_are_reused_and_changed_ones_replaced(tmp_path: Path) -> None:
    TestIssuer("local", "ES256").write_jwks(tmp_path / "local.jwks.json")
    first = build_key_sources(load(tmp_path))
    assert isinstance(first["local"], StaticKeySource)

    again = build_key_sources(load(tmp_path), first)  # an edit elsewhere in the file
    assert again["remote"] is first["remote"]  # fetched keys survive the reload
    assert again["local"] is not first["local"]  # local keys are read again
    assert retired_sources(first, again) == [first["local"]]

    changed = build_key_sources(load(tmp_path, cache="10m"), again)
    assert changed["remote"] is not again["remote"]
    assert set(map(id, retired_sources(again, changed))) == {
        id(again["local"]), id(again["remote"]),
    }  # fmt: skip
