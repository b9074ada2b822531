"""The compute side of the daemon: one compute thread with a fair drag scheduler, and an encoder.

The compute thread alone touches models and engine sessions (the device). Each turn it applies
all control jobs (updates, stops, closes), runs at most one heavy job (load, generate, render,
drag start), then steps running drags: with batch_steps every running drag takes one step, the
drags that can share a forward (engine.batch_key: same model and settings) as one batch; without,
the next running drag in round-robin order takes one. Either way every drag progresses equally.
Everything it produces goes, in order, through a single encoder thread (PNG/JPEG/WebP off the
compute thread) into the Outbox, which wakes the socket thread: zmq sockets never cross threads.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import zmq

from .encoding import encode_image
from .models import ModelError, ModelRegistry, UnknownModel
from .protocol import (
    ErrorCode,
    Image,
    Latent,
    Limits,
    ProtocolError,
    Request,
    check_points_in_image,
    error_parts,
    event_parts,
    reply_parts,
)
from .sessions import LatentCache, SessionRecord, SessionTable, find_latent

log = logging.getLogger("draggan.daemon")

CONTROL_JOBS = frozenset(("drag_update", "drag_stop", "close_session", "client_gone", "idle_close"))
HEAVY_JOBS = frozenset(("load_model", "generate", "render", "drag_start", "preload"))
MAX_FRAMES_IN_FLIGHT = 2  # per session: skip preview frames rather than queue them
# CUDA-graph drags step as one batch only once their group has kept its members this many rounds:
# capturing a batch graph costs ~25 steps' worth (docs/benchmarks.md), so a group that changes
# every few rounds (drags starting and ending) steps one by one on the drags' own graphs meanwhile.
STABLE_ROUNDS_BEFORE_GRAPHED_BATCH = 8


# --------------------------------------------------------------------------- thread hand-off


class Outgoing(NamedTuple):
    identity: bytes
    parts: list[bytes]
    droppable: bool = False  # preview frames may be dropped for a slow client
    reply_to: str | None = None  # replies: the request id (for the socket thread's bookkeeping)
    outcome: str = "ok"  # replies: "ok" or "error CODE: message", for the per-request log line


class Outbox:
    """Messages for the socket thread, posted from any thread; an inproc PAIR rings its poller."""

    def __init__(self, ctx: zmq.Context):
        address = f"inproc://draggan-outbox-{id(self):x}"
        self.wakeup = ctx.socket(zmq.PAIR)  # the socket thread polls this one
        self.wakeup.bind(address)
        self._bell = ctx.socket(zmq.PAIR)
        self._bell.connect(address)
        self._bell_lock = threading.Lock()  # the bell is shared by threads: serialise its use
        self._queue: queue.SimpleQueue[Outgoing] = queue.SimpleQueue()

    def post(self, msg: Outgoing) -> None:
        self._queue.put(msg)
        with self._bell_lock, contextlib.suppress(zmq.Again):  # enough rings are pending already
            self._bell.send(b"", zmq.NOBLOCK)

    def take_all(self) -> list[Outgoing]:
        """Socket thread: silence the bell, then take everything queued (no wakeup is lost)."""
        while True:
            try:
                self.wakeup.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def close(self) -> None:
        self._bell.close(linger=0)
        self.wakeup.close(linger=0)


class RoundRobin:
    """Keys taken in turn: next() returns the head and moves it to the back."""

    def __init__(self) -> None:
        self._order: deque[Hashable] = deque()

    def add(self, key: Hashable) -> None:
        if key not in self._order:
            self._order.append(key)

    def remove(self, key: Hashable) -> None:
        with contextlib.suppress(ValueError):
            self._order.remove(key)

    def next(self) -> Hashable | None:
        if not self._order:
            return None
        key = self._order[0]
        self._order.rotate(-1)
        return key

    def snapshot(self) -> list[Hashable]:
        return list(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._order


@dataclass
class Job:
    kind: str  # a request type, or client_gone / idle_close / preload
    identity: bytes = b""
    request: Request | None = None
    session_id: str | None = None
    t0: float = field(default_factory=time.perf_counter)


# --------------------------------------------------------------------------- helpers


def latent_array(latent: Latent, field_path: str = "content.latent") -> np.ndarray:
    """float32 [num_ws, w_dim] copy of a latent; invalid_field if it holds NaN or inf."""
    arr = np.frombuffer(latent.data, dtype="<f4").reshape(latent.shape).astype(np.float32)
    if not np.isfinite(arr).all():
        raise ProtocolError(
            ErrorCode.INVALID_FIELD, f"{field_path} contains NaN or infinite values", field_path
        )
    return arr


def latent_of(arr: np.ndarray) -> Latent:
    arr = np.ascontiguousarray(arr, dtype="<f4")
    return Latent(tuple(arr.shape), arr.tobytes())  # type: ignore[arg-type]


def check_latent_shape(latent: Latent, shape: tuple[int, int] | None, model: str, field_path: str) -> None:
    if shape is not None and tuple(latent.shape) != tuple(shape):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"{field_path} has shape {list(latent.shape)}; model {model!r} needs {list(shape)}",
            f"{field_path}.shape",
        )


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom_types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if t is not None
    )
    if oom_types and isinstance(exc, oom_types):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def classify(exc: BaseException, fallback: str) -> ProtocolError:
    """Map an exception from models/engine to the protocol's error codes."""
    from engine.errors import DragInputError

    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, UnknownModel):
        return ProtocolError(ErrorCode.UNKNOWN_MODEL, str(exc.args[0]), "content.model")
    if isinstance(exc, ModelError):
        return ProtocolError(ErrorCode.MODEL_ERROR, str(exc))
    if isinstance(exc, DragInputError):
        return ProtocolError(ErrorCode.INVALID_FIELD, str(exc))
    if is_out_of_memory(exc):
        _free_device_cache()
        return ProtocolError(ErrorCode.OUT_OF_MEMORY, f"the device ran out of memory ({str(exc)[:200]})")
    log.exception("%s", fallback, exc_info=exc)
    return ProtocolError(fallback, f"{type(exc).__name__}: {str(exc)[:300]}")


