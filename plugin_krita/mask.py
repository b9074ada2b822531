"""Selection -> drag mask at model resolution (pure Python).

Krita's `Selection.pixelData(x, y, w, h)` gives 1 byte per pixel (0..255, row-major).
Feather and grow are applied with Krita's own Selection API on a duplicate before the
bytes are read (krita_api.py); this module only resamples the region's bytes to the
model's square grid. Convention (engine): nonzero = allowed to change.
"""

from __future__ import annotations


class MaskError(ValueError):
    """The selection cannot be used as a drag mask; the message says why."""


def resample_nearest(data: bytes, width: int, height: int, out_w: int, out_h: int) -> bytes:
    """Nearest-neighbour resampling of an 8-bit image, sampling at output pixel centres."""
    if len(data) != width * height:
        raise MaskError(f"selection data has {len(data)} bytes, expected {width}x{height}={width * height}")
    if out_w <= 0 or out_h <= 0:
        raise MaskError(f"mask size must be positive, got {out_w}x{out_h}")
    cols = [min(width - 1, int((i + 0.5) * width / out_w)) for i in range(out_w)]
    out = bytearray()
    for j in range(out_h):
        src = min(height - 1, int((j + 0.5) * height / out_h)) * width
        row = data[src : src + width]
        out += bytes(map(row.__getitem__, cols))
    return bytes(out)


def mask_from_selection(data: bytes, region_size: int, resolution: int) -> bytes | None:
    """Model-resolution mask bytes from the selection bytes of the square image region.

    Returns None when the selection covers the whole image (no restriction); raises
    MaskError when it does not touch the image at all (every pixel would be frozen).
    """
    mask = resample_nearest(bytes(data), region_size, region_size, resolution, resolution)
    if not any(mask):
        raise MaskError(
            "the selection does not overlap the generated image: select the area that may change, "
            "or deselect all to let the whole image change"
        )
    if mask.count(255) == len(mask):
        return None
    return mask


def mask_fraction(mask: bytes | None) -> float:
    """Share of model pixels allowed to change (1.0 without a mask), for the docker's status text."""
    if mask is None:
        return 1.0
    return (len(mask) - mask.count(0)) / len(mask) if mask else 0.0
