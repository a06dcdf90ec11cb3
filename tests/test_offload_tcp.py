"""Offload of TCP through masquerade, on each available switch (seed ruleset:
`ip protocol tcp flow offload @ft`)."""

import time

import pytest

from integration import (flow_for, forward_packets, host_tool, net_per_switch, read_json, stats,
                         switch_flow_entries, wait_for)

pytestmark = pytest.mark.integration
BULK = 12 * 1000 * 1000


net = net_per_switch()


@pytest.fixture(scope="module")
def bulk(net, tmp_path_factory):
    """One 12 MB transfer h1 -> h2, observed at every step."""
    d = tmp_path_factory.mktemp("bulk")
    sink_out, src_out = str(d / "sink.json"), str(d / "src.json")
    sink = host_tool(net.h2, "tcp-sink", "--port", "5001", "--out", sink_out)
    read_json(sink_out + ".ready")
    fwd_before = forward_packets(net)
    src = host_tool(net.h1, "tcp-source", "--host", "192.0.2.2", "--port", "5001", "--bytes", str(BULK),
                    "--pause", "1.5", "--hold", "3", "--out", src_out)
    conn = read_json(src_out + ".connected")
    sport = conn["local"][1]
    flow = wait_for(lambda: (f := flow_for(net, "tcp", sport=sport)) and f["offload"] and f,
                    5, "the TCP flow to be offloaded")
    offloaded_after = time.time() - conn["connected_at"]
    sent = read_json(src_out + ".sent", timeout=120)
    # counters of the still-offloaded entries, read after the data is through
    counted = wait_for(lambda: (f := flow_for(net, "tcp", sport=sport)) and f.get("counters_age") is not None
                       and f["counters_age"] < 0.6 and time.time() - sent["sent_at"] > 1.0 and f,
                       10, "fresh switch counters while the flow is still offloaded", interval=0.1)
    entries_during = len(switch_flow_entries(net))
    fwd_after = forward_packets(net)
    done = read_json(src_out, timeout=60)
    fin_gone = wait_for(lambda: (f := flow_for(net, "tcp", sport=sport)) is None or not f.get("flowtable"),
                        5, "teardown after FIN")
    gone_after = time.time() - done["closed_at"]
    received = read_json(sink_out, timeout=30)
    src.wait(30)
    sink.wait(30)
    return dict(flow=flow, offloaded_after=offloaded_after, sent=sent, counted=counted, done=done,
                received=received, fwd=fwd_after - fwd_before, sport=sport, gone_after=gone_after,
                entries_during=entries_during, fin_gone=fin_gone, src_rc=src.returncode)


def test_tcp_flow_is_offloaded_within_one_second_of_being_established(bulk):
    assert bulk["flow"]["state"] == "ESTABLISHED"
    assert bulk["offloaded_after"] < 1.0


def test_payload_is_intact_end_to_end(bulk):
    assert bulk["received"]["bytes"] == BULK
    assert bulk["received"]["sha256"] == bulk["sent"]["sha256"]


def test_h2_sees_the_masqueraded_source_address_and_port(bulk):
    peer_ip, peer_port = bulk["received"]["peer"]
    assert peer_ip == "192.0.2.1"
    assert peer_port == bulk["flow"]["reply"]["dport"]


def test_switch_carries_the_bulk_and_the_kernel_under_one_percent(bulk):
    pk = bulk["counted"]["packets"]
    switch_packets = pk[0] + pk[1]
    total = switch_packets + bulk["fwd"]
    assert switch_packets > 8000, f"switch counted only {switch_packets} packets"
    assert bulk["fwd"] < 0.01 * total, f"kernel forwarded {bulk['fwd']} of {total} packets"


def test_both_directions_are_in_the_switch_while_offloaded(bulk):
    assert bulk["entries_during"] == 2


def test_fin_tears_down_both_directions_within_one_second(net, bulk):
    assert bulk["gone_after"] < 1.0
    assert switch_flow_entries(net) == []
    assert stats(net)["teardown.fin_rst"] >= 1


def test_connection_closes_cleanly_through_the_slow_path(bulk):
    assert bulk["src_rc"] == 0
    assert bulk["received"]["eof_at"] >= bulk["done"]["closed_at"]


