"""End-to-end test driver: a second Krita plugin that drives the installed krita_draggan plugin.

Started by tests/krita_e2e/run_e2e.py in an isolated HOME. It acts as the artist would
(documents, layers, vector arrows, selections, undo) and uses the plugin's shared Controller
exactly as the docker buttons do. Results go to $KRITA_DRAGGAN_E2E_DIR/phase<N>.json.
A watchdog always ends Krita: rc 0 = every check passed, 1 = a check failed, 3 = timeout.

Daemon restarts are asked of the runner through files in control/ (req-N.json -> ack-N.json).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from krita import Extension, Krita, Selection
from PyQt5.QtCore import QEventLoop, QTimer

OUT = Path(os.environ.get("KRITA_DRAGGAN_E2E_DIR", "/tmp/krita_draggan_e2e"))
PHASE = os.environ.get("KRITA_DRAGGAN_E2E_PHASE", "1")
TIMEOUT_S = float(os.environ.get("KRITA_DRAGGAN_E2E_TIMEOUT", "400"))
STEPS = int(os.environ.get("KRITA_DRAGGAN_E2E_STEPS", "12"))
# Mask thresholds, measured with the tiny random-weight test model (docs/plugin.md, "Testing"):
# seed 7 with these arrows and selection gives mean |change| inside/outside ~2.5; and across 10
# seeds the unmasked drag changed the outside 2.6-8.3x as much as the masked one.
MIN_INSIDE_OUTSIDE_RATIO = 1.5
MIN_OUTSIDE_REDUCTION = 2.0

W, H, DPI = 512, 400, 300.0  # not the model's size: exercises region scaling (region 400 px at x=56)
SELECTION = (173, 117, 133, 149)  # x, y, w, h in canvas px, inside the region, around the arrows
ARROWS_SVG = """<svg xmlns="http://www.w3.org/2000/svg">
<defs><marker id="arrow" orient="auto" markerWidth="6" markerHeight="6" refX="5" refY="3">
<path d="M0,0 L6,3 L0,6 z" fill="#ff0000"/></marker></defs>
<path id="arrow-a" d="M 200 150 L 236 150" stroke="#ff0000" stroke-width="3" fill="none"
 marker-end="url(#arrow)"/>
<g id="group-b"><path id="arrow-b" d="M 270 240 C 272 230 272 220 270 206" stroke="#0000ff" stroke-width="3"
 fill="none" marker-end="url(#arrow)"/></g>
