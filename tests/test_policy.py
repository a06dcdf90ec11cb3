"""The offload policy read from an nftables ruleset."""

import ipaddress

import pytest

from p4flowtable.policy import PacketView, PolicyError, parse_ruleset

SEED = """table ip x {
    flowtable ft {
        hook ingress priority -100; devices = { eth0, eth1 };
    }
    chain y {
        type filter hook forward priority 0; policy accept;
        ip protocol tcp flow offload @ft
    }
    chain nat {
        type nat hook postrouting priority srcnat;
        oifname "eth1" masquerade
    }
}
"""


def view(proto=6, saddr="10.0.1.1", daddr="192.0.2.2", sport=40000, dport=80,
         iif="eth0", oif="eth1", nfproto="ipv4"):
    return PacketView(nfproto, proto, ipaddress.ip_address(saddr), ipaddress.ip_address(daddr),
                      sport, dport, iif, oif)


def test_seed_ruleset_offloads_tcp_and_not_udp():
    p = parse_ruleset(SEED)
    assert p.select([view(proto=6)]) == "ft"
    assert p.select([view(proto=17)]) is None


def test_flowtable_devices_and_default_timeout_are_read():
    ft = parse_ruleset(SEED).flowtables["ft"]
    assert ft.devices == ("eth0", "eth1")
    assert ft.timeout == 30.0


def test_kernel_text_hides_flowtables_and_offload_statements_in_place():
    p = parse_ruleset(SEED)
    assert "flowtable" not in p.kernel_text
    assert "flow offload" not in p.kernel_text
    assert "masquerade" in p.kernel_text
    # same lines and columns as the operator's file, for nft's error messages
    assert [len(l) for l in p.kernel_text.split("\n")] == [len(l) for l in SEED.split("\n")]


def test_kernel_text_keeps_conntrack_where_the_offload_statement_was():
    # the kernel's offload statement holds conntrack for the family; without
    # NAT nothing else would, and no flow would ever be established
    routed = SEED[:SEED.index("    chain nat")] + "}\n"
    for stmt in ("flow offload @ft", "flow add @f"):
        src = routed.replace("flow offload @ft", stmt).replace("flowtable ft", f"flowtable {stmt.split('@')[1]}")
        line = next(l for l in parse_ruleset(src).kernel_text.split("\n") if "ip protocol tcp" in l)
        assert line.strip() == "ip protocol tcp ct state!=0"
        assert len(line) == len(next(l for l in src.split("\n") if "ip protocol tcp" in l))


def test_flow_add_is_accepted_like_flow_offload():
    p = parse_ruleset(SEED.replace("flow offload @ft", "flow add @ft"))
    assert p.select([view()]) == "ft"


def test_earlier_verdict_means_offload_statement_is_not_reached():
    src = SEED.replace("ip protocol tcp flow offload @ft",
                       "tcp dport 22 accept\n        ip protocol tcp flow offload @ft")
    p = parse_ruleset(src)
    assert p.select([view(dport=22)]) is None
    assert p.select([view(dport=80)]) == "ft"


def test_either_direction_reaching_the_statement_selects_the_flow():
    src = SEED.replace("ip protocol tcp flow offload @ft", "ip saddr 192.0.2.0/24 flow add @ft")
    p = parse_ruleset(src)
    orig = view(saddr="10.0.1.1", daddr="192.0.2.2")
    reply = view(saddr="192.0.2.2", daddr="10.0.1.1", iif="eth1", oif="eth0")
    assert p.select([orig]) is None
    assert p.select([orig, reply]) == "ft"


@pytest.mark.parametrize("rule,hit,miss", [
    ("ip daddr { 192.0.2.0/24, 198.51.100.7 } flow add @ft", dict(daddr="198.51.100.7"), dict(daddr="203.0.113.1")),
    ("meta l4proto { tcp, udp } flow add @ft", dict(proto=17), dict(proto=1)),
    ("tcp dport 1000-2000 flow add @ft", dict(dport=1500), dict(dport=2001)),
    ("udp sport 53 flow add @ft", dict(proto=17, sport=53), dict(proto=6, sport=53)),
    ('iifname "eth0" oifname "eth1" flow add @ft', dict(), dict(iif="eth1", oif="eth0")),
    ("iifname != eth1 flow add @ft", dict(), dict(iif="eth1")),
    ("ct state established,related flow add @ft", dict(), None),
    ("ip saddr != 10.0.0.0/8 flow add @ft", dict(saddr="172.16.0.1"), dict(saddr="10.1.2.3")),
])
def test_matches(rule, hit, miss):
    p = parse_ruleset(SEED.replace("ip protocol tcp flow offload @ft", rule))
    assert p.select([view(**hit)]) == "ft"
    if miss is not None:
        assert p.select([view(**miss)]) is None


