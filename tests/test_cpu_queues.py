"""The queues between the switch's CPU port and the daemon are fair between
ports: a port punting (or being sent) more than the stream carries fills a
queue of its own, and the other ports' packets do not wait behind it.

Seen before these queues: a SYN flood into one port of the embedded target
(tests/test_punt_storm.py) delayed every other port's slow-path packets by
seconds, each way, and failed connections that did not come from the
flooding port at all.
"""

import asyncio
import queue

import pytest
from p4.v1 import p4runtime_pb2 as p4r

from p4flowtable.p4info import decode, encode
from p4flowtable.p4runtime import StreamOut
from p4flowtable.softswitch.server import Stream
from test_soft_target import _session, grpc_switch, lan_tcp, schema  # noqa: F401  (fixtures)

FLOOD, OTHER = 3, 1


def _pkt(tag: int):
    return p4r.StreamMessageResponse(packet=p4r.PacketIn(payload=tag.to_bytes(4, "big")))


def test_the_switch_sends_control_first_then_one_packet_per_port_in_turn():
    s = Stream()
    taken = [s.send_packet(FLOOD, _pkt(i)) for i in range(Stream.PORT_QUEUE + 100)]
    assert taken.count(True) == Stream.PORT_QUEUE and taken[Stream.PORT_QUEUE:] == [False] * 100
    assert s.send_packet(OTHER, _pkt(10**6)) and s.send_packet(OTHER, _pkt(10**6 + 1))
    ctrl = p4r.StreamMessageResponse(arbitration=p4r.MasterArbitrationUpdate(device_id=1))
    assert s.send(ctrl)
    got = [s.get(0) for _ in range(6)]
    assert got[0] is ctrl
    tags = [int.from_bytes(m.packet.payload, "big") for m in got[1:]]
    assert tags == [0, 10**6, 1, 10**6 + 1, 2], "the ports take turns, each in its own order"
    for _ in range(Stream.PORT_QUEUE - 3):
        s.get(0)
    with pytest.raises(queue.Empty):
        s.get(0.01)


def test_the_daemon_sends_arbitration_first_then_one_packet_out_per_port_in_turn():
    async def main():
        q = StreamOut()
        msg = [p4r.StreamMessageRequest(packet=p4r.PacketOut(payload=bytes([i % 256]))) for i in range(1200)]
        taken = [q.put_packet(FLOOD, m) for m in msg]
        assert taken.count(True) == StreamOut.PORT_QUEUE and not any(taken[StreamOut.PORT_QUEUE:])
        other = p4r.StreamMessageRequest(packet=p4r.PacketOut(payload=b"other"))
        assert q.put_packet(OTHER, other)
        arb = p4r.StreamMessageRequest(arbitration=p4r.MasterArbitrationUpdate(device_id=1))
        q.put(arb)
        assert [await q.get() for _ in range(3)] == [arb, msg[0], other]
        assert len(q) == StreamOut.PORT_QUEUE - 1
        waiter = asyncio.ensure_future(q.get())
        for _ in range(StreamOut.PORT_QUEUE - 1):
            await q.get()
        await asyncio.sleep(0)
        assert not waiter.done(), "an empty queue waits"
        q.put(None)
        assert await asyncio.wait_for(waiter, 1) is None
    asyncio.run(main())


def test_a_flooding_port_does_not_delay_another_ports_packet_ins(grpc_switch, schema):
    """Over gRPC, the embedded target: more PacketIns from one port than the
    stream carries meanwhile, then one from another port; it arrives ahead
    of most of the flood, and the flood's excess is dropped and counted."""
    impl, addr = grpc_switch
    pin = schema.packet_meta("packet_in")["ingress_port"]
    flood, n = bytes(lan_tcp()), 3 * Stream.PORT_QUEUE

    async def main():
        s = await _session(addr, schema)
        loop = asyncio.get_running_loop()

        def punt():                   # frames from unbound ports: punted to the controller
            for _ in range(n):
                impl.receive(FLOOD, flood)
            impl.receive(OTHER, flood)
        await loop.run_in_executor(None, punt)
        ports = []
        while OTHER not in ports:
            p = await asyncio.wait_for(s.packet_in.get(), 10)
            ports += [decode(m.value) for m in p.metadata if m.metadata_id == pin.id]
        after = 0
        while True:
            try:
                await asyncio.wait_for(s.packet_in.get(), 1)
                after += 1
            except asyncio.TimeoutError:
                break
        await s.close()
        return ports, after
    ports, after = asyncio.run(main())
    assert impl.packet_in_dropped > 0, "more than one port's queue of the flood: the excess dropped"
    assert after >= Stream.PORT_QUEUE // 2, (
        f"port {OTHER}'s packet came after {len(ports) - 1} of the flood, and {after} still followed it")


def test_packet_outs_to_a_flooded_port_do_not_delay_another_ports(grpc_switch, schema):
    """Over gRPC, the embedded target: the daemon's session queues more
    PacketOuts to one port than a port's queue holds, then one to another;
    the switch transmits that one second, and the session refuses the
    excess (its caller counts it dropped)."""
    impl, addr = grpc_switch
    sent = []

    class Wire:
        def send(self, port, data):
            sent.append(port)
            return True
    impl.ports = Wire()
    out_port = schema.packet_meta("packet_out")["egress_port"]
    frame = bytes(lan_tcp())

    def meta(port):
        return [p4r.PacketMetadata(metadata_id=out_port.id, value=encode(port, out_port.bitwidth))]

    async def main():
        s = await _session(addr, schema)
        taken = [s.packet_out(frame, meta(FLOOD), FLOOD) for _ in range(StreamOut.PORT_QUEUE + 50)]
        taken.append(s.packet_out(frame, meta(OTHER), OTHER))
        for _ in range(500):
            if len(sent) >= StreamOut.PORT_QUEUE + 1:
                break
            await asyncio.sleep(0.02)
        await s.close()
        return taken
    taken = asyncio.run(main())
    assert taken.count(False) == 50 and taken[-1], "the flooded port's excess refused, the other taken"
    assert len(sent) == StreamOut.PORT_QUEUE + 1
    assert sent.index(OTHER) == 1, f"port {OTHER}'s frame was transmitted {sent.index(OTHER) + 1}th"
