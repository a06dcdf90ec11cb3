"""The offload decision (nft_flow_offload_eval): which conntrack entries
become flows in a flowtable, judged in batches.

A candidate is a conntrack entry that just became offloadable or got a
flowtable's mark. Each is judged in turn (the mark, both paths, the
flowtable's devices, a clash with a flow already there); the conntrack
marks of those chosen are then written together and their adds queued for
the switch. Declines are remembered: a declined entry is not judged again
for RETRY_DECLINED seconds, except one declined for want of a next hop,
which is judged again at the next route or neighbour event.

Each direction's path is the one the kernel chose (route.py): the frames it
sent for the connection, and a route lookup with the key it routed by,
compared. As nft_flow_route takes the packet's own route for its direction
and looks the other up, the flow's ingress port of each direction is where
the other direction leaves (the kernel's iifidx).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Callable

from .conntrack import ConntrackMirror, CtEntry
from .core import Flowtables
from .events import EventBus
from .flowoffload import MAX_BATCH_FLOWS, FlowOffload
from .model import DIRS, Dir, Flow, FlowFlag, FlowRoute
from .relay import Relay
from .route import RouteError, RouteKey, Routes, route_keys
from .ruleset import RulesetControl

log = logging.getLogger("p4ft")

RETRY_DECLINED = 1.0   # seconds before a declined flow is considered again


class Decisions:
    def __init__(self, mirror: ConntrackMirror, flowtables: Flowtables, rulesets: RulesetControl, routes: Routes,
                 relay: Relay, offload: FlowOffload, events: EventBus, stats: collections.Counter, *,
                 ports: dict[str, int], ct_lease: float, clock: Callable[[], float]):
        """relay: the representors, whose frames say where the kernel sent a
        connection; offload: where chosen flows are queued for their adds."""
        self.mirror, self.flowtables, self.rulesets, self.routes = mirror, flowtables, rulesets, routes
        self.relay, self.offload, self.events, self.stats = relay, offload, events, stats
        self.ports, self.ct_lease, self.clock = ports, ct_lease, clock
        self.considering: set = set()
        self.candidates: collections.deque[CtEntry] = collections.deque()
        self.candidates_ready = asyncio.Event()
        self.declined: dict = {}  # orig tuple -> clock of its last decline
        self.no_route: set = set()   # orig tuples declined for want of a next hop

    def forget_decline(self, orig, destroyed: bool = False) -> None:
        """A conntrack event for the entry: judge it afresh; a destroyed one
        is not waiting for a next hop any more."""
        self.declined.pop(orig, None)
        if destroyed:
            self.no_route.discard(orig)

    def retry_no_route(self) -> None:
        """A route or neighbour changed: judge again, at once, the entries
        declined for want of a next hop. (The kernel asks again with the
        connection's next packet, which a quiet connection may not send.)"""
        if not self.no_route:
            return
        retry, self.no_route = self.no_route, set()
        for orig in retry:
            self.declined.pop(orig, None)
            if (e := self.mirror.entries.get(orig)) is not None:
                self.consider(e)

    def consider(self, e: CtEntry) -> None:
        if e.orig in self.considering or self.offload.waits_for_room(e.orig) or self.flowtables.flow_of(e.orig):
            return
        if e.offloadable() is not None:
            return
        now = self.clock()
        declined = self.declined.get(e.orig)
        if declined is not None and now - declined < RETRY_DECLINED:
            return
        self.considering.add(e.orig)
        self.offload.timing.decided(e.orig, now)
        if not self.candidates:     # run() waits only on an empty deque
            self.candidates_ready.set()
        self.candidates.append(e)

    async def run(self) -> None:
        """Offload decisions in batches: each candidate is judged in turn
        (next hops, policy, devices); the conntrack marks of those chosen are
        then written together, and their adds queued. A burst of new flows
        thus costs one pass and one round of netlink requests per batch."""
        while True:
            while not self.candidates:
                self.candidates_ready.clear()
                await self.candidates_ready.wait()
            n = min(len(self.candidates), MAX_BATCH_FLOWS)
            batch = [self.candidates.popleft() for _ in range(n)]
            try:
                await self._batch(batch)
            finally:
                for e in batch:
                    self.considering.discard(e.orig)

    async def _batch(self, batch: list[CtEntry]) -> None:
        chosen: list[tuple[Flow, CtEntry]] = []
        try:
            judged = await self.decide_many(batch)
        except Exception as err:  # netlink trouble: the flows stay in the slow path
            log.warning("offload of %d flow(s) failed: %r", len(batch), err)
            judged = ["error"] * len(batch)
        for e, got in zip(batch, judged):
            if isinstance(got, str):
                self.decline(e, got)
            else:
                chosen.append(got)
        if not chosen:
            return
        # their next hops go to the switch while conntrack takes the offload marks
        self.offload.prepare([flow for flow, _ in chosen])
        try:
            errors = await self.mirror.offloaded([ct for _, ct in chosen], self.ct_lease)
        except Exception as err:
            errors = [err] * len(chosen)
        for (flow, ct), err in zip(chosen, errors):
            if err is None:
                self.offload.add(flow)
                continue
            self.offload.unprepare(flow)
            self.flowtables.delete(flow)
            log.warning("conntrack refused offload marks for %s: %s", ct.orig, err)
            self.decline(ct, "ct_update_failed")

    def decline(self, e: CtEntry, why: str) -> None:
        self.events.flow("REFUSED", e, reason=why)
        self.offload.timing.since.pop(e.orig, None)
        self.declined[e.orig] = self.clock()
        if why == "no_route":
            self.no_route.add(e.orig)
        self.stats[f"not_offloaded.{why}"] += 1
        log.debug("not offloading %s: %s", e.orig, why)

    async def decide_many(self, batch: list[CtEntry]) -> list[tuple[Flow, CtEntry] | str]:
        """Per entry, the flow to offload (added to its flowtable, pending), or
        why not; the paths of all looked up together. Each entry was found
        offloadable when it was chosen (consider, the reconcile's _adoptable)."""
        out: list = []
        tables: list = []
        for e in batch:
            ft = self.rulesets.select(e.labels)
            table = self.flowtables.tables.get(ft) if ft is not None else None
            # no packet reached an offload statement (no mark), or its flowtable is gone
            out.append("policy" if ft is None else ("flowtable_deleted" if table is None else None))
            tables.append(table)
        todo = [i for i, why in enumerate(out) if why is None]
        epoch = self.routes.epoch       # the routing the lookups below see (or a later one)
        paths = await self.paths([batch[i] for i in todo])
        names = {p: n for n, p in self.ports.items()}
        for i, got in zip(todo, paths):
            e, table = batch[i], tables[i]
            if isinstance(got, str):
                out[i] = got
                continue
            routes, keys = got
            devices = table.config.devices
            if names.get(routes[0].port) not in devices or names.get(routes[1].port) not in devices:
                out[i] = "device_not_in_flowtable"
                continue
            # the entry as it is now (an event replaces it, never changes it:
            # the one judged offloadable when considered needs no second look)
            current = self.mirror.entries.get(e.orig)
            if current is None or (current is not e and current.offloadable() is not None) \
                    or self.flowtables.flow_of(e.orig) is not None:
                out[i] = "changed"
                continue
            flow = self.pending_flow(e, table, (routes[Dir.REPLY].port, routes[Dir.ORIGINAL].port), routes, keys)
            if flow is not None:
                flow.route_epoch = epoch
            out[i] = (flow, current) if flow is not None else "tuple_clash"
        return out

    async def paths(self, batch: list[CtEntry]) -> list[tuple[tuple[FlowRoute, FlowRoute], tuple] | str]:
        """Per entry, both directions' paths and the keys that reproduce them
        (None where only the frames the kernel sent do), or why there are none.

        Where each direction's packets come in is where the other direction
        leaves (the kernel's iifidx) as seen, else where its punted packets came
        in, else the router's own route towards the other direction's
        destination. Frames seen before the last routing change are not used. Each
        direction is then looked up with its full key; where the kernel was
        seen sending the direction elsewhere, what it did wins."""
        r = self.routes
        self.relay.drain()      # frames the kernel sent just now
        out: list = [None] * len(batch)
        seen = []
        bare = []
        for i, e in enumerate(batch):
            o, rp = e.orig, e.reply
            eg = (r.egress(rp.reversed()), r.egress(o.reversed()))
            inp = [eg[1].port if eg[1] else r.ingress(o), eg[0].port if eg[0] else r.ingress(rp)]
            seen.append((eg, inp))
            if inp[0] is None:
                bare.append((i, Dir.ORIGINAL, (None, o.src)))
            if inp[1] is None:
                bare.append((i, Dir.REPLY, (None, rp.src)))
        if bare:
            for (i, d, _), got in zip(bare, await r.resolve([q for _, _, q in bare])):
                if isinstance(got, RouteError):
                    log.debug("%s", got)
                    out[i] = "no_route"
                else:
                    seen[i][1][d] = got.port
        # each port's interface once a batch (a batch's flows come in on a few ports)
        ifindex: dict[int, int | RouteError] = {}
        keyed: list[tuple[int, tuple[RouteKey, RouteKey]]] = []
        for i, e in enumerate(batch):
            if out[i] is not None:
                continue
            inp = seen[i][1]
            iif = []
            for p in inp:
                if (x := ifindex.get(p)) is None:
                    try:
                        x = ifindex[p] = await r.port_ifindex(p)
                    except RouteError as err:
                        x = ifindex[p] = err
                iif.append(x)
            if isinstance(iif[0], RouteError) or isinstance(iif[1], RouteError):
                log.debug("%s", iif[0] if isinstance(iif[0], RouteError) else iif[1])
                out[i] = "no_route"
                continue
            keyed.append((i, route_keys(e.orig, e.reply, iif, e.mark)))
        got = await r.resolve([(k, None) for _, keys in keyed for k in keys])
        for n, (i, keys) in enumerate(keyed):
            e, eg = batch[i], seen[i][0]
            g0, g1 = got[2 * n], got[2 * n + 1]
            if eg[0] is None and eg[1] is None and g0.__class__ is FlowRoute and g1.__class__ is FlowRoute:
                out[i] = ((g0, g1), keys)   # no frame seen to compare with: both lookups stand
                continue
            routes: list[FlowRoute] = []
            kept: list[RouteKey | None] = []
            for d in DIRS:
                g, o = got[2 * n + d], eg[d]
                key: RouteKey | None = keys[d]
                if o is not None and (isinstance(g, RouteError) or (g.port, g.dst_mac) != (o.port, o.dst_mac)):
                    log.info("%s %s: the kernel sent it out of port %d to %s; a lookup with the connection's key "
                             "says %s: the frames win, and a routing change hands the flow back", e.orig,
                             d.name.lower(), o.port, o.dst_mac, g if isinstance(g, RouteError) else
                             f"port {g.port} to {g.dst_mac}")
                    try:
                        g = await r.from_frame(o, e.orig.src.version)
                    except RouteError as err:
                        g = err
                    key = None
                if isinstance(g, RouteError):
                    log.debug("%s", g)
                    out[i] = "no_route"
                    break
                routes.append(g)
                kept.append(key)
            else:
                out[i] = ((routes[0], routes[1]), (kept[0], kept[1]))
        return out

    def pending_flow(self, e: CtEntry, table, iif: tuple[int, int], routes, keys=(None, None)) -> Flow | None:
        """The entry's flow, added to its flowtable, pending its writes; None
        when a tuple of it is already offloaded (a clash)."""
        config = table.config
        flow = Flow(e.id, (e.orig, e.reply), config.name, config.timeout_for(e.orig.l4proto),
                    iif=iif, routes=routes, route_keys=keys, flags=FlowFlag.PENDING)
        try:
            self.flowtables.add(flow)
        except ValueError:
            return None
        return flow
