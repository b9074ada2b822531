"""Registration with Krita: the extension (menu actions) and the docker factory.

Krita imports the plugin package at start-up; this runs only inside Krita. The Controller
is created lazily, once, and shared by the docker, the actions and the E2E test driver
(`krita_draggan.extension.controller()`).
"""

from __future__ import annotations

from krita import DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita

from .controller import Controller
from .docker import DragGanDocker
from .krita_api import KritaDocument

DOCKER_ID = "krita_draggan_docker"
_controller: Controller | None = None


def active_document() -> KritaDocument:
    return KritaDocument(Krita.instance().activeDocument())


def controller() -> Controller:
    global _controller
    if _controller is None:
        _controller = Controller(active_document)
    return _controller


def _docker() -> DragGanDocker | None:
    return next((d for d in Krita.instance().dockers() if isinstance(d, DragGanDocker)), None)


def _with_docker(action: str) -> None:
    docker = _docker()
    if action == "generate":
        docker.on_generate() if docker else controller().generate(None)
    elif action == "drag":
        docker.on_drag() if docker else controller().drag()
    elif action == "stop":
        controller().stop()
    elif action == "points":
        controller().create_points_layer()


class DragGanExtension(Extension):
    ACTIONS = (
        ("krita_draggan_generate", "DragGAN: New image", "generate"),
        ("krita_draggan_points", "DragGAN: Points layer", "points"),
        ("krita_draggan_drag", "DragGAN: Drag", "drag"),
        ("krita_draggan_stop", "DragGAN: Stop", "stop"),
    )

    def setup(self) -> None:  # keep start-up light: nothing connects until the docker or an action asks
        pass

    def createActions(self, window) -> None:
        for action_id, text, what in self.ACTIONS:
            action = window.createAction(action_id, text, "tools/scripts/draggan")
            action.triggered.connect(lambda _checked=False, w=what: _with_docker(w))


def register() -> None:
    app = Krita.instance()
    DragGanDocker.controller_factory = staticmethod(controller)
    app.addExtension(DragGanExtension(app))
    app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, DragGanDocker))
