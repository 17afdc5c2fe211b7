"""`claimroute import gloo|istio FILE...`: translate Gloo Edge or Istio configuration into a
claimroute policy (docs/policy.md, "Importing Gloo and Istio configuration").

The policy is printed (or written with `--out`); whatever the source says that the policy
cannot express is listed on stderr with its file and line, and `--strict` makes that an error.
Exit codes: 0 translated, 2 malformed input, an unknown kind, a missing upstream URL, or (with
`--strict`) anything not translated.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from claimroute.errors import PolicyError
from claimroute_tools.importers.common import (
    ImportFailure,
    Report,
    line_of,
    load_documents,
    parse_upstreams,
    to_yaml,
)

EXIT_OK, EXIT_FAILED = 0, 2


def translate(
    system: str, files: Sequence[str | Path], upstreams: dict[str, str] | None = None
) -> tuple[dict[str, Any], Report]:
    """The policy (as a mapping) and the report for these source files. Raises ImportFailure."""
    from claimroute_tools.importers.gloo import GlooImporter
    from claimroute_tools.importers.istio import IstioImporter

    report = Report()
    importer: GlooImporter | IstioImporter
    if system == "gloo":
        importer = GlooImporter(report, upstreams or {})
    elif system == "istio":
        if upstreams:
            raise ImportFailure("--upstream applies to gloo imports only")
        importer = IstioImporter(report)
    else:
        raise ImportFailure(f"unknown source {system!r}: gloo or istio")
    for path in files:
        for document, loc in load_documents(path):
            importer.add(document, loc)
    return importer.policy(), report


def render(system: str, files: Sequence[str | Path], policy: dict[str, Any]) -> str:
    """The policy as YAML text, with a comment saying where it came from."""
    names = ", ".join(str(f) for f in files)
    header = [
        f"Imported by `claimroute import {system}` from {names}.",
        "Check it with `claimroute check`; docs/policy.md describes every field.",
    ]
    return to_yaml(policy, header)


def check_text(text: str, base: Path) -> None:
    """Load the rendered policy as `claimroute check` would (ImportFailure if it fails)."""
    from claimroute.policy.load import load_policy_text

    try:
        load_policy_text(text, "<imported policy>", base)
    except PolicyError as exc:
        raise ImportFailure(
            f"the translated policy does not load (a bug in the importer): {exc}"
        ) from None


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{prog} import",
        description="Translate Gloo Edge VirtualServices (JWT, RBAC, claim-based routes) or "
        "Istio RequestAuthentication/AuthorizationPolicy into a claimroute policy. What cannot "
        "be expressed is listed on stderr with file and line.",
    )
    parser.add_argument("system", choices=("gloo", "istio"), help="the source format")
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML files (multi-document)")
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="gloo: the URL of a Gloo upstream NAME, of a subset "
        "NAME[key=value], or of a Kubernetes service NAME",
    )
    parser.add_argument("--out", metavar="FILE", help="write the policy here (default: stdout)")
    parser.add_argument(
        "--strict", action="store_true", help="fail (exit 2) when anything is not translated"
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "claimroute") -> int:
    """`claimroute import ...` (argv may start with `import`); returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["import"]:
        args_list = args_list[1:]
    args = build_parser(prog).parse_args(args_list)
    try:
        upstreams = parse_upstreams(args.upstream)
        policy, report = translate(args.system, args.files, upstreams)
        text = render(args.system, args.files, policy)
        out = Path(args.out) if args.out else None
        check_text(text, (out.resolve().parent if out else Path.cwd()))
    except ImportFailure as exc:
        print(f"claimroute import: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for finding in sorted(report.findings, key=lambda f: (f.loc.file, line_of(f.loc) or 0)):
        print(finding, file=sys.stderr)
    if args.strict and report.has_unsupported:
        count = sum(f.unsupported for f in report.findings)
        print(
            f"claimroute import: --strict: {count} item(s) not translated; no policy written",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=out.parent, prefix=f".{out.name}.", delete=False
        ) as handle:
            handle.write(text)
        os.replace(handle.name, out)
    except OSError as exc:
        print(f"claimroute import: cannot write {out}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(f"claimroute import: wrote {out}", file=sys.stderr)
    return EXIT_OK


__all__ = ["main", "render", "translate"]
