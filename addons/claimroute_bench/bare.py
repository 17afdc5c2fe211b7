"""A mitmdump script with no request hooks: bare mitmdump for the benchmark's baseline.

It only logs the same ready line as the addon, so `lab.MitmdumpProcess` can wait for it.
"""

import contextlib
import logging

from mitmproxy import ctx

log = logging.getLogger("claimroute.bench")


class BareReady:
    def running(self) -> None:
        address = "?"
        with contextlib.suppress(Exception):
            addrs = ctx.master.addons.get("proxyserver").listen_addrs()
            if addrs:
                address = f"{addrs[0][0]}:{addrs[0][1]}"
        log.info("claimroute ready: listening on %s (bare mitmdump, no addon)", address)


addons = [BareReady()]
