"""Protocol, encoders, scheduler and small daemon parts, without sockets or a model."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
from PIL import Image as PILImage

from daemon.encoding import available_encodings, encode_image
from daemon.protocol import (
    PROTOCOL_VERSION,
    ErrorCode,
    Latent,
    Limits,
    ProtocolError,
    parse_request,
    request_parts,
)
from daemon.server import is_loopback_endpoint
from daemon.sessions import LatentCache, SessionTable, TooManySessions
from daemon.worker import RoundRobin

REPO = Path(__file__).resolve().parent.parent


def latent(rows: int = 14, cols: int = 512, value: float = 0.5) -> Latent:
    return Latent((rows, cols), np.full((rows, cols), value, "<f4").tobytes())


def parse(msg_type: str, content: dict, frames: list[bytes] = ()) -> dict:
    return parse_request(request_parts(msg_type, "r-1", content, frames)).content


def error_of(parts: list[bytes]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request(parts)
    return info.value


def test_latent_id_is_a_content_hash() -> None:
    a, b = latent(value=0.5), latent(value=0.5)
    assert a.id == b.id and len(a.id) == 24
    assert latent(value=0.25).id != a.id
    # Same bytes, other shape: another latent.
    assert Latent((28, 256), a.data).id != a.id
    with pytest.raises(ValueError, match="does not match"):
        Latent(a.shape, a.data, id="0" * 24)
    with pytest.raises(ValueError, match="needs"):
        Latent((14, 512), b"\0" * 10)


def test_defaults_are_filled_in() -> None:
    c = parse("generate", {"seed": 3})
    assert c == {"seed": 3, "psi": 0.7, "image": {"encoding": "png", "quality": None, "size": None}}
    lat = latent()
    c = parse("drag_start", {"latent": lat.blob(0), "handles": [[1, 2]], "targets": [[3, 4.5]]}, [lat.data])
    assert c["latent"]["id"] == lat.id and c["latent"]["data"] == lat.data
    assert c["handles"] == [[1.0, 2.0]] and c["max_steps"] == 200 and c["mask"] is None
    assert c["preview"]["interval_ms"] == 100 and c["params"] == {}
    c = parse("drag_update", {"session": "s-1", "mask": None})
    assert c == {"session": "s-1", "mask": None, "resume": False}  # absent keys stay absent


@pytest.mark.parametrize(
    "content, code, field",
    [
        ({}, ErrorCode.INVALID_FIELD, "content.seed"),
        ({"seed": -1}, ErrorCode.INVALID_FIELD, "content.seed"),
        ({"seed": 2**32}, ErrorCode.INVALID_FIELD, "content.seed"),
        ({"seed": True}, ErrorCode.INVALID_FIELD, "content.seed"),
        ({"seed": 1.0}, ErrorCode.INVALID_FIELD, "content.seed"),
        ({"seed": 1, "psi": math.nan}, ErrorCode.INVALID_FIELD, "content.psi"),
        ({"seed": 1, "psi": math.inf}, ErrorCode.INVALID_FIELD, "content.psi"),
        ({"seed": 1, "psi": "0.7"}, ErrorCode.INVALID_FIELD, "content.psi"),
        ({"seed": 1, "extra": 1}, ErrorCode.INVALID_FIELD, "content.extra"),
        ({"seed": 1, "image": {"encoding": "gif"}}, ErrorCode.INVALID_FIELD, "content.image.encoding"),
        ({"seed": 1, "image": {"size": 8}}, ErrorCode.INVALID_FIELD, "content.image.size"),
        ({"seed": 1, "image": {"quality": 101}}, ErrorCode.INVALID_FIELD, "content.image.quality"),
    ],
)
def test_generate_field_errors(content: dict, code: str, field: str) -> None:
    err = error_of(request_parts("generate", "g-7", content))
    assert (err.code, err.field, err.parent, err.request_type) == (code, field, "g-7", "generate")


def test_drag_start_errors() -> None:
    lat = latent()
    base = {"latent": lat.blob(0), "handles": [[1, 2]], "targets": [[3, 4]]}

    def err(changes: dict, frames: list[bytes] | None = None) -> ProtocolError:
        return error_of(
            request_parts("drag_start", "d-1", {**base, **changes}, [lat.data] if frames is None else frames)
        )

    assert err({"handles": []}).field == "content.handles"
    assert err({"handles": [[1, 2]] * 65}).code == ErrorCode.INVALID_FIELD  # more than max_points
    assert err({"handles": [[1, math.nan]]}).field == "content.handles[0]"
    assert err({"handles": [[1, 2, 3]]}).field == "content.handles[0]"
    assert err({"handles": "here"}).field == "content.handles"
    assert err({"max_steps": 0}).field == "content.max_steps"
    assert err({"max_steps": 10**6}).field == "content.max_steps"
    assert err({"params": {"lr": -1}}).field == "content.params.lr"
    assert err({"params": {"learning_rate": 1}}).field == "content.params.learning_rate"
    assert err({"preview": {"interval_ms": -5}}).field == "content.preview.interval_ms"
    # Frames: missing, extra, wrong length, named twice.
    assert err({}, frames=[]).code == ErrorCode.BAD_FRAME
    assert err({}, frames=[lat.data, b"x"]).code == ErrorCode.BAD_FRAME
    assert err({}, frames=[lat.data[:-4]]).code == ErrorCode.BAD_FRAME
    assert err({"mask": {"frame": 0, "width": 4, "height": 4}}).code == ErrorCode.BAD_FRAME
    assert err({"latent": {**lat.blob(0), "shape": [14, 0]}}).field == "content.latent.shape[1]"
    assert err({"latent": {**lat.blob(0), "id": "f" * 24}}).field == "content.latent.id"
    assert err({"latent": {**lat.blob(0), "dtype": "float16"}}).field == "content.latent.dtype"


def test_envelope_errors() -> None:
    def header(**h) -> list[bytes]:
        return [msgpack.packb(h)]

    assert error_of([b"\xc1"]).code == ErrorCode.BAD_MESSAGE  # never-used msgpack byte
    assert error_of([msgpack.packb([1, 2])]).code == ErrorCode.BAD_MESSAGE
    assert error_of([b"\x00" * (Limits().max_header_bytes + 1)]).code == ErrorCode.BAD_MESSAGE
    err = error_of(header(v=2, type="hello", id="x", content={}))
    assert (err.code, err.parent) == (ErrorCode.INCOMPATIBLE_VERSION, "x")
    assert error_of(header(type="hello", id="x", content={})).code == ErrorCode.BAD_MESSAGE
    err = error_of(header(v=1, type="explode", id="x", content={}))
    assert (err.code, err.parent, err.request_type) == (ErrorCode.UNKNOWN_TYPE, "x", None)
    assert error_of(header(v=1, type="hello", id="x" * 65, content={})).parent is None
    assert error_of(header(v=1, type="hello", id="x", content={}, more=1)).code == ErrorCode.BAD_MESSAGE
    assert error_of(header(v=1, type="hello", id="x", content=[])).field == "content"
    too_many = [msgpack.packb({"v": 1, "type": "hello", "id": "x", "content": {}})] + [b""] * 5
    assert error_of(too_many).code == ErrorCode.BAD_FRAME
    assert parse_request(header(v=PROTOCOL_VERSION, type="hello", id="x", content={})).type == "hello"


@pytest.mark.parametrize("encoding", available_encodings())
def test_encodings_round_trip(encoding: str) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (48, 32, 3), dtype=np.uint8)
    data = encode_image(rgb, encoding, quality=95)
    if encoding == "raw":
        assert data == rgb.tobytes()
        return
    decoded = np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB"))
    assert decoded.shape == (48, 32, 3)
    if encoding == "png":
        assert np.array_equal(decoded, rgb)
    assert encode_image(rgb, encoding, fast=True)  # the preview settings work too


def test_encoder_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="encoding"):
        encode_image(np.zeros((4, 4, 3), np.uint8), "bmp")
    with pytest.raises(ValueError, match="uint8"):
        encode_image(np.zeros((4, 4, 3), np.float32), "png")


def test_round_robin_gives_each_key_a_turn() -> None:
    rr = RoundRobin()
    assert rr.next() is None
    for key in "abc":
        rr.add(key)
    rr.add("a")  # no duplicates
    assert [rr.next() for _ in range(7)] == list("abcabca")
    rr.remove("b")
    rr.remove("zzz")  # absent: no error
    assert [rr.next() for _ in range(4)] == list("caca")
    assert len(rr) == 2 and "a" in rr and "b" not in rr


def test_session_table_limits_and_ownership() -> None:
    table = SessionTable(max_sessions=2)
    a = table.create(b"alice", "m")
    table.create(b"bob", "m")
    with pytest.raises(TooManySessions, match="limit is 2"):
        table.create(b"carol", "m")
    assert table.get(a.id, owner=b"alice") is a
    assert table.get(a.id, owner=b"bob") is None
    assert [r.owner for r in table.owned_by(b"bob")] == [b"bob"]
    a.state, a.last_activity = "idle", 0.0
    assert table.idle(now=100.0, timeout=10.0) == [a]
    table.remove(a.id)
    assert len(table) == 1


def test_latent_cache_evicts_least_recently_used() -> None:
    cache = LatentCache(capacity=2)
    a, b, c = latent(value=1), latent(value=2), latent(value=3)
    cache.put(a)
    cache.put(b)
    assert cache.get(a.id) is a  # a is now the most recent
    cache.put(c)
    assert cache.get(b.id) is None and cache.get(a.id) is a and cache.get(c.id) is c


@pytest.mark.parametrize(
    "endpoint, loopback",
    [
        ("tcp://127.0.0.1:5617", True),
        ("tcp://127.3.2.1:5617", True),
        ("tcp://localhost:5617", True),
        ("tcp://[::1]:5617", True),
        ("ipc:///tmp/draggan.sock", True),
        ("tcp://0.0.0.0:5617", False),
        ("tcp://*:5617", False),
        ("tcp://192.168.1.5:5617", False),
        ("tcp://eth0:5617", False),
        ("tcp://[::]:5617", False),
        ("udp://127.0.0.1:5617", False),
    ],
)
def test_loopback_detection(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback


def test_client_and_protocol_import_without_torch_or_numpy() -> None:
    """What the Krita plugin imports must not pull in torch, numpy or the daemon's server side."""
    code = (
        "import sys, daemon.client, daemon.protocol; "
        "bad = [m for m in ('torch', 'numpy', 'engine', 'stylegan2', 'daemon.server', 'daemon.worker') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_model_registry_defaults_to_random_256_with_a_warning(monkeypatch, tmp_path, caplog) -> None:
    import logging

    import torch

    from daemon import models

    monkeypatch.setattr(models, "BUNDLED_MODEL", tmp_path / "missing.safetensors")
    with caplog.at_level(logging.WARNING, logger="draggan.daemon"):
        reg = models.ModelRegistry.from_specs(None, torch.device("cpu"))
    assert reg.default == "random-256" and "RANDOM-weight" in caplog.text
    info = reg.entry(None).info()
    assert (info["resolution"], info["num_ws"], info["w_dim"], info["loaded"]) == (256, 14, 512, False)
    with pytest.raises(models.UnknownModel, match="random-256"):
        reg.entry("other")
    with pytest.raises(models.ModelError, match="no such model file"):
        reg.add(str(tmp_path / "nope.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    with pytest.raises(models.ModelError, match="unusable model file"):
        reg.add(str(tmp_path / "bad.safetensors"))


def test_model_registry_uses_the_bundled_model_when_present(monkeypatch, small_model_path) -> None:
    import torch

    from daemon import models

    monkeypatch.setattr(models, "BUNDLED_MODEL", small_model_path)
    reg = models.ModelRegistry.from_specs(None, torch.device("cpu"))
    assert reg.default == "small-256"
    G = reg.get(None)
    assert G.img_resolution == 256 and reg.entry(None).info()["loaded"] is True
    assert reg.get("small-256") is G  # loaded once
