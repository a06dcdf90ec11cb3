"""What changed in the switch while no daemon ran is repaired by the next
one's reconcile, on each available switch, whichever way it reads the
switch: itself, or by its second process set going before its conntrack
dump (--read-apart-from 0), which also pairs the entries and checks them
(entryread.Pairing). 20 talking TCP connections are offloaded; the daemon
stops and leaves them (--keep-flows); a second client, primary meanwhile,
changes one entry's checksum delta, deletes one direction of another
connection and adds an entry of no connection; a daemon started again
adopts the rest as they are, writes the changed entry back, deletes the
stray, and the switch ends up holding every connection's entries as they
were written (next hops compared by the port and MAC they name)."""

import asyncio
import itertools
import re
from pathlib import Path

import pytest
from p4.v1 import p4runtime_pb2 as p4r

from integration import (ROOT, host_tool, net_per_switch, read_json, stats, switch_flow_entries,
                         switch_nexthops, wait_for)
from p4ft_topo import LAN, WAN, make_ruleset, p4ft, sh
from test_arbitration import Client
from test_offload_burst import conntrack
from p4flowtable import ctnetlink as ctnl
from p4flowtable.conntrack import IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY
from p4flowtable.model import FlowTuple, ipv4
from p4flowtable.p4info import P4Schema

pytestmark = pytest.mark.integration
N = 20
PORT = 7300

net = net_per_switch(ruleset=make_ruleset("meta l4proto tcp flow add @ft"), poll_interval=0.25)


@pytest.fixture(scope="module")
def talking(net, tmp_path_factory):
    d = tmp_path_factory.mktemp("repairs")
    server = host_tool(net.h2, "echo", "--port", str(PORT), "--out", str(d / "echo.json"))
    read_json(str(d / "echo.json.ready"))
    client = host_tool(net.h1, "chatter", "--proto", "tcp", "--host", "192.0.2.2", "--port", str(PORT),
                       "--count", str(N), "--interval", "1", "--duration", "300", "--out", str(d / "c.json"))
    read_json(str(d / "c.json.up"), timeout=60)
    wait_for(lambda: net.api("stats")["flows_offloaded_now"] >= N, 60, f"{N} connections offloaded", interval=0.25)
    yield
    client.kill()
    server.kill()


ELECTION_IDS = itertools.count(10**6, 10**6)    # each above the last, and above what the daemon claims after


def write_as_primary(net, updates: list[p4r.Update]) -> None:
    """Writes as a controller of its own (test_arbitration's), primary while
    no daemon is connected; its stream closes after."""
    c = Client(f"127.0.0.1:{net.grpc_port}")
    try:
        c.arbitrate(next(ELECTION_IDS))
        assert c.heard(10)[0] == "OK", "not primary"
        assert c.write(updates) == "OK"
    finally:
        c.close()


def reconcile_line(net) -> list[str]:
    """The daemon's log line of its last reconcile."""
    return [line for line in Path(net.daemon_log).read_text().splitlines() if "reconciled" in line][-1:]


def by_match(net, nexthop_param: int) -> dict:
    """The switch's flow entries: by match, each's action with its next hop
    as the port and MAC it names (a next hop's id is the daemon's choice)."""
    nexthops = switch_nexthops(net)
    out = {}
    for e in switch_flow_entries(net):
        a = e.action.action
        params = tuple((p.param_id, p.value.lstrip(b"\0")) for p in a.params if p.param_id != nexthop_param)
        nh = next(int.from_bytes(p.value, "big") for p in a.params if p.param_id == nexthop_param)
        out[tuple((m.field_id, m.exact.value.lstrip(b"\0")) for m in e.match)] = (a.action_id, params,
                                                                                    nexthops.get(nh))
    return out


