"""The native conntrack message decoder (_ctnetlink, compiled at install)
against ctnetlink.decode_walk, the Python it stands in for: the same CtMsg
from the same bytes, for the kernel's own events and dumps (TCP and UDP,
both families, NAT, labels, mark, counters, destroy events), for messages
laid out otherwise by hand, and for thousands of corruptions of all of them."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import struct
import subprocess
import types

import pytest

from p4flowtable import ctnetlink as ctnl
from p4flowtable.conntrack import IP_CT_TCP_FLAG_BE_LIBERAL, NETLINK_NETFILTER
from p4flowtable.model import FlowTuple, PyFlowTuple, ipv4
from p4flowtable.netns import netlink_socket

from test_ctnetlink import (IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY, NS, ORIG, REPLY, TCP_ESTABLISHED,  # noqa: F401
                            create, kernel, ns)

if ctnl._ctnetlink is None:
    pytest.skip("p4flowtable._ctnetlink is not built here (make install compiles it; without it ctnetlink "
                "decodes in Python)", allow_module_level=True)

V6_ORIG = FlowTuple(ipaddress.IPv6Address("2001:db8:1::1"), ipaddress.IPv6Address("2001:db8:2::2"), 17, 5000, 53)
V6_REPLY = FlowTuple(ipaddress.IPv6Address("2001:db8:2::2"), ipaddress.IPv6Address("2001:db8:2::fe"), 17, 53, 61000)


def messages(data: bytes):
    """(start, end, msg_type, flags) of each ctnetlink message of a datagram."""
    off = 0
    while off + ctnl._NLMSGHDR.size <= len(data):
        length, mtype, flags, _, _ = ctnl._NLMSGHDR.unpack_from(data, off)
        if length < ctnl._NLMSGHDR.size or off + length > len(data):
            return
        if mtype >> 8 == ctnl.NFNL_SUBSYS_CTNETLINK:
            yield off, off + length, mtype & 0xFF, flags
        off += (length + 3) & ~3


def same(data: bytes, start: int, end: int, mtype: int = 0, flags: int = 0) -> ctnl.CtMsg:
    native = ctnl.decode(data, start, end, mtype, flags)
    walked = ctnl.decode_walk(data, start, end, mtype, flags)
    assert native == walked, (data[start:end].hex(), native, walked)
    assert type(native.helper) is bool and all(
        v is None or type(v) is int for v in (native.status, native.tcp_state, native.timeout, native.id,
                                              native.tcp_flags, native.tcp_flags_reply, native.labels,
                                              native.packets, native.mark))
    return native


def same_events(data: bytes) -> list[ctnl.CtMsg]:
    """The native walk of a datagram's events gives the Python walk's
    messages, skipping none and skipping each netlink port found in it."""
    pids = {0}
    off = 0
    while off + ctnl._NLMSGHDR.size <= len(data):
        length, _, _, _, pid = ctnl._NLMSGHDR.unpack_from(data, off)
        pids.add(pid)
        if length < ctnl._NLMSGHDR.size:
            break
        off += (length + 3) & ~3
    for skip in sorted(pids):
        native = list(ctnl.CtnlSocket._decode_events(data, skip))
        walked = list(ctnl.CtnlSocket._walk_events(data, skip))
        assert native == walked, (data.hex(), skip, native, walked)
    return list(ctnl.CtnlSocket._decode_events(data, 0))


def message(*attrs: bytes) -> bytes:
    """A ctnetlink message of these attributes (nlmsghdr, nfgenmsg)."""
    body = b"\x02\x00\x00\x00" + b"".join(attrs)
    return ctnl._NLMSGHDR.pack(16 + len(body), ctnl.NFNL_SUBSYS_CTNETLINK << 8, 0, 0, 0) + body


def kernel_messages() -> list[bytes]:
    """Datagrams the kernel sent: the events of making, changing and
    deleting entries, and a dump of them with accounting on."""
    subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"], check=True)
    # entries get room for labels once a rule of the namespace uses them (nf_connlabels_get)
    subprocess.run(["ip", "netns", "exec", NS, "nft", "add table inet t; add chain inet t c; "
                    "add rule inet t c ct label set 100"], check=True)

    async def run():
        events = ctnl.CtnlSocket(netlink_socket(NS, NETLINK_NETFILTER))
        events.subscribe((ctnl.NFNLGRP_CONNTRACK_NEW, ctnl.NFNLGRP_CONNTRACK_UPDATE, ctnl.NFNLGRP_CONNTRACK_DESTROY))
        sock = ctnl.CtnlSocket(netlink_socket(NS, NETLINK_NETFILTER))
        seen: list[bytes] = []
        parse = sock._parse
        sock._parse = lambda data: seen.append(data) or parse(data)
        try:
            await create(sock)
            await sock.request(ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET6, ctnl.create_payload(
                V6_ORIG, V6_REPLY, IPS_SEEN_REPLY | IPS_CONFIRMED, 30, labels=1 << 3 | 1 << 100),
                ctnl.NLM_F_CREATE | ctnl.NLM_F_EXCL)
            nat = FlowTuple(ipv4("10.0.1.9"), ipv4("192.0.2.2"), 17, 1234, 53)
            await sock.request(ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET, ctnl.create_payload(
                nat, FlowTuple(ipv4("192.0.2.2"), ipv4("198.51.100.1"), 17, 53, 40000), IPS_CONFIRMED, 30)
                + ctnl.nla(ctnl.CTA_MARK, (0x10001).to_bytes(4, "big")), ctnl.NLM_F_CREATE | ctnl.NLM_F_EXCL)
            await sock.request(ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET, ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, ORIG)
                               + ctnl.tcp_flags_attr(IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL)
                               + ctnl.labels_attr(1 << 5, 1 << 5))
            await sock.dump()
            await sock.request(ctnl.IPCTNL_MSG_CT_DELETE, socket.AF_INET, ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, nat))
            got: list[bytes] = []
            while not any(m[2] == ctnl.IPCTNL_MSG_CT_DELETE for d in got for m in messages(d)):   # the last event
                item = await asyncio.wait_for(events._events.get(), 5)
                assert not isinstance(item, Exception), item
                got.extend(item)        # one drain's datagrams
            return got + seen
        finally:
            sock.close()
            events.close()
    return asyncio.run(run())


@kernel
def test_the_kernels_messages_decode_the_same(ns):  # noqa: F811
    datagrams = kernel_messages()
    decoded = [same(d, *m) for d in datagrams for m in messages(d)]
    # a datagram's events walked in one call: each datagram, and all of them as one with a message of
    # another subsystem among them and a cut one at the end
    other = ctnl._NLMSGHDR.pack(20, 2 << 8, 0, 0, 0) + bytes(4)
    joined = b"".join(d + other for d in datagrams)
    for d in [*datagrams, joined, joined + joined[:37]]:
        same_events(d)
    assert len(same_events(joined)) == len(decoded)
    by_orig = {}
    for m in decoded:
        by_orig.setdefault(m.orig, []).append(m)
    # what the messages carry is read, not only agreed on
    assert {ORIG, V6_ORIG} <= set(by_orig)
    assert any(m.labels == 1 << 3 | 1 << 100 for m in by_orig[V6_ORIG])
    assert any(m.mark == 0x10001 for ms in by_orig.values() for m in ms)
    assert any(m.msg_type == ctnl.IPCTNL_MSG_CT_DELETE for ms in by_orig.values() for m in ms)
    assert any(m.packets == 0 for ms in by_orig.values() for m in ms)       # the dump's counters, accounting on
    assert any(m.tcp_state == TCP_ESTABLISHED and m.tcp_flags & IP_CT_TCP_FLAG_BE_LIBERAL for m in by_orig[ORIG])
    assert any(m.labels == 1 << 5 for m in by_orig[ORIG])
    corrupt(datagrams, random.Random(33), 3000)


def test_messages_laid_out_otherwise_decode_the_same():
    """Order, repetition and lengths the kernel does not write: each read
    the way the walk reads it."""
    v6 = V6_ORIG
    tup = ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, ORIG)
    ip_nest = ctnl.nest(ctnl.CTA_TUPLE_IP, ctnl.nla(ctnl.CTA_IP_V4_DST, ORIG.dst.packed),
                        ctnl.nla(ctnl.CTA_IP_V4_SRC, ORIG.src.packed))
    proto = ctnl.nest(ctnl.CTA_TUPLE_PROTO, ctnl.nla(ctnl.CTA_PROTO_DST_PORT, b"\x00\x50"),
                      ctnl.nla(ctnl.CTA_PROTO_NUM, b"\x06"), ctnl.nla(ctnl.CTA_PROTO_SRC_PORT, b"\x9c\x40"))
    info = ctnl.tcp_flags_attr(0x0A, 0xFF)       # the flags alone
    tcp = ctnl.nest(ctnl.CTA_PROTOINFO_TCP, *(ctnl.nla(t, v) for t, v in (     # as the kernel lays it out
        (ctnl.CTA_PROTOINFO_TCP_STATE, b"\x03"), (ctnl.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, b"\x07"),
        (ctnl.CTA_PROTOINFO_TCP_WSCALE_REPLY, b"\x07"), (ctnl.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, b"\x0a\xff"),
        (ctnl.CTA_PROTOINFO_TCP_FLAGS_REPLY, b"\x0a\xff"))))
    full = ctnl.nest(ctnl.CTA_PROTOINFO, tcp)
    cases = {
        "reordered tuple": message(ctnl.nest(ctnl.CTA_TUPLE_ORIG, proto, ip_nest)),
        "no ports (icmp)": message(ctnl.nest(ctnl.CTA_TUPLE_ORIG, ip_nest,
                                             ctnl.nest(ctnl.CTA_TUPLE_PROTO, ctnl.nla(ctnl.CTA_PROTO_NUM, b"\x01")))),
        "no protocol": message(ctnl.nest(ctnl.CTA_TUPLE_ORIG, ip_nest)),
        "families mixed": message(ctnl.nest(ctnl.CTA_TUPLE_ORIG, ctnl.nest(
            ctnl.CTA_TUPLE_IP, ctnl.nla(ctnl.CTA_IP_V4_SRC, ORIG.src.packed),
            ctnl.nla(ctnl.CTA_IP_V6_DST, v6.dst.packed)), proto)),
        "5-byte address": message(ctnl.nest(ctnl.CTA_TUPLE_ORIG, ctnl.nest(
            ctnl.CTA_TUPLE_IP, ctnl.nla(ctnl.CTA_IP_V4_SRC, b"\1\2\3\4\5"),
            ctnl.nla(ctnl.CTA_IP_V4_DST, ORIG.dst.packed)), proto)),
        "address given twice, the second bad": message(ctnl.nest(ctnl.CTA_TUPLE_ORIG, ctnl.nest(
            ctnl.CTA_TUPLE_IP, ctnl.nla(ctnl.CTA_IP_V4_SRC, ORIG.src.packed),
            ctnl.nla(ctnl.CTA_IP_V4_DST, ORIG.dst.packed), ctnl.nla(ctnl.CTA_IP_V4_SRC, b"")), proto)),
        "short port and protocol": message(ctnl.nest(ctnl.CTA_TUPLE_ORIG, ip_nest, ctnl.nest(
            ctnl.CTA_TUPLE_PROTO, ctnl.nla(ctnl.CTA_PROTO_NUM, b""), ctnl.nla(ctnl.CTA_PROTO_NUM, b"\x11"),
            ctnl.nla(ctnl.CTA_PROTO_SRC_PORT, b"\x01"), ctnl.nla(ctnl.CTA_PROTO_DST_PORT, b"\x01\x02\x03")))),
        "tuple twice, the second unreadable": message(tup, ctnl.nest(ctnl.CTA_TUPLE_ORIG, ip_nest)),
        "v6 tuple": message(ctnl.tuple_attr(ctnl.CTA_TUPLE_REPLY, v6)),
        "scalars short, long, twice": message(ctnl.nla(ctnl.CTA_STATUS, b"\0\0\1"), ctnl.nla(ctnl.CTA_TIMEOUT, b"\0\0\0\x1e\xff"),
                                              ctnl.nla(ctnl.CTA_ID, b"\0\0\0\1"), ctnl.nla(ctnl.CTA_ID, b"\xff\xff\xff\xff"),
                                              ctnl.nla(ctnl.CTA_MARK, b"\x80\0\0\0")),
        "labels of any length": message(ctnl.nla(ctnl.CTA_LABELS, b""), ctnl.nla(ctnl.CTA_LABELS, bytes(range(1, 21)))),
        "empty labels": message(ctnl.nla(ctnl.CTA_LABELS, b"")),
        "helper": message(ctnl.nest(ctnl.CTA_HELP, ctnl.nla(1, b"ftp\0"))),
        "protoinfo laid out": message(full),
        "protoinfo, the flags alone": message(info),
        "protoinfo state alone, after a full one": message(full, ctnl.tcp_state_attr(4)),
        "protoinfo full, after the state alone": message(ctnl.tcp_state_attr(4), full),
        "protoinfo laid out, then a second TCP nest in it": message(ctnl.nest(
            ctnl.CTA_PROTOINFO, tcp, ctnl.nest(ctnl.CTA_PROTOINFO_TCP, ctnl.nla(ctnl.CTA_PROTOINFO_TCP_STATE, b"\x05")))),
        "protoinfo of another protocol": message(ctnl.nest(ctnl.CTA_PROTOINFO, ctnl.nest(2, ctnl.nla(1, b"\x05")))),
        "protoinfo with short values": message(ctnl.nest(ctnl.CTA_PROTOINFO, ctnl.nest(
            ctnl.CTA_PROTOINFO_TCP, ctnl.nla(ctnl.CTA_PROTOINFO_TCP_STATE, b""),
            ctnl.nla(ctnl.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, b"\x08\x08")))),
        "protoinfo's nest given twice": message(ctnl.nest(ctnl.CTA_PROTOINFO, ctnl.nest(
            ctnl.CTA_PROTOINFO_TCP, ctnl.nla(ctnl.CTA_PROTOINFO_TCP_STATE, b"\x03")), ctnl.nest(
            ctnl.CTA_PROTOINFO_TCP, ctnl.nla(ctnl.CTA_PROTOINFO_TCP_FLAGS_REPLY, b"\x01\x01")))),
        "counters, both and repeated": message(
            ctnl.nest(ctnl.CTA_COUNTERS_ORIG, ctnl.nla(1, (2**64 - 1).to_bytes(8, "big")),
                      ctnl.nla(2, (5).to_bytes(8, "big"))),
            ctnl.nest(ctnl.CTA_COUNTERS_REPLY, ctnl.nla(1, (7).to_bytes(8, "big"))),
            ctnl.nest(ctnl.CTA_COUNTERS_REPLY, ctnl.nla(1, (1).to_bytes(8, "big")),
                      ctnl.nla(1, (2**64 - 1).to_bytes(8, "big")))),
        "counters short or empty": message(ctnl.nest(ctnl.CTA_COUNTERS_ORIG, ctnl.nla(1, b"\0" * 7)),
                                           ctnl.nest(ctnl.CTA_COUNTERS_REPLY)),
        "flag bits on types": message(ctnl.nla(ctnl.CTA_STATUS | 0x4000, b"\0\0\0\x0e"),
                                      ctnl.nla(ctnl.CTA_MARK | 0x8000, b"\0\0\0\x02")),
        "unknown attributes": message(ctnl.nla(99, b"x" * 9), ctnl.nla(0, b""), tup),
        "header only": message(),
    }
    for name, data in cases.items():
        m = same(data, 0, len(data))
        if name == "counters, both and repeated":
            assert m.packets == 2**64 - 1 + 7 + 2**64 - 1       # beyond 64 bits, as Python adds them
        if name == "protoinfo state alone, after a full one":
            assert (m.tcp_state, m.tcp_flags) == (4, None)
        if name == "protoinfo laid out":
            assert (m.tcp_state, m.tcp_flags, m.tcp_flags_reply) == (3, 0x0A, 0x0A) and len(tcp) == 44
        if name == "protoinfo laid out, then a second TCP nest in it":
            assert (m.tcp_state, m.tcp_flags) == (5, None)
        if name == "reordered tuple":
            assert m.orig == ORIG
    # inside a longer buffer, and cut at every byte
    whole = b"".join(cases.values())
    for start, end, mtype, flags in messages(whole):
        same(whole, start, end, mtype, flags)
    for data in cases.values():
        for cut in range(len(data)):
            same(data, 0, cut)
    corrupt(list(cases.values()), random.Random(7), 3000)


def test_a_message_outside_its_buffer_is_refused():
    data = message(ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, ORIG))
    for off, end in ((0, len(data) + 1), (-1, 4), (5, 4)):
        with pytest.raises(ValueError, match="not within"):
            ctnl._ctnetlink.decode(data, off, end)


def corrupt(datagrams: list[bytes], rnd: random.Random, n: int) -> None:
    """n random corruptions (bytes flipped, lengths changed, bytes cut or
    added), each decoded by both with its message's own bounds and with the
    datagram's."""
    for _ in range(n):
        data = bytearray(rnd.choice(datagrams))
        for _ in range(rnd.randrange(1, 4)):
            how = rnd.randrange(4)
            at = rnd.randrange(len(data))
            if how == 0:
                data[at] = rnd.randrange(256)
            elif how == 1 and at + 2 <= len(data):      # a length field, likely
                data[at:at + 2] = rnd.randrange(65536).to_bytes(2, "little")
            elif how == 2:
                del data[at:at + rnd.randrange(1, 9)]
            else:
                data[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 9)))
        data = bytes(data)
        for start, end, mtype, flags in messages(data):
            same(data, start, end, mtype, flags)
        same(data, 0, len(data))
        same_events(data)


