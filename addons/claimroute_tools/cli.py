"""`claimroute`: one command for the proxy, its policies, experiments and development tools.

claimroute proxy POLICY [mitmdump options...]   mitmdump with the addon and that policy
  [--profile gateway] [--workers N]             (lean mitmproxy; N processes behind HAProxy)
claimroute check POLICY                         validate a policy and summarise it
claimroute explain POLICY [request options]     what the proxy would do with one request
claimroute test POLICY CASES.yaml               check a table of requests against a policy
claimroute scenario NAME|PATH [options]         run an experiment and write its report
claimroute keygen | mint | echo                 development keys, tokens and upstreams
claimroute addon-path                           the mitmdump script of this installation
claimroute schema policy|scenario               the JSON Schema of a file format
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import claimroute
import claimroute_tools

if TYPE_CHECKING:
    from claimroute.policy.model import Policy

# Exit codes of `check`: 0 valid, 1 invalid (the message names file, key path and line).
EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
SCHEMAS = ("policy", "scenario")


def addon_path() -> Path:
    """The mitmdump script inside the installed package."""
    return Path(claimroute.__file__).resolve().parent / "mitmdump_script.py"


def schema_path(kind: str) -> Path:
    """A JSON Schema: shipped inside the tools package, or in a checkout's `schemas/`."""
    name = f"{kind}.schema.json"
    shipped = Path(claimroute_tools.__file__).resolve().parent / "schemas" / name
    if shipped.is_file():
        return shipped
    return Path(claimroute_tools.__file__).resolve().parents[2] / "schemas" / name


def mitmdump_executable() -> str:
    """mitmdump from the same environment as this command, else from PATH."""
    beside = Path(sys.executable).parent / "mitmdump"
    if beside.is_file():
        return str(beside)
    found = shutil.which("mitmdump")
    if found is None:
        raise SystemExit("claimroute: mitmdump not found (pip install mitmproxy)")
    return found


def proxy_command(policy: Path, profile: str, extra: Sequence[str]) -> list[str]:
    """The command line of one proxy process: mitmdump with the addon script, or the lean
    gateway master (the addon built in)."""
    if profile == "gateway":
        head = [sys.executable, "-m", "claimroute_tools.proxy.gateway"]
    else:
        head = [mitmdump_executable(), "-s", str(addon_path())]
    return [*head, "--set", f"claimroute={policy.resolve()}", *extra]


def _proxy(args: argparse.Namespace, extra: list[str]) -> int:
    policy = Path(args.policy)
    if not policy.is_file():
        print(f"claimroute proxy: no policy file {policy}", file=sys.stderr)
        return EXIT_USAGE
    if args.workers is not None:
        from claimroute_tools.proxy.workers import main as workers_main

        return workers_main(policy, args.workers, args.profile or "gateway", extra, args.balance)
    command = proxy_command(policy, args.profile or "mitmdump", extra)
    sys.stdout.flush()
    os.execv(command[0], command)  # the proxy takes over: signals and exit code are its own
    return EXIT_OK  # not reached


