"""Security: loopback by default, CURVE required elsewhere, authorised keys only; `draggan keys`."""

from __future__ import annotations

import argparse
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.__main__ import _curve_config, build_parser
from daemon.cli import main as draggan_main
from daemon.client import Client, CurveKeys, DaemonUnavailable
from daemon.keys import (
    KeyFileError,
    authorized_dir,
    create_client_keys,
    create_server_keys,
    server_public_file,
)
from daemon.protocol import DEFAULT_ENDPOINT
from daemon.server import is_loopback_endpoint

REPO = Path(__file__).resolve().parent.parent


def run_daemon(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_default_bind_is_loopback() -> None:
    args = build_parser().parse_args([])
    assert args.bind == DEFAULT_ENDPOINT == "tcp://127.0.0.1:5617"
    assert is_loopback_endpoint(args.bind)
    assert args.curve is False and args.insecure is False


def test_non_loopback_bind_without_curve_is_refused(free_port) -> None:
    out = run_daemon("--bind", f"tcp://0.0.0.0:{free_port()}", "--device", "cpu")
    assert out.returncode == 2
    assert "not a loopback address" in out.stderr and "--curve" in out.stderr and "--insecure" in out.stderr


def test_curve_without_keys_is_refused(tmp_path, free_port) -> None:
    out = run_daemon(
        "--bind", f"tcp://0.0.0.0:{free_port()}", "--curve", "--keys-dir", str(tmp_path / "none")
    )
    assert out.returncode == 2
    assert "no such key file" in out.stderr and "draggan keys" in out.stderr


def test_insecure_is_the_explicit_way_around(caplog) -> None:
    args = build_parser().parse_args(["--bind", "tcp://0.0.0.0:5617", "--insecure"])
    with caplog.at_level(logging.WARNING, logger="draggan.daemon"):
        assert _curve_config(args, loopback=False) is None
    assert "INSECURE" in caplog.text
    refused = build_parser().parse_args(["--bind", "tcp://0.0.0.0:5617"])
    with pytest.raises(ValueError, match="not a loopback address"):
        _curve_config(refused, loopback=False)


def test_keys_command_makes_usable_key_files(tmp_path, capsys) -> None:
    keys = tmp_path / "keys"
    assert draggan_main(["keys", "--dir", str(keys), "--client", "alice"]) == 0
    secret = keys / "server.key_secret"
    assert secret.is_file() and server_public_file(keys).is_file()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (authorized_dir(keys) / "alice.key").is_file()
    assert (keys / "clients" / "alice.key_secret").is_file()
    assert "copy" in capsys.readouterr().out
    before = secret.read_bytes()
    assert draggan_main(["keys", "--dir", str(keys)]) == 0  # existing server keys are kept
    assert secret.read_bytes() == before
    assert draggan_main(["keys", "--dir", str(keys), "--client", "alice"]) == 2  # no silent overwrite
    with pytest.raises(KeyFileError, match="invalid client name"):
        create_client_keys(keys, "../evil")
    (tmp_path / "junk.key").write_text("hello")
    capsys.readouterr()
    assert draggan_main(["keys", "--dir", str(keys), "--authorize", str(tmp_path / "junk.key")]) == 2
    assert "not a CURVE key file" in capsys.readouterr().out
    assert not (authorized_dir(keys) / "junk.key").exists()


def test_curve_authorised_client_works_unknown_key_gets_nothing(start_daemon, free_port, tmp_path) -> None:
    keys = tmp_path / "keys"
    create_server_keys(keys)
    _, alice_secret = create_client_keys(keys, "alice")
    _, mallory_secret = create_server_keys(tmp_path / "elsewhere")  # a valid key pair, not authorised
    alice = CurveKeys.from_files(server_public_file(keys), alice_secret)
    mallory = CurveKeys.from_files(server_public_file(keys), mallory_secret)

    port = free_port()
    # Not loopback, so CURVE is mandatory; the test connects through 127.0.0.1.
    d = start_daemon(
        "--curve",
        "--keys-dir",
        str(keys),
        bind=f"tcp://0.0.0.0:{port}",
        port=port,
        client_kwargs={"curve": alice},
    )
    with Client(d.endpoint, curve=alice) as c:
        info = c.hello()
        assert info["curve"] is True
        assert c.generate(seed=3).latent.shape == (14, 512)  # images and latents flow encrypted
    with Client(d.endpoint, curve=mallory, connect_timeout=1.5) as c, pytest.raises(DaemonUnavailable):
        c.hello()
    with Client(d.endpoint, connect_timeout=1.5) as c, pytest.raises(DaemonUnavailable):
        c.hello()  # plain ZeroMQ without CURVE: no handshake, no answer
    with Client(d.endpoint, curve=alice) as c:
        assert c.hello()["protocol"] == 1  # the refusals left the daemon fine


def test_curve_key_file_errors(tmp_path) -> None:
    keys = tmp_path / "keys"
    public, _ = create_server_keys(keys)
    with pytest.raises(ValueError, match="no secret key"):
        CurveKeys.from_files(public, public)
    args = argparse.Namespace(
        curve=True,
        insecure=False,
        bind="tcp://0.0.0.0:1",
        keys_dir=keys,
        server_key=public,
        authorized_keys=None,
    )
    with pytest.raises(ValueError, match="only a public key"):
        _curve_config(args, loopback=False)
