"""Checkpoints as a directory of size-capped safetensors shards plus `meta.json`.

Why shards: a checkpoint must travel between machines as files of at most 16 MiB each
(the GPU machine returns at most 8 such files). Large tensors are split into pieces,
pieces are packed into shards, and every shard's size is checked after writing.

Two encodings:
* full (default): every tensor as is -> resuming continues bit-identically.
* compact (`compact_codecs`): sized to travel. G and D weights in fp16, G_ema as an int8
  blockwise delta from G, Adam second moments as 8-bit log-scale codes, Adam first
  moments dropped when beta1 == 0 (Adam then overwrites them with the gradient on the
  next step, so that part is exact), each payload byte-shuffled and zlib-compressed.
  See docs/training.md for the error bounds.

Writes are atomic: a temporary directory is filled, fsynced and renamed into place.
Nothing is unpickled on load: payloads are raw arrays described by JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

FORMAT_NAME = "krita-draggan/training-checkpoint"
FORMAT_VERSION = 1
META_FILE = "meta.json"
DEFAULT_MAX_SHARD_BYTES = 16 * 1024 * 1024 - 64 * 1024  # a little under 16 MiB
Q8_BLOCK = 256
Q8LOG_RANGE = 64.0  # log2 range of second-moment codes below each tensor's maximum


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read, with a message saying why."""


# -- codecs: tensor <-> payload arrays -----------------------------------------------------------
def _encode(
    codec: str, x: np.ndarray, ref: np.ndarray | None
) -> tuple[str, list[np.ndarray], dict[str, Any]]:
    """-> (codec actually used, payload arrays, JSON params)."""
    if codec == "raw" or x.dtype.kind != "f" or x.size == 0:
        return "raw", [x.reshape(-1)], {}
    x = x.astype(np.float32, copy=False).reshape(-1)
    if codec == "zeros":
        return "zeros", [], {}
    if codec == "f16":
        y = x.astype(np.float16)
        if not np.isfinite(y).all() and np.isfinite(x).all():  # out of fp16 range: keep fp32
            return "raw", [x], {}
        return "f16", [y], {}
    if codec in ("q8", "q8delta"):
        d = x - ref.reshape(-1) if codec == "q8delta" else x
        if not np.isfinite(d).all():
            return "raw", [x], {}
        pad = (-d.size) % Q8_BLOCK
        blocks = np.concatenate([d, np.zeros(pad, np.float32)]).reshape(-1, Q8_BLOCK)
        scale = (np.abs(blocks).max(axis=1) / 127).astype(np.float32)
        safe = np.where(scale > 0, scale, 1)[:, None]
        q = np.clip(np.rint(blocks / safe), -127, 127).astype(np.int8).reshape(-1)[: d.size]
        return codec, [q, scale], {}
    if codec == "q8log":
        if (x < 0).any() or not np.isfinite(x).all():
            return "raw", [x], {}
        pos = x > 0
        if not pos.any():
            return "zeros", [], {}
        lg = np.log2(x[pos].astype(np.float64))
        hi = float(lg.max())
        lo = max(float(lg.min()), hi - Q8LOG_RANGE)
        q = np.zeros(x.size, np.uint8)
        if hi > lo:  # values below lo are rounded up to lo: a larger second moment, a smaller step
            q[pos] = 1 + np.rint((np.clip(lg, lo, hi) - lo) / (hi - lo) * 254).astype(np.uint8)
        else:
            q[pos] = 255
        return "q8log", [q], {"lo": lo, "hi": hi}
    raise CheckpointError(f"unknown codec {codec!r}")


def _decode(
    codec: str,
    payloads: list[np.ndarray],
    params: dict[str, Any],
    shape: list[int],
    dtype: str,
    ref: np.ndarray | None,
) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    if codec == "raw":
        return payloads[0].reshape(shape)
    if codec == "zeros":
        out = np.zeros(count, np.float32)
    elif codec == "f16":
        out = payloads[0].astype(np.float32)
    elif codec in ("q8", "q8delta"):
        q, scale = payloads
        out = (q.astype(np.float32) * np.repeat(scale, Q8_BLOCK)[: q.size]).astype(np.float32)
        if codec == "q8delta":
            out = (ref.reshape(-1).astype(np.float32) + out).astype(np.float32)
    elif codec == "q8log":
        q = payloads[0]
        lo, hi = float(params["lo"]), float(params["hi"])
        lg = lo + (q.astype(np.float64) - 1) / 254 * (hi - lo) if hi > lo else np.full(q.size, hi)
        out = np.where(q > 0, np.exp2(lg), 0).astype(np.float32)
    else:
        raise CheckpointError(f"unknown codec {codec!r} in checkpoint")
    return out.astype(np.dtype(dtype)).reshape(shape)


