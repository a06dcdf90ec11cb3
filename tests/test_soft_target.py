"""The embedded target: runs the committed BMv2 JSON and serves P4Runtime.

These run everywhere (no root): the pipeline is driven directly, and the
P4Runtime server over gRPC on loopback.
"""

import asyncio
import copy
import ipaddress
import json
import random
from pathlib import Path

import pytest
from p4.v1 import p4runtime_pb2 as p4r
from scapy.all import ICMP, IP, TCP, UDP, Ether, Raw
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop

from p4flowtable.ip import flow_entry
from p4flowtable.nexthop import NextHops, assign
from p4flowtable.model import Dir, Flow, FlowRoute, FlowTuple
from p4flowtable.offload import port_entry
from p4flowtable.p4info import P4Schema, encode
from p4flowtable.p4runtime import Session, SwitchError, WriteError
from p4flowtable.softswitch.pipeline import Program, UnsupportedConstruct
from p4flowtable.softswitch.ports import Ports, parse_port_spec
from p4flowtable.softswitch.server import Pipeline, SoftSwitchServer, serve_local

ROOT = Path(__file__).resolve().parents[1]
JSON = ROOT / "p4src/build/flowtable.json"
P4INFO = ROOT / "p4src/build/flowtable.p4info.txtpb"
CPU = 510
A = ipaddress.IPv4Address
LAN_MAC, WAN_MAC, H1_MAC, H2_MAC = "02:00:00:00:01:fe", "02:00:00:00:02:01", "00:00:00:00:00:01", "00:00:00:00:00:02"


@pytest.fixture(scope="module")
def schema():
    return P4Schema.from_file(P4INFO)


def masq_flow(l4proto=6, mtu=1500):
    orig = FlowTuple(A("10.0.1.1"), A("192.0.2.2"), l4proto, 40000, 80)
    reply = FlowTuple(A("192.0.2.2"), A("192.0.2.1"), l4proto, 80, 61000)
    return Flow(1, (orig, reply), "ft", 30, iif=(1, 2),
                routes=(FlowRoute(2, WAN_MAC, H2_MAC, mtu), FlowRoute(1, LAN_MAC, H1_MAC, mtu)))


@pytest.fixture
def switch(schema):
    """A loaded pipeline with ports 1, 2 bound and one masqueraded TCP flow."""
    sw = SoftSwitchServer(1, CPU)
    sw.pipeline = Pipeline(schema.p4info, JSON.read_bytes(), CPU, 0)
    for port in (1, 2):
        _write(sw, schema, port_entry(schema, port, 1))
    write_flow(sw, schema, masq_flow())
    return sw


def _write(sw, schema, entry):
    pipe = sw.pipeline
    sw._update(pipe, p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=entry)))


def write_flow(sw, schema, flow, dirs=tuple(Dir)):
    """A flow's entries, after the next hops they name (the pipeline's own
    NextHops, so that flows written to it share them)."""
    nhs = sw.pipeline.__dict__.setdefault("test_nexthops", NextHops(schema))
    for nh in assign(nhs, [flow]):
        _write(sw, schema, nhs.entry(nh))
        nh.written = True
    for d in dirs:
        _write(sw, schema, flow_entry(schema, flow, d))


def run(sw, port, pkt):
    out = sw.pipeline.prog.process(port, bytes(pkt))
    return out


def punt_reason(schema, out):
    assert out.port == CPU
    reasons = {v: k for k, v in schema.enum("PuntReason").items()}
    hdr = int.from_bytes(out.data[:3], "big")   # packet_in: 9 bits port, 8 bits reason, 7 pad
    return reasons[(hdr >> 7) & 0xFF]


def lan_tcp(flags="A", ttl=64, payload=b"x" * 100, **kw):
    return (Ether(src=H1_MAC, dst=LAN_MAC) / IP(src="10.0.1.1", dst="192.0.2.2", ttl=ttl, **kw)
            / TCP(sport=40000, dport=80, flags=flags, seq=1000, ack=2000) / Raw(payload))


@pytest.mark.parametrize("mangle", ["total length past the frame", "total length short of its headers",
                                    "TCP data offset below 5"])
