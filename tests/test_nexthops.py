"""The next-hop table's bookkeeping (nexthop.py): one next hop per neighbour,
shared by the flows sent to it, written before them and freed after the last."""

import ipaddress
from pathlib import Path

import pytest
from p4.v1 import p4runtime_pb2 as p4r

from p4flowtable.ip import ReadBack, flow_entry
from p4flowtable.model import Dir, Flow, FlowRoute, FlowTuple
from p4flowtable.nexthop import NextHops, NextHopsFull, assign
from p4flowtable.p4info import P4Schema

ROOT = Path(__file__).resolve().parents[1]
A = ipaddress.IPv4Address
WAN = FlowRoute(2, "02:00:00:00:02:01", "00:00:00:00:00:02", 1500, "192.0.2.2")


@pytest.fixture(scope="module")
def schema():
    return P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")


def flow(i: int, lan_host: int = 1, wan: FlowRoute = WAN) -> Flow:
    orig = FlowTuple(A(f"10.0.1.{lan_host}"), A("203.0.113.10"), 17, 40000 + i, 53)
    reply = FlowTuple(A("203.0.113.10"), A("192.0.2.1"), 17, 53, 61000 + i)
    lan = FlowRoute(1, "02:00:00:00:01:fe", f"00:00:00:00:01:{lan_host:02x}", 1500, f"10.0.1.{lan_host}")
    return Flow(i, (orig, reply), "ft", 30, iif=(1, 2), routes=(wan, lan))


def test_flows_to_one_neighbour_share_one_next_hop_freed_after_the_last(schema):
    nhs = NextHops(schema)
    flows = [flow(i) for i in range(3)]
    new = assign(nhs, flows)
    assert len(new) == 2 and len(nhs) == 2                # the gateway, and the one LAN host
    assert len({f.nexthops for f in flows}) == 1
    for nh in new:
        nh.written = True
    flows.append(flow(9, lan_host=2))
    assert assign(nhs, flows[3:]) == [nhs.of_neighbour(1, "10.0.1.2")]   # only the new LAN host
    wan_id = flows[0].nexthops[Dir.ORIGINAL]
    assert nhs.release(flows[3], Dir.ORIGINAL, wan_id) is None
    assert nhs.release(flows[0], Dir.ORIGINAL, wan_id) is None
    assert nhs.release(flows[1], Dir.ORIGINAL, wan_id) is None
    freed = nhs.release(flows[2], Dir.ORIGINAL, wan_id)
    assert freed is not None and freed.id == wan_id and nhs.of_neighbour(2, "192.0.2.2") is None


def test_a_flow_entry_names_its_next_hop_and_keeps_the_route_mtu(schema):
    nhs = NextHops(schema)
    f = flow(1, wan=FlowRoute(2, "02:00:00:00:02:01", "00:00:00:00:00:02", 1400, "192.0.2.2"))
    assign(nhs, [f])
    back = ReadBack(schema)
    held = back.decode(flow_entry(schema, f, Dir.ORIGINAL))
    assert (held.nexthop, held.mtu, held.port, held.match) == (f.nexthops[Dir.ORIGINAL], 1400, f.iif[Dir.ORIGINAL],
                                                               back.match(f.tuples[Dir.ORIGINAL]))
    nh = nhs.by_id[f.nexthops[Dir.ORIGINAL]]
    assert nhs.decode(nhs.entry(nh)) == (nh.id, 2, "02:00:00:00:02:01", "00:00:00:00:00:02")
    assert nhs.update(nh, p4r.Update.DELETE).entity.table_entry.action.action.action_id == 0


def test_adopted_next_hops_keep_their_ids(schema):
    nhs = NextHops(schema)
    nhs.adopt(77, 2, "02:00:00:00:02:01", "00:00:00:00:00:02", "192.0.2.2")
    f = flow(1)
    new = assign(nhs, [f])
    assert f.nexthops[Dir.ORIGINAL] == 77 and all(nh.id != 77 for nh in new)


