"""Thin wrappers over Krita's Python API: the only module that touches Document/Node/Shape.

Everything here is a direct use of a verified Krita 5.1.5 fact (docs/krita-notes):
BGRA straight-alpha pixels, `addChildNode(n, above)` for placement (undoable), live
`doc.selection()` handles (always duplicate before grow/feather), `selectionmask` nodes to
skip, uuids as layer keys, annotations saved in the .kra. PyKrita accepts `bytes` wherever
it takes a QByteArray, so this module needs no Qt import (and unit tests run it on a fake).
"""

from __future__ import annotations

from collections.abc import Iterator

from .geometry import Affine, Region
from .history import normalize_layer_id

POINTS_LAYER_NAME = "Drag points"
PREVIEW_LAYER_NAME = "[Preview] DragGAN"
_NOT_LAYERS = ("selectionmask",)


def krita_instance():
    from krita import Krita  # only importable inside Krita

    return Krita.instance()


def layer_id(node) -> str:
    return normalize_layer_id(node.uniqueId().toString())


class KritaDocument:
    """One Krita Document, seen through the operations the plugin needs."""

    def __init__(self, doc) -> None:
        if doc is None:
            raise ValueError("no document is open: create or open an image first")
        self.doc = doc

    # ----------------------------------------------------------------- basics
    def size(self) -> tuple[int, int]:
        return int(self.doc.width()), int(self.doc.height())

    def resolution(self) -> float:
        return float(self.doc.resolution())

    def name(self) -> str:
        return self.doc.name() or self.doc.fileName() or "image"

    def refresh(self) -> None:
        self.doc.refreshProjection()

    # ----------------------------------------------------------------- layers
    def iter_nodes(self, parent=None) -> Iterator:
        """Every layer (depth first, bottom to top), without selection masks."""
        for node in (parent or self.doc.rootNode()).childNodes():
            if node.type() in _NOT_LAYERS:
                continue
            yield node
            yield from self.iter_nodes(node)

    def siblings(self, node) -> list:
        """The layers beside `node` in its parent, bottom to top (selection masks skipped)."""
        return [n for n in node.parentNode().childNodes() if n.type() not in _NOT_LAYERS]

    def node_by_id(self, layer_uuid: str):
        wanted = normalize_layer_id(layer_uuid)
        return next((n for n in self.iter_nodes() if layer_id(n) == wanted), None)

    def layer_ids(self) -> set[str]:
        return {layer_id(n) for n in self.iter_nodes()}

    def active_node(self):
        return self.doc.activeNode()

    def points_layer(self):
        layers = (n for n in self.iter_nodes() if n.type() == "vectorlayer" and n.name() == POINTS_LAYER_NAME)
        return next(layers, None)

    def ensure_points_layer(self):
        """The 'Drag points' vector layer, created on top of the stack if missing."""
        layer = self.points_layer()
        if layer is None:
            layer = self.doc.createVectorLayer(POINTS_LAYER_NAME)
            self.doc.rootNode().addChildNode(layer, None)
        return layer

    def add_pixel_layer(self, name: str, bgra: bytes, region: Region, above=None):
        """A new paint layer holding `bgra` (region.size² px) at the region; directly above `above`
        (in its parent) or on top, under the points layer. Adding a layer is undoable in Krita."""
        node = self.doc.createNode(name, "paintlayer")
        node.setPixelData(bgra, region.x, region.y, region.size, region.size)
        if above is not None:
            above.parentNode().addChildNode(node, above)
            return node
        root = self.doc.rootNode()
        top_level = [n for n in root.childNodes() if n.type() not in _NOT_LAYERS]
        points = self.points_layer()
        ids = [layer_id(n) for n in top_level]
        index = ids.index(layer_id(points)) if points is not None and layer_id(points) in ids else -1
        # directly under the points layer, so the arrows stay visible; else on top
        root.addChildNode(node, top_level[index - 1] if index > 0 else None)
        return node

    @staticmethod
    def write_pixels(node, bgra: bytes, region: Region) -> None:
        node.setPixelData(bgra, region.x, region.y, region.size, region.size)

    @staticmethod
    def read_pixels(node, region: Region) -> bytes:
        return bytes(node.pixelData(region.x, region.y, region.size, region.size))

    @staticmethod
    def remove_node(node) -> None:
        node.remove()

    @staticmethod
    def rename_node(node, name: str) -> None:
        """Not an undo step in Krita: undoing the layer's creation removes it under its new name."""
        node.setName(name)

    def set_active(self, node) -> None:
        self.doc.setActiveNode(node)

    # ----------------------------------------------------------------- points and selection
    def shapes(self, layer) -> list[tuple[str, Affine, str]]:
        """(toSvg, transformation in pt, name) of the layer's visible top-level shapes."""
        return [
            (s.toSvg(), Affine.from_qtransform(s.transformation()), s.name() or f"shape {i + 1}")
            for i, s in enumerate(layer.shapes())
            if s.visible()
        ]

    def selection_bytes(self, region: Region, grow: int = 0, feather: int = 0) -> bytes | None:
        """The selection inside the region (1 byte/px), grown then feathered; None if nothing is selected."""
        live = self.doc.selection()
        if live is None:
            return None
        sel = live.duplicate()  # doc.selection() is live: never modify it
        if grow > 0:
            sel.grow(grow, grow)
        elif grow < 0:
            sel.shrink(-grow, -grow, True)
        if feather > 0:
            sel.feather(feather)
        return bytes(sel.pixelData(region.x, region.y, region.size, region.size))

    # ----------------------------------------------------------------- annotations (history.AnnotationStore)
    def annotation_keys(self) -> list[str]:
        return list(self.doc.annotationTypes())

    def read_annotation(self, key: str) -> bytes:
        return bytes(self.doc.annotation(key))

    def write_annotation(self, key: str, description: str, data: bytes) -> None:
        self.doc.setAnnotation(key, description, data)

    def remove_annotation(self, key: str) -> None:
        self.doc.removeAnnotation(key)
