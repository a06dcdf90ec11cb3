"""The offload policy: p4ft's reading of the operator's ruleset, and the
kernel's decision where it replaces p4ft's old evaluator."""

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from p4flowtable.conntrack import ConntrackMirror
from p4flowtable.nftables import load
from p4flowtable.policy import PolicyError, assign_marks, read_ruleset

SEED = """flush ruleset
table ip x {
    flowtable ft {
        hook ingress priority -100; devices = { lan0, wan0 };
    }
    chain y {
        type filter hook forward priority 0; policy accept;
        ip protocol tcp flow offload @ft
    }
    chain nat {
        type nat hook postrouting priority srcnat;
        oifname "wan0" masquerade
    }
}
"""


def write(tmp_path, text, name="r.nft"):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def kernel(tmp_path, rs):
    d = tmp_path / "kernel"
    d.mkdir(exist_ok=True)
    return rs.render(d).read_text()


# -- p4ft's reading of the file ------------------------------------------------------
def test_flowtable_block_is_read_and_blanked_in_place_for_the_kernel(tmp_path):
    rs = read_ruleset(write(tmp_path, SEED))
    ft = rs.flowtables["ft"]
    assert (ft.devices, ft.family, ft.timeout) == (("lan0", "wan0"), "ip", 30.0)
    text = kernel(tmp_path, rs)
    assert "flowtable" not in text and "masquerade" in text
    assert [len(l) for l in text.split("\n")[:5]] == [len(l) for l in SEED.split("\n")[:5]]


def test_offload_statement_becomes_the_flowtables_ct_label_in_place(tmp_path):
    rs = read_ruleset(write(tmp_path, SEED))
    assert rs.marks == {"ft": 120}
    line = next(l for l in kernel(tmp_path, rs).split("\n") if "ip protocol tcp" in l)
    assert line.strip() == "ip protocol tcp ct label set 120"
    assert len(line) == len(next(l for l in SEED.split("\n") if "ip protocol tcp" in l))


def test_flow_add_and_flow_offload_are_the_same_statement(tmp_path):
    rs = read_ruleset(write(tmp_path, SEED.replace("flow offload @ft", "flow add @ft")))
    assert "ct label set 120" in kernel(tmp_path, rs)


def test_select_is_the_flowtable_whose_mark_the_connection_carries(tmp_path):
    rs = read_ruleset(write(tmp_path, SEED), label_bits=range(100, 102))
    assert rs.select(1 << 100) == "ft"
    assert rs.select(1 << 101) is None
    assert rs.select(0) is None


def test_marks_stay_with_their_flowtable_and_freed_bits_are_reused_last():
    first = assign_marks(["a", "b"], range(120, 124), {})
    assert first == {"a": 120, "b": 121}
    # b gone, c new: c takes a bit no flowtable had, not b's
    assert assign_marks(["a", "c"], range(120, 124), first) == {"a": 120, "c": 122}
    with pytest.raises(PolicyError, match="only 1 ct label bit"):
        assign_marks(["a", "b"], range(127, 128), {})


@pytest.mark.parametrize("stmt", ["ct label set 121", "ct label 127 accept", "ct label set $MINE",
                                  "ct label { 1, 125 } drop"])
def test_a_ruleset_using_p4fts_label_bits_is_refused_with_the_rules_position(tmp_path, stmt):
    src = SEED.replace("flush ruleset\n", "flush ruleset\ndefine MINE = 126\n").replace(
        "ip protocol tcp flow offload @ft", f"ip protocol udp {stmt}\n        ip protocol tcp flow offload @ft")
    with pytest.raises(PolicyError) as ei:
        read_ruleset(write(tmp_path, src))
    assert (ei.value.line, ei.value.col) == (9, 25)
    assert "p4ft keeps" in str(ei.value) and "--ct-label-bits" in str(ei.value)
    # the operator's own bits elsewhere are theirs
    read_ruleset(write(tmp_path, src), label_bits=range(0, 1))


