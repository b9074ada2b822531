"""DragSession on a small random generator (CPU): latent rows, Adam state, mask, loop control.

Random weights give no meaningful edits, so nothing here asserts edit quality; it asserts
what the engine controls: which latent rows move, the generator's weights, optimiser state,
the stop/max/cancel rules, determinism and the mask's effect.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from engine import DragParams, DragSession, StepResult, latent_from_seed, nearest_edge_adjust, render_latent
from stylegan2 import Generator, seed_to_z

RES = 64
# 64 px model: the 4th block (b32) gives a half-resolution feature map, as b128 does at 256 px.
FAST = DragParams(feature_block=4, r1=3.0, r2=4, lr=0.05)


def make_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(
        z_dim=64, c_dim=0, w_dim=64, img_resolution=RES, img_channels=3,
        mapping_kwargs={"num_layers": 2}, channel_base=1024, channel_max=32,
    )  # fmt: skip


@pytest.fixture(scope="module")
def G() -> Generator:
    return make_generator()


def session(
    G: Generator, handles=((20.0, 30.0),), targets=((34.0, 30.0),), mask=None, **params
) -> DragSession:
    return DragSession.from_seed(
        G, 3, handles=handles, targets=targets, mask=mask, params=FAST.replace(**params)
    )


def features_of(G: Generator, s: DragSession, latent: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        ws = torch.from_numpy(latent)[None]
        _, feats = G.synthesis(ws, stop_after=s.feature_name, return_features=True, noise_mode="const")
    return feats[s.feature_name][0]


def test_from_seed_uses_the_reference_seed_convention_and_truncation(G: Generator) -> None:
    s = session(G)
    with torch.no_grad():
        want = G.mapping(seed_to_z(3, 64), None, truncation_psi=0.7)[0].numpy()
    np.testing.assert_array_equal(s.latent(), want)
    assert s.latent().dtype == np.float32 and s.latent().shape == (G.num_ws, 64)
    assert s.feature_name == "b32" and s.resolution == RES and s.num_ws == G.num_ws == 10


def test_only_the_first_six_rows_change_and_the_generator_is_untouched() -> None:
    G = make_generator(1)  # fresh: starts with requires_grad True, as a user's model would
    before = {k: v.clone() for k, v in G.state_dict().items()}
    s = session(G, handles=[(20.0, 30.0), (40.0, 10.0)], targets=[(34.0, 30.0), (30.0, 25.0)])
    w0 = s.latent()
    grad_flags = []
    s.run(max_steps=6, callback=lambda r: grad_flags.append(any(p.requires_grad for p in G.parameters())))
    w = s.latent()
    assert grad_flags == [False] * 6
    assert not G.training
    assert np.abs(w[:6] - w0[:6]).max() > 0  # optimised rows moved
    np.testing.assert_array_equal(w[6:], w0[6:])  # the rest is the initial latent, bit for bit
    for k, v in G.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in G.parameters())


def test_num_layers_and_w_space_choose_what_is_optimised(G: Generator) -> None:
    s = session(G, num_layers=3)
    w0 = s.latent()
    s.run(max_steps=4)
    w = s.latent()
    assert (np.abs(w[:3] - w0[:3]).max(axis=1) > 0).all()
    np.testing.assert_array_equal(w[3:], w0[3:])

    s = session(G, space="w")
    w0 = s.latent()
    s.run(max_steps=4)
    w = s.latent()
    assert np.abs(w[0] - w0[0]).max() > 0
    for row in range(1, 6):
        np.testing.assert_allclose(w[row], w[0], atol=1e-6)  # one w shared by the first six rows
    np.testing.assert_array_equal(w[6:], w0[6:])


def test_set_targets_keeps_adam_state_and_tracked_points(G: Generator) -> None:
    s = session(G)
    s.run(max_steps=3)
    opt = s._optimizer
    (state,) = opt.state.values()
    exp_avg, exp_avg_sq, step = state["exp_avg"], state["exp_avg_sq"], state["step"]
    snapshot = (exp_avg.clone(), exp_avg_sq.clone(), float(step))
    points = s.handles
    s.set_targets([(10.0, 50.0)])
    assert s._optimizer is opt
    (state_after,) = opt.state.values()
    assert state_after["exp_avg"] is exp_avg and state_after["exp_avg_sq"] is exp_avg_sq
    assert torch.equal(exp_avg, snapshot[0]) and torch.equal(exp_avg_sq, snapshot[1])
    assert float(state_after["step"]) == snapshot[2] == 3.0
    np.testing.assert_array_equal(s.handles, points)
    np.testing.assert_array_equal(s.targets, [[10.0, 50.0]])
    assert s.step().step == 4


def test_set_params_mid_drag(G: Generator) -> None:
    s = session(G)
    s.run(max_steps=2)
    opt = s._optimizer
    s.set_params(lr=0.01, lam=5.0, r1=2.0, r2=3, tracking="l2")
    assert s._optimizer is opt and opt.param_groups[0]["lr"] == 0.01
    assert float(next(iter(opt.state.values()))["step"]) == 2.0
    assert len(s._disc) == 9 and len(s._window) == 49
    s.step()
    w_before = s.latent()
    s.set_params(num_layers=4)  # the optimised tensor changes shape: fresh optimiser from latent()
    assert s._optimizer is not opt and not s._optimizer.state
    s.run(max_steps=3)
    np.testing.assert_array_equal(s.latent()[4:], w_before[4:])
    assert s.params.num_layers == 4 and s.params.lr == 0.01


def test_set_points_restarts_the_segment_from_the_image_shown(G: Generator) -> None:
    s = session(G)
    s.run(max_steps=3)
    shown = s.latent()
    s.set_points([(10.0, 10.0), (50.5, 40.0)], [(20.0, 10.0), (50.0, 30.0)])
    assert not s._optimizer.state
    np.testing.assert_array_equal(s.latent(), shown)
    f0 = features_of(G, s, shown)[None]
    ref = torch.nn.functional.interpolate(f0, size=(RES, RES), mode="bilinear", align_corners=False)[0]
    # templates come from the shown image, at the handles rounded to whole pixels (50.5 -> 50)
    assert torch.allclose(s._templates[0], ref[:, 10, 10], atol=1e-5)
    assert torch.allclose(s._templates[1], ref[:, 40, 50], atol=1e-5)
    assert s.step().points.shape == (2, 2)


def test_render_and_latent_belong_to_the_returned_points(G: Generator) -> None:
    s = session(G)
    w0 = s.latent()
    r1 = s.step()
    # the points of step 1 were tracked on the initial latent: that is what is shown
    np.testing.assert_array_equal(s.latent(), w0)
    r2 = s.step()
    assert np.abs(s.latent() - w0).max() > 0
    assert r1.step == 1 and r2.step == 2
    img = s.render()
    assert img.shape == (RES, RES, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, render_latent(G, s.latent()))
    assert s.render(size=48).shape == (48, 48, 3)


def test_mask_keeps_the_fixed_region_closer_to_the_start(G: Generator) -> None:
    allowed = np.zeros((RES, RES), dtype=bool)
    allowed[16:48, 12:44] = True  # a box around handle and target
    fixed = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(~allowed).float()[None, None], 32)
    outside = fixed[0, 0] == 1  # feature cells entirely outside the allowed box
    changes = {}
    for name, mask in (("free", None), ("masked", allowed)):
        s = session(G, mask=mask)
        f0 = features_of(G, s, s.latent())
        s.run(max_steps=8)
        f = features_of(G, s, s.latent())
        changes[name] = (f - f0).abs().mean(0)[outside].mean().item()
    assert changes["free"] > 0
    assert changes["masked"] < 0.5 * changes["free"], changes


def test_set_mask_and_clear(G: Generator) -> None:
    s = session(G)
    allowed = np.zeros((RES, RES), dtype=np.uint8)
    allowed[:, :32] = 7  # any nonzero value = allowed
    s.set_mask(allowed)
    assert s._fixed_weight.shape == (1, 1, 32, 32)
    assert s._fixed_weight[0, 0, :, :16].max() == 0 and s._fixed_weight[0, 0, :, 16:].min() == 1
    loss_masked = s.step().loss
    s.set_mask(None)
    assert s._fixed_weight is None
    assert np.isfinite(loss_masked)


def test_stop_rule_ends_the_loop_at_the_right_step(G: Generator) -> None:
    s = session(G, stop_distance=0.0)  # never satisfied while the handle is away from its target
    seen: list[StepResult] = []

    def loosen_at_three(r: StepResult) -> None:
        seen.append(r)
        if r.step == 3:
            s.set_params(stop_distance=1000.0)

    result = s.run(max_steps=50, callback=loosen_at_three)
    assert [r.step for r in seen] == [1, 2, 3, 4]
    assert result.done and result.step == 4 and not seen[2].done
    # a done step does not update the latent: running again is done at once and changes nothing
    w = s.latent()
    again = s.run(max_steps=10)
    assert again.done and again.step == 5
    np.testing.assert_array_equal(s.latent(), w)


def test_default_stop_distance_is_one_pixel_for_few_handles_two_for_many(G: Generator) -> None:
    assert DragParams().stop_px(5) == 1.0 and DragParams().stop_px(6) == 2.0
    s = session(G, handles=[(30.0, 30.0)], targets=[(30.0, 31.0)], stop_distance=None)
    r = s.step()  # step 1 tracks on F0: the handle stays on its pixel, 1 px from the target
    assert r.points.tolist() == [[30.0, 30.0]] and r.distances.tolist() == [1.0] and r.done


def test_max_steps_and_cancel(G: Generator) -> None:
    s = session(G, stop_distance=0.0)
    calls: list[int] = []
    r = s.run(max_steps=4, callback=lambda r: calls.append(r.step))
    assert calls == [1, 2, 3, 4] and r.step == 4 and s.step_count == 4 and not r.done

    stop = threading.Event()
    calls.clear()

    def cancel_at_two(r: StepResult) -> None:
        calls.append(r.step)
        if len(calls) == 2:
            stop.set()

    r = s.run(max_steps=50, cancel=stop, callback=cancel_at_two)
    assert calls == [5, 6] and r.step == 6 and s.step_count == 6

    r = s.run(max_steps=50, cancel=lambda: s.step_count >= 8)
    assert r.step == 8

    r = s.run(max_steps=50, cancel=stop)  # already set: no step at all
    assert r.step == 8 and s.step_count == 8
    np.testing.assert_array_equal(r.points, s.handles)
    assert s.run(max_steps=0).step == 8


def test_handles_at_the_image_corners_work(G: Generator) -> None:
    s = session(G, handles=[(0.0, 0.0), (RES - 1.0, RES - 1.0)], targets=[(10.0, 8.0), (50.0, 55.0)], r2=6)
    for _ in range(4):
        r = s.step()
        assert np.isfinite(r.loss) and r.loss > 0
        assert ((r.points >= 0) & (r.points <= RES - 1)).all()
        assert (r.points == np.round(r.points)).all()
    np.testing.assert_allclose(r.distances, np.linalg.norm(s.targets - r.points, axis=1), atol=1e-4)


def test_two_sessions_are_bit_identical_on_cpu() -> None:
    runs = []
    for _ in range(2):
        G = make_generator(2)
        s = session(G, handles=[(20.0, 30.0), (45.5, 12.0)], targets=[(34.0, 30.0), (40.0, 20.0)])
        results = [s.step() for _ in range(5)]
        runs.append((s.latent(), [r.points for r in results], [r.loss for r in results]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][2] == runs[1][2]


def test_given_latent_is_copied_not_aliased(G: Generator) -> None:
    latent = latent_from_seed(G, 5)
    keep = latent.clone()
    s = DragSession(G, latent[0], [(20.0, 20.0)], [(30.0, 20.0)], params=FAST)
    s.run(max_steps=3)
    assert torch.equal(latent, keep)


def test_nearest_option_moves_handles_toward_edges_of_the_rendered_image(G: Generator) -> None:
    given = np.array([[20.0, 30.0], [45.0, 12.0]])
    plain = session(G, handles=given, targets=[(34.0, 30.0), (40.0, 20.0)])
    np.testing.assert_array_equal(plain.handles, given)  # off by default
    s = session(G, handles=given, targets=[(34.0, 30.0), (40.0, 20.0)], nearest=True)
    want = nearest_edge_adjust(s.render(), given, radius=40.0 * RES / 512, rate=0.8)
    np.testing.assert_array_equal(s.handles, want)


def test_stop_distance_below_one_pixel_still_drives_the_handle(G: Generator) -> None:
    """A handle between the stop distance and 1 px keeps its motion loss (else it could never stop)."""
    s = session(G, handles=[(30.0, 30.0)], targets=[(30.7, 30.0)], stop_distance=0.5)
    w0 = s.latent()
    r = s.step()  # step 1 tracks on F0: the handle stays on its pixel, 0.7 px from the target
    assert r.distances[0] == pytest.approx(0.7, abs=1e-5) and not r.done
    assert r.loss > 0
    s.step()  # latent() is now the result of step 1's update
    assert np.abs(s.latent() - w0).max() > 0  # the update was not a zero-gradient no-op
    assert session(G, handles=[(30.0, 30.0)], targets=[(30.7, 30.0)], stop_distance=None).step().done
