"""P4Info index: names to ids, bit widths, punt reasons (finsy-style schema).

Every name the controller uses is looked up here; an unknown name fails with
the closest known ones, so a renamed table in the P4 source is caught at start.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from p4.config.v1 import p4info_pb2


class SchemaError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def _lookup(kind: str, items: dict, name: str):
    try:
        return items[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(items), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise SchemaError(f"P4Info has no {kind} {name!r}{hint}") from None


@dataclass(frozen=True, slots=True)
class FieldInfo:
    id: int
    name: str
    bitwidth: int


@dataclass(frozen=True, slots=True)
class ActionInfo:
    id: int
    name: str
    params: dict[str, FieldInfo]

    def param(self, name: str) -> FieldInfo:
        return _lookup(f"parameter of action {self.name!r}", self.params, name)


@dataclass(frozen=True, slots=True)
class TableInfo:
    id: int
    name: str
    fields: dict[str, FieldInfo]
    actions: tuple[str, ...]
    size: int
    direct_counter: int | None
    supports_idle_timeout: bool

    def field(self, name: str) -> FieldInfo:
        return _lookup(f"match field of table {self.name!r}", self.fields, name)


@dataclass(frozen=True, slots=True)
class CounterInfo:
    """An indexed counter or meter."""
    id: int
    name: str
    size: int


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class P4Schema:
    """Index of one P4Info; tables and actions by full name, alias or short name."""

    def __init__(self, p4info: p4info_pb2.P4Info):
        self.p4info = p4info
        self.tables: dict[str, TableInfo] = {}
        self.actions: dict[str, ActionInfo] = {}
        self.counters: dict[str, CounterInfo] = {}
        self.meters: dict[str, CounterInfo] = {}
        self.packet_metadata: dict[str, dict[str, FieldInfo]] = {}
        self.enums: dict[str, dict[str, int]] = {}
        actions_by_id = {}
        for a in p4info.actions:
            info = ActionInfo(a.preamble.id, a.preamble.name,
                              {p.name: FieldInfo(p.id, p.name, p.bitwidth) for p in a.params})
            actions_by_id[info.id] = info
            for n in {a.preamble.name, a.preamble.alias, _short(a.preamble.name)}:
                self.actions.setdefault(n, info)
        direct = {c.direct_table_id: c.preamble.id for c in p4info.direct_counters}
        for t in p4info.tables:
            info = TableInfo(
                t.preamble.id, t.preamble.name,
                {f.name: FieldInfo(f.id, f.name, f.bitwidth) for f in t.match_fields},
                tuple(actions_by_id[r.id].name for r in t.action_refs),
                t.size, direct.get(t.preamble.id),
                t.idle_timeout_behavior == p4info_pb2.Table.NOTIFY_CONTROL)
            for n in {t.preamble.name, t.preamble.alias, _short(t.preamble.name)}:
                self.tables.setdefault(n, info)
        for kind, items in ((self.counters, p4info.counters), (self.meters, p4info.meters)):
            for c in items:
                info = CounterInfo(c.preamble.id, c.preamble.name, c.size)
                for n in {c.preamble.name, c.preamble.alias, _short(c.preamble.name)}:
                    kind.setdefault(n, info)
        for m in p4info.controller_packet_metadata:
            self.packet_metadata[m.preamble.name] = {
                f.name: FieldInfo(f.id, f.name, f.bitwidth) for f in m.metadata}
        for name, enum in p4info.type_info.serializable_enums.items():
            self.enums[name] = {
                mem.name: int.from_bytes(mem.value, "big") for mem in enum.members}

    @classmethod
    def from_file(cls, path: str | Path) -> "P4Schema":
        p4info = p4info_pb2.P4Info()
        text_format.Parse(Path(path).read_text(), p4info)
        return cls(p4info)

    def table(self, name: str) -> TableInfo:
        return _lookup("table", self.tables, name)

    def action(self, name: str) -> ActionInfo:
        return _lookup("action", self.actions, name)

    def counter(self, name: str) -> CounterInfo:
        return _lookup("counter", self.counters, name)

    def meter(self, name: str) -> CounterInfo:
        return _lookup("meter", self.meters, name)

    def enum(self, name: str) -> dict[str, int]:
        return _lookup("serializable enum", self.enums, name)

    def packet_meta(self, header: str) -> dict[str, FieldInfo]:
        return _lookup("controller header", self.packet_metadata, header)


def encode(value: int, bitwidth: int) -> bytes:
    """Value as a P4Runtime byte string of the field's width."""
    if value < 0 or value >> bitwidth:
        raise ValueError(f"{value} does not fit in {bitwidth} bits")
    return value.to_bytes((bitwidth + 7) // 8, "big")


def decode(data: bytes) -> int:
    return int.from_bytes(data, "big")
