"""Flow entries encoded from templates (wire.py) are, message for message,
what protobuf builds and serializes from ip.flow_entry: protobuf is the
reference, for every table, action and update type the driver writes."""

import ipaddress
import itertools
import random
from pathlib import Path

import pytest
from p4.v1 import p4runtime_pb2 as p4r

from p4flowtable.ip import flow_entry
from p4flowtable.model import Dir, Flow, FlowRoute, FlowTuple, PyFlowTuple
from p4flowtable.p4info import P4Schema
from p4flowtable import wire
from p4flowtable.wire import EntryEncoder, varint, write_request

ROOT = Path(__file__).resolve().parents[1]
TCP, UDP = 6, 17


@pytest.fixture(scope="module")
def schema():
    return P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")


def flows(version: int, proto: int, nat: bool, n: int = 20) -> list[Flow]:
    """n flows with values over their fields' whole range (0, widths' maxima, random)."""
    rnd = random.Random(version * 100 + proto + nat)
    bits = 32 if version == 4 else 128
    addr = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    out = []
    for i in range(n):
        pick = (lambda b: [0, 1, (1 << b) - 1][i] if i < 3 else rnd.getrandbits(b))
        a, b = addr(pick(bits)), addr(pick(bits))
        o = FlowTuple(a, b, proto, pick(16), pick(16))
        r = FlowTuple(addr(pick(bits)), addr(pick(bits)), proto, pick(16), pick(16)) if nat else o.reversed()
        routes = (FlowRoute(pick(9) % 512, "02:00:00:00:00:01", "02:00:00:00:00:02", 1 + pick(13) % 9000),
                  FlowRoute(pick(9) % 512, "02:00:00:00:00:03", "02:00:00:00:00:04", 1 + pick(13) % 9000))
        f = Flow(i, (o, r), "ft", 30, iif=(pick(9) % 512, pick(9) % 512), routes=routes)
        f.nexthops = (pick(16), pick(16))
        out.append(f)
    return out


CASES = list(itertools.product((4, 6), (TCP, UDP), (True, False)))


@pytest.mark.parametrize("version,proto,nat", CASES)
@pytest.mark.parametrize("kind,with_action,ttl", [(p4r.Update.INSERT, True, 30 * 10**9),
                                                   (p4r.Update.INSERT, True, 0),
                                                   (p4r.Update.MODIFY, True, 7 * 10**9),
                                                   (p4r.Update.DELETE, False, 0)])
def test_template_updates_are_what_protobuf_builds(schema, version, proto, nat, kind, with_action, ttl):
    enc = EntryEncoder(schema)
    for f in flows(version, proto, nat):
        for d in Dir:
            want = p4r.Update(type=kind)
            flow_entry(schema, f, d, with_action, ttl, entry=want.entity.table_entry)
            raw = enc.update(kind, f, d, with_action, ttl)
            # a WriteRequest's `updates` field: tag, length, the Update
            req = p4r.WriteRequest.FromString(raw)
            assert len(req.updates) == 1
            assert req.updates[0] == want
            assert raw == p4r.WriteRequest(updates=[want]).SerializeToString()


@pytest.mark.parametrize("device_id,election_id", [(1, 1), (0, 1), (7, (1 << 64) + 5), (1, 1 << 64)])
def test_a_request_of_encoded_updates_is_the_protobuf_request(schema, device_id, election_id):
    enc = EntryEncoder(schema)
    fs = flows(4, TCP, True, 5) + flows(6, UDP, False, 5)
    raw = [enc.update(p4r.Update.INSERT, f, d, True, 10**9) for f in fs for d in Dir]
    want = p4r.WriteRequest(device_id=device_id, election_id=p4r.Uint128(high=election_id >> 64,
                                                                         low=election_id & (2**64 - 1)))
    for f in fs:
        for d in Dir:
            flow_entry(schema, f, d, True, 10**9, entry=want.updates.add(type=p4r.Update.INSERT).entity.table_entry)
    assert p4r.WriteRequest.FromString(write_request(device_id, election_id, raw)) == want


def test_varint_is_protobufs():
    for v in (0, 1, 127, 128, 300, 2**32 - 1, 2**63, 2**64 - 1):
        assert varint(v) == p4r.Uint128(low=v).SerializeToString()[1:] or v == 0


@pytest.fixture(scope="module", params=["v1model", "tofino"])
def schemas(request, schema):
    """The v1model program's schema, and the Tofino program's, whose actions
    take no checksum deltas (its deparser computes them)."""
    return schema if request.param == "v1model" else \
        P4Schema.from_file(ROOT / "p4src/build/tofino/flowtable.p4info.txtpb")


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize("version,proto,nat", CASES)
@pytest.mark.parametrize("kind,with_action,ttl", [(p4r.Update.INSERT, True, 30 * 10**9),
                                                   (p4r.Update.INSERT, True, 0),
                                                   (p4r.Update.MODIFY, True, 7 * 10**9),
                                                   (p4r.Update.DELETE, False, 0)])
def test_a_flows_two_updates_at_once_are_each_directions(schemas, version, proto, nat, kind, with_action, ttl,
                                                         native):
    """EntryEncoder.flow, in _wire.c and in Python, against update(), which
    the test above holds to protobuf."""
    if native and wire._wire is None:
        pytest.skip("p4flowtable._wire not built (no C compiler at install): flow() packs in Python")
    enc = EntryEncoder(schemas, native=native)
    for f in flows(version, proto, nat):
        assert enc.flow(kind, f, with_action, ttl) == tuple(enc.update(kind, f, d, with_action, ttl) for d in Dir)


@pytest.mark.skipif(wire._wire is None, reason="p4flowtable._wire not built (no C compiler at install)")
def test_native_flow_updates_refuse_what_does_not_fit(schema):
    enc = EntryEncoder(schema)
    f = flows(4, TCP, True, 4)[3]
    f.nexthops = (1 << 40, 1)          # nexthop_id is narrower
    with pytest.raises(OverflowError):
        enc.flow(p4r.Update.INSERT, f, True, 0)
    f.nexthops = (-1, 1)
    with pytest.raises(OverflowError):
        enc.flow(p4r.Update.INSERT, f, True, 0)
    with pytest.raises(AttributeError):
        enc.flow(p4r.Update.INSERT, object(), True, 0)


@pytest.mark.skipif(wire._wire is None, reason="p4flowtable._wire not built (no C compiler at install)")
@pytest.mark.parametrize("version,proto,nat", CASES)
def test_native_flow_updates_read_python_tuples_alike(schema, version, proto, nat):
    """_wire.c reads a FlowTuple's fields in place, and any other tuple
    (model.PyFlowTuple, where _flowtuple is not built) by attribute."""
    enc = EntryEncoder(schema)
    for f in flows(version, proto, nat, 8):
        want = enc.flow(p4r.Update.INSERT, f, True, 30 * 10**9)
        f.tuples = tuple(PyFlowTuple(t.src, t.dst, t.l4proto, t.sport, t.dport) for t in f.tuples)
        assert enc.flow(p4r.Update.INSERT, f, True, 30 * 10**9) == want
