"""ctnetlink on an asyncio loop: the conntrack messages p4ft reads and writes.

Encodes and decodes only what the mirror uses (tuples, status, TCP state and
flags, timeout, id, helper, labels, mark), from the layout in the kernel's uapi headers
(linux/netfilter/nfnetlink_conntrack.h, linux/netlink.h). Requests are
pipelined: any number may be in flight on one socket, each matched to its
answer by sequence number.

pyroute2's NFCTSocket did this job first; its general decoder cost more CPU
per message than everything else the daemon does for a flow, and its sockets
take one request at a time (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import logging
import operator
import os
import socket
import struct
import sys
from dataclasses import dataclass

from .model import FlowTuple, ipv4

try:
    from . import _ctnetlink      # compiled at install (setup.py); decode() below reads in Python without it
except ImportError:
    _ctnetlink = None

# linux/netlink.h
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_CREATE, NLM_F_EXCL = 0x400, 0x200
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
# linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
IPCTNL_MSG_CT_GET_STATS = 5
CTA_STATS_GLOBAL_ENTRIES = 1     # enum ctattr_stats_global
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_HELP = 1, 2, 3, 4, 5
CTA_TIMEOUT, CTA_MARK, CTA_ID = 7, 8, 12
CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 9, 10
CTA_COUNTERS_PACKETS = 1
CTA_LABELS, CTA_LABELS_MASK = 22, 23
LABELS_LEN = 16          # NF_CT_LABELS_MAX_SIZE: 128 bits
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, CTA_PROTOINFO_TCP_WSCALE_REPLY = 2, 3
CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, CTA_PROTOINFO_TCP_FLAGS_REPLY = 4, 5

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_NLA = struct.Struct("=HH")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_ERRNO = struct.Struct("=i")
HDR_LEN = _NLMSGHDR.size + _NFGENMSG.size
RECV_SIZE = 1 << 17
_PAD = (b"", b"\0", b"\0\0", b"\0\0\0")    # a message's padding to 4 bytes, by its length's remainder
EVENT_DRAIN = 8192      # datagrams read per wake-up on an event socket
REQUEST_BATCH = 64      # requests per datagram
# Requests in flight at once. The kernel answers every request of a datagram
# while we send it, into this socket's receive buffer; more answers than it
# holds are dropped (ENOBUFS) and their requests' outcome is lost. 100,000
# lease writes at once after a restart lost most of their answers.
REQUEST_WINDOW = 512


class CtnlError(OSError):
    """The kernel refused a ctnetlink request."""


@dataclass(slots=True)
class CtMsg:
    """One conntrack message; fields the kernel left out are None."""
    msg_type: int          # IPCTNL_MSG_CT_*
    flags: int             # nlmsghdr flags (NLM_F_CREATE on a NEW event)
    orig: FlowTuple | None = None
    reply: FlowTuple | None = None
    status: int | None = None
    tcp_state: int | None = None
    timeout: int | None = None
    id: int | None = None
    helper: bool = False
    tcp_flags: int | None = None   # the original direction's IP_CT_TCP_FLAG_* bits
    tcp_flags_reply: int | None = None   # and the reply direction's
    labels: int | None = None      # ct label bits (bit N of the label is 1 << N)
    packets: int | None = None     # both directions, where conntrack accounting is on
    mark: int | None = None        # ct mark (what `meta mark set ct mark` restores)
    entries: int | None = None     # a stats answer's: the namespace's conntrack entries


# -- decoding ------------------------------------------------------------------
def attrs(buf: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (payload start, payload end), one nesting level."""
    out = {}
    unpack = _NLA.unpack_from
    while start + 4 <= end:
        length, atype = unpack(buf, start)
        if length < 4 or start + length > end:
            break
        out[atype & NLA_TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return out


def _uint(buf: bytes, span: tuple[int, int] | None, size: int) -> int | None:
    """A big-endian integer attribute; None if absent or too short."""
    if span is None or span[1] - span[0] < size:
        return None
    return int.from_bytes(buf[span[0]:span[0] + size], "big")


# an address's constructor by its length in bytes (IPv4: shared objects, model.ipv4)
_ADDRESS = {4: ipv4, 16: ipaddress.IPv6Address}
if _ctnetlink is not None:      # its tuples made as FlowTuples by the decoder itself
    _ctnetlink.configure(FlowTuple, ipv4, ipaddress.IPv6Address)


def _addr(buf: bytes, span: tuple[int, int] | None):
    if span is None:
        return None
    raw = buf[span[0]:span[1]]
    make = _ADDRESS.get(len(raw))
    return make(raw) if make is not None else None


def _labels(buf: bytes, span: tuple[int, int] | None) -> int | None:
    """CTA_LABELS: the kernel's label bitmap, an array of host-order words
    (bit N is test_bit(N)); read as one little-endian integer, which is the
    same thing on the little-endian machines p4ft runs on."""
    if span is None:
        return None
    return int.from_bytes(buf[span[0]:span[1]], "little")


class _Layout:
    """A nest as the kernel lays it out, read by one struct call. `shape`
    follows the struct's items: a (length, type) pair where an attribute's
    header is (two items), and where a value is, a zero of its kind (0, or
    b"" for bytes). `values` gives the values where every header is as
    expected (types without their flag bits) and the nest holds nothing
    more, else None: the headers are checked at once, the nest's bytes as
    one integer under a mask that keeps the headers alone. (An attribute
    after them would change what the walk reads: a field given twice keeps
    the last.)"""

    def __init__(self, fmt: str, shape: tuple):
        st = struct.Struct(fmt)
        mask, want, at = [], [], []
        for item in shape:
            if isinstance(item, tuple):
                mask += [0xFFFF, NLA_TYPE_MASK]
                want += item
            else:
                at.append(len(mask))
                mask.append(item)
                want.append(item)
        size, unpack, values_of = st.size, st.unpack_from, operator.itemgetter(*at)
        mask = int.from_bytes(st.pack(*mask), "little")
        want = int.from_bytes(st.pack(*want), "little")

        def values(buf: bytes, pos: int, end: int) -> tuple | None:
            if end - pos != size or int.from_bytes(buf[pos:pos + size], "little") & mask != want:
                return None
            return values_of(unpack(buf, pos))
        self.values = values


# A tuple's payload as ctnetlink_dump_tuples lays it out for TCP and UDP (and
# tuple_attr encodes it): the address nest, then the protocol nest, each
# attribute in order. The ports are read in host order and swapped.
def _tuple_layout_in(alen: int, src: int, dst: int) -> _Layout:
    return _Layout(f"=HHHH{alen}sHH{alen}sHHHHB3xHHH2xHHH2x",
                   ((4 + 2 * (4 + alen), CTA_TUPLE_IP), (4 + alen, src), b"", (4 + alen, dst), b"",
                    (28, CTA_TUPLE_PROTO), (5, CTA_PROTO_NUM), 0, (6, CTA_PROTO_SRC_PORT), 0,
                    (6, CTA_PROTO_DST_PORT), 0))


# keyed by the address nest's length, the nest's first two bytes
_TUPLE_BODY = {20: (_tuple_layout_in(4, CTA_IP_V4_SRC, CTA_IP_V4_DST), _ADDRESS[4]),
               44: (_tuple_layout_in(16, CTA_IP_V6_SRC, CTA_IP_V6_DST), _ADDRESS[16])}
_SWAP16 = sys.byteorder == "little"


def _tuple_at(buf: bytes, pos: int, end: int) -> FlowTuple | None:
    """CTA_TUPLE_ORIG/REPLY's payload: addresses and ports, in one struct
    call where laid out as the kernel lays out TCP and UDP tuples, else in
    one walk of each nest (a NEW event carries two; this is the events' hot
    path)."""
    if pos + 4 <= end:
        got = _TUPLE_BODY.get(_NLA.unpack_from(buf, pos)[0])
        if got is not None:
            v = got[0].values(buf, pos, end)
            if v is not None:
                a1, a2, num, sp, dp = v
                if _SWAP16:
                    sp, dp = (sp & 0xFF) << 8 | sp >> 8, (dp & 0xFF) << 8 | dp >> 8
                return FlowTuple(got[1](a1), got[1](a2), num, sp, dp)
    return _tuple_walk(buf, pos, end)


def _tuple_walk(buf: bytes, pos: int, end: int) -> FlowTuple | None:
    """_tuple_at, attribute by attribute (any order, any protocol)."""
    unpack = _NLA.unpack_from
    src = dst = num = None
    sport = dport = 0
    while pos + 4 <= end:
        length, atype = unpack(buf, pos)
        if length < 4 or pos + length > end:
            break
        inner, stop = pos + 4, pos + length
        atype &= NLA_TYPE_MASK
        if atype == CTA_TUPLE_IP:
            while inner + 4 <= stop:
                ln, at = unpack(buf, inner)
                if ln < 4 or inner + ln > stop:
                    break
                at &= NLA_TYPE_MASK
                if at in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = _addr(buf, (inner + 4, inner + ln))
                elif at in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = _addr(buf, (inner + 4, inner + ln))
                inner += (ln + 3) & ~3
        elif atype == CTA_TUPLE_PROTO:
            while inner + 4 <= stop:
                ln, at = unpack(buf, inner)
                if ln < 4 or inner + ln > stop:
                    break
                at &= NLA_TYPE_MASK
                if at == CTA_PROTO_NUM and ln >= 5:
                    num = buf[inner + 4]
                elif at == CTA_PROTO_SRC_PORT and ln >= 6:
                    sport = _BE16.unpack_from(buf, inner + 4)[0]
                elif at == CTA_PROTO_DST_PORT and ln >= 6:
                    dport = _BE16.unpack_from(buf, inner + 4)[0]
                inner += (ln + 3) & ~3
        pos += (length + 3) & ~3
    if src is None or dst is None or num is None or src.version != dst.version:
        return None
    return FlowTuple(src, dst, num, sport, dport)


# CTA_PROTOINFO's payload as tcp_to_nlattr lays it out in an event or a dump
# (a destroy event has the state alone, and is walked): the TCP nest, then
# the state, both window scales and both directions' flags (struct
# nf_ct_tcp_flags: flags, then mask; the flags read), each in order.
_TCP_INFO = _Layout("=HH" + "HHB3x" * 3 + "HHB3x" * 2,
                    ((44, CTA_PROTOINFO_TCP), (5, CTA_PROTOINFO_TCP_STATE), 0,
                     (5, CTA_PROTOINFO_TCP_WSCALE_ORIGINAL), 0, (5, CTA_PROTOINFO_TCP_WSCALE_REPLY), 0,
                     (6, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL), 0, (6, CTA_PROTOINFO_TCP_FLAGS_REPLY), 0))


def decode(buf: bytes, off: int, end: int, msg_type: int, flags: int) -> CtMsg:
    """One ctnetlink message; attributes that are missing or malformed are None.
    Its attributes read in native code (_ctnetlink.c) where that is built,
    else by decode_walk, which it is held to (tests/test_ctnetlink_native.py)."""
    if _ctnetlink is None or msg_type == IPCTNL_MSG_CT_GET_STATS:
        return decode_walk(buf, off, end, msg_type, flags)
    return CtMsg(msg_type, flags, *_ctnetlink.decode(buf, off, end))


def decode_walk(buf: bytes, off: int, end: int, msg_type: int, flags: int) -> CtMsg:
    """decode in Python: one walk of the top level; nests are walked only
    where a field is read."""
    unpack = _NLA.unpack_from
    m = CtMsg(msg_type, flags)
    pos = off + HDR_LEN
    if msg_type == IPCTNL_MSG_CT_GET_STATS:      # its attributes are ctattr_stats_global's
        m.entries = _uint(buf, attrs(buf, pos, end).get(CTA_STATS_GLOBAL_ENTRIES), 4)
        return m
    while pos + 4 <= end:
        length, atype = unpack(buf, pos)
        if length < 4 or pos + length > end:
            break
        start, stop = pos + 4, pos + length
        atype &= NLA_TYPE_MASK
        if atype == CTA_TUPLE_ORIG:
            m.orig = _tuple_at(buf, start, stop)
        elif atype == CTA_TUPLE_REPLY:
            m.reply = _tuple_at(buf, start, stop)
        elif atype == CTA_STATUS and stop - start >= 4:
            m.status = _BE32.unpack_from(buf, start)[0]
        elif atype == CTA_TIMEOUT and stop - start >= 4:
            m.timeout = _BE32.unpack_from(buf, start)[0]
        elif atype == CTA_ID and stop - start >= 4:
            m.id = _BE32.unpack_from(buf, start)[0]
        elif atype == CTA_MARK and stop - start >= 4:
            m.mark = _BE32.unpack_from(buf, start)[0]
        elif atype == CTA_LABELS:
            m.labels = int.from_bytes(buf[start:stop], "little")
        elif atype == CTA_HELP:
            m.helper = True
        elif atype == CTA_PROTOINFO:
            got = _TCP_INFO.values(buf, start, stop)
            if got is not None:
                m.tcp_state, _, _, m.tcp_flags, m.tcp_flags_reply = got
            elif (tcp := attrs(buf, start, stop).get(CTA_PROTOINFO_TCP)) is not None:
                info = attrs(buf, *tcp)
                m.tcp_state = _uint(buf, info.get(CTA_PROTOINFO_TCP_STATE), 1)
                m.tcp_flags = _uint(buf, info.get(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL), 1)
                m.tcp_flags_reply = _uint(buf, info.get(CTA_PROTOINFO_TCP_FLAGS_REPLY), 1)
        elif atype in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY):
            n = _uint(buf, attrs(buf, start, stop).get(CTA_COUNTERS_PACKETS), 8)
            m.packets = (m.packets or 0) + (n or 0)
        pos += (length + 3) & ~3
    return m


