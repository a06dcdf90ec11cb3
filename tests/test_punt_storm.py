"""A punt storm, on each available switch (bench/punt_storm.py's storm): h3,
on a port of its own, floods the router with TCP SYNs to random ports for
30 s (20,000/s; 6,000/s into the embedded target) while h1 keeps opening connections through the router to h2.
The switch meters what each port punts (the daemon's default --punt-rate)
and drops the rest, counted; every arriving connection is set up and
offloaded, and the daemon keeps answering. The bounds on time here are
functional (within a second: a 2-core CI machine runs the flood, the switch
and the daemon at once); the figures themselves (tens of milliseconds) are
bench/punt_storm.py's, in docs/benchmarks.md."""

import os

import pytest

from integration import net_per_switch
from punt_storm import FLOOD_PPS, storm

pytestmark = pytest.mark.integration
SECONDS = float(os.environ.get("P4FT_STORM_SECONDS", 30))
ARRIVALS = 20
RATE, BURST = 2000, 500          # the daemon's defaults (punt.py)
# The flood rate by switch: bench/punt_storm.py's FLOOD_PPS, which says why
# the embedded target gets less. P4FT_STORM_PPS overrides both.

net = net_per_switch(third_host=True)


def test_a_syn_flood_is_metered_and_the_daemon_keeps_up(net, tmp_path):
    pps = float(os.environ.get("P4FT_STORM_PPS", FLOOD_PPS.get(net.kind, 20000)))
    r = storm(net, tmp_path, SECONDS, pps, ARRIVALS)
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
