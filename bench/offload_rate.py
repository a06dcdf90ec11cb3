#!/usr/bin/env python3
"""Offload setup rate and time-to-offload, on a real switch and real conntrack.

Conntrack entries are created with ctnetlink (no traffic needed) in a router
namespace whose routes and neighbours point at the switch's ports.

1. time-to-offload: with the daemon running, FLOWS_LAT entries are created at
   a steady pace; the daemon reports, per flow, conntrack event -> both
   entries written (p50, p99), and how much of it the flow's add waited on
   the switch (its next hops' write where new, then its entries'): the rest
   is the controller's part.
2. setup rate: N entries are created in a burst while the daemon runs
   (rate = N / (last write - first decision); conntrack's own creation
   rate is reported beside it, as the rate cannot exceed it).
3. the yardstick, the switch's limit: the same 2N entries and their next
   hops, encoded before the clock starts, replayed raw in the daemon's mean
   batch size with as many batches in flight as the daemon keeps. The
   setup rate is reported as a ratio to it, and time-to-offload as a ratio
   to one pre-encoded write of a flow's two entries (its p50 round trip).
4. for continuity: a bare Python client through the daemon's driver, the
   entries built and encoded on the clock (the figure earlier docs used).

    sudo .venv/bin/python bench/offload_rate.py [--flows 10000] [--switch bmv2]
"""

from __future__ import annotations

import argparse
import contextlib
import asyncio
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))
sys.path.insert(0, str(ROOT / "bmv2-topo"))

import p4flowtable  # noqa: E402,F401  (first: it loads the P4Runtime protobufs)
from p4.v1 import p4runtime_pb2 as p4r  # noqa: E402

from p4flowtable import ctnetlink as ctnl, netns  # noqa: E402
from p4flowtable.api import call  # noqa: E402
from p4flowtable.flowoffload import WRITES_IN_FLIGHT  # noqa: E402
from p4flowtable.ip import flow_entry  # noqa: E402
from p4flowtable.model import Dir, Flow, FlowRoute, FlowTuple  # noqa: E402
from p4flowtable.nexthop import assign  # noqa: E402
from p4flowtable.offload import P4RuntimeDriver, port_entry  # noqa: E402
from p4flowtable.p4info import P4Schema  # noqa: E402
from p4flowtable.p4runtime import Session  # noqa: E402
from p4ft_topo import LAN, WAN, Router, make_ruleset, switch_on_veths  # noqa: E402
from record import cpu_seconds, save  # noqa: E402

NS = "p4ftb-r"
SOCK = "/run/p4ftb.sock"
LINKS = [("p4ftb-sw1", "p4ftb-h1"), ("p4ftb-sw2", "p4ftb-h2")]
N_HOSTS = 200
A = ipaddress.IPv4Address
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 2, 4, 8


def lan_host(i: int) -> A:
    return A(f"10.0.1.{1 + i % N_HOSTS}")


def wan_host(i: int) -> A:
    return A(f"192.0.2.{2 + (i // 60000) % N_HOSTS}")


