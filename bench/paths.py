#!/usr/bin/env python3
"""Fast path vs slow path vs a minimal L3 forwarder, same switch, same hosts.

iperf3 TCP from h1 to h2 in the Mininet topology, four ways:
- offload: the seed ruleset; the flow is masqueraded, and offloaded once
  established (the NAT action);
- routed: the seed ruleset without masquerade; the flow is offloaded as a
  routed one (the route action: TTL and next hop, like the forwarder);
- slow: a ruleset with no offload statement; every packet is punted, goes
  through the router namespace's kernel and back out as a PacketOut;
- l3fwd: the switch runs p4src/bench/l3fwd.p4 (one LPM table) instead, no
  controller, no NAT.

    sudo .venv/bin/python bench/paths.py [--switch auto|bmv2|soft] [--seconds 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))
sys.path.insert(0, str(ROOT / "bmv2-topo"))

from mininet.log import setLogLevel  # noqa: E402
import p4flowtable  # noqa: E402,F401  (first: it loads the P4Runtime protobufs)
from p4.v1 import p4runtime_pb2 as p4r  # noqa: E402

from p4flowtable.p4info import P4Schema, encode  # noqa: E402
from p4flowtable.p4runtime import Session  # noqa: E402
from p4ft_topo import LAN, WAN, FlowtableNet, make_ruleset  # noqa: E402
from record import medians, save  # noqa: E402


def iperf(net: FlowtableNet, seconds: float) -> dict:
    server = net.h2.popen(["iperf3", "-s", "-1", "-p", "5201"])
    try:
        end = time.monotonic() + 10
        while ":5201 " not in net.h2.cmd("ss -ltn"):
            if time.monotonic() > end:
                raise TimeoutError("iperf3 server did not start")
            time.sleep(0.05)
        out = net.h1.cmd(f"iperf3 -c 192.0.2.2 -p 5201 -t {seconds} -J")
    finally:
        server.wait(10)
    js = json.loads(out)
    end = js["end"]
    return {"bits_per_second": end["sum_received"]["bits_per_second"],
            "bytes": end["sum_received"]["bytes"], "retransmits": end["sum_sent"].get("retransmits")}


async def program_l3fwd(net: FlowtableNet) -> None:
    schema = P4Schema.from_file(ROOT / "p4src/build/l3fwd.p4info.txtpb")
    s = Session(f"127.0.0.1:{net.grpc_port}")
    await s.connect(30)
    await s.set_pipeline(schema.p4info, (ROOT / "p4src/build/l3fwd.json").read_bytes())
    table, action = schema.table("routes_v4"), schema.action("route")
    ups = []
    for prefix, port, src_mac, host in (("10.0.1.0", 1, LAN["rep_mac"], net.h1),
                                          ("192.0.2.0", 2, WAN["rep_mac"], net.h2)):
        e = p4r.TableEntry(table_id=table.id)
        f = table.field("dst_addr")
        e.match.add(field_id=f.id, lpm=p4r.FieldMatch.LPM(
            value=encode(int(ipaddress.IPv4Address(prefix)), 32), prefix_len=24))
        e.action.action.action_id = action.id
        for name, v in (("port", port), ("src_mac", int(src_mac.replace(":", ""), 16)),
                        ("dst_mac", int(host.defaultIntf().MAC().replace(":", ""), 16))):
            p = action.param(name)
            e.action.action.params.add(param_id=p.id, value=encode(v, p.bitwidth))
        ups.append(p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=e)))
    await s.write(ups)
    await s.close()


def run(mode: str, switch: str, seconds: float) -> dict:
    if mode == "l3fwd":
        net = FlowtableNet(switch, daemon=False).start()
    else:
        rules = {"offload": make_ruleset(), "routed": make_ruleset(nat=False),
                 "slow": make_ruleset("counter")}[mode]
        net = FlowtableNet(switch, ruleset=rules).start()
    try:
        if mode == "l3fwd":
            asyncio.run(program_l3fwd(net))
            net.h1.cmd(f"ip neigh replace {LAN['router']} lladdr {LAN['rep_mac']} dev h1-eth0")
            net.h2.cmd(f"ip neigh replace {WAN['router']} lladdr {WAN['rep_mac']} dev h2-eth0")
        r = iperf(net, seconds)
        r.update(mode=mode, switch=net.kind)
        return r
    finally:
        net.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--switch", default="auto")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the four modes, interleaved")
    ap.add_argument("--out", default=str(ROOT / "bench/results/paths.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("paths: needs root (Mininet)", file=sys.stderr)
        return 1
    setLogLevel("warning")
    # The modes take turns, so that a slow spell of the shared machine hits
    # them alike; each mode's median over the rounds makes the ratios.
    modes = ("offload", "routed", "slow", "l3fwd")
    samples = [run(m, a.switch, a.seconds) for _ in range(a.rounds) for m in modes]
    results = medians(samples, "mode", "bits_per_second", modes)
    by = {r["mode"]: r["bits_per_second"] for r in results}
    out = save(a.out, {"bench": "paths", "seconds": a.seconds, "rounds": a.rounds, "results": results,
                       "samples": samples,
                       "offload_over_slow": by["offload"] / by["slow"],
                       "offload_over_l3fwd": by["offload"] / by["l3fwd"],
                       "routed_over_slow": by["routed"] / by["slow"],
                       "routed_over_l3fwd": by["routed"] / by["l3fwd"]})
    for r in results:
        spread = ", ".join(f"{x / 1e6:.0f}" for x in r["rounds"])
        print(f"{r['switch']:<5} {r['mode']:<8} {r['bits_per_second'] / 1e6:8.1f} Mbit/s (median of {spread})")
    print(f"offloaded / slow path: {out['offload_over_slow']:.1f}x; "
          f"offloaded / l3fwd: {out['offload_over_l3fwd']:.2f}x; "
          f"routed offloaded / l3fwd: {out['routed_over_l3fwd']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
