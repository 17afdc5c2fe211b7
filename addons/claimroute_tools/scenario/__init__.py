"""The scenario runner: a YAML experiment, run end to end through a real mitmdump.

`load_scenario(path)` validates a file (errors name file, key path and line);
`run_scenario(scenario, out_dir)` brings the world up (issuers, JWKS servers, echo upstreams,
mitmdump with the addon), sends the traffic, runs the timeline, checks the expectations and
writes report.json / report.html / report.svg. `claimroute-scenario` (cli.py) wraps both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from claimroute.policy.model import Policy
from claimroute_tools.scenario.expect import Outcome, RunData, evaluate
from claimroute_tools.scenario.model import PolicyError, Scenario, load_scenario
from claimroute_tools.scenario.report import print_report, summarize, write_reports
from claimroute_tools.scenario.summary import ReportSummary
from claimroute_tools.scenario.timeline import Timeline
from claimroute_tools.scenario.traffic import (
    ProgressReporter,
    TokenBook,
    attribute_routes,
    build_users,
    drive,
    mark_seen,
    plan_requests,
    read_decisions,
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
) -> RunResult:
    """Run `scenario` and write its reports into `out_dir`.

    Raises PolicyError when a policy does not validate once substituted, and WorldFailed when
    the infrastructure (mitmdump above all) does not come up or misbehaves. Everything
    started is stopped again, also on cancellation (Ctrl-C).
    """
    console = console or Console()
    out_dir = out_dir.resolve()
    traffic = scenario.traffic
    async with World(scenario, out_dir) as world:
        users = build_users(scenario.users)
        book = TokenBook(users, world.issuers)
        await asyncio.to_thread(book.mint_all)
        plan = plan_requests(users, traffic.mix, traffic.requests, traffic.seed)
        with ProgressReporter(len(plan), console, progress) as reporter:
            timeline = Timeline(scenario, world, book, len(plan), reporter.note)
            run = await drive(
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
        decisions = read_decisions(world.decision_log)
        attributed = attribute_routes(run.results, users, decisions)
        data = RunData(
            scenario=scenario,
            users=users,
            results=run.results,
            phase_policies=_phase_policies(world, scenario),
            upstream_names=world.upstream_names(),
            output=world.output,
            step_names=[step.name for step in scenario.steps],
            incomplete=run.incomplete,
        )
        outcomes = evaluate(data)
        proxy_url = world.proxy_url
    files = {
        "policy": str(world.policy_path),
        "decision log": str(world.decision_log),
        "mitmdump output": str(out_dir / "mitmdump.log"),
    }
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