def tuples(i: int, proto: int = 6) -> tuple[FlowTuple, FlowTuple]:
    """Flow i: a masqueraded TCP (or UDP) connection; all tuples distinct for
    i below ten million (i picks the LAN host and source port, and the WAN
    host and masquerade port)."""
    orig = FlowTuple(lan_host(i), wan_host(i), proto, 10000 + i // N_HOSTS, 80)
    reply = FlowTuple(wan_host(i), A(WAN["router"]), proto, 80, 1024 + i % 60000)
    return orig, reply


def host_mac(prefix: int, i: int) -> str:
    return f"02:{prefix:02x}:00:00:{i // 256:02x}:{i % 256:02x}"


def setup_router() -> None:
    r = Router(NS)
    r.start()
    cmds = []
    for i in range(N_HOSTS):
        cmds.append(f"neigh replace 10.0.1.{1 + i} lladdr {host_mac(1, i)} dev {LAN['rep']} nud permanent")
        cmds.append(f"neigh replace 192.0.2.{2 + i} lladdr {host_mac(2, i)} dev {WAN['rep']} nud permanent")
    subprocess.run(["ip", "-n", NS, "-batch", "-"], input="\n".join(cmds) + "\n", text=True, check=True)


def start_daemon(grpc: str, ruleset: Path, extra: tuple[str, ...] = (), reconciled: bool = True,
                 prefix: tuple[str, ...] = (), ready_within: float = 60,
                 main: tuple[str, ...] = ("-m", "p4flowtable.cli")) -> subprocess.Popen:
    """The daemon, once its API answers and (reconciled) its first reconcile
    is done. A bench that makes connections after this must wait for the
    reconcile: its API answers before it, and connections made meanwhile
    are the reconcile's (counted as reconcile.written, not as offloaded),
    which left the setup-rate burst waiting, now and then, for offloads that
    never came."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "controller"))
    p = subprocess.Popen([*prefix, sys.executable, *main, "--socket", SOCK, "daemon",
                          "--grpc-addr", grpc, "--netns", NS, "--port", f"1={LAN['rep']}",
                          "--port", f"2={WAN['rep']}", "--ruleset", str(ruleset), "--poll-interval", "5", *extra],
                         stdout=open("/tmp/p4ftb-daemon.out", "w"), stderr=subprocess.STDOUT, env=env)
    end = time.monotonic() + ready_within
    while time.monotonic() < end:
        if p.poll() is not None:
            raise RuntimeError("daemon exited:\n" + Path("/tmp/p4ftb-daemon.out").read_text()[-2000:])
        try:
            # the first reconcile's counters exist once it is done (0 or more)
            counters = call("counters", path=SOCK)
            if not reconciled or "reconcile.adopted" in counters:
                return p
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError("daemon not ready")


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()


class Rig:
    """One run's router, switch and daemon; `daemon` may be replaced by
    `restart()` (a new daemon on the same switch and router)."""
    grpc: str
    daemon: subprocess.Popen | None
    restart: "Callable[..., subprocess.Popen]"     # start_daemon's keywords


@contextlib.contextmanager
def rig(switch: str, name: str, extra: tuple[str, ...] = ()):
    """A router namespace, a switch on veths and a daemon with the seed
    ruleset offloading TCP and UDP; all stopped and cleaned after the block."""
    ruleset = Path(f"/tmp/p4ftb-{name}.nft")
    ruleset.write_text(make_ruleset("meta l4proto { tcp, udp } flow add @ft"))
    setup_router()
    r = Rig()
    r.daemon = None
    try:
        with switch_on_veths(switch, LINKS) as grpc:
            r.grpc = grpc
            r.daemon = start_daemon(grpc, ruleset, extra)
            # the bench times it
            r.restart = lambda **kw: start_daemon(grpc, ruleset, extra, reconciled=False, **kw)
            yield r
    finally:
        if r.daemon is not None and r.daemon.poll() is None:
            stop(r.daemon)
        flush_conntrack()
        Router(NS).stop()


def flowtable_mark(name: str = "ft") -> int:
    """The ct label bit a running daemon gave flowtable `name` (its ruleset's
    offload statement sets it)."""
    return 1 << next(t["ct_label"] for t in call("flowtable_list", path=SOCK) if t["name"] == name)


async def create_entries(idx: range, pace: float | None = None, proto: int = 6, mark: int | None = None) -> float:
    """ctnetlink-create ESTABLISHED TCP (or replied UDP) entries carrying
    flowtable ft's mark, as the ruleset's offload statement would set it;
    returns entries per second. Paced: one request at a time. Unpaced: the
    requests are encoded before the clock starts and sent many to a datagram,
    acknowledged once per window (CtnlSocket.changes), so the burst arrives
    at the kernel's own speed rather than at this script's: one request
    awaited at a time, this script made about 15,000 a second while taking a
    core from the daemon and the switch it measures.
    mark: where no daemon runs to ask (entries made before it starts)."""
    mark = flowtable_mark() if mark is None else mark
    sock = ctnl.CtnlSocket(netns.netlink_socket(NS, 12))   # NETLINK_NETFILTER

    def request(i: int) -> tuple[int, int, bytes, int]:
        o, r = tuples(i, proto)
        return (ctnl.IPCTNL_MSG_CT_NEW, socket.AF_INET,
                ctnl.create_payload(o, r, IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED, 3600,
                                    3 if proto == 6 else None, mark),
                ctnl.NLM_F_CREATE | ctnl.NLM_F_EXCL)
    try:
        if pace:
            t0 = time.monotonic()
            for n, i in enumerate(idx):
                await sock.request(*request(i))
                await asyncio.sleep(max(0.0, t0 + (n + 1) / pace - time.monotonic()))
        else:
            reqs = [request(i) for i in idx]
            t0 = time.monotonic()
            failed = [(i, e) for i, e in zip(idx, await sock.changes(reqs)) if e is not None]
            if failed:
                raise RuntimeError(f"{len(failed)} of {len(reqs)} conntrack entries not created, "
                                   f"the first ({failed[0][0]}): {failed[0][1]}")
        return len(idx) / (time.monotonic() - t0)
    finally:
        sock.close()


def flush_conntrack() -> None:
    subprocess.run(["ip", "netns", "exec", NS, "conntrack", "-F"], capture_output=True)


def poll(pred, deadline: float, what: str, interval: float = 0.001):
    """pred()'s first true answer within deadline seconds, asked every
    interval; TimeoutError naming what was awaited otherwise."""
    end = time.perf_counter() + deadline
    while time.perf_counter() < end:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise TimeoutError(what)


def wait_offloaded(n: int, deadline: float, samples: bool = False) -> dict:
    """The daemon's offload timing once n flows are offloaded; with every
    latency sample where asked (a burst's 2 x 30,000 floats in JSON cost the
    daemon tens of milliseconds, inside a profile's window)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        t = call("offload_timing", path=SOCK)
        if t["offloaded"] >= n:
            return call("offload_timing", {"samples": True}, path=SOCK) if samples else t
        time.sleep(0.2)
    raise TimeoutError(f"only {call('offload_timing', path=SOCK)['offloaded']} of {n} offloaded")


def bench_flows(idx: range) -> list[Flow]:
    """The flows of tuples(i), each direction's route to its neighbour behind
    the switch, as the daemon decides them."""
    flows = []
    for i in idx:
        o, r = tuples(i)
        hi, wi = int(o.src) - int(A("10.0.1.1")), int(o.dst) - int(A("192.0.2.2"))
        rt = (FlowRoute(2, WAN["rep_mac"], host_mac(2, wi), 1500), FlowRoute(1, LAN["rep_mac"], host_mac(1, hi), 1500))
        flows.append(Flow(i, (o, r), "ft", 30, iif=(1, 2), routes=rt))
    return flows


async def fresh_switch(grpc: str, schema: P4Schema) -> Session:
    """A session as primary on a switch whose pipeline was just pushed (empty
    tables), its two ports in flowtable 1."""
    s = Session(grpc, election_id=10)
    await s.connect(10)
    await s.set_pipeline(schema.p4info, (ROOT / "p4src/build/flowtable.json").read_bytes())
    await s.write([p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=port_entry(schema, p, 1)))
                   for p in (1, 2)])
    return s


