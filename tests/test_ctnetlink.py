"""The ctnetlink codec and the conntrack mirror, against the real kernel.

Entries are made with ctnetlink itself (no traffic), in a namespace of the
test's own; the conntrack tool reads them back as an independent witness.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import shutil
import socket
import subprocess

import pytest

from p4flowtable import ctnetlink as ctnl
from p4flowtable.conntrack import (IP_CT_TCP_FLAG_BE_LIBERAL, NETLINK_NETFILTER, NF_CT_DAY, ConntrackMirror,
                                   CtEntry, CtEvent, TCP_ESTABLISHED)
from p4flowtable.model import FlowTuple, ipv4
from p4flowtable.netns import netlink_socket

NS = "p4ft-ctt"
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 2, 4, 8


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a network namespace and its conntrack table)"
    for tool in ("ip", "conntrack"):
        if not shutil.which(tool):
            return f"needs {tool} (Debian packages iproute2, conntrack)"
    return None


kernel = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")

ORIG = FlowTuple(ipv4("10.0.1.1"), ipv4("192.0.2.2"), 6, 40000, 80)
REPLY = FlowTuple(ipv4("192.0.2.2"), ipv4("198.51.100.1"), 6, 80, 61000)


@pytest.fixture
def ns():
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    # conntrack state timeouts are per namespace; a short one makes the
    # hand-back fixup visible
    subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw",
                    "net.netfilter.nf_conntrack_tcp_timeout_established=300"], check=True)
    yield NS
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def conntrack_cli(*args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", NS, "conntrack", *args],
                          capture_output=True, text=True).stdout


async def create(sock: ctnl.CtnlSocket, orig=ORIG, reply=REPLY, timeout=120):
    await sock.request(ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET,
                       ctnl.create_payload(orig, reply, IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED, timeout, TCP_ESTABLISHED),
                       ctnl.NLM_F_CREATE | ctnl.NLM_F_EXCL)


async def next_event(events, want: CtEvent, orig: FlowTuple):
    async def scan():
        async for ev, e, old in events:
            if ev is want and e.orig == orig:
                return e, old
    return await asyncio.wait_for(scan(), 5)


@kernel
def test_mirror_follows_the_kernel_table(ns):
    async def run():
        mirror = ConntrackMirror(ns)
        await mirror.open()
        writer = ctnl.CtnlSocket(netlink_socket(ns, 12))
        events = mirror.events()
        try:
            await create(writer)
            e, old = await next_event(events, CtEvent.NEW, ORIG)
            assert old is None
            assert (e.reply, e.tcp_state, e.offloadable()) == (REPLY, TCP_ESTABLISHED, None)
            assert not e.liberal and not mirror.on_lease(e)      # 120 s left, tracking strict
            assert mirror.lookup(REPLY) is e and mirror.lookup(ORIG) is e
            # independent witness: the conntrack tool sees the entry we decoded
            listed = conntrack_cli("-L", "-p", "tcp")
            assert "src=10.0.1.1 dst=192.0.2.2 sport=40000 dport=80" in listed
            assert "src=192.0.2.2 dst=198.51.100.1 sport=80 dport=61000" in listed

            # offload marks: one-day timeout. The kernel's event for it names
            # the mirror's own port and is not decoded; a change from another
            # socket is, and is the first UPDATE the mirror reports.
            assert await mirror.offloaded([e]) == [None]
            await writer.request(ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET,
                                 ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, ORIG) + ctnl.timeout_attr(NF_CT_DAY - 1000))
            upd, old = await next_event(events, CtEvent.UPDATE, ORIG)
            assert old is e and upd.tcp_state == TCP_ESTABLISHED   # kept from before
            assert NF_CT_DAY - 1005 <= upd.timeout <= NF_CT_DAY - 1000
            assert await mirror.offloaded([e]) == [None]
            now = await mirror.get(ORIG)
            assert now is not None and NF_CT_DAY - 5 <= now.timeout <= NF_CT_DAY
            raw = await writer.request(ctnl.IPCTNL_MSG_CT_GET, socket.AF_INET,
                                       ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, ORIG))
            assert raw[0].tcp_flags & IP_CT_TCP_FLAG_BE_LIBERAL

            # a second mirror's dump finds the same entry
            other = ConntrackMirror(ns)
            await other.open()
            dumped = await other.dump()
            await other.close()
            assert [d.orig for d in dumped] == [ORIG] and dumped[0].id == e.id
            # what a restarted daemon leaves as it is (nf_ct_offload_timeout):
            # liberal both ways, read from the kernel's dump, and a lease left
            assert dumped[0].liberal and mirror.on_lease(dumped[0])
            assert not mirror.on_lease(dumped[0], lease=4 * NF_CT_DAY)

            # hand-back: the established timeout (300 s here) less 100 s idle
            await mirror.handed_back(now, 100)
            back = await mirror.get(ORIG)
            assert 190 <= back.timeout <= 200
            assert not mirror.on_lease(back)

            subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-D", "-s", "10.0.1.1"],
                           capture_output=True, check=True)
            gone, old = await next_event(events, CtEvent.DESTROY, ORIG)
            assert ORIG not in mirror.entries and mirror.lookup(REPLY) is None
            assert await mirror.get(ORIG) is None
        finally:
            writer.close()
            await mirror.close()
    asyncio.run(run())


@kernel
def test_count_is_the_kernels_without_a_dump(ns):
    """The stats request (what a restart asks before its dump) against the
    conntrack tool's count, at 0 and at 3 entries."""
    async def run():
        mirror = ConntrackMirror(ns)
        await mirror.open()
        writer = ctnl.CtnlSocket(netlink_socket(ns, 12))
        try:
            assert await mirror.count() == 0 == int(conntrack_cli("-C"))
            for i in range(3):
                await create(writer, FlowTuple(ORIG.src, ORIG.dst, 6, 40000 + i, 80),
                             FlowTuple(REPLY.src, REPLY.dst, 6, 80, 61000 + i))
            assert await mirror.count() == 3 == int(conntrack_cli("-C")) == len(await mirror.dump())
        finally:
            writer.close()
            await mirror.close()
    asyncio.run(run())


