"""The controller daemon: the wiring of the modules, its tasks, start and stop.

Inputs: conntrack events (ctevents.py), PacketIns and the representors'
frames (packetio.py), routing changes (reroute.py), the switch's idle
notifications and the aging tick (aging.py), and API requests (commands.py),
all handled on one asyncio loop. Every flow state change goes through
flowoffload.py's queue; the switch's role and connection are role.py's, its
reconcile reconcile.py's.
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
from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NETLINK_ROUTE

from . import netns
from .aging import Aging
from .apiserver import ApiServer
from .commands import Commands
from .conntrack import NF_CT_DAY, ConntrackMirror
from .core import Flowtables
from .ctevents import ConntrackEvents
from .decide import Decisions
from .entryread import APART_FROM
from .events import EventBus
from .flowoffload import FlowOffload
from .metrics import Metrics
from .offload import P4RuntimeDriver
from .p4info import P4Schema
from .p4runtime import Session
from .packetio import PacketIo, punt_names
from .policy import DEFAULT_LABEL_BITS
from .punt import DEFAULT_BURST as DEFAULT_PUNT_BURST, DEFAULT_RATE as DEFAULT_PUNT_RATE, PuntLimit
from .reconcile import Reconcile
from .reroute import GROUPS as ROUTE_GROUPS, Reroute
from .role import SwitchRole
from .route import RouteLookups, Routes
from .ruleset import RulesetControl
from .switch import SwitchControl
from .tls import TlsFiles

log = logging.getLogger("p4ft")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_P4INFO = REPO / "p4src" / "build" / "flowtable.p4info.txtpb"
DEFAULT_JSON = REPO / "p4src" / "build" / "flowtable.json"
from .api import DEFAULT_SOCKET  # noqa: E402

# Python's cyclic collector in the daemon: its collections of the oldest
# generation walk every object the daemon holds (each flow's Flow, its
# conntrack entry, tuples and index entries), and by default one runs each
# time a quarter as many objects as that generation holds has reached it
# since the last. A burst of new flows sets off one after another: 5 of
# them, 212-312 ms in all, in each burst of 30,000 flows measured (both
# switches, docs/benchmarks.md), each a pause of the loop; by the same rule a steady
# churn of connections sets them off at any size. The daemon's state is
# freed by reference count (a flow, a conntrack entry: no cycles), so the
# collector is only there for cycles made elsewhere (an exception's
# traceback, say): the oldest generation is collected a tenth as often (its
# threshold 100 younger collections instead of 10). The reconcile pauses
# the collector altogether and freezes what it made (Reconcile.run).
COLLECTOR_THRESHOLDS = (700, 10, 100)


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
    tls: TlsFiles | None = None          # mutual TLS to the switch (tls.py); None: plaintext
    tls_server_name: str | None = None   # the switch certificate's name, where not the address's host
    read_apart_from: int = APART_FROM    # conntrack entries from which a reconcile reads in a second process


class Daemon:
    def __init__(self, cfg: DaemonConfig, clock=time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self.flowtables = Flowtables(clock)
        self.mirror = ConntrackMirror(cfg.netns)
        self.session = Session(cfg.grpc_addr, cfg.device_id, cfg.election_id, tls=cfg.tls,
                               server_name=cfg.tls_server_name)
        p4info = p4info_pb2.P4Info()
        text_format.Parse(Path(cfg.p4info).read_text(), p4info)
        self.schema = schema = P4Schema(p4info)
        self.stats: collections.Counter[str] = collections.Counter()
        self.events = EventBus()
        self.punt = PuntLimit(schema, cfg.punt_rate, cfg.punt_burst)
        self.switch = SwitchControl(self.session, schema, device_config_of(cfg), settings=self.punt.updates)
        self.driver = P4RuntimeDriver(self.session, schema)
        self.driver.idle_timeout = self.driver.idle_timeout and cfg.idle_timeouts
        self.aging = Aging(self.flowtables, self.driver, clock, idle_timeout=self.driver.idle_timeout,
                           ct_lease=cfg.ct_lease, expire=lambda f: self.offload.expired(f),
                           renew=lambda f: self.offload.renew_lease(f))
        self.metrics = Metrics(self.flowtables, self.mirror, self.stats, self.session, self.events,
                               punt_names(schema), self.punt)
        self.offload = FlowOffload(self.flowtables, self.driver, self.mirror, self.aging, self.events, self.stats,
                                   mark=lambda name: self.rulesets.mark(name),
                                   consider=lambda e: self.decisions.consider(e), ct_lease=cfg.ct_lease,
                                   clock=clock, observe_latencies=self.metrics.offload_latency.observe_all)
        self.rulesets = RulesetControl(self.flowtables, self.session, schema, self.mirror, self.offload.teardown,
                                       netns=cfg.netns, ports=cfg.ports, timeouts=cfg.timeouts,
                                       label_bits=cfg.label_bits, load_kernel=cfg.load_kernel_ruleset)
        self.role = SwitchRole(self.session, self.switch, self.rulesets.port_updates, self.mirror, self.events,
                               self.stats, connect_timeout=cfg.connect_timeout, clock=clock)
        self.commands = Commands(self.flowtables, self.mirror, self.rulesets, self.driver, self.aging, self.offload,
                                 self.session, self.punt, self.events, self.stats, punt_names=punt_names(schema),
                                 clock=clock, reload=self.reload, stop=self.request_stop,
                                 api_errors=lambda: self.api.errors)
        self.api = ApiServer(cfg.socket, self.commands.handle, self.events)
        self._tasks: list[asyncio.Task] = []
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.keep_flows_on_stop = False   # `p4ft stop --keep-flows`: for the next daemon to adopt
        # made at start(): they need the router namespace's netlink sockets
        self.ipr: AsyncIPRoute | None = None
        self._rt_monitor: AsyncIPRoute | None = None
        self.routes: Routes | None = None
        self.reroute: Reroute | None = None
        self.decisions: Decisions | None = None
        self.packetio: PacketIo | None = None
        self.reconcile: Reconcile | None = None
        self.ctevents: ConntrackEvents | None = None

    # -- start and stop ----------------------------------------------------
    def _wire_routing(self) -> None:
        """The modules that follow the router namespace's routing."""
        cfg = self.cfg
        self.ipr = AsyncIPRoute(use_socket=netns.netlink_socket(cfg.netns, NETLINK_ROUTE))
        self.routes = Routes(self.ipr, cfg.ports, RouteLookups(netns.netlink_socket(cfg.netns, NETLINK_ROUTE)),
                             self.stats)
        self.packetio = PacketIo(self.session, self.schema, self.routes, self.flowtables, self.mirror, self.stats,
                                 netns=cfg.netns, ports=cfg.ports, teardown=self.offload.teardown,
                                 consider=lambda e: self.decisions.consider(e))
        self.decisions = Decisions(self.mirror, self.flowtables, self.rulesets, self.routes, self.packetio.relay,
                                   self.offload, self.events, self.stats, ports=cfg.ports, ct_lease=cfg.ct_lease,
                                   clock=self.clock)
        self.reroute = Reroute(lambda: list(self.flowtables), self.routes, self.driver, self.offload.teardown,
                               self.stats, self.decisions.retry_no_route, self.clock)
        self.reconcile = Reconcile(self.switch, self.schema, self.driver, self.flowtables, self.mirror, self.rulesets,
                                   self.routes, self.decisions, self.offload, self.aging, self.events, self.stats,
                                   ports=cfg.ports, ct_lease=cfg.ct_lease, read_apart_from=cfg.read_apart_from,
                                   clock=self.clock)
        self.ctevents = ConntrackEvents(self.mirror, self.flowtables, self.decisions, self.offload, self.routes,
                                        self.stats, marks=lambda: self.rulesets.marks)

    async def start(self) -> None:
        cfg = self.cfg
        if cfg.ruleset is not None:
            self.rulesets.load(Path(cfg.ruleset))
        self._wire_routing()
        await self.mirror.open()
        # the switch first: with its pipeline kept, its entries are read
        # while the kernel dumps conntrack (Reconcile.read_ahead), by a
        # second process that starts up while the daemon connects
        await self.reconcile.spawn_reader()
        kept = await self.role.connect()
        await self.reconcile.read_ahead(kept)
        await self.mirror.dump()
        await self.api.start()
        if cfg.metrics_addr:
            await self.metrics.serve(cfg.metrics_addr)
        if kept is None:
            # a backup: conntrack followed, nothing written to the switch or the kernel
            for coro, name in ((self.role.follow_ct_passive(), "ct-follow"), (self._standby(), "standby")):
                self._tasks.append(asyncio.create_task(coro, name=name))
            self.ready.set()
            log.info("p4ft ready as a backup: switch %s, %d conntrack entries", cfg.grpc_addr,
                     len(self.mirror.entries))
            return
        self.rulesets.load_kernel_now()
        await self._primary(kept)

    async def _standby(self) -> None:
        kept = await self.role.standby()
        for t in [t for t in self._tasks if t.get_name() == "ct-follow"]:
            t.cancel()
            self._tasks.remove(t)
        await self._primary(kept)

    async def _primary(self, kept: bool) -> None:
        """The primary's work: representors, every task, the switch reconciled."""
        cfg = self.cfg
        self.mirror.enable_accounting()
        self.packetio.relay.open()
        self._rt_monitor = AsyncIPRoute(use_socket=netns.netlink_socket(cfg.netns, NETLINK_ROUTE))
        await self._rt_monitor.bind(groups=ROUTE_GROUPS)
        await self.routes.load()
        tasks = [(self.ctevents.run(), "ct-events"), (self.packetio.run(), "packet-in"),
                 (self.reroute.follow(self._rt_monitor), "route-events"), (self.reroute.run(), "reroute"),
                 (self.decisions.run(), "decide"), (self.offload.run(), "offload"),
                 (self.aging.run(cfg.poll_interval), "aging"),
                 (self.aging.follow_idle(self.session.idle, self.schema), "idle"),
                 (self.role.supervise(self._reconcile, self._taken), "switch")]
        if self.punt.rate:
            tasks.append((self.punt.follow(self.session, cfg.poll_interval), "punt-drops"))
        for coro, name in tasks:
            self._tasks.append(asyncio.create_task(coro, name=name))
        await self._reconcile(kept)
        self.ready.set()
        log.info("p4ft ready: switch %s, %d flowtable(s), %d port(s), %d conntrack entries",
                 cfg.grpc_addr, len(self.flowtables.tables), len(cfg.ports), len(self.mirror.entries))

    async def _reconcile(self, kept: bool) -> None:
        """The switch reconciled, then the next hops of the kernel's
        neighbours written where missing (nexthop.py)."""
        await self.reconcile.run(kept)
        self.reroute.hold_known()

    def _taken(self) -> None:
        """Another controller took the switch while this one was away: its
        flows now; stop and leave them."""
        self.request_stop(keep_flows=True)

    def request_stop(self, keep_flows: bool = False) -> None:
        self.keep_flows_on_stop = keep_flows
        self.stopping.set()

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
        if self.keep_flows_on_stop:
            log.info("stopping; %d flow(s) stay in the switch for the next daemon", len(self.offload.carried()))
        elif not self.session.lost.is_set():
            await self.offload.hand_back_all()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.reconcile is not None:
            await self.reconcile.close()
        self.api.close()
        self.metrics.close()
        if self.packetio is not None:
            self.packetio.relay.close()
        if self.routes is not None and self.routes.lookups is not None:
            self.routes.lookups.close()
        await self.session.close()
        await self.mirror.close()
        for sock in (self.ipr, self._rt_monitor):
            if sock:
                sock.close()

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
