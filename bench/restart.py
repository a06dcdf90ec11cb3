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

Beyond the committed program's 131,072 IPv4 flows (flow_table_v4: 262,144
entries), the v1model program is compiled again with a flow table that holds
them (p4c-bm2-ss -DFLOW_TABLE_V4_SIZE=...), into a temporary directory, and
the daemon is given that build (without p4c, the embedded target gets the
committed build with that one size raised: sized_copy). The
kernel's conntrack table is raised to hold them too. Each run also reports
the daemon's and the switch's memory (peak resident set) once converged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from offload_rate import (CALLGRIND, NS, SOCK, call, callgrind_instructions, create_entries, profiler,  # noqa: E402
                          rig, stop_profiler)
from p4.v1 import p4runtime_pb2 as p4r  # noqa: E402
from p4flowtable import ctnetlink as ctnl, netns  # noqa: E402
from p4flowtable.p4info import P4Schema  # noqa: E402
from grpc import aio as grpc_aio  # noqa: E402
from p4.v1 import p4runtime_pb2_grpc  # noqa: E402
from p4flowtable.switch import FLOW_TABLES  # noqa: E402
from p4ft_topo import wait_until  # noqa: E402
from record import save  # noqa: E402

DAEMON_OUT = Path("/tmp/p4ftb-daemon.out")
P4C = "p4c-bm2-ss"
V4_SIZE = 262144          # p4src/include/size.p4


def program_for(n: int, directory: Path, switch: str = "bmv2") -> tuple[str, ...]:
    """Daemon options naming a v1model build whose IPv4 flow table holds n
    flows (two entries each); none where the committed one does. Without
    p4c, for the embedded target: the committed build with that table's
    size raised where it is written (the JSON's max_size and the P4Info's
    size, the only two places the size define reaches), which is what the
    embedded target reads."""
    if 2 * n <= V4_SIZE:
        return ()
    if switch == "soft" and not shutil.which(P4C):
        return sized_copy(1 << (2 * n - 1).bit_length(), directory)
    if not shutil.which(P4C):
        raise SystemExit(f"restart: {n} flows need a flow table of {2 * n} entries; {P4C} is not installed "
                         f"to build one")
    size = 1 << (2 * n - 1).bit_length()
    subprocess.run([P4C, "--std", "p4-16", "--arch", "v1model", f"-DFLOW_TABLE_V4_SIZE={size}",
                    "-o", str(directory / "flowtable.json"), "--p4runtime-files",
                    str(directory / "flowtable.p4info.txtpb"), str(ROOT / "p4src/flowtable.p4")], check=True)
    return ("--p4info", str(directory / "flowtable.p4info.txtpb"), "--device-config",
            str(directory / "flowtable.json"))


def sized_copy(size: int, directory: Path) -> tuple[str, ...]:
    """The committed v1model build, flow_table_v4 holding size entries."""
    import json
    from google.protobuf import text_format
    from p4.config.v1 import p4info_pb2
    build = ROOT / "p4src/build"
    js = json.loads((build / "flowtable.json").read_text())
    tables = [t for p in js["pipelines"] for t in p["tables"] if t["name"].endswith("flow_table_v4")]
    info = text_format.Parse((build / "flowtable.p4info.txtpb").read_text(), p4info_pb2.P4Info())
    infos = [t for t in info.tables if t.preamble.name.endswith("flow_table_v4")]
    if len(tables) != 1 or len(infos) != 1:
        raise SystemExit("restart: flow_table_v4 not found once in the committed build")
    tables[0]["max_size"] = infos[0].size = size
    (directory / "flowtable.json").write_text(json.dumps(js))
    (directory / "flowtable.p4info.txtpb").write_text(text_format.MessageToString(info))
    return ("--p4info", str(directory / "flowtable.p4info.txtpb"), "--device-config",
            str(directory / "flowtable.json"))


def conntrack_room(n: int) -> None:
    """The kernel's conntrack table (its limit is the host's, shared by
    every namespace) raised to hold n connections with room to spare."""
    path = Path("/proc/sys/net/netfilter/nf_conntrack_max")
    if int(path.read_text()) < 2 * n:
        path.write_text(str(2 * n))