async def bare_client(grpc: str, schema: P4Schema, n: int, batch_flows: int, in_flight: int = 1) -> float:
    """The same entries written by a plain P4Runtime client: flows per second.
    With in_flight > 1 it keeps that many batches at the switch at once, as
    the daemon does. Entries are built and encoded while the clock runs."""
    s = await fresh_switch(grpc, schema)
    flows = bench_flows(range(n))
    # the daemon's own driver: the same entries (idle timeout included), built
    # the same way, with none of the daemon around it
    driver = P4RuntimeDriver(s, schema)
    pending: set[asyncio.Task] = set()
    t0 = time.monotonic()
    for k in range(0, n, batch_flows):
        while len(pending) >= in_flight:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                assert not t.result().failed, t.result().failed[:3]
        pending.add(asyncio.create_task(driver.add(flows[k:k + batch_flows])))
    for t in pending:
        assert not (await t).failed
    dt = time.monotonic() - t0
    await s.close()
    return n / dt


def encoded_writes(s: Session, schema: P4Schema, flows: list[Flow], batch_flows: int) -> list[bytes]:
    """WriteRequests, serialized: the next hops the flows name, then the
    flows' entries in batches, exactly as the daemon's driver builds them."""
    driver = P4RuntimeDriver(s, schema)
    ttl = int(30 * 1e9) if driver.idle_timeout else 0
    nhs = assign(driver.nexthops, flows)
    reqs = [[driver.nexthops.update(nh, p4r.Update.INSERT) for nh in nhs]] if nhs else []
    for k in range(0, len(flows), batch_flows):
        ups = []
        for f in flows[k:k + batch_flows]:
            for d in Dir:
                u = p4r.Update(type=p4r.Update.INSERT)
                flow_entry(schema, f, d, True, ttl, entry=u.entity.table_entry)
                ups.append(u)
        reqs.append(ups)
    eid = p4r.Uint128(high=s.election_id >> 64, low=s.election_id & (2**64 - 1))
    return [p4r.WriteRequest(device_id=s.device_id, election_id=eid, updates=u).SerializeToString() for u in reqs]


