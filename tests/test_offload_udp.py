"""UDP and TCP offload with a short flowtable timeout: idle expiry, bytes on the
wire versus the slow path, and MTU punts, on each available switch."""

import pytest
from scapy.all import IP, Ether, rdpcap

from integration import (capture, flow_for, forward_packets, host_tool, net_per_switch, read_json, stats,
                         stop_capture, switch_flow_entries, wait_for)
from p4ft_topo import LAN, WAN, make_ruleset, sh

pytestmark = pytest.mark.integration
TIMEOUT = 2.0

RULESET = make_ruleset("meta l4proto { tcp, udp } flow add @ft")


net = net_per_switch(ruleset=RULESET, timeouts={"ft": TIMEOUT}, poll_interval=0.25)


@pytest.fixture
def echo(net, tmp_path):
    out = str(tmp_path / "echo.json")
    p = host_tool(net.h2, "udp-echo", "--port", "7001", "--out", out)
    read_json(out + ".ready")
    yield out
    p.terminate()
    p.wait(5)


def ping(net, tmp_path, sport, count=5, size=100, df=False, name="ping"):
    out = str(tmp_path / f"{name}-{sport}.json")
    args = ["udp-ping", "--host", "192.0.2.2", "--port", "7001", "--sport", str(sport),
            "--count", str(count), "--size", str(size), "--out", out]
    p = host_tool(net.h1, *(args + (["--df"] if df else [])))
    res = read_json(out)
    p.wait(10)
    return res


def offloaded(net, proto, sport):
    return wait_for(lambda: (f := flow_for(net, proto, sport=sport)) and f["offload"] and f,
                    3, f"{proto} flow from port {sport} to be offloaded")


def test_idle_udp_flow_expires_and_is_offloaded_again(net, echo, tmp_path):
    assert ping(net, tmp_path, 7101)["replies"] == 5
    offloaded(net, "udp", 7101)
    assert len(switch_flow_entries(net)) == 2
    expired_before = stats(net).get("expired", 0)
    wait_for(lambda: not flow_for(net, "udp", sport=7101)["offload"], TIMEOUT + 3,
             "the idle flow to lose [OFFLOAD]")
    assert flow_for(net, "udp", sport=7101) is not None      # still tracked by the kernel
    assert switch_flow_entries(net) == []
    assert stats(net)["expired"] == expired_before + 1
    fwd = forward_packets(net)
    assert ping(net, tmp_path, 7101, name="again")["replies"] == 5
    assert forward_packets(net) > fwd                           # the slow path took them first
    offloaded(net, "udp", 7101)
    assert len(switch_flow_entries(net)) == 2


def _send(net, frames_py: str):
    """Send scapy frames from h1's interface (code evaluated on h1)."""
    import sys
    code = ("from scapy.all import *\n"
            f"sendp({frames_py}, iface='h1-eth0', verbose=False)\n")
    p = net.h1.popen([sys.executable, "-c", code])
    assert p.wait(30) == 0


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_fast_path_packet_is_byte_identical_to_the_slow_path_one(net, echo, tmp_path, proto):
    sport = 7201 if proto == "udp" else 7202
    h1_mac = net.h1.defaultIntf().MAC()
    if proto == "udp":
        assert ping(net, tmp_path, sport)["replies"] == 5
    else:
        sink = host_tool(net.h2, "tcp-sink", "--port", "7001", "--out", str(tmp_path / "sink.json"))
        read_json(str(tmp_path / "sink.json.ready"))
        src = host_tool(net.h1, "tcp-source", "--host", "192.0.2.2", "--port", "7001", "--bytes", "1000",
                        "--pause", "0", "--hold", "30", "--out", str(tmp_path / "src.json"))
        sport = read_json(str(tmp_path / "src.json.connected"))["local"][1]
    f = offloaded(net, proto, sport)
    l4 = (f"UDP(sport={sport}, dport=7001)" if proto == "udp"
          else f"TCP(sport={sport}, dport=7001, flags='A', seq=12345, ack=1)")
    frame = (f"Ether(src='{h1_mac}', dst='{LAN['rep_mac']}')/IP(src='10.0.1.1', dst='192.0.2.2', ttl=17, "
             f"id=4242)/{l4}/Raw(b'p4ft-bytes-test')")
    pcap = str(tmp_path / "h2.pcap")

    def one_packet():
        cap = capture(net.h2, "h2-eth0", pcap, f"{proto} and src port {f['reply']['dport']} and ip[4:2] = 4242")
        _send(net, frame)
        wait_for(lambda: len(rdpcap(pcap)) >= 1, 5, "the test packet at h2")
        stop_capture(cap)
        return bytes(rdpcap(pcap)[0])

    punts_before = stats(net)
    fast = one_packet()
    assert stats(net).get("punt.MISS", 0) == punts_before.get("punt.MISS", 0)   # it did not leave the fast path
    wait_for(lambda: not flow_for(net, proto, sport=sport)["offload"], TIMEOUT + 3, "expiry")
    slow = one_packet()
    assert stats(net)["punt.MISS"] > punts_before.get("punt.MISS", 0)          # this one took the slow path
    assert fast == slow
    ip = Ether(fast)[IP]
    assert ip.ttl == 16
    assert ip.src == "192.0.2.1" and ip.dst == "192.0.2.2"
    recomputed = Ether(fast)
    del recomputed[IP].chksum
    del recomputed[IP].payload.chksum
    recomputed = Ether(bytes(recomputed))
    assert recomputed[IP].chksum == ip.chksum
    assert recomputed[IP].payload.chksum == ip.payload.chksum
    if proto == "tcp":
        src.terminate()
        sink.terminate()


def test_oversize_packets_are_punted_and_the_kernel_fragments_or_sends_icmp(net, echo, tmp_path):
    sh("ip", "link", "set", WAN["rep"], "mtu", "1000")
    try:
        assert ping(net, tmp_path, 7301)["replies"] == 5
        offloaded(net, "udp", 7301)
        before = stats(net).get("punt.MTU_EXCEEDED", 0)
        # DF clear: the kernel fragments and h2 gets the whole datagram
        res = ping(net, tmp_path, 7301, count=3, size=1400, name="frag")
        assert res["replies"] == 3
        got = [r for r in read_json(echo)["received"] if r[2] == 1400]
        assert len(got) == 3
        assert stats(net)["punt.MTU_EXCEEDED"] >= before + 3
        # DF set: the kernel answers ICMP fragmentation-needed; h1 learns the path MTU
        pcap = str(tmp_path / "icmp.pcap")
        cap = capture(net.h1, "h1-eth0", pcap, "icmp[0] = 3 and icmp[1] = 4")
        res = ping(net, tmp_path, 7301, count=2, size=1400, df=True, name="df")
        wait_for(lambda: len(rdpcap(pcap)) >= 1, 5, "ICMP fragmentation-needed at h1")
        stop_capture(cap)
        icmp = rdpcap(pcap)[0]["ICMP"]
        assert icmp.nexthopmtu == 1000
        assert any("Message too long" in e for e in res["errors"]), res["errors"]   # EMSGSIZE: PMTU learnt
    finally:
        sh("ip", "link", "set", WAN["rep"], "mtu", "1500")
