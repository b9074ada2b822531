"""The drag engine: DragGAN motion supervision and point tracking on StyleGAN2 features.

Points everywhere in the public API are (x, y) floats in pixels of the model's image
(x = column, y = row, pixel centres at integers, 0 <= x, y <= resolution - 1).
"""

from .batch import BatchStepper, batch_key
from .errors import DragInputError
from .latent import latent_from_seed, render_latent, resolve_device
from .nearest import nearest_edge_adjust
from .params import DragParams
from .session import DragSession, StepResult

__all__ = [
    "BatchStepper",
    "DragInputError",
    "DragParams",
    "DragSession",
    "StepResult",
    "batch_key",
    "latent_from_seed",
    "nearest_edge_adjust",
    "render_latent",
    "resolve_device",
]