def test_include_is_followed_from_the_including_files_directory_and_rewritten(tmp_path):
    write(tmp_path, """\
        table inet f {
            flowtable ft { hook ingress priority filter; devices = { lan0, wan0 }; }
            chain forward {
                type filter hook forward priority filter;
                include "rules.d/*.nft"
            }
        }
        """, "conf/sub/main.nft")
    write(tmp_path, "meta l4proto udp flow add @ft\n", "conf/sub/rules.d/10-udp.nft")
    write(tmp_path, "meta l4proto tcp flow add @ft\n", "conf/sub/rules.d/20-tcp.nft")
    write(tmp_path, "include \"./sub/main.nft\"\ninclude \"nothing-here/*.nft\"\n", "conf/top.nft")
    rs = read_ruleset(tmp_path / "conf/top.nft")
    assert [f.path.name for f in rs.files] == ["top.nft", "main.nft", "10-udp.nft", "20-tcp.nft"]
    d = tmp_path / "kernel"
    d.mkdir()
    top = rs.render(d).read_text()
    assert f'include "{d}/1-main.nft"' in top
    assert "ct label set 120" in (d / "2-10-udp.nft").read_text()
    assert f'include "{d}/2-10-udp.nft"; include "{d}/3-20-tcp.nft"' in (d / "1-main.nft").read_text()


def test_an_include_that_is_not_there_is_named(tmp_path):
    with pytest.raises(PolicyError, match="include file 'missing.nft' not found") as ei:
        read_ruleset(write(tmp_path, 'flush ruleset\ninclude "missing.nft"\n'))
    assert (ei.value.line, ei.value.col) == (2, 9)


def test_flowtable_blocks_take_what_nft_takes_there(tmp_path):
    rs = read_ruleset(write(tmp_path, """\
        define DEVS = { "lan0", $WAN }
        define WAN = "wan0"
        table inet fw4
        flush table inet fw4
        delete flowtable inet fw4 ft
        table inet fw4 {
            flowtable ft {
                hook ingress priority filter - 1;
                devices = $DEVS;
                flags offload;
                counter
            }
        }
        add flowtable ip other ft2 { hook ingress priority 10; devices = { lan1 }; }
        """))
    assert rs.flowtables["ft"].devices == ("lan0", "wan0")
    assert rs.flowtables["ft2"].family == "ip"
    assert rs.flushes
    text = kernel(tmp_path, rs)
    assert "delete" not in text and "flowtable" not in text and "flush table inet fw4" in text


@pytest.mark.parametrize("src,line,col,text", [
    ("table ip x {\n  chain y { type filter hook forward priority 0; flow add @nope\n  }\n}\n",
     2, 59, "flowtable 'nope' is not defined in table ip x"),
    ("table ip x {\n  flowtable ft { hook ingress priority 0; devices = { a }; }\n"
     "  chain pre {\n    type filter hook prerouting priority 0;\n    flow add @ft\n  }\n}\n",
     5, 5, "only valid in a forward chain"),
    ("table ip x {\n  flowtable ft { hook egress priority 0; devices = { a }; }\n}", 2, 23, "must be 'ingress'"),
    ("table ip x {\n  flowtable ft { hook ingress priority 0; }\n}", 2, 13, "has no devices"),
    ("table ip x {\n  flowtable ft { hook ingress priority 0; devices = a; size 3; }\n}", 2, 56,
     "unexpected 'size'"),
    ("table ip x {\n  flowtable ft { hook ingress priority 0; devices = $NOPE; }\n}", 2, 53,
     "undefined variable '$NOPE'"),
    ("table ip x {\n  flowtable ft { hook ingress priority 0; devices = a;\n", 2, 16, "'{' is not closed"),
])
def test_what_p4ft_refuses_is_named_with_line_and_column(tmp_path, src, line, col, text):
    with pytest.raises(PolicyError) as ei:
        read_ruleset(write(tmp_path, src))
    assert text in str(ei.value)
    assert (ei.value.line, ei.value.col) == (line, col)
    assert str(ei.value).startswith(f"{tmp_path / 'r.nft'}:{line}:{col}: ")


def test_a_jumped_to_chain_may_hold_the_statement_as_in_the_kernel(tmp_path):
    rs = read_ruleset(write(tmp_path, """\
        table inet f {
          flowtable ft { hook ingress priority 0; devices = { a }; }
          chain forward {
            type filter hook forward priority 0;
            ct state vmap { established : jump offload }
          }
          chain offload {
            flow add @ft
          }
        }
        add rule inet f offload meta l4proto udp flow offload @ft
        """))
    text = kernel(tmp_path, rs)
    assert text.count("ct label set 120") == 2
    assert "add rule inet f offload meta l4proto udp ct label set 120" in text


