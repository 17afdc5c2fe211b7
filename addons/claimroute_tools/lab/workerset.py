"""`claimroute proxy --workers N` as a lab process: N proxies behind HAProxy, one address.

`WorkerSetProcess` has `MitmdumpProcess`'s interface (start/astart, stop/astop, output, mark,
await_output, proxy_url, alive, returncode), so the scenario runner and tests use it the same
way; the readiness line is the supervisor's `claimroute ready: listening on HOST:PORT` (HAProxy's
address), printed once every worker is ready. Worker output comes prefixed `[worker N]`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from claimroute_tools.lab.mitmdump import MitmdumpProcess, OptionValue, _set_args

PIDS_RE = re.compile(
    r"claimroute ready: listening on \S+ \(HAProxy, \d+ workers: [^;]*; pids ([\d, ]+)\)"
)


class WorkerSetProcess(MitmdumpProcess):
    """`claimroute proxy --workers N POLICY` (lean profile by default) as a subprocess."""

    def __init__(
        self,
        policy_path: str | os.PathLike[str],
        workers: int = 2,
        *,
        mode: str = "regular",
        options: Mapping[str, OptionValue] | None = None,
        profile: str = "gateway",
        balance: str = "roundrobin",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        listen: Sequence[str] = ("--listen-host", "127.0.0.1", "-p", "0"),
    ) -> None:
        """`listen`: the listen address options (default: loopback, a port the OS picks)."""
        super().__init__(policy_path, mode=mode, options=options, env=env, cwd=cwd,
                         profile=profile)  # fmt: skip
        self.workers = workers
        assert self.policy_path is not None
        self.command = [
            sys.executable, "-m", "claimroute_tools.cli", "proxy",
            "--workers", str(workers), "--profile", profile, "--balance", balance,
            str(self.policy_path),
            *listen, "--mode", mode,
            "--set", f"confdir={self.confdir}", "--set", "termlog_verbosity=info",
            *_set_args(self.options), *extra_args,
        ]  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"WorkerSetProcess(workers={self.workers}, pid={self.pid}, "
            f"proxy_url={self.proxy_url}, rc={self.returncode})"
        )

    @property
    def worker_pids(self) -> list[int]:
        """The workers' pids as first started (the ready line), in worker order."""
        for line in self.lines:
            match = PIDS_RE.search(line)
            if match:
                return [int(p) for p in match.group(1).split(",")]
        return []

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM to the supervisor (it stops HAProxy and every worker), then SIGKILL."""
        return super().stop(timeout)

    async def astop(self, timeout: float = 30) -> int | None:
        """`stop()` in a worker thread."""
        return await super().astop(timeout)
