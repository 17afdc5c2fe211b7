"""Prometheus metrics with mitmproxy's test helpers: counts, label hygiene, the endpoint."""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from mitmproxy import exceptions, flowfilter
from mitmproxy.test import taddons, tflow, tutils
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from claimroute import errors as E
from claimroute.errors import Rejection
from claimroute.keys.remote import RemoteKeySource
from claimroute.mitm import addon as addon_module
from claimroute.mitm.addon import REFUSED_MARK, ClaimRoute
from claimroute.mitm.metrics import (
    OTHER_REASON,
    REQUEST_SECONDS_BUCKETS,
    ClaimRouteMetrics,
    MetricsAddressError,
    parse_address,
    reason_label,
)
from claimroute.pipeline.decide import Decision
from claimroute.pipeline.tokencache import TokenCache
from claimroute_tools.lab import TestIssuer, b64url

CANARY = "https://canary.internal:8443"
PRIMARY = "https://primary.internal:8443"

POLICY = f"""\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {{file: corp.jwks.json}}
    audiences: [api]
rbac:
  mode: {{mode}}
  default_action: deny
  policies:
    - {{name: no-admin, action: deny, permissions: {{paths: [{{prefix: /admin}}]}}}}
    - {{name: staff, action: allow, principals: [{{claims: {{org: solo.io}}}}]}}
routes:
  - name: employees
    match: {{claims: {{team: canary}}}}
    upstream: {CANARY}
  - name: half
    match: {{authenticated: true}}
    split:
      salt: unit
      to: [{{upstream: "{CANARY}", weight: 50}}, {{upstream: "{PRIMARY}", weight: 50}}]
"""


@pytest.fixture
def issuer():
    return TestIssuer("corp", "RS256", audience="api")


def policy_file(tmp_path, issuer, mode="enforce"):
    issuer.write_jwks(tmp_path / "corp.jwks.json")
    path = tmp_path / f"policy-{mode}.yaml"
    path.write_text(POLICY.replace("{mode}", mode))
    return path


def flow_with(token: str | None = None, path: str = "/api/pets?q=secret"):
    flow = tflow.tflow(req=tutils.treq(host="api.example", port=80, path=path))
    flow.request.headers["host"] = "api.example"
    if token is not None:
        flow.request.headers["authorization"] = f"Bearer {token}"
    return flow


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def total(text: str, name: str) -> float:
    return sum(v for (n, _), v in samples(text).items() if n == name)


async def send(addon: ClaimRoute, token: str | None = None, path: str = "/api/pets?q=secret"):
    flow = flow_with(token, path)
    await addon.requestheaders(flow)
    return flow


# -- counts through the addon ------------------------------------------------------------------


async def test_decisions_rbac_routes_and_cache_are_counted(tmp_path, issuer):
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file(tmp_path, issuer)))
        alice = issuer.mint("alice", {"org": "solo.io", "team": "canary"})
        staff = [issuer.mint(f"user-{i}", {"org": "solo.io"}) for i in range(20)]
        for _ in range(3):
            await send(addon, alice)  # verified once, then cache hits
        for token in staff:
            await send(addon, token)
        await send(addon)  # 401 missing
        await send(addon, issuer.mint("mallory", {"org": "evil"}))  # 403 RBAC (default deny)
        await send(addon, alice, path="/admin/x")  # 403 RBAC (no-admin)
        await send(addon, issuer.mint("eve", {"org": "solo.io", "aud": "other"}))  # 403 audience
        text = addon.metrics_text()
    assert value(text, "claimroute_decisions_total", outcome="allowed", status="",
                 reason="verified") == 23  # fmt: skip
    assert value(text, "claimroute_decisions_total", outcome="denied", status="401",
                 reason=E.JWT_MISSING) == 1  # fmt: skip
    assert value(text, "claimroute_decisions_total", outcome="denied", status="403",
                 reason=E.RBAC_DENIED) == 2  # fmt: skip
    assert value(text, "claimroute_decisions_total", outcome="denied", status="403",
                 reason=E.AUDIENCE_NOT_ALLOWED) == 1  # fmt: skip
    assert total(text, "claimroute_decisions_total") == 27
    assert value(text, "claimroute_decisions_by_provider_total", provider="corp",
                 outcome="allowed") == 23  # fmt: skip
    assert (
        value(text, "claimroute_decisions_by_provider_total", provider="corp", outcome="denied")
        == 2
    )  # the RBAC refusals: the token was verified
    assert (
        value(text, "claimroute_decisions_by_provider_total", provider="", outcome="denied") == 2
    )  # no token, and a token refused in verification
    assert value(text, "claimroute_rbac_decisions_total", policy="staff", action="allow",
                 mode="enforce") == 23  # fmt: skip
    assert (
        value(
            text,
            "claimroute_rbac_decisions_total",
            policy="(default)",
            action="deny",
            mode="enforce",
        )
        == 1
    )  # mallory; the 401 and the audience 403 come before RBAC
    assert value(text, "claimroute_rbac_decisions_total", policy="no-admin", action="deny",
                 mode="enforce") == 1  # fmt: skip
    assert total(text, "claimroute_rbac_dry_run_would_deny_total") == 0
    assert value(text, "claimroute_routes_total", route="employees", upstream=CANARY) == 3
    split = {u: value(text, "claimroute_routes_total", route="half", upstream=u)
             for u in (CANARY, PRIMARY)}  # fmt: skip
    assert sum(split.values()) == 20 and all(split.values())  # both targets were chosen
    assert value(text, "claimroute_token_cache_hits_total") == 3  # alice again (3 requests)
    assert value(text, "claimroute_token_cache_misses_total") == 23  # every first sight
    assert value(text, "claimroute_token_cache_entries") == 22  # every verified token
    assert value(text, "claimroute_keys", provider="corp") == 1
    assert value(text, "claimroute_request_duration_seconds_count") == 27
    assert value(text, "claimroute_request_duration_seconds_bucket", le="+Inf") == 27


