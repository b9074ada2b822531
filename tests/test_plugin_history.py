"""History bookkeeping in document annotations (plugin_krita.history)."""

from __future__ import annotations

import json
import struct

import pytest

from plugin_krita.history import (
    History,
    HistoryError,
    HistoryRecord,
    check_model,
    latent_key,
    meta_key,
    normalize_layer_id,
)

UUID_A = "{032f3989-7748-4324-885d-098593006979}"  # QUuid.toString() form, as Krita gives it
UUID_B = "5d2b1c1e-0000-4000-8000-00000000000b"


class DictStore:
    """An AnnotationStore over a dict, behaving like Krita's Document annotations."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, bytes]] = {}

    def annotation_keys(self) -> list[str]:
        return list(self.data)

    def read_annotation(self, key: str) -> bytes:
        return self.data.get(key, ("", b""))[1]

    def write_annotation(self, key: str, description: str, data: bytes) -> None:
        self.data[key] = (description, bytes(data))

    def remove_annotation(self, key: str) -> None:
        self.data.pop(key, None)


def latent_bytes(num_ws: int = 4, w_dim: int = 8, value: float = 0.5) -> bytes:
    return struct.pack(f"<{num_ws * w_dim}f", *([value] * (num_ws * w_dim)))


def record(layer_id: str = UUID_A, **kw) -> HistoryRecord:
    base = dict(layer_id=layer_id, kind="generate", model="tiny", model_source="tiny.safetensors",
                resolution=256, region=[56, 0, 400], latent=latent_bytes(), latent_shape=[4, 8],
                layer_name="Generated 7", seed=7, truncation=0.7)
    base.update(kw)
    return HistoryRecord(**base)


def test_keys_are_namespaced_by_bare_uuid():
    assert normalize_layer_id(UUID_A) == "032f3989-7748-4324-885d-098593006979"
    assert meta_key(UUID_A) == "krita_draggan/layer/032f3989-7748-4324-885d-098593006979/meta"
    assert latent_key(UUID_A).endswith("/latent")
    with pytest.raises(HistoryError):
        normalize_layer_id("Drag 1")


def test_save_and_load_round_trip_stores_latent_raw():
    store = DictStore()
    history = History(store)
    original = record(handles=[[1.0, 2.0]], targets=[[3.0, 4.0]], parent_id=UUID_B, kind="drag",
                      layer_name="Drag 1", steps=12, masked=True)
    history.save(original)
    assert store.read_annotation(latent_key(UUID_A)) == original.latent  # raw bytes, not base64
    meta = json.loads(store.read_annotation(meta_key(UUID_A)))
    assert "latent" not in meta and meta["latent_bytes"] == 128 and meta["schema"] == 1
    loaded = history.load(UUID_A)
    assert loaded == original
    assert history.load(UUID_B) is None


def test_layer_ids_prune_and_drag_numbers():
    store = DictStore()
    history = History(store)
    history.save(record())
    history.save(record(UUID_B, kind="drag", layer_name="Drag 3", parent_id=UUID_A))
    store.write_annotation("other_plugin/thing", "x", b"1")
    assert sorted(history.layer_ids()) == sorted([normalize_layer_id(UUID_A), UUID_B])
    assert history.next_drag_number() == 4
    removed = history.prune({UUID_A})
    assert removed == [UUID_B]
    assert history.layer_ids() == [normalize_layer_id(UUID_A)]
    assert store.read_annotation("other_plugin/thing") == b"1"  # other annotations untouched
    assert history.next_drag_number() == 1


def test_corrupt_or_truncated_annotations_are_clear_errors():
    store = DictStore()
    history = History(store)
    history.save(record())
    store.write_annotation(latent_key(UUID_A), "", latent_bytes()[:-4])
    with pytest.raises(HistoryError, match="124 bytes, expected 128"):
        history.load(UUID_A)
    store.write_annotation(meta_key(UUID_A), "", b"{not json")
    with pytest.raises(HistoryError, match="unreadable"):
        history.load(UUID_A)
    store.write_annotation(meta_key(UUID_A), "", json.dumps({"schema": 99}).encode())
    with pytest.raises(HistoryError, match="schema 99"):
        history.load(UUID_A)


def test_unknown_meta_keys_from_newer_plugins_are_kept_in_extra():
    store = DictStore()
    history = History(store)
    history.save(record())
    meta = json.loads(store.read_annotation(meta_key(UUID_A)))
    meta["future_field"] = 3
    store.write_annotation(meta_key(UUID_A), "", json.dumps(meta).encode())
    assert history.load(UUID_A).extra == {"future_field": 3}


def test_bad_records_are_refused():
    with pytest.raises(HistoryError, match="kind"):
        record(kind="paint")
    with pytest.raises(HistoryError, match="empty latent"):
        record(latent=b"")


def test_check_model_needs_the_same_model():
    rec = record()
    info = {"name": "tiny", "num_ws": 4, "w_dim": 8, "resolution": 256}
    assert check_model(rec, [{"name": "other"}, info]) is info
    with pytest.raises(HistoryError, match=r"made with model 'tiny'.*serves 'other'"):
        check_model(rec, [{"name": "other"}])
    with pytest.raises(HistoryError, match="expects \\[14, 512\\]"):
        check_model(rec, [{"name": "tiny", "num_ws": 14, "w_dim": 512}])


def test_next_drag_number_skips_unreadable_records():
    """One damaged record must not stop a finished drag from getting its name (review finding 1)."""
    store = DictStore()
    history = History(store)
    history.save(record(UUID_B, kind="drag", layer_name="Drag 2", parent_id=UUID_A))
    history.save(record())
    store.write_annotation(meta_key(UUID_A), "", b"{not json")
    assert history.next_drag_number() == 3