# -- encoding --------------------------------------------------------------------
def nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _NLA.pack(n, atype) + payload + b"\0" * ((-n) & 3)


def nest(atype: int, *children: bytes) -> bytes:
    return nla(atype | NLA_F_NESTED, b"".join(children))


def _tuple_layout(alen: int) -> struct.Struct:
    a = f"HH{alen}s"
    return struct.Struct("=HH" + "HH" + a + a + "HH" + "HHB3x" + "HH2s2x" + "HH2s2x")


_TUPLE = {4: _tuple_layout(4), 16: _tuple_layout(16)}


# written in native code where that is built (_ctnetlink.c): every offloaded
# connection's conntrack update names its original tuple
_native_tuple_attr = getattr(_ctnetlink, "tuple_attr", None)
# and each datagram of events walked in one call
_native_events = getattr(_ctnetlink, "events", None)


def tuple_attr(atype: int, t) -> bytes:
    """CTA_TUPLE_ORIG/REPLY from anything with src, dst, l4proto, sport, dport
    (one struct call; tuple_attr_nested builds the same attribute by attribute)."""
    if _native_tuple_attr is not None and (got := _native_tuple_attr(atype, t)) is not None:
        return got
    return py_tuple_attr(atype, t)


def py_tuple_attr(atype: int, t) -> bytes:
    """tuple_attr in Python: what the native one is held to, and where it
    does not apply."""
    src, dst = t.src.packed, t.dst.packed
    alen = len(src)
    st = _TUPLE.get(alen)
    if st is None or len(dst) != alen:
        return tuple_attr_nested(atype, t)
    ip_len = 4 + 2 * (4 + alen)
    v6 = alen == 16
    return st.pack(st.size, atype | NLA_F_NESTED, ip_len, CTA_TUPLE_IP | NLA_F_NESTED,
                   4 + alen, CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC, src,
                   4 + alen, CTA_IP_V6_DST if v6 else CTA_IP_V4_DST, dst,
                   28, CTA_TUPLE_PROTO | NLA_F_NESTED, 5, CTA_PROTO_NUM, t.l4proto,
                   6, CTA_PROTO_SRC_PORT, _BE16.pack(t.sport), 6, CTA_PROTO_DST_PORT, _BE16.pack(t.dport))


