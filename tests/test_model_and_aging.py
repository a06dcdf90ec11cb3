"""NAT derivation from conntrack tuples, and flowtable aging on a fake clock.

Aging is fed what a switch read returns (a FlowRead's values, flat: packets
of each entry, bytes of each, time since the latest hit); the reads themselves,
idle notifications and expiry on real switches are in the integration tests."""

import ipaddress

import pytest

from p4flowtable.aging import Aging
from p4flowtable.core import FlowtableConfig, Flowtables
from p4flowtable.model import Dir, Flow, FlowFlag, FlowTuple, rewrite_for

A = ipaddress.IPv4Address


def masqueraded_tcp():
    # h1 10.0.1.1:40000 -> h2 192.0.2.2:80, masqueraded to 192.0.2.1:61000
    orig = FlowTuple(A("10.0.1.1"), A("192.0.2.2"), 6, 40000, 80)
    reply = FlowTuple(A("192.0.2.2"), A("192.0.2.1"), 6, 80, 61000)
    return orig, reply


def test_snat_rewrite_of_original_direction_comes_from_reply_tuple():
    rw = rewrite_for(masqueraded_tcp(), Dir.ORIGINAL)
    assert (rw.src, rw.dst, rw.sport, rw.dport) == (A("192.0.2.1"), A("192.0.2.2"), 61000, 80)


def test_reply_direction_is_un_nated_back_to_the_original_sender():
    rw = rewrite_for(masqueraded_tcp(), Dir.REPLY)
    assert (rw.src, rw.dst, rw.sport, rw.dport) == (A("192.0.2.2"), A("10.0.1.1"), 80, 40000)


def test_dnat_port_forward():
    # client 198.51.100.9:5555 -> router 192.0.2.1:8080, DNAT to 10.0.1.1:80
    orig = FlowTuple(A("198.51.100.9"), A("192.0.2.1"), 6, 5555, 8080)
    reply = FlowTuple(A("10.0.1.1"), A("198.51.100.9"), 6, 80, 5555)
    rw = rewrite_for((orig, reply), Dir.ORIGINAL)
    assert (rw.src, rw.dst, rw.sport, rw.dport) == (A("198.51.100.9"), A("10.0.1.1"), 5555, 80)
    rw = rewrite_for((orig, reply), Dir.REPLY)
    assert (rw.src, rw.dst, rw.sport, rw.dport) == (A("192.0.2.1"), A("198.51.100.9"), 8080, 5555)


def test_no_nat_keeps_headers():
    orig = FlowTuple(A("10.0.1.1"), A("10.0.2.2"), 17, 1000, 2000)
    rw = rewrite_for((orig, orig.reversed()), Dir.ORIGINAL)
    assert (rw.src, rw.dst, rw.sport, rw.dport) == (orig.src, orig.dst, orig.sport, orig.dport)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def table():
    clock = Clock()
    fts = Flowtables(clock)
    fts.add_table(FlowtableConfig("ft", ("a", "b"), timeout=30.0))
    return fts, clock


def make_flow():
    orig, reply = masqueraded_tcp()
    return Flow(1, (orig, reply), "ft", 30.0)


def aging(fts, clock, idle_timeout=True):
    expired = []

    async def renew(f):
        pass
    return Aging(fts, None, clock, idle_timeout=idle_timeout, ct_lease=86400,
                 expire=expired.append, renew=renew), expired


def offloaded_flow(fts, ag, clock):
    flow = make_flow()
    fts.add(flow)
    flow.flags |= FlowFlag.HW
    ag.track(flow, clock())
    return flow


def test_a_flow_expires_when_neither_direction_was_hit_within_its_timeout(table):
    fts, clock = table
    ag, expired = aging(fts, clock)
    flow = offloaded_flow(fts, ag, clock)
    clock.t += 31
    # the notified direction idle 30.5 s, the other hit 0.2 s ago: the read
    # reports the most recent hit of either
    ag.read_back_all([(flow, (10, 3, 1000, 300, 200_000_000))], clock())
    assert expired == [] and flow.last_used == clock() - 0.2
    clock.t += 30
    ag.read_back_all([(flow, (10, 3, 1000, 300, 30_000_000_000))], clock())
    assert expired == [flow]    # idle == timeout: expired, as nf_flow_has_expired


def test_reads_applied_together_are_each_their_own_flows(table):
    """Aging.read_back_all given several flows' reads (the reconcile's, a
    thousand at a time): each flow gets its own."""
    fts, clock = table
    ag, expired = aging(fts, clock)
    idle = offloaded_flow(fts, ag, clock)
    o, r = masqueraded_tcp()
    active = Flow(2, (FlowTuple(o.src, o.dst, 6, 40001, 80), FlowTuple(r.src, r.dst, 6, 80, 61001)), "ft", 30.0)
    fts.add(active)
    active.flags |= FlowFlag.HW
    ag.track(active, clock())
    clock.t += 31
    ag.read_back_all([(idle, (1, 2, 100, 200, 30_000_000_000)), (active, (3, 4, 300, 400, 200_000_000))], clock())
    assert expired == [idle]
    assert active.last_used == clock() - 0.2 and (active.packets, active.bytes) == ((3, 4), (300, 400))


def test_idle_time_below_the_timeout_keeps_the_flow(table):
    fts, clock = table
    ag, expired = aging(fts, clock)
    flow = offloaded_flow(fts, ag, clock)
    clock.t += 40
    ag.read_back_all([(flow, (1, 1, 1, 1, 29_900_000_000))], clock())
    assert expired == [] and flow.stats_at == clock() and flow.packets == (1, 1)