@kernel
def test_kernel_refusals_carry_the_errno(ns):
    async def run():
        s = ctnl.CtnlSocket(netlink_socket(ns, 12))
        try:
            await create(s)
            with pytest.raises(ctnl.CtnlError) as exc:   # same tuples again
                await create(s)
            assert exc.value.errno == errno.EEXIST
            missing = FlowTuple(ipv4("10.9.9.9"), ipv4("192.0.2.2"), 6, 1, 2)
            with pytest.raises(ctnl.CtnlError) as exc:
                await s.request(ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET,
                                ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, missing) + ctnl.timeout_attr(5))
            assert exc.value.errno == errno.ENOENT
        finally:
            s.close()
    asyncio.run(run())


@kernel
def test_pipelined_requests_each_get_their_own_answer(ns):
    """Hundreds of requests in flight on one socket, answered by sequence number."""
    async def run():
        s = ctnl.CtnlSocket(netlink_socket(ns, 12))
        try:
            tuples = [(FlowTuple(ipv4(f"10.0.{i // 200}.{1 + i % 200}"), ipv4("192.0.2.2"), 6, 1000 + i, 80),
                       FlowTuple(ipv4("192.0.2.2"), ipv4("198.51.100.1"), 6, 80, 20000 + i)) for i in range(500)]
            await asyncio.gather(*(create(s, o, r) for o, r in tuples))
            gets = await asyncio.gather(*(s.request(ctnl.IPCTNL_MSG_CT_GET, socket.AF_INET,
                                                    ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, o)) for o, _ in tuples))
            assert [g[0].reply for g in gets] == [r for _, r in tuples]
            assert len(await s.dump(socket.AF_INET)) == 500
        finally:
            s.close()
    asyncio.run(run())


