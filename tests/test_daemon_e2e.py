"""End to end against a real daemon process on loopback: generate, drag, stream, update, stop, errors."""

from __future__ import annotations

import io
import math

import msgpack
import numpy as np
import pytest
import zmq
from PIL import Image as PILImage

from daemon.client import Client, DaemonError, DaemonUnavailable, Mask
from daemon.protocol import ErrorCode, Image, Latent

FAR = {"stop_distance": 0.0}  # never converges: runs end by max_steps or stop


def pixels(img: Image) -> np.ndarray:
    if img.encoding == "raw":
        return np.frombuffer(img.data, np.uint8).reshape(img.height, img.width, 3)
    return np.asarray(PILImage.open(io.BytesIO(img.data)).convert("RGB"))


def test_hello_reports_versions_device_models_limits(client: Client) -> None:
    info = client.hello()
    assert info["protocol"] == 1 and info["daemon_version"]
    assert info["device"] == "cpu"
    assert info["default_model"] == "small-256"
    (model,) = info["models"]
    assert (model["name"], model["resolution"], model["num_ws"], model["w_dim"]) == (
        "small-256",
        256,
        14,
        512,
    )
    assert set(info["encodings"]) >= {"raw", "png", "jpeg"}
    assert info["limits"]["max_sessions"] == 16 and info["curve"] is False
    assert [m["name"] for m in client.list_models()] == ["small-256"]


def test_generate_is_deterministic_and_latent_round_trips(client: Client) -> None:
    a = client.generate(seed=7, psi=0.5, encoding="raw")
    b = client.generate(seed=7, psi=0.5, encoding="png")
    assert (a.image.width, a.image.height) == (256, 256) and len(a.image.data) == 256 * 256 * 3
    assert np.array_equal(pixels(a.image), pixels(b.image))
    assert a.latent == b.latent and a.latent.shape == (14, 512)
    assert client.generate(seed=8, psi=0.5).latent.id != a.latent.id
    small = client.generate(seed=7, psi=0.5, encoding="jpeg", quality=80, size=64)
    assert (small.image.width, pixels(small.image).shape) == (64, (64, 64, 3))
    assert client.get_latent(a.latent.id) == a.latent
    rendered = client.render(a.latent.id, encoding="raw")
    assert np.array_equal(pixels(rendered), pixels(a.image))