def test_a_next_hop_adopted_of_unknown_neighbour_is_its_neighbours_once_known(schema):
    """After a restart the kernel has flushed the representors' neighbours:
    the switch's next hops are adopted by MAC, and become their neighbour's
    when it is resolved again, by a flow's route or a neighbour event, so
    that no second next hop to the same MAC is written and the neighbour's
    changes reach the flows adopted."""
    nhs = NextHops(schema)
    nhs.adopt(77, 2, "02:00:00:00:02:01", "00:00:00:00:00:02", "")
    adopted = flow(1, wan=FlowRoute(2, "02:00:00:00:02:01", "00:00:00:00:00:02", 1500, ""))
    assign(nhs, [adopted])
    assert adopted.nexthops[Dir.ORIGINAL] == 77 and nhs.of_neighbour(2, "192.0.2.2") is None
    decided = flow(2)                       # its route resolved through the neighbour
    new = assign(nhs, [decided])
    assert decided.nexthops[Dir.ORIGINAL] == 77 and all(nh.id != 77 for nh in new)
    assert nhs.of_neighbour(2, "192.0.2.2") is nhs.by_id[77]
    late = flow(3, wan=FlowRoute(2, "02:00:00:00:02:01", "00:00:00:00:00:02", 1500, ""))   # adopted after
    assign(nhs, [late])
    assert late.nexthops[Dir.ORIGINAL] == 77
    for f in (adopted, decided, late):
        nhs.release(f, Dir.ORIGINAL, 77)
    assert 77 not in nhs.by_id and not any(nh.id == 77 for nh in nhs.by_key.values()), "both its keys forgotten"

    # by a neighbour event; not where the MAC or the port's MAC differs, or the neighbour has its own
    nhs.adopt(78, 2, "02:00:00:00:02:01", "00:00:00:00:00:02", "")
    assert nhs.learn(2, "192.0.2.2", "00:00:00:00:00:03") is None
    assert nhs.learn(2, "192.0.2.2", "00:00:00:00:00:02", "02:00:00:00:02:99") is None
    assert nhs.learn(2, "192.0.2.2", "00:00:00:00:00:02") is nhs.by_id[78] is nhs.of_neighbour(2, "192.0.2.2")
    assert nhs.learn(2, "192.0.2.9", "00:00:00:00:00:02") is None       # learnt once
    nhs.moved(nhs.by_id[78], "00:00:00:00:00:05")                        # the neighbour's new MAC
    assert nhs.by_key.get((2, "00:00:00:00:00:02")) is None and nhs.of_neighbour(2, "192.0.2.2").id == 78
    nhs.adopt(79, 2, "02:00:00:00:02:01", "00:00:00:00:00:04", "")
    assert nhs.learn(2, "192.0.2.2", "00:00:00:00:00:04") is None       # the neighbour has one


def test_a_route_of_unknown_neighbour_shares_the_next_hop_of_its_neighbour(schema):
    """The other order (the switch's flows written anew after its restart): a
    flow adopted by MAC after one decided through the neighbour."""
    nhs = NextHops(schema)
    decided = flow(1)
    for nh in assign(nhs, [decided]):
        nh.written = True
    by_mac = FlowRoute(2, "02:00:00:00:02:01", "00:00:00:00:00:02", 1500, "")
    adopted = [flow(i, wan=by_mac) for i in (2, 3)]
    assert assign(nhs, adopted) == []
    assert {f.nexthops[Dir.ORIGINAL] for f in adopted} == {decided.nexthops[Dir.ORIGINAL]}
    other = flow(4, wan=FlowRoute(2, "02:00:00:00:02:01", "00:00:00:00:00:09", 1500, ""))
    assert [nh.key for nh in assign(nhs, [other])] == [(2, "00:00:00:00:00:09")]   # no such neighbour: its own


def test_ids_run_out_with_a_clear_error_and_come_back(schema):
    nhs = NextHops(schema)
    nhs.size = 4      # ids 1..3
    flows = [flow(i, lan_host=i + 1) for i in range(2)]
    assign(nhs, flows)                                  # the gateway and two LAN hosts
    with pytest.raises(NextHopsFull, match="in use"):
        assign(nhs, [flow(5, lan_host=9)])
    nhs.release(flows[0], Dir.REPLY, flows[0].nexthops[Dir.REPLY])
    assert assign(nhs, [flow(6, lan_host=10)])


