"""The daemon's API: the requests `p4ft` sends over its socket (apiserver.py),
answered from the daemon's state. Reading state and running commands is
this module's job; deciding, writing and aging stay in the daemon.
"""

from __future__ import annotations

from .conntrack import CtEntry
from .events import FlowFilter, tuples_dict
from .model import Flow, FlowFlag


class Commands:
    def __init__(self, daemon):
        """daemon: the daemon whose state it answers from (daemon.Daemon)."""
        self.d = daemon

    async def handle(self, cmd: str, args: dict):
        if cmd == "flow_list":
            return await self.flow_list(FlowFilter.from_args(args.get("filter")), bool(args.get("refresh", True)))
        if cmd == "stats":
            return self.stats_dict()
        if cmd == "flowtable_list":
            return [self.d.rulesets.info(name) for name in self.d.flowtables.tables]
        if cmd == "flowtable_add":
            return await self.d.rulesets.add_runtime(args["name"], list(args["devices"]),
                                                     float(args.get("timeout", 30.0)))
        if cmd == "flowtable_delete":
            return await self.d.rulesets.remove(self.d.flowtables.table(args["name"]).config.name)
        if cmd == "ruleset_reload":
            return await self.d.reload(args.get("path"))
        if cmd == "ping":
            return "pong"
        if cmd == "stop":
            self.d.keep_flows_on_stop = bool(args.get("keep_flows"))
            self.d.stopping.set()
            return {"keep_flows": self.d.keep_flows_on_stop}
        if cmd == "expiry_timing":
            return [r for r in self.d.aging.expiry_log if r[3] is not None]
        if cmd == "offload_timing":
            if args.get("reset"):
                self.d.offload_latency.clear()
                self.d.first_decided = self.d.last_offloaded = None
                self.d.cpu_first = self.d.cpu_last = None
                return {}
            # cheap unless the samples are asked for: benchmarks poll it
            return {"latency": list(self.d.offload_latency) if args.get("samples") else None,
                    "first_decided": self.d.first_decided,
                    "last_offloaded": self.d.last_offloaded, "offloaded": self.d.stats["offloaded"],
                    "cpu_seconds": (self.d.cpu_last - self.d.cpu_first
                                    if self.d.cpu_first is not None and self.d.cpu_last is not None else None),
                    "batches": self.d.stats["offload_batches"]}
        if cmd == "counters":
            # the event counters of `stats` without what costs O(flows)
            return {**self.d.stats, **{f"aging.{k}": v for k, v in self.d.aging.stats.items()},
                    "nexthop_writes": self.d.driver.nexthop_writes, "nexthops": len(self.d.driver.nexthops)}
        raise ValueError(f"unknown command {cmd!r}")

    def _row(self, e: CtEntry, f: Flow | None, now: float) -> dict:
        """A flow as `p4ft flow list -o json` shows it (docs/p4ft.schema.json)."""
        row = {"id": e.id, **tuples_dict(e.orig, e.reply), "l4proto": e.l4proto, "state": e.state_name,
               "offload": bool(f and f.flags & FlowFlag.HW), "flowtable": None, "pending": False}
        if f is not None:
            row.update(flowtable=f.flowtable, pending=bool(f.flags & FlowFlag.PENDING),
                       packets=list(f.packets), bytes=list(f.bytes), idle=round(now - f.last_used, 1),
                       counters_age=round(now - f.stats_at, 1) if f.stats_at else None)
            if f.flags & FlowFlag.HW:
                row["offloaded_s"] = round(now - f.offloaded_at, 2)
            if f.routes is not None:
                nhs = self.d.driver.nexthops.by_id
                row["egress"] = [{"port": r.port, "nexthop": f.nexthops[d], "neighbour": r.neighbour,
                                  "mac": nh.dst_mac if (nh := nhs.get(f.nexthops[d])) else r.dst_mac,
                                  "mtu": r.mtu, "followed": f.route_keys[d] is not None}
                                 for d, r in enumerate(f.routes)]
        return row

    async def flow_list(self, flt: FlowFilter | None = None, refresh: bool = True) -> list[dict]:
        """conntrack's entries with what p4ft does with them, those flt keeps;
        refresh: the switch's counters read first for the offloaded ones shown."""
        flt = flt or FlowFilter()
        now = self.d.clock()
        shown = [(e, f, row) for e in list(self.d.mirror.entries.values())
                 if flt.matches(row := self._row(e, f := self.d.flow_of(e), now))]
        read = [f for _, f, _ in shown if f is not None and f.flags & FlowFlag.HW] if refresh else []
        if not read:
            return [row for _, _, row in shown]
        await self.d.aging.read_now(read)
        now = self.d.clock()
        return [self._row(e, f, now) if f is not None else row for e, f, row in shown]

    def stats_dict(self) -> dict:
        d = dict(self.d.stats)
        d["role"] = "primary" if self.d.session.is_primary else "backup"
        d["election_id"] = self.d.session.election_id
        for name in self.d.punt_names.values():
            d.setdefault(f"punt.{name}", 0)
        d["flows_offloaded_now"] = sum(1 for f in self.d.flowtables if f.flags & FlowFlag.HW)
        d["nexthops"] = len(self.d.driver.nexthops)
        lat = sorted(self.d.offload_latency)
        if lat:
            d["offload_latency_ms.p50"] = round(1000 * lat[len(lat) // 2], 2)
            d["offload_latency_ms.p99"] = round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2)
        d["packet_in_dropped"] = self.d.session.dropped_packet_in
        d["punt_rate"], d["punt_burst"] = self.d.punt.rate, self.d.punt.burst
        d["punt_dropped"] = self.d.punt.total
        for port, n in sorted(self.d.punt.dropped.items()):
            d[f"punt_dropped.port.{port}"] = n
        d["monitors"] = len(self.d.events.monitors)
        d["table_full_waiting"] = self.d.waiting_for_room
        d["api_errors"] = self.d.api.errors
        for k, v in self.d.aging.stats.items():
            d[f"aging.{k}"] = v
        return d