def tuple_attr_nested(atype: int, t) -> bytes:
    """tuple_attr, attribute by attribute."""
    v6 = t.src.version == 6
    return nest(atype,
                nest(CTA_TUPLE_IP, nla(CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC, t.src.packed),
                     nla(CTA_IP_V6_DST if v6 else CTA_IP_V4_DST, t.dst.packed)),
                nest(CTA_TUPLE_PROTO, nla(CTA_PROTO_NUM, bytes([t.l4proto])),
                     nla(CTA_PROTO_SRC_PORT, _BE16.pack(t.sport)), nla(CTA_PROTO_DST_PORT, _BE16.pack(t.dport))))


def timeout_attr(seconds: int) -> bytes:
    return nla(CTA_TIMEOUT, _BE32.pack(seconds))


def status_attr(status: int) -> bytes:
    return nla(CTA_STATUS, _BE32.pack(status))


def tcp_state_attr(state: int) -> bytes:
    return nest(CTA_PROTOINFO, nest(CTA_PROTOINFO_TCP, nla(CTA_PROTOINFO_TCP_STATE, bytes([state]))))


def labels_attr(labels: int, mask: int | None = None) -> bytes:
    """CTA_LABELS (and CTA_LABELS_MASK): on an existing entry only the bits
    under the mask change (ctnetlink_attach_labels -> nf_connlabels_replace)."""
    out = nla(CTA_LABELS, labels.to_bytes(LABELS_LEN, "little"))
    return out + (nla(CTA_LABELS_MASK, mask.to_bytes(LABELS_LEN, "little")) if mask is not None else b"")