def test_lengths_that_disagree_with_the_frame_are_punted_malformed(switch, schema, mangle):
    raw = bytearray(bytes(lan_tcp()))
    if mangle == "total length past the frame":
        raw[16:18] = (len(raw) - 14 + 1).to_bytes(2, "big")
    elif mangle == "total length short of its headers":
        raw[16:18] = (20 + 19).to_bytes(2, "big")
    else:
        raw[14 + 20 + 12] = 0x40
    assert punt_reason(schema, run(switch, 1, bytes(raw))) == "MALFORMED"


def test_bytes_past_the_total_length_are_padding_and_forwarded(switch):
    raw = bytes(lan_tcp(payload=b"")) + b"\x00" * 6     # a minimum-size Ethernet frame's padding
    out = run(switch, 1, raw)
    assert out.port == 2 and len(out.data) == len(raw)


def test_hit_rewrites_nat_ttl_macs_and_checksums(switch):
    out = run(switch, 1, lan_tcp())
    assert out.port == 2
    pkt = Ether(out.data)
    assert (pkt.src, pkt.dst) == (WAN_MAC, H2_MAC)
    assert (pkt[IP].src, pkt[IP].dst, pkt[IP].ttl) == ("192.0.2.1", "192.0.2.2", 63)
    assert (pkt[TCP].sport, pkt[TCP].dport) == (61000, 80)
    fresh = Ether(bytes(pkt))
    del fresh[IP].chksum, fresh[TCP].chksum
    fresh = Ether(bytes(fresh))
    assert (fresh[IP].chksum, fresh[TCP].chksum) == (pkt[IP].chksum, pkt[TCP].chksum)


def test_reply_direction_is_un_nated(switch):
    pkt = (Ether(src=H2_MAC, dst=WAN_MAC) / IP(src="192.0.2.2", dst="192.0.2.1", ttl=50)
           / TCP(sport=80, dport=61000, flags="A") / Raw(b"y" * 10))
    out = run(switch, 2, pkt)
    got = Ether(out.data)
    assert out.port == 1
    assert (got[IP].src, got[IP].dst, got[TCP].sport, got[TCP].dport) == ("192.0.2.2", "10.0.1.1", 80, 40000)


def routed_flow(l4proto=6, version=4, mtu=1500):
    """A flow without NAT: the reply tuple is the original one reversed."""
    if version == 4:
        orig = FlowTuple(A("10.0.1.7"), A("192.0.2.9"), l4proto, 40007, 443)
    else:
        orig = FlowTuple(A6("2001:db8:1::7"), A6("2001:db8:2::9"), l4proto, 40007, 443)
    return Flow(7, (orig, orig.reversed()), "ft", 30, iif=(1, 2),
                routes=(FlowRoute(2, WAN_MAC, H2_MAC, mtu), FlowRoute(1, LAN_MAC, H1_MAC, mtu)))


@pytest.mark.parametrize("l4proto,version", [(6, 4), (17, 4), (6, 6), (17, 6)])
def test_flow_without_nat_only_loses_a_ttl_and_gets_next_hop_macs(switch, schema, l4proto, version):
    flow = routed_flow(l4proto, version)
    write_flow(switch, schema, flow)
    for d in Dir:
        assert flow_entry(schema, flow, d).action.action.action_id == schema.action(f"route_v{version}").id
    rng = random.Random(l4proto * 10 + version)
    for ttl in [2, 3, 64, 255] + [rng.randint(2, 255) for _ in range(40)]:
        for d in Dir:
            t = flow.tuples[d]
            ip = (IP(src=str(t.src), dst=str(t.dst), ttl=ttl, id=rng.getrandbits(16)) if version == 4
                  else IPv6(src=str(t.src), dst=str(t.dst), hlim=ttl))
            l4 = (TCP(sport=t.sport, dport=t.dport, flags="A", seq=rng.getrandbits(32)) if l4proto == 6
                  else UDP(sport=t.sport, dport=t.dport))
            macs = (H1_MAC, LAN_MAC) if d is Dir.ORIGINAL else (H2_MAC, WAN_MAC)
            sent = Ether(bytes(Ether(src=macs[0], dst=macs[1]) / ip / l4 / Raw(rng.randbytes(rng.randint(0, 60)))))
            out = run(switch, flow.iif[d], sent)
            route = flow.routes[d]
            assert out.port == route.port
            want = sent.copy()
            want.src, want.dst = route.src_mac, route.dst_mac
            if version == 4:
                want[IP].ttl -= 1
                del want[IP].chksum        # scapy recomputes it: the kernel's result
            else:
                want[IPv6].hlim -= 1
            assert out.data == bytes(want)  # transport header and payload untouched


