"""The drag workflow's failure handling (plugin_krita.controller), over the fake `krita` document.

The real parts run: Controller, KritaDocument, History, lineage, geometry and the daemon's own
protocol Message/Image/Latent classes. Two stand-ins: the connection (it records what would be
sent; the messages it delivers are real protocol Messages) and the picture decoder (pure Python
for the protocol's "raw" RGB encoding, because Qt is not installed where unit tests run).
"""

from __future__ import annotations

import struct

import pytest
from test_plugin_krita_api import FakeDocument, FakeQTransform, FakeShape

from daemon import client as client_module
from daemon import protocol
from plugin_krita import controller as controller_module
from plugin_krita.controller import (
    DRAG_SILENCE_S,
    STOP_GRACE_S,
    STOP_GRACE_UNKNOWN_S,
    UNFINISHED_LAYER_NAME,
    Controller,
    DragOptions,
    preview_options,
)
from plugin_krita.geometry import Region
from plugin_krita.history import History, HistoryRecord, meta_key
from plugin_krita.krita_api import PREVIEW_LAYER_NAME, KritaDocument, layer_id
from plugin_krita.link import LinkState

SIZE = 64  # the fake document is SIZE x SIZE at 72 dpi: canvas px = region px
RES = 256
HELLO = {"protocol": protocol.PROTOCOL_VERSION, "device": "cpu", "default_model": "m",
         "models": [{"name": "m", "resolution": RES, "num_ws": 4, "w_dim": 2}], "encodings": ["png", "jpeg"]}


class FakeConnection:
    """DaemonConnection's interface; records requests and drags instead of sending them."""

    def __init__(self, on_change) -> None:
        self.on_change, self.on_tick = on_change, None
        self.protocol, self.client_module = protocol, client_module
        self.link = LinkState()
        self.link.start("tcp://127.0.0.1:1", 0.0)
        self.link.on_hello(HELLO)
        self.now = 100.0
        self.requests: list[tuple] = []
        self.drags: list[tuple] = []
        self.forgotten: list[str] = []
        self.opened: list[str] = []

    def clock(self) -> float:
        return self.now

    @property
    def ready(self) -> bool:
        return self.link.ready

    def not_ready_message(self) -> str:
        return "not connected"

    def request(self, msg_type, content, frames, on_reply, on_error, timeout=15.0) -> None:
        self.requests.append((msg_type, content, on_reply, on_error))

    def start_drag(self, on_event, on_error, **kwargs):
        stream = client_module.DragStream(None, f"drag-{len(self.drags)}", on_event)
        self.drags.append((on_event, on_error, kwargs))
        return stream

    def forget(self, request_id: str) -> None:
        self.forgotten.append(request_id)

    def open(self, endpoint, server_key="", client_key="") -> None:
        self.opened.append(endpoint)

    def close(self, notify=True) -> None:
        pass

    def tick(self, seconds: float) -> None:
        """Time passes and the connection polls (as its QTimer would)."""
        self.now += seconds
        if self.on_tick is not None:
            self.on_tick(self.now)


def raw_pixels(image, size: int) -> bytes:
    """The protocol's raw RGB at the region size as Krita's BGRA (what images.to_bgra gives)."""
    assert image.encoding == "raw" and image.width == image.height == size
    rgb = image.data
    return b"".join(bytes((rgb[i + 2], rgb[i + 1], rgb[i], 255)) for i in range(0, len(rgb), 3))


