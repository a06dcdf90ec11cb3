"""Where the kernel sends each direction of a flow (nft_flow_route), and with
what key it decided.

Two sources, compared:
- the frames the kernel sent for the connection: the relay sees each one leave
  a representor after routing, NAT and neighbour resolution (`observe_egress`);
  that is the decision itself, whatever made it (ip rules, a mark a rule set,
  the multipath hash);
- a route lookup with the key the kernel routed the packet by: the input
  interface, the source, the destination after DNAT, the connection's mark,
  the protocol and ports. RTM_GETROUTE with an input interface routes a packet
  built of that key as received (inet_rtm_getroute, inet6_rtm_getroute): ip
  rules, every table, ECMP under the L3 or the L4 hash policy, as for the
  packet itself.
Where both agree, the key is the direction's: reroute.py follows a change by
asking again with it. Where they disagree (a mark a rule set and conntrack
does not keep, say), the frames win and the key is None: a change then hands
the flow back to the kernel, which decides again, as its own flowtable does
when a route goes stale (nf_flow_dst_check). The packet's TOS is not part of
the key: routing by TOS is not followed.

Answers are kept for a second, under a key without the protocol and ports,
where the kernel's answer cannot depend on them: the kernel routes a
direction by ports and protocol only in an ip rule that selects on them, or
in a multipath route's hash. So a family none of whose rules selects on
anything but addresses, marks, interfaces, tables and priorities (read from
a dump of the rules, again after each rule change) is cached by (destination,
source, input interface, mark), once an RTM_F_FIB_MATCH lookup with the full
key (made with the second lookup of the same reduced key, in the same
datagram) has shown the FIB entry matched to be a single path: the kernel
then chose among nothing. A bare destination's lookup is its whole request,
cached as it is. Any routing change (`changed`) empties the cache, and an
answer asked before a change is not kept; what has no netlink event (a path
MTU learned, a sysctl) is seen within the second. Each flow decided still
costs the kernel what its own flowtable pays per flow (nft_flow_route looks
up both directions), in the kernel's answers shared between flows.

The lookups are pipelined on a raw rtnetlink socket, and encoded and decoded
here (RTA_* from linux/rtnetlink.h): pyroute2 0.9 has no RTA_IP_PROTO,
RTA_SPORT or RTA_DPORT, and its generic codec costs about 380 us a lookup,
which a route change under 10,000 flows would pay 10,000 times. Links and
neighbours are read with pyroute2.
"""

from __future__ import annotations

import asyncio
import functools
import collections
import ipaddress
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from .model import FlowRoute, FlowTuple

log = logging.getLogger(__name__)

# linux/rtnetlink.h, linux/netlink.h, linux/neighbour.h
RTM_GETROUTE = 26
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
RTA_DST, RTA_SRC, RTA_IIF, RTA_OIF, RTA_GATEWAY = 1, 2, 3, 4, 5
RTA_METRICS, RTA_MULTIPATH, RTA_TABLE, RTA_MARK, RTA_VIA = 8, 9, 15, 16, 18
RTA_IP_PROTO, RTA_SPORT, RTA_DPORT, RTA_NH_ID = 27, 28, 29, 30
RTM_F_FIB_MATCH = 0x2000     # answer with the FIB entry matched, not the path chosen from it
RTAX_MTU = 2
RTN_UNICAST = 1
RTN_NAMES = {2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
             7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}
# Neighbour states the kernel would transmit to without resolving again.
NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT
NUD_NOARP = 0x40     # on Ethernet, a multicast or broadcast address's: no host, no next hop to hold

_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")      # family dst_len src_len tos table protocol scope type flags
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
LOOKUP_WINDOW = 256        # lookups in flight: their answers must fit the socket's buffer
CACHE_TTL = 1.0            # seconds an answer is kept (what changes without an event is seen within it)
CACHE_SIZE = 1 << 16       # answers kept; emptied when full
_SEEN, _MULTI = "seen once", "multipath"   # cache markers: asked once; matched a multipath entry
# ip rule attributes (linux/fib_rules.h FRA_*) that select by what the cache's key keeps, or by
# nothing of the packet; a rule with any other (FRA_IP_PROTO, FRA_SPORT_RANGE, FRA_DPORT_RANGE,
# or one this list does not know) routes by more, and its family is not cached.
RULE_ATTRS_CACHED = frozenset({
    "FRA_DST", "FRA_SRC", "FRA_IIFNAME", "FRA_OIFNAME", "FRA_GOTO", "FRA_PRIORITY", "FRA_FWMARK",
    "FRA_FWMASK", "FRA_FLOW", "FRA_SUPPRESS_IFGROUP", "FRA_SUPPRESS_PREFIXLEN", "FRA_TABLE", "FRA_PAD",
    "FRA_L3MDEV", "FRA_UID_RANGE", "FRA_PROTOCOL", "FRA_TUN_ID"})