def test_wrong_tcp_checksum_stays_wrong_by_the_same_amount(switch):
    good = Ether(bytes(lan_tcp()))
    bad = good.copy()
    bad[TCP].chksum = (good[TCP].chksum + 7) & 0xFFFF
    out_good, out_bad = Ether(run(switch, 1, good).data), Ether(run(switch, 1, bad).data)
    assert (out_bad[TCP].chksum - out_good[TCP].chksum) % 0xFFFF == 7


@pytest.mark.parametrize("make,reason", [
    (lambda: lan_tcp(flags="FA"), "TCP_FIN_RST"),
    (lambda: lan_tcp(flags="R"), "TCP_FIN_RST"),
    (lambda: lan_tcp(ttl=1), "TTL_EXPIRED"),
    (lambda: lan_tcp(payload=b"z" * 1500), "MTU_EXCEEDED"),
    (lambda: lan_tcp(options=[b"\x94\x04\x00\x00"]), "IP_OPTIONS"),
    (lambda: Ether(src=H1_MAC, dst=LAN_MAC) / IP(src="10.0.1.1", dst="192.0.2.2", flags="MF", proto=6)
     / Raw(b"f" * 40), "IP_FRAGMENT"),
    (lambda: Ether(src=H1_MAC, dst=LAN_MAC) / IP(src="10.0.1.1", dst="192.0.2.2") / ICMP(), "NOT_OFFLOADABLE"),
    (lambda: Ether(src=H1_MAC, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / Raw(b"\x00" * 28), "NOT_OFFLOADABLE"),
    (lambda: Ether(src=H1_MAC, dst=LAN_MAC) / IP(src="10.0.1.1", dst="192.0.2.9") / TCP(sport=1, dport=2), "MISS"),
])
def test_punts_name_the_reason_and_leave_the_packet_untouched(switch, schema, make, reason):
    pkt = bytes(make())
    out = run(switch, 1, pkt)
    assert punt_reason(schema, out) == reason
    assert out.data[3:] == pkt
    assert int.from_bytes(out.data[:2], "big") >> 7 == 1      # ingress port


def test_wrong_ipv4_header_checksum_stays_wrong_by_the_same_amount(switch):
    # nf_flow_offload_ip_hook does not verify the header checksum; it updates
    # it incrementally, so the receiver sees it as wrong as it was sent.
    good = Ether(bytes(lan_tcp()))
    bad = good.copy()
    bad[IP].chksum = (good[IP].chksum + 5) & 0xFFFF
    out_good, out_bad = run(switch, 1, good), run(switch, 1, bad)
    assert out_bad.port == out_good.port == 2
    assert (Ether(out_bad.data)[IP].chksum - Ether(out_good.data)[IP].chksum) % 0xFFFF == 5


def test_truncated_tcp_header_is_punted_whole(switch, schema):
    pkt = bytes(lan_tcp())[:14 + 20 + 8]
    out = run(switch, 1, pkt)
    assert punt_reason(schema, out) == "NOT_OFFLOADABLE"
    assert out.data[3:] == pkt


def test_unbound_port_punts_everything(switch, schema):
    assert punt_reason(schema, run(switch, 3, lan_tcp())) == "PORT_UNBOUND"


def test_udp_zero_checksum_stays_zero(schema):
    sw = SoftSwitchServer(1, CPU)
    sw.pipeline = Pipeline(schema.p4info, JSON.read_bytes(), CPU, 0)
    _write(sw, schema, port_entry(schema, 1, 1))
    write_flow(sw, schema, masq_flow(l4proto=17), dirs=(Dir.ORIGINAL,))
    pkt = Ether(src=H1_MAC, dst=LAN_MAC) / IP(src="10.0.1.1", dst="192.0.2.2") / UDP(sport=40000, dport=80)
    raw = bytearray(bytes(pkt / Raw(b"u" * 20)))
    raw[14 + 20 + 6:14 + 20 + 8] = b"\x00\x00"
    out = Ether(run(sw, 1, bytes(raw)).data)
    assert out[UDP].chksum == 0 and out[UDP].sport == 61000


def test_packet_out_goes_to_the_named_port_untouched(switch):
    frame = bytes(lan_tcp())
    out = switch.pipeline.prog.process(CPU, encode(2 << 7, 16) + frame)
    assert out.port == 2 and out.data == frame


def test_front_port_cannot_inject_a_packet_out_header(switch, schema):
    # bytes that would be a packet_out to port 2, arriving on front port 1
    out = run(switch, 1, encode(2 << 7, 16) + bytes(lan_tcp()))
    assert out.port == CPU


def test_direct_counters_count_hits(switch, schema):
    for _ in range(3):
        run(switch, 1, lan_tcp())
    t = switch.pipeline.prog.tables[schema.table("flow_table_v4").name]
    assert sorted(e.packets for e in t.by_key.values()) == [0, 3]


@pytest.mark.parametrize("mutate,what", [
    (lambda js: js["pipelines"][0]["tables"][0].__setitem__("type", "indirect"), "action profiles"),
    (lambda js: js["actions"][0]["primitives"].append({"op": "clone_ingress_pkt_to_egress", "parameters": []}),
     "clone_ingress_pkt_to_egress"),
    (lambda js: js["calculations"].append({"name": "c", "id": 0, "algo": "crc32", "input": []}), "crc32"),
    (lambda js: js["meter_arrays"].append({"name": "m", "is_direct": True}), "direct meter m"),
    (lambda js: js["meter_arrays"].append({"name": "m", "rate_count": 1, "size": 1, "type": "packets"}),
     "meter m with 1 rates"),
])
def test_unsupported_json_constructs_are_refused_by_name(mutate, what):
    js = json.loads(JSON.read_text())
    mutate(js)
    with pytest.raises(UnsupportedConstruct, match=what):
        Program(js, CPU)


# -- P4Runtime over gRPC --------------------------------------------------------

@pytest.fixture
def grpc_switch(schema):
    impl = SoftSwitchServer(1, CPU)
    server, addr = serve_local(impl, workers=4)
    yield impl, addr
    server.stop(0)


async def _session(addr, schema, push=True, election_id=1):
    s = Session(addr, 1, election_id)
    await s.connect(5)
    if push:
        await s.set_pipeline(schema.p4info, JSON.read_bytes())
    return s


def _swap_params(e):
    ps = e.action.action.params
    first, second = copy.deepcopy(ps[0]), copy.deepcopy(ps[1])
    ps[0].CopyFrom(second)
    ps[1].CopyFrom(first)


def _kind(e, i, **kind):
    e.match[i].ClearField("exact")
    for name, value in kind.items():
        getattr(e.match[i], name).CopyFrom(value)


def _action(e, name: str):
    """The entry's action replaced by another, its parameters kept."""
    e.action.action.action_id = P4Schema.from_file(P4INFO).action(name).id


# a flow entry (six exact fields, eight parameters) changed one way each, and
# the switch's answer: its code and what its message names (None: taken)
BAD_FLOW_ENTRIES = {
    "missing field": (lambda e: e.match.pop(), "INVALID_ARGUMENT", "exact match field 6 is missing"),
    "field twice": (lambda e: e.match.append(copy.deepcopy(e.match[0])), "INVALID_ARGUMENT",
                    "match field 1 given twice"),
    "unknown field": (lambda e: e.match.add(field_id=99, exact=p4r.FieldMatch.Exact(value=b"\x01")),
                      "INVALID_ARGUMENT", "unknown match field id(s) [99]"),
    "lpm for exact": (lambda e: _kind(e, 1, lpm=p4r.FieldMatch.LPM(value=b"\x01", prefix_len=8)),
                      "INVALID_ARGUMENT", "match field 2 of table FtIngress.FlowtableIngress.flow_table_v4 is "
                                          "exact, got lpm"),
    "optional for exact": (lambda e: _kind(e, 1, optional=p4r.FieldMatch.Optional(value=b"\x01")),
                           "INVALID_ARGUMENT", "is exact, got optional"),
    "no match kind": (lambda e: _kind(e, 1), "INVALID_ARGUMENT", "is exact, got None"),
    "empty value": (lambda e: setattr(e.match[2].exact, "value", b""), "INVALID_ARGUMENT",
                    "match field 3: empty value"),
    "value too wide": (lambda e: setattr(e.match[0].exact, "value", b"\xff" * 20), "INVALID_ARGUMENT",
                       "does not fit in 9 bits"),
    "priority": (lambda e: setattr(e, "priority", 5), "INVALID_ARGUMENT", "takes no priority"),
    "parameter too wide": (lambda e: setattr(e.action.action.params[0], "value", b"\xff" * 20),
                           "INVALID_ARGUMENT", "parameter 1 value 0xffffffffffffffffffffffffffffffffffffffff does "
                                               "not fit in 16 bits"),
    "parameter missing": (lambda e: e.action.action.params.pop(), "INVALID_ARGUMENT", "parameter 8 is missing"),
    "parameter twice": (lambda e: e.action.action.params.append(copy.deepcopy(e.action.action.params[0])),
                        "INVALID_ARGUMENT", "parameter 1 given twice"),
    "parameter unknown": (lambda e: e.action.action.params.add(param_id=99, value=b"\x01"), "INVALID_ARGUMENT",
                          "unknown parameter id(s) [99]"),
    "parameters out of order": (_swap_params, None, None),
    "no action": (lambda e: e.ClearField("action"), "INVALID_ARGUMENT", "entry has no action"),
    "unknown action": (lambda e: setattr(e.action.action, "action_id", 12345), "INVALID_ARGUMENT",
                       "no action with id 12345"),
    "another table's action": (lambda e: _action(e, "FtIngress.NexthopIngress.set_nexthop"), "INVALID_ARGUMENT",
                               "set_nexthop is not an action of table FtIngress.FlowtableIngress.flow_table_v4"),
    "default-only action": (lambda e: (_action(e, "FtIngress.FlowtableIngress.miss"), e.action.action.ClearField(
        "params")), "PERMISSION_DENIED", "miss is default-only in table FtIngress.FlowtableIngress.flow_table_v4"),
}


@pytest.mark.parametrize("case", BAD_FLOW_ENTRIES)
def test_a_flow_entry_written_wrong_is_refused_naming_what(schema, case):
    """Each check of a written entry, on the flow table the daemon writes
    most (the key and the parameters are read without protobuf's per-field
    lookups where they come in P4Info's order, as clients write them)."""
    mutate, code, says = BAD_FLOW_ENTRIES[case]
    sw = SoftSwitchServer(1, CPU)
    sw.pipeline = Pipeline(schema.p4info, JSON.read_bytes(), CPU, 0)
    entry = flow_entry(schema, masq_flow(), Dir.ORIGINAL, idle_timeout_ns=30 * 10**9)
    mutate(entry)
    if code is None:
        _write(sw, schema, entry)
        assert len(sw.pipeline.tables[entry.table_id].table.by_key) == 1
        return
    with pytest.raises(Exception) as ei:
        _write(sw, schema, entry)
    assert (getattr(ei.value, "code", None), says in str(ei.value)) == (code, True), str(ei.value)
    assert not sw.pipeline.tables[entry.table_id].table.by_key


def test_malformed_writes_get_per_update_errors_and_good_ones_apply(grpc_switch, schema):
    impl, addr = grpc_switch

    async def main():
        s = await _session(addr, schema)
        good = port_entry(schema, 1, 1)
        no_table = copy.deepcopy(good)
        no_table.table_id = 12345
        too_wide = copy.deepcopy(good)
        too_wide.match[0].exact.value = b"\xff\xff"
        missing = copy.deepcopy(good)
        del missing.match[:]
        ups = [p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=e))
               for e in (good, no_table, too_wide, missing, good)]
        ups.append(p4r.Update(type=p4r.Update.DELETE, entity=p4r.Entity(table_entry=port_entry(schema, 9, 1))))
        with pytest.raises(WriteError) as ei:
            await s.write(ups)
        codes = {e.index: e.code for e in ei.value.errors}
        assert codes == {1: "NOT_FOUND", 2: "INVALID_ARGUMENT", 3: "INVALID_ARGUMENT",
                         4: "ALREADY_EXISTS", 5: "NOT_FOUND"}
        assert "12345" in str(ei.value)
        got = [e async for e in s.read([p4r.Entity(table_entry=p4r.TableEntry(
            table_id=schema.table("port_table").id))])]
        assert len(got) == 1
        await s.close()
    asyncio.run(main())