def memory(pid: int) -> dict:
    """A process's resident set now and at its peak, MiB."""
    st = {k: v for k, _, v in (line.partition(":") for line in Path(f"/proc/{pid}/status").read_text().splitlines())}
    return {k.lower() + "_mib": round(int(st[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


YARDSTICK_ROUNDS = 3      # the yardstick's read and dump, each timed this often: the median is used


async def read_and_dump(grpc: str, rounds: int = YARDSTICK_ROUNDS
                        ) -> tuple[list[float], list[float], list[float], int, int]:
    """The reconcile's yardstick: one wildcard read of both flow tables (a
    second client: reads need no primary) and one conntrack dump, each
    timed; and what they returned. Also timed: the read the reconcile makes,
    which asks for each entry's counter and time since its last hit too.
    Each is timed `rounds` times, in turn (the same BMv2 read took
    1.6 s in one run and 5.1 s in another)."""
    schema = P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")
    ch = grpc_aio.insecure_channel(grpc, options=[("grpc.max_receive_message_length", 256 << 20)])
    stub = p4runtime_pb2_grpc.P4RuntimeStub(ch)       # a Read needs no arbitration

    async def read(state: bool) -> tuple[float, int]:
        ents = []
        for t in FLOW_TABLES:
            e = p4r.TableEntry(table_id=schema.table(t).id)
            if state:
                e.counter_data.SetInParent()
                e.time_since_last_hit.SetInParent()
            ents.append(p4r.Entity(table_entry=e))
        t0 = time.monotonic()
        n = 0
        async for resp in stub.Read(p4r.ReadRequest(device_id=1, entities=ents)):
            n += len(resp.entities)
        return time.monotonic() - t0, n

    sock = ctnl.CtnlSocket(netns.netlink_socket(NS, 12))
    reads, states, dumps = [], [], []
    for _ in range(rounds):
        read_s, entries = await read(False)
        reads.append(read_s)
        states.append((await read(True))[0])
        t0 = time.monotonic()
        dumped = len(await sock.dump())
        dumps.append(time.monotonic() - t0)
    await ch.close()
    sock.close()
    return reads, states, dumps, entries, dumped


def one_size(switch: str, n: int, profile: str | None = None, rounds: int = YARDSTICK_ROUNDS,
             callgrind: bool = False) -> dict:
    conntrack_room(n)
    with tempfile.TemporaryDirectory(prefix="p4ftb-p4-") as tmp, \
            rig(switch, "restart", ("--timeout", "ft/tcp=3600", *program_for(n, Path(tmp), switch))) as r:
        return _one_size(r, switch, n, profile, rounds, callgrind)


def _one_size(r, switch: str, n: int, profile: str | None, rounds: int, callgrind: bool = False) -> dict:
    for i in range(0, n, 50_000):       # a million coroutines at once would be the bench's own cost
        asyncio.run(create_entries(range(i, min(n, i + 50_000))))
    wait_until(lambda: call("counters", path=SOCK).get("offloaded", 0) >= n, 60 + n / 200,
               f"{n} flows offloaded", 0.2)
    # events lost to the burst and dumped again (the restarted daemon writes its own log over this one's)
    setup_resyncs = call("counters", path=SOCK).get("ct_resync", 0)
    r.daemon.send_signal(signal.SIGKILL)
    r.daemon.wait(10)
    t0 = time.monotonic()
    if callgrind:
        # counted from its API's first answer (after its conntrack dump, before
        # its reconcile's index of the connections) to the last flow adopted
        r.daemon = r.restart(prefix=CALLGRIND, ready_within=600, main=(str(ROOT / "bench/callgrind_daemon.py"),))
        subprocess.run(["callgrind_control", "-i", "on", str(r.daemon.pid)], check=True, capture_output=True)
    else:
        r.daemon = r.restart()
    spy = profiler(r.daemon.pid, profile) if profile else None
    slowest = [0.0, 0.0]    # the longest the daemon took to answer its API while it converged, and when it asked

    def adopted() -> bool:
        t = time.monotonic()
        c = call("counters", path=SOCK, timeout=60)
        took = time.monotonic() - t
        if c and took > slowest[0]:
            slowest[:] = [took, t - t0]
        return c.get("reconcile.adopted", 0) >= n

    # each poll costs the daemon a turn (under callgrind, counted: fewer)
    wait_until(adopted, (60 + n / 500) * (50 if callgrind else 1), f"{n} flows adopted", 1.0 if callgrind else 0.1)
    total = time.monotonic() - t0
    instructions = callgrind_instructions(r.daemon.pid) if callgrind else None
    hot = stop_profiler(spy, profile) if spy else None
    c = call("counters", path=SOCK)
    m = re.search(r"switch reconciled in ([\d.]+)s", DAEMON_OUT.read_text())
    mem = {"daemon": memory(r.daemon.pid), "switch": memory(r.grpc.pid)}
    reads, states, dumps, entries, dumped = asyncio.run(read_and_dump(r.grpc, rounds))
    read_s, state_s, dump_s = (statistics.median(x) for x in (reads, states, dumps))
    reconcile = float(m.group(1)) if m else None
    return {"flows": n, "converged_s": total, "reconcile_s": reconcile,
            "adopted": c.get("reconcile.adopted", 0), "written": c.get("reconcile.written", 0),
            "orphans_deleted": c.get("reconcile.orphans_deleted", 0),
            "read_all_s": read_s, "read_all_with_state_s": state_s, "entries_read": entries,
            "ct_dump_s": dump_s, "ct_dumped": dumped,     # medians of:
            "read_all_runs_s": reads, "read_all_with_state_runs_s": states, "ct_dump_runs_s": dumps,
            "reconcile_over_read_and_dump": reconcile / (read_s + dump_s) if reconcile else None,
            "api_slowest_s": slowest[0], "api_slowest_asked_at_s": slowest[1], "memory": mem,
            **({"callgrind_instructions_per_flow": instructions / n} if callgrind else {}),
            "ct_resyncs": {"setup": setup_resyncs, "restarted": c.get("ct_resync", 0)},
            **({"profile": hot} if hot else {})}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", default="1000,100000")
    ap.add_argument("--switch", default="bmv2,soft" if shutil.which("simple_switch_grpc") else "soft")
    ap.add_argument("--out", default=str(ROOT / "bench/results/restart.json"))
    ap.add_argument("--rounds", type=int, default=YARDSTICK_ROUNDS, help="times the yardstick's read and dump "
                    "are each made (the median is used; at 1,000,000 flows on the embedded target one round "
                    "takes about 2.5 min)")
    ap.add_argument("--profile", metavar="FILE", help="sample the restarted daemon with py-spy until it has "
                    "adopted every flow (raw stacks; the last size's run)")
    ap.add_argument("--callgrind", action="store_true", help="run the restarted daemon under valgrind's callgrind: "
                    "its instructions per flow from its API's first answer to the last flow adopted (its times "
                    "are then valgrind's)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("restart: needs root", file=sys.stderr)
        return 1
    result = {"bench": "restart", "runs": []}
    for switch in a.switch.split(","):
        for n in (int(x) for x in a.flows.split(",")):
            r = dict(one_size(switch, n, a.profile, a.rounds, a.callgrind), switch=switch)
            result["runs"].append(r)
            if a.callgrind:
                print(f"{switch} N={n}: under callgrind, {r['callgrind_instructions_per_flow']:.0f} instructions "
                      f"per flow from the restarted daemon's first API answer to the last flow adopted", flush=True)
            print(f"{switch} N={n}: converged {r['converged_s']:.2f} s after the new daemon's start (reconcile "
                  f"{r['reconcile_s']:.2f} s): {r['adopted']} adopted, {r['written']} written, "
                  f"{r['orphans_deleted']} orphan entries deleted; one read of all {r['entries_read']} entries "
                  f"{r['read_all_s']:.2f} s (with counters and last hits {r['read_all_with_state_s']:.2f} s) "
                  f"+ one conntrack dump of {r['ct_dumped']} {r['ct_dump_s']:.2f} s (medians of "
                  f"{a.rounds}: reads {', '.join(f'{x:.2f}' for x in r['read_all_runs_s'])}, dumps "
                  f"{', '.join(f'{x:.2f}' for x in r['ct_dump_runs_s'])}): "
                  f"reconcile {r['reconcile_over_read_and_dump']:.2f}x; slowest API answer meanwhile "
                  f"{r['api_slowest_s']:.2f} s (asked {r['api_slowest_asked_at_s']:.1f} s after the start); peak memory: daemon "
                  f"{r['memory']['daemon']['vmhwm_mib']:.0f} MiB, switch {r['memory']['switch']['vmhwm_mib']:.0f} MiB; "
                  f"conntrack events lost and dumped again: {r['ct_resyncs']['setup']} time(s) while the flows were "
                  f"made, {r['ct_resyncs']['restarted']} after the restart", flush=True)
    save(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
