"""krita_api wrappers and lineage over a small fake `krita` module.

Only where real Krita cannot run (unit level): the fake reproduces the Krita 5.1.5 behaviour
the wrappers rely on (docs/krita-notes B3): live `doc.selection()` handles, selection masks in
`childNodes()`, `{uuid}` strings, `addChildNode(node, above)`, bytes-based annotations. The
same code runs against real Krita in tests/test_krita_e2e.py.
"""

from __future__ import annotations

import sys
import types
import uuid

import pytest

from plugin_krita import krita_api
from plugin_krita.geometry import Region, collect_drag_points, points_to_model
from plugin_krita.history import History, HistoryError, HistoryRecord
from plugin_krita.krita_api import POINTS_LAYER_NAME, PREVIEW_LAYER_NAME, KritaDocument, layer_id
from plugin_krita.lineage import drag_source, result_anchor

# --------------------------------------------------------------------------- the fake krita module


class FakeQTransform:
    def __init__(self, m11=1.0, m12=0.0, m21=0.0, m22=1.0, dx=0.0, dy=0.0):
        self.v = (m11, m12, m21, m22, dx, dy)

    def m11(self):
        return self.v[0]

    def m12(self):
        return self.v[1]

    def m21(self):
        return self.v[2]

    def m22(self):
        return self.v[3]

    def dx(self):
        return self.v[4]

    def dy(self):
        return self.v[5]


class FakeShape:
    def __init__(self, svg, transform, name="", visible=True):
        self.svg, self.transform, self._name, self._visible = svg, transform, name, visible

    def toSvg(self):
        return self.svg

    def transformation(self):
        return self.transform

    def name(self):
        return self._name

    def visible(self):
        return self._visible

    def position(self):  # Krita's odd value: must never be used
        raise AssertionError("Shape.position() is not the translation; never use it")


class FakeUuid:
    def __init__(self):
        self.value = uuid.uuid4()

    def toString(self):
        return "{" + str(self.value) + "}"


class FakeNode:
    def __init__(self, name, kind="paintlayer"):
        self._name, self._type, self.children, self.parent = name, kind, [], None
        self.uuid = FakeUuid()
        self.pixels: dict[tuple, bytes] = {}
        self._shapes: list[FakeShape] = []

    def name(self):
        return self._name

    def setName(self, name):
        self._name = name

    def type(self):
        return self._type

    def uniqueId(self):
        return self.uuid

    def childNodes(self):
        return list(self.children)

    def parentNode(self):
        return self.parent

    def addChildNode(self, node, above):
        node.parent = self
        if above is None:
            self.children.append(node)
        else:
            index = next(i for i, n in enumerate(self.children) if n.uuid is above.uuid)
            self.children.insert(index + 1, node)
        return True

    def remove(self):
        self.parent.children.remove(self)

    def setPixelData(self, data, x, y, w, h):
        assert isinstance(data, bytes) and len(data) == w * h * 4
        self.pixels[(x, y, w, h)] = data

    def pixelData(self, x, y, w, h):
        return self.pixels.get((x, y, w, h), bytes(w * h * 4))

    def shapes(self):
        return list(self._shapes)


class FakeSelection:
    """Bytes of the whole canvas; grow/feather are recorded, pixelData crops."""

    def __init__(self, width, height, rect=None):
        self.w, self.h, self.ops = width, height, []
        self.data = bytearray(width * height)
        if rect:
            x, y, w, h = rect
            for row in range(y, y + h):
                self.data[row * width + x : row * width + x + w] = b"\xff" * w

    def duplicate(self):
        copy = FakeSelection(self.w, self.h)
        copy.data, copy.ops = bytearray(self.data), list(self.ops)
        return copy

    def grow(self, x, y):
        self.ops.append(("grow", x, y))

    def shrink(self, x, y, edge):
        self.ops.append(("shrink", x, y))

    def feather(self, r):
        self.ops.append(("feather", r))

    def pixelData(self, x, y, w, h):
        return b"".join(bytes(self.data[row * self.w + x : row * self.w + x + w]) for row in range(y, y + h))


