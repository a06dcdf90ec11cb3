"""The Tofino target profile: the device config as the SDE's P4Runtime
server reads it, and the controller's own lookups on the Tofino P4Info."""

import gzip
import sys
import importlib.util
import ipaddress
import struct
from pathlib import Path

import pytest
from google.protobuf import text_format
from p4.config.v1 import p4info_pb2

from p4flowtable.ip import flow_entry, has_nat
from p4flowtable.nexthop import NextHops, assign
from p4flowtable.model import Dir, Flow, FlowRoute, FlowTuple
from p4flowtable.offload import port_entry
from p4flowtable.p4info import P4Schema
from p4flowtable.punt import PuntLimit
from p4flowtable.tofino import MAX_NAME, P4DeviceConfig, TofinoBuild, device_config, device_data

ROOT = Path(__file__).resolve().parents[1]
A, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address
# PI's generated p4.tmp module, where PI is installed (its Python output)
PI_P4CONFIG = [p for p in ("/usr/local/lib/python3.11/site-packages/p4/tmp/p4config_pb2.py",
                           "/usr/local/lib/python3/dist-packages/p4/tmp/p4config_pb2.py") if Path(p).exists()]


def read_like_pi(data: bytes) -> dict:
    """bf-drivers/src/pi/pi_imp.c, _pi_update_device_start, step by step:
    each chunk a uint32 length (retrieve_uint32: host order, little-endian on
    x86) and its bytes; names over 100 bytes refused; a pipeline name of
    length 0 means no BF Runtime JSON follows."""
    pos, out = 0, {}

    def chunk():
        nonlocal pos
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        b = data[pos:pos + n]
        assert len(b) == n, "chunk runs past the end of device_data"
        pos += n
        return b
    name = chunk()
    assert len(name) <= MAX_NAME, "PI_STATUS_BUFFER_ERROR"
    out["prog_name"] = name.decode()
    out["cfg"] = chunk()
    out["ctx"] = chunk()
    pipe = chunk()
    assert len(pipe) <= MAX_NAME, "PI_STATUS_BUFFER_ERROR"
    if pipe:
        out["p4_pipeline_name"] = pipe.decode()
        out["bfrt"] = chunk()
    assert pos == len(data), "bytes left after the last chunk"
    return out


def test_the_committed_build_packs_as_the_server_reads_it():
    b = TofinoBuild()
    cfg = b.device_config()
    outer = P4DeviceConfig()
    outer.ParseFromString(cfg)
    got = read_like_pi(outer.device_data)
    assert got["prog_name"] == "flowtable" and got["p4_pipeline_name"] == "pipe"
    assert got["cfg"] == gzip.decompress((b.directory / "tofino.bin.gz").read_bytes())
    assert got["ctx"] == gzip.decompress((b.directory / "context.json.gz").read_bytes())
    assert got["bfrt"] == (b.directory / "bf-rt.json").read_bytes()
    assert got["ctx"].lstrip().startswith(b"{") and b"flow_table_v4" in got["ctx"]


@pytest.mark.skipif(not PI_P4CONFIG, reason="PI's p4.tmp Python module is not installed on this machine")
def test_pi_frontend_unwraps_the_config_with_its_own_message():
    spec = importlib.util.spec_from_file_location("pi_p4config_pb2", PI_P4CONFIG[0])
    try:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except Exception as e:     # generated for another protobuf than this one
        pytest.skip(f"PI's p4config_pb2 does not load with this protobuf: {e}")
    raw = device_data("p", b"\x00bin", b"{}", "pipe", b"{\"bfrt\":1}")
    msg = mod.P4DeviceConfig()
    msg.ParseFromString(device_config("p", b"\x00bin", b"{}", "pipe", b"{\"bfrt\":1}"))
    assert msg.device_data == raw and not msg.reassign


def test_without_a_bfrt_json_the_pipeline_name_is_empty():
    got = read_like_pi(device_data("prog", b"B", b"C"))
    assert got == {"prog_name": "prog", "cfg": b"B", "ctx": b"C"}


@pytest.mark.parametrize("kw,why", [({"program": ""}, "program name"), ({"program": "x" * 101}, "program name"),
                                    ({"pipeline": "p" * 101}, "pipeline name"),
                                    ({"pipeline": "", "bfrt": b"{}"}, "pipeline's name")])
def test_names_the_server_would_refuse_are_refused(kw, why):
    args = dict(program="prog", binary=b"B", context=b"C", pipeline="pipe", bfrt=b"")
    args.update(kw)
    with pytest.raises(ValueError, match=why):
        device_data(**args)


