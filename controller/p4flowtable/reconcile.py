"""The reconcile: after the daemon (re)connects, the switch holds exactly
the flows the daemon carries (the kernel has no counterpart: its flowtable
dies with the process that owns it).

Those flows are the ones it carried already, and every connection conntrack
says is offloaded (marked, offloadable, routed). Entries already in a kept
pipeline are adopted as they are, missing or stale directions written,
entries of no flow (orphans) deleted; the next hops likewise, but for those
of neighbours the kernel has (nexthop.py: the switch's copy of its
neighbour table; the daemon writes the missing ones after). Kernel entries
still on an offload lease that no flow carries get their state's timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable

from p4.v1 import p4runtime_pb2 as p4r

from . import entryread
from .aging import Aging
from .conntrack import ConntrackMirror, CtEntry
from .core import Flowtables
from .decide import MAX_BATCH_FLOWS, Decisions
from .events import EventBus
from .flowoffload import FlowOffload
from .ip import Held, ReadBack, entry_values, flow_entry, held_action, path_of, read_of
from .model import DIRS, Flow, FlowFlag, FlowRoute
from .nexthop import NextHop, NextHops
from .offload import P4RuntimeDriver
from .p4info import P4Schema
from .p4runtime import WriteError
from .route import RouteError, Routes, route_keys
from .ruleset import RulesetControl
from .switch import SwitchControl, deletes

log = logging.getLogger("p4ft")

YIELD_EVERY = 1000     # long loops give the event loop a turn this often
ORIGINAL, REPLY = DIRS
_UNSEEN = object()


class Reconcile:
    def __init__(self, switch: SwitchControl, schema: P4Schema, driver: P4RuntimeDriver, flowtables: Flowtables,
                 mirror: ConntrackMirror, rulesets: RulesetControl, routes: Routes, decisions: Decisions,
                 offload: FlowOffload, aging: Aging, events: EventBus, stats: collections.Counter, *,
                 ports: dict[str, int], ct_lease: float, read_apart_from: int = entryread.APART_FROM,
                 clock: Callable[[], float]):
        """read_apart_from: conntrack entries (the mirror's) from which the
        switch's entries are read and decoded by a second process
        (entryread.py)."""
        self.switch, self.schema, self.driver, self.flowtables = switch, schema, driver, flowtables
        self.mirror, self.rulesets, self.routes, self.decisions = mirror, rulesets, routes, decisions
        self.offload, self.aging, self.events, self.stats = offload, aging, events, stats
        self.ports, self.ct_lease, self.clock = ports, ct_lease, clock
        self.readback = driver.readback
        self.read_apart_from = read_apart_from
        self._ahead: tuple[entryread.FlowEntries, int, float] | None = None     # read_ahead's
        self._spare: asyncio.subprocess.Process | None = None                   # spawn_reader's

    async def spawn_reader(self) -> None:
        """At the daemon's start, before it connects to the switch: with
        read_apart_from kernel entries or more (the kernel's count), the
        second process started, so that it loads its modules (about half a
        second of a core) while the daemon connects, and asks the switch as
        soon as read_ahead gives it its order."""
        try:
            n = await self.mirror.count()
        except OSError as err:       # CtnlError among them: the reconcile reads when it runs
            log.warning("conntrack's count not known (%s): the switch is read after the dump", err)
            return
        if n is None or n < self.read_apart_from:
            return
        try:
            self._spare = await entryread.spawn()
        except OSError as err:       # the reconcile starts one (or reads itself) when it runs
            log.warning("the entry reader did not start (%s): the switch is read after the dump", err)

    async def read_ahead(self, kept: bool | None) -> None:
        """Once connected, the switch's pipeline kept (kept), before the
        conntrack dump: the read of every flow entry set going now in the
        process spawn_reader started, so that the switch answers while the
        kernel dumps. A reconcile waits for both; made one after the other,
        their times add up. The next reconcile takes the read over, unless
        a flow or next hop was written since it began (the read may have
        missed it: read again); its time then counts from this read's
        start. Otherwise (a pipeline not kept, a backup) the process is
        stopped."""
        spare, self._spare = self._spare, None
        if spare is None:
            return
        if not kept:
            await entryread.stop(spare)
            return
        reader = entryread.FlowEntries(self.switch, self.readback, self.driver.idle_timeout, True, self.stats,
                                       proc=spare)
        self._ahead = (reader, self.driver.writers.begun, self.clock())
        await reader.start()

    async def close(self) -> None:
        """A reader or a read ahead that no reconcile took (the daemon stopped first)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            await entryread.stop(spare)
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            await ahead[0].close()

    async def run(self, kept: bool) -> None:
        """Reconcile the switch (kept: its pipeline, with its entries, was kept).

        Python's cyclic garbage collector is paused meanwhile. A reconcile
        makes a few objects per entry read and per connection adopted, all
        kept or freed by reference count; with the collector on, their
        numbers set off full collections, each of which walks every object
        the daemon holds (at 100,000 flows, a sixth of the reconcile's time
        in the profile). Afterwards the objects it made are frozen
        (gc.freeze: left out of every later collection) before the
        collector is back on: otherwise all of them sit in its youngest
        generation, and its next collections walk every one of them while
        the daemon answers nothing. They are freed by reference count like
        any other when their flows go."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            await self._run(kept)
        finally:
            if enabled:
                gc.freeze()
                gc.enable()

    async def _run(self, kept: bool) -> None:
        """With the switch to itself: no flow or next hop is written by
        anyone else between its read and its writes (SwitchWriters)."""
        async with self.driver.writers.exclusive():
            await self._reconcile(kept)

    async def _reconcile(self, kept: bool) -> None:
        t0 = self.clock()
        phases = {}
        ahead, self._ahead = self._ahead, None
        if ahead is not None and not (kept and ahead[1] == self.driver.writers.begun):
            await ahead[0].close()
            ahead = None
            self.stats["reconcile.read_ahead_dropped"] += 1
        if ahead is not None:
            self.stats["reconcile.read_ahead"] += 1
            phases["read ahead of the conntrack dump"] = t0 - ahead[2]
            t0 = ahead[2]
        # the flows the switch carries or was to: offloaded ones, and those
        # whose add was queued or met the lost switch (written below, no more
        # by the offload worker). One decided but not queued yet (its
        # conntrack write under way) is left to the worker, after this.
        taken = {id(f) for f in self.offload.take_adds()}
        carried = [f for f in self.flowtables if not f.flags & FlowFlag.TEARDOWN
                   and (f.flags & FlowFlag.HW or id(f) in taken)]
        nexthops = self.driver.nexthops
        nexthops.reset()
        for entry in (await self.switch.entries(nexthops.table_id) if kept else []):
            got = nexthops.decode(entry)
            if got is not None:
                nh_id, port, src, dst = got
                nexthops.adopt(nh_id, port, src, dst, await self.routes.neighbour_on_port(port, dst))
        fresh = Fresh(self.mirror.on_lease, self.ct_lease)
        declined: collections.Counter[str] = collections.Counter()
        present: dict[tuple, Held] = {}      # every flow entry, by its key (those no flow claims: deleted)
        held: dict[tuple, Held] = {}         # and by Held.match
        strays: list[p4r.TableEntry] = []    # entries of no flow of this program's: deleted
        planner = Planner(self.schema, present, self.driver.idle_timeout, nexthops, self.readback)
        adopt = Adopting(self, held, await self._representors())
        entries = self.mirror.entries
        leased: dict = {}                    # the keys of entries on a lease (_waiting), less those adopted
        t = self.clock() if ahead is None else ahead[2]
        if kept:
            # the read first (or already, read_ahead): a second process starts
            # up and the switch answers while the daemon indexes its connections
            if ahead is None:
                reader = entryread.FlowEntries(self.switch, self.readback, self.driver.idle_timeout,
                                               len(entries) >= self.read_apart_from, self.stats)
                await reader.start()
            else:
                reader = ahead[0]
            try:
                # each connection is adopted as soon as both its entries are
                # in, while the rest of the read is on its way
                # the ruleset `waiting` is judged by: taken before, since
                # _waiting gives turns (a reload meanwhile: judged again)
                judged_by = self.rulesets.ruleset
                waiting, order = await self._waiting(leased)
                await reader.index([(w[2], w[3]) for w in order])
                join = Joining(self, waiting, order, judged_by, present, held, adopt, planner, fresh, leased)
                async with contextlib.aclosing(reader.batches()) as batches:
                    async for pairs, singles, ss, joined in batches:
                        phases.setdefault("first entries", self.clock() - t)
                        strays += ss
                        join.joined(joined)
                        for a, b in pairs:
                            join.pair(a, b)
                        for h in singles:
                            join.single(h)
            finally:
                await reader.close()
            phases["read and adopt"] = self.clock() - t
            t = self.clock()
        undecided: list[CtEntry] = []
        # the connections the join adopted have their flow: not looked at again
        by_join = fresh.keys
        for i, k in enumerate([k for k in entries if k not in by_join]):
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)     # the API, conntrack events, the switch's stream meanwhile
            # the entry as it is now, not as it was when the loop began: a
            # connection whose FIN the relay handed the kernel meanwhile is
            # not established any more (its event found no flow to hand back)
            e = entries.get(k)
            if e is None:
                continue
            name = self._adoptable(e)
            if name:
                got = adopt(e, name)     # no await between the look and the flow
                if got is None:
                    undecided.append(e)
                else:
                    fresh.add(got)
                    planner.flow(got[0])
        for i in range(0, len(undecided), MAX_BATCH_FLOWS):     # their paths looked up together
            batch = undecided[i:i + MAX_BATCH_FLOWS]
            for e, got in zip(batch, await self.decisions.decide_many(batch)):
                if isinstance(got, str):
                    self.decisions.decline(e, got)
                    declined[got] += 1
                else:
                    fresh.add(got)
                    planner.flow(got[0])
        for i, f in enumerate(carried):
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            planner.flow(f)
        plan = planner.finish()
        phases["the rest adopted or decided"] = self.clock() - t
        t = self.clock()
        plan.orphans += deletes(strays)
        failed: set[int] = set()
        try:
            await self.switch.write(plan.nexthop_writes, "next hop")
            await self.switch.write(plan.orphans, "orphan delete")
            await self.switch.write(plan.writes, "reconcile")
            await self.switch.write(plan.nexthop_orphans, "orphan next hop delete")
        except WriteError as err:
            log.error("reconciling the switch: %s", err)
            failed = {id(f) for f in plan.repaired}     # dropped below; their leases released with the rest
            leased.update(dict.fromkeys(f.key for f in plan.repaired))     # the join took out those it adopted
        now = self.clock()
        phases["write"], t = now - t, now
        # the loop takes turns with the rest of the daemon (1,000,000 flows:
        # a second each, here and in the offload marks' list below); a
        # connection torn down meanwhile waits for the reconcile to let go of
        # the switch, as during the read
        written = list(itertools.chain(plan.adopted, plan.repaired))
        for i in range(0, len(written), YIELD_EVERY):
            flows = written[i:i + YIELD_EVERY]
            if failed:
                for f in flows:
                    if id(f) in failed:
                        self.flowtables.delete(f)
                flows = [f for f in flows if id(f) not in failed]
            self.offload.offloaded_all(flows, now)
            await asyncio.sleep(0)
        # idle while the daemon was away? the read's last hits say
        events, read_back_all, reads, adopted = self.events, self.aging.read_back_all, plan.read, plan.adopted
        for i in range(0, len(adopted), YIELD_EVERY):
            flows = adopted[i:i + YIELD_EVERY]
            if events.monitors:     # each flow's ADOPT before what its read says
                for f in flows:
                    events.flow("ADOPT", f)
                    read_back_all(((f, reads[id(f)]),), now)
            else:
                read_back_all([(f, reads[id(f)]) for f in flows], now)
            await asyncio.sleep(0)
        # offload marks where a daemon before this one had not set them (it
        # died between its switch write and its conntrack write, or the flow
        # is new): the others keep the lease they have, as the kernel would
        ok = [ct for f, ct in fresh.unleased if id(f) not in failed]
        errors = await self.mirror.offloaded(ok, self.ct_lease) if ok else []
        for ct, err in zip(ok, errors):
            if err is not None:
                log.warning("conntrack refused offload marks for %s: %s", ct.orig, err)
        released = await self._release_leases(leased if kept else None)
        phases["leases"] = self.clock() - t
        self.stats["reconcile.adopted"] += len(plan.adopted)
        self.stats["reconcile.written"] += len(plan.repaired)
        self.stats["reconcile.orphans_deleted"] += len(plan.orphans)
        log.info("switch reconciled in %.2fs: %d flow(s) adopted, %d written, %d orphan entries deleted, "
                 "%d kernel lease(s) released; marked connections not offloaded: %s (%s)", self.clock() - t0,
                 len(plan.adopted), len(plan.repaired), len(plan.orphans), released, dict(declined) or "none",
                 ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()))

    async def _waiting(self, leased: dict) -> tuple[dict[tuple, tuple], list[tuple]]:
        """The connections that may be adopted, by the match of each
        direction's entry: (mirror key, the entry as it is now, both
        matches, the flowtable its mark names); and the same in a list, the
        index the reader joins pairs to. Made while the switch answers the
        read, as is the list of entries on a lease (leased, for
        _release_leases): the daemon has nothing else to do then."""
        match = self.readback.match
        waiting: dict[tuple, tuple] = {}
        order: list[tuple] = []
        over = self._over_lease()
        for i, (k, e) in enumerate(list(self.mirror.entries.items())):
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            name = self._adoptable(e)
            if name:
                mo, mr = match(e.orig), match(e.reply)
                waiting[mo] = waiting[mr] = w = (k, e, mo, mr, name)
                order.append(w)
            if over(e):
                leased[k] = None
        return waiting, order

    def _adoptable(self, e: CtEntry) -> str | None:
        """The flowtable a connection is marked for, where it has no flow
        and conntrack says it may be offloaded. Its flow looked up first:
        after the join, most connections have one."""
        if self.flowtables.flow_of(e.orig) is not None:
            return None
        name = self.rulesets.select(e.labels)
        return name if name and e.offloadable() is None else None

    async def _representors(self) -> dict[int, int]:
        """Each switch port's representor (ifindex), where it has one."""
        out = {}
        for port in set(self.ports.values()):
            try:
                out[port] = await self.routes.port_ifindex(port)
            except RouteError as err:
                log.warning("switch port %d: %s", port, err)
        return out

    def _over_lease(self) -> Callable[[CtEntry], bool]:
        """Whether an entry's timeout is above its state's (an offload
        lease), its state's timeout read once per kind of state."""
        state_timeout = self.mirror.state_timeouts()

        def over(e: CtEntry) -> bool:
            return e.timeout is not None and e.timeout > state_timeout(e)
        return over

    async def _release_leases(self, leased: dict | None) -> int:
        """Entries on an offload lease (a timeout above their state's) that no
        flow carries: their state's timeout, as at hand-back. leased: the
        keys of the entries that were on a lease when the reconcile began
        (_waiting), but for those the join adopted; None: every entry is
        looked at. No entry goes on a lease meanwhile but by this daemon,
        for a flow it carries."""
        over = self._over_lease()
        entries = self.mirror.entries
        n = 0
        batch: list[CtEntry] = []

        async def release() -> int:
            # looked at again just before: a flow decided meanwhile keeps its lease
            items = [(e, 0, self.rulesets.mark(f) if (f := self.rulesets.select(e.labels)) else 0)
                     for e in batch if self.flowtables.flow_of(e.orig) is None]
            batch.clear()
            return await self.mirror.hand_back(items, "lease release")

        for i, k in enumerate(list(entries) if leased is None else leased):
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            e = entries.get(k)
            if e is None or self.flowtables.flow_of(e.orig) is not None or not over(e):
                continue
            batch.append(e)
            if len(batch) == MAX_BATCH_FLOWS:
                n += await release()
        return n + (await release() if batch else 0)


@dataclass(slots=True)
class ReconcilePlan:
    adopted: list[Flow] = field(default_factory=list)    # both entries there, as the daemon would write them
    repaired: list[Flow] = field(default_factory=list)   # a direction missing or stale: written
    writes: list[p4r.Update] = field(default_factory=list)
    orphans: list[p4r.Update] = field(default_factory=list)  # deletes of entries no flow owns
    nexthop_writes: list[p4r.Update] = field(default_factory=list)   # before the flows' writes
    nexthop_orphans: list[p4r.Update] = field(default_factory=list)  # after them: next hops no flow names
    # id(adopted flow): what the read said of its entries (packets of each,
    # bytes of each, time since the latest hit of either or None: a FlowRead's)
    read: dict[int, tuple] = field(default_factory=dict)


class Fresh:
    """The flows the reconcile makes, adopted or decided, given with their
    conntrack entries: the connections' mirror keys (`keys`), and the
    flows whose entry is not on an offload lease yet (`unleased`,
    ConntrackMirror.on_lease), which get their offload marks once the
    switch holds their entries. Each is noted as it comes, while its entry
    is at hand: in passes over them all after the join, the entries'
    objects were fetched from memory again (0.1-0.15 s at 100,000 flows)."""

    __slots__ = ("keys", "unleased", "_on_lease", "_lease")

    def __init__(self, on_lease: Callable[[CtEntry, float], bool], lease: float):
        self.keys: set = set()
        self.unleased: list[tuple[Flow, CtEntry]] = []
        self._on_lease, self._lease = on_lease, lease

    def add(self, got: tuple[Flow, CtEntry]) -> None:
        ct = got[1]
        self.keys.add(ct.orig)
        if not self._on_lease(ct, self._lease):
            self.unleased.append(got)


class Planner:
    """What to write so that the switch holds exactly the flows given to
    `flow` (one at a time, as the reconcile finds them) and the next hops
    they name. present: the flow entries the switch holds, by Held.key;
    each flow takes its own out, and those left at `finish` are deleted.
    `nexthops` holds what the switch holds (adopted), and gets every flow's
    next hops."""

    def __init__(self, schema: P4Schema, present: dict[tuple, Held], idle_timeout: bool, nexthops: NextHops,
                 readback: ReadBack):
        self.schema, self.left, self.idle_timeout, self.nexthops = schema, present, idle_timeout, nexthops
        self.readback = readback
        self.plan = ReconcilePlan()

    def flow(self, f: Flow) -> None:
        f.nexthops = self._nexthops(f)
        self._plan(f)

    def checked(self, f: Flow, nexthops: tuple[int, int], read: tuple) -> bool:
        """A flow whose two entries the reader paired and found as the
        daemon writes them, with their own next hops and MTUs
        (entryread.Pairing), and that no one else claimed: adopted as they
        are when the flow's next hops are theirs (nexthops: the original
        direction's entry's, the reply's; read: ReconcilePlan.read's). Else
        False: the caller gives them to `recheck`."""
        f.nexthops = self._nexthops(f)
        if f.nexthops == nexthops:
            self.plan.adopted.append(f)
            self.plan.read[id(f)] = read
            return True
        return False

    def recheck(self, f: Flow, o: Held, r: Held) -> None:
        """A flow `checked` did not adopt, its entries (o: the original
        direction's) planned as `flow` plans, its next hops kept."""
        self.left[o.key] = o
        self.left[r.key] = r
        self._plan(f)

    def _nexthops(self, f: Flow) -> tuple[int, int]:
        acquire, (ro, rr) = self.nexthops.acquire, f.routes
        return acquire(f, ORIGINAL, ro).id, acquire(f, REPLY, rr).id

    def _plan(self, f: Flow) -> None:
        plan, left, schema = self.plan, self.left, self.schema
        ttl = int(f.timeout * 1e9) if self.idle_timeout else 0
        ups = []
        kept: list[Held] = []
        for d in DIRS:
            # compared as values: an entry message is built only for what
            # must be written
            layout, keys, values = entry_values(schema, f, d, True)
            old = left.pop((layout[0], keys), None)
            if old is not None and old.action == held_action(layout, values):
                kept.append(old)
                continue
            ups.append(p4r.Update(type=p4r.Update.MODIFY if old is not None else p4r.Update.INSERT,
                                  entity=p4r.Entity(table_entry=flow_entry(schema, f, d, True, ttl))))
        if ups:
            plan.repaired.append(f)
            plan.writes += ups
        else:
            plan.adopted.append(f)
            plan.read[id(f)] = read_of(kept[0], kept[1])

    def finish(self) -> ReconcilePlan:
        """The plan, once every flow has been given."""
        plan, nexthops = self.plan, self.nexthops
        new: dict[int, NextHop] = {}
        for nh in list(nexthops.by_id.values()):
            if not nh.users and not nh.held:     # held: its neighbour's (NextHops.hold)
                plan.nexthop_orphans.append(nexthops.update(nh, p4r.Update.DELETE))
                nexthops.forget(nh)
            elif not nh.written:
                new[nh.id] = nh
        # one the switch holds with other MACs (NextHop.rewrite) is MODIFYed
        plan.nexthop_writes = [nexthops.update(nh, p4r.Update.MODIFY if nh.rewrite else p4r.Update.INSERT)
                               for nh in new.values()]
        for nh in new.values():
            nh.written, nh.rewrite = True, False
        plan.orphans = deletes([self.readback.match_entry(h.key) for h in self.left.values()])
        return plan


class Joining:
    """The reconcile's join of the entries read to the connections that may
    be adopted (`waiting`, Reconcile._waiting), as the read hands them
    over: a pair (entryread.Pairing) at once, a single entry once the other
    direction's is in. Each connection is looked up as it is now, and
    nothing is awaited between that look and its flow."""

    def __init__(self, rec: Reconcile, waiting: dict[tuple, tuple], order: list[tuple], judged_by,
                 present: dict[tuple, Held], held: dict[tuple, Held], adopt: Adopting, planner: Planner, fresh: Fresh,
                 leased: dict):
        """order: `waiting`'s connections in the order of the reader's
        index (entryread.FlowEntries.index). leased: the connections on a
        lease (Reconcile._waiting): those adopted are taken out, since
        their flow keeps the lease."""
        self.rec, self.waiting, self.order, self.present, self.held = rec, waiting, order, present, held
        self.adopt, self.planner, self.fresh, self.leased = adopt, planner, fresh, leased
        self.entries, self.match = rec.mirror.entries, rec.readback.match
        self.rulesets = rec.rulesets
        self.judged_by = judged_by       # the ruleset when `waiting` began to be made

    def joined(self, j: entryread.Joined) -> None:
        """Pairs the reader joined to their connection (entryread.Joined):
        as `pair`, with the look-ups the reader made."""
        order, waiting, entries = self.order, self.waiting, self.entries
        for n, rec in enumerate(j.records):
            w = order[rec[0]]
            if waiting.get(w[2]) is w and entries.get(w[0]) is w[1]:     # unchanged since indexed
                self._join(w, rec[1:7], (rec[2], rec[5]), rec[7:], functools.partial(j.pair, n))
            else:
                o, r = j.pair(n)
                self.single(o)
                self.single(r)

    def pair(self, a: Held, b: Held) -> None:
        """Two entries the reader paired and found as the daemon writes
        them (entryread.Pairing)."""
        w = self.waiting.get(a.match)
        if w is not None:
            k, then, mo, mr, _ = w
            if mo == a.match and mr == b.match:
                o, r = a, b
            elif mo == b.match and mr == a.match:
                o, r = b, a
            else:
                o = r = None
            if o is not None and self.entries.get(k) is then:     # unchanged since indexed: the same tuples
                self._join(w, path_of(o, r), (o.nexthop, r.nexthop), read_of(o, r), lambda: (o, r))
                return
        self.single(a)
        self.single(b)

    def _join(self, w: tuple, path: tuple, nexthops: tuple[int, int], read: tuple,
              pair_of: Callable[[], tuple[Held, Held]]) -> None:
        """w's connection, unchanged since it was indexed, and its two
        entries, paired and as the daemon writes them: its flow adopted
        (Planner.checked: path is Adopting.on_path's, nexthops and read
        Planner.checked's) or planned again (Planner.recheck); where no
        flow is made, the entries are the switch's to sort out like any
        other. pair_of(): the two entries (the original's first), asked for
        only then, since the reader's come unpickled on demand."""
        _, then, mo, mr, name = w
        self.waiting.pop(mo, None)
        self.waiting.pop(mr, None)
        f = self._flow(then, name, path)
        if f is None:
            for h in pair_of():
                self.present[h.key] = self.held[h.match] = h
        elif not self.planner.checked(f, nexthops, read):
            self.planner.recheck(f, *pair_of())

    def single(self, h: Held) -> None:
        self.present[h.key] = self.held[h.match] = h
        w = self.waiting.pop(h.match, None)
        if w is None:
            return
        k, then, mo, mr, _ = w
        e = self.entries.get(k)      # as it is now
        if e is None:
            return
        if e is not then:       # replaced since: its tuples may be too
            mo, mr = self.match(e.orig), self.match(e.reply)
        o, r = self.held.get(mo), self.held.get(mr)
        if o is None or r is None:
            return            # the other direction is still to come
        self.waiting.pop(mo, None)
        self.waiting.pop(mr, None)
        # not paired by the reader: planned as any flow is
        f = self._flow(e, None, path_of(o, r))
        if f is not None:
            self.planner.flow(f)

    def _flow(self, e: CtEntry, name: str | None, path: tuple) -> Flow | None:
        """The connection's flow adopted on path (Adopting.on_path's), or
        None. name: the flowtable judged when the connection was indexed,
        for the entry as it was then: still its own when the mirror holds
        the same entry (an update replaces it) and the ruleset is the same,
        as long as no flow took the connection meanwhile (its tuples are
        then taken: the flow's add refuses them). An adopted connection
        leaves `leased`: its flow keeps its lease."""
        if name is None or self.rulesets.ruleset is not self.judged_by:
            name = self.rec._adoptable(e)
        got = self.adopt.on_path(e, name, path) if name else None
        if got is None:
            return None
        self.fresh.add(got)
        self.leased.pop(e.orig, None)       # the mirror's key
        return got[0]


class Adopting:
    """The flow of a live, marked connection whose two entries the switch
    holds, as they stand: their next hops are the ones the switch uses,
    whatever the neighbour table says while it settles after a restart. Its
    route keys are those the previous daemon decided by (its ports, the
    connection's mark): a routing change looks it up again. None when the
    switch lacks an entry or its next hop, or the flowtable the connection's
    mark names does not take both ports: it is decided anew."""

    def __init__(self, rec: Reconcile, held: dict[tuple, Held], ifindex: dict[int, int]):
        """ifindex: each switch port's representor."""
        self.rec, self.held, self.ifindex = rec, held, ifindex
        self.match = rec.readback.match
        self.devices = {p: n for n, p in rec.ports.items()}
        self.routes: dict[tuple[int, int], FlowRoute] = {}      # by (next hop, MTU): shared, they are frozen
        # by both entries' (port, next hop, MTU): what a flow's entries say
        # (ports, devices, routes, representors), or None where they say
        # nothing usable; a reconcile's flows share a few
        self.paths: dict[tuple, tuple | None] = {}

    def __call__(self, e: CtEntry, flowtable: str, o: Held | None = None, r: Held | None = None
                 ) -> tuple[Flow, CtEntry] | None:
        """flowtable: the one the connection's mark names. o, r: its entries,
        where the caller has looked them up already."""
        if o is None or r is None:
            o, r = self.held.get(self.match(e.orig)), self.held.get(self.match(e.reply))
            if o is None or r is None:
                return None
        return self.on_path(e, flowtable, path_of(o, r))

    def on_path(self, e: CtEntry, flowtable: str, k: tuple) -> tuple[Flow, CtEntry] | None:
        """As a call, for entries that say k: (port, next hop, MTU) of the
        original direction's, then of the reply's."""
        rec = self.rec
        table = rec.flowtables.tables.get(flowtable)
        if table is None:
            return None
        path = self.paths.get(k, _UNSEEN)
        if path is _UNSEEN:
            path = self.paths[k] = self._path(k)
        if path is None:
            return None
        (do, dr), ports, routes, iif = path
        devices = table.config.devices
        if do not in devices or dr not in devices:
            return None
        flow = rec.decisions.pending_flow(e, table, ports, routes, route_keys(e.orig, e.reply, iif, e.mark))
        if flow is None:
            return None
        flow.route_epoch = rec.routes.epoch
        return flow, e

    def _path(self, k: tuple) -> tuple | None:
        """((both ports' devices), (both ports), (both routes), (both
        representors)) of a flow whose entries say k (on_path's), or None."""
        po, nho, mtuo, pr, nhr, mtur = k
        ro, rr = self._route(nho, mtuo), self._route(nhr, mtur)
        iif = (self.ifindex.get(po), self.ifindex.get(pr))
        if ro is None or rr is None or None in iif:
            return None
        return (self.devices.get(po), self.devices.get(pr)), (po, pr), (ro, rr), iif

    def _route(self, nexthop: int, mtu: int) -> FlowRoute | None:
        got = self.routes.get((nexthop, mtu))
        if got is None:
            nh = self.rec.driver.nexthops.by_id.get(nexthop)
            if nh is None:
                return None
            neighbour = nh.key[1] if nh.key[1] != nh.dst_mac else ""
            got = self.routes[nexthop, mtu] = FlowRoute(nh.port, nh.src_mac, nh.dst_mac, mtu, neighbour)
        return got