def raw_image(value: int) -> protocol.Image:
    return protocol.Image(SIZE, SIZE, "raw", bytes([value, value // 2, 7]) * (SIZE * SIZE))


def latent(value: float = 0.25) -> protocol.Latent:
    return protocol.Latent((4, 2), struct.pack("<8f", *([value] * 8)))


def reply(session: str = "s1", **content) -> protocol.Message:
    return protocol.Message("drag_start_reply", "drag-0", {"session": session, **content}, [], status="ok")


def frame(value: int) -> protocol.Message:
    return protocol.Message("drag_frame", "drag-0", {"image": raw_image(value).blob(0), "step": 1},
                            [raw_image(value).data], session="s1")


def done(value: int, with_latent: bool = True) -> protocol.Message:
    content = {"image": raw_image(value).blob(0), "step": 9, "reason": "converged", "distances": [0.5],
               "points": [[1.0, 2.0]]}
    frames = [raw_image(value).data]
    if with_latent:
        content["latent"] = latent().blob(1)
        frames.append(latent().data)
    return protocol.Message("drag_done", "drag-0", content, frames, session="s1")


@pytest.fixture
def setup():
    """A document with a generated layer (and its history), one arrow, and a controller on it."""
    fake = FakeDocument(SIZE, SIZE, dpi=72)
    doc = KritaDocument(fake)
    region = Region.fitted(SIZE, SIZE)
    source = doc.add_pixel_layer("DragGAN seed 1", bytes(SIZE * SIZE * 4), region)
    History(doc).save(HistoryRecord(layer_id=layer_id(source), kind="generate", model="m", model_source="m",
                                    resolution=RES, region=region.as_list(), latent=latent().data,
                                    latent_shape=[4, 2], layer_name=source.name(), seed=1))
    points = doc.ensure_points_layer()
    points._shapes = [FakeShape('<path id="a" d="M10 10L20 12" sodipodi:nodetypes="cc"/>',
                                FakeQTransform(), "a")]
    ctl = Controller(lambda: doc, connection_factory=FakeConnection, pixels=raw_pixels)
    statuses: list[str] = []
    ctl.add_listener(lambda s: statuses.append(s.message))
    return ctl, ctl.connection, doc, source, statuses


def start(ctl, conn, source, started: bool = True):
    ctl.drag(DragOptions(use_selection=False, max_steps=50), source_id=layer_id(source))
    assert ctl.status.busy == "dragging", ctl.status.message
    on_event = conn.drags[-1][0]
    if started:
        on_event(reply())
    return on_event


def names(doc) -> list[str]:
    return [n.name() for n in doc.iter_nodes()]


def region_pixels(node) -> bytes:
    return node.pixels[(0, 0, SIZE, SIZE)]


# --------------------------------------------------------------------------- finding 1: never lose a result


def test_a_finished_drag_is_kept_even_with_an_unreadable_history_record(setup):
    ctl, conn, doc, source, _ = setup
    other = doc.add_pixel_layer("Drag 4", bytes(SIZE * SIZE * 4), Region.fitted(SIZE, SIZE))
    History(doc).save(HistoryRecord(layer_id=layer_id(other), kind="drag", model="m", model_source="m",
                                    resolution=RES, region=[0, 0, SIZE], latent=latent().data,
                                    layer_name="Drag 4"))
    doc.write_annotation(meta_key(layer_id(other)), "", b"{damaged")
    on_event = start(ctl, conn, source)
    on_event(frame(10))
    on_event(done(200))
    assert not ctl.status.error, ctl.status.message
    assert ctl.status.busy == "" and not ctl.dragging
    assert PREVIEW_LAYER_NAME not in names(doc)
    result = doc.node_by_id(ctl.status.last_layer_id)
    assert result.name() == "Drag 1"  # the damaged record is skipped, not counted
    assert region_pixels(result) == raw_pixels(raw_image(200), SIZE)
    record = History(doc).load(layer_id(result))
    assert record.latent == latent().data and record.parent_id == layer_id(source) and record.steps == 9
    assert names(doc).index("Drag 1") == names(doc).index("Drag 4") + 1  # where the preview was
    assert ("close_session", {"session": "s1"}) in [r[:2] for r in conn.requests]


def test_a_result_whose_history_cannot_be_saved_stays_in_a_renamed_layer(setup):
    ctl, conn, doc, source, _ = setup
    on_event = start(ctl, conn, source)
    on_event(done(120, with_latent=False))  # msg.latent() raises: no history possible
    assert ctl.status.error and ctl.status.busy == "" and not ctl.dragging
    assert "kept in layer 'Drag 1 (no history)'" in ctl.status.message
    kept = [n for n in doc.iter_nodes() if n.name() == "Drag 1 (no history)"]
    assert len(kept) == 1 and region_pixels(kept[0]) == raw_pixels(raw_image(120), SIZE)
    assert PREVIEW_LAYER_NAME not in names(doc)
    assert History(doc).load(layer_id(kept[0])) is None


# --------------------------------------------------------------------------- finding 2: watchdog and Stop


def test_a_silent_drag_fails_after_the_watchdog_keeping_the_last_preview(setup):
    ctl, conn, doc, source, _ = setup
    on_event = start(ctl, conn, source)
    on_event(frame(33))
    conn.tick(DRAG_SILENCE_S - 1)
    assert ctl.dragging and not ctl.status.error  # still within the limit
    conn.tick(1.0)
    assert not ctl.dragging and ctl.status.busy == "" and ctl.status.error
    assert f"no word from the daemon for {DRAG_SILENCE_S:g} s" in ctl.status.message
    kept = [n for n in doc.iter_nodes() if n.name() == UNFINISHED_LAYER_NAME]
    assert len(kept) == 1 and region_pixels(kept[0]) == raw_pixels(raw_image(33), SIZE)
    assert PREVIEW_LAYER_NAME not in names(doc)
    assert conn.forgotten == ["drag-0"]
    assert ("close_session", {"session": "s1"}) in [r[:2] for r in conn.requests]
    on_event(done(99))  # a late result changes nothing
    assert "Drag 1" not in names(doc)


def test_events_reset_the_watchdog_and_no_frame_means_no_leftover_layer(setup):
    ctl, conn, doc, source, _ = setup
    before = names(doc)
    on_event = start(ctl, conn, source)
    conn.tick(DRAG_SILENCE_S - 1)
    on_event(protocol.Message("drag_step", "drag-0", {"step": 3, "distances": [4.0]}, [], session="s1"))
    conn.tick(DRAG_SILENCE_S - 1)
    assert ctl.dragging and ctl.status.step == 3
    conn.tick(1.0)
    assert not ctl.dragging and ctl.status.error and "your image is unchanged" in ctl.status.message
    assert names(doc) == before


def stop_and_reply(ctl, conn, **content):
    ctl.stop()
    assert ctl.status.busy == "stopping"
    msg_type, sent, on_reply, _ = conn.requests[-1]
    assert (msg_type, sent) == ("drag_stop", {"session": "s1"})
    on_reply(protocol.Message("drag_stop_reply", "x", {"session": "s1", **content}, [], status="ok"))


def test_stop_against_a_drag_that_had_ended_finishes_cleanly(setup):
    ctl, conn, doc, source, _ = setup
    on_event = start(ctl, conn, source)
    on_event(frame(50))
    stop_and_reply(ctl, conn, was_running=False, state="idle")
    assert ctl.status.busy == "stopping"
    conn.tick(STOP_GRACE_S)
    assert ctl.status.busy == "" and not ctl.dragging
    assert "the daemon sent no result" in ctl.status.message
    assert UNFINISHED_LAYER_NAME in names(doc) and PREVIEW_LAYER_NAME not in names(doc)


def test_stop_of_a_running_drag_waits_for_its_result(setup):
    ctl, conn, doc, source, _ = setup
    on_event = start(ctl, conn, source)
    stop_and_reply(ctl, conn, was_running=True, state="idle")
    conn.tick(STOP_GRACE_UNKNOWN_S + 1)
    assert ctl.status.busy == "stopping"  # drag_done is on its way
    on_event(done(77))
    assert ctl.status.busy == "" and not ctl.status.error and "Drag 1" in names(doc)


def test_stop_reply_from_an_older_daemon_ends_the_drag_after_a_grace(setup):
    ctl, conn, doc, source, _ = setup
    before = names(doc)
    start(ctl, conn, source)
    stop_and_reply(ctl, conn, state="idle")  # no was_running
    conn.tick(STOP_GRACE_S)
    assert ctl.status.busy == "stopping"
    conn.tick(STOP_GRACE_UNKNOWN_S - STOP_GRACE_S)
    assert ctl.status.busy == "" and names(doc) == before  # no preview frame arrived: nothing kept


# --------------------------------------------------------------------------- finding 5: listeners, reconnect


def test_a_listener_of_a_deleted_docker_is_dropped_and_others_keep_working(setup):
    ctl, conn, doc, source, statuses = setup

    def deleted_widget(status):
        raise RuntimeError("wrapped C/C++ object of type QLabel has been deleted")

    def buggy(status):
        raise ValueError("a bug")

    ctl.add_listener(deleted_widget)
    ctl.add_listener(buggy)
    on_event = start(ctl, conn, source)
    assert deleted_widget not in ctl.listeners and buggy in ctl.listeners
    on_event(frame(5))
    on_event(done(6))
    assert not ctl.status.error and "Drag 1" in names(doc) and "'Drag 1' added" in statuses[-1]
    ctl.remove_listener(buggy)
    assert buggy not in ctl.listeners


def test_connect_during_a_drag_fails_the_drag(setup):
    ctl, conn, doc, source, _ = setup
    before = names(doc)
    start(ctl, conn, source)
    ctl.connect(" tcp://127.0.0.1:5617 ")
    assert conn.opened == ["tcp://127.0.0.1:5617"]
    assert not ctl.dragging and ctl.status.busy == "" and ctl.status.error
    assert "reconnected during the drag" in ctl.status.message and names(doc) == before


# --------------------------------------------------------------------------- previews for large regions


def test_preview_frames_are_no_larger_than_the_region_and_slower_for_large_ones():
    assert preview_options(64, 256, "jpeg", 100) == {"encoding": "jpeg", "size": 64, "interval_ms": 100}
    big = preview_options(2000, 256, "jpeg", 100)
    assert big["size"] == 256 and big["interval_ms"] == 400
    assert preview_options(6000, 1024, "png", 100)["interval_ms"] == controller_module.MAX_PREVIEW_INTERVAL_MS
    assert preview_options(10, 256, "png", 100)["size"] is None  # below the protocol's minimum
    assert preview_options(3000, None, "png", 100)["size"] is None  # resolution unknown: the daemon's own


def test_drag_asks_for_previews_at_the_region_size(setup):
    ctl, conn, _, source, _ = setup
    start(ctl, conn, source, started=False)
    preview = conn.drags[-1][2]["preview"]
    assert preview["size"] == SIZE and preview["interval_ms"] == 100
    protocol.validate_content("drag_start", {"latent": "x" * 8, "handles": [[1, 2]], "targets": [[3, 4]],
                                             "preview": preview})
