"""Paths in a router namespace, both families, against the real kernel: the
daemon's full-key lookups (route.py) give what `ip route get` gives for the
same key (ip rules by mark and source, ECMP under the L4 hash), and the
neighbours and links behind them."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import subprocess

import pytest
from pyroute2 import AsyncIPRoute

from p4flowtable.model import FlowTuple
from p4flowtable.netns import netlink_socket
from p4flowtable.route import RouteError, RouteKey, RouteLookups, Routes, route_keys

NS = "p4ft-rtt"
A = ipaddress.ip_address
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="needs root and iproute2 (a network namespace)")


def ip(*args: str) -> str:
    return subprocess.run(["ip", "-n", NS, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def ns():
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    for name, mtu in (("lan0", 1500), ("wan0", 1400), ("wan1", 1500), ("other0", 1500)):
        ip("link", "add", name, "mtu", str(mtu), "type", "veth", "peer", "name", name + "p")
        ip("link", "set", name + "p", "up")
        ip("link", "set", name, "up")
    subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1"], check=True)
    ip("addr", "add", "10.0.1.254/24", "dev", "lan0")
    ip("addr", "add", "192.0.2.1/24", "dev", "wan0")
    ip("addr", "add", "198.51.100.1/24", "dev", "wan1")
    ip("-6", "addr", "add", "2001:db8:1::fe/64", "dev", "lan0", "nodad")
    ip("-6", "addr", "add", "2001:db8:2::fe/64", "dev", "wan0", "nodad")
    ip("-6", "addr", "add", "2001:db8:4::fe/64", "dev", "wan1", "nodad")
    ip("-6", "addr", "add", "2001:db8:3::fe/64", "dev", "other0", "nodad")
    ip("-6", "route", "add", "2001:db8:99::/48", "via", "2001:db8:2::2")
    ip("route", "add", "203.0.113.0/24", "via", "192.0.2.2")
    ip("route", "add", "203.0.113.0/24", "via", "198.51.100.2", "table", "100")
    ip("rule", "add", "fwmark", "0x100", "lookup", "100")
    for addr, mac, dev in (("10.0.1.1", "00:00:00:00:00:01", "lan0"), ("192.0.2.2", "00:00:00:00:00:02", "wan0"),
                           ("198.51.100.2", "00:00:00:00:00:03", "wan1"),
                           ("2001:db8:2::2", "00:00:00:00:00:02", "wan0")):
        ip("neigh", "add", addr, "lladdr", mac, "dev", dev, "nud", "permanent")
    yield NS
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def with_routes(ns, fn):
    async def run():
        ipr = AsyncIPRoute(use_socket=netlink_socket(ns, 0))   # NETLINK_ROUTE
        routes = Routes(ipr, {"lan0": 1, "wan0": 2, "wan1": 3}, RouteLookups(netlink_socket(ns, 0)))
        try:
            await routes.load()
            return await fn(routes)
        finally:
            routes.lookups.close()
            ipr.close()
    return asyncio.run(run())


def kernel_dev(dst: str, src: str, mark: int, sport: int, dport: int, proto: str = "udp") -> str:
    out = ip("route", "get", dst, "from", src, "iif", "lan0", "mark", str(mark), "ipproto", proto,
             "sport", str(sport), "dport", str(dport))
    return out.split(" dev ")[1].split()[0]


def test_paths_of_both_families_by_destination(ns):
    async def run(routes):
        h4, h6, unresolved, other = await routes.resolve([
            (None, A("10.0.1.1")), (None, A("2001:db8:99::7")), (None, A("2001:db8:1::9")),
            (None, A("2001:db8:3::1"))])
        assert (h4.port, h4.dst_mac, h4.mtu, h4.neighbour) == (1, "00:00:00:00:00:01", 1500, "10.0.1.1")
        # via a gateway: the gateway's neighbour entry, the link's MTU
        assert (h6.port, h6.dst_mac, h6.mtu, h6.neighbour) == (2, "00:00:00:00:00:02", 1400, "2001:db8:2::2")
        assert isinstance(unresolved, RouteError) and "not resolved" in str(unresolved)    # no neighbour yet
        assert isinstance(other, RouteError) and "no switch port" in str(other)
    with_routes(ns, run)


def test_full_key_lookups_answer_as_ip_route_get(ns):
    """Rules by mark and source, and ECMP under the L4 hash: each key's answer
    is the device `ip route get` names for the same key."""
    ip("rule", "add", "from", "10.0.1.7", "lookup", "100", "pref", "50")
    keys = []
    for mark in (0, 0x100):
        for src in ("10.0.1.1", "10.0.1.7"):
            keys.append(RouteKey(A("203.0.113.10"), A(src), 0, mark, 17, 5000, 7000))

    async def run(routes):
        lan0 = await routes.ifindex("lan0")
        ks = [RouteKey(k.dst, k.src, lan0, k.mark, k.l4proto, k.sport, k.dport) for k in keys]
        return await routes.resolve([(k, None) for k in ks])
    got = with_routes(ns, run)
    names = {1: "lan0", 2: "wan0", 3: "wan1"}
    for k, g in zip(keys, got):
        assert names[g.port] == kernel_dev(str(k.dst), str(k.src), k.mark, k.sport, k.dport), k
    assert [names[g.port] for g in got] == ["wan0", "wan1", "wan1", "wan1"]

    # ECMP with the L4 hash: each source port where the kernel hashes it
    subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"], check=True)
    ip("route", "replace", "203.0.113.0/24", "nexthop", "via", "192.0.2.2", "dev", "wan0",
       "nexthop", "via", "198.51.100.2", "dev", "wan1")
    sports = list(range(5000, 5032))

    async def run_ecmp(routes):
        lan0 = await routes.ifindex("lan0")
        return await routes.resolve([(RouteKey(A("203.0.113.10"), A("10.0.1.1"), lan0, 0, 17, s, 7000), None)
                                     for s in sports])
    got = with_routes(ns, run_ecmp)
    want = [kernel_dev("203.0.113.10", "10.0.1.1", 0, s, 7000) for s in sports]
    assert [names[g.port] for g in got] == want
    assert set(want) == {"wan0", "wan1"}


def test_null_routes_are_no_path(ns):
    for kind, dst in (("blackhole", "192.0.2.9"), ("unreachable", "192.0.2.10"), ("prohibit", "192.0.2.11")):
        ip("route", "add", kind, f"{dst}/32")

    async def run(routes):
        lan0 = await routes.ifindex("lan0")
        return await routes.resolve([(RouteKey(A(d), A("10.0.1.1"), lan0, 0, 6, 1, 2), None)
                                     for d in ("192.0.2.9", "192.0.2.10", "192.0.2.11")])
    for got in with_routes(ns, run):
        assert isinstance(got, RouteError), got


def test_route_keys_take_each_direction_as_the_kernel_routes_it():
    """ORIGINAL: to the DNAT target from the original source; REPLY: to the
    original source (un-SNATted) from the reply's source; ports likewise."""
    orig = FlowTuple(A("10.0.1.1"), A("198.18.0.1"), 17, 40000, 53)      # DNATed to 192.0.2.53:5353
    reply = FlowTuple(A("192.0.2.53"), A("192.0.2.1"), 17, 5353, 61000)  # and masqueraded
    o, r = route_keys(orig, reply, (11, 12), 0x100)
    assert (o.dst, o.src, o.iif, o.mark, o.sport, o.dport) == (A("192.0.2.53"), A("10.0.1.1"), 11, 0x100, 40000, 5353)
    assert (r.dst, r.src, r.iif, r.mark, r.sport, r.dport) == (A("10.0.1.1"), A("192.0.2.53"), 12, 0x100, 5353, 40000)


