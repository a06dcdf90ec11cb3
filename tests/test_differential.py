"""Differential test: BMv2 and the embedded target, same pipeline, same table
writes, same 10,000 generated packets (IPv4 and IPv6, valid and malformed,
every punt reason): identical output packets on identical ports, identical
PacketIns, identical counters. Runs where BMv2 is installed (and as root)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import shutil
from pathlib import Path

import pytest
from p4.v1 import p4runtime_pb2 as p4r
from scapy.all import ARP, ICMP, IP, IPv6, TCP, UDP, Ether, Raw
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop

from p4flowtable.ip import flow_entry
from p4flowtable.nexthop import NextHops, assign
from p4flowtable.model import Dir, Flow, FlowRoute, FlowTuple
from p4flowtable.offload import port_entry
from p4flowtable.p4info import P4Schema
from p4flowtable.p4runtime import Session, WriteError
from p4flowtable.softswitch.server import Pipeline, SoftSwitchServer
from integration import Wire, packet_in_header
from p4ft_topo import free_tcp_port, start_switch_process, veth_links

ROOT = Path(__file__).resolve().parents[1]
N_PACKETS = 10_000
CPU = 510
A = ipaddress.IPv4Address
A6 = ipaddress.IPv6Address
LINKS = [(1, "p4ftd-sw1", "p4ftd-h1"), (2, "p4ftd-sw2", "p4ftd-h2"), (3, "p4ftd-sw3", "p4ftd-h3")]
MACS = {1: "02:00:00:00:01:fe", 2: "02:00:00:00:02:01"}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (veth links, raw sockets)"),
    pytest.mark.skipif(not shutil.which("simple_switch_grpc"),
                       reason="BMv2 (simple_switch_grpc) is not installed on this machine"),
]


def flows() -> list[Flow]:
    out = []
    for i, proto in enumerate((6, 17, 6, 17)):
        orig = FlowTuple(A(f"10.0.1.{i + 1}"), A("192.0.2.2"), proto, 40000 + i, 80 + i)
        reply = FlowTuple(A("192.0.2.2"), A("192.0.2.1"), proto, 80 + i, 61000 + i)
        mtu = 600 if i == 2 else 1500
        out.append(Flow(i, (orig, reply), "ft", 30, iif=(1, 2),
                        routes=(FlowRoute(2, MACS[2], "00:00:00:00:00:02", mtu),
                                FlowRoute(1, MACS[1], "00:00:00:00:00:01", mtu))))
    for i, proto in enumerate((6, 17, 6)):     # IPv6, masqueraded (NAT66)
        orig = FlowTuple(A6(f"2001:db8:1::{i + 1}"), A6("2001:db8:2::2"), proto, 41000 + i, 80 + i)
        reply = FlowTuple(A6("2001:db8:2::2"), A6("2001:db8:2::fe"), proto, 80 + i, 62000 + i)
        mtu = 600 if i == 2 else 1500
        out.append(Flow(10 + i, (orig, reply), "ft", 30, iif=(1, 2),
                        routes=(FlowRoute(2, MACS[2], "00:00:00:00:00:02", mtu),
                                FlowRoute(1, MACS[1], "00:00:00:00:00:01", mtu))))
    for i, (proto, src, dst) in enumerate(((6, A("10.0.1.20"), A("192.0.2.20")),      # routed, no NAT
                                            (17, A("10.0.1.21"), A("192.0.2.21")),
                                            (6, A6("2001:db8:1::20"), A6("2001:db8:2::20")))):
        orig = FlowTuple(src, dst, proto, 42000 + i, 443)
        out.append(Flow(20 + i, (orig, orig.reversed()), "ft", 30, iif=(1, 2),
                        routes=(FlowRoute(2, MACS[2], "00:00:00:00:00:02", 1500),
                                FlowRoute(1, MACS[1], "00:00:00:00:00:01", 1500))))
    return out


def updates(schema: P4Schema) -> list[p4r.Update]:
    ups = [p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=port_entry(schema, p, 1)))
           for p in (1, 2)]
    fl, nexthops = flows(), NextHops(schema)
    ups += [nexthops.update(nh, p4r.Update.INSERT) for nh in assign(nexthops, fl)]
    for f in fl:
        for d in Dir:
            ups.append(p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(
                table_entry=flow_entry(schema, f, d))))
    return ups


def generate(n: int, seed: int = 7) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    fl = flows()
    out = []
    for _ in range(n):
        f = rng.choice(fl)
        d = rng.choice([Dir.ORIGINAL, Dir.REPLY])
        t = f.tuples[d]
        port = f.iif[d]
        kind = rng.choices(["hit", "miss", "finrst", "ttl", "big", "opts", "frag", "badip", "badl4",
                            "trunc", "arp", "v6", "icmp", "unbound", "udp0", "cpuhdr", "badlen"],
                           weights=[30, 8, 5, 5, 4, 4, 4, 4, 6, 6, 3, 3, 3, 4, 3, 3, 8])[0]
        payload = Raw(rng.randbytes(rng.randint(0, 700 if kind == "big" else 200)))
        ttl = rng.choice([0, 1, 2]) if kind == "ttl" else rng.randint(2, 255)
        eth = Ether(src="00:00:00:00:00:0%d" % port, dst=MACS.get(port, "02:00:00:00:00:03"))
        v6 = t.src.version == 6
        iplen = 40 if v6 else 20
        ext = None
        if v6:
            ip = IPv6(src=str(t.src), dst=str(t.dst), hlim=ttl, fl=rng.getrandbits(20))
            if kind == "miss":
                ip.dst = "2001:db8:9::%x" % rng.randint(1, 0xffff)
            if kind in ("opts", "frag"):
                ext = IPv6ExtHdrHopByHop() if kind == "opts" else IPv6ExtHdrFragment(m=rng.randint(0, 1))
        else:
            ip = IP(src=str(t.src), dst=str(t.dst), ttl=ttl, id=rng.randint(0, 65535))
            if kind == "miss":
                ip.dst = "198.51.100.%d" % rng.randint(1, 254)
            if kind == "opts":
                ip.options = [b"\x94\x04\x00\x00"]
            if kind == "frag":
                ip.flags, ip.frag = rng.choice([("MF", 0), (0, 10), ("MF", 20)])
        if t.l4proto == 6:
            flags = rng.choice(["F", "R", "FA", "RA"]) if kind == "finrst" else rng.choice(["A", "PA", "S", "SA"])
            l4 = TCP(sport=t.sport, dport=t.dport, flags=flags, seq=rng.getrandbits(32), ack=rng.getrandbits(32))
        else:
            l4 = UDP(sport=t.sport, dport=t.dport)
        pkt = eth / ip / (ext / l4 if ext is not None else l4) / payload
        raw = bytearray(bytes(pkt))
        if kind == "badip" and not v6:     # IPv6 has no header checksum
            raw[24] ^= 0x5A
        if kind == "badl4" and ext is None:
            off = 14 + iplen + (16 if t.l4proto == 6 else 6)
            raw[off] ^= 0xA5
        if kind == "udp0" and t.l4proto == 17 and ext is None:
            raw[14 + iplen + 6:14 + iplen + 8] = b"\x00\x00"
        if kind == "badlen" and ext is None:    # lengths that disagree with the frame, or doff < 5
            at, actual = (18, len(raw) - 54) if v6 else (16, len(raw) - 14)
            raw[at:at + 2] = ((actual + rng.choice([-40, -12, -1, 1, 300])) & 0xFFFF).to_bytes(2, "big")
            if t.l4proto == 6 and rng.random() < 0.4:
                raw[14 + iplen + 12] = rng.randint(0, 4) << 4
        if kind == "trunc":
            raw = raw[:rng.choice([20, 30, 40, 44, 50, 58])]   # 40, 58: ports but no more
        if kind == "arp":
            raw = bytearray(bytes(eth / ARP(psrc="10.0.1.1", pdst="10.0.1.254")))
        if kind == "v6":
            raw = bytearray(bytes(Ether(src=eth.src, dst=eth.dst) / IPv6() / UDP() / payload))
        if kind == "icmp":
            raw = bytearray(bytes(eth / (IPv6(src=str(t.src), dst=str(t.dst)) / ICMPv6EchoRequest() if v6
                                         else IP(src=str(t.src), dst=str(t.dst)) / ICMP())))
        if kind == "unbound":
            port = 3
        if kind == "cpuhdr":    # bytes shaped like a packet_out header, on a front port
            raw = bytearray(b"\x01\x00") + raw
        if len(raw) < 14:
            raw += b"\x00" * (14 - len(raw))
        out.append((port, bytes(raw)))
    return out


def soft_outputs(schema, packets):
    sw = SoftSwitchServer(1, CPU)
    sw.pipeline = Pipeline(schema.p4info, (ROOT / "p4src/build/flowtable.json").read_bytes(), CPU, 0)
    for u in updates(schema):
        sw._update(sw.pipeline, u)
    nbytes = sum(f.bitwidth for f in schema.packet_meta("packet_in").values()) // 8
    res = []
    for port, data in packets:
        out = sw.pipeline.prog.process(port, data)
        if out is None:
            res.append(None)
        elif out.port == CPU:
            res.append(("cpu", out.data[:nbytes], out.data[nbytes:]))
        else:
            res.append((out.port, out.data))
    counters = []
    for name in ("flow_table_v4", "flow_table_v6"):
        t = sw.pipeline.prog.tables[schema.table(name).name]
        counters += [(name, tuple(e.key), e.packets, e.bytes) for e in t.by_key.values()]
    return res, sorted(counters)



@pytest.fixture
def links():
    with veth_links([(sw, host) for _, sw, host in LINKS]):
        yield


async def bmv2_outputs(schema, packets):
    grpc = f"127.0.0.1:{free_tcp_port()}"
    proc = start_switch_process("bmv2", [(port, sw) for port, sw, _ in LINKS], grpc)
    try:
        s = Session(grpc)
        await s.connect(30)      # waits for the switch to come up
        await s.set_pipeline(schema.p4info, (ROOT / "p4src/build/flowtable.json").read_bytes())
        await s.write(updates(schema))
        ports = Wire({port: host for port, _, host in LINKS})
        got = ports.received
        res = []
        for port, data in packets:
            ports.send(port, data)
            cpu = asyncio.ensure_future(s.packet_in.get())
            wire = asyncio.ensure_future(got.get())
            done, pending = await asyncio.wait({cpu, wire}, timeout=2, return_when=asyncio.FIRST_COMPLETED)
            for p in pending:
                p.cancel()
            if not done:
                res.append(None)
                continue
            if cpu in done:
                pkt = cpu.result()
                res.append(("cpu", packet_in_header(schema, pkt), pkt.payload))
            else:
                res.append(wire.result())
        counters = []
        for name in ("flow_table_v4", "flow_table_v6"):
            ent = p4r.Entity(direct_counter_entry=p4r.DirectCounterEntry(
                table_entry=p4r.TableEntry(table_id=schema.table(name).id)))
            async for e in s.read([ent]):
                dce = e.direct_counter_entry
                key = tuple(int.from_bytes(m.exact.value, "big") for m in dce.table_entry.match)
                counters.append((name, key, dce.data.packet_count, dce.data.byte_count))
        ports.close()
        await s.close()
        return res, sorted(counters)
    finally:
        proc.terminate()
        proc.wait(10)


def test_bmv2_and_embedded_target_agree_packet_for_packet(links):
    schema = P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")
    packets = generate(N_PACKETS)
    soft, soft_counters = soft_outputs(schema, packets)
    bmv2, bmv2_counters = asyncio.run(bmv2_outputs(schema, packets))
    diffs = [(i, packets[i], soft[i], bmv2[i]) for i in range(len(packets)) if soft[i] != bmv2[i]]
    assert not diffs, f"{len(diffs)} of {len(packets)} differ; first: {diffs[0]!r}"
    kinds = {r[0] if r else None for r in soft}
    assert {"cpu", 1, 2} <= kinds
    # IPv6 went both ways through the fast path, not only to the CPU
    assert any(r and r[0] in (1, 2) and r[1][12:14] == b"\x86\xdd" for r in soft)
    assert soft_counters == bmv2_counters


def test_bmv2_and_embedded_target_answer_malformed_entries_alike(links):
    """Each malformed flow entry of the embedded target's own list
    (test_soft_target.BAD_FLOW_ENTRIES), written to BMv2 and to the
    embedded target over P4Runtime, one request each: both take it, or both
    refuse it with the same code; and a good entry after them is taken by both."""
    from test_soft_target import BAD_FLOW_ENTRIES, masq_flow
    from p4flowtable.softswitch.server import serve_local

    schema = P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")
    config = (ROOT / "p4src/build/flowtable.json").read_bytes()

    async def answers(addr: str) -> dict[str, str | None]:
        s = Session(addr)
        await s.connect(30)
        await s.set_pipeline(schema.p4info, config)
        got: dict[str, str | None] = {}
        for case, (mutate, _, _) in list(BAD_FLOW_ENTRIES.items()) + [("as written", (lambda e: None, None, None))]:
            entry = flow_entry(schema, masq_flow(), Dir.ORIGINAL, idle_timeout_ns=30 * 10**9)
            mutate(entry)
            try:
                await s.write([p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=entry))])
                got[case] = None
                await s.write([p4r.Update(type=p4r.Update.DELETE, entity=p4r.Entity(table_entry=entry))])
            except WriteError as e:
                got[case] = e.errors[0].code
        await s.close()
        return got

    soft = SoftSwitchServer(1, CPU)
    server, addr = serve_local(soft, workers=2)
    try:
        embedded = asyncio.run(answers(addr))
    finally:
        server.stop(0)
    grpc = f"127.0.0.1:{free_tcp_port()}"
    proc = start_switch_process("bmv2", [(port, sw) for port, sw, _ in LINKS], grpc)
    try:
        bmv2 = asyncio.run(answers(grpc))
    finally:
        proc.terminate()
        proc.wait(10)
    assert embedded["as written"] is None and bmv2["as written"] is None
    differ = {case: (embedded[case], bmv2[case]) for case in embedded if embedded[case] != bmv2[case]}
    # The one known difference: an empty bytestring is not a valid value (P4Runtime spec, "Examples of
    # Invalid Bytestring Encoding": bit<8>, empty string); BMv2's server takes it, the embedded target
    # refuses it.
    assert differ == {"empty value": ("INVALID_ARGUMENT", None)}, f"(embedded, BMv2) codes: {differ}"
