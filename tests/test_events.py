"""The monitor's event bus: a slow monitor loses its own events, counted and
told to it; it never blocks the publisher or another monitor."""

import asyncio

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
