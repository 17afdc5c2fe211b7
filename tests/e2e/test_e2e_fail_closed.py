"""Fail-closed proof: an exception inside any stage refuses the request, it never passes.

mitmproxy lets a request through when an addon hook raises, so the addon has to catch
everything itself. To prove it does, a fault-injection script is loaded with `-s` BEFORE the
addon script (mitmproxy loads scripts in the order given and they share `sys.modules`). It
wraps the stage functions where the addon looks them up (`claimroute.pipeline.decide.verify_token`,
not `claimroute.pipeline.verify.verify_token`) so that they raise while a control file names their
stage. There is no test hook in the addon: the injected code is outside it.

Each test: fault on -> the client is refused (500, or 401 where the contract says so) and
no upstream saw anything; fault off -> the same kind of request passes, so the fault really
sat on the request's path and did no lasting harm.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

import claimroute
from claimroute_tools.lab import (
    ADDON_SCRIPT,
    EchoUpstream,
    JwksServer,
    MitmdumpProcess,
    TestIssuer,
    split_compact,
)

from .conftest import send, write

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

INTERNAL = "Internal error in the authentication proxy"

INJECTOR = '''\
"""Fault injection for claimroute tests: wraps stage functions to raise on demand."""

import functools
import importlib
import inspect
import logging
import sys
from pathlib import Path

sys.path.insert(0, {addons!r})  # the same package the addon script imports
CONTROL = Path({control!r})
TARGETS = {targets!r}
log = logging.getLogger("fault-injection")


class InjectedFault(RuntimeError):
    pass


def _active(stage):
    try:
        return CONTROL.read_text().strip() == stage
    except OSError:
        return False


def _fire(stage):
    log.warning("fault injected: %s", stage)
    raise InjectedFault(stage)


def _wrap(stage, module_name, attribute):
    owner = importlib.import_module(module_name)
    *parents, name = attribute.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)  # a renamed target fails here, loudly
    if inspect.iscoroutinefunction(original):
        async def wrapper(*args, **kwargs):
            if _active(stage):
                _fire(stage)
            return await original(*args, **kwargs)
    else:
        def wrapper(*args, **kwargs):
            if _active(stage):
                _fire(stage)
            return original(*args, **kwargs)
    setattr(owner, name, functools.wraps(original)(wrapper))


for _stage, _module, _attribute in TARGETS:
    _wrap(_stage, _module, _attribute)
log.warning("fault injection armed: %s", ", ".join(t[0] for t in TARGETS))
'''

# stage -> (module, attribute) where the addon looks the function up at request time.
TARGETS: dict[str, tuple[str, str]] = {
    "request_checks": ("claimroute.mitm.addon", "request_problem"),
    "request_view": ("claimroute.mitm.addon", "request_view"),
    "strip_identity_headers": ("claimroute.mitm.addon", "strip_headers"),
    "extract": ("claimroute.pipeline.decide", "extract_tokens"),
    "verify": ("claimroute.pipeline.decide", "verify_token"),
    "location_check": ("claimroute.pipeline.decide", "location_allowed"),
    "cache_lookup": ("claimroute.pipeline.tokencache", "TokenCache.get"),
    "identity": ("claimroute.pipeline.decide", "identity_of"),
    "claim_headers": ("claimroute.pipeline.identity", "claim_headers"),
    "authorize": ("claimroute.policy.rbac", "Rbac.decide"),
    "route": ("claimroute.pipeline.decide", "route_for"),
    "decision_log": ("claimroute.mitm.addon", "ClaimRoute._record"),
    "apply": ("claimroute.mitm.addon", "apply_decision"),
    "body_framing": ("claimroute.mitm.addon", "frame_body"),
    "key_wait": ("claimroute.keys.remote", "RemoteKeySource.keys_for_kid"),
    "key_refresh": ("claimroute.keys.remote", "RemoteKeySource._fetch_key_set"),
    "refusal_response": ("claimroute.mitm.addon", "response_parts"),
}

_serial = itertools.count()


def write_injector(folder: Path, control: Path) -> Path:
    control.write_text("")
    targets = [(stage, *where) for stage, where in TARGETS.items()]
    addons = str(Path(claimroute.__file__).resolve().parent.parent)
    return write(
        folder / "inject_faults.py",
        INJECTOR.format(addons=addons, control=str(control), targets=targets),
    )


def policy_text(corp: TestIssuer, remote: TestIssuer, jwks_url: str, canary_url: str) -> str:
    return f"""\
version: 1
providers:
  corp:
    issuer: {corp.issuer}
    jwks: {{file: corp.pem}}
    claims_to_headers: [{{claim: sub, header: x-user}}]
  remote:
    issuer: {remote.issuer}
    jwks: {{url: '{jwks_url}', timeout: 1s, cache_duration: 5m}}
    claims_to_headers: [{{claim: sub, header: x-user}}]
rbac:
  default_action: deny
  policies:
    - name: signed-in
      action: allow
      principals: [{{provider: corp}}, {{provider: remote}}]
routes:
  - name: canary
    match: {{claims: {{team: canary}}}}
    upstream: {canary_url}