def raw_write(s: Session):
    """Write, taking a serialized WriteRequest: no encoding on the clock."""
    return s._channel.unary_unary("/p4.v1.P4Runtime/Write", request_serializer=None,
                                  response_deserializer=None)


async def yardstick(grpc: str, schema: P4Schema, n: int, batch_flows: int, in_flight: int) -> float:
    """The switch's limit: the same entries (and their next hops), encoded
    before the clock starts, replayed in the same batch size with the same
    number of batches in flight. Flows per second."""
    s = await fresh_switch(grpc, schema)
    reqs = encoded_writes(s, schema, bench_flows(range(n)), batch_flows)
    write = raw_write(s)
    await write(reqs[0])          # the next hops: the daemon writes them once, too
    slots = asyncio.Semaphore(in_flight)

    async def one(req: bytes) -> None:
        async with slots:
            await write(req)
    t0 = time.monotonic()
    await asyncio.gather(*(one(r) for r in reqs[1:]))
    dt = time.monotonic() - t0
    await s.close()
    return n / dt


async def write_round_trip(grpc: str, schema: P4Schema, samples: int, pace: float | None = None) -> list[float]:
    """One flow's two entries, pre-encoded, written alone: seconds per Write,
    one sample per flow (each then deleted, off the clock). Back to back, or
    one write every 1/pace seconds, as flows arrive in the latency run: a
    client and a switch that wait between writes answer slower than busy
    ones (their threads sleep, their caches cool)."""
    s = await fresh_switch(grpc, schema)
    flows = bench_flows(range(samples))
    adds = encoded_writes(s, schema, flows, 1)
    write = raw_write(s)
    await write(adds[0])
    driver = P4RuntimeDriver(s, schema)
    out = []
    t0 = time.monotonic()
    for n, (f, req) in enumerate(zip(flows, adds[1:])):
        if pace:
            await asyncio.sleep(max(0.0, t0 + (n + 1) / pace - time.monotonic()))
        t = time.monotonic()
        await write(req)
        out.append(time.monotonic() - t)
        await driver._batch([f], p4r.Update.DELETE, False, "delete")
    await s.close()
    return out