@kernel
def test_quiet_changes_report_each_failure_by_its_request(ns):
    """Updates sent with only each window's last one acknowledged: every
    request still gets its own outcome, failures in the middle and at the
    end of a window included, and the successes took effect."""
    async def run():
        s = ctnl.CtnlSocket(netlink_socket(ns, 12))
        try:
            n = ctnl.REQUEST_WINDOW + 100         # two windows
            tuples = [(FlowTuple(ipv4(f"10.1.{i // 200}.{1 + i % 200}"), ipv4("192.0.2.2"), 6, 1000 + i, 80),
                       FlowTuple(ipv4("192.0.2.2"), ipv4("198.51.100.1"), 6, 80, 20000 + i)) for i in range(n)]
            missing = {3, 250, ctnl.REQUEST_WINDOW - 1, ctnl.REQUEST_WINDOW, n - 1}    # never created
            await asyncio.gather(*(create(s, o, r) for i, (o, r) in enumerate(tuples) if i not in missing))
            reqs = [(ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET,
                     ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, o) + ctnl.timeout_attr(4321), 0) for o, _ in tuples]
            got = await s.changes(reqs)
            assert len(got) == n
            assert {i for i, e in enumerate(got) if e is not None} == missing
            assert all(got[i].errno == errno.ENOENT for i in missing)
            timeouts = {m.orig: m.timeout for m in await s.dump(socket.AF_INET)}
            assert all(timeouts[o] > 4000 for i, (o, _) in enumerate(tuples) if i not in missing)
            assert not s._quiet and not s._pending
        finally:
            s.close()
    asyncio.run(run())


def test_decoder_survives_every_truncation_and_garbage():
    """A message cut at any byte, or random bytes, decodes to what is left (never raises)."""
    v6 = FlowTuple(ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8:1::2"), 17, 5, 6)
    body = (b"\x02\x00\x00\x00" + ctnl.create_payload(ORIG, REPLY, 14, 30, TCP_ESTABLISHED)
            + ctnl.nla(ctnl.CTA_ID, (7).to_bytes(4, "big")))
    full = len(body) + 16
    msg = full.to_bytes(4, "little") + (1 << 8).to_bytes(2, "little") + b"\0" * 10 + body
    m = ctnl.decode(msg, 0, len(msg), 0, 0)
    assert (m.orig, m.reply, m.status, m.timeout, m.tcp_state, m.id) == (ORIG, REPLY, 14, 30, 3, 7)
    for cut in range(len(msg)):
        part = ctnl.decode(msg[:cut], 0, cut, 0, 0)
        assert part.orig in (None, ORIG) and part.reply in (None, REPLY)
    body6 = b"\x0a\x00\x00\x00" + ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, v6)
    assert ctnl.decode(b"\0" * 16 + body6, 0, 16 + len(body6), 0, 0).orig == v6
    import random
    rnd = random.Random(1)
    for _ in range(2000):
        junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(80)))
        ctnl.decode(b"\0" * 16 + junk, 0, 16 + len(junk), 0, 0)


@kernel
def test_ipv6_entries_are_mirrored_too(ns):
    orig6 = FlowTuple(ipaddress.IPv6Address("2001:db8:1::1"), ipaddress.IPv6Address("2001:db8:2::2"), 17, 5000, 53)
    reply6 = FlowTuple(ipaddress.IPv6Address("2001:db8:2::2"), ipaddress.IPv6Address("2001:db8:2::fe"), 17, 53, 61000)

    async def run():
        mirror = ConntrackMirror(ns)
        await mirror.open()
        writer = ctnl.CtnlSocket(netlink_socket(ns, 12))
        events = mirror.events()
        try:
            await writer.request(ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET6,
                                 ctnl.create_payload(orig6, reply6, IPS_SEEN_REPLY | IPS_CONFIRMED, 30),
                                 ctnl.NLM_F_CREATE | ctnl.NLM_F_EXCL)
            await create(writer)    # and an IPv4 one
            e, _ = await next_event(events, CtEvent.NEW, orig6)
            assert e.reply == reply6 and e.offloadable() is None
            assert "src=2001:db8:1::1 dst=2001:db8:2::2 sport=5000 dport=53" in conntrack_cli("-L", "-f", "ipv6")
            other = ConntrackMirror(ns)
            await other.open()
            assert {d.orig for d in await other.dump()} == {orig6, ORIG}
            await other.close()
            assert await mirror.offloaded([e]) == [None]
            assert (await mirror.get(orig6)).timeout > NF_CT_DAY - 5
            gone = FlowTuple(orig6.src, orig6.dst, 17, 5001, 53)
            err, = await mirror.offloaded([CtEntry(0, gone, gone, 0, None, None)])
            assert isinstance(err, ctnl.CtnlError) and err.errno == errno.ENOENT
        finally:
            writer.close()
            await mirror.close()
    asyncio.run(run())


