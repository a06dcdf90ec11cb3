"""model.FlowTuple: the native type (_flowtuple.c) held to the Python class
it stands in for (model.PyFlowTuple), which runs where it is not built."""

from __future__ import annotations

import ipaddress
import pickle

import pytest

from p4flowtable import ctnetlink as ctnl
from p4flowtable.model import FlowTuple, PyFlowTuple, ipv4

native = pytest.mark.skipif(FlowTuple is PyFlowTuple, reason="_flowtuple not built (no C compiler at install)")

V4 = (ipv4("10.0.1.2"), ipv4("192.0.2.3"))
V6 = (ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8:1::ffff"))
CASES = [(*V4, 6, 40000, 443), (*V4, 17, 0, 0), (*V6, 6, 65535, 1), (*V6, 17, 53, 5353),
         (ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv4Address("255.255.255.255"), 6, 1, 2)]


@native
@pytest.mark.parametrize("args", CASES, ids=str)
def test_native_tuple_is_the_python_one(args):
    c, p = FlowTuple(*args), PyFlowTuple(*args)
    assert hash(c) == hash(p) == hash((int(args[0]), int(args[1]), *args[2:]))
    assert (repr(c), str(c)) == (repr(p), str(p))
    assert (c.src, c.dst, c.l4proto, c.sport, c.dport) == args
    r, pr = c.reversed(), p.reversed()
    assert (r.src, r.dst, r.l4proto, r.sport, r.dport) == (pr.src, pr.dst, pr.l4proto, pr.sport, pr.dport)
    assert hash(r) == hash(pr) and r == FlowTuple(*args).reversed() and r.reversed() == c
    assert pickle.loads(pickle.dumps(c)) == c
    assert FlowTuple(src=args[0], dst=args[1], l4proto=args[2], sport=args[3], dport=args[4]) == c


@pytest.mark.parametrize("cls", [FlowTuple, PyFlowTuple], ids=lambda c: c.__module__)
def test_equality_is_by_every_field(cls):
    a = cls(*CASES[0])
    assert a == cls(*CASES[0]) and not a != cls(*CASES[0])
    for i, other in enumerate((ipv4("10.0.1.9"), ipv4("192.0.2.9"), 17, 40001, 444)):
        args = list(CASES[0])
        args[i] = other
        assert a != cls(*args), i
    # equal values from distinct address objects; an address equal by value
    b = cls(ipaddress.IPv4Address("10.0.1.2"), ipaddress.IPv4Address("192.0.2.3"), 6, 40000, 443)
    assert a == b and {a: 1}[b] == 1
    assert a.__eq__(CASES[0]) is NotImplemented and a != CASES[0]


@native
def test_native_tuple_is_immutable_and_takes_five_arguments():
    t = FlowTuple(*CASES[0])
    with pytest.raises(AttributeError):
        t.sport = 1
    with pytest.raises(TypeError, match="dport"):
        FlowTuple(*CASES[0][:4])
    with pytest.raises(TypeError):
        FlowTuple(*CASES[0], 1)
    with pytest.raises(ValueError):          # int() of the address, as the Python class
        FlowTuple("not an address", *CASES[0][1:])
    with pytest.raises(TypeError):           # unhashable port
        FlowTuple(*CASES[0][:3], [], 1)


def test_decoded_tuples_are_model_tuples():
    """The native decoder makes the tuples itself (_ctnetlink.configure):
    the same type and values as the Python walk's."""
    for args in (CASES[0], CASES[2]):
        o = FlowTuple(*args)
        r = o.reversed()
        body = ctnl._NFGENMSG.pack(2 if o.src.version == 4 else 10, 0, 0) + \
            ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, o) + ctnl.tuple_attr(ctnl.CTA_TUPLE_REPLY, r)
        data = ctnl._NLMSGHDR.pack(ctnl._NLMSGHDR.size + len(body), 0, 0, 0, 0) + body
        for got in (ctnl.decode(data, 0, len(data), ctnl.IPCTNL_MSG_CT_NEW, 0),
                    ctnl.decode_walk(data, 0, len(data), ctnl.IPCTNL_MSG_CT_NEW, 0)):
            assert type(got.orig) is FlowTuple and type(got.reply) is FlowTuple
            assert (got.orig, got.reply) == (o, r)
            if o.src.version == 4:        # IPv4 addresses shared (model.ipv4)
                assert got.orig.src is got.reply.dst
