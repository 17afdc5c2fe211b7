"""`claimroute proxy --workers N POLICY`: N proxy processes behind HAProxy on one address.

One mitmproxy process serves a few hundred requests a second on one core; this runs N of them
(the lean gateway profile unless `--profile mitmdump`), each on a loopback port of its own, and
HAProxy in TCP mode on the listen address (`--listen-host`/`--listen-port`, `-p`,
`--set listen_host=/listen_port=` or CONFDIR/config.yaml, read as mitmproxy reads them),
health-checking them. Only modes a TCP frontend can carry are accepted (`check_modes`).

- Every worker runs the same policy file and polls it itself, so a policy change reaches every
  worker (each logs its own reload). Routing is a pure function of the token and the policy (the
  published bucket formula), so every worker sends a user to the same cohort.
- A worker that dies is restarted on its port (after a pause that grows if it keeps dying);
  meanwhile HAProxy's health check takes it out and `option redispatch` sends new connections to
  the others. Connections the dead worker held are lost, as they would be with one process.
- SIGINT/SIGTERM stops HAProxy and every worker (SIGTERM, then SIGKILL after 10 s); each child
  also gets SIGTERM from the kernel if this supervisor dies (Linux), so none is left behind.
- Every child's output is forwarded, each line prefixed `[worker N]` or `[haproxy]`, except the
  workers' "client connect/disconnect" lines (every connection is HAProxy's, one a second per
  worker is its health check); the
  workers' own ready lines are renamed, and the one `claimroute ready: listening on HOST:PORT`
  line (HAProxy's address) is printed once every worker is ready and HAProxy accepts connections.
- `claimroute_metrics=PORT` gives worker N the port PORT+N-1 (each process has its own metrics).

Start errors (a bad policy, an option the profile lacks, a port in use) exit 1 with the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claimroute_tools.procutil import die_with_parent
from claimroute_tools.proxy.haproxy import (
    BALANCES,
    INSTALL_HINT,
    Backend,
    find_haproxy,
    render_config,
)

READY_TIMEOUT = 90.0  # a worker's start, on a busy machine
STOP_TIMEOUT = 10.0
RESTART_PAUSES = (0.5, 1.0, 2.0, 5.0, 10.0)  # seconds, by how often the worker died lately
STABLE_AFTER = 30.0  # a worker up this long has its restart pause reset
WORKER_READY = b"claimroute ready: listening on"
_CONNECTION_NOISE = b"] client "  # mitmproxy's "client connect"/"client disconnect" lines
LOOPBACK = "127.0.0.1"


def _say(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def free_port(host: str = LOOPBACK) -> int:
    """A port the OS reports free on `host` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ListenSpec:
    """The listen address pulled out of the proxy options, and the options left."""

    host: str = ""
    port: int = 8080
    rest: list[str] = field(default_factory=list)
    metrics: str | None = None
    # mitmproxy's defaults; HAProxy applies them to the real client address (haproxy.py).
    block_global: bool = True
    block_private: bool = False


_LISTEN_FLAGS = ("--listen-host", "--listen-port", "-p")
_SET_KEYS_TAKEN = ("listen_host", "listen_port", "claimroute_metrics")
# mitmproxy modes HAProxy's TCP frontend can carry: the client's first bytes name the target (or
# the mode has a fixed one). Transparent needs the original destination, which HAProxy's
# connection to the worker no longer has; wireguard, dns, local and udp-based reverse modes are
# not TCP streams on the listen port.
_TCP_MODES = ("regular", "upstream", "socks5", "reverse")
_UDP_REVERSE_SCHEMES = ("dns", "udp", "dtls", "quic", "http3")


class _OptionLoader:
    """What an addon's `load(loader)` needs to declare its options on a bare Options."""

    def __init__(self, opts: Any) -> None:
        self.opts = opts

    def add_option(self, name: str, typespec: Any, default: Any, help: str,
                   choices: Sequence[str] | None = None) -> None:  # fmt: skip
        self.opts.add_option(name, typespec, default, help, choices)


