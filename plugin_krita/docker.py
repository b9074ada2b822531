"""The DragGAN docker: connection, new image, points, mask, drag, and what is going on.

Only widgets and settings here; every action goes to the shared Controller.
"""

from __future__ import annotations

from krita import DockWidget, Krita

from .controller import Controller, DragOptions, Status
from .qt_compat import QTimer, QtWidgets

SETTINGS_GROUP = "krita_draggan"
DEFAULTS = {
    "endpoint": "tcp://127.0.0.1:5617",
    "server_key": "",
    "client_key": "",
    "seed": "42",
    "random_seed": "false",
    "psi": "0.7",
    "max_steps": "200",
    "use_selection": "true",
    "grow": "0",
    "feather": "4",
}
LINK_COLOURS = {"ready": "#2e7d32", "connecting": "#8d6e00", "lost": "#b26a00", "failed": "#c62828"}


def read_setting(key: str) -> str:
    return Krita.instance().readSetting(SETTINGS_GROUP, key, DEFAULTS[key])


def write_setting(key: str, value: object) -> None:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    Krita.instance().writeSetting(SETTINGS_GROUP, key, text)


class DragGanDocker(DockWidget):
    """Docker UI. `controller_factory()` returns the plugin-wide Controller."""

    controller_factory = None  # set by extension.register()

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("DragGAN")
        self.controller: Controller = type(self).controller_factory()
        root = QtWidgets.QWidget(self)
        layout = QtWidgets.QVBoxLayout(root)
        layout.addWidget(self._connection_box())
        layout.addWidget(self._generate_box())
        layout.addWidget(self._drag_box())
        self.message = QtWidgets.QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        layout.addStretch(1)
        self.setWidget(root)
        listener, controller = self.show_status, self.controller
        controller.add_listener(listener)
        # a closed window deletes its docker: stop telling it (the controller also drops a listener
        # that raises RuntimeError, for a deletion that comes before this signal)
        self.destroyed.connect(lambda *_: controller.remove_listener(listener))
        self.show_status(self.controller.status)
        if self.controller.status.link_state == "offline":  # connect to the saved daemon at start-up
            QTimer.singleShot(0, self.on_connect)

    # ----------------------------------------------------------------- building
    def _connection_box(self) -> QtWidgets.QGroupBox:
        box = QtWidgets.QGroupBox("Daemon")
        form = QtWidgets.QFormLayout(box)
        self.endpoint = QtWidgets.QLineEdit(read_setting("endpoint"))
        self.endpoint.setToolTip("tcp://HOST:PORT of draggan-daemon (local: tcp://127.0.0.1:5617)")
        self.server_key = QtWidgets.QLineEdit(read_setting("server_key"))
        self.server_key.setPlaceholderText("remote only: path of the daemon's server.key")
        self.client_key = QtWidgets.QLineEdit(read_setting("client_key"))
        self.client_key.setPlaceholderText("remote only: path of your NAME.key_secret")
        self.connect_button = QtWidgets.QPushButton("Connect")
        self.connect_button.clicked.connect(self.on_connect)
        self.link_label = QtWidgets.QLabel("")
        self.link_label.setWordWrap(True)
        form.addRow("Address", self.endpoint)
        form.addRow("Server key", self.server_key)
        form.addRow("Client key", self.client_key)
        form.addRow(self.connect_button)
        form.addRow(self.link_label)
        return box

    def _generate_box(self) -> QtWidgets.QGroupBox:
        box = QtWidgets.QGroupBox("New image")
        form = QtWidgets.QFormLayout(box)
        self.seed = QtWidgets.QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setValue(int(read_setting("seed")))
        self.random_seed = QtWidgets.QCheckBox("random")
        self.random_seed.setChecked(read_setting("random_seed") == "true")
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.seed, 1)
        row.addWidget(self.random_seed)
        self.psi = QtWidgets.QDoubleSpinBox()
        self.psi.setRange(-2.0, 2.0)
        self.psi.setSingleStep(0.05)
        self.psi.setValue(float(read_setting("psi")))
        self.psi.setToolTip("truncation ψ: lower = more typical images, higher = more variety")
        self.generate_button = QtWidgets.QPushButton("New image")
        self.generate_button.clicked.connect(self.on_generate)
        form.addRow("Seed", row)
        form.addRow("Truncation", self.psi)
        form.addRow(self.generate_button)
        return box

    def _drag_box(self) -> QtWidgets.QGroupBox:
        box = QtWidgets.QGroupBox("Drag")
        form = QtWidgets.QFormLayout(box)
        self.points_button = QtWidgets.QPushButton("Points layer")
        self.points_button.setToolTip("creates the 'Drag points' vector layer: draw lines or arrows from "
                                      "handle (first point) to target (last point)")
        self.points_button.clicked.connect(lambda: self.controller.create_points_layer())
        self.use_selection = QtWidgets.QCheckBox("only the selection may change")
        self.use_selection.setChecked(read_setting("use_selection") == "true")
        self.grow = QtWidgets.QSpinBox()
        self.grow.setRange(-200, 200)
        self.grow.setValue(int(read_setting("grow")))
        self.grow.setSuffix(" px")
        self.feather = QtWidgets.QSpinBox()
        self.feather.setRange(0, 200)
        self.feather.setValue(int(read_setting("feather")))
        self.feather.setSuffix(" px")
        self.max_steps = QtWidgets.QSpinBox()
        self.max_steps.setRange(1, 10000)
        self.max_steps.setValue(int(read_setting("max_steps")))
        self.drag_button = QtWidgets.QPushButton("Drag")
        self.drag_button.clicked.connect(self.on_drag)
        self.stop_button = QtWidgets.QPushButton("Stop")
        self.stop_button.clicked.connect(lambda: self.controller.stop())
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.drag_button)
        buttons.addWidget(self.stop_button)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setTextVisible(True)
        form.addRow(self.points_button)
        form.addRow(self.use_selection)
        form.addRow("Grow mask", self.grow)
        form.addRow("Feather mask", self.feather)
        form.addRow("Max steps", self.max_steps)
        form.addRow(buttons)
        form.addRow(self.progress)
        return box

    # ----------------------------------------------------------------- actions
    def on_connect(self) -> None:
        if self.controller.status.link_state in ("ready", "connecting", "lost"):
            self.controller.disconnect()
            return
        write_setting("endpoint", self.endpoint.text())
        write_setting("server_key", self.server_key.text())
        write_setting("client_key", self.client_key.text())
        self.controller.connect(self.endpoint.text(), self.server_key.text(), self.client_key.text())

    def on_generate(self) -> None:
        write_setting("seed", self.seed.value())
        write_setting("random_seed", self.random_seed.isChecked())
        write_setting("psi", self.psi.value())
        seed = None if self.random_seed.isChecked() else self.seed.value()
        self.controller.generate(seed, self.psi.value())

    def drag_options(self) -> DragOptions:
        return DragOptions(max_steps=self.max_steps.value(), use_selection=self.use_selection.isChecked(),
                           grow=self.grow.value(), feather=self.feather.value())

    def on_drag(self) -> None:
        options = self.drag_options()
        for key in ("max_steps", "grow", "feather", "use_selection"):
            write_setting(key, getattr(options, key))
        self.controller.drag(options)

    # ----------------------------------------------------------------- status
    def show_status(self, status: Status) -> None:
        colour = LINK_COLOURS.get(status.link_state, "#555555")
        self.link_label.setText(f'<span style="color:{colour}">{status.link_message}</span>')
        self.connect_button.setText("Disconnect" if status.link_state in ("ready", "connecting", "lost")
                                    else "Connect")
        ready = status.link_state == "ready"
        self.generate_button.setEnabled(ready and not status.busy)
        self.drag_button.setEnabled(ready and not status.busy)
        self.stop_button.setEnabled(status.busy in ("dragging", "stopping"))
        self.progress.setMaximum(max(1, status.max_steps))
        self.progress.setValue(min(status.step, max(1, status.max_steps)))
        text = "step %v/%m"
        if status.distance is not None:
            start = f" of {status.start_distance:.1f}" if status.start_distance else ""
            text += f" · {status.distance:.1f}{start} px to go"
        self.progress.setFormat(text)
        colour = "#c62828" if status.error else "palette(text)"
        self.message.setText(f'<span style="color:{colour}">{status.message}</span>')

    def canvasChanged(self, canvas) -> None:
        pass
