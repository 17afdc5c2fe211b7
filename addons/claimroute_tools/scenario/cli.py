"""`claimroute-scenario NAME|PATH`: run one scenario and report.

Exit codes: 0 every expectation holds; 1 an expectation failed; 2 the scenario (or a policy
it uses) is invalid, with a message naming file, key path and line; 3 infrastructure failed
(e.g. mitmdump did not start; its output is printed); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

import claimroute
from claimroute.errors import PolicyError
from claimroute_tools.lab import MitmdumpFailed
from claimroute_tools.scenario import run_scenario
from claimroute_tools.scenario.engines.locust_engine import (
    LocustFailed,
    LocustOptions,
    LocustUnavailable,
    LocustUnsupported,
    check_available,
    unsupported,
)
from claimroute_tools.scenario.model import MAX_CONCURRENCY, MAX_REQUESTS, load_scenario
from claimroute_tools.scenario.pacing import duration_argument, rate_argument
from claimroute_tools.scenario.world import WorldFailed

EXIT_PASS, EXIT_FAIL, EXIT_BAD_SCENARIO, EXIT_INFRA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
REPO = Path(claimroute.__file__).resolve().parents[2]


def scenario_library() -> Path:
    """The scenario library: a checkout's `scenarios/`, or the copy shipped in the wheel."""
    checkout = REPO / "scenarios"
    if checkout.is_dir():
        return checkout
    import claimroute_tools

    return Path(claimroute_tools.__file__).resolve().parent / "scenarios"


def resolve(name: str) -> Path:
    """A path as given, or NAME -> NAME.yaml in the scenario library."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file() or "/" in name:
        return path
    return scenario_library() / f"{name}.yaml"


def _bounded(maximum: int) -> Callable[[str], int]:
    """An argparse type for an integer from 1 to `maximum` (the scenario file's own limits)."""

    def parse(text: str) -> int:
        value = int(text)
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between 1 and {maximum:,}")
        return value

    return parse


def build_parser(prog: str = "claimroute-scenario") -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a claimroute scenario end to end through a real mitmdump and report.",
        epilog="Exit codes: 0 pass, 1 an expectation failed, 2 invalid scenario, "
        "3 infrastructure failure.",
    )
    parser.add_argument("scenario", help="NAME (scenarios/NAME.yaml) or a path to a YAML file")
    parser.add_argument("--out", type=Path, help="report directory (default reports/NAME)")
    amount = parser.add_mutually_exclusive_group()  # docs/traffic.md
    amount.add_argument("--requests", type=_bounded(MAX_REQUESTS), help="override traffic.requests")
    amount.add_argument("--duration", type=duration_argument, metavar="60s",
                        help="send for this long instead (replaces traffic.requests)")  # fmt: skip
    parser.add_argument("--rate", type=rate_argument, metavar="200/s",
                        help="open model: send at this rate (traffic.rate)")  # fmt: skip
    parser.add_argument(
        "--concurrency", type=_bounded(MAX_CONCURRENCY), help="override traffic.concurrency"
    )
    parser.add_argument("--seed", type=int, help="override traffic.seed")
    parser.add_argument("--no-progress", action="store_true", help="never draw a progress bar")
    # Traffic engines (docs/locust.md).
    parser.add_argument(
        "--engine", choices=("builtin", "locust"), default="builtin",
        help="who sends the traffic: builtin (aiohttp) or locust (Locust master and workers)",
    )  # fmt: skip
    parser.add_argument("--locust-workers", type=_bounded(64), default=2,
                        help="local Locust worker processes (default 2)")  # fmt: skip
    parser.add_argument("--locust-remote-workers", type=int, default=0, metavar="N",
                        help="also wait for N workers started on other machines")  # fmt: skip
    parser.add_argument("--locust-master", default="127.0.0.1", metavar="HOST[:PORT]",
                        help="where the Locust master listens for workers")  # fmt: skip
    parser.add_argument("--locust-proxy-url", metavar="URL",
                        help="the proxy as the Locust workers reach it")  # fmt: skip
    # The proxy the runner starts (docs/scaling.md); a scenario's own `proxy:` starts none.
    parser.add_argument(
        "--proxy-profile", choices=("gateway", "mitmdump"), default="gateway",
        help="the lean gateway master (default) or plain mitmdump -s with the addon",
    )  # fmt: skip
    parser.add_argument(
        "--proxy-workers", type=_bounded(64), default=1, metavar="N",
        help="N proxy processes behind HAProxy (default 1: one process, no HAProxy)",
    )  # fmt: skip
    return parser


