"""Conntrack mirror: the kernel's connection table, read over ctnetlink.

Dumps at start, then follows NEW/UPDATE/DESTROY events. Also the two writes
p4ft makes to the kernel's entries, as nf_flow_table does:
- on offload: TCP tracking set liberal (IP_CT_TCP_FLAG_BE_LIBERAL, like
  nft_flow_offload's flow_offload_ct_tcp) and a one-day timeout while the
  switch carries the flow (nf_ct_offload_timeout);
- on hand-back: the timeout of the entry's current state less the time the
  flow was idle in the switch (flow_offload_fixup_ct).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from dataclasses import dataclass

from pyroute2.netlink import NETLINK_NETFILTER, NLM_F_CREATE
from pyroute2.netlink.nfnetlink import (NFNLGRP_CONNTRACK_DESTROY, NFNLGRP_CONNTRACK_NEW,
                                        NFNLGRP_CONNTRACK_UPDATE)
from pyroute2.netlink.nfnetlink.nfctsocket import (IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_NEW,
                                                   AsyncNFCTSocket, NFCTAttrTuple)

from .model import IPPROTO_TCP, IPPROTO_UDP, FlowTuple, ipv4
from . import netns

log = logging.getLogger(__name__)

IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_SEQ_ADJUST = 1 << 6
IPS_DYING = 1 << 9
IPS_UNTRACKED = 1 << 12  # also IPS_NAT_CLASH
IP_CT_TCP_FLAG_BE_LIBERAL = 0x08
NF_CT_DAY = 86400

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
        if self.l4proto == IPPROTO_TCP:
            if self.tcp_state != TCP_ESTABLISHED:
                return "tcp not established"
        elif self.l4proto == IPPROTO_UDP:
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


def _tuple(nla) -> FlowTuple | None:
    ip = nla.get_attr("CTA_TUPLE_IP")
    proto = nla.get_attr("CTA_TUPLE_PROTO")
    if ip is None or proto is None:
        return None
    src, dst = ip.get_attr("CTA_IP_V4_SRC"), ip.get_attr("CTA_IP_V4_DST")
    if src is None:
        return None
    return FlowTuple(ipv4(src), ipv4(dst), proto.get_attr("CTA_PROTO_NUM"),
                     proto.get_attr("CTA_PROTO_SRC_PORT") or 0, proto.get_attr("CTA_PROTO_DST_PORT") or 0)


def entry_from_msg(msg) -> CtEntry | None:
    orig, reply = msg.get_attr("CTA_TUPLE_ORIG"), msg.get_attr("CTA_TUPLE_REPLY")
    if orig is None or reply is None:
        return None
    o, r = _tuple(orig), _tuple(reply)
    if o is None or r is None:
        return None
    tcp_state = None
    pinfo = msg.get_attr("CTA_PROTOINFO")
    if pinfo is not None:
        tcp = pinfo.get_attr("CTA_PROTOINFO_TCP")
        if tcp is not None:
            tcp_state = tcp.get_attr("CTA_PROTOINFO_TCP_STATE")
    return CtEntry(msg.get_attr("CTA_ID") or 0, o, r, msg.get_attr("CTA_STATUS") or 0, tcp_state,
                   msg.get_attr("CTA_TIMEOUT"), msg.get_attr("CTA_HELP") is not None)


def _attr_tuple(t: FlowTuple) -> NFCTAttrTuple:
    return NFCTAttrTuple(saddr=str(t.src), daddr=str(t.dst), proto=t.l4proto, sport=t.sport, dport=t.dport)


class ConntrackMirror:
    """The router namespace's conntrack table, kept current by events."""

    def __init__(self, netns_name: str | None):
        self.netns = netns_name
        self.entries: dict[FlowTuple, CtEntry] = {}   # by original tuple
        self._by_reply: dict[FlowTuple, CtEntry] = {}
        self._events: AsyncNFCTSocket | None = None
        self._cmd: AsyncNFCTSocket | None = None

    def _socket(self) -> AsyncNFCTSocket:
        # made in the namespace by this thread: pyroute2's own netns support
        # forks a helper per socket, which we do not need
        return AsyncNFCTSocket(socket.AF_INET,
                               use_socket=netns.netlink_socket(self.netns, NETLINK_NETFILTER))

    async def _subscribe(self) -> None:
        self._events = self._socket()
        groups = 0
        for g in (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY):
            groups |= 1 << (g - 1)
        await self._events.bind(groups=groups)

    async def open(self) -> None:
        await self._subscribe()
        self._cmd = self._socket()
        # one request at a time: a pyroute2 socket does not take concurrent ones
        self._cmd_lock = asyncio.Lock()

    async def resync(self) -> tuple[list[CtEntry], list[CtEntry]]:
        """After lost events (ENOBUFS): subscribe again, then dump.

        Returns (entries now present, entries that vanished meanwhile).
        """
        if self._events is not None:
            self._events.close()
        await self._subscribe()
        before = dict(self.entries)
        self.entries.clear()
        self._by_reply.clear()
        now = await self.dump()
        gone = [e for k, e in before.items() if k not in self.entries]
        return now, gone

    async def close(self) -> None:
        for s in (self._events, self._cmd):
            if s is not None:
                s.close()

    async def dump(self) -> list[CtEntry]:
        out = []
        async with self._cmd_lock:
            async for msg in await self._cmd.dump():
                e = entry_from_msg(msg)
                if e is not None:
                    self._store(e)
                    out.append(e)
        return out

    def _store(self, e: CtEntry) -> None:
        self.entries[e.orig] = e
        self._by_reply[e.reply] = e

    def _drop(self, e: CtEntry) -> None:
        if self.entries.get(e.orig) is not None:
            old = self.entries.pop(e.orig)
            self._by_reply.pop(old.reply, None)

    def lookup(self, t: FlowTuple) -> CtEntry | None:
        """Entry a packet with this tuple belongs to, in either direction."""
        return self.entries.get(t) or self._by_reply.get(t)

    async def events(self):
        """Yield (CtEvent, entry, previous entry or None) as the kernel reports them."""
        while True:
            async for msg in self._events.get():
                mtype = msg["header"]["type"] & 0xFF
                e = entry_from_msg(msg)
                if e is None:
                    continue
                if mtype == IPCTNL_MSG_CT_DELETE:
                    old = self.entries.get(e.orig)
                    self._drop(e)
                    yield CtEvent.DESTROY, e, old
                elif mtype == IPCTNL_MSG_CT_NEW:
                    new = bool(msg["header"]["flags"] & NLM_F_CREATE)
                    old = self.entries.get(e.orig)
                    if old is not None:
                        # events carry only what changed
                        e.tcp_state = e.tcp_state if e.tcp_state is not None else old.tcp_state
                        e.timeout = e.timeout if e.timeout is not None else old.timeout
                        e.helper = e.helper or old.helper
                    self._store(e)
                    yield (CtEvent.NEW if new else CtEvent.UPDATE), e, old

    async def _set(self, e: CtEntry, **kw) -> None:
        async with self._cmd_lock:
            await self._cmd.entry("set", tuple_orig=_attr_tuple(e.orig), **kw)

    async def offloaded(self, e: CtEntry) -> None:
        """Kernel entry now carried by the switch: liberal TCP, one-day timeout."""
        kw = {"timeout": NF_CT_DAY}
        if e.l4proto == IPPROTO_TCP:
            flags = {"value": (IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL)}
            kw["protoinfo"] = {"attrs": [["CTA_PROTOINFO_TCP", {"attrs": [
                ["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", flags],
                ["CTA_PROTOINFO_TCP_FLAGS_REPLY", flags]]}]]}
        await self._set(e, **kw)

    def state_timeout(self, e: CtEntry) -> int:
        if e.l4proto == IPPROTO_TCP:
            name = _TCP_TIMEOUT_SYSCTL.get(e.tcp_state or 0, "established")
            key = f"net.netfilter.nf_conntrack_tcp_timeout_{name}"
        else:
            key = ("net.netfilter.nf_conntrack_udp_timeout_stream" if e.status & IPS_SEEN_REPLY
                   else "net.netfilter.nf_conntrack_udp_timeout")
        return int(netns.read_sysctl(self.netns, key))

    async def get(self, orig: FlowTuple) -> CtEntry | None:
        """The kernel's entry as it is now, not as last reported."""
        try:
            async with self._cmd_lock:
                msgs = await self._cmd.entry("get", tuple_orig=_attr_tuple(orig))
        except Exception:  # ENOENT: gone
            return None
        for msg in msgs:
            e = entry_from_msg(msg)
            if e is not None:
                return e
        return None

    async def handed_back(self, e: CtEntry, idle: float) -> None:
        """Slow path owns the flow again (flow_offload_fixup_ct).

        The timeout of the entry's current state, less the time the flow sat
        idle in the switch; as in the kernel, only ever lowered.
        """
        now = await self.get(e.orig)
        if now is None:
            return
        timeout = max(0, int(self.state_timeout(now) - idle))
        if now.timeout is None or now.timeout > timeout:
            await self._set(now, timeout=timeout)

    async def keepalive(self, e: CtEntry) -> None:
        await self._set(e, timeout=NF_CT_DAY)