def load_policy_or_say(path: str | Path) -> Policy | None:
    """The policy of `check`, `explain` and `test`, or None after saying on stderr why not."""
    from claimroute.errors import PolicyError
    from claimroute.policy.load import load_policy

    try:
        return load_policy(Path(path))
    except PolicyError as exc:
        print(f"invalid policy: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"cannot read the policy: {exc}", file=sys.stderr)
    return None


def _check(args: argparse.Namespace, extra: list[str]) -> int:
    from rich.console import Console

    from .policysummary import print_summary

    policy = load_policy_or_say(args.policy)
    if policy is None:
        return EXIT_INVALID
    print_summary(policy, Console())
    return EXIT_OK


def _explain(args: argparse.Namespace, extra: list[str]) -> int:
    from .explain import main as explain_main

    return explain_main(args)


def _test(args: argparse.Namespace, extra: list[str]) -> int:
    from .policytest import main as test_main

    return test_main(args)


def _addon_path(args: argparse.Namespace, extra: list[str]) -> int:
    print(addon_path())
    return EXIT_OK


def _schema(args: argparse.Namespace, extra: list[str]) -> int:
    text = schema_path(args.kind).read_text(encoding="utf-8")
    json.loads(text)  # a broken installation fails here rather than in an editor
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


# Subcommands whose own parser takes every argument after the name: (module, help).
_SCENARIO = "claimroute_tools.scenario.cli"
_DEVTOOLS = "claimroute_tools.devtools"
_DELEGATED = {
    "scenario": (_SCENARIO, "run a scenario (NAME or path) and write its report"),
    "keygen": (_DEVTOOLS, "make a key pair and its public JWKS"),
    "mint": (_DEVTOOLS, "mint a signed JWT with a key from keygen"),
    "echo": (_DEVTOOLS, "run an echo upstream that answers with what it received"),
    "import": ("claimroute_tools.importers", "translate Gloo or Istio JWT/RBAC config to a policy"),
}


def build_parser() -> argparse.ArgumentParser:
    """The command line (delegated subcommands parse their own arguments)."""
    parser = argparse.ArgumentParser(
        prog="claimroute",
        description="Verify JWTs, authorize and route on their claims in front of your services "
        "(a mitmproxy addon), and run canary experiments through it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `claimroute COMMAND --help` for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    proxy = commands.add_parser(
        "proxy",
        help="run mitmdump with the addon and POLICY (every mitmdump option may follow)",
        description="Run mitmdump with the claimroute addon and POLICY. Every mitmdump option "
        "may follow, e.g. `claimroute proxy policy.yaml --mode reverse:http://127.0.0.1:8000 "
        "-p 8080`. `--profile gateway` runs a lean mitmproxy instead; `--workers N` runs N "
        "proxies behind HAProxy.",
    )
    proxy.add_argument("policy", help="the policy file")
    proxy.add_argument(
        "--profile",
        choices=("mitmdump", "gateway"),
        default=None,
        help="mitmdump (default for one process): mitmdump with every default addon and the "
        "flow display; gateway (default with --workers): only what a JWT gateway needs, about "
        "1.5x the requests per second. The gateway leaves out the flow display (dumper, "
        "flow_detail), interactive and replay features (commands, cut, export, playback, "
        "reading flow files, keepserving), traffic rewriting (anticache, anticomp, map_local/"
        "map_remote, modify_headers/modify_body, stickycookie, stickyauth, block_list), saving "
        "flows (save_stream_file, HAR), the onboarding app (mitm.it), the browser launcher and "
        "DNS mode; it keeps request validation, h2c blocking, block_global/block_private, "
        "proxyauth/upstream_auth, TLS and every claimroute option. See docs/scaling.md.",
    )
    proxy.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run N proxy processes behind HAProxy (TCP mode) on the one listen address "
        "(--listen-host/--listen-port or --set listen_port=); a worker that dies is restarted; "
        "needs /usr/sbin/haproxy (apt-get install haproxy)",
    )
    proxy.add_argument(
        "--balance",
        choices=("roundrobin", "leastconn"),
        default="roundrobin",
        help="with --workers: how HAProxy spreads connections (default roundrobin)",
    )
    proxy.set_defaults(run=_proxy, extra_allowed=True)
    check = commands.add_parser(
        "check", help="validate POLICY: a summary and exit 0, or the error and exit 1"
    )
    check.add_argument("policy", help="the policy file")
    check.set_defaults(run=_check)
    explain = commands.add_parser(
        "explain",
        help="show, stage by stage, what the proxy would do with one request (no proxy)",
        description="Run one request through the proxy's code with POLICY and show every "
        "stage: token, verification, each RBAC policy, each route, the upstream request or "
        "the exact refusal.",
    )
    explain.add_argument("policy", help="the policy file")
    caller = explain.add_mutually_exclusive_group()
    caller.add_argument("--token", help="a JWT, sent as `Authorization: Bearer TOKEN`")
    caller.add_argument("--claims", help="claims as a JSON object (with --provider): no "
                        "signature, time or audience check")  # fmt: skip
    explain.add_argument("--provider", help="the provider that vouches for --claims")
    explain.add_argument("--method", default="GET", help="the request method (default GET)")
    explain.add_argument("--path", default="/", help="the path and query (default /)")
    explain.add_argument("--host", default="api.example.test", help="the host[:port]")
    explain.add_argument("--header", action="append", metavar="'NAME: VALUE'",
                         help="a request header (repeatable)")  # fmt: skip
    explain.add_argument("--json", action="store_true", help="one JSON document")
    explain.set_defaults(run=_explain)
    test = commands.add_parser(
        "test",
        help="run a table of cases (requests and expected outcomes) against POLICY",
        description="Run every case of CASES.yaml through the proxy's code with POLICY; exit 1 "
        "on any miss, 2 on bad input.",
    )
    test.add_argument("policy", help="the policy file")
    test.add_argument("cases", help="the cases file (YAML)")
    test.add_argument("--junit", metavar="FILE", help="also write JUnit XML to FILE")
    test.set_defaults(run=_test)
    for name, (_, help_text) in _DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False)
    path = commands.add_parser(
        "addon-path",
        help='print the mitmdump script\'s path: mitmdump -s "$(claimroute addon-path)" ...',
    )
    path.set_defaults(run=_addon_path)
    schema = commands.add_parser("schema", help="print the JSON Schema of a policy or scenario")
    schema.add_argument("kind", choices=SCHEMAS)
    schema.set_defaults(run=_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `claimroute` console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _DELEGATED:
        name, rest = args_list[0], args_list[1:]
        module = importlib.import_module(_DELEGATED[name][0])
        if name == "scenario":
            return module.main(rest, prog="claimroute scenario")
        return module.main([name, *rest], prog="claimroute")
    parser = build_parser()
    args, extra = parser.parse_known_args(args_list)
    if extra and not getattr(args, "extra_allowed", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.run(args, extra)


if __name__ == "__main__":
    sys.exit(main())