def test_bad_pipeline_is_refused_and_the_running_one_kept(grpc_switch, schema):
    impl, addr = grpc_switch

    async def main():
        s = await _session(addr, schema)
        await s.write([p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=port_entry(schema, 1, 1)))])
        js = json.loads(JSON.read_text())
        js["pipelines"][0]["tables"][0]["type"] = "indirect"
        with pytest.raises(SwitchError, match="action profiles"):
            await s.set_pipeline(schema.p4info, json.dumps(js).encode())
        with pytest.raises(SwitchError, match="not BMv2 JSON"):
            await s.set_pipeline(schema.p4info, b"\x00garbage")
        got = [e async for e in s.read([p4r.Entity(table_entry=p4r.TableEntry(
            table_id=schema.table("port_table").id))])]
        assert len(got) == 1
        await s.close()
    asyncio.run(main())


def test_only_the_primary_may_write(grpc_switch, schema):
    impl, addr = grpc_switch

    async def main():
        primary = await _session(addr, schema, election_id=10)
        with pytest.raises(SwitchError, match="not primary"):
            await _session(addr, schema, push=False, election_id=5)
        await primary.close()
    asyncio.run(main())


def test_packet_out_and_packet_in_over_the_stream(grpc_switch, schema):
    impl, addr = grpc_switch
    sent = []

    class Wire:                      # the switch's transmit side, captured
        def send(self, port, data):
            sent.append((port, data))
            return True
    impl.ports = Wire()

    async def main():
        s = await _session(addr, schema)
        out_port = schema.packet_meta("packet_out")["egress_port"]
        frame = bytes(lan_tcp())
        s.packet_out(frame, [p4r.PacketMetadata(metadata_id=out_port.id, value=encode(2, out_port.bitwidth))])
        for _ in range(100):
            if sent:
                break
            await asyncio.sleep(0.02)
        assert sent == [(2, frame)]
        impl.receive(1, frame)        # unbound port: punted to the controller
        pin = await asyncio.wait_for(s.packet_in.get(), 5)
        meta = {m.metadata_id: int.from_bytes(m.value, "big") for m in pin.metadata}
        pin_fields = schema.packet_meta("packet_in")
        assert meta[pin_fields["ingress_port"].id] == 1
        assert meta[pin_fields["punt_reason"].id] == schema.enum("PuntReason")["PORT_UNBOUND"]
        assert pin.payload == frame
        await s.close()
    asyncio.run(main())


