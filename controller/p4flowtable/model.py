"""Flow model shared by every module (the kernel's nf_flow_table.h).

One flow, two tuples: ``tuples[ORIGINAL]`` and ``tuples[REPLY]`` as conntrack
sees them. A packet of direction ``d`` leaves the switch carrying the addresses
of the *other* direction's tuple, reversed; so NAT needs no fields of its own.
"""

from __future__ import annotations

import enum
import ipaddress
import functools
from dataclasses import dataclass
from typing import NamedTuple

IPPROTO_TCP = 6
IPPROTO_UDP = 17
L4PROTO_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}


class Dir(enum.IntEnum):
    ORIGINAL = 0
    REPLY = 1

    @property
    def other(self) -> "Dir":
        return _OTHER[self]     # indexed: Dir(1 - self) goes through Enum.__new__, 2.5 us a call


DIRS = (Dir.ORIGINAL, Dir.REPLY)   # `for d in DIRS`: iterating the enum itself costs a microsecond a loop
_OTHER = (Dir.REPLY, Dir.ORIGINAL)


@functools.lru_cache(maxsize=1 << 16)
def ipv4(value: int | str) -> ipaddress.IPv4Address:
    """An address object shared by every tuple that carries it (the WAN
    address sits in every masqueraded reply tuple)."""
    return ipaddress.IPv4Address(value)


class PyFlowTuple:
    """What a packet of one direction carries when it enters the switch.
    (FlowTuple is _flowtuple.c's type of the same interface where that is
    built, else this class.)

    Immutable by convention (nothing assigns to it after __init__), and a
    plain slots class rather than a frozen dataclass: a flow's tuples are
    made on every conntrack event and looked up in many dicts (the mirror,
    the flowtables, the decisions), and a frozen dataclass pays a Python
    call per field to be made (object.__setattr__), a reversed tuple 3 us.
    The hash is computed once, from the addresses' integers: an address
    object hashes by its hex text."""

    __slots__ = ("src", "dst", "l4proto", "sport", "dport", "_hash")

    def __init__(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 dst: ipaddress.IPv4Address | ipaddress.IPv6Address, l4proto: int, sport: int, dport: int):
        self.src = src
        self.dst = dst
        self.l4proto = l4proto
        self.sport = sport
        self.dport = dport
        self._hash = hash((int(src), int(dst), l4proto, sport, dport))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if other.__class__ is not PyFlowTuple:
            return NotImplemented
        # as tuples: an address shared by both (model.ipv4, ctnetlink's) compares by identity
        return self._hash == other._hash and (self.src, self.dst, self.l4proto, self.sport, self.dport) == \
            (other.src, other.dst, other.l4proto, other.sport, other.dport)

    def __repr__(self) -> str:
        return (f"FlowTuple(src={self.src!r}, dst={self.dst!r}, l4proto={self.l4proto!r}, "
                f"sport={self.sport!r}, dport={self.dport!r})")

    def reversed(self) -> "PyFlowTuple":
        return PyFlowTuple(self.dst, self.src, self.l4proto, self.dport, self.sport)

    def __str__(self) -> str:
        return f"src={self.src} dst={self.dst} sport={self.sport} dport={self.dport}"


try:      # the same value made and hashed in native code (_flowtuple.c: why)
    from ._flowtuple import FlowTuple
except ImportError:
    FlowTuple = PyFlowTuple


class FlowRoute(NamedTuple):
    """Where a packet of one direction goes (flow_offload_tuple.out): the
    next hop (port, MACs, and the neighbour's address where known) and the
    route's MTU. The switch holds the next hop once for every flow sent to
    it (nexthop.py); `nexthop_key` names it. A named tuple: two are made for
    every flow decided, and a frozen dataclass costs a call per field."""

    port: int
    src_mac: str
    dst_mac: str
    mtu: int
    neighbour: str = ""     # the gateway, or the destination itself when on-link

    @property
    def nexthop_key(self) -> tuple[int, str]:
        """The neighbour behind a port, as the kernel's neighbour table keys
        it; a route of unknown neighbour (built by hand) by its MAC."""
        return self.port, self.neighbour or self.dst_mac


class Rewrite(NamedTuple):
    """The header values a packet of one direction leaves with (one per
    direction of every entry encoded or compared: a named tuple, made in
    one call)."""

    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    sport: int
    dport: int


def rewrite_for(tuples: tuple[FlowTuple, FlowTuple], d: Dir) -> Rewrite:
    """NAT rewrite of direction d, from the other direction's tuple."""
    o = tuples[d.other]
    return Rewrite(src=o.dst, dst=o.src, sport=o.dport, dport=o.sport)


def has_nat(tuples: tuple[FlowTuple, FlowTuple]) -> bool:
    """Whether either direction is rewritten: the reply tuple is not the
    original one reversed (the kernel's NF_FLOW_SNAT / NF_FLOW_DNAT)."""
    o, r = tuples     # field by field: no reversed tuple made and hashed (a hot path: every entry encoded)
    return not (r.src == o.dst and r.dst == o.src and r.sport == o.dport and r.dport == o.sport
                and r.l4proto == o.l4proto)


class FlowFlag:
    """State bits, set and cleared test-and-set style (NF_FLOW_*). Plain
    ints, as the kernel's are: every flow's add, adoption and aging tests
    them, and an enum.Flag operation costs a Python call and an enum lookup
    each (a few percent of a reconcile's time in its profile)."""

    NONE = 0
    HW = 1 << 0          # entries are in the switch
    PENDING = 1 << 1     # an add is queued or in flight
    TEARDOWN = 1 << 2    # being handed back to the slow path
    DYING = 1 << 3       # conntrack entry is gone


class TeardownReason(enum.Enum):
    FIN_RST = "fin_rst"
    EXPIRED = "expired"
    CT_DESTROYED = "ct_destroyed"
    CT_STATE = "ct_state"
    OPERATOR = "operator"
    FLOWTABLE_DELETED = "flowtable_deleted"
    ROUTE_CHANGED = "route_changed"       # its path moved to another port, or is gone (reroute.py)


@dataclass(slots=True)
class Flow:
    """One offloaded (or offloading) connection."""

    ct_id: int
    tuples: tuple[FlowTuple, FlowTuple]
    flowtable: str
    timeout: float
    iif: tuple[int, int] = (0, 0)            # ingress port per direction
    routes: tuple[FlowRoute, FlowRoute] | None = None
    nexthops: tuple[int, int] = (0, 0)       # the switch's next-hop ids the entries name (nexthop.py)
    route_keys: tuple = (None, None)         # what each direction is routed by (route.RouteKey); None: seen only
    route_epoch: int = 0                     # the routing (route.Routes.epoch) its paths reflect
    offloaded_at: float = 0.0                # clock when its entries were written
    flags: int = FlowFlag.NONE               # FlowFlag bits
    last_used: float = 0.0                   # clock of last traffic seen
    packets: tuple[int, int] = (0, 0)       # per direction, from the switch
    bytes: tuple[int, int] = (0, 0)
    stats_at: float = 0.0                    # when counters were last read
    reason: TeardownReason | None = None     # why it is being torn down

    def test_and_set(self, flag: int) -> bool:
        """Set flag; True if it was already set (kernel test_and_set_bit)."""
        was = bool(self.flags & flag)
        self.flags |= flag
        return was

    def clear(self, flag: int) -> None:
        self.flags &= ~flag

    @property
    def key(self) -> FlowTuple:
        return self.tuples[Dir.ORIGINAL]