def create_payload(orig, reply, status: int, timeout: int, tcp_state: int | None = None,
                   labels: int = 0) -> bytes:
    """Attributes of a new entry (IPCTNL_MSG_CT_NEW with NLM_F_CREATE): how the
    tests and benchmarks make real kernel entries without traffic. `labels`
    stands for what the ruleset's `ct label set` (a flowtable mark) would set."""
    p = tuple_attr(CTA_TUPLE_ORIG, orig) + tuple_attr(CTA_TUPLE_REPLY, reply) + status_attr(status) \
        + timeout_attr(timeout)
    p += tcp_state_attr(tcp_state) if tcp_state is not None else b""
    return p + (labels_attr(labels) if labels else b"")


def tcp_flags_attr(flags: int, mask: int) -> bytes:
    """CTA_PROTOINFO with struct nf_ct_tcp_flags {u8 flags; u8 mask;} for both directions."""
    f = bytes([flags, mask])
    return nest(CTA_PROTOINFO, nest(CTA_PROTOINFO_TCP, nla(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, f),
                                    nla(CTA_PROTOINFO_TCP_FLAGS_REPLY, f)))


def family_of(t) -> int:
    return socket.AF_INET6 if isinstance(t.src, ipaddress.IPv6Address) else socket.AF_INET


