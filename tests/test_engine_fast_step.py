"""The engine's speed options on CPU: `compile` and `autocast` are validated, "cudagraph" refuses
a non-CUDA session clearly, and bf16 autocast runs the same method with close numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import DragInputError, DragParams, DragSession, latent_from_seed
from engine.fast_step import GraphedCompute, features_with_fixed_tail

HANDLES = np.array([[100.0, 120.0], [150.0, 90.0]])
TARGETS = np.array([[120.0, 120.0], [150.0, 100.0]])


@pytest.mark.parametrize("field, value", [("compile", "inductor"), ("compile", None), ("autocast", "fp8")])
def test_unknown_speed_options_are_rejected_by_name(field, value):
    with pytest.raises(DragInputError, match=field):
        DragParams(**{field: value})


def test_cudagraph_on_cpu_is_a_clear_error(small_generator):
    latent = latent_from_seed(small_generator, 1)
    with pytest.raises(DragInputError, match="compile='cudagraph' needs a CUDA device"):
        DragSession(small_generator, latent, HANDLES, TARGETS, params=DragParams(compile="cudagraph"))


def test_switching_to_cudagraph_on_cpu_leaves_the_session_usable(small_generator):
    session = DragSession.from_seed(small_generator, 1, handles=HANDLES, targets=TARGETS)
    with pytest.raises(DragInputError, match="CUDA"):
        session.set_params(compile="cudagraph")
    assert session.params.compile == "none"
    assert np.isfinite(session.step().loss)


def test_graphed_compute_refuses_cpu():
    with pytest.raises(DragInputError, match="CUDA"):
        GraphedCompute(lambda: torch.zeros(1), torch.device("cpu"))


def test_bf16_autocast_runs_the_same_method_with_close_numbers(small_generator):
    latent = latent_from_seed(small_generator, 2)
    params = DragParams(stop_distance=0.0)
    eager = DragSession(small_generator, latent, HANDLES, TARGETS, params=params)
    bf16 = DragSession(small_generator, latent, HANDLES, TARGETS, params=params.replace(autocast="bf16"))
    a, b = eager.step(), bf16.step()
    np.testing.assert_array_equal(a.points, b.points)  # tracking on F(w0) against templates of F(w0)
    assert b.loss == pytest.approx(a.loss, rel=0.15) and b.loss > 0
    bf16.step()
    after = bf16.latent()
    assert np.array_equal(after[6:], latent[0, 6:].numpy())  # fixed rows stay bit for bit
    assert not np.array_equal(after[:6], latent[0, :6].numpy())
    assert after.dtype == np.float32


def test_autocast_can_be_switched_mid_drag(small_generator):
    session = DragSession.from_seed(small_generator, 3, handles=HANDLES, targets=TARGETS)
    session.step()
    session.set_params(autocast="bf16")
    result = session.step()
    assert result.step == 2 and np.isfinite(result.loss)


def _flops_and_grad(fn, param):
    from torch.utils.flop_counter import FlopCounterMode

    from stylegan2.fir_matmul import convolution_form

    counter = FlopCounterMode(display=False)
    with counter, convolution_form():  # count the filters' own work, as the speed bench's floor does
        features = fn()
        (grad,) = torch.autograd.grad(features.abs().mean(), [param])
    return features.detach(), grad, counter.get_total_flops()


@pytest.mark.parametrize("k", [6, 3])
def test_fixed_tail_forward_equals_synthesis_and_skips_the_fixed_rows_gradients(small_generator, k):
    G = small_generator
    base = latent_from_seed(G, 4) + 0.1 * torch.randn(
        1, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(0)
    )
    name = G.feature_block_name(6)
    param = base[:, :k].clone().requires_grad_(True)

    def sliced():
        ws = torch.cat([param, base[:, k:]], dim=1)
        return G.synthesis(ws, stop_after=name, return_features=True, noise_mode="const")[1][name]

    f_ref, g_ref, flops_ref = _flops_and_grad(sliced, param)
    f, g, flops = _flops_and_grad(lambda: features_with_fixed_tail(G, param, base, name, "const"), param)
    assert torch.equal(f, f_ref)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-9)
    assert g.abs().max() > 0
    assert flops < 0.9 * flops_ref  # the fixed rows' modulated-weight gradients are gone


def test_fixed_tail_forward_names_an_unknown_block(small_generator):
    base = latent_from_seed(small_generator, 1)
    with pytest.raises(ValueError, match="unknown block 'b9999'"):
        features_with_fixed_tail(small_generator, base[:, :6], base, "b9999", "const")
