"""`draggan convert` and `draggan info`, run through daemon.cli.main like the console command."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from daemon.cli import main
from stylegan2 import Generator
from stylegan2.loading import load_model
from stylegan2.model_file import read_metadata
from stylegan2.nvidia_export import save_nvidia_pickle


def small_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(
        z_dim=16,
        c_dim=2,
        w_dim=16,
        img_resolution=16,
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        channel_base=256,
        channel_max=16,
        architecture="resnet",
    )
    with torch.no_grad():
        for name, t in G.state_dict(keep_vars=True).items():
            if not name.endswith("resample_filter"):
                t.add_(torch.randn_like(t) * 0.5)
    return G.eval().requires_grad_(False)


def images(G: Generator) -> torch.Tensor:
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(1))
    return G(z, torch.eye(2), truncation_psi=0.5, noise_mode="const")


@pytest.fixture
def snapshot(tmp_path: Path) -> tuple[Path, Generator]:
    G = small_generator()
    path = tmp_path / "network-snapshot-000042.pkl"
    save_nvidia_pickle(G, path, include_D=True, G_train=small_generator(1))
    return path, G


def test_convert_pickle_to_safetensors(snapshot: tuple[Path, Generator], tmp_path: Path, capsys) -> None:
    pkl, G = snapshot
    out = tmp_path / "model.safetensors"
    assert main(["convert", str(pkl), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert torch.equal(images(load_model(out)), images(G))
    extra = read_metadata(out)["extra"]
    assert extra["source_file"] == pkl.name and extra["source_format"] == "pickle"
    assert len(extra["source_sha256"]) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary files left


def test_convert_fp16_and_info(snapshot: tuple[Path, Generator], tmp_path: Path, capsys) -> None:
    pkl, G = snapshot
    out = tmp_path / "half.safetensors"
    assert main(["convert", str(pkl), str(out), "--fp16"]) == 0
    assert out.stat().st_size < pkl.stat().st_size / 2
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dtype:      float16" in text
    assert "16x16, 3 channels" in text
    assert f"parameters: {sum(p.numel() for p in G.parameters()):,}" in text
    assert "architecture resnet" in text


def test_info_on_pickle_json(snapshot: tuple[Path, Generator], capsys) -> None:
    pkl, G = snapshot
    assert main(["info", str(pkl), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "NVIDIA network pickle"
    assert "entries G, D, G_ema, augment_pipe, training_set_kwargs; using G_ema" in info["format_detail"]
    assert (info["num_ws"], info["z_dim"], info["w_dim"], info["c_dim"]) == (G.num_ws, 16, 16, 2)
    assert info["channels"] == {"4": 16, "8": 16, "16": 16}
    assert info["dtype"] == "float32" and info["config"]["channel_base"] == 256


def test_convert_safetensors_again(snapshot: tuple[Path, Generator], tmp_path: Path) -> None:
    """Our own format is an accepted input (e.g. to make an fp16 copy)."""
    pkl, G = snapshot
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main(["convert", str(pkl), str(first)]) == 0
    assert main(["convert", str(first), str(second), "--fp16"]) == 0
    assert read_metadata(second)["extra"]["source_format"] == "safetensors"
    expected = {k: v.half().float() for k, v in G.state_dict().items()}
    assert all(torch.equal(expected[k], v) for k, v in load_model(second).state_dict().items())


def test_convert_refuses_to_overwrite(snapshot: tuple[Path, Generator], tmp_path: Path, capsys) -> None:
    pkl, _ = snapshot
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    assert main(["convert", str(pkl), str(out)]) == 2
    assert "exists (use --force to overwrite)" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["convert", str(pkl), str(out), "--force"]) == 0
    assert main(["convert", str(out), str(out), "--force"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err


class _Exec:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (self.code,)


def test_convert_refuses_malicious_pickle(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": _Exec(f"open({str(marker)!r}, 'w')")}, protocol=4))
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(evil), str(out)]) == 2
    err = capsys.readouterr().err
    assert "draggan convert: error:" in err and "`builtins.exec`" in err
    assert "Traceback" not in err
    assert not marker.exists() and not out.exists()
    assert main(["info", str(evil)]) == 2
    assert "`builtins.exec`" in capsys.readouterr().err


def test_errors_are_one_line_messages(snapshot: tuple[Path, Generator], tmp_path: Path, capsys) -> None:
    pkl, _ = snapshot
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(pkl.read_bytes()[:5000])
    assert main(["info", str(truncated)]) == 2
    assert "truncated or corrupt pickle" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.pkl")]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert main(["convert", str(pkl), str(tmp_path / "no-dir" / "x.safetensors")]) == 2
    assert "No such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["convert", "info"])
def test_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: draggan {command}" in text and "code from" in " ".join(text.split())
