"""A small client for the draggan daemon: blocking calls, and drag streams a Qt loop can drive.

Needs only the standard library, pyzmq and msgpack (the Krita plugin vendors those two).

Blocking use (tests, scripts)::

    with Client() as c:
        c.hello()
        image, latent = c.generate(seed=42)
        stream = c.start_drag(latent, handles=[[100, 120]], targets=[[130, 120]])
        done = stream.wait(timeout=60)          # drag_done Message; .image(), .latent()

Event-loop use (Krita): create a QSocketNotifier on `client.fileno()` (and optionally on
`client.monitor_fileno()` to notice a daemon that goes away), and call `client.drain()` on each
activation. `drain()` reads everything available and dispatches replies and events to the
callbacks given to `send()` / `start_drag(on_event=...)`. The ZeroMQ FD is edge-triggered:
`send()` drains once itself, as the pattern requires.

Every blocking call has a timeout. A daemon that is not running, refuses our CURVE key, or
dies mid-call raises DaemonUnavailable within `connect_timeout` (or as soon as the
connection drops), never hangs.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import zmq
from zmq.utils.monitor import parse_monitor_message

from .protocol import (
    DEFAULT_ENDPOINT,
    DEFAULT_MAX_STEPS,
    DEFAULT_PSI,
    PROTOCOL_VERSION,
    ErrorCode,
    Image,
    Latent,
    Message,
    ProtocolError,
    mask_blob,
    parse_message,
    request_parts,
)

EventCallback = Callable[[Message], None]

_MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class DaemonError(Exception):
    """An error reply (or a local failure) with the protocol's error code."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field

    @classmethod
    def from_message(cls, msg: Message) -> DaemonError:
        c = msg.content
        code, text = str(c.get("code", ErrorCode.INTERNAL_ERROR)), str(c.get("message", "unknown error"))
        kind = IncompatibleDaemon if code == ErrorCode.INCOMPATIBLE_VERSION else DaemonError
        return kind(code, text, c.get("field"))


class DaemonUnavailable(DaemonError):
    """No daemon answered: not running, unreachable, CURVE key refused, or the connection dropped."""

    def __init__(self, message: str):
        super().__init__(ErrorCode.UNAVAILABLE, message)


class IncompatibleDaemon(DaemonError):
    """The daemon speaks another protocol version."""


