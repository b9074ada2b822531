"""Read NVIDIA StyleGAN2 network pickles without running anything from the file.

`network-snapshot-*.pkl` files and DragGAN's model-zoo files are written by NVIDIA's
`torch_utils.persistence`: every network module is pickled as a call
`_reconstruct_persistent_obj(meta)` whose `meta["module_src"]` is Python source that plain
`pickle.load` would `exec`. Tensor storages are nested `torch.save` streams that plain
unpickling hands to `torch.load`.

Here both levels are read by restricted unpicklers with an explicit allow-list of globals.
Every allowed global is replaced by a harmless local function that only builds data:
a persistent module becomes a `PersistentRecord` (class name + state; the source text is
never executed), a storage blob is parsed by hand into a tensor, a tensor view is checked
against its storage before `torch.as_strided`. Anything else is refused with
`UnsafePickleError`, naming the global, before it can be called.

Our own `Generator` is then built from the G_ema's recorded init kwargs and its parameters
and buffers are copied by name.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model_file import CONFIG_ERRORS, ModelFileError, check_generator_fits
from .model_file import check_config_fits as check_config_fits  # re-exported (moved to model_file)
from .networks import Generator


class UnsafePickleError(ModelFileError):
    """The pickle references a global outside the allow-list; nothing from it was run."""


class TensorFlowPickleError(ModelFileError):
    """A TensorFlow-era StyleGAN2 pickle, which needs converting to a PyTorch pickle first."""


TF_NETWORK_GLOBAL = ("dnnlib.tflib.network", "Network")
TF_CONVERT_HINT = (
    "this is a TensorFlow-era StyleGAN2 pickle (it references dnnlib.tflib.network.Network and "
    "holds TensorFlow variables), which krita-draggan does not read. Convert it to a PyTorch pickle "
    "first with legacy.py from NVIDIA's stylegan2-ada-pytorch repository "
    "(`python legacy.py --source=IN.pkl --dest=OUT.pkl`), then run "
    "`draggan convert OUT.pkl model.safetensors`"
)

# What the stand-ins below may build per byte of file, plus slack for the small records. A genuine
# protocol-2 pickle makes two copies of its tensor data (latin-1 bytes, then the storage); a pickle
# that reuses one stored object via the memo to call a stand-in many times is stopped by this.
_OUTPUT_BYTES_PER_FILE_BYTE = 2
_OUTPUT_BYTES_SLACK = 16 * 1024 * 1024
_ENTRY_BYTES = 64  # charged per element of a container a stand-in builds
# Bounds on the recorded constructor arguments (genuine ones are a few dozen values, depth <= 3).
_MAX_CONFIG_VALUES = 10_000
_MAX_CONFIG_DEPTH = 32

# The generator's positional constructor arguments, in NVIDIA's order.
_GENERATOR_POSITIONAL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs")
_GENERATOR_REQUIRED = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")

# ---------------------------------------------------------------------------------------------
# Data records that stand in for the objects a real unpickling would create.


class _Inert:
    """Base of objects the unpicklers hand back: nothing can be applied to them afterwards.

    A corrupt or hostile opcode stream may BUILD, SETITEM or APPEND on any object on the
    unpickler's stack; these objects refuse, and the torch tensors they wrap stay out of reach.
    """

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise ModelFileError(f"malformed pickle: state applied to a {type(self).__name__}")


@dataclass
class PersistentRecord:
    """One `@persistent_class` object: its class name and `__dict__` state, as plain data."""

    class_name: str
    state: dict[str, Any]
    version: Any = None
    module_src_chars: int = 0

    def __setstate__(self, state: Any) -> None:
        raise ModelFileError("malformed pickle: state applied to a persistent object record")

    def children(self) -> dict[str, Any]:
        modules = self.state.get("_modules") or {}
        if not isinstance(modules, dict):
            raise ModelFileError(
                f"malformed {self.class_name} record: _modules is a {type(modules).__name__}"
            )
        return modules


class _FrozenClass(type):
    """Metaclass of classes handed to the unpickler: a BUILD opcode cannot set attributes on them."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise ModelFileError(f"malformed pickle: attribute {name!r} set on the class {cls.__name__}")

    def __delattr__(cls, name: str) -> None:
        raise ModelFileError(f"malformed pickle: attribute {name!r} deleted from the class {cls.__name__}")


