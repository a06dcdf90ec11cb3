"""The switch's limit on what it punts to the CPU (`--punt-rate`, `--punt-burst`).

A host flooding misses (a SYN flood to random ports, a scan) would otherwise
send every packet up the CPU path: PacketIns the daemon must read and the
router's kernel must judge, ahead of the handshakes of real connections and
of the daemon's own work. The data plane meters punted packets per ingress
port (punt_meter, one cell per port, p4src/control/packetio.p4) and drops
what exceeds the rate, counting it per port (punt_dropped). This module
writes the meter's cells and reads the drop counter.

The kernel's flowtable has no such limit (a miss simply continues into the
slow path of the same CPU); a router's CPU protection (rate limits on
traffic to the control plane, per interface) is the model here.
"""

from __future__ import annotations

import asyncio
import logging

from p4.v1 import p4runtime_pb2 as p4r

from .p4info import P4Schema
from .p4runtime import Session, SwitchError

log = logging.getLogger("p4ft")

DEFAULT_RATE = 2000     # packets/s per ingress port
DEFAULT_BURST = 500     # packets


class PuntLimit:
    """rate 0: no limit (every cell reset to its default, all green)."""

    def __init__(self, schema: P4Schema, rate: int = DEFAULT_RATE, burst: int = DEFAULT_BURST):
        if rate < 0 or burst < 0:
            raise ValueError(f"punt rate and burst cannot be negative (rate {rate}, burst {burst})")
        if rate and burst < 1:
            raise ValueError("a punt rate needs a burst of at least 1 packet")
        self.meter, self.counter = schema.meter("punt_meter"), schema.counter("punt_dropped")
        self.rate, self.burst = rate, burst
        self.dropped: dict[int, int] = {}     # ingress port -> packets dropped, as last read

    def updates(self) -> list[p4r.Update]:
        """Every cell's rates (MODIFY: meters have no INSERT): one rate,
        committed and peak alike, so a packet past it is red."""
        cfg = (p4r.MeterConfig(cir=self.rate, cburst=self.burst, pir=self.rate, pburst=self.burst)
               if self.rate else None)
        out = []
        for i in range(self.meter.size):
            me = p4r.MeterEntry(meter_id=self.meter.id, index=p4r.Index(index=i))
            if cfg is not None:
                me.config.CopyFrom(cfg)
            out.append(p4r.Update(type=p4r.Update.MODIFY, entity=p4r.Entity(meter_entry=me)))
        return out

    async def read(self, session: Session) -> dict[int, int]:
        """The drop counter's non-zero cells, by ingress port."""
        dropped = {}
        async for ent in session.read([p4r.Entity(counter_entry=p4r.CounterEntry(counter_id=self.counter.id))]):
            ce = ent.counter_entry
            if ce.data.packet_count:
                dropped[ce.index.index] = ce.data.packet_count
        self.dropped = dropped
        return dropped

    @property
    def total(self) -> int:
        return sum(self.dropped.values())

    async def follow(self, session: Session, interval: float) -> None:
        """Read the drop counter every interval while the switch is there.
        (Not run without a limit: every cell is then green, and nothing can
        be dropped.)"""
        while True:
            await asyncio.sleep(interval)
            if session.lost.is_set() or not session.is_primary:
                continue
            try:
                await self.read(session)
            except SwitchError as e:
                log.debug("punt drop counter not read: %s", e)