async def test_dry_run_would_denies_are_counted_apart(tmp_path, issuer):
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file(tmp_path, issuer, "dry_run")))
        await send(addon, issuer.mint("mallory", {"org": "evil"}))
        await send(addon, issuer.mint("alice", {"org": "solo.io"}), path="/admin")
        await send(addon, issuer.mint("bob", {"org": "solo.io"}))
        text = addon.metrics_text()
    assert value(text, "claimroute_rbac_dry_run_would_deny_total", policy="(default)") == 1
    assert value(text, "claimroute_rbac_dry_run_would_deny_total", policy="no-admin") == 1
    assert value(text, "claimroute_rbac_decisions_total", policy="staff", action="allow",
                 mode="dry_run") == 1  # fmt: skip
    # Let through: counted as allowed, and routed.
    assert value(text, "claimroute_decisions_total", outcome="allowed", status="",
                 reason="verified") == 3  # fmt: skip
    assert total(text, "claimroute_routes_total") == 3


async def test_no_label_value_comes_from_a_token_or_a_request(tmp_path, issuer):
    addon = ClaimRoute()
    bad_json = ".".join((b64url(b'{"alg":"RS256"}'), b64url(b"{not json SECRET"), "c2ln"))
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file(tmp_path, issuer)))
        await send(addon, issuer.mint("sub-alice-42", {"org": "solo.io"}), path="/p/SECRETPATH")
        await send(addon, bad_json, path="/q/SECRETPATH")
        await send(addon, "x" * 30, path="/r/SECRETPATH")
        text = addon.metrics_text()
    assert value(text, "claimroute_decisions_total", outcome="denied", status="401",
                 reason="Jwt payload is not valid JSON") == 1  # fmt: skip
    for (_, labels), _v in samples(text).items():
        for _, label in labels:
            assert "alice" not in label and "SECRET" not in label and "/p/" not in label
            assert "api.example" not in label


async def test_refused_flows_are_marked_and_allowed_ones_are_not(tmp_path, issuer):
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file(tmp_path, issuer)))
        allowed = await send(addon, issuer.mint("alice", {"org": "solo.io"}))
        refused = await send(addon)
    assert not allowed.marked and allowed.response is None
    assert refused.marked == REFUSED_MARK == ":no_entry:"
    assert refused.comment.startswith("claimroute: denied 401")
    # The filters docs/policy.md gives for mitmweb's search box.
    for expression in ("~marker no_entry", "~marked", '~comment "claimroute: denied"'):
        matches = flowfilter.parse(expression)
        assert matches(refused) and not matches(allowed), expression


async def test_an_internal_error_is_counted_as_a_500(tmp_path, issuer, monkeypatch):
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(addon_module, "decide", broken)
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file(tmp_path, issuer)))
        flow = await send(addon, issuer.mint("alice", {"org": "solo.io"}))
        text = addon.metrics_text()
    assert flow.response.status_code == 500 and flow.marked == REFUSED_MARK
    assert value(text, "claimroute_decisions_total", outcome="denied", status="500",
                 reason=E.INTERNAL_ERROR) == 1  # fmt: skip


# -- the pieces ----------------------------------------------------------------------------------