def test_a_keyed_lookup_is_the_same_request_attribute_by_attribute():
    """encode_lookup's one-struct layout is what the attributes, encoded one
    by one, make (either family)."""
    import ipaddress as ia
    import socket as so
    from p4flowtable import route as rt
    for src, dst in ((ia.ip_address("10.0.1.5"), ia.ip_address("192.0.2.9")),
                     (ia.ip_address("2001:db8::5"), ia.ip_address("2001:db8:4::9"))):
        key = rt.RouteKey(dst=dst, src=src, iif=7, mark=0x80000001, l4proto=17, sport=40000, dport=53)
        bits = 128 if dst.version == 6 else 32
        attrs = (rt._nla(rt.RTA_DST, dst.packed) + rt._nla(rt.RTA_SRC, src.packed)
                 + rt._nla(rt.RTA_IIF, rt._U32.pack(7)) + rt._nla(rt.RTA_MARK, rt._U32.pack(0x80000001))
                 + rt._nla(rt.RTA_IP_PROTO, bytes([17])) + rt._nla(rt.RTA_SPORT, rt._BE16.pack(40000))
                 + rt._nla(rt.RTA_DPORT, rt._BE16.pack(53)))
        body = rt._RTMSG.pack(so.AF_INET6 if dst.version == 6 else so.AF_INET, bits, bits, 0, 0, 0, 0, 0, 0) + attrs
        want = rt._NLMSGHDR.pack(rt._NLMSGHDR.size + len(body), rt.RTM_GETROUTE, rt.NLM_F_REQUEST, 42, 0) + body
        assert rt.encode_lookup(key, None, 42) == want