def test_jump_and_return_follow_the_kernel():
    src = """table ip f {
  flowtable ft { hook ingress priority 0; devices = { a, b }; }
  chain sub { tcp dport 22 return
    counter
    flow add @ft }
  chain fwd { type filter hook forward priority filter; jump sub; }
}"""
    p = parse_ruleset(src)
    assert p.select([view(dport=80, iif="a", oif="b")]) == "ft"
    assert p.select([view(dport=22, iif="a", oif="b")]) is None


def test_drop_in_an_earlier_base_chain_wins():
    src = """table ip f {
  flowtable ft { hook ingress priority 0; devices = { a, b }; }
  chain early { type filter hook forward priority -10; udp dport 9 drop }
  chain late { type filter hook forward priority 10; flow add @ft }
}"""
    p = parse_ruleset(src)
    assert p.select([view(proto=17, dport=9)]) is None
    assert p.select([view(proto=17, dport=10)]) == "ft"


@pytest.mark.parametrize("src,line,col,text", [
    ("table ip x {\n  chain y { type filter hook forward priority 0;\n    meta mark 3 flow add @ft }\n}",
     3, 5, "cannot evaluate 'meta'"),
    ("table ip x {\n  chain y { type filter hook forward priority 0; flow add @nope }\n}",
     2, 59, "flowtable 'nope' is not defined"),
    ("table ip x {\n  flowtable ft { hook egress priority 0; devices = { a }; }\n}",
     2, 23, "must be 'ingress'"),
    ("table ip x {\n  flowtable ft { hook ingress priority 0; }\n}", 2, 3, "has no devices"),
    ("table ip x {\n  chain y { type filter hook forward priority 0; tcp dport 99999 accept }\n}",
     2, 60, "bad port"),
    ("table ip x {\n  chain y { type filter hook forward priority 0;\n", 2, 0, "not closed"),
    ("tables ip x { }", 1, 1, "expected 'table'"),
    ("table ip x {\n  chain y { type filter hook forward priority 0; ip saddr 10.0.0.300 accept }\n}",
     2, 59, "bad address"),
])
def test_malformed_rulesets_are_rejected_with_line_and_column(src, line, col, text):
    with pytest.raises(PolicyError) as ei:
        parse_ruleset(src, "r.nft")
    assert text in str(ei.value)
    assert ei.value.line == line
    if col:
        assert ei.value.col == col
    assert str(ei.value).startswith(f"r.nft:{line}:")


def test_unsupported_expressions_outside_forward_chains_are_left_to_the_kernel():
    src = SEED.replace('oifname "eth1" masquerade', 'meta mark 0x1 oifname "eth1" masquerade')
    p = parse_ruleset(src)
    assert "meta mark 0x1" in p.kernel_text


INET = """table inet x {
    flowtable ft {
        hook ingress priority filter; devices = { eth0, eth1 };
    }
    chain y {
        type filter hook forward priority filter; policy accept;
        meta nfproto ipv6 ip6 daddr 2001:db8:2::/64 flow add @ft
        meta nfproto ipv4 meta l4proto { tcp, udp } flow add @ft
    }
}
"""


def test_one_inet_flowtable_serves_both_families():
    p = parse_ruleset(INET)
    assert list(p.flowtables) == ["ft"]
    assert p.select([view()]) == "ft"
    assert p.select([view(nfproto="ipv6", saddr="2001:db8:1::1", daddr="2001:db8:2::2")]) == "ft"
    assert p.select([view(nfproto="ipv6", saddr="2001:db8:1::1", daddr="2001:db8:3::2")]) is None
    assert p.select([view(proto=1)]) is None


def test_family_tables_see_only_their_family():
    ip6 = INET.replace("table inet x", "table ip6 x").replace(
        "meta nfproto ipv4 meta l4proto { tcp, udp } flow add @ft", "ip6 nexthdr tcp flow add @ft")
    p = parse_ruleset(ip6)
    assert p.select([view()]) is None                       # an IPv4 packet never sees an ip6 table
    assert p.select([view(nfproto="ipv6", saddr="2001:db8:1::1", daddr="2001:db8:9::1")]) == "ft"
    assert p.select([view(nfproto="ipv6", proto=17, saddr="2001:db8:1::1", daddr="2001:db8:9::1")]) is None
    assert parse_ruleset(SEED).select([view(nfproto="ipv6", saddr="2001:db8:1::1",
                                            daddr="2001:db8:2::2")]) is None
