"""Packets between the switch and the slow path: PacketIns to the kernel's
representors, the kernel's frames back out as PacketOuts (the data plane's
PacketIoIngress and the relay's other end).

What a punted packet says is acted on here: a FIN or RST of an offloaded
flow tears it down, a miss of an offloadable connection gets it judged
again. Both ways, each frame tells route.py where a connection's packets
come in and where the kernel sends them.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable

from p4.v1 import p4runtime_pb2 as p4r

from .conntrack import ConntrackMirror, CtEntry
from .core import Flowtables
from .ip import parse_tuple
from .model import Dir, Flow, TeardownReason
from .p4info import P4Schema, decode, encode
from .p4runtime import Session, SwitchUnavailable
from .relay import Relay
from .route import Routes

log = logging.getLogger("p4ft")


def punt_names(schema: P4Schema) -> dict[int, str]:
    """The data plane's punt reasons by value (define.p4's PuntReason). NONE
    (0) is its "not punted": a PacketIn never carries it."""
    return {v: k for k, v in schema.enum("PuntReason").items() if k != "NONE"}


class PacketIo:
    def __init__(self, session: Session, schema: P4Schema, routes: Routes, flowtables: Flowtables,
                 mirror: ConntrackMirror, stats: collections.Counter, *, netns: str | None, ports: dict[str, int],
                 teardown: Callable[[Flow, TeardownReason, Dir], None], consider: Callable[[CtEntry], None]):
        """ports: representor -> switch port, in netns; teardown: a flow goes
        back to the slow path; consider: a connection is judged for offload."""
        self.session, self.routes, self.flowtables, self.mirror, self.stats = session, routes, flowtables, mirror, stats
        self.teardown, self.consider = teardown, consider
        self.punt_names = punt_names(schema)
        pin = schema.packet_meta("packet_in")
        self._pin_port, self._pin_reason = pin["ingress_port"].id, pin["punt_reason"].id
        self._pout_port = schema.packet_meta("packet_out")["egress_port"]
        self.relay = Relay(netns, ports, self.transmit)     # the representors, opened by the primary

    def transmit(self, port: int, frame: bytes) -> None:
        """A frame the kernel sent out of a representor: out of that switch port."""
        # where the kernel sent this frame: the path its flow takes (route.py)
        self.routes.observe_egress(port, frame, parse_tuple(frame))
        try:
            queued = self.session.packet_out(frame, [p4r.PacketMetadata(
                metadata_id=self._pout_port.id, value=encode(port, self._pout_port.bitwidth))], port)
        except SwitchUnavailable:
            queued = False
        self.stats["packet_out" if queued else "packet_out_dropped"] += 1

    async def run(self) -> None:
        """PacketIns: counted by punt reason, acted on, delivered to the kernel."""
        while True:
            pkt = await self.session.packet_in.get()
            port = reason = None
            for m in pkt.metadata:
                if m.metadata_id == self._pin_port:
                    port = decode(m.value)
                elif m.metadata_id == self._pin_reason:
                    reason = decode(m.value)
            name = self.punt_names.get(reason, f"UNKNOWN_{reason}")
            self.stats[f"punt.{name}"] += 1
            t = parse_tuple(pkt.payload)
            if t is not None:
                self.routes.observe_ingress(port, t)
            if name == "TCP_FIN_RST" and t is not None:
                hit = self.flowtables.lookup(t)
                if hit is not None:
                    self.teardown(hit[0], TeardownReason.FIN_RST, hit[1])
            if not self.relay.deliver(port, pkt.payload):
                self.stats["punt_undeliverable"] += 1
            if name == "MISS" and t is not None:
                ct = self.mirror.lookup(t)
                if ct is not None:
                    self.consider(ct)
