"""StyleGAN2 generator (NVIDIA architecture, pure PyTorch) and safe model loading."""

from .networks import Generator, seed_to_z, to_uint8_image

__all__ = ["Generator", "seed_to_z", "to_uint8_image"]