def _locust_options(args: argparse.Namespace) -> LocustOptions | None:
    """The Locust options of the command line (None for the built-in engine)."""
    if args.engine != "locust":
        return None
    check_available()
    host, port = args.locust_master, "0"
    if ":" in host:
        host, _, port = host.rpartition(":")
    if args.locust_remote_workers < 0:
        raise ValueError("--locust-remote-workers must be 0 or more")
    if args.locust_remote_workers and port == "0":
        raise ValueError("workers on other machines need a fixed port: --locust-master HOST:PORT")
    return LocustOptions(
        workers=args.locust_workers,
        remote_workers=args.locust_remote_workers,
        master_host=host,
        master_port=int(port),
        proxy_url=args.locust_proxy_url,
    )


def main(argv: Sequence[str] | None = None, prog: str = "claimroute-scenario") -> int:
    """Entry point; returns the exit code (see the module docstring)."""
    args = build_parser(prog).parse_args(argv)
    # Off a terminal rich assumes 80 columns; wider tables keep CI logs readable.
    console = Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=120)
    err = Console(stderr=True)
    path = resolve(args.scenario)
    if not path.is_file():
        known = sorted(p.stem for p in scenario_library().glob("*.yaml"))
        listing = ", ".join(known) or "none"
        err.print(f"[red]no scenario file {escape(str(path))}[/]; scenarios: {listing}")
        return EXIT_BAD_SCENARIO
    try:
        locust = _locust_options(args)
    except LocustUnavailable as exc:
        err.print(f"[red]{escape(str(exc))}[/]", highlight=False)
        return EXIT_INFRA
    except ValueError as exc:  # a usage error, as argparse's own
        err.print(f"[red]{escape(str(exc))}[/]", highlight=False)
        return EXIT_BAD_SCENARIO
    try:
        scenario = load_scenario(path).with_overrides(
            requests=args.requests,
            concurrency=args.concurrency,
            seed=args.seed,
            duration=args.duration,
            rate=args.rate,
        )
        if locust is not None and (refused := unsupported(scenario)) is not None:
            raise LocustUnsupported(refused)  # before the world starts
        out_dir = args.out if args.out is not None else Path("reports") / scenario.name
        result = asyncio.run(
            run_scenario(
                scenario,
                out_dir,
                console=console,
                progress=False if args.no_progress else None,
                engine=args.engine,
                locust=locust,
                proxy_profile=args.proxy_profile,
                proxy_workers=args.proxy_workers,
            )
        )
    except PolicyError as exc:
        err.print(f"[red]invalid scenario:[/] {escape(str(exc))}", highlight=False)
        return EXIT_BAD_SCENARIO
    except LocustUnsupported as exc:
        err.print(f"[red]not on Locust:[/] {escape(str(exc))}", highlight=False)
        return EXIT_BAD_SCENARIO
    except LocustFailed as exc:
        err.print(f"[red]infrastructure failure:[/] {escape(str(exc))}", highlight=False)
        return EXIT_INFRA
    except (WorldFailed, MitmdumpFailed) as exc:
        err.print(f"[red]infrastructure failure:[/] {escape(str(exc))}", highlight=False)
        if exc.output:
            err.print("--- mitmdump output ---", highlight=False)
            err.print(exc.output.rstrip(), markup=False, highlight=False)
            err.print("--- end of mitmdump output ---", highlight=False)
        return EXIT_INFRA
    except OSError as exc:
        err.print(f"[red]infrastructure failure:[/] {escape(str(exc))}", highlight=False)
        return EXIT_INFRA
    except KeyboardInterrupt:
        err.print("interrupted; everything was stopped")
        return EXIT_INTERRUPTED
    console.print(f"report: {result.reports['html']} (also report.json, report.svg)")
    return EXIT_PASS if result.passed else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