def test_a_tuple_attribute_is_the_same_in_one_call_as_nested():
    for t in (ORIG, REPLY, FlowTuple(ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8:1::2"),
                                     17, 0, 65535)):
        for atype in (ctnl.CTA_TUPLE_ORIG, ctnl.CTA_TUPLE_REPLY):
            assert ctnl.tuple_attr(atype, t) == ctnl.tuple_attr_nested(atype, t)


def test_a_tuple_read_in_one_call_is_the_walks(monkeypatch):
    """_tuple_at's one struct call gives what the attribute walk gives, for
    both families and the port extremes; a payload laid out otherwise (the
    addresses swapped in order, a protocol without ports) goes to the walk
    and still reads right."""
    import random
    rnd = random.Random(7)
    tuples = [ORIG, REPLY, FlowTuple(ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8:1::2"),
                                     17, 0, 65535)]
    for _ in range(300):
        v6 = rnd.random() < 0.5
        a = (lambda: ipaddress.IPv6Address(rnd.getrandbits(128))) if v6 else (lambda: ipv4(rnd.getrandbits(32)))
        tuples.append(FlowTuple(a(), a(), rnd.choice((6, 17)), rnd.randrange(65536), rnd.randrange(65536)))
    walked = []
    walk = ctnl._tuple_walk
    monkeypatch.setattr(ctnl, "_tuple_walk", lambda *a: walked.append(1) or walk(*a))
    for t in tuples:
        body = ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, t)[4:]
        assert ctnl._tuple_at(body, 0, len(body)) == walk(body, 0, len(body)) == t
    assert walked == []        # all of them in one call
    t = tuples[3]
    v6 = t.src.version == 6
    swapped = (ctnl.nest(ctnl.CTA_TUPLE_IP, ctnl.nla(ctnl.CTA_IP_V6_DST if v6 else ctnl.CTA_IP_V4_DST, t.dst.packed),
                         ctnl.nla(ctnl.CTA_IP_V6_SRC if v6 else ctnl.CTA_IP_V4_SRC, t.src.packed))
               + ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, t)[4 + (48 if not v6 else 72) - 28:])
    assert ctnl._tuple_at(swapped, 0, len(swapped)) == t and walked == [1]
    icmp = ctnl.nest(ctnl.CTA_TUPLE_IP, ctnl.nla(ctnl.CTA_IP_V4_SRC, ORIG.src.packed),
                     ctnl.nla(ctnl.CTA_IP_V4_DST, ORIG.dst.packed)) + ctnl.nest(
        ctnl.CTA_TUPLE_PROTO, ctnl.nla(ctnl.CTA_PROTO_NUM, bytes([1])))
    assert ctnl._tuple_at(icmp, 0, len(icmp)) == FlowTuple(ORIG.src, ORIG.dst, 1, 0, 0) and walked == [1, 1]


@kernel
def test_tcp_protoinfo_read_in_one_call_is_the_walks(ns, monkeypatch):
    """The kernel's own answer: its CTA_PROTOINFO is read by one struct call
    (no nest walked), giving the state and both directions' flags the walk
    gives; a protoinfo with the state alone (as destroy events carry) is
    walked."""
    async def run():
        sock = ctnl.CtnlSocket(netlink_socket(NS, NETLINK_NETFILTER))
        try:
            await create(sock)
            await sock.request(ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET, ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, ORIG)
                               + ctnl.tcp_flags_attr(IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL))
            seen = []
            monkeypatch.setattr(ctnl.CtnlSocket, "_parse", lambda self, data: seen.append(data) or parse(self, data))
            return await asyncio.wait_for(sock.request(ctnl.IPCTNL_MSG_CT_GET, socket.AF_INET,
                                                       ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, ORIG)), 10), seen
        finally:
            sock.sock.close()
    parse = ctnl.CtnlSocket._parse
    walked = []
    attrs = ctnl.attrs
    monkeypatch.setattr(ctnl, "attrs", lambda *a: walked.append(1) or attrs(*a))
    (fast,), seen = asyncio.run(run())
    assert (fast.tcp_state, fast.tcp_flags & IP_CT_TCP_FLAG_BE_LIBERAL) == (TCP_ESTABLISHED, IP_CT_TCP_FLAG_BE_LIBERAL)
    data = seen[0]
    end, mtype, flags, _, _ = ctnl._NLMSGHDR.unpack_from(data)
    assert ctnl.decode_walk(data, 0, end, mtype & 0xFF, flags) == fast    # Python's, with or without _ctnetlink
    assert walked == []
    monkeypatch.setattr(ctnl._TCP_INFO, "values", lambda *a: None)    # the walk alone
    slow = ctnl.decode_walk(data, 0, end, mtype & 0xFF, flags)
    assert walked and (slow.tcp_state, slow.tcp_flags, slow.tcp_flags_reply) == \
        (fast.tcp_state, fast.tcp_flags, fast.tcp_flags_reply)
    state_only = b"\0" * 20 + ctnl.tcp_state_attr(TCP_ESTABLISHED)     # nlmsghdr, nfgenmsg
    assert ctnl.decode(state_only, 0, len(state_only), 0, 0).tcp_state == TCP_ESTABLISHED


