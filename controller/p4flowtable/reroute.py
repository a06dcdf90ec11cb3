"""Offloaded flows follow the kernel's routing changes (the kernel's
neigh_xmit per packet, nf_flow_dst_check and the flowtable GC's stale-dst
check, and its cleanup when a device goes down).

- A neighbour learnt on a switch port: its next hop is written and held
  while the kernel keeps the neighbour (nexthop.py), so that the first flow
  to it finds it there; after each reconcile, every neighbour known then.
- A neighbour's new MAC: its next hop is rewritten, one write whatever the
  number of flows sent to it.
- A neighbour failed or deleted: the flows sent to it are handed back; the
  kernel resolves it again with their next packet (a switch that kept sending
  to the old MAC would blackhole them), and they come back when it can. Its
  next hop is deleted, at once where no flow named it.
- A neighbour resolved with the MAC of a next hop adopted while it was
  unknown (after a restart: NextHops.learn): the next hop is its from then on.
- A route, ip rule, link or address change: the directions it may move are
  looked up again with their keys (route.py), all together. A direction whose
  path changed on the same port gets its entry rewritten to name the new next
  hop; one whose port changed (its flow's other direction then comes in
  elsewhere), or that has no unicast path through a switch port any more
  (blackhole, unreachable, prohibit, another device), is handed back, and the
  kernel decides. A direction known only from the frames the kernel sent (no
  key reproduces them) is handed back on any change of its family's routing,
  as the kernel's own flowtable hands back every flow whose route went stale.
A route change only touches the directions whose destination it covers. The
changes of SETTLE seconds are taken together, and passes are a hold-down
apart, as routing daemons throttle their SPF runs: HOLD_MIN after a quiet
spell, doubled while changes keep coming, up to HOLD_MAX. A flap thus costs a
few passes, not one per change, and each pass writes only what differs from
what the switch holds; while it lasts, the fast path may lag the kernel by up
to HOLD_MAX.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import time
from typing import Callable

from p4.v1 import p4runtime_pb2 as p4r

from .model import DIRS, Dir, Flow, FlowFlag, FlowRoute, TeardownReason
from .offload import P4RuntimeDriver
from .p4runtime import SwitchError
from .route import NUD_NOARP, RouteError, Routes

log = logging.getLogger("p4ft")

SETTLE = 0.02       # seconds: changes gathered after the first one
HOLD_MIN = 0.05     # seconds between two passes after a quiet spell ...
HOLD_MAX = 2.0      # ... doubled while changes keep coming, up to this

# rtnetlink groups (linux/rtnetlink.h RTNLGRP_*: bit n-1)
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40
RTMGRP_IPV4_RULE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x80, 0x100, 0x400
RTMGRP_IPV6_RULE = 1 << 18
GROUPS = (RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE
          | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE | RTMGRP_IPV6_RULE)
AF_INET, AF_INET6 = 2, 10


class Reroute:
    """Turns rtnetlink messages into next-hop writes, moves and hand-backs."""

    def __init__(self, flows: Callable[[], list[Flow]], routes: Routes, driver: P4RuntimeDriver,
                 teardown: Callable[[Flow, TeardownReason], None], stats: collections.Counter,
                 retry: Callable[[], None], clock=time.monotonic):
        """flows: the offloaded flows; teardown: hands one back; retry: the
        connections declined for want of a path are judged again."""
        self.flows, self.routes, self.driver = flows, routes, driver
        self.teardown, self.stats, self.retry, self.clock = teardown, stats, retry, clock
        self._neigh: dict[tuple[int, str], str | None] = {}          # (port, address) -> MAC or None
        self._prefixes: set[tuple[int, int, int]] = set()            # (version, network, mask)
        self._families: set[int] = set()                              # versions changed as a whole
        self._first: float | None = None                              # clock of the first change pending
        self._last_pass = -HOLD_MAX
        self._hold = HOLD_MIN
        self._wake = asyncio.Event()

    # -- messages ----------------------------------------------------------------------
    async def follow(self, monitor) -> None:
        """Link, address, route, rule and neighbour changes from an rtnetlink
        socket bound to GROUPS (pyroute2's AsyncIPRoute)."""
        while True:
            async for msg in monitor.get():
                self.on_message(msg)

    def on_message(self, msg) -> None:
        event = msg.get("event", "")
        if event in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
            got = self.routes.neighbour_event(msg, deleted=event == "RTM_DELNEIGH")
            if got is not None:
                ifindex, addr, mac = got
                port = self.routes.port_of(ifindex)
                if port is not None:
                    nexthops = self.driver.nexthops
                    known = nexthops.of_neighbour(port, addr) is not None
                    if not known and mac is not None:   # a next hop adopted before its neighbour was known?
                        known = nexthops.learn(port, addr, mac) is not None
                    if known or (mac is not None and not msg["state"] & NUD_NOARP):
                        # a neighbour learnt: its next hop held (_neighbours)
                        self._neigh[(port, addr)] = mac
                        self._wake.set()
            self.retry()
            return
        if event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
            fam = msg.get("family")
            dst = msg.get("RTA_DST")
            if fam in (AF_INET, AF_INET6):
                version = 4 if fam == AF_INET else 6
                bits = 32 if version == 4 else 128
                net = ipaddress.ip_network(f"{dst}/{msg['dst_len']}" if dst else
                                           ("0.0.0.0/0" if version == 4 else "::/0"), strict=False)
                mask = ((1 << bits) - 1) ^ ((1 << (bits - net.prefixlen)) - 1)
                self._prefixes.add((version, int(net.network_address), mask))
        elif event in ("RTM_NEWRULE", "RTM_DELRULE", "RTM_NEWADDR", "RTM_DELADDR"):
            fam = msg.get("family")
            self._families.update({4} if fam == AF_INET else {6} if fam == AF_INET6 else {4, 6})
            if event.endswith("ADDR"):
                self.routes.invalidate()
            else:
                self.routes.rules_changed()
        elif event in ("RTM_NEWLINK", "RTM_DELLINK"):
            self.routes.invalidate()
            self._families.update({4, 6})
        else:
            return
        log.debug("routing change: %s family %s dst %s/%s", event, msg.get("family"), msg.get("RTA_DST"),
                  msg.get("dst_len"))
        self.retry()
        self.routes.changed()
        now = self.clock()
        if self._first is None:
            self._first = now
            quiet = now - self._last_pass > HOLD_MAX
            self._hold = HOLD_MIN if quiet else min(2 * self._hold, HOLD_MAX)
        self._wake.set()

    # -- the worker ----------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._neigh:
                async with self.driver.writers.shared():     # not while the reconcile holds the switch
                    changes, self._neigh = self._neigh, {}
                    await self._neighbours(changes)
            if self._first is None:
                continue
            due = max(self._first + SETTLE, self._last_pass + self._hold)
            wait = due - self.clock()
            if wait > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                self._wake.set()      # neighbours that came meanwhile, or the pass now due
                continue
            async with self.driver.writers.shared():
                prefixes, families = self._prefixes, self._families
                self._prefixes, self._families, self._first = set(), set(), None
                self._last_pass = self.clock()
                await self.reroute(prefixes, families, self.routes.epoch)

    def hold_known(self) -> None:
        """After a reconcile (which keeps, of the next hops the switch held,
        those of neighbours the kernel has): the next hops of every
        neighbour the kernel has on a switch port, held and written where
        missing (_neighbours)."""
        for port, addr, mac in self.routes.port_neighbours():
            self._neigh[(port, addr)] = mac
        if self._neigh:
            self._wake.set()

    async def _neighbours(self, changes: dict[tuple[int, str], str | None]) -> None:
        nexthops = self.driver.nexthops
        modified, learnt, dropped = [], [], []
        for (port, addr), mac in changes.items():
            nh = nexthops.of_neighbour(port, addr)
            if nh is None:
                if mac is not None:
                    try:
                        src = await self.routes.port_mac(port)
                    except RouteError as e:
                        log.warning("neighbour %s on port %d: %s", addr, port, e)
                        continue
                    nh = nexthops.hold(port, addr, src, mac)
                    if nh is not None and not nh.written:
                        learnt.append(nh)
                continue
            if mac is None:
                # failed or deleted: the kernel resolves it again with the flows' next packets
                flows = {id(f): f for f in nh.users.values()}
                self.stats["reroute.neighbour_lost"] += 1
                # the kernel's neighbour GC drops idle ones: worth a line only when flows go back
                (log.info if flows else log.debug)("neighbour %s on port %d is gone: %d flow(s) handed back",
                                                   addr, port, len(flows))
                for f in flows.values():
                    self.teardown(f, TeardownReason.ROUTE_CHANGED)
                if nexthops.unhold(nh):
                    dropped.append(nh)
                continue
            nexthops.hold(port, addr, nh.src_mac, mac)
            if mac != nh.dst_mac:
                log.info("neighbour %s on port %d moved to %s: one next-hop write for %d flow direction(s)",
                         addr, port, mac, len(nh.users))
                nexthops.moved(nh, mac)
                modified.append(nh)
        if dropped:
            await self.driver.drop_nexthops(dropped)
        if learnt:
            try:
                await self.driver.insert_nexthops(learnt)
                self.stats["reroute.neighbours_written"] += len(learnt)
            except SwitchError as e:    # the first flow to each writes it, as when none is held
                log.warning("writing the next hops of %d neighbour(s) learnt: %s", len(learnt), e)
                for nh in learnt:
                    if not nh.written and nh.writing is None:
                        nexthops.unhold(nh)
        if modified:
            try:
                await self.driver.write_nexthops(modified, p4r.Update.MODIFY)
                self.stats["reroute.nexthop_writes"] += len(modified)
            except SwitchError as e:    # the switch refused: the flows behind go back to the kernel
                log.error("rewriting %d next hop(s): %s; their flows are handed back", len(modified), e)
                for nh in modified:
                    for f in list(nh.users.values()):
                        self.teardown(f, TeardownReason.ROUTE_CHANGED)

    def candidates(self, prefixes: set, families: set[int], epoch: int) -> list[tuple[Flow, Dir]]:
        """The offloaded directions these changes (the last of them made the
        routing `epoch`) may move; a flow decided since saw them already."""
        out = []
        for f in self.flows():
            if f.flags & (FlowFlag.TEARDOWN | FlowFlag.DYING) or f.routes is None or f.route_epoch >= epoch:
                continue
            version = f.key.src.version
            changed = any(v == version for v, _, _ in prefixes)
            for d in DIRS:
                key = f.route_keys[d]
                if version in families or (key is None and changed):
                    out.append((f, d))
                elif changed:
                    dst = int(key.dst if key is not None else f.tuples[d.other].src)
                    if any(v == version and dst & mask == net for v, net, mask in prefixes):
                        out.append((f, d))
        return out

    async def reroute(self, prefixes: set, families: set[int], epoch: int) -> None:
        """One pass: the directions these changes may move, looked up again."""
        t0 = self.clock()
        cands = self.candidates(prefixes, families, epoch)
        self.stats["reroute.passes"] += 1
        if not cands:
            return
        gone = [(f, d) for f, d in cands if f.route_keys[d] is None]
        asked = [(f, d) for f, d in cands if f.route_keys[d] is not None]
        got = await self.routes.resolve([(f.route_keys[d], None) for f, d in asked]) if asked else []
        moves: list[tuple[Flow, Dir, FlowRoute]] = []
        for (f, d), new in zip(asked, got):
            old = f.routes[d]
            if isinstance(new, RouteError):
                log.info("%s %s: %s: handed back", f.key, d.name.lower(), new)
                gone.append((f, d))
            elif new.port != old.port:
                gone.append((f, d))
            elif (new.nexthop_key, new.mtu) != (old.nexthop_key, old.mtu):
                moves.append((f, d, new))
        for f, _ in gone:
            self.teardown(f, TeardownReason.ROUTE_CHANGED)
        for f, _ in asked:
            f.route_epoch = max(f.route_epoch, epoch)
        torn = {id(f) for f, _ in gone}
        moves = [m for m in moves if id(m[0]) not in torn]
        if moves:
            try:
                failed = (await self.driver.move(moves)).failed
            except SwitchError as e:    # the switch refused or went away: the kernel keeps them meanwhile
                failed = [(f, str(e)) for f, _, _ in moves]
            for f, msg in failed:
                log.error("moving flow %s to its new next hop: %s; handed back", f.key, msg)
                self.teardown(f, TeardownReason.ROUTE_CHANGED)
        self.stats["reroute.looked_up"] += len(asked)
        self.stats["reroute.moved"] += len(moves)
        self.stats["reroute.handed_back"] += len(torn)
        log.info("routing changed: %d direction(s) looked up again, %d moved to another next hop, "
                 "%d flow(s) handed back, in %.1f ms", len(asked), len(moves), len(torn), 1000 * (self.clock() - t0))
