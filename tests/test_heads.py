"""Procedural heads dataset: determinism, conventions, exact landmarks, CLI and errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from daemon import cmd_heads
from stylegan2.heads import FACTOR_NAMES, LANDMARK_NAMES, HeadFactors, render_head, sample_factors
from stylegan2.heads.dataset import (
    HeadsTorchDataset,
    head_factors,
    image_path,
    load_landmarks,
    make_grid,
    render_batch,
    write_dataset,
)
from stylegan2.heads.render import HeadScene

REQUIRED = {
    "nose_tip",
    "chin",
    "mouth_left",
    "mouth_right",
    "upper_lip",
    "lower_lip",
    "eye_left",
    "eye_right",
    "brow_left",
    "brow_right",
}


def _lm(render, name: str) -> np.ndarray:
    return render.landmarks[LANDMARK_NAMES.index(name)]


def _vis(render, name: str) -> bool:
    return bool(render.visible[LANDMARK_NAMES.index(name)])


def _frontal(**changes) -> HeadFactors:
    """A symmetric head: frontal, bald, closed eyes, light from the front, centred."""
    base = HeadFactors(
        hairline=2.0, eye_openness=0.05, light_azimuth=0.0, center_x=0.5, gaze_x=0.0, brow_tilt=0.3
    )
    return dataclasses.replace(base, **changes)


def test_landmark_names_and_output_types():
    assert len(LANDMARK_NAMES) >= 10 and set(LANDMARK_NAMES) >= REQUIRED
    assert len(set(LANDMARK_NAMES)) == len(LANDMARK_NAMES)
    r = render_head(head_factors(0, 0), size=40)
    assert r.image.shape == (40, 40, 3) and r.image.dtype == np.uint8
    assert r.landmarks.shape == (len(LANDMARK_NAMES), 2) and r.landmarks.dtype == np.float32
    assert r.visible.shape == (len(LANDMARK_NAMES),) and r.visible.dtype == bool
    assert render_head(head_factors(0, 0), size=40, supersample=1).image.shape == (40, 40, 3)


def test_same_seed_same_bytes_and_different_seeds_differ():
    a = render_head(head_factors(5, 3), size=64).image
    b = render_head(head_factors(5, 3), size=64).image
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != render_head(head_factors(5, 4), size=64).image.tobytes()
    assert head_factors(5, 3) != head_factors(6, 3)


def test_batch_independent_of_workers_and_start():
    one = render_batch(11, 10, 32, workers=1)
    two = render_batch(11, 10, 32, workers=2)
    for field in ("images", "landmarks", "visible", "factors", "indices"):
        np.testing.assert_array_equal(getattr(one, field), getattr(two, field))
    tail = render_batch(11, 3, 32, start=6)
    np.testing.assert_array_equal(tail.images, one.images[6:9])
    np.testing.assert_array_equal(tail.indices, [6, 7, 8])
    assert one.images.shape == (10, 32, 32, 3) and one.factors.shape == (10, len(FACTOR_NAMES))
    assert len({im.tobytes() for im in one.images}) == 10


def test_pixel_centre_convention_by_mirror_symmetry():
    """A symmetric head centred at x = (S-1)/2 renders mirror-symmetric about that line."""
    size = 96
    r = render_head(_frontal(), size=size)
    flipped = r.image[:, ::-1].astype(int)
    assert np.abs(r.image.astype(int) - flipped).max() <= 2
    assert _lm(r, "nose_tip")[0] == pytest.approx((size - 1) / 2, abs=1e-3)
    for name in ("eye", "brow", "mouth", "pupil", "ear"):
        left, right = _lm(r, f"{name}_left"), _lm(r, f"{name}_right")
        assert left[0] + right[0] == pytest.approx(size - 1, abs=1e-3)
        assert left[1] == pytest.approx(right[1], abs=1e-3)
        assert left[0] > right[0]  # the head's own left is on the image right when frontal


def test_pose_sign_conventions():
    size = 128
    centre = np.array([0.5 * size - 0.5, 0.45 * size - 0.5])
    nose0 = _lm(render_head(_frontal(), size=size), "nose_tip")
    assert nose0[0] == pytest.approx(centre[0], abs=1e-3)
    assert _lm(render_head(_frontal(yaw=30), size=size), "nose_tip")[0] > centre[0] + 5  # + yaw: image right
    assert _lm(render_head(_frontal(yaw=-30), size=size), "nose_tip")[0] < centre[0] - 5
    assert _lm(render_head(_frontal(pitch=15), size=size), "nose_tip")[1] < nose0[1] - 3  # + pitch: up
    rolled = render_head(_frontal(roll=12), size=size)  # + roll: counter-clockwise on screen
    assert _lm(rolled, "eye_left")[1] < _lm(rolled, "eye_right")[1] - 2


def test_far_side_hides_at_large_yaw():
    frontal = render_head(_frontal(hairline=0.5), size=64)
    assert frontal.visible[: LANDMARK_NAMES.index("pupil_right") + 1].all()
    turned = render_head(_frontal(hairline=0.5, yaw=80), size=64)
    for name in ("eye_left", "brow_left", "pupil_left", "mouth_left"):
        assert not _vis(turned, name), name
    for name in ("eye_right", "nose_tip", "mouth_right"):
        assert _vis(turned, name), name
    other = render_head(_frontal(hairline=0.5, yaw=-80), size=64)
    assert not _vis(other, "eye_right") and _vis(other, "eye_left")
    down = render_head(_frontal(pitch=-80), size=64)  # looking far down hides the chin and the mouth
    assert not _vis(down, "chin") and not _vis(down, "lower_lip")


def test_long_hair_hides_an_ear_that_faces_the_camera():
    """Visibility is a depth test along the landmark's ray, not only a facing test."""
    long_hair = _frontal(hairline=0.5, hair_length=1.0, hair_volume=0.1, yaw=20)
    _, normals = HeadScene(long_hair).landmark_points()
    ear = LANDMARK_NAMES.index("ear_right")
    assert normals[ear, 2] > 0.5
    assert not render_head(long_hair, size=64).visible[ear]
    assert render_head(dataclasses.replace(long_hair, hairline=2.0), size=64).visible[ear]


