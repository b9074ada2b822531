"""The optimised part of the W+ latent: W+ rows [0, k) free, or one offset shared by them ("w" space)."""

from __future__ import annotations

import torch


class LatentVariable:
    """Holds the fixed base latent and the trainable tensor; `ws()` assembles the full W+.

    "w+": the trainable tensor is base[:, :k] itself (each row free), rows >= k come from base.
    "w":  the trainable tensor is one offset δ added to all rows < k. For a seed latent (all rows
          equal) this is exactly optimising one shared w; for an inverted W+ latent it keeps the
          image unchanged at step 0 instead of collapsing the rows.
    """

    def __init__(self, base: torch.Tensor, space: str, num_layers: int) -> None:
        self.base = base.detach().clone()
        self.space = space
        self.num_layers = num_layers
        if space == "w+":
            self.param = self.base[:, :num_layers].clone().requires_grad_(True)
        else:
            self.param = torch.zeros_like(self.base[:, :1]).requires_grad_(True)

    def head(self) -> torch.Tensor:
        """W+ rows [0, k): the part that carries the gradient."""
        k = self.num_layers
        return self.param if self.space == "w+" else self.base[:, :k] + self.param

    def ws(self) -> torch.Tensor:
        return torch.cat([self.head(), self.base[:, self.num_layers :]], dim=1)
