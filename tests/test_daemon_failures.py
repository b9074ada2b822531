"""One session's device failure (out of memory, engine error) is that session's error event only.

The daemon runs in-process (a thread) so the test can make one real engine session fail at a
chosen step; everything else (sockets, worker, encoder, other sessions) is the real thing.
"""

from __future__ import annotations

import threading

import pytest
import torch

from daemon.client import Client, DaemonError
from daemon.models import ModelRegistry
from daemon.protocol import Limits
from daemon.server import DaemonServer, ServerConfig

FAR = {"stop_distance": 0.0}


@pytest.fixture
def server(small_model_path, free_port):
    registry = ModelRegistry.from_specs([str(small_model_path)], torch.device("cpu"))
    srv = DaemonServer(ServerConfig(bind=f"tcp://127.0.0.1:{free_port()}", limits=Limits()), registry)
    thread = threading.Thread(target=srv.serve_forever, name="socket", daemon=True)
    thread.start()
    yield srv
    srv.stop()
    thread.join(20)
    assert not thread.is_alive()


def fail_at(srv: DaemonServer, session: str, step: int, exc: BaseException) -> None:
    """Make the session's engine raise `exc` when it is asked for step number `step`."""
    engine = srv.sessions.get(session).engine
    real_step = engine.step

    def step_or_fail():
        if engine.step_count + 1 >= step:
            raise exc
        return real_step()

    engine.step = step_or_fail


@pytest.mark.parametrize(
    "exc, code",
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
        (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), "engine_error"),
    ],
)
def test_failing_session_gets_error_event_others_go_on(server, exc, code) -> None:
    with Client(server.endpoint) as victim, Client(server.endpoint) as bystander:
        latent = victim.generate(seed=1).latent
        bad = victim.start_drag(
            latent.id, [[60, 60]], [[200, 60]], params=FAR, max_steps=10000, previews=False
        )
        fail_at(server, bad.session, 3, exc)
        good = bystander.start_drag(latent, [[100, 100]], [[120, 100]], params=FAR, max_steps=8)

        with pytest.raises(DaemonError) as info:
            bad.wait()
        assert info.value.code == code
        error = next(e for e in bad.events if e.type == "drag_error")
        assert error.session == bad.session and error.parent == bad.request_id
        assert good.wait().content["reason"] == "max_steps"  # the other drag finished normally

        (state,) = [s["state"] for s in victim.status()["sessions"] if s["mine"]]
        assert state == "error"  # kept with its last good latent until closed
        assert victim.close_session(bad.session).content["latent_id"]
        assert victim.hello()["protocol"] == 1 and bystander.generate(seed=2).image.width == 256


def test_shutdown_mid_drag_ends_streams_with_an_error(small_model_path, free_port) -> None:
    registry = ModelRegistry.from_specs([str(small_model_path)], torch.device("cpu"))
    srv = DaemonServer(ServerConfig(bind=f"tcp://127.0.0.1:{free_port()}"), registry)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    with Client(srv.endpoint) as c:
        latent = c.generate(seed=1).latent
        stream = c.start_drag(latent.id, [[60, 60]], [[200, 60]], params=FAR, max_steps=10000, previews=False)
        c.wait_until(lambda: len(stream.events) >= 2, 30)
        srv.stop()
        with pytest.raises(DaemonError) as info:
            stream.wait(30)
        assert info.value.code == "shutting_down"
    thread.join(20)
    assert not thread.is_alive()
