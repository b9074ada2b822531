"""The engine's error type: bad input from the caller (never a bug in the engine)."""

from __future__ import annotations


class DragInputError(ValueError):
    """Invalid points, mask, latent or parameters; the message says what is wrong and what is valid."""
