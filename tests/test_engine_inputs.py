"""Bad input to the engine: each case raises DragInputError (a ValueError) saying what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import DragInputError, DragParams, DragSession, latent_from_seed, render_latent, resolve_device
from stylegan2 import Generator

RES = 32
OK_H, OK_T = [(5.0, 6.0), (20.0, 7.0)], [(9.0, 6.0), (25.0, 10.0)]
FAST = DragParams(feature_block=4, r1=2.0, r2=3)


@pytest.fixture(scope="module")
def G() -> Generator:
    torch.manual_seed(0)
    return Generator(
        z_dim=32, c_dim=0, w_dim=32, img_resolution=RES, img_channels=3,
        mapping_kwargs={"num_layers": 2}, channel_base=512, channel_max=16,
    )  # fmt: skip


@pytest.fixture
def s(G: Generator) -> DragSession:
    return DragSession.from_seed(G, 0, handles=OK_H, targets=OK_T, params=FAST)


def make(G: Generator, handles=OK_H, targets=OK_T, **kw) -> DragSession:
    kw.setdefault("params", FAST)
    return DragSession.from_seed(G, 0, handles=handles, targets=targets, **kw)


def test_error_type_is_a_value_error() -> None:
    assert issubclass(DragInputError, ValueError)


@pytest.mark.parametrize(
    ("handles", "targets", "expected"),
    [
        ([(5.0, 6.0), (32.0, 7.0)], OK_T, ["handles[1]", "x = 32", "0 <= x <= 31", "32 px"]),
        ([(5.0, -0.5), (20.0, 7.0)], OK_T, ["handles[0]", "y = -0.5", "0 <= y <= 31"]),
        (OK_H, [(9.0, 6.0), (25.0, 31.5)], ["targets[1]", "y = 31.5", "0 <= y <= 31"]),
        ([(5.0, float("nan")), (20.0, 7.0)], OK_T, ["handles[0]", "y = nan", "finite"]),
        (OK_H, [(float("inf"), 6.0), (25.0, 10.0)], ["targets[0]", "x = inf", "finite"]),
        ([(5.0, 6.0)], OK_T, ["1 handles but 2 targets"]),
        ([], [], ["at least one point", "handles"]),
        (np.zeros((0, 2)), np.zeros((0, 2)), ["at least one point", "handles"]),
        ([(5.0, 6.0, 1.0)], [(9.0, 6.0, 1.0)], ["handles", "shape [N, 2]", "[1, 3]"]),
        ([5.0, 6.0], [9.0, 6.0], ["handles", "shape [N, 2]", "[2]"]),
        ([("a", 6.0)], [(9.0, 6.0)], ["handles", "(x, y) numbers"]),
    ],
)
def test_bad_points(G: Generator, handles, targets, expected: list[str]) -> None:
    with pytest.raises(DragInputError) as e:
        make(G, handles, targets)
    for text in expected:
        assert text in str(e.value), (text, str(e.value))


def test_bad_points_later_leave_the_session_unchanged(s: DragSession) -> None:
    with pytest.raises(DragInputError, match=r"got 1 targets for 2 handles"):
        s.set_targets([(3.0, 3.0)])
    with pytest.raises(DragInputError, match=r"targets\[1\] = \(40, 3\) has x = 40 outside the image"):
        s.set_targets([(3.0, 3.0), (40.0, 3.0)])
    with pytest.raises(DragInputError, match=r"2 handles but 3 targets"):
        s.set_points(OK_H, [*OK_T, (1.0, 1.0)])
    np.testing.assert_array_equal(s.targets, OK_T)
    np.testing.assert_array_equal(s.handles, OK_H)
    assert s.step().step == 1


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (np.ones((16, 16), dtype=bool), ["shape (32, 32)", "got (16, 16)"]),
        (np.ones((32, 32, 1), dtype=bool), ["shape (32, 32)", "got (32, 32, 1)"]),
        (np.ones((32, 32), dtype=np.float32), ["bool or integer", "float32"]),
        ([[1] * 32] * 32, ["numpy array", "list"]),
        ("everything", ["numpy array", "str"]),
    ],
)
def test_bad_masks(G: Generator, s: DragSession, mask, expected: list[str]) -> None:
    for call in (lambda: make(G, mask=mask), lambda: s.set_mask(mask)):
        with pytest.raises(DragInputError) as e:
            call()
        for text in expected:
            assert text in str(e.value), (text, str(e.value))


def test_masks_that_are_accepted(s: DragSession) -> None:
    s.set_mask(np.ones((RES, RES), dtype=bool))
    s.set_mask(np.zeros((RES, RES), dtype=np.uint8))
    s.set_mask(torch.ones(RES, RES, dtype=torch.int32))
    s.set_mask(None)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"space": "z"}, "space must be one of"),
        ({"num_layers": 0}, "num_layers must be an integer >= 1"),
        ({"tracking": "cosine"}, "tracking must be one of"),
        ({"r1": 0.0}, "r1 must be a finite number > 0"),
        ({"r1": float("nan")}, "r1 must be a finite number > 0"),
        ({"r2": 2.5}, "r2 must be an integer >= 1"),
        ({"lam": -1.0}, "lam must be a finite number >= 0"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"stop_distance": -1.0}, "stop_distance must be"),
        ({"feature_block": 0}, "feature_block must be an integer >= 1"),
        ({"nearest": "yes"}, "nearest must be True or False"),
        ({"nearest_radius": -3.0}, "nearest_radius must be"),
        ({"nearest_rate": 1.5}, "nearest_rate must be a number in [0, 1]"),
        ({"noise_mode": "loud"}, "noise_mode must be one of"),
        ({"learning_rate": 0.1}, "unknown drag parameter(s) ['learning_rate']"),
    ],
)
def test_bad_params(s: DragSession, changes: dict, expected: str) -> None:
    with pytest.raises(DragInputError) as e:
        s.set_params(**changes)
    assert expected in str(e.value)
    assert s.params == FAST  # unchanged
    if "learning_rate" not in changes:
        with pytest.raises(DragInputError):
            DragParams(**changes)


def test_num_layers_beyond_the_model(G: Generator, s: DragSession) -> None:
    with pytest.raises(DragInputError, match=r"num_layers = 9 but this model has only 8 ws \(valid: 1..8\)"):
        s.set_params(num_layers=9)
    with pytest.raises(DragInputError, match="only 8 ws"):
        make(G, params=FAST.replace(num_layers=9))
    assert s.params.num_layers == 6


def test_bad_latents(G: Generator) -> None:
    shape_msg = r"latent must have shape \[8, 32\] or \[1, 8, 32\].*got \[8, 31\]"
    with pytest.raises(DragInputError, match=shape_msg):
        DragSession(G, np.zeros((8, 31), dtype=np.float32), OK_H, OK_T, params=FAST)
    bad = latent_from_seed(G, 0).clone()
    bad[0, 2, 3] = float("nan")
    with pytest.raises(DragInputError, match="NaN or infinite"):
        DragSession(G, bad, OK_H, OK_T, params=FAST)
    with pytest.raises(DragInputError, match="params must be a DragParams"):
        DragSession(G, latent_from_seed(G, 0), OK_H, OK_T, params={"lr": 0.1})
    with pytest.raises(DragInputError, match=r"seed must be in \[0, 2\*\*32\)"):
        latent_from_seed(G, -1)


def test_bad_run_render_and_device_arguments(G: Generator, s: DragSession) -> None:
    with pytest.raises(DragInputError, match="max_steps must be an integer >= 0, got -1"):
        s.run(max_steps=-1)
    with pytest.raises(DragInputError, match=r"cancel must be a threading\.Event"):
        s.run(max_steps=3, cancel=True)
    with pytest.raises(DragInputError, match=r"size must be an integer in \[1, 8192\]"):
        s.render(size=0)
    with pytest.raises(DragInputError, match="size must be an integer"):
        render_latent(G, s.latent(), size=12.5)
    with pytest.raises(DragInputError, match="the generator is on cpu"):
        make(G, device="cuda:0")
    with pytest.raises(DragInputError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DragInputError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert s.step_count == 0