def test_reasons_are_a_fixed_set():
    assert reason_label(E.JWT_EXPIRED) == E.JWT_EXPIRED
    assert reason_label(E.RBAC_DENIED) == E.RBAC_DENIED
    assert reason_label("Ambiguous Cookie header") == "Ambiguous Cookie header"
    assert reason_label("Jwt exp is not a number") == "Jwt exp is not a number"
    assert reason_label("Jwt header member 'crit' is not supported").endswith("supported")
    assert reason_label("Jwt payload is not valid JSON: Expecting value: line 1 column 1 "
                        "(char 0) near 'alice'") == "Jwt payload is not valid JSON"  # fmt: skip
    assert reason_label("Jwt header is not valid JSON: x") == "Jwt header is not valid JSON"
    assert reason_label("something a token wrote") == OTHER_REASON
    assert reason_label("Jwt header member 'alice' is not supported") == OTHER_REASON


def test_unknown_reasons_never_grow_the_series():
    metrics = ClaimRouteMetrics()
    for i in range(100):
        rejection = Rejection(401, f"Jwt payload is not valid JSON: junk {i}", "invalid_token")
        metrics.record(Decision("denied", rejection.reason, rejection))
        metrics.record(Decision("denied", f"novel {i}", Rejection(400, f"novel {i}")))
    assert metrics.decisions == {
        ("denied", 401, "Jwt payload is not valid JSON"): 100,
        ("denied", 400, OTHER_REASON): 100,
    }


def test_histogram_buckets_are_upper_inclusive():
    metrics = ClaimRouteMetrics()
    for seconds in (0.000025, 0.00003, 0.002, 99.0):
        metrics.observe_request(seconds)
    text = metrics.text()
    assert value(text, "claimroute_request_duration_seconds_bucket", le="2.5e-05") == 1
    assert value(text, "claimroute_request_duration_seconds_bucket", le="5e-05") == 2
    assert value(text, "claimroute_request_duration_seconds_bucket", le="0.0025") == 3
    assert value(text, "claimroute_request_duration_seconds_bucket", le="5.0") == 3
    assert value(text, "claimroute_request_duration_seconds_bucket", le="+Inf") == 4
    assert value(text, "claimroute_request_duration_seconds_count") == 4
    assert value(text, "claimroute_request_duration_seconds_sum") == pytest.approx(99.002055)
    assert len(REQUEST_SECONDS_BUCKETS) == len(set(REQUEST_SECONDS_BUCKETS))


class FakeRemote:
    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state(self) -> dict[str, Any]:
        return self._state


class BrokenSource:
    def state(self) -> dict[str, Any]:
        raise RuntimeError("no state")


def test_key_figures_are_read_from_each_source_at_scrape_time():
    sources: dict[str, Any] = {
        "idp": FakeRemote(
            {
                "remote": True,
                "kids": ["a", "b"],
                "successes": 3,
                "failures": 2,
                "refetches": 1,
                "age_seconds": 12.5,
            }
        ),
        "cold": FakeRemote(
            {
                "remote": True,
                "kids": [],
                "successes": 0,
                "failures": 4,
                "refetches": 2,
                "age_seconds": None,
            }
        ),
        "file": FakeRemote({"remote": False, "kids": ["k"]}),
        "broken": BrokenSource(),
    }
    metrics = ClaimRouteMetrics(lambda: sources)
    text = metrics.text()
    assert value(text, "claimroute_keys", provider="idp") == 2
    assert value(text, "claimroute_keys", provider="cold") == 0
    assert value(text, "claimroute_keys", provider="file") == 1
    assert value(text, "claimroute_jwks_fetches_total", provider="idp", result="ok") == 3
    assert value(text, "claimroute_jwks_fetches_total", provider="idp", result="failed") == 2
    assert value(text, "claimroute_jwks_refetches_total", provider="cold") == 2
    assert value(text, "claimroute_jwks_seconds_since_success", provider="idp") == 12.5
    names = {labels for (name, labels) in samples(text) if name.startswith("claimroute_jwks")}
    assert all(("provider", "file") not in labels for labels in names)  # local keys: no fetches
    assert ("claimroute_jwks_seconds_since_success", (("provider", "cold"),)) not in samples(text)
    sources["idp"]._state["successes"] = 4  # read again at the next scrape
    assert value(metrics.text(), "claimroute_jwks_fetches_total", provider="idp", result="ok") == 4


def test_a_remote_source_reports_its_successful_fetches():
    assert "successes" in inspect.getsource(RemoteKeySource.state)


def test_cache_figures_follow_the_cache_in_use():
    holder: dict[str, TokenCache | None] = {"cache": TokenCache(7)}
    metrics = ClaimRouteMetrics(cache=lambda: holder["cache"])
    holder["cache"].hits, holder["cache"].evictions = 5, 2  # type: ignore[union-attr]
    text = metrics.text()
    assert value(text, "claimroute_token_cache_hits_total") == 5
    assert value(text, "claimroute_token_cache_evictions_total") == 2
    assert value(text, "claimroute_token_cache_max_entries") == 7
    holder["cache"] = None
    assert value(metrics.text(), "claimroute_token_cache_max_entries") == 0