def test_without_idle_timeouts_counters_decide_and_reads_are_lazy(table):
    fts, clock = table
    ag, expired = aging(fts, clock, idle_timeout=False)
    flow = offloaded_flow(fts, ag, clock)
    # first read once 9/10 of the timeout has run, not before
    assert ag._due[0][0] == pytest.approx(clock() + 27)
    clock.t += 27
    ag.read_back_all([(flow, (5, 0, 500, 0, None))], clock())   # packets moved: refreshed
    assert expired == [] and flow.last_used == clock()
    clock.t += 27
    ag.read_back_all([(flow, (5, 0, 500, 0, None))], clock())   # no packets since
    assert expired == []
    clock.t += 3.1
    ag.read_back_all([(flow, (5, 0, 500, 0, None))], clock())
    assert expired == [flow]


def test_traffic_refreshes_the_deadline(table):
    fts, clock = table
    flow = make_flow()
    fts.add(flow)
    clock.t += 20
    assert fts.refresh(flow)
    assert flow.last_used == clock()


def test_refresh_within_a_second_does_not_move_the_deadline(table):
    fts, clock = table
    flow = make_flow()
    fts.add(flow)
    clock.t += 0.5
    assert not fts.refresh(flow)
    assert flow.last_used == 1000.0


def test_lookup_finds_both_directions(table):
    fts, _ = table
    flow = make_flow()
    fts.add(flow)
    assert fts.lookup(flow.tuples[Dir.ORIGINAL]) == (flow, Dir.ORIGINAL)
    assert fts.lookup(flow.tuples[Dir.REPLY]) == (flow, Dir.REPLY)


def test_delete_is_idempotent(table):
    fts, _ = table
    flow = make_flow()
    fts.add(flow)
    assert fts.delete(flow)
    assert not fts.delete(flow)
    assert fts.lookup(flow.key) is None


def test_teardown_flag_is_test_and_set():
    flow = make_flow()
    assert flow.test_and_set(FlowFlag.TEARDOWN) is False
    assert flow.test_and_set(FlowFlag.TEARDOWN) is True


def test_same_tuple_cannot_be_offloaded_twice(table):
    fts, _ = table
    fts.add(make_flow())
    with pytest.raises(ValueError):
        fts.add(make_flow())


def test_punted_frames_give_their_tuple_in_both_families():
    from scapy.all import IP, TCP, UDP, Ether
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
    from p4flowtable.ip import parse_tuple
    v4 = bytes(Ether() / IP(src="10.0.1.1", dst="192.0.2.2") / TCP(sport=40000, dport=80))
    v6 = bytes(Ether() / IPv6(src="2001:db8:1::1", dst="2001:db8:2::2") / UDP(sport=5, dport=6))
    ext = bytes(Ether() / IPv6(src="2001:db8:1::1", dst="2001:db8:2::2") / IPv6ExtHdrHopByHop() / UDP())
    assert parse_tuple(v4) == FlowTuple(A("10.0.1.1"), A("192.0.2.2"), 6, 40000, 80)
    assert parse_tuple(v6) == FlowTuple(ipaddress.IPv6Address("2001:db8:1::1"),
                                        ipaddress.IPv6Address("2001:db8:2::2"), 17, 5, 6)
    assert parse_tuple(ext) is None and parse_tuple(v6[:50]) is None


def _csum_update(csum: int, delta: int) -> int:
    """The data plane's CSUM_UPDATE (p4src/include/define.p4), as written
    there: HC - d, less the end-around borrow when d > HC, in 16 bits."""
    return (csum - delta - (1 if delta > csum else 0)) & 0xFFFF


@pytest.mark.parametrize("version,l4proto", [(4, 6), (4, 17), (6, 6), (6, 17)])
def test_checksum_deltas_give_what_a_full_recomputation_gives(version, l4proto):
    import random
    from scapy.all import IP, TCP, UDP, IPv6, Raw
    from p4flowtable.ip import checksum_deltas
    rng = random.Random(version * 100 + l4proto)
    addr = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    bits = 32 if version == 4 else 128
    L4 = TCP if l4proto == 6 else UDP
    for _ in range(200):
        a = [addr(rng.getrandbits(bits)) for _ in range(4)]
        p = [rng.randrange(1, 65536) for _ in range(4)]
        orig, reply = FlowTuple(a[0], a[1], l4proto, p[0], p[1]), FlowTuple(a[1], a[2], l4proto, p[1], p[2])
        t, rw = orig, rewrite_for((orig, reply), Dir.ORIGINAL)
        ip_delta, l4_delta = checksum_deltas(t, rw)
        ttl = rng.randrange(2, 256)
        net = (IP(src=str(t.src), dst=str(t.dst), ttl=ttl) if version == 4
               else IPv6(src=str(t.src), dst=str(t.dst), hlim=ttl))
        pkt = net.__class__(bytes(net / L4(sport=t.sport, dport=t.dport) / Raw(rng.randbytes(rng.randrange(40)))))
        want = pkt.copy()
        if version == 4:
            want.src, want.dst, want.ttl = str(rw.src), str(rw.dst), ttl - 1
            del want.chksum
        else:
            want.src, want.dst, want.hlim = str(rw.src), str(rw.dst), ttl - 1
        want[L4].sport, want[L4].dport = rw.sport, rw.dport
        del want[L4].chksum
        want = want.__class__(bytes(want))
        if version == 4:
            assert _csum_update(pkt.chksum, ip_delta) == want.chksum
        got = _csum_update(pkt[L4].chksum, l4_delta)
        # a computed zero is the same sum as 0xffff (UDP sends it so)
        assert got == want[L4].chksum or {got, want[L4].chksum} == {0, 0xFFFF}