def on_embedded_target(schema, test) -> None:
    """test(session, driver, held) against the embedded target over
    P4Runtime; held() is its nexthop_table: id -> the neighbour's MAC."""
    import asyncio
    from p4flowtable.offload import P4RuntimeDriver
    from p4flowtable.p4runtime import Session
    from p4flowtable.softswitch.server import SoftSwitchServer, serve_local

    impl = SoftSwitchServer(1, 510)
    server, addr = serve_local(impl, workers=2)

    def held() -> dict[int, int]:
        t = impl.pipeline.tables[schema.table("nexthop_table").id].table
        return {e.key[0]: e.data[2] for e in t.by_key.values()}

    async def main():
        s = Session(addr, 1, 1)
        await s.connect(5)
        await s.set_pipeline(schema.p4info, (ROOT / "p4src/build/flowtable.json").read_bytes())
        try:
            await test(s, P4RuntimeDriver(s, schema), held)
        finally:
            await s.close()

    try:
        asyncio.run(main())
    finally:
        server.stop(0)


def test_next_hops_are_written_ahead_of_their_flows_and_freed_if_one_is_not_added(schema):
    """P4RuntimeDriver.prepare, against the embedded target over P4Runtime:
    a decided flow's new next hops are written at once, its add then writes
    only its entries; a batch naming only next hops the switch has writes
    nothing ahead; a prepared flow that is not added frees what it alone named."""
    import asyncio

    async def main(s, driver, held):
        first, second, third = flow(1), flow(2), flow(3, lan_host=7)
        writes = s.writes
        ahead = driver.prepare([first])
        assert ahead is not None
        res = await driver.add([first])          # before the write ahead is answered: it waits for it
        assert res.done == [first] and not res.failed
        assert s.writes - writes == 2, "next hops once, ahead; then the flow's entries"
        assert set(held()) == set(first.nexthops)
        writes = s.writes
        assert driver.prepare([second]) is None, "its next hops are the switch's already"
        assert (await driver.add([second])).done == [second] and s.writes - writes == 1
        assert driver.prepare([third]) is not None
        await asyncio.sleep(0)
        lan = third.nexthops[Dir.REPLY]
        assert lan not in first.nexthops
        driver.release_prepared(third)           # its conntrack write failed, say
        for _ in range(100):
            if lan not in held():
                break
            await asyncio.sleep(0.02)
        assert set(held()) == set(first.nexthops), "the LAN host's next hop deleted, the shared gateway's kept"
        assert third.nexthops == (0, 0) and driver.nexthops.by_id.keys() == set(first.nexthops)

    on_embedded_target(schema, main)


def test_a_neighbours_next_hop_is_held_without_flows_until_the_neighbour_goes(schema):
    """NextHops.hold: the kernel's neighbour on a switch port has its next hop
    before any flow, its flows share it, the last leaving keeps it; it goes
    with the neighbour, at once or after its last flow."""
    nhs = NextHops(schema)
    held = nhs.hold(2, "192.0.2.2", WAN.src_mac, WAN.dst_mac)
    assert held is not None and not held.written and nhs.held == 1
    assert nhs.hold(2, "192.0.2.2", WAN.src_mac, WAN.dst_mac) is held and nhs.held == 1
    held.written = True
    flows = [flow(i) for i in range(2)]
    new = assign(nhs, flows)
    assert all(f.nexthops[Dir.ORIGINAL] == held.id for f in flows) and held not in new
    assert [nh.key for nh in new] == [(1, "10.0.1.1")]       # the LAN host, no neighbour event of it yet
    for f in flows:
        assert nhs.release(f, Dir.ORIGINAL, held.id) is None
    assert nhs.of_neighbour(2, "192.0.2.2") is held, "kept with no flow: its neighbour is the kernel's"
    assert nhs.unhold(held) and nhs.of_neighbour(2, "192.0.2.2") is None and nhs.held == 0
    # a neighbour that goes while flows are sent to it: freed by the last
    lan = nhs.of_neighbour(1, "10.0.1.1")
    assert nhs.hold(1, "10.0.1.1", "02:00:00:00:01:fe", "00:00:00:00:01:01") is lan and nhs.held == 1
    assert not nhs.unhold(lan) and nhs.held == 0
    assert nhs.release(flows[0], Dir.REPLY, lan.id) is None
    assert nhs.release(flows[1], Dir.REPLY, lan.id) is lan and nhs.of_neighbour(1, "10.0.1.1") is None