class _EasyDictRecord(dict, metaclass=_FrozenClass):
    """Stand-in for `dnnlib.util.EasyDict` (a dict subclass); converted to a dict afterwards.

    Genuine pickles create it with NEWOBJ (no arguments) and fill it with SETITEMS; calling it
    with arguments would copy them, so that is refused.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise ModelFileError("malformed pickle: EasyDict called with arguments")
        super().__init__()


class _Storage(_Inert):
    """A tensor storage parsed from a nested legacy `torch.save` stream: a flat 1-D tensor."""

    __slots__ = ("data",)

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data


class _TensorRecord(_Inert):
    """A tensor (a checked view of a parsed storage), kept out of the unpickler's reach."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class _NumpyDType:
    """Stand-in for `numpy.dtype(name, align, copy)` restricted to plain numeric types."""

    ALLOWED = frozenset({"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"})

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(name, str) or name not in self.ALLOWED:
            raise UnsafePickleError(f"refusing numpy dtype {name!r}: only plain numeric scalars are allowed")
        self.name = name
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if (
            not isinstance(state, tuple)
            or len(state) < 5
            or state[1] not in ("<", ">", "|", "=")
            or any(s is not None for s in state[2:5])
        ):
            raise ModelFileError(f"malformed pickle: unexpected numpy dtype state {state!r}"[:200])
        self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        dtype = np.dtype(self.name)
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


# ---------------------------------------------------------------------------------------------
# Harmless replacements for the allowed globals of the outer pickle.


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Replaces torch_utils.persistence._reconstruct_persistent_obj: records, never executes."""
    if not isinstance(meta, dict):
        raise ModelFileError(f"malformed persistent object: meta is a {type(meta).__name__}")
    if meta.get("type") != "class":
        raise ModelFileError(f"unsupported persistent object type {meta.get('type')!r}")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise ModelFileError("malformed persistent object: class_name or state missing")
    src = meta.get("module_src")
    return PersistentRecord(
        class_name=class_name,
        state=dict(state),
        version=meta.get("version"),
        module_src_chars=len(src) if isinstance(src, str) else 0,
    )


def _checked_view(storage: Any, offset: Any, size: Any, stride: Any) -> torch.Tensor:
    """torch.as_strided on a parsed storage, after proving the view stays inside it.

    A view may not have more elements than its storage: a zero stride would otherwise let a tiny
    storage stand for a huge tensor (and a generator config of that size pass the size checks).
    """
    if not isinstance(storage, _Storage):
        raise ModelFileError(f"malformed tensor: storage is a {type(storage).__name__}")
    if (
        not isinstance(offset, int)
        or not isinstance(size, tuple | list)
        or not isinstance(stride, tuple | list)
    ):
        raise ModelFileError("malformed tensor: offset, size or stride of the wrong type")
    if len(size) != len(stride) or not all(isinstance(v, int) for v in (*size, *stride)):
        raise ModelFileError("malformed tensor: size and stride do not match")
    if offset < 0 or any(v < 0 for v in (*size, *stride)):
        raise ModelFileError("malformed tensor: negative offset, size or stride")
    numel = storage.data.numel()
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= numel:
            raise ModelFileError(
                f"malformed tensor: view reaches element {last} of a {numel}-element storage"
            )
    elif offset > numel:
        raise ModelFileError("malformed tensor: offset outside its storage")
    if math.prod(size) > numel:
        raise ModelFileError(
            f"malformed tensor: a view of {math.prod(size)} elements of a {numel}-element storage"
        )
    return torch.as_strided(storage.data, tuple(size), tuple(stride), offset)


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    metadata: Any = None,
) -> _TensorRecord:
    """Replaces torch._utils._rebuild_tensor_v2 (hooks and metadata are ignored data)."""
    return _TensorRecord(_checked_view(storage, offset, size, stride))


def _rebuild_parameter(
    data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None
) -> _TensorRecord:
    """Replaces torch._utils._rebuild_parameter(_with_state): a parameter is just its tensor here."""
    if not isinstance(data, _TensorRecord):
        raise ModelFileError(f"malformed parameter: data is a {type(data).__name__}")
    return data


def _numpy_scalar(dtype: Any, data: Any) -> int | float | bool:
    """Replaces numpy's multiarray.scalar for plain numeric dtypes; returns a Python number."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise ModelFileError("malformed numpy scalar")
    np_dtype = dtype.to_numpy()
    if len(data) != np_dtype.itemsize:
        raise ModelFileError("malformed numpy scalar: wrong number of bytes")
    return np.frombuffer(data, dtype=np_dtype)[0].item()


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Replaces _codecs.encode, which protocol-2 pickles use to write bytes (latin-1 only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ModelFileError("malformed pickle: unexpected _codecs.encode call")
    return text.encode("latin1")


def _load_storage_blob(blob: Any) -> _Storage:
    """Replaces torch.storage._load_from_bytes: parses the legacy torch.save stream by hand."""
    if not isinstance(blob, bytes | bytearray):
        raise ModelFileError(f"malformed tensor storage: a {type(blob).__name__} instead of bytes")
    return _parse_legacy_storage(bytes(blob))


def _output_bytes(value: Any) -> int:
    """Roughly the memory a stand-in's result takes (what the per-load budget is charged)."""
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, _Storage):
        return value.data.nbytes
    if isinstance(value, PersistentRecord):
        return _ENTRY_BYTES * (1 + len(value.state))
    if isinstance(value, set | frozenset | dict):
        return _ENTRY_BYTES * (1 + len(value))
    return _ENTRY_BYTES


