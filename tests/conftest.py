"""Shared fixtures: a tiny 256 px generator (file and module) and real daemon processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# 256 px so b128 is the 6th block (as in real models), but tiny channels: 4x4..256 = 32,32,32,16,8,4,2.
SMALL_CONFIG = dict(
    z_dim=512,
    c_dim=0,
    w_dim=512,
    img_resolution=256,
    img_channels=3,
    channel_base=512,
    channel_max=32,
    mapping_kwargs={"num_layers": 2},
)


@pytest.fixture(scope="session")
def small_generator():
    """A deterministic random-weight 256 px Generator (eval, no grad); 14 ws of 512, b128 = 6th block."""
    import torch

    from stylegan2 import Generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        G = Generator(**SMALL_CONFIG)
    return G.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def small_model_path(small_generator, tmp_path_factory) -> Path:
    """`small_generator` saved as our .safetensors model file."""
    from stylegan2.model_file import save_generator

    path = tmp_path_factory.mktemp("models") / "small-256.safetensors"
    save_generator(small_generator, path)
    return path


# --------------------------------------------------------------------------- daemon processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """`python -m daemon ...` in a subprocess, logging to a file (never a pipe that could fill up)."""

    def __init__(self, args: list[str], log_path: Path, endpoint: str):
        self.args = args
        self.log_path = log_path
        self.endpoint = endpoint
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 60.0, client_kwargs: dict | None = None) -> DaemonProcess:
        from daemon.client import Client, DaemonUnavailable

        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only spin against the test process
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", *self.args], cwd=REPO, env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + ready_timeout
        with Client(self.endpoint, connect_timeout=0.5, timeout=5.0, **(client_kwargs or {})) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    client.hello()
                    return self
                except DaemonUnavailable:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"daemon did not answer hello:\n{self.log()}") from None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the exit code tells whether it shut down cleanly."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _spawner(tmp_path_factory, model_path: Path, started: list[DaemonProcess]) -> Callable:
    def spawn(
        *extra: str, port: int | None = None, bind: str | None = None, client_kwargs: dict | None = None
    ) -> DaemonProcess:
        port = port or free_port()
        bind = bind or f"tcp://127.0.0.1:{port}"
        log_path = tmp_path_factory.mktemp("daemon") / "daemon.log"
        args = ["--model", str(model_path), "--device", "cpu", "--bind", bind, *extra]
        d = DaemonProcess(args, log_path, f"tcp://127.0.0.1:{port}")
        started.append(d)
        return d.start(client_kwargs=client_kwargs)

    return spawn


@pytest.fixture(scope="session")
def spawn_daemon(tmp_path_factory, small_model_path) -> Iterator[Callable[..., DaemonProcess]]:
    """Factory: spawn_daemon(*extra_args, port=None, bind=None, client_kwargs=None) -> a ready
    DaemonProcess serving the small model on CPU; stopped at the end of the test session at the latest."""
    started: list[DaemonProcess] = []
    yield _spawner(tmp_path_factory, small_model_path, started)
    for d in started:
        d.stop()


@pytest.fixture
def start_daemon(tmp_path_factory, small_model_path) -> Iterator[Callable[..., DaemonProcess]]:
    """Like spawn_daemon, but the daemons stop when the test ends."""
    started: list[DaemonProcess] = []
    yield _spawner(tmp_path_factory, small_model_path, started)
    for d in started:
        d.stop()


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """A function returning a currently free loopback TCP port."""
    return free_port


@pytest.fixture(scope="session")
def daemon(spawn_daemon) -> DaemonProcess:
    """One daemon process shared by the end-to-end tests (small model, CPU, loopback)."""
    return spawn_daemon("--max-sessions", "16")


@pytest.fixture
def client(daemon):
    """A fresh client of the shared daemon."""
    from daemon.client import Client

    with Client(daemon.endpoint, timeout=10.0, compute_timeout=60.0) as c:
        yield c
