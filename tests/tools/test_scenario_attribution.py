"""Joining the addon's decision log to scenario requests: by request id, else by key and time."""

from __future__ import annotations

from types import SimpleNamespace

from claimroute_tools.scenario.traffic import RequestResult, attribute_routes


def result(index: int, user: int, started: float, path: str = "/api/x") -> RequestResult:
    return RequestResult(index, user, "pop", 0, "GET", path, None, started, ended=started + 0.01)


USERS = [SimpleNamespace(sub="ann"), SimpleNamespace(sub="bob")]


def decision(route: str, ts: float, sub: str | None = "ann", **extra: object) -> dict:
    return {"ts": ts, "method": "GET", "url": "http://api.test/api/x", "sub": sub,
            "outcome": "allowed", "route": route, **extra}  # fmt: skip


def test_request_ids_join_exactly_whatever_the_timestamps_say():
    # Two requests of one user at the same moment, logged in the other order and with
    # timestamps outside both windows: only the request id can tell them apart.
    first, second = result(0, 0, 100.0), result(1, 0, 100.0)
    decisions = [
        decision("canary", 500.0, request_id="1", bucket=7),
        decision("primary", 400.0, request_id="0", bucket=4000),
    ]
    assert attribute_routes([first, second], USERS, decisions) == 2
    assert (first.route, first.bucket) == ("primary", 4000)
    assert (second.route, second.bucket) == ("canary", 7)


def test_without_request_ids_the_key_and_time_join_still_applies():
    early, late = result(0, 0, 100.0), result(1, 1, 200.0)
    decisions = [decision("bob-route", 200.005, sub="bob"), decision("ann-route", 100.005)]
    assert attribute_routes([early, late], USERS, decisions) == 2
    assert (early.route, late.route) == ("ann-route", "bob-route")


def test_junk_or_unknown_request_ids_fall_back_to_the_time_join():
    request = result(0, 0, 100.0)
    decisions = [
        decision("wrong", 900.0, request_id="99"),  # no such request, out of the window
        decision("also-wrong", 900.0, request_id="\u00b2"),  # a digit, but not ASCII
        decision("right", 100.005, request_id="x-1"),
    ]
    assert attribute_routes([request], USERS, decisions) == 1
    assert request.route == "right"


def test_a_retry_decision_never_lands_on_another_request():
    # Request 0 was killed and retried by the client (two decisions with its id); request 1,
    # same user and path, got no decision at all (say mitmproxy refused it before any hook).
    killed, silent = result(0, 0, 100.0), result(1, 0, 100.0)
    decisions = [
        decision("first", 100.002, request_id="0"),
        decision("retry", 100.004, request_id="0"),
    ]
    assert attribute_routes([killed, silent], USERS, decisions) == 1
    assert (killed.route, silent.route) == ("first", None)


def test_odd_subs_in_a_hand_written_log_join_as_anonymous():
    request = result(0, 0, 100.0)
    users = [SimpleNamespace(sub="ann")]
    decisions = [decision("odd", 100.005, sub=["not", "a", "string"])]
    assert attribute_routes([request], users, decisions) == 1  # via the anonymous key
    assert request.route == "odd"
