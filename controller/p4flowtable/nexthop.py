"""The switch's next hops (nexthop_table): the neighbours flows are sent to.

The kernel's flow keeps its route and resolves the neighbour per packet
(neigh_xmit); here a flow entry names a next hop by id, and the next hop holds
the port and both MACs. One next hop per neighbour (port and address), shared
by every flow sent to it and counted: it is written before the first flow
entry that names it and deleted after the last, so a neighbour's new MAC is
one write, whatever the number of flows behind it.

A neighbour the kernel has on a switch port gets its next hop when the
kernel learns it, not with the first flow to it (NextHops.hold, from
reroute.py's neighbour events and after each reconcile): the switch's
next-hop table is the kernel's neighbour table for its ports, so that a
flow's add is its two entries alone and a host's first flow is offloaded
as fast as its others. Such a next hop stays while the kernel keeps its
neighbour, with no flow sent to it; neighbours take at most HELD_SHARE of
the table, the rest is left to the flows' next hops.

A daemon started anew adopts the next hops the switch holds, often before
the kernel knows their neighbours again: it flushes a port's neighbours when
the representor's carrier drops, as it does while no daemon holds it. Those
are keyed by their MAC until the kernel resolves the neighbour with that
MAC (NextHops.learn); a route of unknown neighbour shares the next hop that
sends to its MACs. Either way there is one next hop per neighbour still.
Two the switch holds to one MAC on one port (a host's IPv4 and IPv6
neighbours) are adopted as one: the flows naming the second are rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p4.v1 import p4runtime_pb2 as p4r

from .model import Dir, Flow, FlowRoute
from .p4info import P4Schema

TABLE = "nexthop_table"
HELD_SHARE = 0.5     # of the table, at most, for next hops no flow names (neighbours held)


class NextHopsFull(Exception):
    """Every next-hop id is in use."""


@dataclass(slots=True, eq=False)
class NextHop:
    id: int
    key: tuple[int, str]            # FlowRoute.nexthop_key: port and neighbour
    port: int
    src_mac: str
    dst_mac: str
    users: dict = field(default_factory=dict)   # (id(flow), direction) -> flow
    written: bool = False           # the switch holds it as it stands
    alias: tuple[int, str] | None = None   # its key by MAC, while adopted of unknown neighbour (NextHops.learn)
    writing: object = None          # an asyncio.Future while one batch INSERTs it: others wait for it
    held: bool = False              # the kernel has its neighbour: kept with no flow (NextHops.hold)
    rewrite: bool = False           # the switch holds it with other MACs: its write is a MODIFY


def _mac(s: str) -> int:
    return int(s.replace(":", ""), 16)


def mac_str(v: int) -> str:
    return ":".join(f"{b:02x}" for b in v.to_bytes(6, "big"))


class NextHops:
    """Next hops by id and by neighbour, with the flows sent to each."""

    def __init__(self, schema: P4Schema):
        self.schema = schema
        table = schema.table(TABLE)
        self.size = table.size or 1 << 16
        self._table_id = table.id
        self._key = table.field("nexthop_id")
        action = schema.action("set_nexthop")
        self._action_id = action.id
        self._params = tuple((action.param(n).id, action.param(n).bitwidth) for n in ("port", "src_mac", "dst_mac"))
        self.by_id: dict[int, NextHop] = {}
        self.by_key: dict[tuple[int, str], NextHop] = {}
        self.held = 0            # next hops held for their neighbours (hold)
        self._next_id = 1

    def __len__(self) -> int:
        return len(self.by_id)

    def _new_id(self) -> int:
        for _ in range(self.size):
            i = self._next_id
            self._next_id = self._next_id % (self.size - 1) + 1
            if i not in self.by_id:
                return i
        raise NextHopsFull(f"all {self.size - 1} next hops of {TABLE} are in use")

    def acquire(self, flow: Flow, d: Dir, route: FlowRoute) -> NextHop:
        """The next hop of this route, for this flow's direction: the one
        there is for its neighbour, or a new one (not yet written)."""
        key = (route.port, route.neighbour or route.dst_mac)     # route.nexthop_key, without its call
        nh = self.by_key.get(key)
        if nh is None:
            nh = self.learn(route.port, route.neighbour, route.dst_mac, route.src_mac) if route.neighbour \
                else self._to_mac(route.port, route.src_mac, route.dst_mac)
        if nh is None:
            nh = NextHop(self._new_id(), key, route.port, route.src_mac, route.dst_mac)
            self.by_id[nh.id] = nh
            self.by_key[nh.key] = nh
        elif not nh.users and (nh.src_mac != route.src_mac or nh.dst_mac != route.dst_mac):
            # an unused next hop learnt again with other MACs (a held one whose neighbour's
            # change reroute.py has yet to write): rewritten before the flow's entries
            nh.rewrite = nh.rewrite or nh.written
            nh.src_mac, nh.dst_mac, nh.written = route.src_mac, route.dst_mac, False
        nh.users[(id(flow), d)] = flow
        return nh

    def release(self, flow: Flow, d: Dir, nexthop_id: int) -> NextHop | None:
        """This flow's direction no longer uses the next hop; the next hop when
        that was its last user (then forgotten: its entry is to be deleted)."""
        nh = self.by_id.get(nexthop_id)
        if nh is None:
            return None
        nh.users.pop((id(flow), d), None)
        if nh.users or nh.held:
            return None
        self.forget(nh)
        return nh

    def hold(self, port: int, addr: str, src_mac: str, mac: str) -> NextHop | None:
        """The next hop of a neighbour the kernel has on this port, kept
        while it has it: the one there is, or a new one (to be written).
        None when the next hops held take HELD_SHARE of the table already:
        the first flow to this neighbour then writes its next hop, as
        before, and the last deletes it."""
        nh = self.by_key.get((port, addr))
        if nh is None and self._room_to_hold():
            try:
                nh = NextHop(self._new_id(), (port, addr), port, src_mac, mac)
            except NextHopsFull:
                return None
            self.by_id[nh.id] = nh
            self.by_key[nh.key] = nh
        return nh if nh is not None and self._set_held(nh, True) else None

    def _room_to_hold(self) -> bool:
        return self.held < int(self.size * HELD_SHARE)

    def _set_held(self, nh: NextHop, held: bool) -> bool:
        """Hold it for its neighbour, or no longer; the count kept. False
        when it is to be held and the share is taken."""
        if nh.held != held:
            if held and not self._room_to_hold():
                return False
            nh.held = held
            self.held += 1 if held else -1
        return True

    def unhold(self, nh: NextHop) -> bool:
        """Its neighbour is gone: no longer kept for it. True when no flow
        names it either (then forgotten: its entry is to be deleted)."""
        self._set_held(nh, False)
        if nh.users:
            return False
        self.forget(nh)
        return True

    def forget(self, nh: NextHop) -> None:
        """No flow names it any more: its id is free (its entry is to be deleted)."""
        if self.by_id.pop(nh.id, None) is nh:
            self._set_held(nh, False)
        if self.by_key.get(nh.key) is nh:
            del self.by_key[nh.key]
        self._unalias(nh)

    def reset(self) -> None:
        """Forget every next hop (the switch is reconciled anew)."""
        self.by_id.clear()
        self.by_key.clear()
        self.held = 0

    def adopt(self, nexthop_id: int, port: int, src_mac: str, dst_mac: str, neighbour: str) -> NextHop:
        """A next hop the switch already holds (a daemon restarted, the
        pipeline kept): its id stays, so that the flow entries naming it are
        adopted as they are. One whose neighbour the kernel has is held for
        it (hold), within HELD_SHARE, as it was before the restart."""
        key = (port, neighbour or dst_mac)
        nh = NextHop(nexthop_id, key, port, src_mac, dst_mac, written=True)
        self.by_id[nexthop_id] = nh
        if self.by_key.setdefault(key, nh) is nh and neighbour:
            self._set_held(nh, True)
        return nh

    def of_neighbour(self, port: int, addr: str) -> NextHop | None:
        return self.by_key.get((port, addr))

    def moved(self, nh: NextHop, mac: str) -> None:
        """Its neighbour answers from another MAC now (to be written): the
        old MAC names it no more."""
        nh.dst_mac = mac
        self._unalias(nh)

    def _unalias(self, nh: NextHop) -> None:
        """Its MAC (NextHops.learn's alias) names it no more."""
        if nh.alias is not None and self.by_key.get(nh.alias) is nh:
            del self.by_key[nh.alias]
        nh.alias = None

    def _to_mac(self, port: int, src_mac: str, dst_mac: str) -> NextHop | None:
        """A route of unknown neighbour (adopted) to the MACs of a next hop
        its neighbour has: that one, named by the MACs from here on (its
        alias). Once per such route: a miss makes the next hop it is keyed
        by."""
        for nh in self.by_id.values():
            if nh.port == port and nh.dst_mac == dst_mac and nh.src_mac == src_mac and nh.alias is None \
                    and nh.key[1] != dst_mac:
                nh.alias = (port, dst_mac)
                self.by_key[nh.alias] = nh
                return nh
        return None

    def learn(self, port: int, addr: str, mac: str, src_mac: str | None = None) -> NextHop | None:
        """The next hop adopted on this port to this MAC while its neighbour
        was unknown, now known as neighbour `addr` (a neighbour event, or a
        route resolved through it): keyed by it from here on, so that the
        neighbour's changes reach it and its flows, and a flow decided anew
        shares it instead of writing a second next hop to the same MAC. The
        kernel flushes a port's neighbours when its representor's carrier
        drops, which it does while no daemon holds it: after a restart, the
        next hops the switch holds are adopted before the kernel resolves
        their neighbours again. Its MAC key stays an alias (a flow adopted
        meanwhile names the next hop by it). None when there is no such
        next hop, or the neighbour has one already."""
        nh = self.by_key.get((port, mac))
        if nh is None or nh.key != (port, mac) or nh.dst_mac != mac or (src_mac is not None and nh.src_mac != src_mac) \
                or (port, addr) in self.by_key:
            return None
        nh.key, nh.alias = (port, addr), nh.key
        self.by_key[nh.key] = nh
        return nh

    # -- entries ---------------------------------------------------------------
    def entry(self, nh: NextHop, with_action: bool = True) -> p4r.TableEntry:
        e = p4r.TableEntry(table_id=self._table_id)
        e.match.add(field_id=self._key.id,
                    exact=p4r.FieldMatch.Exact(value=nh.id.to_bytes((self._key.bitwidth + 7) // 8, "big")))
        if with_action:
            a = e.action.action
            a.action_id = self._action_id
            for (pid, width), v in zip(self._params, (nh.port, _mac(nh.src_mac), _mac(nh.dst_mac))):
                a.params.add(param_id=pid, value=v.to_bytes((width + 7) // 8, "big"))
        return e

    def update(self, nh: NextHop, kind: int) -> p4r.Update:
        u = p4r.Update(type=kind)
        u.entity.table_entry.CopyFrom(self.entry(nh, kind != p4r.Update.DELETE))
        return u

    def decode(self, e: p4r.TableEntry) -> tuple[int, int, str, str] | None:
        """(id, port, src MAC, dst MAC) of an entry the switch holds."""
        if e.table_id != self._table_id or e.action.action.action_id != self._action_id or not e.match:
            return None
        got = {p.param_id: int.from_bytes(p.value, "big") for p in e.action.action.params}
        try:
            port, src, dst = (got[pid] for pid, _ in self._params)
        except KeyError:
            return None
        return int.from_bytes(e.match[0].exact.value, "big"), port, mac_str(src), mac_str(dst)

    @property
    def table_id(self) -> int:
        return self._table_id


def assign(nexthops: NextHops, flows: list[Flow]) -> list[NextHop]:
    """Give each flow's directions their next hops (Flow.nexthops); the next
    hops the switch does not hold yet, to be written before the flows."""
    new: dict[int, NextHop] = {}
    acquire = nexthops.acquire
    for f in flows:
        to_orig, to_reply = f.routes
        a = acquire(f, Dir.ORIGINAL, to_orig)
        try:
            b = acquire(f, Dir.REPLY, to_reply)
        except NextHopsFull:
            nexthops.release(f, Dir.ORIGINAL, a.id)     # a flow has both its next hops or none
            raise
        if not a.written:
            new[a.id] = a
        if not b.written:
            new[b.id] = b
        f.nexthops = (a.id, b.id)
    return list(new.values())