@pytest.mark.parametrize("spec", ["eth0", "1@", "x@eth0", "600@eth0", "1@no-such-if0"])
def test_bad_port_specs_are_refused(spec):
    with pytest.raises(ValueError, match="bad port spec"):
        Ports([spec], lambda p, f: None)


def test_port_spec_syntax_is_simple_switch_s():
    assert parse_port_spec("1@veth1") == (1, "veth1")


# -- IPv6 (flow_table_v6): NAT66 masquerade, hop limit, punts -----------------
A6 = ipaddress.IPv6Address


def masq_flow6(l4proto=6, mtu=1500):
    orig = FlowTuple(A6("2001:db8:1::1"), A6("2001:db8:2::2"), l4proto, 40000, 80)
    reply = FlowTuple(A6("2001:db8:2::2"), A6("2001:db8:2::fe"), l4proto, 80, 61000)
    return Flow(2, (orig, reply), "ft", 30, iif=(1, 2),
                routes=(FlowRoute(2, WAN_MAC, H2_MAC, mtu), FlowRoute(1, LAN_MAC, H1_MAC, mtu)))


@pytest.fixture
def switch6(switch, schema):
    write_flow(switch, schema, masq_flow6())
    return switch


def lan_tcp6(flags="A", hlim=64, payload=b"x" * 100, ext=None):
    ip = IPv6(src="2001:db8:1::1", dst="2001:db8:2::2", hlim=hlim)
    return Ether(src=H1_MAC, dst=LAN_MAC) / ip / (ext if ext is not None else TCP(
        sport=40000, dport=80, flags=flags, seq=1000, ack=2000) / Raw(payload))


