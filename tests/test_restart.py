"""Restarts without losing the fast path, on each available switch: the
daemon killed (-9) under 1,000 talking TCP connections and 200 UDP flows and
started again adopts what the switch carries; the switch process killed and
started again gets the pipeline and every flow back."""

import json
import os
import signal
import time

import pytest

from integration import flow_for, host_tool, net_per_switch, read_json, stats, switch_flow_entries, wait_for
from p4ft_topo import make_ruleset, p4ft, sh

pytestmark = pytest.mark.integration
N_TCP, N_UDP = 1000, 200
DURATION = 90           # seconds the chatter talks: set-up, and every restart and stop below
DOWN = 4.0              # the daemon stays dead this long: longer than the UDP timeout
UDP_TIMEOUT = 3
# Seconds each test below took the data path down, or may have (a host's ARP
# probe that met no daemon to relay it): from its stop or kill to every flow
# back. Printed with the echoes lost, for docs/restarts.md.
OUTAGES: dict[str, float] = {}

net = net_per_switch(ruleset=make_ruleset("meta l4proto { tcp, udp } flow add @ft"),
                     timeouts={"ft/udp": UDP_TIMEOUT}, poll_interval=0.25)


def offloaded(net) -> int:
    return net.api("stats")["flows_offloaded_now"]


def kernel_rx(net) -> int:
    """Frames the slow path received from the switch (its representors' rx):
    kept across daemon restarts, unlike the ruleset's counters."""
    return sum(l["stats64"]["rx"]["packets"] for l in json.loads(sh("ip", "-s", "-j", "link"))
               if l["ifname"] in ("lan0", "wan0"))


def switch_packets(net) -> int:
    """Packets the switch forwarded on flow entries (their direct counters)."""
    return sum(e.counter_data.packet_count for e in switch_flow_entries(net, counters=True))


@pytest.fixture(scope="module")
def chatter(net, tmp_path_factory):
    d = tmp_path_factory.mktemp("chatter")
    server = host_tool(net.h2, "echo", "--port", "7000", "--out", str(d / "echo.json"))
    read_json(str(d / "echo.json.ready"))
    clients = {}
    for proto, n in (("tcp", N_TCP), ("udp", N_UDP)):
        out = str(d / f"{proto}.json")
        clients[proto] = (host_tool(net.h1, "chatter", "--proto", proto, "--host", "192.0.2.2", "--port", "7000",
                                    "--count", str(n), "--interval", "1", "--duration", str(DURATION),
                                    "--out", out), out)
        read_json(out + ".up", timeout=60)
    up_at = time.monotonic()      # the UDP flows' first datagrams take the slow path, through the punt meter
    wait_for(lambda: offloaded(net) >= N_TCP + N_UDP, 60, f"{N_TCP + N_UDP} flows offloaded", interval=0.5)
    OUTAGES["set-up"] = time.monotonic() - up_at
    yield clients
    for p, _ in clients.values():
        p.kill()
    server.kill()


def counted(net) -> dict:
    """The daemon's counters of flow changes, for a failure's message."""
    return {k: v for k, v in stats(net).items()
            if k.startswith(("teardown.", "reconcile.", "expired", "offloaded", "table_full", "switch_lost"))}