def profiler(pid: int, out: str) -> subprocess.Popen:
    """py-spy sampling the daemon (its Python threads, 200 Hz) while the burst runs, without
    stopping it for each sample (--nonblocking): stopped 500 times a second, a restarted
    daemon at 100,000 flows took 76 s to reconcile instead of 12."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    p = subprocess.Popen([spy, "record", "-p", str(pid), "-r", "200", "--nonblocking", "--format", "raw", "-o", out],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1)     # attached before the burst starts (py-spy has no ready signal)
    return p


# valgrind's callgrind around the burst's daemon, counting nothing until told
# (callgrind_control -i on): its instructions while it offloads the burst,
# all threads, the kernel's work not included. Instructions, unlike CPU
# seconds, do not move with the machine's speed (calibration()), as long as
# the work does not depend on the time it takes: the daemon runs as
# bench/callgrind_daemon.py, whose route cache keeps its answers as long as
# in a burst at full speed.
CALLGRIND = ("valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/var/tmp/p4ftb-callgrind.%p")


def callgrind_instructions(pid: int) -> int:
    """Dumps the counts callgrind has for the daemon and stops counting:
    the instructions since counting was switched on."""
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
    total = 0
    for f in Path("/var/tmp").glob(f"p4ftb-callgrind.{pid}*"):
        m = re.search(r"^(?:summary|totals): (\d+)", f.read_text(errors="replace"), re.M)
        total += int(m.group(1)) if m else 0
        f.unlink()
    return total


def stop_profiler(p: subprocess.Popen, out: str, top: int = 25) -> dict:
    """Stops py-spy; the functions with the most samples, self and inclusive,
    as shares of the daemon's busy samples (idle waits in the event loop's
    select are left out)."""
    p.send_signal(2)
    p.wait(60)
    selfs: dict[str, int] = {}
    incl: dict[str, int] = {}
    busy = 0
    for line in Path(out).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or "select (selectors.py" in frames[-1] or "poll (" in frames[-1]:
            continue
        n = int(n)
        busy += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in frames]     # by function, not by line
        leaf = frames[-1]
        selfs[leaf] = selfs.get(leaf, 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    pick = lambda d: [(k, round(v / busy, 4)) for k, v in sorted(d.items(), key=lambda x: -x[1])[:top]]  # noqa: E731
    return {"busy_samples": busy, "self": pick(selfs), "inclusive": pick(incl)}


@contextlib.contextmanager
def monitoring(kind: str):
    """A `p4ft monitor` client on the daemon's socket for the burst: one
    that reads every event (a thread counting their lines), or one that
    never reads (its socket fills; the daemon's queue for it then, up to
    its bound). What it costs the daemon shows in its CPU and
    instructions. Yields a list that holds, once the block ends, the lines
    the reading client read (the "monitoring" answer among them)."""
    read: list[int] = []
    if kind == "none":
        yield read
        return
    mon = socket.socket(socket.AF_UNIX)
    mon.connect(SOCK)
    mon.sendall(b'{"cmd": "monitor", "args": {}}\n')
    poll(lambda: call("stats", path=SOCK)["monitors"] >= 1, 10, "the monitor to subscribe", 0.01)

    def reading() -> None:
        read.append(sum(chunk.count(b"\n") for chunk in iter(lambda: mon.recv(1 << 16), b"")))
    reader = None
    if kind == "reading":
        reader = threading.Thread(target=reading, daemon=True)
        reader.start()
    try:
        yield read
    finally:
        mon.shutdown(socket.SHUT_RDWR)
        if reader is not None:
            reader.join(10)
        mon.close()


def calibration(rounds: int = 3) -> float:
    """CPU seconds of a fixed pure-Python workload (small objects, dict
    lookups, calls: what a flow costs), the least of `rounds`: the
    machine's speed at the moment. Taken before and after the burst, beside
    the daemon's CPU per flow: on this machine kind the same code measured
    40 us a flow in one run and 60 in the next, and this workload's time
    was seen to double between the two ends of one run, so it tells which
    runs' CPU figures can be compared, not a factor to divide them by."""
    class Obj:
        __slots__ = ("a", "b")

        def __init__(self, a, b):
            self.a, self.b = a, b

    def work(n: int = 100_000) -> int:
        d: dict = {}
        for i in range(n):
            o = Obj(i & 0xFFFF, i >> 4)
            k = (o.a, o.b)
            d[k] = d.get(k, 0) + len(str(i))
        return len(d)

    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        work()
        best = min(best, time.process_time() - t0)
    return best


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=10000)
    ap.add_argument("--latency-flows", type=int, default=1000)
    ap.add_argument("--pace", type=float, default=200.0, help="entries per second for the latency run")
    ap.add_argument("--rtt-samples", type=int, default=500, help="pre-encoded single-flow writes timed")
    ap.add_argument("--profile", metavar="FILE", help="sample the daemon with py-spy during the burst (raw stacks)")
    ap.add_argument("--callgrind", action="store_true",
                    help="run the burst's daemon under valgrind's callgrind: its instructions per flow (slow)")
    ap.add_argument("--monitor", choices=("none", "reading", "stalled"), default="none",
                    help="a `p4ft monitor` client during the burst: one that reads its events, or one that never does")
    ap.add_argument("--switch", default="bmv2" if shutil.which("simple_switch_grpc") else "soft")
    ap.add_argument("--out", default=str(ROOT / "bench/results/offload_rate.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("offload_rate: needs root", file=sys.stderr)
        return 1
    schema = P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")
    ruleset = Path("/tmp/p4ftb.nft")
    ruleset.write_text(make_ruleset())
    setup_router()
    result = {"bench": "offload_rate", "switch": a.switch, "flows": a.flows, "monitor": a.monitor}
    d = None
    with switch_on_veths(a.switch, LINKS) as grpc:
        try:
            # 1. time-to-offload, daemon running, steady arrivals
            d = start_daemon(grpc, ruleset)
            asyncio.run(create_entries(range(a.latency_flows), a.pace))
            t = wait_offloaded(a.latency_flows, 60, samples=True)
            lat = t["latency"]
            result["latency"] = {"flows": len(lat), "pace_per_s": a.pace, "p50_ms": 1000 * percentile(lat, 0.5),
                                 "p99_ms": 1000 * percentile(lat, 0.99), "samples_ms": [1000 * x for x in lat]}
            # each flow's time split: waiting on the switch (its add's writes), and the rest, the controller's
            sw = t["switch"]
            ctl = [x - s for x, s in zip(lat, sw)]
            for part, xs in (("switch", sw), ("controller", ctl)):
                result["latency"][part] = {"p50_ms": 1000 * percentile(xs, 0.5), "p99_ms": 1000 * percentile(xs, 0.99)}
            # the first N_HOSTS flows are each the first to their LAN host: route answers the cache does
            # not hold yet, and, where the daemon holds no next hop for the host's neighbour (nexthop.py),
            # a next hop to write before the flow's entries; the rest find the next hop written (the
            # samples come in the order the flows were offloaded: at this pace, the order they were made)
            for part, xs in (("first_to_host", lat[:N_HOSTS]), ("host_known", lat[N_HOSTS:])):
                if xs:
                    result["latency"][part] = {"flows": len(xs), "p50_ms": 1000 * percentile(xs, 0.5),
                                               "p99_ms": 1000 * percentile(xs, 0.99)}
            c = call("counters", path=SOCK)
            result["latency"]["nexthops"] = {"held": c.get("nexthops_held"), "all": c.get("nexthops"),
                                             "written_for_neighbours": c.get("reroute.neighbours_written", 0),
                                             "writes": c.get("nexthop_writes")}
            stop(d)
            flush_conntrack()
            # 2. setup rate: a burst of N established connections while the
            # daemon runs (those found at its start are the reconcile's,
            # docs/restarts.md); conntrack's creation rate is reported beside
            calib = [calibration()]
            if a.callgrind:
                d = start_daemon(grpc, ruleset, prefix=CALLGRIND, ready_within=600,
                                 main=(str(ROOT / "bench/callgrind_daemon.py"),))
                subprocess.run(["callgrind_control", "-i", "on", str(d.pid)], check=True, capture_output=True)
            else:
                d = start_daemon(grpc, ruleset)
            spy = profiler(d.pid, a.profile) if a.profile else None
            with monitoring(a.monitor) as lines:
                switch_cpu = cpu_seconds(grpc.pid)
                create_rate = asyncio.run(create_entries(range(a.flows)))
                t = wait_offloaded(a.flows, 600 if not a.callgrind else 3600)
                # the switch is idle but for the burst's writes (and the polls of wait_offloaded)
                switch_cpu = cpu_seconds(grpc.pid) - switch_cpu
                if a.callgrind:
                    result["instructions_per_flow"] = callgrind_instructions(d.pid) / a.flows
                if a.monitor == "reading":      # its events read before it hangs up
                    poll(lambda: not call("stats", path=SOCK)["monitor_queued"], 60,
                         "the reading monitor to be sent every event", 0.05)
            if lines:
                result["monitor_lines_read"] = lines[0]
            if spy is not None:
                result["profile"] = stop_profiler(spy, a.profile)
            counters = call("counters", path=SOCK)
            resyncs = counters.get("ct_resync", 0)    # events lost to the burst, dumped again
            asked = counters.get("route.asked", 0)    # route lookups not answered by the cache
            rate = a.flows / (t["last_offloaded"] - t["first_decided"])
            cpu_per_flow = t["cpu_seconds"] / a.flows
            kernel_per_flow = t["cpu_kernel_seconds"] / a.flows
            batch = max(1, round(t["offloaded"] / max(1, t["batches"])))
            stop(d)
            calib.append(calibration())
            flush_conntrack()
            # 3. the yardstick, the switch's limit: the same entries encoded
            # before the clock, replayed in the daemon's batch size with as
            # many batches in flight; and one flow's pre-encoded write round
            # trip, what time-to-offload is held against
            yard_cpu = cpu_seconds(grpc.pid)
            limit = asyncio.run(yardstick(grpc, schema, a.flows, batch, WRITES_IN_FLIGHT))
            yard_cpu = cpu_seconds(grpc.pid) - yard_cpu
            rtt = asyncio.run(write_round_trip(grpc, schema, a.rtt_samples))
            paced = asyncio.run(write_round_trip(grpc, schema, a.rtt_samples, a.pace))
            # 4. for continuity with earlier figures: a bare Python client
            # through the daemon's driver, encoding while the clock runs
            bare1 = asyncio.run(bare_client(grpc, schema, a.flows, batch))
            bare2 = asyncio.run(bare_client(grpc, schema, a.flows, batch, WRITES_IN_FLIGHT))
            bare = max(bare1, bare2)
            rtt50 = percentile(rtt, 0.5)
            result["round_trip"] = {"samples": len(rtt), "p50_ms": 1000 * rtt50, "p99_ms": 1000 * percentile(rtt, 0.99),
                                    "paced": {"pace_per_s": a.pace, "p50_ms": 1000 * percentile(paced, 0.5),
                                              "p99_ms": 1000 * percentile(paced, 0.99)}}
            lt = result["latency"]
            lt["p50_over_round_trip"] = lt["p50_ms"] / (1000 * rtt50)
            lt["p99_over_round_trip"] = lt["p99_ms"] / (1000 * rtt50)
            result["setup"] = {"daemon_flows_per_s": rate, "yardstick_flows_per_s": limit,
                               "ratio_to_yardstick": rate / limit,
                               "bare_flows_per_s": bare, "ratio": rate / bare,
                               "bare_one_in_flight_flows_per_s": bare1,
                               f"bare_{WRITES_IN_FLIGHT}_in_flight_flows_per_s": bare2,
                               "mean_batch_flows": batch, "ctnetlink_create_per_s": create_rate,
                               "conntrack_resyncs": resyncs, "route_lookups_asked": asked,
                               "daemon_cpu_us_per_flow": 1e6 * cpu_per_flow,
                               # of it, the kernel's work in the daemon's system calls
                               "daemon_kernel_cpu_us_per_flow": 1e6 * kernel_per_flow,
                               # the machine's speed just before and after (calibration())
                               "calibration_ms": [1000 * c for c in calib],
                               # the switch's own CPU a flow, under the daemon's burst and the yardstick's,
                               # and the cores each kept busy at its rate: the two share the machine's
                               "switch_cpu_us_per_flow": 1e6 * switch_cpu / a.flows,
                               "yardstick_switch_cpu_us_per_flow": 1e6 * yard_cpu / a.flows,
                               "cores": os.cpu_count(),
                               "daemon_cores_in_burst": rate * cpu_per_flow,
                               "yardstick_switch_cores": limit * yard_cpu / a.flows}
        finally:
            if d is not None and d.poll() is None:
                stop(d)
            Router(NS).stop()
    save(a.out, result)
    lt, st = result["latency"], result["setup"]
    print(f"switch {a.switch}" + (f", a {a.monitor} monitor during the burst" if a.monitor != "none" else ""))
    rt = result["round_trip"]
    print(f"time-to-offload over {lt['flows']} flows: p50 {lt['p50_ms']:.2f} ms, p99 {lt['p99_ms']:.2f} ms; "
          f"one pre-encoded write of a flow's two entries: p50 {rt['p50_ms']:.2f} ms "
          f"(its own p99 {rt['p99_ms']:.2f} ms, {rt['p99_ms'] / rt['p50_ms']:.1f}x): "
          f"p50 {lt['p50_over_round_trip']:.1f}x, p99 {lt['p99_over_round_trip']:.1f}x")
    print(f"  the same write at the latency run's pace ({a.pace:.0f}/s): p50 {rt['paced']['p50_ms']:.2f} ms, "
          f"p99 {rt['paced']['p99_ms']:.2f} ms; time-to-offload against it: "
          f"p50 {lt['p50_ms'] / rt['paced']['p50_ms']:.1f}x, p99 {lt['p99_ms'] / rt['paced']['p50_ms']:.1f}x")
    print(f"  of each flow's time, waiting on the switch (its next hops' and entries' writes): p50 "
          f"{lt['switch']['p50_ms']:.2f} ms, p99 {lt['switch']['p99_ms']:.2f} ms; the controller's part: p50 "
          f"{lt['controller']['p50_ms']:.2f} ms, p99 {lt['controller']['p99_ms']:.2f} ms")
    if "host_known" in lt:
        fh, hk = lt["first_to_host"], lt["host_known"]
        nh = lt.get("nexthops") or {}
        print(f"  next hops: {nh.get('all')}, {nh.get('held')} of them held for their neighbours; next-hop "
              f"updates {nh.get('writes')}, {nh.get('written_for_neighbours')} of them for neighbours learnt")
        print(f"  the first flow to each of the {fh['flows']} LAN hosts: "
              f"p50 {fh['p50_ms']:.2f} ms, p99 {fh['p99_ms']:.2f} ms; the {hk['flows']} others: "
              f"p50 {hk['p50_ms']:.2f} ms, p99 {hk['p99_ms']:.2f} ms ({hk['p99_ms'] / rt['paced']['p50_ms']:.1f}x "
              f"the paced write)")
    print(f"yardstick (pre-encoded, batch {st['mean_batch_flows']}, {WRITES_IN_FLIGHT} in flight): "
          f"{st['yardstick_flows_per_s']:.0f} flows/s; daemon {st['daemon_flows_per_s']:.0f} flows/s: "
          f"{st['ratio_to_yardstick']:.2f}x")
    print(f"setup rate: daemon {st['daemon_flows_per_s']:.0f} flows/s, bare client "
          f"{st['bare_one_in_flight_flows_per_s']:.0f} flows/s one batch at a time, "
          f"{st[f'bare_{WRITES_IN_FLIGHT}_in_flight_flows_per_s']:.0f} with {WRITES_IN_FLIGHT} in flight "
          f"(batch {st['mean_batch_flows']} flows): ratio {st['ratio']:.2f}; "
          f"daemon CPU {st['daemon_cpu_us_per_flow']:.0f} us per flow "
          f"({st['daemon_kernel_cpu_us_per_flow']:.0f} us of it in the kernel); conntrack events lost and dumped again "
          f"{st['conntrack_resyncs']} time(s)")
    print(f"  the switch's CPU per flow: {st['switch_cpu_us_per_flow']:.0f} us under the daemon's burst, "
          f"{st['yardstick_switch_cpu_us_per_flow']:.0f} us under the yardstick's, which kept "
          f"{st['yardstick_switch_cores']:.2f} cores busy; the daemon kept {st['daemon_cores_in_burst']:.2f} "
          f"busy in its burst; the machine has {st['cores']}")
    print(f"  the machine's speed: a fixed Python workload took {st['calibration_ms'][0]:.1f} ms before the burst "
          f"and {st['calibration_ms'][1]:.1f} ms after")
    if "instructions_per_flow" in result:
        print(f"  under callgrind (the burst's rate and CPU above are valgrind's, not the daemon's): "
              f"{result['instructions_per_flow']:.0f} instructions per flow; route lookups asked of the kernel "
              f"(not answered by the cache): {st['route_lookups_asked']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