def test_ipv6_payload_length_past_the_frame_is_punted_malformed(switch6, schema):
    raw = bytearray(bytes(lan_tcp6()))
    raw[18:20] = (len(raw) - 54 + 300).to_bytes(2, "big")
    assert punt_reason(schema, run(switch6, 1, bytes(raw))) == "MALFORMED"


def test_ipv6_hit_rewrites_nat66_hop_limit_macs_and_checksum(switch6):
    out = run(switch6, 1, lan_tcp6())
    assert out.port == 2
    pkt = Ether(out.data)
    assert (pkt.src, pkt.dst) == (WAN_MAC, H2_MAC)
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == ("2001:db8:2::fe", "2001:db8:2::2", 63)
    assert (pkt[TCP].sport, pkt[TCP].dport) == (61000, 80)
    fresh = pkt.copy()
    del fresh[TCP].chksum
    assert Ether(bytes(fresh))[TCP].chksum == pkt[TCP].chksum   # valid over the new pseudo-header


def test_ipv6_reply_direction_is_un_nated_and_other_flows_miss(switch6, schema):
    pkt = (Ether(src=H2_MAC, dst=WAN_MAC) / IPv6(src="2001:db8:2::2", dst="2001:db8:2::fe", hlim=9)
           / UDP(sport=1, dport=2) / Raw(b"u"))
    assert punt_reason(schema, run(switch6, 2, pkt)) == "MISS"
    pkt = (Ether(src=H2_MAC, dst=WAN_MAC) / IPv6(src="2001:db8:2::2", dst="2001:db8:2::fe", hlim=9)
           / TCP(sport=80, dport=61000, flags="A") / Raw(b"y" * 10))
    out = run(switch6, 2, pkt)
    got = Ether(out.data)
    assert out.port == 1
    assert (got[IPv6].src, got[IPv6].dst, got[IPv6].hlim) == ("2001:db8:2::2", "2001:db8:1::1", 8)
    assert (got[TCP].sport, got[TCP].dport) == (80, 40000)


