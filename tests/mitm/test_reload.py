"""The policy reloader: settle before loading, read each file once, keep the last good policy."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from claimroute.mitm.reload import PolicyReloader
from claimroute.policy.load import load_policy
from claimroute.policy.model import Policy

BASE = (
    "version: 1\n"
    "providers:\n"
    "  corp:\n"
    "    issuer: https://corp.test\n"
    "    jwks: {url: 'http://127.0.0.1:9/jwks.json'}\n"
)


def text(validation: str, padding: str = "") -> str:
    return BASE + f"validation: {validation}\n" + padding


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_mtime = [1_700_000_000 * 10**9]


def write(path: Path, content: str) -> None:
    """Write and give the file a new mtime, so that even a coarse clock sees a change."""
    path.write_text(content)
    _mtime[0] += 10**9
    os.utime(path, ns=(_mtime[0], _mtime[0]))


class CountingLoad:
    def __init__(self, after=None) -> None:
        self.calls = 0
        self.after = after  # run after the real load (as if during the parse)

    def __call__(self, path: Path) -> Policy:
        self.calls += 1
        policy = load_policy(path)
        if self.after is not None:
            after, self.after = self.after, None
            after()
        return policy


def reloader_for(path: Path, load: CountingLoad, clock: Clock) -> PolicyReloader:
    return PolicyReloader(path, load_policy(path), load=load, clock=clock)


async def settle(reloader: PolicyReloader, clock: Clock) -> Policy | None:
    """First sight of a change, then a poll once it held still long enough."""
    assert await reloader.poll() is None
    assert reloader.pending
    clock.now += reloader.settle_seconds
    return await reloader.poll()


async def test_a_change_is_loaded_only_after_it_settled(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    write(path, text("require_valid"))
    clock, load = Clock(), CountingLoad()
    reloader = reloader_for(path, load, clock)
    assert await reloader.poll() is None and not reloader.pending
    write(path, text("allow_missing"))
    assert await reloader.poll() is None  # first sight
    clock.now += reloader.settle_seconds / 2
    assert await reloader.poll() is None  # not settled yet
    assert load.calls == 0
    clock.now += reloader.settle_seconds / 2
    policy = await reloader.poll()
    assert policy is not None and policy.validation == "allow_missing"
    assert load.calls == 1
    assert await reloader.poll() is None and not reloader.pending


async def test_an_edit_during_the_parse_is_applied_at_the_next_poll(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    write(path, text("require_valid"))
    clock = Clock()
    # The policy is read, then edited while it is still being parsed.
    load = CountingLoad(after=lambda: write(path, text("allow_missing_or_failed")))
    reloader = reloader_for(path, load, clock)
    write(path, text("allow_missing"))
    first = await settle(reloader, clock)
    assert first is not None and first.validation == "allow_missing"
    # The stamp recorded is the one from before the read: the edit shows as a change.
    second = await settle(reloader, clock)
    assert second is not None and second.validation == "allow_missing_or_failed"
    assert second.fingerprint == load_policy(path).fingerprint
    assert load.calls == 2


async def test_a_half_written_file_that_settles_later_loads_the_final_content(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.yaml"
    write(path, text("require_valid"))
    clock, load = Clock(), CountingLoad()
    reloader = reloader_for(path, load, clock)
    full = text("require_valid", "rbac: {default_action: deny}\n")
    half = full[: len(BASE) + len("validation: require_valid\n")] + "# half\n"
    write(path, half)  # the first half is a valid policy by itself
    assert await reloader.poll() is None
    clock.now += reloader.settle_seconds / 2
    write(path, full)  # the writer finishes before the settle time is up
    assert await reloader.poll() is None  # a new stamp: the settle time starts again
    clock.now += reloader.settle_seconds / 2 + 0.01
    assert await reloader.poll() is None
    assert load.calls == 0
    clock.now += reloader.settle_seconds
    policy = await reloader.poll()
    assert policy is not None and policy.rbac is not None
    assert load.calls == 1


async def test_the_same_bytes_rewritten_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    write(path, text("require_valid"))
    clock, load = Clock(), CountingLoad()
    reloader = reloader_for(path, load, clock)
    before = reloader.policy
    write(path, text("require_valid"))  # same bytes, new mtime
    assert await settle(reloader, clock) is None
    assert load.calls == 1
    assert reloader.policy is before
    # The new stamps are remembered: no reload on the next polls.
    clock.now += 5
    assert await reloader.poll() is None and not reloader.pending
    assert load.calls == 1


async def test_an_invalid_edit_keeps_the_last_good_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    write(path, text("require_valid"))
    clock, load = Clock(), CountingLoad()
    reloader = reloader_for(path, load, clock)
    good = reloader.policy
    write(path, text("whenever"))
    with caplog.at_level(logging.ERROR, logger="claimroute"):
        assert await settle(reloader, clock) is None
    assert "policy change rejected" in caplog.text and "validation" in caplog.text
    assert reloader.policy is good
    clock.now += 5
    assert await reloader.poll() is None  # not retried until the file changes again
    assert load.calls == 1
    write(path, text("allow_missing"))
    policy = await settle(reloader, clock)
    assert policy is not None and policy.validation == "allow_missing"


async def test_a_changed_key_file_reloads(tmp_path: Path) -> None:
    from claimroute_tools.lab import TestIssuer

    issuer = TestIssuer("disk", "ES256")
    issuer.write_jwks(tmp_path / "disk.jwks.json")
    path = tmp_path / "policy.yaml"
    write(
        path,
        "version: 1\nproviders:\n  disk:\n    issuer: https://disk.test\n"
        "    jwks: {file: disk.jwks.json}\n",
    )
    clock, load = Clock(), CountingLoad()
    reloader = reloader_for(path, load, clock)
    assert len(reloader.files) == 2
    before = reloader.policy.fingerprint
    issuer.rotate()
    issuer.write_jwks(tmp_path / "disk.jwks.json")
    _mtime[0] += 10**9
    os.utime(tmp_path / "disk.jwks.json", ns=(_mtime[0], _mtime[0]))
    policy = await settle(reloader, clock)
    assert policy is not None and policy.fingerprint != before
    assert policy.fingerprint == load_policy(path).fingerprint
    assert await reloader.poll() is None and not reloader.pending


async def test_changes_yields_each_new_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    write(path, text("require_valid"))
    reloader = PolicyReloader(path, load_policy(path), poll=0.01, settle=0.05, settle_poll=0.01)
    changes = reloader.changes()
    write(path, text("allow_missing"))
    policy = await asyncio.wait_for(anext(changes), 5)
    assert policy.validation == "allow_missing"
    await changes.aclose()


def test_load_policy_fingerprints_the_bytes_it_parsed(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    write(path, text("require_valid"))
    policy = load_policy(path)
    assert policy.file_stamps[0][0] == str(path)
    stat = path.stat()
    assert policy.file_stamps[0][1] == (stat.st_mtime_ns, stat.st_size, stat.st_ino,
                                        stat.st_ctime_ns)  # fmt: skip
    again = load_policy(path)
    assert again.fingerprint == policy.fingerprint
    write(path, text("allow_missing"))
    assert load_policy(path).fingerprint != policy.fingerprint
