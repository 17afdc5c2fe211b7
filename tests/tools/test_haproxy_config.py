"""HAProxy's configuration for `claimroute proxy --workers` and the listen options it takes."""

from __future__ import annotations

import ipaddress
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


# -- the client's address: HAProxy applies mitmproxy's Block rule (workers only see HAProxy) --

SAMPLE_CLIENTS = [
    "127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1",  # loopback: always through
    "10.1.2.3", "172.16.5.4", "192.168.1.1", "169.254.3.3", "fe80::1", "fd00::5",  # private
    "::ffff:10.0.0.1", "::ffff:192.168.0.9", "198.18.0.1", "192.0.2.7", "0.1.2.3",  # private
    "100.64.1.1", "::ffff:100.64.0.1",  # shared: neither private nor global
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8",  # global
]  # fmt: skip


def _mitmproxy_refuses(peer: str, *, block_global: bool, block_private: bool) -> bool:
    """mitmproxy's Block.client_connected, as in mitmproxy/addons/block.py."""
    address = ipaddress.ip_address(peer)
    if isinstance(address, ipaddress.IPv6Address):
        address = address.ipv4_mapped or address
    if address.is_loopback:
        return False
    return (block_private and address.is_private) or (block_global and address.is_global)


def _haproxy_refuses(peer: str, *, block_global: bool, block_private: bool) -> bool:
    """The generated frontend's rules, read back from the configuration text."""
    config = render_config("0.0.0.0", 8080, BACKENDS, block_global=block_global,
                           block_private=block_private)  # fmt: skip
    address = ipaddress.ip_address(peer)
    acls: dict[str, bool] = {}
    for line in config.splitlines():
        words = line.split()
        if words[:1] == ["acl"]:
            nets = [ipaddress.ip_network(w, strict=False) for w in words[3:]]
            acls[words[1]] = any(address.version == n.version and address in n for n in nets)
    refused = False
    for line in config.splitlines():
        words = line.split()
        if words[:3] == ["tcp-request", "connection", "reject"]:
            conditions = words[4:]
            refused |= all((not acls[c[1:]]) if c.startswith("!") else acls[c] for c in conditions)
    return refused


@pytest.mark.parametrize("block_global", [True, False])
@pytest.mark.parametrize("block_private", [True, False])
def test_haproxy_refuses_the_clients_mitmproxy_would(block_global, block_private) -> None:
    """Behind HAProxy every worker sees 127.0.0.1: the frontend must refuse at least every client
    mitmproxy's Block addon refuses (and, for the sample, exactly those)."""
    for peer in SAMPLE_CLIENTS:
        want = _mitmproxy_refuses(peer, block_global=block_global, block_private=block_private)
        got = _haproxy_refuses(peer, block_global=block_global, block_private=block_private)
        assert got == want, (peer, block_global, block_private)


def test_the_default_configuration_refuses_global_clients() -> None:
    assert _haproxy_refuses("8.8.8.8", block_global=True, block_private=False)
    assert not _haproxy_refuses("127.0.0.1", block_global=True, block_private=False)


@pytest.mark.skipif(find_haproxy() is None, reason="needs haproxy")
@pytest.mark.parametrize("block_private", [True, False])
def test_haproxy_accepts_the_client_rules(tmp_path, block_private) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_config("127.0.0.1", 18080, BACKENDS, block_private=block_private))
    done = subprocess.run([str(find_haproxy()), "-c", "-f", str(config)], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_block_options_reach_haproxy_and_the_workers() -> None:
    spec = split_listen_options(["--set", "block_global=false", "--set", "block_private=true"])
    assert (spec.block_global, spec.block_private) == (False, True)
    assert spec.rest == ["--set", "block_global=false", "--set", "block_private=true"]
    assert (split_listen_options([]).block_global, split_listen_options([]).block_private) == (
        True,
        False,
    )
