"""The daemon's socket thread: one ROUTER socket, request validation, cheap replies, routing.

It never waits on the device: compute requests become jobs for the Worker, whose results come
back through the Outbox. It sends everything, so only this thread touches the ROUTER socket.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from . import __version__
from .encoding import available_encodings
from .models import ModelRegistry, UnknownModel, memory_info
from .protocol import (
    PROTOCOL_VERSION,
    ErrorCode,
    Latent,
    Limits,
    ProtocolError,
    Request,
    error_parts,
    parse_request,
    reply_parts,
)
from .sessions import LatentCache, SessionTable, TooManySessions
from .worker import Job, Outbox, Outgoing, Worker, check_latent_shape, latent_array

log = logging.getLogger("draggan.daemon")

HEARTBEAT_IVL_MS = 2000
HEARTBEAT_TIMEOUT_MS = 6000
IDLE_CHECK_S = 1.0
COMPUTE_REQUESTS = frozenset(("load_model", "generate", "render", "drag_start"))
SESSION_REQUESTS = frozenset(("drag_update", "drag_stop", "close_session"))


@dataclass
class CurveConfig:
    """The daemon's CURVE key pair and the folder of authorised client public keys."""

    public_key: bytes
    secret_key: bytes
    authorized_dir: Path


@dataclass
class ServerConfig:
    bind: str
    limits: Limits = field(default_factory=Limits)
    curve: CurveConfig | None = None
    device_label: str = "cpu"


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for tcp:// on a loopback address (127.0.0.0/8, ::1, localhost) and for ipc:// / inproc://."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not rest:
        return False
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', interface names, host names
        return False


def _client_tag(identity: bytes) -> str:
    return identity.hex()[:8]