class _OutputBudget:
    """Bytes the stand-ins of one load may still build; refuses the load when they run out."""

    def __init__(self, limit: int) -> None:
        self.limit = self.left = limit

    def charge(self, nbytes: int) -> None:
        self.left -= nbytes
        if self.left < 0:
            raise ModelFileError(
                f"malformed pickle: it expands to more than {self.limit:,} bytes of data "
                "(stored objects reused many times)"
            )


class _StandIn:
    """One allowed global as handed to one unpickler: calls the stand-in and charges the budget.

    find_class makes a fresh one per lookup and it refuses attributes and state, so a BUILD
    opcode cannot change a loader object that later loads (or other lookups) would see.
    """

    __slots__ = ("_budget", "_func")

    def __init__(self, func: Callable[..., Any], budget: _OutputBudget) -> None:
        object.__setattr__(self, "_func", func)
        object.__setattr__(self, "_budget", budget)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self._func(*args, **kwargs)
        self._budget.charge(_output_bytes(result))
        return result

    def __setattr__(self, name: str, value: Any) -> None:
        raise ModelFileError(f"malformed pickle: attribute {name!r} set on a global")

    def __setstate__(self, state: Any) -> None:
        raise ModelFileError("malformed pickle: state applied to a global")


_OUTER_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_blob,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _NumpyDType,
    ("dnnlib.util", "EasyDict"): _EasyDictRecord,
    # Protocols < 4 pickle sets (e.g. _non_persistent_buffers_set) as builtins.set(list).
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_bytes,
}


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Protocol 0-2 pickles name Python 2 modules (__builtin__.set); map them as pickle does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _refuse(module: str, name: str, where: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"refusing to load: {where} references `{module}.{name}`, which is not on the allow-list "
        "of NVIDIA StyleGAN2 pickle contents (nothing from the file was run)"
    )


class _NetworkUnpickler(pickle.Unpickler):
    """The outer pickle: allow-listed globals only, each mapped to a data-only stand-in."""

    def __init__(self, file: io.BytesIO, budget: _OutputBudget) -> None:
        super().__init__(file)
        self._budget = budget

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == TF_NETWORK_GLOBAL:
            raise TensorFlowPickleError(TF_CONVERT_HINT)
        try:
            func = _OUTER_GLOBALS[_python3_name(module, name)]
        except KeyError:
            raise _refuse(module, name, "the pickle") from None
        # EasyDict must stay a class (NEWOBJ needs one); its metaclass refuses attribute setting.
        return func if func is _EasyDictRecord else _StandIn(func, self._budget)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            "refusing to load: the pickle uses persistent ids, which network pickles never do"
        )


# ---------------------------------------------------------------------------------------------
# Nested storage blobs: legacy (non-zip) torch.save streams of one typed storage.

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
}