EGRESS_REMEMBERED = 65536  # frames' egress kept for decisions still to come


class RouteError(Exception):
    """No usable path for one direction of a flow (yet)."""


class RouteKey(NamedTuple):
    """What the kernel routes one direction's packets by: they arrive on
    `iif` (an ifindex) and are routed to dst (after DNAT) from src (before
    SNAT) with the packet mark, protocol and ports (the multipath hash's).
    Named tuples, this and Lookup: two of each are made for every flow
    decided, and a frozen dataclass costs a call per field."""

    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    iif: int
    mark: int
    l4proto: int
    sport: int
    dport: int


@dataclass(frozen=True, slots=True)
class Egress:
    """A frame the kernel sent: out of which port, with which MACs, and when
    (in `Routes.epoch`s: one that predates a routing change says nothing of now)."""

    port: int
    src_mac: str
    dst_mac: str
    epoch: int = 0


# a RouteKey from its tuple of fields without a Python call (RouteKey(...) is
# one, its generated __new__): two are made for every flow decided
_route_key = functools.partial(tuple.__new__, RouteKey)


def route_keys(orig: FlowTuple, reply: FlowTuple, iif: tuple[int, int], mark: int) -> tuple[RouteKey, RouteKey]:
    """The keys of both directions. ORIGINAL packets are routed to the reply's
    source (the DNAT target) from their own source; REPLY packets to the
    original source (un-SNATted) from the reply's source. Ports likewise."""
    return (_route_key((reply.src, orig.src, iif[0], mark, orig.l4proto, orig.sport, reply.sport)),
            _route_key((orig.src, reply.src, iif[1], mark, reply.l4proto, reply.sport, orig.sport)))


def _nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _NLA.pack(n, atype) + payload + b"\0" * ((-n) & 3)


def _keyed_lookup(addr_len: int) -> struct.Struct:
    """The layout of a keyed RTM_GETROUTE (encode_lookup's) for one address
    size: header, rtmsg and seven attributes, packed by one call."""
    a = f"HH{addr_len}s"
    return struct.Struct("=IHHII" + "BBBBBBBBI" + a + a + "HHI" + "HHI" + "HHB3x" + "HH2s2x" + "HH2s2x")


_KEYED = {4: _keyed_lookup(4), 6: _keyed_lookup(16)}


def encode_lookup(key: RouteKey | None, dst=None, seq: int = 0, flags: int = 0) -> bytes:
    """RTM_GETROUTE for a key (routed as received on key.iif), or for a bare
    destination (routed as sent by the router itself); flags: the rtmsg's
    (RTM_F_FIB_MATCH asks for the matched FIB entry)."""
    if key is not None:
        dst = key.dst
        v6 = dst.version == 6
        st, alen = _KEYED[dst.version], (16 if v6 else 4)
        return st.pack(st.size, RTM_GETROUTE, NLM_F_REQUEST, seq, 0,
                       socket.AF_INET6 if v6 else socket.AF_INET, alen * 8, alen * 8, 0, 0, 0, 0, 0, flags,
                       4 + alen, RTA_DST, dst.packed, 4 + alen, RTA_SRC, key.src.packed,
                       8, RTA_IIF, key.iif, 8, RTA_MARK, key.mark, 5, RTA_IP_PROTO, key.l4proto,
                       6, RTA_SPORT, _BE16.pack(key.sport), 6, RTA_DPORT, _BE16.pack(key.dport))
    family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
    bits = 128 if dst.version == 6 else 32
    attrs = _nla(RTA_DST, dst.packed)
    src_len = 0
    if key is not None:
        src_len = bits
        attrs += (_nla(RTA_SRC, key.src.packed) + _nla(RTA_IIF, _U32.pack(key.iif))
                  + _nla(RTA_MARK, _U32.pack(key.mark)) + _nla(RTA_IP_PROTO, bytes([key.l4proto]))
                  + _nla(RTA_SPORT, _BE16.pack(key.sport)) + _nla(RTA_DPORT, _BE16.pack(key.dport)))
    body = _RTMSG.pack(family, bits, src_len, 0, 0, 0, 0, 0, flags) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, seq, 0) + body


