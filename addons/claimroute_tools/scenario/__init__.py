"""The scenario runner: a YAML experiment, run end to end through a real mitmdump.

`load_scenario(path)` validates a file (errors name file, key path and line);
`run_scenario(scenario, out_dir)` brings the world up (issuers, JWKS servers, echo upstreams,
mitmdump with the addon), sends the traffic, runs the timeline, checks the expectations and
writes report.json / report.html / report.svg. `claimroute-scenario` (cli.py) wraps both.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from claimroute.policy.model import Policy
from claimroute_tools.scenario.analysis import check_comparison_names
from claimroute_tools.scenario.engines.locust_engine import LocustOptions, drive_locust
from claimroute_tools.scenario.expect import Outcome, RunData, evaluate
from claimroute_tools.scenario.model import PolicyError, Scenario, load_scenario
from claimroute_tools.scenario.report import print_report, summarize, write_reports
from claimroute_tools.scenario.summary import ReportSummary
from claimroute_tools.scenario.timeline import Timeline
from claimroute_tools.scenario.tokens import TokenFetchFailed, prepare
from claimroute_tools.scenario.traffic import (
    ProgressReporter,
    TokenBook,
    attribute_routes,
    build_users,
    drive,
    make_plan,
    mark_seen,
)
from claimroute_tools.scenario.world import World, WorldFailed


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run produced."""

    scenario: Scenario
    outcomes: list[Outcome]
    summary: ReportSummary  # report.json is render.to_dict(summary)
    reports: dict[str, Path]

    @property
    def passed(self) -> bool:
        """True when every expectation held."""
        return all(outcome.passed for outcome in self.outcomes)


def _phase_policies(world: World, scenario: Scenario) -> list[Policy]:
    assert world.initial is not None
    policies = [world.initial.policy]
    for step in scenario.steps:
        rendered = world.step_policies.get(step.name)
        policies.append(rendered.policy if rendered is not None else policies[-1])
    return policies


async def run_scenario(
    scenario: Scenario,
    out_dir: Path,
    *,
    console: Console | None = None,
    progress: bool | None = None,
    engine: str = "builtin",
    locust: LocustOptions | None = None,
    proxy_profile: str = "gateway",
    proxy_workers: int = 1,
) -> RunResult:
    """Run `scenario` and write its reports into `out_dir`.

    Raises PolicyError when a policy does not validate once substituted, and WorldFailed when
    the infrastructure (mitmdump above all) does not come up or misbehaves. Everything
    started is stopped again, also on cancellation (Ctrl-C). `engine` sends the traffic:
    "builtin" (aiohttp, in this process) or "locust" (Locust subprocesses, `locust` options;
    raises LocustUnavailable when Locust is not installed, LocustFailed when it stops).
    The proxy the runner starts is the lean gateway master (`proxy_profile="mitmdump"`: plain
    mitmdump -s), `proxy_workers` of them behind HAProxy when more than one.
    """
    console = console or Console()
    out_dir = out_dir.resolve()
    traffic = scenario.traffic
    prepared = prepare(scenario)  # secrets and token files: exit 2 before anything starts
    async with World(
        scenario, out_dir, proxy_profile=proxy_profile, proxy_workers=proxy_workers
    ) as world:
        # Default comparison names whose routes only the rendered policies tell.
        check_comparison_names(scenario, _phase_policies(world, scenario), world.upstream_names())
        users = build_users(scenario.users)
        book = TokenBook(users, world.issuers, world.providers, prepared)
        try:  # every token before any traffic (docs/external-tokens.md)
            await book.obtain_all()
        except TokenFetchFailed as exc:
            raise WorldFailed(str(exc)) from None
        plan, total = make_plan(users, traffic)  # total None: a duration run
        with ProgressReporter(total, console, progress) as reporter:
            timeline = Timeline(scenario, world, book, total, reporter.note)
            send = drive
            if engine == "locust":  # the same signature and result (scenario/engines/)
                send = functools.partial(drive_locust, options=locust, run_dir=out_dir / "locust")
            elif engine != "builtin":
                raise ValueError(f"unknown traffic engine {engine!r}")
            run = await send(
                scenario,
                users,
                plan,
                proxy_url=world.proxy_url,
                target_url=world.target_url,
                run_steps=timeline.run_at,
                boundaries=timeline.boundaries(),
                progress=reporter,
            )
        if world.mitmdump is not None and not world.mitmdump.alive:
            raise WorldFailed(
                f"mitmdump exited during the run (exit code {world.mitmdump.returncode})",
                world.output,
            )
        proxy_metrics = await world.scrape_metrics()
        mark_seen(run.results, world.upstreams)
        # The user's own decision log only from where it ended when traffic started.
        decisions = world.read_decisions()
        attributed = attribute_routes(
            run.results, users, decisions, world.upstream_names(), world.unseen_upstreams
        )
        if world.unseen_upstreams or world.external_proxy:
            for name, note in world.attribution_notes().items():
                console.print(f"attribution: {name}: {note}", highlight=False)
            sources = Counter(result.source for result in run.results)
            ordered = sorted(sources.items(), key=lambda kv: (-kv[1], kv[0]))
            decided = ", ".join(f"{source} {n}" for source, n in ordered)
            console.print(f"attribution: requests by who decided: {decided}", highlight=False)
        data = RunData(
            scenario=scenario,
            users=users,
            results=run.results,
            phase_policies=_phase_policies(world, scenario),
            upstream_names=world.upstream_names(),
            output=world.output,
            step_names=[step.name for step in scenario.steps],
            incomplete=run.incomplete,
            unseen_upstreams=world.unseen_upstreams,
        )
        outcomes = evaluate(data)
        proxy_url = world.proxy_url
    files = {
        "policy": str(world.policy_path),
        "decision log": str(world.decision_log) if world.decision_log else "(none given)",
    }
    if not world.external_proxy:
        files["mitmdump output"] = str(out_dir / "mitmdump.log")
    summary = summarize(
        data,
        run,
        outcomes,
        timeline.records,
        timeline.phase_names(),
        tokens_minted=book.minted,
        attributed=attributed,
        decisions=len(decisions),
        files=files,
        proxy_url=proxy_url,
        proxy_metrics=proxy_metrics,
    )
    reports = write_reports(summary, out_dir)
    print_report(summary, console)
    return RunResult(scenario, outcomes, summary, reports)


__all__ = [
    "Outcome",
    "PolicyError",
    "ReportSummary",
    "RunResult",
    "Scenario",
    "WorldFailed",
    "load_scenario",
    "run_scenario",
]
