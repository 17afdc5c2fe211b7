"""The timeline: steps that change the world at a share of the requests (or of the duration).

Traffic stops at each step's boundary and waits for the requests in flight, then the steps due
there run in file order, then traffic goes on. So every request belongs to exactly one phase:
phase k = sent after k steps had run. A boundary is a request index (`at` times the requests)
in a count run, and seconds of traffic time (`at` times the duration, the steps' own time not
counted) in a duration run. Steps:

- `rotate_keys`: the issuer switches to a fresh key (`keep_old` keeps publishing the old one).
  With `remint` (default true: all of the issuer's users; or a list of populations) those
  users get a fresh token with the new kid, as they would after logging in again; the others
  keep theirs. A `serve: file` issuer's JWKS file is rewritten (the addon reads key files only
  when the policy file changes).
- `stop_jwks` / `start_jwks`: the issuer's JWKS server closes its port / listens again on the
  same port. `jwks_mode`: it answers with a failure mode (error500, slow, garbage,
  redirect_offsite) or `ok` again.
- `change_policy`: write a new policy file and wait until mitmdump logs that the addon
  reloaded it (a rejected policy fails the run).
- `pause`: wait (e.g. to let a JWKS cache expire or a refresh fail).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from claimroute_tools.scenario.model import Scenario, Step
from claimroute_tools.scenario.traffic import TokenBook
from claimroute_tools.scenario.world import World


@dataclass(slots=True)
class StepRecord:
    """A step that ran: where, when, and what it did."""

    ordinal: int
    name: str
    action: str
    index: int  # requests sent before it
    at: float  # the configured share
    started: float  # wall clock
    finished: float
    detail: str


class Timeline:
    """Runs the scenario's steps at their request indices."""

    def __init__(
        self,
        scenario: Scenario,
        world: World,
        book: TokenBook,
        total: int | None,
        notify: Callable[[str], None],
    ) -> None:
        """`total`: the planned requests of a count run; None for a duration run."""
        self.scenario = scenario
        self.world = world
        self.book = book
        self.total = total
        self.notify = notify
        self.records: list[StepRecord] = []

    def mark(self, step: Step) -> float:
        """Where `step` runs: a request index, or seconds of traffic time (duration runs)."""
        duration = self.scenario.traffic.duration
        if self.total is None and duration is not None:
            return step.at * duration
        return step.index(self.total or 0)

    def boundaries(self) -> list[float]:
        """The request indices (or traffic seconds) at which some step runs."""
        return sorted({self.mark(step) for step in self.scenario.steps})

    def phase_names(self) -> list[str]:
        """Phase k's name: `start`, then `after <step>`; steps run at the same boundary are
        named together (`after a+b`), since the phases between them are empty."""
        names = ["start"]
        steps = self.scenario.steps
        for k, step in enumerate(steps):
            mark = self.mark(step)
            group = [s.name for s in steps[: k + 1] if self.mark(s) == mark]
            names.append("after " + "+".join(group))
        return names

    async def run_at(self, mark: float, sent: int | None = None) -> int:
        """Run every step due at `mark` (`sent`: requests sent so far, for a duration run);
        returns the number of steps run so far."""
        index = int(mark) if sent is None else sent
        for step in self.scenario.steps:
            if self.mark(step) == mark:
                started = time.time()
                detail = await self._run(step)
                record = StepRecord(
                    step.ordinal,
                    step.name,
                    step.action,
                    index,
                    step.at,
                    started,
                    time.time(),
                    detail,
                )
                self.records.append(record)
                pct = f"{step.at:.0%}"
                self.notify(f"step {pct} {step.name} ({step.action}): {detail}")
        return len(self.records)

    async def _run(self, step: Step) -> str:
        world = self.world
        match step.action:
            case "rotate_keys":
                assert step.issuer is not None
                issuer = world.issuers[step.issuer]
                old = issuer.kid
                new = issuer.rotate(keep_old=step.keep_old)
                if step.issuer not in world.jwks_servers:
                    issuer.write_jwks(world.jwks_file(step.issuer))
                minted = self.book.remint(step.issuer, step.remint)
                kept = "kept" if step.keep_old else "retired"
                return f"{step.issuer} signs with {new} ({old} {kept}); re-minted {minted} tokens"
            case "stop_jwks":
                assert step.issuer is not None
                await world.jwks_servers[step.issuer].stop()
                return f"JWKS server of {step.issuer} stopped (connection refused)"
            case "start_jwks":
                assert step.issuer is not None
                server = world.jwks_servers[step.issuer]
                await server.start()
                return f"JWKS server of {step.issuer} listening again on {server.url}"
            case "jwks_mode":
                assert step.issuer is not None and step.mode is not None
                world.jwks_servers[step.issuer].set_mode(step.issuer, step.mode)  # type: ignore[arg-type]
                return f"JWKS of {step.issuer} now answers {step.mode}"
            case "change_policy":
                rendered = world.step_policies[step.name]
                waited = await world.change_policy(rendered, step.name, step.wait)
                return f"policy from {rendered.source.origin} live after {waited:.1f}s"
            case "pause":
                assert step.seconds is not None
                await asyncio.sleep(step.seconds)
                return f"paused {step.seconds:g}s"
        raise AssertionError(f"unknown action {step.action}")
