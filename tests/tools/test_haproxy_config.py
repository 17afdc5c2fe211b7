"""HAProxy's configuration for `claimroute proxy --workers` and the listen options it takes."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from claimroute_tools.proxy.haproxy import Backend, find_haproxy, render_config
from claimroute_tools.proxy.workers import split_listen_options, worker_metrics

BACKENDS = [Backend("127.0.0.1", 9001), Backend("127.0.0.1", 9002)]


def test_tcp_frontend_on_the_listen_address_and_a_checked_server_per_worker() -> None:
    text = render_config("127.0.0.1", 8080, BACKENDS, balance="leastconn")
    lines = [line.strip() for line in text.splitlines()]
    assert "mode tcp" in lines
    assert "option redispatch" in lines
    assert "bind 127.0.0.1:8080" in lines
    assert "balance leastconn" in lines
    servers = [line for line in lines if line.startswith("server ")]
    assert servers == [
        "server worker1 127.0.0.1:9001 check inter 1000 fall 2 rise 1",
        "server worker2 127.0.0.1:9002 check inter 1000 fall 2 rise 1",
    ]


def test_every_interface_and_ipv6_addresses() -> None:
    assert "bind *:8080" in render_config("", 8080, BACKENDS)
    assert "bind [::1]:8080" in render_config("::1", 8080, BACKENDS)


@pytest.mark.parametrize(
    ("host", "port", "backends", "balance"),
    [
        ("127.0.0.1", 8080, [], "roundrobin"),
        ("127.0.0.1", 8080, BACKENDS, "random"),
        ("127.0.0.1", 70000, BACKENDS, "roundrobin"),
        ("127.0.0.1", 8080, [Backend("127.0.0.1", 0)], "roundrobin"),
        ("127.0.0.1", 8080, [Backend("a b", 1)], "roundrobin"),
        ("0.0.0.0\n    bind *:1", 8080, BACKENDS, "roundrobin"),
    ],
)
def test_odd_input_is_refused(host, port, backends, balance) -> None:
    with pytest.raises(ValueError):
        render_config(host, port, backends, balance=balance)


@pytest.mark.skipif(find_haproxy() is None, reason="needs haproxy")
def test_haproxy_accepts_the_configuration(tmp_path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_config("127.0.0.1", 18080, BACKENDS))
    haproxy = find_haproxy()
    assert haproxy is not None and shutil.which(str(haproxy))
    done = subprocess.run([str(haproxy), "-c", "-f", str(config)], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_listen_options_go_to_haproxy_and_the_rest_to_the_workers() -> None:
    spec = split_listen_options(
        ["--mode", "reverse:http://127.0.0.1:8000", "--listen-host", "0.0.0.0", "-p", "8443",
         "--set", "claimroute_log=/tmp/d.jsonl"]
    )  # fmt: skip
    assert (spec.host, spec.port) == ("0.0.0.0", 8443)
    assert spec.rest == ["--mode", "reverse:http://127.0.0.1:8000",
                         "--set", "claimroute_log=/tmp/d.jsonl"]  # fmt: skip
    spec = split_listen_options(["--set", "listen_port=9000", "--set", "listen_host=::1",
                                 "--set", "claimroute_metrics=127.0.0.1:9100"])  # fmt: skip
    assert (spec.host, spec.port, spec.rest) == ("::1", 9000, [])
    assert [worker_metrics(spec.metrics, i) for i in (1, 2)] == ["127.0.0.1:9100", "127.0.0.1:9101"]
    assert worker_metrics("127.0.0.1:0", 3) == "127.0.0.1:0"  # the OS picks each port
    assert worker_metrics(None, 1) is None
    assert split_listen_options(["--listen-port=7000"]).port == 7000
    assert split_listen_options([]).port == 8080  # mitmproxy's default


def test_a_bad_listen_port_is_a_usage_error() -> None:
    with pytest.raises(SystemExit, match="not a port number"):
        split_listen_options(["-p", "http"])


def test_a_mode_with_its_own_port_is_refused() -> None:
    with pytest.raises(SystemExit, match="@PORT"):
        split_listen_options(["--mode", "reverse:http://127.0.0.1:8000@8081"])


def test_without_haproxy_the_command_says_how_to_install_it(monkeypatch, tmp_path, capsys) -> None:
    from claimroute_tools.proxy import workers

    monkeypatch.setattr(workers, "find_haproxy", lambda: None)
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    assert workers.main(policy, 2) == 1
    assert "apt-get install haproxy" in capsys.readouterr().err
