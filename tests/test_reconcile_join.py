"""The reconcile's join (reconcile.Joining) trusts the flowtable each
connection's mark named when it was indexed only while the ruleset it was
judged by is still the one loaded: indexing gives the event loop turns, and
a ruleset reloaded meanwhile (`p4ft ruleset reload`, SIGHUP) may no longer
mark the connection. The daemon's pieces the join asks are stand-ins here:
what is checked is which ruleset the join compares with."""

from types import SimpleNamespace

from p4flowtable.reconcile import Joining


def joined(judged_by, loaded, marks_now: str | None, leased: dict | None = None) -> list:
    """The flowtables the join adopted one connection into: indexed under
    judged_by (named "ft" then), joined with `loaded` in place, whose
    judgement of it now is marks_now. leased: the connections on a lease,
    which the join takes those it adopts out of."""
    entry = SimpleNamespace(orig="o")
    a, b = SimpleNamespace(match="mo", key="ko"), SimpleNamespace(match="mr", key="kr")
    rec = SimpleNamespace(mirror=SimpleNamespace(entries={"o": entry}), readback=SimpleNamespace(match=None),
                          rulesets=SimpleNamespace(ruleset=loaded),
                          flowtables=SimpleNamespace(flow_of=lambda t: None),
                          _adoptable=lambda e: marks_now)
    adopted = []

    def adopt(e, name, o, r):
        adopted.append(name)
        return SimpleNamespace(), e
    planner = SimpleNamespace(checked=lambda f, o, r: None)
    waiting = {"mo": ("o", entry, "mo", "mr", "ft"), "mr": ("o", entry, "mo", "mr", "ft")}
    Joining(rec, waiting, judged_by, {}, {}, adopt, planner, [], {} if leased is None else leased).pair(a, b)
    return adopted


def test_the_flowtable_named_at_indexing_is_taken_under_the_same_ruleset():
    rs = object()
    assert joined(rs, rs, marks_now=None) == ["ft"]     # not judged again


def test_a_ruleset_reloaded_since_indexing_began_judges_again():
    before, after = object(), object()
    assert joined(before, after, marks_now=None) == []
    assert joined(before, after, marks_now="ft2") == ["ft2"]


def test_an_adopted_connection_leaves_the_leases_to_release():
    """Its flow keeps its lease; one not adopted stays, for the reconcile
    to release its lease unless a flow takes it later."""
    rs = object()
    leased = {"o": None, "other": None}
    assert joined(rs, rs, marks_now=None, leased=leased) == ["ft"]
    assert list(leased) == ["other"]
    leased = {"o": None}
    assert joined(object(), rs, marks_now=None, leased=leased) == []
    assert list(leased) == ["o"]
