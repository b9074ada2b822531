"""Procedural 3D cartoon heads with exact landmarks: a small, torch-free dataset for the demo model.

`sample_factors` draws a head, `render_head` draws it (numpy + Pillow only) with its
landmarks, and `stylegan2.heads.dataset` renders many in parallel, deterministically.
"""

from .factors import FACTOR_NAMES, HeadFactors, sample_factors
from .render import LANDMARK_NAMES, HeadRender, render_head

__all__ = ["FACTOR_NAMES", "LANDMARK_NAMES", "HeadFactors", "HeadRender", "render_head", "sample_factors"]
