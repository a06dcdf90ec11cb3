"""Flowtable core and aging (the kernel's nf_flow_table_core.c).

A FlowTable holds the flows of one flowtable; a Flowtables registry holds them
all and indexes flows by both tuples. Timeouts are refreshed by what the
switch reports; when a flow expires is decided in aging.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .model import DIRS, Dir, Flow, FlowTuple

NF_FLOW_TIMEOUT = 30.0  # seconds, the kernel's default flowtable timeout
REFRESH_SLACK = 1.0     # a refresh moves the deadline only by more than this


@dataclass(slots=True)
class FlowtableConfig:
    name: str
    devices: tuple[str, ...]
    timeout: float = NF_FLOW_TIMEOUT
    family: str = "ip"
    id: int = 0
    # per-protocol timeouts, like the kernel's nf_flowtable_tcp_timeout and
    # nf_flowtable_udp_timeout; a protocol not listed gets `timeout`
    proto_timeouts: dict[int, float] = field(default_factory=dict)

    def timeout_for(self, l4proto: int) -> float:
        return self.proto_timeouts.get(l4proto, self.timeout)


@dataclass(slots=True)
class FlowTable:
    config: FlowtableConfig
    flows: dict[FlowTuple, Flow] = field(default_factory=dict)


class Flowtables:
    """All flowtables and their flows; owned by one task."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.tables: dict[str, FlowTable] = {}
        # both tuples of every flow; the direction is found by comparing,
        # which costs less memory than storing a (flow, dir) pair per tuple
        self._by_tuple: dict[FlowTuple, Flow] = {}

    # -- flowtables ------------------------------------------------------
    def add_table(self, config: FlowtableConfig) -> FlowTable:
        if config.name in self.tables:
            raise ValueError(f"flowtable {config.name!r} exists")
        used = {t.config.id for t in self.tables.values()}
        if not config.id:
            config.id = next(i for i in range(1, 256) if i not in used)
        table = FlowTable(config)
        self.tables[config.name] = table
        return table

    def remove_table(self, name: str) -> list[Flow]:
        """Drop a flowtable; returns its flows so the caller can tear them down."""
        table = self.tables.pop(name)
        flows = list(table.flows.values())
        for flow in flows:
            self._unindex(flow)
        return flows

    def table(self, name: str) -> FlowTable:
        try:
            return self.tables[name]
        except KeyError:
            known = ", ".join(sorted(self.tables)) or "none"
            raise KeyError(f"no flowtable {name!r} (known: {known})") from None

    # -- flows (flow_offload_add/_del/_lookup/_refresh) ---------------------
    def add(self, flow: Flow) -> None:
        # without loops over the directions: every flow decided or adopted
        # passes here (100,000 at a reconcile of as many)
        table = self.tables.get(flow.flowtable) or self.table(flow.flowtable)
        o, r = flow.tuples
        by_tuple = self._by_tuple
        if o in by_tuple or r in by_tuple:
            raise ValueError(f"tuple {o if o in by_tuple else r} is already offloaded")
        flow.last_used = self.clock()
        table.flows[o] = flow
        by_tuple[o] = by_tuple[r] = flow

    def delete(self, flow: Flow) -> bool:
        """Remove a flow; False if it was not there (safe to call twice)."""
        table = self.tables.get(flow.flowtable)
        if table is None or table.flows.get(flow.key) is not flow:
            return False
        del table.flows[flow.key]
        self._unindex(flow)
        return True

    def _unindex(self, flow: Flow) -> None:
        for d in DIRS:
            if self._by_tuple.get(flow.tuples[d]) is flow:
                del self._by_tuple[flow.tuples[d]]

    def lookup(self, t: FlowTuple) -> tuple[Flow, Dir] | None:
        flow = self._by_tuple.get(t)
        if flow is None:
            return None
        return flow, (Dir.ORIGINAL if flow.tuples[Dir.ORIGINAL] == t else Dir.REPLY)

    def flow_of(self, orig: FlowTuple) -> Flow | None:
        """The flow of the connection whose original tuple this is."""
        flow = self._by_tuple.get(orig)
        return flow if flow is not None and flow.tuples[Dir.ORIGINAL] == orig else None

    def refresh(self, flow: Flow, now: float | None = None) -> bool:
        """Traffic seen: push the deadline; True when it moved."""
        now = self.clock() if now is None else now
        if now - flow.last_used <= REFRESH_SLACK:
            return False
        flow.last_used = now
        return True

    def __iter__(self) -> Iterator[Flow]:
        for table in self.tables.values():
            yield from table.flows.values()

    def __len__(self) -> int:
        return sum(len(t.flows) for t in self.tables.values())
