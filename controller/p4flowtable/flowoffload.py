"""The owner of every flow state change (the kernel's flow_offload_add,
flow_offload_teardown and the offload work queue of nf_flow_table_offload.c).

A decided flow is queued for its add; a flow to hand back, for its delete.
One worker writes the queue's batches in order, one pending operation per
flow; it marks flows offloaded, handles what the switch refused (a full
table: the flow waits for room, admitted when deletes free entries) and
hands flows back to conntrack. Aging's callbacks (expiry, lease renewal)
land here too: no other module changes a flow's flags.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import logging
import resource
from dataclasses import dataclass, field
from typing import Callable

from .aging import Aging
from .conntrack import ConntrackMirror, CtEntry
from .core import Flowtables
from .events import EventBus
from .model import Dir, Flow, FlowFlag, FlowTuple, TeardownReason
from .offload import P4RuntimeDriver, Refusal
from .p4runtime import SwitchError, SwitchUnavailable

log = logging.getLogger("p4ft")

MAX_BATCH_FLOWS = 512
# Add batches at the switch at once (see FlowOffload.run). While the daemon
# decides a burst, the answers to its writes wait for the event loop's turn,
# so two in flight left the switch idle between them: 4 set up 12% more flows
# a second on BMv2 (docs/benchmarks.md, "Two cores shared").
WRITES_IN_FLIGHT = 4


def cpu_times() -> tuple[float, float]:
    """The process's user and kernel CPU seconds, every thread's."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


class Op(enum.Enum):
    ADD = "add"
    DELETE = "delete"


class OffloadQueue:
    """FIFO of (op, flow); batches are runs of the same op, order kept."""

    def __init__(self):
        self._items: collections.deque[tuple[Op, Flow]] = collections.deque()
        self._ready = asyncio.Event()

    def put_nowait(self, op: Op, flow: Flow) -> None:
        if not self._items:     # next_batch waits only on an empty queue
            self._ready.set()
        self._items.append((op, flow))

    def __len__(self) -> int:
        return len(self._items)

    def put_back(self, op: Op, batch: list[Flow]) -> None:
        """A batch taken but not written: first again, in its order."""
        self._items.extendleft((op, f) for f in reversed(batch))
        self._ready.set()

    def take_adds(self) -> list[Flow]:
        """Every queued add, out of the queue (deletes stay, in order)."""
        adds = [f for op, f in self._items if op is Op.ADD]
        if adds:
            self._items = collections.deque((op, f) for op, f in self._items if op is not Op.ADD)
        return adds

    async def next_batch(self, limit: int) -> tuple[Op, list[Flow]]:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        op, flow = self._items.popleft()
        batch = [flow]
        while self._items and len(batch) < limit and self._items[0][0] is op:
            batch.append(self._items.popleft()[1])
        return op, batch


@dataclass
class OffloadTiming:
    """Time-to-offload (decision -> both entries acknowledged) and the CPU a
    burst costs, for `p4ft stats` and the benchmarks."""
    since: dict = field(default_factory=dict)      # flow key -> clock when its offload was decided
    latency: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100_000))
    # of each latency sample, the part spent waiting on the switch (the add's writes: next hops, then
    # the flow's entries, each from sent to its answer seen); the rest is the controller's
    switch: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100_000))
    first_decided: float | None = None
    last_offloaded: float | None = None
    cpu_first: tuple[float, float] | None = None   # process CPU time (user, kernel) at the first decision
    cpu_last: tuple[float, float] | None = None    # ... and at the last offload since a reset

    def decided(self, key: FlowTuple, now: float) -> None:
        self.since[key] = now
        if self.cpu_first is None:
            self.cpu_first = cpu_times()

    def cpu_seconds(self) -> tuple[float, float] | None:
        """The process's CPU time (user, kernel) from the first decision to
        the last offload since a reset. The kernel's share is its work in
        the daemon's system calls: a netlink request (a route lookup, a
        conntrack update) is handled in the context of the process that
        sends it, and the sockets' I/O."""
        if self.cpu_first is None or self.cpu_last is None:
            return None
        return self.cpu_last[0] - self.cpu_first[0], self.cpu_last[1] - self.cpu_first[1]

    def reset(self) -> None:
        self.latency.clear()
        self.switch.clear()
        self.first_decided = self.last_offloaded = self.cpu_first = self.cpu_last = None


