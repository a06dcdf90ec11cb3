"""Shared set-up of the integration tests: the topology on each available switch.

A test needing what this machine lacks (root, Mininet, a switch) is skipped
with the reason, never passed.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOSTTOOL = str(ROOT / "tests" / "hosttool.py")
PY = sys.executable


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, Mininet)"
    try:
        import mininet.net  # noqa: F401  (availability check)
    except ImportError:
        return "needs Mininet (Debian package 'mininet'; its module lives in the system Python)"
    for tool in ("nft", "ip", "tcpdump"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


def targets() -> list:
    """One pytest param per switch kind; unavailable ones carry a skip reason."""
    want = os.environ.get("P4FT_TARGETS", "bmv2,soft").split(",")
    out = []
    reason = missing()
    for kind in want:
        marks = []
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        elif kind == "bmv2" and not shutil.which("simple_switch_grpc"):
            marks.append(pytest.mark.skip(reason="BMv2 (simple_switch_grpc) is not installed on this machine"))
        elif kind == "tofino-model":
            if not (shutil.which("tofino-model") and shutil.which("bf_switchd")):
                why = ("the Tofino model (tofino-model, and bf_switchd with its P4Runtime server) is not installed "
                       "on this machine: docs/tofino.md")
            else:
                why = "no switch class starts the Tofino model yet (docs/tofino.md): it could not be run where p4ft was built"
            marks.append(pytest.mark.skip(reason=why))
        out.append(pytest.param(kind, marks=marks, id=kind))
    return out


def start_net(kind: str, **kw):
    from p4ft_topo import FlowtableNet
    from mininet.log import setLogLevel
    setLogLevel("warning")
    net = FlowtableNet(kind, **kw)
    try:
        net.start()
    except Exception:
        net.stop()
        raise
    print(f"\n[p4ft] integration tests on switch: {net.kind}")
    return net


# where a module with a failed test keeps its topology's logs (not *.log in
# /tmp itself: Mininet's cleanup deletes those); .ci/run shows them
KEPT_LOGS = Path("/tmp/p4ft/failed")


def keep_logs(name: str, since: float) -> Path:
    """The topology's logs written since `since` (the switch's, the
    daemons', the ruleset) copied under KEPT_LOGS/name, before the next
    module's topology writes its own over them."""
    from p4ft_topo import LOG_DIR
    dest = KEPT_LOGS / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in LOG_DIR.iterdir():
        if f.is_file() and f.stat().st_mtime >= since:
            shutil.copy2(f, dest / f.name)
    return dest


def net_per_switch(**kw):
    """A module's `net` fixture: one FlowtableNet per available switch kind,
    started with these FlowtableNet arguments, shared by the module's tests.
    If one of them failed, the topology's logs are kept (keep_logs)."""
    @pytest.fixture(scope="module", params=targets())
    def net(request):
        started, failed = time.time(), request.session.testsfailed
        n = start_net(request.param, **kw)
        yield n
        n.stop()
        if request.session.testsfailed > failed:
            print(f"\n[p4ft] logs kept in {keep_logs(f'{request.module.__name__}-{n.kind}', started - 1)}")
    return net


