"""Replaying P4Testgen's STF tests (stf.py) on a switch running the v1model
program, through P4Runtime: each test's entries written, its packet sent, what
comes out collected, its entries deleted.

- The embedded target: its P4Runtime server in this process, on loopback;
  packets go into its pipeline as its ports would hand them in.
- BMv2: simple_switch_grpc on veth pairs; packets on the wire, the CPU's
  through PacketOut, punts read as PacketIn. A test's end is known by a
  sentinel frame sent after its packet on the same way in (BMv2 takes a port's
  packets in order): an experimental EtherType that the program punts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from p4.v1 import p4runtime_pb2 as p4r

from p4flowtable.p4info import P4Schema, encode
from p4flowtable.p4runtime import Session
from p4flowtable.softswitch.server import SoftSwitchServer, serve_local
from integration import Wire, packet_in_header
from stf import PACKET_OUT_BYTES, V1_CPU, Entry, StfTest

ROOT = Path(__file__).resolve().parents[1]
V1_JSON = ROOT / "p4src/build/flowtable.json"
V1_P4INFO = ROOT / "p4src/build/flowtable.p4info.txtpb"
SENTINEL_TYPE = b"\x88\xb5"     # IEEE 802 local experimental EtherType
SENTINEL = b"\x02\x00\x00\x00\x00\xaa" + b"\x02\x00\x00\x00\x00\xbb" + SENTINEL_TYPE + b"p4ft-replay-sentinel" + bytes(26)


def table_entry(schema: P4Schema, e: Entry) -> p4r.TableEntry:
    t, a = schema.table(e.table), schema.action(e.action)
    entry = p4r.TableEntry(table_id=t.id)
    for name, value in e.keys.items():
        f = t.field(name)
        entry.match.add(field_id=f.id, exact=p4r.FieldMatch.Exact(value=encode(value, f.bitwidth)))
    entry.action.action.action_id = a.id
    for name, value in e.params.items():
        p = a.param(name)
        entry.action.action.params.add(param_id=p.id, value=encode(value, p.bitwidth))
    return entry


def _updates(schema: P4Schema, t: StfTest, kind) -> list[p4r.Update]:
    return [p4r.Update(type=kind, entity=p4r.Entity(table_entry=table_entry(schema, e))) for e in t.entries]


class NotReplayable(Exception):
    """A test this switch cannot be given (say, a frame a Linux interface
    cannot send): counted and reported, not compared."""


MIN_FRAME = 14      # what AF_PACKET sends on an Ethernet device


class EmbeddedReplay:
    """The embedded target, programmed over P4Runtime."""

    front_ports = [1, 2, 3, 4]

    def __init__(self):
        self.schema = P4Schema.from_file(V1_P4INFO)
        self.impl = SoftSwitchServer(1, V1_CPU)
        self.server, self.addr = serve_local(self.impl)
        self.session = Session(self.addr)

    async def start(self) -> None:
        await self.session.connect(10)
        await self.session.set_pipeline(self.schema.p4info, V1_JSON.read_bytes())

    async def run(self, t: StfTest) -> list[tuple[int, bytes]]:
        await self.session.write(_updates(self.schema, t, p4r.Update.INSERT), what=t.name)
        try:
            outputs = []
            for port, data in t.packets:
                out = self.impl.pipeline.prog.process(port, data)
                if out is not None:
                    outputs.append((out.port, bytes(out.data)))
            return outputs
        finally:
            await self.session.write(_updates(self.schema, t, p4r.Update.DELETE), what=t.name)

    async def close(self) -> None:
        await self.session.close()
        self.server.stop(0)


class Bmv2Replay:
    """BMv2 on veth pairs (its ports 1..n), programmed over P4Runtime."""

    def __init__(self, grpc_addr: str, hosts: dict[int, str]):
        self.schema = P4Schema.from_file(V1_P4INFO)
        self.session = Session(grpc_addr)
        self.hosts = hosts
        self.front_ports = sorted(hosts)
        pout = self.schema.packet_meta("packet_out")
        self._pout = [(f.id, f.bitwidth) for f in pout.values()]

    async def start(self) -> None:
        await self.session.connect(30)
        await self.session.set_pipeline(self.schema.p4info, V1_JSON.read_bytes())
        self.wire = Wire(self.hosts)
        self.got = self.wire.received
        self._pumping = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        while True:
            pkt = await self.session.packet_in.get()
            self.got.put_nowait((V1_CPU, packet_in_header(self.schema, pkt) + pkt.payload))

    def _send(self, port: int, data: bytes) -> None:
        if port == V1_CPU:
            header, payload = data[:PACKET_OUT_BYTES], data[PACKET_OUT_BYTES:]
            acc, shift, md = int.from_bytes(header, "big"), PACKET_OUT_BYTES * 8, []
            for fid, width in self._pout:
                shift -= width
                md.append(p4r.PacketMetadata(metadata_id=fid, value=encode((acc >> shift) & ((1 << width) - 1),
                                                                            width)))
            self.session.packet_out(payload, md)
        else:
            self.wire.send(port, data)

    async def run(self, t: StfTest) -> list[tuple[int, bytes]]:
        short = [len(d) for p, d in t.packets if p != V1_CPU and len(d) < MIN_FRAME]
        if short:
            raise NotReplayable(f"a {short[0]}-byte frame: a veth sends no frame shorter than an Ethernet header")
        short = [len(x.data) for x in t.expects if x.port != V1_CPU and len(x.data) < MIN_FRAME]
        if short:
            raise NotReplayable(f"a {short[0]}-byte frame out: a veth delivers no frame shorter than an "
                                f"Ethernet header")
        while not self.got.empty():
            self.got.get_nowait()
        await self.session.write(_updates(self.schema, t, p4r.Update.INSERT), what=t.name)
        try:
            outputs = []
            for port, data in t.packets:
                self._send(port, data)
                # the sentinel follows the packet in: punted from a front port;
                # from the CPU, sent out of port 1
                self._send(port, SENTINEL if port != V1_CPU else encode(self.front_ports[0] << 7, 16) + SENTINEL)
                deadline = asyncio.get_running_loop().time() + 10
                while True:
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        raise TimeoutError(f"{t.name}: the sentinel did not come back")
                    p, d = await asyncio.wait_for(self.got.get(), left)
                    if SENTINEL in d:
                        break
                    outputs.append((p, d))
                # what left by another way than the sentinel may trail it
                await asyncio.sleep(0.05)
                while not self.got.empty():
                    p, d = self.got.get_nowait()
                    if SENTINEL not in d:
                        outputs.append((p, d))
            return outputs
        finally:
            await self.session.write(_updates(self.schema, t, p4r.Update.DELETE), what=t.name)

    async def close(self) -> None:
        self._pumping.cancel()
        self.wire.close()
        await self.session.close()
