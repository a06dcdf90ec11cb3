"""The punt meter: the embedded target's trTCM, its P4Runtime MeterEntry
handling, and the daemon's PuntLimit (punt.py). The same limit on BMv2 and
the embedded target under a real flood: tests/test_punt_storm.py."""

import asyncio

import pytest
from p4.v1 import p4runtime_pb2 as p4r

from p4flowtable.p4runtime import WriteError
from p4flowtable.punt import PuntLimit
from p4flowtable.softswitch.meters import GREEN, RED, YELLOW, MeterArray, MeterConfig
from test_soft_target import _session, grpc_switch, lan_tcp, run, schema, switch  # noqa: F401

CPU = 510


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_trtcm_colours_as_bmv2_does():
    clock = Clock()
    m = MeterArray("m", 4, packets=True, clock=clock)
    assert [m.execute(0, 64) for _ in range(3)] == [GREEN] * 3, "an unconfigured cell is green"
    m.set(0, MeterConfig(cir=10, cburst=2, pir=20, pburst=4))
    # buckets start full: 2 green (committed), 2 yellow (peak only), then red
    assert [m.execute(0, 64) for _ in range(6)] == [GREEN, GREEN, YELLOW, YELLOW, RED, RED]
    clock.t += 0.1      # one committed token, two peak tokens
    assert [m.execute(0, 64) for _ in range(4)] == [GREEN, YELLOW, RED, RED]
    clock.t += 60       # refills stop at the bursts
    assert [m.execute(0, 64) for _ in range(5)] == [GREEN, GREEN, YELLOW, YELLOW, RED]
    assert m.execute(1, 64) == GREEN, "cells are independent"
    m.set(0, None)
    assert m.execute(0, 64) == GREEN, "a reset cell is green again"


def test_bytes_meters_take_the_packet_length():
    clock = Clock()
    m = MeterArray("m", 1, packets=False, clock=clock)
    m.set(0, MeterConfig(cir=1000, cburst=1500, pir=1000, pburst=1500))
    assert m.execute(0, 1000) == GREEN
    assert m.execute(0, 1000) == RED, "500 bytes left for a 1000-byte packet"
    assert m.execute(0, 500) == GREEN


def _configure(sw, limit):
    for u in limit.updates():
        sw._update(sw.pipeline, u)


def test_punts_past_the_rate_are_dropped_and_counted_per_port(switch, schema):
    limit = PuntLimit(schema, rate=1, burst=5)
    _configure(switch, limit)
    miss = lan_tcp(flags="S")
    miss["TCP"].dport = 9999
    outs = [run(switch, 1, miss) for _ in range(20)]
    punted = [o for o in outs if o is not None and o.port == CPU]
    assert len(punted) == 5 and all(o is None for o in outs[5:]), "the burst goes up, the rest is dropped"
    drops = switch.pipeline.prog.counters["FtIngress.PuntIngress.punt_dropped"]
    assert drops[1][0] == 15 and sum(c[0] for c in drops) == 15
    # another port has its own share
    assert run(switch, 2, miss).port == CPU
    # hits are never metered
    assert all(run(switch, 1, lan_tcp()).port == 2 for _ in range(20))


def test_no_limit_resets_every_cell(switch, schema):
    _configure(switch, PuntLimit(schema, rate=1, burst=1))
    _configure(switch, PuntLimit(schema, rate=0, burst=0))
    miss = lan_tcp(flags="S")
    miss["TCP"].dport = 9999
    assert all(run(switch, 1, miss).port == CPU for _ in range(50))


@pytest.mark.parametrize("rate,burst", [(-1, 10), (10, -1), (10, 0)])
def test_bad_limits_are_refused(schema, rate, burst):
    with pytest.raises(ValueError, match="punt"):
        PuntLimit(schema, rate, burst)


def test_meter_entries_over_p4runtime(grpc_switch, schema):
    impl, addr = grpc_switch

    async def main():
        s = await _session(addr, schema)
        limit = PuntLimit(schema, rate=300, burst=30)
        await s.write(limit.updates())
        got = [e.meter_entry async for e in s.read([p4r.Entity(meter_entry=p4r.MeterEntry(
            meter_id=limit.meter.id, index=p4r.Index(index=7)))])]
        assert len(got) == 1 and (got[0].config.cir, got[0].config.pburst) == (300, 30)
        everything = [e async for e in s.read([p4r.Entity(meter_entry=p4r.MeterEntry(meter_id=limit.meter.id))])]
        assert len(everything) == limit.meter.size
        me = p4r.MeterEntry(meter_id=limit.meter.id, index=p4r.Index(index=1),
                            config=p4r.MeterConfig(cir=10, cburst=1, pir=10, pburst=1))
        bad_cir = p4r.MeterEntry()
        bad_cir.CopyFrom(me)
        bad_cir.config.cir = 20
        wildcard = p4r.MeterEntry(meter_id=limit.meter.id, config=me.config)
        outside = p4r.MeterEntry(meter_id=limit.meter.id, index=p4r.Index(index=limit.meter.size), config=me.config)
        unknown = p4r.MeterEntry(meter_id=1234, index=p4r.Index(index=1), config=me.config)
        ups = [p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(meter_entry=me))]
        ups += [p4r.Update(type=p4r.Update.MODIFY, entity=p4r.Entity(meter_entry=m))
                for m in (bad_cir, wildcard, outside, unknown, me)]
        with pytest.raises(WriteError) as ei:
            await s.write(ups)
        codes = {e.index: e.code for e in ei.value.errors}
        assert codes == {0: "INVALID_ARGUMENT", 1: "INVALID_ARGUMENT", 2: "UNIMPLEMENTED", 3: "OUT_OF_RANGE",
                         4: "NOT_FOUND"}
        got = [e.meter_entry async for e in s.read([p4r.Entity(meter_entry=p4r.MeterEntry(
            meter_id=limit.meter.id, index=p4r.Index(index=1)))])]
        assert got[0].config.cir == 10, "the good update in the batch applied"
        assert await limit.read(s) == {}
        await s.close()
    asyncio.run(main())
