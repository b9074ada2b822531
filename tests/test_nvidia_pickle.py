"""NVIDIA-layout network pickles: exact round trips, the written layout, and refusal of anything unsafe.

Pickles are written by `stylegan2.nvidia_export` (NVIDIA's layout, our small random generators)
or crafted here byte by byte; no NVIDIA code is involved.
"""

from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import pickletools
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from stylegan2 import Generator
from stylegan2.model_file import ModelFileError
from stylegan2.nvidia_export import dump_nvidia_pickle, generator_module_source, save_nvidia_pickle
from stylegan2.nvidia_pickle import (
    PersistentRecord,
    TensorFlowPickleError,
    UnsafePickleError,
    generator_kwargs,
    load_network_pickle,
    read_network_pickle,
)

NVIDIA_GLOBALS = {
    "torch_utils.persistence._reconstruct_persistent_obj",
    "collections.OrderedDict",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_tensor_v2",
    "torch.storage._load_from_bytes",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "dnnlib.util.EasyDict",
}
LEGACY_MAGIC_PICKLE = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


def small_generator(seed: int = 0, c_dim: int = 0, architecture: str = "skip") -> Generator:
    """Tiny generator with every weight and buffer random (noise strengths and w_avg too)."""
    torch.manual_seed(seed)
    G = Generator(
        z_dim=32,
        c_dim=c_dim,
        w_dim=32,
        img_resolution=32,
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        channel_base=512,
        channel_max=32,
        architecture=architecture,
        fused_modconv_default="inference_only",
    )
    with torch.no_grad():
        for name, t in G.state_dict(keep_vars=True).items():
            if not name.endswith("resample_filter"):
                t.add_(torch.randn_like(t) * 0.5)
    return G.eval().requires_grad_(False)


def images(G: Generator) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    z = torch.randn(3, G.z_dim, generator=g)
    c = torch.eye(G.c_dim)[[0, 1, 2 % G.c_dim]] if G.c_dim else None
    return G(z, c, truncation_psi=0.7, noise_mode="const")


def assert_same_generator(G: Generator, G2: Generator) -> None:
    assert G2.init_kwargs == G.init_kwargs
    a, b = G.state_dict(), G2.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(images(G), images(G2))


def referenced_globals(data: bytes) -> set[str]:
    """Every global a pickle names (GLOBAL and STACK_GLOBAL), read from its opcodes only."""
    memo: dict[int, Any] = {}
    pushed: list[Any] = []
    found = set()
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
            pushed.append(None)
        elif op.name == "STACK_GLOBAL":
            found.add(f"{pushed[-2]}.{pushed[-1]}")
            pushed.append(None)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1]
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1]
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif op.name not in ("PROTO", "FRAME"):
            pushed.append(arg if isinstance(arg, str) else None)
    return found


def storage_blobs(data: bytes) -> list[bytes]:
    return [
        arg
        for op, arg, _ in pickletools.genops(data)
        if isinstance(arg, bytes) and arg.startswith(LEGACY_MAGIC_PICKLE)
    ]


def blob_globals(blob: bytes) -> set[str]:
    f = io.BytesIO(blob)
    found = set()
    for _ in range(5):  # magic, protocol, sys_info, storage record, keys
        found |= {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(f) if op.name == "GLOBAL"}
    return found


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("protocol", [2, 3, 4])
@pytest.mark.parametrize("snapshot", [False, True], ids=["G_ema-only", "G-D-G_ema"])
def test_round_trip_is_bit_identical(tmp_path: Path, protocol: int, snapshot: bool) -> None:
    G_ema, G_train = small_generator(0), small_generator(1)
    path = tmp_path / "network-snapshot-000123.pkl"
    save_nvidia_pickle(G_ema, path, include_D=snapshot, protocol=protocol, G_train=G_train)
    G2 = load_network_pickle(path)
    assert_same_generator(G_ema, G2)
    assert not torch.equal(images(G2), images(G_train))  # it took G_ema, not G
    assert not G2.training and not any(p.requires_grad for p in G2.parameters())


