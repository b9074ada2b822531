"""Image encoders for replies and preview frames: raw RGB, PNG, JPEG and WebP (via Pillow).

Runs on the daemon's encoder thread, never on the compute thread; numpy in, bytes out.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

from .protocol import DEFAULT_QUALITY, ENCODINGS


@lru_cache(maxsize=1)
def available_encodings() -> tuple[str, ...]:
    """The encodings this Pillow build can write (WebP support is optional in Pillow)."""
    from PIL import features

    return tuple(e for e in ENCODINGS if e != "webp" or features.check("webp"))


def encode_image(rgb: np.ndarray, encoding: str, quality: int | None = None, fast: bool = False) -> bytes:
    """HxWx3 uint8 -> bytes. `fast` trades size for speed (previews): PNG level 1, WebP method 0."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.dtype} {list(rgb.shape)}")
    if encoding not in available_encodings():
        raise ValueError(f"unknown or unavailable encoding {encoding!r}; available: {available_encodings()}")
    rgb = np.ascontiguousarray(rgb)
    if encoding == "raw":
        return rgb.tobytes()
    from PIL import Image

    img = Image.fromarray(rgb, "RGB")
    buf = io.BytesIO()
    if encoding == "png":
        img.save(buf, format="PNG", compress_level=1 if fast else 6)
    elif encoding == "jpeg":
        img.save(buf, format="JPEG", quality=quality or DEFAULT_QUALITY["jpeg"])
    else:
        img.save(buf, format="WEBP", quality=quality or DEFAULT_QUALITY["webp"], method=0 if fast else 4)
    return buf.getvalue()