def test_nft_positions_in_the_kernels_copy_are_mapped_to_the_operators_file(tmp_path):
    src = SEED.replace("ip protocol tcp flow offload @ft", "ip protocol tcp flow add @ft tcp dprot 1")
    rs = read_ruleset(write(tmp_path, src))
    kernel(tmp_path, rs)
    k = rs.files[0].kernel_text.split("\n")[7]
    col = k.index("dprot") + 1
    msg = (f"{rs.files[0].kernel_name}:8:{col}-{col + 4}: Error: syntax error, unexpected string\n{k}\n"
           + " " * (col - 1) + "^^^^^")
    mapped = rs.map_nft_message(msg).split("\n")
    o = src.split("\n")[7]
    assert mapped[0] == f"{tmp_path / 'r.nft'}:8:{o.index('dprot') + 1}-{o.index('dprot') + 5}: " \
                        "Error: syntax error, unexpected string"
    assert mapped[1] == o and mapped[2].index("^") == o.index("dprot")


# -- the kernel decides --------------------------------------------------------------------
NS = ("p4ft-pt-h1", "p4ft-pt-r", "p4ft-pt-h2")


def _sh(*argv, ns=None, check=True):
    return subprocess.run((["ip", "netns", "exec", ns] if ns else []) + list(argv), check=check,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def router():
    """h1 (10.0.1.1, 2001:db8:1::1) - lan0 [router] wan0 - h2 (192.0.2.2, 2001:db8:2::2 and ::3:2)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for tool in ("nft", "conntrack", "ip"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool}")
    h1, r, h2 = NS
    for ns in NS:
        _sh("ip", "netns", "del", ns, check=False)
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "set", "lo", "up", ns=ns)
    _sh("ip", "link", "add", "eth0", "netns", h1, "type", "veth", "peer", "lan0", "netns", r)
    _sh("ip", "link", "add", "eth0", "netns", h2, "type", "veth", "peer", "wan0", "netns", r)
    for ns, dev, addrs in ((h1, "eth0", ("10.0.1.1/24", "2001:db8:1::1/64")),
                           (r, "lan0", ("10.0.1.254/24", "2001:db8:1::fe/64")),
                           (r, "wan0", ("192.0.2.1/24", "2001:db8:2::fe/64")),
                           (h2, "eth0", ("192.0.2.2/24", "2001:db8:2::2/64", "2001:db8:3::2/64"))):
        for a in addrs:
            _sh("ip", "addr", "add", a, "dev", dev, *(("nodad",) if ":" in a else ()), ns=ns)
        _sh("ip", "link", "set", dev, "up", ns=ns)
    _sh("ip", "route", "add", "default", "via", "10.0.1.254", ns=h1)
    _sh("ip", "-6", "route", "add", "default", "via", "2001:db8:1::fe", ns=h1)
    _sh("ip", "route", "add", "default", "via", "192.0.2.1", ns=h2)
    _sh("ip", "-6", "route", "add", "default", "via", "2001:db8:2::fe", ns=h2)
    _sh("ip", "-6", "route", "add", "2001:db8:3::/64", "via", "2001:db8:2::2", ns=r)
    _sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", ns=r)
    # TCP accepted and closed on the ports the cases use; UDP echoed on 7, swallowed on 9
    peer = subprocess.Popen(["ip", "netns", "exec", h2, sys.executable, "-c", textwrap.dedent("""
        import socket, select
        socks = {}
        for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for kind, port in [(socket.SOCK_STREAM, p) for p in (22, 23, 80, 1500, 2001)] + \\
                              [(socket.SOCK_DGRAM, 7), (socket.SOCK_DGRAM, 9)]:
                s = socket.socket(fam, kind)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((addr, port))
                if kind == socket.SOCK_STREAM:
                    s.listen(8)
                socks[s] = (kind, port)
        while True:
            for s in select.select(list(socks), [], [])[0]:
                kind, port = socks[s]
                if kind == socket.SOCK_STREAM:
                    s.accept()[0].close()
                else:
                    data, peer = s.recvfrom(2048)
                    if port == 7:
                        s.sendto(data, peer)
        """)])
    # Ready when h2's echo answers h1 in both families: fresh namespaces resolve
    # their neighbours (IPv6's took over 1 s at times) before any connection is judged.
    probe = _sh(sys.executable, "-c", textwrap.dedent("""
        import socket, time
        for dst in ("192.0.2.2", "2001:db8:2::2", "2001:db8:3::2"):
            end = time.monotonic() + 10
            while True:
                s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
                s.settimeout(0.2)
                try:
                    s.sendto(b"ready?", (dst, 7))
                    s.recv(16)
                    break
                except OSError:
                    if time.monotonic() > end:
                        raise SystemExit(f"h1 gets no echo from {dst} after 10 s")
                finally:
                    s.close()
        """), ns=h1, check=False)
    assert probe.returncode == 0, probe.stderr
    yield r
    peer.kill()
    peer.wait()
    for ns in NS:
        _sh("ip", "netns", "del", ns, check=False)


def decide(router, tmp_path, ruleset, proto="tcp", dport=80, v6=False, dst=None, tracked=True):
    """The flowtable the kernel marks a connection h1 -> h2:dport with (TCP: a
    connection h2 accepts and closes; UDP: a datagram, echoed by h2 on port 7 only).
    tracked=False: the ruleset leaves no conntrack entry (dropped, or no table
    of the family), which is "not offloaded" too."""
    rs = read_ruleset(write(tmp_path, "flush ruleset\n" + textwrap.dedent(ruleset)))
    load(router, rs)
    _sh("conntrack", "-F", ns=router, check=False)
    dst = dst or ("2001:db8:2::2" if v6 else "192.0.2.2")
    fam = "AF_INET6" if v6 else "AF_INET"
    kind = "SOCK_STREAM" if proto == "tcp" else "SOCK_DGRAM"
    _sh(sys.executable, "-c", textwrap.dedent(f"""
        import socket
        s = socket.socket(socket.{fam}, socket.{kind})
        s.settimeout(1)
        try:
            s.connect(("{dst}", {dport}))
            s.send(b"x")
            s.recv(10)
            s.close()
        except OSError:
            pass
        """), ns=NS[0])

    async def dump():
        m = ConntrackMirror(router)
        await m.open()
        try:
            return await m.dump()
        finally:
            await m.close()
    entries = [e for e in asyncio.run(dump()) if e.orig.dport == dport and e.orig.l4proto == (6 if proto == "tcp" else 17)]
    assert len(entries) == int(tracked), f"{len(entries)} conntrack entries for {proto} port {dport}: {entries}"
    return rs.select(entries[0].labels) if entries else None


FT = """table {family} x {{
    flowtable ft {{ hook ingress priority 0; devices = {{ lan0, wan0 }}; }}
    chain y {{
        type filter hook forward priority 0; policy accept;
        {rule}
    }}
}}
"""


def ft(rule, family="ip"):
    return FT.format(family=family, rule=rule)


def test_kernel_seed_ruleset_marks_tcp_and_not_udp(router, tmp_path):
    assert decide(router, tmp_path, ft("ip protocol tcp flow offload @ft")) == "ft"
    assert decide(router, tmp_path, ft("ip protocol tcp flow offload @ft"), "udp", 7) is None


def test_kernel_earlier_verdict_means_the_statement_is_not_reached(router, tmp_path):
    # both directions pass the chain: the reply's sport is 22 (the daemon's old
    # evaluator was asked with both directions too)
    rules = ft("tcp dport 22 accept\n        tcp sport 22 accept\n        ip protocol tcp flow offload @ft")
    assert decide(router, tmp_path, rules, dport=22) is None
    assert decide(router, tmp_path, rules, dport=80) == "ft"


def test_kernel_either_direction_reaching_the_statement_selects_the_flow(router, tmp_path):
    rules = ft("ip saddr 192.0.2.0/24 flow add @ft")
    assert decide(router, tmp_path, rules, "udp", 9) is None   # h2 sends nothing back on port 9
    assert decide(router, tmp_path, rules, "udp", 7) == "ft"   # its echo reaches the statement


@pytest.mark.parametrize("rule,hit,miss", [
    ("ip daddr { 192.0.2.0/24, 198.51.100.7 } flow add @ft", {}, None),
    ("meta l4proto { tcp, udp } flow add @ft", dict(proto="udp", dport=7), None),
    ("tcp dport 1000-2000 flow add @ft", dict(dport=1500), dict(dport=2001)),
    ("udp dport 7 flow add @ft", dict(proto="udp", dport=7), dict(dport=80)),
    ('iifname "lan0" oifname "wan0" flow add @ft', dict(proto="udp", dport=9), None),
    ('iifname != "wan0" flow add @ft', dict(proto="udp", dport=9), None),
    ("ct state established,related flow add @ft", {}, dict(proto="udp", dport=9)),
    ("ip saddr != 10.0.0.0/8 flow add @ft", dict(proto="udp", dport=7), dict(proto="udp", dport=9)),
])
def test_kernel_matches(router, tmp_path, rule, hit, miss):
    assert decide(router, tmp_path, ft(rule), **hit) == "ft"
    if miss is not None:
        assert decide(router, tmp_path, ft(rule), **miss) is None


def test_kernel_jump_and_return(router, tmp_path):
    rules = """table ip f {
      flowtable ft { hook ingress priority 0; devices = { lan0, wan0 }; }
      chain sub {
        tcp dport 22 return
        tcp sport 22 return
        counter
        flow add @ft
      }
      chain fwd2 {
        tcp dport 23 goto sub2
        jump sub
      }
      chain sub2 {
        tcp dport 23 return
      }
      chain forward {
        type filter hook forward priority filter;
        jump fwd2
        tcp dport 23 flow add @ft
      }
    }"""
    assert decide(router, tmp_path, rules, dport=80) == "ft"
    assert decide(router, tmp_path, rules, dport=22) is None
    assert decide(router, tmp_path, rules, dport=23) == "ft"   # goto's return goes back to forward


def test_kernel_a_drop_in_an_earlier_base_chain_wins(router, tmp_path):
    rules = """table ip f {
      flowtable ft { hook ingress priority 0; devices = { lan0, wan0 }; }
      chain early {
        type filter hook forward priority -10;
        udp dport 9 drop
      }
      chain late {
        type filter hook forward priority 10;
        flow add @ft
      }
    }"""
    assert decide(router, tmp_path, rules, "udp", 9, tracked=False) is None
    assert decide(router, tmp_path, rules, "udp", 7) == "ft"


def test_kernel_one_inet_flowtable_serves_both_families(router, tmp_path):
    rules = ft("meta nfproto ipv6 ip6 daddr 2001:db8:2::/64 flow add @ft\n"
               "        meta nfproto ipv4 meta l4proto { tcp, udp } flow add @ft", family="inet")
    assert decide(router, tmp_path, rules) == "ft"
    assert decide(router, tmp_path, rules, v6=True) == "ft"
    assert decide(router, tmp_path, rules, v6=True, dst="2001:db8:3::2") is None


def test_kernel_family_tables_see_only_their_family(router, tmp_path):
    rules = ft("ip6 nexthdr tcp flow add @ft", family="ip6")
    assert decide(router, tmp_path, rules, tracked=False) is None     # no ip6 table sees IPv4
    assert decide(router, tmp_path, rules, v6=True) == "ft"
    assert decide(router, tmp_path, rules, "udp", 7, v6=True) is None
    assert decide(router, tmp_path, ft("ip protocol tcp flow add @ft"), v6=True, tracked=False) is None


def test_kernel_refusal_names_the_operators_file_and_changes_nothing(router, tmp_path):
    decide(router, tmp_path, ft("ip protocol tcp flow offload @ft"))
    before = _sh("nft", "list", "ruleset", ns=router).stdout
    bad = write(tmp_path, "flush ruleset\n" + ft("ip protocol tcp flow offload @ft tcp dprot 1"), "bad.nft")
    with pytest.raises(PolicyError) as ei:
        load(router, read_ruleset(bad))
    assert f"{bad}:6:46-50: Error: syntax error" in str(ei.value)
    assert "flow offload @ft tcp dprot 1" in str(ei.value)
    assert _sh("nft", "list", "ruleset", ns=router).stdout == before
