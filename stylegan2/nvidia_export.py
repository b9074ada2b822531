"""Write one of our Generators as a network pickle in NVIDIA's `torch_utils.persistence` layout.

The result has the structure of a `network-snapshot-*.pkl`: every module is pickled as
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with
`meta = {type: 'class', version: 6, module_src, class_name, state}` and `state` mirroring the
torch Module internals, tensors go through `torch._utils._rebuild_tensor_v2` /
`_rebuild_parameter` and `torch.storage._load_from_bytes` (legacy torch.save streams), gains are
numpy float64 scalars and nested constructor kwargs are `dnnlib.util.EasyDict`s. With protocol 4
those are the only globals referenced; protocol 3 (GLOBAL opcodes) adds `builtins.set`, and
protocol 2 `__builtin__.set` and `_codecs.encode` (how it writes sets and bytes).

Uses: test fixtures for the safe loader (`nvidia_pickle.py`), and handing our models to tools
that read NVIDIA pickles. The embedded `module_src` is our own ops + networks source made
self-contained, so NVIDIA's persistence loader (which executes it) rebuilds working modules;
our loader never executes it.
"""

from __future__ import annotations

import collections
import pickle
import re
import types
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
from torch import nn

from . import fir_matmul, networks, ops
from .networks import Generator

PERSISTENCE_VERSION = 6

# Module-state keys that torch 1.x did not have; dropped with legacy_layout=True.
_TORCH2_ONLY_KEYS = frozenset(
    {
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks_with_kwargs",
        "_state_dict_pre_hooks",
        "_load_state_dict_post_hooks",
    }
)
# Float attributes NVIDIA's code computes with numpy (so they pickle as numpy scalars).
_NUMPY_FLOAT_ATTRS = ("weight_gain", "act_gain")

_PLACEHOLDER_D_SRC = '''

class Discriminator(nn.Module):
    """Placeholder written by krita-draggan exports: no trained weights, cannot score images."""

    def forward(self, img, c, **kwargs):
        raise NotImplementedError("krita-draggan exports carry no trained discriminator")
'''


def generator_module_source() -> str:
    """Our fir_matmul + ops + networks source as one self-contained module (no relative imports)."""
    sources = []
    for module, imports in ((fir_matmul, 0), (ops, 1), (networks, 1)):
        src, n = re.subn(
            r"^from \.\w+ import (\([^)]*\)|[^\n]*)\n",
            "",
            Path(module.__file__).read_text(encoding="utf-8"),
            flags=re.MULTILINE,
        )
        if n != imports:
            raise RuntimeError(f"cannot make {module.__name__} self-contained: its relative imports changed")
        sources.append(src)
    future = "from __future__ import annotations\n"
    body = "\n\n".join(src.replace(future, "") for src in sources)
    return (
        future
        + "# krita-draggan StyleGAN2 generator (stylegan2/fir_matmul.py + ops.py + networks.py)\n"
        + body
        + _PLACEHOLDER_D_SRC
    )


class _PlaceholderDiscriminator(nn.Module):
    """Stands in for D in snapshot-shaped exports; we do not train discriminators here."""


class _EasyDict(dict):
    """Pickles as `dnnlib.util.EasyDict` (via the pickler's renamed globals)."""


def _reconstruct_persistent_obj(meta: dict[str, Any]) -> Any:
    """Only a name: pickled as `torch_utils.persistence._reconstruct_persistent_obj`."""
    raise RuntimeError("this function only exists to be written into pickles")