@pytest.mark.parametrize("apart", [False, True], ids=["daemon-reads", "read-apart"])
def test_a_restart_repairs_what_changed_while_no_daemon_ran(net, talking, apart):
    schema = P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")
    table = schema.table("flow_table_v4")
    sport, dport = table.field("src_port").id, table.field("dst_port").id
    delta = schema.action("forward_tcp_v4").param("l4_csum_delta").id
    nexthop = schema.action("forward_tcp_v4").param("nexthop_id").id
    assert "stay in the switch" in p4ft("stop", "--keep-flows", socket_path=net.socket)
    net.daemon.wait(30)
    before = switch_flow_entries(net)
    assert len(before) >= 2 * N
    want = by_match(net, nexthop)

    def port(e, fid):
        return next(int.from_bytes(m.exact.value, "big") for m in e.match if m.field_id == fid)
    # the original directions (to the echo server's port): one per connection
    orig = [e for e in before if port(e, dport) == PORT]
    changed, deleted = orig[0], orig[1]
    assert port(changed, sport) != port(deleted, sport)
    bad = p4r.TableEntry()
    bad.CopyFrom(changed)
    p = next(p for p in bad.action.action.params if p.param_id == delta)
    p.value = ((int.from_bytes(p.value, "big") + 1) % 0xFFFF or 1).to_bytes(2, "big")
    stray = p4r.TableEntry()
    stray.CopyFrom(orig[2])
    next(m for m in stray.match if m.field_id == sport).exact.value = (1).to_bytes(2, "big")   # no connection's
    write_as_primary(net, [p4r.Update(type=p4r.Update.MODIFY, entity=p4r.Entity(table_entry=bad)),
                           p4r.Update(type=p4r.Update.DELETE, entity=p4r.Entity(table_entry=deleted)),
                           p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=stray))])
    assert len(switch_flow_entries(net)) == len(before)

    net.start_daemon(extra_args=["--read-apart-from", "0"] if apart else [])
    s = wait_for(lambda: (s := stats(net)).get("reconcile.orphans_deleted") and s, 30, "the reconcile")
    adopted, written = s.get("reconcile.adopted", 0), s.get("reconcile.written", 0)
    # written: the changed connection, and any whose next hop the switch held
    # twice (two ids for one neighbour: one kept); and the halved one, unless
    # it was declined (its next hops not known yet, as after a restart: then
    # its other entry is deleted, and it is offloaded again once its packets
    # show the kernel its neighbours)
    assert written >= 1 and adopted + written in (N - 1, N), (s, reconcile_line(net))
    assert s["reconcile.orphans_deleted"] == 1 + N - adopted - written, (s, reconcile_line(net))
    assert bool(s.get("reconcile.read_apart")) == apart and not s.get("reconcile.reader_failed"), s
    seen = [{}]
    try:
        wait_for(lambda: seen.append(by_match(net, nexthop)) or seen[-1] == want, 30,
                 "the switch to hold every connection's entries as they were written, and nothing else")
    except AssertionError:
        after = seen[-1]
        diff = {k: (want.get(k), after.get(k)) for k in want.keys() | after.keys() if want.get(k) != after.get(k)}
        raise AssertionError(f"entries not as written (wanted, held): {diff}") from None
    after = seen[-1]
    rows = [r for r in net.api("flow_list", {"refresh": False}) if r["offload"]]
    assert len(after) == 2 * len(rows)


def udp_timeouts(*sports: int) -> dict[int, int]:
    """The conntrack timeouts of the UDP entries with these source ports,
    as the conntrack tool (an independent reader) shows them."""
    got = {}
    for line in sh("conntrack", "-L", "-p", "udp", check=False).splitlines():
        m = re.search(r"udp\s+17\s+(\d+) .*?sport=(\d+) ", line)
        if m and int(m.group(2)) in sports:
            got[int(m.group(2))] = int(m.group(1))
    return got


def test_a_lease_no_flow_carries_is_released(net, talking):
    """A kernel entry on an offload lease (a day, above its state's timeout)
    that no flow carries when a daemon starts, as a daemon before it left
    one whose connection the ruleset stopped marking, gets its state's
    timeout back, as at hand-back; an entry on its state's timeout keeps
    what it has."""
    assert "stay in the switch" in p4ft("stop", "--keep-flows", socket_path=net.socket)
    net.daemon.wait(30)
    h1, h2, router = (ipv4(a) for a in (LAN["host"].split("/")[0], WAN["host"].split("/")[0], WAN["router"]))
    status = IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED
    made = asyncio.run(conntrack(ctnl.IPCTNL_MSG_CT_NEW, [
        ctnl.create_payload(FlowTuple(h1, h2, 17, sport, 7400), FlowTuple(h2, router, 17, 7400, sport), status, t)
        for sport, t in ((7401, 86400), (7402, 60))], ctnl.NLM_F_CREATE | ctnl.NLM_F_EXCL))
    assert not [r for r in made if isinstance(r, Exception)], made
    assert udp_timeouts(7401, 7402)[7401] > 86000
    stream = int(sh("sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout_stream"))
    net.start_daemon()          # its log is its own
    wait_for(lambda: reconcile_line(net), 30, "the next daemon's reconcile")
    assert "1 kernel lease(s) released" in reconcile_line(net)[0], reconcile_line(net)
    got = udp_timeouts(7401, 7402)
    assert got[7401] <= stream, (got, stream)
    assert 0 < got[7402] <= 60, got
    sh("conntrack", "-D", "-p", "udp", "--dport", "7400", check=False)