@pytest.mark.parametrize("make,reason", [
    (lambda: lan_tcp6(flags="FA"), "TCP_FIN_RST"),
    (lambda: lan_tcp6(hlim=1), "TTL_EXPIRED"),
    (lambda: lan_tcp6(payload=b"z" * 1500), "MTU_EXCEEDED"),
    (lambda: lan_tcp6(ext=IPv6ExtHdrHopByHop() / TCP(sport=40000, dport=80)), "IP_OPTIONS"),
    (lambda: lan_tcp6(ext=IPv6ExtHdrFragment() / TCP(sport=40000, dport=80)), "IP_OPTIONS"),
    (lambda: lan_tcp6(ext=ICMPv6EchoRequest()), "NOT_OFFLOADABLE"),
])
def test_ipv6_punts_what_the_kernel_keeps(switch6, schema, make, reason):
    assert punt_reason(schema, run(switch6, 1, make())) == reason


class _Abort(Exception):
    pass


class _Context:
    """What Read asks of gRPC's context: only abort, on a bad request."""
    def abort(self, code, details):
        raise _Abort(f"{code}: {details}")


def test_a_read_of_every_entry_does_not_stop_forwarding(switch, schema):
    """Packets and reads take the pipeline's lock; a read of every entry
    (a restarted daemon's reconcile, 200,000 entries at 100,000 flows)
    builds its messages after it. Measured against the read's own time in
    the same run: the longest any packet waited while it ran."""
    import threading
    import time

    n = 20_000
    for i in range(n):
        orig = FlowTuple(A("10.0.1.1"), A("192.0.2.2"), 6, 1024 + i, 443)
        reply = FlowTuple(A("192.0.2.2"), A("192.0.2.1"), 6, 443, 1024 + i)
        write_flow(switch, schema, Flow(100 + i, (orig, reply), "ft", 30, iif=(1, 2),
                                        routes=(FlowRoute(2, WAN_MAC, H2_MAC, 1500), FlowRoute(1, LAN_MAC, H1_MAC, 1500))))
    query = p4r.TableEntry(table_id=schema.table("flow_table_v4").id)
    query.counter_data.SetInParent()
    query.time_since_last_hit.SetInParent()
    req = p4r.ReadRequest(device_id=1, entities=[p4r.Entity(table_entry=query)])
    got, took = [], []

    def read():
        t0 = time.perf_counter()
        got.extend(e for resp in switch.Read(req, _Context()) for e in resp.entities)
        took.append(time.perf_counter() - t0)

    frame = bytes(lan_tcp())
    reader = threading.Thread(target=read)
    reader.start()
    waits, forwarded = [], 0
    while reader.is_alive():
        t0 = time.perf_counter()
        out = run(switch, 1, frame)
        waits.append(time.perf_counter() - t0)
        forwarded += out is not None and out.port == 2
    reader.join()
    assert len(got) == 2 * (n + 1) and all(e.table_entry.HasField("time_since_last_hit") for e in got)
    assert forwarded == len(waits) > 0
    print(f"\n[p4ft] read of {len(got)} entries {took[0]:.2f} s; {len(waits)} packets forwarded meanwhile, "
          f"the longest waited {1000 * max(waits):.1f} ms")
    assert max(waits) < took[0] / 4
