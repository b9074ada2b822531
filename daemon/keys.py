"""CURVE key files for the daemon and its clients (ZeroMQ's zmq.auth certificate format).

Layout of a keys folder (default: the user config dir's `keys/`):
    server.key, server.key_secret      the daemon's key pair (give clients server.key)
    authorized_clients/NAME.key        public keys of the clients the daemon accepts
    clients/NAME.key, NAME.key_secret  client key pairs made here (copy to the client machine)

The daemon reads authorized_clients/ at startup (a malformed *.key file there is an error naming
it) and re-reads it within about a second whenever its files change, or on SIGHUP: adding or
removing a key file takes effect for new connections without a restart.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

log = logging.getLogger("draggan.daemon.auth")

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
    """Copy a client's public key file into the authorised folder; a running daemon picks it up
    within about a second (it watches the folder)."""
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
    for what, key in (("public", public), ("secret", secret)):
        if key is not None and not _is_z85_key(key):
            raise KeyFileError(f"{path}: not a CURVE key file (its {what} key is not 40 Z85 characters)")
    return public, secret


def _is_z85_key(key: bytes) -> bool:
    from zmq.utils import z85

    if len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def read_authorized_keys(folder: Path) -> dict[bytes, Path]:
    """Z85 public key -> file, for every *.key file in the folder; KeyFileError names a bad file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KeyFileError(f"{folder} is not a folder of authorised client keys; run `draggan keys`")
    return {load_key_file(f)[0]: f for f in sorted(folder.glob("*.key"))}


def _folder_signature(folder: Path) -> tuple:
    """Changes whenever a *.key file is added, removed, replaced or edited."""
    try:
        entries = sorted(folder.glob("*.key"))
        return tuple((f.name, st.st_mtime_ns, st.st_size, st.st_ino) for f in entries for st in [f.stat()])
    except OSError:
        return ("unreadable",)


class AuthorizedKeys:
    """The authorised client keys of a folder, re-read when it changes; a ZAP credentials provider.

    pyzmq's `configure_curve(location=...)` reads the folder once, and keeps its old keys if one
    file is malformed. Here `callback` (called on the authenticator thread for each handshake)
    checks against a set that `reload_if_changed` (socket thread) replaces in one assignment;
    a malformed file is skipped with an error naming it, so removing a key always takes effect.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._keys: frozenset[bytes] = frozenset()
        self._signature: tuple | None = None
        self._lock = threading.Lock()

    def load_strict(self) -> None:
        """Startup: read every key file; KeyFileError names the first bad one."""
        with self._lock:
            signature = _folder_signature(self.folder)
            self._keys = frozenset(read_authorized_keys(self.folder))
            self._signature = signature
        if not self._keys:
            log.warning("no client keys in %s: every client will be refused", self.folder)

    def reload_if_changed(self, force: bool = False) -> bool:
        """Re-read the folder if its key files changed (or `force`); True if the keys were re-read."""
        with self._lock:
            signature = _folder_signature(self.folder)
            if not force and signature == self._signature:
                return False
            keys = set()
            for f in sorted(self.folder.glob("*.key")) if self.folder.is_dir() else []:
                try:
                    keys.add(load_key_file(f)[0])
                except KeyFileError as e:
                    log.error("ignoring an authorised key file: %s", e)
            added, removed = len(keys - self._keys), len(self._keys - keys)
            self._keys, self._signature = frozenset(keys), signature
        log.info("client keys re-read from %s: %d (+%d, -%d)", self.folder, len(keys), added, removed)
        return True

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self._keys

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)


def load_secret_key_file(path: Path) -> tuple[bytes, bytes]:
    public, secret = load_key_file(path)
    if secret is None:
        raise KeyFileError(f"{path}: holds only a public key; the *.key_secret file is needed here")
    return public, secret
