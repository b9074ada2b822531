"""The daemon's socket thread: one ROUTER socket, request validation, cheap replies, routing.

It never waits on the device: compute requests become jobs for the Worker, whose results come
back through the Outbox. It sends everything, so only this thread touches the ROUTER socket.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from . import __version__
from .encoding import available_encodings
from .keys import AuthorizedKeys
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
from .sessions import LatentCache, SessionTable, TooManySessions, find_latent
from .worker import Job, Outbox, Outgoing, Worker, check_latent_shape, latent_array

log = logging.getLogger("draggan.daemon")

HEARTBEAT_IVL_MS = 2000
HEARTBEAT_TIMEOUT_MS = 6000
IDLE_CHECK_S = 1.0
COMPUTE_REQUESTS = frozenset(("load_model", "generate", "render", "drag_start"))
SESSION_REQUESTS = frozenset(("drag_update", "drag_stop", "close_session"))
IMAGE_OPTION_FIELDS = {
    "generate": ("image",),
    "render": ("image",),
    "drag_start": ("preview", "final"),
    "drag_update": ("preview",),
}
MAX_SEND_BACKLOG = 256  # per client: replies and events waiting for a client that does not read
SEND_HWM = 1000  # messages ZeroMQ queues per client before a send would block


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
    compile: str = "none"  # the engine's DragParams.compile for every drag ("none" | "cudagraph")
    batch_steps: bool = True  # running drags of one model step as one batch (engine.BatchStepper)
    modconv: str = "split"  # the engine's DragParams.modconv for every drag ("split" | "fused")


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
        self.latents = LatentCache(self.limits.latent_cache, self.limits.latent_cache_bytes)
        self.encodings = available_encodings()
        self._stop = threading.Event()
        self._reload_keys = threading.Event()
        self._started = time.monotonic()
        # Requests handed to the worker and not answered yet: the per-request log line, and the
        # per-client bound (max_queued_requests).
        self._pending: dict[tuple[bytes, str], tuple[str, float]] = {}
        self._idle_submitted: dict[str, float] = {}  # session id -> its last_activity when submitted
        self._backlog: dict[bytes, deque[Outgoing]] = {}  # messages the send buffer had no room for
        self.ctx = zmq.Context()
        self._auth: Any = None
        self.authorized_keys: AuthorizedKeys | None = None
        self.socket = self._make_socket()
        self.outbox = Outbox(self.ctx)
        self.worker = Worker(
            registry,
            self.sessions,
            self.latents,
            self.outbox,
            self.limits,
            compile_mode=config.compile,
            batch_steps=config.batch_steps,
            modconv=config.modconv,
        )
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _make_socket(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished client raises EHOSTUNREACH
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.LINGER, 1000)
        curve = self.config.curve
        if curve is not None:
            from zmq.auth.thread import ThreadAuthenticator

            self.authorized_keys = AuthorizedKeys(curve.authorized_dir)
            try:
                self.authorized_keys.load_strict()
            except ValueError:
                sock.close(linger=0)
                raise
            self._auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("draggan.daemon.auth"))
            self._auth.start()
            self._auth.configure_curve_callback(domain="*", credentials_provider=self.authorized_keys)
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

    def reload_keys(self) -> None:
        """Re-read the authorised client keys at the next loop turn (safe from a signal handler)."""
        self._reload_keys.set()

    def serve_forever(self) -> None:
        self.worker.start()
        self.worker.submit(Job("preload"))
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.outbox.wakeup, zmq.POLLIN)
        next_idle_check = time.monotonic() + IDLE_CHECK_S
        try:
            while not self._stop.is_set():
                try:
                    ready = dict(poller.poll(20 if self._backlog else 200))
                    if self.socket in ready:
                        self._receive_all()
                    if self.outbox.wakeup in ready:
                        self._flush_outbox()
                    if self._backlog:
                        self._send_backlog()
                    now = time.monotonic()
                    if now >= next_idle_check or self._reload_keys.is_set():
                        next_idle_check = now + IDLE_CHECK_S
                        self._on_tick(now)
                except Exception:  # a bug: log it, keep serving everyone
                    log.exception("socket loop error")
                    time.sleep(0.05)
        finally:
            self._shutdown()

    def _on_tick(self, now: float) -> None:
        self._close_idle(now)
        if self.authorized_keys is not None:
            force = self._reload_keys.is_set()
            self._reload_keys.clear()
            self.authorized_keys.reload_if_changed(force=force)

    def _shutdown(self) -> None:
        log.info("shutting down")
        self.worker.stop()
        self._flush_outbox()  # final events of runs the worker finished
        self._send_backlog()
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
        if req.type in COMPUTE_REQUESTS or req.type in SESSION_REQUESTS:
            self._check_encodings(req)
            self._check_queue(identity)
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

    def _check_encodings(self, req: Request) -> None:
        """invalid_field now, on this thread, for an encoding this Pillow build cannot write."""
        for key in IMAGE_OPTION_FIELDS.get(req.type, ()):
            opts = req.content.get(key)
            if opts and opts["encoding"] not in self.encodings:
                raise ProtocolError(
                    ErrorCode.INVALID_FIELD,
                    f"content.{key}.encoding {opts['encoding']!r} is not available on this daemon "
                    f"(its Pillow lacks it); available: {list(self.encodings)}",
                    f"content.{key}.encoding",
                )

    def _check_queue(self, identity: bytes) -> None:
        """busy when this client already has max_queued_requests requests waiting for the worker."""
        waiting = sum(1 for ident, _ in self._pending if ident == identity)
        if waiting >= self.limits.max_queued_requests:
            raise ProtocolError(
                ErrorCode.BUSY,
                f"{waiting} of your requests are still waiting for the compute thread (the limit is "
                f"{self.limits.max_queued_requests}); wait for their replies, then retry",
            )

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
            "encodings": list(self.encodings),
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
            "latent_bytes": self.latents.nbytes,
            "uptime_s": round(now - self._started, 3),
        }, []

    def _on_get_latent(self, identity: bytes, c: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        latent = find_latent(self.latents, self.sessions, c["latent_id"], identity)
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
        else:
            self._check_latent_fits_a_model(latent)
        latent_array(latent)
        return {"latent_id": self.latents.put(latent)}, []

    def _check_latent_fits_a_model(self, latent: Latent) -> None:
        """Without a model name, the shape must be that of some registered model (so the cache only
        holds usable latents); a model whose shape is unknown until it loads allows any shape."""
        shapes = [
            (m["num_ws"], m["w_dim"]) if m["num_ws"] and m["w_dim"] else None for m in self.registry.infos()
        ]
        if None in shapes or tuple(latent.shape) in shapes:
            return
        known = [list(shape) for shape in sorted({s for s in shapes if s is not None})]
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"content.latent has shape {list(latent.shape)}; this daemon's models need one of {known}",
            "content.latent.shape",
        )

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
        """Send without blocking. A reply or event the client's send buffer has no room for waits in
        that client's backlog (order kept); a preview frame is dropped instead."""
        backlog = self._backlog.get(msg.identity)
        if backlog is not None:
            if not msg.droppable:
                self._queue_for_later(msg, backlog)
            return
        if not self._try_send(msg) and not msg.droppable:
            self._queue_for_later(msg, self._backlog.setdefault(msg.identity, deque()))

    def _try_send(self, msg: Outgoing) -> bool:
        """True when the message left or can never leave (client gone); False: send buffer full."""
        try:
            self.socket.send_multipart([msg.identity, *msg.parts], zmq.NOBLOCK)
        except zmq.Again:
            if msg.droppable:
                log.debug("client %s is not reading; dropped a preview frame", _client_tag(msg.identity))
            return False
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self._client_gone(msg.identity)
            else:
                log.warning("send to %s failed: %s", _client_tag(msg.identity), e)
        return True

    def _queue_for_later(self, msg: Outgoing, backlog: deque[Outgoing]) -> None:
        backlog.append(msg)
        if len(backlog) > MAX_SEND_BACKLOG:
            log.warning(
                "client %s has not read %d replies/events: dropping them and closing its sessions",
                _client_tag(msg.identity),
                len(backlog),
            )
            self._client_gone(msg.identity, force=True)

    def _send_backlog(self) -> None:
        for identity in list(self._backlog):
            backlog = self._backlog.get(identity)
            while backlog:
                if not self._try_send(backlog[0]):
                    break
                backlog.popleft()
            if not backlog:
                self._backlog.pop(identity, None)

    def _client_gone(self, identity: bytes, force: bool = False) -> None:
        for key in [k for k in self._pending if k[0] == identity]:
            del self._pending[key]
        self._backlog.pop(identity, None)
        if self.sessions.owned_by(identity):
            if not force:
                log.info("client %s disconnected; closing its sessions", _client_tag(identity))
            self.worker.submit(Job("client_gone", identity))

    def _close_idle(self, now: float) -> None:
        """Submit idle_close for sessions idle too long; again if the session was touched since."""
        idle = self.sessions.idle(now, self.limits.idle_timeout_s)
        submitted, self._idle_submitted = self._idle_submitted, {}
        for rec in idle:
            self._idle_submitted[rec.id] = rec.last_activity
            if submitted.get(rec.id) != rec.last_activity:
                self.worker.submit(Job("idle_close", rec.owner, session_id=rec.id))

    # ----- logging ------------------------------------------------------------------------------
    def _log_worker_reply(self, msg: Outgoing) -> None:
        """One info line per worker request, when its reply leaves (events are not logged)."""
        if msg.reply_to is None:
            return
        pending = self._pending.pop((msg.identity, msg.reply_to), None)
        if pending is not None:
            req_type, t0 = pending
            self._log_request(msg.identity, req_type, msg.reply_to, msg.outcome, t0)

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
