"""The daemon link's state machine: connect, give up in time, reconnect (plugin_krita.link)."""

from __future__ import annotations

from plugin_krita.link import CONNECTING, FAILED, LOST, OFFLINE, READY, LinkState, Pending, PendingRequests

HELLO = {
    "protocol": 1,
    "device": "cpu",
    "default_model": "small-256",
    "models": [{"name": "other", "resolution": 1024}, {"name": "small-256", "resolution": 256, "num_ws": 14}],
}
ENDPOINT = "tcp://127.0.0.1:5617"


def test_connect_hello_ready():
    link = LinkState(connect_timeout=4.0)
    link.start(ENDPOINT, now=100.0)
    assert link.state == CONNECTING and not link.ready
    assert link.on_transport(False, 101.0) == [] and link.tick(101.0) == []
    assert link.on_transport(True, 102.0) == ["hello"]
    assert link.on_transport(True, 102.1) == []  # one hello, not one per poll
    link.on_hello(HELLO)
    assert link.ready and link.state == READY
    assert link.message == f"connected to {ENDPOINT} (cpu); model small-256, 256 px"
    assert link.default_model()["num_ws"] == 14


def test_no_daemon_fails_within_the_connect_timeout_with_advice():
    link = LinkState(connect_timeout=4.0)
    link.start(ENDPOINT, now=0.0)
    assert link.tick(3.9) == [] and link.state == CONNECTING
    assert link.tick(4.0) == ["give_up"]
    assert link.state == FAILED
    assert "no daemon answered at tcp://127.0.0.1:5617 within 4 s" in link.message
    assert "draggan-daemon" in link.message and "CURVE" in link.message
    assert link.tick(100.0) == []  # gives up once


def test_a_daemon_started_after_giving_up_is_picked_up():
    link = LinkState(connect_timeout=1.0)
    link.start(ENDPOINT, now=0.0)
    link.tick(2.0)
    assert link.state == FAILED
    assert link.on_transport(True, 30.0) == ["hello"]
    link.on_hello(HELLO)
    assert link.ready


def test_hello_without_reply_fails_at_the_deadline():
    link = LinkState(connect_timeout=4.0)
    link.start(ENDPOINT, now=0.0)
    assert link.on_transport(True, 3.0) == ["hello"]  # the deadline restarts at the hello
    assert link.tick(6.9) == []
    assert link.tick(7.0) == ["give_up"] and link.state == FAILED


def test_lost_daemon_reconnects_and_says_hello_again():
    link = LinkState()
    link.start(ENDPOINT, 0.0)
    link.on_transport(True, 0.1)
    link.on_hello(HELLO)
    assert link.on_transport(False, 10.0) == ["fail_pending"]
    assert link.state == LOST and "reconnecting" in link.message and not link.ready
    assert link.on_transport(False, 11.0) == []
    assert link.tick(1000.0) == []  # lost is not failed: ZeroMQ keeps reconnecting
    assert link.on_transport(True, 12.0) == ["hello"]
    link.on_hello({**HELLO, "device": "cuda:0"})
    assert link.ready and "(cuda:0)" in link.message


def test_a_refused_hello_stays_failed_without_a_hello_loop():
    link = LinkState()
    link.start(ENDPOINT, 0.0)
    link.on_transport(True, 0.1)
    link.on_hello_failed("the daemon speaks protocol 2, this plugin 1")
    assert link.state == FAILED and "protocol 2" in link.message
    assert link.on_transport(True, 0.2) == []


def test_stop_goes_offline():
    link = LinkState()
    link.start(ENDPOINT, 0.0)
    link.stop()
    assert link.state == OFFLINE and link.default_model() == {}
    assert link.on_transport(True, 1.0) == []


def test_pending_requests_expire_and_fail_together():
    errors: list[str] = []
    pending = PendingRequests()
    for rid, deadline in (("a", 5.0), ("b", 10.0), ("c", 20.0)):
        pending.add(rid, Pending(lambda m: None, errors.append, deadline, f"req {rid}"))
    expired = pending.expire(10.0)
    assert [p.what for p, _ in expired] == ["req a", "req b"]
    assert "did not answer 'req a' in time" in expired[0][1]
    assert pending.resolve("b") is None and pending.resolve("c").what == "req c"
    pending.add("d", Pending(lambda m: None, errors.append, 99.0, "req d"))
    failed = pending.fail_all("lost the daemon")
    assert [(p.what, why) for p, why in failed] == [("req d", "lost the daemon")]
    assert pending.items == {}
