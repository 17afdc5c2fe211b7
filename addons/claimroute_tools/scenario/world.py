"""The world a scenario runs in: issuers, JWKS servers, upstreams and the proxy.

Everything the runner starts binds 127.0.0.1 on ports the OS picks: issuers' JWKS servers,
echo upstreams (optionally misbehaving on purpose), and a real mitmdump with the addon. The run
directory receives the rendered policy files, the JWKS files, the addon's decision log and
mitmdump's output, so a run can be inspected afterwards.

A scenario may also point at services the runner does not start (docs/external-experiments.md):
url upstreams, and the user's own claimroute proxy (`proxy: {url, decision_log, policy_file}`).
Before any traffic a probe asks every upstream directly (it must answer and, if it says who it
is, name itself) and sends one request through the proxy (it must answer). The user's decision
log is read only from where it ended when the run started. The user's policy file is written
only by policy steps (or to install the scenario's own policy), and its original text is put
back when the run ends; with a proxy the runner did not start it cannot read the proxy's
output, so after writing the file it waits a fixed `proxy.reload_wait`.

`close()` tears everything down and is safe to call at any point of a failed start, on an
exception or on Ctrl-C (cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
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
    WorkerSetProcess,
)
from claimroute_tools.lab.mitmdump import OptionValue
from claimroute_tools.scenario.attribution import (
    ProbeFailed,
    ProbeResult,
    probe_proxy,
    probe_upstreams,
)
from claimroute_tools.scenario.model import PolicySource, Scenario, UpstreamSpec, substitute
from claimroute_tools.scenario.tokens import Provider, TokenFetchFailed, resolve_provider
from claimroute_tools.scenario.traffic import REQUEST_ID_HEADER, read_decisions

log = logging.getLogger(__name__)

RELOADED_RE = r"claimroute: policy (reloaded|change rejected)"
METRICS_RE = re.compile(r"claimroute: metrics at (http://\S+/metrics)")
START_TIMEOUT = 30.0
WORKERS_START_TIMEOUT = 120.0  # N workers start one after another, then HAProxy
LOG_CLOCK_SLACK = 1.0  # seconds: a rotated decision log is read from the run's start minus this
LOG_PROBE_WAIT = 5.0  # seconds for the user's proxy to log the probe request


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

    def __init__(
        self,
        scenario: Scenario,
        run_dir: Path,
        *,
        proxy_profile: str = "gateway",
        proxy_workers: int = 1,
    ) -> None:
        self.scenario = scenario
        self.run_dir = run_dir
        # The proxy the runner starts: the lean gateway master by default (the same decisions
        # as mitmdump -s, docs/scaling.md), or N of them behind HAProxy.
        self.proxy_profile = proxy_profile
        self.proxy_workers = proxy_workers
        self.keys_dir = run_dir / "keys"
        proxy = scenario.proxy
        self.external_proxy = proxy is not None
        # The user's files with their own proxy; ours otherwise.
        self.policy_path = (
            proxy.policy_file
            if proxy is not None and proxy.policy_file is not None
            else run_dir / "policy.yaml"
        )
        self.decision_log: Path | None = (
            run_dir / "decisions.jsonl" if proxy is None else proxy.decision_log
        )
        self.issuers: dict[str, TestIssuer] = {}
        self.jwks_servers: dict[str, JwksServer] = {}
        self.providers: dict[str, Provider] = {}  # external issuers, resolved at start
        self.upstreams: dict[str, EchoUpstream] = {}  # the echo servers the runner started
        self.external_upstreams: dict[str, str] = {  # url upstreams: name -> URL
            spec.name: spec.url for spec in scenario.upstream_specs if spec.url is not None
        }
        self.probes: dict[str, ProbeResult] = {}  # what each upstream answered at start
        self.decision_offset = 0  # where the decision log ended when traffic started
        self.traffic_started: float | None = None  # wall clock, when the probes were done
        self._original_policy: str | None = None  # the user's policy text, to put back
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
        """Keys, servers, the upstream probe, policies, then the proxy: mitmdump (waits for
        the addon's ready line), or the user's proxy (probed).

        Raises PolicyError for a policy that does not validate once substituted and for an
        upstream that names another one at the probe (exit 2), and WorldFailed when mitmdump
        does not start, or an upstream or the user's proxy does not answer (exit 3).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.keys_dir.mkdir(exist_ok=True)
        stale_files = [self.run_dir / "mitmdump.log"]
        if not self.external_proxy and self.decision_log is not None:
            stale_files.append(self.decision_log)  # ours; never the user's own log
        for stale in stale_files:
            stale.unlink(missing_ok=True)
        for spec in self.scenario.issuers.values():
            if spec.external is not None:  # a real identity provider: no keys, no JWKS server
                try:
                    self.providers[spec.name] = await resolve_provider(spec)
                except TokenFetchFailed as exc:
                    raise WorldFailed(str(exc)) from None
                continue
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
        for spec in self._upstream_specs():
            if spec.url is None:
                upstream = EchoUpstream(
                    spec.name, misbehave=spec.echo, seed=self.scenario.traffic.seed
                )
                self.upstreams[spec.name] = upstream
                await upstream.start()
        try:
            self.probes = await probe_upstreams(
                self._upstream_specs(), self.upstream_urls(), self.scenario.served_by
            )
        except ProbeFailed as exc:
            raise WorldFailed(str(exc)) from None
        self._check_decision_log_given()
        self.initial = self.render(self.scenario.policy)
        for step in self.scenario.steps:
            if step.policy is not None:
                rendered = self.render(step.policy)
                self.step_policies[step.name] = rendered
        if self.external_proxy:
            await self._join_proxy()
        else:
            await self._start_mitmdump()
        self._mark_log()

    def _upstream_specs(self) -> tuple[UpstreamSpec, ...]:
        scenario = self.scenario
        return tuple(scenario.upstream_spec(name) for name in scenario.upstreams)

    def _check_decision_log_given(self) -> None:
        """With the user's proxy, a url upstream whose answers do not name it can only be told
        apart by the proxy's decision log: without one every answer it gave would look like
        nobody's (PolicyError, exit 2, before any traffic)."""
        proxy = self.scenario.proxy
        if proxy is None or proxy.decision_log is not None:
            return
        silent = [
            name
            for name in self.external_upstreams
            if (probe := self.probes.get(name)) is not None and not probe.self_naming
        ]
        if not silent:
            return
        message = (
            f"give proxy.decision_log (the file your proxy's claimroute_log writes): the answers "
            f"of {', '.join(silent)} do not say who served them (no served_by value or "
            "x-upstream header at the probe), so only the decision log can tell which upstream "
            "served a request"
        )
        if proxy.loc is not None:
            raise proxy.loc.error(message)
        raise PolicyError(message, file=str(self.scenario.path), key_path="proxy", line=None)

    def _log_size(self) -> int | None:
        assert self.decision_log is not None
        try:
            return self.decision_log.stat().st_size
        except OSError:
            return None  # not written yet

    async def _check_log_records_probe(self, before: int | None) -> None:
        """The user's decision log must grow with the probe request (every decision is
        logged); else it is not the file the proxy writes, and attribution would silently
        join nothing (WorldFailed, exit 3)."""
        deadline = time.monotonic() + LOG_PROBE_WAIT
        while True:
            after = self._log_size()
            if after is not None and (before is None or after != before):
                return  # grew (or was rotated and written again)
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        raise WorldFailed(
            f"the proxy's decision log {self.decision_log} did not record the probe request "
            f"within {LOG_PROBE_WAIT:g}s: is claimroute_log set to this file?"
        )

    def _mark_log(self) -> None:
        """Remember where the decision log ends now: the run reads only what follows."""
        self.traffic_started = time.time()
        if self.decision_log is not None and self.external_proxy:
            try:
                self.decision_offset = self.decision_log.stat().st_size
            except OSError:
                self.decision_offset = 0  # not written yet: the proxy creates it

    async def _join_proxy(self) -> None:
        """The user's proxy: probe it (before touching its policy), then install the
        scenario's policy if the scenario has its own."""
        proxy = self.scenario.proxy
        assert proxy is not None and self.initial is not None
        self.metrics_url = proxy.metrics
        before = self._log_size() if self.decision_log is not None else None
        try:
            await probe_proxy(proxy.url, self.target_url)
        except ProbeFailed as exc:
            raise WorldFailed(
                f"{exc}; start it first (docs/external-experiments.md) or fix proxy.url"
            ) from None
        if self.decision_log is not None:
            await self._check_log_records_probe(before)
        if proxy.install_policy:
            self._original_policy = self._live_text()
            if self.initial.text != self._original_policy:
                self.write_policy(self.initial, "initial")
                await asyncio.sleep(proxy.reload_wait)

    async def _start_mitmdump(self) -> None:
        assert self.initial is not None and self.decision_log is not None
        self.write_policy(self.initial)
        options: dict[str, OptionValue] = {
            # Every worker appends to the one decision log (whole lines, O_APPEND).
            "claimroute_log": str(self.decision_log),
            # Each scenario request carries its index here: decisions join requests exactly.
            "claimroute_request_id_header": REQUEST_ID_HEADER,
            # The report records the proxy's own counters at the end of the run (with
            # workers: the first worker's).
            "claimroute_metrics": "127.0.0.1:0",
        }
        timeout = START_TIMEOUT
        if self.proxy_workers > 1:
            self.mitmdump = WorkerSetProcess(
                self.policy_path,
                self.proxy_workers,
                mode="regular",
                options=options,
                profile=self.proxy_profile,
            )
            timeout = WORKERS_START_TIMEOUT
        else:
            self.mitmdump = MitmdumpProcess(
                self.policy_path, mode="regular", options=options, profile=self.proxy_profile
            )
        try:
            await self.mitmdump.astart(timeout)
        except MitmdumpFailed as exc:
            raise WorldFailed(f"mitmdump did not start: {exc.reason}", exc.output) from None
        found = METRICS_RE.search(self.mitmdump.output)
        self.metrics_url = found.group(1) if found is not None else None

    async def close(self) -> None:
        """Stop mitmdump and every server; save mitmdump's output; put the user's policy
        file back as it was. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._original_policy is not None and self._live_text() != self._original_policy:
            with contextlib.suppress(OSError):
                self._replace(self.policy_path, self._original_policy)
                log.info("restored %s", self.policy_path)
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
            if self.external_proxy:
                return {"error": "no proxy.metrics given for your proxy"}
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
        """The proxy, `http://127.0.0.1:PORT` (or the user's `proxy.url`)."""
        if self.scenario.proxy is not None:
            return self.scenario.proxy.url
        if self.mitmdump is None or self.mitmdump.proxy_url is None:
            raise RuntimeError("mitmdump is not running")
        return self.mitmdump.proxy_url

    @property
    def target_url(self) -> str:
        """Where traffic is addressed: the first upstream."""
        return self.upstream_urls()[self.scenario.upstreams[0]]

    @property
    def unseen_upstreams(self) -> tuple[str, ...]:
        """Upstreams whose records the runner cannot see (url upstreams), in file order."""
        return tuple(self.external_upstreams)

    def upstream_urls(self) -> dict[str, str]:
        """Upstream name -> base URL, in the scenario's order (echo servers once started)."""
        out: dict[str, str] = {}
        for name in self.scenario.upstreams:
            if name in self.external_upstreams:
                out[name] = self.external_upstreams[name]
            elif name in self.upstreams:
                out[name] = self.upstreams[name].url
        return out

    def read_decisions(self) -> list[dict[str, Any]]:
        """The decision log's records of this run (the user's log only from the run's start)."""
        if self.decision_log is None:
            return []
        if not self.external_proxy:
            return read_decisions(self.decision_log)
        not_before = (self.traffic_started or 0.0) - LOG_CLOCK_SLACK
        return read_decisions(self.decision_log, since=self.decision_offset, not_before=not_before)

    def attribution_notes(self) -> dict[str, str]:
        """Per upstream, how the runner knows it served a request (for the report)."""
        notes: dict[str, str] = {}
        served_by = self.scenario.served_by
        for name in self.scenario.upstreams:
            probe = self.probes.get(name)
            if name not in self.external_upstreams:
                notes[name] = "echo server: its own answer (x-upstream) and its records"
            elif probe is not None and probe.self_naming:
                how = served_by.source if served_by is not None else "header x-upstream"
                notes[name] = (
                    f"its own answer ({how}: {probe.said}); the decision log where an answer "
                    "does not say; records not visible"
                )
            else:
                notes[name] = (
                    "its answers do not say who it is: the decision log decides; records not "
                    "visible"
                )
        return notes

    @property
    def output(self) -> str:
        """Everything mitmdump printed so far."""
        return self.mitmdump.output if self.mitmdump is not None else ""

    def jwks_file(self, issuer: str) -> Path:
        """The JWKS file of a `serve: file` issuer."""
        return (self.keys_dir / f"{issuer}.jwks.json").resolve()

    def upstream_names(self) -> dict[str, str]:
        """Upstream URL (as the policy writes it) -> upstream name."""
        return {url: name for name, url in self.upstream_urls().items()}

    def references(self) -> dict[str, str]:
        """The value of every `${...}` a policy may use."""
        values: dict[str, str] = {}
        for name, issuer in self.issuers.items():
            values[f"issuers.{name}.issuer"] = issuer.issuer
            if name in self.jwks_servers:
                values[f"issuers.{name}.jwks_url"] = self.jwks_servers[name].jwks_url(name)
            else:
                values[f"issuers.{name}.jwks_file"] = str(self.jwks_file(name))
        for name, provider in self.providers.items():  # external: discovered or as given
            values[f"issuers.{name}.issuer"] = provider.issuer
            values[f"issuers.{name}.jwks_url"] = provider.jwks_url
        for name, url in self.upstream_urls().items():
            values[f"upstreams.{name}.url"] = url
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
        if self.external_proxy and self._original_policy is None:
            self._original_policy = self._live_text()  # put back by close()
        self._replace(self.policy_path, rendered.text)
        if name is not None:  # keep a copy per step for the record
            (self.run_dir / f"policy.{name}.yaml").write_text(rendered.text)
        return self.policy_path

    @staticmethod
    def _replace(path: Path, text: str) -> None:
        """Write `path` atomically (a temporary file beside it, then rename)."""
        tmp = path.with_name(f".{path.name}.claimroute-scenario.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    async def change_policy(self, rendered: RenderedPolicy, name: str, timeout: float) -> float:
        """Write a new policy and wait until the addon says it reloaded; returns the wait.

        With the user's proxy the runner cannot see its output: it waits `proxy.reload_wait`
        (the addon polls the file every second and loads a change once it has settled)."""
        if self.initial is not None and rendered.text == self._live_text():
            raise WorldFailed(f"step {name}: the new policy is identical to the live one")
        if self.scenario.proxy is not None:
            started = asyncio.get_running_loop().time()
            self.write_policy(rendered, name)
            await asyncio.sleep(self.scenario.proxy.reload_wait)
            return asyncio.get_running_loop().time() - started
        assert self.mitmdump is not None
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
