"""Slow-path relay: one representor (tap) per switch port in the router namespace.

A PacketIn is written into the representor of its ingress port, so the kernel
receives it as if from the wire; every frame the kernel transmits on a
representor leaves the switch on the matching port as a PacketOut.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
from typing import Callable

from . import netns

log = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65536


class Representor:
    def __init__(self, name: str, port: int, fd: int):
        self.name, self.port, self.fd = name, port, fd
        self.rx = self.tx = self.tx_dropped = 0


class Relay:
    """Taps of the router namespace, attached or created by name."""

    def __init__(self, netns_name: str | None, ports: dict[str, int],
                 transmit: Callable[[int, bytes], None]):
        self.netns = netns_name
        self.ports = ports
        self.transmit = transmit          # (switch port, frame) -> PacketOut
        self.by_name: dict[str, Representor] = {}
        self.by_port: dict[int, Representor] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        with netns.entered(self.netns):
            for name, port in self.ports.items():
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
                try:
                    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
                except OSError as e:
                    os.close(fd)
                    raise OSError(e.errno, f"cannot attach representor {name!r}: {e.strerror} "
                                           "(it must be a tap device, or not exist)") from None
                rep = Representor(name, port, fd)
                self.by_name[name] = rep
                self.by_port[port] = rep
        for rep in self.by_name.values():
            self._loop.add_reader(rep.fd, self._on_readable, rep)

    def close(self) -> None:
        for rep in self.by_name.values():
            if self._loop:
                self._loop.remove_reader(rep.fd)
            os.close(rep.fd)
        self.by_name.clear()
        self.by_port.clear()

    def drain(self) -> None:
        """Relay now what the kernel has sent and the loop has not read yet
        (a decision wants to see the frames of the packet it follows)."""
        for rep in self.by_name.values():
            self._on_readable(rep)

    def _on_readable(self, rep: Representor) -> None:
        # Drain what the kernel sent; each frame becomes a PacketOut.
        for _ in range(64):
            try:
                frame = os.read(rep.fd, MAX_FRAME)
            except BlockingIOError:
                return
            except OSError as e:
                log.error("representor %s: read failed: %s", rep.name, e)
                return
            rep.rx += 1
            self.transmit(rep.port, frame)

    def deliver(self, port: int, frame: bytes) -> bool:
        """Hand a punted frame to the kernel on the port's representor."""
        rep = self.by_port.get(port)
        if rep is None:
            return False
        try:
            os.write(rep.fd, frame)
            rep.tx += 1
            return True
        except OSError as e:
            rep.tx_dropped += 1
            if e.errno not in (errno.EAGAIN, errno.EIO):
                log.warning("representor %s: write failed: %s", rep.name, e)
            return False
