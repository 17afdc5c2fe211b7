"""The world a scenario runs in: issuers, JWKS servers, echo upstreams and a real mitmdump.

Everything binds 127.0.0.1 on ports the OS picks. The run directory receives the rendered
policy files, the JWKS files, the addon's decision log and mitmdump's output, so a run can be
inspected afterwards. `close()` tears everything down and is safe to call at any point of a
failed start, on an exception or on Ctrl-C (cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any, Self

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from claimroute.errors import PolicyError
from claimroute.policy.load import load_policy, parse_policy
from claimroute.policy.model import Policy
from claimroute_tools.lab import (
    EchoUpstream,
    JwksServer,
    MitmdumpFailed,
    MitmdumpProcess,
    TestIssuer,
)
from claimroute_tools.scenario.model import PolicySource, Scenario, substitute
from claimroute_tools.scenario.traffic import REQUEST_ID_HEADER

log = logging.getLogger(__name__)

RELOADED_RE = r"claimroute: policy (reloaded|change rejected)"
METRICS_RE = re.compile(r"claimroute: metrics at (http://\S+/metrics)")
START_TIMEOUT = 30.0


class WorldFailed(RuntimeError):
    """Infrastructure did not come up or misbehaved (exit code 3); `output` is mitmdump's."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True, slots=True)
class RenderedPolicy:
    """A policy with every `${...}` substituted, validated, ready to be written."""

    source: PolicySource
    text: str
    policy: Policy


def _dump_yaml(document: object, header: str) -> str:
    yaml = YAML(typ="rt")  # the same YAML 1.2 dialect the addon reads; keeps key order
    yaml.default_flow_style = False
    buffer = StringIO()
    yaml.dump(document, buffer)
    return f"# {header}\n{buffer.getvalue()}"


def _absolute_key_files(document: object, base: Path) -> object:
    """Make relative `providers.*.jwks.file` paths absolute (the rendered file lives elsewhere)."""
    if not isinstance(document, dict) or not isinstance(document.get("providers"), dict):
        return document
    for provider in document["providers"].values():
        jwks = provider.get("jwks") if isinstance(provider, dict) else None
        if isinstance(jwks, dict) and isinstance(jwks.get("file"), str):
            path = Path(jwks["file"])
            if not path.is_absolute():
                jwks["file"] = str((base / path).resolve())
    return document


