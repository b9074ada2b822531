"""The artist's workflow: connect, generate, drag (with live preview), stop, finish.

No direct Krita calls: documents come from `document_provider()` as krita_api.KritaDocument,
the network from connection.DaemonConnection. Every user action either completes or ends
with a plain-words message; on any error the preview layer is removed and nothing else of
the document is touched (the source layer is never written).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import images
from .connection import COMPUTE_TIMEOUT_S, DaemonConnection
from .geometry import PointsError, Region, collect_drag_points, points_to_model
from .history import History, HistoryError, HistoryRecord, check_model
from .krita_api import PREVIEW_LAYER_NAME, KritaDocument, layer_id
from .lineage import drag_source, result_anchor
from .mask import MaskError, mask_fraction, mask_from_selection

MAX_DAEMON_IMAGE = 2048  # the protocol's max image size; larger regions are scaled here


def _pixels(image, size: int) -> bytes:
    """A protocol Image as BGRA layer pixels, size x size."""
    return images.to_bgra(images.decode(image.width, image.height, image.encoding, image.data), size)


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
    session: str | None = None
    stop_requested: bool = False
    finished: bool = False


class Controller:
    """One per Krita instance; the docker and the actions share it."""

    def __init__(self, document_provider: Callable[[], KritaDocument]) -> None:
        self.document_provider = document_provider
        self.status = Status()
        self.listeners: list[Callable[[Status], None]] = []
        self.connection = DaemonConnection(self._link_changed)
        self._drag: _Drag | None = None

    # ----------------------------------------------------------------- status
    def add_listener(self, fn: Callable[[Status], None]) -> None:
        self.listeners.append(fn)

    def _emit(self) -> None:
        for fn in list(self.listeners):
            fn(self.status)

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
                bgra = _pixels(image, region.size)
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
        drag = _Drag(doc, source, record, region, handles, targets, mask is not None, preview)
        self._drag = drag
        size = region.size if 16 <= region.size <= MAX_DAEMON_IMAGE else None
        self.status.step, self.status.max_steps = 0, options.max_steps
        self.status.distance = self.status.start_distance = None
        where = f", mask {mask_fraction(mask):.0%} of the image" if mask is not None else ""
        encodings = self.connection.link.hello.get("encodings") or ["png"]
        preview_encoding = options.preview_encoding if options.preview_encoding in encodings else "png"
        self._say(f"dragging {len(handles)} point(s) from '{source.name()}'{where}…", busy="dragging")
        self.connection.start_drag(
            lambda msg: self._on_drag_event(drag, msg),
            lambda text: self._fail_drag(f"drag failed: {text}", drag),
            latent=latent, handles=handles, targets=targets, model=model.get("name"),
            mask=c.Mask(record.resolution, record.resolution, mask) if mask is not None else None,
            params=options.params, max_steps=options.max_steps,
            preview={"encoding": preview_encoding, "interval_ms": options.preview_interval_ms},
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
        self.connection.request("drag_stop", {"session": drag.session}, (), lambda msg: None,
                                lambda text: self._fail_drag(f"stop failed: {text}", drag))

    # ----------------------------------------------------------------- drag events
    def _on_drag_event(self, drag: _Drag, msg) -> None:
        if drag.finished:
            return
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
                bgra = _pixels(image, drag.region.size)
                drag.doc.write_pixels(drag.preview, bgra, drag.region)
                drag.doc.refresh()
            elif msg.type == "drag_done":
                self._finish_drag(drag, msg)
            elif msg.type == "drag_error":
                self._fail_drag(f"drag failed: {msg.content.get('message')}", drag)
        except Exception as e:
            if drag.finished:  # failed while placing the result: the preview is already gone
                self._say(f"could not place the drag result: {e}", error=True, busy="")
            else:
                self._fail_drag(f"drag failed while handling '{msg.type}': {e}", drag)

    def _finish_drag(self, drag: _Drag, msg) -> None:
        drag.finished = True
        self._drag = None
        doc, region = drag.doc, drag.region
        image, latent = msg.image(), msg.latent()
        bgra = _pixels(image, region.size)
        self._remove_preview(drag)  # first, so that one undo removes exactly the result layer
        history = History(doc)
        name = f"Drag {history.next_drag_number()}"
        node = doc.add_pixel_layer(name, bgra, region, above=result_anchor(doc, drag.source))
        content = msg.content
        record = HistoryRecord(
            layer_id=layer_id(node), kind="drag", model=drag.record.model,
            model_source=drag.record.model_source, resolution=drag.record.resolution,
            region=region.as_list(), latent=latent.data, latent_shape=list(latent.shape), latent_id=latent.id,
            layer_name=name, parent_id=layer_id(drag.source), handles=drag.handles, targets=drag.targets,
            final_points=[list(map(float, p)) for p in content.get("points", [])], masked=drag.masked,
            steps=int(content.get("step", 0)), extra={"reason": content.get("reason", "")},
        )
        history.save(record)
        doc.set_active(node)
        doc.refresh()
        if drag.session:
            self.connection.request("close_session", {"session": drag.session}, (), lambda m: None,
                                    lambda t: None)
        distances = content.get("distances") or []
        self.status.step = int(content.get("step", 0))
        self.status.distance = max(distances) if distances else None
        self.status.last_layer_id = record.layer_id
        reason = {"converged": "reached the targets", "max_steps": "step limit reached",
                  "stopped": "stopped"}.get(content.get("reason"), content.get("reason", ""))
        self._say(f"'{name}' added ({reason}, {self.status.step} steps)", busy="")

    def _fail_drag(self, message: str, drag: _Drag | None = None) -> None:
        drag = drag or self._drag
        if drag is None or drag.finished:
            return
        drag.finished = True
        if self._drag is drag:
            self._drag = None
        self._remove_preview(drag)
        if drag.session and self.connection.ready:
            self.connection.request("close_session", {"session": drag.session}, (), lambda m: None,
                                    lambda t: None)
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
