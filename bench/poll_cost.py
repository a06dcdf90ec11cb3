#!/usr/bin/env python3
"""Cost of one full counter poll at N offloaded flows (aging's input before it
moved to the switch's idle timeouts; kept as the comparison).

N flows' entries are written to the switch, then the daemon's own driver reads
every direct counter once (`P4RuntimeDriver.stats`, one wildcard read), timed
in wall-clock and in this process's CPU time.

    sudo .venv/bin/python bench/poll_cost.py [--flows 1000,10000] [--switch bmv2]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))
sys.path.insert(0, str(ROOT / "bmv2-topo"))

import p4flowtable  # noqa: E402,F401  (first: it loads the P4Runtime protobufs)
from p4.v1 import p4runtime_pb2 as p4r  # noqa: E402

from p4flowtable.ip import flow_entry  # noqa: E402
from p4flowtable.nexthop import NextHops, assign  # noqa: E402
from p4flowtable.model import Dir, Flow, FlowRoute, FlowTuple  # noqa: E402
from p4flowtable.offload import P4RuntimeDriver  # noqa: E402
from p4flowtable.p4info import P4Schema  # noqa: E402
from p4flowtable.p4runtime import Session  # noqa: E402
from p4ft_topo import switch_on_veths  # noqa: E402
from record import save  # noqa: E402

LINKS = [("p4ftb-sw1", "p4ftb-h1"), ("p4ftb-sw2", "p4ftb-h2")]
A = ipaddress.IPv4Address
ROUTES = (FlowRoute(2, "02:00:00:00:02:01", "00:00:00:00:00:02", 1500),
          FlowRoute(1, "02:00:00:00:01:fe", "00:00:00:00:00:01", 1500))


def flows(n: int) -> list[Flow]:
    out = []
    for i in range(n):
        orig = FlowTuple(A(int(A("10.0.0.0")) + i // 60000), A("192.0.2.2"), 6, 1024 + i % 60000, 80)
        reply = FlowTuple(A("192.0.2.2"), A(int(A("192.0.2.100")) + i // 60000), 6, 80, 1024 + i % 60000)
        out.append(Flow(i, (orig, reply), "ft", 30, iif=(1, 2), routes=ROUTES))
    return out


async def measure(grpc: str, schema: P4Schema, n: int) -> dict:
    s = Session(grpc, election_id=n + 1)
    await s.connect(30)
    await s.set_pipeline(schema.p4info, (ROOT / "p4src/build/flowtable.json").read_bytes())
    fl = flows(n)
    t0 = time.monotonic()
    nexthops = NextHops(schema)
    await s.write([nexthops.update(nh, p4r.Update.INSERT) for nh in assign(nexthops, fl)])
    for k in range(0, n, 500):
        await s.write([p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=flow_entry(schema, f, d)))
                       for f in fl[k:k + 500] for d in Dir])
    install = time.monotonic() - t0
    driver = P4RuntimeDriver(s, schema)
    c0, w0 = time.process_time(), time.monotonic()
    stats = await driver.stats(fl)
    wall, cpu = time.monotonic() - w0, time.process_time() - c0
    await s.close()
    assert len(stats) == n, f"read counters of {len(stats)} of {n} flows"
    return {"flows": n, "entries": 2 * n, "poll_seconds": wall, "poll_cpu_seconds": cpu,
            "entries_per_second": 2 * n / wall, "install_seconds": install}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", default="1000,10000,100000")
    ap.add_argument("--switch", default="bmv2" if shutil.which("simple_switch_grpc") else "soft")
    ap.add_argument("--out", default=str(ROOT / "bench/results/poll_cost.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("poll_cost: needs root", file=sys.stderr)
        return 1
    schema = P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")
    with switch_on_veths(a.switch, LINKS) as grpc:
        results = [asyncio.run(measure(grpc, schema, int(n))) for n in a.flows.split(",")]
    save(a.out, {"bench": "poll_cost", "switch": a.switch, "results": results})
    print(f"switch {a.switch}")
    for r in results:
        print(f"{r['flows']:>7} flows: poll {r['poll_seconds']:.2f} s wall, {r['poll_cpu_seconds']:.2f} s "
              f"controller CPU, {r['entries_per_second']:.0f} entries/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