@pytest.mark.parametrize("architecture", ["orig", "resnet"])
def test_round_trip_conditional_legacy_layout(tmp_path: Path, architecture: str) -> None:
    """torch-1.x-era pickles: numpy.core names, OrderedDict module state, fewer hook keys."""
    G = small_generator(2, c_dim=3, architecture=architecture)
    path = tmp_path / "old.pkl"
    save_nvidia_pickle(G, path, include_D=True, protocol=3, legacy_layout=True)
    assert "numpy.core.multiarray.scalar" in referenced_globals(path.read_bytes())
    net = read_network_pickle(path)
    assert "_forward_hooks_with_kwargs" not in net.generator.state
    assert isinstance(net.generator.state["_modules"], collections.OrderedDict)
    assert_same_generator(G, load_network_pickle(path))


def test_fp16_storages_load_as_float32(tmp_path: Path) -> None:
    G = small_generator(3)
    G_half = small_generator(3).half()
    G_half.init_kwargs = G.init_kwargs
    path = tmp_path / "half.pkl"
    save_nvidia_pickle(G_half, path)
    assert blob_globals(storage_blobs(path.read_bytes())[0]) == {"torch.HalfStorage"}
    net = read_network_pickle(path)
    assert net.stored_dtypes() == ["float16"]
    G2 = load_network_pickle(path)
    assert all(t.dtype == torch.float32 for t in G2.state_dict().values())
    expected = {k: v.half().float() for k, v in G.state_dict().items()}
    assert all(torch.equal(expected[k], v) for k, v in G2.state_dict().items())


# ---------------------------------------------------------------------------------------------
# What the writer emits


@pytest.mark.parametrize("protocol", [3, 4])
def test_writer_references_only_nvidias_globals(protocol: int) -> None:
    buf = io.BytesIO()
    dump_nvidia_pickle(small_generator(), buf, include_D=True, protocol=protocol)
    data = buf.getvalue()
    extra = {"builtins.set"} if protocol == 3 else set()  # protocol 3 pickles sets via builtins.set
    assert referenced_globals(data) == NVIDIA_GLOBALS | extra
    blobs = storage_blobs(data)
    assert len(blobs) > 10
    assert set().union(*map(blob_globals, blobs)) == {"torch.FloatStorage"}


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_storage_blobs_are_legacy_torch_save_streams() -> None:
    """Cross-check our writer and parser against torch's own (weights-only) legacy loader."""
    buf = io.BytesIO()
    dump_nvidia_pickle(small_generator(), buf)
    for blob in storage_blobs(buf.getvalue())[:5]:
        storage = torch.load(io.BytesIO(blob), weights_only=True)
        assert storage.dtype == torch.float32 and storage.size() > 0


