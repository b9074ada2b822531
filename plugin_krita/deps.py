"""Where the plugin's third-party code comes from.

Installed (install.py): pyzmq + msgpack wheels for Krita's Python in `vendor/`, and the
daemon's torch-free `protocol.py` + `client.py` copied into `_protocol/`, so the protocol is
defined once. From the source tree (tests): the repo's `daemon.protocol` / `daemon.client`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

VENDOR_DIR = Path(__file__).resolve().parent / "vendor"


class MissingDependency(ImportError):
    """pyzmq/msgpack or the protocol code is missing: the plugin was not installed by install.py."""


def add_vendor_path() -> None:
    if VENDOR_DIR.is_dir() and str(VENDOR_DIR) not in sys.path:
        sys.path.insert(0, str(VENDOR_DIR))  # ahead of any system pyzmq (Debian's python3-zmq)


def protocol_modules() -> tuple[ModuleType, ModuleType]:
    """(protocol, client) modules of the daemon's protocol."""
    add_vendor_path()
    package = __package__ or __name__.rpartition(".")[0]
    installed = importlib.util.find_spec(f"{package}._protocol") is not None
    base = f"{package}._protocol" if installed else "daemon"
    try:
        protocol = importlib.import_module(f"{base}.protocol")
        client = importlib.import_module(f"{base}.client")
    except ImportError as e:
        raise MissingDependency(
            f"the DragGAN plugin cannot load its network code ({e}). Re-run `python install.py "
            "--plugin-only` from the krita-draggan checkout, then restart Krita"
        ) from e
    return protocol, client
