"""Aging of offloaded flows, at a cost per expiry rather than per flow.

The kernel (nf_flow_table_core.c, nf_flow_offload_gc_step) walks every flow
each GC run and reads hardware stats only when less than 9/10 of a flow's
timeout remains (nf_flow_offload_stats); the hardware's last-used time then
pushes the timeout forward (flow_offload_work_stats). A full walk over
P4Runtime does not scale: BMv2 reads about 7k entries a second.

So the switch does the watching. Each entry carries the flow's timeout as
idle_timeout_ns, and the switch sends an IdleTimeoutNotification when an
entry has not been hit for that long. A notification for one direction makes
the controller read both entries (time since last hit, counters): the flow
expires only when neither direction was hit within the timeout, so traffic
in one direction keeps it. Flows with traffic cost nothing.

Reads happen only for:
- flows an idle notification named;
- flows the operator lists (`p4ft flow list`);
- on a target whose table does not age entries: flows with less than 1/10 of
  their timeout left, as the kernel does (read, refresh, read again later).
They go in batches of at most READ_BATCH flows, one read in flight, so a
burst of expiries never holds the control channel for long against offloads.

Conntrack entries of offloaded flows get a lease (one day, as
nf_ct_offload_timeout); a heap renews each lease when half of it has run,
instead of a scan.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
from typing import Awaitable, Callable

from .core import Flowtables
from .ip import match_tuple
from .model import Flow, FlowFlag
from .offload import OffloadDriver, read_flows
from .p4info import P4Schema
from .p4runtime import SwitchError, SwitchUnavailable

log = logging.getLogger(__name__)

READ_BATCH = 256        # flows per read request (2 entries each)
RENEW_BATCH = 1024      # conntrack lease renewals per tick
LAZY_FRACTION = 0.9     # no idle timeout: read once this much of the timeout has run


class Aging:
    def __init__(self, flowtables: Flowtables, driver: OffloadDriver, clock: Callable[[], float], *,
                 idle_timeout: bool, ct_lease: float,
                 expire: Callable[[Flow], None], renew: Callable[[Flow], Awaitable[None]]):
        self.flowtables = flowtables
        self.driver = driver
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.ct_lease = ct_lease
        self._expire = expire
        self._renew = renew
        self._check: dict[int, Flow] = {}       # id(flow) -> flow, to read soon, in order
        self._due: list = []                    # (time, seq, flow): lazy reads, no idle timeout
        self._lease: list = []                  # (time, seq, flow): conntrack lease renewals
        self._seq = itertools.count()
        self._read_lock = asyncio.Lock()        # one read in flight
        self._wake = asyncio.Event()
        self.stats: collections.Counter[str] = collections.Counter()
        # expired flows: [idle since, packets seen, expiry decided, entries removed]
        # (the daemon fills in the last); for measuring expiry lag
        self.expiry_log: collections.deque[list] = collections.deque(maxlen=100_000)
        self._expiring: dict[int, list] = {}

    @staticmethod
    def _live(f: Flow) -> bool:
        return bool(f.flags & FlowFlag.HW) and not f.flags & (FlowFlag.TEARDOWN | FlowFlag.DYING)

    # -- inputs ---------------------------------------------------------------------
    def track(self, f: Flow, now: float) -> None:
        """Both entries of f are in the switch now (fresh: never hit)."""
        f.last_used = now
        if not self.idle_timeout:
            heapq.heappush(self._due, (now + LAZY_FRACTION * f.timeout, next(self._seq), f))
        heapq.heappush(self._lease, (now + self.ct_lease / 2, next(self._seq), f))

    def idle(self, f: Flow) -> None:
        """The switch says one of f's entries was not hit for f.timeout."""
        self.stats["idle_notifications"] += 1
        if self._live(f):
            self._check[id(f)] = f
            self._wake.set()

    async def read_now(self, flows: list[Flow]) -> None:
        """Read these flows' counters (and expire the idle ones) before
        returning: what `p4ft flow list` shows."""
        flows = [f for f in flows if self._live(f)]
        for i in range(0, len(flows), READ_BATCH):
            await self._read(flows[i:i + READ_BATCH])

    async def follow_idle(self, notes: asyncio.Queue, schema: P4Schema) -> None:
        """The switch's IdleTimeoutNotifications: the entries named get their
        flow read (an entry of no flow is counted, idle_unknown_entry)."""
        while True:
            note = await notes.get()
            for te in note.table_entry:
                hit = match_tuple(schema, te)
                found = self.flowtables.lookup(hit[1]) if hit is not None else None
                if found is None or found[0].iif[found[1]] != hit[0]:
                    self.stats["idle_unknown_entry"] += 1
                    continue
                self.idle(found[0])

    def read_back_all(self, reads, now: float) -> None:
        """What a read made elsewhere said of flows' entries (the
        reconcile's read of every entry), as (flow, (packets of each entry,
        bytes of each, idle_ns)) pairs, without a FlowRead each: applied as
        this task's own reads are, so a flow idle while no daemon listened
        expires now."""
        live, apply = self._live, self._apply
        for f, (po, pr, bo, br, idle_ns) in reads:
            if live(f):
                apply(f, (po, pr), (bo, br), idle_ns, now)

    def removed(self, f: Flow, now: float) -> None:
        """The switch no longer holds f's entries."""
        record = self._expiring.pop(id(f), None)
        if record is not None:
            record[3] = now

    # -- the task -------------------------------------------------------------------
    async def run(self, tick: float) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), tick)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            now = self.clock()
            while self._due and self._due[0][0] <= now:
                f = heapq.heappop(self._due)[2]
                if self._live(f):
                    self._check[id(f)] = f
            await self._renew_leases(now)
            while self._check:
                batch = [self._check.pop(k) for k in list(itertools.islice(self._check, READ_BATCH))]
                await self._read([f for f in batch if self._live(f)])

    async def _renew_leases(self, now: float) -> None:
        n = 0
        while self._lease and self._lease[0][0] <= now and n < RENEW_BATCH:
            f = heapq.heappop(self._lease)[2]
            if not self._live(f):
                continue
            n += 1
            try:
                await self._renew(f)
                self.stats["ct_lease_renewed"] += 1
            except Exception as e:   # the entry may be going away; its DESTROY event follows
                log.debug("lease of %s not renewed: %s", f.key, e)
            heapq.heappush(self._lease, (now + self.ct_lease / 2, next(self._seq), f))

    async def _read(self, flows: list[Flow]) -> None:
        if not flows:
            return
        async with self._read_lock:
            try:
                got = await read_flows(self.driver, flows, self.idle_timeout)
            except SwitchUnavailable:
                return   # never expire on missing information; flows are reinstalled
            except SwitchError as e:
                self.stats["read_errors"] += 1
                log.warning("reading %d flow(s) failed: %s", len(flows), e)
                return
        self.stats["read_requests"] += 1
        self.stats["flows_read"] += len(flows)
        now = self.clock()
        for f in flows:
            r = got.get(id(f))
            if r is not None and self._live(f):
                self._apply(f, r.packets, r.bytes, r.idle_ns, now)

    def _apply(self, f: Flow, packets: tuple[int, int], nbytes: tuple[int, int], idle_ns: int | None,
               now: float) -> None:
        """flow_offload_work_stats: the switch's last use pushes the timeout
        (a FlowRead's values: both entries' packets and bytes, the time
        since the latest hit of either)."""
        before = f.last_used
        if idle_ns is not None:
            last = now - idle_ns / 1e9
            if last > f.last_used:
                self.flowtables.refresh(f, last)
        elif sum(packets) != sum(f.packets):
            self.flowtables.refresh(f, now)
        f.packets, f.bytes, f.stats_at = packets, nbytes, now
        idle = idle_ns / 1e9 if idle_ns is not None else now - f.last_used
        # expired when no time is left (nf_flow_has_expired); PI reports at
        # most the idle timeout itself as time since the last hit
        if idle >= f.timeout:
            self.stats["expired"] += 1
            record = [before, sum(packets), now, None]
            self.expiry_log.append(record)
            self._expiring[id(f)] = record
            self._expire(f)
        elif not self.idle_timeout:
            # active: again when 9/10 of the timeout has run; idle already:
            # just after the moment it would expire
            frac = LAZY_FRACTION if idle < LAZY_FRACTION * f.timeout else 1.0
            heapq.heappush(self._due, (f.last_used + frac * f.timeout + 0.05, next(self._seq), f))
