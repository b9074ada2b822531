"""StyleGAN2 generator (NVIDIA architecture, pure PyTorch) and safe model loading.

The exports load on first use (PEP 562), so torch-free subpackages such as
`stylegan2.heads` can be imported (e.g. by dataset worker processes) without torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .networks import Generator, seed_to_z, to_uint8_image

__all__ = ["Generator", "seed_to_z", "to_uint8_image"]
_EXPORTS = {"Generator": "networks", "seed_to_z": "networks", "to_uint8_image": "networks"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # `stylegan2.networks` without importing it
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
