"""The reconcile has the switch to itself (offload.SwitchWriters).

It reads what the switch holds, forgets the next hops it knew and writes the
difference; a flow add landing in between made one of the two INSERTs fail
with ALREADY_EXISTS, which failed the reconcile's whole batch and dropped
every flow it was repairing. Here, on the embedded target over P4Runtime
(in-process, no root): a batch under way is answered before the reconcile
begins, adds queued meanwhile are handed to it (and not written by the
worker too), and the worker writes again once it is done.
"""

import asyncio
import collections
import ipaddress
import time
from pathlib import Path

import pytest

from p4flowtable.aging import Aging
from p4flowtable.conntrack import ConntrackMirror
from p4flowtable.core import Flowtables, FlowtableConfig
from p4flowtable.events import EventBus
from p4flowtable.flowoffload import FlowOffload
from p4flowtable.ip import ReadBack
from p4flowtable.flowoffload import MAX_BATCH_FLOWS, WRITES_IN_FLIGHT
from p4flowtable.model import Flow, FlowFlag, FlowRoute, FlowTuple, TeardownReason
from p4flowtable.offload import P4RuntimeDriver
from p4flowtable.p4info import P4Schema
from p4flowtable.p4runtime import Session
from p4flowtable.reconcile import Planner
from p4flowtable.softswitch.server import SoftSwitchServer, serve_local
from p4flowtable.switch import SwitchControl

ROOT = Path(__file__).resolve().parents[1]
JSON = ROOT / "p4src/build/flowtable.json"
CPU = 510
NEIGHBOURS = {"00:00:00:00:00:02": "192.0.2.2", "00:00:00:00:00:01": "10.0.0.1"}   # by MAC


@pytest.fixture(scope="module")
def schema():
    return P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")


@pytest.fixture
def addr():
    server, address = serve_local(SoftSwitchServer(1, CPU), workers=4)
    yield address
    server.stop(0)


def flows(first: int, n: int) -> list[Flow]:
    """n masqueraded TCP flows between ports 1 and 2, through one gateway each way."""
    out = []
    for i in range(first, first + n):
        orig = FlowTuple(ipaddress.IPv4Address(0x0A000000 + i), ipaddress.IPv4Address("192.0.2.2"), 6,
                         10000 + i % 50000, 80)
        reply = FlowTuple(orig.dst, ipaddress.IPv4Address("192.0.2.1"), 6, 80, 10000 + i % 50000)
        out.append(Flow(i, (orig, reply), "ft", 30, iif=(1, 2),
                        routes=(FlowRoute(2, "02:00:00:00:02:01", "00:00:00:00:00:02", 1500, "192.0.2.2"),
                                FlowRoute(1, "02:00:00:00:01:fe", "00:00:00:00:00:01", 1500, "10.0.0.1"))))
    return out