class FakeDocument:
    def __init__(self, width=512, height=400, dpi=300):
        self.w, self.h, self.dpi = width, height, dpi
        self.root = FakeNode("root", "grouplayer")
        self.root.addChildNode(FakeNode("Background"), None)
        self.annotations: dict[str, bytes] = {}
        self._selection = None
        self.active = None

    def width(self):
        return self.w

    def height(self):
        return self.h

    def resolution(self):
        return self.dpi

    def rootNode(self):
        return self.root

    def activeNode(self):
        return self.active

    def setActiveNode(self, node):
        self.active = node

    def createNode(self, name, kind):
        return FakeNode(name, kind)

    def createVectorLayer(self, name):
        return FakeNode(name, "vectorlayer")

    def selection(self):
        return self._selection

    def setSelection(self, sel):
        self._selection = sel
        self.root.children = [n for n in self.root.children if n.type() != "selectionmask"]
        self.root.addChildNode(FakeNode("Selection Mask", "selectionmask"), None)  # as Krita does

    def annotationTypes(self):
        return list(self.annotations)

    def annotation(self, key):
        return self.annotations.get(key, b"")

    def setAnnotation(self, key, description, data):
        assert isinstance(data, bytes)
        self.annotations[key] = data

    def removeAnnotation(self, key):
        self.annotations.pop(key, None)

    def refreshProjection(self):
        pass


@pytest.fixture
def fake_krita(monkeypatch):
    """A `krita` module whose Krita.instance().activeDocument() is a FakeDocument."""
    doc = FakeDocument()
    app = types.SimpleNamespace(activeDocument=lambda: doc)
    module = types.ModuleType("krita")
    module.Krita = types.SimpleNamespace(instance=lambda: app)
    monkeypatch.setitem(sys.modules, "krita", module)
    return doc


# --------------------------------------------------------------------------- tests

ARROW_300 = '<path id="a" transform="matrix(0.24 0 0 0.24 48 36)" d="M0 0L36 0" sodipodi:nodetypes="cc"/>'


def test_active_document_comes_from_the_krita_module(fake_krita):
    doc = KritaDocument(krita_api.krita_instance().activeDocument())
    assert doc.size() == (512, 400) and doc.resolution() == 300.0
    with pytest.raises(ValueError, match="no document is open"):
        KritaDocument(None)


def test_shapes_use_transformation_and_resolution_and_skip_hidden(fake_krita):
    doc = KritaDocument(fake_krita)
    layer = doc.ensure_points_layer()
    assert doc.ensure_points_layer() is layer and layer.name() == POINTS_LAYER_NAME
    t = FakeQTransform(0.24, 0, 0, 0.24, 48, 36)  # pt; 48 pt = 200 px at 300 dpi
    layer._shapes = [FakeShape(ARROW_300, t, "a"), FakeShape(ARROW_300, t, "hidden", visible=False)]
    points = collect_drag_points(doc.shapes(layer), doc.resolution())
    assert len(points) == 1
    assert points[0].handle == pytest.approx((200, 150)) and points[0].target == pytest.approx((236, 150))
    handles, targets = points_to_model(points, Region.fitted(*doc.size()), 256)
    assert handles[0] == pytest.approx([(200 - 56) * 0.64 - 0.5, 150 * 0.64 - 0.5])
    assert targets[0] == pytest.approx([(236 - 56) * 0.64 - 0.5, 150 * 0.64 - 0.5])


def test_selection_is_duplicated_before_grow_and_feather(fake_krita):
    doc = KritaDocument(fake_krita)
    region = Region(56, 0, 400)
    assert doc.selection_bytes(region) is None  # no selection = no mask
    live = FakeSelection(512, 400, rect=(100, 50, 20, 10))
    fake_krita.setSelection(live)
    data = doc.selection_bytes(region, grow=3, feather=5)
    assert live.ops == []  # the document's own selection is untouched
    assert len(data) == 400 * 400
    assert data[50 * 400 + (100 - 56)] == 255 and data[50 * 400 + (99 - 56)] == 0
    assert doc.selection_bytes(region, grow=-2) is not None


