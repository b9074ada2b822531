"""Review fixes: no lost replies or final results, validation before changes, bounded memory,
idle-session cleanup, a main loop that survives bugs, CURVE key reloads, Client.forget.

The daemon runs in-process (a thread) so a test can inject one real failure (an encoder or
render error, a full send buffer); sockets, worker, encoder and engine are the real thing.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
import zmq

from daemon import server as server_module
from daemon import worker as worker_module
from daemon.client import Client, CurveKeys, DaemonError, DaemonUnavailable, Mask
from daemon.encoding import available_encodings
from daemon.keys import create_client_keys, create_server_keys, load_secret_key_file, server_public_file
from daemon.models import ModelRegistry
from daemon.protocol import ErrorCode, Latent, Limits, pack, parse_message, request_parts
from daemon.server import CurveConfig, DaemonServer, ServerConfig
from daemon.sessions import LatentCache

FAR = {"stop_distance": 0.0}


def serve(srv: DaemonServer):
    thread = threading.Thread(target=srv.serve_forever, name="socket", daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def registry(small_model_path):
    return ModelRegistry.from_specs([str(small_model_path)], torch.device("cpu"))


@pytest.fixture
def make_server(registry, free_port):
    started = []

    def make(limits: Limits | None = None, curve: CurveConfig | None = None) -> DaemonServer:
        srv = DaemonServer(
            ServerConfig(f"tcp://127.0.0.1:{free_port()}", limits or Limits(), curve), registry
        )
        started.append((srv, serve(srv)))
        return srv

    yield make
    for srv, thread in started:
        srv.stop()
        thread.join(20)
        assert not thread.is_alive()


@pytest.fixture
def server(make_server):
    return make_server()


@pytest.fixture
def latent(server) -> Latent:
    with Client(server.endpoint) as c:
        return c.generate(seed=1).latent


def first_error(stream):
    return next(e for e in stream.events if e.type == "drag_error")


# --------------------------------------------------------------------------- 2: nothing silent


def test_unavailable_encoding_is_refused_with_invalid_field(server, monkeypatch) -> None:
    from PIL import features

    real_check = features.check
    monkeypatch.setattr(features, "check", lambda f: f != "webp" and real_check(f))  # Pillow without WebP
    available_encodings.cache_clear()
    try:
        server.encodings = available_encodings()
        with Client(server.endpoint, timeout=5) as c:
            assert "webp" not in c.hello()["encodings"]
            with pytest.raises(DaemonError) as info:
                c.generate(seed=1, encoding="webp")
            assert (info.value.code, info.value.field) == (ErrorCode.INVALID_FIELD, "content.image.encoding")
            with pytest.raises(DaemonError) as info:
                c.start_drag(c.generate(seed=1).latent, [[9, 9]], [[20, 9]], preview={"encoding": "webp"})
            assert info.value.field == "content.preview.encoding"
            assert c.status()["sessions"] == []  # the refused drag_start left no session behind
    finally:
        available_encodings.cache_clear()


def test_encoder_failure_becomes_an_error_reply_or_a_drag_error_with_the_latent(server, monkeypatch) -> None:
    real_encode = worker_module.encode_image

    def encode(rgb, encoding, quality=None, fast=False):
        if encoding == "jpeg":
            raise OSError("encoder broke")
        return real_encode(rgb, encoding, quality, fast)

    monkeypatch.setattr(worker_module, "encode_image", encode)
    with Client(server.endpoint, timeout=10, compute_timeout=10) as c:
        with pytest.raises(DaemonError) as info:
            c.generate(seed=1, encoding="jpeg")  # used to time out: the reply was never sent
        assert info.value.code == ErrorCode.INTERNAL_ERROR and "encoder broke" in info.value.message
        start = c.generate(seed=1).latent
        # jpeg previews are skipped; the jpeg final image fails: the run still ends, with its latent.
        stream = c.start_drag(
            start,
            [[60, 60]],
            [[90, 60]],
            params=FAR,
            max_steps=3,
            preview={"encoding": "jpeg", "interval_ms": 0, "size": 32},
            final={"encoding": "jpeg"},
        )
        with pytest.raises(DaemonError):
            stream.wait(20)
        assert not [e for e in stream.events if e.type == "drag_frame"]
        error = first_error(stream)
        assert error.content["step"] == 3
        edited = error.latent()
        assert edited.shape == (14, 512) and edited.id != start.id
        assert c.get_latent(edited.id) == edited
        assert c.hello()["protocol"] == 1


def test_drag_stop_reply_says_whether_a_run_was_stopped(server, latent) -> None:
    with Client(server.endpoint) as c:
        stream = c.start_drag(latent, [[60, 60]], [[200, 60]], params=FAR, max_steps=10000, previews=False)
        c.wait_until(lambda: len(stream.events) >= 2, 30)
        assert c.stop_drag(stream.session).content["was_running"] is True
        assert stream.wait(20).content["reason"] == "stopped"
        again = c.stop_drag(stream.session).content
        assert again["was_running"] is False and again["state"] == "idle"


def test_replies_wait_for_a_client_that_reads_slowly(make_server, monkeypatch) -> None:
    """A full send buffer used to drop replies silently; now they wait and arrive in order."""
    monkeypatch.setattr(server_module, "SEND_HWM", 1)  # fill the send buffer quickly
    srv = make_server()
    with Client(srv.endpoint) as c:
        latent = c.generate(seed=1).latent
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(srv.endpoint)
    try:
        n = 40
        for i in range(n):  # ~28 KB replies, none read yet
            sock.send_multipart(request_parts("get_latent", f"r{i}", {"latent_id": latent.id}))
        assert wait_for(lambda: srv._backlog, 5)  # the daemon ran into the full send buffer
        got = []
        while len(got) < n and sock.poll(5000):
            got.append(parse_message(sock.recv_multipart()))
        assert [m.parent for m in got] == [f"r{i}" for i in range(n)]
        assert all(m.ok and m.latent() == latent for m in got)
    finally:
        sock.close()


# --------------------------------------------------------------------------- 3: idle sessions


def test_idle_session_touched_after_its_close_was_queued_is_closed_later(registry, free_port) -> None:
    srv = DaemonServer(ServerConfig(f"tcp://127.0.0.1:{free_port()}", Limits(idle_timeout_s=10)), registry)
    try:  # worker not started: the test plays the socket thread's ticks and looks at the job queue
        rec = srv.sessions.create(b"client", registry.default)
        rec.state, rec.last_activity = "idle", 0.0
        srv._close_idle(100.0)
        assert srv.worker.queued == 1  # idle_close submitted ...
        rec.last_activity = 95.0  # ... but the client touched the session before it ran (not closed)
        srv._close_idle(101.0)  # not idle now
        srv._close_idle(106.0)  # idle again for more than the timeout
        assert srv.worker.queued == 2
        srv._close_idle(107.0)
        assert srv.worker.queued == 2  # not re-submitted for the same idle period
    finally:
        srv.outbox.close()
        srv.socket.close(0)
        srv.ctx.term()


# --------------------------------------------------------------------------- 6, 7: drags


def test_invalid_drag_update_changes_nothing(server, latent) -> None:
    with Client(server.endpoint) as c:
        s = c.start_drag(latent, [[60, 60]], [[70, 60]], params=FAR, max_steps=1, previews=False)
        s.wait()
        bad_updates = [
            {"targets": [[90, 60]], "params": {"num_layers": 64}},  # the model has 14 ws
            {"targets": [[90, 60]], "mask": Mask(8, 8, bytes(64))},  # wrong mask size
            {"handles": [[60, 60]], "targets": [[90, 60]], "params": {"feature_block": 99, "lr": 5.0}},
        ]
        for changes in bad_updates:
            with pytest.raises(DaemonError) as info:
                c.update_drag(s.session, **changes)
            assert info.value.code == ErrorCode.INVALID_FIELD
        run = c.update_drag(s.session, resume=True, max_steps=1)
        step = next(e for e in run.iter_events() if e.type == "drag_step")
        assert step.content["targets"] == [[70.0, 60.0]]  # the rejected targets were never applied


def fail_render(srv: DaemonServer, session: str, size, exc: BaseException) -> None:
    engine = srv.sessions.get(session).engine
    real_render = engine.render

    def render(s=None):
        if s == size:
            raise exc
        return real_render(s)

    engine.render = render


def test_preview_render_failure_skips_frames_final_failure_keeps_the_latent(server, latent) -> None:
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with Client(server.endpoint) as c:
        s = c.start_drag(
            latent,
            [[60, 60]],
            [[200, 60]],
            params=FAR,
            max_steps=10000,
            preview={"size": 32, "interval_ms": 0},
        )
        fail_render(server, s.session, 32, oom)  # previews fail from now on
        c.wait_until(lambda: sum(e.type == "drag_step" for e in s.events) >= 4, 30)
        fail_render(server, s.session, None, oom)  # and so does the final image
        c.stop_drag(s.session)
        with pytest.raises(DaemonError) as info:
            s.wait(20)
        assert info.value.code == ErrorCode.OUT_OF_MEMORY
        error = first_error(s)
        edited = error.latent()
        assert edited.shape == (14, 512) and edited.id != latent.id and error.content["step"] >= 4
        assert c.get_latent(edited.id) == edited
        c.close_session(s.session)


# --------------------------------------------------------------------------- 8: bounds


def test_put_latent_shape_must_fit_a_registered_model(server) -> None:
    with Client(server.endpoint) as c:
        odd = Latent((3, 7), np.zeros((3, 7), "<f4").tobytes())
        with pytest.raises(DaemonError) as info:
            c.put_latent(odd)
        assert info.value.field == "content.latent.shape" and "[14, 512]" in info.value.message
        good = Latent((14, 512), np.zeros((14, 512), "<f4").tobytes())
        assert c.put_latent(good) == good.id


def test_latent_cache_is_bounded_by_bytes() -> None:
    def latent(i: int) -> Latent:
        return Latent((14, 512), np.full((14, 512), i, "<f4").tobytes())

    size = 14 * 512 * 4
    cache = LatentCache(capacity=1000, max_bytes=3 * size)
    for i in range(10):
        cache.put(latent(i))
        cache.put(latent(i))  # re-putting is not counted twice
    assert len(cache) == 3 and cache.nbytes == 3 * size
    assert cache.get(latent(9).id) is not None and cache.get(latent(6).id) is None


def test_too_many_queued_requests_get_busy(make_server) -> None:
    srv = make_server(Limits(max_queued_requests=2))
    with Client(srv.endpoint) as c:
        replies = []
        ids = [c.send("generate", {"seed": i}, on_reply=replies.append) for i in range(12)]
        c.wait_until(lambda: len(replies) == len(ids), 60)
        codes = [m.content.get("code") for m in replies if not m.ok]
        assert codes and set(codes) == {ErrorCode.BUSY}
        assert sum(m.ok for m in replies) >= 2
        assert c.generate(seed=3).latent.shape == (14, 512)  # fine again once answered


def test_masks_larger_than_max_image_size_are_refused() -> None:
    from daemon.protocol import ProtocolError, parse_request

    header = {
        "v": 1,
        "type": "drag_start",
        "id": "m",
        "content": {
            "latent": "x",
            "handles": [[1, 1]],
            "targets": [[2, 2]],
            "mask": {"frame": 0, "width": 4096, "height": 1},
        },
    }
    with pytest.raises(ProtocolError) as info:
        parse_request([pack(header), bytes(4096)], Limits(max_image_size=2048))
    assert info.value.field == "content.mask.width"


# --------------------------------------------------------------------------- 9: the main loop


def test_socket_loop_survives_a_bug(server, monkeypatch) -> None:
    calls = []

    def broken_idle(now, timeout):
        calls.append(now)
        raise RuntimeError("a bug in the idle check")

    monkeypatch.setattr(server.sessions, "idle", broken_idle)
    with Client(server.endpoint) as c:
        assert wait_for(lambda: len(calls) >= 2, 5)  # the loop went on after the first failure
        assert c.hello()["protocol"] == 1


# --------------------------------------------------------------------------- 4: CURVE keys


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_curve_keys_are_reloaded_when_the_folder_changes(make_server, tmp_path) -> None:
    keys = tmp_path / "keys"
    create_server_keys(keys)
    _, alice_secret = create_client_keys(keys, "alice")
    bob_public, bob_secret = create_client_keys(keys, "bob")
    server_public, server_secret = load_secret_key_file(keys / "server.key_secret")
    authorized = keys / "authorized_clients"
    (authorized / "bob.key").unlink()
    srv = make_server(curve=CurveConfig(server_public, server_secret, authorized))
    alice = CurveKeys.from_files(server_public_file(keys), alice_secret)
    bob = CurveKeys.from_files(server_public_file(keys), bob_secret)
    with Client(srv.endpoint, curve=alice) as c:
        assert c.hello()["curve"] is True

    (authorized / "alice.key").unlink()  # revoke alice, authorise bob, add a broken file: no restart
    (authorized / "bob.key").write_bytes(bob_public.read_bytes())
    (authorized / "junk.key").write_text('public-key = "not a key"\n')
    assert wait_for(lambda: alice.client_public not in srv.authorized_keys)
    assert bob.client_public in srv.authorized_keys and len(srv.authorized_keys) == 1
    with Client(srv.endpoint, curve=bob) as c:
        assert c.hello()["protocol"] == 1
    with Client(srv.endpoint, curve=alice, connect_timeout=1.0) as c, pytest.raises(DaemonUnavailable):
        c.hello()


def test_a_bad_authorised_key_file_is_named_at_startup(registry, free_port, tmp_path) -> None:
    from daemon.__main__ import _curve_config, build_parser

    keys = tmp_path / "keys"
    create_server_keys(keys)
    create_client_keys(keys, "alice")
    (keys / "authorized_clients" / "broken.key").write_text("no key here\n")
    args = build_parser().parse_args(["--curve", "--keys-dir", str(keys), "--bind", "tcp://0.0.0.0:1"])
    with pytest.raises(ValueError, match=r"broken\.key"):
        _curve_config(args, loopback=False)
    public, secret = load_secret_key_file(keys / "server.key_secret")
    curve = CurveConfig(public, secret, keys / "authorized_clients")
    with pytest.raises(ValueError, match=r"broken\.key"):
        DaemonServer(ServerConfig(f"tcp://127.0.0.1:{free_port()}", curve=curve), registry)


# --------------------------------------------------------------------------- 11: Client.forget


def test_client_forget_drops_a_pending_callback(server) -> None:
    with Client(server.endpoint) as c:
        calls = []
        request_id = c.send("generate", {"seed": 5}, on_reply=calls.append)
        assert c.forget(request_id) is True
        c.generate(seed=6)  # heavy jobs are answered in order: the forgotten reply came first
        assert calls == [] and c.forget(request_id) is False
