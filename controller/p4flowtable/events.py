"""What p4ft does to flows, as events for `p4ft monitor` (like conntrack -E).

The daemon publishes; each monitor has a bounded queue of its own, so a slow
or stalled monitor loses its own events (counted, and told to it as a DROPPED
event when it reads again), never slows the daemon or another monitor.

Events (the "event" field): OFFLOAD (both entries written; after_ms is the time
from the connection becoming offloadable to then), ADOPT (taken over from the
switch after a restart), REFRESH (the kernel's lease renewed), EXPIRE (idle in
the switch), TEARDOWN (with reason, and the direction of a FIN or RST),
HANDBACK (the kernel owns the flow again), REFUSED (with the reason), LOST and
BACK (the switch), TLS_REFUSED (a handshake with it failed, with the reason), DROPPED (this monitor's queue overflowed).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from math import isfinite

from .model import L4PROTO_NAMES, Flow, FlowFlag

QUEUE = 10_000          # events a monitor may fall behind by

FLOW_EVENTS = ("OFFLOAD", "ADOPT", "REFRESH", "EXPIRE", "TEARDOWN", "HANDBACK", "REFUSED")
SWITCH_EVENTS = ("LOST", "BACK", "TLS_REFUSED")


@dataclass(slots=True)
class FlowFilter:
    """conntrack's filters: on the original direction's tuple."""
    proto: str | None = None
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    offloaded: bool | None = None
    flowtable: str | None = None

    @classmethod
    def from_args(cls, args: dict | None) -> "FlowFilter":
        a = args or {}
        f = cls(**{k: a.get(k) for k in ("proto", "src", "dst", "flowtable")})
        for k in ("sport", "dport"):
            if a.get(k) is not None:
                setattr(f, k, int(a[k]))
        if a.get("offloaded") is not None:
            f.offloaded = bool(a["offloaded"])
        return f

    def filters(self) -> bool:
        """Whether any field is set: a monitor without one takes every event."""
        return not (self.proto is None and self.src is None and self.dst is None and self.sport is None
                    and self.dport is None and self.offloaded is None and self.flowtable is None)

    def matches(self, row: dict) -> bool:
        """row: a flow as `p4ft flow list -o json` gives it (or a flow event)."""
        o = row.get("orig")
        if o is None:                      # switch events pass every filter but offloaded/flowtable
            return self.offloaded is None and self.flowtable is None
        return ((self.proto is None or row.get("proto") == self.proto)
                and (self.src is None or o["src"] == self.src)
                and (self.dst is None or o["dst"] == self.dst)
                and (self.sport is None or o["sport"] == self.sport)
                and (self.dport is None or o["dport"] == self.dport)
                and (self.offloaded is None or bool(row.get("offload")) == self.offloaded)
                and (self.flowtable is None or row.get("flowtable") == self.flowtable))


@dataclass(eq=False, slots=True)
class Monitor:
    filter: FlowFilter
    queue: deque = field(default_factory=deque)     # up to QUEUE events (Raw)
    ready: asyncio.Event = field(default_factory=asyncio.Event)    # set when the queue turns non-empty
    dropped: int = 0          # not yet told to the monitor
    dropped_total: int = 0


# What a monitor's queue holds: an event as it was published, made the text
# its client reads (event_lines; make_event is the same as a dictionary)
# only when the monitor takes it. A burst of offloads then costs the daemon
# a tuple a flow and a monitor; the words and the JSON are the monitor's,
# paid as it reads, and a stalled monitor, whose socket is full, never pays
# them. The flow: (orig, reply, flowtable, offloaded), or None for a
# switch's event.
Raw = tuple[str, float, "tuple | None", dict]


class EventBus:
    def __init__(self):
        self.monitors: set[Monitor] = set()
        self.published = 0
        self.dropped_gone = 0    # drops of monitors that have left

    def subscribe(self, flt: FlowFilter) -> Monitor:
        m = Monitor(flt)
        self.monitors.add(m)
        return m

    def unsubscribe(self, m: Monitor) -> None:
        if m in self.monitors:
            self.monitors.discard(m)
            self.dropped_gone += m.dropped_total

    def publish(self, event: str, **fields) -> None:
        """A switch's event (LOST, BACK, TLS_REFUSED)."""
        if self.monitors:
            self._put((event, time.time(), None, fields))

    def flow(self, event: str, f, **fields) -> None:
        """Publish a flow's event (a Flow, or a CtEntry p4ft does not carry);
        cheap when no monitor listens."""
        if not self.monitors:
            return
        if isinstance(f, Flow):
            flow = (*f.tuples, f.flowtable, bool(f.flags & FlowFlag.HW))
        else:
            flow = (f.orig, f.reply, None, False)
        self._put((event, time.time(), flow, fields))

    def _put(self, raw: Raw) -> None:
        self.published += 1
        row = None                  # the flow as a filter reads it, made for the first filter
        for m in self.monitors:
            flt = m.filter
            if flt.filters():
                if row is None:
                    row = flow_row(raw[2])
                if not flt.matches(row):
                    continue
            q = m.queue
            if len(q) >= QUEUE:
                m.dropped += 1
                m.dropped_total += 1
            else:
                q.append(raw)
                if len(q) == 1:
                    m.ready.set()

    @staticmethod
    async def take(m: Monitor, most: int = 256) -> list[Raw]:
        """The monitor's next events: the first to come, then up to most
        queued behind it, for one write to its client. Events are lost only
        while its queue is full; the first take after that frees a place,
        and a DROPPED event with the count takes it: after what was queued
        before the losses."""
        q = m.queue
        while not q:
            m.ready.clear()
            await m.ready.wait()
        raws = [q.popleft()]
        if m.dropped:
            q.append(("DROPPED", time.time(), None, {"count": m.dropped}))
            m.dropped = 0
        raws += [q.popleft() for _ in range(min(len(q), most - 1))]
        return raws


