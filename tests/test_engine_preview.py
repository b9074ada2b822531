"""Preview frames: render_async gives the frame render() gives, and checks its size the same way.
(On CUDA it renders on a side stream; `draggan bench speed --preview-sizes` checks that path.)"""

from __future__ import annotations

import numpy as np
import pytest

from engine import DragInputError, DragSession


def test_render_async_matches_render(small_generator):
    session = DragSession.from_seed(small_generator, 3, handles=[[100.0, 100.0]], targets=[[120.0, 100.0]])
    session.step()
    session.step()
    for size in (None, 64):
        frame = session.render_async(size).result()
        np.testing.assert_array_equal(frame, session.render(size))
        assert frame.dtype == np.uint8 and frame.shape == (size or 256, size or 256, 3)


@pytest.mark.parametrize("size", [0, 10_000, 1.5, True])
def test_render_async_rejects_bad_sizes(small_generator, size):
    session = DragSession.from_seed(small_generator, 3, handles=[[100.0, 100.0]], targets=[[120.0, 100.0]])
    with pytest.raises(DragInputError, match="size must be an integer"):
        session.render_async(size)
