"""The daemon's wire protocol, defined once for the daemon and every client (docs/protocol.md).

Torch-free and numpy-free on purpose: the Krita plugin imports this module with only the
standard library plus vendored pyzmq/msgpack. It knows message layout, field schemas,
limits and error codes; it knows nothing about models, sessions or sockets.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
DEFAULT_PORT = 5617
DEFAULT_ENDPOINT = f"tcp://127.0.0.1:{DEFAULT_PORT}"

ENCODINGS = ("raw", "png", "jpeg", "webp")
DEFAULT_QUALITY = {"jpeg": 90, "webp": 80}
DEFAULT_PREVIEW_SIZE = 256
DEFAULT_PREVIEW_INTERVAL_MS = 100
DEFAULT_MAX_STEPS = 200
DEFAULT_PSI = 0.7
LATENT_DTYPE = "float32"

REQUEST_TYPES = (
    "hello",
    "list_models",
    "load_model",
    "generate",
    "render",
    "drag_start",
    "drag_update",
    "drag_stop",
    "close_session",
    "get_latent",
    "put_latent",
    "status",
)
EVENT_TYPES = ("drag_step", "drag_frame", "drag_done", "drag_error")
DONE_REASONS = ("converged", "max_steps", "stopped", "closed")
SESSION_STATES = ("starting", "running", "idle", "error")


class ErrorCode:
    """Error codes of error replies and `drag_error` events (docs/protocol.md#errors)."""

    BAD_MESSAGE = "bad_message"
    INCOMPATIBLE_VERSION = "incompatible_version"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    BAD_FRAME = "bad_frame"
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_LATENT = "unknown_latent"
    UNKNOWN_SESSION = "unknown_session"
    TOO_MANY_SESSIONS = "too_many_sessions"
    BUSY = "busy"
    MODEL_ERROR = "model_error"
    OUT_OF_MEMORY = "out_of_memory"
    ENGINE_ERROR = "engine_error"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL_ERROR = "internal_error"
    # Client-side only.
    UNAVAILABLE = "unavailable"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class Limits:
    """What the daemon accepts; sent to clients in `hello`."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_frames: int = 4
    max_id_length: int = 64
    max_points: int = 64
    max_steps: int = 10000
    min_image_size: int = 16
    max_image_size: int = 2048
    max_interval_ms: int = 60000
    max_sessions: int = 8
    idle_timeout_s: float = 600.0
    latent_cache: int = 1024
    latent_cache_bytes: int = 64 * 1024 * 1024
    max_queued_requests: int = 32  # per client: compute and session requests not yet answered

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ProtocolError(ValueError):
    """A message that breaks the protocol; becomes an error reply with `code`."""

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        parent: str | None = None,
        request_type: str | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.parent = parent  # the request id, when it could be read
        self.request_type = request_type  # the request type, when it is a known one

    def content(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


# --------------------------------------------------------------------------- msgpack


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_header(data: bytes, max_bytes: int = Limits.max_header_bytes) -> dict[str, Any]:
    """Decode a header frame; never raises anything but ProtocolError."""
    if len(data) > max_bytes:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"header is {len(data)} bytes; the limit is {max_bytes}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=max_bytes,
            max_map_len=max_bytes,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"header is not valid msgpack ({type(e).__name__})"
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"header must be a msgpack map, got {_type_name(obj)}")
    return obj


# --------------------------------------------------------------------------- building messages


def request_parts(
    msg_type: str, request_id: str, content: dict[str, Any], frames: Sequence[bytes] = ()
) -> list[bytes]:
    header = {"v": PROTOCOL_VERSION, "type": msg_type, "id": request_id, "content": content}
    return [pack(header), *frames]


def reply_parts(
    parent: str | None,
    request_type: str | None,
    content: dict[str, Any],
    frames: Sequence[bytes] = (),
    status: str = "ok",
) -> list[bytes]:
    msg_type = f"{request_type}_reply" if request_type in REQUEST_TYPES else "error_reply"
    header = {"v": PROTOCOL_VERSION, "type": msg_type, "parent": parent, "status": status, "content": content}
    return [pack(header), *frames]


def error_parts(
    parent: str | None, request_type: str | None, error: ProtocolError, **extra: Any
) -> list[bytes]:
    return reply_parts(parent, request_type, {**error.content(), **extra}, status="error")


def event_parts(
    parent: str, session: str, msg_type: str, content: dict[str, Any], frames: Sequence[bytes] = ()
) -> list[bytes]:
    header = {
        "v": PROTOCOL_VERSION,
        "type": msg_type,
        "parent": parent,
        "session": session,
        "content": content,
    }
    return [pack(header), *frames]


# --------------------------------------------------------------------------- binary payloads


def latent_id(shape: Sequence[int], data: bytes) -> str:
    """Content hash of a float32 latent: the same bytes always give the same id, on any daemon."""
    h = hashlib.sha256(f"{LATENT_DTYPE}:{'x'.join(str(int(s)) for s in shape)}:".encode())
    h.update(data)
    return h.hexdigest()[:24]


@dataclass(frozen=True)
class Latent:
    """A W+ latent as little-endian float32 bytes, C order, with its shape and content id."""

    shape: tuple[int, int]
    data: bytes
    id: str = ""

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"latent shape must be [num_ws, w_dim], got {list(self.shape)}")
        if len(self.data) != 4 * shape[0] * shape[1]:
            raise ValueError(
                f"latent of shape {list(shape)} needs {4 * shape[0] * shape[1]} bytes, got {len(self.data)}"
            )
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "data", bytes(self.data))
        computed = latent_id(shape, self.data)
        if self.id and self.id != computed:
            raise ValueError(f"latent id {self.id!r} does not match its bytes (expected {computed!r})")
        object.__setattr__(self, "id", computed)

    def blob(self, frame: int) -> dict[str, Any]:
        return {"frame": frame, "shape": list(self.shape), "dtype": LATENT_DTYPE, "id": self.id}

    @classmethod
    def from_blob(cls, desc: dict[str, Any], frames: Sequence[bytes]) -> Latent:
        return cls(tuple(desc["shape"]), bytes(frames[desc["frame"]]), desc.get("id", ""))


@dataclass(frozen=True)
class Image:
    """An encoded picture: raw RGB bytes (width*height*3) or a PNG/JPEG/WebP file's bytes."""

    width: int
    height: int
    encoding: str
    data: bytes

    def blob(self, frame: int) -> dict[str, Any]:
        return {"frame": frame, "width": self.width, "height": self.height, "encoding": self.encoding}

    @classmethod
    def from_blob(cls, desc: dict[str, Any], frames: Sequence[bytes]) -> Image:
        return cls(
            int(desc["width"]), int(desc["height"]), str(desc["encoding"]), bytes(frames[desc["frame"]])
        )


def mask_blob(frame: int, width: int, height: int) -> dict[str, Any]:
    return {"frame": frame, "width": width, "height": height}


def check_points_in_image(points: Sequence[Sequence[float]], resolution: int, field: str) -> None:
    """Points are pixel centres of an R x R image: 0 <= x, y <= R - 1."""
    hi = resolution - 1
    for i, (x, y) in enumerate(points):
        if not (0 <= x <= hi and 0 <= y <= hi):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"{field}[{i}] = [{x:g}, {y:g}] is outside the {resolution}x{resolution} image "
                f"(valid: 0 <= x, y <= {hi})",
                f"{field}[{i}]",
            )


