"""The offload decision (nft_flow_offload_eval): which conntrack entries
become flows in a flowtable, judged in batches.

A candidate is a conntrack entry that just became offloadable or got a
flowtable's mark. Each is judged in turn (the mark, both next hops, the
flowtable's devices, a clash with a flow already there); the conntrack
marks of those chosen are then written together and their adds queued for
the switch. Declines are remembered: a declined entry is not judged again
for RETRY_DECLINED seconds, except one declined for want of a next hop,
which is judged again at the next route or neighbour event.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from .conntrack import CtEntry
from .ip import RouteError
from .model import Flow, FlowFlag

log = logging.getLogger("p4ft")

MAX_BATCH_FLOWS = 512
RETRY_DECLINED = 1.0   # seconds before a declined flow is considered again


class Decisions:
    def __init__(self, daemon):
        """daemon: the daemon whose state it reads and writes (mirror, flowtables, rulesets, routes, offload queue, stats) (daemon.Daemon)."""
        self.d = daemon
        self.considering: set = set()
        self.candidates: collections.deque[CtEntry] = collections.deque()
        self.candidates_ready = asyncio.Event()
        self.since: dict = {}     # flow key -> clock when its offload was decided
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
            if (e := self.d.mirror.entries.get(orig)) is not None:
                self.consider(e)

    def consider(self, e: CtEntry) -> None:
        if e.orig in self.considering or self.d.waits_for_room(e.orig) or self.d.flow_of(e) is not None:
            return
        if e.offloadable() is not None:
            return
        declined = self.declined.get(e.orig)
        if declined is not None and self.d.clock() - declined < RETRY_DECLINED:
            return
        self.considering.add(e.orig)
        self.since[e.orig] = self.d.clock()
        if self.d.cpu_first is None:
            self.d.cpu_first = time.process_time()
        self.candidates.append(e)
        self.candidates_ready.set()

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
        for e in batch:
            try:
                got = await self.decide(e)
            except Exception as err:  # netlink trouble: the flow stays in the slow path
                log.warning("offload of %s failed: %r", e.orig, err)
                got = "error"
            if isinstance(got, str):
                self.decline(e, got)
            else:
                chosen.append(got)
        if not chosen:
            return
        try:
            errors = await self.d.mirror.offloaded([ct for _, ct in chosen], self.d.cfg.ct_lease)
        except Exception as err:
            errors = [err] * len(chosen)
        for (flow, ct), err in zip(chosen, errors):
            if err is None:
                self.d.queue.put_nowait(("add", flow))
                continue
            self.d.flowtables.delete(flow)
            log.warning("conntrack refused offload marks for %s: %s", ct.orig, err)
            self.decline(ct, "ct_update_failed")

    def decline(self, e: CtEntry, why: str) -> None:
        self.d.publish("REFUSED", e, reason=why)
        self.since.pop(e.orig, None)
        self.declined[e.orig] = self.d.clock()
        if why == "no_route":
            self.no_route.add(e.orig)
        self.d.stats[f"not_offloaded.{why}"] += 1
        log.debug("not offloading %s: %s", e.orig, why)

    async def decide(self, e: CtEntry) -> tuple[Flow, CtEntry] | str:
        """The flow to offload for this entry (added to its flowtable, pending),
        or why not."""
        ft = self.d.rulesets.select(e.labels)
        if ft is None:
            return "policy"      # no packet reached an offload statement (no mark)
        try:
            # where each direction leaves: ORIGINAL towards reply.src, REPLY towards orig.src
            out_orig = await self.d.routes.hop(e.reply.src)
            out_reply = await self.d.routes.hop(e.orig.src)
        except RouteError as err:
            log.debug("%s", err)
            return "no_route"
        table = self.d.flowtables.tables.get(ft)
        if table is None:
            return "flowtable_deleted"
        if out_orig.ifname not in table.config.devices or out_reply.ifname not in table.config.devices:
            return "device_not_in_flowtable"
        current = self.d.mirror.entries.get(e.orig)
        if current is None or current.offloadable() is not None or self.d.flow_of(e) is not None:
            return "changed"
        flow = self.pending_flow(e, table, (out_reply.route.port, out_orig.route.port),
                                 (out_orig.route, out_reply.route))
        return (flow, current) if flow is not None else "tuple_clash"

    def pending_flow(self, e: CtEntry, table, iif: tuple[int, int], routes) -> Flow | None:
        """The entry's flow, added to its flowtable, pending its writes; None
        when a tuple of it is already offloaded (a clash)."""
        flow = Flow(e.id, (e.orig, e.reply), table.config.name, table.config.timeout_for(e.l4proto),
                    iif=iif, routes=routes)
        try:
            self.d.flowtables.add(flow)
        except ValueError:
            return None
        flow.test_and_set(FlowFlag.PENDING)
        return flow
