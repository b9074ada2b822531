"""Which layer a drag starts from, and where its result goes (pure over krita_api.KritaDocument)."""

from __future__ import annotations

from typing import Any

from .history import History, HistoryError, HistoryRecord
from .krita_api import PREVIEW_LAYER_NAME, KritaDocument, layer_id


def drag_source(doc: KritaDocument, source_id: str | None = None) -> tuple[Any, HistoryRecord]:
    """The layer to drag from and its record: the given one, else the active layer if DragGAN made
    it, else the topmost DragGAN layer (so drawing on the points layer keeps the obvious source)."""
    history = History(doc)
    if source_id is not None:
        node = doc.node_by_id(source_id)
        if node is None:
            raise HistoryError(f"layer {source_id} no longer exists")
        record = history.load(source_id)
        if record is None:
            raise HistoryError(f"layer '{node.name()}' was not made by DragGAN: select a generated layer")
        return node, record
    active = doc.active_node()
    if active is not None:
        record = history.load(layer_id(active))
        if record is not None:
            return active, record
    known = set(history.layer_ids())
    for node in reversed(list(doc.iter_nodes())):  # topmost first
        if layer_id(node) in known and node.name() != PREVIEW_LAYER_NAME:
            record = history.load(layer_id(node))
            if record is not None:
                return node, record
    raise HistoryError("no DragGAN layer in this image: generate one first (New image)")


def result_anchor(doc: KritaDocument, source: Any) -> Any:
    """Results go above the source and above any newer DragGAN layer beside it, so they show."""
    made_here = set(History(doc).layer_ids())
    siblings = doc.siblings(source)
    ids = [layer_id(n) for n in siblings]
    anchor = source
    for node, node_id in list(zip(siblings, ids))[ids.index(layer_id(source)) + 1 :]:
        if node_id in made_here:
            anchor = node
    return anchor