class Lookup(NamedTuple):
    """What the kernel answered: the route's type, its output interface and
    gateway (None on-link), and its MTU metric (0: the device's); multipath:
    the answer names more than one path or a nexthop object (asked with
    RTM_F_FIB_MATCH, the FIB entry matched is multipath or may be)."""

    rtype: int
    oif: int
    gateway: str | None       # as neighbours are known by (Routes.neighbour_mac)
    mtu: int
    multipath: bool = False


@functools.lru_cache(maxsize=1 << 16)
def _address_text(packed: bytes) -> str:
    """An address's text from its bytes: a route's gateway, a flow's on-link
    destination (a few gateways and hosts, asked for on every lookup)."""
    return str(ipaddress.ip_address(packed))


def decode_route(buf: bytes, off: int, end: int) -> Lookup:
    rtype = _RTMSG.unpack_from(buf, off)[7]
    pos, oif, gw, mtu, multi = off + _RTMSG.size, 0, None, 0, False
    while pos + 4 <= end:
        length, atype = _NLA.unpack_from(buf, pos)
        if length < 4:
            break
        start, stop = pos + 4, pos + length
        atype &= 0x3FFF
        if atype == RTA_OIF:
            oif = _U32.unpack_from(buf, start)[0]
        elif atype == RTA_GATEWAY:
            gw = _address_text(bytes(buf[start:stop]))
        elif atype == RTA_VIA and stop - start >= 2:
            gw = _address_text(bytes(buf[start + 2:stop]))
        elif atype == RTA_MULTIPATH or atype == RTA_NH_ID:
            multi = True
        elif atype == RTA_METRICS:
            p = start
            while p + 8 <= stop:
                ln, mt = _NLA.unpack_from(buf, p)
                if mt == RTAX_MTU:
                    mtu = _U32.unpack_from(buf, p + 4)[0]
                p += max(4, (ln + 3) & ~3)
        pos += (length + 3) & ~3
    return Lookup(rtype, oif, gw, mtu, multi)


class RouteLookups:
    """A raw rtnetlink socket for RTM_GETROUTE: many lookups in flight, each
    matched to its answer by sequence number."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        self._seq = 0
        self._pending: dict[int, tuple[_Window, int]] = {}   # seq -> its window and place in it
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for seq in list(self._pending):
            self._answer(seq, RouteError("route lookups closed"))

    async def lookups(self, reqs: list[tuple], probes: Sequence[RouteKey] = ()) -> list[Lookup | OSError]:
        """(key, dst) each (see encode_lookup), then each of probes' keys
        asked for the FIB entry it matches (RTM_F_FIB_MATCH), all in the same
        windows: the kernel's answer or its error, in that order."""
        reqs = [(k, d, 0) for k, d in reqs] + [(k, None, RTM_F_FIB_MATCH) for k in probes]
        out: list = []
        for w in range(0, len(reqs), LOOKUP_WINDOW):
            chunk = reqs[w:w + LOOKUP_WINDOW]
            window = _Window(self._loop.create_future(), [None] * len(chunk), len(chunk))
            data = []
            for i, (key, dst, flags) in enumerate(chunk):
                self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
                self._pending[self._seq] = (window, i)
                data.append(encode_lookup(key, dst, self._seq, flags))
            try:
                self.sock.send(b"".join(data))
            except OSError as e:
                for seq in [s for s, (win, _) in self._pending.items() if win is window]:
                    self._answer(seq, e)
            out += await window.done
        return out

    def _answer(self, seq: int, result) -> None:
        got = self._pending.pop(seq, None)
        if got is None:
            return
        window, i = got
        window.results[i] = result
        window.left -= 1
        if not window.left and not window.done.done():
            window.done.set_result(window.results)

    def _readable(self) -> None:
        for _ in range(64):
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as e:     # answers lost: every waiting lookup fails, its caller decides
                for seq in list(self._pending):
                    self._answer(seq, e)
                return
            off, n = 0, len(data)
            while off + _NLMSGHDR.size <= n:
                length, mtype, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size or off + length > n:
                    break
                if seq in self._pending:
                    if mtype == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", data, off + _NLMSGHDR.size)[0]
                        self._answer(seq, OSError(err, os.strerror(err)))
                    else:
                        self._answer(seq, decode_route(data, off + _NLMSGHDR.size, off + length))
                off += (length + 3) & ~3