@kernel
def test_own_updates_are_filtered_out_in_the_kernel(ns):
    """The events of the command socket's own changes never reach the event
    socket (its BPF filter drops them); another port's changes and the
    creations do. An event is queued before the change's answer comes back
    (ctnetlink reports in the request's context), so an empty socket after
    the answer shows it dropped."""
    async def run():
        events = ctnl.CtnlSocket(netlink_socket(NS, NETLINK_NETFILTER))
        events.subscribe((ctnl.NFNLGRP_CONNTRACK_NEW, ctnl.NFNLGRP_CONNTRACK_UPDATE))
        cmd = ctnl.CtnlSocket(netlink_socket(NS, NETLINK_NETFILTER))
        other = ctnl.CtnlSocket(netlink_socket(NS, NETLINK_NETFILTER))
        events._loop.remove_reader(events.sock.fileno())      # read by hand below
        events.sock.setblocking(False)
        events.skip_events_of(cmd.portid)

        def queued() -> list[int]:
            pids = []
            while True:
                try:
                    data = events.sock.recv(1 << 16)
                except BlockingIOError:
                    return pids
                pids.append(ctnl._NLMSGHDR.unpack_from(data)[4])

        change = (ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET,
                  ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, ORIG) + ctnl.timeout_attr(500), 0)
        try:
            await create(other)
            made = queued()
            await cmd.request(*change)
            own = queued()
            await other.request(*change)
            theirs = queued()
            return made, own, theirs, other.portid
        finally:
            for s in (events, cmd, other):
                s.sock.close()
    made, own, theirs, other_pid = asyncio.run(run())
    assert made == [other_pid] and own == [] and theirs == [other_pid]


@kernel
def test_a_large_dump_gives_the_loop_turns_while_it_is_indexed(ns, monkeypatch):
    """A dump's entries are made the mirror's a slice at a time: other tasks
    run between slices (a million entries took seconds in one pass), and the
    mirror then holds every entry."""
    from p4flowtable import conntrack
    n = 3 * conntrack.TURN_EVERY + 500
    turns, at = [0], []
    convert = conntrack.entry_from_msg
    monkeypatch.setattr(conntrack, "entry_from_msg", lambda m: at.append(turns[0]) or convert(m))

    async def ticker():
        while True:
            turns[0] += 1
            await asyncio.sleep(0)

    async def run():
        sock = ctnl.CtnlSocket(netlink_socket(ns, NETLINK_NETFILTER))
        made = await sock.changes([
            (ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET,
             ctnl.create_payload(FlowTuple(ipv4(0x0A000000 + i), REPLY.src, 6, 40000, 80),
                                 FlowTuple(REPLY.src, ipv4(0x0A000000 + i), 6, 80, 40000),
                                 IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED, 600, TCP_ESTABLISHED),
             ctnl.NLM_F_CREATE | ctnl.NLM_F_EXCL) for i in range(n)])
        sock.close()
        assert made == [None] * n
        mirror = ConntrackMirror(ns)
        await mirror.open()
        tick = asyncio.create_task(ticker())
        try:
            dumped = await mirror.dump()
        finally:
            tick.cancel()
            await mirror.close()
        return dumped, mirror
    dumped, mirror = asyncio.run(run())
    assert len(dumped) == len(mirror.entries) == n
    assert len(at) == n and at[-1] - at[0] >= 3      # turns taken while the entries were indexed


