#!/usr/bin/env python3
"""Aging that scales: expiry lag and aging work at N offloaded flows.

For each switch and each N (1k, 10k, 100k), one daemon and one switch:

1. N background TCP flows are offloaded (ctnetlink-created conntrack
   entries; TCP timeout 3600 s, so they stay for the run, their entries
   ageing in the switch the whole time).
2. Setup rate while those N are aged: a burst of 10,000 more TCP flows,
   flows per second from first decision to last write (after warm-up flows
   over the same hosts have come and gone, so next hops are cached for
   every N alike).
3. Expiry: PROBES UDP flows with a short timeout are offloaded and never
   hit. For each: lag = entries removed - entries installed, against the
   timeout. Over the window from their creation to the last removal:
   daemon and switch CPU seconds per second, and switch entries read per
   expiry (from the daemon's counters).

    sudo .venv/bin/python bench/aging.py [--flows 1000,10000,100000] [--switch bmv2,soft]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from offload_rate import SOCK, call, create_entries, percentile, rig  # noqa: E402
from p4ft_topo import wait_until  # noqa: E402
from record import cpu_seconds, save  # noqa: E402

UDP = 17
BASE_PROBE = 1_000_000     # probe and burst flow indices start above every N
BASE_BURST = 2_000_000
WARM = 400                 # UDP flows over the burst's hosts, expired before it


def offloaded_now() -> int:
    # "counters", not "stats": polling must not cost the daemon O(flows)
    return call("counters", path=SOCK).get("offloaded", 0)


def one_size(switch: str, n: int, burst: int, probes: int, timeout: float) -> dict:
    with rig(switch, "aging", ("--timeout", "ft/tcp=3600", "--timeout", f"ft/udp={timeout}")) as r:
        grpc, d = r.grpc, r.daemon
        # 1. N background flows
        t0 = time.monotonic()
        asyncio.run(create_entries(range(n)))
        wait_until(lambda: offloaded_now() >= n, 60 + n / 200, f"{n} background flows offloaded", 0.2)
        setup_s = time.monotonic() - t0
        # 2. setup rate of a burst while the N are aged. Warm first, for
        # every N alike: the burst's hosts' next hops are looked up and
        # cached by flows that have expired again before it starts
        warm_expired = call("counters", path=SOCK).get("expired", 0) + WARM
        asyncio.run(create_entries(range(BASE_BURST - WARM, BASE_BURST), proto=UDP))
        wait_until(lambda: call("counters", path=SOCK).get("expired", 0) >= warm_expired, timeout + 30,
                   "warm-up flows expired", 0.2)
        base = offloaded_now()
        call("offload_timing", {"reset": True}, path=SOCK)
        asyncio.run(create_entries(range(BASE_BURST, BASE_BURST + burst)))
        t = wait_until(lambda: (x := call("offload_timing", path=SOCK))["offloaded"] >= base + burst and x,
                       120, "burst offloaded", 0.2)
        rate = burst / (t["last_offloaded"] - t["first_decided"])
        # 3. probes: offloaded, never hit, expire after `timeout`
        s0 = call("counters", path=SOCK)
        c0 = (time.monotonic(), cpu_seconds(d.pid), cpu_seconds(grpc.pid))
        asyncio.run(create_entries(range(BASE_PROBE, BASE_PROBE + probes), proto=UDP))
        wait_until(lambda: call("counters", path=SOCK).get("expired", 0) >= s0.get("expired", 0) + probes,
                   timeout + 60, "probes expired", 0.2)
        c1 = (time.monotonic(), cpu_seconds(d.pid), cpu_seconds(grpc.pid))
        s1 = call("counters", path=SOCK)
        log = call("expiry_timing", path=SOCK)
        lags = [removed - since - timeout for since, packets, _decided, removed in log if packets == 0]
        window = c1[0] - c0[0]
        reads = s1.get("aging.flows_read", 0) - s0.get("aging.flows_read", 0)
        expired = s1.get("expired", 0) - s0.get("expired", 0)
        return {
            "flows": n, "background_setup_s": setup_s,
            "burst": {"flows": burst, "flows_per_s": rate},
            "expiry": {"probes": probes, "timeout_s": timeout, "expired": expired,
                       "lag_over_timeout_s": {"p50": percentile(lags, 0.5), "p99": percentile(lags, 0.99),
                                              "max": max(lags)},
                       "samples_s": lags},
            "work": {"window_s": window,
                     "daemon_cpu_per_s": (c1[1] - c0[1]) / window,
                     "switch_cpu_per_s": (c1[2] - c0[2]) / window,
                     "entries_read_per_expiry": 2 * reads / max(1, expired),
                     "idle_notifications": s1.get("aging.idle_notifications", 0)
                     - s0.get("aging.idle_notifications", 0)},
        }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", default="0,1000,10000,100000")
    ap.add_argument("--switch", default="bmv2,soft" if shutil.which("simple_switch_grpc") else "soft")
    ap.add_argument("--burst", type=int, default=10000)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=5.0, help="probe flows' timeout, seconds")
    ap.add_argument("--out", default=str(ROOT / "bench/results/aging.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("aging: needs root", file=sys.stderr)
        return 1
    result = {"bench": "aging", "runs": []}
    for switch in a.switch.split(","):
        for n in (int(x) for x in a.flows.split(",")):
            r = one_size(switch, n, a.burst, a.probes, a.timeout)
            r["switch"] = switch
            result["runs"].append(r)
            e, w = r["expiry"], r["work"]
            print(f"{switch} N={n}: burst {r['burst']['flows_per_s']:.0f} flows/s; expiry lag over timeout "
                  f"p50 {e['lag_over_timeout_s']['p50']:.2f} s, max {e['lag_over_timeout_s']['max']:.2f} s "
                  f"({e['expired']} of {e['probes']}); daemon CPU {w['daemon_cpu_per_s']:.2f} s/s, switch CPU "
                  f"{w['switch_cpu_per_s']:.2f} s/s, entries read per expiry {w['entries_read_per_expiry']:.1f}",
                  flush=True)
    for switch in a.switch.split(","):
        runs = [r for r in result["runs"] if r["switch"] == switch]
        zero = min(runs, key=lambda r: r["flows"])
        for r in runs:
            r["burst"]["ratio_to_fewest_flows"] = r["burst"]["flows_per_s"] / zero["burst"]["flows_per_s"]
    save(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