class FlowOffload:
    """Adds, refusals, the wait for room, teardown and hand-back."""

    def __init__(self, flowtables: Flowtables, driver: P4RuntimeDriver, mirror: ConntrackMirror, aging: Aging,
                 events: EventBus, stats: collections.Counter, *, mark: Callable[[str], int],
                 consider: Callable[[CtEntry], None], ct_lease: float, clock: Callable[[], float],
                 observe_latencies: Callable[[list[float]], None] = lambda s: None):
        """mark: a flowtable's ct label mark (the ruleset's); consider: a
        connection is judged for offload again (decide.py); observe_latencies:
        a batch's time-to-offload samples (the Prometheus histogram)."""
        self.flowtables, self.driver, self.mirror, self.aging = flowtables, driver, mirror, aging
        self.events, self.stats = events, stats
        self.mark, self.consider, self.ct_lease, self.clock = mark, consider, ct_lease, clock
        self.observe_latencies = observe_latencies
        self.queue = OffloadQueue()
        self.timing = OffloadTiming()
        self.deferred: list[Flow] = []       # adds that met a lost switch (the reconcile writes them: take_adds)
        self._waiting: dict[FlowTuple, tuple[CtEntry, int]] = {}   # refused by a full table: entry, its packets then

    # -- the queue ---------------------------------------------------------------------
    def prepare(self, flows: list[Flow]) -> None:
        """Decided flows, their conntrack writes under way: their new next hops
        are written now (P4RuntimeDriver.prepare), so that a flow to a
        neighbour no flow was sent to yet does not wait for two writes in a
        row after its decision."""
        self.driver.prepare(flows)

    def unprepare(self, flow: Flow) -> None:
        """A prepared flow that will not be added (its conntrack write failed)."""
        self.driver.release_prepared(flow)

    def add(self, flow: Flow) -> None:
        """A decided flow (pending, in its flowtable): its two entries are written."""
        self.queue.put_nowait(Op.ADD, flow)

    def teardown(self, flow: Flow, reason: TeardownReason, direction: Dir | None = None) -> None:
        """flow_offload_teardown: the flow goes back to the slow path; safe to repeat."""
        if flow.test_and_set(FlowFlag.TEARDOWN):
            return
        self.stats[f"teardown.{reason.value}"] += 1
        self.events.flow("TEARDOWN", flow, reason=reason.value,
                         direction=direction.name.lower() if direction is not None else None)
        flow.reason = reason
        self.queue.put_nowait(Op.DELETE, flow)

    async def run(self) -> None:
        """Writes the queue's batches in order, by WRITES_IN_FLIGHT writers.
        Each takes a batch, writes it, and takes the next as soon as the
        switch answers, in the same turn of the event loop: the next write
        waits for no other task, where a hop through the loop waits behind
        the decisions' work while a burst is decided. Adds of distinct
        flows do not depend on each other, so up to WRITES_IN_FLIGHT add
        batches are at the switch together. A delete waits until every
        earlier add is answered, and no later batch is taken until the
        delete is, which keeps each flow's operations in order. While the
        reconcile holds the switch (SwitchWriters), batches stay queued: the
        reconcile writes the adds itself (take_adds)."""
        taking = asyncio.Lock()      # a batch taken and begun by one writer at a time: in the queue's order
        adds_done = asyncio.Event()  # no add batch under way
        adds_done.set()
        adds = 0
        writers = self.driver.writers

        async def writer() -> None:
            nonlocal adds
            while True:
                async with taking:
                    op, batch = await self.queue.next_batch(MAX_BATCH_FLOWS)
                    if not writers.open:
                        self.queue.put_back(op, batch)
                        await writers.wait_open()
                        continue
                    writers.enter()     # the reconcile waits for this batch from here
                    if op is not Op.ADD:
                        try:
                            await adds_done.wait()
                            await self._write(op, batch)
                        finally:
                            writers.leave()
                        continue
                    adds += 1
                    adds_done.clear()
                try:
                    await self._write(op, batch)
                finally:
                    writers.leave()
                    adds -= 1
                    if not adds:
                        adds_done.set()

        # a bug in a write fails its writer, and the task group the others and this task
        async with asyncio.TaskGroup() as group:
            for i in range(WRITES_IN_FLIGHT):
                group.create_task(writer(), name=f"offload-writer-{i}")

    async def _write(self, op: Op, batch: list[Flow]) -> None:
        try:
            if op is Op.ADD:
                await self._add(batch)
            else:
                await self._delete(batch)
        except SwitchUnavailable as e:
            log.warning("%s of %d flow(s) deferred until the switch is back: %s", op.value, len(batch), e)
            if op is Op.ADD:
                self.deferred.extend(batch)
            else:
                # the pipeline pushed on reconnect starts with empty tables
                await self._handed_back(batch)

    def take_adds(self) -> list[Flow]:
        """For the reconcile, which holds the switch: the flows whose add is
        still to be written (queued, or deferred when they met a lost switch),
        out of the queue; the reconcile writes them with the rest."""
        flows = self.deferred + self.queue.take_adds()
        self.deferred = []
        for f in flows:
            self.timing.since.pop(f.key, None)
        return flows

    # -- add ---------------------------------------------------------------------------
    def offloaded(self, f: Flow, now: float) -> None:
        """The switch holds both entries of f: it is the switch's now."""
        self.offloaded_all((f,), now)

    def offloaded_all(self, flows, now: float) -> None:
        """offloaded() for each flow (a batch's: its flag bits set in place,
        without a call each)."""
        track, pending, hw = self.aging.track, FlowFlag.PENDING, FlowFlag.HW
        for f in flows:
            flags = f.flags
            f.flags = (flags & ~pending) | hw
            if not flags & hw:
                track(f, now)
                f.offloaded_at = now

    async def _add(self, batch: list[Flow]) -> None:
        batch = [f for f in batch if not f.flags & FlowFlag.TEARDOWN]
        if not batch:
            return
        res = await self.driver.add(batch)
        now = self.clock()
        self.stats["offload_batches"] += 1
        t = self.timing
        self.stats["offloaded"] += len(res.done)
        self.offloaded_all(res.done, now)
        # once per flow: names bound once a batch, the monitors' event only if one listens
        decided, orig = t.since.pop, Dir.ORIGINAL
        publish = self.events.flow if self.events.monitors else None
        first = None
        took: list[float] = []
        for f in res.done:
            since = decided(f.tuples[orig], None)
            if publish is not None:
                publish("OFFLOAD", f, after_ms=round(1000 * (now - since), 2) if since is not None else None)
            if since is not None:   # conntrack event or miss -> both entries written
                took.append(now - since)
                if first is None or since < first:
                    first = since
        if took:
            t.latency.extend(took)
            t.switch.extend(itertools.repeat(res.switch_seconds, len(took)))
            self.observe_latencies(took)
        if first is not None:
            t.first_decided = min(t.first_decided or first, first)
            t.last_offloaded = now
            t.cpu_last = cpu_times()
        refused = []
        for f, why in res.failed:
            if why.exists:
                self.offloaded(f, now)
            else:
                refused.append((f, why))
        if refused:
            await self._refused(refused)

    async def _refused(self, refused: list[tuple[Flow, Refusal]]) -> None:
        """Flows the switch would not take. A flow is both its directions or
        none: a direction that got in is removed. The flow waits for room in
        the slow path, its mark kept, its kernel lease back to its state's
        timeout: it is admitted, heaviest first, when deletes free entries
        (_admit_waiting), not retried on each of its packets."""
        try:
            await self.driver.delete([f for f, _ in refused])
        except SwitchError as e:
            log.warning("removing what got in of %d refused flow(s): %s", len(refused), e)
        waiting = []
        for f, why in refused:
            self.stats["table_full" if why.table_full else "offload_failed"] += 1
            self.events.flow("REFUSED", f, reason="table_full" if why.table_full else str(why))
            if not why.table_full:
                log.error("switch refused flow %s: %s", f.key, why)
            self.timing.since.pop(f.key, None)
            self.flowtables.delete(f)
            ct = self.mirror.entries.get(f.key)
            if ct is not None:
                waiting.append(ct)
        if waiting:
            # their leases back to their states' timeouts, the marks kept: together, as a delete batch's
            await self.mirror.hand_back([(ct, 0, 0) for ct in waiting], "hand-back of refused flows")
            log.warning("switch refused %d flow(s): waiting for room (%d waiting)", len(waiting),
                        len(self._waiting) + len(waiting))
            for ct, n in zip(waiting, await self.mirror.packets(waiting)):
                self._waiting[ct.orig] = (ct, n or 0)

    @property
    def waiting_for_room(self) -> int:
        """Flows refused by a full table, waiting for room."""
        return len(self._waiting)

    def waits_for_room(self, orig: FlowTuple) -> bool:
        return orig in self._waiting

    def forget(self, orig: FlowTuple) -> None:
        """The connection is gone: it waits for nothing."""
        self._waiting.pop(orig, None)

    async def _admit_waiting(self, room: int) -> None:
        """Entries were freed: the flows waiting for room, those that moved the
        most packets since they were refused first (the kernel has no such
        policy; conntrack's counters make it possible)."""
        if not self._waiting or room <= 0:
            return
        items = list(self._waiting.items())
        now = await self.mirror.packets([ct for _, (ct, _) in items])
        ranked = sorted(zip(items, now), key=lambda x: (x[1] or 0) - x[0][1][1], reverse=True)
        for (key, _), _ in ranked[:room]:
            del self._waiting[key]
            cur = self.mirror.entries.get(key)
            if cur is not None:
                self.stats["table_full_admitted"] += 1
                self.consider(cur)

    # -- delete and hand-back ------------------------------------------------------------
    async def _delete(self, batch: list[Flow]) -> None:
        res = await self.driver.delete(batch)
        now = self.clock()
        for f in batch:
            self.aging.removed(f, now)
        for f, why in res.failed:
            log.error("switch refused to delete flow %s: %s", f.key, why)
            self.stats["delete_failed"] += 1
        await self._handed_back(batch)
        await self._admit_waiting(len(batch) - len(res.failed))

    async def _handed_back(self, flows: list[Flow]) -> None:
        """flow_offload_fixup_ct: conntrack owns these connections again,
        each with its state's timeout less the time its flow sat idle in the
        switch. Every flow leaves its flowtable first (a conntrack event
        meanwhile finds no flow and is judged afresh, as after one flow's
        hand-back); their conntrack entries are then changed together."""
        now = self.clock()
        items = []
        for f in flows:
            f.clear(FlowFlag.HW | FlowFlag.PENDING)
            self.events.flow("HANDBACK", f, reason=f.reason.value if f.reason else None)
            self.flowtables.delete(f)
            if f.flags & FlowFlag.DYING:
                continue
            idle = min(now - f.last_used, f.timeout) if f.reason is TeardownReason.EXPIRED else 0
            ct = self.mirror.entries.get(f.key)
            if ct is not None:
                items.append((ct, idle, self.mark(f.flowtable)))
        if items:
            await self.mirror.hand_back(items)

    def carried(self) -> list[Flow]:
        """The flows the switch carries, or is about to."""
        return [f for f in self.flowtables if f.flags & (FlowFlag.HW | FlowFlag.PENDING)]

    async def hand_back_all(self) -> None:
        """At stop: every flow the switch carries (or is about to) removed
        from it and handed back."""
        flows = self.carried()
        if not flows:
            return
        try:
            await self.driver.delete(flows)
        except SwitchError as e:
            log.warning("could not remove flows from the switch at stop: %s", e)
        items = [(ct, 0, self.mark(f.flowtable)) for f in flows if (ct := self.mirror.entries.get(f.key)) is not None]
        await self.mirror.hand_back(items, "hand-back at stop")

    # -- aging's callbacks (aging.py) ----------------------------------------------------
    def expired(self, f: Flow) -> None:
        self.stats["expired"] += 1
        self.events.flow("EXPIRE", f, idle_s=round(self.clock() - f.last_used, 1))
        self.teardown(f, TeardownReason.EXPIRED)

    async def renew_lease(self, f: Flow) -> None:
        ct = self.mirror.entries.get(f.key)
        if ct is not None:
            await self.mirror.keepalive(ct, self.ct_lease)
            self.events.flow("REFRESH", f, lease_s=int(self.ct_lease))
