"""P4Testgen's STF tests (tests/testgen/), read and replayed on the v1model
program: BMv2 and the embedded target.

An STF test is table entries, one input packet and the expected output (none:
dropped). Tests of the TNA program are mapped onto the v1model program:
- names through the two P4Infos (`FtIngress.flow_table_v4` is
  `FtIngress.FlowtableIngress.flow_table_v4`; each name is looked up by its
  last component, which both programs share, as P4Schema resolves short
  names);
- the NAT actions' checksum deltas, which the v1model actions take as action
  data and the TNA program computes with its Checksum externs, added the way
  p4ft's controller computes them (ip.checksum_deltas);
- the CPU port, 192 on Tofino, 510 on v1model, in the entries, the packets,
  the packet_out and packet_in headers and the expected port.
Front port numbers are renamed onto the switch's ports 1..n (the programs
treat them as opaque values, and BMv2 has only the ports it was given), the
same renaming everywhere a port appears; 511, where v1model and P4Testgen's
Tofino model drop, stays 511.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from p4flowtable.ip import checksum_deltas
from p4flowtable.model import FlowTuple
from p4flowtable.p4info import P4Schema

V1_CPU, TNA_CPU = 510, 192
# v1model's drop port, and one P4Testgen's Tofino model drops at too
# (check_tofino_drop): kept as it is, not renamed
DROP_PORT = 511
PACKET_OUT_BYTES, PACKET_IN_BYTES = 2, 3      # header.p4: egress_port 9 + 7; ingress_port 9 + reason 8 + 7
PORT_TABLES_KEYS = {"port_table": "ingress_port", "flow_table_v4": "ingress_port", "flow_table_v6": "ingress_port"}


@dataclass
class Entry:
    table: str
    keys: dict[str, int]
    action: str
    params: dict[str, int]


@dataclass
class Expect:
    port: int
    data: bytes
    mask: bytes              # 0 nibbles: P4Testgen left them open (*)

    def matches(self, port: int, data: bytes) -> bool:
        return (port == self.port and len(data) == len(self.data)
                and all((a ^ b) & m == 0 for a, b, m in zip(data, self.data, self.mask)))


@dataclass
class StfTest:
    name: str
    entries: list[Entry]
    packets: list[tuple[int, bytes]]
    expects: list[Expect]
    trace: str = field(repr=False, default="")


# add TABLE KEY:VALUE ... ACTION(PARAM:VALUE,...), names quoted by the BMv2 target
_ADD = re.compile(r'^add\s+"?([\w.]+)"?\s+(.*?)\s*"?([\w.]+)"?\((.*)\)\s*$')


def _hex(text: str) -> tuple[bytes, bytes]:
    text = text.rstrip("$").strip()
    if len(text) % 2:
        raise ValueError(f"odd number of hex digits: {text[:40]}...")
    data, mask = bytearray(), bytearray()
    for i in range(0, len(text), 2):
        pair = text[i:i + 2]
        data.append(int(pair.replace("*", "0"), 16))
        mask.append((0x00 if pair[0] == "*" else 0xF0) | (0x00 if pair[1] == "*" else 0x0F))
    return bytes(data), bytes(mask)


def parse(path: Path) -> StfTest:
    entries, packets, expects, trace = [], [], [], []
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            trace.append(line)
            continue
        if not line.strip():
            continue
        word = line.split(None, 1)[0]
        if word == "add":
            m = _ADD.match(line)
            if not m:
                raise ValueError(f"{path}: cannot read {line!r}")
            table, keys, action, params = (g.replace('"', "") for g in m.groups())
            kv = dict(k.split(":", 1) for k in keys.split())
            pv = dict(p.split(":", 1) for p in params.split(",") if p)
            entries.append(Entry(table, {k: int(v, 0) for k, v in kv.items()}, action,
                                 {k: int(v, 0) for k, v in pv.items()}))
        elif word == "packet":
            _, port, data = line.split(None, 2)
            packets.append((int(port), _hex(data)[0]))
        elif word == "expect":
            _, port, data = line.split(None, 2)
            d, m = _hex(data)
            expects.append(Expect(int(port), d, m))
        else:
            raise ValueError(f"{path}: STF command {word!r} is not replayed")
    return StfTest(Path(path).stem, entries, packets, expects, "\n".join(trace))


def load_dir(directory: Path) -> list[StfTest]:
    def number(p: Path) -> int:
        m = re.search(r"(\d+)$", p.stem)
        return int(m.group(1)) if m else 0
    return [parse(p) for p in sorted(Path(directory).glob("*.stf"), key=number)]


# -- onto the v1model program ------------------------------------------------------

def _set_port(data: bytes, port: int) -> bytes:
    """A 9-bit port at the start of a header (packet_out, packet_in)."""
    word = int.from_bytes(data[:2], "big")
    word = (word & 0x007F) | (port << 7)
    return word.to_bytes(2, "big") + data[2:]


def _short(name: str) -> str:
    """A P4Info name's last component, which both programs share; P4Schema
    resolves it in the v1model P4Info."""
    return name.rsplit(".", 1)[-1]


def _get_port(data: bytes) -> int:
    return int.from_bytes(data[:2], "big") >> 7


def ports_of(t: StfTest, cpu: int, keep: tuple[int, ...] = ()) -> list[int]:
    """The front ports a test names, in order of appearance (not cpu, not keep)."""
    seen: list[int] = []

    def add(p: int, ingress: bool = False) -> None:
        if p != cpu and (ingress or p not in keep) and p not in seen:
            seen.append(p)
    for e in t.entries:
        last = _short(e.table)
        if last in PORT_TABLES_KEYS:
            add(e.keys[PORT_TABLES_KEYS[last]], ingress=True)
        if "port" in e.params:
            add(e.params["port"])
    for port, data in t.packets:
        add(port, ingress=True)
        if port == cpu and len(data) >= PACKET_OUT_BYTES:
            add(_get_port(data))
    for x in t.expects:
        add(x.port)
        if x.port == cpu and len(x.data) >= PACKET_IN_BYTES:
            add(_get_port(x.data))
    return seen


def mapped(t: StfTest, *, tna: bool, schema: P4Schema, front_ports: list[int]) -> StfTest:
    """The test as the v1model program (schema: its P4Info) on a switch with
    front_ports takes it."""
    cpu = TNA_CPU if tna else V1_CPU
    keep = (DROP_PORT,)
    names = ports_of(t, cpu, keep)
    if len(names) > len(front_ports):
        raise ValueError(f"{t.name}: {len(names)} ports, the switch has {len(front_ports)}")
    rename = dict(zip(names, front_ports))
    rename[cpu] = V1_CPU

    def port(p: int) -> int:
        """An egress port: the drop port kept."""
        return p if p in keep else rename[p]

    def ingress(p: int) -> int:
        """An ingress port: 511 is only a number here, renamed like the others."""
        return rename[p]

    entries = []
    for e in t.entries:
        table = schema.table(_short(e.table)).name
        action = schema.action(_short(e.action)).name
        keys, params = dict(e.keys), dict(e.params)
        last = _short(table)
        if last in PORT_TABLES_KEYS:
            keys[PORT_TABLES_KEYS[last]] = ingress(keys[PORT_TABLES_KEYS[last]])
        if "port" in params:
            params["port"] = port(params["port"])
        if tna and _short(action).startswith("forward_"):
            params.update(_deltas(keys, params, v6=last.endswith("v6")))
        entries.append(Entry(table, keys, action, params))
    packets = []
    for p, data in t.packets:
        if p == cpu and len(data) >= PACKET_OUT_BYTES:
            data = _set_port(data, port(_get_port(data)))
        packets.append((ingress(p), data))
    expects = []
    for x in t.expects:
        data, mask = x.data, x.mask
        if x.port == cpu and len(data) >= PACKET_IN_BYTES and mask[:2] == b"\xff\xff":
            data = _set_port(data, ingress(_get_port(data)))
        expects.append(Expect(port(x.port), data, mask))
    return StfTest(t.name, entries, packets, expects, t.trace)


def _deltas(keys: dict[str, int], params: dict[str, int], v6: bool) -> dict[str, int]:
    a = ipaddress.IPv6Address if v6 else ipaddress.IPv4Address
    orig = FlowTuple(a(keys["src_addr"]), a(keys["dst_addr"]), keys["l4proto"], keys["src_port"], keys["dst_port"])
    rw = FlowTuple(a(params["src_addr"]), a(params["dst_addr"]), keys["l4proto"], params["src_port"],
                   params["dst_port"])
    ip_delta, l4_delta = checksum_deltas(orig, rw)
    return {"l4_csum_delta": l4_delta} if v6 else {"ip_csum_delta": ip_delta, "l4_csum_delta": l4_delta}


# -- outcome and comparison -------------------------------------------------------

def describe(port: int, data: bytes, reasons: dict[int, str]) -> str:
    if port == V1_CPU and len(data) >= PACKET_IN_BYTES:
        reason = data[1] << 1 & 0xFF | data[2] >> 7
        return f"punt {reasons.get(reason, reason)} (ingress port {_get_port(data)})"
    return f"port {port}, {len(data)} bytes"


def difference(t: StfTest, outputs: list[tuple[int, bytes]], reasons: dict[int, str]) -> str | None:
    """None when the outputs are what the test expects, else what differs."""
    if not t.expects and not outputs:
        return None
    if not t.expects:
        return "expected a drop; got " + "; ".join(describe(p, d, reasons) for p, d in outputs)
    if not outputs:
        return "expected " + "; ".join(describe(x.port, x.data, reasons) for x in t.expects) + "; got a drop"
    if len(outputs) != len(t.expects):
        return f"expected {len(t.expects)} packets, got {len(outputs)}"
    for x, (port, data) in zip(t.expects, outputs):
        if not x.matches(port, data):
            if port != x.port or len(data) != len(x.data):
                return (f"expected {describe(x.port, x.data, reasons)}; got {describe(port, data, reasons)}")
            first = next(i for i, (a, b, m) in enumerate(zip(data, x.data, x.mask)) if (a ^ b) & m)
            return (f"{describe(port, data, reasons)}: byte {first} is {data[first]:#04x}, expected "
                    f"{x.data[first]:#04x} (bytes {first}..{first + 8}: got {data[first:first + 8].hex()}, "
                    f"expected {x.data[first:first + 8].hex()})")
    return None


# -- the differences between the two programs that are intended ------------------

def _frame(port: int, data: bytes, cpu: int) -> bytes:
    return data[PACKET_OUT_BYTES:] if port == cpu else data


def ip_length_past_frame(t: StfTest, cpu: int) -> bool:
    """The IP header claims more bytes than the frame carries."""
    d = _frame(*t.packets[0], cpu)
    if d[12:14] == b"\x08\x00" and len(d) >= 34:
        return int.from_bytes(d[16:18], "big") > len(d) - 14
    if d[12:14] == b"\x86\xdd" and len(d) >= 54:
        return int.from_bytes(d[18:20], "big") + 40 > len(d) - 14
    return False


def frame_ends_in_l4_header(t: StfTest, cpu: int) -> bool:
    """A plain IPv4 or IPv6 TCP/UDP packet whose frame ends inside its TCP or
    UDP header: where the parsers' extract fails."""
    d = _frame(*t.packets[0], cpu)
    if d[12:14] == b"\x08\x00" and len(d) >= 34 and d[14] & 0x0F == 5 \
            and int.from_bytes(d[20:22], "big") & 0x3FFF == 0 and d[23] in (6, 17):
        return len(d) < 34 + (20 if d[23] == 6 else 8)
    if d[12:14] == b"\x86\xdd" and len(d) >= 54 and d[20] in (6, 17):
        return len(d) < 54 + (20 if d[20] == 6 else 8)
    return False


@dataclass(frozen=True)
class Intended:
    name: str
    applies: object          # (StfTest as generated, for the TNA program) -> bool
    why: str


# docs/tofino.md lists these with their reasons; test_testgen_replay.py pins them
INTENDED_TNA = (
    Intended("ip-length-past-frame", lambda t: ip_length_past_frame(t, TNA_CPU),
             "TNA's ingress does not know the frame's length: a frame shorter than its IP length is "
             "forwarded as it is (v1model punts it MALFORMED, or PORT_UNBOUND from an unbound port)"),
    Intended("frame-ends-in-l4-header", lambda t: frame_ends_in_l4_header(t, TNA_CPU),
             "Tofino's parser drops a frame whose TCP/UDP header is cut short (P4Testgen's model of a "
             "failed extract); v1model's parser stops and the program punts it NOT_OFFLOADABLE, or "
             "sends a packet-out as it is"),
)


def intended(t: StfTest) -> Intended | None:
    return next((i for i in INTENDED_TNA if i.applies(t)), None)


__all__ = ["Entry", "Expect", "StfTest", "parse", "load_dir", "mapped", "difference"]
