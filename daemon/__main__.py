"""`draggan-daemon` / `python -m daemon`: the GPU daemon process.

Argument and security checks happen before torch is imported, so mistakes fail in well under
a second; the model loads on the compute thread while the socket already answers `hello`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .protocol import DEFAULT_ENDPOINT, Limits

log = logging.getLogger("draggan.daemon")

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    d = Limits()
    p = argparse.ArgumentParser(
        prog="draggan-daemon",
        description="The krita-draggan GPU daemon: serves generators and drag sessions over ZeroMQ "
        "(protocol: docs/protocol.md).",
    )
    p.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="PATH",
        help="model file (.safetensors, or NVIDIA .pkl when supported) or random:PRESET; repeatable, the "
        "first is the default. Default: models/heads-256.safetensors, else built-in random weights",
    )
    p.add_argument("--device", default="auto", help="auto|cuda|cuda:N|mps|cpu (default: auto)")
    p.add_argument("--bind", default=DEFAULT_ENDPOINT, help=f"ZeroMQ endpoint (default: {DEFAULT_ENDPOINT})")
    p.add_argument("--max-sessions", type=int, default=d.max_sessions, help="open drag sessions, all clients")
    p.add_argument(
        "--idle-timeout", type=float, default=d.idle_timeout_s, help="seconds until an idle session closes"
    )
    p.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "none", "cudagraph"],
        help="drag step: cudagraph = CUDA-graph replay (CUDA only, ~5x faster steps, same results within "
        "run-to-run noise: docs/benchmarks.md), none = eager; auto = cudagraph on CUDA, else none",
    )
    p.add_argument(
        "--modconv",
        default="split",
        choices=["split", "fused"],
        help="modulated convolutions of the drag step: split = input scaling + one shared conv (faster, "
        "batches as dense convs; the same drag quality on the benchmark: docs/benchmarks.md), fused = "
        "NVIDIA's per-sample weights (default split)",
    )
    p.add_argument(
        "--batch-steps",
        default="on",
        choices=["on", "off"],
        help="on = the running drags of one model step together as one batch each turn (one forward and "
        "backward for all; same results per drag), off = one drag after another (default on)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--max-message-mb", type=float, default=d.max_message_bytes / 2**20, help="max frame size (MiB)"
    )
    p.add_argument("--latent-cache", type=int, default=d.latent_cache, help="latents kept for re-use by id")
    p.add_argument(
        "--latent-cache-mb",
        type=float,
        default=d.latent_cache_bytes / 2**20,
        help="memory for the latent cache (MiB)",
    )
    curve = p.add_argument_group("security (CURVE)")
    curve.add_argument("--curve", action="store_true", help="require CURVE encryption and client keys")
    curve.add_argument("--keys-dir", type=Path, default=None, help="folder made by `draggan keys`")
    curve.add_argument("--server-key", type=Path, default=None, help="daemon secret key file (*.key_secret)")
    curve.add_argument("--authorized-keys", type=Path, default=None, help="authorised client keys folder")
    curve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --bind WITHOUT encryption or authentication (anyone who can reach the "
        "port can use the GPU)",
    )
    p.add_argument("--version", action="version", version=f"draggan-daemon {__version__}")
    return p


def _limits(args: argparse.Namespace) -> Limits:
    if args.max_sessions < 1:
        raise ValueError("--max-sessions must be >= 1")
    if args.idle_timeout <= 0:
        raise ValueError("--idle-timeout must be > 0 seconds")
    if not 0.01 <= args.max_message_mb <= 4096:
        raise ValueError("--max-message-mb must be in [0.01, 4096]")
    if args.latent_cache < 1:
        raise ValueError("--latent-cache must be >= 1")
    if not 0.1 <= args.latent_cache_mb <= 65536:
        raise ValueError("--latent-cache-mb must be in [0.1, 65536]")
    return Limits(
        max_sessions=args.max_sessions,
        idle_timeout_s=args.idle_timeout,
        max_message_bytes=int(args.max_message_mb * 2**20),
        latent_cache=args.latent_cache,
        latent_cache_bytes=int(args.latent_cache_mb * 2**20),
    )


def compile_mode(choice: str, device: Any) -> str:
    """--compile resolved for the device; cudagraph off CUDA is a usage error, not a late failure."""
    if choice == "auto":
        return "cudagraph" if device.type == "cuda" else "none"
    if choice == "cudagraph" and device.type != "cuda":
        raise ValueError(f"--compile cudagraph needs a CUDA device, the daemon runs on {device}")
    return choice


def _curve_config(args: argparse.Namespace, loopback: bool):  # -> CurveConfig | None
    """CURVE is required off loopback unless --insecure; keys come from --keys-dir or the flags."""
    from .keys import (
        KeyFileError,
        authorized_dir,
        default_keys_dir,
        load_secret_key_file,
        read_authorized_keys,
        server_secret_file,
    )
    from .server import CurveConfig

    if not loopback and not args.curve and not args.insecure:
        raise ValueError(
            f"--bind {args.bind} is not a loopback address: pass --curve (encryption + client keys; "
            "make them with `draggan keys`) or, on a trusted network only, --insecure"
        )
    if not args.curve:
        if not loopback:
            log.warning(
                "INSECURE: listening on %s without CURVE; anyone who can reach it can use it", args.bind
            )
        return None
    keys_dir = args.keys_dir or default_keys_dir()
    secret_file = args.server_key or server_secret_file(keys_dir)
    auth_dir = args.authorized_keys or authorized_dir(keys_dir)
    try:
        public, secret = load_secret_key_file(secret_file)
        read_authorized_keys(auth_dir)  # every key file must be valid at startup
    except KeyFileError as e:
        raise ValueError(f"CURVE: {e}") from None
    return CurveConfig(public_key=public, secret_key=secret, authorized_dir=Path(auth_dir))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .server import is_loopback_endpoint

    try:
        limits = _limits(args)
        curve = _curve_config(args, is_loopback_endpoint(args.bind))
    except ValueError as e:
        print(f"draggan-daemon: {e}", file=sys.stderr)
        return EXIT_USAGE

    from engine.latent import resolve_device

    from .models import ModelError, ModelRegistry, device_label
    from .server import DaemonServer, ServerConfig

    try:
        device = resolve_device(args.device)
        compile_choice = compile_mode(args.compile, device)  # before loading models: fail fast
        registry = ModelRegistry.from_specs(args.model, device)
        config = ServerConfig(
            bind=args.bind,
            limits=limits,
            curve=curve,
            device_label=device_label(device),
            compile=compile_choice,
            batch_steps=args.batch_steps == "on",
            modconv=args.modconv,
        )
        server = DaemonServer(config, registry)
    except (ValueError, ModelError, OSError) as e:
        print(f"draggan-daemon: {e}", file=sys.stderr)
        return EXIT_USAGE

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if hasattr(signal, "SIGHUP"):  # re-read the authorised client keys now (they are also watched)
        signal.signal(signal.SIGHUP, lambda signum, frame: server.reload_keys())
    log.info(
        "draggan-daemon %s listening on %s (device %s, drag step %s/%s, batched %s, models %s, "
        "default %s, CURVE %s)",
        __version__,
        server.endpoint,
        config.device_label,
        config.compile,
        config.modconv,
        "on" if config.batch_steps else "off",
        [m["name"] for m in registry.infos()],
        registry.default,
        "on" if curve else "off",
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
