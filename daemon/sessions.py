"""Drag-session records and the latent cache, shared by the socket thread and the compute thread.

The tables are guarded by locks; a record's `engine` (the torch DragSession) is touched only
by the compute thread.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .protocol import Latent


class TooManySessions(RuntimeError):
    """The daemon's session limit is reached."""


@dataclass
class SessionRecord:
    id: str
    owner: bytes  # ROUTER routing id of the client that started it
    model: str
    state: str = "starting"  # starting | running | idle | error
    parent: str = ""  # request id whose events the current run emits
    step: int = 0
    run_steps: int = 0
    max_steps: int = 200
    preview: dict[str, Any] | None = None
    final: dict[str, Any] = field(default_factory=dict)
    latent: Latent | None = None  # the latest finished (or starting) latent
    last_activity: float = field(default_factory=time.monotonic)
    last_frame_at: float = float("-inf")
    engine: Any = None  # engine.session.DragSession, compute thread only
    _pending_frames: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    # Encoder backlog of preview frames (written by the compute and the encoder thread).
    def frames_in_flight(self) -> int:
        with self._lock:
            return self._pending_frames

    def add_frame_in_flight(self, delta: int) -> None:
        with self._lock:
            self._pending_frames += delta


class SessionTable:
    """All open sessions, by id; ownership checks on every lookup by a client."""

    def __init__(self, max_sessions: int):
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._records: dict[str, SessionRecord] = {}

    def create(self, owner: bytes, model: str) -> SessionRecord:
        with self._lock:
            if len(self._records) >= self.max_sessions:
                raise TooManySessions(
                    f"{len(self._records)} drag sessions are open (the limit is {self.max_sessions}); "
                    "close a session first"
                )
            rec = SessionRecord(id=f"s-{secrets.token_hex(8)}", owner=owner, model=model)
            self._records[rec.id] = rec
            return rec

    def get(self, session_id: str, owner: bytes | None = None) -> SessionRecord | None:
        """The record, or None if it does not exist or (with `owner`) belongs to someone else."""
        with self._lock:
            rec = self._records.get(session_id)
        if rec is None or (owner is not None and rec.owner != owner):
            return None
        return rec

    def remove(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            return self._records.pop(session_id, None)

    def owned_by(self, owner: bytes) -> list[SessionRecord]:
        with self._lock:
            return [r for r in self._records.values() if r.owner == owner]

    def all(self) -> list[SessionRecord]:
        with self._lock:
            return list(self._records.values())

    def idle(self, now: float, timeout: float) -> list[SessionRecord]:
        """Sessions not running whose last request or step is older than `timeout` seconds."""
        with self._lock:
            return [
                r
                for r in self._records.values()
                if r.state in ("idle", "error") and now - r.last_activity > timeout
            ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


class LatentCache:
    """Latents by content id, least recently used evicted first: at most `capacity` latents and
    `max_bytes` of latent data (the newest one is always kept)."""

    def __init__(self, capacity: int, max_bytes: int | None = None):
        self.capacity = max(1, capacity)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Latent] = OrderedDict()
        self._bytes = 0

    def put(self, latent: Latent) -> str:
        with self._lock:
            if latent.id not in self._items:
                self._bytes += len(latent.data)
            self._items[latent.id] = latent
            self._items.move_to_end(latent.id)
            limit = self.max_bytes if self.max_bytes is not None else float("inf")
            while len(self._items) > 1 and (len(self._items) > self.capacity or self._bytes > limit):
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old.data)
        return latent.id

    def get(self, latent_id: str) -> Latent | None:
        with self._lock:
            latent = self._items.get(latent_id)
            if latent is not None:
                self._items.move_to_end(latent_id)
            return latent

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def find_latent(cache: LatentCache, sessions: SessionTable, latent_id: str, owner: bytes) -> Latent | None:
    """A latent by id: from the cache, else the latest latent of one of `owner`'s sessions."""
    latent = cache.get(latent_id)
    if latent is not None:
        return latent
    for rec in sessions.owned_by(owner):
        if rec.latent is not None and rec.latent.id == latent_id:
            return rec.latent
    return None
