"""A burst of established connections, on each available switch: the daemon
decides them in batches and marks their conntrack entries together, and
every one must come out whole: two switch entries, the offload marks in the
kernel, and a hand-back when its conntrack entry goes."""

import asyncio
import re
import socket

import pytest

from integration import ROOT, net_per_switch, switch_flow_entries, wait_for
from p4flowtable import ctnetlink as ctnl
from p4flowtable.conntrack import IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY, NF_CT_DAY, TCP_ESTABLISHED
from p4flowtable.model import FlowTuple, ipv4
from p4flowtable.netns import netlink_socket
from p4flowtable.p4info import P4Schema
from p4ft_topo import LAN, ROUTER_NS, WAN, sh

pytestmark = pytest.mark.integration
N = 600          # connections in the burst; over one decision batch (512)
GONE = 50        # of them deleted from conntrack afterwards


net = net_per_switch()


def tuples(i: int) -> tuple[FlowTuple, FlowTuple]:
    """Connection i: h1 port 20000+i to h2:80, masqueraded to the same port."""
    h1, h2, router = ipv4(LAN["host"].split("/")[0]), ipv4(WAN["host"].split("/")[0]), ipv4(WAN["router"])
    return FlowTuple(h1, h2, 6, 20000 + i, 80), FlowTuple(h2, router, 6, 80, 20000 + i)


async def conntrack(msg_type: int, payloads: list[bytes], flags: int = 0) -> list:
    sock = ctnl.CtnlSocket(netlink_socket(ROUTER_NS, 12))   # NETLINK_NETFILTER
    try:
        return await sock.requests([(msg_type, socket.AF_INET, p, flags) for p in payloads])
    finally:
        sock.close()


def offloaded_ports() -> dict[int, int]:
    """Source port -> conntrack timeout of the burst's entries, from the
    conntrack tool (an independent reader of the kernel's table)."""
    out = sh("conntrack", "-L", "-p", "tcp", "--dport", "80", check=False)
    got = {}
    for line in out.splitlines():
        m = re.search(r"tcp\s+6\s+(\d+) .*?sport=(\d+) dport=80", line)
        if m and 20000 <= int(m.group(2)) < 20000 + N:
            got[int(m.group(2))] = int(m.group(1))
    return got


def test_a_burst_of_established_connections_is_offloaded_whole(net):
    # both hosts' neighbours known to the router, as after any traffic
    for side, host in ((LAN, net.h1), (WAN, net.h2)):
        sh("ip", "neigh", "replace", side["host"].split("/")[0], "lladdr", host.defaultIntf().MAC(),
           "dev", side["rep"], "nud", "permanent")
    status = IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED
    # each entry carries flowtable ft's mark, as the ruleset's offload statement sets it
    mark = 1 << next(t["ct_label"] for t in net.api("flowtable_list") if t["name"] == "ft")
    made = asyncio.run(conntrack(ctnl.IPCTNL_MSG_CT_NEW,
                                 [ctnl.create_payload(*tuples(i), status, 600, TCP_ESTABLISHED, mark)
                                  for i in range(N)],
                                 ctnl.NLM_F_CREATE | ctnl.NLM_F_EXCL))
    assert [r for r in made if isinstance(r, Exception)] == []

    # every connection: two entries in the switch, with the masquerade rewrite
    entries = wait_for(lambda: (lambda e: e if len(e) == 2 * N else None)(switch_flow_entries(net)), 60,
                       f"{2 * N} flow entries in the switch")
    assert len({tuple(m.exact.value for m in e.match) for e in entries}) == 2 * N
    # and the offload marks in conntrack: the day-long timeout while the switch carries it
    timeouts = wait_for(lambda: (lambda t: t if len(t) == N and min(t.values()) > NF_CT_DAY - 600 else None)(
        offloaded_ports()), 30, "offload marks on every conntrack entry")
    assert set(timeouts) == set(range(20000, 20000 + N))
    counters = net.api("counters")
    assert counters.get("offloaded", 0) >= N and not counters.get("offload_failed")

    # conntrack entries that go are handed back: their entries leave the switch
    asyncio.run(conntrack(ctnl.IPCTNL_MSG_CT_DELETE,
                          [ctnl.tuple_attr(ctnl.CTA_TUPLE_ORIG, tuples(i)[0]) for i in range(GONE)]))
    wait_for(lambda: len(switch_flow_entries(net)) == 2 * (N - GONE), 30,
             f"{2 * (N - GONE)} flow entries after {GONE} conntrack deletions")
    table = P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb").table("flow_table_v4")
    ports = {table.field("src_port").id, table.field("dst_port").id}
    left = {int.from_bytes(m.exact.value, "big") for e in switch_flow_entries(net) for m in e.match
            if m.field_id in ports}
    assert not left & set(range(20000, 20000 + GONE)) and set(range(20000 + GONE, 20000 + N)) <= left