def test_layers_skip_selection_masks_and_are_found_by_uuid(fake_krita):
    doc = KritaDocument(fake_krita)
    group = FakeNode("group", "grouplayer")
    fake_krita.root.addChildNode(group, None)
    inner = FakeNode("inner")
    group.addChildNode(inner, None)
    fake_krita.setSelection(FakeSelection(512, 400))
    assert [n.name() for n in doc.iter_nodes()] == ["Background", "group", "inner"]
    assert doc.node_by_id(inner.uuid.toString()) is inner
    assert doc.node_by_id(str(uuid.uuid4())) is None


def test_new_layers_go_under_the_points_layer_or_directly_above_a_node(fake_krita):
    doc = KritaDocument(fake_krita)
    region = Region(56, 0, 400)
    pixels = bytes(400 * 400 * 4)
    first = doc.add_pixel_layer("first", pixels, region)
    assert [n.name() for n in doc.iter_nodes()] == ["Background", "first"]
    doc.ensure_points_layer()
    second = doc.add_pixel_layer("second", pixels, region)
    assert [n.name() for n in doc.iter_nodes()] == ["Background", "first", "second", POINTS_LAYER_NAME]
    doc.add_pixel_layer("above first", pixels, region, above=first)
    assert [n.name() for n in doc.iter_nodes()][1:4] == ["first", "above first", "second"]
    assert second.pixels[(56, 0, 400, 400)] == pixels
    assert doc.read_pixels(second, region) == pixels


def record_for(node, **kw) -> HistoryRecord:
    return HistoryRecord(layer_id=layer_id(node), kind=kw.pop("kind", "generate"), model="m",
                         model_source="m", resolution=256, region=[56, 0, 400], latent=b"\0" * 16,
                         latent_shape=[1, 4], layer_name=node.name(), **kw)


def test_history_through_document_annotations(fake_krita):
    doc = KritaDocument(fake_krita)
    node = doc.add_pixel_layer("gen", bytes(400 * 400 * 4), Region(56, 0, 400))
    History(doc).save(record_for(node, seed=3))
    keys = doc.annotation_keys()
    assert sorted(keys) == sorted([f"krita_draggan/layer/{layer_id(node)}/meta",
                                   f"krita_draggan/layer/{layer_id(node)}/latent"])
    assert History(doc).load(node.uuid.toString()).seed == 3
    doc.remove_node(node)
    assert History(doc).prune(doc.layer_ids()) == [layer_id(node)]
    assert doc.annotation_keys() == []


def test_drag_source_prefers_the_active_history_layer_then_the_topmost(fake_krita):
    doc = KritaDocument(fake_krita)
    region = Region(56, 0, 400)
    with pytest.raises(HistoryError, match="generate one first"):
        drag_source(doc)
    gen = doc.add_pixel_layer("gen", bytes(400 * 400 * 4), region)
    drag1 = doc.add_pixel_layer("Drag 1", bytes(400 * 400 * 4), region, above=gen)
    points = doc.ensure_points_layer()
    history = History(doc)
    history.save(record_for(gen))
    history.save(record_for(drag1, kind="drag", parent_id=layer_id(gen)))
    fake_krita.setActiveNode(points)  # drawing arrows: the topmost DragGAN layer is the source
    assert drag_source(doc)[0] is drag1
    fake_krita.setActiveNode(gen)  # the artist selected an older history layer
    node, record = drag_source(doc)
    assert node is gen and record.kind == "generate"
    assert drag_source(doc, layer_id(drag1))[0] is drag1
    with pytest.raises(HistoryError, match="not made by DragGAN"):
        drag_source(doc, layer_id(points))
    # results from the older layer go above the newer DragGAN layers, where they show
    assert result_anchor(doc, gen) is drag1
    assert result_anchor(doc, drag1) is drag1
    preview = doc.add_pixel_layer(PREVIEW_LAYER_NAME, bytes(400 * 400 * 4), region, above=drag1)
    assert result_anchor(doc, gen) is drag1 and preview.name() == PREVIEW_LAYER_NAME
