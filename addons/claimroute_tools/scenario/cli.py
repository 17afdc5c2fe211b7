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
from claimroute_tools.scenario.model import MAX_CONCURRENCY, MAX_REQUESTS, load_scenario
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
    parser.add_argument("--requests", type=_bounded(MAX_REQUESTS), help="override traffic.requests")
    parser.add_argument(
        "--concurrency", type=_bounded(MAX_CONCURRENCY), help="override traffic.concurrency"
    )
    parser.add_argument("--seed", type=int, help="override traffic.seed")
    parser.add_argument("--no-progress", action="store_true", help="never draw a progress bar")
    return parser


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
        scenario = load_scenario(path).with_overrides(
            requests=args.requests, concurrency=args.concurrency, seed=args.seed
        )
        out_dir = args.out if args.out is not None else Path("reports") / scenario.name
        result = asyncio.run(
            run_scenario(
                scenario, out_dir, console=console, progress=False if args.no_progress else None
            )
        )
    except PolicyError as exc:
        err.print(f"[red]invalid scenario:[/] {escape(str(exc))}", highlight=False)
        return EXIT_BAD_SCENARIO
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
