"""Selection bytes -> mask bytes at model resolution (plugin_krita.mask)."""

from __future__ import annotations

import pytest

from plugin_krita.mask import MaskError, mask_fraction, mask_from_selection, resample_nearest


def rect_selection(size: int, x0: int, y0: int, x1: int, y1: int, value: int = 255) -> bytes:
    """size x size bytes, `value` inside [x0, x1) x [y0, y1): like Selection.pixelData."""
    rows = []
    for y in range(size):
        inside = y0 <= y < y1
        rows.append(bytes(value if inside and x0 <= x < x1 else 0 for x in range(size)))
    return b"".join(rows)


def test_identity_size_keeps_bytes():
    data = rect_selection(8, 2, 3, 6, 7)
    assert resample_nearest(data, 8, 8, 8, 8) == data


def test_downscale_400_to_256_keeps_the_rectangle_in_model_coordinates():
    # selection x in [100, 300), y in [40, 200) of a 400 px region -> model px * 256/400
    sel = rect_selection(400, 100, 40, 300, 200)
    mask = mask_from_selection(sel, 400, 256)
    assert mask is not None and len(mask) == 256 * 256
    s = 256 / 400
    for (x, y), expected in {(int(101 * s), int(41 * s)): 255, (int(299 * s) - 1, int(199 * s) - 1): 255,
                             (int(99 * s) - 1, 100): 0, (150, int(201 * s) + 1): 0}.items():
        assert mask[y * 256 + x] == expected, (x, y)
    assert mask_fraction(mask) == pytest.approx((200 * 160) / (400 * 400), abs=0.01)


def test_upscale_and_soft_values_survive():
    sel = rect_selection(100, 0, 0, 50, 100, value=128)
    mask = mask_from_selection(sel, 100, 256)
    assert set(mask) == {0, 128}
    assert mask[0] == 128 and mask[255] == 0


def test_full_selection_means_no_mask_and_empty_is_an_error():
    assert mask_from_selection(b"\xff" * 64 * 64, 64, 32) is None
    assert mask_fraction(None) == 1.0
    with pytest.raises(MaskError, match="does not overlap"):
        mask_from_selection(bytes(64 * 64), 64, 32)


def test_wrong_byte_count_is_a_clear_error():
    with pytest.raises(MaskError, match="expected 10x10=100"):
        mask_from_selection(bytes(99), 10, 8)