class _StorageType(_Inert):
    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _StorageRef(_Inert):
    __slots__ = ("dtype", "key", "numel")

    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class _StorageBlobUnpickler(pickle.Unpickler):
    """Pickles inside a storage blob: only `torch.<X>Storage` names and one storage record."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise _refuse(module, name, "a tensor storage blob")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if (
            not isinstance(pid, tuple)
            or len(pid) not in (5, 6)
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
            or not isinstance(pid[2], str)
            or not isinstance(pid[4], int)
            or pid[4] < 0
        ):
            raise ModelFileError("malformed tensor storage record")
        if len(pid) == 6 and pid[5] is not None:
            raise ModelFileError("unsupported tensor storage (a storage view from a very old torch)")
        return _StorageRef(key=pid[2], dtype=pid[1].dtype, numel=pid[4])


def _parse_legacy_storage(blob: bytes) -> _Storage:
    f = io.BytesIO(blob)

    def load() -> Any:
        return _StorageBlobUnpickler(f).load()

    if load() != _LEGACY_MAGIC or load() != _LEGACY_PROTOCOL:
        raise ModelFileError("tensor storage blob is not a legacy torch.save stream")
    sys_info = load()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ModelFileError("tensor storage blob is not little-endian (unsupported)")
    ref = load()
    keys = load()
    if not isinstance(ref, _StorageRef) or keys != [ref.key]:
        raise ModelFileError("tensor storage blob does not hold exactly one storage")
    count = int.from_bytes(f.read(8), "little", signed=True)
    itemsize = torch.empty((), dtype=ref.dtype).element_size()
    nbytes = count * itemsize
    if count != ref.numel or nbytes != len(blob) - f.tell():
        raise ModelFileError("tensor storage blob is truncated or has the wrong length")
    if count == 0:
        return _Storage(torch.empty(0, dtype=ref.dtype))
    data = torch.empty(nbytes, dtype=torch.uint8)  # owns its memory (no exported buffers)
    f.readinto(data.numpy())
    return _Storage(data.view(ref.dtype))


# ---------------------------------------------------------------------------------------------
# Whole files.


@dataclass
class NetworkPickle:
    """What a network pickle holds, as data: its top-level entries and the generator record."""

    protocol: int
    entries: dict[str, Any]
    generator_key: str
    generator: PersistentRecord
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def stored_dtypes(self) -> list[str]:
        return sorted({str(t.dtype).removeprefix("torch.") for t in self.tensors.values()})


def _pickle_protocol(head: bytes) -> int:
    return head[1] if len(head) >= 2 and head[0] == pickle.PROTO[0] else 1


def read_network_pickle(path: str | Path) -> NetworkPickle:
    """Parse a network pickle into records and tensors without executing anything."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror or e})") from e
    if not data:
        raise ModelFileError(f"{path}: empty file")
    try:
        f = io.BytesIO(data)
        budget = _OutputBudget(_OUTPUT_BYTES_PER_FILE_BYTE * len(data) + _OUTPUT_BYTES_SLACK)
        obj = _NetworkUnpickler(f, budget).load()
        if f.tell() != len(data):
            raise ModelFileError(f"unexpected data after the end of the pickle (at byte {f.tell()})")
        key, record = _select_generator(obj)
        _check_stylegan2(record)
        tensors = dict(_named_tensors(record))
    except ModelFileError as e:
        raise type(e)(f"{path}: {e}") from None
    except Exception as e:  # any other failure inside pickle or our checks means a damaged file
        raise ModelFileError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})"[:500]) from None
    entries = obj if isinstance(obj, dict) else {key: record}
    return NetworkPickle(_pickle_protocol(data[:2]), entries, key, record, tensors)


def _select_generator(obj: Any) -> tuple[str, PersistentRecord]:
    if isinstance(obj, PersistentRecord):
        candidates = [("(top level)", obj)]
    elif isinstance(obj, dict):
        candidates = [(k, obj[k]) for k in ("G_ema", "G") if k in obj]
        if not candidates:
            raise ModelFileError(f"no generator in the pickle (entries: {sorted(map(str, obj))})")
    else:
        raise ModelFileError(f"not a network pickle (it holds a {type(obj).__name__})")
    key, record = candidates[0]
    if not isinstance(record, PersistentRecord) or record.class_name != "Generator":
        what = record.class_name if isinstance(record, PersistentRecord) else type(record).__name__
        raise ModelFileError(f"{key} is a {what}, not a StyleGAN2 Generator")
    return key, record


def _check_stylegan2(record: PersistentRecord) -> None:
    synthesis = record.children().get("synthesis")
    if not isinstance(synthesis, PersistentRecord):
        raise ModelFileError("the generator has no synthesis network")
    if "input" in synthesis.children():
        raise ModelFileError(
            "this is a StyleGAN3 (alias-free) generator; only StyleGAN2 generators are supported"
        )