class World:
    """Brings up and tears down everything a scenario needs. Use as `async with World(...)`."""

    def __init__(self, scenario: Scenario, run_dir: Path) -> None:
        self.scenario = scenario
        self.run_dir = run_dir
        self.keys_dir = run_dir / "keys"
        self.policy_path = run_dir / "policy.yaml"
        self.decision_log = run_dir / "decisions.jsonl"
        self.issuers: dict[str, TestIssuer] = {}
        self.jwks_servers: dict[str, JwksServer] = {}
        self.upstreams: dict[str, EchoUpstream] = {}
        self.mitmdump: MitmdumpProcess | None = None
        self.metrics_url: str | None = None  # the addon's /metrics (on a port the OS picked)
        self.initial: RenderedPolicy | None = None
        self.step_policies: dict[str, RenderedPolicy] = {}  # by step name
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Keys, servers, policies, then mitmdump (waits for the addon's ready line).

        Raises PolicyError for a policy that does not validate once substituted, and
        WorldFailed when mitmdump does not start.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.keys_dir.mkdir(exist_ok=True)
        for stale in (self.decision_log, self.run_dir / "mitmdump.log"):
            stale.unlink(missing_ok=True)
        for spec in self.scenario.issuers.values():
            # RSA key generation takes a moment: keep the loop responsive.
            issuer = await asyncio.to_thread(
                TestIssuer,
                spec.name,
                spec.alg,
                issuer=spec.issuer,
                audience=list(spec.audience) if isinstance(spec.audience, tuple) else spec.audience,
            )
            self.issuers[spec.name] = issuer
            if spec.serve == "http":
                server = JwksServer(issuer)
                self.jwks_servers[spec.name] = server
                await server.start()
            else:
                issuer.write_jwks(self.jwks_file(spec.name))
        for name in self.scenario.upstreams:
            upstream = EchoUpstream(name)
            self.upstreams[name] = upstream
            await upstream.start()
        self.initial = self.render(self.scenario.policy)
        for step in self.scenario.steps:
            if step.policy is not None:
                rendered = self.render(step.policy)
                self.step_policies[step.name] = rendered
        self.write_policy(self.initial)
        self.mitmdump = MitmdumpProcess(
            self.policy_path,
            mode="regular",
            options={
                "claimroute_log": str(self.decision_log),
                # Each scenario request carries its index here: decisions join requests exactly.
                "claimroute_request_id_header": REQUEST_ID_HEADER,
                # The report records the proxy's own counters at the end of the run.
                "claimroute_metrics": "127.0.0.1:0",
            },
        )
        try:
            await self.mitmdump.astart(START_TIMEOUT)
        except MitmdumpFailed as exc:
            raise WorldFailed(f"mitmdump did not start: {exc.reason}", exc.output) from None
        found = METRICS_RE.search(self.mitmdump.output)
        self.metrics_url = found.group(1) if found is not None else None

    async def close(self) -> None:
        """Stop mitmdump and every server; save mitmdump's output. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.mitmdump is not None:
            # Shielded: a second Ctrl-C must not leave the subprocess behind.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.mitmdump.astop())
            with contextlib.suppress(OSError):
                (self.run_dir / "mitmdump.log").write_text(self.mitmdump.output)
        for server in [*self.upstreams.values(), *self.jwks_servers.values()]:
            with contextlib.suppress(Exception):
                await server.stop()

    async def scrape_metrics(self) -> dict[str, Any]:
        """The proxy's Prometheus metrics now, parsed: sample name -> [{labels, value}]; on
        failure `{"error": why}` (the report keeps it, the run goes on)."""
        if self.metrics_url is None:
            return {"error": "mitmdump did not say where its metrics are"}
        try:
            timeout = aiohttp.ClientTimeout(total=10)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.metrics_url) as response,
            ):
                if response.status != 200:
                    return {"error": f"{self.metrics_url}: HTTP {response.status}"}
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return {"error": f"{self.metrics_url}: {type(exc).__name__}: {exc}"}
        out: dict[str, Any] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append(
                    {"labels": dict(sample.labels), "value": sample.value}
                )
        return out

    # -- facts ------------------------------------------------------------------------------

    @property
    def proxy_url(self) -> str:
        """The proxy, `http://127.0.0.1:PORT`."""
        if self.mitmdump is None or self.mitmdump.proxy_url is None:
            raise RuntimeError("mitmdump is not running")
        return self.mitmdump.proxy_url

    @property
    def target_url(self) -> str:
        """Where traffic is addressed: the first upstream."""
        return self.upstreams[self.scenario.upstreams[0]].url

    @property
    def output(self) -> str:
        """Everything mitmdump printed so far."""
        return self.mitmdump.output if self.mitmdump is not None else ""

    def jwks_file(self, issuer: str) -> Path:
        """The JWKS file of a `serve: file` issuer."""
        return (self.keys_dir / f"{issuer}.jwks.json").resolve()

    def upstream_names(self) -> dict[str, str]:
        """Upstream URL (as the policy writes it) -> upstream name."""
        return {upstream.url: name for name, upstream in self.upstreams.items()}

    def references(self) -> dict[str, str]:
        """The value of every `${...}` a policy may use."""
        values: dict[str, str] = {}
        for name, issuer in self.issuers.items():
            values[f"issuers.{name}.issuer"] = issuer.issuer
            if name in self.jwks_servers:
                values[f"issuers.{name}.jwks_url"] = self.jwks_servers[name].jwks_url(name)
            else:
                values[f"issuers.{name}.jwks_file"] = str(self.jwks_file(name))
        for name, upstream in self.upstreams.items():
            values[f"upstreams.{name}.url"] = upstream.url
        return values

    # -- policies ---------------------------------------------------------------------------

    def render(self, source: PolicySource) -> RenderedPolicy:
        """Substitute and validate a policy (PolicyError names the source file, key and line)."""
        document = substitute(source.document, source.loc, self.references(), self.scenario.issuers)
        document = _absolute_key_files(document, source.base)
        text = _dump_yaml(document, f"rendered by claimroute-scenario from {source.origin}")
        # Validate against the source's own lines first, so errors point at what was written.
        parse_policy(document, source.loc, base=source.base, fingerprint="-")
        candidate = self.run_dir / "policy.check.yaml"
        candidate.write_text(text)
        try:
            policy = load_policy(candidate)
        except PolicyError as exc:  # only a rendering bug could get here
            raise PolicyError(
                f"the rendered policy does not load: {exc}",
                file=source.origin,
                key_path="",
                line=None,
            ) from None
        finally:
            candidate.unlink(missing_ok=True)
        return RenderedPolicy(source, text, policy)

    def write_policy(self, rendered: RenderedPolicy, name: str | None = None) -> Path:
        """Atomically replace the live policy file (the addon polls it every second)."""
        tmp = self.run_dir / ".policy.yaml.tmp"
        tmp.write_text(rendered.text)
        os.replace(tmp, self.policy_path)
        if name is not None:  # keep a copy per step for the record
            (self.run_dir / f"policy.{name}.yaml").write_text(rendered.text)
        return self.policy_path

    async def change_policy(self, rendered: RenderedPolicy, name: str, timeout: float) -> float:
        """Write a new policy and wait until the addon says it reloaded; returns the wait."""
        assert self.mitmdump is not None
        if self.initial is not None and rendered.text == self._live_text():
            raise WorldFailed(f"step {name}: the new policy is identical to the live one")
        mark = self.mitmdump.mark()
        started = asyncio.get_running_loop().time()
        self.write_policy(rendered, name)
        try:
            match = await self.mitmdump.await_output(RELOADED_RE, timeout, since=mark)
        except MitmdumpFailed as exc:
            raise WorldFailed(
                f"step {name}: the addon did not reload the policy: {exc.reason}", exc.output
            ) from None
        if match.group(1) != "reloaded":
            raise WorldFailed(f"step {name}: the addon rejected the new policy", self.output)
        return asyncio.get_running_loop().time() - started

    def _live_text(self) -> str:
        try:
            return self.policy_path.read_text()
        except OSError:
            return ""
