"""Random and malformed frames into each available switch with offloaded
flows present, many built from those flows' tuples: the switch and the
daemon stay up, and every frame that leaves a front port is an installed
flow's exact rewrite of a well-formed packet. The router's kernel forwards
nothing meanwhile, so whatever arrives on the far side came by the fast path.
(A short run here; `make fuzz` sends 100,000 frames.)"""

import json
import os
import random

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from integration import flow_for, host_tool, net_per_switch, read_json, stats, wait_for
from p4flowtable.ip import checksum_deltas
from p4flowtable.model import FlowTuple, ipv4
from p4ft_topo import LAN, WAN, make_ruleset, sh

pytestmark = pytest.mark.integration
MARK = b"P4FTFUZZ"
N = int(os.environ.get("P4FT_FUZZ_FRAMES", "3000"))      # make fuzz: 100,000
RATE = 1500                                               # frames a second

net = net_per_switch(ruleset=make_ruleset("meta l4proto { tcp, udp } flow add @ft"), timeouts={"ft": 600})


def mangle(rng: random.Random, base: bytes) -> tuple[str, bytes]:
    """One variant of a well-formed IPv4 frame: kept, or broken one way."""
    raw = bytearray(base)
    kind = rng.choice(["good", "good", "ihl_small", "ihl_big", "len_long", "len_short", "frag", "doff",
                       "trunc", "ttl", "random", "badsum", "tiny"])
    tl = len(raw) - 14
    if kind == "ihl_small":
        raw[14] = 0x40 | rng.randint(0, 4)
    elif kind == "ihl_big":
        raw[14] = 0x40 | rng.randint(6, 15)
    elif kind == "len_long":
        raw[16:18] = (tl + rng.randint(1, 2000)).to_bytes(2, "big")
    elif kind == "len_short":
        raw[16:18] = rng.randint(0, 27).to_bytes(2, "big")
    elif kind == "frag":
        raw[20:22] = rng.choice([0x2000, 0x0001, 0x3fff]).to_bytes(2, "big")
    elif kind == "doff" and raw[23] == 6:
        raw[14 + 20 + 12] = rng.randint(0, 4) << 4
    elif kind == "trunc":
        raw = raw[:rng.randint(14, len(raw) - 1)]
    elif kind == "ttl":
        raw[22] = rng.randint(0, 1)
    elif kind == "random":
        raw = raw[:14] + bytearray(rng.randbytes(rng.randint(0, 200))) + MARK + raw[-12:]
    elif kind == "badsum":
        raw[24] ^= 0xFF
    elif kind == "tiny":
        raw = raw[:rng.randint(0, 13)] + MARK
    return kind, bytes(raw)


def well_formed(f: bytes) -> bool:
    """What the fast path may rewrite: a plain IPv4 header, unfragmented, TTL
    > 1, lengths that agree with the frame and its headers, no FIN/RST."""
    if len(f) < 14 + 20 or f[12:14] != b"\x08\x00" or f[14] != 0x45 or f[22] <= 1:
        return False
    tl, proto = int.from_bytes(f[16:18], "big"), f[23]
    if int.from_bytes(f[20:22], "big") & 0x3FFF or tl + 14 > len(f):
        return False
    if proto == 17:
        return tl >= 28
    return proto == 6 and len(f) >= 54 and f[46] >> 4 >= 5 and tl >= 20 + (f[46] >> 4) * 4 and not f[47] & 0x05


def rewrite(f: bytes, nat: dict, h2_mac: str) -> bytes:
    """The fast path's output for a well-formed frame of an offloaded flow:
    the next hop's MACs, masquerade, TTL - 1, and each checksum updated by
    the entry's delta as RFC 1624 and the kernel's csum_replace4 do (a wrong
    one stays as wrong; a zero UDP checksum stays zero, a UDP checksum that
    comes out 0 is sent as 0xffff)."""
    proto = f[23]
    src, dst = ipv4(f[26:30]), ipv4(f[30:34])
    sport, dport = int.from_bytes(f[34:36], "big"), int.from_bytes(f[36:38], "big")
    ip_d, l4_d = checksum_deltas(FlowTuple(src, dst, proto, sport, dport),
                                 FlowTuple(ipv4(nat["src"]), dst, proto, nat["sport"], dport))
    out = bytearray(f)
    out[0:12] = bytes.fromhex(h2_mac.replace(":", "")) + bytes.fromhex(WAN["rep_mac"].replace(":", ""))
    out[22] = f[22] - 1
    out[26:30] = ipv4(nat["src"]).packed
    out[34:36] = nat["sport"].to_bytes(2, "big")
    out[24:26] = _update(int.from_bytes(f[24:26], "big"), ip_d).to_bytes(2, "big")
    at = 14 + 20 + (16 if proto == 6 else 6)
    old = int.from_bytes(f[at:at + 2], "big")
    new = _update(old, l4_d) if proto == 6 or old else 0
    out[at:at + 2] = (0xFFFF if proto == 17 and old and not new else new).to_bytes(2, "big")
    return bytes(out)