def test_each_addon_has_its_own_registry():
    one, two = ClaimRoute(), ClaimRoute()
    assert one.metrics.registry is not two.metrics.registry
    assert one.metrics.registry is not REGISTRY
    assert not any(m.name.startswith("claimroute") for m in REGISTRY.collect())


def test_lifecycle_hooks_stay_synchronous():
    for hook in ("load", "configure", "running", "done"):
        assert not inspect.iscoroutinefunction(getattr(ClaimRoute, hook)), hook


# -- the option and the endpoint ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("9100", ("127.0.0.1", 9100)),
        (":9100", ("127.0.0.1", 9100)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        (" 127.0.0.1:65535 ", ("127.0.0.1", 65535)),
    ],
)
def test_addresses(spec, expected):
    assert parse_address(spec) == expected


@pytest.mark.parametrize(
    "spec", ["host", "host:", "host:http", "1.2.3.4:70000", "::1:9100", "[::1]", "[]:1",
             "a b:1", "host:-1", "host:9100/metrics", "user@host:1"],
)  # fmt: skip
def test_bad_addresses_are_refused(spec):
    with pytest.raises(MetricsAddressError):
        parse_address(spec)


def test_a_bad_value_is_an_options_error_naming_the_option():
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="claimroute_metrics"):
            tctx.configure(addon, claimroute_metrics="nonsense:port")
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with pytest.raises(exceptions.OptionsError, match="claimroute_metrics: cannot listen"):
                tctx.configure(addon, claimroute_metrics=f"127.0.0.1:{port}")
        assert addon._metrics_endpoint.url is None


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read().decode()


async def test_the_endpoint_serves_metrics_and_stops_in_done(tmp_path, issuer):
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file(tmp_path, issuer)),
                       claimroute_metrics="127.0.0.1:0")  # fmt: skip
        url = addon._metrics_endpoint.url
        assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        await send(addon)
        # From another thread, as Prometheus would: the key and cache state is read on this
        # loop, which must stay free meanwhile.
        status, content_type, text = await asyncio.to_thread(get, url)
        assert status == 200 and content_type.startswith("text/plain")
        assert text == addon.metrics_text()
        assert value(text, "claimroute_decisions_total", outcome="denied", status="401",
                     reason=E.JWT_MISSING) == 1  # fmt: skip
        assert (await asyncio.to_thread(get, url.replace("/metrics", "/other")))[0] == 404
        port = addon._metrics_endpoint.address[1]  # type: ignore[index]
        addon.done()
        assert addon._metrics_endpoint.url is None
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=2)
        # The port is free again: a reloaded script binds it at once.
        again = ClaimRoute()
        with taddons.context(again) as tctx2:
            tctx2.configure(again, claimroute_metrics=f"127.0.0.1:{port}")
            assert (await asyncio.to_thread(get, url))[0] == 200
            tctx2.configure(again, claimroute_metrics=None)
            assert again._metrics_endpoint.url is None


async def test_metrics_are_off_by_default_but_the_command_works(tmp_path, issuer):
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file(tmp_path, issuer)))
        assert tctx.options.claimroute_metrics is None
        assert addon._metrics_endpoint.url is None
        await send(addon)
        text = tctx.command(addon.metrics_text)
    assert value(text, "claimroute_decisions_total", outcome="denied", status="401",
                 reason=E.JWT_MISSING) == 1  # fmt: skip


def test_a_scrape_reads_key_and_cache_state_on_the_event_loop(monkeypatch):
    from claimroute.mitm import metrics as metrics_module

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        readers: list[int] = []

        class Source:
            def state(self) -> dict[str, Any]:
                readers.append(threading.get_ident())
                return {"remote": False, "kids": ["k"]}

        metrics = ClaimRouteMetrics(lambda: {"corp": Source()}, lambda: TokenCache(3))

        async def bind() -> None:
            metrics.bind_loop()

        asyncio.run_coroutine_threadsafe(bind(), loop).result(5)
        assert metrics.loop is loop
        text = metrics.text()  # from this thread: handed to the loop's
        assert readers == [thread.ident]
        assert value(text, "claimroute_keys", provider="corp") == 1
        assert value(text, "claimroute_token_cache_max_entries") == 3

        # A loop too busy to answer: no key or cache figures, and no error.
        monkeypatch.setattr(metrics_module, "LOOP_READ_TIMEOUT", 0.05)
        release = threading.Event()
        loop.call_soon_threadsafe(release.wait, 5)
        try:
            text = metrics.text()
        finally:
            release.set()
        names = {name for name, _ in samples(text)}
        assert "claimroute_keys" not in names and "claimroute_token_cache_hits_total" not in names
        assert "claimroute_request_duration_seconds_count" in names
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
