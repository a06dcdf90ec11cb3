"""Prometheus metrics of the daemon (`p4ft daemon --metrics-addr HOST:PORT`).

The text exposition format is prometheus_client's. The collector reads the
daemon's state when scraped; the HTTP server runs on the daemon's own event
loop, so a scrape reads that state from the thread that changes it.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import logging
import math

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from .conntrack import ConntrackMirror
from .core import Flowtables
from .events import EventBus
from .model import FlowFlag
from .p4runtime import Session
from .punt import PuntLimit

log = logging.getLogger("p4ft")

# time-to-offload: from the connection becoming offloadable to both entries written
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class LatencyHistogram:
    """A histogram observed once per offloaded flow. prometheus_client's
    Histogram takes a lock and walks its buckets in Python for each
    observation (0.9 us); here one bisect and two additions (0.2 us) do it, since the
    daemon's event loop is its only writer and a scrape reads it on that
    loop too. Exposed as prometheus_client exposes a Histogram: the
    cumulative `_bucket` series by `le`, `_count` and `_sum`."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]):
        self.name, self.doc = name, doc
        self.bounds = tuple(sorted(buckets)) + (math.inf,)
        self.counts = [0] * len(self.bounds)      # per bucket, not cumulative
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1      # le: value <= bound
        self.sum += value

    def observe_all(self, values: list[float]) -> None:
        """observe() each of a batch's values, in one call."""
        counts, bounds, where = self.counts, self.bounds, bisect.bisect_left
        for v in values:
            counts[where(bounds, v)] += 1
        self.sum += sum(values)

    def family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.doc, sum_value=self.sum, buckets=[
            (floatToGoString(b), n) for b, n in zip(self.bounds, itertools.accumulate(self.counts))])


class Metrics:
    """Reads, when scraped: the flowtables, the conntrack mirror, the daemon's
    event counters (stats), the switch session and the monitors' bus."""

    def __init__(self, flowtables: Flowtables, mirror: ConntrackMirror, stats: collections.Counter,
                 session: Session, events: EventBus, punt_names: dict[int, str], punt: PuntLimit):
        self.flowtables, self.mirror, self.stats = flowtables, mirror, stats
        self.session, self.events, self.punt_names = session, events, punt_names
        self.punt = punt
        self.registry = CollectorRegistry()
        self.offload_latency = LatencyHistogram("p4ft_offload_latency_seconds",
                                                "Time from a connection becoming offloadable (or its miss) to both "
                                                "of its entries written", LATENCY_BUCKETS)
        self.registry.register(self)
        self.server: asyncio.AbstractServer | None = None

    def collect(self):
        st = self.stats
        flows = GaugeMetricFamily("p4ft_flows", "Flows by flowtable and state", labels=["flowtable", "state"])
        for name, t in self.flowtables.tables.items():
            hw = sum(1 for f in t.flows.values() if f.flags & FlowFlag.HW)
            flows.add_metric([name, "offloaded"], hw)
            flows.add_metric([name, "pending"], len(t.flows) - hw)
        yield flows
        yield self.offload_latency.family()
        yield GaugeMetricFamily("p4ft_conntrack_entries", "Entries of the router's conntrack table",
                                value=len(self.mirror.entries))
        yield CounterMetricFamily("p4ft_offloads", "Flows offloaded (both entries written)",
                                  value=st.get("offloaded", 0))
        for prefix, name, doc, label in (
                ("teardown.", "p4ft_teardowns", "Flows torn down, by reason", "reason"),
                ("not_offloaded.", "p4ft_refused", "Offloads refused, by reason", "reason"),
                ("punt.", "p4ft_punts", "Packets the switch punted to the slow path, by reason", "reason")):
            fam = CounterMetricFamily(name, doc, labels=[label])
            for k, v in sorted(st.items()):
                if k.startswith(prefix):
                    fam.add_metric([k[len(prefix):]], v)
            if prefix == "punt.":
                for reason in self.punt_names.values():
                    if f"punt.{reason}" not in st:
                        fam.add_metric([reason], 0)
            yield fam
        yield CounterMetricFamily("p4ft_expiries", "Flows expired (idle in the switch)", value=st.get("expired", 0))
        lookups = CounterMetricFamily("p4ft_route_lookups", "Route answers the decisions and reroutes took, by "
                                      "source: kept (route.py's cache), asked (the kernel), probed (RTM_F_FIB_MATCH "
                                      "checks that an answer may be kept)", labels=["source"])
        for source, key in (("kept", "route.cached"), ("asked", "route.asked"), ("probed", "route.probed")):
            lookups.add_metric([source], st.get(key, 0))
        yield lookups
        s = self.session
        yield CounterMetricFamily("p4ft_switch_writes", "P4Runtime Write requests sent", value=s.writes)
        errs = CounterMetricFamily("p4ft_switch_write_errors", "Updates the switch refused, by status code",
                                   labels=["code"])
        for code, n in sorted(s.write_errors.items()):
            errs.add_metric([code], n)
        yield errs
        yield GaugeMetricFamily("p4ft_switch_connected", "1 while the P4Runtime session is up",
                                value=0 if s.lost.is_set() or s._stub is None else 1)
        role = GaugeMetricFamily("p4ft_switch_role", "1 for this daemon's arbitration role", labels=["role"])
        role.add_metric(["primary"], 1 if s.is_primary else 0)
        role.add_metric(["backup"], 0 if s.is_primary else 1)
        yield role
        yield GaugeMetricFamily("p4ft_election_id", "This daemon's P4Runtime election id", value=s.election_id)
        yield CounterMetricFamily("p4ft_packet_in_dropped", "PacketIns dropped before the daemon read them",
                                  value=s.dropped_packet_in)
        drops = CounterMetricFamily("p4ft_punt_dropped", "Punted packets the switch dropped over the punt "
                                    "rate (--punt-rate), by ingress port, as last read", labels=["port"])
        for port, n in sorted(self.punt.dropped.items()):
            drops.add_metric([str(port)], n)
        yield drops
        yield GaugeMetricFamily("p4ft_punt_rate", "Packets per second each ingress port may punt (0: no limit)",
                                value=self.punt.rate)
        yield CounterMetricFamily("p4ft_monitor_events_dropped", "Events lost by slow monitors",
                                  value=sum(m.dropped_total for m in self.events.monitors) + self.events.dropped_gone)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        self.server = await asyncio.start_server(self._http, host.strip("[]") or "127.0.0.1", int(port))
        log.info("metrics on http://%s/metrics", addr)

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Just enough HTTP/1.0 for a scraper: GET /metrics."""
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            while await asyncio.wait_for(reader.readline(), 10) not in (b"\r\n", b"\n", b""):
                pass        # the request's headers
            parts = request.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
                body, status, ctype = self.render(), "200 OK", CONTENT_TYPE_LATEST
            else:
                body, status, ctype = b"p4ft: GET /metrics\n", "404 Not Found", "text/plain"
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server:
            self.server.close()
