"""Daemon pictures -> Krita layer pixels (BGRA, straight alpha), scaled to the image region.

Uses QImage for decoding (PNG/JPEG/WebP) and smooth scaling; no Krita calls.
"""

from __future__ import annotations

from .qt_compat import FORMAT_ARGB32, FORMAT_RGB888, IGNORE_ASPECT, SMOOTH, QtGui


class ImageError(ValueError):
    """A picture from the daemon cannot be decoded."""


def decode(width: int, height: int, encoding: str, data: bytes) -> QtGui.QImage:
    """A QImage from the protocol's image blob (raw RGB or an encoded file)."""
    if encoding == "raw":
        if len(data) != width * height * 3:
            raise ImageError(f"raw image {width}x{height} needs {width * height * 3} bytes, got {len(data)}")
        image = QtGui.QImage(data, width, height, width * 3, FORMAT_RGB888).copy()
    else:
        image = QtGui.QImage.fromData(data)
        if image.isNull():
            raise ImageError(f"cannot decode the daemon's {encoding} image ({len(data)} bytes)")
    return image


def to_bgra(image: QtGui.QImage, size: int) -> bytes:
    """Opaque BGRA bytes of `image` scaled to size x size (Krita's RGBA/U8 pixel layout)."""
    if image.width() != size or image.height() != size:
        image = image.scaled(size, size, IGNORE_ASPECT, SMOOTH)
    image = image.convertToFormat(FORMAT_ARGB32)  # 0xAARRGGBB words = B, G, R, A bytes (little-endian)
    bits = image.constBits()
    bits.setsize(image.sizeInBytes() if hasattr(image, "sizeInBytes") else image.byteCount())
    stride = image.bytesPerLine()
    data = bytes(bits)
    if stride == size * 4:
        return data
    return b"".join(data[row * stride : row * stride + size * 4] for row in range(size))
