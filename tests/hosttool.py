#!/usr/bin/env python3
"""Traffic endpoints run inside the Mininet hosts by the integration tests.

Each writes a JSON report, so the test reads what the host observed.
"""

import argparse
import hashlib
import json
import random
import socket
import struct
import sys
import time


def report(path, **kw):
    with open(path + ".tmp", "w") as f:
        json.dump(kw, f)
    import os
    os.replace(path + ".tmp", path)


def tcp_sink(a):
    srv = socket.socket(socket.AF_INET6 if a.ipv6 else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::" if a.ipv6 else "0.0.0.0", a.port))
    srv.listen(1)
    report(a.out + ".ready", listening=True)
    conn, peer = srv.accept()
    h, n = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 16):
        h.update(chunk)
        n += len(chunk)
    conn.close()
    report(a.out, peer=list(peer)[:2], sha256=h.hexdigest(), bytes=n, eof_at=time.time())


def tcp_source(a):
    s = socket.create_connection((a.host, a.port))    # either family, by the address
    report(a.out + ".connected", local=list(s.getsockname())[:2], connected_at=time.time())
    time.sleep(a.pause)
    rng = random.Random(a.seed)
    h, left = hashlib.sha256(), a.bytes
    while left:
        chunk = rng.randbytes(min(left, 1 << 16))
        s.sendall(chunk)
        h.update(chunk)
        left -= len(chunk)
    report(a.out + ".sent", sha256=h.hexdigest(), sent_at=time.time())
    time.sleep(a.hold)
    closed_at = time.time()
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # wait for the peer's FIN
    s.close()
    report(a.out, sha256=h.hexdigest(), closed_at=closed_at, done_at=time.time())


def udp_echo(a):
    # --bind: answer from that address (a host with several answers from the
    # one a request went to only if bound to it; a wildcard socket answers from
    # the address of its route back)
    v6 = a.ipv6 or (a.bind is not None and ":" in a.bind)
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.bind or ("::" if v6 else "0.0.0.0"), a.port))
    report(a.out + ".ready", listening=True)
    seen = []
    while True:
        data, peer = s.recvfrom(65535)
        seen.append([peer[0], peer[1], len(data)])
        report(a.out, received=seen)
        if a.max_replies is None or len(seen) <= a.max_replies:
            s.sendto(data[:64], peer)


def udp_ping(a):
    v6 = ":" in a.host
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("::" if v6 else "0.0.0.0", a.sport))
    if not v6:   # IPv6 routers never fragment: nothing to choose
        # IP_MTU_DISCOVER: IP_PMTUDISC_DO, or IP_PMTUDISC_DONT (may be fragmented)
        s.setsockopt(socket.IPPROTO_IP, 10, 2 if a.df else 0)
    s.settimeout(a.wait)
    got = 0
    errors = []
    start = time.monotonic()
    times = []      # when each reply came, seconds from the start
    for i in range(a.count):
        try:
            s.sendto(bytes([i % 256]) * a.size, (a.host, a.port))
            s.recvfrom(65535)
            got += 1
            times.append(round(time.monotonic() - start, 4))
        except OSError as e:
            errors.append(str(e))
        time.sleep(a.interval)
    report(a.out, replies=got, errors=errors, reply_times=times)


