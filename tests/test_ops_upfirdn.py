"""upfirdn2d (strided, custom backward) against the literal recipe, to second order."""

from __future__ import annotations

import pytest
import torch

from stylegan2.fir_matmul import upfirdn2d_matmul
from stylegan2.ops import reference_upfirdn2d, setup_filter, upfirdn2d

FILTERS = {
    "binomial-2d": lambda: setup_filter([1, 3, 3, 1]).double(),
    "binomial-1d": lambda: torch.tensor([1.0, 3, 3, 1], dtype=torch.float64) / 8,
    "none": lambda: None,
    "random-3x5": lambda: torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)),
    "separable-3x5": lambda: torch.outer(
        torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),
        torch.tensor([0.3, 1, 2, 1, -0.7], dtype=torch.float64),
    ),
}


@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1)])
@pytest.mark.parametrize("pad", [0, [2, 1, 2, 1], [1, 2, 0, 3], [-1, 2, 1, -1]])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("matmul", [False, True], ids=["conv", "matmul"])
def test_matches_reference_values_and_two_derivatives(name, up, down, pad, flip, matmul):
    f = FILTERS[name]()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 9, 7, dtype=torch.float64, generator=gen)
    results = []

    def ours(*args):
        return upfirdn2d(*args, matmul=matmul)

    for fn in (ours, reference_upfirdn2d):
        x = x0.clone().requires_grad_(True)
        y = fn(x, f, up, down, pad, flip, 3.0)
        w = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
        # An R1-like chain: the gradient depends on x, then is differentiated again.
        (g,) = torch.autograd.grad((y * y * w).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x)
        results.append((y, g, gg))
    for ours, ref in zip(*results, strict=True):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


def test_gradcheck_and_gradgradcheck():
    f = setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: upfirdn2d(t, f, 2, 1, [2, 1, 2, 1]), (x,))
    assert torch.autograd.gradgradcheck(lambda t: upfirdn2d(t, f, 1, 2, [1, 1, 1, 1]).square(), (x,))


def test_filter_requiring_grad_is_refused():
    f = setup_filter([1, 3, 3, 1]).requires_grad_(True)
    with pytest.raises(ValueError, match="filter must not require grad"):
        upfirdn2d(torch.randn(1, 1, 4, 4), f, up=2, padding=[2, 1, 2, 1])


def test_matmul_form_takes_only_separable_filters() -> None:
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    separable = FILTERS["separable-3x5"]()
    assert upfirdn2d_matmul(x, separable, 1, 1, (0, 0, 0, 0), False, 1.0) is not None
    assert upfirdn2d_matmul(x, FILTERS["random-3x5"](), 1, 1, (0, 0, 0, 0), False, 1.0) is None
    with torch.no_grad():
        separable[0, 0] += 1.0  # edited in place: no longer separable, and the cache must notice
    assert upfirdn2d_matmul(x, separable, 1, 1, (0, 0, 0, 0), False, 1.0) is None
