"""The artist's workflow: connect, generate, drag (with live preview), stop, finish.

No direct Krita calls: documents come from `document_provider()` as krita_api.KritaDocument,
the network from connection.DaemonConnection (or any object with its interface, for tests).
Every user action either completes or ends with a plain-words message. The source layer is
never written. A finished drag's image is never dropped: it is written into the preview
layer, which becomes the result layer (so one undo removes it); if its history cannot be
recorded the layer stays, renamed, and the docker says so. A drag the daemon stops talking
about fails after DRAG_SILENCE_S, keeping the last preview frame that arrived.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .geometry import PointsError, Region, collect_drag_points, points_to_model
from .history import History, HistoryError, HistoryRecord, check_model
from .krita_api import PREVIEW_LAYER_NAME, KritaDocument, layer_id
from .lineage import drag_source, result_anchor
from .link import COMPUTE_TIMEOUT_S
from .mask import MaskError, mask_fraction, mask_from_selection

MAX_DAEMON_IMAGE = 2048  # the protocol's max image size; larger regions are scaled here
MIN_DAEMON_IMAGE = 16
DRAG_SILENCE_S = 60.0  # a running drag with no event for this long has failed
START_SILENCE_S = COMPUTE_TIMEOUT_S  # before the start reply: the daemon may be busy with other work
STOP_GRACE_S = 2.0  # after a drag_stop reply saying nothing ran: a drag_done may still be on its way
STOP_GRACE_UNKNOWN_S = 5.0  # after a reply without was_running (an older daemon)
PREVIEW_MS_PER_MEGAPIXEL = 100  # preview frames are scaled to the region on the GUI thread
MAX_PREVIEW_INTERVAL_MS = 1000
UNFINISHED_LAYER_NAME = "DragGAN last preview (unfinished)"
_PLACEHOLDER_ID = "00000000-0000-0000-0000-000000000000"


def _pixels(image, size: int) -> bytes:
    """A protocol Image as BGRA layer pixels, size x size (QImage decoding and scaling)."""
    from . import images  # Qt: imported here so the workflow logic loads without Qt (unit tests)

    return images.to_bgra(images.decode(image.width, image.height, image.encoding, image.data), size)


def preview_options(region_size: int, resolution: int | None, encoding: str, interval_ms: int) -> dict:
    """Preview frames no larger than the region (nor the model), less often for large regions: each
    frame is decoded, scaled to the whole region and written on the GUI thread."""
    size = None
    if resolution:
        size = min(int(resolution), region_size, MAX_DAEMON_IMAGE)
        size = size if size >= MIN_DAEMON_IMAGE else None
    floor = min(MAX_PREVIEW_INTERVAL_MS, region_size * region_size * PREVIEW_MS_PER_MEGAPIXEL // 1_000_000)
    return {"encoding": encoding, "size": size, "interval_ms": max(int(interval_ms), floor)}


@dataclass
class DragOptions:
    max_steps: int = 200
    use_selection: bool = True
    grow: int = 0  # px, applied to a copy of the selection before it becomes the mask
    feather: int = 0
    preview_interval_ms: int = 100
    preview_encoding: str = "jpeg"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Status:
    """Everything the docker shows."""

    link_state: str = "offline"
    link_message: str = "not connected"
    model: str = ""
    busy: str = ""  # "", "generating", "dragging", "stopping"
    message: str = ""
    error: bool = False
    step: int = 0
    max_steps: int = 0
    distance: float | None = None
    start_distance: float | None = None
    last_layer_id: str = ""  # the layer the last action created


@dataclass
class _Drag:
    doc: KritaDocument
    source: Any
    record: HistoryRecord
    region: Region
    handles: list[list[float]]
    targets: list[list[float]]
    masked: bool
    preview: Any
    last_event: float = 0.0  # connection clock: the watchdog fails a drag that went silent
    session: str | None = None
    stop_requested: bool = False
    stop_deadline: float | None = None  # set when the stop reply says no drag_done is coming
    frames: int = 0  # preview frames written into the preview layer
    stream: Any = None  # the client's DragStream, to forget when given up on
    finished: bool = False


class Controller:
    """One per Krita instance; the docker and the actions share it."""

    def __init__(self, document_provider: Callable[[], KritaDocument],
                 connection_factory: Callable[[Callable[[], None]], Any] | None = None,
                 pixels: Callable[[Any, int], bytes] = _pixels) -> None:
        self.document_provider = document_provider
        self.status = Status()
        self.listeners: list[Callable[[Status], None]] = []
        if connection_factory is None:
            from .connection import DaemonConnection  # Qt

            connection_factory = DaemonConnection
        self.connection = connection_factory(self._link_changed)
        self.connection.on_tick = self.check_deadlines
        self.pixels = pixels
        self._drag: _Drag | None = None

    # ----------------------------------------------------------------- status
    def add_listener(self, fn: Callable[[Status], None]) -> None:
        self.listeners.append(fn)

    def remove_listener(self, fn: Callable[[Status], None]) -> None:
        if fn in self.listeners:
            self.listeners.remove(fn)

    def _emit(self) -> None:
        """Tell every listener; one on a deleted widget (RuntimeError) is dropped, any other error is
        printed: a listener never breaks the drag or the connection."""
        for fn in list(self.listeners):
            try:
                fn(self.status)
            except RuntimeError:  # "wrapped C/C++ object … has been deleted": its docker is gone
                self.remove_listener(fn)
            except Exception:
                traceback.print_exc()

    def _say(self, message: str, error: bool = False, busy: str | None = None) -> None:
        self.status.message, self.status.error = message, error
        if busy is not None:
            self.status.busy = busy
        self._emit()

    def _link_changed(self) -> None:
        link = self.connection.link
        self.status.link_state, self.status.link_message = link.state, link.message
        self.status.model = link.default_model().get("name", "") if link.ready else ""
        self._emit()

    # ----------------------------------------------------------------- connection
    def connect(self, endpoint: str, server_key: str = "", client_key: str = "") -> None:
        if self._drag is not None:  # its events can never arrive on the new connection
            self._fail_drag("reconnected during the drag")
        self.connection.open(endpoint.strip(), server_key.strip(), client_key.strip())

    def disconnect(self) -> None:
        if self._drag is not None:
            self._fail_drag("disconnected during the drag")
        self.connection.close()

    # ----------------------------------------------------------------- generate
    def generate(self, seed: int | None = None, psi: float = 0.7) -> None:
        if self.status.busy:
            self._say(f"busy ({self.status.busy}); wait or press Stop", error=True)
            return
        try:
            doc = self.document_provider()
        except ValueError as e:
            self._say(str(e), error=True)
            return
        seed = random.randrange(2**32) if seed is None else int(seed)
        region = Region.fitted(*doc.size())
        model = self.connection.link.default_model()
        resolution = model.get("resolution")  # None until a pickled model is loaded: learn it from the image
        self._say(f"generating seed {seed}…", busy="generating")

        def on_reply(msg) -> None:
            try:
                image, latent = msg.image(), msg.latent()
                bgra = self.pixels(image, region.size)
                res = int(resolution or image.width)
                node = doc.add_pixel_layer(f"DragGAN seed {seed}", bgra, region)
                record = HistoryRecord(
                    layer_id=layer_id(node), kind="generate", model=model.get("name", ""),
                    model_source=str(model.get("source", "")), resolution=res,
                    region=region.as_list(), latent=latent.data, latent_shape=list(latent.shape),
                    latent_id=latent.id, layer_name=node.name(), seed=seed, truncation=psi,
                )
                History(doc).save(record)
                doc.set_active(node)
                doc.refresh()
            except Exception as e:
                self._say(f"could not place the generated image: {e}", error=True, busy="")
                return
            self.status.last_layer_id = record.layer_id
            self._say(f"new layer '{node.name()}' (seed {seed}, ψ {psi:g})", busy="")

        def on_error(text: str) -> None:
            self._say(f"generate failed: {text}", error=True, busy="")

        size = region.size if resolution and 16 <= region.size <= MAX_DAEMON_IMAGE else None
        content = {"seed": seed, "psi": float(psi), "image": {"encoding": "png", "size": size}}
        if model.get("name"):
            content["model"] = model["name"]
        self.connection.request("generate", content, (), on_reply, on_error, timeout=COMPUTE_TIMEOUT_S)

    # ----------------------------------------------------------------- points layer
    def create_points_layer(self) -> None:
        try:
            doc = self.document_provider()
            layer = doc.ensure_points_layer()
            doc.set_active(layer)
        except Exception as e:
            self._say(f"could not create the points layer: {e}", error=True)
            return
        self._say("draw lines or arrows on 'Drag points': first point = handle, last point = target")

    # ----------------------------------------------------------------- drag
    def drag(self, options: DragOptions | None = None, source_id: str | None = None) -> None:
        options = options or DragOptions()
        if self.status.busy:
            self._say(f"busy ({self.status.busy}); wait or press Stop", error=True)
            return
        if not self.connection.ready:
            self._say(self.connection.not_ready_message(), error=True)
            return
        try:
            doc = self.document_provider()
            source, record = drag_source(doc, source_id)
            model = check_model(record, self.connection.link.hello.get("models", []))
            region = Region.from_list(record.region)
            points_layer = doc.points_layer()
            if points_layer is None:
                raise PointsError("there is no 'Drag points' layer: press 'Points layer' and draw arrows")
            points = collect_drag_points(doc.shapes(points_layer), doc.resolution())
            handles, targets = points_to_model(points, region, record.resolution)
            mask = None
            if options.use_selection:
                selected = doc.selection_bytes(region, options.grow, options.feather)
                if selected is not None:
                    mask = mask_from_selection(selected, region.size, record.resolution)
        except (PointsError, MaskError, HistoryError, ValueError) as e:
            self._say(str(e), error=True)
            return
        except Exception as e:  # a Krita call failed: report, never raise into Qt
            self._say(f"could not read the drag input: {e}", error=True)
            return

        c = self.connection.client_module
        latent = self.connection.protocol.Latent(tuple(record.latent_shape), record.latent)
        try:
            preview = doc.add_pixel_layer(PREVIEW_LAYER_NAME, doc.read_pixels(source, region), region,
                                          above=result_anchor(doc, source))
        except Exception as e:
            self._say(f"could not create the preview layer: {e}", error=True)
            return
        drag = _Drag(doc, source, record, region, handles, targets, mask is not None, preview,
                     last_event=self.connection.clock())
        self._drag = drag
        size = region.size if MIN_DAEMON_IMAGE <= region.size <= MAX_DAEMON_IMAGE else None
        self.status.step, self.status.max_steps = 0, options.max_steps
        self.status.distance = self.status.start_distance = None
        where = f", mask {mask_fraction(mask):.0%} of the image" if mask is not None else ""
        encodings = self.connection.link.hello.get("encodings") or ["png"]
        preview_encoding = options.preview_encoding if options.preview_encoding in encodings else "png"
        self._say(f"dragging {len(handles)} point(s) from '{source.name()}'{where}…", busy="dragging")
        drag.stream = self.connection.start_drag(
            lambda msg: self._on_drag_event(drag, msg),
            lambda text: self._fail_drag(f"drag failed: {text}", drag),
            latent=latent, handles=handles, targets=targets, model=model.get("name"),
            mask=c.Mask(record.resolution, record.resolution, mask) if mask is not None else None,
            params=options.params, max_steps=options.max_steps,
            preview=preview_options(region.size, record.resolution, preview_encoding,
                                    options.preview_interval_ms),
            final={"encoding": "png", "size": size},
        )

    def stop(self) -> None:
        drag = self._drag
        if drag is None:
            return
        drag.stop_requested = True
        self._say("stopping…", busy="stopping")
        if drag.session is None:
            return  # sent as soon as the daemon confirms the start (see _on_drag_event)
        self.connection.request("drag_stop", {"session": drag.session}, (),
                                lambda msg: self._on_stop_reply(drag, msg),
                                lambda text: self._fail_drag(f"stop failed: {text}", drag))

    def _on_stop_reply(self, drag: _Drag, msg) -> None:
        """A running drag answers Stop with a drag_done; when nothing was running (the drag ended and
        its drag_done was lost), or an older daemon does not say, end it after a short grace."""
        if drag.finished:
            return
        was_running = msg.content.get("was_running")
        if was_running is True:
            return  # drag_done follows; the silence watchdog covers its loss
        grace = STOP_GRACE_S if was_running is False else STOP_GRACE_UNKNOWN_S
        drag.stop_deadline = self.connection.clock() + grace

    def check_deadlines(self, now: float) -> None:
        """Called on every connection poll: end a drag that went silent or whose result is not coming."""
        drag = self._drag
        if drag is None or drag.finished:
            return
        if drag.stop_deadline is not None and now >= drag.stop_deadline:
            self._end_unfinished(drag, "stopped, but the daemon sent no result (the drag had already ended)")
            return
        limit = DRAG_SILENCE_S if drag.session is not None else START_SILENCE_S
        if now - drag.last_event >= limit:
            self._end_unfinished(drag, f"drag failed: no word from the daemon for {limit:g} s")

    # ----------------------------------------------------------------- drag events
    def _on_drag_event(self, drag: _Drag, msg) -> None:
        if drag.finished:
            return
        drag.last_event = self.connection.clock()
        try:
            if msg.is_reply:
                if not msg.ok:
                    self._fail_drag(f"the daemon refused the drag: {msg.content.get('message')}", drag)
                    return
                drag.session = msg.content.get("session")
                if drag.stop_requested:  # Stop was pressed before the daemon confirmed the start
                    self.stop()
            elif msg.type == "drag_step":
                distances = msg.content.get("distances") or [0.0]
                self.status.step = int(msg.content.get("step", 0))
                self.status.distance = max(distances)
                if self.status.start_distance is None:
                    self.status.start_distance = self.status.distance
                self._emit()
            elif msg.type == "drag_frame":
                image = msg.image()
                bgra = self.pixels(image, drag.region.size)
                drag.doc.write_pixels(drag.preview, bgra, drag.region)
                drag.frames += 1
                drag.doc.refresh()
            elif msg.type == "drag_done":
                self._finish_drag(drag, msg)
            elif msg.type == "drag_error":
                self._fail_drag(f"drag failed: {msg.content.get('message')}", drag)
        except Exception as e:
            if drag.finished:  # the result is placed (or kept); only the report failed
                self._say(f"the drag ended, but: {e}", error=True, busy="")
            else:
                self._fail_drag(f"drag failed while handling '{msg.type}': {e}", drag)

    def _finish_drag(self, drag: _Drag, msg) -> None:
        """The final image goes into the preview layer first, which then becomes 'Drag N' with its
        history record. Whatever fails after the pixels are in, the image stays, in a named layer."""
        try:
            bgra = self.pixels(msg.image(), drag.region.size)
        except Exception as e:  # nothing of the result is usable: keep the last preview frame
            self._end_unfinished(drag, f"the drag finished but its final image could not be read ({e})")
            return
        drag.finished = True
        if self._drag is drag:
            self._drag = None
        doc, region, content, node = drag.doc, drag.region, msg.content, drag.preview
        self._close_session(drag)
        name = ""
        try:
            doc.write_pixels(node, bgra, region)
            drag.frames += 1
            history = History(doc)
            name = f"Drag {history.next_drag_number()}"
            latent = msg.latent()
            record = HistoryRecord(  # built in full before anything is renamed or saved
                layer_id=_PLACEHOLDER_ID, kind="drag", model=drag.record.model,
                model_source=drag.record.model_source, resolution=drag.record.resolution,
                region=region.as_list(), latent=latent.data, latent_shape=list(latent.shape),
                latent_id=latent.id, layer_name=name, parent_id=layer_id(drag.source), handles=drag.handles,
                targets=drag.targets, final_points=[list(map(float, p)) for p in content.get("points", [])],
                masked=drag.masked, steps=int(content.get("step", 0)),
                extra={"reason": content.get("reason", "")},
            )
            record = replace(record, layer_id=layer_id(node))
            doc.rename_node(node, name)
            history.save(record)
        except Exception as e:
            self._keep_result(drag, name, e)
            return
        drag.preview = None  # it is the result layer now
        try:
            doc.set_active(node)
            doc.refresh()
        except Exception:  # cosmetic; the result and its history are in place
            traceback.print_exc()
        distances = content.get("distances") or []
        self.status.step = int(content.get("step", 0))
        self.status.distance = max(distances) if distances else None
        self.status.last_layer_id = record.layer_id
        reason = {"converged": "reached the targets", "max_steps": "step limit reached",
                  "stopped": "stopped"}.get(content.get("reason"), content.get("reason", ""))
        self._say(f"'{name}' added ({reason}, {self.status.step} steps)", busy="")

    def _keep_result(self, drag: _Drag, name: str, error: Exception) -> None:
        """The result image is in the preview layer but its history could not be recorded: keep the
        layer under a plain name, say so (it cannot be dragged further: its latent is not saved)."""
        kept = f"{name or 'DragGAN result'} (no history)"
        drag.preview = self._rename_or_none(drag, kept)
        where = f"kept in layer '{kept}'" if drag.preview is not None else "lost with the document"
        self.status.last_layer_id = ""
        self._say(f"the drag finished, but its history could not be saved ({error}); the result is {where} "
                  "and cannot be dragged further", error=True, busy="")

    def _end_unfinished(self, drag: _Drag, message: str) -> None:
        """End a drag whose result will not come: keep the last preview frame as a plainly named layer
        (if any arrived), tell the daemon to drop the session, and say what happened."""
        if drag.finished:
            return
        drag.finished = True
        if self._drag is drag:
            self._drag = None
        self._close_session(drag)
        if drag.stream is not None:
            self.connection.forget(getattr(drag.stream, "request_id", ""))
        kept = self._rename_or_none(drag, UNFINISHED_LAYER_NAME) if drag.frames else None
        if kept is None:
            self._remove_preview(drag)
            self._say(message + " — your image is unchanged", error=True, busy="")
        else:
            self._say(f"{message}; the last preview is kept as layer '{UNFINISHED_LAYER_NAME}'",
                      error=True, busy="")

    @staticmethod
    def _rename_or_none(drag: _Drag, name: str) -> Any:
        try:
            drag.doc.rename_node(drag.preview, name)
            drag.doc.refresh()
            return drag.preview
        except Exception:  # the document may be gone
            traceback.print_exc()
            return None

    def _close_session(self, drag: _Drag) -> None:
        if drag.session and self.connection.ready:
            self.connection.request("close_session", {"session": drag.session}, (), lambda m: None,
                                    lambda t: None)

    def _fail_drag(self, message: str, drag: _Drag | None = None) -> None:
        drag = drag or self._drag
        if drag is None or drag.finished:
            return
        drag.finished = True
        if self._drag is drag:
            self._drag = None
        self._remove_preview(drag)
        self._close_session(drag)
        self._say(message + " — your image is unchanged", error=True, busy="")

    @staticmethod
    def _remove_preview(drag: _Drag) -> None:
        if drag.preview is not None:
            try:
                drag.doc.remove_node(drag.preview)
                drag.doc.refresh()
            except Exception:  # the document may be gone; nothing else to clean up
                pass
            drag.preview = None

    @property
    def dragging(self) -> bool:
        return self._drag is not None
