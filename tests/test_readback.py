"""Flow entries read back from the switch (ip.ReadBack, what the reconcile
decodes every entry with) give what the daemon wrote: key, port, match,
action values, next hop and MTU, and the counter and last hit the read asked
for; for every table and action, in the canonical byte strings a switch
returns (P4Runtime spec 8.4) and padded alike. An entry of no flow of this
program decodes to None (the reconcile deletes it)."""

import ipaddress

import pytest
from p4.v1 import p4runtime_pb2 as p4r
from test_wire import CASES, ROOT, flows

from p4flowtable import entryread
from p4flowtable.entryread import Pairing
from p4flowtable.ip import ReadBack, entry_values, flow_entry, held_action
from p4flowtable.model import Dir, FlowTuple, ipv4
from p4flowtable.p4info import P4Schema


@pytest.fixture(scope="module")
def schema():
    return P4Schema.from_file(ROOT / "p4src/build/flowtable.p4info.txtpb")


def canonical(e: p4r.TableEntry) -> None:
    """Values as a switch returns them: no leading zero bytes."""
    for m in e.match:
        m.exact.value = m.exact.value.lstrip(b"\0") or b"\0"
    for p in e.action.action.params:
        p.value = p.value.lstrip(b"\0") or b"\0"


@pytest.mark.parametrize("version,proto,nat", CASES)
def test_an_entry_read_back_decodes_to_what_was_written(schema, version, proto, nat):
    back = ReadBack(schema)
    for f in flows(version, proto, nat):
        for d in Dir:
            layout, keys, values = entry_values(schema, f, d, True)
            for shorten in (False, True):
                e = flow_entry(schema, f, d, True, 30 * 10**9)
                if shorten:
                    canonical(e)
                h = back.decode(e)
                assert h.key == (layout[0], keys) and h.port == f.iif[d]
                assert h.match == back.match(f.tuples[d])
                assert h.action == held_action(layout, values)
                assert (h.nexthop, h.mtu) == (f.nexthops[d], f.routes[d].mtu)
                assert (h.packets, h.bytes, h.idle_ns) == (0, 0, None)      # not asked for
                e.counter_data.packet_count, e.counter_data.byte_count = 7 + d, 700 + d
                e.time_since_last_hit.elapsed_ns = 5 * 10**9 + d
                h = back.decode(e)
                assert (h.packets, h.bytes, h.idle_ns) == (7 + d, 700 + d, 5 * 10**9 + d)
                # what a DELETE names: the match as written
                assert back.match_entry(h.key).match == flow_entry(schema, f, d, True).match


def test_a_changed_action_value_is_a_different_action(schema):
    back = ReadBack(schema)
    f = flows(4, 6, True, 1)[0]
    layout, _, values = entry_values(schema, f, Dir.ORIGINAL, True)
    e = flow_entry(schema, f, Dir.ORIGINAL, True)
    e.action.action.params[1].value = (int.from_bytes(e.action.action.params[1].value, "big") ^ 1).to_bytes(4, "big")
    assert back.decode(e).action != held_action(layout, values)


def test_what_is_no_flow_entry_decodes_to_none(schema):
    back = ReadBack(schema)
    f = flows(4, 6, True, 1)[0]
    missing = flow_entry(schema, f, Dir.ORIGINAL, True)
    del missing.match[2]
    no_param = flow_entry(schema, f, Dir.ORIGINAL, True)
    del no_param.action.action.params[0]
    other_action = flow_entry(schema, f, Dir.ORIGINAL, True)
    other_action.action.action.action_id = schema.action("set_flowtable").id
    other_table = flow_entry(schema, f, Dir.ORIGINAL, True)
    other_table.table_id = schema.table("port_table").id
    for e in (missing, no_param, other_action, other_table, p4r.TableEntry()):
        assert back.decode(e) is None


