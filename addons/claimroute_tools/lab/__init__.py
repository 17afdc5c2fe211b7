"""Lab toolkit: real test infrastructure for end-to-end tests and the scenario runner.

Identity providers that mint valid and tampered JWTs (`TestIssuer`), a JWKS/discovery server
with failure modes (`JwksServer`), echo upstreams that record what reached them
(`EchoUpstream`), an OAuth 2.0 token endpoint issuing JWTs (`TokenEndpoint`), and a harness
running a real mitmdump with the addon (`MitmdumpProcess`, or the lean gateway master with
`profile="gateway"`), and N of them behind HAProxy (`WorkerSetProcess`).
Everything binds 127.0.0.1 on ephemeral ports; nothing is mocked.
"""

from claimroute_tools.lab.echo import EchoUpstream, LoopbackServer, ReceivedRequest
from claimroute_tools.lab.issuer import (
    TAMPERS,
    TestIssuer,
    b64url,
    b64url_decode,
    build_compact,
    split_compact,
)
from claimroute_tools.lab.jwks_server import IssuerControl, JwksServer
from claimroute_tools.lab.mitmdump import (
    ADDON_SCRIPT,
    MitmdumpFailed,
    MitmdumpProcess,
    run_mitmdump_until_exit,
)
from claimroute_tools.lab.token_endpoint import TokenEndpoint
from claimroute_tools.lab.workerset import WorkerSetProcess

__all__ = [
    "ADDON_SCRIPT",
    "TAMPERS",
    "EchoUpstream",
    "IssuerControl",
    "JwksServer",
    "LoopbackServer",
    "MitmdumpFailed",
    "MitmdumpProcess",
    "ReceivedRequest",
    "TestIssuer",
    "TokenEndpoint",
    "WorkerSetProcess",
    "b64url",
    "b64url_decode",
    "build_compact",
    "run_mitmdump_until_exit",
    "split_compact",
]