def _free_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _step_content(
    rec: SessionRecord, points: np.ndarray, distances: np.ndarray, loss: float
) -> dict[str, Any]:
    return {
        "step": rec.step,
        "run_step": rec.run_steps,
        "points": points.tolist(),
        "targets": rec.engine.targets.tolist(),
        "distances": distances.tolist(),
        "loss": float(loss) if np.isfinite(loss) else None,
    }


def _mask_array(mask: dict[str, Any] | None, resolution: int, field_path: str) -> np.ndarray | None:
    if mask is None:
        return None
    if (mask["width"], mask["height"]) != (resolution, resolution):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"{field_path} is {mask['width']}x{mask['height']}; the model needs {resolution}x{resolution}",
            field_path,
        )
    return np.frombuffer(mask["data"], dtype=np.uint8).reshape(resolution, resolution) != 0


def _check_pairs(handles: list, targets: list, resolution: int) -> None:
    check_points_in_image(handles, resolution, "content.handles")
    check_points_in_image(targets, resolution, "content.targets")
    if len(handles) != len(targets):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"{len(handles)} handles but {len(targets)} targets; give one target per handle",
            "content.targets",
        )


# --------------------------------------------------------------------------- the compute thread


class Worker:
    """Owns the compute thread and the encoder thread; the socket thread calls submit()."""

    def __init__(
        self,
        registry: ModelRegistry,
        sessions: SessionTable,
        latents: LatentCache,
        outbox: Outbox,
        limits: Limits,
        compile_mode: str = "none",
        batch_steps: bool = False,
        modconv: str = "fused",
    ):
        self._compile = compile_mode  # a daemon setting, not a client's: graphs cost GPU memory
        self._batch_steps = batch_steps
        self._modconv = modconv  # a daemon setting too: it decides which drags can share a batch
        self._batchers: dict[Hashable, Any] = {}  # batch_key -> engine.BatchStepper (holds its graph)
        self._batch_members: dict[
            Hashable, tuple[tuple[str, ...], int]
        ] = {}  # key -> (ids, rounds unchanged)
        self._registry = registry
        self._sessions = sessions
        self._latents = latents
        self._outbox = outbox
        self._limits = limits
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._heavy: deque[Job] = deque()
        self._rr = RoundRobin()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="compute", daemon=True)
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")

    # ----- socket-thread side -----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    @property
    def queued(self) -> int:
        return self._jobs.qsize() + len(self._heavy)

    @property
    def running(self) -> int:
        return len(self._rr)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the job or step in progress, then stop; flush the encoder."""
        self._stopping.set()
        self._jobs.put(None)
        self._thread.join(timeout)
        self._encoder.shutdown(wait=True)

    # ----- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._take_jobs(block=not self._heavy and not self._rr)
                if self._stopping.is_set():
                    break
                if self._heavy:
                    self._do(self._heavy.popleft())
                if self._batch_steps:
                    self._step_all()
                else:
                    key = self._rr.next()
                    if key is not None:
                        self._step(str(key))
            except Exception:  # the loop must survive anything
                log.exception("compute loop error")
        self._refuse_all()

    def _refuse_all(self) -> None:
        """At shutdown: queued requests get `shutting_down` replies, cut-short runs a drag_error."""
        err = ProtocolError(ErrorCode.SHUTTING_DOWN, "the daemon is shutting down")
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._heavy.append(job)
        for job in self._heavy:
            if job.request is not None:
                if job.session_id is not None and job.kind == "drag_start":
                    self._sessions.remove(job.session_id)
                self._reply_error(job, err)
        self._heavy.clear()
        for key in self._rr.snapshot():
            rec = self._sessions.get(str(key))
            if rec is not None:
                self._event(rec, "drag_error", {**err.content(), "step": rec.step})

    def _take_jobs(self, block: bool) -> None:
        """Apply every control job now; queue heavy ones (one runs per turn)."""
        try:
            job = self._jobs.get(timeout=0.2) if block else self._jobs.get_nowait()
        except queue.Empty:
            return
        while job is not None:
            if job.kind in CONTROL_JOBS:
                self._do(job)
            else:
                self._heavy.append(job)
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return

    def _do(self, job: Job) -> None:
        try:
            getattr(self, f"_job_{job.kind}")(job)
        except Exception as e:
            err = classify(e, ErrorCode.INTERNAL_ERROR)
            if job.request is not None:
                self._reply_error(job, err)
            else:
                log.warning("%s failed: %s", job.kind, err.message)

    # ----- output (always through the encoder thread, so order is kept) -----------------------
    def _emit(
        self,
        identity: bytes,
        build: Callable[[], list[bytes]],
        *,
        droppable: bool = False,
        on_error: Callable[[ProtocolError], list[bytes]] | None = None,
        reply_to: str | None = None,
        outcome: str = "ok",
    ) -> None:
        """Build a message on the encoder thread and post it. If building fails, a droppable
        message (a preview frame) is skipped; any other is replaced by `on_error(err)` (an error
        reply or a drag_error), so a client never waits for a message that will not come."""

        def task() -> None:
            try:
                self._outbox.post(Outgoing(identity, build(), droppable, reply_to, outcome))
                return
            except Exception as e:
                if droppable or on_error is None:
                    log.warning("skipped a preview frame: %s: %s", type(e).__name__, e)
                    return
                err = classify(e, ErrorCode.INTERNAL_ERROR)
            try:
                failed = f"error {err.code}: {err.message}"
                self._outbox.post(Outgoing(identity, on_error(err), False, reply_to, failed))
            except Exception:  # only a bug can get here
                log.exception("building an error message failed too")

        self._encoder.submit(task)

    def _reply(self, job: Job, build: Callable[[], tuple[dict[str, Any], list[bytes]]]) -> None:
        req = job.request
        assert req is not None

        def parts() -> list[bytes]:
            content, frames = build()
            return reply_parts(req.id, req.type, content, frames)

        self._emit(
            job.identity, parts, on_error=lambda err: error_parts(req.id, req.type, err), reply_to=req.id
        )

    def _reply_error(self, job: Job, err: ProtocolError) -> None:
        req = job.request
        assert req is not None

        self._emit(
            job.identity,
            lambda: error_parts(req.id, req.type, err),
            on_error=lambda e: error_parts(req.id, req.type, e),
            reply_to=req.id,
            outcome=f"error {err.code}: {err.message}",
        )

    def _event(self, rec: SessionRecord, msg_type: str, content: dict[str, Any]) -> None:
        parent, sid, step = rec.parent, rec.id, rec.step
        self._emit(
            rec.owner,
            lambda: event_parts(parent, sid, msg_type, content),
            on_error=lambda err: event_parts(parent, sid, "drag_error", {**err.content(), "step": step}),
        )

    def _image_reply(
        self,
        job: Job,
        rgb: np.ndarray,
        opts: dict[str, Any],
        extra: dict[str, Any],
        latent: Latent | None = None,
    ) -> None:
        def build() -> tuple[dict[str, Any], list[bytes]]:
            img = _encode(rgb, opts, fast=False)
            content, frames = {**extra, "image": img.blob(0)}, [img.data]
            if latent is not None:
                content["latent"] = latent.blob(1)
                frames.append(latent.data)
            return content, frames

        self._reply(job, build)

    # ----- lookups ----------------------------------------------------------------------------
    def _own_session(self, job: Job) -> SessionRecord:
        assert job.request is not None
        sid = job.request.content["session"]
        rec = self._sessions.get(sid, owner=job.identity)
        if rec is None:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"no session {sid!r} of yours", "content.session")
        return rec

    def _resolve_latent(self, ref: str | dict[str, Any], model: str, owner: bytes) -> Latent:
        if isinstance(ref, str):
            latent = find_latent(self._latents, self._sessions, ref, owner)
            if latent is None:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_LATENT,
                    f"latent {ref!r} is not held by this daemon (restarted, or evicted from its cache); "
                    "upload the latent's bytes instead",
                    "content.latent",
                )
        else:
            latent = Latent(ref["shape"], ref["data"])
        check_latent_shape(latent, self._registry.entry(model).latent_shape(), model, "content.latent")
        latent_array(latent)  # reject NaN/inf before anything uses it
        self._latents.put(latent)
        return latent

    # ----- heavy jobs -------------------------------------------------------------------------
    def _job_preload(self, job: Job) -> None:
        self._registry.get(None)

    def _job_load_model(self, job: Job) -> None:
        assert job.request is not None
        name = job.request.content["model"]
        self._registry.get(name)
        info = self._registry.entry(name).info()
        self._reply(job, lambda: ({"model": info}, []))

    def _job_generate(self, job: Job) -> None:
        from engine.latent import latent_from_seed, render_latent

        assert job.request is not None
        c = job.request.content
        G = self._registry.get(c.get("model"))
        ws = latent_from_seed(G, c["seed"], c["psi"])
        latent = latent_of(ws[0].cpu().numpy())
        self._latents.put(latent)
        rgb = render_latent(G, ws, _render_size(c["image"], G.img_resolution))
        self._image_reply(job, rgb, c["image"], {}, latent)

    def _job_render(self, job: Job) -> None:
        from engine.latent import render_latent

        assert job.request is not None
        c = job.request.content
        model = c.get("model") or self._registry.default
        G = self._registry.get(model)
        latent = self._resolve_latent(c["latent"], model, job.identity)
        rgb = render_latent(G, latent_array(latent), _render_size(c["image"], G.img_resolution))
        self._image_reply(job, rgb, c["image"], {"latent_id": latent.id})

    def _job_drag_start(self, job: Job) -> None:
        from engine.params import DragParams
        from engine.session import DragSession

        assert job.request is not None and job.session_id is not None
        rec = self._sessions.get(job.session_id)
        if rec is None:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "the session was closed before it started")
        c = job.request.content
        try:
            G = self._registry.get(rec.model)
            res = int(G.img_resolution)
            latent = self._resolve_latent(c["latent"], rec.model, job.identity)
            _check_pairs(c["handles"], c["targets"], res)
            mask = _mask_array(c["mask"], res, "content.mask")
            params = DragParams(**{**c["params"], "compile": self._compile, "modconv": self._modconv})
            rec.engine = DragSession(
                G, latent_array(latent), np.array(c["handles"]), np.array(c["targets"]), mask, params
            )
        except BaseException:
            self._sessions.remove(rec.id)
            raise
        rec.latent = latent
        rec.preview, rec.final, rec.max_steps = c["preview"], c["final"], c["max_steps"]
        content = {"session": rec.id, "latent_id": latent.id, "resolution": res, "state": "running"}
        self._reply(job, lambda: (content, []))
        self._begin_run(rec, job.request.id)

    # ----- control jobs -----------------------------------------------------------------------
    def _job_drag_update(self, job: Job) -> None:
        assert job.request is not None
        rec = self._own_session(job)
        eng = rec.engine
        if eng is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SESSION,
                "the session is still starting; wait for the drag_start reply",
                "content.session",
            )
        c = job.request.content
        apply = _validated_update(eng, c)  # everything is checked before anything changes
        apply()
        if "preview" in c:
            rec.preview = c["preview"]
        if "max_steps" in c:
            rec.max_steps = c["max_steps"]
        rec.touch()
        resume = c["resume"] and rec.state != "running"
        state = "running" if resume else rec.state
        content = {"session": rec.id, "state": state, "step": rec.step, "resumed": bool(resume)}
        self._reply(job, lambda: (content, []))
        if resume:
            self._begin_run(rec, job.request.id)

    def _job_drag_stop(self, job: Job) -> None:
        rec = self._own_session(job)
        running = rec.state == "running"
        content = {"session": rec.id, "state": "idle" if running else rec.state, "was_running": running}
        self._reply(job, lambda: (content, []))
        if running:
            self._finish_or_fail(rec, "stopped")

    def _job_close_session(self, job: Job) -> None:
        rec = self._own_session(job)
        if rec.state == "running":
            self._finish_or_fail(rec, "closed")
        self._close(rec)
        latent_id = rec.latent.id if rec.latent is not None else None
        self._reply(job, lambda: ({"session": rec.id, "latent_id": latent_id}, []))

    def _job_client_gone(self, job: Job) -> None:
        recs = self._sessions.owned_by(job.identity)
        for rec in recs:
            self._close(rec)
        if recs:
            log.info("client %s gone: closed %d session(s)", job.identity.hex()[:8], len(recs))

    def _job_idle_close(self, job: Job) -> None:
        assert job.session_id is not None
        rec = self._sessions.get(job.session_id)
        idle_s = time.monotonic() - rec.last_activity if rec is not None else 0.0
        if rec is not None and rec.state in ("idle", "error") and idle_s > self._limits.idle_timeout_s:
            self._close(rec)
            log.info("session %s closed after %.0f s idle", rec.id, time.monotonic() - rec.last_activity)

    # ----- drags ------------------------------------------------------------------------------
    def _begin_run(self, rec: SessionRecord, parent: str) -> None:
        # -inf: the first step of a run always gets a frame (monotonic() may be small after boot).
        rec.parent, rec.run_steps, rec.last_frame_at, rec.state = parent, 0, float("-inf"), "running"
        rec.touch()
        self._rr.add(rec.id)

    def _step(self, sid: str) -> None:
        rec = self._running(sid)
        if rec is None:
            return
        try:
            result = rec.engine.step()
        except Exception as e:
            self._fail(rec, e)
            return
        self._after_step(rec, result)

    def _running(self, sid: str) -> SessionRecord | None:
        rec = self._sessions.get(sid)
        if rec is None or rec.state != "running" or rec.engine is None:
            self._rr.remove(sid)
            return None
        return rec

    def _step_all(self) -> None:
        """One step of every running drag; those that can share a forward as one batch."""
        from engine.batch import BatchStepper, batch_key

        groups: dict[Hashable, list[SessionRecord]] = {}
        for sid in self._rr.snapshot():
            rec = self._running(str(sid))
            if rec is not None:
                groups.setdefault(batch_key(rec.engine), []).append(rec)
        for key in [k for k in self._batch_members if k not in groups]:
            del self._batch_members[key]
        for key in [k for k in self._batchers if k not in groups or len(groups[k]) < 2]:
            del self._batchers[key]  # its group is gone: free its CUDA graph
        for key, recs in groups.items():
            # a member's new handles or mask (a new graph version) also restarts the count
            members = tuple(f"{rec.id}@{rec.engine.graph_version}" for rec in recs)
            if self._batch_members.get(key, ((), 0))[0] != members:
                self._batch_members[key] = (members, 0)
                if len(recs) > 1:
                    log.debug("%d drags can share a batch: %s", len(recs), ", ".join(members))
            members, stable = self._batch_members[key]
            self._batch_members[key] = (members, stable + 1)
            graphed = recs[0].engine.params.compile != "none"
            if len(recs) == 1 or (graphed and stable < STABLE_ROUNDS_BEFORE_GRAPHED_BATCH):
                for rec in recs:
                    self._step(rec.id)
                continue
            if stable == (STABLE_ROUNDS_BEFORE_GRAPHED_BATCH if graphed else 0):
                log.debug("stepping %d drags as one batch: %s", len(recs), ", ".join(members))
            stepper = self._batchers.setdefault(key, BatchStepper())
            try:
                results = stepper.step([rec.engine for rec in recs])
            except Exception as e:  # find the culprit: step them one by one (each fails on its own)
                log.warning("batched step of %d drags failed (%s); stepping them one by one", len(recs), e)
                self._batchers.pop(key, None)
                if is_out_of_memory(e):
                    _free_device_cache()
                for rec in recs:
                    self._step(rec.id)
                continue
            for rec, result in zip(recs, results, strict=True):
                self._after_step(rec, result)

    def _after_step(self, rec: SessionRecord, result: Any) -> None:
        rec.step, rec.run_steps = result.step, rec.run_steps + 1
        rec.touch()
        self._event(rec, "drag_step", _step_content(rec, result.points, result.distances, result.loss))
        try:
            if result.done:
                self._finish(rec, "converged")
            elif rec.run_steps >= rec.max_steps:
                self._finish(rec, "max_steps")
            else:
                self._maybe_frame(rec)
        except Exception as e:
            self._fail(rec, e)

    def _maybe_frame(self, rec: SessionRecord) -> None:
        opts = rec.preview
        now = time.monotonic()
        if opts is None or now - rec.last_frame_at < opts["interval_ms"] / 1000:
            return
        if rec.frames_in_flight() >= MAX_FRAMES_IN_FLIGHT:
            return
        rec.last_frame_at = now
        res = rec.engine.resolution
        size = opts["size"] or min(res, 256)
        try:  # on CUDA rendered on a side stream; the encoder thread waits for it, not this one
            pending = rec.engine.render_async(None if size == res else size)
        except Exception as e:  # a preview is optional: skip it, the drag goes on
            if is_out_of_memory(e):
                _free_device_cache()
            log.warning("session %s: skipped the preview frame of step %d: %s", rec.id, rec.step, e)
            return
        rec.add_frame_in_flight(1)
        parent, sid, step = rec.parent, rec.id, rec.step

        def build() -> list[bytes]:
            try:
                img = _encode(pending.result(), opts, fast=True)
            finally:
                rec.add_frame_in_flight(-1)
            return event_parts(parent, sid, "drag_frame", {"step": step, "image": img.blob(0)}, [img.data])

        self._emit(rec.owner, build, droppable=True)

    def _finish(self, rec: SessionRecord, reason: str) -> None:
        """End the run: the full-size image and latent go out in drag_done, the last event of the run.

        If the image cannot be made (render or encoding fails), the run ends with a drag_error that
        still carries the edited latent, so the progress is not lost.
        """
        self._rr.remove(rec.id)
        eng = rec.engine
        try:
            rgb: np.ndarray | None = eng.render(_render_size(rec.final, eng.resolution))
            render_error = None
        except Exception as e:
            rgb, render_error = None, classify(e, ErrorCode.ENGINE_ERROR)
        latent = latent_of(eng.latent())
        self._latents.put(latent)
        rec.latent, rec.state = latent, "idle" if render_error is None else "error"
        rec.touch()
        parent, sid, final, step = rec.parent, rec.id, rec.final, rec.step

        def error_with_latent(err: ProtocolError) -> list[bytes]:
            body = {**err.content(), "step": step, "latent": latent.blob(0)}
            return event_parts(parent, sid, "drag_error", body, [latent.data])

        if render_error is not None:
            log.warning("session %s: final image failed at step %d: %s", sid, step, render_error.message)
            self._emit(rec.owner, lambda: error_with_latent(render_error))
            return
        status = eng.status()
        content = {
            "reason": reason,
            "step": step,
            "points": status.points.tolist(),
            "targets": eng.targets.tolist(),
            "distances": status.distances.tolist(),
        }

        def build() -> list[bytes]:
            img = _encode(rgb, final, fast=False)
            body = {**content, "image": img.blob(0), "latent": latent.blob(1)}
            return event_parts(parent, sid, "drag_done", body, [img.data, latent.data])

        self._emit(rec.owner, build, on_error=error_with_latent)

    def _finish_or_fail(self, rec: SessionRecord, reason: str) -> None:
        try:
            self._finish(rec, reason)
        except Exception as e:
            self._fail(rec, e)

    def _fail(self, rec: SessionRecord, exc: BaseException) -> None:
        """One session's failure: it gets drag_error; the daemon and other sessions go on."""
        self._rr.remove(rec.id)
        rec.state = "error"
        rec.touch()
        err = classify(exc, ErrorCode.ENGINE_ERROR)
        log.warning("session %s failed at step %d: %s", rec.id, rec.step, err.message)
        self._event(rec, "drag_error", {"code": err.code, "message": err.message, "step": rec.step})

    def _close(self, rec: SessionRecord) -> None:
        self._rr.remove(rec.id)
        if rec.engine is not None and rec.state != "error":
            try:
                rec.latent = latent_of(rec.engine.latent())
            except Exception as e:  # keep the last good latent
                log.warning("session %s: could not read its latent on close: %s", rec.id, e)
        if rec.latent is not None:
            self._latents.put(rec.latent)
        rec.engine = None
        rec.state = "closed"
        self._sessions.remove(rec.id)


