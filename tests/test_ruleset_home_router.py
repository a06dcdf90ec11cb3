"""A hand-written home router's ruleset (define, include, a named set in the
offload rule, priority filter - 1, port forwards accepted by ct status dnat),
on each available switch."""

import pytest

from integration import (ROOT, flow_for, host_tool, net_per_switch, read_json, stats, wait_for)

pytestmark = pytest.mark.integration
RULESET = ROOT / "tests" / "rulesets" / "home-router.nft"
BULK = 4 * 1000 * 1000

net = net_per_switch(ruleset_file=RULESET)


def transfer(net, tmp_path, wan_port, lan_port):
    """h2 -> the router's WAN address:wan_port, forwarded to h1:lan_port."""
    sink_out, src_out = str(tmp_path / "sink.json"), str(tmp_path / "src.json")
    sink = host_tool(net.h1, "tcp-sink", "--port", str(lan_port), "--out", sink_out)
    read_json(sink_out + ".ready")
    src = host_tool(net.h2, "tcp-source", "--host", "192.0.2.1", "--port", str(wan_port), "--bytes", str(BULK),
                    "--pause", "1", "--hold", "1.5", "--out", src_out)
    sport = read_json(src_out + ".connected")["local"][1]
    return sink, src, sink_out, src_out, sport


def test_a_forwarded_port_in_the_set_is_offloaded_intact_and_h1_sees_h2(net, tmp_path):
    sink, src, sink_out, src_out, sport = transfer(net, tmp_path, 8080, 5001)
    flow = wait_for(lambda: (f := flow_for(net, "tcp", sport=sport)) and f["offload"] and f, 5,
                    "the port-forwarded flow offloaded")
    assert (flow["orig"]["dport"], flow["reply"]["src"], flow["reply"]["sport"]) == (8080, "10.0.1.1", 5001)
    got, sent = read_json(sink_out, timeout=60), read_json(src_out, timeout=60)
    assert (got["bytes"], got["sha256"]) == (BULK, sent["sha256"])
    assert got["peer"][0] == "192.0.2.2"       # DNAT only: the server sees the client
    src.wait(30)
    sink.wait(30)


def test_a_forwarded_port_outside_the_set_stays_in_the_slow_path(net, tmp_path):
    declined = stats(net).get("not_offloaded.policy", 0)
    sink, src, sink_out, src_out, sport = transfer(net, tmp_path, 9090, 5002)
    f = wait_for(lambda: (f := flow_for(net, "tcp", sport=sport)) and f["state"] == "ESTABLISHED" and f, 5,
                 "the second forwarded connection established")
    sent = read_json(src_out + ".sent", timeout=60)
    assert not f["offload"] and not flow_for(net, "tcp", sport=sport)["offload"]
    got = read_json(sink_out, timeout=60)
    assert (got["bytes"], got["sha256"], got["peer"][0]) == (BULK, sent["sha256"], "192.0.2.2")
    assert stats(net).get("not_offloaded.policy", 0) > declined
    src.wait(30)
    sink.wait(30)