def no_orphans_no_duplicates(net, within: float = 10) -> int:
    """Two switch entries per offloaded flow, no match twice; the number of
    offloaded flows. The switch and the daemon are read one after the
    other: a flow torn down or offloaded between the two reads (a CI run
    once saw 2,376 entries for 1,191 flows, and 2,396 for 1,200, with the
    chatter still talking) makes one pair of reads disagree, so they are
    read again until they agree. An orphan or a missing entry stays, and
    fails after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        entries = switch_flow_entries(net)
        keys = [tuple((m.field_id, m.exact.value) for m in e.match) for e in entries]
        assert len(set(keys)) == len(keys), "duplicate entries"
        rows = [r for r in net.api("flow_list", {"refresh": False}) if r["offload"]]
        if len(entries) == 2 * len(rows):
            return len(rows)
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(entries)} entries for {len(rows)} offloaded flows, for {within}s; "
                                 f"the daemon counted {counted(net)}")
        time.sleep(0.5)


def test_kill_9_and_restart_keeps_the_fast_path(net, chatter, tmp_path):
    # a connection that closes, and a UDP flow that goes idle, while the daemon is down
    sink = host_tool(net.h2, "tcp-sink", "--port", "7100", "--out", str(tmp_path / "sink.json"))
    read_json(str(tmp_path / "sink.json.ready"))
    closer = host_tool(net.h1, "tcp-source", "--host", "192.0.2.2", "--port", "7100", "--bytes", "1000",
                       "--pause", "0.5", "--hold", "2", "--out", str(tmp_path / "closer.json"))
    closer_port = read_json(str(tmp_path / "closer.json.connected"))["local"][1]
    ping = host_tool(net.h1, "udp-ping", "--host", "192.0.2.2", "--port", "7000", "--sport", "7200",
                     "--count", "20", "--interval", "0.05", "--out", str(tmp_path / "ping.json"))
    wait_for(lambda: (f := flow_for(net, "tcp", sport=closer_port, dport=7100)) and f["offload"], 5, "the closer offloaded")
    wait_for(lambda: (f := flow_for(net, "udp", sport=7200)) and f["offload"], 5, "the short UDP flow offloaded")
    ping.wait(10)
    adopted_before = stats(net).get("reconcile.adopted", 0)

    k0, s0 = kernel_rx(net), switch_packets(net)
    # what the switch carries (the chatter's, the closer and the short UDP
    # flow): a chatter's UDP flow may have gone idle for its 3 s timeout on
    # a loaded machine, and is then not among them
    carried = offloaded(net)
    killed_at = time.monotonic()
    os.kill(net.daemon.pid, signal.SIGKILL)
    net.daemon.wait(10)
    time.sleep(DOWN)          # the outage itself, not a wait for anything
    t0 = time.monotonic()
    net.start_daemon()
    converged = wait_for(lambda: stats(net).get("reconcile.adopted", 0) > adopted_before and
                         time.monotonic() - t0, 30, "the new daemon's reconcile")
    OUTAGES["kill -9"] = time.monotonic() - killed_at
    # the closed and the idle flow are handed back after the restart
    # by its FIN: one the closer retransmits after the restart (its backoff
    # doubles from 0.2 s: they fall 6.2, 12.6 and 25.4 s after the close,
    # which is about 3 s before the restart), or one the new daemon relayed
    # before it adopted the flow (then not adopted, or handed back on
    # conntrack's event). 30 s: a CI run once waited 15 s in vain
    try:
        wait_for(lambda: not (f := flow_for(net, "tcp", sport=closer_port, dport=7100)) or not f["offload"], 30,
                 "the connection closed meanwhile handed back")
    except AssertionError as e:
        # a flake seen a few times (after test_backup in the same run, twice):
        # what the daemon, conntrack and the closer say, for the next one
        ct = sh("conntrack", "-L", "-p", "tcp", "--sport", str(closer_port), check=False)
        closer_out = tmp_path / "closer.json"
        raise AssertionError(f"{e}; the flow: {flow_for(net, 'tcp', sport=closer_port, dport=7100)}; conntrack: {ct!r}; "
                             f"the closer: {closer_out.read_text() if closer_out.exists() else 'not done'}; "
                             f"daemon stats: {stats(net)}") from None
    wait_for(lambda: not (f := flow_for(net, "udp", sport=7200)) or not f["offload"], 15,
             "the UDP flow idle meanwhile handed back")
    k1, s1 = kernel_rx(net), switch_packets(net)
    slow, fast = k1 - k0, s1 - s0
    print(f"\n[p4ft] {net.kind}: restart converged {converged:.2f}s after start; slow path {slow} of "
          f"{slow + fast} packets ({100 * slow / max(1, slow + fast):.3f}%)")
    assert slow < 0.01 * (slow + fast), f"{slow} slow-path packets of {slow + fast}"
    s = stats(net)
    # every flow the switch carried, but the closer (closed meanwhile)
    assert s["reconcile.adopted"] - adopted_before >= carried - 1, (carried, counted(net))
    assert s.get("reconcile.orphans_deleted", 0) <= 2     # at most the closer's two, if its FIN came first
    # and every chatter's flow offloaded: one idle for its timeout meanwhile
    # comes back with its next datagram
    try:
        wait_for(lambda: no_orphans_no_duplicates(net) >= N_TCP + N_UDP, 20, "every chatter's flow offloaded")
    except AssertionError as e:
        raise AssertionError(f"{e}; the daemon counted {counted(net)}; the kernel's neighbours: "
                             f"{sh('ip', 'neigh', check=False)!r}") from None
    closer.wait(30)
    sink.wait(30)


def test_switch_restart_reinstalls_the_pipeline_and_every_flow(net, chatter):
    s1 = net.net.get("s1")
    lost = stats(net).get("switch_lost", 0)
    before = offloaded(net)
    killed_at = time.monotonic()
    s1.proc.kill()
    s1.proc.wait(10)
    t0 = time.monotonic()
    s1.start([])
    wait_for(lambda: stats(net).get("switch_lost", 0) > lost, 10, "the daemon to notice")
    back = wait_for(lambda: len(switch_flow_entries(net, missing_ok=True) or []) >= 2 * before and
                    time.monotonic() - t0, 60, "every flow back in the switch", interval=0.2)
    OUTAGES["switch restart"] = time.monotonic() - killed_at
    print(f"\n[p4ft] {net.kind}: switch restarted; {before} flows back in the switch {back:.2f}s after its start")
    assert no_orphans_no_duplicates(net) == before


def test_stop_keep_flows_leaves_them_for_the_next_daemon(net, chatter):
    carried = offloaded(net)
    stopped_at = time.monotonic()
    assert "stay in the switch" in p4ft("stop", "--keep-flows", socket_path=net.socket)
    net.daemon.wait(30)
    assert len(switch_flow_entries(net)) == 2 * carried          # the switch still forwards them
    # its read made by the second process, set going before its conntrack
    # dump (the kill -9 test above has the daemon read itself, as below
    # 20,000 connections)
    net.start_daemon(extra_args=["--read-apart-from", "0"])
    try:
        wait_for(lambda: stats(net).get("reconcile.adopted", 0) >= carried, 30, "the next daemon's reconcile")
    except AssertionError as e:     # a CI run once: what it adopted, wrote and deleted instead
        raise AssertionError(f"{e}; {carried} flows carried at the stop; the daemon counted {counted(net)}") from None
    OUTAGES["stop --keep-flows"] = time.monotonic() - stopped_at
    s = stats(net)
    assert s.get("reconcile.written", 0) == 0
    assert s.get("reconcile.read_apart") == 1 and not s.get("reconcile.reader_failed"), s
    assert s.get("reconcile.read_ahead", 0) + s.get("reconcile.read_ahead_dropped", 0) == 1, s
    assert no_orphans_no_duplicates(net) == carried


def test_a_plain_stop_hands_everything_back(net, chatter):
    """SIGTERM, as the service manager stops it: the switch is emptied."""
    stopped_at = time.monotonic()
    net.daemon.send_signal(signal.SIGTERM)
    net.daemon.wait(60)
    assert switch_flow_entries(net) == []
    net.start_daemon()
    wait_for(lambda: stats(net)["flows_offloaded_now"] >= N_TCP + N_UDP, 60, "every flow offloaded again",
             interval=0.5)
    OUTAGES["plain stop"] = time.monotonic() - stopped_at


def test_no_connection_broke(chatter):
    """No TCP connection broke, and each got its echoes (retransmitted over
    an outage). A UDP flow loses what it sends while the path is down, and
    what the embedded target drops when its ports' receive buffers overflow
    (seen during the set-up's burst of first packets, thousands of frames
    on a loaded machine): each UDP flow still got more than half its echoes,
    and echoes came until the end."""
    for proto, (p, out) in chatter.items():
        p.wait(DURATION + 60)
        r = read_json(out)
        print(f"\n[p4ft] {proto}: {r['echoed']} echoes of {r['sent']}, at most {r['most_lost'][0]} lost by one; "
              f"the longest without sending {r['longest_send_gap'][0]}s, without an echo "
              f"{r['longest_echo_gap'][0]}s; the tests' outages (s): { {k: round(v, 1) for k, v in OUTAGES.items()} }")
        assert r["broken"] == [], f"{proto}: {len(r['broken'])} broken"
        assert r["silent"] == [] and r["short"] == [], (
            f"{proto}: {len(r['short'])} of {len(r['ports'])} connections had fewer than half theirs echoed "
            f"(local ports {r['short'][:20]}...), {len(r['silent'])} none")
        # the chatter waits a second for the last echoes: 1.0 when they flow
        assert r["quiet_at_end"] is not None and r["quiet_at_end"] <= 3, f"{proto}: no echo in the last " \
            f"{r['quiet_at_end']}s"
        if proto == "tcp":
            assert r["echoed"] > 0.9 * r["sent"], (
                f"tcp: {r['echoed']} echoes of {r['sent']}; the longest without sending (seconds, until, local "
                f"port): {r['longest_send_gap']}, without an echo: {r['longest_echo_gap']}")
