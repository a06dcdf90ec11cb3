"""Switch ports on Linux interfaces through raw AF_PACKET sockets."""

from __future__ import annotations

import logging
import os
import re
import selectors
import socket
import threading
from typing import Callable

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
MAX_FRAME = 65535


def parse_port_spec(spec: str) -> tuple[int, str]:
    """'1@veth1' -> (1, 'veth1'), as simple_switch's -i."""
    m = re.fullmatch(r"(\d+)@([\w.\-:]{1,15})", spec)
    if not m:
        raise ValueError(f"bad port spec {spec!r}: expected PORT@IFNAME, e.g. 1@veth1")
    port = int(m.group(1))
    if not 0 <= port < 511:
        raise ValueError(f"bad port spec {spec!r}: port must be 0..510")
    return port, m.group(2)


class Ports:
    """Frames in from every port go to `receive(port, frame)` on one thread."""

    def __init__(self, specs: list[str], receive: Callable[[int, bytes], None]):
        self.receive = receive
        self.socks: dict[int, socket.socket] = {}
        self.names: dict[int, str] = {}
        self.rx: dict[int, int] = {}
        self.tx: dict[int, int] = {}
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = socket.socketpair()
        seen = set()
        for spec in specs:
            port, ifname = parse_port_spec(spec)
            if port in self.socks or ifname in seen:
                self.close()
                raise ValueError(f"bad port spec {spec!r}: port or interface used twice")
            if not os.path.exists(f"/sys/class/net/{ifname}"):
                self.close()
                raise ValueError(f"bad port spec {spec!r}: no interface {ifname!r}")
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            s.bind((ifname, 0))
            s.setblocking(False)
            self.socks[port], self.names[port] = s, ifname
            self.rx[port] = self.tx[port] = 0
            seen.add(ifname)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ports", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        for port, s in self.socks.items():
            sel.register(s, selectors.EVENT_READ, port)
        sel.register(self._stop_r, selectors.EVENT_READ, None)
        while True:
            for key, _ in sel.select():
                if key.data is None:
                    return
                s, port = key.fileobj, key.data
                for _ in range(64):
                    try:
                        frame, addr = s.recvfrom(MAX_FRAME)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        log.error("port %d (%s): receive failed: %s", port, self.names[port], e)
                        break
                    if addr[2] == PACKET_OUTGOING:
                        continue
                    self.rx[port] += 1
                    try:
                        self.receive(port, frame)
                    except Exception:  # one bad packet must not stop the switch
                        log.exception("port %d: packet processing failed", port)

    def send(self, port: int, frame: bytes) -> bool:
        s = self.socks.get(port)
        if s is None:
            return False
        try:
            s.send(frame)
            self.tx[port] += 1
            return True
        except OSError as e:
            log.debug("port %d: send failed: %s", port, e)
            return False

    def close(self) -> None:
        if self._thread:
            self._stop_w.send(b"x")
            self._thread.join(2)
        for s in self.socks.values():
            s.close()
        self.socks.clear()