@pytest.fixture(scope="module")
def schemas():
    def load(p):
        info = p4info_pb2.P4Info()
        text_format.Parse(Path(p).read_text(), info)
        return P4Schema(info)
    return load(ROOT / "p4src/build/flowtable.p4info.txtpb"), load(TofinoBuild().p4info)


def flows():
    lan, wan = FlowRoute(2, "02:00:00:00:02:01", "00:00:00:00:00:02", 1500), FlowRoute(1, "02:00:00:00:01:fe",
                                                                                    "00:00:00:00:00:01", 1500)
    for l4 in (6, 17):
        yield Flow(1, (FlowTuple(A("10.0.1.1"), A("192.0.2.2"), l4, 40000, 80),
                       FlowTuple(A("192.0.2.2"), A("192.0.2.1"), l4, 80, 61000)), "ft", 30, iif=(1, 2),
                   routes=(lan, wan))
        yield Flow(2, (FlowTuple(A6("2001:db8:1::1"), A6("2001:db8:2::2"), l4, 40000, 80),
                       FlowTuple(A6("2001:db8:2::2"), A6("2001:db8:2::fe"), l4, 80, 40000)), "ft", 30, iif=(1, 2),
                   routes=(lan, wan))


def tofino_build_stale() -> str | None:
    """Why the committed Tofino build cannot stand for p4src/tna now, or None."""
    import subprocess
    res = subprocess.run([sys.executable, str(ROOT / "p4src/tna/artifacts.py"), "fresh",
                          str(ROOT / "p4src/build/tofino")], capture_output=True, text=True)
    if res.returncode:
        return ("the committed Tofino build predates p4src/tna and p4src/include (next-hop table): "
                "'make p4' with p4c-barefoot rebuilds it (docs/tofino.md)")
    return None


def test_the_controller_drives_the_tofino_p4info_by_the_same_names(schemas):
    if (why := tofino_build_stale()) is not None:
        pytest.skip(why)
    v1, tna = schemas
    # the punt reasons, the packet headers' fields, the tables the daemon uses
    assert tna.enum("PuntReason") == v1.enum("PuntReason")
    for hdr in ("packet_in", "packet_out"):
        assert {n: f.bitwidth for n, f in tna.packet_meta(hdr).items()} == \
               {n: f.bitwidth for n, f in v1.packet_meta(hdr).items()}
    for name in ("port_table", "flow_table_v4", "flow_table_v6", "nexthop_table"):
        t = tna.table(name)
        assert set(t.fields) == set(v1.table(name).fields)
        assert {a.rsplit(".", 1)[-1] for a in t.actions} == {a.rsplit(".", 1)[-1] for a in v1.table(name).actions}
    for name in ("flow_table_v4", "flow_table_v6"):
        assert tna.table(name).supports_idle_timeout and tna.table(name).direct_counter is not None
    assert port_entry(tna, 1, 1).table_id == tna.table("port_table").id
    limit = PuntLimit(tna)
    assert len(limit.updates()) == tna.meter("punt_meter").size == 512
    # next hops and every flow kind build on both; flows on Tofino without the checksum deltas
    fl = list(flows())
    for schema in (v1, tna):
        nexthops = NextHops(schema)
        new = assign(nexthops, fl)
        assert len(new) == 2 and all(nexthops.entry(nh).table_id == schema.table("nexthop_table").id for nh in new)
        assert [nexthops.decode(nexthops.entry(nh)) for nh in new] == [(nh.id, nh.port, nh.src_mac, nh.dst_mac)
                                                                      for nh in new]
    for f in fl:
        for d in Dir:
            a, b = flow_entry(v1, f, d).action.action, flow_entry(tna, f, d).action.action
            deltas = (2 if f.tuples[0].src.version == 4 else 1) if has_nat(f.tuples) else 0
            assert len(b.params) == len(a.params) - deltas
            names = {p.name for p in tna.p4info.actions if p.preamble.id == b.action_id for p in p.params}
            assert "ip_csum_delta" not in names and "l4_csum_delta" not in names


def test_the_build_records_its_cpu_port_and_sizes(schemas):
    _, tna = schemas
    info = TofinoBuild().info
    assert info["cpu_port"] == 192
    assert tna.table("flow_table_v4").size >= info["flow_table_v4_size"]
    assert tna.table("flow_table_v6").size >= info["flow_table_v6_size"]
