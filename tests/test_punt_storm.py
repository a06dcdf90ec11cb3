"""A punt storm, on each available switch (bench/punt_storm.py's storm): h3,
on a port of its own, floods the router with TCP SYNs to random ports for
30 s (20,000/s; 6,000/s into the embedded target) while h1 keeps opening connections through the router to h2.
The switch meters what each port punts (the daemon's default --punt-rate)
and drops the rest, counted; every arriving connection is set up and
offloaded, and the daemon keeps answering. The bounds on time here are
functional (answers and offloads within a second, connections set up within
15 s: a 2-core CI machine runs the flood, the switch and the daemon at
once); the figures themselves (tens of milliseconds) are
bench/punt_storm.py's, in docs/benchmarks.md."""

import os

import pytest

from integration import net_per_switch
from punt_storm import FLOOD_PPS, storm

pytestmark = pytest.mark.integration
SECONDS = float(os.environ.get("P4FT_STORM_SECONDS", 30))
ARRIVALS = 20
RATE, BURST = 2000, 500          # the daemon's defaults (punt.py)
# An arriving connection's SYN and SYN-ACK go through the slow path while the
# flood keeps both cores busy (with the embedded target, the Python switch
# takes one of them): on a slower 2-core machine some needed the kernel's
# third or fourth SYN (sent 3 s and 7 s after the first) for both of them
# to get through, and failed a 5 s bound, the same before and after the
# changes of the run that saw it. 15 s allows the fourth SYN and its answer:
# a functional bound (set up at all), not the figure (bench/punt_storm.py's
# setup_max_s).
CONNECT_TIMEOUT = 15.0
# The flood rate by switch: bench/punt_storm.py's FLOOD_PPS, which says why
# the embedded target gets less. P4FT_STORM_PPS overrides both.

net = net_per_switch(third_host=True)


def test_a_syn_flood_is_metered_and_the_daemon_keeps_up(net, tmp_path):
    pps = float(os.environ.get("P4FT_STORM_PPS", FLOOD_PPS.get(net.kind, 20000)))
    r = storm(net, tmp_path, SECONDS, pps, ARRIVALS, connect_timeout=CONNECT_TIMEOUT)
    print(f"\n[punt storm] {r}")
    assert (r["punt_rate"], r["punt_burst"]) == (RATE, BURST)
    assert r["daemon_alive"]
    assert r["switch_dropped"] > 0, "the flood went over the rate and the switch dropped the excess"
    # what the flooding port sent up is bounded by the meter (10% for the
    # clocks of switch and test disagreeing on when the storm began and ended)
    assert r["punted_from_flooding_port"] <= 1.1 * (RATE * r["storm_s"] + BURST), r
    assert r["arrivals_ok"] == ARRIVALS, r
    # every arrival was offloaded, each once at least
    assert r["arrivals_offloaded"] == ARRIVALS and r["offloads"] >= ARRIVALS, r
    assert r["offload_p99_ms"] < 1000, r
    assert r["api_p99_ms"] < 1000, r