@kernel
def test_a_batch_of_hand_backs_fixes_each_entry_up_and_reads_the_timeouts_once(ns, monkeypatch):
    """handed_back_many (flow_offload_fixup_ct for many flows): each entry's
    state timeout less its own idle time, only ever lowered; its mark's
    label bits cleared and the rest kept; an entry gone meanwhile is no
    error; the state timeouts read once for the batch."""
    from p4flowtable import netns as netns_mod
    reads = []
    real = netns_mod.read_sysctl
    monkeypatch.setattr(netns_mod, "read_sysctl", lambda n, k: reads.append(k) or real(n, k))

    def tuples(i):
        return (FlowTuple(ipv4(f"10.0.1.{i}"), ipv4("192.0.2.2"), 6, 40000 + i, 80),
                FlowTuple(ipv4("192.0.2.2"), ipv4("198.51.100.1"), 6, 80, 61000 + i))

    # entries get room for labels once a rule of the namespace uses them (nf_connlabels_get)
    subprocess.run(["ip", "netns", "exec", ns, "nft", "add table inet t; add chain inet t c; "
                    "add rule inet t c ct label set 100"], check=True)

    async def run():
        mirror = ConntrackMirror(ns)
        await mirror.open()
        writer = ctnl.CtnlSocket(netlink_socket(ns, 12))
        try:
            mark, other = 1 << 3, 1 << 9
            for i in range(1, 6):
                o, r = tuples(i)
                await writer.request(ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET,
                                     ctnl.create_payload(o, r, IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED,
                                                         NF_CT_DAY if i != 4 else 50, TCP_ESTABLISHED,
                                                         labels=mark | other),
                                     ctnl.NLM_F_CREATE | ctnl.NLM_F_EXCL)
            await mirror.dump()
            entries = [mirror.entries[tuples(i)[0]] for i in range(1, 6)]
            assert all(e.labels == mark | other for e in entries)
            subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-D", "-s", "10.0.1.5"],
                           capture_output=True, check=True)
            reads.clear()
            # 1: idle 100 s; 2: not idle; 3: idle past its whole timeout;
            # 4: 50 s left already, under what the fixup would give; 5: gone
            errors = await mirror.handed_back_many([(entries[0], 100, mark), (entries[1], 0, mark),
                                                    (entries[2], 1000, mark), (entries[3], 0, mark),
                                                    (entries[4], 0, mark)])
            assert errors == [None] * 5
            assert reads == ["net.netfilter.nf_conntrack_tcp_timeout_established"]
            now = [await mirror.get(tuples(i)[0]) for i in range(1, 6)]
            assert 190 <= now[0].timeout <= 200
            assert 295 <= now[1].timeout <= 300
            assert now[2] is None or now[2].timeout <= 1     # timeout 0: the kernel lets it go at once
            assert now[3].timeout <= 50
            assert now[4] is None
            assert [n.labels for n in now[:4] if n is not None] == [other] * (3 + (now[2] is not None))
            assert [e.labels for e in entries[:4]] == [other] * 4      # the mirror's copies too
            # the conntrack tool, an independent witness, sees the lowered timeout
            listed = conntrack_cli("-L", "-s", "10.0.1.1").split()
            assert "sport=40001" in listed and 185 <= int(listed[2]) <= 200, listed
            # one entry alone: the same as a batch of one
            await mirror.handed_back(now[1], 200, 0)
            assert 95 <= (await mirror.get(tuples(2)[0])).timeout <= 100
        finally:
            writer.close()
            await mirror.close()
    asyncio.run(run())


