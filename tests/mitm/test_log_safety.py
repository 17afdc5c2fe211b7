"""Hostile strings in logs and refusals: escaped, bounded (docs/policy.md, decision log)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from mitmproxy.test import tflow, tutils

from claimroute import errors as E
from claimroute.errors import MAX_REASON_CHARS, log_safe
from claimroute.keys.remote import FetchError, RemoteKeySource
from claimroute.mitm.addon import ClaimRoute
from claimroute.mitm.decisionlog import MAX_LOG_URL_CHARS
from claimroute.mitm.responses import response_parts
from claimroute.pipeline.decide import Decision
from claimroute.policy.load import load_policy_text

FORGED = "ok\nclaimroute: policy reloaded from /etc/evil\x1b[2K\x1b[31mRED\r\u2028\x85\x7f"


def test_log_safe_escapes_every_control_character() -> None:
    out = log_safe(FORGED)
    assert out.isprintable()
    assert "\\n" in out and "\\x1b[2K" in out and "\\r" in out and "\\u2028" in out
    assert "\\x85" in out and "\\x7f" in out
    assert log_safe("plain text: é ✓") == "plain text: é ✓"


def test_log_safe_bounds_the_length() -> None:
    out = log_safe("x" * 10_000, 50)
    assert out == "x" * 50 + "...(9950 more)"
    assert log_safe(("a", None, 3)) == "('a', None, 3)"


def test_a_reason_built_from_token_contents_is_bounded() -> None:
    rejection = E.invalid_token("Jwt payload is not valid JSON: " + "junk" * 2000)
    assert len(rejection.reason) == MAX_REASON_CHARS
    status, body, headers = response_parts(rejection, "http://api.example/x")
    assert status == 401
    assert len(body) <= MAX_REASON_CHARS
    assert len(headers["www-authenticate"]) < MAX_REASON_CHARS + 200
    assert E.invalid_token(E.JWT_EXPIRED).reason == E.JWT_EXPIRED  # short ones unchanged


def test_the_decision_log_url_is_capped(tmp_path: Path) -> None:
    policy = load_policy_text(
        "version: 1\nproviders:\n  corp:\n    issuer: https://corp.test\n"
        "    jwks: {url: 'http://127.0.0.1:9/jwks.json'}\n",
        "policy.yaml",
        tmp_path,
    )
    addon = ClaimRoute()
    addon._decision_log.file = io.StringIO()
    flow = tflow.tflow(req=tutils.treq(host="api.example", port=80, path="/" + "a" * 20_000))
    rejection = E.invalid_token("Jwt is expired")
    addon._record(flow, Decision("denied", rejection.reason, rejection), policy)
    line = json.loads(addon._decision_log.file.getvalue())
    assert len(line["url"]) == MAX_LOG_URL_CHARS + 3 and line["url"].endswith("...")
    assert line["url"].startswith("http://api.example/aaa")


def test_remote_key_logs_escape_idp_strings(caplog: pytest.LogCaptureFixture) -> None:
    policy = load_policy_text(
        "version: 1\nproviders:\n  corp:\n    issuer: https://corp.test\n"
        "    jwks: {discovery: true}\n",
        "policy.yaml",
        Path("."),
    )
    source = RemoteKeySource(policy.providers["corp"].jwks, name="corp")  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="claimroute.jwks"):
        source._record_failure(FetchError(f"https://corp.test/{FORGED}: HTTP 404"))
    messages = [record.getMessage() for record in caplog.records]
    assert messages and all("\n" not in m and "\x1b" not in m for m in messages)
    assert "\\x1b[31m" in messages[0]
