"""The reconcile's read of every flow entry, made and decoded by a second
process (entryread.py), on the embedded target over P4Runtime (in-process
server, no root): it gives what the daemon's own read gives, and when the
reader fails, before its first answer or in the middle, the daemon reads
what it had not handed over, each entry once."""

import asyncio
import collections
import logging
import sys
import textwrap

from p4flowtable import entryread
from p4flowtable.ip import ReadBack
from p4flowtable.nexthop import NextHops
from p4flowtable.p4runtime import Session
from p4flowtable.reconcile import Planner
from p4flowtable.switch import SwitchControl

from test_switch_writers import JSON, addr, flows, schema  # noqa: F401  (fixtures)

N = 1_500       # flows: 3,000 entries, two of the reader's frames


async def _switch_with_flows(schema, address) -> SwitchControl:  # noqa: F811
    switch = SwitchControl(Session(address, 1, 1), schema, JSON.read_bytes())
    assert await switch.connect(5, []) is False
    planner = Planner(schema, {}, False, NextHops(schema), ReadBack(schema))
    for f in flows(0, N):
        planner.flow(f)
    plan = planner.finish()
    await switch.write(plan.nexthop_writes, "next hop")
    await switch.write(plan.writes, "flows")
    return switch


async def _read(switch, schema, apart: bool, pairs: list | None = None, proc=None,  # noqa: F811
                stats=None) -> tuple[list, list]:
    """Every entry read (pairs flattened) and the strays; pairs, when given,
    gets the pairs. proc: a reader started ahead (entryread.spawn)."""
    held, strays = [], []
    reader = entryread.FlowEntries(switch, ReadBack(schema), False, apart, stats, proc=proc)
    await reader.start()
    try:
        async for ps, hs, ss, _ in reader.batches():
            held += [h for p in ps for h in p] + hs
            strays += ss
            if pairs is not None:
                pairs += ps
    finally:
        await reader.close()
    return held, strays


def test_the_reader_gives_what_the_daemon_reads_itself(schema, addr, caplog):  # noqa: F811
    async def main():
        switch = await _switch_with_flows(schema, addr)
        own_pairs, apart_pairs = [], []
        own, own_strays = await _read(switch, schema, False, own_pairs)
        with caplog.at_level(logging.WARNING, "p4ft"):
            apart, apart_strays = await _read(switch, schema, True, apart_pairs)
        assert "entry reader failed" not in caplog.text
        assert len(own) == 2 * N and not own_strays
        assert sorted(apart) == sorted(own) and not apart_strays
        # every flow's two entries paired, as written, by either
        assert len(own_pairs) == N and sorted(apart_pairs) == sorted(own_pairs)
        await switch.session.close()
    asyncio.run(main())


def test_the_reader_joins_pairs_to_the_connections_it_is_given(schema, addr, caplog, monkeypatch):  # noqa: F811
    """Every flow's pair comes back as its connection's place in the index
    and the entries' values the reconcile uses; a pair of a connection not
    in the index comes back as before; the entries behind the records are
    the daemon's own read's. The index goes over in parts (here of 400
    connections, the last part short), its places counted across them."""
    monkeypatch.setattr(entryread, "INDEX_PART", 400)

    async def main():
        switch = await _switch_with_flows(schema, addr)
        back = ReadBack(schema)
        own_pairs = []
        own, _ = await _read(switch, schema, False, own_pairs)
        fs = flows(0, N)
        # every flow but the first; and a connection the switch has no entry of
        index = [(back.match(f.tuples[1]), back.match(f.tuples[0])) if i % 2 else
                 (back.match(f.tuples[0]), back.match(f.tuples[1])) for i, f in enumerate(fs[1:])]
        index.append(((0, 1, 2, 3, 4, 5), (0, 6, 7, 8, 9, 10)))
        reader = entryread.FlowEntries(switch, back, False, True)
        await reader.start()
        pairs, records, behind = [], [], []
        with caplog.at_level(logging.WARNING, "p4ft"):
            try:
                await reader.index(index)
                async for ps, hs, ss, joined in reader.batches():
                    assert not hs and not ss
                    pairs += ps
                    records += joined.records
                    behind += joined.pairs()
            finally:
                await reader.close()
        assert "entry reader failed" not in caplog.text
        assert len(records) == N - 1 and len(pairs) == 1
        assert {h.match for h in pairs[0]} == {back.match(t) for t in fs[0].tuples}
        assert sorted(h for p in pairs + behind for h in p) == sorted(own)
        assert sorted(r[0] for r in records) == list(range(N - 1))
        for rec, (o, r) in zip(records, behind):
            # the first of each index entry is the entry joined as the original direction's
            assert (o.match, r.match) == index[rec[0]]
            assert rec[1:] == (o.port, o.nexthop, o.mtu, r.port, r.nexthop, r.mtu, o.packets, r.packets,
                               o.bytes, r.bytes, None)
        await switch.session.close()
    asyncio.run(main())


def test_a_reader_started_ahead_reads_once_given_its_order(schema, addr, caplog):  # noqa: F811
    """As the daemon starts it: before it connects, the order given later."""
    async def main():
        spare = await entryread.spawn()
        switch = await _switch_with_flows(schema, addr)
        own, _ = await _read(switch, schema, False)
        stats = collections.Counter()
        with caplog.at_level(logging.WARNING, "p4ft"):
            apart, strays = await _read(switch, schema, True, proc=spare, stats=stats)
        assert "entry reader failed" not in caplog.text and stats["reconcile.read_apart"] == 1
        assert sorted(apart) == sorted(own) and len(own) == 2 * N and not strays
        await switch.session.close()
    asyncio.run(main())


def test_a_reader_started_ahead_and_not_needed_exits_quietly():
    """A pipeline not kept, a backup: its stdin closes without an order."""
    async def main():
        spare = await entryread.spawn()
        spare.stdin.close()
        out = await asyncio.wait_for(spare.stdout.read(), 60)
        assert await spare.wait() == 0 and out == b""
    asyncio.run(main())


def test_a_reader_that_cannot_start_leaves_the_read_to_the_daemon(schema, addr, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setattr(entryread, "READER", ("/nonexistent/python",))
    async def main():
        switch = await _switch_with_flows(schema, addr)
        with caplog.at_level(logging.WARNING, "p4ft"):
            held, _ = await _read(switch, schema, True)
        assert len(held) == 2 * N
        assert "entry reader failed (not started" in caplog.text
        await switch.session.close()
    asyncio.run(main())


def test_a_reader_that_dies_midway_leaves_the_rest_to_the_daemon(schema, addr, monkeypatch, caplog, tmp_path):  # noqa: F811
    # the real reader, cut off after its first frame
    cut = tmp_path / "cut.py"
    cut.write_text(textwrap.dedent(f"""
        import subprocess, sys
        p = subprocess.Popen([{sys.executable!r}, "-m", "p4flowtable.entryread"], stdout=subprocess.PIPE)
        head = p.stdout.read(4)
        sys.stdout.buffer.write(head + p.stdout.read(int.from_bytes(head, "big")))
        sys.stdout.flush()
        p.kill()
        sys.exit(3)
    """))
    monkeypatch.setattr(entryread, "READER", (sys.executable, str(cut)))
    async def main():
        switch = await _switch_with_flows(schema, addr)
        own, _ = await _read(switch, schema, False)
        with caplog.at_level(logging.WARNING, "p4ft"):
            held, _ = await _read(switch, schema, True)
        assert "entry reader failed (exited with code 3 before it was done)" in caplog.text
        assert sorted(held) == sorted(own)      # every entry, each once
        await switch.session.close()
    asyncio.run(main())