def _update(csum: int, delta: int) -> int:
    """~(~HC + d) in ones' complement (RFC 1624 eqn. 3)."""
    return (csum - delta - (1 if delta > csum else 0)) & 0xFFFF


def test_malformed_frames_never_leave_the_fast_path_malformed(net, tmp_path):
    # offloaded flows: a UDP flow and a TCP connection that stays open
    echo = host_tool(net.h2, "echo", "--port", "7000", "--out", str(tmp_path / "echo.json"))
    read_json(str(tmp_path / "echo.json.ready"))
    host_tool(net.h1, "udp-ping", "--host", "192.0.2.2", "--port", "7000", "--sport", "6401", "--count", "3",
              "--out", str(tmp_path / "u.json")).wait(10)
    chat = host_tool(net.h1, "chatter", "--proto", "tcp", "--host", "192.0.2.2", "--port", "7000", "--count", "1",
                     "--interval", "5", "--duration", "3600", "--out", str(tmp_path / "t.json"))   # killed at the end
    tport = read_json(str(tmp_path / "t.json.up"))["ports"][0]
    flows = [wait_for(lambda p=p, k=k: (f := flow_for(net, k, sport=p)) and f["offload"] and f, 10, f"{k} offloaded")
             for k, p in (("udp", 6401), ("tcp", tport))]
    # from now on the kernel forwards nothing: what reaches h2 came by the fast path
    sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    try:
        rng = random.Random(4)
        frames, h1_mac = [], net.h1.defaultIntf().MAC()
        for i in range(N):
            f = rng.choice(flows)
            o = f["orig"]
            l4 = (TCP(sport=o["sport"], dport=o["dport"], flags="A", seq=rng.getrandbits(32))
                  if f["proto"] == "tcp" else UDP(sport=o["sport"], dport=o["dport"]))
            base = bytes(Ether(src=h1_mac, dst=LAN["rep_mac"]) / IP(src=o["src"], dst=o["dst"],
                         ttl=rng.randint(2, 64), id=i & 0xFFFF) / l4 / Raw(MARK + i.to_bytes(4, "big")
                                                                       + rng.randbytes(rng.randint(0, 300))))
            frames.append(mangle(rng, base)[1])
        (tmp_path / "frames.txt").write_text("\n".join(f.hex() for f in frames) + "\n")
        stop = tmp_path / "stop"
        cap = host_tool(net.h2, "capture", "--ifname", net.h2.defaultIntf().name, "--stop", str(stop),
                        "--out", str(tmp_path / "cap.txt"))
        read_json(str(tmp_path / "cap.txt.ready"))
        before = stats(net)
        blast = host_tool(net.h1, "blast", "--ifname", net.h1.defaultIntf().name, "--frames",
                          str(tmp_path / "frames.txt"), "--rate", str(RATE), "--out", str(tmp_path / "blast.json"))
        blast.wait(60 + N / RATE)
        sent = read_json(str(tmp_path / "blast.json"))
        stop.write_text("")
        cap.wait(30)
    finally:
        sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    assert net.net.get("s1").proc.poll() is None, "the switch died"
    st = stats(net)
    assert net.daemon.poll() is None and st["flows_offloaded_now"] >= 2, \
        {k: v for k, v in st.items() if k.startswith(("teardown", "expired", "flows_offloaded"))}
    got = [bytes.fromhex(line) for line in (tmp_path / "cap.txt").read_text().split() if line]
    nat = {f["orig"]["sport"]: {"src": f["reply"]["dst"], "sport": f["reply"]["dport"]} for f in flows}
    h2_mac = net.h2.defaultIntf().MAC()
    by_id = {int.from_bytes(f[f.index(MARK) + 8:f.index(MARK) + 12], "big"): f
             for f in frames if MARK in f and len(f) >= f.index(MARK) + 12}
    out_ok = 0
    for g in got:
        i = int.from_bytes(g[g.index(MARK) + 8:g.index(MARK) + 12], "big")
        src = by_id[i]
        assert well_formed(src), f"frame {i} left the fast path though malformed: {src.hex()}"
        sport = int.from_bytes(src[34:36], "big")
        assert g == rewrite(src, nat[sport], h2_mac), f"frame {i}: not the flow's exact rewrite"
        out_ok += 1
    expected = sum(1 for f in by_id.values() if well_formed(f))
    print(f"\n[p4ft] {net.kind}: {sent['sent']} frames sent, {expected} well-formed, {out_ok} out by the fast "
          f"path, punts: " + json.dumps({k: v - before.get(k, 0) for k, v in stats(net).items()
                                          if k.startswith("punt.") and v - before.get(k, 0)}))
    assert out_ok >= 0.9 * expected, f"only {out_ok} of {expected} well-formed frames came out"
    chat.kill()
    echo.kill()
