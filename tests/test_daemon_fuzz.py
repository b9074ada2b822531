"""Fuzz: thousands of malformed messages from a raw DEALER; every one gets an error reply and the
daemon keeps serving (hello still answers correctly afterwards)."""

from __future__ import annotations

import collections
import math

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.client import Client
from daemon.protocol import REQUEST_TYPES, ErrorCode, Latent

KNOWN_CODES = {v for k, v in vars(ErrorCode).items() if k.isupper()}
FUZZ = settings(
    max_examples=550,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def fuzz_daemon(spawn_daemon):
    d = spawn_daemon("--max-message-mb", "1", "--log-level", "warning", "--max-sessions", "4")
    yield d
    assert d.stop() == 0


class RawPeer:
    """A bare DEALER: sends arbitrary frames, returns the next reply (skipping stream events)."""

    def __init__(self, endpoint: str):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sent = 0
        self.codes: collections.Counter[str] = collections.Counter()

    def ask(self, parts: list[bytes]) -> dict:
        self.sock.send_multipart(parts)
        self.sent += 1
        while True:
            assert self.sock.poll(15000), f"no reply to {parts[:1]!r}"
            header = msgpack.unpackb(self.sock.recv_multipart()[0])
            if header["type"].endswith("_reply"):
                self.codes[
                    header["content"].get("code", "ok") if isinstance(header["content"], dict) else "?"
                ] += 1
                return header


@pytest.fixture(scope="module")
def peer(fuzz_daemon):
    p = RawPeer(fuzz_daemon.endpoint)
    yield p
    p.sock.close()


@pytest.fixture(scope="module")
def valid_latent(fuzz_daemon) -> Latent:
    with Client(fuzz_daemon.endpoint) as c:
        return c.generate(seed=0).latent


def check_reply(reply: dict, sent_id: object = None) -> None:
    assert reply["v"] == 1 and reply["status"] in ("ok", "error")
    assert isinstance(reply["content"], dict)
    if reply["status"] == "error":
        assert reply["content"]["code"] in KNOWN_CODES and reply["content"]["message"]
    if isinstance(sent_id, str) and 1 <= len(sent_id) <= 64 and reply["status"] == "ok":
        assert reply["parent"] == sent_id


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
BAD_NUMBERS = [math.nan, math.inf, -math.inf, -1, 2**40, 1e308, True, "1", None, [], {}]
BAD_POINTS = [
    [],
    [[math.nan, 1.0]],
    [[1.0]],
    [[1.0, 2.0, 3.0]],
    [[-1.0, 5.0]],
    [[5.0, 256.0]],
    [[1e9, 1e9]],
    [["x", 1]],
    [[1, 1]] * 65,
    [[1, 1]] * 3000,
    "points",
    {"x": 1},
]


@FUZZ
@given(frames=st.lists(st.binary(max_size=64), min_size=1, max_size=6))
def fuzz_random_bytes(peer, frames) -> None:
    check_reply(peer.ask(frames))


@FUZZ
@given(header=values, extra=st.lists(st.binary(max_size=16), max_size=3))
def fuzz_random_msgpack_headers(peer, header, extra) -> None:
    check_reply(peer.ask([msgpack.packb(header), *extra]))


@FUZZ
@given(
    msg_type=st.sampled_from([*REQUEST_TYPES, "bogus", ""]) | st.text(max_size=10),
    request_id=st.text(max_size=70) | values,
    content=st.dictionaries(
        st.sampled_from(
            [
                "seed",
                "psi",
                "model",
                "latent",
                "handles",
                "targets",
                "mask",
                "params",
                "preview",
                "final",
                "max_steps",
                "session",
                "latent_id",
                "image",
                "resume",
                "client",
                "junk",
            ]
        ),
        values,
        max_size=6,
    )
    | values,
    version=st.sampled_from([1, 1, 1, 0, 2, -1, "1", None]),
    frames=st.lists(st.binary(max_size=32), max_size=5),
)
def fuzz_envelopes_with_random_content(peer, msg_type, request_id, content, version, frames) -> None:
    header = {"v": version, "type": msg_type, "id": request_id, "content": content}
    reply = peer.ask([msgpack.packb(header), *frames])
    check_reply(reply, request_id)
    if reply["status"] == "ok":  # only well-formed requests may succeed
        assert version == 1 and msg_type in REQUEST_TYPES


@FUZZ
@given(data=st.data())
def fuzz_mutated_drag_starts(peer, valid_latent, data) -> None:
    """A valid drag_start with exactly one field broken: always an error, never a session."""
    lat = valid_latent
    content = {
        "latent": lat.blob(0),
        "handles": [[10.0, 10.0]],
        "targets": [[20.0, 10.0]],
        "max_steps": 1,
        "preview": None,
    }
    frames = [lat.data]
    field = data.draw(
        st.sampled_from(
            [
                "latent",
                "latent_frame",
                "latent_shape",
                "latent_nan",
                "handles",
                "targets",
                "max_steps",
                "params",
                "preview",
                "mask",
                "frames",
                "counts",
            ]
        )
    )
    if field == "latent":
        content["latent"] = data.draw(values | st.sampled_from(["0" * 24, "", "z" * 65]))
        frames = data.draw(st.sampled_from([[], frames]))
        if content["latent"] == "0" * 24:
            frames = []
    elif field == "latent_frame":
        frames = [data.draw(st.binary(max_size=100).filter(lambda b: len(b) != len(lat.data)))]
    elif field == "latent_shape":
        shape = data.draw(
            st.sampled_from([[13, 512], [28, 256], [14, 511], [0, 0], [14], [14, 512, 1], [-14, -512]])
        )
        content["latent"] = {**lat.blob(0), "shape": shape}
        if shape in ([13, 512], [28, 256]):
            frames = [lat.data[: 4 * shape[0] * shape[1]] if shape[0] * shape[1] <= 14 * 512 else lat.data]
    elif field == "latent_nan":
        arr = np.frombuffer(lat.data, "<f4").copy()
        arr[data.draw(st.integers(0, arr.size - 1))] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        bad = Latent(lat.shape, arr.tobytes())
        content["latent"], frames = bad.blob(0), [bad.data]
    elif field in ("handles", "targets"):
        content[field] = data.draw(st.sampled_from(BAD_POINTS))
    elif field == "max_steps":
        content["max_steps"] = data.draw(st.sampled_from([0, -5, 10**7, 1.5, *BAD_NUMBERS]))
    elif field == "params":
        key = data.draw(
            st.sampled_from(
                [
                    "lr",
                    "lam",
                    "r1",
                    "r2",
                    "num_layers",
                    "space",
                    "tracking",
                    "nope",
                    "feature_block",
                    "nearest_rate",
                    "stop_distance",
                ]
            )
        )
        # Invalid for every parameter (None is fine for the optional radii: use -1 there).
        bad = data.draw(
            st.sampled_from([math.nan, math.inf, -math.inf, -1, 2**40, 1e308, "w++", True, None, [], {}])
        )
        if bad is None and key in ("r1", "r2", "stop_distance"):
            bad = -1
        content["params"] = {key: bad}
    elif field == "preview":
        content["preview"] = data.draw(
            st.sampled_from(
                [
                    {"size": 1},
                    {"size": 10**6},
                    {"encoding": "bmp"},
                    {"interval_ms": -1},
                    {"quality": 0},
                    {"extra": 1},
                    "fast",
                    7,
                ]
            )
        )
    elif field == "mask":
        w, h = data.draw(st.sampled_from([(128, 128), (256, 255), (0, 0), (-1, 5)]))
        content["mask"] = {"frame": 1, "width": w, "height": h}
        frames.append(bytes(max(0, w * h)))
    elif field == "frames":
        frames = frames + data.draw(st.lists(st.binary(max_size=8), min_size=1, max_size=4))
    else:
        content["targets"] = [[20.0, 10.0], [30.0, 10.0]]
    header = {"v": 1, "type": "drag_start", "id": "m-1", "content": content}
    reply = peer.ask([msgpack.packb(header), *frames])
    check_reply(reply)
    assert reply["status"] == "error", (field, reply)
    assert reply["content"]["code"] in (
        ErrorCode.INVALID_FIELD,
        ErrorCode.BAD_FRAME,
        ErrorCode.UNKNOWN_LATENT,
        ErrorCode.BAD_MESSAGE,
    )


def test_fuzz_then_daemon_still_answers_hello(fuzz_daemon, peer, valid_latent) -> None:
    """2200 malformed messages (four fuzzers), each answered; then hello still works."""
    fuzz_random_bytes(peer)
    fuzz_random_msgpack_headers(peer)
    fuzz_envelopes_with_random_content(peer)
    fuzz_mutated_drag_starts(peer, valid_latent)
    assert peer.sent >= 2000, peer.sent
    # The fuzzers reached every layer of validation, not just the msgpack decoder.
    expected = {
        "bad_message",
        "incompatible_version",
        "unknown_type",
        "invalid_field",
        "bad_frame",
        "unknown_latent",
    }
    assert expected <= set(peer.codes), peer.codes
    reply = peer.ask([msgpack.packb({"v": 1, "type": "hello", "id": "after-fuzz", "content": {}})])
    assert (reply["status"], reply["parent"], reply["content"]["protocol"]) == ("ok", "after-fuzz", 1)
    with Client(fuzz_daemon.endpoint) as c:
        assert c.hello()["default_model"] == "small-256"
        assert c.status()["sessions"] == []  # no malformed drag_start opened a session


def test_oversized_frame_drops_only_that_connection(fuzz_daemon) -> None:
    """ZMQ_MAXMSGSIZE (1 MiB here): the sender is disconnected without a reply; others carry on."""
    big = RawPeer(fuzz_daemon.endpoint)
    try:
        big.sock.send_multipart(
            [msgpack.packb({"v": 1, "type": "hello", "id": "big", "content": {}}), bytes(2 * 2**20)]
        )
        assert big.sock.poll(1500) == 0
    finally:
        big.sock.close()
    with Client(fuzz_daemon.endpoint) as c:
        assert c.hello()["protocol"] == 1
