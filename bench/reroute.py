#!/usr/bin/env python3
"""Offloaded flows following the kernel's changes: time from the change to
the switch updated, and switch writes per change, with 1k, 10k and 100k flows
behind the changed next hop; and a route flap.

The router namespace, switch and daemon are bench/offload_rate.py's rig:
conntrack entries made with ctnetlink, to the WAN hosts 192.0.2.2 (the first
60,000) and 192.0.2.3, both routed through the gateway 192.0.2.250 here
(192.0.2.2/31 via it): every flow is behind that one next hop. Each change is
made with a netlink request in the namespace (the rtnetlink event is sent
while it runs); the clock starts just before it.

- neighbour MAC change (ip neigh replace 192.0.2.250 lladdr ...): until a
  second P4Runtime client reads the new MAC in nexthop_table;
- route change (ip route replace 192.0.2.2/31 via 192.0.2.251, then .250):
  until the daemon has moved every direction behind it (reroute.moved);
- flap (--flap-flows, default 10,000): the same route replaced every 10 ms for
  10 s, alternating gateways; the writes it cost, the passes, and the time
  after the last change until the switch agrees with the kernel.

    sudo .venv/bin/python bench/reroute.py [--sizes 1000,10000,100000] [--switch bmv2]
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
sys.path.insert(0, str(ROOT / "controller"))
sys.path.insert(0, str(ROOT / "bmv2-topo"))
sys.path.insert(0, str(ROOT / "bench"))

import grpc  # noqa: E402
import p4flowtable  # noqa: E402,F401  (first: it loads the P4Runtime protobufs)
from p4.v1 import p4runtime_pb2 as p4r, p4runtime_pb2_grpc  # noqa: E402
from pyroute2 import IPRoute  # noqa: E402

from offload_rate import NS, SOCK, create_entries, flush_conntrack, poll, rig, wait_offloaded  # noqa: E402
from p4flowtable.api import call  # noqa: E402
from p4flowtable.ip import ReadBack  # noqa: E402
from p4flowtable.nexthop import NextHops  # noqa: E402
from p4flowtable.p4info import P4Schema  # noqa: E402
from p4ft_topo import WAN  # noqa: E402
from record import save  # noqa: E402

GW = ("192.0.2.250", "192.0.2.251")
GW_MACS = ("02:02:00:00:fd:00", "02:02:00:00:fd:01")
PREFIX = "192.0.2.2/31"      # the WAN hosts of offload_rate's tuples


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def counters() -> dict:
    return call("counters", path=SOCK)


class SwitchReader:
    """A second P4Runtime client reading nexthop_table, and the next hops
    the flow entries name."""

    def __init__(self, addr: str, schema: P4Schema):
        self.ch = grpc.insecure_channel(addr)
        self.stub = p4runtime_pb2_grpc.P4RuntimeStub(self.ch)
        self.nhs = NextHops(schema)
        self.flow_table = schema.table("flow_table_v4").id
        self.readback = ReadBack(schema)

    def _read(self, table_id: int):
        req = p4r.ReadRequest(device_id=1, entities=[p4r.Entity(table_entry=p4r.TableEntry(table_id=table_id))])
        return [e.table_entry for resp in self.stub.Read(req, timeout=60) for e in resp.entities]

    def nexthops(self) -> dict[int, str]:
        """id -> the neighbour's MAC."""
        return {got[0]: got[3] for e in self._read(self.nhs.table_id) if (got := self.nhs.decode(e)) is not None}

    def macs(self) -> set[str]:
        return set(self.nexthops().values())

    def named_macs(self) -> set[str]:
        """The MACs of the next hops flow entries name. The next hops alone
        do not say where flows go: the daemon holds one for each neighbour
        the kernel has (both gateways here), named by flows or not."""
        named = {h.nexthop for e in self._read(self.flow_table) if (h := self.readback.decode(e)) is not None}
        macs = self.nexthops()
        return {macs.get(i) for i in named}