def make_event(raw: Raw) -> dict:
    """An event as the monitor's client reads it."""
    event, t, flow, fields = raw
    if flow is None:
        return {"event": event, "time": round(t, 6), **fields}
    return {"event": event, "time": round(t, 6), **flow_row(flow), **fields}


def event_lines(raws: list[Raw]) -> bytes:
    """The events as the monitor's client reads them, one JSON object a
    line: the text json.dumps gives make_event's dictionary, written
    without making it. Numbers are written as json.dumps writes them (their
    repr); every text (names, addresses, words) is quoted by json.dumps
    once a call, since a burst's events share a few of each."""
    dumps = json.dumps
    quoted: dict = {}

    def quote(v) -> str:
        got = quoted.get(v)
        if got is None:
            got = quoted[v] = dumps(v if v is None or isinstance(v, str) else str(v))
        return got
    v4: dict[int, str] = {}

    def address(a) -> str:
        """quote(a), an IPv4 address found by its number (its own hash is
        Python's)."""
        if a.__class__ is not IPv4Address:
            return quote(a)
        got = v4.get(a._ip)
        if got is None:
            got = v4[a._ip] = dumps(str(a))
        return got
    out = []
    for event, t, flow, fields in raws:
        line = f'{{"event": {quote(event)}, "time": {round(t, 6)!r}'
        if flow is not None:
            o, r, flowtable, offloaded = flow
            line += (f', "proto": {quote(L4PROTO_NAMES.get(o.l4proto) or str(o.l4proto))}, "orig": '
                     f'{{"src": {address(o.src)}, "dst": {address(o.dst)}, "sport": {o.sport}, "dport": {o.dport}}}, '
                     f'"reply": {{"src": {address(r.src)}, "dst": {address(r.dst)}, "sport": {r.sport}, '
                     f'"dport": {r.dport}}}, "flowtable": {quote(flowtable)}, '
                     f'"offload": {"true" if offloaded else "false"}')
        for k, v in fields.items():
            kind = type(v)
            line += (f", {quote(k)}: {v!r}" if kind is int or kind is float and isfinite(v)
                     else f", {quote(k)}: {quote(v)}" if kind is str or v is None else f", {quote(k)}: {dumps(v)}")
        out.append(line + "}\n")
    return "".join(out).encode()


def flow_row(flow: tuple | None) -> dict:
    """An event's flow as flow list shows it: what a filter matches."""
    if flow is None:
        return {}
    orig, reply, flowtable, offloaded = flow
    return {**tuples_dict(orig, reply), "flowtable": flowtable, "offload": offloaded}


def format_event(ev: dict) -> str:
    """One line, like conntrack -E."""
    if "orig" not in ev:
        extra = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("event", "time"))
        return f"[{ev['event']}] {extra}".rstrip()
    o, r = ev["orig"], ev["reply"]
    parts = [f"{'[' + ev['event'] + ']':<10}", f"{ev.get('proto', ''):<5}",
             f"src={o['src']} dst={o['dst']} sport={o['sport']} dport={o['dport']}",
             f"src={r['src']} dst={r['dst']} sport={r['sport']} dport={r['dport']}"]
    for k in ("flowtable", "reason", "direction", "after_ms"):
        if ev.get(k) is not None:
            parts.append(f"{k}={ev[k]}")
    return " ".join(parts)


def tuples_dict(orig, reply) -> dict:
    """A flow's identity as flow list and the monitor show it."""
    return {"proto": L4PROTO_NAMES.get(orig.l4proto, str(orig.l4proto)), "orig": _tuple_dict(orig),
            "reply": _tuple_dict(reply)}


def _tuple_dict(t) -> dict:
    return {"src": str(t.src), "dst": str(t.dst), "sport": t.sport, "dport": t.dport}