def icmp_ping(a):
    """ICMP echo requests over a raw socket; counts the replies."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(a.wait)
    ident, got = random.randrange(1, 0xFFFF), 0
    for seq in range(a.count):
        body = struct.pack("!HH", ident, seq) + b"p4ft" * 8
        csum = sum(struct.unpack("!%dH" % ((len(body) + 4) // 2), b"\x08\x00\x00\x00" + body))
        csum = (csum & 0xFFFF) + (csum >> 16)
        s.sendto(struct.pack("!BBH", 8, 0, ~(csum + (csum >> 16)) & 0xFFFF) + body, (a.host, 0))
        try:
            while True:
                data = s.recv(2048)
                ihl = (data[0] & 0xF) * 4
                if data[ihl] == 0 and struct.unpack("!HH", data[ihl + 4:ihl + 8]) == (ident, seq):
                    got += 1
                    break
        except OSError:
            pass
        time.sleep(a.interval)
    report(a.out, replies=got)


def echo(a):
    """Echo every TCP connection's bytes and every UDP datagram back, on one
    port number, any number of peers, reporting nothing per packet."""
    import selectors
    sel = selectors.DefaultSelector()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", a.port))
    srv.listen(4096)
    srv.setblocking(False)
    sel.register(srv, selectors.EVENT_READ)
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dgram.bind(("0.0.0.0", a.port))
    sel.register(dgram, selectors.EVENT_READ)
    report(a.out + ".ready", listening=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is dgram:
                data, peer = dgram.recvfrom(65536)
                dgram.sendto(data, peer)
                continue
            if key.fileobj is srv:
                conn, _ = srv.accept()
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                continue
            key.fileobj.sendall(data)


def chatter(a):
    """Many connections (TCP) or flows (UDP) that keep talking: each sends a
    small message every interval and counts the echoes. Reports the local
    ports once all are up (.up), then, after the duration, what each saw."""
    import selectors
    udp = a.proto == "udp"
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        s.connect((a.host, a.port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    report(a.out + ".up", ports=ports, up_at=time.time())
    sent, got, broken = [0] * a.count, [0] * a.count, set()
    last_echo_at = None       # when the last echo arrived (wall clock)
    # the longest a connection went without sending, and without an echo:
    # (seconds, wall clock at its end, local port), for a failure's message
    sent_at, echo_at = [None] * a.count, [None] * a.count
    send_gap, echo_gap = (0.0, None, None), (0.0, None, None)
    end = time.monotonic() + a.duration
    step = a.interval / a.count
    nxt = time.monotonic()
    i = 0
    while time.monotonic() < end:
        if time.monotonic() >= nxt and i not in broken:
            try:
                socks[i].send(b"p4ft-chatter-%08d" % sent[i])
                sent[i] += 1
                now = time.time()
                if sent_at[i] is not None and now - sent_at[i] > send_gap[0]:
                    send_gap = (now - sent_at[i], now, ports[i])
                sent_at[i] = now
            except OSError:
                broken.add(i)
            i = (i + 1) % a.count
            nxt += step
        for key, _ in sel.select(max(0.0, min(nxt - time.monotonic(), 0.05))):
            j = key.data
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if not data:
                if not udp:
                    broken.add(j)
                    sel.unregister(key.fileobj)
                continue
            got[j] += len(data) // 21 if not udp else 1
            last_echo_at = time.time()
            if echo_at[j] is not None and last_echo_at - echo_at[j] > echo_gap[0]:
                echo_gap = (last_echo_at - echo_at[j], last_echo_at, ports[j])
            echo_at[j] = last_echo_at
    time.sleep(a.interval)       # the last echoes
    for key, _ in sel.select(0):
        try:
            got[key.data] += 1 if udp else len(key.fileobj.recv(65536)) // 21
        except OSError:
            pass
    report(a.out, ports=ports, sent=sum(sent), echoed=sum(got), broken=sorted(ports[j] for j in broken),
           silent=sorted(ports[j] for j in range(a.count) if sent[j] and not got[j]),
           # connections with fewer than half their messages echoed: which ones fell behind
           short=sorted(ports[j] for j in range(a.count) if got[j] < sent[j] / 2),
           quiet_at_end=None if last_echo_at is None else round(time.time() - last_echo_at, 1),
           # the most messages one connection went without an echo of: [count, local port]
           most_lost=max(([sent[j] - got[j], ports[j]] for j in range(a.count)), default=[0, None]),
           longest_send_gap=[round(send_gap[0], 2), send_gap[1], send_gap[2]],
           longest_echo_gap=[round(echo_gap[0], 2), echo_gap[1], echo_gap[2]])


MARK = b"P4FTFUZZ"


def blast(a):
    """Frames from a file (one hex frame a line) out of an interface, paced."""
    frames = [bytes.fromhex(line) for line in open(a.frames) if line.strip()]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((a.ifname, 0))
    start, sent = time.monotonic(), 0
    for i, f in enumerate(frames):
        try:
            s.send(f)
            sent += 1
        except OSError:      # a frame the interface will not take (too long, too short)
            pass
        time.sleep(max(0.0, start + (i + 1) / a.rate - time.monotonic()))
    report(a.out, sent=sent, frames=len(frames))


def capture(a):
    """Every frame carrying the blaster's mark that arrives on an interface,
    until the stop file appears; one hex frame a line."""
    import os
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))   # ETH_P_ALL
    s.bind((a.ifname, 0))
    s.settimeout(0.2)
    got = []
    report(a.out + ".ready", listening=True)
    while not os.path.exists(a.stop):
        try:
            data, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] != socket.PACKET_OUTGOING and MARK in data:
            got.append(data.hex())
    with open(a.out + ".tmp", "w") as f:
        f.write("\n".join(got) + "\n")
    os.replace(a.out + ".tmp", a.out)


def syn_flood(a):
    """TCP SYNs to random ports out of an interface (raw frames, from one
    address to another, random source ports), paced to a.pps for a.seconds;
    reports how many went out and at what rate."""
    from scapy.all import IP, TCP, Ether
    rng = random.Random(a.seed)
    frames = [bytes(Ether(src=a.src_mac, dst=a.dst_mac) / IP(src=a.src, dst=a.dst, ttl=64)
                    / TCP(sport=rng.randrange(1024, 65536), dport=rng.randrange(1, 65536), flags="S",
                          seq=rng.getrandbits(32)))
              for _ in range(4096)]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((a.ifname, 0))
    report(a.out + ".started", started_at=time.time())
    start = time.monotonic()
    end, sent, failed, batch = start + a.seconds, 0, 0, max(1, int(a.pps / 1000))
    while (now := time.monotonic()) < end:
        due = int((now - start) * a.pps)
        while sent + failed < due:
            for _ in range(batch):
                try:
                    s.send(frames[(sent + failed) % len(frames)])
                    sent += 1
                except OSError:     # the interface's queue is full: counted, not retried
                    failed += 1
        time.sleep(0.001)
    took = time.monotonic() - start
    report(a.out, sent=sent, failed=failed, seconds=took, pps=sent / took)


def arrivals(a):
    """New TCP connections to an echo server, one every a.interval: each
    sends a message, reads the echo, then stays open and echoes a message
    every second until the end. Reports each connection's setup time."""
    import selectors
    sel = selectors.DefaultSelector()
    conns, results = [], []
    nxt = time.monotonic()
    end = None       # a.hold after the last connection's attempt, however long the attempts took
    while end is None or time.monotonic() < end:
        if len(results) < a.count and time.monotonic() >= nxt:
            t0 = time.monotonic()
            try:
                c = socket.create_connection((a.host, a.port), timeout=a.connect_timeout)
                c.sendall(b"p4ft-arrival")
                ok = c.recv(64) == b"p4ft-arrival"
                results.append({"port": c.getsockname()[1], "setup_s": time.monotonic() - t0, "ok": ok})
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                conns.append(c)
            except OSError as e:
                results.append({"port": None, "setup_s": time.monotonic() - t0, "ok": False, "error": str(e)})
            nxt += a.interval
            if len(results) == a.count:
                report(a.out + ".all", ports=[r["port"] for r in results], at=time.time())
                end = time.monotonic() + a.hold
        for c in conns:
            try:
                c.send(b"p4ft-tick")
            except OSError:
                pass
        for key, _ in sel.select(0.2):
            try:
                key.fileobj.recv(4096)
            except OSError:
                pass
        time.sleep(max(0.0, min(1.0, nxt - time.monotonic())))
    report(a.out, connections=results)
    for c in conns:
        c.close()


