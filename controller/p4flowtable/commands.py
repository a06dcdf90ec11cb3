"""The daemon's API: the requests `p4ft` sends over its socket (apiserver.py),
answered from the modules' state. Reading state and running commands is
this module's job; deciding, writing and aging stay with their owners.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
from typing import Awaitable, Callable

from .aging import Aging
from .apiserver import Encoded
from .conntrack import ConntrackMirror, CtEntry
from .core import Flowtables
from .events import EventBus, FlowFilter, tuples_dict
from .flowoffload import FlowOffload
from .model import Flow, FlowFlag
from .offload import P4RuntimeDriver
from .p4runtime import Session
from .punt import PuntLimit
from .ruleset import RulesetControl


STATS_SAMPLES = 10_000    # the latest offloads whose time-to-offload `p4ft stats` summarizes
ROWS_A_TURN = 1000        # flow list rows made between the event loop's turns


class Commands:
    def __init__(self, flowtables: Flowtables, mirror: ConntrackMirror, rulesets: RulesetControl,
                 driver: P4RuntimeDriver, aging: Aging, offload: FlowOffload, session: Session, punt: PuntLimit,
                 events: EventBus, stats: collections.Counter, *, punt_names: dict[int, str],
                 clock: Callable[[], float], reload: Callable[[str | None], Awaitable[dict]],
                 stop: Callable[[bool], None], api_errors: Callable[[], int]):
        """reload: the ruleset reloaded (from a file); stop: the daemon stops,
        keeping its flows in the switch or not; api_errors: the API server's
        count of bad requests."""
        self.flowtables, self.mirror, self.rulesets, self.driver = flowtables, mirror, rulesets, driver
        self.aging, self.offload, self.session, self.punt = aging, offload, session, punt
        self.events, self.stats, self.punt_names, self.clock = events, stats, punt_names, clock
        self.reload, self.stop, self.api_errors = reload, stop, api_errors

    async def handle(self, cmd: str, args: dict):
        if cmd == "flow_list":
            return await self.flow_list(FlowFilter.from_args(args.get("filter")), bool(args.get("refresh", True)))
        if cmd == "stats":
            return self.stats_dict()
        if cmd == "flowtable_list":
            return [self.rulesets.info(name) for name in self.flowtables.tables]
        if cmd == "flowtable_add":
            return await self.rulesets.add_runtime(args["name"], list(args["devices"]),
                                                   float(args.get("timeout", 30.0)))
        if cmd == "flowtable_delete":
            return await self.rulesets.remove(self.flowtables.table(args["name"]).config.name)
        if cmd == "ruleset_reload":
            return await self.reload(args.get("path"))
        if cmd == "ping":
            return "pong"
        if cmd == "stop":
            keep = bool(args.get("keep_flows"))
            self.stop(keep)
            return {"keep_flows": keep}
        if cmd == "expiry_timing":
            return [r for r in self.aging.expiry_log if r[3] is not None]
        if cmd == "offload_timing":
            t = self.offload.timing
            if args.get("reset"):
                t.reset()
                return {}
            # cheap unless the samples are asked for: benchmarks poll it
            return {"latency": list(t.latency) if args.get("samples") else None,
                    "switch": list(t.switch) if args.get("samples") else None,
                    "first_decided": t.first_decided,
                    "last_offloaded": t.last_offloaded, "offloaded": self.stats["offloaded"],
                    "cpu_seconds": sum(cpu) if (cpu := t.cpu_seconds()) is not None else None,
                    "cpu_kernel_seconds": cpu[1] if cpu is not None else None,
                    "batches": self.stats["offload_batches"]}
        if cmd == "counters":
            # the event counters of `stats` without what costs O(flows)
            return {**self.stats, **{f"aging.{k}": v for k, v in self.aging.stats.items()},
                    "nexthop_writes": self.driver.nexthop_writes, "nexthops": len(self.driver.nexthops),
                    "nexthops_held": self.driver.nexthops.held}
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
                nhs = self.driver.nexthops.by_id
                row["egress"] = [{"port": r.port, "nexthop": f.nexthops[d], "neighbour": r.neighbour,
                                  "mac": nh.dst_mac if (nh := nhs.get(f.nexthops[d])) else r.dst_mac,
                                  "mtu": r.mtu, "followed": f.route_keys[d] is not None}
                                 for d, r in enumerate(f.routes)]
        return row

    async def flow_list(self, flt: FlowFilter | None = None, refresh: bool = True) -> Encoded:
        """conntrack's entries with what p4ft does with them, those flt keeps;
        refresh: the switch's counters read first for the offloaded ones
        shown. Each row is JSON text as soon as it is final (Encoded)."""
        flt = flt or FlowFilter()
        now = self.clock()
        entries = list(self.mirror.entries.values())
        flow_of, row_of, dumps = self.flowtables.flow_of, self._row, json.dumps
        shown = []          # (entry, flow, its row's text; None: made again after the counters' read)
        # the rows a thousand at a time, the daemon's other work between
        # them (100,000 rows held it for seconds): like conntrack -L's dump,
        # the list is not one instant's
        for i in range(0, len(entries), ROWS_A_TURN):
            if i:
                await asyncio.sleep(0)
            for e in entries[i:i + ROWS_A_TURN]:
                f = flow_of(e.orig)
                row = row_of(e, f, now)
                if flt.matches(row):
                    shown.append((e, f, None if refresh and f is not None else dumps(row)))
        read = [f for _, f, text in shown if text is None and f.flags & FlowFlag.HW]
        if read:
            await self.aging.read_now(read)
        now = self.clock()
        rows = Encoded()
        for i in range(0, len(shown), ROWS_A_TURN):
            if i:
                await asyncio.sleep(0)
            rows += [dumps(row_of(e, f, now)) if text is None else text for e, f, text in shown[i:i + ROWS_A_TURN]]
        return rows

    def stats_dict(self) -> dict:
        d = dict(self.stats)
        d["role"] = "primary" if self.session.is_primary else "backup"
        d["election_id"] = self.session.election_id
        d["p4runtime_transport"] = "mutual TLS" if self.session.tls else "plaintext"
        if self.session.last_error:
            d["switch_last_error"] = self.session.last_error
        for name in self.punt_names.values():
            d.setdefault(f"punt.{name}", 0)
        d["flows_offloaded_now"] = sum(1 for f in self.flowtables if f.flags & FlowFlag.HW)
        d["nexthops"] = len(self.driver.nexthops)
        d["nexthops_held"] = self.driver.nexthops.held     # for their neighbours, with or without flows
        d["nexthop_writes"] = self.driver.nexthop_writes
        # time-to-offload of the last STATS_SAMPLES flows, whole and split: three sorts of 100,000
        # samples would hold the event loop (and the offloads waiting on it) for tens of milliseconds
        t = self.offload.timing
        lat = list(itertools.islice(reversed(t.latency), STATS_SAMPLES))
        sw = list(itertools.islice(reversed(t.switch), STATS_SAMPLES))
        for name, xs in (("", lat), (".switch", sw), (".controller", [a - b for a, b in zip(lat, sw)])):
            xs.sort()
            if xs:
                d[f"offload_latency_ms{name}.p50"] = round(1000 * xs[len(xs) // 2], 2)
                d[f"offload_latency_ms{name}.p99"] = round(1000 * xs[min(len(xs) - 1, int(len(xs) * 0.99))], 2)
        d["packet_in_dropped"] = self.session.dropped_packet_in
        d["punt_rate"], d["punt_burst"] = self.punt.rate, self.punt.burst
        d["punt_dropped"] = self.punt.total
        for port, n in sorted(self.punt.dropped.items()):
            d[f"punt_dropped.port.{port}"] = n
        d["monitors"] = len(self.events.monitors)
        d["monitor_queued"] = sum(len(m.queue) for m in self.events.monitors)   # not yet sent to their clients
        d["table_full_waiting"] = self.offload.waiting_for_room
        d["api_errors"] = self.api_errors()
        for k, v in self.aging.stats.items():
            d[f"aging.{k}"] = v
        return d
