"""The fast path forwards where the kernel forwards, and follows it when that changes.

Two uplinks: h2 on port 2 (wan0) and h3 on port 3 (wan1) both answer for the
"internet" server 203.0.113.10 (and 2001:db8:ff::10). The main table routes it
through h2; table 100, chosen by firewall mark, through h3, as multi-WAN
routers do. Each test asserts what the hosts see on the wire, and what the
kernel itself would do (`ip route get` with the packet's full key).
"""

import contextlib
import json
import os
import signal
import sys
import time

import pytest

from integration import (ROOT, flow_for, host_tool, net_per_switch, read_json, stats, switch_flow_entries,
                         switch_nexthops, wait_for)
from p4ft_topo import LAN, WAN, WAN2, sh

pytestmark = pytest.mark.integration

SERVER, SERVER6 = "203.0.113.10", "2001:db8:ff::10"
RULESET = f"""flush ruleset
table inet p4ft {{
    flowtable ft {{
        hook ingress priority filter; devices = {{ {LAN['rep']}, {WAN['rep']}, {WAN2['rep']} }};
    }}
    chain prerouting {{
        type filter hook prerouting priority mangle; policy accept;
        meta mark set ct mark
        udp dport 7000 meta mark set 0x100
        udp dport 7001 ct mark set 0x100 meta mark set ct mark
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        counter
        meta l4proto {{ tcp, udp }} flow add @ft
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname {{ "{WAN['rep']}", "{WAN2['rep']}" }} masquerade
    }}
}}
"""
ECHO_PORTS = (7000, 7001, 7002, 7003, 7004, 7005)

net = net_per_switch(ruleset=RULESET, sides=(LAN, WAN, WAN2), poll_interval=0.25)


@pytest.fixture(scope="module")
def uplinks(net, tmp_path_factory):
    """The server on both uplinks, echo servers on each, the routes and the mark's rule."""
    d = tmp_path_factory.mktemp("uplinks")
    procs = []
    for host, side in ((net.h2, WAN), (net.h3, WAN2)):
        host.cmd(f"ip addr add {SERVER}/32 dev lo")
        host.cmd(f"ip -6 addr add {SERVER6}/128 dev lo")
        # each answers from the address it was asked at: the server's, or the host's own
        for port in ECHO_PORTS:
            own4, own6 = side["host"].split("/")[0], side["host6"].split("/")[0]
            for tag, bind in (("srv", SERVER), ("srv6", SERVER6), ("own", own4), ("own6", own6)):
                out = str(d / f"{host.name}-{port}-{tag}.json")
                procs.append(host_tool(host, "udp-echo", "--port", str(port), "--bind", bind, "--out", out))
                read_json(out + ".ready")
    sh("ip", "route", "add", "203.0.113.0/24", "via", "192.0.2.2", "dev", WAN["rep"])
    sh("ip", "-6", "route", "add", "2001:db8:ff::/64", "via", "2001:db8:2::2", "dev", WAN["rep"])
    sh("ip", "route", "add", "203.0.113.0/24", "via", "198.51.100.2", "dev", WAN2["rep"], "table", "100")
    sh("ip", "-6", "route", "add", "2001:db8:ff::/64", "via", "2001:db8:4::2", "dev", WAN2["rep"], "table", "100")
    for fam in ("-4", "-6"):
        sh("ip", fam, "rule", "add", "fwmark", "0x100", "lookup", "100", "pref", "100")
    yield d
    for p in procs:
        p.terminate()
        p.wait(5)


def received(uplinks, host: str, port: int, peer_port: int | None = None) -> int:
    """Datagrams the echo servers on host:port received (from peer_port)."""
    n = 0
    for path in uplinks.glob(f"{host}-{port}-*.json"):     # each written whole (os.replace)
        seen = json.loads(path.read_text())["received"]
        n += sum(1 for _, p, _ in seen if peer_port is None or p == peer_port)
    return n


def ping(net, tmp_path, host: str, port: int, sport: int, count: int, interval: float = 0.01,
         wait: float = 0.5, name: str = "ping"):
    """h1's UDP pings, in the background: (process, report path)."""
    out = str(tmp_path / f"{name}-{sport}.json")
    p = host_tool(net.h1, "udp-ping", "--host", host, "--port", str(port), "--sport", str(sport),
                  "--count", str(count), "--interval", str(interval), "--wait", str(wait), "--out", out)
    return p, out


