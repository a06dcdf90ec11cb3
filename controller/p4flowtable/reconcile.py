"""The reconcile: after the daemon (re)connects, the switch holds exactly
the flows the daemon carries (the kernel has no counterpart: its flowtable
dies with the process that owns it).

Those flows are the ones it carried already, and every connection conntrack
says is offloaded (marked, offloadable, routed). Entries already in a kept
pipeline are adopted as they are, missing or stale directions written,
entries of no flow (orphans) deleted; the next hops likewise. Kernel entries
still on an offload lease that no flow carries get their state's timeout.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import Callable

from p4.v1 import p4runtime_pb2 as p4r

from .aging import Aging
from .conntrack import IPS_SEEN_REPLY, ConntrackMirror, CtEntry
from .core import Flowtables
from .decide import MAX_BATCH_FLOWS, Decisions
from .events import EventBus
from .flowoffload import FlowOffload
from .ip import entry_fields, entry_values, flow_entry, match_tuple_of, nexthop_of_action
from .model import DIRS, Flow, FlowFlag, FlowRoute, FlowTuple
from .nexthop import NextHop, NextHops
from .offload import P4RuntimeDriver
from .p4info import P4Schema
from .p4runtime import WriteError
from .route import Routes, route_keys
from .ruleset import RulesetControl
from .switch import SwitchControl, action_of, deletes

log = logging.getLogger("p4ft")

YIELD_EVERY = 1000     # long loops give the event loop a turn this often


class Reconcile:
    def __init__(self, switch: SwitchControl, schema: P4Schema, driver: P4RuntimeDriver, flowtables: Flowtables,
                 mirror: ConntrackMirror, rulesets: RulesetControl, routes: Routes, decisions: Decisions,
                 offload: FlowOffload, aging: Aging, events: EventBus, stats: collections.Counter, *,
                 ports: dict[str, int], ct_lease: float, clock: Callable[[], float]):
        self.switch, self.schema, self.driver, self.flowtables = switch, schema, driver, flowtables
        self.mirror, self.rulesets, self.routes, self.decisions = mirror, rulesets, routes, decisions
        self.offload, self.aging, self.events, self.stats = offload, aging, events, stats
        self.ports, self.ct_lease, self.clock = ports, ct_lease, clock

    async def run(self, kept: bool) -> None:
        """Reconcile the switch (kept: its pipeline, with its entries, was kept)."""
        t0 = self.clock()
        self.offload.deferred.clear()      # adds that met the lost switch: written below
        present = await self.switch.flow_entries() if kept else {}
        nexthops = self.driver.nexthops
        nexthops.reset()
        for entry in (await self.switch.entries(nexthops.table_id) if kept else []):
            got = nexthops.decode(entry)
            if got is not None:
                nh_id, port, src, dst = got
                nexthops.adopt(nh_id, port, src, dst, await self.routes.neighbour_on_port(port, dst))
        carried = [f for f in self.flowtables if not f.flags & FlowFlag.TEARDOWN]
        fresh: list[tuple[Flow, CtEntry]] = []
        declined: collections.Counter[str] = collections.Counter()
        read = [entry_fields(e) for e in present.values()]     # each entry decoded once
        held = by_tuple(self.schema, read, nexthops)
        undecided: list[CtEntry] = []
        for i, e in enumerate(list(self.mirror.entries.values())):
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)     # the API, conntrack events, the switch's stream meanwhile
            if self.flowtables.flow_of(e.orig) is None and e.offloadable() is None and self.rulesets.select(e.labels):
                got = await self._adopt(e, held)
                if got is None:
                    undecided.append(e)
                else:
                    fresh.append(got)
        for i in range(0, len(undecided), MAX_BATCH_FLOWS):     # their paths looked up together
            batch = undecided[i:i + MAX_BATCH_FLOWS]
            for e, got in zip(batch, await self.decisions.decide_many(batch)):
                if isinstance(got, str):
                    self.decisions.decline(e, got)
                    declined[got] += 1
                else:
                    fresh.append(got)
        plan = await plan_reconcile(self.schema, carried + [f for f, _ in fresh], present, self.driver.idle_timeout,
                                    nexthops, {k: (aid, tuple(sorted(params.items()))) for k, _, aid, params in read})
        failed: set[int] = set()
        try:
            await self.switch.write(plan.nexthop_writes, "next hop")
            await self.switch.write(plan.orphans, "orphan delete")
            await self.switch.write(plan.writes, "reconcile")
            await self.switch.write(plan.nexthop_orphans, "orphan next hop delete")
        except WriteError as err:
            log.error("reconciling the switch: %s", err)
            failed = {id(f) for f in plan.repaired}     # dropped below; their leases released with the rest
        now = self.clock()
        for f in plan.adopted + plan.repaired:
            if id(f) in failed:
                self.flowtables.delete(f)
            else:
                self.offload.offloaded(f, now)
        for i, f in enumerate(plan.adopted):
            self.aging.idle(f)     # idle while the daemon was away? the switch's last hit says
            self.events.flow("ADOPT", f)
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        ok = [ct for f, ct in fresh if id(f) not in failed]
        errors = await self.mirror.offloaded(ok, self.ct_lease) if ok else []
        for ct, err in zip(ok, errors):
            if err is not None:
                log.warning("conntrack refused offload marks for %s: %s", ct.orig, err)
        released = await self._release_leases()
        self.stats["reconcile.adopted"] += len(plan.adopted)
        self.stats["reconcile.written"] += len(plan.repaired)
        self.stats["reconcile.orphans_deleted"] += len(plan.orphans)
        log.info("switch reconciled in %.2fs: %d flow(s) adopted, %d written, %d orphan entries deleted, "
                 "%d kernel lease(s) released; marked connections not offloaded: %s", self.clock() - t0,
                 len(plan.adopted), len(plan.repaired), len(plan.orphans), released, dict(declined) or "none")

    async def _adopt(self, e: CtEntry, held: dict) -> tuple[Flow, CtEntry] | None:
        """The flow of a live, marked connection whose two entries the switch
        holds, as they stand: their next hops are the ones the switch uses,
        whatever the neighbour table says while it settles after a restart.
        Its route keys are those the previous daemon decided by (its ports,
        the connection's mark): a routing change looks it up again."""
        o, r = held.get(e.orig), held.get(e.reply)
        table = self.flowtables.tables.get(self.rulesets.select(e.labels) or "")
        if o is None or r is None or table is None:
            return None
        devices = {p: n for n, p in self.ports.items()}
        if devices.get(o[0]) not in table.config.devices or devices.get(r[0]) not in table.config.devices:
            return None
        iif = (await self.routes.port_ifindex(o[0]), await self.routes.port_ifindex(r[0]))
        flow = self.decisions.pending_flow(e, table, (o[0], r[0]), (o[1], r[1]),
                                           route_keys(e.orig, e.reply, iif, e.mark))
        if flow is None:
            return None
        flow.route_epoch = self.routes.epoch
        return flow, e

    async def _release_leases(self) -> int:
        """Entries on an offload lease (a timeout above their state's) that no
        flow carries: their state's timeout, as at hand-back."""
        timeouts: dict[tuple, int] = {}
        n = 0
        for i, e in enumerate(list(self.mirror.entries.values())):
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if self.flowtables.flow_of(e.orig) is not None or e.timeout is None:
                continue
            key = (e.l4proto, e.tcp_state, bool(e.status & IPS_SEEN_REPLY))
            if key not in timeouts:
                timeouts[key] = self.mirror.state_timeout(e)
            if e.timeout > timeouts[key]:
                f = self.rulesets.select(e.labels)
                try:
                    await self.mirror.handed_back(e, 0, self.rulesets.mark(f) if f else 0)
                    n += 1
                except Exception as err:      # the entry may have just died
                    log.debug("lease of %s not released: %s", e.orig, err)
        return n


@dataclass(slots=True)
class ReconcilePlan:
    adopted: list[Flow] = field(default_factory=list)    # both entries there, as the daemon would write them
    repaired: list[Flow] = field(default_factory=list)   # a direction missing or stale: written
    writes: list[p4r.Update] = field(default_factory=list)
    orphans: list[p4r.Update] = field(default_factory=list)  # deletes of entries no flow owns
    nexthop_writes: list[p4r.Update] = field(default_factory=list)   # before the flows' writes
    nexthop_orphans: list[p4r.Update] = field(default_factory=list)  # after them: next hops no flow names


async def plan_reconcile(schema: P4Schema, flows: list[Flow], present: dict[tuple, p4r.TableEntry],
                         idle_timeout: bool, nexthops: NextHops, actions: dict[tuple, tuple] | None = None
                         ) -> ReconcilePlan:
    """What to write so that the switch holds exactly these flows' entries
    and the next hops they name (a coroutine only to give the event loop a
    turn now and then). `nexthops` holds what the switch holds (adopted),
    and gets every flow's next hops. actions: the present entries' actions
    (switch.action_of) where already decoded."""
    actions = {k: action_of(e) for k, e in present.items()} if actions is None else actions
    plan = ReconcilePlan()
    left = dict(present)
    for i, f in enumerate(flows):
        if i % 1000 == 0:
            await asyncio.sleep(0)
        f.nexthops = tuple(nexthops.acquire(f, d, f.routes[d]).id for d in DIRS)
    new: dict[int, NextHop] = {}
    for nh in list(nexthops.by_id.values()):
        if not nh.users:
            plan.nexthop_orphans.append(nexthops.update(nh, p4r.Update.DELETE))
            nexthops.forget(nh)
        elif not nh.written:
            new[nh.id] = nh
    plan.nexthop_writes = [nexthops.update(nh, p4r.Update.INSERT) for nh in new.values()]
    for nh in new.values():
        nh.written = True
    for i, f in enumerate(flows):
        if i % 1000 == 0:
            await asyncio.sleep(0)
        ttl = int(f.timeout * 1e9) if idle_timeout else 0
        ups = []
        for d in DIRS:
            # compared as values (entry_key and _action's form): an entry
            # message is built only for what must be written
            (table_id, fields, action_id, params), keys, values = entry_values(schema, f, d, True)
            key = (table_id, tuple(sorted(zip((fid for fid, _ in fields), keys))))
            old = left.pop(key, None)
            if old is not None and actions[key] == (action_id, tuple(sorted(
                    (pid, v) for (pid, _), v in zip(params, values) if pid is not None))):
                continue
            ups.append(p4r.Update(type=p4r.Update.MODIFY if old is not None else p4r.Update.INSERT,
                                  entity=p4r.Entity(table_entry=flow_entry(schema, f, d, True, ttl))))
        (plan.repaired if ups else plan.adopted).append(f)
        plan.writes += ups
    plan.orphans = deletes(left)
    return plan




def by_tuple(schema: P4Schema, read: list[tuple], nexthops: NextHops) -> dict[FlowTuple, tuple[int, FlowRoute]]:
    """The switch's flow entries as (ingress port, path) by the tuple they
    match, their next hops from those the switch holds (adopted in
    `nexthops`): what a flow adopted as it stands is made of. An entry whose
    next hop the switch does not hold is left out (it is rewritten)."""
    out = {}
    for (table_id, _), by_id, action_id, params in read:     # ip.entry_fields of each entry
        m, hop = match_tuple_of(schema, table_id, by_id), nexthop_of_action(schema, action_id, params)
        if m is None or hop is None or (nh := nexthops.by_id.get(hop[0])) is None:
            continue
        neighbour = nh.key[1] if nh.key[1] != nh.dst_mac else ""
        out[m[1]] = (m[0], FlowRoute(nh.port, nh.src_mac, nh.dst_mac, hop[1], neighbour))
    return out