def test_neighbours_hold_at_most_their_share_of_the_table(schema):
    from p4flowtable.nexthop import HELD_SHARE
    nhs = NextHops(schema)
    nhs.size = 9      # ids 1..8, 4 of them for neighbours
    got = [nhs.hold(1, f"10.0.1.{i}", "02:00:00:00:01:fe", f"00:00:00:00:01:{i:02x}") for i in range(1, 7)]
    assert nhs.held == int(nhs.size * HELD_SHARE) == 4 and got[4:] == [None, None]
    flows = [flow(i, lan_host=10 + i) for i in range(3)]
    assign(nhs, flows)                  # the gateway and three LAN hosts: the rest of the table
    assert len(nhs) == 8
    # a flow's next hop whose neighbour is learnt is not held past the share: freed by its last flow
    assert nhs.hold(1, "10.0.1.10", "02:00:00:00:01:fe", "00:00:00:00:01:0a") is None
    assert nhs.unhold(got[0]) and nhs.hold(1, "10.0.1.10", "02:00:00:00:01:fe", "00:00:00:00:01:0a") is not None


def test_a_held_next_hop_is_written_once_and_rewritten_by_the_flow_that_finds_a_new_mac(schema):
    """Against the embedded target over P4Runtime: a held next hop is written
    before any flow; the first flow to it writes its entries alone; a flow
    that finds its neighbour at a new MAC before the neighbour's change was
    written has the next hop MODIFYed, not INSERTed again; dropped, it is
    gone from the switch."""
    async def main(s, driver, held):
        nhs = driver.nexthops
        lan_mac = "00:00:00:00:01:01"
        gw = nhs.hold(2, "192.0.2.2", WAN.src_mac, WAN.dst_mac)
        lan = nhs.hold(1, "10.0.1.1", "02:00:00:00:01:fe", lan_mac)
        await driver.insert_nexthops([gw, lan])
        assert held() == {gw.id: int(WAN.dst_mac.replace(":", ""), 16), lan.id: int(lan_mac.replace(":", ""), 16)}
        writes = s.writes
        first = flow(1)
        assert driver.prepare([first]) is None, "nothing to write ahead"
        assert (await driver.add([first])).done == [first] and s.writes - writes == 1
        assert first.nexthops == (gw.id, lan.id)
        await driver.delete([first])
        assert set(held()) == {gw.id, lan.id}, "both kept: their neighbours are the kernel's"
        moved = FlowRoute(1, "02:00:00:00:01:fe", "00:00:00:00:01:99", 1500, "10.0.1.1")
        second = flow(2)
        second.routes = (WAN, moved)
        res = await driver.add([second])
        assert res.done == [second] and not res.failed, res.failed
        assert second.nexthops == (gw.id, lan.id) and held()[lan.id] == 0x199
        await driver.delete([second])
        assert nhs.unhold(lan)
        await driver.drop_nexthops([lan])
        assert set(held()) == {gw.id}

    on_embedded_target(schema, main)


def test_the_reconcile_keeps_the_next_hops_of_known_neighbours_and_rewrites_one_with_other_macs(schema):
    """reconcile.Planner: of the next hops the switch holds, an unused one of
    a neighbour the kernel has is kept (held), one of no known neighbour is
    an orphan; a used one whose port's MAC changed meanwhile is MODIFYed,
    not INSERTed again."""
    from p4flowtable.reconcile import Planner
    nhs = NextHops(schema)
    gw = nhs.adopt(5, 2, "02:00:00:00:02:99", WAN.dst_mac, "192.0.2.2")      # the port's MAC was another
    known = nhs.adopt(6, 1, "02:00:00:00:01:fe", "00:00:00:00:01:07", "10.0.1.7")
    stray = nhs.adopt(7, 1, "02:00:00:00:01:fe", "00:00:00:00:01:08", "")
    assert gw.held and known.held and not stray.held and nhs.held == 2
    planner = Planner(schema, {}, False, nhs, ReadBack(schema))
    planner.flow(flow(1))
    plan = planner.finish()
    kinds = {int.from_bytes(u.entity.table_entry.match[0].exact.value, "big"): u.type for u in plan.nexthop_writes}
    assert kinds[5] == p4r.Update.MODIFY and gw.src_mac == WAN.src_mac and gw.written and not gw.rewrite
    assert 6 not in kinds and nhs.by_id[6] is known
    assert [int.from_bytes(u.entity.table_entry.match[0].exact.value, "big") for u in plan.nexthop_orphans] == [7]