class DaemonServer:
    """Binds the ROUTER socket and serves until `stop()` (from a signal handler or another thread)."""

    def __init__(self, config: ServerConfig, registry: ModelRegistry):
        self.config = config
        self.limits = config.limits
        self.registry = registry
        self.sessions = SessionTable(self.limits.max_sessions)
        self.latents = LatentCache(self.limits.latent_cache)
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._pending: dict[tuple[bytes, str], tuple[str, float]] = {}  # for the per-request log line
        self._idle_submitted: set[str] = set()
        self.ctx = zmq.Context()
        self._auth: Any = None
        self.socket = self._make_socket()
        self.outbox = Outbox(self.ctx)
        self.worker = Worker(registry, self.sessions, self.latents, self.outbox, self.limits)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _make_socket(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished client raises EHOSTUNREACH
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.LINGER, 1000)
        curve = self.config.curve
        if curve is not None:
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("draggan.daemon.auth"))
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(curve.authorized_dir))
            sock.curve_secretkey = curve.secret_key
            sock.curve_publickey = curve.public_key
            sock.curve_server = True
        try:
            sock.bind(self.config.bind)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            self._stop_auth()
            raise OSError(f"cannot bind {self.config.bind}: {e}") from None
        return sock

    # ----- lifecycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def serve_forever(self) -> None:
        self.worker.start()
        self.worker.submit(Job("preload"))
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.outbox.wakeup, zmq.POLLIN)
        next_idle_check = time.monotonic() + IDLE_CHECK_S
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(200))
                if self.socket in ready:
                    self._receive_all()
                if self.outbox.wakeup in ready:
                    self._flush_outbox()
                now = time.monotonic()
                if now >= next_idle_check:
                    self._close_idle(now)
                    next_idle_check = now + IDLE_CHECK_S
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        log.info("shutting down")
        self.worker.stop()
        self._flush_outbox()  # final events of runs the worker finished
        self.outbox.close()
        self.socket.close(linger=500)
        self._stop_auth()
        self.ctx.term()
        log.info("stopped")

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    # ----- receiving ----------------------------------------------------------------------------
    def _receive_all(self, budget: int = 256) -> None:
        for _ in range(budget):
            try:
                msg = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(msg[0], msg[1:])

    def _handle(self, identity: bytes, parts: list[bytes]) -> None:
        t0 = time.perf_counter()
        try:
            req = parse_request(parts, self.limits)
        except ProtocolError as e:
            self._send_error(identity, e.parent, e.request_type, e, t0)
            return
        except Exception as e:  # a validator bug must not take the daemon down
            log.exception("error validating a message")
            err = ProtocolError(ErrorCode.INTERNAL_ERROR, f"{type(e).__name__} while reading the message")
            self._send_error(identity, None, None, err, t0)
            return
        try:
            self._dispatch(identity, req, t0)
        except ProtocolError as e:
            self._send_error(identity, req.id, req.type, e, t0)
        except Exception as e:  # a bug: answer, log, go on
            log.exception("error handling %s", req.type)
            err = ProtocolError(ErrorCode.INTERNAL_ERROR, f"{type(e).__name__}: {str(e)[:300]}")
            self._send_error(identity, req.id, req.type, err, t0)

    def _dispatch(self, identity: bytes, req: Request, t0: float) -> None:
        c = req.content
        if req.type in COMPUTE_REQUESTS:
            model = c.get("model") or self.registry.default
            self._check_model(model)
            job = Job(req.type, identity, req, t0=t0)
            if req.type == "drag_start":
                try:
                    job.session_id = self.sessions.create(identity, model).id
                except TooManySessions as e:
                    raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, str(e)) from None
            self._pending[(identity, req.id)] = (req.type, t0)
            self.worker.submit(job)
        elif req.type in SESSION_REQUESTS:
            rec = self.sessions.get(c["session"], owner=identity)
            if rec is None:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_SESSION,
                    f"no session {c['session']!r} of yours (closed, timed out, or never started)",
                    "content.session",
                )
            rec.touch()
            self._pending[(identity, req.id)] = (req.type, t0)
            self.worker.submit(Job(req.type, identity, req, session_id=rec.id, t0=t0))
        else:
            content, frames = getattr(self, f"_on_{req.type}")(identity, c)
            self._send_reply(identity, req, content, frames, t0)

    def _check_model(self, name: str) -> None:
        try:
            self.registry.entry(name)
        except UnknownModel as e:
            raise ProtocolError(ErrorCode.UNKNOWN_MODEL, str(e.args[0]), "content.model") from None

    # ----- cheap requests (answered on this thread) ---------------------------------------------
    def _on_hello(self, identity: bytes, c: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        if c.get("client"):
            log.info("client %s is %r", _client_tag(identity), c["client"])
        return {
            "protocol": PROTOCOL_VERSION,
            "daemon_version": __version__,
            "device": self.config.device_label,
            "models": self.registry.infos(),
            "default_model": self.registry.default,
            "encodings": list(available_encodings()),
            "limits": self.limits.to_dict(),
            "curve": self.config.curve is not None,
        }, []

    def _on_list_models(self, identity: bytes, c: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        return {"models": self.registry.infos(), "default_model": self.registry.default}, []

    def _on_status(self, identity: bytes, c: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        now = time.monotonic()
        sessions = [
            {
                "session": r.id if r.owner == identity else None,
                "mine": r.owner == identity,
                "model": r.model,
                "state": r.state,
                "step": r.step,
                "idle_s": 0.0 if r.state == "running" else round(now - r.last_activity, 3),
            }
            for r in self.sessions.all()
        ]
        return {
            "sessions": sessions,
            "queue": {"jobs": self.worker.queued, "running": self.worker.running},
            "memory": memory_info(self.registry.device),
            "latents": len(self.latents),
            "uptime_s": round(now - self._started, 3),
        }, []

    def _on_get_latent(self, identity: bytes, c: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        latent = self.latents.get(c["latent_id"])
        if latent is None:
            for rec in self.sessions.owned_by(identity):
                if rec.latent is not None and rec.latent.id == c["latent_id"]:
                    latent = rec.latent
        if latent is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_LATENT,
                f"latent {c['latent_id']!r} is not held by this daemon (restarted, or evicted from cache)",
                "content.latent_id",
            )
        return {"latent": latent.blob(0)}, [latent.data]

    def _on_put_latent(self, identity: bytes, c: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        latent = Latent(c["latent"]["shape"], c["latent"]["data"])
        if "model" in c:
            self._check_model(c["model"])
            entry = self.registry.entry(c["model"])
            check_latent_shape(latent, entry.latent_shape(), entry.name, "content.latent")
        latent_array(latent)
        return {"latent_id": self.latents.put(latent)}, []

    # ----- sending ------------------------------------------------------------------------------
    def _send_reply(
        self, identity: bytes, req: Request, content: dict[str, Any], frames: list[bytes], t0: float
    ) -> None:
        self._send(Outgoing(identity, reply_parts(req.id, req.type, content, frames)))
        self._log_request(identity, req.type, req.id, "ok", t0)

    def _send_error(
        self, identity: bytes, parent: str | None, req_type: str | None, err: ProtocolError, t0: float
    ) -> None:
        extra = {"protocol": PROTOCOL_VERSION} if err.code == ErrorCode.INCOMPATIBLE_VERSION else {}
        self._send(Outgoing(identity, error_parts(parent, req_type, err, **extra)))
        self._log_request(identity, req_type or "?", parent, f"error {err.code}: {err.message}", t0)

    def _flush_outbox(self) -> None:
        for msg in self.outbox.take_all():
            self._send(msg)
            self._log_worker_reply(msg)

    def _send(self, msg: Outgoing) -> None:
        try:
            self.socket.send_multipart([msg.identity, *msg.parts], zmq.NOBLOCK)
        except zmq.Again:
            level = logging.DEBUG if msg.droppable else logging.WARNING
            log.log(level, "client %s is not reading; dropped a message", _client_tag(msg.identity))
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self._client_gone(msg.identity)
            else:
                log.warning("send to %s failed: %s", _client_tag(msg.identity), e)

    def _client_gone(self, identity: bytes) -> None:
        for key in [k for k in self._pending if k[0] == identity]:
            del self._pending[key]
        if self.sessions.owned_by(identity):
            log.info("client %s disconnected; closing its sessions", _client_tag(identity))
            self.worker.submit(Job("client_gone", identity))

    def _close_idle(self, now: float) -> None:
        self._idle_submitted &= {r.id for r in self.sessions.all()}
        for rec in self.sessions.idle(now, self.limits.idle_timeout_s):
            if rec.id not in self._idle_submitted:
                self._idle_submitted.add(rec.id)
                self.worker.submit(Job("idle_close", rec.owner, session_id=rec.id))

    # ----- logging ------------------------------------------------------------------------------
    def _log_worker_reply(self, msg: Outgoing) -> None:
        """One info line per compute request, when its reply leaves (events are not logged)."""
        if msg.droppable:
            return
        try:
            import msgpack

            header = msgpack.unpackb(msg.parts[0], raw=False)
        except Exception:
            return
        if not str(header.get("type", "")).endswith("_reply"):
            return
        pending = self._pending.pop((msg.identity, header.get("parent")), None)
        if pending is None:
            return
        req_type, t0 = pending
        content = header.get("content") or {}
        outcome = (
            "ok" if header.get("status") == "ok" else f"error {content.get('code')}: {content.get('message')}"
        )
        self._log_request(msg.identity, req_type, header.get("parent"), outcome, t0)

    def _log_request(
        self, identity: bytes, req_type: str, req_id: str | None, outcome: str, t0: float
    ) -> None:
        log.info(
            "%s id=%s client=%s %s (%.1f ms)",
            req_type,
            req_id,
            _client_tag(identity),
            outcome,
            (time.perf_counter() - t0) * 1000,
        )
