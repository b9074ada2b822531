"""DaemonConnection's loop (plugin_krita.connection): callback errors and given-up requests.

Qt is not installed where unit tests run, so `plugin_krita.qt_compat` is replaced by a stub
with inert QTimer/QSocketNotifier (the loop is driven by calling poll() here); the client is a
small stand-in that dispatches like daemon.client.Client.drain (callbacks run inside drain).
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest

from daemon import protocol
from plugin_krita.link import FAILED, READY


class _Inert:
    Read = 0

    def __init__(self, *args, **kwargs) -> None:
        self.timeout = self.activated = types.SimpleNamespace(connect=lambda fn: None)

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    @staticmethod
    def singleShot(ms, fn) -> None:
        pass


class FakeClient:
    """Client's event-loop surface: send() registers a callback, drain() runs queued replies."""

    connected = True

    def __init__(self) -> None:
        self.callbacks: dict[str, object] = {}
        self.inbox: list[protocol.Message] = []
        self.forgotten: list[str] = []
        self.n = 0

    def send(self, msg_type, content, frames, on_reply=None) -> str:
        self.n += 1
        request_id = f"r{self.n}"
        self.callbacks[request_id] = on_reply
        return request_id

    def drain(self) -> int:
        while self.inbox:
            msg = self.inbox.pop(0)
            self.callbacks.pop(msg.parent)(msg)
        return 0

    def forget(self, request_id: str) -> None:
        self.forgotten.append(request_id)
        self.callbacks.pop(request_id, None)

    def close(self) -> None:
        pass


@pytest.fixture
def connection(monkeypatch):
    stub = types.ModuleType("plugin_krita.qt_compat")
    stub.QTimer = stub.QSocketNotifier = _Inert
    stub.READ_NOTIFIER = 0
    monkeypatch.setitem(sys.modules, "plugin_krita.qt_compat", stub)
    monkeypatch.delitem(sys.modules, "plugin_krita.connection", raising=False)
    module = importlib.import_module("plugin_krita.connection")
    monkeypatch.delitem(sys.modules, "plugin_krita.connection")  # not kept with the stubbed Qt
    now = [0.0]
    changes: list[str] = []
    conn = module.DaemonConnection(lambda: changes.append(conn.link.state), clock=lambda: now[0])
    conn.client = FakeClient()
    conn.link.start("tcp://127.0.0.1:1", 0.0)
    conn.link.hello_sent = True
    conn.link.on_hello({"protocol": protocol.PROTOCOL_VERSION, "models": []})
    return conn, now, changes


def ok_reply(parent: str) -> protocol.Message:
    return protocol.Message("status_reply", parent, {}, [], status="ok")


def test_a_raising_callback_does_not_fail_the_link(connection):
    conn, _, changes = connection
    errors: list[str] = []

    def broken(msg):
        raise RuntimeError("wrapped C/C++ object has been deleted")

    conn.request("status", {}, (), broken, errors.append)
    conn.client.inbox.append(ok_reply("r1"))
    conn.on_tick = lambda now: (_ for _ in ()).throw(ValueError("a bug in the tick"))
    conn.on_change = lambda: (_ for _ in ()).throw(RuntimeError("deleted docker"))
    conn.poll()
    assert conn.link.state == READY and conn.link.state != FAILED and conn.ready and errors == []
    assert "r1" not in conn.client.callbacks and changes == []


def test_stream_events_are_guarded(connection):
    conn, _, _ = connection
    seen: list[str] = []

    def on_event(msg):
        seen.append(msg.type)
        raise RuntimeError("deleted widget")

    class StreamClient(FakeClient):
        def start_drag(self, on_event, wait, **kwargs):
            self.on_event = on_event
            return types.SimpleNamespace(request_id="d1")

        def drain(self):
            self.on_event(protocol.Message("drag_step", "d1", {"step": 1}, []))
            return 1

    conn.client = StreamClient()
    conn.start_drag(on_event, lambda text: None, latent="x")
    conn.poll()
    assert seen == ["drag_step"] and conn.link.state == READY


def test_a_request_that_times_out_is_forgotten_by_the_client(connection):
    conn, now, _ = connection
    errors: list[str] = []
    replies: list[object] = []
    conn.request("status", {}, (), replies.append, errors.append, timeout=5.0)
    conn.request("status", {}, (), replies.append, errors.append, timeout=50.0)
    now[0] = 6.0
    conn.poll()
    assert errors == ["the daemon did not answer 'status' in time"]
    assert conn.client.forgotten == ["r1"]
    assert "r1" not in conn.client.callbacks and "r2" in conn.client.callbacks
    conn.client.connected = False  # the link drops: the other request fails and is forgotten too
    conn.poll()
    assert len(errors) == 2 and conn.client.forgotten == ["r1", "r2"] and replies == []