def test_an_ipv4_tuple_and_its_ipv4_compatible_ipv6_twin_do_not_meet(schema):
    back = ReadBack(schema)
    v4 = FlowTuple(ipv4("10.0.0.1"), ipv4("192.0.2.2"), 6, 1000, 80)
    v6 = FlowTuple(ipaddress.IPv6Address("::10.0.0.1"), ipaddress.IPv6Address("::192.0.2.2"), 6, 1000, 80)
    assert back.match(v4)[1:] == back.match(v6)[1:] and back.match(v4) != back.match(v6)


def test_fields_and_parameters_in_another_order_decode_alike(schema):
    """A switch may return an entry's match fields and action parameters in
    any order (P4Runtime does not fix it): mapped by id, not by place."""
    back = ReadBack(schema)
    for f in flows(6, 17, True, 3) + flows(4, 6, False, 3):
        for d in Dir:
            e = flow_entry(schema, f, d, True)
            want = back.decode(e)
            shuffled = p4r.TableEntry()
            shuffled.CopyFrom(e)
            del shuffled.match[:]
            shuffled.match.extend(reversed(e.match))
            del shuffled.action.action.params[:]
            shuffled.action.action.params.extend(reversed(e.action.action.params))
            got = back.decode(shuffled)
            assert (got.key, got.port, got.match, got.action, got.nexthop, got.mtu) == \
                (want.key, want.port, want.match, want.action, want.nexthop, want.mtu)
            del shuffled.match[0]
            assert back.decode(shuffled) is None


@pytest.mark.parametrize("version,proto,nat", CASES)
def test_the_reader_pairs_and_checks_entries_as_the_plan_would(schema, version, proto, nat):
    """entryread.Pairing finds a connection's two entries from the entries
    alone (ReadBack.peer) and passes a pair only when both are what the
    daemon writes (ReadBack.as_written): every value the connection decides
    changed, in either entry, makes the pair two singles, as the plan's
    comparison would write them again; the next hop and MTU are the
    entry's own (the daemon compares next hops itself)."""
    back = ReadBack(schema)
    for f in flows(version, proto, nat):
        o, r = (back.decode(flow_entry(schema, f, d, True)) for d in Dir)
        if o.match == r.match:
            continue        # a connection from an address and port to themselves: no direction to tell
        assert back.peer(o) == r.match and back.peer(r) == o.match
        assert back.as_written(o, r) and back.as_written(r, o)
        for first, second in ((o, r), (r, o)):
            pairing = Pairing(back)
            assert pairing.add([first]) == ([], []) and pairing.add([second]) == ([(first, second)], [])
            assert pairing.rest() == []
        for which in (0, 1):
            h = (o, r)[which]
            layout = entry_values(schema, f, Dir(which), True)[0]
            names = [n for (pid, _), n in zip(layout[3], ("nexthop_id", "src_addr", "dst_addr", "src_port",
                                                          "dst_port", "mtu", "d1", "d2")) if pid is not None]
            for i, name in enumerate(names):
                values = list(h.action[1])
                values[i] ^= 1
                bad = h._replace(action=(h.action[0], tuple(values)),
                                 **({"nexthop": values[i]} if name == "nexthop_id" else
                                    {"mtu": values[i]} if name == "mtu" else {}))
                pair = (bad, r) if which == 0 else (o, bad)
                if name in ("nexthop_id", "mtu"):
                    assert back.as_written(*pair) and back.as_written(pair[1], pair[0])
                    continue
                ok = back.as_written(pair[0], pair[1]) and back.as_written(pair[1], pair[0])
                assert not ok, f"{name} changed in direction {which} passed"
                assert Pairing(back).add(list(pair))[0] == []


def test_another_action_than_the_connections_is_not_as_written(schema):
    back = ReadBack(schema)
    for f in flows(4, 6, True, 5)[3:]:
        o, r = (back.decode(flow_entry(schema, f, d, True)) for d in Dir)
        udp = schema.action("forward_udp_v4").id
        assert back.as_written(o, r)
        assert not back.as_written(o._replace(action=(udp, o.action[1])), r)


