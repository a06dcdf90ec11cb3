"""The reconcile's join (reconcile.Joining) trusts the flowtable each
connection's mark named when it was indexed only while the ruleset it was
judged by is still the one loaded: indexing gives the event loop turns, and
a ruleset reloaded meanwhile (`p4ft ruleset reload`, SIGHUP) may no longer
mark the connection. The daemon's pieces the join asks are stand-ins here:
what is checked is which ruleset the join compares with."""

import pickle
from types import SimpleNamespace

import pytest

from p4flowtable.entryread import Joined
from p4flowtable.ip import Held
from p4flowtable.reconcile import Fresh, Joining

# the two entries of one connection, as read back: (key, port, match,
# action, next hop, MTU, packets, bytes, time since the last hit)
ORIG = Held(("ko",), 1, "mo", (), 7, 1500, 3, 300, 10)
REPLY = Held(("kr",), 2, "mr", (), 8, 1500, 4, 400, 20)


def joined(judged_by, loaded, marks_now: str | None, leased: dict | None = None, by_reader: bool = False) -> list:
    """The flowtables the join adopted one connection into: indexed under
    judged_by (named "ft" then), joined with `loaded` in place, whose
    judgement of it now is marks_now. leased: the connections on a lease,
    which the join takes those it adopts out of. by_reader: the pair
    joined to its connection by the reader (a Joined record), not by the
    daemon (Joining.pair)."""
    entry = SimpleNamespace(orig="o")
    rec = SimpleNamespace(mirror=SimpleNamespace(entries={"o": entry}), readback=SimpleNamespace(match=None),
                          rulesets=SimpleNamespace(ruleset=loaded),
                          flowtables=SimpleNamespace(flow_of=lambda t: None),
                          _adoptable=lambda e: marks_now)
    adopted, reads = [], []

    def on_path(e, name, path):
        assert path == (1, 7, 1500, 2, 8, 1500)      # (port, next hop, MTU) of each entry
        adopted.append(name)
        return SimpleNamespace(), e

    def checked(f, nexthops, read):
        assert nexthops == (7, 8)
        reads.append(read)
        return True
    planner = SimpleNamespace(checked=checked)
    w = ("o", entry, "mo", "mr", "ft")
    waiting = {"mo": w, "mr": w}
    present, held = {}, {}
    fresh = Fresh(lambda e, lease: True, 0.0)     # every entry on a lease already
    join = Joining(rec, waiting, [w], judged_by, present, held, SimpleNamespace(on_path=on_path), planner, fresh,
                   {} if leased is None else leased)
    if by_reader:
        record = (0, 1, 7, 1500, 2, 8, 1500, 3, 4, 300, 400, 10)
        join.joined(Joined([record], pickle.dumps([(tuple(ORIG), tuple(REPLY))])))
    else:
        join.pair(REPLY, ORIG)
    # what the read said of both entries, handed on; entries not adopted kept for the plan
    assert reads == ([(3, 4, 300, 400, 10)] if adopted else [])
    assert present == ({} if adopted else {("ko",): ORIG, ("kr",): REPLY})
    assert fresh.keys == ({"o"} if adopted else set()) and not fresh.unleased
    return adopted


@pytest.fixture(params=[False, True], ids=["joined by the daemon", "joined by the reader"])
def by_reader(request):
    return request.param


def test_the_flowtable_named_at_indexing_is_taken_under_the_same_ruleset(by_reader):
    rs = object()
    assert joined(rs, rs, marks_now=None, by_reader=by_reader) == ["ft"]     # not judged again


def test_a_ruleset_reloaded_since_indexing_began_judges_again(by_reader):
    before, after = object(), object()
    assert joined(before, after, marks_now=None, by_reader=by_reader) == []
    assert joined(before, after, marks_now="ft2", by_reader=by_reader) == ["ft2"]


def test_an_adopted_connection_leaves_the_leases_to_release(by_reader):
    """Its flow keeps its lease; one not adopted stays, for the reconcile
    to release its lease unless a flow takes it later."""
    rs = object()
    leased = {"o": None, "other": None}
    assert joined(rs, rs, marks_now=None, leased=leased, by_reader=by_reader) == ["ft"]
    assert list(leased) == ["other"]
    leased = {"o": None}
    assert joined(object(), rs, marks_now=None, leased=leased, by_reader=by_reader) == []
    assert list(leased) == ["o"]


def test_fresh_flows_are_noted_with_their_entrys_lease_as_they_come():
    """Reconcile's Fresh: every connection given a flow by its mirror key;
    only those whose entry is not on an offload lease (on_lease's answer,
    asked once, with the lease) to be marked offloaded later."""
    asked = []

    def on_lease(e, lease):
        asked.append((e.orig, lease))
        return e.orig == "leased"
    fresh = Fresh(on_lease, 86400.0)
    got = [(SimpleNamespace(name=n), SimpleNamespace(orig=n)) for n in ("leased", "new", "other")]
    for g in got:
        fresh.add(g)
    assert fresh.keys == {"leased", "new", "other"}
    assert fresh.unleased == got[1:]
    assert asked == [("leased", 86400.0), ("new", 86400.0), ("other", 86400.0)]
