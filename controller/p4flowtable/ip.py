"""Datapath glue of both families (the kernel's nf_flow_table_ip.c, controller side).

Builds the tuple of a punted packet, and turns a flow into its two entries of
flow_table_v4 or flow_table_v6. Where each direction leaves is route.py's.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from typing import NamedTuple

from p4.v1 import p4runtime_pb2 as p4r

from .model import Dir, Flow, FlowTuple, IPPROTO_TCP, IPPROTO_UDP, has_nat, ipv4, rewrite_for
from .p4info import P4Schema


def parse_tuple(frame: bytes) -> FlowTuple | None:
    """The tuple of an Ethernet/IPv4-or-IPv6/TCP-or-UDP frame, or None (as
    nf_flow_tuple_ip/_ipv6: no options walked, no fragments)."""
    if len(frame) >= 58 and frame[12:14] == b"\x86\xdd":
        proto = frame[20]
        if proto not in (IPPROTO_TCP, IPPROTO_UDP):
            return None     # extension headers are not walked
        sport, dport = struct.unpack_from("!HH", frame, 54)
        return FlowTuple(ipaddress.IPv6Address(frame[22:38]), ipaddress.IPv6Address(frame[38:54]),
                         proto, sport, dport)
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    if proto not in (IPPROTO_TCP, IPPROTO_UDP) or len(frame) < 14 + ihl + 4:
        return None
    if struct.unpack_from("!H", frame, 20)[0] & 0x3FFF:  # MF or offset
        return None
    sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
    return FlowTuple(ipaddress.IPv4Address(frame[26:30]), ipaddress.IPv4Address(frame[30:34]),
                     proto, sport, dport)


_MATCH_FIELDS = ("ingress_port", "src_addr", "dst_addr", "l4proto", "src_port", "dst_port")
_PARAMS = ("nexthop_id", "src_addr", "dst_addr", "src_port", "dst_port", "mtu")
# one table per family and one NAT action per family and transport, with the
# same field and parameter names; IPv4 adds its header checksum's delta.
# A flow without NAT takes its family's route action: next hop and MTU only.
# The next hop is an id into nexthop_table (nexthop.py), the route's MTU the
# entry's own (the kernel's flow_offload_tuple.mtu).
_TABLES = {4: "flow_table_v4", 6: "flow_table_v6"}
_PARAMS_OF = {4: _PARAMS + ("ip_csum_delta", "l4_csum_delta"), 6: _PARAMS + ("l4_csum_delta",)}
_ROUTE_PARAMS = ("nexthop_id", "mtu")
COMPUTED_BY_SWITCH = frozenset({"ip_csum_delta", "l4_csum_delta"})   # parameters a program may leave out
_TRANSPORT = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}
TTL_DECREMENT_DELTA = 0xFEFF   # ~m + m' for the (ttl, protocol) word when ttl drops by one


def csum_delta(old: int, new: int, extra: int = 0) -> int:
    """One's-complement sum of ~m + m' over the 16-bit words of values that
    change from `old` to `new` (sums of the values), plus `extra`, a delta
    already summed: what the data plane adds to ~checksum (RFC 1624 eqn. 3).
    A 16-bit one's-complement sum of words is their value mod 0xffff (2^16 is
    1 mod 0xffff), and ~m + m' is m' - m; a folded sum is never 0, so 0 is
    written 0xffff (which adds nothing)."""
    return (new - old + extra) % 0xFFFF or 0xFFFF


def checksum_deltas(t: FlowTuple, rw) -> tuple[int, int]:
    """(IPv4 header, TCP/UDP) checksum deltas of a direction whose packets
    have tuple t and are rewritten by rw: the header's covers the addresses
    and the TTL decrement, the transport's the addresses (pseudo-header) and
    ports. The kernel applies the same changes one by one
    (csum_replace4, inet_proto_csum_replace4/2, ip_decrease_ttl)."""
    return _deltas(t.src.version, int(t.src) + int(t.dst), t.sport + t.dport,
                   int(rw.src) + int(rw.dst), rw.sport + rw.dport)


def _deltas(version: int, addrs: int, ports: int, new_addrs: int, new_ports: int) -> tuple[int, int]:
    """checksum_deltas from sums of plain integers: the addresses', the ports'."""
    l4 = csum_delta(addrs + ports, new_addrs + new_ports)
    return (csum_delta(addrs, new_addrs, TTL_DECREMENT_DELTA) if version == 4 else 0), l4


@functools.lru_cache(maxsize=16)
def _layout(schema: P4Schema, version: int, l4proto: int = IPPROTO_TCP, nat: bool = True) -> tuple:
    """Ids and byte widths of a family's flow table fields and of the
    parameters of the action for a transport (with NAT) or of the route
    action (without), looked up (and checked against the P4Info) once per
    schema."""
    table = schema.table(_TABLES[version])
    if nat:
        action, names = schema.action(f"forward_{_TRANSPORT[l4proto]}_v{version}"), _PARAMS_OF[version]
    else:
        action, names = schema.action(f"route_v{version}"), _ROUTE_PARAMS
    fields = tuple((table.field(n).id, (table.field(n).bitwidth + 7) // 8) for n in _MATCH_FIELDS)
    # a program that updates checksums itself (the Tofino one: its deparser's
    # checksum units) has no delta parameters: their ids are None
    params = tuple((None, 0) if n in COMPUTED_BY_SWITCH and n not in action.params
                   else (action.param(n).id, (action.param(n).bitwidth + 7) // 8) for n in names)
    return table.id, fields, action.id, params


def _key_values(flow: Flow, d: Dir) -> tuple[int, ...]:
    t = flow.tuples[d]
    return flow.iif[d], int(t.src), int(t.dst), t.l4proto, t.sport, t.dport


def flow_key(schema: P4Schema, flow: Flow, d: Dir) -> tuple:
    """Held.key (ReadBack.key) of a direction's entry: table id and match
    values in layout order, without building the entry."""
    return _layout(schema, flow.tuples[d].src.version)[0], _key_values(flow, d)


def entry_values(schema: P4Schema, flow: Flow, d: Dir, with_action: bool = True) -> tuple:
    """The layout of one direction's entry (_layout: table, fields, action,
    parameters) with its match values and, with_action, its parameter
    values, in layout order: what flow_entry and wire.UpdateTemplate encode."""
    t = flow.tuples[d]
    nat = has_nat(flow.tuples)
    layout = _layout(schema, t.src.version, t.l4proto, nat)
    keys = (flow.iif[d], int(t.src), int(t.dst), t.l4proto, t.sport, t.dport)
    if not with_action:
        return layout, keys, ()
    rewrite = None
    if nat:
        rw = rewrite_for(flow.tuples, d)
        rewrite = (int(t.src), int(t.dst), t.sport, t.dport, int(rw.src), int(rw.dst), rw.sport, rw.dport)
    return layout, keys, _param_values(t.src.version, flow.nexthops[d], flow.routes[d].mtu, rewrite)


def _param_values(version: int, nexthop: int, mtu: int, rewrite: tuple | None) -> tuple:
    """An entry's parameter values in layout order, from plain integers:
    its next hop and MTU and, with NAT, rewrite: a packet's addresses and
    ports and what they become (src, dst, sport, dport, then the new four),
    with the checksum deltas that follow. entry_values and
    ReadBack.as_written both compute them here."""
    if rewrite is None:
        return nexthop, mtu
    src, dst, sport, dport, new_src, new_dst, new_sport, new_dport = rewrite
    ip_delta, l4_delta = _deltas(version, src + dst, sport + dport, new_src + new_dst, new_sport + new_dport)
    return (nexthop, new_src, new_dst, new_sport, new_dport, mtu) \
        + ((ip_delta, l4_delta) if version == 4 else (l4_delta,))


def flow_entry(schema: P4Schema, flow: Flow, d: Dir, with_action: bool = True,
               idle_timeout_ns: int = 0, entry: p4r.TableEntry | None = None) -> p4r.TableEntry:
    """The entry of one direction in its family's flow table (values
    big-endian, padded to their field's width). Fills `entry` in place when
    given, e.g. the one inside an Update: building a message and then
    wrapping it copies it."""
    (table_id, fields, action_id, params), keys, values = entry_values(schema, flow, d, with_action)
    entry = p4r.TableEntry() if entry is None else entry
    entry.table_id = table_id
    if idle_timeout_ns:
        entry.idle_timeout_ns = idle_timeout_ns
    for (fid, n), v in zip(fields, keys):
        m = entry.match.add()
        m.field_id = fid
        m.exact.value = v.to_bytes(n, "big")
    if with_action:
        action = entry.action.action
        action.action_id = action_id
        for (pid, n), v in zip(params, values):
            if pid is None:
                continue
            p = action.params.add()
            p.param_id = pid
            p.value = v.to_bytes(n, "big")
    return entry


def entry_query(schema: P4Schema, flow: Flow, d: Dir, last_hit: bool) -> p4r.TableEntry:
    """A read of one direction's entry asking for its direct counter and,
    where the table ages entries, the time since its last hit."""
    entry = flow_entry(schema, flow, d, with_action=False)
    entry.counter_data.SetInParent()
    if last_hit:
        entry.time_since_last_hit.SetInParent()
    return entry


class Held(NamedTuple):
    """A flow entry read back from the switch, decoded once: its key (table
    id and match values in layout order: `(layout[0], keys)` of
    entry_values), its ingress port, the rest of its match (`ReadBack.match`
    of the tuple it matches), its action (id and parameter values in layout
    order, what `held_action` gives), its next hop's id and MTU; its
    counter and time since its last hit where the read asked (else 0 and
    None). Plain values only: a second process decodes a large read and
    hands these over (entryread.py); `ReadBack.match_entry` makes the entry
    again from the key, to delete it."""
    key: tuple
    port: int
    match: tuple
    action: tuple
    nexthop: int
    mtu: int
    packets: int
    bytes: int
    idle_ns: int | None


def path_of(o: Held, r: Held) -> tuple:
    """Where one flow's two entries, o its original's and r its reply's,
    send packets: (port, next hop, MTU) of each (Adopting.on_path's key)."""
    return o.port, o.nexthop, o.mtu, r.port, r.nexthop, r.mtu


def read_of(o: Held, r: Held) -> tuple:
    """What the read said of one flow's two entries, o its original's and r
    its reply's: a FlowRead's values, flat (packets of each, bytes of each,
    the time since the latest hit of either, or None where either has no
    time)."""
    return (o.packets, r.packets, o.bytes, r.bytes,
            min(o.idle_ns, r.idle_ns) if o.idle_ns is not None and r.idle_ns is not None else None)


class ReadBack:
    """Decodes flow entries read from the switch (a reconcile reads every
    one: 200,000 at 100,000 flows), each in one pass over its fields, with
    the layouts of both families' tables and actions looked up once. No
    address objects are made: a read entry is joined with its connection by
    `match`, plain integers."""

    def __init__(self, schema: P4Schema):
        self.tables: dict[int, tuple] = {}
        self.widths: dict[int, tuple] = {}      # table id -> its fields' byte widths
        self.table_of: dict[int, int] = {}      # IP version -> table id
        for version in (4, 6):
            tid, fields, _, _ = _layout(schema, version)
            self.tables[tid] = tuple(fid for fid, _ in fields)
            self.widths[tid] = tuple(w for _, w in fields)
            self.table_of[version] = tid
        # by an address's class: its `version` is a Python property
        self._table_of_class = {ipaddress.IPv4Address: self.table_of[4], ipaddress.IPv6Address: self.table_of[6]}
        self.actions: dict[int, tuple] = {}
        self.kinds: dict[int, tuple[bool, int]] = {}     # action id -> (NAT or not, IP version)
        self.chosen: dict[tuple, tuple] = {}    # (IP version, transport, NAT) -> the _layout entry_values takes
        for version in (4, 6):
            for l4proto, nat in ((IPPROTO_TCP, True), (IPPROTO_UDP, True), (IPPROTO_TCP, False)):
                _, _, action_id, params = _layout(schema, version, l4proto, nat)
                names = [n for (pid, _), n in zip(params, _PARAMS_OF[version] if nat else _ROUTE_PARAMS)
                         if pid is not None]
                self.actions[action_id] = (tuple(pid for pid, _ in params if pid is not None),
                                           names.index("nexthop_id"), names.index("mtu"))
                self.kinds[action_id] = (nat, version)
            for l4proto in (IPPROTO_TCP, IPPROTO_UDP):
                for nat in (True, False):
                    self.chosen[version, l4proto, nat] = _layout(schema, version, l4proto, nat)

    def match(self, t: FlowTuple) -> tuple:
        """Held.match of the entry that matches tuple t. The addresses' _ip
        is what int() returns, through a Python call each (two matches a
        connection at every reconcile)."""
        src = t.src
        tid = self._table_of_class.get(src.__class__)
        if tid is None:
            return self.table_of[src.version], int(src), int(t.dst), t.l4proto, t.sport, t.dport
        return tid, src._ip, t.dst._ip, t.l4proto, t.sport, t.dport

    def key(self, entry: p4r.TableEntry) -> tuple | None:
        """Held.key of a flow entry from its match alone (an entry read by
        its match, a direct counter's entry); None for no flow entry."""
        fids = self.tables.get(entry.table_id)
        keys = _match_values(entry, fids) if fids is not None else None
        return (entry.table_id, keys) if keys is not None else None

    def match_entry(self, key: tuple) -> p4r.TableEntry:
        """The entry of a Held.key with its match alone: what a DELETE names."""
        table_id, keys = key
        e = p4r.TableEntry(table_id=table_id)
        for fid, width, v in zip(self.tables[table_id], self.widths[table_id], keys):
            e.match.add(field_id=fid, exact=p4r.FieldMatch.Exact(value=v.to_bytes(width, "big")))
        return e

    def peer(self, h: Held) -> tuple:
        """The match of the other direction's entry of h's connection, from
        h's own match and action: its rewrite reversed (NAT), or its match
        reversed (routed)."""
        tid, src, dst, proto, sport, dport = h.match
        action_id, v = h.action
        if self.kinds[action_id][0]:
            return tid, v[2], v[1], proto, v[4], v[3]
        return tid, dst, src, proto, dport, sport

    def as_written(self, h: Held, peer: Held) -> bool:
        """Whether h is the entry the daemon writes for its direction of the
        connection whose other direction's entry matches as peer does, with
        h's own next hop and MTU: the same check as the reconcile's plan
        (the values entry_values gives, then held_action), made from the two
        entries alone."""
        tid, src, dst, proto, sport, dport = h.match
        ptid, psrc, pdst, pproto, psport, pdport = peer.match
        version = self.kinds[h.action[0]][1]
        nat = not (psrc == dst and pdst == src and psport == dport and pdport == sport and pproto == proto)
        layout = self.chosen.get((version, proto, nat))     # what the daemon writes for such a connection
        if layout is None or layout[0] != tid or ptid != tid or layout[2] != h.action[0]:
            return False
        rewrite = (src, dst, sport, dport, pdst, psrc, pdport, psport) if nat else None
        return h.action == held_action(layout, _param_values(version, h.nexthop, h.mtu, rewrite))

    def decode(self, entry: p4r.TableEntry) -> Held | None:
        """None for an entry that is no flow entry of this program (another
        table, a field or parameter missing, another action)."""
        a = entry.action.action
        fb = int.from_bytes
        c = entry.counter_data
        return self.held(entry.table_id, {m.field_id: fb(m.exact.value, "big") for m in entry.match}, a.action_id,
                         {p.param_id: fb(p.value, "big") for p in a.params}, c.packet_count, c.byte_count,
                         entry.time_since_last_hit.elapsed_ns if entry.HasField("time_since_last_hit") else None)

    def held(self, table_id: int, match: dict, action_id: int, params: dict, packets: int, nbytes: int,
             idle_ns: int | None) -> Held | None:
        """decode() of an entry's values (match and parameter values by id),
        however they were read: from protobuf's objects, or from the wire
        (_readresponse, the reconcile's reader)."""
        fids = self.tables.get(table_id)
        act = self.actions.get(action_id)
        if fids is None or act is None:
            return None
        pids, nh, mtu = act
        keys = _in_order(match, fids)
        values = _in_order(params, pids)
        if keys is None or values is None:
            return None
        port, src, dst, proto, sport, dport = keys
        return Held((table_id, keys), port, (table_id, src, dst, proto, sport, dport), (action_id, values),
                    values[nh], values[mtu], packets, nbytes, idle_ns)


def _match_values(entry: p4r.TableEntry, fids: tuple) -> tuple | None:
    """An entry's exact match values in the order of fids (a switch may
    return fields in any order); None when one is missing."""
    return _in_order({m.field_id: int.from_bytes(m.exact.value, "big") for m in entry.match}, fids)


def _in_order(by_id: dict, want: tuple) -> tuple | None:
    """The values of these ids, in the order of want; None when one is missing."""
    try:
        return tuple([by_id[i] for i in want])
    except KeyError:
        return None


def held_action(layout: tuple, values: tuple) -> tuple:
    """Held.action of a direction, from entry_values' layout and parameter
    values (the parameters a program computes itself left out)."""
    return layout[2], tuple([v for (pid, _), v in zip(layout[3], values) if pid is not None])


def match_tuple(schema: P4Schema, entry: p4r.TableEntry) -> tuple[int, FlowTuple] | None:
    """(ingress port, tuple) of a flow table entry of either family, e.g. from
    an idle notification; None when it is not one or a field is missing."""
    for version, address in ((4, ipv4), (6, ipaddress.IPv6Address)):
        tid, fields, _, _ = _layout(schema, version)
        if entry.table_id == tid:
            break
    else:
        return None
    by_id = {m.field_id: int.from_bytes(m.exact.value, "big") for m in entry.match}
    try:
        port, src, dst, proto, sport, dport = (by_id[fid] for fid, _ in fields)
    except KeyError:
        return None
    return port, FlowTuple(address(src), address(dst), proto, sport, dport)


def entry_key(entry: p4r.TableEntry) -> tuple:
    """Hashable identity of an entry (table and match), independent of byte padding."""
    return entry.table_id, tuple(sorted((m.field_id, int.from_bytes(m.exact.value, "big"))
                                        for m in entry.match))
