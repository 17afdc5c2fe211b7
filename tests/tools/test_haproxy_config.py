"""HAProxy's configuration for `claimroute proxy --workers` and the listen options it takes."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    # An empty host: every interface, IPv4 and IPv6, as mitmproxy listens with listen_host "".
    assert "bind :::8080 v4v6" in render_config("", 8080, BACKENDS)
    assert "bind 0.0.0.0:8080" in render_config("0.0.0.0", 8080, BACKENDS)
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
@pytest.mark.parametrize("host", ["127.0.0.1", "", "::1"])
def test_haproxy_accepts_the_configuration(tmp_path, host) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_config(host, 18080, BACKENDS))
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


def test_a_bad_listen_port_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit):
        split_listen_options(["-p", "http"])
    assert "invalid int value" in capsys.readouterr().err  # mitmproxy's own parser says so
    with pytest.raises(SystemExit, match="block_private"):
        split_listen_options(["--set", "block_private=maybe"])


def test_a_mode_with_its_own_port_is_refused() -> None:
    with pytest.raises(SystemExit, match="@PORT"):
        split_listen_options(["--mode", "reverse:http://127.0.0.1:8000@8081"])


@pytest.mark.parametrize(
    "mode", ["transparent", "wireguard", "local", "dns", "reverse:dns://127.0.0.1:53",
             "reverse:udp://127.0.0.1:9", "reverse:http3://127.0.0.1:443"]
)  # fmt: skip
def test_a_mode_haproxys_tcp_frontend_cannot_carry_is_refused(mode: str) -> None:
    with pytest.raises(SystemExit, match="cannot run behind HAProxy"):
        split_listen_options(["--mode", mode])
    with pytest.raises(SystemExit, match="cannot run behind HAProxy"):
        split_listen_options([f"--mode={mode}"], "mitmdump")


@pytest.mark.parametrize(
    "mode", ["regular", "socks5", "upstream:http://127.0.0.1:3128", "reverse:https://example.com",
             "reverse:tcp://127.0.0.1:5432", "reverse:tls://127.0.0.1:5432"]
)  # fmt: skip
def test_tcp_modes_are_accepted(mode: str) -> None:
    assert split_listen_options(["--mode", mode]).rest == ["--mode", mode]


def test_without_haproxy_the_command_says_how_to_install_it(monkeypatch, tmp_path, capsys) -> None:
    from claimroute_tools.proxy import workers

    monkeypatch.setattr(workers, "find_haproxy", lambda: None)
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    assert workers.main(policy, 2) == 1
    assert "apt-get install haproxy" in capsys.readouterr().err


# -- the client's address: HAProxy applies mitmproxy's Block rule (workers only see HAProxy) --

# Addresses CPython versions disagree on (gh-113171, in 3.12.4, 3.13, 3.14): private on one,
# global on another. mitmproxy refuses each under block_global on one version and under
# block_private on another, so HAProxy must refuse each under either option. The first five are
# review 17's (HAProxy let them through under the default block_global).
VERSION_DEPENDENT = [
    "2001:20::1", "2001:30::1", "2001:3::1", "2001:4:112::1", "2001:1::1", "2001:1::2",
    "2002::1", "64:ff9b:1::1", "3fff::1", "192.0.0.100", "::ffff:192.0.0.100",
]  # fmt: skip
# Where the versions agree (only these are compared for equality below).
SAMPLE_CLIENTS = [
    "127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1",  # loopback: always through
    "10.1.2.3", "172.16.5.4", "192.168.1.1", "169.254.3.3", "fe80::1", "fd00::5",  # private
    "::ffff:10.0.0.1", "::ffff:192.168.0.9", "198.18.0.1", "192.0.2.7", "0.1.2.3",  # private
    "192.0.0.1", "2001:db8::1", "100::1", "2001:1::3", "2001:10::1", "::", "2001:2::1",
    "100.64.1.1", "::ffff:100.64.0.1",  # shared: neither private nor global
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8",  # global
    "192.0.0.9", "192.0.0.10",  # global everywhere (3.12.0-3: outside 192.0.0.0/29)
]  # fmt: skip
OPTIONS = [(g, p) for g in (True, False) for p in (True, False)]


def _mitmproxy_refuses(peer: str, *, block_global: bool, block_private: bool) -> bool:
    """mitmproxy's Block.client_connected on this interpreter, as in mitmproxy/addons/block.py."""
    address = ipaddress.ip_address(peer)
    if isinstance(address, ipaddress.IPv6Address):
        address = address.ipv4_mapped or address
    if address.is_loopback:
        return False
    return (block_private and address.is_private) or (block_global and address.is_global)


