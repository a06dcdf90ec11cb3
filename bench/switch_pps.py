#!/usr/bin/env python3
"""Packets per second on the offloaded path, per switch kind, same traffic.

Two veth pairs of its own (p4ftb-*); the switch under test bridges
port 1 and port 2; one masqueraded TCP flow is offloaded by writing its two
entries over P4Runtime; a burst of that flow's packets is sent into port 1
and counted as it leaves port 2. Writes JSON (git revision, switch) and prints
a table.

    sudo .venv/bin/python bench/switch_pps.py [--packets 50000] [--switch bmv2,soft] [--rounds 5]

On BMv2 the same burst also goes through p4src/bench/l3fwd.p4 (one LPM
table), the yardstick of the offloaded path's packets/s, and through the
flowtable program with the flow offloaded as a routed one (no NAT: the
route action, like for like with the forwarder).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))
sys.path.insert(0, str(ROOT / "bmv2-topo"))

import p4flowtable  # noqa: E402,F401  (first: it loads the P4Runtime protobufs)
from p4.v1 import p4runtime_pb2 as p4r  # noqa: E402
from scapy.all import IP, TCP, Ether, Raw  # noqa: E402

from p4flowtable.ip import flow_entry  # noqa: E402
from p4flowtable.nexthop import NextHops, assign  # noqa: E402
from p4flowtable.model import Dir, Flow, FlowRoute, FlowTuple  # noqa: E402
from p4flowtable.offload import port_entry  # noqa: E402
from p4flowtable.p4info import P4Schema, encode  # noqa: E402
from p4flowtable.p4runtime import Session  # noqa: E402
from p4ft_topo import free_tcp_port, switch_command, veth_links, wait_port  # noqa: E402
from p4ft_topo import switch_on_veths  # noqa: E402
from record import cpu_seconds, medians, save  # noqa: E402

A = ipaddress.IPv4Address
LINKS = [("p4ftb-sw1", "p4ftb-h1"), ("p4ftb-sw2", "p4ftb-h2")]



async def program_l3fwd(grpc: str) -> None:
    """The yardstick p4src/bench/l3fwd.p4 with a route to port 2."""
    schema = P4Schema.from_file(ROOT / "p4src/build/l3fwd.p4info.txtpb")
    s = Session(grpc)
    await s.connect(30)
    await s.set_pipeline(schema.p4info, (ROOT / "p4src/build/l3fwd.json").read_bytes())
    table, action = schema.table("routes_v4"), schema.action("route")
    e = p4r.TableEntry(table_id=table.id)
    f = table.field("dst_addr")
    e.match.add(field_id=f.id, lpm=p4r.FieldMatch.LPM(value=encode(int(A("192.0.2.0")), 32), prefix_len=24))
    e.action.action.action_id = action.id
    for name, v in (("port", 2), ("src_mac", 0x020000000201), ("dst_mac", 0x000000000002)):
        p = action.param(name)
        e.action.action.params.add(param_id=p.id, value=encode(v, p.bitwidth))
    await s.write([p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=e))])
    await s.close()


async def program(grpc: str, schema: P4Schema, nat: bool = True) -> None:
    """The flowtable program with the burst's flow offloaded: masqueraded
    (the NAT action), or routed without NAT (the route action)."""
    s = Session(grpc)
    await s.connect(30)          # waits for the switch to come up
    await s.set_pipeline(schema.p4info, (ROOT / "p4src/build/flowtable.json").read_bytes())
    orig = FlowTuple(A("10.0.1.1"), A("192.0.2.2"), 6, 40000, 80)
    reply = (FlowTuple(A("192.0.2.2"), A("192.0.2.1"), 6, 80, 61000) if nat
             else orig.reversed())
    flow = Flow(1, (orig, reply), "ft", 30, iif=(1, 2),
                routes=(FlowRoute(2, "02:00:00:00:02:01", "00:00:00:00:00:02", 1500),
                        FlowRoute(1, "02:00:00:00:01:fe", "00:00:00:00:00:01", 1500)))
    ups = [p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=port_entry(schema, p, 1)))
           for p in (1, 2)]
    nexthops = NextHops(schema)
    ups += [nexthops.update(nh, p4r.Update.INSERT) for nh in assign(nexthops, [flow])]
    ups += [p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=flow_entry(schema, flow, d)))
            for d in Dir]
    await s.write(ups)
    await s.close()


def blast(n: int, size: int) -> dict:
    """Send n frames into port 1, count them out of port 2."""
    frame = bytes(Ether(src="00:00:00:00:00:01", dst="02:00:00:00:01:fe")
                  / IP(src="10.0.1.1", dst="192.0.2.2") / TCP(sport=40000, dport=80, flags="A")
                  / Raw(b"x" * max(0, size - 54)))
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind((LINKS[0][1], 0))
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    rx.bind((LINKS[1][1], 0))
    rx.settimeout(2.0)
    got = 0
    first = last = None
    t0 = time.monotonic()
    sent = 0
    # Send in windows so the switch's queues, not the sender, set the pace.
    window = 32   # below BMv2's 64-packet queues, so nothing is dropped
    while sent < n or got < sent:
        while sent < n and sent - got < window:
            tx.send(frame)
            sent += 1
        try:
            rx.recv(65535)
        except socket.timeout:
            break
        got += 1
        last = time.monotonic()
        if first is None:
            first = last
    dt = (last or t0) - t0
    return {"sent": sent, "received": got, "seconds": dt, "pps": got / dt if dt else 0.0}


def callgrind(kind: str, schema: P4Schema, packets: int = 2000, warmup: int = 200) -> float:
    """Instructions simple_switch_grpc executes per forwarded packet (callgrind,
    collecting only while `packets` frames go through, after `warmup`): a
    count that does not move with the machine's load, as packets/s does."""
    with veth_links(LINKS):
        grpc_addr = f"127.0.0.1:{free_tcp_port()}"
        out = Path(f"/tmp/p4ftb-callgrind-{os.getpid()}.out")
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"] + \
            switch_command("bmv2", [(i + 1, a) for i, (a, _) in enumerate(LINKS)], grpc_addr)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port("127.0.0.1", int(grpc_addr.rsplit(":", 1)[1]), 120, proc)
            asyncio.run(program_l3fwd(grpc_addr) if kind.endswith("-l3fwd")
                        else program(grpc_addr, schema, nat=not kind.endswith("-routed")))
            assert blast(warmup, 128)["received"] == warmup
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
            got = blast(packets, 128)["received"]
            subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
        finally:
            proc.terminate()
            proc.wait(60)
        total = sum(int(m.group(1)) for f in Path("/tmp").glob(f"{out.name}*")
                    for m in [re.search(r"^totals: (\d+)", f.read_text(), re.M)] if m)
        for f in Path("/tmp").glob(f"{out.name}*"):
            f.unlink()
        assert got == packets, f"{got} of {packets} forwarded"
        return total / packets


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=50000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--switch", default="bmv2,soft")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-l3fwd", dest="l3fwd", action="store_false",
                    help="skip the minimal L3 forwarder on BMv2")
    ap.add_argument("--callgrind", action="store_true",
                    help="BMv2's instructions per packet instead (masqueraded, routed, L3 forwarder)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/switch_pps.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("switch_pps: needs root (network namespace, raw sockets)", file=sys.stderr)
        return 1
    schema = P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")
    if a.callgrind:
        got = {k: callgrind(k, schema) for k in ("bmv2", "bmv2-routed", "bmv2-l3fwd")}
        save(ROOT / "bench/results/switch_callgrind.json", {"bench": "switch_callgrind", "instructions": got})
        print("instructions per packet: " + ", ".join(f"{k} {v / 1000:.1f}k" for k, v in got.items())
              + f"; masqueraded / l3fwd {got['bmv2'] / got['bmv2-l3fwd']:.2f}x, "
              f"routed / l3fwd {got['bmv2-routed'] / got['bmv2-l3fwd']:.2f}x")
        return 0
    kinds = a.switch.split(",")
    if "bmv2" in kinds and not shutil.which("simple_switch_grpc"):
        print("bmv2: skipped, simple_switch_grpc is not installed")
        kinds.remove("bmv2")
    if "bmv2" in kinds and a.l3fwd:
        kinds[kinds.index("bmv2") + 1:kinds.index("bmv2") + 1] = ["bmv2-routed", "bmv2-l3fwd"]
    # Kinds take turns, round after round; each kind's median is reported.
    samples = []
    for _ in range(a.rounds):
        for kind in kinds:
            with switch_on_veths(kind.split("-")[0], LINKS) as grpc:
                asyncio.run(program_l3fwd(grpc) if kind.endswith("-l3fwd")
                            else program(grpc, schema, nat=not kind.endswith("-routed")))
                cpu0 = cpu_seconds(grpc.pid)
                r = blast(a.packets, a.size)
                r["switch_cpu_us_per_packet"] = (cpu_seconds(grpc.pid) - cpu0) * 1e6 / max(1, r["received"])
            r["switch"] = kind
            samples.append(r)
    results = medians(samples, "switch", "pps", kinds)
    by = {r["switch"]: r["pps"] for r in results}
    ratios = {}
    if "soft" in by and "bmv2" in by:
        ratios["embedded_over_bmv2"] = by["soft"] / by["bmv2"]
    if "bmv2-l3fwd" in by:
        ratios["flowtable_over_l3fwd"] = by["bmv2"] / by["bmv2-l3fwd"]
        cpu = {r["switch"]: r["switch_cpu_us_per_packet"] for r in results}
        ratios["cpu_per_packet_flowtable_over_l3fwd"] = cpu["bmv2"] / cpu["bmv2-l3fwd"]
        ratios["routed_over_l3fwd"] = by["bmv2-routed"] / by["bmv2-l3fwd"]
        ratios["cpu_per_packet_routed_over_l3fwd"] = cpu["bmv2-routed"] / cpu["bmv2-l3fwd"]
    save(a.out, {"bench": "switch_pps", "packets": a.packets, "frame_bytes": a.size, "rounds": a.rounds,
                 "results": results, "samples": samples, **ratios})
    print(f"{'switch':<12} {'sent':>8} {'received':>9} {'pps':>10} {'switch CPU/packet':>18}")
    for r in results:
        print(f"{r['switch']:<12} {r['sent']:>8} {r['received']:>9} {r['pps']:>10.0f} "
              f"{r['switch_cpu_us_per_packet']:>15.1f} us")
    if "embedded_over_bmv2" in ratios:
        print(f"embedded/bmv2 ratio: {ratios['embedded_over_bmv2']:.2f}")
    if "flowtable_over_l3fwd" in ratios:
        print(f"offloaded path / l3fwd on BMv2: {ratios['flowtable_over_l3fwd']:.2f} in packets/s, "
              f"{ratios['cpu_per_packet_flowtable_over_l3fwd']:.2f}x the switch CPU per packet (NAT flow); "
              f"{ratios['routed_over_l3fwd']:.2f}, {ratios['cpu_per_packet_routed_over_l3fwd']:.2f}x "
              f"(routed flow)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
