"""The monitor's event bus: a slow monitor loses its own events, counted and
told to it; it never blocks the publisher or another monitor."""

import asyncio
import json
import socket
import time
from ipaddress import IPv6Address as ipv6

from p4flowtable import events
from p4flowtable.events import EventBus, FlowFilter, event_lines, format_event, make_event
from p4flowtable.model import Flow, FlowFlag, FlowTuple, ipv4

FLOW = {"proto": "tcp", "orig": {"src": "10.0.1.1", "dst": "192.0.2.2", "sport": 40000, "dport": 80},
        "reply": {"src": "192.0.2.2", "dst": "192.0.2.1", "sport": 80, "dport": 40000},
        "flowtable": "ft", "offload": True}


def flow(sport: int = 40000) -> Flow:
    """FLOW as the daemon holds it."""
    lan, server, router = ipv4("10.0.1.1"), ipv4("192.0.2.2"), ipv4("192.0.2.1")
    return Flow(1, (FlowTuple(lan, server, 6, sport, 80), FlowTuple(server, router, 6, 80, sport)), "ft", 30.0,
                flags=FlowFlag.HW)


def test_a_full_monitor_loses_its_own_events_and_is_told_how_many(monkeypatch):
    monkeypatch.setattr(events, "QUEUE", 3)

    async def main():
        bus = EventBus()
        slow, quick = bus.subscribe(FlowFilter()), bus.subscribe(FlowFilter())
        for _ in range(5):
            bus.flow("OFFLOAD", flow())
            await bus.take(quick)                   # the quick one keeps up
        got = [make_event(r) for r in await bus.take(slow)]     # the first read after the losses
        assert [e["event"] for e in got] == ["OFFLOAD"] * 3 + ["DROPPED"]
        assert got[-1]["count"] == 2
        assert slow.dropped_total == 2 and quick.dropped_total == 0
        bus.unsubscribe(slow)
        assert bus.dropped_gone == 2
    asyncio.run(main())


def test_an_event_reads_as_the_flow_list_shows_its_flow_with_its_own_fields():
    async def main():
        bus = EventBus()
        m = bus.subscribe(FlowFilter())
        bus.flow("TEARDOWN", flow(), reason="fin_rst", direction="reply")
        bus.publish("LOST", switch="127.0.0.1:9559")
        (ev, lost), now = map(make_event, await bus.take(m)), time.time()
        assert ev == {"event": "TEARDOWN", "time": ev["time"], **FLOW, "reason": "fin_rst", "direction": "reply"}
        assert lost == {"event": "LOST", "time": lost["time"], "switch": "127.0.0.1:9559"}
        assert now - 5 < ev["time"] <= lost["time"] <= now
    asyncio.run(main())


def test_the_lines_written_are_json_dumps_of_the_events():
    """event_lines writes the text itself, for speed: it must be what
    json.dumps makes of make_event's dictionary, byte for byte."""
    v6 = (FlowTuple(ipv6("2001:db8::1"), ipv6("2001:db8:1::2"), 17, 5353, 53),
          FlowTuple(ipv6("2001:db8:1::2"), ipv6("2001:db8::1"), 17, 53, 5353))
    v4 = flow().tuples
    raws = [("OFFLOAD", 1764754123.1234567, (*v4, "ft", True), {"after_ms": 1.25}),
            ("TEARDOWN", 1.0, (*v4, 'f"t\\ö', False), {"reason": "fin_rst", "direction": None}),
            ("REFUSED", 2.5, (*v6, None, False), {"reason": "policy", "n": 3, "ok": True, "x": [1, "a"]}),
            ("EXPIRE", 3.0, (FlowTuple(v4[0].src, v4[0].dst, 132, 1, 2), v4[1], "ft", True),
             {"idle_s": float("nan"), "lease_s": float("inf"), "big": 1 << 70}),
            ("LOST", 4.0, None, {"switch": "[::1]:9559"}),
            ("DROPPED", 5.0, None, {"count": 7}),
            ("BACK", 6.0, None, {})]
    got = event_lines(raws).decode().splitlines()
    assert got == [json.dumps(make_event(r)) for r in raws]
    assert json.loads(got[0]) == {"event": "OFFLOAD", "time": 1764754123.123457, **FLOW, "after_ms": 1.25}


