"""OpenWrt firewall4's ruleset, loaded by p4ft unchanged, on each available
switch: LAN to WAN TCP and UDP offloaded and intact, a new connection from the
WAN reset by the kernel and never offloaded, ICMP never offloaded."""

import errno

import pytest

from integration import (PY, ROOT, flow_for, flows, host_tool, net_per_switch, read_json, stats,
                         switch_flow_entries, wait_for)
from p4ft_topo import sh

pytestmark = pytest.mark.integration
FW4 = ROOT / "tests" / "rulesets" / "fw4.nft"
BULK = 4 * 1000 * 1000

net = net_per_switch(ruleset_file=FW4)


def test_the_kernel_runs_the_file_with_the_offload_statement_as_a_mark(net):
    k = sh("nft", "list", "table", "inet", "fw4")
    assert "meta l4proto { tcp, udp } ct label set 120" in k
    assert "tcp option maxseg size set rt mtu" in k and "reject with tcp reset" in k
    assert [t["name"] for t in net.api("flowtable_list")] == ["ft"]


def test_lan_to_wan_tcp_is_offloaded_both_ways_and_intact(net, tmp_path):
    sink_out, src_out = str(tmp_path / "sink.json"), str(tmp_path / "src.json")
    sink = host_tool(net.h2, "tcp-sink", "--port", "5001", "--out", sink_out)
    read_json(sink_out + ".ready")
    src = host_tool(net.h1, "tcp-source", "--host", "192.0.2.2", "--port", "5001", "--bytes", str(BULK),
                    "--pause", "1", "--hold", "2", "--out", src_out)
    sport = read_json(src_out + ".connected")["local"][1]
    flow = wait_for(lambda: (f := flow_for(net, "tcp", sport=sport)) and f["offload"] and f, 5,
                    "the TCP flow offloaded")
    assert flow["flowtable"] == "ft"
    read_json(src_out + ".sent", timeout=60)
    assert len(switch_flow_entries(net)) == 2
    pk = wait_for(lambda: (f := flow_for(net, "tcp", sport=sport)) and f.get("packets") and
                  min(f["packets"]) > 0 and f["packets"], 5, "switch counters in both directions")
    assert pk[0] > 100
    got, sent = read_json(sink_out, timeout=60), read_json(src_out, timeout=60)
    assert (got["bytes"], got["sha256"]) == (BULK, sent["sha256"])
    assert got["peer"][0] == "192.0.2.1"      # masqueraded by fw4's srcnat_wan
    src.wait(30)
    sink.wait(30)


def test_lan_to_wan_udp_is_offloaded_both_ways(net, tmp_path):
    echo_out, ping_out = str(tmp_path / "echo.json"), str(tmp_path / "ping.json")
    echo = host_tool(net.h2, "udp-echo", "--port", "6001", "--out", echo_out)
    read_json(echo_out + ".ready")
    ping = host_tool(net.h1, "udp-ping", "--host", "192.0.2.2", "--port", "6001", "--sport", "6002",
                     "--count", "60", "--interval", "0.05", "--out", ping_out)
    flow = wait_for(lambda: (f := flow_for(net, "udp", sport=6002)) and f["offload"] and f, 5,
                    "the UDP flow offloaded")
    assert flow["flowtable"] == "ft"
    assert read_json(ping_out, timeout=30)["replies"] == 60
    pk = flow_for(net, "udp", sport=6002)["packets"]
    assert min(pk) > 10, f"switch packets per direction: {pk}"
    ping.wait(10)
    echo.kill()


def test_a_new_connection_from_the_wan_is_reset_by_the_kernel_and_not_offloaded(net, tmp_path):
    sink_out = str(tmp_path / "sink.json")
    sink = host_tool(net.h1, "tcp-sink", "--port", "5003", "--out", sink_out)
    read_json(sink_out + ".ready")
    before = stats(net).get("offloaded", 0)
    out = net.h2.cmd(f"{PY} -c 'import socket; s = socket.socket(); s.settimeout(3); "
                     f"print(s.connect_ex((\"10.0.1.1\", 5003)))'")
    assert out.strip() == str(errno.ECONNREFUSED)     # fw4's handle_reject: tcp reset
    assert flow_for(net, "tcp", dport=5003) is None or not flow_for(net, "tcp", dport=5003)["offload"]
    assert stats(net).get("offloaded", 0) == before
    sink.kill()


def test_icmp_is_never_offloaded(net, tmp_path):
    out = str(tmp_path / "ping.json")
    before = stats(net).get("offloaded", 0)
    host_tool(net.h1, "icmp-ping", "--host", "192.0.2.2", "--count", "10", "--out", out).wait(30)
    assert read_json(out)["replies"] == 10
    icmp = [f for f in flows(net) if f["l4proto"] == 1]
    assert icmp and not any(f["offload"] for f in icmp)
    assert stats(net).get("offloaded", 0) == before
