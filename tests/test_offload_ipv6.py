"""IPv6 end to end, on each available switch: an inet ruleset (one table, one
flowtable for both families) with masquerade, so IPv6 flows are NAT66'd.

Issue 4's points: a bulk IPv6 TCP transfer offloaded with its payload intact,
under 1% of its packets in the router's forward chain and the hop limit
decremented once; IPv4 and IPv6 flows in the same flowtable; an oversize
IPv6 packet answered by the slow path with ICMPv6 Packet Too Big; a NAT66
fast-path packet byte-identical to the slow-path one."""

import time

import pytest
from scapy.all import UDP, Ether, rdpcap
from scapy.layers.inet6 import IPv6

from integration import (capture, flow_for, forward_packets, host_tool, net_per_switch, read_json, stats,
                         stop_capture, switch_flow_entries, wait_for)
from p4ft_topo import LAN, WAN, make_ruleset, sh

pytestmark = pytest.mark.integration
BULK = 12 * 1024 * 1024
TIMEOUT = 2.0
H2 = WAN["host6"].split("/")[0]
ROUTER_WAN6 = WAN["router6"]

RULESET = make_ruleset("meta l4proto { tcp, udp } flow add @ft", family="inet")


net = net_per_switch(ruleset=RULESET, timeouts={"ft/udp": TIMEOUT}, poll_interval=0.25)


@pytest.fixture(scope="module")
def bulk6(net, tmp_path_factory):
    d = tmp_path_factory.mktemp("bulk6")
    sink_out, src_out, pcap = str(d / "sink.json"), str(d / "src.json"), str(d / "h2.pcap")
    sink = host_tool(net.h2, "tcp-sink", "--ipv6", "--port", "5601", "--out", sink_out)
    read_json(sink_out + ".ready")
    cap = capture(net.h2, "h2-eth0", pcap, "ip6 and tcp port 5601")
    fwd_before = forward_packets(net)
    src = host_tool(net.h1, "tcp-source", "--host", H2, "--port", "5601", "--bytes", str(BULK),
                    "--pause", "1.5", "--hold", "2", "--out", src_out)
    conn = read_json(src_out + ".connected")
    sport = conn["local"][1]
    flow = wait_for(lambda: (f := flow_for(net, "tcp", sport=sport)) and f["offload"] and f,
                    5, "the IPv6 TCP flow to be offloaded")
    offloaded_after = time.time() - conn["connected_at"]
    sent = read_json(src_out + ".sent", timeout=120)
    counted = wait_for(lambda: (f := flow_for(net, "tcp", sport=sport)) and f["offload"]
                       and time.time() - sent["sent_at"] > 1.0 and f, 10, "switch counters after the data")
    fwd = forward_packets(net) - fwd_before
    done = read_json(src_out, timeout=60)
    received = read_json(sink_out, timeout=30)
    src.wait(30)
    sink.wait(30)
    stop_capture(cap)
    return dict(flow=flow, offloaded_after=offloaded_after, sent=sent, counted=counted, fwd=fwd,
                received=received, done=done, pcap=pcap, sport=sport)


def test_ipv6_bulk_is_offloaded_intact_and_the_kernel_sees_under_one_percent(bulk6):
    assert bulk6["flow"]["state"] == "ESTABLISHED" and bulk6["offloaded_after"] < 1.0
    assert bulk6["flow"]["orig"]["dst"] == H2
    assert bulk6["received"]["bytes"] == BULK
    assert bulk6["received"]["sha256"] == bulk6["sent"]["sha256"]
    peer_ip, peer_port = bulk6["received"]["peer"]
    assert peer_ip == ROUTER_WAN6 and peer_port == bulk6["flow"]["reply"]["dport"]   # NAT66 masquerade
    pk = bulk6["counted"]["packets"]
    total = pk[0] + pk[1] + bulk6["fwd"]
    assert pk[0] > 1000 and bulk6["fwd"] < 0.01 * total, (pk, bulk6["fwd"])


def test_ipv6_hop_limit_is_decremented_exactly_once(bulk6):
    # h1 sends with the default hop limit 64; every data packet h2 receives,
    # fast or slow path, arrives with 63
    pkts = [p for p in rdpcap(bulk6["pcap"]) if p.haslayer(IPv6) and p[IPv6].src == ROUTER_WAN6]
    assert len(pkts) > 1000
    assert {p[IPv6].hlim for p in pkts} == {63}