class _PersistentObject:
    """One module, pickled as NVIDIA's `_reconstruct_persistent_obj(meta)` call."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta


class _NvidiaLayoutPickler(pickle._Pickler):
    """Pure-Python pickler that writes chosen objects under NVIDIA's global names.

    Those modules (`torch_utils`, `dnnlib`) do not exist here, so the stock pickler could not
    verify the names; `save_global` writes the GLOBAL / STACK_GLOBAL opcodes for them itself.
    """

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)

    def __init__(self, file: BinaryIO, protocol: int, renamed: dict[int, tuple[str, str]]) -> None:
        super().__init__(file, protocol=protocol)
        self._renamed = renamed

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _PersistentObject):
            return (_reconstruct_persistent_obj, (obj.meta,))
        return NotImplemented

    def save_global(self, obj: Any, name: str | None = None) -> None:
        target = self._renamed.get(id(obj))
        if target is None:
            super().save_global(obj, name)
            return
        module, qualname = target
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module.encode() + b"\n" + qualname.encode() + b"\n")
        self.memoize(obj)

    def _save_function(self, obj: Any) -> None:
        self.save_global(obj)

    dispatch[types.FunctionType] = _save_function


def _easydicts(value: Any) -> Any:
    if isinstance(value, dict):
        return _EasyDict({k: _easydicts(v) for k, v in value.items()})
    return value


def _persistent(
    module: nn.Module,
    module_src: str,
    legacy_layout: bool,
    init_kwargs: dict[str, Any] | None = None,
    class_name: str | None = None,
) -> _PersistentObject:
    state = dict(module.__getstate__())
    state.pop("init_kwargs", None)
    state["training"] = False
    mapping = collections.OrderedDict if legacy_layout else dict
    state["_parameters"] = mapping(
        (k, None if p is None else nn.Parameter(p.detach().cpu().clone(), requires_grad=False))
        for k, p in module._parameters.items()
    )
    state["_buffers"] = mapping(
        (k, None if b is None else b.detach().cpu().clone()) for k, b in module._buffers.items()
    )
    state["_modules"] = mapping(
        (k, None if m is None else _persistent(m, module_src, legacy_layout))
        for k, m in module._modules.items()
    )
    for key in _NUMPY_FLOAT_ATTRS:
        if isinstance(state.get(key), float):
            state[key] = np.float64(state[key])
    if legacy_layout:
        state = {k: v for k, v in state.items() if k not in _TORCH2_ONLY_KEYS}
    # NVIDIA records the constructor call: a plain kwargs dict whose nested dicts are EasyDicts.
    state["_init_args"] = ()
    state["_init_kwargs"] = {k: _easydicts(v) for k, v in (init_kwargs or {}).items()}
    meta = {
        "type": "class",
        "version": PERSISTENCE_VERSION,
        "module_src": module_src,
        "class_name": class_name or type(module).__name__,
        "state": state,
    }
    return _PersistentObject(meta)


def dump_nvidia_pickle(
    G: Generator,
    file: BinaryIO,
    include_D: bool = False,
    protocol: int = 4,
    *,
    G_train: Generator | None = None,
    D: nn.Module | None = None,
    legacy_layout: bool = False,
    module_src: str | None = None,
) -> None:
    """Write G as the G_ema of an NVIDIA-layout network pickle to a binary file object.

    include_D: write a full snapshot dict {G, D, G_ema, augment_pipe, training_set_kwargs};
    G_train (default: G) and D (default: a parameterless placeholder) fill G and D.
    Otherwise the pickle holds {G_ema} only, like some model-zoo files.
    legacy_layout: mimic torch 1.x / numpy 1.x writers (numpy.core names, fewer hook keys).
    module_src: the source text to embed (default: our self-contained generator source).
    """
    if protocol not in (2, 3, 4, 5):
        raise ValueError(f"protocol must be 2 to 5 (NVIDIA pickles use 3 or 4), got {protocol}")
    src = generator_module_source() if module_src is None else module_src

    def gen(g: Generator) -> _PersistentObject:
        return _persistent(g, src, legacy_layout, init_kwargs=g.init_kwargs)

    data: dict[str, Any] = {"G_ema": gen(G)}
    if include_D:
        d = _persistent(
            D if D is not None else _PlaceholderDiscriminator(),
            src,
            legacy_layout,
            class_name="Discriminator",
        )
        data = {
            "G": gen(G_train if G_train is not None else G),
            "D": d,
            "G_ema": data["G_ema"],
            "augment_pipe": None,
            "training_set_kwargs": None,
        }
    renamed = {
        id(_reconstruct_persistent_obj): ("torch_utils.persistence", "_reconstruct_persistent_obj"),
        id(_EasyDict): ("dnnlib.util", "EasyDict"),
    }
    if legacy_layout:
        renamed[id(np.float64(0).__reduce__()[0])] = ("numpy.core.multiarray", "scalar")
    _NvidiaLayoutPickler(file, protocol, renamed).dump(data)


def save_nvidia_pickle(
    G: Generator, path: str | Path, include_D: bool = False, protocol: int = 4, **kwargs: Any
) -> None:
    """Write G as an NVIDIA-layout network pickle at `path` (see dump_nvidia_pickle)."""
    with open(path, "wb") as f:
        dump_nvidia_pickle(G, f, include_D=include_D, protocol=protocol, **kwargs)
