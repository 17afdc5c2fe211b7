"""Child-process helpers shared by the tools that start long-lived subprocesses."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` that has the kernel send `sig` to the child when its parent dies.

    Linux only (prctl PR_SET_PDEATHSIG); elsewhere the child is left as it is. Children that run
    in their own session (so Ctrl-C reaches the parent only) are otherwise not tied to the
    parent at all: a SIGKILLed parent (OOM killer, CI timeout) would leave them running.
    Create it in the parent (it records the parent's pid): a parent that dies between the fork
    and the prctl call would not signal the child, so the child checks and exits then.
    """
    parent = os.getpid()

    def set_pdeathsig() -> None:
        with contextlib.suppress(Exception):  # no libc/prctl (not Linux): nothing to tie
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before the prctl: nobody will signal
            os._exit(1)

    return set_pdeathsig
