"""The record of each decision: on the flow (metadata, comment) and as a JSON line in a file.

A line never holds a token: no query string, and the request id is never read from a header
that may carry a credential.
"""

from __future__ import annotations

import json
import time
from typing import IO, Any

from mitmproxy import http

from claimroute.mitm.flowedit import strip_key
from claimroute.pipeline.decide import Decision
from claimroute.policy.model import Policy

DEFAULT_REQUEST_ID_HEADER = "x-request-id"  # Envoy's and Gloo's request id
MAX_REQUEST_ID_CHARS = 200  # a client chooses it: the log line stays bounded
MAX_LOG_URL_CHARS = 1000  # the decision log's url (scheme, host, path; never the query)
_CREDENTIAL_KEYS = frozenset({b"authorization", b"proxy-authorization", b"cookie"})  # strip_key


def comment(decision: Decision) -> str:
    """The one-line summary shown on the flow (mitmweb, `flow.comment`)."""
    parts = [f"claimroute: {decision.outcome}"]
    if decision.provider:
        parts.append(f"{decision.provider}/{decision.sub or '-'}")
    if decision.rejection is not None:
        parts.append(f"{decision.rejection.status} {decision.reason}")
    if decision.rbac is not None and decision.rbac.dry_run and not decision.rbac.allowed:
        parts.append("(rbac dry-run: would deny)")
    if decision.route is not None:
        parts.append(f"-> {decision.route.name} {decision.route.upstream}")
    return " ".join(parts)


def request_id(request: http.Request, policy: Policy, header: str | None) -> str | None:
    """The request id header's value for the decision log, or None.

    Never a header that may carry a credential (the log never holds a token): not
    `authorization`, `proxy-authorization` or `cookie`, nor any header that is a token
    location of `policy`, the policy this request was decided with (a reload may have
    changed the locations since), with names compared as identity headers are stripped
    (case-insensitive, `_` read as `-`).
    """
    if header is None:
        return None
    key = strip_key(header.strip())
    if key in _CREDENTIAL_KEYS:
        return None
    for location, _ in policy.token_locations.header_prefixes:
        if key == strip_key(location):
            return None
    value = request.headers.get(header)
    return value[:MAX_REQUEST_ID_CHARS] if value is not None else None


class DecisionLog:
    """The `claimroute_log` file: one JSON line per decision, appended, line-buffered."""

    def __init__(self) -> None:
        self.file: IO[str] | None = None

    def open(self, path: str | None) -> None:
        """Append to `path` from now on (None or empty: no file). Raises OSError."""
        self.close()
        if path:
            self.file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        """Stop writing."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def write(
        self, flow: http.HTTPFlow, record: dict[str, Any], policy: Policy, header: str | None
    ) -> None:
        """One line for this flow's decision (nothing when no file is open)."""
        if self.file is None:
            return
        url = flow.request.pretty_url.split("?", 1)[0]
        if len(url) > MAX_LOG_URL_CHARS:  # the client chooses the path: bounded
            url = url[:MAX_LOG_URL_CHARS] + "..."
        line = {"ts": round(time.time(), 3), "id": flow.id, "method": flow.request.method,
                "url": url, **record}  # fmt: skip
        found = request_id(flow.request, policy, header)
        if found is not None:
            line["request_id"] = found
        self.file.write(json.dumps(line) + "\n")