def _frontend_rules(block_global: bool, block_private: bool):
    """The generated frontend's rules, read back from the configuration text: a function from
    an address to whether HAProxy refuses it."""
    config = render_config("0.0.0.0", 8080, BACKENDS, block_global=block_global,
                           block_private=block_private)  # fmt: skip
    acls: dict[str, list] = {}
    rejects: list[list[str]] = []
    for line in config.splitlines():
        words = line.split()
        if words[:1] == ["acl"]:
            acls[words[1]] = [ipaddress.ip_network(w, strict=False) for w in words[3:]]
        elif words[:3] == ["tcp-request", "connection", "reject"]:
            assert words[3] == "if"
            rejects.append(words[4:])

    def refuses(peer: str) -> bool:
        address = ipaddress.ip_address(peer)
        hit = {
            name: any(address.version == n.version and address in n for n in nets)
            for name, nets in acls.items()
        }
        # Lines are ORed; the conditions of one line are ANDed.
        return any(
            all((not hit[c[1:]]) if c.startswith("!") else hit[c] for c in conditions)
            for conditions in rejects
        )

    return refuses


def _haproxy_refuses(peer: str, *, block_global: bool, block_private: bool) -> bool:
    return _frontend_rules(block_global, block_private)(peer)


@pytest.mark.parametrize(("block_global", "block_private"), OPTIONS)
def test_haproxy_refuses_the_clients_mitmproxy_would(block_global, block_private) -> None:
    """Behind HAProxy every worker sees 127.0.0.1: the frontend must refuse at least every client
    mitmproxy's Block addon refuses on this interpreter, and exactly those where Python versions
    agree."""
    refuses = _frontend_rules(block_global, block_private)
    for peer in SAMPLE_CLIENTS + VERSION_DEPENDENT:
        want = _mitmproxy_refuses(peer, block_global=block_global, block_private=block_private)
        got = refuses(peer)
        assert got or not want, ("fails open", peer, block_global, block_private)
        if peer in SAMPLE_CLIENTS:
            assert got == want, (peer, block_global, block_private)


@pytest.mark.parametrize("peer", VERSION_DEPENDENT)
def test_addresses_python_versions_disagree_on_are_refused_under_either_option(peer) -> None:
    """Review 17: 2001:20::1 and co. are global on CPython >= 3.12.4; one mitmproxy process
    refuses them by default, HAProxy let them through. Refused under block_global (some version
    deems them global) and under block_private (some version deems them private)."""
    assert _haproxy_refuses(peer, block_global=True, block_private=False)
    assert _haproxy_refuses(peer, block_global=False, block_private=True)
    assert not _haproxy_refuses(peer, block_global=False, block_private=False)


@settings(max_examples=300, deadline=None)
@given(address=st.ip_addresses())
def test_haproxy_never_lets_through_a_client_mitmproxy_refuses_here(address) -> None:
    for block_global, block_private in OPTIONS:
        if _mitmproxy_refuses(str(address), block_global=block_global,
                              block_private=block_private):  # fmt: skip
            assert _RULES[block_global, block_private](str(address)), (address, block_global)