def _named_tensors(record: PersistentRecord, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and persistent buffers with dotted names, as in Module.state_dict()."""
    state = record.state
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        tensors = state.get(group) or {}
        if not isinstance(tensors, dict):
            raise ModelFileError(f"malformed {record.class_name} record: {group} is not a dict")
        for name, t in tensors.items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, _TensorRecord):
                raise ModelFileError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
            yield f"{prefix}{name}", t.tensor
    for name, child in record.children().items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise ModelFileError(f"{prefix}{name} is a {type(child).__name__}, not a network module")
        yield from _named_tensors(child, f"{prefix}{name}.")


def _plain(value: Any, counter: list[int] | None = None, depth: int = 0) -> Any:
    """EasyDict records and tuples -> plain dicts and lists (JSON-friendly config).

    The copy is bounded in size and depth: a self-referencing or memo-amplified argument record
    (a list holding itself, or one list referenced a million times) is refused, not expanded.
    """
    counter = [0] if counter is None else counter
    counter[0] += 1
    if counter[0] > _MAX_CONFIG_VALUES or depth > _MAX_CONFIG_DEPTH:
        raise ModelFileError(
            "the generator's recorded constructor arguments are too large or too deeply nested "
            "(a damaged file)"
        )
    if isinstance(value, dict):
        return {str(k): _plain(v, counter, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, counter, depth + 1) for v in value]
    return value


def generator_kwargs(record: PersistentRecord) -> dict[str, Any]:
    """The generator's constructor arguments from `_init_args` / `_init_kwargs`, as keywords."""
    args = record.state.get("_init_args") or ()
    kwargs = record.state.get("_init_kwargs") or {}
    if not isinstance(args, tuple | list) or not isinstance(kwargs, dict):
        raise ModelFileError("the generator's recorded constructor arguments are malformed")
    if len(args) > len(_GENERATOR_POSITIONAL):
        raise ModelFileError(f"the generator was built with {len(args)} positional arguments (unsupported)")
    counter = [0]
    kwargs = _plain(kwargs, counter)
    for name, value in zip(_GENERATOR_POSITIONAL, args):
        if name in kwargs:
            raise ModelFileError(f"the generator's argument {name} is recorded twice")
        kwargs[name] = _plain(value, counter)
    if kwargs.get("resize", 0) is None:  # DragGAN's Generator(resize=None): nothing to do
        del kwargs["resize"]
    missing = [k for k in _GENERATOR_REQUIRED if not isinstance(kwargs.get(k), int)]
    if missing:
        raise ModelFileError(f"the generator's recorded arguments lack {missing}")
    return kwargs


def stored_numel(tensors: Iterable[torch.Tensor]) -> int:
    """Elements the file actually holds for these tensors: each distinct storage counted once."""
    storages: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes() // t.element_size()
    return sum(storages.values())


def build_generator(net: NetworkPickle) -> Generator:
    """Our Generator with the pickle's config and weights, in eval mode on the CPU.

    The config is proven to describe exactly the stored tensors (on the meta device) before the
    generator is built, so a damaged or hostile file cannot make this allocate more than it holds.
    """
    try:
        return _build_generator(net)
    except ModelFileError:
        raise
    except CONFIG_ERRORS as e:  # e.g. a failed allocation or an absurd value deep inside
        raise ModelFileError(f"cannot build the generator ({type(e).__name__}: {e})"[:600]) from None


def _build_generator(net: NetworkPickle) -> Generator:
    kwargs = generator_kwargs(net.generator)
    shapes = {name: tuple(t.shape) for name, t in net.tensors.items()}
    check_generator_fits(kwargs, shapes, stored_numel(net.tensors.values()))
    G = Generator(**kwargs)
    recorded_num_ws = net.generator.state.get("num_ws")
    if recorded_num_ws is not None and recorded_num_ws != G.num_ws:
        raise ModelFileError(
            f"the pickle's generator has num_ws={recorded_num_ws}, its config gives {G.num_ws}"
        )
    copy_tensors(G, net.tensors)
    return G.eval().requires_grad_(False)


def copy_tensors(G: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy parameters and buffers by name; every name and shape must match exactly."""
    targets = G.state_dict(keep_vars=True)
    missing, unexpected = sorted(set(targets) - set(tensors)), sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise ModelFileError(
            "the weights do not match the generator's config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for name, src in tensors.items():
        if tuple(src.shape) != tuple(targets[name].shape):
            raise ModelFileError(f"{name} has shape {list(src.shape)}, expected {list(targets[name].shape)}")
        if not (src.is_floating_point() and targets[name].is_floating_point()):
            raise ModelFileError(f"{name} has dtype {src.dtype}, expected a floating-point tensor")
    with torch.no_grad():
        for name, src in tensors.items():
            targets[name].copy_(src.to(targets[name].dtype))


def read_and_build(path: str | Path) -> tuple[NetworkPickle, Generator]:
    """The parsed pickle and our generator built from it (CPU, eval mode)."""
    net = read_network_pickle(path)
    try:
        return net, build_generator(net)
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None


def load_network_pickle(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Safely load the generator (G_ema) of an NVIDIA StyleGAN2 network pickle."""
    return read_and_build(path)[1].to(device)
