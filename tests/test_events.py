"""The monitor's event bus: a slow monitor loses its own events, counted and
told to it; it never blocks the publisher or another monitor."""

import asyncio
import json
import socket

from p4flowtable import events
from p4flowtable.events import EventBus, FlowFilter, format_event

FLOW = {"proto": "tcp", "orig": {"src": "10.0.1.1", "dst": "192.0.2.2", "sport": 40000, "dport": 80},
        "reply": {"src": "192.0.2.2", "dst": "192.0.2.1", "sport": 80, "dport": 40000},
        "flowtable": "ft", "offload": True}


def test_a_full_monitor_loses_its_own_events_and_is_told_how_many(monkeypatch):
    monkeypatch.setattr(events, "QUEUE", 3)

    async def main():
        bus = EventBus()
        slow, quick = bus.subscribe(FlowFilter()), bus.subscribe(FlowFilter())
        for _ in range(5):
            bus.publish("OFFLOAD", FLOW)
            await bus.next(quick)                   # the quick one keeps up
        got = [await bus.next(slow) for _ in range(3)]
        assert [e["event"] for e in got] == ["OFFLOAD"] * 3
        told = await bus.next(slow)                 # the first read after the losses
        assert (told["event"], told["count"]) == ("DROPPED", 2)
        assert slow.dropped_total == 2 and quick.dropped_total == 0
        bus.unsubscribe(slow)
        assert bus.dropped_gone == 2
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
            bus.publish("OFFLOAD", FLOW)
            got = await read_lines(c, got, 2)
            assert json.loads(got.splitlines()[1])["event"] == "OFFLOAD"
            assert len(bus.monitors) == 1, "a half-closed client unsubscribed"
            c.close()
            bus.publish("OFFLOAD", FLOW)     # its write finds the client gone
            await until(lambda: not bus.monitors, "a half-closed client, then closed, unsubscribed")

            c = await monitor()
            for _ in range(3000):             # more than the socket holds: never read
                bus.publish("OFFLOAD", FLOW)
            c.close()
            await until(lambda: not bus.monitors, "a client closed with events unread unsubscribed")
        finally:
            server.close()
    asyncio.run(main())
