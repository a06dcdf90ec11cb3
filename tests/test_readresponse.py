"""The reconcile reader's wire decoder (_readresponse, compiled at install)
against protobuf's: the same entries and strays from the same bytes, for
flow entries of both families, NAT and routed, entries of other tables and
shapes, and a few thousand corruptions of a response. Where protobuf
refuses the bytes, the wire decoder refuses them too."""

import ipaddress
import random

import pytest
from google.protobuf.message import DecodeError
from p4.v1 import p4runtime_pb2 as p4r

from p4flowtable import entryread
from p4flowtable.ip import ReadBack, flow_entry
from p4flowtable.model import Dir, Flow, FlowRoute, FlowTuple
from p4flowtable.offload import port_entry

from test_switch_writers import flows, schema  # noqa: F401  (fixture)

if entryread._readresponse is None:
    pytest.skip("p4flowtable._readresponse is not built here (make install compiles it; "
                "without it the reader decodes with protobuf)", allow_module_level=True)

ROUTES = (FlowRoute(2, "02:00:00:00:02:01", "00:00:00:00:00:02", 1500, "192.0.2.2"),
          FlowRoute(1, "02:00:00:00:01:fe", "00:00:00:00:00:01", 1500, "10.0.0.1"))


def _flows() -> list[Flow]:
    """NAT'd TCP over IPv4 (test_switch_writers.flows), routed UDP over IPv4
    and routed TCP over IPv6."""
    out = flows(0, 20)
    for i in range(20):
        for src, dst, proto in ((ipaddress.IPv4Address(0x0A000100 + i), ipaddress.IPv4Address("198.51.100.7"), 17),
                                (ipaddress.IPv6Address(f"2001:db8::{i + 1:x}"), ipaddress.IPv6Address("2001:db8:1::7"),
                                 6)):
            o = FlowTuple(src, dst, proto, 20000 + i, 53 if proto == 17 else 443)
            out.append(Flow(len(out), (o, o.reversed()), "ft", 30, iif=(1, 2), routes=ROUTES))
    return out


def _response(schema) -> p4r.ReadResponse:  # noqa: F811
    resp = p4r.ReadResponse()
    for n, f in enumerate(_flows()):
        for d in Dir:
            te = resp.entities.add().table_entry
            flow_entry(schema, f, d, True, 30 * 10**9, entry=te)
            if n % 3:
                te.counter_data.packet_count, te.counter_data.byte_count = n * 7 + d, n * 1000 + 2**40
            if n % 4:
                te.time_since_last_hit.elapsed_ns = n * 10**8
            elif n % 8 == 0:
                te.time_since_last_hit.SetInParent()         # present, zero
    # entries of no flow: another table; an action profile member; an entity
    # of another kind; a flow entry with a parameter missing. And a ternary
    # match, which the wire decoder leaves to protobuf (ReadBack.decode reads
    # its exact value, empty: port 0)
    resp.entities.add().table_entry.CopyFrom(port_entry(schema, 1, 1))
    te = resp.entities.add().table_entry
    flow_entry(schema, flows(50, 1)[0], Dir.ORIGINAL, True, entry=te)
    te.match[0].ternary.value, te.match[0].ternary.mask = b"\x01", b"\xff"
    te = resp.entities.add().table_entry
    flow_entry(schema, flows(51, 1)[0], Dir.ORIGINAL, True, entry=te)
    te.action.action_profile_member_id = 7
    resp.entities.add().counter_entry.counter_id = 5
    te = resp.entities.add().table_entry
    flow_entry(schema, flows(52, 1)[0], Dir.REPLY, True, entry=te)
    del te.action.action.params[-1]
    return resp


def _both(data: bytes, back: ReadBack):
    """(protobuf's, the wire decoder's) decode of a serialized response, each
    its held entries and its strays serialized, or the exception it raised."""
    out = []
    for decode in (lambda: entryread.decoded(p4r.ReadResponse.FromString(data).entities, back),
                   lambda: entryread.decoded_raw(data, back)):
        try:
            held, strays = [], []
            for h, s in decode():
                held += h
                strays += [e.SerializeToString() for e in s]
            out.append((held, strays))
        except (DecodeError, ValueError) as e:
            out.append(e)
    return out