</svg>"""
OUTSIDE_SVG = """<svg xmlns="http://www.w3.org/2000/svg">
<path id="outside" d="M 10 10 L 40 30" stroke="#000" stroke-width="2" fill="none"/></svg>"""

results: dict = {"phase": PHASE, "checks": [], "timings": {}, "notes": [], "error": None}
_t0 = time.monotonic()
_control_n = 0


# --------------------------------------------------------------------------- small tools


def check(name: str, ok: bool, detail: object = "") -> bool:
    results["checks"].append({"name": name, "ok": bool(ok), "detail": str(detail)})
    _write()
    return bool(ok)


def note(text: str) -> None:
    results["notes"].append(text)


def _write() -> None:
    results["elapsed_s"] = round(time.monotonic() - _t0, 2)
    (OUT / f"phase{PHASE}.json").write_text(json.dumps(results, indent=1))


def wait(ms: int) -> None:
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec_()


def wait_until(cond, timeout_s: float, step_ms: int = 25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        wait(step_ms)
    return bool(cond())


def control(cmd: str) -> dict:
    """Ask the runner to do something outside Krita (kill/start the daemon) and wait for it."""
    global _control_n
    _control_n += 1
    folder = OUT / "control"
    ack = folder / f"ack-{_control_n}.json"
    (folder / f"req-{_control_n}.json").write_text(json.dumps({"cmd": cmd}))
    if not wait_until(ack.exists, 120, 50):
        raise RuntimeError(f"the runner did not do {cmd!r} within 120 s")
    wait(50)
    return json.loads(ack.read_text())


def plugin():
    import krita_draggan.extension as ext  # the installed plugin (folder krita_draggan)

    return ext


def layer_names(doc) -> list[str]:
    return [n.name() for n in doc.rootNode().childNodes() if n.type() != "selectionmask"]


def node_by_id(doc, layer_id: str):
    from krita_draggan.krita_api import KritaDocument

    return KritaDocument(doc).node_by_id(layer_id)


def record_of(doc, layer_id: str):
    from krita_draggan.history import History
    from krita_draggan.krita_api import KritaDocument

    return History(KritaDocument(doc)).load(layer_id)


def region_pixels(node, region) -> bytes:
    x, y, s = region
    return bytes(node.pixelData(x, y, s, s))


def change_inside_outside(before: bytes, after: bytes, region) -> tuple[float, float]:
    """Mean |ΔRGB| per pixel inside and outside SELECTION, over the image region."""
    x0, y0, s = region
    sx, sy, sw, sh = SELECTION
    inside = outside = 0
    n_in = n_out = 0
    for row in range(s):
        y = y0 + row
        base = row * s * 4
        in_row = sy <= y < sy + sh
        for col in range(s):
            i = base + col * 4
            d = (
                abs(before[i] - after[i])
                + abs(before[i + 1] - after[i + 1])
                + abs(before[i + 2] - after[i + 2])
            )
            if in_row and sx <= x0 + col < sx + sw:
                inside += d
                n_in += 1
            else:
                outside += d
                n_out += 1
    return inside / (3 * n_in), outside / (3 * n_out)


def wait_idle(ctl, timeout_s: float, watch=None) -> bool:
    """Wait until the controller is not busy; `watch()` runs on every tick (for observations)."""

    def idle() -> bool:
        if watch is not None:
            watch()
        return not ctl.status.busy

    return wait_until(idle, timeout_s)


def new_view(doc) -> None:
    Krita.instance().activeWindow().addView(doc)
    wait_until(lambda: Krita.instance().activeDocument() == doc, 5)
    wait(300)


def select_layer(doc, node) -> bool:
    """Make `node` active as a click in the layer docker would (asynchronous in Krita)."""
    doc.setActiveNode(node)
    ok = wait_until(lambda: doc.activeNode() is not None and doc.activeNode().name() == node.name(), 3)
    if not ok:
        doc.setActiveNode(node)
        ok = wait_until(lambda: doc.activeNode() is not None and doc.activeNode().name() == node.name(), 3)
    return ok


def drag_and_watch(ctl, doc, options, source_id=None, timeout_s=240.0) -> dict:
    """Start a drag, watch progress and the preview layer, wait for the end."""
    from krita_draggan.krita_api import PREVIEW_LAYER_NAME

    seen = {"max_step": 0, "preview": False, "max_distance": None}

    def watch() -> None:
        seen["max_step"] = max(seen["max_step"], ctl.status.step)
        if ctl.status.distance is not None and seen["max_distance"] is None:
            seen["max_distance"] = ctl.status.distance
        if PREVIEW_LAYER_NAME in layer_names(doc):
            seen["preview"] = True

    # the GUI must never freeze: a 20 ms timer measures the longest gap between its ticks
    ticks = {"last": time.monotonic(), "max_gap": 0.0}

    def tick() -> None:
        now = time.monotonic()
        ticks["max_gap"] = max(ticks["max_gap"], now - ticks["last"])
        ticks["last"] = now

    ui_timer = QTimer()
    ui_timer.timeout.connect(tick)
    ui_timer.start(20)
    before = ctl.status.last_layer_id
    t = time.monotonic()
    ctl.drag(options, source_id=source_id)
    seen["finished"] = wait_idle(ctl, timeout_s, watch)
    seen["seconds"] = round(time.monotonic() - t, 2)
    ui_timer.stop()
    seen["max_ui_gap_ms"] = round(ticks["max_gap"] * 1000)
    seen["new_layer"] = ctl.status.last_layer_id if ctl.status.last_layer_id != before else None
    seen["message"] = ctl.status.message
    seen["error"] = ctl.status.error
    return seen


# --------------------------------------------------------------------------- phase 1


def phase1() -> None:
    from krita_draggan.controller import DragOptions
    from krita_draggan.krita_api import POINTS_LAYER_NAME, PREVIEW_LAYER_NAME

    app = Krita.instance()
    ext = plugin()
    docker = [d for d in app.dockers() if d.objectName() == ext.DOCKER_ID]
    check(
        "docker is registered and shown", docker and docker[0].isVisible(), [d.objectName() for d in docker]
    )
    ctl = ext.controller()
    endpoint = os.environ["KRITA_DRAGGAN_E2E_ENDPOINT"]
    t = time.monotonic()
    ok = wait_until(lambda: ctl.status.link_state == "ready", 30)
    results["timings"]["auto_connect_s"] = round(time.monotonic() - t, 2)
    check(
        "docker auto-connects to the endpoint saved in kritarc",
        ok and endpoint in ctl.status.link_message,
        ctl.status.link_message,
    )
    if not ok:
        ctl.connect(endpoint)
        wait_until(lambda: ctl.status.link_state == "ready", 30)
    check(
        "docker shows the model", ctl.status.model == os.environ["KRITA_DRAGGAN_E2E_MODEL"], ctl.status.model
    )

    doc = app.createDocument(W, H, "e2e", "RGBA", "U8", "", DPI)
    new_view(doc)
    n_layers = len(layer_names(doc))

    # ---- drag before any image: clear message, nothing added
    ctl.drag(DragOptions(max_steps=2))
    check(
        "drag without a DragGAN layer says so", "generate one first" in ctl.status.message, ctl.status.message
    )

    # ---- generate
    t = time.monotonic()
    ctl.generate(seed=7, psi=0.7)
    ok = wait_idle(ctl, 120)
    results["timings"]["generate_s"] = round(time.monotonic() - t, 2)
    src_id = ctl.status.last_layer_id
    check("generate finishes without error", ok and not ctl.status.error and src_id, ctl.status.message)
    source = node_by_id(doc, src_id)
    record = record_of(doc, src_id)
    region = record.region
    check("generated image sits in the centred square region", region == [56, 0, 400], region)
    bounds = source.bounds()
    check(
        "generated layer covers exactly the region (scaled 256 -> 400 px)",
        [bounds.x(), bounds.y(), bounds.width(), bounds.height()] == [56, 0, 400, 400],
        [bounds.x(), bounds.y(), bounds.width(), bounds.height()],
    )
    src_pixels = region_pixels(source, region)
    check(
        "generated pixels are an image, not flat",
        len(set(src_pixels[i : i + 3] for i in range(0, 40000, 4))) > 50,
    )
    check(
        "latent annotation stored with the layer",
        record.kind == "generate"
        and record.seed == 7
        and len(record.latent) == 4 * 14 * 512
        and record.model == ctl.status.model,
        (record.kind, record.seed, len(record.latent)),
    )
    check("generate adds exactly one layer", len(layer_names(doc)) == n_layers + 1, layer_names(doc))

    # ---- points: none yet, then outside the image
    ctl.create_points_layer()
    wait(200)
    points = doc.nodeByName(POINTS_LAYER_NAME)
    check("points button creates the vector layer", points is not None and points.type() == "vectorlayer")
    ctl.drag(DragOptions(max_steps=2))
    check(
        "zero paths gives a clear message",
        "no drag points" in ctl.status.message and ctl.status.error,
        ctl.status.message,
    )
    shapes = points.addShapesFromSvg(OUTSIDE_SVG)
    wait(300)
    ctl.drag(DragOptions(max_steps=2))
    check(
        "a path outside the image gives a clear message",
        "outside the image" in ctl.status.message,
        ctl.status.message,
    )
    for shape in shapes:
        shape.remove()
    check("no layer was added by refused drags", len(layer_names(doc)) == n_layers + 2, layer_names(doc))

    # ---- arrows + selection, then a drag
    points.addShapesFromSvg(ARROWS_SVG)
    wait(500)
    sel = Selection()
    sel.select(*SELECTION, 255)
    doc.setSelection(sel)
    wait(100)
    select_layer(doc, points)  # the artist just drew on the points layer: the source is found anyway
    seen = drag_and_watch(ctl, doc, DragOptions(max_steps=STEPS, feather=0))
    results["timings"]["drag1_s"] = seen["seconds"]
    results["timings"]["drag1_max_ui_gap_ms"] = seen["max_ui_gap_ms"]
    # a hang detector, not a speed test: blocking network waits would show as many seconds
    check(
        "Krita stays responsive during the drag (longest event-loop gap < 5 s)",
        seen["max_ui_gap_ms"] < 5000,
        seen["max_ui_gap_ms"],
    )
    drag1_id = seen["new_layer"]
    check("drag finishes with a new layer", seen["finished"] and drag1_id and not seen["error"], seen)
    check(
        "progress shows steps and remaining distance",
        seen["max_step"] >= 1 and seen["max_distance"] is not None,
        seen,
    )
    check("preview layer shown during the drag", seen["preview"], seen)
    check("preview layer removed at the end", PREVIEW_LAYER_NAME not in layer_names(doc), layer_names(doc))
    drag1 = node_by_id(doc, drag1_id)
    names = layer_names(doc)
    check(
        "result layer is 'Drag 1', directly above the source",
        drag1 is not None
        and drag1.name() == "Drag 1"
        and names.index("Drag 1") == names.index(source.name()) + 1,
        names,
    )
    check("source layer pixels are untouched", region_pixels(source, region) == src_pixels)
    r1 = record_of(doc, drag1_id)
    check(
        "drag latent annotation: parent, points, mask, steps",
        r1 is not None
        and r1.kind == "drag"
        and r1.parent_id == src_id
        and len(r1.handles) == 2
        and r1.masked
        and 1 <= r1.steps <= STEPS
        and r1.latent != record.latent,
        r1 and (r1.parent_id, len(r1.handles), r1.masked, r1.steps),
    )
    inside, outside = change_inside_outside(src_pixels, region_pixels(drag1, region), region)
    ratio = inside / max(outside, 1e-9)
    results["timings"]["mask_change_inside"] = round(inside, 3)
    results["timings"]["mask_change_outside"] = round(outside, 3)
    results["timings"]["mask_ratio"] = round(ratio, 3)
    check("pixels changed inside the selection", inside > 1.0, f"{inside:.2f}")
    check(
        f"changed much less outside (inside/outside >= {MIN_INSIDE_OUTSIDE_RATIO})",
        ratio >= MIN_INSIDE_OUTSIDE_RATIO,
        f"inside {inside:.2f} outside {outside:.2f} ratio {ratio:.2f}",
    )

    app.activeWindow().qwindow().grab().save(str(OUT / "window-after-drag.png"))  # for people to look at

    # ---- the same drag without the mask changes the outside much more
    app.action("deselect").trigger()  # Select > Deselect, as the artist would
    wait_until(lambda: doc.selection() is None, 5)
    seen = drag_and_watch(ctl, doc, DragOptions(max_steps=STEPS, use_selection=True), source_id=src_id)
    unmasked = record_of(doc, seen["new_layer"]) if seen["new_layer"] else None
    check("no selection = no mask", unmasked is not None and not unmasked.masked, seen)
    if unmasked is not None:
        _, outside_free = change_inside_outside(
            src_pixels, region_pixels(node_by_id(doc, unmasked.layer_id), region), region
        )
        reduction = outside_free / max(outside, 1e-9)
        results["timings"]["unmasked_change_outside"] = round(outside_free, 3)
        results["timings"]["mask_outside_reduction"] = round(reduction, 3)
        check(
            f"the mask makes outside changes >= {MIN_OUTSIDE_REDUCTION}x smaller than without it",
            reduction >= MIN_OUTSIDE_REDUCTION,
            f"outside with mask {outside:.2f}, without {outside_free:.2f}, factor {reduction:.2f}",
        )
    doc.setSelection(sel)

    # ---- undo removes the result layer, redo brings it back
    select_layer(doc, drag1)
    app.action("edit_undo").trigger()
    wait_until(lambda: "Drag 2" not in layer_names(doc), 5)
    check(
        "undo removes the last result layer (and only it)",
        "Drag 2" not in layer_names(doc)
        and "Drag 1" in layer_names(doc)
        and source.name() in layer_names(doc)
        and PREVIEW_LAYER_NAME not in layer_names(doc),
        layer_names(doc),
    )
    app.action("edit_redo").trigger()
    wait_until(lambda: "Drag 2" in layer_names(doc), 5)
    check(
        "redo brings it back with its history",
        unmasked is not None
        and node_by_id(doc, unmasked.layer_id) is not None
        and record_of(doc, unmasked.layer_id) is not None,
        layer_names(doc),
    )

    # ---- stop mid-drag
    t = time.monotonic()
    ctl.drag(DragOptions(max_steps=5000), source_id=src_id)
    wait_until(lambda: ctl.status.step >= 1 or not ctl.status.busy, 120)
    ctl.stop()
    stopped = wait_idle(ctl, 60)
    results["timings"]["stop_s"] = round(time.monotonic() - t, 2)
    r2 = record_of(doc, ctl.status.last_layer_id) if ctl.status.last_layer_id != unmasked.layer_id else None
    check(
        "Stop ends the drag and keeps the result",
        stopped and r2 is not None and r2.extra.get("reason") == "stopped" and r2.steps < 5000,
        (ctl.status.message, r2 and r2.extra, r2 and r2.steps),
    )
    stopped_id = r2.layer_id if r2 else ""

    # ---- the daemon dies mid-drag: a message within seconds, nothing lost
    before = layer_names(doc)
    ctl.drag(DragOptions(max_steps=5000), source_id=src_id)
    wait_until(lambda: ctl.status.step >= 1 or not ctl.status.busy, 120)
    t = time.monotonic()
    control("kill")
    ended = wait_idle(ctl, 15)
    results["timings"]["dead_daemon_mid_drag_message_s"] = round(time.monotonic() - t, 2)
    check(
        "daemon killed mid-drag: error within seconds, preview removed, no new layer",
        ended and ctl.status.error and layer_names(doc) == before,
        (ctl.status.message, layer_names(doc)),
    )
    wait_until(lambda: ctl.status.link_state != "ready", 10)
    t = time.monotonic()
    ctl.connect(endpoint)  # pressing Connect while no daemon runs
    failed = wait_until(lambda: ctl.status.link_state == "failed", 15)
    results["timings"]["connect_no_daemon_message_s"] = round(time.monotonic() - t, 2)
    check(
        "Connect with no daemon running: a plain message within seconds",
        failed and "no daemon answered" in ctl.status.link_message,
        ctl.status.link_message,
    )
    t = time.monotonic()
    ctl.generate(seed=3)
    wait_idle(ctl, 15)
    results["timings"]["dead_daemon_generate_message_s"] = round(time.monotonic() - t, 2)
    check(
        "generate with the daemon down: plain message, nothing added",
        ctl.status.error and layer_names(doc) == before,
        ctl.status.message,
    )

    # ---- the daemon comes back (empty caches): continue from the history layer 'Drag 1'
    control("start")
    t = time.monotonic()
    ok = wait_until(lambda: ctl.status.link_state == "ready", 60)
    results["timings"]["reconnect_s"] = round(time.monotonic() - t, 2)
    check("plugin reconnects to the restarted daemon by itself", ok, ctl.status.link_message)
    drag1_pixels = region_pixels(node_by_id(doc, drag1_id), region)
    select_layer(doc, node_by_id(doc, drag1_id))
    selection_before = (
        doc.selection().x(),
        doc.selection().y(),
        doc.selection().width(),
        doc.selection().height(),
    )
    seen = drag_and_watch(ctl, doc, DragOptions(max_steps=STEPS, grow=4, feather=6), source_id=drag1_id)
    selection_after = (
        doc.selection().x(),
        doc.selection().y(),
        doc.selection().width(),
        doc.selection().height(),
    )
    check(
        "grow/feather work on a copy: the document's selection is unchanged",
        selection_before == selection_after,
        (selection_before, selection_after),
    )
    r3 = record_of(doc, seen["new_layer"]) if seen["new_layer"] else None
    check(
        "after the restart, dragging continues from 'Drag 1' (latent from the document)",
        r3 is not None and r3.parent_id == drag1_id and not seen["error"],
        (seen, r3 and r3.parent_id),
    )
    if r3 is not None:
        changed = region_pixels(node_by_id(doc, r3.layer_id), region) != drag1_pixels
        check("continued drag changed the image", changed)

    # ---- save
    kra = OUT / "e2e.kra"
    doc.setBatchmode(True)
    check("saved as .kra", doc.saveAs(str(kra)) and kra.exists(), kra)
    ids = {
        "source": src_id,
        "drag1": drag1_id,
        "unmasked": unmasked.layer_id if unmasked else "",
        "stopped": stopped_id,
        "after_restart": r3.layer_id if r3 else "",
    }
    results["layer_ids"] = ids
    results["layer_names"] = layer_names(doc)


# --------------------------------------------------------------------------- phase 2


def phase2() -> None:
    from krita_draggan.controller import DragOptions

    app = Krita.instance()
    phase1_results = json.loads((OUT / "phase1.json").read_text())
    ids = phase1_results["layer_ids"]
    doc = app.openDocument(str(OUT / "e2e.kra"))
    check("the .kra opens", doc is not None)
    new_view(doc)
    check("layers survive the reopen", layer_names(doc) == phase1_results["layer_names"], layer_names(doc))
    for key, layer_id in ids.items():
        rec = record_of(doc, layer_id) if layer_id else None
        check(
            f"history of '{key}' survives saving and reopening",
            rec is not None and node_by_id(doc, layer_id) is not None,
            layer_id,
        )
    ctl = plugin().controller()
    ok = wait_until(lambda: ctl.status.link_state == "ready", 30)
    check("a new Krita session connects", ok, ctl.status.link_message)
    # select the history layer 'Drag 1' as the artist would, then press Drag (no explicit source)
    drag1 = node_by_id(doc, ids["drag1"])
    selected = select_layer(doc, drag1)
    if not selected:
        note("setActiveNode was not reflected within 6 s; passing the source explicitly")
    seen = drag_and_watch(
        ctl, doc, DragOptions(max_steps=STEPS), source_id=None if selected else ids["drag1"]
    )
    rec = record_of(doc, seen["new_layer"]) if seen["new_layer"] else None
    check(
        "dragging again from the reopened history layer continues from its latent",
        rec is not None and rec.parent_id == ids["drag1"] and rec.layer_name == "Drag 5",
        (seen, rec and rec.layer_name),
    )
    doc.setBatchmode(True)
    check("saved again", doc.saveAs(str(OUT / "e2e-2.kra")))

    # ---- a remote-style daemon with CURVE: refused without keys, works with them
    curve_endpoint = os.environ["KRITA_DRAGGAN_E2E_CURVE_ENDPOINT"]
    control("start_curve")
    t = time.monotonic()
    ctl.connect(curve_endpoint)
    failed = wait_until(lambda: ctl.status.link_state == "failed", 15)
    results["timings"]["curve_without_keys_message_s"] = round(time.monotonic() - t, 2)
    check(
        "a CURVE daemon without keys: a plain message",
        failed and "CURVE" in ctl.status.link_message,
        ctl.status.link_message,
    )
    ctl.connect(
        curve_endpoint, os.environ["KRITA_DRAGGAN_E2E_SERVER_KEY"], os.environ["KRITA_DRAGGAN_E2E_CLIENT_KEY"]
    )
    ok = wait_until(lambda: ctl.status.link_state == "ready", 15)
    check(
        "connects to the CURVE daemon with the key files",
        ok and curve_endpoint in ctl.status.link_message,
        ctl.status.link_message,
    )
    names = layer_names(doc)
    ctl.generate(seed=5)
    wait_idle(ctl, 120)
    check(
        "generates through the encrypted connection",
        not ctl.status.error and len(layer_names(doc)) == len(names) + 1,
        ctl.status.message,
    )


# --------------------------------------------------------------------------- run and quit


def run() -> None:
    try:
        OUT.mkdir(parents=True, exist_ok=True)
        check(
            "krita_draggan plugin imported",
            "krita_draggan" in sys.modules,
            sorted(m for m in sys.modules if m.startswith("krita_draggan")),
        )
        phase1() if PHASE == "1" else phase2()
    except Exception:
        results["error"] = traceback.format_exc()
    finish()


def finish() -> None:
    ok = results["error"] is None and all(c["ok"] for c in results["checks"]) and results["checks"]
    results["passed"] = bool(ok)
    _write()
    if not ok:
        os._exit(1)  # a failed check: no questions asked, non-zero exit
    for doc in Krita.instance().documents():
        doc.setModified(False)
        doc.close()
    Krita.instance().action("file_quit").trigger()
    QTimer.singleShot(10000, lambda: os._exit(0))  # quit did not finish: still passed


def watchdog() -> None:
    results["error"] = f"watchdog: the test did not finish within {TIMEOUT_S:g} s"
    _write()
    os._exit(3)


class DriverExtension(Extension):
    def setup(self) -> None:
        notifier = Krita.instance().notifier()
        notifier.setActive(True)
        notifier.windowCreated.connect(lambda: QTimer.singleShot(500, run))
        self._watchdog = QTimer()
        self._watchdog.setSingleShot(True)
        self._watchdog.timeout.connect(watchdog)
        self._watchdog.start(int(TIMEOUT_S * 1000))
        # in case the GUI thread itself is stuck (no timers run): a thread ends the process
        stuck = threading.Timer(TIMEOUT_S + 15, lambda: os._exit(3))
        stuck.daemon = True
        stuck.start()

    def createActions(self, window) -> None:
        pass


Krita.instance().addExtension(DriverExtension(Krita.instance()))