# -- the socket --------------------------------------------------------------------
SO_ATTACH_FILTER = 26         # asm-generic/socket.h
_SOCK_FILTER = struct.Struct("=HBBI")     # struct sock_filter: code, jt, jf, k
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06

log = logging.getLogger(__name__)


def attach_skip_pid_filter(sock: socket.socket, pid: int) -> None:
    """Attach a classic BPF program dropping each datagram whose first
    netlink message names port `pid` (nlmsg_pid, at offset 12; an event is a
    datagram of its own). BPF loads words in network order and the header
    holds host order: the constant is the port's bytes read big-endian."""
    k = int.from_bytes(pid.to_bytes(4, sys.byteorder), "big")
    code = b"".join(_SOCK_FILTER.pack(*i) for i in (
        (BPF_LD_W_ABS, 0, 0, 12),
        (BPF_JEQ_K, 0, 1, k),
        (BPF_RET_K, 0, 0, 0),              # drop
        (BPF_RET_K, 0, 0, 0xFFFFFFFF)))    # keep whole
    buf = ctypes.create_string_buffer(code, len(code))     # alive until the kernel has copied it
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HP", len(code) // _SOCK_FILTER.size, ctypes.addressof(buf)))


class CtnlSocket:
    """A NETLINK_NETFILTER socket on the running loop.

    Either a command socket (request/dump) or, after subscribe(), an event
    socket (messages()); not both.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.setblocking(False)
        self._seq = 0
        self._pending: dict[int, tuple[asyncio.Future, list[CtMsg]]] = {}
        self._quiet: dict[int, dict[int, Exception]] = {}   # seq of an unacknowledged change -> its window's errors
        self._events: asyncio.Queue | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self._closed = False
        self.skip_pid = 0      # events caused by this netlink port are not decoded

    @property
    def portid(self) -> int:
        """This socket's netlink port id (bound on first use if need be)."""
        pid = self.sock.getsockname()[0]
        if pid == 0:
            self.sock.bind((0, 0))
            pid = self.sock.getsockname()[0]
        return pid

    def skip_events_of(self, pid: int) -> None:
        """Events caused by the netlink port `pid` are not delivered: a
        socket filter drops them in the kernel, before they take room in the
        socket's buffer or a receive (the way libnetfilter_conntrack filters
        events). Where the filter cannot be attached, they are received and
        not decoded."""
        self.skip_pid = pid
        try:
            attach_skip_pid_filter(self.sock, pid)
        except OSError as e:
            log.warning("ctnetlink event filter not attached (%s): p4ft's own updates are received and skipped", e)

    def subscribe(self, groups: tuple[int, ...]) -> None:
        mask = 0
        for g in groups:
            mask |= 1 << (g - 1)
        self.sock.bind((0, mask))
        self._events = asyncio.Queue()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        err = CtnlError(errno.EBADF, "ctnetlink socket closed")
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        if self._events is not None:
            self._events.put_nowait(err)

    def _encode(self, msg_type: int, family: int, payload: bytes, flags: int) -> tuple[int, bytes]:
        return self._encode_all(((msg_type, family, payload, flags),))[0]

    def _encode_all(self, reqs) -> list[tuple[int, bytes]]:
        """Each (msg_type, family, payload, flags) request's sequence number
        and bytes, numbered in turn (a burst's updates: one call for all)."""
        out = []
        seq, head, gen = self._seq, _NLMSGHDR.pack, _NFGENMSG.pack
        for msg_type, family, payload, flags in reqs:
            seq = (seq + 1) & 0xFFFFFFFF or 1
            body = gen(family, 0, 0) + payload
            n = len(body)
            out.append((seq, head(_NLMSGHDR.size + n, (NFNL_SUBSYS_CTNETLINK << 8) | msg_type, NLM_F_REQUEST | flags,
                                  seq, 0) + body + _PAD[-n & 3]))
        self._seq = seq
        return out

    def _message(self, msg_type: int, family: int, payload: bytes, flags: int) -> tuple[int, bytes, asyncio.Future]:
        seq, data = self._encode(msg_type, family, payload, flags | NLM_F_ACK)
        fut = self._loop.create_future()
        self._pending[seq] = (fut, [])
        return seq, data, fut

    def _send_all(self, msgs: list[tuple[int, bytes, asyncio.Future]]) -> None:
        """One datagram for many requests: the kernel handles each message in
        turn (netlink_rcv_skb) and acknowledges each."""
        try:
            self.sock.send(b"".join(m for _, m, _ in msgs))
        except OSError as e:
            for seq, _, fut in msgs:
                if fut is None:          # a quiet change (changes()): its window's last request fails too
                    self._quiet.get(seq, {})[seq] = e
                    continue
                del self._pending[seq]
                fut.set_exception(e)

    async def request(self, msg_type: int, family: int, payload: bytes, flags: int = 0) -> list[CtMsg]:
        """Send one request; the messages it answers with, after the kernel's ACK
        or NLMSG_DONE. Raises CtnlError with the kernel's errno."""
        msg = self._message(msg_type, family, payload, flags)
        self._send_all([msg])
        return await msg[2]

    async def requests(self, reqs: list[tuple[int, int, bytes, int]]) -> list:
        """Several requests in flight together, (msg_type, family, payload,
        flags) each, sent REQUEST_BATCH to a datagram and at most
        REQUEST_WINDOW unanswered: per request its messages or its error, in
        order."""
        out: list = []
        for w in range(0, len(reqs), REQUEST_WINDOW):
            msgs = [self._message(*req) for req in reqs[w:w + REQUEST_WINDOW]]
            for i in range(0, len(msgs), REQUEST_BATCH):
                self._send_all(msgs[i:i + REQUEST_BATCH])
            out += await asyncio.gather(*(fut for _, _, fut in msgs), return_exceptions=True)
        return out

    async def changes(self, reqs: list[tuple[int, int, bytes, int]]) -> list[Exception | None]:
        """Requests the kernel answers with nothing but their outcome
        (updates of entries): per request None or its error, in order.

        Only the last request of each window asks for an acknowledgement
        (NLM_F_ACK); the kernel reports the others only if they fail
        (netlink_rcv_skb acks a message when asked or on error) and handles
        a datagram's messages in order, so that acknowledgement says every
        earlier one without an error succeeded. A burst of offloads costs
        one answer to read per window instead of one per connection."""
        out: list = []
        for w in range(0, len(reqs), REQUEST_WINDOW):
            chunk = reqs[w:w + REQUEST_WINDOW]
            errors: dict[int, Exception] = {}
            encoded = self._encode_all(chunk[:-1])
            seqs = [seq for seq, _ in encoded]
            self._quiet.update(dict.fromkeys(seqs, errors))
            msgs: list = [(seq, data, None) for seq, data in encoded]
            last = self._message(*chunk[-1])
            msgs.append(last)
            for i in range(0, len(msgs), REQUEST_BATCH):
                self._send_all(msgs[i:i + REQUEST_BATCH])
            try:
                await last[2]
                final = None
            except Exception as e:
                final = e
            for seq in seqs:
                self._quiet.pop(seq, None)
            if isinstance(final, CtnlError) and final.errno != errno.ENOBUFS:
                out += [errors.get(seq) for seq in seqs] + [final]
            elif final is not None:         # answers lost, or the socket failed: outcome unknown
                out += [errors.get(seq, final) for seq in seqs] + [final]
            else:
                out += [errors.get(seq) for seq in seqs] + [None]
        return out

    async def dump(self, family: int = socket.AF_UNSPEC) -> list[CtMsg]:
        return await self.request(IPCTNL_MSG_CT_GET, family, b"", NLM_F_DUMP)

    async def count(self) -> int | None:
        """How many entries the namespace's conntrack table holds, without
        a dump (ctnetlink_stat_ct: nf_conntrack_count); None when the
        kernel's answer lacks it."""
        for m in await self.request(IPCTNL_MSG_CT_GET_STATS, socket.AF_UNSPEC, b""):
            if m.entries is not None:
                return m.entries
        return None

    async def messages(self):
        """Events as they come. Raises OSError(ENOBUFS) when the kernel dropped some."""
        n = 0
        while True:
            item = await self._events.get()
            if isinstance(item, Exception):
                raise item
            for data in item:       # the datagrams of one drain
                for m in self._decode_events(data, self.skip_pid):
                    yield m
                n += 1
                if n % 256 == 0:
                    # neither a long drain nor a get() from a non-empty
                    # queue gives the loop a turn; the socket must be
                    # drained meanwhile
                    await asyncio.sleep(0)

    def _readable(self) -> None:
        # Events are queued raw and decoded by their consumer: draining the
        # socket must outpace a burst (thousands of new connections) even
        # while the loop is busy, or the kernel drops events (ENOBUFS). A
        # drain's datagrams are one item of the queue: a put and a get cost
        # about a microsecond, once per event before.
        if self._events is not None:
            self._drain_events()
            return
        for _ in range(64):
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as e:   # ENOBUFS: answers were lost
                # an answer lost is a request that would wait forever: each
                # pending one fails, and its caller decides (retry, or not)
                for fut, _ in self._pending.values():
                    if not fut.done():
                        fut.set_exception(CtnlError(e.errno, f"ctnetlink answers lost: {e.strerror}"))
                self._pending.clear()
                return
            self._parse(data)

    def _drain_events(self) -> None:
        got: list[bytes] = []
        recv = self.sock.recv
        try:
            for _ in range(EVENT_DRAIN):
                got.append(recv(RECV_SIZE))
        except BlockingIOError:
            pass
        except OSError as e:   # ENOBUFS: events were lost; after those read before it
            if got:
                self._events.put_nowait(got)
            self._events.put_nowait(e)
            return
        if got:
            self._events.put_nowait(got)

    @staticmethod
    def _decode_events(data: bytes, skip_pid: int = 0):
        # An event carries the port id of the netlink request that caused it
        # (ctnetlink_conntrack_event puts item->portid); 0 for packets.
        if _native_events is not None:      # the walk below in one call (_ctnetlink.c)
            for msg_type, flags, start, end, fields in _native_events(data, skip_pid):
                yield CtMsg(msg_type, flags, *fields) if msg_type != IPCTNL_MSG_CT_GET_STATS \
                    else decode_walk(data, start, end, msg_type, flags)
            return
        yield from CtnlSocket._walk_events(data, skip_pid)

    @staticmethod
    def _walk_events(data: bytes, skip_pid: int = 0):
        """_decode_events in Python: what the native walk is held to."""
        off, n = 0, len(data)
        while off + _NLMSGHDR.size <= n:
            length, mtype, flags, _seq, pid = _NLMSGHDR.unpack_from(data, off)
            if length < _NLMSGHDR.size or off + length > n:
                return
            if mtype >> 8 == NFNL_SUBSYS_CTNETLINK and not (skip_pid and pid == skip_pid):
                yield decode(data, off, off + length, mtype & 0xFF, flags)
            off += (length + 3) & ~3

    def _parse(self, data: bytes) -> None:
        """Answers to requests, matched by sequence number."""
        off, n = 0, len(data)
        while off + _NLMSGHDR.size <= n:
            length, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
            if length < _NLMSGHDR.size or off + length > n:
                break
            off, start = off + ((length + 3) & ~3), off
            pend = self._pending.get(seq)
            if pend is None:
                window = self._quiet.get(seq)
                if window is not None and mtype == NLMSG_ERROR and length >= _NLMSGHDR.size + 4:
                    err = -_ERRNO.unpack_from(data, start + _NLMSGHDR.size)[0]
                    if err:
                        window[seq] = CtnlError(err, os.strerror(err))
                continue
            fut, got = pend
            if mtype == NLMSG_ERROR:
                err = (-_ERRNO.unpack_from(data, start + _NLMSGHDR.size)[0]
                       if length >= _NLMSGHDR.size + 4 else errno.EBADMSG)
                del self._pending[seq]
                if not fut.done():
                    if err:
                        fut.set_exception(CtnlError(err, os.strerror(err)))
                    else:
                        fut.set_result(got)
            elif mtype == NLMSG_DONE:
                del self._pending[seq]
                if not fut.done():
                    fut.set_result(got)
            elif mtype >> 8 == NFNL_SUBSYS_CTNETLINK:
                got.append(decode(data, start, start + length, mtype & 0xFF, flags))
