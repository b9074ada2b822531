"""load_model / describe_model: format detection by content, round trips, damaged files."""

from __future__ import annotations

import codecs
import collections
import io
import json
import os
import pickle
import pickletools
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stylegan2 import Generator
from stylegan2.loading import describe_model, detect_format, load_model
from stylegan2.model_file import ModelFileError, save_generator
from stylegan2.nvidia_export import dump_nvidia_pickle, save_nvidia_pickle
from stylegan2.nvidia_pickle import TensorFlowPickleError, UnsafePickleError


def small_generator(seed: int = 0, c_dim: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(
        z_dim=16,
        c_dim=c_dim,
        w_dim=16,
        img_resolution=16,
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        channel_base=256,
        channel_max=16,
    )
    with torch.no_grad():
        for name, t in G.state_dict(keep_vars=True).items():
            if not name.endswith("resample_filter"):
                t.add_(torch.randn_like(t) * 0.5)
    return G.eval().requires_grad_(False)


def images(G: Generator) -> torch.Tensor:
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(3))
    return G(z, None, truncation_psi=0.7, noise_mode="const")


def nvidia_pickle_bytes(G: Generator, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    dump_nvidia_pickle(G, buf, **kwargs)  # type: ignore[arg-type]
    return buf.getvalue()


REPO = Path(__file__).resolve().parent.parent
G_SMALL = small_generator()
PICKLE_BYTES = nvidia_pickle_bytes(G_SMALL, include_D=True)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# Detection by content, never by name


def test_safetensors_named_pkl_loads_as_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "stylegan3-model.pkl"
    save_generator(G_SMALL, path)
    assert detect_format(path) == "safetensors"
    G2 = load_model(path)
    assert torch.equal(images(G2), images(G_SMALL))


def test_pickle_named_safetensors_loads_as_pickle(tmp_path: Path) -> None:
    path = write(tmp_path, "model.safetensors", PICKLE_BYTES)
    assert detect_format(path) == "pickle"
    assert torch.equal(images(load_model(path)), images(G_SMALL))


def test_safetensors_round_trip_fp16(tmp_path: Path) -> None:
    path = tmp_path / "half"
    save_generator(G_SMALL, path, dtype=torch.float16)
    G2 = load_model(path)
    expected = {k: v.half().float() for k, v in G_SMALL.state_dict().items()}
    assert all(torch.equal(expected[k], v) for k, v in G2.state_dict().items())


def test_tensorflow_pickle_detected_by_content(tmp_path: Path) -> None:
    net = b"cdnnlib.tflib.network\nNetwork\n)\x81}X\x04\x00\x00\x00nameX\x02\x00\x00\x00Gssb"
    path = write(tmp_path, "network-final.safetensors", b"\x80\x03" + net * 3 + b"\x87.")
    with pytest.raises(TensorFlowPickleError, match=r"legacy\.py.*draggan convert"):
        load_model(path)
    with pytest.raises(TensorFlowPickleError):
        describe_model(path)


# ---------------------------------------------------------------------------------------------
# describe_model


def test_describe_pickle(tmp_path: Path) -> None:
    info = describe_model(write(tmp_path, "x.bin", PICKLE_BYTES))
    assert info["format"] == "NVIDIA network pickle"
    assert "protocol 4" in info["format_detail"] and "using G_ema" in info["format_detail"]
    assert info["dtype"] == "float32"
    assert (info["resolution"], info["num_ws"], info["z_dim"], info["w_dim"], info["c_dim"]) == (
        16,
        6,
        16,
        16,
        0,
    )
    assert info["channels"] == {4: 16, 8: 16, 16: 16}
    assert info["mapping_layers"] == 2 and info["architecture"] == "skip"
    assert info["parameters"] == sum(p.numel() for p in G_SMALL.parameters())


def test_describe_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_generator(small_generator(1, c_dim=4), path, dtype=torch.float16, extra={"source_file": "a.pkl"})
    info = describe_model(path)
    assert info["format"] == "krita-draggan safetensors"
    assert info["dtype"] == "float16" and info["c_dim"] == 4
    assert info["extra"] == {"source_file": "a.pkl"}
    assert info["config"]["channel_base"] == 256


# ---------------------------------------------------------------------------------------------
# Files that are not models, truncated or damaged


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"PK\x03\x04" + b"\x00" * 40, "zip archive"),
        (b"GIF89a" + b"\x00" * 40, "not a model file we recognise"),
        (b"\x80\x04K\x01.", "not a network pickle"),
        (b"\x80\x04K\x01.garbage", "unexpected data after the end of the pickle"),
    ],
)
def test_not_a_model(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        load_model(write(tmp_path, "m", data))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "nope.pkl")
    with pytest.raises(ModelFileError, match="is a directory"):
        load_model(tmp_path)


