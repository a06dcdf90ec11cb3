"""Every flow entry the switch holds, read and decoded for the reconcile.

A reconcile reads every flow entry (200,000 at 100,000 flows) and decodes
each one (ip.ReadBack): 11-15 us an entry in Python, on the core of the
daemon's event loop. BMv2 answers such a read in one response, so the
daemon could do nothing else meanwhile. With many connections to reconcile,
the read is made and decoded by a second process instead. It needs no
primary role: it opens no stream and sends no arbitration, and both
switches answer its Read, as they answer the benches' second clients. It
hands the daemon the decoded entries as plain tuples, a few thousand at a
time, and the daemon joins them with its connections as they arrive. It
also pairs each entry with its connection's other direction and checks
the two against each other (Pairing), work that is the same for the
daemon's own read but that, made here, runs on another core.

With few connections, the daemon reads and decodes itself, since starting
a process costs more than the decode. It also does so when the reader
fails, for the entries the reader had not handed over yet. A switch that
cannot be read then fails that read, as it would without a reader.

The reader takes each response as its bytes and reads the values from the
wire in native code (_readresponse.c, compiled at install), leaving to
protobuf any entity of another shape; where the module is not built, it
decodes with protobuf. Timed alone on 40,000 entries with the collector
off: 16.8 us an entry through protobuf's objects, 5.4 us from the wire (2.7
us of it the native pass). The reader's collector is off: what it makes
holds no cycles.

The reader also joins pairs to the daemon's connections. While the switch
answers, the daemon indexes the connections it may adopt, and hands the
reader both matches of each (`FlowEntries.index`). A pair whose two matches
are one connection's then comes back as a few small integers: the
connection's place in that list, each entry's port, next hop and MTU, and
what the read says of its counters and last hit (a `Joined` record). The
daemon then neither unpickles those entries nor looks their matches up,
which took a sixth of its join's time at 100,000 flows. The pairs
themselves come along in one pickle a frame, unpickled only where the
daemon does not adopt one of them.

The reader is `python -m p4flowtable.entryread`. Its order (ReadOrder)
arrives pickled on stdin, after it has loaded its modules (about 0.5 s of
a core): the daemon starts it (`spawn`) before it connects to the switch,
and gives it the order once the switch's pipeline is known to be kept. A
reader whose stdin closes before an order comes exits quietly. Once it has
asked the switch, it reads the index: pickled lists of (original match,
reply match), the index's parts in turn, until the end of stdin (at once:
no index). It answers on stdout in frames, each a 4-byte length and then
a pickle:
- ("held", [(Held, Held) as tuples: a pair (Pairing), ...], [Held as a tuple: a single, ...],
  [an entry of no flow, serialized, ...], [Joined record, ...],
  the records' pairs as [(original's Held, reply's Held) as tuples, ...], pickled);
- ("error", what went wrong);
- ("done", number of entries).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import itertools
import logging
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator, Sequence

from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2 as p4r

from .ip import Held, ReadBack, path_of, read_of
from .switch import SwitchControl, flow_read

try:        # compiled at install (setup.py); without it, protobuf decodes alone
    from . import _readresponse
except ImportError:
    _readresponse = None

log = logging.getLogger("p4ft")

APART_FROM = 20_000     # conntrack entries from which a second process reads
INDEX_PART = 10_000     # connections of the index a pickle (FlowEntries.index): about 10 ms to make
CHUNK = 2_000           # entries decoded per frame
READER = (sys.executable, "-m", "p4flowtable.entryread")     # the command that starts the reader


@dataclass(frozen=True)
class ReadOrder:
    address: str
    device_id: int
    p4info: bytes                      # serialized P4Info
    last_hit: bool                     # ask for each entry's time since its last hit
    tls: tuple[str | None, str | None, str | None] = (None, None, None)    # CA, certificate, key
    server_name: str | None = None


# a Held from its tuple without a Python call (Held._make is one): 200,000 a reconcile
_held = functools.partial(tuple.__new__, Held)


class ReaderFailed(Exception):
    pass


class Joined:
    """Pairs the reader joined to the connections of the index
    (`FlowEntries.index`), in a frame. Each record: (the connection's place
    in the index, the original direction's entry's port, next hop and MTU,
    the reply's, packets of both, bytes of both, time since the latest hit
    of either or None), the last five a FlowRead's. `pair(n)`: record n's
    two entries as Helds (the original's first), unpickled when first
    asked for."""

    __slots__ = ("records", "_pairs", "_data")

    def __init__(self, records: list[tuple] = (), data: bytes | None = None):
        self.records = records
        self._data = data
        self._pairs: list[tuple[Held, Held]] | None = None if data else []

    def pair(self, n: int) -> tuple[Held, Held]:
        if self._pairs is None:
            self._pairs = [(_held(a), _held(b)) for a, b in pickle.loads(self._data)]
            self._data = None
        return self._pairs[n]

    def pairs(self) -> list[tuple[Held, Held]]:
        return [self.pair(n) for n in range(len(self.records))]


NOTHING_JOINED = Joined()

# flow entries paired with their connection's other direction and as the
# daemon writes them (Pairing); flow entries not so; entries of no flow;
# pairs joined to their connection by the reader
Batch = tuple[list[tuple[Held, Held]], list[Held], list[p4r.TableEntry], Joined]


def join_pairs(pairs: list[tuple[Held, Held]], at: dict[tuple, tuple[int, int]]
               ) -> tuple[list[tuple], list[tuple[Held, Held]], list[tuple[Held, Held]]]:
    """The pairs whose two matches are one connection's in `at` (match ->
    (its place, 0 original or 1 reply)): their Joined records and their
    entries (the original's first); and the others."""
    records: list[tuple] = []
    joined: list[tuple[Held, Held]] = []
    rest: list[tuple[Held, Held]] = []
    for a, b in pairs:
        x, y = at.get(a.match), at.get(b.match)
        if x is None or y is None or x[0] != y[0] or x[1] == y[1]:
            rest.append((a, b))
            continue
        o, r = (a, b) if x[1] == 0 else (b, a)
        records.append((x[0], *path_of(o, r), *read_of(o, r)))
        joined.append((o, r))
    return records, joined, rest


class Pairing:
    """Flow entries as they are decoded, each paired with the entry of its
    connection's other direction once both are in (ReadBack.peer: from an
    entry's match and rewrite alone), where the two are what the daemon
    writes for that connection (ReadBack.as_written). The check is the
    reconcile plan's, made here in the reader's process, so the daemon
    only joins a pair to its conntrack entry and compares next hops. Any
    other entry is a single: unpaired at the end, two with one match,
    a pair not as written."""

    def __init__(self, readback: ReadBack):
        self.readback = readback
        self.unpaired: dict[tuple, Held] = {}

    def add(self, held: list[Held]) -> tuple[list[tuple[Held, Held]], list[Held]]:
        """(pairs, singles) of these entries, with those before: the
        reference, in Python, that add_joined's native code is held to."""
        back, unpaired = self.readback, self.unpaired
        peer, as_written = back.peer, back.as_written
        pairs: list[tuple[Held, Held]] = []
        singles: list[Held] = []
        for h in held:
            other = unpaired.pop(peer(h), None)
            if other is None:
                if h.match in unpaired:
                    singles.append(h)       # another entry with this match: the daemon sorts them out
                else:
                    unpaired[h.match] = h
                continue
            if peer(other) == h.match and as_written(h, other) and as_written(other, h):
                pairs.append((other, h))
                continue
            singles += (other, h)
        return pairs, singles

    def add_joined(self, held: list[Held], at: dict[tuple, tuple[int, int]]
                   ) -> tuple[list[tuple[Held, Held]], list[Held], list[tuple], list[tuple[Held, Held]]]:
        """add(), then join_pairs() of its pairs with `at`: (pairs not
        joined, singles, Joined records, the records' pairs). In native
        code where it is built (_readresponse.pairing), with the same
        answers."""
        if _readresponse is not None:
            back = self.readback
            return _readresponse.pairing(held, self.unpaired, at, back.kinds, back.chosen, back.as_written)
        pairs, singles = self.add(held)
        records, joined, pairs = join_pairs(pairs, at)
        return pairs, singles, records, joined

    def rest(self) -> list[Held]:
        """The entries whose other direction never came."""
        out, self.unpaired = list(self.unpaired.values()), {}
        return out


async def spawn() -> asyncio.subprocess.Process:
    """A reader, started: it loads its modules, then waits for its order."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, env.get("PYTHONPATH"))))
    return await asyncio.create_subprocess_exec(*READER, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, env=env)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


class FlowEntries:
    """Every flow entry the switch holds, decoded, a batch at a time
    (`batches`). apart: read and decoded by a second process, which `start`
    sets going, so that it starts up and the switch answers while the
    caller does other work; proc: that process, started already (`spawn`).
    `index` hands it the connections to join pairs to, before `batches`
    is iterated. stats counts the reads made apart (reconcile.read_apart)
    and the reader's failures (reconcile.reader_failed). `close` stops a
    reader still running."""

    def __init__(self, switch: SwitchControl, readback: ReadBack, last_hit: bool, apart: bool,
                 stats: collections.Counter | None = None, proc: asyncio.subprocess.Process | None = None):
        self.switch, self.readback, self.last_hit, self.apart = switch, readback, last_hit, apart
        self.stats = collections.Counter() if stats is None else stats
        self.proc = proc
        self.failed: ReaderFailed | None = None
        self._indexed = False       # the reader's stdin closed: an index given, or none to come

    async def start(self) -> None:
        if not self.apart:
            return
        session = self.switch.session
        tls = session.tls
        order = ReadOrder(session.address, session.device_id, self.switch.schema.p4info.SerializeToString(),
                          self.last_hit,
                          tuple(str(p) if p else None for p in (tls.ca, tls.cert, tls.key)) if tls else (None,) * 3,
                          session.server_name)
        try:
            if self.proc is None:
                self.proc = await spawn()
            self.proc.stdin.write(pickle.dumps(order))
            await self.proc.stdin.drain()
        except (OSError, ConnectionError) as err:
            self.failed = ReaderFailed(f"not started: {err}")

    async def index(self, matches: list[tuple[tuple, tuple]]) -> None:
        """The connections the reader joins pairs to: both matches of
        each (ReadBack.match of its original and reply tuples); a pair
        joined to the n-th comes as a Joined record naming n. Given at
        most once, before `batches`; a read made by the daemon itself
        joins nothing. Handed over INDEX_PART connections a pickle, the
        event loop given a turn between two: pickled at once, 100,000
        connections held it 0.15 s."""
        if self.apart:
            await self._close_stdin(matches)

    async def _close_stdin(self, index: list[tuple[tuple, tuple]] | None = None) -> None:
        if self._indexed:
            return
        self._indexed = True
        proc = self.proc
        if self.failed is not None or proc is None or proc.stdin.is_closing():
            return
        try:
            for i in range(0, len(index or ()), INDEX_PART):
                proc.stdin.write(pickle.dumps(index[i:i + INDEX_PART], protocol=pickle.HIGHEST_PROTOCOL))
                await proc.stdin.drain()
                await asyncio.sleep(0)      # the API, conntrack events, the switch's stream meanwhile
            proc.stdin.close()
        except (OSError, ConnectionError):
            pass        # the reader is gone: its frames say so

    async def batches(self) -> AsyncIterator[Batch]:
        """The entries, as they are decoded and paired (Pairing)."""
        handed: list[Batch] = []      # by the reader, before it failed (if it does)
        if self.apart:
            await self._close_stdin()       # no index given: the reader joins nothing
            try:
                async for batch in self._frames():
                    handed.append(batch)
                    yield batch
                self.stats["reconcile.read_apart"] += 1
                return
            except ReaderFailed as err:
                self.stats["reconcile.reader_failed"] += 1
                log.warning("the entry reader failed (%s): the daemon reads the rest itself", err)
            finally:
                await self.close()
        seen = {h.key for pairs, singles, _, joined in handed
                for h in singles + [h for p in pairs + joined.pairs() for h in p]}
        seen_strays = {s.SerializeToString() for _, _, strays, _ in handed for s in strays}
        pairing = Pairing(self.readback)
        async for ents in self.switch.flow_entries(self.last_hit):
            for held, strays in decoded(ents, self.readback):
                if seen or seen_strays:        # what the reader handed over before it failed
                    held = [h for h in held if h.key not in seen]
                    strays = [e for e in strays if e.SerializeToString() not in seen_strays]
                pairs, singles, _, _ = pairing.add_joined(held, {})
                yield pairs, singles, strays, NOTHING_JOINED
                await asyncio.sleep(0)      # the API, conntrack events, the switch's stream meanwhile
        yield [], pairing.rest(), [], NOTHING_JOINED

    async def _frames(self) -> AsyncIterator[Batch]:
        if self.failed is not None:
            raise self.failed
        proc = self.proc
        assert proc is not None, "start() first"
        while True:
            try:
                size = int.from_bytes(await proc.stdout.readexactly(4), "big")
                kind, *rest = pickle.loads(await proc.stdout.readexactly(size))
            except (asyncio.IncompleteReadError, pickle.UnpicklingError, ValueError) as err:
                code = await proc.wait()
                raise ReaderFailed(f"exited with code {code} before it was done"
                                   if isinstance(err, asyncio.IncompleteReadError) else f"bad frame: {err}") from None
            if kind == "done":
                return
            if kind == "error":
                raise ReaderFailed(rest[0])
            pairs, singles, strays, records, joined = rest
            yield ([(_held(a), _held(b)) for a, b in pairs], list(map(_held, singles)),
                   [p4r.TableEntry.FromString(s) for s in strays],
                   Joined(records, joined) if records else NOTHING_JOINED)

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            await stop(proc)


def decoded(ents: Sequence[p4r.Entity], readback: ReadBack) -> Iterator[Batch]:
    """The entities of a read response decoded, CHUNK at a time: the flow
    entries, and the entries of no flow."""
    decode = readback.decode
    for i in range(0, len(ents), CHUNK):
        held: list[Held] = []
        strays: list[p4r.TableEntry] = []
        for ent in ents[i:i + CHUNK]:
            e = ent.table_entry
            h = decode(e)
            if h is None:
                strays.append(e)
            else:
                held.append(h)
        yield held, strays


def decoded_raw(data: bytes, readback: ReadBack) -> Iterator[Batch]:
    """decoded() of a serialized ReadResponse, its values read from the wire
    by _readresponse: the same entries and strays, at a fraction of the
    cost. The entities it leaves to protobuf are decoded as decoded() does."""
    held_of, pos = readback.held, 0
    while pos < len(data):
        # flow entries as Helds' values, made in native code (ReadBack.held's)
        items, pos = _readresponse.entries(data, pos, CHUNK, readback.tables, readback.actions)
        held: list[Held] = []
        strays: list[p4r.TableEntry] = []
        for it in items:
            first = it[0]
            if first.__class__ is tuple:
                held.append(_held(it))
                continue
            if first is None:
                e = p4r.Entity.FromString(data[it[1]:it[2]]).table_entry
                h = readback.decode(e)
            elif first is False:
                e, h = p4r.TableEntry.FromString(data[it[1]:it[2]]), None
            else:
                h = held_of(it[0], dict(it[1]), it[2], dict(it[3]), it[4], it[5], it[6])
                if h is None:
                    e = p4r.TableEntry.FromString(data[it[7]:it[8]])
            if h is None:
                strays.append(e)
            else:
                held.append(h)
        yield held, strays


def _send(out, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(len(data).to_bytes(4, "big"))
    out.write(data)
    out.flush()


def main() -> int:
    """The reader: one read of every flow entry, decoded, to stdout."""
    import grpc
    from p4.v1 import p4runtime_pb2_grpc

    from .p4info import P4Schema
    from .p4runtime import open_channel
    from .tls import TlsFiles

    out = sys.stdout.buffer
    # what this process makes (tuples, integers, bytes) holds no cycles, and
    # it lives for one read: collections would only walk the entries decoded
    gc.disable()
    try:
        try:
            order: ReadOrder = pickle.load(sys.stdin.buffer)
        except EOFError:
            return 0        # started ahead (spawn) and not needed after all
        schema = P4Schema(p4info_pb2.P4Info.FromString(order.p4info))
        back = ReadBack(schema)
        tls = TlsFiles(*(Path(p) if p else None for p in order.tls))
        with open_channel(order.address, tls.channel_credentials() if tls.enabled else None, order.server_name,
                          aio=False) as channel:
            n = 0
            pairing = Pairing(back)
            req = p4r.ReadRequest(device_id=order.device_id, entities=flow_read(schema, order.last_hit))
            if _readresponse is not None:       # each response as its bytes, read from the wire
                read = channel.unary_stream("/p4.v1.P4Runtime/Read", response_deserializer=None,
                                            request_serializer=p4r.ReadRequest.SerializeToString)
                responses = read(req)
                batches = (b for data in responses for b in decoded_raw(data, back))
            else:
                responses = p4runtime_pb2_grpc.P4RuntimeStub(channel).Read(req)
                batches = (b for resp in responses for b in decoded(resp.entities, back))
            # asked: the switch answers while the daemon indexes its connections
            at: dict[tuple, tuple[int, int]] = {}
            places = itertools.count()
            while True:         # the index's parts, until stdin ends (at once: no index, nothing joined)
                try:
                    part = pickle.load(sys.stdin.buffer)
                except EOFError:
                    break
                for (mo, mr), i in zip(part, places):
                    at[mo], at[mr] = (i, 0), (i, 1)
            for held, strays in batches:
                pairs, singles, records, joined = pairing.add_joined(held, at)
                _send(out, ("held", [(tuple(a), tuple(b)) for a, b in pairs], [tuple(h) for h in singles],
                            [e.SerializeToString() for e in strays], records,
                            pickle.dumps([(tuple(o), tuple(r)) for o, r in joined],
                                         protocol=pickle.HIGHEST_PROTOCOL) if joined else None))
                n += len(held) + len(strays)
            _send(out, ("held", [], [tuple(h) for h in pairing.rest()], [], [], None))
        _send(out, ("done", n))
    except grpc.RpcError as e:
        _send(out, ("error", f"read failed: {e.code().name}: {e.details()}"))
        return 1
    except Exception as e:      # named to the daemon, which reads the rest itself
        _send(out, ("error", f"{type(e).__name__}: {e}"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
