"""Policy load time: a generated policy of N rules (RBAC policies and routes with matchers).

`python -m claimroute_bench --only policy` runs only this; `python -m
claimroute_bench.policyload [--rules N]` prints the figures as JSON. The time is the whole
`load_policy` (read, YAML, validation, fingerprint), which is what a hot reload costs in its
worker thread; the median of several loads is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from claimroute.policy.load import load_policy


def policy_text(rules: int) -> str:
    """A valid policy with `rules` rules: half RBAC policies, half routes, each with matchers."""
    out = [
        "version: 1",
        "providers:",
        "  corp:",
        "    issuer: https://idp.corp.example",
        "    jwks: {url: 'http://127.0.0.1:9/jwks.json'}",
        "    claims_to_headers:",
        "      - {claim: sub, header: x-user}",
        "rbac:",
        "  mode: enforce",
        "  default_action: deny",
        "  policies:",
    ]
    half = rules // 2
    for i in range(half):
        out += [
            f"    - name: policy-{i}",
            "      action: allow",
            "      principals:",
            "        - provider: corp",
            "          claims:",
            f"            sub: user-{i}",
            f"            groups: {{contains: team-{i % 17}}}",
            "            email_verified: true",
            "      permissions:",
            "        methods: [GET, HEAD]",
            f"        paths: [{{prefix: /api/r{i}}}, {{regex: '/api/x{i}/[a-z]+'}}]",
            f"        hosts: [svc{i}.internal]",
        ]
    out.append("routes:")
    for i in range(rules - half):
        out += [
            f"  - name: route-{i}",
            "    match:",
            f"      claims: {{org: org-{i}, level: {{gte: {i % 5}}}}}",
            f"      headers: {{x-tenant: {{prefix: t{i}}}}}",
            f"      paths: [{{prefix: /r{i}}}]",
            "      methods: [GET, POST]",
            "      authenticated: true",
            f"    upstream: http://127.0.0.1:{8000 + i % 1000}",
        ]
    return "\n".join(out) + "\n"


def run(*, rules: int = 1000, repeats: int = 5) -> dict[str, Any]:
    """Load a generated `rules`-rule policy `repeats` times; returns a JSON-able dict."""
    text = policy_text(rules)
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "policy.yaml"
        path.write_text(text)
        for _ in range(repeats):
            started = time.perf_counter()
            policy = load_policy(path)
            samples.append((time.perf_counter() - started) * 1000)
    assert policy.rbac is not None and len(policy.routes) == rules - rules // 2
    return {
        "config": {"rules": rules, "repeats": repeats, "bytes": len(text.encode())},
        "median_ms": round(statistics.median(samples), 1),
        "min_ms": round(min(samples), 1),
        "max_ms": round(max(samples), 1),
        "ms_per_rule": round(statistics.median(samples) / rules, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m claimroute_bench.policyload")
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(run(rules=args.rules, repeats=args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