def test_safetensors_without_our_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "sd.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ModelFileError, match="draggan convert"):
        load_model(path)


@pytest.fixture(scope="module")
def safetensors_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    save_generator(G_SMALL, path)
    return path.read_bytes()


SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(cut=st.integers(min_value=0, max_value=len(PICKLE_BYTES) - 1))
def test_truncated_pickle_always_gives_model_file_error(tmp_path: Path, cut: int) -> None:
    with pytest.raises(ModelFileError):
        load_model(write(tmp_path, "cut.pkl", PICKLE_BYTES[:cut]))


@SETTINGS
@given(data=st.data())
def test_truncated_safetensors_always_gives_model_file_error(
    tmp_path: Path, safetensors_bytes: bytes, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(safetensors_bytes) - 1))
    with pytest.raises(ModelFileError):
        load_model(write(tmp_path, "cut.safetensors", safetensors_bytes[:cut]))


def corrupt(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in flips:
        out[pos % len(out)] ^= value
    return bytes(out)


FLIPS = st.lists(
    st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), min_size=1, max_size=4
)


@SETTINGS
@given(flips=FLIPS)
def test_corrupt_pickle_loads_or_gives_model_file_error(tmp_path: Path, flips: list[tuple[int, int]]) -> None:
    """Flipped bytes inside weight data still load (pickles carry no checksum); nothing else escapes."""
    try:
        G = load_model(write(tmp_path, "bad.pkl", corrupt(PICKLE_BYTES, flips)))
    except ModelFileError:
        return
    assert isinstance(G, Generator) and G.img_resolution == 16


OPCODE_POSITIONS = [pos for _, _, pos in pickletools.genops(PICKLE_BYTES)]


@SETTINGS
@given(
    flips=st.lists(
        st.tuples(st.sampled_from(OPCODE_POSITIONS), st.integers(min_value=1, max_value=255)),
        min_size=1,
        max_size=3,
    )
)
def test_corrupt_pickle_opcodes_give_model_file_error(tmp_path: Path, flips: list[tuple[int, int]]) -> None:
    """Damage aimed at the opcode stream (not at weight bytes): a ModelFileError or a usable model."""
    try:
        G = load_model(write(tmp_path, "bad.pkl", corrupt(PICKLE_BYTES, flips)))
    except ModelFileError:
        return
    assert isinstance(G, Generator)


@SETTINGS
@given(flips=FLIPS, header=st.booleans())
def test_corrupt_safetensors_loads_or_gives_model_file_error(
    tmp_path: Path, safetensors_bytes: bytes, flips: list[tuple[int, int]], header: bool
) -> None:
    if header:  # aim at the 8-byte length and the JSON header
        header_len = int.from_bytes(safetensors_bytes[:8], "little") + 8
        flips = [(pos % header_len, v) for pos, v in flips]
    try:
        G = load_model(write(tmp_path, "bad.safetensors", corrupt(safetensors_bytes, flips)))
    except ModelFileError:
        return
    assert isinstance(G, Generator)


def test_pickle_written_to_disk_by_save_nvidia_pickle(tmp_path: Path) -> None:
    path = tmp_path / "g.pkl"
    save_nvidia_pickle(G_SMALL, path)
    assert path.read_bytes()[:2] == b"\x80\x04"
    assert torch.equal(images(load_model(path)), images(G_SMALL))


