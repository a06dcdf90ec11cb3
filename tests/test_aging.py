"""Aging, on each available switch, both ways: on the switch's own idle
detection (idle timeouts), and by reading counters near expiry (as for a
target that cannot age entries). A flow with traffic in one direction only
stays offloaded and keeps its conntrack entry alive; once silent it expires
within timeout + 2 s."""

import time

import pytest

from integration import flow_for, forward_packets, host_tool, read_json, start_net, stats, targets, wait_for
from p4ft_topo import make_ruleset

pytestmark = pytest.mark.integration
TIMEOUT = 2.0
LEASE = 4.0      # conntrack lease while offloaded; renewed every LEASE / 2

RULESET = make_ruleset("meta l4proto { tcp, udp } flow add @ft")


def _params():
    return [pytest.param((p.values[0], mode), marks=p.marks, id=f"{p.id}-{mode}")
            for p in targets() for mode in ("idle-timeouts", "counters")]


@pytest.fixture(scope="module", params=_params())
def net(request):
    kind, mode = request.param
    args = ["--ct-lease", str(LEASE)] + (["--no-idle-timeouts"] if mode == "counters" else [])
    n = start_net(kind, ruleset=RULESET, timeouts={"ft": TIMEOUT}, poll_interval=0.25, daemon_args=args)
    n.aging_mode = mode
    yield n
    n.stop()


def test_one_way_traffic_keeps_the_flow_and_its_conntrack_entry(net, tmp_path):
    echo = str(tmp_path / "echo.json")
    srv = host_tool(net.h2, "udp-echo", "--port", "7301", "--out", echo, "--max-replies", "3")
    read_json(echo + ".ready")
    try:
        ping = str(tmp_path / "ping.json")
        host_tool(net.h1, "udp-ping", "--host", "192.0.2.2", "--port", "7301", "--sport", "7302",
                  "--count", "3", "--out", ping).wait(10)
        assert read_json(ping)["replies"] == 3
        wait_for(lambda: (f := flow_for(net, "udp", sport=7302, cached=True)) and f["offload"], 3,
                 "the UDP flow to be offloaded")
        before = stats(net)
        fwd = forward_packets(net)

        # 8 s of h1 -> h2 only: 4 timeouts, 2 conntrack leases
        out = str(tmp_path / "stream.json")
        stream = host_tool(net.h1, "udp-stream", "--host", "192.0.2.2", "--port", "7301", "--sport", "7302",
                           "--count", "40", "--interval", "0.2", "--out", out)
        end = time.monotonic() + 8.5
        while stream.poll() is None and time.monotonic() < end:
            f = flow_for(net, "udp", sport=7302, cached=True)
            assert f is not None and f["offload"], f"one-way flow lost its offload mid-stream: {f}"
            time.sleep(0.25)
        assert stream.wait(5) == 0
        sent = read_json(out)
        after = stats(net)
        assert after.get("expired", 0) == before.get("expired", 0)
        assert after.get("teardown.ct_destroyed", 0) == before.get("teardown.ct_destroyed", 0)
        if net.aging_mode == "idle-timeouts":
            # the silent reply direction was reported idle and checked against the other one
            assert after.get("aging.idle_notifications", 0) > before.get("aging.idle_notifications", 0)
        else:
            # no notifications; counters read near expiry, a few times in 8 s, not every tick
            assert after.get("aging.idle_notifications", 0) == 0
            reads = after.get("aging.flows_read", 0) - before.get("aging.flows_read", 0)
            assert 2 <= reads <= 8, reads
        assert after.get("aging.ct_lease_renewed", 0) >= before.get("aging.ct_lease_renewed", 0) + 2
        assert forward_packets(net) - fwd < 4          # the switch carried the stream
        assert len(read_json(echo)["received"]) >= 3 + 40 - 1

        # silent now: gone within timeout + 2 s of the last packet, entry kept by the kernel
        wait_for(lambda: not flow_for(net, "udp", sport=7302, cached=True)["offload"], TIMEOUT + 4,
                 "the silent flow to expire")
        lag = time.time() - sent["last_sent_at"]
        assert lag <= TIMEOUT + 2.0, f"expired {lag:.2f}s after the last packet (timeout {TIMEOUT}s)"
        assert stats(net)["expired"] == before.get("expired", 0) + 1
        assert flow_for(net, "udp", sport=7302, cached=True) is not None
    finally:
        srv.terminate()
        srv.wait(5)