def test_a_filtered_monitor_gets_only_its_flows_events():
    async def main():
        bus = EventBus()
        web, every = bus.subscribe(FlowFilter.from_args({"dport": 80})), bus.subscribe(FlowFilter())
        other = flow()
        other.tuples = (FlowTuple(ipv4("10.0.1.1"), ipv4("192.0.2.2"), 6, 40001, 443), other.tuples[1])
        bus.flow("OFFLOAD", flow())
        bus.flow("OFFLOAD", other)
        bus.publish("LOST", switch="x")
        assert [(e["event"], e.get("orig", {}).get("dport")) for e in map(make_event, await bus.take(web))] == \
            [("OFFLOAD", 80), ("LOST", None)]
        assert len(await bus.take(every)) == 3
        assert bus.published == 3
    asyncio.run(main())


def test_filters_are_conntracks_on_the_original_direction():
    assert FlowFilter.from_args({"dport": "80", "proto": "tcp"}).matches(FLOW)
    assert not FlowFilter.from_args({"src": "192.0.2.2"}).matches(FLOW)      # the reply's source
    assert not FlowFilter.from_args({"offloaded": False}).matches(FLOW)
    assert FlowFilter().matches({"event": "LOST", "switch": "x"})
    assert not FlowFilter.from_args({"flowtable": "ft"}).matches({"event": "LOST", "switch": "x"})


def test_text_lines_read_like_conntrack_e():
    line = format_event({"event": "TEARDOWN", **FLOW, "reason": "fin_rst", "direction": "reply"})
    assert line.startswith("[TEARDOWN] tcp   src=10.0.1.1 dst=192.0.2.2 sport=40000 dport=80 src=192.0.2.2")
    assert line.endswith("flowtable=ft reason=fin_rst direction=reply")


def test_a_monitor_ends_when_its_client_hangs_up_not_at_the_next_event(tmp_path):
    """A monitor client that closes while no event comes is unsubscribed at
    once; one that shuts only its sending side keeps its events; one that
    closes with events unread is unsubscribed too. A real Unix socket."""
    from p4flowtable.apiserver import ApiServer

    async def until(pred, what: str, within: float = 5.0):
        end = asyncio.get_running_loop().time() + within
        while not pred():
            assert asyncio.get_running_loop().time() < end, f"{what}: not within {within}s"
            await asyncio.sleep(0.01)

    async def main():
        bus = EventBus()
        path = str(tmp_path / "api.sock")

        async def handle(cmd, args):
            return cmd
        server = ApiServer(path, handle, bus)
        await server.start()
        loop = asyncio.get_running_loop()

        async def monitor() -> socket.socket:
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            await loop.sock_connect(c, path)
            await loop.sock_sendall(c, b'{"cmd": "monitor", "args": {}}\n')
            await until(lambda: len(bus.monitors) == 1, "subscribed")
            return c

        async def read_lines(c: socket.socket, got: bytes, n: int) -> bytes:
            while got.count(b"\n") < n:
                chunk = await asyncio.wait_for(loop.sock_recv(c, 1 << 16), 5)
                assert chunk, f"the daemon hung up after {got!r}"
                got += chunk
            return got

        try:
            c = await monitor()
            c.close()
            await until(lambda: not bus.monitors, "a client closed while idle unsubscribed")

            c = await monitor()
            c.shutdown(socket.SHUT_WR)
            got = await read_lines(c, b"", 1)        # the "monitoring" answer
            # what is checked is that nothing happens: the daemon is given
            # time to read the end of the input (its own loop, here)
            await asyncio.sleep(0.5)
            bus.flow("OFFLOAD", flow())
            got = await read_lines(c, got, 2)
            assert json.loads(got.splitlines()[1])["event"] == "OFFLOAD"
            assert len(bus.monitors) == 1, "a half-closed client unsubscribed"
            c.close()
            bus.flow("OFFLOAD", flow())      # its write finds the client gone
            await until(lambda: not bus.monitors, "a half-closed client, then closed, unsubscribed")

            c = await monitor()
            for _ in range(3000):             # more than the socket holds: never read
                bus.flow("OFFLOAD", flow())
            c.close()
            await until(lambda: not bus.monitors, "a client closed with events unread unsubscribed")
        finally:
            server.close()
    asyncio.run(main())
