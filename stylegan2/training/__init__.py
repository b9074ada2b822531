"""StyleGAN2 training: NVIDIA-architecture discriminator, losses, augmentation, resumable loop.

Only `draggan train` imports this package; inference (`stylegan2.networks`, the drag engine,
the daemon) never needs it.
"""

from .discriminator import Discriminator

__all__ = ["Discriminator"]