def packet_in_header(schema, pkt) -> bytes:
    """A PacketIn's metadata as the packet_in header the data plane
    emitted (its fields in P4Info order, packed big-endian): what the
    embedded target's pipeline puts before a punted frame."""
    fields = schema.packet_meta("packet_in").values()
    meta = {m.metadata_id: int.from_bytes(m.value, "big") for m in pkt.metadata}
    acc = 0
    for f in fields:
        acc = (acc << f.bitwidth) | meta.get(f.id, 0)
    return acc.to_bytes(sum(f.bitwidth for f in fields) // 8, "big")


class Wire:
    """Raw sockets on the host ends of a switch's veths. send(port, frame)
    puts a frame into the switch's port; received is an asyncio.Queue of
    (port, frame) for what the switch sent out of its ports (our own
    transmissions left out). Made in the loop that will read it."""

    def __init__(self, hosts: dict[int, str]):
        import asyncio
        import socket
        self.received: asyncio.Queue = asyncio.Queue()
        self._tx, self._rx = {}, []
        self._loop = asyncio.get_running_loop()
        for port, host in hosts.items():
            t = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            t.bind((host, 0))
            self._tx[port] = t
            r = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            r.bind((host, 0))
            r.setblocking(False)
            self._rx.append(r)

            def on_read(port=port, r=r):
                while True:
                    try:
                        data, addr = r.recvfrom(65535)
                    except BlockingIOError:
                        return
                    if addr[2] != socket.PACKET_OUTGOING:
                        self.received.put_nowait((port, data))
            self._loop.add_reader(r.fileno(), on_read)

    def send(self, port: int, frame: bytes) -> None:
        self._tx[port].send(frame)

    def close(self) -> None:
        for r in self._rx:
            self._loop.remove_reader(r.fileno())
            r.close()
        for t in self._tx.values():
            t.close()


def wait_for(pred, timeout: float, what: str, interval: float = 0.05):
    from p4ft_topo import wait_until
    return wait_until(pred, timeout, what, interval, error=AssertionError)


def read_json(path: str, timeout: float = 30):
    wait_for(lambda: os.path.exists(path), timeout, f"{path}")
    return json.loads(Path(path).read_text())


def host_tool(host, *args: str):
    return host.popen([PY, HOSTTOOL, *args])


def flows(net, cached: bool = False) -> list[dict]:
    """`p4ft flow list`; cached: without reading the switch's counters."""
    return net.api("flow_list", {"refresh": not cached})


def flow_for(net, proto: str, sport: int | None = None, dport: int | None = None,
             cached: bool = False) -> dict | None:
    for r in flows(net, cached):
        if r["proto"] != proto:
            continue
        if sport is not None and r["orig"]["sport"] != sport:
            continue
        if dport is not None and r["orig"]["dport"] != dport:
            continue
        return r
    return None


def forward_packets(net) -> int:
    """Packets counted by the router's forward chain (the slow path), whatever
    the family of its table."""
    from p4ft_topo import sh
    out = sh("nft", "list", "ruleset")
    m = re.search(r"chain forward \{[^}]*?counter packets (\d+) bytes", out, re.S)
    assert m, f"no counter in the forward chain:\n{out}"
    return int(m.group(1))


def switch_channel(net):
    """A second client's channel to the switch: over TLS with the test's
    reader certificate where the net's switch requires one (net.reader_tls)."""
    import grpc
    addr = f"127.0.0.1:{net.grpc_port}"
    tls = getattr(net, "reader_tls", None)
    if tls is None:
        return grpc.insecure_channel(addr)
    return grpc.secure_channel(addr, tls.channel_credentials())


def switch_flow_entries(net, missing_ok: bool = False, counters: bool = False) -> list | None:
    """flow_table_v4 entries as the switch holds them (read by a second client).

    missing_ok: None instead of an error while the switch has no pipeline.
    counters: with each entry's direct counter.
    """
    import grpc
    from google.protobuf import text_format
    from p4.config.v1 import p4info_pb2
    from p4.v1 import p4runtime_pb2 as p4r, p4runtime_pb2_grpc
    p4info = p4info_pb2.P4Info()
    text_format.Parse((ROOT / "p4src/build/flowtable.p4info.txtpb").read_text(), p4info)
    tid = next(t.preamble.id for t in p4info.tables if t.preamble.name.endswith("flow_table_v4"))
    with switch_channel(net) as ch:
        stub = p4runtime_pb2_grpc.P4RuntimeStub(ch)
        req = p4r.ReadRequest(device_id=1, entities=[p4r.Entity(table_entry=p4r.TableEntry(table_id=tid))])
        if counters:
            req.entities[0].table_entry.counter_data.SetInParent()
        try:
            return [e.table_entry for resp in stub.Read(req, timeout=10) for e in resp.entities]
        except grpc.RpcError:
            if missing_ok:
                return None
            raise


def switch_nexthops(net) -> dict[int, tuple[int, str]]:
    """nexthop_table as the switch holds it (read by a second client): id -> (port, dst MAC)."""
    from p4flowtable.nexthop import NextHops
    from p4flowtable.p4info import P4Schema
    from p4.v1 import p4runtime_pb2 as p4r, p4runtime_pb2_grpc
    nhs = NextHops(P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb"))
    with switch_channel(net) as ch:
        stub = p4runtime_pb2_grpc.P4RuntimeStub(ch)
        req = p4r.ReadRequest(device_id=1, entities=[p4r.Entity(table_entry=p4r.TableEntry(table_id=nhs.table_id))])
        out = {}
        for resp in stub.Read(req, timeout=10):
            for e in resp.entities:
                got = nhs.decode(e.table_entry)
                if got is not None:
                    out[got[0]] = (got[1], got[3])
        return out


def stats(net) -> dict:
    return net.api("stats")


def capture(host, intf: str, path: str, bpf: str):
    """tcpdump on a host; returns the process (stop it with stop_capture)."""
    p = host.popen(["tcpdump", "-i", intf, "-U", "-n", "-w", path, bpf],
                   stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([p.stderr], [], [], 10)
    line = p.stderr.readline() if ready else ""
    assert "listening on" in line, f"tcpdump on {intf} did not start: {line!r}"
    return p


def stop_capture(p) -> None:
    p.terminate()
    p.wait(5)