def test_records_mirror_module_internals(tmp_path: Path) -> None:
    path = tmp_path / "records.pkl"
    save_nvidia_pickle(small_generator(), path)
    net = read_network_pickle(path)
    classes: set[str] = set()

    def walk(rec: PersistentRecord) -> None:
        classes.add(rec.class_name)
        assert rec.version == 6 and rec.module_src_chars > 1000
        assert rec.state["training"] is False
        assert {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"} <= rec.state.keys()
        assert rec.state["_init_args"] == ()
        for child in rec.children().values():
            walk(child)

    walk(net.generator)
    assert classes == {
        "Generator",
        "MappingNetwork",
        "FullyConnectedLayer",
        "SynthesisNetwork",
        "SynthesisBlock",
        "SynthesisLayer",
        "ToRGBLayer",
    }
    kwargs = net.generator.state["_init_kwargs"]
    assert kwargs["mapping_kwargs"] == {"num_layers": 2} and kwargs["img_resolution"] == 32
    affine = net.generator.children()["mapping"].children()["fc0"]
    assert isinstance(affine.state["weight_gain"], float)  # a numpy float64 in the file


def test_embedded_source_is_self_contained() -> None:
    src = generator_module_source()
    namespace: dict[str, Any] = {"__name__": "exported_generator_source"}
    exec(compile(src, "<generator source>", "exec"), namespace)  # our own source, to check it is usable
    assert {"Generator", "SynthesisBlock", "Discriminator"} <= namespace.keys()
    G = small_generator(8)
    G_src = namespace["Generator"](**G.init_kwargs)  # what NVIDIA's loader would rebuild
    G_src.load_state_dict(G.state_dict())
    G_src.requires_grad_(False)  # as G: frozen layers take the same (cached-constants) path
    assert torch.equal(images(G_src.eval()), images(G))


# ---------------------------------------------------------------------------------------------
# Refusals: nothing from the file runs


class _Reduce:
    """Pickles as `func(*args)`."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def payloads(marker: Path) -> dict[str, _Reduce]:
    """Callables that would create `marker` if anything called them."""
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    return {
        "os.system": _Reduce(os.system, f"echo pwned > '{marker}'"),
        "builtins.eval": _Reduce(builtins.eval, code),
        "builtins.exec": _Reduce(builtins.exec, code),
        "builtins.open": _Reduce(builtins.open, str(marker), "w"),
        "subprocess.call": _Reduce(subprocess.call, [sys.executable, "-c", code]),
    }


@pytest.mark.parametrize(
    "kind", ["os.system", "builtins.eval", "builtins.exec", "builtins.open", "subprocess.call"]
)
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_reduce_is_refused_without_side_effects(tmp_path: Path, kind: str, protocol: int) -> None:
    marker = tmp_path / "marker.txt"
    payload = payloads(marker)[kind]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": {"state": [payload]}}, protocol=protocol))
    with pytest.raises(UnsafePickleError) as info:
        load_network_pickle(path)
    func, message = payload.func, str(info.value)
    assert f".{func.__qualname__}`" in message  # names the offending global
    if protocol >= 3:  # protocols 0-2 write Python 2 module names (__builtin__)
        assert f"`{func.__module__}.{func.__qualname__}`" in message
    assert "nothing from the file was run" in str(info.value)
    assert not marker.exists()


def test_plain_pickle_would_run_the_payload(tmp_path: Path) -> None:
    """Control: the payloads above are live; only the restricted unpickler keeps them inert."""
    marker = tmp_path / "marker.txt"
    pickle.loads(pickle.dumps(payloads(marker)["builtins.exec"]))
    assert marker.read_text() == "pwned"


def test_module_src_is_never_executed(tmp_path: Path) -> None:
    """A valid network whose embedded source would write a file: loads fine, writes nothing."""
    marker = tmp_path / "marker.txt"
    evil_src = f"open({str(marker)!r}, 'w').write('pwned')\n" + generator_module_source()
    G = small_generator(4)
    path = tmp_path / "evil-src.pkl"
    save_nvidia_pickle(G, path, include_D=True, module_src=evil_src)
    assert_same_generator(G, load_network_pickle(path))
    assert not marker.exists()


def evil_storage_blob(marker: Path, where: str) -> bytes:
    """A legacy torch.save stream with a code-running reduce in one of its five pickles."""
    evil = pickle.dumps(payloads(marker)["builtins.exec"], protocol=2)
    parts = [
        LEGACY_MAGIC_PICKLE,
        pickle.dumps(1001, protocol=2),
        pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x001X\x03\x00\x00\x00cpuK\x01NtQ.",
        pickle.dumps(["1"], protocol=2),
    ]
    parts[{"sys_info": 2, "storage": 3}[where]] = evil
    return b"".join(parts) + (1).to_bytes(8, "little") + np.float32(1).tobytes()


@pytest.mark.parametrize("where", ["sys_info", "storage"])
def test_storage_blob_with_bad_global_is_refused(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "marker.txt"
    blob = evil_storage_blob(marker, where)
    tensor = _Reduce(
        torch._utils._rebuild_tensor_v2,
        _Reduce(torch.storage._load_from_bytes, blob),
        0,
        (1,),
        (1,),
        False,
        collections.OrderedDict(),
    )
    path = tmp_path / "evil-blob.pkl"
    path.write_bytes(pickle.dumps({"G_ema": tensor}, protocol=4))
    with pytest.raises(UnsafePickleError, match=r"tensor storage blob references `__builtin__\.exec`"):
        load_network_pickle(path)
    assert not marker.exists()


def test_storage_blob_control_is_well_formed(tmp_path: Path) -> None:
    """The crafted blob, minus the payload, parses: the refusals above are about the payload."""
    good = evil_storage_blob(tmp_path / "unused", "sys_info").replace(
        pickle.dumps(payloads(tmp_path / "unused")["builtins.exec"], protocol=2),
        pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
    )
    assert float(torch.load(io.BytesIO(good), weights_only=True)[0]) == 1.0


def test_tensor_view_outside_its_storage_is_refused(tmp_path: Path) -> None:
    storage = torch.arange(4.0).untyped_storage()
    typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
    tensor = _Reduce(torch._utils._rebuild_tensor_v2, typed, 2, (10,), (1,), False, collections.OrderedDict())
    path = tmp_path / "oob.pkl"
    path.write_bytes(pickle.dumps({"G_ema": tensor}, protocol=4))
    with pytest.raises(ModelFileError, match="view reaches element 11 of a 4-element storage"):
        read_network_pickle(path)


@pytest.mark.parametrize(
    "obj, message",
    [
        (_Reduce(np.dtype, "O", False, True), "numpy dtype 'O'"),
        (_Reduce(collections.namedtuple, "T", "a"), "`collections.namedtuple`"),
        (_Reduce(torch.load, "x.pt"), "`torch.serialization.load`"),
        (_Reduce(getattr, "text", "upper"), "`builtins.getattr`"),
    ],
)
def test_near_miss_globals_are_refused(tmp_path: Path, obj: Any, message: str) -> None:
    path = tmp_path / "near-miss.pkl"
    path.write_bytes(pickle.dumps({"G_ema": obj}, protocol=4))
    with pytest.raises(UnsafePickleError, match=message.replace("(", r"\(")):
        read_network_pickle(path)


def test_persistent_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "persid.pkl"
    path.write_bytes(b"\x80\x04\x8c\x03abc\x94Q.")
    with pytest.raises(UnsafePickleError, match="persistent ids"):
        read_network_pickle(path)


def tf_era_pickle() -> bytes:
    """Three `dnnlib.tflib.network.Network` objects in a tuple, as TF StyleGAN2 wrote them."""
    net = b"cdnnlib.tflib.network\nNetwork\n)\x81}X\x04\x00\x00\x00nameX\x02\x00\x00\x00Gssb"
    return b"\x80\x03" + net + net + net + b"\x87."


def test_tensorflow_era_pickle_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "stylegan2-ffhq-config-f.pkl"
    path.write_bytes(tf_era_pickle())
    assert {"dnnlib.tflib.network.Network"} == referenced_globals(path.read_bytes())
    with pytest.raises(TensorFlowPickleError) as info:
        load_network_pickle(path)
    message = str(info.value)
    assert "TensorFlow" in message and "legacy.py" in message and "draggan convert" in message


# ---------------------------------------------------------------------------------------------
# Pickles that are safe but not something we can use


class _FakeSynthesis(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input = nn.Module()


class _FakeStyleGAN3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.init_kwargs = {"z_dim": 4, "c_dim": 0, "w_dim": 4, "img_resolution": 16, "img_channels": 3}
        self.synthesis = _FakeSynthesis()


def test_stylegan3_generator_is_named(tmp_path: Path) -> None:
    fake = type("Generator", (_FakeStyleGAN3,), {})()  # pickled under its class name, Generator
    path = tmp_path / "sg3.pkl"
    save_nvidia_pickle(fake, path)  # type: ignore[arg-type]
    with pytest.raises(ModelFileError, match="StyleGAN3"):
        load_network_pickle(path)


def test_missing_generator_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "no-g.pkl"
    path.write_bytes(pickle.dumps({"D": None, "augment_pipe": None}))
    with pytest.raises(
        ModelFileError, match=r"no generator in the pickle \(entries: \['D', 'augment_pipe'\]\)"
    ):
        load_network_pickle(path)


def test_mismatched_weights_are_reported(tmp_path: Path) -> None:
    G = small_generator(5)
    G.init_kwargs = {**G.init_kwargs, "channel_max": 16}  # config no longer matches the weights
    path = tmp_path / "mismatch.pkl"
    save_nvidia_pickle(G, path)
    with pytest.raises(ModelFileError, match="has shape"):
        load_network_pickle(path)


def test_ada_style_nested_synthesis_kwargs(tmp_path: Path) -> None:
    """stylegan2-ada-pytorch records synthesis options nested under synthesis_kwargs."""
    G = small_generator(6)
    flat = dict(G.init_kwargs)
    G.init_kwargs = {
        **{
            k: flat[k]
            for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs")
        },
        "synthesis_kwargs": {"channel_base": 512, "channel_max": 32, "num_fp16_res": 4, "conv_clamp": 256},
    }
    path = tmp_path / "ada.pkl"
    save_nvidia_pickle(G, path, protocol=3)
    G2 = load_network_pickle(path)
    assert G2.init_kwargs["channel_max"] == 32
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), G2.state_dict().values()))
    assert torch.equal(images(G), images(G2))


def test_positional_init_args_and_draggan_resize() -> None:
    record = PersistentRecord(
        "Generator",
        {"_init_args": (8, 0, 8), "_init_kwargs": {"img_resolution": 16, "img_channels": 3, "resize": None}},
    )
    assert generator_kwargs(record) == {
        "z_dim": 8,
        "c_dim": 0,
        "w_dim": 8,
        "img_resolution": 16,
        "img_channels": 3,
    }
    record.state["_init_kwargs"]["z_dim"] = 8
    with pytest.raises(ModelFileError, match="recorded twice"):
        generator_kwargs(record)


# ---------------------------------------------------------------------------------------------
# A pickle cannot change the loader for later loads


# BUILD with slot state on the EasyDict class: setattr(EasyDict, "items", OrderedDict) (70 bytes).
SET_CLASS_ATTRIBUTE = (
    b"\x80\x02cdnnlib.util\nEasyDict\nN}X\x05\x00\x00\x00itemsccollections\nOrderedDict\ns\x86b."
)
# BUILD on a function global: _codecs.encode.__defaults__ = ("utf8",).
SET_FUNCTION_DEFAULTS = (
    b"\x80\x02c_codecs\nencode\nN}X\x0c\x00\x00\x00__defaults__X\x04\x00\x00\x00utf8\x85s\x86b."
)


@pytest.mark.parametrize("evil", [SET_CLASS_ATTRIBUTE, SET_FUNCTION_DEFAULTS], ids=["class", "function"])
def test_pickle_cannot_change_loader_objects(tmp_path: Path, evil: bytes) -> None:
    assert len(evil) <= 70
    path = tmp_path / "evil.pkl"
    path.write_bytes(evil)
    with pytest.raises(ModelFileError, match=r"malformed pickle: (attribute 'items' set|state applied)"):
        read_network_pickle(path)
    from stylegan2 import nvidia_pickle

    assert "items" not in vars(nvidia_pickle._EasyDictRecord)
    assert nvidia_pickle._latin1_bytes.__defaults__ == ("latin1",)
    G = small_generator(9)  # a genuine pickle (EasyDict kwargs, protocol 2) still loads exactly
    good = tmp_path / "good.pkl"
    save_nvidia_pickle(G, good, protocol=2)
    assert_same_generator(G, load_network_pickle(good))