def udp_stream(a):
    """One direction only: count datagrams, no replies expected."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", a.sport))
    start = time.monotonic()
    for i in range(a.count):
        s.sendto(bytes([i % 256]) * a.size, (a.host, a.port))
        time.sleep(max(0.0, start + (i + 1) * a.interval - time.monotonic()))
    report(a.out, sent=a.count, last_sent_at=time.time())


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("tcp-sink")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ipv6", action="store_true")
    p.add_argument("--out", required=True)
    p = sub.add_parser("tcp-source")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--pause", type=float, default=0)
    p.add_argument("--hold", type=float, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p = sub.add_parser("udp-echo")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ipv6", action="store_true")
    p.add_argument("--max-replies", type=int, help="answer only the first N datagrams")
    p.add_argument("--bind", help="the address to answer from (default: any)")
    p.add_argument("--out", required=True)
    p = sub.add_parser("udp-ping")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sport", type=int, required=True)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--wait", type=float, default=1.0)
    p.add_argument("--df", action="store_true")
    p.add_argument("--out", required=True)
    p = sub.add_parser("echo")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("chatter")
    p.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between one flow's messages")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("blast")
    p.add_argument("--ifname", required=True)
    p.add_argument("--frames", required=True)
    p.add_argument("--rate", type=float, default=2000.0, help="frames per second")
    p.add_argument("--out", required=True)
    p = sub.add_parser("capture")
    p.add_argument("--ifname", required=True)
    p.add_argument("--stop", required=True, help="a file whose appearance ends the capture")
    p.add_argument("--out", required=True)
    p = sub.add_parser("icmp-ping")
    p.add_argument("--host", required=True)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--wait", type=float, default=1.0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("udp-stream")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sport", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--out", required=True)
    p = sub.add_parser("syn-flood")
    p.add_argument("--ifname", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--src-mac", required=True)
    p.add_argument("--dst-mac", required=True)
    p.add_argument("--pps", type=float, default=20000)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p = sub.add_parser("arrivals")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--hold", type=float, default=2.0, help="seconds the connections stay open after the last")
    p.add_argument("--connect-timeout", type=float, default=5.0,
                   help="seconds a connection may take to set up and echo (TCP's SYN retries: 1 s, 3 s)")
    p.add_argument("--out", required=True)
    a = ap.parse_args()
    {"tcp-sink": tcp_sink, "tcp-source": tcp_source, "udp-echo": udp_echo, "udp-ping": udp_ping,
     "udp-stream": udp_stream, "icmp-ping": icmp_ping, "echo": echo, "chatter": chatter,
     "blast": blast, "capture": capture, "syn-flood": syn_flood, "arrivals": arrivals}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