# -- the answers kept between lookups (route.py's cache) ------------------------------------
def kernel_dev6(dst: str, src: str, sport: int, dport: int) -> str:
    out = ip("-6", "route", "get", dst, "from", src, "iif", "lan0", "ipproto", "udp",
             "sport", str(sport), "dport", str(dport))
    return out.split(" dev ")[1].split()[0]


NAMES = {1: "lan0", 2: "wan0", 3: "wan1"}


def one_at_a_time(keys):
    """Each key resolved by its own call, in one Routes: a later call could
    take what an earlier one cached; (answers, the lookups' counts)."""
    async def run(routes):
        lan0 = await routes.ifindex("lan0")
        got = [(await routes.resolve([(k._replace(iif=lan0), None)]))[0] for k in keys]
        return got, dict(routes.stats)
    return run


def test_kept_answers_are_the_kernels_while_no_rule_or_path_routes_by_port(ns):
    """Rules by mark and source, single paths: answers differ by source and
    mark, not by port. Each one given from the cache is what `ip route get`
    says for its full key, and most are given from it."""
    ip("rule", "add", "from", "10.0.1.7", "lookup", "100", "pref", "50")
    keys = [RouteKey(A("203.0.113.10"), A(src), 0, mark, 17, sport, 7000)
            for sport in range(5000, 5010) for mark in (0, 0x100) for src in ("10.0.1.1", "10.0.1.7")]
    got, stats = with_routes(ns, one_at_a_time(keys))
    assert [NAMES[g.port] for g in got] == [kernel_dev(str(k.dst), str(k.src), k.mark, k.sport, k.dport)
                                           for k in keys]
    assert {NAMES[g.port] for g in got} == {"wan0", "wan1"}
    # 4 (source, mark) pairs: each asked twice (the second time with its probe), then kept
    assert (stats["route.asked"], stats["route.probed"], stats["route.cached"]) == (8, 4, 32)


@pytest.mark.parametrize("family", [4, 6])
def test_a_multipath_route_is_asked_for_every_key(ns, family):
    """ECMP under the L4 hash: the answer depends on the ports, so none is
    kept; each key gets the port `ip route get` names for it."""
    sports = list(range(5000, 5032))
    if family == 4:
        subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"],
                       check=True)
        ip("route", "replace", "203.0.113.0/24", "nexthop", "via", "192.0.2.2", "dev", "wan0",
           "nexthop", "via", "198.51.100.2", "dev", "wan1")
        keys = [RouteKey(A("203.0.113.10"), A("10.0.1.1"), 0, 0, 17, s, 7000) for s in sports]
        want = [kernel_dev("203.0.113.10", "10.0.1.1", 0, s, 7000) for s in sports]
    else:
        subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv6.fib_multipath_hash_policy=1"],
                       check=True)
        ip("-6", "neigh", "add", "2001:db8:4::2", "lladdr", "00:00:00:00:00:03", "dev", "wan1", "nud", "permanent")
        ip("-6", "route", "replace", "2001:db8:99::/48", "nexthop", "via", "2001:db8:2::2", "dev", "wan0",
           "nexthop", "via", "2001:db8:4::2", "dev", "wan1")
        keys = [RouteKey(A("2001:db8:99::7"), A("2001:db8:1::1"), 0, 0, 17, s, 7000) for s in sports]
        want = [kernel_dev6("2001:db8:99::7", "2001:db8:1::1", s, 7000) for s in sports]
    got, stats = with_routes(ns, one_at_a_time(keys))
    assert set(want) == {"wan0", "wan1"}
    assert [NAMES[g.port] for g in got] == want
    assert stats["route.cached"] == 0 and stats["route.probed"] == 1


def test_a_rule_by_port_stops_the_cache_for_its_family(ns):
    """A rule selecting by source port: answers differ by port on a single
    path; keyed lookups of that family are all asked, the other family's
    still kept. Added while the cache holds answers, it takes effect with the
    rule change's event (what Reroute does with it: rules_changed, changed)."""
    v4 = [RouteKey(A("203.0.113.10"), A("10.0.1.1"), 0, 0, 17, s, 7000) for s in range(5000, 5020)]
    v6 = [RouteKey(A("2001:db8:99::7"), A("2001:db8:1::1"), 0, 0, 17, s, 7000) for s in range(5000, 5004)]

    async def run(routes):
        lan0 = await routes.ifindex("lan0")

        async def each(keys):
            return [(await routes.resolve([(k._replace(iif=lan0), None)]))[0] for k in keys]
        before = [NAMES[g.port] for g in await each(v4)]
        assert routes.stats["route.cached"] == 18
        ip("rule", "add", "sport", "5010-5019", "ipproto", "udp", "lookup", "100", "pref", "60")
        routes.rules_changed()
        routes.changed()
        after = [NAMES[g.port] for g in await each(v4)]
        cached = routes.stats["route.cached"]
        await each(v6)
        return before, after, routes.stats["route.cached"] - cached, cached
    before, after, cached6, cached4 = with_routes(ns, run)
    assert before == ["wan0"] * 20
    assert after == [kernel_dev(str(k.dst), str(k.src), 0, k.sport, k.dport) for k in v4] == \
        ["wan0"] * 10 + ["wan1"] * 10
    assert cached4 == 18 and cached6 == 2      # v4: none kept after the rule; v6: kept from the third