def test_udp_is_never_offloaded_by_a_tcp_only_policy(net, tmp_path):
    echo = host_tool(net.h2, "udp-echo", "--port", "6001", "--out", str(tmp_path / "echo.json"))
    try:
        read_json(str(tmp_path / "echo.json.ready"))
        before = stats(net).get("not_offloaded.policy", 0)
        ping = host_tool(net.h1, "udp-ping", "--host", "192.0.2.2", "--port", "6001", "--sport", "6002",
                         "--count", "20", "--out", str(tmp_path / "ping.json"))
        res = read_json(str(tmp_path / "ping.json"))
        ping.wait(10)
        assert res["replies"] == 20
        f = flow_for(net, "udp", sport=6002)
        assert f is not None and not f["offload"] and not f.get("flowtable")
        assert stats(net).get("not_offloaded.policy", 0) > before
        assert switch_flow_entries(net) == []
    finally:
        echo.terminate()
        echo.wait(5)


class Connection:
    """A TCP connection h1 -> h2 held open for `hold` seconds after its data."""

    def __init__(self, tmp_path):
        self.sink_out, self.src_out = str(tmp_path / "sink.json"), str(tmp_path / "src.json")
        self.sink = self.src = None

    def start(self, net, port: int, nbytes: int, hold: float) -> "Connection":
        self.sink = host_tool(net.h2, "tcp-sink", "--port", str(port), "--out", self.sink_out)
        read_json(self.sink_out + ".ready")
        self.src = host_tool(net.h1, "tcp-source", "--host", "192.0.2.2", "--port", str(port),
                             "--bytes", str(nbytes), "--pause", "0", "--hold", str(hold), "--out", self.src_out)
        self.sport = read_json(self.src_out + ".connected")["local"][1]
        wait_for(lambda: (f := flow_for(net, "tcp", sport=self.sport)) and f["offload"], 5, "offload")
        return self

    def close(self) -> None:
        """Host processes a failed test left running are stopped."""
        for p in (self.src, self.sink):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)

    def finish_intact(self) -> bool:
        """Wait for the close; True when h2 got exactly what h1 sent."""
        done = read_json(self.src_out, timeout=60)
        received = read_json(self.sink_out, timeout=30)
        self.src.wait(10)
        self.sink.wait(10)
        return received["sha256"] == done["sha256"]


@pytest.fixture
def connection(net, tmp_path):
    """Connection(...).start(...) whose host processes go with the test."""
    made = []

    def start(port: int, nbytes: int, hold: float) -> Connection:
        made.append(Connection(tmp_path))
        return made[-1].start(net, port, nbytes, hold)
    yield start
    for c in made:
        c.close()


def test_switch_restart_loses_no_flow(net, connection):
    """The switch goes away and comes back: the daemon reconnects, pushes the
    pipeline again and reinstalls what the switch carried."""
    conn = connection(5002, 100000, hold=8)
    lost_before = stats(net).get("switch_lost", 0)
    s1 = net.net.get("s1")
    s1.proc.kill()
    s1.proc.wait(10)
    wait_for(lambda: stats(net).get("switch_lost", 0) > lost_before, 10, "the daemon to notice")
    s1.start([])
    wait_for(lambda: len(switch_flow_entries(net, missing_ok=True) or ()) == 2, 20,
             "the flow reinstalled in the new switch")
    assert flow_for(net, "tcp", sport=conn.sport)["offload"]
    assert conn.finish_intact()


def test_flowtable_delete_hands_flows_back_and_add_restores_offload(net, connection):
    from p4ft_topo import p4ft
    conn = connection(5003, 1000, hold=6)
    out = p4ft("flowtable", "delete", "ft", socket_path=net.socket)
    assert "deleted flowtable ft (1 flow(s) handed back)" in out
    wait_for(lambda: switch_flow_entries(net) == [], 5, "the flow's entries to leave the switch")
    assert "flowtable" not in p4ft("flowtable", "list", socket_path=net.socket)
    out = p4ft("flowtable", "add", "ft", "--devices", "lan0,wan0", "--timeout", "30", socket_path=net.socket)
    assert "added flowtable ft on ports [1, 2]" in out
    assert "flowtable ft family ip devices { lan0, wan0 } ports [1, 2] timeout 30s" in \
        p4ft("flowtable", "list", socket_path=net.socket)
    out = p4ft("flowtable", "add", "ft", "--devices", "lan0", socket_path=net.socket)
    assert "flowtable 'ft' exists" in out
    assert conn.finish_intact()
