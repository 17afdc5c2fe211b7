"""Run a REAL mitmdump subprocess with the claimroute addon and wait until it is ready.

Readiness is the addon's own log line (`claimroute ready: listening on HOST:PORT`, logged from
`running()`), not the port: mitmdump keeps serving without the addon when a script fails to
load, so only that line proves the addon is active. Every process gets an
isolated confdir, since `confdir/config.yaml` would override our `--set` values.

`profile="gateway"` runs the lean gateway master (`claimroute_tools.proxy.gateway`, the addon
built in) instead of mitmdump; `CLAIMROUTE_LAB_PROFILE=gateway` makes it the default for every
process that runs the claimroute addon (the test suite under the lean profile).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

import claimroute

log = logging.getLogger(__name__)

# The script shipped inside the package (`claimroute addon-path`), so that the lab runs from an
# installed wheel as from a checkout; `addons/claimroute_addon.py` is the checkout's own entry.
ADDON_SCRIPT: Path = Path(claimroute.__file__).resolve().parent / "mitmdump_script.py"
CHECKOUT_SCRIPT: Path = Path(claimroute.__file__).resolve().parent.parent / "claimroute_addon.py"
MITMDUMP: Path = Path(sys.executable).parent / "mitmdump"
READY_RE = re.compile(r"claimroute ready: listening on (\S+):(\d+)")
PROFILES = ("mitmdump", "gateway")
PROFILE_ENV = "CLAIMROUTE_LAB_PROFILE"
GATEWAY_MODULE = "claimroute_tools.proxy.gateway"

type OptionValue = str | int | bool | Sequence[str]


class MitmdumpFailed(RuntimeError):
    """mitmdump exited, timed out or misbehaved; the message has the exit code and output."""

    def __init__(self, reason: str, *, returncode: int | None, output: str, command: list[str]):
        self.reason = reason
        self.returncode = returncode
        self.output = output
        self.command = command
        super().__init__(
            f"{reason} (exit code {returncode})\n"
            f"command: {subprocess.list2cmdline(command)}\n"
            f"--- mitmdump output ---\n{output}--- end of output ---"
        )


def _set_args(options: Mapping[str, OptionValue]) -> list[str]:
    args: list[str] = []
    for key, value in options.items():
        if isinstance(value, bool):
            values = ["true" if value else "false"]
        elif isinstance(value, str | int):
            values = [str(value)]
        elif isinstance(value, Sequence):
            values = [str(v) for v in value]  # a Sequence[str] option: repeated --set accumulates
        else:
            # mitmdump cannot parse a float (or anything else) given with `--set`: fail here
            raise TypeError(
                f"option {key}={value!r}: {type(value).__name__} cannot be passed with --set "
                "(use str, int, bool or a list of str)"
            )
        args += [a for v in values for a in ("--set", f"{key}={v}")]
    return args


def default_profile(script: Path, extra_args: Sequence[str] = ()) -> str:
    """The profile when none is given: `CLAIMROUTE_LAB_PROFILE` for a process that runs the
    claimroute addon (as its script, or as a later `-s`), else mitmdump (a bare or stand-in
    script needs mitmdump's script loading with no addon built in)."""
    wanted = os.environ.get(PROFILE_ENV, "").strip() or "mitmdump"
    if wanted not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={wanted!r}: expected one of {', '.join(PROFILES)}")
    addon_scripts = {str(ADDON_SCRIPT), str(CHECKOUT_SCRIPT)}
    runs_addon = str(Path(script).resolve()) in addon_scripts or any(
        a in addon_scripts for a in extra_args
    )
    return wanted if runs_addon else "mitmdump"


class MitmdumpProcess:
    """A mitmdump subprocess running an addon script, with its output captured.

    Output (stdout and stderr merged) is drained by a thread into `.output` so the pipe never
    fills. `start()` waits for the ready line and sets `.port`/`.proxy_url`; `stop()` sends
    SIGTERM, then SIGKILL. Usable as a (sync or async) context manager.

    `profile`: "mitmdump" (mitmdump -s SCRIPT) or "gateway" (the lean master with the addon
    built in; another `script` is loaded with -s before it); default `default_profile()`.
    """

    def __init__(
        self,
        policy_path: str | os.PathLike[str] | None,
        *,
        mode: str = "regular",
        options: Mapping[str, OptionValue] | None = None,
        confdir: Path | None = None,
        script: Path = ADDON_SCRIPT,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        profile: str | None = None,
    ) -> None:
        if profile is None:
            profile = default_profile(Path(script), extra_args)
        if profile not in PROFILES:
            raise ValueError(f"profile {profile!r}: expected one of {', '.join(PROFILES)}")
        self.profile = profile
        self.policy_path = Path(policy_path) if policy_path is not None else None
        self.mode = mode
        self.options = dict(options or {})
        set_args = _set_args(self.options)  # before mkdtemp, so a bad option leaks nothing
        self.script = Path(script)
        self._own_confdir = confdir is None
        self.confdir = (
            Path(tempfile.mkdtemp(prefix="claimroute-mitm-")) if confdir is None else confdir
        )
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        # Without bytecode caches every start recompiles mitmproxy (~2.5 s); let it cache.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.cwd = cwd
        if profile == "gateway":
            # The addon is built in; any other script (e.g. a fault injector) still loads first.
            runs_addon = str(self.script.resolve()) in {str(ADDON_SCRIPT), str(CHECKOUT_SCRIPT)}
            head = [sys.executable, "-m", GATEWAY_MODULE]
            head += [] if runs_addon else ["-s", str(self.script)]
            display: list[str] = []  # the gateway has no flow display to quiet
        else:
            head = [str(MITMDUMP), "-s", str(self.script)]
            display = ["--set", "flow_detail=0"]
        self.command: list[str] = [
            *head,
            *(["--set", f"claimroute={self.policy_path}"] if self.policy_path else []),
            "--listen-host",
            "127.0.0.1",
            "-p",
            "0",
            "--mode",
            mode,
            "--set",
            f"confdir={self.confdir}",
            "--set",
            "termlog_verbosity=info",
            *display,
            *set_args,
            *extra_args,
        ]
        self.host: str | None = None
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._drainer: threading.Thread | None = None
        self._eof = False

    def __repr__(self) -> str:
        return f"MitmdumpProcess(pid={self.pid}, proxy_url={self.proxy_url}, rc={self.returncode})"

    # -- state ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Process id once started."""
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """Exit code, or None while running (or never started)."""
        return self._proc.poll() if self._proc else None

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def proxy_url(self) -> str | None:
        """`http://127.0.0.1:PORT` once ready."""
        return f"http://127.0.0.1:{self.port}" if self.port is not None else None

    @property
    def ca_cert(self) -> Path:
        """The CA certificate mitmdump generates in its confdir (trust it for HTTPS tests)."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def output(self) -> str:
        """Everything mitmdump printed so far (stdout and stderr merged)."""
        with self._cond:
            return "".join(self._lines)

    @property
    def lines(self) -> list[str]:
        """Output lines so far (with their newlines)."""
        with self._cond:
            return list(self._lines)

    def mark(self) -> int:
        """The current line count: pass it as `since=` to `wait_for_output` to avoid races."""
        with self._cond:
            return len(self._lines)

    # -- lifecycle --------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the subprocess and the drain thread without waiting for readiness."""
        if self._proc is not None:
            raise RuntimeError("mitmdump already started")
        log.info("starting %s", subprocess.list2cmdline(self.command))
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
        )
        self._drainer = threading.Thread(
            target=self._drain, args=(self._proc,), name=f"mitmdump-{self._proc.pid}", daemon=True
        )
        self._drainer.start()

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            log.debug("mitmdump[%d] %s", proc.pid, line.rstrip())
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        proc.stdout.close()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def start(self, timeout: float = 30) -> Self:
        """Spawn mitmdump and wait for the addon's ready line; raise `MitmdumpFailed` if the
        process exits first or `timeout` passes (the process is then stopped)."""
        self.spawn()
        try:
            match = self.wait_for_output(READY_RE, timeout, since=0)
        except MitmdumpFailed as exc:
            self.stop()
            raise MitmdumpFailed(
                f"mitmdump did not become ready: {exc.reason}",
                returncode=self.returncode,
                output=self.output,
                command=self.command,
            ) from None
        self.host, self.port = match.group(1), int(match.group(2))
        log.info("mitmdump pid %s ready at %s", self.pid, self.proxy_url)
        return self

    def wait_for_output(
        self, pattern: str | re.Pattern[str], timeout: float = 10, *, since: int | None = None
    ) -> re.Match[str]:
        """Wait for an output line matching `pattern` among lines from index `since` on
        (default: only lines printed after this call). Raise `MitmdumpFailed` on timeout or
        if the process exits without printing it."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            index = len(self._lines) if since is None else since
            while True:
                while index < len(self._lines):
                    match = regex.search(self._lines[index])
                    index += 1
                    if match:
                        return match
                drained = self._eof or self._proc is None
                if drained:
                    reason = f"mitmdump exited without printing {regex.pattern!r}"
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = f"timed out after {timeout}s waiting for {regex.pattern!r}"
                    break
                self._cond.wait(min(remaining, 0.5))
        if drained and self._proc is not None:
            self._proc.wait()
        raise MitmdumpFailed(
            reason, returncode=self.returncode, output=self.output, command=self.command
        )

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit by itself and for its output to be drained."""
        if self._proc is None:
            raise RuntimeError("mitmdump was never started")
        rc = self._proc.wait(timeout)
        if self._drainer is not None:
            self._drainer.join(5)
        return rc

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code. Idempotent."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("mitmdump pid %d ignored SIGTERM; killing", proc.pid)
                    proc.kill()
                    proc.wait()
            if self._drainer is not None:
                self._drainer.join(5)
        if self._own_confdir:
            shutil.rmtree(self.confdir, ignore_errors=True)
        return proc.returncode if proc is not None else None

    async def astart(self, timeout: float = 30) -> Self:
        """`start()` in a worker thread."""
        return await asyncio.to_thread(self.start, timeout)

    async def astop(self, timeout: float = 10) -> int | None:
        """`stop()` in a worker thread."""
        return await asyncio.to_thread(self.stop, timeout)

    async def await_output(
        self, pattern: str | re.Pattern[str], timeout: float = 10, *, since: int | None = None
    ) -> re.Match[str]:
        """`wait_for_output()` in a worker thread (`since` defaults to lines printed from now)."""
        start = self.mark() if since is None else since
        return await asyncio.to_thread(self.wait_for_output, pattern, timeout, since=start)

    def __enter__(self) -> Self:
        return self if self._proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self if self._proc is not None else await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()


def run_mitmdump_until_exit(
    policy_path: str | os.PathLike[str] | None, timeout: float = 30, **kw: object
) -> tuple[int, str]:
    """Run mitmdump expecting it to refuse to start; return (returncode, output).

    Raises `MitmdumpFailed` if it becomes ready instead (the process is stopped at once) or is
    still running after `timeout`. `kw` goes to `MitmdumpProcess`.
    """
    proc = MitmdumpProcess(policy_path, **kw)  # type: ignore[arg-type]
    proc.spawn()
    try:
        proc.wait_for_output(READY_RE, timeout, since=0)
    except MitmdumpFailed as exc:
        if proc.alive:  # timed out while still running
            proc.stop()
            raise MitmdumpFailed(
                f"mitmdump neither became ready nor exited: {exc.reason}",
                returncode=proc.returncode,
                output=proc.output,
                command=proc.command,
            ) from None
        rc = proc.wait()
        proc.stop()
        return rc, proc.output
    proc.stop()
    raise MitmdumpFailed(
        "mitmdump started although it was expected to refuse",
        returncode=proc.returncode,
        output=proc.output,
        command=proc.command,
    )