def test_drag_streams_steps_frames_and_final_image(client: Client) -> None:
    start = client.generate(seed=1)
    stream = client.start_drag(
        start.latent.id,
        handles=[[100, 120]],
        targets=[[160, 120]],
        params=FAR,
        max_steps=6,
        preview={"size": 64, "encoding": "raw", "interval_ms": 0},
    )
    assert stream.session and stream.reply.content["latent_id"] == start.latent.id
    events = list(stream.iter_events())
    assert events[0].type == "drag_start_reply"
    steps = [e for e in events if e.type == "drag_step"]
    frames = [e for e in events if e.type == "drag_frame"]
    assert [e.content["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all(e.session == stream.session and e.parent == stream.request_id for e in steps + frames)
    first = steps[0].content
    assert first["targets"] == [[160.0, 120.0]] and len(first["points"]) == 1
    assert math.isclose(first["distances"][0], math.dist(first["points"][0], [160, 120]), abs_tol=1e-3)
    assert math.isfinite(first["loss"])
    assert 1 <= len(frames) <= 5  # one per step except the last (the final image replaces it)
    for f in frames:
        img = f.image()
        assert (img.width, img.height, img.encoding, len(img.data)) == (64, 64, "raw", 64 * 64 * 3)
    done = events[-1]
    assert done.type == "drag_done" and stream.result is done
    assert done.content["reason"] == "max_steps" and done.content["step"] == 6
    assert done.content["points"] == steps[-1].content["points"]
    final, latent = done.image(), done.latent()
    assert (final.width, final.height, final.encoding) == (256, 256, "png")
    assert latent.shape == (14, 512) and latent.id != start.latent.id  # the edit changed the latent
    # The final image is the picture of the final latent.
    assert np.array_equal(pixels(client.render(latent.id, encoding="raw")), pixels(final))
    assert client.close_session(stream.session).content["latent_id"] == latent.id
    with pytest.raises(DaemonError) as info:
        client.stop_drag(stream.session)
    assert info.value.code == ErrorCode.UNKNOWN_SESSION


def test_preview_rate_limit_encodings_and_mask(client: Client) -> None:
    start = client.generate(seed=2)
    mask = np.zeros((256, 256), np.uint8)
    mask[60:200, 60:200] = 1
    stream = client.start_drag(
        start.latent,  # uploaded bytes instead of an id
        handles=[[100, 100], [150, 150]],
        targets=[[120, 100], [150, 130]],
        mask=Mask(256, 256, mask.tobytes()),
        params={**FAR, "lam": 10.0},
        max_steps=5,
        preview={"size": 96, "encoding": "webp", "quality": 50, "interval_ms": 60000},
        final={"encoding": "jpeg", "quality": 70, "size": 128},
    )
    done = stream.wait()
    frames = [e for e in stream.events if e.type == "drag_frame"]
    assert len(frames) == 1  # the first step's frame, then the 60 s interval holds the rest back
    assert pixels(frames[0].image()).shape == (96, 96, 3)
    assert done.image().encoding == "jpeg" and pixels(done.image()).shape == (128, 128, 3)
    assert len(done.content["points"]) == 2
    client.close_session(stream.session)


def test_update_targets_mid_drag(client: Client) -> None:
    start = client.generate(seed=3)
    stream = client.start_drag(
        start.latent.id, [[128, 128]], [[170, 128]], params=FAR, max_steps=12, previews=False
    )
    client.wait_until(lambda: sum(e.type == "drag_step" for e in stream.events) >= 2, 30)
    reply = client.update_drag(stream.session, targets=[[90, 100]], params={"lr": 0.004})
    switch = reply.content["step"]
    assert reply.content["state"] == "running" and switch >= 2
    done = stream.wait()
    steps = [e.content for e in stream.events if e.type == "drag_step"]
    assert [s["step"] for s in steps] == list(range(1, 13))
    for s in steps:
        expected = [[170.0, 128.0]] if s["step"] <= switch else [[90.0, 100.0]]
        assert s["targets"] == expected, s["step"]
    assert done.content["targets"] == [[90.0, 100.0]]
    # A finished session can be resumed with new handles; the new run names the update request.
    again = client.update_drag(
        stream.session, handles=[[60, 60]], targets=[[70, 60]], max_steps=3, resume=True
    )
    assert again.reply.content["resumed"] is True
    done2 = again.wait()
    assert done2.parent == again.request_id and done2.content["step"] == 15
    assert [e.content["run_step"] for e in again.events if e.type == "drag_step"] == [1, 2, 3]
    client.close_session(stream.session)


def test_stop_mid_stream_takes_effect_within_one_step(client: Client) -> None:
    start = client.generate(seed=4)
    stream = client.start_drag(start.latent.id, [[50, 50]], [[200, 200]], params=FAR, max_steps=10000)
    client.wait_until(lambda: any(e.type == "drag_step" for e in stream.events), 30)
    reply = stream.stop()
    assert reply.content["state"] == "idle"
    done = stream.wait()
    assert done.content["reason"] == "stopped"
    steps_at_stop = max(e.content["step"] for e in stream.events if e.type == "drag_step")
    assert done.content["step"] == steps_at_stop
    assert done.content["step"] <= 10  # nowhere near max_steps
    status = client.status()
    (mine,) = [s for s in status["sessions"] if s["session"] == stream.session]
    assert mine["state"] == "idle" and mine["mine"] is True
    assert client.stop_drag(stream.session).content["state"] == "idle"  # stopping again is fine
    client.close_session(stream.session)


def test_two_drags_share_the_device_round_robin(client: Client) -> None:
    """Two drags of one client: once both run, their steps strictly alternate (one step each in turn)."""
    order: list[str] = []
    latent = client.generate(seed=5).latent
    done: dict[str, object] = {}

    def track(name: str):
        def on_event(msg):
            if msg.type == "drag_step":
                order.append(name)
            elif msg.type == "drag_done":
                done[name] = msg

        return on_event

    common = dict(params=FAR, previews=False, wait=False)
    a = client.start_drag(latent.id, [[80, 80]], [[120, 80]], max_steps=30, on_event=track("a"), **common)
    b = client.start_drag(latent.id, [[150, 150]], [[150, 110]], max_steps=8, on_event=track("b"), **common)
    client.wait_until(lambda: len(done) == 2, 60)
    assert order.count("a") == 30 and order.count("b") == 8
    first_b = len(order) - order[::-1].index("b") - 16  # the window where both were running
    assert order[first_b : first_b + 16] == ["a", "b"] * 8, order
    for s in (a, b):
        client.close_session(s.session)


def test_two_clients_drag_at_the_same_time(daemon) -> None:
    with Client(daemon.endpoint) as c1, Client(daemon.endpoint) as c2:
        s1 = c1.start_drag(c1.generate(seed=10).latent, [[60, 60]], [[90, 90]], params=FAR, max_steps=10)
        s2 = c2.start_drag(c2.generate(seed=11).latent, [[200, 60]], [[180, 90]], params=FAR, max_steps=10)
        d2 = s2.wait()
        d1 = s1.wait()
        assert d1.content["reason"] == d2.content["reason"] == "max_steps"
        assert sum(e.type == "drag_step" for e in s1.events) == 10
        assert sum(e.type == "drag_step" for e in s2.events) == 10
        # Sessions belong to their client.
        with pytest.raises(DaemonError) as info:
            c2.close_session(s1.session)
        assert info.value.code == ErrorCode.UNKNOWN_SESSION
        c1.close_session(s1.session)
        c2.close_session(s2.session)


def test_bad_requests_get_specific_errors(client: Client) -> None:
    latent = client.generate(seed=12).latent

    def code(fn, *args, **kwargs) -> str:
        with pytest.raises(DaemonError) as info:
            fn(*args, **kwargs)
        return info.value.code

    assert code(client.start_drag, "0" * 24, [[1, 1]], [[2, 2]]) == ErrorCode.UNKNOWN_LATENT
    assert code(client.get_latent, "nope") == ErrorCode.UNKNOWN_LATENT
    assert code(client.start_drag, latent.id, [[256, 1]], [[2, 2]]) == ErrorCode.INVALID_FIELD
    assert code(client.start_drag, latent.id, [[1, 1]], [[2, -0.5]]) == ErrorCode.INVALID_FIELD
    assert code(client.start_drag, latent.id, [[1, 1]], [[2, 2], [3, 3]]) == ErrorCode.INVALID_FIELD
    small_mask = Mask(128, 128, bytes(128 * 128))
    assert code(client.start_drag, latent.id, [[1, 1]], [[2, 2]], mask=small_mask) == ErrorCode.INVALID_FIELD
    assert (
        code(client.start_drag, latent.id, [[1, 1]], [[2, 2]], params={"num_layers": 20}) == "invalid_field"
    )
    wrong_shape = Latent((13, 512), bytes(13 * 512 * 4))
    assert code(client.start_drag, wrong_shape, [[1, 1]], [[2, 2]]) == ErrorCode.INVALID_FIELD
    assert code(client.put_latent, wrong_shape, model="small-256") == ErrorCode.INVALID_FIELD
    nan = Latent((14, 512), np.full((14, 512), np.nan, "<f4").tobytes())
    assert code(client.put_latent, nan) == ErrorCode.INVALID_FIELD
    assert code(client.render, nan) == ErrorCode.INVALID_FIELD
    assert code(client.generate, 1, model="nope") == ErrorCode.UNKNOWN_MODEL
    assert code(client.load_model, "nope") == ErrorCode.UNKNOWN_MODEL
    assert code(client.update_drag, "s-unknown", targets=[[1, 1]]) == ErrorCode.UNKNOWN_SESSION
    assert client.put_latent(latent) == latent.id
    assert client.load_model("small-256")["loaded"] is True
    assert client.hello()["protocol"] == 1  # and the daemon is fine


def test_raw_socket_version_mismatch_and_garbage(daemon) -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.endpoint)
    try:

        def ask(parts: list[bytes]) -> dict:
            sock.send_multipart(parts)
            assert sock.poll(10000), "no reply"
            return msgpack.unpackb(sock.recv_multipart()[0])

        r = ask([msgpack.packb({"v": 99, "type": "hello", "id": "old-1", "content": {}})])
        assert (r["type"], r["parent"], r["status"]) == ("hello_reply", "old-1", "error")
        assert r["content"]["code"] == "incompatible_version" and r["content"]["protocol"] == 1
        assert "protocol version 1" in r["content"]["message"]
        r = ask([b"\x93garbage"])
        assert (r["type"], r["parent"], r["content"]["code"]) == ("error_reply", None, "bad_message")
        r = ask([msgpack.packb({"v": 1, "type": "hello", "id": "ok-1", "content": {}})])
        assert r["status"] == "ok" and r["parent"] == "ok-1"
    finally:
        sock.close()


def test_dead_daemon_gives_a_clear_error_not_a_hang(free_port) -> None:
    c = Client(f"tcp://127.0.0.1:{free_port()}", connect_timeout=1.0)
    with c, pytest.raises(DaemonUnavailable, match="cannot reach the draggan daemon"):
        c.hello()


def test_event_loop_interface_fd_and_drain(client: Client) -> None:
    """Drive it as a Qt loop would: wait until the FD is readable, then drain(); no blocking calls."""
    import select

    got: list[str] = []
    hello: dict = {}
    client.send("hello", {"client": "loop-test"}, on_reply=lambda m: hello.update(m.content))
    latent = client.generate(seed=30).latent  # (blocking, only to get a latent id)
    stream = client.start_drag(
        latent.id,
        [[40, 40]],
        [[60, 40]],
        params=FAR,
        max_steps=4,
        preview={"size": 32, "interval_ms": 0},
        on_event=lambda m: got.append(m.type),
        wait=False,
    )
    deadline = 200  # x 0.1 s
    while not stream.finished and deadline:
        select.select([client.fileno()], [], [], 0.1)  # a QSocketNotifier does this
        client.drain()
        deadline -= 1
    assert hello["protocol"] == 1
    assert got[0] == "drag_start_reply" and got[-1] == "drag_done"
    assert got.count("drag_step") == 4 and "drag_frame" in got
    assert not stream.events  # callbacks consumed them
    client.close_session(stream.session)