def _shuffle_compress(a: np.ndarray) -> np.ndarray:
    """Byte-shuffle (all first bytes, then all second bytes, ...) then zlib: exponent bytes compress well."""
    b = np.ascontiguousarray(a).view(np.uint8).reshape(-1, a.dtype.itemsize).T.tobytes()
    return np.frombuffer(zlib.compress(b, 6), dtype=np.uint8)


def _decompress_unshuffle(c: np.ndarray, dtype: str, count: int) -> np.ndarray:
    dt = np.dtype(dtype)
    b = np.frombuffer(zlib.decompress(c.tobytes()), dtype=np.uint8)
    if b.size != dt.itemsize * count:
        raise CheckpointError("a compressed payload has the wrong length")
    return np.ascontiguousarray(b.reshape(dt.itemsize, count).T).view(dt).reshape(-1)


# -- writing ------------------------------------------------------------------------------------
def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        raise CheckpointError("bfloat16 tensors are not supported in checkpoints; store them as float32")
    return t.numpy()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(
    directory: str | Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    codecs: dict[str, str] | None = None,
    compress: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write `tensors` (+ JSON-able `meta`) as `directory`, replacing it atomically.

    codecs: name -> 'raw' | 'f16' | 'q8' | 'q8delta:<ref name>' | 'q8log' | 'zeros' (default raw).
    """
    if max_shard_bytes < 4096:
        raise CheckpointError(f"max_shard_bytes must be >= 4096, got {max_shard_bytes}")
    directory = Path(directory)
    codecs = codecs or {}
    arrays = {k: _to_numpy(v) for k, v in tensors.items()}

    entries: dict[str, Any] = {}
    pieces: list[tuple[str, np.ndarray]] = []
    piece_limit = max_shard_bytes - 2048
    decoded_cache: dict[str, np.ndarray] = {}

    def decoded(name: str) -> np.ndarray:  # what a reader will get for `name`
        if name not in decoded_cache:
            e = entries[name]
            decoded_cache[name] = _decode(
                e["codec"], e["_payloads"], e["params"], e["shape"], e["dtype"], None
            )
        return decoded_cache[name]

    order = sorted(arrays, key=lambda n: codecs.get(n, "raw").startswith("q8delta"))  # refs first
    for name in order:
        x = arrays[name]
        spec = codecs.get(name, "raw")
        ref_name = None
        if spec.startswith("q8delta"):
            ref_name = spec.split(":", 1)[1]
            ref_ok = ref_name in arrays and arrays[ref_name].shape == x.shape
            if not ref_ok or codecs.get(ref_name, "raw").startswith("q8delta"):
                spec = "f16"
                ref_name = None
        codec = spec.split(":", 1)[0]
        used, payloads, params = _encode(codec, x, decoded(ref_name) if ref_name else None)
        entry: dict[str, Any] = {
            "codec": used,
            "shape": list(x.shape),
            "dtype": x.dtype.str,
            "params": params,
            "payloads": [],
            "_payloads": payloads,
        }
        if used == "q8delta":
            entry["ref"] = ref_name
        for p in payloads:
            stored = _shuffle_compress(p) if compress and p.size else p
            info: dict[str, Any] = {
                "dtype": p.dtype.str,
                "count": int(p.size),
                "compressed": stored is not p,
                "pieces": [],
            }
            flat = stored.reshape(-1)
            step = max(piece_limit // max(flat.dtype.itemsize, 1), 1)
            for i in range(0, max(flat.size, 1), step):
                key = f"p{len(pieces):06d}"
                pieces.append((key, flat[i : i + step]))
                info["pieces"].append(key)
            entry["payloads"].append(info)
        entries[name] = entry

    # Pack pieces into shards: data + a generous header estimate must stay under the cap.
    shards: list[list[tuple[str, np.ndarray]]] = [[]]
    used_bytes = 0
    for key, arr in pieces:
        cost = arr.nbytes + 160
        if shards[-1] and used_bytes + cost + 1024 > max_shard_bytes:
            shards.append([])
            used_bytes = 0
        shards[-1].append((key, arr))
        used_bytes += cost

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    piece_shard: dict[str, str] = {}
    for i, shard in enumerate(shards):
        fname = f"shard-{i:05d}.safetensors"
        path = tmp / fname
        save_file({k: np.ascontiguousarray(a) for k, a in shard}, str(path))
        size = path.stat().st_size
        if size > max_shard_bytes:
            shutil.rmtree(tmp)
            raise CheckpointError(f"internal error: shard {fname} is {size} bytes > cap {max_shard_bytes}")
        _fsync(path)
        for k, _ in shard:
            piece_shard[k] = fname
    for entry in entries.values():
        del entry["_payloads"]
        for info in entry["payloads"]:
            info["pieces"] = [[piece_shard[k], k] for k in info["pieces"]]
    doc = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "meta": meta, "tensors": entries}
    meta_path = tmp / META_FILE
    meta_path.write_text(json.dumps(doc, indent=1, sort_keys=True))
    _fsync(meta_path)

    if directory.exists():
        old = directory.with_name(f".{directory.name}.old{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    return directory


# -- reading ------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    codecs: dict[str, str]

    @property
    def exact(self) -> bool:
        """True when every tensor was stored as is (a full checkpoint)."""
        return all(c == "raw" for c in self.codecs.values())


def read_checkpoint(directory: str | Path) -> Checkpoint:
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint (no {META_FILE})")
    try:
        doc = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({e})") from e
    if doc.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{directory}: not a krita-draggan training checkpoint")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint format version {doc.get('format_version')} unsupported"
        )
    shards: dict[str, dict[str, np.ndarray]] = {}

    def piece(fname: str, key: str) -> np.ndarray:
        if fname not in shards:
            try:
                shards[fname] = load_file(str(directory / fname))
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{directory / fname}: missing or corrupt shard ({e})") from e
        try:
            return shards[fname][key]
        except KeyError as e:
            raise CheckpointError(f"{directory / fname}: missing piece {key}") from e

    entries = doc["tensors"]
    out: dict[str, np.ndarray] = {}

    def load(name: str) -> np.ndarray:
        if name in out:
            return out[name]
        e = entries[name]
        payloads = []
        for info in e["payloads"]:
            flat = np.concatenate([piece(f, k).reshape(-1) for f, k in info["pieces"]])
            if info["compressed"]:
                flat = _decompress_unshuffle(flat, info["dtype"], info["count"])
            payloads.append(flat)
        ref = load(e["ref"]) if e["codec"] == "q8delta" else None
        out[name] = _decode(e["codec"], payloads, e["params"], e["shape"], e["dtype"], ref)
        return out[name]

    for name in entries:
        load(name)
    tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in out.items()}
    return Checkpoint(directory, doc["meta"], tensors, {k: e["codec"] for k, e in entries.items()})


# -- managed directories ------------------------------------------------------------------------
CKPT_PREFIX = "ckpt-"


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints `root/ckpt-NNNNNNNN` (those with meta.json), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(CKPT_PREFIX) and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir itself, or the newest one in a run dir / checkpoints dir."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    for root in (path, path / "checkpoints"):
        dirs = checkpoint_dirs(root)
        if dirs:
            return dirs[-1]
    raise CheckpointError(f"{path}: no checkpoint found (expected {META_FILE} or ckpt-* folders)")


def save_managed(
    root: str | Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    keep: int = 2,
    **kwargs: Any,
) -> Path:
    """Write `root/ckpt-<step>` and delete all but the newest `keep` checkpoints."""
    if keep < 1:
        raise CheckpointError(f"keep must be >= 1, got {keep}")
    path = write_checkpoint(Path(root) / f"{CKPT_PREFIX}{step:08d}", tensors, meta, **kwargs)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def compact_codecs(names: Iterable[str], adam_beta1: float) -> dict[str, str]:
    """The compact encoding for the training loop's tensor names (see `loop.state_tensors`)."""
    codecs: dict[str, str] = {}
    for name in names:
        kind, _, rest = name.partition("/")
        if kind in ("G", "D"):
            codecs[name] = "f16"
        elif kind == "G_ema":
            codecs[name] = f"q8delta:G/{rest}"
        elif kind in ("opt_G", "opt_D") and name.endswith("/exp_avg_sq"):
            codecs[name] = "q8log"
        elif kind in ("opt_G", "opt_D") and name.endswith("/exp_avg"):
            codecs[name] = "zeros" if adam_beta1 == 0 else "q8"
        else:
            codecs[name] = "raw"
    return codecs
