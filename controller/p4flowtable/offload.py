"""Offload drivers: how flows reach a target (the kernel's nf_flow_table_offload.c).

A driver is a small Protocol: add, delete, stats. Work is queued and written
in batches, one pending operation per flow; the P4Runtime driver serves BMv2,
the embedded target and Tofino alike, since all speak P4Runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from p4.v1 import p4runtime_pb2 as p4r

from .ip import ReadBack, entry_query, flow_key
from .model import DIRS, Dir, Flow, FlowRoute
from .nexthop import NextHop, NextHops, NextHopsFull, assign
from .p4info import P4Schema, encode
from .p4runtime import Session, SwitchError, SwitchUnavailable, WriteError
from .wire import EntryEncoder

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FlowStats:
    packets: tuple[int, int]
    bytes: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the switch did not take a flow: the canonical code of its failed
    update (or of the next hop it names, with nexthop set) and the message."""
    code: str
    message: str
    nexthop: bool = False

    def __str__(self) -> str:
        return f"{'next hop refused: ' if self.nexthop else ''}{self.code}: {self.message}"

    @property
    def exists(self) -> bool:
        return self.code == "ALREADY_EXISTS"

    @property
    def table_full(self) -> bool:
        """A full table is RESOURCE_EXHAUSTED, as the spec says; BMv2's server
        reports it, like any failure of its target, as UNKNOWN. A next hop's
        refusal is a full table only when it says so."""
        return self.code == "RESOURCE_EXHAUSTED" or (self.code == "UNKNOWN" and not self.nexthop)


@dataclass(slots=True)
class BatchResult:
    done: list[Flow]
    failed: list[tuple[Flow, Refusal]]
    switch_seconds: float = 0.0     # the add's waits on the switch: its next hops' write, then its flows'


class SwitchWriters:
    """Who writes flows and next hops now. The offload worker and the reroute
    share the switch; the reconcile has it alone: it reads what the switch
    holds, forgets the next hops it knew and writes the difference, which a
    write landing meanwhile would make wrong (an INSERT the reconcile then
    repeats fails the whole of its batch with ALREADY_EXISTS)."""

    def __init__(self):
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._users = 0
        self.begun = 0      # writes entered so far: a read made before a later count may miss one

    @property
    def open(self) -> bool:
        """No reconcile holds the switch: a writer may enter() now."""
        return self._open.is_set()

    async def wait_open(self) -> None:
        await self._open.wait()

    def enter(self) -> None:
        """A write begins (only while open: no await between the check and this)."""
        assert self._open.is_set(), "a write entered while the reconcile holds the switch"
        self._users += 1
        self.begun += 1
        self._idle.clear()

    def leave(self) -> None:
        self._users -= 1
        if not self._users:
            self._idle.set()

    @contextlib.asynccontextmanager
    async def shared(self):
        """A write (not nested in another: the reconcile waits for the outer one)."""
        while not self._open.is_set():
            await self._open.wait()
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @contextlib.asynccontextmanager
    async def exclusive(self):
        """The reconcile: new writes wait, those under way are answered first."""
        while not self._open.is_set():      # another reconcile (a reconnect during the first)
            await self._open.wait()
        self._open.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open.set()


class OffloadDriver(Protocol):
    async def add(self, flows: list[Flow]) -> BatchResult: ...
    async def delete(self, flows: list[Flow]) -> BatchResult: ...
    async def stats(self, flows: list[Flow]) -> dict[int, FlowStats]: ...
    async def read(self, flows: list[Flow], last_hit: bool) -> dict[int, "FlowRead"]: ...


