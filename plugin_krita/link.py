"""The daemon link's state and deadlines, without Qt or sockets (unit-tested).

connection.py feeds it what the transport reports (connected or not, replies, the time)
and does what it answers. Keeping this pure is what makes "a dead daemon gives a message
within a few seconds, never a hang" and the reconnect behaviour testable.

States:
    offline     nothing configured / closed by the user
    connecting  socket created, waiting for the transport and the hello reply
    ready       hello answered: requests may be sent
    lost        was ready, the transport dropped; ZeroMQ reconnects by itself, we re-hello
    failed      no daemon within the connect timeout, or hello refused (message says why)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

OFFLINE, CONNECTING, READY, LOST, FAILED = "offline", "connecting", "ready", "lost", "failed"
REQUEST_TIMEOUT_S = 15.0
COMPUTE_TIMEOUT_S = 180.0  # generate on a CPU daemon can take a while


@dataclass
class LinkState:
    """Where the link stands; every transition returns the actions connection.py must take."""

    endpoint: str = ""
    connect_timeout: float = 4.0
    state: str = OFFLINE
    message: str = "not connected"
    hello: dict[str, Any] | None = None
    deadline: float | None = None
    hello_sent: bool = False

    def start(self, endpoint: str, now: float) -> None:
        self.endpoint = endpoint
        self.state, self.hello, self.hello_sent = CONNECTING, None, False
        self.deadline = now + self.connect_timeout
        self.message = f"connecting to {endpoint}…"

    def stop(self) -> None:
        self.state, self.hello, self.deadline, self.hello_sent = OFFLINE, None, None, False
        self.message = "not connected"

    def on_transport(self, connected: bool, now: float) -> list[str]:
        """The transport is (still) up or down. Returns ["hello"] when a hello must be sent."""
        if self.state in (CONNECTING, LOST, FAILED) and connected and not self.hello_sent:
            # FAILED too: a daemon started after we gave up is picked up as soon as it appears
            self.hello_sent = True
            self.deadline = now + self.connect_timeout
            return ["hello"]
        if self.state == READY and not connected:
            self.state, self.hello_sent = LOST, False
            self.deadline = None
            self.message = f"lost the daemon at {self.endpoint}; reconnecting…"
            return ["fail_pending"]
        return []

    def on_hello(self, content: dict[str, Any]) -> None:
        self.state, self.hello, self.deadline = READY, content, None
        models = content.get("models") or []
        default = content.get("default_model", "")
        info = next((m for m in models if m.get("name") == default), models[0] if models else {})
        res = info.get("resolution")
        self.message = (
            f"connected to {self.endpoint} ({content.get('device', '?')}); model {default or '?'}"
            + (f", {res} px" if res else "")
        )

    def on_hello_failed(self, message: str) -> None:
        """A refused hello (e.g. another protocol version) stays failed: hello_sent is kept."""
        self.state, self.hello, self.deadline = FAILED, None, None
        self.message = message

    def tick(self, now: float) -> list[str]:
        """Time passes: a connect that takes too long fails (with advice); returns ["give_up"]."""
        if self.state == CONNECTING and self.deadline is not None and now >= self.deadline:
            self.state, self.deadline, self.hello_sent = FAILED, None, False
            self.message = (
                f"no daemon answered at {self.endpoint} within {self.connect_timeout:g} s. Is it running? "
                "Start it with `draggan-daemon` (or `python install.py --run`); for a remote GPU check "
                "the host, port and CURVE keys"
            )
            return ["give_up"]
        return []

    @property
    def ready(self) -> bool:
        return self.state == READY

    def default_model(self) -> dict[str, Any]:
        """The daemon's default model info (name, resolution, num_ws, w_dim)."""
        if not self.hello:
            return {}
        models = self.hello.get("models") or []
        name = self.hello.get("default_model")
        return next((m for m in models if m.get("name") == name), models[0] if models else {})


@dataclass
class Pending:
    on_reply: Callable[[Any], None]
    on_error: Callable[[str], None]
    deadline: float
    what: str
    request_id: str = ""  # so the client can forget the reply callback of a request given up on


@dataclass
class PendingRequests:
    """Requests in flight with their deadlines; expired or orphaned ones fail with a message."""

    items: dict[str, Pending] = field(default_factory=dict)

    def add(self, request_id: str, pending: Pending) -> None:
        pending.request_id = request_id
        self.items[request_id] = pending

    def resolve(self, request_id: str) -> Pending | None:
        return self.items.pop(request_id, None)

    def expire(self, now: float) -> list[tuple[Pending, str]]:
        """Remove and return requests past their deadline, each with the message to show."""
        out = []
        for request_id in [r for r, p in self.items.items() if now >= p.deadline]:
            p = self.items.pop(request_id)
            out.append((p, f"the daemon did not answer '{p.what}' in time"))
        return out

    def fail_all(self, reason: str) -> list[tuple[Pending, str]]:
        out = [(p, reason) for p in self.items.values()]
        self.items.clear()
        return out