# --------------------------------------------------------------------------- field schemas


class _Missing:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Missing()
OMIT: Any = object()  # default meaning "leave the key out of the validated content"


def _type_name(v: Any) -> str:
    if v is None:
        return "nil"
    return {
        bool: "bool",
        int: "int",
        float: "float",
        str: "str",
        bytes: "bin",
        list: "array",
        dict: "map",
    }.get(type(v), type(v).__name__)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _invalid(path: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_FIELD, f"{path} {message}", path)


class _Context:
    """Per-message state: the limits and which binary frames fields have claimed."""

    def __init__(self, frames: Sequence[bytes], limits: Limits):
        self.frames = frames
        self.limits = limits
        self.used: set[int] = set()

    def claim(self, index: Any, path: str) -> bytes:
        if not _is_int(index):
            raise _invalid(f"{path}.frame", f"must be an int frame index, got {_type_name(index)}")
        if not 0 <= index < len(self.frames):
            raise ProtocolError(
                ErrorCode.BAD_FRAME,
                f"{path}.frame = {index} but the message has {len(self.frames)} frame(s)",
                f"{path}.frame",
            )
        if index in self.used:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"frame {index} is named by more than one field", path)
        self.used.add(index)
        return bytes(self.frames[index])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class Spec:
    def check(self, value: Any, path: str, ctx: _Context) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class Int(Spec):
    def __init__(self, lo: int, hi: int | str):
        self.lo, self.hi = lo, hi

    def check(self, value: Any, path: str, ctx: _Context) -> int:
        hi = getattr(ctx.limits, self.hi) if isinstance(self.hi, str) else self.hi
        if not _is_int(value):
            raise _invalid(path, f"must be an int, got {_type_name(value)}")
        if not self.lo <= value <= hi:
            raise _invalid(path, f"must be in [{self.lo}, {hi}], got {_short(value)}")
        return int(value)


