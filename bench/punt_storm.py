#!/usr/bin/env python3
"""A punt storm: h3, on a port of its own, floods the router with TCP SYNs to
random ports while h1 keeps opening connections through it to h2. Measured:
what the flood sent, what the switch dropped over the punt rate and what it
punted from the flooding port, the daemon's API latency (a `stats` call
every 100 ms), time-to-offload of the arriving connections, and their setup
times. Run with the punt meter (the daemon's default rate) and without it
(--punt-rate 0), on each switch.

    sudo .venv/bin/python bench/punt_storm.py [--switch bmv2,soft] [--seconds 30] [--pps N]

tests/test_punt_storm.py runs storm() with the default rate and asserts on it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("controller", "bmv2-topo", "tests", "bench"):
    sys.path.insert(0, str(ROOT / sub))

from p4ft_topo import LAN2, WAN  # noqa: E402

# The flood: 20,000 SYNs/s into BMv2. The embedded target (Python) takes about
# 17,000 misses/s with nothing else to do; at 20,000/s its own port queues
# overflow before any meter, which measures the Python switch, not the punt
# path. It gets 6,000/s, three times the default punt rate.
FLOOD_PPS = {"bmv2": 20000, "soft": 6000}


def percentile(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else None


def storm(net, tmp: Path, seconds: float = 30, pps: float = 20000, arrivals: int = 20,
          connect_timeout: float = 5.0) -> dict:
    """One storm through a running FlowtableNet(third_host=True); its results.
    connect_timeout: how long each arriving connection may take to set up,
    and then to get its echo."""
    from integration import host_tool, read_json
    s0 = net.api("stats")
    echo = host_tool(net.h2, "echo", "--port", "7000", "--out", str(tmp / "echo.json"))
    read_json(str(tmp / "echo.json.ready"))
    net.api("offload_timing", {"reset": True})
    api_ms, stop = [], threading.Event()

    def probe():
        from p4flowtable.api import ApiError
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                net.api("stats")
            except ApiError:
                api_ms.append(float("inf"))     # no answer counts as the slowest
            else:
                api_ms.append(1000 * (time.monotonic() - t0))
            stop.wait(0.1)
    prober = threading.Thread(target=probe)
    flood = host_tool(net.h3, "syn-flood", "--ifname", net.h3.defaultIntf().name,
                      "--src", LAN2["host"].split("/")[0], "--dst", LAN2["router"], "--src-mac", net.h3.MAC(),
                      "--dst-mac", LAN2["rep_mac"], "--pps", str(pps), "--seconds", str(seconds),
                      "--out", str(tmp / "flood.json"))
    read_json(str(tmp / "flood.json.started"))
    t0 = time.monotonic()
    prober.start()
    arr = host_tool(net.h1, "arrivals", "--host", WAN["host"].split("/")[0], "--port", "7000",
                    "--count", str(arrivals), "--interval", str(seconds / arrivals * 0.9), "--hold", "5",
                    "--connect-timeout", str(connect_timeout), "--out", str(tmp / "arrivals.json"))
    # every arrival, while all are still open: offloaded?
    # (each connection given connect_timeout to connect, and as long for its echo)
    ports = read_json(str(tmp / "arrivals.json.all"),
                      timeout=seconds + (2 * connect_timeout + 1) * arrivals + 60)["ports"]
    rows = {f["orig"]["sport"]: f for f in net.api("flow_list", {"refresh": False}) if f["proto"] == "tcp"}
    offloaded = sum(1 for p in ports if p in rows and rows[p]["offload"])
    fl = read_json(str(tmp / "flood.json"), timeout=seconds + 60)
    storm_s = time.monotonic() - t0
    stop.set()
    prober.join()
    conns = read_json(str(tmp / "arrivals.json"), timeout=120)["connections"]
    arr.wait(10)
    flood.wait(10)
    s = net.api("stats")
    lat_ms = [1000 * x for x in net.api("offload_timing", {"samples": True})["latency"]]
    echo.kill()
    return {"switch": net.kind, "punt_rate": s["punt_rate"], "punt_burst": s["punt_burst"],
            "storm_s": storm_s, "flood_sent": fl["sent"], "flood_pps": fl["pps"], "flood_refused": fl["failed"],
            "switch_dropped": s.get(f"punt_dropped.port.{LAN2['port']}", 0),
            "punted_from_flooding_port": s["punt.PORT_UNBOUND"] - s0["punt.PORT_UNBOUND"],
            "packet_in_dropped": s["packet_in_dropped"] - s0["packet_in_dropped"],
            "api_calls": len(api_ms), "api_p50_ms": percentile(api_ms, 0.5), "api_p99_ms": percentile(api_ms, 0.99),
            "api_max_ms": max(api_ms) if api_ms else None,
            "offloads": len(lat_ms), "arrivals": arrivals, "arrivals_offloaded": offloaded, "arrivals_ok": sum(1 for c in conns if c["ok"]),
            "offload_p50_ms": percentile(lat_ms, 0.5), "offload_p99_ms": percentile(lat_ms, 0.99),
            "setup_max_s": max(c["setup_s"] for c in conns), "daemon_alive": net.daemon.poll() is None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--switch", default="bmv2,soft" if shutil.which("simple_switch_grpc") else "soft")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--pps", type=float, help="flood rate (default: FLOOD_PPS, by switch)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/punt_storm.json"))
    a = ap.parse_args()
    from mininet.log import setLogLevel
    from p4ft_topo import FlowtableNet
    from record import save
    setLogLevel("warning")
    results = []
    for kind in a.switch.split(","):
        for extra in ([], ["--punt-rate", "0"]):
            net = FlowtableNet(kind, third_host=True, daemon_args=extra)
            try:
                net.start()
                pps = a.pps or FLOOD_PPS.get(kind, 20000)
                r = storm(net, Path(tempfile.mkdtemp(prefix="p4ft-storm-")), a.seconds, pps)
                r["flood_rate"] = pps
            finally:
                net.stop()
            print(r, flush=True)
            results.append(r)
    save(a.out, {"seconds": a.seconds, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