def test_visible_landmarks_lie_on_the_head_not_the_background():
    """Render each head over black and over white: pixels on the head agree, background ones don't."""
    size = 96
    checked = 0
    for k in range(12):
        f = head_factors(21, k)
        over_black = render_head(dataclasses.replace(f, **_bg((0, 0, 0))), size=size)
        over_white = render_head(dataclasses.replace(f, **_bg((1, 1, 1))), size=size)
        np.testing.assert_array_equal(over_black.landmarks, over_white.landmarks)
        assert ((over_black.landmarks >= -0.5) & (over_black.landmarks <= size - 0.5)).all()
        cover = 1 - (over_white.image.astype(int) - over_black.image.astype(int)).mean(axis=2) / 255
        for (x, y), vis in zip(np.rint(over_black.landmarks).astype(int), over_black.visible):
            if vis:
                assert cover[y, x] > 0.5, (k, x, y)
                checked += 1
        assert over_black.visible.sum() >= 6  # sampled poses keep most of the face in view
    assert checked > 80


def _bg(rgb: tuple[float, float, float]) -> dict[str, float]:
    return {f"bg_{end}_{c}": v for end in ("top", "bottom") for c, v in zip("rgb", rgb)}


def test_pupil_landmark_follows_the_painted_pupil():
    f = _frontal(
        eye_openness=1.0, eye_size=0.17, gaze_x=0.8, gaze_y=-0.6, iris_r=0.3, iris_g=0.6, iris_b=0.95
    )
    r = render_head(f, size=256)
    x, y = np.rint(_lm(r, "pupil_left")).astype(int)
    assert r.image[y, x].max() < 60  # pupil ink
    ex, ey = np.rint(_lm(r, "eye_left")).astype(int)
    assert r.image[ey, ex].max() > 100  # with the gaze off-centre the eye centre is iris or white
    assert np.hypot(*(_lm(r, "pupil_left") - _lm(r, "eye_left"))) > 3


def test_factor_vector_round_trip():
    f = sample_factors(np.random.default_rng(3))
    v = f.to_vector()
    assert v.dtype == np.float64 and v.shape == (len(FACTOR_NAMES),)
    assert FACTOR_NAMES[:3] == ("yaw", "pitch", "roll")
    assert HeadFactors.from_vector(v) == f
    assert render_head(HeadFactors.from_vector(v), 48).image.tobytes() == render_head(f, 48).image.tobytes()
    with pytest.raises(ValueError, match="entries"):
        HeadFactors.from_vector(v[:-1])
    with pytest.raises(ValueError, match="non-finite"):
        HeadFactors.from_vector(np.where(np.arange(v.size) == 4, np.nan, v))


def test_sampled_ranges():
    vs = np.stack([head_factors(1, k).to_vector() for k in range(300)])
    col = {n: vs[:, i] for i, n in enumerate(FACTOR_NAMES)}
    assert np.abs(col["yaw"]).max() <= 40 and np.abs(col["yaw"]).max() > 30
    assert np.abs(col["pitch"]).max() <= 20 and np.abs(col["roll"]).max() <= 14
    for name in FACTOR_NAMES:
        if name.endswith(("_r", "_g", "_b")):
            assert col[name].min() >= 0 and col[name].max() <= 1, name
    assert (col["hairline"] >= 1).any() and (col["hair_length"] > 0).any()  # bald and long-haired heads