def _validated_update(eng: Any, c: dict[str, Any]) -> Callable[[], None]:
    """Check a drag_update's handles, targets, mask and params against the session; return the
    function that applies them. Raises ProtocolError / DragInputError before anything changes."""
    res = eng.resolution
    actions: list[Callable[[], None]] = []
    if "handles" in c:
        handles, targets = c["handles"], c.get("targets", eng.targets.tolist())
        _check_pairs(handles, targets, res)
        actions.append(lambda: eng.set_points(np.array(handles), np.array(targets)))
    elif "targets" in c:
        targets = c["targets"]
        check_points_in_image(targets, res, "content.targets")
        if len(targets) != len(eng.targets):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"{len(targets)} targets for {len(eng.targets)} handles; send handles too to change "
                "the count",
                "content.targets",
            )
        actions.append(lambda: eng.set_targets(np.array(targets)))
    if "mask" in c:
        mask = _mask_array(c["mask"], res, "content.mask")
        actions.append(lambda: eng.set_mask(mask))
    if c.get("params"):
        new = eng.params.replace(**c["params"])  # DragInputError for bad values
        if new.num_layers > eng.num_ws:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"content.params.num_layers = {new.num_layers} but the model has {eng.num_ws} ws",
                "content.params.num_layers",
            )
        params = c["params"]
        actions.append(lambda: eng.set_params(**params))

    def apply() -> None:
        for action in actions:
            action()

    return apply


def _render_size(opts: dict[str, Any], resolution: int) -> int | None:
    size = opts.get("size")
    return None if size is None or size == resolution else int(size)


def _encode(rgb: np.ndarray, opts: dict[str, Any], fast: bool) -> Image:
    data = encode_image(rgb, opts["encoding"], opts.get("quality"), fast=fast)
    return Image(int(rgb.shape[1]), int(rgb.shape[0]), opts["encoding"], data)
