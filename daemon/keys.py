"""CURVE key files for the daemon and its clients (ZeroMQ's zmq.auth certificate format).

Layout of a keys folder (default: the user config dir's `keys/`):
    server.key, server.key_secret      the daemon's key pair (give clients server.key)
    authorized_clients/NAME.key        public keys of the clients the daemon accepts
    clients/NAME.key, NAME.key_secret  client key pairs made here (copy to the client machine)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SERVER_NAME = "server"
AUTHORIZED_DIR = "authorized_clients"
CLIENTS_DIR = "clients"


class KeyFileError(ValueError):
    """A missing or unreadable key file, with what to do about it."""


def default_keys_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("krita-draggan")) / "keys"


def server_secret_file(keys_dir: Path) -> Path:
    return Path(keys_dir) / f"{SERVER_NAME}.key_secret"


def server_public_file(keys_dir: Path) -> Path:
    return Path(keys_dir) / f"{SERVER_NAME}.key"


def authorized_dir(keys_dir: Path) -> Path:
    return Path(keys_dir) / AUTHORIZED_DIR


def _create_pair(folder: Path, name: str, overwrite: bool) -> tuple[Path, Path]:
    import zmq.auth

    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if not overwrite and (public.exists() or secret.exists()):
        raise KeyFileError(f"{public} exists; pass --force to replace it (clients using it stop working)")
    pub, sec = zmq.auth.create_certificates(str(folder), name)
    os.chmod(sec, 0o600)
    return Path(pub), Path(sec)


def create_server_keys(keys_dir: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """The daemon's key pair plus an empty authorised-clients folder."""
    authorized_dir(keys_dir).mkdir(parents=True, exist_ok=True)
    return _create_pair(Path(keys_dir), SERVER_NAME, overwrite)


def create_client_keys(keys_dir: Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """A client key pair under clients/, its public key authorised at once."""
    if not name or any(c in name for c in "/\\:") or name.startswith("."):
        raise KeyFileError(f"invalid client name {name!r}: use letters, digits, '-' and '_'")
    public, secret = _create_pair(Path(keys_dir) / CLIENTS_DIR, name, overwrite)
    authorize_client(keys_dir, public)
    return public, secret


def authorize_client(keys_dir: Path, public_file: Path) -> Path:
    """Copy a client's public key file into the authorised folder (the daemon reads it per handshake)."""
    load_key_file(public_file)  # refuse files that are not keys
    dest_dir = authorized_dir(keys_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / Path(public_file).name
    shutil.copyfile(public_file, dest)
    return dest


def load_key_file(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a zmq.auth certificate file."""
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"{path}: no such key file; make keys with `draggan keys`")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as e:
        raise KeyFileError(f"{path}: not a CURVE key file ({e})") from None
    return public, secret


def load_secret_key_file(path: Path) -> tuple[bytes, bytes]:
    public, secret = load_key_file(path)
    if secret is None:
        raise KeyFileError(f"{path}: holds only a public key; the *.key_secret file is needed here")
    return public, secret
