"""Session lifecycle against real daemon processes: vanished clients, limits, idle timeout, restarts."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image as PILImage

from daemon.client import Client, DaemonError
from daemon.protocol import ErrorCode

FAR = {"stop_distance": 0.0}  # never converges: runs end by max_steps or stop


def pixels(img) -> np.ndarray:
    if img.encoding == "raw":
        return np.frombuffer(img.data, np.uint8).reshape(img.height, img.width, 3)
    return np.asarray(PILImage.open(io.BytesIO(img.data)).convert("RGB"))


@pytest.fixture(scope="module")
def small_daemon(spawn_daemon):
    """Two sessions at most; sessions idle for 1.5 s are closed."""
    d = spawn_daemon("--max-sessions", "2", "--idle-timeout", "1.5")
    yield d
    assert d.stop() == 0


def poll(predicate, timeout: float = 15.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_client_vanishing_mid_stream_is_cleaned_up(small_daemon) -> None:
    with Client(small_daemon.endpoint) as other:
        latent = other.generate(seed=1).latent
        gone = Client(small_daemon.endpoint)
        stream = gone.start_drag(
            latent,
            [[60, 60]],
            [[200, 200]],
            params=FAR,
            max_steps=10000,
            preview={"interval_ms": 0, "size": 32},
        )
        gone.wait_until(lambda: len(stream.events) >= 3, 30)
        assert len(other.status()["sessions"]) == 1
        gone.close()  # no close_session, no goodbye: the socket just disappears

        assert poll(lambda: other.status()["sessions"] == []), other.status()
        assert "disconnected; closing its sessions" in small_daemon.log()
        # Everyone else is unaffected.
        s = other.start_drag(latent.id, [[100, 100]], [[110, 100]], params=FAR, max_steps=3)
        assert s.wait().content["reason"] == "max_steps"
        other.close_session(s.session)


def test_session_limit_and_idle_timeout(small_daemon) -> None:
    with Client(small_daemon.endpoint) as c:
        latent = c.generate(seed=2).latent
        s1 = c.start_drag(latent.id, [[60, 60]], [[70, 60]], params=FAR, max_steps=2, previews=False)
        s2 = c.start_drag(latent.id, [[60, 60]], [[70, 60]], params=FAR, max_steps=2, previews=False)
        with pytest.raises(DaemonError) as info:
            c.start_drag(latent.id, [[60, 60]], [[70, 60]], max_steps=2)
        assert info.value.code == ErrorCode.TOO_MANY_SESSIONS and "limit is 2" in info.value.message
        final = s1.wait().latent()
        s2.wait()
        # Until it is closed, a session's latest latent is retrievable by id ...
        assert c.get_latent(final.id) == final
        # ... and sessions idle longer than --idle-timeout are closed.
        assert poll(lambda: c.status()["sessions"] == [])
        assert "closed after" in small_daemon.log()
        with pytest.raises(DaemonError) as info:
            c.update_drag(s1.session, targets=[[80, 60]], resume=True)
        assert info.value.code == ErrorCode.UNKNOWN_SESSION
        assert c.get_latent(final.id) == final  # still in the latent cache after the close


def test_daemon_restart_continue_from_kept_latent(start_daemon, free_port) -> None:
    port = free_port()
    first = start_daemon(port=port)
    with Client(first.endpoint, connect_timeout=5.0) as c:
        start = c.generate(seed=21)
        run = c.start_drag(start.latent.id, [[90, 90]], [[130, 100]], params=FAR, max_steps=4, previews=False)
        done = run.wait()
        kept_latent, kept_image = done.latent(), pixels(done.image())  # what the plugin keeps in its history
        kept_points = done.content["points"]

        assert first.stop() == 0  # SIGTERM: clean shutdown
        assert "shutting down" in first.log() and "stopped" in first.log()
        start_daemon(port=port)  # a fresh daemon on the same endpoint knows nothing ...
        with pytest.raises(DaemonError) as info:
            c.get_latent(kept_latent.id)
        assert info.value.code == ErrorCode.UNKNOWN_LATENT
        # ... until the client re-uploads: same id, same picture, and the edit goes on from there.
        assert c.put_latent(kept_latent) == kept_latent.id
        assert np.array_equal(pixels(c.render(kept_latent.id, encoding="raw")), kept_image)
        more = c.start_drag(kept_latent, kept_points, [[130, 100]], params=FAR, max_steps=3, previews=False)
        assert more.reply.content["latent_id"] == kept_latent.id
        steps = [e.content for e in more.iter_events() if e.type == "drag_step"]
        # Tracking starts where the first daemon's edit ended (the points' features are unchanged).
        assert steps[0]["points"] == kept_points
        assert more.result.content["reason"] == "max_steps"


def test_per_request_log_lines(daemon) -> None:
    with Client(daemon.endpoint) as c:
        c.hello()
        c.status()
        c.generate(seed=99)
    log = daemon.log()
    assert " hello id=" in log and " status id=" in log and " generate id=" in log
    assert "ok (" in log