@dataclass(slots=True, eq=False)
class _Window:
    """Lookups sent together: answered all at once, when the last arrives."""
    done: asyncio.Future
    results: list
    left: int


def _mac_of(frame: bytes, at: int) -> str:
    return frame[at:at + 6].hex(":")


class Routes:
    """The router namespace's routing, links and neighbours, as the flows use them.

    Neighbours are mirrored (a dump at start, then rtnetlink events through
    `neighbour_event`), like the links' names, MTUs and MACs; the frames the
    kernel sends and the ports its punted packets come in on are remembered
    for the decisions to come.
    """

    def __init__(self, ipr, ports: dict[str, int], lookups: RouteLookups | None = None,
                 stats: collections.Counter | None = None):
        self.ipr = ipr                # pyroute2 AsyncIPRoute bound to the namespace
        self.ports = ports            # representor name -> switch port
        self.lookups = lookups
        self.stats = stats if stats is not None else collections.Counter()
        self._cache: dict = {}        # (dst, src, iif, mark), or a bare dst -> (Lookup or marker, clock[, path])
        self._cache_epoch = 0
        # an address class -> a rule of its family routes by more than the cache keeps
        self._rules_by_port: dict[type, bool] | None = None
        self._rules_gen = 0
        self._links: dict[int, tuple[str, int, str]] = {}   # ifindex -> (name, mtu, MAC)
        self._ifindex: dict[str, int] = {}
        self._neigh: dict[tuple[int, str], tuple[int, str | None]] = {}   # (ifindex, addr) -> (state, lladdr)
        self._egress: collections.OrderedDict[FlowTuple, Egress] = collections.OrderedDict()
        self._ingress: collections.OrderedDict[FlowTuple, int] = collections.OrderedDict()
        self._port_by_ifindex: dict[int, int] = {}
        self.epoch = 0          # bumped by every routing change (changed())
        self.generation = 0     # bumped by every link or address change
        self._lock = asyncio.Lock()    # pyroute2's socket takes one request at a time

    # -- what the slow path did ------------------------------------------------
    def observe_egress(self, port: int, frame: bytes, t: FlowTuple | None) -> None:
        """A frame the kernel sent out of a representor, with its tuple."""
        if t is None:
            return
        self._egress[t] = Egress(port, _mac_of(frame, 6), _mac_of(frame, 0), self.epoch)
        self._egress.move_to_end(t)
        if len(self._egress) > EGRESS_REMEMBERED:
            self._egress.popitem(last=False)

    def observe_ingress(self, port: int, t: FlowTuple) -> None:
        """A punted packet of this tuple came in on this port."""
        self._ingress[t] = port
        self._ingress.move_to_end(t)
        if len(self._ingress) > EGRESS_REMEMBERED:
            self._ingress.popitem(last=False)

    def egress(self, sent: FlowTuple) -> Egress | None:
        """The last frame sent with this tuple, if no routing changed since."""
        eg = self._egress.get(sent)
        return eg if eg is not None and eg.epoch == self.epoch else None

    def changed(self) -> None:
        """Routing changed (a route, rule, link, address or neighbour's MAC):
        frames seen before say nothing of where the kernel sends now."""
        self.epoch += 1

    def rules_changed(self) -> None:
        """An ip rule was added or deleted: what the rules select by is read again."""
        self._rules_by_port = None
        self._rules_gen += 1

    async def _load_rules(self) -> dict[type, bool]:
        gen = self._rules_gen
        async with self._lock:
            got = await _all(self.ipr.rule("dump"))
        # by the class of the addresses looked up: _answers asks by it, not by
        # their version (a Python property)
        by_port = {ipaddress.IPv4Address: False, ipaddress.IPv6Address: False}
        for r in got:
            cls = {socket.AF_INET: ipaddress.IPv4Address, socket.AF_INET6: ipaddress.IPv6Address}.get(r["family"])
            if cls is not None and any(a[0] not in RULE_ATTRS_CACHED for a in r["attrs"]):
                by_port[cls] = True
        if gen == self._rules_gen:
            self._rules_by_port = by_port
        return by_port

    def ingress(self, t: FlowTuple) -> int | None:
        return self._ingress.get(t)

    def forget(self, orig: FlowTuple, reply: FlowTuple) -> None:
        for t in (orig, reply):
            self._ingress.pop(t, None)
            self._egress.pop(t.reversed(), None)

    # -- links and neighbours ------------------------------------------------------
    def invalidate(self) -> None:
        """A link or address changed: names, MTUs and MACs are read again."""
        self._links.clear()
        self._ifindex.clear()
        self.generation += 1

    async def load(self) -> None:
        """The representors' interface indexes and the neighbour table as it
        stands (events keep it current)."""
        self._port_by_ifindex = {await self.ifindex(name): port for name, port in self.ports.items()}
        async with self._lock:
            got = await _all(self.ipr.neigh("dump"))
        self._neigh.clear()
        for n in got:
            self.neighbour_event(n, deleted=False)

    def port_of(self, ifindex: int) -> int | None:
        """The switch port of a representor's interface index."""
        return self._port_by_ifindex.get(ifindex)

    def neighbour_event(self, msg, deleted: bool) -> tuple[int, str, str | None] | None:
        """Mirror an RTM_NEWNEIGH/DELNEIGH; (ifindex, address, MAC or None when
        unusable) of the neighbour, or None for a message of no neighbour."""
        dst = msg.get("NDA_DST")
        if dst is None:
            return None
        key = (msg["ifindex"], str(ipaddress.ip_address(dst)))
        if deleted:
            if self._neigh.pop(key, None) is not None:
                self.changed()
            return key[0], key[1], None
        lladdr = msg.get("NDA_LLADDR")
        before = self._neigh.get(key)
        self._neigh[key] = (msg["state"], lladdr)
        usable = lladdr if msg["state"] & NUD_USABLE and lladdr else None
        if before is not None and before[1] != usable:
            self.changed()
        return key[0], key[1], usable

    def port_neighbours(self) -> list[tuple[int, str, str]]:
        """(port, address, MAC) of every usable neighbour on a representor
        (a host or router: not NOARP)."""
        port_of = self._port_by_ifindex.get
        return [(port, addr, lladdr) for (ifi, addr), (state, lladdr) in self._neigh.items()
                if (port := port_of(ifi)) is not None and state & NUD_USABLE and not state & NUD_NOARP and lladdr]

    async def port_mac(self, port: int) -> str:
        """The MAC of a switch port's representor: the source MAC of what
        the kernel sends through it."""
        return (await self.link(await self.port_ifindex(port)))[2]

    def neighbour_mac(self, ifindex: int, addr: str) -> str | None:
        got = self._neigh.get((ifindex, addr))
        return got[1] if got and got[0] & NUD_USABLE and got[1] else None

    def neighbour_by_mac(self, ifindex: int, version: int | None, mac: str) -> str | None:
        """The neighbour (of this family, where given) on this interface with this MAC."""
        for (ifi, addr), (state, lladdr) in self._neigh.items():
            if ifi == ifindex and lladdr == mac and state & NUD_USABLE and \
                    (version is None or ipaddress.ip_address(addr).version == version):
                return addr
        return None

    async def neighbour_on_port(self, port: int, mac: str) -> str:
        """The address of the neighbour behind a switch port with this MAC, or "" (a next hop
        the switch holds is known by its neighbour again)."""
        try:
            return self.neighbour_by_mac(await self.port_ifindex(port), None, mac) or ""
        except RouteError:
            return ""

    async def link(self, ifindex: int) -> tuple[str, int, str]:
        link = self._links.get(ifindex)
        if link is None:
            gen = self.generation
            async with self._lock:
                got = (await _all(self.ipr.link("get", index=ifindex)))[0]
            link = (got.get("IFLA_IFNAME"), got.get("IFLA_MTU"), got.get("IFLA_ADDRESS"))
            if gen == self.generation:
                self._links[ifindex] = link
                self._ifindex[link[0]] = ifindex
        return link

    async def ifindex(self, name: str) -> int:
        idx = self._ifindex.get(name)
        if idx is None:
            async with self._lock:
                found = await self.ipr.link_lookup(ifname=name)
            if not found:
                raise RouteError(f"no interface {name!r} in the router namespace")
            idx = found[0]
            self._ifindex[name] = idx
        return idx

    async def port_ifindex(self, port: int) -> int:
        for name, p in self.ports.items():
            if p == port:
                return await self.ifindex(name)
        raise RouteError(f"switch port {port} has no representor")

    # -- decisions -----------------------------------------------------------------------
    async def resolve(self, reqs: list[tuple[RouteKey | None, object]]) -> list[FlowRoute | RouteError]:
        """The path of each (key, dst): route, link and neighbour, or why
        none. A kept answer keeps its path too: what the path is made of
        (links, neighbours' MACs) changes only with a routing change, which
        empties the cache."""
        epoch = self.epoch
        answers, kept, known = await self._answers(reqs)
        if self.epoch != epoch:      # a routing change while asking: the paths known before it are not used
            known = [None] * len(reqs)
        cache = self._cache
        out: list = []
        for (key, dst), got, ck, path in zip(reqs, answers, kept, known):
            if path is not None:     # kept with its answer, found by _answers
                out.append(path)
                continue
            if ck is not None:
                entry = cache.get(ck)
                if entry is not None and entry[0] is got and len(entry) == 3:
                    out.append(entry[2])
                    continue
            target = key.dst if key is not None else dst
            if isinstance(got, BaseException):
                why = got.strerror if isinstance(got, OSError) and got.strerror else repr(got)
                out.append(RouteError(f"no route to {target}: {why}"))
                continue
            try:
                # known link and neighbour (the common case): no await
                path = self._known_path(target, got) or await self._path(target, got)
            except RouteError as e:
                out.append(e)
                continue
            out.append(path)
            if ck is not None:
                entry = cache.get(ck)
                if entry is not None and entry[0] is got:
                    cache[ck] = (got, entry[1], path)
        return out

    async def _answers(self, reqs: list[tuple[RouteKey | None, object]]) -> tuple[list, list, list]:
        """The kernel's answer to each (key, dst), from the cache where it
        may answer (the module's docstring), else asked; each one's cache
        key where the cache holds that answer (else None); and the path kept
        with a cached answer, found with it (else None)."""
        cache = self._cache
        if self._cache_epoch != self.epoch or len(cache) > CACHE_SIZE:
            cache.clear()
            self._cache_epoch = self.epoch
        by_port = self._rules_by_port
        if by_port is None:
            try:
                by_port = await self._load_rules()
            except Exception as e:     # unknown rules: nothing keyed is cached until they are read
                log.warning("reading the ip rules: %r; keyed route lookups are not cached", e)
                by_port = {ipaddress.IPv4Address: True, ipaddress.IPv6Address: True}
        epoch, now = self.epoch, time.monotonic()
        out: list = [None] * len(reqs)
        kept: list = [None] * len(reqs)
        known: list = [None] * len(reqs)
        ask: list[tuple[int, object]] = []      # (index, cache key or None)
        probes: dict = {}                        # cache key -> index of a request asked with it
        first: dict = {}                         # cache key -> index of its first request in this call
        later: list[tuple[int, object]] = []    # requests of a key asked already in this call
        # Addresses enter the keys as (class, integer): an address object
        # hashes through its hex text, a microsecond per lookup. The integer
        # is the address's _ip, which int() returns through a Python call.
        for i, (key, dst) in enumerate(reqs):
            if key is None:
                ck = (dst.__class__, dst._ip)    # a bare lookup's request is its destination
            elif by_port.get(d := key.dst.__class__, True):     # an address of another class: asked
                ask.append((i, None))
                continue
            else:
                ck = (d, key.dst._ip, key.src._ip, key.iif, key.mark)
            entry = cache.get(ck)
            if entry is not None and now - entry[1] >= CACHE_TTL:
                entry = None
            if entry is not None:
                if entry[0].__class__ is Lookup:
                    out[i], kept[i] = entry[0], ck
                    if len(entry) == 3:
                        known[i] = entry[2]
                    continue
                if entry[0] is _MULTI:
                    ask.append((i, ck))
                    continue
            j = first.get(ck)
            if j is None:        # the key's first request here: asked (and probed if seen before)
                first[ck] = i
                if key is not None:
                    if entry is None:
                        cache[ck] = (_SEEN, now)
                    else:
                        probes[ck] = i
                ask.append((i, ck))
            else:                # asked already: it waits for that answer (and its probe)
                if key is not None and ck not in probes:
                    probes[ck] = j
                later.append((i, ck))
        if ask:
            self.stats["route.asked"] += len(ask)
            self.stats["route.probed"] += len(probes)
            got = await self.lookups.lookups([reqs[i] for i, _ in ask], [reqs[i][0] for i in probes.values()])
            for (i, ck), a in zip(ask, got):
                out[i] = a
                if ck is not None and reqs[i][0] is None and a.__class__ is Lookup and self.epoch == epoch:
                    cache[ck], kept[i] = (a, now), ck
            if self.epoch == epoch:     # no routing change came while asking
                for (ck, i), p in zip(probes.items(), got[len(ask):]):
                    if p.__class__ is Lookup and out[i].__class__ is Lookup:
                        if p.multipath:
                            cache[ck] = (_MULTI, now)
                        else:
                            cache[ck], kept[i] = (out[i], now), ck
        again = []
        for i, ck in later:      # the answer of the first request of its key, where it was kept
            entry = cache.get(ck) if self.epoch == epoch else None
            if entry is not None and entry[0].__class__ is Lookup:
                out[i], kept[i] = entry[0], ck
            else:
                again.append(i)
        if again:
            self.stats["route.asked"] += len(again)
            for i, a in zip(again, await self.lookups.lookups([reqs[i] for i in again])):
                out[i] = a
        self.stats["route.cached"] += len(reqs) - len(ask) - len(again)
        return out, kept, known

    def _known_path(self, dst, rt: Lookup) -> FlowRoute | None:
        """_path() from what is mirrored already; None when the link or the
        neighbour must be asked for (or the route is not one to use)."""
        link = self._links.get(rt.oif)
        if rt.rtype != RTN_UNICAST or link is None:
            return None
        ifname, mtu, mac = link
        port = self.ports.get(ifname)
        nexthop = rt.gateway or _address_text(dst.packed)
        lladdr = self.neighbour_mac(rt.oif, nexthop)
        if port is None or lladdr is None:
            return None
        return FlowRoute(port, mac, lladdr, min(mtu, rt.mtu) if rt.mtu else mtu, nexthop)

    async def _path(self, dst, rt: Lookup) -> FlowRoute:
        if rt.rtype != RTN_UNICAST:
            raise RouteError(f"route to {dst} is {RTN_NAMES.get(rt.rtype, rt.rtype)}, not unicast")
        ifname, mtu, mac = await self.link(rt.oif)
        if ifname not in self.ports:
            raise RouteError(f"route to {dst} leaves via {ifname}, which is no switch port")
        if rt.mtu:
            mtu = min(mtu, rt.mtu)
        nexthop = rt.gateway or _address_text(dst.packed)
        lladdr = self.neighbour_mac(rt.oif, nexthop)
        if lladdr is None:
            lladdr = await self._ask_neighbour(rt.oif, nexthop, dst.version)
        if lladdr is None:
            raise RouteError(f"next hop {nexthop} on {ifname} is not resolved")
        return FlowRoute(self.ports[ifname], mac, lladdr, mtu, nexthop)

    async def _ask_neighbour(self, ifindex: int, addr: str, version: int) -> str | None:
        """A neighbour the mirror has not seen (yet): asked directly."""
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        try:
            async with self._lock:
                got = await _all(self.ipr.neigh("get", dst=addr, ifindex=ifindex, family=family))
        except Exception:   # ENOENT: no entry yet
            return None
        for n in got:
            self.neighbour_event(n, deleted=False)
        return self.neighbour_mac(ifindex, addr)

    async def from_frame(self, eg: Egress, version: int) -> FlowRoute:
        """The path a frame the kernel sent took, as a route: its port and
        MACs, the neighbour that has its MAC, the port's MTU."""
        name = next((n for n, p in self.ports.items() if p == eg.port), None)
        if name is None:
            raise RouteError(f"a frame left through port {eg.port}, which has no representor")
        idx = await self.ifindex(name)
        _, mtu, _ = await self.link(idx)
        neighbour = self.neighbour_by_mac(idx, version, eg.dst_mac) or ""
        return FlowRoute(eg.port, eg.src_mac, eg.dst_mac, mtu, neighbour)


async def _all(coro) -> list:
    res = await coro
    if hasattr(res, "__aiter__"):
        return [x async for x in res]
    return list(res)
