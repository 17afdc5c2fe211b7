"""Hot reload of the policy: watch its files, wait until they settle, load, hand back a Policy.

One job: `PolicyReloader.changes()` yields each new valid policy; the addon installs it. Rules:

- The policy file and its local key files are polled (`POLL_SECONDS`). A file's stamp is its
  (mtime, size, inode, ctime); a different stamp is a change.
- Settle: a change is loaded only once the stamps have stayed the same for `SETTLE_SECONDS`
  (seen identical at polls that far apart; while a change is pending the files are polled
  every `SETTLE_POLL_SECONDS`). A writer that saves a file in several writes, or an editor
  that truncates and rewrites, is not read half-way (unless it pauses longer than that between
  writes: replace the file atomically, docs/policy.md).
- Each file is read once (`load_policy`): the policy is parsed from, and fingerprinted on, the
  same bytes, and the stamp recorded is the one taken before the read. An edit that lands while
  a big policy is parsed therefore shows as a change at the next poll and is loaded then.
- Loading runs in a worker thread; a bad file is logged and the last good policy stays (until
  the files change again). Content identical to the policy in force changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from claimroute.config.source import Stamp, file_stamp
from claimroute.errors import PolicyError, log_safe
from claimroute.policy.load import load_policy
from claimroute.policy.model import Policy

log = logging.getLogger("claimroute")

POLL_SECONDS = 1.0
SETTLE_SECONDS = 0.5
SETTLE_POLL_SECONDS = 0.25
# While a policy file is parsed in a worker thread, the loop may wait this long for the GIL at a
# time (Python's default switch interval is 5 ms).
RELOAD_SWITCH_INTERVAL = 0.0005
MAX_ERROR_CHARS = 2000  # a rejected edit's message in the log

Stamps = tuple[Stamp, ...]


class PolicyReloader:
    """Watches one policy file (and the key files of the policy in force) for `changes()`."""

    def __init__(
        self,
        path: str | Path,
        policy: Policy,
        *,
        load: Callable[[Path], Policy] = load_policy,
        clock: Callable[[], float] = time.monotonic,
        poll: float = POLL_SECONDS,
        settle: float = SETTLE_SECONDS,
        settle_poll: float = SETTLE_POLL_SECONDS,
    ) -> None:
        self._load = load
        self._clock = clock
        self.poll_seconds = poll
        self.settle_seconds = settle
        self.settle_poll_seconds = settle_poll
        self.path = Path(path)
        self.policy = policy
        self.files: tuple[Path, ...] = ()
        self.stamps: Stamps = ()  # of `files`, as last loaded (or rejected)
        self._pending: tuple[Stamps, float] | None = None  # stamps first seen, and when
        self.watch(path, policy)

    def watch(self, path: str | Path, policy: Policy) -> None:
        """Follow `policy`, loaded from `path`: its files, with the stamps they had when read."""
        self.path = Path(path)
        self.policy = policy
        known = dict(policy.file_stamps)
        self.files = (self.path, *map(Path, policy.key_files))
        # A policy parsed elsewhere (tests) has no stamps: take them now.
        self.stamps = tuple(known[str(f)] if str(f) in known else file_stamp(f) for f in self.files)
        self._pending = None

    def current_stamps(self) -> Stamps:
        return tuple(file_stamp(f) for f in self.files)

    @property
    def pending(self) -> bool:
        """A change has been seen and is waiting to settle."""
        return self._pending is not None

    def interval(self) -> float:
        """How long to wait before the next poll."""
        return self.settle_poll_seconds if self._pending is not None else self.poll_seconds

    async def poll(self) -> Policy | None:
        """Look at the files once; a new valid policy once a change has settled, else None."""
        stamps = self.current_stamps()
        if stamps == self.stamps:
            self._pending = None  # changed and changed back: nothing to do
            return None
        now = self._clock()
        if self._pending is None or self._pending[0] != stamps:
            self._pending = (stamps, now)  # first sight, or still being written
            return None
        if now - self._pending[1] < self.settle_seconds:
            return None
        self._pending = None
        return await self._reload(stamps)

    async def _reload(self, stamps: Stamps) -> Policy | None:
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, RELOAD_SWITCH_INTERVAL))
        try:
            policy = await asyncio.to_thread(self._load, self.path)
        except PolicyError as exc:
            self.stamps = stamps  # not retried until the files change again
            log.error(
                "claimroute: policy change rejected, keeping the last good one: %s",
                log_safe(str(exc), MAX_ERROR_CHARS),
            )
            return None
        except Exception:
            self.stamps = stamps
            log.exception("claimroute: policy reload failed, keeping the last good one")
            return None
        finally:
            sys.setswitchinterval(switch_interval)
        if policy.fingerprint == self.policy.fingerprint:
            # The same content (rewritten, touched): remember the new stamps, change nothing.
            current = self.policy
            self.watch(self.path, policy)
            self.policy = current
            return None
        self.watch(self.path, policy)
        return policy

    async def changes(self) -> AsyncIterator[Policy]:
        """Poll forever; yield each new valid policy (the caller installs it)."""
        while True:
            await asyncio.sleep(self.interval())
            policy = await self.poll()
            if policy is not None:
                yield policy