def test_the_wire_decoder_gives_what_protobuf_gives(schema):  # noqa: F811
    back = ReadBack(schema)
    data = _response(schema).SerializeToString()
    pb, raw = _both(data, back)
    held, strays = pb
    assert len([h for h in held if h.port]) == 2 * 60 and len(strays) == 4
    assert {h.match[0] for h in held} == set(back.table_of.values())     # both families
    assert {h.idle_ns is None for h in held} == {True, False}
    assert raw == pb
    # fields given twice, as protobuf merges them: the second counter_data's
    # packets win, its bytes keep the first's
    te = p4r.TableEntry()
    flow_entry(schema, flows(60, 1)[0], Dir.ORIGINAL, True, entry=te)
    te.counter_data.byte_count, te.counter_data.packet_count = 5, 6
    twice = te.SerializeToString() + p4r.TableEntry(counter_data=p4r.CounterData(packet_count=9)).SerializeToString()
    pb, raw = _both(_ld(1, _ld(2, twice)), back)
    assert raw == pb and (pb[0][0].packets, pb[0][0].bytes) == (9, 5)
    # a message nothing here reads (meter_config) that protobuf refuses: refused
    pb, raw = _both(_ld(1, _ld(2, te.SerializeToString() + _ld(6, b"\x08"))), back)
    assert isinstance(pb, DecodeError) and isinstance(raw, Exception)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field, by hand (protobuf would merge what a test
    gives twice before the wire)."""
    out, n = bytearray([field << 3 | 2]), len(payload)
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]) + payload)


def test_a_corrupted_response_decodes_as_protobuf_decodes_it_or_is_refused(schema):  # noqa: F811
    """Bytes truncated, changed or inserted at random: where protobuf takes
    them, the wire decoder gives the same (or refuses them: the reader then
    fails and the daemon reads itself); where protobuf refuses, so does it."""
    back = ReadBack(schema)
    resp = _response(schema)
    del resp.entities[8:-5]
    data = resp.SerializeToString()
    rng = random.Random(21)
    outcomes = {"same": 0, "both refused": 0, "wire refused": 0}
    for _ in range(3000):
        b = bytearray(data)
        for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):
            at = rng.randrange(len(b))
            kind = rng.random()
            if kind < 0.5:
                b[at] = rng.randrange(256)
            elif kind < 0.8:
                b.insert(at, rng.randrange(256))
            else:
                del b[at:at + rng.randint(1, 4)]
        pb, raw = _both(bytes(b), back)
        if isinstance(pb, Exception):
            assert isinstance(raw, Exception), bytes(b).hex()
            outcomes["both refused"] += 1
        elif isinstance(raw, Exception):
            outcomes["wire refused"] += 1
        else:
            assert raw == pb, bytes(b).hex()
            outcomes["same"] += 1
    # the corruptions reach both outcomes that matter
    assert outcomes["same"] > 200 and outcomes["both refused"] > 200, outcomes


def test_the_native_helds_are_readbacks_helds_of_the_plain_values(schema):  # noqa: F811
    """entries() with ReadBack's layouts makes each flow entry's Held itself:
    the Held ReadBack.held makes of the same entry's plain values, or
    (False, start, end) where it finds none. Layouts of another shape are
    left to ReadBack.held: the plain values come back."""
    back = ReadBack(schema)
    data = _response(schema).SerializeToString()
    plain, end = entryread._readresponse.entries(data)
    native, native_end = entryread._readresponse.entries(data, 0, len(plain), back.tables, back.actions)
    assert native_end == end and len(native) == len(plain)
    kinds = set()
    for p, n in zip(plain, native):
        if p[0] is None:
            assert n == p
            kinds.add("protobuf's")
            continue
        h = back.held(p[0], dict(p[1]), p[2], dict(p[3]), p[4], p[5], p[6])
        assert n == ((False, p[7], p[8]) if h is None else tuple(h))
        kinds.add("no flow entry" if h is None else "flow entry")
    assert kinds == {"protobuf's", "no flow entry", "flow entry"}
    odd = {tid: fids[:5] for tid, fids in back.tables.items()}
    assert entryread._readresponse.entries(data, 0, 3, odd, back.actions)[0] == plain[:3]
