"""Conntrack mirror: the kernel's connection table, read over ctnetlink.

Dumps at start, then follows NEW/UPDATE/DESTROY events. Also the two writes
p4ft makes to the kernel's entries, as nf_flow_table does:
- on offload: TCP tracking set liberal (IP_CT_TCP_FLAG_BE_LIBERAL, like
  nft_flow_offload's flow_offload_ct_tcp) and a one-day timeout while the
  switch carries the flow (nf_ct_offload_timeout);
- on hand-back: the timeout of the entry's current state less the time the
  flow was idle in the switch (flow_offload_fixup_ct), and the flowtable's
  mark cleared from the entry's ct label, so that only a packet that reaches
  the offload statement again offloads it again (see policy.py).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import operator
import socket
from dataclasses import dataclass
from typing import Callable

from . import ctnetlink as ctnl, netns
from .model import IPPROTO_TCP, IPPROTO_UDP, FlowTuple

NETLINK_NETFILTER = 12

log = logging.getLogger(__name__)

IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_SEQ_ADJUST = 1 << 6
IPS_DYING = 1 << 9
IPS_UNTRACKED = 1 << 12  # also IPS_NAT_CLASH
IP_CT_TCP_FLAG_BE_LIBERAL = 0x08
NF_CT_DAY = 86400
# a dump's entries indexed between two turns of the event loop (about 1 us
# each: 10 ms)
TURN_EVERY = 10_000
_orig_of = operator.attrgetter("orig")

TCP_STATES = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
              "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"]
TCP_ESTABLISHED = 3
# sysctl of each TCP state's timeout, indexed like TCP_STATES
_TCP_TIMEOUT_SYSCTL = {3: "established", 4: "fin_wait", 5: "close_wait", 6: "last_ack",
                       7: "time_wait", 8: "close", 1: "syn_sent", 2: "syn_recv", 9: "syn_sent"}


class CtEvent(enum.Enum):
    NEW = "new"
    UPDATE = "update"
    DESTROY = "destroy"


@dataclass(slots=True)
class CtEntry:
    id: int
    orig: FlowTuple
    reply: FlowTuple
    status: int
    tcp_state: int | None
    timeout: int | None
    helper: bool = False
    labels: int = 0          # ct label bits; flowtable marks among them (policy.py)
    mark: int = 0            # ct mark: the packet mark a ruleset restores from it routes the flow (route.py)
    liberal: bool = False    # TCP tracking liberal both ways (IP_CT_TCP_FLAG_BE_LIBERAL), as offload sets it

    @property
    def l4proto(self) -> int:
        return self.orig.l4proto

    @property
    def state_name(self) -> str:
        if self.tcp_state is not None:
            return TCP_STATES[self.tcp_state] if self.tcp_state < len(TCP_STATES) else str(self.tcp_state)
        return "ASSURED" if self.status & IPS_ASSURED else ("REPLIED" if self.status & IPS_SEEN_REPLY else "UNREPLIED")

    def offloadable(self) -> str | None:
        """None if the kernel's nft_flow_offload_eval would offload it, else why not."""
        proto = self.orig.l4proto
        if proto == IPPROTO_TCP:
            if self.tcp_state != TCP_ESTABLISHED:
                return "tcp not established"
        elif proto == IPPROTO_UDP:
            if not self.status & IPS_SEEN_REPLY:
                return "udp reply not seen"
        else:
            return "not tcp/udp"
        if self.helper:
            return "has a helper"
        if self.status & (IPS_SEQ_ADJUST | IPS_UNTRACKED):
            return "seq adjust or nat clash"
        if not self.status & IPS_CONFIRMED:
            return "not confirmed"
        return None


def entry_from_msg(m: ctnl.CtMsg) -> CtEntry | None:
    """An entry from a full message (a dump, a get, a NEW event), IPv4 or IPv6."""
    if m.orig is None or m.reply is None:
        return None
    return CtEntry(m.id or 0, m.orig, m.reply, m.status or 0, m.tcp_state, m.timeout, m.helper, m.labels or 0,
                   m.mark or 0, bool((m.tcp_flags or 0) & (m.tcp_flags_reply or 0) & IP_CT_TCP_FLAG_BE_LIBERAL))


