"""NAT derivation from conntrack tuples, and flowtable aging on a fake clock."""

import ipaddress

import pytest

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


def test_idle_flow_expires_after_its_timeout_not_before(table):
    fts, clock = table
    flow = make_flow()
    fts.add(flow)
    clock.t += 30.0
    assert fts.gc_step() == []
    clock.t += 0.5
    assert fts.gc_step() == [flow]


def test_traffic_refreshes_the_deadline(table):
    fts, clock = table
    flow = make_flow()
    fts.add(flow)
    clock.t += 20
    assert fts.refresh(flow)
    clock.t += 20
    assert fts.gc_step() == []
    clock.t += 11
    assert fts.gc_step() == [flow]


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