@dataclass(frozen=True)
class CurveKeys:
    """CURVE keys of a client: the daemon's public key and our own key pair (z85 bytes)."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def from_files(cls, server_public_file: str | Path, client_secret_file: str | Path) -> CurveKeys:
        """server.key (from the daemon's keys folder) and our NAME.key_secret (made by `draggan keys`)."""
        import zmq.auth

        server_public, _ = zmq.auth.load_certificate(str(server_public_file))
        public, secret = zmq.auth.load_certificate(str(client_secret_file))
        if secret is None:
            raise ValueError(f"{client_secret_file} holds no secret key; pass the *.key_secret file")
        return cls(server_public, public, secret)


@dataclass(frozen=True)
class Mask:
    """width*height bytes, row-major; non-zero = allowed to change. Must match the model resolution."""

    width: int
    height: int
    data: bytes


class Generated(NamedTuple):
    image: Image
    latent: Latent


class DragStream:
    """The events of one drag run. Events queue here unless `on_event` consumes them."""

    def __init__(self, client: Client, request_id: str, on_event: EventCallback | None = None):
        self.client = client
        self.request_id = request_id
        self.on_event = on_event
        self.session: str | None = None
        self.reply: Message | None = None  # drag_start / drag_update reply
        self.result: Message | None = None  # drag_done
        self.error: DaemonError | None = None
        self.events: collections.deque[Message] = collections.deque()

    @property
    def finished(self) -> bool:
        """drag_done or drag_error arrived (or the start failed)."""
        return self.result is not None or self.error is not None

    @property
    def started(self) -> bool:
        return self.reply is not None or self.error is not None

    def _deliver(self, msg: Message) -> None:
        if msg.is_reply:
            if msg.ok:
                self.reply = msg
                self.session = self.session or msg.content.get("session")
            else:
                self.error = DaemonError.from_message(msg)
        elif msg.type == "drag_done":
            self.result = msg
        elif msg.type == "drag_error":
            c = msg.content
            self.error = DaemonError(str(c.get("code")), str(c.get("message")))
        if self.on_event is not None:
            self.on_event(msg)
        else:
            self.events.append(msg)

    def next_event(self, timeout: float | None = None) -> Message | None:
        """The next queued message (reply or event), waiting up to `timeout`; None when finished."""
        if not self.events and not self.finished:
            self.client.wait_until(lambda: bool(self.events) or self.finished, timeout or self.client.timeout)
        return self.events.popleft() if self.events else None

    def iter_events(self, timeout: float | None = None) -> Iterator[Message]:
        """Every message until the run ends; `timeout` bounds the wait for each one."""
        while True:
            msg = self.next_event(timeout)
            if msg is None:
                return
            yield msg

    def wait(self, timeout: float | None = None) -> Message:
        """Block until drag_done and return it; DaemonError on drag_error."""
        self.client.wait_until(lambda: self.finished, timeout or self.client.compute_timeout)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def stop(self) -> Message:
        return self.client.stop_drag(self._session())

    def update(self, **changes: Any) -> Message | DragStream:
        return self.client.update_drag(self._session(), **changes)

    def close(self) -> Message:
        return self.client.close_session(self._session())

    def _session(self) -> str:
        if self.session is None:
            raise DaemonError(ErrorCode.UNKNOWN_SESSION, "the drag has not started (no drag_start reply yet)")
        return self.session


class Client:
    """One DEALER connection to a daemon. Not thread-safe: use it from one thread (the GUI's)."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = 10.0,
        compute_timeout: float = 120.0,
        connect_timeout: float = 3.0,
        curve: CurveKeys | None = None,
        name: str = "",
        context: zmq.Context | None = None,
    ):
        self.endpoint = endpoint
        self.timeout = timeout  # simple requests
        self.compute_timeout = compute_timeout  # generate, render, drag start, waiting for a drag
        self.connect_timeout = connect_timeout
        self.name = name
        self.connected = False
        self.last_failure = ""  # e.g. the CURVE handshake was refused
        self._epoch = 0  # bumps on every disconnect
        self._ids = itertools.count(1)
        self._prefix = os.urandom(3).hex()
        self._waiting: dict[str, Message | None] = {}
        self._callbacks: dict[str, Callable[[Message], None]] = {}
        self._streams: dict[str, DragStream] = {}
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        for opt, value in (
            (zmq.LINGER, 0),
            # IMMEDIATE stays 0: with 1, libzmq discards unread incoming messages when the connection
            # drops (the daemon's last events). We check the connection before sending instead.
            (zmq.IMMEDIATE, 0),
            (zmq.RECONNECT_IVL, 200),
            (zmq.RECONNECT_IVL_MAX, 2000),
            (zmq.HEARTBEAT_IVL, 1000),
            (zmq.HEARTBEAT_TIMEOUT, 3000),
            (zmq.MAXMSGSIZE, 1 << 30),
        ):
            self._sock.setsockopt(opt, value)
        if curve is not None:
            self._sock.curve_serverkey = curve.server_public
            self._sock.curve_publickey = curve.client_public
            self._sock.curve_secretkey = curve.client_secret
        self._monitor = self._sock.get_monitor_socket(_MONITOR_EVENTS)
        self._sock.connect(endpoint)

    # ----- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        if self._sock.closed:
            return
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- event-loop interface -----------------------------------------------------------------
    def fileno(self) -> int:
        """The socket's ZeroMQ FD (edge-triggered): watch it for reading, then call drain()."""
        return self._sock.getsockopt(zmq.FD)

    fd = property(fileno)

    def monitor_fileno(self) -> int:
        """FD of the connection monitor: readable when the daemon connects or goes away."""
        return self._monitor.getsockopt(zmq.FD)

    def drain(self) -> int:
        """Read and dispatch everything available now; returns how many messages were handled.

        Messages first, then connection changes: what arrived before a disconnect still counts.
        """
        n = self._drain_messages()
        self._drain_monitor()
        return n

    def _drain_messages(self) -> int:
        n = 0
        while self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            self._dispatch(parts)
        return n

    def send(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        frames: Sequence[bytes] = (),
        on_reply: Callable[[Message], None] | None = None,
    ) -> str:
        """Send a request without waiting; returns its id. `on_reply(msg)` runs from drain()."""
        request_id = f"{self._prefix}-{next(self._ids)}"
        if on_reply is not None:
            self._callbacks[request_id] = on_reply
        self._send_parts(request_parts(msg_type, request_id, content or {}, frames))
        self.drain()
        return request_id

    def forget(self, request_id: str) -> bool:
        """Drop the callback (or stream) of a request we no longer wait for, e.g. after a timeout:
        its late reply is then ignored. True if something was pending under that id."""
        callback = self._callbacks.pop(request_id, None)
        stream = self._streams.pop(request_id, None)
        return callback is not None or stream is not None

    # ----- blocking requests --------------------------------------------------------------------
    def request(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        frames: Sequence[bytes] = (),
        timeout: float | None = None,
    ) -> Message:
        """Send and wait for the reply; DaemonError for an error reply, DaemonUnavailable on timeout."""
        request_id = f"{self._prefix}-{next(self._ids)}"
        self._waiting[request_id] = None
        try:
            epoch = self._send_parts(request_parts(msg_type, request_id, content or {}, frames))
            self.wait_until(lambda: self._waiting[request_id] is not None, timeout or self.timeout, epoch)
            reply = self._waiting[request_id]
        finally:
            self._waiting.pop(request_id, None)
        assert reply is not None
        if not reply.ok:
            raise DaemonError.from_message(reply)
        return reply

    def hello(self) -> dict[str, Any]:
        """Handshake: protocol and daemon version, device, models, limits."""
        reply = self.request("hello", {"client": self.name} if self.name else {})
        if reply.v != PROTOCOL_VERSION or reply.content.get("protocol") != PROTOCOL_VERSION:
            raise IncompatibleDaemon(
                ErrorCode.INCOMPATIBLE_VERSION,
                f"the daemon speaks protocol {reply.content.get('protocol')}, this client {PROTOCOL_VERSION}",
            )
        return reply.content

    def list_models(self) -> list[dict[str, Any]]:
        return self.request("list_models").content["models"]

    def load_model(self, model: str) -> dict[str, Any]:
        return self.request("load_model", {"model": model}, timeout=self.compute_timeout).content["model"]

    def status(self) -> dict[str, Any]:
        return self.request("status").content

    def generate(
        self,
        seed: int,
        psi: float = DEFAULT_PSI,
        model: str | None = None,
        encoding: str = "png",
        quality: int | None = None,
        size: int | None = None,
    ) -> Generated:
        content: dict[str, Any] = {"seed": seed, "psi": psi, "image": _image_opts(encoding, quality, size)}
        if model is not None:
            content["model"] = model
        reply = self.request("generate", content, timeout=self.compute_timeout)
        return Generated(reply.image(), reply.latent())

    def render(
        self,
        latent: Latent | str,
        model: str | None = None,
        encoding: str = "png",
        quality: int | None = None,
        size: int | None = None,
    ) -> Image:
        frames: list[bytes] = []
        content: dict[str, Any] = {
            "latent": _latent_ref(latent, frames),
            "image": _image_opts(encoding, quality, size),
        }
        if model is not None:
            content["model"] = model
        return self.request("render", content, frames, timeout=self.compute_timeout).image()

    def get_latent(self, latent_id: str) -> Latent:
        return self.request("get_latent", {"latent_id": latent_id}).latent()

    def put_latent(self, latent: Latent, model: str | None = None) -> str:
        content: dict[str, Any] = {"latent": latent.blob(0)}
        if model is not None:
            content["model"] = model
        return self.request("put_latent", content, [latent.data]).content["latent_id"]

    # ----- drags --------------------------------------------------------------------------------
    def start_drag(
        self,
        latent: Latent | str,
        handles: Sequence[Sequence[float]],
        targets: Sequence[Sequence[float]],
        *,
        mask: Mask | None = None,
        params: dict[str, Any] | None = None,
        preview: dict[str, Any] | None = None,
        previews: bool = True,
        final: dict[str, Any] | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        model: str | None = None,
        on_event: EventCallback | None = None,
        wait: bool = True,
    ) -> DragStream:
        """Start a drag from a latent id or a Latent (uploaded, so it works after a daemon restart).

        preview: {"size", "encoding", "quality", "interval_ms"}; previews=False turns frames off.
        wait=False returns at once; the reply then arrives as the stream's first message.
        """
        frames: list[bytes] = []
        content: dict[str, Any] = {
            "latent": _latent_ref(latent, frames),
            "handles": _points(handles),
            "targets": _points(targets),
            "params": dict(params or {}),
            "max_steps": max_steps,
            "preview": dict(preview or {}) if previews else None,
        }
        if mask is not None:
            content["mask"] = mask_blob(len(frames), mask.width, mask.height)
            frames.append(mask.data)
        if final is not None:
            content["final"] = dict(final)
        if model is not None:
            content["model"] = model
        return self._start_stream("drag_start", content, frames, on_event, wait)

    def update_drag(
        self,
        session: str,
        *,
        handles: Sequence[Sequence[float]] | None = None,
        targets: Sequence[Sequence[float]] | None = None,
        mask: Mask | bool | None = False,
        params: dict[str, Any] | None = None,
        preview: dict[str, Any] | None = None,
        max_steps: int | None = None,
        resume: bool = False,
        on_event: EventCallback | None = None,
    ) -> Message | DragStream:
        """Change a session (mid-drag too). mask: a Mask, None to clear it, False to leave it.

        With resume=True a stopped/finished session runs again: returns the new run's DragStream.
        """
        frames: list[bytes] = []
        content: dict[str, Any] = {"session": session, "resume": resume}
        if handles is not None:
            content["handles"] = _points(handles)
        if targets is not None:
            content["targets"] = _points(targets)
        if mask is None:
            content["mask"] = None
        elif isinstance(mask, Mask):
            content["mask"] = mask_blob(0, mask.width, mask.height)
            frames.append(mask.data)
        if params:
            content["params"] = dict(params)
        if preview is not None:
            content["preview"] = dict(preview)
        if max_steps is not None:
            content["max_steps"] = max_steps
        if resume:
            stream = self._start_stream("drag_update", content, frames, on_event, wait=True)
            stream.session = session
            if stream.reply is not None and not stream.reply.content.get("resumed"):
                self._streams.pop(stream.request_id, None)  # it was running: events go to the old stream
                return stream.reply
            return stream
        return self.request("drag_update", content, frames)

    def stop_drag(self, session: str) -> Message:
        return self.request("drag_stop", {"session": session})

    def close_session(self, session: str) -> Message:
        return self.request("close_session", {"session": session})

    def _start_stream(
        self,
        msg_type: str,
        content: dict[str, Any],
        frames: list[bytes],
        on_event: EventCallback | None,
        wait: bool,
    ) -> DragStream:
        request_id = f"{self._prefix}-{next(self._ids)}"
        stream = DragStream(self, request_id, on_event)
        self._streams[request_id] = stream
        epoch = self._send_parts(request_parts(msg_type, request_id, content, frames))
        if wait:
            self.wait_until(lambda: stream.started, self.compute_timeout, epoch)
            if stream.error is not None:
                self._streams.pop(request_id, None)
                raise stream.error
        return stream

    # ----- internals ----------------------------------------------------------------------------
    def _send_parts(self, parts: list[bytes]) -> int:
        """Send now, or as soon as the connection is up (within connect_timeout).

        Returns the connection epoch the message went out on (a later disconnect loses its reply).
        """
        deadline = time.monotonic() + self.connect_timeout
        self._drain_monitor()  # apply connection changes that happened while we were idle
        while not self.connected:
            if time.monotonic() >= deadline:
                raise DaemonUnavailable(self._unreachable_message())
            self._monitor.poll(50)
            self._drain_monitor()
        try:
            self._sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:
            raise DaemonUnavailable(f"the daemon at {self.endpoint} is not reading our messages") from None
        return self._epoch

    def wait_until(self, done: Callable[[], bool], timeout: float, epoch: int | None = None) -> None:
        """Run the receive loop until done() is true; DaemonUnavailable on timeout or disconnect
        (since `epoch`, the connection a request went out on; default: from now)."""
        start = time.monotonic()
        deadline = start + timeout
        if epoch is None:
            self._drain_monitor()
            epoch = self._epoch
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while not done():
            if self._epoch != epoch:
                raise DaemonUnavailable(f"the connection to the daemon at {self.endpoint} was lost")
            now = time.monotonic()
            if not self.connected and now - start >= self.connect_timeout:
                raise DaemonUnavailable(self._unreachable_message())
            if now >= deadline:
                raise DaemonUnavailable(f"no reply from the daemon at {self.endpoint} within {timeout:g} s")
            poller.poll(max(1, min(100, int((deadline - now) * 1000))))
            self.drain()

    def _unreachable_message(self) -> str:
        why = f" ({self.last_failure})" if self.last_failure else ""
        return (
            f"cannot reach the draggan daemon at {self.endpoint} within {self.connect_timeout:g} s{why}; "
            "is draggan-daemon running there?"
        )

    def _drain_monitor(self) -> None:
        while self._monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected, self.last_failure = True, ""
            elif event == zmq.EVENT_DISCONNECTED:
                self._drain_messages()  # what the daemon sent before it went away
                if self.connected:
                    self._epoch += 1
                    self._connection_lost()
                self.connected = False
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.last_failure = "the daemon refused our CURVE key"
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self.last_failure = "handshake failed (CURVE keys or security settings do not match)"

    def _connection_lost(self) -> None:
        """Open streams end with a local drag_error: the daemon-side sessions are gone or orphaned."""
        streams, self._streams = self._streams, {}
        for request_id, stream in streams.items():
            content = {"code": ErrorCode.DISCONNECTED, "message": f"lost the connection to {self.endpoint}"}
            stream._deliver(Message("drag_error", request_id, content, [], session=stream.session))

    def _dispatch(self, parts: list[bytes]) -> None:
        try:
            msg = parse_message(parts)
        except ProtocolError:
            return  # not from a daemon of ours; ignore
        parent = msg.parent
        if parent is None:
            return
        if msg.is_reply and parent in self._waiting:
            self._waiting[parent] = msg
        elif msg.is_reply and parent in self._callbacks:
            self._callbacks.pop(parent)(msg)
        elif parent in self._streams:
            stream = self._streams[parent]
            stream._deliver(msg)
            if stream.finished:
                self._streams.pop(parent, None)


def _points(points: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in points]


def _image_opts(encoding: str, quality: int | None, size: int | None) -> dict[str, Any]:
    return {"encoding": encoding, "quality": quality, "size": size}


def _latent_ref(latent: Latent | str, frames: list[bytes]) -> str | dict[str, Any]:
    if isinstance(latent, str):
        return latent
    ref = latent.blob(len(frames))
    frames.append(latent.data)
    return ref