def proxy_options(args: Sequence[str], profile: str = "gateway") -> Any:
    """The option values one proxy process would end with, read the way mitmproxy reads them
    (mitmproxy/tools/main.py): its own parser for the profile (flags, `--set` in every
    spelling), then CONFDIR/config.yaml, then the flags again. Only mitmproxy's core and Block
    options are declared; every other `--set` lands in `.deferred`, flags of other addons are
    skipped. A bad value is a usage error (SystemExit with mitmproxy's message)."""
    from mitmproxy import exceptions, options, optmanager
    from mitmproxy.addons import block
    from mitmproxy.tools import cmdline

    opts = options.Options()
    block.Block().load(_OptionLoader(opts))
    if profile == "gateway":
        from claimroute_tools.proxy.gateway import make_parser

        parser = make_parser(opts)
    else:
        parser = cmdline.mitmdump(opts)
    namespace, _ = parser.parse_known_args(list(args))
    try:
        opts.set(*namespace.setoptions, defer=True)
        optmanager.load_paths(
            opts,
            os.path.join(opts.confdir, "config.yaml"),
            os.path.join(opts.confdir, "config.yml"),
        )
        given = {k: v for k, v in vars(namespace).items() if k in opts and v is not None}
        opts.update(**given)
    except exceptions.OptionsError as exc:
        raise SystemExit(f"claimroute proxy: {exc}") from None
    return opts


def check_modes(modes: Sequence[str]) -> None:
    """SystemExit unless every mode is one HAProxy's TCP frontend can carry to a worker, on
    the shared listen address."""
    from mitmproxy.proxy.mode_specs import ProxyMode

    for spec in modes:
        try:
            mode = ProxyMode.parse(spec)
        except ValueError as exc:
            raise SystemExit(f"claimroute proxy: --mode {spec}: {exc}") from None
        if mode.custom_listen_port is not None or mode.custom_listen_host is not None:
            # A mode's own @PORT would have every worker bind that port: one address only.
            raise SystemExit(
                "claimroute proxy --workers: a --mode with its own @PORT is not supported; "
                "use --listen-port"
            )
        scheme = getattr(mode, "scheme", "") if mode.type_name == "reverse" else ""
        # reverse:https also listens on UDP (HTTP/3); HAProxy carries its TCP side only.
        if mode.type_name not in _TCP_MODES or scheme in _UDP_REVERSE_SCHEMES:
            raise SystemExit(
                f"claimroute proxy --workers: --mode {spec} cannot run behind HAProxy's TCP "
                "frontend (transparent needs the original destination; wireguard, local, dns "
                "and UDP modes are not TCP on the listen port); --workers supports regular, "
                "upstream:, socks5 and reverse: to a TCP/HTTP/TLS server. Run one proxy "
                "without --workers for this mode."
            )


def _strip_listen_options(args: Sequence[str]) -> list[str]:
    """The options minus the listen address and metrics in every spelling (the workers get
    their own, appended after these, which would win anyway)."""
    items = list(args)
    rest: list[str] = []
    index = 0
    while index < len(items):
        item = items[index]
        name, eq, value = item.partition("=")
        if name in _LISTEN_FLAGS:
            index += 1 if eq else 2
            continue
        if item.startswith("-p") and item[2:].isdigit():  # argparse's -p8080
            index += 1
            continue
        if name == "--set":
            key = value if eq else (items[index + 1] if index + 1 < len(items) else "")
            if key.partition("=")[0] in _SET_KEYS_TAKEN:
                index += 1 if eq else 2
                continue
        rest.append(item)
        index += 1
    return rest


def split_listen_options(args: Sequence[str], profile: str = "gateway") -> ListenSpec:
    """The listen address, metrics and Block options the workers' options add up to (read as
    mitmproxy reads them: every `--set` spelling, CONFDIR/config.yaml), and the options to pass
    on to the workers: the user's, minus the listen address. HAProxy listens there, not the
    workers. Refuses (SystemExit) a mode HAProxy cannot carry."""
    opts = proxy_options(args, profile)
    check_modes(opts.mode)
    metrics = opts.deferred.get("claimroute_metrics")
    if isinstance(getattr(metrics, "val", None), list):  # a deferred `--set`: its strings
        metrics = metrics.val[-1] if metrics.val else None
    return ListenSpec(
        host=opts.listen_host,
        port=8080 if opts.listen_port is None else _port(str(opts.listen_port), "listen_port"),
        rest=_strip_listen_options(args),
        metrics=str(metrics) if metrics not in (None, "") else None,
        block_global=bool(opts.block_global),
        block_private=bool(opts.block_private),
    )


