"""StyleGAN2 training: discriminator layout, losses, augmentation, exact resume, checkpoints, export, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daemon import cmd_train
from stylegan2.model_file import load_generator, read_metadata
from stylegan2.training.augment import AugmentPipe, translate_integer
from stylegan2.training.checkpoint import (
    CheckpointError,
    compact_codecs,
    read_checkpoint,
    write_checkpoint,
)
from stylegan2.training.data import DatasetError, build_dataset, load_folder
from stylegan2.training.discriminator import Discriminator, MinibatchStdLayer
from stylegan2.training.loop import (
    RunOptions,
    TrainConfig,
    build_state,
    state_tensors,
    train,
    train_step,
)

REPO = Path(__file__).resolve().parent.parent

TINY = dict(
    resolution=32, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=16, batch=4,
    gamma=0.5, r1_interval=2, pl_weight=2.0, style_mixing=0.9, ada=True, aug_p=0.2, precision="fp32",
)  # fmt: skip
# the same run settings as command-line options
TINY_ARGS = (
    "--resolution 32 --z-dim 32 --mapping-layers 2 --channel-base 256 --channel-max 16 --batch 4 "
    "--gamma 0.5 --r1-interval 2 --pl 2 --style-mixing 0.9 --ada --aug 0.2 --precision fp32 "
    "--device cpu --no-progress --log-every 2"
)


def cli(args: str) -> int:
    """Run `draggan train` in-process; `args` is split on whitespace (test paths have no spaces)."""
    return cmd_train.main(args.split())


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight small real images (PNG and JPEG, non-square, other sizes than the training size)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(8):
        yy, xx = np.mgrid[0:40, 0:48]
        img = np.stack(
            [(xx * (i + 1) * 5) % 256, (yy * 7 + i * 30) % 256, rng.integers(0, 256, (40, 48))], -1
        )
        Image.fromarray(img.astype(np.uint8)).save(root / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (root / "notes.txt").write_text("not an image")
    return root


def _tiny_cfg(data: Path | str, **changes: object) -> TrainConfig:
    return TrainConfig(data=str(data), **{**TINY, **changes})


# -- discriminator ------------------------------------------------------------------------------
def _expected_d_shapes(res: int, cbase: int, cmax: int) -> dict[str, tuple[int, ...]]:
    ch = lambda r: min(cbase // r, cmax)  # noqa: E731
    shapes: dict[str, tuple[int, ...]] = {}
    r = res
    while r > 4:
        p = f"b{r}."
        if r == res:
            shapes[p + "fromrgb.weight"] = (ch(r), 3, 1, 1)
            shapes[p + "fromrgb.bias"] = (ch(r),)
        shapes[p + "conv0.weight"] = (ch(r), ch(r), 3, 3)
        shapes[p + "conv0.bias"] = (ch(r),)
        shapes[p + "conv1.weight"] = (ch(r // 2), ch(r), 3, 3)
        shapes[p + "conv1.bias"] = (ch(r // 2),)
        shapes[p + "skip.weight"] = (ch(r // 2), ch(r), 1, 1)
        r //= 2
    c4 = ch(4)
    shapes["b4.conv.weight"] = (c4, c4 + 1, 3, 3)
    shapes["b4.conv.bias"] = (c4,)
    shapes["b4.fc.weight"] = (c4, c4 * 16)
    shapes["b4.fc.bias"] = (c4,)
    shapes["b4.out.weight"] = (1, c4)
    shapes["b4.out.bias"] = (1,)
    return shapes


def test_discriminator_nvidia_names_shapes_and_output() -> None:
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=512, channel_max=32)
    params = {k: tuple(v.shape) for k, v in D.named_parameters()}
    assert params == _expected_d_shapes(32, 512, 32)
    assert isinstance(D.b4.mbstd, MinibatchStdLayer)
    out = D(torch.randn(8, 3, 32, 32))
    assert out.shape == (8, 1) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # the demo model's D (same channel settings as its G) has the analytically expected size
    D256 = Discriminator(c_dim=0, img_resolution=256, img_channels=3, channel_base=16384, channel_max=256)
    expected = sum(int(np.prod(s)) for s in _expected_d_shapes(256, 16384, 256).values())
    assert sum(p.numel() for p in D256.parameters()) == expected == 7_219_009


def test_discriminator_bad_input_and_conditional() -> None:
    D = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=128, channel_max=16)
    with pytest.raises(ValueError, match="shape"):
        D(torch.randn(4, 3, 32, 32))
    with pytest.raises(ValueError, match="group size"):
        D(torch.randn(6, 3, 16, 16))
    Dc = Discriminator(c_dim=5, img_resolution=16, img_channels=3, channel_base=128, channel_max=16)
    assert Dc(torch.randn(4, 3, 16, 16), torch.randn(4, 5)).shape == (4, 1)
    with pytest.raises(ValueError, match="class-conditional"):
        Dc(torch.randn(4, 3, 16, 16))


def test_minibatch_std_matches_direct_computation() -> None:
    x = torch.randn(8, 6, 4, 4)
    y = MinibatchStdLayer(group_size=4)(x)
    assert y.shape == (8, 7, 4, 4)
    for i in range(8):  # NVIDIA groups are strided: sample i is in group i % 2
        group = x[i % 2 :: 2]
        std = (group.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(y[i, 6], std.expand(4, 4), atol=1e-6)


# -- augmentation -------------------------------------------------------------------------------
def test_translate_and_flip_are_exact_and_differentiable() -> None:
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8).requires_grad_(True)
    out = translate_integer(img, torch.tensor([[2, 1], [0, 0]]))
    assert torch.equal(out[0, :, 1:, 2:], img[0, :, :-1, :-2])  # shifted right by 2, down by 1
    assert torch.equal(out[0, :, 0, 2:], img[0, :, 1, :-2])  # reflect padding at the top edge
    assert torch.equal(out[1], img[1])
    out.sum().backward()
    assert img.grad.abs().sum() > 0
    flip_all = AugmentPipe(p=1.0, translate=0.0)
    assert torch.equal(flip_all(img.detach()), img.detach().flip(3))


def test_fixed_zero_probability_is_a_noop_without_random_draws() -> None:
    pipe = AugmentPipe(p=0.0)
    x = torch.randn(4, 3, 8, 8)
    state = torch.get_rng_state()
    assert pipe(x) is x
    assert torch.equal(torch.get_rng_state(), state)


def test_ada_moves_p_towards_the_target() -> None:
    up = AugmentPipe(p=0.0, adaptive=True, speed_kimg=1.0, interval=2)
    for _ in range(4):
        up.observe(torch.ones(8, 1))  # D sure that reals are real: r_t = 1 > 0.6 -> more augmentation
        up.adjust(batch_size=8)
    assert float(up.p) == pytest.approx(2 * 8 * 2 / 1000)
    down = AugmentPipe(p=0.01, adaptive=True, speed_kimg=1.0, interval=1)
    for _ in range(5):
        down.observe(-torch.ones(8, 1))
        down.adjust(batch_size=8)
    assert float(down.p) == 0.0
    with pytest.raises(ValueError):
        AugmentPipe(p=1.5)


# -- training steps ------------------------------------------------------------------------------
def test_training_steps_change_weights_with_finite_losses_and_ema(image_folder: Path) -> None:
    cfg = _tiny_cfg(image_folder, ema_kimg=0.01, ema_rampup=None)
    torch.manual_seed(0)
    s = build_state(cfg, torch.device("cpu"))
    ds = load_folder(image_folder, 32, "cpu")
    g0 = {k: v.clone() for k, v in s.G.state_dict().items()}
    d0 = {k: v.clone() for k, v in s.D.state_dict().items()}
    seen: set[str] = set()
    for _ in range(4):
        stats = train_step(s, ds)
        seen |= set(stats)
        assert all(torch.isfinite(v) for v in stats.values())
    assert seen == {"loss_G", "loss_D_fake", "loss_D_real", "r1", "pl"}
    assert not torch.equal(s.G.state_dict()["synthesis.b32.conv1.weight"], g0["synthesis.b32.conv1.weight"])
    assert not torch.equal(s.G.state_dict()["mapping.fc0.weight"], g0["mapping.fc0.weight"])
    assert not torch.equal(s.D.state_dict()["b4.fc.weight"], d0["b4.fc.weight"])
    ema, g = s.G_ema.state_dict(), s.G.state_dict()
    w = "synthesis.b16.conv0.weight"
    assert not torch.equal(ema[w], g[w]) and not torch.equal(ema[w], g0[w])
    assert torch.equal(ema["mapping.w_avg"], g["mapping.w_avg"])  # buffers are copied, not averaged
    assert s.step == 4 and s.cur_nimg == 16


# -- exact resume -------------------------------------------------------------------------------
def _tensors_of(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).tensors


def test_resume_continues_bit_identically(image_folder: Path, tmp_path: Path, capsys) -> None:
    steps_total, steps_first = 6, 3
    cap = 48 * 1024
    straight = train(
        _tiny_cfg(image_folder),
        RunOptions(
            out=tmp_path / "a",
            kimg=steps_total * 4 / 1000,
            device="cpu",
            progress=False,
            log_every=2,
            max_shard_bytes=cap,
        ),
        log=lambda _: None,
    )
    # the same run in two invocations of the real CLI
    mib = cap / 2**20
    run_b = tmp_path / "b"
    first, total = steps_first * 4 / 1000, steps_total * 4 / 1000
    assert cli(f"--data {image_folder} {TINY_ARGS} --out {run_b} --kimg {first} --max-shard-mib {mib}") == 0
    assert (
        cli(f"--resume {run_b} --out {run_b} --device cpu --no-progress --kimg {total} --max-shard-mib {mib}")
        == 0
    )
    resumed = read_checkpoint(sorted((tmp_path / "b" / "checkpoints").iterdir())[-1])
    assert resumed.meta["step"] == straight.step == steps_total
    a = _tensors_of(straight.checkpoint)
    b = resumed.tensors
    assert set(a) == set(b)
    assert any(k.startswith("opt_D/") and k.endswith("exp_avg_sq") for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ma = read_checkpoint(straight.checkpoint).meta
    for key in ("config", "augment", "loss", "cur_nimg", "rng_numpy", "rng_python"):
        assert ma[key] == resumed.meta[key], key
    assert ma["augment"]["p"] != TINY["aug_p"]  # ADA did move p, and it was carried over exactly
    # every file of every checkpoint respects the size cap, and the state needed several shards
    files = [
        f for d in [tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints"] for f in d.rglob("*")
    ]
    shards = [f for f in files if f.suffix == ".safetensors"]
    assert len(shards) >= 3 * 2
    assert all(f.stat().st_size <= cap for f in shards)
    # settings that define the run cannot change on resume
    assert cli(f"--resume {run_b} --batch 8 --out {run_b} --kimg 0.04 --device cpu") == 2
    assert "cannot change batch" in capsys.readouterr().err


# -- checkpoint files ---------------------------------------------------------------------------
def test_checkpoint_sharding_roundtrip_and_atomic_replace(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "big": torch.randn(5000, generator=g),  # 20 kB: must be split across shards
        "mid": torch.randn(30, 40, generator=g),
        "ints": torch.arange(7, dtype=torch.int64),
        "bytes": torch.randint(0, 255, (100,), dtype=torch.uint8, generator=g),
        "scalar": torch.tensor(3.5),
    }
    cap = 4096
    path = write_checkpoint(tmp_path / "ck", tensors, {"hello": [1, 2]}, max_shard_bytes=cap)
    files = list(path.iterdir())
    assert len([f for f in files if f.suffix == ".safetensors"]) >= 6
    assert all(f.stat().st_size <= cap for f in files if f.suffix == ".safetensors")
    ck = read_checkpoint(path)
    assert ck.exact and ck.meta == {"hello": [1, 2]}
    for k, v in tensors.items():
        assert torch.equal(ck.tensors[k], v) and ck.tensors[k].dtype == v.dtype, k
    write_checkpoint(tmp_path / "ck", {"x": torch.ones(3)}, {"v": 2}, max_shard_bytes=cap)
    assert read_checkpoint(tmp_path / "ck").meta == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary or old dirs left
    (path / "shard-00000.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt shard"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_checkpoint(tmp_path)


def test_compact_checkpoint_is_small_and_close(image_folder: Path, tmp_path: Path) -> None:
    cfg = _tiny_cfg(image_folder, ema_kimg=0.01, ema_rampup=None)
    torch.manual_seed(1)
    s = build_state(cfg, torch.device("cpu"))
    ds = load_folder(image_folder, 32, "cpu")
    for _ in range(3):
        train_step(s, ds)
    t = state_tensors(s)
    full = write_checkpoint(tmp_path / "full", t, {})
    compact = write_checkpoint(
        tmp_path / "compact", t, {}, codecs=compact_codecs(t, cfg.beta1), compress=True
    )
    size = lambda p: sum(f.stat().st_size for f in p.glob("*.safetensors"))  # noqa: E731
    assert size(compact) * 3 < size(full)
    c = read_checkpoint(compact)
    assert not c.exact
    for name, v in t.items():
        r = c.tensors[name]
        assert r.shape == v.shape and r.dtype == v.dtype, name
        if name.startswith(("G/", "D/")) and v.is_floating_point():
            assert torch.allclose(r, v, rtol=1e-3, atol=1e-4), name
        elif (
            name.startswith("G_ema/") and v.is_floating_point()
        ):  # int8 delta from G: error <= 1/254 of its range
            delta = (v - t["G/" + name[6:]]).abs().max()
            assert (r - v).abs().max() <= delta / 200 + 1e-3 * v.abs().max() + 1e-6, name
        elif name.endswith("/exp_avg_sq"):
            nz = v > 0
            assert torch.equal(r > 0, nz), name
            rel = (r[nz] / v[nz]).sqrt()  # Adam divides by sqrt(v): its step changes by at most ~5 %
            assert ((rel > 0.94) & (rel < 1.06)).all() or v[nz].max() / v[nz].min() > 2**64, name
        elif name.endswith("/exp_avg"):
            assert torch.count_nonzero(r) == 0, name  # beta1 = 0: not stored
        else:
            assert torch.equal(r, v), name


def test_dropping_adam_first_moment_is_exact_when_beta1_is_zero() -> None:
    torch.manual_seed(0)
    p1 = torch.nn.Parameter(torch.randn(50))
    p2 = torch.nn.Parameter(p1.detach().clone())
    o1 = torch.optim.Adam([p1], lr=0.01, betas=(0.0, 0.99))
    o2 = torch.optim.Adam([p2], lr=0.01, betas=(0.0, 0.99))
    for _ in range(3):
        for p, o in ((p1, o1), (p2, o2)):
            p.grad = torch.sin(p.detach() * 3) + 0.1
            o.step()
    o2.state[p2]["exp_avg"].zero_()
    for _ in range(3):
        for p, o in ((p1, o1), (p2, o2)):
            p.grad = torch.sin(p.detach() * 3) + 0.1
            o.step()
    assert torch.equal(p1, p2)


# -- outputs: export, portable checkpoint, samples ------------------------------------------------
def test_export_portable_and_resume_from_portable(image_folder: Path, tmp_path: Path, capsys) -> None:
    run, port, model = tmp_path / "run", tmp_path / "port", tmp_path / "model.safetensors"
    assert cli(f"--resume {tmp_path / 'none'} --out {run} --kimg 0.004 --device cpu") == 2
    assert "no checkpoint found" in capsys.readouterr().err
    # --auto-resume with nothing to resume from: a fresh run (the first GPU chunk)
    rc = cli(
        f"--data {image_folder} {TINY_ARGS} --out {run} --kimg 0.008 --export {model} --portable {port} "
        f"--resume {tmp_path / 'none'} --auto-resume"
    )
    assert rc == 0
    G = load_generator(model)
    img = G(torch.randn(2, 32), None, noise_mode="const")
    assert img.shape == (2, 3, 32, 32) and torch.isfinite(img).all()
    extra = read_metadata(model)["extra"]
    assert extra["training_steps"] == 2 and extra["training_kimg"] == 0.008
    assert extra["training_command"].startswith("draggan train --data")
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert "reals.png" in samples and "fakes000000.png" in samples
    assert Image.open(run / "samples" / "reals.png").size == (8 * 32, 4 * 32)
    assert (run / "log.jsonl").read_text().count("\n") >= 1
    # a fresh "machine": resume from the portable copy, the newest of the candidates that exist
    assert (
        cli(f"--resume {tmp_path / 'none'} {port} --out {tmp_path / 'run2'} --kimg 0.012 --device cpu") == 0
    )
    meta = read_checkpoint(sorted((tmp_path / "run2" / "checkpoints").iterdir())[-1]).meta
    assert meta["step"] == 3 and [h["end_step"] for h in meta["history"]] == [2, 3]
    # export only, no training
    again = tmp_path / "again.safetensors"
    assert cli(f"--resume {tmp_path / 'run2'} --export-only --export {again} --device cpu") == 0
    assert read_metadata(again)["extra"]["training_steps"] == 3


# -- data -----------------------------------------------------------------------------------------
def test_image_folder_dataset(image_folder: Path, tmp_path: Path) -> None:
    ds = load_folder(image_folder, 16, "cpu", mirror=False)
    assert ds.num_ready == ds.capacity == 8 and ds.images.dtype == torch.uint8
    assert ds.images.shape == (8, 3, 16, 16)
    batch = ds.sample(5)
    assert batch.shape == (5, 3, 16, 16) and batch.min() >= -1 and batch.max() <= 1
    with pytest.raises(DatasetError, match="no PNG or JPEG"):
        load_folder(tmp_path, 16, "cpu")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"broken\.png"):
        load_folder(tmp_path, 16, "cpu")
    with pytest.raises(DatasetError, match="not a folder"):
        build_dataset(str(tmp_path / "missing"), 16, "cpu")


def test_heads_dataset_renders_streams_and_caches(tmp_path: Path) -> None:
    from stylegan2.heads.dataset import render_batch

    ds = build_dataset("heads", 32, "cpu", num_images=6, seed=3, cache_dir=tmp_path, workers=2, min_ready=2)
    assert ds.num_ready >= 2
    ds.wait()
    assert ds.complete
    expected = torch.from_numpy(render_batch(3, 6, 32).images).permute(0, 3, 1, 2)
    assert torch.equal(ds.images, expected)
    ds.close()
    cached = build_dataset("heads", 32, "cpu", num_images=6, seed=3, cache_dir=tmp_path)
    assert cached.from_cache and torch.equal(cached.images, expected)
    assert [p.suffix for p in tmp_path.iterdir()] == [".npy"]


# -- CLI ------------------------------------------------------------------------------------------
def test_train_help_works_standalone_and_as_draggan_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "daemon.cmd_train", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "--minutes" in out.stdout and "--portable" in out.stdout
    from daemon.cli import COMMANDS, build_parser

    assert COMMANDS["train"][0] == "daemon.cmd_train"
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "--help"])
    assert e.value.code == 0


def test_bad_settings_give_clear_errors(image_folder: Path, tmp_path: Path, capsys) -> None:
    assert cli(f"--data {image_folder} --resolution 48 --out {tmp_path} --device cpu") == 2
    assert "power of two" in capsys.readouterr().err
    assert cli(f"--data {image_folder} {TINY_ARGS} --batch 6 --out {tmp_path}") == 2
    assert "multiple of mbstd group" in capsys.readouterr().err
    assert cli(f"--export-only --export {tmp_path / 'm.safetensors'} --device cpu") == 2
    assert "needs a checkpoint" in capsys.readouterr().err
    assert cli(f"--data {image_folder} {TINY_ARGS} --sample-kimg 0 --out {tmp_path}") == 2
    assert "--sample-kimg" in capsys.readouterr().err


def test_sigterm_checkpoints_and_exits_cleanly(image_folder: Path, tmp_path: Path) -> None:
    """What `timeout` does at a chunk's time limit: the loop must save its state, not die mid-step."""
    import signal

    port = tmp_path / "port"
    args = f"--data {image_folder} {TINY_ARGS} --log-every 1 --kimg 1000 --out {tmp_path} --portable {port}"
    cmd = [sys.executable, "-m", "daemon.cmd_train", *args.split()]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("kimg"):  # training is running
                break
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "done: step" in out
    assert read_checkpoint(port).meta["step"] >= 1
