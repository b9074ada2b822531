"""The landmark detector: coordinate conventions, file format, augmentation geometry, training, and the
shipped detector's accuracy on held-out procedural heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from daemon.cli import main
from stylegan2.heads.dataset import render_batch
from stylegan2.landmarks import (
    CORE_LANDMARKS,
    LandmarkDetector,
    LandmarkFileError,
    detect_landmarks,
    input_to_image_points,
    load_detector,
    read_detector_metadata,
    save_detector,
)
from stylegan2.training.landmarks_train import (
    LandmarkTrainConfig,
    core_landmark_arrays,
    evaluate_detector,
    mirror_and_warp,
    train_landmark_detector,
)

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "landmarks-heads.safetensors"


def _detector(width: int = 8, input_size: int = 32, seed: int = 0) -> LandmarkDetector:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LandmarkDetector(width=width, input_size=input_size).eval()


def test_core_landmarks_are_the_first_ten_head_landmarks():
    assert CORE_LANDMARKS == (
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
    )


def test_soft_argmax_reads_heatmap_cell_centres():
    model = _detector(input_size=64)  # 16x16 heatmap, 4 px cells: centres at 1.5, 5.5, ...
    logits = torch.full((1, 10, 16, 16), -1e4)
    logits[0, 0, 3, 7] = 0  # one-hot at row 3, column 7
    logits[0, 1] = 0  # uniform: the image centre
    pts = model.soft_argmax(logits)
    assert pts[0, 0].tolist() == pytest.approx([7 * 4 + 1.5, 3 * 4 + 1.5])
    assert pts[0, 1].tolist() == pytest.approx([31.5, 31.5])  # (64 - 1) / 2


def test_input_points_map_to_image_pixels_with_centred_pixels():
    p = torch.tensor([[0.0, 63.5], [127.0, 0.0]])
    out = input_to_image_points(p, 128, 256, 256)
    # pixel i of the 128 px input covers pixels 2i and 2i+1 of the 256 px image: its centre is 2i + 0.5
    assert out.tolist() == [[0.5, 127.5], [254.5, 0.5]]
    assert input_to_image_points(p, 128, 128, 128).tolist() == p.tolist()


def test_detect_accepts_uint8_and_generator_images_alike():
    model = _detector()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    batch = detect_landmarks(model, images, batch_size=2)
    assert batch.points.shape == (3, 10, 2) and batch.visible.shape == (3, 10)
    assert (batch.points >= 0).all() and (batch.points <= 63).all()
    assert ((batch.visible >= 0) & (batch.visible <= 1)).all()
    single = detect_landmarks(model, images[1])
    np.testing.assert_allclose(single.points[0], batch.points[1], atol=1e-4)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    np.testing.assert_allclose(detect_landmarks(model, as_float).points, batch.points, atol=1e-4)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 64, 64, 4), np.uint8), "uint8 images must be"),
        (np.zeros((2, 64, 64, 3), np.int32), "must be uint8 or floating point"),
        (torch.zeros(2, 64, 64, 3), "float images must be"),
        (np.zeros((2, 4, 4, 3), np.uint8), "at least 8x8"),
        (np.zeros((0, 64, 64, 3), np.uint8), "non-empty batch"),
        ([[1, 2, 3]], "non-empty batch"),
    ],
)
def test_detect_rejects_bad_images(images, message):
    with pytest.raises(ValueError, match=message):
        detect_landmarks(_detector(), images)


def test_save_load_roundtrip_fp16(tmp_path):
    model = _detector(width=8, input_size=48)
    path = tmp_path / "det.safetensors"
    save_detector(model, path, extra={"held_out": {"mean_px": 0.5}})
    loaded = load_detector(path)
    assert loaded.input_size == 48 and loaded.width == 8 and loaded.landmark_names == CORE_LANDMARKS
    assert read_detector_metadata(path)["extra"] == {"held_out": {"mean_px": 0.5}}
    images = np.random.default_rng(1).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    a, b = detect_landmarks(model, images), detect_landmarks(loaded, images)
    np.testing.assert_allclose(a.points, b.points, atol=0.05)  # fp16 weights


def test_load_rejects_missing_foreign_and_corrupt_files(tmp_path, small_model_path):
    with pytest.raises(LandmarkFileError, match="no such landmark-detector file"):
        load_detector(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(LandmarkFileError, match="not a readable safetensors file"):
        load_detector(junk)
    with pytest.raises(LandmarkFileError, match="not a krita-draggan landmark detector"):
        load_detector(small_model_path)  # a generator file
    good = tmp_path / "det.safetensors"
    save_detector(_detector(), good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(LandmarkFileError):
        load_detector(cut)


def test_mirror_and_warp_moves_landmarks_with_the_image():
    """Blobs drawn at the landmarks land where the transformed landmarks say (flip swaps left/right)."""
    s, n = 64, 12
    gen = torch.Generator().manual_seed(0)
    pts = torch.rand(n, 3, 2, generator=gen) * 30 + 17
    yy, xx = torch.meshgrid(torch.arange(s).float(), torch.arange(s).float(), indexing="ij")
    blobs = [
        torch.exp(-((xx - pts[:, k, 0, None, None]) ** 2 + (yy - pts[:, k, 1, None, None]) ** 2) / 8)
        for k in range(3)
    ]
    x = torch.stack(blobs, 1) * 2 - 1  # channel k = landmark k
    perm = [2, 1, 0]  # landmarks 0 and 2 are a left/right pair
    x2, p2, v2 = mirror_and_warp(x, pts, torch.ones(n, 3, dtype=torch.bool), gen, perm)
    w = (x2 + 1) / 2
    centroid = torch.stack([(w * xx).sum((-2, -1)), (w * yy).sum((-2, -1))], -1) / w.sum((-2, -1))[..., None]
    flipped = (centroid[:, perm] - p2).norm(dim=-1).amax(1) < 0.1
    kept = (centroid - p2).norm(dim=-1).amax(1) < 0.1
    assert (flipped | kept).all()
    assert flipped.any() and kept.any()  # both cases happened
    assert v2.all()


def test_training_beats_the_untrained_detector():
    cfg = LandmarkTrainConfig(
        images=256,
        eval_images=16,
        eval_size=64,
        width=8,
        input_size=32,
        batch=32,
        steps=80,
        minutes=None,
        lr=5e-3,
    )
    result = train_landmark_detector(cfg, "cpu", log=lambda s: None)
    held = render_batch(cfg.eval_seed, cfg.eval_images, cfg.eval_size)
    untrained = evaluate_detector(
        _detector(), held.images, *core_landmark_arrays(held.landmarks, held.visible)
    )
    assert result.steps == 80
    assert result.eval["images"] == 16 and result.eval["size"] == 64
    assert result.eval["mean_px"] < 0.8 * untrained["mean_px"]
    assert set(result.eval["per_landmark_px"]) == set(CORE_LANDMARKS)


def test_cli_train_landmarks_writes_a_loadable_detector(tmp_path, capsys):
    out = tmp_path / "lm.safetensors"
    args = ["--out", str(out), "--images", "16", "--steps", "2", "--batch", "4", "--width", "8"]
    assert main(["train-landmarks", *args, "--eval-images", "4", "--device", "cpu", "--workers", "1"]) == 0
    extra = read_detector_metadata(out)["extra"]
    assert extra["steps"] == 2 and extra["held_out"]["images"] == 4
    assert extra["command"].startswith("draggan train-landmarks ") and "--images 16" in extra["command"]
    assert load_detector(out).width == 8
    assert "held-out error on 4 renders at 256 px" in capsys.readouterr().out


def test_cli_train_landmarks_rejects_bad_options(tmp_path, capsys):
    assert main(["train-landmarks", "--out", str(tmp_path / "x"), "--images", "0", "--device", "cpu"]) == 2
    assert "images must be >= 1" in capsys.readouterr().err


def test_shipped_detector_is_small_and_accurate_on_held_out_heads():
    assert SHIPPED.is_file(), f"{SHIPPED} is missing: train it with `draggan train-landmarks`"
    assert SHIPPED.stat().st_size < 2 * 1024 * 1024
    model = load_detector(SHIPPED)
    held = render_batch(seed=3000, count=24, size=256)  # heads neither trained nor evaluated on
    landmarks, visible = core_landmark_arrays(held.landmarks, held.visible)
    ev = evaluate_detector(model, held.images, landmarks, visible)
    assert ev["mean_px"] < 1.0
    assert ev["degraded_mean_px"] < 1.5
    assert ev["visibility_accuracy"] > 0.95
