"""Sessions stepped as one batch follow the same trajectories as when each steps alone, keep their
own Adam state and stop rule, and refuse to share a batch when their forwards differ. CPU, eager
(the CUDA-graph path is checked on the GPU by `draggan bench speed`'s batch rows)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import BatchStepper, DragInputError, DragParams, DragSession, batch_key

CASES = [  # (seed, handles, targets, masked): different handle counts, one with a mask
    (1, [[100.0, 120.0], [150.0, 90.0]], [[120.0, 120.0], [150.0, 104.0]], False),
    (2, [[60.0, 60.0]], [[80.0, 70.0]], True),
    (
        3,
        [[128.0, 128.0], [90.0, 160.0], [170.0, 150.0]],
        [[136.0, 118.0], [80.0, 170.0], [180.0, 150.0]],
        False,
    ),
]


def _allowed() -> np.ndarray:
    allowed = np.zeros((256, 256), dtype=bool)
    allowed[32:224, 32:224] = True
    return allowed


def _sessions(G, params: DragParams) -> list[DragSession]:
    return [
        DragSession.from_seed(
            G, seed, handles=h, targets=t, mask=_allowed() if masked else None, params=params
        )
        for seed, h, t, masked in CASES
    ]


@pytest.mark.parametrize("modconv", ["fused", "split"])
def test_a_batch_follows_each_sessions_own_trajectory(small_generator, modconv):
    params = DragParams(stop_distance=0.0, modconv=modconv)
    alone, together = _sessions(small_generator, params), _sessions(small_generator, params)
    start = [s.latent() for s in alone]
    stepper = BatchStepper()
    for _ in range(4):
        expected = [s.step() for s in alone]
        got = stepper.step(together)
        for (_, _, _, masked), a, b in zip(CASES, expected, got, strict=True):
            assert b.step == a.step
            if masked:
                continue  # see test_a_masked_session_in_a_batch_keeps_its_frame
            np.testing.assert_array_equal(b.points, a.points)
            np.testing.assert_allclose(b.distances, a.distances, rtol=0, atol=1e-9)
            assert b.loss == pytest.approx(a.loss, rel=1e-4, abs=1e-7)
    for (_, _, _, masked), a, b, w0 in zip(CASES, alone, together, start, strict=True):
        assert not np.array_equal(b.latent()[:6], w0[:6])
        if not masked:
            np.testing.assert_allclose(b.latent(), a.latent(), rtol=0, atol=2e-5)


def test_a_masked_session_in_a_batch_keeps_its_frame(small_generator):
    """With a mask the trajectories are not bit-close: at step 1 the L1 mask term |F - F0| is
    exactly 0 alone (gradient 0) but rounding noise in a batch (gradient ±λ), and Adam's first
    update normalises that. What must hold is the mask's effect: the frame barely changes."""
    params = DragParams(stop_distance=0.0)
    seed, handles, targets, _ = CASES[1]
    frame = ~_allowed()

    def outside_change(session: DragSession, before: np.ndarray) -> float:
        return float(np.abs(session.render().astype(float) - before)[frame].mean())

    def session(mask: np.ndarray | None) -> DragSession:
        return DragSession.from_seed(
            small_generator, seed, handles=handles, targets=targets, mask=mask, params=params
        )

    alone, together, unmasked = session(_allowed()), session(_allowed()), session(None)
    free = _sessions(small_generator, params)[0]
    before = alone.render().astype(float)
    stepper = BatchStepper()
    for _ in range(8):
        alone.step()
        unmasked.step()
        stepper.step([together, free])
    assert outside_change(unmasked, before) > 2 * outside_change(alone, before)  # the mask matters here
    assert outside_change(together, before) <= 1.5 * outside_change(alone, before) + 0.5