TUPLES = [ORIG, REPLY, V6_ORIG, V6_REPLY,
          FlowTuple(ipv4("0.0.0.0"), ipv4("255.255.255.255"), 255, 0, 65535),
          FlowTuple(ipaddress.IPv6Address("::"), ipaddress.IPv6Address("ffff::ffff"), 0, 65535, 0)]


@pytest.mark.parametrize("make", [FlowTuple, PyFlowTuple],
                         ids=["FlowTuple", "PyFlowTuple"])
def test_tuple_attr_native_writes_what_python_writes(make):
    """The conntrack update's tuple, written natively, byte for byte the
    Python's, and decoded back to the same tuple; for either tuple class."""
    for t in TUPLES:
        t = make(t.src, t.dst, t.l4proto, t.sport, t.dport)
        for atype in (ctnl.CTA_TUPLE_ORIG, ctnl.CTA_TUPLE_REPLY):
            native = ctnl._native_tuple_attr(atype, t)
            assert native is not None
            assert native == ctnl.py_tuple_attr(atype, t) == ctnl.tuple_attr(atype, t)
        got = same(message(ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, t)), 0, len(message(b"")) + len(native))
        assert got.orig == FlowTuple(t.src, t.dst, t.l4proto, t.sport, t.dport)


def test_tuple_attr_native_leaves_what_it_cannot_write_to_python():
    """Values out of the layout's range, addresses of two families or of no
    ipaddress type: the native half answers None, and tuple_attr does what
    the Python does (builds the attribute, or raises as struct does)."""
    a4, a6 = ipv4("192.0.2.1"), ipaddress.IPv6Address("2001:db8::1")
    for t in (PyFlowTuple(a4, a4, 256, 1, 2), PyFlowTuple(a4, a4, 6, 65536, 2), PyFlowTuple(a4, a4, 6, 1, -1)):
        assert ctnl._native_tuple_attr(ctnl.CTA_TUPLE_ORIG, t) is None
        with pytest.raises(struct.error):
            ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, t)
    mixed = PyFlowTuple(a4, a6, 6, 1, 2)
    assert ctnl._native_tuple_attr(ctnl.CTA_TUPLE_ORIG, mixed) is None
    assert ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, mixed) == ctnl.tuple_attr_nested(ctnl.CTA_TUPLE_ORIG, mixed)

    class Packed:           # an address known only by its bytes
        def __init__(self, a):
            self.packed, self.version = a.packed, a.version
    odd = types.SimpleNamespace(src=Packed(a4), dst=Packed(a4), l4proto=6, sport=1, dport=2)
    assert ctnl._native_tuple_attr(ctnl.CTA_TUPLE_ORIG, odd) is None
    assert ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, odd) == ctnl.py_tuple_attr(
        ctnl.CTA_TUPLE_ORIG, PyFlowTuple(a4, a4, 6, 1, 2))
    with pytest.raises(AttributeError):
        ctnl._native_tuple_attr(ctnl.CTA_TUPLE_ORIG, object())
