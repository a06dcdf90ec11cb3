"""The controller daemon: wires the modules together; one task owns flow state.

Inputs: conntrack events, PacketIns, frames from the representors, the aging
tick and API requests, all handled on one asyncio loop. Switch writes go
through one offload queue, batched, one pending operation per flow.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2 as p4r
from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NETLINK_ROUTE

from . import netns
from .aging import Aging
from .apiserver import ApiServer
from .commands import Commands
from .decide import MAX_BATCH_FLOWS, Decisions
from .events import EventBus, tuples_dict
from .metrics import Metrics
from .conntrack import IPS_SEEN_REPLY, NF_CT_DAY, ConntrackMirror, CtEntry, CtEvent
from .core import Flowtables
from .ip import match_tuple, parse_tuple
from .model import Dir, Flow, FlowFlag, TeardownReason
from .offload import P4RuntimeDriver
from .p4info import P4Schema, decode, encode
from .p4runtime import Session, SwitchError, SwitchUnavailable, WriteError
from .policy import DEFAULT_LABEL_BITS
from .punt import DEFAULT_BURST as DEFAULT_PUNT_BURST, DEFAULT_RATE as DEFAULT_PUNT_RATE, PuntLimit
from .relay import Relay
from .reroute import GROUPS as ROUTE_GROUPS, Reroute
from .route import RouteLookups, Routes, route_keys
from .ruleset import RulesetControl
from .switch import SwitchControl, by_tuple, plan_reconcile

log = logging.getLogger("p4ft")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_P4INFO = REPO / "p4src" / "build" / "flowtable.p4info.txtpb"
DEFAULT_JSON = REPO / "p4src" / "build" / "flowtable.json"
from .api import DEFAULT_SOCKET  # noqa: E402
WRITES_IN_FLIGHT = 2   # add batches at the switch at once (see _offload_worker)
YIELD_EVERY = 1000     # long loops give the event loop a turn this often


@dataclass
class DaemonConfig:
    grpc_addr: str = "127.0.0.1:9559"
    device_id: int = 1
    election_id: int = 1
    netns: str | None = None
    ports: dict[str, int] = field(default_factory=dict)   # representor -> switch port
    ruleset: Path | None = None
    p4info: Path = DEFAULT_P4INFO
    device_config: Path = DEFAULT_JSON
    socket: str = DEFAULT_SOCKET
    timeouts: dict[str, float] = field(default_factory=dict)
    poll_interval: float = 1.0     # aging tick: lease renewals, lazy reads
    ct_lease: float = NF_CT_DAY    # conntrack timeout while the switch carries a flow
    idle_timeouts: bool = True     # False: age by reading counters near expiry instead
    load_kernel_ruleset: bool = True
    connect_timeout: float = 10.0
    label_bits: range = DEFAULT_LABEL_BITS   # ct label bits for flowtable marks (policy.py)
    metrics_addr: str | None = None         # HOST:PORT for Prometheus
    punt_rate: int = DEFAULT_PUNT_RATE      # punted packets/s per ingress port; 0: no limit (punt.py)
    punt_burst: int = DEFAULT_PUNT_BURST
    target: str = "bmv2"     # bmv2 (BMv2 and the embedded target) or tofino (tofino.py)


class Daemon:
    def __init__(self, cfg: DaemonConfig, clock=time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self.flowtables = Flowtables(clock)
        self.mirror = ConntrackMirror(cfg.netns)
        self.session = Session(cfg.grpc_addr, cfg.device_id, cfg.election_id)
        p4info = p4info_pb2.P4Info()
        text_format.Parse(Path(cfg.p4info).read_text(), p4info)
        self.p4info = p4info
        self.schema = P4Schema(p4info)
        self.punt = PuntLimit(self.schema, cfg.punt_rate, cfg.punt_burst)
        self.switch = SwitchControl(self.session, self.schema, device_config_of(cfg), settings=self.punt.updates)
        self.driver = P4RuntimeDriver(self.session, self.schema)
        self.driver.idle_timeout = self.driver.idle_timeout and cfg.idle_timeouts
        self.aging = Aging(self.flowtables, self.driver, clock, idle_timeout=self.driver.idle_timeout,
                           ct_lease=cfg.ct_lease, expire=self._expired, renew=self._renew_lease)
        # NONE (0) is the data plane's "not punted"; a PacketIn never carries it
        self.punt_names = {v: k for k, v in self.schema.enum("PuntReason").items() if k != "NONE"}
        pin = self.schema.packet_meta("packet_in")
        self._pin_port, self._pin_reason = pin["ingress_port"].id, pin["punt_reason"].id
        pout = self.schema.packet_meta("packet_out")["egress_port"]
        self._pout_port = pout
        self.relay = Relay(cfg.netns, cfg.ports, self._transmit)
        self.rulesets = RulesetControl(self.flowtables, self.session, self.schema, self.mirror, self.teardown,
                                       netns=cfg.netns, ports=cfg.ports, timeouts=cfg.timeouts,
                                       label_bits=cfg.label_bits, load_kernel=cfg.load_kernel_ruleset)
        self.stats: collections.Counter[str] = collections.Counter()
        self.queue = OffloadQueue()
        self._deferred: list[Flow] = []   # adds that met a lost switch
        self.offload_latency: collections.deque[float] = collections.deque(maxlen=100_000)
        self.first_decided: float | None = None   # for setup-rate measurements
        self.last_offloaded: float | None = None
        self.cpu_first: float | None = None       # process CPU time at the first decision
        self.cpu_last: float | None = None        # ... and at the last offload since a reset
        self._waiting: dict = {}   # orig tuple -> (entry, its packets when refused): table was full
        self.decisions = Decisions(self)
        self._tasks: list[asyncio.Task] = []
        self.events = EventBus()
        self.commands = Commands(self)
        self.api = ApiServer(cfg.socket, self.commands.handle, self.events)
        self.metrics = Metrics(self.flowtables, self.mirror, self.stats, self.session, self.events,
                               self.punt_names, self.punt)
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.keep_flows_on_stop = False   # `p4ft stop --keep-flows`: for the next daemon to adopt
        self.ipr: AsyncIPRoute | None = None
        self._rt_monitor: AsyncIPRoute | None = None
        self.routes: Routes | None = None
        self.reroute: Reroute | None = None

    # -- start and stop ----------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        if cfg.ruleset is not None:
            self.rulesets.load(Path(cfg.ruleset))
        self.ipr = AsyncIPRoute(use_socket=netns.netlink_socket(cfg.netns, NETLINK_ROUTE))
        self.routes = Routes(self.ipr, cfg.ports, RouteLookups(netns.netlink_socket(cfg.netns, NETLINK_ROUTE)))
        self.reroute = Reroute(lambda: list(self.flowtables), self.routes, self.driver, self.teardown,
                               self.stats, self.decisions.retry_no_route, self.clock)
        await self.mirror.open()
        await self.mirror.dump()
        kept = await self._connect_switch()
        await self.api.start()
        if cfg.metrics_addr:
            await self.metrics.serve(cfg.metrics_addr)
        if kept is None:
            # a backup: conntrack followed, nothing written to the switch or the kernel
            for coro, name in ((self._follow_ct_passive(), "ct-follow"), (self._standby(), "standby")):
                self._tasks.append(asyncio.create_task(coro, name=name))
            self.ready.set()
            log.info("p4ft ready as a backup: switch %s, %d conntrack entries", cfg.grpc_addr,
                     len(self.mirror.entries))
            return
        self.rulesets.load_kernel_now()
        await self._primary(kept)

    async def _primary(self, kept: bool) -> None:
        """The primary's work: representors, every task, the switch reconciled."""
        cfg = self.cfg
        self.mirror.enable_accounting()
        self.relay.open()
        self._rt_monitor = AsyncIPRoute(use_socket=netns.netlink_socket(cfg.netns, NETLINK_ROUTE))
        await self._rt_monitor.bind(groups=ROUTE_GROUPS)
        await self.routes.load()
        tasks = [(self._ct_events(), "ct-events"), (self._packet_in(), "packet-in"),
                 (self._route_events(), "route-events"), (self.reroute.run(), "reroute"),
                 (self.decisions.run(), "decide"), (self._offload_worker(), "offload"),
                 (self.aging.run(cfg.poll_interval), "aging"), (self._idle_events(), "idle"),
                 (self._supervise(), "switch")]
        if self.punt.rate:
            tasks.append((self.punt.follow(self.session, cfg.poll_interval), "punt-drops"))
        for coro, name in tasks:
            self._tasks.append(asyncio.create_task(coro, name=name))
        await self._reconcile(kept)
        self.ready.set()
        log.info("p4ft ready: switch %s, %d flowtable(s), %d port(s), %d conntrack entries",
                 cfg.grpc_addr, len(self.flowtables.tables), len(cfg.ports), len(self.mirror.entries))

    async def run(self) -> None:
        await self.start()
        stop_task = asyncio.create_task(self.stopping.wait(), name="stop")
        while not stop_task.done():
            done, _ = await asyncio.wait([stop_task] + self._tasks, return_when=asyncio.FIRST_COMPLETED)
            failed = False
            for t in done:
                if t not in self._tasks:
                    continue
                self._tasks.remove(t)
                exc = t.exception()
                if t.get_name() == "standby" and exc is None:
                    continue        # a backup that became primary: its tasks run now
                failed = True
                if exc is not None:
                    log.error("task %s failed: %r", t.get_name(), exc, exc_info=exc)
                else:
                    log.error("task %s ended unexpectedly", t.get_name())
            if failed:
                break
        await self.stop()

    async def stop(self) -> None:
        """Hand every flow back to the kernel, then close everything. With
        keep_flows_on_stop, leave them: the switch keeps forwarding them and
        the kernel's leases keep their entries until the next daemon adopts them."""
        flows = [f for f in self.flowtables if f.flags & (FlowFlag.HW | FlowFlag.PENDING)]
        if self.keep_flows_on_stop:
            log.info("stopping; %d flow(s) stay in the switch for the next daemon", len(flows))
            flows = []
        if flows and not self.session.lost.is_set():
            try:
                await self.driver.delete(flows)
            except SwitchError as e:
                log.warning("could not remove flows from the switch at stop: %s", e)
            for f in flows:
                ct = self.mirror.entries.get(f.key)
                if ct is not None:
                    try:
                        await self.mirror.handed_back(ct, 0, self.rulesets.mark(f.flowtable))
                    except Exception as e:  # entry may be gone
                        log.debug("hand-back of %s: %s", f.key, e)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.api.close()
        self.metrics.close()
        self.relay.close()
        if self.routes is not None and self.routes.lookups is not None:
            self.routes.lookups.close()
        await self.session.close()
        await self.mirror.close()
        for sock in (self.ipr, self._rt_monitor):
            if sock:
                sock.close()

    # -- switch ------------------------------------------------------------
    async def _connect_switch(self) -> bool | None:
        """True when the switch already ran our pipeline (entries kept); None
        when another controller is primary (this daemon is a backup)."""
        return await self.switch.connect(self.cfg.connect_timeout, self.rulesets.port_updates())

    async def _follow_ct_passive(self) -> None:
        """A backup's conntrack mirror: kept current, nothing decided."""
        while True:
            try:
                async for _ in self.mirror.events():
                    pass
            except OSError:
                await self.mirror.resync()

    async def _standby(self) -> None:
        """A backup waits until the switch has no primary (or makes it
        primary), claims the role with an election id above the highest the
        switch reports, then takes the switch over and reconciles it, as a
        restarted daemon does."""
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
                    kept = await self._connect_switch()
                except SwitchError as e:
                    log.warning("backup: switch unavailable: %s", e)
                    await asyncio.sleep(0.5)
                    continue
                if kept is None:
                    continue
                break
            try:
                if await s.claim_primary():
                    kept = await self.switch.take_over(self.rulesets.port_updates())
                    break
            except SwitchError as e:
                log.warning("backup: could not take over: %s", e)
        for t in [t for t in self._tasks if t.get_name() == "ct-follow"]:
            t.cancel()
            self._tasks.remove(t)
        self.stats["became_primary"] += 1
        log.warning("primary now (election id %d), %.2fs after the switch said there was none",
                    s.election_id, self.clock() - t0)
        await self._primary(kept)

    async def _supervise(self) -> None:
        """Reconnect after losing the switch; then reconcile what it holds."""
        while True:
            await self.session.lost.wait()
            self.stats["switch_lost"] += 1
            self.events.publish("LOST", switch=self.cfg.grpc_addr)
            lost_at = self.clock()
            log.error("lost the switch at %s; flows stay in the kernel's hands until it is back",
                      self.cfg.grpc_addr)
            delay = 0.2
            while True:
                try:
                    kept = await self._connect_switch()
                    if kept is None:
                        # another controller took the switch while we were away: its flows now
                        log.error("another controller is primary for %s now; stopping, flows left to it",
                                  self.cfg.grpc_addr)
                        self.keep_flows_on_stop = True
                        self.stopping.set()
                        return
                    break
                except SwitchError as e:
                    log.warning("switch still unavailable: %s (retry in %.1fs)", e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            self._deferred.clear()
            await self._reconcile(kept)
            log.info("switch back after %.1fs", self.clock() - lost_at)
            self.events.publish("BACK", switch=self.cfg.grpc_addr, after_s=round(self.clock() - lost_at, 3),
                                pipeline_kept=kept)

    async def _reconcile(self, kept: bool) -> None:
        """After (re)connecting: the switch holds exactly the flows the daemon
        carries: those it carried already, and every connection conntrack
        says is offloaded (marked, offloadable, routed). Entries already in a
        kept pipeline are adopted as they are, missing or stale directions
        written, entries of no flow (orphans) deleted. Kernel entries still on
        an offload lease that no flow carries now get their state's timeout."""
        t0 = self.clock()
        present = await self.switch.flow_entries() if kept else {}
        nexthops = self.driver.nexthops
        nexthops.reset()
        for entry in (await self.switch.entries(nexthops.table_id) if kept else []):
            got = nexthops.decode(entry)
            if got is not None:
                nh_id, port, src, dst = got
                nexthops.adopt(nh_id, port, src, dst, await self.routes.neighbour_on_port(port, dst))
        carried = [f for f in self.flowtables if not f.flags & FlowFlag.TEARDOWN]
        fresh: list[tuple[Flow, CtEntry]] = []
        declined: collections.Counter[str] = collections.Counter()
        held = by_tuple(self.schema, present, nexthops)
        undecided: list[CtEntry] = []
        for i, e in enumerate(list(self.mirror.entries.values())):
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)     # the API, conntrack events, the switch's stream meanwhile
            if self.flow_of(e) is None and e.offloadable() is None and self.rulesets.select(e.labels):
                got = await self._adopt(e, held)
                if got is None:
                    undecided.append(e)
                else:
                    fresh.append(got)
        for i in range(0, len(undecided), MAX_BATCH_FLOWS):     # their paths looked up together
            batch = undecided[i:i + MAX_BATCH_FLOWS]
            for e, got in zip(batch, await self.decisions.decide_many(batch)):
                if isinstance(got, str):
                    self.decisions.decline(e, got)
                    declined[got] += 1
                else:
                    fresh.append(got)
        plan = await plan_reconcile(self.schema, carried + [f for f, _ in fresh], present, self.driver.idle_timeout,
                                    nexthops)
        failed: set[int] = set()
        try:
            await self.switch.write(plan.nexthop_writes, "next hop")
            await self.switch.write(plan.orphans, "orphan delete")
            await self.switch.write(plan.writes, "reconcile")
            await self.switch.write(plan.nexthop_orphans, "orphan next hop delete")
        except WriteError as err:
            log.error("reconciling the switch: %s", err)
            failed = {id(f) for f in plan.repaired}     # dropped below; their leases released with the rest
        now = self.clock()
        for f in plan.adopted + plan.repaired:
            if id(f) in failed:
                self.flowtables.delete(f)
                continue
            f.clear(FlowFlag.PENDING)
            if not f.flags & FlowFlag.HW:
                f.test_and_set(FlowFlag.HW)
                self.aging.track(f, now)
                f.offloaded_at = now
        for i, f in enumerate(plan.adopted):
            self.aging.idle(f)     # idle while the daemon was away? the switch's last hit says
            self.publish("ADOPT", f)
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        ok = [ct for f, ct in fresh if id(f) not in failed]
        errors = await self.mirror.offloaded(ok, self.cfg.ct_lease) if ok else []
        for ct, err in zip(ok, errors):
            if err is not None:
                log.warning("conntrack refused offload marks for %s: %s", ct.orig, err)
        released = await self._release_leases()
        self.stats["reconcile.adopted"] += len(plan.adopted)
        self.stats["reconcile.written"] += len(plan.repaired)
        self.stats["reconcile.orphans_deleted"] += len(plan.orphans)
        log.info("switch reconciled in %.2fs: %d flow(s) adopted, %d written, %d orphan entries deleted, "
                 "%d kernel lease(s) released; marked connections not offloaded: %s", self.clock() - t0,
                 len(plan.adopted), len(plan.repaired), len(plan.orphans), released, dict(declined) or "none")

    async def _adopt(self, e: CtEntry, held: dict) -> tuple[Flow, CtEntry] | None:
        """The flow of a live, marked connection whose two entries the switch
        holds, as they stand: their next hops are the ones the switch uses,
        whatever the neighbour table says while it settles after a restart.
        Its route keys are those the previous daemon decided by (its ports,
        the connection's mark): a routing change looks it up again."""
        o, r = held.get(e.orig), held.get(e.reply)
        table = self.flowtables.tables.get(self.rulesets.select(e.labels) or "")
        if o is None or r is None or table is None:
            return None
        devices = {p: n for n, p in self.cfg.ports.items()}
        if devices.get(o[0]) not in table.config.devices or devices.get(r[0]) not in table.config.devices:
            return None
        iif = (await self.routes.port_ifindex(o[0]), await self.routes.port_ifindex(r[0]))
        flow = self.decisions.pending_flow(e, table, (o[0], r[0]), (o[1], r[1]),
                                           route_keys(e.orig, e.reply, iif, e.mark))
        if flow is None:
            return None
        flow.route_epoch = self.routes.epoch
        return flow, e

    async def _release_leases(self) -> int:
        """Entries on an offload lease (a timeout above their state's) that no
        flow carries: their state's timeout, as at hand-back."""
        timeouts: dict[tuple, int] = {}
        n = 0
        for i, e in enumerate(list(self.mirror.entries.values())):
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if self.flow_of(e) is not None or e.timeout is None:
                continue
            key = (e.l4proto, e.tcp_state, bool(e.status & IPS_SEEN_REPLY))
            if key not in timeouts:
                timeouts[key] = self.mirror.state_timeout(e)
            if e.timeout > timeouts[key]:
                f = self.rulesets.select(e.labels)
                try:
                    await self.mirror.handed_back(e, 0, self.rulesets.mark(f) if f else 0)
                    n += 1
                except Exception as err:      # the entry may have just died
                    log.debug("lease of %s not released: %s", e.orig, err)
        return n

    def _transmit(self, port: int, frame: bytes) -> None:
        # where the kernel sent this frame: the path its flow takes (route.py)
        self.routes.observe_egress(port, frame, parse_tuple(frame))
        try:
            self.session.packet_out(frame, [p4r.PacketMetadata(
                metadata_id=self._pout_port.id, value=encode(port, self._pout_port.bitwidth))])
            self.stats["packet_out"] += 1
        except SwitchUnavailable:
            self.stats["packet_out_dropped"] += 1

    # -- packets from the switch ---------------------------------------------
    async def _packet_in(self) -> None:
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
                    self.decisions.consider(ct)

    # -- conntrack -----------------------------------------------------------
    async def _ct_events(self) -> None:
        while True:
            try:
                await self._follow_ct()
            except OSError as err:
                # ENOBUFS: the kernel dropped events; the mirror resyncs by dump
                self.stats["ct_resync"] += 1
                log.warning("conntrack events lost (%s); resynchronising", err)
                present, gone = await self.mirror.resync()
                for e in gone:
                    flow = self.flow_of(e)
                    if flow is not None:
                        flow.test_and_set(FlowFlag.DYING)
                        self.teardown(flow, TeardownReason.CT_DESTROYED)
                for e in present:
                    flow = self.flow_of(e)
                    if flow is None:
                        self.decisions.consider(e)
                    elif e.offloadable() is not None:
                        self.teardown(flow, TeardownReason.CT_STATE)

    async def _follow_ct(self) -> None:
        async for ev, e, old in self.mirror.events():
            self.decisions.forget_decline(e.orig, destroyed=ev is CtEvent.DESTROY)
            flow = self.flow_of(e)
            if ev is CtEvent.DESTROY:
                self._waiting.pop(e.orig, None)
                self.routes.forget(e.orig, e.reply)
                if flow is not None:
                    flow.test_and_set(FlowFlag.DYING)
                    self.teardown(flow, TeardownReason.CT_DESTROYED)
                continue
            if flow is not None:
                if e.offloadable() is not None:
                    self.teardown(flow, TeardownReason.CT_STATE)
                continue
            # Offload on what a packet changed: the connection became
            # offloadable (reply seen, TCP established), or a packet reached
            # an offload statement and set its flowtable's mark (a handed-back
            # flow's mark was cleared: it comes back when a packet reaches the
            # statement again, as in the kernel). Updates that change neither
            # (our own timeout writes, say) do not.
            if old is None or old.offloadable() is not None or e.labels & ~old.labels & self.rulesets.marks:
                self.decisions.consider(e)

    async def _route_events(self) -> None:
        """Link, address, route, rule and neighbour changes: offloaded flows
        follow them (reroute.py), and the connections declined for want of a
        path are considered again at once. (The kernel asks again with the
        connection's next packet, which a connection that has gone quiet may
        not send for long.)"""
        while True:
            async for msg in self._rt_monitor.get():
                self.reroute.on_message(msg)

    @property
    def waiting_for_room(self) -> int:
        """Flows refused by a full table, waiting for room."""
        return len(self._waiting)

    def waits_for_room(self, orig) -> bool:
        return orig in self._waiting

    def flow_of(self, e: CtEntry) -> Flow | None:
        hit = self.flowtables.lookup(e.orig)
        return hit[0] if hit is not None and hit[0].key == e.orig else None

    # -- teardown (flow_offload_teardown) -----------------------------------------
    def teardown(self, flow: Flow, reason: TeardownReason, direction: Dir | None = None) -> None:
        if flow.test_and_set(FlowFlag.TEARDOWN):
            return
        self.stats[f"teardown.{reason.value}"] += 1
        self.publish("TEARDOWN", flow, reason=reason.value,
                    direction=direction.name.lower() if direction is not None else None)
        flow.reason = reason
        self.queue.put_nowait(("del", flow))

    async def _offload_worker(self) -> None:
        """Writes the queue's batches in order. Adds of distinct flows do not
        depend on each other, so up to WRITES_IN_FLIGHT add batches are at the
        switch together: it works on one while the daemon prepares the next.
        A delete waits until every earlier write is answered, and the next
        batch waits for the delete, which keeps each flow's operations in order."""
        inflight: set[asyncio.Task] = set()

        async def settle(limit: int) -> None:
            while len(inflight) > limit:
                done, _ = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    inflight.discard(t)
                    t.result()      # a bug in a write: the daemon's task fails as before

        try:
            while True:
                op, batch = await self.queue.next_batch(MAX_BATCH_FLOWS)
                await settle(WRITES_IN_FLIGHT - 1 if op == "add" else 0)
                inflight.add(asyncio.create_task(self._write(op, batch)))
                if op != "add":
                    await settle(0)
        finally:
            for t in inflight:
                t.cancel()

    async def _write(self, op: str, batch: list[Flow]) -> None:
        try:
            if op == "add":
                await self._do_add(batch)
            else:
                await self._do_del(batch)
        except SwitchUnavailable as e:
            log.warning("%s of %d flow(s) deferred until the switch is back: %s", op, len(batch), e)
            if op == "add":
                self._deferred.extend(batch)
            else:
                # the pipeline pushed on reconnect starts with empty tables
                for f in batch:
                    await self._handed_back(f)

    async def _do_add(self, batch: list[Flow]) -> None:
        batch = [f for f in batch if not f.flags & FlowFlag.TEARDOWN]
        if not batch:
            return
        res = await self.driver.add(batch)
        now = self.clock()
        self.stats["offload_batches"] += 1
        timed = False
        for f in res.done:
            f.clear(FlowFlag.PENDING)
            f.test_and_set(FlowFlag.HW)
            self.aging.track(f, now)
            f.offloaded_at = now
            self.stats["offloaded"] += 1
            since = self.decisions.since.pop(f.key, None)
            self.publish("OFFLOAD", f, after_ms=round(1000 * (now - since), 2) if since is not None else None)
            if since is not None:   # conntrack event or miss -> both entries written
                self.offload_latency.append(now - since)
                self.metrics.offload_latency.observe(now - since)
                self.first_decided = min(self.first_decided or since, since)
                self.last_offloaded = now
                timed = True
        if timed:
            self.cpu_last = time.process_time()
        refused = []
        for f, msg in res.failed:
            if msg.startswith("ALREADY_EXISTS"):
                f.clear(FlowFlag.PENDING)
                f.test_and_set(FlowFlag.HW)
                self.aging.track(f, now)
                f.offloaded_at = now
            else:
                refused.append((f, msg))
        if refused:
            await self._refused(refused)

    async def _refused(self, refused: list[tuple[Flow, str]]) -> None:
        """Flows the switch would not take. A flow is both its directions or
        none: a direction that got in is removed. The flow waits for room in
        the slow path, its mark kept, its kernel lease back to its state's
        timeout: it is admitted, heaviest first, when deletes free entries
        (_admit_waiting), not retried on each of its packets. A full table is
        RESOURCE_EXHAUSTED, as the spec says; BMv2's server reports it, like
        any failure of its target, as UNKNOWN."""
        try:
            await self.driver.delete([f for f, _ in refused])
        except SwitchError as e:
            log.warning("removing what got in of %d refused flow(s): %s", len(refused), e)
        waiting = []
        for f, msg in refused:
            full = msg.startswith(("RESOURCE_EXHAUSTED", "UNKNOWN"))
            self.stats["table_full" if full else "offload_failed"] += 1
            self.publish("REFUSED", f, reason="table_full" if full else msg)
            if not full:
                log.error("switch refused flow %s: %s", f.key, msg)
            self.decisions.since.pop(f.key, None)
            self.flowtables.delete(f)
            ct = self.mirror.entries.get(f.key)
            if ct is None:
                continue
            waiting.append(ct)
            await self.mirror.handed_back(ct, 0, 0)
        if waiting:
            log.warning("switch refused %d flow(s): waiting for room (%d waiting)", len(waiting),
                        len(self._waiting) + len(waiting))
            for ct, n in zip(waiting, await self.mirror.packets(waiting)):
                self._waiting[ct.orig] = (ct, n or 0)

    async def _admit_waiting(self, room: int) -> None:
        """Entries were freed: the flows waiting for room, those that moved the
        most packets since they were refused first (the kernel has no such
        policy; conntrack's counters make it possible)."""
        if not self._waiting or room <= 0:
            return
        items = list(self._waiting.items())
        now = await self.mirror.packets([ct for _, (ct, _) in items])
        ranked = sorted(zip(items, now), key=lambda x: (x[1] or 0) - x[0][1][1], reverse=True)
        for (key, _), _ in ranked[:room]:
            del self._waiting[key]
            cur = self.mirror.entries.get(key)
            if cur is not None:
                self.stats["table_full_admitted"] += 1
                self.decisions.consider(cur)

    async def _do_del(self, batch: list[Flow]) -> None:
        res = await self.driver.delete(batch)
        now = self.clock()
        for f in batch:
            self.aging.removed(f, now)
        for f, msg in res.failed:
            log.error("switch refused to delete flow %s: %s", f.key, msg)
            self.stats["delete_failed"] += 1
        for f in batch:
            await self._handed_back(f)
        await self._admit_waiting(len(batch) - len(res.failed))

    async def _handed_back(self, f: Flow) -> None:
        f.clear(FlowFlag.HW | FlowFlag.PENDING)
        self.publish("HANDBACK", f, reason=f.reason.value if f.reason else None)
        self.flowtables.delete(f)
        if f.flags & FlowFlag.DYING:
            return
        idle = min(self.clock() - f.last_used, f.timeout) if f.reason is TeardownReason.EXPIRED else 0
        ct = self.mirror.entries.get(f.key)
        if ct is not None:
            try:
                await self.mirror.handed_back(ct, idle, self.rulesets.mark(f.flowtable))
            except Exception as e:  # the entry may have just died
                log.debug("hand-back of %s: %s", f.key, e)

    # -- aging (see aging.py) -------------------------------------------------------
    async def _idle_events(self) -> None:
        """IdleTimeoutNotifications: the entries named get their flow read."""
        while True:
            note = await self.session.idle.get()
            for te in note.table_entry:
                hit = match_tuple(self.schema, te)
                found = self.flowtables.lookup(hit[1]) if hit is not None else None
                if found is None or found[0].iif[found[1]] != hit[0]:
                    self.stats["idle_unknown_entry"] += 1
                    continue
                self.aging.idle(found[0])

    def _expired(self, f: Flow) -> None:
        self.stats["expired"] += 1
        self.publish("EXPIRE", f, idle_s=round(self.clock() - f.last_used, 1))
        self.teardown(f, TeardownReason.EXPIRED)

    async def _renew_lease(self, f: Flow) -> None:
        ct = self.mirror.entries.get(f.key)
        if ct is not None:
            await self.mirror.keepalive(ct, self.cfg.ct_lease)
            self.publish("REFRESH", f, lease_s=int(self.cfg.ct_lease))

    # -- API -----------------------------------------------------------------------
    def publish(self, event: str, f: Flow | CtEntry, **fields) -> None:
        """Publish a flow's event to the monitors (cheap when there are none)."""
        if not self.events.monitors:
            return
        if isinstance(f, Flow):
            flow = {**tuples_dict(*f.tuples), "flowtable": f.flowtable, "offload": bool(f.flags & FlowFlag.HW)}
        else:
            flow = {**tuples_dict(f.orig, f.reply), "flowtable": None, "offload": False}
        self.events.publish(event, flow, **fields)

    async def reload(self, path: str | None = None) -> dict:
        """`p4ft ruleset reload [FILE]`, SIGHUP: FILE becomes the ruleset."""
        target = Path(path) if path else self.cfg.ruleset
        if target is None:
            raise ValueError("no ruleset to reload: the daemon was started without --ruleset and none was given")
        result = await self.rulesets.reload(target)
        self.cfg.ruleset = target
        return result


def device_config_of(cfg: DaemonConfig) -> bytes:
    """What SetForwardingPipelineConfig carries for the target: BMv2's JSON,
    or the Tofino build packed for the SDE's P4Runtime server
    (cfg.device_config: the build's directory)."""
    if cfg.target == "tofino":
        from .tofino import TofinoBuild
        return TofinoBuild(Path(cfg.device_config)).device_config()
    return Path(cfg.device_config).read_bytes()


class OffloadQueue:
    """FIFO of (op, flow); batches are runs of the same op, order kept."""

    def __init__(self):
        self._items: collections.deque[tuple[str, Flow]] = collections.deque()
        self._ready = asyncio.Event()

    def put_nowait(self, item: tuple[str, Flow]) -> None:
        self._items.append(item)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    async def next_batch(self, limit: int) -> tuple[str, list[Flow]]:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        op, flow = self._items.popleft()
        batch = [flow]
        while self._items and len(batch) < limit and self._items[0][0] == op:
            batch.append(self._items.popleft()[1])
        return op, batch
