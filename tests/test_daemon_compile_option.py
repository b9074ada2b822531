"""The daemon's --compile option: resolved per device, refused where it cannot work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from daemon.__main__ import build_parser, compile_mode

REPO = Path(__file__).resolve().parent.parent


def test_auto_is_cudagraph_on_cuda_only() -> None:
    assert build_parser().parse_args([]).compile == "auto"
    assert compile_mode("auto", torch.device("cpu")) == "none"
    assert compile_mode("auto", torch.device("cuda", 0)) == "cudagraph"
    assert compile_mode("none", torch.device("cuda", 0)) == "none"


def test_cudagraph_on_cpu_is_a_usage_error_at_startup(free_port, small_model_path) -> None:
    with pytest.raises(ValueError, match="needs a CUDA device"):
        compile_mode("cudagraph", torch.device("cpu"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "--device",
            "cpu",
            "--compile",
            "cudagraph",
            "--model",
            str(small_model_path),
            "--bind",
            f"tcp://127.0.0.1:{free_port()}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--compile cudagraph needs a CUDA device" in out.stderr
