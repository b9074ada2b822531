"""Drives daemon.client.Client from Qt's event loop: Krita never waits on the network.

QSocketNotifiers on the ZeroMQ FD and the connection monitor's FD call `drain()`; a short
QTimer does the same as a safety net (the ZeroMQ FD is edge-triggered) and advances the
deadlines in link.py. Replies and stream events arrive as callbacks on the GUI thread.
Nothing here blocks: requests are only sent when the link is ready (the transport is up),
so the client's send never waits for a connection.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from . import deps
from .link import (
    COMPUTE_TIMEOUT_S,
    CONNECTING,
    FAILED,
    LOST,
    READY,
    REQUEST_TIMEOUT_S,
    LinkState,
    Pending,
    PendingRequests,
)
from .qt_compat import READ_NOTIFIER, QSocketNotifier, QTimer

POLL_MS = 50
__all__ = ["COMPUTE_TIMEOUT_S", "REQUEST_TIMEOUT_S", "DaemonConnection", "guarded"]


def guarded(fn: Callable[..., Any]) -> Callable[..., None]:
    """`fn` as a callback that never raises into the receive loop: a bug in a callback (or a
    listener on a deleted widget) must not look like a network failure and fail the link."""

    def call(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            traceback.print_exc()

    return call


class DaemonConnection:
    """One link to a daemon, its state, and requests/streams over it."""

    def __init__(self, on_change: Callable[[], None], connect_timeout: float = 4.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.import_error = ""
        try:
            self.protocol, self.client_module = deps.protocol_modules()
        except deps.MissingDependency as e:  # shown in the docker instead of a Python error dialog
            self.protocol = self.client_module = None
            self.import_error = str(e)
        self.on_change = on_change
        self.clock = clock
        self.link = LinkState(connect_timeout=connect_timeout)
        self.pending = PendingRequests()
        self.client = None
        self._notifiers: list[QSocketNotifier] = []
        self._timer = QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self.poll)
        self._last_seen: tuple[str, str] = (self.link.state, self.link.message)
        self.on_tick: Callable[[float], None] | None = None  # called with the time after every poll

    # ----------------------------------------------------------------- lifecycle
    def open(self, endpoint: str, server_key: str = "", client_key: str = "") -> None:
        """(Re)connect to `endpoint`; with CURVE when both key files are given."""
        self.close(notify=False)
        curve = None
        try:
            if self.import_error:
                raise RuntimeError(self.import_error)
            if server_key or client_key:
                if not (server_key and client_key):
                    raise ValueError("CURVE needs both the daemon's server.key and your *.key_secret file")
                curve = self.client_module.CurveKeys.from_files(server_key, client_key)
            self.client = self.client_module.Client(
                endpoint, curve=curve, name="krita", connect_timeout=0.5, timeout=REQUEST_TIMEOUT_S
            )
        except Exception as e:  # bad endpoint syntax, unreadable key files, zmq errors
            self.client = None
            self.link.start(endpoint, self.clock())
            self.link.on_hello_failed(f"cannot connect to {endpoint or '(empty address)'}: {e}")
            self._changed()
            return
        for fd in (self.client.fileno(), self.client.monitor_fileno()):
            notifier = QSocketNotifier(fd, READ_NOTIFIER)
            notifier.activated.connect(self.poll)
            self._notifiers.append(notifier)
        self.link.start(endpoint, self.clock())
        self._timer.start()
        self._changed()
        self.poll()

    def close(self, notify: bool = True) -> None:
        self._timer.stop()
        for notifier in self._notifiers:
            notifier.setEnabled(False)
        self._notifiers.clear()
        for pending, _ in self.pending.fail_all("disconnected"):
            guarded(pending.on_error)("disconnected from the daemon")
        if self.client is not None:
            self.client.close()
            self.client = None
        self.link.stop()
        if notify:
            self._changed()

    # ----------------------------------------------------------------- the loop
    def poll(self, *_: Any) -> None:
        """Read everything available, dispatch it, and advance the link's state and deadlines."""
        if self.client is None:
            return
        try:
            self.client.drain()  # every callback it runs is guarded: an error here is the transport's
        except Exception as e:  # a ZMQ error on a closed context etc.: report, never raise into Qt
            self.link.on_hello_failed(f"connection error: {e}")
        if self.client is None:  # a callback closed us
            return
        now = self.clock()
        for action in self.link.on_transport(bool(self.client.connected), now) + self.link.tick(now):
            if action == "hello":
                self._send_hello()
            elif action in ("fail_pending", "give_up"):
                for pending, _ in self.pending.fail_all(self.link.message):
                    self.forget(pending.request_id)
                    guarded(pending.on_error)(self.link.message)
        for pending, message in self.pending.expire(now):
            self.forget(pending.request_id)
            guarded(pending.on_error)(message)
        if self.on_tick is not None:
            guarded(self.on_tick)(now)
        self._changed()

    def forget(self, request_id: str) -> None:
        """Drop the client's reply callback of a request given up on (else it leaks until the reply)."""
        if self.client is not None and request_id:
            self.client.forget(request_id)

    def _send_hello(self) -> None:
        def on_reply(msg) -> None:
            if msg.ok and msg.content.get("protocol") == self.protocol.PROTOCOL_VERSION:
                self.link.on_hello(msg.content)
            elif msg.ok:
                self.link.on_hello_failed(
                    f"the daemon speaks protocol {msg.content.get('protocol')}, this plugin "
                    f"{self.protocol.PROTOCOL_VERSION}: update the plugin or the daemon (python install.py)"
                )
            else:
                self.link.on_hello_failed(f"the daemon refused the handshake: {msg.content.get('message')}")
            self._changed()

        self._send("hello", {"client": "krita"}, (), on_reply, self.link.on_hello_failed, REQUEST_TIMEOUT_S,
                   "hello", require_ready=False)

    def _changed(self) -> None:
        seen = (self.link.state, self.link.message)
        if seen != self._last_seen:
            self._last_seen = seen
            guarded(self.on_change)()

    # ----------------------------------------------------------------- requests
    @property
    def ready(self) -> bool:
        return self.link.state == READY and self.client is not None

    def not_ready_message(self) -> str:
        if self.link.state in (CONNECTING, LOST):
            return f"still connecting to the daemon ({self.link.message})"
        if self.link.state == FAILED:
            return self.link.message
        return "not connected to a daemon: press Connect first"

    def request(self, msg_type: str, content: dict[str, Any], frames: Sequence[bytes],
                on_reply: Callable[[Any], None], on_error: Callable[[str], None],
                timeout: float = REQUEST_TIMEOUT_S) -> None:
        """Send without waiting; exactly one of on_reply(ok Message) / on_error(text) runs later."""
        self._send(msg_type, content, frames, on_reply, on_error, timeout, msg_type)

    def _send(self, msg_type, content, frames, on_reply, on_error, timeout, what, require_ready=True) -> None:
        if self.client is None or (require_ready and not self.ready):
            on_error(self.not_ready_message())
            return
        pending = Pending(on_reply, on_error, self.clock() + timeout, what)
        state = {"done": False, "id": None}

        def finish(msg) -> None:
            if state["done"]:
                return  # already expired or failed
            state["done"] = True
            if state["id"] is not None:
                self.pending.resolve(state["id"])
            try:
                if msg.ok or msg_type == "hello":
                    pending.on_reply(msg)
                else:
                    pending.on_error(self._error_text(msg))
            except Exception:  # a bug in a callback must not look like a network failure
                traceback.print_exc()

        def expire_guard(text: str) -> None:
            if not state["done"]:
                state["done"] = True
                on_error(text)

        pending.on_error = expire_guard
        try:
            request_id = self.client.send(msg_type, content, frames, on_reply=finish)
        except Exception as e:  # DaemonUnavailable, zmq errors
            expire_guard(f"could not send '{what}' to the daemon: {e}")
            return
        state["id"] = request_id
        if not state["done"]:
            self.pending.add(request_id, pending)

    def start_drag(self, on_event: Callable[[Any], None], on_error: Callable[[str], None], **kwargs: Any):
        """client.start_drag without waiting; events (the reply first) go to on_event. None on failure."""
        if not self.ready:
            on_error(self.not_ready_message())
            return None
        try:
            stream = self.client.start_drag(on_event=guarded(on_event), wait=False, **kwargs)
        except Exception as e:
            on_error(f"could not start the drag: {e}")
            return None
        QTimer.singleShot(0, self.poll)  # edge-triggered FD: drain once after sending
        return stream

    def _error_text(self, msg) -> str:
        content = msg.content
        return str(content.get("message") or content.get("code") or "the daemon reported an error")