def test_split_modconv_gives_the_fused_step_up_to_rounding(small_generator):
    fused = DragSession.from_seed(small_generator, 4, handles=CASES[0][1], targets=CASES[0][2])
    split = DragSession.from_seed(
        small_generator, 4, handles=CASES[0][1], targets=CASES[0][2], params=DragParams(modconv="split")
    )
    for _ in range(3):
        a, b = fused.step(), split.step()
        np.testing.assert_array_equal(b.points, a.points)
        assert b.loss == pytest.approx(a.loss, rel=1e-4)
    np.testing.assert_allclose(split.latent(), fused.latent(), rtol=0, atol=2e-5)


def test_split_modconv_with_a_mask_matches_fused(small_generator):
    """F0 is captured by the step's own program, so the mask term starts at exactly 0 either way."""
    seed, handles, targets, _ = CASES[1]
    fused, split = (
        DragSession.from_seed(
            small_generator,
            seed,
            handles=handles,
            targets=targets,
            mask=_allowed(),
            params=DragParams(modconv=m),
        )
        for m in ("fused", "split")
    )
    for _ in range(3):
        a, b = fused.step(), split.step()
        np.testing.assert_array_equal(b.points, a.points)
    np.testing.assert_allclose(split.latent(), fused.latent(), rtol=0, atol=2e-5)


def test_a_converged_session_in_a_batch_keeps_its_latent(small_generator):
    params = DragParams()
    there = DragSession.from_seed(
        small_generator, 5, handles=[[90.0, 90.0]], targets=[[90.0, 90.0]], params=params
    )
    moving = DragSession.from_seed(
        small_generator, 6, handles=[[90.0, 90.0]], targets=[[110.0, 90.0]], params=params
    )
    before = there.latent()
    results = BatchStepper().step([there, moving])
    assert results[0].done and not results[1].done
    BatchStepper().step([there, moving])
    np.testing.assert_array_equal(there.latent(), before)
    assert not np.array_equal(
        moving.latent(),
        DragSession.from_seed(small_generator, 6, handles=[[1, 1]], targets=[[2, 2]]).latent(),
    )


def test_changes_between_batched_steps_take_effect(small_generator):
    params = DragParams(stop_distance=0.0)
    a, b = _sessions(small_generator, params)[:2]
    stepper = BatchStepper()
    stepper.step([a, b])
    b.set_targets([[60.0, 60.0]])  # handle already at its target: b stops moving
    results = stepper.step([a, b])
    assert results[1].distances[0] == pytest.approx(np.linalg.norm(results[1].points[0] - [60.0, 60.0]))
    b.set_points([[70.0, 70.0]], [[90.0, 90.0]])
    assert stepper.step([a, b])[1].step == 3


def test_sessions_with_different_forwards_cannot_share_a_batch(small_generator):
    a = DragSession.from_seed(small_generator, 1, handles=[[90.0, 90.0]], targets=[[100.0, 90.0]])
    b = DragSession.from_seed(
        small_generator, 2, handles=[[90.0, 90.0]], targets=[[100.0, 90.0]], params=DragParams(num_layers=4)
    )
    assert batch_key(a) != batch_key(b)
    with pytest.raises(DragInputError, match="cannot share a batch"):
        BatchStepper().step([a, b])
    with pytest.raises(DragInputError, match="twice"):
        BatchStepper().step([a, a])
    assert BatchStepper().step([]) == []


def test_unknown_modconv_is_rejected_by_name():
    with pytest.raises(DragInputError, match="modconv"):
        DragParams(modconv="grouped")


def test_graph_version_changes_exactly_when_a_captured_graph_would_go_stale(small_generator):
    a, b = _sessions(small_generator, DragParams(stop_distance=0.0))[:2]
    assert a.graph_version != b.graph_version
    v = a.graph_version
    a.step()
    a.set_targets([[130.0, 120.0], [150.0, 110.0]])  # written in place: a graph reads the new values
    a.set_params(lr=1e-3)  # lr lives in Adam, outside the graph
    assert a.graph_version == v
    seen = {v}
    for change in (
        lambda: a.set_points([[90.0, 90.0]], [[100.0, 90.0]]),
        lambda: a.set_mask(_allowed()),
        lambda: a.set_params(r1=4.0),
    ):
        change()
        assert a.graph_version not in seen and a.graph_version != b.graph_version
        seen.add(a.graph_version)
