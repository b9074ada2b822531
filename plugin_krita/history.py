"""History bookkeeping: which latent (and model) made each generated or dragged layer.

Stored in the document itself, as namespaced annotations keyed by the layer's unique id,
so it survives saving and reopening the .kra and any daemon restart:

    krita_draggan/layer/<uuid>/meta     JSON (HistoryRecord without the latent)
    krita_draggan/layer/<uuid>/latent   raw latent bytes (dtype and shape in meta)

Pure Python: the document is reached through the small `AnnotationStore` protocol
(krita_api.DocumentAnnotations implements it over Krita's Document).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

PREFIX = "krita_draggan/layer/"
SCHEMA_VERSION = 1
_KEY = re.compile(r"^krita_draggan/layer/([0-9a-f-]{36})/meta$")


class HistoryError(ValueError):
    """A history record is missing, unreadable or does not fit; the message says why."""


class AnnotationStore(Protocol):
    def annotation_keys(self) -> list[str]: ...
    def read_annotation(self, key: str) -> bytes: ...  # b"" when missing
    def write_annotation(self, key: str, description: str, data: bytes) -> None: ...
    def remove_annotation(self, key: str) -> None: ...


def normalize_layer_id(value: str) -> str:
    """QUuid.toString() gives '{…}'; keys use the bare lower-case form."""
    text = str(value).strip().strip("{}").lower()
    if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text):
        raise HistoryError(f"not a layer unique id: {value!r}")
    return text


def meta_key(layer_id: str) -> str:
    return f"{PREFIX}{normalize_layer_id(layer_id)}/meta"


def latent_key(layer_id: str) -> str:
    return f"{PREFIX}{normalize_layer_id(layer_id)}/latent"


@dataclass
class HistoryRecord:
    """Everything needed to continue from a layer: its latent and how it was made."""

    layer_id: str
    kind: str  # "generate" or "drag"
    model: str  # the daemon's model name (list_models)
    model_source: str  # its file name, for messages
    resolution: int  # model px
    region: list[int]  # [x, y, size] canvas px where the image sits
    latent: bytes = field(repr=False)
    latent_shape: list[int] = field(default_factory=list)
    latent_dtype: str = "float32"
    latent_id: str = ""  # protocol.latent_id: a content hash, the same on any daemon
    layer_name: str = ""
    parent_id: str | None = None  # the layer this one was dragged from
    seed: int | None = None
    truncation: float | None = None
    handles: list[list[float]] = field(default_factory=list)  # model px, as sent
    targets: list[list[float]] = field(default_factory=list)
    final_points: list[list[float]] = field(default_factory=list)  # tracked handles at the end
    masked: bool = False
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layer_id = normalize_layer_id(self.layer_id)
        if self.parent_id is not None:
            self.parent_id = normalize_layer_id(self.parent_id)
        if self.kind not in ("generate", "drag"):
            raise HistoryError(f"history kind must be 'generate' or 'drag', got {self.kind!r}")
        if not self.latent:
            raise HistoryError(f"layer {self.layer_id}: empty latent")

    def meta_json(self) -> bytes:
        meta = asdict(self)
        del meta["latent"]
        meta["schema"] = SCHEMA_VERSION
        meta["latent_bytes"] = len(self.latent)
        return json.dumps(meta, sort_keys=True).encode()

    @staticmethod
    def from_annotations(meta: bytes, latent: bytes) -> HistoryRecord:
        try:
            data = json.loads(bytes(meta).decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HistoryError(f"unreadable history metadata ({e})") from e
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
            schema = data.get("schema") if isinstance(data, dict) else data
            raise HistoryError(f"unknown history schema {schema!r}")
        expected = data.pop("latent_bytes", None)
        data.pop("schema")
        latent = bytes(latent)
        if expected != len(latent):
            raise HistoryError(
                f"layer {data.get('layer_id')}: latent annotation has {len(latent)} bytes, "
                f"expected {expected}"
            )
        known = set(HistoryRecord.__dataclass_fields__)
        unknown = {k: data.pop(k) for k in list(data) if k not in known}
        try:
            record = HistoryRecord(latent=latent, **data)
        except TypeError as e:
            raise HistoryError(f"incomplete history metadata ({e})") from e
        record.extra.update(unknown)
        return record


class History:
    """Read and write history records in a document's annotations."""

    def __init__(self, store: AnnotationStore) -> None:
        self.store = store

    def save(self, record: HistoryRecord) -> None:
        self.store.write_annotation(
            latent_key(record.layer_id), "krita-draggan latent", record.latent
        )
        self.store.write_annotation(
            meta_key(record.layer_id), "krita-draggan layer history", record.meta_json()
        )

    def load(self, layer_id: str) -> HistoryRecord | None:
        """The record of a layer, or None if the layer has none (was not made by this plugin)."""
        meta = self.store.read_annotation(meta_key(layer_id))
        if not meta:
            return None
        latent = self.store.read_annotation(latent_key(layer_id))
        return HistoryRecord.from_annotations(meta, latent)

    def layer_ids(self) -> list[str]:
        """Ids of every layer with a record (including layers since deleted)."""
        ids = []
        for key in self.store.annotation_keys():
            m = _KEY.match(key)
            if m:
                ids.append(m.group(1))
        return ids

    def records(self) -> list[HistoryRecord]:
        return [r for r in (self.load(i) for i in self.layer_ids()) if r is not None]

    def remove(self, layer_id: str) -> None:
        self.store.remove_annotation(meta_key(layer_id))
        self.store.remove_annotation(latent_key(layer_id))

    def prune(self, existing_layer_ids: set[str]) -> list[str]:
        """Forget records of layers that no longer exist; returns the removed ids."""
        keep = {normalize_layer_id(i) for i in existing_layer_ids}
        removed = [i for i in self.layer_ids() if i not in keep]
        for layer_id in removed:
            self.remove(layer_id)
        return removed

    def next_drag_number(self) -> int:
        """N for the next 'Drag N' layer name: one more than the largest N recorded.

        Unreadable records are skipped: a name must never stop a finished drag from being kept.
        """
        numbers = [0]
        for layer_id in self.layer_ids():
            try:
                record = self.load(layer_id)
            except HistoryError:
                continue
            m = re.fullmatch(r"Drag (\d+)", record.layer_name) if record is not None else None
            if m:
                numbers.append(int(m.group(1)))
        return max(numbers) + 1


def check_model(record: HistoryRecord, models: list[dict]) -> dict:
    """The daemon's model info for continuing `record`; an error if the daemon lacks that model.

    `models` is the `models` list of the daemon's hello/list_models reply.
    """
    for info in models:
        if info.get("name") == record.model:
            shape = [info.get("num_ws"), info.get("w_dim")]
            if None not in shape and record.latent_shape and shape != list(record.latent_shape):
                raise HistoryError(
                    f"layer '{record.layer_name}' has a latent of shape {record.latent_shape}, but the "
                    f"daemon's model '{record.model}' expects {shape}: it is a different model file"
                )
            return info
    names = ", ".join(repr(m.get("name")) for m in models) or "none"
    raise HistoryError(
        f"layer '{record.layer_name}' was made with model '{record.model}' ({record.model_source}), "
        f"but the daemon serves {names}; start the daemon with that model to continue from this layer"
    )