class ConntrackMirror:
    """The router namespace's conntrack table, kept current by events."""

    def __init__(self, netns_name: str | None):
        self.netns = netns_name
        self.entries: dict[FlowTuple, CtEntry] = {}   # by original tuple
        self._by_reply: dict[FlowTuple, CtEntry] = {}
        self._events: ctnl.CtnlSocket | None = None
        self._cmd: ctnl.CtnlSocket | None = None

    def _socket(self) -> ctnl.CtnlSocket:
        # made in the namespace by this thread: no helper process needed
        return ctnl.CtnlSocket(netns.netlink_socket(self.netns, NETLINK_NETFILTER))

    async def _subscribe(self) -> None:
        self._events = self._socket()
        self._events.subscribe((ctnl.NFNLGRP_CONNTRACK_NEW, ctnl.NFNLGRP_CONNTRACK_UPDATE,
                                ctnl.NFNLGRP_CONNTRACK_DESTROY))
        # The updates p4ft makes itself (offload marks, lease renewals,
        # hand-back timeouts) come back as events naming the command socket's
        # port; they change nothing the mirror follows, so they are not
        # delivered. Changes made by packets meanwhile are events of their own.
        self._events.skip_events_of(self._cmd.portid)

    async def open(self) -> None:
        self._cmd = self._socket()   # requests are pipelined on it, no lock
        await self._subscribe()

    async def resync(self) -> tuple[list[CtEntry], list[CtEntry]]:
        """After lost events (ENOBUFS): subscribe again, then dump.

        The table stays readable meanwhile: the dump fills new indexes that
        replace the old ones when it is complete.
        Returns (entries now present, entries that vanished meanwhile).
        """
        if self._events is not None:
            self._events.close()
        await self._subscribe()
        before = self.entries
        now = await self.dump()
        gone = []
        for i, (k, e) in enumerate(before.items()):
            if i % TURN_EVERY == TURN_EVERY - 1:
                await asyncio.sleep(0)
            if k not in self.entries:
                gone.append(e)
        return now, gone

    async def close(self) -> None:
        for s in (self._events, self._cmd):
            if s is not None:
                s.close()

    async def count(self) -> int | None:
        """The kernel's count of the namespace's entries, before a dump."""
        return await self._cmd.count()

    async def dump(self) -> list[CtEntry]:
        """Every entry, from one dump (both families), made the mirror's.
        The loop takes a turn every TURN_EVERY entries while they are
        indexed: at about 1 us an entry, a million in one pass would leave
        the API, the switch's stream and the events waiting for a second."""
        out = []
        entries: dict[FlowTuple, CtEntry] = {}
        by_reply: dict[FlowTuple, CtEntry] = {}
        for i, msg in enumerate(await self._cmd.dump(socket.AF_UNSPEC)):
            if i % TURN_EVERY == TURN_EVERY - 1:
                await asyncio.sleep(0)
            e = entry_from_msg(msg)
            if e is not None:
                entries[e.orig] = by_reply[e.reply] = e
                out.append(e)
        self.entries, self._by_reply = entries, by_reply
        return out

    def _store(self, e: CtEntry) -> None:
        self.entries[e.orig] = e
        self._by_reply[e.reply] = e

    def _drop(self, orig: FlowTuple) -> None:
        old = self.entries.pop(orig, None)
        if old is not None:
            self._by_reply.pop(old.reply, None)

    def lookup(self, t: FlowTuple) -> CtEntry | None:
        """Entry a packet with this tuple belongs to, in either direction."""
        return self.entries.get(t) or self._by_reply.get(t)

    async def events(self):
        """Yield (CtEvent, entry, previous entry or None) as the kernel reports them."""
        async for m in self._events.messages():
            if m.orig is None:
                continue
            old = self.entries.get(m.orig)
            if m.msg_type == ctnl.IPCTNL_MSG_CT_DELETE:
                self._drop(m.orig)
                gone = old or entry_from_msg(m)
                if gone is not None:
                    yield CtEvent.DESTROY, gone, old
                continue
            if m.msg_type != ctnl.IPCTNL_MSG_CT_NEW or m.reply is None:
                continue
            e = entry_from_msg(m)
            if old is not None:
                # an update carries only what changed
                e.tcp_state = e.tcp_state if e.tcp_state is not None else old.tcp_state
                e.timeout = e.timeout if e.timeout is not None else old.timeout
                e.status = e.status if m.status is not None else old.status
                e.helper = e.helper or old.helper
                e.labels = e.labels if m.labels is not None else old.labels
                e.mark = e.mark if m.mark is not None else old.mark
                e.liberal = e.liberal if m.tcp_flags is not None else old.liberal
            self._store(e)
            yield (CtEvent.NEW if m.flags & ctnl.NLM_F_CREATE else CtEvent.UPDATE), e, old

    @staticmethod
    def _change(e: CtEntry, *attrs: bytes) -> tuple[int, int, bytes, int]:
        """The request changing an existing entry (IPCTNL_MSG_CT_NEW without NLM_F_CREATE)."""
        return ConntrackMirror._changes((e,), b"".join(attrs))[0]

    @staticmethod
    def _changes(entries, attrs: bytes, tcp_attrs: bytes | None = None) -> list[tuple[int, int, bytes, int]]:
        """_change's request for each entry, made in one pass (a burst's every
        flow): with attrs, or with tcp_attrs for a TCP entry where given."""
        attr, family, orig, new = ctnl.tuple_attr, ctnl.family_of, ctnl.CTA_TUPLE_ORIG, ctnl.IPCTNL_MSG_CT_NEW
        tcp = attrs if tcp_attrs is None else tcp_attrs
        return [(new, family(o), attr(orig, o) + (tcp if o.l4proto == IPPROTO_TCP else attrs), 0)
                for o in map(_orig_of, entries)]

    async def _set(self, e: CtEntry, *attrs: bytes) -> None:
        await self._cmd.request(*self._change(e, *attrs))

    async def offloaded(self, entries: list[CtEntry], lease: float = NF_CT_DAY) -> list[Exception | None]:
        """Kernel entries now carried by the switch: liberal TCP, a one-day
        timeout. All requests in flight together; per entry None or the error."""
        timeout = ctnl.timeout_attr(int(lease))
        tcp = timeout + ctnl.tcp_flags_attr(IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL)
        reqs = self._changes(entries, timeout, tcp)
        errors = await self._cmd.changes(reqs)
        for e, err in zip(entries, errors):
            if err is None:
                e.timeout = int(lease)
                e.liberal = e.orig.l4proto == IPPROTO_TCP
        return errors

    @staticmethod
    def on_lease(e: CtEntry, lease: float = NF_CT_DAY) -> bool:
        """Whether an entry is offloaded in the kernel's sense already: TCP
        liberal, and at least half a lease left. The kernel's
        nf_ct_offload_timeout renews only below half (NF_CT_DAY / 2), so an
        entry a daemon before this one offloaded is left as it is (the
        aging renews it at half time from now)."""
        return e.timeout is not None and e.timeout >= lease / 2 and (e.orig.l4proto != IPPROTO_TCP or e.liberal)

    def state_timeouts(self) -> Callable[[CtEntry], int]:
        """The timeout of an entry's state, each state's sysctl read once for
        as long as the reader returned is kept (a batch, one pass)."""
        read: dict[str, int] = {}
        by_state: dict[tuple, int] = {}      # what _timeout_key looks at -> the timeout: a reconcile asks per entry

        def timeout(e: CtEntry) -> int:
            state = (e.l4proto, e.tcp_state, e.status & IPS_SEEN_REPLY)
            t = by_state.get(state)
            if t is None:
                key = self._timeout_key(e)
                t = read.get(key)
                if t is None:
                    t = read[key] = int(netns.read_sysctl(self.netns, key))
                by_state[state] = t
            return t
        return timeout

    @staticmethod
    def _timeout_key(e: CtEntry) -> str:
        """The sysctl holding the timeout of the entry's state."""
        if e.l4proto == IPPROTO_TCP:
            name = _TCP_TIMEOUT_SYSCTL.get(e.tcp_state or 0, "established")
            return f"net.netfilter.nf_conntrack_tcp_timeout_{name}"
        return ("net.netfilter.nf_conntrack_udp_timeout_stream" if e.status & IPS_SEEN_REPLY
                else "net.netfilter.nf_conntrack_udp_timeout")

    async def get(self, orig: FlowTuple) -> CtEntry | None:
        """The kernel's entry as it is now, not as last reported."""
        try:
            msgs = await self._cmd.request(ctnl.IPCTNL_MSG_CT_GET, ctnl.family_of(orig),
                                           ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, orig))
        except ctnl.CtnlError:  # ENOENT: gone
            return None
        for msg in msgs:
            e = entry_from_msg(msg)
            if e is not None:
                return e
        return None

    def enable_accounting(self) -> None:
        """Conntrack's packet counters (nf_conntrack_acct) for connections made
        from now on: what ranks flows waiting for room in the switch."""
        key = "net.netfilter.nf_conntrack_acct"
        if netns.read_sysctl(self.netns, key) != "1":
            netns.write_sysctl(self.netns, key, "1")
            log.info("conntrack accounting on (%s=1): flows waiting for room are ranked by traffic", key)

    async def packets(self, entries: list[CtEntry]) -> list[int | None]:
        """Each entry's packets in both directions now (None: gone, or not counted)."""
        reqs = [(ctnl.IPCTNL_MSG_CT_GET, ctnl.family_of(e.orig), ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, e.orig), 0)
                for e in entries]
        out = []
        for res in await self._cmd.requests(reqs):
            out.append(None if isinstance(res, Exception) or not res else res[0].packets)
        return out

    async def handed_back(self, e: CtEntry, idle: float, mark: int = 0) -> None:
        """Slow path owns the flow again (flow_offload_fixup_ct): one entry
        of handed_back_many; raises its error."""
        err = (await self.handed_back_many([(e, idle, mark)]))[0]
        if err is not None:
            raise err

    async def handed_back_many(self, items: list[tuple[CtEntry, float, int]]) -> list[Exception | None]:
        """Slow path owns these flows again (flow_offload_fixup_ct), each
        (entry, seconds it sat idle in the switch, its flowtable's mark).

        Each entry gets the timeout of its current state less the time the
        flow sat idle, as in the kernel only ever lowered, and loses the
        label bits of its mark, in one request. The entries are read as
        they are now (not as last reported) all in flight together, and
        changed all together: a batch of hand-backs costs a few round trips,
        not three a flow. The state timeouts (sysctls) are read once a
        batch. Per item None, or the error of its change; an entry gone
        meanwhile is None (nothing to hand back)."""
        if not items:
            return []
        got = await self._cmd.requests([(ctnl.IPCTNL_MSG_CT_GET, ctnl.family_of(e.orig),
                                         ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, e.orig), 0) for e, _, _ in items])
        out: list[Exception | None] = [None] * len(items)
        state_timeout = self.state_timeouts()
        changes: list[tuple[int, tuple]] = []      # (index in items, request)
        found: list[bool] = [False] * len(items)
        for i, ((e, idle, mark), res) in enumerate(zip(items, got)):
            if isinstance(res, ctnl.CtnlError):         # ENOENT: gone
                continue
            if isinstance(res, Exception):
                out[i] = res
                continue
            now = next((x for x in map(entry_from_msg, res) if x is not None), None)
            if now is None:
                continue
            found[i] = True
            attrs = []
            timeout = max(0, int(state_timeout(now) - idle))
            if now.timeout is None or now.timeout > timeout:
                attrs.append(ctnl.timeout_attr(timeout))
            if now.labels & mark:
                attrs.append(ctnl.labels_attr(0, mark))
            if attrs:
                changes.append((i, self._change(now, *attrs)))
        if changes:
            for (i, _), err in zip(changes, await self._cmd.changes([req for _, req in changes])):
                out[i] = err
        for (e, _, mark), err, there in zip(items, out, found):
            cached = self.entries.get(e.orig) if there and err is None else None
            if cached is not None:        # our own update's event is not decoded
                cached.labels &= ~mark
        return out

    async def hand_back(self, items: list[tuple[CtEntry, float, int]], what: str = "hand-back") -> int:
        """handed_back_many for a caller that carries on whatever happens:
        a batch that fails as a whole is logged as a warning (each entry's
        lease then runs out by itself), an entry's own failure at debug (it
        may have just died). The number of entries handed back."""
        try:
            errors = await self.handed_back_many(items)
        except Exception as err:
            log.warning("%s of %d connection(s) failed: %r", what, len(items), err)
            return 0
        for (e, _, _), err in zip(items, errors):
            if err is not None:
                log.debug("%s of %s: %s", what, e.orig, err)
        return sum(err is None for err in errors)

    async def clear_labels(self, entries: list[CtEntry], mark: int) -> None:
        """Clear the bits of `mark` from these entries (a flowtable that is
        gone: its mark means nothing now). Entries that died meanwhile are skipped."""
        reqs = self._changes(entries, ctnl.labels_attr(0, mark))
        for e, err in zip(entries, await self._cmd.changes(reqs)):
            if err is None:
                e.labels &= ~mark

    async def keepalive(self, e: CtEntry, lease: float = NF_CT_DAY) -> None:
        """Renew the timeout of an entry the switch still carries (nf_ct_offload_timeout)."""
        await self._set(e, ctnl.timeout_attr(int(lease)))
        e.timeout = int(lease)
