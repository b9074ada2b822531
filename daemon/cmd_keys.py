"""`draggan keys`: make the CURVE key pairs a daemon needs to listen beyond loopback."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_keys_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", type=Path, default=None, help="keys folder (default: user config dir/keys)")
    p.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help="also make a client key pair NAME and authorise it (repeatable)",
    )
    p.add_argument(
        "--authorize",
        action="append",
        default=[],
        type=Path,
        metavar="PUBLIC_KEY",
        help="authorise an existing client public key file (repeatable)",
    )
    p.add_argument("--force", action="store_true", help="replace existing key pairs of the same name")


def run_keys(args: argparse.Namespace) -> int:
    from .keys import (
        KeyFileError,
        authorize_client,
        authorized_dir,
        create_client_keys,
        create_server_keys,
        default_keys_dir,
        server_public_file,
        server_secret_file,
    )

    keys_dir = args.dir or default_keys_dir()
    try:
        if args.force or not server_secret_file(keys_dir).exists():
            public, secret = create_server_keys(keys_dir, overwrite=args.force)
            print(f"daemon key pair: {secret} (keep private) and {public} (give to clients)")
        else:
            print(f"daemon key pair exists: {server_secret_file(keys_dir)}")
        for name in args.client:
            public, secret = create_client_keys(keys_dir, name, overwrite=args.force)
            print(f"client {name!r}: copy {secret} and {server_public_file(keys_dir)} to the client machine")
        for public in args.authorize:
            print(f"authorised {authorize_client(keys_dir, public)}")
    except KeyFileError as e:
        print(f"draggan keys: {e}")
        return 2
    print(f"authorised client keys live in {authorized_dir(keys_dir)}")
    print(f"start the daemon with: draggan-daemon --bind tcp://0.0.0.0:5617 --curve --keys-dir {keys_dir}")
    return 0