class Float(Spec):
    def __init__(self, lo: float, hi: float, lo_open: bool = False):
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def check(self, value: Any, path: str, ctx: _Context) -> float:
        if not _is_number(value):
            raise _invalid(path, f"must be a number, got {_type_name(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise _invalid(path, f"must be finite, got {value}")
        low_ok = value > self.lo if self.lo_open else value >= self.lo
        if not (low_ok and value <= self.hi):
            bracket = "(" if self.lo_open else "["
            raise _invalid(path, f"must be in {bracket}{self.lo:g}, {self.hi:g}], got {value:g}")
        return value


class Str(Spec):
    def __init__(self, max_len: int = 128, choices: Sequence[str] | None = None, min_len: int = 0):
        self.max_len, self.choices, self.min_len = max_len, choices, min_len

    def check(self, value: Any, path: str, ctx: _Context) -> str:
        if not isinstance(value, str):
            raise _invalid(path, f"must be a string, got {_type_name(value)}")
        if self.choices is not None and value not in self.choices:
            raise _invalid(path, f"must be one of {list(self.choices)}, got {_short(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise _invalid(path, f"must have {self.min_len} to {self.max_len} characters, got {len(value)}")
        return value


class Bool(Spec):
    def check(self, value: Any, path: str, ctx: _Context) -> bool:
        if not isinstance(value, bool):
            raise _invalid(path, f"must be true or false, got {_type_name(value)}")
        return value


class Nullable(Spec):
    def __init__(self, inner: Spec):
        self.inner = inner

    def check(self, value: Any, path: str, ctx: _Context) -> Any:
        return None if value is None else self.inner.check(value, path, ctx)


class Points(Spec):
    """1..max_points [x, y] pairs of finite numbers (bounds against the image come later)."""

    def check(self, value: Any, path: str, ctx: _Context) -> list[list[float]]:
        if not isinstance(value, list):
            raise _invalid(path, f"must be an array of [x, y] points, got {_type_name(value)}")
        if not 1 <= len(value) <= ctx.limits.max_points:
            raise _invalid(path, f"must have 1 to {ctx.limits.max_points} points, got {len(value)}")
        out = []
        for i, p in enumerate(value):
            if not isinstance(p, list) or len(p) != 2:
                raise _invalid(f"{path}[{i}]", f"must be an [x, y] pair, got {_short(p)}")
            out.append([Float(-math.inf, math.inf).check(c, f"{path}[{i}]", ctx) for c in p])
        return out


class Map(Spec):
    """A map with known keys: (spec, default) per key; default REQUIRED or OMIT or a value."""

    def __init__(self, fields: dict[str, tuple[Spec, Any]]):
        self.fields = fields

    def check(self, value: Any, path: str, ctx: _Context) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _invalid(path, f"must be a map, got {_type_name(value)}")
        unknown = [k for k in value if k not in self.fields]
        if unknown:
            raise _invalid(f"{path}.{unknown[0]}", f"is not a known field (known: {sorted(self.fields)})")
        out: dict[str, Any] = {}
        for name, (spec, default) in self.fields.items():
            sub = f"{path}.{name}"
            if name in value:
                out[name] = spec.check(value[name], sub, ctx)
            elif default is REQUIRED:
                raise _invalid(sub, "is required")
            elif default is not OMIT:
                out[name] = dict(default) if isinstance(default, dict) else default
        return out


class LatentBlob(Spec):
    """An uploaded latent; the validated value carries the frame bytes under "data"."""

    def check(self, value: Any, path: str, ctx: _Context) -> dict[str, Any]:
        desc = Map(
            {
                "frame": (Int(0, 1 << 16), REQUIRED),
                "shape": (_Shape(), REQUIRED),
                "dtype": (Str(16, choices=(LATENT_DTYPE,)), LATENT_DTYPE),
                "id": (Str(64), OMIT),
            }
        ).check(value, path, ctx)
        data = ctx.claim(desc["frame"], path)
        rows, cols = desc["shape"]
        if len(data) != 4 * rows * cols:
            raise ProtocolError(
                ErrorCode.BAD_FRAME,
                f"{path}: shape {[rows, cols]} float32 needs {4 * rows * cols} bytes, frame {desc['frame']} "
                f"has {len(data)}",
                path,
            )
        computed = latent_id(desc["shape"], data)
        if "id" in desc and desc["id"] != computed:
            raise _invalid(f"{path}.id", f"does not match the latent's bytes (their id is {computed})")
        return {"shape": desc["shape"], "data": data, "id": computed}


class _Shape(Spec):
    def check(self, value: Any, path: str, ctx: _Context) -> tuple[int, int]:
        if not isinstance(value, list) or len(value) != 2:
            raise _invalid(path, f"must be [num_ws, w_dim], got {_short(value)}")
        return (
            Int(1, 64).check(value[0], f"{path}[0]", ctx),
            Int(1, 4096).check(value[1], f"{path}[1]", ctx),
        )


class LatentRef(Spec):
    """A latent id (str) or an uploaded latent (map)."""

    def check(self, value: Any, path: str, ctx: _Context) -> str | dict[str, Any]:
        if isinstance(value, str):
            return Str(64, min_len=1).check(value, path, ctx)
        if isinstance(value, dict):
            return LatentBlob().check(value, path, ctx)
        raise _invalid(
            path, f"must be a latent id (str) or an uploaded latent (map), got {_type_name(value)}"
        )


class MaskBlob(Spec):
    """width*height bytes, non-zero = may change; at most max_image_size a side here, the exact
    model resolution is checked later."""

    def check(self, value: Any, path: str, ctx: _Context) -> dict[str, Any]:
        desc = Map(
            {
                "frame": (Int(0, 1 << 16), REQUIRED),
                "width": (Int(1, "max_image_size"), REQUIRED),
                "height": (Int(1, "max_image_size"), REQUIRED),
            }
        ).check(value, path, ctx)
        data = ctx.claim(desc["frame"], path)
        w, h = desc["width"], desc["height"]
        if len(data) != w * h:
            raise ProtocolError(
                ErrorCode.BAD_FRAME,
                f"{path}: a {w}x{h} mask needs {w * h} bytes, frame {desc['frame']} has {len(data)}",
                path,
            )
        return {"width": desc["width"], "height": desc["height"], "data": data}


def _image_fields(preview: bool) -> dict[str, tuple[Spec, Any]]:
    fields: dict[str, tuple[Spec, Any]] = {
        "encoding": (Str(16, choices=ENCODINGS), "png"),
        "quality": (Nullable(Int(1, 100)), None),
        "size": (Nullable(_ImageSize()), None),
    }
    if preview:
        fields["interval_ms"] = (Int(0, "max_interval_ms"), DEFAULT_PREVIEW_INTERVAL_MS)
    return fields


class _ImageSize(Spec):
    def check(self, value: Any, path: str, ctx: _Context) -> int:
        return Int(ctx.limits.min_image_size, ctx.limits.max_image_size).check(value, path, ctx)


IMAGE_OPTIONS = Map(_image_fields(preview=False))
PREVIEW_OPTIONS = Map(_image_fields(preview=True))
DEFAULT_IMAGE_OPTIONS: dict[str, Any] = {"encoding": "png", "quality": None, "size": None}
DEFAULT_PREVIEW_OPTIONS: dict[str, Any] = {
    "encoding": "png",
    "quality": None,
    "size": None,
    "interval_ms": DEFAULT_PREVIEW_INTERVAL_MS,
}

DRAG_PARAMS = Map(
    {
        "space": (Str(8, choices=("w+", "w")), OMIT),
        "num_layers": (Int(1, 64), OMIT),
        "tracking": (Str(8, choices=("l1", "l2")), OMIT),
        "r1": (Nullable(Float(0, 4096, lo_open=True)), OMIT),
        "r2": (Nullable(Int(1, 4096)), OMIT),
        "lam": (Float(0, 1e6), OMIT),
        "lr": (Float(0, 1, lo_open=True), OMIT),
        "stop_distance": (Nullable(Float(0, 4096)), OMIT),
        "feature_block": (Int(1, 32), OMIT),
        "nearest": (Bool(), OMIT),
        "nearest_radius": (Float(0, 4096, lo_open=True), OMIT),
        "nearest_rate": (Float(0, 1), OMIT),
        "noise_mode": (Str(8, choices=("const", "none")), OMIT),
    }
)

_MODEL = (Str(128, min_len=1), OMIT)
_SESSION = (Str(64, min_len=1), REQUIRED)

REQUEST_SCHEMAS: dict[str, Map] = {
    "hello": Map({"client": (Str(128), "")}),
    "list_models": Map({}),
    "load_model": Map({"model": (Str(128, min_len=1), REQUIRED)}),
    "generate": Map(
        {
            "model": _MODEL,
            "seed": (Int(0, 2**32 - 1), REQUIRED),
            "psi": (Float(-2, 2), DEFAULT_PSI),
            "image": (IMAGE_OPTIONS, DEFAULT_IMAGE_OPTIONS),
        }
    ),
    "render": Map(
        {"model": _MODEL, "latent": (LatentRef(), REQUIRED), "image": (IMAGE_OPTIONS, DEFAULT_IMAGE_OPTIONS)}
    ),
    "drag_start": Map(
        {
            "model": _MODEL,
            "latent": (LatentRef(), REQUIRED),
            "handles": (Points(), REQUIRED),
            "targets": (Points(), REQUIRED),
            "mask": (Nullable(MaskBlob()), None),
            "params": (DRAG_PARAMS, {}),
            "preview": (Nullable(PREVIEW_OPTIONS), DEFAULT_PREVIEW_OPTIONS),
            "final": (IMAGE_OPTIONS, DEFAULT_IMAGE_OPTIONS),
            "max_steps": (Int(1, "max_steps"), DEFAULT_MAX_STEPS),
        }
    ),
    "drag_update": Map(
        {
            "session": _SESSION,
            "handles": (Points(), OMIT),
            "targets": (Points(), OMIT),
            "mask": (Nullable(MaskBlob()), OMIT),
            "params": (DRAG_PARAMS, OMIT),
            "preview": (Nullable(PREVIEW_OPTIONS), OMIT),
            "max_steps": (Int(1, "max_steps"), OMIT),
            "resume": (Bool(), False),
        }
    ),
    "drag_stop": Map({"session": _SESSION}),
    "close_session": Map({"session": _SESSION}),
    "get_latent": Map({"latent_id": (Str(64, min_len=1), REQUIRED)}),
    "put_latent": Map({"latent": (LatentBlob(), REQUIRED), "model": _MODEL}),
    "status": Map({}),
}

_REQUEST_KEYS = frozenset(("v", "type", "id", "content"))


@dataclass
class Request:
    """A validated request: content has defaults filled in and blobs resolved to bytes."""

    type: str
    id: str
    content: dict[str, Any]


def parse_request(parts: Sequence[bytes], limits: Limits = Limits()) -> Request:
    """Validate one incoming multipart message [header, *frames] (routing id already removed).

    Raises ProtocolError; its `parent` is the request id whenever the id could be read, so the
    error reply names the request it belongs to.
    """
    if not parts:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "empty message")
    header = unpack_header(bytes(parts[0]), limits.max_header_bytes)
    raw_id = header.get("id")
    parent = raw_id if isinstance(raw_id, str) and 1 <= len(raw_id) <= limits.max_id_length else None
    raw_type = header.get("type")
    req_type = raw_type if isinstance(raw_type, str) and raw_type in REQUEST_TYPES else None

    def fail(code: str, message: str, field: str | None = None) -> ProtocolError:
        return ProtocolError(code, message, field, parent, req_type)

    if "v" not in header:
        raise fail(ErrorCode.BAD_MESSAGE, "header has no protocol version 'v'", "v")
    if header["v"] != PROTOCOL_VERSION:
        raise fail(
            ErrorCode.INCOMPATIBLE_VERSION,
            f"this daemon speaks protocol version {PROTOCOL_VERSION}, the message uses "
            f"{_short(header['v'])}; update the plugin or the daemon so that they match",
            "v",
        )
    unknown = [k for k in header if k not in _REQUEST_KEYS]
    if unknown:
        raise fail(ErrorCode.BAD_MESSAGE, f"unknown header key {_short(unknown[0])}", str(unknown[0]))
    for key in ("type", "id", "content"):
        if key not in header:
            raise fail(ErrorCode.BAD_MESSAGE, f"header has no {key!r}", key)
    if parent is None:
        raise fail(
            ErrorCode.BAD_MESSAGE, f"'id' must be a string of 1 to {limits.max_id_length} characters", "id"
        )
    if req_type is None:
        raise fail(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown request type {_short(raw_type)}; known: {list(REQUEST_TYPES)}",
            "type",
        )
    frames = list(parts[1:])
    if len(frames) > limits.max_frames:
        raise fail(ErrorCode.BAD_FRAME, f"{len(frames)} frames; at most {limits.max_frames} are allowed")
    ctx = _Context(frames, limits)
    try:
        content = REQUEST_SCHEMAS[req_type].check(header["content"], "content", ctx)
    except ProtocolError as e:
        raise fail(e.code, e.message, e.field) from None
    unused = sorted(set(range(len(frames))) - ctx.used)
    if unused:
        raise fail(ErrorCode.BAD_FRAME, f"frame(s) {unused} are not named by any field")
    return Request(req_type, parent, content)


def validate_content(
    msg_type: str, content: dict[str, Any], frames: Sequence[bytes] = (), limits: Limits = Limits()
) -> dict[str, Any]:
    """Client-side check of a request before sending it (same rules as the daemon)."""
    return REQUEST_SCHEMAS[msg_type].check(content, "content", _Context(frames, limits))


# --------------------------------------------------------------------------- incoming (client side)


@dataclass
class Message:
    """A reply or event as the client sees it."""

    type: str
    parent: str | None
    content: dict[str, Any]
    frames: list[bytes]
    status: str | None = None  # replies only
    session: str | None = None  # events only
    v: int = PROTOCOL_VERSION

    @property
    def is_reply(self) -> bool:
        return self.type.endswith("_reply")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def image(self, key: str = "image") -> Image:
        return Image.from_blob(self.content[key], self.frames)

    def latent(self, key: str = "latent") -> Latent:
        return Latent.from_blob(self.content[key], self.frames)


def parse_message(parts: Sequence[bytes]) -> Message:
    """Decode a daemon reply or event; ProtocolError if it is not one."""
    if not parts:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "empty message from daemon")
    header = unpack_header(bytes(parts[0]), max_bytes=16 * 1024 * 1024)
    msg_type, content = header.get("type"), header.get("content")
    if not isinstance(msg_type, str) or not isinstance(content, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "daemon message without a type or content")
    return Message(
        type=msg_type,
        parent=header.get("parent"),
        content=content,
        frames=[bytes(p) for p in parts[1:]],
        status=header.get("status"),
        session=header.get("session"),
        v=header.get("v", -1),
    )