async def until(cond, what: str, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while not cond():
        assert time.monotonic() < end, f"not within {deadline}s: {what}"
        await asyncio.sleep(0.01)


async def held(switch: SwitchControl, schema: P4Schema, driver: P4RuntimeDriver) -> dict:
    """The flow entries the switch holds, by key (as the reconcile reads them)."""
    back = ReadBack(schema)
    out = {}
    async for batch in switch.flow_entries(driver.idle_timeout):
        for ent in batch:
            h = back.decode(ent.table_entry)
            out[h.key] = h
    return out


async def offload_rig(addr, schema: P4Schema):
    """On the embedded target, its pipeline pushed: the session, the switch,
    the driver, the flowtables (one, "ft") and a FlowOffload over them."""
    session = Session(addr, 1, 1)
    switch = SwitchControl(session, schema, JSON.read_bytes())
    assert await switch.connect(5, []) is False      # our pipeline pushed, empty
    driver = P4RuntimeDriver(session, schema)
    tables = Flowtables()
    tables.add_table(FlowtableConfig("ft", ("lan", "wan")))
    offload = FlowOffload(tables, driver, ConntrackMirror(None), None, EventBus(), collections.Counter(),
                          mark=lambda _: 0, consider=lambda _: None, ct_lease=86400, clock=time.monotonic)
    offload.aging = Aging(tables, driver, time.monotonic, idle_timeout=driver.idle_timeout, ct_lease=86400,
                          expire=offload.expired, renew=offload.renew_lease)
    return session, switch, driver, tables, offload


def queue(tables: Flowtables, offload: FlowOffload, fs: list[Flow]) -> None:
    """Flows decided: in their flowtable, pending, their adds queued."""
    for f in fs:
        tables.add(f)
        f.test_and_set(FlowFlag.PENDING)
        offload.add(f)


def test_writes_wait_while_the_reconcile_holds_the_switch(schema, addr):
    async def main():
        session, switch, driver, tables, offload = await offload_rig(addr, schema)
        stats = offload.stats
        worker = asyncio.create_task(offload.run())

        # a batch at the switch when the reconcile asks: answered first
        first = flows(0, 400)
        queue(tables, offload, first)
        await until(lambda: not len(offload.queue), "the worker takes the first batch")
        async with driver.writers.exclusive():
            assert all(f.flags & FlowFlag.HW for f in first), "the reconcile began before a write was answered"
            present = await held(switch, schema, driver)
            assert len(present) == 2 * len(first)

            # adds decided meanwhile stay queued, however many turns the worker gets
            second = flows(400, 300)
            queue(tables, offload, second)
            for _ in range(50):
                await asyncio.sleep(0)
            assert len(await held(switch, schema, driver)) == 2 * len(first), "the worker wrote during the reconcile"
            taken = offload.take_adds()
            assert [f.ct_id for f in taken] == [f.ct_id for f in second] and not len(offload.queue)

            # the reconcile writes them with the flows the switch carries, as reconcile.py does
            driver.nexthops.reset()
            for e in await switch.entries(driver.nexthops.table_id):
                nh_id, port, src, dst = driver.nexthops.decode(e)
                driver.nexthops.adopt(nh_id, port, src, dst, NEIGHBOURS[dst])
            planner = Planner(schema, present, driver.idle_timeout, driver.nexthops, driver.readback)
            for f in first + taken:
                planner.flow(f)
            plan = planner.finish()
            assert len(plan.adopted) == len(first) and len(plan.repaired) == len(second) and not plan.orphans
            await switch.write(plan.nexthop_writes, "next hop")
            await switch.write(plan.writes, "reconcile")     # a WriteError here was the bug
            for f in plan.repaired:
                offload.offloaded(f, time.monotonic())

        # the worker writes again
        third = flows(700, 200)
        queue(tables, offload, third)
        await until(lambda: all(f.flags & FlowFlag.HW for f in third), "the third batch is offloaded")
        assert len(await held(switch, schema, driver)) == 2 * (len(first) + len(second) + len(third))
        assert stats["offloaded"] == len(first) + len(third)     # the second was the reconcile's alone
        assert session.write_errors == collections.Counter(), session.write_errors
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await session.close()

    asyncio.run(main())


def test_adds_are_at_the_switch_together_and_a_delete_between_them_keeps_its_place(schema, addr):
    """FlowOffload.run's writers: queued add batches are written up to
    WRITES_IN_FLIGHT at once; a delete queued after them is sent once every
    one of them is answered, and the adds queued after the delete are sent
    once it is answered."""
    async def main():
        session, switch, driver, tables, offload = await offload_rig(addr, schema)
        offload.mirror.hand_back = lambda *a, **k: asyncio.sleep(0)      # no kernel here
        log = []
        write = session.write_encoded

        async def logged(updates, what="write"):
            log.append(("sent", what, len(updates)))
            try:
                await write(updates, what)
            finally:
                log.append(("answered", what, len(updates)))
        session.write_encoded = logged
        worker = asyncio.create_task(offload.run())
        early = flows(0, 10)
        queue(tables, offload, early)
        await until(lambda: all(f.flags & FlowFlag.HW for f in early), "the first flows offloaded")
        log.clear()
        before, after = flows(10, 4 * MAX_BATCH_FLOWS), flows(10 + 4 * MAX_BATCH_FLOWS, 2 * MAX_BATCH_FLOWS)
        queue(tables, offload, before)
        for f in early:
            offload.teardown(f, TeardownReason.OPERATOR)
        queue(tables, offload, after)
        await until(lambda: all(f.flags & FlowFlag.HW for f in after), "the last flows offloaded")
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await session.close()

        adds = [i for i, (ev, what, _) in enumerate(log) if what == "flow add" and ev == "sent"]
        delete = log.index(("sent", "flow delete", 2 * len(early)))
        at_once = max(sum(1 if ev == "sent" else -1 for ev, what, _ in log[:i + 1] if what == "flow add")
                      for i in range(len(log)))
        assert at_once == WRITES_IN_FLIGHT, log
        answered = [i for i, (ev, what, _) in enumerate(log) if what == "flow add" and ev == "answered"]
        assert len(adds) == len(answered) == 6, log
        assert sorted(answered)[3] < delete, "the delete was sent before the adds queued ahead of it were answered"
        assert log.index(("answered", "flow delete", 2 * len(early))) < adds[4], \
            "an add queued after the delete was sent before the delete was answered"

    asyncio.run(main())


def test_a_second_reconcile_waits_for_the_first(schema, addr):
    """A switch lost during the first reconcile: the next one waits for it."""
    async def main():
        session = Session(addr, 1, 1)
        await SwitchControl(session, schema, JSON.read_bytes()).connect(5, [])
        writers = P4RuntimeDriver(session, schema).writers
        order = []

        async def reconcile(name):
            async with writers.exclusive():
                order.append(f"{name} in")
                await asyncio.sleep(0.05)
                order.append(f"{name} out")

        async def write():
            async with writers.shared():
                order.append("write")

        a = asyncio.create_task(reconcile("a"))
        await asyncio.sleep(0)
        await asyncio.gather(reconcile("b"), write(), a)
        assert order[:2] == ["a in", "a out"] and order.index("b in") + 1 == order.index("b out"), order
        await session.close()

    asyncio.run(main())


def test_counters_are_read_for_both_families(schema, addr):
    """The driver's reads (aging's by match, the full poll's wildcard) find
    the entries of IPv4 and IPv6 flows alike."""
    async def main():
        session = Session(addr, 1, 1)
        await SwitchControl(session, schema, JSON.read_bytes()).connect(5, [])
        driver = P4RuntimeDriver(session, schema)
        v4 = flows(0, 3)
        v6 = []
        for f in flows(3, 3):
            o, r = (FlowTuple(ipaddress.IPv6Address(int(t.src) | 0x2001_0db8 << 96),
                              ipaddress.IPv6Address(int(t.dst) | 0x2001_0db8 << 96), t.l4proto, t.sport, t.dport)
                    for t in f.tuples)
            v6.append(Flow(f.ct_id, (o, r), "ft", 30, iif=f.iif, routes=f.routes))
        res = await driver.add(v4 + v6)
        assert len(res.done) == 6 and not res.failed
        stats = await driver.stats(v4 + v6)
        assert sorted(stats) == sorted(id(f) for f in v4 + v6)
        assert all(s.packets == (0, 0) for s in stats.values())
        read = await driver.read(v4 + v6, driver.idle_timeout)
        assert sorted(read) == sorted(id(f) for f in v4 + v6)
        await session.close()

    asyncio.run(main())