def test_a_routing_change_empties_the_cache(ns):
    """An answer kept is not given after a routing change (the epoch Reroute bumps)."""
    keys = [RouteKey(A("203.0.113.10"), A("10.0.1.1"), 0, 0, 6, s, 80) for s in range(5000, 5004)]

    async def run(routes):
        lan0 = await routes.ifindex("lan0")
        first = [NAMES[(await routes.resolve([(k._replace(iif=lan0), None)]))[0].port] for k in keys]
        bare = (await routes.resolve([(None, A("203.0.113.10"))]))[0]
        ip("route", "replace", "203.0.113.0/24", "via", "198.51.100.2")
        kept = [NAMES[(await routes.resolve([(k._replace(iif=lan0), None)]))[0].port] for k in keys]
        routes.changed()
        then = [NAMES[(await routes.resolve([(k._replace(iif=lan0), None)]))[0].port] for k in keys]
        bare_then = (await routes.resolve([(None, A("203.0.113.10"))]))[0]
        return first, kept, then, NAMES[bare.port], NAMES[bare_then.port]
    first, kept, then, bare, bare_then = with_routes(ns, run)
    assert first == ["wan0"] * 4 and then == ["wan1"] * 4 and (bare, bare_then) == ("wan0", "wan1")
    # without the event the cache answered as before (the daemon always has the event)
    assert kept == ["wan0"] * 4


def test_a_kept_path_follows_its_neighbours_new_mac(ns):
    """A kept answer keeps its path (port, MACs); the neighbour's new MAC, as
    its rtnetlink event reaches the mirror (a routing change), is in the
    next path given."""
    keys = [RouteKey(A("203.0.113.10"), A("10.0.1.1"), 0, 0, 6, s, 80) for s in range(5000, 5004)]

    async def run(routes):
        lan0, wan0 = await routes.ifindex("lan0"), await routes.ifindex("wan0")

        async def macs():
            return [(await routes.resolve([(k._replace(iif=lan0), None)]))[0].dst_mac for k in keys]
        before = await macs()
        cached = routes.stats["route.cached"]
        ip("neigh", "replace", "192.0.2.2", "lladdr", "00:00:00:00:00:22", "dev", "wan0", "nud", "permanent")
        routes.neighbour_event({"NDA_DST": "192.0.2.2", "ifindex": wan0, "state": 0x80,
                                "NDA_LLADDR": "00:00:00:00:00:22"}, deleted=False)
        return before, cached, await macs()
    before, cached, after = with_routes(ns, run)
    assert before == ["00:00:00:00:00:02"] * 4 and cached == 2
    assert after == ["00:00:00:00:00:22"] * 4


@pytest.mark.parametrize("multipath", [False, True])
def test_one_call_asks_a_reduced_key_once_where_one_path_answers(ns, multipath):
    """Many keys of one (destination, source, interface, mark) in one call,
    as a reroute pass asks: the first is asked with its probe, the rest take
    its answer where the probe shows one path; under ECMP (L4 hash) each is
    asked, and each gets the port `ip route get` names."""
    sports = list(range(5000, 5032))
    if multipath:
        subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"],
                       check=True)
        ip("route", "replace", "203.0.113.0/24", "nexthop", "via", "192.0.2.2", "dev", "wan0",
           "nexthop", "via", "198.51.100.2", "dev", "wan1")

    async def run(routes):
        lan0 = await routes.ifindex("lan0")
        got = await routes.resolve([(RouteKey(A("203.0.113.10"), A("10.0.1.1"), lan0, 0, 17, s, 7000), None)
                                    for s in sports])
        return got, dict(routes.stats)
    got, stats = with_routes(ns, run)
    want = [kernel_dev("203.0.113.10", "10.0.1.1", 0, s, 7000) for s in sports]
    assert [NAMES[g.port] for g in got] == want
    if multipath:
        assert set(want) == {"wan0", "wan1"}
        assert (stats["route.asked"], stats["route.probed"], stats["route.cached"]) == (32, 1, 0)
    else:
        assert (stats["route.asked"], stats["route.probed"], stats["route.cached"]) == (1, 1, 31)