@pytest.mark.parametrize("program", ["v1model", "tna"])
def test_the_native_check_is_the_python_one(program):
    """_readresponse.as_written, which the reader's pairing calls, answers
    as ReadBack.as_written for both programs' schemas (the TNA one has no
    checksum delta parameters): for every kind of connection, with each
    value of either entry changed, the two entries swapped, another
    action, and an entry of the other family."""
    if entryread._readresponse is None:
        pytest.skip("p4flowtable._readresponse is not built here")
    path = "p4src/build/flowtable.p4info.txtpb" if program == "v1model" else \
        "p4src/build/tofino/flowtable.p4info.txtpb"
    schema = P4Schema.from_file(ROOT / path)
    back = ReadBack(schema)
    native = entryread._readresponse.as_written
    answers = {True: 0, False: 0}
    other_family = {}
    for version, proto, nat in CASES:
        for f in flows(version, proto, nat):
            o, r = (back.decode(flow_entry(schema, f, d, True)) for d in Dir)
            other_family.setdefault(version, o)
            cases = [(o, r), (r, o), (o, o)]
            for h in (o, r):
                for i in range(len(h.action[1])):
                    values = list(h.action[1])
                    values[i] ^= 1 << (i % 7)
                    cases.append((h._replace(action=(h.action[0], tuple(values))), r if h is o else o))
                for aid in back.kinds:
                    cases.append((h._replace(action=(aid, h.action[1])), r if h is o else o))
                for i in range(1, 6):
                    m = list(h.match)
                    m[i] ^= 1
                    cases.append((h._replace(match=tuple(m)), r if h is o else o))
            for a, b in cases:
                want = back.as_written(a, b)
                assert native(a, b, back.kinds, back.chosen) is want, (a, b)
                answers[want] += 1
    v4, v6 = other_family[4], other_family[6]
    assert native(v4, v6, back.kinds, back.chosen) is back.as_written(v4, v6)
    assert answers[True] > 100 and answers[False] > 1000


def test_the_native_pairing_is_the_python_one(schema):
    """Pairing.add_joined in native code (_readresponse.pairing) gives what
    Pairing.add and join_pairs give, frame by frame, for entries of every
    kind of connection arriving in any order, with entries given twice,
    entries changed, and an index that names some connections either way
    round, some not, and some wrongly."""
    if entryread._readresponse is None:
        pytest.skip("p4flowtable._readresponse is not built here")
    import random
    back = ReadBack(schema)
    rnd = random.Random(7)
    entries, index = [], []
    for version, proto, nat in CASES:
        for f in flows(version, proto, nat):
            o, r = (back.decode(flow_entry(schema, f, d, True)) for d in Dir)
            entries += [o, r]
            pick = rnd.random()
            if pick < 0.4:
                index.append((o.match, r.match))
            elif pick < 0.6:
                index.append((r.match, o.match))
            elif pick < 0.7:
                index.append((o.match, o.match))
            if rnd.random() < 0.1:
                entries.append(o)           # given twice
            if rnd.random() < 0.1:
                values = list(r.action[1])
                values[-1] ^= 1
                entries.append(r._replace(action=(r.action[0], tuple(values))))
    rnd.shuffle(entries)
    at = {}
    for i, (mo, mr) in enumerate(index):
        at[mo], at[mr] = (i, 0), (i, 1)
    py, native = Pairing(back), Pairing(back)
    got = {"pairs": 0, "records": 0, "singles": 0}
    for i in range(0, len(entries), 37):
        chunk = entries[i:i + 37]
        pairs, singles = py.add(chunk)
        records, joined, pairs = entryread.join_pairs(pairs, at)
        assert native.add_joined(chunk, at) == (pairs, singles, records, joined)
        got["pairs"] += len(pairs)
        got["records"] += len(records)
        got["singles"] += len(singles)
    assert py.rest() == native.rest()
    assert min(got.values()) > 5, got