def test_bad_arguments_raise_clear_errors(tmp_path):
    f = HeadFactors()
    for size in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="size"):
            render_head(f, size=size)
    with pytest.raises(ValueError, match="supersample"):
        render_head(f, size=16, supersample=0)
    with pytest.raises(ValueError, match="at most"):
        render_head(f, size=5000, supersample=2)
    with pytest.raises(ValueError, match="yaw must be a finite"):
        HeadFactors(yaw=float("nan"))
    with pytest.raises(ValueError, match="head_width must be > 0"):
        HeadFactors(head_width=0.0)
    with pytest.raises(ValueError, match="eye_spacing"):
        HeadFactors(eye_spacing=1.2)
    with pytest.raises(ValueError, match="count"):
        render_batch(0, -1, 16)
    with pytest.raises(ValueError, match="seed"):
        render_batch(-1, 1, 16)
    with pytest.raises(ValueError, match="workers"):
        render_batch(0, 1, 16, workers=0)
    with pytest.raises(ValueError, match="index"):
        head_factors(0, -2)
    with pytest.raises(ValueError, match="count"):
        write_dataset(tmp_path / "d", -5, 16)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        write_dataset(tmp_path / "full", 1, 16)
    with pytest.raises(ValueError, match=r"no landmarks\.npz"):
        load_landmarks(tmp_path / "full")
    assert render_batch(0, 0, 16).images.shape == (0, 16, 16, 3)


def test_write_dataset_folder(tmp_path):
    out = tmp_path / "heads"
    write_dataset(out, 5, 32, seed=4, workers=1)
    batch = render_batch(4, 5, 32)
    for k in range(5):
        with Image.open(out / image_path(k)) as im:
            np.testing.assert_array_equal(np.asarray(im), batch.images[k])
    data = load_landmarks(out)
    np.testing.assert_array_equal(data["landmarks"], batch.landmarks)
    np.testing.assert_array_equal(data["visible"], batch.visible)
    np.testing.assert_array_equal(data["factors"], batch.factors)
    assert tuple(data["landmark_names"]) == LANDMARK_NAMES and tuple(data["factor_names"]) == FACTOR_NAMES
    assert data["files"][4] == "00000/img00000004.png"
    meta = json.loads((out / "heads.json").read_text())
    assert meta["count"] == 5 and meta["size"] == 32 and meta["seed"] == 4


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="draggan heads")
    cmd_heads.add_heads_arguments(parser)
    return cmd_heads.run_heads(parser.parse_args(argv))


def test_cli_grid_dataset_and_errors(tmp_path, capsys):
    from daemon.cli import COMMANDS

    assert COMMANDS["heads"][0] == "daemon.cmd_heads"
    grid = tmp_path / "grid.png"
    assert (
        _cli([str(grid), "--grid", "--count", "6", "--cols", "3", "--size", "24", "--landmarks", "--quiet"])
        == 0
    )
    with Image.open(grid) as im:
        assert im.size == (72, 48)
    assert _cli([str(tmp_path / "ds"), "--count", "3", "--size", "24", "--workers", "1", "--quiet"]) == 0
    assert (tmp_path / "ds" / image_path(2)).is_file()
    assert _cli([str(tmp_path / "ds"), "--count", "3", "--size", "24", "--quiet"]) == 2  # not empty
    assert _cli([str(tmp_path / "e"), "--count", "-1", "--quiet"]) == 2
    assert _cli([str(tmp_path / "f"), "--size", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "count must be >= 0" in err and "size must be a positive integer" in err


def test_make_grid_layout():
    ims = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    g = make_grid(ims, cols=2, pad=1, fill=7)
    assert g.shape == (3 * 3 - 1, 2 * 3 - 1, 3)
    np.testing.assert_array_equal(g[3:5, 3:5], ims[3])
    assert (g[6:8, 3:5] == 7).all()
    with pytest.raises(ValueError):
        make_grid(np.zeros((0, 2, 2, 3), np.uint8))


def test_torch_dataset_item():
    ds = HeadsTorchDataset(3, size=24, seed=2)
    item = ds[1]
    r = render_head(head_factors(2, 1), 24)
    assert len(ds) == 3 and tuple(item["image"].shape) == (3, 24, 24)
    assert float(item["image"].min()) >= -1 and float(item["image"].max()) <= 1
    np.testing.assert_array_equal(item["landmarks"].numpy(), r.landmarks)
    with pytest.raises(IndexError):
        ds[3]


def test_renderer_and_command_do_not_import_torch():
    code = (
        "import sys, stylegan2.heads.dataset, daemon.cmd_heads;"
        "from stylegan2.heads import render_head, HeadFactors; render_head(HeadFactors(), 16);"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
