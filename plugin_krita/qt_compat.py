"""The one place that picks the Qt binding: PyQt5 (Krita 5) or PyQt6 (Krita 6).

Every other module imports Qt names from here, so a Krita 6 port touches only this file
(Krita 6's `krita` module refuses PyQt5 imports).
"""

from __future__ import annotations

try:
    from PyQt5 import QtCore, QtGui, QtWidgets
    from PyQt5.QtCore import QByteArray, QEventLoop, QObject, QSocketNotifier, Qt, QTimer, pyqtSignal

    QT_MAJOR = 5
except ImportError:  # pragma: no cover - Krita 6
    from PyQt6 import QtCore, QtGui, QtWidgets  # type: ignore[no-redef]
    from PyQt6.QtCore import (  # type: ignore[no-redef]
        QByteArray,
        QEventLoop,
        QObject,
        QSocketNotifier,
        Qt,
        QTimer,
        pyqtSignal,
    )

    QT_MAJOR = 6

READ_NOTIFIER = QSocketNotifier.Read if QT_MAJOR == 5 else QSocketNotifier.Type.Read
FORMAT_ARGB32 = QtGui.QImage.Format_ARGB32 if QT_MAJOR == 5 else QtGui.QImage.Format.Format_ARGB32
FORMAT_RGB888 = QtGui.QImage.Format_RGB888 if QT_MAJOR == 5 else QtGui.QImage.Format.Format_RGB888
SMOOTH = Qt.SmoothTransformation if QT_MAJOR == 5 else Qt.TransformationMode.SmoothTransformation
IGNORE_ASPECT = Qt.IgnoreAspectRatio if QT_MAJOR == 5 else Qt.AspectRatioMode.IgnoreAspectRatio

__all__ = [
    "FORMAT_ARGB32",
    "FORMAT_RGB888",
    "IGNORE_ASPECT",
    "QT_MAJOR",
    "READ_NOTIFIER",
    "SMOOTH",
    "QByteArray",
    "QEventLoop",
    "QObject",
    "QSocketNotifier",
    "QTimer",
    "Qt",
    "QtCore",
    "QtGui",
    "QtWidgets",
    "pyqtSignal",
]