@kernel
def test_events_come_in_order_a_drain_at_a_time_and_a_lost_one_is_said(ns):
    """Events are read a drain at a time (one queue item per wake-up): they
    come out of messages() in the kernel's order. When the kernel drops
    events for a full socket buffer (ENOBUFS), messages() raises it, after
    every event read before it, so the mirror resyncs (ctevents.py)."""
    def tuples(i: int) -> tuple[FlowTuple, FlowTuple]:
        return (FlowTuple(ipv4(f"10.0.{i // 250}.{i % 250 + 1}"), ipv4("192.0.2.2"), 6, 40000, 80),
                FlowTuple(ipv4("192.0.2.2"), ipv4("198.51.100.1"), 6, 80, 20000 + i))

    async def run(n: int, rcvbuf: int | None):
        events = ctnl.CtnlSocket(netlink_socket(NS, NETLINK_NETFILTER))
        if rcvbuf is not None:
            events.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        events.subscribe((ctnl.NFNLGRP_CONNTRACK_NEW,))
        cmd = ctnl.CtnlSocket(netlink_socket(NS, NETLINK_NETFILTER))
        events._loop.remove_reader(events.sock.fileno())     # nothing read while they are made
        got: list[FlowTuple] = []
        try:
            await asyncio.gather(*(create(cmd, *tuples(i)) for i in range(n)))
            events._loop.add_reader(events.sock.fileno(), events._readable)

            async def follow():
                async for m in events.messages():
                    got.append(m.orig)
                    if len(got) == n:
                        return None
            try:
                await asyncio.wait_for(follow(), 5)
            except OSError as e:
                return got, e.errno
            return got, None
        finally:
            for s in (events, cmd):
                s.sock.close()

    got, err = asyncio.run(run(300, None))
    assert err is None and got == [tuples(i)[0] for i in range(300)]
    subprocess.run(["ip", "netns", "exec", NS, "conntrack", "-F"], capture_output=True)
    got, err = asyncio.run(run(300, 4096))      # room for a few events only
    assert err == errno.ENOBUFS and len(got) < 300


def test_offload_updates_are_the_change_requests_made_in_one_pass():
    """offloaded() builds a burst's conntrack updates without a call of
    _change each: the same requests, TCP and UDP, both families; and the
    socket numbers and frames them as one request at a time would: each
    message's length, type, flags, sequence number, and padding to 4 bytes."""
    v6 = ipaddress.IPv6Address
    entries = [CtEntry(1, ORIG, ORIG.reversed(), 0, TCP_ESTABLISHED, 300),
               CtEntry(2, FlowTuple(ipv4("10.0.1.1"), ipv4("192.0.2.2"), 17, 5353, 53),
                       FlowTuple(ipv4("192.0.2.2"), ipv4("10.0.1.1"), 17, 53, 5353), 0, None, 30),
               CtEntry(3, FlowTuple(v6("2001:db8:1::1"), v6("2001:db8:2::2"), 6, 40000, 443),
                       FlowTuple(v6("2001:db8:2::2"), v6("2001:db8:1::1"), 6, 443, 40000), 0, TCP_ESTABLISHED, 300)]
    sent: list = []

    class Cmd:
        async def changes(self, reqs):
            sent.extend(reqs)
            return [None] * len(reqs)

    mirror = ConntrackMirror(None)
    mirror._cmd = Cmd()
    assert asyncio.run(mirror.offloaded(entries, NF_CT_DAY)) == [None] * 3
    timeout = ctnl.timeout_attr(NF_CT_DAY)
    liberal = ctnl.tcp_flags_attr(IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL)
    assert sent == [ConntrackMirror._change(e, timeout, liberal if e.orig.l4proto == 6 else b"") for e in entries]
    assert [e.timeout for e in entries] == [NF_CT_DAY] * 3 and [e.liberal for e in entries] == [True, False, True]

    async def frames():
        sock = ctnl.CtnlSocket(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
        try:
            sock._seq = 0xFFFFFFFE        # the numbering wraps past 0, which no request takes
            return sock._encode_all([(ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET, b"x" * n, 0) for n in range(4)])
        finally:
            sock.close()
    if os.geteuid() != 0:
        pytest.skip("a netlink socket for the framing needs root here")
    got = asyncio.run(frames())
    assert [seq for seq, _ in got] == [0xFFFFFFFF, 1, 2, 3]
    for (seq, data), n in zip(got, range(4)):
        length, mtype, flags, s, pid = ctnl._NLMSGHDR.unpack_from(data)
        want_type = (ctnl.NFNL_SUBSYS_CTNETLINK << 8) | ctnl.IPCTNL_MSG_CT_NEW
        assert (length, mtype, flags, s, pid) == (16 + 4 + n, want_type, ctnl.NLM_F_REQUEST, seq, 0)
        assert data[16:20] == ctnl._NFGENMSG.pack(socket.AF_INET, 0, 0) and data[20:20 + n] == b"x" * n
        assert len(data) == (length + 3) & ~3 and data[length:] == b"\0" * (-length & 3)
