"""The operator's tools on a live topology, on each available switch: JSON
output checked against the documented schema, conntrack's filters, the event
monitor, a stalled monitor, and Prometheus metrics scraped during traffic."""

import asyncio
import json
import socket
import subprocess
import urllib.request

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration import PY, ROOT, flow_for, host_tool, net_per_switch, read_json, wait_for
from p4flowtable import ctnetlink as ctnl
from p4flowtable.conntrack import IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY, TCP_ESTABLISHED
from p4flowtable.model import FlowTuple, ipv4
from p4ft_topo import LAN, WAN, free_tcp_port, make_ruleset
from test_offload_burst import conntrack

pytestmark = pytest.mark.integration
SCHEMA = json.loads((ROOT / "docs" / "p4ft.schema.json").read_text())
METRICS = free_tcp_port()
RULESET = make_ruleset("meta l4proto { tcp, udp } flow add @ft")

net = net_per_switch(ruleset=RULESET, poll_interval=0.25, daemon_args=["--metrics-addr", f"127.0.0.1:{METRICS}"])


def p4ft(net, *args) -> str:
    env = {"PYTHONPATH": str(ROOT / "controller")}
    r = subprocess.run([PY, "-m", "p4flowtable.cli", "--socket", net.socket, *args], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def as_json(net, *args) -> dict:
    doc = json.loads(p4ft(net, *args))
    jsonschema.validate(doc, SCHEMA)
    return doc


def scrape() -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture(scope="module")
def life(net, tmp_path_factory):
    """One TCP connection's life, watched by a monitor started before it."""
    d = tmp_path_factory.mktemp("life")
    mon = subprocess.Popen([PY, "-m", "p4flowtable.cli", "--socket", net.socket, "monitor", "-o", "json",
                            "--dport", "5001"], stdout=subprocess.PIPE, text=True,
                           env={"PYTHONPATH": str(ROOT / "controller")})
    wait_for(lambda: net.api("stats")["monitors"] >= 1, 10, "the monitor subscribed")
    before = scrape()
    sink = host_tool(net.h2, "tcp-sink", "--port", "5001", "--out", str(d / "sink.json"))
    read_json(str(d / "sink.json.ready"))
    src = host_tool(net.h1, "tcp-source", "--host", "192.0.2.2", "--port", "5001", "--bytes", "2000000",
                    "--pause", "1", "--hold", "2", "--out", str(d / "src.json"))
    sport = read_json(str(d / "src.json.connected"))["local"][1]
    wait_for(lambda: (f := flow_for(net, "tcp", sport=sport)) and f["offload"], 5, "the flow offloaded")
    read_json(str(d / "src.json.sent"), timeout=60)
    during = {"flows": as_json(net, "flow", "list", "-o", "json"), "metrics": scrape(), "sport": sport,
              "stats": as_json(net, "stats", "-j"), "flowtables": as_json(net, "flowtable", "list", "-o", "json")}
    read_json(str(d / "src.json"), timeout=60)
    wait_for(lambda: not (f := flow_for(net, "tcp", sport=sport)) or not f.get("flowtable"), 10, "hand-back")
    src.wait(30)
    sink.wait(30)
    wait_for(lambda: net.api("stats").get("teardown.fin_rst", 0) >= 1, 5, "the teardown counted")
    mon.terminate()
    events = [json.loads(line) for line in mon.communicate(timeout=10)[0].splitlines()]
    return dict(during, before=before, after=scrape(), events=events)


def test_json_output_follows_the_documented_schema(net, life):
    # as_json validated each; and the reload answer
    reload = as_json(net, "ruleset", "reload", "-o", "json")
    assert reload["reload"]["kept"] == ["ft"]
    rows = [r for r in life["flows"]["flows"] if r["orig"]["sport"] == life["sport"]]
    assert rows and rows[0]["offload"] and rows[0]["flowtable"] == "ft" and rows[0]["state"] == "ESTABLISHED"
    assert life["stats"]["stats"]["role"] == "primary"
    assert life["flowtables"]["flowtables"][0]["ct_label"] == 120
    with pytest.raises(jsonschema.ValidationError):      # the schema can fail: a field renamed
        jsonschema.validate({"flows": [dict(rows[0], offloaded=rows[0].pop("offload"))]}, SCHEMA)


def test_flow_list_filters_like_conntrack(net, life, tmp_path):
    echo = host_tool(net.h2, "echo", "--port", "7000", "--out", str(tmp_path / "echo.json"))
    read_json(str(tmp_path / "echo.json.ready"))
    out = str(tmp_path / "c.json")
    chat = host_tool(net.h1, "chatter", "--proto", "tcp", "--host", "192.0.2.2", "--port", "7000", "--count", "3",
                     "--interval", "0.2", "--duration", "6", "--out", out)
    ports = read_json(out + ".up")["ports"]
    wait_for(lambda: len(json.loads(p4ft(net, "flow", "list", "-j", "--dport", "7000", "--offloaded"))["flows"])
             == 3, 5, "the three connections offloaded")

    def got(*flt):
        return sorted(r["orig"]["sport"] for r in as_json(net, "flow", "list", "-j", *flt)["flows"])
    assert got("-p", "tcp", "--dport", "7000") == sorted(ports)
    assert got("-p", "udp", "--dport", "7000") == []
    assert got("--sport", str(ports[0])) == [ports[0]]
    assert got("-s", "10.0.1.1", "-d", "192.0.2.2", "--dport", "7000") == sorted(ports)
    assert got("--dst", "192.0.2.9") == []
    assert got("--flowtable", "ft", "--dport", "7000") == sorted(ports)
    assert got("--no-offloaded", "--dport", "7000") == []
    text = p4ft(net, "flow", "list", "--dport", "7000")
    assert text.count("[OFFLOAD]") == 3 and all(f"sport={p}" in text for p in ports)
    chat.wait(30)
    echo.kill()


def test_monitor_shows_one_connections_life_in_order(life):
    for ev in life["events"]:
        jsonschema.validate(ev, SCHEMA)
    mine = [e for e in life["events"] if e.get("orig", {}).get("sport") == life["sport"]]
    kinds = [e["event"] for e in mine]
    assert "OFFLOAD" in kinds and "TEARDOWN" in kinds and "HANDBACK" in kinds, kinds
    assert kinds.index("OFFLOAD") < kinds.index("TEARDOWN") < kinds.index("HANDBACK")
    off, down = mine[kinds.index("OFFLOAD")], mine[kinds.index("TEARDOWN")]
    assert off["flowtable"] == "ft" and off["after_ms"] is not None and off["after_ms"] < 1000
    assert down["reason"] == "fin_rst" and down["direction"] in ("original", "reply")
    assert all(e["orig"]["dport"] == 5001 for e in life["events"] if "orig" in e)   # the monitor's filter


def test_metrics_move_with_traffic(life):
    b, d, a = life["before"], life["metrics"], life["after"]
    assert a[("p4ft_offloads_total", ())] > b[("p4ft_offloads_total", ())]
    assert d[("p4ft_flows", (("flowtable", "ft"), ("state", "offloaded")))] >= 1
    assert a[("p4ft_offload_latency_seconds_count", ())] > b[("p4ft_offload_latency_seconds_count", ())]
    assert a[("p4ft_teardowns_total", (("reason", "fin_rst"),))] >= 1
    assert a[("p4ft_punts_total", (("reason", "TCP_FIN_RST"),))] > b.get(("p4ft_punts_total", (("reason", "TCP_FIN_RST"),)), 0)
    assert a[("p4ft_switch_writes_total", ())] > b[("p4ft_switch_writes_total", ())]
    assert a[("p4ft_switch_connected", ())] == 1
    assert a[("p4ft_switch_role", (("role", "primary"),))] == 1
    assert a[("p4ft_punt_rate", ())] == 2000      # the daemon's default; drops are in test_punt_storm
    asked = ("p4ft_route_lookups_total", (("source", "asked"),))
    assert a[asked] > b.get(asked, 0)             # the connections' paths, asked of the kernel


def burst(net, base: int, n: int) -> dict:
    """Offload n ctnetlink-made connections at once; the daemon's offload
    timing with its samples (time-to-offload, the switch's part of it)."""
    h1, h2, router = ipv4(LAN["host"].split("/")[0]), ipv4(WAN["host"].split("/")[0]), ipv4(WAN["router"])
    mark = 1 << next(t["ct_label"] for t in net.api("flowtable_list"))
    net.api("offload_timing", {"reset": True})
    status = IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED
    made = asyncio.run(conntrack(ctnl.IPCTNL_MSG_CT_NEW, [ctnl.create_payload(
        FlowTuple(h1, h2, 6, base + i, 81), FlowTuple(h2, router, 6, 81, base + i), status, 600, TCP_ESTABLISHED,
        mark) for i in range(n)], ctnl.NLM_F_CREATE | ctnl.NLM_F_EXCL))
    assert not [r for r in made if isinstance(r, Exception)]
    return wait_for(lambda: (t := net.api("offload_timing", {"samples": True}))["latency"] and
                    len(t["latency"]) >= n and t, 30, f"{n} offloads")


def burst_p99(net, base: int, n: int) -> float:
    """Offload n ctnetlink-made connections at once; their time-to-offload p99."""
    lat = sorted(burst(net, base, n)["latency"])
    return lat[int(0.99 * (len(lat) - 1))]


def test_time_to_offload_is_split_into_the_switch_and_the_controller(net, life):
    """Each flow's time-to-offload comes with the part of it its add waited
    on the switch (the next hops' write, then the entries'); `p4ft stats`
    shows both parts' p50 and p99. A wait measured from the decision would
    be the whole time; none measured, zero."""
    t = burst(net, 36000, 200)
    lat, sw = t["latency"], t["switch"]
    assert len(sw) == len(lat) >= 200
    assert all(0 < s <= x for x, s in zip(lat, sw)), [(x, s) for x, s in zip(lat, sw) if not 0 < s <= x][:5]
    assert sum(x - s for x, s in zip(lat, sw)) > 0      # the controller's part: the decision, the queue
    st = net.api("stats")
    for part in ("", ".switch", ".controller"):
        assert st[f"offload_latency_ms{part}.p99"] >= st[f"offload_latency_ms{part}.p50"] >= 0, part
    assert st["offload_latency_ms.switch.p50"] > 0


def test_a_stalled_monitor_does_not_delay_offloads(net, life):
    """Bursts alone and beside a monitor that never reads, in turn, twice;
    the better of each pair's p99 compared. The monitor is stalled for
    real before its burst is timed: a burst of more events than its socket
    holds fills it, and its events then wait in its queue. A loaded machine
    slows single bursts at random (CI once measured 9.6 ms alone, 46.5 ms
    stalled, with a compiler running beside it); a daemon that a stalled
    monitor holds up is slow in every burst it runs beside it."""
    alone, stalled = [], []
    for r in range(2):
        alone.append(burst_p99(net, 30000 + 2000 * r, 400))
        mon = socket.socket(socket.AF_UNIX)
        mon.connect(net.socket)
        mon.sendall(b'{"cmd": "monitor", "args": {}}\n')      # and never reads
        wait_for(lambda: net.api("stats")["monitors"] >= 1, 10, "the stalled monitor subscribed")
        burst(net, 40000 + 3000 * r, 2500)                     # some 800 KB of events: more than its socket holds
        assert net.api("stats")["monitor_queued"] > 0, "the monitor's socket took every event: not stalled"
        stalled.append(burst_p99(net, 31000 + 2000 * r, 400))
        mon.close()
        wait_for(lambda: net.api("stats")["monitors"] == 0, 10, "the stalled monitor gone")
    print(f"\n[p4ft] {net.kind}: time-to-offload p99 " + ", ".join(
        f"{1000 * a:.1f} ms alone, {1000 * s:.1f} ms with a stalled monitor" for a, s in zip(alone, stalled)))
    best = min(alone)
    assert min(stalled) < max(2 * best, best + 0.02)
