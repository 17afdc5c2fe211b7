"""The realistic setup every benchmark shares: one RS256 provider and its 1,000 users.

The policy has claims_to_headers, three RBAC policies (a deny and two allows), an org route and
a sticky split, so a request goes through every stage. Every route points at the one upstream,
so the addon's routing work is measured without adding upstream connections.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from claimroute_tools.lab import TestIssuer

ISSUER = "https://corp.bench.test"
AUDIENCE = "https://api.bench.test"
REQUEST_PATH = "/api/orders/42"
DEFAULT_USERS = 1_000

POLICY_TEMPLATE = """\
version: 1
providers:
  corp:
    issuer: {issuer}
    audiences: [{audience}]
    algorithms: [{alg}]
    jwks: {jwks}
    claims_to_headers:
      - {{claim: sub, header: x-user}}
      - {{claim: org, header: x-org}}
      - {{claim: roles, header: x-roles}}
rbac:
  mode: enforce
  default_action: deny
  policies:
    - name: no-internal
      action: deny
      permissions: {{paths: [{{prefix: /internal}}]}}
    - name: readers
      action: allow
      principals: [{{provider: corp, claims: {{roles: {{contains: reader}}}}}}]
      permissions: {{methods: [GET, HEAD], paths: [{{prefix: /api/}}]}}
    - name: writers
      action: allow
      principals: [{{provider: corp, claims: {{roles: {{contains: writer}}}}}}]
      permissions: {{methods: [POST, PUT, PATCH, DELETE], paths: [{{regex: "/api/[a-z]+(/.*)?"}}]}}
routes:
  - name: beta-org
    match: {{claims: {{org: beta-corp}}}}
    upstream: {upstream}
  - name: sticky-canary
    match: {{authenticated: true}}
    split:
      salt: bench
      to:
        - {{upstream: "{upstream}", weight: 10}}
        - {{upstream: "{upstream}", weight: 90}}
# revision {revision}
"""


def policy_text(
    upstream: str, jwks: str = "{file: corp.jwks.json}", revision: int = 0, alg: str = "RS256"
) -> str:
    """The benchmark policy; `jwks` is the YAML flow mapping of the provider's `jwks`."""
    return POLICY_TEMPLATE.format(
        issuer=ISSUER, audience=AUDIENCE, jwks=jwks, upstream=upstream, revision=revision, alg=alg
    )


def user_claims(index: int) -> dict[str, object]:
    """User `index`: one in ten is in the beta org, one in four may write."""
    roles = ["reader", "writer"] if index % 4 == 0 else ["reader"]
    return {"org": "beta-corp" if index % 10 == 0 else "acme", "roles": roles}


@dataclass
class Setup:
    """A folder with the policy and the JWKS, the issuer, and one token per user."""

    folder: Path
    issuer: TestIssuer
    tokens: list[str] = field(default_factory=list)

    @property
    def jwks_path(self) -> Path:
        return self.folder / "corp.jwks.json"

    def write_policy(self, upstream: str, *, name: str = "policy.yaml", **kw: object) -> Path:
        path = self.folder / name
        path.write_text(policy_text(upstream, **kw))  # type: ignore[arg-type]
        return path


def make_setup(
    users: int = DEFAULT_USERS,
    *,
    ttl: float = 3600,
    folder: Path | None = None,
    alg: str = "RS256",
) -> Setup:
    """Generate the key, write the JWKS and mint `users` tokens (valid for `ttl` seconds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        issuer = TestIssuer("corp", alg, issuer=ISSUER, audience=AUDIENCE)
    folder = folder or Path(tempfile.mkdtemp(prefix="claimroute-bench-"))
    setup = Setup(folder, issuer)
    issuer.write_jwks(setup.jwks_path)
    now = time.time()
    setup.tokens = [
        issuer.mint(f"user-{i:05d}@corp.bench.test", user_claims(i), ttl=ttl, now=now)
        for i in range(users)
    ]
    return setup