class P4RuntimeDriver:
    """Flow entries (flow_table_v4, flow_table_v6) and the next hops they name
    (nexthop.py) over a P4Runtime session."""

    def __init__(self, session: Session, schema: P4Schema):
        self.session = session
        self.schema = schema
        self.nexthops = NextHops(schema)
        self.encoder = EntryEncoder(schema)     # flow entries from templates (wire.py)
        self.readback = ReadBack(schema)        # and as read back
        self.nexthop_writes = 0          # next-hop updates the switch took (INSERT, MODIFY, DELETE)
        self.writers = SwitchWriters()   # the reconcile has the switch alone
        self._ahead: set[asyncio.Task] = set()   # next-hop writes ahead of their flows (prepare)
        self.table = schema.table("flow_table_v4")
        # entries carry the flow's timeout as idle_timeout_ns where the table
        # ages entries itself (BMv2, Tofino, the embedded target)
        self.idle_timeout = self.table.supports_idle_timeout

    async def _batch(self, flows: list[Flow], kind: int, with_action: bool, what: str,
                     tolerate: tuple[str, ...] = ()) -> BatchResult:
        enc = self.encoder.flow
        updates = []
        for flow in flows:
            updates += enc(kind, flow, with_action, int(flow.timeout * 1e9) if with_action and self.idle_timeout else 0)
        sent = time.monotonic()
        try:
            await self.session.write_encoded(updates, what)
        except WriteError as e:
            bad: dict[int, Refusal] = {}
            for err in e.errors:
                if err.index < 0:        # whole batch failed, no per-update detail
                    return BatchResult([], [(f, Refusal(err.code, err.message)) for f in flows])
                if err.code in tolerate:
                    continue
                bad.setdefault(err.index // 2, Refusal(err.code, err.message))
            return BatchResult([f for i, f in enumerate(flows) if i not in bad],
                               [(flows[i], why) for i, why in bad.items()], time.monotonic() - sent)
        return BatchResult(list(flows), [], time.monotonic() - sent)

    async def add(self, flows: list[Flow]) -> BatchResult:
        """Both entries of each flow, after the next hops they name that the
        switch does not hold yet. A flow that fails keeps its next hops until
        its delete (the caller removes what got in)."""
        try:
            new = assign(self.nexthops, flows)
        except NextHopsFull as e:
            return BatchResult([], [(f, Refusal("RESOURCE_EXHAUSTED", str(e), nexthop=True)) for f in flows])
        waited = 0.0
        if new:
            sent = time.monotonic()
            try:
                await self.insert_nexthops(new)
            except SwitchUnavailable:
                raise
            except SwitchError as e:
                return BatchResult([], [(f, _refusal(e, nexthop=True)) for f in flows])
            waited = time.monotonic() - sent
        res = await self._batch(flows, p4r.Update.INSERT, True, "flow add")
        res.switch_seconds += waited
        return res

    def prepare(self, flows: list[Flow]) -> asyncio.Task | None:
        """The next hops of flows decided but not added yet, INSERTed now: the
        decision's conntrack writes and the offload queue then run while the
        switch takes them, and the flows' add waits for them (insert_nexthops)
        instead of writing them after. The flows hold their next hops from here
        (release_prepared, if one is not added after all). Nothing while the
        reconcile holds the switch, or when the table has no room (the add then
        refuses the flows)."""
        if not self.writers.open:
            return None
        # flows share their routes (route.py's cache): most batches name only next hops the switch has
        by_key = self.nexthops.by_key
        if all((nh := by_key.get(r.nexthop_key)) is not None and (nh.written or nh.writing is not None)
               for r in {id(r): r for f in flows for r in f.routes}.values()):
            return None
        try:
            new = assign(self.nexthops, flows)
        except NextHopsFull:
            return None
        mine, _ = self._claim(new)
        if not mine:
            return None
        self.writers.enter()
        task = asyncio.create_task(self._insert_claimed(mine, []))
        self._ahead.add(task)
        task.add_done_callback(self._prepared)
        return task

    def _prepared(self, task: asyncio.Task) -> None:
        self.writers.leave()
        self._ahead.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # the flows' add writes them again, or refuses them with this error
            log.debug("next hops written ahead of their flows: %s", task.exception())

    def release_prepared(self, flow: Flow) -> None:
        """A prepared flow that will not be added: its next hops released, and
        those it alone named deleted once written."""
        by_id = self.nexthops.by_id
        # only what it holds: a reconcile since (NextHops.reset) may have given its ids to adopted next hops
        freed = [nh for d in DIRS if (held := by_id.get(flow.nexthops[d])) is not None and (id(flow), d) in held.users
                 and (nh := self.nexthops.release(flow, d, held.id)) is not None]
        flow.nexthops = (0, 0)
        if freed:
            task = asyncio.create_task(self._delete_freed(freed))
            self._ahead.add(task)
            task.add_done_callback(self._ahead.discard)

    async def _delete_freed(self, freed: list[NextHop]) -> None:
        written = await self._inserted(freed)
        if written:
            async with self.writers.shared():
                await self._delete_unused(written)

    @staticmethod
    async def _inserted(nhs: list[NextHop]) -> list[NextHop]:
        """Those of nhs the switch holds, once the INSERTs under way of any
        are answered."""
        for nh in nhs:
            if nh.writing is not None:
                with contextlib.suppress(SwitchError):
                    await nh.writing
        return [nh for nh in nhs if nh.written]

    async def _delete_unused(self, freed: list[NextHop], refused: type[SwitchError] = SwitchError) -> None:
        """DELETE next hops no flow names any more; a refusal (`refused`) is
        logged, the entry left unused."""
        if not freed:
            return
        try:
            await self.write_nexthops(freed, p4r.Update.DELETE)
        except refused as e:
            log.warning("deleting %d unused next hop(s): %s", len(freed), e)

    def _claim(self, nhs: list[NextHop]) -> tuple[list[NextHop], list[asyncio.Future]]:
        """The next hops this writer INSERTs (each marked as being written),
        and the writes under way that it waits for instead."""
        mine = [nh for nh in nhs if nh.writing is None and not nh.written]
        theirs = [nh.writing for nh in nhs if nh.writing is not None]
        loop = asyncio.get_running_loop()
        for nh in mine:
            nh.writing = loop.create_future()
        return mine, theirs

    async def insert_nexthops(self, nhs: list[NextHop]) -> None:
        """INSERT the next hops the switch does not hold yet. One that another
        writer is inserting right now (two add batches are at the switch at
        once, or it was written ahead of its flows: prepare) is waited for, not
        written twice; its failure is this batch's."""
        await self._insert_claimed(*self._claim(nhs))

    async def _insert_claimed(self, mine: list[NextHop], theirs: list[asyncio.Future]) -> None:
        err: BaseException | None = None
        try:
            if mine:
                await self.write_nexthops(mine, p4r.Update.INSERT)
        except BaseException as e:
            err = e
            raise
        finally:
            for nh in mine:
                fut, nh.writing = nh.writing, None
                if err is None:
                    fut.set_result(None)
                else:
                    # a lost switch stays one for the waiters: their flows are deferred, not refused
                    fut.set_exception(err if isinstance(err, SwitchUnavailable) else
                                      SwitchError(f"next hop {nh.id}: {err}"))
                    fut.exception()       # retrieved here: a batch that waited re-raises it
        for fut in theirs:
            await fut

    async def delete(self, flows: list[Flow]) -> BatchResult:
        """Both entries of each flow, then the next hops no flow names any more.
        NOT_FOUND is fine: teardown may repeat, or the switch restarted."""
        res = await self._batch(flows, p4r.Update.DELETE, False, "flow delete", ("NOT_FOUND",))
        freed = [nh for f in flows for d in DIRS if (nh := self.nexthops.release(f, d, f.nexthops[d])) is not None]
        await self._delete_unused(freed, WriteError)     # a lost switch: the caller's to handle
        return res

    async def write_nexthops(self, nhs: list[NextHop], kind: int) -> None:
        """INSERT, MODIFY or DELETE next hops (a DELETE tolerates NOT_FOUND).
        An INSERT of one the switch holds with other MACs (NextHop.rewrite)
        is its MODIFY."""
        insert, modify = p4r.Update.INSERT, p4r.Update.MODIFY
        update = self.nexthops.update
        try:
            await self.session.write([update(nh, modify if kind == insert and nh.rewrite else kind) for nh in nhs],
                                     "next hop")
        except WriteError as e:
            if kind != p4r.Update.DELETE or any(err.code != "NOT_FOUND" for err in e.errors):
                raise
        self.nexthop_writes += len(nhs)
        for nh in nhs:
            nh.written = kind != p4r.Update.DELETE
            nh.rewrite = False

    async def drop_nexthops(self, nhs: list[NextHop]) -> None:
        """DELETE next hops no flow names nor neighbour holds any more
        (NextHops.unhold), once the INSERTs under way of any are answered.
        The caller holds the switch (SwitchWriters.shared)."""
        await self._delete_unused(await self._inserted(nhs))

    async def move(self, moves: list[tuple[Flow, Dir, FlowRoute]]) -> BatchResult:
        """Directions whose path changed within the same port (another
        gateway, another MTU): each entry MODIFYed to name its new next hop,
        written first where new; the old next hops released. A direction
        whose write failed keeps naming the next hop the switch still has."""
        old = [(f, d, f.nexthops[d], f.routes[d]) for f, d, _ in moves]
        taken: dict[int, NextHop] = {}
        updates = []
        for f, d, route in moves:
            nh = self.nexthops.acquire(f, d, route)
            taken[nh.id] = nh
            _set_path(f, d, nh.id, route)
            updates.append(self.encoder.update(p4r.Update.MODIFY, f, d, True,
                                               int(f.timeout * 1e9) if self.idle_timeout else 0))
        failed: dict[int, Refusal] = {}
        try:
            await self.insert_nexthops(list(taken.values()))     # those the switch holds are skipped
        except SwitchError as e:          # no next hop, no move
            failed = {i: _refusal(e, nexthop=True) for i in range(len(moves))}
        else:
            try:
                await self.session.write_encoded(updates, "flow move")
            except WriteError as e:
                for err in e.errors:
                    for i in range(len(moves)) if err.index < 0 else (err.index,):
                        failed.setdefault(i, Refusal(err.code, err.message))
            except SwitchError as e:
                failed = {i: _refusal(e) for i in range(len(moves))}
        freed = []
        for i, (f, d, old_id, old_route) in enumerate(old):
            if i in failed:       # back to what the switch holds
                nh = self.nexthops.release(f, d, f.nexthops[d])
                _set_path(f, d, old_id, old_route)
            else:
                nh = self.nexthops.release(f, d, old_id) if old_id != f.nexthops[d] else None
            if nh is not None and nh.written:
                freed.append(nh)
        await self._delete_unused(freed)
        return BatchResult([f for i, (f, _, _) in enumerate(moves) if i not in failed],
                           [(moves[i][0], why) for i, why in failed.items()])

    async def read(self, flows: list[Flow], last_hit: bool) -> dict[int, FlowRead]:
        """Both entries of each flow, read by their match (not a table walk)."""
        ents = [p4r.Entity(table_entry=entry_query(self.schema, f, d, last_hit)) for f in flows for d in DIRS]
        want = {}
        for f in flows:
            for d in DIRS:
                want[flow_key(self.schema, f, d)] = (f, d)
        got: dict[int, list] = {}
        key = self.readback.key
        async for e in self.session.read(ents):
            te = e.table_entry
            hit = want.get(key(te))
            if hit is None:
                continue
            f, d = hit
            acc = got.setdefault(id(f), [[0, 0], [0, 0], []])
            acc[0][d], acc[1][d] = te.counter_data.packet_count, te.counter_data.byte_count
            if te.HasField("time_since_last_hit"):
                acc[2].append(te.time_since_last_hit.elapsed_ns)
        return {k: FlowRead(tuple(v[0]), tuple(v[1]), min(v[2]) if len(v[2]) == 2 else None)
                for k, v in got.items()}

    async def stats(self, flows: list[Flow]) -> dict[int, FlowStats]:
        """Direct counters of every entry of both families' tables, read in
        one wildcard request (the full poll; bench/poll_cost.py measures what
        it costs)."""
        want = {}
        for flow in flows:
            for d in DIRS:
                want[flow_key(self.schema, flow, d)] = (flow, d)
        got: dict[int, list] = {}
        ents = [p4r.Entity(direct_counter_entry=p4r.DirectCounterEntry(table_entry=p4r.TableEntry(table_id=tid)))
                for tid in self.readback.table_of.values()]
        key = self.readback.key
        n = 0
        async for e in self.session.read(ents):
            n += 1
            if n % 256 == 0:
                await asyncio.sleep(0)   # decoding a large read must not stall offloads
            dce = e.direct_counter_entry
            hit = want.get(key(dce.table_entry))
            if hit is None:
                continue
            flow, d = hit
            acc = got.setdefault(id(flow), [[0, 0], [0, 0]])
            acc[0][d] = dce.data.packet_count
            acc[1][d] = dce.data.byte_count
        return {k: FlowStats(tuple(v[0]), tuple(v[1])) for k, v in got.items()}


@dataclass(slots=True)
class FlowRead:
    """What the switch said of a flow's two entries."""
    packets: tuple[int, int]
    bytes: tuple[int, int]
    idle_ns: int | None     # time since the most recent hit of either entry, if the table ages


async def read_flows(driver: "P4RuntimeDriver", flows: list[Flow], last_hit: bool) -> dict[int, FlowRead]:
    """Counters (and time since last hit) of these flows' entries, in one read.

    A target refuses the whole read when one entry is missing (PI reads each
    entry by its match); then each flow is read alone and the missing ones are
    left out of the result."""
    try:
        return await driver.read(flows, last_hit)
    except SwitchUnavailable:
        raise
    except SwitchError:
        if len(flows) == 1:
            return {}
    out: dict[int, FlowRead] = {}
    for f in flows:
        try:
            out.update(await driver.read([f], last_hit))
        except SwitchUnavailable:
            raise
        except SwitchError:
            continue
    return out


def port_entry(schema: P4Schema, port: int, flowtable_id: int) -> p4r.TableEntry:
    table = schema.table("port_table")
    f = table.field("ingress_port")
    action = schema.action("set_flowtable")
    p = action.param("flowtable_id")
    entry = p4r.TableEntry(table_id=table.id)
    entry.match.add(field_id=f.id, exact=p4r.FieldMatch.Exact(value=encode(port, f.bitwidth)))
    entry.action.action.action_id = action.id
    entry.action.action.params.add(param_id=p.id, value=encode(flowtable_id, p.bitwidth))
    return entry


def _refusal(e: SwitchError, nexthop: bool = False) -> Refusal:
    """A failed request as a Refusal: a write's first update error, or the
    switch's failure as a whole (UNAVAILABLE)."""
    if isinstance(e, WriteError) and e.errors:
        return Refusal(e.errors[0].code, e.errors[0].message, nexthop)
    return Refusal("UNAVAILABLE" if isinstance(e, SwitchUnavailable) else "UNKNOWN", str(e), nexthop)


def _set_path(f: Flow, d: Dir, nexthop_id: int, route: FlowRoute) -> None:
    ids, routes = list(f.nexthops), list(f.routes)
    ids[d], routes[d] = nexthop_id, route
    f.nexthops, f.routes = (ids[0], ids[1]), (routes[0], routes[1])