def done(p, out) -> dict:
    res = read_json(out, timeout=60)
    p.wait(10)
    return res


def offloaded(net, sport: int, timeout: float = 5) -> dict:
    return wait_for(lambda: (f := flow_for(net, "udp", sport=sport)) and f["offload"] and f,
                    timeout, f"the flow from port {sport} offloaded")


def kernel_uplink(src: str, dst: str, sport: int, dport: int, mark: int = 0) -> str:
    """The device the kernel routes this packet out of (ip route get with its full key)."""
    out = sh("ip", "route", "get", dst, "from", src, "iif", LAN["rep"], "mark", str(mark), "ipproto", "udp",
             "sport", str(sport), "dport", str(dport))
    return out.split(" dev ")[1].split()[0]


@contextlib.contextmanager
def router(*setup: tuple[str, ...], undo: tuple[tuple[str, ...], ...] = ()):
    """Commands in the router namespace for the block, undone after it."""
    for argv in setup:
        sh(*argv)
    try:
        yield
    finally:
        for argv in undo:
            sh(*argv, check=False)


@pytest.mark.parametrize("dport,how", [(7000, "mark set by a rule"), (7001, "ct mark restored into the mark")])
def test_two_uplinks_by_fwmark_every_packet_leaves_where_the_kernel_sends_it(net, uplinks, tmp_path, dport, how):
    sport = 7100 + dport - 7000
    before2, before3 = received(uplinks, "h2", dport), received(uplinks, "h3", dport)
    p, out = ping(net, tmp_path, SERVER, dport, sport, count=100)
    res = done(p, out)
    f = flow_for(net, "udp", sport=sport)
    assert res["replies"] == 100, res["errors"][:3]
    assert f["offload"], f"not offloaded ({how})"
    assert f["packets"][0] >= 50, f"the switch forwarded {f['packets'][0]} of 100 ({how})"
    assert f["egress"][0]["port"] == WAN2["port"]
    assert received(uplinks, "h3", dport) - before3 == 100        # every packet on the uplink the kernel chose
    assert received(uplinks, "h2", dport) - before2 == 0          # none on the other
    # a rule-set mark is not in conntrack: only the frames show the kernel's choice
    assert f["egress"][0]["followed"] is (dport == 7001)


def test_source_rule_sends_the_flow_out_of_the_second_uplink(net, uplinks, tmp_path):
    with router(("ip", "rule", "add", "from", "10.0.1.1", "lookup", "100", "pref", "50"),
                undo=(("ip", "rule", "del", "from", "10.0.1.1", "lookup", "100", "pref", "50"),)):
        assert kernel_uplink("10.0.1.1", SERVER, 7110, 7002) == WAN2["rep"]
        before2, before3 = received(uplinks, "h2", 7002), received(uplinks, "h3", 7002)
        res = done(*ping(net, tmp_path, SERVER, 7002, 7110, count=60))
        f = flow_for(net, "udp", sport=7110)
        assert res["replies"] == 60 and f["offload"] and f["packets"][0] >= 30
        assert f["egress"][0] == {**f["egress"][0], "port": WAN2["port"], "followed": True}
        assert (received(uplinks, "h3", 7002) - before3, received(uplinks, "h2", 7002) - before2) == (60, 0)


