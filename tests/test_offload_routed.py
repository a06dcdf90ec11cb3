"""Offload of a routed TCP flow (no masquerade in the ruleset), on each
available switch: the entries take the route action (TTL and next hop only,
as the kernel rewrites nothing for a flow without NF_FLOW_SNAT/DNAT) and the
transfer arrives intact with h1's own address."""

import pytest

from integration import ROOT, flow_for, host_tool, net_per_switch, read_json, switch_flow_entries, wait_for
from p4ft_topo import make_ruleset

pytestmark = pytest.mark.integration
BULK = 4 * 1000 * 1000


net = net_per_switch(ruleset=make_ruleset(nat=False))


@pytest.fixture(scope="module")
def transfer(net, tmp_path_factory):
    d = tmp_path_factory.mktemp("routed")
    sink_out, src_out = str(d / "sink.json"), str(d / "src.json")
    sink = host_tool(net.h2, "tcp-sink", "--port", "5002", "--out", sink_out)
    try:
        read_json(sink_out + ".ready")
        src = host_tool(net.h1, "tcp-source", "--host", "192.0.2.2", "--port", "5002", "--bytes", str(BULK),
                        "--pause", "1.5", "--hold", "2", "--out", src_out)
        try:
            sport = read_json(src_out + ".connected")["local"][1]
            flow = wait_for(lambda: (f := flow_for(net, "tcp", sport=sport)) and f["offload"] and f,
                            5, "the routed TCP flow to be offloaded")
            entries = switch_flow_entries(net)
            counted = wait_for(lambda: (f := flow_for(net, "tcp", sport=sport)) and f.get("counters_age")
                               is not None and sum(f["packets"]) > 1000 and f,
                               60, "the switch to count the transfer's packets", interval=0.1)
            sent = read_json(src_out, timeout=120)
            received = read_json(sink_out, timeout=30)
            src.wait(30)
        finally:
            if src.poll() is None:
                src.kill()
    finally:
        if sink.poll() is None:
            sink.kill()
    return dict(flow=flow, entries=entries, counted=counted, sent=sent, received=received)


def test_routed_flow_entries_take_the_route_action(transfer):
    from p4flowtable.p4info import P4Schema
    schema = P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")
    flow = transfer["flow"]
    assert (flow["reply"]["src"], flow["reply"]["dst"]) == (flow["orig"]["dst"], flow["orig"]["src"])
    assert len(transfer["entries"]) == 2
    assert {e.action.action.action_id for e in transfer["entries"]} == {schema.action("route_v4").id}


def test_routed_transfer_is_intact_and_carried_by_the_switch(transfer):
    assert transfer["received"]["bytes"] == BULK
    assert transfer["received"]["sha256"] == transfer["sent"]["sha256"]
    assert transfer["received"]["peer"][0] == "10.0.1.1"     # no masquerade
    assert sum(transfer["counted"]["packets"]) > 1000
