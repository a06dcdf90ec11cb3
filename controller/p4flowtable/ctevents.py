"""Conntrack's events applied to flows (the kernel's flowtable learns the
same from nf_ct_is_dying and the ct state at its GC and on each packet).

A destroyed connection's flow is torn down; one no longer offloadable (a
state the fast path must not carry) is handed back; a connection that
became offloadable, or got a flowtable's mark, is judged for offload. Lost
events (ENOBUFS) resync the mirror by dump and apply the difference.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Callable

from .conntrack import TURN_EVERY, ConntrackMirror, CtEvent
from .core import Flowtables
from .decide import Decisions
from .flowoffload import FlowOffload
from .model import FlowFlag, TeardownReason
from .route import Routes

log = logging.getLogger("p4ft")


class ConntrackEvents:
    def __init__(self, mirror: ConntrackMirror, flowtables: Flowtables, decisions: Decisions, offload: FlowOffload,
                 routes: Routes, stats: collections.Counter, *, marks: Callable[[], int]):
        """marks: the ct label bits of every flowtable's offload statement."""
        self.mirror, self.flowtables, self.decisions, self.offload = mirror, flowtables, decisions, offload
        self.routes, self.stats, self.marks = routes, stats, marks

    async def run(self) -> None:
        while True:
            try:
                await self._follow()
            except OSError as err:
                # ENOBUFS: the kernel dropped events; the mirror resyncs by dump
                self.stats["ct_resync"] += 1
                log.warning("conntrack events lost (%s); resynchronising", err)
                present, gone = await self.mirror.resync()
                for e in gone:
                    flow = self.flowtables.flow_of(e.orig)
                    if flow is not None:
                        flow.test_and_set(FlowFlag.DYING)
                        self.offload.teardown(flow, TeardownReason.CT_DESTROYED)
                for i, e in enumerate(present):
                    if i % TURN_EVERY == TURN_EVERY - 1:      # a million entries: a turn now and then
                        await asyncio.sleep(0)
                    flow = self.flowtables.flow_of(e.orig)
                    if flow is None:
                        self.decisions.consider(e)
                    elif e.offloadable() is not None:
                        self.offload.teardown(flow, TeardownReason.CT_STATE)

    async def _follow(self) -> None:
        async for ev, e, old in self.mirror.events():
            self.decisions.forget_decline(e.orig, destroyed=ev is CtEvent.DESTROY)
            flow = self.flowtables.flow_of(e.orig)
            if ev is CtEvent.DESTROY:
                self.offload.forget(e.orig)
                self.routes.forget(e.orig, e.reply)
                if flow is not None:
                    flow.test_and_set(FlowFlag.DYING)
                    self.offload.teardown(flow, TeardownReason.CT_DESTROYED)
                continue
            if flow is not None:
                if e.offloadable() is not None:
                    self.offload.teardown(flow, TeardownReason.CT_STATE)
                continue
            # Offload on what a packet changed: the connection became
            # offloadable (reply seen, TCP established), or a packet reached
            # an offload statement and set its flowtable's mark (a handed-back
            # flow's mark was cleared: it comes back when a packet reaches the
            # statement again, as in the kernel). Updates that change neither
            # (our own timeout writes, say) do not.
            if old is None or old.offloadable() is not None or e.labels & ~old.labels & self.marks():
                self.decisions.consider(e)