def test_malicious_pickle_refused_through_load_model(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch '{marker}'",)

    path = write(tmp_path, "model.safetensors", pickle.dumps({"G_ema": Evil()}, protocol=0))
    with pytest.raises(UnsafePickleError, match=r"system`"):
        load_model(path)
    with pytest.raises(UnsafePickleError):
        describe_model(path)
    assert not marker.exists()


def test_oversized_config_is_refused_before_allocating(tmp_path: Path) -> None:
    """A damaged config asking for a huge generator fails fast instead of exhausting memory."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    huge = {"img_resolution": 4096, "channel_base": 2**30, "channel_max": 2**20}
    path = tmp_path / "huge.safetensors"
    save_generator(G_SMALL, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    config = {**json.loads(meta["config"]), **huge}
    save_file(load_file(str(path)), str(path), metadata={**meta, "config": json.dumps(config)})
    with pytest.raises(ModelFileError, match=r"at least .* weights, but the file holds only"):
        load_model(path)

    G = small_generator()
    G.init_kwargs = {**G.init_kwargs, **huge}
    pkl = tmp_path / "huge.pkl"
    save_nvidia_pickle(G, pkl)
    with pytest.raises(ModelFileError, match=r"at least .* weights, but the file holds only"):
        load_model(pkl)


# ---------------------------------------------------------------------------------------------
# Files that would make the loader allocate far more than they hold, or crash it.
# They are loaded in a child process whose address space is capped at ~1 GiB above what it uses
# after loading a genuine file: an attempt to build the huge generator (or the many copies) there
# fails; the tests require the specific size/config error that comes *before* any such attempt.


class _Reduce:
    """Pickles as `func(*args)`."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def crafted_pickle(G: Generator, edit: Callable[[dict], None] | None = None, **config: object) -> bytes:
    """G as the NVIDIA-layout writer pickles it, with its config updated by `config` and its
    record tree (the generator's state dict) changed in place by `edit` before writing."""
    from stylegan2 import nvidia_export as nx

    root = nx._persistent(G, "", legacy_layout=False, init_kwargs={**G.init_kwargs, **config})
    if edit is not None:
        edit(root.meta["state"])
    renamed = {
        id(nx._reconstruct_persistent_obj): ("torch_utils.persistence", "_reconstruct_persistent_obj"),
        id(nx._EasyDict): ("dnnlib.util", "EasyDict"),
    }
    buf = io.BytesIO()
    nx._NvidiaLayoutPickler(buf, 4, renamed).dump({"G_ema": root})
    return buf.getvalue()


def module_state(state: dict, dotted: str) -> dict:
    for name in dotted.split("."):
        state = state["_modules"][name].meta["state"]
    return state


def typed_storage(values: torch.Tensor) -> torch.storage.TypedStorage:
    """A storage as network pickles store it (one object: pickled once, then memo references)."""
    storage = values.untyped_storage()
    return torch.storage.TypedStorage(wrap_storage=storage, dtype=values.dtype, _internal=True)


def view_of(storage: torch.storage.TypedStorage, size: tuple[int, ...], stride: tuple[int, ...]) -> _Reduce:
    """A tensor record `_rebuild_tensor_v2(storage, 0, size, stride)` with a chosen stride."""
    hooks = collections.OrderedDict()
    return _Reduce(torch._utils._rebuild_tensor_v2, storage, 0, size, stride, False, hooks)


def safetensors_with_config(tmp_path: Path, name: str, **config: object) -> Path:
    """G_SMALL's weights with a changed config (what a damaged or hostile file could hold)."""
    from safetensors.torch import save_file

    path = tmp_path / name
    meta = {
        "format": "krita-draggan/stylegan2-generator",
        "format_version": "1",
        "config": json.dumps({**G_SMALL.init_kwargs, **config}),
        "extra": "{}",
    }
    save_file({k: v.contiguous() for k, v in G_SMALL.state_dict().items()}, str(path), metadata=meta)
    return path


GIB = 2**30
HUGE = 2**26  # x 16 features x 4 bytes = 4 GiB for one weight

LOAD_UNDER_MEMORY_LIMIT = r"""
import json, resource, sys
from stylegan2.loading import load_model
from stylegan2.model_file import ModelFileError, load_generator

def vm_size():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))

load_model(sys.argv[1])  # warm up (lazy imports, the meta device) before the cap
limit = vm_size() + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for spec in sys.argv[3:]:
    loader, path = spec.split(":", 1)
    try:
        (load_model if loader == "load_model" else load_generator)(path)
        out[spec] = ["loaded", ""]
    except Exception as e:
        out[spec] = [type(e).__name__ if not isinstance(e, ModelFileError) else "ModelFileError", str(e)]
out["peak_growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
print(json.dumps(out))
"""


def test_files_asking_for_huge_memory_are_refused_before_allocating(tmp_path: Path) -> None:
    """Findings: config fields outside the old bounds (z_dim, c_dim, img_channels, layer_features,
    resample_filter), zero-stride views, and memo reuse of one stored object."""
    control_st = tmp_path / "control.safetensors"
    save_generator(G_SMALL, control_st)
    control_pkl = write(tmp_path, "control.pkl", nvidia_pickle_bytes(G_SMALL, protocol=2))
    shape_error = r"has shape \[.*\], expected \[|weights do not match"
    cases: dict[str, str] = {  # "loader:path" -> the error required (None: must load)
        f"load_model:{control_st}": "",
        f"load_model:{control_pkl}": "",
    }
    for field, value in [
        ("z_dim", HUGE),
        ("c_dim", HUGE),
        ("img_channels", HUGE),
        ("mapping_kwargs", {"num_layers": 2, "layer_features": 2**15}),
        ("resample_filter", [1] * 2**13),  # 2**26-element buffers
    ]:
        path = safetensors_with_config(tmp_path, f"{field}.safetensors", **{field: value})
        cases[f"load_model:{path}"] = shape_error
        cases[f"load_generator:{path}"] = shape_error  # model_file's loader checks by itself too
        pkl = write(tmp_path, f"{field}.pkl", crafted_pickle(G_SMALL, **{field: value}))
        cases[f"load_model:{pkl}"] = shape_error

    def zero_stride(state: dict) -> None:  # a 1-element storage standing for a 4 GiB weight
        weight = view_of(typed_storage(torch.zeros(1)), (16, HUGE), (0, 0))
        module_state(state, "mapping.fc0")["_parameters"]["weight"] = weight

    pkl = write(tmp_path, "zero-stride.pkl", crafted_pickle(G_SMALL, zero_stride, z_dim=HUGE))
    cases[f"load_model:{pkl}"] = r"a view of 1073741824 elements of a 1-element storage"

    text = "x" * (8 * 2**20)
    buf = io.BytesIO()
    torch.save(typed_storage(torch.zeros(2 * 2**20)), buf, _use_new_zipfile_serialization=False)
    blob, numbers, pairs = buf.getvalue(), list(range(2**20)), [(i, i) for i in range(2**18)]
    reused = {  # files of 3-8 MiB that call a stand-in many times on one memoised argument: > 1.5 GiB
        "codecs": [_Reduce(codecs.encode, text, "latin1") for _ in range(200)],
        "storage": [_Reduce(torch.storage._load_from_bytes, blob) for _ in range(200)],
        "set": [_Reduce(set, numbers) for _ in range(40)],
        "ordereddict": [_Reduce(collections.OrderedDict, pairs) for _ in range(80)],
    }
    for name, calls in reused.items():
        path = write(tmp_path, f"reuse-{name}.pkl", pickle.dumps({"G_ema": calls}, protocol=4))
        cases[f"load_model:{path}"] = r"malformed pickle: it expands to more than [\d,]+ bytes"

    result = subprocess.run(
        [sys.executable, "-c", LOAD_UNDER_MEMORY_LIMIT, str(control_pkl), str(GIB), *cases],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    for spec, expected in cases.items():  # every file is checked (genuine ones load under the cap)
        kind, message = out[spec]
        if not expected:
            assert kind == "loaded", (spec, message)
        else:
            assert kind == "ModelFileError" and re.search(expected, message), (spec, kind, message[:300])
    assert out["peak_growth_mib"] < 256


# ---------------------------------------------------------------------------------------------
# Files that used to crash the loader with something other than ModelFileError


def test_self_referencing_init_kwargs_give_model_file_error(tmp_path: Path) -> None:
    def self_reference(state: dict) -> None:
        state["_init_kwargs"]["mapping_kwargs"] = state["_init_kwargs"]

    path = write(tmp_path, "loop.pkl", crafted_pickle(G_SMALL, self_reference))
    with pytest.raises(ModelFileError, match="too large or too deeply nested"):
        load_model(path)


def test_memo_amplified_init_kwargs_give_model_file_error(tmp_path: Path) -> None:
    """Nine nested lists of ten references each: 10**9 values if expanded."""
    nested: list = [1] * 10
    for _ in range(8):
        nested = [nested] * 10

    def amplify(state: dict) -> None:
        state["_init_kwargs"]["resample_filter"] = nested

    path = write(tmp_path, "wide.pkl", crafted_pickle(G_SMALL, amplify))
    assert path.stat().st_size < 100_000
    with pytest.raises(ModelFileError, match="too large or too deeply nested"):
        load_model(path)


@pytest.mark.parametrize(
    "config",
    [{"z_dim": -3}, {"z_dim": 2**70}, {"mapping_kwargs": {"num_layers": 2, "layer_features": -5}}],
    ids=["negative-z_dim", "overflowing-z_dim", "negative-layer_features"],
)
def test_configs_torch_rejects_give_model_file_error(tmp_path: Path, config: dict) -> None:
    """torch raises RuntimeError / TypeError for these while building; both loaders explain."""
    st_path = safetensors_with_config(tmp_path, "bad.safetensors", **config)
    with pytest.raises(ModelFileError, match="invalid generator config"):
        load_model(st_path)
    pkl = write(tmp_path, "bad.pkl", crafted_pickle(G_SMALL, **config))
    with pytest.raises(ModelFileError, match="invalid generator config"):
        load_model(pkl)


def test_tensors_sharing_one_storage_count_once(tmp_path: Path) -> None:
    """Every tensor a view of the same stored data: the file holds far less than the generator."""
    shared = typed_storage(torch.randn(max(t.numel() for t in G_SMALL.state_dict().values())))

    def share(state: dict) -> None:
        for group in ("_parameters", "_buffers"):
            for name, t in list(state[group].items()):
                if t is not None:
                    contiguous = tuple(torch.empty(t.shape).stride())
                    state[group][name] = view_of(shared, tuple(t.shape), contiguous)
        for child in state["_modules"].values():
            share(child.meta["state"])

    path = write(tmp_path, "shared.pkl", crafted_pickle(G_SMALL, share))
    with pytest.raises(ModelFileError, match=r"file holds only [\d,]+ \(tensors that repeat stored data\)"):
        load_model(path)
