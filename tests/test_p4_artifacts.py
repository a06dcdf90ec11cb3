"""The committed P4 artifacts: fresh, and carrying every name the controller uses."""

import hashlib
from pathlib import Path

from p4flowtable.p4info import P4Schema

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "p4src" / "build"


def test_artifacts_were_built_from_the_current_sources():
    recorded = {}
    for line in (BUILD / "SOURCES.sha256").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        recorded[name.strip()] = digest
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "p4src").rglob("*.p4")
                     if "build" not in p.parts)
    assert sorted(recorded) == sources, "P4 sources added or removed since 'make p4'"
    for name in sources:
        assert hashlib.sha256((ROOT / name).read_bytes()).hexdigest() == recorded[name], \
            f"{name} changed since 'make p4'"


def test_p4info_has_what_the_controller_looks_up():
    s = P4Schema.from_file(BUILD / "flowtable.p4info.txtpb")
    flow = s.table("flow_table_v4")
    assert set(flow.fields) == {"ingress_port", "src_addr", "dst_addr", "l4proto", "src_port", "dst_port"}
    assert flow.direct_counter is not None and flow.supports_idle_timeout
    v4 = {"nexthop_id", "src_addr", "dst_addr", "src_port", "dst_port", "mtu", "ip_csum_delta", "l4_csum_delta"}
    for l4 in ("tcp", "udp"):
        assert set(s.action(f"forward_{l4}_v4").params) == v4
        assert set(s.action(f"forward_{l4}_v6").params) == v4 - {"ip_csum_delta"}
    for family in ("v4", "v6"):
        assert set(s.action(f"route_{family}").params) == {"nexthop_id", "mtu"}
    assert set(s.table("nexthop_table").fields) == {"nexthop_id"}
    assert set(s.action("set_nexthop").params) == {"port", "src_mac", "dst_mac"}
    assert set(s.table("port_table").fields) == {"ingress_port"}
    assert set(s.action("set_flowtable").params) == {"flowtable_id"}
    assert {"ingress_port", "punt_reason"} <= set(s.packet_meta("packet_in"))
    assert "egress_port" in s.packet_meta("packet_out")
    assert set(s.enum("PuntReason")) == {"NONE", "MISS", "TCP_FIN_RST", "MTU_EXCEEDED", "TTL_EXPIRED",
                                         "IP_OPTIONS", "IP_FRAGMENT", "NOT_OFFLOADABLE", "PORT_UNBOUND",
                                         "MALFORMED"}


def test_unknown_names_fail_with_a_suggestion():
    s = P4Schema.from_file(BUILD / "flowtable.p4info.txtpb")
    try:
        s.table("flow_table_v5")
    except KeyError as e:
        assert "did you mean" in str(e) and "flow_table_v4" in str(e)
    else:
        raise AssertionError("unknown table accepted")
