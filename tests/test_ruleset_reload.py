"""`p4ft ruleset reload` and SIGHUP, on each available switch: all or
nothing, flows of unchanged flowtables kept, a removed flowtable's flows
handed back, an added flowtable offloading."""

import os
import signal

import pytest

from integration import flow_for, host_tool, net_per_switch, read_json, switch_flow_entries, wait_for
from p4ft_topo import LAN, WAN, make_ruleset, p4ft, sh

pytestmark = pytest.mark.integration
RULESET = make_ruleset("meta l4proto { tcp, udp } flow add @ft")
COUNT, INTERVAL = 300, 0.05        # the long UDP flow: 15 s

net = net_per_switch(ruleset=RULESET, timeouts={"ft": 60})


@pytest.fixture(scope="module")
def udp(net, tmp_path_factory):
    """A UDP flow h1 -> h2 that keeps talking through every reload."""
    d = tmp_path_factory.mktemp("udp")
    echo = host_tool(net.h2, "udp-echo", "--port", "6001", "--out", str(d / "echo.json"))
    read_json(str(d / "echo.json.ready"))
    ping = host_tool(net.h1, "udp-ping", "--host", "192.0.2.2", "--port", "6001", "--sport", "6002",
                     "--count", str(COUNT), "--interval", str(INTERVAL), "--wait", "2", "--out",
                     str(d / "ping.json"))
    wait_for(lambda: (f := flow_for(net, "udp", sport=6002)) and f["offload"], 5, "the UDP flow offloaded")
    yield dict(ping=ping, out=str(d / "ping.json"))
    ping.kill()
    echo.kill()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("rulesets")


def reload(net, path=None):
    return p4ft("ruleset", "reload", *([str(path)] if path else []), socket_path=net.socket)


def in_switch(net) -> int:
    return len(switch_flow_entries(net))


def test_a_good_file_is_loaded_and_the_flows_of_unchanged_flowtables_stay(net, udp, work):
    f = work / "r.nft"
    f.write_text(RULESET.replace("counter\n", "counter comment \"reloaded\"\n"))
    out = reload(net, f)
    assert "flowtables added: none; removed: none; kept: ft" in out, out
    assert 'comment "reloaded"' in sh("nft", "list", "ruleset")
    assert flow_for(net, "udp", sport=6002)["offload"] and in_switch(net) == 2


def test_a_typo_changes_nothing_and_names_line_and_column(net, udp, work):
    before_kernel, before_flows = sh("nft", "list", "ruleset"), net.api("flow_list", {"refresh": False})
    f = work / "typo.nft"
    f.write_text(RULESET.replace("meta l4proto { tcp, udp } flow add @ft",
                                 "meta l4proto { tcp, udp } flow add @ft\n        tcp dprot 22 accept"))
    out = reload(net, f)
    line = f.read_text().split("\n").index("        tcp dprot 22 accept") + 1
    assert f"{f}:{line}:13-17: Error: syntax error" in out, out
    assert sh("nft", "list", "ruleset") == before_kernel
    after = net.api("flow_list", {"refresh": False})
    assert [(r["orig"], r["offload"]) for r in after if r["proto"] == "udp"] == \
           [(r["orig"], r["offload"]) for r in before_flows if r["proto"] == "udp"]
    assert in_switch(net) == 2


def test_removing_the_flowtable_hands_its_flows_back(net, udp, work):
    f = work / "none.nft"
    f.write_text(make_ruleset("counter").replace(
        f"    flowtable ft {{\n        hook ingress priority filter; devices = {{ {LAN['rep']}, {WAN['rep']} }};\n"
        "    }\n", ""))
    out = reload(net, f)
    assert "removed: ft" in out, out
    wait_for(lambda: in_switch(net) == 0, 5, "the flow's entries gone from the switch")
    assert net.api("flowtable_list") == []
    assert not flow_for(net, "udp", sport=6002)["offload"]
    assert "ct label" not in sh("nft", "list", "ruleset")


def test_a_flowtable_added_by_sighup_offloads(net, udp, work):
    # the daemon reloads the file it last loaded
    last = work / "none.nft"
    last.write_text(RULESET.replace("flowtable ft", "flowtable ft2").replace("@ft", "@ft2"))
    os.kill(net.daemon.pid, signal.SIGHUP)
    wait_for(lambda: [t["name"] for t in net.api("flowtable_list")] == ["ft2"], 10, "flowtable ft2")
    # the running flow's next packets reach the new statement: it comes back, into ft2
    f = wait_for(lambda: (f := flow_for(net, "udp", sport=6002)) and f["offload"] and f, 5,
                 "the UDP flow offloaded again")
    assert f["flowtable"] == "ft2" and in_switch(net) == 2


def test_the_flow_lost_nothing_through_the_reloads(udp):
    udp["ping"].wait(60)
    assert read_json(udp["out"])["replies"] == COUNT
