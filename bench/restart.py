#!/usr/bin/env python3
"""Warm restart at scale: time for a daemon killed (-9) and started again to
converge on a switch that carries N offloaded flows.

For each switch and N: N masqueraded TCP flows are offloaded (ctnetlink-made
conntrack entries carrying the flowtable's mark); the daemon is killed with
SIGKILL and started again; converged is when its reconcile has adopted all N
(polled on its socket). Reported: from the new process's start to converged,
and the reconcile alone (the daemon's own log line), with what it adopted,
wrote and deleted; and its yardstick, measured in the same run: one read
of every flow entry and one conntrack dump.

    sudo .venv/bin/python bench/restart.py [--flows 1000,100000] [--switch bmv2,soft]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from offload_rate import NS, SOCK, call, create_entries, rig  # noqa: E402
from p4.v1 import p4runtime_pb2 as p4r  # noqa: E402
from p4flowtable import ctnetlink as ctnl, netns  # noqa: E402
from p4flowtable.p4info import P4Schema  # noqa: E402
from grpc import aio as grpc_aio  # noqa: E402
from p4.v1 import p4runtime_pb2_grpc  # noqa: E402
from p4flowtable.switch import FLOW_TABLES  # noqa: E402
from p4ft_topo import wait_until  # noqa: E402
from record import save  # noqa: E402

DAEMON_OUT = Path("/tmp/p4ftb-daemon.out")


async def read_and_dump(grpc: str) -> tuple[float, float, int, int]:
    """The reconcile's yardstick: one wildcard read of both flow tables (a
    second client: reads need no primary) and one conntrack dump, each
    timed; and what they returned."""
    schema = P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")
    ch = grpc_aio.insecure_channel(grpc, options=[("grpc.max_receive_message_length", 256 << 20)])
    stub = p4runtime_pb2_grpc.P4RuntimeStub(ch)       # a Read needs no arbitration
    req = p4r.ReadRequest(device_id=1, entities=[p4r.Entity(table_entry=p4r.TableEntry(table_id=schema.table(t).id))
                                                 for t in FLOW_TABLES])
    t0 = time.monotonic()
    entries = 0
    async for resp in stub.Read(req):
        entries += len(resp.entities)
    read_s = time.monotonic() - t0
    await ch.close()
    sock = ctnl.CtnlSocket(netns.netlink_socket(NS, 12))
    t0 = time.monotonic()
    dumped = len(await sock.dump())
    dump_s = time.monotonic() - t0
    sock.close()
    return read_s, dump_s, entries, dumped


def one_size(switch: str, n: int) -> dict:
    with rig(switch, "restart", ("--timeout", "ft/tcp=3600")) as r:
        asyncio.run(create_entries(range(n)))
        wait_until(lambda: call("counters", path=SOCK).get("offloaded", 0) >= n, 60 + n / 200,
                   f"{n} flows offloaded", 0.2)
        r.daemon.send_signal(signal.SIGKILL)
        r.daemon.wait(10)
        t0 = time.monotonic()
        r.daemon = r.restart()
        wait_until(lambda: call("counters", path=SOCK, timeout=60).get("reconcile.adopted", 0) >= n,
                   60 + n / 500, f"{n} flows adopted", 0.02)
        total = time.monotonic() - t0
        c = call("counters", path=SOCK)
        m = re.search(r"switch reconciled in ([\d.]+)s", DAEMON_OUT.read_text())
        read_s, dump_s, entries, dumped = asyncio.run(read_and_dump(r.grpc))
        reconcile = float(m.group(1)) if m else None
        return {"flows": n, "converged_s": total, "reconcile_s": reconcile,
                "adopted": c.get("reconcile.adopted", 0), "written": c.get("reconcile.written", 0),
                "orphans_deleted": c.get("reconcile.orphans_deleted", 0),
                "read_all_s": read_s, "entries_read": entries, "ct_dump_s": dump_s, "ct_dumped": dumped,
                "reconcile_over_read_and_dump": reconcile / (read_s + dump_s) if reconcile else None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", default="1000,100000")
    ap.add_argument("--switch", default="bmv2,soft" if shutil.which("simple_switch_grpc") else "soft")
    ap.add_argument("--out", default=str(ROOT / "bench/results/restart.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("restart: needs root", file=sys.stderr)
        return 1
    result = {"bench": "restart", "runs": []}
    for switch in a.switch.split(","):
        for n in (int(x) for x in a.flows.split(",")):
            r = dict(one_size(switch, n), switch=switch)
            result["runs"].append(r)
            print(f"{switch} N={n}: converged {r['converged_s']:.2f} s after the new daemon's start (reconcile "
                  f"{r['reconcile_s']:.2f} s): {r['adopted']} adopted, {r['written']} written, "
                  f"{r['orphans_deleted']} orphan entries deleted; one read of all {r['entries_read']} entries "
                  f"{r['read_all_s']:.2f} s + one conntrack dump of {r['ct_dumped']} {r['ct_dump_s']:.2f} s: "
                  f"reconcile {r['reconcile_over_read_and_dump']:.2f}x", flush=True)
    save(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