def test_one_inet_flowtable_carries_ipv4_and_ipv6_flows(net, tmp_path):
    sinks, srcs, sports = [], [], {}
    for fam, host, port in ((4, "192.0.2.2", 5611), (6, H2, 5612)):
        out = str(tmp_path / f"sink{fam}.json")
        args = ["tcp-sink", "--port", str(port), "--out", out] + (["--ipv6"] if fam == 6 else [])
        sinks.append(host_tool(net.h2, *args))
        read_json(out + ".ready")
        sout = str(tmp_path / f"src{fam}.json")
        # the data at once, then nothing: a decision declined while the next
        # hop was still being resolved is retried on the neighbour event
        srcs.append(host_tool(net.h1, "tcp-source", "--host", host, "--port", str(port), "--bytes", "1000",
                              "--hold", "20", "--out", sout))
        sports[fam] = read_json(sout + ".connected")["local"][1]
    both = wait_for(lambda: (a := flow_for(net, "tcp", sport=sports[4])) and a["offload"]
                    and (b := flow_for(net, "tcp", sport=sports[6])) and b["offload"] and (a, b),
                    5, "an IPv4 and an IPv6 flow offloaded")
    assert {f["flowtable"] for f in both} == {"ft"}
    assert {f["orig"]["dst"] for f in both} == {"192.0.2.2", H2}
    assert len(switch_flow_entries(net)) >= 2     # the v4 table's pair (v6 pair counted by the switch)
    # `p4ft flow list` prints both, like conntrack -L
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "p4flowtable.cli", "--socket", net.socket, "flow", "list"],
                         capture_output=True, text=True, check=True).stdout
    listed = [line for line in out.splitlines() if "[OFFLOAD]" in line]
    assert any(f"dst={H2} sport={sports[6]}" in line or f"sport={sports[6]} dport=5612" in line for line in listed)
    assert any(f"sport={sports[4]} dport=5611" in line for line in listed), out
    for p in srcs + sinks:
        p.terminate()
        p.wait(10)


def test_nat66_fast_path_packet_is_byte_identical_to_the_slow_path_one(net, tmp_path):
    import sys
    echo = str(tmp_path / "echo.json")
    srv = host_tool(net.h2, "udp-echo", "--ipv6", "--port", "7601", "--out", echo)
    read_json(echo + ".ready")
    try:
        ping = str(tmp_path / "ping.json")
        host_tool(net.h1, "udp-ping", "--host", H2, "--port", "7601", "--sport", "7602", "--out", ping).wait(15)
        assert read_json(ping)["replies"] == 5
        f = wait_for(lambda: (x := flow_for(net, "udp", sport=7602)) and x["offload"] and x, 3,
                     "the IPv6 UDP flow offloaded")
        h1_mac = net.h1.defaultIntf().MAC()
        code = ("from scapy.all import *\nfrom scapy.layers.inet6 import IPv6\n"
                f"sendp(Ether(src='{h1_mac}', dst='{LAN['rep_mac']}')/IPv6(src='{LAN['host6'].split('/')[0]}', "
                f"dst='{H2}', hlim=17, fl=4242)/UDP(sport=7602, dport=7601)/Raw(b'p4ft-bytes-test'), "
                "iface='h1-eth0', verbose=False)\n")
        pcap = str(tmp_path / "h2.pcap")

        def one_packet():
            cap = capture(net.h2, "h2-eth0", pcap, "ip6 and udp and ip6[48:4] = 0x70346674")   # payload 'p4ft'...
            assert net.h1.popen([sys.executable, "-c", code]).wait(30) == 0
            wait_for(lambda: len(rdpcap(pcap)) >= 1, 5, "the test packet at h2")
            stop_capture(cap)
            return bytes(rdpcap(pcap)[0])

        before = stats(net).get("punt.MISS", 0)
        fast = one_packet()
        assert stats(net).get("punt.MISS", 0) == before                # it stayed in the fast path
        wait_for(lambda: not flow_for(net, "udp", sport=7602, cached=True)["offload"], TIMEOUT + 3, "expiry")
        slow = one_packet()
        assert stats(net)["punt.MISS"] > before                         # this one took the slow path
        assert fast == slow
        ip = Ether(fast)[IPv6]
        assert (ip.src, ip.dst, ip.hlim) == (ROUTER_WAN6, H2, 16)
        assert ip[UDP].sport == f["reply"]["dport"]
        fresh = Ether(fast)
        del fresh[UDP].chksum
        assert Ether(bytes(fresh))[UDP].chksum == ip[UDP].chksum
    finally:
        srv.terminate()
        srv.wait(5)


def test_oversize_ipv6_gets_packet_too_big_from_the_slow_path(net, tmp_path):
    sh("ip", "link", "set", WAN["rep"], "mtu", "1280")
    net.h1.cmd(f"ip -6 route flush cache; ip -6 route del {H2} 2>/dev/null")
    try:
        assert "mtu 1280" not in net.h1.cmd(f"ip -6 route get {H2}")   # no path MTU known yet
        sink_out, src_out = str(tmp_path / "sink.json"), str(tmp_path / "src.json")
        sink = host_tool(net.h2, "tcp-sink", "--ipv6", "--port", "5621", "--out", sink_out)
        read_json(sink_out + ".ready")
        before = stats(net).get("punt.MTU_EXCEEDED", 0)
        src = host_tool(net.h1, "tcp-source", "--host", H2, "--port", "5621", "--bytes", str(2 * 1024 * 1024),
                        "--pause", "1.0", "--out", src_out)
        sent = read_json(src_out + ".sent", timeout=60)
        received = read_json(sink_out, timeout=60)
        src.wait(30)
        sink.wait(30)
        assert stats(net)["punt.MTU_EXCEEDED"] > before                # the switch punted the big ones
        # h1's kernel took a Packet Too Big (a path MTU exception, with its
        # expiry), and the transfer completed at that size
        route = net.h1.cmd(f"ip -6 route get {H2}")
        assert "mtu 1280" in route and "expires" in route, route
        assert received["sha256"] == sent["sha256"]
    finally:
        sh("ip", "link", "set", WAN["rep"], "mtu", "1500")
