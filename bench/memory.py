#!/usr/bin/env python3
"""Controller memory per tracked flow: conntrack mirror entry + offloaded flow.

Builds N synthetic masqueraded TCP flows in the same structures the daemon
uses (ConntrackMirror's indexes, Flowtables) and reports the RSS growth per
flow. No switch or kernel needed.

    .venv/bin/python bench/memory.py [--flows 100000,1000000]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))

from p4flowtable.conntrack import ConntrackMirror, CtEntry  # noqa: E402
from p4flowtable.core import FlowtableConfig, Flowtables  # noqa: E402
from p4flowtable.model import Flow, FlowFlag, FlowRoute, FlowTuple, ipv4  # noqa: E402
from record import save  # noqa: E402


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def build(n: int):
    mirror = ConntrackMirror(None)
    fts = Flowtables()
    fts.add_table(FlowtableConfig("ft", ("lan0", "wan0")))
    r1 = FlowRoute(2, "02:00:00:00:02:01", "00:00:00:00:00:02", 1500)
    r2 = FlowRoute(1, "02:00:00:00:01:fe", "00:00:00:00:00:01", 1500)
    # addresses built as the conntrack mirror builds them (ipv4(): shared)
    wan = ipv4("192.0.2.1")
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    for i in range(n):
        src = ipv4(base + i // 50000)
        dst = ipv4(0xC6336400 + (i % 50000) // 200)
        sport, dport = 1024 + i % 60000, 80 + i % 200
        orig = FlowTuple(src, dst, 6, sport, dport)
        reply = FlowTuple(dst, wan, 6, dport, 1024 + i // 50000)   # unique: (dst, dport) repeat per 50k
        e = CtEntry(i, orig, reply, 0x0E, 3, 86400)
        mirror._store(e)
        f = Flow(i, (orig, reply), "ft", 30.0, iif=(1, 2), routes=(r1, r2))
        f.flags = FlowFlag.HW
        fts.add(f)
    return mirror, fts


def measure(n: int) -> dict:
    gc.collect()
    before = rss()
    keep = build(n)
    gc.collect()
    after = rss()
    del keep
    return {"flows": n, "rss_bytes": after - before, "bytes_per_flow": (after - before) / n}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", default="100000,1000000")
    ap.add_argument("--out", default=str(ROOT / "bench/results/memory.json"))
    a = ap.parse_args()
    results = []
    for n in (int(x) for x in a.flows.split(",")):
        # a fresh interpreter per size, so one run's freed memory does not hide the next's
        res = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            return 1
        results.append(json.loads(res.stdout))
    save(a.out, {"bench": "memory", "results": results})
    for r in results:
        print(f"{r['flows']:>9} flows: {r['rss_bytes'] / 2**20:8.1f} MiB, {r['bytes_per_flow']:7.0f} B per flow")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(measure(int(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
