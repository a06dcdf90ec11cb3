"""Primary and backup controllers for one switch and one router, on each
available switch: P4Runtime arbitration is the only election. The backup
follows conntrack and writes nothing; when the primary dies it claims the
switch within 2 s and adopts what the switch carries."""

import collections
import json
import os
import signal
import socket
import time

import jsonschema
import pytest

from integration import ROOT, host_tool, net_per_switch, read_json, stats, switch_flow_entries, wait_for
from p4ft_topo import make_ruleset

pytestmark = pytest.mark.integration
N_TCP = 1000
DURATION = 45
BACKUP = "/run/p4ft-topo-backup.sock"

net = net_per_switch(ruleset=make_ruleset("meta l4proto { tcp, udp } flow add @ft"), poll_interval=0.25,
                     daemon_args=["--election-id", "10"])


@pytest.fixture(scope="module")
def backup(net):
    # its reconcile reads the switch's entries through a second process (at
    # 100,000 flows and more it would do so anyway: entryread.py)
    p = net.start_daemon(socket_path=BACKUP, extra_args=["--election-id", "5", "--read-apart-from", "0"],
                         log_name="backup.log")
    yield p
    p.terminate()
    p.wait(15)


@pytest.fixture(scope="module")
def chatter(net, backup, tmp_path_factory):
    d = tmp_path_factory.mktemp("chatter")
    server = host_tool(net.h2, "echo", "--port", "7000", "--out", str(d / "echo.json"))
    read_json(str(d / "echo.json.ready"))
    out = str(d / "tcp.json")
    client = host_tool(net.h1, "chatter", "--proto", "tcp", "--host", "192.0.2.2", "--port", "7000",
                       "--count", str(N_TCP), "--interval", "1", "--duration", str(DURATION), "--out", out)
    read_json(out + ".up", timeout=60)
    wait_for(lambda: stats(net)["flows_offloaded_now"] >= N_TCP, 60, f"{N_TCP} flows offloaded", interval=0.5)
    yield client, out
    client.kill()
    server.kill()


def backup_stats(net):
    return net.api("stats", socket_path=BACKUP)


@pytest.fixture(scope="module")
def watched():
    """What a monitor on the backup saw while it took over."""
    return {}


def test_the_backup_follows_conntrack_and_writes_nothing(net, chatter):
    b = backup_stats(net)
    assert (b["role"], b["election_id"]) == ("backup", 5)
    assert stats(net)["role"] == "primary"
    assert not b.get("offloaded") and not b.get("offload_batches") and not b.get("reconcile.written")
    mirrored = [r for r in net.api("flow_list", {"refresh": False}, socket_path=BACKUP) if r["proto"] == "tcp"]
    assert len(mirrored) >= N_TCP and not any(r["offload"] for r in mirrored)


def test_the_backup_takes_over_within_two_seconds_when_the_primary_dies(net, chatter, watched):
    mon = socket.socket(socket.AF_UNIX)
    mon.connect(BACKUP)
    mon.sendall(b'{"cmd": "monitor", "args": {}}\n')
    wait_for(lambda: backup_stats(net)["monitors"] >= 1, 10, "the monitor on the backup subscribed")
    os.kill(net.daemon.pid, signal.SIGKILL)
    t0 = time.monotonic()
    took = wait_for(lambda: backup_stats(net)["role"] == "primary" and time.monotonic() - t0, 10,
                    "the backup to become primary", interval=0.02)
    print(f"\n[p4ft] {net.kind}: backup primary {took:.2f}s after the primary was killed")
    assert took < 2.0
    b = wait_for(lambda: (b := backup_stats(net)).get("reconcile.adopted", 0) >= N_TCP and b, 10,
                 "the new primary's reconcile")
    assert b["election_id"] > 10      # raised above the highest election id the switch reported
    assert not b.get("reconcile.orphans_deleted")
    assert b.get("reconcile.read_apart") == 1 and not b.get("reconcile.reader_failed")
    entries = switch_flow_entries(net)
    keys = [tuple((m.field_id, m.exact.value) for m in e.match) for e in entries]
    assert len(set(keys)) == len(keys) == 2 * b["flows_offloaded_now"]
    watched["adopted"] = b["reconcile.adopted"]
    watched["events"] = events = []
    lines, deadline, adopts = mon.makefile("r", encoding="utf-8"), time.monotonic() + 30, 0
    assert json.loads(lines.readline()) == {"ok": True, "result": "monitoring"}
    while adopts < b["reconcile.adopted"] and time.monotonic() < deadline:
        mon.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            events.append(json.loads(lines.readline()))
        except TimeoutError:
            break
        adopts += events[-1]["event"] == "ADOPT"
    mon.close()


def test_a_monitor_sees_each_flow_adopted_before_anything_else_of_it(watched):
    """The new primary's reconcile tells a monitor of every flow it adopts
    (ADOPT), before what the read says of that flow (an EXPIRE, if it was
    idle): a monitor's story of a flow starts with the daemon taking it."""
    schema = json.loads((ROOT / "docs" / "p4ft.schema.json").read_text())
    first: dict[int, str] = {}
    for ev in watched["events"]:
        jsonschema.validate(ev, schema)
        if ev.get("orig", {}).get("dport") == 7000:      # the chatter's
            first.setdefault(ev["orig"]["sport"], ev["event"])
    adopted = [sport for sport, kind in first.items() if kind == "ADOPT"]
    kinds = collections.Counter(ev["event"] for ev in watched["events"])
    assert len(adopted) >= N_TCP, (len(adopted), len(first), watched["adopted"], kinds)
    assert set(first.values()) == {"ADOPT"}, {k: v for k, v in first.items() if v != "ADOPT"}
    assert all(ev["flowtable"] == "ft" for ev in watched["events"] if ev.get("event") == "ADOPT")


def test_no_connection_broke(chatter):
    client, out = chatter
    client.wait(DURATION + 60)
    r = read_json(out)
    assert r["broken"] == [] and r["echoed"] > 0.9 * r["sent"]