def _port(value: str, what: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise SystemExit(f"claimroute proxy: {what}: not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise SystemExit(f"claimroute proxy: {what}: port {port} out of range")
    return port


def worker_metrics(spec: str | None, index: int) -> str | None:
    """Worker `index`'s (1-based) metrics address: the port plus index - 1 (port 0: each
    worker's own port picked by the OS, as for one process)."""
    if not spec:
        return None
    host, _, port = spec.rpartition(":")
    base = _port(port, "claimroute_metrics")
    chosen = base + index - 1 if base else 0
    return f"{host}:{chosen}" if host else str(chosen)


class Child:
    """One child process with its output forwarded under a prefix."""

    def __init__(self, label: str, command: list[str]) -> None:
        self.label = label
        self.command = command
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        self.ready = asyncio.Event()
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # a worker's lines as they come
            preexec_fn=die_with_parent(),  # SIGTERM when the supervisor dies
            # Its own session: Ctrl-C in a terminal reaches the supervisor only, which then
            # stops HAProxy and the workers itself (no worker "dies" and gets restarted).
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        self._pump = asyncio.create_task(self._forward(self.proc))

    async def _forward(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            if _CONNECTION_NOISE in raw:
                continue  # every connection comes from HAProxy, health checks included
            if WORKER_READY in raw:
                self.ready.set()
                # Renamed: the supervisor's own ready line names the address clients use.
                raw = raw.replace(b"claimroute ready:", b"claimroute worker ready:")
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            _say(f"[{self.label}] {line}")

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 5)


class Supervisor:
    """The workers, HAProxy, restarts and shutdown."""

    def __init__(
        self,
        policy: Path,
        count: int,
        profile: str,
        proxy_args: Sequence[str],
        *,
        balance: str = "roundrobin",
    ) -> None:
        from claimroute_tools.cli import proxy_command  # the command of one `claimroute proxy`

        self.spec = split_listen_options(proxy_args, profile)
        self.count = count
        self.balance = balance
        self.ports = [free_port() for _ in range(count)]
        self.workers: list[Child] = []
        for index, port in enumerate(self.ports, 1):
            args = [*self.spec.rest, "--listen-host", LOOPBACK, "--listen-port", str(port)]
            metrics = worker_metrics(self.spec.metrics, index)
            if metrics:
                args += ["--set", f"claimroute_metrics={metrics}"]
            self.workers.append(Child(f"worker {index}", proxy_command(policy, profile, args)))
        self.haproxy: Child | None = None
        self.listen_port = self.spec.port or free_port(self.spec.host or LOOPBACK)
        self._stopping = asyncio.Event()
        self._deaths: dict[int, list[float]] = {i: [] for i in range(count)}

    async def _start_worker(self, index: int) -> None:
        worker = self.workers[index]
        await worker.start()
        assert worker.proc is not None
        ready = asyncio.create_task(worker.ready.wait())
        exited = asyncio.create_task(worker.proc.wait())
        done, _ = await asyncio.wait({ready, exited}, timeout=READY_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        ready.cancel()
        exited.cancel()
        if not worker.ready.is_set():
            await worker.stop()
            why = "exited" if exited in done else f"was not ready after {READY_TIMEOUT:.0f}s"
            raise StartError(f"{worker.label} {why} (exit code {worker.proc.returncode})")

    async def start(self, config_dir: Path) -> None:
        haproxy = find_haproxy()
        if haproxy is None:
            raise StartError(INSTALL_HINT)
        # The first worker alone: it creates the CA in the shared confdir; the others read it.
        await self._start_worker(0)
        await asyncio.gather(*(self._start_worker(i) for i in range(1, self.count)))
        config = config_dir / "haproxy.cfg"
        backends = [Backend(LOOPBACK, port) for port in self.ports]
        config.write_text(render_config(self.spec.host, self.listen_port, backends,
                                        balance=self.balance,
                                        block_global=self.spec.block_global,
                                        block_private=self.spec.block_private))  # fmt: skip
        self.haproxy = Child("haproxy", [str(haproxy), "-db", "-f", str(config)])
        await self.haproxy.start()
        await self._await_listening()
        host = self.spec.host or "*"
        _say(
            f"claimroute ready: listening on {host}:{self.listen_port} "
            f"(HAProxy, {self.count} workers: {', '.join(map(str, self.ports))}; "
            f"pids {', '.join(str(w.pid) for w in self.workers)})"
        )

    async def _await_listening(self) -> None:
        """HAProxy accepts connections on the listen address, or StartError."""
        assert self.haproxy is not None and self.haproxy.proc is not None
        host = self.spec.host if self.spec.host not in ("", "0.0.0.0", "::") else LOOPBACK
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.haproxy.proc.returncode is not None:
                break
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(host, self.listen_port)
                writer.close()
                return
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)  # let its last output through
        raise StartError(f"HAProxy did not start listening on {host}:{self.listen_port}")

    def _pause_before_restart(self, index: int) -> float:
        now = time.monotonic()
        recent = [t for t in self._deaths[index] if now - t < 300]
        recent.append(now)
        self._deaths[index] = recent
        return RESTART_PAUSES[min(len(recent), len(RESTART_PAUSES)) - 1]

    async def _watch_worker(self, index: int) -> None:
        worker = self.workers[index]
        while not self._stopping.is_set():
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - worker.started_at > STABLE_AFTER:
                self._deaths[index].clear()
            pause = self._pause_before_restart(index)
            _say(f"claimroute: {worker.label} (pid {worker.pid}) exited with {code}; "
                 f"restarting in {pause:.1f}s")  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
            if self._stopping.is_set():
                return
            try:
                await self._start_worker(index)
            except StartError as exc:
                _say(f"claimroute: {exc}; trying again")
                continue
            _say(f"claimroute: {worker.label} restarted (pid {worker.pid})")

    async def serve(self) -> int:
        """Until a signal (exit 0) or HAProxy's death (exit 1)."""
        assert self.haproxy is not None and self.haproxy.proc is not None
        watchers = [asyncio.create_task(self._watch_worker(i)) for i in range(self.count)]
        haproxy_exit = asyncio.create_task(self.haproxy.proc.wait())
        stop = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({haproxy_exit, stop}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if not self._stopping.is_set():
            _say(f"claimroute: HAProxy exited with {self.haproxy.proc.returncode}; stopping")
            code = 1
        self._stopping.set()
        for task in (*watchers, haproxy_exit, stop):
            task.cancel()
        return code

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop_all(self) -> None:
        self._stopping.set()
        children = [c for c in (self.haproxy, *self.workers) if c is not None]
        await asyncio.gather(*(c.stop() for c in children), return_exceptions=True)


class StartError(RuntimeError):
    """The worker set could not start; the message says why."""


async def _run(supervisor: Supervisor) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.request_stop)
    with tempfile.TemporaryDirectory(prefix="claimroute-haproxy-") as folder:
        try:
            start = asyncio.create_task(supervisor.start(Path(folder)))
            stop = asyncio.create_task(supervisor._stopping.wait())
            await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not start.done():  # a signal during startup
                start.cancel()
                with contextlib.suppress(asyncio.CancelledError, StartError):
                    await start
                return 0
            stop.cancel()
            start.result()  # raises StartError
            code = await supervisor.serve()
        except StartError as exc:
            print(f"claimroute proxy --workers: {exc}", file=sys.stderr)
            code = 1
        finally:
            await supervisor.stop_all()
        _say("claimroute: all workers and HAProxy stopped")
        return code


def main(
    policy: Path,
    count: int,
    profile: str = "gateway",
    proxy_args: Sequence[str] = (),
    balance: str = "roundrobin",
) -> int:
    """Run the worker set until SIGINT/SIGTERM; the exit code."""
    if count < 1:
        print("claimroute proxy: --workers must be at least 1", file=sys.stderr)
        return 2
    if balance not in BALANCES:
        print(f"claimroute proxy: --balance must be one of {', '.join(BALANCES)}", file=sys.stderr)
        return 2
    if find_haproxy() is None:
        print(f"claimroute proxy --workers: {INSTALL_HINT}", file=sys.stderr)
        return 1
    supervisor = Supervisor(policy, count, profile, proxy_args, balance=balance)
    return asyncio.run(_run(supervisor))