"""


@dataclass
class Lab:
    corp: TestIssuer
    remote: TestIssuer
    jwks: JwksServer
    primary: EchoUpstream
    canary: EchoUpstream
    folder: Path

    def clear(self) -> None:
        self.primary.clear()
        self.canary.clear()

    @property
    def received(self) -> list[object]:
        return [*self.primary.received, *self.canary.received]

    def fresh(self, issuer: TestIssuer | None = None, header: dict | None = None) -> str:
        """A token never sent before (so no cache can answer for it), routed to the canary."""
        issuer = issuer or self.corp
        return issuer.mint(f"user-{next(_serial)}", {"team": "canary"}, header=header)

    def start_proxy(self, control: Path, **options: object) -> MitmdumpProcess:
        policy = write(
            self.folder / "policy.yaml",
            policy_text(self.corp, self.remote, self.jwks.jwks_url("remote"), self.canary.url),
        )
        injector = write_injector(self.folder, control)
        return MitmdumpProcess(
            policy,
            script=injector,  # first -s: loaded before the addon
            extra_args=["-s", str(ADDON_SCRIPT)],
            options=options,  # type: ignore[arg-type]
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fail-closed")
    corp = TestIssuer("corp", "ES256")
    remote = TestIssuer("remote", "ES256")
    (folder / "corp.pem").write_bytes(corp.public_pem())
    async with (
        JwksServer(remote) as jwks,
        EchoUpstream("primary") as primary,
        EchoUpstream("canary") as canary,
    ):
        yield Lab(corp, remote, jwks, primary, canary, folder)


@pytest.fixture(scope="module")
def control(lab) -> Path:
    return lab.folder / "fault.txt"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(lab, control):
    process = lab.start_proxy(control, stream_large_bodies="1k")
    async with process:
        await process.await_output(r"fault injection armed", 5, since=0)
        yield process


def inject(control: Path, stage: str) -> None:
    control.write_text(stage)


async def expect_fault_logged(proxy: MitmdumpProcess, stage: str, mark: int) -> None:
    await proxy.await_output(rf"fault injected: {stage}\b", 5, since=mark)


@pytest.mark.parametrize(
    "stage",
    [
        "request_checks",
        "request_view",
        "strip_identity_headers",
        "extract",
        "verify",
        "location_check",
        "cache_lookup",
        "identity",
        "claim_headers",
        "authorize",
        "route",
        "decision_log",
        "apply",
        "body_framing",
        "key_wait",
    ],
)
async def test_an_exception_in_a_stage_refuses_with_500_and_forwards_nothing(
    lab, proxy, control, stage
):
    issuer = lab.remote if stage == "key_wait" else lab.corp
    # key_wait runs only for a kid the fetched set lacks (a rotation), or before any fetch.
    header = {"kid": f"rotated-{next(_serial)}"} if stage == "key_wait" else None
    url = f"{lab.primary.url}/api/items"
    lab.clear()
    mark = proxy.mark()
    inject(control, stage)
    try:
        token = lab.fresh(issuer, header=header)
        reply = await send(proxy.proxy_url, url, token=token, headers={"x-user": "admin"})
        await expect_fault_logged(proxy, stage, mark)
    finally:
        inject(control, "")
    assert (reply.status, reply.text) == (500, INTERNAL), reply
    assert "www-authenticate" not in reply.headers
    assert lab.received == []

    # Fault off: the same kind of request goes through (to the canary route, with its claim).
    token = lab.fresh(issuer)
    reply = await send(proxy.proxy_url, url, token=token, headers={"x-user": "admin"})
    assert reply.status == 200, reply.text
    assert reply.upstream == "canary"
    [seen] = lab.received
    assert seen.header_values("x-user") == [split_compact(token)[1]["sub"]]


async def test_a_refused_request_whose_refusal_fails_is_still_not_forwarded(lab, proxy, control):
    """The refusal itself raising (building the 401) must not let the request through."""
    lab.clear()
    mark = proxy.mark()
    inject(control, "refusal_response")
    try:
        try:
            reply = await send(proxy.proxy_url, f"{lab.primary.url}/api/items")
        except aiohttp.ClientError:
            reply = None  # a dropped connection is a refusal too
        await expect_fault_logged(proxy, "refusal_response", mark)
    finally:
        inject(control, "")
    assert reply is None or reply.status >= 400
    assert lab.received == []


async def test_a_streamed_request_is_killed_when_a_stage_fails(lab, proxy, control):
    """With `stream_large_bodies`, a refusal cannot be an answer: the flow is killed."""
    url = f"{lab.primary.url}/upload"
    body = b"x" * 8192  # above the 1k streaming threshold
    lab.clear()
    mark = proxy.mark()
    inject(control, "verify")
    try:
        status = await post(proxy.proxy_url, url, lab.fresh(), body)
        await expect_fault_logged(proxy, "verify", mark)
    finally:
        inject(control, "")
    assert status is None or status >= 500, status  # killed: no answer, or mitmproxy's 502
    assert lab.received == []

    assert await post(proxy.proxy_url, url, lab.fresh(), body) == 200
    [seen] = lab.received
    assert seen.body == body


async def post(proxy_url: str, url: str, token: str, body: bytes) -> int | None:
    timeout = aiohttp.ClientTimeout(total=15)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=body, headers=headers, proxy=proxy_url) as response,
        ):
            await response.read()
            return response.status
    except aiohttp.ClientError:
        return None


async def test_key_refresh_failure_fails_closed_then_recovers(lab, tmp_path):
    """The JWKS fetch raising (not just failing) leaves no keys: 401, never a pass."""
    control = tmp_path / "fault.txt"
    process = lab.start_proxy(control)
    inject(control, "key_refresh")  # armed before the first fetch
    async with process:
        url = f"{lab.primary.url}/api/items"
        lab.clear()
        reply = await send(process.proxy_url, url, token=lab.fresh(lab.remote))
        assert (reply.status, reply.text) == (401, "Jwks remote fetch is failed")
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]
        assert lab.received == []
        await process.await_output(r"fault injected: key_refresh", 5, since=0)

        inject(control, "")
        for _ in range(60):  # the background fetch retries with backoff (0.5 s doubling)
            reply = await send(process.proxy_url, url, token=lab.fresh(lab.remote))
            if reply.status == 200:
                break
            await asyncio.sleep(0.25)
        assert reply.status == 200, reply.text