def test_ecmp_each_flow_stays_on_the_path_the_kernel_hashed_it_to(net, uplinks, tmp_path):
    sports = range(7120, 7128)
    with router(("sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"),
                ("ip", "route", "replace", "203.0.113.0/24", "nexthop", "via", "192.0.2.2", "dev", WAN["rep"],
                 "nexthop", "via", "198.51.100.2", "dev", WAN2["rep"]),
                undo=(("ip", "route", "replace", "203.0.113.0/24", "via", "192.0.2.2", "dev", WAN["rep"]),
                      ("sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=0"))):
        want = {s: kernel_uplink("10.0.1.1", SERVER, s, 7002) for s in sports}
        before = {h: {s: received(uplinks, h, 7002, s) for s in sports} for h in ("h2", "h3")}
        pings = [ping(net, tmp_path, SERVER, 7002, s, count=40, interval=0.02) for s in sports]
        results = [done(*p) for p in pings]
        for s, res in zip(sports, results):
            f = flow_for(net, "udp", sport=s)
            at = {h: received(uplinks, h, 7002, s) - before[h][s] for h in ("h2", "h3")}
            chosen = "h2" if want[s] == WAN["rep"] else "h3"
            assert res["replies"] == 40 and f["offload"] and f["packets"][0] >= 10, (s, res, f)
            # masquerade keeps the source port here: each flow is counted apart
            assert at == {chosen: 40, ({"h2", "h3"} - {chosen}).pop(): 0}, (s, want[s], at)
            assert f["egress"][0]["port"] == (WAN if chosen == "h2" else WAN2)["port"]
        assert len(set(want.values())) == 2, f"the hash put all {len(want)} flows on one path: {want}"


