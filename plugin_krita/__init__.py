"""Krita plugin: points from vector shapes, mask from the selection, results as layers.

Installed as `krita_draggan` in Krita's pykrita folder (install.py). Inside Krita, importing
the package registers the extension and the docker; elsewhere (unit tests) it does nothing,
so the pure modules (geometry, mask, history, link) import without Krita or Qt.
"""


def _inside_krita() -> bool:
    try:
        import krita
    except ImportError:
        return False
    return hasattr(krita, "Krita") and hasattr(krita, "DockWidgetFactory")


if _inside_krita():
    from .extension import register

    register()
