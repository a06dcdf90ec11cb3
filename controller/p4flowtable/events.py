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
import time
from dataclasses import dataclass, field

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
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE))
    dropped: int = 0          # not yet told to the monitor
    dropped_total: int = 0


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

    def publish(self, event: str, flow: dict | None = None, **fields) -> None:
        if not self.monitors:
            return
        self.published += 1
        ev = {"event": event, "time": round(time.time(), 6), **(flow or {}), **fields}
        for m in self.monitors:
            if not m.filter.matches(ev):
                continue
            try:
                m.queue.put_nowait(ev)
            except asyncio.QueueFull:
                m.dropped += 1
                m.dropped_total += 1

    def flow(self, event: str, f, **fields) -> None:
        """Publish a flow's event (a Flow, or a CtEntry p4ft does not carry);
        cheap when no monitor listens."""
        if not self.monitors:
            return
        if isinstance(f, Flow):
            flow = {**tuples_dict(*f.tuples), "flowtable": f.flowtable, "offload": bool(f.flags & FlowFlag.HW)}
        else:
            flow = {**tuples_dict(f.orig, f.reply), "flowtable": None, "offload": False}
        self.publish(event, flow, **fields)

    @staticmethod
    async def next(m: Monitor) -> dict:
        """The monitor's next event. Events are lost only while its queue is
        full; the first read after that frees a place, and a DROPPED event
        with the count takes it: after what was queued before the losses."""
        ev = await m.queue.get()
        if m.dropped:
            m.queue.put_nowait({"event": "DROPPED", "time": round(time.time(), 6), "count": m.dropped})
            m.dropped = 0
        return ev


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