def max_gap(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


@pytest.mark.parametrize("family", [4, 6])
def test_new_neighbour_mac_under_a_talking_flow_is_one_next_hop_write(net, uplinks, tmp_path, family):
    dst, sport = ("192.0.2.2", 7130) if family == 4 else ("2001:db8:2::2", 7131)
    old_mac, new_mac = net.h2.defaultIntf().MAC(), "00:00:00:00:aa:02"
    p, out = ping(net, tmp_path, dst, 7003, sport, count=150, interval=0.02, wait=0.3)
    f = offloaded(net, sport)
    writes = stats(net).get("reroute.nexthop_writes", 0)
    nh = f["egress"][0]["nexthop"]
    time.sleep(0.5)
    changed_at = time.monotonic()
    # a replaced gateway: the new MAC, and the router learns it
    net.h2.cmd(f"ip link set h2-eth0 address {new_mac}")
    sh("ip", f"-{family}", "neigh", "replace", dst, "lladdr", new_mac, "dev", WAN["rep"], "nud", "reachable")
    try:
        res = done(p, out)
        after = flow_for(net, "udp", sport=sport)
        assert res["replies"] >= 145, (res["replies"], res["errors"][:3])
        assert max_gap(res["reply_times"]) <= 0.5, f"a gap of {max_gap(res['reply_times']):.2f}s"
        assert stats(net)["reroute.nexthop_writes"] == writes + 1
        # never handed back: offloaded since before the change
        assert after["offloaded_s"] >= time.monotonic() - changed_at, after["offloaded_s"]
        assert after["offload"] and after["egress"][0]["nexthop"] == nh and after["egress"][0]["mac"] == new_mac
        assert switch_nexthops(net)[nh] == (WAN["port"], new_mac)        # the new MAC on the wire
        assert after["packets"][0] > f["packets"][0] + 50                 # and the switch still carries it
    finally:
        net.h2.cmd(f"ip link set h2-eth0 address {old_mac}")
        sh("ip", f"-{family}", "neigh", "replace", dst, "lladdr", old_mac, "dev", WAN["rep"], "nud", "reachable")


@pytest.mark.parametrize("family,kind", [(4, "blackhole"), (4, "unreachable"), (6, "blackhole"), (6, "prohibit")])
def test_null_route_under_an_offloaded_flow_stops_it_and_removing_it_brings_it_back(
        net, uplinks, tmp_path, family, kind):
    dst = "192.0.2.2" if family == 4 else "2001:db8:2::2"
    sport = 7140 + (family == 6) * 4 + ("blackhole", "unreachable", "prohibit").index(kind)
    prefix = f"{dst}/{32 if family == 4 else 128}"
    p, out = ping(net, tmp_path, dst, 7004, sport, count=250, interval=0.02, wait=0.2)
    offloaded(net, sport)
    port = sport
    sh("ip", f"-{family}", "route", "add", kind, prefix)
    try:
        time.sleep(0.5)
        n = received(uplinks, "h2", 7004, port)
        time.sleep(1.0)
        assert received(uplinks, "h2", 7004, port) == n, "the destination still receives the flow"
        assert not flow_for(net, "udp", sport=sport)["offload"]
    finally:
        sh("ip", f"-{family}", "route", "del", kind, prefix)
    n = received(uplinks, "h2", 7004, port)
    wait_for(lambda: received(uplinks, "h2", 7004, port) > n + 5, 5, "the flow to resume")
    f = offloaded(net, sport)
    assert f["egress"][0]["port"] == WAN["port"]
    done(p, out)


@pytest.mark.parametrize("family", [4, 6])
def test_route_to_another_next_hop_moves_only_the_flows_it_covers(net, uplinks, tmp_path, family):
    if family == 4:
        server, other, gw2, prefix, via = SERVER, "192.0.2.2", "192.0.2.3", "203.0.113.0/24", "192.0.2.2"
    else:
        server, other, gw2, prefix, via = SERVER6, "2001:db8:2::2", "2001:db8:2::3", "2001:db8:ff::/64", "2001:db8:2::2"
    s_moved, s_kept = 7150 + 2 * (family == 6), 7151 + 2 * (family == 6)
    net.h2.cmd(f"ip {'-6 ' if family == 6 else ''}addr add {gw2}/{24 if family == 4 else 64} dev h2-eth0"
               + (" nodad" if family == 6 else ""))
    # the second gateway's neighbour is known before the route names it
    sh("ip", f"-{family}", "neigh", "replace", gw2, "lladdr", net.h2.defaultIntf().MAC(), "dev", WAN["rep"],
       "nud", "reachable")
    pm = ping(net, tmp_path, server, 7005, s_moved, count=150, interval=0.02, wait=0.3, name="moved")
    pk = ping(net, tmp_path, other, 7005, s_kept, count=150, interval=0.02, wait=0.3, name="kept")
    fm, fk = offloaded(net, s_moved), offloaded(net, s_kept)
    moved = stats(net).get("reroute.moved", 0)
    try:
        changed_at = time.monotonic()
        sh("ip", f"-{family}", "route", "replace", prefix, "via", gw2, "dev", WAN["rep"])
        got = wait_for(lambda: (f := flow_for(net, "udp", sport=s_moved)) and f["egress"][0]["neighbour"] == gw2
                       and f, 3, "the flow to the server moved to the second gateway")
        rm, rk = done(*pm), done(*pk)
        assert got["egress"][0]["nexthop"] != fm["egress"][0]["nexthop"] and got["offload"]
        assert flow_for(net, "udp", sport=s_kept)["egress"] == fk["egress"]      # the other flow untouched
        assert stats(net)["reroute.moved"] == moved + 1
        now = time.monotonic()
        for sport in (s_moved, s_kept):     # neither handed back: offloaded since before the change
            assert flow_for(net, "udp", sport=sport)["offloaded_s"] >= now - changed_at
        assert rm["replies"] >= 145 and rk["replies"] >= 145, (rm["replies"], rk["replies"])
        assert max_gap(rm["reply_times"]) <= 0.5
    finally:
        sh("ip", f"-{family}", "route", "replace", prefix, "via", via, "dev", WAN["rep"])
        net.h2.cmd(f"ip {'-6 ' if family == 6 else ''}addr del {gw2}/{24 if family == 4 else 64} dev h2-eth0")
        sh("ip", f"-{family}", "neigh", "del", gw2, "dev", WAN["rep"], check=False)


def test_flows_to_one_neighbour_share_its_next_hop(net, uplinks, tmp_path):
    """Flows to the same neighbour name one next hop, and the switch holds
    exactly the next hops the daemon counts."""
    res = [done(*ping(net, tmp_path, "192.0.2.2", 7003, s, count=20)) for s in (7160, 7161)]
    assert all(r["replies"] == 20 for r in res)
    a, b = offloaded(net, 7160), offloaded(net, 7161)
    assert a["egress"][0]["nexthop"] == b["egress"][0]["nexthop"]
    held = switch_nexthops(net)
    assert len(held) == stats(net)["nexthops"]
    assert all(e["nexthop"] in held for e in a["egress"] + b["egress"])


def test_rule_added_under_an_offloaded_flow_moves_it_to_the_other_uplink(net, uplinks, tmp_path):
    """The flow's path moves to another port: handed back, the kernel sends it
    out of the second uplink, and it is offloaded again there."""
    sport = 7170
    p, out = ping(net, tmp_path, SERVER, 7002, sport, count=200, interval=0.02, wait=0.3)
    assert offloaded(net, sport)["egress"][0]["port"] == WAN["port"]
    with router(("ip", "rule", "add", "from", "10.0.1.1", "lookup", "100", "pref", "50"),
                undo=(("ip", "rule", "del", "from", "10.0.1.1", "lookup", "100", "pref", "50"),)):
        time.sleep(0.5)
        at_h2 = received(uplinks, "h2", 7002, sport)
        f = wait_for(lambda: (f := flow_for(net, "udp", sport=sport)) and f["offload"]
                     and f["egress"][0]["port"] == WAN2["port"] and f, 5, "the flow offloaded on the second uplink")
        res = done(p, out)
        assert received(uplinks, "h2", 7002, sport) == at_h2, "packets still left by the first uplink"
        assert received(uplinks, "h3", 7002) > 0 and f["egress"][0]["followed"]
        assert res["replies"] >= 190, res["replies"]


def test_deleted_neighbour_hands_its_flows_back_and_the_kernel_resolves_it_again(net, uplinks, tmp_path):
    sport = 7180
    p, out = ping(net, tmp_path, "192.0.2.2", 7003, sport, count=150, interval=0.02, wait=0.3)
    offloaded(net, sport)
    torn = stats(net).get("teardown.route_changed", 0)
    sh("ip", "neigh", "del", "192.0.2.2", "dev", WAN["rep"])
    wait_for(lambda: stats(net).get("teardown.route_changed", 0) > torn, 3, "the flow handed back")
    f = wait_for(lambda: (f := flow_for(net, "udp", sport=sport)) and f["offload"] and f, 5,
                 "the flow offloaded again once the kernel resolved its neighbour")
    res = done(p, out)
    assert f["egress"][0]["mac"] == net.h2.defaultIntf().MAC()
    assert res["replies"] >= 140 and max_gap(res["reply_times"]) <= 1.0, (res["replies"], res["reply_times"][-3:])


def test_next_hop_adopted_after_a_restart_follows_its_neighbours_new_mac(net, uplinks, tmp_path):
    """The daemon killed and started again: the representors' carrier dropped
    meanwhile and the kernel flushed their neighbours, so the switch's next hop
    is adopted by its MAC alone. Once the kernel resolves the neighbour again,
    a new MAC of it still reaches the flow adopted: one next-hop write, as
    before a restart, not a flow sent on to the old MAC."""
    dst, sport = "192.0.2.2", 7190
    old_mac, new_mac = net.h2.defaultIntf().MAC(), "00:00:00:00:aa:02"
    p, out = ping(net, tmp_path, dst, 7003, sport, count=3000, interval=0.02, wait=0.3)
    try:
        offloaded(net, sport)
        os.kill(net.daemon.pid, signal.SIGKILL)
        net.daemon.wait(10)
        net.start_daemon()
        # adopted, or rewritten where the old daemon held a second next hop to
        # the same MAC (h2's IPv6 neighbour, of the tests above): merged
        wait_for(lambda: (s := stats(net)).get("reconcile.adopted", 0) + s.get("reconcile.written", 0) > 0, 30,
                 "the new daemon's reconcile")
        f = flow_for(net, "udp", sport=sport)
        assert f["offload"] and f["egress"][0]["neighbour"] == "", \
            f"not adopted, or with its neighbour known: {f}; the kernel's: " \
            f"{sh('ip', 'neigh', 'show', 'dev', WAN['rep'], check=False)!r}"
        nh = f["egress"][0]["nexthop"]
        # the kernel resolves it again, for a datagram of its own
        sh(sys.executable, "-c", f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', "
                                 f"('{dst}', 9))")
        wait_for(lambda: "REACHABLE" in sh("ip", "neigh", "show", dst, "dev", WAN["rep"]), 5,
                 "the kernel to resolve the neighbour")
        writes = stats(net).get("reroute.nexthop_writes", 0)
        changed_at = time.monotonic()
        net.h2.cmd(f"ip link set h2-eth0 address {new_mac}")
        sh("ip", "neigh", "replace", dst, "lladdr", new_mac, "dev", WAN["rep"], "nud", "reachable")
        wait_for(lambda: switch_nexthops(net).get(nh) == (WAN["port"], new_mac), 5, "the adopted next hop rewritten")
        n = received(uplinks, "h2", 7003, sport)
        wait_for(lambda: received(uplinks, "h2", 7003, sport) > n + 20, 5, "the flow to reach the new MAC")
        after = flow_for(net, "udp", sport=sport)
        assert after["offload"] and after["egress"][0]["nexthop"] == nh and after["egress"][0]["mac"] == new_mac
        assert stats(net)["reroute.nexthop_writes"] == writes + 1
        # never handed back: offloaded since before the change
        assert after["offloaded_s"] >= time.monotonic() - changed_at, after["offloaded_s"]
    finally:
        p.kill()
        p.wait(10)
        net.h2.cmd(f"ip link set h2-eth0 address {old_mac}")
        sh("ip", "neigh", "replace", dst, "lladdr", old_mac, "dev", WAN["rep"], "nud", "reachable")


def naming(net, nexthops) -> list:
    """The switch's flow entries that name one of these next hops."""
    from p4flowtable.ip import ReadBack
    from p4flowtable.p4info import P4Schema
    back = ReadBack(P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb"))
    return [e for e in switch_flow_entries(net) if (h := back.decode(e)) is not None and h.nexthop in nexthops]


def test_a_neighbour_learnt_has_its_next_hop_before_its_first_flow_until_it_goes(net, uplinks, tmp_path):
    """The switch's next hops follow the kernel's neighbour table for its
    ports: a neighbour the kernel learns gets its next hop at once, so the
    first flow to it is its two entries alone (no next-hop write); the next
    hop stays after the flow, and goes with the neighbour."""
    addr, sport = "192.0.2.60", 7200
    mac = net.h2.defaultIntf().MAC()
    out = str(tmp_path / "echo-60.json")
    net.h2.cmd(f"ip addr add {addr}/24 dev h2-eth0")
    echo = host_tool(net.h2, "udp-echo", "--port", "7003", "--bind", addr, "--out", out)
    try:
        read_json(out + ".ready")
        before = switch_nexthops(net)
        sh("ip", "neigh", "replace", addr, "lladdr", mac, "dev", WAN["rep"], "nud", "reachable")
        new = wait_for(lambda: (n := {i: v for i, v in switch_nexthops(net).items() if i not in before}) and n, 5,
                       "the neighbour's next hop on the switch, before any flow")
        assert list(new.values()) == [(WAN["port"], mac)]
        # and h1's, the reply's neighbour (the kernel resolves it for a datagram of its own): run
        # alone, this test is the first to send to h1
        h1, h1_mac = LAN["host"].split("/")[0], net.h1.defaultIntf().MAC()
        sh(sys.executable, "-c", f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', "
                                 f"('{h1}', 9))")
        wait_for(lambda: (LAN["port"], h1_mac) in switch_nexthops(net).values(), 5, "h1's next hop on the switch")
        writes = stats(net)["nexthop_writes"]
        res = done(*ping(net, tmp_path, addr, 7003, sport, count=20))
        assert res["replies"] == 20
        f = offloaded(net, sport)
        assert f["egress"][0]["nexthop"] in new and f["egress"][0]["neighbour"] == addr
        assert stats(net)["nexthop_writes"] == writes, "the first flow to it wrote a next hop"
        assert naming(net, new)
        sh("conntrack", "-D", "-p", "udp", "--sport", str(sport))     # the connection gone: its flow removed
        wait_for(lambda: not naming(net, new), 5, "the flow's entries removed from the switch")
        assert set(new) <= set(switch_nexthops(net)), "the next hop went with the flow, not with the neighbour"
        sh("ip", "neigh", "del", addr, "dev", WAN["rep"])
        wait_for(lambda: not set(new) & set(switch_nexthops(net)), 5, "the next hop deleted with its neighbour")
    finally:
        echo.terminate()
        echo.wait(5)
        net.h2.cmd(f"ip addr del {addr}/24 dev h2-eth0")
        sh("ip", "neigh", "del", addr, "dev", WAN["rep"], check=False)