_RULES = {options: _frontend_rules(*options) for options in OPTIONS}


def test_the_default_configuration_refuses_global_clients() -> None:
    assert _haproxy_refuses("8.8.8.8", block_global=True, block_private=False)
    assert not _haproxy_refuses("127.0.0.1", block_global=True, block_private=False)


@pytest.mark.skipif(find_haproxy() is None, reason="needs haproxy")
@pytest.mark.parametrize(("block_global", "block_private"), OPTIONS)
def test_haproxy_accepts_the_client_rules(tmp_path, block_global, block_private) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_config("127.0.0.1", 18080, BACKENDS, block_global=block_global,
                                    block_private=block_private))  # fmt: skip
    done = subprocess.run([str(find_haproxy()), "-c", "-f", str(config)], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


# -- the options HAProxy takes, read as mitmproxy reads them (review 17) --


def test_block_options_reach_haproxy_and_the_workers() -> None:
    spec = split_listen_options(["--set", "block_global=false", "--set", "block_private=true"])
    assert (spec.block_global, spec.block_private) == (False, True)
    assert spec.rest == ["--set", "block_global=false", "--set", "block_private=true"]
    assert (split_listen_options([]).block_global, split_listen_options([]).block_private) == (
        True,
        False,
    )


@pytest.mark.parametrize("profile", ["gateway", "mitmdump"])
@pytest.mark.parametrize("args", [["--set=block_private=true"], ["--set=block_private"],
                                  ["--set", "block_private"]])  # fmt: skip
def test_block_private_in_every_spelling_reaches_haproxy(args, profile) -> None:
    """The worker gets block_private=true but sees only 127.0.0.1: HAProxy must know too."""
    spec = split_listen_options(args, profile)
    assert spec.block_private, "HAProxy was configured without block_private: fail open"
    assert spec.rest == args  # the workers get it too


def test_block_global_false_in_the_equals_spelling_is_read() -> None:
    assert split_listen_options(["--set=block_global=false"]).block_global is False


def test_options_from_the_confdir_config_file_reach_haproxy(tmp_path) -> None:
    """mitmproxy (every worker) reads CONFDIR/config.yaml; so does the supervisor."""
    (tmp_path / "config.yaml").write_text(
        "block_private: true\nlisten_host: 127.0.0.2\nlisten_port: 18081\n"
    )
    spec = split_listen_options(["--set", f"confdir={tmp_path}"])
    assert spec.block_private, "block_private from config.yaml: worker refuses nothing, HAProxy too"
    assert (spec.host, spec.port) == ("127.0.0.2", 18081)
    # The flags win over the file, as in mitmproxy (the workers get theirs as flags too).
    spec = split_listen_options(["--set", f"confdir={tmp_path}", "-p", "18082"])
    assert spec.port == 18082 and spec.rest == ["--set", f"confdir={tmp_path}"]


def test_a_mode_from_the_config_file_is_checked(tmp_path) -> None:
    (tmp_path / "config.yml").write_text("mode: [transparent]\n")
    with pytest.raises(SystemExit, match="cannot run behind HAProxy"):
        split_listen_options([f"--set=confdir={tmp_path}"])


def test_listen_options_in_every_spelling_do_not_reach_the_workers() -> None:
    """`--set=listen_port=8080` must not stay in the workers' options."""
    spec = split_listen_options(["--set=listen_port=18080", "--set=listen_host=0.0.0.0",
                                 "--set=claimroute_metrics=127.0.0.1:9100", "-p18083"])  # fmt: skip
    assert (spec.port, spec.host, spec.metrics) == (18083, "0.0.0.0", "127.0.0.1:9100")
    assert spec.rest == []
    spec = split_listen_options(["--set=listen_port=18080", "--set=listen_host=0.0.0.0"])
    assert (spec.port, spec.host, spec.rest) == (18080, "0.0.0.0", [])
