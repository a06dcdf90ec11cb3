"""The daemon's role at the switch and its connection (P4Runtime
arbitration, spec 5.4): connecting as primary or backup, a backup's
standby until it may take the switch over, and reconnection after the
switch is lost.

What a primary does with the switch once it has it (the reconcile, the
tasks) is the daemon's wiring; this module only says when.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Awaitable, Callable

from p4.v1 import p4runtime_pb2 as p4r

from .conntrack import ConntrackMirror
from .events import EventBus
from .p4runtime import Session, SwitchError, SwitchRefused
from .switch import SwitchControl

log = logging.getLogger("p4ft")

RECONNECT_MIN, RECONNECT_MAX = 0.2, 2.0   # seconds between attempts, doubling


class SwitchRole:
    def __init__(self, session: Session, switch: SwitchControl, port_updates: Callable[[], list[p4r.Update]],
                 mirror: ConntrackMirror, events: EventBus, stats: collections.Counter, *,
                 connect_timeout: float, clock: Callable[[], float]):
        """port_updates: the flowtables' port bindings, written on taking the
        switch over."""
        self.session, self.switch, self.port_updates = session, switch, port_updates
        self.mirror, self.events, self.stats = mirror, events, stats
        self.connect_timeout, self.clock = connect_timeout, clock

    async def connect(self) -> bool | None:
        """True when the switch already ran our pipeline (entries kept); None
        when another controller is primary (this daemon is a backup)."""
        return await self.switch.connect(self.connect_timeout, self.port_updates())

    async def follow_ct_passive(self) -> None:
        """A backup's conntrack mirror: kept current, nothing decided."""
        while True:
            try:
                async for _ in self.mirror.events():
                    pass
            except OSError:
                await self.mirror.resync()

    async def standby(self) -> bool:
        """A backup waits until the switch has no primary (or makes it
        primary), claims the role with an election id above the highest the
        switch reports, then takes the switch over. Returns whether the
        pipeline (and its entries) was kept, as connect() does."""
        s = self.session
        while True:
            events = (s.role_changed, s.no_primary, s.lost)
            waits = [asyncio.create_task(e.wait()) for e in events]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            t0 = self.clock()
            if s.lost.is_set():
                try:
                    kept = await self.connect()
                except SwitchError as e:
                    if isinstance(e, SwitchRefused):
                        self.refused(e)
                    else:
                        log.warning("backup: switch unavailable: %s", e)
                    await asyncio.sleep(0.5)
                    continue
                if kept is None:
                    continue
                break
            try:
                if await s.claim_primary():
                    kept = await self.switch.take_over(self.port_updates())
                    break
            except SwitchError as e:
                log.warning("backup: could not take over: %s", e)
        self.stats["became_primary"] += 1
        log.warning("primary now (election id %d), %.2fs after the switch said there was none",
                    s.election_id, self.clock() - t0)
        return kept

    def refused(self, e: SwitchRefused, before: str | None = None) -> None:
        """A TLS handshake with the switch failed: counted every time, logged
        and published (the monitor's TLS_REFUSED) when the cause changes."""
        self.stats["switch_tls_refused"] += 1
        if str(e) != before:
            log.error("%s", e)
            self.events.publish("TLS_REFUSED", switch=self.session.address, reason=str(e))

    async def supervise(self, reconcile: Callable[[bool], Awaitable[None]], taken: Callable[[], None]) -> None:
        """Reconnect after losing the switch, then reconcile what it holds.
        taken: another controller became primary meanwhile (its flows now)."""
        address = self.session.address
        while True:
            await self.session.lost.wait()
            self.stats["switch_lost"] += 1
            self.events.publish("LOST", switch=address)
            lost_at = self.clock()
            log.error("lost the switch at %s; flows stay in the kernel's hands until it is back", address)
            delay = RECONNECT_MIN
            refused_before = None
            while True:
                try:
                    kept = await self.connect()
                    if kept is None:
                        log.error("another controller is primary for %s now; stopping, flows left to it", address)
                        taken()
                        return
                    break
                except SwitchError as e:
                    if isinstance(e, SwitchRefused):    # a certificate refused: loudly, once per cause
                        self.refused(e, refused_before)
                        refused_before = str(e)
                    else:
                        log.warning("switch still unavailable: %s (retry in %.1fs)", e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX)
            await reconcile(kept)
            log.info("switch back after %.1fs", self.clock() - lost_at)
            self.events.publish("BACK", switch=address, after_s=round(self.clock() - lost_at, 3),
                                pipeline_kept=kept)