def measure_size(ipr: IPRoute, reader: SwitchReader, wan: int, n: int, rounds: int) -> dict:
    asyncio.run(create_entries(range(n)))
    wait_offloaded(n, 900)
    behind = n
    mac_ms, mac_writes = [], []
    for k in range(rounds):
        mac = f"02:02:00:00:fe:{k:02x}"
        c0 = counters()
        t0 = time.perf_counter()
        ipr.neigh("replace", dst=GW[0], lladdr=mac, ifindex=wan, state=0x80)      # NUD_PERMANENT
        poll(lambda: mac in reader.macs(), 10, f"the switch to take MAC {mac}")
        mac_ms.append(1000 * (time.perf_counter() - t0))
        time.sleep(0.05)
        c1 = counters()
        mac_writes.append(c1["nexthop_writes"] - c0["nexthop_writes"] + c1.get("reroute.moved", 0)
                          - c0.get("reroute.moved", 0))
    route_ms, route_writes = [], []
    for k in range(max(2, rounds // 4)):
        c0 = counters()
        t0 = time.perf_counter()
        ipr.route("replace", dst=PREFIX, gateway=GW[(k + 1) % 2], oif=wan)
        poll(lambda: counters().get("reroute.moved", 0) - c0.get("reroute.moved", 0) >= behind, 600,
             f"{behind} flows moved", interval=0.005)
        route_ms.append(1000 * (time.perf_counter() - t0))
        time.sleep(0.3)
        c1 = counters()
        route_writes.append(c1["nexthop_writes"] - c0["nexthop_writes"] + c1["reroute.moved"] - c0.get("reroute.moved", 0))
        assert c1.get("teardown.route_changed", 0) == c0.get("teardown.route_changed", 0), "flows handed back"
    return {"flows": n, "behind": behind,
            "mac_change": {"p50_ms": percentile(mac_ms, 0.5), "p99_ms": percentile(mac_ms, 0.99),
                           "writes_per_change": sorted(set(mac_writes)), "samples_ms": mac_ms},
            "route_change": {"p50_ms": percentile(route_ms, 0.5), "p99_ms": percentile(route_ms, 0.99),
                             "writes_per_change": route_writes, "samples_ms": route_ms}}


def flap(ipr: IPRoute, reader: SwitchReader, wan: int, n: int, changes: int, seconds: float) -> dict:
    asyncio.run(create_entries(range(n)))
    wait_offloaded(n, 900)
    c0 = counters()
    t0 = time.perf_counter()
    for k in range(changes):
        ipr.route("replace", dst=PREFIX, gateway=GW[(k + 1) % 2], oif=wan)
        time.sleep(max(0.0, t0 + (k + 1) * seconds / changes - time.perf_counter()))
    last = time.perf_counter()
    final = changes % 2
    # converged: the flows' entries to the WAN name the last gateway's next hop only (each read of
    # them takes its time: the figure is late by up to one read)
    want = GW_MACS[final]
    poll(lambda: reader.named_macs() & set(GW_MACS) == {want}, 60, "the switch to agree", 0.005)
    settled = time.perf_counter()
    time.sleep(0.5)
    c1 = counters()
    return {"flows": n, "changes": changes, "seconds": round(last - t0, 2),
            "passes": c1["reroute.passes"] - c0.get("reroute.passes", 0),
            "flow_writes": c1["reroute.moved"] - c0.get("reroute.moved", 0),
            "nexthop_writes": c1["nexthop_writes"] - c0["nexthop_writes"],
            "handed_back": c1.get("teardown.route_changed", 0) - c0.get("teardown.route_changed", 0),
            "converged_after_last_change_ms": 1000 * (settled - last)}


def gateways(ipr: IPRoute, wan: int) -> None:
    """Both gateways' neighbours, and the WAN hosts routed through the first."""
    for gw, mac in zip(GW, GW_MACS):
        ipr.neigh("replace", dst=gw, lladdr=mac, ifindex=wan, state=0x80)
    ipr.route("replace", dst=PREFIX, gateway=GW[0], oif=wan)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--rounds", type=int, default=20, help="MAC changes per size (route changes: a quarter)")
    ap.add_argument("--flap-flows", type=int, default=10000)
    ap.add_argument("--flap-changes", type=int, default=1000)
    ap.add_argument("--flap-seconds", type=float, default=10.0)
    ap.add_argument("--switch", default="bmv2" if shutil.which("simple_switch_grpc") else "soft")
    ap.add_argument("--out", default=str(ROOT / "bench/results/reroute.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("reroute: needs root", file=sys.stderr)
        return 1
    schema = P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")
    result = {"bench": "reroute", "switch": a.switch, "sizes": []}
    for n in [int(x) for x in a.sizes.split(",") if x]:
        with rig(a.switch, "reroute") as r:
            ipr = IPRoute(netns=NS)
            wan = ipr.link_lookup(ifname=WAN["rep"])[0]
            gateways(ipr, wan)
            reader = SwitchReader(r.grpc, schema)
            got = measure_size(ipr, reader, wan, n, a.rounds)
            result["sizes"].append(got)
            print(f"{a.switch} {n} flows ({got['behind']} behind the next hop): MAC change p50 "
                  f"{got['mac_change']['p50_ms']:.1f} ms p99 {got['mac_change']['p99_ms']:.1f} ms, writes "
                  f"{got['mac_change']['writes_per_change']}; route change p50 {got['route_change']['p50_ms']:.0f} ms "
                  f"p99 {got['route_change']['p99_ms']:.0f} ms, writes {got['route_change']['writes_per_change']}",
                  flush=True)
            ipr.close()
            flush_conntrack()
    if a.flap_flows:
        with rig(a.switch, "flap") as r:
            ipr = IPRoute(netns=NS)
            wan = ipr.link_lookup(ifname=WAN["rep"])[0]
            gateways(ipr, wan)
            result["flap"] = flap(ipr, SwitchReader(r.grpc, schema), wan, a.flap_flows, a.flap_changes,
                                  a.flap_seconds)
            ipr.close()
            print(f"flap: {result['flap']}", flush=True)
    save(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
